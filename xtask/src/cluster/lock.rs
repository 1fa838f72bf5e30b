//! One deploy or rollback at a time per environment: a Kubernetes Lease
//! (`colony-deploy-<release>` in the namespace) that names its holder.
//!
//! Taken with `kubectl create` (the API server refuses a second create of
//! the same name), renewed with `kubectl replace` carrying the
//! resourceVersion just read (a concurrent writer gets a Conflict), deleted
//! at the end, on error and on Ctrl-C (the guard's `Drop`). A holder that
//! stops renewing (killed with -9, a lost laptop) leaves a lease that is
//! stale once `renewTime + leaseDurationSeconds` has passed: the next
//! command takes it over, and `cargo xtask lock --break` removes it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::kubectl;
use crate::config::Environment;

/// The annotation that carries the holder's details.
pub const HOLDER_ANNOTATION: &str = "colony-deploy/holder";

/// Who holds the lock, and what it is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// `user@host pid N`: the Lease's `holderIdentity`.
    pub identity: String,
    /// `deploy colony-dev`, `rollback colony-dev --to 0001_baseline`.
    pub command: String,
    pub git_sha: Option<String>,
    /// RFC 3339.
    pub started: String,
    /// The step it is at (`images`, `helm-upgrade`, `planning`, …).
    pub step: String,
}

/// `user@host pid N`: this process, as a lease names its holder.
pub fn this_identity() -> String {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| "unknown".into());
    let host = nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unknown".into());
    format!("{user}@{host} pid {}", std::process::id())
}

impl Holder {
    /// This process, about to run `command`.
    pub fn this_process(command: &str, git_sha: Option<String>) -> Holder {
        Holder {
            identity: this_identity(),
            command: command.to_string(),
            git_sha,
            started: rfc3339(SystemTime::now()),
            step: "planning".into(),
        }
    }
}

/// The lock as the cluster holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub holder: Holder,
    pub renewed: SystemTime,
    pub duration: Duration,
    resource_version: String,
}

impl Lease {
    /// From `kubectl get lease -o json`. Pure.
    pub fn from_json(value: &Value) -> Result<Lease> {
        let spec = &value["spec"];
        let identity = spec["holderIdentity"].as_str().unwrap_or_default();
        let holder = value["metadata"]["annotations"][HOLDER_ANNOTATION]
            .as_str()
            .and_then(|text| serde_json::from_str::<Holder>(text).ok())
            .unwrap_or_else(|| Holder {
                identity: identity.to_string(),
                command: "unknown (the lease has no holder details)".into(),
                git_sha: None,
                started: spec["acquireTime"].as_str().unwrap_or_default().into(),
                step: "unknown".into(),
            });
        let renewed = spec["renewTime"]
            .as_str()
            .or(spec["acquireTime"].as_str())
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(Lease {
            holder,
            renewed,
            duration: Duration::from_secs(spec["leaseDurationSeconds"].as_u64().unwrap_or(0)),
            resource_version: value["metadata"]["resourceVersion"]
                .as_str()
                .context("the lease has no resourceVersion")?
                .to_string(),
        })
    }

    /// Held by another command that is still renewing it: what stops a
    /// deploy or rollback.
    pub fn blocks(&self, now: SystemTime) -> bool {
        self.holder.identity != this_identity() && !self.is_stale(now)
    }

    /// Its holder stopped renewing: past `renewTime + leaseDurationSeconds`.
    pub fn is_stale(&self, now: SystemTime) -> bool {
        now.duration_since(self.renewed)
            .is_ok_and(|since| since > self.duration)
    }

    /// One line for messages and `cargo xtask lock`.
    pub fn describe(&self, now: SystemTime) -> String {
        let ago = |t: SystemTime| {
            now.duration_since(t)
                .map_or("just now".into(), |d| format!("{} ago", short(d)))
        };
        let started = humantime::parse_rfc3339_weak(&self.holder.started)
            .map_or(self.holder.started.clone(), ago);
        let git = self.holder.git_sha.as_deref().map_or(String::new(), |sha| {
            format!(", git {}", &sha[..sha.len().min(12)])
        });
        let state = if self.is_stale(now) {
            format!(
                "STALE: not renewed for {} (bound {} s), its holder is gone",
                short(now.duration_since(self.renewed).unwrap_or_default()),
                self.duration.as_secs()
            )
        } else {
            format!("renewed {}", ago(self.renewed))
        };
        super::printable(&format!(
            "`{}` by {}{git}, at step {}, started {started}; {state}",
            self.holder.command, self.holder.identity, self.holder.step
        ))
    }
}

