//! Deterministic counts for the ping-pong benches (`queue::pingpong`, `sync::pingpong`): `N`
//! round trips between this process and a child, over two raw pipes (the floor), two queues
//! or two `Event`s, optionally with both processes on one CPU. `strace -c -f` or `perf stat`
//! over a run, divided by `N`, gives the system calls and context switches of one round trip
//! without a timer (the machine may be loaded); the run also prints its own per-round-trip
//! counts of voluntary and involuntary context switches (`/proc/PID/status`, both processes).
//!
//! ```text
//! cargo build --release -p mproc-benches --example pingpong_counts
//! strace -c -f target/release/examples/pingpong_counts queue 100000 one-cpu
//! perf stat -e 'raw_syscalls:sys_enter,context-switches' \
//!     target/release/examples/pingpong_counts event 100000
//! ```

use std::hint::black_box;
use std::os::fd::AsFd;
use std::time::Instant;

use mproc_ipc::{Event, Queue};
use mproc_process::Process;

/// Voluntary and involuntary context switches of process `pid` so far.
fn switches(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field =
        |name: &str| status.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0);
    (field("voluntary_ctxt_switches:"), field("nonvoluntary_ctxt_switches:"))
}

/// CPU time of process `pid` so far, in nanoseconds (`/proc/PID/schedstat`, the scheduler's
/// exact count, of its main thread: both processes here have one thread).
fn cpu_ns(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap_or_default();
    stat.split(' ').next().and_then(|f| f.parse().ok()).unwrap_or(0)
}

/// User and system CPU time of process `pid` so far, in clock ticks (`/proc/PID/stat`).
fn user_sys(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let mut fields = stat[stat.rfind(')').map_or(0, |at| at + 2)..].split(' ').skip(11);
    let mut next = || fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
    (next(), next())
}

fn main() {
    mproc_process::init();
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "queue".into());
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    if args.next().as_deref() == Some("one-cpu") {
        let mut one = rustix::thread::CpuSet::new();
        one.set(rustix::thread::sched_getcpu());
        rustix::thread::sched_setaffinity(None, &one).unwrap();
    }
    let me = std::process::id();
    let (trip, child): (Box<dyn FnMut()>, Process<()>) = match what.as_str() {
        "pipe" => {
            let flags = rustix::pipe::PipeFlags::CLOEXEC;
            let (peer_in, to) = rustix::pipe::pipe_with(flags).unwrap();
            let (from, peer_out) = rustix::pipe::pipe_with(flags).unwrap();
            let child = Process::spawn(move || {
                let mut buf = [0u8; 8];
                while rustix::io::read(&peer_in, &mut buf).is_ok_and(|n| n == 8) {
                    let _ = rustix::io::write(&peer_out, &buf);
                }
            })
            .unwrap();
            let mut buf = [1u8; 8];
            let trip = move || {
                rustix::io::write(to.as_fd(), &buf).unwrap();
                assert_eq!(rustix::io::read(from.as_fd(), &mut buf).unwrap(), 8);
            };
            (Box::new(trip), child)
        }
        "queue" => {
            let (there, back) = (Queue::<u64>::new().unwrap(), Queue::<u64>::new().unwrap());
            let child = {
                let (there, back) = (there.clone(), back.clone());
                Process::spawn(move || {
                    loop {
                        let v = there.get().unwrap();
                        back.put(&v).unwrap();
                    }
                })
                .unwrap()
            };
            let trip = move || {
                there.put(black_box(&7)).unwrap();
                black_box(back.get().unwrap());
            };
            (Box::new(trip), child)
        }
        event if event == "event" || event.starts_with("touch") => {
            // Events; `touchK`: plus a read of one word in each of `K` pages after each
            // wake-up: what a page touched after a context switch costs (no PCID: the TLB
            // starts empty).
            let k: usize = event.strip_prefix("touch").map_or(0, |k| k.parse().unwrap());
            let pages: &'static [u8] = Vec::leak(vec![1u8; k * 4096 + 4096]);
            let (ping, pong) = (Event::new().unwrap(), Event::new().unwrap());
            let sum = move || (0..k).map(|i| black_box(pages[i * 4096]) as u64).sum::<u64>();
            let child = {
                let (ping, pong) = (ping.clone(), pong.clone());
                Process::spawn(move || {
                    loop {
                        ping.wait();
                        black_box(sum());
                        ping.clear();
                        pong.set();
                    }
                })
                .unwrap()
            };
            let trip = move || {
                ping.set();
                pong.wait();
                black_box(sum());
                pong.clear();
            };
            (Box::new(trip), child)
        }
        other => panic!("pipe, queue or event, not {other}"),
    };
    let mut trip = trip;
    for _ in 0..1000 {
        trip();
    }
    let peer = child.pid();
    let (s0, c0) = (switches(me), switches(peer));
    let cpu0 = cpu_ns(me) + cpu_ns(peer);
    let (u0, k0) = (user_sys(me), user_sys(peer));
    let start = Instant::now();
    for _ in 0..n {
        trip();
    }
    let took = start.elapsed();
    let cpu1 = cpu_ns(me) + cpu_ns(peer);
    let (u1, k1) = (user_sys(me), user_sys(peer));
    let user = (u1.0 + k1.0 - u0.0 - k0.0) as f64;
    let sys = (u1.1 + k1.1 - u0.1 - k0.1) as f64;
    let (s1, c1) = (switches(me), switches(peer));
    let per = |a: u64, b: u64| (b - a) as f64 / n as f64;
    println!(
        "{what}: {:.0} ns per round trip, {:.0} ns of CPU (both processes, {:.0}% user); context switches per round trip: this {:.2} vol + {:.2} invol, peer {:.2} vol + {:.2} invol",
        took.as_nanos() as f64 / n as f64,
        (cpu1 - cpu0) as f64 / n as f64,
        100.0 * user / (user + sys),
        per(s0.0, s1.0),
        per(s0.1, s1.1),
        per(c0.0, c1.0),
        per(c0.1, c1.1),
    );
    child.kill().unwrap();
    let _ = child.join();
}
