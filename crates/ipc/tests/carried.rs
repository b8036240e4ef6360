//! `Carried` past the out-of-line threshold: encoded into a sealed memfd, sent as that memfd
//! over a duplex connection, as bytes over a pipe or TCP.

use mproc_ipc::{Address, Carried, Client, Listener, duplex, pipe};

use crate::support::DEADLINE;

/// Past the out-of-line threshold (4 MiB).
const BIG: usize = 6 << 20;

fn big() -> Vec<u8> {
    (0..BIG).map(|i| (i * 13) as u8).collect()
}

/// The line of `/proc/self/maps` that holds `at`.
fn mapping_of(at: *const u8) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let at = at as usize;
    maps.lines()
        .find(|line| {
            let (lo, hi) = line.split(' ').next().unwrap().split_once('-').unwrap();
            (usize::from_str_radix(lo, 16).unwrap()..usize::from_str_radix(hi, 16).unwrap()).contains(&at)
        })
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_large_carried_is_encoded_into_a_memfd_and_crosses_a_duplex_as_it() {
    let value = big();
    let carried = Carried::encode(&value).unwrap();
    assert!(carried.is_file(), "a large encoding is in a memfd of its own");
    assert!(carried.len() > BIG);
    assert_eq!(carried.decode::<Vec<u8>>().unwrap(), value, "decoded where it was made");
    let (a, b) = duplex::<Carried>().unwrap();
    a.send(&carried).unwrap();
    let got = b.recv_timeout(DEADLINE).unwrap();
    assert!(got.is_file(), "received as the memfd");
    let line = mapping_of(got.bytes().unwrap().as_ptr());
    assert!(line.contains("mproc-value") && line.contains("r--s"), "not the memfd, read-only: {line}");
    assert_eq!(got.decode::<Vec<u8>>().unwrap(), value);
    // What travelled on the socket: a few bytes (the memfd went beside them).
    a.send(&carried).unwrap();
    let frame = b.recv_bytes_timeout(DEADLINE).unwrap();
    assert!(frame.len() < 64, "{} bytes went through the socket", frame.len());
    // Sent again, inside a larger value, and back: still the same memfd's bytes.
    let (c, d) = duplex::<(u32, Carried, String)>().unwrap();
    c.send(&(7, got.clone(), "after".to_owned())).unwrap();
    let (seven, again, after) = d.recv_timeout(DEADLINE).unwrap();
    assert_eq!((seven, after.as_str()), (7, "after"));
    assert_eq!(again.decode::<Vec<u8>>().unwrap(), value);
}

#[test]
fn a_large_carried_crosses_a_pipe_and_tcp_as_bytes() {
    let value = big();
    let carried = Carried::encode(&value).unwrap();
    let (rx, tx) = pipe::<Carried>().unwrap();
    let sending = carried.clone();
    let sender = std::thread::spawn(move || tx.send(&sending).unwrap());
    let got = rx.recv_timeout(DEADLINE).unwrap();
    sender.join().unwrap();
    assert!(!got.is_file(), "a pipe carries no memfd");
    assert_eq!(got.decode::<Vec<u8>>().unwrap(), value);

    let listener = Listener::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), Some(b"key")).unwrap();
    let Address::Tcp(addr) = listener.address().clone() else { panic!("a tcp listener") };
    let sending = carried.clone();
    let sender = std::thread::spawn(move || {
        let conn = Client::connect::<Carried, ()>(addr, Some(b"key")).unwrap();
        conn.send(&sending).unwrap();
    });
    let mut conn = listener.accept_timeout::<(), Carried>(DEADLINE).unwrap();
    conn.set_max_message_size(2 * BIG);
    let got = conn.recv_timeout(DEADLINE).unwrap();
    sender.join().unwrap();
    assert!(!got.is_file(), "TCP carries no memfd");
    assert_eq!(got.decode::<Vec<u8>>().unwrap(), value);
}

#[test]
fn a_large_carried_inside_another_is_kept_as_bytes_and_both_cross() {
    let value = big();
    let inner = Carried::encode(&value).unwrap();
    // The outer encoding holds the inner one's bytes (it may go over a pipe or TCP later).
    let outer = Carried::encode(&(1u8, &inner)).unwrap();
    assert_eq!(outer.n_fds(), 0);
    let (a, b) = duplex::<Carried>().unwrap();
    a.send(&outer).unwrap();
    let (one, got) = b.recv_timeout(DEADLINE).unwrap().decode::<(u8, Carried)>().unwrap();
    assert_eq!(one, 1);
    assert_eq!(got.decode::<Vec<u8>>().unwrap(), value);
}

#[test]
fn a_carried_memfd_is_not_bounded_by_the_receivers_message_limit() {
    // Its memory is the sender's: the receiver maps it and allocates only what it decodes.
    let value = big();
    let (a, mut b) = duplex::<Carried>().unwrap();
    b.set_max_message_size(1 << 20);
    a.send(&Carried::encode(&value).unwrap()).unwrap();
    assert_eq!(b.recv_timeout(DEADLINE).unwrap().decode::<Vec<u8>>().unwrap(), value);
    // Bytes inline are bounded as before.
    let (mut rx, tx) = pipe::<Carried>().unwrap();
    rx.set_max_message_size(1 << 20);
    let sender = std::thread::spawn(move || tx.send(&Carried::encode(&big()).unwrap()));
    let err = rx.recv_timeout(DEADLINE).unwrap_err();
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    drop(rx);
    let _ = sender.join().unwrap();
}

/// What a `Carried` spells on the wire (its bytes, or a memfd and its length; then its fds),
/// with any end in the memfd's place.
#[derive(serde::Serialize)]
enum Spelled {
    #[allow(dead_code)]
    Bytes(Vec<u8>),
    File(Box<mproc_ipc::Receiver<()>>, u64),
}

#[test]
fn a_carried_memfd_that_could_change_is_refused_and_the_connection_goes_on() {
    use rustix::fs::{MemfdFlags, SealFlags};
    let (ours, theirs) = mproc_ipc::Connection::<(Spelled, Vec<u8>), ()>::pair().unwrap();
    let theirs: mproc_ipc::Connection<(), Carried> = theirs.cast();
    let file = |seals: SealFlags| {
        let fd = rustix::fs::memfd_create("bad", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, 1 << 20).unwrap();
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
        Box::new(mproc_ipc::Receiver::<()>::from(fd))
    };
    for (spelled, expect) in [
        (Spelled::File(file(SealFlags::SHRINK), 1 << 20), "not sealed against writing"),
        (Spelled::File(file(SealFlags::WRITE | SealFlags::SHRINK), 2 << 20), "not the 2097152 announced"),
        (Spelled::File(Box::new(mproc_ipc::pipe::<()>().unwrap().0), 1 << 20), "not a sealable memfd"),
    ] {
        ours.send(&(spelled, Vec::new())).unwrap();
        let err = theirs.recv_timeout(DEADLINE).unwrap_err();
        assert!(err.to_string().contains(expect), "{err}");
    }
    let sealed = file(SealFlags::WRITE | SealFlags::SHRINK);
    ours.send(&(Spelled::File(sealed, 1 << 20), Vec::new())).unwrap();
    assert_eq!(theirs.recv_timeout(DEADLINE).unwrap().len(), 1 << 20);
}
