//! Watching a rollout ourselves, alongside Helm: the newest backend
//! ReplicaSet's pods either all become ready, or one of them enters a state
//! that waiting will not fix — then we stop within seconds, not at Helm's
//! timeout, and explain with the failing container's log and the pod's events.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::cluster::objects::{Event, List, Pod, PodProblem};
use crate::cluster::{self, kubectl, Backend, RolloutState};
use crate::config::Environment;

#[derive(Debug, Clone, PartialEq)]
pub enum Assessment {
    /// Still rolling out; why, for the progress line.
    Waiting(String),
    Failed {
        pod: String,
        problem: PodProblem,
    },
    Complete,
}

/// What a watch waits for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expect {
    /// The newest ReplicaSet, whichever it is.
    Newest,
    /// The ReplicaSet of Helm revision `helm_revision`: newer than `before`,
    /// unless that revision kept the pod template (then there is no new one,
    /// and the current one is judged).
    NewerThan { before: u64, helm_revision: u32 },
}

/// Judges one look at the cluster. Pure.
pub fn assess(backend: &Backend, expect: Expect) -> Assessment {
    let Some(deployment) = &backend.deployment else {
        return Assessment::Waiting("waiting for the backend Deployment".into());
    };
    let state = backend.rollout_state();
    if state.newest.is_none() {
        return Assessment::Waiting("waiting for the first ReplicaSet".into());
    }
    if let Expect::NewerThan {
        before,
        helm_revision,
    } = expect
    {
        if state.newest_revision() <= before
            && !deployment.kept_its_replicaset(helm_revision, before)
        {
            return Assessment::Waiting("waiting for the new ReplicaSet".into());
        }
    }
    if let Some((pod, problem)) = state.fatal_problem() {
        return Assessment::Failed {
            pod: pod.clone(),
            problem: problem.clone(),
        };
    }
    if state.complete() {
        Assessment::Complete
    } else {
        Assessment::Waiting(format!(
            "{}/{} new pods ready, {} old pod(s) left",
            state.ready, state.wanted, state.old_pods
        ))
    }
}

