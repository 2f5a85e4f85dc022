//! One file per subcommand; each only wires arguments to the modules that do
//! the work. Each returns the process exit code.

pub mod create;
pub mod delete;
pub mod features;
pub mod kill;
pub mod list;
pub mod run;
pub mod spec;
pub mod start;
pub mod state;
pub mod unsupported;

use crate::cli::{Command, GlobalOpts};
use crate::config::Settings;
use crate::error::Result;
use crate::state::Store;

pub fn dispatch(command: Command, global: &GlobalOpts) -> Result<i32> {
    match command {
        Command::Create(a) => create::run(global, &a),
        Command::Start(a) => start::run(global, &a.id),
        Command::State(a) => state::run(global, &a.id),
        Command::Kill(a) => kill::run(global, &a),
        Command::Delete(a) => delete::run(global, &a),
        Command::Run(a) => run::run(global, &a),
        Command::List(a) => list::run(global, &a),
        Command::Spec(a) => spec::run(global, &a),
        Command::Features => features::run(),
        Command::Exec(_) => unsupported::run("exec"),
        Command::Ps(_) => unsupported::run("ps"),
        Command::Pause(_) => unsupported::run("pause"),
        Command::Resume(_) => unsupported::run("resume"),
        Command::Update(_) => unsupported::run("update"),
        Command::Events(_) => unsupported::run("events"),
        Command::Monitor(_) | Command::Init => unreachable!("dispatched in main"),
    }
}

/// What almost every command needs: the node settings and the state store.
pub fn context(global: &GlobalOpts) -> Result<(Settings, Store)> {
    Ok((Settings::load()?, Store::open(&global.root)?))
}
