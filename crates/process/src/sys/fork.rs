//! `fork(2)`: the only place mproc calls it, and the two child sides that must follow it
//! closely (what the child closes before anything of the caller's runs).
//!
//! [`fork`], [`close_copies`] and [`keep_only`] are `unsafe fn`s: each is sound only if the
//! code around it keeps a promise no type can state. They are called only here, by
//! [`fork_then`] and [`fork_keeping`], which keep those promises for their callers.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

use super::wiped::PerProcess;

use rustix::process::{Pid, Signal};

/// Which side of a fork this is.
enum Forked {
    /// The new process.
    Child,
    /// The calling process; the child's pid.
    Parent(Pid),
}

/// What a forked child's code "returns": nothing can be made of this type, so a closure
/// returning it must end the process (`!` coerces to it), as `-> !` would say were it
/// allowed in a closure's type on stable Rust.
pub(crate) enum Never {}

/// Exit code of a forked child whose code panicked past the point where it could report.
const EXIT_UNWOUND: i32 = 70;

/// Forks this process.
///
/// Only the calling thread exists in the child. glibc keeps `malloc` usable there.
///
/// # Safety
///
/// In the child, the caller must:
/// - never return into code that thinks it is the parent, nor unwind into it (that would run
///   the parent's code and destructors of the parent's state in the child): the child ends
///   in [`exit_now`];
/// - not rely on the state of other threads' data, nor take a lock another thread may have
///   held at the moment of the fork (its owner is gone and never releases it). A lock held
///   across `fork` by *this* thread is fine, which is why the Fork start locks stdout and
///   stderr around it when other threads run.
#[inline]
unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: fork has no memory-safety preconditions of its own; what the child may do
    // afterwards is this fn's contract, passed on to its callers.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(Pid::from_raw(pid).expect("fork returns a positive pid"))),
    }
}

/// Ends a forked child that unwinds: dropped only by a panic unwinding out of the child's
/// code, which must never reach the caller's frames (see [`fork`]).
struct ExitOnUnwind;

impl Drop for ExitOnUnwind {
    fn drop(&mut self) {
        exit_now(EXIT_UNWOUND)
    }
}

/// Forks a child that first makes its copies of the fds `close` dead (see [`close_copies`]),
/// then runs `child` with `kept`; `child` never returns (it cannot make a [`Never`]) (a panic unwinding out of it ends the
/// child with exit code 70). In the parent: the child's pid, and `kept` back (what the parent
/// goes on using and the child takes over, moved into neither side's code before the fork).
///
/// `close` are fds the caller holds open for the whole call, so each number names the same
/// file in the child. `child` runs in a copy of a process that may have other threads: it
/// must not take a lock another thread may hold (it would wait for ever; see [`fork`]).
#[inline(always)]
pub(crate) fn fork_then<K>(close: &[i32], kept: K, child: impl FnOnce(K) -> Never) -> io::Result<(Pid, K)> {
    // Made once per process, before the fork, in the parent: the child only duplicates it.
    let dead = if close.is_empty() { None } else { Some(dead_end()?) };
    // SAFETY: the child side below runs `close_copies` and then `child`, which cannot return
    // (there is no `Never` to return); a panic unwinding out of it meets `ExitOnUnwind`, which ends the child before it
    // reaches this fn's caller. What `child` does about locks is the documented hazard of
    // this fn (a hang, not unsoundness: Rust's locks are safe to wait on for ever).
    match unsafe { fork() }? {
        Forked::Child => {
            let _unwound = ExitOnUnwind;
            if let Some(dead) = dead {
                // SAFETY: each fd in `close` is open (the caller holds it for the call) and
                // is replaced, not closed: its number stays taken, so whatever owns it in the
                // child (if it is ever used) reaches a dead end, never a reused number.
                unsafe { close_copies(close, dead) };
            }
            // `child` cannot return: what follows it is unreachable, as it should be.
            #[allow(unreachable_code, unused_variables)]
            let ended: Never = child(kept);
            #[allow(unreachable_code)]
            match ended {}
        }
        Forked::Parent(pid) => Ok((pid, kept)),
    }
}

