use crate::cli::{GlobalOpts, RunArgs};
use crate::error::Result;
use crate::lifecycle;
use crate::procfs::ProcRef;

pub fn run(global: &GlobalOpts, args: &RunArgs) -> Result<i32> {
    let (settings, store) = super::context(global)?;
    let mut monitor = lifecycle::create(&store, &settings, global, &args.create)?;
    let id = &args.create.id;
    if let Err(e) = lifecycle::start(&store, &settings, id) {
        let _ = lifecycle::delete(&store, &settings, id, true);
        return Err(e);
    }
    if args.detach {
        return Ok(0);
    }
    let target = ProcRef::of(monitor.id() as i32);
    let signals = lifecycle::block_relayed_signals()?;
    let code = lifecycle::wait_relaying(&mut monitor, &signals, |sig| {
        if let Some(m) = target {
            let _ = m.signal(sig);
        }
    })?;
    lifecycle::delete(&store, &settings, id, true)?;
    Ok(code)
}
