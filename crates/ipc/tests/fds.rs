//! File descriptors: close-on-exec, ownership, handing ends to a child, and `wait`.

use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::time::Duration;

use mproc_ipc::{Connection, Error, Receiver, Sender, duplex, pipe, wait};

use crate::support::{DEADLINE, assert_cloexec, assert_success, from_raw, in_child, msg};

#[test]
fn every_end_is_close_on_exec_until_made_inheritable() {
    let (rx, tx) = pipe::<u8>().unwrap();
    let (a, b) = duplex::<u8>().unwrap();
    assert_cloexec(&rx);
    assert_cloexec(&tx);
    assert_cloexec(&a);
    assert_cloexec(&b);
    a.set_inheritable(true).unwrap();
    let flags = rustix::io::fcntl_getfd(&a).unwrap();
    assert!(!flags.contains(rustix::io::FdFlags::CLOEXEC));
    a.set_inheritable(false).unwrap();
    assert_cloexec(&a);
}

#[test]
fn raw_fd_round_trip_keeps_the_end_working() {
    let (rx, tx) = pipe::<String>().unwrap();
    let raw = tx.into_raw_fd();
    let tx: Sender<String> = from_raw(raw);
    tx.send(&"via raw fd".into()).unwrap();
    let rx: Receiver<String> = Receiver::from(OwnedFd::from(rx));
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), "via raw fd");
    assert!(format!("{rx:?}").contains(&rx.as_raw_fd().to_string()));
}

#[test]
fn cast_changes_the_type_not_the_stream() {
    let (a, b) = duplex::<u32>().unwrap();
    a.send(&5).unwrap();
    let b: Connection<String, u32> = b.cast();
    assert_eq!(b.recv_timeout(DEADLINE).unwrap(), 5);
    b.send(&"five".into()).unwrap();
    assert!(matches!(a.recv_timeout(DEADLINE), Err(Error::Decode(_))), "a string is not a u32");
}

#[test]
fn pipe_end_handed_to_a_child_by_fork() {
    let (rx, tx) = pipe::<Vec<u32>>().unwrap();
    let (back_rx, back_tx) = pipe::<u32>().unwrap();
    let child = in_child(&[&rx, &back_tx], || {
        let v = rx.recv().map_err(msg)?;
        back_tx.send(&v.iter().sum()).map_err(msg)
    });
    drop((rx, back_tx));
    tx.send(&(1..=100).collect()).unwrap();
    assert_eq!(back_rx.recv_timeout(DEADLINE).unwrap(), 5050);
    assert_success(child);
}

#[test]
fn wait_reports_ready_ends_in_order() {
    let (rx1, tx1) = pipe::<u8>().unwrap();
    let (rx2, tx2) = pipe::<u8>().unwrap();
    let (c1, c2) = duplex::<u8>().unwrap();
    assert_eq!(wait(&[&rx1, &rx2, &c1], Some(Duration::from_millis(5))).unwrap(), Vec::<usize>::new());
    tx2.send(&1).unwrap();
    c2.send(&2).unwrap();
    assert_eq!(wait(&[&rx1, &rx2, &c1], Some(DEADLINE)).unwrap(), vec![1, 2]);
    // A closed peer counts as ready: the receive reports it at once.
    drop(tx1);
    assert_eq!(wait(&[&rx1], None).unwrap(), vec![0]);
    assert!(matches!(rx1.recv(), Err(Error::Closed)));
    assert!(rx2.poll(None).unwrap());
}

#[test]
fn wait_wakes_when_a_child_writes() {
    let (rx, tx) = pipe::<u8>().unwrap();
    let (_idle_rx, idle_tx) = pipe::<u8>().unwrap();
    let child = in_child(&[&tx], || tx.send(&9).map_err(msg));
    drop(tx);
    assert_eq!(wait(&[&_idle_rx, &rx], Some(DEADLINE)).unwrap(), vec![1]);
    assert_eq!(rx.recv().unwrap(), 9);
    drop(idle_tx);
    assert_success(child);
}

/// Counts this process's open fds.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Handoff {
    label: String,
    reply: Sender<String>,
    requests: Receiver<u32>,
}

