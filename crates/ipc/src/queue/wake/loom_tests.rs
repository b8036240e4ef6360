//! Model check of the queue's sleep/wake protocol with loom: consumers and producers on a
//! small queue, running the protocol's own code (`until_item`, `until_room`, `sleep`,
//! `notify`, `after_get`, `after_put`, on loom's atomics), with every interleaving up to a
//! preemption bound and every value the memory model lets each load read.
//!
//! What is modelled: the words (`PUTS`, `GETS`, the hints, the sleeper counts, the
//! `WAKING_` flags), each side's lock (a loom mutex), a commit (the store of the commit word,
//! with the real ordering: the data path is not modelled), and the condition variable as
//! `ShmCondvar` does it (`crate::shm`: a sequence number and a waiter count, `wait_since`
//! and `notify`) over a model of the futex (the kernel's hash bucket lock, a queue of
//! sleepers, and a sleep that ends only when woken: no slice, no timeout). Not modelled: the
//! looks before the lock (`spin_until`; they only delay), deadlines, killed processes, the
//! doorbell (its own model is in `mproc-coroutine`'s `shared/loom_tests.rs`).
//!
//! The property: no sleeper stays asleep while what it waits for is there and no wake-up is
//! on its way to it. The real sleep would end with its 50 ms slice; here it lasts until a
//! wake-up, so a lost one leaves the sleeper asleep when everyone else is done or asleep too,
//! which loom reports as a deadlock. (A wake-up lost at a commit other than the last is
//! found in the scenarios where it is the last.) Each test also checks that every item was
//! got and that a bounded queue never held more than its bound.
//!
//! Run by `cargo xtask test`, as `RUSTFLAGS="--cfg loom" cargo test -p mproc-ipc --lib
//! --target-dir target/loom -- queue::wake::loom_tests` (about 80 s of CPU, most of it the
//! two tests that undo the clear on arrival; loom itself is built optimised, see the
//! workspace's `Cargo.toml`). The `#[ignore]`d scenarios of four threads take minutes each
//! (`-- --ignored`); `LOOM_MAX_PREEMPTIONS` sets a deeper bound.

use std::sync::atomic::Ordering;

use loom::sync::atomic::{AtomicU32, AtomicU64, fence};
use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
use loom::thread;

use super::*;

/// Every interleaving with at most this many preemptions (the lost wake-ups of the old
/// protocol need three), unless `LOOM_MAX_PREEMPTIONS` says otherwise (for a deeper run by
/// hand).
const PREEMPTIONS: usize = 3;

fn model(test: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(PREEMPTIONS);
    }
    builder.check(test);
}

/// A side's lock held (`ShmGuard`): let go and taken again by a wait.
struct Guard<'a> {
    lock: &'a Mutex<()>,
    held: Option<MutexGuard<'a, ()>>,
}

impl<'a> Guard<'a> {
    fn lock(lock: &'a Mutex<()>) -> Guard<'a> {
        Guard { lock, held: Some(lock.lock().unwrap()) }
    }
}

/// The futex's side in the kernel: who sleeps on the word (ids), under the bucket's lock.
#[derive(Default)]
struct Kernel {
    next: usize,
    asleep: Vec<usize>,
}

/// `ShmCondvar` over a model of the futex.
struct Cond {
    seq: AtomicU32,
    waiters: AtomicU32,
    kernel: Mutex<Kernel>,
    woken: Condvar,
    /// Whether a sleeper clears the wake-up-on-its-way flag as it comes (false: the protocol
    /// before 9a75942).
    clears_flag_on_arrival: bool,
}

impl Cond {
    fn new(clears_flag_on_arrival: bool) -> Cond {
        Cond {
            seq: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
            kernel: Mutex::new(Kernel::default()),
            woken: Condvar::new(),
            clears_flag_on_arrival,
        }
    }

    /// `futex::wait`: sleeps (until woken: no timeout) if the word still reads `seq`.
    fn futex_wait(&self, seq: u32) {
        let mut kernel = self.kernel.lock().unwrap();
        // The kernel's full barrier before it reads the word.
        fence(Ordering::SeqCst);
        if self.seq.load(Ordering::SeqCst) != seq {
            return;
        }
        let me = kernel.next;
        kernel.next += 1;
        kernel.asleep.push(me);
        while kernel.asleep.contains(&me) {
            kernel = self.woken.wait(kernel).unwrap();
        }
    }

