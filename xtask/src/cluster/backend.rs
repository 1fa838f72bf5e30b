//! The backend workload as one look at the cluster shows it, and what that
//! look says about the rollout: the one definition of "rollout complete",
//! used by the deploy's watch, by verify and by rollback.

use anyhow::Result;

use super::objects::{Deployment, List, Pod, PodProblem, ReplicaSet};
use crate::cluster::{self, kubectl};
use crate::config::Environment;

/// The backend workload as the cluster shows it.
#[derive(Debug, Clone, Default)]
pub struct Backend {
    pub deployment: Option<Deployment>,
    pub replicasets: Vec<ReplicaSet>,
    /// Pods of the newest ReplicaSet only.
    pub pods: Vec<Pod>,
}

impl Backend {
    /// The Deployment, its ReplicaSets and the backend pods, read at once
    /// (three independent lists); the pods kept are the newest
    /// ReplicaSet's, by its `pod-template-hash` label.
    pub fn read(env: &Environment) -> Result<Backend> {
        let (deployments, replicasets, pods) = std::thread::scope(|scope| {
            let deployments = scope.spawn(|| {
                cluster::json::<List<Deployment>>(&kubectl::backend_deployments_args(env))
            });
            let replicasets = scope.spawn(|| {
                cluster::json::<List<ReplicaSet>>(&kubectl::backend_replicasets_args(env))
            });
            let pods = cluster::json::<List<Pod>>(&kubectl::backend_pods_args(env));
            (
                deployments.join().expect("deployment reader panicked"),
                replicasets.join().expect("replicaset reader panicked"),
                pods,
            )
        });
        let mut backend = Backend {
            deployment: deployments?.items.into_iter().next(),
            replicasets: replicasets?.items,
            pods: Vec::new(),
        };
        let pods = pods?.items;
        backend.pods = match backend.newest_replicaset() {
            Some(rs) => of_replicaset(pods, rs.pod_template_hash()),
            None => Vec::new(),
        };
        Ok(backend)
    }

    /// The ReplicaSet with the highest `deployment.kubernetes.io/revision`:
    /// the one the Deployment is rolling out (never "the oldest healthy pod").
    pub fn newest_replicaset(&self) -> Option<&ReplicaSet> {
        self.replicasets.iter().max_by_key(|rs| rs.revision())
    }

    /// The newest ReplicaSet's revision (0 when there is none): taken
    /// before a deploy, so that a rollout which has not created its
    /// ReplicaSet yet is not mistaken for complete.
    pub fn newest_revision(&self) -> u64 {
        self.newest_replicaset().map_or(0, ReplicaSet::revision)
    }

    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name() == name)
    }

    /// A ready pod of the newest ReplicaSet, if any.
    pub fn ready_pod(&self) -> Option<&Pod> {
        self.pods.iter().find(|p| p.ready())
    }

    /// The rollout as this look shows it. Pure.
    pub fn rollout_state(&self) -> RolloutState {
        let newest = self.newest_replicaset();
        let newest_name = newest.map(|rs| rs.metadata.name.as_str());
        RolloutState {
            newest: newest.map(|rs| (rs.metadata.name.clone(), rs.revision())),
            wanted: self.deployment.as_ref().map_or(1, Deployment::replicas),
            ready: self.pods.iter().filter(|p| p.ready()).count(),
            old_pods: self
                .replicasets
                .iter()
                .filter(|rs| Some(rs.metadata.name.as_str()) != newest_name)
                .map(|rs| rs.status.replicas)
                .sum(),
            problems: self
                .pods
                .iter()
                .filter_map(|p| Some((p.name().to_string(), p.problem()?)))
                .collect(),
        }
    }
}

/// The pods labelled with a ReplicaSet's `pod-template-hash`. Pure.
fn of_replicaset(pods: Vec<Pod>, hash: &str) -> Vec<Pod> {
    pods.into_iter()
        .filter(|p| !hash.is_empty() && p.pod_template_hash() == hash)
        .collect()
}

