//! mproc-pool's integration tests: one binary, so workers are not started by many at once.
#![allow(unreachable_pub, missing_docs)]

mproc_pool::test_support!();

mod api;
mod edges;
mod errors;
mod failures;
mod props;
mod remote;
mod spread;
mod sys;

pub use sys::segfault;

use std::time::{Duration, Instant};

use mproc_pool::{AsyncResult, Error, Pool};

/// How long a test waits for anything: generous for a loaded machine, bounded so a bug never
/// hangs the suite.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// A pool of `n` workers by the default start method (the fork server).
pub fn pool(n: usize) -> Pool {
    mproc_init();
    Pool::new(n).expect("a pool starts")
}

/// The result, waited for with the deadline.
pub fn get<R>(mut result: AsyncResult<R>) -> Result<R, Error> {
    match result.get_timeout(DEADLINE) {
        Err(Error::NotReady) => panic!("no result within {DEADLINE:?}"),
        other => other,
    }
}

/// `f()` on a thread of its own, waited for until `deadline`: a test whose pool hangs fails
/// (the stuck thread and its pool are left behind) instead of hanging in the pool's drop.
pub fn within<T: Send + 'static>(deadline: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(deadline) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("not done within {deadline:?}"),
    }
}

/// Waits until `done()` or panics at the deadline.
pub fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether process `pid` is gone (or a zombie).
pub fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'),
    }
}

/// The pids of this process's children that are zombies.
pub fn zombies() -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        if rest[0] == "Z" && rest[1].parse::<u32>() == Ok(me) {
            found.push(pid);
        }
    }
    found
}

// ---- task functions: plain fns, as the pool needs -----------------------------------------

pub fn square(x: u64) -> u64 {
    x * x
}

pub fn add(a: u64, b: u64) -> u64 {
    a + b
}

pub fn pid(_: ()) -> u32 {
    std::process::id()
}

pub fn pid_after(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

pub fn fail_on_7(x: u64) -> u64 {
    assert!(x != 7, "seven is unlucky");
    x
}

pub fn kill_self(_: ()) {
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    std::thread::sleep(DEADLINE);
}

pub fn abort(_: ()) {
    std::process::abort();
}

pub fn endless(_: ()) {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
