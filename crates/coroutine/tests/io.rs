//! Awaiting ipc ends, children and pool results.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use mproc_coroutine::ipc::{Connection, duplex, pipe};
use mproc_coroutine::pool::Pool;
use mproc_coroutine::process::{Builder, Process, StartMethod};
use mproc_coroutine::{Async, Executor, LocalSender, channel, join_all, spawn, timeout, yield_now};

use crate::*;

/// A child that answers `(id, x)` with `(id, 2x)` until its end closes.
fn doubler() -> (Connection<(u64, u64)>, Process<()>) {
    let (ours, theirs) = duplex::<(u64, u64)>().unwrap();
    let child = Builder::new()
        .start_method(StartMethod::Fork)
        .close_in_child(&ours)
        .spawn(move || {
            while let Ok((id, x)) = theirs.recv() {
                if theirs.send(&(id, 2 * x)).is_err() {
                    break;
                }
            }
        })
        .unwrap();
    (ours, child)
}

#[test]
fn ten_thousand_coroutines_talk_to_four_children_in_one_thread() {
    let ex = Executor::new().unwrap();
    let children: Vec<_> = (0..4).map(|_| doubler()).collect();
    let total: u64 = ex.block_on(async {
        let mut conns = Vec::new();
        let mut readers = Vec::new();
        for (conn, _) in &children {
            // Each child's replies are routed to the coroutine that asked, by id.
            let conn = Rc::new(Async::new(conn_clone(conn)).unwrap());
            let waiting: Rc<RefCell<HashMap<u64, LocalSender<u64>>>> = Rc::default();
            let (c, w) = (Rc::clone(&conn), Rc::clone(&waiting));
            readers.push(spawn(async move {
                while let Ok((id, y)) = c.recv().await {
                    let reply = w.borrow_mut().remove(&id).expect("someone asked");
                    let _ = reply.send(y);
                }
            }));
            conns.push((conn, waiting));
        }
        let asks: Vec<_> = (0..10_000u64)
            .map(|id| {
                let (conn, waiting) = conns[id as usize % 4].clone();
                spawn(async move {
                    let (tx, rx) = channel();
                    waiting.borrow_mut().insert(id, tx);
                    conn.send(&(id, id)).await.unwrap();
                    rx.recv().await.expect("a reply")
                })
            })
            .collect();
        let replies = bounded(join_all(asks)).await;
        drop(readers);
        replies.into_iter().map(Result::unwrap).sum()
    });
    assert_eq!(total, 2 * (0..10_000u64).sum::<u64>());
    // Each child forked after another holds a copy of that one's end: close every end before
    // joining, or the first child never sees its end of file. The executor goes first: tasks
    // woken but not run when block_on returned still hold their copies.
    drop(ex);
    let (conns, children): (Vec<_>, Vec<_>) = children.into_iter().unzip();
    drop(conns);
    for child in children {
        child.join().unwrap();
    }
}

/// A second handle to the same socket (the reader and the senders share it).
fn conn_clone(conn: &Connection<(u64, u64)>) -> Connection<(u64, u64)> {
    use std::os::fd::AsFd;
    Connection::from(conn.as_fd().try_clone_to_owned().unwrap())
}

#[test]
fn a_timed_out_recv_from_a_silent_child_leaves_the_connection_usable() {
    let ex = Executor::new().unwrap();
    let (conn, child) = doubler();
    ex.block_on(async {
        let conn = Async::new(conn).unwrap();
        // The child only answers what it is asked: nothing comes.
        assert!(timeout(Duration::from_millis(50), conn.recv()).await.is_err());
        conn.send(&(1, 21)).await.unwrap();
        assert_eq!(bounded(conn.recv()).await.unwrap(), (1, 42));
    });
    child.join().unwrap();
}

#[test]
fn a_child_exit_is_awaited_through_its_sentinel() {
    let ex = Executor::new().unwrap();
    let child = Process::spawn(|| {
        std::thread::sleep(Duration::from_millis(50));
        7u32
    })
    .unwrap();
    let ticks = Rc::new(Cell::new(0u32));
    let value = ex.block_on(async {
        let t = Rc::clone(&ticks);
        let ticker = spawn(async move {
            loop {
                t.set(t.get() + 1);
                mproc_coroutine::sleep(Duration::from_millis(1)).await;
            }
        });
        let value = bounded(Async::new(child).unwrap().join()).await;
        drop(ticker);
        value
    });
    assert_eq!(value.unwrap(), 7);
    assert!(ticks.get() > 1, "other coroutines ran while the child lived");
}

fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(200));
    x * x
}

