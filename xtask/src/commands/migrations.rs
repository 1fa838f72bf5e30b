//! `cargo xtask migrations [<env>]`: the deploy's migration preview on its
//! own — the SQL the checkout's pending migrations will run on the
//! environment's database, and Squawk's findings — without deploying.
//! Read-only: the database's revision comes from a running backend pod
//! (`alembic current`), or from `--from` with no cluster at all.

use anyhow::Result;

use crate::alembic::database::{self, DatabaseRevision};
use crate::alembic::preview::{self, Preview};
use crate::alembic::versions;
use crate::cli::MigrationsArgs;
use crate::cluster::{release, Backend};
use crate::config::{self, names, Environment};
use crate::error::input_error;

/// `migrations --json`: the database's revision and where it was read, the
/// head, and the preview (SQL and findings per revision).
#[derive(serde::Serialize)]
struct MigrationsJson<'a> {
    environment: &'a str,
    database: &'a DatabaseRevision,
    database_source: &'a str,
    head: &'a str,
    migrations: &'a preview::Preview,
}

pub fn run(args: MigrationsArgs) -> Result<()> {
    let env = config::load(args.env.as_deref(), &args.env_overrides)?;
    let graph = versions::load_graph(&env).map_err(input_error)?;
    let head = graph
        .head()
        .map_err(|e| input_error(e.to_string()))?
        .to_string();
    let (database, source) = match &args.from {
        Some(from) => (named_revision(&graph, from)?, "--from".to_string()),
        None => (
            database_revision(&env)?,
            format!("a backend pod of {}/{}", env.kube_context, env.namespace),
        ),
    };
    let preview = preview::gather(&env, &graph, &head, &database);
    if args.json {
        crate::report::print_json(&MigrationsJson {
            environment: &env.name,
            database: &database,
            database_source: &source,
            head: &head,
            migrations: &preview,
        })?;
    } else {
        print!("{}", render(&env, &database, &source, &head, &preview));
    }
    refuse_findings_if_strict(&env, args.strict, &preview)
}

fn render(
    env: &Environment,
    database: &DatabaseRevision,
    source: &str,
    head: &str,
    preview: &Preview,
) -> String {
    format!(
        "Migrations for {} (database: {}, from {source}; checkout head: {head})\n\n{}",
        env.name,
        database.describe(),
        preview.render()
    )
}

/// `--from REV` (or `base`: an empty database), checked against the graph.
fn named_revision(
    graph: &backend_migrations::revisions::RevisionGraph,
    from: &str,
) -> Result<DatabaseRevision> {
    if from == "base" {
        return Ok(DatabaseRevision::NoRevision {
            legacy_tables: Some(Vec::new()),
        });
    }
    names::check_revision(from).map_err(input_error)?;
    if !graph.contains(from) {
        return Err(input_error(format!(
            "--from {from}: the checkout's migrations have no such revision (known: base, {})",
            graph.ids().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(DatabaseRevision::At {
        revision: from.to_string(),
    })
}

/// The database's revision as a ready backend pod sees it.
fn database_revision(env: &Environment) -> Result<DatabaseRevision> {
    release::check_context(env)?;
    let backend = Backend::read(env)?;
    Ok(database::read_in(
        env,
        backend.ready_pod().map(|p| p.name()),
    ))
}

fn refuse_findings_if_strict(env: &Environment, strict: bool, preview: &Preview) -> Result<()> {
    let findings = preview.findings();
    if (strict || env.migrations.strict) && !findings.is_empty() {
        return Err(input_error(preview::strict_refusal(env, findings)));
    }
    Ok(())
}
