//! Locks, semaphores, events, conditions, `Value` and `Array` across processes, and what
//! happens when one of the processes dies.

use std::time::Duration;

use mproc_ipc::{
    Array, BoundedSemaphore, Condition, Connection, Event, Lock, LockError, RLock, ReleasedTooManyTimes,
    Semaphore, Value, duplex, pipe,
};

use crate::support::{DEADLINE, assert_success, in_child, msg};

const SHORT: Duration = Duration::from_millis(10);

#[test]
fn lock_counts_across_processes_and_times_out_when_held() {
    let lock = Lock::new().unwrap();
    let counter = Value::new(0u64).unwrap();
    let bump = || -> Result<(), String> {
        for _ in 0..10_000 {
            let _g = lock.acquire_timeout(DEADLINE).map_err(msg)?;
            // get and set each take the Value's own lock: only `lock` makes the pair atomic.
            counter.set(counter.get() + 1);
        }
        Ok(())
    };
    let child = in_child(&[], bump);
    bump().unwrap();
    assert_success(child);
    assert_eq!(counter.get(), 20_000);
    let _g = lock.acquire().unwrap();
    let other = std::thread::scope(|s| {
        s.spawn(|| matches!(lock.acquire_timeout(SHORT), Err(LockError::Timeout))).join().unwrap()
    });
    assert!(other);
    assert!(matches!(lock.acquire(), Err(LockError::Io(_))), "relock by the holder is an error");
}

#[test]
fn a_lock_holder_killed_hands_it_over_with_owner_died() {
    let lock = Lock::new().unwrap();
    let (rx, tx) = pipe::<()>().unwrap();
    let child = in_child(&[&tx], || {
        let g = lock.acquire().map_err(msg)?;
        tx.send(&()).map_err(msg)?;
        std::mem::forget(g);
        loop {
            std::thread::park();
        }
    });
    rx.recv_timeout(DEADLINE).unwrap();
    drop(child);
    assert!(matches!(lock.acquire_timeout(DEADLINE), Err(LockError::OwnerDied(_))));
    assert!(lock.acquire_timeout(DEADLINE).is_ok(), "handed over once, then clean");
}

#[test]
fn rlock_is_recursive_and_shared() {
    let lock = RLock::new().unwrap();
    let a = lock.acquire().unwrap();
    let b = lock.acquire().unwrap();
    let (rx, tx) = pipe::<bool>().unwrap();
    let child = in_child(&[&tx], || tx.send(&lock.try_acquire().is_ok()).map_err(msg));
    assert!(!rx.recv_timeout(DEADLINE).unwrap(), "another process cannot take it");
    assert_success(child);
    drop((a, b));
    let child = in_child(&[&tx], || tx.send(&lock.try_acquire().is_ok()).map_err(msg));
    assert!(rx.recv_timeout(DEADLINE).unwrap());
    assert_success(child);
}

#[test]
fn semaphore_hands_permits_between_processes() {
    let sem = Semaphore::new(0).unwrap();
    assert!(!sem.try_acquire() && !sem.acquire_timeout(SHORT));
    let child = in_child(&[], || {
        for _ in 0..1000 {
            if !sem.acquire_timeout(DEADLINE) {
                return Err("no permit".into());
            }
        }
        Ok(())
    });
    for _ in 0..1000 {
        sem.release();
    }
    assert_success(child);
    assert_eq!(sem.get_value(), 0);
}

#[test]
fn a_semaphore_waiter_killed_mid_wait_strands_no_one() {
    let sem = Semaphore::new(0).unwrap();
    let (rx, tx) = pipe::<()>().unwrap();
    let waiter = |tx: &mproc_ipc::Sender<()>| -> Result<(), String> {
        tx.send(&()).map_err(msg)?;
        if sem.acquire_timeout(DEADLINE) { Ok(()) } else { Err("no permit".into()) }
    };
    let doomed = in_child(&[&tx], || waiter(&tx));
    rx.recv_timeout(DEADLINE).unwrap();
    let live = in_child(&[&tx], || waiter(&tx));
    rx.recv_timeout(DEADLINE).unwrap();
    drop(doomed); // killed, in the wait or just before it
    sem.release();
    assert_success(live);
}

