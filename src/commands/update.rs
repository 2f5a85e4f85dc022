//! `update`: a LinuxResources JSON (`--resources FILE` or `-` for stdin)
//! and runc's single-value flags, which win over the file (runc ignores
//! its flags when given a file).

use std::io::Read;
use std::path::Path;

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxPids, LinuxResources};
use serde_json::Value;

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

/// The file's LinuxResources, if any, with each flag given written over it.
fn resources(args: &UpdateArgs) -> Result<LinuxResources> {
    let mut r = match args.resources.as_deref() {
        None => LinuxResources::default(),
        Some(p) => read_resources(p)?,
    };
    let size = |flag: &str, v: &Option<String>| v.as_deref().map(|s| parse_size(flag, s));
    fn memory(r: &mut LinuxResources) -> &mut LinuxMemory {
        r.memory_mut().get_or_insert_with(LinuxMemory::default)
    }
    if let Some(v) = size("--memory", &args.memory).transpose()? {
        memory(&mut r).set_limit(Some(v));
    }
    if let Some(v) = size("--memory-reservation", &args.memory_reservation).transpose()? {
        memory(&mut r).set_reservation(Some(v));
    }
    if let Some(v) = size("--memory-swap", &args.memory_swap).transpose()? {
        memory(&mut r).set_swap(Some(v));
    }
    if let Some(v) = size("--kernel-memory", &args.kernel_memory).transpose()? {
        memory(&mut r).set_kernel(Some(v));
    }
    if let Some(v) = size("--kernel-memory-tcp", &args.kernel_memory_tcp).transpose()? {
        memory(&mut r).set_kernel_tcp(Some(v));
    }
    fn cpu(r: &mut LinuxResources) -> &mut LinuxCpu {
        r.cpu_mut().get_or_insert_with(LinuxCpu::default)
    }
    if let Some(v) = args.cpu_period {
        cpu(&mut r).set_period(Some(v));
    }
    if let Some(v) = args.cpu_quota {
        cpu(&mut r).set_quota(Some(v));
    }
    if let Some(v) = args.cpu_share {
        cpu(&mut r).set_shares(Some(v));
    }
    if let Some(v) = args.cpu_rt_period {
        cpu(&mut r).set_realtime_period(Some(v));
    }
    if let Some(v) = args.cpu_rt_runtime {
        cpu(&mut r).set_realtime_runtime(Some(v));
    }
    if let Some(v) = &args.cpuset_cpus {
        cpu(&mut r).set_cpus(Some(v.clone()));
    }
    if let Some(v) = &args.cpuset_mems {
        cpu(&mut r).set_mems(Some(v.clone()));
    }
    if let Some(v) = args.pids_limit {
        let mut pids = LinuxPids::default();
        pids.set_limit(v);
        r.set_pids(Some(pids));
    }
    if let Some(v) = args.blkio_weight {
        r.block_io_mut()
            .get_or_insert_with(LinuxBlockIo::default)
            .set_weight(Some(v));
    }
    if args.l3_cache_schema.is_some() || args.mem_bw_schema.is_some() {
        return Err(Error::NotSupported("update of Intel RDT schemas"));
    }
    Ok(r)
}

/// `--resources FILE`, or `-` for stdin.
fn read_resources(p: &Path) -> Result<LinuxResources> {
    let text = if p.as_os_str() == "-" {
        let mut s = Vec::new();
        std::io::stdin()
            .read_to_end(&mut s)
            .map_err(|e| Error::io("stdin", e))?;
        s
    } else {
        std::fs::read(p).map_err(|e| Error::io(p, e))?
    };
    let invalid = |e: serde_json::Error| Error::Usage(format!("invalid resources JSON: {e}"));
    let mut r: LinuxResources = serde_json::from_slice(&text).map_err(invalid)?;
    // oci-spec's pids.limit is not optional: `"pids": {}` reads as limit 0,
    // which is "no limit", where runc leaves the limit as it is.
    let raw: Value = serde_json::from_slice(&text).map_err(invalid)?;
    if raw.get("pids").is_some_and(|p| p.get("limit").is_none()) {
        r.set_pids(None);
    }
    Ok(r)
}

/// A size flag's value as runc reads it: `-1` (no limit), or go-units'
/// RAMInBytes form. The error names the flag.
fn parse_size(flag: &str, s: &str) -> Result<i64> {
    if s == "-1" {
        return Ok(-1);
    }
    ram_in_bytes(s).map_err(|why| Error::Usage(format!("invalid value for {flag}: {s:?} {why}")))
}

