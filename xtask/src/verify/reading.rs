//! A read verify starts before it needs the answer (`kubectl exec … alembic
//! current`, `kubectl logs`): begun early, waited for when verify looks, or
//! stopped (the child killed) when it proves unneeded. The facts' prefetch
//! and the rollout's collector both keep their reads as these.

use crate::cluster;
use crate::process::{self, Started};

pub(super) enum Reading {
    Running(Box<Started>),
    /// Finished; Err: it could not run (verify reads it again).
    Done(Result<cluster::Output, String>),
    /// Stopped before it finished (verify reads it again).
    Stopped,
}

impl Reading {
    pub(super) fn start(argv: &[String]) -> Reading {
        match process::start_capture(argv) {
            Ok(started) => Reading::Running(Box::new(started)),
            Err(e) => Reading::Done(Err(format!("{e:#}"))),
        }
    }

    pub(super) fn running(&self) -> bool {
        matches!(self, Reading::Running(_))
    }

    /// Kills it if it still runs; a finished answer is kept.
    pub(super) fn stop(&mut self) {
        if self.running() {
            *self = Reading::Stopped;
        }
    }

    /// Waits for it if it runs; its answer, if it has one.
    pub(super) fn answer(&mut self) -> Option<&Result<cluster::Output, String>> {
        if let Reading::Running(_) = self {
            let Reading::Running(started) = std::mem::replace(self, Reading::Stopped) else {
                unreachable!("matched above");
            };
            *self = Reading::Done(started.finish().map_err(|e| format!("{e:#}")));
        }
        match self {
            Reading::Done(answer) => Some(answer),
            _ => None,
        }
    }

    /// The output, when it finished and could run.
    pub(super) fn output(&mut self) -> Option<cluster::Output> {
        self.answer()?.as_ref().ok().cloned()
    }
}
