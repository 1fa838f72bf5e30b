//! Plans: what deploy and rollback will do, decided from facts gathered
//! beforehand (read-only), printed by `--dry-run` (text or JSON) and then
//! executed step by step, exactly these steps. The deciders are pure, so
//! every decision is unit-tested and the dry run is what runs.
//!
//! `deploy` decides a deploy, `rollback` a rollback; this file holds what
//! both produce: `Plan`, its `Step`s and how a plan is shown.

pub mod deploy;
pub mod rollback;

use std::fmt::Write as _;

use serde::Serialize;

use crate::alembic::preview::Preview;
use crate::cluster::helm::{DeployRecord, PinnedImage};
use crate::cluster::kubectl;
use crate::config::{Component, Environment};
use crate::database::backup;
use crate::images::builder::Choice;
use crate::images::runner::RunnerPlan;
use crate::verify::Expectation;

/// The environment's deploy lock as the facts found it (read at one
/// moment, so the deciders stay pure).
#[derive(Debug, Clone, PartialEq)]
pub struct LockFact {
    /// Another command holds it and renews it: a change must wait.
    pub blocks: bool,
    /// `lock::Lease::describe`.
    pub describe: String,
    /// What a refusal says (`lock::refusal`).
    pub refusal: String,
}

impl LockFact {
    pub fn read(env: &Environment, lease: &crate::cluster::lock::Lease) -> LockFact {
        let now = std::time::SystemTime::now();
        LockFact {
            blocks: lease.blocks(now),
            describe: lease.describe(now),
            refusal: crate::cluster::lock::refusal(env, lease, now, None),
        }
    }
}

/// The command a plan belongs to; in `--json` as its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    Deploy,
    Rollback,
    Rehearse,
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::Deploy => "deploy",
            Command::Rollback => "rollback",
            Command::Rehearse => "rehearse",
        }
    }

    /// The plan's heading.
    fn title(self) -> &'static str {
        match self {
            Command::Deploy => "Deploy plan",
            Command::Rollback => "Rollback plan",
            Command::Rehearse => "Rehearsal plan",
        }
    }

    /// As a refusal says it: "cannot roll back …".
    fn verb(self) -> &'static str {
        match self {
            Command::Rollback => "roll back",
            other => other.name(),
        }
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A plan: facts shown, what blocks it, its decision, and its steps.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub command: Command,
    pub environment: String,
    #[serde(serialize_with = "facts_as_map")]
    pub facts: Vec<(&'static str, String)>,
    /// What stops the plan from running (a refusal, exit 2).
    pub missing: Vec<String>,
    pub decision: Verdict,
    /// Why, in a sentence.
    pub reason: String,
    /// What happens to the database schema, line by line.
    pub schema: Vec<String>,
    /// A deploy's pending migrations: their SQL and Squawk's findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrations: Option<Preview>,
    /// What Helm will change in Kubernetes (a deploy that runs Helm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifests: Option<crate::cluster::manifests::ManifestDiff>,
    pub steps: Vec<Step>,
}

/// A step as run, in deploy's and rollback's `--json`: one shape for both.
#[derive(Debug, Clone, Serialize)]
pub struct StepJson {
    /// `StepKind::name`, as the plan's steps are named.
    pub name: &'static str,
    pub seconds: f64,
    /// What it produced, in a few words (deploy's summary column).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What a plan decided; in `--json` as the words the text shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    #[serde(rename = "deploy")]
    Deploy,
    #[serde(rename = "nothing to deploy")]
    NothingToDeploy,
    #[serde(rename = "rollback")]
    Rollback,
    /// `rehearse`: a rehearsal will run.
    #[serde(rename = "rehearse")]
    Rehearse,
    /// A rollback whose target the database is at already (or a
    /// rehearsal with no pending migration).
    #[serde(rename = "nothing to do")]
    NothingToDo,
    /// A plan that cannot run: `missing` says why.
    #[serde(rename = "refused")]
    Refused,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Deploy => "deploy",
            Verdict::NothingToDeploy => "nothing to deploy",
            Verdict::Rollback => "rollback",
            Verdict::NothingToDo => "nothing to do",
            Verdict::Rehearse => "rehearse",
            Verdict::Refused => "refused",
        })
    }
}

