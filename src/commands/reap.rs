use crate::cli::{GlobalOpts, ReapArgs};
use crate::error::Result;
use crate::lifecycle;

pub fn run(global: &GlobalOpts, args: &ReapArgs) -> Result<i32> {
    let (settings, store) = super::context(global)?;
    lifecycle::reap(&store, &settings, &args.id, args.monitor)?;
    Ok(0)
}
