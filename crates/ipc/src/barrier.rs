//! Python's `multiprocessing.Barrier`, which also breaks when one of its parties dies.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::shm::{LockError, Shared, ShmCondvar, ShmGuard, ShmMutex};

/// How many threads at once can be watched for death (more parties still work; a death
/// among the ones past this is then noticed only by a timeout).
const SLOTS: usize = 64;

/// parties, count waiting, generation, broken (the generation it breaks, plus 1), id.
type Header = (ShmMutex, ShmCondvar, [AtomicU64; 5]);
/// A registered thread's presence lock, held for as long as it is registered.
type Slots = [ShmMutex; SLOTS];

const PARTIES: usize = 0;
const COUNT: usize = 1;
const GENERATION: usize = 2;
const BROKEN: usize = 3;
const ID: usize = 4;

/// The barrier was broken (by [`abort`](Barrier::abort), a timeout, or a party that died):
/// Python's `BrokenBarrierError`. It stays broken until [`reset`](Barrier::reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokenBarrier;

impl std::fmt::Display for BrokenBarrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the barrier is broken (aborted, timed out, or a party died)")
    }
}

impl std::error::Error for BrokenBarrier {}

/// Python's `multiprocessing.Barrier(parties)`: `wait` returns once `parties` threads (in any
/// processes) wait on it, then it is ready for the next round.
///
/// A barrier is also broken when a party dies. A thread that waits on a barrier registers in it (it
/// holds a robust presence lock, released when the thread ends or drops its last use of the
/// barrier); a process killed, or ending without dropping the barrier (other than an mproc child
/// whose function returned: see below), leaves the lock "owner died". Waiters sleep on the
/// barrier's condition *and* on the presence locks of the registered parties at once
/// (`futex_waitv`; the kernel wakes them when it marks a lock "owner died"), and break the barrier
/// instead of waiting for ever for a party that will not come. No polling (on a kernel before Linux
/// 5.16, without `futex_waitv`, they look every 50 ms instead).
///
/// A thread that *receives* a barrier (deserializes it: a Spawn or ForkServer child, or a pool
/// task, gets it in its arguments; or from a [`Connection`](crate::Connection)) registers then,
/// before any `wait`: a party that dies before its first `wait` breaks the barrier too. A child a
/// Fork start runs `f(args)` in (mproc-process's `spawn_fn`) registers in the barriers in `args`
/// before `f` starts; one that runs a closure (`Builder::spawn`), in the barriers the closure owns,
/// before it starts (found by handle counts, see mproc-ipc's `__private::closure_parties`). A
/// forked child of another making, or a thread given a clone, registers at its first `wait` (until
/// then, its death is noticed only by a timeout).
///
/// A party leaves (and breaks nothing) when its process drops its last handle on the barrier, when
/// its thread ends normally, or when the function of an mproc child returns (its process then exits
/// without dropping anything, and that exit is not a death).
///
/// A thread is one party however many handles on the barrier it holds: a process maps a barrier
/// once, and a barrier received again (two clones in one message, or sent twice) shares that
/// mapping and counts with its other handles. Dropping some of them leaves the thread a party; its
/// threads are parties each (as Python's threads waiting on one `Barrier`), counted by who waits,
/// not by handles.
///
/// ```
/// # fn main() -> mproc_ipc::Result<()> {
/// let barrier = mproc_ipc::Barrier::new(2)?;
/// let other = barrier.clone();
/// let t = std::thread::spawn(move || other.wait());
/// let a = barrier.wait().unwrap();
/// let b = t.join().unwrap().unwrap();
/// assert_eq!(a + b, 1, "indexes 0 and 1");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Barrier {
    inner: Arc<Inner>,
}

/// A barrier's regions, mapped once per process: every handle on it in this process shares
/// them (see [`LIVE`]).
#[derive(Debug)]
struct Inner {
    header: Shared<Header>,
    slots: Shared<Slots>,
}

/// The barriers this process holds, by id: a barrier received again shares the mapping the
/// process has (so its handles are counted together, and it costs no more fds), and a child
/// forked to run a closure looks for the ones it owns among them ([`closure_parties`]). Kept
/// under [`crate::sys::forks::locked`]: a forked child starts its own afresh.
static LIVE: Mutex<Live> = Mutex::new(Live { forks: 0, entries: Vec::new() });

