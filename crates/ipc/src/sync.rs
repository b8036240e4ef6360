//! Python's `multiprocessing` synchronisation primitives, in shared memory: [`Lock`],
//! [`RLock`], [`Semaphore`], [`BoundedSemaphore`], [`Event`], [`Condition`] (and
//! [`Barrier`](crate::Barrier) in its own module).
//!
//! Each is a handle on a [`Shared`] region: `Clone` gives another handle on the same
//! primitive, a forked child inherits it, and it travels inside a value sent over a duplex
//! [`Connection`](crate::Connection) or in a process's (or pool task's) arguments.
//!
//! Every blocking call has Python's timed forms: `try_` (never waits) and `_timeout`.
//! Locks are robust: if a holder dies, the next `acquire` gets the lock with
//! [`LockError::OwnerDied`]. The internal locks of the other primitives are robust too, and
//! their state is updated by single atomic stores, so a process killed inside one leaves
//! nothing half-done and strands no waiter.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::doorbell::{Awaitable, Doorbell, Listeners};
use crate::shm::{LockError, Shared, ShmCondvar, ShmGuard, ShmMutex, ShmRecursiveMutex};

/// The guard of a [`Lock`] or [`RLock`]: the lock is released when it drops.
pub type LockGuard<'a> = ShmGuard<'a>;

/// What an `acquire` returns: the guard, or why there is none (or the guard of a lock whose
/// previous owner died, in [`LockError::OwnerDied`]).
pub type LockResult<'a> = Result<LockGuard<'a>, LockError<LockGuard<'a>>>;

fn deadline_after(timeout: Duration) -> Option<Instant> {
    // A timeout too large to add is no deadline.
    Instant::now().checked_add(timeout)
}

/// Locks an internal mutex. Its owner dying is harmless to the caller (the state it guards
/// is only ever changed by single atomic stores), so that is not reported. Waits as long as
/// it takes: no one holds an internal lock longer than a few stores.
fn internal(m: &ShmMutex) -> ShmGuard<'_> {
    loop {
        match m.lock() {
            Ok(g) | Err(LockError::OwnerDied(g)) => return g,
            // Not reachable: no thread locks an internal mutex twice, and a robust mutex is
            // made consistent on every owner death. Retried rather than trusted.
            Err(_) => std::thread::yield_now(),
        }
    }
}

/// Python's `multiprocessing.Lock`: a non-recursive lock shared between processes.
///
/// A holder that dies hands it over: the next `acquire` gets it with
/// [`LockError::OwnerDied`].
///
/// ```
/// # fn main() -> mproc_ipc::Result<()> {
/// let lock = mproc_ipc::Lock::new()?;
/// {
///     let _guard = lock.acquire().map_err(|e| std::io::Error::other(e.to_string()))?;
///     assert!(lock.try_acquire().is_err(), "held");
/// }
/// assert!(lock.try_acquire().is_ok());
/// # Ok(()) }
/// ```
///
/// # Who releases it
///
/// Only the thread that acquired it, by dropping the guard, which is not `Send`. Python's
/// `Lock` may be released by any thread or process (it is a semaphore underneath); this one
/// may not, on purpose: a lock that knows its holder is what lets the kernel hand it over
/// when the holder dies (the holder's thread id is in the lock word, and the lock is on that
/// thread's robust futex list). A *thread* that ends holding it hands it over the same way
/// as a process that dies: the next `acquire` gets [`LockError::OwnerDied`]. For a token
/// that one thread takes and another gives back, use [`BoundedSemaphore::new(1)`]
/// (Python's `Lock` semantics, without the owner-died hand-over).
///
/// ```compile_fail
/// // The guard cannot move to another thread: the compiler refuses.
/// let lock = mproc_ipc::Lock::new().unwrap();
/// let guard = lock.acquire().unwrap();
/// std::thread::scope(|s| {
///     s.spawn(move || drop(guard));
/// });
/// ```
///
/// [`BoundedSemaphore::new(1)`]: BoundedSemaphore::new
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Lock {
    shared: Shared<ShmMutex>,
}

