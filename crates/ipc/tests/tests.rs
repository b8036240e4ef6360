//! mproc-ipc's integration tests: one binary, so processes are not started by many at once.
#![allow(unreachable_pub)]

mod support;

mod bad_input;
mod barrier;
mod carried;
mod fds;
mod large;
mod listener;
mod nowait;
mod per_message;
#[cfg(feature = "pickle")]
mod pickle_input;
mod props;
mod python;
mod python_listener;
mod queue;
mod queue_soak;
mod roundtrip;
mod shared_memory;
mod shm;
mod signals;
mod sync;
mod threads;
