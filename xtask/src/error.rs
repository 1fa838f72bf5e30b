//! How failures reach the user: a message and an exit code.
//!
//! Exit 2 means the input was wrong and nothing ran (clap uses 2 for usage
//! errors too); exit 1 means something failed while running; 130/143 mean
//! an interrupt (SIGINT/SIGTERM) stopped the run.

use std::fmt;

/// Bad input (unknown environment, invalid name, missing file…), found
/// before any command ran.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// Shorthand: `return Err(input_error(...))`; takes a message or a typed
/// error (whose whole text becomes the message).
pub fn input_error(message: impl fmt::Display) -> anyhow::Error {
    InputError(message.to_string()).into()
}

/// A fact a plan could not have (the cluster, the daemon, a registry's
/// digest, the chart's inputs, the expected head): why, with every cause.
/// Facts keep it instead of failing the command; a plan that needs the
/// fact lists it in `missing`, one that does not runs without it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FactError(String);

/// A fact, or why it could not be had.
pub type Fact<T> = Result<T, FactError>;

impl FactError {
    pub fn new(why: impl Into<String>) -> FactError {
        FactError(why.into())
    }

    /// A typed error's text and its causes (`with_causes`).
    pub fn of(error: &(dyn std::error::Error + 'static)) -> FactError {
        FactError(with_causes(error))
    }
}

/// An `anyhow` error with its context chain, as `{:#}` shows it.
impl From<anyhow::Error> for FactError {
    fn from(error: anyhow::Error) -> FactError {
        FactError(format!("{error:#}"))
    }
}

/// An error and its causes in one line, as `{:#}` shows an anyhow error:
/// for a typed error kept as text (a plan's facts), so no cause is lost. A
/// cause the text already carries (some libraries print their source in
/// their own message) is not repeated.
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The exit code for an error that reached `main`.
pub fn exit_code(error: &anyhow::Error) -> i32 {
    for cause in error.chain() {
        if let Some(status) = cause.downcast_ref::<Status>() {
            return status.code;
        }
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

/// A command's answer given as its exit status (`lock`: 3 held, 4 stale),
/// with what it means.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Status {
    pub code: i32,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    #[test]
    fn causes_are_joined_once() {
        let layer = |text, source: Option<Layer>| Layer {
            text,
            source: source.map(Box::new),
        };
        let inner = layer("connection refused", None);
        let echoing = layer("client error (Connect)", Some(inner));
        let outer = layer("client error (Connect)", Some(echoing));
        assert_eq!(
            with_causes(&layer("pushing failed", Some(outer))),
            "pushing failed: client error (Connect): connection refused"
        );
    }
}
