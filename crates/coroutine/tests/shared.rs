//! Awaiting shared-memory primitives (an `Event`) through their doorbell.

use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use mproc_coroutine::ipc::{Awaitable, Event};
use mproc_coroutine::{AsyncShared, Executor, join_all, spawn, timeout};

use crate::*;

/// Waits (spinning, with the deadline) until `n` coroutines listen for `event`'s doorbell.
fn until_listening(event: &Event, n: u32) {
    let deadline = Instant::now() + DEADLINE;
    while event.listeners().count() < n {
        assert!(Instant::now() < deadline, "{n} listeners never came");
        std::thread::yield_now();
    }
}

#[test]
fn a_coroutine_awaits_an_event_set_by_another_process() {
    let event = Event::new().unwrap();
    let (go, done, child) = when_told_on(&event, Event::set);
    let ex = Executor::new().unwrap();
    ex.block_on(async {
        let waiting = AsyncShared::new(event.clone()).unwrap();
        let waiter = spawn(async move { bounded(waiting.wait()).await });
        // The waiter listens before the child is told to set.
        mproc_coroutine::yield_now().await;
        assert_eq!(event.listeners().count(), 1);
        go.send(&()).unwrap();
        waiter.await.unwrap();
    });
    done.recv_timeout(DEADLINE).unwrap();
    child.join().unwrap();
    assert_eq!(event.listeners().count(), 0, "counted out when done");
}

#[test]
fn a_set_after_the_check_and_before_the_sleep_wakes_the_coroutine() {
    let event = Event::new().unwrap();
    let (go, done, child) = when_told_on(&event, Event::set);
    let ex = Executor::new().unwrap();
    ex.block_on(async {
        let waiting = AsyncShared::new(event.clone()).unwrap();
        let mut wait = pin!(waiting.wait());
        // The first poll listens, notes the doorbell's event count and checks the flag.
        let first = std::future::poll_fn(|cx: &mut Context<'_>| Poll::Ready(wait.as_mut().poll(cx))).await;
        assert!(first.is_pending());
        // Another process sets the event now, before this thread goes to sleep in the reactor.
        go.send(&()).unwrap();
        done.recv_timeout(DEADLINE).unwrap();
        bounded(wait).await;
    });
    child.join().unwrap();
}

#[test]
fn a_cancelled_wait_counts_itself_out_and_the_event_still_works() {
    let event = Event::new().unwrap();
    let ex = Executor::new().unwrap();
    ex.block_on(async {
        let waiting = Rc::new(AsyncShared::new(event.clone()).unwrap());
        assert!(timeout(Duration::from_millis(5), waiting.wait()).await.is_err());
        let w = Rc::clone(&waiting);
        let task = spawn(async move { w.wait().await });
        mproc_coroutine::yield_now().await;
        assert_eq!(event.listeners().count(), 1);
        drop(task); // cancels the wait
        assert_eq!(event.listeners().count(), 0);
        event.set();
        bounded(waiting.wait()).await;
    });
}

#[test]
fn a_timed_wait_gives_false_until_set_and_a_set_without_listeners_rings_nothing() {
    let event = Event::new().unwrap();
    event.set();
    event.clear();
    // No one listened: the eventfd was not written (a read finds nothing).
    let mut buf = [0u8; 8];
    assert!(rustix::io::read(event.doorbell(), &mut buf).is_err(), "rang with no listener");
    let ex = Executor::new().unwrap();
    ex.block_on(async {
        let waiting = AsyncShared::new(event.clone()).unwrap();
        assert!(!waiting.wait_timeout(Duration::from_millis(5)).await);
        event.set();
        assert!(waiting.wait_timeout(Duration::ZERO).await);
        assert!(waiting.wait_timeout(DEADLINE).await);
    });
}

/// A spawned child's side: `n` coroutines await `event`, then the child returns how many woke.
fn spawned_waiters((event, n): (Event, u32)) -> u32 {
    let ex = Executor::new().unwrap();
    ex.block_on(async {
        let waiting = Rc::new(AsyncShared::new(event).unwrap());
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let w = Rc::clone(&waiting);
                spawn(async move { w.wait().await })
            })
            .collect();
        bounded(join_all(tasks)).await.into_iter().filter(Result::is_ok).count() as u32
    })
}

#[test]
fn many_coroutines_in_three_processes_wake_on_one_set() {
    mproc_init();
    let event = Event::new().unwrap();
    // The event reaches these children in their arguments: its doorbell goes as SCM_RIGHTS.
    let children = spawned_by_each(spawned_waiters, &(event.clone(), 100));
    let ex = Executor::new().unwrap();
    let woke = ex.block_on(async {
        // Ten handles (each registers its own fd), a hundred waits on each.
        let handles: Vec<_> = (0..10).map(|_| Rc::new(AsyncShared::new(event.clone()).unwrap())).collect();
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                let waiting = Rc::clone(&handles[i % 10]);
                spawn(async move { waiting.wait().await })
            })
            .collect();
        mproc_coroutine::yield_now().await;
        until_listening(&event, 1200);
        event.set();
        bounded(join_all(tasks)).await.into_iter().filter(Result::is_ok).count()
    });
    assert_eq!(woke, 1000);
    for child in children {
        assert_eq!(child.join().unwrap(), 100);
    }
}
