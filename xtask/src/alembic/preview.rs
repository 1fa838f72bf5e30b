//! The SQL a deploy's migrations will run, before anyone confirms: rendered
//! by Alembic's offline mode (`alembic upgrade FROM:TO --sql`) on this
//! machine, in the backend's directory, with a placeholder database URL so
//! that nothing connects; then linted with Squawk's rules
//! (`alembic::lint`). The range is decided from the database's revision
//! (pure, `range`); Alembic's output is split per revision (pure,
//! `split_offline_output`); only `render` runs a process.

use std::path::{Path, PathBuf};

use backend_migrations::revisions::RevisionGraph;
use serde::Serialize;

use crate::alembic::database::DatabaseRevision;
use crate::alembic::lint::{self, Finding, RevisionSql};
use crate::alembic::versions;
use crate::config::Environment;
use crate::process;

/// What Alembic's env.py gets as DATABASE_URL: `.invalid` never resolves.
pub const PLACEHOLDER_URL: &str = "postgresql://preview@placeholder.invalid/preview";

/// What the offline preview keeps of the deploying shell's environment.
pub const PREVIEW_ENVIRONMENT: [&str; 7] = [
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "VIRTUAL_ENV",
    "UV_CACHE_DIR",
];

/// Which migrations a database at `database` runs to reach `head`. Pure.
#[derive(Debug, Clone, PartialEq)]
pub enum Range {
    /// The database is at the head already.
    NoMigrations { head: String },
    /// `from` (None: an empty database) to `to`; a pre-Alembic schema is
    /// stamped at `stamp` first.
    Upgrade {
        stamp: Option<String>,
        from: Option<String>,
        to: String,
        revisions: Vec<String>,
    },
    /// No preview can be made; why.
    Unavailable { why: String },
}

pub fn range(graph: &RevisionGraph, head: &str, database: &DatabaseRevision) -> Range {
    let upgrade = |stamp: Option<String>, from: Option<String>| match graph
        .upgrade_path(from.as_deref(), head)
    {
        Some(path) => Range::Upgrade {
            stamp,
            from,
            to: head.to_string(),
            revisions: path.into_iter().map(str::to_string).collect(),
        },
        None => Range::Unavailable {
            why: format!("no upgrade path to {head}"),
        },
    };
    match database {
        DatabaseRevision::At { revision } if revision == head => Range::NoMigrations {
            head: head.to_string(),
        },
        DatabaseRevision::At { revision } if graph.contains(revision) => {
            upgrade(None, Some(revision.clone()))
        }
        DatabaseRevision::At { revision } => Range::Unavailable {
            why: format!("the database is at {revision}, which this checkout does not know"),
        },
        DatabaseRevision::NoRevision {
            legacy_tables: Some(tables),
        } if !tables.is_empty() => {
            let base = graph
                .upgrade_path(None, head)
                .and_then(|p| p.first().map(|b| b.to_string()));
            upgrade(base.clone(), base)
        }
        DatabaseRevision::NoRevision { .. } => upgrade(None, None),
        DatabaseRevision::Unknown { why } => Range::Unavailable {
            why: format!(
                "the database's revision is unknown ({why}); `cargo xtask migrations --from REV` previews \
                 from a revision you name"
            ),
        },
    }
}

/// One pending revision: its message and the SQL Alembic renders for it,
/// or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RevisionPreview {
    pub id: String,
    pub message: String,
    pub sql: Option<String>,
    pub no_preview: Option<String>,
}

/// What a plan shows of the migrations.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Preview {
    NoMigrations {
        head: String,
    },
    Upgrade {
        from: Option<String>,
        to: String,
        stamp: Option<String>,
        /// The offline command, for the reader to rerun.
        command: Vec<String>,
        revisions: Vec<RevisionPreview>,
        findings: Vec<Finding>,
    },
    Unavailable {
        why: String,
    },
}

