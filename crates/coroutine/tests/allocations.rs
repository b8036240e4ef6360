//! At most one allocation per task (none when a finished task's memory is there to reuse),
//! and none per wake: counted by this binary's allocator (each thread's own count), in steady
//! state (the run queue and the task list at their size).

use mproc_coroutine::{Executor, spawn, yield_now};

use crate::support::allocations;

const N: usize = 1000;

/// The task measured: one future type throughout, so one size of cell.
async fn small(i: usize) -> usize {
    i
}

#[test]
fn a_task_is_one_allocation_at_most_and_a_yield_none() {
    let ex = Executor::new().unwrap();
    let (fresh, spawn_await, spawn_n_join_n, yields) = ex.block_on(async {
        let mut tasks = Vec::with_capacity(N);
        // Warm up: the queues grow to hold N tasks once.
        for round in 0..2 {
            tasks.extend((0..N).map(|i| spawn(small(i + round))));
            for (i, task) in tasks.drain(..).enumerate() {
                assert_eq!(task.await.unwrap(), i + round);
            }
        }
        // Tasks of another size: no finished task's memory fits them yet, so one allocation
        // each.
        let mut wide = Vec::with_capacity(N);
        let before = allocations();
        wide.extend((0..N).map(|i| spawn(async move { [i; 8] })));
        for (i, task) in wide.drain(..).enumerate() {
            assert_eq!(task.await.unwrap(), [i; 8]);
        }
        let fresh = allocations() - before;
        // From here on, the memory of the tasks that finished is reused: no allocation.
        let before = allocations();
        for i in 0..N {
            assert_eq!(spawn(small(i)).await.unwrap(), i);
        }
        let spawn_await = allocations() - before;
        let before = allocations();
        tasks.extend((0..N).map(|i| spawn(small(i))));
        for (i, task) in tasks.drain(..).enumerate() {
            assert_eq!(task.await.unwrap(), i);
        }
        let spawn_n_join_n = allocations() - before;
        let before = allocations();
        for _ in 0..N {
            yield_now().await;
        }
        (fresh, spawn_await, spawn_n_join_n, allocations() - before)
    });
    assert_eq!(
        (fresh, spawn_await, spawn_n_join_n, yields),
        (N as u64, 0, 0, 0),
        "allocations for {N} spawns then {N} joins of a new size of task, then of a size already \
         run: {N} spawn+awaits, {N} spawns then {N} joins; {N} yields"
    );
}