#[test]
fn ends_travel_inside_values_over_a_connection() {
    let (parent, child_end) = duplex::<Handoff>().unwrap();
    let child = in_child(&[&child_end], || {
        let before = open_fds();
        let Handoff { label, reply, requests } = child_end.recv().map_err(msg)?;
        assert_cloexec(&reply);
        assert_cloexec(&requests);
        if open_fds() != before + 2 {
            return Err(format!("expected exactly 2 new fds, {} -> {}", before, open_fds()));
        }
        while let Ok(n) = requests.recv() {
            reply.send(&format!("{label} {n}")).map_err(msg)?;
        }
        Ok(())
    });
    drop(child_end);
    // Made after the fork: the child can only have these ends by receiving them.
    let (reply_rx, reply_tx) = pipe::<String>().unwrap();
    let (req_rx, req_tx) = pipe::<u32>().unwrap();
    parent.send(&Handoff { label: "got".into(), reply: reply_tx, requests: req_rx }).unwrap();
    for n in 0..3 {
        req_tx.send(&n).unwrap();
        assert_eq!(reply_rx.recv_timeout(DEADLINE).unwrap(), format!("got {n}"));
    }
    drop(req_tx);
    // The sender's own copies went with the value it sent: only the child holds the reply end.
    assert!(matches!(reply_rx.recv_timeout(DEADLINE), Err(Error::Closed)));
    assert_success(child);
}

#[test]
fn ends_cannot_travel_over_a_pipe_or_outside_a_send() {
    let (rx, tx) = pipe::<Receiver<u8>>().unwrap();
    let (inner_rx, _inner_tx) = pipe::<u8>().unwrap();
    let err = tx.send(&inner_rx).unwrap_err();
    assert!(matches!(err, Error::FdPassing(_)), "{err}");
    assert!(rx.try_recv().unwrap().is_none(), "nothing was sent");
    let err = postcard::to_allocvec(&inner_rx).unwrap_err();
    assert!(err.to_string().contains("serialize") || matches!(err, postcard::Error::SerdeSerCustom), "{err}");
    assert!(postcard::from_bytes::<Receiver<u8>>(&[0]).is_err());
}

#[test]
fn fds_that_cannot_be_delivered_are_closed() {
    // In a child: it has no other threads opening fds, so counting them is exact.
    let child = in_child(&[], || {
        let (a, b) = duplex::<Vec<Receiver<u8>>>().map_err(msg)?;
        let base = open_fds();
        let ends: Vec<_> = (0..3).map(|_| pipe::<u8>().unwrap().0).collect();
        let made = open_fds();
        // Received as raw bytes, as the wrong type, and whole: only the last keeps its fds.
        for _ in 0..3 {
            a.send(&ends).map_err(msg)?;
        }
        drop(ends);
        b.recv_bytes().map_err(msg)?;
        let wrong: Connection<(), u64> = Connection::from(OwnedFd::from(b));
        wrong.recv().map(drop).map_err(msg).err().ok_or("a Vec is not a u64")?;
        let b: Connection<(), Vec<Receiver<u8>>> = wrong.cast();
        let kept = b.recv().map_err(msg)?;
        if kept.len() != 3 || open_fds() != base + 3 {
            return Err(format!("fds: {base} at start, {made} with the ends, {} at the end", open_fds()));
        }
        Ok(())
    });
    assert_success(child);
}

#[test]
fn frames_read_ahead_keep_their_own_fds_and_pin_the_end() {
    let (a, b) = duplex::<Option<Receiver<u8>>>().unwrap();
    let (inner_rx, inner_tx) = pipe::<u8>().unwrap();
    a.send(&None).unwrap();
    a.send(&Some(inner_rx)).unwrap();
    a.send(&None).unwrap();
    // The first receive reads the frame with the end too (the kernel stops after it).
    assert!(b.recv_timeout(DEADLINE).unwrap().is_none());
    assert!(b.poll(Some(Duration::ZERO)).unwrap(), "the frame read ahead counts as ready");
    assert_eq!(wait(&[&b], Some(Duration::ZERO)).unwrap(), vec![0]);

    // Holding a frame read ahead, `b` cannot travel: the frame would stay behind.
    let (carrier, _far) = duplex::<Connection<Option<Receiver<u8>>>>().unwrap();
    let err = carrier.send(&b).unwrap_err();
    assert!(matches!(err, Error::FdPassing(why) if why.contains("read ahead")), "{err}");

    let rx = b.recv_timeout(DEADLINE).unwrap().expect("the frame with the end");
    inner_tx.send(&7).unwrap();
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), 7, "the fd went to its own frame");
    assert!(b.recv_timeout(DEADLINE).unwrap().is_none());
    carrier.send(&b).unwrap();
}

#[test]
fn exact_reads_leave_later_frames_to_another_reader() {
    let (rx, tx) = pipe::<u32>().unwrap();
    rx.set_read_ahead(false);
    for n in 0..4 {
        tx.send(&n).unwrap();
    }
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), 0);
    // Another process reading the same pipe finds the rest in the kernel, not in our buffer.
    let child = in_child(&[&rx], || match (rx.recv(), rx.recv()) {
        (Ok(1), Ok(2)) => Ok(()),
        other => Err(format!("the child read {other:?}")),
    });
    assert_success(child);
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), 3);
}
