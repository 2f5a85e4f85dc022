//! `update`: a LinuxResources JSON (`--resources FILE` or `-` for stdin)
//! and runc's single-value flags, which win over the file.

use std::io::Read;

use serde_json::{json, Map, Value};

use crate::cli::{GlobalOpts, UpdateArgs};
use crate::error::{Error, Result};
use crate::lifecycle;

pub fn run(global: &GlobalOpts, args: &UpdateArgs) -> Result<i32> {
    let (settings, store) = super::context(global)?;
    let resources = resources(args)?;
    let record = lifecycle::load(&store, &args.id)?;
    if !lifecycle::status(&store, &record).has_process() {
        return Err(Error::NotRunning(args.id.clone()));
    }
    crate::router::for_record(&record, &settings, store.root())?
        .update(&record.guest(), &resources)?;
    Ok(0)
}

fn resources(args: &UpdateArgs) -> Result<Map<String, Value>> {
    let mut r: Map<String, Value> = match args.resources.as_deref() {
        None => Map::new(),
        Some(p) => {
            let text = if p.as_os_str() == "-" {
                let mut s = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut s)
                    .map_err(|e| Error::io("stdin", e))?;
                s
            } else {
                std::fs::read(p).map_err(|e| Error::io(p, e))?
            };
            serde_json::from_slice(&text)
                .map_err(|e| Error::Usage(format!("invalid resources JSON: {e}")))?
        }
    };
    let mut set = |section: &str, key: &str, v: Value| {
        let s = r
            .entry(section.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !s.is_object() {
            *s = Value::Object(Map::new());
        }
        s.as_object_mut().expect("object").insert(key.into(), v);
    };
    if let Some(m) = &args.memory {
        set("memory", "limit", json!(parse_bytes(m)?));
    }
    if let Some(m) = &args.memory_reservation {
        set("memory", "reservation", json!(parse_bytes(m)?));
    }
    if let Some(m) = &args.memory_swap {
        set("memory", "swap", json!(parse_bytes(m)?));
    }
    if let Some(m) = &args.kernel_memory {
        set("memory", "kernel", json!(parse_bytes(m)?));
    }
    if let Some(m) = &args.kernel_memory_tcp {
        set("memory", "kernelTCP", json!(parse_bytes(m)?));
    }
    if let Some(v) = args.cpu_period {
        set("cpu", "period", json!(v));
    }
    if let Some(v) = args.cpu_quota {
        set("cpu", "quota", json!(v));
    }
    if let Some(v) = args.cpu_share {
        set("cpu", "shares", json!(v));
    }
    if let Some(v) = args.cpu_rt_period {
        set("cpu", "realtimePeriod", json!(v));
    }
    if let Some(v) = args.cpu_rt_runtime {
        set("cpu", "realtimeRuntime", json!(v));
    }
    if let Some(v) = &args.cpuset_cpus {
        set("cpu", "cpus", json!(v));
    }
    if let Some(v) = &args.cpuset_mems {
        set("cpu", "mems", json!(v));
    }
    if let Some(v) = args.pids_limit {
        set("pids", "limit", json!(v));
    }
    if let Some(v) = args.blkio_weight {
        set("blockIO", "weight", json!(v));
    }
    if args.l3_cache_schema.is_some() || args.mem_bw_schema.is_some() {
        return Err(Error::NotSupported("update of Intel RDT schemas"));
    }
    Ok(r)
}

/// Bytes with an optional binary suffix (k, m, g, t; with or without b), as
/// runc's units.RAMInBytes reads them; -1 stays -1 (unlimited).
pub fn parse_bytes(s: &str) -> Result<i64> {
    let bad = || Error::Usage(format!("invalid size {s:?}"));
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: i64 = num.trim().parse().map_err(|_| bad())?;
    if n < 0 {
        return Err(bad());
    }
    n.checked_mul(mult).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_bytes("268435456").unwrap(), 268435456);
        assert_eq!(parse_bytes("256m").unwrap(), 256 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("4kb").unwrap(), 4096);
        assert_eq!(parse_bytes("-1").unwrap(), -1);
        for bad in ["", "x", "-5", "1q", "m"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
