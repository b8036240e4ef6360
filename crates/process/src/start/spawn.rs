//! `StartMethod::Spawn`: the child is a fresh run of this program that calls `init()`.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use mproc_ipc::Connection;
use rustix::process::PidfdFlags;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bootstrap::{self, CHILD_ENV, Start};
use crate::child::{ChildState, Exit};
use crate::error::Result;
use crate::identity::Identity;
use crate::process::Process;
use crate::start::{bootstrap_env, finish_start, send_start};
use crate::sys;

/// Spawns a child running `f(args)`.
pub(crate) fn start<A, R>(identity: Identity, f: fn(A) -> R, args: &A) -> Result<Process<R>>
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    bootstrap::check_initialized()?;
    let (parent_end, child_end) = Connection::<Start, ()>::pair()?;
    let env = [bootstrap_env(CHILD_ENV)];
    let pid = sys::spawn::spawn_self(&env, bootstrap::is_bootstrap_var, child_end.as_fd())?;
    drop(child_end);
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty())?;
    let daemon = identity.daemon;
    let state = Arc::new(ChildState::new(pid, Box::new(identity.clone()), Exit::own_with(pidfd)));
    let (conn, sent) = send_start(parent_end, identity, daemon, None, f, args);
    finish_start(state, conn, sent)
}

/// The bootstrap connection a variable's value `PARENT_PID:FD` names, if it is this
/// process's: the fd is a socket. (`init` removes the variable once read, so a program a child
/// runs does not inherit it; one that got it some other way, without the fd, runs its own
/// `main`.)
///
/// A child whose parent pid is not the one in the variable was re-parented: its parent died
/// while it started. It leaves here, with a message, rather than run `main` as a program of
/// its own (the one thing `init` is for).
pub(crate) fn bootstrap_from<S, R>(value: &str) -> Option<Connection<S, R>> {
    let (ppid, fd) = value.split_once(':')?;
    let (ppid, fd): (u32, i32) = (ppid.parse().ok()?, fd.parse().ok()?);
    let fd: OwnedFd = sys::spawn::inherited_socket(fd)?;
    let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
    if parent != ppid {
        eprintln!("mproc: the parent of this child (pid {ppid}) died while it started; leaving");
        sys::fork::exit_now(bootstrap::EXIT_BOOTSTRAP);
    }
    let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
    Some(Connection::from(fd))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;
    use crate::error::Error;

    /// Each case runs in a Fork child: `bootstrap_from` is meant for a program's first line.
    #[test]
    fn a_bootstrap_value_is_ours_foreign_or_orphaned() {
        let ours = |value: String, forget: Option<Connection<u8>>| {
            Process::spawn(move || {
                // The fd is taken over by `bootstrap_from`: the test's handle must not close it.
                std::mem::forget(forget);
                u8::from(bootstrap_from::<(), ()>(&value).is_some())
            })
            .unwrap()
            .join()
        };
        let (socket, _peer) = mproc_ipc::duplex::<u8>().unwrap();
        let (pipe_rx, _pipe_tx) = mproc_ipc::pipe::<u8>().unwrap();
        let me = std::process::id();
        let fd = socket.as_raw_fd();
        // Started by us: the socket is the connection.
        assert_eq!(ours(format!("{me}:{fd}"), Some(socket)).unwrap(), 1);
        // A program that inherited the variable but not the socket: not a child, main runs.
        assert_eq!(ours(format!("{me}:{}", pipe_rx.as_raw_fd()), None).unwrap(), 0);
        assert_eq!(ours(format!("{me}:999"), None).unwrap(), 0);
        assert_eq!(ours("garbage".into(), None).unwrap(), 0);
        // The socket is there but the parent is not the one named: orphaned during its start;
        // it leaves with the bootstrap exit code instead of running main.
        let (socket, _peer) = mproc_ipc::duplex::<u8>().unwrap();
        let fd = socket.as_raw_fd();
        match ours(format!("1:{fd}"), Some(socket)) {
            Err(Error::Exited { code, .. }) => assert_eq!(code, bootstrap::EXIT_BOOTSTRAP),
            other => panic!("an orphaned child did not leave: {other:?}"),
        }
    }
}
