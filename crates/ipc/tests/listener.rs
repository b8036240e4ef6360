//! `Listener` and `Client` between Rust ends: every kind of address, keys right and wrong, fds
//! on Unix and TCP connections, and hostile peers (huge headers, garbage, silence, 1,000
//! connections that each give up somewhere in the handshake).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use mproc_ipc::{Address, AuthError, Client, Connection, Error, Listener, Sender, pipe};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::support::{DEADLINE, assert_cloexec, assert_success, in_child, msg};

const KEY: &[u8] = b"the family secret";

/// A socket path nobody else uses, under the temp dir.
pub fn socket_path(what: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("mproc-{what}-{}-{n}.sock", std::process::id()))
}

/// Every kind of address, each on a fresh name (TCP on port 0).
pub fn addresses(what: &str) -> Vec<Address> {
    let name = socket_path(what);
    vec![
        (Ipv4Addr::LOCALHOST, 0).into(),
        (Ipv6Addr::LOCALHOST, 0).into(),
        name.clone().into(),
        Address::abstract_name(name.file_name().unwrap().as_encoded_bytes()),
    ]
}

/// Connects from another thread with `client`: what `accept` gave, and the client's thread.
fn pair<T: Send + 'static>(
    listener: &Listener,
    client: impl FnOnce(Address) -> T + Send + 'static,
) -> (mproc_ipc::Result<Connection<String>>, std::thread::JoinHandle<T>) {
    let address = listener.address().clone();
    let client = std::thread::spawn(move || client(address));
    (listener.accept_timeout(DEADLINE), client)
}

#[test]
fn typed_round_trips_over_every_address_with_and_without_a_key() {
    for key in [Some(KEY), None] {
        for address in addresses("roundtrip") {
            let listener = Listener::bind(address.clone(), key).unwrap();
            assert_cloexec(&listener);
            if let Address::Tcp(bound) = listener.address() {
                assert_ne!(bound.port(), 0, "the kernel's port is reported");
            }
            let (server, client) = pair(&listener, move |address| {
                let conn: Connection<String> = Client::connect(address.clone(), key)?;
                if let Address::Tcp(_) = address {
                    assert!(rustix::net::sockopt::tcp_nodelay(&conn)?, "TCP_NODELAY on connected ends");
                }
                conn.send(&"ping".to_string())?;
                conn.recv_timeout(DEADLINE)
            });
            let server = server.unwrap();
            assert_cloexec(&server);
            if let Address::Tcp(_) = address {
                assert!(rustix::net::sockopt::tcp_nodelay(&server).unwrap(), "TCP_NODELAY on accepted ends");
            }
            assert_eq!(server.recv_timeout(DEADLINE).unwrap(), "ping", "{address} key {key:?}");
            server.send(&"pong".to_string()).unwrap();
            assert_eq!(client.join().unwrap().unwrap(), "pong", "{address}");
            assert!(server.poll(Some(DEADLINE)).unwrap(), "the client's close is seen");
            assert!(matches!(server.recv_timeout(DEADLINE), Err(Error::Closed)));
        }
    }
}

#[test]
fn unix_socket_file_is_removed_with_its_listener_only() {
    let path = socket_path("unlink");
    let listener = Listener::bind(path.as_path(), None).unwrap();
    assert!(path.exists());
    assert!(
        matches!(Listener::bind(path.as_path(), None), Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::AddrInUse),
        "a path in use is an error, as in Python"
    );
    drop(listener);
    assert!(!path.exists(), "dropping the listener removes its socket file");
    // A listener whose file was replaced by another socket leaves that one alone.
    let first = Listener::bind(path.as_path(), None).unwrap();
    std::fs::remove_file(&path).unwrap();
    let second = Listener::bind(path.as_path(), None).unwrap();
    drop(first);
    assert!(path.exists(), "the second listener's socket stays");
    drop(second);
    assert!(!path.exists(), "dropping the listener removes its socket file");
}

#[test]
fn a_wrong_key_fails_both_sides_clearly_and_the_listener_goes_on() {
    let listener = Listener::bind((Ipv4Addr::LOCALHOST, 0), Some(KEY)).unwrap();
    let (server, client) =
        pair(&listener, |address| Client::connect::<String, String>(address, Some(b"guess")));
    let client = client.join().unwrap();
    assert!(matches!(server, Err(Error::Authentication(AuthError::WrongDigest))), "{server:?}");
    assert!(matches!(client, Err(Error::Authentication(AuthError::Rejected))), "{client:?}");
    let shown = server.unwrap_err().to_string();
    assert!(shown.starts_with("authentication failed: "), "{shown}");
    // The key never shows in a Debug.
    let secret = String::from_utf8_lossy(KEY).into_owned();
    for shown in [
        format!("{listener:?}"),
        format!("{:?}", Listener::builder(listener.address()).authkey(KEY)),
        format!("{:?}", Client::builder(listener.address()).authkey(KEY)),
    ] {
        assert!(!shown.contains(&secret) && !shown.contains(&format!("{:?}", KEY)), "{shown}");
    }

    let (server, client) = pair(&listener, |address| Client::connect::<String, String>(address, Some(KEY)));
    server.unwrap();
    client.join().unwrap().unwrap();
}

