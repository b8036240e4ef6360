//! mproc-coroutine's integration tests.
#![allow(unreachable_pub, missing_docs)]

mproc_coroutine::process::test_support!();

mod executor;
mod io;
mod props;
mod queue;
mod shared;
mod tasks;

use std::time::Duration;

/// How long a test waits for anything: generous for a loaded machine, bounded so a bug never
/// hangs the suite.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// `future`, bounded by the deadline.
pub async fn bounded<F: std::future::Future>(future: F) -> F::Output {
    mproc_coroutine::timeout(DEADLINE, future).await.expect("finished within the deadline")
}

/// Counts drops of what a future holds.
pub struct Guard(pub std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}
