//! What the simulated API server and kubelet do: apply rendered workloads
//! (Deployments make ReplicaSets make pods, by pod-template hash), pull
//! images, run init containers for real, progress rollouts, and show it all
//! in the JSON shapes kubectl prints.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::pod::{self, Record};
use super::state::{now_ms, timestamp, Config, Deployment, Dir, Pod, ReplicaSet, State};

/// Kubernetes' alphabet for generated name suffixes (no vowels, no look-alikes).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn encode(bytes: &[u8], length: usize) -> String {
    bytes
        .iter()
        .take(length)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// The `pod-template-hash` of a template: the same template, the same hash.
pub fn template_hash(template: &Value) -> String {
    encode(&Sha256::digest(template.to_string().as_bytes()), 10)
}

fn labels_of(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `labels` satisfy a `k=v,k2=v2` selector (equality only).
pub fn selector_matches(selector: &str, labels: &BTreeMap<String, String>) -> bool {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|term| match term.split_once('=') {
            Some((key, value)) => {
                labels.get(key.trim_end_matches('=')).map(String::as_str)
                    == Some(value.trim_start_matches('='))
            }
            None => labels.contains_key(term),
        })
}

/// Applies the Deployments and StatefulSets of a rendered manifest; returns
/// the pods that must start.
pub fn apply(state: &mut State, namespace: &str, documents: &[Value]) -> Vec<String> {
    let mut started = Vec::new();
    for doc in documents {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if kind != "Deployment" && kind != "StatefulSet" {
            continue;
        }
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let template = doc["spec"]["template"].clone();
        let replicas = doc["spec"]["replicas"].as_u64().unwrap_or(1) as u32;
        let record = Deployment {
            namespace: namespace.to_string(),
            name: name.clone(),
            labels: labels_of(&doc["metadata"]["labels"]),
            annotations: labels_of(&doc["metadata"]["annotations"]),
            selector: labels_of(&doc["spec"]["selector"]["matchLabels"]),
            external_annotations: Default::default(),
            replicas,
            generation: 1,
            kind: kind.to_string(),
        };
        // As the API server: the spec (replicas, the pod template) bumps
        // the generation; metadata (annotations) does not.
        let hash = template_hash(&template);
        let newest = newest_replicaset_revision(state, namespace, &name);
        let template_changed = !state.replicasets.iter().any(|rs| {
            rs.namespace == namespace
                && rs.deployment == name
                && rs.hash == hash
                && Some(rs.revision) == newest
        });
        match state
            .deployments
            .iter_mut()
            .find(|d| d.namespace == namespace && d.name == name)
        {
            Some(existing) => {
                let changed = existing.replicas != replicas || template_changed;
                let generation = existing.generation + u64::from(changed);
                *existing = Deployment {
                    generation,
                    external_annotations: std::mem::take(&mut existing.external_annotations),
                    ..record
                };
            }
            None => state.deployments.push(record),
        }
        started.extend(roll(state, namespace, &name, kind, template, replicas));
    }
    started
}

/// The revision of a Deployment's newest ReplicaSet, if it has one.
fn newest_replicaset_revision(state: &State, namespace: &str, deployment: &str) -> Option<u64> {
    state
        .replicasets
        .iter()
        .filter(|rs| rs.namespace == namespace && rs.deployment == deployment)
        .map(|rs| rs.revision)
        .max()
}

/// Makes the ReplicaSet for `template` the newest one (re-using one with the
/// same hash, as Kubernetes does on a rollback) and gives it its pods.
fn roll(
    state: &mut State,
    namespace: &str,
    deployment: &str,
    kind: &str,
    template: Value,
    replicas: u32,
) -> Vec<String> {
    let hash = template_hash(&template);
    let newest_revision = state
        .replicasets
        .iter()
        .filter(|rs| rs.namespace == namespace && rs.deployment == deployment)
        .map(|rs| rs.revision)
        .max()
        .unwrap_or(0);
    let existing = state
        .replicasets
        .iter_mut()
        .find(|rs| rs.namespace == namespace && rs.deployment == deployment && rs.hash == hash);
    let rs_name = match existing {
        Some(rs) => {
            if rs.revision != newest_revision {
                rs.revision = newest_revision + 1;
            }
            rs.replicas = replicas;
            rs.name.clone()
        }
        None => {
            let mut labels = labels_of(&template["metadata"]["labels"]);
            labels.insert("pod-template-hash".into(), hash.clone());
            let name = if kind == "StatefulSet" {
                deployment.to_string()
            } else {
                format!("{deployment}-{hash}")
            };
            state.replicasets.push(ReplicaSet {
                namespace: namespace.to_string(),
                name: name.clone(),
                deployment: deployment.to_string(),
                hash: hash.clone(),
                revision: newest_revision + 1,
                replicas,
                labels,
                created: now_ms(),
                template: template.clone(),
            });
            name
        }
    };
    let live = state
        .pods
        .iter()
        // ReplicaSet names repeat across namespaces (same release, same
        // template): a pod belongs to one by name *and* namespace.
        .filter(|p| !p.deleted && p.replicaset == rs_name && p.namespace == namespace)
        .count() as u32;
    let mut started = Vec::new();
    for index in live..replicas {
        state.clock += 1;
        let pod = new_pod(
            state.clock,
            namespace,
            &rs_name,
            kind,
            index,
            &hash,
            &template,
        );
        started.push(pod.name.clone());
        state.pods.push(pod);
    }
    started
}

