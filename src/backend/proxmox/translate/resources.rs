//! `linux.resources`: cgroup limits as pct options (memory, swap, cores,
//! cpulimit, cpuunits) where Proxmox has them, raw `lxc.cgroup*` lines
//! where it has not, for the host's cgroup layout.

use serde_json::{Map, Value};

use super::check::refuse_if_set;
use super::host::HostFacts;
use super::{field, TranslateError, Translator, MIB};
use crate::backend::proxmox::settings::CgroupVersion;

/// pct refuses less memory than this.
pub(super) const MIN_MEMORY_MIB: u64 = 16;
/// pct's limits for cores and cpulimit.
const MAX_CPUS: u64 = 8192;

impl Translator<'_> {
    fn cg_key(&self, v1: &str, v2: &str) -> String {
        match self.cgroup {
            CgroupVersion::V2 => format!("lxc.cgroup2.{v2}"),
            _ => format!("lxc.cgroup.{v1}"),
        }
    }

    pub(super) fn resources(&mut self, r: &Map<String, Value>) -> Result<(), TranslateError> {
        let empty = Map::new();
        let get = |k: &str| r.get(k).and_then(Value::as_object).unwrap_or(&empty);
        let mem = get("memory");
        let (memory, swap) = memory_mib(mem, self.host)?;
        self.plan.opt("memory", memory.to_string());
        self.plan.opt("swap", swap.to_string());
        let pre = "linux.resources.memory.";
        if let Some(res) = mem
            .get("reservation")
            .and_then(Value::as_i64)
            .filter(|&x| x > 0)
        {
            let key = self.cg_key("memory.soft_limit_in_bytes", "memory.low");
            self.plan
                .raw(&format!("{pre}reservation"), &key, &res.to_string())?;
        }
        // Obsolete since Linux 5.4 and refused by cgroup v2; runc ignores it too.
        let _ = mem.get("kernel");
        refuse_if_set(
            mem,
            pre,
            "kernelTCP",
            "kernel TCP memory limits are not supported",
        )?;
        if let Some(sw) = mem.get("swappiness").and_then(Value::as_u64) {
            if sw > 100 {
                return Err(field(
                    format!("{pre}swappiness"),
                    format!("{sw} is above 100"),
                ));
            }
            self.v1_only_raw(
                &format!("{pre}swappiness"),
                "lxc.cgroup.memory.swappiness",
                &sw.to_string(),
                "cgroup v2 has no per-group swappiness",
            )?;
        }
        if mem.get("disableOOMKiller").and_then(Value::as_bool) == Some(true) {
            self.v1_only_raw(
                &format!("{pre}disableOOMKiller"),
                "lxc.cgroup.memory.oom_control",
                "1",
                "cgroup v2 cannot disable the OOM killer",
            )?;
        }
        self.cpu(get("cpu"))?;
        if let Some(limit) = get("pids")
            .get("limit")
            .and_then(Value::as_i64)
            .filter(|&l| l > 0)
        {
            let key = self.cg_key("pids.max", "pids.max");
            self.plan
                .raw("linux.resources.pids.limit", &key, &limit.to_string())?;
        }
        let pre = "linux.resources.";
        refuse_if_set(
            r,
            pre,
            "blockIO",
            "block I/O limits are not supported; use Proxmox's disk settings",
        )?;
        refuse_if_set(
            r,
            pre,
            "hugepageLimits",
            "hugepage limits are not supported",
        )?;
        refuse_if_set(r, pre, "network", "net_cls/net_prio settings are not supported; use Proxmox's rate= on the network device")?;
        if r.get("rdma")
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(field(
                "linux.resources.rdma",
                "RDMA limits are not supported",
            ));
        }
        if let Some(unified) = r
            .get("unified")
            .and_then(Value::as_object)
            .filter(|u| !u.is_empty())
        {
            if self.cgroup != CgroupVersion::V2 {
                return Err(field("linux.resources.unified", "needs a cgroup v2 host"));
            }
            let mut keys: Vec<_> = unified.iter().collect();
            keys.sort_by(|a, b| a.0.cmp(b.0));
            for (k, val) in keys {
                let f = format!("linux.resources.unified.{k}");
                let val = val.as_str().ok_or_else(|| field(&f, "must be a string"))?;
                if !k.contains('.') || k.starts_with("cgroup.") {
                    return Err(field(&f, "not a controller file"));
                }
                self.plan.raw(&f, &format!("lxc.cgroup2.{k}"), val)?;
            }
        }
        if let Some(rules) = r.get("devices").and_then(Value::as_array) {
            self.device_rules(rules)?;
        }
        Ok(())
    }

    /// A memory setting only the v1 memory controller has: a raw line on a
    /// v1 host, refused by name on a v2 host.
    fn v1_only_raw(
        &mut self,
        f: &str,
        key: &str,
        value: &str,
        why_not_v2: &str,
    ) -> Result<(), TranslateError> {
        if self.cgroup == CgroupVersion::V2 {
            return Err(field(f, why_not_v2));
        }
        self.plan.raw(f, key, value)
    }

    fn cpu(&mut self, c: &Map<String, Value>) -> Result<(), TranslateError> {
        let pre = "linux.resources.cpu.";
        if let Some(quota) = c.get("quota").and_then(Value::as_i64).filter(|&q| q > 0) {
            let period = c
                .get("period")
                .and_then(Value::as_u64)
                .filter(|&p| p > 0)
                .unwrap_or(100_000);
            // Hundredths of a CPU, rounded up so the guest never gets less
            // than asked.
            let hundredths = (quota as u128 * 100).div_ceil(period as u128).max(1);
            if hundredths > (MAX_CPUS * 100) as u128 {
                return Err(field(
                    format!("{pre}quota"),
                    format!("{quota}/{period} is above {MAX_CPUS} CPUs"),
                ));
            }
            self.plan
                .opt("cpulimit", format_hundredths(hundredths as u64));
        }
        if let Some(cpus) = c
            .get("cpus")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            let n = cpu_list_len(cpus).ok_or_else(|| {
                field(format!("{pre}cpus"), format!("{cpus:?} is not a CPU list"))
            })?;
            if n == 0 || n > MAX_CPUS {
                return Err(field(
                    format!("{pre}cpus"),
                    format!("{n} CPUs is outside 1..{MAX_CPUS}"),
                ));
            }
            self.plan.opt("cores", n.to_string());
            // cores only counts; the set itself pins the guest to these CPUs.
            let key = self.cg_key("cpuset.cpus", "cpuset.cpus");
            self.plan.raw(&format!("{pre}cpus"), &key, cpus)?;
        }
        if let Some(shares) = c.get("shares").and_then(Value::as_u64).filter(|&s| s > 0) {
            self.plan
                .opt("cpuunits", cpu_units(shares, self.cgroup).to_string());
        }
        if let Some(mems) = c
            .get("mems")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            cpu_list_len(mems).ok_or_else(|| {
                field(format!("{pre}mems"), format!("{mems:?} is not a node list"))
            })?;
            let key = self.cg_key("cpuset.mems", "cpuset.mems");
            self.plan.raw(&format!("{pre}mems"), &key, mems)?;
        }
        refuse_if_set(
            c,
            pre,
            "realtimeRuntime",
            "real-time scheduling is not supported in Proxmox containers",
        )?;
        refuse_if_set(
            c,
            pre,
            "realtimePeriod",
            "real-time scheduling is not supported in Proxmox containers",
        )?;
        refuse_if_set(c, pre, "idle", "SCHED_IDLE groups are not supported")?;
        refuse_if_set(c, pre, "burst", "CPU burst is not supported")?;
        Ok(())
    }

    fn device_rules(&mut self, rules: &[Value]) -> Result<(), TranslateError> {
        for (i, rule) in rules.iter().enumerate() {
            let f = format!("linux.resources.devices[{i}]");
            let allow = rule.get("allow").and_then(Value::as_bool).unwrap_or(false);
            let typ = rule.get("type").and_then(Value::as_str).unwrap_or("a");
            if !matches!(typ, "a" | "b" | "c") {
                return Err(field(
                    format!("{f}.type"),
                    format!("{typ:?} is not a, b or c"),
                ));
            }
            let num = |k: &str| match rule.get(k).and_then(Value::as_i64) {
                Some(n) if n >= 0 => n.to_string(),
                _ => "*".to_string(),
            };
            let access = rule.get("access").and_then(Value::as_str).unwrap_or("rwm");
            if access.is_empty() || !access.bytes().all(|c| b"rwm".contains(&c)) {
                return Err(field(
                    format!("{f}.access"),
                    format!("{access:?} is not a subset of rwm"),
                ));
            }
            let all = typ == "a"
                && rule.get("major").is_none_or(Value::is_null)
                && rule.get("minor").is_none_or(Value::is_null);
            if all && !allow {
                if i == 0 {
                    // LXC's baseline already denies every device but the
                    // standard ones OCI also guarantees (null, zero, tty...).
                    continue;
                }
                return Err(field(f, "denying all devices after other rules would also take away the devices every container needs"));
            }
            let value = if all {
                "a".to_string()
            } else {
                format!("{typ} {}:{} {access}", num("major"), num("minor"))
            };
            let key = self.cg_key(
                if allow {
                    "devices.allow"
                } else {
                    "devices.deny"
                },
                if allow {
                    "devices.allow"
                } else {
                    "devices.deny"
                },
            );
            self.plan.raw(&f, &key, &value)?;
        }
        Ok(())
    }
}

