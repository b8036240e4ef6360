//! `Listener` / `Client` against CPython's `multiprocessing.connection`, both ways, with every
//! Python 3 on the machine (`python3` and each `python3.N` on `PATH`).
//!
//! CPython 3.12+ speaks the `{sha256}` handshake; 3.11 and earlier only legacy HMAC-MD5. A
//! Python older than 3.12 is run twice: as it is (the legacy handshake, which works with
//! `allow_legacy_md5(true)` and fails clearly without it), and with [`SHIM`], a small module
//! written for these tests (not copied from CPython) that replaces
//! `multiprocessing.connection`'s `deliver_challenge` and `answer_challenge` with the 3.12
//! handshake as 3.12 speaks it to a 3.12 peer, so the modern path meets a real CPython
//! `Listener`, `Client` and `Connection` too.

use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use mproc_ipc::{Address, AuthError, Client, Connection, Error, Listener};

use crate::listener::socket_path;
use crate::support::DEADLINE;

const KEY: &[u8] = b"shared with python";

/// The 3.12 handshake for an older CPython, patched into `multiprocessing.connection`.
const SHIM: &str = r##"
import hmac, os
import multiprocessing.connection as mpc

PREFIX = b"{sha256}"

def _mac(key, message):
    return hmac.new(key, message, "sha256").digest()

def deliver_challenge(conn, authkey):
    challenge = PREFIX + os.urandom(40)
    conn.send_bytes(b"#CHALLENGE#" + challenge)
    answer = conn.recv_bytes(256)
    if answer.startswith(PREFIX) and hmac.compare_digest(answer[len(PREFIX):], _mac(authkey, challenge)):
        conn.send_bytes(b"#WELCOME#")
    else:
        conn.send_bytes(b"#FAILURE#")
        raise mpc.AuthenticationError("digest received was wrong")

def answer_challenge(conn, authkey):
    message = conn.recv_bytes(256)
    if not message.startswith(b"#CHALLENGE#" + PREFIX):
        raise mpc.AuthenticationError("expected a {sha256} challenge")
    conn.send_bytes(PREFIX + _mac(authkey, message[len(b"#CHALLENGE#"):]))
    if conn.recv_bytes(256) != b"#WELCOME#":
        raise mpc.AuthenticationError("digest sent was rejected")

mpc.deliver_challenge = deliver_challenge
mpc.answer_challenge = answer_challenge
"##;

/// The Python side. `argv`: shim (0/1), role (client/listener), family, address, key (`-`:
/// none), what (echo/pickle). Exits 3 on `AuthenticationError`, after saying so on stderr.
const PEER: &str = r##"
import socket, sys
shim, role, family, address, key, what = sys.argv[1:7]
if shim == "1":
    exec(sys.argv[7])
from multiprocessing import connection
from multiprocessing.connection import Listener, Client, Connection, AuthenticationError
key = None if key == "-" else key.encode()

def python_address(address):
    if family in ("tcp4", "tcp6"):
        host, port = address.rsplit(":", 1)
        return (host.strip("[]"), int(port))
    return "\0" + address if family == "abstract" else address

def show(address):
    if family == "tcp4":
        return "%s:%d" % address[:2]
    if family == "tcp6":
        return "[%s]:%d" % address[:2]
    return address.lstrip("\0") if isinstance(address, str) else address.lstrip(b"\0").decode()

try:
    if role == "client":
        if family == "tcp6":
            # Client() takes every tuple for IPv4: connect as it does, on an IPv6 socket.
            s = socket.create_connection(python_address(address))
            conn = Connection(s.detach())
            if key is not None:
                connection.answer_challenge(conn, key)
                connection.deliver_challenge(conn, key)
        else:
            conn = Client(python_address(address), authkey=key)
    else:
        listener = Listener(python_address(address), family="AF_INET6" if family == "tcp6" else None, authkey=key)
        print(show(listener.address), flush=True)
        conn = listener.accept()
except AuthenticationError as e:
    print("AuthenticationError:", e, file=sys.stderr)
    sys.exit(3)

if what == "echo":
    while (m := conn.recv_bytes()) != b"quit":
        conn.send_bytes(m[::-1])
    conn.send_bytes(b"bye")
else:
    expected = (-7, "h\u00e9llo", [1, 2, 3], {"a": (1, ("x", True)), "b": (2, ("y", False))})
    got = conn.recv()
    assert got == expected, got
    conn.send(got)
    conn.send((2**40, "from python", [], {}))
