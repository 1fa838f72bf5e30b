//! The database side of the runner: connect with bounded retry, the
//! migration lock, inspection and the baseline stamp. Small functions over a
//! real `PgConnection`; the decisions live in `decide`.

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Row};

use crate::decide::DatabaseState;
use crate::redact::mask_all;

/// The session-level advisory lock every runner takes: the ASCII bytes of
/// "colonymg" as an i64, so it is recognisable in `pg_locks`.
pub const LOCK_KEY: i64 = i64::from_be_bytes(*b"colonymg");

/// Parsed connection settings, with what messages may show of them.
#[derive(Debug, Clone)]
pub struct Target {
    pub options: PgConnectOptions,
    /// `host:port`, for messages (never the password).
    pub address: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let libpq = libpq_url(url);
        let url = libpq.as_str();
        // Anything else would be retried for the whole wait, then called
        // unreachable: refuse it at once.
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("postgres" | "postgresql")) {
            return Err(format!(
                "DATABASE_URL {} is not a PostgreSQL URL: it must start with postgresql:// (or postgres://)",
                mask_all(url)
            ));
        }
        let (parseable, host_in_query) = with_host_placeholder(url);
        let options = PgConnectOptions::from_str(&parseable)
            .map_err(|e| {
                format!(
                    "DATABASE_URL {} is not a valid PostgreSQL URL: {}",
                    mask_all(url),
                    mask_all(&e.to_string())
                )
            })?
            .application_name(&application_name());
        let options = match host_in_query {
            Some(false) => default_host(options),
            _ => options,
        };
        let address = match options.get_socket() {
            Some(dir) => format!("{}/.s.PGSQL.{}", dir.display(), options.get_port()),
            None => format!("{}:{}", options.get_host(), options.get_port()),
        };
        Ok(Target { options, address })
    }
}

/// A SQLAlchemy URL (`postgresql+psycopg://`, `postgresql+asyncpg://`…:
/// what a FastAPI app keeps in DATABASE_URL, and what Alembic's env.py
/// passes on) as libpq's: the driver dropped from the scheme, and asyncpg's
/// `ssl=` query key as libpq's `sslmode=` (`true` is `require`). Any other
/// text comes back as it was. Pure.
pub fn libpq_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let lower = scheme.to_ascii_lowercase();
    let Some((base, driver)) = lower.split_once('+') else {
        return url.to_string();
    };
    if !matches!(base, "postgresql" | "postgres") || driver.is_empty() {
        return url.to_string();
    }
    let mut rest = rest.to_string();
    if driver == "asyncpg" {
        if let Some((before, query)) = rest.split_once('?') {
            let has_sslmode = query.split('&').any(|pair| pair.starts_with("sslmode="));
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some(("ssl", value)) if !has_sslmode => {
                        let mode = if value.eq_ignore_ascii_case("true") {
                            "require"
                        } else {
                            value
                        };
                        format!("sslmode={mode}")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            rest = format!("{before}?{}", pairs.join("&"));
        }
    }
    format!("postgresql://{rest}")
}

/// libpq takes a URL with a user but no host (`postgresql://app@/db`, or
/// `postgresql://app@/db?host=/run/postgresql` for a socket); a URL parser
/// refuses user-info without a host. So the host becomes `localhost`, and
/// the second value says whether the query names the host (which wins);
/// None: the URL had a host.
fn with_host_placeholder(url: &str) -> (String, Option<bool>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host_and_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if !host_and_port.is_empty() && !host_and_port.starts_with(':') {
        return (url.to_string(), None);
    }
    let query = tail.split_once('?').map_or("", |(_, q)| q);
    let host_in_query = query
        .split('&')
        .any(|pair| pair.starts_with("host=") || pair.starts_with("hostaddr="));
    let (user_info, port) = match authority.rsplit_once('@') {
        Some((user_info, port)) => (format!("{user_info}@"), port),
        None => (String::new(), authority),
    };
    (
        format!("{scheme}://{user_info}localhost{port}{tail}"),
        Some(host_in_query),
    )
}

