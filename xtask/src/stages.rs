//! `build`, `push`, `status`: one stage alone. `status` validates its
//! environment and says plainly that its work is not built yet.

use anyhow::Result;

use crate::cli::{ImageArgs, StageArgs};
use crate::config;
use crate::error::not_built_yet;
use crate::images::{self, Stage};

pub fn build(args: ImageArgs) -> Result<()> {
    images_stage(args, Stage::Build)
}

pub fn push(args: ImageArgs) -> Result<()> {
    images_stage(args, Stage::Push)
}

fn images_stage(args: ImageArgs, stage: Stage) -> Result<()> {
    let env = config::load(args.env.as_deref(), &args.env_overrides)?;
    let options = images::Options {
        stage,
        jobs: args.jobs.into(),
        migrations_binary: args.migrations_binary,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let reports = runtime.block_on(images::run(&env, &options))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&images::to_json(&reports))?
        );
    } else {
        print!("{}", images::render_table(&reports));
    }
    Ok(())
}

pub fn status(args: StageArgs) -> Result<()> {
    let env = config::load(args.env.as_deref(), &args.env_overrides)?;
    Err(not_built_yet(
        "status",
        &format!(
            "`helm history {} --namespace {} --kube-context {}` lists the releases.",
            env.release, env.namespace, env.kube_context
        ),
    ))
}