/// States that will not get better by waiting (Skaffold's and kubedog's list).
const FATAL: &[&str] = &[
    "CrashLoopBackOff",
    "Error",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
];

/// One look at the backend's rollout, counted once.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutState {
    /// The newest ReplicaSet's name and revision.
    pub newest: Option<(String, u64)>,
    /// The Deployment's replicas.
    pub wanted: usize,
    /// Ready pods of the newest ReplicaSet.
    pub ready: usize,
    /// Pods older ReplicaSets still have.
    pub old_pods: u64,
    /// The newest ReplicaSet's pods that are not starting normally.
    pub problems: Vec<(String, PodProblem)>,
}

impl RolloutState {
    /// Every wanted pod of the newest ReplicaSet is ready and no older pod
    /// is left: what `kubectl rollout status` waits for.
    pub fn complete(&self) -> bool {
        self.newest.is_some() && self.ready >= self.wanted && self.old_pods == 0
    }

    /// A pod in a state that waiting will not fix, if any.
    pub fn fatal_problem(&self) -> Option<&(String, PodProblem)> {
        self.problems
            .iter()
            .find(|(_, problem)| FATAL.iter().any(|f| problem.reason.ends_with(f)))
    }

    pub fn newest_revision(&self) -> u64 {
        self.newest.as_ref().map_or(0, |(_, revision)| *revision)
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// Test objects from kubectl's JSON shapes.
    pub fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
        serde_json::from_value(value).expect("a test object in kubectl's shape")
    }

    pub fn replicaset(name: &str, revision: u64, replicas: u64) -> ReplicaSet {
        from_json(json!({"metadata": {"name": name,
            "annotations": {"deployment.kubernetes.io/revision": revision.to_string()},
            "labels": {"pod-template-hash": name}}, "status": {"replicas": replicas}}))
    }

    #[test]
    fn the_newest_replicaset_is_the_highest_revision() {
        let backend = Backend {
            replicasets: vec![
                replicaset("a", 9, 0),
                replicaset("b", 10, 1),
                replicaset("c", 2, 0),
            ],
            ..Backend::default()
        };
        let newest = backend.newest_replicaset().unwrap();
        assert_eq!(
            (newest.metadata.name.as_str(), newest.pod_template_hash()),
            ("b", "b")
        );
        assert_eq!(backend.newest_revision(), 10);
    }

    #[test]
    fn only_the_newest_replicasets_pods_are_kept() {
        let pod = |name: &str, hash: &str| -> Pod {
            from_json(json!({"metadata": {"name": name, "labels": {"pod-template-hash": hash}}}))
        };
        let pods = vec![
            pod("old-1", "old"),
            pod("new-1", "new"),
            from_json(json!({"metadata": {"name": "bare"}})),
        ];
        let kept = of_replicaset(pods.clone(), "new");
        assert_eq!(kept.iter().map(Pod::name).collect::<Vec<_>>(), ["new-1"]);
        assert!(of_replicaset(pods, "").is_empty());
    }

    #[test]
    fn a_rollout_is_complete_when_the_new_pods_are_ready_and_the_old_gone() {
        let ready: Pod = from_json(json!({"metadata": {"name": "p"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}));
        let mut backend = Backend {
            deployment: Some(from_json(json!({"spec": {"replicas": 1}}))),
            replicasets: vec![replicaset("new", 2, 1), replicaset("old", 1, 1)],
            pods: vec![ready],
        };
        let state = backend.rollout_state();
        assert_eq!(
            (
                state.wanted,
                state.ready,
                state.old_pods,
                state.newest_revision()
            ),
            (1, 1, 1, 2)
        );
        assert!(!state.complete(), "an old pod still serves");
        backend.replicasets[1].status.replicas = 0;
        assert!(backend.rollout_state().complete());
        assert!(!Backend::default().rollout_state().complete());
    }
}
