//! Large values (issue 14): typed sends of `Vec<u8>` and `Vec<f64>` beside `send_bytes` of
//! the same number of bytes, a 1 GiB value over a duplex connection beside a `memcpy` of it,
//! and a pool `apply` round trip of 64 MiB, all in one run.
//!
//! - `bigval::pipe`: one value to a peer process over a pipe, which receives it whole (a new
//!   `Vec` each time, as `recv` gives) and answers one byte: `bytes` (`send_bytes` /
//!   `recv_bytes`, the floor), `typed_u8`, `typed_f64`; 1 MiB, 64 MiB and 200 MiB. Target:
//!   typed at least 0.8x the throughput of bytes, in alternating rounds.
//! - `bigval::gib`: 1 GiB: `memcpy` into a buffer already faulted in, `memcpy_fresh` (into a
//!   new allocation, what any new value costs: `clone`), and `typed_duplex` (a typed send to a
//!   peer process on a socket, which receives it: out of line, a sealed memfd). Target: at most
//!   2x `memcpy_fresh`, in alternating rounds; the ratio to `memcpy` is printed beside it.
//! - `bigval::pool`: `apply` of a function returning its 64 MiB argument, on 2 workers, beside
//!   the same bytes there and back through a pipe (`send_bytes` both ways, the floor of moving
//!   them). Target: at most 2x the floor.
//!
//! The peer is this binary again, with `MPROC_BENCH_PEER` set; it talks on its stdin (and
//! stdout, for pipes).
//!
//! `MPROC_BENCH_PROBE=bytes|typed_u8|typed_f64` (with `MPROC_BENCH_MIB`, `MPROC_BENCH_N`) runs
//! one pipe case alone, for `strace -c -f` or `perf` from outside, and prints what one value
//! cost both processes: wall and CPU time, reads, writes and page faults.
//! `MPROC_BENCH_PROBE=pipe_paired MPROC_BENCH_MIB=n` runs only the paired rounds of one size
//! (with `--bench`).

use std::hint::black_box;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::{BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput, measurement::WallTime};
use mproc_benches::{Ratio, Target};
use mproc_ipc::{Connection, Error, Receiver, Sender};
use mproc_pool::Pool;

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;

fn main() {
    if let Ok(mode) = std::env::var("MPROC_BENCH_PEER") {
        return peer(&mode);
    }
    if let Ok(case) = std::env::var("MPROC_BENCH_PROBE") {
        let mib = std::env::var("MPROC_BENCH_MIB").map_or(1, |s| s.parse().unwrap());
        if case == "pipe_paired" {
            // Only the paired rounds of one size (run with `--bench`).
            return mproc_benches::report_targets(&pipe_sizes(None, mib));
        }
        let n = std::env::var("MPROC_BENCH_N").map_or(100, |s| s.parse().unwrap());
        return probe(&case, mib, n);
    }
    mproc_pool::process::init();
    mproc_benches::start_run();
    let mut c = mproc_benches::criterion()
        .measurement_time(Duration::from_secs(2))
        .sample_size(10)
        .configure_from_args();
    let mut targets = Vec::new();
    for mib in [1, 64, 200] {
        targets.extend(pipe_sizes(Some(&mut c), mib));
    }
    targets.extend(gib(&mut c));
    targets.extend(pool(&mut c));
    c.final_summary();
    mproc_benches::report_targets(&targets);
}

fn flat<'a>(c: &'a mut Criterion, name: &str, bytes: usize) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Bytes(bytes as u64));
    g
}

