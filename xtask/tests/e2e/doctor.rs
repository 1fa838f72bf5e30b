//! `doctor` against the real test bed: real Docker, registry, kubectl, helm.

use crate::common;
use crate::common::assert_contains;

use crate::common::xtask;
use testkit::{ColonyRepo, TestBed, ToolDir};

/// A kubeconfig (kubectl reads it without contacting any server) with the
/// contexts `contexts` names, comma-separated, the first one current.
fn kubeconfig(dir: &std::path::Path, contexts: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let current = contexts.split(',').next().unwrap();
    let entries: String = contexts
        .split(',')
        .map(|c| format!("- name: {c}\n  context:\n    cluster: c\n    user: u\n"))
        .collect();
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: {current}\n\
             clusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n\
             contexts:\n{entries}\
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
    doctor_with(
        tools,
        context,
        registry,
        &[("DOCKER_HOST", bed.docker_host.as_str())],
    )
}

/// `doctor` with exactly these Docker variables (DOCKER_HOST, DOCKER_CONFIG…).
fn doctor_with(
    tools: &ToolDir,
    context: &str,
    registry: &str,
    docker: &[(&str, &str)],
) -> common::Run {
    let repo = ColonyRepo::create();
    let home = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig(home.path(), context);
    let mut env = vec![
        ("PATH", tools.path().to_str().unwrap()),
        ("HOME", home.path().to_str().unwrap()),
        ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ("COLONY_REGISTRY", registry),
        ("COLONY_CONFIG", "deploy.toml"),
    ];
    env.extend_from_slice(docker);
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
        "ok    builder     BuildKit (the daemon's, as `docker build` uses)",
        // Neither Alembic nor cargo on this PATH: warnings, with their fix.
        "warn  sql preview `alembic` is not on PATH: deploy plans will show no SQL preview",
        "warn  runner      run-migrations built static for linux/amd64",
        "fix: cargo is not on PATH to build it",
    ] {
        assert_contains(&run.stdout, line);
    }
}

/// The bed's Docker 26 with the containerd image store: the builder's line
/// says that the build pushes, as the plan does.
#[test]
fn a_containerd_store_daemon_is_said_to_push_from_the_build() {
    let bed = TestBed::get();
    let host = [("DOCKER_HOST", bed.containerd_docker_host.as_str())];
    let run = doctor_with(&all_tools(), "homelab", &bed.registry, &host);
    assert_contains(&run.stdout, "ok    docker      Docker Engine 26.");
    assert_contains(
        &run.stdout,
        "ok    builder     BuildKit (the daemon's, as `docker build` uses); it pushes each image from its build (the daemon's containerd image store)",
    );
}

#[test]
fn the_legacy_builder_is_said_with_what_it_refuses() {
    let bed = TestBed::get();
    let legacy = [
        ("DOCKER_HOST", bed.docker_host.as_str()),
        ("DOCKER_BUILDKIT", "0"),
    ];
    let run = doctor_with(&all_tools(), "homelab", &bed.registry, &legacy);
    // The fixture's backend is built as uv's guide builds it: BuildKit only.
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(
        &run.stdout,
        "FAIL  builder     the backend Dockerfile needs BuildKit (line 8: RUN --mount=type=cache,target=/root/.cache/uv;",
    );
    assert_contains(
        &run.stdout,
        "but the build would use the legacy builder (DOCKER_BUILDKIT=0); use a daemon with BuildKit, or unset DOCKER_BUILDKIT",
    );
    assert_contains(&run.stderr, "1 prerequisite(s) missing");
}

#[test]
fn a_missing_helm_is_reported_with_its_fix() {
    let bed = TestBed::get();
    let tools = ToolDir::new(&["git", "df", "pg_restore"], &[("kubectl", &bed.kubectl)]);
    let run = doctor(&tools, "homelab");
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(&run.stdout, "FAIL  helm        helm not found on PATH");
    assert_contains(&run.stdout, "fix: install Helm 3 or 4");
    assert_contains(&run.stderr, "1 prerequisite(s) missing");
}

