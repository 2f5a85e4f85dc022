//! `events --stats`: one stats object from the guest's cgroup, as runc
//! prints it; `events [--interval D]`: one such line per interval until the
//! container stops.

use std::io::Write;
use std::time::Duration;

use serde_json::json;

use crate::cgroup;
use crate::cli::{EventsArgs, GlobalOpts};
use crate::error::{Error, Result};
use crate::lifecycle;
use crate::state::{Record, Store};

pub fn run(global: &GlobalOpts, args: &EventsArgs) -> Result<i32> {
    let store = Store::open(&global.root)?;
    let record = lifecycle::load(&store, &args.id)?;
    let interval = humantime::parse_duration(&args.interval)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            Error::Usage(format!(
                "invalid --interval {:?}: want a positive duration like 5s",
                args.interval
            ))
        })?;
    if !alive(&store, &record) {
        return Err(Error::NotRunning(args.id.clone()));
    }
    if args.stats {
        println!("{}", stats_line(&record)?);
        return Ok(0);
    }
    let mut out = std::io::stdout();
    loop {
        match stats_line(&record) {
            Ok(line) => {
                // A reader that went away ends the stream.
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return Ok(0);
                }
            }
            // The guest went away between the check and the read.
            Err(_) if !alive(&store, &record) => return Ok(0),
            Err(e) => return Err(e),
        }
        // Sleep in slices so the stream ends soon after the container does.
        let mut left = interval;
        while !left.is_zero() {
            let step = left.min(Duration::from_millis(100));
            std::thread::sleep(step);
            left -= step;
            if !alive(&store, &record) {
                return Ok(0);
            }
        }
    }
}

fn alive(store: &Store, record: &Record) -> bool {
    lifecycle::status(store, record).has_process()
}

fn stats_line(record: &Record) -> Result<String> {
    let stats = cgroup::of_init(&record.id, record.init)?.stats();
    Ok(json!({"type": "stats", "id": record.id, "data": stats}).to_string())
}