#[test]
fn a_pool_result_is_awaited_while_a_thousand_coroutines_run() {
    mproc_init();
    let pool = Pool::new(1).unwrap();
    let ex = Executor::new().unwrap();
    let steps = Rc::new(Cell::new(0u64));
    let (value, steps_before_result) = ex.block_on(async {
        let done = Rc::new(Cell::new(false));
        let workers: Vec<_> = (0..1000)
            .map(|_| {
                let (s, d) = (Rc::clone(&steps), Rc::clone(&done));
                spawn(async move {
                    while !d.get() {
                        s.set(s.get() + 1);
                        yield_now().await;
                    }
                })
            })
            .collect();
        let value = bounded(pool.apply_async(slow_square, 12)).await;
        let at_result = steps.get();
        done.set(true);
        join_all(workers).await;
        (value, at_result)
    });
    assert_eq!(value.unwrap(), 144);
    assert!(steps_before_result >= 1000, "the other coroutines ran meanwhile ({steps_before_result} steps)");
}

/// In a Spawn child, with one thread: forks a child from inside `block_on` and reports what
/// the child could do.
fn fork_from_a_running_executor(_: ()) -> (bool, bool, bool) {
    let ex = Executor::new().unwrap();
    let report = ex.block_on(async {
        let child = Process::spawn(|| {
            // Forked from inside block_on: the parent's executor is "running" in this copy.
            let spawn_refused = std::panic::catch_unwind(|| mproc_coroutine::spawn(async {})).is_err();
            let (a, _b) = duplex::<u8>().unwrap();
            let async_refused = Async::new(a).is_err();
            let own = Executor::new().unwrap();
            let own_works = own.block_on(async { spawn(async { 40 + 2 }).await.unwrap() }) == 42;
            (spawn_refused, async_refused, own_works)
        })
        .unwrap();
        bounded(Async::new(child).unwrap().join()).await
    });
    report.unwrap()
}

/// Forked from a parent with one thread (a Spawn child): the forked child's refused `spawn`
/// panics, and a panic runs the panic hook, which takes a lock of the standard library's; in
/// this test binary's process another test's thread may hold it at the fork (a task that
/// panics on purpose), and the child would wait for it for ever.
#[test]
fn a_forked_child_cannot_use_its_parents_executor_and_can_make_its_own() {
    mproc_init();
    let mut parent = mproc_coroutine::process::Builder::new()
        .start_method(StartMethod::Spawn)
        .spawn_fn(fork_from_a_running_executor, ())
        .unwrap();
    assert_eq!(parent.join_timeout(DEADLINE).unwrap(), (true, true, true));
}

/// A send larger than the pipe or socket can hold does not block the thread: the coroutine
/// that lets the child start reading runs while it waits. (A blocking send would deadlock
/// here: the child reads only once told to, and the telling is another coroutine's.)
#[test]
fn a_send_larger_than_the_buffer_lets_the_other_coroutines_run() {
    let big = vec![7u8; 4 << 20];
    // Over a pipe.
    let (go_rx, go_tx) = mproc_coroutine::ipc::pipe::<()>().unwrap();
    let (data_rx, data_tx) = mproc_coroutine::ipc::pipe::<Vec<u8>>().unwrap();
    let reader = Builder::new()
        .start_method(StartMethod::Fork)
        .close_in_child(&go_tx)
        .close_in_child(&data_tx)
        .spawn(move || {
            // Told to read in time, it reads; if not (the parent's thread is stuck in the
            // send), it leaves, and that send fails instead of hanging the test.
            match go_rx.recv_timeout(DEADLINE) {
                Ok(()) => data_rx.recv().unwrap().len(),
                Err(_) => 0,
            }
        })
        .unwrap();
    let ex = Executor::new().unwrap();
    ex.block_on(bounded(async {
        let (data_tx, go_tx) = (Async::new(data_tx).unwrap(), Async::new(go_tx).unwrap());
        let go = spawn(async move { go_tx.send(&()).await.unwrap() });
        data_tx.send(&big).await.unwrap();
        go.await.unwrap();
    }));
    assert_eq!(reader.join().unwrap(), 4 << 20);
    // Over a socket.
    let (ours, theirs) = duplex::<Vec<u8>>().unwrap();
    let (go_ours, go_theirs) = duplex::<()>().unwrap();
    let reader = Builder::new()
        .start_method(StartMethod::Fork)
        .close_in_child(&ours)
        .close_in_child(&go_ours)
        .spawn(move || match go_theirs.recv_timeout(DEADLINE) {
            Ok(()) => theirs.recv().unwrap().len(),
            Err(_) => 0,
        })
        .unwrap();
    ex.block_on(bounded(async {
        let (ours, go_ours) = (Async::new(ours).unwrap(), Async::new(go_ours).unwrap());
        let go = spawn(async move { go_ours.send(&()).await.unwrap() });
        ours.send(&big).await.unwrap();
        go.await.unwrap();
    }));
    assert_eq!(reader.join().unwrap(), 4 << 20);
}

