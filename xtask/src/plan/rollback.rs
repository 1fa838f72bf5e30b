//! The rollback plan, decided in full before anything changes: the target
//! revision, the Helm revision the app returns to, and every command. Pure:
//! facts in, a plan (or a refusal, or "nothing to do") out.

use backend_migrations::revisions::RevisionGraph;

use crate::alembic::database::DatabaseRevision;
use crate::alembic::versions::{self, VersionsError};
use crate::cluster::release::{self, Current, RecordedRevision};
use crate::cluster::{helm, kubectl};
use crate::config::{names, Environment};
use crate::database::backup;
use crate::plan::{note, run, Action, Command, Item, Plan, Step, StepKind, Verdict};
use crate::verify::{Expectation, Source};

/// What was read before deciding, all read-only.
#[derive(Debug, Clone)]
pub struct RollbackFacts {
    /// The checkout's revision graph (targets are checked against it).
    pub graph: Result<RevisionGraph, VersionsError>,
    pub current: Current,
    /// Every revision with its record, oldest first.
    pub history: Vec<RecordedRevision>,
    /// A ready pod of the current release's newest ReplicaSet.
    pub pod: Option<String>,
    pub deployment: Option<String>,
    pub database: DatabaseRevision,
    /// The head the current revision's app expects (its rollback record or
    /// deploy record); None when it has neither.
    pub app_expects: Option<String>,
    pub helm_major: u32,
    /// Which database the backup dumps.
    pub backup_source: backup::Source,
    /// Why dumps cannot go to backup_dir (`backup::dir_problem`), if so.
    pub backup_dir_problem: Option<String>,
    /// The pod's image has run-migrations (it answered): the downgrade
    /// runs through it, under the migration lock.
    pub runner: bool,
}

#[derive(Debug, Clone)]
pub enum Target {
    To(String),
    Steps(u32),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub target: Target,
    pub app_revision: Option<u32>,
}

/// Where the rollback goes, for its confirmation and its summary (the
/// executor reads only the steps).
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackSpec {
    pub from: String,
    pub target: String,
    pub pod: String,
    pub app_revision: u32,
    /// The revision `helm rollback` will create.
    pub new_revision: u32,
}

#[derive(Debug, Clone)]
pub enum Decision {
    Rollback(Box<(Plan, RollbackSpec)>),
    /// The database is at the target already; exit 0, nothing changed: a
    /// plan without steps, its reason saying so.
    NothingToDo(Box<Plan>),
    /// It cannot finish; exit 2, nothing changed: a plan with what is
    /// known and why (`missing`), shown as any plan.
    Refuse(Box<Plan>),
}

pub fn decide(env: &Environment, facts: &RollbackFacts, request: &Request) -> Decision {
    match plan(env, facts, request) {
        Ok(decision) => decision,
        Err(why) => Decision::Refuse(Box::new(Plan::refused(
            Command::Rollback,
            &env.name,
            refusal_facts(env, facts, request),
            vec![why],
        ))),
    }
}

/// What a refused rollback knew: the cluster, the release, the database
/// and what was asked.
fn refusal_facts(
    env: &Environment,
    facts: &RollbackFacts,
    request: &Request,
) -> Vec<(&'static str, String)> {
    let asked = match &request.target {
        Target::To(revision) => revision.clone(),
        Target::Steps(steps) => format!("{steps} revision(s) down"),
    };
    let [cluster, release] = where_facts(env, facts);
    vec![
        cluster,
        release,
        ("database", facts.database.describe()),
        ("target", asked),
    ]
}

