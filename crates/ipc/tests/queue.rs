//! `Queue`, `JoinableQueue` and `SimpleQueue`: against a `VecDeque` model, across processes,
//! and each of the traps Python's queues fall into (a value that does not serialize, a
//! producer gone right after `put`, a process killed inside `put`/`get`, `qsize`/`empty`/`full`
//! disagreeing, items of any size).

use std::collections::VecDeque;
use std::time::Duration;

use mproc_ipc::__private::{QueueCrash, crash_at};
use mproc_ipc::{Error, JoinableQueue, Queue, SimpleQueue, pipe};
use proptest::prelude::*;
use serde::{Deserialize, Serialize, Serializer};

use crate::support::{DEADLINE, Exit, assert_success, in_child, msg};

/// How long a timed call waits where the test expects it to time out.
const SHORT: Duration = Duration::from_millis(1);

/// Bytes that tell their length and seed apart, so a torn or misplaced item shows.
fn item(len: usize, seed: u64) -> Vec<u8> {
    (0..len).map(|i| (i as u64).wrapping_mul(0x9e37_79b9).wrapping_add(seed) as u8 ^ (i >> 8) as u8).collect()
}

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<u8>),
    TryPut(Vec<u8>),
    PutTimeout(Vec<u8>),
    Get,
    TryGet,
    GetTimeout,
    TaskDone,
    Join,
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => (0usize..48, any::<u64>()).prop_map(|(n, s)| item(n, s)),
        3 => (48usize..3000, any::<u64>()).prop_map(|(n, s)| item(n, s)),
        1 => (3000usize..70_000, any::<u64>()).prop_map(|(n, s)| item(n, s)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => value().prop_map(Op::Put),
        2 => value().prop_map(Op::TryPut),
        1 => value().prop_map(Op::PutTimeout),
        3 => Just(Op::Get),
        2 => Just(Op::TryGet),
        1 => Just(Op::GetTimeout),
        1 => Just(Op::TaskDone),
        1 => Just(Op::Join),
    ]
}

/// Runs `ops` on `queue` and on a `VecDeque` model side by side; `qsize`, `empty` and `full`
/// are checked against the model after every step. A blocking call the model says would
/// wait for ever is made with `try_` instead. `unfinished` models `JoinableQueue`'s count.
fn run_against_model(
    queue: &JoinableQueue<Vec<u8>>,
    maxsize: Option<usize>,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let mut model = VecDeque::new();
    let mut unfinished = 0usize;
    for op in ops {
        let full = maxsize.is_some_and(|m| model.len() >= m);
        match op {
            Op::Put(v) if !full => {
                queue.put(v).map_err(|e| TestCaseError::fail(format!("put: {e}")))?;
                model.push_back(v.clone());
                unfinished += 1;
            }
            Op::Put(v) | Op::TryPut(v) => {
                let taken = queue.try_put(v).map_err(|e| TestCaseError::fail(format!("try_put: {e}")))?;
                prop_assert_eq!(taken, !full);
                if taken {
                    model.push_back(v.clone());
                    unfinished += 1;
                }
            }
            Op::PutTimeout(v) => match queue.put_timeout(v, SHORT) {
                Ok(()) => {
                    prop_assert!(!full, "put_timeout took an item into a full queue");
                    model.push_back(v.clone());
                    unfinished += 1;
                }
                Err(Error::Timeout) => prop_assert!(full, "put_timeout timed out with room"),
                Err(e) => prop_assert!(false, "put_timeout: {}", e),
            },
            Op::Get if !model.is_empty() => {
                let got = queue.get().map_err(|e| TestCaseError::fail(format!("get: {e}")))?;
                prop_assert_eq!(Some(got), model.pop_front());
            }
            Op::Get | Op::TryGet => {
                let got = queue.try_get().map_err(|e| TestCaseError::fail(format!("try_get: {e}")))?;
                prop_assert_eq!(got, model.pop_front());
            }
            Op::GetTimeout => match queue.get_timeout(SHORT) {
                Ok(got) => prop_assert_eq!(Some(got), model.pop_front()),
                Err(Error::Timeout) => prop_assert!(model.is_empty(), "get_timeout timed out on items"),
                Err(e) => prop_assert!(false, "get_timeout: {}", e),
            },
            Op::TaskDone => match queue.task_done() {
                Ok(()) => {
                    prop_assert!(unfinished > 0, "task_done accepted with no task unfinished");
                    unfinished -= 1;
                }
                Err(Error::Misuse(_)) => prop_assert_eq!(unfinished, 0),
                Err(e) => prop_assert!(false, "task_done: {}", e),
            },
            Op::Join => match queue.join_timeout(SHORT) {
                Ok(()) => prop_assert_eq!(unfinished, 0),
                Err(Error::Timeout) => prop_assert!(unfinished > 0, "join timed out with nothing unfinished"),
                Err(e) => prop_assert!(false, "join_timeout: {}", e),
            },
        }
        let (qsize, empty, is_full) = (queue.qsize(), queue.empty(), queue.full());
        prop_assert_eq!(qsize, model.len());
        prop_assert_eq!(empty, model.is_empty());
        prop_assert_eq!(is_full, maxsize.is_some_and(|m| model.len() >= m));
    }
    Ok(())
}

