//! The kubelet's part: a pod's image pulled through the bed's Docker, its
//! init containers run inside that image with the real run-migrations,
//! Alembic and database, then its main containers started (`runtime.rs`).

use std::collections::BTreeMap;
use std::fs::File;
use std::process::{Command, Stdio};

use super::cluster::{container_env, log_path};
use super::runtime::ContainerSpec;
use super::state::{Config, Dir, Pod};

/// Starts `pod` in a detached process (this same executable, `pod-run`),
/// so that `helm` returns while the pod starts.
pub fn start_detached(dir: &Dir, pod: &str) {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().expect("own path");
    let _ = Command::new(exe)
        .args(["pod-run", pod])
        .env("COLONY_SIM_STATE", &dir.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
}

/// What the kubelet recorded of a pod, one file each in its directory,
/// each written whole (write, then rename) so a reader never sees half.
pub enum Record {
    /// Why the image could not be pulled.
    PullError,
    /// Each image's digest reference as pulled (kubectl's `imageID`), JSON.
    ImageIds,
    /// The init containers' exit code: 0 once the main containers run.
    InitExit,
    /// How often the init containers were restarted after a crash, and the
    /// last crash's exit code: `<count> <code>`.
    Restarts,
}

impl Record {
    fn file(&self) -> &'static str {
        match self {
            Record::PullError => "pull.error",
            Record::ImageIds => "image-ids.json",
            Record::InitExit => "init.exit",
            Record::Restarts => "restarts",
        }
    }

    pub fn read(&self, dir: &Dir, pod: &str) -> Option<String> {
        std::fs::read_to_string(dir.pod_dir(pod).join(self.file())).ok()
    }

    pub fn modified_ms(&self, dir: &Dir, pod: &str) -> Option<u64> {
        let modified = std::fs::metadata(dir.pod_dir(pod).join(self.file()))
            .and_then(|m| m.modified())
            .ok()?;
        Some(
            modified
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
        )
    }

    fn write(&self, dir: &Dir, pod: &str, text: &str) -> Result<(), String> {
        let path = dir.pod_dir(pod).join(self.file());
        let partial = path.with_extension("partial");
        std::fs::write(&partial, text).map_err(|e| e.to_string())?;
        std::fs::rename(&partial, &path).map_err(|e| e.to_string())
    }

    fn remove(&self, dir: &Dir, pod: &str) {
        let _ = std::fs::remove_file(dir.pod_dir(pod).join(self.file()));
    }
}

/// (restarts so far, the last crash's exit code), as the pod status shows
/// them (`restartCount`, `lastState.terminated.exitCode`).
pub fn restarts(dir: &Dir, pod: &str) -> (u64, Option<i32>) {
    let text = Record::Restarts.read(dir, pod).unwrap_or_default();
    let mut words = text.split_whitespace();
    let count = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let code = words.next().and_then(|w| w.parse().ok());
    (count, code)
}

/// The kubelet's back-off before the `restart`th restart of a crashed
/// container: 10 s, doubled each time, at most 5 minutes.
pub fn back_off(restart: u64) -> std::time::Duration {
    let seconds = 10u64.saturating_mul(1 << restart.min(5)).min(300);
    std::time::Duration::from_secs(seconds)
}

/// Pulls the pod's image, runs its init containers one after the other
/// (each one's output is its log), then starts its main containers.
pub fn run(dir: &Dir, pod_name: &str) -> Result<(), String> {
    let config = dir.config()?;
    let state = dir.read();
    let pod = state
        .pods
        .iter()
        .find(|p| p.name == pod_name)
        .ok_or_else(|| format!("no pod {pod_name}"))?
        .clone();
    if pod.database {
        return Ok(()); // the bed's PostgreSQL: nothing to pull or run
    }
    std::fs::create_dir_all(dir.pod_dir(pod_name)).map_err(|e| e.to_string())?;
    let image_ids = match pull_images(&config, &pod) {
        Ok(ids) => ids,
        Err(error) => return Record::PullError.write(dir, pod_name, &error),
    };
    Record::ImageIds.write(dir, pod_name, &serde_json::to_string(&image_ids).unwrap())?;
    // As the kubelet (restartPolicy Always): a crashed init container is
    // run again after a growing back-off, for as long as the pod exists,
    // so that a pod recovers once what made it crash (the database, a
    // lock) is fixed.
    let mut restarts = 0;
    loop {
        // Read again each time: what made it crash (a fault) may be gone.
        let config = dir.config()?;
        let code = run_containers(dir, &config, &pod)?;
        Record::InitExit.write(dir, pod_name, &code.to_string())?;
        if code == 0 {
            return Ok(());
        }
        std::thread::sleep(back_off(restarts));
        let gone = dir
            .read()
            .pods
            .iter()
            .find(|p| p.name == pod_name)
            .is_none_or(|p| p.deleted);
        if gone {
            return Ok(());
        }
        restarts += 1;
        Record::Restarts.write(dir, pod_name, &format!("{restarts} {code}"))?;
        Record::InitExit.remove(dir, pod_name);
    }
}

/// The init containers one after the other, then the main containers: the
/// first non-zero exit code, or 0.
fn run_containers(dir: &Dir, config: &Config, pod: &Pod) -> Result<i32, String> {
    for container in containers(pod, "initContainers") {
        let spec = ContainerSpec::from_spec(&container, container_env(config, &container));
        let log = File::create(log_path(dir, &pod.name, &spec.name)).map_err(|e| e.to_string())?;
        let code = run_init(config, pod, &spec, log);
        if code != 0 {
            return Ok(code);
        }
    }
    Ok(start_main_containers(dir, config, pod))
}

fn run_init(config: &Config, pod: &Pod, spec: &ContainerSpec, log: File) -> i32 {
    use std::io::Write;
    if let Some(code) = config.faults.init_crash_exit_code {
        let mut log = log;
        let _ = writeln!(log, "simulated crash (injected fault): exit {code}");
        return code;
    }
    config.runtime.run_to_end(&pod.name, spec, log)
}

/// Starts every main container; a container that cannot start leaves its
/// reason in its log and the pod failed as an init failure would.
fn start_main_containers(dir: &Dir, config: &Config, pod: &Pod) -> i32 {
    for container in containers(pod, "containers") {
        let spec = ContainerSpec::from_spec(&container, container_env(config, &container));
        if let Err(error) = config.runtime.start(&pod.name, &spec) {
            let _ = std::fs::write(log_path(dir, &pod.name, &spec.name), error + "\n");
            return 128;
        }
    }
    0
}

/// Pulls each image the pod's containers name (once each), as the kubelet
/// does before it starts them: image → the digest reference pulled.
fn pull_images(config: &Config, pod: &Pod) -> Result<BTreeMap<String, String>, String> {
    let mut ids = BTreeMap::new();
    for container in containers(pod, "initContainers")
        .into_iter()
        .chain(containers(pod, "containers"))
    {
        let image = container["image"].as_str().unwrap_or_default().to_string();
        if ids.contains_key(&image) {
            continue;
        }
        let id = config.runtime.pull(&image)?;
        ids.insert(image, id);
    }
    Ok(ids)
}

pub fn containers(pod: &Pod, key: &str) -> Vec<serde_json::Value> {
    pod.spec[key].as_array().cloned().unwrap_or_default()
}

/// The names of every container of a pod, init containers included.
pub fn container_names(pod: &Pod) -> Vec<String> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|key| containers(pod, key))
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}
