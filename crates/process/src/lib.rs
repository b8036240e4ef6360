//! Start, join and kill child processes like threads: Python's `multiprocessing.Process`,
//! with no zombies and no `if __name__ == '__main__'` trap.
//!
//! - [`Process::spawn`] forks a child that runs a closure; [`Builder`] names it, makes it a
//!   daemon, or picks a [`StartMethod`]: `Fork` (closures), `ForkServer` (the default, safe in
//!   a multi-threaded parent) or `Spawn` (a fresh run of this program), the last two running a
//!   plain `fn(A) -> R` ([`Builder::spawn_fn`]).
//! - [`Process`] is the handle: [`join`](Process::join) returns the child's value,
//!   [`exitcode`](Process::exitcode), [`terminate`](Process::terminate),
//!   [`kill`](Process::kill), [`sentinel`](Process::sentinel) as in Python.
//! - [`init`] is the first line of `main` in programs that use `ForkServer` or `Spawn`.
//! - [`current_process`], [`parent_process`], [`active_children`], [`cpu_count`].
//! - [`ipc`] is `mproc-ipc`, re-exported: pipes and connections to talk to children. Its ends
//!   can be captured by a forked closure or passed in a spawned child's arguments.
//!
//! ```
//! use mproc_process::{Builder, Process, StartMethod, ipc};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     mproc_process::init(); // first line of main: see `init`
//!
//!     // A closure, forked.
//!     let child = Process::spawn(|| (1..=10u64).product::<u64>())?;
//!     assert_eq!(child.join()?, 3_628_800);
//!
//!     // A conversation: the child captures its end. A forked child is a copy of this
//!     // process and holds a copy of `parent_end` too (as with Python's fork), so here the
//!     // talk ends with a message (or see `Builder::close_in_child`).
//!     let (parent_end, child_end) = ipc::duplex::<String>()?;
//!     let echo = Process::spawn(move || {
//!         let mut n = 0;
//!         while let Ok(s) = child_end.recv() {
//!             if s == "bye" { break; }
//!             child_end.send(&s.to_uppercase()).unwrap();
//!             n += 1;
//!         }
//!         n
//!     })?;
//!     parent_end.send(&"hello".into())?;
//!     assert_eq!(parent_end.recv()?, "HELLO");
//!     parent_end.send(&"bye".into())?;
//!     assert_eq!(echo.join()?, 1);
//!
//!     // A panic comes back as an error naming the child.
//!     let doomed = Builder::new().name("doomed").start_method(StartMethod::Fork)
//!         .spawn(|| -> u8 { panic!("no luck") })?;
//!     let pid = doomed.pid();
//!     let err = doomed.join().unwrap_err();
//!     assert_eq!(err.to_string(), format!("process \"doomed\" (pid {pid}) panicked: no luck"));
//!     Ok(())
//! }
//! ```
//!
//! # Guarantees
//!
//! - No zombies: every child is reaped, whether its handle is joined, dropped or forgotten
//!   (a reaper thread collects the dropped ones as they end; each child is waited for by its
//!   own pid or pidfd, never `waitpid(-1)`, so children started elsewhere in the program are
//!   never stolen).
//! - A child's end is never missed: `join` wakes the moment the child ends, and it tells a
//!   value, a panic (with its message), a signal and an exit code apart.
//! - Daemon children die with their parent, also when it is killed with `SIGKILL`, and so does
//!   the fork server (which watches its parent's pidfd), whatever other children still hold
//!   the parent's fds; at normal exit daemons are terminated and every other child is joined,
//!   as Python does.
//! - A child reaped holds no fd once its handle is gone, and each child's sentinel is an fd
//!   of its own (an event loop can register every one).
//! - Every child starts in its parent's current working directory and environment (a
//!   `ForkServer` child gets them with its start, not from the server), and a Spawn child or
//!   the fork server carries the program's name in `ps`, `pgrep` and `killall`.
//! - A program that forgot [`init`] and asks for `Spawn` or `ForkServer` gets
//!   [`Error::InitNotCalled`] at once: no second `main`, no fork bomb, no hang.
//! - Spawn and ForkServer children hold only stdio and the ends passed to them; every fd
//!   mproc makes is close-on-exec.
//!
//! # Caveats
//!
//! - `Fork` copies the whole process, fds included, like Python's fork: the child holds what
//!   the parent held, so a child reading until end of file waits for ever on an end whose
//!   other side it also holds; [`Builder::close_in_child`] closes the child's copy. In a
//!   multi-threaded parent the child must not touch locks other threads may have held at the
//!   fork (see [`StartMethod::Fork`]), the standard library's panic hook's among them: a
//!   child's panic hangs if another thread was panicking (or capturing a backtrace) then.
//! - `init()` must really come first in `main`: whatever runs before it runs again in every
//!   Spawn child and in the fork server.
//! - A `ForkServer` or `Fork` child leaves as Python's forked children do: once it has
//!   reported (or left its value), it joins its own children and flushes stdout, then ends
//!   with `_exit`, so C `atexit` hooks do not run in it (a Spawn child exits normally, hooks
//!   and all).
//! - Values and arguments cross as postcard (serde); a type that does not serialize fails that
//!   child alone, with [`Error::Transfer`].
//! - The first start makes two fds the process keeps (the reaper's wake-up pipe, so that a
//!   handle dropped when the process is out of fds still has its child reaped), and the
//!   first `Fork` start three more (two memfds where children
//!   leave their values, and a pipe end that stands for an ended child) and maps 2 MiB of
//!   address space per 511 `Fork` children running at once. The memfds obey the file size
//!   limit (`ulimit -f`): under a very low one, a `Fork` start or a big value fails with a
//!   clear error.
#![deny(unsafe_code)]

