//! Test support shared by the workspace's integration tests.
//!
//! `TestBed::get()` returns the addresses and paths of the services that
//! `scripts/test-bed.sh up` started. A missing service is a loud panic with the
//! command that fixes it, never a silent skip: in CI every service is there.

pub mod registry_proxy;
pub mod sim;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The test bed, as `scripts/test-bed.sh env` describes it.
#[derive(Debug, Clone)]
pub struct TestBed {
    pub dir: PathBuf,
    pub docker_host: String,
    /// A second engine, Docker 26 with the containerd image store.
    pub containerd_docker_host: String,
    /// `127.0.0.1:<port>`, plain HTTP.
    pub registry: String,
    /// The same registry by a hosts-file name resolving to 127.0.0.1,
    /// `registry.colony-bed.test:<port>`: insecure by the daemon's CIDRs.
    pub named_registry: String,
    /// A hosts-file name resolving to ::1, which the daemon treats as secure.
    pub secure_name: String,
    /// A second registry behind htpasswd auth, and its login.
    pub auth_registry: String,
    pub auth_user: String,
    pub auth_password: String,
    /// A third registry over TLS, `secure-registry.colony-bed.test:<port>`
    /// (its certificate is for that name only), trusted by the CA file the
    /// bed put in `certs_d/<host:port>/ca.crt`; on 127.0.0.1 too.
    pub tls_registry: String,
    /// The bed's CA (`ca.pem`) and a client certificate (`client.pem`,
    /// `client-key.pem`) for the daemon's TLS port.
    pub tls_dir: PathBuf,
    /// The certs.d directory the daemon and the tool read.
    pub certs_d: PathBuf,
    /// `tcp://127.0.0.1:<port>`: the bed's daemon with TLS and client certs.
    pub docker_tls_host: String,
    /// `ssh://colony-bed-builder`: the bed's daemon through the bed's sshd
    /// (an alias in the system's ssh config).
    pub docker_ssh_host: String,
    /// `postgresql://postgres@127.0.0.1:<port>` (no database name).
    pub database_url_base: String,
    pub pg_bin: PathBuf,
    pub venv: PathBuf,
    pub alembic: PathBuf,
    /// Helm 4, the default.
    pub helm: PathBuf,
    /// Helm 3, for what must work with both majors.
    pub helm3: PathBuf,
    pub kubectl: PathBuf,
    /// checkov and kubernetes-validate, for the chart's policy checks.
    pub checkov: PathBuf,
    pub kubernetes_validate: PathBuf,
    /// A base image with a shell (Debian's busybox-static), in the bed's
    /// Docker only: for Dockerfiles with `RUN` steps.
    pub shell_image: String,
    /// A Python base image (Debian trixie: Python 3.13, Alembic,
    /// SQLAlchemy, psycopg; uv), in the bed's Docker only.
    pub python_image: String,
    /// The bed's PostgreSQL image (the official image's contract), for
    /// rehearsals.
    pub postgres_image: String,
}

const HOW_TO_START: &str =
    "start it with `scripts/test-bed.sh up` (or run everything with `scripts/test-bed.sh test`)";

