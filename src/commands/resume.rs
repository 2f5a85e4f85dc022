use crate::cli::GlobalOpts;
use crate::error::Result;
use crate::lifecycle;

pub fn run(global: &GlobalOpts, id: &str) -> Result<i32> {
    let (settings, store) = super::context(global)?;
    lifecycle::resume(&store, &settings, id)?;
    Ok(0)
}
