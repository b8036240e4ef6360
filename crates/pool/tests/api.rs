//! The Pool surface: apply, map, imap, starmap, callbacks, futures, close/join, threads.

use std::sync::mpsc;
use std::task::{Context, Poll, Wake, Waker};

use mproc_pool::{Error, Pool, PoolBuilder};
use serde::{Deserialize, Serialize};

use crate::*;

#[test]
fn apply_and_apply_async_return_values() {
    let pool = pool(2);
    assert_eq!(pool.apply(square, 9).unwrap(), 81);
    let results: Vec<_> = (0..50).map(|x| pool.apply_async(square, x)).collect();
    for (x, r) in results.into_iter().enumerate() {
        assert_eq!(get(r).unwrap(), (x * x) as u64);
    }
}

/// Bytes in, their sum and the bytes as floats out: large both ways (past 4 MiB each, so both
/// travel in memfds).
fn widen(bytes: Vec<u8>) -> (u64, Vec<f64>) {
    (bytes.iter().map(|&b| b as u64).sum(), bytes.iter().map(|&b| b as f64).collect())
}

#[test]
fn large_arguments_and_values_cross_whole() {
    let pool = pool(2);
    let bytes: Vec<u8> = (0..(6 << 20)).map(|i: usize| (i * 31) as u8).collect();
    let results: Vec<_> = (0..3).map(|_| pool.apply_async(widen, bytes.clone())).collect();
    for r in results {
        let (sum, floats) = get(r).unwrap();
        assert_eq!(sum, bytes.iter().map(|&b| b as u64).sum::<u64>());
        assert!(floats.len() == bytes.len() && floats.iter().zip(&bytes).all(|(&f, &b)| f == b as f64));
    }
}

/// A value that serializes through `collect_str` (as chrono's dates and serde_with's
/// `DisplayFromStr` do), and comes back as the string.
#[derive(Debug, PartialEq, Deserialize)]
struct Shown(String);

impl Serialize for Shown {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

fn show(n: u64) -> Shown {
    Shown(format!("{n} is shown through collect_str, past an inline value's room"))
}

#[test]
fn a_value_shown_through_collect_str_crosses_whatever_its_length() {
    let pool = pool(1);
    assert_eq!(pool.apply(show, 7).unwrap(), show(7));
    assert_eq!(pool.map(show, 0..3u64).unwrap(), (0..3u64).map(show).collect::<Vec<_>>());
    // A Fork child's value past the page its slot starts with.
    let long = || Shown("shown through collect_str ".repeat(1000));
    let mut child = mproc_pool::process::Process::spawn(long).unwrap();
    assert_eq!(child.join_timeout(DEADLINE).unwrap(), long());
}

#[test]
fn async_result_reports_ready_and_successful() {
    let pool = pool(1);
    let mut slow = pool.apply_async(pid_after, 200);
    assert_eq!(slow.successful(), None, "not ready yet");
    assert!(matches!(slow.get_timeout(std::time::Duration::ZERO), Err(Error::NotReady)));
    assert!(slow.wait_timeout(DEADLINE));
    assert!(slow.ready());
    assert_eq!(slow.successful(), Some(true));
    assert_ne!(slow.get_timeout(DEADLINE).unwrap(), std::process::id(), "ran in a worker");
    assert!(matches!(slow.get_timeout(DEADLINE), Err(Error::AlreadyTaken)));
    let failed = pool.apply_async(fail_on_7, 7);
    failed.wait();
    assert_eq!(failed.successful(), Some(false));
}

#[test]
fn map_starmap_and_chunks_keep_order() {
    let pool = pool(2);
    let expected: Vec<u64> = (0..1000).map(|x| x * x).collect();
    assert_eq!(pool.map(square, 0..1000).unwrap(), expected);
    assert_eq!(pool.map_chunked(square, 0..1000, 7).unwrap(), expected);
    assert_eq!(get(pool.map_async(square, 0..1000)).unwrap(), expected);
    assert_eq!(pool.map(square, Vec::new()).unwrap(), Vec::<u64>::new());
    let pairs: Vec<(u64, u64)> = (0..100).map(|i| (i, 2 * i)).collect();
    assert_eq!(pool.starmap(add, pairs).unwrap(), (0..100).map(|i| 3 * i).collect::<Vec<_>>());
}

#[test]
fn imap_takes_from_an_endless_iterator_lazily() {
    let pool = pool(2);
    let got: Vec<u64> = pool.imap(square, 0u64..).take(10_000).map(Result::unwrap).collect();
    assert_eq!(got, (0u64..10_000).map(|x| x * x).collect::<Vec<_>>());
    let chunked: Vec<u64> = pool.imap_chunked(square, 0u64.., 100).take(10_000).map(Result::unwrap).collect();
    assert_eq!(chunked, got);
    let mut unordered: Vec<u64> = pool.imap_unordered(square, 0u64..1000).map(Result::unwrap).collect();
    unordered.sort_unstable();
    assert_eq!(unordered, (0u64..1000).map(|x| x * x).collect::<Vec<_>>());
}

#[test]
fn imap_memory_stays_bounded_on_an_endless_input() {
    // The input counts what it has handed out: never more than a window ahead of the consumer.
    let pool = pool(2);
    let pulled = std::cell::Cell::new(0u64);
    let items = std::iter::repeat_with(|| {
        pulled.set(pulled.get() + 1);
        pulled.get()
    });
    for (taken, value) in pool.imap(square, items).take(10_000).enumerate() {
        value.unwrap();
        let ahead = pulled.get() - taken as u64;
        assert!(ahead <= 4 * 2 + 1, "{ahead} items pulled ahead of the consumer");
    }
}

#[test]
fn a_panic_fails_its_task_with_the_message_and_the_worker_lives() {
    let pool = pool(1);
    let before = pool.apply(pid, ()).unwrap();
    let err = pool.apply(fail_on_7, 7).unwrap_err();
    match &err {
        Error::Panicked { message, pid, worker, task } => {
            assert!(message.contains("seven is unlucky"), "{message}");
            assert_eq!(*pid, before);
            assert!(worker.starts_with("PoolWorker-"), "{worker}");
            assert!(task.contains("fn(u64) -> u64"), "{task}");
        }
        other => panic!("expected a panic, got {other}"),
    }
    assert_eq!(pool.apply(pid, ()).unwrap(), before, "the same worker goes on");
    let err = pool.map(fail_on_7, 0..20).unwrap_err();
    assert!(matches!(err, Error::Panicked { .. }), "{err}");
}

/// A value whose serialization fails.
#[derive(Debug, Deserialize)]
pub struct Unsendable;

impl Serialize for Unsendable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this value refuses to be sent"))
    }
}

