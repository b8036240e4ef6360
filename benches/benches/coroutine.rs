//! The coroutine executor against tokio's current-thread runtime, async-executor's
//! `LocalExecutor` and futures' `LocalPool`, in the same run, on three workloads:
//!
//! - spawn + await of a task that is ready at once (ns per task);
//! - spawn N tasks, then await all N (ns per task, N = 1000);
//! - a task that wakes itself and yields (ns per yield).
//!
//! Target (issues 5, 14): ours at most 0.5x the fastest of the three on each, and one
//! allocation per task (counted by this binary's allocator, printed, and asserted for ours in
//! every run, `cargo test` included). Every workload times itself in its thread's CPU time,
//! so other processes on a loaded machine do not enter the figures; the paired runs alternate
//! ours and each other executor and report the median ratio.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use mproc_benches::thread_cpu_time as cpu_now;

use futures::task::LocalSpawnExt;

#[global_allocator]
static ALLOCATOR: mproc_benches::sys::CountingAlloc = mproc_benches::sys::CountingAlloc;

fn allocations() -> u64 {
    mproc_benches::sys::allocations()
}

const N: usize = 1000;

/// Wakes itself once, then is ready: the self-wake yield every executor is measured with
/// (futures has none of its own).
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// One executor under test: how it runs each workload for `iters` rounds, timed inside.
struct Contender {
    name: &'static str,
    spawn_await: fn(u64) -> Duration,
    spawn_n_join_n: fn(u64) -> Duration,
    yields: fn(u64) -> Duration,
}

mod ours {
    use super::*;
    use mproc_coroutine::{Executor, spawn, yield_now};

    pub(super) fn spawn_await(iters: u64) -> Duration {
        let ex = Executor::new().unwrap();
        ex.block_on(async {
            let start = cpu_now();
            for i in 0..iters {
                black_box(spawn(async move { black_box(i) }).await.unwrap());
            }
            cpu_now() - start
        })
    }

    pub(super) fn spawn_n_join_n(iters: u64) -> Duration {
        let ex = Executor::new().unwrap();
        ex.block_on(async {
            let start = cpu_now();
            for _ in 0..iters {
                let tasks: Vec<_> = (0..N).map(|i| spawn(async move { black_box(i) })).collect();
                for task in tasks {
                    black_box(task.await.unwrap());
                }
            }
            cpu_now() - start
        })
    }

    pub(super) fn yields(iters: u64) -> Duration {
        let ex = Executor::new().unwrap();
        ex.block_on(async { spawn(async move { timed_async(iters, yield_now).await }).await.unwrap() })
    }
}

/// Times `iters` awaits of `make()`, inside a task.
async fn timed_async<F: Future<Output = ()>>(iters: u64, make: impl Fn() -> F) -> Duration {
    let start = cpu_now();
    for _ in 0..iters {
        make().await;
    }
    cpu_now() - start
}

mod tokio_ct {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().build().unwrap()
    }

    pub(super) fn spawn_await(iters: u64) -> Duration {
        runtime().block_on(async {
            let start = cpu_now();
            for i in 0..iters {
                black_box(tokio::spawn(async move { black_box(i) }).await.unwrap());
            }
            cpu_now() - start
        })
    }

    pub(super) fn spawn_n_join_n(iters: u64) -> Duration {
        runtime().block_on(async {
            let start = cpu_now();
            for _ in 0..iters {
                let tasks: Vec<_> = (0..N).map(|i| tokio::spawn(async move { black_box(i) })).collect();
                for task in tasks {
                    black_box(task.await.unwrap());
                }
            }
            cpu_now() - start
        })
    }

    pub(super) fn yields(iters: u64) -> Duration {
        runtime().block_on(async {
            tokio::spawn(async move { timed_async(iters, || YieldNow(false)).await }).await.unwrap()
        })
    }
}

mod async_executor_local {
    use super::*;
    use async_executor::LocalExecutor;

    pub(super) fn spawn_await(iters: u64) -> Duration {
        let ex = LocalExecutor::new();
        futures_lite::future::block_on(ex.run(async {
            let start = cpu_now();
            for i in 0..iters {
                black_box(ex.spawn(async move { black_box(i) }).await);
            }
            cpu_now() - start
        }))
    }

    pub(super) fn spawn_n_join_n(iters: u64) -> Duration {
        let ex = LocalExecutor::new();
        futures_lite::future::block_on(ex.run(async {
            let start = cpu_now();
            for _ in 0..iters {
                let tasks: Vec<_> = (0..N).map(|i| ex.spawn(async move { black_box(i) })).collect();
                for task in tasks {
                    black_box(task.await);
                }
            }
            cpu_now() - start
        }))
    }

