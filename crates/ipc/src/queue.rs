//! Queues between processes: Python's `multiprocessing.Queue`, `SimpleQueue` and
//! `JoinableQueue`, kept in shared memory.
//!
//! A [`Queue`] is a region of shared memory (a sealed memfd, see [`crate::shm`]) holding two
//! robust process-shared mutexes (one for producers, one for consumers), three condition
//! variables, each side's state, and the items' bytes, plus a [`Doorbell`] (an eventfd) for
//! coroutines. There is no feeder thread and no pipe: `put` encodes the value (postcard) in
//! the calling thread, copies it into the region under the put lock, and commits; `get`
//! copies the first item out under the get lock, commits, and decodes after unlocking. So:
//!
//! - a value that does not serialize fails *in `put`*, before anything is locked or written;
//! - when `put` returns, the item is in memory that belongs to no single process: the producer
//!   may exit or be killed at once and the item is still there;
//! - a process killed at any instruction (holding a lock, half way through an item or
//!   through its side's state) leaves the queue whole, by the commit protocol below.
//!
//! # Layout
//!
//! ```text
//! header  mutexes (put lock, get lock, join lock, each on lines of its own) | ShmCondvar
//!         not_empty | not_full | all_done | words, one 64-byte line per writer:
//!           constants   magic, ring size, maxsize
//!           producers   PUTS (commit word), two slots of tails; their hints of the consumers
//!           consumers   GETS (commit word), two slots of heads, FREED; their hints of PUTS
//!           sleepers    counts and "waking" flags;   done   task_done calls
//! data    [0, small)             the hot ring: small items cycle through these pages
//!         [small, small + 8 GiB) the spill, sparse: records the ring has no room for
//!                                (less under `ulimit -f`: see Limits)
//! ```
//!
//! A record is an 8-byte length and the postcard bytes, padded to 8, always contiguous. The
//! ring and the spill are each a byte stream whose positions only grow (a position is at
//! `position % size` in its area); three markers steer the reader: `WRAP` (the rest of this
//! cycle of the area is padding: a record never crosses the area's end), `JUMP` in the ring
//! (the next record is in the spill) and `RETURN` in the spill (back to the ring). Each
//! side's state is its position in both streams and which stream it is in; the count of
//! items is `PUTS - GETS`.
//!
//! Where a record goes: after the ring's tail while the ring has room for it (keeping 8
//! bytes for a `JUMP`); else, behind a `JUMP`, at the spill's tail, and on in the spill
//! until the ring has room again (`RETURN`; looked at once per page of the spill). So an
//! item of any size is placed at once (never split, never waiting for a reader). Whole
//! pages of the spill are given back (`fallocate(PUNCH_HOLE)`, 64 KiB at a time) once the
//! reader has left them; the ring's pages stay.
//!
//! # Commit protocol
//!
//! Each side changes its state under its own lock, and ends the change with one store of its
//! commit word: `PUTS` (items ever put) for producers, `GETS` for consumers. The word also
//! names the side's current state slot (`word & 1`): an operation reads the current slot,
//! writes whatever it writes *outside* the live data (a producer's record and markers go
//! past the committed tail, where no consumer reads; a consumer writes nothing but its
//! state), writes its new state into the other slot, and then stores the word plus one:
//! that store is the commit. So for a process killed anywhere:
//!
//! - before the commit store, nothing it did is visible: the record or state it was writing
//!   lies in memory no one reads, and is overwritten by the next operation of its side; the
//!   next locker gets the mutex with "owner died" and has nothing to repair (it reads the
//!   state the commit word names, which is whole);
//! - after it, the operation happened, whole. (A consumer killed between its commit and
//!   giving the pages it left back leaves `FREED` behind; the next get gives them back.)
//!
//! Neither side writes the other's lines: a producer learns the consumers' position (for
//! room) and `GETS` (for `maxsize`) by reading them, and keeps what it read as a hint on its
//! own line, a lower bound it reads again only when the hint says no room; a consumer keeps
//! `PUTS` so. A 1→1 put in the steady state is then an uncontended lock, a copy and a store.
//! A consumer that finds a few items put while it was away (its producer is putting, on
//! another CPU) lets a run come (600 ns) before it takes them: taking each item as soon as it
//! is committed, it would read `PUTS` and the record's line while the producer writes them,
//! and both lines would cross between the CPUs for every item (both sides three times
//! slower).
//! Room: producers write ring positions below the consumers' ring position plus the ring's
//! size, and spill positions below `FREED`'s page plus the spill's size, so they never write
//! what a reader has yet to read, nor a page a reader is about to give back.
//!
//! `qsize`, `empty` and `full` agree at every moment: each reads `GETS`, `PUTS`, then
//! `GETS` again, and retries until the two reads of `GETS` are equal. `GETS` only grows, so
//! it held that value all the while, in particular when `PUTS` was read: `PUTS - GETS` is the
//! number of items at that instant (never more than `maxsize`, never below 0, since a get
//! commits only an item already committed). A put that returned has stored `PUTS`, a get
//! that returned `GETS`, so each call counts exactly the operations that returned before it.
//! `empty` and `full` are this count compared (as before, one read each; each is true of
//! one moment during its call). The same for `join`: `DONE` (task_done calls, never more
//! than `PUTS`) read before `PUTS`, equal only if they were equal when `PUTS` was read.
//!
//! Waits: a blocking `get` (`put` on a full queue) first looks without the lock (busy, no
//! system call) for as long as looking has lately paid in this process: up to 20 µs while a
//! partner on another CPU keeps answering in time, not at all (but for a probe every 64th
//! wait) once looks keep failing, as they do when the partner waits for a CPU that busy
//! processes hold, and never when the process may run on one CPU only; then it sleeps on its
//! condition variable, holding its side's lock. The other side changes the condition without
//! that lock, so a sleeper counts itself in, reads the condition variable's notify count,
//! looks again, and sleeps only while the count is unchanged; the other side stores its
//! commit word and then reads the sleeper count (both `SeqCst`): either it sees the sleeper
//! and notifies (moving the count), or the sleeper's look sees its commit. Each wake-up is a
//! `notify_one` after the commit, made only when someone sleeps and no other wake-up is on
//! its way (a flag the woken process clears when it wakes): a producer pays one `futex` wake
//! per sleep of its consumer, not one per item put while the woken consumer waits for a CPU.
//! A process that commits and leaves items (room) behind wakes the next sleeper the same way.
//! A process woken and then killed before it took the item (or cleared the flag) would leave
//! the others asleep: so every sleep lasts at most 50 ms before it looks again (and clears
//! the flag).
//!
//! Coroutines (`mproc-coroutine`'s `AsyncShared<Queue<T>>`) do not sleep on the condition
//! variables: they count themselves in the header's [`Listeners`], and wait in their event
//! loop for the queue's [`Doorbell`] (see [`crate::Doorbell`]'s protocol), which a put rings
//! after its commit, and a get of a bounded queue too, only while the count is not zero (one
//! load otherwise). The ring puts a `SeqCst` fence between the commit and its load of the
//! count, and `listen` one between the count's update and the coroutine's look: a coroutine
//! that counted itself in and then found the queue unchanged is rung by the commit it missed.
//!
//! # Limits
//!
//! An item, and all the items in a queue at once, fit in the 8 GiB of sparse space past the
//! hot ring (beyond that `put` fails with an error, the queue unchanged). A record never
//! crosses the spill's end, so one larger than what is left of the spill's current cycle
//! starts the next cycle, and must fit below the reader's page a cycle on: an item more than
//! half the spill's size may not fit even in an empty queue (4 GiB by default; less under a
//! file size limit). Under a file size
//! limit (`ulimit -f`, `RLIMIT_FSIZE`) of the process that makes the queue, the memfd may not
//! grow past it (the kernel would kill the process with `SIGXFSZ`), so the sparse space is
//! cut to what the limit leaves past the header and the ring, and a `put` past that room fails
//! with an error naming the limit; a limit that does not leave the ring and a page past it
//! fails `Queue::new` with an error naming `ulimit -f`. Memory is used only
//! by the pages written: the hot ring once it cycled (256 KiB by default, see
//! [`QueueBuilder::ring_bytes`]) plus the spill's pages of items while they are queued (and
//! up to 64 KiB more, given back in batches). Items
//! are postcard: ends (file descriptors) cannot travel inside them.

