//! A monorepo shaped differently from testdata/colony, as users' are: other
//! directory and repository names, another Alembic layout (`migrations/`
//! under `services/api`, revisions in a `db` version location), another
//! release name and three backend replicas. The whole story must work.

use crate::common::{assert_contains, stack::Stack};

/// Moves `from` to `to` in the stack's repo (git mv, parents made).
fn move_path(stack: &Stack, from: &str, to: &str) {
    let target = stack.repo.root().join(to);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    stack.repo.git(&["mv", from, to]);
}

fn rewrite(stack: &Stack, file: &str, edits: &[(&str, &str)]) {
    let path = stack.repo.root().join(file);
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{file} has no {from:?}");
        text = text.replace(from, to);
    }
    std::fs::write(path, text).unwrap();
}

/// A pre-Alembic database, a repo with `services/api` and `web`, Alembic's
/// scripts in `services/api/migrations` (its revisions in `db/versions`),
/// release `household` with three backend pods: the first deploy stamps and
/// migrates, verify passes on all three pods, a rollback takes the schema
/// and the app back.
#[test]
fn a_monorepo_of_another_shape_deploys_verifies_and_rolls_back() {
    let stack = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    move_path(&stack, "backend", "services/api");
    move_path(&stack, "frontend", "web");
    move_path(&stack, "services/api/alembic", "services/api/migrations");
    move_path(
        &stack,
        "services/api/migrations/versions",
        "services/api/db/versions",
    );
    rewrite(
        &stack,
        "services/api/alembic.ini",
        &[(
            "script_location = %(here)s/alembic",
            "script_location = %(here)s/migrations\nversion_locations = %(here)s/db/versions",
        )],
    );
    rewrite(
        &stack,
        "services/api/Dockerfile",
        &[(
            "COPY alembic /app/alembic",
            "COPY migrations /app/migrations\nCOPY db /app/db",
        )],
    );
    rewrite(
        &stack,
        "deploy.toml",
        &[
            (
                "release = \"colony\"",
                "release = \"household\"\nalembic_versions = \"services/api/db/versions\"",
            ),
            (
                "repository = \"e2e-colony-backend\"",
                "context = \"services/api\"\nrepository = \"household-api\"",
            ),
            (
                "repository = \"e2e-colony-frontend\"",
                "context = \"web\"\nrepository = \"household-web\"",
            ),
            // And pushed by this tool: the pods run what it pushed.
            (
                "[environments.colony-dev.images.backend]",
                "[environments.colony-dev.images]\npush = \"fast\"\n\n[environments.colony-dev.images.backend]",
            ),
        ],
    );
    std::fs::write(stack.values_file(), "backend:\n  replicas: 3\n").unwrap();
    let revision = "services/api/db/versions/0002_activity_and_comments.py";
    let activity_log = std::fs::read_to_string(stack.repo.root().join(revision)).unwrap();
    stack.repo.git(&["rm", "-qf", revision]);
    stack.repo.git(&["add", "-A"]);
    stack
        .repo
        .git(&["commit", "-qm", "another shape, baseline era"]);

    let first = stack.xtask(&["deploy", "colony-dev", "--yes"]);
    assert_eq!(first.code, 0, "{}", first.all());
    assert_contains(&first.stdout, "Detected pre-Alembic schema");
    assert_contains(&first.stdout, "3/3 pods of the newest ReplicaSet ready");
    assert_contains(&first.stdout, "/household-api@sha256:");
    assert_contains(&first.all(), "layers sent");

    std::fs::write(stack.repo.root().join(revision), activity_log).unwrap();
    stack.repo.git(&["add", "-A"]);
    stack.repo.git(&["commit", "-qm", "the activity log"]);
    let second = stack.xtask(&["deploy", "colony-dev", "--yes"]);
    assert_eq!(second.code, 0, "{}", second.all());
    assert_contains(&second.stdout, "0002_activity_and_comments (head)");
    // The SQL preview ran this machine's Alembic on the other layout.
    assert_contains(&second.stdout, "CREATE TABLE activity_log (");

    let rollback = stack.xtask(&["rollback", "--to", "0001_baseline", "--yes"]);
    assert_eq!(rollback.code, 0, "{}", rollback.all());
    assert_contains(&rollback.stdout, "All 4 checks passed");
}