mod bootstrap;
mod builder;
mod child;
mod error;
mod fnref;
mod global;
mod identity;
mod process;
mod registry;
mod slot;
mod start;
mod status;
mod sys;

pub use bootstrap::panic_message;
pub use builder::{Builder, StartMethod};
pub use error::{Error, Result};
pub use fnref::{FnPtr, FnRef};
pub use identity::{ParentProcess, ProcessInfo, cpu_count, current_process, parent_process};
pub use mproc_ipc as ipc;
pub use process::{Process, Received};
pub use status::ExitStatus;

impl<R> Process<R> {
    /// Forks a child that runs `f` and sends back its value: `Builder::new().spawn(f)`.
    pub fn spawn<F>(f: F) -> Result<Process<R>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: serde::Serialize + serde::de::DeserializeOwned + 'static,
    {
        Builder::new().spawn(f)
    }
}

/// A live child of this process, as [`active_children`] lists it.
#[derive(Debug, Clone)]
pub struct ChildInfo {
    /// Its pid.
    pub pid: u32,
    /// Its name.
    pub name: String,
    /// Whether it is a daemon.
    pub daemon: bool,
}

/// This process's pid, as [`std::process::id`], without a system call after the first ask in
/// each process: the answer is kept on a page every forked child finds zeroed, so a child,
/// forked by mproc or by anyone, asks the kernel afresh. For code that must notice on a hot
/// path that it runs in a forked child (as `mproc-coroutine`'s executor does).
///
/// ```
/// assert_eq!(mproc_process::getpid(), std::process::id());
/// ```
pub fn getpid() -> u32 {
    global::pid()
}

/// The children of this process that still run (Python's `active_children()`); those that
/// ended are reaped on the way.
pub fn active_children() -> Vec<ChildInfo> {
    registry::active()
        .iter()
        .map(|c| ChildInfo { pid: c.pid_u32(), name: c.identity().name.clone(), daemon: c.identity().daemon })
        .collect()
}

