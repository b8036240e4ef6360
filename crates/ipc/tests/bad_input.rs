//! Bad input from the peer: a clear error, never a panic, a hang or a huge allocation.

use std::os::fd::OwnedFd;
use std::time::Duration;

use mproc_ipc::{Error, Receiver, duplex, pipe};

use crate::support::{DEADLINE, assert_success, fork_child, in_child, msg};

/// A raw pipe: our typed receiver on one side, a bare fd to write anything on the other.
fn raw_pipe<T>() -> (Receiver<T>, OwnedFd) {
    let (rx, tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    (Receiver::from(rx), tx)
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let n = rustix::io::write(fd, bytes).unwrap();
        bytes = &bytes[n..];
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

#[test]
fn header_claiming_2_pow_60_bytes() {
    let (rx, tx) = raw_pipe::<Vec<u8>>();
    // The long form CPython uses above i32::MAX: -1, then the 8-byte length.
    let mut header = (-1i32).to_be_bytes().to_vec();
    header.extend_from_slice(&(1u64 << 60).to_be_bytes());
    write_all(&tx, &header);
    match rx.recv_bytes_timeout(DEADLINE) {
        Err(Error::TooLarge { len, max }) => {
            assert_eq!(len, 1 << 60);
            assert_eq!(max, mproc_ipc::DEFAULT_MAX_MESSAGE_SIZE as u64);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The end now skips the announced payload: a silent peer is a timeout, not a hang...
    assert!(matches!(rx.recv_bytes_timeout(Duration::from_millis(20)), Err(Error::Timeout)));
    // ...and the peer leaving inside it is a truncation.
    write_all(&tx, &[0; 1000]);
    drop(tx);
    let err = rx.recv_bytes_timeout(DEADLINE).unwrap_err();
    assert!(
        matches!(err, Error::Truncated { expected, received: 1012 } if expected == (1 << 60) + 12),
        "{err}"
    );
    assert!(matches!(rx.recv_bytes_timeout(DEADLINE), Err(Error::Closed)));
}

#[test]
fn oversized_frame_is_skipped_and_the_end_stays_usable() {
    let (mut rx, tx) = pipe::<String>().unwrap();
    rx.set_max_message_size(1000);
    assert_eq!(rx.max_message_size(), 1000);
    // Larger than the pipe buffer: the sender blocks until the receiver skips it.
    let sender = std::thread::spawn(move || {
        tx.send_bytes(&vec![1; 200_000]).unwrap();
        tx.send(&"after".to_string()).unwrap();
    });
    assert!(matches!(rx.recv_timeout(DEADLINE), Err(Error::TooLarge { len: 200_000, max: 1000 })));
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), "after");
    sender.join().unwrap();
    assert!(matches!(rx.recv_timeout(DEADLINE), Err(Error::Closed)));
}

#[test]
fn negative_header_is_invalid_for_good() {
    let (rx, tx) = raw_pipe::<u8>();
    write_all(&tx, &(-2i32).to_be_bytes());
    write_all(&tx, &frame(&[1]));
    for _ in 0..2 {
        let err = rx.recv_timeout(DEADLINE).unwrap_err();
        assert!(matches!(err, Error::InvalidHeader { header: -2 }), "{err}");
        assert!(err.to_string().contains("invalid frame header -2"), "{err}");
    }
}

#[test]
fn truncated_frame_then_closed() {
    let (rx, tx) = raw_pipe::<u8>();
    write_all(&tx, &100u32.to_be_bytes());
    write_all(&tx, &[9; 10]);
    drop(tx);
    let err = rx.recv_bytes_timeout(DEADLINE).unwrap_err();
    assert!(matches!(err, Error::Truncated { expected: 104, received: 14 }), "{err}");
    assert!(matches!(rx.recv_bytes_timeout(DEADLINE), Err(Error::Closed)));
}

#[test]
fn garbage_payloads_are_decode_errors_and_the_next_frame_reads() {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Point {
        x: u32,
        flag: bool,
    }
    let (rx, tx) = raw_pipe::<Point>();
    write_all(&tx, &frame(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff])); // varint that never ends
    write_all(&tx, &frame(&[1, 7])); // bool 7
    write_all(&tx, &frame(&[1, 1, 0, 0])); // trailing bytes: another type was sent
    write_all(&tx, &frame(&[])); // too short
    write_all(&tx, &frame(&[5, 1])); // valid
    for _ in 0..4 {
        let err = rx.recv_timeout(DEADLINE).unwrap_err();
        assert!(matches!(err, Error::Decode(_)), "{err}");
        assert!(err.to_string().starts_with("cannot decode message"), "{err}");
    }
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), Point { x: 5, flag: true });
}

