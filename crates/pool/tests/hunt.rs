//! Defects found hunting the local pool's promise (never a hang, each task once): tasks whose
//! arguments hold more ends than one message carries, a pool dropped or joined from its own
//! threads.

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use mproc_pool::process::ipc::{self, Receiver};
use mproc_pool::{Error, Pool};

use crate::*;

/// How many ends a task got.
fn count_ends(ends: Vec<Receiver<()>>) -> usize {
    ends.len()
}

/// `n` ends (the reading ends of `n` pipes), each an fd when encoded.
fn ends(n: usize) -> Vec<Receiver<()>> {
    (0..n).map(|_| ipc::pipe::<()>().unwrap().0).collect()
}

/// One task whose arguments hold more ends than one message can carry (253) fails alone, at
/// once, and the pool goes on.
#[test]
fn a_task_with_more_ends_than_a_message_carries_fails_alone() {
    within(DEADLINE, || {
        let pool = pool(1);
        let too_many = pool.apply_async(count_ends, ends(300));
        match get(too_many) {
            Err(Error::Transfer { message, .. }) => {
                let limit = (ipc::MAX_ENDS - 1).to_string();
                assert!(message.contains("300 ipc ends") && message.contains(&limit), "{message}");
            }
            other => panic!("expected a Transfer error naming the limit, got {other:?}"),
        }
        assert_eq!(get(pool.apply_async(count_ends, ends(3))).unwrap(), 3);
    });
}

/// Waits (for at most the deadline) until the test lets the worker go.
fn wait_for_the_test(gate: Receiver<()>) {
    let _ = gate.recv_timeout(DEADLINE);
}

/// Many tasks of two ends each, pending behind many trivial tasks when the worker starts: its
/// batches grow to hundreds of tasks with the trivial ones, and still each batch of tasks with
/// ends stays within what one message carries, and every task completes.
#[test]
fn batches_of_tasks_with_ends_stay_within_a_message() {
    within(DEADLINE, || {
        mproc_init();
        let (gate, open) = ipc::pipe::<()>().unwrap();
        let pool =
            Pool::builder().processes(1).threads().initializer(wait_for_the_test, gate).build().unwrap();
        let trivial: Vec<_> = (0..20_000u64).map(|x| pool.apply_async(square, x)).collect();
        let results: Vec<_> = (0..1_000).map(|_| pool.apply_async(count_ends, ends(2))).collect();
        open.send(&()).unwrap();
        for (x, r) in trivial.into_iter().enumerate() {
            assert_eq!(get(r).unwrap(), (x * x) as u64);
        }
        for r in results {
            assert_eq!(get(r).unwrap(), 2);
        }
    });
}

/// The thread pool its own tasks can reach (a task is a plain `fn`: it finds its pool here).
static OWN_POOL: Mutex<Option<Pool>> = Mutex::new(None);

/// Drops the pool it runs in.
fn drop_own_pool(x: u64) -> u64 {
    drop(OWN_POOL.lock().unwrap().take());
    x
}

/// A thread pool whose task drops the pool (its last owner) does not wait for that task to
/// end, which would be for ever: the drop returns, and the pool's other tasks still complete.
#[test]
fn a_thread_pool_dropped_inside_its_own_task_does_not_hang() {
    within(DEADLINE, || {
        mproc_init();
        let pool = Pool::builder().processes(2).threads().build().unwrap();
        // Held until the pool is there for the task to take.
        let mut own = OWN_POOL.lock().unwrap();
        let others: Vec<_> = (0..100u64).map(|x| pool.apply_async(square, x)).collect();
        let dropping = pool.apply_async(drop_own_pool, 7);
        *own = Some(pool);
        drop(own);
        assert_eq!(get(dropping).unwrap(), 7);
        for (x, r) in others.into_iter().enumerate() {
            assert_eq!(get(r).unwrap(), (x * x) as u64);
        }
    });
}

/// A callback that takes the pool's last owner drops the pool on the callback thread: the
/// drop neither waits for that thread (itself) nor panics, and later callbacks run.
#[test]
fn a_pool_dropped_inside_its_own_callback_does_not_hang_or_panic() {
    within(DEADLINE, || {
        let pool = pool(2);
        let owner: Arc<Mutex<Option<Pool>>> = Arc::default();
        let (go_tx, go) = mpsc::channel::<()>();
        let (tx, rx) = mpsc::channel::<Result<u64, String>>();
        let said = tx.clone();
        let slot = Arc::clone(&owner);
        let first = pool.apply_async_with(
            square,
            3,
            move |v| {
                go.recv_timeout(DEADLINE).expect("the test hands its pool over");
                let last = slot.lock().unwrap().take().expect("the pool");
                let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(last)));
                let _ = said.send(dropped.map(|()| v).map_err(|p| mproc_pool::process::panic_message(&*p)));
            },
            |e| panic!("{e}"),
        );
        let later = pool.apply_async_with(square, 4, move |v| tx.send(Ok(v)).unwrap(), |e| panic!("{e}"));
        drop((first, later));
        *owner.lock().unwrap() = Some(pool);
        go_tx.send(()).unwrap();
        let mut got: Vec<u64> = (0..2)
            .map(|_| rx.recv_timeout(DEADLINE).expect("both callbacks run").expect("the drop does not panic"))
            .collect();
        got.sort_unstable();
        assert_eq!(got, [9, 16]);
    });
}