    /// `futex::wake`: wakes up to `n` sleepers.
    fn futex_wake(&self, n: usize) {
        let mut kernel = self.kernel.lock().unwrap();
        let n = n.min(kernel.asleep.len());
        kernel.asleep.drain(..n);
        self.woken.notify_all();
    }

    /// `ShmCondvar::notify`.
    fn notify(&self, n: usize) {
        sc_rmw(Ordering::SeqCst, || self.seq.fetch_add(1, Ordering::SeqCst));
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.futex_wake(n);
        }
    }
}

impl<'a> Sleep<Guard<'a>> for Cond {
    fn sequence(&self) -> u32 {
        fence(Ordering::SeqCst);
        self.seq.load(Ordering::SeqCst)
    }

    /// `ShmCondvar::wait_since`, without the slice.
    fn wait_since(&self, guard: &mut Guard<'a>, seq: u32, _deadline: Option<Instant>) {
        sc_rmw(Ordering::SeqCst, || self.waiters.fetch_add(1, Ordering::SeqCst));
        guard.held = None;
        self.futex_wait(seq);
        sc_rmw(Ordering::SeqCst, || self.waiters.fetch_sub(1, Ordering::SeqCst));
        guard.held = Some(guard.lock.lock().unwrap());
    }

    fn notify_one(&self) {
        self.notify(1);
    }

    fn notify_all(&self) {
        self.notify(usize::MAX);
    }

    fn clears_flag_on_arrival(&self) -> bool {
        self.clears_flag_on_arrival
    }
}

/// A queue without data: its words, its two locks and two condvars.
struct Queue {
    words: Vec<AtomicU64>,
    get_lock: Mutex<()>,
    put_lock: Mutex<()>,
    not_empty: Cond,
    not_full: Cond,
    maxsize: u64,
}

impl Queue {
    fn new(maxsize: Option<u64>, clears: Clears) -> Arc<Queue> {
        Arc::new(Queue {
            words: (0..=WAKING_PUT).map(|_| AtomicU64::new(0)).collect(),
            get_lock: Mutex::new(()),
            put_lock: Mutex::new(()),
            not_empty: Cond::new(clears.gets),
            not_full: Cond::new(clears.puts),
            maxsize: maxsize.unwrap_or(u64::MAX),
        })
    }

    fn words(&self) -> Words<'_, AtomicU64> {
        Words(&self.words)
    }

    /// `Ring::get` without the data: wait, commit, wake.
    fn get(&self) {
        let bounded = self.maxsize != u64::MAX;
        let mut guard = Guard::lock(&self.get_lock);
        let (gets, puts) = until_item(&self.words(), &mut guard, &self.not_empty, None).unwrap();
        assert!(puts > gets, "a get went on with no item");
        Word::store(&self.words[GETS], gets + 1, get_commit(bounded));
        drop(guard);
        after_get(&self.words(), &self.not_empty, &self.not_full, gets, puts, bounded);
    }

    /// `Ring::put` without the data: wait, commit, wake.
    fn put(&self) {
        let mut guard = Guard::lock(&self.put_lock);
        let puts = until_room(&self.words(), self.maxsize, &mut guard, &self.not_full, None).unwrap();
        let gets = Word::load(&self.words[GETS], Ordering::SeqCst);
        assert!(puts - gets < self.maxsize, "a put went on in a full queue");
        Word::store(&self.words[PUTS], puts + 1, PUT_COMMIT);
        drop(guard);
        after_put(&self.words(), &self.not_empty, &self.not_full, self.maxsize);
    }
}

/// Which sleepers clear the wake-up-on-its-way flag as they come.
#[derive(Clone, Copy)]
struct Clears {
    gets: bool,
    puts: bool,
}

/// The protocol as it is: both do.
const NOW: Clears = Clears { gets: true, puts: true };

