//! mproc-ipc between two processes, beside the raw `read`/`write` floor measured in the same run.
//!
//! - `ipc::rtt_small`: round trip of an 8-byte message: raw ping-pong (the floor) vs.
//!   `send_bytes`/`recv_bytes` vs. typed `send`/`recv` of a small struct; on pipes and on a
//!   socket pair.
//! - `ipc::echo_1mib`: a 1 MiB message there and back (the peer receives it whole, then sends
//!   it back): raw vs. ours.
//!
//! The peer is this same binary started again with `MPROC_BENCH_PEER` set; it talks on its
//! stdin (and stdout, for pipes).

use std::hint::black_box;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::{Criterion, Throughput};
use mproc_benches::{Ratio, report};
use mproc_ipc::{Connection, Error, Receiver, Sender};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
struct Small {
    id: u32,
    value: i16,
    ok: bool,
}

#[global_allocator]
static ALLOCATOR: mproc_benches::sys::CountingAlloc = mproc_benches::sys::CountingAlloc;

fn allocations() -> u64 {
    mproc_benches::sys::allocations()
}

const SMALL: Small = Small { id: 7, value: -3, ok: true };
const MIB: usize = 1 << 20;

fn main() {
    if let Ok(mode) = std::env::var("MPROC_BENCH_PEER") {
        return peer(&mode);
    }
    if let Ok(case) = std::env::var("MPROC_BENCH_PROBE") {
        let n = std::env::var("MPROC_BENCH_N").map_or(10_000, |s| s.parse().unwrap());
        return probe(&case, n);
    }
    mproc_benches::start_run();
    let mut c = mproc_benches::criterion()
        // Short: these groups print figures only; the targets come from the paired rounds.
        // 10,000 resamples (of 100,000): the medians read back are point estimates, which
        // the resamples do not change; they only cost analysis time.
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    rtt_small(&mut c, "ipc::rtt_small");
    // The same with both processes on one CPU: no cross-CPU wake-ups, so the round trip is
    // two context switches and what we add to them shows clearly.
    let all = rustix::thread::sched_getaffinity(None).unwrap();
    let mut one = rustix::thread::CpuSet::new();
    one.set(rustix::thread::sched_getcpu());
    rustix::thread::sched_setaffinity(None, &one).unwrap();
    rtt_small(&mut c, "ipc::rtt_small_one_cpu");
    rustix::thread::sched_setaffinity(None, &all).unwrap();
    echo_1mib(&mut c);
    c.final_summary();
    for group in ["ipc::rtt_small", "ipc::rtt_small_one_cpu"] {
        report(group, "raw_pipe", &["bytes_pipe", "typed_pipe"], Ratio::Time);
        report(group, "raw_socket", &["bytes_duplex", "typed_duplex"], Ratio::Time);
    }
    report("ipc::echo_1mib", "raw_pipe", &["bytes_pipe"], Ratio::Throughput);
    report("ipc::echo_1mib", "raw_socket", &["bytes_duplex"], Ratio::Throughput);
    paired_runs();
}

/// The same comparisons, floor and ours alternating in one loop (see `mproc_benches::paired`),
/// with every process on one CPU: across CPUs the scheduler's placement of each peer (woken
/// on the same CPU or the other) changes a round trip tenfold and swamps what we measure.
fn paired_runs() {
    println!();
    let all = rustix::thread::sched_getaffinity(None).unwrap();
    let mut one = rustix::thread::CpuSet::new();
    one.set(rustix::thread::sched_getcpu());
    rustix::thread::sched_setaffinity(None, &one).unwrap();
    paired_on_one_cpu();
    rustix::thread::sched_setaffinity(None, &all).unwrap();
}

/// A paired run on the wall clock, then on both processes' CPU time (see
/// `mproc_benches::paired_cpu`): the CPU-time ratio, which other processes on the machine do
/// not enter.
fn both(
    name: &str,
    batch: usize,
    what: Ratio,
    (floor_peer, floor): (u32, &mut dyn FnMut()),
    (ours_peer, ours): (u32, &mut dyn FnMut()),
) -> Option<f64> {
    mproc_benches::paired(name, batch, what, &mut *floor, &mut *ours);
    mproc_benches::paired_cpu(name, batch, what, (floor_peer, floor), (ours_peer, ours))
}

