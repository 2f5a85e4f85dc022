//! linux.seccomp: compiled to a BPF program on the host at `create`, where
//! libseccomp (as runc uses it) resolves syscall names for each listed
//! architecture and any error fails `create` before anything is made; the
//! program travels through the bridge as JSON and the init loads it with
//! seccomp(2) as the last step before execve, for the container process and
//! for `exec`. Where runc's behaviour is a choice, it is followed: unknown
//! syscall names are skipped (forward compatibility), a rule whose action is
//! the default is dropped, several conditions on one argument become one
//! rule each.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use nix::libc;
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use serde::{Deserialize, Serialize};

/// The compiled filter's file in the bridge directory.
pub const FILE: &str = "seccomp.json";

/// seccomp(2) operation and flags (linux/seccomp.h).
const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
const FLAG_TSYNC: u32 = 1;
const FLAG_LOG: u32 = 2;
const FLAG_SPEC_ALLOW: u32 = 4;
/// BPF_MAXINSNS: the kernel refuses longer programs.
const MAX_INSNS: usize = 4096;
/// Syscalls take at most six arguments.
const MAX_ARGS: usize = 6;

/// What `nexcage features` reports, in runc's terms: every action but
/// SCMP_ACT_NOTIFY, every operator, and libseccomp's little-endian
/// architectures (it cannot mix byte orders in one filter, and a profile
/// naming a big-endian ABI fails create on this x86_64 build).
pub const ACTIONS: &[&str] = &[
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_LOG",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_TRAP",
];
pub const OPERATORS: &[&str] = &[
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
];
pub const ARCHS: &[&str] = &[
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_RISCV64",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
];
pub const KNOWN_FLAGS: &[&str] = &[
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
];
pub const SUPPORTED_FLAGS: &[&str] = &[
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
];

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A profile field that cannot be applied; `field` is spelled as in config.json.
    #[error("{field}: {message}")]
    Profile { field: String, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> SeccompError {
    SeccompError::Profile {
        field: field.into(),
        message: message.into(),
    }
}

/// A compiled filter: the seccomp(2) flags and the classic BPF program, one
/// `[code, jt, jf, k]` per instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    pub flags: u32,
    pub program: Vec<(u16, u8, u8, u32)>,
}

/// The filter as the init holds it between fork and exec: ready for
/// seccomp(2) without allocating.
pub struct Loadable {
    flags: u32,
    program: Vec<libc::sock_filter>,
}

impl std::fmt::Debug for Loadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seccomp filter ({} instructions, flags {:#x})",
            self.program.len(),
            self.flags
        )
    }
}

