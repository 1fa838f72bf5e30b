//! The release's in-chart database pod: which database and role it serves
//! (its `POSTGRES_DB` and `POSTGRES_USER`, with the official image's
//! defaults), so a backup dumps what the app uses, and the `psql` that reads
//! the Alembic revision from the database itself when no backend pod can.

use anyhow::Result;

use super::kubectl;
use super::objects::{List, Pod};
use crate::config::Environment;

/// A database pod of the release.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DatabasePod {
    pub name: String,
    /// `POSTGRES_USER` (default `postgres`, as the official image).
    pub user: String,
    /// `POSTGRES_DB` (default: the user's name).
    pub database: String,
}

impl DatabasePod {
    /// From a pod's spec, as the official image reads its environment.
    pub fn from_pod(pod: &Pod) -> DatabasePod {
        let user = pod.env_value("POSTGRES_USER").unwrap_or("postgres");
        let database = pod.env_value("POSTGRES_DB").unwrap_or(user);
        DatabasePod {
            name: pod.metadata.name.clone(),
            user: user.to_string(),
            database: database.to_string(),
        }
    }

    /// `psql` in the pod, printing the Alembic revision (nothing when the
    /// table is empty; an error naming `alembic_version` when it is absent).
    pub fn revision_args(&self, env: &Environment) -> Vec<String> {
        kubectl::pod_exec_args(
            env,
            &self.name,
            &[
                "psql",
                "--no-psqlrc",
                "--no-align",
                "--tuples-only",
                &format!("--username={}", self.user),
                &format!("--dbname={}", self.database),
                "--command=SELECT version_num FROM alembic_version",
            ],
        )
    }
}

/// The release's database pod, if it has one (the first, as the backup
/// script picks it).
pub fn read(env: &Environment) -> Result<Option<DatabasePod>> {
    let list: List<Pod> = super::json(&kubectl::database_pods_args(env))?;
    Ok(list.items.first().map(DatabasePod::from_pod))
}