/// Panics with a message of `n` bytes.
fn panic_at_length(n: usize) -> u64 {
    panic!("{}", "x".repeat(n))
}

/// A task whose panic message is past the pool's message limit (an `assert_eq!` on large
/// values prints both) fails with `Panicked`, its message cut to fit, and its worker lives.
#[test]
fn a_panic_message_past_the_message_limit_fails_its_task_as_a_panic() {
    within(DEADLINE, || {
        mproc_init();
        let limit = 64 << 10;
        let pool = Pool::builder().processes(1).max_message_size(limit).build().unwrap();
        let before = get(pool.apply_async(pid, ())).unwrap();
        match get(pool.apply_async(panic_at_length, 2 * limit)) {
            Err(Error::Panicked { message, pid, .. }) => {
                assert!(message.starts_with("xxx") && message.len() <= limit, "{} bytes", message.len());
                assert_eq!(pid, before, "the worker lives on");
            }
            other => panic!("expected Panicked, got {:?}", other.map_err(|e| e.to_string())),
        }
        assert_eq!(get(pool.apply_async(pid, ())).unwrap(), before, "the worker lives on");
    });
}

/// Closes and joins the pool it runs in: how the join ended.
fn join_own_pool(_: ()) -> String {
    let pool = OWN_JOINED.lock().unwrap();
    let pool = pool.as_ref().expect("the pool");
    pool.close();
    match pool.join() {
        Ok(()) => "joined".into(),
        Err(e) => e.to_string(),
    }
}

/// The thread pool `join_own_pool` reaches.
static OWN_JOINED: Mutex<Option<Pool>> = Mutex::new(None);

/// `join` from one of the pool's own tasks would wait for that task for ever: it fails at
/// once, saying so, and the pool's tasks complete.
#[test]
fn a_thread_pool_joined_inside_its_own_task_says_so_instead_of_hanging() {
    within(DEADLINE, || {
        mproc_init();
        let pool = Pool::builder().processes(2).threads().build().unwrap();
        // Held until the pool is there for the task to join.
        let mut own = OWN_JOINED.lock().unwrap();
        let joining = pool.apply_async(join_own_pool, ());
        let others: Vec<_> = (0..100u64).map(|x| pool.apply_async(square, x)).collect();
        *own = Some(pool);
        drop(own);
        let said = get(joining).unwrap();
        assert!(said.contains("own tasks"), "{said}");
        for (x, r) in others.into_iter().enumerate() {
            assert_eq!(get(r).unwrap(), (x * x) as u64);
        }
        let pool = OWN_JOINED.lock().unwrap().take().unwrap();
        pool.join().unwrap();
    });
}

/// Several threads use one pool at once (`map`, `imap_unordered`, `apply_async_with`) while
/// another closes it, then terminates it: every call returns (a value or an error), none
/// waits for ever.
#[test]
fn a_pool_used_from_several_threads_while_it_is_closed_and_terminated_never_hangs() {
    within(DEADLINE, || {
        let pool = Arc::new(pool(2));
        let (started, all_started) = mpsc::channel::<()>();
        let users: Vec<_> = (0..4u64)
            .map(|k| {
                let (pool, started) = (Arc::clone(&pool), started.clone());
                std::thread::spawn(move || {
                    for round in 0..200u64 {
                        if round == 20 {
                            // Work is in flight from every thread: the pool may end now.
                            let _ = started.send(());
                        }
                        match k {
                            0 => drop(pool.map(square, 0..100u64)),
                            1 => pool.imap_unordered(square, 0..50u64).for_each(drop),
                            2 => {
                                let (tx, rx) = mpsc::channel();
                                let err = tx.clone();
                                drop(pool.apply_async_with(
                                    square,
                                    round,
                                    move |v| drop(tx.send(Ok(v))),
                                    move |e| drop(err.send(Err(e))),
                                ));
                                drop(rx.recv_timeout(DEADLINE).expect("a callback runs"));
                            }
                            _ => drop(get(pool.apply_async(square, round))),
                        }
                    }
                })
            })
            .collect();
        for _ in 0..4 {
            all_started.recv_timeout(DEADLINE).unwrap();
        }
        pool.close();
        pool.terminate();
        for user in users {
            user.join().unwrap();
        }
    });
}

/// An initializer that takes three times the pool's task timeout.
fn slow_init(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// A task timeout is a task's: a worker still in its initializer when the timeout of the task
/// it was sent passes has not started it, and is not killed for it (old: killed and replaced
/// at every deadline, each successor in its initializer again: the task never ran).
#[test]
fn a_task_timeout_does_not_kill_a_worker_still_in_its_initializer() {
    within(DEADLINE, || {
        mproc_init();
        let timeout = Duration::from_millis(200);
        let pool = Pool::builder()
            .processes(1)
            .task_timeout(timeout)
            .initializer(slow_init, 3 * timeout.as_millis() as u64)
            .build()
            .unwrap();
        assert_eq!(get(pool.apply_async(square, 3)).unwrap(), 9);
        // The task timeout still holds for tasks.
        assert!(matches!(get(pool.apply_async(endless, ())), Err(Error::Timeout { .. })));
    });
}
