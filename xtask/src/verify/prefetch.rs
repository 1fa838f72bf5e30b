//! Verify's reads of the running pods, started with a deploy's facts.
//!
//! The longest of them is `alembic current` in a pod (a Python start-up).
//! A deploy that finds nothing to deploy verifies the running pods: it
//! waits for these reads instead of making them again. A deploy that
//! upgrades verifies the new pods, so it stops them, and the facts never
//! wait for them: the database's revision comes from the runner's status
//! (no Python) when the image has one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Result};

use super::reading::Reading;
use super::{gather_with, pods_to_read, Expectation, Facts, Known};
use crate::cluster::{self, kubectl, Backend};
use crate::config::Environment;

/// The reads under way; clones share them.
#[derive(Clone)]
pub struct Prefetch {
    env: Environment,
    pod: String,
    reads: Arc<Mutex<Reads>>,
}

struct Reads {
    backend: Backend,
    alembic_current: Reading,
    logs: Vec<(String, Reading)>,
}

impl Prefetch {
    /// Starts `alembic current` in `pod` (a ready pod of `backend`) and the
    /// `run-migrations` log of each pod verify would read.
    pub fn start(env: &Environment, backend: Backend, pod: &str) -> Prefetch {
        let logs = pods_to_read(&backend, Some(pod))
            .into_iter()
            .map(|name| {
                let reading = Reading::start(&kubectl::migrations_log_args(env, &name));
                (name, reading)
            })
            .collect();
        Prefetch {
            env: env.clone(),
            pod: pod.to_string(),
            reads: Arc::new(Mutex::new(Reads {
                alembic_current: Reading::start(&kubectl::alembic_current_args(env, pod)),
                backend,
                logs,
            })),
        }
    }

    /// The pod `alembic current` runs in.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// Its `alembic current`, waited for (and kept for verify).
    pub fn alembic_current(&self) -> Result<cluster::Output> {
        let mut reads = self.reads.lock().expect("prefetch lock");
        match reads.alembic_current.answer() {
            Some(Ok(output)) => Ok(output.clone()),
            Some(Err(why)) => Err(anyhow!("{why}")),
            None => Err(anyhow!("`alembic current` in {} was stopped", self.pod)),
        }
    }

    /// Stops the reads still running (a deploy verifies the new pods).
    pub fn stop(&self) {
        let mut reads = self.reads.lock().expect("prefetch lock");
        reads.alembic_current.stop();
        for (_, log) in reads.logs.iter_mut() {
            log.stop();
        }
    }

    /// The facts verify evaluates, from these reads once they end; one that
    /// was stopped or could not run is read again now.
    pub fn finish(&self, expected: Expectation) -> Result<Facts> {
        let mut reads = self.reads.lock().expect("prefetch lock");
        let alembic_current = reads
            .alembic_current
            .output()
            .map(|output| (self.pod.clone(), output));
        let logs: HashMap<String, cluster::Output> = reads
            .logs
            .iter_mut()
            .filter_map(|(name, log)| Some((name.clone(), log.output()?)))
            .collect();
        let known = Known {
            alembic_current,
            logs,
        };
        gather_with(&self.env, expected, reads.backend.clone(), known)
    }
}

impl std::fmt::Debug for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetch")
            .field("pod", &self.pod)
            .finish_non_exhaustive()
    }
}
