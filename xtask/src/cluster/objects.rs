//! The parts of the Kubernetes objects this tool reads, as `kubectl get -o
//! json` prints them. Each struct names only the fields read, and every
//! field has a default, so an object the API server trimmed (no `status`
//! yet, no annotations) reads as empty instead of failing. k8s-openapi would
//! type every field of every kind, at a build cost this tool does not pay.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The ReplicaSet annotation with the Deployment revision it belongs to.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// The label tying a ReplicaSet's pods to it.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// `kubectl get … -o json` of a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct List<T> {
    pub items: Vec<T>,
}

impl<T> Default for List<T> {
    fn default() -> Self {
        List { items: Vec::new() }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Metadata {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Bumped by the API server on every change of the spec.
    pub generation: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Deployment {
    pub metadata: Metadata,
    pub spec: DeploymentSpec,
    pub status: DeploymentStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DeploymentStatus {
    /// The generation the controller has acted on.
    pub observed_generation: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DeploymentSpec {
    /// Absent means 1, as the API server defaults it.
    pub replicas: Option<u64>,
}

impl Deployment {
    pub fn replicas(&self) -> usize {
        self.spec.replicas.unwrap_or(1) as usize
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata.annotations.get(key).map(String::as_str)
    }

    /// Helm revision `helm_revision` applied this Deployment, the
    /// controller has acted on it, and the ReplicaSet it rolls out is not
    /// newer than `before`: the pod template did not change, so no new
    /// ReplicaSet will come (the current one is the deploy's).
    pub fn kept_its_replicaset(&self, helm_revision: u32, before: u64) -> bool {
        let applied =
            self.annotation("colony.dev/helm-revision") == Some(helm_revision.to_string().as_str());
        let observed = self.status.observed_generation >= self.metadata.generation;
        let current = self
            .annotation("deployment.kubernetes.io/revision")
            .and_then(|r| r.parse::<u64>().ok());
        applied && observed && current.is_some_and(|r| r <= before)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ReplicaSet {
    pub metadata: Metadata,
    pub status: ReplicaSetStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ReplicaSetStatus {
    /// Pods it still has, ready or not.
    pub replicas: u64,
}

impl ReplicaSet {
    /// The Deployment revision it was made for (0 when unannotated).
    pub fn revision(&self) -> u64 {
        self.metadata
            .annotations
            .get(REVISION_ANNOTATION)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0)
    }

    pub fn pod_template_hash(&self) -> &str {
        label(&self.metadata, POD_TEMPLATE_HASH)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Pod {
    pub metadata: Metadata,
    pub spec: PodSpec,
    pub status: PodStatus,
}

/// The containers of a pod and their plain environment values (the rest
/// of the spec is not read).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PodSpec {
    pub containers: Vec<ContainerSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ContainerSpec {
    pub name: String,
    pub env: Vec<EnvVar>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EnvVar {
    pub name: String,
    /// None for a value from a Secret or a ConfigMap (`valueFrom`).
    pub value: Option<String>,
}

impl Pod {
    /// A plain environment value of one of its containers.
    pub fn env_value(&self, name: &str) -> Option<&str> {
        self.spec
            .containers
            .iter()
            .flat_map(|c| &c.env)
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PodStatus {
    pub phase: Option<String>,
    pub conditions: Vec<Condition>,
    pub init_container_statuses: Vec<ContainerStatus>,
    /// None until the kubelet reports the main containers at all.
    pub container_statuses: Option<Vec<ContainerStatus>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    /// What the kubelet pulled: `docker-pullable://repo@sha256:…` (Docker),
    /// `repo@sha256:…` (containerd); empty until the image is pulled.
    #[serde(rename = "imageID")]
    pub image_id: String,
    pub state: ContainerState,
    pub last_state: ContainerState,
}

/// At most one of the three is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ContainerState {
    pub waiting: Option<Waiting>,
    pub running: Option<Running>,
    pub terminated: Option<Terminated>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Running {}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Terminated {
    pub exit_code: Option<i64>,
}

/// Why a pod is not running, as kubectl's STATUS column would say it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodProblem {
    /// `Init:CrashLoopBackOff`, `ImagePullBackOff`, …
    pub reason: String,
    pub container: String,
    pub message: String,
    /// The container's last exit code, when it ran and ended.
    pub exit_code: Option<i64>,
}

impl Pod {
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn pod_template_hash(&self) -> &str {
        label(&self.metadata, POD_TEMPLATE_HASH)
    }

    pub fn ready(&self) -> bool {
        self.status
            .conditions
            .iter()
            .any(|c| c.kind == "Ready" && c.status == "True")
    }

    pub fn phase(&self) -> Option<&str> {
        self.status.phase.as_deref()
    }

    /// The digest of the image the pod's containers were started from (the
    /// first that the kubelet reports), as `sha256:…`: what really runs,
    /// whatever tag the spec names.
    pub fn image_digest(&self) -> Option<&str> {
        self.status
            .init_container_statuses
            .iter()
            .chain(self.status.container_statuses.iter().flatten())
            .find_map(|s| s.image_id.rsplit_once('@').map(|(_, digest)| digest))
            .filter(|digest| digest.starts_with("sha256:"))
    }

    /// The init container `name` ended with exit code 0.
    pub fn init_succeeded(&self, name: &str) -> bool {
        self.status.init_container_statuses.iter().any(|s| {
            s.name == name && s.state.terminated.as_ref().and_then(|t| t.exit_code) == Some(0)
        })
    }

    /// Whether main container `name` is running (ready or not): an exec
    /// into it works.
    pub fn container_running(&self, name: &str) -> bool {
        self.status
            .container_statuses
            .iter()
            .flatten()
            .any(|s| s.name == name && s.state.running.is_some())
    }

    /// The init container running now, if any.
    pub fn running_init(&self) -> Option<&str> {
        self.status
            .init_container_statuses
            .iter()
            .find(|s| s.state.running.is_some())
            .map(|s| s.name.as_str())
    }

    /// The first waiting container with a reason other than starting up,
    /// init containers first (their problems block the rest). None when
    /// the pod is fine.
    pub fn problem(&self) -> Option<PodProblem> {
        let init = self
            .status
            .init_container_statuses
            .iter()
            .map(|s| (s, true));
        let main = self.status.container_statuses.iter().flatten();
        init.chain(main.map(|s| (s, false)))
            .find_map(|(status, is_init)| {
                let waiting = status.state.waiting.as_ref()?;
                if waiting.reason == "PodInitializing" || waiting.reason == "ContainerCreating" {
                    return None;
                }
                Some(PodProblem {
                    reason: if is_init {
                        format!("Init:{}", waiting.reason)
                    } else {
                        waiting.reason.clone()
                    },
                    container: status.name.clone(),
                    message: waiting.message.clone(),
                    exit_code: status
                        .last_state
                        .terminated
                        .as_ref()
                        .and_then(|t| t.exit_code),
                })
            })
    }
}

/// An event about a pod (`kubectl get events`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    pub reason: String,
    pub message: String,
}

fn label<'a>(metadata: &'a Metadata, key: &str) -> &'a str {
    metadata.labels.get(key).map_or("", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({ "status": status })).unwrap()
    }

    #[test]
    fn missing_fields_read_as_empty() {
        let bare: Pod = serde_json::from_value(json!({})).unwrap();
        assert_eq!((bare.name(), bare.ready(), bare.phase()), ("", false, None));
        let rs: ReplicaSet = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
        assert_eq!((rs.revision(), rs.pod_template_hash()), (0, ""));
        let deployment: Deployment = serde_json::from_value(json!({"spec": {}})).unwrap();
        assert_eq!(deployment.replicas(), 1);
        let list: List<Pod> = serde_json::from_value(json!({"kind": "List"})).unwrap();
        assert!(list.items.is_empty());
    }

    #[test]
    fn pod_problems_read_like_kubectl() {
        let crashing = pod(json!({"initContainerStatuses": [{
            "name": "run-migrations",
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}));
        let problem = crashing.problem().unwrap();
        assert_eq!(problem.reason, "Init:CrashLoopBackOff");
        assert_eq!(
            (problem.container.as_str(), problem.exit_code),
            ("run-migrations", Some(1))
        );

        let starting = pod(
            json!({"containerStatuses": [{"name": "backend", "state": {"waiting": {"reason": "PodInitializing"}}}]}),
        );
        assert_eq!(starting.problem(), None);
        let pulling = pod(
            json!({"containerStatuses": [{"name": "backend", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}),
        );
        assert_eq!(pulling.problem().unwrap().reason, "ImagePullBackOff");
    }

    #[test]
    fn init_containers_are_read_by_state() {
        let done = pod(json!({"initContainerStatuses": [
            {"name": "run-migrations", "state": {"terminated": {"exitCode": 0}}}]}));
        assert!(done.init_succeeded("run-migrations"));
        assert!(!done.init_succeeded("other"));
        let running = pod(json!({"initContainerStatuses": [
            {"name": "run-migrations", "state": {"running": {"startedAt": "2026-11-26T00:00:00Z"}}}]}));
        assert_eq!(running.running_init(), Some("run-migrations"));
        assert!(!running.init_succeeded("run-migrations"));
    }

    #[test]
    fn the_image_digest_is_read_from_either_runtime_s_image_id() {
        let digest = "sha256:".to_string() + &"ab".repeat(32);
        let docker = pod(json!({"initContainerStatuses": [
            {"name": "run-migrations", "imageID": format!("docker-pullable://r:5000/colony-backend@{digest}")}]}));
        assert_eq!(docker.image_digest(), Some(digest.as_str()));
        let containerd = pod(json!({"containerStatuses": [
            {"name": "backend", "imageID": format!("r:5000/colony-backend@{digest}")}]}));
        assert_eq!(containerd.image_digest(), Some(digest.as_str()));
        // Not pulled yet, or a local image id (no repository digest): unknown.
        let pending =
            pod(json!({"initContainerStatuses": [{"name": "run-migrations", "imageID": ""}]}));
        assert_eq!(pending.image_digest(), None);
        let local = pod(json!({"containerStatuses": [{"name": "backend", "imageID": digest}]}));
        assert_eq!(local.image_digest(), None);
    }
}
