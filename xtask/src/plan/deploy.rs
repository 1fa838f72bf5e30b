//! The deploy plan: `DeployFacts` (read-only, gathered by
//! `commands::deploy`) + options → `Plan`. No-op detection,
//! the backup decision, the schema lines, what is missing (every refusal).
//! Pure.

use backend_migrations::revisions::RevisionGraph;

use crate::alembic::database::DatabaseRevision;
use crate::alembic::preview::{self, Preview, Range};
use crate::alembic::versions::{self, VersionsError};
use crate::cluster::helm::{self, DeployRecord, HelmVersion, PinnedImage};
use crate::cluster::kubectl;
use crate::cluster::manifests::ManifestDiff;
use crate::cluster::release::{Current, ReleaseStatus};
use crate::config::git::Commit;
use crate::config::{Component, Environment, PushMethod, RehearsalEngine};
use crate::error::{Fact, FactError};
use crate::images::builder::Builder;
use crate::images::runner::RunnerPlan;

use super::{note, run, verify_step, Action, Command, ImageCopy, Plan, Step, Verdict};
use crate::verify::{Expectation, Source};

/// What was learned before planning, all read-only: the checkout, the
/// registry, the release and the database.
#[derive(Debug, Clone)]
pub struct DeployFacts {
    pub commit: Option<Commit>,
    pub images: Vec<ImageFacts>,
    /// The checkout's Alembic revision graph, or why it cannot be read.
    pub graph: Result<RevisionGraph, VersionsError>,
    pub helm: Option<HelmVersion>,
    pub chart_exists: bool,
    pub backup_script_exists: bool,
    /// Why dumps cannot go to backup_dir (`backup::dir_problem`), if so.
    pub backup_dir_problem: Option<String>,
    /// Seconds an init container waits for the migration lock
    /// (`values::migration_lock_wait`), if the chart or values say.
    pub migration_lock_wait: Option<u64>,
    /// `inputs::hash` of the chart and values files.
    pub inputs_hash: Fact<String>,
    /// The cluster's side, or why it could not be read (a refusal).
    pub cluster: Fact<ClusterFacts>,
    /// `DATABASE_URL` is set: the backup script dumps that (external) database.
    pub external_database: bool,
    /// The values file that sets `database.mode: external` (None: the
    /// chart's in-chart database).
    pub external_mode_file: Option<std::path::PathBuf>,
    /// What the Docker daemon says (`docker info`; needed when an image must
    /// be built, and reused by the image stage), or why it does not answer.
    pub daemon: Fact<crate::images::registry::DaemonView>,
    /// The SQL the pending migrations run, rendered offline and linted.
    pub migrations: Preview,
    /// The run-migrations binary for the backend image's platform, or why
    /// none can be had (a refusal when the backend must be built).
    pub runner: Fact<RunnerPlan>,
    /// BuildKit or the legacy builder, and why (`builder::choose`).
    pub builder: crate::images::builder::Choice,
    /// The Docker daemon's address (`unix:///…`, `tcp://…`, `ssh://…`).
    pub docker_host: String,
    /// What Helm would change (`upgrade_argv` rendered; None: not compared,
    /// as for nothing to deploy).
    pub manifests: Option<crate::cluster::manifests::ManifestDiff>,
    /// `--images-from`: the digests come from another environment's release.
    pub promotion: Option<Promotion>,
}

/// `deploy --images-from OTHER`: the images OTHER's running release
/// recorded (their digests are in `DeployFacts::images`).
#[derive(Debug, Clone, PartialEq)]
pub struct Promotion {
    pub from: String,
    /// The commit they were built from.
    pub git_sha: String,
    /// (component, repository, digest).
    pub images: Vec<(Component, String, String)>,
}

/// The checkout must be the commit the promoted images were built from:
/// its migrations are what the plan previews, lints and rehearses. Pure.
fn promotion_problem(facts: &DeployFacts) -> Option<String> {
    let promotion = facts.promotion.as_ref()?;
    let short = |sha: &str| sha[..sha.len().min(12)].to_string();
    let here = facts.commit.as_ref().map(|c| c.sha.as_str());
    (here != Some(promotion.git_sha.as_str())).then(|| {
        format!(
            "--images-from {}: its images were built from commit {}, the checkout is at {}; `git checkout {}` \
             first, so that the plan previews, lints and rehearses the migrations those images hold",
            promotion.from,
            short(&promotion.git_sha),
            here.map_or("no commit".to_string(), short),
            short(&promotion.git_sha)
        )
    })
}

#[derive(Debug, Clone)]
pub struct ImageFacts {
    pub component: Component,
    /// None when there is no commit to tag from.
    pub tag: Option<String>,
    /// Why git could not tell the tag (the registry was then not asked).
    pub tag_problem: Option<FactError>,
    pub context_exists: bool,
    pub dockerfile_exists: bool,
    /// What its Dockerfile asks of the builder (BuildKit syntax).
    pub needs: crate::images::builder::Needs,
    /// The registry's digest for `tag`: Ok(None) when it does not hold it.
    pub registry_digest: Fact<Option<String>>,
}

#[derive(Debug, Clone)]
pub struct ClusterFacts {
    /// None: the release is not installed.
    pub release: Option<Current>,
    pub database: DatabaseRevision,
    /// Verify's reads of the running pods, started with the facts: a no-op
    /// verifies with them; a deploy stops them.
    pub observed: Option<crate::verify::Prefetch>,
    /// An in-chart database pod of this release exists (matters before a
    /// first install: there may be data to back up).
    pub database_pod: Option<crate::cluster::database::DatabasePod>,
    /// The environment's deploy lock; None: free.
    pub lock: Option<super::LockFact>,
}

/// How the user asked to deploy.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeployOptions {
    pub force: bool,
    pub skip_build: bool,
    pub no_backup: bool,
    /// Squawk's findings refuse the deploy (`--strict-migrations`), and so
    /// do migrations that could not be linted or rehearsed.
    pub strict_migrations: bool,
    /// `--no-rehearsal`.
    pub no_rehearsal: bool,
    /// `--wait-for-lock`: the lock was taken (waited for) before the facts.
    pub wait_for_lock: bool,
}

/// What the steps are made of: the images and their pins, the record.
#[derive(Debug, Clone)]
struct DeploySpec {
    /// Component and tag of each image.
    tags: Vec<(Component, String)>,
    /// The digests the plan already knows (the registry holds the tag).
    pinned: Vec<PinnedImage>,
    record: DeployRecord,
    helm_major: u32,
    /// The release's revision before the deploy (0: first install).
    revision_before: u32,
    /// The runner that goes into the backend image, when it is built.
    pub runner: Option<RunnerPlan>,
    /// The builder the images are built with.
    pub builder: crate::images::builder::Choice,
    /// BuildKit pushes each image from its build (`images::pushes_from_build`).
    pushes_from_build: bool,
}

const FAILURE_STATES: &str =
    "Init:CrashLoopBackOff, Init:Error, ErrImagePull, ImagePullBackOff, CrashLoopBackOff";

/// Placeholders the executor fills in; the dry run shows them as they are.
/// Shown in a plan where the backup's path will be once it is taken.
pub const BACKUP_PLACEHOLDER: &str = "<path printed by the backup>";