#[test]
fn bounded_semaphore_refuses_a_release_past_its_bound() {
    let sem = BoundedSemaphore::new(2).unwrap();
    assert_eq!(sem.release(), Err(ReleasedTooManyTimes));
    assert!(sem.try_acquire() && sem.try_acquire() && !sem.try_acquire());
    let child = in_child(&[], || sem.release().map_err(msg));
    assert_success(child);
    assert!(sem.acquire_timeout(DEADLINE));
    sem.release().unwrap();
    sem.release().unwrap();
    assert_eq!(sem.release(), Err(ReleasedTooManyTimes));
    assert_eq!(sem.get_value(), 2);
}

#[test]
fn event_ping_pong_between_processes() {
    let (ping, pong) = (Event::new().unwrap(), Event::new().unwrap());
    assert!(!ping.wait_timeout(SHORT));
    let child = in_child(&[], || {
        for _ in 0..2000 {
            if !ping.wait_timeout(DEADLINE) {
                return Err("no ping".into());
            }
            ping.clear();
            pong.set();
        }
        Ok(())
    });
    for _ in 0..2000 {
        ping.set();
        assert!(pong.wait_timeout(DEADLINE));
        pong.clear();
    }
    assert_success(child);
    assert!(!ping.is_set() && !pong.is_set());
}

/// Both processes on one CPU, where a wait looks by giving the CPU away (`sched_yield`)
/// before it sleeps: every round trip completes, through the looks, the sleeps, or both
/// (events and queues, each 2000 round trips).
#[test]
fn event_and_queue_ping_pong_on_one_cpu() {
    let (ping, pong) = (Event::new().unwrap(), Event::new().unwrap());
    let (there, back) = (mproc_ipc::Queue::<u32>::new().unwrap(), mproc_ipc::Queue::<u32>::new().unwrap());
    let pair = in_child(&[], || {
        let mut one = rustix::thread::CpuSet::new();
        one.set(rustix::thread::sched_getcpu());
        rustix::thread::sched_setaffinity(None, &one).map_err(msg)?;
        let partner = in_child(&[], || {
            for i in 0..2000 {
                if !ping.wait_timeout(DEADLINE) {
                    return Err("no ping".into());
                }
                ping.clear();
                pong.set();
                let v = there.get_timeout(DEADLINE).map_err(msg)?;
                back.put(&(v + i)).map_err(msg)?;
            }
            Ok(())
        });
        for i in 0..2000 {
            ping.set();
            if !pong.wait_timeout(DEADLINE) {
                return Err("no pong".into());
            }
            pong.clear();
            there.put(&i).map_err(msg)?;
            if back.get_timeout(DEADLINE).map_err(msg)? != 2 * i {
                return Err("wrong answer".into());
            }
        }
        assert_success(partner);
        Ok(())
    });
    assert_success(pair);
}

#[test]
fn an_event_waiter_killed_mid_wait_leaves_set_working() {
    let event = Event::new().unwrap();
    let (rx, tx) = pipe::<()>().unwrap();
    let doomed = in_child(&[&tx], || {
        tx.send(&()).map_err(msg)?;
        event.wait();
        Ok(())
    });
    rx.recv_timeout(DEADLINE).unwrap();
    drop(doomed);
    let live = in_child(&[&tx], || if event.wait_timeout(DEADLINE) { Ok(()) } else { Err("not set".into()) });
    event.set();
    assert_success(live);
}