fn sleep_then_triple(x: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(30));
    3 * x
}

/// The exit of a child started by each method is awaited, the fork server's children
/// included (whose status arrives in a report from the server, after their pidfd is ready).
#[test]
fn a_child_of_every_start_method_is_awaited() {
    mproc_init();
    let ex = Executor::new().unwrap();
    for method in [StartMethod::Fork, StartMethod::ForkServer, StartMethod::Spawn] {
        for _ in 0..5 {
            let child = Builder::new().start_method(method).spawn_fn(sleep_then_triple, 5).unwrap();
            let value = ex.block_on(bounded(async { Async::new(child).unwrap().join().await }));
            assert_eq!(value.unwrap(), 15, "{method:?}");
        }
    }
}

fn plus_one(x: u64) -> u64 {
    x + 1
}

/// 2,000 pool results, each awaited by its own coroutine, woken from the pool's handler
/// thread as they come in any order: every one arrives, once.
#[test]
fn many_pool_results_awaited_at_once() {
    mproc_init();
    let pool = Pool::new(2).unwrap();
    let ex = Executor::new().unwrap();
    let total = ex.block_on(bounded(async {
        let waits: Vec<_> = (0..2000u64)
            .map(|x| {
                let result = pool.apply_async(plus_one, x);
                spawn(async move { result.await.unwrap() })
            })
            .collect();
        join_all(waits).await.into_iter().map(Result::unwrap).sum::<u64>()
    }));
    assert_eq!(total, (1..=2000u64).sum::<u64>());
}

/// Results awaited when the pool is terminated under them end (with an error), instead of
/// leaving their coroutines waiting for ever.
#[test]
fn awaited_results_end_when_the_pool_is_terminated() {
    mproc_init();
    let pool = Pool::new(1).unwrap();
    let ex = Executor::new().unwrap();
    let outcomes = ex.block_on(bounded(async {
        let waits: Vec<_> = (0..4u64)
            .map(|x| {
                let result = pool.apply_async(slow_square, x);
                spawn(result)
            })
            .collect();
        yield_now().await;
        pool.terminate();
        join_all(waits).await
    }));
    assert_eq!(outcomes.len(), 4);
    for outcome in outcomes {
        // Finished before the end, or failed by it: never left waiting.
        let _ = outcome.unwrap();
    }
}

/// Two children reaped before they are registered (so neither has a pidfd): each registration
/// is its own, and dropping one leaves the other awaitable.
#[test]
fn children_reaped_before_registration_register_each_on_its_own() {
    let ex = Executor::new().unwrap();
    let reaped = |value: u8| {
        let (go_rx, go_tx) = mproc_coroutine::ipc::pipe::<u8>().unwrap();
        let child = Builder::new()
            .start_method(StartMethod::Fork)
            .close_in_child(&go_tx)
            .spawn(move || {
                let _ = go_rx.recv();
                value
            })
            .unwrap();
        // Our own pidfd (mproc opens none for a child nobody watched) says when it has ended;
        // `is_alive` then reaps it.
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(child.pid() as i32).unwrap(),
            rustix::process::PidfdFlags::empty(),
        )
        .unwrap();
        drop(go_tx);
        assert_eq!(mproc_coroutine::ipc::wait(&[&pidfd], Some(Duration::from_secs(120))).unwrap(), vec![0]);
        assert!(!child.is_alive());
        child
    };
    let (first, second) = (reaped(1), reaped(2));
    let value = ex.block_on(bounded(async {
        let first = Async::new(first).unwrap();
        let second = Async::new(second).expect("a second reaped child registers");
        drop(first);
        second.join().await
    }));
    assert_eq!(value.unwrap(), 2);
}

/// A waker that counts what holds it: `Arc::strong_count` less the test's own `Arc` and the
/// `Waker` made from the other one is the number of clones kept elsewhere (the reactor's).
struct CountingWake;

impl Wake for CountingWake {
    fn wake(self: Arc<Self>) {}
}

fn kept_clones(count: &Arc<CountingWake>) -> usize {
    Arc::strong_count(count) - 2
}

