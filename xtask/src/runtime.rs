//! The one tokio runtime of the process, made on first use. Every
//! synchronous caller that needs async I/O (the executor, the image stage,
//! doctor's probes, the rehearsal's clean-up) runs its future here, so a
//! Docker client's pooled connections never outlive the runtime that made
//! them, and a command starts one set of worker threads, not one per call.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Runtime;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

fn runtime() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("xtask-async")
            .build()
            .expect("the async runtime starts (threads and timers of this process)")
    })
}

/// Runs `future` to its end from synchronous code: the main thread, a
/// thread of its own, or a `spawn_blocking` task (never from inside an
/// async task). The future need not be `Send`: it is polled on this thread.
pub fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}
