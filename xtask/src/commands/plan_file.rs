//! Plans that one person writes and another reviews, then applies exactly:
//! `deploy --dry-run --plan-out FILE` writes the plan with the facts it was
//! decided from (its basis); `deploy --plan FILE` gathers the facts again,
//! decides again, and runs only if the basis is the same and the plan it
//! decides is the file's, to the last argv: otherwise it refuses (exit 2,
//! nothing changed), naming what moved.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Environment;
use crate::error::input_error;
use crate::plan::deploy::DeployFacts;
use crate::plan::Plan;

/// What a plan was decided from: if any of it differs, so may the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Basis {
    pub environment: String,
    pub git_sha: Option<String>,
    /// `revision N (status)`, or `not installed`.
    pub release: String,
    pub database: String,
    /// `component repository:tag@digest` per image (`-` when not pushed).
    pub images: Vec<String>,
    /// The chart's and values files' hash.
    pub inputs_hash: Option<String>,
}

impl Basis {
    /// Read from the facts. Pure.
    pub fn of(env: &Environment, facts: &DeployFacts) -> Basis {
        let cluster = facts.cluster.as_ref().ok();
        Basis {
            environment: env.name.clone(),
            git_sha: facts.commit.as_ref().map(|c| c.sha.clone()),
            release: cluster.map_or("unknown".into(), |c| match &c.release {
                Some(r) => format!("revision {} ({})", r.revision, r.status),
                None => "not installed".into(),
            }),
            database: cluster.map_or("unknown".into(), |c| c.database.describe()),
            images: facts
                .images
                .iter()
                .map(|i| {
                    let digest = match &i.registry_digest {
                        Ok(Some(digest)) => digest.clone(),
                        _ => "-".into(),
                    };
                    format!(
                        "{} {}@{digest}",
                        i.component,
                        i.tag.as_deref().unwrap_or("-")
                    )
                })
                .collect(),
            inputs_hash: facts.inputs_hash.as_ref().ok().cloned(),
        }
    }

    /// What differs from `then` to `self` (now), one line each. Pure.
    pub fn changes_since(&self, then: &Basis) -> Vec<String> {
        let mut changes = Vec::new();
        let mut compare = |what: &str, before: String, now: String| {
            if before != now {
                changes.push(format!("{what}: {before} then, {now} now"));
            }
        };
        let show = |o: &Option<String>| o.clone().unwrap_or_else(|| "none".into());
        compare(
            "environment",
            then.environment.clone(),
            self.environment.clone(),
        );
        compare("git commit", show(&then.git_sha), show(&self.git_sha));
        compare("release", then.release.clone(), self.release.clone());
        compare("database", then.database.clone(), self.database.clone());
        compare("images", then.images.join(", "), self.images.join(", "));
        compare(
            "chart and values (inputs hash)",
            show(&then.inputs_hash),
            show(&self.inputs_hash),
        );
        changes
    }
}

/// The file: what was decided and from what.
#[derive(Serialize, Deserialize)]
struct PlanFile {
    schema_version: u32,
    basis: Basis,
    plan: Value,
}

/// Writes `plan` and its basis to `path` (mode 0600: it names the
/// environment's images and database).
pub fn write(path: &Path, plan: &Plan, basis: Basis) -> Result<()> {
    let file = PlanFile {
        schema_version: crate::report::SCHEMA_VERSION,
        basis,
        plan: serde_json::to_value(plan)?,
    };
    let text = serde_json::to_string_pretty(&file)?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing the plan to {}", path.display()))?;
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    Ok(())
}

/// The saved plan, refused unless `plan` (decided now) and `basis` (now)
/// are what the file holds.
pub fn check(path: &Path, plan: &Plan, basis: &Basis) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| input_error(format!("cannot read the plan file {}: {e}", path.display())))?;
    let saved: PlanFile = serde_json::from_str(&text).map_err(|e| {
        input_error(format!(
            "{} is not a plan written by `deploy --dry-run --plan-out`: {e}",
            path.display()
        ))
    })?;
    let changes = basis.changes_since(&saved.basis);
    if !changes.is_empty() {
        return Err(input_error(format!(
            "the plan in {} was decided on facts that changed; nothing was changed:\n  - {}\n  make a new plan (`cargo xtask deploy {} --dry-run --plan-out {}`) and review it",
            path.display(),
            changes.join("\n  - "),
            basis.environment,
            path.display()
        )));
    }
    let now = serde_json::to_value(plan)?;
    if let Some(difference) = first_difference(&saved.plan, &now, "plan") {
        return Err(input_error(format!(
            "the plan decided now differs from the one in {} ({difference}), though its facts are the same \
             (deploy.toml or a flag changed?); nothing was changed: make a new plan and review it",
            path.display()
        )));
    }
    Ok(())
}

/// Where two JSON documents first differ, as a path. Pure.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                first_difference(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &format!("{path}.{k}"),
                )
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(path.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basis() -> Basis {
        Basis {
            environment: "colony-dev".into(),
            git_sha: Some("abc".into()),
            release: "revision 3 (deployed)".into(),
            database: "0002_activity_and_comments".into(),
            images: vec!["backend 1a2b@sha256:1".into()],
            inputs_hash: Some("h1".into()),
        }
    }

    #[test]
    fn a_changed_fact_is_named_then_and_now() {
        assert_eq!(basis().changes_since(&basis()), Vec::<String>::new());
        let mut now = basis();
        now.release = "revision 4 (deployed)".into();
        now.git_sha = Some("def".into());
        assert_eq!(
            now.changes_since(&basis()),
            [
                "git commit: abc then, def now",
                "release: revision 3 (deployed) then, revision 4 (deployed) now"
            ]
        );
    }

    #[test]
    fn the_first_difference_of_two_plans_is_a_path() {
        let a =
            serde_json::json!({"steps": [{"kind": "images"}, {"kind": "backup"}], "reason": "x"});
        let mut b = a.clone();
        assert_eq!(first_difference(&a, &b, "plan"), None);
        b["steps"][1]["kind"] = "verify".into();
        assert_eq!(
            first_difference(&a, &b, "plan").as_deref(),
            Some("plan.steps[1].kind")
        );
    }
}
