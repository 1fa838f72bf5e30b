//! Verification, as `cargo xtask verify` and the end of deploy and rollback
//! run it: the newest backend pods run the expected Alembic head and their
//! `run-migrations` init container completed.
//!
//! Facts are read through kubectl (`gather`), then judged by a pure
//! function (`evaluate`), so every verdict is unit-tested.

use std::fmt::Write as _;

use std::collections::HashMap;

use anyhow::Result;

use crate::cluster::kubectl::{self, MIGRATIONS_CONTAINER};
use crate::cluster::objects::{Deployment, Pod};
use crate::cluster::release::{self, Current};
use crate::cluster::{self, Backend, RolloutState};
use crate::config::{Component, Environment};

mod prefetch;
mod reading;
pub use prefetch::Prefetch;
use reading::Reading;

pub const COMPLETE: &str = "Migrations complete.";
const DETECTION: &str = "Detected pre-Alembic schema";

/// The head the running release expects, and where that came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    pub head: String,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// `--expect REV`.
    Flag,
    /// A rollback recorded it on the backend Deployment for this revision.
    RollbackRecord { revision: u32 },
    /// The deploy record of this Helm revision (a rollback copies it too).
    DeployRecord { revision: u32 },
    /// The checkout's versions directory: a last resort, said so.
    Checkout { why: String },
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::Flag => "--expect".into(),
            Source::RollbackRecord { revision } => {
                format!("the rollback's record for Helm revision {revision}")
            }
            Source::DeployRecord { revision } => {
                format!("the deploy record of Helm revision {revision}")
            }
            Source::Checkout { why } => {
                format!("the checkout's versions directory, as a last resort: {why}")
            }
        }
    }
}

/// Decides what verify expects, strongest first: the flag, the rollback's
/// record for the current revision, the current revision's deploy record,
/// the checkout. Pure.
pub fn expectation(
    flag: Option<&str>,
    release: Option<&Current>,
    deployment: Option<&Deployment>,
    checkout: Result<String, String>,
) -> Result<Expectation, String> {
    if let Some(head) = flag {
        return Ok(Expectation {
            head: head.to_string(),
            source: Source::Flag,
        });
    }
    let Some(release) = release else {
        return checkout.map(|head| Expectation {
            head,
            source: Source::Checkout {
                why: "the release is not installed".into(),
            },
        });
    };
    if let Some((revision, head)) = deployment.and_then(release::rollback_record) {
        if revision == release.revision {
            return Ok(Expectation {
                head,
                source: Source::RollbackRecord { revision },
            });
        }
    }
    if release.record.has_head() {
        return Ok(Expectation {
            head: release.record.alembic_head.clone(),
            source: Source::DeployRecord {
                revision: release.revision,
            },
        });
    }
    checkout.map(|head| Expectation {
        head,
        source: Source::Checkout {
            why: format!(
                "Helm revision {} has no deploy record (installed by hand?)",
                release.revision
            ),
        },
    })
}

/// What verify looked at.
#[derive(Debug, Clone)]
pub struct Facts {
    pub expected: Expectation,
    pub backend: Backend,
    /// The pod of the newest ReplicaSet that was examined.
    pub pod: Option<String>,
    /// `alembic current` in that pod: (exit code, stdout, stderr).
    pub alembic_current: Option<cluster::Output>,
    /// The `run-migrations` log of each pod of the newest ReplicaSet (the
    /// examined pod first): only one replica migrates or stamps, the others
    /// find the head, and every one must have completed.
    pub migrations_logs: Vec<(String, Option<String>)>,
}

impl Facts {
    /// The runner's pre-Alembic detection line, if a pod logged it.
    pub fn detection_line(&self) -> Option<String> {
        self.migrations_logs
            .iter()
            .filter_map(|(_, log)| log.as_deref())
            .flat_map(str::lines)
            .find(|l| l.starts_with(DETECTION))
            .map(String::from)
    }
}

/// At most this many pods' logs are read.
const MAX_LOGS: usize = 10;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// The command to run next when the check failed.
    pub next: Option<String>,
}

/// Reads the cluster: the Deployment, its newest ReplicaSet's pods, and in
/// one of those pods `alembic current` and the run-migrations log.
pub fn gather(env: &Environment, expected: Expectation) -> Result<Facts> {
    gather_from(env, expected, Backend::read(env)?)
}

