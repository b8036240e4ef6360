//! The untyped queue in shared memory: its layout, the two commit protocols, and the waits.
//!
//! See the [`queue`](crate::queue) module doc for the design; this file is its mechanism.

use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use crate::doorbell::{Doorbell, Listeners};
use crate::error::{Error, Result};
use crate::shm::{LockError, Shared, ShmCondvar, ShmGuard, ShmMutex};
use crate::spin::{several_cpus, spin_until};
use crate::sys::shm::data_offset;

use super::wake::{self, Stop, Words};

/// The header of a queue's region: the locks (see [`PUT_LOCK`]), three condition variables
/// (not empty, not full, all done), the words, and the count of coroutines listening for the
/// doorbell (read by every put: it must not share a line with a lock).
pub(crate) type Header = ([ShmMutex; 9], ShmCondvar, ShmCondvar, ShmCondvar, [AtomicU64; WORDS], Listeners);

/// Producers serialise on this lock (an index in the header's mutexes, 40 bytes each): the
/// mutexes around the put and get locks are never taken, and at least 64 bytes wide, so
/// each of the two has its cache lines to itself, whatever lies beside the array.
const PUT_LOCK: usize = 2;
/// `join` sleeps holding this one (rarely taken: it may share a line with another lock).
const JOIN_LOCK: usize = 4;
/// Consumers serialise on this one.
const GET_LOCK: usize = 6;

/// Words in a cache line.
const LINE: usize = 8;
/// Seven lines of words, plus one line of slack: the lines start at the first word on a
/// 64-byte boundary (the same in every process: mappings are page-aligned).
const WORDS: usize = 8 * LINE;

// Word indexes, from the first line-aligned word. Each line is written by one side only.
// Line 0, written once: the queue's constants.
const MAGIC: usize = 0;
const SMALL: usize = 1; // the hot ring's size in bytes
const MAXSIZE: usize = 2; // the most items, u64::MAX for none
// Line 1, the producers' (under the put lock): their commit word and state slots.
pub(super) const PUTS: usize = LINE; // items ever put: the producers' commit word
const TAILS: usize = LINE + 1; // two slots of END_WORDS words: where the next record goes
// Line 2, the producers' hints: what they last read of the consumers' side (lower bounds).
const HINT_HEAD: usize = 2 * LINE; // the consumers' ring position
const HINT_FREED: usize = 2 * LINE + 1; // the consumers' FREED
pub(super) const HINT_GETS: usize = 2 * LINE + 2; // GETS
// Line 3, the consumers' (under the get lock): their commit word and state slots.
pub(super) const GETS: usize = 3 * LINE; // items ever got: the consumers' commit word
const HEADS: usize = 3 * LINE + 1; // two slots of END_WORDS words: the next record to read
const FREED: usize = 3 * LINE + 7; // the spill position below which whole pages are given back
// Line 4, the consumers' hints: PUTS, and the producers' spill tail, as they last read them
// (lower bounds).
pub(super) const HINT_PUTS: usize = 4 * LINE;
const HINT_TAIL: usize = 4 * LINE + 1;
// Line 5, the sleepers: written only around a sleep and a wake-up.
pub(super) const SLEEP_GET: usize = 5 * LINE; // processes asleep in get (a count only ever too high, never low)
pub(super) const SLEEP_PUT: usize = 5 * LINE + 1; // asleep in put
pub(super) const SLEEP_JOIN: usize = 5 * LINE + 2; // asleep in join
pub(super) const WAKING_GET: usize = 5 * LINE + 3; // 1: a get's wake-up is on its way (notified, not yet awake)
pub(super) const WAKING_PUT: usize = 5 * LINE + 4; // 1: a put's wake-up is on its way
// Line 6: `task_done` calls ever made (items put minus these are unfinished).
const DONE: usize = 6 * LINE;

/// Words of one side's state slot (see [`Ends`]).
const END_WORDS: usize = 3;

const MAGIC_VALUE: u64 = 0x6d70_7271_7565_7503; // "mprque" v3

/// A record's header word above this is a marker, not a length.
/// `WRAP`: the rest of this cycle of the ring (or of the spill) is padding; go on at the
/// start of the next.
const WRAP: u64 = u64::MAX;
/// In the ring: the next record is in the spill, at the reader's spill position.
const JUMP: u64 = u64::MAX - 1;
/// In the spill: the next record is in the ring, at the reader's ring position.
const RETURN: u64 = u64::MAX - 2;
const MAX_LEN: u64 = 1 << 62;
/// A position in either stream is below this (see [`Ends::is_possible`]).
const MAX_POSITION: u64 = 1 << 62;

