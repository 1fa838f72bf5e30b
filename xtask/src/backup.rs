//! `cargo xtask backup [<env>]`, and the backup stage of deploy and
//! rollback: runs scripts/backup-db.sh and reports what it wrote.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cli::StageArgs;
use crate::config::{self, Environment};

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
    let mut child = Command::new(env.root.join(&argv[0]))
        .args(&argv[1..])
        .current_dir(&env.root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {SCRIPT}"))?;
    // Its progress (and pg_dump's errors) are shown, masked; its stdout is the path.
    let stderr = child.stderr.take().expect("piped stderr");
    let relay = std::thread::spawn(move || crate::cluster::relay_lines(stderr, true));
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("piped stdout"), &mut stdout)?;
    let status = child.wait()?;
    let _ = relay.join();
    if !status.success() {
        bail!(
            "the backup failed ({status}): nothing was changed; see the error above, then `cargo xtask backup {}`",
            env.name
        );
    }
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

pub fn run(args: StageArgs) -> Result<()> {
    let env = config::load(args.env.as_deref(), &args.env_overrides)?;
    let backup = take(&env)?;
    println!(
        "backup of {}: {} ({}, {:.1} s)",
        env.name,
        backup.path.display(),
        crate::images::human_bytes(backup.size),
        backup.took.as_secs_f64()
    );
    Ok(())
}
