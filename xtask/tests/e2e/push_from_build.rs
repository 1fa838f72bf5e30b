//! On a daemon with the containerd image store (the bed's second engine,
//! Debian 13's Docker 26), BuildKit's image exporter pushes from the build
//! itself: no export, no second gzip. Each new layer is gzipped at the
//! fastest level, as this tool's own push does; `images.push = "docker"`
//! keeps the daemon's separate push, gzip at Go's default level.

use crate::common::assert_contains;
use crate::common::stack::Stack;
use crate::common::Run;
use crate::images::{
    assert_docker_v2_gzip, blob, docker_ok, images, manifest, repo_named, report, reports,
    repository,
};
use testkit::{ColonyRepo, TestBed};

/// The gzip header's XFL byte (RFC 1952): 4 when the compressor used its
/// fastest level, 0 for Go's default one.
const XFL_FASTEST: u8 = 4;
const XFL_DEFAULT: u8 = 0;

/// A repo whose frontend is also tagged `latest`, with a file that no
/// run has pushed before.
fn repo_with_new_frontend(prefix: &str, push: &str) -> ColonyRepo {
    let repo = repo_named(prefix);
    let config = repo.config();
    let text = std::fs::read_to_string(&config).unwrap();
    let frontend = "[environments.colony-dev.images.frontend]";
    assert!(text.contains(frontend), "{text}");
    let text = text.replace(frontend, &format!("{frontend}\nalso_tag_latest = true"));
    let text = format!("{text}\n[environments.colony-dev.images]\npush = \"{push}\"\n");
    std::fs::write(&config, text).unwrap();
    std::fs::write(
        repo.root().join("frontend/new.txt"),
        crate::common::unique("new"),
    )
    .unwrap();
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-qm", "a frontend no registry has seen"]);
    repo
}

/// `cargo xtask push` on the bed's Docker 26 (containerd store), which
/// must succeed.
fn push_through_the_second_engine(repo: &ColonyRepo, registry: &str, env: &[(&str, &str)]) -> Run {
    let bed = TestBed::get();
    let mut env = env.to_vec();
    env.push(("DOCKER_HOST", &bed.containerd_docker_host));
    let run = images(repo, "push", registry, &env);
    assert_eq!(run.code, 0, "{}", run.all());
    run
}

/// The XFL byte of the image's last (newest) layer, and the manifest's
/// media types, checked to be Docker's v2 with gzip layers (any puller's).
fn newest_layer_xfl(registry: &str, name: &str, tag: &str) -> u8 {
    let (_, served) = manifest(registry, name, tag).expect("pushed");
    let layers = assert_docker_v2_gzip(&served);
    let newest = layers.last().unwrap()["digest"].as_str().unwrap();
    let bytes = blob(registry, name, newest);
    assert_eq!(&bytes[..3], &[0x1f, 0x8b, 8], "gzip's magic and deflate");
    bytes[8]
}

#[test]
fn on_a_containerd_store_daemon_the_build_pushes_each_new_layer_gzipped_fast() {
    let bed = TestBed::get();
    let repo = repo_with_new_frontend("frombuild", "auto");
    let run = push_through_the_second_engine(&repo, &bed.registry, &[]);
    assert_contains(&run.stderr, "BuildKit pushed it");
    let pushed = reports(&run);
    for component in ["backend", "frontend"] {
        let report = report(&pushed, component);
        assert_eq!(report["push"]["status"], "done", "{report}");
        assert_eq!(report["push"]["reason"], "with the build", "{report}");
        let (name, tag) = (
            repository(&repo, component),
            report["tag"].as_str().unwrap(),
        );
        let (served, _) = manifest(&bed.registry, &name, tag).expect("pushed");
        assert_eq!(report["digest"], served.as_str(), "{component}");
        // Only the frontend's newest layer is new: the backend's layers may
        // be in the registry from other tests, and are not compressed again.
        let xfl = newest_layer_xfl(&bed.registry, &name, tag);
        if component == "frontend" {
            assert_eq!(
                xfl, XFL_FASTEST,
                "the new layer is not gzipped at the fastest level"
            );
        }
    }
    // `latest` went up with the build too, as the same image.
    let frontend = repository(&repo, "frontend");
    let (latest, _) = manifest(&bed.registry, &frontend, "latest").expect("latest pushed");
    assert_eq!(report(&pushed, "frontend")["digest"], latest.as_str());

    // A pod's pull: the bed's first engine (Docker 20.10) pulls the backend
    // by digest, and the runner the build appended runs.
    let pinned = report(&pushed, "backend")["pinned"].as_str().unwrap();
    docker_ok(&["pull", "-q", pinned]);
    let help = docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/usr/local/bin/run-migrations",
        pinned,
        "--help",
    ]);
    assert_contains(&help, "Usage");
}