/// Like `gather`, with the backend already read.
pub fn gather_from(env: &Environment, expected: Expectation, backend: Backend) -> Result<Facts> {
    gather_with(env, expected, backend, Known::default())
}

/// Reads made earlier (during the rollout), by pod name: `alembic current`
/// in one pod, and `run-migrations` logs.
#[derive(Default)]
struct Known {
    alembic_current: Option<(String, cluster::Output)>,
    logs: HashMap<String, cluster::Output>,
}

/// `gather_from`, reusing what `known` already holds for the pods that are
/// still the newest ReplicaSet's; only the rest is read now.
fn gather_with(
    env: &Environment,
    expected: Expectation,
    backend: Backend,
    mut known: Known,
) -> Result<Facts> {
    let ready_known = known
        .alembic_current
        .as_ref()
        .map(|(name, _)| name.clone())
        .filter(|name| backend.pod(name).is_some_and(Pod::ready));
    let pod = ready_known
        .clone()
        .or_else(|| choose_pod(&backend.pods).map(|p| p.name().to_string()));
    let running = pod
        .as_ref()
        .and_then(|name| backend.pod(name))
        .is_some_and(|p| p.phase() == Some("Running"));
    let names = pods_to_read(&backend, pod.as_deref());
    // An interrupt stopped the early reads (SIGTERM): none is made again.
    if let Some(interrupt) = crate::process::interrupted() {
        return Err(interrupt.into());
    }
    // An early read that failed is made again: a failure verify reports
    // is one that happens now, not one of a container that was restarting.
    let early_current = match (&ready_known, known.alembic_current.take()) {
        (Some(_), Some((_, output))) if output.code == 0 => Some(output),
        _ => None,
    };
    // `alembic current` (a Python start-up) and the log reads are
    // independent: run them at once.
    let (alembic_current, migrations_logs) = std::thread::scope(|scope| -> Result<_> {
        let current = scope.spawn(|| match (early_current, &pod, running) {
            (Some(output), _, _) => Ok(Some(output)),
            (None, Some(name), true) => {
                cluster::run(&kubectl::alembic_current_args(env, name)).map(Some)
            }
            _ => Ok(None),
        });
        let logs: Vec<_> = names
            .iter()
            .map(|name| {
                let early = known.logs.remove(name);
                scope.spawn(move || match early {
                    Some(output) => Ok(output),
                    None => cluster::run(&kubectl::migrations_log_args(env, name)),
                })
            })
            .collect();
        let mut migrations_logs = Vec::new();
        for (name, log) in names.iter().zip(logs) {
            let output = log.join().expect("log reader panicked")?;
            migrations_logs.push((name.clone(), (output.code == 0).then_some(output.stdout)));
        }
        Ok((
            current.join().expect("alembic reader panicked")?,
            migrations_logs,
        ))
    })?;
    Ok(Facts {
        expected,
        backend,
        pod,
        alembic_current,
        migrations_logs,
    })
}

/// The pods whose `run-migrations` log verify reads: the examined `pod`
/// first, then the others, at most `MAX_LOGS`.
fn pods_to_read(backend: &Backend, pod: Option<&str>) -> Vec<String> {
    let mut names: Vec<String> = pod.iter().map(|p| p.to_string()).collect();
    names.extend(
        backend
            .pods
            .iter()
            .map(|p| p.name().to_string())
            .filter(|n| Some(n.as_str()) != pod),
    );
    names.truncate(MAX_LOGS);
    names
}

/// Verify's reads, made while the rollout is watched: each new pod's
/// `run-migrations` log as soon as its init container has succeeded, and
/// `alembic current` as soon as the first new pod's backend container runs
/// (every migration has run by then: it starts only after the init
/// container) or Helm has waited for the pods. The watch's last look is
/// the backend verify checks.
pub struct Collector {
    env: Environment,
    /// The newest ReplicaSet revision before the deploy: older pods are
    /// not collected.
    before: u64,
    current: Option<(String, Reading)>,
    logs: HashMap<String, Reading>,
    last: Option<Backend>,
}

impl Collector {
    pub fn new(env: &Environment, before: u64) -> Collector {
        Collector {
            env: env.clone(),
            before,
            current: None,
            logs: HashMap::new(),
            last: None,
        }
    }