/// Bytes of address space (sparse: only written pages use memory) past the hot ring: the
/// spill, where records go that the ring has no room for.
pub(crate) const VIRTUAL_BYTES: u64 = 8 << 30;
const PAGE: u64 = 4096;
/// The spill is given back to the system this many bytes at a time (see `give_back`).
const PUNCH_BATCH: u64 = 16 * PAGE;

/// A consumer that finds fewer items than this committed past the ones it knew of, none of
/// them waited for, is close behind a producer that is putting: see [`Ring::let_a_run_come`].
const RUN: u64 = 16;

/// How long a consumer close behind its producer lets it put before it takes (a few puts).
const RUN_WAIT: Duration = Duration::from_nanos(600);

/// How many times `lock` tries the mutex (spinning between tries) before it sleeps on it:
/// glibc's robust mutexes sleep at once on contention, where the holder only ever holds the
/// lock for a copy and a commit.
const LOCK_TRIES: u32 = 64;

/// One side's state: positions in two byte streams that only grow. The ring stream is at
/// `position % small` in the data, the spill stream at `small + position % spill`. For the
/// producers (`TAILS`) it is where the next record goes; for the consumers (`HEADS`) where
/// the next one to read starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Ends {
    ring: u64,
    spill: u64,
    /// 1 while this side is in the spill stream (after a `JUMP`, before a `RETURN`).
    in_spill: u64,
}

impl Ends {
    fn to_words(self) -> [u64; END_WORDS] {
        [self.ring, self.spill, self.in_spill]
    }

    fn from_words(w: [u64; END_WORDS]) -> Ends {
        Ends { ring: w[0], spill: w[1], in_spill: w[2] }
    }

    /// Whether commits can have made these: positions below 2^62 (bytes ever written; at
    /// 10 GB/s a queue takes 14 years to get there), so no sum overflows.
    fn is_possible(&self) -> bool {
        self.ring < MAX_POSITION && self.spill < MAX_POSITION && self.in_spill <= 1
    }
}

/// Where a process may be killed on purpose, in tests: `crash_at` arms one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueCrash {
    /// In `put`, holding the lock, nothing written yet.
    PutLocked,
    /// In `put`, half of the item's bytes written.
    PutHalfWritten,
    /// In `put`, the item written, the new state half written.
    PutStateHalfWritten,
    /// In `put`, right after the commit, before the unlock.
    PutCommitted,
    /// In `get`, holding the lock, nothing read yet.
    GetLocked,
    /// In `get`, the item copied out, the new state half written.
    GetStateHalfWritten,
    /// In `get`, right after the commit, before the unlock.
    GetCommitted,
}

impl QueueCrash {
    /// Every crash point.
    pub const ALL: [QueueCrash; 7] = [
        QueueCrash::PutLocked,
        QueueCrash::PutHalfWritten,
        QueueCrash::PutStateHalfWritten,
        QueueCrash::PutCommitted,
        QueueCrash::GetLocked,
        QueueCrash::GetStateHalfWritten,
        QueueCrash::GetCommitted,
    ];

    /// A point inside `put` (else inside `get`).
    pub fn in_put(self) -> bool {
        matches!(
            self,
            QueueCrash::PutLocked
                | QueueCrash::PutHalfWritten
                | QueueCrash::PutStateHalfWritten
                | QueueCrash::PutCommitted
        )
    }

    /// A point after the operation's commit: its effect stays.
    pub fn committed(self) -> bool {
        matches!(self, QueueCrash::PutCommitted | QueueCrash::GetCommitted)
    }
}

static CRASH_AT: AtomicU64 = AtomicU64::new(0);

/// Arms `point`: this process kills itself with `SIGKILL` when a queue operation reaches it.
pub(crate) fn crash_at(point: QueueCrash) {
    let index = QueueCrash::ALL.iter().position(|p| *p == point).unwrap_or(0);
    CRASH_AT.store(index as u64 + 1, Ordering::SeqCst);
}

#[inline(always)]
fn crash_point(point: QueueCrash) {
    if CRASH_AT.load(Ordering::Relaxed) != 0 {
        crash_slow(point);
    }
}

