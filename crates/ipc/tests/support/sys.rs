//! The test suite's only `unsafe`: `fork(2)` a child that runs a closure, and `_exit(2)`.
//!
//! mproc-ipc knows nothing about processes, so its tests make their own children here. The
//! child of a multi-threaded test binary must not take locks another thread may have held at
//! the fork (stdout, stderr), so it reports failure by a raw `write(2)` to fd 2 and its exit
//! code. glibc's `malloc` stays usable in the child (it takes its locks across `fork`).
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};

/// A forked child; killed and reaped on drop if it was not waited for.
pub struct Child {
    pid: Pid,
    pidfd: OwnedFd,
    reaped: bool,
}

/// How a child ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// Forks a child that keeps only stdio and the fds in `keep`, runs `f`, and exits 0 if it
/// returns `Ok`, 1 (after writing the message to stderr) if it returns `Err` or panics.
pub fn fork_child(keep: &[BorrowedFd<'_>], f: impl FnOnce() -> Result<(), String>) -> Child {
    let mut keep: Vec<i32> = keep.iter().map(|fd| fd.as_raw_fd()).collect();
    keep.sort_unstable();
    // SAFETY: fork has no memory-safety preconditions; what the child may do afterwards is
    // limited as this module's doc says (no stdio locks; it ends in `_exit`).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        close_all_but(&keep);
        let code = match catch_unwind(AssertUnwindSafe(f)) {
            Ok(Ok(())) => 0,
            Ok(Err(msg)) => {
                let _ = rustix::io::write(std::io::stderr(), format!("child failed: {msg}\n").as_bytes());
                1
            }
            Err(payload) => {
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let _ = rustix::io::write(std::io::stderr(), format!("child panicked: {what}\n").as_bytes());
                2
            }
        };
        // SAFETY: `_exit` ends the process at once, running no destructors or atexit
        // handlers of the parent's copied state.
        unsafe { libc::_exit(code) }
    }
    let pid = Pid::from_raw(pid).expect("positive pid");
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).expect("pidfd_open");
    Child { pid, pidfd, reaped: false }
}

/// Closes every fd above 2 that is not in `keep` (sorted).
fn close_all_but(keep: &[i32]) {
    let mut from = 3u32;
    for &fd in keep {
        let fd = fd as u32;
        if fd >= from {
            if fd > from {
                // SAFETY: closing fds this process does not use again; `close_range` touches
                // no memory.
                unsafe { libc::close_range(from, fd - 1, 0) };
            }
            from = fd + 1;
        }
    }
    // SAFETY: as above.
    unsafe { libc::close_range(from, u32::MAX, 0) };
}

impl Child {
    pub fn pid(&self) -> i32 {
        self.pid.as_raw_nonzero().get()
    }

    /// Waits for the child to end, at most `timeout`; kills it and panics past that.
    pub fn wait(mut self, timeout: Duration) -> Exit {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = rustix::time::Timespec::try_from(left).unwrap();
            let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(0) => {
                    let _ = rustix::process::kill_process(self.pid, Signal::KILL);
                    panic!("child {} still running after {timeout:?}: killed", self.pid());
                }
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => panic!("poll on pidfd: {e}"),
            }
        }
        self.reap()
    }

    /// Kills the child with `SIGKILL` (if it is still running) and reaps it.
    pub fn kill(mut self) -> Exit {
        let _ = rustix::process::kill_process(self.pid, Signal::KILL);
        self.reap()
    }

    fn reap(&mut self) -> Exit {
        let status = rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED)
            .expect("waitid")
            .expect("an exited child");
        self.reaped = true;
        match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => Exit::Code(code),
            (_, Some(sig)) => Exit::Signal(sig),
            _ => panic!("child neither exited nor was killed"),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = rustix::process::kill_process(self.pid, Signal::KILL);
            let _ = self.reap();
        }
    }
}

