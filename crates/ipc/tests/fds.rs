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
    assert!(
        matches!(a.recv_timeout(DEADLINE), Err(Error::Decode(_))),
        "a string is not a u32"
    );
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
    assert_eq!(
        wait(&[&rx1, &rx2, &c1], Some(Duration::from_millis(5))).unwrap(),
        Vec::<usize>::new()
    );
    tx2.send(&1).unwrap();
    c2.send(&2).unwrap();
    assert_eq!(
        wait(&[&rx1, &rx2, &c1], Some(DEADLINE)).unwrap(),
        vec![1, 2]
    );
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
