//! The Helm release as `helm status`, `helm history` and `helm get values`
//! describe it, and the preflight checks that read it.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cluster;
use crate::cluster::objects::Deployment;
use crate::cluster::{helm, kubectl};

use crate::config::{Component, Environment};
use crate::error::input_error;
use std::time::SystemTime;

use super::lock::Lease;

#[derive(Debug, Clone, PartialEq)]
pub enum ReleaseState {
    NotInstalled,
    Installed {
        status: ReleaseStatus,
        revision: u32,
    },
}

/// A release revision's status, as `helm status` and `helm history` print
/// it; one Helm may add is kept as its word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ReleaseStatus {
    #[default]
    Unknown,
    Deployed,
    Superseded,
    Failed,
    Uninstalling,
    Uninstalled,
    PendingInstall,
    PendingUpgrade,
    PendingRollback,
    Other(String),
}

impl ReleaseStatus {
    const WORDS: [(&'static str, ReleaseStatus); 9] = [
        ("unknown", ReleaseStatus::Unknown),
        ("deployed", ReleaseStatus::Deployed),
        ("superseded", ReleaseStatus::Superseded),
        ("failed", ReleaseStatus::Failed),
        ("uninstalling", ReleaseStatus::Uninstalling),
        ("uninstalled", ReleaseStatus::Uninstalled),
        ("pending-install", ReleaseStatus::PendingInstall),
        ("pending-upgrade", ReleaseStatus::PendingUpgrade),
        ("pending-rollback", ReleaseStatus::PendingRollback),
    ];

    pub fn as_str(&self) -> &str {
        match self {
            ReleaseStatus::Other(word) => word,
            known => Self::WORDS
                .iter()
                .find(|(_, status)| status == known)
                .map_or("unknown", |(word, _)| word),
        }
    }

    /// An install, upgrade or rollback that has not ended: Helm refuses
    /// every other operation on the release meanwhile.
    pub fn is_pending(&self) -> bool {
        matches!(
            self,
            ReleaseStatus::PendingInstall
                | ReleaseStatus::PendingUpgrade
                | ReleaseStatus::PendingRollback
        )
    }

    /// It once ran successfully (a `failed` or pending revision never did).
    pub fn was_good(&self) -> bool {
        matches!(self, ReleaseStatus::Deployed | ReleaseStatus::Superseded)
    }
}

impl From<&str> for ReleaseStatus {
    fn from(word: &str) -> Self {
        Self::WORDS
            .iter()
            .find(|(known, _)| *known == word)
            .map_or_else(
                || ReleaseStatus::Other(word.to_string()),
                |(_, s)| s.clone(),
            )
    }
}

impl std::fmt::Display for ReleaseStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl Serialize for ReleaseStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ReleaseStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(String::deserialize(deserializer)?.as_str().into())
    }
}

/// `helm status`: not installed, or its status and revision.
pub fn state(env: &Environment) -> Result<ReleaseState> {
    let argv = helm::status_args(env);
    let output = cluster::run(&argv)?;
    if output.code != 0 {
        if output.stderr.contains("release: not found") {
            return Ok(ReleaseState::NotInstalled);
        }
        bail!(
            "`{}` failed: {}",
            crate::process::display_argv(&argv),
            output.stderr.trim()
        );
    }
    let status: HelmStatus = serde_json::from_str(&output.stdout).with_context(|| {
        format!(
            "cannot read what `{}` printed",
            crate::process::display_argv(&argv)
        )
    })?;
    Ok(ReleaseState::Installed {
        status: status.info.status,
        revision: status.version,
    })
}

/// `helm status -o json`, the parts read.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HelmStatus {
    info: HelmStatusInfo,
    version: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HelmStatusInfo {
    status: ReleaseStatus,
}

/// A row of `helm history -o json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryEntry {
    pub revision: u32,
    pub status: ReleaseStatus,
    pub updated: String,
    pub description: String,
    /// `colony-0.1.0`, as Helm names the chart and its version.
    pub chart: String,
}

impl HistoryEntry {
    /// A revision the app can return to: it once ran successfully. A
    /// `failed` or `pending-*` revision never did.
    pub fn was_good(&self) -> bool {
        self.status.was_good()
    }
}

pub fn history(env: &Environment) -> Result<Vec<HistoryEntry>> {
    cluster::json(&helm::history_args(env))
}

