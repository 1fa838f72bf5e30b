//! Every command's report, text and `--json`, against reviewed snapshots:
//! one life of an environment (push, first install that stamps, the SQL
//! preview of a new migration, its deploy, verify, status, rollback, doctor).
//! What varies between runs (timings, digests, commits, ports, paths, pod
//! names, dates, sizes) is redacted; the shape and the words are reviewed.

use crate::common::stack::Stack;
use crate::common::{assert_snapshot, Run};

/// Runs `args`, which must succeed, and snapshots its stdout as `name`.
fn snapshot(stack: &Stack, name: &str, args: &[&str]) -> Run {
    let run = stack.xtask(args);
    assert_eq!(run.code, 0, "{args:?}\n{}", run.all());
    if args.contains(&"--json") {
        let parsed: serde_json::Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}):\n{}", run.stdout));
        assert_eq!(
            parsed["schema_version"], 1,
            "{args:?}: schema_version first"
        );
    }
    assert_snapshot(name, &redact(stack, &run.stdout));
    run
}

#[test]
fn every_command_s_report_matches_its_reviewed_snapshot() {
    let stack = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    stack.commit_baseline_era();

    snapshot(&stack, "report-push-text", &["push"]);
    snapshot(&stack, "report-push-json", &["push", "--json"]);
    snapshot(&stack, "report-build-json", &["build", "--json"]);
    snapshot(
        &stack,
        "report-deploy-text",
        &["deploy", "colony-dev", "--yes"],
    );
    snapshot(
        &stack,
        "report-deploy-noop-json",
        &["deploy", "colony-dev", "--yes", "--json"],
    );

    // 0002 comes back: its SQL is previewed, then deployed.
    stack.repo.git(&["revert", "--no-edit", "HEAD"]);
    snapshot(
        &stack,
        "report-migrations-text",
        &["migrations", "colony-dev"],
    );
    snapshot(
        &stack,
        "report-migrations-json",
        &["migrations", "colony-dev", "--json"],
    );
    snapshot(
        &stack,
        "report-deploy-json",
        &["deploy", "colony-dev", "--yes", "--json"],
    );
    snapshot(&stack, "report-verify-text", &["verify", "colony-dev"]);
    snapshot(
        &stack,
        "report-verify-json",
        &["verify", "colony-dev", "--json"],
    );
    snapshot(&stack, "report-status-text", &["status", "colony-dev"]);
    snapshot(
        &stack,
        "report-status-json",
        &["status", "colony-dev", "--json"],
    );

    snapshot(
        &stack,
        "report-rollback-text",
        &["rollback", "colony-dev", "--to", "0001_baseline", "--yes"],
    );
    // Forward again; the refusals (a plan with its reasons, the same in
    // every command), then the same rollback as JSON, then nothing to do.
    let forward = stack.xtask(&["deploy", "colony-dev", "--yes"]);
    assert_eq!(forward.code, 0, "{}", forward.all());
    let to_revision_9 = [
        "rollback",
        "colony-dev",
        "--to",
        "0001_baseline",
        "--app-revision",
        "9",
    ];
    snapshot(
        &stack,
        "report-rollback-refused-json",
        &[&to_revision_9[..], &["--dry-run", "--json"]].concat(),
    );
    let closed = format!("127.0.0.1:{}", testkit::TcpForwarder::free_port());
    for (name, command) in [
        (
            "report-deploy-refused-text",
            vec![
                "deploy",
                "colony-dev",
                "--yes",
                "--force",
                "--registry",
                &closed,
            ],
        ),
        (
            "report-rollback-refused-text",
            [&to_revision_9[..], &["--yes"]].concat(),
        ),
    ] {
        let run = stack.xtask(&command);
        assert_eq!(run.code, 2, "{command:?}\n{}", run.all());
        assert_snapshot(name, &redact(&stack, &run.stderr));
    }
    let rollback = [
        "rollback",
        "colony-dev",
        "--to",
        "0001_baseline",
        "--yes",
        "--json",
    ];
    snapshot(&stack, "report-rollback-json", &rollback);
    snapshot(&stack, "report-rollback-nothing-to-do-json", &rollback);

    snapshot(&stack, "report-doctor-text", &["doctor", "colony-dev"]);
    snapshot(
        &stack,
        "report-doctor-json",
        &["doctor", "colony-dev", "--json"],
    );
}