/// go-units' RAMInBytes, as runc uses it: a decimal number of bytes, or one
/// with a binary k, m, g, t or p suffix, optionally followed by `b` or `ib`,
/// in any case and optionally after one space (`512m`, `1.5G`, `512MB`,
/// `2 KiB`); a fraction of a byte is dropped. Stricter than Go's
/// ParseFloat underneath: no sign, exponent or bare dot.
fn ram_in_bytes(s: &str) -> std::result::Result<i64, &'static str> {
    const NOT_A_SIZE: &str =
        "is not a size (bytes, or a number with a k, m, g, t or p suffix, such as 512m or 1.5g)";
    let end = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(end);
    let suffix = suffix
        .strip_prefix(' ')
        .unwrap_or(suffix)
        .to_ascii_lowercase();
    let mut chars = suffix.chars();
    let shift = match (chars.next(), chars.as_str()) {
        (None, _) | (Some('b'), "") => 0,
        (Some(unit), "" | "b" | "ib") => match unit {
            'k' => 10,
            'm' => 20,
            'g' => 30,
            't' => 40,
            'p' => 50,
            _ => return Err(NOT_A_SIZE),
        },
        _ => return Err(NOT_A_SIZE),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, "0"));
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return Err(NOT_A_SIZE);
    }
    const TOO_LARGE: &str = "is too large";
    let whole: u128 = whole.parse::<u64>().map_err(|_| TOO_LARGE)?.into();
    // 19 digits fit a u64; Go's float64 keeps fewer.
    let fraction = &fraction[..fraction.len().min(19)];
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction: u128 = fraction.parse::<u64>().map_err(|_| NOT_A_SIZE)?.into();
    let bytes = (whole << shift) + (fraction << shift) / scale;
    i64::try_from(bytes).map_err(|_| TOO_LARGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> UpdateArgs {
        #[derive(clap::Parser)]
        struct Cmd {
            #[command(flatten)]
            update: UpdateArgs,
        }
        let argv = ["update"].iter().chain(argv).chain(&["id"]);
        <Cmd as clap::Parser>::try_parse_from(argv).unwrap().update
    }

    #[test]
    fn flags_win_over_the_file_and_an_empty_pids_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.json");
        std::fs::write(
            &file,
            r#"{"memory": {"limit": 1048576, "swap": 4194304}, "cpu": {"shares": 5}, "pids": {}}"#,
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let r = resources(&args(&["-r", path, "-m", "2m", "--cpu-quota", "-1"])).unwrap();
        let memory = r.memory().unwrap();
        assert_eq!(
            (memory.limit(), memory.swap()),
            (Some(2 << 20), Some(4 << 20))
        );
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!((cpu.shares(), cpu.quota()), (Some(5), Some(-1)));
        assert_eq!(r.pids(), &None);
        let r = resources(&args(&["--resources", path, "--pids-limit", "-1"])).unwrap();
        assert_eq!(r.pids().unwrap().limit(), -1);
        let r = resources(&args(&["--memory-swap", "-1"])).unwrap();
        assert_eq!(r.memory().unwrap().swap(), Some(-1));
    }

    #[test]
    fn sizes_take_runcs_forms() {
        for (s, want) in [
            ("268435456", 268435456),
            ("0", 0),
            ("256m", 256 << 20),
            ("512MB", 512 << 20),
            ("512mb", 512 << 20),
            ("1024k", 1 << 20),
            ("4kb", 4096),
            ("2 KiB", 2048),
            ("1G", 1 << 30),
            ("1.5g", 3 << 29),
            ("0.5T", 1 << 39),
            ("1.0000000001k", 1024),
            ("0.1k", 102),
            ("100b", 100),
            ("100 B", 100),
            ("1p", 1 << 50),
            ("8191p", 8191 << 50),
            ("-1", -1),
        ] {
            assert_eq!(parse_size("--memory", s).unwrap(), want, "{s}");
        }
    }

    #[test]
    fn bad_sizes_are_refused_in_one_line_naming_the_flag() {
        for bad in [
            "", "x", "g", "m", "-5", "-1m", "+5", "1.5.g", "1..5g", ".5g", "5.g", "1e3", "1q",
            "1gb ", " 1g", "1  g", "1µ", "1é", "1mé", "1kk", "1kbb", "1bk", "1gib2", "1ki", "-1 ",
        ] {
            let e = parse_size("--memory-swap", bad).unwrap_err().to_string();
            assert!(
                e.contains("--memory-swap") && e.contains("not a size"),
                "{bad}: {e}"
            );
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        for big in [
            "8192p",
            "9223372036854775808",
            "99999999999999999999",
            "9000000t",
        ] {
            let e = parse_size("--memory", big).unwrap_err().to_string();
            assert!(
                e.contains("--memory") && e.contains("too large"),
                "{big}: {e}"
            );
        }
    }
}