/// Decides the deploy. Pure.
pub fn decide(env: &Environment, facts: &DeployFacts, options: DeployOptions) -> Plan {
    let head = expected_head(facts);
    let spec = deploy_spec(env, facts, &head);
    let mut missing = missing(env, facts, &head, options);
    let mut schema = schema_lines(facts, &head, &mut missing);
    let rehearsal = rehearsal(env, facts, &head, options);
    match &rehearsal {
        Rehearsal::Planned { .. } => missing.extend(engine_problem(env, facts)),
        Rehearsal::NotNeeded => {}
        Rehearsal::FreshDatabase(why) => schema.push(format!("not rehearsed: {why}")),
        Rehearsal::Skipped(why) => {
            schema.push(format!("not rehearsed: {why}"));
            if options.strict_migrations || env.migrations.strict {
                missing.push(format!(
                    "strict migrations: the pending migrations cannot be rehearsed ({why}); \
                     a deploy without --strict-migrations runs them unrehearsed"
                ));
            }
        }
    }
    schema.extend(lock_wait_outlasts_helm(env, facts));
    let (decision, reason, steps) = match nothing_to_deploy(env, facts, options) {
        // Verify what runs: the running revision's recorded head.
        Some((reason, recorded_head)) => (
            Verdict::NothingToDeploy,
            reason,
            vec![verify_step(
                env,
                expect(recorded_head, spec.revision_before),
            )],
        ),
        None => {
            let (backup, why_backup) = backup_decision(facts, options);
            let mut steps = vec![match &facts.promotion {
                Some(promotion) => promote_step(env, promotion),
                None => images_step(env, &spec, options),
            }];
            if backup {
                steps.push(backup_step(env, facts, Command::Deploy));
            }
            if let Rehearsal::Planned { from, head } = &rehearsal {
                steps.push(rehearse_step(env, &spec, from, head));
            }
            let database_before = database_of(&facts.cluster).revision().map(String::from);
            steps.push(helm_step(env, &spec, backup, database_before));
            steps.push(rollout_step(env));
            steps.push(verify_step(
                env,
                expect(
                    head.clone().unwrap_or_else(|_| "<unknown>".into()),
                    spec.revision_before.saturating_add(1),
                ),
            ));
            (Verdict::Deploy, why_backup, steps)
        }
    };
    if let (Verdict::Deploy, Some(ManifestDiff::Rejected { why })) = (&decision, &facts.manifests) {
        missing.push(format!(
            "{why}\n  (Helm would refuse it too, after the push and the backup: fix the values files or deploy.toml)"
        ));
    }
    let manifests = match decision {
        Verdict::Deploy => facts.manifests.clone(),
        // Same chart, values and digests as the running revision (that is
        // what nothing to deploy means): nothing to render to know it.
        Verdict::NothingToDeploy => Some(ManifestDiff::Changes {
            revision: facts
                .cluster
                .as_ref()
                .ok()
                .and_then(|c| c.release.as_ref())
                .map_or(0, |r| r.revision),
            objects: Vec::new(),
        }),
        _ => None,
    };
    Plan {
        missing,
        schema,
        migrations: Some(facts.migrations.clone()),
        manifests,
        steps,
        ..Plan::without_steps(
            Command::Deploy,
            &env.name,
            fact_lines(env, facts, &head),
            decision,
            reason,
        )
    }
}

/// Whether the pending migrations are rehearsed before Helm, and if not, why.
#[derive(Debug, Clone, PartialEq)]
enum Rehearsal {
    /// From the database's revision (or the stamp a pre-Alembic schema
    /// gets) to the head.
    Planned { from: String, head: String },
    /// No migration is pending (or none is a deploy).
    NotNeeded,
    /// No data to rehearse on (a first install over no database): said,
    /// never refused.
    FreshDatabase(String),
    /// Migrations are pending and cannot be rehearsed: why (strict refuses).
    Skipped(String),
}

/// Decides the rehearsal: pending migrations, a backup to restore, a
/// revision to go back to, and not turned off.
fn rehearsal(
    env: &Environment,
    facts: &DeployFacts,
    head: &Fact<String>,
    options: DeployOptions,
) -> Rehearsal {
    let (Ok(graph), Ok(head)) = (&facts.graph, head) else {
        return Rehearsal::Skipped("the checkout's Alembic head is unknown".into());
    };
    let database = database_of(&facts.cluster);
    let (stamp, from) = match preview::range(graph, head, &database) {
        Range::NoMigrations { .. } => return Rehearsal::NotNeeded,
        Range::Upgrade { stamp, from, .. } => (stamp, from),
        Range::Unavailable { why } => {
            return match first_install_without_data(facts) {
                true => Rehearsal::FreshDatabase("a first install: there is no data yet".into()),
                false => {
                    Rehearsal::Skipped(format!("which migrations are pending is unknown: {why}"))
                }
            }
        }
    };
    let (backup, why_backup) = backup_decision(facts, options);
    let why_not = if options.no_rehearsal {
        Some("--no-rehearsal".to_string())
    } else if !env.rehearsal.enabled {
        Some(format!(
            "rehearsal.enabled = false in {}",
            env.config_file.display()
        ))
    } else if !backup {
        Some(format!("no backup to restore ({why_backup})"))
    } else {
        None
    };
    match (why_not, from.or(stamp)) {
        (Some(why), _) if first_install_without_data(facts) => Rehearsal::FreshDatabase(why),
        (Some(why), _) => Rehearsal::Skipped(why),
        (None, Some(from)) => Rehearsal::Planned {
            from,
            head: head.clone(),
        },
        (None, None) => {
            Rehearsal::FreshDatabase("an empty database: no revision to return to".into())
        }
    }
}

/// The local engine mounts its socket's directory into the backend's
/// containers, so the Docker daemon must run on this machine.
fn engine_problem(env: &Environment, facts: &DeployFacts) -> Option<String> {
    let local = matches!(env.rehearsal.engine, RehearsalEngine::Local { .. });
    (local && !facts.docker_host.starts_with("unix://")).then(|| {
        format!(
            "rehearsal.engine = \"local\" runs PostgreSQL on this machine and mounts its socket into the backend image's containers, but the Docker daemon is at {}: use engine = \"container\" (it works with any daemon) or a local daemon",
            backend_migrations::redact::mask_all(&facts.docker_host)
        )
    })
}

/// `cargo xtask rehearse`: a fresh backup, then the rehearsal of the
/// pending migrations with the backend image of this commit, which must be
/// in the registry already (nothing is built). Pure.
pub fn decide_rehearsal(env: &Environment, facts: &DeployFacts) -> Plan {
    let head = expected_head(facts);
    let spec = deploy_spec(env, facts, &head);
    let options = DeployOptions::default();
    let mut missing = Vec::new();
    if let Err(why) = &facts.cluster {
        missing.push(why.to_string());
    }
    missing.extend(checkout_problems(env, facts, &head));
    let backend = spec
        .pinned
        .iter()
        .find(|p| p.component == Component::Backend);
    if let Some(backend) = backend.filter(|p| p.digest.is_none()) {
        missing.push(format!(
            "the backend image {}:{} is not in the registry: `cargo xtask push {}` first (a rehearsal builds nothing)",
            backend.repository, backend.tag, env.name
        ));
    }
    let mut schema = schema_lines(facts, &head, &mut missing);
    let planned = rehearsal(env, facts, &head, options);
    if let Rehearsal::Planned { .. } = planned {
        missing.extend(engine_problem(env, facts));
    }
    let (decision, reason, steps) = match planned {
        Rehearsal::Planned { from, head } => (
            Verdict::Rehearse,
            format!("{from} -> {head} on a restore of a fresh backup"),
            vec![
                backup_step(env, facts, Command::Rehearse),
                rehearse_step(env, &spec, &from, &head),
            ],
        ),
        Rehearsal::NotNeeded => (
            Verdict::NothingToDo,
            "no migration is pending".to_string(),
            Vec::new(),
        ),
        Rehearsal::FreshDatabase(why) | Rehearsal::Skipped(why) => {
            schema.push(format!("not rehearsed: {why}"));
            missing.push(format!("the pending migrations cannot be rehearsed: {why}"));
            (Verdict::Refused, why, Vec::new())
        }
    };
    Plan {
        missing,
        schema,
        migrations: Some(facts.migrations.clone()),
        steps,
        ..Plan::without_steps(
            Command::Rehearse,
            &env.name,
            fact_lines(env, facts, &head),
            decision,
            reason,
        )
    }
}

/// The `helm upgrade --install` argv a deploy would run (digests not yet
/// pushed as placeholders), for the manifest diff; None when there would be
/// nothing to deploy (no Helm call to compare). Pure.
pub fn upgrade_argv(
    env: &Environment,
    facts: &DeployFacts,
    options: DeployOptions,
) -> Option<(Vec<String>, serde_json::Value)> {
    if nothing_to_deploy(env, facts, options).is_some() {
        return None;
    }
    let head = expected_head(facts);
    let spec = deploy_spec(env, facts, &head);
    let (backup, _) = backup_decision(facts, options);
    let step = helm_step(env, &spec, backup, None);
    match step.action {
        Action::HelmUpgrade {
            pinned,
            record,
            helm_major,
            ..
        } => Some((
            helm::upgrade_install_args(env, helm_major),
            helm::tool_values(
                env,
                &pinned,
                &record,
                spec.revision_before.saturating_add(1),
            ),
        )),
        _ => None,
    }
}

/// Nothing installed and no database to back up.
fn first_install_without_data(facts: &DeployFacts) -> bool {
    facts.cluster.as_ref().is_ok_and(|c| {
        c.release.is_none()
            && c.database_pod.is_none()
            && !facts.external_database
            && facts.external_mode_file.is_none()
    })
}