fn facts_as_map<S: serde::Serializer>(
    facts: &[(&'static str, String)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(facts.len()))?;
    for (key, value) in facts {
        map.serialize_entry(key, value)?;
    }
    map.end()
}

/// One step: what the executor does (`action`, with all it needs), shown
/// to the user as `title` and `items`.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// In `--json`, the step's name (`StepKind::name`); the payload is the
    /// executor's, shown through `items`.
    #[serde(rename = "kind", serialize_with = "action_name")]
    pub action: Action,
    pub title: String,
    /// Runs at the same time as the step before it.
    pub alongside_previous: bool,
    pub items: Vec<Item>,
}

impl Step {
    pub fn kind(&self) -> StepKind {
        self.action.kind()
    }
}

fn action_name<S: serde::Serializer>(action: &Action, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(action.kind().name())
}

/// What a step does, with everything the executor needs: the executor
/// matches on this and never reads a step's displayed argvs back.
/// Values only execution learns (digests, the backup's path) are filled
/// in from the steps before it.
#[derive(Debug, Clone)]
pub enum Action {
    /// Build and push what the registry lacks (or, with `use_existing`,
    /// only read the digests).
    Images {
        tags: Vec<(Component, String)>,
        runner: Option<RunnerPlan>,
        builder: Choice,
        use_existing: bool,
    },
    /// `--images-from`: no build; the images another environment runs are
    /// copied by digest where they live in another repository.
    PromoteImages {
        copies: Vec<ImageCopy>,
    },
    /// `scripts/backup-db.sh` with this argv (which database it dumps).
    Backup {
        argv: Vec<String>,
    },
    /// `helm upgrade --install`: `pinned` digests not yet known come from
    /// the images step, the record's backup path from the backup step.
    HelmUpgrade {
        pinned: Vec<PinnedImage>,
        record: DeployRecord,
        helm_major: u32,
        /// The revision Helm will create.
        revision: u32,
        /// The database's revision the plan was made on: read again just
        /// before Helm, which must not run on another (None: unknown then).
        database_before: Option<String>,
    },
    /// The pending migrations on a restore of the backup, with the new
    /// backend image (`backend`'s digest from the images step): upgrade,
    /// downgrade to `from`, upgrade to `head` again.
    Rehearse {
        backend: PinnedImage,
        from: String,
        head: String,
    },
    /// Our own watch after Helm's: the newest ReplicaSet ready.
    Rollout,
    /// `alembic downgrade` in `pod`, then `check` must report `target`.
    Downgrade {
        pod: String,
        target: String,
        /// The head the running app expects (its init container's target).
        app_expects: String,
        downgrade: Vec<String>,
        check: Vec<String>,
    },
    /// `helm rollback`, then the returned revision's pods ready.
    HelmRollback {
        argv: Vec<String>,
        /// The database's target, for the message if Helm fails.
        target: String,
        /// The revision the rollback creates.
        revision: u32,
    },
    /// The expected head annotated where verify reads it.
    RecordHead {
        argv: Vec<String>,
        head: String,
    },
    Verify {
        expectation: Expectation,
    },
}

impl Action {
    pub fn kind(&self) -> StepKind {
        match self {
            Action::Images { .. } => StepKind::Images,
            Action::PromoteImages { .. } => StepKind::PromoteImages,
            Action::Backup { .. } => StepKind::Backup,
            Action::Rehearse { .. } => StepKind::Rehearse,
            Action::HelmUpgrade { .. } => StepKind::HelmUpgrade,
            Action::Rollout => StepKind::Rollout,
            Action::Downgrade { .. } => StepKind::Downgrade,
            Action::HelmRollback { .. } => StepKind::HelmRollback,
            Action::RecordHead { .. } => StepKind::RecordHead,
            Action::Verify { .. } => StepKind::Verify,
        }
    }
}

/// One image of a promotion copied by digest, repository to repository.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageCopy {
    pub component: Component,
    pub from: String,
    pub to: String,
    pub digest: String,
}