#[test]
fn fds_travel_over_unix_listener_connections_and_are_refused_over_tcp() {
    #[derive(Serialize, Deserialize)]
    struct Carrier {
        tx: Sender<u32>,
    }
    for address in addresses("fds") {
        let listener = Listener::bind(address.clone(), Some(KEY)).unwrap();
        let address = listener.address().clone();
        let client = std::thread::spawn(move || Client::connect::<Carrier, Carrier>(address, Some(KEY)));
        let server: Connection<Carrier> = listener.accept_timeout(DEADLINE).unwrap();
        let client = client.join().unwrap().unwrap();
        let (rx, tx) = pipe::<u32>().unwrap();
        let sent = client.send(&Carrier { tx });
        if listener.address().carries_fds() {
            sent.unwrap();
            let Carrier { tx } = server.recv_timeout(DEADLINE).unwrap();
            tx.send(&7).unwrap();
            assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), 7);
        } else {
            let Err(Error::FdPassing(why)) = sent else { panic!("an end over TCP: {sent:?}") };
            assert!(why.contains("TCP"), "{why}");
            // Nothing went: the connection carries on.
            client.cast::<String, String>().send(&"after".to_string()).unwrap();
            assert_eq!(server.cast::<String, String>().recv_timeout(DEADLINE).unwrap(), "after");
        }
    }
}

/// A raw client: the framing by hand, nothing of ours.
struct Raw(TcpStream);

impl Raw {
    fn connect(listener: &Listener) -> Raw {
        let Address::Tcp(addr) = listener.address() else { panic!("tcp listener") };
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        Raw(stream)
    }

    fn send(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        self.0.write_all(&frame)
    }

    fn recv(&mut self) -> std::io::Result<Vec<u8>> {
        let mut len = [0; 4];
        self.0.read_exact(&mut len)?;
        let mut payload = vec![0; u32::from_be_bytes(len) as usize];
        self.0.read_exact(&mut payload)?;
        Ok(payload)
    }

    /// Sets `SO_LINGER` to 0, so closing resets the connection instead of ending it.
    fn reset_on_close(&self) {
        rustix::net::sockopt::set_socket_linger(&self.0, Some(Duration::ZERO)).unwrap();
    }
}

fn answer(challenge: &[u8]) -> Vec<u8> {
    let message = challenge.strip_prefix(b"#CHALLENGE#").expect("a challenge");
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
    mac.update(message);
    [&b"{sha256}"[..], &mac.finalize().into_bytes()].concat()
}

#[test]
fn a_huge_header_before_authentication_is_refused_unread() {
    let listener = Listener::bind((Ipv4Addr::LOCALHOST, 0), Some(KEY)).unwrap();
    let headers = [
        // 2^31 bytes in the long form (-1 and 8 bytes), 2^31 - 1 and 257 in the short one.
        [&(-1i32).to_be_bytes()[..], &(1u64 << 31).to_be_bytes()].concat(),
        0x7fff_ffffu32.to_be_bytes().to_vec(),
        257u32.to_be_bytes().to_vec(),
        // -2^31: no sender writes that.
        0x8000_0000u32.to_be_bytes().to_vec(),
    ];
    for header in headers {
        let invalid = header == 0x8000_0000u32.to_be_bytes();
        let mut raw = Raw::connect(&listener);
        let client = std::thread::spawn(move || {
            let _challenge = raw.recv().unwrap();
            // The header, and none of the body.
            raw.0.write_all(&header).unwrap();
            raw
        });
        let accepted = listener.accept_timeout::<(), ()>(DEADLINE);
        let Err(Error::Authentication(AuthError::Protocol(why))) = &accepted else { panic!("{accepted:?}") };
        assert!(why.contains(if invalid { "invalid frame header" } else { "at most 256" }), "{why}");
        drop(client.join().unwrap());
    }
    // And a listener that answers with one: the client refuses it the same way.
    let hostile = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = hostile.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = hostile.accept().unwrap();
        s.write_all(&0x7fff_ffffu32.to_be_bytes()).unwrap();
        s
    });
    let client = Client::connect::<(), ()>(addr, Some(KEY));
    assert!(matches!(client, Err(Error::Authentication(AuthError::Protocol(_)))), "{client:?}");
    drop(server.join().unwrap());
}