/// The lock's name: one per release and namespace, that is per environment.
pub fn name(env: &Environment) -> String {
    format!("colony-deploy-{}", env.release)
}

/// The Lease object for `holder`. A `resource_version` makes it a replace
/// of exactly that version. Pure.
pub fn manifest(
    env: &Environment,
    holder: &Holder,
    duration: Duration,
    now: SystemTime,
    resource_version: Option<&str>,
) -> Value {
    let mut metadata = json!({
        "name": name(env),
        "namespace": env.namespace,
        "labels": {"app.kubernetes.io/managed-by": "colony-deploy", "app.kubernetes.io/instance": env.release},
        "annotations": {HOLDER_ANNOTATION: serde_json::to_string(holder).expect("a holder serialises")},
    });
    if let Some(version) = resource_version {
        metadata["resourceVersion"] = Value::from(version);
    }
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": holder.identity,
            "leaseDurationSeconds": duration.as_secs().max(1),
            "acquireTime": holder.started,
            "renewTime": rfc3339(now),
        }
    })
}

/// The lock now: None when nobody holds it.
pub fn read(env: &Environment) -> Result<Option<Lease>> {
    let output = super::run(&kubectl::lease_get_args(env, &name(env)))?;
    if output.code != 0 {
        if output.stderr.contains("(NotFound)") {
            return Ok(None);
        }
        bail!(
            "reading the deploy lock (lease {}) failed: {}",
            name(env),
            output.stderr.trim()
        );
    }
    let value: Value = serde_json::from_str(&output.stdout).context("the lease is not JSON")?;
    Lease::from_json(&value).map(Some)
}

/// What a write of the lease met.
enum Write {
    Done,
    /// Create: the name exists. Replace: another writer came first.
    Lost,
}

fn write(env: &Environment, verb: &str, object: &Value) -> Result<Write> {
    let mut file = tempfile::Builder::new()
        .prefix("colony-lease-")
        .suffix(".json")
        .tempfile()?;
    serde_json::to_writer(&mut file, object)?;
    let path = file.path().display().to_string();
    let output = super::run(&kubectl::lease_write_args(env, verb, &path))?;
    match output.code {
        0 => Ok(Write::Done),
        _ if output.stderr.contains("(AlreadyExists)") || output.stderr.contains("(Conflict)") => {
            Ok(Write::Lost)
        }
        _ if verb == "replace" && output.stderr.contains("(NotFound)") => Ok(Write::Lost),
        _ => Err(anyhow!(
            "`kubectl {verb}` of the deploy lock failed: {}",
            output.stderr.trim()
        )),
    }
}

/// One attempt: Ok(guard), or Err(the live lease that holds it). A stale
/// lease is taken over (a replace of the version read, so of two that try
/// at once, one wins).
fn try_acquire(env: &Environment, holder: &Holder, bound: Duration) -> Result<Result<(), Lease>> {
    for _ in 0..3 {
        let now = SystemTime::now();
        if let Write::Done = write(env, "create", &manifest(env, holder, bound, now, None))? {
            return Ok(Ok(()));
        }
        let Some(lease) = read(env)? else {
            continue; // released meanwhile: create again
        };
        if !lease.is_stale(SystemTime::now()) {
            return Ok(Err(lease));
        }
        eprintln!(
            "deploy lock: taking over a stale lock: {}",
            lease.describe(SystemTime::now())
        );
        let takeover = manifest(env, holder, bound, now, Some(&lease.resource_version));
        if let Write::Done = write(env, "replace", &takeover)? {
            return Ok(Ok(()));
        }
    }
    match read(env)? {
        Some(lease) => Ok(Err(lease)),
        None => bail!("the deploy lock changed hands three times while taking it; try again"),
    }
}

