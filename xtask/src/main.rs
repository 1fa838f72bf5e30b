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

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// ARCHITECTURE.md's xtask table lists exactly the files of `xtask/src`.
    #[test]
    fn the_architecture_map_lists_every_file_and_only_those() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let map = std::fs::read_to_string(src.join("../../ARCHITECTURE.md")).unwrap();
        let xtask = map
            .split("## xtask\n")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("ARCHITECTURE.md has an xtask section");
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                for inner in std::fs::read_dir(&path).unwrap() {
                    files.push(inner.unwrap().path());
                }
            } else {
                files.push(path);
            }
        }
        let files: Vec<String> = files
            .iter()
            .map(|f| f.strip_prefix(&src).unwrap().to_string_lossy().into_owned())
            .collect();
        for file in &files {
            assert!(
                xtask.contains(&format!("`{file}`")),
                "ARCHITECTURE.md does not list xtask/src/{file}"
            );
        }
        let listed = xtask.split('`').skip(1).step_by(2).filter(|word| {
            word.ends_with(".rs") && !word.contains(' ') && !word.starts_with("xtask/")
        });
        for word in listed {
            assert!(
                files.iter().any(|f| f == word),
                "ARCHITECTURE.md lists {word}, which is not a file of xtask/src"
            );
        }
    }
}
