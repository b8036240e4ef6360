//! The pool: throughput on 2 workers, and how well it spreads skewed work.
//!
//! - Throughput: `apply_async` of a trivial task (tasks/s) and `map` of 1,000,000 trivial
//!   items (items/s). Targets (issue 4): 500,000 tasks/s and 50,000,000 items/s, absolute
//!   rates on this machine.
//! - `map`'s floor (issue 14): the bytes `map` moves, moved and nothing else. Two peer
//!   processes (one per worker) each take every other chunk: the parent writes each chunk's
//!   encoded input (postcard, as `map` encodes it) into a pipe to its peer, which reads it
//!   whole and writes back the chunk's encoded values (made before the clock starts), which
//!   the parent reads whole; a writer and a reader thread per peer, as the pool has. No
//!   encoding, decoding or computing is timed: `map`'s time over this floor's, in
//!   alternating rounds of the same run, is what the pool adds to moving the bytes.
//! - Skewed workloads (issue 11), each on 2 and 8 workers, all through `apply_async`:
//!   cheap-then-slow (5,000 trivial tasks, then 40 of 50 ms), slow-then-cheap (the same, the
//!   other way round) and a random mix of 1 µs and 5 ms tasks. Each makespan (first
//!   submission to last result) is printed as a ratio to the ideal makespan of the same run:
//!   `max(total work / workers, longest task)`. Target: at most 1.10x.
//!
//! - Remote workers (issue 16): a pool of 2 remote workers (copies of this bench in network
//!   namespaces, over veth links) beside a pool of 2 local workers, in paired rounds of the
//!   same run: `apply_async` tasks/s and `map` items/s, and the per-task overhead in µs.
//!   Target: remote `map` at least 0.5x local. Skipped, saying why, where namespaces cannot
//!   be made.
//! - Counting from outside: `MPROC_BENCH_PROBE=map` (or `apply_async`) with
//!   `MPROC_BENCH_N=<rounds>` runs that many rounds of that case after one to warm up, and
//!   nothing else, then prints the allocations per chunk (`map`, 8 chunks per round) or per
//!   task in this process (the caller, the handler and the writer threads) and in the worker;
//!   `MPROC_BENCH_WORKERS=1` for one worker (the worker's count is exact then), and
//!   `MPROC_BENCH_THREADS=1` for thread workers (valgrind does not know `pidfd_open`). Run
//!   with n = 0 and n > 0 under `strace -c -f`, `perf stat` or `valgrind --tool=callgrind
//!   --separate-threads=yes` and take the difference: what one chunk or task costs.
//!
//! The slow tasks sleep rather than spin: the machine has 2 cores shared with other builds,
//! and 8 spinning workers on 2 cores could never reach `work / 8`; sleeping tasks measure
//! what the pool decides (who runs what, when), not how the kernel shares the cores. A 1 µs
//! task spins (a sleep that short lasts the timer slack, about 50 µs). Sleeps overrun, so the
//! work is not the nominal durations: each task measures its own run time and returns it,
//! and the ideal is computed from those measures.

use std::hint::black_box;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::Throughput;
use mproc_benches::{Ratio, Target};
use mproc_pool::Pool;

// Counts every allocation of the process (the worker processes are this program too).
#[global_allocator]
static ALLOCATOR: mproc_benches::sys::ProcessCountingAlloc = mproc_benches::sys::ProcessCountingAlloc;

/// How many allocations the calling process has made (run as a task: the worker's).
fn allocations(_: ()) -> u64 {
    mproc_benches::sys::process_allocations()
}

fn trivial(x: u64) -> u64 {
    x.wrapping_mul(3)
}

/// Works for `ns` nanoseconds (spinning below 100 µs, sleeping above) and returns how long
/// it took, measured here.
fn work(ns: u64) -> u64 {
    let start = Instant::now();
    let d = Duration::from_nanos(ns);
    if ns >= 100_000 {
        std::thread::sleep(d);
    } else {
        while start.elapsed() < d {
            std::hint::spin_loop();
        }
    }
    start.elapsed().as_nanos() as u64
}

