//! The pool's throughput on 2 workers: `apply_async` of a trivial task (tasks/s) and `map` of
//! 1,000,000 trivial items (items/s). Targets (issue 4): 500,000 tasks/s and 50,000,000
//! items/s. No floor beside them: the figures are absolute rates on this machine.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use mproc_pool::Pool;

fn trivial(x: u64) -> u64 {
    x.wrapping_mul(3)
}

const TASKS: u64 = 100_000;
const ITEMS: u64 = 1_000_000;

fn apply_async_all(pool: &Pool, n: u64) {
    let results: Vec<_> = (0..n).map(|x| pool.apply_async(trivial, x)).collect();
    for r in results {
        black_box(r.get().unwrap());
    }
}

fn map_all(pool: &Pool, items: &[u64]) {
    let values = pool.map(trivial, items.iter().copied()).unwrap();
    assert_eq!(values.len(), items.len());
    black_box(values);
}

fn main() {
    mproc_pool::process::init();
    mproc_benches::start_run();
    let pool = Pool::new(2).expect("a pool of 2 workers");
    let items: Vec<u64> = (0..ITEMS).collect();
    let mut c = Criterion::default()
        .output_directory(&mproc_benches::criterion_dir())
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(10)
        .configure_from_args();
    let mut g = c.benchmark_group("pool");
    g.throughput(Throughput::Elements(TASKS));
    g.bench_function("apply_async_100k", |b| b.iter(|| apply_async_all(&pool, TASKS)));
    g.throughput(Throughput::Elements(ITEMS));
    g.bench_function("map_1m", |b| b.iter(|| map_all(&pool, &items)));
    g.finish();
    c.final_summary();
    if mproc_benches::measuring() {
        for (id, n, unit) in [("apply_async_100k", TASKS, "tasks"), ("map_1m", ITEMS, "items")] {
            if let Some(ns) = mproc_benches::median_ns("pool", id) {
                println!("pool::{id}: {:.0} {unit}/s (median of this run)", n as f64 / (ns * 1e-9));
            }
        }
        // A direct count too, outside criterion: 5 rounds each, best and median.
        let rate = |f: &dyn Fn(), n: u64| {
            let mut rates: Vec<f64> = (0..5)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    n as f64 / t.elapsed().as_secs_f64()
                })
                .collect();
            rates.sort_by(f64::total_cmp);
            (rates[2], rates[4])
        };
        let (median, best) = rate(&|| apply_async_all(&pool, TASKS), TASKS);
        println!("pool apply_async: median {median:.0} tasks/s, best {best:.0} (5 rounds of {TASKS})");
        let (median, best) = rate(&|| map_all(&pool, &items), ITEMS);
        println!("pool map: median {median:.0} items/s, best {best:.0} (5 rounds of {ITEMS})");
    }
}