/// The names of the steps, as plans and runs report them (the tests hold
/// a run's list equal to its dry run's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    Images,
    PromoteImages,
    Backup,
    Rehearse,
    HelmUpgrade,
    Rollout,
    Downgrade,
    HelmRollback,
    RecordHead,
    Verify,
}

impl StepKind {
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Images => "images",
            StepKind::PromoteImages => "promote-images",
            StepKind::Backup => "backup",
            StepKind::Rehearse => "rehearse",
            StepKind::HelmUpgrade => "helm-upgrade",
            StepKind::Rollout => "rollout",
            StepKind::Downgrade => "downgrade",
            StepKind::HelmRollback => "helm-rollback",
            StepKind::RecordHead => "record-head",
            StepKind::Verify => "verify",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Item {
    /// A process, as argv, and what its output must show.
    Run {
        argv: Vec<String>,
        expect: Option<String>,
    },
    /// Work done in-process (Docker Engine API calls) or a rule.
    Note { text: String },
}

pub(crate) fn run(argv: Vec<String>, expect: Option<&str>) -> Item {
    Item::Run {
        argv,
        expect: expect.map(String::from),
    }
}

pub(crate) fn note(text: impl Into<String>) -> Item {
    Item::Note { text: text.into() }
}

/// Back up the database `source` names, with the script's exact argv.
pub fn backup_step(env: &Environment, source: &backup::Source, title: &str) -> Step {
    let argv = backup::script_args(env, source);
    Step {
        title: title.to_string(),
        alongside_previous: false,
        items: vec![
            run(argv.clone(), Some("last line: the backup file's path")),
            note(format!("dumps {}", source.describe())),
        ],
        action: Action::Backup { argv },
    }
}

/// Verify the newest pods against the expectation (the record's head).
pub fn verify_step(env: &Environment, expectation: Expectation) -> Step {
    let pod = "<newest backend pod>";
    Step {
        title: "Verify the newest pods".into(),
        alongside_previous: false,
        items: vec![
            run(
                kubectl::alembic_current_args(env, pod),
                Some(&format!("{} (head)", expectation.head)),
            ),
            run(
                kubectl::migrations_log_args(env, pod),
                Some("last line: Migrations complete."),
            ),
        ],
        action: Action::Verify { expectation },
    }
}

impl Plan {
    /// The plan as text: what `--dry-run` prints, and what a real run
    /// prints before it asks and executes.
    pub fn render(&self, dry_run: bool) -> String {
        let mut out = String::new();
        let title = self.command.title();
        let _ = writeln!(
            out,
            "{title} for {}{}\n",
            self.environment,
            if dry_run {
                " (dry run: nothing below is executed)"
            } else {
                ""
            }
        );
        for (key, value) in &self.facts {
            let _ = writeln!(out, "  {key:<13}{value}");
        }
        if !self.missing.is_empty() {
            let _ = writeln!(
                out,
                "\nMissing (a real {} stops here until these are fixed):",
                self.command
            );
            for item in &self.missing {
                let _ = writeln!(out, "  ! {item}");
            }
        }
        let _ = writeln!(out, "\nDecision: {}: {}", self.decision, self.reason);
        if !self.schema.is_empty() {
            let _ = writeln!(out, "\nSchema:");
            for line in &self.schema {
                let _ = writeln!(out, "  {line}");
            }
        }
        if let Some(migrations) = &self.migrations {
            let _ = write!(out, "\nMigrations: {}", migrations.render());
        }
        if let Some(manifests) = &self.manifests {
            let _ = write!(out, "\nManifests: {}", manifests.render());
        }
        for (number, step) in self.steps.iter().enumerate() {
            let _ = writeln!(out, "\n{}. {}", number + 1, step.title);
            for item in &step.items {
                match item {
                    Item::Run { argv, expect } => {
                        let _ = writeln!(
                            out,
                            "   $ {}",
                            crate::process::display_argv_wrapped(argv, "       ")
                        );
                        if let Some(expect) = expect {
                            let _ = writeln!(out, "     expect: {expect}");
                        }
                    }
                    // An indented note continues the one above it.
                    Item::Note { text } if text.starts_with(' ') => {
                        let _ = writeln!(out, "   {text}");
                    }
                    Item::Note { text } => {
                        let _ = writeln!(out, "   - {text}");
                    }
                }
            }
        }
        backend_migrations::redact::mask_all(&out)
    }

