//! One file per subcommand; each only wires arguments to the modules that do
//! the work. Each returns the process exit code.

pub mod bundle;
pub mod check;
pub mod create;
pub mod delete;
pub mod events;
pub mod exec;
pub mod features;
pub mod generate;
pub mod kill;
pub mod list;
pub mod pause;
pub mod ps;
pub mod reap;
pub mod resume;
pub mod route;
pub mod run;
pub mod spec;
pub mod start;
pub mod state;
pub mod template;
pub mod update;

use crate::cli::{Command, GlobalOpts};
use crate::config::Settings;
use crate::error::Result;
use crate::state::Store;

pub fn dispatch(command: Command, global: &GlobalOpts) -> Result<i32> {
    // A delegated container's commands all go to its runtime, whatever
    // they are; the guest backends' containers take the paths below.
    if let Some(id) = command.container_id() {
        if let Some(code) = crate::forward::existing(global, &command, id)? {
            return Ok(code);
        }
    }
    match command {
        Command::Create(a) => create::run(global, &a),
        Command::Start(a) => start::run(global, &a.id),
        Command::State(a) => state::run(global, &a.id),
        Command::Kill(a) => kill::run(global, &a),
        Command::Delete(a) => delete::run(global, &a),
        Command::Run(a) => run::run(global, &a),
        Command::List(a) => list::run(global, &a),
        Command::Spec(a) => spec::run(global, &a),
        Command::Bundle(a) => bundle::run(&a),
        Command::Features => features::run(global),
        Command::Route(a) => route::run(global, &a),
        Command::Exec(a) => exec::run(global, &a),
        Command::Ps(a) => ps::run(global, &a),
        Command::Pause(a) => pause::run(global, &a.id),
        Command::Resume(a) => resume::run(global, &a.id),
        Command::Update(a) => update::run(global, &a),
        Command::Events(a) => events::run(global, &a),
        Command::Template(c) => template::run(global, &c),
        Command::Check(a) => check::run(global, &a),
        Command::Generate(a) => generate::run(&a),
        Command::Reap(a) => reap::run(global, &a),
        Command::Monitor(_) | Command::Init(_) => unreachable!("dispatched in main"),
    }
}

/// What almost every command needs: the node settings and the state store.
pub fn context(global: &GlobalOpts) -> Result<(Settings, Store)> {
    Ok((crate::router::load_settings()?, Store::open(&global.root)?))
}

/// The backend the router gives a new container (`create`, `run`).
pub fn route_new(
    settings: &Settings,
    store: &Store,
    bundle: &crate::bundle::Bundle,
    id: &str,
) -> Result<crate::router::Runtime> {
    crate::lifecycle::check_id(id)?;
    let route = crate::router::route(bundle, Some(id), settings, store.root())?;
    tracing::debug!(backend = route.backend, chosen_by = %route.chosen_by, "routed {id}");
    crate::router::runtime(&route.backend, settings, store.root())
}

/// Columns padded to their widest cell plus three, as runc's tabwriter does
/// (`list`, `template list`).
pub(crate) fn table<R: AsRef<[String]>>(header: &[&str], rows: &[R]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r.as_ref()) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}", w = widths[i] + 3));
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.as_ref().iter().map(String::as_str).collect());
    }
    out
}