/// No host anywhere: libpq's default, `PGHOST`, else the server's socket
/// where Debian or the source build puts it, else localhost over TCP.
fn default_host(options: PgConnectOptions) -> PgConnectOptions {
    if let Some(host) = std::env::var("PGHOST").ok().filter(|h| !h.is_empty()) {
        return match host.starts_with('/') {
            true => options.socket(host),
            false => options.host(&host),
        };
    }
    let socket = format!(".s.PGSQL.{}", options.get_port());
    match ["/var/run/postgresql", "/tmp"]
        .into_iter()
        .find(|dir| std::path::Path::new(dir).join(&socket).exists())
    {
        Some(dir) => options.socket(dir),
        None => options,
    }
}

/// Connects, retrying with backoff until `wait` is over (the database may
/// start after the pod). Logs at most once every few seconds.
pub async fn connect_with_retry(target: &Target, wait: Duration) -> Result<PgConnection, String> {
    const LOG_EVERY: Duration = Duration::from_secs(5);
    let start = Instant::now();
    let deadline = start + wait;
    let mut backoff = Duration::from_millis(100);
    let mut last_log: Option<Instant> = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = tokio::time::timeout(
            remaining.min(Duration::from_secs(5)),
            PgConnection::connect_with(&target.options),
        );
        let error = match attempt.await {
            Ok(Ok(connection)) => {
                if last_log.is_some() {
                    println!(
                        "run-migrations: the database answered after {:.1} s",
                        start.elapsed().as_secs_f64()
                    );
                }
                return Ok(connection);
            }
            Ok(Err(e)) => mask_all(&e.to_string()),
            Err(_) => "no answer within 5 s".to_string(),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "the database at {} did not accept connections within {} s: {error}",
                target.address,
                wait.as_secs()
            ));
        }
        if last_log.is_none_or(|at| now.duration_since(at) >= LOG_EVERY) {
            println!(
                "run-migrations: waiting for the database at {} ({error}); {} s left",
                target.address,
                deadline.saturating_duration_since(now).as_secs()
            );
            last_log = Some(now);
        }
        tokio::time::sleep(backoff.min(deadline.saturating_duration_since(now))).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Takes the migration lock on `connection`, polling until `wait` is over.
/// The lock lives as long as the session: it is released by `unlock` or,
/// on any other exit, when the connection closes.
/// What this runner calls itself in `pg_stat_activity`: with its pod's
/// name (Kubernetes sets HOSTNAME to it), so that a runner waiting for the
/// migration lock can say which pod holds it.
fn application_name() -> String {
    match std::env::var("HOSTNAME") {
        Ok(host) if !host.is_empty() => format!("run-migrations {host}"),
        _ => "run-migrations".into(),
    }
}

/// Who holds the migration lock (another runner, a rollback's downgrade,
/// or a session someone left open): pid, application, client and since
/// when; None when nobody does (it was just released).
pub async fn lock_holder(connection: &mut PgConnection) -> Option<String> {
    // A bigint advisory key is kept as classid (high half), objid (low
    // half) and objsubid 1; advisory locks are per database, and pg_locks
    // shows every database's.
    let row: Option<(i32, String, String, f64)> = sqlx::query_as(
        "SELECT a.pid, coalesce(nullif(a.application_name, ''), '?'), \
                coalesce(host(a.client_addr), 'local socket'), \
                extract(epoch FROM now() - coalesce(a.backend_start, now()))::float8 \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND l.classid = (($1::bigint >> 32) & 4294967295)::bigint::oid \
           AND l.objid = ($1::bigint & 4294967295)::bigint::oid \
         LIMIT 1",
    )
    .bind(LOCK_KEY)
    .fetch_optional(&mut *connection)
    .await
    .ok()
    .flatten();
    row.map(|(pid, application, client, seconds)| {
        format!(
            "pid {pid} ({}, from {client}, connected {} s ago)",
            crate::redact::printable(&application),
            seconds.round()
        )
    })
}

