//! Awaiting a queue's `get` and `put` from coroutines, through its doorbell.

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use mproc_coroutine::ipc::{Awaitable, Error, Queue};
use mproc_coroutine::{AsyncShared, Executor, spawn};

use crate::*;

fn put_three(queue: &Queue<u32>) {
    for i in 1..=3 {
        queue.put(&i).unwrap();
    }
}

fn get_one(queue: &Queue<u32>) {
    assert_eq!(queue.get_timeout(DEADLINE).unwrap(), 1);
}

#[test]
fn a_coroutine_awaits_get_while_another_process_puts() {
    let queue = Queue::<u32>::new().unwrap();
    let (go, done, child) = when_told_on(&queue, put_three);
    let ex = Executor::new().unwrap();
    let got = ex.block_on(async {
        let waiting = Rc::new(AsyncShared::new(queue.clone()).unwrap());
        let w = Rc::clone(&waiting);
        // No timeout inside the task: only a wake (the doorbell) polls its get again.
        let getter = spawn(async move {
            let mut got = vec![];
            for _ in 0..3 {
                got.push(w.get().await.unwrap());
            }
            got
        });
        // The getter waits, and this coroutine runs meanwhile: the thread is not blocked.
        mproc_coroutine::yield_now().await;
        assert_eq!(queue.listeners().count(), 1);
        go.send(&()).unwrap();
        bounded(getter).await.unwrap()
    });
    assert_eq!(got, [1, 2, 3]);
    done.recv_timeout(DEADLINE).unwrap();
    child.join().unwrap();
    assert_eq!(queue.listeners().count(), 0, "counted out when done");
    assert!(queue.empty());
}

#[test]
fn a_put_awaits_room_in_a_full_queue() {
    let queue = Queue::<u32>::with_maxsize(1).unwrap();
    queue.put(&1).unwrap();
    let (go, done, child) = when_told_on(&queue, get_one);
    let ex = Executor::new().unwrap();
    ex.block_on(async {
        let waiting = Rc::new(AsyncShared::new(queue.clone()).unwrap());
        let w = Rc::clone(&waiting);
        let putter = spawn(async move { bounded(w.put(&2)).await });
        mproc_coroutine::yield_now().await;
        assert_eq!((queue.qsize(), queue.listeners().count()), (1, 1), "the put waits");
        // Another process takes the first item: the get rings the doorbell, the put goes in.
        go.send(&()).unwrap();
        putter.await.unwrap().unwrap();
    });
    done.recv_timeout(DEADLINE).unwrap();
    child.join().unwrap();
    assert_eq!(queue.try_get().unwrap(), Some(2));
}

#[test]
fn timed_gets_and_puts_give_timeout_and_leave_the_queue_as_it_was() {
    let queue = Queue::<u32>::with_maxsize(1).unwrap();
    let ex = Executor::new().unwrap();
    ex.block_on(async {
        let q = AsyncShared::new(queue.clone()).unwrap();
        assert!(matches!(q.get_timeout(Duration::from_millis(5)).await, Err(Error::Timeout)));
        q.put_timeout(&1, Duration::ZERO).await.unwrap();
        assert!(matches!(q.put_timeout(&2, Duration::from_millis(5)).await, Err(Error::Timeout)));
        assert_eq!(queue.qsize(), 1, "the timed-out put put nothing");
        assert_eq!(q.get_timeout(Duration::ZERO).await.unwrap(), 1);
        assert!(matches!(q.get_timeout(Duration::ZERO).await, Err(Error::Timeout)));
    });
    assert_eq!(queue.listeners().count(), 0);
}

/// Starts `wait` (a get or put on `queue`) as a task, lets it wait (listening for the
/// doorbell), then cancels it: it counts itself out.
async fn cancel_while_waiting(
    queue: &Queue<u32>,
    wait: impl Future<Output = mproc_coroutine::ipc::Result<()>> + 'static,
) {
    let task = spawn(wait);
    mproc_coroutine::yield_now().await;
    assert!(!task.is_finished());
    assert_eq!(queue.listeners().count(), 1);
    drop(task);
    assert_eq!(queue.listeners().count(), 0);
}