    /// One look of the watch: start the reads that became possible.
    pub fn observe(&mut self, backend: &Backend) {
        self.last = Some(backend.clone());
        if backend.newest_revision() <= self.before {
            return;
        }
        for pod in &backend.pods {
            let name = pod.name().to_string();
            if pod.init_succeeded(MIGRATIONS_CONTAINER) && !self.logs.contains_key(&name) {
                let argv = kubectl::migrations_log_args(&self.env, &name);
                self.logs.insert(name.clone(), Reading::start(&argv));
            }
            if self.current.is_none() && answers_alembic(pod) {
                self.start_alembic_current(name);
            }
        }
    }

    /// Helm has waited for the new pods: `alembic current` starts now in
    /// one the watch saw, without waiting for its next look. A pod that
    /// is gone or not ready by verify's look, or whose read failed, is
    /// asked again then.
    pub fn helm_waited(&mut self) {
        let seen = match &self.last {
            Some(backend) if backend.newest_revision() > self.before => backend.pods.first(),
            _ => None,
        };
        if let (None, Some(pod)) = (&self.current, seen) {
            self.start_alembic_current(pod.name().to_string());
        }
    }

    fn start_alembic_current(&mut self, pod: String) {
        let argv = kubectl::alembic_current_args(&self.env, &pod);
        self.current = Some((pod, Reading::start(&argv)));
    }

    /// The facts verify evaluates: the last look, the reads made early,
    /// and whatever is still missing, read now.
    pub fn finish(self, expected: Expectation) -> Result<Facts> {
        let backend = match self.last {
            Some(backend) => backend,
            None => Backend::read(&self.env)?,
        };
        let known = Known {
            alembic_current: self
                .current
                .and_then(|(name, mut reading)| Some((name, reading.output()?))),
            logs: self
                .logs
                .into_iter()
                .filter_map(|(name, mut reading)| Some((name, reading.output()?)))
                .collect(),
        };
        gather_with(&self.env, expected, backend, known)
    }
}

/// Whether `alembic current` in this new pod tells the deploy's outcome:
/// its init container has migrated (or found the head) and its backend
/// container runs. Readiness is not awaited: a readiness probe's delay
/// says nothing of the schema, and verify checks the rollout apart.
fn answers_alembic(pod: &Pod) -> bool {
    pod.ready()
        || (pod.init_succeeded(MIGRATIONS_CONTAINER)
            && pod.container_running(Component::Backend.as_str()))
}

/// A ready pod if there is one, else a running one, else the first: the
/// one whose init log explains the rollout.
fn choose_pod(pods: &[Pod]) -> Option<&Pod> {
    pods.iter()
        .find(|p| p.ready())
        .or_else(|| pods.iter().find(|p| p.phase() == Some("Running")))
        .or_else(|| pods.iter().find(|p| p.problem().is_some()))
        .or_else(|| pods.first())
}

/// The verdicts. Pure.
pub fn evaluate(env: &Environment, facts: &Facts) -> Vec<Check> {
    let describe_pods = format!(
        "kubectl --context {} --namespace {} get pods --selector {}",
        env.kube_context,
        env.namespace,
        kubectl::component_selector(env, Component::Backend.as_str())
    );
    let mut checks = Vec::new();
    let Some(deployment) = &facts.backend.deployment else {
        checks.push(Check {
            name: "backend deployment",
            ok: false,
            detail: format!(
                "no Deployment labelled {} in namespace {}",
                kubectl::component_selector(env, Component::Backend.as_str()),
                env.namespace
            ),
            next: Some(format!("cargo xtask deploy {}", env.name)),
        });
        return checks;
    };
    let rollout = facts.backend.rollout_state();
    checks.push(Check {
        name: "backend deployment",
        ok: rollout.newest.is_some(),
        detail: match &rollout.newest {
            Some((replicaset, revision)) => format!(
                "{}, newest ReplicaSet {replicaset} (revision {revision})",
                deployment.metadata.name
            ),
            None => format!("{} has no ReplicaSet yet", deployment.metadata.name),
        },
        next: rollout.newest.is_none().then(|| describe_pods.clone()),
    });
    checks.push(rollout_check(&rollout, &describe_pods));
    checks.push(alembic_check(env, facts));
    checks.push(log_check(env, facts));
    checks
}