impl Lock {
    /// A new, unlocked lock.
    pub fn new() -> crate::Result<Lock> {
        Ok(Lock { shared: Shared::new()? })
    }

    /// Takes the lock, waiting as long as it takes. A second `acquire` from the thread that
    /// holds it is [`LockError::Io`] (`EDEADLK`), not a hang.
    #[inline]
    pub fn acquire(&self) -> LockResult<'_> {
        self.shared.lock()
    }

    /// Takes the lock if it is free ([`LockError::Timeout`] if not).
    pub fn try_acquire(&self) -> LockResult<'_> {
        self.shared.try_lock()
    }

    /// Takes the lock, waiting at most `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> LockResult<'_> {
        self.shared.lock_until(deadline_after(timeout))
    }
}

/// Python's `multiprocessing.RLock`: a recursive lock shared between processes. The thread
/// holding it may acquire it again; it is free once every guard is dropped.
///
/// ```
/// # fn main() -> mproc_ipc::Result<()> {
/// let lock = mproc_ipc::RLock::new()?;
/// let outer = lock.acquire().map_err(|e| std::io::Error::other(e.to_string()))?;
/// let inner = lock.acquire().map_err(|e| std::io::Error::other(e.to_string()))?;
/// drop((inner, outer)); // free again
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RLock {
    shared: Shared<ShmRecursiveMutex>,
}

impl RLock {
    /// A new, unlocked recursive lock.
    pub fn new() -> crate::Result<RLock> {
        Ok(RLock { shared: Shared::new()? })
    }

    /// Takes the lock (again, if this thread holds it), waiting as long as it takes.
    pub fn acquire(&self) -> LockResult<'_> {
        self.shared.lock()
    }

    /// Takes the lock if it is free or this thread's ([`LockError::Timeout`] if not).
    pub fn try_acquire(&self) -> LockResult<'_> {
        self.shared.try_lock()
    }

    /// Takes the lock, waiting at most `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> LockResult<'_> {
        self.shared.lock_until(deadline_after(timeout))
    }
}

/// A counter, its internal lock and a condvar: the state of a semaphore.
type SemState = (ShmMutex, ShmCondvar, AtomicU64, AtomicU64);

/// Python's `multiprocessing.Semaphore`: a counter that `acquire` decrements (waiting while it
/// is zero) and `release` increments.
///
/// ```
/// # fn main() -> mproc_ipc::Result<()> {
/// let sem = mproc_ipc::Semaphore::new(1)?;
/// sem.acquire();
/// assert!(!sem.try_acquire());
/// sem.release();
/// assert_eq!(sem.get_value(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Semaphore {
    shared: Shared<SemState>,
}

/// A semaphore's wire form: its region and its kind, so that a [`BoundedSemaphore`] is never
/// received as a [`Semaphore`] (whose `release` ignores the bound) nor the other way round.
/// The bound itself is in the region (`SemState`'s last field), so every process holding a
/// bounded semaphore checks the same bound.
#[derive(Serialize, Deserialize)]
#[serde(rename = "Semaphore")]
struct SemWire<S> {
    bounded: bool,
    shared: S,
}

impl Serialize for Semaphore {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SemWire { bounded: false, shared: &self.shared }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Semaphore {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        received_semaphore(deserializer, false).map(|shared| Semaphore { shared })
    }
}

impl Serialize for BoundedSemaphore {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SemWire { bounded: true, shared: &self.sem.shared }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for BoundedSemaphore {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        received_semaphore(deserializer, true).map(|shared| BoundedSemaphore { sem: Semaphore { shared } })
    }
}

/// The region of a received semaphore, if it is of the kind expected (`bounded`).
fn received_semaphore<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
    bounded: bool,
) -> Result<Shared<SemState>, D::Error> {
    let wire = SemWire::<Shared<SemState>>::deserialize(deserializer)?;
    if wire.bounded == bounded {
        return Ok(wire.shared);
    }
    let (sent, expected) = if wire.bounded {
        ("a BoundedSemaphore", "a Semaphore (which could release it past its bound)")
    } else {
        ("a Semaphore", "a BoundedSemaphore")
    };
    Err(crate::codec::refuse(format!(
        "{sent} was received as {expected}: receive each kind of semaphore as its own type"
    )))
}

