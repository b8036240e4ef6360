//! The robust futex lock under every mproc lock: owner-died hand-over by the kernel, without
//! pthread's general-purpose paths.
//!
//! A [`RawMutex`] is a futex word holding its owner's thread id (TID), plus the two bits the
//! kernel's robust-futex protocol defines (`FUTEX_WAITERS`, `FUTEX_OWNER_DIED`), and a node
//! of a *robust list*. Linux keeps one robust list head per thread (`set_robust_list(2)`);
//! when a thread ends (killed or not), the kernel walks that list and, for each futex whose
//! word holds the thread's TID, sets `FUTEX_OWNER_DIED`, clears the TID and wakes a waiter.
//! The next locker takes the lock and reports [`Taken::OwnerDied`]. No pid is stored and
//! looked up later, so a reused pid cannot pass for the owner.
//!
//! There is one head per thread, and glibc registers its own (for robust pthread mutexes), so
//! ours go on glibc's list, in glibc's node format: the list links `next` fields, a node's
//! `prev` field sits 8 bytes before its `next`, and the futex word sits `futex_offset` bytes
//! from the node (read from the head; -32, as in a 64-bit `pthread_mutex_t`, which this type
//! mirrors: word at 0, `prev` at 24, `next` at 32). Only the owning thread touches its list,
//! so glibc's own robust mutexes and ours interleave on it like glibc's alone do. The window
//! between the atomic that takes (or releases) the word and the list update is covered by the
//! head's `list_op_pending`, which the kernel also looks at.
//!
//! The fast paths are one compare-and-swap to lock and one swap to unlock, plus a few plain
//! stores to the list: an uncontended lock and unlock makes no system call. A locker that
//! finds the lock held spins a while (the holder of a short critical section is usually
//! about to release it), looking at the word less and less often: each look takes the word's
//! cache line from the holder, which must take it back for its next unlock and lock. Then it
//! sets `FUTEX_WAITERS` and sleeps on the word; an unlock that finds `FUTEX_WAITERS` wakes one
//! sleeper. Locks are not fair: a releasing thread that locks again at once usually gets it
//! back (throughput over turn-taking, as in glibc's and std's); a waiter gets its turn when
//! one of its looks finds the lock free between an unlock and the next lock (two processes
//! adding in a loop take turns every 30-80 adds).
//!
//! A thread's TID and its head's address are cached in a thread-local, dropped in a forked
//! child (whose thread has a new TID) through a `pthread_atfork` child handler.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, compiler_fence};
use std::time::Instant;

use rustix::thread::futex;

/// The kernel's robust-futex bits (linux/futex.h).
const WAITERS: u32 = 0x8000_0000;
const OWNER_DIED: u32 = 0x4000_0000;
const TID_MASK: u32 = 0x3fff_ffff;

/// How long a locker spins on a held lock before it sleeps, in `pause`s (about 75 µs where
/// a `pause` takes 25 ns, as on recent Intel Xeons; less where it is shorter).
const SPIN_PAUSES: u32 = 3072;

/// The longest pause between two looks at a held lock, in `pause`s: the gaps double from one
/// up to it.
const MAX_BACKOFF: u32 = 512;

/// Which kind of robust mutex: errors on a relock by its owner, or counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MutexKind {
    /// A second lock by the owning thread is an error (`EDEADLK`), not a hang.
    ErrorCheck,
    /// The owning thread may lock again; it is released after as many unlocks.
    Recursive,
}

/// How a lock was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// From a live owner (or free).
    Clean,
    /// From a thread that died holding it; the lock is usable again, the state it guards may
    /// be half-written.
    OwnerDied,
}

