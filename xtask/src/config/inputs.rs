//! What Helm renders a revision from besides the images: the chart's files,
//! the values files and deploy.toml's settings that become values. Their hash goes into the deploy record, so that a
//! deploy can tell that nothing changed since the running revision.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::config::Environment;

/// `sha256:<hex>` over the chart directory (every file, by relative path,
/// in sorted order) and each values file in the order Helm reads them.
pub fn hash(env: &Environment) -> Result<String> {
    let mut hasher = Sha256::new();
    let chart = env.root.join(&env.chart);
    let files = files_under(&chart)
        .with_context(|| format!("cannot read the chart {}", chart.display()))?;
    for file in files {
        let relative = file.strip_prefix(&chart).unwrap_or(&file);
        add(&mut hasher, "chart", relative, &file)?;
    }
    // By position, not path: the same values moved elsewhere render the same.
    for (position, values) in env.values.iter().enumerate() {
        add(
            &mut hasher,
            "values",
            Path::new(&position.to_string()),
            &values.path,
        )?;
    }
    // deploy.toml's settings that reach the chart as values beside the
    // images and the record (`helm::tool_values`): a change is a deploy.
    let migrations = &env.migrations;
    for (name, value) in [
        ("alembicCommand", Some(env.alembic_command.join(" "))),
        (
            "ddlLockTimeoutSeconds",
            migrations.ddl_lock_timeout.map(|d| d.as_secs().to_string()),
        ),
        (
            "ddlLockRetries",
            migrations.ddl_lock_retries.map(|r| r.to_string()),
        ),
    ] {
        let value = value.unwrap_or_else(|| "<chart's>".into());
        hasher.update(format!("setting\0{name}\0{}\0{value}", value.len()));
    }
    Ok(format!("sha256:{:x}", hasher.finalize()))
}

/// Each entry is framed (kind, name, length) so that moving bytes between
/// files cannot produce the same hash.
fn add(hasher: &mut Sha256, kind: &str, name: &Path, file: &Path) -> Result<()> {
    let content = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    hasher.update(format!("{kind}\0{}\0{}\0", name.display(), content.len()));
    hasher.update(&content);
    Ok(())
}

/// Every file below `dir`, sorted: the order a hash of them needs.
pub fn files_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    collect_files(dir, &mut files)?;
    files.sort();
    Ok(files)
}

fn collect_files(dir: &Path, into: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            collect_files(&entry.path(), into)?;
        } else {
            into.push(entry.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_changes_with_a_template_or_a_values_file_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let chart = dir.path().join("helm/colony/templates");
        std::fs::create_dir_all(&chart).unwrap();
        std::fs::write(chart.join("a.yaml"), "a: 1\n").unwrap();
        let values = dir.path().join("values.yaml");
        std::fs::write(&values, "x: 1\n").unwrap();
        let mut env = crate::config::tests::environment();
        env.root = dir.path().to_path_buf();
        env.chart = "helm/colony".into();
        env.values = vec![crate::config::ValuesFile {
            path: values.clone(),
            exists: true,
        }];
        let first = hash(&env).unwrap();
        assert_eq!(hash(&env).unwrap(), first, "not deterministic");
        std::fs::write(chart.join("a.yaml"), "a: 2\n").unwrap();
        let template_changed = hash(&env).unwrap();
        assert_ne!(template_changed, first);
        std::fs::write(&values, "x: 2\n").unwrap();
        let values_changed = hash(&env).unwrap();
        assert_ne!(values_changed, template_changed);
        // deploy.toml's settings that become the chart's values count too.
        env.alembic_command = vec!["uv".into(), "run".into(), "alembic".into()];
        let command_changed = hash(&env).unwrap();
        assert_ne!(command_changed, values_changed);
        env.migrations.ddl_lock_retries = Some(3);
        assert_ne!(hash(&env).unwrap(), command_changed);
    }
}
