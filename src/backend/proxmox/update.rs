//! `update` of a running Proxmox guest: which parts of an OCI
//! LinuxResources it can take, and the `pct set` options for them.

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxNetwork, LinuxResources};

use super::driver::DriverError;
use super::settings::ProxmoxSettings;
use super::translate::{self, HostFacts};

/// runc's "leave as is": absent, or the type's zero (0, "", false, an empty
/// list or map), which runc passes over too. The one exception is
/// pids.limit, whose 0 means "no limit" (see [`UpdateRequest::pids`]).
fn given<T: Default + PartialEq>(v: Option<T>) -> Option<T> {
    v.filter(|v| *v != T::default())
}

fn is_given<T: Default + PartialEq + Clone>(v: &Option<T>) -> bool {
    given(v.clone()).is_some()
}

/// The parts of a LinuxResources update a Proxmox guest can take.
#[derive(Debug, Default, PartialEq)]
pub(super) struct UpdateRequest {
    /// memory.limit in bytes; -1 is no limit.
    limit: Option<i64>,
    /// memory.swap, OCI's memory+swap; -1 is unlimited swap.
    swap: Option<i64>,
    shares: Option<u64>,
    /// cpu.quota; negative is no limit.
    quota: Option<i64>,
    period: Option<u64>,
    /// pids.max: present whenever the update has a `pids` object, as runc
    /// writes it; <= 0 means no limit.
    pub pids: Option<i64>,
}

impl UpdateRequest {
    /// What is given; anything beyond memory.limit/swap, cpu.shares/quota/
    /// period and pids.limit is refused by its JSON name.
    pub fn check(r: &LinuxResources) -> Result<UpdateRequest, DriverError> {
        let refuse = |what: &str| -> DriverError {
            DriverError::Update(format!("update of {what} is not supported yet"))
        };
        if r.block_io().as_ref().is_some_and(block_io_given) {
            return Err(refuse("blockIO"));
        }
        let mut req = UpdateRequest::default();
        if let Some(c) = r.cpu() {
            req.shares = given(c.shares());
            req.quota = given(c.quota());
            req.period = given(c.period());
            if let Some(name) = cpu_refused(c) {
                return Err(refuse(&format!("cpu.{name}")));
            }
        }
        if is_given(r.devices()) {
            return Err(refuse("devices"));
        }
        if is_given(r.hugepage_limits()) {
            return Err(refuse("hugepageLimits"));
        }
        if let Some(m) = r.memory() {
            req.limit = given(m.limit());
            req.swap = given(m.swap());
            if let Some(name) = memory_refused(m) {
                return Err(refuse(&format!("memory.{name}")));
            }
        }
        if r.network().as_ref().is_some_and(network_given) {
            return Err(refuse("network"));
        }
        req.pids = r.pids().map(|p| p.limit());
        if is_given(r.rdma()) {
            return Err(refuse("rdma"));
        }
        if is_given(r.unified()) {
            return Err(refuse("unified"));
        }
        if req.swap.is_some() && req.limit.is_none() {
            return Err(DriverError::Update(
                "update: memory.swap (memory+swap) needs memory.limit in the same update".into(),
            ));
        }
        if req.period.is_some() && req.quota.is_none() {
            return Err(DriverError::Update(
                "update: cpu.period needs cpu.quota in the same update".into(),
            ));
        }
        Ok(req)
    }

