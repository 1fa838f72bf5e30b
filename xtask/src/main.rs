//! `cargo xtask`: Colony's deploy tool. A module per command under `commands/`;
//! this file only parses the command line and maps errors to exit codes.

mod alembic;
mod cli;
mod cluster;
mod commands;
mod config;
mod confirm;
mod database;
mod error;
mod execute;
mod images;
mod plan;
mod process;
mod progress;
mod report;
mod runtime;
mod verify;

use clap::Parser;

use cli::{Cli, Command};
use commands::{backup, build_push, deploy, doctor, migrations, rehearse, rollback, status};

fn main() {
    let cli = Cli::parse();
    let ssh_masters = images::ssh::prepare();
    progress::set_verbosity(match (cli.quiet, cli.verbose) {
        (true, _) => progress::Verbosity::Quiet,
        (_, true) => progress::Verbosity::Verbose,
        _ => progress::Verbosity::Normal,
    });
    let result = match cli.command {
        Command::Deploy(args) => deploy::run(args),
        Command::Build(args) => build_push::build(args),
        Command::Push(args) => build_push::push(args),
        Command::Backup(args) => backup::run(args),
        Command::Verify(args) => commands::verify::run(args),
        Command::Rollback(args) => rollback::run(args),
        Command::Migrations(args) => migrations::run(args),
        Command::Status(args) => status::run(args),
        Command::Rehearse(args) => rehearse::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Lock(args) => commands::lock::run(args),
    };
    runtime::shutdown();
    if let Some(masters) = ssh_masters {
        masters.close();
    }
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

    /// The layers, lowest first: a file of a layer uses only layers below
    /// its own (the frame's files, `error`, `process`, `progress`, `cli`, are
    /// the floor; `commands` the top). A layer's name is its folder.
    const LAYERS: [&str; 9] = [
        "config", "images", "cluster", "alembic", "database", "verify", "plan", "execute",
        "commands",
    ];

    /// Help that a terminal of 80 columns (COLUMNS=80) shows: wrapped, no
    /// line over 100 characters, for the top level and every command.
    #[test]
    fn help_fits_an_80_column_terminal() {
        use clap::CommandFactory;
        let mut top = crate::cli::Cli::command().term_width(80);
        top.build();
        let mut commands = vec![top.clone()];
        commands.extend(top.get_subcommands().cloned());
        for mut command in commands {
            let name = command.get_name().to_string();
            let help = command.render_long_help().to_string();
            for line in help.lines() {
                assert!(
                    line.chars().count() <= 100,
                    "{name}: {} chars: {line}",
                    line.chars().count()
                );
            }
        }
    }

    /// Every `crate::<layer>` a layer's files name is below it: an import
    /// that goes up (a decider using a command, a config type from images)
    /// fails here with the file and the layer it reached.
    #[test]
    fn layers_only_look_down() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for (rank, layer) in LAYERS.iter().enumerate() {
            for entry in std::fs::read_dir(src.join(layer)).unwrap() {
                let path = entry.unwrap().path();
                let text = std::fs::read_to_string(&path).unwrap();
                for used in text.split("crate::").skip(1) {
                    let name: String = used
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if let Some(used_rank) = LAYERS.iter().position(|l| *l == name) {
                        assert!(
                            used_rank <= rank && (used_rank < rank || name == *layer),
                            "{} (layer {layer}) uses crate::{name}, a layer above or beside it",
                            path.strip_prefix(&src).unwrap().display()
                        );
                    }
                }
            }
        }
    }

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