impl Preview {
    pub fn findings(&self) -> &[Finding] {
        match self {
            Preview::Upgrade { findings, .. } => findings,
            _ => &[],
        }
    }
}

/// Decides the range, renders it with Alembic and lints the result.
pub fn gather(
    env: &Environment,
    graph: &RevisionGraph,
    head: &str,
    database: &DatabaseRevision,
) -> Preview {
    match range(graph, head, database) {
        Range::NoMigrations { head } => Preview::NoMigrations { head },
        Range::Unavailable { why } => Preview::Unavailable { why },
        Range::Upgrade {
            stamp,
            from,
            to,
            revisions,
        } => {
            let command = offline_command(env, from.as_deref(), &to);
            let mut previews = render(env, from.as_deref(), &revisions);
            for preview in &mut previews {
                preview.message = versions::message(graph, &preview.id);
            }
            let findings = lint(&previews, env);
            Preview::Upgrade {
                from,
                to,
                stamp,
                command,
                revisions: previews,
                findings,
            }
        }
    }
}

fn lint(previews: &[RevisionPreview], env: &Environment) -> Vec<Finding> {
    let sql: Vec<RevisionSql> = previews
        .iter()
        .filter_map(|p| {
            p.sql.as_deref().map(|sql| RevisionSql {
                revision: &p.id,
                sql,
            })
        })
        .collect();
    lint::lint(&sql, &env.migrations.rules)
}

/// `alembic -c alembic.ini upgrade FROM:TO --sql` with the environment's
/// preview command.
fn offline_command(env: &Environment, from: Option<&str>, to: &str) -> Vec<String> {
    let mut argv = env.migrations.preview_command.clone();
    let target = match from {
        Some(from) => format!("{from}:{to}"),
        None => to.to_string(),
    };
    argv.extend(["-c", "alembic.ini", "upgrade", &target, "--sql"].map(String::from));
    argv
}

/// The directory Alembic runs in: the nearest one above the versions
/// directory (inside the checkout) that holds an alembic.ini.
pub fn alembic_dir(env: &Environment) -> Option<PathBuf> {
    let versions = env.root.join(&env.alembic_versions);
    versions
        .ancestors()
        .take_while(|dir| dir.starts_with(&env.root))
        .find(|dir| dir.join("alembic.ini").is_file())
        .map(Path::to_path_buf)
}

/// Renders the revisions in one Alembic run; when that fails (a migration
/// that queries cannot run offline), one run per revision, so that the
/// others still show and the failing one says why.
fn render(env: &Environment, from: Option<&str>, revisions: &[String]) -> Vec<RevisionPreview> {
    let Some(dir) = alembic_dir(env) else {
        let why = format!(
            "no alembic.ini in {} or a directory above it",
            env.alembic_versions.display()
        );
        return revisions.iter().map(|id| unavailable(id, &why)).collect();
    };
    let Some(to) = revisions.last() else {
        return Vec::new();
    };
    let whole = run_offline(env, &dir, from, to);
    if let Ok(stdout) = &whole {
        let chunks = split_offline_output(stdout);
        if revisions
            .iter()
            .all(|id| chunks.iter().any(|(to, _)| to == id))
        {
            return assign(revisions, chunks);
        }
    }
    let mut previous = from.map(str::to_string);
    revisions
        .iter()
        .map(|id| {
            let one = run_offline(env, &dir, previous.as_deref(), id);
            previous = Some(id.clone());
            match one.map(|stdout| split_offline_output(&stdout)) {
                Ok(chunks) => assign(std::slice::from_ref(id), chunks).remove(0),
                Err(why) => unavailable(id, &why),
            }
        })
        .collect()
}

