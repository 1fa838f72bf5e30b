//! `cargo xtask deploy <env>`: gather facts (read-only), decide the plan
//! (`plan::deploy::decide`), print it, then execute its steps one by one as
//! printed. `--dry-run` prints the same plan and stops.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use backend_migrations::revisions::RevisionGraph;
use xshell::Shell;

use crate::alembic::database;
use crate::alembic::preview::{self, Preview};
use crate::alembic::versions::{self, VersionsError};
use crate::cli::DeployArgs;
use crate::cluster::helm::{DeployRecord, PinnedImage};
use crate::cluster::rollout::{self, Assessment};
use crate::cluster::{self, helm, kubectl, release, Backend};
use crate::config::{self, git, inputs, Component, Environment};
use crate::database::backup;
use crate::error::{input_error, with_causes};
use crate::images::registry::{self, RegistryClient};
use crate::images::{self, builder, docker, runner, ImageReport, Mode};
use crate::plan::deploy::{ClusterFacts, DeployFacts, DeployOptions, DeploySpec, ImageFacts};
use crate::plan::{self, Plan, StepJson, StepKind, Verdict};
use crate::process;
use crate::verify;

/// The deploy, phase by phase: read, decide, show, confirm, execute, report.
/// Every refusal comes before `execute`, the first change.
pub fn run(args: DeployArgs) -> Result<()> {
    let started = Instant::now();
    let env = config::load(Some(&args.env), &args.env_overrides)?;
    let options = options(&args)?;
    if !args.dry_run {
        // Local problems first: they need no cluster to refuse.
        env.require_values_files()?;
    }
    let facts = gather_facts(&Shell::new()?, &env, args.migrations_binary.as_deref());
    let (plan, spec) = plan::deploy::decide(&env, &facts, options);
    // A dry run shows the plan, its missing items included; a run refuses.
    if args.dry_run {
        return plan.show(true, args.json);
    }
    plan.refuse_if_missing()?;
    let facts_took = started.elapsed();
    // The plan goes where the user reads; with --json, stdout is the summary only.
    plan.show(false, args.json)?;
    confirm_changes(&env, &facts, &plan, args.yes)?;
    let mut summary = execute(&env, &facts, &plan, &spec, &args)?;
    summary.facts_took = facts_took;
    summary.decision = Some(plan.decision);
    summary.reason = plan.reason.clone();
    report(&env, &summary, args.json)
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
    })
}

/// A plan that changes anything is confirmed; a no-op (verify only) is not.
fn confirm_changes(env: &Environment, facts: &DeployFacts, plan: &Plan, yes: bool) -> Result<()> {
    if plan.steps.iter().all(|s| s.kind == StepKind::Verify) {
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
    spec: &DeploySpec,
    args: &DeployArgs,
) -> Result<Summary> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let execution = Execution {
        env,
        spec,
        observed: facts.cluster.as_ref().ok().and_then(|c| c.observed.clone()),
        skip_build: args.skip_build,
        verbose: args.verbose,
        collector: std::sync::Mutex::new(None),
        daemon: facts.daemon.clone().ok(),
    };
    process::install_interrupts()?;
    runtime
        .block_on(execution.run(plan))
        .map_err(|error| after_interrupt(env, error))
}

/// The summary (text, or JSON with `--json`); a failed verify fails the deploy.
fn report(env: &Environment, summary: &Summary, json: bool) -> Result<()> {
    if json {
        crate::report::print_json(&summary.to_json(env))?;
    } else {
        print!("{}", summary.render(env));
    }
    if !summary.verified() {
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
        let daemon = daemon.join().expect("docker probe panicked");
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
        let runner = runner.join().expect("runner decision panicked");
        DeployFacts {
            commit: commit.clone(),
            images,
            graph: graph.clone(),
            helm: helm.join().expect("helm probe panicked"),
            chart_exists,
            backup_script_exists: env.root.join(backup::SCRIPT).is_file(),
            inputs_hash: if chart_exists {
                inputs::hash(env).map_err(|e| format!("{e:#}"))
            } else {
                Err("no chart".into())
            },
            cluster,
            migrations,
            runner,
            external_database: std::env::var_os("DATABASE_URL").is_some(),
            daemon,
            builder,
        }
    })
}

/// Each image's tag from the commit and its context's state: None without
/// a commit, Err when git cannot say.
fn image_tags(
    sh: &Shell,
    env: &Environment,
    commit: Option<&git::Commit>,
) -> Vec<Option<Result<String, String>>> {
    env.images
        .iter()
        .map(|image| {
            commit.map(|commit| images::tag(sh, env, commit, image).map_err(|e| format!("{e:#}")))
        })
        .collect()
}

