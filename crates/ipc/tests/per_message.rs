//! What one message costs in steady state, counted, not timed: allocations (this binary's
//! allocator counts each thread's) and, on pipes, `read(2)`/`write(2)` calls (the thread's
//! `syscr`/`syscw` in `/proc/thread-self/io`). The benchmarks compare ours with a bare
//! `read`/`write` ping-pong; these pin down the counts behind those ratios: no allocation per
//! message, one write per send and one read per small receive, as the floor does.

use std::thread;

use mproc_ipc::{Connection, Receiver, Sender, duplex, pipe};
use serde::{Deserialize, Serialize};

use crate::support::allocations;

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone, Copy)]
struct Small {
    id: u32,
    value: i16,
    ok: bool,
}

const SMALL: Small = Small { id: 7, value: -3, ok: true };

/// Round trips counted after this many to warm up (buffers reach their steady size).
const WARM_UP: usize = 8;
const COUNTED: usize = 100;

/// Allocations this thread makes over `COUNTED` calls of `f`, after `WARM_UP` uncounted ones.
fn allocations_over(mut f: impl FnMut()) -> u64 {
    (0..WARM_UP).for_each(|_| f());
    let before = allocations();
    (0..COUNTED).for_each(|_| f());
    allocations() - before
}

/// This thread's `read`-family and `write`-family system calls so far (`syscr`, `syscw`).
fn read_write_calls() -> (u64, u64) {
    let io = std::fs::read_to_string("/proc/thread-self/io").expect("read /proc/thread-self/io");
    let field = |name: &str| -> u64 {
        io.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/thread-self/io: {io}"))
    };
    (field("syscr"), field("syscw"))
}

/// `read`/`write` calls per call of `f` (after a warm-up), net of what looking costs.
fn read_write_calls_per(mut f: impl FnMut()) -> (f64, f64) {
    (0..WARM_UP).for_each(|_| f());
    let (r0, w0) = read_write_calls();
    let (r1, w1) = read_write_calls();
    let (look_r, look_w) = (r1 - r0, w1 - w0);
    (0..COUNTED).for_each(|_| f());
    let (r2, w2) = read_write_calls();
    let per = |d: u64, look: u64| (d - look) as f64 / COUNTED as f64;
    (per(r2 - r1, look_r), per(w2 - w1, look_w))
}

#[test]
fn small_typed_and_raw_messages_allocate_nothing() {
    let (rx, tx) = pipe::<Small>().unwrap();
    let typed_pipe = allocations_over(|| {
        tx.send(&SMALL).unwrap();
        assert_eq!(rx.recv().unwrap(), SMALL);
    });
    let mut buf = Vec::new();
    let raw_pipe = allocations_over(|| {
        tx.send_bytes(&[1; 8]).unwrap();
        rx.recv_bytes_into(&mut buf).unwrap();
    });
    let (a, b) = duplex::<Small>().unwrap();
    let typed_duplex = allocations_over(|| {
        a.send(&SMALL).unwrap();
        assert_eq!(b.recv().unwrap(), SMALL);
    });
    let raw_duplex = allocations_over(|| {
        a.send_bytes(&[1; 8]).unwrap();
        b.recv_bytes_into(&mut buf).unwrap();
    });
    assert_eq!(
        (typed_pipe, raw_pipe, typed_duplex, raw_duplex),
        (0, 0, 0, 0),
        "allocations over {COUNTED} messages (typed pipe, raw pipe, typed duplex, raw duplex)"
    );
}

#[test]
fn a_one_mib_echo_allocates_nothing() {
    const MIB: usize = 1 << 20;
    // An echo thread on the other ends: its allocations are its own thread's, not counted.
    let (rx, peer_tx) = pipe::<()>().unwrap();
    let (peer_rx, tx) = pipe::<()>().unwrap();
    let (a, b) = duplex::<()>().unwrap();
    let pipe_peer = thread::spawn(move || echo(&peer_rx, &peer_tx));
    let socket_peer = thread::spawn(move || echo(&b, &b));
    let data: Vec<u8> = (0..MIB).map(|i| i as u8).collect();
    let mut buf = Vec::new();
    let over_pipe = allocations_over(|| {
        tx.send_bytes(&data).unwrap();
        rx.recv_bytes_into(&mut buf).unwrap();
        assert!(buf == data);
    });
    let over_duplex = allocations_over(|| {
        a.send_bytes(&data).unwrap();
        a.recv_bytes_into(&mut buf).unwrap();
        assert!(buf == data);
    });
    drop((tx, a));
    pipe_peer.join().unwrap();
    socket_peer.join().unwrap();
    assert_eq!((over_pipe, over_duplex), (0, 0), "allocations over {COUNTED} 1 MiB echoes (pipe, duplex)");
}