/// Takes back an fd given up by `into_raw_fd`, through `FromRawFd`.
pub fn from_raw<T: FromRawFd>(raw: RawFd) -> T {
    // SAFETY: callers pass an fd they just took out of its owner with `into_raw_fd`, so it is
    // open and owned by nothing else.
    unsafe { T::from_raw_fd(raw) }
}

/// How many times [`install_counting_handler`]'s handler ran.
pub static SIGNALS_SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS_SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Installs a handler for `SIGUSR1` *without* `SA_RESTART`, so blocking syscalls the signal
/// interrupts fail with `EINTR` instead of restarting. For forked children only: it changes
/// the whole process.
pub fn install_counting_handler() {
    // SAFETY: an all-zero `sigaction` is a valid starting value (empty mask, no flags).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = count_signal as *const () as usize;
    // SAFETY: `action` is initialised and `count_signal` is async-signal-safe (one atomic add).
    let rc = unsafe { libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "sigaction failed");
}

/// Ends this process with `SIGKILL` at once: no unwinding, no lock released, as a process
/// killed from outside.
pub fn kill_self() -> ! {
    let _ = rustix::process::kill_process(rustix::process::getpid(), Signal::KILL);
    unreachable!("a process survived its own SIGKILL")
}

/// `n` words of memory shared with every child forked afterwards, zeroed; never unmapped.
pub fn shared_words(n: usize) -> &'static [std::sync::atomic::AtomicU64] {
    let len = (n * 8).max(1);
    // SAFETY: a fresh shared anonymous mapping placed by the kernel aliases no Rust memory.
    let addr = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::SHARED,
        )
    }
    .expect("mmap");
    // SAFETY: the mapping is `n` zeroed, page-aligned words (a valid 0 for each `AtomicU64`),
    // never unmapped, and only ever accessed atomically.
    unsafe { std::slice::from_raw_parts(addr.cast::<std::sync::atomic::AtomicU64>(), n) }
}

/// A glibc robust, process-shared `pthread_mutex_t` in shared memory (never freed): mproc's
/// locks share each thread's robust list with these, so the tests hold both at once.
pub struct PthreadRobust(*mut libc::pthread_mutex_t);

// SAFETY: a process-shared pthread mutex is made for use from many threads at once.
unsafe impl Sync for PthreadRobust {}
// SAFETY: as above; it lives in a mapping that is never unmapped, so it never moves.
unsafe impl Send for PthreadRobust {}

impl PthreadRobust {
    pub fn new() -> PthreadRobust {
        let words = shared_words(size_of::<libc::pthread_mutex_t>().div_ceil(8));
        let m = words.as_ptr() as *mut libc::pthread_mutex_t;
        let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: `attr` is initialized before use; `m` is zeroed shared memory nothing uses.
        unsafe {
            assert_eq!(libc::pthread_mutexattr_init(attr.as_mut_ptr()), 0);
            libc::pthread_mutexattr_setpshared(attr.as_mut_ptr(), libc::PTHREAD_PROCESS_SHARED);
            libc::pthread_mutexattr_setrobust(attr.as_mut_ptr(), libc::PTHREAD_MUTEX_ROBUST);
            assert_eq!(libc::pthread_mutex_init(m, attr.as_ptr()), 0);
        }
        PthreadRobust(m)
    }

    /// `pthread_mutex_lock`'s return code (0, or `EOWNERDEAD`, made consistent).
    pub fn lock(&self) -> i32 {
        // SAFETY: initialized in `new`, never moved.
        let rc = unsafe { libc::pthread_mutex_lock(self.0) };
        if rc == libc::EOWNERDEAD {
            // SAFETY: held by this thread (EOWNERDEAD hands it over locked).
            unsafe { libc::pthread_mutex_consistent(self.0) };
        }
        rc
    }

    pub fn unlock(&self) -> i32 {
        // SAFETY: initialized in `new`, never moved.
        unsafe { libc::pthread_mutex_unlock(self.0) }
    }
}
