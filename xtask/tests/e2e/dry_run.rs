//! `deploy --dry-run` prints the exact plan and touches nothing.

use crate::common::assert_contains;
use crate::common::stack::{assert_no_mutating_call, Stack};
use crate::common::{assert_snapshot, xtask};
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
    // The real bed behind a simulated cluster with nothing installed yet:
    // the facts (release, database, registry) are read for real.
    let stack = Stack::new(None);
    // A registry path no run has pushed to, so that every run plans builds.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let registry = format!("{}/snapshot-{nanos}", TestBed::get().registry);
    let mut env = stack.env();
    env.retain(|(k, _)| k != "COLONY_REGISTRY");
    env.push(("COLONY_REGISTRY".into(), registry.clone()));
    env.extend(SECRETS.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let run = xtask(
        stack.repo.root(),
        &["deploy", "colony-dev", "--dry-run"],
        &env,
    );
    assert_eq!(run.code, 0, "{}", run.all());

    for (name, secret) in SECRETS {
        assert!(!run.all().contains(secret), "the plan shows {name}");
    }
    assert!(
        !stack.calls().is_empty(),
        "the dry run read nothing from the cluster"
    );
    assert_no_mutating_call(&stack.calls());

    // Only the temp paths, the bed's registry, the commit (which covers this
    // workspace's helm/ and scripts/) and the hash of the chart vary; the
    // plan's shape is what is reviewed.
    let sha = stack.repo.git(&["rev-parse", "HEAD"]);
    let hash_start =
        run.stdout.find("deployRecord.inputsHash: ").unwrap() + "deployRecord.inputsHash: ".len();
    let hash = &run.stdout[hash_start..hash_start + 71];
    let plan = run
        .stdout
        .replace(&sha, "<git sha>")
        .replace(&sha[..12], "<short sha>")
        .replace(hash, "<inputs hash>")
        .replace(&registry, "<registry>")
        .replace(stack.home.path().to_str().unwrap(), "<home>")
        .replace(
            testkit::run_migrations_binary().to_str().unwrap(),
            "<run-migrations>",
        )
        .replace(stack.repo.root().to_str().unwrap(), "<root>");
    assert_snapshot("dry-run-colony-dev", &plan);
}