/// Takes the lock before the first change, waiting up to `wait` for a live
/// holder. A holder that is still there when the wait is over is a refusal
/// (exit 2): nothing was changed.
pub fn acquire(
    env: &Environment,
    holder: Holder,
    bound: Duration,
    wait: Option<Duration>,
) -> Result<Guard> {
    let deadline = wait.map(|w| std::time::Instant::now() + w);
    let mut said = false;
    loop {
        if let Some(interrupt) = crate::process::interrupted() {
            return Err(interrupt.into());
        }
        match try_acquire(env, &holder, bound)? {
            Ok(()) => return Ok(Guard::start(env, holder, bound)),
            Err(lease) => {
                let now = SystemTime::now();
                let waiting = deadline.is_some_and(|d| std::time::Instant::now() < d);
                if !waiting {
                    return Err(crate::error::input_error(format!(
                        "{}; nothing was changed",
                        refusal(env, &lease, now, wait)
                    )));
                }
                if !said {
                    crate::progress::say(format!(
                        "deploy lock: {} is held by {}; waiting (--wait-for-lock)",
                        env.name,
                        lease.describe(now)
                    ));
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// The refusal when another command holds the lock. Pure.
pub fn refusal(
    env: &Environment,
    lease: &Lease,
    now: SystemTime,
    waited: Option<Duration>,
) -> String {
    let waited = waited.map_or(String::new(), |w| format!(" after waiting {}", short(w)));
    format!(
        "another command is changing {}{waited}: {}. Wait for it (--wait-for-lock 10m), \
         or, if that holder is gone, see `cargo xtask lock {}` (it becomes stale {} s after its last renewal; \
         `--break` removes it)",
        env.name,
        lease.describe(now),
        env.name,
        lease.duration.as_secs()
    )
}

/// The held lock: renewed from a thread until dropped, then released (also
/// on an error or Ctrl-C, which unwind through here).
pub struct Guard {
    env: Environment,
    holder: Arc<Mutex<Holder>>,
    stop: Arc<AtomicBool>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl Guard {
    fn start(env: &Environment, holder: Holder, bound: Duration) -> Guard {
        let holder = Arc::new(Mutex::new(holder));
        let stop = Arc::new(AtomicBool::new(false));
        let renewer = {
            let (env, holder, stop) = (env.clone(), holder.clone(), stop.clone());
            std::thread::spawn(move || renew_until(&env, &holder, &stop, bound))
        };
        Guard {
            env: env.clone(),
            holder,
            stop,
            renewer: Some(renewer),
        }
    }

    /// What the holder is doing, shown to whoever is refused (published at
    /// the next renewal, a few seconds at most).
    pub fn set_step(&self, step: &str) {
        self.holder.lock().expect("holder lock").step = step.to_string();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let identity = self.holder.lock().expect("holder lock").identity.clone();
        // Only our own: a lock broken and taken by another stays theirs.
        // Read while the renewer ends (woken now, not at its next tick): a
        // renewal under way keeps the holder.
        let lease = std::thread::scope(|scope| {
            let lease = scope.spawn(|| read(&self.env));
            if let Some(renewer) = self.renewer.take() {
                renewer.thread().unpark();
                let _ = renewer.join();
            }
            lease.join().expect("lease reader panicked")
        });
        match lease {
            Ok(Some(lease)) if lease.holder.identity == identity => {
                let released = super::run(&kubectl::lease_delete_args(&self.env, &name(&self.env)));
                if !released.is_ok_and(|o| o.code == 0) {
                    eprintln!(
                        "deploy lock: could not release {}; it becomes stale {} s after its last renewal",
                        name(&self.env),
                        lease.duration.as_secs()
                    );
                }
            }
            _ => {}
        }
    }
}

/// Renews every quarter of the bound (at least every second), publishing
/// the step; says once if the lock was broken or taken from us.
fn renew_until(env: &Environment, holder: &Mutex<Holder>, stop: &AtomicBool, bound: Duration) {
    let every = (bound / 4).max(Duration::from_secs(1));
    let mut last = std::time::Instant::now();
    let mut published = holder.lock().expect("holder lock").step.clone();
    let mut warned = false;
    while !stop.load(Ordering::SeqCst) {
        // Woken early by the guard's drop.
        std::thread::park_timeout(Duration::from_millis(100));
        let current = holder.lock().expect("holder lock").clone();
        if last.elapsed() < every && current.step == published {
            continue;
        }
        last = std::time::Instant::now();
        match read(env) {
            Ok(Some(lease)) if lease.holder.identity == current.identity => {
                let object = manifest(
                    env,
                    &current,
                    bound,
                    SystemTime::now(),
                    Some(&lease.resource_version),
                );
                if let Ok(Write::Done) = write(env, "replace", &object) {
                    published = current.step;
                }
            }
            Ok(other) if !warned => {
                warned = true;
                eprintln!(
                    "deploy lock: WARNING: the lock of {} is no longer ours ({}): another command may now run beside this one",
                    env.name,
                    other.map_or("it was broken".into(), |l| format!(
                        "now held by {}",
                        l.describe(SystemTime::now())
                    ))
                );
            }
            _ => {}
        }
    }
}

/// `cargo xtask lock --break`: removes the lease whatever its holder (the
/// caller has confirmed). Returns what was removed.
pub fn break_lock(env: &Environment) -> Result<Option<Lease>> {
    let Some(lease) = read(env)? else {
        return Ok(None);
    };
    let output = super::run(&kubectl::lease_delete_args(env, &name(env)))?;
    if output.code != 0 && !output.stderr.contains("(NotFound)") {
        bail!(
            "deleting lease {} failed: {}",
            name(env),
            output.stderr.trim()
        );
    }
    Ok(Some(lease))
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}

/// `3 s`, `4 min`, `2 h`.
fn short(d: Duration) -> String {
    match d.as_secs() {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder() -> Holder {
        Holder {
            identity: "alice@box pid 42".into(),
            command: "deploy colony-dev".into(),
            git_sha: Some("0123456789abcdef0123".into()),
            started: "2026-12-01T05:00:00.000000Z".into(),
            step: "helm-upgrade".into(),
        }
    }

    #[test]
    fn a_lease_reads_back_what_was_written_and_goes_stale_after_its_bound() {
        let env = crate::config::tests::environment();
        let renewed = humantime::parse_rfc3339("2026-12-01T05:01:00Z").unwrap();
        let mut object = manifest(&env, &holder(), Duration::from_secs(30), renewed, None);
        assert_eq!(object["metadata"]["name"], "colony-deploy-colony");
        assert_eq!(object["spec"]["holderIdentity"], "alice@box pid 42");
        assert!(object["metadata"].get("resourceVersion").is_none());
        object["metadata"]["resourceVersion"] = Value::from("7");
        let lease = Lease::from_json(&object).unwrap();
        assert_eq!(lease.holder, holder());
        assert_eq!(lease.duration, Duration::from_secs(30));
        let at = |s: &str| humantime::parse_rfc3339(s).unwrap();
        assert!(!lease.is_stale(at("2026-12-01T05:01:30Z")));
        assert!(lease.is_stale(at("2026-12-01T05:01:31Z")));
        assert_eq!(
            lease.describe(at("2026-12-01T05:01:10Z")),
            "`deploy colony-dev` by alice@box pid 42, git 0123456789ab, at step helm-upgrade, started 70 s ago; renewed 10 s ago"
        );
        assert!(lease
            .describe(at("2026-12-01T05:06:00Z"))
            .contains("STALE: not renewed for 5 min (bound 30 s)"));
        let replace = manifest(&env, &holder(), Duration::from_secs(30), renewed, Some("7"));
        assert_eq!(replace["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn a_lease_of_another_tool_still_names_its_holder() {
        let value = json!({
            "metadata": {"resourceVersion": "3"},
            "spec": {"holderIdentity": "ci-runner-7", "leaseDurationSeconds": 15,
                     "renewTime": "2026-12-01T05:00:00.000000Z"}
        });
        let lease = Lease::from_json(&value).unwrap();
        assert_eq!(lease.holder.identity, "ci-runner-7");
        assert!(lease.holder.command.starts_with("unknown"));
    }
}