/// Proxmox's cpuunits are the v1 cpu.shares on a v1 host; on v2 they become
/// cpu.weight (1..10000), so OCI's shares are converted as runc does.
fn cpu_units(shares: u64, cgroup: CgroupVersion) -> u64 {
    match cgroup {
        CgroupVersion::V2 => 1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142,
        _ => shares.clamp(2, 262_144),
    }
}

fn format_hundredths(h: u64) -> String {
    match h % 100 {
        0 => (h / 100).to_string(),
        r if r % 10 == 0 => format!("{}.{}", h / 100, r / 10),
        r => format!("{}.{r:02}", h / 100),
    }
}

/// Number of CPUs (or nodes) in a list like "0-3,8,10-11"; None if malformed.
fn cpu_list_len(s: &str) -> Option<u64> {
    let mut n = 0;
    for part in s.split(',') {
        let num = |x: &str| -> Option<u64> {
            (!x.is_empty() && x.len() <= 5 && x.bytes().all(|c| c.is_ascii_digit()))
                .then(|| x.parse().ok())
                .flatten()
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if b < a {
                    return None;
                }
                n += b - a + 1;
            }
            None => {
                num(part)?;
                n += 1;
            }
        }
    }
    Some(n)
}

/// OCI gives bytes (and -1 or nothing for "no limit"); pct takes MiB, at
/// least 16. Without a limit the container may use what the host has.
fn memory_mib(mem: &Map<String, Value>, host: HostFacts) -> Result<(u64, u64), TranslateError> {
    // runc writes -1 as "max" and any other negative through to the kernel,
    // which refuses it: a -5 is a mistake, not "unlimited".
    for key in ["limit", "reservation", "swap"] {
        if let Some(v) = mem.get(key).and_then(Value::as_i64).filter(|&v| v < -1) {
            return Err(field(
                format!("linux.resources.memory.{key}"),
                format!("{v} is not a limit (of negatives, only -1 means no limit)"),
            ));
        }
    }
    let limit = mem.get("limit").and_then(Value::as_i64).filter(|&l| l > 0);
    let Some(limit) = limit else {
        return Ok((host.mem_total_mib, host.swap_total_mib));
    };
    let limit = limit as u64;
    let memory = limit.div_ceil(MIB).max(MIN_MEMORY_MIB);
    // OCI's swap is memory+swap; Proxmox's is swap alone.
    let swap = match mem.get("swap").and_then(Value::as_i64) {
        Some(s) if s > 0 => {
            let s = s as u64;
            if s < limit {
                return Err(field(
                    "linux.resources.memory.swap",
                    format!("{s} is below the memory limit {limit}"),
                ));
            }
            (s - limit).div_ceil(MIB)
        }
        Some(-1) => host.swap_total_mib,
        _ => 0,
    };
    Ok((memory, swap))
}