fn make_unsendable(_: ()) -> Unsendable {
    Unsendable
}

fn take_unsendable(_: Unsendable) -> u8 {
    1
}

#[test]
fn what_cannot_cross_fails_that_task_alone() {
    let pool = pool(1);
    let err = pool.apply(make_unsendable, ()).unwrap_err();
    assert!(matches!(&err, Error::Transfer { message, .. } if message.contains("result")), "{err}");
    let err = pool.apply(take_unsendable, Unsendable).unwrap_err();
    assert!(matches!(&err, Error::Transfer { message, .. } if message.contains("arguments")), "{err}");
    assert_eq!(pool.apply(square, 3).unwrap(), 9, "the pool goes on");
}

#[test]
fn callbacks_run_off_the_callers_thread() {
    let pool = pool(2);
    let (tx, rx) = mpsc::channel();
    let me = std::thread::current().id();
    for x in 0..20u64 {
        let (ok, err) = (tx.clone(), tx.clone());
        // The callbacks report; the handle itself is not needed.
        drop(pool.apply_async_with(
            fail_on_7,
            x,
            move |v| ok.send((Ok(v), std::thread::current().id())).unwrap(),
            move |e| err.send((Err(e.to_string()), std::thread::current().id())).unwrap(),
        ));
    }
    let mut values = Vec::new();
    for _ in 0..20 {
        let (value, thread) = rx.recv_timeout(DEADLINE).expect("every callback runs");
        assert_ne!(thread, me);
        values.push(value);
    }
    assert_eq!(values.iter().filter(|v| v.is_err()).count(), 1);
    assert!(values.iter().any(|v| matches!(v, Err(m) if m.contains("seven"))));
}

#[test]
fn a_slow_callback_does_not_hold_back_other_results() {
    let pool = pool(2);
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let _blocked =
        pool.apply_async_with(square, 1, move |_| release_rx.recv_timeout(DEADLINE).unwrap(), |_| {});
    // The callback thread is stuck; results still arrive.
    assert_eq!(get(pool.apply_async(square, 5)).unwrap(), 25);
    assert_eq!(pool.map(square, 0..10).unwrap().len(), 10);
    release_tx.send(()).unwrap();
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal executor: enough to show `AsyncResult` is a real future.
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(std::sync::Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "the future never completed");
        std::thread::park_timeout(DEADLINE);
    }
}

#[test]
fn async_results_are_futures() {
    let pool = pool(2);
    let a = pool.apply_async(pid_after, 50);
    let b = pool.map_async(square, 0..100);
    let (a, b) = block_on(async { (a.await, b.await) });
    assert_ne!(a.unwrap(), std::process::id());
    assert_eq!(b.unwrap()[99], 99 * 99);
}