fn rollout_check(rollout: &RolloutState, describe_pods: &str) -> Check {
    let RolloutState {
        wanted,
        ready,
        old_pods,
        ..
    } = rollout;
    let problems: Vec<String> = rollout
        .problems
        .iter()
        .map(|(pod, problem)| {
            let exit = problem.exit_code.map_or(String::new(), |c| {
                format!(", {} exited {c}", problem.container)
            });
            format!("{pod} {}{exit}", problem.reason)
        })
        .collect();
    let ok = rollout.complete() && problems.is_empty();
    let mut detail = format!("{ready}/{wanted} pods of the newest ReplicaSet ready");
    if *old_pods > 0 {
        let _ = write!(
            detail,
            "; {old_pods} pod(s) of an older ReplicaSet still serving"
        );
    }
    if !problems.is_empty() {
        let _ = write!(detail, "; {}", problems.join("; "));
    }
    Check {
        name: "rollout complete",
        ok,
        detail,
        next: (!ok).then(|| describe_pods.to_string()),
    }
}

fn alembic_check(env: &Environment, facts: &Facts) -> Check {
    let expected_head = &facts.expected.head;
    let expected = format!("{expected_head} (head)");
    let (Some(pod), Some(output)) = (&facts.pod, &facts.alembic_current) else {
        return Check {
            name: "alembic current",
            ok: false,
            detail: format!("no running pod in the newest ReplicaSet to ask; expected {expected}"),
            next: facts
                .pod
                .as_ref()
                .map(|p| crate::process::display_argv(&kubectl::migrations_log_args(env, p))),
        };
    };
    let answer = cluster::last_line(&output.stdout).to_string();
    let ok = output.code == 0 && answer == expected;
    let detail = if output.code != 0 {
        let said = output.stderr.trim().lines().last().unwrap_or_default();
        let command = env.alembic_command.join(" ");
        if said.contains("executable file not found") || said.contains("exec: \"") {
            format!(
                "`{command} current` in {pod} could not start: {said}. The image has no {:?}: set \
                 alembic_command in {} to how this image runs Alembic (e.g. \"uv run --no-sync alembic\")",
                env.alembic_command[0],
                env.config_file.display()
            )
        } else {
            format!(
                "`{command} current` in {pod} exited {}: {said} (alembic_command = {command:?})",
                output.code
            )
        }
    } else if ok {
        format!("{answer} in {pod}")
    } else if answer.is_empty() {
        format!("the database has no Alembic revision; expected {expected_head}")
    } else {
        format!(
            "the database is at {}, expected {expected_head} (head)",
            answer.trim_end_matches(" (head)"),
        )
    };
    Check {
        name: "alembic current",
        ok,
        detail,
        next: (!ok).then(|| crate::process::display_argv(&kubectl::migrations_log_args(env, pod))),
    }
}

fn log_check(env: &Environment, facts: &Facts) -> Check {
    let last_line = |log: &str| cluster::last_line(log).to_string();
    let Some((first_pod, _)) = facts.migrations_logs.first() else {
        return Check {
            name: "migrations log",
            ok: false,
            detail: "no pod in the newest ReplicaSet".into(),
            next: None,
        };
    };
    let unfinished: Vec<(&String, String)> = facts
        .migrations_logs
        .iter()
        .map(|(pod, log)| (pod, last_line(log.as_deref().unwrap_or_default())))
        .filter(|(_, last)| last != COMPLETE)
        .collect();
    let stamped_by = facts
        .migrations_logs
        .iter()
        .find(|(_, log)| {
            log.as_deref()
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with(DETECTION))
        })
        .map(|(pod, _)| pod);
    let pods = facts.migrations_logs.len();
    match unfinished.first() {
        None => Check {
            name: "migrations log",
            ok: true,
            detail: match stamped_by {
                Some(pod) => format!("{pods}/{pods} end with \"{COMPLETE}\"; {pod} stamped the pre-Alembic schema first"),
                None => format!("{pods}/{pods} end with \"{COMPLETE}\"; no stamp was needed"),
            },
            next: None,
        },
        Some((pod, last)) => Check {
            name: "migrations log",
            ok: false,
            detail: if last.is_empty() {
                format!("{pod}: the run-migrations log is empty (still starting?)")
            } else {
                format!("{pod}: ends with \"{last}\", not \"{COMPLETE}\"")
            },
            next: Some(crate::process::display_argv(&kubectl::migrations_log_args(env, if unfinished.is_empty() { first_pod } else { pod }))),
        },
    }
}