struct Live {
    /// The count of forks the entries were made at: another is a forked child's copy.
    forks: u64,
    entries: Vec<(u64, Weak<Inner>)>,
}

/// Runs `f` on this process's [`LIVE`] entries (the dead ones gone).
fn live<R>(f: impl FnOnce(&mut Vec<(u64, Weak<Inner>)>) -> R) -> R {
    crate::sys::forks::locked(|forks| {
        let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
        if live.forks != forks {
            // A forked child: the parent's barriers are the parent's (their handles here are
            // copies, counted with the parent's).
            live.forks = forks;
            live.entries.clear();
        }
        live.entries.retain(|(_, inner)| inner.strong_count() > 0);
        f(&mut live.entries)
    })
}

/// How many `Barrier` handles this process holds: a [`join_parties_in`] walks a value only
/// when there is one (a forked child holds copies of its parent's, so counts them too).
static HANDLES: AtomicUsize = AtomicUsize::new(0);

impl Clone for Barrier {
    fn clone(&self) -> Self {
        Barrier::counted(self.inner.clone())
    }
}

impl Serialize for Barrier {
    /// As its fields; in a [`join_parties_in`] walk, registers the calling thread instead.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        if crate::fdpass::walking() {
            self.inner.join();
            return serializer.serialize_unit();
        }
        let mut s = serializer.serialize_struct("Barrier", 2)?;
        s.serialize_field("header", &self.inner.header)?;
        s.serialize_field("slots", &self.inner.slots)?;
        s.end()
    }
}

/// Registers the calling thread as a party of every [`Barrier`] in `value` (as receiving
/// `value` would: see the type's docs). For a child forked to run `f(value)`: it holds the
/// barriers in `value` from its start, so its death before its first `wait` breaks them too.
/// Free when this process holds no barrier; otherwise one walk over `value`'s encoding,
/// writing nothing and duplicating no fd.
pub fn join_parties_in<T: Serialize + ?Sized>(value: &T) {
    if HANDLES.load(Ordering::Relaxed) > 0 {
        crate::fdpass::walk(value);
    }
}

/// The parent's side of [`closure_parties`]: after the fork (once the parent has dropped its
/// copy of the closure), [`tell`](Self::tell) tells the child which barriers it owns.
pub struct ClosureParties {
    held: Vec<Weak<Inner>>,
    before: Vec<usize>,
    tell: std::io::PipeWriter,
    /// A read end of the parent's own, open while it tells: a child already gone then makes
    /// the write land in the pipe, not fail with `EPIPE` (or `SIGPIPE`).
    _read_end: std::io::PipeReader,
}

/// At most this many of the parent's barriers are looked at for a closure child (the flags
/// then fit in a pipe's buffer, so telling never waits); one past them registers at its
/// first `wait`.
const CLOSURE_BARRIERS: usize = 4096;

/// The child's side of [`closure_parties`], moved into the closure the child runs:
/// [`join`](Self::join) registers it in the barriers its closure owns, before the closure
/// starts.
pub struct ChildParties {
    held: Vec<Weak<Inner>>,
    told: std::io::PipeReader,
}

impl std::fmt::Debug for ClosureParties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClosureParties({} barriers)", self.held.len())
    }
}

impl std::fmt::Debug for ChildParties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChildParties({} barriers)", self.held.len())
    }
}

/// For a child forked to run a closure: which barriers the closure owns, so that the child
/// is a party of those from its start (as a `spawn_fn` child is of the barriers in its
/// arguments). `None` (and free) when this process holds no barrier.
///
/// The closure cannot be walked as arguments are, but its handles can be counted: the
/// barriers it owns (captured, at any depth) are those whose handle count in this process
/// falls when the parent drops its copy of the closure after the fork. Make the two sides, move the child's into the closure with `f`, fork,
/// then call [`ClosureParties::tell`] in the parent. The child must not keep its copy of
/// [`ClosureParties::fd`] open (a parent that dies before telling then leaves the child
/// registered in nothing instead of waiting for ever). A handle of such a barrier cloned or
/// dropped by another thread of the parent meanwhile can blur the count: the child then
/// registers at its first `wait` instead, or in a barrier it does not use.
pub fn closure_parties() -> crate::Result<Option<(ClosureParties, ChildParties)>> {
    if HANDLES.load(Ordering::Relaxed) == 0 {
        return Ok(None);
    }
    // Weak: the handle counts are the handles' only (another spawn's lists, made meanwhile,
    // count nothing).
    let held: Vec<Weak<Inner>> =
        live(|entries| entries.iter().map(|(_, inner)| inner.clone()).take(CLOSURE_BARRIERS).collect());
    if held.is_empty() {
        return Ok(None);
    }
    let (told, tell) = std::io::pipe()?;
    let _read_end = told.try_clone()?;
    let child = ChildParties { held: held.clone(), told };
    let before = held.iter().map(Weak::strong_count).collect();
    Ok(Some((ClosureParties { held, before, tell, _read_end }, child)))
}

