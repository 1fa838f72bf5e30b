//! `cargo xtask backup [<env>]`: a backup on its own (`database::backup`),
//! and what it wrote.

use anyhow::Result;

use crate::cli::EnvArgs;
use crate::config;
use crate::database::backup::take;

pub fn run(args: EnvArgs) -> Result<()> {
    let env = config::load(args.env.as_deref(), &args.env_overrides)?;
    let backup = take(&env)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "environment": env.name,
                "path": backup.path.display().to_string(),
                "bytes": backup.size,
                "seconds": backup.took.as_secs_f64(),
            })
        );
        return Ok(());
    }
    println!(
        "backup of {}: {} ({}, {:.1} s)",
        env.name,
        backup.path.display(),
        crate::images::human_bytes(backup.size),
        backup.took.as_secs_f64()
    );
    Ok(())
}
