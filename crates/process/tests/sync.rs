//! Locks, events, semaphores, barriers and shared state reach children of every start method
//! in their arguments, and a child killed holding a lock hands it over with `OwnerDied`.

use mproc_process::ipc::{
    Array, Barrier, Condition, Event, Lock, LockError, RLock, Semaphore, SharedMemory, Value, pipe,
};
use mproc_process::{Builder, Error};

use crate::*;

type Kit = (Lock, RLock, Value<u64>, Array<u32>, Event, Semaphore, Barrier, Condition, SharedMemory);

fn kit() -> Kit {
    (
        Lock::new().unwrap(),
        RLock::new().unwrap(),
        Value::new(0).unwrap(),
        Array::zeroed(4).unwrap(),
        Event::new().unwrap(),
        Semaphore::new(0).unwrap(),
        Barrier::new(2).unwrap(),
        Condition::new().unwrap(),
        SharedMemory::new(64).unwrap(),
    )
}

/// The child's side: uses every primitive once.
fn use_kit(k: Kit) -> Result<(), String> {
    let (lock, rlock, value, array, event, sem, barrier, cond, block) = k;
    {
        let _g = lock.acquire_timeout(DEADLINE).map_err(|e| e.to_string())?;
        let _r = rlock.acquire().map_err(|e| e.to_string())?;
        *value.get_lock().map_err(|e| e.to_string())? += 41;
        array.get_lock().map_err(|e| e.to_string())?[3] = 7;
    }
    drop(cond.acquire().map_err(|e| e.to_string())?);
    block.write(0, b"child");
    sem.release();
    event.set();
    barrier.wait_timeout(DEADLINE).map_err(|e| e.to_string())?;
    Ok(())
}

#[test]
fn every_start_method_passes_the_primitives_to_its_child() {
    mproc_init();
    for method in METHODS {
        let k = kit();
        let child = Builder::new().start_method(method).spawn_fn(use_kit, k.clone()).unwrap();
        assert!(k.4.wait_timeout(DEADLINE), "{method:?}: event never set");
        assert!(k.5.acquire_timeout(DEADLINE), "{method:?}: no permit");
        k.6.wait_timeout(DEADLINE).unwrap();
        child.join().unwrap().unwrap();
        assert_eq!(k.2.get(), 41, "{method:?}");
        assert_eq!(k.3.to_vec(), [0, 0, 0, 7], "{method:?}");
        assert_eq!(&k.8.to_vec()[..5], b"child", "{method:?}");
    }
}

fn hold_and_report(args: (Lock, mproc_process::ipc::Sender<()>)) {
    let (lock, report) = args;
    let g = lock.acquire().unwrap();
    report.send(&()).unwrap();
    std::mem::forget(g);
    loop {
        std::thread::park();
    }
}

#[test]
fn a_child_killed_holding_a_lock_hands_it_over_with_owner_died_for_every_start_method() {
    mproc_init();
    for method in METHODS {
        let lock = Lock::new().unwrap();
        let (rx, tx) = pipe::<()>().unwrap();
        let child =
            Builder::new().start_method(method).spawn_fn(hold_and_report, (lock.clone(), tx)).unwrap();
        rx.recv_timeout(DEADLINE).unwrap();
        child.kill().unwrap();
        assert!(matches!(child.join(), Err(Error::Signaled { signal: 9, .. })), "{method:?}");
        assert!(matches!(lock.acquire_timeout(DEADLINE), Err(LockError::OwnerDied(_))), "{method:?}");
    }
}

fn hold_barrier_and_report(args: (Barrier, mproc_process::ipc::Sender<()>)) {
    let (_barrier, report) = args;
    report.send(&()).unwrap();
    loop {
        std::thread::park();
    }
}

/// A child given a barrier in its arguments is a party from its start, whatever the start
/// method: killed before its first `wait`, it breaks the barrier for a party already asleep
/// in it, which learns at the death instead of sleeping out its deadline.
#[test]
fn a_child_killed_before_its_first_barrier_wait_breaks_it_for_every_start_method() {
    mproc_init();
    for method in METHODS {
        let barrier = Barrier::new(2).unwrap();
        let waiter = a_barrier_waiter(&barrier);
        let (rx, tx) = pipe::<()>().unwrap();
        let child = Builder::new()
            .start_method(method)
            .spawn_fn(hold_barrier_and_report, (barrier.clone(), tx))
            .unwrap();
        rx.recv_timeout(DEADLINE).unwrap();
        child.kill().unwrap();
        assert!(matches!(child.join(), Err(Error::Signaled { signal: 9, .. })), "{method:?}");
        let (result, took) = waiter.join().unwrap();
        assert!(result.is_err(), "{method:?}: the round completed without the dead party");
        assert!(took < DEADLINE, "{method:?}: broken only by the timeout, not by the death");
    }
}

