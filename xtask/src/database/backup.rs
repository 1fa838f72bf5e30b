//! The backup stage of deploy and rollback (and of `cargo xtask backup`):
//! runs scripts/backup-db.sh and reports what it wrote.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::config::Environment;

pub const SCRIPT: &str = "scripts/backup-db.sh";

/// A backup that exists and was checked by the script.
#[derive(Debug, Clone)]
pub struct Backup {
    pub path: PathBuf,
    pub size: u64,
    pub took: Duration,
}

/// The script's argv, as the plan shows it and the stage runs it.
pub fn script_args(env: &Environment) -> Vec<String> {
    vec![
        SCRIPT.into(),
        "--context".into(),
        env.kube_context.clone(),
        "--release".into(),
        env.release.clone(),
        env.namespace.clone(),
        env.backup_dir.display().to_string(),
    ]
}

/// Runs the backup; its progress goes to stderr, its last stdout line is
/// the file. Fails if the script does, or if the file is not there.
pub fn take(env: &Environment) -> Result<Backup> {
    let argv = script_args(env);
    let started = Instant::now();
    // Through the process layer: its progress lines (and pg_dump's errors)
    // are shown as they come, masked; its last line is the file's path. An
    // interrupt stops it with SIGTERM, and its trap removes the partial file.
    let mut script = argv.clone();
    script[0] = env.root.join(&argv[0]).display().to_string();
    let running = crate::process::spawn(&script).with_context(|| format!("cannot run {SCRIPT}"))?;
    let mut last = String::new();
    let code = running.lines(|line| {
        if !last.is_empty() {
            eprintln!("  backup: {last}");
        }
        last = line.to_string();
    })?;
    if code != 0 {
        if !last.is_empty() {
            eprintln!("  backup: {last}");
        }
        bail!(
            "the backup failed (exit {code}): nothing was changed; see the error above, then `cargo xtask backup {}`",
            env.name
        );
    }
    let stdout = last;
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    let size = std::fs::metadata(&path)
        .with_context(|| format!("{SCRIPT} reported {} but it does not exist", path.display()))?
        .len();
    Ok(Backup {
        path,
        size,
        took: started.elapsed(),
    })
}
