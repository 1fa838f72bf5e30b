//! deploy, rollback and status end to end: the real xtask against the
//! simulated cluster, with the real registry, Docker, PostgreSQL, Alembic,
//! helm and run-migrations behind it.

use crate::common;
use crate::common::assert_contains;
use crate::common::background::{start, start_deploy};

use std::time::{Duration, Instant};

use crate::common::stack::{
    assert_in_order, assert_no_mutating_call, is_mutating, Stack, NAMESPACE,
};

const DETECTION: &str = "Detected pre-Alembic schema; stamping 0001_baseline so the activity-log migration applies on top of the existing tables.";

fn deploy(stack: &Stack) -> common::Run {
    stack.xtask(&["deploy", "colony-dev", "--yes"])
}

#[test]
fn a_fresh_cluster_deploys_verifies_and_redeploys_with_nothing_to_build() {
    let stack = Stack::new(None);
    let first = deploy(&stack);
    assert_eq!(first.code, 0, "{}", first.all());
    assert_contains(&first.stdout, "Deployed colony-dev to homelab/colony-dev: Helm revision 1, Alembic 0002_activity_and_comments (head)");
    assert!(
        first
            .stdout
            .contains("first install: no database pod and no DATABASE_URL, so nothing to back up"),
        "{}",
        first.stdout
    );
    assert_contains(&first.stdout, "4/4 checks passed");

    let upgrade = stack
        .calls()
        .into_iter()
        .find(|c| c.starts_with("helm upgrade --install"))
        .unwrap();
    let values = stack.helm_values(1);
    for component in ["backend", "frontend"] {
        let digest = values[component]["image"]["digest"].as_str().unwrap();
        assert!(digest.starts_with("sha256:"), "{values}");
    }
    assert!(!upgrade.contains("latest"), "{upgrade}");
    assert!(
        upgrade.contains("--wait=watcher"),
        "Helm 4 waits for nothing without it: {upgrade}"
    );
    assert_eq!(
        values["deployRecord"]["alembicHead"], "0002_activity_and_comments",
        "{values}"
    );

    let verify = stack.xtask(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());

    // Nothing changed: no Helm revision, no backup; the release is verified.
    let again = stack.xtask(&["deploy", "colony-dev", "--yes", "--json"]);
    assert_eq!(again.code, 0, "{}", again.all());
    let summary: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(summary["decision"], "nothing to deploy", "{summary}");
    assert_eq!(summary["helm_revision"], 1);
    assert_eq!(summary["verified"], true);
    assert!(summary["backup"].is_null(), "{summary}");
    assert_eq!(Stack::step_names(&again.stdout), ["verify"]);
    assert_eq!((stack.helm_upgrades(), stack.helm_revisions()), (1, 1));
    assert_contains(&again.stderr, "Decision: nothing to deploy");

    // --force deploys anyway: both images are in the registry (not built),
    // the database is backed up before Helm runs, and a revision is made.
    let forced = stack.xtask(&["deploy", "colony-dev", "--yes", "--json", "--force"]);
    assert_eq!(forced.code, 0, "{}", forced.all());
    let summary: serde_json::Value = serde_json::from_str(&forced.stdout).unwrap();
    for image in summary["images"].as_array().unwrap() {
        assert_eq!(image["build"]["status"], "skipped", "{image}");
    }
    let backup = summary["backup"].as_str().expect("a backup on redeploy");
    assert!(std::path::Path::new(backup).is_file());
    assert_eq!(summary["helm_revision"], 2);
    let calls = stack.calls();
    let second_upgrade = calls
        .iter()
        .rposition(|c| c.starts_with("helm upgrade --install"))
        .unwrap();
    let dump = calls
        .iter()
        .rposition(|c| c.contains("-- pg_dump -Fc"))
        .expect("the backup ran");
    assert!(
        dump < second_upgrade,
        "the backup must finish before helm upgrade:\n{}",
        calls.join("\n")
    );
    assert_eq!(stack.helm_values(2)["deployRecord"]["backupFile"], backup);

    let status = stack.xtask(&["status"]);
    assert_eq!(status.code, 0, "{}", status.all());
    assert_contains(&status.stdout, "0002_activity_and_comments (head)");
    assert_contains(&status.stdout, &format!("backup   {backup}"));
}

#[test]
fn a_pre_alembic_cluster_is_stamped_and_keeps_its_rows() {
    let stack = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    let run = deploy(&stack);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_contains(&run.stdout, DETECTION);
    let verify = stack.xtask(&["verify"]);
    assert_contains(&verify.stdout, "0002_activity_and_comments (head)");
    assert_eq!(
        stack.psql("SELECT count(*) || '/' || (SELECT count(*) FROM chores) FROM households"),
        "3/5"
    );
}

#[test]
fn a_failing_migration_stops_the_deploy_long_before_the_helm_timeout() {
    let stack = Stack::new(None);
    assert_eq!(deploy(&stack).code, 0);
    stack.commit_broken_migration();

    // The rehearsal would stop it before Helm (`rehearsal.rs`); this is
    // what the rollout watch does when a migration fails in the cluster.
    let started = Instant::now();
    let run = stack.xtask(&["deploy", "colony-dev", "--yes", "--no-rehearsal"]);
    let took = started.elapsed();
    assert_eq!(run.code, 1, "{}", run.all());
    // helm_timeout is 10m; the deploy must not wait for it.
    assert!(took < Duration::from_secs(90), "took {took:?}");
    assert_contains(&run.stderr, "Init:CrashLoopBackOff");
    assert_contains(&run.stderr, "container run-migrations exited with code 1");
    assert_contains(&run.stderr, "this migration is broken on purpose");
    assert_contains(&run.stderr, "events of colony-backend-");
    assert_eq!(
        stack.psql("SELECT version_num FROM alembic_version"),
        "0002_activity_and_comments"
    );
    // Helm was stopped and marked the release failed, not pending.
    let status = &stack.sim.state().releases[&format!("{NAMESPACE}/colony")]
        .last()
        .unwrap()
        .status
        .clone();
    assert_eq!(status, "failed");
}

