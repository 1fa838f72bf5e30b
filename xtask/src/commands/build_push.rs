//! `build` and `push`: the image pipeline alone, built or pushed.

use anyhow::Result;

use crate::cli::ImageArgs;
use crate::config::{self, Component};
use crate::error::input_error;
use crate::images::{self, builder, docker, runner, Mode};

pub fn build(args: ImageArgs) -> Result<()> {
    build_or_push(args, Mode::Build)
}

pub fn push(args: ImageArgs) -> Result<()> {
    build_or_push(args, Mode::Push)
}

fn build_or_push(args: ImageArgs, mode: Mode) -> Result<()> {
    let env = config::load(args.env.as_deref(), &args.env_overrides)?;
    // The builder and the runner are decided before any build: a Dockerfile
    // the builder cannot build, or an image the runner cannot run in, is
    // refused here, with nothing built.
    let daemon = docker::registry_view_blocking().ok();
    let builder = builder::choose_here(daemon.as_ref());
    images::check_dockerfiles(&env, &builder, daemon.as_ref())?;
    let runner = runner::decide(
        env.image(Component::Backend).platform.as_ref(),
        daemon.as_ref().and_then(|d| d.platform.as_ref()),
        args.migrations_binary.as_deref(),
    )
    .map_err(|why| input_error(format!("cannot build the backend image: {why}")))?;
    let options = images::Options {
        mode,
        jobs: args.jobs.into(),
        builder,
        runner: Some(runner),
        silent: false,
    };
    let tags = images::tags(&env)?;
    let reports = crate::runtime::block_on(images::run(&env, &tags, &options, daemon.as_ref()))?;
    if args.json {
        crate::report::print_json(&images::ImagesJson {
            images: images::to_json(&reports),
        })?;
    } else {
        print!("{}", images::render_table(&reports));
    }
    Ok(())
}
