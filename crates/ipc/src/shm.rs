//! Memory shared between processes, and the robust mutex and condition variable that guard it.
//!
//! The foundation of the synchronisation primitives and shared state (and of the queues built
//! on them). What it offers:
//!
//! - [`Shared<T>`]: a `T` plus `data_len` plain bytes, in an anonymous file (a sealed memfd)
//!   mapped shared. `Deref` gives `&T`; the bytes are reached by copies
//!   ([`read_data`](Shared::read_data), [`write_data`](Shared::write_data)). `T` is any
//!   [`ShmType`]: the atomic integers, [`ShmMutex`], [`ShmRecursiveMutex`], [`ShmCondvar`],
//!   and arrays and tuples of them. `Clone` shares the same memory.
//! - It travels like an ipc end: a forked child inherits it, and a `Shared` inside a value
//!   sent over a duplex [`Connection`](crate::Connection) (so also in the arguments of a
//!   process or a pool task) arrives mapped in the other process (its memfd goes as
//!   `SCM_RIGHTS`). The memory lives until the last process holding it drops it or exits.
//! - [`ShmMutex`]: a process-shared *robust* mutex. [`lock`](ShmMutex::lock),
//!   [`try_lock`](ShmMutex::try_lock), [`lock_until`](ShmMutex::lock_until) (a deadline)
//!   give an [`ShmGuard`] (unlocks on drop; not `Send`: the thread that locked unlocks). If
//!   the holder died (killed at any instruction, even between taking the lock and anything
//!   else), the next locker gets the lock *with* [`LockError::OwnerDied`]: the guarded state
//!   may be half-written, so it repairs the state, then uses the guard. The mutex itself is
//!   already made consistent again. Locking it twice from one thread is an error
//!   (`EDEADLK`), not a hang.
//! - [`ShmCondvar`]: a condition variable for any [`ShmMutex`]/[`ShmRecursiveMutex`]
//!   ([`wait_until`](ShmCondvar::wait_until), [`notify_one`](ShmCondvar::notify_one),
//!   [`notify_all`](ShmCondvar::notify_all)). Spurious wake-ups happen: wait in a loop over
//!   the predicate, as with any condvar.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use mproc_ipc::{Shared, ShmCondvar, ShmMutex};
//!
//! # fn main() -> mproc_ipc::Result<()> {
//! // A mutex, a condvar, a counter, and 64 bytes of data.
//! let shared = Shared::<(ShmMutex, ShmCondvar, AtomicU64)>::with_data(64)?;
//! let (lock, cond, count) = &*shared;
//! {
//!     let _guard = lock.lock().unwrap_or_else(|died| died.into_guard().unwrap());
//!     shared.write_data(0, b"hello");
//!     count.store(5, Ordering::Relaxed);
//!     cond.notify_all();
//! }
//! let mut buf = [0; 5];
//! shared.read_data(0, &mut buf);
//! assert_eq!(&buf, b"hello");
//! # Ok(()) }
//! ```
//!
//! # How the guarantees hold
//!
//! - *Holder killed*: the mutex is a robust futex: its word holds the holder's thread id, and
//!   the holder's thread keeps it on its robust list (glibc's list, shared with glibc's own
//!   robust mutexes; `list_op_pending` covers the instant between the atomic that takes it
//!   and the list update). At the thread's end the kernel marks the word `OWNER_DIED` and
//!   wakes one waiter. No pid is stored and compared later, so a reused pid changes nothing.
//!   The uncontended lock and unlock are one compare-and-swap and one swap, no system call.
//! - *A forked child*: the lock belongs to the thread that took it, in the parent; the child
//!   does not own it (its robust list starts empty), waits for it like anyone else, and gets
//!   `OwnerDied` if the parent dies holding it.
//! - *No lost wake-up*: a waiter reads the condvar's sequence number while it holds the mutex
//!   and sleeps (futex) only if it is unchanged; a notify changes it first, so one that comes
//!   between the unlock and the sleep makes the sleep return at once.
//! - *Waiter killed mid-wait*: the kernel drops a dead thread from the futex queue; the only
//!   trace is the waiter count, which stays one too high, so later notifies make a wake-up
//!   call that finds no one (slower, never wrong). A `notify_one` whose woken thread dies
//!   before relocking is lost to the others: code that must not hang then uses `notify_all`
//!   or waits with a deadline.
//! - *Deadlines*: every wait has a `_until` form with an `Option<Instant>` (`None` = no
//!   deadline); the lock and the condvar wait with relative futex timeouts recomputed from
//!   the monotonic clock, so wall-clock changes do not move them.
//!
//! # Caveats
//!
//! - The data bytes are plain memory that other processes write: read and write them under a
//!   lock, or accept torn copies.
//! - A `Shared<T>` received from another process must have been made with the same `T` (the
//!   same program): checked by size and type name. The data bytes are untyped here: a type
//!   that keeps typed values in them names their type in `T` (as `Value<P>` and `Array<P>`
//!   do with a `PhantomData<P>` field) so that the check covers it, and checks `data_len`.

