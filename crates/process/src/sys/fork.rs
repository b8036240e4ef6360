//! `fork(2)`: the only place mproc calls it.

use std::io;

use rustix::process::Pid;

/// Which side of a fork this is.
pub(crate) enum Forked {
    /// The new process.
    Child,
    /// The calling process; the child's pid.
    Parent(Pid),
}

/// Forks this process.
///
/// Only the calling thread exists in the child. So the child must not take a lock another
/// thread may have held at the moment of the fork (its owner is gone and never releases it),
/// nor rely on the state of other threads' data: a lock held across `fork` by *this* thread is
/// fine, which is why the callers lock stdout and stderr around it when other threads run.
/// glibc keeps `malloc` usable in the child. The child must end in [`exit_now`], never by
/// returning into code that thinks it is the parent.
#[inline]
pub(crate) fn fork() -> io::Result<Forked> {
    // SAFETY: fork has no memory-safety preconditions of its own; the child side keeps to the
    // rules in this fn's doc, which every caller follows.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(Pid::from_raw(pid).expect("fork returns a positive pid"))),
    }
}

/// Whether the calling thread is the only one in this process: glibc's
/// `__libc_single_threaded`, found at run time so that mproc links with other C libraries too
/// (there the answer is "maybe not"). Then no other thread can hold a lock at a fork.
pub(crate) fn single_threaded() -> bool {
    static FLAG: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let addr = *FLAG.get_or_init(|| {
        // SAFETY: dlsym with a NUL-terminated name; it only looks the symbol up.
        unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__libc_single_threaded".as_ptr()) as usize }
    });
    if addr == 0 {
        return false;
    }
    // SAFETY: `addr` is glibc's `char __libc_single_threaded`, which lives as long as the
    // process and which glibc documents for applications to read without a lock; an
    // `AtomicU8` has the layout of a `char`. glibc clears it (a plain byte store) in the
    // thread that creates a second thread; a byte load is atomic on every target glibc
    // supports, and a `true` read here can only come from before any thread was created,
    // when this thread was the only one.
    let flag = unsafe { &*(addr as *const std::sync::atomic::AtomicU8) };
    flag.load(std::sync::atomic::Ordering::Relaxed) != 0
}

/// Ends this process at once with `code`: no destructors, no `atexit` hooks, no flushing of
/// buffers copied from the parent.
#[inline]
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is always safe to call; it does not return.
    unsafe { libc::_exit(code) }
}

/// In a freshly forked child: makes `keep` fd [`BOOTSTRAP_FD`](super::spawn::BOOTSTRAP_FD) and
/// closes every fd above it, so the child holds only stdio and `keep`.
///
/// Whatever else in the child's (copied) memory owned an fd must never be used or dropped
/// afterwards: callers run only the child's function after this and end in an exit.
pub(crate) fn keep_only(keep: std::os::fd::OwnedFd) -> std::os::fd::OwnedFd {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let target = super::spawn::BOOTSTRAP_FD;
    let raw = keep.into_raw_fd();
    if raw != target {
        // SAFETY: dup2 onto fd 3 replaces whatever fd 3 was; nothing in the child uses it
        // again (see above). `raw` is open: we owned it.
        unsafe { libc::dup2(raw, target) };
    }
    // SAFETY: closes fds nothing in the child uses again (see above); `raw`, if above 3, is
    // among them and its duplicate lives on as fd 3.
    unsafe { libc::close_range(target as u32 + 1, u32::MAX, 0) };
    // SAFETY: fd 3 is now the open duplicate of `keep`, owned by nothing else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(target) };
    let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
    fd
}

/// In a freshly forked child: closes the child's copies of `fds`, ends of the parent's that
/// the child must not hold (so the other side sees end of file when the parent closes its own).
///
/// Sound because the objects owning these fds in the child's (copied) memory belong to the
/// parent's code and are never used or dropped in the child: `Builder::close_in_child`'s
/// contract is that the child's closure does not capture them.
#[inline]
pub(crate) fn close_copies(fds: &[i32]) {
    for &fd in fds {
        // SAFETY: see above: nothing in the child uses `fd` again.
        unsafe { libc::close(fd) };
    }
}
