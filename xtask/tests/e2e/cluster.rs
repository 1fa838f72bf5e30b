//! verify and backup against the simulated cluster, with the real chart,
//! registry, PostgreSQL, Alembic and run-migrations behind it.

use crate::common::assert_contains;
use crate::common::stack::{assert_in_order, Stack, NAMESPACE};
use testkit::TestBed;

fn assert_installed(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "helm upgrade --install failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_fresh_install_verifies() {
    let stack = Stack::new(None);
    assert_installed(&stack.helm_install(&["--wait=watcher", "--timeout", "2m"]));
    let run = stack.xtask(&["verify", "colony-dev"]);
    assert_eq!(run.code, 0, "{}", run.all());
    for line in [
        "✓ backend deployment",
        "✓ rollout complete",
        "2/2 pods of the newest ReplicaSet ready",
        "✓ alembic current",
        "0002_activity_and_comments (head) in colony-backend-",
        "2/2 end with \"Migrations complete.\"; no stamp was needed",
        "All 4 checks passed.",
    ] {
        assert_contains(&run.stdout, line);
    }
    // Verify read the Deployment, its ReplicaSets and the backend pods (at
    // once, so in any order), then asked the newest ReplicaSet's pods
    // (alembic and the logs at once, so in either order).
    let calls = stack.calls();
    for read in [
        "kubectl --context homelab --namespace colony-dev get deployments --selector app.kubernetes.io/instance=colony,app.kubernetes.io/component=backend -o json",
        "kubectl --context homelab --namespace colony-dev get replicasets --selector app.kubernetes.io/instance=colony,app.kubernetes.io/component=backend -o json",
        "kubectl --context homelab --namespace colony-dev get pods --selector app.kubernetes.io/instance=colony,app.kubernetes.io/component=backend -o json",
    ] {
        for asked in [
            "--container backend -- alembic current",
            "--container run-migrations",
        ] {
            assert_in_order(&calls, &["helm upgrade --install colony ./helm/colony", read, asked]);
        }
    }
}

#[test]
fn a_pre_alembic_database_is_stamped_and_verify_says_so() {
    let stack = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    assert_installed(&stack.helm_install(&["--wait=watcher", "--timeout", "2m"]));
    let run = stack.xtask(&["verify", "--json"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["passed"], true);
    let log_check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "migrations log")
        .expect("a migrations log check");
    assert!(
        log_check["detail"]
            .as_str()
            .unwrap()
            .contains("stamped the pre-Alembic schema first"),
        "{log_check}"
    );
    assert_eq!(stack.psql("SELECT count(*) FROM households"), "3");
}

