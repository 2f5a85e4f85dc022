//! The runc-compatible command line. Global flags come before the subcommand,
//! exactly as containerd, CRI-O and conmon pass them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "nexcage",
    about = "OCI runtime that runs containers as Proxmox VE LXC guests",
    disable_version_flag = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalOpts {
    /// Root directory for container state.
    #[arg(long, global = true, default_value = "/run/nexcage")]
    pub root: PathBuf,
    /// Log file (default: stderr).
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log debug messages.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Accepted for runc compatibility and recorded in the state: Proxmox places
    /// every container in its own cgroup, so the cgroup driver is not ours to choose.
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for runc compatibility: nexcage always runs as root on the
    /// node. For `spec` it asks for a rootless (user namespace) spec.
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true")]
    pub rootless: Option<String>,
    /// Print the version.
    #[arg(short = 'v', long)]
    pub version: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a container (the process is not started).
    Create(CreateArgs),
    /// Start the process of a created container.
    Start(IdArg),
    /// Print the state of a container as JSON.
    State(IdArg),
    /// Send a signal to the container's process.
    Kill(KillArgs),
    /// Delete a container and its Proxmox guest.
    Delete(DeleteArgs),
    /// Create and start a container, then wait for it (unless --detach).
    Run(RunArgs),
    /// List containers.
    List(ListArgs),
    /// Write a default config.json.
    Spec(SpecArgs),
    /// Print the OCI features document.
    Features,
    /// Run a process inside a running container.
    Exec(PassThroughArgs),
    /// List the processes of a container.
    Ps(PassThroughArgs),
    /// Freeze a container.
    Pause(PassThroughArgs),
    /// Thaw a container.
    Resume(PassThroughArgs),
    /// Change a container's resource limits.
    Update(PassThroughArgs),
    /// Print container events and statistics.
    Events(PassThroughArgs),
    /// Internal: the process bridge's host side, started by create.
    #[command(hide = true)]
    Monitor(MonitorArgs),
    /// Internal: the process bridge's PID 1 inside the container.
    #[command(hide = true)]
    Init,
}

#[derive(Debug, Clone, Args)]
pub struct IdArg {
    pub id: String,
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Path to the OCI bundle.
    #[arg(short = 'b', long, default_value = ".")]
    pub bundle: PathBuf,
    /// File to write the pid of the container's process to.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Unix socket to receive the pty master on (process.terminal).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility; LXC sets up the root filesystem.
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility; LXC manages the session keyring.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass N additional file descriptors (3..3+N) to the process.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    pub id: String,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Return after starting instead of waiting for the process.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Clone, Args)]
pub struct KillArgs {
    /// Signal every process of the container.
    #[arg(short = 'a', long)]
    pub all: bool,
    pub id: String,
    /// Signal number or name (9, KILL, SIGKILL); default TERM.
    pub signal: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    /// Kill the container if it is still running; succeed if it does not exist.
    #[arg(short = 'f', long)]
    pub force: bool,
    pub id: String,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[arg(short = 'f', long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
    /// Print only the container ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct SpecArgs {
    /// Directory to write config.json into. `--rootless` (the global flag,
    /// also accepted here as runc does) asks for a user namespace.
    #[arg(short = 'b', long, default_value = ".")]
    pub bundle: PathBuf,
}

/// Commands of a later milestone accept any arguments so that callers get the
/// clear "not supported yet" error instead of a usage error.
#[derive(Debug, Clone, Args)]
pub struct PassThroughArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct MonitorArgs {
    pub id: String,
    /// Inherited descriptor of the bridge socket the init connects to.
    #[arg(long)]
    pub listen_fd: i32,
    /// Inherited descriptor on which create is told the outcome.
    #[arg(long)]
    pub status_fd: i32,
    /// Number of preserved descriptors (3..3+N) to hand to the process.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
}
