//! `cargo xtask deploy <env>`: gather facts (read-only), decide the plan
//! (`plan::deploy::decide`), print it, then execute its steps one by one as
//! printed. `--dry-run` prints the same plan and stops.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use backend_migrations::revisions::RevisionGraph;
use xshell::Shell;

use crate::alembic::database::{self, DatabaseRevision};
use crate::alembic::preview::{self, Preview};
use crate::alembic::versions::{self, VersionsError};
use crate::cli::DeployArgs;
use crate::cluster::lock::Guard;
use crate::cluster::{self, helm, release, Backend};
use crate::commands::{hook, locking, plan_file, promote, warmup};
use crate::config::{self, git, inputs, Component, Environment};
use crate::database::backup;
use crate::error::{input_error, Fact, FactError};
use crate::execute::{Executor, Outcome};
use crate::images::registry::{self, RegistryClient};
use crate::images::{self, builder, docker, runner};
use crate::plan::deploy::{ClusterFacts, DeployFacts, DeployOptions, ImageFacts};
use crate::plan::{self, Plan, StepJson, StepKind, Verdict};
use crate::process;
use crate::verify;

/// The deploy, phase by phase: read, decide, show, confirm, execute, report.
/// Every refusal comes before `execute`, the first change.
pub fn run(args: DeployArgs) -> Result<()> {
    let env = config::load(Some(&args.env), &args.env_overrides)?;
    let mut event = hook::Event::new("deploy", &env);
    let result = run_in(&env, &args, &mut event);
    if !args.dry_run {
        hook::after(&env, &event, &result);
    }
    result
}

/// The deploy of `env`; `event` gathers what the hook is told.
fn run_in(env: &Environment, args: &DeployArgs, event: &mut hook::Event) -> Result<()> {
    let started = Instant::now();
    let options = options(args)?;
    if !args.dry_run {
        // Local problems first: they need no cluster to refuse.
        env.require_values_files()?;
    }
    let command = format!("deploy {}", env.name);
    let early_lock = locking::before_facts(env, &command, args.wait_for_lock, args.dry_run)?;
    let promotion = match &args.images_from {
        Some(other) => Some(promote::read(env, other, &args.env_overrides)?),
        None => None,
    };
    let mut facts = gather_facts(&Shell::new()?, env, args.migrations_binary.as_deref());
    if let Some(promotion) = &promotion {
        promote::apply(&mut facts, promotion);
        event.set("PROMOTED_FROM", &promotion.from);
    }
    facts.manifests = plan::deploy::upgrade_argv(env, &facts, options).map(|(argv, values)| {
        cluster::manifests::compare(env, &argv, &values, revision_before(&facts))
    });
    tell_hook_the_facts(event, &facts);
    let plan = plan::deploy::decide(env, &facts, options);
    let only_verifies = plan.steps.iter().all(|s| s.kind() == StepKind::Verify);
    if !only_verifies {
        // Its verify reads the new pods: the running ones' reads are not needed.
        if let Some(observed) = facts
            .cluster
            .as_ref()
            .ok()
            .and_then(|c| c.observed.as_ref())
        {
            observed.stop();
        }
    }
    if let Some(file) = &args.plan {
        plan_file::check(file, &plan, &plan_file::Basis::of(env, &facts))?;
    }
    // A dry run shows the plan, its missing items included; a run refuses.
    if args.dry_run {
        if let Some(file) = &args.plan_out {
            plan_file::write(file, &plan, plan_file::Basis::of(env, &facts))?;
            eprintln!(
                "plan written to {}: review it, then `cargo xtask deploy {} --plan {}` applies exactly it",
                file.display(),
                env.name,
                file.display()
            );
        }
        return plan.show(true, args.json);
    }
    plan.refuse_if_missing()?;
    let facts_took = started.elapsed();
    // The plan goes where the user reads; with --json, stdout is the summary only.
    plan.show_before_running(args.json, args.yes)?;
    // While the user reads, the images are built (never pushed).
    let asks = !args.yes && !only_verifies && std::io::stdin().is_terminal();
    let warmup = match asks {
        true => warmup::start(env, &facts, options),
        false => None,
    };
    if let Some(warmup) = &warmup {
        warmup.tell_the_reader();
    }
    confirm_changes(env, &facts, &plan, args.yes)?;
    // A build that failed meanwhile refuses the deploy before the lock.
    if let Some(warmup) = warmup {
        warmup.finish()?;
    }
    // A plan that only verifies changes nothing: it needs no lock.
    let lock = match only_verifies {
        true => early_lock,
        false => {
            let seen = locking::seen(facts.cluster.as_ref().ok().and_then(|c| c.release.as_ref()));
            Some(locking::before_changes(env, &command, early_lock, seen)?)
        }
    };
    let outcome = execute(env, &facts, &plan, lock.as_ref())?;
    let summary = Summary {
        plan: &plan,
        facts_took,
        revision_before: revision_before(&facts),
        outcome: &outcome,
    };
    tell_hook_the_outcome(event, &summary);
    report(env, &summary, args.json)
}

