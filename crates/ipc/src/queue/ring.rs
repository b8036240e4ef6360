//! The untyped queue in shared memory: its layout, the commit protocol, and the waits.
//!
//! See the [`queue`](crate::queue) module doc for the design; this file is its mechanism.

use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use crate::doorbell::{Doorbell, Listeners};
use crate::error::{Error, Result};
use crate::shm::{LockError, Shared, ShmCondvar, ShmGuard, ShmMutex};
use crate::spin::spin_until;
use crate::sys::shm::data_offset;

/// The header of a queue's region: the lock, three condition variables, the words, and the
/// count of coroutines listening for the doorbell.
pub(crate) type Header = (ShmMutex, ShmCondvar, ShmCondvar, ShmCondvar, [AtomicU64; WORDS], Listeners);

const WORDS: usize = 40;

// Word indexes in the header's array.
const MAGIC: usize = 0;
const SMALL: usize = 1; // the hot ring's size in bytes
const MAXSIZE: usize = 2; // the most items, u64::MAX for none
const GEN: usize = 3; // the commit word: which slot holds the state, and how many commits
const SLEEP_GET: usize = 4; // processes asleep in get (a count only ever too high, never low)
const SLEEP_PUT: usize = 5; // asleep in put
const SLEEP_JOIN: usize = 6; // asleep in join
const WAKING_GET: usize = 7; // 1: a get's wake-up is on its way (notified, not yet awake)
const SLOTS: usize = 8; // two slots of STATE_WORDS words each, on their own cache lines
const STATE_WORDS: usize = 8;
const COUNT_AT: usize = 2; // `State::count`'s index in a slot (see `State::to_words`)
const WAKING_PUT: usize = 24; // 1: a put's wake-up is on its way

const MAGIC_VALUE: u64 = 0x6d70_7271_7565_7502; // "mprque" v2

/// A record's header word above this is a marker, not a length.
const WRAP: u64 = u64::MAX;
const JUMP: u64 = u64::MAX - 1;
const MAX_LEN: u64 = 1 << 62;

/// Bytes of address space (sparse: only written pages use memory) past the hot ring, where
/// records that do not fit the ring go.
pub(crate) const VIRTUAL_BYTES: u64 = 8 << 30;
const PAGE: u64 = 4096;

/// How long a sleeping `get`/`put`/`join` sleeps before it looks again, even unwoken: a
/// process woken by a notify and killed before it took the item leaves the others asleep
/// with an item there; they find it within this time.
const SLICE: Duration = Duration::from_millis(50);

/// How many times `lock` tries the mutex (spinning between tries) before it sleeps on it:
/// glibc's robust mutexes sleep at once on contention, where the holder only ever holds the
/// lock for a copy and a commit.
const LOCK_TRIES: u32 = 64;

/// A range of whole pages of the data, `[from, to)`.
type Pages = (u64, u64);

/// The queue's state: what one commit publishes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct State {
    /// Where the next record (or marker) to read starts, a byte offset in the data.
    head: u64,
    /// Where the next record goes.
    tail: u64,
    /// Items in the queue.
    count: u64,
    /// Markers between head and tail (0, 1 or 2).
    markers: u64,
    /// 1 while the writer fills the segment at 0, below the reader's (after a wrap).
    writer_below: u64,
    /// The end of the segment at 0 while the reader is above it.
    low_end: u64,
    /// The highest byte written since the queue was last empty.
    high: u64,
    /// Items put and not yet `task_done` (every queue counts them; `JoinableQueue` reads).
    unfinished: u64,
}

impl State {
    fn to_words(self) -> [u64; STATE_WORDS] {
        [
            self.head,
            self.tail,
            self.count,
            self.markers,
            self.writer_below,
            self.low_end,
            self.high,
            self.unfinished,
        ]
    }

    /// Whether a commit can have made this state in a region of `data_len` bytes: offsets
    /// inside the data, at most two markers, a record (8 bytes at least) per item.
    fn is_possible(&self, data_len: u64) -> bool {
        [self.head, self.tail, self.low_end, self.high].iter().all(|&at| at <= data_len)
            && self.markers <= 2
            && self.writer_below <= 1
            && self.count <= data_len / 8
    }

