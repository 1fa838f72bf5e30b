//! Reading the cluster through `kubectl`: a small runner for the argv that
//! `kubectl` builds, and typed views of the JSON it prints.

pub mod helm;
pub mod kubectl;
pub mod release;
pub mod rollout;

use anyhow::{anyhow, Context, Result};
use serde_json::Value;

use crate::config::Environment;

pub use crate::process::Output;

/// Runs an argv (the first element is the program), capturing its output
/// (through the process layer).
pub fn run(argv: &[String]) -> Result<Output> {
    crate::process::capture(argv)
}

/// Runs an argv whose output the user should see as it comes (Alembic's):
/// each line, masked, on our stderr. Returns the exit code.
pub fn relay(argv: &[String]) -> Result<i32> {
    Ok(crate::process::stream(argv, "  | ")?.0)
}

/// Runs a `kubectl … -o json` argv and parses its answer.
pub fn json(argv: &[String]) -> Result<Value> {
    let output = run(argv)?;
    if output.code != 0 {
        return Err(anyhow!(
            "`{}` failed: {}",
            crate::plan::display_argv(argv),
            output.stderr.trim()
        ));
    }
    serde_json::from_str(&output.stdout)
        .with_context(|| format!("`{}` printed no JSON", crate::plan::display_argv(argv)))
}

/// The backend workload as the cluster shows it.
#[derive(Debug, Clone)]
pub struct Backend {
    pub deployment: Option<Value>,
    pub replicasets: Vec<Value>,
    /// Pods of the newest ReplicaSet only.
    pub pods: Vec<Value>,
}

impl Backend {
    /// The Deployment, its ReplicaSets and the backend pods, read at once
    /// (three independent lists); the pods kept are the newest
    /// ReplicaSet's, by its `pod-template-hash` label.
    pub fn read(env: &Environment) -> Result<Backend> {
        let (deployments, replicasets, pods) = std::thread::scope(|scope| {
            let deployments = scope.spawn(|| json(&kubectl::backend_deployments_args(env)));
            let replicasets = scope.spawn(|| json(&kubectl::backend_replicasets_args(env)));
            let pods = json(&kubectl::backend_pods_args(env));
            (
                deployments.join().expect("deployment reader panicked"),
                replicasets.join().expect("replicaset reader panicked"),
                pods,
            )
        });
        let deployment = items(&deployments?).first().cloned();
        let replicasets = items(&replicasets?);
        let pods = match newest_replicaset(&replicasets) {
            Some(rs) => of_replicaset(items(&pods?), &pod_template_hash(rs)),
            None => Vec::new(),
        };
        Ok(Backend {
            deployment,
            replicasets,
            pods,
        })
    }
}

/// The pods labelled with a ReplicaSet's `pod-template-hash`. Pure.
pub fn of_replicaset(pods: Vec<Value>, hash: &str) -> Vec<Value> {
    pods.into_iter()
        .filter(|p| !hash.is_empty() && p["metadata"]["labels"]["pod-template-hash"] == hash)
        .collect()
}

/// The last non-empty line of a command's output (`alembic current`, a log).
pub fn last_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default()
}

pub fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

/// The ReplicaSet with the highest `deployment.kubernetes.io/revision`:
/// the one the Deployment is rolling out (never "the oldest healthy pod").
pub fn newest_replicaset(replicasets: &[Value]) -> Option<&Value> {
    replicasets.iter().max_by_key(|rs| {
        rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
            .as_str()
            .and_then(|r| r.parse::<u64>().ok())
            .unwrap_or(0)
    })
}

pub fn pod_template_hash(replicaset: &Value) -> String {
    replicaset["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// Why a pod is not running, as kubectl's STATUS column would say it:
/// `Init:CrashLoopBackOff`, `ImagePullBackOff`, … None when it is fine.
pub fn pod_problem(pod: &Value) -> Option<PodProblem> {
    let find = |key: &str, init: bool| {
        pod["status"][key]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|status| {
                let reason = status["state"]["waiting"]["reason"].as_str()?;
                if reason == "PodInitializing" || reason == "ContainerCreating" {
                    return None;
                }
                Some(PodProblem {
                    reason: if init {
                        format!("Init:{reason}")
                    } else {
                        reason.to_string()
                    },
                    container: status["name"].as_str().unwrap_or_default().to_string(),
                    message: status["state"]["waiting"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    exit_code: status["lastState"]["terminated"]["exitCode"].as_i64(),
                })
            })
    };
    find("initContainerStatuses", true).or_else(|| find("containerStatuses", false))
}

#[derive(Debug, Clone, PartialEq)]
pub struct PodProblem {
    pub reason: String,
    pub container: String,
    pub message: String,
    pub exit_code: Option<i64>,
}

pub fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_newest_replicaset_is_the_highest_revision() {
        let rs = |name: &str, revision: &str| {
            json!({"metadata": {"name": name, "annotations": {"deployment.kubernetes.io/revision": revision},
                   "labels": {"pod-template-hash": name}}})
        };
        let sets = vec![rs("a", "9"), rs("b", "10"), rs("c", "2")];
        assert_eq!(name(newest_replicaset(&sets).unwrap()), "b");
        assert_eq!(pod_template_hash(newest_replicaset(&sets).unwrap()), "b");
    }

    #[test]
    fn only_the_newest_replicasets_pods_are_kept() {
        let pod = |name: &str, hash: &str| json!({"metadata": {"name": name, "labels": {"pod-template-hash": hash}}});
        let pods = vec![
            pod("old-1", "old"),
            pod("new-1", "new"),
            json!({"metadata": {"name": "bare"}}),
        ];
        let kept = of_replicaset(pods.clone(), "new");
        assert_eq!(kept.iter().map(name).collect::<Vec<_>>(), ["new-1"]);
        assert!(of_replicaset(pods, "").is_empty());
    }

    #[test]
    fn pod_problems_read_like_kubectl() {
        let crashing = json!({"status": {"initContainerStatuses": [{
            "name": "run-migrations",
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}});
        let problem = pod_problem(&crashing).unwrap();
        assert_eq!(problem.reason, "Init:CrashLoopBackOff");
        assert_eq!(
            (problem.container.as_str(), problem.exit_code),
            ("run-migrations", Some(1))
        );

        let starting = json!({"status": {"containerStatuses": [{"name": "backend", "state": {"waiting": {"reason": "PodInitializing"}}}]}});
        assert_eq!(pod_problem(&starting), None);
        let pulling = json!({"status": {"containerStatuses": [{"name": "backend", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}});
        assert_eq!(pod_problem(&pulling).unwrap().reason, "ImagePullBackOff");
    }
}
