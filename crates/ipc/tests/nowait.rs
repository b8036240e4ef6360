//! Sends that never wait: `try_send` takes a frame or says there is no room, and a frame
//! taken in part goes out whole, before any later frame.

use std::os::fd::AsFd;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use mproc_ipc::{Connection, Error, Receiver, Sender, duplex, pipe};

use crate::support;
use proptest::prelude::*;

/// Runs `f` on another thread and fails if it does not finish in time (a send that waits
/// would hang here instead of saying "no room").
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(f()).unwrap());
    rx.recv_timeout(Duration::from_secs(60)).expect("a non-blocking send waited")
}

/// Waits (bounded) until `end` has room to write: what an event loop would wait for between
/// sends that found none.
fn writable(end: &impl AsFd) {
    let mut fds = [rustix::event::PollFd::new(end, rustix::event::PollFlags::OUT)];
    let deadline = rustix::event::Timespec { tv_sec: 60, tv_nsec: 0 };
    let ready = rustix::event::poll(&mut fds, Some(&deadline)).unwrap();
    assert_eq!(ready, 1, "no room to write within 60 s");
}

/// Flushes what `end` holds of a frame taken in part, waiting for room between tries.
fn flush_all<E: AsFd>(end: &E, try_flush: fn(&E) -> mproc_ipc::Result<bool>) {
    while !try_flush(end).unwrap() {
        writable(end);
    }
}

/// Fills the end with `try_send` until it says there is no room; the values it took.
fn fill<E: Send + 'static>(end: E, send: fn(&E, &Vec<u8>) -> mproc_ipc::Result<bool>) -> (E, Vec<Vec<u8>>) {
    within(move || {
        let mut taken = Vec::new();
        for i in 0u32.. {
            let value = vec![i as u8; 1000 + (i as usize * 37) % 5000];
            if !send(&end, &value).unwrap() {
                break;
            }
            taken.push(value);
        }
        (end, taken)
    })
}

#[test]
fn a_full_socket_says_no_room_and_loses_nothing() {
    let (ours, theirs) = duplex::<Vec<u8>>().unwrap();
    let (ours, taken) = fill(ours, Connection::try_send);
    assert!(!taken.is_empty(), "an empty socket took nothing");
    // The last frame taken may be only partly written: the rest goes when there is room.
    let count = taken.len();
    let reader = thread::spawn(move || (0..count).map(|_| theirs.recv().unwrap()).collect::<Vec<_>>());
    let ours = within(move || {
        flush_all(&ours, Connection::try_flush);
        ours
    });
    assert!(reader.join().unwrap() == taken, "frames came back changed or out of order");
    drop(ours);
}

#[test]
fn a_full_pipe_says_no_room_and_loses_nothing() {
    full_pipe_round();
}

/// The same on a kernel that refuses `RWF_NOWAIT` for pipes (before 5.x): mproc then polls
/// and writes `PIPE_BUF` bytes at a time. In a forked child, whose choice is its own.
#[test]
fn a_full_pipe_says_no_room_and_loses_nothing_without_rwf_nowait() {
    support::assert_success(support::in_child(&[], || {
        mproc_ipc::__private::refuse_pipe_nowait();
        full_pipe_round();
        Ok(())
    }));
}

/// Fills a pipe without waiting, then reads every frame back whole and in order.
fn full_pipe_round() {
    let (rx, tx) = pipe::<Vec<u8>>().unwrap();
    let (tx, taken) = fill(tx, Sender::try_send);
    assert!(!taken.is_empty(), "an empty pipe took nothing");
    let count = taken.len();
    let reader = thread::spawn(move || (0..count).map(|_| rx.recv().unwrap()).collect::<Vec<_>>());
    let tx = within(move || {
        flush_all(&tx, Sender::try_flush);
        tx
    });
    assert_eq!(reader.join().unwrap(), taken);
    drop(tx);
}

#[test]
fn a_frame_taken_in_part_goes_out_before_the_next_blocking_send() {
    let (ours, theirs) = duplex::<Vec<u8>>().unwrap();
    // Larger than any socket buffer, and below the size that goes out of line (a memfd).
    let big = vec![7u8; 2 << 20];
    let ours = within({
        let big = big.clone();
        move || {
            assert!(ours.try_send(&big).unwrap(), "an empty socket takes the start of a frame");
            assert!(!ours.try_flush().unwrap(), "2 MiB cannot all fit");
            assert!(!ours.try_send(&vec![1]).unwrap(), "no new frame while one is half sent");
            ours
        }
    });
    let reader = thread::spawn(move || (theirs.recv().unwrap(), theirs.recv().unwrap()));
    ours.send(&vec![9, 9]).unwrap(); // finishes the big frame first, waiting as it must
    let (first, second) = reader.join().unwrap();
    assert!(first == big, "the big frame came back changed");
    assert_eq!(second, [9, 9]);
}

#[test]
fn an_end_holding_half_a_frame_refuses_to_travel() {
    let (ours, theirs) = duplex::<Vec<u8>>().unwrap();
    let (carrier, far) = duplex::<Connection<Vec<u8>>>().unwrap();
    let ours = within(move || {
        assert!(ours.try_send(&vec![1u8; 2 << 20]).unwrap());
        ours
    });
    match carrier.send(&ours) {
        Err(Error::FdPassing(why)) => assert!(why.contains("try_flush"), "unclear: {why}"),
        other => panic!("an end with half a frame travelled: {other:?}"),
    }
    drop((theirs, far));
}