    fn from_words(w: [u64; STATE_WORDS]) -> State {
        State {
            head: w[0],
            tail: w[1],
            count: w[2],
            markers: w[3],
            writer_below: w[4],
            low_end: w[5],
            high: w[6],
            unfinished: w[7],
        }
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
    /// The data's whole size (bytes): the hot ring and the sparse space past it.
    data_len: u64,
    maxsize: u64,
}

/// An operation's view of the state under the lock.
struct Locked<'a> {
    guard: ShmGuard<'a>,
    generation: u64,
    state: State,
}

fn round_up(x: u64) -> u64 {
    x.next_multiple_of(8)
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
        let words = &shared.4;
        words[SMALL].store(small, Ordering::Relaxed);
        words[MAXSIZE].store(maxsize, Ordering::Relaxed);
        words[MAGIC].store(MAGIC_VALUE, Ordering::Release);
        Ok(Ring { shared, bell, small, data_len, maxsize })
    }

    /// A queue another process made (its region and its doorbell).
    pub(crate) fn attach(shared: Shared<Header>, bell: Doorbell) -> std::result::Result<Ring, &'static str> {
        let words = &shared.4;
        if words[MAGIC].load(Ordering::Acquire) != MAGIC_VALUE {
            return Err("the shared region is not a queue");
        }
        let small = words[SMALL].load(Ordering::Relaxed);
        let maxsize = words[MAXSIZE].load(Ordering::Relaxed);
        let data_len = shared.data_len() as u64;
        if small < PAGE || !small.is_multiple_of(PAGE) || small >= data_len {
            return Err("the queue's header is corrupt");
        }
        Ok(Ring { shared, bell, small, data_len, maxsize })
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

    fn words(&self) -> &[AtomicU64; WORDS] {
        &self.shared.4
    }

    /// The most items, `None` for no bound.
    pub(crate) fn maxsize(&self) -> Option<u64> {
        (self.maxsize != u64::MAX).then_some(self.maxsize)
    }

    /// The state as last committed, read without the lock (a seqlock read of the slot the
    /// commit word names).
    pub(crate) fn snapshot(&self) -> State {
        let words = self.words();
        loop {
            // SeqCst, as the commit's store: a coroutine that counted itself a listener and
            // then finds the queue unchanged is seen by the committer's doorbell (see `ring`).
            let generation = words[GEN].load(Ordering::SeqCst);
            let state = self.read_slot(generation);
            fence(Ordering::Acquire);
            if words[GEN].load(Ordering::Relaxed) == generation {
                return state;
            }
            std::hint::spin_loop();
        }
    }

    fn read_slot(&self, generation: u64) -> State {
        let base = SLOTS + (generation & 1) as usize * STATE_WORDS;
        let words = self.words();
        State::from_words(std::array::from_fn(|i| words[base + i].load(Ordering::Relaxed)))
    }

    /// Publishes `state` as the new one: written to the slot not in use, then made current by
    /// one store of the commit word. Under the lock.
    fn commit(&self, locked: &mut Locked<'_>, state: State, half: QueueCrash) {
        let next = locked.generation.wrapping_add(1);
        let base = SLOTS + (next & 1) as usize * STATE_WORDS;
        let words = self.words();
        // A reader that sees any of the stores below also sees a commit word past the one it
        // started from (see `snapshot`), and retries.
        fence(Ordering::Release);
        for (i, w) in state.to_words().into_iter().enumerate() {
            words[base + i].store(w, Ordering::Relaxed);
            if i == STATE_WORDS / 2 {
                crash_point(half);
            }
        }
        words[GEN].store(next, Ordering::SeqCst);
        locked.generation = next;
        locked.state = state;
    }

    /// Takes the lock (a dead holder's lock too: the state needs no repair, since nothing a
    /// holder writes counts before its commit) and reads the state. Without a deadline: the
    /// lock is only ever held for a copy and a commit (never across a wait), and a dead
    /// holder's is handed over at once.
    fn lock(&self) -> Result<Locked<'_>> {
        let mut taken = self.shared.0.try_lock();
        for _ in 0..LOCK_TRIES {
            if !matches!(taken, Err(LockError::Timeout)) {
                break;
            }
            for _ in 0..8 {
                std::hint::spin_loop();
            }
            taken = self.shared.0.try_lock();
        }
        if matches!(taken, Err(LockError::Timeout)) {
            taken = self.shared.0.lock_until(None);
        }
        let guard = match taken {
            Ok(guard) | Err(LockError::OwnerDied(guard)) => guard,
            Err(LockError::Timeout) => return Err(Error::Timeout),
            Err(LockError::Io(e)) => return Err(Error::Io(e)),
        };
        let generation = self.words()[GEN].load(Ordering::Acquire);
        let state = self.read_slot(generation);
        // A state no commit makes (another process scribbled over the region): an error
        // rather than arithmetic that overflows or offsets outside the data.
        if !state.is_possible(self.data_len) {
            return Err(corrupt());
        }
        Ok(Locked { guard, generation, state })
    }

    /// Sleeps on `cond` until notified or `deadline` (at most [`SLICE`]).
    fn sleep(&self, locked: &mut Locked<'_>, cond: &ShmCondvar, sleepers: usize, deadline: Option<Instant>) {
        let count = &self.words()[sleepers];
        count.fetch_add(1, Ordering::SeqCst);
        cond.wait_slice(&mut locked.guard, deadline, SLICE);
        // Awake (notified or not): the wake-up on its way, if any, may have been this one, so
        // the next commit that finds sleepers wakes one again (at worst one wake too many).
        // A sleeper killed between its wake-up and here leaves the flag set: the others
        // clear it when their slice ends.
        if let Some(waking) = waking_of(sleepers) {
            self.words()[waking].store(0, Ordering::SeqCst);
        }
        count.fetch_sub(1, Ordering::SeqCst);
        // The lock is held again; what it guards is the committed state, whoever held it.
        locked.generation = self.words()[GEN].load(Ordering::Acquire);
        locked.state = self.read_slot(locked.generation);
    }

    /// Wakes the sleepers on `cond` (all of them) or one of them, if any sleep. One at a
    /// time: while a wake-up is on its way (the `WAKING_` flag, cleared by the sleeper when it
    /// wakes), a commit wakes no other, so a producer does not pay a `futex` wake for every
    /// item while its consumer gets to a CPU; the woken one, after its own commit, wakes the
    /// next if what they wait for is still there (see `put` and `get`).
    fn notify(&self, cond: &ShmCondvar, sleepers: usize, all: bool) {
        let words = self.words();
        if words[sleepers].load(Ordering::SeqCst) == 0 {
            return;
        }
        match waking_of(sleepers) {
            _ if all => cond.notify_all(),
            Some(waking) => {
                if words[waking].load(Ordering::SeqCst) == 0 && words[waking].swap(1, Ordering::SeqCst) == 0 {
                    cond.notify_one();
                }
            }
            None => cond.notify_one(),
        }
    }

    fn full(&self, state: &State) -> bool {
        state.count >= self.maxsize
    }

    /// Items in the queue, from one snapshot.
    pub(crate) fn qsize(&self) -> u64 {
        self.snapshot_count()
    }

    /// The committed state's `count` alone, read as [`snapshot`](Self::snapshot) reads the
    /// whole state: three loads.
    fn snapshot_count(&self) -> u64 {
        let words = self.words();
        loop {
            let generation = words[GEN].load(Ordering::SeqCst);
            let count =
                words[SLOTS + (generation & 1) as usize * STATE_WORDS + COUNT_AT].load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if words[GEN].load(Ordering::Relaxed) == generation {
                return count;
            }
            std::hint::spin_loop();
        }
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
        // An unbounded queue is never full: no look before the lock.
        if self.maxsize != u64::MAX
            && self.snapshot_count() >= self.maxsize
            && deadline.is_none_or(|d| d > Instant::now())
        {
            spin_until(|| self.snapshot_count() < self.maxsize);
        }
        let mut locked = self.lock()?;
        crash_point(QueueCrash::PutLocked);
        while self.full(&locked.state) {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return if timeout_is_error { Err(Error::Timeout) } else { Ok(false) };
            }
            self.sleep(&mut locked, &self.shared.2, SLEEP_PUT, deadline);
        }
        let state = self.place(&locked.state, payload)?;
        self.commit(&mut locked, state, QueueCrash::PutStateHalfWritten);
        crash_point(QueueCrash::PutCommitted);
        drop(locked);
        self.notify(&self.shared.1, SLEEP_GET, false);
        if self.maxsize != u64::MAX && !self.full(&state) {
            // Room left: the next sleeping put may go on too.
            self.notify(&self.shared.2, SLEEP_PUT, false);
        }
        self.bell.ring(self.listeners());
        Ok(true)
    }

    /// Writes a record of `payload` past the tail (markers first where it goes elsewhere) and
    /// returns the state that makes it the last item. Nothing written here counts until that
    /// state is committed.
    fn place(&self, s: &State, payload: &[u8]) -> Result<State> {
        let len = payload.len() as u64;
        if len >= MAX_LEN {
            return Err(too_large(len, self.small, self.data_len));
        }
        let n = 8 + round_up(len);
        let mut s = *s;
        let at = if s.writer_below == 1 {
            // Filling [0, tail) below the reader's segment: room up to the head, keeping 16
            // bytes for a jump; else jump past everything written.
            if s.tail + n + 16 <= s.head {
                s.low_end = s.tail + n;
                s.tail
            } else {
                let target = round_up(s.high.max(s.head));
                self.write_word(s.tail, JUMP)?;
                self.write_word(s.tail + 8, target)?;
                s.low_end = s.tail + 16;
                s.markers += 1;
                s.writer_below = 0;
                target
            }
        } else if s.markers == 0 && s.tail + n > self.small && s.count > 0 && n + 16 <= s.head {
            // The reader has left room at the start of the hot ring: wrap there.
            self.write_word(s.tail, WRAP)?;
            s.high = s.high.max(s.tail + 8);
            s.markers += 1;
            s.writer_below = 1;
            s.low_end = n;
            0
        } else {
            s.tail
        };
        let end = at + n;
        if end > self.data_len {
            return Err(too_large(len, self.small, self.data_len));
        }
        self.write_word(at, len)?;
        let half = payload.len() / 2;
        self.shared.write_data((at + 8) as usize, &payload[..half]);
        crash_point(QueueCrash::PutHalfWritten);
        self.shared.write_data((at + 8) as usize + half, &payload[half..]);
        s.tail = end;
        s.high = s.high.max(end);
        s.count += 1;
        s.unfinished += 1;
        Ok(s)
    }

    /// Writes a word of the data; an offset outside it (a corrupt state) is an error.
    fn write_word(&self, at: u64, word: u64) -> Result<()> {
        if at.checked_add(8).is_none_or(|end| end > self.data_len) {
            return Err(corrupt());
        }
        self.shared.write_data(at as usize, &word.to_ne_bytes());
        Ok(())
    }

    /// Reads a word of the data; an offset outside it (a corrupt state or marker) is an error.
    fn read_word(&self, at: u64) -> Result<u64> {
        if at.checked_add(8).is_none_or(|end| end > self.data_len) {
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
        if self.snapshot_count() == 0 {
            if deadline.is_some_and(|d| d <= Instant::now()) {
                return if timeout_is_error { Err(Error::Timeout) } else { Ok(false) };
            }
            spin_until(|| self.snapshot_count() > 0);
        }
        let mut locked = self.lock()?;
        crash_point(QueueCrash::GetLocked);
        while locked.state.count == 0 {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return if timeout_is_error { Err(Error::Timeout) } else { Ok(false) };
            }
            self.sleep(&mut locked, &self.shared.1, SLEEP_GET, deadline);
        }
        let (state, punch) = self.take(&locked.state, out)?;
        self.commit(&mut locked, state, QueueCrash::GetStateHalfWritten);
        crash_point(QueueCrash::GetCommitted);
        for (from, to) in punch.into_iter().flatten() {
            // Gives the pages of records read back to the system (they read as zeroes when next
            // written). Only pages no live record touches; an error only keeps them in use.
            let _ = rustix::fs::fallocate(
                self.shared.mapping().fd(),
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                crate::sys::shm::data_offset::<Header>() as u64 + from,
                to - from,
            );
        }
        drop(locked);
        if state.count > 0 {
            // Items left: the next sleeping get may go on too.
            self.notify(&self.shared.1, SLEEP_GET, false);
        }
        if self.maxsize != u64::MAX {
            self.notify(&self.shared.2, SLEEP_PUT, false);
            self.bell.ring(self.listeners());
        }
        Ok(true)
    }

    /// Copies the first record out; returns the state without it, and the pages (past the hot
    /// ring) that no live record touches any more.
    fn take(&self, s: &State, out: &mut Vec<u8>) -> Result<(State, [Option<Pages>; 2])> {
        let mut s = *s;
        let mut start = s.head;
        let mut punch = [None, None];
        // Follow the markers to the record.
        loop {
            let marker = s.head;
            let word = self.read_word(marker)?;
            if word != WRAP && word != JUMP {
                break;
            }
            if s.markers == 0 {
                return Err(corrupt());
            }
            // The segment left: its whole pages before the marker's (which the next segment
            // may share).
            punch[0] = self.dead_pages(&s, start, marker);
            if word == WRAP {
                s.head = 0;
                s.writer_below = 0;
            } else {
                s.head = self.read_word(marker + 8)?;
            }
            s.markers -= 1;
            start = s.head;
        }
        let len = self.read_word(s.head)?;
        // Every record lies below the highest byte written (a length word another process
        // scribbled over must not make us read, and allocate, gigabytes of the sparse space).
        let end =
            Some(len).filter(|&len| len < MAX_LEN).and_then(|len| s.head.checked_add(8 + round_up(len)));
        let Some(end) = end.filter(|&e| e <= s.high && e <= self.data_len) else { return Err(corrupt()) };
        out.clear();
        out.resize(len as usize, 0);
        self.shared.read_data((s.head + 8) as usize, out);
        s.head = end;
        s.count -= 1;
        if s.count == 0 {
            // Empty: start again at the hot ring's start, and give back whatever lies past it.
            if s.high > self.small {
                punch = [Some((self.small, s.high.next_multiple_of(PAGE))), None];
            }
            s = State { unfinished: s.unfinished, ..State::default() };
        } else {
            punch[1] = self.dead_pages(&s, start, end);
        }
        Ok((s, punch))
    }

    /// The whole pages of `[from, to)`, just read, that no live record touches: past the hot
    /// ring (whose pages stay), and above the segment at 0 while the reader is still above it
    /// (a wrap ahead of the reader: that segment's last page may be this one's first).
    fn dead_pages(&self, s: &State, from: u64, to: u64) -> Option<Pages> {
        let mut from = (from / PAGE * PAGE).max(self.small);
        let wrap_ahead = s.markers == 2 || (s.markers == 1 && s.writer_below == 1);
        if wrap_ahead {
            from = from.max(s.low_end.next_multiple_of(PAGE));
        }
        let to = to / PAGE * PAGE;
        (to > from).then_some((from, to))
    }

    /// Marks one item done; `Err(Misuse)` if none is unfinished. Wakes `join` at zero.
    pub(crate) fn task_done(&self) -> Result<()> {
        let mut locked = self.lock()?;
        let mut s = locked.state;
        if s.unfinished == 0 {
            return Err(Error::Misuse("task_done() called more times than items were put"));
        }
        s.unfinished -= 1;
        let done = s.unfinished == 0;
        self.commit(&mut locked, s, QueueCrash::PutStateHalfWritten);
        drop(locked);
        if done {
            self.notify(&self.shared.3, SLEEP_JOIN, true);
        }
        Ok(())
    }

    /// Waits until every item put is done.
    pub(crate) fn join(&self, deadline: Option<Instant>) -> Result<()> {
        if self.snapshot().unfinished == 0 {
            return Ok(());
        }
        let mut locked = self.lock()?;
        while locked.state.unfinished > 0 {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout);
            }
            self.sleep(&mut locked, &self.shared.3, SLEEP_JOIN, deadline);
        }
        Ok(())
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

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// A peer that scribbled over the queue's state or a record's length word: `get` and
        /// `put` fail with an error (or carry on), never panic, never read or write outside
        /// the region.
        #[test]
        fn prop_a_scribbled_queue_is_an_error_not_a_panic(
            items in 0..4usize,
            state in prop::collection::vec(prop::option::of(word()), STATE_WORDS),
            at_head in word(),
            scribble_state in any::<bool>(),
        ) {
            let ring = Ring::new(PAGE, u64::MAX).unwrap();
            for i in 0..items {
                ring.put(&[i as u8; 40], None, true).unwrap();
            }
            let words = ring.words();
            let generation = words[GEN].load(Ordering::Relaxed);
            let base = SLOTS + (generation & 1) as usize * STATE_WORDS;
            // Either the state (whatever records it then points at) or the length word of
            // the first record (a consistent state could announce an honest 8 GiB item).
            if scribble_state {
                for (i, w) in state.iter().enumerate() {
                    if let Some(w) = w {
                        words[base + i].store(*w, Ordering::Relaxed);
                    }
                }
            } else {
                let head = ring.snapshot().head;
                ring.shared.write_data(head as usize, &at_head.to_ne_bytes());
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