use std::io;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::sys::robust::{WaitSet, Watch};
use crate::sys::shm::{RawMutex, Taken, data_offset};
pub use crate::sys::shm::{Shared, ShmCondvar, ShmGuard, ShmMutex, ShmRecursiveMutex, ShmType};

impl<T: ShmType> Shared<T> {
    /// A new anonymous shared `T` (initialized), with no data bytes.
    pub fn new() -> crate::Result<Self> {
        Ok(Shared::create(0)?)
    }

    /// A new anonymous shared `T` (initialized) followed by `data_len` zero bytes.
    pub fn with_data(data_len: usize) -> crate::Result<Self> {
        Ok(Shared::create(data_len)?)
    }

    /// How many data bytes follow the `T`.
    pub fn data_len(&self) -> usize {
        self.mapping().len() - data_offset::<T>()
    }

    /// Copies `dst.len()` data bytes from `offset` into `dst`. Panics if the range is outside
    /// the data.
    #[inline]
    pub fn read_data(&self, offset: usize, dst: &mut [u8]) {
        assert!(
            offset.checked_add(dst.len()).is_some_and(|end| end <= self.data_len()),
            "read_data out of range"
        );
        self.mapping().read(data_offset::<T>() + offset, dst);
    }

    /// Copies `src` into the data bytes at `offset`. Panics if the range is outside the data.
    #[inline]
    pub fn write_data(&self, offset: usize, src: &[u8]) {
        assert!(
            offset.checked_add(src.len()).is_some_and(|end| end <= self.data_len()),
            "write_data out of range"
        );
        self.mapping().write(data_offset::<T>() + offset, src);
    }
}

impl<T: ShmType> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("type", &std::any::type_name::<T>())
            .field("data_len", &self.data_len())
            .finish()
    }
}

/// FNV-1a of `T`'s name and size: what a receiver checks before mapping a region as `T`.
fn type_tag<T>() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::any::type_name::<T>().bytes().chain((size_of::<T>() as u64).to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

impl<T: ShmType> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (crate::fdpass::FdOf(self.mapping().fd().as_fd()), self.data_len() as u64, type_tag::<T>())
            .serialize(serializer)
    }
}

impl<'de, T: ShmType> Deserialize<'de> for Shared<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (fd, data_len, tag) = <(crate::fdpass::FdIn, u64, u64)>::deserialize(deserializer)?;
        if tag != type_tag::<T>() {
            return Err(crate::codec::refuse(format!(
                "the shared region was made for another type than {}",
                std::any::type_name::<T>()
            )));
        }
        let data_len = usize::try_from(data_len).map_err(D::Error::custom)?;
        Shared::attach(fd.0, data_len)
            .map_err(|e| D::Error::custom(format!("cannot map a shared region: {e}")))
    }
}

/// Why a lock was not simply taken.
#[derive(Debug)]
pub enum LockError<G> {
    /// The previous holder died holding the lock. The lock is now held (the guard is here) and
    /// usable again; the state it guards may be half-written, so repair it first.
    OwnerDied(G),
    /// The deadline passed (or, for `try_lock`, the lock is held elsewhere).
    Timeout,
    /// The system refused: `EDEADLK` when this thread already holds a non-recursive lock,
    /// `EAGAIN` when a recursive lock's count would overflow.
    Io(io::Error),
}

impl<G> LockError<G> {
    /// The guard of an [`OwnerDied`](LockError::OwnerDied) lock, `None` otherwise.
    pub fn into_guard(self) -> Option<G> {
        match self {
            LockError::OwnerDied(g) => Some(g),
            _ => None,
        }
    }

    /// The same error with the guard mapped.
    pub fn map<H>(self, f: impl FnOnce(G) -> H) -> LockError<H> {
        match self {
            LockError::OwnerDied(g) => LockError::OwnerDied(f(g)),
            LockError::Timeout => LockError::Timeout,
            LockError::Io(e) => LockError::Io(e),
        }
    }
}