impl Semaphore {
    /// A semaphore with `value` permits.
    pub fn new(value: u64) -> crate::Result<Semaphore> {
        let shared = Shared::<SemState>::new()?;
        shared.2.store(value, Ordering::SeqCst);
        shared.3.store(u64::MAX, Ordering::SeqCst);
        Ok(Semaphore { shared })
    }

    /// Takes a permit, waiting as long as it takes.
    pub fn acquire(&self) {
        self.acquire_until(None);
    }

    /// Takes a permit if one is free.
    pub fn try_acquire(&self) -> bool {
        self.acquire_until(Some(Instant::now()))
    }

    /// Takes a permit, waiting at most `timeout`; whether it got one.
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.acquire_until(deadline_after(timeout))
    }

    fn acquire_until(&self, deadline: Option<Instant>) -> bool {
        let (m, cv, value, _) = &*self.shared;
        // Fast path: a free permit, taken without the lock.
        let mut v = value.load(Ordering::SeqCst);
        while v > 0 {
            match value.compare_exchange_weak(v, v - 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return true,
                Err(now) => v = now,
            }
        }
        let mut g = match m.lock_until(deadline) {
            Ok(g) | Err(LockError::OwnerDied(g)) => g,
            Err(_) => return false,
        };
        loop {
            let v = value.load(Ordering::SeqCst);
            if v > 0 {
                if value.compare_exchange(v, v - 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    return true;
                }
                continue;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            cv.wait_until(&mut g, deadline);
        }
    }

    /// Returns a permit, waking the waiters. All of them: if only one were woken and it died
    /// before taking the permit, the others would sleep on with a permit free. A semaphore
    /// with `u64::MAX` permits keeps that many (more could never be taken anyway): its count
    /// never wraps round to 0.
    pub fn release(&self) {
        let (m, cv, value, _) = &*self.shared;
        let _ = value.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_add(1));
        // Under the lock, so a waiter between its check and its sleep sees the change.
        let _g = internal(m);
        cv.notify_all();
    }

    /// The number of free permits (Python's `get_value`).
    pub fn get_value(&self) -> u64 {
        self.shared.2.load(Ordering::SeqCst)
    }
}

/// A [`Semaphore`] whose `release` above its initial value is an error (Python's
/// `multiprocessing.BoundedSemaphore`, whose `release` raises `ValueError` then).
///
/// ```
/// # fn main() -> mproc_ipc::Result<()> {
/// let sem = mproc_ipc::BoundedSemaphore::new(1)?;
/// assert!(sem.release().is_err(), "already at its bound");
/// assert!(sem.try_acquire());
/// assert!(sem.release().is_ok());
/// # Ok(()) }
/// ```
///
/// Its kind travels with it: received as a plain [`Semaphore`] (or a `Semaphore` received as
/// a `BoundedSemaphore`), it is refused with an error. Its bound is in the shared memory, so
/// it holds in every process that holds the semaphore.
#[derive(Clone, Debug)]
pub struct BoundedSemaphore {
    sem: Semaphore,
}

/// A [`BoundedSemaphore`] released more times than acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleasedTooManyTimes;

impl std::fmt::Display for ReleasedTooManyTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("semaphore released too many times")
    }
}

impl std::error::Error for ReleasedTooManyTimes {}

impl BoundedSemaphore {
    /// A bounded semaphore with `value` permits, which is also its bound.
    pub fn new(value: u64) -> crate::Result<BoundedSemaphore> {
        let sem = Semaphore::new(value)?;
        sem.shared.3.store(value, Ordering::SeqCst);
        Ok(BoundedSemaphore { sem })
    }

    /// Takes a permit, waiting as long as it takes.
    pub fn acquire(&self) {
        self.sem.acquire();
    }

    /// Takes a permit if one is free.
    pub fn try_acquire(&self) -> bool {
        self.sem.try_acquire()
    }