mod ring;
mod wake;

use std::cell::RefCell;
use std::marker::PhantomData;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::doorbell::{Awaitable, Doorbell, Listeners};
use crate::error::{Error, Result};
use crate::shm::Shared;
pub use ring::QueueCrash;
pub(crate) use ring::crash_at;
use ring::{Header, Ring};

/// The hot ring's default size.
const DEFAULT_RING_BYTES: usize = 256 << 10;

thread_local! {
    /// Encoding and decoding buffers, reused by each thread's puts and gets.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer (a fresh one if it is in use, as from a
/// `Serialize` impl that puts to a queue).
fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let mut f = Some(f);
    let done =
        SCRATCH.try_with(|cell| cell.try_borrow_mut().ok().map(|mut buf| (f.take().unwrap())(&mut buf)));
    match done {
        Ok(Some(r)) => r,
        _ => (f.take().unwrap())(&mut Vec::new()),
    }
}

/// A multi-producer, multi-consumer FIFO queue of `T` between processes: Python's
/// `multiprocessing.Queue`, in shared memory.
///
/// Share it by `fork` (a forked child inherits it), or send it inside a value over a duplex
/// [`Connection`](crate::Connection), which is also how it reaches the arguments of a process
/// started by `mproc-process` or a pool task. Every copy is the same queue.
///
/// ```
/// # fn main() -> mproc_ipc::Result<()> {
/// use std::time::Duration;
/// use mproc_ipc::Queue;
///
/// let queue = Queue::<String>::with_maxsize(2)?;
/// queue.put(&"first".to_string())?;
/// assert!(queue.try_put(&"second".to_string())?);
/// assert!(queue.full());
/// assert!(!queue.try_put(&"third".to_string())?); // full: not taken
/// assert_eq!(queue.get()?, "first");
/// assert_eq!(queue.qsize(), 1);
/// assert_eq!(queue.try_get()?, Some("second".to_string()));
/// assert!(matches!(queue.get_timeout(Duration::from_millis(1)), Err(mproc_ipc::Error::Timeout)));
/// # Ok(()) }
/// ```
///
/// `&Queue` may be shared between threads, and `clone` gives another handle on the same queue. See `ARCHITECTURE.md` (the queue section) for how it stays whole
/// when a process dies inside `put` or `get`.
pub struct Queue<T> {
    ring: Ring,
    /// Set by [`close`](Queue::close): this handle puts no more.
    closed: AtomicBool,
    _marker: PhantomData<fn(T) -> T>,
}