#[test]
fn preflight_failures_stop_before_helm_and_change_nothing() {
    let stack = Stack::new(None);
    let forced = |extra: &[&str]| {
        let mut args = vec!["deploy", "colony-dev", "--yes", "--force"];
        args.extend_from_slice(extra);
        stack.xtask(&args)
    };
    assert_eq!(deploy(&stack).code, 0);
    assert_eq!(forced(&[]).code, 0);
    let before = (stack.helm_upgrades(), stack.helm_revisions());

    // The kubeconfig has no "homelab" context (its cluster is "prod" now).
    stack.sim.set_context("prod");
    let run = forced(&[]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert_contains(
        &run.stderr,
        "kube context \"homelab\" (colony-dev's kube_context in",
    );
    assert_contains(&run.stderr, "is not in the kubeconfig");
    assert_eq!((stack.helm_upgrades(), stack.helm_revisions()), before);
    stack.sim.set_context("homelab");
    // Another current context is no reason to refuse: every call names
    // homelab, and the plan says so.
    stack.sim.set_current_context("prod");
    let elsewhere = forced(&[]);
    assert_eq!(elsewhere.code, 0, "{}", elsewhere.all());
    assert_contains(
        &elsewhere.stdout,
        "cluster      context homelab, namespace colony-dev",
    );
    stack.sim.set_current_context("homelab");
    let before = (stack.helm_upgrades(), stack.helm_revisions());

    stack
        .sim
        .set_release_status(NAMESPACE, "colony", "pending-upgrade");
    let run = forced(&[]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert_contains(&run.stderr, "is pending-upgrade");
    assert_contains(&run.stderr, "roll back to the last good revision 2: `helm rollback colony 2 --namespace colony-dev --kube-context homelab`");
    stack
        .sim
        .set_release_status(NAMESPACE, "colony", "deployed");

    stack.sim.faults(|f| f.pg_dump_fails = true);
    let run = forced(&[]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(&run.stderr, "the backup failed, so Helm was not run");
    stack.sim.faults(|f| f.pg_dump_fails = false);

    let closed = testkit::TcpForwarder::free_port();
    let backups = stack.backups();
    let run = forced(&["--registry", &format!("127.0.0.1:{closed}")]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert_contains(&run.stderr, "does not answer");
    assert_contains(&run.stderr, "nothing was changed");
    assert_eq!(
        stack.backups(),
        backups,
        "an unreachable registry is found before the backup"
    );

    assert_eq!(
        (stack.helm_upgrades(), stack.helm_revisions()),
        before,
        "a failed preflight reached Helm"
    );
}

/// history_max reaches Helm: it keeps that many revisions, and a rollback
/// whose app revision was pruned says so and names the setting.
#[test]
fn history_max_prunes_revisions_and_a_rollback_says_what_was_pruned() {
    let stack = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    let config = stack.repo.config();
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "release = \"colony\"",
        "release = \"colony\"\nhistory_max = 3",
        1,
    );
    std::fs::write(&config, text).unwrap();
    stack.repo.git(&["commit", "-qam", "history_max"]);
    stack.commit_baseline_era();
    assert_eq!(deploy(&stack).code, 0);
    stack.repo.git(&["revert", "--no-edit", "HEAD"]);
    for _ in 0..3 {
        let run = stack.xtask(&["deploy", "colony-dev", "--yes", "--force"]);
        assert_eq!(run.code, 0, "{}", run.all());
    }
    assert_eq!(
        stack.helm_revisions(),
        3,
        "Helm keeps history_max revisions"
    );
    assert!(stack
        .calls()
        .iter()
        .any(|c| c.starts_with("helm upgrade") && c.contains("--history-max 3")));
    let refused = stack.xtask(&["rollback", "--to", "0001_baseline", "--yes"]);
    assert_eq!(refused.code, 2, "{}", refused.all());
    assert_contains(&refused.stderr, "Revisions 1 to 1 of colony were pruned");
    assert_contains(&refused.stderr, "history_max");
}

#[test]
fn rollback_to_the_baseline_downgrades_then_rolls_the_app_back() {
    let stack = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    // The baseline era: a build whose migrations end at 0001_baseline.
    stack.commit_baseline_era();
    assert_eq!(deploy(&stack).code, 0);
    stack.repo.git(&["revert", "--no-edit", "HEAD"]);
    let run = deploy(&stack);
    assert_eq!(run.code, 0, "{}", run.all());
    stack.psql("INSERT INTO activity_log (household_id, message) VALUES (1, 'bins out')");

    let run = stack.xtask(&["rollback", "--to", "0001_baseline", "--yes"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let backups: Vec<_> = std::fs::read_dir(stack.backup_dir()).unwrap().collect();
    assert!(backups.len() >= 2, "a backup before the downgrade");
    assert_eq!(
        stack
            .psql("SELECT to_regclass('activity_log') IS NULL AND to_regclass('comments') IS NULL"),
        "t"
    );
    assert_eq!(stack.psql("SELECT count(*) FROM households"), "3");
    // The baseline-era release is current again, and its scripts end at 0001.
    let releases = stack.sim.state().releases[&format!("{NAMESPACE}/colony")].clone();
    let current = releases.last().unwrap();
    assert_eq!(current.status, "deployed");
    assert_eq!(current.description, "Rollback to 1");
    assert_contains(&run.stdout, "0001_baseline (head)");
    assert_contains(&run.stdout, "All 4 checks passed.");
    assert_in_order(
        &stack.calls(),
        &[
            "-- pg_dump -Fc",
            // Through the image's runner: it holds the migration lock.
            "-- /usr/local/bin/run-migrations downgrade 0001_baseline --alembic-cmd=alembic",
            "helm rollback colony 1",
            "annotate deployment colony-backend --overwrite colony.dev/rollback-helm-revision=3",
            "-- alembic current",
        ],
    );
    // A later, standalone verify expects the head of the running release.
    let verify = stack.xtask(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert!(
        verify
            .stdout
            .contains("expecting Alembic head 0001_baseline"),
        "{}",
        verify.stdout
    );
}

#[test]
fn rollback_refuses_an_unknown_revision_or_no_confirmation_before_touching_anything() {
    let stack = Stack::new(None);
    assert_eq!(deploy(&stack).code, 0);
    let calls_before = stack.calls().len();
    let run = stack.xtask(&["rollback", "--to", "0000_nope", "--yes"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert_contains(&run.stderr, "unknown revision \"0000_nope\"");
    let run = stack.xtask(&["rollback", "--to", "0001_baseline"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert_contains(&run.stderr, "pass --yes");
    assert_eq!(
        stack.calls().len(),
        calls_before,
        "a refused rollback called kubectl or helm"
    );
    assert_eq!(
        stack.psql("SELECT version_num FROM alembic_version"),
        "0002_activity_and_comments"
    );
}

#[test]
fn slow_readiness_is_waited_for_not_reported_as_a_failure() {
    let stack = Stack::new(None);
    stack.sim.faults(|f| f.readiness_delay_ms = 3000);
    let started = Instant::now();
    let run = deploy(&stack);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "reported ready before the pods were"
    );
    assert_contains(&run.stdout, "4/4 checks passed");
}
/// The facts do not wait for verify's `alembic current` in the running
/// pods (a Python start-up, here made 30 s slow in them): a deploy that
/// upgrades verifies its new pods, and reads the database's revision from
/// the runner's status. A deploy with nothing to deploy verifies the
/// running pods with the `alembic current` its facts started, read once.
#[test]
fn the_facts_do_not_wait_for_the_running_pods_alembic() {
    let stack = Stack::new(None);
    assert_eq!(deploy(&stack).code, 0);
    stack.sim.faults(|f| f.alembic_delay_ms = 30_000);
    // A new pod template (new pods), with the images already pushed.
    std::fs::write(
        stack.values_file(),
        "backend:\n  replicas: 2\n  podAnnotations:\n    colony.test/changed: \"yes\"\n",
    )
    .unwrap();
    let calls = stack.calls().len();
    let upgraded = stack.xtask(&["deploy", "colony-dev", "--yes", "--json"]);
    assert_eq!(upgraded.code, 0, "{}", upgraded.all());
    let summary: serde_json::Value = serde_json::from_str(&upgraded.stdout).unwrap();
    let facts = summary["facts_seconds"].as_f64().unwrap();
    assert!(
        facts < 30.0,
        "the facts waited {facts} s for the old pods' Alembic"
    );
    assert_eq!(summary["verified"], true, "{summary}");
    let runner_status = stack
        .calls_since(calls)
        .into_iter()
        .find(|c| c.contains("run-migrations status"));
    assert!(runner_status.is_some(), "{}", stack.calls().join("\n"));

    let reads = verified_no_op(&stack);
    assert_eq!(alembic_currents(&reads), 1, "{reads:#?}");
}

/// A deploy with nothing to deploy, verified; the cluster calls it made.
fn verified_no_op(stack: &Stack) -> Vec<String> {
    let calls = stack.calls().len();
    let again = stack.xtask(&["deploy", "colony-dev", "--yes", "--json"]);
    assert_eq!(again.code, 0, "{}", again.all());
    let summary: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(summary["decision"], "nothing to deploy", "{summary}");
    assert_eq!(summary["verified"], true, "{summary}");
    assert_eq!(summary["alembic"], "0002_activity_and_comments (head)");
    stack.calls_since(calls)
}

fn alembic_currents(calls: &[String]) -> usize {
    calls
        .iter()
        .filter(|c| c.ends_with("alembic current"))
        .count()
}

/// Running pods whose image has no runner (a release installed before
/// this tool): the facts read the database's revision from verify's
/// `alembic current`, and a no-op verifies with that same read.
#[test]
fn without_a_runner_in_the_pods_the_facts_ask_alembic_once() {
    let stack = Stack::new(None);
    assert_eq!(deploy(&stack).code, 0);
    stack.sim.faults(|f| f.runner_missing = true);
    let planned = stack.xtask(&["deploy", "colony-dev", "--dry-run", "--json"]);
    assert_eq!(planned.code, 0, "{}", planned.all());
    let plan: serde_json::Value = serde_json::from_str(&planned.stdout).unwrap();
    assert_eq!(
        plan["facts"]["database"], "0002_activity_and_comments",
        "{plan}"
    );
    let reads = verified_no_op(&stack);
    assert!(
        reads.iter().any(|c| c.contains("run-migrations status")),
        "{reads:#?}"
    );
    assert_eq!(alembic_currents(&reads), 1, "{reads:#?}");
}

#[test]
fn mutating_calls_are_told_apart_from_reads() {
    for read in [
        "kubectl config current-context",
        "kubectl config get-contexts homelab -o name",
        "kubectl --context h --namespace n get pods -o json",
        "kubectl --context h --namespace n exec p --container backend -- alembic current",
        "kubectl --context h --namespace n exec p --container backend -- run-migrations status --json",
        "kubectl --context h --namespace n exec p --container backend -- /usr/local/bin/run-migrations status --json",
        "helm status colony -o json",
        "helm get values colony --revision 1 -o json",
        "helm history colony -o json",
        "helm version --template {{.Version}}",
    ] {
        assert!(!is_mutating(read), "{read}");
    }
    for write in [
        "helm upgrade --install colony ./helm/colony",
        "helm rollback colony 1",
        "kubectl --context h annotate deployment d x=y",
        "kubectl --context h --namespace n exec p -- alembic downgrade 0001_baseline",
        "kubectl --context h --namespace n exec db-0 -- pg_dump -Fc colony",
    ] {
        assert!(is_mutating(write), "{write}");
    }
}

/// The runbook's situation: revision 1 was installed by hand (`helm upgrade
/// --install`, no deploy record) over a pre-Alembic database, with a build
/// whose migrations end at the baseline. This tool's first deploy brings
/// 0002; rolling back must not leave 0001 under code that needs 0002.
#[test]
fn a_release_installed_by_hand_is_rolled_back_to_only_when_chosen() {
    let stack = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    stack.commit_baseline_era();
    let installed = stack.helm_install(&["--wait=watcher"]);
    assert!(
        installed.status.success(),
        "{}",
        String::from_utf8_lossy(&installed.stderr)
    );
    let runbook_images = stack.sim.state().releases[&format!("{NAMESPACE}/colony")][0].values
        ["backend"]["image"]["digest"]
        .clone();
    stack.repo.git(&["revert", "--no-edit", "HEAD"]);

    let run = deploy(&stack);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout
            .contains("the database is at 0001_baseline; the init container will")
            && run
                .stdout
                .contains("apply 0002_activity_and_comments: Activity log and comments on chores."),
        "the plan names the migration it runs:\n{}",
        run.stdout
    );
    stack.psql("INSERT INTO activity_log (household_id, message) VALUES (1, 'bins out')");
    let calls = stack.calls().len();
    let backups = stack.backups();

    // No earlier revision recorded 0001: refuse, list revision 1, change nothing.
    for args in [
        &["rollback", "--to", "0001_baseline", "--yes"][..],
        &["rollback", "--steps", "1", "--yes"][..],
    ] {
        let refused = stack.xtask(args);
        assert_eq!(refused.code, 2, "{args:?}: {}", refused.all());
        assert!(
            refused
                .stderr
                .contains("no earlier Helm revision of colony recorded Alembic head 0001_baseline"),
            "{}",
            refused.stderr
        );
        assert_contains(&refused.stderr, "revision 1");
        assert_contains(&refused.stderr, "--app-revision N");
    }
    assert_no_mutating_call(&stack.calls_since(calls));
    assert_eq!(stack.backups(), backups, "a refused rollback took a backup");
    assert_eq!(
        stack.psql("SELECT version_num FROM alembic_version"),
        "0002_activity_and_comments"
    );
    assert_eq!(stack.psql("SELECT count(*) FROM activity_log"), "1");

    // Chosen: downgrade with the current release, then return to revision 1.
    let run = stack.xtask(&[
        "rollback",
        "--to",
        "0001_baseline",
        "--app-revision",
        "1",
        "--yes",
    ]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(
        stack.psql("SELECT version_num FROM alembic_version"),
        "0001_baseline"
    );
    assert_eq!(
        stack.psql("SELECT count(*) || '/' || (SELECT count(*) FROM chores) FROM households"),
        "3/5",
        "the legacy rows survive the downgrade"
    );
    assert_eq!(stack.backups(), backups + 1);
    let releases = stack.sim.state().releases[&format!("{NAMESPACE}/colony")].clone();
    let current = releases.last().unwrap();
    assert_eq!(current.description, "Rollback to 1");
    assert_eq!(current.values["backend"]["image"]["digest"], runbook_images);

    let verify = stack.xtask(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    assert_contains(
        &verify.stdout,
        "expecting Alembic head 0001_baseline (from the rollback's record for Helm revision 3)",
    );
}

#[test]
fn a_changed_values_file_template_or_commit_is_not_a_noop() {
    let stack = Stack::new(None);
    assert_eq!(deploy(&stack).code, 0);
    let decision = |stack: &Stack| {
        let run = stack.xtask(&["deploy", "colony-dev", "--dry-run", "--json"]);
        assert_eq!(run.code, 0, "{}", run.all());
        let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        plan["decision"].as_str().unwrap().to_string()
    };
    assert_eq!(decision(&stack), "nothing to deploy");

    let values = std::fs::read_to_string(stack.values_file()).unwrap();
    std::fs::write(
        stack.values_file(),
        format!("{values}frontend:\n  replicas: 2\n"),
    )
    .unwrap();
    assert_eq!(decision(&stack), "deploy", "a changed values file");
    std::fs::write(stack.values_file(), &values).unwrap();
    assert_eq!(decision(&stack), "nothing to deploy");

    let template = stack
        .repo
        .root()
        .join("helm/colony/templates/backend-service.yaml");
    let text = std::fs::read_to_string(&template).unwrap();
    std::fs::write(&template, format!("{text}\n# a changed template\n")).unwrap();
    assert_eq!(decision(&stack), "deploy", "a changed chart template");
    std::fs::write(&template, &text).unwrap();

    std::fs::write(stack.repo.root().join("frontend/notes.md"), "changed\n").unwrap();
    stack.repo.git(&["commit", "-qam", "a new commit"]);
    assert_eq!(decision(&stack), "deploy", "a new commit");
    assert_eq!((stack.helm_upgrades(), stack.helm_revisions()), (1, 1));
}

/// The plan a dry run prints is the list of steps a run executes, for the
/// same facts; and a dry run changes nothing.
#[test]
fn dry_runs_list_exactly_the_steps_that_run() {
    let stack = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    stack.commit_baseline_era();
    let same = |dry: &[&str], real: &[&str]| {
        let calls = stack.calls().len();
        let planned = stack.xtask(dry);
        assert_eq!(planned.code, 0, "{}", planned.all());
        assert_no_mutating_call(&stack.calls_since(calls));
        let ran = stack.xtask(real);
        assert_eq!(ran.code, 0, "{}", ran.all());
        let steps = Stack::step_names(&planned.stdout);
        assert_eq!(steps, Stack::step_names(&ran.stdout), "{real:?}");
        steps
    };
    let deploy_dry = ["deploy", "colony-dev", "--dry-run", "--json"];
    let deploy_real = ["deploy", "colony-dev", "--yes", "--json"];
    assert_eq!(
        same(&deploy_dry, &deploy_real),
        ["images", "helm-upgrade", "rollout", "verify"]
    );
    assert_eq!(same(&deploy_dry, &deploy_real), ["verify"], "the no-op");
    stack.repo.git(&["revert", "--no-edit", "HEAD"]);
    assert_eq!(
        same(&deploy_dry, &deploy_real),
        [
            "images",
            "backup",
            "rehearse",
            "helm-upgrade",
            "rollout",
            "verify"
        ]
    );
    assert_eq!(
        same(
            &["rollback", "--to", "0001_baseline", "--dry-run", "--json"],
            &["rollback", "--to", "0001_baseline", "--yes", "--json"],
        ),
        [
            "backup",
            "downgrade",
            "helm-rollback",
            "record-head",
            "verify"
        ]
    );
}

#[test]
fn rollback_to_the_current_revision_is_nothing_to_do_and_a_refusal_is_a_plan() {
    let stack = Stack::new(None);
    assert_eq!(deploy(&stack).code, 0);
    let calls = stack.calls().len();
    let run = stack.xtask(&["rollback", "--to", "0002_activity_and_comments", "--yes"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_contains(
        &run.stdout,
        "already at 0002_activity_and_comments; nothing to do",
    );
    assert_no_mutating_call(&stack.calls_since(calls));
    assert_eq!(stack.backups(), 0);

    // A refusal is a plan with its reasons, as deploy's: the dry run shows
    // it in text and JSON on stdout, a run refuses (exit 2), nothing runs.
    let asked = ["rollback", "--to", "0001_baseline", "--app-revision", "9"];
    let with =
        |extra: &[&'static str]| -> Vec<&str> { asked.iter().chain(extra).copied().collect() };
    let json = stack.xtask(&with(&["--dry-run", "--json"]));
    assert_eq!(json.code, 0, "{}", json.all());
    let plan: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(plan["decision"], "refused", "{plan}");
    assert_eq!(plan["facts"]["target"], "0001_baseline", "{plan}");
    let why = plan["missing"][0].as_str().unwrap().to_string();
    assert!(why.contains('9'), "{why}");
    let text = stack.xtask(&with(&["--dry-run"]));
    assert_contains(
        &text.stdout,
        "Missing (a real rollback stops here until these are fixed):",
    );
    assert_contains(&text.stdout, &format!("  ! {why}"));
    let run = stack.xtask(&with(&["--yes"]));
    assert_eq!(run.code, 2, "{}", run.all());
    assert_contains(
        &run.stderr,
        &format!("cannot roll back colony-dev; nothing was changed:\n  - {why}"),
    );
    assert_no_mutating_call(&stack.calls_since(calls));
    assert_eq!(stack.backups(), 0);
}

/// The homelab registry by name (plain HTTP, trusted by the daemon): the
/// skip check, the digest read-back and the simulated pods' pulls all work.
#[test]
fn a_deploy_through_a_registry_the_daemon_treats_as_insecure() {
    let stack = Stack::new(None);
    let registry = format!(
        "{}/{}",
        testkit::TestBed::get().named_registry,
        crate::common::unique("insecure-by-name")
    );
    let by_name = [("COLONY_REGISTRY", registry.as_str())];
    let run = stack.xtask_with(&["deploy", "colony-dev", "--yes"], &by_name);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_contains(
        &run.stdout,
        &format!("backend   {registry}/e2e-colony-backend@sha256:"),
    );
    assert_contains(&run.stdout, "4/4 checks passed");
    let again = stack.xtask_with(&["deploy", "colony-dev", "--yes"], &by_name);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_contains(&again.stdout, "Nothing to deploy");
}

/// Checks that can refuse run before the first change: a `--skip-build`
/// whose images the registry lacks, or no daemon to build them, take no
/// backup and call no Helm.
#[test]
fn skip_build_without_images_or_no_daemon_refuses_before_the_backup() {
    let stack = Stack::new(None);
    assert_eq!(deploy(&stack).code, 0);
    std::fs::write(stack.repo.root().join("frontend/notes.md"), "new\n").unwrap();
    stack
        .repo
        .git(&["commit", "-qam", "a commit whose images were never built"]);
    let (calls, backups) = (stack.calls().len(), stack.backups());

    let run = stack.xtask(&["deploy", "colony-dev", "--yes", "--skip-build"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert_contains(&run.stderr, "--skip-build, but the registry has no");
    assert_contains(&run.stderr, "e2e-colony-frontend:");

    let run = stack.xtask_with(
        &["deploy", "colony-dev", "--yes"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    assert_eq!(run.code, 2, "{}", run.all());
    assert_contains(&run.stderr, "no Docker daemon to build backend and frontend: no Docker daemon at unix:///nonexistent/docker.sock (from DOCKER_HOST)");
    assert_no_mutating_call(&stack.calls_since(calls));
    assert_eq!(stack.backups(), backups);
}

/// A crash-looping init container's exit code is explained in the
/// runner's own terms (3: the database never answered).
#[test]
fn an_init_container_exit_code_is_explained() {
    let stack = Stack::new(None);
    stack.sim.faults(|f| f.init_crash_exit_code = Some(3));
    let run = deploy(&stack);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr.contains(
            "container run-migrations exited with code 3 (the database never answered within --wait-timeout"
        ),
        "{}",
        run.stderr
    );
    // What made it crash goes away (the database is back): the kubelet
    // runs the init container again after its back-off, the pods come up,
    // and the release verifies, with no new deploy.
    stack.sim.faults(|f| f.init_crash_exit_code = None);
    let start = Instant::now();
    loop {
        let verify = stack.xtask(&["verify"]);
        if verify.code == 0 {
            assert_contains(&verify.stdout, "checks passed");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the crashed init container was never restarted:\n{}",
            verify.all()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Values with commas, dots and equals signs (which `--set-string` would
/// have split into other assignments) reach the release exactly: the
/// images stay pinned by digest and the record holds what was written.
#[test]
fn values_that_look_like_more_assignments_reach_helm_exactly() {
    let stack = Stack::new(None);
    let config = stack.repo.config();
    let command = "alembic -x note=a,backend.image.digest=";
    let backups = format!(
        "{},deployRecord.gitSha=forged",
        stack.backup_dir().display()
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen(
            "release = \"colony\"",
            &format!("release = \"colony\"\nalembic_command = \"{command}\""),
            1,
        )
        .replace(
            "backup_dir = \"~/backups\"",
            &format!("backup_dir = \"{backups}\""),
        );
    std::fs::write(&config, text).unwrap();
    stack.repo.git(&["commit", "-qam", "odd values"]);
    assert_eq!(deploy(&stack).code, 0);
    let forced = stack.xtask(&["deploy", "colony-dev", "--yes", "--force"]);
    assert_eq!(forced.code, 0, "{}", forced.all());

    let values = stack.helm_values(2);
    let sha = stack.repo.git(&["rev-parse", "HEAD"]);
    assert_eq!(values["deployRecord"]["gitSha"], sha.as_str(), "{values}");
    assert_eq!(values["backend"]["migrations"]["alembicCommand"], command);
    assert!(
        values["deployRecord"]["backupFile"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{backups}/")),
        "{values}"
    );
    let image = backend_image(&stack, "colony-dev");
    assert!(image.contains("/e2e-colony-backend@sha256:"), "{image}");
    assert_contains(&forced.stdout, "4/4 checks passed");
}

/// deploy.toml's settings are inputs: an edited alembic_command (which the
/// chart receives) is a deploy, an edited build arg another image (another
/// tag, so a build), though the checkout's commit and contexts are the same.
#[test]
fn a_changed_setting_in_deploy_toml_is_deployed_not_nothing_to_deploy() {
    let stack = Stack::new(None);
    assert_eq!(deploy(&stack).code, 0);
    let config = stack.repo.config();
    let text = std::fs::read_to_string(&config).unwrap();
    let command = text.replacen(
        "release = \"colony\"",
        "release = \"colony\"\nalembic_command = \"alembic -x note=1\"",
        1,
    );
    std::fs::write(&config, &command).unwrap();
    let run = deploy(&stack);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(!run.stdout.contains("Nothing to deploy"), "{}", run.stdout);
    assert_eq!(
        stack.helm_values(2)["backend"]["migrations"]["alembicCommand"],
        "alembic -x note=1"
    );
    let before = backend_image(&stack, "colony-dev");

    std::fs::write(
        &config,
        command.replace("APP_ENV = \"dev\"", "APP_ENV = \"dev2\""),
    )
    .unwrap();
    let run = stack.xtask(&["deploy", "colony-dev", "--yes", "--json"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let built: Vec<&str> = summary["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["build"]["status"] == "done")
        .map(|i| i["component"].as_str().unwrap())
        .collect();
    assert_eq!(built, ["backend"], "{summary}");
    assert_ne!(backend_image(&stack, "colony-dev"), before);
}

/// What would fail mid-deploy is refused with the facts, exit 2, before the
/// push, the backup and Helm: a backup_dir inside a build context or the
/// checkout or where no file can be made, a revision id too long for
/// alembic_version, an alembic_command that needs a shell.
#[test]
fn settings_that_would_fail_mid_deploy_are_refused_before_any_change() {
    let stack = Stack::new(None);
    assert_eq!(deploy(&stack).code, 0);
    let config = stack.repo.config();
    let original = std::fs::read_to_string(&config).unwrap();
    let a_file = stack.home.path().join("a-file");
    std::fs::write(&a_file, "x").unwrap();
    let with_backup_dir = |dir: &str| {
        original.replace(
            "backup_dir = \"~/backups\"",
            &format!("backup_dir = \"{dir}\""),
        )
    };
    let cases = [
        (
            with_backup_dir("backend/dumps"),
            "inside the backend build context",
        ),
        (with_backup_dir(""), "git add -A"),
        (
            with_backup_dir(&format!("{}/backups", a_file.display())),
            "is not a directory",
        ),
        (
            original.replacen(
                "release = \"colony\"",
                "release = \"colony\"\nalembic_command = \"cd /app && alembic\"",
                1,
            ),
            "shell syntax",
        ),
    ];
    stack
        .repo
        .git(&["commit", "--allow-empty", "-qm", "something to deploy"]);
    for (text, says) in cases {
        std::fs::write(&config, text).unwrap();
        let before = (stack.helm_upgrades(), stack.backups());
        let run = stack.xtask(&["deploy", "colony-dev", "--yes"]);
        assert_eq!(run.code, 2, "{says}: {}", run.all());
        assert_contains(&run.stderr, says);
        assert_eq!((stack.helm_upgrades(), stack.backups()), before, "{says}");
    }
    assert!(!stack.repo.root().join("backend/dumps").exists());
    let dumps_in_root = std::fs::read_dir(stack.repo.root())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "dump")
        })
        .count();
    assert_eq!(dumps_in_root, 0);

    std::fs::write(&config, &original).unwrap();
    let long_id = "0003_add_household_membership_roles";
    stack.commit_revision(
        long_id,
        "0002_activity_and_comments",
        "roles",
        "    op.add_column('households', sa.Column('roles', sa.Text()))",
    );
    let run = stack.xtask(&["deploy", "colony-dev", "--yes"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert_contains(
        &run.stderr,
        &format!("{long_id:?} longer than 32 characters"),
    );
    assert_eq!(stack.helm_upgrades(), 1);
    assert_eq!(
        stack.psql("SELECT version_num FROM alembic_version"),
        "0002_activity_and_comments"
    );
}

/// Helm's timeout shorter than the migration lock's wait: the plan warns;
/// when Helm gives up while a pod waits for the lock, the error says the
/// pods may still migrate and what to run; and they do, once the lock is
/// free, as a cluster's would.
#[test]
fn helm_giving_up_before_the_migration_lock_is_said_with_the_next_steps() {
    let stack = Stack::new(None);
    assert_eq!(deploy(&stack).code, 0);
    let config = stack.repo.config();
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "release = \"colony\"",
        "release = \"colony\"\nhelm_timeout = \"4s\"",
        1,
    );
    std::fs::write(&config, text).unwrap();
    stack.commit_revision(
        "0003_count_chores",
        "0002_activity_and_comments",
        "count chores",
        "    op.add_column('households', sa.Column('chores', sa.Integer()))",
    );
    let mut holder = std::process::Command::new("psql")
        .args([stack.database_url.as_str(), "-XAtq", "-c"])
        .arg(format!(
            "SELECT pg_advisory_lock({})",
            i64::from_be_bytes(*b"colonymg")
        ))
        .args(["-c", "SELECT pg_sleep(120)"])
        .env("PGAPPNAME", "a-slow-migration")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let run = stack.xtask(&["deploy", "colony-dev", "--yes", "--no-rehearsal"]);
    // The session ends (a killed psql's backend would sleep on with the lock).
    stack.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'a-slow-migration'",
    );
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(
        &run.stdout,
        "warning: an init container waits up to 300 s for the migration lock",
    );
    assert_contains(
        &run.stderr,
        "Helm has stopped waiting, but Kubernetes has not",
    );
    assert_contains(
        &run.stderr,
        "(for up to 300 s, if another pod holds the migration lock)",
    );
    assert_contains(&run.stderr, "`cargo xtask status colony-dev`");
    // The lock is free now: the waiting init container migrates without us.
    let start = Instant::now();
    while stack.psql("SELECT version_num FROM alembic_version") != "0003_count_chores" {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the pod never migrated"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A values file Helm would refuse (not YAML, or a value the chart's schema
/// rejects) is refused with the facts, exit 2: no push, no backup, no Helm
/// call, on an installed release as on a first install.
#[test]
fn values_helm_would_refuse_are_refused_before_any_change() {
    let stack = Stack::new(None);
    assert_eq!(deploy(&stack).code, 0);
    let original = std::fs::read_to_string(stack.values_file()).unwrap();
    stack
        .repo
        .git(&["commit", "--allow-empty", "-qm", "a new commit to deploy"]);
    for (values, says) in [
        (
            format!("{original}\nbackend:\n  replicas: two\n"),
            "/backend/replicas",
        ),
        (
            format!("{original}\nbackend: [unclosed\n"),
            "my-values.yaml",
        ),
    ] {
        std::fs::write(stack.values_file(), values).unwrap();
        let before = (stack.helm_upgrades(), stack.backups());
        let run = stack.xtask(&["deploy", "colony-dev", "--yes"]);
        assert_eq!(run.code, 2, "{}", run.all());
        assert_contains(&run.stderr, says);
        assert_eq!((stack.helm_upgrades(), stack.backups()), before);
        assert_contains(&run.stderr, "nothing was changed");
    }
}

/// An image that runs Alembic through uv: deploy.toml's alembic_command is
/// what the init container runs and what every exec (verify, the facts,
/// rollback) runs.
#[test]
fn alembic_command_is_used_by_the_init_container_and_every_exec() {
    let stack = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    let config = stack.repo.config();
    let text = std::fs::read_to_string(&config).unwrap();
    let with_uv = text.replacen(
        "release = \"colony\"",
        "release = \"colony\"\nalembic_command = \"uv run --no-sync alembic\"",
        1,
    );
    std::fs::write(&config, &with_uv).unwrap();
    stack.repo.git(&["commit", "-qam", "Alembic through uv"]);
    stack.commit_baseline_era();
    assert_eq!(deploy(&stack).code, 0);
    stack.repo.git(&["revert", "--no-edit", "HEAD"]);
    let run = deploy(&stack);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_contains(
        &run.stdout,
        "Alembic cmd  uv run --no-sync alembic (alembic_command)",
    );
    let verify = stack.xtask(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
    let rollback = stack.xtask(&["rollback", "--to", "0001_baseline", "--yes"]);
    assert_eq!(rollback.code, 0, "{}", rollback.all());

    let calls = stack.calls();
    for revision in 1..=stack.helm_upgrades() as u32 {
        assert_eq!(
            stack.helm_values(revision)["backend"]["migrations"]["alembicCommand"],
            "uv run --no-sync alembic"
        );
    }
    assert!(calls.iter().any(|c| c.contains(
        "run-migrations downgrade 0001_baseline --alembic-cmd=uv run --no-sync alembic"
    )));
    let execs: Vec<&String> = calls
        .iter()
        .filter(|c| c.starts_with("kubectl") && c.contains(" exec ") && c.contains(" alembic "))
        .filter(|c| !c.contains("run-migrations"))
        .collect();
    assert!(!execs.is_empty());
    for exec in &execs {
        assert!(
            exec.contains("-- uv run --no-sync alembic "),
            "an exec ran another command: {exec}"
        );
    }

    // The same release with a command the image lacks: verify says which setting.
    std::fs::write(
        &config,
        with_uv.replace("uv run --no-sync alembic", "nosuch-alembic"),
    )
    .unwrap();
    let verify = stack.xtask(&["verify"]);
    assert_eq!(verify.code, 1, "{}", verify.all());
    assert!(
        verify
            .stdout
            .contains("The image has no \"nosuch-alembic\": set alembic_command in"),
        "{}",
        verify.stdout
    );
}

/// A deploy started as a user's terminal would: its own process group (so
/// that a Ctrl-C reaches it and its children), output into files.
/// Ctrl-C while the rehearsal runs: its containers go, Helm never runs,
/// the database is untouched.
#[test]
fn an_interrupt_during_the_rehearsal_removes_its_containers_and_never_reaches_helm() {
    let stack = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    stack.commit_baseline_era();
    assert_eq!(deploy(&stack).code, 0);
    stack.repo.git(&["revert", "--no-edit", "HEAD"]);
    let before = (stack.helm_upgrades(), stack.helm_revisions());
    let started = start_deploy(&stack);
    started.wait_for(
        || {
            started
                .stderr()
                .contains("rehearsal: started a throwaway PostgreSQL")
        },
        "the rehearsal",
    );
    started.signal(2, true);
    let (exit, stderr) = started.exit_code();
    assert_eq!(exit, 130, "{stderr}");
    assert!(stderr.contains("during step rehearse"), "{stderr}");
    assert_eq!(
        (stack.helm_upgrades(), stack.helm_revisions()),
        before,
        "Helm ran:\n{stderr}"
    );
    crate::common::assert_no_rehearsal_left(&stderr);
    assert_eq!(
        stack.psql("SELECT version_num FROM alembic_version"),
        "0001_baseline"
    );
}

/// Text no earlier run has seen.
fn nonce(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("<!-- {what} {nanos} -->\n")
}

fn partial_backups(stack: &Stack) -> Vec<String> {
    std::fs::read_dir(stack.backup_dir())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("partial"))
                .collect()
        })
        .unwrap_or_default()
}

fn last_status(stack: &Stack) -> String {
    stack.sim.state().releases[&format!("{NAMESPACE}/colony")]
        .last()
        .unwrap()
        .status
        .clone()
}

/// Ctrl-C (SIGINT to the process group) or SIGTERM (to xtask alone) while
/// Helm waits for slow pods: Helm is stopped with SIGTERM and records the
/// release as failed, never pending; no partial backup; exit 130/143; the
/// next deploy is accepted.
#[test]
fn an_interrupt_during_helm_leaves_a_failed_release_never_a_pending_one() {
    let stack = Stack::new(None);
    assert_eq!(deploy(&stack).code, 0);
    for (signal, group, code, name) in [(2, true, 130, "SIGINT"), (15, false, 143, "SIGTERM")] {
        stack.sim.faults(|f| f.readiness_delay_ms = 60_000);
        // Content no run has built (the fixture's commits are reproducible).
        std::fs::write(stack.repo.root().join("frontend/index.html"), nonce(name)).unwrap();
        stack.repo.git(&["commit", "-qam", name]);
        let upgrades = stack.helm_upgrades();
        let started = start_deploy(&stack);
        started.wait_for(|| stack.helm_upgrades() > upgrades, "helm upgrade");
        std::thread::sleep(Duration::from_millis(1500));
        started.signal(signal, group);
        let (exit, stderr) = started.exit_code();
        assert_eq!(exit, code, "{name}:\n{stderr}");
        assert!(
            stderr.contains(&format!("interrupted by {name}")),
            "{stderr}"
        );
        assert!(
            stderr.contains("is at revision") && stderr.contains("failed"),
            "{stderr}"
        );
        assert!(stderr.contains("cargo xtask deploy colony-dev"), "{stderr}");
        assert_eq!(
            last_status(&stack),
            "failed",
            "{name} left the release pending"
        );
        assert_eq!(partial_backups(&stack), Vec::<String>::new());
        stack.sim.faults(|f| f.readiness_delay_ms = 0);
        let next = deploy(&stack);
        assert_eq!(next.code, 0, "the next deploy after {name}: {}", next.all());
    }
}

/// Ctrl-C while a no-op verifies running pods whose Alembic is slow: the
/// `alembic current` the facts started is stopped, and no read is made
/// again after the interrupt; exit 130.
#[test]
fn an_interrupt_during_a_no_op_verify_starts_no_new_read() {
    let stack = Stack::new(None);
    assert_eq!(deploy(&stack).code, 0);
    stack.sim.faults(|f| f.alembic_delay_ms = 60_000);
    let calls = stack.calls().len();
    let started = start_deploy(&stack);
    started.wait_for(
        || started.stderr().contains("deploy: Verify the newest pods"),
        "the verify step",
    );
    started.signal(2, true);
    let (exit, stderr) = started.exit_code();
    assert_eq!(exit, 130, "{stderr}");
    assert!(stderr.contains("interrupted by SIGINT"), "{stderr}");
    let reads = stack.calls_since(calls);
    assert_eq!(alembic_currents(&reads), 1, "{reads:#?}");
}

/// Ctrl-C while the images build: nothing reaches Helm.
#[test]
fn an_interrupt_during_the_images_never_reaches_helm() {
    let stack = Stack::new(None);
    assert_eq!(deploy(&stack).code, 0);
    std::fs::write(
        stack.repo.root().join("frontend/index.html"),
        nonce("interrupted build"),
    )
    .unwrap();
    stack.repo.git(&["commit", "-qam", "a build to interrupt"]);
    let before = (stack.helm_upgrades(), stack.helm_revisions());
    let started = start_deploy(&stack);
    started.wait_for(|| started.stderr().contains("building"), "the image stage");
    started.signal(2, true);
    let (exit, stderr) = started.exit_code();
    assert_eq!(exit, 130, "{stderr}");
    assert!(stderr.contains("interrupted by SIGINT"), "{stderr}");
    assert_eq!(
        (stack.helm_upgrades(), stack.helm_revisions()),
        before,
        "Helm ran:\n{stderr}"
    );
    assert_eq!(partial_backups(&stack), Vec::<String>::new());
}

/// `--json` of status, doctor and backup: JSON alone on stdout, with the
/// documented keys; a failing `alembic current` is reported as failed.
#[test]
fn status_doctor_and_backup_speak_json() {
    let stack = Stack::new(None);
    assert_eq!(deploy(&stack).code, 0);
    // Every JSON document says its schema's version first.
    let json = |args: &[&str]| -> serde_json::Value {
        let run = stack.xtask(args);
        let value: serde_json::Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}\n{}", run.all()));
        assert!(
            run.stdout.starts_with("{\n  \"schema_version\": 1,"),
            "{args:?}: {}",
            run.stdout
        );
        value
    };
    let verify = json(&["verify", "--json"]);
    assert_eq!(verify["passed"], true, "{verify}");
    assert_eq!(verify["checks"][0]["ok"], true, "{verify}");
    let preview = json(&["migrations", "--from", "0001_baseline", "--json"]);
    assert_eq!(preview["head"], "0002_activity_and_comments", "{preview}");
    // The preview ran Alembic in the checkout and left no __pycache__ there
    // (the backend's context would be dirty: a new tag, a deploy for nothing).
    let plan = json(&["deploy", "colony-dev", "--dry-run", "--json"]);
    assert_eq!(plan["decision"], "nothing to deploy", "{plan}");
    let status = json(&["status", "--json"]);
    assert_eq!(status["installed"], true);
    assert_eq!(status["database"]["state"], "revision", "{status}");
    assert_eq!(
        status["database"]["revision"],
        "0002_activity_and_comments (head)"
    );
    assert_eq!(
        status["history"][0]["record"]["alembic_head"],
        "0002_activity_and_comments"
    );
    assert!(
        status["pods"][0]["state"].as_str().unwrap() == "ready",
        "{status}"
    );

    let backup = json(&["backup", "--json"]);
    assert!(
        std::path::Path::new(backup["path"].as_str().unwrap()).is_file(),
        "{backup}"
    );
    assert!(backup["bytes"].as_u64().unwrap() > 0 && backup["seconds"].is_number());

    let report = json(&["doctor", "--json"]);
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for name in ["config", "docker", "helm", "kubectl", "registry", "alembic"] {
        assert!(names.contains(&name), "{report}");
    }

    // A command the image lacks: status says `alembic current` failed, and why.
    let config = stack.repo.config();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen(
            "release = \"colony\"",
            "release = \"colony\"\nalembic_command = \"nosuch-alembic\"",
            1,
        ),
    )
    .unwrap();
    let status = json(&["status", "--json"]);
    assert_eq!(status["database"]["state"], "failed", "{status}");
    assert!(
        status["database"]["error"]
            .as_str()
            .unwrap()
            .contains("nosuch-alembic"),
        "{status}"
    );
    let text_status = stack.xtask(&["status"]);
    assert!(
        text_status
            .stdout
            .contains("database: unknown: `nosuch-alembic current` in"),
        "{}",
        text_status.stdout
    );
}

/// `cargo xtask ARGS` on a terminal (a pty, through `script`): what the
/// screen showed; the command must succeed.
fn on_a_terminal(stack: &Stack, args: &str) -> String {
    let output = stack
        .on_a_pty(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{screen}");
    screen
}

/// On a terminal, the images are built while the user reads the plan:
/// declined, the deploy leaves them in the local daemon only (nothing
/// pushed, backed up or deployed); confirmed, its image stage finds them
/// built (the image it pushes is the one built while the question waited).
#[test]
fn the_images_are_built_while_the_user_reads_the_plan() {
    let stack = Stack::new(None);
    let references = planned_pushes(&stack);
    let local_id = |reference: &str| {
        let inspected = crate::images::docker(&["image", "inspect", "-f", "{{.Id}}", reference]);
        inspected.status.success().then(|| {
            String::from_utf8_lossy(&inspected.stdout)
                .trim()
                .to_string()
        })
    };
    let answer = |word: &str| {
        let mut built = Vec::new();
        let (code, screen) = stack.answer_on_a_pty("deploy colony-dev", word, || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while references.iter().any(|r| local_id(r).is_none()) {
                assert!(
                    Instant::now() < deadline,
                    "no image was built while the question waited"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            built = references.iter().map(|r| local_id(r)).collect();
        });
        (code, screen, built)
    };

    let (code, screen, _) = answer("n");
    assert_eq!(code, Some(2), "{screen}");
    assert_contains(&screen, "building the images while you read (kept in this machine's Docker; nothing is pushed before you answer)");
    assert_contains(&screen, "not confirmed; nothing was changed");
    assert_not_pushed(&references);
    assert_eq!(stack.backups(), 0);
    assert_no_mutating_call(&stack.calls());

    let (code, screen, built) = answer("y");
    assert_eq!(code, Some(0), "{screen}");
    assert_contains(&screen, "All 4 checks passed.");
    let pushed: Vec<Option<String>> = references.iter().map(|r| local_id(r)).collect();
    assert_eq!(pushed, built, "the image stage built other images");
}

/// A build that fails while the plan is read stops the deploy at "y",
/// before its first change: the failing step is named with its output,
/// and no lock, backup, push or Helm call follows.
#[test]
fn a_build_that_fails_while_the_plan_is_read_changes_nothing() {
    let stack = Stack::new(None);
    let dockerfile = stack.repo.root().join("frontend/Dockerfile");
    let mut text = std::fs::read_to_string(&dockerfile).unwrap();
    text.push_str("COPY no-such-file /usr/share/colony/\n");
    std::fs::write(&dockerfile, text).unwrap();
    let references = planned_pushes(&stack);
    // Answered at once: the deploy waits for the builds after "y".
    let (code, screen) = stack.answer_on_a_pty("deploy colony-dev", "y", || {});
    assert_eq!(code, Some(1), "{screen}");
    assert_contains(
        &screen,
        "the images did not build while you read the plan, so nothing was changed",
    );
    assert_contains(&screen, "frontend image build failed at");
    assert_contains(&screen, "\"/no-such-file\" not found");
    assert_eq!(stack.backups(), 0);
    assert_no_mutating_call(&stack.calls());
    assert_not_pushed(&references);
}

/// The references a deploy of the checkout as it is would push (`--dry-run`).
fn planned_pushes(stack: &Stack) -> Vec<String> {
    let plan = stack.xtask(&["deploy", "colony-dev", "--dry-run"]);
    let references: Vec<String> = plan
        .stdout
        .lines()
        .filter_map(|l| l.split_once("push -> ").map(|(_, r)| r.trim().to_string()))
        .collect();
    assert_eq!(references.len(), 2, "{}", plan.stdout);
    references
}

fn assert_not_pushed(references: &[String]) {
    for reference in references {
        let (name, tag) = reference.rsplit_once(':').unwrap();
        let name = name.split_once('/').unwrap().1;
        assert!(
            crate::images::manifest(&testkit::TestBed::get().registry, name, tag).is_none(),
            "{reference} was pushed"
        );
    }
}

/// The rollout as it happens: on a terminal (a pty, through `script`),
/// each new pod's line and `backend x/y ready`; off a terminal, the same
/// as plain lines.
#[test]
fn the_rollout_shows_each_pod_on_a_terminal_and_plain_lines_off_it() {
    let stack = Stack::new(None);
    stack.sim.faults(|f| f.readiness_delay_ms = 2500);
    let plain = deploy(&stack);
    assert_eq!(plain.code, 0, "{}", plain.all());
    assert_contains(&plain.stderr, "rollout: pod colony-backend-");
    assert_contains(&plain.stderr, "rollout: backend 2/2 ready");
    assert!(
        !plain.stderr.contains('\u{1b}'),
        "escape codes off a terminal"
    );

    // A backend change: new backend pods to show (one build of unchanged
    // backend sources gives the same image, and nothing rolls).
    std::fs::write(
        stack.repo.root().join("backend/app/version.txt"),
        nonce("pty"),
    )
    .unwrap();
    stack.repo.git(&["add", "-A"]);
    stack.repo.git(&["commit", "-qm", "a deploy on a terminal"]);
    let screen = on_a_terminal(&stack, "deploy colony-dev --yes");
    assert!(screen.contains("pod colony-backend-"), "{screen}");
    assert!(
        screen.contains("backend 0/2 ready") || screen.contains("backend 1/2 ready"),
        "{screen}"
    );
    assert!(screen.contains("of Helm's 600 s timeout"), "{screen}");
    assert!(screen.contains('\u{1b}'), "no live redraw on a terminal");
}

/// Ctrl-C while the rollback waits for the returned app's pods (no child
/// runs then, only our watch): it stops at once, says what to run, and that
/// command finishes the rollback.
#[test]
fn an_interrupt_while_the_rollback_watches_stops_at_once_and_can_be_continued() {
    let stack = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    stack.commit_baseline_era();
    assert_eq!(deploy(&stack).code, 0);
    stack.repo.git(&["revert", "--no-edit", "HEAD"]);
    assert_eq!(deploy(&stack).code, 0);

    // The pods `helm rollback` makes are slow to become ready; those serving
    // now stay ready (the downgrade runs in one of them). Set before the
    // rollback starts: set after, it raced Helm's own read of the cluster.
    stack.sim.faults(|f| f.readiness_delay_ms = 60_000);
    let started = start(&stack, &["rollback", "--to", "0001_baseline", "--yes"]);
    started.wait_for(
        || started.stderr().contains("rollback: Return the app"),
        "the app's rollback",
    );
    // Helm (--wait) and then our watch wait for those pods.
    std::thread::sleep(Duration::from_millis(1500));
    let signalled = Instant::now();
    started.signal(2, true);
    let (exit, stderr) = started.exit_code();
    assert_eq!(exit, 130, "{stderr}");
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "waited for the pods: {stderr}"
    );
    assert!(
        stderr.contains("the rollback was interrupted by SIGINT"),
        "{stderr}"
    );
    assert!(
        stderr
            .contains("cargo xtask rollback colony-dev --to 0001_baseline --app-revision 1 --yes"),
        "{stderr}"
    );

    stack.sim.faults(|f| f.readiness_delay_ms = 0);
    let again = stack.xtask(&[
        "rollback",
        "--to",
        "0001_baseline",
        "--app-revision",
        "1",
        "--yes",
    ]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_eq!(
        stack.psql("SELECT version_num FROM alembic_version"),
        "0001_baseline"
    );
    let verify = stack.xtask(&["verify"]);
    assert_eq!(verify.code, 0, "{}", verify.all());
}

/// A revision that adds a NOT NULL column without a default and builds an
/// index without CONCURRENTLY: both lock or fail on a busy table.
const RISKY_UPGRADE: &str =
    "    op.add_column(\"chores\", sa.Column(\"points\", sa.Integer(), nullable=False))\n    \
                             op.create_index(\"ix_chores_points\", \"chores\", [\"points\"])";

fn plan_json(stack: &Stack) -> serde_json::Value {
    let planned = stack.xtask(&["deploy", "colony-dev", "--dry-run", "--json"]);
    assert_eq!(planned.code, 0, "{}", planned.all());
    serde_json::from_str(&planned.stdout).unwrap()
}

#[test]
fn risky_migrations_are_shown_before_the_prompt_and_refused_when_strict() {
    let stack = Stack::new(None);
    // Nothing installed yet: the database's revision is unknown.
    let first = stack.xtask(&["deploy", "colony-dev", "--dry-run"]);
    assert!(
        first
            .stdout
            .contains("Migrations: no SQL preview: the database's revision is unknown (no ready backend pod to ask); `cargo xtask migrations --from REV`"),
        "{}",
        first.stdout
    );
    assert_eq!(deploy(&stack).code, 0);
    let current = stack.xtask(&["deploy", "colony-dev", "--dry-run"]);
    assert_contains(
        &current.stdout,
        "Migrations: no migrations: the database is at 0002_activity_and_comments already",
    );
    // Its downgrade is real: the rehearsal proves it before the deploy.
    stack.commit_revision_both_ways(
        "0003_chore_points",
        "0002_activity_and_comments",
        "Points per chore.",
        RISKY_UPGRADE,
        "    op.drop_index(\"ix_chores_points\", \"chores\")\n    op.drop_column(\"chores\", \"points\")",
    );

    let calls = stack.calls().len();
    let plan = plan_json(&stack);
    let migrations = &plan["migrations"];
    assert_eq!(migrations["state"], "upgrade", "{migrations:#}");
    assert_eq!(migrations["from"], "0002_activity_and_comments");
    assert_eq!(migrations["revisions"][0]["id"], "0003_chore_points");
    assert_eq!(migrations["revisions"][0]["message"], "Points per chore.");
    let sql = migrations["revisions"][0]["sql"].as_str().unwrap();
    assert!(
        sql.contains("ALTER TABLE chores ADD COLUMN points INTEGER NOT NULL;"),
        "{sql}"
    );
    assert!(
        sql.contains("CREATE INDEX ix_chores_points ON chores (points);"),
        "{sql}"
    );
    let findings = migrations["findings"].as_array().unwrap();
    let rules: Vec<&str> = findings
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert_eq!(
        rules,
        ["adding-required-field", "require-concurrent-index-creation"]
    );
    assert!(findings
        .iter()
        .all(|f| f["revision"] == "0003_chore_points" && f["safer"].is_string()));
    let text = stack.xtask(&["deploy", "colony-dev", "--dry-run"]);
    for expected in [
        "alembic -c alembic.ini upgrade 0002_activity_and_comments:0003_chore_points --sql",
        "    ALTER TABLE chores ADD COLUMN points INTEGER NOT NULL;",
        "! adding-required-field (0003_chore_points): fails on a table with rows",
        "! require-concurrent-index-creation (0003_chore_points): takes a lock",
        "postgresql_concurrently=True",
    ] {
        assert!(
            text.stdout.contains(expected),
            "{expected}:\n{}",
            text.stdout
        );
    }
    assert_no_mutating_call(&stack.calls_since(calls));

    // Strict: refused with nothing changed.
    let (backups, revisions, calls) =
        (stack.backups(), stack.helm_revisions(), stack.calls().len());
    let strict = stack.xtask(&["deploy", "colony-dev", "--yes", "--strict-migrations"]);
    assert_eq!(strict.code, 2, "{}", strict.all());
    assert_contains(&strict.stderr, "strict migrations: Squawk found 2 risk(s) in the migrations' SQL (adding-required-field in \
             0003_chore_points, require-concurrent-index-creation in 0003_chore_points)");
    assert_no_mutating_call(&stack.calls_since(calls));
    assert_eq!(
        (stack.backups(), stack.helm_revisions()),
        (backups, revisions)
    );
    let check = stack.xtask(&["migrations", "--strict"]);
    assert_eq!(check.code, 2, "{}", check.all());
    assert!(
        check
            .stdout
            .contains("database: 0002_activity_and_comments, from a backend pod"),
        "{}",
        check.stdout
    );

    // Without it: the findings come before the steps, and the deploy runs.
    let run = deploy(&stack);
    assert_eq!(run.code, 0, "{}", run.all());
    let finding = run
        .stdout
        .find("! adding-required-field")
        .expect("findings shown");
    let helm = run.stdout.find("helm upgrade").expect("the helm step");
    assert!(finding < helm, "{}", run.stdout);
    assert_eq!(
        stack.psql("SELECT is_nullable FROM information_schema.columns WHERE table_name = 'chores' AND column_name = 'points'"),
        "NO"
    );
    // The safe form Squawk asks for, as Alembic writes it: the index built
    // concurrently in an autocommit block, outside the transaction.
    stack.commit_revision(
        "0004_points_index",
        "0003_chore_points",
        "Index points concurrently.",
        "    with op.get_context().autocommit_block():\n        \
         op.create_index(\"ix_chores_points_2\", \"chores\", [\"points\"], postgresql_concurrently=True)",
    );
    let safe = stack.xtask(&["migrations", "--strict"]);
    assert_eq!(safe.code, 0, "{}", safe.all());
    assert!(
        safe.stdout.contains("    COMMIT;\n\n    CREATE INDEX CONCURRENTLY ix_chores_points_2 ON chores (points);\n\n    BEGIN;")
            && safe.stdout.contains("  no findings from Squawk's rules\n"),
        "{}",
        safe.stdout
    );
}

#[test]
fn a_clean_revision_shows_no_findings_and_a_query_without_offline_sql_still_deploys() {
    let stack = Stack::new(None);
    stack.commit_baseline_era();
    assert_eq!(deploy(&stack).code, 0);
    stack.repo.git(&["revert", "--no-edit", "HEAD"]);
    stack.commit_revision(
        "0003_count_chores",
        "0002_activity_and_comments",
        "Count the chores.",
        "    total = op.get_bind().execute(sa.text(\"SELECT count(*) FROM chores\")).scalar()\n    \
         op.execute(f\"COMMENT ON TABLE chores IS 'chores at migration: {int(total)}'\")",
    );

    let plan = plan_json(&stack);
    let migrations = &plan["migrations"];
    assert_eq!(migrations["from"], "0001_baseline", "{migrations:#}");
    let revisions = migrations["revisions"].as_array().unwrap();
    assert_eq!(revisions[0]["id"], "0002_activity_and_comments");
    assert!(revisions[0]["sql"]
        .as_str()
        .unwrap()
        .contains("CREATE TABLE activity_log ("));
    assert_eq!(revisions[1]["id"], "0003_count_chores");
    assert!(revisions[1]["sql"].is_null());
    assert!(
        revisions[1]["no_preview"]
            .as_str()
            .unwrap()
            .starts_with("AttributeError: 'NoneType' object has no attribute"),
        "{revisions:#?}"
    );
    assert_eq!(migrations["findings"], serde_json::json!([]));

    // `migrations` shows the same, from the pod's revision or from --from.
    let preview = stack.xtask(&["migrations"]);
    assert_eq!(preview.code, 0, "{}", preview.all());
    for expected in [
        "database: 0001_baseline, from a backend pod of homelab/colony-dev",
        "  0002_activity_and_comments: Activity log and comments on chores.",
        "    CREATE TABLE comments (",
        "    no SQL preview for 0003_count_chores: AttributeError:",
        "  no findings from Squawk's rules in the SQL shown; 1 revision(s) without SQL were not linted",
    ] {
        assert!(
            preview.stdout.contains(expected),
            "{expected}:\n{}",
            preview.stdout
        );
    }
    let from_base = stack.xtask(&["migrations", "--from", "base", "--json"]);
    assert_eq!(from_base.code, 0, "{}", from_base.all());
    let report: serde_json::Value = serde_json::from_str(&from_base.stdout).unwrap();
    assert_eq!(
        report["migrations"]["revisions"].as_array().unwrap().len(),
        3
    );
    let unknown = stack.xtask(&["migrations", "--from", "0009_nope"]);
    assert_eq!(unknown.code, 2);
    assert!(
        unknown.stderr.contains("no such revision (known: base, "),
        "{}",
        unknown.stderr
    );

    let run = deploy(&stack);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_contains(&run.stdout, "no SQL preview for 0003_count_chores");
    assert_eq!(
        stack.psql("SELECT version_num FROM alembic_version"),
        "0003_count_chores"
    );
}

/// Adds a `colony-staging` environment (its own namespace, the same
/// registry), deploys it, and returns the backend image its release runs.
fn deploy_staging(stack: &Stack) -> String {
    let config = std::fs::read_to_string(stack.repo.config()).unwrap();
    let staging = config
        .split("[environments.colony-dev]")
        .nth(1)
        .unwrap()
        .replace("[environments.colony-dev.", "[environments.colony-staging.")
        .replace(
            "namespace = \"colony-dev\"",
            "namespace = \"colony-staging\"",
        )
        .replace("APP_ENV = \"dev\"", "APP_ENV = \"staging\"");
    std::fs::write(
        stack.repo.config(),
        format!("{config}\n[environments.colony-staging]{staging}"),
    )
    .unwrap();
    let staged = stack.xtask(&["deploy", "colony-staging", "--yes"]);
    assert_eq!(staged.code, 0, "{}", staged.all());
    let image = backend_image(stack, "colony-staging");
    assert!(image.contains("@sha256:"), "{image}");
    image
}

/// The backend image the environment's running release recorded.
fn backend_image(stack: &Stack, env: &str) -> String {
    let run = stack.xtask(&["status", env, "--json"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let status: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    status["history"].as_array().unwrap().last().unwrap()["record"]["backend_image"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A registry over TLS with a certificate of a private CA, trusted as
/// dockerd trusts it (its CA in certs.d): pushed to, pulled from by the
/// pods, and read over HTTPS for the next deploy's nothing-to-deploy.
#[test]
fn a_registry_with_a_private_ca_in_certs_d_is_deployed_from() {
    let bed = testkit::TestBed::get();
    let stack = Stack::new(None);
    let registry = format!("{}/{}", bed.tls_registry, common::unique("tls"));
    let deploy = || {
        stack.xtask_with(
            &["deploy", "colony-dev", "--yes"],
            &[("COLONY_REGISTRY", &registry)],
        )
    };
    let first = deploy();
    assert_eq!(first.code, 0, "{}", first.all());
    assert_contains(&first.stdout, "4/4 checks passed");
    assert!(
        backend_image(&stack, "colony-dev")
            .starts_with(&format!("{registry}/e2e-colony-backend@sha256:")),
        "{}",
        first.stdout
    );
    let again = deploy();
    assert_eq!(again.code, 0, "{}", again.all());
    assert_contains(&again.stdout, "Nothing to deploy");
}

/// `--images-from` where this environment's registry is another one: the
/// images are copied by digest, blob by blob, with the Docker config's
/// login, and the same digest is pinned and pulled by the pods.
#[test]
fn promotion_to_another_registry_copies_the_images_by_digest() {
    let bed = testkit::TestBed::get();
    let stack = Stack::new(None);
    let staging_image = deploy_staging(&stack);
    let digest = staging_image.split_once('@').unwrap().1;
    let promote = |registry: &str, extra: &[&str]| {
        let mut args = vec![
            "deploy",
            "colony-dev",
            "--yes",
            "--images-from",
            "colony-staging",
        ];
        args.extend(extra);
        stack.xtask_with(&args, &[("COLONY_REGISTRY", registry)])
    };

    // Another registry host (the bed's, by name): copied, pulled, verified.
    let elsewhere = format!("{}/{}", bed.named_registry, common::unique("promoted"));
    let promoted = promote(&elsewhere, &[]);
    assert_eq!(promoted.code, 0, "{}", promoted.all());
    assert_contains(&promoted.stdout, "copied by digest to");
    assert_contains(&promoted.stderr, "copying blob sha256:");
    assert_contains(&promoted.stdout, "4/4 checks passed");
    assert!(!promoted.stderr.contains("building"), "{}", promoted.stderr);
    assert_eq!(
        backend_image(&stack, "colony-dev"),
        format!("{elsewhere}/e2e-colony-backend@{digest}")
    );
    // Again: the target has it, nothing is sent.
    let again = promote(&elsewhere, &["--force"]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_contains(&again.stderr, "already there");
    assert!(!again.stderr.contains("copying blob"), "{}", again.stderr);

    // A registry behind a login: the copy pushes with the Docker config's
    // credentials and never shows them. The simulated cluster, like one
    // without imagePullSecrets, then cannot pull from it: the copy is done
    // and the rollout fails on the pull, as it would.
    log_in_to_the_auth_registry(&stack);
    let behind_login = format!("{}/{}", bed.auth_registry, common::unique("promoted"));
    let copied = promote(&behind_login, &["--force"]);
    assert!(
        !copied.all().contains(&bed.auth_password),
        "the password was printed"
    );
    assert_contains(
        &copied.stderr,
        &format!("-> {behind_login}/e2e-colony-backend: 1 manifest, "),
    );
    assert_eq!(copied.code, 1, "{}", copied.all());
    assert_contains(&copied.stderr, "ErrImagePull");
}

/// `docker login` to the bed's htpasswd registry, in the stack's HOME: the
/// tool pushes there; the simulated cluster, like one without
/// imagePullSecrets, cannot pull from it.
fn log_in_to_the_auth_registry(stack: &Stack) {
    let bed = testkit::TestBed::get();
    let docker_dir = stack.home.path().join(".docker");
    std::fs::create_dir_all(&docker_dir).unwrap();
    let auth = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", bed.auth_user, bed.auth_password))
    };
    std::fs::write(
        docker_dir.join("config.json"),
        format!(
            "{{\"auths\": {{\"{}\": {{\"auth\": \"{auth}\"}}}}}}",
            bed.auth_registry
        ),
    )
    .unwrap();
}

/// A deploy whose pods cannot pull, then the same deploy again (identical
/// inputs: Helm makes no new ReplicaSet): the second fails at once on the
/// same pods' pull error, not after waiting Helm's whole timeout for a
/// ReplicaSet that never comes.
#[test]
fn a_redeploy_of_identical_inputs_after_a_failure_fails_fast_on_the_same_pods() {
    let bed = testkit::TestBed::get();
    let stack = Stack::new(None);
    log_in_to_the_auth_registry(&stack);
    let unpullable = format!("{}/{}", bed.auth_registry, common::unique("unpullable"));
    let deploy_there = || {
        stack.xtask_with(
            &["deploy", "colony-dev", "--yes"],
            &[("COLONY_REGISTRY", &unpullable)],
        )
    };
    let first = deploy_there();
    assert_eq!(first.code, 1, "{}", first.all());
    assert_contains(&first.stderr, "ErrImagePull");
    let again = deploy_there();
    assert_eq!(again.code, 1, "{}", again.all());
    assert_contains(&again.stderr, "the rollout failed, so Helm was stopped");
    assert!(!again.stderr.contains("timed out"), "{}", again.stderr);
    assert_eq!(stack.helm_upgrades(), 2);
}

/// `--images-from`: staging's digests deployed to dev, no build, the
/// checkout at their commit.
#[test]
fn promotion_deploys_the_digests_another_environment_runs_without_a_build() {
    let stack = Stack::new(None);
    let staging_image = deploy_staging(&stack);
    assert!(staging_image.contains("@sha256:"), "{staging_image}");

    let promoted = stack.xtask(&[
        "deploy",
        "colony-dev",
        "--yes",
        "--images-from",
        "colony-staging",
    ]);
    assert_eq!(promoted.code, 0, "{}", promoted.all());
    assert_contains(
        &promoted.stdout,
        "what colony-staging runs, promoted (no build, no push)",
    );
    assert!(!promoted.stderr.contains("building"), "{}", promoted.stderr);
    assert_eq!(backend_image(&stack, "colony-dev"), staging_image);

    // A checkout at another commit: refused before anything.
    std::fs::write(
        stack.repo.root().join("frontend/index.html"),
        "<!-- later -->\n",
    )
    .unwrap();
    stack.repo.git(&["commit", "-qam", "later"]);
    let refused = stack.xtask(&[
        "deploy",
        "colony-dev",
        "--yes",
        "--images-from",
        "colony-staging",
    ]);
    assert_eq!(refused.code, 2, "{}", refused.all());
    assert_contains(
        &refused.stderr,
        "--images-from colony-staging: its images were built from commit",
    );
    assert_contains(&refused.stderr, "git checkout");
    let itself = stack.xtask(&[
        "deploy",
        "colony-dev",
        "--images-from",
        "colony-dev",
        "--dry-run",
    ]);
    assert_eq!(itself.code, 2, "{}", itself.all());
}

/// `-q` on any command: only the result (the summary on stdout), no
/// progress or echoed commands on stderr; `-v` anywhere on the line echoes
/// commands whole; both at once is a usage error.
#[test]
fn quiet_says_only_the_result_and_verbose_is_global() {
    let stack = Stack::new(None);
    let quiet = stack.xtask(&["deploy", "colony-dev", "--yes", "-q"]);
    assert_eq!(quiet.code, 0, "{}", quiet.all());
    assert_contains(&quiet.stdout, "4/4 checks passed");
    assert_eq!(quiet.stderr, "", "stderr of a quiet deploy");
    // With --yes nobody reads the plan before it runs: only the summary.
    assert!(
        !quiet.stdout.contains("Deploy plan for"),
        "{}",
        quiet.stdout
    );

    // Helm's command line is shortened unless -v, given before the command.
    let normal = stack.xtask(&["deploy", "colony-dev", "--yes", "--force"]);
    assert_contains(&normal.stderr, "more arguments");
    let verbose = stack.xtask(&["-v", "deploy", "colony-dev", "--yes", "--force"]);
    assert_eq!(verbose.code, 0, "{}", verbose.all());
    let helm = verbose
        .stderr
        .lines()
        .find(|l| l.starts_with("$ helm upgrade"))
        .expect("Helm's command echoed");
    assert!(!helm.contains("more arguments"), "{helm}");
    assert_contains(helm, " -f ");
    let status = stack.xtask(&["status", "colony-dev", "--quiet"]);
    assert_eq!(status.code, 0, "{}", status.all());
    assert_eq!(status.stderr, "", "stderr of a quiet status");

    // On a terminal too: no live pod lines, no backup lines, the result.
    let screen = on_a_terminal(&stack, "deploy colony-dev --yes --force -q");
    assert_contains(&screen, "4/4 checks passed");
    for progress in ["pod colony-backend-", "backup: ", "ready ("] {
        assert!(
            !screen.contains(progress),
            "{progress:?} on a quiet terminal: {screen}"
        );
    }

    let both = stack.xtask(&["deploy", "colony-dev", "-q", "-v"]);
    assert_eq!(both.code, 2, "{}", both.all());
    assert_contains(&both.stderr, "cannot be used with");
}