/// The phases of the decision: where the database is, where it goes, which
/// app revision expects that, then the steps. Any `Err` is a refusal.
fn plan(env: &Environment, facts: &RollbackFacts, request: &Request) -> Result<Decision, String> {
    let graph = facts
        .graph
        .as_ref()
        .map_err(|why| format!("cannot plan a rollback: {why}"))?;
    let from = database_revision(facts)?;
    let target = target(graph, &from, &request.target)?;
    // The database at the target under an app that expects another head is
    // a rollback cut short after its downgrade: finish it (the app only).
    let app_only = target == from;
    if app_only
        && facts
            .app_expects
            .as_deref()
            .is_none_or(|head| head == target)
    {
        return Ok(Decision::NothingToDo(Box::new(Plan::without_steps(
            Command::Rollback,
            &env.name,
            refusal_facts(env, facts, request),
            Verdict::NothingToDo,
            format!("the database is already at {target}"),
        ))));
    }
    let dropped = if app_only {
        Vec::new()
    } else {
        dropped_revisions(graph, &from, &target)?
    };
    let app = app_revision(env, facts, &target, request.app_revision)?;
    let spec = rollback_spec(env, facts, from, target, app.entry.revision)?;
    let deployment = facts.deployment.clone().ok_or_else(|| {
        format!(
            "no backend Deployment of release {} in {}",
            env.release, env.namespace
        )
    })?;
    let mut steps = steps(env, facts, &spec, &deployment, &dropped, app);
    if app_only {
        // Nothing in the database changes: no backup, no downgrade.
        steps.retain(|s| !matches!(s.kind(), StepKind::Backup | StepKind::Downgrade));
    } else if let Some(why) = &facts.backup_dir_problem {
        return Err(why.clone());
    }
    let plan = Plan {
        schema: dropped
            .iter()
            .map(|(id, message)| match message.as_str() {
                "" => format!("drop {id}"),
                m => format!("drop {id}: {m}"),
            })
            .collect(),
        steps,
        ..Plan::without_steps(
            Command::Rollback,
            &env.name,
            fact_lines(env, facts, &spec),
            Verdict::Rollback,
            reason(facts, &spec, app_only),
        )
    };
    Ok(Decision::Rollback(Box::new((plan, spec))))
}

/// A downgrade starts from a known revision.
fn database_revision(facts: &RollbackFacts) -> Result<String, String> {
    match &facts.database {
        DatabaseRevision::At { revision } => Ok(revision.clone()),
        other => Err(format!(
            "the database's revision must be known to downgrade from it, and it is {}",
            other.describe()
        )),
    }
}

/// What the executor needs: the pod to downgrade in and the Helm revision
/// `helm rollback` will create.
fn rollback_spec(
    env: &Environment,
    facts: &RollbackFacts,
    from: String,
    target: String,
    app_revision: u32,
) -> Result<RollbackSpec, String> {
    let pod = facts.pod.clone().ok_or_else(|| {
        format!(
            "no ready backend pod of revision {} to run `alembic downgrade` in: `cargo xtask verify {}` shows why",
            facts.current.revision, env.name
        )
    })?;
    let newest = facts
        .history
        .iter()
        .map(|r| r.entry.revision)
        .max()
        .unwrap_or(facts.current.revision);
    let new_revision = newest.checked_add(1).ok_or_else(|| {
        format!(
            "release revision {newest} is the last one this tool can count to; nothing was changed"
        )
    })?;
    Ok(RollbackSpec {
        from,
        target,
        pod,
        app_revision,
        new_revision,
    })
}