/// The run's variable parts, each replaced by what it stands for.
fn redact(stack: &Stack, text: &str) -> String {
    let bed = testkit::TestBed::get();
    let mut text = text
        .replace(stack.home.path().to_str().unwrap(), "<home>")
        .replace(stack.repo.root().to_str().unwrap(), "<root>")
        .replace(&stack.registry, "<registry>")
        .replace(&bed.docker_host, "<docker host>")
        .replace(
            testkit::run_migrations_binary().to_str().unwrap(),
            "<run-migrations>",
        );
    // Loopback addresses are the same on every bed: kept from the
    // version pattern below.
    text = text.replace("127.0.0.", "127_0_0_");
    for (pattern, replacement) in [
        (r"127_0_0_1:\d+", "<host:port>"),
        (r"sha256:[0-9a-f]{64}", "sha256:<digest>"),
        (r"\b[0-9a-f]{40}\b", "<git sha>"),
        (r"\b[0-9a-f]{12}\b", "<short sha>"),
        // The inputs hash (sha256 of the chart and values files).
        (r"\b[0-9a-f]{64}\b", "<hash>"),
        (r"\d{4}-\d\d-\d\d[T ][0-9:.]+(Z| [+-]\d{4} \w+)?", "<time>"),
        (r"\d{8}T\d{6}Z?", "<time>"),
        (r"-[a-z0-9]{10}-[a-z0-9]{5}\b", "-<rs>-<pod>"),
        (r"\b(colony-(backend|frontend))-[a-z0-9]{10}\b", "$1-<rs>"),
        (r#"colony-dev-[^ "]+\.dump"#, "colony-dev-<time>.dump"),
        // The bed's tools (git, Helm, kubectl, Docker, PostgreSQL).
        (
            r"\(PostgreSQL\) \d+\.\d+ \(Debian [^)]*\)",
            "(PostgreSQL) <version>",
        ),
        (r"API \d+\.\d+", "API <version>"),
        (r#"\bv?\d+\.\d+\.\d+[^\s,;)"]*"#, "<version>"),
        (r"\b\d+(\.\d+)? ?(s|ms)\b", "<t>"),
        (
            r#""(seconds|facts_seconds|took|held)": [0-9.e-]+"#,
            r#""$1": "<t>""#,
        ),
        (r"\b\d+(\.\d+)? ?(B|KiB|MiB|GiB|kB|MB|GB)\b", "<size>"),
        (r#""(size|bytes)": \d+"#, r#""$1": "<size>""#),
        // Helm's times have 1 to 9 digits of nanoseconds, and status sizes
        // its UPDATED column from them: the padding after one varies.
        (r"(<time>|UPDATED) {2,}", "$1 "),
    ] {
        text = regex::Regex::new(pattern)
            .unwrap()
            .replace_all(&text, replacement)
            .into_owned();
    }
    let text = text.replace("127_0_0_", "127.0.0.");
    // The steps' times are right-aligned after their names: a slow run's
    // 100.0 s takes a space more than 10.0 s. The table as a 0.4 s shows it.
    let text = regex::Regex::new(r"(?m)^  (\S+) +<t>")
        .unwrap()
        .replace_all(&text, |c: &regex::Captures| {
            format!("  {:<13}    <t>", &c[1])
        })
        .into_owned();
    // Columns padded for the unredacted width: the padding goes too.
    regex::Regex::new(r"(<[a-z :-]+>) {2,}")
        .unwrap()
        .replace_all(&text, "$1  ")
        .into_owned()
}