proptest! {
    /// `Queue` (through `JoinableQueue`, which is one) behaves as a `VecDeque` with an optional
    /// bound: order, `try_`/timed forms on a full or empty queue, `qsize`/`empty`/`full`,
    /// `task_done`/`join`. A small ring, so wrapping and the overflow of large items are
    /// exercised on every run.
    #[test]
    fn prop_joinable_queue_matches_model(
        maxsize in prop::option::of(1usize..6),
        small_ring in any::<bool>(),
        ops in prop::collection::vec(op(), 1..120),
    ) {
        let mut builder = Queue::<Vec<u8>>::builder();
        if let Some(m) = maxsize {
            builder = builder.maxsize(m);
        }
        if small_ring {
            builder = builder.ring_bytes(4096);
        }
        let queue = builder.joinable().unwrap();
        run_against_model(&queue, maxsize, &ops)?;
    }

    /// A plain `Queue` against the model, with its items got back in a child process at the
    /// end: what the model holds is exactly what another process finds.
    #[test]
    fn prop_queue_matches_model_across_processes(
        maxsize in prop::option::of(1usize..6),
        ops in prop::collection::vec(prop_oneof![value().prop_map(Op::TryPut), Just(Op::TryGet), Just(Op::GetTimeout)], 1..60),
    ) {
        let mut builder = Queue::<Vec<u8>>::builder().ring_bytes(4096);
        if let Some(m) = maxsize {
            builder = builder.maxsize(m);
        }
        let queue = builder.build().unwrap();
        let mut model = VecDeque::new();
        for op in &ops {
            match op {
                Op::TryPut(v) => {
                    if queue.try_put(v).unwrap() {
                        model.push_back(v.clone());
                    }
                }
                Op::TryGet => prop_assert_eq!(queue.try_get().unwrap(), model.pop_front()),
                _ => prop_assert_eq!(queue.get_timeout(SHORT).ok(), model.pop_front()),
            }
            prop_assert_eq!(queue.qsize(), model.len());
        }
        let expected: Vec<_> = model.into_iter().collect();
        assert_success(in_child(&[&queue], || {
            for (i, want) in expected.iter().enumerate() {
                let got = queue.get_timeout(DEADLINE).map_err(msg)?;
                if &got != want {
                    return Err(format!("item {i} differs"));
                }
            }
            match queue.try_get().map_err(msg)? {
                None => Ok(()),
                Some(_) => Err("an item more than the model holds".into()),
            }
        }));
        prop_assert!(queue.empty());
    }
}

/// Serializes as its number, or fails to serialize when it has none.
#[derive(Debug)]
struct MaybeBad(Option<u32>);

impl Serialize for MaybeBad {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(n) => serializer.serialize_u32(n),
            None => Err(serde::ser::Error::custom("this value refuses to serialize")),
        }
    }
}

impl<'de> Deserialize<'de> for MaybeBad {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u32::deserialize(deserializer).map(|n| MaybeBad(Some(n)))
    }
}