/// A robust, process-shared lock living in shared memory (never moved). Zeroed memory is an
/// unlocked error-checking lock; [`init`](RawMutex::init) sets the kind.
#[repr(C, align(8))]
pub(crate) struct RawMutex {
    /// The futex: the owner's TID (0: free), `WAITERS`, `OWNER_DIED`.
    word: AtomicU32,
    /// How many times the owner holds it (a recursive lock); touched only by the owner.
    count: AtomicU32,
    /// 1 for a recursive lock.
    recursive: AtomicU32,
    _reserved: [AtomicU32; 3],
    /// The robust list node: `prev` and `next` point at `next` fields of other nodes (or at
    /// the thread's head); only the owning thread writes them.
    prev: AtomicUsize,
    next: AtomicUsize,
}

/// The offset of the futex word from a node (its `next` field), as the kernel computes it.
const FUTEX_OFFSET: isize = -(std::mem::offset_of!(RawMutex, next) as isize);
const _: () = assert!(std::mem::offset_of!(RawMutex, prev) + 8 == std::mem::offset_of!(RawMutex, next));
const _: () = assert!(size_of::<RawMutex>() == 40);

/// The kernel's `struct robust_list_head`.
#[repr(C)]
struct RobustHead {
    list: AtomicUsize,
    futex_offset: isize,
    list_op_pending: AtomicUsize,
}

/// This thread, as the locks need it.
#[derive(Clone, Copy)]
struct Me {
    tid: u32,
    head: *const RobustHead,
}

impl Me {
    fn head(&self) -> &RobustHead {
        // SAFETY: the head registered for this thread (by glibc, checked in `slow`), which
        // lives in the thread's own memory for as long as the thread does; only this thread
        // writes it (the kernel reads it when the thread ends).
        unsafe { &*self.head }
    }

    /// Marks `node` as the list operation in progress (covered if the thread dies now).
    #[inline(always)]
    fn pending(&self, node: &AtomicUsize) {
        self.head().list_op_pending.store(node.as_ptr() as usize, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
    }

    #[inline(always)]
    fn done(&self) {
        compiler_fence(Ordering::SeqCst);
        self.head().list_op_pending.store(0, Ordering::Relaxed);
    }
}

/// A node's `prev` field, 8 bytes before its `next` (`None` for the head, whose `prev` is
/// glibc's business, never read by anyone).
fn prev_of(me: &Me, node: usize) -> Option<&AtomicUsize> {
    if node == me.head as usize {
        return None;
    }
    // SAFETY: `node` is on this thread's robust list, which holds only the head and the
    // `next` fields of held locks (ours, and glibc's robust mutexes, whose layout ours
    // mirrors: `futex_offset` was checked): 8 bytes before it is that node's `prev`, aligned
    // and alive while the lock is held (by this thread, the only one that writes it).
    Some(unsafe { &*((node - 8) as *const AtomicUsize) })
}

/// Bumped in every forked child: the thread-local caches of the parent's thread are stale.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's TID and head, valid while the generation matches.
    static ME: Cell<(u64, u32, usize)> = const { Cell::new((0, 0, 0)) };
}

extern "C" fn forked_child() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

#[inline(always)]
fn me() -> io::Result<Me> {
    let (generation, tid, head) = ME.with(Cell::get);
    if generation == FORK_GENERATION.load(Ordering::Relaxed) {
        return Ok(Me { tid, head: head as *const RobustHead });
    }
    me_slow()
}

#[cold]
fn me_slow() -> io::Result<Me> {
    static AT_FORK: std::sync::Once = std::sync::Once::new();
    AT_FORK.call_once(|| {
        // SAFETY: registers a plain function that only bumps an atomic (async-signal-safe,
        // as a child handler after a fork of a multi-threaded process must be).
        unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
    });
    let generation = FORK_GENERATION.load(Ordering::Relaxed);
    let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
    let mut head: *mut RobustHead = std::ptr::null_mut();
    let mut len: libc::size_t = 0;
    // SAFETY: `get_robust_list(0, ..)` writes this thread's head pointer and its length into
    // the two locals it is given.
    let rc = unsafe { libc::syscall(libc::SYS_get_robust_list, 0, &raw mut head, &raw mut len) };
    if rc != 0 || head.is_null() || len != size_of::<RobustHead>() {
        return Err(unsupported());
    }
    // SAFETY: a registered head is glibc's, in this thread's descriptor: readable.
    if unsafe { (*head).futex_offset } != FUTEX_OFFSET {
        return Err(unsupported());
    }
    ME.with(|m| m.set((generation, tid, head as usize)));
    Ok(Me { tid, head })
}