/// Typed `Vec<u8>` and `Vec<f64>` against `send_bytes` of as many bytes, over a pipe: criterion
/// figures (without `c`, none), then the targets from alternating rounds (the ratio of the
/// same run's floor).
fn pipe_sizes(c: Option<&mut Criterion>, mib: usize) -> Vec<Target> {
    let n = mib * MIB;
    let group = format!("bigval::pipe_{mib}mib");
    let bytes: Vec<u8> = (0..n).map(|i| i as u8).collect();
    let floats: Vec<f64> = (0..n / 8).map(|i| i as f64).collect();
    let (raw, raw_ack, _raw_peer) = pipe_peer("bytes");
    let raw = Sender::<()>::from(raw);
    let (u8s, u8_ack, _u8_peer) = pipe_peer("typed-u8");
    let u8s = Sender::<Vec<u8>>::from(u8s);
    let (f64s, f64_ack, _f64_peer) = pipe_peer("typed-f64");
    let f64s = Sender::<Vec<f64>>::from(f64s);
    let mut send_bytes = || {
        raw.send_bytes(black_box(&bytes)).unwrap();
        wait_ack(&raw_ack);
    };
    let mut send_u8 = || {
        u8s.send(black_box(&bytes)).unwrap();
        wait_ack(&u8_ack);
    };
    let mut send_f64 = || {
        f64s.send(black_box(&floats)).unwrap();
        wait_ack(&f64_ack);
    };
    if let Some(c) = c {
        let mut g = flat(c, &group, n);
        g.bench_function("bytes", |b| b.iter(&mut send_bytes));
        g.bench_function("typed_u8", |b| b.iter(&mut send_u8));
        g.bench_function("typed_f64", |b| b.iter(&mut send_f64));
        g.finish();
    }
    let (batch, rounds) = if mib == 1 {
        (20, 31)
    } else if mib <= 64 {
        (1, 15)
    } else {
        (1, 9)
    };
    let mut targets = Vec::new();
    for (id, ours) in [("typed_u8", &mut send_u8 as &mut dyn FnMut()), ("typed_f64", &mut send_f64)] {
        let name = format!("{group} {id} vs bytes (throughput ratio)");
        if let Some(ratio) =
            mproc_benches::paired_rounds(&name, batch, rounds, Ratio::Throughput, &mut send_bytes, ours)
        {
            targets.push(Target::at_least(format!("{group}/{id}"), ratio, 0.8, "x the throughput of bytes"));
        }
    }
    targets
}

/// `MPROC_BENCH_PROBE=bytes|typed_u8|typed_f64` (`MPROC_BENCH_MIB`, `MPROC_BENCH_N`): `n`
/// pipe sends of one case alone, for `strace -c -f` or `perf` from outside, then what one
/// value cost both processes: wall and CPU time, reads, writes and page faults (after a
/// tenth as many uncounted sends).
fn probe(case: &str, mib: usize, n: usize) {
    let len = mib * MIB;
    let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let floats: Vec<f64> = (0..len / 8).map(|i| i as f64).collect();
    let mode = match case {
        "bytes" => "bytes",
        "typed_u8" => "typed-u8",
        "typed_f64" => "typed-f64",
        other => panic!("MPROC_BENCH_PROBE: no case {other:?} (bytes, typed_u8, typed_f64)"),
    };
    let (tx, ack, peer) = pipe_peer(mode);
    let send: Box<dyn Fn()> = match case {
        "bytes" => {
            let tx = Sender::<()>::from(tx);
            Box::new(move || tx.send_bytes(black_box(&bytes)).unwrap())
        }
        "typed_u8" => {
            let tx = Sender::<Vec<u8>>::from(tx);
            Box::new(move || tx.send(black_box(&bytes)).unwrap())
        }
        _ => {
            let tx = Sender::<Vec<f64>>::from(tx);
            Box::new(move || tx.send(black_box(&floats)).unwrap())
        }
    };
    let one = || {
        send();
        wait_ack(&ack);
    };
    (0..n / 10 + 1).for_each(|_| one());
    let (me, them) = (std::process::id(), peer.0.id());
    let look = || {
        use mproc_benches::{ProcCounts, process_cpu_time};
        (ProcCounts::of(me), ProcCounts::of(them), process_cpu_time(me), process_cpu_time(them))
    };
    let start = std::time::Instant::now();
    let (a0, b0, ca0, cb0) = look();
    (0..n).for_each(|_| one());
    let (a1, b1, ca1, cb1) = look();
    let wall = start.elapsed().as_secs_f64() / n as f64;
    let n = n as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / n;
    println!(
        "probe {case} {mib} MiB, {n} values: {:.3} ms wall, {:.3} GB/s; sender: {:.3} ms CPU {:.2} reads {:.2} writes \
         {:.1} faults; receiver: {:.3} ms CPU {:.2} reads {:.2} writes {:.1} faults",
        wall * 1e3,
        len as f64 / wall / 1e9,
        ms(ca1 - ca0),
        (a1.reads - a0.reads) / n,
        (a1.writes - a0.writes) / n,
        (a1.minflt - a0.minflt) / n,
        ms(cb1 - cb0),
        (b1.reads - b0.reads) / n,
        (b1.writes - b0.writes) / n,
        (b1.minflt - b0.minflt) / n,
    );
}