/// gh-84376, gh-74599: a value that does not serialize fails in `put` itself, with the
/// serializer's error; nothing is queued, and the puts after it work, in this process and for
/// a consumer in another.
#[test]
fn put_that_does_not_serialize_fails_in_put_and_later_puts_work() {
    let queue = Queue::<MaybeBad>::with_maxsize(4).unwrap();
    queue.put(&MaybeBad(Some(1))).unwrap();
    match queue.put(&MaybeBad(None)) {
        Err(Error::Encode(_)) => {}
        other => panic!("expected an encode error from put, got {other:?}"),
    }
    assert!(matches!(queue.try_put(&MaybeBad(None)), Err(Error::Encode(_))));
    assert!(matches!(queue.put_timeout(&MaybeBad(None), SHORT), Err(Error::Encode(_))));
    assert_eq!(queue.qsize(), 1);
    queue.put(&MaybeBad(Some(2))).unwrap();
    assert_success(in_child(&[&queue], || {
        for want in [1, 2] {
            let got = queue.get_timeout(DEADLINE).map_err(msg)?;
            if got.0 != Some(want) {
                return Err(format!("got {:?}, expected {want}", got.0));
            }
        }
        Ok(())
    }));
    assert!(queue.empty());
}

/// gh-85927: when `put` returns, the item is in shared memory, not in a feeder thread of
/// the producer: a producer killed right after its puts (small and large items) loses none.
#[test]
fn items_survive_a_producer_killed_right_after_put() {
    let queue = Queue::<Vec<u8>>::new().unwrap();
    let sizes = [0usize, 7, 5000, 3 << 20, 12];
    let child = in_child(&[&queue], || {
        for (seed, len) in sizes.iter().enumerate() {
            queue.put(&item(*len, seed as u64)).map_err(msg)?;
        }
        crate::support::kill_self();
    });
    assert_eq!(child.wait(DEADLINE), Exit::Signal(libc::SIGKILL));
    assert_eq!(queue.qsize(), sizes.len());
    for (seed, len) in sizes.iter().enumerate() {
        assert_eq!(queue.get_timeout(DEADLINE).unwrap(), item(*len, seed as u64), "item {seed}");
    }
    assert!(queue.empty());
}

/// A process killed at each point inside `put` and `get` (holding the lock, with an item half
/// written, with the state half written, right after the commit): the queue stays whole.
/// Exactly the committed items are there, none torn, and the next `put`/`get` work.
#[test]
fn a_process_killed_inside_put_or_get_leaves_the_queue_whole() {
    for point in QueueCrash::ALL {
        for ring in [4096usize, 1 << 16] {
            // Items before the crash: one small, one past the ring's size for items inline.
            let before = [item(20, 1), item(6000, 2)];
            let queue = Queue::<Vec<u8>>::builder().maxsize(8).ring_bytes(ring).build().unwrap();
            for v in &before {
                queue.put(v).unwrap();
            }
            let attempted = if point.in_put() { item(9000, 3) } else { Vec::new() };
            let child = in_child(&[&queue], || {
                crash_at(point);
                if point.in_put() {
                    queue.put(&attempted).map_err(msg)?;
                } else {
                    queue.get().map_err(msg)?;
                }
                Err(format!("{point:?}: survived the operation it should have died in"))
            });
            assert_eq!(child.wait(DEADLINE), Exit::Signal(libc::SIGKILL), "{point:?}");
            let mut expected: VecDeque<Vec<u8>> = before.iter().cloned().collect();
            match (point.in_put(), point.committed()) {
                (true, true) => expected.push_back(attempted.clone()),
                (false, true) => drop(expected.pop_front()),
                _ => {}
            }
            assert_eq!(queue.qsize(), expected.len(), "{point:?}, ring {ring}");
            assert_eq!(queue.empty(), expected.is_empty(), "{point:?}");
            // Usable at once: the lock is taken over, the next put lands after the rest.
            queue.put_timeout(&item(33, 4), DEADLINE).unwrap();
            expected.push_back(item(33, 4));
            for (i, want) in expected.iter().enumerate() {
                let got = queue.get_timeout(DEADLINE).unwrap_or_else(|e| panic!("{point:?}: get {i}: {e}"));
                assert_eq!(&got, want, "{point:?}, ring {ring}: item {i}");
            }
            assert_eq!(queue.try_get().unwrap(), None, "{point:?}");
        }
    }
}

