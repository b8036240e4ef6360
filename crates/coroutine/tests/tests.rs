//! mproc-coroutine's integration tests.
#![allow(unreachable_pub, missing_docs)]

mproc_coroutine::process::test_support!();

mod allocations;
mod executor;
mod io;
mod props;
mod queue;
mod shared;
mod support;
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

/// A forked child that, when told (a message on the returned sender), runs `step`, says it
/// did (a message on the returned receiver) and returns. (Once, not a loop until end of
/// file: children other tests fork meanwhile hold copies of the pipe's write end.)
pub fn when_told(
    step: impl FnOnce() + Send + 'static,
) -> (
    mproc_coroutine::ipc::Sender<()>,
    mproc_coroutine::ipc::Receiver<()>,
    mproc_coroutine::process::Process<()>,
) {
    let (go_rx, go_tx) = mproc_coroutine::ipc::pipe::<()>().unwrap();
    let (done_rx, done_tx) = mproc_coroutine::ipc::pipe::<()>().unwrap();
    let child = mproc_coroutine::process::Builder::new()
        .start_method(mproc_coroutine::process::StartMethod::Fork)
        .close_in_child(&go_tx)
        .close_in_child(&done_rx)
        .spawn(move || {
            go_rx.recv_timeout(DEADLINE).unwrap();
            step();
            done_tx.send(&()).unwrap();
        })
        .unwrap();
    (go_tx, done_rx, child)
}

/// [`when_told`] with `step` run on a clone of `on` (a shared primitive the child acts on).
pub fn when_told_on<T: Clone + Send + 'static>(
    on: &T,
    step: fn(&T),
) -> (
    mproc_coroutine::ipc::Sender<()>,
    mproc_coroutine::ipc::Receiver<()>,
    mproc_coroutine::process::Process<()>,
) {
    let on = on.clone();
    when_told(move || step(&on))
}

/// A child of each start method that sends its arguments (Spawn, ForkServer), running `f` on
/// a clone of `args`: what the arguments hold (a queue, an event) reaches them as SCM_RIGHTS.
pub fn spawned_by_each<A>(f: fn(A) -> u32, args: &A) -> Vec<mproc_coroutine::process::Process<u32>>
where
    A: Clone + serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    use mproc_coroutine::process::{Builder, StartMethod};
    [StartMethod::Spawn, StartMethod::ForkServer]
        .into_iter()
        .map(|method| Builder::new().start_method(method).spawn_fn(f, args.clone()).unwrap())
        .collect()
}