    /// Takes a permit, waiting at most `timeout`; whether it got one.
    pub fn acquire_timeout(&self, timeout: Duration) -> bool {
        self.sem.acquire_timeout(timeout)
    }

    /// Returns a permit; an error (and nothing changes) if all permits are already free.
    pub fn release(&self) -> Result<(), ReleasedTooManyTimes> {
        let (m, cv, value, bound) = &*self.sem.shared;
        let bound = bound.load(Ordering::SeqCst);
        let mut v = value.load(Ordering::SeqCst);
        loop {
            if v >= bound {
                return Err(ReleasedTooManyTimes);
            }
            match value.compare_exchange_weak(v, v + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(now) => v = now,
            }
        }
        let _g = internal(m);
        cv.notify_all();
        Ok(())
    }

    /// The number of free permits.
    pub fn get_value(&self) -> u64 {
        self.sem.get_value()
    }
}

/// The state of an event: the flag (a futex word), how many threads wait on it, and how many
/// coroutines listen for its doorbell.
type EventState = (AtomicU32, AtomicU32, Listeners);

/// Python's `multiprocessing.Event`: a flag that `set` raises, `clear` lowers, and `wait`
/// waits for.
///
/// No lock at all: the flag is a futex word. `wait` sleeps only while the flag reads 0 in the
/// kernel (so a `set` between the check and the sleep is never missed), and `set` makes a
/// system call only when someone sleeps. A waiter that dies leaves nothing held. Before it
/// sleeps, `wait` looks for the flag as a queue's `get` does (busy for as long as that has
/// lately paid in this process, at most 20 µs; on one CPU by yielding it): a ping-pong
/// between two processes on two CPUs then costs no system call, and on one CPU two
/// `sched_yield`s per round trip.
///
/// A coroutine awaits it without blocking its thread (`mproc-coroutine`'s `AsyncShared`):
/// the event carries a [`Doorbell`] (an eventfd) that `set` rings when coroutines listen.
///
/// ```
/// # fn main() -> mproc_ipc::Result<()> {
/// use std::time::Duration;
/// let event = mproc_ipc::Event::new()?;
/// assert!(!event.wait_timeout(Duration::from_millis(1)));
/// event.set();
/// assert!(event.is_set() && event.wait_timeout(Duration::ZERO));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    shared: Shared<EventState>,
    bell: Doorbell,
}

impl Event {
    /// A new event, not set.
    pub fn new() -> crate::Result<Event> {
        Ok(Event { shared: Shared::new()?, bell: Doorbell::new()? })
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.shared.0.load(Ordering::SeqCst) != 0
    }

    /// Sets the flag and wakes every waiter (threads and coroutines).
    pub fn set(&self) {
        let (flag, waiters, listeners) = &*self.shared;
        if flag.swap(1, Ordering::SeqCst) == 0 {
            if waiters.load(Ordering::SeqCst) > 0 {
                let _ =
                    rustix::thread::futex::wake(flag, rustix::thread::futex::Flags::empty(), i32::MAX as u32);
            }
            self.bell.ring(listeners);
        }
    }

    /// Lowers the flag.
    pub fn clear(&self) {
        self.shared.0.store(0, Ordering::SeqCst);
    }

