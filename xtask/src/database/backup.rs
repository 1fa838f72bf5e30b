//! The backup stage of deploy and rollback (and of `cargo xtask backup`):
//! runs scripts/backup-db.sh and reports what it wrote.

use std::path::{Path, PathBuf};
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

/// Why backups cannot be written to `env.backup_dir`, if they cannot:
/// inside the checkout (one `git add -A` from a commit) or a build context
/// (in the next image pushed), or not writable here. Read-only: the
/// directory is made by the backup itself.
pub fn dir_problem(env: &Environment) -> Option<String> {
    let dir = resolved(&env.backup_dir);
    let root = resolved(&env.root);
    let contexts: Vec<(String, PathBuf)> = env
        .images
        .iter()
        .map(|i| {
            (
                i.component.to_string(),
                resolved(&env.root.join(&i.context)),
            )
        })
        .collect();
    placement_problem(&dir, &root, &contexts)
        .or_else(|| writable_problem(&dir))
        .map(|why| format!("backup_dir {}: {why}", env.backup_dir.display()))
}

/// Where a dump must never go. Pure (on resolved paths).
fn placement_problem(dir: &Path, root: &Path, contexts: &[(String, PathBuf)]) -> Option<String> {
    let outside = "set backup_dir in deploy.toml to a directory outside the checkout, e.g. \
                   ~/.local/state/colony/backups";
    if let Some((component, context)) = contexts.iter().find(|(_, c)| dir.starts_with(c)) {
        return Some(format!(
            "inside the {component} build context {}: the next image pushed would carry the dump; {outside}",
            context.display()
        ));
    }
    dir.starts_with(root).then(|| {
        format!(
            "inside the checkout {}: a dump there is one `git add -A` away from a commit; {outside}",
            root.display()
        )
    })
}

/// The nearest directory that exists must let this user make files.
fn writable_problem(dir: &Path) -> Option<String> {
    let existing = dir.ancestors().find(|a| a.exists())?;
    if !existing.is_dir() {
        return Some(format!("{} is not a directory", existing.display()));
    }
    // An unnamed file (O_TMPFILE): the real test of making a file there
    // (permissions, a read-only mount, root included), and nothing is left.
    tempfile::tempfile_in(existing)
        .err()
        .map(|e| format!("cannot make files in {} ({e})", existing.display()))
}

/// `path` with its existing part's symbolic links resolved, and the rest
/// (not made yet) appended with `.` and `..` applied as written.
fn resolved(path: &Path) -> PathBuf {
    let components: Vec<_> = path.components().collect();
    for split in (0..=components.len()).rev() {
        let existing: PathBuf = components[..split].iter().collect();
        let Ok(mut real) = existing.canonicalize() else {
            continue;
        };
        for part in &components[split..] {
            match part {
                std::path::Component::ParentDir => {
                    real.pop();
                }
                std::path::Component::Normal(name) => real.push(name),
                _ => {}
            }
        }
        return real;
    }
    path.to_path_buf()
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
    // Interrupted before it started (it runs beside the image stage): no
    // dump begins that the exit would leave half written.
    if let Some(interrupt) = crate::process::interrupted() {
        return Err(interrupt.into());
    }
    let running = crate::process::spawn(&script).with_context(|| format!("cannot run {SCRIPT}"))?;
    let mut last = String::new();
    let code = running.lines(|line| {
        if !last.is_empty() {
            crate::progress::say(format!("  backup: {last}"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_never_go_into_the_checkout_or_a_build_context() {
        let root = Path::new("/repo");
        let contexts = vec![("backend".to_string(), PathBuf::from("/repo/backend"))];
        let inside_context =
            placement_problem(Path::new("/repo/backend/dumps"), root, &contexts).unwrap();
        assert!(
            inside_context.contains("inside the backend build context /repo/backend"),
            "{inside_context}"
        );
        let in_root = placement_problem(Path::new("/repo"), root, &contexts).unwrap();
        assert!(in_root.contains("git add -A"), "{in_root}");
        assert_eq!(
            placement_problem(Path::new("/home/dev/backups"), root, &contexts),
            None
        );
        // A sibling whose name starts alike is outside.
        assert_eq!(
            placement_problem(Path::new("/repo-backups"), root, &contexts),
            None
        );
    }

    #[test]
    fn a_directory_that_cannot_hold_files_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(writable_problem(&dir.path().join("not/yet/made")), None);
        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        let under_a_file = writable_problem(&file.join("backups")).unwrap();
        assert!(
            under_a_file.contains("is not a directory"),
            "{under_a_file}"
        );
        // Symbolic links and `..` resolve; the part not made yet is kept.
        std::os::unix::fs::symlink(dir.path(), dir.path().join("link")).unwrap();
        assert_eq!(
            resolved(&dir.path().join("link/x/../y")),
            dir.path().canonicalize().unwrap().join("y")
        );
    }
}