/// Check and compile a profile for this host's architecture and the ones it
/// lists.
pub fn compile(p: &LinuxSeccomp) -> Result<Filter, SeccompError> {
    const F: &str = "linux.seccomp";
    let notify = "SCMP_ACT_NOTIFY: seccomp user notification needs a listener, which nexcage cannot provide in a Proxmox guest";
    if p.listener_path().is_some() {
        return Err(refuse(
            format!("{F}.listenerPath"),
            "seccomp user notification listeners are not supported",
        ));
    }
    if p.listener_metadata().is_some() {
        return Err(refuse(
            format!("{F}.listenerMetadata"),
            "seccomp user notification listeners are not supported",
        ));
    }
    let default = action(
        &format!("{F}.defaultAction"),
        p.default_action(),
        p.default_errno_ret(),
        notify,
    )?;
    let lib = |field: &str, e: libseccomp::error::SeccompError| refuse(field, e.to_string());
    let mut ctx = ScmpFilterContext::new(default).map_err(|e| lib(F, e))?;
    // The init sets no_new_privs itself, as the process asks (runc does the same).
    ctx.set_ctl_nnp(false).map_err(|e| lib(F, e))?;
    for (i, arch) in p.architectures().iter().flatten().enumerate() {
        let f = format!("{F}.architectures[{i}]");
        let name = serde_json::to_value(arch)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let arch = ScmpArch::from_str(&name).map_err(|e| lib(&f, e))?;
        // libseccomp refuses an architecture twice (the native one is there).
        if !ctx.is_arch_present(arch).map_err(|e| lib(&f, e))? {
            ctx.add_arch(arch).map_err(|e| lib(&f, e))?;
        }
    }
    let mut flags = 0;
    for (i, flag) in p.flags().iter().flatten().enumerate() {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => FLAG_SPEC_ALLOW,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err(refuse(
                    format!("{F}.flags[{i}]"),
                    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: only meaningful with SCMP_ACT_NOTIFY, which is not supported",
                ))
            }
        };
    }
    for (i, call) in p.syscalls().iter().flatten().enumerate() {
        let f = format!("{F}.syscalls[{i}]");
        if call.names().is_empty() {
            return Err(refuse(format!("{f}.names"), "no syscall named"));
        }
        if call.errno_ret().is_some()
            && !matches!(
                call.action(),
                LinuxSeccompAction::ScmpActErrno | LinuxSeccompAction::ScmpActTrace
            )
        {
            return Err(refuse(
                format!("{f}.errnoRet"),
                "only SCMP_ACT_ERRNO and SCMP_ACT_TRACE take a return value",
            ));
        }
        let act = action(
            &format!("{f}.action"),
            call.action(),
            call.errno_ret(),
            notify,
        )?;
        let mut conds = Vec::new();
        let mut per_arg = [0usize; MAX_ARGS];
        for (j, a) in call.args().iter().flatten().enumerate() {
            let fa = format!("{f}.args[{j}]");
            if a.index() >= MAX_ARGS {
                return Err(refuse(
                    format!("{fa}.index"),
                    format!("{}: a syscall has at most 6 arguments", a.index()),
                ));
            }
            per_arg[a.index()] += 1;
            let (op, datum) = match a.op() {
                LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, a.value()),
                LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, a.value()),
                LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, a.value()),
                LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, a.value()),
                LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, a.value()),
                LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, a.value()),
                // OCI's value is the mask and valueTwo the datum, as libseccomp takes them.
                LinuxSeccompOperator::ScmpCmpMaskedEq => (
                    ScmpCompareOp::MaskedEqual(a.value()),
                    a.value_two().unwrap_or(0),
                ),
            };
            conds.push(ScmpArgCompare::new(a.index() as u32, op, datum));
        }
        // runc: a rule that repeats the default action is redundant, and
        // libseccomp refuses it.
        if act == default {
            continue;
        }
        for name in call.names() {
            // runc skips names this libseccomp does not know, so profiles
            // written for newer kernels still load.
            let Ok(nr) = ScmpSyscall::from_name(name) else {
                tracing::debug!(syscall = %name, "seccomp: unknown syscall name skipped");
                continue;
            };
            let add = |ctx: &mut ScmpFilterContext, c: &[ScmpArgCompare]| {
                ctx.add_rule_conditional(act, nr, c)
                    .map(|_| ())
                    .map_err(|e| refuse(&f, format!("{name}: {e}")))
            };
            if per_arg.iter().any(|&n| n > 1) {
                // libseccomp cannot AND two conditions on one argument; runc
                // adds one rule per condition (any of them matches).
                for c in &conds {
                    add(&mut ctx, std::slice::from_ref(c))?;
                }
            } else {
                add(&mut ctx, &conds)?;
            }
        }
    }
    let mut program = enosys_stub(p);
    program.extend(export(&ctx).map_err(|m| refuse(F, m))?);
    if program.len() > MAX_INSNS {
        return Err(refuse(
            F,
            format!(
                "the compiled filter has {} instructions, more than the kernel's limit of {MAX_INSNS}",
                program.len()
            ),
        ));
    }
    Ok(Filter { flags, program })
}