/// What the facts say that the hook is told: the commit, the database's
/// revision and the checkout's head.
fn tell_hook_the_facts(event: &mut hook::Event, facts: &DeployFacts) {
    if let Some(commit) = &facts.commit {
        event.set("GIT_SHA", &commit.sha);
    }
    if let Ok(cluster) = &facts.cluster {
        if let Some(revision) = cluster.database.revision() {
            event.set("ALEMBIC_FROM", revision);
        }
    }
    if let Ok(graph) = &facts.graph {
        if let Ok(head) = graph.head() {
            event.set("ALEMBIC_TO", head);
        }
    }
}

fn tell_hook_the_outcome(event: &mut hook::Event, summary: &Summary) {
    event.set("HELM_REVISION", &summary.helm_revision().to_string());
    if summary.plan.decision == Verdict::NothingToDeploy {
        event.set("OUTCOME", "nothing to deploy");
    }
    if let Some(backup) = &summary.outcome.backup {
        event.set("BACKUP", &backup.path.display().to_string());
    }
    for image in &summary.outcome.images {
        let key = match image.component {
            Component::Backend => "BACKEND_IMAGE",
            Component::Frontend => "FRONTEND_IMAGE",
        };
        let reference = match &image.digest {
            Some(digest) => format!("{}@{digest}", image.repository),
            None => format!("{}:{}", image.repository, image.tag),
        };
        event.set(key, &reference);
    }
}

/// The flags as the planner takes them; `--no-backup` needs `--yes`.
fn options(args: &DeployArgs) -> Result<DeployOptions> {
    if args.no_backup && !args.yes {
        return Err(input_error(
            "--no-backup deploys without a way back if a migration goes wrong; pass --yes with it to confirm",
        ));
    }
    Ok(DeployOptions {
        force: args.force,
        skip_build: args.skip_build,
        no_backup: args.no_backup,
        strict_migrations: args.strict_migrations,
        no_rehearsal: args.no_rehearsal,
        wait_for_lock: args.wait_for_lock.is_some(),
    })
}

/// A plan that changes anything is confirmed; a no-op (verify only) is not.
fn confirm_changes(env: &Environment, facts: &DeployFacts, plan: &Plan, yes: bool) -> Result<()> {
    if plan.steps.iter().all(|s| s.kind() == StepKind::Verify) {
        return Ok(());
    }
    // The findings are far above by now: one line beside the question.
    let findings = facts.migrations.findings();
    if !findings.is_empty() {
        eprintln!(
            "\n! {}: see \"Migrations\" above (--strict-migrations refuses such a deploy)",
            preview::findings_summary(findings)
        );
    }
    confirm(env, facts, yes)
}

/// Runs the plan's steps as printed, with interrupts handled from here on.
fn execute(
    env: &Environment,
    facts: &DeployFacts,
    plan: &Plan,
    lock: Option<&Guard>,
) -> Result<Outcome> {
    let executor = Executor {
        env,
        observed: facts.cluster.as_ref().ok().and_then(|c| c.observed.clone()),
        daemon: facts.daemon.clone().ok(),
        lock,
    };
    process::install_interrupts()?;
    executor
        .execute(plan)
        .map_err(|error| after_interrupt(env, error))
}

/// The release's revision before this deploy (0: not installed).
fn revision_before(facts: &DeployFacts) -> u32 {
    facts
        .cluster
        .as_ref()
        .ok()
        .and_then(|c| c.release.as_ref())
        .map_or(0, |r| r.revision)
}

/// The summary (text, or JSON with `--json`); a failed verify fails the deploy.
fn report(env: &Environment, summary: &Summary, json: bool) -> Result<()> {
    if json {
        crate::report::print_json(&summary.to_json(env))?;
    } else {
        print!("{}", summary.render(env));
    }
    if !summary.outcome.verified() {
        bail!("verify failed: see the checks above");
    }
    Ok(())
}