pub async fn lock(connection: &mut PgConnection, wait: Duration) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    let mut logged = false;
    loop {
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut *connection)
            .await
            .map_err(|e| format!("cannot take the migration lock: {e}"))?;
        if taken {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let holder = lock_holder(connection)
                .await
                .unwrap_or_else(|| "a session that has just let it go".into());
            return Err(format!(
                "the migration lock (advisory lock {LOCK_KEY}) was held for more than {} s, by {holder}; \
                 if that is no runner of yours, end it with `SELECT pg_terminate_backend(<pid>)`",
                wait.as_secs()
            ));
        }
        if !logged {
            let holder = lock_holder(connection)
                .await
                .unwrap_or_else(|| "another session".into());
            println!(
                "run-migrations: the migration lock is held by {holder}; waiting up to {} s",
                wait.as_secs()
            );
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Releases the migration lock, and says so if it was no longer held: the
/// session was lost while Alembic ran (an idle connection cut by a NAT or a
/// proxy, or a pooler in transaction mode, which voids session locks), so
/// another runner may have migrated alongside this one.
/// One round trip on the lock's session, so that it never looks idle to
/// a NAT or a proxy (sqlx has no TCP keepalive setting). Named, so that
/// `pg_stat_activity` shows what it is.
pub async fn keepalive(connection: &mut PgConnection) -> Result<(), String> {
    sqlx::query("SELECT 1 AS run_migrations_keepalive")
        .execute(connection)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub async fn unlock(connection: &mut PgConnection) -> Result<(), String> {
    let held: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .fetch_one(connection)
        .await
        .map_err(|e| format!("cannot release the migration lock (its session was lost?): {e}"))?;
    if held {
        Ok(())
    } else {
        Err("the migration lock was no longer held when the migrations ended: its session was lost or \
             reset (a pooler in transaction mode voids session locks; connect run-migrations to PostgreSQL \
             directly), so another runner may have migrated at the same time"
            .into())
    }
}

/// Reads `alembic_version` (if it exists) and which legacy tables exist.
/// The other sessions of this database that hold a lock on a table: pid,
/// how long their transaction has been open, what they run, which tables,
/// longest first (what a migration timed out waiting behind).
pub async fn lock_holders(connection: &mut PgConnection) -> Result<Vec<String>, String> {
    let rows: Vec<(i32, f64, String, String, String)> = sqlx::query_as(
        "SELECT a.pid, \
                extract(epoch FROM now() - coalesce(a.xact_start, a.query_start, now()))::float8, \
                coalesce(a.state, ''), left(coalesce(a.query, ''), 200), \
                string_agg(DISTINCT c.relname || ' ' || l.mode, ', ') \
           FROM pg_locks l \
           JOIN pg_stat_activity a ON a.pid = l.pid \
           JOIN pg_class c ON c.oid = l.relation \
          WHERE l.granted AND l.pid <> pg_backend_pid() AND a.datname = current_database() \
            AND c.relkind IN ('r', 'p') \
            AND c.relnamespace NOT IN (SELECT oid FROM pg_namespace WHERE nspname LIKE 'pg\\_%' OR nspname = 'information_schema') \
          GROUP BY a.pid, a.xact_start, a.query_start, a.state, a.query \
          ORDER BY 2 DESC LIMIT 5",
    )
    .fetch_all(connection)
    .await
    .map_err(|e| format!("cannot list the sessions holding locks: {e}"))?;
    Ok(rows
        .into_iter()
        .map(|(pid, seconds, state, query, tables)| {
            format!(
                "pid {pid} ({state}, transaction open {seconds:.0} s) holds {tables}, running {:?}",
                query.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        })
        .collect())
}

pub async fn inspect(
    connection: &mut PgConnection,
    legacy_tables: &[String],
) -> Result<DatabaseState, String> {
    let error = |e: sqlx::Error| format!("cannot inspect the database: {e}");
    let versions = if table_exists(connection, "alembic_version")
        .await
        .map_err(error)?
    {
        let rows = sqlx::query("SELECT version_num FROM alembic_version ORDER BY version_num")
            .fetch_all(&mut *connection)
            .await
            .map_err(error)?;
        Some(rows.iter().map(|row| row.get::<String, _>(0)).collect())
    } else {
        None
    };
    let mut present = Vec::new();
    for table in legacy_tables {
        if table_exists(connection, table).await.map_err(error)? {
            present.push(table.clone());
        }
    }
    Ok(DatabaseState {
        versions,
        legacy_tables: present,
    })
}

async fn table_exists(connection: &mut PgConnection, table: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(connection)
        .await
}

/// Creates `alembic_version` exactly as Alembic does and records `revision`,
/// in one transaction: either both happen or neither.
pub async fn stamp(connection: &mut PgConnection, revision: &str) -> Result<(), String> {
    let error = |e: sqlx::Error| format!("cannot stamp {revision}: {e}");
    let mut transaction = connection.begin().await.map_err(error)?;
    sqlx::query(
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, \
         CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))",
    )
    .execute(&mut *transaction)
    .await
    .map_err(error)?;
    sqlx::query("INSERT INTO alembic_version (version_num) VALUES ($1)")
        .bind(revision)
        .execute(&mut *transaction)
        .await
        .map_err(error)?;
    transaction.commit().await.map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_without_a_host_is_taken_as_libpq_takes_it() {
        let socket =
            Target::parse("postgresql://rehearsal@/rehearsal?host=/run/colony-rehearsal").unwrap();
        assert_eq!(
            socket.options.get_socket().map(|p| p.display().to_string()),
            Some("/run/colony-rehearsal".to_string())
        );
        assert_eq!(socket.options.get_username(), "rehearsal");
        assert_eq!(socket.options.get_database(), Some("rehearsal"));
        assert_eq!(socket.address, "/run/colony-rehearsal/.s.PGSQL.5432");
        let with_password = Target::parse("postgres://app:p%2Fw@:6543/colony?host=/sock").unwrap();
        assert_eq!(with_password.options.get_port(), 6543);
        assert_eq!(with_password.address, "/sock/.s.PGSQL.6543");
        // A URL with a host is left alone.
        let tcp = Target::parse("postgresql://app:pw@db.lan:5433/colony").unwrap();
        assert_eq!(tcp.address, "db.lan:5433");
        assert_eq!(
            with_host_placeholder("postgresql://app@db/colony"),
            ("postgresql://app@db/colony".to_string(), None)
        );
        assert_eq!(
            with_host_placeholder("postgresql://app@/colony"),
            ("postgresql://app@localhost/colony".to_string(), Some(false))
        );
        assert_eq!(
            with_host_placeholder("postgresql:///colony?host=/s"),
            (
                "postgresql://localhost/colony?host=/s".to_string(),
                Some(true)
            )
        );
    }

    #[test]
    fn sqlalchemy_urls_are_taken_as_alembic_s_env_py_takes_them() {
        for url in [
            "postgresql+psycopg://app:p%2Fw@db.lan:5433/colony",
            "postgresql+asyncpg://app:p%2Fw@db.lan:5433/colony",
            "postgresql+psycopg2://app:p%2Fw@db.lan:5433/colony",
            "postgres+pg8000://app:p%2Fw@db.lan:5433/colony",
        ] {
            let target = Target::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(target.address, "db.lan:5433", "{url}");
            assert_eq!(target.options.get_database(), Some("colony"));
        }
        assert_eq!(
            libpq_url("postgresql+asyncpg://a@h/d?ssl=true&x=1"),
            "postgresql://a@h/d?sslmode=require&x=1"
        );
        assert_eq!(
            libpq_url("postgresql+asyncpg://a@h/d?ssl=verify-full"),
            "postgresql://a@h/d?sslmode=verify-full"
        );
        assert_eq!(
            libpq_url("postgresql+psycopg://a@h/d?sslmode=require"),
            "postgresql://a@h/d?sslmode=require"
        );
        // Not PostgreSQL with a driver: left for parse to refuse or take.
        assert_eq!(libpq_url("mysql+pymysql://a@h/d"), "mysql+pymysql://a@h/d");
        assert!(Target::parse("mysql+pymysql://a@h/d").is_err());
        assert_eq!(libpq_url("postgresql://a@h/d"), "postgresql://a@h/d");
    }
}