"##;

/// One CPython on this machine.
#[derive(Debug)]
struct Python {
    exe: PathBuf,
    minor: u32,
}

/// Every `python3` and `python3.N` on `PATH`, each interpreter once.
fn pythons() -> Vec<Python> {
    let mut found: Vec<Python> = Vec::new();
    let mut seen = Vec::new();
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for name in names {
            let name = name.to_string_lossy();
            let versioned = name
                .strip_prefix("python3.")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if name != "python3" && !versioned {
                continue;
            }
            let exe = dir.join(&*name);
            // The interpreter itself, so links and shims (pyenv's) to one Python count once;
            // a shim that finds no interpreter fails here and is skipped.
            let probe = "import os, sys; print(sys.version_info[1], os.path.realpath(sys.executable))";
            let Ok(out) = Command::new(&exe).args(["-c", probe]).stderr(Stdio::null()).output() else {
                continue;
            };
            let out = String::from_utf8_lossy(&out.stdout).into_owned();
            let Some((minor, real)) = out.trim().split_once(' ') else { continue };
            let Ok(minor) = minor.parse() else { continue };
            if seen.iter().any(|s| s == real) {
                continue;
            }
            seen.push(real.to_string());
            // Run the interpreter itself: a shim costs a program start every time.
            found.push(Python { exe: real.into(), minor });
        }
    }
    assert!(!found.is_empty(), "python3 must be installed: the interop tests need a real CPython peer");
    found
}

/// How a Python peer authenticates.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Speaks {
    /// The `{sha256}` handshake: a 3.12+ Python, or an older one with [`SHIM`].
    Modern,
    /// A Python before 3.12 as it is.
    LegacyMd5,
}

/// The ways each Python is run.
fn modes(python: &Python) -> Vec<Speaks> {
    if python.minor >= 12 { vec![Speaks::Modern] } else { vec![Speaks::Modern, Speaks::LegacyMd5] }
}

struct Peer {
    child: Child,
    name: String,
}

fn start(
    python: &Python,
    speaks: Speaks,
    role: &str,
    family: &str,
    address: &str,
    key: Option<&[u8]>,
    what: &str,
) -> Peer {
    let shim = python.minor < 12 && speaks == Speaks::Modern;
    let key = key.map_or("-".to_string(), |k| String::from_utf8(k.to_vec()).unwrap());
    let child = Command::new(&python.exe)
        .args(["-c", PEER, if shim { "1" } else { "0" }, role, family, address, &key, what, SHIM])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let name = format!("{} ({speaks:?}) as {role} on {family} {address}", python.exe.display());
    Peer { child, name }
}

impl Peer {
    /// The first line the Python listener prints: its address, with the port it got.
    fn address(&mut self, family: &str) -> Address {
        let stdout = self.child.stdout.as_mut().unwrap();
        let mut line = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        while !line.ends_with(b"\n") {
            let ready =
                mproc_ipc::wait(&[&stdout.as_fd()], Some(deadline.saturating_duration_since(Instant::now())));
            assert!(!ready.unwrap().is_empty(), "{}: no address within {DEADLINE:?}", self.name);
            let mut byte = [0];
            assert_eq!(stdout.read(&mut byte).unwrap(), 1, "{}: ended before its address", self.name);
            line.push(byte[0]);
        }
        let line = String::from_utf8(line).unwrap();
        let line = line.trim();
        match family {
            "tcp4" | "tcp6" => Address::Tcp(line.parse().unwrap()),
            "abstract" => Address::abstract_name(line),
            _ => PathBuf::from(line).into(),
        }
    }

    /// Waits (at most the deadline, then kills) and returns how Python ended.
    fn ended(mut self) -> Ended {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
        if mproc_ipc::wait(&[&pidfd], Some(DEADLINE)).unwrap().is_empty() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!("{}: still running after {DEADLINE:?}: killed", self.name);
        }
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        // Python has exited: its stderr ends.
        let mut stderr = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        Ended { code, stderr }
    }
}

/// How a Python peer ended: its exit code (3: `AuthenticationError`) and what it wrote to stderr.
#[derive(Debug)]
struct Ended {
    code: i32,
    stderr: String,
}

impl Ended {
    fn authentication_error(&self) -> bool {
        self.code == 3 && self.stderr.starts_with("AuthenticationError:")
    }
}

