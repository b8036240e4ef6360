//! One allocation per task, and none per wake: counted by this binary's allocator (each
//! thread's own count), in steady state (the run queue and the task list at their size).

use mproc_coroutine::{Executor, spawn, yield_now};

use crate::support::allocations;

const N: usize = 1000;

#[test]
fn a_task_is_one_allocation_and_a_yield_none() {
    let ex = Executor::new().unwrap();
    let (spawn_await, spawn_n_join_n, yields) = ex.block_on(async {
        let mut tasks = Vec::with_capacity(N);
        // Warm up: the queues grow to hold N tasks once.
        for round in 0..2 {
            tasks.extend((0..N).map(|i| spawn(async move { i + round })));
            for (i, task) in tasks.drain(..).enumerate() {
                assert_eq!(task.await.unwrap(), i + round);
            }
        }
        let before = allocations();
        for i in 0..N {
            assert_eq!(spawn(async move { i }).await.unwrap(), i);
        }
        let spawn_await = allocations() - before;
        let before = allocations();
        tasks.extend((0..N).map(|i| spawn(async move { i })));
        for (i, task) in tasks.drain(..).enumerate() {
            assert_eq!(task.await.unwrap(), i);
        }
        let spawn_n_join_n = allocations() - before;
        let before = allocations();
        for _ in 0..N {
            yield_now().await;
        }
        (spawn_await, spawn_n_join_n, allocations() - before)
    });
    assert_eq!(
        (spawn_await, spawn_n_join_n, yields),
        (N as u64, N as u64, 0),
        "allocations for {N} spawn+awaits, {N} spawns then {N} joins, {N} yields"
    );
}