impl TestBed {
    /// Reads the variables from the environment, or else from the bed's `env`
    /// file, so that a plain `cargo test` works once the bed is up.
    pub fn get() -> &'static TestBed {
        static BED: OnceLock<TestBed> = OnceLock::new();
        BED.get_or_init(|| {
            Self::load().unwrap_or_else(|problem| panic!("test bed: {problem}; {HOW_TO_START}"))
        })
    }

    fn load() -> Result<TestBed, String> {
        let dir =
            std::env::var("COLONY_TEST_BED_DIR").unwrap_or_else(|_| "/tmp/colony-test-bed".into());
        let file_vars = read_env_file(&Path::new(&dir).join("env"));
        let var = |name: &str| -> Result<String, String> {
            std::env::var(name)
                .ok()
                .or_else(|| file_vars.get(name).cloned())
                .ok_or_else(|| format!("{name} is not set and {dir}/env does not define it"))
        };
        let bed = TestBed {
            dir: PathBuf::from(&dir),
            docker_host: var("DOCKER_HOST")?,
            containerd_docker_host: var("COLONY_TEST_CONTAINERD_DOCKER_HOST")?,
            registry: var("COLONY_TEST_REGISTRY")?,
            named_registry: var("COLONY_TEST_NAMED_REGISTRY")?,
            secure_name: var("COLONY_TEST_SECURE_NAME")?,
            auth_registry: var("COLONY_TEST_AUTH_REGISTRY")?,
            auth_user: var("COLONY_TEST_AUTH_USER")?,
            auth_password: var("COLONY_TEST_AUTH_PASSWORD")?,
            tls_registry: var("COLONY_TEST_TLS_REGISTRY")?,
            tls_dir: var("COLONY_TEST_TLS_DIR")?.into(),
            certs_d: var("COLONY_TEST_CERTS_D")?.into(),
            docker_tls_host: var("COLONY_TEST_DOCKER_TLS_HOST")?,
            docker_ssh_host: var("COLONY_TEST_DOCKER_SSH_HOST")?,
            database_url_base: var("COLONY_TEST_DATABASE_URL")?,
            pg_bin: var("COLONY_TEST_PG_BIN")?.into(),
            venv: var("COLONY_TEST_VENV")?.into(),
            alembic: var("COLONY_TEST_ALEMBIC")?.into(),
            helm: var("COLONY_TEST_HELM")?.into(),
            helm3: var("COLONY_TEST_HELM3")?.into(),
            kubectl: var("COLONY_TEST_KUBECTL")?.into(),
            checkov: var("COLONY_TEST_CHECKOV")?.into(),
            kubernetes_validate: var("COLONY_TEST_KUBERNETES_VALIDATE")?.into(),
            shell_image: var("COLONY_TEST_SHELL_IMAGE")?,
            python_image: var("COLONY_TEST_PYTHON_IMAGE")?,
            postgres_image: var("COLONY_TEST_POSTGRES_IMAGE")?,
        };
        for tool in [
            &bed.alembic,
            &bed.helm,
            &bed.helm3,
            &bed.kubectl,
            &bed.checkov,
            &bed.kubernetes_validate,
        ] {
            if !tool.is_file() {
                return Err(format!("{} does not exist", tool.display()));
            }
        }
        Ok(bed)
    }

    /// The directory holding the bed's `helm` and `kubectl`, for a test PATH.
    pub fn kube_tools_dir(&self) -> PathBuf {
        self.helm
            .parent()
            .expect("helm has a parent directory")
            .to_path_buf()
    }
}

/// `export KEY=VALUE` lines, as `scripts/test-bed.sh env` writes them.
fn read_env_file(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The root of this workspace.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit sits in the workspace")
        .to_path_buf()
}

/// Where a program is on the current PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A directory to use as the whole PATH of a child process: symlinks to
/// exactly the tools named, so a test controls which ones "are installed".
pub struct ToolDir {
    pub dir: tempfile::TempDir,
}

