//! `cargo bench -p xtask --bench rehearsal`: what the rehearsal costs, on
//! the test bed. For a `chores` table of 10k and of 1M rows, a migration
//! that rewrites it (a column with a volatile default: ACCESS EXCLUSIVE for
//! the whole rewrite) is deployed twice per round, on two fresh stacks with
//! the same data: once rehearsed, once with `--no-rehearsal`. Printed:
//! the seconds the rehearsal adds to the deploy, the revision's time in the
//! rehearsal against its time in the real init container (goal: within
//! 25 %), and the longest lock the rehearsal measured. Three rounds,
//! interleaved, fresh databases and a new commit each time; medians.

#[path = "../tests/e2e/common/mod.rs"]
#[allow(dead_code)] // the bench uses a part of the tests' helpers
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::stack::Stack;
use testkit::TestBed;

const ROUNDS: usize = 3;
const REVISION: &str = "0003_chore_points";

/// A stack at 0002 with `rows` chores, and the rewriting migration committed.
fn stack_with_rows(rows: u64, round: usize) -> Stack {
    let stack = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    let first = deploy(&stack, &["--no-rehearsal"]);
    assert!(first.0.is_some(), "the first deploy failed");
    stack.psql(&format!(
        "INSERT INTO chores (household_id, title) \
         SELECT 1 + g % 3, 'chore ' || g FROM generate_series(1, {rows}) g; ANALYZE chores"
    ));
    stack.commit_revision_both_ways(
        REVISION,
        "0002_activity_and_comments",
        &format!("Points per chore (round {round})"),
        "    op.add_column(\"chores\", sa.Column(\"points\", sa.Integer, nullable=False, \
         server_default=sa.text(\"(random() * 10)::int\")))",
        "    op.drop_column(\"chores\", \"points\")",
    );
    stack
}

/// A deploy with `extra` flags: its summary (None if it failed) and wall time.
fn deploy(stack: &Stack, extra: &[&str]) -> (Option<serde_json::Value>, Duration) {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["deploy", "colony-dev", "--yes", "--json"])
        .args(extra)
        .current_dir(stack.repo.root())
        .envs(stack.env())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = started.elapsed();
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        return (None, took);
    }
    (serde_json::from_slice(&output.stdout).ok(), took)
}

/// The revision's time in the real init container: from its "Running
/// upgrade" line to the next line, by the container's own timestamps.
fn real_revision_seconds() -> Option<f64> {
    let bed = TestBed::get();
    let docker = |args: &[&str]| {
        let output = Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", &bed.docker_host)
            .output()
            .unwrap();
        // Both streams (Alembic logs to stderr), in the order of their
        // timestamps.
        let mut lines: Vec<String> = [&output.stdout, &output.stderr]
            .iter()
            .flat_map(|bytes| {
                String::from_utf8_lossy(bytes)
                    .lines()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect();
        lines.sort();
        lines.join("\n")
    };
    // The newest run-migrations container that ran this revision.
    let names = docker(&[
        "ps",
        "-a",
        "--filter",
        "label=colony-sim",
        "--format",
        "{{.CreatedAt}}\t{{.Names}}",
    ]);
    let mut containers: Vec<&str> = names
        .lines()
        .filter(|l| l.ends_with("-run-migrations"))
        .collect();
    containers.sort();
    for line in containers.iter().rev() {
        let Some(name) = line.rsplit('\t').next() else {
            continue;
        };
        let logs = docker(&["logs", "--timestamps", name]);
        let lines: Vec<&str> = logs.lines().collect();
        // Of two replicas, one runs the revision; the other finds the head.
        let Some(start) = lines
            .iter()
            .position(|l| l.contains(&format!("-> {REVISION}")))
        else {
            continue;
        };
        let at = |line: &str| humantime::parse_rfc3339_weak(line.split_whitespace().next()?).ok();
        let (Some(from), Some(to)) = (at(lines[start]), lines.get(start + 1).and_then(|l| at(l)))
        else {
            continue;
        };
        return Some(to.duration_since(from).ok()?.as_secs_f64());
    }
    None
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    for rows in [10_000u64, 1_000_000] {
        let (mut added, mut rehearsed, mut real, mut locks) = (vec![], vec![], vec![], vec![]);
        for round in 1..=ROUNDS {
            let with = stack_with_rows(rows, round);
            let without = stack_with_rows(rows, round);
            let (summary, took) = deploy(&with, &[]);
            let summary = summary.expect("the rehearsed deploy failed");
            let real_seconds = real_revision_seconds();
            let (_, took_without) = deploy(&without, &["--no-rehearsal"]);
            let rehearsal = &summary["rehearsal"];
            let revision = rehearsal["upgrade"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["to"] == REVISION)
                .and_then(|r| r["took"].as_f64())
                .unwrap_or(f64::NAN);
            let lock = rehearsal["locks"][0]["held"].as_f64().unwrap_or(0.0);
            println!(
                "{rows} rows, round {round}: deploy {:.1} s rehearsed vs {:.1} s not; rehearsal {:.1} s; \
                 {REVISION} {revision:.2} s rehearsed vs {} in the init container; longest lock {} {lock:.2} s",
                took.as_secs_f64(),
                took_without.as_secs_f64(),
                rehearsal["took"].as_f64().unwrap_or(f64::NAN),
                real_seconds.map_or("?".into(), |s| format!("{s:.2} s")),
                rehearsal["locks"][0]["table"].as_str().unwrap_or("-"),
            );
            added.push(took.as_secs_f64() - took_without.as_secs_f64());
            rehearsed.push(revision);
            if let Some(real_seconds) = real_seconds {
                real.push(real_seconds);
            }
            locks.push(lock);
        }
        let (added, rehearsed, locks) = (median(added), median(rehearsed), median(locks));
        print!("{rows} rows, medians of {ROUNDS}: the rehearsal adds {added:.1} s to a deploy; ");
        if real.is_empty() {
            println!("the real revision's time could not be read");
        } else {
            let real = median(real);
            let off = (rehearsed - real).abs() / real;
            println!(
                "{REVISION} {rehearsed:.2} s rehearsed vs {real:.2} s for real ({:.0} % apart; goal <= 25 %: {}); \
                 longest ACCESS EXCLUSIVE lock {locks:.2} s",
                off * 100.0,
                if off <= 0.25 { "met" } else { "MISSED" }
            );
        }
    }
}