/// Each image's context, Dockerfile and the registry's digest for its tag
/// (the registry reached as the daemon reaches it: HTTPS, or plain HTTP
/// for one it treats as insecure). The digests are asked at once.
fn image_facts(
    env: &Environment,
    tags: Vec<Option<Result<String, String>>>,
    daemon: Option<&registry::DaemonView>,
) -> Vec<ImageFacts> {
    let access = registry::access_for(&env.registry, daemon);
    // Kept as text: each image's reader needs its own copy.
    let credential =
        registry::credential_for(registry::host_of(&env.registry)).map_err(|e| with_causes(&e));
    std::thread::scope(|scope| {
        let digests: Vec<_> = env
            .images
            .iter()
            .zip(&tags)
            .map(|(image, tag)| {
                let (access, credential) = (&access, credential.clone());
                scope.spawn(move || match tag {
                    Some(Ok(tag)) => RegistryClient::new(&image.reference, credential?, access)
                        .manifest_digest(images::repository_path(&image.reference), tag)
                        .map_err(|e| with_causes(&e)),
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
    cluster: &Result<ClusterFacts, String>,
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
fn cluster_facts(env: &Environment) -> Result<ClusterFacts, String> {
    // Every read names the environment's context, so the reads may start
    // while the current context is checked; a mismatch still refuses.
    std::thread::scope(|scope| {
        let context = scope.spawn(|| release::check_context(env));
        let release = scope.spawn(|| release::current(env));
        let database_pods = scope.spawn(|| cluster::run(&kubectl::database_pods_args(env)));
        // Verify's reads of the running pods, made now: the database's
        // revision comes from its `alembic current`, and a no-op reuses them.
        let database = scope.spawn(|| {
            let backend = Backend::read(env).map_err(|e| format!("{e:#}"))?;
            let Some(pod) = backend.ready_pod().map(|p| p.name().to_string()) else {
                return Ok::<_, String>((database::no_ready_pod(), None));
            };
            let unknown = verify::Expectation {
                head: String::new(),
                source: verify::Source::Flag,
            };
            let observed =
                verify::gather_from(env, unknown, backend).map_err(|e| format!("{e:#}"))?;
            let database = match &observed.alembic_current {
                Some(output) => database::from_observed(env, &pod, output),
                None => database::read(env, &pod),
            };
            Ok((database, Some(observed)))
        });
        context
            .join()
            .expect("context check panicked")
            .map_err(|e| format!("{e:#}"))?;
        let release = release
            .join()
            .expect("release reader panicked")
            .map_err(|e| format!("{e:#}"))?;
        if let Some(current) = &release {
            release::refuse_if_pending(env, &current.status)?;
        }
        let (database, observed) = database.join().expect("database reader panicked")?;
        let database_pod_exists = database_pods
            .join()
            .expect("pod reader panicked")
            .is_ok_and(|o| o.code == 0 && !o.stdout.trim().is_empty());
        Ok(ClusterFacts {
            release,
            database,
            observed,
            database_pod_exists,
        })
    })
}

// -------------------------------------------------------------- execution

/// Runs a plan's steps in order (a group of `alongside_previous` steps at
/// once), filling in what only execution learns: digests and the backup.
struct Execution<'a> {
    env: &'a Environment,
    spec: &'a DeploySpec,
    /// Verify's reads from the facts phase: current only while Helm has not run.
    observed: Option<verify::Facts>,
    skip_build: bool,
    verbose: bool,
    /// Verify's reads, made while the rollout is watched (Helm's watch,
    /// then ours), taken by the verify step.
    collector: std::sync::Mutex<Option<verify::Collector>>,
    /// The daemon's view from the facts (how it reaches the registry).
    daemon: Option<registry::DaemonView>,
}

/// `deploy --json`: what was decided and done, the images, each step.
#[derive(serde::Serialize)]
struct DeployJson<'a> {
    environment: &'a str,
    namespace: &'a str,
    release: &'a str,
    decision: Option<Verdict>,
    reason: &'a str,
    helm_revision: u32,
    /// `<head> (head)` as verify found it.
    alembic: Option<String>,
    backup: Option<String>,
    /// The runner's line when it stamped a pre-Alembic schema.
    stamped: Option<String>,
    verified: bool,
    images: Vec<images::ImageJson>,
    facts_seconds: f64,
    steps: Vec<StepJson>,
}

/// What the steps so far produced.
#[derive(Default)]
struct Summary {
    /// None until the plan's verdict is copied in.
    decision: Option<Verdict>,
    reason: String,
    facts_took: Duration,
    steps: Vec<TimedStep>,
    images: Vec<ImageReport>,
    backup: Option<backup::Backup>,
    helm_revision: u32,
    verify: Option<(verify::Facts, Vec<verify::Check>)>,
}

/// One executed step of the summary.
#[derive(Debug, Clone)]
struct TimedStep {
    kind: StepKind,
    took: Duration,
    note: String,
}

enum Output {
    Images(Vec<ImageReport>),
    Backup(backup::Backup),
    HelmRevision(u32),
    Nothing,
    Verified(Box<(verify::Facts, Vec<verify::Check>)>),
}

impl Execution<'_> {
    async fn run(&self, plan: &Plan) -> Result<Summary> {
        let mut summary = Summary {
            helm_revision: self.spec.revision_before,
            ..Summary::default()
        };
        for group in plan.groups() {
            let names: Vec<&str> = group.iter().map(|s| s.kind.name()).collect();
            let during = || format!("during step {}", names.join(" and "));
            let steps = futures_util::future::join_all(group.iter().map(|step| async {
                let started = Instant::now();
                let output = self.step(step.kind, &summary).await;
                (step.kind, started.elapsed(), output)
            }));
            // The image stage works in-process (no child to signal): an
            // interrupt drops it, so nothing half-pushed is ever pinned.
            // Steps with children end when their children do (SIGTERM).
            let in_process = group.iter().any(|s| s.kind == StepKind::Images);
            let results = if in_process {
                tokio::select! {
                    results = steps => results,
                    interrupt = interrupt_arrives() => return Err(anyhow::Error::new(interrupt).context(during())),
                }
            } else {
                steps.await
            };
            if let Some(interrupt) = process::interrupted() {
                return Err(anyhow::Error::new(interrupt).context(during()));
            }
            // Every step of the group has finished; the first failure stops the plan.
            let mut outputs = Vec::new();
            for (kind, took, output) in results {
                outputs.push((
                    kind,
                    took,
                    output.with_context(|| format!("during step {}", kind.name()))?,
                ));
            }
            for (kind, took, output) in outputs {
                let note = summary.record(output);
                summary.steps.push(TimedStep { kind, took, note });
            }
        }
        Ok(summary)
    }

    /// Runs one step of the plan: the plan's order is the executor's.
    async fn step(&self, kind: StepKind, done: &Summary) -> Result<Output> {
        match kind {
            StepKind::Images => self.images().await,
            StepKind::Backup => self.backup().await,
            StepKind::HelmUpgrade => self.helm_upgrade(done).await,
            StepKind::Rollout => self.rollout().await,
            StepKind::Verify => self.verify(done).await,
            // The rollback's steps: `plan::deploy` never plans them.
            StepKind::Downgrade | StepKind::HelmRollback | StepKind::RecordHead => {
                bail!("a deploy plan has no {} step", kind.name())
            }
        }
    }

    async fn images(&self) -> Result<Output> {
        let options = images::Options {
            mode: if self.skip_build {
                Mode::UseExisting
            } else {
                Mode::Push
            },
            jobs: 2,
            runner: self.spec.runner.clone(),
            builder: self.spec.builder.clone(),
        };
        let reports = images::run(self.env, &self.spec.tags, &options, self.daemon.as_ref())
            .await
            .context("the image stage failed, so Helm was not run and the cluster is unchanged")?;
        Ok(Output::Images(reports))
    }

    async fn backup(&self) -> Result<Output> {
        let env = self.env.clone();
        let backup = tokio::task::spawn_blocking(move || backup::take(&env))
            .await?
            .context("the backup failed, so Helm was not run and the cluster is unchanged")?;
        Ok(Output::Backup(backup))
    }

    async fn helm_upgrade(&self, done: &Summary) -> Result<Output> {
        let argv = helm::upgrade_install_args(
            self.env,
            &self.pinned(done)?,
            &self.record(done),
            self.spec.helm_major,
        );
        let collector = run_helm_watching_rollout(self.env, &argv, self.verbose).await?;
        *self.collector.lock().expect("collector lock") = Some(collector);
        Ok(Output::HelmRevision(self.spec.revision_before + 1))
    }

    /// Our own watch after Helm's: fails fast with the failing container's log.
    async fn rollout(&self) -> Result<Output> {
        let env = self.env;
        let mut progress = rollout::Progress::new(env);
        let mut collector = self
            .collector
            .lock()
            .expect("collector lock")
            .take()
            .unwrap_or_else(|| verify::Collector::new(env, 0));
        let assessment = rollout::watch(env, 0, false, env.helm_timeout, |b| {
            progress.show(b);
            collector.observe(b);
        })
        .await?;
        *self.collector.lock().expect("collector lock") = Some(collector);
        match assessment {
            Assessment::Complete => Ok(Output::Nothing),
            Assessment::Failed { pod, problem } => {
                bail!("{}", rollout::explain_failure(env, &pod, &problem))
            }
            Assessment::Waiting(why) => bail!("the rollout did not complete: {why}"),
        }
    }

    /// Verify from what is already known: the facts' reads for a no-op,
    /// the rollout's collected reads after a change, else a fresh read.
    async fn verify(&self, done: &Summary) -> Result<Output> {
        let env = self.env.clone();
        let expectation = self.expectation(done);
        let unchanged = done.helm_revision == self.spec.revision_before;
        let observed = self.observed.clone().filter(|_| unchanged);
        let collected = self.collector.lock().expect("collector lock").take();
        let (facts, checks) = tokio::task::spawn_blocking(move || -> Result<_> {
            let facts = match (observed, collected) {
                (Some(observed), _) => verify::Facts {
                    expected: expectation,
                    ..observed
                },
                (None, Some(collected)) => collected.finish(expectation)?,
                (None, None) => verify::gather(&env, expectation)?,
            };
            let checks = verify::evaluate(&env, &facts);
            Ok((facts, checks))
        })
        .await??;
        Ok(Output::Verified(Box::new((facts, checks))))
    }

    /// The images as Helm gets them: the plan's digests, or the pushed ones.
    fn pinned(&self, done: &Summary) -> Result<Vec<PinnedImage>> {
        self.spec
            .pinned
            .iter()
            .map(|planned| {
                let mut pinned = planned.clone();
                if let Some(report) = done
                    .images
                    .iter()
                    .find(|r| r.component == planned.component)
                {
                    pinned.digest = Some(report.digest.clone().ok_or_else(|| {
                        anyhow!("{} has no digest after the image stage", planned.component)
                    })?);
                }
                if pinned.digest.is_none() {
                    bail!(
                        "{} was never pushed, so there is no digest to pin",
                        planned.component
                    );
                }
                Ok(pinned)
            })
            .collect()
    }

    fn record(&self, done: &Summary) -> DeployRecord {
        DeployRecord {
            backup_file: done
                .backup
                .as_ref()
                .map(|b| b.path.display().to_string())
                .unwrap_or_default(),
            ..self.spec.record.clone()
        }
    }

    /// A deploy verifies against the head it recorded; a no-op against the
    /// running revision's record (the same thing, read from the release).
    fn expectation(&self, done: &Summary) -> verify::Expectation {
        verify::Expectation {
            head: self.spec.verify_head.clone(),
            source: verify::Source::DeployRecord {
                revision: done.helm_revision,
            },
        }
    }
}

impl Summary {
    /// Keeps a step's output; returns the note for the summary table.
    fn record(&mut self, output: Output) -> String {
        match output {
            Output::Images(reports) => {
                let note = reports
                    .iter()
                    .map(|r| {
                        let pushed = matches!(r.push, images::StepOutcome::Done(_));
                        format!(
                            "{} {}",
                            r.component,
                            if pushed { "pushed" } else { "in registry" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                self.images = reports;
                note
            }
            Output::Backup(backup) => {
                let note = backup.path.display().to_string();
                self.backup = Some(backup);
                note
            }
            Output::HelmRevision(revision) => {
                self.helm_revision = revision;
                format!("revision {revision}, digests pinned")
            }
            Output::Nothing => "newest ReplicaSet ready, no old pods".into(),
            Output::Verified(verified) => {
                let (_, checks) = &*verified;
                let passed = checks.iter().filter(|c| c.ok).count();
                let note = format!("{passed}/{} checks passed", checks.len());
                self.verify = Some(*verified);
                note
            }
        }
    }

    fn verified(&self) -> bool {
        self.verify
            .as_ref()
            .is_some_and(|(_, checks)| checks.iter().all(|c| c.ok))
    }

    fn render(&self, env: &Environment) -> String {
        let mut out = String::new();
        if let Some((facts, checks)) = &self.verify {
            out.push('\n');
            out.push_str(&verify::render(env, facts, checks));
        }
        let total: Duration = self.facts_took + self.steps.iter().map(|s| s.took).sum::<Duration>();
        if self.decision == Some(Verdict::NothingToDeploy) {
            out.push_str(&format!(
                "\nNothing to deploy to {}: {}\n",
                env.name, self.reason
            ));
        } else {
            let head = self
                .verify
                .as_ref()
                .map_or(String::new(), |(facts, _)| facts.expected.head.clone());
            out.push_str(&format!(
                "\nDeployed {} to {}/{}: Helm revision {}, Alembic {head} (head)\n",
                env.name, env.kube_context, env.namespace, self.helm_revision
            ));
        }
        out.push('\n');
        out.push_str(&format!(
            "  {:<13} {:>6.1} s  read-only: git, registry, release, database\n",
            "facts",
            self.facts_took.as_secs_f64()
        ));
        for step in &self.steps {
            out.push_str(&format!(
                "  {:<13} {:>6.1} s  {}\n",
                step.kind.name(),
                step.took.as_secs_f64(),
                step.note
            ));
        }
        out.push_str(&format!(
            "  {:<13} {:>6.1} s\n\n",
            "total",
            total.as_secs_f64()
        ));
        for image in &self.images {
            if let Some(digest) = &image.digest {
                out.push_str(&format!(
                    "  {:<9} {}@{digest}\n",
                    image.component, image.repository
                ));
            }
        }
        if let Some(backup) = &self.backup {
            out.push_str(&format!("  {:<9} {}\n", "backup", backup.path.display()));
        }
        if let Some(line) = self.verify.as_ref().and_then(|(f, _)| f.detection_line()) {
            out.push_str(&format!("  {:<9} {line}\n", "stamp"));
        }
        out
    }

    fn to_json<'a>(&'a self, env: &'a Environment) -> DeployJson<'a> {
        DeployJson {
            environment: &env.name,
            namespace: &env.namespace,
            release: &env.release,
            decision: self.decision,
            reason: &self.reason,
            helm_revision: self.helm_revision,
            alembic: self
                .verify
                .as_ref()
                .map(|(f, _)| format!("{} (head)", f.expected.head)),
            backup: self.backup.as_ref().map(|b| b.path.display().to_string()),
            stamped: self.verify.as_ref().and_then(|(f, _)| f.detection_line()),
            verified: self.verified(),
            images: images::to_json(&self.images),
            facts_seconds: self.facts_took.as_secs_f64(),
            steps: self
                .steps
                .iter()
                .map(|s| StepJson {
                    name: s.kind.name(),
                    seconds: s.took.as_secs_f64(),
                    note: Some(s.note.clone()),
                })
                .collect(),
        }
    }
}

/// Runs `helm upgrade --install` and watches the newest ReplicaSet at the
/// same time: a pod that will not recover stops Helm (SIGTERM, so it can
/// mark the release failed) and the deploy, within seconds. The watch also
/// starts verify's reads as they become possible; returns those reads.
async fn run_helm_watching_rollout(
    env: &Environment,
    argv: &[String],
    verbose: bool,
) -> Result<verify::Collector> {
    // Read now, not taken from the facts: the images took minutes, and
    // only a ReplicaSet newer than this one is the deploy's.
    let before = {
        let env = env.clone();
        tokio::task::spawn_blocking(move || Backend::read(&env))
            .await?
            .map(|b| b.newest_revision())
            .unwrap_or(0)
    };
    eprintln!("$ {}", crate::process::echo_argv(argv, verbose));
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
        let watch = rollout::watch(env, before, true, env.helm_timeout, |backend| {
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
                         The database is untouched unless the failing migration committed; `cargo xtask status {}` shows the release",
                        indent(helm_said.trim()),
                        env.name
                    );
                }
                // Complete (or timed out) before Helm returned: let Helm finish.
                _ => helm.await?,
            },
        }
    };
    let code = code?;
    if code != 0 {
        bail!(
            "helm upgrade failed (exit {code}):\n{}",
            indent(said.trim())
        );
    }
    // Helm's own word on what it did (NAME, STATUS, REVISION…).
    if !said.trim().is_empty() {
        eprintln!("{}", indent(said.trim()));
    }
    Ok(collector)
}

/// Resolves when an interrupt has arrived.
async fn interrupt_arrives() -> process::Interrupted {
    loop {
        if let Some(interrupt) = process::interrupted() {
            return interrupt;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long Helm gets to record the release as failed after SIGTERM.
const HELM_GRACE: Duration = Duration::from_secs(15);

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
