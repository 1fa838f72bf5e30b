//! Asking before anything destructive: a y/N question on a terminal; without
//! one, a refusal that says to pass `--yes` (never a prompt nobody sees).

use std::io::IsTerminal;

use anyhow::Result;

use crate::error::input_error;

/// Refuses at once, before anything is read, when a confirmation will be
/// needed and there is no terminal to ask on.
pub fn require_terminal_or_yes(yes: bool, what: &str) -> Result<()> {
    if yes || std::io::stdin().is_terminal() {
        return Ok(());
    }
    Err(input_error(format!(
        "{what}; there is no terminal to confirm on, so pass --yes"
    )))
}

/// `what` describes the change ("deploying colony-dev changes …").
pub fn confirm(yes: bool, what: &str, question: &str) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(input_error(format!(
            "{what}; there is no terminal to confirm on, so pass --yes"
        )));
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(input_error("not confirmed; nothing was changed"))
    }
}
