//! State that belongs to one process: after a `fork` the child starts it afresh.
//!
//! A forked child inherits a copy of every static. For mproc's registries that copy is wrong
//! (the children of the parent are not the children of the child; the parent's reaper thread
//! does not exist in the child), and a lock held by another thread at the fork would never be
//! released there. [`PerProcess`] values live on a page the kernel wipes in every forked child
//! (see [`crate::sys::wiped`]), so a child, forked by mproc or by anyone, makes its own on first
//! use and never waits on a lock of its parent's.

pub(crate) use crate::sys::wiped::{PerProcess, pid};
