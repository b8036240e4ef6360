//! The only `unsafe` of `mproc-coroutine`: making a task whose future need not be `Send`
//! without async-task's per-poll check of the thread.
#![allow(unsafe_code)]

use std::future::Future;

use async_task::{Runnable, Task};

/// Allocates a task for `future` (one allocation: header with `metadata`, future and output
/// together), catching its panics; `schedule` is called with its [`Runnable`] each time it is
/// woken.
///
/// The caller must run and drop every `Runnable` of the task in the thread that called this,
/// whichever thread `schedule` is called on: the executor's schedule function moves a
/// `Runnable` woken elsewhere into a queue only the executor's thread drains, and leaks it
/// (never drops it) once that thread's executor is gone.
pub(crate) fn spawn_local<F, M, S>(future: F, metadata: M, schedule: S) -> (Runnable<M>, Task<F::Output, M>)
where
    F: Future + 'static,
    F::Output: 'static,
    M: Send + Sync + 'static,
    S: Fn(Runnable<M>) + Send + Sync + 'static,
{
    // SAFETY: async-task asks, for a future that is not `Send`, that its `Runnable` be run
    // and dropped in the thread that spawned it: the contract of this fn, kept by the
    // executor (see above). The future and `schedule` are `'static`, and `schedule` is
    // `Send + Sync`, so the other conditions of `spawn_unchecked` hold by their types.
    unsafe {
        async_task::Builder::new()
            .propagate_panic(true)
            .metadata(metadata)
            .spawn_unchecked(move |_| future, schedule)
    }
}
