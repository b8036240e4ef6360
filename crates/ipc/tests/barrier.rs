//! `Barrier` across processes: rounds, timeouts, abort, reset, and a party that dies.

use std::time::{Duration, Instant};

use mproc_ipc::{Barrier, BrokenBarrier, Receiver, duplex, pipe};

use crate::support::{Child, DEADLINE, Exit, assert_success, in_child, kill_self, msg};

#[test]
fn three_processes_pass_many_rounds() {
    let barrier = Barrier::new(3).unwrap();
    let indexes = mproc_ipc::Array::<u64>::zeroed(3).unwrap();
    let party = || -> Result<(), String> {
        for _ in 0..300 {
            let i = barrier.wait_timeout(DEADLINE).map_err(msg)?;
            indexes.get_lock().map_err(msg)?[i] += 1;
        }
        Ok(())
    };
    let children = [in_child(&[], party), in_child(&[], party)];
    party().unwrap();
    children.into_iter().for_each(assert_success);
    assert_eq!(indexes.to_vec(), [300; 3], "each round hands out indexes 0, 1, 2");
    assert!(!barrier.broken());
}

#[test]
fn a_timeout_breaks_it_until_reset() {
    let barrier = Barrier::new(2).unwrap();
    assert_eq!(barrier.wait_timeout(Duration::from_millis(10)), Err(BrokenBarrier));
    assert!(barrier.broken());
    assert_eq!(barrier.wait_timeout(DEADLINE), Err(BrokenBarrier), "broken at once");
    barrier.reset();
    assert!(!barrier.broken());
    let other = barrier.clone();
    let t = std::thread::spawn(move || other.wait_timeout(DEADLINE));
    assert!(barrier.wait_timeout(DEADLINE).is_ok());
    assert!(t.join().unwrap().is_ok());
}

#[test]
fn abort_from_another_process_breaks_the_waiters() {
    let barrier = Barrier::new(3).unwrap();
    let (rx, tx) = pipe::<()>().unwrap();
    let child = in_child(&[&rx], || {
        rx.recv().map_err(msg)?;
        barrier.abort();
        Ok(())
    });
    let other = barrier.clone();
    let t = std::thread::spawn(move || other.wait_timeout(DEADLINE));
    while barrier.n_waiting() == 0 {
        std::thread::yield_now();
    }
    tx.send(&()).unwrap();
    let start = Instant::now();
    assert_eq!(barrier.wait_timeout(DEADLINE), Err(BrokenBarrier));
    assert_eq!(t.join().unwrap(), Err(BrokenBarrier));
    assert!(start.elapsed() < DEADLINE, "broken by the abort, not by the timeout");
    assert_success(child);
}

/// Two more parties of a barrier of three: `doomed` passes the first round, says so on the
/// receiver, then sleeps until it is killed; `survivor` passes the first round and expects
/// the next one to break, by the death and not by its deadline.
fn doomed_and_survivor(barrier: &Barrier) -> (Receiver<()>, Child, Child) {
    let (rx, tx) = pipe::<()>().unwrap();
    let doomed = in_child(&[&tx], || {
        barrier.wait_timeout(DEADLINE).map_err(msg)?;
        tx.send(&()).map_err(msg)?;
        loop {
            std::thread::park();
        }
    });
    let survivor = in_child(&[], || {
        barrier.wait_timeout(DEADLINE).map_err(msg)?;
        let start = Instant::now();
        match barrier.wait_timeout(DEADLINE) {
            Err(BrokenBarrier) if start.elapsed() < DEADLINE => Ok(()),
            Err(BrokenBarrier) => Err("broken only by the timeout".into()),
            Ok(_) => Err("the round completed without the dead party".into()),
        }
    });
    (rx, doomed, survivor)
}

/// A party that passed a round and then is killed: the others, waiting for the next round,
/// learn that the barrier is broken instead of waiting for ever (here: for the deadline).
#[test]
fn a_party_killed_breaks_it_for_the_others() {
    let barrier = Barrier::new(3).unwrap();
    let (rx, doomed, survivor) = doomed_and_survivor(&barrier);
    barrier.wait_timeout(DEADLINE).unwrap();
    rx.recv_timeout(DEADLINE).unwrap();
    drop(doomed); // SIGKILL, reaped
    let start = Instant::now();
    assert_eq!(barrier.wait_timeout(DEADLINE), Err(BrokenBarrier));
    assert!(start.elapsed() < DEADLINE, "broken by the death, not by the timeout");
    assert_success(survivor);
}