/// An error after an interrupt becomes the interrupt: which step it
/// stopped, the release's state as Helm now reports it, and the one command
/// that continues (exit 130/143). Other errors pass through.
fn after_interrupt(env: &Environment, error: anyhow::Error) -> anyhow::Error {
    let Some(interrupt) = process::interrupted() else {
        return error;
    };
    let read = release::state(env);
    let pending = matches!(
        &read,
        Ok(release::ReleaseState::Installed { status, .. }) if status.is_pending()
    );
    let state = release::describe(env, &read);
    let next = if pending {
        "the release is still pending: `cargo xtask status` says how to recover".to_string()
    } else {
        format!("deploy again when ready: `cargo xtask deploy {}`", env.name)
    };
    let stopped = process::Stopped::new(interrupt, &error, |during| {
        format!(
            "the deploy was {interrupt} ({during}); the running step's processes were stopped with SIGTERM. \
             Now: {state}. Next: {next}"
        )
    });
    stopped.into()
}

/// Deploying changes a cluster: ask on a terminal, else require `--yes`.
fn confirm(env: &Environment, facts: &DeployFacts, yes: bool) -> Result<()> {
    let sha = facts.commit.as_ref().map_or("?", |c| c.short.as_str());
    crate::confirm::confirm(
        yes,
        &format!(
            "deploying {} changes context {} namespace {}",
            env.name, env.kube_context, env.namespace
        ),
        &format!(
            "Deploy commit {sha} to {} (context {}, namespace {}) as planned above?",
            env.name, env.kube_context, env.namespace
        ),
    )
}

// ------------------------------------------------------------------ facts

/// Reads everything the plan depends on: git, the build contexts, the
/// registry's digests, the chart and values, the release and its record,
/// the database's revision. Reads only; independent reads run at once.
/// A fact that cannot be read is recorded as such (the plan lists it).
pub fn gather_facts(
    sh: &Shell,
    env: &Environment,
    migrations_binary: Option<&std::path::Path>,
) -> DeployFacts {
    // Read once: the plan needs the graph, and so does the SQL preview.
    let graph = versions::load_graph(env);
    std::thread::scope(|scope| {
        // The cluster's reads are the longest chain (an `alembic current`
        // in a pod): they start first; git, Docker and the registry overlap.
        // The SQL preview needs the database's revision: it follows the
        // cluster's reads in the same thread.
        let cluster = scope.spawn(|| {
            let cluster = cluster_facts(env);
            let migrations = migrations_preview(env, &graph, &cluster);
            (cluster, migrations)
        });
        let helm = scope.spawn(|| helm::detect_version(&Shell::new().ok()?));
        let daemon = scope.spawn(docker::registry_view_blocking);
        let commit = git::head(sh, &env.root);
        let tags = image_tags(sh, env, commit.as_ref());
        let daemon = daemon
            .join()
            .expect("docker probe panicked")
            .map_err(FactError::new);
        // Which runner the backend image gets (asks rustc for its targets).
        let daemon_platform = daemon.as_ref().ok().and_then(|d| d.platform.clone());
        let runner = scope.spawn(move || {
            runner::decide(
                env.image(Component::Backend).platform.as_ref(),
                daemon_platform.as_ref(),
                migrations_binary,
            )
        });
        let images = image_facts(env, tags, daemon.as_ref().ok());
        let builder = builder::choose_here(daemon.as_ref().ok());
        let chart_exists = env.root.join(&env.chart).join("Chart.yaml").is_file();
        let (cluster, migrations) = cluster.join().expect("cluster reader panicked");
        let runner = runner
            .join()
            .expect("runner decision panicked")
            .map_err(FactError::new);
        DeployFacts {
            commit: commit.clone(),
            images,
            graph: graph.clone(),
            helm: helm.join().expect("helm probe panicked"),
            chart_exists,
            backup_script_exists: env.root.join(backup::SCRIPT).is_file(),
            backup_dir_problem: backup::dir_problem(env),
            migration_lock_wait: config::values::migration_lock_wait(env),
            inputs_hash: if chart_exists {
                inputs::hash(env).map_err(FactError::from)
            } else {
                Err(FactError::new("no chart"))
            },
            cluster,
            migrations,
            runner,
            external_database: std::env::var_os("DATABASE_URL").is_some(),
            external_mode_file: config::values::external_database_file(env),
            daemon,
            builder,
            docker_host: crate::images::docker::endpoint().host,
            manifests: None,
            promotion: None,
        }
    })
}

/// Each image's tag from the commit and its context's state: None without
/// a commit, Err when git cannot say.
fn image_tags(
    sh: &Shell,
    env: &Environment,
    commit: Option<&git::Commit>,
) -> Vec<Option<Fact<String>>> {
    env.images
        .iter()
        .map(|image| {
            commit.map(|commit| images::tag(sh, env, commit, image).map_err(FactError::from))
        })
        .collect()
}