/// The first line of `main` in a program that starts children with `Spawn` or `ForkServer`.
///
/// In a child started by either, `init` runs the function the parent asked for and exits: the
/// rest of `main` never runs there. In the fork server it serves and exits. Everywhere else it
/// returns at once and records that the program is ready to start such children; without it
/// they fail with [`Error::InitNotCalled`] rather than run `main` a second time. This is
/// Rust's `if __name__ == '__main__':`.
///
/// In tests, where `main` belongs to the test harness, use [`test_support!`].
pub fn init() {
    become_child_if_asked();
    bootstrap::mark_initialized();
}

/// In a program started by mproc as a child or fork server: do that and exit.
///
/// The bootstrap variables are read here, once, and removed from the environment: neither
/// this process's children (of any start method) nor the programs it runs inherit them (an
/// mproc program among those would take itself for a child, or the fork server).
fn become_child_if_asked() {
    let child = std::env::var_os(bootstrap::CHILD_ENV);
    let server = std::env::var_os(bootstrap::SERVER_ENV);
    if child.is_none() && server.is_none() {
        return;
    }
    sys::remove_env(&bootstrap::BOOTSTRAP_VARS);
    fn bootstrap<S, R>(value: Option<std::ffi::OsString>) -> Option<mproc_ipc::Connection<S, R>> {
        start::spawn::bootstrap_from(value?.to_str()?)
    }
    if let Some(conn) = bootstrap(child) {
        take_program_name();
        bootstrap::child_main(conn, bootstrap::exit)
    }
    if let Some(conn) = bootstrap(server) {
        take_program_name(); // which the server's children inherit
        start::forkserver::serve(conn)
    }
}

/// Names this process after the program, as `ps -o comm`, `pgrep -x`, `top` and `killall` show
/// it: a spawned copy runs `/proc/self/exe`, which the kernel names `exe`. The name is what the
/// kernel gives the program when run by its own name: the last part of `argv[0]` (which a
/// spawned copy shares with its parent), at most 15 bytes. It is the process's name, its main
/// thread's: set with `prctl(PR_SET_NAME)` from the main thread (where `init` runs in a
/// spawned program: one system call), else written to `/proc/self/comm` (three, and a walk
/// of `/proc`).
fn take_program_name() {
    let Some(argv0) = std::env::args_os().next() else { return };
    let Some(name) = std::path::Path::new(&argv0).file_name() else { return };
    let name = name.as_encoded_bytes();
    let name = &name[..name.len().min(15)];
    let main_thread = rustix::thread::gettid() == rustix::process::getpid();
    match std::ffi::CString::new(name) {
        Ok(name) if main_thread => {
            let _ = rustix::thread::set_name(&name);
        }
        _ => {
            let _ = std::fs::write("/proc/self/comm", name);
        }
    }
}

/// Lets `#[test]` functions start `Spawn` and `ForkServer` children.
///
/// A test binary's `main` belongs to the test harness, so `init()` cannot be its first line.
/// Put this macro once at the root of the test crate: it does what `init()` does, before the
/// harness's `main` runs (a function in the binary's `.init_array`, which the loader calls
/// first). So a spawned copy of the test binary becomes the child (or the fork server) before
/// the harness prints or runs anything, and every test may start children, run alone or in a
/// suite. It also defines `pub fn mproc_init()`, which does nothing more, for tests that call
/// it (in a shared `tests/common/mod.rs` too).
///
/// ```no_run
/// mproc_process::test_support!();
///
/// #[test]
/// fn doubles() {
///     let child = mproc_process::Builder::new().spawn_fn(|x: u32| x * 2, 21).unwrap();
///     assert_eq!(child.join().unwrap(), 42);
/// }
/// ```
#[macro_export]
macro_rules! test_support {
    () => {
        $crate::__before_main!($crate::__private::before_main);

        /// Makes this test binary ready to start `Spawn` and `ForkServer` children: nothing
        /// more than `test_support!()` did already, before the test harness started. Kept for
        /// tests that call it first.
        #[allow(dead_code)]
        pub fn mproc_init() {
            $crate::__private::before_main();
        }
    };
}