#[cfg(test)]
mod tests {
    use super::super::plan;
    use super::super::test_support::{opt, spec, HOST};
    use crate::backend::proxmox::settings::ProxmoxSettings;

    #[test]
    fn memory_is_rounded_up_to_mib_with_a_floor_of_16() {
        let s = spec(
            serde_json::json!({"linux": {"resources": {"memory": {"limit": 268435457, "swap": 536870912}}}}),
        );
        let p = plan(&s, &ProxmoxSettings::default(), HOST).unwrap();
        assert_eq!(opt(&p, "memory"), Some("257"));
        assert_eq!(opt(&p, "swap"), Some("256"));
        let s = spec(serde_json::json!({"linux": {"resources": {"memory": {"limit": 1000}}}}));
        let p = plan(&s, &ProxmoxSettings::default(), HOST).unwrap();
        assert_eq!(opt(&p, "memory"), Some("16"));
        let s = spec(
            serde_json::json!({"linux": {"resources": {"memory": {"limit": 100_000_000, "swap": 10}}}}),
        );
        assert!(plan(&s, &ProxmoxSettings::default(), HOST).is_err());
    }

    #[test]
    fn negative_memory_values_other_than_minus_one_are_refused() {
        for key in ["limit", "reservation", "swap"] {
            let s = spec(serde_json::json!({"linux": {"resources": {"memory": {key: -5}}}}));
            let err = plan(&s, &ProxmoxSettings::default(), HOST)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("linux.resources.memory.{key}")) && err.contains("-5"),
                "{err}"
            );
        }
        // -1 is runc's "no limit": the host's memory and swap.
        let s = spec(
            serde_json::json!({"linux": {"resources": {"memory": {"limit": -1, "swap": -1, "reservation": -1}}}}),
        );
        let p = plan(&s, &ProxmoxSettings::default(), HOST).unwrap();
        assert_eq!(
            opt(&p, "memory"),
            Some(HOST.mem_total_mib.to_string().as_str())
        );
    }
}