/// A party killed while every other party already sleeps in the next round: nothing looks
/// for dead parties on a timer, so the kernel's wake at the death (the dead party's presence
/// lock, which the sleepers watch) is what must break the barrier; without it they would
/// sleep until their deadline.
#[test]
fn a_party_killed_while_the_others_sleep_wakes_them_broken() {
    let barrier = Barrier::new(3).unwrap();
    let (rx, doomed, survivor) = doomed_and_survivor(&barrier);
    let other = barrier.clone();
    let waiter = std::thread::spawn(move || {
        other.wait_timeout(DEADLINE).unwrap();
        let start = Instant::now();
        (other.wait_timeout(DEADLINE), start.elapsed())
    });
    rx.recv_timeout(DEADLINE).unwrap();
    // Both survivors in the next round (each counted in under the barrier's lock, then asleep).
    let until = Instant::now() + DEADLINE;
    while barrier.n_waiting() < 2 {
        assert!(Instant::now() < until, "the survivors never came to the next round");
        std::thread::yield_now();
    }
    drop(doomed); // SIGKILL, reaped
    assert_broken_by_the_death(waiter);
    assert_success(survivor);
}

/// A party that dies before its first `wait`: a process that received the barrier (as a Spawn
/// or ForkServer child or a pool task does, in its arguments) counts as a party from then on,
/// so its death breaks the barrier for the others, who are asleep in it already, instead of
/// leaving them to their deadline.
#[test]
fn a_party_killed_before_its_first_wait_breaks_it_for_the_others() {
    let barrier = Barrier::new(2).unwrap();
    let (parent, child_end) = duplex::<Barrier>().unwrap();
    let child = in_child(&[&child_end], || {
        let _barrier = child_end.recv_timeout(DEADLINE).map_err(msg)?;
        kill_self()
    });
    drop(child_end);
    let waiter = a_waiter(&barrier);
    parent.send(&barrier).unwrap();
    assert_broken_by_the_death(waiter);
    assert_eq!(child.wait(DEADLINE), Exit::Signal(9));
}

/// A process that received the barrier and drops it without waiting leaves, and breaks
/// nothing.
#[test]
fn a_receiver_that_drops_the_barrier_breaks_nothing() {
    let barrier = Barrier::new(2).unwrap();
    let (parent, child_end) = duplex::<Barrier>().unwrap();
    let child = in_child(&[&child_end], || {
        drop(child_end.recv_timeout(DEADLINE).map_err(msg)?);
        child_end.send(&Barrier::new(1).map_err(msg)?).map_err(msg)?;
        Ok(())
    });
    parent.send(&barrier).unwrap();
    parent.recv_timeout(DEADLINE).unwrap();
    assert_success(child);
    let other = barrier.clone();
    let t = std::thread::spawn(move || other.wait_timeout(DEADLINE));
    assert!(barrier.wait_timeout(DEADLINE).is_ok());
    assert!(t.join().unwrap().is_ok());
}

/// A wait that sleeps allocates nothing in the steady state: the words it sleeps on (the
/// condvar's and every registered party's presence lock) are gathered on the stack. The main
/// thread always comes first, so every counted wait of its goes to sleep.
#[test]
fn a_sleeping_wait_allocates_nothing() {
    const WARM_UP: usize = 4;
    const COUNTED: usize = 50;
    let barrier = Barrier::new(2).unwrap();
    let other = barrier.clone();
    let second = std::thread::spawn(move || {
        for _ in 0..WARM_UP + COUNTED {
            let until = Instant::now() + DEADLINE;
            while other.n_waiting() == 0 {
                assert!(Instant::now() < until, "the first party never came");
                std::thread::yield_now();
            }
            other.wait_timeout(DEADLINE).unwrap();
        }
    });
    (0..WARM_UP).for_each(|_| {
        barrier.wait_timeout(DEADLINE).unwrap();
    });
    let before = crate::support::allocations();
    (0..COUNTED).for_each(|_| {
        barrier.wait_timeout(DEADLINE).unwrap();
    });
    let allocated = crate::support::allocations() - before;
    second.join().unwrap();
    assert_eq!(allocated, 0, "allocations over {COUNTED} sleeping waits");
}

/// A party's registration lasts as long as it holds the barrier: dropping a clone of its
/// handle (here a receiving process's) leaves it a party, so its death still breaks the
/// barrier for the others instead of leaving them to their deadline.
#[test]
fn a_party_that_dropped_a_clone_still_breaks_it_when_killed() {
    let barrier = Barrier::new(2).unwrap();
    let (parent, child_end) = duplex::<Barrier>().unwrap();
    let (rx, tx) = pipe::<()>().unwrap();
    let child = in_child(&[&child_end, &tx], || {
        let received = child_end.recv_timeout(DEADLINE).map_err(msg)?;
        drop(received.clone());
        tx.send(&()).map_err(msg)?;
        kill_self()
    });
    drop((child_end, tx));
    let waiter = a_waiter(&barrier);
    parent.send(&barrier).unwrap();
    rx.recv_timeout(DEADLINE).unwrap();
    assert_broken_by_the_death(waiter);
    assert_eq!(child.wait(DEADLINE), Exit::Signal(9));
}