/// Runs the model: producers making the puts in `puts` (one thread each), consumers the
/// gets in `gets`, on a queue of at most `maxsize` items; every item is got.
fn check(maxsize: Option<u64>, puts: &'static [usize], gets: &'static [usize], clears: Clears) {
    assert_eq!(puts.iter().sum::<usize>(), gets.iter().sum::<usize>());
    model(move || {
        let queue = Queue::new(maxsize, clears);
        let mut threads = Vec::new();
        for &n in puts {
            let queue = queue.clone();
            threads.push(thread::spawn(move || (0..n).for_each(|_| queue.put())));
        }
        // The first consumer is this thread (loom allows few threads).
        for &n in &gets[1..] {
            let queue = queue.clone();
            threads.push(thread::spawn(move || (0..n).for_each(|_| queue.get())));
        }
        (0..gets[0]).for_each(|_| queue.get());
        for thread in threads {
            thread.join().unwrap();
        }
        let total = puts.iter().sum::<usize>() as u64;
        assert_eq!(Word::load(&queue.words[PUTS], Ordering::SeqCst), total);
        assert_eq!(Word::load(&queue.words[GETS], Ordering::SeqCst), total);
    });
}

/// One producer, one consumer, two items: a get that counted itself in and left without
/// sleeping (it saw the item) must not leave a flag that silences the next wake-up.
#[test]
fn one_consumer_gets_two_items() {
    check(None, &[2], &[2], NOW);
}

/// Two consumers asleep, one producer, two items: the woken one wakes the next while items
/// are left.
#[test]
fn two_consumers_get_one_item_each() {
    check(None, &[2], &[1, 1], NOW);
}

/// Two producers, one consumer, at most one item: a put sleeps on room, and the woken one
/// wakes the next while room is left.
#[test]
fn two_producers_wait_for_room() {
    check(Some(1), &[1, 1], &[2], NOW);
}

/// One producer, one consumer, at most one item, three items: a put that counted itself in
/// and left without sleeping (it saw room) must not leave a flag that silences the next
/// wake-up of a put.
#[test]
fn one_producer_waits_for_room_twice() {
    check(Some(1), &[3], &[3], NOW);
}

/// Both sides sleep: two consumers, one producer, at most one item.
#[test]
fn two_consumers_and_a_producer_on_a_full_queue() {
    check(Some(1), &[2], &[1, 1], NOW);
}

/// Two consumers and two producers, at most one item (minutes: run by hand).
#[test]
#[ignore = "minutes: run by hand"]
fn two_consumers_and_two_producers_on_a_full_queue() {
    check(Some(1), &[1, 1], &[1, 1], NOW);
}

/// Two consumers taking two items each, one producer (minutes: run by hand).
#[test]
#[ignore = "minutes: run by hand"]
fn two_consumers_get_two_items_each() {
    check(None, &[4], &[2, 2], NOW);
}

/// The model can fail: without a sleeper's clear of the flag as it comes (the protocol
/// before 9a75942), a commit that found a get counted, who then left without sleeping, sets
/// the flag for no one; the next commit skips its wake-up, and loom finds the other consumer
/// asleep for ever with an item there. (Run in a child process: loom's cleanup after the
/// deadlock it reports panics again, which aborts.)
#[test]
fn without_the_clear_on_arrival_a_get_is_not_woken() {
    fails_with_a_deadlock("old_protocol_gets");
}

/// The same for a put waiting for room.
#[test]
fn without_the_clear_on_arrival_a_put_is_not_woken() {
    fails_with_a_deadlock("old_protocol_puts");
}

/// The gets' scenario on the protocol before 9a75942 (run by the test above).
#[test]
#[ignore = "fails: run by without_the_clear_on_arrival_a_get_is_not_woken"]
fn old_protocol_gets() {
    check(None, &[2], &[1, 1], Clears { gets: false, puts: true });
}

/// The puts' scenario on the protocol before 9a75942 (run by the test above).
#[test]
#[ignore = "fails: run by without_the_clear_on_arrival_a_put_is_not_woken"]
fn old_protocol_puts() {
    check(Some(1), &[2, 1], &[3], Clears { gets: true, puts: false });
}

/// Runs the ignored test `name` of this module in a child process (this test binary): it
/// must fail, with loom's deadlock.
fn fails_with_a_deadlock(name: &str) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(exe)
        .args(["--exact", &format!("queue::wake::loom_tests::{name}"), "--ignored", "--nocapture"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the test binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let found = stderr.lines().find(|l| l.starts_with("deadlock"));
    assert!(!out.status.success() && found.is_some(), "loom found no lost wake-up in {name}:\n{stderr}");
    eprintln!("{name}: {}", found.unwrap_or_default());
}
