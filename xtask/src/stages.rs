//! `build`, `push`, `backup`, `status`: one stage alone. Each validates its
//! environment now and says plainly that its work is not built yet.

use anyhow::Result;

use crate::cli::StageArgs;
use crate::config;
use crate::error::not_built_yet;

pub fn build(args: StageArgs) -> Result<()> {
    let env = config::load(args.env.as_deref(), &args.env_overrides)?;
    Err(not_built_yet(
        "build",
        &format!(
            "`cargo xtask deploy {} --dry-run` shows the images and tags it will build.",
            env.name
        ),
    ))
}

pub fn push(args: StageArgs) -> Result<()> {
    let env = config::load(args.env.as_deref(), &args.env_overrides)?;
    Err(not_built_yet(
        "push",
        &format!(
            "`cargo xtask deploy {} --dry-run` shows where the images will be pushed.",
            env.name
        ),
    ))
}

pub fn backup(args: StageArgs) -> Result<()> {
    let env = config::load(args.env.as_deref(), &args.env_overrides)?;
    Err(not_built_yet(
        "backup",
        &format!(
            "back up by hand with `kubectl --context {} --namespace {} exec <database pod> -- pg_dump -Fc`.",
            env.kube_context, env.namespace
        ),
    ))
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
