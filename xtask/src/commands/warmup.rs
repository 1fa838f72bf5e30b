//! Builds begun while the user reads the plan. A deploy that asks before
//! it changes anything starts building its images as soon as the plan is
//! shown, when the facts say that its image step builds
//! (`plan::deploy::builds_to_start`): nothing is pushed and the release is
//! not touched, so the question still comes before the first change. After
//! "y", the image stage finds the work done (BuildKit's cache, and the file
//! sync's copy of each context), and its own builds take a moment; a build
//! that failed stops the deploy there, with its step and output, before
//! the lock and the backup. Silent while the question waits; a declined or
//! interrupted deploy leaves the built images in the local daemon only, as
//! `cargo xtask build` would.
//! (Begun earlier, with the cluster's facts, and under `--yes` too, they
//! were measured to gain nothing on 2 cores and to delay the plan: the
//! deploy bench, 0.94x the runbook against 0.88x, facts 1.37 s against
//! 0.85 s.)

use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::config::Environment;
use crate::images::{self, Mode};
use crate::plan::deploy::{DeployFacts, DeployOptions};
use crate::{plan, process, progress, runtime};

/// The builds under way; `finish` waits for them.
pub struct Warmup {
    /// How they ended: a failure's text, with its step and output.
    finished: mpsc::Receiver<Result<(), String>>,
    /// `finish` saw the builds end.
    over: bool,
}

/// Starts, in the background, the builds that the deploy's image step
/// will run, as it would run them; None when the facts leave a doubt that
/// it builds (`plan::deploy::builds_to_start`).
pub fn start(
    env: &Environment,
    facts: &DeployFacts,
    deploy_options: DeployOptions,
) -> Option<Warmup> {
    let tags = plan::deploy::builds_to_start(env, facts, deploy_options)?;
    let facts = facts.image_step();
    let runner = facts.runner.as_ref().ok().cloned();
    let options = images::Options {
        silent: true,
        ..images::Options::deploy(Mode::Build, runner, facts.builder.clone())
    };
    let (env, daemon) = (env.clone(), facts.daemon.as_ref().ok().cloned());
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let built = runtime::block_on(images::run(&env, &tags, &options, daemon.as_ref()));
        let _ = done.send(built.map(drop).map_err(|e| format!("{e:#}")));
    });
    Some(Warmup {
        finished,
        over: false,
    })
}

/// Given up (a refusal, or the question declined): what the builds
/// started (a `cargo build` of the runner) ends with us. The daemon stops a
/// build whose connection closes by itself.
impl Drop for Warmup {
    fn drop(&mut self) {
        if !self.over && self.finished.try_recv().is_err() {
            process::terminate_children(Duration::from_secs(5));
        }
    }
}

impl Warmup {
    /// The line under a plan that waits for its answer.
    pub fn tell_the_reader(&self) {
        progress::say(
            "building the images while you read (kept in this machine's Docker; nothing is \
             pushed before you answer)",
        );
    }

    /// Waits for the builds to end; a Ctrl-C still stops the deploy (once
    /// its interrupt handler is installed). A build that failed stops it
    /// too, before its first change: the image stage would fail the same
    /// way, with the backup under way beside it.
    pub fn finish(mut self) -> Result<()> {
        let ended = match self.finished.try_recv() {
            Ok(ended) => Some(ended),
            Err(_) => {
                progress::say("images: finishing the builds begun while you read the plan");
                process::recv_unless_interrupted(&self.finished)?
            }
        };
        self.over = true;
        match ended {
            Some(Err(why)) => Err(anyhow!(why).context(
                "the images did not build while you read the plan, so nothing was changed \
                 (no backup, no push, no Helm): fix the build and deploy again",
            )),
            // Built, or the thread is gone: the image stage builds anyway.
            _ => Ok(()),
        }
    }
}
