//! `build` and `push`: the image stages alone.

use anyhow::Result;

use crate::cli::ImageArgs;
use crate::config;
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
    images::check_contexts(&env)?;
    let tags = images::tags(&env)?;
    let reports = runtime.block_on(images::run(&env, &tags, &options))?;
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
