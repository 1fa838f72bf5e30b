//! A simulated Kubernetes cluster at the `kubectl`/`helm` process boundary
//! (DESIGN.md §5): no API server can run on our machines, so these stand-ins
//! answer instead, while everything behind them is real — the chart is
//! rendered by the real `helm template`, images come from the test registry,
//! init containers run the real `run-migrations` with the real Alembic
//! against the bed's PostgreSQL, and `exec` runs the real commands. Every
//! call is recorded, and every argv is first checked by the real tool's own
//! parser against an unreachable API server.

pub mod args;
pub mod cluster;
pub mod helm;
pub mod kubectl;
pub mod lease;
pub mod pod;
pub mod runtime;
pub mod state;

use std::path::{Path, PathBuf};

pub use state::Faults;
use state::{Config, Dir};

use crate::TestBed;

/// One simulated cluster for one test: its state directory and a PATH
/// directory holding `kubectl` and `helm`.
pub struct SimCluster {
    pub dir: tempfile::TempDir,
    bin: tempfile::TempDir,
    state: Dir,
}

impl SimCluster {
    /// A cluster whose current context is `context` and whose databases are
    /// all `database_url`.
    pub fn new(context: &str, database_url: &str) -> SimCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = tempfile::tempdir().expect("temp dir");
        let state = init(dir.path(), bin.path(), context, database_url, &sim_binary());
        SimCluster { dir, bin, state }
    }

    /// Put this first on PATH.
    pub fn bin_dir(&self) -> &Path {
        self.bin.path()
    }

    /// The variables a process needs to reach this cluster.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "COLONY_SIM_STATE".into(),
            self.state.root.display().to_string(),
        )]
    }

    pub fn faults(&self, change: impl FnOnce(&mut Faults)) {
        let mut config = self.state.config().expect("config");
        let delays_before = (
            config.faults.readiness_delay_ms,
            config.faults.alembic_delay_ms,
        );
        change(&mut config.faults);
        if config.faults.readiness_delay_ms != delays_before.0 {
            config.faults.readiness_delay_since_ms = state::now_ms();
        }
        if config.faults.alembic_delay_ms != delays_before.1 {
            config.faults.alembic_delay_since_ms = state::now_ms();
        }
        self.state.write_config(&config);
    }

    pub fn set_context(&self, context: &str) {
        let mut config = self.state.config().expect("config");
        config.context = context.to_string();
        self.state.write_config(&config);
    }

    /// Makes `context` (another cluster of the kubeconfig) the current one;
    /// the simulated cluster's own context stays where it is.
    pub fn set_current_context(&self, context: &str) {
        let mut config = self.state.config().expect("config");
        config.current_context = Some(context.to_string());
        self.state.write_config(&config);
    }

    /// Every `kubectl`/`helm` call so far: (tool, argv).
    pub fn calls(&self) -> Vec<(String, Vec<String>)> {
        self.state.calls()
    }

    /// Marks the newest revision of a release, e.g. `pending-upgrade`.
    pub fn set_release_status(&self, namespace: &str, release: &str, status: &str) {
        self.state.update(|s| {
            if let Some(last) = s
                .releases
                .get_mut(&format!("{namespace}/{release}"))
                .and_then(|r| r.last_mut())
            {
                last.status = status.to_string();
            }
        });
    }

    pub fn state(&self) -> state::State {
        self.state.read()
    }

    pub fn state_dir(&self) -> &Dir {
        &self.state
    }

    /// Removes the cluster's containers from the bed's Docker now (dropping
    /// the cluster does it too).
    pub fn remove_containers(&self) {
        if let Ok(config) = self.state.config() {
            config.runtime.remove_all();
        }
    }

    /// Waits until no init container of the cluster is still running.
    pub fn settle(&self) {
        let config = self.state.config().expect("config");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while std::time::Instant::now() < deadline {
            let state = self.state.read();
            let busy = state.pods.iter().filter(|p| !p.deleted).any(|p| {
                cluster::condition(&self.state, &config, p) == cluster::PodCondition::Initializing
            });
            if !busy {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("init containers still running after 120 s");
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        self.remove_containers();
    }
}

/// Makes a simulated cluster in `state_dir` on the test bed, with `kubectl`
/// and `helm` (symlinks to `exe`, the colony-sim binary) in `bin_dir`. Used
/// by the tests and by `colony-sim init` (the demo).
pub fn init(
    state_dir: &Path,
    bin_dir: &Path,
    context: &str,
    database_url: &str,
    exe: &Path,
) -> Dir {
    let bed = TestBed::get();
    let state = Dir::new(state_dir);
    let config = Config {
        context: context.to_string(),
        current_context: None,
        database_url: database_url.to_string(),
        runtime: runtime::Runtime::new(&bed.docker_host, state_dir),
        pg_bin: bed.pg_bin.clone(),
        real_helm: bed.helm.clone(),
        real_kubectl: bed.kubectl.clone(),
        closed_port: crate::TcpForwarder::free_port(),
        faults: Faults::default(),
    };
    state.write_config(&config);
    args::write_kubeconfig(&state, &config);
    std::fs::create_dir_all(bin_dir).expect("bin dir");
    for tool in ["kubectl", "helm"] {
        let link = bin_dir.join(tool);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(exe, link).expect("symlink");
    }
    state
}

/// The `colony-sim` executable (built once per test process).
pub fn sim_binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| crate::cargo_build_binary("testkit", "colony-sim"))
        .clone()
}
