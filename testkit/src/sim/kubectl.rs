//! The simulated `kubectl`: `get` in kubectl's JSON shapes, `logs` from
//! what the init containers really printed, `exec` running the real command
//! in the pod's image against the real database.

use std::process::{Command, Stdio};

use serde_json::Value;

use super::args::{self, Parsed};
use super::cluster::{self, PodCondition};
use super::state::{Config, Dir, Pod, State};

const VALUE_FLAGS: &[&str] = &[
    "--context",
    "-n",
    "--namespace",
    "-l",
    "--selector",
    "-o",
    "--output",
    "-c",
    "--container",
    "--field-selector",
    "--request-timeout",
    "--tail",
    "--since",
    "--sort-by",
    "-f",
    "--filename",
];

pub fn main(dir: &Dir, argv: &[String]) -> i32 {
    let config = match dir.config() {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    let parsed = args::parse(argv, VALUE_FLAGS);
    let verb = parsed.positional.first().cloned().unwrap_or_default();
    if verb == "config" {
        return config_command(&config, &parsed);
    }
    if verb == "version" {
        return Command::new(&config.real_kubectl)
            .args(argv)
            .status()
            .map(|s| s.code().unwrap_or(1))
            .unwrap_or(1);
    }
    if let Err(e) = args::check_with_real_tool(dir, &config.real_kubectl, "kubectl", argv) {
        return fail(&e);
    }
    if let Some(context) = parsed.value(&["--context"]) {
        if context != config.context {
            return fail(&format!("error: context \"{context}\" does not exist"));
        }
    }
    let namespace = parsed
        .value(&["-n", "--namespace"])
        .unwrap_or_else(|| "default".into());
    let state = dir.update(|state| {
        cluster::progress(state, dir, &config);
        state.clone()
    });
    let result = match verb.as_str() {
        "get" => get(dir, &config, &state, &parsed, &namespace),
        "logs" => logs(dir, &state, &parsed, &namespace),
        "exec" => return exec(&config, dir, &state, &parsed, &namespace),
        "annotate" => annotate(dir, &parsed, &namespace),
        "create" => super::lease::create(dir, &parsed, &namespace),
        "replace" => super::lease::replace(dir, &parsed, &namespace),
        "delete" if is_lease(&parsed) => super::lease::delete(dir, &parsed, &namespace),
        other => Err(format!(
            "error: the simulated cluster does not implement `kubectl {other}`"
        )),
    };
    match result {
        Ok(()) => 0,
        Err(message) => fail(&message),
    }
}

fn is_lease(parsed: &Parsed) -> bool {
    matches!(
        parsed.positional.get(1).map(String::as_str),
        Some("lease" | "leases" | "leases.coordination.k8s.io")
    )
}

fn fail(message: &str) -> i32 {
    eprintln!("{message}");
    1
}

/// `kubectl annotate deployment NAME [--overwrite] k=v… | k-`: metadata
/// only; no pod restarts.
fn annotate(dir: &Dir, parsed: &Parsed, namespace: &str) -> Result<(), String> {
    let kind = parsed.positional.get(1).cloned().unwrap_or_default();
    if !matches!(kind.as_str(), "deployment" | "deployments" | "deploy") {
        return Err(format!(
            "error: the simulated cluster annotates deployments only, not {kind:?}"
        ));
    }
    let name = parsed
        .positional
        .get(2)
        .cloned()
        .ok_or("error: you must specify the resource name")?;
    let overwrite = parsed.has(&["--overwrite"]);
    dir.update(|state| {
        let deployment = state
            .deployments
            .iter_mut()
            .find(|d| d.namespace == namespace && d.name == name && d.kind == "Deployment")
            .ok_or_else(|| {
                format!("Error from server (NotFound): deployments.apps \"{name}\" not found")
            })?;
        for change in &parsed.positional[3..] {
            if let Some(key) = change.strip_suffix('-') {
                deployment.external_annotations.remove(key);
                continue;
            }
            let (key, value) = change
                .split_once('=')
                .ok_or_else(|| format!("error: invalid annotation spec {change:?}"))?;
            let exists = deployment.annotations.contains_key(key)
                || deployment.external_annotations.contains_key(key);
            if exists && !overwrite {
                return Err(format!(
                    "error: --overwrite is false but found the following declared annotation(s): '{key}' already has a value"
                ));
            }
            deployment
                .external_annotations
                .insert(key.to_string(), value.to_string());
        }
        Ok(())
    })?;
    println!("deployment.apps/{name} annotated");
    Ok(())
}

fn config_command(config: &Config, parsed: &Parsed) -> i32 {
    let current = config.current_context.as_deref().unwrap_or(&config.context);
    match parsed.positional.get(1).map(String::as_str) {
        Some("current-context") if current.is_empty() => fail("error: current-context is not set"),
        Some("current-context") => {
            println!("{current}");
            0
        }
        // `get-contexts NAME -o name`: the name, if the kubeconfig has it.
        Some("get-contexts") => {
            let name = parsed.positional.get(2).cloned().unwrap_or_default();
            if !name.is_empty() && (name == config.context || name == current) {
                println!("{name}");
                0
            } else {
                fail(&format!("error: context {name} not found"))
            }
        }
        other => fail(&format!(
            "error: the simulated cluster does not implement `kubectl config {}`",
            other.unwrap_or("")
        )),
    }
}

fn live_pods<'a>(state: &'a State, namespace: &str) -> impl Iterator<Item = &'a Pod> {
    let namespace = namespace.to_string();
    state
        .pods
        .iter()
        .filter(move |p| !p.deleted && p.namespace == namespace)
}

