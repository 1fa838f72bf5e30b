//! The cluster, through the `kubectl` and `helm` processes: their argv
//! (`kubectl`, `helm`), the objects read (`objects`, `backend`), the Helm
//! release and its deploy records (`release`), the rollout watch
//! (`rollout`). This file runs an argv and reads its JSON.

pub mod backend;
pub mod database;
pub mod helm;
pub mod kubectl;
pub mod lock;
pub mod manifests;
pub mod objects;
pub mod release;
pub mod rollout;

use anyhow::{anyhow, Context, Result};
use serde::de::DeserializeOwned;

pub use crate::process::Output;
pub use backend::{Backend, RolloutState};

/// Runs an argv (the first element is the program), capturing its output
/// (through the process layer).
pub fn run(argv: &[String]) -> Result<Output> {
    crate::process::capture(argv)
}

/// Runs an argv whose output the user should see as it comes (Alembic's):
/// each line, masked, on our stderr. Returns the exit code.
pub fn relay(argv: &[String]) -> Result<i32> {
    Ok(crate::process::stream(argv, "  | ")?.0)
}

/// Runs a `kubectl … -o json` (or `helm … -o json`) argv and reads its
/// answer as `T`.
pub fn json<T: DeserializeOwned>(argv: &[String]) -> Result<T> {
    let output = run(argv)?;
    if output.code != 0 {
        return Err(anyhow!(
            "`{}` failed: {}",
            crate::process::display_argv(argv),
            output.stderr.trim()
        ));
    }
    serde_json::from_str(&output.stdout).with_context(|| {
        format!(
            "cannot read what `{}` printed",
            crate::process::display_argv(argv)
        )
    })
}

/// The last non-empty line of a command's output (`alembic current`, a log).
pub fn last_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default()
}

/// Text from the cluster (annotations, Helm descriptions) as it may be
/// printed: control characters (an escape sequence could retitle or clear
/// the terminal) become `?`. Pure.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}
