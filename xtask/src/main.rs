//! `cargo xtask`: Colony's deploy tool. One module per command; this file
//! only parses the command line and maps errors to exit codes.

mod backup;
mod cli;
mod cluster;
mod config;
mod confirm;
mod context;
mod deploy;
mod docker;
mod dockerignore;
mod doctor;
mod error;
mod git;
mod helm;
mod images;
mod inputs;
mod kube;
mod migration_lint;
mod migrations;
mod names;
mod plan;
mod process;
mod progress;
mod registry;
mod release;
mod rollback;
mod rollback_plan;
mod rollout;
mod runner_binary;
mod schema;
mod sql_preview;
mod stages;
mod status;
mod verify;
mod versions;

use clap::Parser;

use cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Deploy(args) => deploy::run(args),
        Command::Build(args) => stages::build(args),
        Command::Push(args) => stages::push(args),
        Command::Backup(args) => backup::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Rollback(args) => rollback::run(args),
        Command::Migrations(args) => migrations::run(args),
        Command::Status(args) => status::run(args),
        Command::Doctor(args) => doctor::run(args),
    };
    if let Err(error) = result {
        eprintln!(
            "error: {}",
            backend_migrations::redact::mask_all(&format!("{error:#}"))
        );
        std::process::exit(error::exit_code(&error));
    }
}
