//! The one executor: runs any `plan::Plan` (deploy's, rollback's) step by
//! step as printed, a group of `alongside_previous` steps at once. Each
//! step's `Action` carries what it needs; what only execution learns (the
//! pushed digests, the backup's path, the revision Helm made) is kept in
//! the `Outcome` and filled into the steps after it. One summary and one
//! `--json` step shape come out of it for every command.

mod helm;

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::alembic::database;
use crate::cluster::helm::{DeployRecord, PinnedImage};
use crate::cluster::rollout::{self, Assessment};
use crate::cluster::{self as cluster_layer};
use crate::config::{Component, Environment};
use crate::database::{backup, rehearsal};
use crate::images::copy as image_copy;
use crate::images::docker;
use crate::images::registry;
use crate::images::registry::DaemonView;
use crate::images::runner::RunnerPlan;
use crate::images::{self, builder, ImageReport, Mode};
use crate::plan::{Action, ImageCopy, Plan, Step, StepJson, StepKind};
use crate::process;
use crate::progress;
use crate::verify;

/// What the executor is given beside the plan.
pub struct Executor<'a> {
    pub env: &'a Environment,
    /// Verify's reads from the facts phase: used while no step has changed
    /// the release (a no-op deploy verifies with them).
    pub observed: Option<verify::Prefetch>,
    /// The daemon's view from the facts (how it reaches the registry).
    pub daemon: Option<DaemonView>,
    /// The environment's deploy lock, told which step runs (others see it).
    pub lock: Option<&'a crate::cluster::lock::Guard>,
}

/// What the steps produced, in order.
#[derive(Default)]
pub struct Outcome {
    pub steps: Vec<TimedStep>,
    pub images: Vec<ImageReport>,
    pub backup: Option<backup::Backup>,
    pub rehearsal: Option<rehearsal::Report>,
    /// The revision the release is at after a Helm step; None: no Helm step ran.
    pub helm_revision: Option<u32>,
    pub verify: Option<(verify::Facts, Vec<verify::Check>)>,
    /// Verify's reads made while a rollout was watched, taken by the next
    /// watch or the verify step (steps see the outcome shared).
    collector: std::sync::Mutex<Option<verify::Collector>>,
}

/// One executed step: its name, how long it took, what it produced.
#[derive(Debug, Clone)]
pub struct TimedStep {
    pub kind: StepKind,
    pub took: Duration,
    pub note: String,
}

/// What one step hands to the outcome.
enum Output {
    Images(Vec<ImageReport>),
    Backup(backup::Backup),
    Rehearsed(Box<rehearsal::Report>),
    Released {
        revision: u32,
        collector: Option<verify::Collector>,
        note: String,
    },
    RolledOut(verify::Collector),
    Note(String),
    Verified(Box<(verify::Facts, Vec<verify::Check>)>),
}

