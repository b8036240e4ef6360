//! The doorbell: how a change in shared memory reaches coroutines that wait in an event loop.
//!
//! A thread that waits for a shared primitive (an [`Event`](crate::Event), a queue) sleeps on
//! a futex, which an event loop cannot watch. A coroutine waits on a file descriptor instead:
//! the primitive's [`Doorbell`], an eventfd that travels with the primitive (a forked child
//! inherits it; a primitive sent to another process, or in a process's or pool task's
//! arguments, takes it along as `SCM_RIGHTS`). Beside the primitive's state, in its shared
//! memory, [`Listeners`] counts the coroutines listening (in every process). Whoever changes
//! the state rings the bell with [`Doorbell::ring`], which writes the eventfd only when that
//! count is not zero: with no coroutine waiting, a ring is one load of a word on a cache line
//! the change just touched.
//!
//! The protocol, for a waiter (what `mproc-coroutine` does):
//!
//! 1. count itself in ([`Doorbell::listen`]; the count goes down when the guard drops),
//! 2. note the eventfd's event count (register interest),
//! 3. check the state; if what it waits for is there, done,
//! 4. sleep until the eventfd has a new event, and go to 2.
//!
//! and for a waker: change the state, then [`ring`](Doorbell::ring). No wake is lost between
//! a check and the sleep, in the language's memory model (C++20's, which Rust's is), not only
//! on x86 or ARMv8 hardware: `listen` is the count's increment then a `SeqCst` fence, and
//! `ring` a `SeqCst` fence then the count's load. Of the two fences, one comes first in the
//! single total order of `SeqCst` fences. If the waker's does, the waiter's check (after its
//! fence) sees the change, which was made before the waker's fence; if the waiter's does, the
//! waker's load (after its fence) sees the waiter's increment, rings, and the waiter's event
//! loop sees an event after step 2. So the state may be changed and read with any ordering
//! (a queue's commit store is a `Release` store, as far as this argument goes): the fences
//! carry it. A loom model of the protocol (`mproc-coroutine`'s `shared/loom_tests.rs`, run by
//! `cargo xtask test`) checks it, and finds the lost wake when a fence is taken out.
//!
//! The eventfd is never read back: an edge-triggered epoll reports each write as a new event
//! even while the counter is already non-zero, and a reader draining it could hide the event
//! from another process's epoll (which looks at the counter again before reporting). So a
//! doorbell's fd stays readable once rung: only edges mean anything, and a plain `poll` of it
//! (as [`wait`](crate::wait) does) is not a way to wait for it.
//!
//! A listener killed while it listens leaves the count one too high: later changes then ring
//! the bell for no one (a write each, slower, never wrong).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::sys::shm::Listeners;

/// The eventfd of a shared primitive that coroutines await (see the module docs). `Clone`
/// shares the same eventfd.
#[derive(Clone, Debug)]
pub struct Doorbell {
    fd: Arc<OwnedFd>,
}

impl Doorbell {
    /// A new doorbell (an eventfd, close-on-exec and non-blocking).
    pub fn new() -> crate::Result<Doorbell> {
        use rustix::event::EventfdFlags;
        let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Doorbell { fd: Arc::new(fd) })
    }

    /// Rings the bell if anyone listens: call it after each change of the state that
    /// `listeners` sits beside.
    #[inline]
    pub fn ring(&self, listeners: &Listeners) {
        // Orders the caller's change before the load (see the module docs).
        fence(Ordering::SeqCst);
        if listeners.0.load(Ordering::Relaxed) != 0 {
            self.ring_now();
        }
    }

    #[cold]
    fn ring_now(&self) {
        // Each write is a new edge for every epoll watching the eventfd. The counter only
        // overflows after 2^64 - 2 rings (then it is readable already, so nothing is lost).
        let _ = rustix::io::write(&*self.fd, &1u64.to_ne_bytes());
    }

    /// Counts the caller in as a listener of `listeners` until the guard drops: rings from
    /// now on write the eventfd.
    pub fn listen<'a>(&self, listeners: &'a Listeners) -> Listening<'a> {
        listeners.0.fetch_add(1, Ordering::Relaxed);
        // Orders the increment before the caller's check of the state (see the module docs).
        fence(Ordering::SeqCst);
        Listening { listeners }
    }

    /// A duplicate of the eventfd (an event loop registers its own fd, so that two handles
    /// on one primitive can be registered in one epoll).
    pub fn try_clone_fd(&self) -> crate::Result<OwnedFd> {
        Ok(self.fd.try_clone()?)
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A listener counted in (see [`Doorbell::listen`]); counted out when dropped.
#[derive(Debug)]
#[must_use = "the listener is counted out when the guard drops"]
pub struct Listening<'a> {
    listeners: &'a Listeners,
}

impl Drop for Listening<'_> {
    fn drop(&mut self) {
        self.listeners.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Listeners {
    /// How many listen now.
    pub fn count(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A shared primitive that coroutines can await: its doorbell and the listener count its
/// changes ring it for (see the module docs). `mproc-coroutine` awaits any of them.
pub trait Awaitable {
    /// The primitive's doorbell.
    fn doorbell(&self) -> &Doorbell;

    /// The count of listeners, in the primitive's shared memory.
    fn listeners(&self) -> &Listeners;
}

impl Serialize for Doorbell {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::fdpass::FdOf(self.fd.as_fd()).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Doorbell {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let fd = crate::fdpass::FdIn::deserialize(deserializer)?;
        Ok(Doorbell { fd: Arc::new(fd.0) })
    }
}