fn paired_on_one_cpu() {
    use mproc_benches::{Target, per_message};
    let mut targets = Vec::new();
    let mut target =
        |name: &str, ratio: Option<f64>, make: fn(String, f64, f64, &'static str) -> Target, bound| {
            if let Some(r) = ratio {
                // The ratios of both processes' CPU time (`both` returns `paired_cpu`'s).
                let unit = if bound < 1.0 {
                    "x the floor's throughput per CPU second"
                } else {
                    "x the floor's CPU time"
                };
                targets.push(make(name.to_owned(), r, bound, unit));
            }
        };
    let (raw_tx, raw_rx, raw_peer) = pipe_peer("raw-pipe", 8);
    let (tx, rx, typed_peer) = pipe_peer("typed-pipe", 8);
    let (tx, rx) = (Sender::<Small>::from(tx), Receiver::<Small>::from(rx));
    let (btx, brx, bytes_peer) = pipe_peer("bytes-pipe", 8);
    let (btx, brx) = (Sender::<()>::from(btx), Receiver::<()>::from(brx));
    let mut small = [1u8; 8];
    let mut buf = Vec::with_capacity(8);
    let mut raw = || raw_round_trip(raw_tx.as_fd(), raw_rx.as_fd(), black_box(&mut small));
    let mut typed = || {
        tx.send(black_box(&SMALL)).unwrap();
        black_box(rx.recv().unwrap());
    };
    let r = both(
        "ipc rtt 8 B, one CPU: typed vs raw pipe",
        2000,
        Ratio::Time,
        (raw_peer.pid(), &mut raw),
        (typed_peer.pid(), &mut typed),
    );
    target("ipc::rtt_8b/typed_pipe", r, Target::at_most, 1.15);
    let mut bytes = || {
        btx.send_bytes(black_box(&[1u8; 8])).unwrap();
        brx.recv_bytes_into(&mut buf).unwrap();
    };
    both(
        "ipc rtt 8 B, one CPU: bytes vs raw pipe",
        2000,
        Ratio::Time,
        (raw_peer.pid(), &mut raw),
        (bytes_peer.pid(), &mut bytes),
    );
    per_message("rtt 8 B raw pipe (floor)", 10_000, raw_peer.pid(), allocations, &mut raw);
    per_message("rtt 8 B typed pipe", 10_000, typed_peer.pid(), allocations, &mut typed);
    per_message("rtt 8 B bytes pipe", 10_000, bytes_peer.pid(), allocations, &mut bytes);
    let (sock, raw_sock) = socket_peer("raw-socket", 8);
    let (conn, typed_sock) = socket_peer("typed-socket", 8);
    let conn = Connection::<Small>::from(conn);
    let mut raw = || raw_round_trip(sock.as_fd(), sock.as_fd(), black_box(&mut small));
    let mut typed = || {
        conn.send(black_box(&SMALL)).unwrap();
        black_box(conn.recv().unwrap());
    };
    let r = both(
        "ipc rtt 8 B, one CPU: typed duplex vs raw socket",
        2000,
        Ratio::Time,
        (raw_sock.pid(), &mut raw),
        (typed_sock.pid(), &mut typed),
    );
    target("ipc::rtt_8b/typed_duplex", r, Target::at_most, 1.15);
    per_message("rtt 8 B raw socket (floor)", 10_000, raw_sock.pid(), allocations, &mut raw);
    per_message("rtt 8 B typed duplex", 10_000, typed_sock.pid(), allocations, &mut typed);
    let data: Vec<u8> = (0..MIB).map(|i| i as u8).collect();
    let (raw_tx, raw_rx, raw_big) = pipe_peer("raw-pipe", MIB);
    let (btx, brx, bytes_big) = pipe_peer("bytes-pipe", MIB);
    let (btx, brx) = (Sender::<()>::from(btx), Receiver::<()>::from(brx));
    let mut big = data.clone();
    let mut buf = Vec::new();
    let mut raw = || raw_round_trip(raw_tx.as_fd(), raw_rx.as_fd(), &mut big);
    let mut ours = || {
        btx.send_bytes(&data).unwrap();
        brx.recv_bytes_into(&mut buf).unwrap();
    };
    let r = both(
        "ipc echo 1 MiB, one CPU: bytes vs raw pipe",
        20,
        Ratio::Throughput,
        (raw_big.pid(), &mut raw),
        (bytes_big.pid(), &mut ours),
    );
    target("ipc::echo_1mib/pipe", r, Target::at_least, 0.85);
    per_message("echo 1 MiB raw pipe (floor)", 200, raw_big.pid(), allocations, &mut raw);
    per_message("echo 1 MiB bytes pipe", 200, bytes_big.pid(), allocations, &mut ours);
    let (sock, raw_sock_big) = socket_peer("raw-socket", MIB);
    let (conn, bytes_sock_big) = socket_peer("bytes-socket", MIB);
    let conn = Connection::<()>::from(conn);
    let mut big = data.clone();
    let mut raw = || raw_round_trip(sock.as_fd(), sock.as_fd(), &mut big);
    let mut ours = || {
        conn.send_bytes(&data).unwrap();
        conn.recv_bytes_into(&mut buf).unwrap();
    };
    let r = both(
        "ipc echo 1 MiB, one CPU: duplex vs raw socket",
        20,
        Ratio::Throughput,
        (raw_sock_big.pid(), &mut raw),
        (bytes_sock_big.pid(), &mut ours),
    );
    target("ipc::echo_1mib/duplex", r, Target::at_least, 0.85);
    per_message("echo 1 MiB raw socket (floor)", 200, raw_sock_big.pid(), allocations, &mut raw);
    per_message("echo 1 MiB bytes duplex", 200, bytes_sock_big.pid(), allocations, &mut ours);
    mproc_benches::report_targets(&targets);
}