fn run_offline(
    env: &Environment,
    dir: &Path,
    from: Option<&str>,
    to: &str,
) -> Result<String, String> {
    let argv = offline_command(env, from, to);
    // Python would write __pycache__ into the checkout's versions directory:
    // an untracked directory in the backend's build context, so the next
    // deploy would see a dirty tree and build a new tag for nothing.
    let vars = [
        ("DATABASE_URL", PLACEHOLDER_URL),
        ("PYTHONDONTWRITEBYTECODE", "1"),
    ];
    // Rendering runs the checkout's Python (env.py, every migration): it
    // sees no token, password or URL of the deployer's shell, only what it
    // needs to start and what deploy.toml names (`migrations.preview_env`).
    let mut keep: Vec<&str> = PREVIEW_ENVIRONMENT.to_vec();
    keep.extend(env.migrations.preview_env.iter().map(String::as_str));
    let output =
        process::capture_scrubbed(&argv, dir, &keep, &vars).map_err(|e| format!("{e:#}"))?;
    if output.code == 0 {
        Ok(output.stdout)
    } else {
        Err(alembic_reason(&output.stderr, output.code))
    }
}

/// Alembic's reason: the exception line that ends its traceback.
pub fn alembic_reason(stderr: &str, code: i32) -> String {
    match crate::cluster::last_line(stderr) {
        "" => format!("Alembic exited with {code}"),
        line => line.to_string(),
    }
}

fn unavailable(id: &str, why: &str) -> RevisionPreview {
    RevisionPreview {
        id: id.to_string(),
        message: String::new(),
        sql: None,
        no_preview: Some(why.to_string()),
    }
}

fn assign(revisions: &[String], chunks: Vec<(String, String)>) -> Vec<RevisionPreview> {
    revisions
        .iter()
        .map(|id| match chunks.iter().find(|(to, _)| to == id) {
            Some((_, sql)) => RevisionPreview {
                id: id.clone(),
                message: String::new(),
                sql: Some(sql.clone()),
                no_preview: None,
            },
            None => unavailable(id, "Alembic rendered no SQL for it"),
        })
        .collect()
}

/// Splits `alembic upgrade --sql` output at its `-- Running upgrade A -> B`
/// comments: (B, the statements after it). What comes before the first
/// comment (the `alembic_version` table of an empty database) goes with the
/// first revision. The `BEGIN;` that opens the script and the `COMMIT;`
/// that closes it are left out; any other (an `autocommit_block()` ends the
/// transaction around a `CREATE INDEX CONCURRENTLY`) stays where it is, so
/// the reader and the linter see where each statement runs. Pure.
pub fn split_offline_output(stdout: &str) -> Vec<(String, String)> {
    const MARKER: &str = "-- Running upgrade ";
    let mut lines: Vec<&str> = stdout.lines().collect();
    if let Some(first) = lines.iter().position(|l| !l.trim().is_empty()) {
        if lines[first].trim() == "BEGIN;" {
            lines.remove(first);
        }
    }
    if let Some(last) = lines.iter().rposition(|l| !l.trim().is_empty()) {
        if lines[last].trim() == "COMMIT;" {
            lines.remove(last);
        }
    }
    let mut chunks: Vec<(String, String)> = Vec::new();
    let mut preamble = String::new();
    for line in lines {
        if let Some(step) = line.strip_prefix(MARKER) {
            let to = step.rsplit("-> ").next().unwrap_or("").trim().to_string();
            let start = if chunks.is_empty() {
                std::mem::take(&mut preamble)
            } else {
                String::new()
            };
            chunks.push((to, start));
            continue;
        }
        let target = match chunks.last_mut() {
            Some((_, sql)) => sql,
            None => &mut preamble,
        };
        target.push_str(line);
        target.push('\n');
    }
    for (_, sql) in &mut chunks {
        *sql = sql.trim().to_string();
    }
    chunks
}

/// Why strict migrations refuse: each finding's rule and revision, and the
/// two ways forward.
pub fn strict_refusal(env: &Environment, findings: &[Finding]) -> String {
    format!(
        "strict migrations: {}; make the migration safer, or switch the rule off for this environment \
         (migrations.disabled_rules in {})",
        findings_summary(findings),
        env.config_file.display()
    )
}

