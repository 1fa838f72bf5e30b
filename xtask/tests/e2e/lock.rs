//! One deploy or rollback at a time: the environment's lock (a Lease in the
//! simulated cluster, kept as the API server keeps it), held by the first,
//! refused or waited for by the second, stale after a holder killed with
//! -9, released on Ctrl-C.

use std::time::{Duration, Instant};

use crate::common::assert_contains;
use crate::common::background::{start, start_deploy, Started};
use crate::common::stack::Stack;

/// A stack deployed once, with a new commit to deploy whose pods take
/// `ready_after` to become ready (so a deploy stays in its rollout).
fn deployed_with_slow_pods(ready_after: Duration, commit: &str) -> Stack {
    let stack = Stack::new(None);
    let first = stack.xtask(&["deploy", "colony-dev", "--yes"]);
    assert_eq!(first.code, 0, "{}", first.all());
    new_commit(&stack, commit);
    stack
        .sim
        .faults(|f| f.readiness_delay_ms = ready_after.as_millis() as u64);
    stack
}

/// deploy.toml's `lock_stale_after` for the environment.
fn stale_after(stack: &Stack, bound: &str) {
    let config = std::fs::read_to_string(stack.repo.config()).unwrap();
    std::fs::write(
        stack.repo.config(),
        config.replace(
            "backup_dir = \"~/backups\"",
            &format!("backup_dir = \"~/backups\"\nlock_stale_after = \"{bound}\""),
        ),
    )
    .unwrap();
}

/// Frontend content no run has built (the fixture's commits reproduce).
fn new_commit(stack: &Stack, what: &str) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::fs::write(
        stack.repo.root().join("frontend/index.html"),
        format!("<!-- {what} {nanos} -->\n"),
    )
    .unwrap();
    stack.repo.git(&["commit", "-qam", what]);
}

/// Waits until the first deploy is inside Helm (it holds the lock).
fn in_helm(stack: &Stack, started: &Started, before: usize) {
    started.wait_for(|| stack.helm_upgrades() > before, "helm upgrade");
}

/// Waits until the lock shows the holder at `step` (published with its
/// next renewal, within a second or so).
fn lock_at_step(stack: &Stack, started: &Started, step: &str) {
    started.wait_for(
        || {
            let run = stack.xtask(&["lock", "--json"]);
            serde_json::from_str::<serde_json::Value>(&run.stdout)
                .is_ok_and(|json| json["holder"]["step"] == step)
        },
        step,
    );
}

#[test]
fn a_second_deploy_or_a_rollback_refuses_while_one_runs_and_waits_with_wait_for_lock() {
    let stack = deployed_with_slow_pods(Duration::from_secs(10), "first");
    let upgrades = stack.helm_upgrades();
    let first = start_deploy(&stack);
    in_helm(&stack, &first, upgrades);
    lock_at_step(&stack, &first, "helm-upgrade");

    let second = stack.xtask(&["deploy", "colony-dev", "--yes", "--force"]);
    assert_eq!(second.code, 2, "{}", second.all());
    assert_contains(&second.stderr, "another command is changing colony-dev");
    assert_contains(&second.stderr, "`deploy colony-dev` by ");
    assert_contains(&second.stderr, "at step helm-upgrade");
    assert_contains(&second.stderr, "nothing was changed");
    assert!(
        !second.stderr.contains("helm rollback"),
        "{}",
        second.stderr
    );
    let rollback = stack.xtask(&["rollback", "--to", "0001_baseline", "--yes"]);
    assert_eq!(rollback.code, 2, "{}", rollback.all());
    assert_contains(&rollback.stderr, "`deploy colony-dev` by ");
    assert_eq!(stack.helm_upgrades(), upgrades + 1, "a second Helm ran");

    // Waiting: it runs once the first is done, on what the first left.
    let waiting = start(
        &stack,
        &["deploy", "colony-dev", "--yes", "--wait-for-lock", "2m"],
    );
    waiting.wait_for(
        || waiting.stderr().contains("waiting (--wait-for-lock)"),
        "the wait",
    );
    let (code, stderr) = first.exit_code();
    assert_eq!(code, 0, "{stderr}");
    let (code, stderr) = waiting.exit_code();
    assert_eq!(code, 0, "{stderr}");
    assert_contains(&stderr, "nothing to deploy");
    assert_eq!(stack.helm_upgrades(), upgrades + 1);
    let lock = stack.xtask(&["lock"]);
    assert_eq!(lock.code, 0, "{}", lock.all());
    assert_contains(&lock.stdout, "colony-dev: free");
}