/// Runs `n` messages of one case and nothing else, for counting what a message costs from
/// outside (`strace -c -f`, with `n = 0` for the set-up alone).
fn probe(case: &str, n: usize) {
    let data: Vec<u8> = (0..MIB).map(|i| i as u8).collect();
    let mut small = [1u8; 8];
    let mut big = data.clone();
    let mut buf = Vec::new();
    match case {
        "raw-pipe" => {
            let (tx, rx, _p) = pipe_peer("raw-pipe", 8);
            (0..n).for_each(|_| raw_round_trip(tx.as_fd(), rx.as_fd(), &mut small));
        }
        "bytes-pipe" => {
            let (tx, rx, _p) = pipe_peer("bytes-pipe", 8);
            let (tx, rx) = (Sender::<()>::from(tx), Receiver::<()>::from(rx));
            (0..n).for_each(|_| {
                tx.send_bytes(&small).unwrap();
                rx.recv_bytes_into(&mut buf).unwrap();
            });
        }
        "typed-pipe" => {
            let (tx, rx, _p) = pipe_peer("typed-pipe", 8);
            let (tx, rx) = (Sender::<Small>::from(tx), Receiver::<Small>::from(rx));
            (0..n).for_each(|_| {
                tx.send(&SMALL).unwrap();
                black_box(rx.recv().unwrap());
            });
        }
        "raw-socket" => {
            let (sock, _p) = socket_peer("raw-socket", 8);
            (0..n).for_each(|_| raw_round_trip(sock.as_fd(), sock.as_fd(), &mut small));
        }
        "typed-socket" => {
            let (sock, _p) = socket_peer("typed-socket", 8);
            let conn = Connection::<Small>::from(sock);
            (0..n).for_each(|_| {
                conn.send(&SMALL).unwrap();
                black_box(conn.recv().unwrap());
            });
        }
        "raw-pipe-1m" => {
            let (tx, rx, _p) = pipe_peer("raw-pipe", MIB);
            (0..n).for_each(|_| raw_round_trip(tx.as_fd(), rx.as_fd(), &mut big));
        }
        "bytes-pipe-1m" => {
            let (tx, rx, _p) = pipe_peer("bytes-pipe", MIB);
            let (tx, rx) = (Sender::<()>::from(tx), Receiver::<()>::from(rx));
            (0..n).for_each(|_| {
                tx.send_bytes(&data).unwrap();
                rx.recv_bytes_into(&mut buf).unwrap();
            });
        }
        "raw-socket-1m" => {
            let (sock, _p) = socket_peer("raw-socket", MIB);
            (0..n).for_each(|_| raw_round_trip(sock.as_fd(), sock.as_fd(), &mut big));
        }
        "bytes-socket-1m" => {
            let (sock, _p) = socket_peer("bytes-socket", MIB);
            let conn = Connection::<()>::from(sock);
            (0..n).for_each(|_| {
                conn.send_bytes(&data).unwrap();
                conn.recv_bytes_into(&mut buf).unwrap();
            });
        }
        other => panic!("unknown probe case {other}"),
    }
}

// ---- the peer process -------------------------------------------------------------------