#[test]
fn garbage_instead_of_an_answer_fails_that_connection_only() {
    let listener = Listener::bind((Ipv4Addr::LOCALHOST, 0), Some(KEY)).unwrap();
    let garbage: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\n\r\n",
        &[0xff; 7],
        &[0; 3],
        b"\0\0\0\x30{sha256}not a digest at all, but long enough!",
    ];
    for bytes in garbage {
        let mut raw = Raw::connect(&listener);
        let client = std::thread::spawn(move || {
            let _challenge = raw.recv().unwrap();
            raw.0.write_all(bytes).unwrap();
            raw.0.shutdown(std::net::Shutdown::Write).unwrap();
            // What the listener says back, if anything: #FAILURE# to an answer it could read.
            raw.recv().ok()
        });
        let accepted = listener.accept_timeout::<(), ()>(DEADLINE);
        assert!(
            matches!(accepted, Err(Error::Authentication(_) | Error::Truncated { .. } | Error::Closed)),
            "{bytes:?}: {accepted:?}"
        );
        if let Some(reply) = client.join().unwrap() {
            assert_eq!(reply, b"#FAILURE#");
        }
    }
    let (server, client) = pair(&listener, |address| Client::connect::<String, String>(address, Some(KEY)));
    server.unwrap();
    client.join().unwrap().unwrap();
}

#[test]
fn a_silent_client_meets_the_deadline_and_others_still_get_in() {
    // The deadline applies to the good client's handshake too: long enough for a loaded
    // machine to finish one, short enough to wait out once.
    const LIMIT: Duration = Duration::from_secs(1);
    let listener =
        Listener::builder((Ipv4Addr::LOCALHOST, 0)).authkey(KEY).handshake_timeout(LIMIT).bind().unwrap();
    let silent = Raw::connect(&listener);
    let accepted = listener.accept_timeout::<(), ()>(DEADLINE);
    assert!(
        matches!(accepted, Err(Error::Authentication(AuthError::Timeout(t))) if t == LIMIT),
        "{accepted:?}"
    );
    let (server, client) = pair(&listener, |address| Client::connect::<String, String>(address, Some(KEY)));
    server.unwrap();
    client.join().unwrap().unwrap();
    drop(silent);
    // A listener nobody connects to gives up when asked to.
    assert!(matches!(listener.accept_timeout::<(), ()>(Duration::from_millis(1)), Err(Error::Timeout)));

    // And the other way round: a client facing a silent listener.
    let hostile = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let client = Client::builder(hostile.local_addr().unwrap())
        .authkey(KEY)
        .handshake_timeout(Duration::from_millis(200))
        .connect::<(), ()>();
    assert!(matches!(client, Err(Error::Authentication(AuthError::Timeout(_)))), "{client:?}");
}

/// Timeouts too long to add to now (`Duration::MAX`) mean "no deadline", not a panic.
#[test]
fn endless_timeouts_are_no_deadline() {
    let listener = Listener::builder((Ipv4Addr::LOCALHOST, 0))
        .authkey(KEY)
        .handshake_timeout(Duration::MAX)
        .bind()
        .unwrap();
    let address = listener.address().clone();
    let client = std::thread::spawn(move || {
        Client::builder(address)
            .authkey(KEY)
            .handshake_timeout(Duration::from_secs(1 << 40))
            .connect::<(), ()>()
    });
    listener.accept_timeout::<(), ()>(Duration::MAX).unwrap();
    client.join().unwrap().unwrap();
}

#[test]
fn a_listener_is_waitable_with_ends() {
    let listener = Listener::bind((Ipv4Addr::LOCALHOST, 0), Some(KEY)).unwrap();
    let (other, _keep) = mproc_ipc::duplex::<()>().unwrap();
    assert!(mproc_ipc::wait(&[&listener, &other], Some(Duration::ZERO)).unwrap().is_empty());
    let address = listener.address().clone();
    let client = std::thread::spawn(move || Client::connect::<String, String>(address, Some(KEY)));
    assert_eq!(mproc_ipc::wait(&[&listener, &other], Some(DEADLINE)).unwrap(), [0]);
    let server: Connection<String> = listener.accept_timeout(DEADLINE).unwrap();
    let client = client.join().unwrap().unwrap();
    client.send(&"ready".into()).unwrap();
    assert_eq!(mproc_ipc::wait(&[&other, &server], Some(DEADLINE)).unwrap(), [1]);
    assert_eq!(server.recv_timeout(DEADLINE).unwrap(), "ready");
}