#[test]
fn a_crash_looping_new_replicaset_fails_verify_with_its_own_log() {
    let stack = Stack::new(None);
    assert_installed(&stack.helm_install(&["--wait=watcher", "--timeout", "2m"]));
    let old_pods: Vec<String> = stack
        .sim
        .state()
        .pods
        .iter()
        .filter(|p| !p.database)
        .map(|p| p.name.clone())
        .collect();

    // A new build whose migration raises: its pods crash-loop, the old ones keep serving.
    stack.commit_broken_migration();
    let output = stack.helm_install(&[]);
    assert_installed(&output);

    let run = stack.xtask(&["verify"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(&run.stdout, "✗ rollout complete");
    assert_contains(
        &run.stdout,
        "Init:CrashLoopBackOff, run-migrations exited 1",
    );
    assert_contains(&run.stdout, "pod(s) of an older ReplicaSet still serving");
    assert_contains(&run.stdout, "this migration is broken on purpose");
    for old in &old_pods {
        assert!(
            !run.all().contains(old.as_str()),
            "verify looked at the old pod {old}:\n{}",
            run.all()
        );
        assert!(
            !stack.calls().iter().any(|c| c.contains(old.as_str())),
            "kubectl was asked about the old pod {old}"
        );
    }
}

#[test]
fn a_database_behind_head_fails_verify_naming_both_revisions() {
    let stack = Stack::new(None);
    assert_installed(&stack.helm_install(&["--wait=watcher", "--timeout", "2m"]));
    // As if the runner never ran this revision's migrations.
    stack.alembic(&["downgrade", "0001_baseline"]);
    let run = stack.xtask(&["verify"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(&run.stdout, "✗ alembic current");
    assert_contains(
        &run.stdout,
        "the database is at 0001_baseline, expected 0002_activity_and_comments (head)",
    );
    assert_contains(
        &run.stdout,
        "next: kubectl --context homelab --namespace colony-dev logs",
    );
}

#[test]
fn a_backup_is_private_checked_and_restorable() {
    let stack = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    assert_installed(&stack.helm_install(&["--wait=watcher", "--timeout", "2m"]));
    stack.psql("INSERT INTO activity_log (household_id, message) VALUES (1, 'bins out'), (2, 'kettle descaled')");

    let run = stack.xtask(&["backup", "colony-dev"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let dumps: Vec<_> = std::fs::read_dir(stack.backup_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dumps.len(), 1, "{dumps:?}");
    let dump = &dumps[0];
    let name = dump.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with(&format!("{NAMESPACE}-"))
            && name.ends_with(".dump")
            && name.contains("Z-"),
        "{name}"
    );
    assert_contains(&run.stdout, &dump.display().to_string());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(dump).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Restore into a scratch database with the project's own script.
    let bed = TestBed::get();
    let scratch = bed.create_database("restored");
    let restore =
        std::process::Command::new(testkit::workspace_root().join("scripts/restore-db.sh"))
            .args(["--yes", NAMESPACE])
            .arg(dump)
            .env("DATABASE_URL", &scratch)
            .output()
            .unwrap();
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    let counts = "SELECT (SELECT count(*) FROM households) || '/' || (SELECT count(*) FROM chores) || '/' || \
                  (SELECT count(*) FROM activity_log) || '/' || (SELECT version_num FROM alembic_version)";
    assert_eq!(bed.psql(&scratch, counts), stack.psql(counts));
    assert_eq!(stack.psql(counts), "3/5/2/0002_activity_and_comments");
}

#[test]
fn backups_started_in_the_same_second_do_not_collide() {
    let stack = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    assert_installed(&stack.helm_install(&["--wait=watcher", "--timeout", "2m"]));
    let runs: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| stack.xtask(&["backup", "colony-dev"])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for run in &runs {
        assert_eq!(run.code, 0, "{}", run.all());
    }
    let mut files: Vec<String> = std::fs::read_dir(stack.backup_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        4,
        "four backups, four files, no partial left: {files:?}"
    );
    assert!(files.iter().all(|f| f.ends_with(".dump")), "{files:?}");
}

#[test]
fn a_failing_pg_dump_leaves_no_file_and_fails() {
    let stack = Stack::new(None);
    assert_installed(&stack.helm_install(&["--wait=watcher", "--timeout", "2m"]));
    stack.sim.faults(|f| f.pg_dump_fails = true);
    let run = stack.xtask(&["backup", "colony-dev"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(&run.stderr, "pg_dump in pod/colony-database-0 failed");
    assert_contains(&run.stderr, "the backup failed");
    let left: Vec<_> = std::fs::read_dir(stack.backup_dir())
        .map(|d| d.count())
        .into_iter()
        .collect();
    assert!(
        left.is_empty() || left == [0],
        "files left in the backup directory"
    );
}

#[test]
fn restore_refuses_without_confirmation() {
    let dump = tempfile::NamedTempFile::new().unwrap();
    let output =
        std::process::Command::new(testkit::workspace_root().join("scripts/restore-db.sh"))
            .args([NAMESPACE])
            .arg(dump.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
    assert!(!output.status.success());
    // An empty file is not an archive: refused before any question.
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a pg_dump archive"));
}