impl Executor<'_> {
    /// Runs every step of `plan`; the first failure stops it, with the step
    /// named. Interrupts must be installed by the caller.
    pub fn execute(&self, plan: &Plan) -> Result<Outcome> {
        crate::runtime::block_on(self.run(plan))
    }

    async fn run(&self, plan: &Plan) -> Result<Outcome> {
        let mut outcome = Outcome::default();
        for group in plan.groups() {
            let names: Vec<&str> = group.iter().map(|s| s.kind().name()).collect();
            let during = || format!("during step {}", names.join(" and "));
            if let Some(lock) = self.lock {
                lock.set_step(&names.join(" and "));
            }
            for step in &group {
                progress::say(format!("{}: {}", plan.command, step.title));
            }
            let steps = futures_util::future::join_all(group.iter().map(|step| async {
                let started = Instant::now();
                let output = self.step(step, &outcome).await;
                (step.kind(), started.elapsed(), output)
            }));
            // The image stage and the rehearsal work in-process (Docker
            // API calls, no child to signal): an interrupt drops them, so
            // nothing half-pushed is ever pinned and the rehearsal's
            // containers are removed. Steps with children end when their
            // children do (SIGTERM).
            let in_process = group.iter().any(|s| {
                matches!(
                    s.kind(),
                    StepKind::Images | StepKind::PromoteImages | StepKind::Rehearse
                )
            });
            let results = if in_process {
                let interrupt = tokio::select! {
                    results = steps => Ok(results),
                    interrupt = interrupt_arrives() => Err(interrupt),
                };
                match interrupt {
                    Ok(results) => results,
                    Err(interrupt) => {
                        // The steps beside it had children (the backup):
                        // they got SIGTERM; let them finish cleaning up.
                        tokio::task::spawn_blocking(|| process::wait_for_children(CHILDREN_GRACE))
                            .await?;
                        return Err(anyhow::Error::new(interrupt).context(during()));
                    }
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
                let output = output.with_context(|| format!("during step {}", kind.name()))?;
                outputs.push((kind, took, output));
            }
            for (kind, took, output) in outputs {
                let note = outcome.keep(output);
                outcome.steps.push(TimedStep { kind, took, note });
            }
        }
        Ok(outcome)
    }

    /// One step, by its action.
    async fn step(&self, step: &Step, done: &Outcome) -> Result<Output> {
        match &step.action {
            Action::Images {
                tags,
                runner,
                builder,
                use_existing,
            } => self.images(tags, runner, builder, *use_existing).await,
            Action::PromoteImages { copies } => self.promote_images(copies).await,
            Action::Backup { argv } => self.backup(argv).await,
            Action::Rehearse {
                backend,
                from,
                head,
            } => self.rehearse(done, backend, from, head).await,
            Action::HelmUpgrade {
                pinned,
                record,
                helm_major,
                revision,
                database_before,
            } => {
                // The two reads Helm waits for, at once: neither needs the other.
                let (still, replicaset_before) = tokio::join!(
                    async {
                        match database_before {
                            Some(before) => self.database_still_at(before).await,
                            None => Ok(()),
                        }
                    },
                    helm::newest_replicaset_revision(self.env)
                );
                still?;
                let (major, revision) = (*helm_major, *revision);
                self.helm_upgrade(done, pinned, record, major, revision, replicaset_before)
                    .await
            }
            Action::Rollout => self.rollout(done).await,
            Action::Downgrade {
                pod,
                target,
                app_expects,
                downgrade,
                check,
            } => {
                let planned = PlannedDowngrade {
                    pod,
                    target,
                    app_expects,
                    check,
                };
                self.downgrade(done, downgrade, &planned).await
            }
            Action::HelmRollback {
                argv,
                target,
                revision,
            } => self.helm_rollback(argv, target, *revision).await,
            Action::RecordHead { argv, head } => self.record_head(argv, head).await,
            Action::Verify { expectation } => self.verify(done, expectation.clone()).await,
        }
    }

    async fn images(
        &self,
        tags: &[(Component, String)],
        runner: &Option<RunnerPlan>,
        builder: &builder::Choice,
        use_existing: bool,
    ) -> Result<Output> {
        let mode = match use_existing {
            true => Mode::UseExisting,
            false => Mode::Push,
        };
        let options = images::Options::deploy(mode, runner.clone(), builder.clone());
        let reports = images::run(self.env, tags, &options, self.daemon.as_ref())
            .await
            .context("the image stage failed, so Helm was not run and the cluster is unchanged")?;
        Ok(Output::Images(reports))
    }

    /// Copies each promoted image by digest to this environment's
    /// repository (the digests pinned are the plan's: a copy keeps them).
    async fn promote_images(&self, copies: &[ImageCopy]) -> Result<Output> {
        let mut notes = Vec::new();
        for copy in copies.iter().cloned() {
            let daemon = self.daemon.clone();
            let note = tokio::task::spawn_blocking(move || -> Result<String> {
                let from = image_copy::Repository::open(&copy.from, daemon.as_ref())?;
                let to = image_copy::Repository::open(&copy.to, daemon.as_ref())?;
                let say = |what: String| progress::say(format!("{}: copying {what}", copy.component));
                let copied = image_copy::copy(&from, &to, &copy.digest, &say)?;
                progress::say(format!(
                    "{}: {}@{} -> {}: {copied}",
                    copy.component, copy.from, copy.digest, copy.to
                ));
                Ok(format!("{} {copied}", copy.component))
            })
            .await?
            .context("the copy of the promoted images failed, so Helm was not run and the cluster is unchanged")?;
            notes.push(note);
        }
        Ok(Output::Note(if notes.is_empty() {
            "in this environment's repositories already".into()
        } else {
            notes.join("; ")
        }))
    }

    async fn backup(&self, argv: &[String]) -> Result<Output> {
        let (env, argv) = (self.env.clone(), argv.to_vec());
        let backup = tokio::task::spawn_blocking(move || backup::take(&env, &argv))
            .await?
            .context("the backup failed, so Helm was not run, the database is untouched and the cluster is unchanged")?;
        progress::say(format!("backup: {}", backup.path.display()));
        Ok(Output::Backup(backup))
    }

    /// The rehearsal on the backup just taken, with the backend image just
    /// pushed; a failure stops the plan before Helm.
    async fn rehearse(
        &self,
        done: &Outcome,
        backend: &PinnedImage,
        from: &str,
        head: &str,
    ) -> Result<Output> {
        let context = "the rehearsal failed, so Helm was not run and the cluster is unchanged";
        let backup = done
            .backup
            .as_ref()
            .context("the rehearsal needs the backup step's file, and there is none")?;
        let pinned = done.pinned(std::slice::from_ref(backend))?.remove(0);
        let image = format!(
            "{}@{}",
            pinned.repository,
            pinned.digest.as_deref().unwrap_or_default()
        );
        let docker = docker::connect().await?;
        let credential = registry::credential_for(registry::host_of(&pinned.repository))
            .ok()
            .flatten();
        docker::ensure_image(&docker, &image, credential.as_ref())
            .await
            .map_err(anyhow::Error::msg)
            .context(context)?;
        let engine = rehearsal::engine(self.env, &backup.path).context(context)?;
        let request = rehearsal::Request {
            backend_image: image,
            backup: backup.path.clone(),
            from: from.to_string(),
            head: head.to_string(),
        };
        let report = rehearsal::rehearse(self.env, &docker, &request, &engine, |line| {
            progress::say(format!("rehearsal: {line}"))
        })
        .await
        .context(context)?;
        Ok(Output::Rehearsed(Box::new(report)))
    }

    /// The database must still be where the plan saw it: another
    /// migration or downgrade since (by hand, or by a tool without the
    /// lock) would leave this deploy's code on a schema it was not planned
    /// for. Unknown now (no ready pod) is said, not refused.
    async fn database_still_at(&self, before: &str) -> Result<()> {
        let env = self.env.clone();
        // The pod the facts asked, if it still answers (one exec); else
        // whichever backend pod is ready now.
        let known = self.observed.as_ref().map(|o| o.pod().to_string());
        let now = tokio::task::spawn_blocking(move || {
            let answer = known.map(|pod| crate::alembic::database::read(&env, &pod));
            match answer {
                Some(answer) if answer.revision().is_some() => answer,
                _ => {
                    let pod = crate::cluster::Backend::read(&env)
                        .ok()
                        .and_then(|b| b.ready_pod().map(|p| p.name().to_string()));
                    crate::alembic::database::read_in(&env, pod.as_deref())
                }
            }
        })
        .await?;
        match now.revision() {
            Some(now) if now != before => bail!(
                "the database is at {now}, not at {before} as when this deploy was planned: another migration or \
                 downgrade ran meanwhile, so Helm was not run (the cluster is unchanged; the images and the backup \
                 are kept). Deploy again to plan on what is there now"
            ),
            Some(_) => Ok(()),
            None => {
                eprintln!(
                    "deploy: the database's revision could not be read again before Helm ({}); going on with the plan's {before}",
                    now.describe()
                );
                Ok(())
            }
        }
    }

    /// `replicaset_before`: the newest backend ReplicaSet's revision
    /// before Helm, which the watch must see exceeded.
    async fn helm_upgrade(
        &self,
        done: &Outcome,
        pinned: &[PinnedImage],
        record: &DeployRecord,
        helm_major: u32,
        revision: u32,
        replicaset_before: u64,
    ) -> Result<Output> {
        let values = crate::cluster::helm::tool_values(
            self.env,
            &done.pinned(pinned)?,
            &done.record(record),
            revision,
        );
        let (_values_file, argv) = crate::cluster::helm::with_values_file(
            &crate::cluster::helm::upgrade_install_args(self.env, helm_major),
            &values,
        )
        .context("cannot write this deploy's values file for Helm")?;
        let collector =
            helm::upgrade_watching_rollout(self.env, &argv, revision, replicaset_before).await?;
        Ok(Output::Released {
            revision,
            collector: Some(collector),
            note: format!("revision {revision}, digests pinned"),
        })
    }

    /// Our own watch after Helm's: fails fast with the failing container's
    /// log; goes on collecting verify's reads.
    async fn rollout(&self, done: &Outcome) -> Result<Output> {
        let env = self.env;
        let mut progress = rollout::Progress::new(env);
        let mut collector = done
            .take_collector()
            .unwrap_or_else(|| verify::Collector::new(env, 0));
        let assessment = rollout::watch(env, rollout::Expect::Newest, env.helm_timeout, |b| {
            progress.show(b);
            collector.observe(b);
        })
        .await?;
        match assessment {
            Assessment::Complete => Ok(Output::RolledOut(collector)),
            Assessment::Failed { pod, problem } => {
                bail!("{}", rollout::explain_failure(env, &pod, &problem))
            }
            Assessment::Waiting(why) => bail!("the rollout did not complete: {why}"),
        }
    }

    /// `alembic downgrade` (its output shown as it runs), then `check`
    /// must report the target.
    async fn downgrade(
        &self,
        done: &Outcome,
        downgrade: &[String],
        planned: &PlannedDowngrade<'_>,
    ) -> Result<Output> {
        let PlannedDowngrade { target, check, .. } = *planned;
        let backup = done
            .backup
            .as_ref()
            .map_or("-".into(), |b| b.path.display().to_string());
        progress::say(format!("$ {}", process::display_argv(downgrade)));
        let code = blocking(downgrade.to_vec(), |argv| cluster_layer::relay(&argv)).await?;
        if code != 0 {
            let now = blocking(check.to_vec(), |argv| cluster_layer::run(&argv))
                .await
                .map(|o| database::from_alembic_current(&o.stdout).describe())
                .unwrap_or_else(|e| format!("unknown ({e:#})"));
            bail!("{}", self.midway(planned, code, &now, &backup));
        }
        let output = blocking(check.to_vec(), |argv| cluster_layer::run(&argv)).await?;
        let now = database::from_alembic_current(&output.stdout);
        if output.code != 0 || now.revision() != Some(target) {
            bail!(
                "after `alembic downgrade {target}` the database reports {:?} ({}); the app was not rolled back; backup {backup}",
                cluster_layer::last_line(&output.stdout),
                output.stderr.trim()
            );
        }
        Ok(Output::Note(format!("database at {target}")))
    }

    /// A downgrade that failed midway: where the database is now, what the
    /// running app expects and would do on a restart, the two ways out.
    fn midway(&self, planned: &PlannedDowngrade<'_>, code: i32, now: &str, backup: &str) -> String {
        let env = self.env;
        format!(
            "`alembic downgrade {}` in {} failed (exit {code}), so the app was not rolled back.\n  \
             the database is now at: {now}\n  \
             the running app expects {app}: a pod of it that restarts runs its init container, which upgrades \
             the database to {app} again\n  \
             ways out: restore the backup this rollback took, `scripts/restore-db.sh --context {} --release {} {} {backup}`; \
             or go forward, `cargo xtask deploy {}`",
            planned.target,
            planned.pod,
            env.kube_context,
            env.release,
            env.namespace,
            env.name,
            app = planned.app_expects,
        )
    }

    /// `helm rollback` as planned, then the returned revision's pods ready.
    async fn helm_rollback(&self, argv: &[String], target: &str, revision: u32) -> Result<Output> {
        let env = self.env;
        run_captured(argv, "helm rollback").await.with_context(|| {
            format!(
                "the database is at {target} but the app was not rolled back: retry with `{}`",
                process::display_argv(argv)
            )
        })?;
        let mut progress = rollout::Progress::new(env);
        match rollout::watch(env, rollout::Expect::Newest, env.helm_timeout, |b| {
            progress.show(b)
        })
        .await?
        {
            Assessment::Complete => Ok(Output::Released {
                revision,
                collector: None,
                note: format!("revision {revision}, rolled out"),
            }),
            Assessment::Failed { pod, problem } => {
                bail!("{}", rollout::explain_failure(env, &pod, &problem))
            }
            Assessment::Waiting(why) => {
                bail!("the rolled-back release did not become ready: {why}")
            }
        }
    }

    async fn record_head(&self, argv: &[String], head: &str) -> Result<Output> {
        run_captured(argv, "recording the expected head").await?;
        Ok(Output::Note(format!("{head} recorded for verify")))
    }

    /// Verify from what is already known: the facts' reads while nothing
    /// changed the release, the rollout's collected reads after a deploy,
    /// else a fresh read.
    async fn verify(&self, done: &Outcome, expectation: verify::Expectation) -> Result<Output> {
        let env = self.env.clone();
        let observed = self
            .observed
            .clone()
            .filter(|_| done.helm_revision.is_none());
        let collected = done.take_collector();
        let (facts, checks) = tokio::task::spawn_blocking(move || -> Result<_> {
            let facts = match (observed, collected) {
                (Some(observed), _) => observed.finish(expectation)?,
                (None, Some(collected)) => collected.finish(expectation)?,
                (None, None) => verify::gather(&env, expectation)?,
            };
            let checks = verify::evaluate(&env, &facts);
            Ok((facts, checks))
        })
        .await??;
        Ok(Output::Verified(Box::new((facts, checks))))
    }
}

