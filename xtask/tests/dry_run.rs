//! `deploy --dry-run` prints the exact plan and touches nothing.

mod common;

use common::{assert_snapshot, xtask};
use testkit::{ColonyRepo, TestBed, ToolDir};

const SECRETS: &[(&str, &str)] = &[
    (
        "DATABASE_URL",
        "postgresql://colony:db-pa55word@db:5432/colony",
    ),
    ("PGPASSWORD", "pg-pa55word"),
    ("COLONY_REGISTRY_PASSWORD", "registry-pa55word"),
    (
        "DOCKER_AUTH_CONFIG",
        "{\"auths\":{\"r\":{\"auth\":\"dXNlcjpyZWdpc3RyeS1wYTU1\"}}}",
    ),
];

#[test]
fn the_plan_for_colony_dev_matches_the_reviewed_snapshot() {
    let repo = ColonyRepo::create();
    let home = tempfile::tempdir().unwrap();
    let values = home.path().join("homelab/colony-dev/my-values.yaml");
    std::fs::create_dir_all(values.parent().unwrap()).unwrap();
    std::fs::write(&values, "ingress:\n  enabled: true\n").unwrap();
    // Real git and the test bed's real helm (for its version); anything
    // that would act on a cluster, an image or a database only records.
    let tools = ToolDir::new(&["git"], &[("helm", &TestBed::get().helm)])
        .with_recorders(&["kubectl", "docker", "pg_dump", "alembic"]);

    let mut env = vec![
        ("PATH", tools.path().to_str().unwrap()),
        ("HOME", home.path().to_str().unwrap()),
        ("COLONY_CONFIG", "deploy.toml"),
    ];
    env.extend_from_slice(SECRETS);
    let run = xtask(repo.root(), &["deploy", "colony-dev", "--dry-run"], &env);
    assert_eq!(run.code, 0, "{}", run.all());

    for (name, secret) in SECRETS {
        assert!(!run.all().contains(secret), "the plan shows {name}");
    }
    assert_eq!(
        tools.calls(),
        Vec::<String>::new(),
        "the dry run ran a tool"
    );

    // Only the temp paths and the commit (which covers this workspace's
    // helm/ and scripts/) vary; the plan's shape is what is reviewed.
    let sha = repo.git(&["rev-parse", "HEAD"]);
    let plan = run
        .stdout
        .replace(&sha, "<git sha>")
        .replace(&sha[..12], "<short sha>")
        .replace(home.path().to_str().unwrap(), "<home>")
        .replace(repo.root().to_str().unwrap(), "<root>");
    assert_snapshot("dry-run-colony-dev.txt", &plan);
}

#[test]
fn a_dirty_context_changes_only_its_own_tag() {
    let repo = ColonyRepo::create();
    let tools = ToolDir::new(&["git"], &[]);
    let plan = |repo: &ColonyRepo| {
        let env = [
            ("PATH", tools.path().to_str().unwrap()),
            ("HOME", "/nonexistent"),
            ("COLONY_CONFIG", "deploy.toml"),
        ];
        let run = xtask(repo.root(), &["deploy", "colony-dev", "--dry-run"], &env);
        assert_eq!(run.code, 0, "{}", run.all());
        run.stdout
    };
    let sha = repo.git(&["rev-parse", "--short=12", "HEAD"]);
    let clean = plan(&repo);
    assert!(
        clean.contains(&format!("colony-backend:{sha}\n")),
        "{clean}"
    );

    std::fs::write(repo.root().join("backend/app/extra.py"), "x = 1\n").unwrap();
    let dirty = plan(&repo);
    let backend_tag = |plan: &str| {
        plan.lines()
            .find_map(|l| l.split("backend.image.tag=").nth(1))
            .map(|t| t.trim_end_matches([' ', '\\']).to_string())
            .unwrap()
    };
    assert!(
        backend_tag(&dirty).starts_with(&format!("{sha}-dirty-")),
        "{dirty}"
    );
    assert!(
        dirty.contains(&format!("colony-frontend:{sha}\n")),
        "frontend tag changed:\n{dirty}"
    );

    std::fs::write(repo.root().join("backend/app/extra.py"), "x = 2\n").unwrap();
    assert_ne!(
        backend_tag(&plan(&repo)),
        backend_tag(&dirty),
        "two dirty trees share a tag"
    );
}

#[test]
fn a_fresh_clone_without_cluster_docker_or_values_still_shows_the_plan() {
    // This checkout itself: no backend/ or frontend/ (they live in the Colony
    // monorepo), no values file, no helm, no cluster, no Docker.
    let home = tempfile::tempdir().unwrap();
    let tools = ToolDir::new(&["git"], &[]).with_recorders(&["kubectl", "docker"]);
    let env = [
        ("PATH", tools.path().to_str().unwrap()),
        ("HOME", home.path().to_str().unwrap()),
    ];
    let run = xtask(
        &testkit::workspace_root(),
        &["deploy", "colony-dev", "--dry-run"],
        &env,
    );
    assert_eq!(run.code, 0, "{}", run.all());
    for expected in [
        "Missing (a real deploy stops here until these are fixed):",
        "values file",
        "my-values.yaml does not exist",
        "backend build context backend/ does not exist",
        "helm         not found; planned for Helm 4",
        "helm upgrade --install colony ./helm/colony",
        "expect: last line: Migrations complete.",
    ] {
        assert!(
            run.stdout.contains(expected),
            "missing {expected:?} in:\n{}",
            run.stdout
        );
    }
    assert_eq!(tools.calls(), Vec::<String>::new());
}
