//! How failures reach the user: a message and an exit code.
//!
//! Exit 2 means the input was wrong and nothing ran (clap uses 2 for usage
//! errors too); exit 1 means something failed while running; 130/143 mean
//! an interrupt (SIGINT/SIGTERM) stopped the run.

use std::fmt;

/// Bad input (unknown environment, invalid name, missing file…), found
/// before any command ran.
#[derive(Debug)]
pub struct InputError(pub String);

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

/// Shorthand: `return Err(input_error(...))`.
pub fn input_error(message: impl Into<String>) -> anyhow::Error {
    InputError(message.into()).into()
}

/// The exit code for an error that reached `main`.
pub fn exit_code(error: &anyhow::Error) -> i32 {
    for cause in error.chain() {
        if let Some(interrupt) = cause.downcast_ref::<crate::process::Interrupted>() {
            return interrupt.exit_code();
        }
        if let Some(stopped) = cause.downcast_ref::<crate::process::Stopped>() {
            return stopped.interrupt.exit_code();
        }
    }
    if error.chain().any(|cause| cause.is::<InputError>()) {
        2
    } else {
        1
    }
}