/// "Squawk found 2 risk(s) in the migrations' SQL (rule in revision, …)".
pub fn findings_summary(findings: &[Finding]) -> String {
    format!(
        "Squawk found {} risk(s) in the migrations' SQL ({})",
        findings.len(),
        findings
            .iter()
            .map(|f| format!("{} in {}", f.rule, f.revision))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

impl Preview {
    /// The plan's "Migrations" section.
    pub fn render(&self) -> String {
        match self {
            Preview::NoMigrations { head } => {
                format!("no migrations: the database is at {head} already\n")
            }
            Preview::Unavailable { why } => format!("no SQL preview: {why}\n"),
            Preview::Upgrade {
                stamp,
                command,
                revisions,
                findings,
                ..
            } => render_upgrade(stamp.as_deref(), command, revisions, findings),
        }
    }
}

fn render_upgrade(
    stamp: Option<&str>,
    command: &[String],
    revisions: &[RevisionPreview],
    findings: &[Finding],
) -> String {
    let mut out = format!(
        "the SQL Alembic will run, rendered offline (`{}`):\n",
        command.join(" ")
    );
    if let Some(base) = stamp {
        out.push_str(&format!("  stamp {base}, then\n"));
    }
    for revision in revisions {
        let title = match revision.message.as_str() {
            "" => revision.id.clone(),
            message => format!("{}: {message}", revision.id),
        };
        out.push_str(&format!("  {title}\n"));
        match (&revision.sql, &revision.no_preview) {
            (Some(sql), _) => {
                for line in sql.lines().map(str::trim_end) {
                    match line {
                        "" => out.push('\n'),
                        line => out.push_str(&format!("    {line}\n")),
                    }
                }
            }
            (None, why) => out.push_str(&format!(
                "    no SQL preview for {}: {}\n",
                revision.id,
                why.as_deref().unwrap_or("unknown")
            )),
        }
    }
    let unlinted = revisions.iter().filter(|r| r.sql.is_none()).count();
    match (findings.is_empty(), unlinted) {
        (true, 0) => out.push_str("  no findings from Squawk's rules\n"),
        (true, n) if n == revisions.len() => {
            out.push_str("  not linted: no revision's SQL could be rendered\n")
        }
        (true, n) => out.push_str(&format!(
            "  no findings from Squawk's rules in the SQL shown; {n} revision(s) without SQL were not linted\n"
        )),
        (false, _) => {}
    }
    for finding in findings {
        out.push_str(&format!(
            "  ! {} ({}): {}\n      {}\n      why: {}\n",
            finding.rule, finding.revision, finding.impact, finding.statement, finding.why
        ));
        if let Some(safer) = &finding.safer {
            out.push_str(&format!("      safer: {safer}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(revision: &str) -> DatabaseRevision {
        DatabaseRevision::At {
            revision: revision.into(),
        }
    }

    const HEAD: &str = "0002_activity_and_comments";

    #[test]
    fn the_range_runs_from_the_database_to_the_head() {
        let graph = versions::test_graph();
        assert_eq!(
            range(&graph, HEAD, &at(HEAD)),
            Range::NoMigrations { head: HEAD.into() }
        );
        assert_eq!(
            range(&graph, HEAD, &at("0001_baseline")),
            Range::Upgrade {
                stamp: None,
                from: Some("0001_baseline".into()),
                to: HEAD.into(),
                revisions: vec![HEAD.into()],
            }
        );
        let legacy = DatabaseRevision::NoRevision {
            legacy_tables: Some(vec!["households".into()]),
        };
        assert_eq!(
            range(&graph, HEAD, &legacy),
            Range::Upgrade {
                stamp: Some("0001_baseline".into()),
                from: Some("0001_baseline".into()),
                to: HEAD.into(),
                revisions: vec![HEAD.into()],
            }
        );
        let empty = DatabaseRevision::NoRevision {
            legacy_tables: Some(vec![]),
        };
        assert!(matches!(
            range(&graph, HEAD, &empty),
            Range::Upgrade { from: None, ref revisions, .. } if revisions.len() == 2
        ));
        assert!(matches!(
            range(&graph, HEAD, &at("0009_future")),
            Range::Unavailable { ref why } if why.contains("0009_future")
        ));
        let unknown = DatabaseRevision::Unknown {
            why: "no ready backend pod to ask".into(),
        };
        assert!(matches!(
            range(&graph, HEAD, &unknown),
            Range::Unavailable { ref why } if why.contains("no ready backend pod") && why.contains("--from")
        ));
    }

    #[test]
    fn offline_output_is_split_per_revision() {
        let stdout = "BEGIN;\n\nCREATE TABLE alembic_version (\n    version_num VARCHAR(32) NOT NULL\n);\n\n\
                      -- Running upgrade  -> 0001_baseline\n\nCREATE TABLE households (id SERIAL);\n\n\
                      INSERT INTO alembic_version (version_num) VALUES ('0001_baseline');\n\n\
                      -- Running upgrade 0001_baseline -> 0002_x\n\nCREATE TABLE comments (id SERIAL);\n\n\
                      COMMIT;\n\n";
        let chunks = split_offline_output(stdout);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].0, "0001_baseline");
        assert!(chunks[0].1.starts_with("CREATE TABLE alembic_version"));
        assert!(chunks[0].1.ends_with("VALUES ('0001_baseline');"));
        assert_eq!(
            chunks[1],
            (
                "0002_x".to_string(),
                "CREATE TABLE comments (id SERIAL);".to_string()
            )
        );
        // An autocommit block's COMMIT/BEGIN stay inside the revision.
        let block =
            "BEGIN;\n\n-- Running upgrade a -> b\n\nALTER TABLE t ADD x INT;\n\nCOMMIT;\n\n\
                     CREATE INDEX CONCURRENTLY i ON t (x);\n\nBEGIN;\n\n\
                     UPDATE alembic_version SET version_num='b';\n\nCOMMIT;\n";
        let chunks = split_offline_output(block);
        assert!(chunks[0]
            .1
            .contains("COMMIT;\n\nCREATE INDEX CONCURRENTLY i ON t (x);\n\nBEGIN;"));
        assert!(chunks[0].1.ends_with("version_num='b';"));
    }

    #[test]
    fn a_pre_alembic_schema_shows_the_stamp_before_the_sql() {
        let preview = Preview::Upgrade {
            from: Some("0001_baseline".into()),
            to: HEAD.into(),
            stamp: Some("0001_baseline".into()),
            command: vec!["alembic".into(), "upgrade".into()],
            revisions: vec![RevisionPreview {
                id: HEAD.into(),
                message: "Activity log.".into(),
                sql: Some("CREATE TABLE a (\n    id INTEGER, \n\n);".into()),
                no_preview: None,
            }],
            findings: Vec::new(),
        };
        assert_eq!(
            preview.render(),
            "the SQL Alembic will run, rendered offline (`alembic upgrade`):\n  \
             stamp 0001_baseline, then\n  \
             0002_activity_and_comments: Activity log.\n    \
             CREATE TABLE a (\n        id INTEGER,\n\n    );\n  \
             no findings from Squawk's rules\n"
        );
    }

    #[test]
    fn the_reason_is_the_last_line_of_the_traceback() {
        let stderr = "Traceback (most recent call last):\n  File \"x.py\", line 3\n\
                      AttributeError: 'NoneType' object has no attribute 'execute'\n\n";
        assert_eq!(
            alembic_reason(stderr, 1),
            "AttributeError: 'NoneType' object has no attribute 'execute'"
        );
        assert_eq!(alembic_reason("", 2), "Alembic exited with 2");
    }
}