#[cold]
fn crash_slow(point: QueueCrash) {
    let armed = CRASH_AT.load(Ordering::SeqCst) as usize;
    if armed > 0 && QueueCrash::ALL[armed - 1] == point {
        let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// A queue's shared region and this process's view of it.
#[derive(Clone)]
pub(crate) struct Ring {
    shared: Shared<Header>,
    /// Rung after every commit that may let a waiter go on (a put; a get of a bounded
    /// queue), when coroutines listen (the count in the header).
    bell: Doorbell,
    /// The hot ring's size (bytes).
    small: u64,
    /// The spill's size (bytes): the sparse space past the ring.
    spill: u64,
    maxsize: u64,
    /// The index of the first word on a cache line: word `i` of the layout is `base + i`.
    base: usize,
}

fn round_up(x: u64) -> u64 {
    x.next_multiple_of(8)
}

/// The start of the cycle after the one `at` is in (cycles of `size` bytes).
fn next_cycle(at: u64, size: u64) -> u64 {
    (at / size + 1) * size
}

/// Where a record of `n` bytes (its header included) goes in a stream of cycles of `size`
/// bytes whose tail is at `tail`: there, or at the next cycle when it would cross the end.
fn fit(tail: u64, n: u64, size: u64) -> u64 {
    if tail % size + n > size { next_cycle(tail, size) } else { tail }
}

impl Ring {
    /// A new empty queue: a hot ring of `small` bytes (a multiple of the page size), at most
    /// `maxsize` items (`u64::MAX`: no bound).
    pub(crate) fn new(small: u64, maxsize: u64) -> Result<Ring> {
        let small = small.max(PAGE).next_multiple_of(PAGE);
        let full = small + VIRTUAL_BYTES.max(small);
        // The memfd may not grow past this process's file size limit: past it, the kernel
        // kills the process with `SIGXFSZ` rather than fail the call. So the sparse space
        // is cut to what the limit allows (whole pages past the ring, at least one).
        let header = data_offset::<Header>() as u64;
        let allowed = file_size_limit().saturating_sub(header) / PAGE * PAGE;
        if allowed <= small {
            return Err(Error::Io(std::io::Error::other(format!(
                "a queue with a {small}-byte ring needs a memfd of more than {} bytes, past this \
                 process's file size limit (ulimit -f)",
                header + small
            ))));
        }
        let data_len = full.min(allowed);
        let shared = Shared::<Header>::with_data(data_len as usize)?;
        let bell = Doorbell::new()?;
        let base = line_start(&shared);
        let ring = Ring { shared, bell, small, spill: data_len - small, maxsize, base };
        ring.w(SMALL).store(small, Ordering::Relaxed);
        ring.w(MAXSIZE).store(maxsize, Ordering::Relaxed);
        ring.w(MAGIC).store(MAGIC_VALUE, Ordering::Release);
        Ok(ring)
    }

    /// A queue another process made (its region and its doorbell).
    pub(crate) fn attach(shared: Shared<Header>, bell: Doorbell) -> std::result::Result<Ring, &'static str> {
        let base = line_start(&shared);
        let word = |i: usize| shared.4[base + i].load(Ordering::Acquire);
        if word(MAGIC) != MAGIC_VALUE {
            return Err("the shared region is not a queue");
        }
        let (small, maxsize) = (word(SMALL), word(MAXSIZE));
        let data_len = shared.data_len() as u64;
        if small < PAGE || !small.is_multiple_of(PAGE) || small >= data_len {
            return Err("the queue's header is corrupt");
        }
        Ok(Ring { spill: data_len - small, shared, bell, small, maxsize, base })
    }

    pub(crate) fn shared(&self) -> &Shared<Header> {
        &self.shared
    }

    pub(crate) fn doorbell(&self) -> &Doorbell {
        &self.bell
    }

    pub(crate) fn listeners(&self) -> &Listeners {
        &self.shared.5
    }

    /// Word `i` of the layout.
    #[inline(always)]
    fn w(&self, i: usize) -> &AtomicU64 {
        &self.shared.4[self.base + i]
    }

    /// The most items, `None` for no bound.
    pub(crate) fn maxsize(&self) -> Option<u64> {
        (self.maxsize != u64::MAX).then_some(self.maxsize)
    }

    fn bounded(&self) -> bool {
        self.maxsize != u64::MAX
    }

    /// Items in the queue at one moment during the call (see [`wake::qsize`]).
    pub(crate) fn qsize(&self) -> u64 {
        wake::qsize(&self.words())
    }

    /// Items put and not yet `task_done`, at one moment: `DONE` read first (it never passes
    /// `PUTS`, and only grows, so a `DONE` equal to a later `PUTS` was equal to it then).
    fn unfinished(&self) -> u64 {
        let done = self.w(DONE).load(Ordering::SeqCst);
        self.w(PUTS).load(Ordering::SeqCst).saturating_sub(done)
    }

    /// Whether an item may be there, without a lock: the consumers' hint of `PUTS` first
    /// (their own line), `PUTS` itself only when the hint says none.
    fn maybe_item(&self) -> bool {
        let gets = self.w(GETS).load(Ordering::Relaxed);
        self.w(HINT_PUTS).load(Ordering::Relaxed) > gets || self.w(PUTS).load(Ordering::Acquire) > gets
    }

    /// Reads the state slot that commit `commit` names (a slot pair at `slots`).
    fn read_slot(&self, slots: usize, commit: u64) -> Ends {
        let at = slots + (commit & 1) as usize * END_WORDS;
        Ends::from_words(std::array::from_fn(|i| self.w(at + i).load(Ordering::Relaxed)))
    }

    /// The other side's state as last committed, without its lock: a seqlock read of the
    /// slot its commit word names (a commit writes only the other slot, and a reader that
    /// saw any of its stores sees the commit word move, and reads again).
    fn read_other(&self, commit_word: usize, slots: usize) -> (u64, Ends) {
        loop {
            let commit = self.w(commit_word).load(Ordering::Acquire);
            let ends = self.read_slot(slots, commit);
            fence(Ordering::Acquire);
            if self.w(commit_word).load(Ordering::Relaxed) == commit {
                return (commit, ends);
            }
            std::hint::spin_loop();
        }
    }

    /// Publishes `ends` as one side's new state with one more item put (got): written to the
    /// slot not in use, then made current by one store of the side's commit word. Under the
    /// side's lock.
    fn commit(
        &self,
        commit_word: usize,
        slots: usize,
        commit: u64,
        ends: Ends,
        half: QueueCrash,
        order: Ordering,
    ) {
        let next = commit.wrapping_add(1);
        let at = slots + (next & 1) as usize * END_WORDS;
        // A reader that sees any of the stores below also sees a commit word past the one it
        // started from (see `read_other`), and retries.
        fence(Ordering::Release);
        for (i, w) in ends.to_words().into_iter().enumerate() {
            self.w(at + i).store(w, Ordering::Relaxed);
            if i == 0 {
                crash_point(half);
            }
        }
        self.w(commit_word).store(next, order);
    }

    /// Takes lock `which` (a dead holder's lock too: the side's state needs no repair, since
    /// nothing a holder writes counts before its commit). Without a deadline: the lock is
    /// only ever held for a copy and a commit (never across a wait), and a dead holder's is
    /// handed over at once.
    fn lock(&self, which: usize) -> Result<ShmGuard<'_>> {
        let mutex = &self.shared.0[which];
        let mut taken = mutex.try_lock();
        for _ in 0..LOCK_TRIES {
            if !matches!(taken, Err(LockError::Timeout)) {
                break;
            }
            for _ in 0..8 {
                std::hint::spin_loop();
            }
            taken = mutex.try_lock();
        }
        if matches!(taken, Err(LockError::Timeout)) {
            taken = mutex.lock_until(None);
        }
        match taken {
            Ok(guard) | Err(LockError::OwnerDied(guard)) => Ok(guard),
            Err(LockError::Timeout) => Err(Error::Timeout),
            Err(LockError::Io(e)) => Err(Error::Io(e)),
        }
    }

    /// The header's words, from the first on a cache line, for the sleep/wake protocol.
    #[inline(always)]
    fn words(&self) -> Words<'_, AtomicU64> {
        Words(&self.shared.4[self.base..])
    }

    /// Sleeps on `cond` (see [`wake::sleep`]).
    fn sleep(
        &self,
        guard: &mut ShmGuard<'_>,
        cond: &ShmCondvar,
        sleepers: usize,
        deadline: Option<Instant>,
        ready: impl Fn() -> bool,
    ) {
        wake::sleep(&self.words(), guard, cond, sleepers, deadline, ready);
    }

    /// Wakes the sleepers on `cond` (see [`wake::notify`]).
    fn notify(&self, cond: &ShmCondvar, sleepers: usize, all: bool) {
        wake::notify(&self.words(), cond, sleepers, all);
    }

    /// Puts one record of `payload`. `deadline`: `Some(now)` never waits, `None` waits as long
    /// as it takes. `Ok(false)`: the queue stayed full until `deadline` when `timeout_is_error`
    /// is false; `Err(Timeout)` when it is true.
    pub(crate) fn put(
        &self,
        payload: &[u8],
        deadline: Option<Instant>,
        timeout_is_error: bool,
    ) -> Result<bool> {
        let bounded = self.bounded();
        // An unbounded queue is never full: no look before the lock; a bounded one's hint of
        // `GETS` (the producers' line) first, the consumers' line only when it says full.
        let hint =
            self.w(PUTS).load(Ordering::Relaxed).saturating_sub(self.w(HINT_GETS).load(Ordering::Relaxed));
        if bounded
            && hint >= self.maxsize
            && self.qsize() >= self.maxsize
            && deadline.is_none_or(|d| d > Instant::now())
        {
            spin_until(|| self.qsize() < self.maxsize);
        }
        let mut guard = self.lock(PUT_LOCK)?;
        crash_point(QueueCrash::PutLocked);
        let puts = match wake::until_room(&self.words(), self.maxsize, &mut guard, &self.shared.2, deadline) {
            Ok(puts) => puts,
            Err(stop) => return stopped(stop, timeout_is_error),
        };
        let tails = self.read_slot(TAILS, puts);
        if !tails.is_possible() {
            return Err(corrupt());
        }
        let tails = self.place(tails, payload)?;
        self.commit(PUTS, TAILS, puts, tails, QueueCrash::PutStateHalfWritten, wake::PUT_COMMIT);
        crash_point(QueueCrash::PutCommitted);
        drop(guard);
        wake::after_put(&self.words(), &self.shared.1, &self.shared.2, self.maxsize);
        self.bell.ring(self.listeners());
        Ok(true)
    }

    /// Whether a record of `n` bytes fits the ring at `tail` (keeping 8 bytes for a `JUMP`
    /// after it): where it goes. Reads the consumers' ring position only when the hint of it
    /// says no.
    fn ring_fit(&self, tail: u64, n: u64) -> Result<Option<u64>> {
        if n + 8 > self.small {
            return Ok(None);
        }
        let at = fit(tail, n, self.small);
        let end = at + n + 8;
        if end <= self.w(HINT_HEAD).load(Ordering::Relaxed).saturating_add(self.small) {
            return Ok(Some(at));
        }
        let (_, heads) = self.read_other(GETS, HEADS);
        if heads.ring > tail || tail - heads.ring > self.small {
            return Err(corrupt());
        }
        self.w(HINT_HEAD).store(heads.ring, Ordering::Relaxed);
        Ok((end <= heads.ring + self.small).then_some(at))
    }

    /// Where a record of `n` bytes goes in the spill at `tail` (keeping 8 bytes for a
    /// `RETURN` after it): an error if the spill has no room for it now. Producers write
    /// only below the page the consumers' `FREED` is in, plus the spill's size: every page
    /// the consumers give back later lies past that, a cycle before.
    fn spill_fit(&self, tail: u64, len: u64, n: u64) -> Result<u64> {
        let too_large = || too_large(len, self.small, self.small + self.spill);
        if n + 8 > self.spill {
            return Err(too_large());
        }
        let at = fit(tail, n, self.spill);
        let end = at + n + 8;
        let room = |freed: u64| end <= (freed / PAGE * PAGE).saturating_add(self.spill);
        if room(self.w(HINT_FREED).load(Ordering::Relaxed)) {
            return Ok(at);
        }
        let freed = self.w(FREED).load(Ordering::Acquire);
        if freed > tail {
            return Err(corrupt());
        }
        self.w(HINT_FREED).store(freed, Ordering::Relaxed);
        if room(freed) { Ok(at) } else { Err(too_large()) }
    }

    /// The data offset of ring position `at`.
    fn ring_at(&self, at: u64) -> u64 {
        at % self.small
    }

    /// The data offset of spill position `at`.
    fn spill_at(&self, at: u64) -> u64 {
        self.small + at % self.spill
    }

    /// Writes a record of `payload` past the tails (markers first where it goes elsewhere)
    /// and returns the tails past it. Nothing written here counts until they are committed:
    /// it lies past the committed tails, where no consumer reads.
    fn place(&self, t: Ends, payload: &[u8]) -> Result<Ends> {
        let len = payload.len() as u64;
        if len >= MAX_LEN {
            return Err(too_large(len, self.small, self.small + self.spill));
        }
        let n = 8 + round_up(len);
        let mut t = t;
        // Behind a jump, the ring is looked at again (its room, the consumers' line read
        // when the hint says none) once per page of the spill, not on every put.
        let look = t.in_spill == 0 || t.spill % PAGE + n > PAGE;
        let in_ring = if look { self.ring_fit(t.ring, n)? } else { None };
        let at = match (t.in_spill == 1, in_ring) {
            (in_spill, Some(at)) => {
                if in_spill {
                    // Room in the ring again: back to it.
                    self.write_word(self.spill_at(t.spill), RETURN)?;
                    t.spill += 8;
                    t.in_spill = 0;
                }
                if at != t.ring {
                    self.write_word(self.ring_at(t.ring), WRAP)?;
                }
                t.ring = at + n;
                self.ring_at(at)
            }
            (in_spill, None) => {
                let at = self.spill_fit(t.spill, len, n)?;
                if !in_spill {
                    // The ring always keeps 8 bytes for this.
                    self.write_word(self.ring_at(t.ring), JUMP)?;
                    t.ring += 8;
                    t.in_spill = 1;
                }
                if at != t.spill {
                    self.write_word(self.spill_at(t.spill), WRAP)?;
                }
                t.spill = at + n;
                self.spill_at(at)
            }
        };
        self.write_word(at, len)?;
        let half = payload.len() / 2;
        self.shared.write_data((at + 8) as usize, &payload[..half]);
        crash_point(QueueCrash::PutHalfWritten);
        self.shared.write_data((at + 8) as usize + half, &payload[half..]);
        Ok(t)
    }

    /// Writes a word of the data at offset `at`.
    fn write_word(&self, at: u64, word: u64) -> Result<()> {
        if at.checked_add(8).is_none_or(|end| end > self.small + self.spill) {
            return Err(corrupt());
        }
        self.shared.write_data(at as usize, &word.to_ne_bytes());
        Ok(())
    }

    /// Reads a word of the data at offset `at`.
    fn read_word(&self, at: u64) -> Result<u64> {
        if at.checked_add(8).is_none_or(|end| end > self.small + self.spill) {
            return Err(corrupt());
        }
        let mut b = [0; 8];
        self.shared.read_data(at as usize, &mut b);
        Ok(u64::from_ne_bytes(b))
    }

    /// Takes the first item's bytes into `out` (replacing what it held). `Ok(false)`: the queue
    /// stayed empty until `deadline` (`Err(Timeout)` instead when `timeout_is_error`).
    pub(crate) fn get(
        &self,
        out: &mut Vec<u8>,
        deadline: Option<Instant>,
        timeout_is_error: bool,
    ) -> Result<bool> {
        let gets = self.w(GETS).load(Ordering::Relaxed);
        if self.w(HINT_PUTS).load(Ordering::Relaxed) <= gets {
            // What the consumers know of is taken: a look at `PUTS`.
            let puts = self.w(PUTS).load(Ordering::Acquire);
            if puts <= gets {
                if deadline.is_some_and(|d| d <= Instant::now()) {
                    return stopped(Stop::Timeout, timeout_is_error);
                }
                spin_until(|| self.maybe_item());
            } else if puts - gets < RUN {
                self.let_a_run_come();
            }
        }
        let mut guard = self.lock(GET_LOCK)?;
        crash_point(QueueCrash::GetLocked);
        let (gets, puts) = match wake::until_item(&self.words(), &mut guard, &self.shared.1, deadline) {
            Ok(both) => both,
            Err(stop) => return stopped(stop, timeout_is_error),
        };
        let heads = self.read_slot(HEADS, gets);
        if !heads.is_possible() {
            return Err(corrupt());
        }
        // A consumer killed after its commit may have left pages to give back.
        self.give_back(heads.spill)?;
        let heads = self.take(heads, out)?;
        let bounded = self.bounded();
        let order = wake::get_commit(bounded);
        self.commit(GETS, HEADS, gets, heads, QueueCrash::GetStateHalfWritten, order);
        crash_point(QueueCrash::GetCommitted);
        self.give_back(heads.spill)?;
        drop(guard);
        wake::after_get(&self.words(), &self.shared.1, &self.shared.2, gets, puts, bounded);
        if bounded {
            self.bell.ring(self.listeners());
        }
        Ok(true)
    }

    /// Waits [`RUN_WAIT`] (busy, touching no shared memory) before a get that found a few
    /// items put while it was away: its producer is putting now, and a consumer that took each
    /// item as soon as it was committed would read `PUTS` and the record's line while the
    /// producer writes them, so both lines would travel between the two CPUs for every item,
    /// and both sides would run at the speed of those transfers (3-4 times slower: a regime
    /// that once begun holds, since the consumer never falls behind again). Let a few items
    /// come first, and the consumer takes them as a run (one look at `PUTS`, lines the
    /// producer has left), falling a run behind, where it stays while the producer puts. A
    /// consumer that waited for its item (a ping-pong) takes it at once; on one CPU the
    /// producer cannot put meanwhile, so it does not wait.
    fn let_a_run_come(&self) {
        if !several_cpus() {
            return;
        }
        let start = Instant::now();
        while start.elapsed() < RUN_WAIT {
            std::hint::spin_loop();
        }
    }

    /// Copies the first record out (following the markers before it); returns the heads past
    /// it. Under the get lock, with an item committed.
    fn take(&self, h: Ends, out: &mut Vec<u8>) -> Result<Ends> {
        let mut h = h;
        // At most two markers precede a record (a put writes at most two).
        for _ in 0..3 {
            let in_spill = h.in_spill == 1;
            let at = if in_spill { self.spill_at(h.spill) } else { self.ring_at(h.ring) };
            let word = self.read_word(at)?;
            match word {
                WRAP if in_spill => h.spill = next_cycle(h.spill, self.spill),
                WRAP => h.ring = next_cycle(h.ring, self.small),
                JUMP if !in_spill => {
                    h.ring += 8;
                    h.in_spill = 1;
                }
                RETURN if in_spill => {
                    h.spill += 8;
                    h.in_spill = 0;
                }
                len if len < MAX_LEN => {
                    let n = 8 + round_up(len);
                    // A record lies inside its cycle, and in the spill below the producers'
                    // committed tail (a length word another process scribbled over must not
                    // make us read, and allocate, gigabytes of the sparse space).
                    let inside = if in_spill {
                        let below_tail = |tail: u64| h.spill + n <= tail;
                        at - self.small + n <= self.spill
                            && (below_tail(self.w(HINT_TAIL).load(Ordering::Relaxed)) || {
                                let (_, tails) = self.read_other(PUTS, TAILS);
                                self.w(HINT_TAIL).store(tails.spill, Ordering::Relaxed);
                                below_tail(tails.spill)
                            })
                    } else {
                        at + n <= self.small
                    };
                    if !inside {
                        return Err(corrupt());
                    }
                    out.clear();
                    out.resize(len as usize, 0);
                    self.shared.read_data((at + 8) as usize, out);
                    if in_spill {
                        h.spill += n;
                    } else {
                        h.ring += n;
                    }
                    return Ok(h);
                }
                _ => return Err(corrupt()),
            }
        }
        Err(corrupt())
    }

    /// Gives back to the system the whole spill pages below `head` (the consumers' committed
    /// spill position) not given back yet, and moves `FREED` up to it. Under the get lock,
    /// after the commit: a consumer killed in between leaves `FREED` behind, and the next get
    /// gives the pages back. Producers never write below `FREED`'s page plus the spill's
    /// size (see `spill_fit`), so these pages are no one's.
    fn give_back(&self, head: u64) -> Result<()> {
        let freed = self.w(FREED).load(Ordering::Relaxed);
        if freed == head {
            return Ok(());
        }
        if freed > head || head - freed > self.spill {
            return Err(corrupt());
        }
        let (from, to) = (freed / PAGE * PAGE, head / PAGE * PAGE);
        // Pages go back in batches (a system call per 64 KiB, not per page), but for a
        // spill cut small by a file size limit.
        let batch = (self.spill / 4 / PAGE * PAGE).min(PUNCH_BATCH);
        if to <= from || to - from < batch {
            return Ok(());
        }
        {
            let first = from % self.spill;
            let len = to - from;
            let head_part = len.min(self.spill - first);
            self.punch(self.small + first, head_part);
            if len > head_part {
                self.punch(self.small, len - head_part);
            }
        }
        self.w(FREED).store(head, Ordering::Release);
        Ok(())
    }

    /// Gives the pages of `[at, at + len)` of the data back to the system (they read as zeroes
    /// when next written). An error only keeps them in use.
    fn punch(&self, at: u64, len: u64) {
        let _ = rustix::fs::fallocate(
            self.shared.mapping().fd(),
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            data_offset::<Header>() as u64 + at,
            len,
        );
    }

    /// Marks one item done; `Err(Misuse)` if none is unfinished. Wakes `join` at zero.
    pub(crate) fn task_done(&self) -> Result<()> {
        let done = self.w(DONE);
        let mut d = done.load(Ordering::SeqCst);
        loop {
            if d >= self.w(PUTS).load(Ordering::SeqCst) {
                return Err(Error::Misuse("task_done() called more times than items were put"));
            }
            match done.compare_exchange(d, d + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(now) => d = now,
            }
        }
        if self.unfinished() == 0 {
            self.notify(&self.shared.3, SLEEP_JOIN, true);
        }
        Ok(())
    }

    /// Waits until every item put is done.
    pub(crate) fn join(&self, deadline: Option<Instant>) -> Result<()> {
        if self.unfinished() == 0 {
            return Ok(());
        }
        let mut guard = self.lock(JOIN_LOCK)?;
        while self.unfinished() > 0 {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout);
            }
            self.sleep(&mut guard, &self.shared.3, SLEEP_JOIN, deadline, || self.unfinished() == 0);
        }
        Ok(())
    }
}