/// Each image's context, Dockerfile and the registry's digest for its tag
/// (the registry reached as the daemon reaches it: HTTPS, or plain HTTP
/// for one it treats as insecure). The digests are asked at once.
fn image_facts(
    env: &Environment,
    tags: Vec<Option<Fact<String>>>,
    daemon: Option<&registry::DaemonView>,
) -> Vec<ImageFacts> {
    let access = registry::access_for(&env.registry, daemon);
    // Kept as text: each image's reader needs its own copy.
    let credential =
        registry::credential_for(registry::host_of(&env.registry)).map_err(|e| FactError::of(&e));
    std::thread::scope(|scope| {
        let digests: Vec<_> = env
            .images
            .iter()
            .zip(&tags)
            .map(|(image, tag)| {
                let (access, credential) = (&access, credential.clone());
                scope.spawn(move || match tag {
                    Some(Ok(tag)) => RegistryClient::new(&image.reference, credential?, access)
                        .and_then(|client| {
                            client.manifest_digest(images::repository_path(&image.reference), tag)
                        })
                        .map_err(|e| FactError::of(&e)),
                    _ => Ok(None),
                })
            })
            .collect();
        env.images
            .iter()
            .zip(&tags)
            .zip(digests)
            .map(|((image, tag), digest)| {
                let context_dir = env.root.join(&image.context);
                let tag = tag.clone().transpose();
                let needs = images::dockerfile_needs(env, image);
                ImageFacts {
                    component: image.component,
                    context_exists: context_dir.is_dir(),
                    dockerfile_exists: needs.is_ok(),
                    needs: needs.unwrap_or_default(),
                    registry_digest: match &tag {
                        Err(why) => Err(why.clone()),
                        Ok(_) => digest.join().expect("registry reader panicked"),
                    },
                    tag_problem: tag.as_ref().err().cloned(),
                    tag: tag.ok().flatten(),
                }
            })
            .collect()
    })
}

/// The pending migrations' SQL, from the database's revision to the
/// checkout's head.
fn migrations_preview(
    env: &Environment,
    graph: &Result<RevisionGraph, VersionsError>,
    cluster: &Fact<ClusterFacts>,
) -> Preview {
    match versions::with_head(graph) {
        Ok((graph, head)) => {
            preview::gather(env, graph, &head, &plan::deploy::database_of(cluster))
        }
        Err(why) => Preview::Unavailable {
            why: why.to_string(),
        },
    }
}

/// The cluster's side of the facts. The context must be the environment's
/// and the release must not be pending: either is a refusal (Err).
fn cluster_facts(env: &Environment) -> Fact<ClusterFacts> {
    // Every read names the environment's context, so the reads may start
    // while the current context is checked; a mismatch still refuses.
    std::thread::scope(|scope| {
        let context = scope.spawn(|| release::check_context(env));
        let release = scope.spawn(|| release::current(env));
        let database_pod = scope.spawn(|| cluster::database::read(env));
        let lock = scope.spawn(|| cluster::lock::read(env));
        // Verify's reads of the running pods start now, and a no-op
        // verifies with them; the facts wait only for the runner's answer
        // (no Python), or for that `alembic current` without a runner.
        let database = scope.spawn(|| {
            let backend = Backend::read(env)?;
            let Some(pod) = backend.ready_pod().map(|p| p.name().to_string()) else {
                return Ok::<_, FactError>((database::no_ready_pod(), None));
            };
            let observed = verify::Prefetch::start(env, backend, &pod);
            let (database, _) = database::read_or_else(env, &pod, || observed.alembic_current());
            Ok((database, Some(observed)))
        });
        context.join().expect("context check panicked")?;
        let release = release.join().expect("release reader panicked")?;
        let lock = lock
            .join()
            .expect("lock reader panicked")
            .map_err(FactError::from)?;
        if let Some(current) = &release {
            release::refuse_if_pending(env, &current.status, lock.as_ref())
                .map_err(FactError::new)?;
        }
        let (database, observed) = database.join().expect("database reader panicked")?;
        // A database pod that cannot be listed is none: the backup refuses
        // later (no pod), and the revision stays unknown.
        let database_pod = database_pod
            .join()
            .expect("pod reader panicked")
            .ok()
            .flatten();
        // No backend pod answered (a failed deploy, pods starting): ask the
        // database itself, in its pod, or the external one this shell's
        // DATABASE_URL names (the one the backup dumps).
        let external_url = std::env::var("DATABASE_URL")
            .ok()
            .filter(|_| config::values::external_database_file(env).is_some());
        let database = match (&database, &database_pod, external_url) {
            (DatabaseRevision::Unknown { .. }, Some(pod), _) if observed.is_none() => {
                database::read_in_database_pod(env, pod)
            }
            (DatabaseRevision::Unknown { .. }, None, Some(url)) if observed.is_none() => {
                database::read_external(&url)
            }
            _ => database,
        };
        Ok(ClusterFacts {
            release,
            database,
            observed,
            database_pod,
            // Ours (taken before the facts with --wait-for-lock) is no news.
            lock: lock
                .filter(|lease| lease.holder.identity != cluster::lock::this_identity())
                .map(|lease| plan::LockFact::read(env, &lease)),
        })
    })
}

