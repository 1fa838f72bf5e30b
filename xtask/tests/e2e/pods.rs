//! Pods that run the pushed image: the simulated kubelet pulls the digest
//! Helm was given through the bed's Docker and runs the init container and
//! every `kubectl exec` inside it (DESIGN.md §5). These tests look behind
//! the simulated API server, at the containers themselves.

use std::time::{Duration, Instant};

use crate::common::assert_contains;
use crate::common::stack::Stack;
use crate::images::docker_ok;
use testkit::registry_proxy::{Fault, RegistryProxy};
use testkit::TestBed;

/// The docker CLI against the bed's daemon: its trimmed output.
fn docker(args: &[&str]) -> String {
    docker_ok(args).trim().to_string()
}

/// The names of the live backend pods.
pub(crate) fn backend_pods(stack: &Stack) -> Vec<String> {
    stack
        .sim
        .state()
        .pods
        .into_iter()
        .filter(|p| !p.deleted && p.name.starts_with("colony-backend-"))
        .map(|p| p.name)
        .collect()
}

/// The first deploy of a pre-Alembic database, with Alembic run through uv
/// as Colony's image runs it: the stamp and the upgrade are made by the
/// runner and the Alembic inside the pinned image, `alembic current` and
/// any other exec run in it, and status shows the digest each pod runs.
#[test]
fn the_init_container_and_every_exec_run_inside_the_pushed_image() {
    let stack = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    let config = std::fs::read_to_string(stack.repo.config())
        .unwrap()
        .replacen(
            "release = \"colony\"",
            "release = \"colony\"\nalembic_command = \"uv run --no-sync alembic\"",
            1,
        );
    std::fs::write(stack.repo.config(), config).unwrap();
    stack.repo.git(&["commit", "-qam", "Alembic through uv"]);
    let run = stack.xtask(&["deploy", "colony-dev", "--yes"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_contains(&run.stdout, "4/4 checks passed");

    let status: serde_json::Value =
        serde_json::from_str(&stack.xtask(&["status", "--json"]).stdout).unwrap();
    let pinned = status["history"][0]["record"]["backend_image"]
        .as_str()
        .unwrap()
        .to_string();
    let digest = pinned.split_once('@').unwrap().1;
    let runtime = stack.sim.state_dir().config().unwrap().runtime;
    let pods = backend_pods(&stack);
    assert_eq!(pods.len(), 2, "{pods:?}");
    let mut stamped = 0;
    for pod in &pods {
        // The init container was a container of the pinned image, and it
        // ran the runner and the Alembic inside it.
        let init = runtime.container_name(pod, "run-migrations");
        assert_eq!(
            docker(&[
                "inspect",
                "--format",
                "{{.Config.Image}} {{.State.ExitCode}}",
                &init
            ]),
            format!("{pinned} 0")
        );
        let log = docker(&["logs", &init]);
        assert_eq!(log.lines().last(), Some("Migrations complete."), "{log}");
        stamped += log
            .matches("Detected pre-Alembic schema; stamping 0001_baseline")
            .count();
        // The main container too, and status reports what the kubelet pulled.
        let main = runtime.container_name(pod, "backend");
        assert_eq!(
            docker(&["inspect", "--format", "{{.Config.Image}}", &main]),
            pinned
        );
        let line = status["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == pod.as_str())
            .unwrap();
        assert_eq!(line["image_digest"], digest, "{status}");
    }
    // Two pods, one lock: exactly one of them stamped.
    assert_eq!(stamped, 1);

    // An exec is in that container: the Alembic it finds is the image's
    // (Debian's package), not this machine's.
    let exec = |command: &[&str]| {
        let mut args = vec!["--context", "homelab", "-n", "colony-dev", "exec", &pods[0]];
        args.extend(["-c", "backend", "--"]);
        args.extend(command);
        let output = std::process::Command::new("kubectl")
            .args(&args)
            .envs(stack.env())
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    assert_eq!(
        exec(&[
            "uv",
            "run",
            "--no-sync",
            "python3",
            "-c",
            "import alembic; print(alembic.__file__)"
        ]),
        "/usr/lib/python3/dist-packages/alembic/__init__.py"
    );
    assert_eq!(
        exec(&["uv", "run", "--no-sync", "alembic", "current"]),
        "0002_activity_and_comments (head)"
    );
    let text = stack.xtask(&["status"]).stdout;
    assert_contains(&text, &format!("runs {}", &digest[..19]));
}

/// A registry the cluster cannot pull from (here: it answers "manifest
/// unknown" for the pinned digest, while the push and the tag lookups
/// work): the pods fail as Kubernetes says it, and the deploy stops long
/// before Helm's timeout with the pod's events and containerd's words.
#[test]
fn an_image_the_cluster_cannot_pull_fails_fast_with_the_pod_s_events() {
    let bed = TestBed::get();
    let unknown = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
    let proxy = RegistryProxy::start(
        &bed.registry,
        vec![Fault {
            method: "HEAD",
            path_contains: "/manifests/sha256:",
            status: 404,
            body: unknown.to_string(),
            times: usize::MAX,
        }],
    );
    let mut stack = Stack::new(None);
    stack.registry = format!("{}/{}", proxy.address, crate::common::unique("unpullable"));
    let started = Instant::now();
    let run = stack.xtask(&["deploy", "colony-dev", "--yes"]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "waited for Helm's timeout"
    );
    assert!(
        run.stderr.contains("ErrImagePull") || run.stderr.contains("ImagePullBackOff"),
        "{}",
        run.stderr
    );
    assert_contains(&run.stderr, "events of colony-backend-");
    assert_contains(&run.stderr, "failed to pull and unpack image \"");
    assert_contains(&run.stderr, ": not found");
    // No init container ran: nothing was migrated.
    assert_eq!(
        stack.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'alembic_version'"),
        "0"
    );
    assert!(proxy.count("HEAD", "/manifests/sha256:") > 0);
}