impl ToolDir {
    /// `tools`: names found on the current PATH, or (name, path) pairs.
    pub fn new(from_path: &[&str], explicit: &[(&str, &Path)]) -> ToolDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in from_path {
            let target = which(name).unwrap_or_else(|| {
                panic!("{name} is not on PATH; scripts/test-bed.sh up installs it")
            });
            std::os::unix::fs::symlink(target, dir.path().join(name)).expect("symlink");
        }
        for (name, target) in explicit {
            std::os::unix::fs::symlink(target, dir.path().join(name)).expect("symlink");
        }
        ToolDir { dir }
    }

    /// Adds an executable that records each call (argv, one line) into
    /// `calls.log` beside it and fails: a tool that must not be run.
    pub fn with_recorders(self, names: &[&str]) -> ToolDir {
        for name in names {
            let script = self.dir.path().join(name);
            let log = self.calls_log();
            std::fs::write(
                &script,
                format!(
                    "#!/bin/sh\necho \"{name} $*\" >> '{}'\nexit 97\n",
                    log.display()
                ),
            )
            .expect("write recorder");
            set_executable(&script);
        }
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn calls_log(&self) -> PathBuf {
        self.dir.path().join("calls.log")
    }

    /// What the recorders saw, one call a line.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.calls_log())
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

fn set_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A miniature Colony monorepo in a temp dir: testdata/colony plus this
/// workspace's helm/ and scripts/, committed with a fixed identity and date
/// so that its commit (and so the image tags) is the same on every machine.
pub struct ColonyRepo {
    pub dir: tempfile::TempDir,
}

impl ColonyRepo {
    pub fn create() -> ColonyRepo {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = workspace_root();
        copy_tree(&root.join("testdata/colony"), dir.path());
        for extra in ["helm", "scripts"] {
            if root.join(extra).is_dir() {
                copy_tree(&root.join(extra), &dir.path().join(extra));
            }
        }
        let repo = ColonyRepo { dir };
        repo.git(&["init", "-q"]);
        repo.git(&["add", "-A"]);
        repo.git(&["commit", "-q", "-m", "Colony fixture"]);
        repo
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> PathBuf {
        self.root().join("deploy.toml")
    }

    pub fn git(&self, args: &[&str]) -> String {
        let output = std::process::Command::new("git")
            .args(args)
            .current_dir(self.root())
            .env("GIT_AUTHOR_NAME", "Colony Tests")
            .env("GIT_AUTHOR_EMAIL", "tests@colony.invalid")
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_NAME", "Colony Tests")
            .env("GIT_COMMITTER_EMAIL", "tests@colony.invalid")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .expect("git runs");
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy fixture file");
        }
    }
}

impl TestBed {
    /// A new, empty database on the bed's PostgreSQL; returns its URL.
    pub fn create_database(&self, prefix: &str) -> String {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        // The pid alone repeats across runs (the bed's databases outlive
        // them): the clock makes the name new.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos()
            % 1_000_000_000_000;
        let name = format!(
            "{prefix}_{}_{}_{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        self.psql(
            &format!("{}/postgres", self.database_url_base),
            &format!("CREATE DATABASE {name}"),
        );
        format!("{}/{name}", self.database_url_base)
    }

    /// Runs SQL with the real psql and returns its unaligned output.
    pub fn psql(&self, url: &str, sql: &str) -> String {
        let output = std::process::Command::new("psql")
            .args([url, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql runs (scripts/test-bed.sh up installs it)");
        assert!(
            output.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Runs a SQL file with psql.
    pub fn psql_file(&self, url: &str, file: &Path) {
        let output = std::process::Command::new("psql")
            .args([url, "-XAtq", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(file)
            .output()
            .expect("psql runs");
        assert!(
            output.status.success(),
            "psql -f {}: {}",
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A copy of the fixture's backend (alembic.ini, alembic/, app/) that a test
/// may change, e.g. by adding a revision.
pub fn backend_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_tree(
        &workspace_root().join("testdata/colony/backend"),
        dir.path(),
    );
    dir
}

/// Forwards TCP connections from a local port to `upstream`: a database that
/// "comes up" when the forwarder starts.
pub struct TcpForwarder {
    pub port: u16,
}

impl TcpForwarder {
    /// A port nothing listens on (yet).
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port()
    }

    /// Starts listening on `port` and forwarding to `upstream` (host:port),
    /// in background threads that live as long as the test process.
    pub fn start(port: u16, upstream: String) -> TcpForwarder {
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the forwarder's port");
        Self::serve(listener, upstream)
    }

    /// A TCP port on 127.0.0.1 in front of a unix socket (a Docker daemon
    /// reached as `tcp://`).
    pub fn to_unix_socket(socket: std::path::PathBuf) -> TcpForwarder {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if let Ok(server) = std::os::unix::net::UnixStream::connect(&socket) {
                    pump(client, server);
                }
            }
        });
        TcpForwarder { port }
    }

    /// Like `start`, on a free port of `address` (e.g. `::1`).
    pub fn start_on(address: &str, upstream: String) -> TcpForwarder {
        let listener =
            std::net::TcpListener::bind((address, 0)).expect("bind the forwarder's address");
        Self::serve(listener, upstream)
    }

    fn serve(listener: std::net::TcpListener, upstream: String) -> TcpForwarder {
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if let Ok(server) = std::net::TcpStream::connect(&upstream) {
                    pump(client, server);
                }
            }
        });
        TcpForwarder { port }
    }
}

/// A stream both ways (TCP or unix socket), cloned and half-closed by the
/// forwarders.
trait Duplex: std::io::Read + std::io::Write + Send + Sized + 'static {
    fn duplicate(&self) -> Self;
    fn close_write(&self);
}

impl Duplex for std::net::TcpStream {
    fn duplicate(&self) -> Self {
        self.try_clone().expect("clone")
    }
    fn close_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl Duplex for std::os::unix::net::UnixStream {
    fn duplicate(&self) -> Self {
        self.try_clone().expect("clone")
    }
    fn close_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// Copies bytes between `client` and `server` both ways, in two threads.
fn pump(client: std::net::TcpStream, server: impl Duplex) {
    let (mut client_read, mut server_write) = (client.duplicate(), server.duplicate());
    let (mut server_read, mut client_write) = (server, client);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut server_write);
        server_write.close_write();
    });
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut server_read, &mut client_write);
        client_write.close_write();
    });
}

/// `cargo build` of one binary of this workspace, from inside a test. The
/// variables cargo sets for the running test are removed, so the build sees
/// the environment a developer's own `cargo build` sees and finds its
/// artifacts fresh instead of rebuilding them.
pub fn cargo_build_binary(package: &str, binary: &str) -> PathBuf {
    cargo_build(package, binary, None)
}