/// A deploy verifies against the head the revision's record holds.
fn expect(head: String, revision: u32) -> Expectation {
    Expectation {
        head,
        source: Source::DeployRecord { revision },
    }
}

fn expected_head(facts: &DeployFacts) -> Fact<String> {
    versions::with_head(&facts.graph)
        .map(|(_, head)| head)
        .map_err(|e| FactError::of(&e))
}

/// The database's revision as the cluster's facts have it.
pub fn database_of(cluster: &Fact<ClusterFacts>) -> DatabaseRevision {
    match cluster {
        Ok(cluster) => cluster.database.clone(),
        Err(_) => DatabaseRevision::Unknown {
            why: "the cluster could not be read".into(),
        },
    }
}

fn deploy_spec(env: &Environment, facts: &DeployFacts, head: &Fact<String>) -> DeploySpec {
    let tags: Vec<(Component, String)> = env
        .images
        .iter()
        .map(|image| {
            let tag = image_facts(facts, image.component)
                .and_then(|f| f.tag.clone())
                .unwrap_or_else(|| "<no commit to tag from>".into());
            (image.component, tag)
        })
        .collect();
    let pinned = env
        .images
        .iter()
        .zip(&tags)
        .map(|(image, (_, tag))| PinnedImage {
            component: image.component,
            repository: image.reference.clone(),
            tag: tag.clone(),
            digest: image_facts(facts, image.component)
                .and_then(|f| f.registry_digest.clone().ok().flatten()),
        })
        .collect();
    let cluster = facts.cluster.as_ref().ok();
    let head = head.clone().unwrap_or_else(|_| "<unknown>".into());
    DeploySpec {
        tags,
        pinned,
        record: DeployRecord {
            git_sha: facts
                .commit
                .as_ref()
                .map_or("<no commit>".into(), |c| c.sha.clone()),
            alembic_head: head,
            // The backup step's path, known once it ran.
            backup_file: String::new(),
            inputs_hash: facts.inputs_hash.clone().unwrap_or_default(),
            // The rehearsal's summary, known once it ran.
            rehearsal: String::new(),
        },
        helm_major: facts.helm.as_ref().map_or(4, |h| h.major),
        revision_before: cluster
            .and_then(|c| c.release.as_ref())
            .map_or(0, |r| r.revision),
        runner: facts.runner.clone().ok(),
        builder: facts.builder.clone(),
        pushes_from_build: facts.daemon.as_ref().is_ok_and(|daemon| {
            crate::images::pushes_from_build(
                crate::images::Mode::Push,
                env.image_push,
                facts.builder.builder,
                daemon.builds_by_session_into_containerd(),
            )
        }),
    }
}

fn image_facts(facts: &DeployFacts, component: Component) -> Option<&ImageFacts> {
    facts.images.iter().find(|f| f.component == component)
}

/// Why nothing needs deploying, if nothing does: the registry holds this
/// commit's images with the digests the release runs, the chart and values
/// are the ones it was deployed with, and it is healthy (`deployed`).
pub fn nothing_to_deploy(
    env: &Environment,
    facts: &DeployFacts,
    options: DeployOptions,
) -> Option<(String, String)> {
    if options.force {
        return None;
    }
    let release = facts.cluster.as_ref().ok()?.release.as_ref()?;
    if release.status != ReleaseStatus::Deployed {
        return None;
    }
    let record = &release.record;
    let inputs = facts.inputs_hash.as_ref().ok()?;
    if record.inputs_hash.is_empty() || &record.inputs_hash != inputs {
        return None;
    }
    for image in &env.images {
        let digest = image_facts(facts, image.component)?
            .registry_digest
            .as_ref()
            .ok()?
            .as_ref()?;
        if record.image(image.component) != format!("{}@{digest}", image.reference) {
            return None;
        }
    }
    Some((
        format!(
            "revision {} already runs these images (same digests), chart and values; `--force` deploys anyway",
            release.revision
        ),
        record.alembic_head.clone(),
    ))
}

/// Back up whenever the release changes and there is a database: every
/// upgrade, and a first install beside an existing database.
fn backup_decision(facts: &DeployFacts, options: DeployOptions) -> (bool, String) {
    if options.no_backup {
        return (false, "deploy without a backup (--no-backup)".into());
    }
    if first_install_without_data(facts) {
        return (
            false,
            "first install: no database pod and no DATABASE_URL, so nothing to back up".into(),
        );
    }
    let Ok(cluster) = &facts.cluster else {
        return (true, "back up, then deploy".into());
    };
    match &cluster.release {
        Some(release) => (
            true,
            format!(
                "upgrade revision {} ({}): back up first",
                release.revision, release.status
            ),
        ),
        None if cluster.database_pod.is_some() => (
            true,
            "first install beside an existing database pod: back it up first".into(),
        ),
        // Not `first_install_without_data`: the data is external.
        None => (
            true,
            "first install with an external database (DATABASE_URL): back it up first".into(),
        ),
    }
}

/// What the deploy does to the schema, from the database's revision to the
/// checkout's head; a database these scripts cannot migrate blocks the plan.
/// Which revisions run is `preview::range`'s decision (the preview
/// shows their SQL); this only says it in words.
fn schema_lines(
    facts: &DeployFacts,
    head: &Fact<String>,
    missing: &mut Vec<String>,
) -> Vec<String> {
    let (Ok(graph), Ok(head)) = (&facts.graph, head) else {
        return vec!["unknown: the checkout's Alembic head is unknown".into()];
    };
    let database = database_of(&facts.cluster);
    match preview::range(graph, head, &database) {
        Range::NoMigrations { .. } => {
            vec![format!("unchanged: the database is at {head} already")]
        }
        Range::Upgrade {
            stamp,
            from,
            revisions,
            ..
        } => std::iter::once(upgrade_lead(stamp, from, &database, &revisions))
            .chain(
                revisions
                    .iter()
                    .map(|id| match versions::message(graph, id) {
                        m if m.is_empty() => format!("apply {id}"),
                        m => format!("apply {id}: {m}"),
                    }),
            )
            .collect(),
        Range::Unavailable { why } => match &database {
            DatabaseRevision::At { revision } => {
                missing.push(format!(
                    "the database is at {revision}, which this checkout's migrations do not know (they end at {head}): \
                     a newer build migrated it, and this build's init container would refuse to start. Deploy that \
                     build, or roll the schema back with the release that knows it (`cargo xtask rollback --to {head}`)"
                ));
                vec![format!(
                    "refused: the database is at {revision}, unknown to these scripts"
                )]
            }
            DatabaseRevision::Unknown { why } => vec![format!(
                "database revision unknown ({why}); the init container will bring it to {head}"
            )],
            DatabaseRevision::NoRevision { .. } => vec![format!("unknown: {why}")],
        },
    }
}

/// The line before the revisions an upgrade applies: where it starts.
fn upgrade_lead(
    stamp: Option<String>,
    from: Option<String>,
    database: &DatabaseRevision,
    revisions: &[String],
) -> String {
    match (stamp, from, database) {
        (
            Some(base),
            _,
            DatabaseRevision::NoRevision {
                legacy_tables: Some(tables),
            },
        ) => format!(
            "a pre-Alembic schema ({}): the init container will stamp {base}, then",
            tables.join(", ")
        ),
        (_, Some(revision), _) => format!("the database is at {revision}; the init container will"),
        (
            _,
            None,
            DatabaseRevision::NoRevision {
                legacy_tables: Some(_),
            },
        ) => "an empty database: the init container will".to_string(),
        (_, None, _) => format!(
            "no Alembic revision: the init container will stamp {} first if it finds the pre-Alembic tables, then",
            revisions.first().map_or("", String::as_str)
        ),
    }
}

