//! `helm upgrade --install` with our rollout watch beside it.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::cluster::rollout::{self, Assessment};
use crate::cluster::Backend;
use crate::config::Environment;
use crate::process;
use crate::progress;
use crate::verify;

/// Runs `helm upgrade --install` and watches the newest ReplicaSet at the
/// same time: a pod that will not recover stops Helm (SIGTERM, so it can
/// mark the release failed) and the deploy, within seconds. The watch also
/// starts verify's reads as they become possible; returns those reads.
/// `before` is the newest ReplicaSet's revision just before Helm
/// (`newest_replicaset_revision`): only a newer one is the deploy's.
pub(super) async fn upgrade_watching_rollout(
    env: &Environment,
    argv: &[String],
    helm_revision: u32,
    before: u64,
) -> Result<verify::Collector> {
    progress::say(format!(
        "$ {}",
        process::echo_argv(argv, progress::verbose())
    ));
    let running = process::spawn(argv)?;
    let stopper = running.share();
    let helm = tokio::task::spawn_blocking(move || {
        let mut said = Vec::new();
        let code = running.lines(|line| said.push(line.to_string()));
        (code, said.join("\n"))
    });
    tokio::pin!(helm);
    let mut progress = rollout::Progress::new(env);
    let mut collector = verify::Collector::new(env, before);
    // The watch borrows the collector: it ends with this block.
    let (code, said) = {
        let expect = rollout::Expect::NewerThan {
            before,
            helm_revision,
        };
        let watch = rollout::watch(env, expect, env.helm_timeout, |backend| {
            progress.show(backend);
            collector.observe(backend);
        });
        tokio::pin!(watch);
        tokio::select! {
            finished = &mut helm => finished?,
            // A watch that cannot read (an interrupted kubectl) stops watching,
            // never Helm: Helm is waited for, so it can record the outcome.
            assessment = &mut watch => match assessment.unwrap_or(Assessment::Waiting(String::new())) {
                Assessment::Failed { pod, problem } => {
                    tokio::task::spawn_blocking(move || stopper.terminate(HELM_GRACE)).await?;
                    let (_, helm_said) = helm.await?;
                    let explanation = rollout::explain_failure(env, &pod, &problem);
                    bail!(
                        "the rollout failed, so Helm was stopped:\n{explanation}\nhelm said:\n{}\n\
                         The database is untouched unless the failing migration committed. {}",
                        indent(helm_said.trim()),
                        next_steps(env)
                    );
                }
                // Complete (or timed out) before Helm returned: let Helm finish.
                _ => helm.await?,
            },
        }
    };
    let code = code?;
    if code != 0 {
        let lock_wait = crate::config::values::migration_lock_wait(env)
            .map_or(String::new(), |s| {
                format!(" (for up to {s} s, if another pod holds the migration lock)")
            });
        bail!(
            "helm upgrade failed (exit {code}):\n{}\n\
             Helm has stopped waiting, but Kubernetes has not: the new pods may still be starting, \
             and their run-migrations init container may still migrate the database{lock_wait}. {}",
            indent(said.trim()),
            next_steps(env)
        );
    }
    collector.helm_waited();
    // Helm's own word on what it did (NAME, STATUS, REVISION…).
    if !said.trim().is_empty() {
        progress::say(indent(said.trim()));
    }
    Ok(collector)
}

/// The newest backend ReplicaSet's revision, read just before Helm (not
/// taken from the facts: the images may have taken minutes); 0 when none
/// can be read, so that any ReplicaSet counts as new.
pub(super) async fn newest_replicaset_revision(env: &Environment) -> u64 {
    let env = env.clone();
    tokio::task::spawn_blocking(move || Backend::read(&env))
        .await
        .ok()
        .and_then(Result::ok)
        .map_or(0, |b| b.newest_revision())
}

/// What to do after a failed upgrade: look before acting again.
fn next_steps(env: &Environment) -> String {
    format!(
        "`cargo xtask status {0}` shows the release and its pods, `cargo xtask verify {0}` the database's \
         revision once they settle; then deploy again, or `cargo xtask rollback {0}`",
        env.name
    )
}

/// How long Helm gets to record the release as failed after SIGTERM.
const HELM_GRACE: Duration = Duration::from_secs(15);

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
