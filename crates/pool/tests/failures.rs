//! Failure containment: killed, crashing and overdue workers; retirement; termination.

use std::time::Duration;

use mproc_pool::process::ExitStatus;
use mproc_pool::{Error, Pool};

use crate::*;

/// Starts `bad` beside 1,000 good tasks: `bad` fails with WorkerDied (its exit told by
/// `status`), every other task completes, and the pool shuts down leaving no process behind.
fn contained(bad: fn(()), status: ExitStatus) {
    let pool = pool(2);
    let workers: Vec<u32> = pool.map_chunked(pid_after, [20, 20], 1).unwrap();
    let doomed = pool.apply_async(bad, ());
    let good: Vec<_> = (0..1000).map(|x| pool.apply_async(square, x)).collect();
    match get(doomed) {
        Err(Error::WorkerDied { status: Some(s), pid, worker, task }) => {
            assert_eq!(s, status);
            assert!(workers.contains(&pid) || pid != 0, "{pid}");
            assert!(worker.starts_with("PoolWorker-") && task.contains("fn(())"), "{worker} {task}");
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    for (x, r) in good.into_iter().enumerate() {
        assert_eq!(get(r).unwrap(), (x * x) as u64);
    }
    let now: Vec<u32> = pool.map_chunked(pid_after, [20, 20], 1).unwrap();
    drop(pool);
    for pid in workers.iter().chain(&now) {
        eventually(&format!("worker {pid} gone"), || gone(*pid));
    }
    assert!(zombies().is_empty(), "zombies: {:?}", zombies());
}

#[test]
fn a_worker_killed_mid_task_fails_only_that_task() {
    contained(kill_self, ExitStatus::Signal(9));
}

#[test]
fn a_segfaulting_task_fails_only_itself() {
    contained(segfault, ExitStatus::Signal(11));
}

#[test]
fn an_aborting_task_fails_only_itself() {
    contained(abort, ExitStatus::Signal(6));
}

#[test]
fn an_endless_task_times_out_and_the_pool_goes_on() {
    mproc_init();
    let pool = Pool::builder().processes(2).task_timeout(Duration::from_millis(300)).build().unwrap();
    let stuck = pool.apply_async(endless, ());
    let fine: Vec<_> = (0..50).map(|x| pool.apply_async(square, x)).collect();
    match get(stuck) {
        Err(Error::Timeout { timeout, pid, .. }) => {
            assert_eq!(timeout, Duration::from_millis(300));
            eventually("the overdue worker is killed", || gone(pid));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    for (x, r) in fine.into_iter().enumerate() {
        assert_eq!(get(r).unwrap(), (x * x) as u64);
    }
}

#[test]
fn max_tasks_per_child_replaces_workers() {
    mproc_init();
    let pool = Pool::builder().processes(2).max_tasks_per_child(1).build().unwrap();
    let pids: Vec<u32> = (0..200).map(|_| pool.apply_async(pid, ())).map(|r| get(r).unwrap()).collect();
    let mut distinct = pids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 200, "each task ran in a fresh worker");
    drop(pool);
    for pid in pids {
        eventually(&format!("retired worker {pid} gone"), || gone(pid));
    }
    assert!(zombies().is_empty(), "zombies: {:?}", zombies());
}

#[test]
fn a_hundred_thousand_tasks_each_complete_once() {
    let pool = pool(2);
    let results: Vec<_> = (0..100_000u64).map(|x| pool.apply_async(square, x)).collect();
    for (x, r) in results.into_iter().enumerate() {
        assert_eq!(get(r).unwrap(), (x as u64) * (x as u64));
    }
}

#[test]
fn terminate_while_tasks_run_returns_promptly_and_leaves_no_child() {
    let pool = pool(2);
    let workers: Vec<u32> = pool.map_chunked(pid_after, [20, 20], 1).unwrap();
    let running: Vec<_> = (0..4).map(|_| pool.apply_async(endless, ())).collect();
    pool.terminate();
    for r in running {
        assert!(matches!(get(r), Err(Error::Terminated { .. })));
    }
    for pid in workers {
        eventually(&format!("worker {pid} gone"), || gone(pid));
    }
    assert!(matches!(get(pool.apply_async(square, 1)), Err(Error::Closed)));
}