impl<G> std::fmt::Display for LockError<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::OwnerDied(_) => {
                f.write_str("the lock's owner died holding it (the state it guards may need repair)")
            }
            LockError::Timeout => f.write_str("timed out waiting for the lock"),
            LockError::Io(e) => write!(f, "cannot take the lock: {e}"),
        }
    }
}

impl<G: std::fmt::Debug> std::error::Error for LockError<G> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LockError::Io(e) => Some(e),
            _ => None,
        }
    }
}

#[inline]
fn lock_raw(raw: &RawMutex, deadline: Option<Instant>) -> Result<ShmGuard<'_>, LockError<ShmGuard<'_>>> {
    let guard = |raw| ShmGuard { raw, _not_send: PhantomData };
    match raw.lock_until(deadline) {
        Ok(Some(Taken::Clean)) => Ok(guard(raw)),
        Ok(Some(Taken::OwnerDied)) => Err(LockError::OwnerDied(guard(raw))),
        Ok(None) => Err(LockError::Timeout),
        Err(e) => Err(LockError::Io(e)),
    }
}

#[inline]
fn try_lock_raw(raw: &RawMutex) -> Result<ShmGuard<'_>, LockError<ShmGuard<'_>>> {
    let guard = |raw| ShmGuard { raw, _not_send: PhantomData };
    match raw.try_lock() {
        Ok(Some(Taken::Clean)) => Ok(guard(raw)),
        Ok(Some(Taken::OwnerDied)) => Err(LockError::OwnerDied(guard(raw))),
        Ok(None) => Err(LockError::Timeout),
        Err(e) => Err(LockError::Io(e)),
    }
}

macro_rules! mutex_api {
    ($t:ty) => {
        impl $t {
            /// Locks, waiting as long as it takes.
            #[inline]
            pub fn lock(&self) -> Result<ShmGuard<'_>, LockError<ShmGuard<'_>>> {
                lock_raw(self.raw(), None)
            }

            /// Locks, waiting until `deadline` (`None`: as long as it takes).
            pub fn lock_until(
                &self,
                deadline: Option<Instant>,
            ) -> Result<ShmGuard<'_>, LockError<ShmGuard<'_>>> {
                lock_raw(self.raw(), deadline)
            }

            /// Locks if no one holds it ([`LockError::Timeout`] if someone does).
            pub fn try_lock(&self) -> Result<ShmGuard<'_>, LockError<ShmGuard<'_>>> {
                try_lock_raw(self.raw())
            }
        }

        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($t))
            }
        }
    };
}
mutex_api!(ShmMutex);
mutex_api!(ShmRecursiveMutex);

/// Locks `guard`'s mutex again after a condvar's sleep; whether its owner died meanwhile.
fn relock(guard: &mut ShmGuard<'_>) -> bool {
    loop {
        match guard.raw.lock_until(None) {
            Ok(Some(taken)) => break taken == Taken::OwnerDied,
            // Cannot time out without a deadline; an error would mean the mutex is
            // broken: keep trying rather than return without the lock.
            _ => std::thread::yield_now(),
        }
    }
}

/// How a [`ShmCondvar`] wait ended. The lock is held again in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitOutcome {
    /// The deadline passed (check the predicate anyway: a notify may have come with it).
    pub timed_out: bool,
    /// Relocking found the mutex's owner dead: the guarded state may need repair.
    pub owner_died: bool,
}

impl ShmCondvar {
    /// Unlocks `guard`'s mutex, sleeps until notified (or spuriously woken, or `deadline`),
    /// and locks again.
    pub fn wait_until(&self, guard: &mut ShmGuard<'_>, deadline: Option<Instant>) -> WaitOutcome {
        self.wait_watching(guard, deadline, &[])
    }

    /// As [`wait_until`](Self::wait_until), also woken when the holder of one of `watched`
    /// (locks held by others) ends. `watched` may be empty; on a kernel without
    /// `futex_waitv` (before Linux 5.16) the watch is a look every 50 ms. Allocates nothing:
    /// the words it sleeps on are gathered on the stack (at most 127 watched locks are
    /// watched; more are not looked at).
    pub(crate) fn wait_watching(
        &self,
        guard: &mut ShmGuard<'_>,
        deadline: Option<Instant>,
        watched: &[ShmMutex],
    ) -> WaitOutcome {
        self.wait_from(guard, self.sequence(), deadline, watched)
    }

    /// The notify count a later [`wait_since`](Self::wait_since) sleeps on. For a condition
    /// another process changes without holding the guard's mutex (the queue's two sides):
    /// read it before checking the condition, and a notify made after the check's change is
    /// not lost (the wait returns at once).
    pub(crate) fn sequence(&self) -> u32 {
        self.seq.load(Ordering::SeqCst)
    }

