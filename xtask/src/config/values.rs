//! What the tool reads of the environment's Helm values files: only what a
//! plan must know before Helm renders them (where the database is) and what
//! the rehearsal must run as the chart will (the migrations' lock settings).

use std::path::{Path, PathBuf};

use super::Environment;

/// `database.mode` as the values files set it (the last file that sets it
/// wins, as Helm merges them); None: the chart's default, `internal`.
/// Returns the file that set `external`. A file that is not YAML says
/// nothing here (Helm refuses it with its own words).
pub fn external_database_file(env: &Environment) -> Option<PathBuf> {
    let mut external = None;
    for file in env.values.iter().filter(|v| v.exists) {
        match database_mode(&file.path).as_deref() {
            Some("external") => external = Some(file.path.clone()),
            Some(_) => external = None,
            None => {}
        }
    }
    external
}

fn database_mode(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    mode_in(&text)
}

/// `database.mode` in one values file's text. Pure.
pub fn mode_in(text: &str) -> Option<String> {
    let values: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).ok()?;
    values
        .get("database")?
        .get("mode")?
        .as_str()
        .map(String::from)
}

/// run-migrations' lock settings as the values files set them
/// (`backend.migrations.ddlLockTimeoutSeconds`, `ddlLockRetries`; the last
/// file that sets each wins). None: the chart's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigrationLock {
    pub timeout_seconds: Option<u64>,
    pub retries: Option<u64>,
    /// `lockTimeoutSeconds`: how long an init container waits for the
    /// migration lock another pod holds.
    pub wait_seconds: Option<u64>,
}

pub fn migration_lock(env: &Environment) -> MigrationLock {
    let texts = values_texts(env);
    migration_lock_in(texts.iter().map(String::as_str))
}

/// The values files' texts, in Helm's order (missing or unreadable ones
/// say nothing here: Helm refuses them with its own words).
fn values_texts(env: &Environment) -> Vec<String> {
    env.values
        .iter()
        .filter(|v| v.exists)
        .filter_map(|v| std::fs::read_to_string(&v.path).ok())
        .collect()
}

/// How long the init container waits for the migration lock: the values
/// files' `backend.migrations.lockTimeoutSeconds`, else the chart's own
/// values.yaml (None: neither says).
pub fn migration_lock_wait(env: &Environment) -> Option<u64> {
    let chart =
        std::fs::read_to_string(env.root.join(&env.chart).join("values.yaml")).unwrap_or_default();
    let files = values_texts(env);
    migration_lock_in(std::iter::once(chart.as_str()).chain(files.iter().map(String::as_str)))
        .wait_seconds
}

/// The same over the files' texts, in Helm's order. Pure.
pub fn migration_lock_in<'a>(texts: impl Iterator<Item = &'a str>) -> MigrationLock {
    let mut lock = MigrationLock::default();
    for text in texts {
        let Ok(values) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) else {
            continue;
        };
        let migrations = values.get("backend").and_then(|b| b.get("migrations"));
        let number = |key: &str| migrations.and_then(|m| m.get(key)).and_then(|v| v.as_u64());
        lock.timeout_seconds = number("ddlLockTimeoutSeconds").or(lock.timeout_seconds);
        lock.retries = number("ddlLockRetries").or(lock.retries);
        lock.wait_seconds = number("lockTimeoutSeconds").or(lock.wait_seconds);
    }
    lock
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_mode_is_read_from_the_values_text() {
        assert_eq!(
            mode_in("database:\n  mode: external\n  existingSecret: db\n").as_deref(),
            Some("external")
        );
        assert_eq!(mode_in("backend:\n  replicas: 2\n"), None);
        assert_eq!(mode_in("not: [yaml"), None);
    }

    #[test]
    fn the_migrations_lock_settings_are_the_last_file_s_that_sets_each() {
        let files = [
            "backend:\n  migrations:\n    ddlLockTimeoutSeconds: 30\n    ddlLockRetries: 1\n",
            "not: [yaml",
            "backend:\n  migrations:\n    ddlLockRetries: 0\n    lockTimeoutSeconds: 900\n",
        ];
        assert_eq!(
            migration_lock_in(files.into_iter()),
            MigrationLock {
                timeout_seconds: Some(30),
                retries: Some(0),
                wait_seconds: Some(900),
            }
        );
        assert_eq!(
            migration_lock_in(["backend:\n  replicas: 2\n"].into_iter()),
            MigrationLock::default()
        );
    }
}
