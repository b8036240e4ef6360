//! Deterministic counts for `sync::value_add_2proc`: two processes each add 1 to a shared
//! `Value<u64>` `N` times under its lock (`*value.get_lock().unwrap() += 1`), as the bench
//! does, so that the figure can be explained per add without a timer (the machine may be
//! loaded). `strace -c -f` or `perf stat` over the run, divided by `2 N`, gives the system
//! calls (futex waits and wakes) and context switches of one add:
//!
//! ```text
//! cargo build --release -p mproc-benches --example value_counts
//! target/release/examples/value_counts 5000000
//! strace -c -f -e trace=futex target/release/examples/value_counts 1000000
//! perf stat -e 'syscalls:sys_enter_futex,context-switches' target/release/examples/value_counts
//! ```
//!
//! It prints the adds/s of both processes together, and for each process its CPU time per
//! add of its own, its context switches (voluntary: it slept; involuntary: preempted), and
//! its *hand-overs*: how many times it took the lock after the other process had added
//! (the value was not the one it left), which says how long each side's runs are.

use std::time::Instant;

use mproc_ipc::{Barrier, Value};
use mproc_process::Process;

fn cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// This process's (voluntary, involuntary) context switches so far (from `/proc`).
fn switches() -> (i64, i64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    (field("voluntary_ctxt_switches:"), field("nonvoluntary_ctxt_switches:"))
}

/// `n` adds, and what they cost this process.
struct Side {
    cpu_ns: u64,
    voluntary: i64,
    involuntary: i64,
    hand_overs: u64,
    /// The most adds the other process made while this one waited for the lock once.
    longest_wait: u64,
}

fn add(value: &Value<u64>, n: u64) -> Side {
    let (cpu, (vol, invol)) = (cpu_ns(), switches());
    // The value this process left (none yet: 0, what a look finds if nobody added yet).
    let mut left = 0;
    let (mut hand_overs, mut longest_wait) = (0, 0);
    for _ in 0..n {
        let mut v = value.get_lock().unwrap();
        if *v != left {
            hand_overs += 1;
            longest_wait = longest_wait.max(*v - left);
        }
        *v += 1;
        left = *v;
    }
    let (vol2, invol2) = switches();
    Side {
        cpu_ns: cpu_ns() - cpu,
        voluntary: vol2 - vol,
        involuntary: invol2 - invol,
        hand_overs,
        longest_wait,
    }
}

fn print(who: &str, s: &Side, n: u64) {
    println!(
        "  {who}: CPU {:.1} ns/add, {} voluntary + {} involuntary context switches \
         ({:.4}/add), {} hand-overs (a run of {:.1} adds on average; \
         the longest wait: {} adds of the other)",
        s.cpu_ns as f64 / n as f64,
        s.voluntary,
        s.involuntary,
        (s.voluntary + s.involuntary) as f64 / n as f64,
        s.hand_overs,
        n as f64 / s.hand_overs.max(1) as f64,
        s.longest_wait,
    );
}

fn main() {
    mproc_process::init();
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5_000_000);
    let value = Value::new(0u64).unwrap();
    let (ready, done) = (Barrier::new(2).unwrap(), Barrier::new(2).unwrap());
    let (child_value, child_ready, child_done) = (value.clone(), ready.clone(), done.clone());
    let child = Process::spawn(move || {
        child_ready.wait().unwrap();
        let side = add(&child_value, n);
        child_done.wait().unwrap();
        (side.cpu_ns, side.voluntary, side.involuntary, side.hand_overs, side.longest_wait)
    })
    .unwrap();
    ready.wait().unwrap();
    let start = Instant::now();
    let parent = add(&value, n);
    done.wait().unwrap();
    let elapsed = start.elapsed();
    let (cpu_ns, voluntary, involuntary, hand_overs, longest_wait) = child.join().unwrap();
    let child = Side { cpu_ns, voluntary, involuntary, hand_overs, longest_wait };
    assert_eq!(value.get(), 2 * n, "adds were lost");
    println!(
        "value_add_2proc: {:.2} M adds/s ({:.1} ns per add, {n} adds in each of 2 processes)",
        2.0 * n as f64 / elapsed.as_secs_f64() / 1e6,
        elapsed.as_nanos() as f64 / (2 * n) as f64,
    );
    print("parent", &parent, n);
    print("child ", &child, n);
}
