//! `cargo xtask rollback [<env>] --to <rev> | --steps N`: back up, run
//! `alembic downgrade` in a pod of the *current* release (its scripts know
//! how to go down), check the revision, then roll the app back to the newest
//! earlier Helm revision whose recorded head is the target — so that the
//! next pod start does not upgrade the database again.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use backend_migrations::revisions::RevisionGraph;

use crate::cli::RollbackArgs;
use crate::cluster::{self, Backend};
use crate::config::Environment;
use crate::error::input_error;
use crate::release::{self, ReleaseState};
use crate::rollout::{self, Assessment};
use crate::{backup, config, helm, kube, names, plan, verify, versions};

pub fn run(args: RollbackArgs) -> Result<()> {
    let env = config::load(args.env.as_deref(), &args.env_overrides)?;
    let graph = versions::load_graph(&env)
        .map_err(|why| input_error(format!("cannot plan a rollback: {why}")))?;
    let target = match (&args.to, args.steps) {
        (Some(to), _) => check_target(&graph, to)?,
        (None, Some(steps)) => target_by_steps(&graph, steps)?,
        (None, None) => unreachable!("clap requires --to or --steps"),
    };
    confirm(&env, &target, args.yes)?;

    release::check_context(&env)?;
    let revision = match release::check_not_pending(&env)? {
        ReleaseState::Installed { revision, .. } => revision,
        ReleaseState::NotInstalled => bail!(
            "release {} is not installed in {}: nothing to roll back",
            env.release,
            env.namespace
        ),
    };
    let pod = running_pod(&env)?;
    let before = alembic_current(&env, &pod)?;
    eprintln!("rollback: {} is at {before}; target {target}", env.name);

    let backup = backup::take(&env)?;
    eprintln!("rollback: backup {}", backup.path.display());

    if before.trim_end_matches(" (head)") != target {
        downgrade(&env, &pod, &target)?;
    }
    let now = alembic_current(&env, &pod)?;
    if now.trim_end_matches(" (head)") != target {
        bail!(
            "after `alembic downgrade {target}` the database reports {now:?}; the backup is {}",
            backup.path.display()
        );
    }

    let Some(app_revision) = revision_with_head(&env, revision, &target)? else {
        bail!(
            "the database is now at {target} (backup {}), but no earlier Helm revision of {} recorded head {target}. \
             The current release's run-migrations would upgrade the database again the next time a backend pod \
             starts. Deploy a build whose Alembic versions end at {target} (`cargo xtask deploy {}` from that commit), \
             or undo with `alembic upgrade head` in a backend pod",
            backup.path.display(),
            env.release,
            env.name
        );
    };
    roll_app_back(&env, app_revision)?;

    let facts = verify::gather(&env, target.clone())?;
    let checks = verify::evaluate(&env, &facts);
    print!("{}", verify::render(&env, &facts, &checks));
    if checks.iter().any(|c| !c.ok) {
        bail!("the rollback finished but verify failed against {target}: see the checks above");
    }
    println!(
        "Rolled back {}: database {} -> {target} (backup {}); release revision {revision} -> rollback to {app_revision}",
        env.name,
        before.trim_end_matches(" (head)"),
        backup.path.display()
    );
    Ok(())
}

/// Destructive: ask on a terminal, else require `--yes`.
fn confirm(env: &Environment, target: &str, yes: bool) -> Result<()> {
    crate::confirm::confirm(
        yes,
        &format!(
            "rollback to {target} downgrades the database of {}",
            env.name
        ),
        &format!(
            "Downgrade the database of {} to {target} (after a backup), then roll the app back?",
            env.name
        ),
    )
}

/// A ready pod of the current release's newest ReplicaSet.
fn running_pod(env: &Environment) -> Result<String> {
    let backend = Backend::read(env)?;
    backend
        .pods
        .iter()
        .find(|p| cluster::pod_ready(p))
        .map(|p| cluster::name(p).to_string())
        .ok_or_else(|| anyhow!("no ready backend pod in the newest ReplicaSet to run Alembic in: `cargo xtask verify {}`", env.name))
}

fn alembic_current(env: &Environment, pod: &str) -> Result<String> {
    let output = cluster::run(&kube::alembic_current_args(env, pod))?;
    if output.code != 0 {
        bail!(
            "`alembic current` in {pod} failed: {}",
            output.stderr.trim()
        );
    }
    Ok(cluster::last_line(&output.stdout).to_string())
}

fn downgrade(env: &Environment, pod: &str, target: &str) -> Result<()> {
    let argv = kube::backend_exec_args(env, pod, &["alembic", "downgrade", target]);
    eprintln!("$ {}", plan::display_argv(&argv));
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("`alembic downgrade {target}` in {pod} failed ({status}); the database is as the output above left it");
    }
    Ok(())
}

/// The newest revision before `current` whose deploy record says `head`.
fn revision_with_head(env: &Environment, current: u32, head: &str) -> Result<Option<u32>> {
    let mut history = release::history(env)?;
    history.sort_by_key(|h| std::cmp::Reverse(h.revision));
    for entry in history.iter().filter(|h| h.revision < current) {
        if release::record(env, entry.revision)?.alembic_head == head {
            return Ok(Some(entry.revision));
        }
    }
    Ok(None)
}

fn roll_app_back(env: &Environment, revision: u32) -> Result<()> {
    let major = helm::detect_version(&xshell::Shell::new()?).map_or(4, |v| v.major);
    let argv = helm::rollback_args(env, revision, major);
    eprintln!("$ {}", plan::display_argv(&argv));
    let output = cluster::run(&argv)?;
    if output.code != 0 {
        bail!("helm rollback failed: {}", output.stderr.trim());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let timeout = config::parse_duration(&env.helm_timeout).unwrap_or(Duration::from_secs(600));
    match runtime.block_on(rollout::watch(env, 0, false, timeout, |_| {}))? {
        Assessment::Complete => Ok(()),
        Assessment::Failed { pod, problem } => {
            bail!("{}", rollout::explain_failure(env, &pod, &problem))
        }
        Assessment::Waiting(why) => bail!("the rolled-back release did not become ready: {why}"),
    }
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