#[test]
fn condition_wait_for_across_processes() {
    let cond = Condition::new().unwrap();
    let stock = Value::new(0u32).unwrap();
    let child = in_child(&[], || {
        for _ in 0..200 {
            let mut g = cond.acquire_timeout(DEADLINE).map_err(msg)?;
            if !g.wait_for(|| stock.get() > 0, Some(DEADLINE)).map_err(msg)? {
                return Err("nothing in stock".into());
            }
            stock.set(stock.get() - 1);
            g.notify_all();
        }
        Ok(())
    });
    for _ in 0..200 {
        let mut g = cond.acquire_timeout(DEADLINE).unwrap();
        assert!(g.wait_for(|| stock.get() < 3, Some(DEADLINE)).unwrap());
        stock.set(stock.get() + 1);
        g.notify();
    }
    assert_success(child);
    let mut g = cond.acquire().unwrap();
    assert!(g.wait_for(|| stock.get() == 0, Some(DEADLINE)).unwrap());
    assert_eq!(g.wait_timeout(SHORT).ok(), Some(false));
}

#[test]
fn value_add_under_its_lock_from_two_processes() {
    let v = Value::new(0i64).unwrap();
    let add = || -> Result<(), String> {
        for _ in 0..20_000 {
            *v.get_lock().map_err(msg)? += 1;
        }
        Ok(())
    };
    let child = in_child(&[], add);
    add().unwrap();
    assert_success(child);
    assert_eq!(v.get(), 40_000);
}

#[test]
fn neither_of_two_processes_hammering_a_lock_starves() {
    // Each process adds to its own slot under the lock, as fast as it can, until both slots
    // reach `TURNS`: the lock is never free for long, so a waiter gets it only if the holder
    // leaves it a chance. One that never does fails this at the deadline, not with a hang.
    const TURNS: u64 = 100_000;
    let counts = Array::<u64>::zeroed(2).unwrap();
    let hammer = |me: usize| -> Result<(), String> {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            let mut g = counts.get_lock_timeout(DEADLINE).map_err(msg)?;
            g[me] += 1;
            if g[0] >= TURNS && g[1] >= TURNS {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("process {me} starved: {} and {} turns", g[0], g[1]));
            }
        }
    };
    let child = in_child(&[], || hammer(1));
    hammer(0).unwrap();
    assert_success(child);
}

/// A waiter that finds the lock held past its spin sleeps on the futex, and the holder's
/// release wakes it: it gets the lock at once, not at its deadline.
#[test]
fn a_waiter_asleep_on_a_held_lock_is_woken_by_its_release() {
    let lock = Lock::new().unwrap();
    let (rx, tx) = pipe::<()>().unwrap();
    let held = lock.acquire().unwrap();
    let child = in_child(&[&tx], || {
        let _g = lock.acquire_timeout(DEADLINE).map_err(msg)?;
        tx.send(&()).map_err(msg)
    });
    // Asleep in the kernel, as the kernel says (its wait channel), not as a timer guesses.
    let wchan = format!("/proc/{}/wchan", child.pid());
    let deadline = std::time::Instant::now() + DEADLINE;
    while !std::fs::read_to_string(&wchan).is_ok_and(|w| w.contains("futex")) {
        assert!(std::time::Instant::now() < deadline, "the waiter never slept on the lock");
        std::thread::yield_now();
    }
    drop(held);
    rx.recv_timeout(DEADLINE).expect("the sleeping waiter was not woken by the release");
    assert_success(child);
}

#[test]
fn a_value_holder_killed_is_reported_by_get_lock() {
    let v = Value::new(7u8).unwrap();
    let (rx, tx) = pipe::<()>().unwrap();
    let child = in_child(&[&tx], || {
        let mut g = v.get_lock().map_err(msg)?;
        *g = 8;
        tx.send(&()).map_err(msg)?;
        std::mem::forget(g);
        loop {
            std::thread::park();
        }
    });
    rx.recv_timeout(DEADLINE).unwrap();
    drop(child);
    match v.get_lock_timeout(DEADLINE) {
        Err(LockError::OwnerDied(g)) => assert_eq!(*g, 8),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("the owner's death was not reported"),
    }
    assert_eq!(v.get(), 8);
}

