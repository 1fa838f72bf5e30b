//! The rehearsal: the pending migrations run on a restore of the fresh
//! backup, in a throwaway PostgreSQL (the bed's image of Debian's
//! postgresql-15), by the new backend image's own run-migrations and
//! Alembic, before Helm. Real Docker, real PostgreSQL, real Alembic.

use crate::common::stack::{Stack, NAMESPACE};
use crate::common::{assert_contains, assert_no_rehearsal_left};

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
        rehearsal["postgres"],
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
    assert_no_rehearsal_left(&run.stderr);
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
    assert_no_rehearsal_left(&run.stderr);
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
    assert_no_rehearsal_left(&run.stderr);
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

#[test]
fn rehearse_on_its_own_needs_the_pushed_image_and_changes_nothing_of_the_release() {
    let stack = deployed_at_0002();
    let nothing = stack.xtask(&["rehearse"]);
    assert_eq!(nothing.code, 0, "{}", nothing.all());
    assert_contains(
        &nothing.stdout,
        "colony-dev: no migration is pending; nothing to rehearse",
    );

    stack.commit_revision_both_ways(
        "0003_note",
        "0002_activity_and_comments",
        "A note on households",
        "    op.add_column(\"households\", sa.Column(\"note\", sa.Text, nullable=True))",
        "    op.drop_column(\"households\", \"note\")",
    );
    let calls = stack.calls().len();
    let unpushed = stack.xtask(&["rehearse"]);
    assert_eq!(unpushed.code, 2, "{}", unpushed.all());
    assert_contains(
        &unpushed.stderr,
        "cannot rehearse colony-dev; nothing was changed",
    );
    assert_contains(
        &unpushed.stderr,
        "is not in the registry: `cargo xtask push colony-dev` first",
    );
    crate::common::stack::assert_no_mutating_call(&stack.calls_since(calls));

    stack.push_images();
    let (revisions, backups) = (stack.helm_revisions(), stack.backups());
    let run = stack.xtask(&["rehearse", "--json"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let result: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        result["rehearsal"]["upgrade"][0]["to"], "0003_note",
        "{result}"
    );
    assert_eq!(result["rehearsal"]["downgrade_proven"], true);
    let steps: Vec<&str> = result["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["backup", "rehearse"]);
    assert_eq!(stack.backups(), backups + 1, "a fresh backup");
    assert_eq!(stack.helm_revisions(), revisions, "the release changed");
    assert_eq!(
        stack.psql("SELECT version_num FROM alembic_version"),
        "0002_activity_and_comments"
    );
    assert_no_rehearsal_left(&run.stderr);
}

/// Unrehearsed (`--no-rehearsal`), a downgrade that fails halfway: the
/// rollback says where the database is, what the running app would do to
/// it on a restart, and both ways out.
#[test]
fn a_rollback_whose_downgrade_fails_midway_says_where_the_database_is_and_the_ways_out() {
    let stack = deployed_at_0002();
    stack.commit_revision_both_ways(
        "0003_tags",
        "0002_activity_and_comments",
        "Tags",
        "    op.create_table(\"tags\", sa.Column(\"id\", sa.Integer, primary_key=True))",
        "    op.drop_table(\"tag\")",
    );
    stack.commit_revision_both_ways(
        "0004_tag_name",
        "0003_tags",
        "Tag names",
        "    op.add_column(\"tags\", sa.Column(\"name\", sa.Text, nullable=True))",
        "    op.drop_column(\"tags\", \"name\")",
    );
    let run = deploy(&stack, &["--no-rehearsal"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_contains(&run.stdout, "not rehearsed: --no-rehearsal");

    let run = stack.xtask(&["rollback", "--to", "0002_activity_and_comments", "--yes"]);
    assert_eq!(run.code, 1, "{}", run.all());
    for expected in [
        "`alembic downgrade 0002_activity_and_comments` in colony-backend-",
        "so the app was not rolled back",
        "the database is now at: 0003_tags",
        "the running app expects 0004_tag_name: a pod of it that restarts runs its init container, \
         which upgrades the database to 0004_tag_name again",
        "ways out: restore the backup this rollback took, `scripts/restore-db.sh --context homelab \
         --release colony colony-dev ",
        "or go forward, `cargo xtask deploy colony-dev`",
    ] {
        assert_contains(&run.stderr, expected);
    }
    assert_eq!(
        stack.psql("SELECT version_num FROM alembic_version"),
        "0003_tags"
    );
}

/// Rendering the SQL runs the checkout's Python on the deploying machine:
/// it sees none of the deployer's secrets, only what deploy.toml lets in.
#[test]
fn the_preview_runs_the_checkout_s_code_without_the_deployer_s_secrets() {
    let stack = Stack::new(None);
    stack.commit_revision(
        "0003_peek",
        "0002_activity_and_comments",
        "Peek at the environment",
        "    import os\n    \
         seen = ','.join(k for k in ('PGPASSWORD', 'API_TOKEN', 'PREVIEW_OK') if k in os.environ)\n    \
         op.execute(f\"COMMENT ON TABLE chores IS 'seen: {seen}.'\")",
    );
    let secrets = [
        ("PGPASSWORD", "pg-pa55word"),
        ("API_TOKEN", "tok-123"),
        ("PREVIEW_OK", "yes"),
    ];
    let run = stack.xtask_with(
        &["migrations", "--from", "0002_activity_and_comments"],
        &secrets,
    );
    assert_eq!(run.code, 0, "{}", run.all());
    assert_contains(&run.stdout, "COMMENT ON TABLE chores IS 'seen: .';");
    let config = std::fs::read_to_string(stack.repo.config()).unwrap();
    std::fs::write(
        stack.repo.config(),
        format!("{config}\n[environments.colony-dev.migrations]\npreview_env = [\"PREVIEW_OK\"]\n"),
    )
    .unwrap();
    let run = stack.xtask_with(
        &["migrations", "--from", "0002_activity_and_comments"],
        &secrets,
    );
    assert_eq!(run.code, 0, "{}", run.all());
    assert_contains(
        &run.stdout,
        "COMMENT ON TABLE chores IS 'seen: PREVIEW_OK.';",
    );
}

/// The chart's database name and role are the pod's; the backup dumps
/// those (the simulated pod refuses others, as PostgreSQL does).
#[test]
fn a_custom_database_name_and_user_are_what_gets_dumped() {
    let stack = Stack::new(None);
    std::fs::write(
        stack.values_file(),
        "backend:\n  replicas: 2\ndatabase:\n  internal:\n    name: households_db\n    user: colony_app\n",
    )
    .unwrap();
    let first = deploy(&stack, &[]);
    assert_eq!(first.code, 0, "{}", first.all());
    // The script's defaults (colony/colony) are not this database's.
    let script = stack.repo.root().join("scripts/backup-db.sh");
    let env = stack.env();
    let wrong = std::process::Command::new(&script)
        .args(["--context", "homelab", "--release", "colony", NAMESPACE])
        .arg(stack.backup_dir())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("DATABASE_URL")
        .current_dir(stack.repo.root())
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert_contains(
        &String::from_utf8_lossy(&wrong.stderr),
        "FATAL:  role \"colony\" does not exist",
    );

    let run = deploy(&stack, &["--force"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_contains(
        &run.stdout,
        "--in-chart --db-user colony_app --db-name households_db colony-dev",
    );
    assert_contains(
        &run.stdout,
        "dumps database households_db as colony_app in pod colony-database-0",
    );
    assert!(stack.backups() >= 1, "{}", run.all());
}

/// After a deploy whose new pods never became ready, the plan still knows
/// the database's revision: the database pod is asked with psql.
#[test]
fn after_a_failed_deploy_the_plan_still_knows_the_database_revision() {
    let stack = deployed_at_0002();
    stack.commit_broken_migration();
    let failed = deploy(&stack, &["--no-rehearsal"]);
    assert_eq!(failed.code, 1, "{}", failed.all());
    let planned = stack.xtask(&["deploy", "colony-dev", "--dry-run", "--json"]);
    assert_eq!(planned.code, 0, "{}", planned.all());
    let plan: serde_json::Value = serde_json::from_str(&planned.stdout).unwrap();
    assert_eq!(
        plan["facts"]["database"], "0002_activity_and_comments",
        "{plan:#}"
    );
    assert_eq!(plan["migrations"]["from"], "0002_activity_and_comments");
    let calls = stack.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.contains("exec colony-database-0 -- psql") && c.contains("alembic_version")),
        "{calls:#?}"
    );
}

/// The restore script: all or nothing, and not under a connected app.
#[test]
fn a_restore_refuses_while_sessions_are_connected_and_is_one_transaction() {
    let stack = deployed_at_0002();
    let backup = stack.xtask(&["backup", "colony-dev", "--json"]);
    assert_eq!(backup.code, 0, "{}", backup.all());
    let path: serde_json::Value = serde_json::from_str(&backup.stdout).unwrap();
    let dump = path["path"].as_str().unwrap().to_string();
    let bed = testkit::TestBed::get();
    let scratch = bed.create_database("restore_target");
    // An app's session on the target.
    let mut app = std::process::Command::new("psql")
        .args([scratch.as_str(), "-XAtq"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        writeln!(app.stdin.as_mut().unwrap(), "SELECT 1;").unwrap();
    }
    let connected = || {
        bed.psql(&scratch, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while connected() == "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "the app never connected"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let restore = |extra: &[&str]| {
        std::process::Command::new(testkit::workspace_root().join("scripts/restore-db.sh"))
            .args(["--yes"])
            .args(extra)
            .args([NAMESPACE, &dump])
            .env("DATABASE_URL", &scratch)
            .output()
            .unwrap()
    };
    let refused = restore(&[]);
    assert!(!refused.status.success());
    assert_contains(
        &String::from_utf8_lossy(&refused.stderr),
        "1 other session(s) are connected to the database",
    );
    assert_eq!(
        bed.psql(&scratch, "SELECT to_regclass('households') IS NULL"),
        "t"
    );
    let told = restore(&["--while-connected"]);
    assert!(
        told.status.success(),
        "{}",
        String::from_utf8_lossy(&told.stderr)
    );
    assert_eq!(bed.psql(&scratch, "SELECT count(*) FROM households"), "3");
    let _ = app.kill();
    let _ = app.wait();
}

/// Under --strict-migrations, what the preview could not check refuses the
/// deploy (exit 2, nothing built or backed up): a syntax error, a query
/// through op.get_bind(), a DROP hidden in a DO block, an env.py without
/// an offline mode.
#[test]
fn strict_migrations_refuse_what_the_lint_could_not_see() {
    let stack = deployed_at_0002();
    let strict = |stack: &Stack| {
        let backups = stack.backups();
        let run = deploy(stack, &["--strict-migrations"]);
        assert_eq!(run.code, 2, "{}", run.all());
        assert_eq!(stack.backups(), backups, "a refused deploy took a backup");
        run.stderr
    };
    let cases = [
        (
            "0003_typo",
            "    op.add_column(\"chores\" sa.Column(\"x\", sa.Integer))",
            "revision 0003_typo could not be rendered offline, so it was not linted",
        ),
        (
            "0003_query",
            "    n = op.get_bind().execute(sa.text(\"SELECT count(*) FROM chores\")).scalar()\n    \
             op.execute(f\"COMMENT ON TABLE chores IS '{int(n)}'\")",
            "revision 0003_query could not be rendered offline, so it was not linted",
        ),
        (
            "0003_hidden",
            "    op.execute(\"DO $$ BEGIN EXECUTE 'DROP TABLE comments'; END $$\")",
            "revision 0003_hidden runs SQL inside a DO block or EXECUTE, which the lint cannot see into",
        ),
    ];
    for (id, body, expected) in cases {
        stack.commit_revision(id, "0002_activity_and_comments", "case", body);
        assert_contains(&strict(&stack), expected);
        stack.repo.git(&["reset", "-q", "--hard", "HEAD~1"]);
    }
    // An env.py with no offline mode renders nothing.
    let env_py = stack.repo.root().join("backend/alembic/env.py");
    let text = std::fs::read_to_string(&env_py).unwrap();
    std::fs::write(
        &env_py,
        text.replace(
            "if context.is_offline_mode():\n    run_migrations_offline()\nelse:\n    run_migrations_online()",
            "if context.is_offline_mode():\n    raise SystemExit('no offline mode')\nrun_migrations_online()",
        ),
    )
    .unwrap();
    stack.commit_revision_both_ways(
        "0003_note",
        "0002_activity_and_comments",
        "A note",
        "    op.add_column(\"households\", sa.Column(\"note\", sa.Text))",
        "    op.drop_column(\"households\", \"note\")",
    );
    assert_contains(
        &strict(&stack),
        "revision 0003_note could not be rendered offline, so it was not linted",
    );
}

/// `rehearsal.engine = "local"`: this machine's initdb/pg_ctl (the bed's
/// postgresql-15; as root the server runs as `postgres`), on a socket that
/// the backend image's containers get mounted, with no network.
#[test]
fn the_local_engine_rehearses_with_this_machine_s_postgresql() {
    let stack = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    stack.commit_baseline_era();
    assert_eq!(deploy(&stack, &[]).code, 0);
    stack.repo.git(&["revert", "--no-edit", "HEAD"]);
    let config = std::fs::read_to_string(stack.repo.config()).unwrap();
    let local = config.replace("image = \"colony-bed/postgres:15\"", "engine = \"local\"");
    assert_ne!(config, local, "the fixture's rehearsal section moved");
    std::fs::write(stack.repo.config(), local).unwrap();

    let refused = stack.xtask_with(
        &["deploy", "colony-dev", "--yes"],
        &[("DOCKER_HOST", "tcp://127.0.0.1:9")],
    );
    assert_eq!(refused.code, 2, "{}", refused.all());
    assert_contains(
        &refused.all(),
        "rehearsal.engine = \"local\" runs PostgreSQL on this machine and mounts its socket",
    );

    let plan = deploy(&stack, &["--dry-run"]);
    assert_contains(
        &plan.stdout,
        "this machine's initdb/pg_ctl of the backup's major version, a socket only",
    );
    let run = deploy(&stack, &["--json"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let rehearsal = &summary["rehearsal"];
    assert!(
        rehearsal["postgres"]
            .as_str()
            .unwrap()
            .starts_with("local PostgreSQL 15."),
        "{rehearsal}"
    );
    assert_eq!(rehearsal["downgrade_proven"], true, "{rehearsal}");
    assert_eq!(rehearsal["restored_rows"], 13, "{rehearsal}");
    assert_eq!(rehearsal["upgrade"][0]["to"], "0002_activity_and_comments");
    assert_contains(&run.stderr, "rehearsal:   | Migrations complete.");
    // The server's directory is gone, and every container beside it.
    assert_no_rehearsal_left(&run.stderr);
}

/// An external database (`database.mode: external`) and no backend pod to
/// ask after a failed deploy: the revision is read through this shell's
/// DATABASE_URL, the database the backup dumps.
#[test]
fn after_a_failed_deploy_an_external_database_is_asked_through_database_url() {
    let stack = Stack::new(None);
    let values = std::fs::read_to_string(stack.values_file()).unwrap_or_default();
    std::fs::write(
        stack.values_file(),
        format!("{values}\ndatabase:\n  mode: external\n  existingSecret: colony-db\n"),
    )
    .unwrap();
    let url = [("DATABASE_URL", stack.database_url.as_str())];
    let first = stack.xtask_with(&["deploy", "colony-dev", "--yes"], &url);
    assert_eq!(first.code, 0, "{}", first.all());
    assert_contains(&first.stdout, "the external database of DATABASE_URL");
    stack.commit_broken_migration();
    let failed = stack.xtask_with(&["deploy", "colony-dev", "--yes", "--no-rehearsal"], &url);
    assert_eq!(failed.code, 1, "{}", failed.all());

    let planned = stack.xtask_with(&["deploy", "colony-dev", "--dry-run", "--json"], &url);
    assert_eq!(planned.code, 0, "{}", planned.all());
    let plan: serde_json::Value = serde_json::from_str(&planned.stdout).unwrap();
    assert_eq!(
        plan["facts"]["database"], "0002_activity_and_comments",
        "{plan:#}"
    );
    // Without the URL the tool cannot reach it, and says so.
    let blind = stack.xtask(&["deploy", "colony-dev", "--dry-run", "--json"]);
    let plan: serde_json::Value = serde_json::from_str(&blind.stdout).unwrap();
    assert_ne!(plan["facts"]["database"], "0002_activity_and_comments");
}

/// The database moved between the plan and Helm (an `alembic downgrade`
/// typed by hand while the rehearsal ran): Helm is not run on a schema the
/// deploy was not planned for.
#[test]
fn helm_is_not_run_when_the_database_moved_since_the_plan() {
    let stack = deployed_at_0002();
    let revisions = stack.helm_revisions();
    stack.commit_revision(
        "0003_slow",
        "0002_activity_and_comments",
        "A slow one",
        "    op.execute(\"SELECT pg_sleep(3)\")",
    );
    let started = crate::common::background::start(&stack, &["deploy", "colony-dev", "--yes"]);
    started.wait_for(
        || {
            started
                .stderr()
                .contains("upgrading 0002_activity_and_comments -> 0003_slow")
        },
        "the rehearsal's upgrade",
    );
    stack.alembic(&["downgrade", "0001_baseline"]);
    let (code, stderr) = started.exit_code();
    assert_eq!(code, 1, "{stderr}");
    assert_contains(
        &stderr,
        "the database is at 0001_baseline, not at 0002_activity_and_comments as when this deploy was planned",
    );
    assert_eq!(stack.helm_revisions(), revisions, "Helm ran:\n{stderr}");
}
