//! `cargo xtask lock [<env>] [--break]`: who holds the environment's deploy
//! lock and since when; `--break` removes it after a confirmation.
//! Exit status: 0 free, 3 held by a live holder, 4 stale.

use std::time::SystemTime;

use anyhow::Result;

use crate::cli::LockArgs;
use crate::cluster::lock::{self, Holder, Lease};
use crate::config;

#[derive(serde::Serialize)]
struct LockJson<'a> {
    environment: &'a str,
    lease: String,
    state: &'static str,
    holder: Option<&'a Holder>,
    renewed_seconds_ago: Option<u64>,
    stale_after_seconds: Option<u64>,
}

/// The lock's state as the exit status reports it. Pure.
fn state(lease: Option<&Lease>, now: SystemTime) -> (&'static str, i32) {
    match lease {
        None => ("free", 0),
        Some(l) if l.is_stale(now) => ("stale", 4),
        Some(_) => ("held", 3),
    }
}

pub fn run(args: LockArgs) -> Result<()> {
    let env = config::load(args.env.as_deref(), &args.env_overrides)?;
    crate::cluster::release::check_context(&env)?;
    let lease = lock::read(&env)?;
    let now = SystemTime::now();
    if args.break_it {
        return break_it(&env, lease.as_ref(), args.yes, now);
    }
    let (state, code) = state(lease.as_ref(), now);
    if args.json {
        crate::report::print_json(&LockJson {
            environment: &env.name,
            lease: lock::name(&env),
            state,
            holder: lease.as_ref().map(|l| &l.holder),
            renewed_seconds_ago: lease
                .as_ref()
                .map(|l| now.duration_since(l.renewed).unwrap_or_default().as_secs()),
            stale_after_seconds: lease.as_ref().map(|l| l.duration.as_secs()),
        })?;
    } else {
        match &lease {
            None => println!("{}: free (no lease {})", env.name, lock::name(&env)),
            Some(l) => println!("{}: {state}: {}", env.name, l.describe(now)),
        }
        if state == "stale" {
            println!(
                "  the next deploy or rollback takes it over; `cargo xtask lock {} --break` removes it now",
                env.name
            );
        }
    }
    match code {
        0 => Ok(()),
        code => Err(crate::error::Status {
            code,
            message: format!("the deploy lock of {} is {state}", env.name),
        }
        .into()),
    }
}

/// Removes the lock whoever holds it: a live holder keeps running without
/// it, so the question names it.
fn break_it(
    env: &config::Environment,
    lease: Option<&Lease>,
    yes: bool,
    now: SystemTime,
) -> Result<()> {
    let Some(lease) = lease else {
        println!("{}: free; nothing to break", env.name);
        return Ok(());
    };
    let warning = if lease.is_stale(now) {
        String::new()
    } else {
        " — it is still renewed: that command is running, and another may start beside it"
            .to_string()
    };
    crate::confirm::confirm(
        yes,
        &format!("breaking the deploy lock of {}", env.name),
        &format!(
            "Break the lock of {} held by {}{warning}?",
            env.name,
            lease.describe(now)
        ),
    )?;
    match lock::break_lock(env)? {
        Some(removed) => println!(
            "{}: lock broken (was {})",
            env.name,
            removed.describe(SystemTime::now())
        ),
        None => println!("{}: already free", env.name),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_held_and_stale_have_their_exit_statuses() {
        let env = crate::config::tests::environment();
        let renewed = SystemTime::now();
        let holder = Holder::this_process("deploy colony-dev", None);
        let mut object = lock::manifest(
            &env,
            &holder,
            std::time::Duration::from_secs(30),
            renewed,
            None,
        );
        object["metadata"]["resourceVersion"] = serde_json::json!("1");
        let lease = Lease::from_json(&object).unwrap();
        assert_eq!(state(None, renewed), ("free", 0));
        assert_eq!(state(Some(&lease), renewed), ("held", 3));
        let later = renewed + std::time::Duration::from_secs(31);
        assert_eq!(state(Some(&lease), later), ("stale", 4));
    }
}
