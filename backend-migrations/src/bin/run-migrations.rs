//! `run-migrations`: brings the database to the Alembic head before the
//! backend starts, safely when several pods start at once.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use backend_migrations::redact::mask_all;
use backend_migrations::runner::{self, Failure, Settings};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "run-migrations",
    version,
    about = "Bring the database to the Alembic head: wait for it, take a lock, stamp a pre-Alembic schema, run `alembic upgrade head`.",
    after_help = "Run it from the directory that holds alembic.ini (the chart sets workingDir):\n  \
        DATABASE_URL=postgresql://colony:***@db:5432/colony run-migrations\n  \
        run-migrations --alembic-cmd 'uv run alembic' --legacy-table households --legacy-table members\n  \
        run-migrations status --json\n\n\
        Exit codes: 0 done (the last line is `Migrations complete.`); 1 a migration failed; 2 bad input, \
        nothing touched; 3 the database never answered; 4 the lock was held too long; 5 a database state \
        that needs a person (unknown revision, several heads, empty alembic_version beside tables)."
)]
struct Cli {
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Say what a run would do, changing nothing (no lock taken).
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// `alembic downgrade REVISION` under the migration lock (what `cargo
    /// xtask rollback` runs), so no init container upgrades meanwhile.
    Downgrade {
        /// A revision of these scripts, or `base`.
        revision: String,
    },
}

#[derive(Debug, Args)]
struct SettingsArgs {
    /// PostgreSQL URL; its password never appears in output.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    database_url: Option<String>,
    /// The Alembic config file [default: alembic.ini in the working directory].
    #[arg(long, env = "ALEMBIC_CONFIG", value_name = "FILE", global = true)]
    alembic_config: Option<PathBuf>,
    /// How to run Alembic, e.g. "alembic" or "uv run alembic".
    #[arg(
        long,
        env = "RUN_MIGRATIONS_ALEMBIC_CMD",
        default_value = "alembic",
        global = true
    )]
    alembic_cmd: String,
    /// Seconds to wait for the database to accept connections.
    #[arg(long, env = "RUN_MIGRATIONS_WAIT_TIMEOUT", default_value = "60", value_parser = seconds, value_name = "SECONDS", global = true)]
    wait_timeout: Duration,
    /// Seconds to wait for another runner's migration lock.
    #[arg(long, env = "RUN_MIGRATIONS_LOCK_TIMEOUT", default_value = "300", value_parser = seconds, value_name = "SECONDS", global = true)]
    lock_timeout: Duration,
    /// Seconds a migration's statement may wait for a table lock
    /// (PostgreSQL's lock_timeout for Alembic's sessions): the app's queries
    /// queue behind a waiting ALTER, so it must not wait long.
    #[arg(long, env = "RUN_MIGRATIONS_DDL_LOCK_TIMEOUT", default_value = "5", value_parser = seconds, value_name = "SECONDS", global = true)]
    ddl_lock_timeout: Duration,
    /// How many more times `alembic upgrade head` is tried after a lock
    /// timeout (2 s, 4 s, 8 s… apart), each naming the sessions holding locks.
    #[arg(long, env = "RUN_MIGRATIONS_DDL_LOCK_RETRIES", default_value = "3", value_parser = clap::value_parser!(u32).range(0..=20), value_name = "N", global = true)]
    ddl_lock_retries: u32,
    /// A table whose presence without alembic_version marks a pre-Alembic schema (repeatable).
    #[arg(
        long = "legacy-table",
        env = "RUN_MIGRATIONS_LEGACY_TABLES",
        value_delimiter = ',',
        default_value = "households",
        value_name = "TABLE",
        global = true
    )]
    legacy_tables: Vec<String>,
    /// Seconds between uses of the migration lock's connection while
    /// Alembic runs, so that a NAT or proxy never drops it as idle (the
    /// session lock would go with it).
    #[arg(long, env = "RUN_MIGRATIONS_KEEPALIVE_INTERVAL", default_value = "30", value_parser = seconds, value_name = "SECONDS", global = true)]
    keepalive_interval: Duration,
    /// The revision that a pre-Alembic schema is stamped with.
    #[arg(
        long,
        env = "RUN_MIGRATIONS_BASELINE",
        default_value = "0001_baseline",
        global = true
    )]
    baseline: String,
}

/// The longest wait accepted: a day (longer is a typo, and would overflow
/// the clock arithmetic).
const MAX_SECONDS: u64 = 24 * 3600;

/// `60` or `60s`: whole seconds, from 1 to a day.
fn seconds(text: &str) -> Result<Duration, String> {
    let number = text.strip_suffix('s').unwrap_or(text);
    match number.parse::<u64>() {
        Ok(n) if (1..=MAX_SECONDS).contains(&n) => Ok(Duration::from_secs(n)),
        _ => Err(format!(
            "{text:?} is not a number of seconds from 1 to {MAX_SECONDS} (e.g. 60)"
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(database_url) = cli.settings.database_url.clone() else {
        eprintln!("run-migrations: error: DATABASE_URL is not set (or pass --database-url)");
        return ExitCode::from(2);
    };
    let s = cli.settings;
    let settings = Settings {
        database_url,
        alembic_config: s.alembic_config,
        alembic_command: s.alembic_cmd,
        wait_timeout: s.wait_timeout,
        lock_timeout: s.lock_timeout,
        ddl_lock_timeout: s.ddl_lock_timeout,
        ddl_lock_retries: s.ddl_lock_retries,
        legacy_tables: s.legacy_tables,
        baseline: s.baseline,
        keepalive: s.keepalive_interval,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return report(Failure {
                code: runner::ExitCode::MigrationFailed,
                message: e.to_string(),
            })
        }
    };
    match cli.command {
        None => match runtime.block_on(runner::run(&settings)) {
            Ok(()) => {
                println!("Migrations complete.");
                ExitCode::SUCCESS
            }
            Err(failure) => report(failure),
        },
        Some(Command::Downgrade { revision }) => {
            match runtime.block_on(runner::downgrade(&settings, &revision)) {
                Ok(()) => {
                    println!("Downgrade complete.");
                    ExitCode::SUCCESS
                }
                Err(failure) => report(failure),
            }
        }
        Some(Command::Status { json }) => match runtime.block_on(runner::status(&settings)) {
            Ok(status) if json => {
                println!("{status}");
                ExitCode::SUCCESS
            }
            Ok(status) => {
                println!("{}", status["summary"].as_str().unwrap_or_default());
                println!("head: {}", status["head"].as_str().unwrap_or("unknown"));
                println!(
                    "a run would: {}",
                    status["action"].as_str().unwrap_or_default()
                );
                if let Some(reason) = status["reason"].as_str() {
                    println!("because: {reason}");
                }
                ExitCode::SUCCESS
            }
            Err(failure) => report(failure),
        },
    }
}

fn report(failure: Failure) -> ExitCode {
    eprintln!("run-migrations: error: {}", mask_all(&failure.message));
    ExitCode::from(failure.code as u8)
}
