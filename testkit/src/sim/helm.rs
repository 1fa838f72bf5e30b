//! The simulated `helm`: releases and revisions kept in the state, charts
//! rendered by the real `helm template`, outputs shaped like Helm 4's.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::args::{self, Parsed};
use super::cluster::{self, PodCondition};
use super::pod;
use super::state::{helm_timestamp, now_ms, timestamp, Config, Dir, Revision, State};

const VALUE_FLAGS: &[&str] = &[
    "-n",
    "--namespace",
    "--kube-context",
    "-f",
    "--values",
    "--set",
    "--set-string",
    "--set-file",
    "--timeout",
    "-o",
    "--output",
    "--revision",
    "--history-max",
    "--max",
    "--version",
    "--template",
];

/// Runs one `helm` call; returns its exit code.
pub fn main(dir: &Dir, argv: &[String]) -> i32 {
    let config = match dir.config() {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    let parsed = args::parse(argv, VALUE_FLAGS);
    let command = parsed
        .positional
        .first()
        .map(String::as_str)
        .unwrap_or_default();
    // Local commands: the real helm answers.
    if matches!(command, "version" | "template" | "lint") {
        return passthrough(&config, argv);
    }
    if let Err(e) = args::check_with_real_tool(dir, &config.real_helm, "helm", argv) {
        return fail(&e);
    }
    if let Some(context) = parsed.value(&["--kube-context"]) {
        if context != config.context {
            return fail(&format!(
                "Error: Kubernetes cluster unreachable: context \"{context}\" does not exist"
            ));
        }
    }
    let namespace = parsed
        .value(&["-n", "--namespace"])
        .unwrap_or_else(|| "default".into());
    let result = match command {
        "upgrade" => upgrade(dir, &config, &parsed, &namespace),
        "status" => status(dir, &parsed, &namespace),
        "history" => history(dir, &parsed, &namespace),
        "get" => get_values(dir, &parsed, &namespace),
        "rollback" => rollback(dir, &config, &parsed, &namespace),
        other => Err(format!(
            "Error: the simulated cluster does not implement `helm {other}`"
        )),
    };
    match result {
        Ok(()) => 0,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> i32 {
    eprintln!("{message}");
    1
}

fn passthrough(config: &Config, argv: &[String]) -> i32 {
    Command::new(&config.real_helm)
        .args(argv)
        .status()
        .map(|s| s.code().unwrap_or(1))
        .unwrap_or(1)
}

fn key(namespace: &str, release: &str) -> String {
    format!("{namespace}/{release}")
}

fn release_name(parsed: &Parsed) -> Result<String, String> {
    parsed
        .positional
        .get(1)
        .cloned()
        .ok_or_else(|| "Error: release name is required".into())
}

fn upgrade(dir: &Dir, config: &Config, parsed: &Parsed, namespace: &str) -> Result<(), String> {
    // Before the pending revision exists: a signal from here on marks it
    // failed, as Helm's does, never leaving it pending.
    catch_terminate();
    let release = release_name(parsed)?;
    let chart = parsed
        .positional
        .get(2)
        .cloned()
        .ok_or("Error: \"helm upgrade\" requires 2 arguments")?;
    let install = parsed.has(&["--install", "-i"]);
    let existing = dir
        .read()
        .releases
        .get(&key(namespace, &release))
        .cloned()
        .unwrap_or_default();
    let upgrading = !existing.is_empty();
    if !upgrading && !install {
        return Err(format!(
            "Error: UPGRADE FAILED: \"{release}\" has no deployed releases"
        ));
    }
    let failed = |e: &str| {
        format!(
            "Error: {}: {}",
            if upgrading {
                "UPGRADE FAILED"
            } else {
                "INSTALLATION FAILED"
            },
            e.trim_start_matches("Error: ")
        )
    };
    if existing
        .last()
        .is_some_and(|r| r.status.starts_with("pending-"))
    {
        return Err(failed(
            "another operation (install/upgrade/rollback) is in progress",
        ));
    }
    let manifest = render(config, &release, &chart, namespace, parsed).map_err(|e| failed(&e))?;
    let values = user_values(config, dir, parsed).map_err(|e| failed(&e))?;
    let documents = parse_manifest(&manifest)?;
    let (chart_name, app_version) = chart_metadata(&chart);
    let revision = dir.update(|state| -> Result<u32, String> {
        if !state.namespaces.iter().any(|n| n == namespace) {
            if !parsed.has(&["--create-namespace"]) {
                return Err(failed(&format!(
                    "create: failed to create: namespaces \"{namespace}\" not found"
                )));
            }
            state.namespaces.push(namespace.to_string());
        }
        let revisions = state.releases.entry(key(namespace, &release)).or_default();
        // Checked again under the state's lock: two upgrades that both
        // passed the first check must not both go pending (Helm's storage
        // refuses the second revision's create).
        if revisions
            .last()
            .is_some_and(|r| r.status.starts_with("pending-"))
        {
            return Err(failed(
                "another operation (install/upgrade/rollback) is in progress",
            ));
        }
        let number = revisions.last().map_or(1, |r| r.revision + 1);
        prune_history(revisions, history_max(parsed));
        revisions.push(Revision {
            revision: number,
            status: if upgrading {
                "pending-upgrade"
            } else {
                "pending-install"
            }
            .into(),
            chart: chart_name.clone(),
            app_version: app_version.clone(),
            updated: helm_timestamp(),
            description: if upgrading {
                "Preparing upgrade"
            } else {
                "Initial install underway"
            }
            .into(),
            values: values.clone(),
            manifest: manifest.clone(),
        });
        Ok(number)
    })?;
    if !upgrading {
        println!("Release \"{release}\" does not exist. Installing it now.");
    }
    apply_and_wait(
        dir,
        config,
        parsed,
        namespace,
        &release,
        revision,
        &documents,
        if upgrading { "Upgrade" } else { "Install" },
    )?;
    if upgrading {
        println!("Release \"{release}\" has been upgraded. Happy Helming!");
    }
    print_summary(&release, namespace, revision);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn apply_and_wait(
    dir: &Dir,
    config: &Config,
    parsed: &Parsed,
    namespace: &str,
    release: &str,
    revision: u32,
    documents: &[Value],
    action: &str,
) -> Result<(), String> {
    let started = dir.update(|state| cluster::apply(state, namespace, documents));
    for pod in &started {
        pod::start_detached(dir, pod);
    }
    // Helm 4 waits only when asked (its default strategy is hookOnly).
    let wait = parsed.flags.get("--wait").is_some_and(|v| {
        v.iter()
            .any(|w| w.is_empty() || w == "true" || w == "watcher" || w == "legacy")
    });
    let timeout = parsed
        .value(&["--timeout"])
        .and_then(|t| args::duration(&t))
        .unwrap_or(Duration::from_secs(300));
    let outcome = if TERMINATED.load(Ordering::SeqCst) {
        Err("context canceled".to_string())
    } else if wait {
        wait_ready(dir, config, namespace, timeout)
    } else {
        Ok(())
    };
    let (status, description) = match &outcome {
        Ok(()) => ("deployed".to_string(), format!("{action} complete")),
        Err(why) => (
            "failed".to_string(),
            format!("{action} \"{release}\" failed: {why}"),
        ),
    };
    dir.update(|state| finish_revision(state, namespace, release, revision, &status, &description));
    outcome.map_err(|why| {
        format!(
            "Error: {}: {why}",
            if action == "Install" {
                "INSTALLATION FAILED"
            } else {
                "UPGRADE FAILED"
            }
        )
    })
}

fn finish_revision(
    state: &mut State,
    namespace: &str,
    release: &str,
    revision: u32,
    status: &str,
    description: &str,
) {
    let revisions = state.releases.entry(key(namespace, release)).or_default();
    for r in revisions.iter_mut() {
        if r.revision == revision {
            r.status = status.to_string();
            r.description = description.to_string();
            r.updated = helm_timestamp();
        } else if status == "deployed" && r.status == "deployed" {
            r.status = "superseded".into();
        }
    }
}

static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: libc::c_int) {
    TERMINATED.store(true, Ordering::SeqCst);
}

/// Like Helm, a SIGTERM while waiting ends the wait and marks the release
/// failed instead of leaving it pending.
fn catch_terminate() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            on_terminate as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGINT,
            on_terminate as *const () as libc::sighandler_t,
        );
    }
}

