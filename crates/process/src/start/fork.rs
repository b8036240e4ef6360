//! `StartMethod::Fork`: the child is a copy of this process and runs a closure.

use std::io::Write;
use std::sync::Arc;

use rustix::process::Pid;
use serde::Serialize;

use crate::bootstrap;
use crate::child::{ChildState, Exit};
use crate::error::Result;
use crate::identity::{self, Identity};
use crate::process::Process;
use crate::slot::{Slot, SlotWriter};
use crate::sys::fork::{Never, die_with_parent, exit_now, fork_then};

/// Forks a child that runs `f` and leaves its value in a [`Slot`].
/// `close` are the parent's fds the child closes first (`Builder::close_in_child`): ends the
/// caller holds open for the whole call (the builder borrows them), so each number names
/// that end in the child too.
pub(crate) fn start<R, F>(identity: Identity, close: &[i32], f: F) -> Result<Process<R>>
where
    F: FnOnce() -> R,
    R: Serialize,
{
    // Everything the parent writes, it writes here, before the fork: what it writes after the
    // fork, while the child runs, lands on pages the child shares, each a page copied. So the
    // child's state is made and listed now, and only its pid is stored afterwards. The
    // identity is boxed, so the child becomes it by storing a pointer.
    let exit = Exit::own()?;
    crate::registry::prune(); // first: the slots of the children it forgets come back
    let slot = Slot::take()?;
    let writer = slot.writer();
    let parent_pid = Pid::from_raw(crate::global::pid() as i32).expect("a pid is positive");
    let identity = Box::new(identity);
    let state = Arc::new(ChildState::unstarted(exit).with_slot(slot));
    crate::registry::push(Arc::clone(&state));
    // Flush stdio first so the child does not print the parent's pending output again, and
    // hold the stdio locks across the fork, so no other thread holds one then (the child
    // could never print). mproc's own per-process state needs no lock held: a child starts
    // it afresh (see `global`).
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut out = stdout.lock();
    let _ = out.flush();
    let held = (out, stderr.lock());
    // The identity goes to the child, and comes back to the parent (which keeps it in the
    // child's state); the locks are released on both sides.
    let forked = fork_then(close, identity, |identity| -> Never {
        drop(held);
        if identity.daemon {
            die_with_parent(parent_pid);
        }
        identity::become_child(identity);
        child(&stdout, writer, f)
    });
    match forked {
        Ok((pid, identity)) => {
            state.started(pid, identity);
            Ok(Process::from_slot(state))
        }
        Err(e) => {
            state.never_started();
            Err(e.into())
        }
    }
}

/// The child side, once it has become the child: run `f`, leave the outcome in the slot,
/// join its own children, exit. Never returns. Inlined, with what it calls, so the child runs code from few pages:
/// each new page of code it runs costs it a page fault (a fork does not copy the page tables
/// of code).
#[inline(always)]
fn child<R: Serialize>(stdout: &std::io::Stdout, slot: SlotWriter<'_>, f: impl FnOnce() -> R) -> ! {
    let (outcome, code) = bootstrap::run(f);
    slot.write(&outcome);
    // As every child leaves (and as Python's forked children do): its own children are joined
    // and its daemons terminated, so none runs on orphaned. Nothing to look at in one that
    // started none.
    if identity::started_children() {
        crate::registry::join_all();
    }
    // Flush what the child itself printed (through the handle the parent took, which saves
    // the child a call), then leave without running the parent's exit hooks or destructors
    // of the parent's state.
    let _ = (&mut &*stdout).flush();
    exit_now(code)
}
