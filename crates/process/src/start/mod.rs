//! The start methods, one module each, from the simplest up: [`fork`] (a copy of this
//! process runs a closure), [`spawn`] (a fresh run of this program), [`forkserver`] (children
//! forked by a one-thread server that is itself spawned). What Spawn and ForkServer share,
//! the parent's side of the bootstrap connection, is here, below both.

use std::sync::Arc;

use mproc_ipc::Connection;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bootstrap::{self, Call, Outcome, Start, Trampoline, World};
use crate::child::ChildState;
use crate::error::{Error, Result};
use crate::fnref::FnRef;
use crate::identity::Identity;
use crate::process::Process;
use crate::sys;

pub(crate) mod fork;
pub(crate) mod forkserver;
pub(crate) mod spawn;

/// `KEY=PARENT_PID:FD` for the bootstrap end a spawned child finds as fd 3.
pub(crate) fn bootstrap_env(key: &str) -> std::ffi::CString {
    sys::spawn::env_entry(key, &format!("{}:{}", std::process::id(), sys::spawn::BOOTSTRAP_FD))
}

/// Sends a new child what to run: the start message (with `world`, the directory and
/// environment it is to take, for a child that does not inherit them), then the trampoline
/// and the user's function (as [`FnRef`]s, the way a pool names functions too) with the
/// arguments. They wait in the
/// socket until the child reads them, so this needs no answer from the child first. Returns
/// the connection, typed for the child's outcome, and whether sending worked (if not, the
/// child sees its connection close and exits).
pub(crate) fn send_start<A, R>(
    conn: Connection<Start, ()>,
    identity: Identity,
    dies_with_parent: bool,
    world: Option<World>,
    f: fn(A) -> R,
    args: &A,
) -> (Connection<(), Outcome<R>>, std::result::Result<(), mproc_ipc::Error>)
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    let start = Start {
        check: sys::offset_of(bootstrap::check_binary as *const () as usize),
        identity,
        dies_with_parent,
        world,
    };
    let trampoline = FnRef::new(bootstrap::trampoline::<A, R> as Trampoline);
    let sent = conn.send(&start);
    let conn: Connection<FnRef<Trampoline>, ()> = conn.cast();
    let sent = sent.and_then(|()| conn.send(&trampoline));
    let conn: Connection<Call<A, R, &A>, ()> = conn.cast();
    let sent = sent.and_then(|()| conn.send(&(FnRef::new(f), args)));
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