fn peer(mode: &str) {
    let stdin = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
    let stdout = std::io::stdout().as_fd().try_clone_to_owned().unwrap();
    let size: usize = std::env::var("MPROC_BENCH_SIZE").map_or(8, |s| s.parse().unwrap());
    match mode {
        "raw-pipe" => raw_echo(stdin.as_fd(), stdout.as_fd(), size),
        "raw-socket" => raw_echo(stdin.as_fd(), stdin.as_fd(), size),
        "bytes-pipe" => bytes_echo(&Receiver::<()>::from(stdin), &Sender::<()>::from(stdout)),
        "bytes-socket" => {
            let c = Connection::<()>::from(stdin);
            bytes_echo(&c, &c)
        }
        "typed-pipe" => {
            let (rx, tx) = (Receiver::<Small>::from(stdin), Sender::<Small>::from(stdout));
            while let Ok(v) = rx.recv() {
                tx.send(&v).unwrap();
            }
        }
        "typed-socket" => {
            let c = Connection::<Small>::from(stdin);
            while let Ok(v) = c.recv() {
                c.send(&v).unwrap();
            }
        }
        other => panic!("unknown peer mode {other}"),
    }
}

/// Reads `size` bytes whole, writes them back, until end of file.
fn raw_echo(rx: BorrowedFd<'_>, tx: BorrowedFd<'_>, size: usize) {
    let mut buf = vec![0u8; size];
    while mproc_benches::read_exact(rx, &mut buf) {
        mproc_benches::write_all(tx, &buf);
    }
}

/// Echoes frames with `recv_bytes_into` / `send_bytes` until the other side closes.
fn bytes_echo(rx: &impl RecvBytes, tx: &impl SendBytes) {
    let mut buf = Vec::new();
    loop {
        match rx.recv_into(&mut buf) {
            Ok(_) => tx.send(&buf).unwrap(),
            Err(Error::Closed) => return,
            Err(e) => panic!("peer: {e}"),
        }
    }
}

trait RecvBytes {
    fn recv_into(&self, buf: &mut Vec<u8>) -> mproc_ipc::Result<usize>;
}
trait SendBytes {
    fn send(&self, bytes: &[u8]) -> mproc_ipc::Result<()>;
}
impl<T> RecvBytes for Receiver<T> {
    fn recv_into(&self, buf: &mut Vec<u8>) -> mproc_ipc::Result<usize> {
        self.recv_bytes_into(buf)
    }
}
impl<T> SendBytes for Sender<T> {
    fn send(&self, bytes: &[u8]) -> mproc_ipc::Result<()> {
        self.send_bytes(bytes)
    }
}
impl<S, R> RecvBytes for Connection<S, R> {
    fn recv_into(&self, buf: &mut Vec<u8>) -> mproc_ipc::Result<usize> {
        self.recv_bytes_into(buf)
    }
}
impl<S, R> SendBytes for Connection<S, R> {
    fn send(&self, bytes: &[u8]) -> mproc_ipc::Result<()> {
        self.send_bytes(bytes)
    }
}

// ---- the measuring side -----------------------------------------------------------------

/// A peer process and our ends of its stdin/stdout (pipes) or its socket (stdin).
struct Peer {
    child: Child,
}

impl Peer {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Our ends may still be open (locals drop in reverse order): end the peer outright.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_peer(mode: &str, size: usize, stdin: OwnedFd, stdout: Option<OwnedFd>) -> Peer {
    let child = Command::new(std::env::current_exe().unwrap())
        .env("MPROC_BENCH_PEER", mode)
        .env("MPROC_BENCH_SIZE", size.to_string())
        .stdin(Stdio::from(stdin))
        .stdout(stdout.map_or_else(Stdio::null, Stdio::from))
        .spawn()
        .unwrap();
    Peer { child }
}

/// Pipes to and from a peer: (our write end, our read end, peer).
fn pipe_peer(mode: &str, size: usize) -> (OwnedFd, OwnedFd, Peer) {
    let flags = rustix::pipe::PipeFlags::CLOEXEC;
    let (peer_in, to_peer) = rustix::pipe::pipe_with(flags).unwrap();
    let (from_peer, peer_out) = rustix::pipe::pipe_with(flags).unwrap();
    let peer = spawn_peer(mode, size, peer_in, Some(peer_out));
    (to_peer, from_peer, peer)
}

/// A socket pair with a peer: (our end, peer).
fn socket_peer(mode: &str, size: usize) -> (OwnedFd, Peer) {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
    let (ours, theirs) =
        socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None).unwrap();
    let peer = spawn_peer(mode, size, theirs, None);
    (ours, peer)
}

