//! `StartMethod::Fork`: the child is a copy of this process and runs a closure.

use std::io::Write;
use std::sync::Arc;

use mproc_ipc::Connection;
use rustix::process::{Pid, PidfdFlags, Signal};
use serde::Serialize;

use crate::bootstrap::{self, Outcome};
use crate::child::{ChildState, Exit};
use crate::error::Result;
use crate::identity::{self, Identity};
use crate::process::Process;
use crate::registry;
use crate::sys::fork::{Forked, exit_now, fork};

/// Forks a child that runs `f` and sends its value back.
/// `close` are the parent's fds the child closes first (`Builder::close_in_child`).
pub(crate) fn start<R, F>(identity: Identity, close: &[i32], f: F) -> Result<Process<R>>
where
    F: FnOnce() -> R,
    R: Serialize,
{
    let (parent_end, child_end) = Connection::<(), Outcome<R>>::pair()?;
    let parent_pid = rustix::process::getpid();
    let (name, daemon) = (identity.name.clone(), identity.daemon);
    let pid = {
        // Hold every lock the child will touch, so no other thread holds one at the fork;
        // flush stdio first so the child does not print the parent's pending output again.
        let stdout = std::io::stdout();
        let stderr = std::io::stderr();
        let mut out = stdout.lock();
        let mut err = stderr.lock();
        let _ = out.flush();
        let _ = err.flush();
        let _registry = registry::fork_locks();
        let _identity = identity::lock();
        let _server = crate::start::forkserver::fork_lock();
        let _starter = crate::builder::fork_lock();
        match fork()? {
            Forked::Child => {
                drop((_starter, _server, _identity, _registry, out, err));
                drop(parent_end);
                crate::sys::fork::close_copies(close);
                child(identity, parent_pid, child_end.cast(), f)
            }
            Forked::Parent(pid) => pid,
        }
    };
    drop(child_end);
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty())?;
    let state = Arc::new(ChildState::new(pid, name, daemon, Exit::Own { pidfd }));
    Ok(Process::new(state, parent_end))
}

/// The child side: become the child, run `f`, report, leave. Never returns.
fn child<R: Serialize>(
    identity: Identity,
    parent: Pid,
    conn: Connection<Outcome<R>, ()>,
    f: impl FnOnce() -> R,
) -> ! {
    if identity.daemon {
        die_with_parent(parent);
    }
    identity::become_child(identity);
    let code = bootstrap::run_and_report(&conn, f);
    drop(conn);
    // Flush what the child itself printed, then leave without running the parent's exit
    // hooks or destructors of the parent's state.
    let _ = std::io::stdout().flush();
    exit_now(code)
}

/// Makes the kernel kill this process when its parent dies. The death signal follows the
/// parent *thread* that forked; `Builder` starts daemons from a thread that lives as long as
/// the process. If the parent is already gone, leave now.
pub(crate) fn die_with_parent(parent: Pid) {
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    if rustix::process::getppid() != Some(parent) {
        exit_now(1);
    }
}