/// gh-142837: what one process put is seen at once by another, and `qsize`, `empty` and
/// `full` agree with each other and with the puts and gets that returned.
#[test]
fn qsize_empty_and_full_agree_across_processes() {
    let queue = Queue::<u64>::with_maxsize(2).unwrap();
    let (steps_rx, steps_tx) = pipe::<u64>().unwrap();
    let (acks_rx, acks_tx) = pipe::<u64>().unwrap();
    assert_eq!((queue.qsize(), queue.empty(), queue.full()), (0, true, false));
    let child = in_child(&[&queue, &steps_tx, &acks_rx], || {
        for n in 1..=2 {
            queue.put(&n).map_err(msg)?;
            steps_tx.send(&n).map_err(msg)?;
            acks_rx.recv_timeout(DEADLINE).map_err(msg)?;
        }
        queue.get().map_err(msg)?;
        steps_tx.send(&3).map_err(msg)?;
        Ok(())
    });
    let expect = |len: usize| {
        assert_eq!((queue.qsize(), queue.empty(), queue.full()), (len, len == 0, len >= 2));
    };
    for len in 1..=2 {
        assert_eq!(steps_rx.recv_timeout(DEADLINE).unwrap(), len as u64);
        expect(len);
        acks_tx.send(&0).unwrap();
    }
    assert_eq!(steps_rx.recv_timeout(DEADLINE).unwrap(), 3);
    expect(1);
    assert_success(child);
    assert_eq!(queue.get_timeout(DEADLINE).unwrap(), 2);
    expect(0);
}

/// Items of any size, in order, through a queue of one item whose ring is smaller than most
/// of them: nothing fails and nothing deadlocks, while the consumer is another process.
#[test]
fn items_of_any_size_pass_in_order_through_a_small_queue() {
    let sizes = [0usize, 1, 4000, 4096, 70_000, 9 << 20, 5, 300_000, 64];
    let queue = Queue::<Vec<u8>>::builder().maxsize(1).ring_bytes(4096).build().unwrap();
    let child = in_child(&[&queue], || {
        for (seed, len) in sizes.iter().enumerate() {
            queue.put_timeout(&item(*len, seed as u64), DEADLINE).map_err(msg)?;
        }
        Ok(())
    });
    for (seed, len) in sizes.iter().enumerate() {
        let got = queue.get_timeout(DEADLINE).unwrap();
        assert!(got == item(*len, seed as u64), "item {seed} of {len} bytes differs");
    }
    assert_success(child);
    assert!(queue.empty());
}

/// A full queue's `put` waits for a `get` in another process, and an empty queue's `get` for
/// a `put`; many items through a small queue both ways arrive once each, in order.
#[test]
fn producers_and_consumers_in_several_processes() {
    const PER: u64 = 20_000;
    let queue = Queue::<(u64, u64)>::with_maxsize(16).unwrap();
    let results = Queue::<Vec<u64>>::new().unwrap();
    let producers: Vec<_> = (0..2u64)
        .map(|p| {
            in_child(&[&queue], || {
                for i in 0..PER {
                    queue.put_timeout(&(p, i), DEADLINE).map_err(msg)?;
                }
                Ok(())
            })
        })
        .collect();
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            in_child(&[&queue, &results], || {
                let mut last = [None::<u64>; 2];
                let mut got = vec![0u64; 2];
                loop {
                    let (p, i) = queue.get_timeout(DEADLINE).map_err(msg)?;
                    if p == u64::MAX {
                        break;
                    }
                    // Each producer's items come out in the order it put them.
                    if last[p as usize].is_some_and(|l| l >= i) {
                        return Err(format!("producer {p}: item {i} after {:?}", last[p as usize]));
                    }
                    last[p as usize] = Some(i);
                    got[p as usize] += 1;
                }
                results.put(&got).map_err(msg)
            })
        })
        .collect();
    producers.into_iter().for_each(assert_success);
    for _ in 0..2 {
        queue.put(&(u64::MAX, 0)).unwrap();
    }
    consumers.into_iter().for_each(assert_success);
    let mut total = [0u64; 2];
    for _ in 0..2 {
        let got = results.get_timeout(DEADLINE).unwrap();
        total[0] += got[0];
        total[1] += got[1];
    }
    assert_eq!(total, [PER, PER]);
    assert!(queue.empty());
}

