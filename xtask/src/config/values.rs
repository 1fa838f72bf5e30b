//! What the tool reads of the environment's Helm values files: only what a
//! plan must know before Helm renders them (where the database is).

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
}
