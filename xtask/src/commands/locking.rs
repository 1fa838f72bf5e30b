//! The environment's deploy lock around a command that changes it (deploy,
//! rollback). With `--wait-for-lock` it is taken before the facts are read,
//! so the plan is made on what the previous holder left; otherwise right
//! after the confirmation, before the first change, and the release must
//! still be as the facts saw it. Held until the guard drops: at the end, on
//! an error and on Ctrl-C.

use std::time::Duration;

use anyhow::Result;
use xshell::Shell;

use crate::cluster::lock::{self, Guard, Holder};
use crate::cluster::release::{self, Current, ReleaseStatus};
use crate::config::Environment;
use crate::error::input_error;

/// `command` as the holder is shown to others (`deploy colony-dev`).
fn holder(env: &Environment, command: &str) -> Holder {
    let sha = Shell::new()
        .ok()
        .and_then(|sh| crate::config::git::head(&sh, &env.root))
        .map(|c| c.sha);
    Holder::this_process(command, sha)
}

/// With `--wait-for-lock` (and not a dry run): the lock, waited for, before
/// the facts; interrupts are handled from here on so that Ctrl-C releases it.
pub fn before_facts(
    env: &Environment,
    command: &str,
    wait: Option<Duration>,
    dry_run: bool,
) -> Result<Option<Guard>> {
    let (Some(wait), false) = (wait, dry_run) else {
        return Ok(None);
    };
    crate::process::install_interrupts()?;
    let guard = lock::acquire(env, holder(env, command), env.lock_stale_after, Some(wait))?;
    Ok(Some(guard))
}

/// Before the first change: the lock (unless taken before the facts), and
/// the release as the plan saw it (`seen`: revision and status, None when
/// not installed). Another command that got in since is a refusal (exit 2).
pub fn before_changes(
    env: &Environment,
    command: &str,
    early: Option<Guard>,
    seen: Option<(u32, ReleaseStatus)>,
) -> Result<Guard> {
    if let Some(guard) = early {
        return Ok(guard);
    }
    let guard = lock::acquire(env, holder(env, command), env.lock_stale_after, None)?;
    // `helm status` alone: revision and status are what a change moves.
    let now = match release::state(env)? {
        release::ReleaseState::NotInstalled => None,
        release::ReleaseState::Installed { status, revision } => Some((revision, status)),
    };
    if now != seen {
        return Err(input_error(changed_since_plan(env, &seen, &now)));
    }
    Ok(guard)
}

/// The release's revision and status, as `before_changes` compares them.
pub fn seen(current: Option<&Current>) -> Option<(u32, ReleaseStatus)> {
    current.map(|c| (c.revision, c.status.clone()))
}

/// Pure.
fn changed_since_plan(
    env: &Environment,
    seen: &Option<(u32, ReleaseStatus)>,
    now: &Option<(u32, ReleaseStatus)>,
) -> String {
    let show = |state: &Option<(u32, ReleaseStatus)>| {
        state
            .as_ref()
            .map_or("not installed".to_string(), |(r, s)| {
                format!("revision {r} ({s})")
            })
    };
    format!(
        "release {} in {} changed after this plan was made ({} then, {} now): another operation ran meanwhile; \
         nothing was changed. Run the command again to plan on what is there now",
        env.release,
        env.namespace,
        show(seen),
        show(now)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_that_moved_since_the_plan_is_named_then_and_now() {
        let env = crate::config::tests::environment();
        let message = changed_since_plan(
            &env,
            &Some((3, ReleaseStatus::Deployed)),
            &Some((4, ReleaseStatus::PendingUpgrade)),
        );
        assert!(
            message.contains("(revision 3 (deployed) then, revision 4 (pending-upgrade) now)"),
            "{message}"
        );
        assert!(
            changed_since_plan(&env, &None, &Some((1, ReleaseStatus::Deployed)))
                .contains("(not installed then, revision 1 (deployed) now)")
        );
    }
}
