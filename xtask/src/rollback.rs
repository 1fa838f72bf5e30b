//! `cargo xtask rollback [<env>] --to <rev> | --steps N`: refuses bad targets
//! and unconfirmed runs before anything happens. The downgrade itself lands
//! with the deploy/rollback issue.

use std::io::IsTerminal;

use anyhow::Result;
use backend_migrations::revisions::RevisionGraph;

use crate::cli::RollbackArgs;
use crate::error::{input_error, not_built_yet};
use crate::{config, names, versions};

pub fn run(args: RollbackArgs) -> Result<()> {
    let env = config::load(args.env.as_deref(), &args.env_overrides)?;
    let graph = versions::load_graph(&env)
        .map_err(|why| input_error(format!("cannot plan a rollback: {why}")))?;
    let target = match (&args.to, args.steps) {
        (Some(to), _) => check_target(&graph, to)?,
        (None, Some(steps)) => target_by_steps(&graph, steps)?,
        (None, None) => unreachable!("clap requires --to or --steps"),
    };
    if !args.yes && !std::io::stdin().is_terminal() {
        return Err(input_error(format!(
            "rollback to {target} downgrades the database of {}; there is no terminal to confirm on, so pass --yes",
            env.name
        )));
    }
    Err(not_built_yet(
        "rollback",
        &format!("the target {target} is valid; downgrade by hand with `alembic downgrade {target}` in a backend pod of the current release, after a backup."),
    ))
}

fn check_target(graph: &RevisionGraph, to: &str) -> Result<String> {
    names::check_revision(to).map_err(input_error)?;
    if !graph.contains(to) {
        return Err(input_error(format!(
            "unknown revision {to:?}: the versions directory declares {}",
            graph.ids().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(to.to_string())
}

/// N steps below the head, following first parents.
fn target_by_steps(graph: &RevisionGraph, steps: u32) -> Result<String> {
    let mut current = graph
        .head()
        .map_err(|e| input_error(e.to_string()))?
        .to_string();
    for taken in 0..steps {
        let parent = graph.get(&current).and_then(|r| r.down.first()).cloned();
        current = parent.ok_or_else(|| {
            input_error(format!(
                "--steps {steps} goes below the first revision ({current} is the base after {taken} step(s))"
            ))
        })?;
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use backend_migrations::revisions::Revision;

    fn graph() -> RevisionGraph {
        let rev = |id: &str, down: &[&str]| Revision {
            id: id.into(),
            down: down.iter().map(|s| s.to_string()).collect(),
            file: format!("{id}.py").into(),
        };
        RevisionGraph::from_revisions(vec![
            rev("0001_baseline", &[]),
            rev("0002_activity_and_comments", &["0001_baseline"]),
        ])
        .unwrap()
    }

    #[test]
    fn targets() {
        assert_eq!(
            check_target(&graph(), "0001_baseline").unwrap(),
            "0001_baseline"
        );
        let unknown = check_target(&graph(), "0003_nope").unwrap_err().to_string();
        assert!(
            unknown.contains("declares 0001_baseline, 0002_activity_and_comments"),
            "{unknown}"
        );
        assert!(check_target(&graph(), "x; rm -rf /").is_err());
        assert_eq!(target_by_steps(&graph(), 1).unwrap(), "0001_baseline");
        assert!(target_by_steps(&graph(), 2)
            .unwrap_err()
            .to_string()
            .contains("below the first revision"));
    }
}