const TASKS: u64 = 100_000;
const ITEMS: u64 = 1_000_000;
const MS: u64 = 1_000_000;

/// The chunks `map` cuts `items` into on `n_workers` workers (Python's default size), each
/// as `map` encodes it (the function and the items), and each chunk's values, encoded.
fn encoded_chunks(items: &[u64], n_workers: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let chunksize = items.len().div_ceil(n_workers * 4).max(1);
    let f = mproc_pool::process::FnRef::new(trivial as fn(u64) -> u64);
    items
        .chunks(chunksize)
        .map(|chunk| {
            let input = postcard::to_allocvec(&(f, chunk)).unwrap();
            let values: Vec<u64> = chunk.iter().map(|&x| trivial(x)).collect();
            (input, postcard::to_allocvec(&values).unwrap())
        })
        .collect()
}

/// The floor's peer (this program, run with `MPROC_BENCH_PEER=pool-floor`): reads chunks
/// (a 4-byte length, a 4-byte chunk number, the bytes) from stdin and answers each with that
/// chunk's encoded values (a 4-byte length, the bytes) on stdout, until end of file.
fn floor_peer() {
    let items: Vec<u64> = (0..ITEMS).collect();
    let chunks = encoded_chunks(&items, 2);
    let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
    let (rx, tx) = (stdin.as_fd(), stdout.as_fd());
    let mut buf = Vec::new();
    let mut header = [0u8; 8];
    while mproc_benches::read_exact(rx, &mut header) {
        let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
        let k = u32::from_le_bytes(header[4..].try_into().unwrap()) as usize;
        buf.resize(len, 0);
        assert!(mproc_benches::read_exact(rx, &mut buf));
        let values = &chunks[k].1;
        mproc_benches::write_all(tx, &(values.len() as u32).to_le_bytes());
        mproc_benches::write_all(tx, values);
    }
}

/// One floor peer: its process and our ends of its stdin and stdout.
struct FloorPeer {
    child: Child,
    to: OwnedFd,
    from: OwnedFd,
}

impl FloorPeer {
    fn start() -> FloorPeer {
        let flags = rustix::pipe::PipeFlags::CLOEXEC;
        let (peer_in, to) = rustix::pipe::pipe_with(flags).unwrap();
        let (from, peer_out) = rustix::pipe::pipe_with(flags).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .env("MPROC_BENCH_PEER", "pool-floor")
            .stdin(Stdio::from(peer_in))
            .stdout(Stdio::from(peer_out))
            .spawn()
            .unwrap();
        FloorPeer { child, to, from }
    }
}

impl Drop for FloorPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The floor of one `map`: every chunk's input to a peer (chunk `k` to peer `k % 2`) and its
/// values back, a writer and a reader thread per peer.
fn floor_round(peers: &[FloorPeer], chunks: &[(Vec<u8>, Vec<u8>)]) {
    std::thread::scope(|s| {
        for (p, peer) in peers.iter().enumerate() {
            let n = peers.len();
            let mine = move || chunks.iter().enumerate().skip(p).step_by(n);
            s.spawn(move || {
                for (k, (input, _)) in mine() {
                    let mut header = [0u8; 8];
                    header[..4].copy_from_slice(&(input.len() as u32).to_le_bytes());
                    header[4..].copy_from_slice(&(k as u32).to_le_bytes());
                    mproc_benches::write_all(peer.to.as_fd(), &header);
                    mproc_benches::write_all(peer.to.as_fd(), input);
                }
            });
            s.spawn(move || {
                let mut buf = Vec::new();
                for (_, (_, values)) in mine() {
                    let mut len = [0u8; 4];
                    assert!(mproc_benches::read_exact(peer.from.as_fd(), &mut len));
                    buf.resize(u32::from_le_bytes(len) as usize, 0);
                    assert!(mproc_benches::read_exact(peer.from.as_fd(), &mut buf));
                    assert_eq!(buf.len(), values.len());
                }
                black_box(&buf);
            });
        }
    });
}

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