/// Forks a child that keeps only stdio and `keep` (as fd [`BOOTSTRAP_FD`](super::spawn::BOOTSTRAP_FD),
/// see [`keep_only`]) and runs `child` with it; first, if `die_with` names the calling
/// process, it ties its life to it ([`die_with_parent`]). In the parent, `keep` is closed and
/// the child's pid returned.
///
/// For the fork server, which has one thread: there the child can take any lock. `child` is
/// a plain function (it captures nothing), so it reaches no fd of the server's but `keep`.
pub(crate) fn fork_keeping(keep: OwnedFd, die_with: Option<Pid>, child: fn(OwnedFd) -> !) -> io::Result<Pid> {
    // SAFETY: the child side runs `keep_only` and then `child`, which cannot return (`!`); a
    // panic unwinding out of it meets `ExitOnUnwind`. Locks: the fork server, the one caller,
    // has one thread, so no lock is held by another.
    match unsafe { fork() }? {
        Forked::Child => {
            let _unwound = ExitOnUnwind;
            if let Some(parent) = die_with {
                die_with_parent(parent);
            }
            // SAFETY: after this, the child runs only `child`, a plain fn that captures
            // nothing, with the one fd it keeps. It reaches no fd of the server's through a
            // global either: the server runs nothing but its loop, whose state is on its
            // stack (never used again here), and mproc's per-process globals (the registry,
            // pidfds among them) start afresh in a forked child (see `wiped`).
            let kept = unsafe { keep_only(keep) };
            child(kept)
        }
        Forked::Parent(pid) => {
            drop(keep);
            Ok(pid)
        }
    }
}

/// This process's dead end: the read end of a pipe whose write end is closed (reads see end
/// of file, writes fail). Made at the first start that needs one and kept open for the life
/// of the process (one fd, close-on-exec), so a start does not make a pipe and close it each
/// time; a forked child that needs one makes its own (per-process state).
fn dead_end() -> io::Result<BorrowedFd<'static>> {
    static DEAD_END: PerProcess<Option<OwnedFd>> = PerProcess::new();
    let raw = DEAD_END.with(
        || None,
        |dead| -> io::Result<i32> {
            if dead.is_none() {
                let (read, _write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
                *dead = Some(read);
            }
            Ok(dead.as_ref().map_or(-1, |fd| fd.as_raw_fd()))
        },
    )?;
    // SAFETY: `raw` is the fd of the `OwnedFd` in this process's `DEAD_END`, which is never
    // dropped nor replaced (a `PerProcess` value lives as long as its process), so it stays
    // open for `'static`.
    Ok(unsafe { BorrowedFd::borrow_raw(raw) })
}

/// In a freshly forked child: makes the child's copies of `fds` (ends of the parent's that
/// the child must not hold, so that the other side sees end of file when the parent closes
/// its own) into copies of `dead`. Each number stays open, naming a dead end: an object in
/// the child's (copied) memory that owns one and is used or dropped later reaches that dead
/// end (end of file, failed writes), never another file that reused the number.
///
/// # Safety
///
/// Each fd in `fds` is open, and nothing in this process relies, for memory safety, on which
/// file one of them names (mproc's ends do not: their calls fail on a dead end).
#[inline]
unsafe fn close_copies(fds: &[i32], dead: BorrowedFd<'_>) {
    for &fd in fds {
        // SAFETY: see above: `fd` is open, and replacing the file it names breaks nothing.
        unsafe { libc::dup3(dead.as_raw_fd(), fd, libc::O_CLOEXEC) };
    }
}

/// In a freshly forked child: makes `keep` fd [`BOOTSTRAP_FD`](super::spawn::BOOTSTRAP_FD) and
/// closes every fd above it, so the child holds only stdio and `keep`.
///
/// # Safety
///
/// Whatever else in the child's (copied) memory owns an fd above 3 must never be used or
/// dropped afterwards (its number may be reused by then): the caller runs only code that
/// cannot reach such an owner, and ends in an exit.
unsafe fn keep_only(keep: OwnedFd) -> OwnedFd {
    let target = super::spawn::BOOTSTRAP_FD;
    let raw = keep.into_raw_fd();
    if raw != target {
        // SAFETY: dup2 onto fd 3 replaces whatever fd 3 was; by this fn's contract nothing
        // uses it again. `raw` is open: we owned it.
        unsafe { libc::dup2(raw, target) };
    }
    // SAFETY: closes fds nothing uses again (this fn's contract); `raw`, if above 3, is among
    // them and its duplicate lives on as fd 3.
    unsafe { libc::close_range(target as u32 + 1, u32::MAX, 0) };
    // SAFETY: fd 3 is now the open duplicate of `keep`, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(target) };
    let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
    fd
}

/// Ends this process at once with `code`: no destructors, no `atexit` hooks, no flushing of
/// buffers copied from the parent.
#[inline]
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is always safe to call; it does not return.
    unsafe { libc::_exit(code) }
}

/// Makes the kernel kill this process when its parent dies. The death signal follows the
/// parent *thread* that forked; `Builder` starts daemons from a thread that lives as long as
/// the process. If the parent (`parent`) is already gone, leave now.
pub(crate) fn die_with_parent(parent: Pid) {
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    if rustix::process::getppid() != Some(parent) {
        exit_now(1);
    }
}