    /// Waits until the flag is set.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits at most `timeout` for the flag; whether it is set.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(deadline_after(timeout))
    }

    /// Waits until `deadline` (`None`: as long as it takes) for the flag; whether it is set.
    pub fn wait_until(&self, deadline: Option<Instant>) -> bool {
        use rustix::thread::futex;
        let (flag, waiters, _) = &*self.shared;
        if flag.load(Ordering::SeqCst) != 0 {
            return true;
        }
        // A look first (only the flag: a waiter that looks is not counted, and `set` wakes
        // no one for it); the loop below is what guarantees the wake-up. Acquire: what was
        // written before the `set` (its swap is SeqCst) is seen after the `wait`.
        if deadline.is_none_or(|d| d > Instant::now())
            && crate::spin::spin_until(|| flag.load(Ordering::Acquire) != 0)
        {
            return true;
        }
        loop {
            if flag.load(Ordering::SeqCst) != 0 {
                return true;
            }
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if timeout.is_some_and(|t| t.is_zero()) {
                return false;
            }
            let ts =
                timeout.map(|t| futex::Timespec { tv_sec: t.as_secs() as _, tv_nsec: t.subsec_nanos() as _ });
            waiters.fetch_add(1, Ordering::SeqCst);
            // Sleeps only if the flag is still 0: a `set` after the check above wakes it.
            let _ = futex::wait(flag, futex::Flags::empty(), 0, ts.as_ref());
            waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Awaitable for Event {
    fn doorbell(&self) -> &Doorbell {
        &self.bell
    }

    fn listeners(&self) -> &Listeners {
        &self.shared.2
    }
}

/// Python's `multiprocessing.Condition` (with its default kind of lock made non-recursive):
/// a lock and a condition variable. `acquire` gives a [`ConditionGuard`], which waits and
/// notifies.
///
/// ```
/// # fn main() -> mproc_ipc::Result<()> {
/// use std::time::Duration;
/// let cond = mproc_ipc::Condition::new()?;
/// let mut guard = cond.acquire().map_err(|e| std::io::Error::other(e.to_string()))?;
/// guard.notify_all();
/// assert_eq!(guard.wait_timeout(Duration::from_millis(1)).ok(), Some(false), "no one notified");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Condition {
    shared: Shared<(ShmMutex, ShmCondvar)>,
}

/// A held [`Condition`]: wait and notify through it; the lock is released when it drops.
#[derive(Debug)]
pub struct ConditionGuard<'a> {
    guard: ShmGuard<'a>,
    cv: &'a ShmCondvar,
}

/// What [`Condition::acquire`] returns.
pub type ConditionResult<'a> = Result<ConditionGuard<'a>, LockError<ConditionGuard<'a>>>;

impl Condition {
    /// A new condition with its own lock.
    pub fn new() -> crate::Result<Condition> {
        Ok(Condition { shared: Shared::new()? })
    }

    fn wrap<'a>(&'a self, r: LockResult<'a>) -> ConditionResult<'a> {
        let cv = &self.shared.1;
        r.map(|guard| ConditionGuard { guard, cv }).map_err(|e| e.map(|guard| ConditionGuard { guard, cv }))
    }

    /// Takes the lock, waiting as long as it takes.
    pub fn acquire(&self) -> ConditionResult<'_> {
        self.wrap(self.shared.0.lock())
    }

    /// Takes the lock if it is free.
    pub fn try_acquire(&self) -> ConditionResult<'_> {
        self.wrap(self.shared.0.try_lock())
    }

    /// Takes the lock, waiting at most `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> ConditionResult<'_> {
        self.wrap(self.shared.0.lock_until(deadline_after(timeout)))
    }
}

impl ConditionGuard<'_> {
    /// Releases the lock, waits for a notify (or a spurious wake-up), takes the lock again.
    /// `Err(OwnerDied)` if, meanwhile, a holder of the lock died (the lock is held again).
    pub fn wait(&mut self) -> Result<(), LockError<()>> {
        self.wait_until(None).map(drop)
    }

    /// As [`wait`](Self::wait), at most `timeout`: `Ok(false)` if it timed out.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<bool, LockError<()>> {
        self.wait_until(deadline_after(timeout))
    }

    fn wait_until(&mut self, deadline: Option<Instant>) -> Result<bool, LockError<()>> {
        let out = self.cv.wait_until(&mut self.guard, deadline);
        if out.owner_died {
            return Err(LockError::OwnerDied(()));
        }
        Ok(!out.timed_out)
    }

    /// Waits until `predicate` holds, at most `timeout` (`None`: as long as it takes);
    /// returns the predicate's last value (Python's `wait_for`).
    pub fn wait_for(
        &mut self,
        mut predicate: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<bool, LockError<()>> {
        let deadline = timeout.and_then(deadline_after);
        loop {
            if predicate() {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            self.wait_until(deadline)?;
        }
    }

    /// Wakes one waiter (Python's `notify()`).
    pub fn notify(&self) {
        self.cv.notify_one();
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        self.cv.notify_all();
    }
}