/// A skewed workload: each task's nominal duration in ns, in submission order.
struct Workload {
    name: &'static str,
    tasks: Vec<u64>,
}

fn workloads(scale: u64) -> Vec<Workload> {
    let cheap = (5_000 / scale) as usize;
    let slow = (40 / scale) as usize;
    let mut cheap_then_slow = vec![0; cheap];
    cheap_then_slow.extend(std::iter::repeat_n(50 * MS / scale, slow));
    let mut slow_then_cheap = vec![50 * MS / scale; slow];
    slow_then_cheap.extend(std::iter::repeat_n(0, cheap));
    // 800 tasks, each 1 µs or 5 ms with even odds (a fixed LCG, the same every run).
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mix = (0..800 / scale)
        .map(|_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            if seed >> 63 == 0 { 1_000 } else { 5 * MS / scale }
        })
        .collect();
    vec![
        Workload { name: "cheap_then_slow", tasks: cheap_then_slow },
        Workload { name: "slow_then_cheap", tasks: slow_then_cheap },
        Workload { name: "random_mix", tasks: mix },
    ]
}

/// Runs `w` on `pool` once: (makespan, ideal makespan from the tasks' own measures).
fn run_skewed(pool: &Pool, w: &Workload, n_workers: usize) -> (Duration, Duration) {
    let start = Instant::now();
    let results: Vec<_> = w.tasks.iter().map(|&ns| pool.apply_async(work, ns)).collect();
    let took: Vec<u64> = results.into_iter().map(|r| r.get().unwrap()).collect();
    let makespan = start.elapsed();
    let total: u64 = took.iter().sum();
    let longest = took.iter().copied().max().unwrap_or(0);
    let ideal = Duration::from_nanos((total / n_workers as u64).max(longest));
    (makespan, ideal)
}

fn skewed(measuring: bool) -> Vec<Target> {
    let mut targets = Vec::new();
    // In test mode (`cargo test --all-targets`), each workload once, 10 times smaller.
    let (scale, rounds) = if measuring { (1, 3) } else { (10, 1) };
    for n_workers in [2, 8] {
        let pool = Pool::new(n_workers).expect("a pool");
        for w in workloads(scale) {
            let mut ratios: Vec<(f64, Duration, Duration)> = (0..rounds)
                .map(|_| {
                    // A warm pool, as the case: trivial tasks first, so batches are
                    // sized for them.
                    apply_async_all(&pool, 1_000);
                    let (makespan, ideal) = run_skewed(&pool, &w, n_workers);
                    (makespan.as_secs_f64() / ideal.as_secs_f64(), makespan, ideal)
                })
                .collect();
            ratios.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (median, makespan, ideal) = ratios[ratios.len() / 2];
            if measuring {
                println!(
                    "pool::skew/{}/{n_workers}w: makespan {:.1} ms, ideal {:.1} ms: {median:.3}x the ideal \
                     (median of {rounds}, range {:.3}-{:.3})",
                    w.name,
                    makespan.as_secs_f64() * 1e3,
                    ideal.as_secs_f64() * 1e3,
                    ratios[0].0,
                    ratios[rounds - 1].0,
                );
                targets.push(Target::at_most(
                    format!("pool::skew/{}/{n_workers}w", w.name),
                    median,
                    1.10,
                    "x the ideal makespan",
                ));
            }
        }
    }
    targets
}

/// `(remote, local)` rates of `f` (`n` per round), in paired rounds that alternate which
/// pool goes first: the medians.
fn paired_rates(rounds: usize, n: u64, remote: &Pool, local: &Pool, f: &dyn Fn(&Pool)) -> (f64, f64) {
    let rate = |pool: &Pool| {
        let t = Instant::now();
        f(pool);
        n as f64 / t.elapsed().as_secs_f64()
    };
    let (mut r, mut l): (Vec<f64>, Vec<f64>) = (0..rounds)
        .map(|round| {
            if round % 2 == 0 {
                let r = rate(remote);
                (r, rate(local))
            } else {
                let l = rate(local);
                (rate(remote), l)
            }
        })
        .unzip();
    r.sort_by(f64::total_cmp);
    l.sort_by(f64::total_cmp);
    (r[rounds / 2], l[rounds / 2])
}