#[allow(clippy::too_many_arguments)]
fn new_pod(
    clock: u64,
    namespace: &str,
    rs_name: &str,
    kind: &str,
    index: u32,
    hash: &str,
    template: &Value,
) -> Pod {
    let mut labels = labels_of(&template["metadata"]["labels"]);
    labels.insert("pod-template-hash".into(), hash.to_string());
    let database = labels
        .get("app.kubernetes.io/component")
        .map(String::as_str)
        == Some("database");
    let name = if kind == "StatefulSet" {
        format!("{rs_name}-{index}")
    } else {
        let seed = Sha256::digest(format!("{rs_name}-{clock}-{}", now_ms()).as_bytes());
        format!("{rs_name}-{}", encode(&seed, 5))
    };
    Pod {
        namespace: namespace.to_string(),
        name,
        replicaset: rs_name.to_string(),
        labels,
        created: now_ms(),
        spec: template["spec"].clone(),
        deleted: false,
        database,
    }
}

/// A pod's current condition, derived from what its processes did.
#[derive(Debug, Clone, PartialEq)]
pub enum PodCondition {
    ImagePull(String),
    /// The init container is running (or waiting for the lock, the database…).
    Initializing,
    /// The init container exited non-zero: CrashLoopBackOff.
    InitFailed(i32),
    Running {
        ready: bool,
    },
}

pub fn condition(dir: &Dir, config: &Config, pod: &Pod) -> PodCondition {
    if pod.database {
        return PodCondition::Running { ready: true };
    }
    if let Some(error) = Record::PullError.read(dir, &pod.name) {
        return PodCondition::ImagePull(error);
    }
    let faults = &config.faults;
    let delay = if pod.created >= faults.readiness_delay_since_ms {
        faults.readiness_delay_ms
    } else {
        0
    };
    match Record::InitExit.read(dir, &pod.name) {
        None => PodCondition::Initializing,
        Some(code) => match code.trim().parse::<i32>() {
            Ok(0) => {
                let finished = Record::InitExit.modified_ms(dir, &pod.name).unwrap_or(0);
                PodCondition::Running {
                    ready: now_ms() >= finished + delay,
                }
            }
            Ok(code) => PodCondition::InitFailed(code),
            Err(_) => PodCondition::Initializing,
        },
    }
}

/// Rolling update: once every pod of a Deployment's newest ReplicaSet is
/// ready, the older ones scale to zero (unless a fault keeps them).
pub fn progress(state: &mut State, dir: &Dir, config: &Config) {
    if config.faults.keep_old_replicasets {
        return;
    }
    for deployment in state.deployments.clone() {
        let sets: Vec<ReplicaSet> = state
            .replicasets
            .iter()
            .filter(|rs| rs.namespace == deployment.namespace && rs.deployment == deployment.name)
            .cloned()
            .collect();
        let Some(newest) = sets.iter().max_by_key(|rs| rs.revision) else {
            continue;
        };
        let ready = state
            .pods
            .iter()
            .filter(|p| {
                !p.deleted && p.replicaset == newest.name && p.namespace == newest.namespace
            })
            .filter(|p| condition(dir, config, p) == PodCondition::Running { ready: true })
            .count() as u32;
        if ready < newest.replicas {
            continue;
        }
        for old in sets.iter().filter(|rs| rs.name != newest.name) {
            for rs in state
                .replicasets
                .iter_mut()
                .filter(|rs| rs.name == old.name && rs.namespace == old.namespace)
            {
                rs.replicas = 0;
            }
            let mut removed = Vec::new();
            for pod in state
                .pods
                .iter_mut()
                .filter(|p| !p.deleted && p.replicaset == old.name && p.namespace == old.namespace)
            {
                pod.deleted = true;
                removed.push((pod.name.clone(), pod::container_names(pod)));
            }
            config.runtime.remove_pods_detached(&removed);
        }
    }
}

