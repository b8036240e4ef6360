//! mproc-ipc's `Listener` / `Client` over loopback TCP, beside floors measured in the same run.
//!
//! - `ipc::tcp_connect`: connect + authkey handshake (`Client::connect` to a `Listener` in
//!   another process) vs. a bare TCP connect to a bare `accept` loop; then Python's
//!   `multiprocessing.connection.Client()` with an authkey to a Python `Listener`, timed by
//!   `python3` in the same run. Target: under 1 ms.
//! - `ipc::tcp_rtt_small`: an 8-byte round trip on an authenticated connection vs. a raw TCP
//!   ping-pong (both `TCP_NODELAY`), and the same paired on one CPU. Target: at most 1.15x.
//!
//! The peers are this binary started again with `MPROC_BENCH_PEER` set; each prints the port
//! it listens on.

use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::Criterion;
use mproc_benches::{Ratio, Target, report};
use mproc_ipc::{Client, Connection, Listener};

const KEY: &[u8] = b"bench authkey";

fn main() {
    if let Ok(mode) = std::env::var("MPROC_BENCH_PEER") {
        return peer(&mode);
    }
    mproc_benches::start_run();
    let mut c = mproc_benches::criterion()
        // The connect target reads the median of thousands of connects (0.1-0.4 ms each);
        // 10,000 resamples: they only narrow criterion's confidence intervals.
        .measurement_time(Duration::from_millis(1500))
        .configure_from_args();
    connect(&mut c);
    rtt_small(&mut c);
    c.final_summary();
    report("ipc::tcp_connect", "raw_tcp", &["authkey"], Ratio::Time);
    report("ipc::tcp_rtt_small", "raw_tcp", &["bytes_authkey"], Ratio::Time);
    let mut targets = Vec::new();
    if let Some(ns) = mproc_benches::median_ns("ipc::tcp_connect", "authkey") {
        println!("  connect + handshake: {:.3} ms (target: under 1 ms)", ns / 1e6);
        targets.push(Target::at_most("ipc::tcp_connect/authkey", ns / 1e6, 1.0, " ms"));
    }
    python_connect();
    targets.extend(paired_runs());
    mproc_benches::report_targets(&targets);
}

// ---- the peer process -------------------------------------------------------------------

fn peer(mode: &str) {
    let announce = |port: u16| {
        println!("{port}");
        std::io::stdout().flush().unwrap();
    };
    match mode {
        // Accepts and drops connections, for ever.
        "raw-accept" => {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            announce(listener.local_addr().unwrap().port());
            for stream in listener.incoming() {
                let stream = stream.unwrap();
                stream.set_nodelay(true).unwrap();
            }
        }
        "authkey-accept" => {
            let listener = Listener::bind((Ipv4Addr::LOCALHOST, 0), Some(KEY)).unwrap();
            announce(port_of(&listener));
            loop {
                let _ = listener.accept::<(), ()>();
            }
        }
        // Echoes 8-byte messages on one connection.
        "raw-echo" => {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            announce(listener.local_addr().unwrap().port());
            let (mut stream, _) = listener.accept().unwrap();
            stream.set_nodelay(true).unwrap();
            let mut buf = [0u8; 8];
            while stream.read_exact(&mut buf).is_ok() && stream.write_all(&buf).is_ok() {}
        }
        "authkey-echo" => {
            let listener = Listener::bind((Ipv4Addr::LOCALHOST, 0), Some(KEY)).unwrap();
            announce(port_of(&listener));
            let conn: Connection<()> = listener.accept().unwrap();
            let mut buf = Vec::with_capacity(8);
            while conn.recv_bytes_into(&mut buf).is_ok() && conn.send_bytes(&buf).is_ok() {}
        }
        other => panic!("unknown peer mode {other}"),
    }
}

fn port_of(listener: &Listener) -> u16 {
    match listener.address() {
        mproc_ipc::Address::Tcp(addr) => addr.port(),
        other => panic!("not TCP: {other}"),
    }
}

// ---- the measuring side -----------------------------------------------------------------

/// A peer process, killed on drop, and the loopback address it listens on.
struct Peer {
    child: Child,
    addr: SocketAddr,
}