/// What `cargo xtask deploy` stored in a revision's values. A revision
/// installed by hand (the runbook's `helm upgrade`) has an empty record but
/// still its image references.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Record {
    pub git_sha: String,
    pub alembic_head: String,
    pub backup_file: String,
    pub inputs_hash: String,
    /// What the deploy's rehearsal measured (empty: not rehearsed).
    pub rehearsal: String,
    pub backend_image: String,
    pub frontend_image: String,
}

impl Record {
    /// Whether this tool deployed the revision (and so recorded its head).
    pub fn has_head(&self) -> bool {
        !self.alembic_head.is_empty()
    }

    pub fn image(&self, component: Component) -> &str {
        match component {
            Component::Backend => &self.backend_image,
            Component::Frontend => &self.frontend_image,
        }
    }
}

/// The release as it is now: its newest revision and that revision's record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Current {
    pub revision: u32,
    pub status: ReleaseStatus,
    pub record: Record,
}

/// `helm status` plus the record of the current revision; None when the
/// release is not installed. Read-only.
pub fn current(env: &Environment) -> Result<Option<Current>> {
    match state(env)? {
        ReleaseState::NotInstalled => Ok(None),
        ReleaseState::Installed { status, revision } => Ok(Some(Current {
            record: record(env, revision)?,
            revision,
            status,
        })),
    }
}

/// One revision of the history with its record.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRevision {
    #[serde(flatten)]
    pub entry: HistoryEntry,
    pub record: Record,
}

/// The whole history, each revision with its record (read concurrently:
/// one `helm get values` per revision). Oldest first.
pub fn history_with_records(env: &Environment) -> Result<Vec<RecordedRevision>> {
    let history = history(env)?;
    std::thread::scope(|scope| {
        let readers: Vec<_> = history
            .iter()
            .map(|entry| scope.spawn(move || record(env, entry.revision)))
            .collect();
        history
            .iter()
            .zip(readers)
            .map(|(entry, reader)| {
                Ok(RecordedRevision {
                    entry: entry.clone(),
                    record: reader.join().expect("record reader panicked")?,
                })
            })
            .collect()
    })
}

/// Where a rollback records the head its app revision expects, on the
/// backend Deployment (`kubectl annotate` changes no pod). Tied to the Helm
/// revision the rollback created: a later upgrade makes it stale, and
/// annotations set outside Helm survive upgrades, so the revision is checked.
pub const ROLLBACK_REVISION_ANNOTATION: &str = "colony.dev/rollback-helm-revision";
pub const ROLLBACK_HEAD_ANNOTATION: &str = "colony.dev/rollback-alembic-head";

/// The rollback's record on a Deployment: (Helm revision, Alembic head). Pure.
pub fn rollback_record(deployment: &Deployment) -> Option<(u32, String)> {
    let revision = deployment
        .annotation(ROLLBACK_REVISION_ANNOTATION)?
        .parse()
        .ok()?;
    let head = deployment.annotation(ROLLBACK_HEAD_ANNOTATION)?;
    Some((revision, cluster::printable(head)))
}

pub fn record(env: &Environment, revision: u32) -> Result<Record> {
    let values: Value = cluster::json(&helm::get_values_args(env, revision))?;
    Ok(record_from_values(&values))
}

/// Pure: the deploy record inside a release's user-supplied values. Read
/// as JSON values, not a struct: they are whatever the user gave Helm
/// (`null` when nothing, a number where `--set` saw digits), and anything
/// but a string reads as absent.
pub fn record_from_values(values: &Value) -> Record {
    let image = |component: Component| {
        let image = &values[component.as_str()]["image"];
        match (
            image["repository"].as_str(),
            image["digest"].as_str(),
            image["tag"].as_str(),
        ) {
            (Some(repo), Some(digest), _) if !digest.is_empty() => format!("{repo}@{digest}"),
            (Some(repo), _, Some(tag)) => format!("{repo}:{tag}"),
            _ => String::new(),
        }
    };
    let written = helm::DeployRecord::from_values(values);
    // Whatever the cluster holds is printed: no control character (an
    // escape sequence could retitle or clear the terminal) gets through.
    let clean = |text: String| cluster::printable(&text);
    Record {
        git_sha: clean(written.git_sha),
        alembic_head: clean(written.alembic_head),
        backup_file: clean(written.backup_file),
        inputs_hash: clean(written.inputs_hash),
        rehearsal: clean(written.rehearsal),
        backend_image: clean(image(Component::Backend)),
        frontend_image: clean(image(Component::Frontend)),
    }
}