/// The environment a pod's container sees: its `env` (the image's own
/// variables stay), with every secret reference to a database URL answered
/// by the bed's database.
pub fn container_env(config: &Config, container: &Value) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap_or_default().to_string();
        if let Some(value) = var["value"].as_str() {
            env.push((name, value.to_string()));
        } else if var["valueFrom"]["secretKeyRef"].is_object() {
            env.push((name, config.database_url.clone()));
        }
    }
    env
}

/// The kubectl JSON of one pod.
pub fn pod_json(dir: &Dir, config: &Config, pod: &Pod) -> Value {
    let condition = condition(dir, config, pod);
    let init_names: Vec<String> = pod.spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
        .collect();
    let containers: Vec<(String, String)> = pod.spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c["image"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let image = containers.first().map(|c| c.1.clone()).unwrap_or_default();
    // What the kubelet pulled: kubectl's `imageID`, empty until then.
    let image_ids: BTreeMap<String, String> = Record::ImageIds
        .read(dir, &pod.name)
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let image_id = |image: &str| {
        image_ids
            .get(image)
            .map(|id| format!("docker-pullable://{id}"))
            .unwrap_or_default()
    };
    let waiting =
        |reason: &str, message: &str| json!({"waiting": {"reason": reason, "message": message}});
    let (restart_count, last_crash) = super::pod::restarts(dir, &pod.name);
    let (phase, init_state, init_last, restarts, main_state, ready) = match &condition {
        PodCondition::ImagePull(message) => {
            let reason = if now_ms() > pod.created + 2000 {
                "ImagePullBackOff"
            } else {
                "ErrImagePull"
            };
            (
                "Pending",
                waiting(reason, message),
                json!({}),
                0,
                waiting(reason, message),
                false,
            )
        }
        PodCondition::Initializing => (
            "Pending",
            json!({"running": {"startedAt": timestamp(pod.created)}}),
            match last_crash {
                Some(code) => json!({"terminated": {"exitCode": code, "reason": "Error"}}),
                None => json!({}),
            },
            restart_count,
            waiting("PodInitializing", ""),
            false,
        ),
        PodCondition::InitFailed(code) => (
            "Pending",
            waiting(
                "CrashLoopBackOff",
                &format!(
                    "back-off 10s restarting failed container={} pod={}",
                    init_names.first().cloned().unwrap_or_default(),
                    pod.name
                ),
            ),
            json!({"terminated": {"exitCode": code, "reason": "Error", "startedAt": timestamp(pod.created), "finishedAt": timestamp(now_ms())}}),
            restart_count + 1,
            waiting("PodInitializing", ""),
            false,
        ),
        PodCondition::Running { ready } => (
            "Running",
            json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": timestamp(pod.created), "finishedAt": timestamp(pod.created)}}),
            match last_crash {
                Some(code) => json!({"terminated": {"exitCode": code, "reason": "Error"}}),
                None => json!({}),
            },
            restart_count,
            json!({"running": {"startedAt": timestamp(pod.created)}}),
            *ready,
        ),
    };
    let init_statuses: Vec<Value> = init_names
        .iter()
        .map(|name| {
            json!({"name": name, "image": image, "imageID": image_id(&image), "ready": matches!(condition, PodCondition::Running { .. }),
                   "restartCount": restarts, "state": init_state, "lastState": init_last})
        })
        .collect();
    let container_statuses: Vec<Value> = containers
        .iter()
        .map(|(name, image)| {
            json!({"name": name, "image": image, "imageID": image_id(image), "ready": ready, "restartCount": 0, "started": ready, "state": main_state, "lastState": {}})
        })
        .collect();
    let owner_kind = if pod.database {
        "StatefulSet"
    } else {
        "ReplicaSet"
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "labels": pod.labels,
            "creationTimestamp": timestamp(pod.created),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner_kind, "name": pod.replicaset, "controller": true}],
        },
        "spec": pod.spec,
        "status": {
            "phase": phase,
            "conditions": [
                {"type": "Initialized", "status": if matches!(condition, PodCondition::Running { .. }) { "True" } else { "False" }},
                {"type": "Ready", "status": if ready { "True" } else { "False" }},
            ],
            "initContainerStatuses": init_statuses,
            "containerStatuses": container_statuses,
            "startTime": timestamp(pod.created),
        }
    })
}

