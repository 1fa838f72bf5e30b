//! The rehearsal: the fresh backup restored into a throwaway PostgreSQL of
//! the server's major version, the pending migrations run there by the new
//! backend image's own run-migrations and Alembic, then the downgrade back
//! to the database's revision, then the upgrade again. Each revision is
//! timed and the ACCESS EXCLUSIVE locks it takes are sampled. Nothing of the
//! release's is touched: a failure here stops a deploy before Helm.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bollard::Docker;

use super::observe::{self, Direction, RevisionRun};
use super::scratch::{Engine, Finished, Scratch};
use crate::config::values::MigrationLock;
use crate::config::{Environment, RehearsalEngine, MIGRATIONS_BINARY_IN_IMAGE};

/// What to rehearse.
#[derive(Debug, Clone)]
pub struct Request {
    /// The backend image to run (`repo@sha256:…`).
    pub backend_image: String,
    pub backup: PathBuf,
    /// The database's revision: where the downgrade returns.
    pub from: String,
    pub head: String,
}

/// What the rehearsal measured; in `--json`, the deploy record (as
/// `summary`) and `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The throwaway PostgreSQL: its image, or `local PostgreSQL 15.8
    /// (/usr/lib/postgresql/15/bin)`.
    pub postgres: String,
    pub restored_tables: u64,
    pub restored_rows: u64,
    pub upgrade: Vec<RevisionRun>,
    pub downgrade: Vec<RevisionRun>,
    /// The longest unbroken ACCESS EXCLUSIVE lock per table, longest first.
    pub locks: Vec<TableLock>,
    pub downgrade_proven: bool,
    #[serde(serialize_with = "observe::seconds")]
    pub took: Duration,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TableLock {
    pub table: String,
    #[serde(serialize_with = "observe::seconds")]
    pub held: Duration,
}

impl Report {
    /// One line without commas (it goes into a `--set-string` value).
    pub fn summary(&self) -> String {
        let revisions: Vec<String> = self
            .upgrade
            .iter()
            .map(|r| format!("{} {:.2} s", r.to, r.took.as_secs_f64()))
            .collect();
        let lock = self
            .locks
            .first()
            .map_or("no ACCESS EXCLUSIVE lock".into(), |l| {
                format!("longest lock {} {:.2} s", l.table, l.held.as_secs_f64())
            });
        format!(
            "{}; {lock}; downgrade {}; backup restored: {} tables {} rows",
            revisions.join(" + "),
            if self.downgrade_proven {
                "proven"
            } else {
                "not proven"
            },
            self.restored_tables,
            self.restored_rows
        )
        .replace(',', ";")
    }
}

/// The PostgreSQL for a backup. The container engine: the configured
/// image, else the official image of the major version the backup was
/// dumped from. The local engine: this machine's binaries of that major.
pub fn engine(env: &Environment, backup: &Path) -> Result<Engine> {
    match (&env.rehearsal.engine, &env.rehearsal.image) {
        (RehearsalEngine::Container, Some(image)) => Ok(Engine::Container(image.clone())),
        (RehearsalEngine::Container, None) => Ok(Engine::Container(format!(
            "postgres:{}",
            dumped_by(backup)?
        ))),
        (RehearsalEngine::Local { bin_dir }, _) => Ok(Engine::Local(super::local::find(
            bin_dir.as_deref(),
            &dumped_by(backup)?,
        )?)),
    }
}

/// The major version of the server that dumped `backup`.
fn dumped_by(backup: &Path) -> Result<String> {
    let argv = vec![
        "pg_restore".to_string(),
        "--list".to_string(),
        backup.display().to_string(),
    ];
    let listing = crate::process::capture(&argv)?;
    observe::server_major(&listing.stdout).with_context(|| {
        format!(
            "cannot tell which PostgreSQL dumped {} (`pg_restore --list` says no version); set rehearsal.image (or rehearsal.bin_dir) in deploy.toml",
            backup.display()
        )
    })
}

/// Runs the rehearsal; `say` gets each line worth showing as it happens.
pub async fn rehearse(
    env: &Environment,
    docker: &Docker,
    request: &Request,
    engine: &Engine,
    mut say: impl FnMut(&str),
) -> Result<Report> {
    let started = Instant::now();
    let scratch = Scratch::start(docker, engine, &env.name).await?;
    let reach = match engine {
        Engine::Container(_) => "no network",
        Engine::Local(_) => "a socket only",
    };
    say(&format!(
        "started a throwaway PostgreSQL {} ({engine}, {reach})",
        scratch.name
    ));
    let result = rehearse_in(env, &scratch, request, &mut say).await;
    scratch.remove().await;
    let mut report = result?;
    report.postgres = engine.to_string();
    report.took = started.elapsed();
    Ok(report)
}

