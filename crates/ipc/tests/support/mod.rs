//! What every test module shares: children, deadlines and fd checks.

mod sys;

use std::os::fd::AsFd;
use std::time::Duration;

pub use sys::{
    Child, Exit, PthreadRobust, SIGNALS_SEEN, fork_child, from_raw, install_counting_handler, kill_self,
    shared_words,
};

/// How long any test waits for anything before it fails: generous, so a loaded machine
/// never fails a test, and bounded, so a bug never hangs the suite.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Runs `f` in a forked child keeping only `keep`, and asserts that it exits 0.
pub fn in_child(keep: &[&dyn AsFd], f: impl FnOnce() -> Result<(), String>) -> Child {
    let fds: Vec<_> = keep.iter().map(|fd| fd.as_fd()).collect();
    fork_child(&fds, f)
}

/// Asserts a child exited with code 0.
pub fn assert_success(child: Child) {
    let pid = child.pid();
    assert_eq!(child.wait(DEADLINE), Exit::Code(0), "child {pid} failed (its stderr says why)");
}

/// Asserts that `fd` is close-on-exec.
pub fn assert_cloexec(fd: impl AsFd) {
    let flags = rustix::io::fcntl_getfd(fd).expect("fcntl");
    assert!(flags.contains(rustix::io::FdFlags::CLOEXEC), "fd is not close-on-exec");
}

/// Turns any error into the child's failure message.
pub fn msg<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}
