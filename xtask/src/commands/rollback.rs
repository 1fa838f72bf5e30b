//! `cargo xtask rollback [<env>] --to <rev> | --steps N`: gather facts
//! (read-only), decide the whole plan (`plan::rollback::decide`), print it,
//! confirm, then run its steps as printed: back up, `alembic downgrade` in a
//! pod of the *current* release (its scripts know how to go down), `helm
//! rollback` to a revision whose code expects the target, record the
//! expected head for verify, verify.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::alembic::{database, versions};
use crate::cli::RollbackArgs;
use crate::cluster::release::{self, ReleaseState};
use crate::cluster::{helm, Backend};
use crate::commands::{hook, locking};
use crate::config::{self, Environment};
use crate::error::input_error;
use crate::execute::{Executor, Outcome};
use crate::plan::rollback::{Decision, Request, RollbackFacts, RollbackSpec, Target};
use crate::plan::{self, StepJson};
use crate::verify;

/// The rollback, phase by phase: check the request, read, decide, show,
/// confirm, execute, report. Every refusal comes before `execute`.
pub fn run(args: RollbackArgs) -> Result<()> {
    let env = config::load(args.env.as_deref(), &args.env_overrides)?;
    let mut event = hook::Event::new("rollback", &env);
    let result = run_in(&env, &args, &mut event);
    if !args.dry_run {
        hook::after(&env, &event, &result);
    }
    result
}

/// The rollback of `env`; `event` gathers what the hook is told.
fn run_in(env: &Environment, args: &RollbackArgs, event: &mut hook::Event) -> Result<()> {
    let request = request(env, args)?;
    if !args.dry_run {
        crate::confirm::require_terminal_or_yes(
            args.yes,
            &format!("a rollback downgrades the database of {}", env.name),
        )?;
    }
    let started = Instant::now();
    let command = format!("rollback {} {}", env.name, request_words(args));
    let early_lock = locking::before_facts(env, &command, args.wait_for_lock, args.dry_run)?;
    let facts = gather_facts(env, early_lock.is_some())?;
    let facts_took = started.elapsed();
    let (plan, spec) = match plan::rollback::decide(env, &facts, &request) {
        // As deploy: a dry run shows the plan with why it cannot run; a
        // run refuses (exit 2) before any change.
        Decision::Refuse(plan) if args.dry_run => return plan.show(true, args.json),
        Decision::Refuse(plan) => return plan.refuse_if_missing(),
        // Shown as a plan without steps (`--json`: that plan), exit 0.
        Decision::NothingToDo(plan) if args.dry_run || args.json => {
            return plan.show(true, args.json)
        }
        Decision::NothingToDo(plan) => {
            event.set("OUTCOME", "nothing to do");
            println!("{}: {}; nothing to do", env.name, plan.reason);
            return Ok(());
        }
        Decision::Rollback(planned) => *planned,
    };
    if args.dry_run {
        return plan.show(true, args.json);
    }
    plan.show_before_running(args.json, args.yes)?;
    confirm(env, &spec, args.yes)?;
    let seen = locking::seen(Some(&facts.current));
    let lock = locking::before_changes(env, &command, early_lock, seen)?;
    crate::process::install_interrupts()?;
    let executor = Executor {
        env,
        // Read again after the downgrade and Helm: nothing from before.
        observed: None,
        daemon: None,
        lock: Some(&lock),
    };
    event.set("ALEMBIC_FROM", &spec.from);
    event.set("ALEMBIC_TO", &spec.target);
    let outcome = executor
        .execute(&plan)
        .map_err(|e| after_interrupt(env, &spec, e))?;
    if let Some(revision) = outcome.helm_revision {
        event.set("HELM_REVISION", &revision.to_string());
    }
    if let Some(backup) = &outcome.backup {
        event.set("BACKUP", &backup.path.display().to_string());
    }
    report(env, &spec, &outcome, facts_took, args.json)
}

/// The request as the lock's holder shows it (`--to 0001_baseline`).
fn request_words(args: &RollbackArgs) -> String {
    match (&args.to, args.steps) {
        (Some(to), _) => format!("--to {to}"),
        (None, Some(steps)) => format!("--steps {steps}"),
        (None, None) => String::new(),
    }
}

/// The request from the flags; a malformed or unknown `--to` revision is
/// refused before any process runs.
fn request(env: &Environment, args: &RollbackArgs) -> Result<Request> {
    let target = match (&args.to, args.steps) {
        (Some(to), _) => Target::To(to.clone()),
        (None, Some(steps)) => Target::Steps(steps),
        (None, None) => unreachable!("clap requires --to or --steps"),
    };
    if let Target::To(to) = &target {
        crate::config::names::check_revision(to).map_err(input_error)?;
        let graph = versions::load_graph(env)
            .map_err(|why| input_error(format!("cannot plan a rollback: {why}")))?;
        plan::rollback::check_known(&graph, to).map_err(input_error)?;
    }
    Ok(Request {
        target,
        app_revision: args.app_revision,
    })
}

/// `rollback --json`: where the database and the app went, and each step.
#[derive(serde::Serialize)]
struct RollbackJson<'a> {
    environment: &'a str,
    from: &'a str,
    target: &'a str,
    app_revision: u32,
    helm_revision: u32,
    backup: Option<String>,
    verified: bool,
    steps: Vec<StepJson>,
}

