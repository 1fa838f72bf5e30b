//! What Helm will change in Kubernetes: the manifests the new revision
//! renders (`helm template` with the deploy's own values) against the
//! running revision's (`helm get manifest`), object by object (kind/name),
//! field by field. A Secret's values are never shown, only which keys
//! changed. `diff` is pure; `compare` runs the two helm commands.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// One object that changes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectChange {
    /// `Deployment/colony-backend`.
    pub object: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    /// For `changed`: each field, `path: old -> new` (values of Secrets and
    /// long values left out).
    pub fields: Vec<String>,
}

/// What the plan shows: the changes, or why they could not be computed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ManifestDiff {
    /// Against `revision` (0: nothing installed, every object is added).
    Changes {
        revision: u32,
        objects: Vec<ObjectChange>,
    },
    Unavailable {
        why: String,
    },
    /// `helm template` refused the chart with these values (a values file
    /// that is not YAML, a value the chart's schema rejects): a deploy
    /// would fail in Helm, after the push and the backup, so it is refused.
    Rejected {
        why: String,
    },
}

impl ManifestDiff {
    /// The plan's "Manifests" section.
    pub fn render(&self) -> String {
        let objects = match self {
            ManifestDiff::Unavailable { why } => return format!("not compared: {why}\n"),
            ManifestDiff::Rejected { why } => return format!("not rendered: {why}\n"),
            ManifestDiff::Changes { objects, .. } if objects.is_empty() => {
                return "no manifest changes\n".into()
            }
            ManifestDiff::Changes { objects, .. } => objects,
        };
        let mut out = match self {
            ManifestDiff::Changes { revision: 0, .. } => {
                "every object is new (first install)\n".to_string()
            }
            ManifestDiff::Changes { revision, .. } => {
                format!("what Helm changes in Kubernetes, against revision {revision}\n")
            }
            ManifestDiff::Unavailable { .. } | ManifestDiff::Rejected { .. } => {
                unreachable!("returned above")
            }
        };
        let mut secret_values = false;
        for object in objects {
            secret_values |= object
                .fields
                .iter()
                .any(|f| f.ends_with("(value not shown)"));
            let mark = match object.change {
                "added" => '+',
                "removed" => '-',
                _ => '~',
            };
            out.push_str(&format!("  {mark} {}\n", object.object));
            for field in &object.fields {
                out.push_str(&format!("      {field}\n"));
            }
        }
        if secret_values {
            out.push_str(
                "  (a Secret value the chart generates, e.g. with lookup and randAlphaNum, renders anew in every \
                 local render; Helm keeps the stored one on an upgrade, so it may not change)\n",
            );
        }
        out
    }
}

/// Renders `upgrade` (the deploy's `helm upgrade --install` argv) with
/// `helm template` and compares it with the running revision's manifest.
pub fn compare(
    env: &crate::config::Environment,
    upgrade: &[String],
    values: &serde_json::Value,
    revision: u32,
) -> ManifestDiff {
    let unavailable = |why: String| ManifestDiff::Unavailable { why };
    // A digest not pushed yet renders as a well-formed stand-in (the
    // chart's schema checks the form), shown as the placeholder again.
    let placeholder = super::helm::DIGEST_PLACEHOLDER;
    let values: serde_json::Value =
        serde_json::from_str(&values.to_string().replace(placeholder, STAND_IN_DIGEST))
            .expect("a JSON text with one string replaced by another");
    let (_values_file, argv) =
        match super::helm::with_values_file(&super::helm::template_args(upgrade), &values) {
            Ok(written) => written,
            Err(e) => return unavailable(format!("cannot write the values file: {e}")),
        };
    // The running revision's manifest is read while the chart renders.
    let running = (revision != 0)
        .then(|| crate::process::start_capture(&super::helm::get_manifest_args(env)));
    let rendered = match super::run(&argv) {
        Ok(output) if output.code == 0 => output.stdout.replace(STAND_IN_DIGEST, placeholder),
        Ok(output) => {
            return ManifestDiff::Rejected {
                why: format!(
                    "`helm template` refuses the chart with these values: {}",
                    output
                        .stderr
                        .trim()
                        .lines()
                        .map(super::printable)
                        .collect::<Vec<_>>()
                        .join("\n    ")
                ),
            }
        }
        Err(e) => return unavailable(format!("{e:#}")),
    };
    let running = match running {
        None => String::new(),
        Some(started) => match started.and_then(crate::process::Started::finish) {
            Ok(output) if output.code == 0 => output.stdout,
            Ok(output) => {
                return unavailable(format!(
                    "helm get manifest failed: {}",
                    super::last_line(&output.stderr)
                ))
            }
            Err(e) => return unavailable(format!("{e:#}")),
        },
    };
    match diff(&running, &rendered) {
        Ok(objects) => ManifestDiff::Changes { revision, objects },
        Err(why) => unavailable(why),
    }
}