    /// As [`wait_until`](Self::wait_until), sleeping only while no notify came since
    /// `seq` (from [`sequence`](Self::sequence)), and at most `slice` (a sleeper's own look
    /// now and then, whatever the deadline). Without a deadline it reads no clock: the kernel
    /// gets `slice` as the futex wait's relative timeout. A wake-up after a sleep is what
    /// costs here (with both processes on one CPU every round trip through a queue is two of
    /// them), and a clock read in a process just switched to touches pages (libc's
    /// `clock_gettime`, the vDSO's code and data) the wake-up itself does not.
    pub(crate) fn wait_since(
        &self,
        guard: &mut ShmGuard<'_>,
        seq: u32,
        deadline: Option<Instant>,
        slice: std::time::Duration,
    ) -> WaitOutcome {
        use rustix::thread::futex;
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let _ = guard.raw.unlock();
        let left = deadline.map_or(slice, |d| d.saturating_duration_since(Instant::now()).min(slice));
        let mut timed_out = left.is_zero();
        if !timed_out {
            let ts = futex::Timespec { tv_sec: left.as_secs() as _, tv_nsec: left.subsec_nanos() as _ };
            // Shared (not private): the word is in memory other processes map. Woken, the
            // value changed before the sleep (AGAIN), or a signal (INTR): all look like a
            // (possibly spurious) wake-up.
            timed_out = futex::wait(&self.seq, futex::Flags::empty(), seq, Some(&ts))
                == Err(rustix::io::Errno::TIMEDOUT);
        }
        // A slice that ran out is not the caller's deadline.
        timed_out &= deadline.is_some_and(|d| Instant::now() >= d);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        WaitOutcome { timed_out, owner_died: relock(guard) }
    }

    fn wait_from(
        &self,
        guard: &mut ShmGuard<'_>,
        seq: u32,
        deadline: Option<Instant>,
        watched: &[ShmMutex],
    ) -> WaitOutcome {
        use rustix::thread::futex;
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut words = WaitSet::new();
        let mut died = false;
        if !watched.is_empty() {
            words.push(&self.seq, seq);
            // Armed while the lock is held: a holder that ends from now on wakes this sleep
            // (or has changed its word before the sleep starts, which then returns at once).
            for m in watched {
                match m.raw().watch_owner() {
                    Watch::Held(value) => {
                        if !words.push(m.raw().word(), value) {
                            break;
                        }
                    }
                    Watch::Free => {}
                    Watch::Died => died = true,
                }
            }
        }
        let _ = guard.raw.unlock();
        let mut timed_out = false;
        let asked = deadline;
        let mut deadline = deadline;
        let watching = words.len() > 1;
        let woken = match (died, watching) {
            (true, _) => Some(Ok(true)),
            (false, true) => Some(words.wait(deadline)),
            (false, false) => None,
        };
        let woken = match woken {
            Some(Ok(woken)) => Some(woken),
            Some(Err(_)) => {
                // No futex_waitv: look again within 50 ms.
                let slice = Instant::now() + std::time::Duration::from_millis(50);
                deadline = Some(deadline.map_or(slice, |d| d.min(slice)));
                None
            }
            None => None,
        };
        match woken {
            Some(woken) => timed_out = !woken,
            None => {
                let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                match timeout {
                    Some(left) if left.is_zero() => timed_out = true,
                    _ => {
                        let ts = timeout.map(|left| futex::Timespec {
                            tv_sec: left.as_secs() as _,
                            tv_nsec: left.subsec_nanos() as _,
                        });
                        // Shared (not private): the word is in memory other processes map.
                        // Woken, the value changed before the sleep (AGAIN), or a signal
                        // (INTR): all look like a (possibly spurious) wake-up.
                        if let Err(rustix::io::Errno::TIMEDOUT) =
                            futex::wait(&self.seq, futex::Flags::empty(), seq, ts.as_ref())
                        {
                            timed_out = true;
                        }
                    }
                }
            }
        }
        // A 50 ms slice that ran out is not the caller's deadline.
        timed_out &= asked.is_some_and(|d| Instant::now() >= d);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        WaitOutcome { timed_out, owner_died: relock(guard) }
    }

    /// Wakes one waiter (if any).
    pub fn notify_one(&self) {
        self.notify(1);
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.notify(i32::MAX as u32);
    }

    fn notify(&self, n: u32) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _ = rustix::thread::futex::wake(&self.seq, rustix::thread::futex::Flags::empty(), n);
        }
    }
}
