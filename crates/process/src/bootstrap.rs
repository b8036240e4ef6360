//! How a child learns what to run, and how its value comes back.
//!
//! Every start method ends the same way: the child holds one end of a duplex connection
//! whose other end is the parent's. Spawn and ForkServer children then receive a [`Start`]
//! (who they are), the [`trampoline`] to run as an [`FnRef`], and the user's function (an
//! `FnRef` too) with its arguments; Fork children already have their closure. All of them
//! send one [`Outcome`] back and exit.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};

use mproc_ipc::Connection;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fnref::FnRef;
use crate::identity::{self, Identity};
use crate::sys;

/// The variable that tells a spawned program it is a child: `PARENT_PID:FD`, the fd being
/// its end of the bootstrap connection.
pub(crate) const CHILD_ENV: &str = "MPROC_CHILD";

/// The variable that tells a spawned program it is the fork server: `PARENT_PID:FD`.
pub(crate) const SERVER_ENV: &str = "MPROC_FORKSERVER";

/// Every variable that tells a program it was started by mproc: a spawned program inherits
/// none of those its parent was started with, only the one set for it.
pub(crate) const BOOTSTRAP_VARS: [&str; 2] = [CHILD_ENV, SERVER_ENV];

/// Whether an environment entry (`KEY=VALUE`, or a bare key) is one of mproc's bootstrap
/// variables: the one test behind what a Spawn start passes on, what a fork server's child is
/// sent ([`World`]) and what its client compares with the server's.
pub(crate) fn is_bootstrap_var(entry: &[u8]) -> bool {
    let key = sys::env::key_of(entry);
    BOOTSTRAP_VARS.iter().any(|var| key == var.as_bytes())
}

/// Whether `init()` ran in this program (or it is a child that `init()` made one).
static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// Records that `init()` ran: Spawn and ForkServer starts may go ahead.
pub(crate) fn mark_initialized() {
    INITIALIZED.store(true, Ordering::Release);
}

/// Forgets `init()` (for tests of the error a program without it gets).
pub(crate) fn forget_initialized() {
    INITIALIZED.store(false, Ordering::Release);
}

/// [`Error::InitNotCalled`] unless `init()` ran: a Spawn or ForkServer child of a program
/// without it would run `main` again.
pub(crate) fn check_initialized() -> Result<()> {
    if INITIALIZED.load(Ordering::Acquire) { Ok(()) } else { Err(Error::InitNotCalled) }
}

/// Who a Spawn or ForkServer child is, sent first on its connection. What it runs comes
/// next, as [`FnRef`]s: their tags are checked under the function key of the identity here,
/// which the child takes first.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Start {
    /// `check_binary`'s offset as the parent sees it: a different binary would see another.
    pub(crate) check: i64,
    pub(crate) identity: Identity,
    /// A daemon started by Spawn: it must die with the parent in its identity, and leave at
    /// once if that parent is already gone. (A fork server's daemon child was tied to the
    /// server, its real parent, before it read this.)
    pub(crate) dies_with_parent: bool,
    /// The parent's working directory and environment at the start, for a child forked by
    /// the fork server when they differ from the server's (from when the server started).
    /// A Spawn child got them at its exec.
    pub(crate) world: Option<World>,
}

/// A process's working directory and environment, as a child should start with them.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct World {
    /// `None` if the parent's directory could not be named (it was removed).
    cwd: Option<std::path::PathBuf>,
    /// Every variable, but mproc's own bootstrap variables (the fork server removed its own
    /// at `init`; the client's snapshot it compares with leaves them out too).
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
}

impl World {
    /// This process's.
    pub(crate) fn current() -> World {
        World {
            cwd: std::env::current_dir().ok(),
            env: std::env::vars_os().filter(|(k, _)| !is_bootstrap_var(k.as_encoded_bytes())).collect(),
        }
    }

    /// Makes it this process's, in a child before its function runs: the directory (if it
    /// can be entered; else the child stays where it is), then the variables that differ.
    pub(crate) fn enter(self) {
        if let Some(cwd) = &self.cwd {
            let _ = std::env::set_current_dir(cwd);
        }
        sys::replace_env(&self.env);
    }
}

/// What comes back from a child: its value, or why there is none.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Outcome<R> {
    Value(R),
    Panicked(String),
    /// The value (or, for spawned children, the arguments) did not cross: why.
    Transfer(String),
}

/// Exit codes of a child that has no value to send: as Python, 1 for a panic.
pub(crate) const EXIT_PANICKED: i32 = 1;
/// Exit code of a spawned child that could not read its start message.
pub(crate) const EXIT_BOOTSTRAP: i32 = 70;

/// A function whose offset both sides compute, to tell whether they run the same binary.
#[inline(never)]
pub(crate) fn check_binary() {}

