//! Locks, `Value` and `Event` between processes (issue 15), beside Python's `multiprocessing`
//! measured by running `python3` in the same run, and the raw pipe round trip as the floor of
//! the `Event` ping-pong.
//!
//! - `sync::lock`: an uncontended `Lock` acquire + release (and `RLock`, and a process-private
//!   `std::sync::Mutex` for scale). Target: at most 25 ns.
//! - `sync::value_add_2proc`: `*value.get_lock() += 1` from two processes at once, time per
//!   add (all adds of both). Target: at least 10 M adds/s.
//! - `sync::pingpong`: a round trip between two processes: two `Event`s (set, wait, clear)
//!   beside 8 bytes there and back over two raw pipes (the floor). Target: at most 1.0x.

use std::hint::black_box;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use criterion::Criterion;
use mproc_benches::{Ratio, Target, report};
use mproc_ipc::{Barrier, Event, Lock, RLock, Value};
use mproc_process::Process;

fn main() {
    mproc_process::init();
    mproc_benches::start_run();
    let mut c = mproc_benches::criterion()
        // The Lock and Value targets read the medians of millions of operations; 10,000
        // resamples: they only narrow criterion's confidence intervals.
        .measurement_time(Duration::from_millis(1500))
        .configure_from_args();
    lock(&mut c);
    value_add(&mut c);
    pingpong(&mut c);
    c.final_summary();
    report("sync::lock", "std_mutex", &["lock", "rlock"], Ratio::Time);
    report("sync::pingpong", "raw_pipe", &["event"], Ratio::Time);
    // Targets (issue 15): an uncontended Lock at most 25 ns, Value += from 2 processes at
    // least 10 M adds/s (criterion's medians), the Event ping-pong at most 1.0x the raw pipe
    // round trip (the median of the paired rounds).
    let mut targets = Vec::new();
    if let Some(ns) = mproc_benches::median_ns("sync::lock", "lock") {
        targets.push(Target::at_most("sync::lock", ns, 25.0, " ns per acquire+release"));
    }
    if let Some(ns) = mproc_benches::median_ns("sync::value_add_2proc", "value") {
        println!("\nsync::value_add_2proc: {:.1} M adds/s from 2 processes ({ns:.1} ns per add)", 1e3 / ns);
        targets.push(Target::at_least("sync::value_add_2proc", 1e9 / ns, 10_000_000.0, " adds/s"));
    }
    if let Some(r) = paired_pingpong() {
        targets.push(Target::at_most("sync::pingpong/event", r, 1.0, "x the raw pipe round trip"));
    }
    python();
    mproc_benches::report_targets(&targets);
}

fn lock(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync::lock");
    let std_mutex = std::sync::Mutex::new(0u64);
    g.bench_function("std_mutex", |b| b.iter(|| drop(black_box(std_mutex.lock().unwrap()))));
    let lock = Lock::new().unwrap();
    g.bench_function("lock", |b| b.iter(|| drop(black_box(lock.acquire().unwrap()))));
    let rlock = RLock::new().unwrap();
    g.bench_function("rlock", |b| b.iter(|| drop(black_box(rlock.acquire().unwrap()))));
}

/// `n` adds under the value's lock.
fn add(value: &Value<u64>, n: u64) {
    for _ in 0..n {
        *value.get_lock().unwrap() += 1;
    }
}

fn value_add(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync::value_add_2proc");
    g.bench_function("value", |b| {
        b.iter_custom(|iters| {
            let value = Value::new(0u64).unwrap();
            let barrier = Barrier::new(2).unwrap();
            let half = iters / 2;
            let (v, bar) = (value.clone(), barrier.clone());
            let child = Process::spawn(move || {
                bar.wait().unwrap();
                add(&v, half);
            })
            .unwrap();
            barrier.wait().unwrap();
            let start = Instant::now();
            add(&value, iters - half);
            child.join().unwrap();
            let took = start.elapsed();
            assert_eq!(value.get(), iters);
            took
        })
    });
}

/// A child that answers each ping with a pong, until killed.
fn event_peer(ping: &Event, pong: &Event) -> Process<()> {
    let (ping, pong) = (ping.clone(), pong.clone());
    Process::spawn(move || {
        loop {
            ping.wait();
            ping.clear();
            pong.set();
        }
    })
    .unwrap()
}

fn event_round_trip(ping: &Event, pong: &Event) {
    ping.set();
    pong.wait();
    pong.clear();
}

