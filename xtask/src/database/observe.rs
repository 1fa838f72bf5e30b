//! What a rehearsal learns from what it watched, decided from text: each
//! revision's duration from Alembic's log lines and their timestamps, the
//! failing revision, statement and PostgreSQL error from a failed run, and
//! the longest ACCESS EXCLUSIVE lock per table from the lock sampler's
//! lines. Pure.

use std::collections::BTreeMap;
use std::time::Duration;

/// One line of a container's log and when the container wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub at: Duration,
    pub text: String,
}

/// One revision Alembic ran, and how long it took (until the next
/// revision started, or the run ended).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RevisionRun {
    pub direction: Direction,
    pub from: String,
    pub to: String,
    #[serde(serialize_with = "seconds")]
    pub took: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Upgrade,
    Downgrade,
}

pub fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// `Running upgrade A -> B, message` (A empty for the first revision).
fn revision_started(text: &str) -> Option<(Direction, String, String)> {
    let (direction, rest) = if let Some(at) = text.find("Running upgrade ") {
        (Direction::Upgrade, &text[at + "Running upgrade ".len()..])
    } else if let Some(at) = text.find("Running downgrade ") {
        (
            Direction::Downgrade,
            &text[at + "Running downgrade ".len()..],
        )
    } else {
        return None;
    };
    let (from, rest) = rest.split_once("->")?;
    let to = rest.trim().split([',', ' ']).next().unwrap_or_default();
    Some((direction, from.trim().to_string(), to.to_string()))
}

/// Each revision the log shows Alembic running, timed from its line to
/// the next revision's; the last one to run-migrations' first line after
/// it (it speaks only once Alembic has exited), else to `ended`. So the
/// last revision does not count the process's and the container's exit,
/// which the real init container's log does not show either.
pub fn revision_runs(lines: &[LogLine], ended: Duration) -> Vec<RevisionRun> {
    let started: Vec<(Duration, (Direction, String, String))> = lines
        .iter()
        .filter_map(|line| revision_started(&line.text).map(|r| (line.at, r)))
        .collect();
    let alembic_done = |after: Duration| {
        lines
            .iter()
            .filter(|l| l.at >= after)
            .find(|l| l.text.starts_with("run-migrations:") || l.text == "Migrations complete.")
            .map_or(ended, |l| l.at)
    };
    started
        .iter()
        .enumerate()
        .map(|(i, (at, (direction, from, to)))| {
            let until = started
                .get(i + 1)
                .map_or_else(|| alembic_done(*at), |(next, _)| *next);
            RevisionRun {
                direction: *direction,
                from: from.clone(),
                to: to.clone(),
                took: until.saturating_sub(*at),
            }
        })
        .collect()
}

/// Where and why a rehearsed run failed, from its log.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct Failure {
    /// The revision Alembic was running when it failed.
    pub revision: Option<String>,
    /// The statement PostgreSQL refused (`[SQL: …]`).
    pub statement: Option<String>,
    /// PostgreSQL's (or Python's) error line.
    pub error: Option<String>,
}

/// The failing revision, statement and error in a failed run's log.
pub fn failure(lines: &[LogLine]) -> Failure {
    let revision = lines
        .iter()
        .rev()
        .find_map(|l| revision_started(&l.text).map(|(_, _, to)| to));
    let statement = statement(lines);
    // SQLAlchemy's `(psycopg.errors.X) message` line, else the last
    // exception line of the traceback.
    let error = lines
        .iter()
        .rev()
        .find(|l| l.text.contains("psycopg.errors.") || l.text.contains("psycopg2.errors."))
        .or_else(|| {
            lines.iter().rev().find(|l| {
                let text = l.text.trim_start();
                text.split_once(": ")
                    .is_some_and(|(name, _)| name.ends_with("Error") || name.ends_with("Exception"))
            })
        })
        .map(|l| l.text.trim().to_string());
    Failure {
        revision,
        statement,
        error,
    }
}

