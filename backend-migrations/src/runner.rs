//! The run-migrations sequence (DESIGN.md §4): connect, lock, inspect,
//! decide, stamp, upgrade, release, "Migrations complete.".

use std::path::PathBuf;
use std::time::Duration;

use sqlx::postgres::PgConnection;
use sqlx::Connection;

use crate::alembic::{self, AlembicCommand};
use crate::alembic_ini::{self, AlembicProject};
use crate::db::{self, Target};
use crate::decide::{decide, DatabaseState, Decision};
use crate::revisions::RevisionGraph;

/// What the runner was told, after the command line and environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    pub alembic_config: Option<PathBuf>,
    pub alembic_command: String,
    pub wait_timeout: Duration,
    pub lock_timeout: Duration,
    /// PostgreSQL's lock_timeout for Alembic's sessions.
    pub ddl_lock_timeout: Duration,
    /// Further tries of the upgrade after a lock timeout.
    pub ddl_lock_retries: u32,
    pub legacy_tables: Vec<String>,
    pub baseline: String,
    /// How often the lock's connection is used while Alembic runs.
    pub keepalive: Duration,
}

/// A failure and the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: ExitCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Alembic failed (or said it succeeded without reaching the head).
    MigrationFailed = 1,
    /// Bad flags, URL or Alembic project: nothing was touched.
    BadInput = 2,
    DatabaseUnreachable = 3,
    LockTimeout = 4,
    /// A database state that must not be changed automatically.
    Refused = 5,
}

fn fail(code: ExitCode) -> impl Fn(String) -> Failure {
    move |message| Failure { code, message }
}

/// Everything checked before the database is touched.
struct Prepared {
    target: Target,
    project: AlembicProject,
    graph: RevisionGraph,
    alembic: AlembicCommand,
}

fn prepare(settings: &Settings) -> Result<Prepared, Failure> {
    let bad = fail(ExitCode::BadInput);
    for table in &settings.legacy_tables {
        check_table_name(table).map_err(&bad)?;
    }
    let target = Target::parse(&settings.database_url).map_err(&bad)?;
    let cwd = std::env::current_dir().map_err(|e| bad(e.to_string()))?;
    let project =
        alembic_ini::find(settings.alembic_config.as_deref(), &cwd).map_err(|e| bad(e.0))?;
    let graph = RevisionGraph::load_dirs(&project.version_dirs).map_err(|e| bad(e.to_string()))?;
    // Several heads is a problem of the scripts, not of the database: refuse
    // before connecting.
    graph.head().map_err(|e| bad(e.to_string()))?;
    let alembic = AlembicCommand::parse(&settings.alembic_command).map_err(&bad)?;
    alembic
        .check_resolves(std::env::var_os("PATH").as_deref())
        .map_err(&bad)?;
    Ok(Prepared {
        target,
        project,
        graph,
        alembic,
    })
}