/// The cluster and the release's current revision: the first lines of
/// every rollback plan, refused or not.
fn where_facts(env: &Environment, facts: &RollbackFacts) -> [(&'static str, String); 2] {
    [
        (
            "cluster",
            format!(
                "context {}, namespace {}, release {}",
                env.kube_context, env.namespace, env.release
            ),
        ),
        (
            "release",
            format!(
                "revision {} ({})",
                facts.current.revision, facts.current.status
            ),
        ),
    ]
}

fn fact_lines(
    env: &Environment,
    facts: &RollbackFacts,
    spec: &RollbackSpec,
) -> Vec<(&'static str, String)> {
    let [cluster, release] = where_facts(env, facts);
    vec![
        cluster,
        release,
        ("database", spec.from.clone()),
        ("target", spec.target.clone()),
    ]
}

fn reason(facts: &RollbackFacts, spec: &RollbackSpec, app_only: bool) -> String {
    if app_only {
        format!(
            "the database is at {} already, but revision {} expects {}: return the app to revision {}",
            spec.target,
            facts.current.revision,
            facts.app_expects.as_deref().unwrap_or("?"),
            spec.app_revision
        )
    } else {
        format!(
            "downgrade {} -> {} in the current release, then return the app to revision {}",
            spec.from, spec.target, spec.app_revision
        )
    }
}

/// `--to REV` (a known revision) or `--steps N` below the database's revision.
fn target(graph: &RevisionGraph, from: &str, target: &Target) -> Result<String, String> {
    match target {
        Target::To(to) => {
            check_known(graph, to)?;
            Ok(to.clone())
        }
        Target::Steps(steps) => {
            let mut current = from.to_string();
            for taken in 0..*steps {
                let revision = graph.get(&current).ok_or_else(|| {
                    format!("the database is at {current}, which the checkout's scripts do not know; use --to")
                })?;
                current = revision.down.first().cloned().ok_or_else(|| {
                    format!(
                        "--steps {steps} goes below the first revision ({current} is the base after {taken} step(s))"
                    )
                })?;
            }
            Ok(current)
        }
    }
}

/// A well-formed revision that the checkout's scripts declare.
pub fn check_known(graph: &RevisionGraph, revision: &str) -> Result<(), String> {
    names::check_revision(revision)?;
    if !graph.contains(revision) {
        return Err(format!(
            "unknown revision {revision:?}: the versions directory declares {}",
            graph.ids().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}

/// The revisions a downgrade from `from` to `target` undoes, newest first,
/// with their messages. `target` must lie below `from`.
fn dropped_revisions(
    graph: &RevisionGraph,
    from: &str,
    target: &str,
) -> Result<Vec<(String, String)>, String> {
    if !graph.contains(from) {
        // A newer release migrated it; its pod's scripts know the way down.
        return Ok(vec![(
            format!("everything above {target} up to {from}"),
            "the current release's scripts (not all in this checkout)".into(),
        )]);
    }
    let path = graph.upgrade_path(Some(target), from).ok_or_else(|| {
        format!("{target} is not below the database's revision {from}: a rollback only goes down")
    })?;
    Ok(path
        .into_iter()
        .rev()
        .map(|id| (id.to_string(), versions::message(graph, id)))
        .collect())
}

/// The Helm revision the app returns to: `--app-revision`, checked, or the
/// newest earlier good revision whose record names the target.
fn app_revision<'a>(
    env: &Environment,
    facts: &'a RollbackFacts,
    target: &str,
    chosen: Option<u32>,
) -> Result<&'a RecordedRevision, String> {
    let current = facts.current.revision;
    let earlier = || facts.history.iter().filter(|r| r.entry.revision < current);
    if let Some(chosen) = chosen {
        let revision = facts
            .history
            .iter()
            .find(|r| r.entry.revision == chosen)
            .ok_or_else(|| {
                format!(
                    "--app-revision {chosen}: release {} has no revision {chosen} (`helm history {} --namespace {}`)",
                    env.release, env.release, env.namespace
                )
            })?;
        if chosen >= current {
            return Err(format!(
                "--app-revision {chosen}: the app can only return to a revision before the current one ({current})"
            ));
        }
        if !revision.entry.was_good() {
            return Err(format!(
                "--app-revision {chosen}: revision {chosen} is {}; it never ran successfully",
                revision.entry.status
            ));
        }
        if revision.record.has_head() && revision.record.alembic_head != target {
            return Err(format!(
                "--app-revision {chosen}: revision {chosen} was deployed with head {}, not {target}: its init \
                 container would migrate the database to {} again",
                revision.record.alembic_head, revision.record.alembic_head
            ));
        }
        return same_image_same_head(env, facts, revision).map(|()| revision);
    }
    let revision = earlier()
        .filter(|r| r.entry.was_good() && r.record.alembic_head == target)
        .max_by_key(|r| r.entry.revision)
        .ok_or_else(|| {
            let oldest = facts.history.iter().map(|r| r.entry.revision).min();
            no_app_revision(env, target, earlier().collect(), oldest)
        })?;
    same_image_same_head(env, facts, revision).map(|()| revision)
}

/// One backend image holds one Alembic head: an earlier revision that runs
/// the current revision's image but records another head has a wrong
/// record (or the current one has), and rolling the app back to it would
/// change nothing the database needs. Refused, naming both.
fn same_image_same_head(
    env: &Environment,
    facts: &RollbackFacts,
    app: &RecordedRevision,
) -> Result<(), String> {
    let current = facts.current.revision;
    let Some(now) = facts.history.iter().find(|r| r.entry.revision == current) else {
        return Ok(());
    };
    let (then, now_record) = (&app.record, &now.record);
    if then.backend_image.is_empty()
        || then.backend_image != now_record.backend_image
        || then.alembic_head == now_record.alembic_head
    {
        return Ok(());
    }
    Err(format!(
        "revision {} runs the same backend image as the current revision {current} ({}), yet records head {} \
         where revision {current} records {}: an image holds one Alembic head, so one of these deploy records \
         is wrong (`helm get values {} --revision N` shows them); choose the app's revision with --app-revision",
        app.entry.revision,
        crate::cluster::printable(&then.backend_image),
        crate::cluster::printable(&then.alembic_head),
        crate::cluster::printable(&now_record.alembic_head),
        env.release
    ))
}

/// The refusal when no earlier revision recorded the target: the candidates
/// without a record, for the user to choose with `--app-revision`.
fn no_app_revision(
    env: &Environment,
    target: &str,
    earlier: Vec<&RecordedRevision>,
    oldest: Option<u32>,
) -> String {
    let unrecorded: Vec<String> = earlier
        .iter()
        .filter(|r| r.entry.was_good() && !r.record.has_head())
        .map(|r| {
            format!(
                "    revision {:<3} {:<11} {}  chart {}\n        backend  {}\n        frontend {}",
                r.entry.revision,
                r.entry.status,
                r.entry.updated,
                r.entry.chart,
                or_dash(&r.record.backend_image),
                or_dash(&r.record.frontend_image),
            )
        })
        .collect();
    let mut message = format!(
        "no earlier Helm revision of {} recorded Alembic head {target}, so the app has nowhere safe to return to: \
         after the downgrade, the current release's init container would upgrade the database again. Nothing was changed.",
        env.release
    );
    if unrecorded.is_empty() {
        message.push_str(&format!(
            "\n  Deploy a build whose migrations end at {target} instead (`cargo xtask deploy {}` from that commit).",
            env.name
        ));
    } else {
        message.push_str(&format!(
            "\n  These earlier revisions have no deploy record (installed before this tool?):\n{}\n  \
             If one of them runs code for {target}, choose it: `cargo xtask rollback {} --to {target} --app-revision N`",
            unrecorded.join("\n"),
            env.name
        ));
    }
    // Helm keeps the newest revisions only (`--history-max`, 10 by default):
    // the one that ran code for the target may have been pruned.
    if let Some(oldest) = oldest.filter(|o| *o > 1) {
        let kept = env
            .history_max
            .map_or("10 (Helm's default)".to_string(), |n| n.to_string());
        message.push_str(&format!(
            "\n  Revisions 1 to {} of {} were pruned (Helm keeps the last {kept}: history_max in {}); the \
             revision that ran code for {target} may have been among them. Raise history_max so that later \
             rollbacks find theirs.",
            oldest - 1,
            env.release,
            env.config_file.display()
        ));
    }
    message
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() {
        "-"
    } else {
        text
    }
}

/// The rollback's steps in order; `plan` drops the database's when only
/// the app goes back.
fn steps(
    env: &Environment,
    facts: &RollbackFacts,
    spec: &RollbackSpec,
    deployment: &str,
    dropped: &[(String, String)],
    app: &RecordedRevision,
) -> Vec<Step> {
    vec![
        backup_step(env, facts),
        downgrade_step(env, facts, spec, dropped),
        helm_rollback_step(env, facts, spec, app),
        record_head_step(env, spec, deployment),
        crate::plan::verify_step(
            env,
            Expectation {
                head: spec.target.clone(),
                source: Source::RollbackRecord {
                    revision: spec.new_revision,
                },
            },
        ),
    ]
}

fn step(action: Action, title: String, items: Vec<Item>) -> Step {
    Step {
        action,
        title,
        alongside_previous: false,
        items,
    }
}

fn backup_step(env: &Environment, facts: &RollbackFacts) -> Step {
    crate::plan::backup_step(env, &facts.backup_source, "Back up the database")
}

/// In a pod of the current release: its scripts know the way down.
fn downgrade_step(
    env: &Environment,
    facts: &RollbackFacts,
    spec: &RollbackSpec,
    dropped: &[(String, String)],
) -> Step {
    let dropped_ids: Vec<&str> = dropped.iter().map(|(id, _)| id.as_str()).collect();
    // Through the runner when the image has it: it holds the migration
    // lock, so a backend pod restarting meanwhile does not upgrade again.
    let downgrade = match facts.runner {
        true => kubectl::migrations_downgrade_args(env, &spec.pod, &spec.target),
        false => kubectl::alembic_args(env, &spec.pod, &["downgrade", &spec.target]),
    };
    let check = kubectl::alembic_current_args(env, &spec.pod);
    step(
        Action::Downgrade {
            pod: spec.pod.clone(),
            target: spec.target.clone(),
            app_expects: facts
                .app_expects
                .clone()
                .unwrap_or_else(|| spec.from.clone()),
            downgrade: downgrade.clone(),
            check: check.clone(),
        },
        format!(
            "Downgrade the schema in {} (revision {}'s scripts know the way down)",
            spec.pod, facts.current.revision
        ),
        vec![
            run(
                downgrade,
                Some(&format!("drops {}", dropped_ids.join(", "))),
            ),
            run(check, Some(&spec.target)),
        ],
    )
}

fn helm_rollback_step(
    env: &Environment,
    facts: &RollbackFacts,
    spec: &RollbackSpec,
    app: &RecordedRevision,
) -> Step {
    let record = if app.record.has_head() {
        format!("head {}", app.record.alembic_head)
    } else {
        "none".into()
    };
    let argv = helm::rollback_args(env, spec.app_revision, facts.helm_major);
    step(
        Action::HelmRollback {
            argv: argv.clone(),
            target: spec.target.clone(),
            revision: spec.new_revision,
        },
        format!("Return the app to Helm revision {}", spec.app_revision),
        vec![
            run(
                argv,
                Some(&format!(
                    "revision {} is created and rolls out",
                    spec.new_revision
                )),
            ),
            note(format!(
                "revision {} runs backend {} (deploy record: {record})",
                spec.app_revision,
                or_dash(&app.record.backend_image),
            )),
        ],
    )
}

/// On the Deployment, tied to the Helm revision the rollback creates.
fn record_head_step(env: &Environment, spec: &RollbackSpec, deployment: &str) -> Step {
    let argv = kubectl::annotate_deployment_args(
        env,
        deployment,
        &[
            (
                release::ROLLBACK_REVISION_ANNOTATION,
                &spec.new_revision.to_string(),
            ),
            (release::ROLLBACK_HEAD_ANNOTATION, &spec.target),
        ],
    );
    step(
        Action::RecordHead {
            argv: argv.clone(),
            head: spec.target.clone(),
        },
        "Record the expected head where verify reads it (no pod restarts)".into(),
        vec![run(argv, None)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::release::{HistoryEntry, Record};

    fn graph() -> RevisionGraph {
        crate::alembic::versions::test_graph()
    }

    fn revision(number: u32, status: &str, head: &str) -> RecordedRevision {
        RecordedRevision {
            entry: HistoryEntry {
                revision: number,
                status: status.into(),
                chart: "colony-0.1.0".into(),
                ..HistoryEntry::default()
            },
            record: Record {
                alembic_head: head.into(),
                backend_image: format!("r/colony-backend@sha256:{number}"),
                ..Record::default()
            },
        }
    }

    fn facts(history: Vec<RecordedRevision>, database: &str) -> RollbackFacts {
        let last = history.last().unwrap().clone();
        RollbackFacts {
            graph: Ok(graph()),
            current: Current {
                revision: last.entry.revision,
                status: last.entry.status.clone(),
                record: last.record.clone(),
            },
            history,
            pod: Some("colony-backend-abc-1".into()),
            deployment: Some("colony-backend".into()),
            database: DatabaseRevision::At {
                revision: database.into(),
            },
            app_expects: Some(last.record.alembic_head.clone()).filter(|h| !h.is_empty()),
            helm_major: 4,
            backup_source: backup::Source::External,
            backup_dir_problem: None,
            runner: false,
        }
    }

    fn to(target: &str, app: Option<u32>) -> Request {
        Request {
            target: Target::To(target.into()),
            app_revision: app,
        }
    }

    fn env() -> Environment {
        crate::config::tests::environment()
    }

    fn refusal(decision: Decision) -> String {
        match decision {
            Decision::Refuse(plan) => plan.missing.join("\n"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn spec(decision: Decision) -> RollbackSpec {
        match decision {
            Decision::Rollback(plan) => plan.1,
            other => panic!("expected a rollback, got {other:?}"),
        }
    }

    #[test]
    fn the_newest_good_revision_that_recorded_the_target_is_chosen() {
        let history = vec![
            revision(1, "superseded", "0001_baseline"),
            revision(2, "superseded", "0001_baseline"),
            revision(3, "failed", "0001_baseline"),
            revision(4, "deployed", "0002_activity_and_comments"),
        ];
        let decided = spec(decide(
            &env(),
            &facts(history, "0002_activity_and_comments"),
            &to("0001_baseline", None),
        ));
        assert_eq!(decided.app_revision, 2, "a failed revision is never chosen");
        assert_eq!(decided.new_revision, 5);
        assert_eq!(decided.from, "0002_activity_and_comments");
    }

    /// A record edited by hand: revision 2 claims 0001 but runs the image
    /// that revision 3 (at 0002) runs. Refused, naming both records.
    #[test]
    fn an_app_revision_with_the_current_image_but_another_head_is_refused() {
        let mut tampered = revision(2, "superseded", "0001_baseline");
        tampered.record.backend_image = "r/colony-backend@sha256:3".into();
        let history = vec![
            revision(1, "superseded", "0001_baseline"),
            tampered,
            revision(3, "deployed", "0002_activity_and_comments"),
        ];
        let facts = facts(history, "0002_activity_and_comments");
        let why = refusal(decide(&env(), &facts, &to("0001_baseline", None)));
        assert!(
            why.contains("revision 2 runs the same backend image as the current revision 3"),
            "{why}"
        );
        let chosen = refusal(decide(&env(), &facts, &to("0001_baseline", Some(2))));
        assert!(chosen.contains("one of these deploy records"), "{chosen}");
        let fine = spec(decide(&env(), &facts, &to("0001_baseline", Some(1))));
        assert_eq!(fine.app_revision, 1);
    }

    /// Helm pruned the revision that recorded the target: the refusal says
    /// so and names history_max.
    #[test]
    fn a_pruned_history_is_named_in_the_refusal() {
        let history = vec![
            revision(12, "superseded", "0002_activity_and_comments"),
            revision(13, "deployed", "0002_activity_and_comments"),
        ];
        let facts = facts(history, "0002_activity_and_comments");
        let why = refusal(decide(&env(), &facts, &to("0001_baseline", None)));
        assert!(
            why.contains("Revisions 1 to 11 of colony were pruned"),
            "{why}"
        );
        assert!(why.contains("history_max"), "{why}");
    }

    #[test]
    fn the_last_countable_revision_is_refused_not_a_panic() {
        let mut last = revision(3, "deployed", "0002_activity_and_comments");
        last.entry.revision = u32::MAX;
        let history = vec![revision(1, "superseded", "0001_baseline"), last];
        let facts = facts(history, "0002_activity_and_comments");
        let why = refusal(decide(&env(), &facts, &to("0001_baseline", None)));
        assert!(why.contains("last one this tool can count to"), "{why}");
    }

    #[test]
    fn without_a_recorded_revision_it_lists_the_unrecorded_ones_and_refuses() {
        let history = vec![
            revision(1, "superseded", ""),
            revision(2, "deployed", "0002_activity_and_comments"),
        ];
        let facts = facts(history, "0002_activity_and_comments");
        let why = refusal(decide(&env(), &facts, &to("0001_baseline", None)));
        assert!(
            why.contains("no earlier Helm revision of colony recorded Alembic head 0001_baseline"),
            "{why}"
        );
        assert!(why.contains("revision 1"), "{why}");
        assert!(why.contains("r/colony-backend@sha256:1"), "{why}");
        assert!(why.contains("--app-revision N"), "{why}");
        // --steps 1 is the same target, the same refusal.
        let steps = Request {
            target: Target::Steps(1),
            app_revision: None,
        };
        assert!(refusal(decide(&env(), &facts, &steps)).contains("--app-revision N"));
        // Chosen explicitly, the unrecorded revision is accepted.
        assert_eq!(
            spec(decide(&env(), &facts, &to("0001_baseline", Some(1)))).app_revision,
            1
        );
    }

    #[test]
    fn a_chosen_revision_that_recorded_another_head_or_failed_is_refused() {
        let history = vec![
            revision(1, "superseded", "0002_activity_and_comments"),
            revision(2, "failed", ""),
            revision(3, "deployed", "0002_activity_and_comments"),
        ];
        let facts = facts(history, "0002_activity_and_comments");
        assert!(
            refusal(decide(&env(), &facts, &to("0001_baseline", Some(1))))
                .contains("was deployed with head 0002")
        );
        assert!(
            refusal(decide(&env(), &facts, &to("0001_baseline", Some(2)))).contains("is failed")
        );
        assert!(
            refusal(decide(&env(), &facts, &to("0001_baseline", Some(3))))
                .contains("before the current one")
        );
        assert!(
            refusal(decide(&env(), &facts, &to("0001_baseline", Some(9))))
                .contains("has no revision 9")
        );
    }

    #[test]
    fn the_current_revision_is_nothing_to_do_and_unknown_or_higher_targets_are_refused() {
        let history = vec![
            revision(1, "superseded", "0001_baseline"),
            revision(2, "deployed", "0002_activity_and_comments"),
        ];
        let at_head = facts(history.clone(), "0002_activity_and_comments");
        assert!(matches!(
            decide(&env(), &at_head, &to("0002_activity_and_comments", None)),
            Decision::NothingToDo(ref plan) if plan.reason.contains("already at 0002_activity_and_comments")
        ));
        assert!(refusal(decide(&env(), &at_head, &to("0000_nope", None)))
            .contains("unknown revision \"0000_nope\""));
        assert!(refusal(decide(&env(), &at_head, &to("x; rm -rf /", None))).contains("x; rm -rf /"));
        let at_base = facts(history, "0001_baseline");
        assert!(refusal(decide(
            &env(),
            &at_base,
            &to("0002_activity_and_comments", None)
        ))
        .contains("only goes down"));
        let too_far = Request {
            target: Target::Steps(2),
            app_revision: None,
        };
        assert!(refusal(decide(&env(), &at_head, &too_far)).contains("below the first revision"));
    }

    #[test]
    fn a_rollback_cut_short_after_its_downgrade_finishes_with_the_app() {
        let history = vec![
            revision(1, "superseded", "0001_baseline"),
            revision(2, "deployed", "0002_activity_and_comments"),
        ];
        // The database is at the target, the app still expects 0002.
        let cut_short = facts(history, "0001_baseline");
        let Decision::Rollback(planned) = decide(&env(), &cut_short, &to("0001_baseline", None))
        else {
            panic!("no plan");
        };
        let (plan, spec) = *planned;
        assert_eq!(
            plan.step_names(),
            ["helm-rollback", "record-head", "verify"]
        );
        assert_eq!(spec.app_revision, 1);
        assert!(
            plan.reason.contains("expects 0002_activity_and_comments"),
            "{}",
            plan.reason
        );
    }

    #[test]
    fn the_plan_lists_every_step_in_order() {
        let history = vec![
            revision(1, "superseded", "0001_baseline"),
            revision(2, "deployed", "0002_activity_and_comments"),
        ];
        let Decision::Rollback(planned) = decide(
            &env(),
            &facts(history, "0002_activity_and_comments"),
            &to("0001_baseline", None),
        ) else {
            panic!("no plan");
        };
        let (plan, _) = *planned;
        assert_eq!(
            plan.step_names(),
            [
                "backup",
                "downgrade",
                "helm-rollback",
                "record-head",
                "verify"
            ]
        );
        let text = plan.render(true);
        assert!(text.contains("alembic downgrade 0001_baseline"), "{text}");
        assert!(text.contains("helm rollback colony 1"), "{text}");
        assert!(
            text.contains("colony.dev/rollback-helm-revision=3"),
            "{text}"
        );
        assert!(text.contains("drop 0002_activity_and_comments"), "{text}");
        // An image with the runner: the downgrade holds the migration lock.
        let mut with_runner = facts(
            vec![
                revision(1, "superseded", "0001_baseline"),
                revision(2, "deployed", "0002_activity_and_comments"),
            ],
            "0002_activity_and_comments",
        );
        with_runner.runner = true;
        let Decision::Rollback(planned) = decide(&env(), &with_runner, &to("0001_baseline", None))
        else {
            panic!("no plan");
        };
        let text = planned.0.render(true);
        assert!(
            text.contains("/usr/local/bin/run-migrations downgrade 0001_baseline"),
            "{text}"
        );
        assert!(text.contains("--alembic-cmd=alembic"), "{text}");
    }
}