#[doc(hidden)]
pub mod __private {
    /// This process family's secrets (its authkey, then the key of `FnRef` tags): for
    /// `mproc-pool`, which gives them to a remote worker (the same build of this program,
    /// authenticated by the authkey) so it can run the family's tasks.
    pub fn family_keys() -> [u8; 48] {
        let me = crate::identity::identity();
        let mut keys = [0; 48];
        keys[..32].copy_from_slice(&me.authkey);
        keys[32..].copy_from_slice(&me.fn_key);
        keys
    }

    /// Makes this process a member of the family whose [`family_keys`] these are, named
    /// `name`, its parent `parent` (pid, name): for `mproc-pool`'s remote workers, which
    /// call it before they start any thread.
    pub fn join_family(keys: &[u8; 48], name: String, parent: (u32, String)) {
        let mut authkey = [0; 32];
        let mut fn_key = [0; 16];
        authkey.copy_from_slice(&keys[..32]);
        fn_key.copy_from_slice(&keys[32..]);
        crate::identity::become_child(Box::new(crate::identity::Identity {
            name,
            daemon: false,
            authkey,
            fn_key,
            parent: Some(parent),
        }));
    }

    /// Removes the variables `keys` from this process's environment if it has one thread
    /// (as `init()` removes its own): for `mproc-pool`'s remote workers, whose pool address
    /// and key nothing they start is to inherit.
    pub fn remove_env(keys: &[&str]) {
        crate::sys::remove_env(keys);
    }

    /// `init()`, run before the test harness's `main` (see [`test_support!`]).
    pub fn before_main() {
        super::init();
    }

    /// Whether this process has one thread (as `/proc/self/task` lists them): for the test
    /// that must run so.
    pub fn single_threaded() -> bool {
        crate::sys::only_thread()
    }

    /// Forgets `init()` in this process: for tests of the error a program without it gets.
    pub fn forget_init() {
        crate::bootstrap::forget_initialized();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's answer agrees with `/proc/self/task`'s list, with many threads (the test
    /// harness runs this on a thread of its own) and with one (a forked child).
    #[test]
    fn only_thread_tells_one_thread_from_many() {
        let listed = || std::fs::read_dir("/proc/self/task").unwrap().count();
        assert!(listed() > 1);
        assert!(!sys::only_thread());
        let in_child = Process::spawn(move || (sys::only_thread(), listed())).unwrap().join().unwrap();
        assert_eq!(in_child, (true, 1));
    }

    #[test]
    fn exitcode_is_pythons() {
        assert_eq!(ExitStatus::Code(3).exitcode(), 3);
        assert_eq!(ExitStatus::Signal(9).exitcode(), -9);
    }

    #[test]
    fn errors_name_the_process_and_read_as_lowercase_phrases() {
        let all = [
            Error::Panicked { name: "w".into(), pid: 7, message: "boom".into() },
            Error::Signaled { name: "w".into(), pid: 7, signal: 9 },
            Error::Signaled { name: "w".into(), pid: 7, signal: 64 },
            Error::Exited { name: "w".into(), pid: 7, code: 0 },
            Error::Exited { name: "w".into(), pid: 7, code: 2 },
            Error::Timeout,
            Error::AlreadyJoined,
            Error::DaemonCannotStart,
            Error::ForkServer("gone".into()),
            Error::InitNotCalled,
        ];
        for e in all {
            let s = e.to_string();
            assert!(!s.ends_with('.'), "{s}");
            assert!(s.chars().next().unwrap().is_lowercase(), "{s}");
            if s.starts_with("process") {
                assert!(s.contains("\"w\" (pid 7)"), "{s}");
            }
        }
        let killed = Error::Signaled { name: "w".into(), pid: 7, signal: 9 }.to_string();
        assert_eq!(killed, "process \"w\" (pid 7) was killed by signal 9 (SIGKILL)");
        assert!(Error::InitNotCalled.to_string().contains("mproc_process::init()"));
    }
}