#[test]
fn a_deploy_killed_with_sigkill_leaves_a_lock_that_goes_stale_and_can_be_broken() {
    let stack = deployed_with_slow_pods(Duration::from_secs(30), "killed");
    stale_after(&stack, "3s");
    let upgrades = stack.helm_upgrades();
    let killed = start_deploy(&stack);
    in_helm(&stack, &killed, upgrades);
    killed.signal(9, false);
    let (code, _) = killed.exit_code();
    assert_eq!(code, -1, "killed by a signal");

    let held = stack.xtask(&["lock", "--json"]);
    assert_eq!(held.code, 3, "{}", held.all());
    let json: serde_json::Value = serde_json::from_str(&held.stdout).unwrap();
    assert_eq!(json["state"], "held");
    assert_eq!(json["holder"]["command"], "deploy colony-dev");
    assert_eq!(json["stale_after_seconds"], 3);
    std::thread::sleep(Duration::from_secs(4));
    let stale = stack.xtask(&["lock"]);
    assert_eq!(stale.code, 4, "{}", stale.all());
    assert_contains(&stale.stdout, "STALE: not renewed for");
    // Without a terminal, breaking it needs --yes.
    let asked = stack.xtask(&["lock", "--break"]);
    assert_eq!(asked.code, 2, "{}", asked.all());
    let broken = stack.xtask(&["lock", "--break", "--yes"]);
    assert_eq!(broken.code, 0, "{}", broken.all());
    assert_contains(
        &broken.stdout,
        "colony-dev: lock broken (was `deploy colony-dev` by ",
    );
    assert_eq!(stack.xtask(&["lock"]).code, 0);
}

