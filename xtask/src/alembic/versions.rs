//! The environment's Alembic revision graph, read without a cluster.

use std::path::PathBuf;

use backend_migrations::revisions::{GraphError, RevisionGraph};

use crate::config::Environment;

/// Why the checkout's revision graph cannot be read. Kept in the facts a
/// plan is decided from (hence Clone), and shown as the reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VersionsError {
    #[error("the Alembic versions directory {} does not exist (set alembic_versions in {})", .dir.display(), .config_file.display())]
    NoDirectory { dir: PathBuf, config_file: PathBuf },
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// The graph of the versions directory the environment names.
pub fn load_graph(env: &Environment) -> Result<RevisionGraph, VersionsError> {
    let dir = env.root.join(&env.alembic_versions);
    if !dir.is_dir() {
        return Err(VersionsError::NoDirectory {
            dir: env.alembic_versions.clone(),
            config_file: env.config_file.clone(),
        });
    }
    Ok(RevisionGraph::load(&dir)?)
}

/// The single head that `alembic upgrade head` reaches.
pub fn expected_head(env: &Environment) -> Result<String, VersionsError> {
    with_head(&load_graph(env)).map(|(_, head)| head)
}

/// A graph as read, with its single head (or why there is none).
pub fn with_head(
    graph: &Result<RevisionGraph, VersionsError>,
) -> Result<(&RevisionGraph, String), VersionsError> {
    let graph = graph.as_ref().map_err(Clone::clone)?;
    Ok((graph, graph.head()?.to_string()))
}

/// A revision's message: the first line of its script's docstring, as
/// `alembic revision -m` writes it ("" when the script has none).
pub fn message(graph: &RevisionGraph, id: &str) -> String {
    graph
        .get(id)
        .and_then(|r| std::fs::read_to_string(&r.file).ok())
        .map(|text| docstring_first_line(&text))
        .unwrap_or_default()
}

/// Pure: the first non-empty line of a module's leading docstring.
pub fn docstring_first_line(text: &str) -> String {
    let body = text.trim_start();
    let Some(rest) = body
        .strip_prefix("\"\"\"")
        .or_else(|| body.strip_prefix("'''"))
    else {
        return String::new();
    };
    rest.lines()
        .map(|l| l.trim().trim_end_matches("\"\"\"").trim_end_matches("'''"))
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string()
}

/// The fixture's two revisions, for unit tests of the plans.
#[cfg(test)]
pub fn test_graph() -> RevisionGraph {
    use backend_migrations::revisions::Revision;
    let rev = |id: &str, down: &[&str]| Revision {
        id: id.into(),
        down: down.iter().map(|s| s.to_string()).collect(),
        file: format!("/nonexistent/{id}.py").into(),
    };
    RevisionGraph::from_revisions(vec![
        rev("0001_baseline", &[]),
        rev("0002_activity_and_comments", &["0001_baseline"]),
    ])
    .expect("a valid graph")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_from_the_docstring() {
        assert_eq!(
            docstring_first_line("\"\"\"Activity log and comments.\n\nRevision ID: x\n\"\"\"\n"),
            "Activity log and comments."
        );
        assert_eq!(docstring_first_line("'''One line.'''\n"), "One line.");
        assert_eq!(docstring_first_line("revision = 'x'\n"), "");
    }
}