/// A waiter on `barrier` (returned once it waits there): its result and how long it waited.
fn a_barrier_waiter(
    barrier: &Barrier,
) -> std::thread::JoinHandle<(Result<usize, mproc_process::ipc::BrokenBarrier>, std::time::Duration)> {
    let other = barrier.clone();
    let waiter = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        (other.wait_timeout(DEADLINE), start.elapsed())
    });
    let until = std::time::Instant::now() + DEADLINE;
    while barrier.n_waiting() < 1 {
        assert!(std::time::Instant::now() < until, "the waiter never came");
        std::thread::yield_now();
    }
    waiter
}

/// A closure child (`Builder::spawn`, a Fork) that holds a barrier is a party from its start,
/// as a `spawn_fn` child given it in its arguments is: killed before its first `wait`, it
/// breaks the barrier for a party already asleep in it, which learns at the death instead of
/// sleeping out its deadline. A barrier of the parent's that the closure does not own is
/// not the child's: its death breaks nothing there.
#[test]
fn a_closure_child_killed_before_its_first_barrier_wait_breaks_it() {
    let unrelated = Barrier::new(2).unwrap();
    let barrier = Barrier::new(2).unwrap();
    let waiter = a_barrier_waiter(&barrier);
    let (rx, tx) = pipe::<()>().unwrap();
    let held = barrier.clone();
    let child = Builder::new()
        .start_method(mproc_process::StartMethod::Fork)
        .spawn(move || -> () {
            let _barrier = held;
            tx.send(&()).unwrap();
            loop {
                std::thread::park();
            }
        })
        .unwrap();
    rx.recv_timeout(DEADLINE).unwrap();
    child.kill().unwrap();
    assert!(matches!(child.join(), Err(Error::Signaled { signal: 9, .. })));
    let (result, took) = waiter.join().unwrap();
    assert!(result.is_err(), "the round completed without the dead party");
    assert!(took < DEADLINE, "broken only by the timeout, not by the death");
    let other = unrelated.clone();
    let t = std::thread::spawn(move || other.wait_timeout(DEADLINE));
    assert!(unrelated.wait_timeout(DEADLINE).is_ok(), "broken by a child that did not hold it");
    assert!(t.join().unwrap().is_ok());
}

fn hold_barrier_and_return(barrier: Barrier) -> usize {
    barrier.parties()
}

/// A child that holds a barrier (in its arguments, or a closure's) and ends normally without
/// waiting breaks nothing, whatever the start method and however many handles its parent
/// holds (a Fork child holds copies of them all): it leaves as it ends.
#[test]
fn a_child_that_ends_normally_holding_a_barrier_breaks_nothing() {
    mproc_init();
    for method in METHODS {
        let barrier = Barrier::new(2).unwrap();
        let other = barrier.clone(); // the parent holds two handles
        let child =
            Builder::new().start_method(method).spawn_fn(hold_barrier_and_return, barrier.clone()).unwrap();
        assert_eq!(child.join().unwrap(), 2);
        let t = std::thread::spawn(move || other.wait_timeout(DEADLINE));
        assert!(barrier.wait_timeout(DEADLINE).is_ok(), "{method:?}: broken by a child that ended normally");
        assert!(t.join().unwrap().is_ok());
    }
    let barrier = Barrier::new(2).unwrap();
    let other = barrier.clone();
    let held = barrier.clone();
    let child =
        Builder::new().start_method(mproc_process::StartMethod::Fork).spawn(move || held.parties()).unwrap();
    assert_eq!(child.join().unwrap(), 2);
    let t = std::thread::spawn(move || other.wait_timeout(DEADLINE));
    assert!(barrier.wait_timeout(DEADLINE).is_ok(), "closure child: broken by a child that ended normally");
    assert!(t.join().unwrap().is_ok());
}