#[test]
fn array_and_primitives_travel_over_a_connection() {
    type Kit = (Array<f64>, Value<u32>, Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition);
    let (a, b) = duplex::<Kit>().unwrap();
    let kit: Kit = (
        Array::from_slice(&[1.0, 2.0]).unwrap(),
        Value::new(1).unwrap(),
        Lock::new().unwrap(),
        RLock::new().unwrap(),
        Semaphore::new(0).unwrap(),
        BoundedSemaphore::new(1).unwrap(),
        Event::new().unwrap(),
        Condition::new().unwrap(),
    );
    let child = in_child(&[&b], || {
        let (arr, val, lock, rlock, sem, bsem, event, cond) = b.recv().map_err(msg)?;
        arr.get_lock().map_err(msg)?[1] = 20.0;
        val.set(2);
        drop(lock.acquire().map_err(msg)?);
        drop(rlock.acquire().map_err(msg)?);
        sem.release();
        bsem.try_acquire().then_some(()).ok_or("bounded semaphore")?;
        drop(cond.acquire().map_err(msg)?);
        event.set();
        Ok(())
    });
    drop(b);
    a.send(&kit).unwrap();
    assert!(kit.6.wait_timeout(DEADLINE));
    assert_success(child);
    assert_eq!(kit.0.to_vec(), [1.0, 20.0]);
    assert_eq!(kit.1.get(), 2);
    assert_eq!((kit.4.get_value(), kit.5.get_value()), (1, 0));
}

/// Sends `sent` on a connection whose far end reads an `R`: what that `recv` gives.
fn received_as<S: serde::Serialize, R: serde::de::DeserializeOwned>(sent: &S) -> mproc_ipc::Result<R> {
    let (a, b) = mproc_ipc::Connection::<S, ()>::pair().unwrap();
    let b = b.cast::<(), R>();
    a.send(sent).unwrap();
    b.recv_timeout(DEADLINE)
}

/// What `recv` of a `Value`/`Array` sent as another element type must give: a decode error
/// (not a value that panics, or reads the wrong bytes, when used) that names what it found
/// and what was expected.
fn assert_refused<T: std::fmt::Debug>(r: mproc_ipc::Result<T>, found: &str, expected: &str) {
    let e = r.expect_err("a Value/Array of another element type was accepted");
    let e = e.to_string();
    assert!(e.starts_with("cannot decode message"), "unexpected error: {e}");
    assert!(e.contains(found) && e.contains(expected), "the error does not name {found} and {expected}: {e}");
}

#[test]
fn a_value_or_array_received_as_another_element_type_is_refused() {
    assert_refused(received_as::<_, Value<u64>>(&Value::new(7u8).unwrap()), "Value<u8>", "Value<u64>");
    assert_refused(received_as::<_, Value<u8>>(&Value::new(7u64).unwrap()), "Value<u64>", "Value<u8>");
    assert_refused(received_as::<_, Value<i64>>(&Value::new(7u64).unwrap()), "Value<u64>", "Value<i64>");
    assert_refused(
        received_as::<_, Array<u64>>(&Array::from_slice(&[1u8; 8]).unwrap()),
        "Array<u8>",
        "Array<u64>",
    );
    assert_refused(
        received_as::<_, Array<u64>>(&Array::from_slice(&[1u32; 4]).unwrap()),
        "Array<u32>",
        "Array<u64>",
    );
    assert_refused(
        received_as::<_, Array<[u8; 8]>>(&Array::from_slice(&[1u64]).unwrap()),
        "Array<u64>",
        "Array<[u8; 8]>",
    );
    // The same types still travel.
    assert_eq!(received_as::<_, Value<u64>>(&Value::new(7u64).unwrap()).unwrap().get(), 7);
    assert_eq!(
        received_as::<_, Array<u32>>(&Array::from_slice(&[1u32, 2]).unwrap()).unwrap().to_vec(),
        [1, 2]
    );
}