fn images_step(env: &Environment, spec: &DeploySpec, options: DeployOptions) -> Step {
    let mut items = Vec::new();
    for (image, pinned) in env.images.iter().zip(&spec.pinned) {
        let reference = format!("{}:{}", pinned.repository, pinned.tag);
        if let Some(digest) = &pinned.digest {
            items.push(note(format!(
                "{:<8} {reference} is in the registry ({digest}): nothing to build or push",
                image.component
            )));
            continue;
        }
        if options.skip_build {
            items.push(note(format!(
                "{:<8} {reference} must already be in the registry (--skip-build)",
                image.component
            )));
            continue;
        }
        let context = image.context.display();
        items.push(note(format!(
            "{:<8} build context {context}/, Dockerfile {context}/{}, push -> {reference}",
            image.component,
            image.dockerfile.display(),
        )));
        if !image.build_args.is_empty() {
            // Keys only: values may be tokens.
            let keys: Vec<&str> = image.build_args.keys().map(String::as_str).collect();
            items.push(note(format!("           build args: {}", keys.join(", "))));
        }
        if !image.secrets.is_empty() {
            // Where each comes from, never its value.
            let from: Vec<String> = image
                .secrets
                .iter()
                .map(|(id, source)| format!("{id} from {source}"))
                .collect();
            items.push(note(format!(
                "           build secrets: {} (mounted by RUN only, in no layer)",
                from.join(", ")
            )));
        }
        if let (true, Some(runner)) = (image.component == Component::Backend, &spec.runner) {
            items.push(note(format!(
                "           one build, the Dockerfile with `COPY run-migrations` appended: {}",
                runner.describe()
            )));
        }
        if let Some(platform) = &image.platform {
            items.push(note(format!("           for {platform}")));
        }
        if image.also_tag_latest {
            items.push(note(format!(
                "           also tagged {}:latest",
                pinned.repository
            )));
        }
    }
    match env.image_push {
        _ if spec.pushes_from_build => items.push(note(
            "pushed by BuildKit from the build (the daemon keeps images in containerd): each new \
             layer gzipped at the fastest level, layers the registry has not sent again \
             (images.push = \"docker\" keeps the daemon's own push)",
        )),
        PushMethod::Fast => items.push(note(
            "pushed by this tool from the daemon's export (images.push = \"fast\"): each layer \
             gzipped at the fastest level, incompressible stretches stored",
        )),
        PushMethod::Auto => items.push(note(
            "pushed by the daemon; an image whose new layers are most of it (32 MiB or more) is \
             taken over by this tool's faster push (images.push = \"auto\")",
        )),
        PushMethod::Docker => {}
    }
    items.push(note(
        "each digest (sha256:…) is read back from the registry and pinned in the Helm command",
    ));
    Step {
        action: Action::Images {
            tags: spec.tags.clone(),
            runner: spec.runner.clone(),
            builder: spec.builder.clone(),
            use_existing: options.skip_build,
        },
        title: format!(
            "Build and push the images that the registry lacks (Docker Engine API, {}, both at once)",
            match spec.builder.builder {
                Builder::BuildKit => spec.builder.builder.to_string(),
                Builder::Legacy => format!("{}: {}", spec.builder.builder, spec.builder.why),
            }
        ),
        alongside_previous: false,
        items,
    }
}

/// `--images-from`: the other environment's digests, copied here where
/// they live in another repository, never built.
fn promote_step(env: &Environment, promotion: &Promotion) -> Step {
    let mut items = Vec::new();
    let mut copies = Vec::new();
    for (component, from, digest) in &promotion.images {
        let to = &env.image(*component).reference;
        if from == to {
            items.push(note(format!(
                "{component:<8} {to}@{digest}: what {} runs, promoted (no build, no push)",
                promotion.from
            )));
        } else {
            items.push(note(format!(
                "{component:<8} {from}@{digest}: what {} runs, copied by digest to {to} (no build; \
                 blobs it has are skipped)",
                promotion.from
            )));
            copies.push(ImageCopy {
                component: *component,
                from: from.clone(),
                to: to.clone(),
                digest: digest.clone(),
            });
        }
    }
    Step {
        title: format!("Promote the images {} runs, by digest", promotion.from),
        action: Action::PromoteImages { copies },
        alongside_previous: false,
        items,
    }
}

/// The deploy's backup runs beside the image stage; `rehearse`'s alone.
fn backup_step(env: &Environment, facts: &DeployFacts, command: Command) -> Step {
    let database_pod = facts
        .cluster
        .as_ref()
        .ok()
        .and_then(|c| c.database_pod.as_ref());
    let source = crate::database::backup::Source::choose(database_pod, facts.external_database);
    let (title, alongside_previous) = match command {
        Command::Rehearse => (
            "Back up the database (the rehearsal restores this file)",
            false,
        ),
        _ => (
            "Back up the database (alongside the images; must succeed before Helm)",
            true,
        ),
    };
    Step {
        alongside_previous,
        ..super::backup_step(env, &source, title)
    }
}

fn rehearse_step(env: &Environment, spec: &DeploySpec, from: &str, head: &str) -> Step {
    let backend = spec
        .pinned
        .iter()
        .find(|p| p.component == Component::Backend)
        .cloned()
        .expect("the backend is always pinned");
    let postgres = match (&env.rehearsal.engine, &env.rehearsal.image) {
        (RehearsalEngine::Container, Some(image)) => format!("a container of {image}, no network"),
        (RehearsalEngine::Container, None) => {
            "a container of postgres:<the backup's server major version>, no network".into()
        }
        (RehearsalEngine::Local { bin_dir: Some(dir) }, _) => {
            format!(
                "this machine's initdb/pg_ctl in {}, a socket only",
                dir.display()
            )
        }
        (RehearsalEngine::Local { bin_dir: None }, _) => {
            "this machine's initdb/pg_ctl of the backup's major version, a socket only".into()
        }
    };
    let alembic = env.alembic_command.join(" ");
    Step {
        title: "Rehearse the migrations on a restore of the backup (nothing of the release is touched)".into(),
        alongside_previous: false,
        items: vec![
            note(format!(
                "restore the backup into a throwaway PostgreSQL ({postgres}, removed after), count its tables and rows"
            )),
            note(format!(
                "the new backend image's run-migrations: {from} -> {head}, each revision timed, ACCESS EXCLUSIVE locks sampled"
            )),
            note(format!(
                "`{alembic} downgrade {from}` in the same image, then run-migrations again: the way back proven"
            )),
            note("a failure stops the deploy here: Helm is not run"),
        ],
        action: Action::Rehearse {
            backend,
            from: from.to_string(),
            head: head.to_string(),
        },
    }
}

fn helm_step(
    env: &Environment,
    spec: &DeploySpec,
    backup_planned: bool,
    database_before: Option<String>,
) -> Step {
    let mut record = spec.record.clone();
    if backup_planned {
        record.backup_file = BACKUP_PLACEHOLDER.into();
    }
    let mut items = Vec::new();
    if let Some(revision) = &database_before {
        items.push(note(format!(
            "first, the database's revision read again: still {revision}, or Helm is not run"
        )));
    }
    items.push(run(helm::upgrade_install_args(env, spec.helm_major), None));
    items.push(note(
        "the values below, as JSON (a private temporary file when Helm runs; the last -f, so they win over yours):",
    ));
    let values = helm::tool_values(
        env,
        &spec.pinned,
        &record,
        spec.revision_before.saturating_add(1),
    );
    items.extend(
        helm::values_lines(&values)
            .into_iter()
            .map(|line| note(format!("  {line}"))),
    );
    items.push(note(format!(
        "meanwhile, stop Helm at once on {FAILURE_STATES}: print the failing container's log, exit code and the pod's events"
    )));
    Step {
        title: "Install or upgrade the release, digests pinned, watching the new pods".into(),
        alongside_previous: false,
        items,
        action: Action::HelmUpgrade {
            pinned: spec.pinned.clone(),
            record,
            helm_major: spec.helm_major,
            revision: spec.revision_before.saturating_add(1),
            database_before,
        },
    }
}

fn rollout_step(env: &Environment) -> Step {
    Step {
        action: Action::Rollout,
        title: "Wait for the rollout of the newest ReplicaSet".into(),
        alongside_previous: false,
        items: vec![
            run(
                kubectl::backend_replicasets_args(env),
                Some("newest ReplicaSet's pod-template-hash"),
            ),
            run(
                kubectl::backend_pods_args(env),
                Some("its pods (that hash) all Ready, no pod of an older ReplicaSet left"),
            ),
        ],
    }
}