/// The message of a panic payload (what `catch_unwind` returns): the `&str` or `String` it
/// holds, or a note that it holds something else. Every mproc layer reports panics with it.
///
/// ```
/// let payload = std::panic::catch_unwind(|| panic!("no luck")).unwrap_err();
/// assert_eq!(mproc_process::panic_message(&*payload), "no luck");
/// ```
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a payload that is not a string".into())
}

/// Runs `f`, catching a panic: its outcome, and the exit code that goes with it.
#[inline(always)]
pub(crate) fn run<R>(f: impl FnOnce() -> R) -> (Outcome<R>, i32) {
    let out = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => (Outcome::Value(value), 0),
        Err(payload) => (Outcome::Panicked(panic_message(&*payload)), EXIT_PANICKED),
    };
    // An end, not a death: the barriers this child was a party of must not break at its exit.
    mproc_ipc::__private::leave_barriers();
    out
}

/// Runs `f`, catching a panic, and sends the outcome on `conn`; returns the exit code.
pub(crate) fn run_and_report<R: Serialize>(conn: &Connection<Outcome<R>, ()>, f: impl FnOnce() -> R) -> i32 {
    let (outcome, code) = run(f);
    match conn.send(&outcome) {
        Ok(()) => code,
        Err(mproc_ipc::Error::Encode(e)) => {
            let _ = conn.send(&Outcome::Transfer(format!("cannot send the value back: {e}")));
            EXIT_PANICKED
        }
        // The parent is gone or stopped listening: nobody to tell.
        Err(_) => code,
    }
}

/// The child side of Spawn and ForkServer: read the start message, become that process, run
/// the function, report, and leave with `leave` (given the exit code). Never returns.
pub(crate) fn child_main(conn: Connection<(), Start>, leave: fn(i32) -> !) -> ! {
    let start = match conn.recv() {
        Ok(start) => start,
        Err(e) => {
            eprintln!("mproc: a child could not read its start message: {e}");
            sys::fork::exit_now(EXIT_BOOTSTRAP)
        }
    };
    if start.check != sys::offset_of(check_binary as *const () as usize) {
        eprintln!("mproc: a child runs a different binary than its parent; not running the function");
        sys::fork::exit_now(EXIT_BOOTSTRAP)
    }
    // A spawned daemon ties its life to its parent's here; if the parent died before this
    // line, `die_with_parent` leaves at once rather than run on as an orphan.
    if start.dies_with_parent
        && let Some((parent, _)) = &start.identity.parent
    {
        sys::fork::die_with_parent(rustix::process::Pid::from_raw(*parent as i32).expect("a pid"));
    }
    if let Some(world) = start.world {
        world.enter();
    }
    identity::become_child(Box::new(start.identity.clone()));
    mark_initialized();
    let conn: Connection<(), FnRef<Trampoline>> = conn.cast();
    let trampoline = match conn.recv() {
        Ok(trampoline) => trampoline,
        Err(e) => {
            eprintln!("mproc: a child could not read what to run: {e}");
            sys::fork::exit_now(EXIT_BOOTSTRAP)
        }
    };
    let code = (trampoline.get())(conn.cast());
    leave(code)
}

/// `trampoline::<A, R>`, with the types erased.
pub(crate) type Trampoline = fn(Connection<(), ()>) -> i32;

/// What a parent sends after the trampoline: the user's function and its arguments (which
/// the parent writes from a borrowed `Args`, `&A`).
pub(crate) type Call<A, R, Args = A> = (FnRef<fn(A) -> R>, Args);

/// Receives the user's function and its arguments ([`Call`]), runs it, and reports. What a
/// parent sends, as an [`FnRef`], after the [`Start`].
pub(crate) fn trampoline<A, R>(conn: Connection<(), ()>) -> i32
where
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    let call_conn: Connection<(), Call<A, R>> = conn.cast();
    let (f, args) = match call_conn.recv() {
        Ok(call) => call,
        Err(e) => {
            let report: Connection<Outcome<R>, ()> = call_conn.cast();
            let _ = report.send(&Outcome::Transfer(format!("cannot receive the arguments: {e}")));
            return EXIT_BOOTSTRAP;
        }
    };
    run_and_report(&call_conn.cast(), move || (f.get())(args))
}

/// How a Spawn child (and the fork server) leaves: flushes stdout (this is a fresh process,
/// so everything in the buffer is ours) and exits, running `atexit` hooks (which join this
/// process's own children). A fork server's child leaves its own way (`forkserver::leave`).
pub(crate) fn exit(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bootstrap_variable_is_known_by_its_whole_key_as_an_entry_or_a_bare_key() {
        for yes in ["MPROC_CHILD=1:3", "MPROC_CHILD=", "MPROC_CHILD", "MPROC_FORKSERVER=7:3"] {
            assert!(is_bootstrap_var(yes.as_bytes()), "{yes}");
        }
        for no in ["MPROC_CHILDREN=1", "MPROC_CHIL=1", "XMPROC_CHILD=1", "PATH=MPROC_CHILD=1", ""] {
            assert!(!is_bootstrap_var(no.as_bytes()), "{no}");
        }
    }
}