/// 2 remote workers in network namespaces beside 2 local workers.
fn remote(measuring: bool) -> Vec<Target> {
    let hosts = match mproc_benches::netns::Hosts::new(2) {
        Ok(hosts) => hosts,
        Err(why) => {
            println!("pool::remote: skipped: cannot make network namespaces ({why})");
            return Vec::new();
        }
    };
    let remote = hosts.in_pool_ns(|| {
        Pool::builder()
            .processes(0)
            .listen((std::net::Ipv4Addr::UNSPECIFIED, 7000))
            .build()
            .expect("a listening pool")
    });
    let launcher = remote.launcher().expect("a launcher");
    let exe = std::env::current_exe().expect("this bench's path");
    let mut workers: Vec<std::process::Child> = (1..=2)
        .map(|h| {
            let mut command = launcher.clone().connect_to(format!("10.77.{h}.1:7000")).command("ip");
            command.args(["netns", "exec", &hosts.hosts[h - 1]]).arg(&exe).stdin(std::process::Stdio::null());
            command.spawn().expect("a remote worker starts")
        })
        .collect();
    remote.wait_for_workers(2, Duration::from_secs(60)).expect("2 remote workers join");
    let local = Pool::new(2).expect("a pool of 2 workers");
    // 20,000 remote tasks a round (0.7 s at 30,000 tasks/s): the rate, not the count, is the
    // figure.
    let (tasks, items, rounds) = if measuring { (TASKS / 5, ITEMS, 5) } else { (1_000, 10_000, 1) };
    let inputs: Vec<u64> = (0..items).collect();
    let (r_apply, l_apply) = paired_rates(rounds, tasks, &remote, &local, &|p| apply_async_all(p, tasks));
    let (r_map, l_map) = paired_rates(rounds, items, &remote, &local, &|p| map_all(p, &inputs));
    let mut targets = Vec::new();
    if measuring {
        // Per-task overhead: the pool's time per task with 2 workers, as a worker sees it.
        let us = |rate: f64| 2.0 * 1e6 / rate;
        println!(
            "pool::remote apply_async: 2 remote workers {r_apply:.0} tasks/s ({:.2} µs/task/worker), \
             2 local {l_apply:.0} tasks/s ({:.2} µs): {:.3}x local (median of {rounds} paired rounds of {tasks})",
            us(r_apply),
            us(l_apply),
            r_apply / l_apply
        );
        println!(
            "pool::remote map: 2 remote workers {r_map:.0} items/s ({:.4} µs/item/worker), \
             2 local {l_map:.0} items/s ({:.4} µs): {:.3}x local (median of {rounds} paired rounds of {items})",
            us(r_map),
            us(l_map),
            r_map / l_map
        );
        targets.push(Target::at_least("pool::remote_map/local", r_map / l_map, 0.5, "x local map"));
    }
    drop(remote);
    drop(local);
    for mut w in workers.drain(..) {
        let status = w.wait().expect("a remote worker ends");
        assert!(status.success(), "a remote worker ended with {status}");
    }
    drop(hosts);
    targets
}