fn fact_lines(
    env: &Environment,
    facts: &DeployFacts,
    head: &Fact<String>,
) -> Vec<(&'static str, String)> {
    let sha = facts
        .commit
        .as_ref()
        .map_or("<no commit>".to_string(), |c| c.short.clone());
    let lock = facts
        .cluster
        .as_ref()
        .ok()
        .and_then(|c| c.lock.as_ref())
        .map(|l| l.describe.clone());
    let (release, database) = match &facts.cluster {
        Ok(cluster) => (
            match &cluster.release {
                Some(r) if r.record.has_head() => format!(
                    "revision {} ({}), deployed from {} with head {}",
                    r.revision,
                    r.status,
                    r.record.git_sha.chars().take(12).collect::<String>(),
                    r.record.alembic_head
                ),
                Some(r) => format!("revision {} ({}), no deploy record", r.revision, r.status),
                None => "not installed".into(),
            },
            cluster.database.describe(),
        ),
        Err(_) => ("unknown (see Missing)".into(), "unknown".into()),
    };
    vec![
        (
            "environment",
            format!("{} (from {})", env.name, env.config_file.display()),
        ),
        (
            "cluster",
            format!(
                "context {}, namespace {}, release {}",
                env.kube_context, env.namespace, env.release
            ),
        ),
        ("release", release),
        ("database", database),
        ("registry", env.registry.clone()),
        ("git commit", sha),
        (
            "Alembic head",
            format!(
                "{} (from {})",
                head.clone().unwrap_or_else(|_| "<unknown>".into()),
                env.alembic_versions.display()
            ),
        ),
        (
            "Alembic cmd",
            format!("{} (alembic_command)", env.alembic_command.join(" ")),
        ),
        (
            "helm",
            facts
                .helm
                .as_ref()
                .map_or("not found; planned for Helm 4".to_string(), |h| {
                    h.text.clone()
                }),
        ),
    ]
    .into_iter()
    // Shown only when someone holds it: a free lock is the usual case.
    .chain(lock.map(|l| ("deploy lock", l)))
    .collect()
}

/// Everything that refuses the deploy, in the order a user fixes them.
fn missing(
    env: &Environment,
    facts: &DeployFacts,
    head: &Fact<String>,
    options: DeployOptions,
) -> Vec<String> {
    let mut missing = build_problems(env, facts.image_step(), options.skip_build);
    if let Err(why) = &facts.cluster {
        missing.push(why.to_string());
    }
    let lock = facts.cluster.as_ref().ok().and_then(|c| c.lock.as_ref());
    if let Some(lock) = lock.filter(|l| l.blocks && !options.wait_for_lock) {
        missing.push(lock.refusal.clone());
    }
    for path in env.missing_values_files() {
        missing.push(format!("values file {} does not exist", path.display()));
    }
    missing.extend(image_problems(env, facts));
    missing.extend(promotion_problem(facts));
    missing.extend(unreachable_external_database(facts, options));
    missing.extend(checkout_problems(env, facts, head));
    if backup_decision(facts, options).0 && nothing_to_deploy(env, facts, options).is_none() {
        missing.extend(facts.backup_dir_problem.clone());
    }
    missing.extend(overlong_revision_ids(facts, head));
    let revision = facts
        .cluster
        .as_ref()
        .ok()
        .and_then(|c| c.release.as_ref())
        .map(|r| r.revision);
    if revision == Some(u32::MAX) {
        missing.push(format!(
            "release revision {} is the last one this tool can count to",
            u32::MAX
        ));
    }
    let findings = facts.migrations.findings();
    let strict = options.strict_migrations || env.migrations.strict;
    if strict && !findings.is_empty() {
        missing.push(crate::alembic::preview::strict_refusal(env, findings));
    }
    if strict && !first_install_without_data(facts) {
        missing.extend(not_linted(&facts.migrations));
    }
    missing
}

/// A said risk, not a refusal: an init container that waits longer for the
/// migration lock than Helm waits for the rollout may migrate the database
/// after Helm gave up and this tool stopped. Pure.
fn lock_wait_outlasts_helm(env: &Environment, facts: &DeployFacts) -> Option<String> {
    let wait = facts.migration_lock_wait?;
    let helm = env.helm_timeout.as_secs();
    (wait > helm).then(|| {
        format!(
            "warning: an init container waits up to {wait} s for the migration lock \
             (backend.migrations.lockTimeoutSeconds), longer than Helm's {helm} s (helm_timeout): \
             if Helm times out, a pod may still migrate the database after this tool has stopped; \
             raise helm_timeout above it or lower lockTimeoutSeconds"
        )
    })
}

/// `alembic_version.version_num` is `varchar(32)` as Alembic creates it: a
/// longer revision id fails when its migration has run, in the init
/// container, mid-deploy. Checked for the revisions this deploy stores,
/// unless one of them widens the column (its SQL alters alembic_version). Pure.
fn overlong_revision_ids(facts: &DeployFacts, head: &Fact<String>) -> Option<String> {
    const COLUMN_WIDTH: usize = 32;
    let (Ok(graph), Ok(head)) = (&facts.graph, head) else {
        return None;
    };
    let from = database_of(&facts.cluster)
        .revision()
        .filter(|r| graph.contains(r))
        .map(String::from);
    let stored = graph.upgrade_path(from.as_deref(), head)?;
    let overlong: Vec<&str> = stored
        .into_iter()
        .filter(|id| id.chars().count() > COLUMN_WIDTH)
        .collect();
    if overlong.is_empty() {
        return None;
    }
    let widened = match &facts.migrations {
        Preview::Upgrade { revisions, .. } => revisions.iter().any(|r| {
            r.sql
                .as_deref()
                .is_some_and(|sql| sql.to_lowercase().contains("alter table alembic_version"))
        }),
        _ => false,
    };
    (!widened).then(|| {
        format!(
            "revision id{} {} longer than {COLUMN_WIDTH} characters: alembic_version.version_num is \
             varchar({COLUMN_WIDTH}), so the migration would run and then fail to record itself; \
             give {} a shorter id (`revision = \"...\"` and the next one's down_revision)",
            if overlong.len() == 1 { "" } else { "s" },
            overlong.iter().map(|id| format!("{id:?}")).collect::<Vec<_>>().join(", "),
            if overlong.len() == 1 { "it" } else { "them" },
        )
    })
}

/// SQL the lint cannot read: a `DO $$ … $$` block (PL/pgSQL, any statement
/// inside) or dynamic `EXECUTE`. Pure.
fn runs_hidden_sql(sql: &str) -> bool {
    let upper = sql.to_uppercase();
    upper
        .split([';', '\n'])
        .map(str::trim_start)
        .any(|statement| {
            statement.starts_with("DO $")
                || statement.starts_with("DO LANGUAGE")
                || statement.starts_with("EXECUTE ")
        })
}

/// An external database (the values say so) that this machine cannot back
/// up (no `DATABASE_URL` here): refused before anything is pushed, rather
/// than failing at the backup after, or migrating it with no backup at all
/// on a first install.
fn unreachable_external_database(facts: &DeployFacts, options: DeployOptions) -> Option<String> {
    let file = facts.external_mode_file.as_ref()?;
    if facts.external_database || options.no_backup {
        return None;
    }
    Some(format!(
        "database.mode is external ({}) and DATABASE_URL is not set here, so the backup cannot reach that database \
         and its migrations would run unbacked: set DATABASE_URL to it (the URL the chart's secret holds), \
         or deploy with --no-backup --yes",
        file.display()
    ))
}

/// Under strict migrations, what could not be linted is a refusal: a check
/// that did not run never reads as passed.
fn not_linted(preview: &Preview) -> Vec<String> {
    match preview {
        Preview::NoMigrations { .. } => Vec::new(),
        Preview::Unavailable { why } => vec![format!(
            "strict migrations: the pending migrations' SQL could not be rendered, so nothing was linted: {why}"
        )],
        Preview::Upgrade { revisions, .. } => revisions
            .iter()
            .filter_map(|r| match &r.sql {
                None => Some(format!(
                    "strict migrations: revision {} could not be rendered offline, so it was not linted: {}",
                    r.id,
                    r.no_preview.as_deref().unwrap_or("no SQL")
                )),
                Some(sql) if runs_hidden_sql(sql) => Some(format!(
                    "strict migrations: revision {} runs SQL inside a DO block or EXECUTE, which the lint cannot see into",
                    r.id
                )),
                Some(_) => None,
            })
            .collect(),
    }
}

/// The facts the image step is decided from (`build_problems`), and the
/// builds begun while the plan is read (`builds_to_start`).
#[derive(Clone, Copy)]
pub struct ImageStepFacts<'a> {
    pub images: &'a [ImageFacts],
    pub daemon: &'a Fact<crate::images::registry::DaemonView>,
    pub runner: &'a Fact<RunnerPlan>,
    pub builder: &'a crate::images::builder::Choice,
}

impl DeployFacts {
    pub fn image_step(&self) -> ImageStepFacts<'_> {
        ImageStepFacts {
            images: &self.images,
            daemon: &self.daemon,
            runner: &self.runner,
            builder: &self.builder,
        }
    }
}

