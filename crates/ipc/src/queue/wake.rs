//! The queue's sleep/wake protocol: how a `get` waits for an item and a bounded `put` for
//! room, and how the other side's commit wakes them (see [`sleep`] and [`notify`] for the
//! argument).
//!
//! Apart from the data path ([`Ring`](super::ring::Ring)'s `place`, `take` and `commit`), so
//! that the loom model (`wake/loom_tests.rs`, run by `cargo xtask test` with `--cfg loom`)
//! runs this very code: it is generic over the words ([`Word`]: the queue's shared
//! `AtomicU64`s, or loom's) and the condition variable ([`Sleep`]: the queue's
//! [`ShmCondvar`], or a model of it and of the futex). The model checks every interleaving
//! (up to a preemption bound) of consumers and producers on a small queue, and that no
//! sleeper stays asleep while what it waits for is there and no wake-up is on its way to it
//! (which here only the [`SLICE`] would end).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::ring::{GETS, HINT_GETS, HINT_PUTS, PUTS, SLEEP_GET, SLEEP_PUT, WAKING_GET, WAKING_PUT};
use crate::shm::{ShmCondvar, ShmGuard};

/// How long a sleeping `get`/`put`/`join` sleeps before it looks again, even unwoken: a
/// process woken by a notify and killed before it took the item leaves the others asleep
/// with an item there; they find it within this time.
pub(super) const SLICE: Duration = Duration::from_millis(50);

/// The ordering of a put's commit (the store of `PUTS`): `SeqCst`, ordered before the loads
/// of the sleeper counts after it (see [`sleep`]).
pub(super) const PUT_COMMIT: Ordering = Ordering::SeqCst;

/// The ordering of a get's commit (the store of `GETS`): `SeqCst` in a bounded queue, ordered
/// before the load of the sleeping puts' count; in an unbounded one no put waits for it.
pub(super) fn get_commit(bounded: bool) -> Ordering {
    if bounded { Ordering::SeqCst } else { Ordering::Release }
}

/// A word of the queue's header: the queue's `AtomicU64`, or loom's in the model.
/// The operations are `AtomicU64`'s.
pub(super) trait Word {
    /// `AtomicU64::load`.
    fn load(&self, order: Ordering) -> u64;
    /// `AtomicU64::store`.
    fn store(&self, value: u64, order: Ordering);
    /// `AtomicU64::fetch_add`.
    fn fetch_add(&self, value: u64, order: Ordering) -> u64;
    /// `AtomicU64::fetch_sub`.
    fn fetch_sub(&self, value: u64, order: Ordering) -> u64;
    /// `AtomicU64::swap`.
    fn swap(&self, value: u64, order: Ordering) -> u64;
}

impl Word for AtomicU64 {
    #[inline(always)]
    fn load(&self, order: Ordering) -> u64 {
        AtomicU64::load(self, order)
    }

    #[inline(always)]
    fn store(&self, value: u64, order: Ordering) {
        AtomicU64::store(self, value, order);
    }

    #[inline(always)]
    fn fetch_add(&self, value: u64, order: Ordering) -> u64 {
        AtomicU64::fetch_add(self, value, order)
    }

    #[inline(always)]
    fn fetch_sub(&self, value: u64, order: Ordering) -> u64 {
        AtomicU64::fetch_sub(self, value, order)
    }

    #[inline(always)]
    fn swap(&self, value: u64, order: Ordering) -> u64 {
        AtomicU64::swap(self, value, order)
    }
}

/// A condition variable that a side sleeps on holding its lock (`G`, its guard): the queue's
/// [`ShmCondvar`], or the model's.
pub(super) trait Sleep<G> {
    /// The notify count (see [`ShmCondvar::sequence`]).
    fn sequence(&self) -> u32;
    /// Unlocks, sleeps while no notify came since `seq` (at most [`SLICE`] and until
    /// `deadline`), locks again.
    fn wait_since(&self, guard: &mut G, seq: u32, deadline: Option<Instant>);
    /// Wakes one sleeper (if any); moves the notify count.
    fn notify_one(&self);
    /// Wakes every sleeper (if any); moves the notify count.
    fn notify_all(&self);
    /// Whether a sleeper clears the wake-up-on-its-way flag as it comes (always, but in the
    /// model test that shows the model finds the lost wake-up this clear fixed).
    #[inline(always)]
    fn clears_flag_on_arrival(&self) -> bool {
        true
    }
}

