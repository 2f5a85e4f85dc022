//! nexcage: an OCI runtime with runc's command line that runs each container
//! as a Proxmox VE LXC guest.

mod backend;
mod bridge;
mod bundle;
mod capture;
mod cgroup;
mod cli;
mod commands;
mod config;
mod delegate;
mod error;
mod exec;
mod features;
mod forward;
mod fsutil;
mod hex;
mod hooks;
mod image;
mod lifecycle;
mod logging;
mod manual;
mod preflight;
mod procfs;
mod router;
mod state;
mod terminal;

use clap::CommandFactory;

use cli::{Cli, Command};

fn main() {
    let cli = cli::parse();
    if cli.global.version {
        println!("nexcage version {}", env!("CARGO_PKG_VERSION"));
        println!("commit: {}", env!("NEXCAGE_COMMIT"));
        println!("spec: {}", state::OCI_VERSION);
        return;
    }
    let Some(command) = cli.command else {
        let _ = Cli::command().print_help();
        std::process::exit(1);
    };
    match command {
        // Inside the container: touch nothing of the host's layout.
        Command::Init(args) => match args.mode {
            None => bridge::init::run(),
            Some(cli::InitMode::Exec { file }) => bridge::init::exec(&file),
        },
        Command::Monitor(args) => {
            logging::init(&cli.global, logging::Role::Monitor);
            bridge::monitor::run(&args, &cli.global)
        }
        command => {
            logging::init(&cli.global, logging::Role::Command);
            match commands::dispatch(command, &cli.global) {
                Ok(code) => std::process::exit(code),
                Err(e) => {
                    logging::report_error(&cli.global, &e.to_string());
                    std::process::exit(1);
                }
            }
        }
    }
}
