//! `cargo bench -p backend-migrations`: run-migrations against plain Alembic
//! on the test bed (same machine, same run). Prints figures; asserts nothing
//! about speed (goals live here, not in tests).
//!
//! - at head (every pod start): run-migrations vs `alembic upgrade head`; goal <= 0.2x
//! - pre-Alembic: run-migrations vs `alembic stamp 0001_baseline` + `alembic upgrade head`; goal <= 1.1x
//! - fresh: run-migrations vs `alembic upgrade head`; goal <= 1.1x
//! - contention: 8 runners at once on a fresh database: wall time, all succeed

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::TestBed;

const ROUNDS: usize = 7;

fn backend() -> PathBuf {
    testkit::workspace_root().join("testdata/colony/backend")
}

fn timed(program: &Path, args: &[&str], url: &str) -> Duration {
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .current_dir(backend())
        .env("DATABASE_URL", url)
        .env("RUN_MIGRATIONS_ALEMBIC_CMD", &TestBed::get().alembic)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("runs");
    let took = started.elapsed();
    assert!(status.success(), "{} {args:?} failed", program.display());
    took
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Medians of `ours` and `theirs`, sampled alternately so that a machine
/// getting busier or quieter affects both alike.
fn interleaved(
    mut ours: impl FnMut() -> Duration,
    mut theirs: impl FnMut() -> Duration,
) -> (Duration, Duration) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        a.push(ours());
        b.push(theirs());
    }
    (median(a), median(b))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(name: &str, ours: Duration, theirs: Duration, theirs_name: &str, goal: f64) {
    let ratio = ours.as_secs_f64() / theirs.as_secs_f64();
    println!(
        "{name:<12} run-migrations {:>8.1} ms   {theirs_name:<34} {:>8.1} ms   ratio {ratio:.2}x (goal <= {goal}x) {}",
        ms(ours),
        ms(theirs),
        if ratio <= goal { "met" } else { "MISSED" }
    );
}

fn pre_alembic_database(bed: &TestBed) -> String {
    let url = bed.create_database("bench_pre");
    bed.psql_file(
        &url,
        &testkit::workspace_root().join("testdata/colony/pre-alembic.sql"),
    );
    url
}

fn main() {
    let bed = TestBed::get();
    let runner = PathBuf::from(env!("CARGO_BIN_EXE_run-migrations"));
    let alembic = bed.alembic.clone();
    println!(
        "median of {ROUNDS} rounds; PostgreSQL at {}",
        bed.database_url_base
    );

    // At head: the common case on every pod start.
    let url = bed.create_database("bench_head");
    timed(&runner, &[], &url);
    let (ours, theirs) = interleaved(
        || timed(&runner, &[], &url),
        || timed(&alembic, &["upgrade", "head"], &url),
    );
    report("at head", ours, theirs, "alembic upgrade head", 0.2);

    // Pre-Alembic: a new legacy database for every sample.
    let (ours, theirs) = interleaved(
        || timed(&runner, &[], &pre_alembic_database(bed)),
        || {
            let url = pre_alembic_database(bed);
            timed(&alembic, &["stamp", "0001_baseline"], &url)
                + timed(&alembic, &["upgrade", "head"], &url)
        },
    );
    report(
        "pre-Alembic",
        ours,
        theirs,
        "alembic stamp + alembic upgrade head",
        1.1,
    );

    // Fresh: an empty database for every sample.
    let (ours, theirs) = interleaved(
        || timed(&runner, &[], &bed.create_database("bench_fresh")),
        || {
            timed(
                &alembic,
                &["upgrade", "head"],
                &bed.create_database("bench_fresh"),
            )
        },
    );
    report("fresh", ours, theirs, "alembic upgrade head", 1.1);

    // Contention: 8 runners at once on one fresh database.
    let url = bed.create_database("bench_contention");
    let started = Instant::now();
    let children: Vec<_> = (0..8)
        .map(|_| {
            Command::new(&runner)
                .current_dir(backend())
                .env("DATABASE_URL", &url)
                .env("RUN_MIGRATIONS_ALEMBIC_CMD", &alembic)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let succeeded = children
        .into_iter()
        .filter_map(|mut c| c.wait().ok())
        .filter(|s| s.success())
        .count();
    println!(
        "contention   8 runners on a fresh database: {:.1} ms wall, {succeeded}/8 succeeded",
        ms(started.elapsed())
    );
}