/// `schema.table` or `table`, identifiers only: the names go into messages
/// and `to_regclass`, and a typo should fail here, not silently not match.
fn check_table_name(name: &str) -> Result<(), String> {
    let ident = |part: &str| {
        part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if name.split('.').count() <= 2 && name.split('.').all(ident) {
        Ok(())
    } else {
        Err(format!("--legacy-table {name:?} is not a table name (letters, digits, _ and an optional schema.)"))
    }
}

/// The whole run. Prints progress; the caller prints `Migrations complete.`
/// on Ok.
pub async fn run(settings: &Settings) -> Result<(), Failure> {
    let prepared = prepare(settings)?;
    println!(
        "run-migrations: {} declares head {}; connecting to the database at {}",
        prepared.project.config_file.display(),
        prepared.graph.head().unwrap_or_default(),
        prepared.target.address
    );
    let mut connection = db::connect_with_retry(&prepared.target, settings.wait_timeout)
        .await
        .map_err(fail(ExitCode::DatabaseUnreachable))?;
    db::lock(&mut connection, settings.lock_timeout)
        .await
        .map_err(fail(ExitCode::LockTimeout))?;
    println!("run-migrations: migration lock taken");
    let result = migrate_locked(&mut connection, settings, &prepared).await;
    // Released on every path; closing the session would release it too.
    let unlocked = db::unlock(&mut connection).await;
    let _ = connection.close().await;
    result?;
    unlocked.map_err(fail(ExitCode::MigrationFailed))
}

async fn migrate_locked(
    connection: &mut PgConnection,
    settings: &Settings,
    prepared: &Prepared,
) -> Result<(), Failure> {
    let state = db::inspect(connection, &settings.legacy_tables)
        .await
        .map_err(fail(ExitCode::MigrationFailed))?;
    let decision = decide(&state, &prepared.graph, &settings.baseline);
    println!("run-migrations: {}", describe(&state));
    let (from, stamped) = match decision {
        Decision::AtHead { head } => {
            println!("run-migrations: already at head {head}; nothing to run");
            return Ok(());
        }
        Decision::Refuse { reason } => return Err(fail(ExitCode::Refused)(reason)),
        Decision::Upgrade { from, .. } => (from, false),
        Decision::StampThenUpgrade { baseline, .. } => {
            println!(
                "Detected pre-Alembic schema; stamping {baseline} so the activity-log migration applies on top of the existing tables."
            );
            db::stamp(connection, &baseline)
                .await
                .map_err(fail(ExitCode::MigrationFailed))?;
            (Some(baseline), true)
        }
    };
    upgrade(connection, settings, prepared, from.as_deref(), stamped).await
}

async fn upgrade(
    connection: &mut PgConnection,
    settings: &Settings,
    prepared: &Prepared,
    from: Option<&str>,
    stamped: bool,
) -> Result<(), Failure> {
    let failed = fail(ExitCode::MigrationFailed);
    println!(
        "run-migrations: running {} upgrade head",
        settings.alembic_command
    );
    let outcome = upgrade_with_lock_retries(connection, settings, prepared).await?;
    if !outcome.status.success() {
        let exit = outcome
            .status
            .code()
            .map_or("a signal".to_string(), |c| format!("exit status {c}"));
        // Earlier migrations of this run may have committed: report where
        // the database really is, not where it started.
        let now = match db::inspect(connection, &[]).await {
            Ok(DatabaseState {
                versions: Some(rows),
                ..
            }) => rows.first().cloned(),
            _ => from.map(String::from),
        };
        let explanation = alembic::explain_failure(&outcome.tail, now.as_deref(), stamped);
        return Err(failed(format!("{explanation} ({exit})")));
    }
    // Trust, but check: the database must now be at the head the scripts declare.
    let after = db::inspect(connection, &[]).await.map_err(&failed)?;
    let head = prepared.graph.head().unwrap_or_default();
    match after.versions.as_deref() {
        Some([now]) if now == head => {
            println!("run-migrations: database at {head} (head)");
            Ok(())
        }
        other => Err(failed(format!(
            "alembic upgrade head exited 0 but the database is at {other:?}, not {head}: check that env.py uses DATABASE_URL"
        ))),
    }
}

/// `alembic upgrade head` with a lock_timeout on its sessions; after a lock
/// timeout, the sessions holding locks are named and it is tried again,
/// `ddl_lock_retries` times, waiting longer each time. Returns the last run.
async fn upgrade_with_lock_retries(
    connection: &mut PgConnection,
    settings: &Settings,
    prepared: &Prepared,
) -> Result<alembic::Outcome, Failure> {
    let failed = fail(ExitCode::MigrationFailed);
    let tries = settings.ddl_lock_retries + 1;
    for attempt in 1..=tries {
        let outcome = keeping_alive(
            connection,
            settings.keepalive,
            alembic::run(
                &prepared.alembic,
                settings.alembic_config.as_deref(),
                &settings.database_url,
                &["upgrade", "head"],
                settings.ddl_lock_timeout,
            ),
        )
        .await
        .map_err(&failed)?;
        if outcome.status.success() || !alembic::timed_out_on_a_lock(&outcome.tail) {
            return Ok(outcome);
        }
        let holders = db::lock_holders(connection)
            .await
            .unwrap_or_else(|e| vec![e]);
        let holders = if holders.is_empty() {
            "no session holds a table lock now".to_string()
        } else {
            holders.join("; ")
        };
        if attempt == tries {
            return Err(Failure {
                code: ExitCode::LockTimeout,
                message: format!(
                    "a migration waited longer than its lock timeout ({} s) for a table lock, {tries} time(s); \
                     holding locks: {holders}. End or wait out those sessions, then deploy again \
                     (the app's queries were not left queued behind the migration)",
                    settings.ddl_lock_timeout.as_secs()
                ),
            });
        }
        let pause = Duration::from_secs(2u64.pow(attempt.min(6)));
        println!(
            "run-migrations: a migration waited longer than {} s for a table lock (try {attempt} of {tries}); \
             holding locks: {holders}; trying again in {} s",
            settings.ddl_lock_timeout.as_secs(),
            pause.as_secs()
        );
        tokio::time::sleep(pause).await;
    }
    unreachable!("the last try returns")
}

/// Runs `work` (Alembic) while the lock's connection is used every
/// `every`: a connection idle for the whole migration is what a NAT or a
/// proxy drops, and the session lock goes with it. A failed keepalive is
/// said at once; `unlock` then fails the run.
async fn keeping_alive<T>(
    connection: &mut PgConnection,
    every: Duration,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut alive = true;
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = ticks.tick(), if alive => {
                if let Err(e) = db::keepalive(connection).await {
                    alive = false;
                    println!(
                        "run-migrations: WARNING: the migration lock's connection failed its keepalive ({e}); \
                         the lock went with it, so another runner may start. This run fails when Alembic ends."
                    );
                }
            }
        }
    }
}