/// SQLAlchemy's `[SQL: …]`, which spans lines for DDL (`[SQL: \nDROP
/// TABLE x]`): the last one, on one line.
fn statement(lines: &[LogLine]) -> Option<String> {
    let start = lines
        .iter()
        .rposition(|l| l.text.trim_start().starts_with("[SQL:"))?;
    let mut text = String::new();
    for line in &lines[start..] {
        text.push(' ');
        text.push_str(line.text.trim());
        if line.text.trim_end().ends_with(']') {
            break;
        }
    }
    let text = text
        .trim()
        .trim_start_matches("[SQL:")
        .trim_end_matches(']');
    Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The sampler's query: one NOTICE per sample, `<ms since the epoch>|t1,t2`
/// with the tables an ACCESS EXCLUSIVE lock is granted on, until its
/// session is terminated. Sampling inside one `DO` keeps it to a few
/// milliseconds apart without a connection per sample.
pub const LOCK_SAMPLER_SQL: &str = "DO $$ \
DECLARE held text; \
BEGIN \
  LOOP \
    SELECT string_agg(DISTINCT c.relname, ',') INTO held \
      FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
      WHERE l.mode = 'AccessExclusiveLock' AND l.granted AND c.relkind IN ('r', 'p') \
        AND c.relnamespace NOT IN (SELECT oid FROM pg_namespace WHERE nspname LIKE 'pg\\_%' OR nspname = 'information_schema'); \
    RAISE NOTICE '%|%', floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint, coalesce(held, ''); \
    PERFORM pg_sleep(0.005); \
  END LOOP; \
END $$;";

/// The application name the sampler's session runs under (so it can be
/// ended by name).
pub const LOCK_SAMPLER_NAME: &str = "colony-rehearsal-lock-sampler";

/// The longest time each table was held ACCESS EXCLUSIVE without a break,
/// from the sampler's lines (a hold seen in one sample only counts as the
/// gap to the next sample).
pub fn longest_locks(sampler_output: &str) -> BTreeMap<String, Duration> {
    let samples: Vec<(u64, Vec<&str>)> = sampler_output
        .lines()
        .filter_map(|line| line.split_once("NOTICE:").map(|(_, rest)| rest.trim()))
        .filter_map(|rest| {
            let (ms, tables) = rest.split_once('|')?;
            let tables = tables.split(',').filter(|t| !t.is_empty()).collect();
            Some((ms.trim().parse().ok()?, tables))
        })
        .collect();
    let mut longest: BTreeMap<String, Duration> = BTreeMap::new();
    let mut since: BTreeMap<&str, u64> = BTreeMap::new();
    for (i, (ms, tables)) in samples.iter().enumerate() {
        let next = samples.get(i + 1).map_or(*ms, |(next, _)| *next);
        since.retain(|table, _| tables.contains(table));
        for table in tables {
            let start = *since.entry(table).or_insert(*ms);
            let held = Duration::from_millis(next.saturating_sub(start));
            let best = longest.entry(table.to_string()).or_default();
            if held > *best {
                *best = held;
            }
        }
    }
    longest
}

/// The major version of the server a backup was dumped from, from
/// `pg_restore --list` (`; Dumped from database version: 15.18 (Debian …)`):
/// `15`, or `9.6` before PostgreSQL 10.
pub fn server_major(listing: &str) -> Option<String> {
    let version = listing
        .lines()
        .find_map(|l| l.split_once("Dumped from database version:"))?
        .1
        .split_whitespace()
        .next()?;
    let mut parts = version.split('.');
    let first = parts.next()?;
    let major: u32 = first.parse().ok()?;
    Some(if major < 10 {
        format!("{first}.{}", parts.next()?)
    } else {
        first.to_string()
    })
}

/// `<tables>|<rows>` as the count query prints it.
pub fn restored_counts(psql_output: &str) -> Option<(u64, u64)> {
    let (tables, rows) = psql_output.trim().split_once('|')?;
    Some((tables.trim().parse().ok()?, rows.trim().parse().ok()?))
}

/// The tables of the restored database and their rows, exactly (a count
/// per table, not the statistics' estimate).
pub const COUNT_SQL: &str = "SELECT count(*), coalesce(sum((xpath('/row/c/text()', \
query_to_xml(format('SELECT count(*) AS c FROM %I.%I', schemaname, relname), false, true, '')))[1]::text::bigint), 0) \
FROM pg_stat_user_tables";

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ms: u64, text: &str) -> LogLine {
        LogLine {
            at: Duration::from_millis(ms),
            text: text.into(),
        }
    }

    #[test]
    fn each_revision_is_timed_until_the_next_one_starts() {
        let lines = [
            line(0, "Database is at 0001_baseline; upgrading"),
            line(
                100,
                "INFO  [alembic.runtime.migration] Context impl PostgresqlImpl.",
            ),
            line(
                120,
                "INFO  [alembic.runtime.migration] Running upgrade 0001_baseline -> 0002_x, Add x",
            ),
            line(
                620,
                "INFO  [alembic.runtime.migration] Running upgrade 0002_x -> 0003_y",
            ),
            line(660, "some output of the migration itself"),
            line(700, "run-migrations: database at 0003_y (head)"),
            line(710, "Migrations complete."),
        ];
        let runs = revision_runs(&lines, Duration::from_millis(900));
        assert_eq!(runs.len(), 2);
        assert_eq!(
            (runs[0].from.as_str(), runs[0].to.as_str()),
            ("0001_baseline", "0002_x")
        );
        assert_eq!(runs[0].took, Duration::from_millis(500));
        assert_eq!(runs[1].to, "0003_y");
        // To the runner's line after Alembic, not the container's end.
        assert_eq!(runs[1].took, Duration::from_millis(80));
        let down = revision_runs(
            &[line(0, "INFO  [alembic.runtime.migration] Running downgrade 0002_x -> 0001_baseline, Add x")],
            Duration::from_millis(40),
        );
        assert_eq!(down[0].direction, Direction::Downgrade);
        assert_eq!(down[0].to, "0001_baseline");
    }

    #[test]
    fn a_failure_names_the_revision_the_statement_and_postgres_error() {
        let lines = [
            line(0, "INFO  [alembic.runtime.migration] Running upgrade 0002_x -> 0003_points, Points"),
            line(1, "Traceback (most recent call last):"),
            line(2, "sqlalchemy.exc.IntegrityError: (psycopg.errors.NotNullViolation) column \"points\" of relation \"chores\" contains null values"),
            line(3, "[SQL: ALTER TABLE chores ADD COLUMN points INTEGER NOT NULL]"),
            line(4, "(Background on this error at: https://sqlalche.me/e/20/gkpj)"),
        ];
        let failure = failure(&lines);
        assert_eq!(failure.revision.as_deref(), Some("0003_points"));
        assert_eq!(
            failure.statement.as_deref(),
            Some("ALTER TABLE chores ADD COLUMN points INTEGER NOT NULL")
        );
        assert!(failure.error.unwrap().contains("NotNullViolation"));
        let ddl = failure_of(&[
            "sqlalchemy.exc.ProgrammingError: (psycopg.errors.UndefinedTable) table \"tag\" does not exist",
            "[SQL: ",
            "DROP TABLE tag]",
        ]);
        assert_eq!(ddl.statement.as_deref(), Some("DROP TABLE tag"));
        let python = failure_of(&[
            "Running upgrade a -> b",
            "NameError: name 'op2' is not defined",
        ]);
        assert_eq!(
            python.error.as_deref(),
            Some("NameError: name 'op2' is not defined")
        );
        assert_eq!(python.statement, None);
    }

    fn failure_of(texts: &[&str]) -> Failure {
        let lines: Vec<LogLine> = texts.iter().map(|t| line(0, t)).collect();
        failure(&lines)
    }

    #[test]
    fn the_longest_unbroken_hold_per_table_is_kept() {
        let output = "NOTICE:  1000|\n\
                      NOTICE:  1010|chores\n\
                      NOTICE:  1020|chores,comments\n\
                      NOTICE:  1030|chores\n\
                      NOTICE:  1040|\n\
                      NOTICE:  1050|comments\n\
                      NOTICE:  1060|\n\
                      psql: something else\n";
        let locks = longest_locks(output);
        assert_eq!(locks["chores"], Duration::from_millis(30));
        assert_eq!(locks["comments"], Duration::from_millis(10));
        assert!(longest_locks("").is_empty());
    }

    #[test]
    fn the_server_major_comes_from_the_archive_header() {
        let listing = ";\n; Archive created at 2026-12-01 03:00:00 UTC\n\
                       ;     dbname: colony\n\
                       ;     Dumped from database version: 15.18 (Debian 15.18-0+deb12u1)\n\
                       ;     Dumped by pg_dump version: 15.18\n";
        assert_eq!(server_major(listing).as_deref(), Some("15"));
        assert_eq!(
            server_major("; Dumped from database version: 9.6.24\n").as_deref(),
            Some("9.6")
        );
        assert_eq!(server_major("not an archive"), None);
    }

    #[test]
    fn restored_counts_read_the_count_query() {
        assert_eq!(restored_counts("5|1203\n"), Some((5, 1203)));
        assert_eq!(restored_counts("ERROR: x"), None);
    }
}