#[test]
fn images_push_docker_keeps_the_daemon_s_own_push_on_a_containerd_store_daemon() {
    let bed = TestBed::get();
    let repo = repo_with_new_frontend("daemonpush", "docker");
    let run = push_through_the_second_engine(&repo, &bed.registry, &[]);
    assert!(!run.stderr.contains("BuildKit pushed it"), "{}", run.all());
    let pushed = reports(&run);
    let report = report(&pushed, "frontend");
    assert_eq!(report["push"]["status"], "done", "{report}");
    assert!(report["push"].get("reason").is_none(), "{report}");
    let (name, tag) = (
        repository(&repo, "frontend"),
        report["tag"].as_str().unwrap(),
    );
    assert_eq!(newest_layer_xfl(&bed.registry, &name, tag), XFL_DEFAULT);
}

/// A deploy through the containerd-store engine: the build pushes, Helm pins
/// what it pushed, and the pods (run by the bed's simulated kubelet, which
/// pulls from the registry as a node does) run that digest: the init
/// container completes the migrations inside it.
#[test]
fn a_deploy_through_a_containerd_store_daemon_runs_the_digest_its_build_pushed() {
    let bed = TestBed::get();
    let stack = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    let run = stack.xtask_with(
        &["deploy", "colony-dev", "--yes", "--json"],
        &[("DOCKER_HOST", &bed.containerd_docker_host)],
    );
    assert_eq!(run.code, 0, "{}", run.all());
    // The plan said it, and the build did it.
    assert_contains(&run.stderr, "pushed by BuildKit from the build");
    assert_contains(&run.stderr, "BuildKit pushed it");
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(summary["verified"], true, "{summary}");
    let values = stack.helm_values(1);
    for image in summary["images"].as_array().unwrap() {
        assert_eq!(image["push"]["reason"], "with the build", "{image}");
        let component = image["component"].as_str().unwrap();
        assert_eq!(
            values[component]["image"]["digest"], image["digest"],
            "{values}"
        );
    }
    let pinned = summary["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["component"] == "backend")
        .and_then(|i| i["pinned"].as_str())
        .unwrap()
        .to_string();
    let runtime = stack.sim.state_dir().config().unwrap().runtime;
    let pods = crate::pods::backend_pods(&stack);
    assert!(!pods.is_empty());
    for pod in &pods {
        let init = runtime.container_name(pod, "run-migrations");
        let docker = |args: &[&str]| {
            let output = std::process::Command::new("docker")
                .args(args)
                .env("DOCKER_HOST", &runtime.host)
                .output()
                .unwrap();
            assert!(output.status.success(), "docker {args:?}: {output:?}");
            String::from_utf8_lossy(&output.stdout).trim().to_string()
        };
        assert_eq!(
            docker(&["inspect", "--format", "{{.Config.Image}}", &init]),
            pinned
        );
        let log = docker(&["logs", &init]);
        assert_eq!(log.lines().last(), Some("Migrations complete."), "{log}");
    }
}

/// A registry behind a login: the build session hands BuildKit this
/// machine's Docker config login for it (as the docker CLI's session does),
/// so the build pushes there too; the password is in no output.
#[test]
fn a_registry_login_reaches_buildkit_through_the_session_and_is_never_shown() {
    let bed = TestBed::get();
    let config = crate::images::docker_config_with_login(
        &bed.auth_registry,
        &bed.auth_user,
        &bed.auth_password,
    );
    let repo = repo_with_new_frontend("loginpush", "auto");
    let run = push_through_the_second_engine(
        &repo,
        &bed.auth_registry,
        &[("DOCKER_CONFIG", config.path().to_str().unwrap())],
    );
    assert!(
        !run.all().contains(&bed.auth_password),
        "the password was printed"
    );
    let pushed = reports(&run);
    for component in ["backend", "frontend"] {
        let report = report(&pushed, component);
        assert_eq!(report["push"]["reason"], "with the build", "{report}");
        assert!(report["digest"].as_str().unwrap().starts_with("sha256:"));
    }
}
