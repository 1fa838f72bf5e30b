//! Finding the Alembic project the way `alembic` itself does: `alembic.ini`
//! in the working directory, or the file `ALEMBIC_CONFIG` / `-c` names; its
//! `[alembic]` section's `script_location` (with `%(here)s` expanded) holds
//! `versions/`, unless `version_locations` says otherwise.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlembicProject {
    pub config_file: PathBuf,
    pub script_location: PathBuf,
    /// Where the revision scripts are: `<script_location>/versions` by default.
    pub version_dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IniError(pub String);

impl fmt::Display for IniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IniError {}

/// Reads the project's config: `explicit` (flag or ALEMBIC_CONFIG) or
/// `alembic.ini` in `cwd`. Relative `script_location`s are relative to the
/// working directory, as in Alembic.
pub fn find(explicit: Option<&Path>, cwd: &Path) -> Result<AlembicProject, IniError> {
    let config_file = match explicit {
        Some(path) => cwd.join(path),
        None => cwd.join("alembic.ini"),
    };
    let text = std::fs::read_to_string(&config_file).map_err(|e| {
        IniError(format!(
            "cannot read the Alembic config {}: {e} (run from the directory holding alembic.ini, or set ALEMBIC_CONFIG / --alembic-config)",
            config_file.display()
        ))
    })?;
    parse(&text, &config_file, cwd)
}

/// Pure: the `[alembic]` section of `text`, read as Alembic does.
pub fn parse(text: &str, config_file: &Path, cwd: &Path) -> Result<AlembicProject, IniError> {
    let here = config_file.parent().unwrap_or(Path::new("."));
    let section =
        alembic_section(text).map_err(|e| IniError(format!("{}: {e}", config_file.display())))?;
    let value = |key: &str| -> Result<Option<String>, IniError> {
        match section.iter().find(|(k, _)| k == key) {
            None => Ok(None),
            Some((_, v)) => expand_here(v, here)
                .map(Some)
                .map_err(|e| IniError(format!("{}: {key}: {e}", config_file.display()))),
        }
    };
    let script_location = value("script_location")?.ok_or_else(|| {
        IniError(format!(
            "{} has no script_location in its [alembic] section",
            config_file.display()
        ))
    })?;
    let script_location = cwd.join(script_location);
    let version_dirs = match value("version_locations")? {
        Some(locations) => split_locations(&locations, &value("path_separator")?)
            .into_iter()
            .map(|l| cwd.join(l))
            .collect(),
        None => vec![script_location.join("versions")],
    };
    Ok(AlembicProject {
        config_file: config_file.to_path_buf(),
        script_location,
        version_dirs,
    })
}

/// `key = value` pairs of `[alembic]`, read as Python's configparser (which
/// Alembic uses) reads them: keys are case-insensitive (lowercased), an
/// indented line continues the value above it, whole-line `#`/`;` comments
/// are skipped, and a key given twice is an error.
fn alembic_section(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut in_section = false;
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut continuing = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with(['#', ';']) {
            continue;
        }
        let indented = line.starts_with([' ', '\t']);
        if trimmed.is_empty() {
            continuing = false;
            continue;
        }
        if indented && continuing {
            if let Some((_, value)) = pairs.last_mut() {
                value.push('\n');
                value.push_str(trimmed);
            }
            continue;
        }
        if trimmed.starts_with('[') && trimmed.ends_with(']') {
            in_section = trimmed == "[alembic]";
            continuing = false;
            continue;
        }
        continuing = false;
        if !in_section {
            continue;
        }
        if let Some((key, value)) = trimmed.split_once(['=', ':']) {
            let key = key.trim().to_lowercase();
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(format!("option {key:?} is given twice in [alembic]"));
            }
            pairs.push((key, value.trim().to_string()));
            continuing = true;
        }
    }
    Ok(pairs)
}