// -------------------------------------------------------------- execution

/// What the deploy decided and what its steps did.
struct Summary<'a> {
    plan: &'a Plan,
    facts_took: Duration,
    revision_before: u32,
    outcome: &'a Outcome,
}

/// `deploy --json`: what was decided and done, the images, each step.
#[derive(serde::Serialize)]
struct DeployJson<'a> {
    environment: &'a str,
    namespace: &'a str,
    release: &'a str,
    decision: Verdict,
    reason: &'a str,
    helm_revision: u32,
    /// `<head> (head)` as verify found it.
    alembic: Option<String>,
    backup: Option<String>,
    /// What the rehearsal of the migrations measured (none: not rehearsed).
    rehearsal: Option<&'a crate::database::rehearsal::Report>,
    /// The runner's line when it stamped a pre-Alembic schema.
    stamped: Option<String>,
    verified: bool,
    images: Vec<images::ImageJson>,
    facts_seconds: f64,
    steps: Vec<StepJson>,
}

impl Summary<'_> {
    fn helm_revision(&self) -> u32 {
        self.outcome.helm_revision.unwrap_or(self.revision_before)
    }

    fn render(&self, env: &Environment) -> String {
        let outcome = self.outcome;
        let mut out = String::new();
        if let Some((facts, checks)) = &outcome.verify {
            out.push('\n');
            out.push_str(&verify::render(env, facts, checks));
        }
        if self.plan.decision == Verdict::NothingToDeploy {
            out.push_str(&format!(
                "\nNothing to deploy to {}: {}\n",
                env.name, self.plan.reason
            ));
        } else {
            let head = outcome
                .verify
                .as_ref()
                .map_or(String::new(), |(facts, _)| facts.expected.head.clone());
            out.push_str(&format!(
                "\nDeployed {} to {}/{}: Helm revision {}, Alembic {head} (head)\n",
                env.name,
                env.kube_context,
                env.namespace,
                self.helm_revision()
            ));
        }
        out.push('\n');
        out.push_str(&outcome.render_steps(self.facts_took));
        out.push('\n');
        for image in &outcome.images {
            if let Some(digest) = &image.digest {
                out.push_str(&format!(
                    "  {:<9} {}@{digest}\n",
                    image.component, image.repository
                ));
            }
        }
        if let Some(backup) = &outcome.backup {
            out.push_str(&format!("  {:<9} {}\n", "backup", backup.path.display()));
        }
        if let Some(rehearsal) = &outcome.rehearsal {
            out.push_str(&format!("  {:<9} {}\n", "rehearsal", rehearsal.summary()));
        }
        if let Some(line) = outcome
            .verify
            .as_ref()
            .and_then(|(f, _)| f.detection_line())
        {
            out.push_str(&format!("  {:<9} {line}\n", "stamp"));
        }
        out
    }

    fn to_json<'a>(&'a self, env: &'a Environment) -> DeployJson<'a> {
        let outcome = self.outcome;
        DeployJson {
            environment: &env.name,
            namespace: &env.namespace,
            release: &env.release,
            decision: self.plan.decision,
            reason: &self.plan.reason,
            helm_revision: self.helm_revision(),
            alembic: outcome
                .verify
                .as_ref()
                .map(|(f, _)| format!("{} (head)", f.expected.head)),
            backup: outcome
                .backup
                .as_ref()
                .map(|b| b.path.display().to_string()),
            rehearsal: outcome.rehearsal.as_ref(),
            stamped: outcome
                .verify
                .as_ref()
                .and_then(|(f, _)| f.detection_line()),
            verified: outcome.verified(),
            images: images::to_json(&outcome.images),
            facts_seconds: self.facts_took.as_secs_f64(),
            steps: outcome.steps_json(),
        }
    }
}