/// Polls until every workload's newest pods are ready, or the timeout.
fn wait_ready(
    dir: &Dir,
    config: &Config,
    namespace: &str,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if TERMINATED.load(Ordering::SeqCst) {
            return Err("context canceled".into());
        }
        let not_ready = dir.update(|state| {
            cluster::progress(state, dir, config);
            state
                .pods
                .iter()
                .filter(|p| !p.deleted && p.namespace == namespace)
                .filter(|p| {
                    let newest = state
                        .replicasets
                        .iter()
                        .filter(|rs| rs.namespace == namespace)
                        .filter(|rs| {
                            state.replicasets.iter().any(|r| {
                                r.namespace == namespace
                                    && r.name == p.replicaset
                                    && r.deployment == rs.deployment
                            })
                        })
                        .max_by_key(|rs| rs.revision)
                        .map(|rs| rs.name.clone());
                    newest.as_deref() == Some(p.replicaset.as_str())
                })
                .filter(|p| {
                    cluster::condition(dir, config, p) != PodCondition::Running { ready: true }
                })
                .map(|p| p.name.clone())
                .collect::<Vec<_>>()
        });
        if not_ready.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("resource not ready, name: {}, kind: Pod, status: InProgress: context deadline exceeded", not_ready[0]));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn print_summary(release: &str, namespace: &str, revision: u32) {
    println!("NAME: {release}\nLAST DEPLOYED: {}\nNAMESPACE: {namespace}\nSTATUS: deployed\nREVISION: {revision}\nTEST SUITE: None", timestamp(now_ms()));
}