    /// `pct set` options, converted by the create translation itself (the
    /// same MiB rounding, cpulimit and cpuunits); only the options asked
    /// for are taken from its plan (it always has memory and swap).
    ///
    /// The translation gets the fields taken above, not the update's own
    /// memory and cpu: there runc's zeros mean "leave as is", which the
    /// translation reads as values (memory.swappiness 0 is refused on
    /// cgroup v2), and a negative quota is cpulimit 0, which it has no
    /// words for.
    pub fn pct_options(&self, settings: &ProxmoxSettings) -> Result<Vec<String>, DriverError> {
        let unlimited_cpu = self.quota.is_some_and(|q| q < 0);
        let mut memory = LinuxMemory::default();
        memory.set_limit(self.limit).set_swap(self.swap);
        let mut cpu = LinuxCpu::default();
        cpu.set_shares(self.shares);
        if !unlimited_cpu {
            cpu.set_quota(self.quota).set_period(self.period);
        }
        let mut resources = LinuxResources::default();
        resources.set_memory(Some(memory)).set_cpu(Some(cpu));
        let plan = translate::resources_plan(&resources, settings, HostFacts::read())?;
        let mut wanted: Vec<&str> = Vec::new();
        if self.limit.is_some() {
            wanted.push("memory");
        }
        if self.swap.is_some() {
            wanted.push("swap");
        }
        if self.quota.is_some_and(|q| q > 0) {
            wanted.push("cpulimit");
        }
        if self.shares.is_some() {
            wanted.push("cpuunits");
        }
        let mut out = Vec::new();
        for (k, v) in &plan.options {
            if wanted.contains(&k.as_str()) {
                out.push(format!("--{k}"));
                out.push(v.clone());
            }
        }
        // A negative quota is "no limit", which is cpulimit 0 for Proxmox.
        if unlimited_cpu {
            out.extend(["--cpulimit".to_string(), "0".to_string()]);
        }
        Ok(out)
    }
}

fn block_io_given(b: &LinuxBlockIo) -> bool {
    is_given(&b.weight())
        || is_given(&b.leaf_weight())
        || is_given(b.weight_device())
        || is_given(b.throttle_read_bps_device())
        || is_given(b.throttle_write_bps_device())
        || is_given(b.throttle_read_iops_device())
        || is_given(b.throttle_write_iops_device())
}

fn network_given(n: &LinuxNetwork) -> bool {
    is_given(&n.class_id()) || is_given(n.priorities())
}

/// The first given cpu field a guest cannot take, by its JSON name.
fn cpu_refused(c: &LinuxCpu) -> Option<&'static str> {
    [
        ("burst", is_given(&c.burst())),
        ("cpus", is_given(c.cpus())),
        ("idle", is_given(&c.idle())),
        ("mems", is_given(c.mems())),
        ("realtimePeriod", is_given(&c.realtime_period())),
        ("realtimeRuntime", is_given(&c.realtime_runtime())),
    ]
    .into_iter()
    .find_map(|(name, set)| set.then_some(name))
}