impl<'g> Sleep<ShmGuard<'g>> for ShmCondvar {
    #[inline(always)]
    fn sequence(&self) -> u32 {
        ShmCondvar::sequence(self)
    }

    #[inline(always)]
    fn wait_since(&self, guard: &mut ShmGuard<'g>, seq: u32, deadline: Option<Instant>) {
        ShmCondvar::wait_since(self, guard, seq, deadline, SLICE);
    }

    #[inline(always)]
    fn notify_one(&self) {
        ShmCondvar::notify_one(self);
    }

    #[inline(always)]
    fn notify_all(&self) {
        ShmCondvar::notify_all(self);
    }
}

/// The queue's words (word `i` of the layout in `ring.rs` is `self.0[i]`).
pub(super) struct Words<'a, W>(pub(super) &'a [W]);

impl<W: Word> Words<'_, W> {
    #[inline(always)]
    fn w(&self, i: usize) -> &W {
        &self.0[i]
    }
}

/// Why a wait ended without what it waited for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stop {
    /// The deadline passed.
    Timeout,
    /// The commit words are impossible (`GETS` past `PUTS`).
    Corrupt,
}

/// Items in the queue at one moment during the call: `GETS`, `PUTS`, `GETS` again, until
/// the two reads of `GETS` agree (it only grows, so it did not move in between, and `PUTS`
/// minus it was the count when `PUTS` was read).
pub(super) fn qsize<W: Word>(words: &Words<'_, W>) -> u64 {
    loop {
        let gets = words.w(GETS).load(Ordering::SeqCst);
        let puts = words.w(PUTS).load(Ordering::SeqCst);
        if words.w(GETS).load(Ordering::SeqCst) == gets {
            return puts.saturating_sub(gets);
        }
        std::hint::spin_loop();
    }
}

/// Sleeps on `cond` (holding the lock `guard` is of) until notified or `deadline` (at most
/// [`SLICE`]), unless `ready` is true once counted as a sleeper (`sleepers`, the index of the
/// count). The other side changes what `ready` reads without this lock, so the order is what
/// keeps a wake-up from being lost: count in (`sleepers`), read the notify count, look
/// (`ready`), sleep only while that count is unchanged. The other side stores its commit
/// word, then loads the count (both `SeqCst`): it sees this sleeper (and notifies, which
/// moves the notify count), or this look sees its commit.
pub(super) fn sleep<G, C: Sleep<G>, W: Word>(
    words: &Words<'_, W>,
    guard: &mut G,
    cond: &C,
    sleepers: usize,
    deadline: Option<Instant>,
    ready: impl Fn() -> bool,
) {
    let count = words.w(sleepers);
    count.fetch_add(1, Ordering::SeqCst);
    let seq = cond.sequence();
    // A wake-up flagged as on its way is not for this sleeper, which has just come: the
    // flag may even be stale (set by a commit that found a sleeper counted who then left
    // without sleeping), and left set it would keep every commit from waking this one,
    // which would sleep out its slice with an item there. Cleared, the next commit wakes
    // (at worst one wake too many for an earlier sleeper). A flag set after this store
    // was set by a notify that moves the count after `seq` was read: the wait below
    // returns at once.
    if let Some(waking) = waking_of(sleepers)
        && cond.clears_flag_on_arrival()
    {
        words.w(waking).store(0, Ordering::SeqCst);
    }
    if !ready() {
        cond.wait_since(guard, seq, deadline);
    }
    // Awake (notified or not): the wake-up on its way, if any, may have been this one, so
    // the next commit that finds sleepers wakes one again (at worst one wake too many).
    // A sleeper killed between its wake-up and here leaves the flag set: the others
    // clear it when they come, and their slice ends their sleep.
    if let Some(waking) = waking_of(sleepers) {
        words.w(waking).store(0, Ordering::SeqCst);
    }
    count.fetch_sub(1, Ordering::SeqCst);
}

