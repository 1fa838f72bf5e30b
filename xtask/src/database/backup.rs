//! The backup stage of deploy and rollback (and of `cargo xtask backup`):
//! runs scripts/backup-db.sh and reports what it wrote.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cluster::database::DatabasePod;
use crate::config::Environment;

pub const SCRIPT: &str = "scripts/backup-db.sh";

/// A backup that exists and was checked by the script.
#[derive(Debug, Clone)]
pub struct Backup {
    pub path: PathBuf,
    pub size: u64,
    pub took: Duration,
}

/// Which database a backup dumps.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The release's database pod: its own database and role.
    InChart(DatabasePod),
    /// `DATABASE_URL` of the deploying shell (an external database).
    External,
    /// Neither: the script will say so (and refuse).
    Unknown,
}

impl Source {
    /// The in-chart database wins over a `DATABASE_URL` in the shell: the
    /// release's data is in its pod.
    pub fn choose(database_pod: Option<&DatabasePod>, external_url: bool) -> Source {
        match (database_pod, external_url) {
            (Some(pod), _) => Source::InChart(pod.clone()),
            (None, true) => Source::External,
            (None, false) => Source::Unknown,
        }
    }

    /// Read from the cluster and the shell, for `cargo xtask backup`.
    pub fn read(env: &Environment) -> Result<Source> {
        let pod = crate::cluster::database::read(env)?;
        Ok(Source::choose(
            pod.as_ref(),
            std::env::var_os("DATABASE_URL").is_some(),
        ))
    }

    /// In words, for the plan.
    pub fn describe(&self) -> String {
        match self {
            Source::InChart(pod) => format!(
                "database {} as {} in pod {} (the chart's; a DATABASE_URL in this shell is ignored)",
                pod.database, pod.user, pod.name
            ),
            Source::External => "the external database of DATABASE_URL".into(),
            Source::Unknown => "no database pod and no DATABASE_URL: nothing to dump".into(),
        }
    }
}

/// The script's argv, as the plan shows it and the stage runs it.
pub fn script_args(env: &Environment, source: &Source) -> Vec<String> {
    let mut argv = vec![
        SCRIPT.into(),
        "--context".into(),
        env.kube_context.clone(),
        "--release".into(),
        env.release.clone(),
    ];
    if let Source::InChart(pod) = source {
        argv.extend([
            "--in-chart".into(),
            "--db-user".into(),
            pod.user.clone(),
            "--db-name".into(),
            pod.database.clone(),
        ]);
    }
    argv.push(env.namespace.clone());
    argv.push(env.backup_dir.display().to_string());
    argv
}

/// Runs the backup (the plan's `argv`); its progress goes to stderr, its
/// last stdout line is the file. Fails if the script does, or if the file
/// is not there.
pub fn take(env: &Environment, argv: &[String]) -> Result<Backup> {
    let argv = argv.to_vec();
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