#[test]
fn a_stale_lock_is_taken_over_and_ctrl_c_releases_the_lock() {
    let stack = deployed_with_slow_pods(Duration::from_secs(30), "interrupted");
    stale_after(&stack, "2s");
    // A holder that vanished: its lock is taken over once stale.
    let upgrades = stack.helm_upgrades();
    let killed = start_deploy(&stack);
    killed.wait_for(|| killed.stderr().contains("deploy: Build"), "the images");
    killed.signal(9, false);
    let _ = killed.exit_code();
    std::thread::sleep(Duration::from_secs(3));
    stack.sim.faults(|f| f.readiness_delay_ms = 30_000);
    let interrupted = start_deploy(&stack);
    interrupted.wait_for(
        || interrupted.stderr().contains("taking over a stale lock"),
        "the takeover",
    );
    in_helm(&stack, &interrupted, upgrades);
    // Renewed meanwhile (every second for a 2 s bound): still held.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(stack.xtask(&["lock"]).code, 3);
    interrupted.signal(2, true);
    let (code, stderr) = interrupted.exit_code();
    assert_eq!(code, 130, "{stderr}");
    let started = Instant::now();
    let lock = stack.xtask(&["lock"]);
    assert_eq!(lock.code, 0, "{}", lock.all());
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// deploy.toml's `hook` runs after every deploy and rollback with what
/// happened; its failure does not fail a deploy that succeeded.
#[test]
fn the_hook_hears_of_every_deploy_and_its_failure_fails_nothing() {
    let stack = Stack::new(None);
    let script = stack.repo.root().join("record-hook.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nn=$(ls hook-*.log 2>/dev/null | wc -l)\nenv | grep '^COLONY_EVENT_' | sort > hook-$n.log\nexit \"${HOOK_EXIT:-0}\"\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x", script.to_str().unwrap()])
        .status()
        .unwrap();
    let config = std::fs::read_to_string(stack.repo.config()).unwrap();
    std::fs::write(
        stack.repo.config(),
        config.replace(
            "backup_dir = \"~/backups\"",
            "backup_dir = \"~/backups\"\nhook = \"./record-hook.sh\"",
        ),
    )
    .unwrap();
    let read = |n: usize| {
        std::fs::read_to_string(stack.repo.root().join(format!("hook-{n}.log"))).unwrap_or_default()
    };

    let first = stack.xtask(&["deploy", "colony-dev", "--yes"]);
    assert_eq!(first.code, 0, "{}", first.all());
    let heard = read(0);
    for line in [
        "COLONY_EVENT_COMMAND=deploy",
        "COLONY_EVENT_ENVIRONMENT=colony-dev",
        "COLONY_EVENT_OUTCOME=succeeded",
        "COLONY_EVENT_HELM_REVISION=1",
        "COLONY_EVENT_ALEMBIC_TO=0002_activity_and_comments",
        "COLONY_EVENT_BACKEND_IMAGE=",
    ] {
        assert_contains(&heard, line);
    }
    assert!(heard.contains("@sha256:"), "{heard}");
    assert!(heard.contains("COLONY_EVENT_GIT_SHA="), "{heard}");

    // A refusal is heard too; a dry run is not.
    let dry = stack.xtask(&["deploy", "colony-dev", "--dry-run"]);
    assert_eq!(dry.code, 0);
    let refused = stack.xtask_with(
        &["deploy", "colony-dev", "--yes"],
        &[("COLONY_KUBE_CONTEXT", "elsewhere")],
    );
    assert_eq!(refused.code, 2, "{}", refused.all());
    let heard = read(1);
    assert_contains(&heard, "COLONY_EVENT_OUTCOME=refused");
    assert!(read(2).is_empty(), "the dry run ran the hook");

    // A failing hook is reported; the deploy's own status stands.
    let noop = stack.xtask_with(&["deploy", "colony-dev", "--yes"], &[("HOOK_EXIT", "3")]);
    assert_eq!(noop.code, 0, "{}", noop.all());
    assert_contains(&noop.stderr, "hook: `./record-hook.sh` exited 3");
    assert_contains(&read(2), "COLONY_EVENT_OUTCOME=nothing to deploy");
}

/// A deploy while a rollback's downgrade runs: refused before any change,
/// naming the rollback and its step; the downgrade finishes undisturbed.
#[test]
fn a_deploy_during_a_rollback_s_downgrade_is_refused() {
    let stack = Stack::new(None);
    // A revision at 0002 for the app to return to.
    let at_0002 = stack.xtask(&["deploy", "colony-dev", "--yes"]);
    assert_eq!(at_0002.code, 0, "{}", at_0002.all());
    stack.commit_revision_both_ways(
        "0003_slow_down",
        "0002_activity_and_comments",
        "Slow to undo",
        "    op.execute(\"SELECT 1\")",
        "    op.execute(\"SELECT pg_sleep(8)\")",
    );
    let first = stack.xtask(&["deploy", "colony-dev", "--yes", "--no-rehearsal"]);
    assert_eq!(first.code, 0, "{}", first.all());
    let rollback = start(
        &stack,
        &["rollback", "--to", "0002_activity_and_comments", "--yes"],
    );
    lock_at_step(&stack, &rollback, "downgrade");
    let deploy = stack.xtask(&["deploy", "colony-dev", "--yes", "--force"]);
    assert_eq!(deploy.code, 2, "{}", deploy.all());
    assert_contains(
        &deploy.stderr,
        "`rollback colony-dev --to 0002_activity_and_comments` by ",
    );
    assert_contains(&deploy.stderr, "at step downgrade");
    let (code, stderr) = rollback.exit_code();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stack.psql("SELECT version_num FROM alembic_version"),
        "0002_activity_and_comments"
    );
}
