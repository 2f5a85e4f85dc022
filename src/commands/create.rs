use crate::cli::{CreateArgs, GlobalOpts};
use crate::error::Result;
use crate::lifecycle;

pub fn run(global: &GlobalOpts, args: &CreateArgs) -> Result<i32> {
    let (settings, store) = super::context(global)?;
    // The monitor outlives us on purpose: the caller's subreaper adopts it.
    let _monitor = lifecycle::create(&store, &settings, global, args)?;
    Ok(0)
}
