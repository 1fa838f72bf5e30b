//! Progress of long steps: a live line per task on a terminal (indicatif),
//! plain prefixed lines otherwise (CI logs, pipes, --json).

use std::io::IsTerminal;
use std::time::Duration;

use backend_migrations::redact::mask_all;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Live lines only when stderr is a terminal.
    pub fn new() -> Progress {
        Progress {
            multi: std::io::stderr().is_terminal().then(MultiProgress::new),
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
        }
    }
}

pub struct Line {
    bar: Option<ProgressBar>,
    name: String,
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
            None => eprintln!("[{}] {message}", self.name),
        }
    }

    /// The last word on this task; stays on screen.
    pub fn finish(&self, message: &str) {
        let message = mask_all(message);
        match &self.bar {
            Some(bar) => bar.finish_with_message(message.to_string()),
            None => eprintln!("[{}] {message}", self.name),
        }
    }
}