impl ClosureParties {
    /// The fd the child must close (`Builder::close_in_child`'s way) as it starts.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.tell.as_fd()
    }

    /// In the parent, after the fork: tells the child which barriers its closure owns (one
    /// byte per barrier of the child's side, 1 for a party). The parent's copy of the
    /// closure (with the child's side in it) must be dropped by now.
    pub fn tell(self) {
        use std::io::Write;
        let flags: Vec<u8> = self
            .held
            .iter()
            .zip(&self.before)
            .map(|(inner, &before)| u8::from(before > inner.strong_count()))
            .collect();
        let mut tell = self.tell;
        // A child that is gone reads nothing: nothing to do about it.
        let _ = tell.write_all(&flags);
    }
}

impl ChildParties {
    /// In the child, before its closure starts: registers the calling thread as a party of
    /// each barrier the closure owns (told by the parent; none if the parent ends first).
    pub fn join(self) {
        use std::io::Read;
        let mut flags = vec![0u8; self.held.len()];
        let mut told = self.told;
        if told.read_exact(&mut flags).is_err() {
            return;
        }
        for (inner, flag) in self.held.iter().zip(flags) {
            // Alive here: the parent's handles on it are in this copy of its memory.
            if let Some(inner) = inner.upgrade().filter(|_| flag == 1) {
                inner.join();
            }
        }
    }
}

/// Ends every registration of the calling thread: a child ending normally (its function has
/// returned) leaves the barriers it held, whose other parties must not take its end for a
/// death. Its registrations would otherwise stay held until the process ends, when the
/// kernel marks them "owner died", as for a process killed.
///
/// Free when this process holds no barrier handle (a thread's registrations end with the
/// process's last handle): a forked child that held none touches no thread-local here, whose
/// first use would register a destructor and fault in pages the fork shared with its parent.
#[inline]
pub fn leave_barriers() {
    if HANDLES.load(Ordering::Relaxed) == 0 {
        return;
    }
    let _ = REGISTERED.try_with(|registered| {
        if let Ok(mut registered) = registered.try_borrow_mut() {
            registered.clear();
        }
    });
}

impl<'de> Deserialize<'de> for Barrier {
    /// Registers the receiving thread as a party (see the type's docs).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "Barrier")]
        struct Received {
            header: Shared<Header>,
            slots: Shared<Slots>,
        }
        let Received { header, slots } = Received::deserialize(deserializer)?;
        let id = header.2[ID].load(Ordering::SeqCst);
        // The mapping this process has of it, if any (the new one is then dropped).
        let (inner, unused) = live(|entries| {
            match entries.iter().filter(|(i, _)| *i == id).find_map(|(_, inner)| inner.upgrade()) {
                Some(known) => (known, Some((header, slots))),
                None => {
                    let inner = Arc::new(Inner { header, slots });
                    entries.push((id, Arc::downgrade(&inner)));
                    (inner, None)
                }
            }
        });
        drop(unused); // unmapped outside the lock (a fork waits for it)
        inner.join();
        Ok(Barrier::counted(inner))
    }
}

/// A thread's registration: the slot whose presence lock it holds.
struct Registration {
    id: u64,
    slots: Shared<Slots>,
    slot: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // In the registering thread (a thread-local's destructor, or `Barrier`'s drop). A
        // forked child's copy of its parent's registration owns nothing: a robust mutex
        // refuses an unlock by a thread that does not own it (`EPERM`).
        let _ = self.slots[self.slot].raw().unlock();
    }
}

thread_local! {
    static REGISTERED: RefCell<Vec<Registration>> = const { RefCell::new(Vec::new()) };
}

fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

