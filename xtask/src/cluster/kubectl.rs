//! The `kubectl` command lines the product runs. Every one names the
//! environment's context and namespace explicitly, so a context switched in
//! another terminal mid-deploy cannot redirect it.

use crate::config::{Component, Environment};

/// The chart's init container that runs the migrations.
pub const MIGRATIONS_CONTAINER: &str = "run-migrations";

/// The label selector of one component's pods, from the chart's standard labels.
/// `component` is the chart's: `backend`, `frontend` (an image's
/// `Component`) or `database`.
pub fn component_selector(env: &Environment, component: &str) -> String {
    format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/component={component}",
        env.release
    )
}

/// `kubectl config get-contexts NAME -o name`: prints NAME when the
/// kubeconfig has that context, fails when it does not.
pub fn context_exists_args(context: &str) -> Vec<String> {
    ["kubectl", "config", "get-contexts", context, "-o", "name"]
        .map(String::from)
        .to_vec()
}

fn kubectl(env: &Environment, rest: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "kubectl",
        "--context",
        &env.kube_context,
        "--namespace",
        &env.namespace,
    ]
    .map(String::from)
    .to_vec();
    args.extend(rest.iter().map(|s| s.to_string()));
    args
}

pub fn backend_deployments_args(env: &Environment) -> Vec<String> {
    kubectl(
        env,
        &[
            "get",
            "deployments",
            "--selector",
            &component_selector(env, Component::Backend.as_str()),
            "-o",
            "json",
        ],
    )
}

/// The backend's ReplicaSets; the newest one's `pod-template-hash` names the
/// pods to verify (never `deploy/…`, which picks the oldest healthy pod).
pub fn backend_replicasets_args(env: &Environment) -> Vec<String> {
    kubectl(
        env,
        &[
            "get",
            "replicasets",
            "--selector",
            &component_selector(env, Component::Backend.as_str()),
            "-o",
            "json",
        ],
    )
}

/// Every backend pod; the newest ReplicaSet's are picked by their
/// `pod-template-hash` label (never `deploy/…`, which picks the oldest
/// healthy pod).
pub fn backend_pods_args(env: &Environment) -> Vec<String> {
    kubectl(
        env,
        &[
            "get",
            "pods",
            "--selector",
            &component_selector(env, Component::Backend.as_str()),
            "-o",
            "json",
        ],
    )
}

/// `alembic current` in the backend container, with the environment's
/// Alembic command (`uv run --no-sync alembic current`, …).
pub fn alembic_current_args(env: &Environment, pod: &str) -> Vec<String> {
    alembic_args(env, pod, &["current"])
}

/// The environment's Alembic command with `args`, in the backend container.
pub fn alembic_args(env: &Environment, pod: &str, args: &[&str]) -> Vec<String> {
    let mut command: Vec<&str> = env.alembic_command.iter().map(String::as_str).collect();
    command.extend_from_slice(args);
    backend_exec_args(env, pod, &command)
}

pub fn container_log_args(env: &Environment, pod: &str, container: &str) -> Vec<String> {
    kubectl(env, &["logs", pod, "--container", container])
}

pub fn pod_events_args(env: &Environment, pod: &str) -> Vec<String> {
    let field = format!("involvedObject.name={pod}");
    kubectl(
        env,
        &["get", "events", "--field-selector", &field, "-o", "json"],
    )
}

/// Runs a command in the backend container of `pod`.
pub fn backend_exec_args(env: &Environment, pod: &str, command: &[&str]) -> Vec<String> {
    let container = Component::Backend.as_str();
    let mut rest = vec!["exec", pod, "--container", container, "--"];
    rest.extend_from_slice(command);
    kubectl(env, &rest)
}

pub fn migrations_log_args(env: &Environment, pod: &str) -> Vec<String> {
    kubectl(env, &["logs", pod, "--container", MIGRATIONS_CONTAINER])
}

/// `kubectl annotate deployment NAME --overwrite k=v…`: metadata only, so
/// no pod restarts.
pub fn annotate_deployment_args(
    env: &Environment,
    deployment: &str,
    annotations: &[(&str, &str)],
) -> Vec<String> {
    let pairs: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut rest = vec!["annotate", "deployment", deployment, "--overwrite"];
    rest.extend(pairs.iter().map(String::as_str));
    kubectl(env, &rest)
}

/// The release's in-chart database pods (`-o name`): is there a database
/// to back up before a first install?
pub fn database_pods_args(env: &Environment) -> Vec<String> {
    kubectl(
        env,
        &[
            "get",
            "pods",
            "--selector",
            &component_selector(env, "database"),
            "-o",
            "json",
        ],
    )
}

/// The environment's deploy lock (a Lease), as JSON.
pub fn lease_get_args(env: &Environment, name: &str) -> Vec<String> {
    kubectl(env, &["get", "lease", name, "-o", "json"])
}

/// `kubectl create -f FILE` or `kubectl replace -f FILE` (a Lease): the
/// API server refuses a create over an existing name and a replace with a
/// stale resourceVersion, which is what makes the lock a lock.
pub fn lease_write_args(env: &Environment, verb: &str, file: &str) -> Vec<String> {
    kubectl(env, &[verb, "-f", file])
}

pub fn lease_delete_args(env: &Environment, name: &str) -> Vec<String> {
    kubectl(env, &["delete", "lease", name])
}

/// `kubectl exec POD -- COMMAND` in the pod's first container (a database
/// pod has one).
pub fn pod_exec_args(env: &Environment, pod: &str, command: &[&str]) -> Vec<String> {
    let mut rest = vec!["exec", pod, "--"];
    rest.extend_from_slice(command);
    kubectl(env, &rest)
}

/// What the runner in a backend pod sees in the database (no Python, no
/// change): `run-migrations status --json`.
pub fn migrations_status_args(env: &Environment, pod: &str) -> Vec<String> {
    backend_exec_args(
        env,
        pod,
        &[
            crate::config::MIGRATIONS_BINARY_IN_IMAGE,
            "status",
            "--json",
            "--wait-timeout",
            "5",
        ],
    )
}

/// `alembic downgrade TARGET` through the image's runner, which holds the
/// migration lock meanwhile (no init container upgrades during it).
pub fn migrations_downgrade_args(env: &Environment, pod: &str, target: &str) -> Vec<String> {
    let alembic = format!("--alembic-cmd={}", env.alembic_command.join(" "));
    backend_exec_args(
        env,
        pod,
        &[
            crate::config::MIGRATIONS_BINARY_IN_IMAGE,
            "downgrade",
            target,
            &alembic,
        ],
    )
}

/// The last `lines` lines of a container's log (the runner's progress).
pub fn tail_log_args(env: &Environment, pod: &str, container: &str, lines: u32) -> Vec<String> {
    kubectl(
        env,
        &[
            "logs",
            pod,
            "--container",
            container,
            "--tail",
            &lines.to_string(),
        ],
    )
}
