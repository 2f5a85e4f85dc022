use crate::cli::{DeleteArgs, GlobalOpts};
use crate::error::Result;
use crate::lifecycle;

pub fn run(global: &GlobalOpts, args: &DeleteArgs) -> Result<i32> {
    let (settings, store) = super::context(global)?;
    lifecycle::delete(&store, &settings, &args.id, args.force)?;
    Ok(0)
}
