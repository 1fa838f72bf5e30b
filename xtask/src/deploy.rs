//! `cargo xtask deploy <env>`: today the exact plan (`--dry-run`); the
//! stages themselves land with the build, chart, cluster and rollout issues.

use anyhow::Result;
use xshell::Shell;

use crate::cli::DeployArgs;
use crate::config::{self, Environment};
use crate::error::{input_error, not_built_yet};
use crate::plan::{self, DeployFacts, ImageFacts};
use crate::{git, helm, versions};

pub fn run(args: DeployArgs) -> Result<()> {
    let env = config::load(Some(&args.env), &args.env_overrides)?;
    if args.no_backup && !args.yes {
        return Err(input_error(
            "--no-backup deploys without a way back if a migration goes wrong; pass --yes with it to confirm",
        ));
    }
    if !args.dry_run {
        env.require_values_files()?;
    }
    let sh = Shell::new()?;
    let facts = gather_facts(&sh, &env)?;
    let plan = plan::deploy_plan(&env, &facts);
    if args.dry_run {
        print!("{}", plan.render());
        return Ok(());
    }
    if !plan.missing.is_empty() {
        return Err(input_error(format!(
            "cannot deploy {}:\n  - {}\n  `cargo xtask deploy {} --dry-run` shows the whole plan",
            env.name,
            plan.missing.join("\n  - "),
            env.name
        )));
    }
    Err(not_built_yet(
        "deploy",
        &format!(
            "`cargo xtask deploy {} --dry-run` prints every command it will run, in order.",
            env.name
        ),
    ))
}

/// Reads what the plan depends on: git, the build contexts, the Alembic
/// versions, the installed Helm. Reads only; changes nothing.
pub fn gather_facts(sh: &Shell, env: &Environment) -> Result<DeployFacts> {
    let commit = git::head(sh, &env.root);
    let mut images = Vec::new();
    for image in &env.images {
        let context_dir = env.root.join(&image.context);
        let tag = match &commit {
            Some(commit) => Some(git::image_tag(
                commit,
                &git::context_state(sh, &env.root, &image.context)?,
            )),
            None => None,
        };
        images.push(ImageFacts {
            component: image.component.to_string(),
            tag,
            context_exists: context_dir.is_dir(),
            dockerfile_exists: context_dir.join(&image.dockerfile).is_file(),
        });
    }
    Ok(DeployFacts {
        commit,
        images,
        expected_head: versions::expected_head(env),
        helm: helm::detect_version(sh),
        chart_exists: env.root.join(&env.chart).join("Chart.yaml").is_file(),
        backup_script_exists: env.root.join(plan::BACKUP_SCRIPT).is_file(),
    })
}
