//! Dockerfiles written for BuildKit, as `docker build` builds them: cache
//! and bind mounts, `COPY --chmod`, several stages with a `target`, on the
//! bed's busybox base image (a shell for `RUN`; the bed's daemon has no
//! bridge network, so `RUN` steps use the host's, as `--network host`).

use crate::common::stack::{assert_no_mutating_call, Stack};
use crate::common::{assert_contains, Run};
use crate::images::{
    catalog, entries_in_image, has_tags, images, layers_and_config, repo_named, reports, repository,
};
use sha2::{Digest, Sha256};
use testkit::{ColonyRepo, TestBed};

/// uv's guide's Dockerfile for a FastAPI app, on `base`: a cache mount
/// (never in the image), a bind mount of a context file, `COPY --chmod`,
/// and a `debug` stage after the `runtime` target.
fn uv_style_dockerfile(base: &str) -> String {
    format!(
        "FROM {base} AS build
WORKDIR /app
RUN --mount=type=cache,target=/root/.cache/uv \\
    --mount=type=bind,source=alembic.ini,target=/mnt/alembic.ini \\
    echo \"synced $(wc -l < /mnt/alembic.ini) lines\" > /app/synced.txt && touch /root/.cache/uv/cache-only

FROM {base} AS runtime
WORKDIR /app
COPY --from=build /app/synced.txt /app/synced.txt
COPY --chmod=0750 app /app/app
COPY alembic.ini /app/alembic.ini
COPY alembic /app/alembic

FROM runtime AS debug
RUN touch /app/debug-only
"
    )
}

/// deploy.toml's backend section gets `settings` (after the repository
/// line that `use_repositories` wrote).
fn configure_backend(repo: &ColonyRepo, settings: &str) {
    let text = std::fs::read_to_string(repo.config()).unwrap();
    let marker = "[environments.colony-dev.images.backend]\n";
    assert!(text.contains(marker), "{text}");
    let text = text.replace(marker, &format!("{marker}{settings}\n"));
    std::fs::write(repo.config(), text).unwrap();
}

fn write_backend_dockerfile(repo: &ColonyRepo, text: &str) {
    std::fs::write(repo.root().join("backend/Dockerfile"), text).unwrap();
}

#[test]
fn a_uv_style_dockerfile_with_cache_and_bind_mounts_builds_and_pushes_its_target_stage() {
    let bed = TestBed::get();
    let repo = repo_named("uvstyle");
    write_backend_dockerfile(&repo, &uv_style_dockerfile(&bed.shell_image));
    configure_backend(&repo, "target = \"runtime\"");
    repo.set_backend_network(Some("host"));
    let run = images(&repo, "push", &bed.registry, &[]);
    let pushed = reports(&run);
    assert_eq!(pushed.len(), 2);
    // BuildKit's steps, as `docker build --progress=plain` names them.
    assert_contains(
        &run.stderr,
        "[build 3/3] RUN --mount=type=cache,target=/root/.cache/uv",
    );
    assert_contains(&run.stderr, "[runtime 4/7] COPY --chmod=0750 app /app/app");
    let tag = pushed[0]["tag"].as_str().unwrap();
    let entries = entries_in_image(&bed.registry, &repository(&repo, "backend"), tag);
    let mode_of = |path: &str| entries.iter().find(|(p, _)| p == path).map(|(_, m)| *m);
    assert!(mode_of("app/synced.txt").is_some(), "{entries:?}");
    assert_eq!(mode_of("app/app/__init__.py"), Some(0o750), "COPY --chmod");
    // The runner lands in the target stage, not after the debug stage.
    assert_eq!(mode_of("usr/local/bin/run-migrations"), Some(0o755));
    assert_eq!(
        mode_of("app/debug-only"),
        None,
        "the stage after the target was built"
    );
    assert!(
        !entries.iter().any(|(p, _)| p.contains("cache-only")),
        "a cache mount's file reached the image: {entries:?}"
    );
}