    pub(super) fn yields(iters: u64) -> Duration {
        let ex = LocalExecutor::new();
        futures_lite::future::block_on(
            ex.run(ex.spawn(async move { timed_async(iters, || YieldNow(false)).await })),
        )
    }
}

mod futures_local_pool {
    use super::*;
    use futures::executor::LocalPool;

    pub(super) fn spawn_await(iters: u64) -> Duration {
        let mut pool = LocalPool::new();
        let spawner = pool.spawner();
        pool.run_until(async {
            let start = cpu_now();
            for i in 0..iters {
                black_box(spawner.spawn_local_with_handle(async move { black_box(i) }).unwrap().await);
            }
            cpu_now() - start
        })
    }

    pub(super) fn spawn_n_join_n(iters: u64) -> Duration {
        let mut pool = LocalPool::new();
        let spawner = pool.spawner();
        pool.run_until(async {
            let start = cpu_now();
            for _ in 0..iters {
                let tasks: Vec<_> = (0..N)
                    .map(|i| spawner.spawn_local_with_handle(async move { black_box(i) }).unwrap())
                    .collect();
                for task in tasks {
                    black_box(task.await);
                }
            }
            cpu_now() - start
        })
    }

    pub(super) fn yields(iters: u64) -> Duration {
        let mut pool = LocalPool::new();
        let spawner = pool.spawner();
        let task =
            spawner.spawn_local_with_handle(async move { timed_async(iters, || YieldNow(false)).await });
        pool.run_until(task.unwrap())
    }
}

const CONTENDERS: [Contender; 4] = [
    Contender {
        name: "mproc",
        spawn_await: ours::spawn_await,
        spawn_n_join_n: ours::spawn_n_join_n,
        yields: ours::yields,
    },
    Contender {
        name: "tokio_current_thread",
        spawn_await: tokio_ct::spawn_await,
        spawn_n_join_n: tokio_ct::spawn_n_join_n,
        yields: tokio_ct::yields,
    },
    Contender {
        name: "async_executor_local",
        spawn_await: async_executor_local::spawn_await,
        spawn_n_join_n: async_executor_local::spawn_n_join_n,
        yields: async_executor_local::yields,
    },
    Contender {
        name: "futures_local_pool",
        spawn_await: futures_local_pool::spawn_await,
        spawn_n_join_n: futures_local_pool::spawn_n_join_n,
        yields: futures_local_pool::yields,
    },
];

/// A workload as a contender runs it, for `iters` rounds, timed inside.
type Workload = fn(u64) -> Duration;

/// Picks a contender's way of running one workload.
type Pick = fn(&Contender) -> Workload;

/// The workloads: (group, per how many units an iteration counts, the contender's fn).
const WORKLOADS: [(&str, u64, Pick); 3] = [
    ("coroutine::spawn_await", 1, |c| c.spawn_await),
    ("coroutine::spawn_n_join_n", N as u64, |c| c.spawn_n_join_n),
    ("coroutine::self_wake_yield", 1, |c| c.yields),
];

/// Allocations per spawned task, for each contender (measured over 10,000 spawn+awaits,
/// minus the same executor's cost of running with no task at all).
fn allocations_per_task(c: &Contender) -> f64 {
    let count = |iters| {
        let before = allocations();
        (c.spawn_await)(iters);
        allocations() - before
    };
    let (none, many) = (count(0), count(10_000));
    (many - none) as f64 / 10_000.0
}

