//! mproc-ipc's queues between processes, beside Python's `multiprocessing.Queue` and the raw
//! pipe round trip, measured in the same run.
//!
//! - `queue::1to1`: one producer process puts small items (`u64`), the parent gets them.
//! - `queue::4x4`: four producer and four consumer processes over one queue.
//!
//! Both are timed from a barrier all the processes pass once started (the transfer, not the
//! forks), and so is Python's figure below.
//! - `queue::pingpong`: an item there and back through two queues between two processes,
//!   beside `raw_pipe`, an 8-byte `write`/`read` round trip over two pipes (the floor); and
//!   the same with both processes on one CPU (`queue::pingpong_one_cpu`).
//!
//! Targets (issue 15): 1→1 at least 5,000,000 items/s, 4x4 at least 2,000,000 items/s, each
//! ping-pong at most 1.0x its raw pipe round trip (`target` lines at the end).
//!
//! Python's figures come from running `python3` from this bench (when measuring), with a
//! quarter of the item counts (`PYTHON_ITEMS`: its rates are some 50 times lower, and the
//! rate, not the count, is the figure).

use std::hint::black_box;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use mproc_benches::{Ratio, Target, report};
use mproc_ipc::{Barrier, Queue};
use mproc_process::Process;

/// Items per measured run of the throughput benches.
const ITEMS: u64 = 400_000;
const STOP: u64 = u64::MAX;
/// Items per run of Python's queue, whose rates are some 50 times lower than ours: 2 s for
/// both of its runs on a quiet machine, where `ITEMS` took 8 s.
const PYTHON_ITEMS: u64 = ITEMS / 4;

/// One producer child puts `n` items, the parent gets them. Timed from when both are ready
/// (a barrier) to the last item got: the transfer, not the fork or the queue's first page
/// faults.
fn one_to_one(n: u64) -> Duration {
    let queue = Queue::<u64>::new().unwrap();
    let ready = Barrier::new(2).unwrap();
    let producer = {
        let (queue, ready) = (queue.clone(), ready.clone());
        Process::spawn(move || {
            ready.wait().unwrap();
            for i in 0..n {
                queue.put(&i).unwrap();
            }
        })
        .unwrap()
    };
    ready.wait().unwrap();
    let start = Instant::now();
    for _ in 0..n {
        black_box(queue.get().unwrap());
    }
    let elapsed = start.elapsed();
    producer.join().unwrap();
    elapsed
}

/// Four producer and four consumer children over one queue, `n` items in all. Timed from
/// when all are ready (a barrier) until every child has finished.
fn four_by_four(n: u64) -> Duration {
    let queue = Queue::<u64>::new().unwrap();
    let ready = Barrier::new(9).unwrap();
    let per = n / 4;
    let spawn = |produce: bool| {
        let (queue, ready) = (queue.clone(), ready.clone());
        Process::spawn(move || {
            ready.wait().unwrap();
            for i in 0..per {
                if produce {
                    queue.put(&i).unwrap();
                } else {
                    black_box(queue.get().unwrap());
                }
            }
        })
        .unwrap()
    };
    let children: Vec<_> = (0..8).map(|i| spawn(i % 2 == 0)).collect();
    ready.wait().unwrap();
    let start = Instant::now();
    for child in children {
        child.join().unwrap();
    }
    start.elapsed()
}

/// A child that echoes items from `there` to `back` until `STOP`.
fn echo_child(there: &Queue<u64>, back: &Queue<u64>) -> Process<()> {
    let (there, back) = (there.clone(), back.clone());
    Process::spawn(move || {
        loop {
            let v = there.get().unwrap();
            if v == STOP {
                return;
            }
            back.put(&v).unwrap();
        }
    })
    .unwrap()
}

/// A child that echoes 8 bytes from one pipe to another until end of file: the floor.
struct RawPeer {
    to: std::os::fd::OwnedFd,
    from: std::os::fd::OwnedFd,
    child: Option<Process<()>>,
}

impl RawPeer {
    fn new() -> RawPeer {
        let flags = rustix::pipe::PipeFlags::CLOEXEC;
        let (peer_in, to) = rustix::pipe::pipe_with(flags).unwrap();
        let (from, peer_out) = rustix::pipe::pipe_with(flags).unwrap();
        // The child must not keep a copy of our write end, or it never sees end of file.
        let child = mproc_process::Builder::new()
            .close_in_child(&to)
            .spawn(move || {
                let mut buf = [0u8; 8];
                while mproc_benches::read_exact(peer_in.as_fd(), &mut buf) {
                    mproc_benches::write_all(peer_out.as_fd(), &buf);
                }
            })
            .unwrap();
        RawPeer { to, from, child: Some(child) }
    }

    fn round_trip(&self, buf: &mut [u8; 8]) {
        mproc_benches::write_all(self.to.as_fd(), buf);
        assert!(mproc_benches::read_exact(self.from.as_fd(), buf));
    }
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        // Closing our write end (its only one) ends the child's loop.
        let to = std::mem::replace(&mut self.to, rustix::io::dup(&self.from).unwrap());
        drop(to);
        if let Some(child) = self.child.take() {
            child.join().unwrap();
        }
    }
}

