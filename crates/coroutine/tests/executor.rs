//! The executor alone: tasks, panics, cancellation, timers, channels, wakers from threads.

use std::cell::Cell;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use mproc_coroutine::{Executor, channel, first_of, join_all, sleep, spawn, timeout, yield_now};

use crate::*;

#[test]
fn spawned_tasks_run_and_give_their_outputs() {
    let ex = Executor::new().unwrap();
    let outputs = ex.block_on(async {
        let tasks: Vec<_> = (0..100u64).map(|i| spawn(async move { i * 2 })).collect();
        join_all(tasks).await
    });
    assert_eq!(outputs.into_iter().map(Result::unwrap).sum::<u64>(), 9900);
    // Tasks spawned outside block_on run when it runs.
    let early = ex.spawn(async { 5 });
    assert_eq!(ex.block_on(early).unwrap(), 5);
}

#[test]
fn a_panicking_task_fails_alone_with_its_message() {
    let ex = Executor::new().unwrap();
    let survivors = Rc::new(Cell::new(0));
    let result = ex.block_on(async {
        let bad = spawn(async {
            yield_now().await;
            panic!("task went wrong");
        });
        let good: Vec<_> = (0..10)
            .map(|_| {
                let s = Rc::clone(&survivors);
                spawn(async move {
                    yield_now().await;
                    s.set(s.get() + 1);
                })
            })
            .collect();
        for g in good {
            g.await.unwrap();
        }
        bad.await
    });
    let err = result.unwrap_err();
    assert_eq!(err.message, "task went wrong");
    assert_eq!(survivors.get(), 10);
}

/// Every kind of unfinished task: woken and queued, waiting on a timer, waiting on an fd,
/// never to be woken (nobody kept its waker). Dropping the executor drops all their futures,
/// and with them what they hold (here an `Async` end, which itself holds the executor).
#[test]
fn dropping_the_executor_drops_every_unfinished_future() {
    let ex = Executor::new().unwrap();
    let dropped = Arc::new(AtomicUsize::new(0));
    let (ours, theirs) = mproc_coroutine::ipc::duplex::<u8>().unwrap();
    ex.block_on(async {
        let guard = || Guard(Arc::clone(&dropped));
        let (g, end) = (guard(), mproc_coroutine::Async::new(ours).unwrap());
        spawn(async move {
            let _guard = g;
            let _ = end.recv().await; // nothing ever comes
        })
        .detach();
        let g = guard();
        spawn(async move {
            let _guard = g;
            sleep(Duration::from_secs(3600)).await;
        })
        .detach();
        let g = guard();
        spawn(async move {
            let _guard = g;
            loop {
                yield_now().await; // always queued
            }
        })
        .detach();
        let g = guard();
        spawn(async move {
            let _guard = g;
            poll_fn(|_| Poll::<()>::Pending).await; // nobody keeps its waker
        })
        .detach();
        yield_now().await;
        yield_now().await;
    });
    assert_eq!(dropped.load(Ordering::SeqCst), 0, "every task is still unfinished");
    drop(ex);
    assert_eq!(dropped.load(Ordering::SeqCst), 4, "a future outlived its executor");
    let gone = theirs.recv_timeout(DEADLINE);
    assert!(
        matches!(gone, Err(mproc_coroutine::ipc::Error::Closed)),
        "the Async end outlived its executor: {gone:?}"
    );
}

#[test]
fn dropping_a_task_cancels_it_and_detach_lets_it_run() {
    let ex = Executor::new().unwrap();
    let dropped = Arc::new(AtomicUsize::new(0));
    let ran = Rc::new(Cell::new(false));
    ex.block_on(async {
        let guard = Guard(Arc::clone(&dropped));
        let forever = spawn(async move {
            let _guard = guard;
            poll_fn(|_| Poll::<()>::Pending).await;
        });
        yield_now().await;
        drop(forever);
        let r = Rc::clone(&ran);
        spawn(async move {
            yield_now().await;
            r.set(true);
        })
        .detach();
        sleep(Duration::from_millis(5)).await;
    });
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the cancelled task's future was dropped");
    assert!(ran.get(), "the detached task ran");
}