pub fn replicaset_json(state: &State, dir: &Dir, config: &Config, rs: &ReplicaSet) -> Value {
    let pods: Vec<&Pod> = state
        .pods
        .iter()
        .filter(|p| !p.deleted && p.replicaset == rs.name && p.namespace == rs.namespace)
        .collect();
    let ready = pods
        .iter()
        .filter(|p| condition(dir, config, p) == PodCondition::Running { ready: true })
        .count();
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": rs.name,
            "namespace": rs.namespace,
            "labels": rs.labels,
            "annotations": {"deployment.kubernetes.io/revision": rs.revision.to_string()},
            "creationTimestamp": timestamp(rs.created),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": rs.deployment, "controller": true}],
        },
        "spec": {"replicas": rs.replicas, "template": rs.template},
        "status": {"replicas": pods.len(), "readyReplicas": ready, "availableReplicas": ready, "fullyLabeledReplicas": pods.len()},
    })
}

pub fn deployment_json(
    state: &State,
    dir: &Dir,
    config: &Config,
    deployment: &Deployment,
) -> Value {
    let sets: Vec<&ReplicaSet> = state
        .replicasets
        .iter()
        .filter(|rs| rs.namespace == deployment.namespace && rs.deployment == deployment.name)
        .collect();
    let newest = sets
        .iter()
        .max_by_key(|rs| rs.revision)
        .map(|rs| rs.name.clone())
        .unwrap_or_default();
    let pods: Vec<&Pod> = state
        .pods
        .iter()
        .filter(|p| {
            !p.deleted
                && p.namespace == deployment.namespace
                && sets.iter().any(|rs| rs.name == p.replicaset)
        })
        .collect();
    let ready = pods
        .iter()
        .filter(|p| condition(dir, config, p) == PodCondition::Running { ready: true })
        .count();
    let updated = pods.iter().filter(|p| p.replicaset == newest).count();
    json!({
        "apiVersion": "apps/v1",
        "kind": deployment.kind,
        "metadata": {
            "name": deployment.name,
            "namespace": deployment.namespace,
            "labels": deployment.labels,
            "annotations": deployment
                .annotations
                .iter()
                .chain(&deployment.external_annotations)
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain(
                    // The controller names the ReplicaSet it rolls out.
                    newest_replicaset_revision(state, &deployment.namespace, &deployment.name)
                        .map(|r| ("deployment.kubernetes.io/revision".to_string(), r.to_string())),
                )
                .collect::<BTreeMap<_, _>>(),
            "generation": deployment.generation,
        },
        "spec": {"replicas": deployment.replicas, "selector": {"matchLabels": deployment.selector}},
        "status": {
            "observedGeneration": deployment.generation,
            "replicas": pods.len(),
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": pods.len().saturating_sub(ready),
        }
    })
}

/// Recent events of a pod, as the kubelet would have recorded them.
pub fn events_json(dir: &Dir, config: &Config, pod: &Pod) -> Vec<Value> {
    let event = |reason: &str, kind: &str, message: String| {
        json!({"apiVersion": "v1", "kind": "Event", "type": kind, "reason": reason, "message": message,
               "involvedObject": {"kind": "Pod", "name": pod.name, "namespace": pod.namespace},
               "lastTimestamp": timestamp(now_ms()), "count": 1})
    };
    let mut events = vec![event(
        "Scheduled",
        "Normal",
        format!(
            "Successfully assigned {}/{} to sim-node",
            pod.namespace, pod.name
        ),
    )];
    match condition(dir, config, pod) {
        PodCondition::ImagePull(message) => {
            events.push(event("Failed", "Warning", message));
            events.push(event("Failed", "Warning", "Error: ErrImagePull".into()));
        }
        PodCondition::InitFailed(_) => {
            let init = pod.spec["initContainers"][0]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            events.push(event(
                "Started",
                "Normal",
                format!("Started container {init}"),
            ));
            events.push(event(
                "BackOff",
                "Warning",
                format!(
                    "Back-off restarting failed container {init} in pod {}",
                    pod.name
                ),
            ));
        }
        _ => events.push(event("Started", "Normal", "Started container".into())),
    }
    events
}

pub fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}})
}

/// Reads a pod's log for a container, as the kubelet kept it.
pub fn log_path(dir: &Dir, pod: &str, container: &str) -> PathBuf {
    dir.pod_dir(pod).join(format!("{container}.log"))
}
