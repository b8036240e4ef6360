//! mproc-coroutine's integration tests.
#![allow(unreachable_pub, missing_docs)]

mproc_coroutine::process::test_support!();

mod executor;
mod io;
mod props;
mod tasks;

use std::time::Duration;

/// How long a test waits for anything: generous for a loaded machine, bounded so a bug never
/// hangs the suite.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// `future`, bounded by the deadline.
pub async fn bounded<F: std::future::Future>(future: F) -> F::Output {
    mproc_coroutine::timeout(DEADLINE, future).await.expect("finished within the deadline")
}
