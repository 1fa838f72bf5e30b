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
    let answer = read_answer()?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(input_error("not confirmed; nothing was changed"))
    }
}

/// A line from the terminal, read on a thread of its own so that a Ctrl-C
/// (once the interrupt handler is installed, as while a deploy lock is
/// held) ends the question at once, with the lock released by the
/// unwinding, instead of waiting for Enter.
fn read_answer() -> Result<String> {
    let (sender, answer) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let read = std::io::stdin().read_line(&mut line).map(|_| line);
        let _ = sender.send(read);
    });
    match crate::process::recv_unless_interrupted(&answer) {
        Ok(Some(read)) => Ok(read?),
        Ok(None) => Ok(String::new()),
        Err(interrupt) => {
            eprintln!();
            Err(interrupt.into())
        }
    }
}
