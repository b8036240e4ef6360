//! The crash soak: 4 producer and 4 consumer processes over one queue, and a random one of
//! them `SIGKILL`ed at a random moment, 1,000 times in a row, each replaced at once. Every
//! item whose `put` returned is got exactly once (or is still queued), none twice, none torn,
//! and nothing waits for ever.
//!
//! Accounting lives in memory shared with every child: a producer records how many of its
//! puts returned; a consumer counts each item it got by id, and says while it is inside `get`
//! (a consumer killed after its `get` took an item, before it counted it, explains at most one
//! missing item).

use std::time::{Duration, Instant};

use mproc_ipc::Queue;

use crate::support::{Child, DEADLINE, Exit, assert_success, in_child, shared_words};

const KILLS: usize = 1000;
const PRODUCERS: usize = 4;
const CONSUMERS: usize = 4;
/// The most items one producer puts (a long-lived one then exits).
const PER: u64 = 1 << 12;
/// The most children started, first ones and replacements.
const INCARNATIONS: usize = PRODUCERS + CONSUMERS + KILLS;
const STOP: u64 = u64::MAX;

/// A splitmix64 stream: the moments and victims, reproducible from the seed it prints.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The item with id `id`: its id and bytes derived from it (now and then past the ring's
/// inline limit, so the overflow is crashed into too).
fn item(id: u64) -> (u64, Vec<u8>) {
    let len = match id % 97 {
        0 => 5000,
        n => (n % 40) as usize,
    };
    (id, (0..len).map(|i| (id as usize).wrapping_mul(31).wrapping_add(i) as u8).collect())
}

struct Shared {
    /// Per producer incarnation: how many of its puts returned `Ok`.
    acked: &'static [std::sync::atomic::AtomicU64],
    /// Per consumer incarnation: 1 from before its `get` until it logged what it got.
    pending: &'static [std::sync::atomic::AtomicU64],
    /// The ids got (plus one), each at an index a consumer claimed before its `get`.
    log: &'static [std::sync::atomic::AtomicU64],
    /// `[0]`: the next free index in `log`; `[1]`: items whose bytes were not what their id
    /// says.
    counters: &'static [std::sync::atomic::AtomicU64],
}

use std::sync::atomic::Ordering::SeqCst;

fn producer(queue: &Queue<(u64, Vec<u8>)>, shared: &Shared, k: usize) -> Result<(), String> {
    for i in 0..PER {
        queue.put_timeout(&item(k as u64 * PER + i), DEADLINE).map_err(|e| format!("put: {e}"))?;
        shared.acked[k].store(i + 1, SeqCst);
    }
    Ok(())
}

fn consumer(queue: &Queue<(u64, Vec<u8>)>, shared: &Shared, k: usize) -> Result<(), String> {
    loop {
        shared.pending[k].store(1, SeqCst);
        let at = shared.counters[0].fetch_add(1, SeqCst) as usize;
        let (id, bytes) = queue.get_timeout(DEADLINE).map_err(|e| format!("get: {e}"))?;
        // Logged first thing: the window in which a kill loses track of a taken item is the
        // end of `get` and this store.
        shared.log[at].store(id.wrapping_add(1), SeqCst);
        shared.pending[k].store(0, SeqCst);
        if id == STOP {
            return Ok(());
        }
        if item(id).1 != bytes {
            shared.counters[1].fetch_add(1, SeqCst);
        }
    }
}

#[test]
fn crash_soak_random_kills_lose_and_duplicate_nothing() {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("crash soak seed {seed}");
    let mut rng = Rng(seed);
    let shared = Shared {
        acked: shared_words(INCARNATIONS),
        pending: shared_words(INCARNATIONS),
        log: shared_words(INCARNATIONS * PER as usize + INCARNATIONS + CONSUMERS),
        counters: shared_words(2),
    };
    let queue = Queue::<(u64, Vec<u8>)>::builder().maxsize(64).ring_bytes(1 << 14).build().unwrap();
    let started = Instant::now();

    let mut next = 0usize;
    let mut start = |role_producer: bool| -> (usize, bool, Child) {
        let k = next;
        next += 1;
        let (q, s) = (&queue, &shared);
        let child = if role_producer {
            in_child(&[q], || producer(q, s, k))
        } else {
            in_child(&[q], || consumer(q, s, k))
        };
        (k, role_producer, child)
    };
    let mut live: Vec<_> = (0..PRODUCERS + CONSUMERS).map(|i| start(i < PRODUCERS)).collect();
    let mut budget = 0usize; // consumers killed inside `get` or before counting its item
    for _ in 0..KILLS {
        let victim = (rng.next() % live.len() as u64) as usize;
        let pause = Duration::from_micros(rng.next() % 2000);
        // A random moment: not waiting for anything, only choosing when the kill lands.
        std::thread::sleep(pause);
        let (k, is_producer, child) = live.swap_remove(victim);
        match child.kill() {
            Exit::Signal(libc::SIGKILL) | Exit::Code(0) => {}
            other => panic!("child {k} ended with {other:?} before it was killed (its stderr says why)"),
        }
        if !is_producer && shared.pending[k].load(SeqCst) == 1 {
            budget += 1;
        }
        live.push(start(is_producer));
        assert!(started.elapsed() < DEADLINE, "the soak ran past its deadline");
    }

    // Producers finish (or have finished) their puts; then one STOP per consumer, after
    // every item.
    let (producers, consumers): (Vec<_>, Vec<_>) = live.into_iter().partition(|(_, p, _)| *p);
    for (_, _, child) in producers {
        assert_success(child);
    }
    for _ in 0..CONSUMERS {
        queue.put_timeout(&(STOP, Vec::new()), DEADLINE).unwrap();
    }
    for (_, _, child) in consumers {
        assert_success(child);
    }
    assert_eq!(queue.try_get().unwrap(), None, "items left after every STOP");
    assert_eq!(shared.counters[1].load(SeqCst), 0, "torn items");
    let mut seen = vec![0u32; INCARNATIONS * PER as usize];
    let logged = shared.counters[0].load(SeqCst) as usize;
    for entry in &shared.log[..logged] {
        match entry.load(SeqCst) {
            0 => {} // claimed, and killed before logging
            id if id.wrapping_sub(1) == STOP => {}
            id => match seen.get_mut(id as usize - 1) {
                Some(n) => *n += 1,
                None => panic!("an item with id {} that no producer put", id - 1),
            },
        }
    }

    let (mut acked_total, mut missing) = (0u64, 0usize);
    for k in 0..next {
        let acked = shared.acked[k].load(SeqCst);
        acked_total += acked;
        for i in 0..PER {
            let id = k as u64 * PER + i;
            let seen = seen[id as usize];
            assert!(seen <= 1, "item {id} (producer {k}, put {i}) got {seen} times");
            if i < acked && seen == 0 {
                missing += 1;
            }
            // The one put in flight when its producer was killed may or may not have landed.
            assert!(i <= acked || seen == 0, "item {id} got but never put (producer {k} acked {acked})");
        }
    }
    assert!(
        missing <= budget,
        "{missing} items whose put returned were never got, more than the {budget} consumers killed inside get"
    );
    eprintln!(
        "crash soak: {KILLS} kills, {acked_total} items acked, {missing} unaccounted within a budget of {budget}, {:?}",
        started.elapsed()
    );
}
