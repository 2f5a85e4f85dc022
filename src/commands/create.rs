use crate::cli::{CreateArgs, GlobalOpts};
use crate::error::Result;
use crate::router::Runtime;
use crate::{forward, lifecycle};

pub fn run(global: &GlobalOpts, args: &CreateArgs) -> Result<i32> {
    let (settings, store) = super::context(global)?;
    let loaded = lifecycle::load_bundle(&args.bundle)?;
    match super::route_new(&settings, &store, &loaded.bundle, &args.id)? {
        Runtime::Delegate(d) => forward::launch(&store, &d, &loaded.bundle, &args.id, false),
        Runtime::Guest(backend) => {
            // The monitor outlives us on purpose: the caller's subreaper adopts it.
            let _monitor = lifecycle::create(&store, &settings, global, args, loaded, backend)?;
            Ok(0)
        }
    }
}