fn action(
    field: &str,
    a: LinuxSeccompAction,
    errno: Option<u32>,
    notify: &str,
) -> Result<ScmpAction, SeccompError> {
    // runc's default return value for ERRNO and TRACE is EPERM.
    let ret = |errno: Option<u32>| -> Result<u16, SeccompError> {
        let e = errno.unwrap_or(libc::EPERM as u32);
        u16::try_from(e).map_err(|_| refuse(field, format!("errnoRet {e} does not fit in 16 bits")))
    };
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(ret(errno)?.into()),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(ret(errno)?),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => return Err(refuse(field, notify)),
    })
}

/// runc's -ENOSYS stub, for the x86 ABIs this host runs: a syscall numbered
/// above every one the profile names for its ABI gets ENOSYS instead of the
/// default action, so that libcs probing a syscall newer than the profile
/// (clone3, fchmodat2...) fall back instead of failing. As in runc: only for
/// a non-permissive default that is not already ENOSYS, and only for the
/// architectures the profile lists. Prepended to libseccomp's program.
fn enosys_stub(p: &LinuxSeccomp) -> Vec<(u16, u8, u8, u32)> {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const AUDIT_ARCH_I386: u32 = 0x4000_0003;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const ENOSYS_RET: u32 = 0x0005_0000 | libc::ENOSYS as u32;
    let permissive = matches!(
        p.default_action(),
        LinuxSeccompAction::ScmpActAllow
            | LinuxSeccompAction::ScmpActLog
            | LinuxSeccompAction::ScmpActTrace
    );
    if permissive || p.default_errno_ret() == Some(libc::ENOSYS as u32) {
        return Vec::new();
    }
    let largest = |arch: ScmpArch| -> Option<u32> {
        let listed = p
            .architectures()
            .iter()
            .flatten()
            .filter_map(|a| serde_json::to_value(a).ok()?.as_str().map(str::to_string))
            .filter_map(|a| ScmpArch::from_str(&a).ok())
            .any(|a| a == arch || (a == ScmpArch::Native && ScmpArch::native() == arch));
        if !listed {
            return None;
        }
        p.syscalls()
            .iter()
            .flatten()
            .flat_map(|c| c.names())
            .filter_map(|n| ScmpSyscall::from_name_by_arch(n, arch).ok())
            .filter_map(|nr| u32::try_from(i32::from(nr)).ok())
            .filter(|&nr| nr != 0)
            .max()
    };
    let x86_64 = largest(ScmpArch::X8664);
    let x32 = largest(ScmpArch::X32).map(|nr| nr | X32_SYSCALL_BIT);
    let i386 = largest(ScmpArch::X86);
    if x86_64.is_none() && x32.is_none() && i386.is_none() {
        return Vec::new();
    }
    // Assembled with labels, then resolved to relative jumps (all short:
    // the stub has at most 14 instructions).
    #[derive(Clone, Copy, PartialEq)]
    enum L {
        X64,
        X64Native,
        X32,
        I386,
        Enosys,
        Filter,
    }
    enum I {
        Load(u32),
        Jeq(u32, L, Option<L>),
        Jgt(u32, L, L),
        Jset(u32, L, L),
        Ja(L),
        Ret(u32),
        Label(L),
    }
    let mut code = vec![I::Load(4)];
    if x86_64.is_some() || x32.is_some() {
        code.push(I::Jeq(AUDIT_ARCH_X86_64, L::X64, None));
    }
    if i386.is_some() {
        code.push(I::Jeq(AUDIT_ARCH_I386, L::I386, None));
    }
    code.push(I::Ja(L::Filter));
    let check = |max: Option<u32>| match max {
        Some(m) => I::Jgt(m, L::Enosys, L::Filter),
        None => I::Ja(L::Filter),
    };
    if x86_64.is_some() || x32.is_some() {
        code.extend([
            I::Label(L::X64),
            I::Load(0),
            I::Jset(X32_SYSCALL_BIT, L::X32, L::X64Native),
            I::Label(L::X64Native),
            check(x86_64),
            I::Label(L::X32),
            check(x32),
        ]);
    }
    if i386.is_some() {
        code.extend([I::Label(L::I386), I::Load(0), check(i386)]);
    }
    code.extend([I::Label(L::Enosys), I::Ret(ENOSYS_RET), I::Label(L::Filter)]);
    let mut at = Vec::new();
    let mut n = 0usize;
    for i in &code {
        match i {
            I::Label(l) => at.push((*l, n)),
            _ => n += 1,
        }
    }
    let pos = |l: L| at.iter().find(|(x, _)| *x == l).expect("label placed").1;
    let mut out = Vec::new();
    for i in &code {
        let here = out.len() + 1;
        let rel = |l: L| u8::try_from(pos(l) - here).expect("short jump");
        out.push(match *i {
            I::Label(_) => continue,
            I::Load(off) => (0x20, 0, 0, off),
            I::Jeq(k, t, f) => (0x15, rel(t), f.map_or(0, rel), k),
            I::Jgt(k, t, f) => (0x25, rel(t), rel(f), k),
            I::Jset(k, t, f) => (0x45, rel(t), rel(f), k),
            I::Ja(l) => (0x05, 0, 0, u32::from(rel(l))),
            I::Ret(k) => (0x06, 0, 0, k),
        });
    }
    out
}