fn main() {
    if let Ok(probe) = std::env::var("MPROC_BENCH_PROBE") {
        // `contender/workload` run for MPROC_BENCH_N iterations and nothing else, to count
        // what one costs from outside (callgrind; N = 0 for the set-up alone).
        let n: u64 = std::env::var("MPROC_BENCH_N").map_or(1000, |s| s.parse().unwrap());
        let (name, workload) = probe.split_once('/').expect("MPROC_BENCH_PROBE=contender/workload");
        let c = CONTENDERS.iter().find(|c| c.name == name).expect("no such contender");
        let (_, _, pick) =
            WORKLOADS.iter().find(|(g, _, _)| g.ends_with(workload)).expect("no such workload");
        black_box(pick(c)(n));
        return;
    }
    mproc_benches::start_run();
    let mut crit = mproc_benches::criterion()
        // Figures only (the targets come from the paired runs); 10,000 resamples: they only
        // narrow criterion's confidence intervals.
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
        .configure_from_args();
    for (group, _, pick) in WORKLOADS {
        let mut g = crit.benchmark_group(group);
        for c in &CONTENDERS {
            g.bench_function(c.name, |b| b.iter_custom(pick(c)));
        }
        g.finish();
    }
    crit.final_summary();
    // Checked in every run, `cargo test` included: one allocation per task is a guarantee.
    // (A few more in all than tasks: the run queue grows while the first ones are spawned.)
    let ours = allocations_per_task(&CONTENDERS[0]);
    assert!(ours < 1.01, "mproc-coroutine allocates {ours:.4} times per task, not once");
    if !mproc_benches::measuring() {
        return;
    }
    println!();
    for (group, per, _) in WORKLOADS {
        let ns: Vec<(&str, f64)> = CONTENDERS
            .iter()
            .filter_map(|c| mproc_benches::median_ns(group, c.name).map(|t| (c.name, t / per as f64)))
            .collect();
        let Some(&(_, ours)) = ns.iter().find(|(name, _)| *name == "mproc") else { continue };
        let Some(&(best_name, best)) =
            ns.iter().filter(|(name, _)| *name != "mproc").min_by(|a, b| a.1.total_cmp(&b.1))
        else {
            continue;
        };
        let all: Vec<String> = ns.iter().map(|(name, t)| format!("{name} {t:.1} ns")).collect();
        println!(
            "{group}: mproc {ours:.1} ns per unit = {:.3}x the best other ({best_name} {best:.1} ns); all: {}",
            ours / best,
            all.join(", ")
        );
    }
    for c in &CONTENDERS {
        println!("allocations per spawned task: {:<22} {:.4}", c.name, allocations_per_task(c));
    }
    paired_runs();
}

/// Rounds of each workload per call in the paired runs: a few milliseconds each.
const PAIRED_ROUNDS: [u64; 3] = [20_000, 20, 100_000];

/// Ours against each other executor, alternating (see `mproc_benches::paired`), with the
/// target (issue 14): at most 0.5x the fastest other on each workload, that is, 0.5x of each;
/// and one allocation per task in steady state.
fn paired_runs() {
    use mproc_benches::Target;
    println!();
    let mut targets = Vec::new();
    for ((group, _, pick), rounds) in WORKLOADS.into_iter().zip(PAIRED_ROUNDS) {
        let ours = pick(&CONTENDERS[0]);
        let mut worst: Option<(f64, &str)> = None;
        for other in &CONTENDERS[1..] {
            let theirs = pick(other);
            let name = format!("{group}: mproc vs {}", other.name);
            let ratio = paired(&name, ours, theirs, rounds);
            if let Some(r) = ratio {
                worst = worst.filter(|(w, _)| *w >= r).or(Some((r, other.name)));
            }
        }
        if let Some((ratio, fastest)) = worst {
            // The name stays the same from run to run; which executor was fastest goes after
            // the value.
            targets.push(Target::at_most(
                format!("{group} vs the fastest other"),
                ratio,
                0.5,
                format!("x the time of {fastest}"),
            ));
        }
    }
    let per_task = steady_allocations_per_task(&CONTENDERS[0]);
    targets.push(Target::at_most("coroutine::allocations_per_task (steady state)", per_task, 1.0, ""));
    mproc_benches::report_targets(&targets);
}

/// `ours` over `theirs`, each run for `rounds` in turn, 31 times (the order alternating), each
/// timed inside (the executor's creation left out, as criterion's figures do): the median
/// ratio, printed with its quartiles. `None` unless measuring.
fn paired(name: &str, ours: Workload, theirs: Workload, rounds: u64) -> Option<f64> {
    if !mproc_benches::measuring() {
        return None;
    }
    theirs(rounds);
    ours(rounds);
    let mut ratios: Vec<f64> = (0..31)
        .map(|i| {
            let (o, t) = if i % 2 == 0 {
                let t = theirs(rounds);
                (ours(rounds), t)
            } else {
                let o = ours(rounds);
                (o, theirs(rounds))
            };
            o.as_secs_f64() / t.as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "paired {name:<60} median {:.3}x (quartiles {:.3}-{:.3}, 31 alternating rounds of {rounds})",
        ratios[15], ratios[7], ratios[23]
    );
    Some(ratios[15])
}

/// Allocations per task once the executor's queues have their size: 10,000 spawn+awaits
/// minus one (which grows them).
fn steady_allocations_per_task(c: &Contender) -> f64 {
    let count = |iters| {
        let before = allocations();
        (c.spawn_await)(iters);
        allocations() - before
    };
    (count(10_001) - count(1)) as f64 / 10_000.0
}