impl Barrier {
    fn counted(inner: Arc<Inner>) -> Barrier {
        HANDLES.fetch_add(1, Ordering::Relaxed);
        Barrier { inner }
    }

    /// A barrier for `parties` threads (at least 1).
    pub fn new(parties: usize) -> crate::Result<Barrier> {
        if parties == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a barrier needs at least 1 party",
            )
            .into());
        }
        let header = Shared::<Header>::new()?;
        header.2[PARTIES].store(parties as u64, Ordering::SeqCst);
        let mut id = [0u8; 8];
        rustix::rand::getrandom(&mut id, rustix::rand::GetRandomFlags::empty())?;
        header.2[ID].store(u64::from_ne_bytes(id), Ordering::SeqCst);
        let inner = Arc::new(Inner { header, slots: Shared::new()? });
        live(|entries| entries.push((u64::from_ne_bytes(id), Arc::downgrade(&inner))));
        Ok(Barrier::counted(inner))
    }

    /// How many parties it waits for.
    pub fn parties(&self) -> usize {
        self.inner.parties()
    }

    /// How many are waiting now.
    pub fn n_waiting(&self) -> usize {
        self.inner.n_waiting()
    }

    /// Whether it is broken.
    pub fn broken(&self) -> bool {
        self.inner.broken()
    }

    /// Waits until every party waits; returns this thread's index (0 to `parties - 1`, a
    /// different one for each), or [`BrokenBarrier`].
    pub fn wait(&self) -> Result<usize, BrokenBarrier> {
        self.inner.wait_until(None)
    }

    /// As [`wait`](Barrier::wait), at most `timeout`: a timeout breaks the barrier (for every
    /// waiter), as in Python.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize, BrokenBarrier> {
        self.inner.wait_until(deadline_after(timeout))
    }

    /// Breaks the barrier: waiters now and later get [`BrokenBarrier`] until a `reset`.
    pub fn abort(&self) {
        self.inner.abort();
    }

    /// Makes the barrier whole and empty again; threads waiting now get [`BrokenBarrier`].
    pub fn reset(&self) {
        self.inner.reset();
    }
}

impl Inner {
    /// Registers this thread (if it is not yet) and then wakes the sleepers: they watch the
    /// presence locks registered when they went to sleep, so they look again and watch this
    /// one too.
    fn join(&self) {
        let joined = self.register();
        if joined != Joined::Already {
            let _g = self.lock();
            self.settle(joined);
        }
    }

    /// After a registration, the lock held: a dead party's slot taken over breaks the
    /// barrier (the death would otherwise be hidden); a new party wakes the sleepers.
    fn settle(&self, joined: Joined) {
        match joined {
            Joined::OverTheDead => self.break_locked(),
            Joined::New => self.header.1.notify_all(),
            Joined::Already => {}
        }
    }

    /// How many parties it waits for.
    fn parties(&self) -> usize {
        self.header.2[PARTIES].load(Ordering::SeqCst) as usize
    }

    /// How many are waiting now.
    fn n_waiting(&self) -> usize {
        self.header.2[COUNT].load(Ordering::SeqCst) as usize
    }

    /// Whether it is broken.
    fn broken(&self) -> bool {
        let s = &self.header.2;
        s[BROKEN].load(Ordering::SeqCst) == s[GENERATION].load(Ordering::SeqCst) + 1
    }