#[test]
fn raw_frames_go_without_waiting_too() {
    let (rx, tx): (Receiver<()>, Sender<()>) = pipe().unwrap();
    let payload = vec![3u8; 200_000]; // more than a pipe holds
    let tx = within({
        let payload = payload.clone();
        move || {
            assert!(tx.try_send_bytes(&payload).unwrap());
            tx
        }
    });
    let reader = thread::spawn(move || rx.recv_bytes().unwrap());
    within(move || flush_all(&tx, Sender::try_flush));
    assert!(reader.join().unwrap() == payload);
}

#[derive(Debug, Clone)]
enum Op {
    TrySend(usize),
    Send(usize),
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..300_000).prop_map(Op::TrySend),
        1 => (0usize..50_000).prop_map(Op::Send),
        2 => Just(Op::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever mix of waiting and non-waiting sends, the reader gets exactly the frames that
    /// were taken, whole and in order.
    #[test]
    fn the_reader_gets_every_frame_taken_in_order(ops in proptest::collection::vec(op(), 1..40)) {
        let (ours, theirs) = duplex::<Vec<u8>>().unwrap();
        let (count_tx, count_rx) = mpsc::channel::<Option<Vec<u8>>>();
        // A slow reader: it reads a frame only when told one was taken.
        let reader = thread::spawn(move || {
            let mut got = Vec::new();
            while let Ok(Some(expected)) = count_rx.recv() {
                let value = theirs.recv().unwrap();
                assert!(value == expected, "frame {} came back changed", got.len());
                got.push(value.len());
            }
            got
        });
        let mut taken = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            let value = |len: usize| vec![i as u8; len];
            match op {
                Op::TrySend(len) => {
                    if ours.try_send(&value(len)).unwrap() {
                        count_tx.send(Some(value(len))).unwrap();
                        taken.push(len);
                    }
                }
                Op::Send(len) => {
                    count_tx.send(Some(value(len))).unwrap();
                    ours.send(&value(len)).unwrap();
                    taken.push(len);
                }
                Op::Flush => {
                    let _ = ours.try_flush().unwrap();
                }
            }
        }
        flush_all(&ours, Connection::try_flush);
        count_tx.send(None).unwrap();
        prop_assert_eq!(reader.join().unwrap(), taken);
    }
}

/// A second handle on the same pipe end.
fn copy(tx: &Sender<u32>) -> Sender<u32> {
    use std::os::fd::AsFd;
    Sender::from(tx.as_fd().try_clone_to_owned().unwrap())
}

/// An end carried by a frame sent without waiting arrives working, whether the frame found
/// no room at first (refused, then taken later) or went out in parts.
#[test]
fn ends_travel_in_frames_sent_without_waiting() {
    let (ours, theirs) = duplex::<(Vec<u8>, Option<Sender<u32>>)>().unwrap();
    let (rx, tx) = pipe::<u32>().unwrap();
    let ours = within(move || {
        // Fill the socket with plain frames first.
        while ours.try_send(&(vec![0; 3000], None)).unwrap() {}
        ours
    });
    // No room: refused, with nothing (and no fd) sent.
    assert!(!ours.try_send(&(vec![1; 100_000], Some(copy(&tx)))).unwrap());
    let reader = thread::spawn(move || {
        let mut carried = None;
        while carried.is_none() {
            let (_, end) = theirs.recv().unwrap();
            carried = end;
        }
        carried.unwrap().send(&42).unwrap();
    });
    // Once the reader makes room, the frame (larger than the room: it goes in parts) is taken.
    let ours = within(move || {
        while !ours.try_send(&(vec![1; 100_000], Some(copy(&tx)))).unwrap() {
            writable(&ours);
        }
        flush_all(&ours, Connection::try_flush);
        ours
    });
    reader.join().unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(60)).unwrap(), 42);
    drop(ours);
}

/// An end whose fd was made non-blocking elsewhere (by a peer library, or inherited so): a
/// blocking send waits for room and sends the whole frame, typed or bytes, never a part of
/// it reported as sent.
#[test]
fn a_blocking_send_on_an_end_made_non_blocking_elsewhere_sends_whole_frames() {
    let (rx, tx) = pipe::<Vec<u8>>().unwrap();
    rustix::fs::fcntl_setfl(tx.as_fd(), rustix::fs::OFlags::NONBLOCK).unwrap();
    let big: Vec<u8> = (0..(1 << 20)).map(|i| i as u8).collect();
    let sent = big.clone();
    let sender = thread::spawn(move || {
        tx.send_bytes(&sent).unwrap();
        tx.send(&sent).unwrap();
        tx.send(&vec![1, 2, 3]).unwrap();
    });
    let deadline = Duration::from_secs(60);
    assert_eq!(rx.recv_bytes_timeout(deadline).unwrap(), big);
    assert_eq!(rx.recv_timeout(deadline).unwrap(), big);
    assert_eq!(rx.recv_timeout(deadline).unwrap(), vec![1, 2, 3]);
    sender.join().unwrap();
}