async fn rehearse_in(
    env: &Environment,
    scratch: &Scratch,
    request: &Request,
    say: &mut impl FnMut(&str),
) -> Result<Report> {
    say(&format!("restoring {}", request.backup.display()));
    let (restored_tables, restored_rows) = restore(scratch, &request.backup).await?;
    say(&format!(
        "restored {restored_tables} tables, {restored_rows} rows; upgrading {} -> {} with the new backend image",
        request.from, request.head
    ));
    let (upgraded, sampled) = with_lock_sampler(scratch, async {
        run_migrations(env, scratch, &request.backend_image, say).await
    })
    .await;
    let upgraded = upgraded?;
    check(&upgraded, "upgrade", &request.head)?;
    say(&format!("downgrading to {}", request.from));
    let downgraded = alembic(env, scratch, request, &["downgrade", &request.from], say).await?;
    check(&downgraded, "downgrade", &request.from)?;
    say(&format!("upgrading to {} again", request.head));
    let again = run_migrations(env, scratch, &request.backend_image, say).await?;
    check(&again, "second upgrade", &request.head).context(
        "the downgrade ran but did not undo the upgrade: a downgrade() leaves the schema changed, \
         so `cargo xtask rollback` would leave the database between revisions",
    )?;
    let mut locks: Vec<TableLock> = observe::longest_locks(&sampled)
        .into_iter()
        .map(|(table, held)| TableLock { table, held })
        .collect();
    locks.sort_by_key(|l| std::cmp::Reverse(l.held));
    Ok(Report {
        postgres: String::new(),
        restored_tables,
        restored_rows,
        upgrade: runs(&upgraded, Direction::Upgrade),
        downgrade: runs(&downgraded, Direction::Downgrade),
        locks,
        downgrade_proven: true,
        took: Duration::ZERO,
    })
}

/// The backup restored whole, in one transaction (a broken archive fails
/// here, which is the proof that it restores); returns tables and rows.
async fn restore(scratch: &Scratch, backup: &Path) -> Result<(u64, u64)> {
    let inside = scratch.copy_in(backup).await?;
    let restored = scratch
        .exec(&[
            "pg_restore",
            "--exit-on-error",
            "--single-transaction",
            "--no-owner",
            "--no-privileges",
            "--username=rehearsal",
            "--dbname=rehearsal",
            &inside,
        ])
        .await?;
    if restored.code != 0 {
        bail!(
            "the backup {} did not restore into a fresh PostgreSQL (pg_restore exit {}):\n{}",
            backup.display(),
            restored.code,
            indent(&restored.text())
        );
    }
    let counted = scratch
        .exec(&[
            "psql",
            "--no-psqlrc",
            "--tuples-only",
            "--no-align",
            "--username=rehearsal",
            "--dbname=rehearsal",
            "--command",
            observe::COUNT_SQL,
        ])
        .await?;
    observe::restored_counts(&counted.text())
        .with_context(|| format!("counting the restored rows failed: {}", counted.text()))
}