#[test]
fn close_then_join_and_no_new_tasks() {
    let pool = pool(2);
    assert!(matches!(pool.join(), Err(Error::NotClosed)));
    let pending: Vec<_> = (0..10).map(|x| pool.apply_async(square, x)).collect();
    pool.close();
    assert!(matches!(get(pool.apply_async(square, 1)), Err(Error::Closed)));
    pool.join().unwrap();
    for (x, r) in pending.into_iter().enumerate() {
        assert_eq!(get(r).unwrap(), (x * x) as u64, "tasks submitted before close still ran");
    }
}

#[test]
fn initializer_runs_in_every_worker() {
    mproc_init();
    let pool = PoolBuilder::default().processes(2).initializer(set_marker, 41).build().unwrap();
    let marks = pool.map_chunked(read_marker, 0..20, 1).unwrap();
    assert!(marks.iter().all(|&m| m == 42), "{marks:?}");
}

static MARKER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn set_marker(v: u64) {
    MARKER.store(v + 1, std::sync::atomic::Ordering::SeqCst);
}

fn read_marker(_: u64) -> u64 {
    MARKER.load(std::sync::atomic::Ordering::SeqCst)
}

fn failing_init(_: ()) {
    panic!("no database today");
}

#[test]
fn a_failing_initializer_fails_tasks_instead_of_hanging() {
    mproc_init();
    let pool = Pool::builder().processes(1).initializer(failing_init, ()).build().unwrap();
    let err = get(pool.apply_async(square, 2)).unwrap_err();
    assert!(matches!(&err, Error::Initializer { message } if message.contains("no database today")), "{err}");
}

#[test]
fn the_same_api_runs_on_threads() {
    let pool = Pool::builder().processes(2).threads().build().unwrap();
    assert_eq!(pool.apply(pid, ()).unwrap(), std::process::id(), "threads of this process");
    assert_eq!(pool.map(square, 0..100).unwrap()[10], 100);
    let err = pool.apply(fail_on_7, 7).unwrap_err();
    assert!(matches!(err, Error::Panicked { .. }), "{err}");
    let got: Vec<u64> = pool.imap(square, 0u64..).take(100).map(Result::unwrap).collect();
    assert_eq!(got[99], 99 * 99);
}

#[test]
fn every_start_method_runs_tasks() {
    mproc_init();
    for method in [
        mproc_pool::process::StartMethod::Fork,
        mproc_pool::process::StartMethod::ForkServer,
        mproc_pool::process::StartMethod::Spawn,
    ] {
        let pool = Pool::builder().processes(2).start_method(method).build().unwrap();
        assert_eq!(pool.map(square, 0..100).unwrap()[9], 81, "{method:?}");
    }
}

fn echo(v: Vec<u8>) -> Vec<u8> {
    v
}

#[test]
fn large_values_both_ways_do_not_deadlock() {
    // Each task's input and value are larger than a socket's buffer: the pool writes tasks
    // while the worker writes values, and neither may wait for the other.
    let pool = pool(2);
    let items: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 1 << 20]).collect();
    let back = get(pool.map_async(echo, items.clone())).unwrap();
    assert!(back == items, "values came back changed");
}

fn add_under_lock(args: (mproc_pool::process::ipc::Value<u64>, mproc_pool::process::ipc::Event, u64)) -> u64 {
    let (value, done, n) = args;
    *value.get_lock().unwrap() += n;
    done.set();
    n
}

/// Shared state and sync primitives travel in a task's arguments, to process workers too.
#[test]
fn a_task_gets_shared_state_in_its_arguments() {
    use mproc_pool::process::ipc::{Event, Value};
    let pool = pool(2);
    let value = Value::new(0u64).unwrap();
    let done = Event::new().unwrap();
    let results: Vec<u64> = (1..=10)
        .map(|n| pool.apply_async(add_under_lock, (value.clone(), done.clone(), n)))
        .map(|r| r.get().unwrap())
        .collect();
    assert_eq!(results.iter().sum::<u64>(), 55);
    assert_eq!(value.get(), 55);
    assert!(done.is_set());
}

fn square_into(args: (mproc_pool::process::ipc::Queue<u64>, u64)) -> u64 {
    let (queue, n) = args;
    queue.put(&(n * n)).unwrap();
    n
}

#[test]
fn a_task_gets_a_queue_in_its_arguments() {
    use mproc_pool::process::ipc::Queue;
    let pool = pool(2);
    let queue = Queue::<u64>::new().unwrap();
    let results: Vec<_> = (1..=10).map(|n| pool.apply_async(square_into, (queue.clone(), n))).collect();
    for r in results {
        r.get().unwrap();
    }
    let mut squares: Vec<u64> =
        (0..10).map(|_| queue.get_timeout(std::time::Duration::from_secs(120)).unwrap()).collect();
    squares.sort_unstable();
    assert_eq!(squares, (1..=10u64).map(|n| n * n).collect::<Vec<_>>());
    assert!(queue.empty());
}