/// A child that echoes 8 bytes from one pipe to the other, until end of file.
fn pipe_peer() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd, Process<()>) {
    let flags = rustix::pipe::PipeFlags::CLOEXEC;
    let (peer_in, to_peer) = rustix::pipe::pipe_with(flags).unwrap();
    let (from_peer, peer_out) = rustix::pipe::pipe_with(flags).unwrap();
    let child = Process::spawn(move || {
        let mut buf = [0u8; 8];
        while rustix::io::read(&peer_in, &mut buf).is_ok_and(|n| n == 8) {
            let _ = rustix::io::write(&peer_out, &buf);
        }
    })
    .unwrap();
    (to_peer, from_peer, child)
}

fn pipe_round_trip(tx: BorrowedFd<'_>, rx: BorrowedFd<'_>, buf: &mut [u8; 8]) {
    rustix::io::write(tx, buf).unwrap();
    assert_eq!(rustix::io::read(rx, buf).unwrap(), 8);
}

fn pingpong(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync::pingpong");
    {
        let (tx, rx, child) = pipe_peer();
        let mut buf = [1u8; 8];
        g.bench_function("raw_pipe", |b| {
            b.iter(|| pipe_round_trip(tx.as_fd(), rx.as_fd(), black_box(&mut buf)))
        });
        child.kill().unwrap();
        let _ = child.join();
    }
    {
        let (ping, pong) = (Event::new().unwrap(), Event::new().unwrap());
        let child = event_peer(&ping, &pong);
        g.bench_function("event", |b| b.iter(|| event_round_trip(&ping, &pong)));
        child.kill().unwrap();
        let _ = child.join();
    }
}

/// The ping-pongs alternating in one loop (see `mproc_benches::paired`): the median ratio,
/// when measuring.
fn paired_pingpong() -> Option<f64> {
    println!();
    let (tx, rx, pipe_child) = pipe_peer();
    let (ping, pong) = (Event::new().unwrap(), Event::new().unwrap());
    let event_child = event_peer(&ping, &pong);
    let mut buf = [1u8; 8];
    let mut floor = || pipe_round_trip(tx.as_fd(), rx.as_fd(), black_box(&mut buf));
    let ratio =
        mproc_benches::paired("sync pingpong: Event vs raw pipe", 2000, Ratio::Time, &mut floor, || {
            event_round_trip(&ping, &pong)
        });
    for child in [pipe_child, event_child] {
        child.kill().unwrap();
        let _ = child.join();
    }
    ratio
}

/// Python's figures, measured now on this machine by `python3`.
fn python() {
    if !mproc_benches::measuring() {
        return;
    }
    const SCRIPT: &str = r#"
import multiprocessing as mp, time

def adder(v, n, go):
    go.wait()
    for _ in range(n):
        with v.get_lock():
            v.value += 1

def ponger(ping, pong, n):
    for _ in range(n):
        ping.wait(); ping.clear(); pong.set()

if __name__ == "__main__":
    mp.set_start_method("fork")
    lock = mp.Lock()
    n = 1_000_000
    t = time.perf_counter()
    for _ in range(n):
        lock.acquire(); lock.release()
    print(f"python3 Lock acquire+release: {(time.perf_counter() - t) / n * 1e9:.0f} ns")
    v, go, n = mp.Value("q", 0), mp.Event(), 200_000
    ps = [mp.Process(target=adder, args=(v, n, go)) for _ in range(2)]
    for p in ps: p.start()
    t = time.perf_counter(); go.set()
    for p in ps: p.join()
    print(f"python3 Value += under get_lock() from 2 processes: {2 * n / (time.perf_counter() - t) / 1e6:.2f} M adds/s")
    ping, pong, n = mp.Event(), mp.Event(), 5_000
    p = mp.Process(target=ponger, args=(ping, pong, n)); p.start()
    t = time.perf_counter()
    for _ in range(n):
        ping.set(); pong.wait(); pong.clear()
    print(f"python3 Event ping-pong round trip: {(time.perf_counter() - t) / n * 1e6:.1f} us")
    p.join()
"#;
    match std::process::Command::new("python3").arg("-c").arg(SCRIPT).output() {
        Ok(out) => print!("\n{}", String::from_utf8_lossy(&out.stdout)),
        Err(e) => println!("\npython3 not run: {e}"),
    }
}