/// `MPROC_BENCH_PROBE`: rounds of one case and nothing else, and the allocations they made.
fn probe(case: &str) {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<usize>().ok());
    let rounds = var("MPROC_BENCH_N").unwrap_or(10);
    let workers = var("MPROC_BENCH_WORKERS").unwrap_or(2);
    let builder = Pool::builder().processes(workers);
    let builder = if var("MPROC_BENCH_THREADS") == Some(1) { builder.threads() } else { builder };
    let pool = builder.build().expect("a pool");
    let items: Vec<u64> = (0..ITEMS).collect();
    let (run, per, unit): (&dyn Fn(), u64, &str) = match case {
        "map" => (&|| map_all(&pool, &items), 8, "chunk"),
        "apply_async" => (&|| apply_async_all(&pool, TASKS), TASKS, "task"),
        other => panic!("MPROC_BENCH_PROBE: no case {other:?} (map, apply_async)"),
    };
    run();
    let worker_before = pool.apply(allocations, ()).unwrap();
    let here_before = mproc_benches::sys::process_allocations();
    for _ in 0..rounds {
        run();
    }
    let here = mproc_benches::sys::process_allocations() - here_before;
    // The worker's count, less what the `apply` that reads it costs (measured as the
    // difference of two reads in a row).
    let worker_after = pool.apply(allocations, ()).unwrap();
    let read_cost = pool.apply(allocations, ()).unwrap() - worker_after;
    let worker = (worker_after - worker_before).saturating_sub(read_cost);
    let n = (rounds as u64 * per).max(1) as f64;
    println!(
        "pool probe {case}: {rounds} rounds on {workers} worker(s): allocations per {unit}: {:.2} in this \
         process, {:.2} in the worker{}",
        here as f64 / n,
        worker as f64 / n,
        if workers == 1 { "" } else { " that answered (workers share the tasks)" }
    );
}

fn main() {
    if std::env::var_os("MPROC_BENCH_PEER").is_some_and(|mode| mode == "pool-floor") {
        floor_peer();
        return;
    }
    mproc_pool::init();
    if let Some(case) = std::env::var_os("MPROC_BENCH_PROBE") {
        probe(&case.to_string_lossy());
        return;
    }
    mproc_benches::start_run();
    let measuring = mproc_benches::measuring();
    let pool = Pool::new(2).expect("a pool of 2 workers");
    let items: Vec<u64> = (0..ITEMS).collect();
    let mut c = mproc_benches::criterion()
        // Figures only (the targets come from the direct counts below). An iteration takes
        // 25-100 ms: flat sampling takes 10 samples of a few iterations, where linear
        // sampling needs 55 at least; 10,000 resamples only narrow the confidence intervals.
        .measurement_time(Duration::from_secs(2))
        .sample_size(10)
        .configure_from_args();
    let mut g = c.benchmark_group("pool");
    g.sampling_mode(criterion::SamplingMode::Flat);
    g.throughput(Throughput::Elements(TASKS));
    g.bench_function("apply_async_100k", |b| b.iter(|| apply_async_all(&pool, TASKS)));
    g.throughput(Throughput::Elements(ITEMS));
    g.bench_function("map_1m", |b| b.iter(|| map_all(&pool, &items)));
    g.finish();
    c.final_summary();
    let mut targets = Vec::new();
    if measuring {
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
        targets.push(Target::at_least("pool::apply_async", median, 500_000.0, " tasks/s"));
        let (median, best) = rate(&|| map_all(&pool, &items), ITEMS);
        println!("pool map: median {median:.0} items/s, best {best:.0} (5 rounds of {ITEMS})");
        targets.push(Target::at_least("pool::map", median, 50_000_000.0, " items/s"));
        // The floor: the bytes map moves, and nothing else, alternating with map itself.
        let chunks = encoded_chunks(&items, 2);
        let (bytes_in, bytes_out): (usize, usize) =
            chunks.iter().fold((0, 0), |(i, o), (input, values)| (i + input.len(), o + values.len()));
        let peers = [FloorPeer::start(), FloorPeer::start()];
        floor_round(&peers, &chunks); // the peers are up and have made their answers
        let (median, best) = rate(&|| floor_round(&peers, &chunks), ITEMS);
        println!(
            "pool map floor: median {median:.0} items/s, best {best:.0} ({bytes_in} bytes out and \
             {bytes_out} back through pipes, {} chunks, 2 peers; 5 rounds)",
            chunks.len()
        );
        mproc_benches::paired(
            "pool map 1M items vs moving its bytes through pipes",
            1,
            Ratio::Time,
            || floor_round(&peers, &chunks),
            || map_all(&pool, &items),
        );
    }
    drop(pool);
    targets.extend(skewed(measuring));
    targets.extend(remote(measuring));
    mproc_benches::report_targets(&targets);
}
