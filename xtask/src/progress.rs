//! Progress of long steps: a live line per task on a terminal (indicatif),
//! plain prefixed lines otherwise (CI logs, pipes, --json).

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use backend_migrations::redact::mask_all;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// How much a command says on stderr while it works: the global `-q`
/// (errors, warnings and the result only) and `-v` (every command echoed
/// whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verbosity {
    Quiet,
    #[default]
    Normal,
    Verbose,
}

static VERBOSITY: OnceLock<Verbosity> = OnceLock::new();

/// Set once, from the command line, before anything is said.
pub fn set_verbosity(verbosity: Verbosity) {
    let _ = VERBOSITY.set(verbosity);
}

pub fn verbosity() -> Verbosity {
    VERBOSITY.get().copied().unwrap_or_default()
}

/// `-v`: echo commands whole, show what tools say on success too.
pub fn verbose() -> bool {
    verbosity() == Verbosity::Verbose
}

/// Live lines (redrawn in place): on a terminal, unless `-q`.
pub fn live() -> bool {
    std::io::stderr().is_terminal() && verbosity() != Verbosity::Quiet
}

/// A line of progress on stderr (masked), unless `-q`. Warnings and
/// errors use `eprintln!` and are always said.
pub fn say(line: impl std::fmt::Display) {
    if verbosity() != Verbosity::Quiet {
        eprintln!("{}", mask_all(&line.to_string()));
    }
}

#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
    silent: bool,
}

impl Progress {
    /// Live lines only when stderr is a terminal (and not `-q`).
    pub fn new() -> Progress {
        Progress {
            multi: live().then(MultiProgress::new),
            silent: false,
        }
    }

    /// Lines that say nothing: work done while the user reads something
    /// else (a plan, a question).
    pub fn silent() -> Progress {
        Progress {
            multi: None,
            silent: true,
        }
    }

    pub fn line(&self, name: &str) -> Line {
        let bar = self.multi.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:<9} {wide_msg}")
                    .expect("valid template"),
            );
            bar.set_prefix(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Line {
            bar,
            name: name.to_string(),
            silent: self.silent,
        }
    }
}

pub struct Line {
    bar: Option<ProgressBar>,
    name: String,
    silent: bool,
}

impl Line {
    /// A passing state (e.g. bytes pushed): shown live, not logged.
    pub fn set(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(mask_all(message));
        }
    }

    /// A milestone: shown live on a terminal, one log line otherwise.
    pub fn log(&self, message: &str) {
        let message = mask_all(message);
        match &self.bar {
            Some(bar) => bar.set_message(message.to_string()),
            None if self.silent => {}
            None => say(format!("[{}] {message}", self.name)),
        }
    }

    /// The last word on this task; stays on screen.
    pub fn finish(&self, message: &str) {
        let message = mask_all(message);
        match &self.bar {
            Some(bar) => bar.finish_with_message(message.to_string()),
            None if self.silent => {}
            None => say(format!("[{}] {message}", self.name)),
        }
    }
}