fn expand_here(value: &str, here: &Path) -> Result<String, String> {
    let expanded = value
        .replace("%(here)s", &here.display().to_string())
        .replace("%%", "%");
    if expanded.contains("%(") {
        return Err(format!(
            "only %(here)s interpolation is understood, found {value:?}"
        ));
    }
    Ok(expanded)
}

/// Alembic splits version_locations on `path_separator` (os: ':'; or
/// space/comma/semicolon/newline), defaulting to whitespace for old configs.
fn split_locations(locations: &str, separator: &Option<String>) -> Vec<String> {
    let parts: Vec<&str> = match separator.as_deref() {
        Some("os") | Some(":") => locations.split(':').collect(),
        Some("comma") | Some(",") => locations.split(',').collect(),
        Some("semicolon") | Some(";") => locations.split(';').collect(),
        _ => locations
            .split(|c: char| c.is_whitespace() || c == ',')
            .collect(),
    };
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn here_is_the_config_files_directory() {
        let project = parse(
            "[alembic]\nscript_location = %(here)s/alembic\n[loggers]\nkeys = root\n",
            Path::new("/app/alembic.ini"),
            Path::new("/work"),
        )
        .unwrap();
        assert_eq!(project.script_location, Path::new("/app/alembic"));
        assert_eq!(
            project.version_dirs,
            vec![PathBuf::from("/app/alembic/versions")]
        );
    }

    #[test]
    fn keys_are_case_insensitive_and_indented_lines_continue_a_value() {
        let project = parse(
            "[alembic]\nScript_Location = %(here)s/alembic\nVERSION_LOCATIONS =\n    %(here)s/v1\n  # a comment\n    %(here)s/v2\n\n[post_write_hooks]\n",
            Path::new("/app/alembic.ini"),
            Path::new("/work"),
        )
        .unwrap();
        assert_eq!(project.script_location, Path::new("/app/alembic"));
        assert_eq!(
            project.version_dirs,
            vec![PathBuf::from("/app/v1"), PathBuf::from("/app/v2")]
        );
        let twice = parse(
            "[alembic]\nscript_location = a\nSCRIPT_LOCATION = b\n",
            Path::new("/app/alembic.ini"),
            Path::new("/app"),
        );
        assert!(twice.unwrap_err().0.contains("given twice"));
    }

    #[test]
    fn relative_locations_are_relative_to_the_working_directory() {
        let project = parse(
            "[alembic]\nscript_location = migrations\n",
            Path::new("/app/conf/alembic.ini"),
            Path::new("/app"),
        )
        .unwrap();
        assert_eq!(
            project.version_dirs,
            vec![PathBuf::from("/app/migrations/versions")]
        );
    }

    #[test]
    fn version_locations_override_the_default() {
        let project = parse(
            "[alembic]\nscript_location = a\nversion_locations = %(here)s/v1 %(here)s/v2\n",
            Path::new("/app/alembic.ini"),
            Path::new("/app"),
        )
        .unwrap();
        assert_eq!(
            project.version_dirs,
            vec![PathBuf::from("/app/v1"), PathBuf::from("/app/v2")]
        );
    }

    #[test]
    fn precise_errors() {
        let none = parse(
            "[loggers]\nscript_location = x\n",
            Path::new("/a/alembic.ini"),
            Path::new("/a"),
        )
        .unwrap_err();
        assert!(
            none.0
                .contains("no script_location in its [alembic] section"),
            "{none}"
        );
        let odd = parse(
            "[alembic]\nscript_location = %(root)s/x\n",
            Path::new("/a/alembic.ini"),
            Path::new("/a"),
        )
        .unwrap_err();
        assert!(odd.0.contains("only %(here)s"), "{odd}");
        let missing = find(None, Path::new("/nonexistent")).unwrap_err();
        assert!(
            missing.0.contains("/nonexistent/alembic.ini") && missing.0.contains("ALEMBIC_CONFIG"),
            "{missing}"
        );
    }
}