/// Sends back every frame until the other side closes.
fn echo<R: RecvInto>(rx: &R, tx: &impl SendRaw) {
    let mut buf = Vec::new();
    while rx.recv_into(&mut buf).is_ok() {
        tx.send_raw(&buf);
    }
}

trait RecvInto {
    fn recv_into(&self, buf: &mut Vec<u8>) -> mproc_ipc::Result<usize>;
}
trait SendRaw {
    fn send_raw(&self, bytes: &[u8]);
}
impl RecvInto for Receiver<()> {
    fn recv_into(&self, buf: &mut Vec<u8>) -> mproc_ipc::Result<usize> {
        self.recv_bytes_into(buf)
    }
}
impl SendRaw for Sender<()> {
    fn send_raw(&self, bytes: &[u8]) {
        // The other side may be gone already at the end.
        let _ = self.send_bytes(bytes);
    }
}
impl RecvInto for Connection<()> {
    fn recv_into(&self, buf: &mut Vec<u8>) -> mproc_ipc::Result<usize> {
        self.recv_bytes_into(buf)
    }
}
impl SendRaw for Connection<()> {
    fn send_raw(&self, bytes: &[u8]) {
        let _ = self.send_bytes(bytes);
    }
}

#[test]
fn a_small_message_is_one_write_and_one_read() {
    let (rx, tx) = pipe::<Small>().unwrap();
    let typed = read_write_calls_per(|| {
        tx.send(&SMALL).unwrap();
        assert_eq!(rx.recv().unwrap(), SMALL);
    });
    let mut buf = Vec::new();
    let raw = read_write_calls_per(|| {
        tx.send_bytes(&[1; 8]).unwrap();
        rx.recv_bytes_into(&mut buf).unwrap();
    });
    // What the floor does: one write(2) there, one read(2) back.
    assert_eq!((typed, raw), ((1.0, 1.0), (1.0, 1.0)), "(reads, writes) per message: typed, raw");
}

/// A received `Value` or `Array` costs what its region costs to receive, no more: the element
/// type's name that goes with it is compared where it lies, not copied into a `String`.
#[test]
fn a_received_value_allocates_only_for_its_region() {
    let (a, b) = duplex::<()>().unwrap();
    let region = mproc_ipc::Shared::<mproc_ipc::ShmMutex>::new().unwrap();
    let (a, b) = (
        a.cast::<mproc_ipc::Shared<mproc_ipc::ShmMutex>, ()>(),
        b.cast::<(), mproc_ipc::Shared<mproc_ipc::ShmMutex>>(),
    );
    let bare = receive_allocations(|| a.send(&region).unwrap(), || drop(b.recv().unwrap()));
    let value = mproc_ipc::Value::new(7u64).unwrap();
    let (a, b) = (a.cast::<mproc_ipc::Value<u64>, ()>(), b.cast::<(), mproc_ipc::Value<u64>>());
    let as_value = receive_allocations(|| a.send(&value).unwrap(), || drop(b.recv().unwrap()));
    let array = mproc_ipc::Array::<u64>::zeroed(4).unwrap();
    let (a, b) = (a.cast::<mproc_ipc::Array<u64>, ()>(), b.cast::<(), mproc_ipc::Array<u64>>());
    let as_array = receive_allocations(|| a.send(&array).unwrap(), || drop(b.recv().unwrap()));
    assert_eq!(
        (as_value, as_array),
        (bare, bare),
        "allocations over {COUNTED} receives (a Value<u64>, an Array<u64>) against a bare region"
    );
}

/// Allocations made by `COUNTED` calls of `recv` (each after a `send`, not counted), after
/// `WARM_UP` uncounted rounds.
fn receive_allocations(send: impl Fn(), recv: impl Fn()) -> u64 {
    (0..WARM_UP).for_each(|_| {
        send();
        recv();
    });
    (0..COUNTED)
        .map(|_| {
            send();
            let before = allocations();
            recv();
            allocations() - before
        })
        .sum()
}
