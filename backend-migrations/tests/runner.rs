//! run-migrations against the test bed's real PostgreSQL and real Alembic.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use backend_migrations::db::LOCK_KEY;
use testkit::{TcpForwarder, TestBed};

const HEAD: &str = "0002_activity_and_comments";
const DETECTION: &str = "Detected pre-Alembic schema; stamping 0001_baseline so the activity-log migration applies on top of the existing tables.";

struct Finished {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
    fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }
}

impl From<Output> for Finished {
    fn from(output: Output) -> Finished {
        Finished {
            code: output.status.code().expect("exited"),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// `run-migrations` in `backend` (which holds alembic.ini), as the chart runs it.
fn runner(backend: &Path, url: &str, extra: &[&str]) -> Command {
    let bed = TestBed::get();
    let mut command = Command::new(env!("CARGO_BIN_EXE_run-migrations"));
    command
        .current_dir(backend)
        .env_remove("ALEMBIC_CONFIG")
        .env("DATABASE_URL", url)
        .env("RUN_MIGRATIONS_ALEMBIC_CMD", &bed.alembic)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn run(backend: &Path, url: &str, extra: &[&str]) -> Finished {
    runner(backend, url, extra)
        .output()
        .expect("run-migrations runs")
        .into()
}

fn alembic_current(backend: &Path, url: &str) -> String {
    let output = Command::new(&TestBed::get().alembic)
        .arg("current")
        .current_dir(backend)
        .env("DATABASE_URL", url)
        .output()
        .expect("alembic runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn fixture_backend() -> PathBuf {
    testkit::workspace_root().join("testdata/colony/backend")
}

fn pre_alembic_database() -> String {
    let bed = TestBed::get();
    let url = bed.create_database("pre_alembic");
    bed.psql_file(
        &url,
        &testkit::workspace_root().join("testdata/colony/pre-alembic.sql"),
    );
    url
}

fn legacy_rows(url: &str) -> String {
    TestBed::get().psql(
        url,
        "SELECT (SELECT count(*) FROM households) || '/' || (SELECT count(*) FROM members) || '/' || (SELECT count(*) FROM chores)",
    )
}

fn assert_success(finished: &Finished) {
    assert_eq!(
        finished.code,
        0,
        "run-migrations failed:\n{}",
        finished.all()
    );
    assert_eq!(
        finished.last_line(),
        "Migrations complete.",
        "{}",
        finished.all()
    );
}

#[test]
fn a_fresh_database_gets_both_revisions() {
    let url = TestBed::get().create_database("fresh");
    let finished = run(&fixture_backend(), &url, &[]);
    assert_success(&finished);
    assert!(
        finished
            .stderr
            .contains("Running upgrade  -> 0001_baseline"),
        "{}",
        finished.all()
    );
    assert!(finished
        .stderr
        .contains("Running upgrade 0001_baseline -> 0002_activity_and_comments"));
    assert!(!finished.all().contains("Detected pre-Alembic"));
    assert_eq!(
        alembic_current(&fixture_backend(), &url),
        format!("{HEAD} (head)")
    );
}

#[test]
fn a_pre_alembic_database_is_stamped_then_upgraded_keeping_its_rows() {
    let url = pre_alembic_database();
    let before = legacy_rows(&url);
    let finished = run(&fixture_backend(), &url, &[]);
    assert_success(&finished);
    assert!(finished.stdout.contains(DETECTION), "{}", finished.all());
    assert!(
        !finished.stderr.contains("-> 0001_baseline"),
        "the baseline must be stamped, not run"
    );
    assert!(finished
        .stderr
        .contains("Running upgrade 0001_baseline -> 0002_activity_and_comments"));
    assert_eq!(legacy_rows(&url), before);
    assert_eq!(before, "3/4/5");
    assert_eq!(
        alembic_current(&fixture_backend(), &url),
        format!("{HEAD} (head)")
    );
    // Stamped exactly as Alembic creates the table.
    let definition = TestBed::get().psql(
        &url,
        "SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'alembic_version'::regclass",
    );
    assert_eq!(definition, "alembic_version_pkc PRIMARY KEY (version_num)");
}

/// DATABASE_URL as an async FastAPI app keeps it (a SQLAlchemy URL with
/// its driver): the runner connects as libpq would, and Alembic's env.py
/// gets the URL as it was.
#[test]
fn sqlalchemy_urls_stamp_and_reach_head() {
    let url = pre_alembic_database();
    let with_driver =
        |driver: &str| url.replacen("postgresql://", &format!("postgresql+{driver}://"), 1);
    let finished = run(&fixture_backend(), &with_driver("psycopg"), &[]);
    assert_success(&finished);
    assert!(finished.stdout.contains(DETECTION), "{}", finished.all());
    assert_eq!(
        alembic_current(&fixture_backend(), &url),
        format!("{HEAD} (head)")
    );
    // At head no Alembic runs: the async driver's URL is only connected to.
    let again = run(&fixture_backend(), &with_driver("asyncpg"), &[]);
    assert_success(&again);
    assert!(
        again.stdout.contains("Migrations complete."),
        "{}",
        again.all()
    );
}

#[test]
fn at_head_a_second_run_changes_nothing_and_starts_no_python() {
    let url = TestBed::get().create_database("at_head");
    assert_success(&run(&fixture_backend(), &url, &[]));
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("alembic-was-called");
    let recorder = marker_dir.path().join("alembic");
    std::fs::write(
        &recorder,
        format!(
            "#!/bin/sh\ntouch '{}'\nexec '{}' \"$@\"\n",
            marker.display(),
            TestBed::get().alembic.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &recorder,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    let finished = run(
        &fixture_backend(),
        &url,
        &["--alembic-cmd", recorder.to_str().unwrap()],
    );
    assert_success(&finished);
    assert!(
        finished
            .stdout
            .contains("already at head 0002_activity_and_comments"),
        "{}",
        finished.all()
    );
    assert!(
        !marker.exists(),
        "Alembic was started although the database was at head"
    );
    assert_eq!(
        alembic_current(&fixture_backend(), &url),
        format!("{HEAD} (head)")
    );
}

#[test]
fn at_baseline_only_the_second_revision_runs() {
    let url = TestBed::get().create_database("at_baseline");
    let output = Command::new(&TestBed::get().alembic)
        .args(["upgrade", "0001_baseline"])
        .current_dir(fixture_backend())
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(output.status.success());
    // A command of several words, as `uv run alembic` is.
    let wrapped = format!("env {}", TestBed::get().alembic.display());
    let finished = run(&fixture_backend(), &url, &["--alembic-cmd", &wrapped]);
    assert_success(&finished);
    assert!(
        !finished.stderr.contains("-> 0001_baseline"),
        "{}",
        finished.all()
    );
    assert_eq!(
        finished.stderr.matches("Running upgrade").count(),
        1,
        "{}",
        finished.all()
    );
    assert!(finished
        .stderr
        .contains("Running upgrade 0001_baseline -> 0002_activity_and_comments"));
}

fn run_concurrently(url: &str, runners: usize) -> Vec<Finished> {
    let children: Vec<Child> = (0..runners)
        .map(|_| {
            runner(&fixture_backend(), url, &[])
                .spawn()
                .expect("spawn run-migrations")
        })
        .collect();
    children
        .into_iter()
        .map(|child| child.wait_with_output().expect("wait").into())
        .collect()
}

#[test]
fn eight_runners_at_once_on_a_fresh_and_on_a_pre_alembic_database() {
    for (url, pre_alembic) in [
        (TestBed::get().create_database("concurrent_fresh"), false),
        (pre_alembic_database(), true),
    ] {
        let results = run_concurrently(&url, 8);
        for finished in &results {
            assert_success(finished);
        }
        let all: String = results.iter().map(Finished::all).collect();
        assert_eq!(
            all.matches("Running upgrade 0001_baseline -> 0002_activity_and_comments")
                .count(),
            1,
            "{all}"
        );
        if pre_alembic {
            assert_eq!(all.matches(DETECTION).count(), 1, "{all}");
            assert_eq!(
                all.matches("Running upgrade  -> 0001_baseline").count(),
                0,
                "{all}"
            );
            assert_eq!(legacy_rows(&url), "3/4/5");
        } else {
            assert_eq!(
                all.matches("Running upgrade  -> 0001_baseline").count(),
                1,
                "{all}"
            );
        }
        assert_eq!(all.matches("already at head").count(), 7, "{all}");
        assert_eq!(
            alembic_current(&fixture_backend(), &url),
            format!("{HEAD} (head)")
        );
    }
}

#[test]
fn a_database_that_comes_up_late_is_waited_for() {
    let bed = TestBed::get();
    let url = bed.create_database("late");
    let upstream = url
        .trim_start_matches("postgresql://postgres@")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let database = url.rsplit('/').next().unwrap();
    let port = TcpForwarder::free_port();
    let late_url = format!("postgresql://postgres@127.0.0.1:{port}/{database}");
    let child = runner(&fixture_backend(), &late_url, &["--wait-timeout", "30"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let _forwarder = TcpForwarder::start(port, upstream);
    let finished: Finished = child.wait_with_output().unwrap().into();
    assert_success(&finished);
    assert!(
        finished
            .stdout
            .contains(&format!("waiting for the database at 127.0.0.1:{port}")),
        "{}",
        finished.all()
    );
    assert!(
        finished.stdout.contains("the database answered after"),
        "{}",
        finished.all()
    );
}

#[test]
fn a_database_that_never_comes_fails_within_the_wait_timeout_without_the_password() {
    let port = TcpForwarder::free_port();
    let url = format!("postgresql://colony:pa55word-never-shown@127.0.0.1:{port}/colony");
    let started = Instant::now();
    let finished = run(&fixture_backend(), &url, &["--wait-timeout", "3"]);
    let took = started.elapsed();
    assert_eq!(finished.code, 3, "{}", finished.all());
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(
        finished.stderr.contains(&format!(
            "the database at 127.0.0.1:{port} did not accept connections within 3 s"
        )),
        "{}",
        finished.all()
    );
    assert!(!finished.all().contains("pa55word-never-shown"));
    assert!(!finished.all().contains("Migrations complete."));
}

/// A copy of the backend with a third revision that raises.
fn backend_with_broken_revision() -> tempfile::TempDir {
    let backend = testkit::backend_copy();
    std::fs::write(
        backend.path().join("alembic/versions/0003_broken.py"),
        "revision = '0003_broken'\ndown_revision = '0002_activity_and_comments'\n\n\
         from alembic import op\n\n\ndef upgrade():\n    op.execute('CREATE TABLE half_done (id INT)')\n    \
         raise RuntimeError('this migration is broken on purpose')\n\n\ndef downgrade():\n    pass\n",
    )
    .unwrap();
    backend
}

#[test]
fn a_failing_migration_exits_non_zero_releases_the_lock_and_keeps_the_version() {
    let bed = TestBed::get();
    let url = bed.create_database("failing");
    assert_success(&run(&fixture_backend(), &url, &[]));
    let broken = backend_with_broken_revision();

    let finished = run(broken.path(), &url, &[]);
    assert_eq!(finished.code, 1, "{}", finished.all());
    assert!(!finished.all().contains("Migrations complete."));
    assert!(
        finished
            .stderr
            .contains("alembic upgrade head failed in 0003_broken"),
        "{}",
        finished.all()
    );
    assert!(
        finished
            .stderr
            .contains("this migration is broken on purpose"),
        "{}",
        finished.all()
    );
    assert_eq!(
        bed.psql(&url, "SELECT version_num FROM alembic_version"),
        HEAD
    );
    assert_eq!(
        bed.psql(&url, "SELECT to_regclass('half_done') IS NULL"),
        "t",
        "the failed migration left a table"
    );
    // Another session can take the lock at once: it was released.
    assert_eq!(
        bed.psql(&url, &format!("SELECT pg_try_advisory_lock({LOCK_KEY})")),
        "t"
    );
}

/// A runner waiting for the migration lock names who holds it (pid,
/// application, client), and says so again when it gives up.
#[test]
fn a_runner_waiting_for_the_migration_lock_names_its_holder() {
    let bed = TestBed::get();
    let url = bed.create_database("held_lock");
    let mut holder = Command::new("psql")
        .args([url.as_str(), "-XAtq", "-c"])
        .arg(format!("SELECT pg_advisory_lock({LOCK_KEY})"))
        .args(["-c", "SELECT pg_sleep(60)"])
        .env("PGAPPNAME", "someone-else's-session")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Advisory locks are per database; pg_locks shows every database's.
    let held = || {
        bed.psql(
            &url,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
    };
    let start = std::time::Instant::now();
    while held() != "1" {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "the lock was never taken"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let finished = run(&fixture_backend(), &url, &["--lock-timeout", "2"]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_ne!(finished.code, 0, "{}", finished.all());
    assert!(
        finished
            .stdout
            .contains("the migration lock is held by pid ")
            && finished.stdout.contains("(someone-else's-session, from "),
        "{}",
        finished.all()
    );
    assert!(
        finished
            .stderr
            .contains("was held for more than 2 s, by pid ")
            && finished.stderr.contains("pg_terminate_backend"),
        "{}",
        finished.all()
    );
}

#[test]
fn a_pre_alembic_database_with_a_newer_table_stops_with_a_precise_message() {
    let bed = TestBed::get();
    let url = pre_alembic_database();
    // create_all() from newer models made one of 0002's tables already.
    bed.psql(&url, "CREATE TABLE activity_log (id SERIAL PRIMARY KEY, household_id INT, message TEXT, created_at TIMESTAMPTZ)");
    let finished = run(&fixture_backend(), &url, &[]);
    assert_eq!(finished.code, 1, "{}", finished.all());
    let error = finished.stderr.lines().last().unwrap_or_default();
    assert!(
        error.starts_with(
            "run-migrations: error: alembic upgrade head failed in 0002_activity_and_comments"
        ),
        "{error}"
    );
    assert!(
        error.contains("table activity_log already exists"),
        "{error}"
    );
    assert!(
        error.contains("stamped (pre-Alembic schema) and is now at 0001_baseline"),
        "{error}"
    );
    assert!(
        error.contains("`alembic stamp 0002_activity_and_comments`"),
        "{error}"
    );
    assert_eq!(
        bed.psql(&url, "SELECT version_num FROM alembic_version"),
        "0001_baseline"
    );
    assert_eq!(legacy_rows(&url), "3/4/5");
}

/// Bad input: the given exit code and message, and the database untouched.
fn assert_bad_input(backend: &Path, url: &str, extra: &[&str], code: i32, message: &str) {
    let finished = run(backend, url, extra);
    assert_eq!(finished.code, code, "{extra:?}: {}", finished.all());
    assert!(
        finished.stderr.contains(message),
        "{extra:?}: expected {message:?} in {}",
        finished.all()
    );
    assert!(!finished.all().contains("Migrations complete."));
}

#[test]
fn bad_inputs_are_refused_before_anything_is_written() {
    let bed = TestBed::get();
    let url = bed.create_database("bad_inputs");
    let untouched = || {
        assert_eq!(
            bed.psql(&url, "SELECT to_regclass('alembic_version') IS NULL"),
            "t"
        )
    };

    assert_bad_input(
        &fixture_backend(),
        "postgresql://colony:pa55word@db:notaport/colony",
        &[],
        2,
        "is not a valid PostgreSQL URL",
    );
    assert!(!run(
        &fixture_backend(),
        "postgresql://colony:pa55word@db:notaport/colony",
        &[]
    )
    .all()
    .contains("pa55word"));
    assert_bad_input(
        &fixture_backend(),
        &url,
        &["--legacy-table", "households; DROP TABLE x"],
        2,
        "is not a table name",
    );
    assert_bad_input(
        &fixture_backend(),
        &url,
        &["--wait-timeout", "soon"],
        2,
        "is not a number of seconds",
    );
    untouched();

    let no_project = tempfile::tempdir().unwrap();
    assert_bad_input(
        no_project.path(),
        &url,
        &[],
        2,
        "cannot read the Alembic config",
    );
    let no_versions = tempfile::tempdir().unwrap();
    std::fs::write(
        no_versions.path().join("alembic.ini"),
        "[alembic]\nscript_location = %(here)s/missing\n",
    )
    .unwrap();
    assert_bad_input(
        no_versions.path(),
        &url,
        &[],
        2,
        "cannot read Alembic versions at",
    );

    let forked = testkit::backend_copy();
    for branch in ["0003_a", "0003_b"] {
        std::fs::write(
            forked.path().join(format!("alembic/versions/{branch}.py")),
            format!("revision = '{branch}'\ndown_revision = '0002_activity_and_comments'\n"),
        )
        .unwrap();
    }
    assert_bad_input(
        forked.path(),
        &url,
        &[],
        2,
        "the revision graph has 2 heads (0003_a, 0003_b)",
    );
    untouched();
}

#[test]
fn an_alembic_command_that_does_not_exist_is_refused_before_the_stamp() {
    let url = pre_alembic_database();
    assert_bad_input(
        &fixture_backend(),
        &url,
        &["--alembic-cmd", "nosuchalembic"],
        2,
        "--alembic-cmd: \"nosuchalembic\" is not an executable on PATH",
    );
    assert_bad_input(
        &fixture_backend(),
        &url,
        &["--alembic-cmd", "/nonexistent/bin/alembic upgrade"],
        2,
        "is not an executable",
    );
    assert_eq!(
        TestBed::get().psql(&url, "SELECT to_regclass('alembic_version') IS NULL"),
        "t",
        "the pre-Alembic schema was stamped"
    );
}

#[test]
fn a_url_that_is_not_postgresql_is_refused_at_once() {
    let started = Instant::now();
    assert_bad_input(
        &fixture_backend(),
        "http://colony:s3cr3t@db:5432/colony",
        &[],
        2,
        "is not a PostgreSQL URL: it must start with postgresql://",
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it waited for the database"
    );
    let run = run(&fixture_backend(), "mysql://colony:s3cr3t@db/colony", &[]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(!run.all().contains("s3cr3t"), "{}", run.all());
}

#[test]
fn huge_or_zero_timeouts_are_refused_not_a_panic() {
    let bed = TestBed::get();
    let url = bed.create_database("timeouts");
    for flag in ["--lock-timeout", "--wait-timeout"] {
        for value in ["18446744073709551615", "86401", "0"] {
            assert_bad_input(
                &fixture_backend(),
                &url,
                &[flag, value],
                2,
                "is not a number of seconds from 1 to 86400",
            );
        }
    }
}

#[test]
fn a_revision_the_scripts_do_not_know_is_refused() {
    let bed = TestBed::get();
    let url = bed.create_database("newer");
    bed.psql(
        &url,
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY); INSERT INTO alembic_version VALUES ('0003_from_the_future')",
    );
    let finished = run(&fixture_backend(), &url, &[]);
    assert_eq!(finished.code, 5, "{}", finished.all());
    assert!(
        finished
            .stderr
            .contains("revision 0003_from_the_future, which these migration scripts do not know"),
        "{}",
        finished.all()
    );
    assert_eq!(
        bed.psql(&url, "SELECT version_num FROM alembic_version"),
        "0003_from_the_future"
    );
}

#[test]
fn status_says_what_a_run_would_do_without_doing_it() {
    let url = pre_alembic_database();
    let output = runner(&fixture_backend(), &url, &["status", "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["action"], "stamp-and-upgrade");
    assert_eq!(status["head"], HEAD);
    assert_eq!(status["legacy_tables"], serde_json::json!(["households"]));
    assert_eq!(
        TestBed::get().psql(&url, "SELECT to_regclass('alembic_version') IS NULL"),
        "t"
    );
}

/// Processes whose working directory is `dir` (the runner's Alembic children).
fn processes_in(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter(|e| std::fs::read_link(e.path().join("cwd")).ok().as_deref() == Some(dir.as_path()))
        .map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).replace('\0', " ")
        })
        .collect()
}

/// `kill -9` of the runner mid-migration: its Alembic child goes too (the
/// parent-death signal), so a second runner migrates alone and succeeds.
#[test]
fn a_killed_runner_leaves_no_alembic_behind() {
    let bed = TestBed::get();
    let url = bed.create_database("killed");
    let backend = testkit::backend_copy();
    std::fs::write(
        backend.path().join("alembic/versions/0003_slow.py"),
        "revision = '0003_slow'\ndown_revision = '0002_activity_and_comments'\n\n\
         from alembic import op\n\n\ndef upgrade():\n    op.execute('CREATE TABLE slow_done (id INT)')\n    \
         op.execute('SELECT pg_sleep(20)')\n\n\ndef downgrade():\n    op.execute('DROP TABLE slow_done')\n",
    )
    .unwrap();
    let mut first = runner(backend.path(), &url, &[]).spawn().unwrap();
    // Wait until Alembic runs the slow revision.
    let deadline = Instant::now() + Duration::from_secs(30);
    while bed.psql(
        &url,
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'",
    ) == "0"
    {
        assert!(
            Instant::now() < deadline,
            "the slow migration never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        processes_in(backend.path())
            .iter()
            .any(|p| p.contains("alembic")),
        "no Alembic child to leave behind"
    );
    first.kill().unwrap(); // SIGKILL: no chance to clean up itself
    let _ = first.wait();
    // Well before the 20 s migration could end on its own.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = processes_in(backend.path());
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Alembic outlived the runner: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The killed migration's transaction was rolled back with its connection.
    std::fs::write(
        backend.path().join("alembic/versions/0003_slow.py"),
        "revision = '0003_slow'\ndown_revision = '0002_activity_and_comments'\n\n\
         from alembic import op\n\n\ndef upgrade():\n    op.execute('CREATE TABLE slow_done (id INT)')\n\n\n\
         def downgrade():\n    op.execute('DROP TABLE slow_done')\n",
    )
    .unwrap();
    let second = run(backend.path(), &url, &[]);
    assert_eq!(second.code, 0, "{}", second.all());
    assert_eq!(second.last_line(), "Migrations complete.");
    assert_eq!(
        bed.psql(&url, "SELECT version_num FROM alembic_version"),
        "0003_slow"
    );
}

/// A session that holds a lock on `chores` (an app's long transaction):
/// the migration's ALTER TABLE gives up after the lock timeout instead of
/// queueing every query behind it, is tried again, then fails naming the
/// session, its query and how long it has held the lock.
#[test]
fn a_lock_held_by_another_session_is_waited_for_briefly_retried_then_named() {
    let bed = TestBed::get();
    let url = bed.create_database("ddl_lock");
    assert_success(&run(&fixture_backend(), &url, &[]));
    let backend = testkit::backend_copy();
    std::fs::write(
        backend.path().join("alembic/versions/0003_points.py"),
        "revision = '0003_points'\ndown_revision = '0002_activity_and_comments'\n\n\
         import sqlalchemy as sa\nfrom alembic import op\n\n\ndef upgrade():\n    \
         op.add_column('chores', sa.Column('points', sa.Integer, nullable=True))\n\n\n\
         def downgrade():\n    op.drop_column('chores', 'points')\n",
    )
    .unwrap();
    // The holder: a transaction that read chores and stays open.
    let mut holder = Command::new("psql")
        .args([url.as_str(), "-XAtq", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let stdin = holder.stdin.as_mut().unwrap();
        writeln!(
            stdin,
            "BEGIN; SELECT count(*) FROM chores /* the app's report */;"
        )
        .unwrap();
        stdin.flush().unwrap();
    }
    let held = || {
        bed.psql(
            &url,
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE c.relname = 'chores' AND l.granted AND l.pid <> pg_backend_pid()",
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while held() == "0" {
        assert!(Instant::now() < deadline, "the holder never took its lock");
        std::thread::sleep(Duration::from_millis(50));
    }

    let finished = run(
        backend.path(),
        &url,
        &["--ddl-lock-timeout=1", "--ddl-lock-retries=1"],
    );
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(finished.code, 4, "{}", finished.all());
    let all = finished.all();
    for expected in [
        "a migration waited longer than 1 s for a table lock (try 1 of 2)",
        "trying again in 2 s",
        "waited longer than its lock timeout (1 s) for a table lock, 2 time(s)",
        "holds chores AccessShareLock, running \"SELECT count(*) FROM chores",
        "(idle in transaction, transaction open",
    ] {
        assert!(all.contains(expected), "{expected}\n{all}");
    }
    assert_eq!(
        bed.psql(&url, "SELECT version_num FROM alembic_version"),
        HEAD,
        "the timed-out revision committed nothing"
    );
    // With the holder gone, the same run goes through.
    assert_success(&run(backend.path(), &url, &["--ddl-lock-timeout=1"]));
}

/// `run-migrations downgrade` holds the migration lock while Alembic goes
/// down: an init container starting meanwhile cannot upgrade under it.
#[test]
fn a_downgrade_holds_the_migration_lock_until_it_is_done() {
    let bed = TestBed::get();
    let url = bed.create_database("downgrade_lock");
    let backend = testkit::backend_copy();
    std::fs::write(
        backend.path().join("alembic/versions/0003_slow_down.py"),
        "revision = '0003_slow_down'\ndown_revision = '0002_activity_and_comments'\n\n\
         from alembic import op\n\n\ndef upgrade():\n    pass\n\n\ndef downgrade():\n    \
         op.execute('SELECT pg_sleep(4)')\n",
    )
    .unwrap();
    assert_success(&run(backend.path(), &url, &[]));
    let down = runner(backend.path(), &url, &["downgrade", HEAD])
        .spawn()
        .expect("run-migrations runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    while bed.psql(
        &url,
        &format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = {}",
            LOCK_KEY & 0xffff_ffff
        ),
    ) == "0"
    {
        assert!(
            Instant::now() < deadline,
            "the downgrade never took the lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // An upgrade meanwhile waits for the lock, and gives up after its timeout.
    let meanwhile = run(backend.path(), &url, &["--lock-timeout", "1"]);
    assert_eq!(meanwhile.code, 4, "{}", meanwhile.all());
    let down: Finished = down.wait_with_output().expect("downgrade ends").into();
    assert_success_with(&down, "Downgrade complete.");
    assert_eq!(
        bed.psql(&url, "SELECT version_num FROM alembic_version"),
        HEAD
    );
    // An unknown target is refused before any connection.
    let unknown = run(backend.path(), &url, &["downgrade", "0009_nope"]);
    assert_eq!(unknown.code, 2, "{}", unknown.all());
    assert!(
        unknown.stderr.contains("no revision \"0009_nope\""),
        "{}",
        unknown.all()
    );
}

fn assert_success_with(finished: &Finished, last: &str) {
    assert_eq!(finished.code, 0, "{}", finished.all());
    assert_eq!(finished.last_line(), last, "{}", finished.all());
}

/// While Alembic runs a long migration, the lock's session is used every
/// `--keepalive-interval`, so that a NAT or proxy never drops it as idle
/// (and the advisory lock with it): pg_stat_activity sees its keepalive
/// queries start again and again during the migration.
#[test]
fn the_lock_s_connection_is_kept_alive_while_alembic_runs() {
    let bed = TestBed::get();
    let url = bed.create_database("keepalive");
    assert_success(&run(&fixture_backend(), &url, &[]));
    let backend = testkit::backend_copy();
    std::fs::write(
        backend.path().join("alembic/versions/0003_slow.py"),
        "revision = '0003_slow'\ndown_revision = '0002_activity_and_comments'\n\n\
         from alembic import op\n\n\ndef upgrade():\n    op.execute('SELECT pg_sleep(5)')\n\n\n\
         def downgrade():\n    pass\n",
    )
    .unwrap();
    let runner = runner(backend.path(), &url, &["--keepalive-interval", "1"])
        .spawn()
        .unwrap();
    let mut starts = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while starts.len() < 3 && Instant::now() < deadline {
        let start = bed.psql(
            &url,
            "SELECT query_start FROM pg_stat_activity \
             WHERE query = 'SELECT 1 AS run_migrations_keepalive' \
             AND application_name LIKE 'run-migrations%'",
        );
        if !start.is_empty() {
            starts.insert(start);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let finished: Finished = runner.wait_with_output().unwrap().into();
    assert_success_with(&finished, "Migrations complete.");
    assert!(
        starts.len() >= 3,
        "keepalives seen during the 5 s migration: {starts:?}"
    );
}