fn get(
    dir: &Dir,
    config: &Config,
    state: &State,
    parsed: &Parsed,
    namespace: &str,
) -> Result<(), String> {
    let kind = parsed.positional.get(1).cloned().unwrap_or_default();
    let name = parsed.positional.get(2).cloned();
    let selector = parsed.value(&["-l", "--selector"]).unwrap_or_default();
    let matches = |n: &str, labels: &std::collections::BTreeMap<String, String>| {
        name.as_deref().is_none_or(|wanted| wanted == n)
            && cluster::selector_matches(&selector, labels)
    };
    let (resource, items): (&str, Vec<(String, Value)>) = match kind.as_str() {
        "pods" | "pod" | "po" => (
            "pod",
            live_pods(state, namespace)
                .filter(|p| matches(&p.name, &p.labels))
                .map(|p| (p.name.clone(), cluster::pod_json(dir, config, p)))
                .collect(),
        ),
        "replicasets" | "replicaset" | "rs" => (
            "replicaset.apps",
            state
                .replicasets
                .iter()
                .filter(|rs| rs.namespace == namespace && matches(&rs.name, &rs.labels))
                .map(|rs| {
                    (
                        rs.name.clone(),
                        cluster::replicaset_json(state, dir, config, rs),
                    )
                })
                .collect(),
        ),
        "deployments" | "deployment" | "deploy" | "statefulsets" | "statefulset" | "sts" => {
            let wanted = if kind.starts_with("deploy") {
                "Deployment"
            } else {
                "StatefulSet"
            };
            (
                if wanted == "Deployment" {
                    "deployment.apps"
                } else {
                    "statefulset.apps"
                },
                state
                    .deployments
                    .iter()
                    .filter(|d| {
                        d.kind == wanted && d.namespace == namespace && matches(&d.name, &d.labels)
                    })
                    .map(|d| {
                        (
                            d.name.clone(),
                            cluster::deployment_json(state, dir, config, d),
                        )
                    })
                    .collect(),
            )
        }
        "leases" | "lease" | "leases.coordination.k8s.io" => (
            "lease.coordination.k8s.io",
            super::lease::list(state, namespace, name.as_deref()),
        ),
        "events" | "event" | "ev" => {
            let field = parsed.value(&["--field-selector"]).unwrap_or_default();
            let involved = field.strip_prefix("involvedObject.name=").map(String::from);
            (
                "event",
                live_pods(state, namespace)
                    .filter(|p| involved.as_deref().is_none_or(|n| n == p.name))
                    .flat_map(|p| cluster::events_json(dir, config, p))
                    .map(|e| (String::new(), e))
                    .collect(),
            )
        }
        other => {
            return Err(format!(
                "error: the server doesn't have a resource type \"{other}\""
            ))
        }
    };
    if let (Some(wanted), true) = (&name, items.is_empty()) {
        // The plural with its group, as the API server names it:
        // `deployments.apps`, `leases.coordination.k8s.io`, `pods`.
        let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
        let dot = if group.is_empty() { "" } else { "." };
        return Err(format!(
            "Error from server (NotFound): {kind}s{dot}{group} \"{wanted}\" not found"
        ));
    }
    match parsed.value(&["-o", "--output"]).as_deref() {
        Some("json") if name.is_some() => {
            println!("{}", serde_json::to_string_pretty(&items[0].1).unwrap())
        }
        Some("json") => println!(
            "{}",
            serde_json::to_string_pretty(&cluster::list(items.into_iter().map(|i| i.1).collect()))
                .unwrap()
        ),
        Some("name") => items.iter().for_each(|(n, _)| println!("{}/{n}", resource)),
        _ if items.is_empty() => eprintln!("No resources found in {namespace} namespace."),
        _ => print_table(&kind, &items),
    }
    Ok(())
}