/// Runs `work` while a session samples `pg_locks`; ends the sampler after
/// it (terminated by its application name, again until it has ended, in
/// case it had not connected yet). Returns the work's result and the
/// sampler's output.
async fn with_lock_sampler<T>(
    scratch: &Scratch,
    work: impl std::future::Future<Output = T>,
) -> (T, String) {
    let app = format!("PGAPPNAME={}", observe::LOCK_SAMPLER_NAME);
    let env = [app.as_str()];
    let sampler = scratch.exec_with_env(
        &[
            "psql",
            "--no-psqlrc",
            "--username=rehearsal",
            "--dbname=rehearsal",
            "--command",
            observe::LOCK_SAMPLER_SQL,
        ],
        &env,
    );
    tokio::pin!(sampler);
    tokio::pin!(work);
    // The sampler loops until ended; if it ends first (it could not run),
    // the work goes on unsampled and its output says why.
    let mut ended_early = None;
    let done = loop {
        tokio::select! {
            done = &mut work => break done,
            ended = &mut sampler, if ended_early.is_none() => {
                ended_early = Some(ended.map(|f| f.text()).unwrap_or_default());
            }
        }
    };
    if let Some(text) = ended_early {
        return (done, text);
    }
    let stop = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{}'",
        observe::LOCK_SAMPLER_NAME
    );
    loop {
        let _ = scratch
            .exec(&[
                "psql",
                "--no-psqlrc",
                "--username=rehearsal",
                "--dbname=rehearsal",
                "--command",
                &stop,
            ])
            .await;
        tokio::select! {
            ended = &mut sampler => {
                let text = ended.map(|f| f.text()).unwrap_or_default();
                return (done, text);
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// The image's run-migrations, as the chart's init container runs it.
async fn run_migrations(
    env: &Environment,
    scratch: &Scratch,
    image: &str,
    say: &mut impl FnMut(&str),
) -> Result<Finished> {
    scratch
        .run_beside(
            image,
            vec![MIGRATIONS_BINARY_IN_IMAGE.to_string()],
            migration_args(env, crate::config::values::migration_lock(env)),
            env.rehearsal.working_dir.as_deref(),
            relay(say),
        )
        .await
}

/// run-migrations' flags, as the chart passes them: the same lock timeout
/// and retries as the deploy will use. deploy.toml's (Helm gets them with
/// `--set`, which wins), else the values files', else run-migrations'
/// defaults, which are also the chart's.
fn migration_args(env: &Environment, values: MigrationLock) -> Vec<String> {
    let mut args = vec![
        "--wait-timeout=60".to_string(),
        format!("--alembic-cmd={}", env.alembic_command.join(" ")),
    ];
    let timeout = env.migrations.ddl_lock_timeout.map(|t| t.as_secs());
    if let Some(seconds) = timeout.or(values.timeout_seconds) {
        args.push(format!("--ddl-lock-timeout={seconds}"));
    }
    let retries = env.migrations.ddl_lock_retries.map(u64::from);
    if let Some(retries) = retries.or(values.retries) {
        args.push(format!("--ddl-lock-retries={retries}"));
    }
    args
}

/// The image's Alembic with `args`, as `kubectl exec` runs it.
async fn alembic(
    env: &Environment,
    scratch: &Scratch,
    request: &Request,
    args: &[&str],
    say: &mut impl FnMut(&str),
) -> Result<Finished> {
    let (program, rest) = env
        .alembic_command
        .split_first()
        .context("alembic_command is empty")?;
    let mut argv: Vec<String> = rest.to_vec();
    argv.extend(args.iter().map(|a| a.to_string()));
    scratch
        .run_beside(
            &request.backend_image,
            vec![program.clone()],
            argv,
            env.rehearsal.working_dir.as_deref(),
            relay(say),
        )
        .await
}

/// Shows a container's lines as they come, a Python traceback by its
/// unindented lines only (the error's own message says the rest).
fn relay(say: &mut impl FnMut(&str)) -> impl FnMut(&str) + '_ {
    let mut in_traceback = false;
    move |line: &str| {
        in_traceback |= line.starts_with("Traceback (most recent call last)");
        if !(in_traceback && line.starts_with(char::is_whitespace)) {
            say(&format!("  | {line}"));
        }
    }
}

/// A failed run becomes the rehearsal's error: the phase, the revision,
/// the statement and PostgreSQL's error, then the output's last lines.
fn check(finished: &Finished, phase: &str, target: &str) -> Result<()> {
    if finished.code == 0 {
        return Ok(());
    }
    let failure = observe::failure(&finished.lines);
    let mut message = format!(
        "the rehearsal's {phase} (to {target}) failed (exit {})",
        finished.code
    );
    if let Some(revision) = &failure.revision {
        message.push_str(&format!(" in revision {revision}"));
    }
    if let Some(error) = &failure.error {
        message.push_str(&format!("\n  error:     {error}"));
    }
    if let Some(statement) = &failure.statement {
        message.push_str(&format!("\n  statement: {statement}"));
    }
    let tail: Vec<&str> = finished
        .lines
        .iter()
        .rev()
        .take(12)
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    message.push_str(&format!(
        "\n  its last lines:\n{}",
        indent(&tail.join("\n"))
    ));
    bail!("{message}")
}

fn runs(finished: &Finished, direction: Direction) -> Vec<RevisionRun> {
    observe::revision_runs(&finished.lines, finished.ended)
        .into_iter()
        .filter(|r| r.direction == direction)
        .collect()
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rehearsal_runs_run_migrations_with_the_deploy_s_lock_settings() {
        let mut env = crate::config::tests::environment();
        assert_eq!(
            migration_args(&env, MigrationLock::default()),
            ["--wait-timeout=60", "--alembic-cmd=alembic"]
        );
        // A values file's settings, when deploy.toml sets none.
        let values = MigrationLock {
            timeout_seconds: Some(30),
            retries: Some(1),
            wait_seconds: None,
        };
        assert_eq!(
            migration_args(&env, values),
            [
                "--wait-timeout=60",
                "--alembic-cmd=alembic",
                "--ddl-lock-timeout=30",
                "--ddl-lock-retries=1"
            ]
        );
        env.migrations.ddl_lock_timeout = Some(Duration::from_secs(7));
        env.migrations.ddl_lock_retries = Some(0);
        env.alembic_command = vec![
            "uv".into(),
            "run".into(),
            "--no-sync".into(),
            "alembic".into(),
        ];
        // deploy.toml's win, as Helm's --set wins over a values file.
        assert_eq!(
            migration_args(&env, values),
            [
                "--wait-timeout=60",
                "--alembic-cmd=uv run --no-sync alembic",
                "--ddl-lock-timeout=7",
                "--ddl-lock-retries=0"
            ]
        );
    }
}
