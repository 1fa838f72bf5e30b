//! `cargo xtask status [<env>]`: the release history joined with each
//! revision's deploy record, the database's Alembic revision, and the pods
//! of the newest ReplicaSet.

use std::fmt::Write as _;

use anyhow::Result;

use serde::Serialize;

use crate::cli::StatusArgs;
use crate::cluster::release::{self, HistoryEntry, Record, RecordedRevision, ReleaseState};
use crate::cluster::{self, kubectl, rollout, Backend};
use crate::config::{self, Environment};

pub fn run(args: StatusArgs) -> Result<()> {
    let env = config::load(args.env.as_deref(), &args.env_overrides)?;
    release::check_context(&env)?;
    let view = gather(&env)?;
    if args.json {
        crate::report::print_json(&to_json(&env, &view))?;
    } else {
        print!("{}", render(&env, &view));
    }
    Ok(())
}

/// What status shows, read from the cluster.
struct View {
    /// None: the release is not installed.
    history: Option<Vec<RecordedRevision>>,
    /// The newest ReplicaSet's name and its pods.
    replicaset: Option<(String, Vec<PodLine>)>,
    /// What the database reports, as `alembic current` in a ready pod says it
    /// (or why it could not be asked).
    database: DatabaseAnswer,
}

/// A pod as status shows it: its state and the image digest it runs.
#[derive(Serialize)]
struct PodLine {
    name: String,
    state: String,
    #[serde(rename = "image_digest")]
    digest: Option<String>,
}

enum DatabaseAnswer {
    NoReadyPod,
    Revision {
        pod: String,
        revision: String,
    },
    /// `alembic current` failed: its exit code and last line.
    Failed {
        pod: String,
        code: i32,
        said: String,
    },
}

fn gather(env: &Environment) -> Result<View> {
    if release::state(env)? == ReleaseState::NotInstalled {
        return Ok(View {
            history: None,
            replicaset: None,
            database: DatabaseAnswer::NoReadyPod,
        });
    }
    let history = release::history_with_records(env)?;
    let backend = Backend::read(env)?;
    let replicaset = backend.newest_replicaset().map(|rs| {
        let pods = backend
            .pods
            .iter()
            .map(|pod| PodLine {
                name: pod.name().to_string(),
                state: rollout::pod_state(pod),
                digest: pod.image_digest().map(String::from),
            })
            .collect();
        (rs.metadata.name.clone(), pods)
    });
    let database = match backend.ready_pod() {
        None => DatabaseAnswer::NoReadyPod,
        Some(pod) => {
            let pod = pod.name().to_string();
            let current = cluster::run(&kubectl::alembic_current_args(env, &pod))?;
            if current.code == 0 {
                DatabaseAnswer::Revision {
                    revision: match cluster::last_line(&current.stdout) {
                        "" => "no Alembic revision".into(),
                        line => line.to_string(),
                    },
                    pod,
                }
            } else {
                DatabaseAnswer::Failed {
                    pod,
                    code: current.code,
                    said: cluster::last_line(&current.stderr).to_string(),
                }
            }
        }
    };
    Ok(View {
        history: Some(history),
        replicaset,
        database,
    })
}

fn render(env: &Environment, view: &View) -> String {
    let mut out = format!(
        "{} (context {}, namespace {}, release {})\n",
        env.name, env.kube_context, env.namespace, env.release
    );
    let Some(history) = &view.history else {
        out.push_str("  not installed: `cargo xtask deploy` installs it\n");
        return out;
    };
    let entries: Vec<HistoryEntry> = history.iter().map(|r| r.entry.clone()).collect();
    let records: Vec<Record> = history.iter().map(|r| r.record.clone()).collect();
    out.push_str(&render_history(&entries, &records));
    match &view.replicaset {
        Some((name, pods)) => {
            let _ = writeln!(out, "\nnewest ReplicaSet {name}:");
            for pod in pods {
                let runs = match &pod.digest {
                    Some(digest) => format!("  runs {}", short_digest(digest)),
                    None => String::new(),
                };
                let _ = writeln!(out, "  {:<48} {}{runs}", pod.name, pod.state);
            }
        }
        None => out.push_str("\nno backend ReplicaSet\n"),
    }
    let alembic = env.alembic_command.join(" ");
    match &view.database {
        DatabaseAnswer::NoReadyPod => {
            let _ = writeln!(
                out,
                "\ndatabase: unknown (no ready backend pod to run `{alembic} current` in)"
            );
        }
        DatabaseAnswer::Revision { pod, revision } => {
            let _ = writeln!(out, "\ndatabase: {revision} (`{alembic} current` in {pod})");
        }
        DatabaseAnswer::Failed { pod, code, said } => {
            let _ = writeln!(
                out,
                "\ndatabase: unknown: `{alembic} current` in {pod} failed (exit {code}): {said}"
            );
        }
    }
    backend_migrations::redact::mask_all(&out)
}

/// `sha256:` and the first 12 hex digits, as `docker images` shortens ids.
fn short_digest(digest: &str) -> &str {
    &digest[..digest.len().min("sha256:".len() + 12)]
}