/// Where a hostile client stops: 0 at once, 9 never (a whole handshake, then it hangs up).
const STOPS: u64 = 10;

/// Runs one client that follows the protocol up to `stop`, then closes (or resets, when
/// `reset`). Whether the listener could have taken it: only a client that finished.
fn hostile_client(listener: &Listener, stop: u64, reset: bool) -> std::io::Result<()> {
    let mut raw = Raw::connect(listener);
    if reset {
        raw.reset_on_close();
    }
    if stop == 0 {
        return Ok(());
    }
    let challenge = raw.recv()?;
    if stop == 1 {
        return Ok(());
    }
    let mut answer = answer(&challenge);
    if stop == 2 {
        return raw.0.write_all(&[0, 0]); // half a header
    }
    if stop == 3 {
        let mut frame = (answer.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&answer[..10]);
        return raw.0.write_all(&frame); // a cut answer
    }
    if stop == 4 {
        answer[20] ^= 1; // a wrong one
    }
    raw.send(&answer)?;
    if stop <= 5 {
        return Ok(());
    }
    let _welcome = raw.recv()?;
    if stop == 6 {
        return Ok(());
    }
    let ours = [&b"#CHALLENGE#{sha256}"[..], &[7; 40]].concat();
    raw.send(&ours)?;
    if stop == 7 {
        return Ok(());
    }
    let _their_answer = raw.recv()?;
    if stop == 8 {
        return Ok(());
    }
    raw.send(b"#WELCOME#")
}

/// 1,000 clients that each give up at a random point of the handshake (closing or resetting):
/// each fails its own `accept` only, nothing is left behind (fds, threads), and the listener
/// still serves. Run in a forked child, which has one thread and only its own fds, so the
/// counts are its own.
#[test]
fn a_thousand_clients_giving_up_mid_handshake_leave_nothing_behind() {
    let seed = {
        let mut b = [0; 8];
        rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).unwrap();
        u64::from_le_bytes(b)
    };
    let child = in_child(&[], move || {
        let fds = || std::fs::read_dir("/proc/self/fd").map(|d| d.count()).map_err(msg);
        let threads = || std::fs::read_dir("/proc/self/task").map(|d| d.count()).map_err(msg);
        let (fds_before, threads_before) = (fds()?, threads()?);
        let listener = Listener::bind((Ipv4Addr::LOCALHOST, 0), Some(KEY)).map_err(msg)?;
        let mut rng = seed;
        let mut plan = Vec::new();
        for _ in 0..1000 {
            // xorshift64: the seed, printed on failure, replays the run.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            plan.push((rng % STOPS, rng & (1 << 40) != 0));
        }
        let finished = plan.iter().filter(|(stop, _)| *stop == STOPS - 1).count();
        let listener = std::sync::Arc::new(listener);
        let clients = {
            let listener = listener.clone();
            std::thread::spawn(move || {
                for (stop, reset) in plan {
                    // The listener may already have hung up on a client that did wrong.
                    let _ = hostile_client(&listener, stop, reset);
                }
            })
        };
        let mut accepted = 0;
        for i in 0..1000 {
            match listener.accept_timeout::<(), ()>(DEADLINE) {
                Ok(_) => accepted += 1,
                Err(
                    Error::Closed | Error::Truncated { .. } | Error::Authentication(AuthError::WrongDigest),
                ) => {}
                Err(e) => return Err(format!("seed {seed:#x}: connection {i}: {e}")),
            }
        }
        clients.join().map_err(|_| "the clients' thread panicked")?;
        if accepted != finished {
            return Err(format!("seed {seed:#x}: {accepted} accepted, {finished} finished the handshake"));
        }
        // Still serving.
        let address = listener.address().clone();
        let client = std::thread::spawn(move || -> mproc_ipc::Result<String> {
            let conn: Connection<String> = Client::connect(address, Some(KEY))?;
            conn.recv_timeout(DEADLINE)
        });
        let server: Connection<String> = listener.accept_timeout(DEADLINE).map_err(msg)?;
        server.send(&"still here".into()).map_err(msg)?;
        let got = client.join().map_err(|_| "client panicked")?.map_err(msg)?;
        if got != "still here" {
            return Err(format!("got {got:?}"));
        }
        drop((server, listener));
        let (fds_after, threads_after) = (fds()?, threads()?);
        if (fds_after, threads_after) != (fds_before, threads_before) {
            return Err(format!(
                "seed {seed:#x}: fds {fds_before} -> {fds_after}, threads {threads_before} -> {threads_after}"
            ));
        }
        Ok(())
    });
    assert_success(child);
}
