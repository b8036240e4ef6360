//! State that belongs to one process: after a `fork` the child starts it afresh.
//!
//! A forked child inherits a copy of every static. For mproc's registries that copy is wrong
//! (the children of the parent are not the children of the child; the parent's reaper thread
//! does not exist in the child). [`PerProcess`] notices the pid change and starts over.
//! [`crate::start::fork`] holds every one of these locks across the fork, so the child never
//! finds one locked by a thread that no longer exists.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::{Mutex, MutexGuard};

/// This process's pid, once asked (0: not known). A child forked by any code that goes
/// through `fork(3)` (which runs `pthread_atfork` handlers) forgets it; a raw `clone(2)`
/// without an `exec` would not, and is not supported.
static PID: AtomicU32 = AtomicU32::new(0);

/// This process's pid, without a system call after the first.
pub(crate) fn pid() -> u32 {
    let cached = PID.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
    static FORGOTTEN_IN_CHILDREN: OnceLock<bool> = OnceLock::new();
    if *FORGOTTEN_IN_CHILDREN.get_or_init(|| crate::sys::at_fork_in_child(forget_pid)) {
        PID.store(pid, Ordering::Relaxed);
    }
    pid
}

extern "C" fn forget_pid() {
    PID.store(0, Ordering::Relaxed);
}

/// A value created on first use in each process.
pub(crate) struct PerProcess<T> {
    slot: Mutex<Option<(u32, T)>>,
}

impl<T> PerProcess<T> {
    pub(crate) const fn new() -> Self {
        PerProcess { slot: Mutex::new(None) }
    }

    /// Runs `f` on this process's value, creating it with `init` first if this process has none
    /// yet (the first use, or the first in a forked child: the parent's copy is dropped).
    pub(crate) fn with<R>(&self, init: impl FnOnce() -> T, f: impl FnOnce(&mut T) -> R) -> R {
        let mut slot = self.slot.lock();
        let pid = pid();
        if slot.as_ref().map(|(owner, _)| *owner) != Some(pid) {
            *slot = Some((pid, init()));
        }
        f(&mut slot.as_mut().expect("just set").1)
    }

    /// Locks the slot without touching it: held across `fork`.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Option<(u32, T)>> {
        self.slot.lock()
    }
}
