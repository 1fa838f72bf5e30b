//! The database's Alembic revision, as a pod of the current release sees
//! it. Read-only: it is a fact that deploy and rollback plan from.

use serde::Deserialize;
use serde::Serialize;

use crate::cluster::database::DatabasePod;
use crate::cluster::{self, kubectl};
use crate::config::Environment;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum DatabaseRevision {
    /// `alembic_version` holds this revision.
    At { revision: String },
    /// No Alembic revision yet. `legacy_tables`: the pre-Alembic tables the
    /// runner found (they will be stamped); None when that is unknown.
    NoRevision { legacy_tables: Option<Vec<String>> },
    /// Nothing to ask, or the question failed; why.
    Unknown { why: String },
}

impl DatabaseRevision {
    pub fn revision(&self) -> Option<&str> {
        match self {
            DatabaseRevision::At { revision } => Some(revision),
            _ => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            DatabaseRevision::At { revision } => revision.clone(),
            DatabaseRevision::NoRevision {
                legacy_tables: Some(tables),
            } if !tables.is_empty() => {
                format!(
                    "no Alembic revision; pre-Alembic tables {}",
                    tables.join(", ")
                )
            }
            DatabaseRevision::NoRevision {
                legacy_tables: Some(_),
            } => "empty (no Alembic revision, no tables)".into(),
            DatabaseRevision::NoRevision {
                legacy_tables: None,
            } => "no Alembic revision".into(),
            DatabaseRevision::Unknown { why } => format!("unknown: {why}"),
        }
    }
}

/// Asks the runner in `pod` (`run-migrations status --json`: no Python, and
/// it sees the legacy tables too); an image without the runner falls back to
/// `alembic current`.
pub fn read(env: &Environment, pod: &str) -> DatabaseRevision {
    read_noting_runner(env, pod).0
}

/// `read`, and whether the pod's image has a runner that answered.
pub fn read_noting_runner(env: &Environment, pod: &str) -> (DatabaseRevision, bool) {
    read_or_else(env, pod, || {
        cluster::run(&kubectl::alembic_current_args(env, pod))
    })
}

/// `read_noting_runner`, with the `alembic current` of the fallback got
/// from `alembic_current` (a read already under way: verify's, started
/// with the facts), asked for only when the runner cannot answer.
pub fn read_or_else(
    env: &Environment,
    pod: &str,
    alembic_current: impl FnOnce() -> anyhow::Result<cluster::Output>,
) -> (DatabaseRevision, bool) {
    if let Some(answer) = ask_runner(env, pod) {
        return (answer, true);
    }
    let answer = match alembic_current() {
        Ok(output) => from_alembic_output(pod, &output),
        Err(e) => DatabaseRevision::Unknown {
            why: format!("{e:#}"),
        },
    };
    (answer, false)
}

/// `read` in a ready backend pod, or Unknown when there is none.
pub fn read_in(env: &Environment, pod: Option<&str>) -> DatabaseRevision {
    match pod {
        Some(pod) => read(env, pod),
        None => no_ready_pod(),
    }
}

/// What the database's revision is without a ready backend pod to ask.
pub fn no_ready_pod() -> DatabaseRevision {
    DatabaseRevision::Unknown {
        why: "no ready backend pod to ask".into(),
    }
}

/// `run-migrations status --json` in `pod`; None when the image has no
/// runner or it could not answer.
fn ask_runner(env: &Environment, pod: &str) -> Option<DatabaseRevision> {
    let output = cluster::run(&kubectl::migrations_status_args(env, pod)).ok()?;
    if output.code != 0 {
        return None;
    }
    let status = serde_json::from_str::<RunnerStatus>(&output.stdout).ok()?;
    Some(from_runner_status(status))
}

/// With no backend pod to ask (a failed deploy, pods still starting): the
/// database itself, through `psql` in the release's database pod.
pub fn read_in_database_pod(env: &Environment, pod: &DatabasePod) -> DatabaseRevision {
    match cluster::run(&pod.revision_args(env)) {
        Ok(output) => from_psql(&pod.name, &output),
        Err(e) => DatabaseRevision::Unknown {
            why: format!("{e:#}"),
        },
    }
}

/// With no backend pod to ask and an external database (`database.mode:
/// external`): the database itself, through the `DATABASE_URL` of this
/// shell (the one the backup dumps), with `psql` here. The password goes
/// to `PGPASSWORD`, never into an argv.
pub fn read_external(url: &str) -> DatabaseRevision {
    let (dbname, password) = split_password(url);
    let argv: Vec<String> = [
        "psql",
        "--no-psqlrc",
        "--no-align",
        "--tuples-only",
        "--quiet",
        &format!("--dbname={dbname}"),
        "--command=SELECT version_num FROM alembic_version",
    ]
    .map(String::from)
    .to_vec();
    let mut env = vec![("PGCONNECT_TIMEOUT".to_string(), "5".to_string())];
    env.extend(password.map(|p| ("PGPASSWORD".to_string(), p)));
    match crate::process::capture_with_env(&argv, &env) {
        Ok(output) => from_psql("the external database (DATABASE_URL)", &output),
        Err(e) => DatabaseRevision::Unknown {
            why: format!("psql for the external database (DATABASE_URL): {e:#}"),
        },
    }
}

