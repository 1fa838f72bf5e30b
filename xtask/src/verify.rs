//! `cargo xtask verify [<env>]`: validates the environment and the expected
//! head today; the checks against the cluster land with the simulated cluster.

use anyhow::Result;

use crate::cli::VerifyArgs;
use crate::error::{input_error, not_built_yet};
use crate::{config, kube, plan, versions};

pub fn run(args: VerifyArgs) -> Result<()> {
    let env = config::load(args.env.as_deref(), &args.env_overrides)?;
    let head = versions::expected_head(&env)
        .map_err(|why| input_error(format!("cannot verify {}: {why}", env.name)))?;
    let pod = "<newest backend pod>";
    Err(not_built_yet(
        "verify",
        &format!(
            "check by hand that `{}` prints `{head} (head)` and that `{}` ends with `Migrations complete.`",
            plan::display_argv(&kube::alembic_current_args(&env, pod)),
            plan::display_argv(&kube::migrations_log_args(&env, pod)),
        ),
    ))
}
