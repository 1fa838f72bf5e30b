//! `cargo xtask build` / `push` against the test bed's real Docker daemon
//! and registries (one open, one behind htpasswd).

use crate::common::assert_contains;
use std::io::Read;

use crate::common::{unique, xtask, Run};
use serde_json::Value;
use testkit::{ColonyRepo, TestBed, ToolDir};

/// A fixture repo whose images have repository names of their own, new on
/// every run (the fixture's commit, and so its tags, never change, and the
/// bed's registry outlives a test run).
pub(crate) fn repo_named(prefix: &str) -> ColonyRepo {
    let repo = ColonyRepo::create();
    repo.use_repositories(&unique(prefix));
    repo
}

/// The repository name `repo_named` gave to a component.
pub(crate) fn repository(repo: &ColonyRepo, component: &str) -> String {
    let text = std::fs::read_to_string(repo.config()).unwrap();
    let marker = format!("-{component}\"");
    let line = text
        .lines()
        .find(|l| l.starts_with("repository = ") && l.ends_with(&marker))
        .unwrap();
    line.trim_start_matches("repository = ")
        .trim_matches('"')
        .to_string()
}

pub(crate) fn images(
    repo: &ColonyRepo,
    command: &str,
    registry: &str,
    extra_env: &[(&str, &str)],
) -> Run {
    let bed = TestBed::get();
    let tools = ToolDir::new(&["git"], &[]);
    let binary = testkit::run_migrations_binary();
    let home = repo.root().join(".home");
    std::fs::create_dir_all(&home).unwrap();
    let mut env = vec![
        ("PATH", tools.path().to_str().unwrap().to_string()),
        ("HOME", home.to_str().unwrap().to_string()),
        ("DOCKER_HOST", bed.docker_host.clone()),
        ("COLONY_CONFIG", "deploy.toml".to_string()),
        ("COLONY_REGISTRY", registry.to_string()),
        (
            "COLONY_RUN_MIGRATIONS_BIN",
            binary.to_str().unwrap().to_string(),
        ),
    ];
    env.extend(extra_env.iter().map(|(k, v)| (*k, v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    xtask(repo.root(), &[command, "--json"], &env)
}

/// The images of `build`/`push --json` (a versioned document).
pub(crate) fn reports(run: &Run) -> Vec<Value> {
    assert_eq!(run.code, 0, "{}", run.all());
    let document = serde_json::from_str::<Value>(&run.stdout).expect("JSON on stdout");
    assert_eq!(document["schema_version"], 1, "{document}");
    document["images"].as_array().unwrap().clone()
}

pub(crate) fn report<'a>(reports: &'a [Value], component: &str) -> &'a Value {
    reports
        .iter()
        .find(|r| r["component"] == component)
        .unwrap()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// What the registry serves for `name:tag`: (digest, manifest).
pub(crate) fn manifest(registry: &str, name: &str, tag: &str) -> Option<(String, Value)> {
    let url = format!("http://{registry}/v2/{name}/manifests/{tag}");
    let mut response = agent()
        .get(&url)
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .call()
        .unwrap();
    if response.status().as_u16() == 404 {
        return None;
    }
    assert_eq!(response.status().as_u16(), 200, "{url}");
    let digest = response
        .headers()
        .get("docker-content-digest")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let body = response.body_mut().read_to_string().unwrap();
    Some((digest, serde_json::from_str(&body).unwrap()))
}

/// Whether the registry holds a tag of `name`: what a finished push leaves
/// (an aborted one may leave blobs, which the catalog lists, and no tag).
pub(crate) fn has_tags(registry: &str, name: &str) -> bool {
    let mut response = agent()
        .get(&format!("http://{registry}/v2/{name}/tags/list"))
        .call()
        .unwrap();
    if response.status() == 404 {
        return false;
    }
    let value: Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    value["tags"]
        .as_array()
        .is_some_and(|tags| !tags.is_empty())
}

pub(crate) fn catalog(registry: &str) -> Vec<String> {
    let body = agent()
        .get(&format!("http://{registry}/v2/_catalog"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let value: Value = serde_json::from_str(&body).unwrap();
    value["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

/// Every file path in the image's layers, as pushed to the registry.
fn files_in_image(registry: &str, name: &str, tag: &str) -> Vec<String> {
    entries_in_image(registry, name, tag)
        .into_iter()
        .map(|(path, _)| path)
        .collect()
}

/// Every entry of the image's layers with its mode, as pushed.
/// A blob of `name`, as the registry serves it.
pub(crate) fn blob(registry: &str, name: &str, digest: &str) -> Vec<u8> {
    let mut blob = Vec::new();
    agent()
        .get(&format!("http://{registry}/v2/{name}/blobs/{digest}"))
        .call()
        .unwrap()
        .body_mut()
        .as_reader()
        .read_to_end(&mut blob)
        .unwrap();
    blob
}

/// Every layer of `name:tag`, uncompressed (tar bytes), and its config.
pub(crate) fn layers_and_config(registry: &str, name: &str, tag: &str) -> (Vec<Vec<u8>>, Vec<u8>) {
    let (_, manifest) = manifest(registry, name, tag).expect("the image is in the registry");
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| {
            let blob = blob(registry, name, layer["digest"].as_str().unwrap());
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(blob.as_slice())
                .read_to_end(&mut tar)
                .unwrap();
            tar
        })
        .collect();
    let config = blob(
        registry,
        name,
        manifest["config"]["digest"].as_str().unwrap(),
    );
    (layers, config)
}

pub(crate) fn entries_in_image(registry: &str, name: &str, tag: &str) -> Vec<(String, u32)> {
    let mut files = Vec::new();
    for layer in layers_and_config(registry, name, tag).0 {
        let mut archive = tar::Archive::new(layer.as_slice());
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            files.push((
                entry.path().unwrap().display().to_string(),
                entry.header().mode().unwrap() & 0o7777,
            ));
        }
    }
    files
}

/// A file's bytes in a pushed image (the last layer that has it).
fn file_in_image(registry: &str, name: &str, tag: &str, path: impl AsRef<[u8]>) -> Option<Vec<u8>> {
    let mut found = None;
    for layer in layers_and_config(registry, name, tag).0 {
        let mut archive = tar::Archive::new(layer.as_slice());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path_bytes().as_ref() == path.as_ref() {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).unwrap();
                found = Some(bytes);
            }
        }
    }
    found
}

#[test]
fn both_images_are_built_pushed_and_pinned_by_the_digest_the_registry_serves() {
    let bed = TestBed::get();
    let repo = repo_named("pushed");
    let reports = reports(&images(&repo, "push", &bed.registry, &[]));
    let sha = repo.git(&["rev-parse", "--short=12", "HEAD"]);
    let tag_of = |component: &str| {
        report(&reports, component)["tag"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for component in ["backend", "frontend"] {
        let report = report(&reports, component);
        // The commit, then the fingerprint of the image's build settings.
        let tag = report["tag"].as_str().unwrap();
        assert!(
            tag.starts_with(&format!("{sha}-")) && tag.len() == sha.len() + 9,
            "{tag}"
        );
        assert_eq!(report["build"]["status"], "done", "{report}");
        assert_eq!(report["push"]["status"], "done", "{report}");
        let name = repository(&repo, component);
        let (served, _) = manifest(&bed.registry, &name, tag).expect("pushed");
        assert_eq!(
            report["digest"],
            served.as_str(),
            "{component}: reported digest differs from the registry's"
        );
        assert_eq!(
            report["pinned"],
            format!("{}/{name}@{served}", bed.registry).as_str()
        );
    }
    // The backend image carries the runner the init container runs.
    let files = files_in_image(
        &bed.registry,
        &repository(&repo, "backend"),
        &tag_of("backend"),
    );
    assert!(
        files.iter().any(|f| f == "usr/local/bin/run-migrations"),
        "{files:?}"
    );
    assert!(
        files
            .iter()
            .any(|f| f == "app/alembic/versions/0002_activity_and_comments.py"),
        "{files:?}"
    );
}

/// A file's mode reaches the image as `docker build` sends it: a 0600 file
/// is not made world-readable, a 0750 script keeps its bits.
#[test]
fn build_contexts_keep_each_file_s_mode() {
    use std::os::unix::fs::PermissionsExt;
    let bed = TestBed::get();
    let repo = repo_named("modes");
    for (file, mode) in [
        ("backend/app/private.cfg", 0o600),
        ("backend/app/tool.sh", 0o750),
    ] {
        let path = repo.root().join(file);
        std::fs::write(&path, "x\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-qm", "files with their own modes"]);
    let reports = reports(&images(&repo, "push", &bed.registry, &[]));
    let tag = report(&reports, "backend")["tag"]
        .as_str()
        .unwrap()
        .to_string();
    let entries = entries_in_image(&bed.registry, &repository(&repo, "backend"), &tag);
    let mode = |name: &str| {
        entries
            .iter()
            .rfind(|(path, _)| path == name)
            .unwrap_or_else(|| panic!("{name} not in {entries:?}"))
            .1
    };
    assert_eq!(mode("app/app/private.cfg"), 0o600);
    assert_eq!(mode("app/app/tool.sh"), 0o750);
}

/// The context reaches the daemon by file sync, as from the docker CLI:
/// the daemon asks for the files it lacks, and keeps the last context of
/// the same checkout, so a second build sends the file that changed and
/// not the 4 MiB beside it. The image still has both.
#[test]
fn a_second_build_sends_only_the_context_files_that_changed() {
    let bed = TestBed::get();
    let repo = repo_named("filesync");
    // Content no cache has seen: a seed of this run.
    let mut state = unique("seed")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
        | 1;
    let big: Vec<u8> = (0..4 * 1024 * 1024 / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect();
    std::fs::write(repo.root().join("frontend/big.bin"), &big).unwrap();
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-qm", "a big file"]);
    let first = images(&repo, "build", &bed.registry, &[]);
    assert_eq!(first.code, 0, "{}", first.all());
    let sent = context_sent(&first.stderr, "frontend");
    assert!(sent >= 4.0 * 1024.0 * 1024.0, "{sent} B: {}", first.stderr);

    // The same size, other bytes: only the file's time tells the daemon.
    let index = repo.root().join("frontend/index.html");
    let changed = std::fs::read_to_string(&index).unwrap().to_uppercase();
    std::fs::write(&index, &changed).unwrap();
    repo.git(&["commit", "-qam", "a small change"]);
    let second = images(&repo, "push", &bed.registry, &[]);
    let reports = reports(&second);
    let sent = context_sent(&second.stderr, "frontend");
    assert!(
        sent < 64.0 * 1024.0,
        "{sent} B sent again: {}",
        second.stderr
    );
    let tag = report(&reports, "frontend")["tag"]
        .as_str()
        .unwrap()
        .to_string();
    let name = repository(&repo, "frontend");
    let file = |path: &str| {
        file_in_image(
            &bed.registry,
            &name,
            &tag,
            format!("usr/share/colony/{path}"),
        )
        .unwrap_or_else(|| panic!("{path} not in the image"))
    };
    assert_eq!(file("index.html"), changed.as_bytes());
    assert_eq!(file("big.bin"), big);
}

/// `Dockerfile.dockerignore` replaces `.dockerignore` for a BuildKit
/// build, as `docker build` has it; for the backend too, whose build
/// reads the tool's Dockerfile (the user's with the runner's `COPY`).
#[test]
fn a_dockerfile_of_its_own_ignore_file_replaces_dockerignore() {
    let bed = TestBed::get();
    let repo = repo_named("ownignore");
    let root = repo.root();
    for (file, text) in [
        ("frontend/.dockerignore", "*.txt\n"),
        ("frontend/Dockerfile.dockerignore", "*.md\n"),
        ("frontend/kept.txt", "kept"),
        ("backend/.dockerignore", "app/*.txt\n"),
        ("backend/Dockerfile.dockerignore", "app/*.md\n"),
        ("backend/app/kept.txt", "kept"),
        ("backend/app/left.md", "left"),
    ] {
        std::fs::write(root.join(file), text).unwrap();
    }
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-qm", "ignore files of the Dockerfiles"]);
    let pushed = images(&repo, "push", &bed.registry, &[]);
    assert_eq!(pushed.code, 0, "{}", pushed.all());
    let reports = reports(&pushed);
    let file = |component: &str, path: &str| {
        let tag = report(&reports, component)["tag"]
            .as_str()
            .unwrap()
            .to_string();
        file_in_image(&bed.registry, &repository(&repo, component), &tag, path)
    };
    assert_eq!(
        file("frontend", "usr/share/colony/kept.txt").as_deref(),
        Some(b"kept".as_slice())
    );
    assert_eq!(file("frontend", "usr/share/colony/README.md"), None);
    assert_eq!(
        file("backend", "app/app/kept.txt").as_deref(),
        Some(b"kept".as_slice())
    );
    assert_eq!(file("backend", "app/app/left.md"), None);
}

/// A name that is not UTF-8 (Latin-1 "café"), which file sync's stat
/// cannot carry: the build says so and sends the context as a tar, and
/// the file reaches the image under its very bytes.
#[test]
fn a_file_name_that_is_not_utf8_reaches_the_image_byte_for_byte() {
    use std::os::unix::ffi::OsStrExt;
    let bed = TestBed::get();
    let repo = repo_named("latin1");
    let name = b"caf\xe9.txt";
    let file = repo
        .root()
        .join("frontend")
        .join(std::ffi::OsStr::from_bytes(name));
    std::fs::write(&file, "menu").unwrap();
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-qm", "a Latin-1 name"]);
    let pushed = images(&repo, "push", &bed.registry, &[]);
    assert_eq!(pushed.code, 0, "{}", pushed.all());
    let said = "[frontend] the context holds a file name that is not UTF-8 (caf\u{fffd}.txt), \
                which file sync cannot carry: the context goes as a tar";
    assert!(pushed.stderr.contains(said), "{}", pushed.stderr);
    let tag = report(&reports(&pushed), "frontend")["tag"]
        .as_str()
        .unwrap()
        .to_string();
    let path = [b"usr/share/colony/".as_slice(), name].concat();
    let found = file_in_image(&bed.registry, &repository(&repo, "frontend"), &tag, path);
    assert_eq!(found.as_deref(), Some(b"menu".as_slice()));
}

/// The bytes of context a build line says were sent ("built … (4.00 MiB
/// of context sent)").
fn context_sent(stderr: &str, component: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&format!("[{component}] built ")))
        .unwrap_or_else(|| panic!("no built line for {component}: {stderr}"));
    let said = line
        .rsplit_once(" (")
        .and_then(|(_, rest)| rest.strip_suffix(" of context sent)"))
        .unwrap_or_else(|| panic!("{line}"));
    let (number, unit) = said.split_once(' ').unwrap();
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit {other} in {line}"),
    };
    number.parse::<f64>().unwrap() * scale
}

#[test]
fn dockerignore_keeps_files_out_and_exceptions_in() {
    let bed = TestBed::get();
    let repo = repo_named("ignored");
    let reports = reports(&images(&repo, "push", &bed.registry, &[]));
    let tag = report(&reports, "frontend")["tag"]
        .as_str()
        .unwrap()
        .to_string();
    let files = files_in_image(&bed.registry, &repository(&repo, "frontend"), &tag);
    assert!(
        files.iter().any(|f| f == "usr/share/colony/index.html"),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f == "usr/share/colony/README.md"),
        "the !README.md exception: {files:?}"
    );
    assert!(
        !files.iter().any(|f| f.ends_with("notes.md")),
        "*.md must be excluded: {files:?}"
    );
}

#[test]
fn a_dockerfile_error_names_the_step_and_stops_the_other_build() {
    let bed = TestBed::get();
    let repo = repo_named("broken");
    std::fs::write(
        repo.root().join("frontend/Dockerfile"),
        "FROM scratch\nCOPY does-not-exist.txt /x\n",
    )
    .unwrap();
    // A backend that would take half a minute: stopped, never pushed.
    std::fs::write(
        repo.root().join("backend/Dockerfile"),
        format!("FROM {}\nRUN sleep 30\n", bed.shell_image),
    )
    .unwrap();
    repo.set_backend_network(Some("host"));
    // BuildKit names the step as `docker build --progress=plain` does
    // (the context's file sync is a step, as from the CLI). Its numbers
    // (#3, #4) follow the order the vertices start in, which varies.
    let run = images(&repo, "push", &bed.registry, &[]);
    assert_eq!(run.code, 1, "{}", run.all());
    let context_step =
        |l: &str| l.starts_with("[frontend] #") && l.ends_with(" [internal] load build context");
    assert!(run.stderr.lines().any(context_step), "{}", run.stderr);
    assert_contains(&run.stderr, "frontend image build failed at #");
    assert_contains(
        &run.stderr,
        " [1/1] COPY does-not-exist.txt /x: \
         failed to compute cache key: \"/does-not-exist.txt\" not found",
    );
    assert_contains(&run.stderr, "nothing was pushed");
    assert!(!run.stderr.contains("built "), "{}", run.stderr);
    assert!(
        run.stdout.is_empty(),
        "a result was reported: {}",
        run.stdout
    );
    let catalog = catalog(&bed.registry);
    for component in ["backend", "frontend"] {
        let name = repository(&repo, component);
        assert!(
            !catalog.contains(&name),
            "{name} pushed despite the failure: {catalog:?}"
        );
    }

    // The legacy builder names the step in its own words (the fixture's
    // backend needs BuildKit: a classic Dockerfile instead).
    std::fs::write(
        repo.root().join("backend/Dockerfile"),
        "FROM scratch\nCOPY alembic.ini /app/alembic.ini\n",
    )
    .unwrap();
    let legacy = [("DOCKER_BUILDKIT", "0")];
    let run = images(&repo, "push", &bed.registry, &legacy);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(
        &run.stderr,
        "frontend image build failed at Step 2/2 : COPY does-not-exist.txt /x",
    );
    // The backend may have been pushed before the frontend failed: said
    // so, or nothing was.
    let backend = repository(&repo, "backend");
    if has_tags(&bed.registry, &backend) {
        assert_contains(&run.stderr, "not deployed");
        assert_contains(&run.stderr, &format!("{}/{backend}:", bed.registry));
    } else {
        assert_contains(&run.stderr, "nothing was pushed\n");
    }
    assert!(!has_tags(&bed.registry, &repository(&repo, "frontend")));
}

#[test]
fn a_registry_that_is_down_is_a_clear_error_and_nothing_is_reported_as_done() {
    let port = testkit::TcpForwarder::free_port();
    let registry = format!("127.0.0.1:{port}");
    let run = images(&repo_named("down"), "push", &registry, &[]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(&run.stderr, &format!("registry {registry} does not answer"));
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(!run.stderr.contains("pushed "), "{}", run.stderr);
}

#[test]
fn an_htpasswd_registry_takes_the_docker_config_credentials_and_never_shows_them() {
    let bed = TestBed::get();
    let docker_config =
        |password: &str| docker_config_with_login(&bed.auth_registry, &bed.auth_user, password);
    let good = docker_config(&bed.auth_password);
    let repo = repo_named("authed");
    let run = images(
        &repo,
        "push",
        &bed.auth_registry,
        &[("DOCKER_CONFIG", good.path().to_str().unwrap())],
    );
    assert!(
        !run.all().contains(&bed.auth_password),
        "the password was printed"
    );
    let reports = reports(&run);
    assert_eq!(report(&reports, "backend")["push"]["status"], "done");

    let wrong = docker_config("not-the-password-0451");
    let run = images(
        &repo_named("authed-wrong"),
        "push",
        &bed.auth_registry,
        &[("DOCKER_CONFIG", wrong.path().to_str().unwrap())],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(&run.stderr, "refused the credentials");
    assert_contains(&run.stderr, &format!("docker login {}", bed.auth_registry));
    assert!(
        !run.all().contains("not-the-password-0451") && !run.all().contains(&bed.auth_password)
    );

    let none = tempfile::tempdir().unwrap();
    let run = images(
        &repo_named("authed-none"),
        "push",
        &bed.auth_registry,
        &[("DOCKER_CONFIG", none.path().to_str().unwrap())],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(&run.stderr, "requires a login");
}

/// A manifest as every puller takes it: Docker's v2, gzip layers. Returns
/// its layers.
pub(crate) fn assert_docker_v2_gzip(served: &Value) -> &Vec<Value> {
    assert_eq!(
        served["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let layers = served["layers"].as_array().unwrap();
    for layer in layers {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }
    layers
}

/// A Docker config directory whose `config.json` holds one login.
pub(crate) fn docker_config_with_login(
    registry: &str,
    user: &str,
    password: &str,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let auth = base64_encode(&format!("{user}:{password}"));
    std::fs::write(
        dir.path().join("config.json"),
        format!("{{\"auths\": {{\"{registry}\": {{\"auth\": \"{auth}\"}}}}}}"),
    )
    .unwrap();
    dir
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn a_second_run_with_nothing_changed_skips_both_images() {
    let bed = TestBed::get();
    let repo = repo_named("rerun");
    let first = reports(&images(&repo, "push", &bed.registry, &[]));
    let second = reports(&images(&repo, "push", &bed.registry, &[]));
    for component in ["backend", "frontend"] {
        let again = report(&second, component);
        assert_eq!(again["build"]["status"], "skipped", "{again}");
        assert_eq!(again["push"]["status"], "skipped", "{again}");
        assert_eq!(
            again["digest"],
            report(&first, component)["digest"],
            "the skipped image keeps its digest"
        );
    }
}

#[test]
fn a_dirty_tree_gets_its_own_tag_per_content() {
    let bed = TestBed::get();
    let repo = repo_named("dirty");
    let clean = reports(&images(&repo, "build", &bed.registry, &[]));
    std::fs::write(repo.root().join("frontend/extra.html"), "<p>one</p>").unwrap();
    let first = reports(&images(&repo, "build", &bed.registry, &[]));
    std::fs::write(repo.root().join("frontend/extra.html"), "<p>two</p>").unwrap();
    let second = reports(&images(&repo, "build", &bed.registry, &[]));
    let tag = |reports: &[Value]| {
        report(reports, "frontend")["tag"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        tag(&first).starts_with(&format!("{}-dirty-", tag(&clean))),
        "{}",
        tag(&first)
    );
    assert_ne!(tag(&first), tag(&second));
    assert_eq!(
        report(&second, "backend")["tag"],
        report(&clean, "backend")["tag"],
        "backend context is clean"
    );
    assert_eq!(report(&first, "frontend")["build"]["status"], "done");
}

/// A homelab registry by name: `registry.colony-bed.test` resolves to
/// 127.0.0.1, which the daemon treats as insecure (its default CIDR), so
/// `docker push` uses plain HTTP; so must we, for the skip and the digests.
#[test]
fn a_registry_the_daemon_treats_as_insecure_works_by_name() {
    let bed = TestBed::get();
    let repo = repo_named("named");
    let first = reports(&images(&repo, "push", &bed.named_registry, &[]));
    for component in ["backend", "frontend"] {
        let pushed = report(&first, component);
        assert_eq!(pushed["push"]["status"], "done", "{pushed}");
        assert!(pushed["repository"]
            .as_str()
            .unwrap()
            .starts_with("registry.colony-bed.test:"));
    }
    let again = reports(&images(&repo, "push", &bed.named_registry, &[]));
    for component in ["backend", "frontend"] {
        let skipped = report(&again, component);
        assert_eq!(skipped["build"]["status"], "skipped", "{skipped}");
        assert_eq!(skipped["digest"], report(&first, component)["digest"]);
    }
}

/// `secure-registry.colony-bed.test` resolves to ::1, outside the daemon's
/// insecure CIDRs: the daemon would insist on HTTPS, and so do we, saying
/// why and which setting changes it, with nothing built or pushed.
#[test]
fn a_secure_registry_speaking_plain_http_names_the_daemon_setting() {
    let bed = TestBed::get();
    let forwarder = testkit::TcpForwarder::start_on("::1", bed.registry.clone());
    let registry = format!("{}:{}", bed.secure_name, forwarder.port);
    let run = images(&repo_named("secure"), "push", &registry, &[]);
    assert_eq!(run.code, 1, "{}", run.all());
    for expected in [
        &format!("registry {registry} does not answer over HTTPS"),
        "the Docker daemon treats",
        "not in insecure-registries",
        &format!("add \"{registry}\" to insecure-registries"),
    ] {
        assert_contains(&run.stderr, expected);
    }
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(!run.stderr.contains("pushed "), "{}", run.stderr);
}

/// The TLS registry by its address, 127.0.0.1, inside the daemon's
/// insecure CIDR: `docker push` speaks HTTPS without verifying the
/// certificate (made for another name), and so do we, for the push and for
/// the digests that make the second run skip both images.
#[test]
fn an_insecure_registry_serving_https_is_used_without_verification() {
    let bed = TestBed::get();
    let port = bed.tls_registry.rsplit_once(':').unwrap().1;
    let registry = format!("127.0.0.1:{port}");
    let repo = repo_named("insecure-tls");
    let first = reports(&images(&repo, "push", &registry, &[]));
    let again = reports(&images(&repo, "push", &registry, &[]));
    for component in ["backend", "frontend"] {
        assert_eq!(report(&first, component)["push"]["status"], "done");
        let skipped = report(&again, component);
        assert_eq!(skipped["build"]["status"], "skipped", "{skipped}");
        assert_eq!(skipped["digest"], report(&first, component)["digest"]);
    }
}

/// The TLS registry's name on a port certs.d has no CA for: the
/// certificate is untrusted, as `docker push` finds it; the error says
/// where the CA goes, and nothing is built or pushed.
#[test]
fn an_untrusted_registry_certificate_says_where_its_ca_goes() {
    let bed = TestBed::get();
    let port = bed.tls_registry.rsplit_once(':').unwrap().1;
    let forwarder = testkit::TcpForwarder::start_on("::1", format!("127.0.0.1:{port}"));
    let registry = format!("{}:{}", bed.secure_name, forwarder.port);
    let run = images(&repo_named("untrusted"), "push", &registry, &[]);
    assert_eq!(run.code, 1, "{}", run.all());
    for expected in [
        &format!("registry {registry} does not answer over HTTPS"),
        "UnknownIssuer",
        &format!("put the CA that signed it in /etc/docker/certs.d/{registry}/ca.crt"),
    ] {
        assert_contains(&run.stderr, expected);
    }
    assert!(!run.stderr.contains("pushed "), "{}", run.stderr);

    // A client certificate without its key, as moby refuses it.
    let dir = bed.certs_d.join(&registry);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("client.cert"), "").unwrap();
    let run = images(&repo_named("untrusted"), "push", &registry, &[]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(
        &run.stderr,
        &format!(
            "{}: missing key client.key for client certificate client.cert",
            dir.display()
        ),
    );
}

/// `DOCKER_HOST=tcp://…`, which the docker CLI honours: builds go there.
#[test]
fn a_tcp_docker_host_is_where_images_are_built() {
    let bed = TestBed::get();
    let socket = bed
        .docker_host
        .strip_prefix("unix://")
        .expect("a unix socket");
    let forwarder = testkit::TcpForwarder::to_unix_socket(socket.into());
    let host = format!("tcp://127.0.0.1:{}", forwarder.port);
    let built = reports(&images(
        &repo_named("tcp"),
        "build",
        &bed.registry,
        &[("DOCKER_HOST", &host)],
    ));
    assert_eq!(
        report(&built, "backend")["build"]["status"],
        "done",
        "{built:?}"
    );
    let closed = format!("tcp://127.0.0.1:{}", testkit::TcpForwarder::free_port());
    let run = images(
        &repo_named("tcp"),
        "build",
        &bed.registry,
        &[("DOCKER_HOST", &closed)],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(
        &run.stderr,
        &format!("no Docker daemon at {closed} (from DOCKER_HOST)"),
    );
}

/// `DOCKER_HOST=ssh://builder` (an alias in the ssh config, as a homelab
/// has one for its build box): builds run there, through `ssh builder
/// docker system dial-stdio` as the docker CLI runs it, BuildKit's session
/// included. A host ssh cannot reach is said with the endpoint.
#[test]
fn an_ssh_docker_host_is_where_images_are_built() {
    let bed = TestBed::get();
    // The machine's ssh client, as the docker CLI runs it.
    let tools = ToolDir::new(&["git", "ssh"], &[]);
    let path = tools.path().to_str().unwrap();
    let repo = repo_named("ssh");
    let built = reports(&images(
        &repo,
        "build",
        &bed.registry,
        &[("DOCKER_HOST", &bed.docker_ssh_host), ("PATH", path)],
    ));
    // Its ssh masters (one per connection, in a control directory of the
    // run's own) were told to exit when it ended; one may take a moment.
    // No other test uses this alias.
    let masters = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| std::fs::read(entry.ok()?.path().join("cmdline")).ok())
            .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
            .filter(|cmdline| {
                cmdline.starts_with("ssh ")
                    && cmdline.contains(" -M ")
                    && cmdline.contains("colony-bed-builder")
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut left = masters();
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = masters();
    }
    assert!(left.is_empty(), "ssh processes left behind: {left:?}");
    assert_eq!(
        report(&built, "backend")["build"]["status"],
        "done",
        "{built:?}"
    );
    assert_eq!(
        report(&built, "frontend")["build"]["status"],
        "done",
        "{built:?}"
    );

    let unknown = "ssh://no-such-builder.colony-bed.test";
    let run = images(
        &repo_named("ssh"),
        "build",
        &bed.registry,
        &[("DOCKER_HOST", unknown), ("PATH", path)],
    );
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(
        &run.stderr,
        &format!("no Docker daemon at {unknown} (from DOCKER_HOST)"),
    );
}

/// A Docker context made by the docker CLI for a TCP daemon with TLS and
/// a client certificate (the bed's daemon's TLS port): builds go there
/// over TLS. `DOCKER_TLS_VERIFY` with `DOCKER_CERT_PATH` too; without the
/// certificates the daemon does not answer, said with the endpoint.
#[test]
fn a_docker_context_with_tls_files_is_where_images_are_built() {
    let bed = TestBed::get();
    let config = tempfile::tempdir().unwrap();
    let tls = |file: &str| bed.tls_dir.join(file).to_str().unwrap().to_string();
    let cli = |args: &[&str]| {
        let output = std::process::Command::new("docker")
            .env("DOCKER_CONFIG", config.path())
            .env_remove("DOCKER_HOST")
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
    };
    let endpoint = format!(
        "host={},ca={},cert={},key={}",
        bed.docker_tls_host,
        tls("ca.pem"),
        tls("client.pem"),
        tls("client-key.pem")
    );
    cli(&["context", "create", "tls-bed", "--docker", &endpoint]);
    cli(&["context", "use", "tls-bed"]);
    let docker_config = config.path().to_str().unwrap();
    let built = images(
        &repo_named("tls-context"),
        "build",
        &bed.registry,
        &[("DOCKER_HOST", ""), ("DOCKER_CONFIG", docker_config)],
    );
    assert_eq!(
        report(&reports(&built), "backend")["build"]["status"],
        "done"
    );
    // The context's files are what it used: without its key, it says so.
    let tls_files = std::fs::read_dir(config.path().join("contexts/tls"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("docker");
    std::fs::remove_file(tls_files.join("key.pem")).unwrap();
    let keyless = images(
        &repo_named("tls-context"),
        "build",
        &bed.registry,
        &[("DOCKER_HOST", ""), ("DOCKER_CONFIG", docker_config)],
    );
    assert_eq!(keyless.code, 1, "{}", keyless.all());
    for expected in [
        &format!(
            "no Docker daemon at {} (from docker context tls-bed; TLS with the certificates in {})",
            bed.docker_tls_host,
            tls_files.display()
        ),
        "has no key.pem",
    ] {
        assert_contains(&keyless.stderr, expected);
    }

    // The environment variables' way, with the CLI's file names.
    let cert_path = docker_cert_path(bed);
    let tls_env = [
        ("DOCKER_HOST", bed.docker_tls_host.as_str()),
        ("DOCKER_TLS_VERIFY", "1"),
        ("DOCKER_CERT_PATH", cert_path.path().to_str().unwrap()),
    ];
    let built = reports(&images(
        &repo_named("tls-env"),
        "build",
        &bed.registry,
        &tls_env,
    ));
    assert_eq!(report(&built, "frontend")["build"]["status"], "done");

    // Without TLS the daemon's TLS port does not answer.
    let plain = images(
        &repo_named("tls-env"),
        "build",
        &bed.registry,
        &[("DOCKER_HOST", bed.docker_tls_host.as_str())],
    );
    assert_eq!(plain.code, 1, "{}", plain.all());
    assert_contains(
        &plain.stderr,
        &format!(
            "no Docker daemon at {} (from DOCKER_HOST)",
            bed.docker_tls_host
        ),
    );
}

/// A `DOCKER_CERT_PATH` for the bed's TLS daemon, with the CLI's file
/// names.
pub(crate) fn docker_cert_path(bed: &TestBed) -> tempfile::TempDir {
    let cert_path = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("ca.pem", "ca.pem"),
        ("client.pem", "cert.pem"),
        ("client-key.pem", "key.pem"),
    ] {
        std::fs::copy(bed.tls_dir.join(from), cert_path.path().join(to)).unwrap();
    }
    cert_path
}

/// The docker CLI against the bed's daemon (for reference builds and
/// running images).
pub(crate) fn docker(args: &[&str]) -> std::process::Output {
    std::process::Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", &TestBed::get().docker_host)
        .output()
        .expect("the docker CLI runs")
}

/// `docker build` with BuildKit: Debian's docker CLI (20.10) has it built
/// in, without the buildx plugin a newer CLI needs.
fn buildkit_build(args: &[&str]) {
    let output = std::process::Command::new("/usr/bin/docker")
        .arg("build")
        .args(args)
        .env("DOCKER_HOST", &TestBed::get().docker_host)
        .env("DOCKER_BUILDKIT", "1")
        .output()
        .expect("the docker CLI runs");
    assert!(
        output.status.success(),
        "docker build {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub(crate) fn docker_ok(args: &[&str]) -> String {
    let output = docker(args);
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_backend_is_one_build_with_the_same_files_as_two_builds() {
    let bed = TestBed::get();
    let repo = repo_named("onebuild");
    let run = images(&repo, "push", &bed.registry, &[]);
    let reports = reports(&run);
    let tag = report(&reports, "backend")["tag"]
        .as_str()
        .unwrap()
        .to_string();
    // One build, no intermediate image.
    assert_eq!(
        run.stderr.matches("[backend] building").count(),
        1,
        "{}",
        run.stderr
    );
    let name = repository(&repo, "backend");
    let one_build = entries_in_image(&bed.registry, &name, &tag);

    // What the two builds made: the user's Dockerfile, then FROM it + COPY.
    let reference = format!("{}/{}-reference", bed.registry, name);
    let app = format!("{reference}-app:{tag}");
    let backend = repo.root().join("backend");
    // The fixture's Dockerfile needs BuildKit and no network, as the deploy
    // builds it (deploy.toml: network = "none").
    buildkit_build(&["--network", "none", "-t", &app, backend.to_str().unwrap()]);
    let layer = tempfile::tempdir().unwrap();
    let runner = layer.path().join("run-migrations");
    std::fs::copy(testkit::run_migrations_binary(), &runner).unwrap();
    std::fs::set_permissions(&runner, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        layer.path().join("Dockerfile"),
        format!("FROM {app}\nCOPY run-migrations /usr/local/bin/run-migrations\n"),
    )
    .unwrap();
    let two_builds = format!("{reference}:{tag}");
    buildkit_build(&["-t", &two_builds, layer.path().to_str().unwrap()]);
    docker_ok(&["push", "-q", &two_builds]);
    let reference_name = format!("{name}-reference");
    let mut expected = entries_in_image(&bed.registry, &reference_name, &tag);
    let mut actual = one_build.clone();
    expected.sort();
    actual.sort();
    assert_eq!(actual, expected);
    assert!(
        one_build.contains(&("usr/local/bin/run-migrations".to_string(), 0o755)),
        "{one_build:?}"
    );
    // Nothing of the tool's own names leaks into the image.
    assert!(!one_build
        .iter()
        .any(|(path, _)| path.contains(".colony-deploy")));
}

/// The variables a child needs to run this toolchain's cargo with a HOME
/// of its own.
fn toolchain_env(tools: &std::path::Path) -> Vec<(&'static str, String)> {
    let cargo = std::path::PathBuf::from(std::env::var("CARGO").expect("cargo test sets CARGO"));
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    vec![
        (
            "PATH",
            // A C compiler too (ring builds C): /usr/bin, as on any Linux box.
            format!(
                "{}:{}:/usr/bin:/bin",
                tools.display(),
                cargo.parent().unwrap().display()
            ),
        ),
        ("CARGO", cargo.display().to_string()),
        (
            "RUSTUP_HOME",
            std::env::var("RUSTUP_HOME").unwrap_or_else(|_| format!("{home}/.rustup")),
        ),
        (
            "CARGO_HOME",
            std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{home}/.cargo")),
        ),
    ]
}

/// `build` with the runner xtask builds itself (no COLONY_RUN_MIGRATIONS_BIN).
fn build_with_own_runner(repo: &ColonyRepo, extra: &[(&str, &str)]) -> Run {
    let bed = TestBed::get();
    let tools = ToolDir::new(&["git"], &[]);
    let home = repo.root().join(".home");
    std::fs::create_dir_all(&home).unwrap();
    let mut env: Vec<(&str, String)> = vec![
        ("HOME", home.display().to_string()),
        ("DOCKER_HOST", bed.docker_host.clone()),
        ("COLONY_CONFIG", "deploy.toml".into()),
        ("COLONY_REGISTRY", bed.registry.clone()),
    ];
    env.extend(toolchain_env(tools.path()));
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    xtask(repo.root(), &["build", "--json"], &env)
}

#[test]
fn a_multi_stage_backend_with_a_user_gets_a_static_runner_that_runs_from_scratch() {
    let bed = TestBed::get();
    let repo = repo_named("static");
    let backend = repo.root().join("backend");
    std::fs::write(
        backend.join("passwd"),
        "root:x:0:0::/:/x\napp:x:1000:1000::/app:/x\n",
    )
    .unwrap();
    std::fs::write(
        backend.join("Dockerfile"),
        "FROM scratch AS source\nCOPY alembic.ini /app/alembic.ini\nCOPY alembic /app/alembic\n\n\
         FROM scratch\nCOPY passwd /etc/passwd\nCOPY --from=source /app /app\nWORKDIR /app\nUSER app",
    )
    .unwrap();
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "multi-stage backend"]);

    let first = build_with_own_runner(&repo, &[]);
    let reports = reports(&first);
    assert_contains(&first.stderr, "run-migrations for linux/amd64");
    let again = build_with_own_runner(&repo, &[]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(
        again
            .stderr
            .contains("run-migrations for linux/amd64 is cached"),
        "built once per change, not once per deploy:\n{}",
        again.stderr
    );
    let image = format!(
        "{}/{}:{}",
        bed.registry,
        repository(&repo, "backend"),
        report(&reports, "backend")["tag"].as_str().unwrap()
    );
    assert_eq!(
        docker_ok(&["image", "inspect", "-f", "{{.Config.User}}", &image]).trim(),
        "app"
    );
    // No libc in the image at all, and no network: the runner starts.
    let help = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        &image,
        "run-migrations",
        "--help",
    ]);
    assert!(
        help.status.success()
            && String::from_utf8_lossy(&help.stdout).contains("Usage: run-migrations"),
        "{}",
        String::from_utf8_lossy(&help.stderr)
    );
    // Its at-head path, which starts no Python, against the bed's database
    // by host name (resolved from /etc/hosts without NSS modules).
    let url = bed.create_database("scratch");
    bed.psql(
        &url,
        "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY); \
         INSERT INTO alembic_version VALUES ('0002_activity_and_comments');",
    );
    let by_name = url.replace("127.0.0.1", "localhost");
    let run = docker(&[
        "run",
        "--rm",
        "--network",
        "host",
        "-e",
        &format!("DATABASE_URL={by_name}"),
        // Alembic must resolve, though at head it is never started.
        "-e",
        "RUN_MIGRATIONS_ALEMBIC_CMD=/usr/local/bin/run-migrations",
        &image,
        "run-migrations",
    ]);
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "{output}");
    assert!(
        output.contains("already at head 0002_activity_and_comments"),
        "{output}"
    );
    assert!(
        output.trim_end().ends_with("Migrations complete."),
        "{output}"
    );
}

#[test]
fn an_arm64_backend_without_an_arm64_runner_is_refused_before_any_build() {
    let bed = TestBed::get();
    let repo = repo_named("arm64");
    let config = std::fs::read_to_string(repo.config()).unwrap();
    std::fs::write(
        repo.config(),
        config.replace(
            "[environments.colony-dev.images.backend]\n",
            "[environments.colony-dev.images.backend]\nplatform = \"linux/arm64\"\n",
        ),
    )
    .unwrap();
    repo.git(&["commit", "-q", "-am", "an arm64 backend"]);
    let image = format!("{}/{}", bed.registry, repository(&repo, "backend"));

    let own = build_with_own_runner(&repo, &[]);
    assert_eq!(own.code, 2, "{}", own.all());
    assert!(
        own.stderr.contains("the backend image is linux/arm64, and this linux/amd64 machine cannot build run-migrations for it")
            && own.stderr.contains("rustup target add aarch64-unknown-linux-musl"),
        "{}",
        own.stderr
    );
    let prebuilt = images(&repo, "build", &bed.registry, &[]);
    assert_eq!(prebuilt.code, 2, "{}", prebuilt.all());
    assert!(
        prebuilt
            .stderr
            .contains("is a linux/amd64 binary, but the backend image is linux/arm64"),
        "{}",
        prebuilt.stderr
    );
    // No image of that repository, whatever its tag.
    let listed = docker(&["image", "ls", "-q", &image]);
    assert_eq!(listed.status.code(), Some(0));
    assert!(listed.stdout.is_empty(), "something was built");
}