fn describe(state: &DatabaseState) -> String {
    let revision = match state.versions.as_deref() {
        None => "no alembic_version table".to_string(),
        Some([]) => "an empty alembic_version table".to_string(),
        Some(rows) => format!("revision {}", rows.join(", ")),
    };
    let legacy = if state.legacy_tables.is_empty() {
        "no legacy tables".to_string()
    } else {
        format!("legacy tables {}", state.legacy_tables.join(", "))
    };
    format!("database has {revision}, {legacy}")
}

/// What `run` would do, without the lock and without changing anything.
/// `alembic downgrade TARGET` under the migration lock: no init container
/// (a backend pod restarting during a rollback) upgrades the database while
/// it goes down, and a second downgrade waits for the first. The target
/// must be a revision these scripts know, or `base`.
pub async fn downgrade(settings: &Settings, target: &str) -> Result<(), Failure> {
    let prepared = prepare(settings)?;
    if target != "base" && !prepared.graph.contains(target) {
        return Err(fail(ExitCode::BadInput)(format!(
            "the scripts in {} have no revision {target:?} to downgrade to",
            prepared.project.config_file.display()
        )));
    }
    let mut connection = db::connect_with_retry(&prepared.target, settings.wait_timeout)
        .await
        .map_err(fail(ExitCode::DatabaseUnreachable))?;
    db::lock(&mut connection, settings.lock_timeout)
        .await
        .map_err(fail(ExitCode::LockTimeout))?;
    println!(
        "run-migrations: migration lock taken; running {} downgrade {target}",
        settings.alembic_command
    );
    let outcome = keeping_alive(
        &mut connection,
        settings.keepalive,
        alembic::run(
            &prepared.alembic,
            settings.alembic_config.as_deref(),
            &settings.database_url,
            &["downgrade", target],
            settings.ddl_lock_timeout,
        ),
    )
    .await;
    let unlocked = db::unlock(&mut connection).await;
    let _ = connection.close().await;
    let outcome = outcome.map_err(fail(ExitCode::MigrationFailed))?;
    if !outcome.status.success() {
        let exit = outcome
            .status
            .code()
            .map_or("a signal".to_string(), |c| format!("exit status {c}"));
        return Err(fail(ExitCode::MigrationFailed)(format!(
            "{} downgrade {target} failed ({exit})",
            settings.alembic_command
        )));
    }
    unlocked.map_err(fail(ExitCode::MigrationFailed))
}

pub async fn status(settings: &Settings) -> Result<serde_json::Value, Failure> {
    let prepared = prepare(settings)?;
    let mut connection = db::connect_with_retry(&prepared.target, settings.wait_timeout)
        .await
        .map_err(fail(ExitCode::DatabaseUnreachable))?;
    let state = db::inspect(&mut connection, &settings.legacy_tables)
        .await
        .map_err(fail(ExitCode::MigrationFailed))?;
    let _ = connection.close().await;
    let decision = decide(&state, &prepared.graph, &settings.baseline);
    let reason = match &decision {
        Decision::Refuse { reason } => Some(reason.clone()),
        _ => None,
    };
    Ok(serde_json::json!({
        "database": prepared.target.address,
        "revisions": state.versions,
        "legacy_tables": state.legacy_tables,
        "head": prepared.graph.head().ok(),
        "action": decision.action(),
        "reason": reason,
        "summary": describe(&state),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        assert!(check_table_name("households").is_ok());
        assert!(check_table_name("public.households").is_ok());
        for bad in [
            "",
            "households; drop table x",
            "a.b.c",
            "1abc",
            "house holds",
        ] {
            assert!(check_table_name(bad).is_err(), "{bad} accepted");
        }
    }
}