impl Peer {
    fn start(mode: &str) -> Peer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("MPROC_BENCH_PEER", mode)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        let port: u16 = line.trim().parse().unwrap();
        Peer { child, addr: (Ipv4Addr::LOCALHOST, port).into() }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn raw_connect(addr: SocketAddr) {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    black_box(stream);
}

fn our_connect(addr: SocketAddr) {
    black_box(Client::connect::<(), ()>(addr, Some(KEY)).unwrap());
}

fn connect(c: &mut Criterion) {
    let mut g = c.benchmark_group("ipc::tcp_connect");
    {
        let peer = Peer::start("raw-accept");
        g.bench_function("raw_tcp", |b| b.iter(|| raw_connect(peer.addr)));
    }
    {
        let peer = Peer::start("authkey-accept");
        g.bench_function("authkey", |b| b.iter(|| our_connect(peer.addr)));
    }
    g.finish();
}

fn raw_round_trip(stream: &mut TcpStream, buf: &mut [u8; 8]) {
    stream.write_all(buf).unwrap();
    stream.read_exact(buf).unwrap();
}

fn raw_echo_peer() -> (TcpStream, Peer) {
    let peer = Peer::start("raw-echo");
    let stream = TcpStream::connect(peer.addr).unwrap();
    stream.set_nodelay(true).unwrap();
    (stream, peer)
}

fn authkey_echo_peer() -> (Connection<()>, Peer) {
    let peer = Peer::start("authkey-echo");
    (Client::connect(peer.addr, Some(KEY)).unwrap(), peer)
}

fn rtt_small(c: &mut Criterion) {
    let mut g = c.benchmark_group("ipc::tcp_rtt_small");
    {
        let (mut stream, _peer) = raw_echo_peer();
        let mut buf = [1u8; 8];
        g.bench_function("raw_tcp", |b| b.iter(|| raw_round_trip(&mut stream, black_box(&mut buf))));
    }
    {
        let (conn, _peer) = authkey_echo_peer();
        let mut buf = Vec::with_capacity(8);
        g.bench_function("bytes_authkey", |b| {
            b.iter(|| {
                conn.send_bytes(black_box(&[1u8; 8])).unwrap();
                conn.recv_bytes_into(&mut buf).unwrap();
            })
        });
    }
    g.finish();
}

/// Connect + handshake, and the 8-byte round trip, ours and the floor alternating (see
/// `mproc_benches::paired`); the round trip also with every process on one CPU, as the ipc
/// bench does (across CPUs, where the scheduler wakes each peer swamps what we add). The
/// round trips' targets: at most 1.15x.
fn paired_runs() -> Vec<Target> {
    println!();
    let raw = Peer::start("raw-accept");
    let ours = Peer::start("authkey-accept");
    mproc_benches::paired(
        "tcp connect: +authkey handshake vs raw",
        50,
        Ratio::Time,
        || raw_connect(raw.addr),
        || our_connect(ours.addr),
    );
    drop((raw, ours));
    let paired_rtt = |name: &str| -> Option<f64> {
        let (mut stream, _raw) = raw_echo_peer();
        let (conn, _ours) = authkey_echo_peer();
        let mut small = [1u8; 8];
        let mut buf = Vec::with_capacity(8);
        mproc_benches::paired(
            name,
            2000,
            Ratio::Time,
            || raw_round_trip(&mut stream, black_box(&mut small)),
            || {
                conn.send_bytes(black_box(&[1u8; 8])).unwrap();
                conn.recv_bytes_into(&mut buf).unwrap();
            },
        )
    };
    let across = paired_rtt("tcp rtt 8 B: authkey conn vs raw (target 1.15x)");
    let all = rustix::thread::sched_getaffinity(None).unwrap();
    let mut one = rustix::thread::CpuSet::new();
    one.set(rustix::thread::sched_getcpu());
    rustix::thread::sched_setaffinity(None, &one).unwrap();
    let one_cpu = paired_rtt("tcp rtt 8 B, one CPU: authkey conn vs raw (target 1.15x)");
    rustix::thread::sched_setaffinity(None, &all).unwrap();
    [("ipc::tcp_rtt_8b/authkey", across), ("ipc::tcp_rtt_8b_one_cpu/authkey", one_cpu)]
        .into_iter()
        .filter_map(|(name, r)| Some(Target::at_most(name, r?, 1.15, "x the raw TCP round trip")))
        .collect()
}

/// Python's `Client()` with an authkey to a Python `Listener` (accepting in a forked child, as
/// our peer accepts in another process), over loopback TCP: median of 200 connections, timed
/// by Python itself.
const PYTHON_CONNECT: &str = r#"
import multiprocessing, statistics, sys, time
from multiprocessing.connection import Client, Listener
key = b"bench authkey"
listener = Listener(("127.0.0.1", 0), authkey=key)
def serve():
    while True:
        listener.accept().close()
multiprocessing.get_context("fork").Process(target=serve, daemon=True).start()
times = []
for _ in range(int(sys.argv[1])):
    start = time.perf_counter()
    Client(listener.address, authkey=key).close()
    times.append(time.perf_counter() - start)
print("%.3f" % (statistics.median(times) * 1e3), sys.version.split()[0])
"#;

fn python_connect() {
    if !mproc_benches::measuring() {
        return;
    }
    let rounds = "200";
    match Command::new("python3").args(["-c", PYTHON_CONNECT, rounds]).output() {
        Ok(out) if out.status.success() => {
            let out = String::from_utf8_lossy(&out.stdout);
            let (ms, version) = out.trim().split_once(' ').unwrap_or((out.trim(), "?"));
            println!("  python {version}: Client() + handshake {ms} ms (median of {rounds}, same run)");
        }
        Ok(out) => println!("  python3 failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => println!("  python3 not run: {e}"),
    }
}
