//! `cargo bench -p xtask --bench deploy`: a deploy on the test bed and the
//! simulated cluster, against the runbook done step by step (docker CLI build
//! and push of each image, the backup script, `helm upgrade --install`, the
//! two kubectl checks), same machine, same run. Prints figures.
//!
//! Also a deploy as a person runs it: asked on a terminal, answered after
//! 5 s of reading, timed from the answer.
//!
//! Goals: deploy <= 0.6x the runbook; a no-op redeploy <= 0.1x the deploy,
//! with no new Helm revision; the facts (start to the confirmation prompt)
//! <= 1 s. Three rounds, interleaved, each with content never built before;
//! the medians are reported.
//!
//! On the bed's second engine (Docker 26, containerd image store, where the
//! build pushes): `DOCKER_HOST=$COLONY_TEST_CONTAINERD_DOCKER_HOST cargo
//! bench -p xtask --bench deploy`; the runbook's CLI then drives it too.

#[path = "../tests/e2e/common/mod.rs"]
#[allow(dead_code)] // the bench uses a part of the tests' helpers
mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::stack::{Stack, CONTEXT, NAMESPACE};
use testkit::TestBed;

/// New content in both contexts (so both images must be built and pushed),
/// committed: 50 MiB of incompressible bytes each, never seen before.
fn change(stack: &Stack) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut state = nanos | 1;
    for path in ["backend/app/data.bin", "frontend/data.bin"] {
        let mut file =
            std::io::BufWriter::new(std::fs::File::create(stack.repo.root().join(path)).unwrap());
        for _ in 0..(50 * 1024 * 1024 / 8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            file.write_all(&state.to_le_bytes()).unwrap();
        }
    }
    stack.repo.git(&["add", "-A"]);
    stack
        .repo
        .git(&["commit", "-q", "-m", &format!("change {nanos}")]);
}

fn timed(what: &str, stack: &Stack, argv: &[&str]) -> Duration {
    let started = Instant::now();
    let output = Command::new(argv[0])
        .args(&argv[1..])
        .current_dir(stack.repo.root())
        .envs(stack.env())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    started.elapsed()
}

/// A deploy as measured: wall time, the facts phase (start to the
/// confirmation prompt), and its decision.
struct Measured {
    took: Duration,
    facts: Duration,
    decision: String,
}

/// Runs a deploy; prints its own step timings.
fn xtask_deploy(stack: &Stack) -> Measured {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["deploy", "colony-dev", "--yes", "--json"])
        .current_dir(stack.repo.root())
        .envs(stack.env())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        output.status.success(),
        "deploy failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    println!("  deploy {:.2} s: {}", took.as_secs_f64(), steps(&summary));
    Measured {
        took,
        facts: Duration::from_secs_f64(summary["facts_seconds"].as_f64().unwrap()),
        decision: summary["decision"].as_str().unwrap().to_string(),
    }
}

/// How long the user of `deploy_answered` reads the plan before "y".
const READING: Duration = Duration::from_secs(5);

/// A deploy as a person runs it: on a terminal (a pty, through `script`),
/// the question answered "y" `READING` after it was asked. Measured from
/// the answer to the end: what the person waits for once they decided.
fn deploy_answered(stack: &Stack) -> Duration {
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    let mut child = stack
        .on_a_pty("deploy colony-dev --json")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let screen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let (screen, mut stdout) = (screen.clone(), child.stdout.take().unwrap());
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buffer) {
                let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
                screen.lock().unwrap().push_str(&text);
            }
        })
    };
    let asked = Instant::now();
    while !screen.lock().unwrap().contains("[y/N]") {
        assert!(asked.elapsed() < Duration::from_secs(120), "never asked");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(READING);
    let mut stdin = child.stdin.take().unwrap();
    let answered = Instant::now();
    stdin.write_all(b"y\n").unwrap();
    let status = child.wait().unwrap();
    let took = answered.elapsed();
    drop(stdin);
    reader.join().unwrap();
    let screen = screen.lock().unwrap().replace("\r\n", "\n");
    assert!(status.success(), "the answered deploy failed: {screen}");
    // The summary is the last thing on the screen, pretty-printed.
    let key = screen.find("\"schema_version\"").expect("a --json summary");
    let json = &screen[screen[..key].rfind('{').unwrap()..=screen.rfind('}').unwrap()];
    let summary: serde_json::Value = serde_json::from_str(json).unwrap();
    println!(
        "  deploy answered after {} s of reading: {:.2} s from the answer: {}",
        READING.as_secs(),
        took.as_secs_f64(),
        steps(&summary)
    );
    took
}

/// A deploy summary's steps and their seconds, on one line.
fn steps(summary: &serde_json::Value) -> String {
    let steps: Vec<String> = summary["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {:.2}",
                s["name"].as_str().unwrap(),
                s["seconds"].as_f64().unwrap()
            )
        })
        .collect();
    steps.join(", ")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// The runbook, one command after another, as DESIGN.md §1 describes it.