/// Builds a [`Queue`] or a [`JoinableQueue`] with a bound and a ring size.
#[derive(Debug, Clone)]
pub struct QueueBuilder<T> {
    maxsize: Option<usize>,
    ring_bytes: usize,
    _marker: PhantomData<fn(T) -> T>,
}

impl<T> QueueBuilder<T> {
    /// At most `maxsize` items (`put` waits while the queue holds that many). Unbounded by
    /// default. A `maxsize` of 0 means unbounded, as in Python.
    pub fn maxsize(mut self, maxsize: usize) -> Self {
        self.maxsize = (maxsize > 0).then_some(maxsize);
        self
    }

    /// The size of the hot ring, where small items cycle without a system call (rounded up
    /// to the page size; 256 KiB by default). Items that do not fit it go to sparse memory
    /// past it, which costs page faults and is given back when they are got.
    pub fn ring_bytes(mut self, bytes: usize) -> Self {
        self.ring_bytes = bytes;
        self
    }

    /// The queue.
    pub fn build(self) -> Result<Queue<T>> {
        let maxsize = self.maxsize.map_or(u64::MAX, |m| m as u64);
        Ok(Queue {
            ring: Ring::new(self.ring_bytes as u64, maxsize)?,
            closed: AtomicBool::new(false),
            _marker: PhantomData,
        })
    }

    /// The queue, as a [`JoinableQueue`].
    pub fn joinable(self) -> Result<JoinableQueue<T>> {
        Ok(JoinableQueue { queue: self.build()? })
    }
}

fn deadline_in(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout).unwrap_or(now + Duration::from_secs(86400 * 365))
}

impl<T> Queue<T> {
    /// An unbounded queue. Under a file size limit (`ulimit -f`) its room for items is cut
    /// to the limit, and a limit below its ring is an error (see the queue section of `ARCHITECTURE.md`).
    pub fn new() -> Result<Self> {
        Self::builder().build()
    }

    /// A queue of at most `maxsize` items (0: unbounded, as in Python).
    pub fn with_maxsize(maxsize: usize) -> Result<Self> {
        Self::builder().maxsize(maxsize).build()
    }

    /// A builder, for the bound and the ring's size.
    pub fn builder() -> QueueBuilder<T> {
        QueueBuilder { maxsize: None, ring_bytes: DEFAULT_RING_BYTES, _marker: PhantomData }
    }

    /// The bound given at creation, `None` for none.
    pub fn maxsize(&self) -> Option<usize> {
        self.ring.maxsize().map(|m| m as usize)
    }

    /// How many items the queue holds now. Exact at the moment it is read: the puts and gets
    /// that returned before it are counted (Python's is approximate).
    pub fn qsize(&self) -> usize {
        self.ring.qsize() as usize
    }

    /// Whether the queue holds no item, from the same state [`qsize`](Self::qsize) reads.
    pub fn empty(&self) -> bool {
        self.qsize() == 0
    }

