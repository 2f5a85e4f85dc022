use crate::cli::{GlobalOpts, KillArgs};
use crate::error::Result;
use crate::lifecycle;
use crate::state::Store;

pub fn run(global: &GlobalOpts, args: &KillArgs) -> Result<i32> {
    let signal = lifecycle::parse_signal(args.signal.as_deref().unwrap_or("TERM"))?;
    let store = Store::open(&global.root)?;
    lifecycle::kill(&store, &args.id, signal, args.all)?;
    Ok(0)
}
