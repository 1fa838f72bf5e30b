//! The rehearsal: the pending migrations run on a restore of the fresh
//! backup, in a throwaway PostgreSQL (the bed's image of Debian's
//! postgresql-15), by the new backend image's own run-migrations and
//! Alembic, before Helm. Real Docker, real PostgreSQL, real Alembic.

use crate::common::assert_contains;
use crate::common::stack::{Stack, NAMESPACE};

fn deploy(stack: &Stack, extra: &[&str]) -> crate::common::Run {
    let mut args = vec!["deploy", "colony-dev", "--yes"];
    args.extend_from_slice(extra);
    stack.xtask(&args)
}

/// A stack deployed at 0002 on the pre-Alembic fixture (rows in chores).
fn deployed_at_0002() -> Stack {
    let stack = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    let first = deploy(&stack, &[]);
    assert_eq!(first.code, 0, "{}", first.all());
    stack
}

/// None of the rehearsal's containers (the database and each run beside
/// it carry its name as their label) is left behind.
fn assert_no_rehearsal_container(stderr: &str) {
    let name = stderr
        .split("started a throwaway PostgreSQL ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no rehearsal started:\n{stderr}"));
    let output = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=colony-deploy.rehearsal={name}"),
            "--format",
            "{{.Names}}",
        ])
        .env("DOCKER_HOST", &testkit::TestBed::get().docker_host)
        .output()
        .unwrap();
    assert!(output.status.success());
    let left = String::from_utf8_lossy(&output.stdout);
    assert!(
        left.trim().is_empty(),
        "{name}'s containers left behind:\n{left}"
    );
}