/// A fresh address of `family` for our listener (TCP: port 0), and how Python spells it.
fn our_address(family: &str) -> Address {
    match family {
        "tcp4" => (Ipv4Addr::LOCALHOST, 0).into(),
        "tcp6" => (Ipv6Addr::LOCALHOST, 0).into(),
        "unix" => socket_path("py").into(),
        _ => Address::abstract_name(socket_path("py-abstract").file_name().unwrap().as_encoded_bytes()),
    }
}

fn python_spelling(address: &Address) -> String {
    match address {
        Address::Abstract(name) => String::from_utf8(name.clone()).unwrap(),
        other => other.to_string(),
    }
}

/// Where a Python listener listens: TCP port 0, or a fresh name.
fn python_address(family: &str) -> String {
    match family {
        "tcp4" => "127.0.0.1:0".into(),
        "tcp6" => "[::1]:0".into(),
        _ => python_spelling(&our_address(family)),
    }
}

const FAMILIES: [&str; 4] = ["tcp4", "tcp6", "unix", "abstract"];

/// Bytes both ways, Python echoing each message reversed, then "bye" and its close.
fn echo(conn: &Connection<(), ()>, who: &str) {
    for n in [0usize, 1, 255, 256, 4096, 70_000] {
        let sent: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
        conn.send_bytes(&sent).unwrap();
        let back = conn.recv_bytes_timeout(DEADLINE).unwrap();
        assert!(back.iter().rev().eq(sent.iter()), "{who}: echo of {n} bytes");
    }
    conn.send_bytes(b"quit").unwrap();
    assert_eq!(conn.recv_bytes_timeout(DEADLINE).unwrap(), b"bye", "{who}");
    assert!(matches!(conn.recv_bytes_timeout(DEADLINE), Err(Error::Closed)), "{who}: python closed");
}

/// A Python `Client` to our `Listener`: what our `accept` gave, and Python's exit code.
fn python_client(
    python: &Python,
    speaks: Speaks,
    family: &str,
    listener: &Listener,
    key: Option<&[u8]>,
    exchange: impl FnOnce(&Connection<(), ()>, &str),
) -> (mproc_ipc::Result<()>, Ended) {
    let peer = start(python, speaks, "client", family, &python_spelling(listener.address()), key, "echo");
    let accepted = listener.accept_timeout::<(), ()>(DEADLINE).map(|conn| exchange(&conn, &peer.name));
    (accepted, peer.ended())
}

/// Our `Client` to a Python `Listener`: what our `connect` gave, and Python's exit code.
fn python_listener(
    python: &Python,
    speaks: Speaks,
    family: &str,
    key: Option<&[u8]>,
    client: impl FnOnce(Address) -> mproc_ipc::Result<Connection<(), ()>>,
) -> (mproc_ipc::Result<()>, Ended) {
    let mut peer = start(python, speaks, "listener", family, &python_address(family), key, "echo");
    let address = peer.address(family);
    let connected = client(address).map(|conn| echo(&conn, &peer.name));
    (connected, peer.ended())
}

#[test]
fn python_clients_and_listeners_with_the_right_key_or_none() {
    for python in pythons() {
        for family in FAMILIES {
            // No key: as Python, no handshake at all (two families suffice for that).
            let keys: &[Option<&[u8]>] = if family.starts_with("tcp6") || family == "abstract" {
                &[Some(KEY)]
            } else {
                &[Some(KEY), None]
            };
            for &key in keys {
                let speaks = Speaks::Modern;
                let listener = Listener::bind(our_address(family), key).unwrap();
                let (ours, theirs) = python_client(&python, speaks, family, &listener, key, echo);
                ours.unwrap();
                assert_eq!(theirs.code, 0, "{python:?} client on {family}: {theirs:?}");
                let (ours, theirs) =
                    python_listener(&python, speaks, family, key, |a| Client::connect(a, key));
                ours.unwrap();
                assert_eq!(theirs.code, 0, "{python:?} listener on {family}: {theirs:?}");
            }
        }
    }
}

