//! The simulated cluster's state: one JSON file under a lock, read and
//! written by every `kubectl`/`helm` call (they may run concurrently).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Settings a test chooses, and faults it injects.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Config {
    /// The cluster's context in the kubeconfig (`kubectl config
    /// get-contexts NAME` finds it; every call must name it).
    pub context: String,
    /// What `kubectl config current-context` answers when it is another
    /// context of the kubeconfig (a second cluster); None: `context`.
    #[serde(default)]
    pub current_context: Option<String>,
    /// Every `DATABASE_URL` in the cluster points here (the bed's PostgreSQL).
    pub database_url: String,
    /// The bed's Docker, where pods run as containers.
    pub runtime: super::runtime::Runtime,
    /// PostgreSQL client tools (`pg_dump`, `pg_restore`, `psql`) for database pods.
    pub pg_bin: PathBuf,
    /// The real tools, for argument checks and rendering.
    pub real_helm: PathBuf,
    pub real_kubectl: PathBuf,
    /// A 127.0.0.1 port nothing listens on: the real tools' API server.
    pub closed_port: u16,
    pub faults: Faults,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Faults {
    /// The init container exits with this code instead of running.
    pub init_crash_exit_code: Option<i32>,
    /// Older ReplicaSets keep serving after a rollout.
    pub keep_old_replicasets: bool,
    /// Pods become Ready this long after their init container finished:
    /// pods created from `readiness_delay_since_ms` on (a Ready pod does not
    /// turn unready because the fault was set).
    pub readiness_delay_ms: u64,
    /// When `readiness_delay_ms` was last changed (`SimCluster::faults`).
    #[serde(default)]
    pub readiness_delay_since_ms: u64,
    /// `pg_dump` in the database pod fails.
    pub pg_dump_fails: bool,
    /// A `kubectl exec` of Alembic waits this long before it starts, in
    /// pods created before `alembic_delay_since_ms` (old pods on a busy
    /// node: a slow Python start-up).
    #[serde(default)]
    pub alembic_delay_ms: u64,
    /// When `alembic_delay_ms` was last changed (`SimCluster::faults`).
    #[serde(default)]
    pub alembic_delay_since_ms: u64,
    /// The pods' image has no `run-migrations` (a release installed before
    /// this tool, its init container its own): an exec of it fails as
    /// runc's does.
    #[serde(default)]
    pub runner_missing: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub namespaces: Vec<String>,
    /// `namespace/release` → revisions, oldest first.
    pub releases: BTreeMap<String, Vec<Revision>>,
    pub deployments: Vec<Deployment>,
    pub replicasets: Vec<ReplicaSet>,
    pub pods: Vec<Pod>,
    /// `namespace/name` → the Lease object as stored (coordination.k8s.io/v1).
    #[serde(default)]
    pub leases: BTreeMap<String, serde_json::Value>,
    /// Ever-increasing, for creation order and names.
    pub clock: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revision {
    pub revision: u32,
    pub status: String,
    pub chart: String,
    pub app_version: String,
    pub updated: String,
    pub description: String,
    /// User-supplied values (as `helm get values` shows them).
    pub values: serde_json::Value,
    pub manifest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployment {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub selector: BTreeMap<String, String>,
    /// Set by `kubectl annotate`: not in any manifest, so Helm's applies
    /// keep them (as its three-way merge does on a real cluster).
    #[serde(default)]
    pub external_annotations: BTreeMap<String, String>,
    pub replicas: u32,
    pub generation: u64,
    /// Kind as rendered: Deployment or StatefulSet.
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaSet {
    pub namespace: String,
    pub name: String,
    pub deployment: String,
    pub hash: String,
    /// `deployment.kubernetes.io/revision`.
    pub revision: u64,
    pub replicas: u32,
    pub labels: BTreeMap<String, String>,
    pub created: u64,
    /// The pod template (metadata + spec) as rendered.
    pub template: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub replicaset: String,
    pub labels: BTreeMap<String, String>,
    pub created: u64,
    pub spec: serde_json::Value,
    /// Deleted pods stay listed nowhere but keep their logs on disk.
    pub deleted: bool,
    /// Database pods stand in for the bed's PostgreSQL.
    pub database: bool,
}

/// The state directory and its lock.
#[derive(Debug, Clone)]
pub struct Dir {
    pub root: PathBuf,
}

impl Dir {
    pub fn new(root: impl Into<PathBuf>) -> Dir {
        Dir { root: root.into() }
    }

    /// From `COLONY_SIM_STATE`, as the `kubectl`/`helm` stand-ins find it.
    pub fn from_env() -> Result<Dir, String> {
        std::env::var_os("COLONY_SIM_STATE")
            .map(Dir::new)
            .ok_or_else(|| "COLONY_SIM_STATE is not set: this kubectl/helm is the test suite's simulated cluster".into())
    }

    pub fn config(&self) -> Result<Config, String> {
        let text = std::fs::read_to_string(self.root.join("config.json"))
            .map_err(|e| format!("sim config: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("sim config: {e}"))
    }

    /// Replaces the config atomically: the simulated tools read it at any
    /// moment, and a half-written file would fail them.
    pub fn write_config(&self, config: &Config) {
        std::fs::create_dir_all(&self.root).expect("state dir");
        let temporary = self
            .root
            .join(format!("config.json.{}.partial", std::process::id()));
        std::fs::write(&temporary, serde_json::to_string_pretty(config).unwrap())
            .expect("write config");
        std::fs::rename(&temporary, self.root.join("config.json")).expect("replace config");
    }

    pub fn pod_dir(&self, pod: &str) -> PathBuf {
        self.root.join("pods").join(pod)
    }

    /// Runs `change` on the state under an exclusive lock and saves it
    /// atomically (a new file renamed over the old one), so that a process
    /// killed mid-write leaves the state as it was, never an empty file.
    pub fn update<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        let _lock = self.locked();
        let path = self.root.join("state.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => panic!("read state: {e}"),
        };
        let mut state: State = if text.trim().is_empty() {
            State::default()
        } else {
            serde_json::from_str(&text).expect("state parses")
        };
        let result = change(&mut state);
        let temporary = self
            .root
            .join(format!("state.json.{}.partial", std::process::id()));
        std::fs::write(&temporary, serde_json::to_string_pretty(&state).unwrap())
            .expect("write state");
        std::fs::rename(&temporary, &path).expect("replace state");
        result
    }

    pub fn read(&self) -> State {
        self.update(|state| state.clone())
    }

    /// The state's lock: a file of its own, since `state.json` is replaced
    /// on every write (a lock on the replaced file would guard nothing).
    fn locked(&self) -> File {
        std::fs::create_dir_all(&self.root).expect("state dir");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.root.join("state.lock"))
            .expect("open state lock");
        file.lock().expect("lock state");
        file
    }

    /// Appends one call to the log: `tool<TAB>argv as JSON`.
    pub fn record_call(&self, tool: &str, argv: &[String]) {
        let masked: Vec<String> = argv
            .iter()
            .map(|a| backend_migrations::redact::mask_all(a))
            .collect();
        let line = format!("{tool}\t{}\n", serde_json::to_string(&masked).unwrap());
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("calls.log"))
            .expect("calls log");
        file.lock().expect("lock calls log");
        file.write_all(line.as_bytes()).expect("append call");
    }

    pub fn calls(&self) -> Vec<(String, Vec<String>)> {
        std::fs::read_to_string(self.root.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (tool, argv) = line.split_once('\t')?;
                Some((tool.to_string(), serde_json::from_str(argv).ok()?))
            })
            .collect()
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// RFC 3339 UTC timestamp, as Kubernetes and Helm print them.
pub fn timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Now as Helm prints a revision's time (Go's RFC3339Nano: nanoseconds
/// without trailing zeros, `Z` for UTC; up to 35 characters with an offset).
pub fn helm_timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let whole = timestamp(now.as_millis() as u64);
    let nanos = format!("{:09}", now.subsec_nanos());
    match nanos.trim_end_matches('0') {
        "" => whole,
        fraction => format!("{}.{fraction}Z", whole.trim_end_matches('Z')),
    }
}

/// Howard Hinnant's days → (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}