impl Outcome {
    /// Keeps a step's output; returns the note for the summary table.
    fn keep(&mut self, output: Output) -> String {
        match output {
            Output::Images(reports) => {
                let note = reports
                    .iter()
                    .map(|r| {
                        let pushed = matches!(
                            r.push,
                            images::StepOutcome::Done(_) | images::StepOutcome::WithBuild
                        );
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
            Output::Rehearsed(report) => {
                let note = report.summary();
                self.rehearsal = Some(*report);
                note
            }
            Output::Released {
                revision,
                collector,
                note,
            } => {
                self.helm_revision = Some(revision);
                *self.collector.get_mut().expect("collector lock") = collector;
                note
            }
            Output::RolledOut(collector) => {
                *self.collector.get_mut().expect("collector lock") = Some(collector);
                "newest ReplicaSet ready, no old pods".into()
            }
            Output::Note(note) => note,
            Output::Verified(verified) => {
                let (_, checks) = &*verified;
                let passed = checks.iter().filter(|c| c.ok).count();
                let note = format!("{passed}/{} checks passed", checks.len());
                self.verify = Some(*verified);
                note
            }
        }
    }

    fn take_collector(&self) -> Option<verify::Collector> {
        self.collector.lock().expect("collector lock").take()
    }

    /// The plan's pins with the digests the image stage pushed.
    fn pinned(&self, planned: &[PinnedImage]) -> Result<Vec<PinnedImage>> {
        planned
            .iter()
            .map(|planned| {
                let mut pinned = planned.clone();
                if let Some(report) = self
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

    /// The plan's record with the backup this run took and what its
    /// rehearsal measured (none: empty).
    fn record(&self, planned: &DeployRecord) -> DeployRecord {
        DeployRecord {
            backup_file: self
                .backup
                .as_ref()
                .map(|b| b.path.display().to_string())
                .unwrap_or_default(),
            rehearsal: self
                .rehearsal
                .as_ref()
                .map(rehearsal::Report::summary)
                .unwrap_or_default(),
            ..planned.clone()
        }
    }

    /// Every check of the verify step passed (false when none ran).
    pub fn verified(&self) -> bool {
        self.verify
            .as_ref()
            .is_some_and(|(_, checks)| checks.iter().all(|c| c.ok))
    }

    /// The steps as `--json` shows them, for every command.
    pub fn steps_json(&self) -> Vec<StepJson> {
        self.steps
            .iter()
            .map(|s| StepJson {
                name: s.kind.name(),
                seconds: s.took.as_secs_f64(),
                note: Some(s.note.clone()),
            })
            .collect()
    }

    /// The steps as text: one line each, then the total (with the facts'
    /// time, read before the plan).
    pub fn render_steps(&self, facts_took: Duration) -> String {
        let mut out = format!(
            "  {:<13} {:>6.1} s  read-only: what the plan was decided from\n",
            "facts",
            facts_took.as_secs_f64()
        );
        for step in &self.steps {
            out.push_str(&format!(
                "  {:<13} {:>6.1} s  {}\n",
                step.kind.name(),
                step.took.as_secs_f64(),
                step.note
            ));
        }
        let total = facts_took + self.steps.iter().map(|s| s.took).sum::<Duration>();
        out.push_str(&format!(
            "  {:<13} {:>6.1} s\n",
            "total",
            total.as_secs_f64()
        ));
        out
    }
}

/// A downgrade step's plan, as the executor needs it beside its argv.
#[derive(Clone, Copy)]
struct PlannedDowngrade<'a> {
    pod: &'a str,
    target: &'a str,
    app_expects: &'a str,
    check: &'a [String],
}

/// A plan's argv, output captured; a non-zero exit fails with its stderr.
async fn run_captured(argv: &[String], what: &str) -> Result<cluster_layer::Output> {
    progress::say(format!("$ {}", process::display_argv(argv)));
    let output = blocking(argv.to_vec(), |argv| cluster_layer::run(&argv)).await?;
    if output.code != 0 {
        bail!("{what} failed: {}", output.stderr.trim());
    }
    Ok(output)
}

/// A blocking process call off the async workers.
async fn blocking<T: Send + 'static>(
    argv: Vec<String>,
    call: impl FnOnce(Vec<String>) -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(move || call(argv)).await?
}

/// How long an interrupted run waits for its children's own cleanup.
const CHILDREN_GRACE: Duration = Duration::from_secs(20);

/// Resolves when an interrupt has arrived.
async fn interrupt_arrives() -> process::Interrupted {
    loop {
        if let Some(interrupt) = process::interrupted() {
            return interrupt;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