/// `JoinableQueue::join` in one process returns once consumers in others called `task_done`
/// for every item put.
#[test]
fn joinable_queue_join_waits_for_task_done_in_other_processes() {
    let queue = JoinableQueue::<u32>::new().unwrap();
    for n in 0..100 {
        queue.put(&n).unwrap();
    }
    assert!(matches!(queue.join_timeout(SHORT), Err(Error::Timeout)));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            in_child(&[&queue], || {
                while let Some(_n) = queue.try_get().map_err(msg)? {
                    queue.task_done().map_err(msg)?;
                }
                Ok(())
            })
        })
        .collect();
    queue.join_timeout(DEADLINE).unwrap();
    workers.into_iter().for_each(assert_success);
    assert!(matches!(queue.task_done(), Err(Error::Misuse(_))));
}

/// `SimpleQueue`: put, get, empty, between processes.
#[test]
fn simple_queue_between_processes() {
    let queue = SimpleQueue::<String>::new().unwrap();
    assert!(queue.empty());
    let child = in_child(&[&queue], || {
        let s = queue.get_timeout(DEADLINE).map_err(msg)?;
        queue.put(&format!("{s} back")).map_err(msg)
    });
    queue.put(&"there".to_string()).unwrap();
    assert_success(child);
    assert_eq!(queue.get().unwrap(), "there back");
    assert!(queue.empty());
}

/// `close` ends this handle's puts with an error, not other processes' (Python's
/// `Queue.close`: this process will put no more).
#[test]
fn close_ends_this_handles_puts_only() {
    let queue = Queue::<u8>::new().unwrap();
    queue.put(&1).unwrap();
    let child = in_child(&[&queue], || queue.put(&2).map_err(msg));
    assert_success(child);
    queue.close();
    queue.close();
    assert!(matches!(queue.put(&3), Err(Error::Misuse(_))));
    assert_eq!(queue.qsize(), 2);
}

/// Under a file size limit (`ulimit -f`) below the queue's 8 GiB sparse space, the memfd
/// cannot be sized so (the kernel would kill the process with `SIGXFSZ`): the queue is made
/// with the room the limit allows, items that fit it travel, one past it is a clear error,
/// and a limit below the hot ring itself fails `Queue::new` with an error naming the limit.
/// (In a forked child, whose limit is its own.)
#[test]
fn a_file_size_limit_gives_a_smaller_queue_not_a_killed_process() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    assert_success(in_child(&[], || {
        let hard = getrlimit(Resource::Fsize).maximum;
        let limit = |bytes: u64| {
            setrlimit(Resource::Fsize, Rlimit { current: Some(bytes), maximum: hard }).map_err(msg)
        };
        limit(1 << 20)?;
        let queue = Queue::<Vec<u8>>::new().map_err(msg)?;
        // Small items in the hot ring, and one past it (300 KiB: in the sparse space).
        let items = [item(10, 1), item(3000, 2), item(300 << 10, 3), item(20, 4)];
        for it in &items {
            queue.put(it).map_err(msg)?;
        }
        for (i, want) in items.iter().enumerate() {
            if &queue.get_timeout(DEADLINE).map_err(msg)? != want {
                return Err(format!("item {i} differs"));
            }
        }
        // Past the room the limit left: an error naming the limit, the queue unchanged.
        match queue.put(&item(2 << 20, 5)) {
            Err(e) if e.to_string().contains("ulimit -f") => {}
            other => return Err(format!("expected an error naming ulimit -f, got {other:?}")),
        }
        queue.put(&item(5, 6)).map_err(msg)?;
        if queue.get_timeout(DEADLINE).map_err(msg)? != item(5, 6) || !queue.empty() {
            return Err("the queue changed after the failed put".into());
        }
        // Below the hot ring itself: no queue, and the error says why.
        limit(64 << 10)?;
        match Queue::<u8>::new() {
            Err(e) if e.to_string().contains("ulimit -f") => Ok(()),
            other => Err(format!("expected an error naming ulimit -f, got {other:?}")),
        }
    }));
}