#[test]
fn a_waiting_receive_keeps_one_waker_however_often_it_is_polled_or_dropped() {
    let (ours, _theirs) = duplex::<u64>().unwrap();
    let ex = Executor::new().unwrap();
    ex.block_on(async {
        let ours = Async::new(ours).unwrap();
        let count = Arc::new(CountingWake);
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        // Polled again and again on a quiet end (no reactor turn in between): one waker.
        let mut recv = Box::pin(ours.recv());
        for _ in 0..100 {
            assert!(recv.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(kept_clones(&count), 1, "wakers kept for one waiting receive");
        // A receive that is dropped (a timeout in a loop) leaves none behind.
        for _ in 0..100 {
            let mut bounded_recv = pin!(timeout(DEADLINE, ours.recv()));
            assert!(bounded_recv.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(kept_clones(&count), 1, "wakers kept after 100 dropped receives");
        drop(recv);
        assert_eq!(kept_clones(&count), 0, "wakers kept once nothing waits");
    });
}

/// How long `readable()` / `writable()` may take on an end that is ready now (they should not
/// wait at all; bounded so that the test fails instead of hanging if they do).
const READY_NOW: Duration = Duration::from_secs(10);

/// Makes the executor's reactor take every readiness edge pending on its fds (edge-triggered,
/// each is reported once), while this coroutine waits for a message of its own.
async fn turn_the_reactor() {
    let (a, b) = duplex::<u8>().unwrap();
    let (a, b) = (Async::new(a).unwrap(), Async::new(b).unwrap());
    // Runs after this coroutine waits for the message: only the reactor can wake it.
    let sender = spawn(async move { b.send(&1).await });
    assert_eq!(bounded(a.recv()).await.unwrap(), 1);
    sender.await.unwrap().unwrap();
}

#[test]
fn writable_resolves_on_an_end_with_room_now() {
    let (ours, _theirs) = duplex::<u64>().unwrap();
    let (_rx, tx) = pipe::<u64>().unwrap();
    let ex = Executor::new().unwrap();
    ex.block_on(async {
        let (ours, tx) = (Async::new(ours).unwrap(), Async::new(tx).unwrap());
        // Their edge (room to write, from registration) is taken while nobody waits.
        turn_the_reactor().await;
        timeout(READY_NOW, ours.writable()).await.expect("an idle socket is writable");
        timeout(READY_NOW, tx.writable()).await.expect("an empty pipe is writable");
    });
}

#[test]
fn readable_resolves_on_an_end_with_data_now() {
    let (ours, theirs) = duplex::<u64>().unwrap();
    let (rx, tx) = pipe::<u64>().unwrap();
    theirs.send(&7).unwrap();
    tx.send(&8).unwrap();
    let ex = Executor::new().unwrap();
    ex.block_on(async {
        let (ours, rx) = (Async::new(ours).unwrap(), Async::new(rx).unwrap());
        // Their edge (data there, from registration) is taken while nobody waits.
        turn_the_reactor().await;
        timeout(READY_NOW, ours.readable()).await.expect("a socket with data is readable");
        timeout(READY_NOW, rx.readable()).await.expect("a pipe with data is readable");
        assert_eq!(bounded(ours.recv()).await.unwrap(), 7);
        assert_eq!(bounded(rx.recv()).await.unwrap(), 8);
    });
}

fn big_value(len: usize) -> Vec<u8> {
    vec![7; len]
}

/// A child whose value is larger than its connection's buffer (Spawn, ForkServer: the value
/// comes on the connection) is awaited to its end: the value is read while waiting, so the
/// child is not left blocked in its send with the parent waiting for its exit.
#[test]
fn a_child_whose_value_is_larger_than_its_connection_buffer_is_awaited() {
    mproc_init();
    let ex = Executor::new().unwrap();
    for method in [StartMethod::Fork, StartMethod::ForkServer, StartMethod::Spawn] {
        let child = Builder::new().start_method(method).spawn_fn(big_value, 2 << 20).unwrap();
        let value = ex.block_on(async {
            timeout(Duration::from_secs(30), async { Async::new(child).unwrap().join().await }).await
        });
        let value = value.unwrap_or_else(|_| panic!("{method:?}: the child's end was not seen within 30 s"));
        assert_eq!(value.unwrap().len(), 2 << 20, "{method:?}");
    }
}

fn abort_before_the_value(_: ()) -> u8 {
    std::process::abort()
}

/// A child that dies before it sends its value is awaited to its end, and the join says how
/// it ended.
#[test]
fn a_child_that_dies_before_its_value_is_awaited() {
    mproc_init();
    let ex = Executor::new().unwrap();
    for method in [StartMethod::Fork, StartMethod::ForkServer, StartMethod::Spawn] {
        let child = Builder::new().start_method(method).spawn_fn(abort_before_the_value, ()).unwrap();
        let joined = ex.block_on(bounded(async { Async::new(child).unwrap().join().await }));
        match joined {
            Err(mproc_coroutine::process::Error::Signaled { signal, .. }) => {
                assert_eq!(signal, 6, "{method:?}")
            }
            other => panic!("{method:?}: {other:?}"),
        }
    }
}