/// The tags a deploy's image step will build, when its facts leave no
/// doubt that it builds: a build asked for (no --skip-build, no images
/// promoted from another environment), every image tagged from a commit,
/// with its context and Dockerfile, the registry asked and lacking one at
/// least, and nothing that step needs refused. It reads no cluster fact;
/// the warm-up asks it once the plan is shown (`commands::warmup`).
pub fn builds_to_start(
    env: &Environment,
    facts: &DeployFacts,
    options: DeployOptions,
) -> Option<Vec<(Component, String)>> {
    if options.skip_build || facts.promotion.is_some() {
        return None;
    }
    let facts = facts.image_step();
    let tags = facts
        .images
        .iter()
        .map(|f| Some((f.component, f.tag.clone()?)))
        .collect::<Option<Vec<_>>>()?;
    let ready = facts
        .images
        .iter()
        .all(|f| f.context_exists && f.dockerfile_exists && f.registry_digest.is_ok());
    let lacking = facts
        .images
        .iter()
        .any(|f| matches!(f.registry_digest, Ok(None)));
    (ready && lacking && build_problems(env, facts, false).is_empty()).then_some(tags)
}

/// Images the registry lacks: built here (a runner and a daemon needed),
/// or, with --skip-build, a refusal before anything (the backup) runs.
fn build_problems(env: &Environment, facts: ImageStepFacts, skip_build: bool) -> Vec<String> {
    let lacking: Vec<&ImageFacts> = facts
        .images
        .iter()
        .filter(|f| matches!(f.registry_digest, Ok(None)))
        .collect();
    if skip_build {
        return lacking
            .iter()
            .map(|image| {
                format!(
                    "--skip-build, but the registry has no {}:{}; drop --skip-build to build it, or push it first \
                     (`cargo xtask push {}`)",
                    env.image(image.component).reference,
                    image.tag.as_deref().unwrap_or("?"),
                    env.name
                )
            })
            .collect();
    }
    let mut problems: Vec<String> = lacking
        .iter()
        .flat_map(|image| {
            crate::images::builder::image_refusals(
                env.image(image.component),
                facts.builder,
                &image.needs,
                facts.daemon.as_ref().ok(),
            )
        })
        .collect();
    if let (true, Err(why)) = (
        lacking.iter().any(|i| i.component == Component::Backend),
        facts.runner,
    ) {
        problems.push(format!("the backend must be built, but {why}"));
    }
    if let (false, Err(why)) = (lacking.is_empty(), facts.daemon) {
        problems.push(format!(
            "no Docker daemon to build {}: {why}",
            lacking
                .iter()
                .map(|i| i.component.as_str())
                .collect::<Vec<_>>()
                .join(" and ")
        ));
    }
    problems
}

/// Each image's context and Dockerfile exist, and its registry answers.
fn image_problems(env: &Environment, facts: &DeployFacts) -> Vec<String> {
    let mut problems = Vec::new();
    for (image, found) in env.images.iter().zip(&facts.images) {
        if !found.context_exists {
            problems.push(format!(
                "{} build context {}/ does not exist (this workspace expects to sit at the root of the Colony \
                 monorepo; or set images.{}.context in {})",
                image.component,
                image.context.display(),
                image.component,
                env.config_file.display()
            ));
        } else if !found.dockerfile_exists {
            problems.push(format!(
                "{} Dockerfile {}/{} does not exist",
                image.component,
                image.context.display(),
                image.dockerfile.display()
            ));
        }
        if let Some(why) = &found.tag_problem {
            problems.push(format!(
                "{}: git cannot tell the image's tag from its context {}/: {why}",
                image.component,
                image.context.display()
            ));
        } else if let Err(why) = &found.registry_digest {
            problems.push(format!(
                "{}: registry {} does not answer: {why} (`cargo xtask doctor` checks it)",
                image.component, env.registry
            ));
        }
    }
    problems
}