#[test]
fn an_array_whose_length_does_not_match_its_region_is_refused() {
    use std::marker::PhantomData;

    use mproc_ipc::{Shared, ShmMutex};
    // An `Array<u64>` as it travels (element type, region, length), with a length the
    // region's 16 data bytes do not hold, then one that matches.
    let region = Shared::<(ShmMutex, PhantomData<u64>)>::with_data(16).unwrap();
    assert_refused(received_as::<_, Array<u64>>(&("u64", region.clone(), 5u64)), "16 data bytes", "5 values");
    assert_refused(received_as::<_, Value<u64>>(&("u64", region.clone())), "16 data bytes", "1 values");
    assert_eq!(received_as::<_, Array<u64>>(&("u64", region, 2u64)).unwrap().to_vec(), [0, 0]);
}

/// A `Lock` is released only by the thread that acquired it (its guard is not `Send`: a
/// doctest checks that the compiler refuses): another thread cannot take it meanwhile, and
/// when the holding thread ends without releasing it, the next `acquire` gets it with
/// `OwnerDied`. A token that another thread gives back is a `BoundedSemaphore(1)`.
#[test]
fn a_lock_is_released_only_by_its_holder_thread_and_its_end_hands_it_over() {
    let lock = Lock::new().unwrap();
    let (held_rx, held_tx) = pipe::<()>().unwrap();
    let (end_rx, end_tx) = pipe::<()>().unwrap();
    std::thread::scope(|s| {
        let holder = s.spawn(|| {
            std::mem::forget(lock.acquire().unwrap());
            held_tx.send(&()).unwrap();
            end_rx.recv_timeout(DEADLINE).unwrap();
        });
        held_rx.recv_timeout(DEADLINE).unwrap();
        assert!(matches!(lock.try_acquire(), Err(LockError::Timeout)), "held by the other thread");
        end_tx.send(&()).unwrap();
        holder.join().unwrap();
    });
    assert!(matches!(lock.acquire_timeout(DEADLINE), Err(LockError::OwnerDied(_))));
    assert!(lock.try_acquire().is_ok(), "clean once handed over");

    let token = BoundedSemaphore::new(1).unwrap();
    assert!(token.try_acquire());
    std::thread::scope(|s| s.spawn(|| token.release()).join().unwrap()).unwrap();
    assert!(token.try_acquire(), "given back by another thread");
}

/// A forgotten guard, then the lock's last handle dropped: the lock stays held for ever (as a
/// forgotten `std` guard leaks its lock), but its memory must not be unmapped while it is
/// linked on the thread's robust list, or the next robust-list operation writes into
/// whatever is mapped there next. In a child, so a corruption cannot take the suite down:
/// fresh blocks (mapped where the lock's page was, if it was unmapped) must stay zero across
/// another lock's acquire and release, and across the end of the thread that held it.
#[test]
fn a_forgotten_guard_and_a_dropped_lock_corrupt_no_later_mapping() {
    assert_success(in_child(&[], || {
        let probe = Lock::new().map_err(msg)?;
        let mut blocks = Vec::new();
        std::thread::scope(|s| {
            s.spawn(|| -> Result<(), String> {
                for _ in 0..4 {
                    let lock = Lock::new().map_err(msg)?;
                    std::mem::forget(lock.acquire().map_err(msg)?);
                    drop(lock);
                    // Likely placed at the address the lock's page had.
                    for _ in 0..8 {
                        blocks.push(mproc_ipc::SharedMemory::new(64).map_err(msg)?);
                    }
                    drop(probe.acquire().map_err(msg)?);
                }
                Ok(())
            })
            .join()
            .map_err(|_| "the holder panicked".to_owned())?
        })?;
        // The holding thread has ended: the kernel walked its robust list.
        drop(probe.acquire().map_err(msg)?);
        for (i, block) in blocks.iter().enumerate() {
            if block.to_vec().iter().any(|&b| b != 0) {
                return Err(format!(
                    "block {i} was written by a robust-list operation: {:?}",
                    block.to_vec()
                ));
            }
        }
        Ok(())
    }));
}

