//! `doctor` against the real test bed: real Docker, registry, kubectl, helm.

mod common;

use common::xtask;
use testkit::{ColonyRepo, TestBed, ToolDir};

/// A kubeconfig whose current context is `context` (kubectl reads it
/// without contacting any server).
fn kubeconfig(dir: &std::path::Path, context: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: {context}\n\
             clusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n\
             contexts:\n- name: {context}\n  context:\n    cluster: c\n    user: u\n\
             users:\n- name: u\n  user:\n    token: kube-t0ken-secret\n"
        ),
    )
    .unwrap();
    path
}

fn doctor(tools: &ToolDir, context: &str) -> common::Run {
    doctor_with_registry(tools, context, &TestBed::get().registry)
}

fn doctor_with_registry(tools: &ToolDir, context: &str, registry: &str) -> common::Run {
    let bed = TestBed::get();
    let repo = ColonyRepo::create();
    let home = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig(home.path(), context);
    let env = [
        ("PATH", tools.path().to_str().unwrap()),
        ("HOME", home.path().to_str().unwrap()),
        ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ("DOCKER_HOST", bed.docker_host.as_str()),
        ("COLONY_REGISTRY", registry),
        ("COLONY_CONFIG", "deploy.toml"),
    ];
    let run = xtask(repo.root(), &["doctor", "colony-dev"], &env);
    assert!(!run.all().contains("kube-t0ken-secret"));
    run
}

fn all_tools() -> ToolDir {
    let bed = TestBed::get();
    ToolDir::new(
        &["git", "df", "pg_restore"],
        &[("helm", &bed.helm), ("kubectl", &bed.kubectl)],
    )
}

#[test]
fn everything_present_passes() {
    let run = doctor(&all_tools(), "homelab");
    assert_eq!(run.code, 0, "{}", run.all());
    for line in [
        "ok    docker      Docker Engine",
        "(API 1.",
        "ok    registry",
        "ok    helm        v4.",
        "ok    kubectl     v1.33",
        "current context homelab",
        "ok    pg_restore",
        "ok    disk",
    ] {
        assert!(
            run.stdout.contains(line),
            "missing {line:?} in:\n{}",
            run.stdout
        );
    }
}

#[test]
fn a_missing_helm_is_reported_with_its_fix() {
    let bed = TestBed::get();
    let tools = ToolDir::new(&["git", "df", "pg_restore"], &[("kubectl", &bed.kubectl)]);
    let run = doctor(&tools, "homelab");
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stdout
            .contains("FAIL  helm        helm not found on PATH"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("fix: install Helm 3 or 4"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("1 prerequisite(s) missing"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_context_mismatch_names_both_contexts_and_the_fix() {
    let run = doctor(&all_tools(), "prod");
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stdout
            .contains("current context is \"prod\", but colony-dev deploys to context homelab"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("fix: kubectl config use-context homelab"),
        "{}",
        run.stdout
    );
}

#[test]
fn an_unreachable_daemon_and_registry_fail_with_fixes() {
    let bed = TestBed::get();
    let repo = ColonyRepo::create();
    let home = tempfile::tempdir().unwrap();
    let tools = all_tools();
    let kubeconfig = kubeconfig(home.path(), "homelab");
    let env = [
        ("PATH", tools.path().to_str().unwrap()),
        ("HOME", home.path().to_str().unwrap()),
        ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
        // A port nothing listens on: the bed's registry port plus nothing is
        // not guaranteed free, so use the reserved port 1.
        ("COLONY_REGISTRY", "127.0.0.1:1"),
        ("COLONY_CONFIG", "deploy.toml"),
    ];
    let _ = bed;
    let run = xtask(repo.root(), &["doctor"], &env);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stdout
            .contains("FAIL  docker      no Docker daemon at unix:///nonexistent/docker.sock"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("fix: start the Docker daemon"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(
            "FAIL  registry    registry 127.0.0.1:1 does not answer over HTTPS or plain HTTP"
        ),
        "{}",
        run.stdout
    );
}

#[test]
fn the_registry_line_says_which_scheme_and_why() {
    let bed = TestBed::get();
    let run = doctor_with_registry(&all_tools(), "homelab", &bed.named_registry);
    assert_eq!(run.code, 0, "{}", run.all());
    let expected = format!(
        "ok    registry    {} answers the registry API over plain HTTP, because {} resolves to 127.0.0.1, \
         inside the insecure CIDR 127.0.0.0/8 of the Docker daemon",
        bed.named_registry, bed.named_registry
    );
    assert!(
        run.stdout.contains(&expected),
        "missing {expected:?} in:\n{}",
        run.stdout
    );

    let forwarder = testkit::TcpForwarder::start_on("::1", bed.registry.clone());
    let secure = format!("{}:{}", bed.secure_name, forwarder.port);
    let run = doctor_with_registry(&all_tools(), "homelab", &secure);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stdout.contains(&format!(
            "FAIL  registry    registry {secure} does not answer over HTTPS"
        )),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("insecure-registries"), "{}", run.stdout);
}
