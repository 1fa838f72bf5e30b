//! The `helm` command lines the product runs. Pure argv builders, so the plan
//! printed by `--dry-run` is exactly what a deploy runs.

use std::path::Path;

use serde_json::{json, Value};
use xshell::{cmd, Shell};

use crate::config::{Component, Environment};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelmVersion {
    pub major: u32,
    /// As Helm prints it, e.g. `v4.1.4`.
    pub text: String,
}

/// Parses `helm version --template '{{.Version}}'` output.
pub fn parse_version(output: &str) -> Option<HelmVersion> {
    let text = output.trim();
    let major = text.strip_prefix('v')?.split('.').next()?.parse().ok()?;
    Some(HelmVersion {
        major,
        text: text.to_string(),
    })
}

/// The installed Helm's version, or None when `helm` is missing or odd.
pub fn detect_version(sh: &Shell) -> Option<HelmVersion> {
    let template = "{{.Version}}";
    let output = cmd!(sh, "helm version --template {template}")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()?;
    parse_version(&output)
}

/// What the release records about the deploy (shown by `helm get values`
/// and, through the chart, as annotations on the pods).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DeployRecord {
    pub git_sha: String,
    pub alembic_head: String,
    pub backup_file: String,
    /// `inputs_hash` of the chart and values files: the no-op check.
    pub inputs_hash: String,
    /// What the rehearsal measured (`rehearsal::Report::summary`), or empty.
    pub rehearsal: String,
}

impl DeployRecord {
    /// The chart's `deployRecord.<key>` values, each beside its field: the
    /// one list that the deploy writes (`tool_values`) and every reader
    /// reads back (`helm get values`).
    fn fields(&mut self) -> [(&'static str, &mut String); 5] {
        [
            ("gitSha", &mut self.git_sha),
            ("alembicHead", &mut self.alembic_head),
            ("backupFile", &mut self.backup_file),
            ("inputsHash", &mut self.inputs_hash),
            ("rehearsal", &mut self.rehearsal),
        ]
    }

    /// `deployRecord.<key>` and the value, for the values file.
    pub fn values(&self) -> Vec<(String, String)> {
        let mut record = self.clone();
        record
            .fields()
            .into_iter()
            .map(|(key, value)| (format!("deployRecord.{key}"), value.clone()))
            .collect()
    }

    /// Read from a release's values; a key that is absent (a release
    /// installed by hand) or not text reads as empty.
    pub fn from_values(values: &serde_json::Value) -> DeployRecord {
        let mut record = DeployRecord::default();
        for (key, field) in record.fields() {
            *field = values["deployRecord"][key]
                .as_str()
                .unwrap_or_default()
                .to_string();
        }
        record
    }
}

/// One image as the chart receives it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PinnedImage {
    pub component: Component,
    /// `registry/repository`, without tag.
    pub repository: String,
    pub tag: String,
    /// `sha256:…`; the chart prefers it to the tag. None until the image
    /// is in the registry (a plan shows a placeholder; a run never has None).
    pub digest: Option<String>,
}

/// Shown in a plan where a digest will be once the image is pushed.
pub const DIGEST_PLACEHOLDER: &str = "<digest of the pushed image>";

/// Where an argv names the values file `tool_values` are written to when
/// Helm runs (`with_values_file`); what a plan shows.
pub const VALUES_FILE_PLACEHOLDER: &str = "<the values below, as JSON>";

/// The values the deploy gives Helm: the images pinned (repository, tag,
/// digest), the Alembic command deploy.toml names (the one truth: the init
/// container runs what verify and rollback exec), the lock settings
/// deploy.toml sets (numbers, for the chart's schema; absent: the chart's
/// values decide), and the deploy record. Pure.
/// `helm_revision` is the revision the upgrade makes, for the Deployment's
/// `colony.dev/helm-revision` (the rollout watch's sign that it is applied).
pub fn tool_values(
    env: &Environment,
    images: &[PinnedImage],
    record: &DeployRecord,
    helm_revision: u32,
) -> Value {
    let mut values = json!({});
    for image in images {
        let digest = image.digest.as_deref().unwrap_or(DIGEST_PLACEHOLDER);
        values[image.component.as_str()]["image"] = json!({
            "repository": image.repository,
            "tag": image.tag,
            "digest": digest,
        });
    }
    let mut migrations = json!({ "alembicCommand": env.alembic_command.join(" ") });
    if let Some(timeout) = env.migrations.ddl_lock_timeout {
        migrations["ddlLockTimeoutSeconds"] = json!(timeout.as_secs());
    }
    if let Some(retries) = env.migrations.ddl_lock_retries {
        migrations["ddlLockRetries"] = json!(retries);
    }
    merge(&mut values["backend"]["migrations"], migrations);
    let mut deploy_record = json!({});
    for (key, value) in record.values() {
        deploy_record[key.trim_start_matches("deployRecord.")] = json!(value);
    }
    deploy_record["helmRevision"] = json!(helm_revision.to_string());
    values["deployRecord"] = deploy_record;
    values
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (k, v) in from {
                merge(into.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, from) => *slot = from,
    }
}