#[test]
fn peer_dies_mid_frame() {
    let (ours, theirs) = duplex::<Vec<u8>>().unwrap();
    let raw = OwnedFd::from(theirs);
    // The child writes half a frame and dies without closing anything cleanly.
    let child = fork_child(&[std::os::fd::AsFd::as_fd(&raw)], || {
        let mut half = 1_000_000u32.to_be_bytes().to_vec();
        half.extend_from_slice(&[3; 5000]);
        rustix::io::write(&raw, &half).map_err(msg)?;
        Ok(())
    });
    drop(raw);
    let err = ours.recv_timeout(DEADLINE).unwrap_err();
    assert!(matches!(err, Error::Truncated { expected: 1_000_004, received: 5004 }), "{err}");
    assert!(matches!(ours.recv_timeout(DEADLINE), Err(Error::Closed)));
    assert_success(child);
}

#[test]
fn timeout_on_a_silent_peer_leaves_the_end_usable() {
    let (ours, theirs) = duplex::<u64>().unwrap();
    let (go_rx, go_tx) = pipe::<()>().unwrap();
    let child = in_child(&[&theirs, &go_rx], || {
        go_rx.recv().map_err(msg)?; // stay silent until told
        // Half a frame, then (after the next go) the rest: the parent times out in between.
        let frame = [0, 0, 0, 8, 42, 0, 0, 0, 0, 0, 0, 0];
        rustix::io::write(&theirs, &frame[..6]).map_err(msg)?;
        go_rx.recv().map_err(msg)?;
        rustix::io::write(&theirs, &frame[6..]).map_err(msg)?;
        theirs.send(&7).map_err(msg)?;
        Ok(())
    });
    drop((theirs, go_rx));
    assert!(matches!(ours.recv_timeout(Duration::from_millis(10)), Err(Error::Timeout)));
    assert!(!ours.poll(Some(Duration::ZERO)).unwrap());
    assert_eq!(ours.try_recv().unwrap(), None);
    go_tx.send(&()).unwrap();
    // Half a frame arrives: receives time out but keep what came.
    assert!(ours.poll(Some(DEADLINE)).unwrap());
    assert!(matches!(ours.recv_timeout(Duration::from_millis(10)), Err(Error::Timeout)));
    go_tx.send(&()).unwrap();
    // postcard's u64 is a varint: 42 then zeros is not canonical for a one-byte frame, so
    // decode as raw bytes to see the frame whole.
    assert_eq!(ours.recv_bytes_timeout(DEADLINE).unwrap(), [42, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(ours.recv_timeout(DEADLINE).unwrap(), 7);
    assert_success(child);
}

#[test]
fn sending_to_a_closed_peer_is_closed() {
    let (a, b) = duplex::<u8>().unwrap();
    drop(b);
    assert!(matches!(a.send(&1), Err(Error::Closed)));
    assert!(matches!(a.recv_timeout(DEADLINE), Err(Error::Closed)));

    let (rx, tx) = pipe::<u8>().unwrap();
    drop(rx);
    // Rust programs ignore SIGPIPE, so the write fails with EPIPE.
    assert!(matches!(tx.send(&1), Err(Error::Closed)));
}

#[test]
fn errors_convert_to_io_errors() {
    let (rx, _tx) = pipe::<u8>().unwrap();
    let err: std::io::Error = rx.recv_timeout(Duration::ZERO).unwrap_err().into();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
}

/// A recursive type: each level is one byte on the wire (the variant index).
#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
enum Nest {
    End,
    Deeper(Box<Nest>),
}

/// A recursive type through `Option` and a newtype struct.
#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct List(Option<Box<List>>);

/// Receives `payload` as one frame through a pipe in a forked child (a stack overflow kills
/// only the child), and runs `check` on what the receive gave.
fn recv_in_child<T: serde::de::DeserializeOwned + Send + 'static>(
    payload: Vec<u8>,
    check: impl FnOnce(mproc_ipc::Result<T>) -> Result<(), String>,
) {
    let child = in_child(&[], move || {
        let (rx, tx) = raw_pipe::<T>();
        let bytes = frame(&payload);
        let writer = std::thread::spawn(move || write_all(&tx, &bytes));
        let got = rx.recv_timeout(DEADLINE);
        writer.join().map_err(|_| "writer panicked".to_string())?;
        check(got)
    });
    assert_success(child);
}

#[test]
fn deeply_nested_values_are_refused_not_a_stack_overflow() {
    // A million levels: without a depth limit the decoder recurses once per byte and the
    // receiving thread overflows its stack (the child dies of SIGSEGV/SIGABRT).
    let mut deep = vec![1u8; 1_000_000];
    deep.push(0);
    recv_in_child::<Nest>(deep, |got| match got {
        Err(e @ Error::Mismatch(_)) if e.to_string().contains("nested deeper than") => Ok(()),
        other => Err(format!("expected a nesting error, got {other:?}")),
    });
    let mut deep = vec![1u8; 1_000_000];
    deep.push(0);
    recv_in_child::<List>(deep, |got| match got {
        Err(e @ Error::Mismatch(_)) if e.to_string().contains("nested deeper than") => Ok(()),
        other => Err(format!("expected a nesting error, got {other:?}")),
    });
    // A value nested as deep as honest data is still read.
    let mut value = Nest::End;
    for _ in 0..100 {
        value = Nest::Deeper(Box::new(value));
    }
    let bytes = mproc_ipc::encode(&value).unwrap();
    assert_eq!(mproc_ipc::decode_bytes::<Nest>(&bytes).unwrap(), value);
}

#[test]
fn huge_counts_of_empty_elements_are_refused_not_a_hang() {
    // A `Vec<()>` (or map of units) claiming 2^60 elements is ten bytes on the wire, and each
    // element takes none: without a bound the decoder loops 2^60 times.
    let mut varint = Vec::new();
    let mut n = 1u64 << 60;
    while n >= 0x80 {
        varint.push(n as u8 | 0x80);
        n >>= 7;
    }
    varint.push(n as u8);
    recv_in_child::<Vec<()>>(varint.clone(), |got| match got {
        Err(e @ Error::Mismatch(_)) if e.to_string().contains("elements") => Ok(()),
        other => Err(format!("expected a count error, got {:?}", other.map(|v| v.len()))),
    });
    recv_in_child::<std::collections::BTreeMap<(), ()>>(varint, |got| match got {
        Err(e @ Error::Mismatch(_)) if e.to_string().contains("elements") => Ok(()),
        other => Err(format!("expected a count error, got {:?}", other.map(|v| v.len()))),
    });
    // Counts that each fit the bytes left, nested: a thousand counts of a thousand units
    // would be (input bytes)^2 loops without a budget summed over the whole decode.
    let mut nested = vec![0x80 | (10_000 & 0x7f) as u8, (10_000 >> 7) as u8];
    for _ in 0..10_000 {
        nested.extend_from_slice(&[0x80 | (10_000 & 0x7f) as u8, (10_000 >> 7) as u8]);
    }
    recv_in_child::<Vec<Vec<()>>>(nested, |got| match got {
        Err(e @ Error::Mismatch(_)) if e.to_string().contains("elements") => Ok(()),
        other => Err(format!("expected a count error, got {:?}", other.map(|v| v.len()))),
    });
    // Honest empty elements still decode.
    let units = vec![(); 100_000];
    let bytes = mproc_ipc::encode(&units).unwrap();
    assert_eq!(mproc_ipc::decode_bytes::<Vec<()>>(&bytes).unwrap().len(), 100_000);
}
