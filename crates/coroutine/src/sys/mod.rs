//! The only `unsafe` of `mproc-coroutine`.
//!
//! - [`task`]: the task cell: one allocation holding a task's header, its future and then its
//!   output, with wakers that may be used from any thread.

pub(crate) mod task;