/// The first given memory field a guest cannot take, by its JSON name.
fn memory_refused(m: &LinuxMemory) -> Option<&'static str> {
    [
        ("checkBeforeUpdate", is_given(&m.check_before_update())),
        ("disableOOMKiller", is_given(&m.disable_oom_killer())),
        ("kernel", is_given(&m.kernel())),
        ("kernelTCP", is_given(&m.kernel_tcp())),
        ("reservation", is_given(&m.reservation())),
        ("swappiness", is_given(&m.swappiness())),
        ("useHierarchy", is_given(&m.use_hierarchy())),
    ]
    .into_iter()
    .find_map(|(name, set)| set.then_some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: serde_json::Value) -> Result<UpdateRequest, DriverError> {
        UpdateRequest::check(&serde_json::from_value(v).unwrap())
    }

    fn options(r: &UpdateRequest) -> Vec<String> {
        r.pct_options(&ProxmoxSettings::default()).unwrap()
    }

    #[test]
    fn update_takes_memory_cpu_and_pids_and_refuses_the_rest_by_name() {
        let r = req(serde_json::json!({
            "memory": {"limit": 268435456, "swap": 536870912},
            "cpu": {"shares": 1024, "quota": 150000, "period": 100000, "cpus": "", "mems": ""},
            "pids": {"limit": 64}, "devices": []
        }))
        .unwrap();
        assert_eq!(r.pids, Some(64));
        let text = options(&r).join(" ");
        for want in ["--memory 256", "--swap 256", "--cpulimit 1.5", "--cpuunits"] {
            assert!(text.contains(want), "{text}");
        }
        for (bad, name) in [
            (serde_json::json!({"blockIO": {"weight": 10}}), "blockIO"),
            (serde_json::json!({"cpu": {"cpus": "0-1"}}), "cpu.cpus"),
            (
                serde_json::json!({"memory": {"reservation": 1}}),
                "memory.reservation",
            ),
        ] {
            let e = req(bad).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("not supported yet"), "{e}");
        }
        assert!(req(serde_json::json!({"memory": {"swap": 5}})).is_err());
        let none = req(serde_json::json!({"cpu": {"quota": -1}})).unwrap();
        assert_eq!(options(&none), ["--cpulimit", "0"]);
    }

    #[test]
    fn zero_empty_and_false_leave_a_field_as_it_is() {
        let r = req(serde_json::json!({
            "memory": {"limit": 0, "swap": 0, "reservation": 0, "kernel": 0,
                       "disableOOMKiller": false, "checkBeforeUpdate": false},
            "cpu": {"shares": 0, "quota": 0, "period": 0, "cpus": "", "mems": "",
                    "realtimeRuntime": 0, "idle": 0},
            "blockIO": {"weight": 0, "weightDevice": []},
            "network": {"classID": 0}, "hugepageLimits": [], "devices": [],
            "rdma": {}, "unified": {}
        }))
        .unwrap();
        assert_eq!(r, UpdateRequest::default());
        assert!(options(&r).is_empty());
        // The period alone does not say how much CPU: Proxmox's cpulimit is
        // the ratio of both.
        let e = req(serde_json::json!({"cpu": {"quota": 0, "period": 50000}})).unwrap_err();
        assert!(e.to_string().contains("cpu.period needs cpu.quota"), "{e}");
    }

    #[test]
    fn pids_limit_zero_or_negative_is_no_limit_and_minus_one_memory_is_the_hosts() {
        assert_eq!(
            req(serde_json::json!({"pids": {"limit": 0}})).unwrap().pids,
            Some(0)
        );
        assert_eq!(req(serde_json::json!({})).unwrap().pids, None);
        let r = req(serde_json::json!({"memory": {"limit": -1, "swap": -1}})).unwrap();
        assert_eq!((r.limit, r.swap), (Some(-1), Some(-1)));
        let opts = options(&r);
        assert_eq!(opts[0], "--memory");
        assert_eq!(opts[2], "--swap");
    }

    #[test]
    fn every_field_a_guest_cannot_take_is_refused_by_its_json_name() {
        for (bad, name) in [
            (
                serde_json::json!({"memory": {"kernel": 1}}),
                "memory.kernel",
            ),
            (
                serde_json::json!({"memory": {"kernelTCP": 1}}),
                "memory.kernelTCP",
            ),
            (
                serde_json::json!({"memory": {"swappiness": 10}}),
                "memory.swappiness",
            ),
            (
                serde_json::json!({"memory": {"useHierarchy": true}}),
                "memory.useHierarchy",
            ),
            (serde_json::json!({"cpu": {"mems": "0"}}), "cpu.mems"),
            (
                serde_json::json!({"cpu": {"realtimePeriod": 1}}),
                "cpu.realtimePeriod",
            ),
            (serde_json::json!({"cpu": {"burst": 1}}), "cpu.burst"),
            (
                serde_json::json!({"blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1}]}}),
                "blockIO",
            ),
            (
                serde_json::json!({"devices": [{"allow": false, "access": "rwm"}]}),
                "devices",
            ),
            (
                serde_json::json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]}),
                "hugepageLimits",
            ),
            (serde_json::json!({"network": {"classID": 1}}), "network"),
            (
                serde_json::json!({"unified": {"memory.high": "1"}}),
                "unified",
            ),
        ] {
            let e = req(bad).unwrap_err().to_string();
            assert_eq!(e.lines().count(), 1, "{e}");
            assert!(e.contains(name) && e.contains("not supported yet"), "{e}");
        }
    }
}
