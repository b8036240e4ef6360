//! Interoperability with CPython: a `python3` child holds the other end as a
//! `multiprocessing.connection.Connection` and speaks `send_bytes` / `recv_bytes` with us.

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use mproc_ipc::{Error, duplex, pipe};

use crate::support::{DEADLINE, assert_success, in_child, msg};

/// The Python side: echoes every message reversed until it gets b"quit", then sends one
/// message of each size in `SIZES` and a closing b"done".
const PEER: &str = r#"
import os, sys
from multiprocessing.connection import Connection
mode = sys.argv[1]
if mode == "duplex":
    rx = tx = Connection(os.dup(0))
else:
    rx = Connection(os.dup(0), writable=False)
    tx = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # nothing else may write into our pipe
while True:
    m = rx.recv_bytes()
    if m == b"quit":
        break
    tx.send_bytes(m[::-1])
for n in (0, 1, 4096, 70000, 1 << 20):
    tx.send_bytes((bytes(range(256)) * (n // 256 + 1))[:n])
tx.send_bytes(b"done")
"#;

const SIZES: [usize; 6] = [0, 1, 100, 4096, 65537, 3 << 20];

fn python(mode: &str, stdin: OwnedFd, stdout: Option<OwnedFd>) -> std::process::Child {
    Command::new("python3")
        .args(["-c", PEER, mode])
        .stdin(Stdio::from(stdin))
        .stdout(stdout.map_or_else(Stdio::null, Stdio::from))
        .spawn()
        .expect("python3 must be installed: the interop tests need a real CPython peer")
}

fn python_pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| i as u8).collect()
}

fn ours(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

/// Waits for the Python child, at most the suite's deadline: a forked watcher holding the
/// child's pidfd kills it past that, so `wait` cannot hang.
fn wait_python(mut child: std::process::Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
    let watcher = in_child(&[&pidfd], || {
        if !mproc_ipc::wait(&[&pidfd], Some(DEADLINE)).map_err(msg)?.is_empty() {
            return Ok(());
        }
        let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
        Err(format!("python3 (pid {pid:?}) ran past the deadline and was killed"))
    });
    let status = child.wait().unwrap();
    assert_success(watcher);
    assert!(status.success(), "python3 peer failed: {status}");
}

fn exchange(send: impl Fn(&[u8]) -> mproc_ipc::Result<()>, recv: impl Fn() -> mproc_ipc::Result<Vec<u8>>) {
    for n in SIZES {
        let sent = ours(n);
        send(&sent).unwrap();
        let back = recv().unwrap();
        assert_eq!(back.len(), n);
        assert!(back.iter().rev().eq(sent.iter()), "python echo of {n} bytes differs");
    }
    send(b"quit").unwrap();
    for n in [0, 1, 4096, 70000, 1 << 20] {
        assert_eq!(recv().unwrap(), python_pattern(n), "python's {n}-byte message");
    }
    assert_eq!(recv().unwrap(), b"done");
    assert!(matches!(recv(), Err(Error::Closed)), "python closed its end");
}

#[test]
fn python_peer_over_duplex() {
    let (ours_end, theirs) = duplex::<()>().unwrap();
    let child = python("duplex", theirs.into(), None);
    exchange(|b| ours_end.send_bytes(b), || ours_end.recv_bytes_timeout(DEADLINE));
    wait_python(child);
}

#[test]
fn python_peer_over_pipes() {
    let (py_rx, to_py) = pipe::<()>().unwrap();
    let (from_py, py_tx) = pipe::<()>().unwrap();
    let child = python("pipes", py_rx.into(), Some(py_tx.into()));
    exchange(|b| to_py.send_bytes(b), || from_py.recv_bytes_timeout(DEADLINE));
    wait_python(child);
}

/// An end made inheritable survives `exec`: a Python program reaches it by its number.
#[test]
fn inheritable_end_survives_exec() {
    let (ours_end, theirs) = duplex::<()>().unwrap();
    // Exec from a forked child, so the inheritable fd cannot leak into programs that other
    // test threads start meanwhile.
    let child = in_child(&[&theirs], || {
        theirs.set_inheritable(true).map_err(msg)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&theirs);
        let script = "import os,sys\nfrom multiprocessing.connection import Connection\n\
                      c = Connection(int(sys.argv[1]))\nc.send_bytes(b'got:' + c.recv_bytes())\n";
        let status = Command::new("python3").args(["-c", script, &fd.to_string()]).status().map_err(msg)?;
        if status.success() { Ok(()) } else { Err(format!("python3: {status}")) }
    });
    drop(theirs);
    ours_end.send_bytes(b"across exec").unwrap();
    assert_eq!(ours_end.recv_bytes_timeout(DEADLINE).unwrap(), b"got:across exec");
    assert_success(child);
}