#[test]
fn wakers_woken_from_threads_after_their_task_ended_are_harmless() {
    let ex = Executor::new().unwrap();
    let dropped = Arc::new(AtomicUsize::new(0));
    let kept: Arc<Mutex<Vec<Waker>>> = Arc::default();
    ex.block_on(async {
        // A task that keeps its waker and finishes; one that keeps it and is cancelled.
        let k = Arc::clone(&kept);
        let finished = spawn(async move {
            poll_fn(|cx| {
                k.lock().unwrap().push(cx.waker().clone());
                Poll::Ready(())
            })
            .await
        });
        finished.await.unwrap();
        let (k, guard) = (Arc::clone(&kept), Guard(Arc::clone(&dropped)));
        let cancelled = spawn(async move {
            let _guard = guard;
            poll_fn(|cx| {
                k.lock().unwrap().push(cx.waker().clone());
                Poll::<()>::Pending
            })
            .await
        });
        yield_now().await;
        drop(cancelled);
        // A cancelled task's future is dropped the next time the executor runs its queue.
        yield_now().await;
    });
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    let wakers = std::mem::take(&mut *kept.lock().unwrap());
    assert_eq!(wakers.len(), 2);
    let threads: Vec<_> = wakers
        .into_iter()
        .map(|w| {
            std::thread::spawn(move || {
                w.wake_by_ref();
                w.wake();
            })
        })
        .collect();
    for t in threads {
        t.join().expect("waking from another thread does not panic");
    }
    // The executor goes on working.
    assert_eq!(ex.block_on(async { spawn(async { 1 }).await.unwrap() }), 1);
}

#[test]
fn a_wake_from_another_thread_wakes_a_sleeping_executor() {
    let ex = Executor::new().unwrap();
    let slot: Arc<Mutex<Option<Waker>>> = Arc::default();
    let flag = Arc::new(AtomicUsize::new(0));
    let (s, f) = (Arc::clone(&slot), Arc::clone(&flag));
    let waker_thread = std::thread::spawn(move || {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(w) = s.lock().unwrap().take() {
                f.store(1, Ordering::SeqCst);
                w.wake();
                return;
            }
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    ex.block_on(bounded(poll_fn(|cx| {
        if flag.load(Ordering::SeqCst) == 1 {
            return Poll::Ready(());
        }
        *slot.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    })));
    waker_thread.join().unwrap();
}

#[test]
fn sleep_timeout_and_first_of() {
    let ex = Executor::new().unwrap();
    ex.block_on(async {
        let start = Instant::now();
        sleep(Duration::from_millis(20)).await;
        assert!(start.elapsed() >= Duration::from_millis(20), "a sleep never ends early");
        assert!(timeout(Duration::from_millis(5), sleep(DEADLINE)).await.is_err());
        assert_eq!(timeout(DEADLINE, async { 3 }).await, Ok(3));
        let (first, ()) = first_of([sleep(DEADLINE), sleep(Duration::from_millis(1)), sleep(DEADLINE)]).await;
        assert_eq!(first, 1);
    });
}

#[test]
fn a_local_channel_delivers_in_order_and_ends_with_its_senders() {
    let ex = Executor::new().unwrap();
    let got = ex.block_on(async {
        let (tx, rx) = channel::<u32>();
        let producer = spawn(async move {
            for i in 0..100 {
                tx.send(i).unwrap();
                if i % 10 == 0 {
                    yield_now().await;
                }
            }
        });
        let mut got = Vec::new();
        while let Some(v) = rx.recv().await {
            got.push(v);
        }
        producer.await.unwrap();
        got
    });
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    let (tx, rx) = channel::<u32>();
    drop(rx);
    assert_eq!(tx.send(1), Err(1), "no receiver");
}

#[test]
fn spawn_outside_block_on_is_a_clear_panic() {
    let err = std::panic::catch_unwind(|| spawn(async {})).unwrap_err();
    let message =
        err.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| err.downcast_ref::<String>().cloned());
    assert!(message.unwrap().contains("outside Executor::block_on"));
}

/// A main future that keeps waking itself (polling a flag with `yield_now`) while a task waits
/// for its end to become readable: the executor never sleeps, but it must still look at the
/// reactor now and then, or the task is never woken (before, only a full budget of *tasks*
/// made it look, so this loop ran out with nothing arrived).
#[test]
fn a_main_future_that_keeps_waking_itself_does_not_starve_io() {
    let (ours, theirs) = mproc_coroutine::ipc::duplex::<u32>().unwrap();
    let ex = Executor::new().unwrap();
    let arrived = ex.block_on(async {
        let ours = mproc_coroutine::Async::new(ours).unwrap();
        let arrived = Rc::new(Cell::new(None));
        let receiver = spawn({
            let arrived = Rc::clone(&arrived);
            async move { arrived.set(Some(ours.recv().await.unwrap())) }
        });
        yield_now().await; // the task runs, finds nothing, and waits on the reactor
        theirs.send(&7).unwrap();
        for _ in 0..100_000 {
            if arrived.get().is_some() {
                break;
            }
            yield_now().await;
        }
        drop(receiver);
        arrived.get()
    });
    assert_eq!(arrived, Some(7));
}