fn gib(c: &mut Criterion) -> Vec<Target> {
    let group = "bigval::gib";
    // A smoke run (`cargo test`, each bench once) needs no 5 GiB of memory.
    let size = if mproc_benches::measuring() { GIB } else { 64 * MIB };
    let value: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut dst = vec![1u8; size]; // written once: faulted in
    let (sock, _peer) = socket_peer("duplex-u8");
    let conn = Connection::<Vec<u8>, u8>::from(sock);
    let mut memcpy = || black_box(&mut dst).copy_from_slice(black_box(&value));
    let mut memcpy_fresh = || drop(black_box(black_box(&value).clone()));
    let mut typed_duplex = || {
        conn.send(black_box(&value)).unwrap();
        assert_eq!(conn.recv().unwrap(), 1);
    };
    let mut g = flat(c, group, size);
    g.bench_function("memcpy", |b| b.iter(&mut memcpy));
    g.bench_function("memcpy_fresh", |b| b.iter(&mut memcpy_fresh));
    g.bench_function("typed_duplex", |b| b.iter(&mut typed_duplex));
    g.finish();
    let mut targets = Vec::new();
    let name = format!("{group} typed_duplex vs memcpy_fresh (time ratio)");
    if let Some(ratio) =
        mproc_benches::paired_rounds(&name, 1, 5, Ratio::Time, &mut memcpy_fresh, &mut typed_duplex)
    {
        targets.push(Target::at_most(
            format!("{group}/typed_duplex"),
            ratio,
            2.0,
            "x the time of memcpy_fresh",
        ));
    }
    // Beside it, for the record: against a copy into memory already faulted in, from
    // criterion's medians of this run (paired rounds of it cost six more 1 GiB sends, a
    // minute on a loaded machine, for a figure with no target).
    if let (Some(ours), Some(copy)) =
        (mproc_benches::median_ns(group, "typed_duplex"), mproc_benches::median_ns(group, "memcpy"))
    {
        println!(
            "{group} typed_duplex vs memcpy into a faulted-in buffer: {:.3}x its time ({:.0} ms vs {:.0} ms, \
             criterion medians of this run)",
            ours / copy,
            ours / 1e6,
            copy / 1e6
        );
    }
    targets
}

fn echo(v: Vec<u8>) -> Vec<u8> {
    v
}

fn pool(c: &mut Criterion) -> Vec<Target> {
    let group = "bigval::pool";
    let n = 64 * MIB;
    let value: Vec<u8> = (0..n).map(|i| i as u8).collect();
    let (tx, rx, _peer) = pipe_peer("bytes-echo");
    let (tx, rx) = (Sender::<()>::from(tx), Receiver::<()>::from(rx));
    let pool = Pool::new(2).expect("a pool of 2 workers");
    let mut there_and_back = || {
        tx.send_bytes(black_box(&value)).unwrap();
        black_box(rx.recv_bytes().unwrap());
    };
    let mut g = flat(c, group, 2 * n);
    g.bench_function("bytes_there_and_back", |b| b.iter(&mut there_and_back));
    g.bench_function("apply_64mib", |b| {
        b.iter_batched(
            || value.clone(),
            |v| assert_eq!(pool.apply(echo, v).unwrap().len(), n),
            BatchSize::PerIteration,
        )
    });
    g.finish();
    // In the paired rounds the argument's clone is part of `apply`'s time: `apply` takes it
    // by value.
    let mut apply = || assert_eq!(pool.apply(echo, black_box(value.clone())).unwrap().len(), n);
    let name =
        format!("{group} apply_64mib (with the argument's clone) vs bytes there and back (time ratio)");
    let mut targets = Vec::new();
    if let Some(ratio) =
        mproc_benches::paired_rounds(&name, 1, 9, Ratio::Time, &mut there_and_back, &mut apply)
    {
        targets.push(Target::at_most(
            format!("{group}/apply_64mib"),
            ratio,
            2.0,
            "x the time of bytes there and back",
        ));
    }
    targets
}