#[test]
fn the_dry_run_plan_is_also_json() {
    let stack = Stack::new(None);
    let run = stack.xtask(&["deploy", "colony-dev", "--dry-run", "--json"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan["decision"], "deploy");
    assert_eq!(plan["facts"]["release"], "not installed");
    assert_eq!(
        Stack::step_names(&run.stdout),
        ["images", "helm-upgrade", "rollout", "verify"],
        "a first install with no database pod has nothing to back up"
    );
    let helm = &plan["steps"][1]["items"][0];
    assert_eq!(helm["type"], "run");
    assert_eq!(helm["argv"][0], "helm");
    assert_no_mutating_call(&stack.calls());
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
    let clean_frontend = clean
        .lines()
        .find_map(|l| l.split("frontend.image.tag: ").nth(1))
        .unwrap()
        .to_string();
    assert!(clean_frontend.starts_with(&format!("{sha}-")), "{clean}");

    std::fs::write(repo.root().join("backend/app/extra.py"), "x = 1\n").unwrap();
    let dirty = plan(&repo);
    let backend_tag = |plan: &str| {
        plan.lines()
            .find_map(|l| l.split("backend.image.tag: ").nth(1))
            .map(|t| t.trim_end_matches([' ', '\\']).to_string())
            .unwrap()
    };
    assert!(
        backend_tag(&dirty).starts_with(&format!("{}-dirty-", backend_tag(&clean))),
        "{dirty}"
    );
    assert!(
        dirty.contains(&format!("frontend.image.tag: {clean_frontend}\n")),
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
        assert_contains(&run.stdout, expected);
    }
    // No cluster here: the reads it tried failed, and nothing else ran.
    let calls = tools.calls();
    assert!(
        calls.contains(&"kubectl config get-contexts homelab -o name".to_string()),
        "{calls:?}"
    );
    assert_no_mutating_call(&calls);
    assert_contains(&run.stdout, "kube context \"homelab\"");
    assert_contains(&run.stdout, "is not in the kubeconfig");
}

/// The plan says what Helm will change in Kubernetes: the rendered
/// manifests against the running revision's, per object.
#[test]
fn the_plan_shows_the_manifest_changes_of_an_image_and_of_a_values_change() {
    let stack = crate::common::stack::Stack::new(None);
    let first = stack.xtask(&["deploy", "colony-dev", "--yes"]);
    assert_eq!(first.code, 0, "{}", first.all());
    let manifests = |stack: &crate::common::stack::Stack| {
        let run = stack.xtask(&["deploy", "colony-dev", "--dry-run", "--json"]);
        assert_eq!(run.code, 0, "{}", run.all());
        let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        assert!(
            plan["manifests"]["changes"].is_object(),
            "{}",
            plan["manifests"]
        );
        plan["manifests"]["changes"].clone()
    };
    // A no-op: nothing changes, and the plan says so.
    let noop = manifests(&stack);
    assert_eq!(noop["objects"], serde_json::json!([]), "{noop}");
    let text = stack.xtask(&["deploy", "colony-dev", "--dry-run"]);
    crate::common::assert_contains(&text.stdout, "Manifests: no manifest changes");

    // An image change: the frontend Deployment's image, nothing of the backend's.
    std::fs::write(
        stack.repo.root().join("frontend/index.html"),
        "<!-- the manifest diff -->\n",
    )
    .unwrap();
    stack.repo.git(&["commit", "-qam", "a new frontend"]);
    let changed = manifests(&stack);
    assert_eq!(changed["revision"], 1, "{changed}");
    let objects = changed["objects"].as_array().unwrap();
    let frontend = objects
        .iter()
        .find(|o| o["object"] == "Deployment/colony-frontend")
        .unwrap_or_else(|| panic!("{changed:#}"));
    assert!(
        frontend["fields"].as_array().unwrap().iter().any(|f| f
            .as_str()
            .unwrap()
            .starts_with("spec.template.spec.containers[frontend].image: ")),
        "{frontend:#}"
    );
    // A values change: the replicas of the backend.
    let values = std::fs::read_to_string(stack.values_file()).unwrap_or_default();
    std::fs::write(
        stack.values_file(),
        format!("{values}\nbackend:\n  replicas: 3\n"),
    )
    .unwrap();
    let text = stack.xtask(&["deploy", "colony-dev", "--dry-run"]);
    crate::common::assert_contains(
        &text.stdout,
        "Manifests: what Helm changes in Kubernetes, against revision 1",
    );
    crate::common::assert_contains(&text.stdout, "  ~ Deployment/colony-backend");
    crate::common::assert_contains(&text.stdout, "      spec.replicas: 2 -> 3");
}

/// A plan written for review is applied exactly, or refused with what moved.
#[test]
fn a_saved_plan_applies_exactly_or_is_refused_after_a_new_commit_or_another_deploy() {
    let stack = crate::common::stack::Stack::new(None);
    let first = stack.xtask(&["deploy", "colony-dev", "--yes"]);
    assert_eq!(first.code, 0, "{}", first.all());
    let commit = |what: &str| {
        std::fs::write(
            stack.repo.root().join("frontend/index.html"),
            format!("<!-- {what} -->\n"),
        )
        .unwrap();
        stack.repo.git(&["commit", "-qam", what]);
    };
    let file = stack.repo.root().join("reviewed-plan.json");
    let path = file.to_str().unwrap();
    commit("reviewed");
    let written = stack.xtask(&["deploy", "colony-dev", "--dry-run", "--plan-out", path]);
    assert_eq!(written.code, 0, "{}", written.all());
    crate::common::assert_contains(&written.stderr, "plan written to");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(
        saved["basis"]["release"], "revision 1 (deployed)",
        "{saved:#}"
    );

    // A flag that changes the plan: refused, naming where it differs.
    let other = stack.xtask(&[
        "deploy",
        "colony-dev",
        "--yes",
        "--plan",
        path,
        "--no-backup",
    ]);
    assert_eq!(other.code, 2, "{}", other.all());
    crate::common::assert_contains(
        &other.stderr,
        "the plan decided now differs from the one in",
    );
    // Applied as reviewed: exactly its steps.
    let applied = stack.xtask(&["deploy", "colony-dev", "--yes", "--json", "--plan", path]);
    assert_eq!(applied.code, 0, "{}", applied.all());
    let summary: serde_json::Value = serde_json::from_str(&applied.stdout).unwrap();
    let ran: Vec<&str> = summary["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    let planned: Vec<&str> = saved["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(ran, planned);

    // The same file again: the release it was decided on has moved.
    let again = stack.xtask(&["deploy", "colony-dev", "--yes", "--plan", path]);
    assert_eq!(again.code, 2, "{}", again.all());
    crate::common::assert_contains(
        &again.stderr,
        "release: revision 1 (deployed) then, revision 2 (deployed) now",
    );
    // A new commit after the plan: refused, nothing run.
    let written = stack.xtask(&["deploy", "colony-dev", "--dry-run", "--plan-out", path]);
    assert_eq!(written.code, 0, "{}", written.all());
    commit("after the review");
    let revisions = stack.helm_revisions();
    let moved = stack.xtask(&["deploy", "colony-dev", "--yes", "--plan", path]);
    assert_eq!(moved.code, 2, "{}", moved.all());
    crate::common::assert_contains(&moved.stderr, "git commit: ");
    crate::common::assert_contains(&moved.stderr, "nothing was changed");
    assert_eq!(stack.helm_revisions(), revisions);
}
