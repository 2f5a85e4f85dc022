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
    /// Make a bundle (config.json, rootfs) from an OCI image layout or an
    /// oci-archive / docker-archive tar.
    Bundle(BundleArgs),
    /// Print the OCI features document.
    Features,
    /// Run a process inside a running container.
    Exec(ExecArgs),
    /// List the processes of a container.
    Ps(PsArgs),
    /// Freeze a container.
    Pause(IdArg),
    /// Thaw a container.
    Resume(IdArg),
    /// Change a container's resource limits.
    Update(UpdateArgs),
    /// Print container events and statistics.
    Events(EventsArgs),
    /// Print which backend a bundle would get, and the rule that chose it.
    Route(RouteArgs),
    /// List or prune the templates nexcage converted on the template storage.
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Check that this node has what nexcage needs: one line per item, ok,
    /// warn or fail, and what to do; exits 1 when an item fails.
    Check(CheckArgs),
    /// Internal: man pages or shell completions, generated from this
    /// command line (scripts/package.sh).
    #[command(hide = true)]
    Generate(GenerateArgs),
    /// Internal: the process bridge's host side, started by create.
    #[command(hide = true)]
    Monitor(MonitorArgs),
    /// Internal: destroy a stopped container's guest ahead of `delete`,
    /// started by the monitor once the process has ended.
    #[command(hide = true)]
    Reap(ReapArgs),
    /// Internal: the process bridge's PID 1 inside the container.
    #[command(hide = true)]
    Init(InitArgs),
}