fn pingpong(c: &mut Criterion, group: &str) {
    let mut g = c.benchmark_group(group);
    {
        let peer = RawPeer::new();
        let mut buf = [1u8; 8];
        g.bench_function("raw_pipe", |b| b.iter(|| peer.round_trip(black_box(&mut buf))));
    }
    {
        let (there, back) = (Queue::<u64>::new().unwrap(), Queue::<u64>::new().unwrap());
        let child = echo_child(&there, &back);
        g.bench_function("queues", |b| {
            b.iter(|| {
                there.put(black_box(&7)).unwrap();
                black_box(back.get().unwrap());
            })
        });
        there.put(&STOP).unwrap();
        child.join().unwrap();
    }
    g.finish();
}

const PYTHON: &str = r#"
import multiprocessing as mp, sys, time
N = int(sys.argv[1])
def produce(q, n, ready):
    ready.wait()
    for i in range(n):
        q.put(i)
def consume(q, n, ready):
    ready.wait()
    for _ in range(n):
        q.get()
if __name__ == '__main__':
    mp.set_start_method('fork')
    q, ready = mp.Queue(), mp.Barrier(2)
    p = mp.Process(target=produce, args=(q, N, ready)); p.start()
    ready.wait()
    t = time.perf_counter()
    for _ in range(N):
        q.get()
    print(f"python3 multiprocessing.Queue 1->1: {N / (time.perf_counter() - t):,.0f} items/s")
    p.join()
    q, ready = mp.Queue(), mp.Barrier(9)
    ps = [mp.Process(target=f, args=(q, N // 4, ready)) for f in (produce, consume) * 4]
    for p in ps: p.start()
    ready.wait()
    t = time.perf_counter()
    for p in ps: p.join()
    print(f"python3 multiprocessing.Queue 4x4: {N / (time.perf_counter() - t):,.0f} items/s")
"#;

fn main() {
    mproc_process::init();
    mproc_benches::start_run();
    let mut c = mproc_benches::criterion()
        // The ping-pong targets read the medians of some 100,000 round trips; 10,000
        // resamples: they only narrow criterion's confidence intervals.
        .measurement_time(Duration::from_secs(2))
        .sample_size(10)
        .configure_from_args();
    {
        let mut g = c.benchmark_group("queue");
        g.throughput(Throughput::Elements(ITEMS));
        // Each iteration moves 400,000 items (about 0.1 s): flat sampling takes 10 samples
        // of one or two iterations, where linear sampling needs 55 iterations at least.
        g.sampling_mode(criterion::SamplingMode::Flat);
        g.bench_function("1to1", |b| b.iter_custom(|iters| (0..iters).map(|_| one_to_one(ITEMS)).sum()));
        g.bench_function("4x4", |b| b.iter_custom(|iters| (0..iters).map(|_| four_by_four(ITEMS)).sum()));
        g.finish();
    }
    pingpong(&mut c, "queue::pingpong");
    // On one CPU too: the round trip is then two context switches, without the scheduler's
    // cross-CPU wake-up placement.
    let all = rustix::thread::sched_getaffinity(None).unwrap();
    let mut one = rustix::thread::CpuSet::new();
    one.set(rustix::thread::sched_getcpu());
    rustix::thread::sched_setaffinity(None, &one).unwrap();
    pingpong(&mut c, "queue::pingpong_one_cpu");
    {
        let peer = RawPeer::new();
        let (there, back) = (Queue::<u64>::new().unwrap(), Queue::<u64>::new().unwrap());
        let child = echo_child(&there, &back);
        let mut buf = [1u8; 8];
        mproc_benches::paired(
            "queue ping-pong, one CPU: queues vs raw pipe",
            2000,
            Ratio::Time,
            || peer.round_trip(black_box(&mut buf)),
            || {
                there.put(black_box(&7)).unwrap();
                black_box(back.get().unwrap());
            },
        );
        there.put(&STOP).unwrap();
        child.join().unwrap();
    }
    rustix::thread::sched_setaffinity(None, &all).unwrap();
    c.final_summary();
    if !mproc_benches::measuring() {
        return;
    }
    let mut targets = Vec::new();
    for (id, bound) in [("1to1", 5_000_000.0), ("4x4", 2_000_000.0)] {
        if let Some(ns) = mproc_benches::median_ns("queue", id) {
            let rate = ITEMS as f64 / (ns * 1e-9);
            println!("queue::{id}: {rate:.0} items/s (median of this run)");
            targets.push(Target::at_least(format!("queue::{id}"), rate, bound, " items/s"));
        }
    }
    for group in ["queue::pingpong", "queue::pingpong_one_cpu"] {
        report(group, "raw_pipe", &["queues"], Ratio::Time);
        let ns = |id| mproc_benches::median_ns(group, id);
        if let (Some(floor), Some(queues)) = (ns("raw_pipe"), ns("queues")) {
            targets.push(Target::at_most(group, queues / floor, 1.0, "x the raw pipe round trip"));
        }
    }
    match std::process::Command::new("python3").arg("-c").arg(PYTHON).arg(PYTHON_ITEMS.to_string()).output() {
        Ok(out) if out.status.success() => print!("{}", String::from_utf8_lossy(&out.stdout)),
        Ok(out) => println!("python3 failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => println!("python3 not run: {e}"),
    }
    mproc_benches::report_targets(&targets);
}
