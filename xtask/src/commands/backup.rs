//! `cargo xtask backup [<env>]`: a backup on its own (`database::backup`),
//! and what it wrote.

use anyhow::Result;

use crate::cli::EnvArgs;
use crate::config;
use crate::database::backup::{dir_problem, script_args, take, Source};

/// `backup --json`: the file, its size and how long it took.
#[derive(serde::Serialize)]
struct BackupJson<'a> {
    environment: &'a str,
    path: String,
    bytes: u64,
    seconds: f64,
}

pub fn run(args: EnvArgs) -> Result<()> {
    let env = config::load(args.env.as_deref(), &args.env_overrides)?;
    if let Some(why) = dir_problem(&env) {
        return Err(crate::error::input_error(why));
    }
    let source = Source::read(&env)?;
    crate::progress::say(format!("backup of {}: {}", env.name, source.describe()));
    let backup = take(&env, &script_args(&env, &source))?;
    if args.json {
        return crate::report::print_json(&BackupJson {
            environment: &env.name,
            path: backup.path.display().to_string(),
            bytes: backup.size,
            seconds: backup.took.as_secs_f64(),
        });
    }
    println!(
        "backup of {}: {} ({}, {:.1} s)",
        env.name,
        backup.path.display(),
        crate::images::human_bytes(backup.size),
        backup.took.as_secs_f64()
    );
    Ok(())
}