// ---- the peer process -------------------------------------------------------------------

fn peer(mode: &str) {
    let stdin = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
    let stdout = std::io::stdout().as_fd().try_clone_to_owned().unwrap();
    let ack = || mproc_benches::write_all(stdout.as_fd(), &[1]);
    match mode {
        "bytes" => {
            let rx = Receiver::<()>::from(stdin);
            while until_closed(rx.recv_bytes()).is_some() {
                ack();
            }
        }
        "bytes-echo" => {
            let (rx, tx) = (Receiver::<()>::from(stdin), Sender::<()>::from(stdout));
            while let Some(bytes) = until_closed(rx.recv_bytes()) {
                tx.send_bytes(&bytes).unwrap();
            }
        }
        "typed-u8" => {
            let rx = Receiver::<Vec<u8>>::from(stdin);
            while until_closed(rx.recv()).is_some() {
                ack();
            }
        }
        "typed-f64" => {
            let rx = Receiver::<Vec<f64>>::from(stdin);
            while until_closed(rx.recv()).is_some() {
                ack();
            }
        }
        "duplex-u8" => {
            let mut conn = Connection::<u8, Vec<u8>>::from(stdin);
            conn.set_max_message_size(2 * GIB); // 1 GiB of bytes and its length
            while until_closed(conn.recv()).is_some() {
                conn.send(&1).unwrap();
            }
        }
        other => panic!("unknown peer mode {other}"),
    }
}

/// The value received, dropped only after the caller acknowledges it; `None` once closed.
fn until_closed<T>(got: mproc_ipc::Result<T>) -> Option<T> {
    match got {
        Ok(v) => Some(black_box(v)),
        Err(Error::Closed) => None,
        Err(e) => panic!("peer: {e}"),
    }
}

// ---- the measuring side -----------------------------------------------------------------

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_peer(mode: &str, stdin: OwnedFd, stdout: Option<OwnedFd>) -> Peer {
    let child = Command::new(std::env::current_exe().unwrap())
        .env("MPROC_BENCH_PEER", mode)
        .stdin(Stdio::from(stdin))
        .stdout(stdout.map_or_else(Stdio::null, Stdio::from))
        .spawn()
        .unwrap();
    Peer(child)
}

/// Pipes to and from a peer: (our write end, our read end, peer).
fn pipe_peer(mode: &str) -> (OwnedFd, OwnedFd, Peer) {
    let flags = rustix::pipe::PipeFlags::CLOEXEC;
    let (peer_in, to_peer) = rustix::pipe::pipe_with(flags).unwrap();
    let (from_peer, peer_out) = rustix::pipe::pipe_with(flags).unwrap();
    let peer = spawn_peer(mode, peer_in, Some(peer_out));
    (to_peer, from_peer, peer)
}

/// A socket pair with a peer: (our end, peer).
fn socket_peer(mode: &str) -> (OwnedFd, Peer) {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
    let (ours, theirs) =
        socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None).unwrap();
    (ours, spawn_peer(mode, theirs, None))
}

fn wait_ack(ack: &OwnedFd) {
    assert!(mproc_benches::read_exact(ack.as_fd(), &mut [0]), "the peer is gone");
}
