//! `cargo bench -p xtask --bench images`: the image pipeline on the test bed.
//! Prints figures; speed goals live here, never in tests.
//!
//! - two images with 200 MiB contexts and BuildKit Dockerfiles (a `RUN`
//!   with a cache mount, then the `COPY`): `xtask push` vs `docker build`
//!   with BuildKit + `docker push` by the CLI one after the other (same
//!   daemon, same run); goal <= 0.55x. Three rounds, interleaved, each with
//!   content that no run has built or pushed before (seeded from the
//!   clock); medians. The daemon's storage driver is printed.
//!   `xtask push` runs with the default `images.push = "auto"` (the daemon
//!   pushes; this tool takes over an image that is mostly new), and, as
//!   contenders of their own in each round, with `"docker"` (the daemon
//!   to the end) and `"fast"` (this tool from the start).
//! - no-op rerun of `xtask push`; goal < 2 s
//! - peak RSS of `xtask build` on a 1 GiB context; goal <= 16 MiB
//!
//! `IMAGES_BENCH=speed` runs the first two, `IMAGES_BENCH=memory` the last.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{ColonyRepo, TestBed};

const MIB: u64 = 1024 * 1024;

/// Incompressible bytes, different for each seed (so no layer is shared
/// between the runs being compared).
fn write_random(path: &Path, bytes: u64, seed: u64) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut chunk = vec![0u8; MIB as usize];
    for _ in 0..bytes / MIB {
        for word in chunk.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&chunk).unwrap();
    }
}

fn repo_with_data(
    prefix: &str,
    backend_mib: u64,
    frontend_mib: u64,
    seed: u64,
    push: Option<&str>,
) -> ColonyRepo {
    let repo = ColonyRepo::create();
    repo.use_repositories(prefix);
    write_random(
        &repo.root().join("backend/app/data.bin"),
        backend_mib * MIB,
        seed,
    );
    write_random(
        &repo.root().join("frontend/data.bin"),
        frontend_mib * MIB,
        seed + 1,
    );
    // BuildKit Dockerfiles with a RUN step on the bed's busybox base; the
    // bed's daemon has no bridge network, so RUN uses the host's.
    let base = &TestBed::get().shell_image;
    for (component, copy) in [
        ("backend", "COPY app /app/app"),
        ("frontend", "COPY . /srv/"),
    ] {
        std::fs::write(
            repo.root().join(component).join("Dockerfile"),
            format!(
                "FROM {base}\nRUN --mount=type=cache,target=/root/.cache/bench \\\n    \
                 touch /root/.cache/bench/seen && echo {seed} > /built.txt\n{copy}\n"
            ),
        )
        .unwrap();
    }
    repo.set_backend_network(Some("host"));
    let header = "[environments.colony-dev.images.frontend]\n";
    let config = std::fs::read_to_string(repo.config()).unwrap();
    std::fs::write(
        repo.config(),
        config.replace(header, &format!("{header}network = \"host\"\n"))
            + &push
                .map(|how| format!("\n[environments.colony-dev.images]\npush = \"{how}\"\n"))
                .unwrap_or_default(),
    )
    .unwrap();
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "data"]);
    repo
}

// The child is reaped by wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn xtask(repo: &ColonyRepo, command: &str) -> (Duration, u64) {
    let bed = TestBed::get();
    // Built (once) before the clock starts.
    let migrations_binary = testkit::run_migrations_binary();
    // Its stderr is kept to say why, should it fail (a full disk, say).
    let stderr = tempfile::tempfile().unwrap();
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([command, "--json"])
        .current_dir(repo.root())
        .env("DOCKER_HOST", &bed.docker_host)
        .env("COLONY_CONFIG", "deploy.toml")
        .env("COLONY_REGISTRY", &bed.registry)
        .env("COLONY_RUN_MIGRATIONS_BIN", migrations_binary)
        .stdout(Stdio::null())
        .stderr(stderr.try_clone().unwrap())
        .spawn()
        .unwrap();
    let anonymous = sample_anonymous_rss(child.id());
    let (status, peak_rss) = wait_with_rusage(child.id() as i32);
    assert_eq!(status, 0, "xtask {command} failed: {}", tail_of(stderr));
    let peak_anonymous = anonymous.join().unwrap();
    LAST_ANONYMOUS_PEAK.store(peak_anonymous, std::sync::atomic::Ordering::Relaxed);
    (started.elapsed(), peak_rss)
}

/// The last lines of a run's stderr, kept in `file`.
fn tail_of(mut file: std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut text = String::new();
    let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The last `xtask` run's peak of anonymous memory (heap, stacks), sampled.
static LAST_ANONYMOUS_PEAK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Samples the process's anonymous RSS (`RssAnon`: what it allocated, as
/// opposed to the pages of its own binary, which ru_maxrss counts too)
/// every 10 ms until it is gone; the peak seen, in bytes.
fn sample_anonymous_rss(pid: u32) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            else {
                break; // a zombie: it has ended
            };
            peak = peak.max(kib * 1024);
            std::thread::sleep(Duration::from_millis(10));
        }
        peak
    })
}

/// Waits for `pid`; returns its exit status and peak RSS in bytes.
fn wait_with_rusage(pid: i32) -> (i32, u64) {
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4");
    (libc::WEXITSTATUS(status), usage.ru_maxrss as u64 * 1024)
}

