use std::os::fd::AsFd;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use crate::cli::{GlobalOpts, RunArgs};
use crate::error::{Error, Result};
use crate::procfs::ProcRef;
use crate::router::Runtime;
use crate::{forward, lifecycle, terminal};

pub fn run(global: &GlobalOpts, args: &RunArgs) -> Result<i32> {
    let (settings, store) = super::context(global)?;
    let loaded = lifecycle::load_bundle(&args.create.bundle)?;
    let backend = match super::route_new(&settings, &store, &loaded.bundle, &args.create.id)? {
        Runtime::Delegate(d) => {
            // The runtime's own `run` relays the terminal and waits.
            let foreground = !args.detach;
            return forward::launch(&store, &d, &loaded.bundle, &args.create.id, foreground);
        }
        Runtime::Guest(b) => b,
    };
    // runc's `run` of a terminal process in a person's shell: no socket to
    // send the pty to, so we take it ourselves and relay it.
    let relay = if !args.detach
        && args.create.console_socket.is_none()
        && loaded.bundle.process().terminal().unwrap_or(false)
    {
        let pair = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(Error::sys("run: socketpair"))?;
        Some(pair)
    } else {
        None
    };
    let (ours, theirs) = match relay {
        Some((a, b)) => (Some(a), Some(b)),
        None => (None, None),
    };
    let mut monitor = lifecycle::create_with_console(
        &store,
        &settings,
        global,
        &args.create,
        loaded,
        backend,
        theirs,
    )?;
    let id = &args.create.id;
    if let Err(e) = lifecycle::start(&store, &settings, id) {
        let _ = lifecycle::delete(&store, &settings, id, true);
        return Err(e);
    }
    if args.detach {
        return Ok(0);
    }
    let master = match &ours {
        Some(sock) => terminal::recv_master(sock.as_fd())?,
        None => None,
    };
    let code = match master {
        Some(master) => terminal::relay(master, &mut monitor)?,
        None => {
            let target = ProcRef::of(monitor.id() as i32);
            let signals = lifecycle::block_relayed_signals()?;
            lifecycle::wait_relaying(&mut monitor, &signals, |sig| {
                if let Some(m) = target {
                    let _ = m.signal(sig);
                }
            })?
        }
    };
    lifecycle::delete(&store, &settings, id, true)?;
    Ok(code)
}
