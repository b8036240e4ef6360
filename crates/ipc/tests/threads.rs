//! Several threads on one end: frames never interleave.

use std::sync::Arc;

use mproc_ipc::{Error, duplex, pipe};

use crate::support::DEADLINE;

const THREADS: usize = 8;
const PER_THREAD: usize = 200;

/// A frame that says who sent it and can be checked whole: thread, sequence number, and a
/// body whose every byte is derived from both. Sizes cross `PIPE_BUF` and the pipe buffer.
fn frame_for(thread: usize, seq: usize) -> Vec<u8> {
    let len = [0, 1, 100, 4090, 5000, 70_000][(thread + seq) % 6];
    let mut out = vec![thread as u8, (seq >> 8) as u8, seq as u8];
    out.extend((0..len).map(|i| (i + thread * 7 + seq) as u8));
    out
}

fn check(frames: Vec<Vec<u8>>) {
    let mut next = [0usize; THREADS];
    for f in frames {
        let (thread, seq) = (f[0] as usize, (f[1] as usize) << 8 | f[2] as usize);
        assert_eq!(seq, next[thread], "frames of one thread arrive in order");
        assert!(f == frame_for(thread, seq), "frame {seq} of thread {thread} arrived whole");
        next[thread] += 1;
    }
    assert_eq!(next, [PER_THREAD; THREADS], "every frame arrived");
}

#[test]
fn eight_threads_send_on_one_pipe() {
    let (rx, tx) = pipe::<()>().unwrap();
    let tx = Arc::new(tx);
    let senders: Vec<_> = (0..THREADS)
        .map(|t| {
            let tx = Arc::clone(&tx);
            std::thread::spawn(move || (0..PER_THREAD).for_each(|s| tx.send_bytes(&frame_for(t, s)).unwrap()))
        })
        .collect();
    drop(tx);
    let mut frames = Vec::new();
    loop {
        match rx.recv_bytes_timeout(DEADLINE) {
            Ok(f) => frames.push(f),
            Err(Error::Closed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    senders.into_iter().for_each(|s| s.join().unwrap());
    check(frames);
}

#[test]
fn eight_threads_send_typed_on_one_connection_while_one_receives() {
    let (a, b) = duplex::<Vec<u8>>().unwrap();
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let a = &a;
            scope.spawn(move || (0..PER_THREAD).for_each(|s| a.send(&frame_for(t, s)).unwrap()));
        }
        let frames = (0..THREADS * PER_THREAD).map(|_| b.recv_timeout(DEADLINE).unwrap()).collect();
        check(frames);
    });
}

#[test]
fn threads_receiving_on_one_end_each_get_whole_frames() {
    let (rx, tx) = pipe::<Vec<u8>>().unwrap();
    let received = std::thread::scope(|scope| {
        let receivers: Vec<_> = (0..4)
            .map(|_| {
                let rx = &rx;
                scope.spawn(move || {
                    let mut got = Vec::new();
                    while let Ok(f) = rx.recv_timeout(DEADLINE) {
                        got.push(f);
                    }
                    got
                })
            })
            .collect();
        for s in 0..PER_THREAD {
            tx.send(&frame_for(s % THREADS, s)).unwrap();
        }
        drop(tx);
        receivers.into_iter().flat_map(|r| r.join().unwrap()).collect::<Vec<_>>()
    });
    assert_eq!(received.len(), PER_THREAD);
    for f in received {
        let seq = (f[1] as usize) << 8 | f[2] as usize;
        assert!(f == frame_for(f[0] as usize, seq), "frame {seq} arrived whole");
    }
}