/// A kubeconfig without the environment's context fails, with the fix; one
/// whose current context is another is fine (every call names the context).
#[test]
fn a_context_the_kubeconfig_lacks_fails_and_another_current_one_is_noted() {
    let run = doctor(&all_tools(), "prod");
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(
        &run.stdout,
        "colony-dev deploys to context \"homelab\", which the kubeconfig does not have",
    );
    assert_contains(&run.stdout, "fix: fix kube_context in deploy.toml");
    let noted = doctor(&all_tools(), "prod,homelab");
    assert_eq!(noted.code, 0, "{}", noted.all());
    assert_contains(
        &noted.stdout,
        "(current context: prod; every call names homelab",
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
    assert_contains(
        &run.stdout,
        "FAIL  docker      no Docker daemon at unix:///nonexistent/docker.sock",
    );
    assert_contains(&run.stdout, "fix: start the Docker daemon");
    assert_contains(
        &run.stdout,
        "FAIL  registry    registry 127.0.0.1:1 does not answer over HTTPS or plain HTTP",
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
    assert_contains(&run.stdout, &expected);

    let forwarder = testkit::TcpForwarder::start_on("::1", bed.registry.clone());
    let secure = format!("{}:{}", bed.secure_name, forwarder.port);
    let run = doctor_with_registry(&all_tools(), "homelab", &secure);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(
        &run.stdout,
        &format!("FAIL  registry    registry {secure} does not answer over HTTPS"),
    );
    assert_contains(&run.stdout, "insecure-registries");
}

/// A TLS registry whose CA is in certs.d: doctor says what it trusts.
#[test]
fn the_registry_line_names_the_ca_it_trusts() {
    let bed = TestBed::get();
    let run = doctor_with_registry(&all_tools(), "homelab", &bed.tls_registry);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_contains(
        &run.stdout,
        &format!(
            "ok    registry    {registry} answers the registry API over HTTPS, trusting the system's CA store and {}/{registry}/ca.crt, because",
            bed.certs_d.display(),
            registry = bed.tls_registry
        ),
    );
}

/// The bed's daemon socket (the tests' DOCKER_HOST is `unix://…`).
fn bed_socket() -> std::path::PathBuf {
    let host = &TestBed::get().docker_host;
    std::path::PathBuf::from(
        host.strip_prefix("unix://")
            .expect("the bed's daemon is on a unix socket"),
    )
}

#[test]
fn docker_host_is_honoured_in_its_tcp_form() {
    let forwarder = testkit::TcpForwarder::to_unix_socket(bed_socket());
    let host = format!("tcp://127.0.0.1:{}", forwarder.port);
    let run = doctor_with(
        &all_tools(),
        "homelab",
        &TestBed::get().registry,
        &[("DOCKER_HOST", &host)],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    assert_contains(&run.stdout, &format!("at {host} (from DOCKER_HOST)"));
}

#[test]
fn without_docker_host_the_current_docker_context_is_used() {
    use sha2::Digest;
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("config.json"),
        r#"{"currentContext": "bed"}"#,
    )
    .unwrap();
    let id = format!("{:x}", sha2::Sha256::digest(b"bed"));
    let meta = config.path().join("contexts/meta").join(id);
    std::fs::create_dir_all(&meta).unwrap();
    let socket = format!("unix://{}", bed_socket().display());
    std::fs::write(
        meta.join("meta.json"),
        format!(r#"{{"Name":"bed","Metadata":{{}},"Endpoints":{{"docker":{{"Host":"{socket}","SkipTLSVerify":false}}}}}}"#),
    )
    .unwrap();
    let docker_config = config.path().to_str().unwrap();
    let run = doctor_with(
        &all_tools(),
        "homelab",
        &TestBed::get().registry,
        &[("DOCKER_CONFIG", docker_config)],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    assert_contains(
        &run.stdout,
        &format!("at {socket} (from docker context bed)"),
    );
    // DOCKER_CONTEXT=default wins over the config: the default socket.
    let run = doctor_with(
        &all_tools(),
        "homelab",
        &TestBed::get().registry,
        &[
            ("DOCKER_CONFIG", docker_config),
            ("DOCKER_CONTEXT", "default"),
        ],
    );
    assert_contains(&run.stdout, "(from the default socket)");
}
