//! mproc-pool's integration tests: one binary, so workers are not started by many at once.
#![allow(unreachable_pub, missing_docs)]

mproc_pool::test_support!();

mod api;
mod edges;
mod errors;
mod failures;
mod hunt;
mod large;
mod props;
mod remote;
mod slurm;
mod spread;
mod sys;

pub use sys::segfault;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mproc_pool::{AsyncResult, Error, Pool};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};

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

/// A FIFO between the test and its tasks, held open read-write by the test (so a task's open
/// never waits, and a byte written before a task opens it waits there), removed on drop.
pub struct Fifo {
    path: PathBuf,
    end: OwnedFd,
}

impl Fifo {
    /// `mproc-pool-NAME-PID` in the temporary directory.
    pub fn new(name: &str) -> Fifo {
        let path = std::env::temp_dir().join(format!("mproc-pool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        rustix::fs::mknodat(rustix::fs::CWD, &path, rustix::fs::FileType::Fifo, Mode::RUSR | Mode::WUSR, 0)
            .expect("mkfifo");
        let end =
            rustix::fs::open(&path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).expect("open the FIFO");
        Fifo { path, end }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the byte a gate task waits for.
    pub fn release(&self) {
        assert_eq!(rustix::io::write(&self.end, b"x").unwrap(), 1);
    }

    /// The pid a task wrote, waited for with the deadline.
    pub fn read_pid(&self) -> u32 {
        let timeout = Timespec { tv_sec: DEADLINE.as_secs() as i64, tv_nsec: 0 };
        let mut fds = [PollFd::new(&self.end, PollFlags::IN)];
        assert_eq!(
            rustix::event::poll(&mut fds, Some(&timeout)).unwrap(),
            1,
            "no task started within {DEADLINE:?}"
        );
        let mut pid = [0u8; 4];
        assert_eq!(rustix::io::read(&self.end, &mut pid).unwrap(), 4);
        u32::from_le_bytes(pid)
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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