/// libseccomp writes the program to a descriptor; a memfd keeps it off disk.
fn export(ctx: &ScmpFilterContext) -> Result<Vec<(u16, u8, u8, u32)>, String> {
    let fd = nix::sys::memfd::memfd_create(c"seccomp-bpf", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(|e| format!("memfd_create: {e}"))?;
    ctx.export_bpf(&fd)
        .map_err(|e| format!("libseccomp cannot export the filter: {e}"))?;
    let mut file = std::fs::File::from(fd);
    file.rewind().map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() % 8 != 0 {
        return Err(format!(
            "libseccomp exported {} bytes, not whole instructions",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| {
            (
                u16::from_ne_bytes([c[0], c[1]]),
                c[2],
                c[3],
                u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            )
        })
        .collect())
}

/// Write the compiled filter into the bridge directory (host side, at
/// create), atomically ([`crate::fsutil::write_atomic`]).
pub fn write(bridge_dir: &Path, f: &Filter) -> Result<(), SeccompError> {
    let path = bridge_dir.join(FILE);
    let text = serde_json::to_vec(f).map_err(|e| SeccompError::Write {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    crate::fsutil::write_atomic(&path, &text, 0o644).map_err(|e| SeccompError::Write {
        path,
        source: e.into_io(),
    })
}

/// The filter the host left in the bridge, if the bundle has one.
pub fn read(bridge_dir: &Path) -> Result<Option<Loadable>, SeccompError> {
    let path = bridge_dir.join(FILE);
    let err = |message: String| SeccompError::Read {
        path: path.clone(),
        message,
    };
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    let f: Filter = serde_json::from_slice(&text).map_err(|e| err(e.to_string()))?;
    if f.program.is_empty() || f.program.len() > MAX_INSNS {
        return Err(err(format!("{} instructions", f.program.len())));
    }
    Ok(Some(Loadable {
        flags: f.flags,
        program: f
            .program
            .iter()
            .map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
            .collect(),
    }))
}

impl Loadable {
    /// Install the filter on the calling thread. Without no_new_privs the
    /// kernel asks for CAP_SYS_ADMIN, so the init calls this before it drops
    /// capabilities in that case (as runc does).
    ///
    /// Async-signal-safe: no allocation, one syscall.
    pub fn load(&self) -> std::io::Result<()> {
        let prog = libc::sock_fprog {
            len: self.program.len() as libc::c_ushort,
            filter: self.program.as_ptr().cast_mut(),
        };
        // SAFETY: prog points at `len` instructions that outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                self.flags as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn profile(v: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(v).unwrap()
    }

    fn refused(v: serde_json::Value) -> (String, String) {
        match compile(&profile(v)) {
            Err(SeccompError::Profile { field, message }) => (field, message),
            other => panic!("not refused: {other:?}"),
        }
    }

    fn golden(name: &str) -> LinuxSeccomp {
        let path = format!(
            "{}/fixtures/bundles/golden/{name}/config.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        profile(v["linux"]["seccomp"].clone())
    }

    #[test]
    fn podman_and_containerd_default_profiles_compile() {
        for name in [
            "podman-run-echo",
            "podman-run-it-terminal",
            "containerd-ctr-run-seccomp",
        ] {
            let f = compile(&golden(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(f.flags, 0, "{name}");
            // Hundreds of allowed calls over three architectures.
            assert!(f.program.len() > 100, "{name}: {}", f.program.len());
        }
    }

    /// `nexcage features` claims only what compiles.
    #[test]
    fn every_feature_listed_compiles() {
        for a in ACTIONS {
            compile(&profile(json!({"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["getppid"], "action": a}]})))
            .unwrap_or_else(|e| panic!("{a}: {e}"));
        }
        for op in OPERATORS {
            compile(&profile(json!({"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO",
                              "args": [{"index": 0, "value": 1, "valueTwo": 1, "op": op}]}]})))
            .unwrap_or_else(|e| panic!("{op}: {e}"));
        }
        let failed: Vec<_> = ARCHS
            .iter()
            .filter(|arch| {
                compile(&profile(json!({"defaultAction": "SCMP_ACT_ALLOW",
                    "architectures": [arch],
                    "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO"}]})))
                .is_err()
            })
            .collect();
        assert!(failed.is_empty(), "{failed:?}");
        for flag in SUPPORTED_FLAGS {
            compile(&profile(
                json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": [flag]}),
            ))
            .unwrap_or_else(|e| panic!("{flag}: {e}"));
        }
    }

    #[test]
    fn notify_and_listeners_are_refused_by_name() {
        let (f, m) = refused(json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
        assert_eq!(f, "linux.seccomp.defaultAction");
        assert!(m.contains("SCMP_ACT_NOTIFY"), "{m}");
        let (f, m) = refused(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                         {"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]}));
        assert_eq!(f, "linux.seccomp.syscalls[1].action");
        assert!(m.contains("SCMP_ACT_NOTIFY"), "{m}");
        let (f, _) =
            refused(json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/x.sock"}));
        assert_eq!(f, "linux.seccomp.listenerPath");
        let (f, m) = refused(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}));
        assert_eq!(f, "linux.seccomp.flags[0]");
        assert!(m.contains("WAIT_KILLABLE_RECV"), "{m}");
    }

    #[test]
    fn bad_rules_are_refused_with_their_field() {
        let (f, _) = refused(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                          "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}));
        assert_eq!(f, "linux.seccomp.syscalls[0].args[0].index");
        let (f, _) = refused(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_KILL", "errnoRet": 1}]}));
        assert_eq!(f, "linux.seccomp.syscalls[0].errnoRet");
        let (f, _) = refused(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": [], "action": "SCMP_ACT_KILL"}]}));
        assert_eq!(f, "linux.seccomp.syscalls[0].names");
        let (f, _) = refused(json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000}));
        assert_eq!(f, "linux.seccomp.defaultAction");
    }

    #[test]
    fn unknown_names_and_default_action_rules_are_skipped_as_runc_does() {
        let allow_all = compile(&profile(json!({"defaultAction": "SCMP_ACT_ALLOW"}))).unwrap();
        let same = compile(&profile(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["no_such_syscall_2099"], "action": "SCMP_ACT_ERRNO"},
                         {"names": ["read"], "action": "SCMP_ACT_ALLOW"}]})))
        .unwrap();
        assert_eq!(allow_all, same);
        let flags = compile(&profile(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_LOG"]})))
        .unwrap();
        assert_eq!(flags.flags, FLAG_SPEC_ALLOW | FLAG_LOG);
    }

    #[test]
    fn filter_round_trips_through_the_bridge_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_none());
        let f = compile(&golden("podman-run-echo")).unwrap();
        write(dir.path(), &f).unwrap();
        let l = read(dir.path()).unwrap().unwrap();
        assert_eq!(l.program.len(), f.program.len());
        std::fs::write(dir.path().join(FILE), b"{\"flags\":0,\"program\":[]}").unwrap();
        assert!(read(dir.path()).is_err());
    }

    /// Loads `f` in a forked child and returns what `probe` returns there.
    fn in_child(f: &Filter, probe: fn() -> i32) -> i32 {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), f).unwrap();
        let l = read(dir.path()).unwrap().unwrap();
        // SAFETY: the child makes only raw syscalls and _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if l.load().is_err() {
                    libc::_exit(100);
                }
                libc::_exit(probe())
            },
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).unwrap() {
                    nix::sys::wait::WaitStatus::Exited(_, code) => code,
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    /// errno of syscall `nr` with null arguments, or 0 if it succeeded.
    fn errno_of(nr: libc::c_long) -> i32 {
        // SAFETY: called only in the forked child, with null arguments.
        unsafe {
            if libc::syscall(nr, 0, 0, 0) >= 0 {
                0
            } else {
                *libc::__errno_location()
            }
        }
    }

    /// As runc: with containerd's profile (default EPERM) a syscall above
    /// every one it names gets ENOSYS, an unlisted older one EPERM.
    #[test]
    fn syscalls_newer_than_the_profile_get_enosys_as_with_runc() {
        let f = compile(&golden("containerd-ctr-run-seccomp")).unwrap();
        assert_eq!(in_child(&f, || errno_of(1000)), libc::ENOSYS);
        assert_eq!(in_child(&f, || errno_of(libc::SYS_acct)), libc::EPERM);
        assert_eq!(in_child(&f, || errno_of(libc::SYS_getppid)), 0);
        // Without architectures runc adds no stub: the default applies.
        let bare = compile(&profile(json!({"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["getppid", "exit_group", "exit"], "action": "SCMP_ACT_ALLOW"}]})))
        .unwrap();
        assert_eq!(in_child(&bare, || errno_of(1000)), libc::EPERM);
        // A permissive default needs none either.
        let allow = compile(&profile(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"]})))
        .unwrap();
        assert_eq!(
            allow.program,
            compile(&profile(json!({"defaultAction": "SCMP_ACT_ALLOW"})))
                .unwrap()
                .program
        );
    }

    /// The exported program does what the profile says once loaded: in a
    /// forked child (so the test process stays unfiltered), mkdir gets
    /// EPERM, masked-equal conditions match, other calls work.
    #[test]
    fn loaded_filter_denies_what_the_profile_denies() {
        let f = compile(&profile(json!({"defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            // umask(mode & 0o7 == 0o2) -> EACCES; other umasks pass.
            {"names": ["umask"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
             "args": [{"index": 0, "value": 7, "valueTwo": 2, "op": "SCMP_CMP_MASKED_EQ"}]}
        ]})))
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &f).unwrap();
        let l = read(dir.path()).unwrap().unwrap();
        let target =
            std::ffi::CString::new(dir.path().join("x").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: the child makes only raw syscalls and _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if l.load().is_err() {
                    libc::_exit(10);
                }
                if libc::mkdir(target.as_ptr(), 0o755) == 0 {
                    libc::_exit(11);
                }
                if *libc::__errno_location() != libc::EPERM {
                    libc::_exit(12);
                }
                if libc::syscall(libc::SYS_umask, 0o020) < 0 {
                    libc::_exit(13);
                }
                if libc::syscall(libc::SYS_umask, 0o012) != -1
                    || *libc::__errno_location() != libc::EACCES
                {
                    libc::_exit(14);
                }
                if libc::getpid() <= 0 {
                    libc::_exit(15);
                }
                libc::_exit(0)
            },
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
                assert!(!dir.path().join("x").exists());
            }
        }
    }
}