/// `postgresql://user:pa%2Fss@host/db` → (`postgresql://user@host/db`,
/// `pa/ss`): what `scripts/backup-db.sh` does, so both connect alike. The
/// password runs to the last `@`. Pure.
pub fn split_password(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let Some((user_info, host_and_rest)) = rest.rsplit_once('@') else {
        return (url.to_string(), None);
    };
    match user_info.split_once(':') {
        Some((user, password)) if !user.contains('/') => {
            let password = percent_encoding::percent_decode_str(password)
                .decode_utf8_lossy()
                .into_owned();
            (format!("{scheme}://{user}@{host_and_rest}"), Some(password))
        }
        _ => (url.to_string(), None),
    }
}

/// `SELECT version_num FROM alembic_version` as psql answered it. Pure.
pub fn from_psql(pod: &str, output: &cluster::Output) -> DatabaseRevision {
    if output.code == 0 {
        let rows: Vec<&str> = output
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        return match rows.as_slice() {
            [] => DatabaseRevision::NoRevision {
                legacy_tables: None,
            },
            [revision] => DatabaseRevision::At {
                revision: revision.to_string(),
            },
            _ => DatabaseRevision::Unknown {
                why: format!(
                    "alembic_version holds {} rows: {}",
                    rows.len(),
                    rows.join(", ")
                ),
            },
        };
    }
    if output
        .stderr
        .contains("relation \"alembic_version\" does not exist")
    {
        return DatabaseRevision::NoRevision {
            legacy_tables: None,
        };
    }
    DatabaseRevision::Unknown {
        why: format!(
            "psql in {pod} exited {}: {}",
            output.code,
            cluster::last_line(&output.stderr)
        ),
    }
}

/// An `alembic current` that ran: its answer, or why it failed. Pure.
fn from_alembic_output(pod: &str, output: &cluster::Output) -> DatabaseRevision {
    if output.code == 0 {
        return from_alembic_current(&output.stdout);
    }
    DatabaseRevision::Unknown {
        why: format!(
            "`alembic current` in {pod} exited {}: {}",
            output.code,
            cluster::last_line(&output.stderr)
        ),
    }
}

/// `run-migrations status --json`, the parts read.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RunnerStatus {
    /// None: there is no `alembic_version` table.
    revisions: Option<Vec<String>>,
    legacy_tables: Vec<String>,
}

/// What the runner's status says of the database. Pure.
pub fn from_runner_status(status: RunnerStatus) -> DatabaseRevision {
    let legacy = status.legacy_tables;
    match status.revisions {
        None => DatabaseRevision::NoRevision {
            legacy_tables: Some(legacy),
        },
        Some(rows) => match rows.as_slice() {
            [] => DatabaseRevision::NoRevision {
                legacy_tables: Some(legacy),
            },
            [one] => DatabaseRevision::At {
                revision: one.clone(),
            },
            several => DatabaseRevision::Unknown {
                why: format!(
                    "alembic_version has {} rows (branches): {}",
                    several.len(),
                    several.join(", ")
                ),
            },
        },
    }
}

/// `alembic current` prints `REV (head)`, `REV`, or nothing. Pure.
pub fn from_alembic_current(stdout: &str) -> DatabaseRevision {
    match cluster::last_line(stdout)
        .trim_end_matches(" (head)")
        .trim()
    {
        "" => DatabaseRevision::NoRevision {
            legacy_tables: None,
        },
        revision => DatabaseRevision::At {
            revision: revision.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_password_leaves_the_url_as_the_backup_script_takes_it_out() {
        assert_eq!(
            split_password("postgresql://app:pa%2Fs@w:rd@db.lan:5432/colony?sslmode=require"),
            (
                "postgresql://app@db.lan:5432/colony?sslmode=require".to_string(),
                Some("pa/s@w:rd".to_string())
            )
        );
        assert_eq!(
            split_password("postgres://app@db/colony"),
            ("postgres://app@db/colony".to_string(), None)
        );
        assert_eq!(
            split_password("postgresql://db/colony"),
            ("postgresql://db/colony".to_string(), None)
        );
    }

    use super::*;
    use serde_json::json;

    fn runner_status(value: serde_json::Value) -> DatabaseRevision {
        from_runner_status(serde_json::from_value(value).unwrap())
    }

    #[test]
    fn the_runner_status_and_alembic_current_both_read() {
        assert_eq!(
            runner_status(json!({"revisions": ["0002_x"], "legacy_tables": ["households"]})),
            DatabaseRevision::At {
                revision: "0002_x".into()
            }
        );
        assert_eq!(
            runner_status(json!({"revisions": null, "legacy_tables": ["households"]})),
            DatabaseRevision::NoRevision {
                legacy_tables: Some(vec!["households".into()])
            }
        );
        assert!(matches!(
            runner_status(json!({"revisions": ["a", "b"]})),
            DatabaseRevision::Unknown { .. }
        ));
        assert_eq!(
            from_alembic_current("INFO ...\n0001_baseline (head)\n").revision(),
            Some("0001_baseline")
        );
        assert_eq!(
            from_alembic_current(""),
            DatabaseRevision::NoRevision {
                legacy_tables: None
            }
        );
    }
}