/// `status --json`: stable keys `environment`, `namespace`, `release`,
/// `installed`, `history` (revision, status, updated, description, chart,
/// record), `replicaset`, `pods` (name, state, image_digest: the digest the
/// kubelet pulled, null before), `database` (state: revision
/// | failed | unknown, and its details).
#[derive(Serialize)]
struct StatusJson<'a> {
    environment: &'a str,
    namespace: &'a str,
    release: &'a str,
    installed: bool,
    history: &'a Option<Vec<RecordedRevision>>,
    replicaset: Option<&'a str>,
    pods: Option<&'a [PodLine]>,
    database: DatabaseJson<'a>,
}

/// The database's answer: `state` says which of the others are there.
#[derive(Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
enum DatabaseJson<'a> {
    Unknown {
        why: &'static str,
    },
    Revision {
        revision: &'a str,
        pod: &'a str,
    },
    Failed {
        pod: &'a str,
        exit_code: i32,
        error: &'a str,
    },
}

fn to_json<'a>(env: &'a Environment, view: &'a View) -> StatusJson<'a> {
    let database = match &view.database {
        DatabaseAnswer::NoReadyPod => DatabaseJson::Unknown {
            why: "no ready backend pod",
        },
        DatabaseAnswer::Revision { pod, revision } => DatabaseJson::Revision { revision, pod },
        DatabaseAnswer::Failed { pod, code, said } => DatabaseJson::Failed {
            pod,
            exit_code: *code,
            error: said,
        },
    };
    StatusJson {
        environment: &env.name,
        namespace: &env.namespace,
        release: &env.release,
        installed: view.history.is_some(),
        history: &view.history,
        replicaset: view.replicaset.as_ref().map(|(name, _)| name.as_str()),
        pods: view.replicaset.as_ref().map(|(_, pods)| pods.as_slice()),
        database,
    }
}

/// The history table, its columns as wide as their widest cell (Helm's
/// timestamps run to 35 characters with nanoseconds and an offset). Pure.
pub fn render_history(history: &[HistoryEntry], records: &[Record]) -> String {
    let dash = |text: &str| {
        if text.is_empty() {
            "-".to_string()
        } else {
            text.to_string()
        }
    };
    let rows: Vec<[String; 6]> = history
        .iter()
        .zip(records)
        .map(|(entry, record)| {
            [
                entry.revision.to_string(),
                entry.status.to_string(),
                entry.updated.clone(),
                dash(&record.git_sha.chars().take(12).collect::<String>()),
                dash(&record.alembic_head),
                entry.description.clone(),
            ]
        })
        .collect();
    let header = [
        "REV",
        "STATUS",
        "UPDATED",
        "GIT SHA",
        "ALEMBIC HEAD",
        "DESCRIPTION",
    ]
    .map(String::from);
    let mut widths = [0usize; 6];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |row: &[String; 6]| {
        let mut text = String::from(" ");
        for (cell, width) in row.iter().zip(widths).take(5) {
            text.push_str(&format!(" {cell:<width$}"));
        }
        format!("{text} {}", row[5])
    };
    let mut out = format!("\n{}\n", line(&header));
    for (row, record) in rows.iter().zip(records) {
        let _ = writeln!(out, "{}", line(row));
        for (component, image) in [
            ("backend", &record.backend_image),
            ("frontend", &record.frontend_image),
        ] {
            if !image.is_empty() {
                let _ = writeln!(out, "       {component:<9}{image}");
            }
        }
        if !record.rehearsal.is_empty() {
            let _ = writeln!(out, "       rehearsal {}", record.rehearsal);
        }
        if !record.backup_file.is_empty() {
            let _ = writeln!(out, "       backup   {}", record.backup_file);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_rows_show_the_deploy_record() {
        let history = vec![HistoryEntry {
            revision: 2,
            status: "deployed".into(),
            updated: "2026-11-26T04:00:00Z".into(),
            description: "Upgrade complete".into(),
            ..HistoryEntry::default()
        }];
        let records = vec![Record {
            git_sha: "0123456789abcdef".into(),
            alembic_head: "0002_activity_and_comments".into(),
            backup_file: "/b/colony-dev-x.dump".into(),
            backend_image: "r/colony-backend@sha256:1".into(),
            ..Record::default()
        }];
        let text = render_history(&history, &records);
        assert!(
            text.contains("  2   deployed 2026-11-26T04:00:00Z 0123456789ab 0002_activity_and_comments Upgrade complete"),
            "{text}"
        );
        // A real Helm timestamp (nanoseconds, an offset) widens its column,
        // and every row stays aligned under the header.
        let mut long = history.clone();
        long.push(HistoryEntry {
            revision: 13,
            status: "superseded".into(),
            updated: "2026-11-26T05:00:00.123456789+01:00".into(),
            ..HistoryEntry::default()
        });
        let text = render_history(&long, &[records[0].clone(), Record::default()]);
        let header = text.lines().find(|l| l.contains("GIT SHA")).unwrap();
        let sha_at = header.find("GIT SHA").unwrap();
        let row = |revision: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(revision))
                .unwrap()
        };
        assert_eq!(&row("2 ")[sha_at..sha_at + 12], "0123456789ab", "{text}");
        assert_eq!(&row("13 ")[sha_at..sha_at + 2], "- ", "{text}");
        assert!(
            text.contains("backup   /b/colony-dev-x.dump")
                && text.contains("backend  r/colony-backend@sha256:1"),
            "{text}"
        );
    }
}