/// The release's state in a sentence, for messages after an interrupt.
pub fn describe_state(env: &Environment) -> String {
    describe(env, &state(env))
}

/// A read state in words (after an interrupt: what the user finds now).
pub fn describe(env: &Environment, state: &Result<ReleaseState>) -> String {
    match state {
        Ok(ReleaseState::Installed { status, revision }) => {
            format!(
                "release {} is at revision {revision}, {status}",
                env.release
            )
        }
        Ok(ReleaseState::NotInstalled) => format!("release {} is not installed", env.release),
        Err(e) => format!("the release's state could not be read ({e:#})"),
    }
}

/// The environment's kube context must be in the kubeconfig. It need not
/// be the current one: every kubectl and helm call names it, as werf and
/// helm's own `--kube-context` let a deploy go to a context that is not
/// current (the plan shows which).
pub fn check_context(env: &Environment) -> Result<()> {
    let output = cluster::run(&kubectl::context_exists_args(&env.kube_context))?;
    if output.code != 0 || output.stdout.trim() != env.kube_context {
        return Err(input_error(format!(
            "kube context {:?} ({}'s kube_context in {}) is not in the kubeconfig: `kubectl config get-contexts` \
             lists the contexts there; fix kube_context (or --kube-context, COLONY_KUBE_CONTEXT)",
            env.kube_context,
            env.name,
            env.config_file.display()
        )));
    }
    Ok(())
}

/// A release left `pending-*` blocks every later operation. Pending is
/// not always interrupted: when another command holds the environment's
/// lock, it is running now, and rolling back would cut it short; only a
/// pending revision no live holder owns gets the way out. Pure.
pub fn pending_recovery(
    env: &Environment,
    status: &ReleaseStatus,
    history: &[HistoryEntry],
    lock: Option<&Lease>,
    now: SystemTime,
) -> String {
    let since = history
        .last()
        .filter(|h| h.status.is_pending())
        .map_or(String::new(), |h| {
            let mut about = format!(" (revision {}", h.revision);
            if !h.updated.is_empty() {
                about.push_str(&format!(", since {}", h.updated));
            }
            if !h.description.is_empty() {
                about.push_str(&format!(": \"{}\"", cluster::printable(&h.description)));
            }
            about + ")"
        });
    if let Some(lease) = lock.filter(|l| l.blocks(now)) {
        return format!(
            "release {} in {} is {status}{since} because {} (do not roll back a release whose deploy is running)",
            env.release,
            env.namespace,
            super::lock::refusal(env, lease, now, None)
        );
    }
    let target = history.iter().rev().find(|h| h.was_good());
    let how = match (status, target) {
        (ReleaseStatus::PendingInstall, _) | (_, None) => format!(
            "nothing was ever deployed successfully: `helm uninstall {} --namespace {} --kube-context {}`, then deploy again",
            env.release, env.namespace, env.kube_context
        ),
        (_, Some(entry)) => format!(
            "roll back to the last good revision {rev}: `helm rollback {} {rev} --namespace {} --kube-context {}`, then deploy again",
            env.release,
            env.namespace,
            env.kube_context,
            rev = entry.revision
        ),
    };
    format!(
        "release {} in {} is {status}{since}: no deploy or rollback of this tool holds the lock of {}, so unless \
         someone runs helm on this release by hand right now, an earlier install, upgrade or rollback was \
         interrupted, and Helm refuses every other operation until it is resolved ({how})",
        env.release, env.namespace, env.name
    )
}

/// Preflight: the release must not be pending.
pub fn check_not_pending(env: &Environment) -> Result<ReleaseState> {
    let state = state(env)?;
    if let ReleaseState::Installed { status, .. } = &state {
        // Nothing was changed: a refusal (exit 2), like a wrong context.
        let lock = super::lock::read(env).ok().flatten();
        refuse_if_pending(env, status, lock.as_ref()).map_err(input_error)?;
    }
    Ok(state)
}