pub fn render(env: &Environment, facts: &Facts, checks: &[Check]) -> String {
    let mut out = format!(
        "Verify {} (namespace {}, release {})\n  expecting Alembic head {} (from {})\n",
        env.name,
        env.namespace,
        env.release,
        facts.expected.head,
        facts.expected.source.describe()
    );
    for check in checks {
        let _ = writeln!(
            out,
            "  {} {:<19} {}",
            if check.ok { "✓" } else { "✗" },
            check.name,
            check.detail
        );
        if let Some(next) = &check.next {
            let _ = writeln!(out, "      next: {next}");
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed == 0 {
        let _ = writeln!(out, "All {} checks passed.", checks.len());
    } else if let Some((pod, Some(log))) = facts.migrations_logs.first() {
        // The newest pod's own log, never an older pod's.
        let tail: Vec<&str> = log
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let _ = writeln!(
            out,
            "\nrun-migrations log of {pod} (last {} lines):",
            tail.len()
        );
        for line in tail {
            let _ = writeln!(out, "  | {line}");
        }
    }
    // The log is the runner's and Alembic's: masked again, whatever they did.
    backend_migrations::redact::mask_all(&out)
}

/// `verify --json`: what was expected and from where, the pod asked, and
/// each check with its next step.
#[derive(serde::Serialize)]
pub struct VerifyJson<'a> {
    environment: &'a str,
    namespace: &'a str,
    release: &'a str,
    expected_head: &'a str,
    expected_from: String,
    pod: &'a Option<String>,
    passed: bool,
    checks: &'a [Check],
}

pub fn to_json<'a>(env: &'a Environment, facts: &'a Facts, checks: &'a [Check]) -> VerifyJson<'a> {
    VerifyJson {
        environment: &env.name,
        namespace: &env.namespace,
        release: &env.release,
        expected_head: &facts.expected.head,
        expected_from: facts.expected.source.describe(),
        pod: &facts.pod,
        passed: checks.iter().all(|c| c.ok),
        checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A check looked up by its name, not its position.
    fn named<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check named {name:?} in {checks:#?}"))
    }
    use crate::cluster::backend::tests::{from_json, replicaset};
    use crate::cluster::Output;

    fn env() -> Environment {
        crate::config::tests::environment()
    }

    fn pod(name: &str, ready: bool, init_failed: bool) -> Pod {
        let init_state = if init_failed {
            json!({"waiting": {"reason": "CrashLoopBackOff"}})
        } else {
            json!({"terminated": {"exitCode": 0, "reason": "Completed"}})
        };
        from_json(json!({
            "metadata": {"name": name},
            "status": {
                "phase": if init_failed { "Pending" } else { "Running" },
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "initContainerStatuses": [{"name": "run-migrations", "state": init_state,
                    "lastState": if init_failed { json!({"terminated": {"exitCode": 1}}) } else { json!({}) }}],
            }
        }))
    }

    fn facts(current: &str, log: &str) -> Facts {
        Facts {
            expected: Expectation {
                head: "0002_activity_and_comments".into(),
                source: Source::DeployRecord { revision: 2 },
            },
            backend: Backend {
                deployment: Some(from_json(
                    json!({"metadata": {"name": "colony-backend"}, "spec": {"replicas": 1}}),
                )),
                replicasets: vec![
                    replicaset("colony-backend-new", 2, 1),
                    replicaset("colony-backend-old", 1, 0),
                ],
                pods: vec![pod("colony-backend-new-abcde", true, false)],
            },
            pod: Some("colony-backend-new-abcde".into()),
            alembic_current: Some(Output {
                code: 0,
                stdout: format!("{current}\n"),
                stderr: String::new(),
            }),
            migrations_logs: vec![("colony-backend-new-abcde".into(), Some(log.into()))],
        }
    }

    #[test]
    fn alembic_is_asked_once_migrated_and_running_not_only_once_ready() {
        let with_main = |mut pod: Pod, state: serde_json::Value| {
            let status = json!({"name": "backend", "state": state});
            pod.status.container_statuses = Some(vec![serde_json::from_value(status).unwrap()]);
            pod
        };
        let running = json!({"running": {}});
        let waiting = json!({"waiting": {"reason": "PodInitializing"}});
        assert!(answers_alembic(&pod("ready", true, false)));
        assert!(answers_alembic(&with_main(
            pod("probe-pending", false, false),
            running.clone()
        )));
        assert!(!answers_alembic(&with_main(
            pod("starting", false, false),
            waiting
        )));
        assert!(!answers_alembic(&with_main(
            pod("init-failed", false, true),
            running
        )));
    }

    const GOOD_LOG: &str =
        "Detected pre-Alembic schema; stamping 0001_baseline so …\nMigrations complete.\n";

    #[test]
    fn a_healthy_release_passes_every_check_and_reports_the_stamp() {
        let checks = evaluate(
            &env(),
            &facts("0002_activity_and_comments (head)", GOOD_LOG),
        );
        assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
        assert!(
            named(&checks, "migrations log")
                .detail
                .contains("colony-backend-new-abcde stamped the pre-Alembic schema first"),
            "{}",
            named(&checks, "migrations log").detail
        );
    }

    #[test]
    fn a_database_behind_head_names_both_revisions() {
        let checks = evaluate(&env(), &facts("0001_baseline", GOOD_LOG));
        let alembic = named(&checks, "alembic current");
        assert!(!alembic.ok);
        assert_eq!(
            alembic.detail,
            "the database is at 0001_baseline, expected 0002_activity_and_comments (head)"
        );
        assert!(alembic
            .next
            .as_deref()
            .unwrap()
            .contains("logs colony-backend-new-abcde --container run-migrations"));
    }

    #[test]
    fn a_crash_looping_new_replicaset_fails_even_with_old_pods_serving() {
        let mut facts = facts("", "Traceback…\nRuntimeError: boom\n");
        facts.backend.replicasets = vec![
            replicaset("colony-backend-new", 2, 1),
            replicaset("colony-backend-old", 1, 1),
        ];
        facts.backend.pods = vec![pod("colony-backend-new-abcde", false, true)];
        facts.alembic_current = None;
        let checks = evaluate(&env(), &facts);
        let rollout = named(&checks, "rollout complete");
        assert!(!rollout.ok);
        assert!(
            rollout
                .detail
                .contains("1 pod(s) of an older ReplicaSet still serving"),
            "{}",
            rollout.detail
        );
        assert!(
            rollout
                .detail
                .contains("Init:CrashLoopBackOff, run-migrations exited 1"),
            "{}",
            rollout.detail
        );
        assert!(!named(&checks, "alembic current").ok && !named(&checks, "migrations log").ok);
        let text = render(&env(), &facts, &checks);
        assert!(
            text.contains("run-migrations log of colony-backend-new-abcde"),
            "{text}"
        );
        assert!(text.contains("RuntimeError: boom"), "{text}");
    }

    #[test]
    fn the_expectation_is_the_running_releases_strongest_record() {
        let current = |revision: u32, head: &str| Current {
            revision,
            status: "deployed".into(),
            record: crate::cluster::release::Record {
                alembic_head: head.into(),
                ..Default::default()
            },
        };
        let annotated = |revision: &str, head: &str| -> Deployment {
            from_json(json!({"metadata": {"annotations": {
                "colony.dev/rollback-helm-revision": revision,
                "colony.dev/rollback-alembic-head": head}}}))
        };
        let checkout = || Ok("0002_activity_and_comments".to_string());
        let recorded = current(4, "0002_activity_and_comments");
        let rollback = annotated("4", "0001_baseline");
        let stale = annotated("3", "0001_baseline");

        let expect =
            |release: Option<&Current>, deployment: Option<&Deployment>, flag: Option<&str>| {
                expectation(flag, release, deployment, checkout()).unwrap()
            };
        assert_eq!(
            expect(Some(&recorded), Some(&rollback), None),
            Expectation {
                head: "0001_baseline".into(),
                source: Source::RollbackRecord { revision: 4 }
            }
        );
        assert_eq!(
            expect(Some(&recorded), Some(&stale), None).source,
            Source::DeployRecord { revision: 4 },
            "a rollback record of an older revision is stale"
        );
        assert_eq!(
            expect(Some(&recorded), Some(&rollback), Some("x")).source,
            Source::Flag
        );
        let unrecorded = current(2, "");
        let last_resort = expect(Some(&unrecorded), None, None);
        assert_eq!(last_resort.head, "0002_activity_and_comments");
        assert!(
            last_resort
                .source
                .describe()
                .contains("last resort: Helm revision 2 has no deploy record"),
            "{}",
            last_resort.source.describe()
        );
        assert!(expectation(None, Some(&unrecorded), None, Err("no versions".into())).is_err());
    }

    #[test]
    fn no_deployment_says_to_deploy() {
        let mut facts = facts("", "");
        facts.backend.deployment = None;
        let checks = evaluate(&env(), &facts);
        assert_eq!(checks.len(), 1);
        assert_eq!(
            named(&checks, "backend deployment").next.as_deref(),
            Some("cargo xtask deploy colony-dev")
        );
    }
}
