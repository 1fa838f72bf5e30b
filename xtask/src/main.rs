//! `cargo xtask`: Colony's deploy tool. A module per command under `commands/`;
//! this file only parses the command line and maps errors to exit codes.

mod alembic;
mod cli;
mod cluster;
mod commands;
mod config;
mod confirm;
mod error;
mod images;
mod plan;
mod process;
mod progress;

use clap::Parser;

use cli::{Cli, Command};
use commands::{backup, build_push, deploy, doctor, migrations, rollback, status, verify};

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Deploy(args) => deploy::run(args),
        Command::Build(args) => build_push::build(args),
        Command::Push(args) => build_push::push(args),
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