#[test]
fn a_failing_run_names_its_step_and_shows_its_output() {
    let bed = TestBed::get();
    let repo = repo_named("failrun");
    let base = &bed.shell_image;
    write_backend_dockerfile(
        &repo,
        &format!("FROM {base}\nRUN echo resolving dependencies && echo 'no matching distribution for colony==9' && exit 3\n"),
    );
    repo.set_backend_network(Some("host"));
    let run = images(&repo, "push", &bed.registry, &[]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(&run.stderr, "backend image build failed at #");
    assert_contains(&run.stderr, "[2/3] RUN echo resolving dependencies");
    assert_contains(&run.stderr, "exit code: 3");
    assert_contains(
        &run.stderr,
        "last output:\n    resolving dependencies\n    no matching distribution for colony==9",
    );
    // The frontend may have been pushed by then (a push under way is let
    // finish): said so, by name, as not deployed; or nothing was pushed.
    assert!(!has_tags(&bed.registry, &repository(&repo, "backend")));
    let frontend = repository(&repo, "frontend");
    if has_tags(&bed.registry, &frontend) {
        assert_contains(&run.stderr, "not deployed");
        assert_contains(&run.stderr, &format!("{}/{frontend}:", bed.registry));
    } else {
        assert_contains(&run.stderr, "nothing was pushed\n");
    }
}

/// The bed's daemon runs with `--bridge=none`, as some homelab and
/// rootless daemons do: `RUN` on the default network would fail at the
/// first step, after the other image was pushed and the backup taken.
#[test]
fn run_steps_on_a_daemon_without_a_bridge_are_refused_before_anything_changes() {
    let bed = TestBed::get();
    let repo = repo_named("nobridge");
    let dockerfile = format!("FROM {}\nRUN echo hello\n", bed.shell_image);
    write_backend_dockerfile(&repo, &dockerfile);
    repo.set_backend_network(None);
    let run = images(&repo, "push", &bed.registry, &[]);
    assert_eq!(run.code, 2, "{}", run.all());
    let fix = "the backend Dockerfile has RUN steps, but the Docker daemon has no bridge network for them: \
               set images.backend.network = \"host\"";
    assert_contains(&run.stderr, fix);
    assert!(!run.stderr.contains("building"), "{}", run.stderr);

    let stack = Stack::new(None);
    write_backend_dockerfile(&stack.repo, &dockerfile);
    stack.repo.set_backend_network(None);
    stack.repo.git(&["commit", "-qam", "a RUN step"]);
    let run = stack.xtask(&["deploy", "colony-dev", "--yes"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert_contains(&run.all(), fix);
    assert_eq!(stack.backups(), 0);
    assert_no_mutating_call(&stack.calls());
}

#[test]
fn the_legacy_builder_refuses_buildkit_syntax_before_anything_changes() {
    let bed = TestBed::get();
    let legacy = [("DOCKER_BUILDKIT", "0")];
    let repo = repo_named("legacy");
    write_backend_dockerfile(&repo, &uv_style_dockerfile(&bed.shell_image));
    let run = images(&repo, "push", &bed.registry, &legacy);
    assert_eq!(run.code, 2, "{}", run.all());
    assert_contains(
        &run.stderr,
        "the backend Dockerfile needs BuildKit (line 3: RUN --mount=type=cache,target=/root/.cache/uv; \
         line 3: RUN --mount=type=bind,source=alembic.ini,target=/mnt/alembic.ini; line 10: COPY --chmod=0750), \
         but the build would use the legacy builder (DOCKER_BUILDKIT=0)",
    );
    assert!(!run.stderr.contains("building"), "{}", run.stderr);
    assert!(!catalog(&bed.registry).contains(&repository(&repo, "frontend")));

    // The deploy refuses it with the plan's other refusals: no backup, no Helm.
    let stack = Stack::new(None);
    write_backend_dockerfile(&stack.repo, &uv_style_dockerfile(&bed.shell_image));
    stack.repo.git(&["commit", "-qam", "a BuildKit Dockerfile"]);
    let plan = stack.xtask_with(&["deploy", "colony-dev", "--dry-run"], &legacy);
    assert_contains(
        &plan.stdout,
        "(Docker Engine API, the legacy builder: DOCKER_BUILDKIT=0, both at once)",
    );
    let run = stack.xtask_with(&["deploy", "colony-dev", "--yes"], &legacy);
    assert_eq!(run.code, 2, "{}", run.all());
    assert_contains(
        &run.all(),
        "the backend Dockerfile needs BuildKit (line 3: RUN --mount=type=cache",
    );
    assert_eq!(stack.backups(), 0);
    assert_no_mutating_call(&stack.calls());
}

/// Build secrets as uv's guide passes a private index token: one from an
/// environment variable, one from a file, both mounted by a `RUN`; neither
/// value is in any layer, the image's config, the output or the report.
#[test]
fn build_secrets_reach_run_and_no_layer_or_output() {
    let bed = TestBed::get();
    let repo = repo_named("secret");
    let token = format!("pypi-s3cr3t-{}", crate::common::unique("token"));
    // BuildKit's cache keys a RUN by its text, not by its secrets' values:
    // a step of its own, so an earlier run's layer is not re-used.
    let nonce = crate::common::unique("run");
    std::fs::write(
        repo.root().join(".home-netrc"),
        "machine index password f1le-s3cr3t\n",
    )
    .unwrap();
    write_backend_dockerfile(
        &repo,
        &format!(
            "FROM {}
RUN --mount=type=secret,id=pypi_token --mount=type=secret,id=netrc \\
    cat /run/secrets/pypi_token /run/secrets/netrc | sha256sum | cut -c1-64 > /secrets-sha256 && echo secrets mounted {nonce}
COPY alembic.ini /app/alembic.ini
",
            bed.shell_image
        ),
    );
    configure_backend(
        &repo,
        "secrets = { pypi_token = { env = \"COLONY_TEST_PYPI_TOKEN\" }, netrc = { file = \".home-netrc\" } }",
    );
    // On the bed's Unix socket the build goes by this tool's session, which
    // may take the host's network, as `docker build --network host` may.
    repo.set_backend_network(Some("host"));
    let token_env = [("COLONY_TEST_PYPI_TOKEN", token.as_str())];
    let run = images(&repo, "push", &bed.registry, &token_env);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_contains(&run.stderr, "with the build secrets netrc, pypi_token");
    // Served by this tool's own session: the build's steps are shown.
    assert_contains(&run.stderr, "RUN --mount=type=secret,id=pypi_token");
    assert_secrets_ran_and_stayed_out(bed, &repo, &run, &token);

    // Over TCP and TLS, BuildKit's gRPC API: not granted the host's
    // network (refused first), and with none the secrets still reach RUN.
    let certs = crate::images::docker_cert_path(bed);
    let over_tls = [
        ("COLONY_TEST_PYPI_TOKEN", token.as_str()),
        ("DOCKER_HOST", bed.docker_tls_host.as_str()),
        ("DOCKER_TLS_VERIFY", "1"),
        ("DOCKER_CERT_PATH", certs.path().to_str().unwrap()),
    ];
    std::fs::write(repo.root().join("backend/app/over-tls.txt"), "tls").unwrap();
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-qm", "another image"]);
    let run = images(&repo, "push", &bed.registry, &over_tls);
    assert_eq!(run.code, 2, "{}", run.all());
    assert_contains(
        &run.stderr,
        "images.backend.network = \"host\" cannot be used with build secrets on a daemon that \
         is not reached by a Unix socket",
    );
    assert!(!run.stderr.contains("building"), "{}", run.stderr);
    repo.set_backend_network(Some("none"));
    let run = images(&repo, "push", &bed.registry, &over_tls);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_contains(&run.stderr, "(BuildKit's gRPC API, without a build session");
    assert_secrets_ran_and_stayed_out(bed, &repo, &run, &token);
    // The deploy plan says where each secret comes from, never what it is.
    let config = std::fs::read_to_string(repo.config()).unwrap();
    let stack = Stack::new(None);
    std::fs::copy(
        repo.root().join("backend/Dockerfile"),
        stack.repo.root().join("backend/Dockerfile"),
    )
    .unwrap();
    std::fs::copy(
        repo.root().join(".home-netrc"),
        stack.repo.root().join(".home-netrc"),
    )
    .unwrap();
    let secrets_line = config
        .lines()
        .find(|l| l.starts_with("secrets = "))
        .unwrap();
    configure_backend(&stack.repo, secrets_line);
    stack.repo.set_backend_network(Some("none"));
    for args in [
        &["deploy", "colony-dev", "--dry-run"][..],
        &["deploy", "colony-dev", "--dry-run", "--json"],
    ] {
        let plan = stack.xtask_with(args, &[("COLONY_TEST_PYPI_TOKEN", &token)]);
        assert_eq!(plan.code, 0, "{}", plan.all());
        assert_contains(
            &plan.stdout,
            "pypi_token from the environment variable COLONY_TEST_PYPI_TOKEN",
        );
        assert!(!plan.all().contains(&token) && !plan.all().contains("f1le-s3cr3t"));
    }
}

/// The backend image `run` pushed: its `RUN` hashed both secrets into
/// `/secrets-sha256`, and neither value is in a layer, the config or the
/// output.
fn assert_secrets_ran_and_stayed_out(bed: &TestBed, repo: &ColonyRepo, run: &Run, token: &str) {
    let pushed = reports(run);
    let backend = pushed.iter().find(|r| r["component"] == "backend").unwrap();
    let tag = backend["tag"].as_str().unwrap();
    let name = repository(repo, "backend");
    let files = entries_in_image(&bed.registry, &name, tag);
    assert!(
        files.iter().any(|(path, _)| path == "secrets-sha256"),
        "{files:?}"
    );
    // The mount point stays, as with `docker build`; nothing in it.
    assert!(
        !files
            .iter()
            .any(|(path, _)| path.starts_with("run/secrets/") && path != "run/secrets/"),
        "{files:?}"
    );
    let (layers, config) = layers_and_config(&bed.registry, &name, tag);
    // The RUN saw both values: it hashed them into the image.
    let seen = layers
        .iter()
        .find_map(|layer| file_in_layer(layer, "secrets-sha256"))
        .unwrap();
    let both = format!("{token}machine index password f1le-s3cr3t\n");
    assert_eq!(
        seen.trim(),
        format!("{:x}", Sha256::digest(both.as_bytes()))
    );
    for bytes in layers.iter().chain([&config]) {
        for secret in [token.as_bytes(), b"f1le-s3cr3t"] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "a secret is in the image"
            );
        }
    }
    for text in [&run.stdout, &run.stderr] {
        assert!(
            !text.contains(token) && !text.contains("f1le-s3cr3t"),
            "{text}"
        );
    }
}

/// The text of `path` in a layer's tar, if it is there.
fn file_in_layer(layer: &[u8], path: &str) -> Option<String> {
    use std::io::Read;
    let mut archive = tar::Archive::new(layer);
    let mut entry = archive
        .entries()
        .ok()?
        .flatten()
        .find(|e| e.path().is_ok_and(|p| p.to_string_lossy() == path))?;
    let mut text = String::new();
    entry.read_to_string(&mut text).ok()?;
    Some(text)
}

/// A secret the Dockerfile mounts but deploy.toml does not give, or one
/// whose variable is not set: refused before any build, with the fix.
#[test]
fn a_missing_build_secret_is_refused_before_any_build() {
    let bed = TestBed::get();
    let repo = repo_named("nosecret");
    write_backend_dockerfile(
        &repo,
        &format!(
            "FROM {}\nRUN --mount=type=secret,id=pypi_token cat /run/secrets/pypi_token\n",
            bed.shell_image
        ),
    );
    repo.set_backend_network(Some("host"));
    let run = images(&repo, "build", &bed.registry, &[]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert_contains(
        &run.stderr,
        "the backend Dockerfile mounts the build secret \"pypi_token\" (line 2: RUN --mount=type=secret,id=pypi_token), \
         which deploy.toml does not provide: set images.backend.secrets.pypi_token = { env = \"VARIABLE\" }",
    );
    assert!(!run.stderr.contains("building"), "{}", run.stderr);

    configure_backend(
        &repo,
        "secrets = { pypi_token = { env = \"COLONY_TEST_UNSET_TOKEN\" } }",
    );
    let run = images(&repo, "build", &bed.registry, &[]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert_contains(
        &run.stderr,
        "images.backend.secrets.pypi_token: COLONY_TEST_UNSET_TOKEN is not set (or empty); nothing was built",
    );
    assert!(!run.stderr.contains("building"), "{}", run.stderr);
}

/// The whole deploy with a BuildKit backend: built, pushed, stamped and
/// migrated by the runner from the pushed image, verified.
#[test]
fn a_uv_style_backend_deploys_end_to_end() {
    let stack = Stack::new(Some("testdata/colony/pre-alembic.sql"));
    // Python with Alembic: the pods run the migrations inside this image.
    let python = &TestBed::get().python_image;
    write_backend_dockerfile(&stack.repo, &uv_style_dockerfile(python));
    configure_backend(&stack.repo, "target = \"runtime\"");
    stack.repo.set_backend_network(Some("host"));
    stack.repo.git(&["commit", "-qam", "a uv-style backend"]);
    let run = stack.xtask(&["deploy", "colony-dev", "--yes"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_contains(&run.stdout, "(Docker Engine API, BuildKit, both at once)");
    assert_contains(&run.stdout, "4/4 checks passed");
    assert_eq!(
        stack.alembic(&["current"]),
        "0002_activity_and_comments (head)"
    );
}

/// A backend image as Colony's is: Python from Debian with Alembic and
/// psycopg, uv, a uv-style Dockerfile; run-migrations appended by the tool.
/// The pushed image's own runner stamps a pre-Alembic database and migrates
/// it through the image's own `uv run --no-sync alembic`.
#[test]
fn a_python_backend_image_migrates_with_its_own_alembic_through_uv() {
    let bed = TestBed::get();
    let repo = repo_named("python");
    std::fs::write(
        repo.root().join("backend/pyproject.toml"),
        "[project]\nname = \"colony-backend\"\nversion = \"0.1.0\"\nrequires-python = \">=3.11\"\ndependencies = []\n",
    )
    .unwrap();
    write_backend_dockerfile(
        &repo,
        &format!(
            "FROM {}
WORKDIR /app
RUN --mount=type=cache,target=/root/.cache/uv \\
    --mount=type=bind,source=pyproject.toml,target=/app/pyproject.toml \\
    uv venv --system-site-packages /app/.venv
COPY pyproject.toml alembic.ini /app/
COPY alembic /app/alembic
COPY app /app/app
",
            bed.python_image
        ),
    );
    repo.set_backend_network(Some("host"));
    let pushed = reports(&images(&repo, "push", &bed.registry, &[]));
    let backend = pushed.iter().find(|r| r["component"] == "backend").unwrap();
    let image = backend["pinned"].as_str().unwrap().to_string();

    let database = bed.create_database("python_image");
    bed.psql_file(
        &database,
        &testkit::workspace_root().join("testdata/colony/pre-alembic.sql"),
    );
    let in_image = |command: &[&str]| {
        let output = std::process::Command::new("docker")
            .args(["run", "--rm", "--network", "host", "-e"])
            .arg(format!("DATABASE_URL={database}"))
            .arg(&image)
            .args(command)
            .env("DOCKER_HOST", &bed.docker_host)
            .output()
            .expect("docker runs");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        );
        assert!(
            output.status.success(),
            "{command:?} in {image}:\n{stdout}{stderr}"
        );
        // Alembic logs on stderr, the runner on stdout: each in order.
        (stdout, stderr)
    };
    let (log, alembic_log) = in_image(&[
        "/usr/local/bin/run-migrations",
        "--alembic-cmd",
        "uv run --no-sync alembic",
    ]);
    assert_contains(
        &alembic_log,
        "Running upgrade 0001_baseline -> 0002_activity_and_comments",
    );
    assert_contains(
        &log,
        "Detected pre-Alembic schema; stamping 0001_baseline so the activity-log migration applies on top of the existing tables.",
    );
    assert_eq!(log.trim_end().lines().last(), Some("Migrations complete."));
    assert_contains(
        &in_image(&["uv", "run", "--no-sync", "alembic", "current"]).0,
        "0002_activity_and_comments (head)",
    );
    // The Alembic that ran is the image's (Debian's), not the bed's venv.
    assert_contains(
        &in_image(&[
            "uv",
            "run",
            "--no-sync",
            "python3",
            "-c",
            "import alembic; print(alembic.__file__)",
        ])
        .0,
        "/usr/lib/python3/dist-packages/alembic/",
    );
    assert_eq!(
        bed.psql(&database, "SELECT count(*) FROM households"),
        "3",
        "the legacy rows are kept"
    );
}
