//! A process-wide lock that no `fork` copies held, and the count of forks this process is
//! from: for a table of this process's own (the barriers it holds), which a forked child
//! must neither wait on (a thread of the parent's holding the lock at the fork would never
//! release it in the child) nor take for its own (the parent's entries are not the child's).

use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Whether a thread holds the lock. Taken by the fork handlers too, so no fork happens while
/// a thread holds it (and the child's copy is free).
static HELD: AtomicBool = AtomicBool::new(false);

/// How many forks this process is from (counted from the first use of [`locked`]): a table
/// kept under the lock starts afresh when it differs from the one it was made in.
static FORKS: AtomicU64 = AtomicU64::new(0);

fn acquire() {
    while HELD.swap(true, Ordering::Acquire) {
        std::thread::yield_now();
    }
}

extern "C" fn prepare() {
    acquire();
}

extern "C" fn parent() {
    HELD.store(false, Ordering::Release);
}

extern "C" fn child() {
    FORKS.fetch_add(1, Ordering::Relaxed);
    HELD.store(false, Ordering::Release);
}

/// Released on drop (also if the closure panics).
struct Held;

impl Drop for Held {
    fn drop(&mut self) {
        HELD.store(false, Ordering::Release);
    }
}

/// Runs `f` holding the lock, given the count of forks this process is from. `f` must be
/// short (a fork waits for it) and must not call `locked` again (the lock is not recursive).
pub(crate) fn locked<R>(f: impl FnOnce(u64) -> R) -> R {
    static AT_FORK: Once = Once::new();
    AT_FORK.call_once(|| {
        // SAFETY: registers plain functions that only swap and store atomics (and yield while
        // another thread holds the lock, in the parent, before the fork): nothing that is
        // unsafe in a child of a multi-threaded process.
        unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    });
    acquire();
    let _held = Held;
    f(FORKS.load(Ordering::Relaxed))
}