fn unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "this thread has no robust futex list in glibc's format (mproc's locks need glibc on 64-bit Linux)",
    )
}

impl RawMutex {
    /// Initializes the lock at `this`.
    ///
    /// # Safety
    /// `this` must point to zeroed, writable memory for a `RawMutex` that no thread uses yet.
    pub(crate) unsafe fn init(this: *mut RawMutex, kind: MutexKind) -> io::Result<()> {
        // SAFETY: valid, unused memory (the caller's promise); zero is a valid `AtomicU32`.
        unsafe { (*this).recursive.store(u32::from(kind == MutexKind::Recursive), Ordering::Relaxed) };
        Ok(())
    }

    fn node(&self) -> usize {
        self.next.as_ptr() as usize
    }

    /// Puts this lock (just taken) on the thread's robust list, and ends the pending operation.
    #[inline(always)]
    fn acquired(&self, me: &Me) {
        let head = me.head();
        let first = head.list.load(Ordering::Relaxed);
        if let Some(prev) = prev_of(me, first & !1) {
            prev.store(self.node(), Ordering::Relaxed);
        }
        self.next.store(first, Ordering::Relaxed);
        self.prev.store(me.head as usize, Ordering::Relaxed);
        self.count.store(1, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        head.list.store(self.node(), Ordering::Relaxed);
        me.done();
    }

    /// Takes this lock off the thread's robust list (the operation is pending).
    #[inline(always)]
    fn dequeue(&self, me: &Me) {
        let next = self.next.load(Ordering::Relaxed);
        let prev = self.prev.load(Ordering::Relaxed);
        if let Some(p) = prev_of(me, next & !1) {
            p.store(prev, Ordering::Relaxed);
        }
        // SAFETY: `prev` points at the `next` field of the node before this one on this
        // thread's list (or at the head's `list`, its first field): alive, and written only
        // by this thread.
        unsafe { &*((prev & !1) as *const AtomicUsize) }.store(next, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        self.prev.store(0, Ordering::Relaxed);
        self.next.store(0, Ordering::Relaxed);
    }

    /// Locks, waiting until `deadline` (for ever if `None`). `Ok(None)` is a timeout.
    #[inline]
    pub(crate) fn lock_until(&self, deadline: Option<Instant>) -> io::Result<Option<Taken>> {
        let me = me()?;
        me.pending(&self.next);
        if self.word.compare_exchange(0, me.tid, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            self.acquired(&me);
            return Ok(Some(Taken::Clean));
        }
        self.lock_slow(&me, deadline, true)
    }

    /// Takes the lock without waiting; `Ok(None)` if another thread holds it.
    #[inline]
    pub(crate) fn try_lock(&self) -> io::Result<Option<Taken>> {
        let me = me()?;
        me.pending(&self.next);
        if self.word.compare_exchange(0, me.tid, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            self.acquired(&me);
            return Ok(Some(Taken::Clean));
        }
        self.lock_slow(&me, Some(Instant::now()), false)
    }

    #[cold]
    fn lock_slow(&self, me: &Me, deadline: Option<Instant>, wait: bool) -> io::Result<Option<Taken>> {
        let mut slept = false;
        let (mut spun, mut backoff) = (0, 1);
        loop {
            let cur = self.word.load(Ordering::Relaxed);
            let owner = cur & TID_MASK;
            if owner == 0 {
                // Free, or its owner died (`OWNER_DIED`, set by the kernel). After a sleep,
                // others may sleep too: keep `WAITERS` so that the unlock wakes one.
                let new = me.tid | (cur & WAITERS) | if slept { WAITERS } else { 0 };
                if self.word.compare_exchange(cur, new, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    self.acquired(me);
                    return Ok(Some(if cur & OWNER_DIED != 0 { Taken::OwnerDied } else { Taken::Clean }));
                }
                continue;
            }
            if owner == me.tid {
                me.done();
                if self.recursive.load(Ordering::Relaxed) == 0 {
                    return Err(io::Error::from_raw_os_error(libc::EDEADLK));
                }
                let count = self.count.load(Ordering::Relaxed);
                let Some(count) = count.checked_add(1) else {
                    return Err(io::Error::from_raw_os_error(libc::EAGAIN));
                };
                self.count.store(count, Ordering::Relaxed);
                return Ok(Some(Taken::Clean));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if !wait || left.is_some_and(|left| left.is_zero()) {
                me.done();
                return Ok(None);
            }
            // Look again later, and later each time: a look pulls the lock's cache line away
            // from a holder that keeps taking it, which must win it back for its next unlock
            // and lock, so looks close together make every one of its turns slow (and the
            // turns short). Spaced out, they leave it long runs at full speed.
            if spun < SPIN_PAUSES && !slept {
                for _ in 0..backoff {
                    std::hint::spin_loop();
                }
                spun += backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            if cur & WAITERS == 0
                && self
                    .word
                    .compare_exchange(cur, cur | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            let ts =
                left.map(|t| futex::Timespec { tv_sec: t.as_secs() as _, tv_nsec: t.subsec_nanos() as _ });
            // Shared (not private): the word is in memory other processes map. Sleeps only
            // while the word is unchanged; woken, changed (AGAIN), interrupted or timed out,
            // it looks again.
            let _ = futex::wait(&self.word, futex::Flags::empty(), cur | WAITERS, ts.as_ref());
            slept = true;
        }
    }

    /// Unlocks. An error (`EPERM`) if this thread does not hold it: a wrong unlock is refused,
    /// never undefined.
    #[inline]
    pub(crate) fn unlock(&self) -> io::Result<()> {
        let me = me()?;
        if self.word.load(Ordering::Relaxed) & TID_MASK != me.tid {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        let count = self.count.load(Ordering::Relaxed);
        if count > 1 && self.recursive.load(Ordering::Relaxed) != 0 {
            self.count.store(count - 1, Ordering::Relaxed);
            return Ok(());
        }
        me.pending(&self.next);
        self.dequeue(&me);
        let old = self.word.swap(0, Ordering::Release);
        if old & WAITERS != 0 {
            let _ = futex::wake(&self.word, futex::Flags::empty(), 1);
        }
        me.done();
        Ok(())
    }
}

impl RawMutex {
    /// The futex word (for a wait on several words, [`WaitSet`]).
    pub(crate) fn word(&self) -> &AtomicU32 {
        &self.word
    }

    /// Makes the holder's end observable: sets `FUTEX_WAITERS` on a held lock, so that the
    /// kernel, when the holder ends, wakes a waiter on the word (it wakes only if that bit is
    /// set).
    pub(crate) fn watch_owner(&self) -> Watch {
        loop {
            let cur = self.word.load(Ordering::Relaxed);
            if cur & TID_MASK == 0 {
                return if cur & OWNER_DIED != 0 { Watch::Died } else { Watch::Free };
            }
            if cur & WAITERS != 0 {
                return Watch::Held(cur);
            }
            if self.word.compare_exchange(cur, cur | WAITERS, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                return Watch::Held(cur | WAITERS);
            }
        }
    }
}

/// Whether the lock whose futex word is `word` is held by a thread of this process (then it
/// is linked on that thread's robust list, and its memory must stay mapped). Conservative: an
/// answer the system does not give is "held".
pub(crate) fn held_in_this_process(word: &AtomicU32) -> bool {
    let tid = word.load(Ordering::Relaxed) & TID_MASK;
    if tid == 0 {
        return false;
    }
    // Signal 0 only checks that `tid` is a thread of this process. A thread that ended is
    // gone from it only after the kernel walked its robust list.
    // SAFETY: `tgkill` with signal 0 sends nothing; it reads its integer arguments only.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid as libc::pid_t, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// What [`RawMutex::watch_owner`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watch {
    /// Held: the word's value to wait on (a change, or the kernel's wake at the holder's
    /// end, ends the wait).
    Held(u32),
    /// Nobody holds it.
    Free,
    /// Its holder died (nobody took it since).
    Died,
}

/// The kernel's `struct futex_waitv` (linux/futex.h).
#[derive(Clone, Copy)]
#[repr(C)]
struct FutexWaitv {
    val: u64,
    uaddr: u64,
    flags: u32,
    reserved: u32,
}

/// `FUTEX2_SIZE_U32`: a 32-bit futex (shared: without `FUTEX2_PRIVATE`).
const FUTEX2_SIZE_U32: u32 = 0x02;

/// How many words one `futex_waitv(2)` takes at most (the kernel's `FUTEX_WAITV_MAX`).
pub(crate) const WAITV_MAX: usize = 128;

/// The words one [`wait`](WaitSet::wait) sleeps on, gathered on the stack (a wait allocates
/// nothing): each with the value it must still hold when the sleep starts.
pub(crate) struct WaitSet<'a> {
    waitv: [FutexWaitv; WAITV_MAX],
    len: usize,
    /// The words are borrowed for as long as the set lives.
    _words: std::marker::PhantomData<&'a AtomicU32>,
}

impl<'a> WaitSet<'a> {
    pub(crate) fn new() -> Self {
        let empty = FutexWaitv { val: 0, uaddr: 0, flags: 0, reserved: 0 };
        WaitSet { waitv: [empty; WAITV_MAX], len: 0, _words: std::marker::PhantomData }
    }

    /// Adds `word`, expected to hold `val`; `false` (and nothing added) when the set is full.
    pub(crate) fn push(&mut self, word: &'a AtomicU32, val: u32) -> bool {
        let Some(slot) = self.waitv.get_mut(self.len) else { return false };
        *slot = FutexWaitv {
            val: u64::from(val),
            uaddr: word.as_ptr() as u64,
            flags: FUTEX2_SIZE_U32,
            reserved: 0,
        };
        self.len += 1;
        true
    }

    /// How many words it holds.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Sleeps until one of the words is woken, or one differs from its expected value when
    /// the sleep starts, or `deadline` passes (`futex_waitv(2)`, Linux 5.16). `Ok(false)`:
    /// the deadline passed. `ENOSYS` on an older kernel.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> io::Result<bool> {
        let abs = deadline.map(|d| {
            let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
            let left = d.saturating_duration_since(Instant::now());
            let mut sec = now.tv_sec.saturating_add(left.as_secs() as i64);
            let mut nsec = now.tv_nsec + i64::from(left.subsec_nanos());
            if nsec >= 1_000_000_000 {
                nsec -= 1_000_000_000;
                sec = sec.saturating_add(1);
            }
            libc::timespec { tv_sec: sec as libc::time_t, tv_nsec: nsec as _ }
        });
        let ts = abs.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: the first `len` entries of `waitv` are valid, each naming a live atomic word
        // (borrowed for `'a`, which outlives `self`); `ts` is null or a valid timespec on the
        // stack; the kernel only reads them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_futex_waitv,
                self.waitv.as_ptr(),
                self.len as libc::c_uint,
                0 as libc::c_uint,
                ts,
                libc::CLOCK_MONOTONIC,
            )
        };
        if rc >= 0 {
            return Ok(true);
        }
        match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ETIMEDOUT) => Ok(false),
            // A word already differed (EAGAIN) or a signal came (EINTR): look again.
            e if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => Ok(true),
            e => Err(e),
        }
    }
}