/// `values` as `key.path: value` lines, for a plan to show. Pure.
pub fn values_lines(values: &Value) -> Vec<String> {
    fn walk(prefix: &str, value: &Value, lines: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&path, inner, lines);
                }
            }
            Value::String(text) if text.is_empty() => lines.push(format!("{prefix}: (empty)")),
            Value::String(text) => lines.push(format!("{prefix}: {text}")),
            other => lines.push(format!("{prefix}: {other}")),
        }
    }
    let mut lines = Vec::new();
    walk("", values, &mut lines);
    lines
}

/// Writes `values` (JSON, which Helm reads as YAML) to a private temporary
/// file and returns it with `argv`'s placeholder replaced by its path; the
/// file lives as long as the returned handle.
pub fn with_values_file(
    argv: &[String],
    values: &Value,
) -> std::io::Result<(tempfile::NamedTempFile, Vec<String>)> {
    let mut file = tempfile::Builder::new()
        .prefix("colony-deploy-values-")
        .suffix(".json")
        .tempfile()?;
    serde_json::to_writer_pretty(&mut file, values)?;
    std::io::Write::flush(&mut file)?;
    let path = file.path().display().to_string();
    let argv = argv
        .iter()
        .map(|arg| {
            if arg == VALUES_FILE_PLACEHOLDER {
                path.clone()
            } else {
                arg.clone()
            }
        })
        .collect();
    Ok((file, argv))
}

/// `helm upgrade --install` with the user's values files, then the tool's
/// (`tool_values`, named by the placeholder until `with_values_file`).
/// Helm 4 waits for nothing by default, so the wait strategy is explicit.
pub fn upgrade_install_args(env: &Environment, helm_major: u32) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "helm".into(),
        "upgrade".into(),
        "--install".into(),
        env.release.clone(),
        chart_path(&env.chart),
        "--namespace".into(),
        env.namespace.clone(),
        "--create-namespace".into(),
        "--kube-context".into(),
        env.kube_context.clone(),
    ];
    for values in &env.values {
        args.push("-f".into());
        args.push(values.path.display().to_string());
    }
    // The tool's own values last, so they win as `--set` would; a file,
    // so no value needs escaping (a comma in `--set-string` starts another).
    args.push("-f".into());
    args.push(VALUES_FILE_PLACEHOLDER.into());
    if helm_major >= 4 {
        args.push("--wait=watcher".into());
    } else {
        args.push("--wait".into());
    }
    args.push("--timeout".into());
    args.push(crate::config::helm_duration(env.helm_timeout));
    args.extend(history_max_args(env));
    args
}

/// `--history-max N` when deploy.toml sets history_max (else Helm's 10).
fn history_max_args(env: &Environment) -> Vec<String> {
    env.history_max
        .map(|n| vec!["--history-max".to_string(), n.to_string()])
        .unwrap_or_default()
}

/// `helm template` with the values of an `upgrade --install` argv: what
/// that upgrade would apply, rendered locally (nothing is contacted).
pub fn template_args(upgrade: &[String]) -> Vec<String> {
    let mut args = vec!["helm".to_string(), "template".to_string()];
    let mut rest = upgrade.iter().skip(3).peekable(); // helm upgrade --install
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--create-namespace" | "--wait" => {}
            a if a.starts_with("--wait=") => {}
            "--timeout" | "--history-max" => {
                rest.next();
            }
            _ => args.push(arg.clone()),
        }
    }
    args
}

/// The running revision's manifest, as Helm applied it.
pub fn get_manifest_args(env: &Environment) -> Vec<String> {
    release_command(env, &["get", "manifest"], &[])
}

/// `helm status` as JSON, to refuse a release stuck in `pending-*`.
pub fn status_args(env: &Environment) -> Vec<String> {
    [
        "helm",
        "status",
        &env.release,
        "--namespace",
        &env.namespace,
        "--kube-context",
        &env.kube_context,
        "-o",
        "json",
    ]
    .map(String::from)
    .to_vec()
}

pub fn history_args(env: &Environment) -> Vec<String> {
    release_command(env, &["history"], &["-o", "json"])
}

pub fn get_values_args(env: &Environment, revision: u32) -> Vec<String> {
    release_command(
        env,
        &["get", "values"],
        &["--revision", &revision.to_string(), "-o", "json"],
    )
}

/// `helm rollback <release> <revision>`, waiting as the upgrade does.
pub fn rollback_args(env: &Environment, revision: u32, helm_major: u32) -> Vec<String> {
    let wait = if helm_major >= 4 {
        "--wait=watcher"
    } else {
        "--wait"
    };
    let mut args = release_command(
        env,
        &["rollback"],
        &[
            &revision.to_string(),
            wait,
            "--timeout",
            &crate::config::helm_duration(env.helm_timeout),
        ],
    );
    args.extend(history_max_args(env));
    args
}

/// `helm <verb…> <release> <extra…> --namespace … --kube-context …`.
fn release_command(env: &Environment, verb: &[&str], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["helm".into()];
    args.extend(verb.iter().map(|s| s.to_string()));
    args.push(env.release.clone());
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend([
        "--namespace".into(),
        env.namespace.clone(),
        "--kube-context".into(),
        env.kube_context.clone(),
    ]);
    args
}