    /// Shows the plan: `--dry-run` prints it (JSON with `--json`) on stdout;
    /// a real run prints it before asking, on stderr when stdout is JSON.
    /// A plan that cannot run, with what is known and why: shown and
    /// printed as any plan, so every command refuses the same way.
    /// A plan with its decision and no steps, nothing missing, nothing
    /// said of the schema; a decider adds what it has.
    pub fn without_steps(
        command: Command,
        environment: &str,
        facts: Vec<(&'static str, String)>,
        decision: Verdict,
        reason: String,
    ) -> Plan {
        Plan {
            command,
            environment: environment.to_string(),
            facts,
            missing: Vec::new(),
            decision,
            reason,
            schema: Vec::new(),
            migrations: None,
            manifests: None,
            steps: Vec::new(),
        }
    }

    pub fn refused(
        command: Command,
        environment: &str,
        facts: Vec<(&'static str, String)>,
        why: Vec<String>,
    ) -> Plan {
        let reason = format!("{} problem(s) below", why.len());
        Plan {
            missing: why,
            ..Plan::without_steps(command, environment, facts, Verdict::Refused, reason)
        }
    }

    /// The refusal (exit 2, nothing changed) when anything is missing.
    pub fn refuse_if_missing(&self) -> anyhow::Result<()> {
        if self.missing.is_empty() {
            return Ok(());
        }
        let verb = self.command.verb();
        Err(crate::error::input_error(format!(
            "cannot {verb} {}; nothing was changed:\n  - {}\n  the same command with --dry-run shows the whole plan",
            self.environment,
            self.missing.join("\n  - "),
        )))
    }

    pub fn show(&self, dry_run: bool, json: bool) -> anyhow::Result<()> {
        match (dry_run, json) {
            (true, true) => crate::report::print_json(self)?,
            (true, false) => print!("{}", self.render(true)),
            (false, true) => eprint!("{}", self.render(false)),
            (false, false) => print!("{}", self.render(false)),
        }
        Ok(())
    }

    /// The plan before a run: shown, except under `-q --yes`, where nobody
    /// reads it before it runs (the summary says what ran).
    pub fn show_before_running(&self, json: bool, yes: bool) -> anyhow::Result<()> {
        if yes && crate::progress::verbosity() == crate::progress::Verbosity::Quiet {
            return Ok(());
        }
        self.show(false, json)
    }

    /// The step kinds in order: what a run of this plan reports it ran.
    #[cfg(test)]
    pub fn step_names(&self) -> Vec<&'static str> {
        self.steps.iter().map(|s| s.kind().name()).collect()
    }

    /// Consecutive steps that run together (`alongside_previous`).
    pub fn groups(&self) -> Vec<Vec<&Step>> {
        let mut groups: Vec<Vec<&Step>> = Vec::new();
        for step in &self.steps {
            match groups.last_mut() {
                Some(group) if step.alongside_previous => group.push(step),
                _ => groups.push(vec![step]),
            }
        }
        groups
    }
}