impl Command {
    /// The container an existing-container command is about: the router
    /// sends it to that container's backend.
    pub fn container_id(&self) -> Option<&str> {
        Some(match self {
            Command::Start(a) | Command::State(a) | Command::Pause(a) | Command::Resume(a) => &a.id,
            Command::Kill(a) => &a.id,
            Command::Delete(a) => &a.id,
            Command::Exec(a) => &a.id,
            Command::Ps(a) => &a.id,
            Command::Update(a) => &a.id,
            Command::Events(a) => &a.id,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct RouteArgs {
    /// Path to the OCI bundle.
    #[arg(short = 'b', long, default_value = ".")]
    pub bundle: PathBuf,
    #[arg(short = 'f', long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
    /// The container id the bundle would be created as (for `id` rules).
    pub id: Option<String>,
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

#[derive(Debug, Clone, Args)]
pub struct BundleArgs {
    /// OCI image layout directory, or an oci-archive or docker-archive tar
    /// (`podman save`, `skopeo copy`, `docker save`).
    #[arg(long, value_name = "DIR|ARCHIVE")]
    pub image: PathBuf,
    /// The bundle directory to make; must not exist or be empty.
    #[arg(long, value_name = "BUNDLE")]
    pub out: PathBuf,
    /// Which image of several: its reference name (index annotation
    /// org.opencontainers.image.ref.name, or a docker RepoTag).
    #[arg(long, value_name = "REF")]
    pub tag: Option<String>,
}

/// `exec`: runc's flags.
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// OCI process JSON to run (instead of COMMAND and the flags below).
    #[arg(short = 'p', long)]
    pub process: Option<PathBuf>,
    /// Unix socket to receive the pty master on.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Working directory in the container.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Set an environment variable (NAME=VALUE); repeatable.
    #[arg(short = 'e', long)]
    pub env: Vec<String>,
    /// UID[:GID] to run as.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Additional group id; repeatable.
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    /// Add a capability (CAP_NAME) to every set; repeatable.
    #[arg(short = 'c', long)]
    pub cap: Vec<String>,
    /// Set no_new_privileges.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Accepted for runc compatibility; Proxmox guests have no per-process AppArmor profile.
    #[arg(long)]
    pub apparmor: Option<String>,
    /// Accepted for runc compatibility; SELinux labels are not applied.
    #[arg(long)]
    pub process_label: Option<String>,
    /// Pass N additional file descriptors (3..3+N) to the process.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Return once the process has started.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// File to write the host pid of the exec'd process's bridge to.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Exec even into a paused container.
    #[arg(long)]
    pub ignore_paused: bool,
    pub id: String,
    /// COMMAND [ARGS...] (without --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct PsArgs {
    #[arg(short = 'f', long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
    pub id: String,
    /// Options for ps(1) in table format (default -ef).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

/// `update`: a LinuxResources JSON and/or runc's single-value flags (which
/// win over the file).
#[derive(Debug, Clone, Args)]
pub struct UpdateArgs {
    /// LinuxResources JSON file, or - for stdin.
    #[arg(short = 'r', long)]
    pub resources: Option<PathBuf>,
    /// Memory limit: bytes, or with a k, m, g or t suffix (512m, 1.5g); -1 for none.
    #[arg(short = 'm', long, allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Memory reservation (soft limit).
    #[arg(long, allow_hyphen_values = true)]
    pub memory_reservation: Option<String>,
    /// Memory plus swap limit; -1 for unlimited swap.
    #[arg(long, allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Kernel memory limit (refused: obsolete).
    #[arg(long, allow_hyphen_values = true)]
    pub kernel_memory: Option<String>,
    /// Kernel TCP memory limit (refused).
    #[arg(long, allow_hyphen_values = true)]
    pub kernel_memory_tcp: Option<String>,
    /// CPU CFS period in microseconds.
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CPU CFS quota in microseconds.
    #[arg(long, allow_negative_numbers = true)]
    pub cpu_quota: Option<i64>,
    /// CPU shares (relative weight).
    #[arg(long = "cpu-share", alias = "cpu-shares")]
    pub cpu_share: Option<u64>,
    /// Realtime period (refused).
    #[arg(long)]
    pub cpu_rt_period: Option<u64>,
    /// Realtime runtime (refused).
    #[arg(long, allow_negative_numbers = true)]
    pub cpu_rt_runtime: Option<i64>,
    /// CPUs to use (0-3, 0,1).
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes to use.
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Maximum number of pids; 0 or -1 for no limit.
    #[arg(long, allow_negative_numbers = true)]
    pub pids_limit: Option<i64>,
    /// Block IO weight (refused).
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    /// Intel RDT L3 cache schema (refused).
    #[arg(long)]
    pub l3_cache_schema: Option<String>,
    /// Intel RDT memory bandwidth schema (refused).
    #[arg(long)]
    pub mem_bw_schema: Option<String>,
    pub id: String,
}

#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// Print one stats object and exit.
    #[arg(long)]
    pub stats: bool,
    /// Interval between stats lines of the stream (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s")]
    pub interval: String,
    pub id: String,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TemplateCommand {
    /// nexcage's templates: size, last use, containers of this root created
    /// from them, and whether a create is using one right now.
    List(TemplateListArgs),
    /// Remove templates through pveam. Default: those no container of this
    /// root was created from; a template a create is using is never removed.
    Prune(TemplatePruneArgs),
}

#[derive(Debug, Clone, Args)]
pub struct TemplateListArgs {
    #[arg(short = 'f', long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
}

#[derive(Debug, Clone, Args)]
pub struct TemplatePruneArgs {
    /// Also those containers of this root were created from (their guests
    /// have their own copy of the root; only a re-create converts again).
    #[arg(long)]
    pub all: bool,
    /// Only those last used longer ago than DURATION (7d, 12h, 30m, 45s, 2w).
    #[arg(long, value_name = "DURATION")]
    pub older_than: Option<String>,
    #[arg(short = 'f', long, value_enum, default_value_t = ListFormat::Table)]
    pub format: ListFormat,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[arg(short = 'f', long, value_enum, default_value_t = CheckFormat::Text)]
    pub format: CheckFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    pub what: GenerateWhat,
    /// Directory to write the files into (created if missing).
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GenerateWhat {
    /// One page per subcommand, section 8 as runc's (nexcage.8, nexcage-create.8, ...).
    Man,
    /// bash (nexcage), zsh (_nexcage) and fish (nexcage.fish) completions.
    Completions,
}

/// The hidden `init`: without a mode it is the guest's PID 1 (lxc.init.cmd);
/// `init exec FILE` runs one process for `nexcage exec`.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    #[command(subcommand)]
    pub mode: Option<InitMode>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum InitMode {
    /// Become the process described by FILE (OCI process JSON).
    Exec { file: PathBuf },
}

#[derive(Debug, Clone, Args)]
pub struct ReapArgs {
    pub id: String,
    /// The pid of the monitor that started the reap: only its container's
    /// guest is destroyed, never one of a later container of the same id.
    #[arg(long)]
    pub monitor: i32,
}

#[derive(Debug, Clone, Args)]
pub struct MonitorArgs {
    pub id: String,
    /// The container's bridge directory (the socket's own name may be a
    /// /proc/self/fd alias: see BridgeDir::prepare).
    #[arg(long)]
    pub bridge_dir: PathBuf,
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

/// Parses the command line as [`Cli::parse`] does, except that a usage error
/// is one line on stderr, as runc's: clap's own adds usage and tips over
/// several lines, which clients that log stderr line by line split apart.
pub fn parse() -> Cli {
    use clap::error::ErrorKind;
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
            _ => {
                eprintln!("nexcage: {}", one_line(&e.to_string()));
                std::process::exit(e.exit_code());
            }
        },
    }
}

/// The error part of clap's rendering (up to its first blank line, before
/// the tip and usage), on one line and without the `error: ` label.
fn one_line(rendered: &str) -> String {
    let head = rendered.split("\n\n").next().unwrap_or(rendered);
    let head = head.strip_prefix("error: ").unwrap_or(head);
    head.split_whitespace().collect::<Vec<_>>().join(" ")
}