fn print_table(kind: &str, items: &[(String, Value)]) {
    if kind.starts_with("po") {
        println!(
            "{:<48} {:<7} {:<24} {:<9}",
            "NAME", "READY", "STATUS", "RESTARTS"
        );
        for (name, pod) in items {
            let ready = pod["status"]["conditions"][1]["status"] == "True";
            println!(
                "{name:<48} {:<7} {:<24} {:<9}",
                if ready { "1/1" } else { "0/1" },
                pod_status_text(pod),
                restarts(pod)
            );
        }
    } else {
        println!("NAME");
        items.iter().for_each(|(n, _)| println!("{n}"));
    }
}

/// The STATUS column kubectl derives (`Init:CrashLoopBackOff`, `Running`…).
fn pod_status_text(pod: &Value) -> String {
    let reason = |statuses: &Value| {
        statuses
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|s| s["state"]["waiting"]["reason"].as_str().map(String::from))
    };
    if let Some(r) = reason(&pod["status"]["initContainerStatuses"]) {
        return format!("Init:{r}");
    }
    reason(&pod["status"]["containerStatuses"])
        .unwrap_or_else(|| pod["status"]["phase"].as_str().unwrap_or("").to_string())
}

fn restarts(pod: &Value) -> u64 {
    pod["status"]["initContainerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["restartCount"].as_u64())
        .sum()
}

/// A pod by name, or `deploy/<name>` as kubectl resolves it: the oldest
/// ready pod of any of the Deployment's ReplicaSets — which, mid-rollout, is
/// a pod of the previous release (the runbook's trap).
fn find_pod<'a>(state: &'a State, namespace: &str, name: &str) -> Result<&'a Pod, String> {
    if let Some(deployment) = name
        .strip_prefix("deploy/")
        .or_else(|| name.strip_prefix("deployment/"))
    {
        let sets: Vec<&str> = state
            .replicasets
            .iter()
            .filter(|rs| rs.namespace == namespace && rs.deployment == deployment)
            .map(|rs| rs.name.as_str())
            .collect();
        let mut pods: Vec<&Pod> = live_pods(state, namespace)
            .filter(|p| sets.contains(&p.replicaset.as_str()))
            .collect();
        pods.sort_by_key(|p| p.created);
        return pods.first().copied().ok_or_else(|| {
            format!("Error from server (NotFound): deployments.apps \"{deployment}\" not found")
        });
    }
    let name = name.trim_start_matches("pod/");
    live_pods(state, namespace)
        .find(|p| p.name == name)
        .ok_or_else(|| format!("Error from server (NotFound): pods \"{name}\" not found"))
}

fn logs(dir: &Dir, state: &State, parsed: &Parsed, namespace: &str) -> Result<(), String> {
    let name = parsed
        .positional
        .get(1)
        .ok_or("error: expected 'logs [-f] [-p] (POD | TYPE/NAME) [-c CONTAINER]'")?;
    let pod = find_pod(state, namespace, name)?;
    let container = parsed
        .value(&["-c", "--container"])
        .or_else(|| pod.spec["containers"][0]["name"].as_str().map(String::from))
        .unwrap_or_default();
    let known = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod.spec[*k].as_array().cloned().unwrap_or_default())
        .any(|c| c["name"] == container.as_str());
    if !known {
        return Err(format!(
            "error: container {container} is not valid for pod {}",
            pod.name
        ));
    }
    let text =
        std::fs::read_to_string(cluster::log_path(dir, &pod.name, &container)).unwrap_or_default();
    let tail = parsed
        .value(&["--tail"])
        .and_then(|t| t.parse::<usize>().ok());
    let lines: Vec<&str> = text.lines().collect();
    let start = tail.map_or(0, |n| lines.len().saturating_sub(n));
    for line in &lines[start..] {
        println!("{line}");
    }
    Ok(())
}