    /// Whether the queue holds `maxsize` items (never for an unbounded one).
    pub fn full(&self) -> bool {
        self.ring.maxsize().is_some_and(|m| self.ring.qsize() >= m)
    }

    /// This process puts no more items through this handle (Python's `close`): later puts
    /// on it fail with [`Error::Misuse`]. Gets still work, and other handles (in this process
    /// or others) are not affected. Nothing needs flushing: every item put is already in the
    /// shared memory. Idempotent.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    fn put_with(&self, value: &T, deadline: Option<Instant>, timeout_is_error: bool) -> Result<bool>
    where
        T: Serialize,
    {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::Misuse("put on a closed queue"));
        }
        with_scratch(|buf| {
            buf.clear();
            // Encoded before anything is locked: a value that does not serialize fails here,
            // the queue untouched.
            crate::codec::encode_append(value, buf)?;
            self.ring.put(buf, deadline, timeout_is_error)
        })
    }

    /// Puts `value` at the end, waiting while the queue is full. When it returns, the item
    /// is in shared memory: this process may exit at once. A value that does not serialize
    /// is [`Error::Encode`], and nothing is put.
    pub fn put(&self, value: &T) -> Result<()>
    where
        T: Serialize,
    {
        self.put_with(value, None, true).map(drop)
    }

    /// Puts `value`, waiting at most `timeout` for room: [`Error::Timeout`] if the queue stayed
    /// full (Python's `put(timeout=...)`, which raises `Full`).
    pub fn put_timeout(&self, value: &T, timeout: Duration) -> Result<()>
    where
        T: Serialize,
    {
        self.put_with(value, Some(deadline_in(timeout)), true).map(drop)
    }

    /// Puts `value` if there is room now: `Ok(false)` (nothing put) if the queue is full
    /// (Python's `put_nowait`).
    pub fn try_put(&self, value: &T) -> Result<bool>
    where
        T: Serialize,
    {
        self.put_with(value, Some(Instant::now()), false)
    }

    fn get_with(&self, deadline: Option<Instant>, timeout_is_error: bool) -> Result<Option<T>>
    where
        T: DeserializeOwned,
    {
        with_scratch(|buf| {
            if !self.ring.get(buf, deadline, timeout_is_error)? {
                return Ok(None);
            }
            // The item is taken: a payload that does not decode is an error for this get, and
            // the next item reads normally.
            crate::codec::from_bytes(buf).map(Some)
        })
    }

    /// Takes the first item, waiting for one as long as it takes.
    pub fn get(&self) -> Result<T>
    where
        T: DeserializeOwned,
    {
        self.get_with(None, true).map(|v| v.expect("a blocking get returns an item"))
    }

    /// Takes the first item, waiting at most `timeout`: [`Error::Timeout`] if none came.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T>
    where
        T: DeserializeOwned,
    {
        self.get_with(Some(deadline_in(timeout)), true)
            .map(|v| v.expect("a timed get returns an item or an error"))
    }

    /// Takes the first item if there is one now (Python's `get_nowait`).
    pub fn try_get(&self) -> Result<Option<T>>
    where
        T: DeserializeOwned,
    {
        self.get_with(Some(Instant::now()), false)
    }
}

impl<T> Clone for Queue<T> {
    /// Another handle on the same queue (its `closed` flag copied).
    fn clone(&self) -> Self {
        Queue {
            ring: self.ring.clone(),
            closed: AtomicBool::new(self.closed.load(Ordering::Relaxed)),
            _marker: PhantomData,
        }
    }
}

impl<T> Awaitable for Queue<T> {
    /// The queue's doorbell: rung after each put, and each get of a bounded queue, while
    /// coroutines listen.
    fn doorbell(&self) -> &Doorbell {
        self.ring.doorbell()
    }

    fn listeners(&self) -> &Listeners {
        self.ring.listeners()
    }
}

impl<T> Awaitable for JoinableQueue<T> {
    fn doorbell(&self) -> &Doorbell {
        self.queue.doorbell()
    }

    fn listeners(&self) -> &Listeners {
        self.queue.listeners()
    }
}

impl<T> AsFd for Queue<T> {
    /// The shared memory's file: what a forked child must keep open (or inherit) for the
    /// queue to travel by value later; the mapping itself survives without it.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.shared().mapping().fd().as_fd()
    }
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("qsize", &self.qsize()).field("maxsize", &self.maxsize()).finish()
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        (self.ring.shared(), self.ring.doorbell()).serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let (shared, bell) = <(Shared<Header>, Doorbell)>::deserialize(deserializer)?;
        let ring = Ring::attach(shared, bell).map_err(serde::de::Error::custom)?;
        Ok(Queue { ring, closed: AtomicBool::new(false), _marker: PhantomData })
    }
}

