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
use crate::cluster::rollout::{self, Assessment};
use crate::cluster::{self, helm, Backend};
use crate::config::{self, Environment};
use crate::database::backup;
use crate::error::input_error;
use crate::plan::rollback::{Decision, Request, RollbackFacts, RollbackSpec, Target};
use crate::plan::{self, Item, Plan, StepJson, StepKind};
use crate::verify;

/// The rollback, phase by phase: check the request, read, decide, show,
/// confirm, execute, report. Every refusal comes before `execute`.
pub fn run(args: RollbackArgs) -> Result<()> {
    let env = config::load(args.env.as_deref(), &args.env_overrides)?;
    let request = request(&env, &args)?;
    if !args.dry_run {
        crate::confirm::require_terminal_or_yes(
            args.yes,
            &format!("a rollback downgrades the database of {}", env.name),
        )?;
    }
    let facts = gather_facts(&env)?;
    let (plan, spec) = match plan::rollback::decide(&env, &facts, &request) {
        // As deploy: a dry run shows the plan with why it cannot run; a
        // run refuses (exit 2) before any change.
        Decision::Refuse(plan) if args.dry_run => return plan.show(true, args.json),
        Decision::Refuse(plan) => return plan.refuse_if_missing(),
        Decision::NothingToDo(why) => {
            println!("{}: {why}", env.name);
            return Ok(());
        }
        Decision::Rollback(planned) => *planned,
    };
    if args.dry_run {
        return plan.show(true, args.json);
    }
    plan.show(false, args.json)?;
    confirm(&env, &spec, args.yes)?;
    crate::process::install_interrupts()?;
    let executed =
        execute(&env, &plan, &spec, args.json).map_err(|e| after_interrupt(&env, &spec, e))?;
    report(&env, &spec, &executed, args.json)
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

/// What was done (text, or JSON with `--json`); a failed verify fails the rollback.
fn report(env: &Environment, spec: &RollbackSpec, executed: &Executed, json: bool) -> Result<()> {
    let backup = executed
        .backup
        .as_ref()
        .map(|b| b.path.display().to_string());
    if json {
        crate::report::print_json(&RollbackJson {
            environment: &env.name,
            from: &spec.from,
            target: &spec.target,
            app_revision: spec.app_revision,
            helm_revision: spec.new_revision,
            backup: backup.clone(),
            verified: executed.verified,
            steps: executed
                .steps
                .iter()
                .map(|(kind, took)| StepJson {
                    name: kind.name(),
                    seconds: took.as_secs_f64(),
                    note: None,
                })
                .collect(),
        })?;
    } else {
        println!(
            "Rolled back {}: database {} -> {} (backup {}); app at Helm revision {} (rollback to {})",
            env.name,
            spec.from,
            spec.target,
            backup.as_deref().unwrap_or("-"),
            spec.new_revision,
            spec.app_revision
        );
    }
    if !executed.verified {
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
/// database's revision. Changes nothing; refuses what cannot be rolled back.
fn gather_facts(env: &Environment) -> Result<RollbackFacts> {
    release::check_context(env)?;
    let current = match release::check_not_pending(env)? {
        ReleaseState::NotInstalled => {
            return Err(input_error(format!(
                "release {} is not installed in {}: nothing to roll back",
                env.release, env.namespace
            )))
        }
        ReleaseState::Installed { .. } => release::current(env)?.context("the release vanished")?,
    };
    let (history, backend) = std::thread::scope(|scope| {
        let history = scope.spawn(|| release::history_with_records(env));
        let backend = Backend::read(env);
        (history.join().expect("history reader panicked"), backend)
    });
    let (history, backend) = (history?, backend?);
    let pod = backend.ready_pod().map(|p| p.name().to_string());
    let database = database::read_in(env, pod.as_deref());
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
    })
}

struct Executed {
    steps: Vec<(StepKind, Duration)>,
    backup: Option<backup::Backup>,
    verified: bool,
}

/// Runs the plan's steps in order, each one's commands as the plan shows them.
/// With `json`, stdout is kept for the summary; the checks go to stderr.
fn execute(env: &Environment, plan: &Plan, spec: &RollbackSpec, json: bool) -> Result<Executed> {
    let mut executed = Executed {
        steps: Vec::new(),
        backup: None,
        verified: false,
    };
    for step in &plan.steps {
        let started = Instant::now();
        eprintln!("rollback: {}", step.title);
        run_step(env, step, spec, json, &mut executed)
            .with_context(|| format!("during step {}", step.kind.name()))?;
        executed.steps.push((step.kind, started.elapsed()));
    }
    Ok(executed)
}

/// One step of the plan, by its kind.
fn run_step(
    env: &Environment,
    step: &plan::Step,
    spec: &RollbackSpec,
    json: bool,
    executed: &mut Executed,
) -> Result<()> {
    match step.kind {
        StepKind::Backup => {
            let backup = backup::take(env).context("the backup failed; nothing was changed")?;
            eprintln!("rollback: backup {}", backup.path.display());
            executed.backup = Some(backup);
        }
        StepKind::Downgrade => downgrade(step, spec, executed)?,
        StepKind::HelmRollback => roll_app_back(env, step, spec)?,
        StepKind::RecordHead => {
            run_items(step, "recording the expected head")?;
        }
        StepKind::Verify => {
            let expectation = verify::Expectation {
                head: spec.target.clone(),
                source: verify::Source::RollbackRecord {
                    revision: spec.new_revision,
                },
            };
            let facts = verify::gather(env, expectation)?;
            let checks = verify::evaluate(env, &facts);
            let table = verify::render(env, &facts, &checks);
            if json {
                eprint!("{table}");
            } else {
                print!("{table}");
            }
            executed.verified = checks.iter().all(|c| c.ok);
        }
        // The deploy's steps: `plan::rollback` never plans them.
        StepKind::Images | StepKind::HelmUpgrade | StepKind::Rollout => {
            bail!("a rollback plan has no {} step", step.kind.name())
        }
    }
    Ok(())
}

/// The plan's argvs of one step, in order; output captured.
fn run_items(step: &plan::Step, what: &str) -> Result<Vec<cluster::Output>> {
    let mut outputs = Vec::new();
    for item in &step.items {
        if let Item::Run { argv, .. } = item {
            eprintln!("$ {}", crate::process::display_argv(argv));
            let output = cluster::run(argv)?;
            if output.code != 0 {
                bail!("{what} failed: {}", output.stderr.trim());
            }
            outputs.push(output);
        }
    }
    Ok(outputs)
}

/// `alembic downgrade` (output shown as it runs), then `alembic current`
/// must report the target.
fn downgrade(step: &plan::Step, spec: &RollbackSpec, done: &Executed) -> Result<()> {
    let backup = done
        .backup
        .as_ref()
        .map_or("-".into(), |b| b.path.display().to_string());
    let argvs: Vec<&Vec<String>> = step
        .items
        .iter()
        .filter_map(|item| match item {
            Item::Run { argv, .. } => Some(argv),
            Item::Note { .. } => None,
        })
        .collect();
    let [downgrade, current] = argvs.as_slice() else {
        bail!("the downgrade step must hold the downgrade and the check");
    };
    eprintln!("$ {}", crate::process::display_argv(downgrade));
    let code = cluster::relay(downgrade)?;
    if code != 0 {
        bail!(
            "`alembic downgrade {}` in {} failed (exit {code}); the database is as the output above left it, and the \
             app was not rolled back. The backup is {backup} (`scripts/restore-db.sh` restores it)",
            spec.target,
            spec.pod
        );
    }
    let output = cluster::run(current)?;
    let now = database::from_alembic_current(&output.stdout);
    if output.code != 0 || now.revision() != Some(spec.target.as_str()) {
        bail!(
            "after `alembic downgrade {}` the database reports {:?} ({}); the app was not rolled back; backup {backup}",
            spec.target,
            cluster::last_line(&output.stdout),
            output.stderr.trim()
        );
    }
    Ok(())
}

/// `helm rollback` as planned, then wait until the returned revision's pods
/// are ready.
fn roll_app_back(env: &Environment, step: &plan::Step, spec: &RollbackSpec) -> Result<()> {
    run_items(step, "helm rollback").with_context(|| {
        format!(
            "the database is at {} but the app was not rolled back: retry with `helm rollback {} {} --namespace {} --kube-context {}`",
            spec.target, env.release, spec.app_revision, env.namespace, env.kube_context
        )
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let timeout = env.helm_timeout;
    let mut progress = rollout::Progress::new(env);
    match runtime.block_on(rollout::watch(env, 0, false, timeout, |b| progress.show(b)))? {
        Assessment::Complete => Ok(()),
        Assessment::Failed { pod, problem } => {
            bail!("{}", rollout::explain_failure(env, &pod, &problem))
        }
        Assessment::Waiting(why) => bail!("the rolled-back release did not become ready: {why}"),
    }
}
