//! `process`: what LXC never sees. The process travels as process.json to
//! the init (crate::bridge::init prepares and applies it); here only what
//! must be refused or bounded before anything is made.

use serde_json::{Map, Value};

use super::check::{refuse_if_set, strings};
use super::{field, TranslateError, Translator};

impl Translator<'_> {
    pub(super) fn process(&mut self, p: &Map<String, Value>) -> Result<(), TranslateError> {
        // process.terminal: the init opens a pty in the guest and the monitor
        // hands its master to --console-socket (src/bridge/pty.rs); the
        // window size is set on it, and must fit the kernel's 16 bits.
        if let Some(size) = p.get("consoleSize").and_then(Value::as_object) {
            for k in ["height", "width"] {
                let n = size.get(k).and_then(Value::as_u64).unwrap_or(0);
                if n > u64::from(u16::MAX) {
                    return Err(field(
                        format!("process.consoleSize.{k}"),
                        format!("{n} is larger than a terminal can be (65535)"),
                    ));
                }
            }
        }
        let pre = "process.";
        refuse_if_set(
            p,
            pre,
            "selinuxLabel",
            "SELinux is not available on Proxmox VE",
        )?;
        refuse_if_set(p, pre, "ioPriority", "I/O priorities are not supported")?;
        refuse_if_set(p, pre, "scheduler", "scheduling policies are not supported")?;
        refuse_if_set(p, pre, "execCPUAffinity", "CPU affinity is not supported")?;
        if let Some(adj) = p.get("oomScoreAdj").and_then(Value::as_i64) {
            if !(-1000..=1000).contains(&adj) {
                return Err(field(
                    "process.oomScoreAdj",
                    format!("{adj} is outside -1000..1000"),
                ));
            }
        }
        // Strings the init receives as JSON never reach a config line, but a
        // NUL would be cut off by exec: refuse it here, before anything exists.
        for k in ["args", "env"] {
            for s in strings(p.get(k)) {
                if s.contains('\0') {
                    return Err(field(format!("process.{k}"), "NUL bytes are not allowed"));
                }
            }
        }
        for e in strings(p.get("env")) {
            if !e.contains('=') || e.starts_with('=') {
                return Err(field("process.env", format!("{e:?} is not NAME=VALUE")));
            }
        }
        if let Some(cwd) = p.get("cwd").and_then(Value::as_str) {
            if cwd.contains('\0') {
                return Err(field("process.cwd", "NUL bytes are not allowed"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan;
    use super::super::test_support::{spec, HOST};
    use crate::backend::proxmox::settings::ProxmoxSettings;

    #[test]
    fn terminal_is_accepted_and_its_size_bounded() {
        let d = ProxmoxSettings::default();
        let tty = spec(
            serde_json::json!({"process": {"terminal": true, "consoleSize": {"height": 30, "width": 100}}}),
        );
        assert!(plan(&tty, &d, HOST).is_ok());
        let huge = spec(
            serde_json::json!({"process": {"terminal": true, "consoleSize": {"height": 70000, "width": 1}}}),
        );
        let e = plan(&huge, &d, HOST).unwrap_err().to_string();
        assert!(e.contains("process.consoleSize.height"), "{e}");
    }
}