/// A [`Queue`] whose items are counted until [`task_done`](JoinableQueue::task_done):
/// Python's `JoinableQueue`. It derefs to its `Queue` for `put`, `get` and the rest.
///
/// ```
/// # fn main() -> mproc_ipc::Result<()> {
/// let queue = mproc_ipc::JoinableQueue::<u32>::new()?;
/// queue.put(&7)?;
/// assert_eq!(queue.get()?, 7);
/// queue.task_done()?;
/// queue.join()?; // every item put is done
/// # Ok(()) }
/// ```
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> JoinableQueue<T> {
    /// An unbounded joinable queue.
    pub fn new() -> Result<Self> {
        Queue::builder().joinable()
    }

    /// A joinable queue of at most `maxsize` items (0: unbounded).
    pub fn with_maxsize(maxsize: usize) -> Result<Self> {
        Queue::builder().maxsize(maxsize).joinable()
    }

    /// One item got earlier is done. [`Error::Misuse`] if that is more than the items put
    /// (Python's `ValueError`).
    pub fn task_done(&self) -> Result<()> {
        self.queue.ring.task_done()
    }

    /// Waits until every item put has been marked done. A consumer killed between its `get`
    /// and its `task_done` never marks its item: use [`join_timeout`](Self::join_timeout)
    /// where that can happen.
    pub fn join(&self) -> Result<()> {
        self.queue.ring.join(None)
    }

    /// As [`join`](Self::join), waiting at most `timeout` ([`Error::Timeout`]).
    pub fn join_timeout(&self, timeout: Duration) -> Result<()> {
        self.queue.ring.join(Some(deadline_in(timeout)))
    }
}

impl<T> Clone for JoinableQueue<T> {
    /// Another handle on the same queue.
    fn clone(&self) -> Self {
        JoinableQueue { queue: self.queue.clone() }
    }
}

impl<T> Deref for JoinableQueue<T> {
    type Target = Queue<T>;

    fn deref(&self) -> &Queue<T> {
        &self.queue
    }
}

impl<T> AsFd for JoinableQueue<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.queue.as_fd()
    }
}

impl<T> std::fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinableQueue").field("queue", &self.queue).finish()
    }
}

impl<T> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.queue.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        Queue::deserialize(deserializer).map(|queue| JoinableQueue { queue })
    }
}

/// An unbounded queue with only `put`, `get` and `empty`: Python's `SimpleQueue`.
///
/// ```
/// # fn main() -> mproc_ipc::Result<()> {
/// let queue = mproc_ipc::SimpleQueue::<Vec<u8>>::new()?;
/// queue.put(&vec![1, 2])?;
/// assert_eq!(queue.get()?, [1, 2]);
/// assert!(queue.empty());
/// # Ok(()) }
/// ```
pub struct SimpleQueue<T> {
    queue: Queue<T>,
}

impl<T> SimpleQueue<T> {
    /// An empty queue.
    pub fn new() -> Result<Self> {
        Ok(SimpleQueue { queue: Queue::new()? })
    }

    /// Puts `value` at the end (never waits: the queue is unbounded).
    pub fn put(&self, value: &T) -> Result<()>
    where
        T: Serialize,
    {
        self.queue.put(value)
    }

    /// Takes the first item, waiting for one as long as it takes.
    pub fn get(&self) -> Result<T>
    where
        T: DeserializeOwned,
    {
        self.queue.get()
    }

    /// Takes the first item, waiting at most `timeout` ([`Error::Timeout`]).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T>
    where
        T: DeserializeOwned,
    {
        self.queue.get_timeout(timeout)
    }

    /// Whether the queue holds no item.
    pub fn empty(&self) -> bool {
        self.queue.empty()
    }

    /// This handle puts no more (see [`Queue::close`]).
    pub fn close(&self) {
        self.queue.close()
    }
}

impl<T> Clone for SimpleQueue<T> {
    /// Another handle on the same queue.
    fn clone(&self) -> Self {
        SimpleQueue { queue: self.queue.clone() }
    }
}

impl<T> AsFd for SimpleQueue<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.queue.as_fd()
    }
}

impl<T> std::fmt::Debug for SimpleQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimpleQueue").field("empty", &self.empty()).finish()
    }
}

impl<T> Serialize for SimpleQueue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.queue.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for SimpleQueue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        Queue::deserialize(deserializer).map(|queue| SimpleQueue { queue })
    }
}