#[test]
fn cancelled_gets_and_puts_leave_the_queue_whole() {
    let queue = Queue::<u32>::with_maxsize(1).unwrap();
    let ex = Executor::new().unwrap();
    ex.block_on(async {
        let q = Rc::new(AsyncShared::new(queue.clone()).unwrap());
        // A get cancelled while it waits.
        let w = Rc::clone(&q);
        cancel_while_waiting(&queue, async move { w.get().await.map(drop) }).await;
        queue.put(&7).unwrap();
        assert_eq!(queue.qsize(), 1, "the cancelled get took nothing");
        // A put cancelled while it waits for room.
        let w = Rc::clone(&q);
        cancel_while_waiting(&queue, async move { w.put(&8).await }).await;
        assert_eq!(bounded(q.get()).await.unwrap(), 7);
        assert_eq!(queue.try_get().unwrap(), None, "the cancelled put put nothing");
        // The queue still works both ways.
        bounded(q.put(&9)).await.unwrap();
        assert_eq!(bounded(q.get()).await.unwrap(), 9);
    });
}

#[test]
fn a_put_between_the_check_and_the_sleep_wakes_the_get() {
    let queue = Queue::<u32>::new().unwrap();
    let (go, done, child) = when_told_on(&queue, put_three);
    let ex = Executor::new().unwrap();
    ex.block_on(async {
        let q = Rc::new(AsyncShared::new(queue.clone()).unwrap());
        let w = Rc::clone(&q);
        let getter = spawn(async move { w.get().await });
        // The getter's first poll listens, notes the doorbell's event count and finds the
        // queue empty; this thread goes on without sleeping in the reactor.
        mproc_coroutine::yield_now().await;
        assert!(!getter.is_finished());
        // Another process puts now, before this thread sleeps: the put is whole (and its ring
        // written) when `done` comes.
        go.send(&()).unwrap();
        done.recv_timeout(DEADLINE).unwrap();
        // Only the ring polls the getter again: the executor looks at the reactor (without
        // sleeping) after every 1,024 polls, so within 8,192 yields it has seen the ring.
        for _ in 0..8192 {
            if getter.is_finished() {
                break;
            }
            mproc_coroutine::yield_now().await;
        }
        assert!(getter.is_finished(), "the put's ring did not wake the getter");
        assert_eq!(getter.await.unwrap().unwrap(), 1);
    });
    child.join().unwrap();
}

#[test]
fn a_put_without_listeners_rings_nothing() {
    let queue = Queue::<u32>::with_maxsize(2).unwrap();
    queue.put(&1).unwrap();
    assert_eq!(queue.get().unwrap(), 1);
    let mut buf = [0u8; 8];
    assert!(rustix::io::read(queue.doorbell(), &mut buf).is_err(), "rang with no listener");
}

/// A spawned child's side: a coroutine gets `n` items and returns their sum.
fn spawned_getter((queue, n): (Queue<u32>, u32)) -> u32 {
    let ex = Executor::new().unwrap();
    ex.block_on(async {
        let q = AsyncShared::new(queue).unwrap();
        let mut sum = 0;
        for _ in 0..n {
            sum += bounded(q.get()).await.unwrap();
        }
        sum
    })
}

#[test]
fn coroutines_in_spawned_children_await_a_queue_from_their_arguments() {
    mproc_init();
    let queue = Queue::<u32>::with_maxsize(4).unwrap();
    // The queue reaches these children in their arguments: its doorbell goes as SCM_RIGHTS.
    let children = spawned_by_each(spawned_getter, &(queue.clone(), 50));
    let ex = Executor::new().unwrap();
    ex.block_on(async {
        // A bounded queue: these puts wait (as a coroutine) for the children's gets.
        let q = AsyncShared::new(queue.clone()).unwrap();
        for i in 1..=100 {
            bounded(q.put(&i)).await.unwrap();
        }
    });
    let total: u32 = children.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(total, (1..=100).sum());
}