/// `cargo build` of one binary, for this machine or for `target` (a triple
/// and the variables its build needs).
fn cargo_build(
    package: &str,
    binary: &str,
    target: Option<(&str, &[(String, String)])>,
) -> PathBuf {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command
        .args(["build", "--quiet", "--package", package, "--bin", binary])
        .current_dir(&root);
    if let Some((triple, env)) = target {
        command.args(["--target", triple]).envs(env.iter().cloned());
    }
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR")
            || key == "OUT_DIR"
        {
            command.env_remove(&key);
        }
    }
    let status = command.status().expect("cargo runs");
    assert!(status.success(), "building {binary} failed");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    match target {
        Some((triple, _)) => target_dir.join(triple).join("debug").join(binary),
        None => target_dir.join("debug").join(binary),
    }
}

/// The static target the deploy itself would build run-migrations for
/// (`xtask/src/images/runner.rs`): musl when its standard library and
/// musl-gcc are here, else this machine's glibc with `+crt-static`.
fn static_target() -> (String, Vec<(String, String)>) {
    let arch = std::env::consts::ARCH;
    let musl = format!("{arch}-unknown-linux-musl");
    let installed = std::process::Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == musl)
        })
        .unwrap_or(false);
    let musl_gcc = std::process::Command::new("musl-gcc")
        .arg("--version")
        .output()
        .is_ok();
    if installed && musl_gcc {
        let compiler = format!("CC_{}", musl.replace('-', "_"));
        (musl, vec![(compiler, "musl-gcc".into())])
    } else {
        let flags = "-C target-feature=+crt-static".to_string();
        (
            format!("{arch}-unknown-linux-gnu"),
            vec![("RUSTFLAGS".into(), flags)],
        )
    }
}

/// The run-migrations binary that goes into test images: built from this
/// workspace (debug) static, as the deploy builds it, so that it runs in
/// any image the pods run (a busybox or scratch base has no glibc), and
/// stripped, so that layering it stays quick.
pub fn run_migrations_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let (triple, env) = static_target();
            let built = cargo_build(
                "backend-migrations",
                "run-migrations",
                Some((&triple, &env)),
            );
            // Next to the build, one per build (a file per test process in
            // the temp directory was never removed: 11 MB each); written
            // under a name of its own, then renamed, for processes at once.
            let stripped = built.with_file_name("run-migrations-stripped");
            let writing =
                built.with_file_name(format!("run-migrations-stripped.{}", std::process::id()));
            let status = std::process::Command::new("strip")
                .arg("-o")
                .arg(&writing)
                .arg(&built)
                .status()
                .expect("strip runs (binutils)");
            assert!(status.success(), "strip failed");
            std::fs::rename(&writing, &stripped).expect("rename the stripped runner");
            stripped
        })
        .clone()
}

impl ColonyRepo {
    /// The backend build's network (`images.backend.network`, the
    /// fixture's only `network =` line; it builds with `none`); `None`
    /// removes the setting.
    pub fn set_backend_network(&self, network: Option<&str>) {
        let text = std::fs::read_to_string(self.config()).expect("deploy.toml");
        let lines: Vec<&str> = text.lines().collect();
        let set: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].starts_with("network = \""))
            .collect();
        assert_eq!(set.len(), 1, "the fixture's backend network: {text}");
        let replacement = network.map(|n| format!("network = \"{n}\""));
        let text: String = lines
            .iter()
            .enumerate()
            .filter_map(|(i, line)| match i == set[0] {
                true => replacement.clone(),
                false => Some(line.to_string()),
            })
            .map(|line| line + "\n")
            .collect();
        std::fs::write(self.config(), text).expect("write deploy.toml");
    }

    /// Gives this repo's images their own repository names (`<prefix>-backend`,
    /// `<prefix>-frontend`), so tests sharing a registry do not meet.
    pub fn use_repositories(&self, prefix: &str) {
        let config = self.config();
        let text = std::fs::read_to_string(&config).expect("deploy.toml");
        let text = text.replace(
            "[environments.colony-dev.images.backend]\n",
            &format!(
                "[environments.colony-dev.images.backend]\nrepository = \"{prefix}-backend\"\n"
            ),
        ) + &format!(
            "\n[environments.colony-dev.images.frontend]\nrepository = \"{prefix}-frontend\"\n"
        );
        std::fs::write(config, text).expect("write deploy.toml");
    }
}

/// The engine at `docker_host`, for a benchmark's header:
/// `Docker 26.1.5+dfsg1, storage driver overlayfs`.
pub fn docker_engine(docker_host: &str) -> String {
    let output = std::process::Command::new("/usr/bin/docker")
        .args([
            "info",
            "--format",
            "Docker {{.ServerVersion}}, storage driver {{.Driver}}",
        ])
        .env("DOCKER_HOST", docker_host)
        .output();
    match output {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => "an engine that did not say what it is".into(),
    }
}