/// `--history-max` as Helm's upgrade and rollback take it: 10 when not
/// given, 0 for no limit.
fn history_max(parsed: &Parsed) -> usize {
    parsed
        .value(&["--history-max"])
        .and_then(|n| n.parse().ok())
        .unwrap_or(10)
}

/// Before a new revision is stored, Helm deletes the oldest ones so that
/// at most `max` remain with it, never the newest deployed one.
fn prune_history(revisions: &mut Vec<Revision>, max: usize) {
    if max == 0 {
        return;
    }
    while revisions.len() >= max {
        let deployed = revisions.iter().rposition(|r| r.status == "deployed");
        match (0..revisions.len()).find(|i| Some(*i) != deployed) {
            Some(oldest) => {
                revisions.remove(oldest);
            }
            None => return,
        }
    }
}

/// The real `helm template` with the upgrade's chart and values.
fn render(
    config: &Config,
    release: &str,
    chart: &str,
    namespace: &str,
    parsed: &Parsed,
) -> Result<String, String> {
    real_template(config, parsed, &[release, chart, "--namespace", namespace])
}

/// The real `helm template ARGS…` with the call's value flags (`-f`,
/// `--set`, `--set-string`), as Helm would read them: its output, or its
/// error.
fn real_template(config: &Config, parsed: &Parsed, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new(&config.real_helm);
    command.arg("template").args(args);
    for file in parsed.values(&["-f", "--values"]) {
        command.args(["-f", &file]);
    }
    for flag in ["--set", "--set-string"] {
        for value in parsed.values(&[flag]) {
            command.args([flag, &value]);
        }
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn parse_manifest(manifest: &str) -> Result<Vec<Value>, String> {
    serde_yaml_ng::Deserializer::from_str(manifest)
        .map(|doc| {
            serde::Deserialize::deserialize(doc).map_err(|e: serde_yaml_ng::Error| e.to_string())
        })
        .filter(|doc| !matches!(doc, Ok(Value::Null)))
        .collect()
}

/// The user-supplied values (what `helm get values` prints), merged and
/// parsed by the real Helm itself: `-f` files, then `--set` (typed),
/// `--set-string`, with Helm's own escapes and errors. It renders a chart
/// of one template, `{{ toJson .Values }}`, with the upgrade's value flags.
fn user_values(config: &Config, dir: &Dir, parsed: &Parsed) -> Result<Value, String> {
    let chart = dir.root.join("values-echo");
    if !chart.join("templates").is_dir() {
        std::fs::create_dir_all(chart.join("templates")).map_err(|e| e.to_string())?;
        std::fs::write(
            chart.join("Chart.yaml"),
            "apiVersion: v2\nname: values-echo\nversion: 0.1.0\n",
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(
            chart.join("templates/values.yaml"),
            "{{ toJson .Values }}\n",
        )
        .map_err(|e| e.to_string())?;
    }
    let text = real_template(config, parsed, &["values", &chart.display().to_string()])?;
    let json = text
        .lines()
        .find(|line| line.starts_with('{'))
        .ok_or_else(|| format!("values-echo printed no values: {text}"))?;
    serde_json::from_str(json).map_err(|e| e.to_string())
}

fn chart_metadata(chart: &str) -> (String, String) {
    let text =
        std::fs::read_to_string(std::path::Path::new(chart).join("Chart.yaml")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    (
        format!("{}-{}", field("name"), field("version")),
        field("appVersion"),
    )
}

fn revisions(dir: &Dir, namespace: &str, release: &str) -> Result<Vec<Revision>, String> {
    match dir.read().releases.get(&key(namespace, release)) {
        Some(revisions) if !revisions.is_empty() => Ok(revisions.clone()),
        _ => Err("Error: release: not found".into()),
    }
}

fn status(dir: &Dir, parsed: &Parsed, namespace: &str) -> Result<(), String> {
    let release = release_name(parsed)?;
    let revisions = revisions(dir, namespace, &release)?;
    let latest = revisions.last().expect("not empty");
    let first = revisions.first().expect("not empty");
    let body = json!({
        "name": release,
        "info": {"first_deployed": first.updated, "last_deployed": latest.updated, "deleted": "",
                 "description": latest.description, "status": latest.status, "notes": ""},
        "config": latest.values,
        "version": latest.revision,
        "namespace": namespace,
    });
    if parsed.value(&["-o", "--output"]).as_deref() == Some("json") {
        println!("{body}");
    } else {
        println!(
            "NAME: {release}\nLAST DEPLOYED: {}\nNAMESPACE: {namespace}\nSTATUS: {}\nREVISION: {}",
            latest.updated, latest.status, latest.revision
        );
    }
    Ok(())
}

fn history(dir: &Dir, parsed: &Parsed, namespace: &str) -> Result<(), String> {
    let release = release_name(parsed)?;
    let revisions = revisions(dir, namespace, &release)?;
    let rows: Vec<Value> = revisions
        .iter()
        .map(|r| {
            json!({"revision": r.revision, "updated": r.updated, "status": r.status, "chart": r.chart,
                   "app_version": r.app_version, "description": r.description})
        })
        .collect();
    if parsed.value(&["-o", "--output"]).as_deref() == Some("json") {
        println!("{}", Value::Array(rows));
    } else {
        println!("REVISION\tUPDATED\tSTATUS\tCHART\tAPP VERSION\tDESCRIPTION");
        for r in &revisions {
            println!(
                "{}\t{}\t{}\t{}\t{}\t{}",
                r.revision, r.updated, r.status, r.chart, r.app_version, r.description
            );
        }
    }
    Ok(())
}

/// `helm get values` and `helm get manifest` of a revision (the newest by
/// default).
fn get_values(dir: &Dir, parsed: &Parsed, namespace: &str) -> Result<(), String> {
    let what = parsed.positional.get(1).cloned().unwrap_or_default();
    if what != "values" && what != "manifest" {
        return Err(
            "Error: the simulated cluster implements only `helm get values` and `helm get manifest`"
                .into(),
        );
    }
    let release = parsed
        .positional
        .get(2)
        .cloned()
        .ok_or("Error: release name is required")?;
    let revisions = revisions(dir, namespace, &release)?;
    let wanted = parsed
        .value(&["--revision"])
        .and_then(|r| r.parse::<u32>().ok());
    let revision = match wanted {
        Some(n) => revisions
            .iter()
            .find(|r| r.revision == n)
            .ok_or("Error: release: not found")?,
        None => revisions.last().expect("not empty"),
    };
    if what == "manifest" {
        print!("{}", revision.manifest);
        return Ok(());
    }
    if parsed.value(&["-o", "--output"]).as_deref() == Some("json") {
        println!("{}", revision.values);
    } else {
        println!(
            "USER-SUPPLIED VALUES:\n{}",
            serde_yaml_ng::to_string(&revision.values).unwrap_or_default()
        );
    }
    Ok(())
}

fn rollback(dir: &Dir, config: &Config, parsed: &Parsed, namespace: &str) -> Result<(), String> {
    catch_terminate();
    let release = release_name(parsed)?;
    let revisions = revisions(dir, namespace, &release)?;
    let latest = revisions.last().expect("not empty").clone();
    if latest.status.starts_with("pending-") {
        return Err("Error: another operation (install/upgrade/rollback) is in progress".into());
    }
    let target = match parsed.positional.get(2).and_then(|r| r.parse::<u32>().ok()) {
        Some(0) | None => revisions
            .iter()
            .rev()
            .nth(1)
            .cloned()
            .ok_or("Error: no revision to roll back to")?,
        Some(n) => revisions
            .iter()
            .find(|r| r.revision == n)
            .cloned()
            .ok_or(format!("Error: release has no {n} version"))?,
    };
    let documents = parse_manifest(&target.manifest)?;
    let number = latest.revision + 1;
    dir.update(|state| {
        let revisions = state.releases.entry(key(namespace, &release)).or_default();
        if revisions.last().map(|r| (r.revision, r.status.as_str()))
            != Some((latest.revision, latest.status.as_str()))
        {
            return Err(
                "Error: another operation (install/upgrade/rollback) is in progress".to_string(),
            );
        }
        prune_history(revisions, history_max(parsed));
        revisions.push(Revision {
            revision: number,
            status: "pending-rollback".into(),
            updated: helm_timestamp(),
            description: format!("Rollback to {}", target.revision),
            ..target.clone()
        });
        Ok(())
    })?;
    apply_and_wait(
        dir, config, parsed, namespace, &release, number, &documents, "Rollback",
    )
    .map_err(|e| e.replace("UPGRADE FAILED", "ROLLBACK FAILED"))?;
    dir.update(|state| {
        finish_revision(
            state,
            namespace,
            &release,
            number,
            "deployed",
            &format!("Rollback to {}", target.revision),
        )
    });
    println!("Rollback was a success! Happy Helming!");
    Ok(())
}