/// Helm treats a bare name as a repository chart; a local chart needs a path.
fn chart_path(chart: &str) -> String {
    if Path::new(chart).is_absolute() || chart.starts_with("./") || chart.starts_with("../") {
        chart.to_string()
    } else {
        format!("./{chart}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_migrations_lock_settings_reach_the_chart_only_when_deploy_toml_sets_them() {
        let mut env = crate::config::tests::environment();
        let migrations = |env: &crate::config::Environment| {
            tool_values(env, &[], &DeployRecord::default(), 1)["backend"]["migrations"].clone()
        };
        assert_eq!(migrations(&env), json!({"alembicCommand": "alembic"}));
        env.migrations.ddl_lock_timeout = Some(std::time::Duration::from_secs(10));
        env.migrations.ddl_lock_retries = Some(2);
        // Numbers, as the chart's schema wants them.
        assert_eq!(
            migrations(&env),
            json!({"alembicCommand": "alembic", "ddlLockTimeoutSeconds": 10, "ddlLockRetries": 2})
        );
    }

    /// What `--set-string` would have split (a comma starts another
    /// assignment, a dot another key) arrives as it was written.
    #[test]
    fn values_with_commas_dots_and_equals_signs_reach_helm_as_written() {
        let mut env = crate::config::tests::environment();
        env.alembic_command = vec!["uv".into(), "run".into(), "--with=a,b.c".into()];
        let record = DeployRecord {
            git_sha: "abc,backend.image.tag=forged".into(),
            backup_file: "/b/x,y=z.dump".into(),
            ..DeployRecord::default()
        };
        let image = PinnedImage {
            component: Component::Backend,
            repository: "reg:5000/colony-backend".into(),
            tag: "abc".into(),
            digest: Some("sha256:00".into()),
        };
        let values = tool_values(&env, &[image], &record, 2);
        assert_eq!(
            values["backend"]["migrations"]["alembicCommand"],
            "uv run --with=a,b.c"
        );
        assert_eq!(
            values["deployRecord"]["gitSha"],
            "abc,backend.image.tag=forged"
        );
        assert_eq!(values["backend"]["image"]["tag"], "abc");
        assert_eq!(values["backend"]["image"]["digest"], "sha256:00");
        assert_eq!(DeployRecord::from_values(&values), record);
        let argv = upgrade_install_args(&env, 4);
        let (file, written) = with_values_file(&argv, &values).unwrap();
        let path = file.path().display().to_string();
        assert_eq!(
            written[written.len() - 5..written.len() - 3],
            ["-f".to_string(), path.clone()]
        );
        let read: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(read, values);
        assert!(values_lines(&values)
            .contains(&"deployRecord.gitSha: abc,backend.image.tag=forged".to_string()));
    }

    #[test]
    fn the_template_renders_the_upgrade_s_values_without_its_cluster_flags() {
        let mut env = crate::config::tests::environment();
        env.history_max = Some(3);
        for major in [3, 4] {
            let upgrade = upgrade_install_args(&env, major);
            let template = template_args(&upgrade);
            assert_eq!(
                template[..4],
                ["helm", "template", "colony", "./helm/colony"]
            );
            let text = template.join(" ");
            assert!(upgrade.join(" ").contains("--history-max 3"));
            for gone in [
                "--history-max",
                "--wait",
                "--timeout",
                "--create-namespace",
                "--install",
                "600s",
            ] {
                assert!(!text.contains(gone), "{gone} in {text}");
            }
            assert!(
                text.contains(&format!("-f {VALUES_FILE_PLACEHOLDER}")),
                "{text}"
            );
            assert!(text.contains("--namespace colony-dev"), "{text}");
        }
    }

    #[test]
    fn the_deploy_record_reads_back_what_was_written() {
        let written = DeployRecord {
            git_sha: "0123abcd".into(),
            alembic_head: "0002_activity_and_comments".into(),
            backup_file: "/backups/colony.dump".into(),
            inputs_hash: "sha256:ab".into(),
            rehearsal: "0002_x 0.12 s; downgrade proven".into(),
        };
        let mut values = serde_json::json!({});
        for (key, value) in written.values() {
            let (table, field) = key.split_once('.').unwrap();
            values[table][field] = value.into();
        }
        assert_eq!(DeployRecord::from_values(&values), written);
        // A release installed by hand has none: every field empty.
        let by_hand = DeployRecord::from_values(&serde_json::json!({"backend": {}}));
        assert_eq!(by_hand, DeployRecord::default());
    }

    #[test]
    fn parses_helm_versions() {
        assert_eq!(parse_version("v4.1.4\n").unwrap().major, 4);
        assert_eq!(parse_version("v3.15.0").unwrap().major, 3);
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn local_charts_are_paths() {
        assert_eq!(chart_path("helm/colony"), "./helm/colony");
        assert_eq!(chart_path("./helm/colony"), "./helm/colony");
        assert_eq!(chart_path("/abs/chart"), "/abs/chart");
    }
}
