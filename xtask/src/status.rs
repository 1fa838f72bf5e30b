//! `cargo xtask status [<env>]`: the release history joined with each
//! revision's deploy record, the database's Alembic revision, and the pods
//! of the newest ReplicaSet.

use std::fmt::Write as _;

use anyhow::Result;

use crate::cli::StageArgs;
use crate::cluster::{self, Backend};
use crate::config;
use crate::kube;
use crate::release::{self, HistoryEntry, Record, ReleaseState};

pub fn run(args: StageArgs) -> Result<()> {
    let env = config::load(args.env.as_deref(), &args.env_overrides)?;
    release::check_context(&env)?;
    let mut out = format!(
        "{} (context {}, namespace {}, release {})\n",
        env.name, env.kube_context, env.namespace, env.release
    );
    if release::state(&env)? == ReleaseState::NotInstalled {
        out.push_str("  not installed: `cargo xtask deploy` installs it\n");
        print!("{out}");
        return Ok(());
    }
    let history = release::history(&env)?;
    let records: Vec<Record> = history
        .iter()
        .map(|h| release::record(&env, h.revision).unwrap_or_default())
        .collect();
    out.push_str(&render_history(&history, &records));

    let backend = Backend::read(&env)?;
    match cluster::newest_replicaset(&backend.replicasets) {
        Some(rs) => {
            let _ = writeln!(out, "\nnewest ReplicaSet {}:", cluster::name(rs));
            for pod in &backend.pods {
                let state = match cluster::pod_problem(pod) {
                    Some(problem) => problem.reason,
                    None if cluster::pod_ready(pod) => "Ready".into(),
                    None => pod["status"]["phase"].as_str().unwrap_or("?").to_string(),
                };
                let _ = writeln!(out, "  {:<48} {state}", cluster::name(pod));
            }
            if let Some(pod) = backend.pods.iter().find(|p| cluster::pod_ready(p)) {
                let current = cluster::run(&kube::alembic_current_args(&env, cluster::name(pod)))?;
                let revision = match cluster::last_line(&current.stdout) {
                    "" => "none",
                    line => line,
                };
                let _ = writeln!(
                    out,
                    "\ndatabase: {revision} (alembic current in {})",
                    cluster::name(pod)
                );
            }
        }
        None => out.push_str("\nno backend ReplicaSet\n"),
    }
    print!("{out}");
    Ok(())
}

/// The history table. Pure.
pub fn render_history(history: &[HistoryEntry], records: &[Record]) -> String {
    let mut out = format!(
        "\n  {:<4} {:<16} {:<20} {:<12} {:<28} {}\n",
        "REV", "STATUS", "UPDATED", "GIT SHA", "ALEMBIC HEAD", "DESCRIPTION"
    );
    for (entry, record) in history.iter().zip(records) {
        let sha: String = record.git_sha.chars().take(12).collect();
        let _ = writeln!(
            out,
            "  {:<4} {:<16} {:<20} {:<12} {:<28} {}",
            entry.revision,
            entry.status,
            entry.updated,
            if sha.is_empty() { "-".into() } else { sha },
            if record.alembic_head.is_empty() {
                "-"
            } else {
                &record.alembic_head
            },
            entry.description
        );
        for (component, image) in [
            ("backend", &record.backend_image),
            ("frontend", &record.frontend_image),
        ] {
            if !image.is_empty() {
                let _ = writeln!(out, "       {component:<9}{image}");
            }
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
        assert!(text.contains("2    deployed         2026-11-26T04:00:00Z 0123456789ab 0002_activity_and_comments"), "{text}");
        assert!(
            text.contains("backup   /b/colony-dev-x.dump")
                && text.contains("backend  r/colony-backend@sha256:1"),
            "{text}"
        );
    }
}