fn raw_round_trip(tx: BorrowedFd<'_>, rx: BorrowedFd<'_>, buf: &mut [u8]) {
    mproc_benches::write_all(tx, buf);
    assert!(mproc_benches::read_exact(rx, buf));
}

fn rtt_small(c: &mut Criterion, group: &str) {
    let mut g = c.benchmark_group(group);
    {
        let (tx, rx, _peer) = pipe_peer("raw-pipe", 8);
        let mut buf = [1u8; 8];
        g.bench_function("raw_pipe", |b| {
            b.iter(|| raw_round_trip(tx.as_fd(), rx.as_fd(), black_box(&mut buf)))
        });
    }
    {
        let (tx, rx, _peer) = pipe_peer("bytes-pipe", 8);
        let (tx, rx) = (Sender::<()>::from(tx), Receiver::<()>::from(rx));
        let mut buf = Vec::with_capacity(8);
        g.bench_function("bytes_pipe", |b| {
            b.iter(|| {
                tx.send_bytes(black_box(&[1u8; 8])).unwrap();
                rx.recv_bytes_into(&mut buf).unwrap()
            })
        });
    }
    {
        let (tx, rx, _peer) = pipe_peer("typed-pipe", 8);
        let (tx, rx) = (Sender::<Small>::from(tx), Receiver::<Small>::from(rx));
        g.bench_function("typed_pipe", |b| {
            b.iter(|| {
                tx.send(black_box(&SMALL)).unwrap();
                rx.recv().unwrap()
            })
        });
    }
    {
        let (sock, _peer) = socket_peer("raw-socket", 8);
        let mut buf = [1u8; 8];
        g.bench_function("raw_socket", |b| {
            b.iter(|| raw_round_trip(sock.as_fd(), sock.as_fd(), black_box(&mut buf)))
        });
    }
    {
        let (sock, _peer) = socket_peer("bytes-socket", 8);
        let conn = Connection::<()>::from(sock);
        let mut buf = Vec::with_capacity(8);
        g.bench_function("bytes_duplex", |b| {
            b.iter(|| {
                conn.send_bytes(black_box(&[1u8; 8])).unwrap();
                conn.recv_bytes_into(&mut buf).unwrap()
            })
        });
    }
    {
        let (sock, _peer) = socket_peer("typed-socket", 8);
        let conn = Connection::<Small>::from(sock);
        g.bench_function("typed_duplex", |b| {
            b.iter(|| {
                conn.send(black_box(&SMALL)).unwrap();
                conn.recv().unwrap()
            })
        });
    }
    g.finish();
}

fn echo_1mib(c: &mut Criterion) {
    let mut g = c.benchmark_group("ipc::echo_1mib");
    g.throughput(Throughput::Bytes(2 * MIB as u64));
    let data: Vec<u8> = (0..MIB).map(|i| i as u8).collect();
    {
        let (tx, rx, _peer) = pipe_peer("raw-pipe", MIB);
        let mut buf = data.clone();
        g.bench_function("raw_pipe", |b| b.iter(|| raw_round_trip(tx.as_fd(), rx.as_fd(), &mut buf)));
    }
    {
        let (tx, rx, _peer) = pipe_peer("bytes-pipe", MIB);
        let (tx, rx) = (Sender::<()>::from(tx), Receiver::<()>::from(rx));
        let mut buf = Vec::new();
        g.bench_function("bytes_pipe", |b| {
            b.iter(|| {
                tx.send_bytes(&data).unwrap();
                rx.recv_bytes_into(&mut buf).unwrap()
            })
        });
    }
    {
        let (sock, _peer) = socket_peer("raw-socket", MIB);
        let mut buf = data.clone();
        g.bench_function("raw_socket", |b| b.iter(|| raw_round_trip(sock.as_fd(), sock.as_fd(), &mut buf)));
    }
    {
        let (sock, _peer) = socket_peer("bytes-socket", MIB);
        let conn = Connection::<()>::from(sock);
        let mut buf = Vec::new();
        g.bench_function("bytes_duplex", |b| {
            b.iter(|| {
                conn.send_bytes(&data).unwrap();
                conn.recv_bytes_into(&mut buf).unwrap()
            })
        });
    }
    g.finish();
}