/// What an image digest not yet known renders as.
const STAND_IN_DIGEST: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// At most this many fields are listed per object (the rest are counted).
const MAX_FIELDS: usize = 12;
/// Longer values are shown as `(N chars)` (an image reference with its
/// digest fits).
const MAX_VALUE: usize = 200;

/// The objects of a multi-document manifest, by `Kind/name`.
pub fn objects(manifest: &str) -> Result<BTreeMap<String, Value>, String> {
    let mut objects = BTreeMap::new();
    for document in serde_yaml_ng::Deserializer::from_str(manifest) {
        let value: Value = serde::Deserialize::deserialize(document)
            .map_err(|e| format!("a rendered manifest is not YAML: {e}"))?;
        let (Some(kind), Some(name)) = (value["kind"].as_str(), value["metadata"]["name"].as_str())
        else {
            continue; // an empty document (a template that rendered nothing)
        };
        objects.insert(format!("{kind}/{name}"), value);
    }
    Ok(objects)
}

/// Every object that is added, removed or changed from `running` to `new`.
pub fn diff(running: &str, new: &str) -> Result<Vec<ObjectChange>, String> {
    let (old, new) = (objects(running)?, objects(new)?);
    let mut changes = Vec::new();
    for (key, value) in &new {
        match old.get(key) {
            None => changes.push(ObjectChange {
                object: key.clone(),
                change: "added",
                fields: Vec::new(),
            }),
            Some(before) if before != value => {
                let secret = key.starts_with("Secret/");
                let mut fields = Vec::new();
                changed_fields(before, value, "", secret, &mut fields);
                if fields.len() > MAX_FIELDS {
                    let more = fields.len() - MAX_FIELDS;
                    fields.truncate(MAX_FIELDS);
                    fields.push(format!("… and {more} more"));
                }
                changes.push(ObjectChange {
                    object: key.clone(),
                    change: "changed",
                    fields,
                });
            }
            Some(_) => {}
        }
    }
    for key in old.keys().filter(|k| !new.contains_key(*k)) {
        changes.push(ObjectChange {
            object: key.clone(),
            change: "removed",
            fields: Vec::new(),
        });
    }
    Ok(changes)
}

/// The leaves that differ, as `path: old -> new`.
fn changed_fields(old: &Value, new: &Value, path: &str, secret: bool, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let (x, y) = (
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                );
                if x != y {
                    changed_fields(x, y, &child, secret, out);
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if x != y {
                    // A container or env entry is named by its `name`.
                    let label = y["name"].as_str().map_or(i.to_string(), |n| n.to_string());
                    changed_fields(x, y, &format!("{path}[{label}]"), secret, out);
                }
            }
        }
        _ => {
            let hidden = secret && (path.starts_with("data.") || path.starts_with("stringData."));
            out.push(if hidden {
                format!("{path} (value not shown)")
            } else {
                format!("{path}: {} -> {}", shown(old), shown(new))
            });
        }
    }
}

fn shown(value: &Value) -> String {
    let text = match value {
        Value::Null => return "(none)".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let text = crate::cluster::printable(&text);
    if text.chars().count() > MAX_VALUE {
        format!("({} chars)", text.chars().count())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: &str = "---\n# Source: colony/templates/backend.yaml\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: colony-backend\nspec:\n  replicas: 2\n  template:\n    spec:\n      containers:\n        - name: backend\n          image: r/b@sha256:aaa\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: colony-db\nstringData:\n  DATABASE_URL: postgresql://u:old@db/x\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: gone\n";

    #[test]
    fn objects_are_compared_field_by_field_and_secrets_keep_their_values() {
        let new = RUNNING
            .replace("sha256:aaa", "sha256:bbb")
            .replace("u:old@", "u:new@")
            .replace(
                "kind: Service\nmetadata:\n  name: gone",
                "kind: ConfigMap\nmetadata:\n  name: fresh",
            );
        let changes = diff(RUNNING, &new).unwrap();
        assert_eq!(
            changes,
            [
                ObjectChange {
                    object: "ConfigMap/fresh".into(),
                    change: "added",
                    fields: vec![]
                },
                ObjectChange {
                    object: "Deployment/colony-backend".into(),
                    change: "changed",
                    fields: vec![
                        "spec.template.spec.containers[backend].image: r/b@sha256:aaa -> r/b@sha256:bbb"
                            .into()
                    ]
                },
                ObjectChange {
                    object: "Secret/colony-db".into(),
                    change: "changed",
                    fields: vec!["stringData.DATABASE_URL (value not shown)".into()]
                },
                ObjectChange {
                    object: "Service/gone".into(),
                    change: "removed",
                    fields: vec![]
                },
            ]
        );
        assert_eq!(diff(RUNNING, RUNNING).unwrap(), []);
        assert!(diff("kind: [", RUNNING).is_err());
    }
}