    fn lock(&self) -> ShmGuard<'_> {
        loop {
            match self.header.0.lock() {
                Ok(g) => return g,
                Err(LockError::OwnerDied(g)) => {
                    // A party died inside: the state may be half-updated.
                    self.break_locked();
                    return g;
                }
                Err(_) => std::thread::yield_now(),
            }
        }
    }

    /// Breaks the current generation (the lock held) and wakes its waiters.
    fn break_locked(&self) {
        let s = &self.header.2;
        s[BROKEN].store(s[GENERATION].load(Ordering::SeqCst) + 1, Ordering::SeqCst);
        self.header.1.notify_all();
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<usize, BrokenBarrier> {
        let joined = self.register();
        let s = &self.header.2;
        let mut g = self.lock();
        // The waiters watch the presence locks registered when they went to sleep: a new one
        // makes them look again, so that they watch it too.
        self.settle(joined);
        if self.broken() {
            return Err(BrokenBarrier);
        }
        let generation = s[GENERATION].load(Ordering::SeqCst);
        let index = s[COUNT].fetch_add(1, Ordering::SeqCst) as usize;
        if index + 1 >= self.parties() {
            s[COUNT].store(0, Ordering::SeqCst);
            s[GENERATION].store(generation + 1, Ordering::SeqCst);
            self.header.1.notify_all();
            return Ok(index);
        }
        loop {
            if s[GENERATION].load(Ordering::SeqCst) != generation {
                return Ok(index);
            }
            if s[BROKEN].load(Ordering::SeqCst) == generation + 1 {
                return Err(BrokenBarrier);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) || self.a_party_died() {
                self.break_locked();
                return Err(BrokenBarrier);
            }
            if self.header.1.wait_watching(&mut g, deadline, &self.slots[..]).owner_died {
                self.break_locked();
            }
        }
    }

    /// Whether a registered thread ended without unregistering (its presence lock reads
    /// "owner died"). Each such slot is freed as it is found.
    fn a_party_died(&self) -> bool {
        let mut died = false;
        for slot in self.slots.iter() {
            // Otherwise free, held by a live thread, or by this one.
            if let Err(LockError::OwnerDied(_)) = slot.try_lock() {
                died = true;
            }
        }
        died
    }

    /// Registers this thread in a free slot, unless it holds one already. A slot whose holder
    /// died is free too, but taking it over clears the "owner died" that the others look
    /// for: the caller must break the barrier then ([`Joined::OverTheDead`]).
    fn register(&self) -> Joined {
        let id = self.header.2[ID].load(Ordering::SeqCst);
        REGISTERED.try_with(|registered| {
            let mut registered = registered.borrow_mut();
            // A forked child's copy of its parent's registrations holds nothing: the parent's
            // thread owns those locks (a lock this thread owns answers `EDEADLK`).
            registered.retain(|r| {
                matches!(r.slots[r.slot].try_lock(), Err(LockError::Io(ref e)) if e.raw_os_error() == Some(EDEADLK))
            });
            if registered.iter().any(|r| r.id == id) {
                return Joined::Already;
            }
            for (i, slot) in self.slots.iter().enumerate() {
                let (g, joined) = match slot.try_lock() {
                    Ok(g) => (g, Joined::New),
                    Err(LockError::OwnerDied(g)) => (g, Joined::OverTheDead),
                    Err(_) => continue,
                };
                std::mem::forget(g); // held until the registration drops
                registered.push(Registration { id, slots: self.slots.clone(), slot: i });
                return joined;
            }
            Joined::Already
        })
        .unwrap_or(Joined::Already)
    }

    /// Breaks the barrier: waiters now and later get [`BrokenBarrier`] until a `reset`.
    fn abort(&self) {
        let _g = self.lock();
        self.break_locked();
    }

    /// Makes the barrier whole and empty again; threads waiting now get [`BrokenBarrier`].
    fn reset(&self) {
        let _g = self.lock();
        let s = &self.header.2;
        let generation = s[GENERATION].load(Ordering::SeqCst);
        if s[COUNT].load(Ordering::SeqCst) > 0 {
            s[BROKEN].store(generation + 1, Ordering::SeqCst);
        }
        s[COUNT].store(0, Ordering::SeqCst);
        s[GENERATION].store(generation + 1, Ordering::SeqCst);
        self.header.1.notify_all();
    }
}

/// What a [`Barrier::register`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Joined {
    /// Nothing: registered already (or no slot free, or the thread is ending).
    Already,
    /// Took a free slot.
    New,
    /// Took the slot of a party that died: the barrier must break.
    OverTheDead,
}

/// What a robust mutex answers a `try_lock` by the thread that holds it.
const EDEADLK: i32 = rustix::io::Errno::DEADLK.raw_os_error();

impl Drop for Barrier {
    fn drop(&mut self) {
        HANDLES.fetch_sub(1, Ordering::Relaxed);
        if Arc::strong_count(&self.inner) > 1 {
            // A clone lives on (this thread's, or one it gave away): a party that drops a
            // clone is still a party, and its death must still break the barrier.
            return;
        }
        // This thread's registration in this barrier ends with its last handle.
        let id = self.inner.header.2[ID].load(Ordering::SeqCst);
        let _ = REGISTERED.try_with(|registered| {
            if let Ok(mut registered) = registered.try_borrow_mut() {
                registered.retain(|r| r.id != id);
            }
        });
    }
}