/// A semaphore at the top of its counter stays there when released: its count never wraps
/// round to 0 (which would lose every permit).
#[test]
fn a_semaphore_released_at_its_largest_count_keeps_its_permits() {
    let sem = Semaphore::new(u64::MAX).unwrap();
    sem.release();
    assert_eq!(sem.get_value(), u64::MAX, "the count wrapped round");
    assert!(sem.try_acquire());
}

/// A notify with no one waiting is lost, as in Python: a later wait is not woken by it. And
/// timeouts at both ends: zero does not sleep, `Duration::MAX` is no deadline.
#[test]
fn a_notify_with_no_waiter_is_not_remembered_and_extreme_timeouts_work() {
    let cond = Condition::new().unwrap();
    let mut g = cond.acquire().unwrap();
    g.notify();
    g.notify_all();
    assert_eq!(g.wait_timeout(Duration::from_millis(20)).ok(), Some(false), "woken by an old notify");
    assert_eq!(g.wait_timeout(Duration::ZERO).ok(), Some(false));
    drop(g);
    let lock = Lock::new().unwrap();
    let held = lock.acquire_timeout(Duration::MAX).unwrap();
    assert!(matches!(lock.acquire_timeout(Duration::ZERO), Err(LockError::Io(_) | LockError::Timeout)));
    drop(held);
    let sem = Semaphore::new(1).unwrap();
    assert!(sem.acquire_timeout(Duration::MAX) && !sem.acquire_timeout(Duration::ZERO));
    let event = Event::new().unwrap();
    event.set();
    assert!(event.wait_timeout(Duration::MAX) && event.wait_timeout(Duration::ZERO));
}

/// A semaphore's kind travels with it: a `BoundedSemaphore` received where a `Semaphore` is
/// expected (which could then be released past the bound), or the other way round, is
/// refused with an error naming both kinds, and the connection goes on.
#[test]
fn a_semaphore_is_received_only_as_its_own_kind() {
    let bounded = BoundedSemaphore::new(1).unwrap();
    let (tx, rx) = duplex::<BoundedSemaphore>().unwrap();
    let rx: Connection<(), Semaphore> = rx.cast();
    tx.send(&bounded).unwrap();
    match rx.recv_timeout(DEADLINE) {
        Err(e) => assert!(e.to_string().contains("BoundedSemaphore"), "unclear refusal: {e}"),
        Ok(plain) => {
            plain.release();
            panic!(
                "a BoundedSemaphore received as a Semaphore, released to {} past its bound 1",
                bounded.get_value()
            );
        }
    }
    let plain = Semaphore::new(0).unwrap();
    let tx: Connection<Semaphore, ()> = tx.cast();
    let rx: Connection<(), BoundedSemaphore> = rx.cast();
    tx.send(&plain).unwrap();
    match rx.recv_timeout(DEADLINE) {
        Err(e) => assert!(e.to_string().contains("BoundedSemaphore"), "unclear refusal: {e}"),
        Ok(_) => panic!("a Semaphore received as a BoundedSemaphore"),
    }
    // Each still arrives as its own kind, bound and all.
    let tx: Connection<BoundedSemaphore, ()> = tx.cast();
    let rx: Connection<(), BoundedSemaphore> = rx.cast();
    tx.send(&bounded).unwrap();
    let received = rx.recv_timeout(DEADLINE).unwrap();
    assert_eq!(received.release(), Err(ReleasedTooManyTimes));
    assert!(received.try_acquire());
    assert_eq!(bounded.get_value(), 0, "the same semaphore");
    assert!(bounded.release().is_ok());
}