/// Wakes the sleepers on `cond` (all of them) or one of them, if any sleep. One at a
/// time: while a wake-up is on its way (the `WAKING_` flag, cleared by the sleeper when it
/// wakes, and by every sleeper as it comes, whose wake-up it cannot be), a commit wakes no
/// other, so a producer does not pay a `futex` wake for every item while its consumer gets
/// to a CPU; the woken one, after its own commit, wakes the next if what they wait for is
/// still there (see [`after_get`] and [`after_put`]). The caller's commit is ordered before
/// this load (a `SeqCst` store or fence).
pub(super) fn notify<G, C: Sleep<G>, W: Word>(words: &Words<'_, W>, cond: &C, sleepers: usize, all: bool) {
    if words.w(sleepers).load(Ordering::SeqCst) == 0 {
        return;
    }
    match waking_of(sleepers) {
        _ if all => cond.notify_all(),
        Some(waking) => {
            let flag = words.w(waking);
            if flag.load(Ordering::SeqCst) == 0 && flag.swap(1, Ordering::SeqCst) == 0 {
                cond.notify_one();
            }
        }
        None => cond.notify_one(),
    }
}

/// A get's wait for an item, holding the get lock (`guard`): `(gets, puts)`, this side's
/// commit word and a `PUTS` past it. The consumers' hint of `PUTS` first; `PUTS` itself
/// (and the hint moved up to it) only when the hint says none; then sleeps on `cond` (the
/// "not empty" condvar) until `PUTS` moves.
pub(super) fn until_item<G, C: Sleep<G>, W: Word>(
    words: &Words<'_, W>,
    guard: &mut G,
    cond: &C,
    deadline: Option<Instant>,
) -> Result<(u64, u64), Stop> {
    let mut gets = words.w(GETS).load(Ordering::Relaxed);
    let mut puts = words.w(HINT_PUTS).load(Ordering::Relaxed);
    while puts <= gets {
        // Read again after a sleep: other consumers got while the lock was free.
        gets = words.w(GETS).load(Ordering::Relaxed);
        puts = words.w(PUTS).load(Ordering::SeqCst);
        if puts < gets {
            return Err(Stop::Corrupt);
        }
        words.w(HINT_PUTS).store(puts, Ordering::Relaxed);
        if puts > gets {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Stop::Timeout);
        }
        let ready = || words.w(PUTS).load(Ordering::SeqCst) > gets;
        sleep(words, guard, cond, SLEEP_GET, deadline, ready);
    }
    Ok((gets, puts))
}

/// After a get's commit of item `gets` (seen with `PUTS` at `puts`), the get lock released:
/// wakes the next sleeping get if items are left, and in a bounded queue a sleeping put.
pub(super) fn after_get<G, H, C: Sleep<G>, D: Sleep<H>, W: Word>(
    words: &Words<'_, W>,
    not_empty: &C,
    not_full: &D,
    gets: u64,
    puts: u64,
    bounded: bool,
) {
    if puts > gets + 1 {
        // Items left: the next sleeping get may go on too.
        notify(words, not_empty, SLEEP_GET, false);
    }
    if bounded {
        notify(words, not_full, SLEEP_PUT, false);
    }
}