/// The checkout's side: the head, a commit, the chart, the backup script,
/// and helm on this machine.
fn checkout_problems(env: &Environment, facts: &DeployFacts, head: &Fact<String>) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(why) = head {
        problems.push(format!("expected Alembic head unknown: {why}"));
    }
    if facts.commit.is_none() {
        problems.push(
            "no git commit to tag the images from (run inside the checkout, after a first commit)"
                .into(),
        );
    }
    if !facts.chart_exists {
        problems.push(format!("chart {} does not exist", env.chart));
    } else if let Err(why) = &facts.inputs_hash {
        problems.push(why.to_string());
    }
    if !facts.backup_script_exists {
        problems.push(format!(
            "{} does not exist",
            crate::database::backup::SCRIPT
        ));
    }
    if facts.helm.is_none() {
        problems.push("helm is not installed (`cargo xtask doctor`)".into());
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::release::Record;

    fn env() -> Environment {
        let mut env = crate::config::tests::environment();
        for values in &mut env.values {
            values.exists = true;
        }
        env
    }

    fn graph() -> RevisionGraph {
        crate::alembic::versions::test_graph()
    }

    const BACKEND_DIGEST: &str = "sha256:b";
    const FRONTEND_DIGEST: &str = "sha256:f";

    /// The release runs exactly what the registry holds for this commit.
    fn facts(database: DatabaseRevision) -> DeployFacts {
        let env = env();
        let image = |component: Component, digest: &str| ImageFacts {
            component,
            tag: Some("abc".into()),
            tag_problem: None,
            context_exists: true,
            dockerfile_exists: true,
            needs: crate::images::builder::Needs::default(),
            registry_digest: Ok(Some(digest.into())),
        };
        DeployFacts {
            commit: Some(Commit {
                sha: "abcdef".into(),
                short: "abc".into(),
            }),
            images: vec![
                image(Component::Backend, BACKEND_DIGEST),
                image(Component::Frontend, FRONTEND_DIGEST),
            ],
            graph: Ok(graph()),
            helm: Some(HelmVersion {
                major: 4,
                text: "v4.1.4".into(),
            }),
            chart_exists: true,
            backup_script_exists: true,
            backup_dir_problem: None,
            migration_lock_wait: None,
            inputs_hash: Ok("sha256:inputs".into()),
            cluster: Ok(ClusterFacts {
                release: Some(Current {
                    revision: 3,
                    status: "deployed".into(),
                    record: Record {
                        alembic_head: "0002_activity_and_comments".into(),
                        inputs_hash: "sha256:inputs".into(),
                        backend_image: format!(
                            "{}@{BACKEND_DIGEST}",
                            env.image(Component::Backend).reference
                        ),
                        frontend_image: format!(
                            "{}@{FRONTEND_DIGEST}",
                            env.image(Component::Frontend).reference
                        ),
                        ..Record::default()
                    },
                }),
                database,
                observed: None,
                database_pod: Some(crate::cluster::database::DatabasePod {
                    name: "colony-database-0".into(),
                    user: "colony".into(),
                    database: "colony".into(),
                }),
                lock: None,
            }),
            external_database: false,
            external_mode_file: None,
            daemon: Ok(crate::images::registry::DaemonView::default()),
            migrations: Preview::NoMigrations {
                head: "0002_activity_and_comments".into(),
            },
            runner: Ok(RunnerPlan {
                platform: crate::images::runner::Platform::host(),
                source: crate::images::runner::Source::Prebuilt("/bin/run-migrations".into()),
            }),
            builder: crate::images::builder::choose(None, None),
            docker_host: "unix:///var/run/docker.sock".into(),
            manifests: None,
            promotion: None,
        }
    }

    fn at(revision: &str) -> DatabaseRevision {
        DatabaseRevision::At {
            revision: revision.into(),
        }
    }

    fn planned(facts: &DeployFacts, options: DeployOptions) -> Plan {
        decide(&env(), facts, options)
    }

    fn names(plan: &Plan) -> Vec<&'static str> {
        plan.step_names()
    }

    #[test]
    fn the_same_digests_chart_and_values_are_nothing_to_deploy_unless_forced() {
        let facts = facts(at("0002_activity_and_comments"));
        let plan = planned(&facts, DeployOptions::default());
        assert_eq!(plan.decision, Verdict::NothingToDeploy);
        assert_eq!(names(&plan), ["verify"]);
        let forced = planned(
            &facts,
            DeployOptions {
                force: true,
                ..DeployOptions::default()
            },
        );
        assert_eq!(
            names(&forced),
            ["images", "backup", "helm-upgrade", "rollout", "verify"]
        );
    }

    #[test]
    fn a_promotion_builds_nothing_and_copies_only_what_lives_elsewhere() {
        let env = env();
        let mut facts = facts(at("0002_activity_and_comments"));
        let backend_here = env.image(Component::Backend).reference.clone();
        facts.promotion = Some(Promotion {
            from: "colony-staging".into(),
            git_sha: "abcdef".into(),
            images: vec![
                (Component::Backend, backend_here, "sha256:b".into()),
                (
                    Component::Frontend,
                    "other.example:5000/colony-frontend".into(),
                    "sha256:f".into(),
                ),
            ],
        });
        let plan = decide(
            &env,
            &facts,
            DeployOptions {
                force: true,
                ..DeployOptions::default()
            },
        );
        assert_eq!(
            names(&plan),
            [
                "promote-images",
                "backup",
                "helm-upgrade",
                "rollout",
                "verify"
            ]
        );
        let Action::PromoteImages { copies } = &plan.steps[0].action else {
            panic!("{:?}", plan.steps[0].action)
        };
        assert_eq!(
            copies,
            &[ImageCopy {
                component: Component::Frontend,
                from: "other.example:5000/colony-frontend".into(),
                to: env.image(Component::Frontend).reference.clone(),
                digest: "sha256:f".into(),
            }]
        );
        // Another commit checked out: refused before anything.
        facts.promotion.as_mut().unwrap().git_sha = "0123456789".into();
        let refused = decide(&env, &facts, DeployOptions::default());
        assert!(
            refused.missing.iter().any(|m| m.contains("git checkout")),
            "{:?}",
            refused.missing
        );
    }

    #[test]
    fn the_images_step_says_when_this_tool_pushes() {
        let facts = facts(at("0002_activity_and_comments"));
        let forced = DeployOptions {
            force: true,
            ..DeployOptions::default()
        };
        let said = |env: &Environment| decide(env, &facts, forced).render(false);
        let mut env = env();
        assert!(
            said(&env).contains("taken over by this tool's faster push (images.push = \"auto\")"),
            "{}",
            said(&env)
        );
        env.image_push = PushMethod::Docker;
        assert!(!said(&env).contains("images.push"), "{}", said(&env));
        env.image_push = PushMethod::Fast;
        assert!(
            said(&env)
                .contains("pushed by this tool from the daemon's export (images.push = \"fast\")"),
            "{}",
            said(&env)
        );
    }

    #[test]
    fn on_a_containerd_store_daemon_the_plan_says_that_the_build_pushes() {
        use crate::images::registry::DaemonView;
        let mut facts = facts(at("0002_activity_and_comments"));
        let forced = DeployOptions {
            force: true,
            ..DeployOptions::default()
        };
        let env = env();
        let daemon = |session| DaemonView {
            containerd_store: true,
            session,
            ..DaemonView::default()
        };
        facts.daemon = Ok(daemon(true));
        let said = decide(&env, &facts, forced).render(false);
        assert!(said.contains("pushed by BuildKit from the build"), "{said}");
        assert!(!said.contains("taken over by this tool"), "{said}");
        // Over TCP or ssh the build has no session of this tool's: the
        // push is a separate one, as on any daemon.
        facts.daemon = Ok(daemon(false));
        let said = decide(&env, &facts, forced).render(false);
        assert!(!said.contains("pushed by BuildKit"), "{said}");
    }

    #[test]
    fn a_git_error_is_named_as_git_s_not_the_registry_s() {
        let mut facts = facts(at("0002_activity_and_comments"));
        let why = FactError::of(&std::io::Error::other("fatal: bad object HEAD"));
        facts.images[0].tag_problem = Some(why.clone());
        facts.images[0].registry_digest = Err(why);
        let plan = planned(&facts, DeployOptions::default());
        let said = plan.missing.join("\n");
        assert!(said.contains("git cannot tell the image's tag"), "{said}");
        assert!(!said.contains("does not answer"), "{said}");
    }

    #[test]
    fn the_last_countable_revision_is_refused_not_a_panic() {
        let mut facts = facts(at("0002_activity_and_comments"));
        if let Ok(cluster) = &mut facts.cluster {
            cluster.release.as_mut().unwrap().revision = u32::MAX;
        }
        let plan = planned(
            &facts,
            DeployOptions {
                force: true,
                ..DeployOptions::default()
            },
        );
        assert!(
            plan.missing
                .iter()
                .any(|m| m.contains("last one this tool can count to")),
            "{:?}",
            plan.missing
        );
    }

    #[test]
    fn overlong_revision_ids_are_refused_unless_a_migration_widens_the_column() {
        let long = "0003_a_revision_id_longer_than_32_chars";
        let mut facts = facts(at("0002_activity_and_comments"));
        let mut revisions: Vec<_> = ["0001_baseline", "0002_activity_and_comments"]
            .iter()
            .map(|id| graph().get(id).unwrap().clone())
            .collect();
        let mut extra = revisions[1].clone();
        extra.id = long.into();
        extra.down = vec!["0002_activity_and_comments".into()];
        revisions.push(extra);
        facts.graph = Ok(RevisionGraph::from_revisions(revisions).unwrap());
        let head = Ok(long.to_string());
        let refused = overlong_revision_ids(&facts, &head).unwrap();
        assert!(refused.contains("longer than 32 characters"), "{refused}");
        facts.migrations = Preview::Upgrade {
            from: Some("0002_activity_and_comments".into()),
            to: long.into(),
            stamp: None,
            command: vec![],
            revisions: vec![crate::alembic::preview::RevisionPreview {
                id: long.into(),
                message: String::new(),
                sql: Some(
                    "ALTER TABLE alembic_version ALTER COLUMN version_num TYPE varchar(64);".into(),
                ),
                no_preview: None,
            }],
            findings: vec![],
        };
        assert_eq!(overlong_revision_ids(&facts, &head), None);
    }

    #[test]
    fn any_difference_from_the_running_revision_is_a_deploy() {
        let mut changed_inputs = facts(at("0002_activity_and_comments"));
        changed_inputs.inputs_hash = Ok("sha256:other".into());
        let mut new_image = facts(at("0002_activity_and_comments"));
        new_image.images[1].registry_digest = Ok(None);
        let mut failed = facts(at("0002_activity_and_comments"));
        if let Ok(cluster) = &mut failed.cluster {
            cluster.release.as_mut().unwrap().status = "failed".into();
        }
        let mut unrecorded = facts(at("0002_activity_and_comments"));
        if let Ok(cluster) = &mut unrecorded.cluster {
            cluster.release.as_mut().unwrap().record = Record::default();
        }
        for (why, facts) in [
            ("chart or values", changed_inputs),
            ("an image the registry lacks", new_image),
            ("a failed release", failed),
            ("a release installed by hand", unrecorded),
        ] {
            let plan = planned(&facts, DeployOptions::default());
            assert_eq!(plan.decision, Verdict::Deploy, "{why}");
            assert!(
                names(&plan).contains(&"backup"),
                "{why}: an upgrade backs up"
            );
        }
    }

    #[test]
    fn a_first_install_backs_up_only_an_existing_database() {
        let first_install = |pod: bool, external: bool| {
            let mut facts = facts(DatabaseRevision::Unknown {
                why: "no pod".into(),
            });
            facts.external_database = external;
            if let Ok(cluster) = &mut facts.cluster {
                cluster.release = None;
                cluster.database_pod = pod.then(|| crate::cluster::database::DatabasePod {
                    name: "colony-database-0".into(),
                    user: "colony".into(),
                    database: "colony".into(),
                });
            }
            names(&planned(&facts, DeployOptions::default())).contains(&"backup")
        };
        assert!(!first_install(false, false));
        assert!(first_install(true, false));
        assert!(first_install(false, true));
        let mut facts = facts(at("0001_baseline"));
        facts.inputs_hash = Ok("sha256:other".into());
        let no_backup = planned(
            &facts,
            DeployOptions {
                no_backup: true,
                ..DeployOptions::default()
            },
        );
        assert!(!names(&no_backup).contains(&"backup"));
    }

    #[test]
    fn pending_migrations_are_rehearsed_after_the_backup_unless_they_cannot_be() {
        let mut behind = facts(at("0001_baseline"));
        behind.inputs_hash = Ok("sha256:other".into());
        let plan = planned(&behind, DeployOptions::default());
        assert_eq!(
            names(&plan),
            [
                "images",
                "backup",
                "rehearse",
                "helm-upgrade",
                "rollout",
                "verify"
            ]
        );
        let rehearse = &plan.steps[2];
        assert!(
            !rehearse.alongside_previous,
            "it needs the backup and the image"
        );
        assert!(matches!(
            &rehearse.action,
            Action::Rehearse { from, head, .. }
                if from == "0001_baseline" && head == "0002_activity_and_comments"
        ));
        // At the head already: nothing to rehearse (the no-op or a redeploy).
        let mut at_head = facts(at("0002_activity_and_comments"));
        at_head.inputs_hash = Ok("sha256:other".into());
        assert!(!names(&planned(&at_head, DeployOptions::default())).contains(&"rehearse"));
        // Turned off: said in the schema; refused only when strict.
        let off = DeployOptions {
            no_rehearsal: true,
            ..DeployOptions::default()
        };
        let plan = planned(&behind, off);
        assert!(!names(&plan).contains(&"rehearse"));
        assert!(plan
            .schema
            .contains(&"not rehearsed: --no-rehearsal".to_string()));
        assert!(plan.missing.is_empty(), "{:?}", plan.missing);
        let strict = planned(
            &behind,
            DeployOptions {
                strict_migrations: true,
                ..off
            },
        );
        assert!(strict
            .missing
            .iter()
            .any(|m| m.contains("cannot be rehearsed (--no-rehearsal)")));
        // No backup, no rehearsal: strict refuses that too.
        let no_backup = planned(
            &behind,
            DeployOptions {
                no_backup: true,
                strict_migrations: true,
                ..DeployOptions::default()
            },
        );
        assert!(no_backup
            .missing
            .iter()
            .any(|m| m.contains("cannot be rehearsed (no backup to restore")));
    }

    #[test]
    fn an_external_database_this_machine_cannot_back_up_is_refused_before_anything() {
        let mut first_install = facts(DatabaseRevision::Unknown {
            why: "no pod".into(),
        });
        if let Ok(cluster) = &mut first_install.cluster {
            cluster.release = None;
            cluster.database_pod = None;
        }
        first_install.external_mode_file = Some("/home/me/values.yaml".into());
        let refused = planned(&first_install, DeployOptions::default());
        assert!(
            refused.missing.iter().any(|m| m.contains(
                "database.mode is external (/home/me/values.yaml) and DATABASE_URL is not set here"
            )),
            "{:?}",
            refused.missing
        );
        first_install.external_database = true;
        let backed_up = planned(&first_install, DeployOptions::default());
        assert!(backed_up.missing.is_empty(), "{:?}", backed_up.missing);
        assert!(names(&backed_up).contains(&"backup"));
    }

    #[test]
    fn sql_hidden_in_a_do_block_is_not_lintable() {
        assert!(runs_hidden_sql(
            "BEGIN;\n\nDO $$ BEGIN EXECUTE 'DROP TABLE chores'; END $$;\n\nCOMMIT;"
        ));
        assert!(runs_hidden_sql("do $body$ begin null; end $body$;"));
        assert!(!runs_hidden_sql(
            "ALTER TABLE chores ADD COLUMN done_at TIMESTAMP;\nCOMMENT ON TABLE chores IS 'DO $$ not a block';"
        ));
    }

    #[test]
    fn strict_migrations_refuse_sql_that_could_not_be_linted() {
        let mut behind = facts(at("0001_baseline"));
        behind.inputs_hash = Ok("sha256:other".into());
        behind.migrations = Preview::Unavailable {
            why: "`alembic` is not installed on this machine".into(),
        };
        let strict = DeployOptions {
            strict_migrations: true,
            ..DeployOptions::default()
        };
        assert!(planned(&behind, strict)
            .missing
            .iter()
            .any(|m| m.contains("so nothing was linted: `alembic` is not installed")));
        assert!(planned(&behind, DeployOptions::default())
            .missing
            .is_empty());
    }

    #[test]
    fn the_schema_lines_name_the_migrations_and_the_stamp() {
        let mut from_baseline = facts(at("0001_baseline"));
        from_baseline.inputs_hash = Ok("sha256:other".into());
        let plan = planned(&from_baseline, DeployOptions::default());
        assert_eq!(
            plan.schema,
            [
                "the database is at 0001_baseline; the init container will",
                "apply 0002_activity_and_comments"
            ]
        );
        let pre_alembic = facts(DatabaseRevision::NoRevision {
            legacy_tables: Some(vec!["households".into()]),
        });
        let plan = planned(&pre_alembic, DeployOptions::default());
        assert_eq!(
            plan.schema,
            [
                "a pre-Alembic schema (households): the init container will stamp 0001_baseline, then",
                "apply 0002_activity_and_comments"
            ]
        );
        assert!(plan.missing.is_empty(), "{:?}", plan.missing);
    }

    #[test]
    fn a_database_ahead_of_the_scripts_blocks_the_deploy() {
        let plan = planned(
            &facts(at("0003_from_a_newer_build")),
            DeployOptions::default(),
        );
        assert!(
            plan.missing.iter().any(|m| m.contains("the database is at 0003_from_a_newer_build, which this checkout's migrations do not know")),
            "{:?}",
            plan.missing
        );
    }

    #[test]
    fn a_backend_without_a_runner_for_its_platform_is_refused_only_when_it_must_be_built() {
        let mut facts = facts(at("0002_activity_and_comments"));
        facts.runner = Err(FactError::new(
            "the backend image is linux/arm64, and this linux/amd64 machine cannot build \
             run-migrations for it",
        ));
        // In the registry already: nothing to build, nothing refused.
        assert!(planned(&facts, DeployOptions::default()).missing.is_empty());
        facts.images[0].registry_digest = Ok(None);
        let plan = planned(&facts, DeployOptions::default());
        assert_eq!(
            plan.missing,
            ["the backend must be built, but the backend image is linux/arm64, and this linux/amd64 machine \
              cannot build run-migrations for it"]
        );
    }

    /// The builds a deploy begins before its plan are those its image
    /// step runs, and only when the facts read first leave no doubt.
    #[test]
    fn builds_begin_early_only_when_the_image_step_surely_builds() {
        let env = env();
        let early = |facts: &DeployFacts| builds_to_start(&env, facts, DeployOptions::default());
        let mut facts = facts(at("0002_activity_and_comments"));
        // Both in the registry: nothing to build.
        assert_eq!(early(&facts), None);
        facts.images[1].registry_digest = Ok(None);
        // Every tag goes to the image stage; it skips what the registry has.
        let tags = [
            (Component::Backend, "abc".to_string()),
            (Component::Frontend, "abc".to_string()),
        ];
        assert_eq!(early(&facts).as_deref(), Some(&tags[..]));
        // The cluster is not asked.
        facts.cluster = Err(FactError::new("unreachable"));
        assert_eq!(early(&facts).as_deref(), Some(&tags[..]));

        let skip_build = DeployOptions {
            skip_build: true,
            ..DeployOptions::default()
        };
        assert_eq!(builds_to_start(&env, &facts, skip_build), None);
        let mut promoted = facts.clone();
        promoted.promotion = Some(Promotion {
            from: "colony-staging".into(),
            git_sha: "abc".into(),
            images: Vec::new(),
        });
        assert_eq!(early(&promoted), None);

        let doubtful: [fn(&mut DeployFacts); 5] = [
            |f| f.images[0].registry_digest = Err(FactError::new("registry down")),
            |f| f.images[1].dockerfile_exists = false,
            |f| f.images[0].tag = None,
            |f| f.daemon = Err(FactError::new("no daemon")),
            |f| {
                f.images[0].registry_digest = Ok(None);
                f.runner = Err(FactError::new("no musl target"));
            },
        ];
        for (case, spoil) in doubtful.iter().enumerate() {
            let mut spoiled = facts.clone();
            spoil(&mut spoiled);
            assert_eq!(early(&spoiled), None, "case {case}");
        }
    }

    #[test]
    fn a_cluster_that_cannot_be_read_is_listed_and_the_plan_still_shows() {
        let mut facts = facts(at("0002_activity_and_comments"));
        facts.cluster = Err(FactError::new("the current kube context is \"prod\""));
        let plan = planned(&facts, DeployOptions::default());
        assert_eq!(plan.missing, ["the current kube context is \"prod\""]);
        assert_eq!(plan.decision, Verdict::Deploy);
        let text = plan.render(true);
        assert!(
            text.contains("release      unknown (see Missing)"),
            "{text}"
        );
    }

    #[test]
    fn groups_run_alongside_steps_together() {
        let mut facts = facts(at("0002_activity_and_comments"));
        facts.inputs_hash = Ok("sha256:other".into());
        let plan = planned(&facts, DeployOptions::default());
        let groups: Vec<Vec<&str>> = plan
            .groups()
            .iter()
            .map(|g| g.iter().map(|s| s.kind().name()).collect())
            .collect();
        assert_eq!(
            groups,
            [
                vec!["images", "backup"],
                vec!["helm-upgrade"],
                vec!["rollout"],
                vec!["verify"]
            ]
        );
    }
}