fn runbook(stack: &Stack) -> Duration {
    let bed = TestBed::get();
    let tag = stack.repo.git(&["rev-parse", "--short=12", "HEAD"]);
    // The runbook's backend image carries its migration runner itself.
    std::fs::copy(
        testkit::run_migrations_binary(),
        stack.repo.root().join("backend/run-migrations"),
    )
    .unwrap();
    let dockerfile = stack.repo.root().join("backend/Dockerfile");
    let mut text = std::fs::read_to_string(&dockerfile).unwrap();
    if !text.contains("COPY run-migrations") {
        text.push_str("COPY run-migrations /usr/local/bin/run-migrations\n");
        std::fs::write(&dockerfile, text).unwrap();
    }
    let image = |c: &str| format!("{}/runbook-{c}:{tag}", bed.registry);
    let (backend, frontend) = (image("backend"), image("frontend"));
    let values = stack.values_file().display().to_string();
    let backups = stack.backup_dir().display().to_string();
    let started = Instant::now();
    // `docker build` as the runbook's CLI runs it today: BuildKit (Debian's
    // CLI has it without buildx), the fixture's backend needing no network.
    let mut steps: Vec<String> = Vec::new();
    let mut step = |what: &str, since: &mut Instant| {
        steps.push(format!("{what} {:.2}", since.elapsed().as_secs_f64()));
        *since = Instant::now();
    };
    let mut since = started;
    let docker = |args: &[&str]| {
        let output = Command::new("/usr/bin/docker")
            .args(args)
            .current_dir(stack.repo.root())
            .env("DOCKER_HOST", &bed.docker_host)
            .env("DOCKER_BUILDKIT", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    docker(&[
        "build",
        "-q",
        "--network",
        "none",
        "-t",
        &backend,
        "backend",
    ]);
    step("build backend", &mut since);
    docker(&["push", "-q", &backend]);
    step("push backend", &mut since);
    docker(&["build", "-q", "-t", &frontend, "frontend"]);
    step("build frontend", &mut since);
    docker(&["push", "-q", &frontend]);
    step("push frontend", &mut since);
    timed(
        "backup",
        stack,
        &["scripts/backup-db.sh", NAMESPACE, &backups],
    );
    let (backend_repo, frontend_repo) = (
        format!("{}/runbook-backend", bed.registry),
        format!("{}/runbook-frontend", bed.registry),
    );
    timed(
        "helm",
        stack,
        &[
            "helm",
            "upgrade",
            "--install",
            "colony",
            "./helm/colony",
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--kube-context",
            CONTEXT,
            "-f",
            &values,
            "--set-string",
            &format!("backend.image.repository={backend_repo}"),
            "--set-string",
            &format!("backend.image.tag={tag}"),
            "--set-string",
            &format!("frontend.image.repository={frontend_repo}"),
            "--set-string",
            &format!("frontend.image.tag={tag}"),
            "--wait=watcher",
            "--timeout",
            "10m",
        ],
    );
    step("backup + helm", &mut since);
    timed(
        "alembic current",
        stack,
        &[
            "kubectl",
            "--namespace",
            NAMESPACE,
            "exec",
            "deploy/colony-backend",
            "--",
            "alembic",
            "current",
        ],
    );
    timed(
        "logs",
        stack,
        &[
            "kubectl",
            "--namespace",
            NAMESPACE,
            "logs",
            "deploy/colony-backend",
            "-c",
            "run-migrations",
        ],
    );
    step("alembic current + logs", &mut since);
    println!("  runbook steps: {}", steps.join(", "));
    started.elapsed()
}

fn main() {
    const ROUNDS: usize = 3;
    let bed = TestBed::get();
    let engine = testkit::docker_engine(&bed.docker_host);
    println!("test bed: {} ({engine})", bed.docker_host);
    let ours = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    let theirs = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    // Both start from an installed release, so the backup has a database.
    change(&ours);
    xtask_deploy(&ours);
    change(&theirs);
    xtask_deploy(&theirs);

    let (mut deploys, mut manuals, mut noops, mut facts) = (vec![], vec![], vec![], vec![]);
    let mut answered = vec![];
    let mut new_revisions_on_noop = 0;
    for round in 1..=ROUNDS {
        println!("round {round}/{ROUNDS}");
        change(&ours);
        let deploy = xtask_deploy(&ours);
        assert_eq!(deploy.decision, "deploy");
        change(&theirs);
        let manual = runbook(&theirs);
        println!("  runbook {:.2} s", manual.as_secs_f64());
        change(&ours);
        answered.push(deploy_answered(&ours).as_secs_f64());
        let before = ours.helm_revisions();
        let noop = xtask_deploy(&ours);
        assert_eq!(noop.decision, "nothing to deploy");
        new_revisions_on_noop += ours.helm_revisions() - before;
        deploys.push(deploy.took.as_secs_f64());
        manuals.push(manual.as_secs_f64());
        noops.push(noop.took.as_secs_f64());
        facts.push(deploy.facts.as_secs_f64());
        facts.push(noop.facts.as_secs_f64());
    }
    let (deploy, manual, noop, facts) = (
        median(deploys),
        median(manuals),
        median(noops),
        median(facts),
    );
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    let ratio = deploy / manual;
    println!("\nmedians of {ROUNDS} interleaved rounds:");
    println!(
        "deploy {deploy:.1} s vs runbook step by step {manual:.1} s: ratio {ratio:.2}x (goal <= 0.6x) {}",
        verdict(ratio <= 0.6)
    );
    let answered = median(answered);
    println!(
        "deploy on a terminal, answered after {} s of reading: {answered:.1} s from the answer: \
         ratio {:.2}x the runbook (the images built while the plan was read)",
        READING.as_secs(),
        answered / manual
    );
    let noop_ratio = noop / deploy;
    println!(
        "no-op redeploy {noop:.2} s: {noop_ratio:.2}x of the deploy (goal <= 0.1x) {}; new Helm revisions: {new_revisions_on_noop} (goal 0) {}",
        verdict(noop_ratio <= 0.1),
        verdict(new_revisions_on_noop == 0)
    );
    println!(
        "facts (start to the confirmation prompt) {facts:.2} s (goal <= 1 s) {}",
        verdict(facts <= 1.0)
    );
}
