//! mproc-ipc's integration tests: one binary, so processes are not started by many at once.
#![allow(unreachable_pub)]

mod support;

mod bad_input;
mod fds;
mod nowait;
mod props;
mod python;
mod queue;
mod queue_soak;
mod roundtrip;
mod shm;
mod signals;
mod threads;
