use crate::cli::{ExecArgs, GlobalOpts};
use crate::error::Result;

pub fn run(global: &GlobalOpts, args: &ExecArgs) -> Result<i32> {
    let (settings, store) = super::context(global)?;
    crate::exec::run(&store, &settings, args)
}