/// Polls until the rollout completes or fails, or `timeout` passes;
/// `on_poll` sees every look (for the progress display).
pub async fn watch(
    env: &Environment,
    expect: Expect,
    timeout: Duration,
    mut on_poll: impl FnMut(&Backend),
) -> Result<Assessment> {
    let deadline = Instant::now() + timeout;
    loop {
        // A watch has no child for an interrupt to stop: it stops itself.
        if let Some(interrupt) = crate::process::interrupted() {
            return Err(interrupt.into());
        }
        let env_for_read = env.clone();
        let backend = tokio::task::spawn_blocking(move || Backend::read(&env_for_read)).await??;
        on_poll(&backend);
        match assess(&backend, expect) {
            Assessment::Waiting(_) if Instant::now() < deadline => {}
            Assessment::Waiting(why) => {
                return Ok(Assessment::Waiting(format!("timed out: {why}")))
            }
            done => return Ok(done),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A pod's state as the progress display names it. Pure.
pub fn pod_state(pod: &Pod) -> String {
    if let Some(problem) = pod.problem() {
        return problem.reason;
    }
    if pod.ready() {
        return "ready".into();
    }
    if let Some(init) = pod.running_init() {
        return format!("init {init} running");
    }
    match pod.phase() {
        Some("Running") => "running, not ready yet".into(),
        Some("Pending") if pod.status.container_statuses.is_none() => "pending".into(),
        Some("Pending") => "starting".into(),
        Some(other) => other.to_lowercase(),
        None => "pending".into(),
    }
}

/// Live rollout progress: a line per new pod (pending → init running with
/// its last log line → ready), `backend x/y ready` and the time against
/// Helm's timeout. On a terminal the lines are redrawn in place; otherwise
/// one plain line is printed per change.
pub struct Progress {
    env: Environment,
    started: Instant,
    shown: std::collections::BTreeMap<String, String>,
    summary: String,
    live: Option<(indicatif::MultiProgress, indicatif::ProgressBar)>,
    bars: std::collections::BTreeMap<String, indicatif::ProgressBar>,
}

impl Progress {
    pub fn new(env: &Environment) -> Progress {
        let live = crate::progress::live().then(|| {
            let multi = indicatif::MultiProgress::new();
            let summary = multi.add(indicatif::ProgressBar::new_spinner());
            summary.enable_steady_tick(Duration::from_millis(120));
            (multi, summary)
        });
        Progress {
            env: env.clone(),
            started: Instant::now(),
            shown: Default::default(),
            summary: String::new(),
            live,
            bars: Default::default(),
        }
    }

    pub fn show(&mut self, backend: &Backend) {
        let RolloutState { wanted, ready, .. } = backend.rollout_state();
        for pod in &backend.pods {
            let name = pod.name().to_string();
            let mut state = pod_state(pod);
            if state.starts_with("init ") {
                // What the runner is doing now: its last line.
                let log = crate::process::capture(&kubectl::tail_log_args(
                    &self.env,
                    &name,
                    kubectl::MIGRATIONS_CONTAINER,
                    1,
                ));
                if let Ok(log) = log {
                    let last = cluster::last_line(&log.stdout);
                    if !last.is_empty() {
                        state = format!("{state}: {last}");
                    }
                }
            }
            if self.shown.get(&name) != Some(&state) {
                self.show_pod(&name, &state);
                self.shown.insert(name, state);
            }
        }
        let summary = format!("backend {ready}/{wanted} ready");
        let clock = format!(
            "{:.0} s of Helm's {} s timeout",
            self.started.elapsed().as_secs_f64(),
            self.env.helm_timeout.as_secs()
        );
        match &self.live {
            Some((_, bar)) => bar.set_message(format!("{summary}, {clock}")),
            None if summary != self.summary => {
                crate::progress::say(format!("rollout: {summary} ({clock})"))
            }
            None => {}
        }
        self.summary = summary;
    }

    fn show_pod(&mut self, name: &str, state: &str) {
        let line = backend_migrations::redact::mask_all(&format!("pod {name}: {state}"));
        match &self.live {
            Some((multi, _)) => {
                let bar = self
                    .bars
                    .entry(name.to_string())
                    .or_insert_with(|| multi.insert(0, indicatif::ProgressBar::new_spinner()));
                bar.set_message(line);
                bar.tick();
            }
            None => crate::progress::say(format!("rollout: {line}")),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some((_, summary)) = &self.live {
            summary.finish_with_message(self.summary.clone());
        }
        for bar in self.bars.values() {
            bar.finish();
        }
    }
}

/// The failing container's log, exit code and the pod's events.
pub fn explain_failure(env: &Environment, pod: &str, problem: &PodProblem) -> String {
    let mut out = format!("pod {pod} is in {}", problem.reason);
    if let Some(code) = problem.exit_code {
        let _ = write!(
            out,
            ": container {} exited with code {code}",
            problem.container
        );
        let meaning = (problem.container == kubectl::MIGRATIONS_CONTAINER)
            .then(|| backend_migrations::exit_codes::meaning(code))
            .flatten();
        if let Some(meaning) = meaning {
            let _ = write!(out, " ({meaning})");
        }
    } else if !problem.message.is_empty() {
        let _ = write!(out, ": {}", problem.message);
    }
    if problem.reason.contains("CrashLoopBackOff") || problem.reason.contains("Error") {
        let log = cluster::run(&kubectl::container_log_args(env, pod, &problem.container))
            .map(|o| o.stdout)
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(25)..];
        let _ = writeln!(
            out,
            "\n\n{} log of {pod} (last {} lines):",
            problem.container,
            tail.len()
        );
        for line in tail {
            let _ = writeln!(out, "  | {line}");
        }
    }
    if let Ok(List { items: events }) =
        cluster::json::<List<Event>>(&kubectl::pod_events_args(env, pod))
    {
        if !events.is_empty() {
            let _ = writeln!(out, "\nevents of {pod}:");
            for event in events.iter().rev().take(8).rev() {
                let _ = writeln!(out, "  {} {}: {}", event.kind, event.reason, event.message);
            }
        }
    }
    backend_migrations::redact::mask_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::backend::tests::{from_json, replicaset};
    use serde_json::json;

    fn backend(rs_revisions: &[(u64, u64)], pods: Vec<Pod>) -> Backend {
        Backend {
            deployment: Some(from_json(json!({"spec": {"replicas": 1}}))),
            replicasets: rs_revisions
                .iter()
                .map(|(rev, replicas)| replicaset(&format!("rs{rev}"), *rev, *replicas))
                .collect(),
            pods,
        }
    }

    fn pod(ready: bool, init_waiting: Option<&str>) -> Pod {
        from_json(json!({"metadata": {"name": "p"}, "status": {
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            "initContainerStatuses": init_waiting.map(|r| vec![json!({"name": "run-migrations",
                "state": {"waiting": {"reason": r}}, "lastState": {"terminated": {"exitCode": 1}}})]).unwrap_or_default()}}))
    }

    const NEW: Expect = Expect::NewerThan {
        before: 1,
        helm_revision: 2,
    };

    #[test]
    fn waits_for_the_new_replicaset_before_judging() {
        let old_only = backend(&[(1, 1)], vec![pod(true, None)]);
        assert!(matches!(assess(&old_only, NEW), Assessment::Waiting(_)));
        assert_eq!(assess(&old_only, Expect::Newest), Assessment::Complete);
    }

    /// Helm revision 2 applied a Deployment with the same pod template (a
    /// redeploy of identical inputs): the controller, having seen it, still
    /// rolls out ReplicaSet 1, so that one is judged, at once.
    #[test]
    fn an_unchanged_pod_template_is_judged_on_the_current_replicaset() {
        let deployment = |helm_revision: &str,
                          generation: u64,
                          observed: u64|
         -> crate::cluster::objects::Deployment {
            from_json(json!({
                "metadata": {"generation": generation, "annotations": {
                    "colony.dev/helm-revision": helm_revision,
                    "deployment.kubernetes.io/revision": "1"}},
                "spec": {"replicas": 1},
                "status": {"observedGeneration": observed}}))
        };
        let mut failing = backend(&[(1, 1)], vec![pod(false, Some("CrashLoopBackOff"))]);
        failing.deployment = Some(deployment("2", 3, 3));
        assert!(matches!(assess(&failing, NEW), Assessment::Failed { .. }));
        // Not applied by this revision yet, or not seen by the controller yet.
        failing.deployment = Some(deployment("1", 3, 3));
        assert!(matches!(assess(&failing, NEW), Assessment::Waiting(_)));
        failing.deployment = Some(deployment("2", 4, 3));
        assert!(matches!(assess(&failing, NEW), Assessment::Waiting(_)));
    }

    #[test]
    fn a_crash_loop_fails_at_once_even_while_old_pods_serve() {
        let crashing = backend(
            &[(1, 1), (2, 1)],
            vec![pod(false, Some("CrashLoopBackOff"))],
        );
        match assess(&crashing, NEW) {
            Assessment::Failed { problem, .. } => {
                assert_eq!(problem.reason, "Init:CrashLoopBackOff");
                assert_eq!(problem.exit_code, Some(1));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn complete_only_when_old_pods_are_gone() {
        let overlapping = backend(&[(1, 1), (2, 1)], vec![pod(true, None)]);
        assert!(matches!(assess(&overlapping, NEW), Assessment::Waiting(_)));
        let done = backend(&[(1, 0), (2, 1)], vec![pod(true, None)]);
        assert_eq!(assess(&done, NEW), Assessment::Complete);
        let initializing = backend(&[(1, 0), (2, 1)], vec![pod(false, Some("PodInitializing"))]);
        assert!(matches!(assess(&initializing, NEW), Assessment::Waiting(_)));
    }
}
