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
//! It prints the items/s of the transfer and the CPU time of both processes per item.

use std::hint::black_box;
use std::time::Instant;

use mproc_ipc::{Barrier, Queue};
use mproc_process::Process;

fn cpu_ns() -> u128 {
    // This process's CPU time plus that of its waited-for children.
    let u = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    u.tv_sec as u128 * 1_000_000_000 + u.tv_nsec as u128
}

fn main() {
    mproc_process::init();
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let queue = Queue::<u64>::new().unwrap();
    let ready = Barrier::new(2).unwrap();
    let producer = {
        let (queue, ready) = (queue.clone(), ready.clone());
        Process::spawn(move || {
            ready.wait().unwrap();
            let cpu = cpu_ns();
            for i in 0..n {
                queue.put(&i).unwrap();
            }
            eprintln!("producer CPU: {:.1} ns/item", (cpu_ns() - cpu) as f64 / n as f64);
        })
        .unwrap()
    };
    ready.wait().unwrap();
    let (start, cpu) = (Instant::now(), cpu_ns());
    for _ in 0..n {
        black_box(queue.get().unwrap());
    }
    let elapsed = start.elapsed();
    let cpu = cpu_ns() - cpu;
    producer.join().unwrap();
    println!(
        "1to1: {:.0} items/s, consumer CPU {:.1} ns/item",
        n as f64 / elapsed.as_secs_f64(),
        cpu as f64 / n as f64
    );
}
