//! `cargo xtask verify [<env>]`: what the running release expects, then
//! the checks of `verify` (the domain), printed; exit 1 if any fails.

use anyhow::Result;

use crate::alembic::versions;
use crate::cli::VerifyArgs;
use crate::cluster::release;
use crate::cluster::Backend;
use crate::config::{self, names};
use crate::error::input_error;
use crate::verify::{evaluate, expectation, gather_from, render, to_json};

pub fn run(args: VerifyArgs) -> Result<()> {
    let env = config::load(args.env.as_deref(), &args.env_overrides)?;
    if let Some(head) = &args.expect {
        names::check_revision(head).map_err(input_error)?;
    }
    release::check_context(&env)?;
    let (current, backend) = std::thread::scope(|scope| {
        let current = scope.spawn(|| release::current(&env));
        let backend = Backend::read(&env);
        (current.join().expect("release reader panicked"), backend)
    });
    let (current, backend) = (current?, backend?);
    let expected = expectation(
        args.expect.as_deref(),
        current.as_ref(),
        backend.deployment.as_ref(),
        versions::expected_head(&env).map_err(|e| e.to_string()),
    )
    .map_err(|why| input_error(format!("cannot verify {}: {why}", env.name)))?;
    let facts = gather_from(&env, expected, backend)?;
    let checks = evaluate(&env, &facts);
    if args.json {
        crate::report::print_json(&to_json(&env, &facts, &checks))?;
    } else {
        print!("{}", render(&env, &facts, &checks));
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} checks failed", checks.len());
    }
    Ok(())
}