#[test]
fn a_clean_migration_is_rehearsed_with_the_new_image_then_deployed() {
    let stack = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    stack.commit_baseline_era();
    assert_eq!(deploy(&stack, &[]).code, 0);
    stack.repo.git(&["revert", "--no-edit", "HEAD"]);

    let run = deploy(&stack, &["--json"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let steps: Vec<&str> = summary["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "images",
            "backup",
            "rehearse",
            "helm-upgrade",
            "rollout",
            "verify"
        ]
    );
    let rehearsal = &summary["rehearsal"];
    assert_eq!(
        rehearsal["postgres_image"],
        testkit::TestBed::get().postgres_image.as_str()
    );
    assert_eq!(rehearsal["downgrade_proven"], true, "{rehearsal}");
    // The fixture's three tables and its rows, plus alembic_version.
    assert_eq!(rehearsal["restored_tables"], 4, "{rehearsal}");
    assert_eq!(rehearsal["restored_rows"], 13, "{rehearsal}");
    assert_eq!(rehearsal["upgrade"][0]["from"], "0001_baseline");
    assert_eq!(rehearsal["upgrade"][0]["to"], "0002_activity_and_comments");
    assert_eq!(rehearsal["downgrade"][0]["to"], "0001_baseline");
    // New tables are invisible until the commit and so never locked;
    // their foreign keys lock households SHARE ROW EXCLUSIVE, not more.
    assert_eq!(rehearsal["locks"], serde_json::json!([]), "{rehearsal}");
    // The image's own run-migrations ran it: its lines are relayed.
    assert_contains(&run.stderr, "rehearsal:   | Migrations complete.");
    // Recorded with the release, and shown by status.
    let status = stack.xtask(&["status"]);
    assert_contains(&status.stdout, "rehearsal 0002_activity_and_comments");
    assert_contains(
        &status.stdout,
        "downgrade proven; backup restored: 4 tables 13 rows",
    );
    // The real database was not touched by the rehearsal's downgrade.
    assert_eq!(stack.psql("SELECT count(*) FROM households"), "3");
    assert_no_rehearsal_container(&run.stderr);
}

#[test]
fn a_not_null_column_on_a_table_with_rows_stops_the_deploy_before_helm() {
    let stack = deployed_at_0002();
    let revisions = stack.helm_revisions();
    stack.commit_revision(
        "0003_points",
        "0002_activity_and_comments",
        "Points for chores",
        "    op.add_column(\"chores\", sa.Column(\"points\", sa.Integer, nullable=False))",
    );
    let run = deploy(&stack, &[]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(&run.stderr, "during step rehearse");
    assert_contains(
        &run.stderr,
        "the rehearsal failed, so Helm was not run and the cluster is unchanged",
    );
    assert_contains(
        &run.stderr,
        "upgrade (to 0003_points) failed (exit 1) in revision 0003_points",
    );
    assert_contains(&run.stderr, "NotNullViolation");
    assert_contains(
        &run.stderr,
        "statement: ALTER TABLE chores ADD COLUMN points INTEGER NOT NULL",
    );
    assert_eq!(
        stack.helm_revisions(),
        revisions,
        "Helm ran after a failed rehearsal"
    );
    assert_eq!(
        stack.psql("SELECT version_num FROM alembic_version"),
        "0002_activity_and_comments"
    );
    assert_eq!(
        stack.psql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'chores' AND column_name = 'points'"),
        "0"
    );
    let releases = stack.sim.state().releases[&format!("{NAMESPACE}/colony")].clone();
    assert_eq!(releases.last().unwrap().status, "deployed");
    assert_no_rehearsal_container(&run.stderr);
}

#[test]
fn a_downgrade_that_fails_is_found_before_helm() {
    let stack = deployed_at_0002();
    let revisions = stack.helm_revisions();
    let script = "\"\"\"Tags\n\nRevision ID: 0003_tags\nRevises: 0002_activity_and_comments\n\"\"\"\n\
                  import sqlalchemy as sa\nfrom alembic import op\n\n\
                  revision = \"0003_tags\"\ndown_revision = \"0002_activity_and_comments\"\n\n\n\
                  def upgrade() -> None:\n    op.create_table(\"tags\", sa.Column(\"id\", sa.Integer, primary_key=True))\n\n\n\
                  def downgrade() -> None:\n    op.drop_table(\"tag\")\n";
    let path = "backend/alembic/versions/0003_tags.py";
    std::fs::write(stack.repo.root().join(path), script).unwrap();
    stack.repo.git(&["add", path]);
    stack.repo.git(&["commit", "-q", "-m", "Tags"]);

    let run = deploy(&stack, &[]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(
        &run.stderr,
        "the rehearsal's downgrade (to 0002_activity_and_comments) failed",
    );
    assert_contains(&run.stderr, "UndefinedTable");
    assert_contains(&run.stderr, "statement: DROP TABLE tag");
    assert_eq!(stack.helm_revisions(), revisions);
    assert_eq!(stack.psql("SELECT to_regclass('tags') IS NULL"), "t");
    assert_no_rehearsal_container(&run.stderr);
}

#[test]
fn strict_migrations_refuse_what_was_not_rehearsed_or_not_linted() {
    let stack = deployed_at_0002();
    stack.commit_revision_both_ways(
        "0003_note",
        "0002_activity_and_comments",
        "A note on households",
        // A slow one: the lock is held until the revision commits.
        "    op.add_column(\"households\", sa.Column(\"note\", sa.Text, nullable=True))\n    \
         op.execute(\"SELECT pg_sleep(0.4)\")",
        "    op.drop_column(\"households\", \"note\")",
    );
    let backups = stack.backups();
    let run = deploy(&stack, &["--strict-migrations", "--no-rehearsal"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert_contains(
        &run.stderr,
        "strict migrations: the pending migrations cannot be rehearsed (--no-rehearsal)",
    );
    // No Alembic on the deploying machine: no SQL, so nothing linted.
    let path = format!("{}:{}", stack.sim.bin_dir().display(), "/usr/bin:/bin");
    let run = stack.xtask_with(
        &["deploy", "colony-dev", "--yes", "--strict-migrations"],
        &[("PATH", &path)],
    );
    assert_eq!(run.code, 2, "{}", run.all());
    assert_contains(
        &run.stderr,
        "strict migrations: revision 0003_note could not be rendered offline, so it was not linted",
    );
    assert_eq!(stack.backups(), backups, "a refused deploy took a backup");
    // Without --strict-migrations the same checkout deploys, rehearsed; the
    // new column locks households ACCESS EXCLUSIVE, and the rehearsal saw it.
    let run = deploy(&stack, &["--json"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let locks = &summary["rehearsal"]["locks"];
    assert_eq!(locks[0]["table"], "households", "{locks}");
    let held = locks[0]["held"].as_f64().unwrap();
    assert!((0.35..5.0).contains(&held), "{locks}");
}
