//! The one tokio runtime of the process, made on first use. Every
//! synchronous caller that needs async I/O (the executor, the image stage,
//! doctor's probes, the rehearsal's clean-up) runs its future here, so a
//! Docker client's pooled connections never outlive the runtime that made
//! them, and a command starts one set of worker threads, not one per call.
//! `shutdown` at the end of `main` drops what is left (an ssh Docker
//! endpoint's connections close their ssh masters then).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Runtime;

static RUNTIME: Mutex<Option<Arc<Runtime>>> = Mutex::new(None);

fn runtime() -> Arc<Runtime> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    slot.get_or_insert_with(|| {
        Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("xtask-async")
                .build()
                .expect("the async runtime starts (threads and timers of this process)"),
        )
    })
    .clone()
}

/// Runs `future` to its end from synchronous code: the main thread, a
/// thread of its own, or a `spawn_blocking` task (never from inside an
/// async task). The future need not be `Send`: it is polled on this thread.
pub fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

/// Stops the runtime and drops its tasks and idle connections, waiting a
/// little for them: called once, by `main`, when the command is done.
pub fn shutdown() {
    let taken = RUNTIME.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(runtime) = taken.and_then(|arc| Arc::try_unwrap(arc).ok()) {
        runtime.shutdown_timeout(Duration::from_secs(5));
    }
}