/// The index of the first of `shared`'s words that starts a cache line: the same in every
/// process, since the region is mapped at a page boundary.
fn line_start(shared: &Shared<Header>) -> usize {
    let addr = shared.4.as_ptr() as usize;
    (64 - addr % 64) % 64 / 8
}

/// What a put or get that stopped waiting returns: a timeout is `Ok(false)` unless
/// `timeout_is_error`.
fn stopped(stop: Stop, timeout_is_error: bool) -> Result<bool> {
    match stop {
        Stop::Corrupt => Err(corrupt()),
        Stop::Timeout if timeout_is_error => Err(Error::Timeout),
        Stop::Timeout => Ok(false),
    }
}

fn corrupt() -> Error {
    Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, "the queue's shared memory is corrupt"))
}

/// The largest file this process may write (`RLIMIT_FSIZE`, `ulimit -f`).
fn file_size_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Fsize).current.unwrap_or(u64::MAX)
}

fn too_large(len: u64, small: u64, data_len: u64) -> Error {
    let room = data_len - small;
    let why = if room < VIRTUAL_BYTES.max(small) {
        ", cut to the file size limit (ulimit -f) of the process that made the queue"
    } else {
        ""
    };
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::OutOfMemory,
        format!(
            "an item of {len} bytes does not fit the queue's {room} bytes of shared memory past its ring{why}"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use std::time::Duration;

    use super::*;

    /// Words a scribbler might leave: small, aligned, near the ends of the range.
    fn word() -> impl Strategy<Value = u64> {
        prop_oneof![
            0..64u64,
            (0..1u64 << 20).prop_map(|w| w * 8),
            Just(VIRTUAL_BYTES),
            Just(MAX_LEN),
            (0..16u64).prop_map(|d| u64::MAX - d),
            any::<u64>(),
        ]
    }

    /// Waits (at most 10 s) until a thread sleeps in the kernel on `cond`.
    fn until_asleep(cond: &ShmCondvar) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while cond.waiters.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "no thread went to sleep on the condvar");
            std::thread::yield_now();
        }
    }

    /// The condvar puts (2) or gets (1) sleep on.
    fn cond(ring: &Ring, which: u8) -> &ShmCondvar {
        if which == 1 { &ring.shared.1 } else { &ring.shared.2 }
    }

    /// A notify that comes after its sleeper left (the sleeper saw the item and never slept,
    /// or woke on its own) leaves the "wake-up on its way" flag set: the next sleeper must
    /// still be woken by the next commit, not sleep out its slice with an item there.
    #[test]
    fn a_wake_up_sent_after_its_sleeper_left_does_not_silence_the_next() {
        for (sleepers, cond_of) in [(SLEEP_GET, 1), (SLEEP_PUT, 2)] {
            let ring = Ring::new(PAGE, if cond_of == 1 { u64::MAX } else { 1 }).unwrap();
            // The race: a sleeper counted in, a commit's notify, the sleeper gone.
            ring.w(sleepers).fetch_add(1, Ordering::SeqCst);
            ring.notify(cond(&ring, cond_of), sleepers, false);
            ring.w(sleepers).fetch_sub(1, Ordering::SeqCst);
            if cond_of == 2 {
                ring.put(&[1; 8], None, true).unwrap();
            }
            std::thread::scope(|s| {
                let sleeper = s.spawn(|| {
                    let mut out = Vec::new();
                    let later = Some(Instant::now() + Duration::from_secs(30));
                    if cond_of == 1 {
                        ring.get(&mut out, later, true).unwrap();
                    } else {
                        ring.put(&[2; 8], later, true).unwrap();
                    }
                });
                let cond = cond(&ring, cond_of);
                until_asleep(cond);
                let before = cond.sequence();
                if cond_of == 1 {
                    ring.put(&[1; 8], None, true).unwrap();
                } else {
                    ring.get(&mut Vec::new(), None, true).unwrap();
                }
                assert_ne!(cond.sequence(), before, "the commit did not wake the sleeper");
                sleeper.join().unwrap();
            });
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// A peer that scribbled over one side's state (its commit word, slots and hints) or a
        /// record's length word: `get` and `put` fail with an error (or carry on), never
        /// panic, never read or write outside the region.
        #[test]
        fn prop_a_scribbled_queue_is_an_error_not_a_panic(
            items in 0..4usize,
            state in prop::collection::vec(prop::option::of(word()), 2 * LINE),
            at_head in word(),
            scribble in 0..3u8,
        ) {
            let ring = Ring::new(PAGE, u64::MAX).unwrap();
            for i in 0..items {
                ring.put(&[i as u8; 40], None, true).unwrap();
            }
            // The producers' two lines, the consumers' two, or the length word of the first
            // record (a consistent state could announce an honest 8 GiB item).
            let lines = match scribble {
                0 => Some(PUTS),
                1 => Some(GETS),
                _ => None,
            };
            match lines {
                Some(first) => {
                    for (i, w) in state.iter().enumerate() {
                        if let Some(w) = w {
                            ring.w(first + i).store(*w, Ordering::Relaxed);
                        }
                    }
                }
                None => {
                    let gets = ring.w(GETS).load(Ordering::Relaxed);
                    let head = ring.read_slot(HEADS, gets).ring;
                    ring.shared.write_data(ring.ring_at(head) as usize, &at_head.to_ne_bytes());
                }
            }
            let now = Some(Instant::now());
            let mut out = Vec::new();
            for _ in 0..3 {
                let _ = ring.get(&mut out, now, false);
                prop_assert!(out.len() < PAGE as usize, "a get read {} bytes", out.len());
                let _ = ring.put(&[7; 40], now, false);
            }
        }
    }
}
