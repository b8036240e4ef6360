//! Round trips between two real processes, in both directions, at the sizes that matter:
//! empty, one byte, around the page and `PIPE_BUF`, past the pipe buffer, 1 MiB and 64 MiB.

use std::collections::BTreeMap;

use mproc_ipc::{Connection, Error, duplex, pipe};
use serde::{Deserialize, Serialize};

use crate::support::{DEADLINE, assert_success, in_child, msg};

const SIZES: [usize; 7] = [0, 1, 4095, 4096, 65536, 1 << 20, 64 << 20];

fn payload(len: usize, seed: u8) -> Vec<u8> {
    // A 64 KiB block that differs by seed and position, repeated: cheap to make even for
    // 64 MiB in a debug build, and a misplaced chunk still shows.
    let block: Vec<u8> =
        (0..65536usize).map(|i| (i as u8).wrapping_mul(31) ^ (i >> 8) as u8 ^ seed).collect();
    let mut out = Vec::with_capacity(len);
    let mut round = 0u8;
    while out.len() < len {
        let n = (len - out.len()).min(block.len());
        out.extend_from_slice(&block[..n]);
        let start = out.len() - n;
        if let Some(first) = out.get_mut(start) {
            *first = round; // marks which block this is
        }
        round = round.wrapping_add(1);
    }
    out
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Shape {
    Point,
    Circle { r: f64 },
    Poly(Vec<(i32, i32)>),
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Msg {
    id: u64,
    name: String,
    data: Vec<u8>,
    shapes: Vec<Shape>,
    tags: BTreeMap<String, Option<i64>>,
}

fn msg_of(len: usize, seed: u8) -> Msg {
    Msg {
        id: len as u64 * 1000 + seed as u64,
        name: format!("message {len}/{seed} ✓"),
        data: payload(len, seed),
        shapes: vec![
            Shape::Point,
            Shape::Circle { r: 1.5 },
            Shape::Poly(vec![(1, -2), (i32::MAX, i32::MIN)]),
        ],
        tags: [("a".to_string(), Some(-1)), ("b".to_string(), None)].into(),
    }
}

/// Serves `end` in the child: first sends one frame of each size (child to parent), then
/// echoes every frame back until the parent closes.
fn raw_peer<S, R>(end: &Connection<S, R>) -> Result<(), String> {
    for (i, &n) in SIZES.iter().enumerate() {
        end.send_bytes(&payload(n, i as u8)).map_err(msg)?;
    }
    let mut buf = Vec::new();
    loop {
        match end.recv_bytes_into(&mut buf) {
            Ok(_) => end.send_bytes(&buf).map_err(msg)?,
            Err(Error::Closed) => return Ok(()),
            Err(e) => return Err(msg(e)),
        }
    }
}

#[test]
fn raw_bytes_both_ways_over_duplex() {
    let (parent, child_end) = duplex::<()>().unwrap();
    let child = in_child(&[&child_end], || raw_peer(&child_end));
    drop(child_end);
    for (i, &n) in SIZES.iter().enumerate() {
        assert_eq!(
            parent.recv_bytes_timeout(DEADLINE).unwrap(),
            payload(n, i as u8),
            "child to parent, {n} bytes"
        );
    }
    let mut buf = Vec::new();
    for (i, &n) in SIZES.iter().enumerate() {
        let sent = payload(n, 100 + i as u8);
        parent.send_bytes(&sent).unwrap();
        assert!(parent.poll(Some(DEADLINE)).unwrap());
        assert_eq!(parent.recv_bytes_into(&mut buf).unwrap(), n);
        assert!(buf == sent, "echo of {n} bytes differs");
    }
    drop(parent);
    assert_success(child);
}

#[test]
fn typed_values_both_ways_over_duplex() {
    let (parent, child_end) = duplex::<Msg>().unwrap();
    let child = in_child(&[&child_end], || {
        for (i, &n) in SIZES.iter().enumerate() {
            child_end.send(&msg_of(n, i as u8)).map_err(msg)?;
        }
        loop {
            match child_end.recv() {
                Ok(mut m) => {
                    m.id += 1;
                    child_end.send(&m).map_err(msg)?;
                }
                Err(Error::Closed) => return Ok(()),
                Err(e) => return Err(msg(e)),
            }
        }
    });
    drop(child_end);
    for (i, &n) in SIZES.iter().enumerate() {
        assert_eq!(parent.recv_timeout(DEADLINE).unwrap(), msg_of(n, i as u8), "child to parent, {n} bytes");
    }
    for (i, &n) in SIZES.iter().enumerate() {
        let mut m = msg_of(n, 7 + i as u8);
        parent.send(&m).unwrap();
        m.id += 1;
        assert!(parent.recv_timeout(DEADLINE).unwrap() == m, "echo of a {n}-byte message differs");
    }
    drop(parent);
    assert_success(child);
}

#[test]
fn different_types_each_way() {
    let (parent, child_end) = Connection::<String, usize>::pair().unwrap();
    let child = in_child(&[&child_end], || {
        while let Ok(s) = child_end.recv() {
            child_end.send(&s.chars().count()).map_err(msg)?;
        }
        Ok(())
    });
    drop(child_end);
    for s in ["", "a", "héllo wörld", &"x".repeat(100_000)] {
        parent.send(&s.to_string()).unwrap();
        assert_eq!(parent.recv_timeout(DEADLINE).unwrap(), s.chars().count());
    }
    drop(parent);
    assert_success(child);
}

#[test]
fn raw_and_typed_over_two_pipes() {
    let (to_child_rx, to_child_tx) = pipe::<Msg>().unwrap();
    let (to_parent_rx, to_parent_tx) = pipe::<Msg>().unwrap();
    let child = in_child(&[&to_child_rx, &to_parent_tx], || {
        // Raw first, then typed, each echoed back.
        for _ in SIZES {
            let bytes = to_child_rx.recv_bytes().map_err(msg)?;
            to_parent_tx.send_bytes(&bytes).map_err(msg)?;
        }
        loop {
            match to_child_rx.recv() {
                Ok(m) => to_parent_tx.send(&m).map_err(msg)?,
                Err(Error::Closed) => return Ok(()),
                Err(e) => return Err(msg(e)),
            }
        }
    });
    drop((to_child_rx, to_parent_tx));
    for (i, &n) in SIZES.iter().enumerate() {
        let sent = payload(n, i as u8);
        to_child_tx.send_bytes(&sent).unwrap();
        assert!(to_parent_rx.recv_bytes_timeout(DEADLINE).unwrap() == sent, "raw echo of {n} bytes");
    }
    for (i, &n) in SIZES.iter().enumerate() {
        let m = msg_of(n, i as u8);
        to_child_tx.send(&m).unwrap();
        assert!(to_parent_rx.recv_timeout(DEADLINE).unwrap() == m, "typed echo of {n} bytes");
    }
    drop(to_child_tx);
    assert!(matches!(to_parent_rx.recv_timeout(DEADLINE), Err(Error::Closed)));
    assert_success(child);
}

/// Values from nothing to past what a small send builds on the stack (256 bytes, its 4-byte
/// header included), typed over a pipe and a duplex connection: the frame on the wire is the
/// header and postcard's bytes, and a typed receive gives the value back, whichever path
/// (small or general) each side took. A thread does it all, so a broken frame (a receive
/// that would wait for bytes never sent) fails the test at the deadline instead of hanging.
#[test]
fn values_around_the_small_frame_size_are_postcards_bytes() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (rx, tx) = pipe::<Vec<u8>>().unwrap();
        let (a, b) = duplex::<(String, Vec<u32>)>().unwrap();
        for len in 0..300usize {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            tx.send(&bytes).unwrap();
            assert_eq!(rx.recv_bytes().unwrap(), postcard::to_allocvec(&bytes).unwrap(), "pipe, {len} bytes");
            tx.send(&bytes).unwrap();
            assert_eq!(rx.recv().unwrap(), bytes, "pipe, {len} bytes");
            // Varints of every length, pushed one at a time, and a string extended whole.
            let value =
                ("é".repeat(len % 7), (0..len as u32 / 3).map(|i| i.wrapping_mul(0x0101_0101)).collect());
            a.send(&value).unwrap();
            assert_eq!(b.recv_bytes().unwrap(), postcard::to_allocvec(&value).unwrap(), "duplex, {len}");
            a.send(&value).unwrap();
            assert_eq!(b.recv().unwrap(), value, "duplex, {len}");
        }
        done_tx.send(()).unwrap();
    });
    done_rx.recv_timeout(DEADLINE).expect("every value came back before the deadline");
}