fn exec(config: &Config, dir: &Dir, state: &State, parsed: &Parsed, namespace: &str) -> i32 {
    let Some(name) = parsed.positional.get(1) else {
        return fail(
            "error: expected 'exec (POD | TYPE/NAME) [-c CONTAINER] [flags] -- COMMAND [args...]'",
        );
    };
    let pod = match find_pod(state, namespace, name) {
        Ok(pod) => pod,
        Err(e) => return fail(&e),
    };
    if parsed.command.is_empty() {
        return fail("error: you must specify at least one command for the container");
    };
    if pod.database {
        return database_exec(config, pod, &parsed.command);
    }
    let container_name = parsed.value(&["-c", "--container"]).unwrap_or_default();
    let container = pod.spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| container_name.is_empty() || c["name"] == container_name.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    if !matches!(
        cluster::condition(dir, config, pod),
        PodCondition::Running { .. }
    ) || container.is_null()
    {
        return fail(&format!(
            "error: unable to upgrade connection: container not found (\"{container_name}\")"
        ));
    }
    let container_name = container["name"].as_str().unwrap_or_default();
    let faults = &config.faults;
    if pod.created < faults.alembic_delay_since_ms
        && parsed.command.iter().any(|word| word.ends_with("alembic"))
    {
        std::thread::sleep(std::time::Duration::from_millis(faults.alembic_delay_ms));
    }
    let program = &parsed.command[0];
    if faults.runner_missing && program.ends_with("run-migrations") {
        eprintln!(
            "error: Internal error occurred: error executing command in container: failed to exec in container: \
             OCI runtime exec failed: exec failed: unable to start container process: exec: \"{program}\": \
             stat {program}: no such file or directory: unknown"
        );
        return 126;
    }
    let stdin = parsed.flags.contains_key("-i") || parsed.flags.contains_key("--stdin");
    config
        .runtime
        .exec(&pod.name, container_name, &parsed.command, stdin)
}

/// `pg_dump`/`pg_restore`/`psql` in the database pod: the bed's tools, with
/// the pod-local connection options replaced by the bed's database URL. As
/// the pod's own server would, it knows only the role and the database of
/// its POSTGRES_USER and POSTGRES_DB (the official image's defaults:
/// `postgres`, and the user's name): any other is refused as PostgreSQL
/// refuses it, so a backup of the wrong database fails here too.
fn database_exec(config: &Config, pod: &Pod, command: &[String]) -> i32 {
    let tool = command[0].as_str();
    if !matches!(tool, "pg_dump" | "pg_restore" | "psql" | "pg_isready") {
        return fail(&format!(
            "OCI runtime exec failed: exec: \"{tool}\": not in the simulated database pod"
        ));
    }
    if tool == "pg_dump" && config.faults.pg_dump_fails {
        eprintln!("pg_dump: error: connection to server on socket \"/var/run/postgresql/.s.PGSQL.5432\" failed: FATAL:  the database system is shutting down");
        return 1;
    }
    let mut rest = Vec::new();
    let mut args = command[1..].iter();
    let mut positional = Vec::new();
    // libpq's defaults in the pod: the OS user `postgres`, a database of
    // the role's name.
    let (mut user, mut database) = (None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-U" | "--username" => user = args.next().cloned(),
            "-d" | "--dbname" => database = args.next().cloned(),
            "-h" | "-p" | "--host" | "--port" => {
                args.next();
            }
            a if a.starts_with("--username=") => user = Some(a["--username=".len()..].into()),
            a if a.starts_with("--dbname=") => database = Some(a["--dbname=".len()..].into()),
            a if a.starts_with("--host=") || a.starts_with("--port=") => {}
            a if !a.starts_with('-') => positional.push(a.to_string()),
            a => rest.push(a.to_string()),
        }
    }
    // pg_restore's positional argument is its input file; the others' is the database.
    if tool == "pg_restore" {
        rest.extend(positional);
    } else if database.is_none() {
        database = positional.first().cloned();
    }
    let env_value = |name: &str| {
        pod.spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["env"].as_array().cloned().unwrap_or_default())
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str().map(String::from))
    };
    let pod_user = env_value("POSTGRES_USER").unwrap_or_else(|| "postgres".into());
    let pod_database = env_value("POSTGRES_DB").unwrap_or_else(|| pod_user.clone());
    let user = user.unwrap_or_else(|| "postgres".into());
    let database = database.unwrap_or_else(|| user.clone());
    let refused = if user != pod_user && user != "postgres" {
        Some(format!("role \"{user}\" does not exist"))
    } else if database != pod_database && database != "postgres" {
        Some(format!("database \"{database}\" does not exist"))
    } else if user == "postgres" && pod_user != "postgres" {
        // The image makes POSTGRES_USER the superuser; `postgres` is no role.
        Some("role \"postgres\" does not exist".to_string())
    } else {
        None
    };
    if let Some(refused) = refused {
        eprintln!(
            "{tool}: error: connection to server on socket \"/var/run/postgresql/.s.PGSQL.5432\" failed: FATAL:  {refused}"
        );
        return if tool == "psql" { 2 } else { 1 };
    }
    let status = Command::new(config.pg_bin.join(tool))
        .arg(format!("--dbname={}", config.database_url))
        .args(rest)
        .stdin(Stdio::inherit())
        .status();
    status
        .map(|s| s.code().unwrap_or(1))
        .unwrap_or_else(|e| fail(&e.to_string()))
}
