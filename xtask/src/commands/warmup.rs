//! Builds begun while the user reads the plan. A deploy that asks before
//! it changes anything starts building its images as soon as the plan is
//! shown: nothing is pushed and the release is not touched, so the question
//! still comes before the first change. After "y", the image stage finds
//! the work done (BuildKit's cache, and the file sync's copy of each
//! context), and its own builds take a moment. Silent while the question
//! waits; a declined or interrupted deploy leaves the built images in the
//! local daemon only, as `cargo xtask build` would.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use anyhow::Result;

use crate::config::Environment;
use crate::images::registry::DaemonView;
use crate::images::{self, Mode};
use crate::plan::{Action, Plan};
use crate::{process, progress, runtime};

/// The builds under way; `finish` waits for them.
pub struct Warmup {
    finished: mpsc::Receiver<()>,
    /// `finish` saw the builds end.
    over: bool,
}

/// Starts the builds of `plan`'s image step, if it builds any (not with
/// `--skip-build` or `--images-from`), and says so under the plan.
pub fn start(env: &Environment, plan: &Plan, daemon: Option<&DaemonView>) -> Option<Warmup> {
    let options = plan.steps.iter().find_map(|step| match &step.action {
        Action::Images {
            tags,
            runner,
            builder,
            use_existing: false,
        } => Some((
            tags.clone(),
            images::Options {
                mode: Mode::Build,
                jobs: 2,
                runner: runner.clone(),
                builder: builder.clone(),
                silent: true,
            },
        )),
        _ => None,
    });
    let (tags, options) = options?;
    let (env, daemon) = (env.clone(), daemon.cloned());
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        // A failure is the image stage's to say, after "y": it builds again.
        let _ = runtime::block_on(images::run(&env, &tags, &options, daemon.as_ref()));
        let _ = done.send(());
    });
    progress::say(
        "building the images while you read (kept in this machine's Docker; nothing is pushed \
         before you answer)",
    );
    Some(Warmup {
        finished,
        over: false,
    })
}

/// Given up (the question declined, or another refusal after it): what
/// the builds started (a `cargo build` of the runner) ends with us. The
/// daemon stops a build whose connection closes by itself.
impl Drop for Warmup {
    fn drop(&mut self) {
        if !self.over && self.finished.try_recv().is_err() {
            process::terminate_children(Duration::from_secs(5));
        }
    }
}

impl Warmup {
    /// Waits for the builds to end, however they end; a Ctrl-C still
    /// stops the deploy (once its interrupt handler is installed).
    pub fn finish(mut self) -> Result<()> {
        if self.finished.try_recv().is_err() {
            progress::say("images: finishing the builds begun while you read the plan");
            loop {
                if let Some(interrupt) = process::interrupted() {
                    return Err(interrupt.into());
                }
                match self.finished.recv_timeout(Duration::from_millis(100)) {
                    Err(RecvTimeoutError::Timeout) => continue,
                    _ => break,
                }
            }
        }
        self.over = true;
        Ok(())
    }
}