/// A party killed before any other comes to wait: the first to come finds the dead party's
/// presence lock "owner died" and must break the barrier, not take the slot over (which would
/// hide the death) and sleep out its deadline.
#[test]
fn a_party_killed_before_anyone_waits_breaks_it_for_the_first_to_wait() {
    let barrier = Barrier::new(2).unwrap();
    let (parent, child_end) = duplex::<Barrier>().unwrap();
    let (rx, tx) = pipe::<()>().unwrap();
    let child = in_child(&[&child_end, &tx], || {
        let _barrier = child_end.recv_timeout(DEADLINE).map_err(msg)?;
        tx.send(&()).map_err(msg)?;
        kill_self()
    });
    drop((child_end, tx));
    parent.send(&barrier).unwrap();
    rx.recv_timeout(DEADLINE).unwrap();
    assert_eq!(child.wait(DEADLINE), Exit::Signal(9)); // dead and reaped: its lock reads "owner died"
    let start = Instant::now();
    assert_eq!(barrier.wait_timeout(DEADLINE), Err(BrokenBarrier));
    assert!(start.elapsed() < DEADLINE, "broken by the death, not by the timeout");
}

/// A thread waiting on `barrier` (returned once it waits): its result and how long it waited.
fn a_waiter(barrier: &Barrier) -> std::thread::JoinHandle<(Result<usize, BrokenBarrier>, Duration)> {
    let other = barrier.clone();
    let waiter = std::thread::spawn(move || {
        let start = Instant::now();
        (other.wait_timeout(DEADLINE), start.elapsed())
    });
    let until = Instant::now() + DEADLINE;
    while barrier.n_waiting() < 1 {
        assert!(Instant::now() < until, "the waiter never came");
        std::thread::yield_now();
    }
    waiter
}

/// `waiter` was told the barrier is broken, before its deadline: by a party's death.
fn assert_broken_by_the_death(waiter: std::thread::JoinHandle<(Result<usize, BrokenBarrier>, Duration)>) {
    let (result, took) = waiter.join().unwrap();
    assert_eq!(result, Err(BrokenBarrier));
    assert!(took < DEADLINE, "broken by the death, not by the timeout");
}

/// A barrier received twice in one process (here two clones in one message) is one party
/// there: dropping one of the handles leaves the process a party, so its death still breaks
/// the barrier for the others instead of leaving them to their deadline.
#[test]
fn a_party_that_received_it_twice_and_dropped_one_still_breaks_it_when_killed() {
    let barrier = Barrier::new(2).unwrap();
    let (parent, child_end) = duplex::<(Barrier, Barrier)>().unwrap();
    let (rx, tx) = pipe::<()>().unwrap();
    let child = in_child(&[&child_end, &tx], || {
        let (first, _second) = child_end.recv_timeout(DEADLINE).map_err(msg)?;
        drop(first);
        tx.send(&()).map_err(msg)?;
        kill_self()
    });
    drop((child_end, tx));
    let waiter = a_waiter(&barrier);
    parent.send(&(barrier.clone(), barrier.clone())).unwrap();
    rx.recv_timeout(DEADLINE).unwrap();
    assert_broken_by_the_death(waiter);
    assert_eq!(child.wait(DEADLINE), Exit::Signal(9));
}

/// The number of open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Receiving a barrier the process already holds maps nothing more: every handle on it
/// shares one mapping (and no fd), however many times it arrives.
#[test]
fn a_barrier_received_again_shares_the_mapping_it_has() {
    const TIMES: usize = 20;
    let barrier = Barrier::new(2).unwrap();
    let (parent, child_end) = duplex::<Barrier>().unwrap();
    let child = in_child(&[&child_end], || {
        let first = child_end.recv_timeout(DEADLINE).map_err(msg)?;
        let before = open_fds();
        let again: Vec<Barrier> =
            (0..TIMES).map(|_| child_end.recv_timeout(DEADLINE).map_err(msg)).collect::<Result<_, _>>()?;
        let added = open_fds() - before;
        drop((first, again));
        match added {
            0 => Ok(()),
            n => Err(format!("{n} fds held for the same barrier received {TIMES} times more")),
        }
    });
    for _ in 0..=TIMES {
        parent.send(&barrier).unwrap();
    }
    assert_success(child);
}
