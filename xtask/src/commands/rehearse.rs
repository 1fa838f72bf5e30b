//! `cargo xtask rehearse [<env>]`: the deploy's rehearsal on its own. The
//! same facts as a deploy (read-only), a plan of two steps (a fresh backup,
//! the rehearsal with this commit's backend image from the registry), run
//! by the one executor. Nothing of the release changes.

use std::time::Instant;

use anyhow::Result;
use xshell::Shell;

use crate::cli::RehearseArgs;
use crate::config;
use crate::database::rehearsal::Report;
use crate::execute::{Executor, Outcome};
use crate::plan::{self, StepJson, Verdict};
use crate::process;

pub fn run(args: RehearseArgs) -> Result<()> {
    let started = Instant::now();
    let env = config::load(args.env.as_deref(), &args.env_overrides)?;
    let facts = super::deploy::gather_facts(&Shell::new()?, &env, None);
    let plan = plan::deploy::decide_rehearsal(&env, &facts);
    if args.dry_run {
        return plan.show(true, args.json);
    }
    plan.refuse_if_missing()?;
    if plan.decision == Verdict::NothingToDo {
        if args.json {
            return plan.show(true, true);
        }
        println!("{}: {}; nothing to rehearse", env.name, plan.reason);
        return Ok(());
    }
    let facts_took = started.elapsed();
    plan.show_before_running(args.json, true)?;
    process::install_interrupts()?;
    let executor = Executor {
        lock: None,
        env: &env,
        observed: None,
        daemon: facts.daemon.clone().ok(),
    };
    let outcome = executor.execute(&plan)?;
    report(&env.name, &outcome, facts_took, args.json)
}

/// `rehearse --json`: the backup, what the rehearsal measured, each step.
#[derive(serde::Serialize)]
struct RehearseJson<'a> {
    environment: &'a str,
    backup: Option<String>,
    rehearsal: Option<&'a Report>,
    steps: Vec<StepJson>,
}

fn report(
    environment: &str,
    outcome: &Outcome,
    facts_took: std::time::Duration,
    json: bool,
) -> Result<()> {
    let backup = outcome
        .backup
        .as_ref()
        .map(|b| b.path.display().to_string());
    if json {
        return crate::report::print_json(&RehearseJson {
            environment,
            backup,
            rehearsal: outcome.rehearsal.as_ref(),
            steps: outcome.steps_json(),
        });
    }
    if let Some(rehearsal) = &outcome.rehearsal {
        println!("\nRehearsed {environment}: {}\n", rehearsal.summary());
        for run in rehearsal.upgrade.iter().chain(&rehearsal.downgrade) {
            println!(
                "  {:<9} {} -> {}  {:.2} s",
                format!("{:?}", run.direction).to_lowercase(),
                if run.from.is_empty() {
                    "base"
                } else {
                    &run.from
                },
                run.to,
                run.took.as_secs_f64()
            );
        }
        for lock in &rehearsal.locks {
            println!(
                "  lock      {} ACCESS EXCLUSIVE for {:.2} s",
                lock.table,
                lock.held.as_secs_f64()
            );
        }
        println!();
    }
    print!("{}", outcome.render_steps(facts_took));
    Ok(())
}