#[test]
fn a_wrong_key_fails_on_both_sides() {
    for python in pythons() {
        for speaks in modes(&python) {
            for family in ["tcp4", "unix"] {
                let listener = Listener::builder(our_address(family))
                    .authkey(KEY)
                    .allow_legacy_md5(true)
                    .bind()
                    .unwrap();
                let (ours, theirs) = python_client(&python, speaks, family, &listener, Some(b"wrong"), echo);
                assert!(
                    matches!(ours, Err(Error::Authentication(AuthError::WrongDigest))),
                    "{python:?} {speaks:?}: {ours:?}"
                );
                assert!(
                    theirs.authentication_error(),
                    "{python:?} {speaks:?}: Python's AuthenticationError: {theirs:?}"
                );

                let (ours, theirs) = python_listener(&python, speaks, family, Some(b"wrong"), |a| {
                    Client::builder(a).authkey(KEY).allow_legacy_md5(true).connect()
                });
                assert!(
                    matches!(ours, Err(Error::Authentication(AuthError::Rejected))),
                    "{python:?} {speaks:?}: {ours:?}"
                );
                assert!(
                    theirs.authentication_error(),
                    "{python:?} {speaks:?}: Python's AuthenticationError: {theirs:?}"
                );
            }
        }
    }
}

/// A Python before 3.12 as it is: the legacy digest works when allowed, and fails clearly on
/// both sides when not.
#[test]
fn legacy_md5_pythons_work_when_allowed_and_fail_clearly_otherwise() {
    for python in pythons().into_iter().filter(|p| p.minor < 12) {
        let speaks = Speaks::LegacyMd5;
        for family in ["tcp4", "unix"] {
            let listener =
                Listener::builder(our_address(family)).authkey(KEY).allow_legacy_md5(true).bind().unwrap();
            let (ours, theirs) = python_client(&python, speaks, family, &listener, Some(KEY), echo);
            ours.unwrap();
            assert_eq!(theirs.code, 0, "{python:?} legacy client, allowed: {theirs:?}");
            let (ours, theirs) = python_listener(&python, speaks, family, Some(KEY), |a| {
                Client::builder(a).authkey(KEY).allow_legacy_md5(true).connect()
            });
            ours.unwrap();
            assert_eq!(theirs.code, 0, "{python:?} legacy listener, allowed: {theirs:?}");

            let listener = Listener::bind(our_address(family), Some(KEY)).unwrap();
            let (ours, theirs) = python_client(&python, speaks, family, &listener, Some(KEY), echo);
            let Err(e @ Error::Authentication(AuthError::LegacyMd5)) = ours else {
                panic!("{python:?}: {ours:?}")
            };
            assert!(e.to_string().contains("allow_legacy_md5(true)"), "the error names the option: {e}");
            assert!(theirs.authentication_error(), "{python:?}: Python's AuthenticationError: {theirs:?}");
            let (ours, theirs) =
                python_listener(&python, speaks, family, Some(KEY), |a| Client::connect(a, Some(KEY)));
            assert!(matches!(ours, Err(Error::Authentication(AuthError::LegacyMd5))), "{python:?}: {ours:?}");
            assert!(theirs.authentication_error(), "{python:?}: Python's AuthenticationError: {theirs:?}");
        }
    }
}

/// Python objects both ways (the `pickle` feature): ints, strings, lists, dicts, nested tuples.
#[cfg(feature = "pickle")]
#[test]
fn pickled_values_both_ways_with_python() {
    use std::collections::BTreeMap;
    type Value = (i64, String, Vec<i64>, BTreeMap<String, (i64, (String, bool))>);
    let ours: Value = (
        -7,
        "h\u{e9}llo".into(),
        vec![1, 2, 3],
        BTreeMap::from([("a".into(), (1, ("x".into(), true))), ("b".into(), (2, ("y".into(), false)))]),
    );
    for python in pythons() {
        for family in ["tcp4", "unix"] {
            let listener = Listener::bind(our_address(family), Some(KEY)).unwrap();
            let peer = start(
                &python,
                Speaks::Modern,
                "client",
                family,
                &python_spelling(listener.address()),
                Some(KEY),
                "pickle",
            );
            let conn: Connection<Value> = listener.accept_timeout(DEADLINE).unwrap();
            conn.send_pickle(&ours).unwrap();
            assert_eq!(conn.recv_pickle_timeout(DEADLINE).unwrap(), ours, "{}", peer.name);
            let theirs: (i64, String, Vec<i64>, BTreeMap<String, i64>) =
                conn.cast::<(), _>().recv_pickle_timeout(DEADLINE).unwrap();
            assert_eq!(theirs, (1 << 40, "from python".into(), vec![], BTreeMap::new()));
            let ended = peer.ended();
            assert_eq!(ended.code, 0, "{ended:?}");
        }
    }
}

/// Which Pythons the tests above ran with, for the log (`--nocapture`).
#[test]
fn pythons_found() {
    for python in pythons() {
        println!("python peer: {} (3.{})", python.exe.display(), python.minor);
    }
}