/// A release in `pending-*` refuses every operation: the refusal, with the
/// way out (it reads the history for the last good revision) or the
/// command that is running.
pub fn refuse_if_pending(
    env: &Environment,
    status: &ReleaseStatus,
    lock: Option<&Lease>,
) -> Result<(), String> {
    if !status.is_pending() {
        return Ok(());
    }
    let history = history(env).unwrap_or_default();
    Err(pending_recovery(
        env,
        status,
        &history,
        lock,
        SystemTime::now(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn release_statuses_read_and_print_as_helm_words() {
        let entry: HistoryEntry =
            serde_json::from_value(json!({"revision": 3, "status": "pending-upgrade"})).unwrap();
        assert_eq!(entry.status, ReleaseStatus::PendingUpgrade);
        assert!(entry.status.is_pending() && !entry.was_good());
        assert_eq!(
            serde_json::to_value(&entry.status).unwrap(),
            "pending-upgrade"
        );
        // A word a later Helm may add is kept, and is neither pending nor good.
        let later = ReleaseStatus::from("pending-rollout");
        assert_eq!(later, ReleaseStatus::Other("pending-rollout".into()));
        assert!(!later.is_pending() && !later.was_good());
        assert_eq!(format!("[{:<10}]", ReleaseStatus::Deployed), "[deployed  ]");
        let missing: HistoryEntry = serde_json::from_value(json!({"revision": 1})).unwrap();
        assert_eq!(missing.status.as_str(), "unknown");
    }

    fn entry(revision: u32, status: &str) -> HistoryEntry {
        HistoryEntry {
            revision,
            status: status.into(),
            ..HistoryEntry::default()
        }
    }

    #[test]
    fn a_pending_upgrade_names_the_revision_to_roll_back_to() {
        let env = crate::config::tests::environment();
        let history = [
            entry(1, "superseded"),
            entry(2, "deployed"),
            entry(3, "pending-upgrade"),
        ];
        let now = SystemTime::now();
        let message = pending_recovery(&env, &ReleaseStatus::PendingUpgrade, &history, None, now);
        assert!(
            message.contains("is pending-upgrade (revision 3"),
            "{message}"
        );
        assert!(
            message.contains("no deploy or rollback of this tool holds the lock"),
            "{message}"
        );
        assert!(
            message
                .contains("`helm rollback colony 2 --namespace colony-dev --kube-context homelab`"),
            "{message}"
        );
        let first = pending_recovery(
            &env,
            &ReleaseStatus::PendingInstall,
            &[entry(1, "pending-install")],
            None,
            now,
        );
        assert!(
            first.contains("helm uninstall colony --namespace colony-dev --kube-context homelab"),
            "{first}"
        );
        // A live holder: running, not interrupted; no rollback advised.
        let holder = super::super::lock::Holder {
            identity: "bob@ci pid 7".into(),
            command: "deploy colony-dev".into(),
            git_sha: None,
            started: "2026-12-01T05:00:00Z".into(),
            step: "helm-upgrade".into(),
        };
        let mut object = super::super::lock::manifest(
            &env,
            &holder,
            std::time::Duration::from_secs(60),
            now,
            Some("5"),
        );
        object["metadata"]["resourceVersion"] = json!("5");
        let lease = Lease::from_json(&object).unwrap();
        let running = pending_recovery(
            &env,
            &ReleaseStatus::PendingUpgrade,
            &history,
            Some(&lease),
            now,
        );
        assert!(
            running.contains(
                "because another command is changing colony-dev: `deploy colony-dev` by bob@ci pid 7"
            ),
            "{running}"
        );
        assert!(running.contains("at step helm-upgrade"), "{running}");
        assert!(!running.contains("helm rollback"), "{running}");
    }

    #[test]
    fn records_come_from_the_values() {
        let values = json!({
            "backend": {"image": {"repository": "r/b", "tag": "t", "digest": "sha256:1"}},
            "frontend": {"image": {"repository": "r/f", "tag": "t"}},
            "deployRecord": {"gitSha": "abc", "alembicHead": "0002_x", "backupFile": "/b.dump"}
        });
        let record = record_from_values(&values);
        assert_eq!(record.backend_image, "r/b@sha256:1");
        assert_eq!(record.frontend_image, "r/f:t");
        assert_eq!(
            (record.git_sha.as_str(), record.alembic_head.as_str()),
            ("abc", "0002_x")
        );
        // A record edited to carry escape sequences prints them harmless.
        let hostile = json!({"deployRecord": {"gitSha": "abc\u{1b}]0;owned\u{7}\u{1b}[2J"}});
        assert_eq!(record_from_values(&hostile).git_sha, "abc?]0;owned??[2J");
    }
}
