//! The environment's Alembic revision graph, read without a cluster.

use backend_migrations::revisions::RevisionGraph;

use crate::config::Environment;

/// The graph of the versions directory the environment names.
pub fn load_graph(env: &Environment) -> Result<RevisionGraph, String> {
    let dir = env.root.join(&env.alembic_versions);
    if !dir.is_dir() {
        return Err(format!(
            "the Alembic versions directory {} does not exist (set alembic_versions in {})",
            env.alembic_versions.display(),
            env.config_file.display()
        ));
    }
    RevisionGraph::load(&dir).map_err(|e| e.to_string())
}

/// The single head that `alembic upgrade head` reaches.
pub fn expected_head(env: &Environment) -> Result<String, String> {
    let graph = load_graph(env)?;
    graph.head().map(str::to_string).map_err(|e| e.to_string())
}