/// A bounded put's wait for room (`maxsize` items at most), holding the put lock (`guard`):
/// this side's commit word (`PUTS`). The producers' hint of `GETS` first; `GETS` itself (and
/// the hint moved up to it) only when the hint says full; then sleeps on `cond` (the "not
/// full" condvar) until `GETS` moves. An unbounded queue (`maxsize` `u64::MAX`) never waits.
pub(super) fn until_room<G, C: Sleep<G>, W: Word>(
    words: &Words<'_, W>,
    maxsize: u64,
    guard: &mut G,
    cond: &C,
    deadline: Option<Instant>,
) -> Result<u64, Stop> {
    let mut puts = words.w(PUTS).load(Ordering::Relaxed);
    if maxsize == u64::MAX {
        return Ok(puts);
    }
    loop {
        // Read again after a sleep: other producers put while the lock was free.
        puts = words.w(PUTS).load(Ordering::Relaxed);
        if puts.wrapping_sub(words.w(HINT_GETS).load(Ordering::Relaxed)) < maxsize {
            return Ok(puts);
        }
        let gets = words.w(GETS).load(Ordering::SeqCst);
        if gets > puts {
            return Err(Stop::Corrupt);
        }
        words.w(HINT_GETS).store(gets, Ordering::Relaxed);
        if puts - gets < maxsize {
            return Ok(puts);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Stop::Timeout);
        }
        let room = || puts - words.w(GETS).load(Ordering::SeqCst).min(puts) < maxsize;
        sleep(words, guard, cond, SLEEP_PUT, deadline, room);
    }
}

/// After a put's commit, the put lock released: wakes a sleeping get, and in a bounded queue
/// (`maxsize` not `u64::MAX`) with room left the next sleeping put.
pub(super) fn after_put<G, H, C: Sleep<G>, D: Sleep<H>, W: Word>(
    words: &Words<'_, W>,
    not_empty: &C,
    not_full: &D,
    maxsize: u64,
) {
    notify(words, not_empty, SLEEP_GET, false);
    if maxsize != u64::MAX && words.w(SLEEP_PUT).load(Ordering::SeqCst) > 0 && qsize(words) < maxsize {
        // Room left: the next sleeping put may go on too.
        notify(words, not_full, SLEEP_PUT, false);
    }
}

/// The flag that says a wake-up of `sleepers` is on its way (`join`'s wake all: none).
fn waking_of(sleepers: usize) -> Option<usize> {
    match sleepers {
        SLEEP_GET => Some(WAKING_GET),
        SLEEP_PUT => Some(WAKING_PUT),
        _ => None,
    }
}

#[cfg(loom)]
impl Word for loom::sync::atomic::AtomicU64 {
    // loom takes a `SeqCst` access for an `AcqRel` one (its documented limit), so it would
    // find store buffering between the `SeqCst` store and load pairs the protocol rests on,
    // which `SeqCst` forbids. It does check `SeqCst` fences: a `SeqCst` access is modelled as
    // the access with a fence after a store and before a load (both around a read-modify-
    // write), which is how x86 compiles them. Other orderings are loom's own.
    fn load(&self, order: Ordering) -> u64 {
        if order == Ordering::SeqCst {
            loom::sync::atomic::fence(Ordering::SeqCst);
        }
        loom::sync::atomic::AtomicU64::load(self, order)
    }

    fn store(&self, value: u64, order: Ordering) {
        loom::sync::atomic::AtomicU64::store(self, value, order);
        if order == Ordering::SeqCst {
            loom::sync::atomic::fence(Ordering::SeqCst);
        }
    }

    fn fetch_add(&self, value: u64, order: Ordering) -> u64 {
        sc_rmw(order, || loom::sync::atomic::AtomicU64::fetch_add(self, value, order))
    }

    fn fetch_sub(&self, value: u64, order: Ordering) -> u64 {
        sc_rmw(order, || loom::sync::atomic::AtomicU64::fetch_sub(self, value, order))
    }

    fn swap(&self, value: u64, order: Ordering) -> u64 {
        sc_rmw(order, || loom::sync::atomic::AtomicU64::swap(self, value, order))
    }
}

/// A read-modify-write as loom should take it: between `SeqCst` fences when it is `SeqCst`.
#[cfg(loom)]
pub(super) fn sc_rmw<T>(order: Ordering, rmw: impl FnOnce() -> T) -> T {
    let sc = order == Ordering::SeqCst;
    if sc {
        loom::sync::atomic::fence(Ordering::SeqCst);
    }
    let out = rmw();
    if sc {
        loom::sync::atomic::fence(Ordering::SeqCst);
    }
    out
}

#[cfg(all(test, loom))]
mod loom_tests;
