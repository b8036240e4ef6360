//! `StartMethod::Spawn`: the child is a fresh run of this program that calls `init()`.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use mproc_ipc::Connection;
use rustix::process::PidfdFlags;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bootstrap::{self, Outcome, Start};
use crate::child::{ChildState, Exit};
use crate::error::{Error, Result};
use crate::identity::Identity;
use crate::process::Process;
use crate::sys;

/// The variable that tells a spawned program it is a child: `PARENT_PID:FD`, the fd being
/// its end of the bootstrap connection.
pub(crate) const CHILD_ENV: &str = "MPROC_CHILD";

/// Spawns a child running `f(args)`.
pub(crate) fn start<A, R>(identity: Identity, f: fn(A) -> R, args: &A) -> Result<Process<R>>
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    crate::check_initialized()?;
    let (parent_end, child_end) = Connection::<Start, ()>::pair()?;
    let env = [bootstrap_env(CHILD_ENV)];
    let pid = sys::spawn::spawn_self(&crate::child_args(), &env, child_end.as_fd())?;
    drop(child_end);
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty())?;
    let state = Arc::new(ChildState::new(pid, identity.name.clone(), identity.daemon, Exit::Own { pidfd }));
    let (conn, sent) = send_start(parent_end, identity, f, args);
    finish_start(state, conn, sent)
}

/// `KEY=PARENT_PID:FD` for the bootstrap end a spawned child finds as fd 3.
pub(crate) fn bootstrap_env(key: &str) -> std::ffi::CString {
    sys::spawn::env_entry(key, &format!("{}:{}", std::process::id(), sys::spawn::BOOTSTRAP_FD))
}

/// Sends a new child what to run: the start message, then the arguments. They wait in the
/// socket until the child reads them, so this needs no answer from the child first. Returns
/// the connection, typed for the child's outcome, and whether sending worked (if not, the
/// child sees its connection close and exits).
pub(crate) fn send_start<A, R>(
    conn: Connection<Start, ()>,
    identity: Identity,
    f: fn(A) -> R,
    args: &A,
) -> (Connection<(), Outcome<R>>, std::result::Result<(), mproc_ipc::Error>)
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    let start = Start {
        trampoline: sys::offset_of(bootstrap::trampoline::<A, R> as *const () as usize),
        func: sys::offset_of(f as usize),
        check: sys::offset_of(bootstrap::check_binary as *const () as usize),
        identity,
    };
    let sent = conn.send(&start);
    let conn: Connection<A, ()> = conn.cast();
    let sent = sent.and_then(|()| conn.send(args));
    (conn.cast(), sent)
}

/// Makes the handle of a child whose start was sent; a failed send becomes the error (the
/// handle, dropped, has the child reaped).
pub(crate) fn finish_start<R>(
    state: Arc<ChildState>,
    conn: Connection<(), Outcome<R>>,
    sent: std::result::Result<(), mproc_ipc::Error>,
) -> Result<Process<R>> {
    let process = Process::new(state, conn);
    match sent {
        Ok(()) => Ok(process),
        Err(e) => Err(Error::Transfer {
            name: process.name().to_string(),
            message: format!("cannot send the start message and arguments: {e}"),
        }),
    }
}

/// In a program started as a child: the bootstrap connection named by `key`, if the variable
/// is set *for this process* (its parent pid matches: a program run by a child with a plain
/// `Command` inherits the variable but is not our child).
pub(crate) fn take_bootstrap<S, R>(key: &str) -> Option<Connection<S, R>> {
    let value = std::env::var(key).ok()?;
    let (ppid, fd) = value.split_once(':')?;
    let (ppid, fd): (u32, i32) = (ppid.parse().ok()?, fd.parse().ok()?);
    let parent = rustix::process::getppid()?.as_raw_nonzero().get() as u32;
    if parent != ppid {
        return None;
    }
    let fd: OwnedFd = sys::spawn::inherited_socket(fd)?;
    let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
    Some(Connection::from(fd))
}