fn docker_cli(repo: &ColonyRepo, prefix: &str) -> Duration {
    let bed = TestBed::get();
    let tag = repo.git(&["rev-parse", "--short=12", "HEAD"]);
    let started = Instant::now();
    for component in ["backend", "frontend"] {
        let image = format!("{}/{prefix}-{component}:{tag}", bed.registry);
        for args in [
            vec!["build", "-q", "--network", "host", "-t", &image, component],
            vec!["push", "-q", &image],
        ] {
            // Debian's CLI builds with BuildKit without buildx (the one in
            // /usr/local/bin would need it), as `docker build` does today.
            let output = Command::new("/usr/bin/docker")
                .args(&args)
                .current_dir(repo.root())
                .env("DOCKER_HOST", &bed.docker_host)
                .env("DOCKER_BUILDKIT", "1")
                .stdin(Stdio::null())
                .output()
                .expect("the docker CLI runs");
            assert!(
                output.status.success(),
                "docker {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    started.elapsed()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// A seed no earlier run used.
fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

const ROUNDS: usize = 3;

/// `IMAGES_BENCH=speed` or `=memory` runs one part; both by default.
fn main() {
    let part = std::env::var("IMAGES_BENCH").unwrap_or_default();
    let run = std::process::id();
    if part != "memory" {
        speed(run);
    }
    if part != "speed" {
        memory(run);
    }
}

/// The contenders' rounds, then the no-op rerun.
fn speed(run: u32) {
    let bed = TestBed::get();
    let engine = testkit::docker_engine(&bed.docker_host);
    println!("test bed: {} ({engine})", bed.docker_host);

    // Four contenders a round, each on content of its own, in an order
    // that rotates: xtask with the default push ("auto"), with the
    // daemon's push to the end ("docker"), with this tool's ("fast"), and
    // the docker CLI.
    const WHO: [&str; 4] = ["auto", "docker", "fast", "cli"];
    let mut took: Vec<Vec<f64>> = vec![Vec::new(); WHO.len()];
    let mut auto_peaks = Vec::new();
    let mut last_repo = None;
    for round in 1..=ROUNDS {
        let prefix = |who: &str| format!("bench{run}-{round}-{who}");
        let repos: Vec<ColonyRepo> = WHO
            .iter()
            .map(|&who| {
                let push = (who != "cli").then_some(who);
                repo_with_data(&prefix(who), 200, 200, fresh_seed(), push)
            })
            .collect();
        for turn in 0..WHO.len() {
            let who = (turn + round) % WHO.len();
            let seconds = if WHO[who] == "cli" {
                docker_cli(&repos[who], &prefix("cli")).as_secs_f64()
            } else {
                let (time, peak) = xtask(&repos[who], "push");
                if WHO[who] == "auto" {
                    auto_peaks.push(peak as f64);
                }
                time.as_secs_f64()
            };
            took[who].push(seconds);
        }
        println!(
            "round {round}/{ROUNDS}: xtask push {:.1} s (default, \"auto\"), {:.1} s (\"docker\"), {:.1} s (\"fast\"); docker build + push (CLI, sequential) {:.1} s",
            took[0][round - 1],
            took[1][round - 1],
            took[2][round - 1],
            took[3][round - 1]
        );
        last_repo = repos.into_iter().next();
    }
    let medians: Vec<f64> = took.into_iter().map(median).collect();
    let cli = medians[3];
    let verdict = |ratio: f64| if ratio <= 0.55 { "met" } else { "MISSED" };
    println!("medians of {ROUNDS}: 2 x 200 MiB contexts, BuildKit: docker CLI {cli:.1} s");
    for (who, median) in WHO.iter().zip(&medians).take(3) {
        println!(
            "  xtask push, images.push = \"{who}\"{}: {median:.1} s, ratio {:.2}x (goal <= 0.55x) {}",
            if *who == "auto" { " (the default)" } else { "" },
            median / cli,
            verdict(median / cli)
        );
    }
    println!(
        "  peak RSS of the default push {:.1} MiB",
        median(auto_peaks) / MIB as f64
    );

    let (noop, _) = xtask(last_repo.as_ref().expect("a round ran"), "push");
    println!(
        "no-op rerun: xtask push {:.2} s (goal < 2 s) {}",
        noop.as_secs_f64(),
        if noop < Duration::from_secs(2) {
            "met"
        } else {
            "MISSED"
        }
    );
}

/// Peak RSS of a build of a 1 GiB context.
fn memory(run: u32) {
    let (mut peaks, mut anonymous_peaks) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let big = repo_with_data(
            &format!("bench{run}-big{round}"),
            1,
            1024,
            fresh_seed(),
            None,
        );
        let (took, peak) = xtask(&big, "build");
        let anonymous = LAST_ANONYMOUS_PEAK.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "1 GiB context, round {round}: xtask build {:.1} s, peak RSS {:.1} MiB, of which anonymous (sampled) {:.1} MiB",
            took.as_secs_f64(),
            peak as f64 / MIB as f64,
            anonymous as f64 / MIB as f64
        );
        peaks.push(peak as f64);
        anonymous_peaks.push(anonymous as f64);
    }
    let peak = median(peaks);
    println!(
        "1 GiB context: median peak RSS {:.1} MiB, anonymous {:.1} MiB; the rest is the binary's own pages (goal <= 16 MiB, on the whole RSS) {}",
        peak / MIB as f64,
        median(anonymous_peaks) / MIB as f64,
        if peak <= 16.0 * MIB as f64 {
            "met"
        } else {
            "MISSED"
        }
    );
}
