//! Deterministic counts for the queue bench: one producer process puts `N` small items
//! (`u64`) and this process gets them, as `queue::1to1` does, so that `perf stat` or
//! `strace -c -f` over the run, divided by `N`, gives the system calls (futex waits and wakes)
//! and context switches of one item without a timer (the machine may be loaded).
//!
//! ```text
//! cargo build --release -p mproc-benches --example queue_counts
//! perf stat -e 'syscalls:sys_enter_futex,raw_syscalls:sys_enter,context-switches' \
//!     target/release/examples/queue_counts 1000000
//! ```
//!
//! It prints the items/s of the transfer, the CPU time of both processes per item, and the
//! context switches (voluntary/involuntary) of each side over the run. `queue_counts N
//! split` pins the producer to CPU 1 and the consumer to CPU 0 (each side's cache lines then
//! travel between two CPUs, the case where a consumer tailing its producer costs most);
//! `taskset -c 0 queue_counts N` has both share one CPU. On a loaded machine `chrt -f 10`
//! gives both processes CPUs as a quiet machine would (they then run at once, the consumer
//! close behind the producer). The clocks are glibc's, so that
//! `taskset -c 0 valgrind --tool=callgrind` runs it (instructions per item: the difference of
//! two runs' counts over the difference of their `N`).

use std::hint::black_box;
use std::time::Instant;

use mproc_ipc::{Barrier, Queue};
use mproc_process::Process;

/// This process's CPU time (glibc's clock: valgrind runs it, see `mproc_benches::sys`).
fn cpu_ns() -> u128 {
    mproc_benches::sys::process_cpu_time(std::process::id()).as_nanos()
}

/// This process's context switches so far: (voluntary, involuntary).
fn switches() -> (i64, i64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name));
        line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
    };
    (field("voluntary_ctxt_switches"), field("nonvoluntary_ctxt_switches"))
}

/// Pins this process to `cpu`.
fn pin(cpu: usize) {
    let mut one = rustix::thread::CpuSet::new();
    one.set(cpu);
    rustix::thread::sched_setaffinity(None, &one).unwrap();
}

/// Context switches since `from`: "voluntary/involuntary".
fn since(from: (i64, i64)) -> String {
    let now = switches();
    format!("{}/{}", now.0 - from.0, now.1 - from.1)
}

fn main() {
    mproc_process::init();
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let split = std::env::args().nth(2).is_some_and(|a| a == "split");
    let queue = Queue::<u64>::new().unwrap();
    let ready = Barrier::new(2).unwrap();
    let producer = {
        let (queue, ready) = (queue.clone(), ready.clone());
        Process::spawn(move || {
            if split {
                pin(1);
            }
            ready.wait().unwrap();
            let (cpu, sw) = (cpu_ns(), switches());
            for i in 0..n {
                queue.put(&i).unwrap();
            }
            let cpu = (cpu_ns() - cpu) as f64 / n as f64;
            eprintln!("producer CPU: {cpu:.1} ns/item, switches {}", since(sw));
        })
        .unwrap()
    };
    if split {
        pin(0);
    }
    ready.wait().unwrap();
    let (start, cpu, sw) = (Instant::now(), cpu_ns(), switches());
    for _ in 0..n {
        black_box(queue.get().unwrap());
    }
    let elapsed = start.elapsed();
    let cpu = cpu_ns() - cpu;
    let sw = since(sw);
    producer.join().unwrap();
    println!(
        "1to1: {:.0} items/s, consumer CPU {:.1} ns/item, switches {sw}",
        n as f64 / elapsed.as_secs_f64(),
        cpu as f64 / n as f64
    );
}
