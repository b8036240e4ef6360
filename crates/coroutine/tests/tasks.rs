//! The task cell under stress: wakes from other threads racing with runs, finishes and
//! cancellations; a task cancelled from inside its own poll; panicking destructors; handles
//! that outlive their executor. Also run under valgrind (no child processes here).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use mproc_coroutine::{Executor, Task, spawn, yield_now};

use crate::*;

/// 200 tasks each wait for 50 "ticks" through wakers they leave in a shared list; two other
/// threads wake whatever is in the list, as fast as they can (many wakes are stale or early,
/// some land while the task runs). A third of the tasks are cancelled half way. Every task
/// left runs to the end with the right count, every future is dropped once, nothing crashes.
#[test]
fn wakes_from_other_threads_race_with_runs_and_cancels() {
    let ex = Executor::new().unwrap();
    let wakers: Arc<Mutex<Vec<Waker>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let wakers_threads: Vec<_> = (0..2)
        .map(|_| {
            let (wakers, stop) = (Arc::clone(&wakers), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let batch: Vec<Waker> = wakers.lock().unwrap().drain(..).collect();
                    for w in &batch {
                        w.wake_by_ref();
                    }
                    drop(batch); // dropped here: the last reference may be this thread's
                    std::thread::yield_now();
                }
            })
        })
        .collect();
    let dropped = Arc::new(AtomicUsize::new(0));
    let counts = ex.block_on(bounded(async {
        let tasks: Vec<Task<u32>> = (0..200)
            .map(|_| {
                let (wakers, guard) = (Arc::clone(&wakers), Guard(Arc::clone(&dropped)));
                spawn(async move {
                    let _guard = guard;
                    let mut ticks = 0;
                    while ticks < 50 {
                        // Woken by another thread (or spuriously): one tick per poll.
                        let mut first = true;
                        poll_fn(|cx| {
                            if first {
                                first = false;
                                wakers.lock().unwrap().push(cx.waker().clone());
                                Poll::Pending
                            } else {
                                Poll::Ready(())
                            }
                        })
                        .await;
                        ticks += 1;
                    }
                    ticks
                })
            })
            .collect();
        let mut kept = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            if i % 3 == 0 {
                yield_now().await;
                drop(task); // cancelled, maybe while a wake for it is in flight
            } else {
                kept.push(task);
            }
        }
        let mut counts = Vec::new();
        for task in kept {
            counts.push(task.await.unwrap());
        }
        counts
    }));
    stop.store(true, Ordering::Relaxed);
    for t in wakers_threads {
        t.join().unwrap();
    }
    assert_eq!(counts.len(), 133);
    assert!(counts.iter().all(|&c| c == 50));
    drop(ex);
    wakers.lock().unwrap().clear();
    assert_eq!(dropped.load(Ordering::SeqCst), 200, "every future dropped exactly once");
}

/// A task that drops its own handle while it runs is cancelled when that poll returns: its
/// future is dropped then, and it never runs again.
#[test]
fn a_task_cancelled_from_inside_its_own_poll_stops_after_it() {
    let ex = Executor::new().unwrap();
    let dropped = Arc::new(AtomicUsize::new(0));
    let polls = Rc::new(Cell::new(0));
    ex.block_on(async {
        let own: Rc<RefCell<Option<Task<()>>>> = Rc::default();
        let (me, p, guard) = (Rc::clone(&own), Rc::clone(&polls), Guard(Arc::clone(&dropped)));
        let task = spawn(async move {
            let _guard = guard;
            loop {
                p.set(p.get() + 1);
                me.borrow_mut().take(); // drops this very task's handle
                yield_now().await;
            }
        });
        *own.borrow_mut() = Some(task);
        for _ in 0..5 {
            yield_now().await;
        }
    });
    assert_eq!(polls.get(), 1, "it ran again after cancelling itself");
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
}

/// A destructor that panics is caught: at a task's end it is that task's panic; in a
/// cancelled task's future it is swallowed. The executor and the other tasks go on.
#[test]
fn panicking_destructors_do_not_break_the_executor() {
    struct Bomb;
    impl Drop for Bomb {
        fn drop(&mut self) {
            panic!("a destructor panicked");
        }
    }
    let ex = Executor::new().unwrap();
    let value = ex.block_on(async {
        let finishes = spawn(async {
            let _bomb = Bomb;
            yield_now().await;
            7
        });
        let cancelled = spawn(async {
            let _bomb = Bomb;
            poll_fn(|_| Poll::<()>::Pending).await;
        });
        yield_now().await;
        drop(cancelled);
        let err = finishes.await.unwrap_err();
        assert_eq!(err.message, "a destructor panicked");
        spawn(async { 1 }).await.unwrap()
    });
    assert_eq!(value, 1);
}

/// A handle kept past its executor says its task was cancelled; wakers kept past it are
/// harmless, woken here or in another thread.
#[test]
fn handles_and_wakers_outliving_their_executor() {
    let ex = Executor::new().unwrap();
    let kept: Arc<Mutex<Vec<Waker>>> = Arc::default();
    let k = Arc::clone(&kept);
    let task = ex.spawn(async move {
        poll_fn(|cx| {
            k.lock().unwrap().push(cx.waker().clone());
            Poll::<u8>::Pending
        })
        .await
    });
    ex.block_on(yield_now());
    drop(ex);
    let executor = Executor::new().unwrap();
    let output = executor.block_on(task);
    assert!(output.unwrap_err().message.contains("cancelled"));
    let wakers = std::mem::take(&mut *kept.lock().unwrap());
    assert_eq!(wakers.len(), 1);
    let w = wakers[0].clone();
    std::thread::spawn(move || w.wake()).join().unwrap();
    wakers.into_iter().for_each(Waker::wake);
}