/// What was done (text, or JSON with `--json`); a failed verify fails the
/// rollback. Verify's checks go where the user reads (stderr with `--json`).
fn report(
    env: &Environment,
    spec: &RollbackSpec,
    outcome: &Outcome,
    facts_took: Duration,
    json: bool,
) -> Result<()> {
    let backup = outcome
        .backup
        .as_ref()
        .map(|b| b.path.display().to_string());
    let checks = outcome
        .verify
        .as_ref()
        .map(|(facts, checks)| format!("\n{}", verify::render(env, facts, checks)))
        .unwrap_or_default();
    if json {
        eprint!("{checks}");
        crate::report::print_json(&RollbackJson {
            environment: &env.name,
            from: &spec.from,
            target: &spec.target,
            app_revision: spec.app_revision,
            helm_revision: spec.new_revision,
            backup: backup.clone(),
            verified: outcome.verified(),
            steps: outcome.steps_json(),
        })?;
    } else {
        print!("{checks}");
        println!(
            "\nRolled back {}: database {} -> {} (backup {}); app at Helm revision {} (rollback to {})\n",
            env.name,
            spec.from,
            spec.target,
            backup.as_deref().unwrap_or("-"),
            spec.new_revision,
            spec.app_revision
        );
        print!("{}", outcome.render_steps(facts_took));
    }
    if !outcome.verified() {
        bail!(
            "the rollback finished but verify failed against {}: see the checks above",
            spec.target
        );
    }
    Ok(())
}

/// An error after an interrupt becomes the interrupt (exit 130/143), with
/// the release's state and the command that continues: the rollback decides
/// again from the database and the release, so it picks up where it stopped.
fn after_interrupt(env: &Environment, spec: &RollbackSpec, error: anyhow::Error) -> anyhow::Error {
    let Some(interrupt) = crate::process::interrupted() else {
        return error;
    };
    let state = release::describe_state(env);
    let stopped = crate::process::Stopped::new(interrupt, &error, |during| {
        format!(
            "the rollback was {interrupt} ({during}); the running step's processes were stopped with SIGTERM. \
             Now: {state}. Next: `cargo xtask rollback {} --to {} --app-revision {} --yes` continues from the \
             database's and the release's state (`--dry-run` shows what is left)",
            env.name, spec.target, spec.app_revision
        )
    });
    stopped.into()
}

/// Destructive: ask on a terminal, else require `--yes`.
fn confirm(env: &Environment, spec: &RollbackSpec, yes: bool) -> Result<()> {
    crate::confirm::confirm(
        yes,
        &format!(
            "rollback to {} downgrades the database of {}",
            spec.target, env.name
        ),
        &format!(
            "Downgrade the database of {} to {} (after a backup), then return the app to revision {}?",
            env.name, spec.target, spec.app_revision
        ),
    )
}

/// Reads the release, its history with records, the backend and the
/// database's revision. Changes nothing; refuses what cannot be rolled back,
/// and a rollback while another command holds the lock (unless this one
/// holds it: `holding`).
fn gather_facts(env: &Environment, holding: bool) -> Result<RollbackFacts> {
    release::check_context(env)?;
    if let Some(lease) = crate::cluster::lock::read(env)? {
        let now = std::time::SystemTime::now();
        if lease.blocks(now) && !holding {
            return Err(input_error(crate::cluster::lock::refusal(
                env, &lease, now, None,
            )));
        }
    }
    let current = match release::check_not_pending(env)? {
        ReleaseState::NotInstalled => {
            return Err(input_error(format!(
                "release {} is not installed in {}: nothing to roll back",
                env.release, env.namespace
            )))
        }
        ReleaseState::Installed { .. } => release::current(env)?.context("the release vanished")?,
    };
    let (history, backend, database_pod) = std::thread::scope(|scope| {
        let history = scope.spawn(|| release::history_with_records(env));
        let database_pod = scope.spawn(|| crate::cluster::database::read(env));
        let backend = Backend::read(env);
        (
            history.join().expect("history reader panicked"),
            backend,
            database_pod.join().expect("database pod reader panicked"),
        )
    });
    let (history, backend, database_pod) = (history?, backend?, database_pod?);
    let pod = backend.ready_pod().map(|p| p.name().to_string());
    let (database, runner) = match pod.as_deref() {
        Some(pod) => database::read_noting_runner(env, pod),
        None => (database::no_ready_pod(), false),
    };
    // What the running app expects, by verify's own rule (its records only:
    // the checkout says nothing about the app).
    let app_expects = verify::expectation(
        None,
        Some(&current),
        backend.deployment.as_ref(),
        Err(String::new()),
    )
    .ok()
    .map(|expected| expected.head);
    Ok(RollbackFacts {
        app_expects,
        graph: versions::load_graph(env),
        current,
        history,
        pod,
        deployment: backend.deployment.as_ref().map(|d| d.metadata.name.clone()),
        database,
        helm_major: helm::detect_version(&xshell::Shell::new()?).map_or(4, |v| v.major),
        runner,
        backup_dir_problem: crate::database::backup::dir_problem(env),
        backup_source: crate::database::backup::Source::choose(
            database_pod.as_ref(),
            std::env::var_os("DATABASE_URL").is_some(),
        ),
    })
}
