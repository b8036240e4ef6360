//! Connections between processes that did not start one another: Python's
//! `multiprocessing.connection.Listener` and `Client`, over Unix and TCP sockets.

use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixSocketAddr, UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::SocketFlags;

use crate::address::Address;
use crate::duplex::Connection;
use crate::end::{End, Kind};
#[cfg(doc)]
use crate::error::AuthError;
use crate::error::{Error, Result};
use crate::handshake::{DEFAULT_TIMEOUT, Handshake};
use crate::wait::{Waitable, far_future, poll_until};

/// The authkey and what goes with it, for either side.
#[derive(Clone)]
struct AuthOptions {
    authkey: Option<Vec<u8>>,
    allow_legacy_md5: bool,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for AuthOptions {
    /// Whether there is a key, never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthOptions")
            .field("authkey", &self.authkey.as_ref().map(|_| "<hidden>"))
            .field("allow_legacy_md5", &self.allow_legacy_md5)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

impl AuthOptions {
    fn new() -> Self {
        AuthOptions { authkey: None, allow_legacy_md5: false, handshake_timeout: DEFAULT_TIMEOUT }
    }

    fn handshake(&self) -> Option<Handshake> {
        self.authkey.as_ref().map(|key| Handshake {
            authkey: key.clone(),
            allow_legacy_md5: self.allow_legacy_md5,
            timeout: self.handshake_timeout,
        })
    }
}

/// Takes over a connected socket: `TCP_NODELAY` on TCP, then the handshake if there is a key.
fn open<S, R>(fd: OwnedFd, handshake: Option<&Handshake>, listening: bool) -> Result<Connection<S, R>> {
    let kind = Kind::of(fd.as_fd());
    if kind == Kind::NetSocket {
        rustix::net::sockopt::set_tcp_nodelay(&fd, true)?;
    }
    let mut end = End::new(fd, kind);
    match handshake {
        Some(handshake) if listening => handshake.serve(&mut end)?,
        Some(handshake) => handshake.connect(&mut end)?,
        None => {}
    }
    Ok(Connection::from_end(end))
}

/// Accepts connections at an [`Address`]: Python's `multiprocessing.connection.Listener`.
///
/// [`accept`](Self::accept) gives a [`Connection`], the same type a [`duplex`](crate::duplex)
/// end is: typed and byte sends, `poll`, [`wait`](crate::wait), timeouts, and (on Unix sockets)
/// ends inside values. With an authkey, each connection is authenticated before `accept`
/// returns it (see [`ListenerBuilder::authkey`]); a connection whose handshake fails is an
/// error from that `accept` alone, and the next `accept` goes on.
///
/// ```
/// # fn main() -> mproc_ipc::Result<()> {
/// use mproc_ipc::{Client, Connection, Listener};
/// use std::net::Ipv4Addr;
///
/// let listener = Listener::bind((Ipv4Addr::LOCALHOST, 0), Some(b"secret"))?;
/// let address = listener.address().clone(); // the port the kernel picked
/// let client = std::thread::spawn(move || -> mproc_ipc::Result<()> {
///     let conn: Connection<String> = Client::connect(&address, Some(b"secret"))?;
///     conn.send(&"hello".to_string())
/// });
/// let conn: Connection<String> = listener.accept()?;
/// assert_eq!(conn.recv()?, "hello");
/// client.join().unwrap()?;
/// # Ok(()) }
/// ```
///
/// A Unix socket file is removed when the listener that made it is dropped (in the process
/// that bound it, and only if the file is still that socket). The listener's fd is
/// close-on-exec and non-blocking (accepted connections are blocking, as every end is).
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    address: Address,
    handshake: Option<Handshake>,
    socket_file: Option<SocketFile>,
}

/// A Unix socket file this process made, to remove when its listener is dropped.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    pid: rustix::process::Pid,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn remove_if_ours(&self) {
        if rustix::process::getpid() != self.pid {
            return; // a forked copy: the file is its parent's
        }
        match rustix::fs::lstat(&self.path) {
            Ok(st) if st.st_dev == self.dev && st.st_ino == self.ino => {
                let _ = rustix::fs::unlink(&self.path);
            }
            _ => {} // gone, or another socket now: not ours to remove
        }
    }
}

impl Listener {
    /// Listens at `address` with `authkey` (`None`: no authentication, as in Python). Port 0
    /// picks a free port; [`address`](Self::address) tells which.
    ///
    /// [`Listener::builder`] sets the rest: the legacy digest, the handshake's deadline.
    pub fn bind(address: impl Into<Address>, authkey: Option<&[u8]>) -> Result<Listener> {
        let mut builder = Listener::builder(address);
        builder.auth.authkey = authkey.map(<[u8]>::to_vec);
        builder.bind()
    }

    /// A listener to configure before it binds.
    pub fn builder(address: impl Into<Address>) -> ListenerBuilder {
        ListenerBuilder { address: address.into(), auth: AuthOptions::new() }
    }

    /// Where the listener listens (with the port the kernel picked for port 0).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Waits for the next connection and authenticates it (when there is a key), then
    /// returns it. An error concerns that one connection (a peer that failed or did not
    /// finish the handshake: [`Error::Authentication`]; a peer that hung up during it:
    /// [`Error::Closed`]), unless the listener itself failed ([`Error::Io`]); either way the
    /// next `accept` goes on.
    pub fn accept<S, R>(&self) -> Result<Connection<S, R>> {
        self.accept_until(None)
    }

    /// As [`accept`](Self::accept), giving up with [`Error::Timeout`] if no connection arrives
    /// within `timeout` (the handshake of one that arrives has its own deadline).
    pub fn accept_timeout<S, R>(&self, timeout: Duration) -> Result<Connection<S, R>> {
        self.accept_until(Some(Instant::now().checked_add(timeout).unwrap_or_else(far_future)))
    }

    fn accept_until<S, R>(&self, deadline: Option<Instant>) -> Result<Connection<S, R>> {
        let fd = loop {
            match rustix::net::accept_with(&self.fd, SocketFlags::CLOEXEC) {
                Ok(fd) => break fd,
                Err(Errno::AGAIN) => {
                    let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
                    if poll_until(&mut fds, deadline)? == 0 {
                        return Err(Error::Timeout);
                    }
                }
                // A peer that gave up before we took it; a signal.
                Err(Errno::CONNABORTED | Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        };
        open(fd, self.handshake.as_ref(), true)
    }

    /// Takes a connection that has arrived, without waiting for one and without its
    /// handshake: `Ok(None)` if none is waiting. [`Incoming::authenticate`] then runs the
    /// handshake (with its deadline), on any thread: a server that authenticates connections
    /// side by side is not held up by a peer that connects and says nothing, as it is with
    /// [`accept`](Self::accept), which authenticates one connection at a time.
    pub fn try_accept_incoming<S, R>(&self) -> Result<Option<Incoming<S, R>>> {
        loop {
            match rustix::net::accept_with(&self.fd, SocketFlags::CLOEXEC) {
                Ok(fd) => {
                    return Ok(Some(Incoming {
                        fd,
                        handshake: self.handshake.clone(),
                        _marker: PhantomData,
                    }));
                }
                Err(Errno::AGAIN) => return Ok(None),
                // A peer that gave up before we took it; a signal.
                Err(Errno::CONNABORTED | Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Stops listening (dropping the listener does the same), removing its socket file.
    pub fn close(self) {}
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(file) = &self.socket_file {
            file.remove_if_ours();
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A listener is ready when a connection waits to be accepted (the handshake may still wait).
impl Waitable for Listener {
    fn wait_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Configures a [`Listener`] before it binds: `Listener::builder(address)...bind()`.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until bind"]
pub struct ListenerBuilder {
    address: Address,
    auth: AuthOptions,
}

impl ListenerBuilder {
    /// Authenticates every connection with `authkey`: both sides prove they hold it by
    /// answering the other's random challenge with an HMAC-SHA256, as CPython 3.12+ does.
    /// Unset: no authentication.
    ///
    /// Processes of one family share `mproc_process::current_process().authkey()`, a natural
    /// key for them (Python's managers use it so); processes that did not start one another
    /// need a key they both know. The key never crosses the connection.
    pub fn authkey(mut self, authkey: &[u8]) -> Self {
        self.auth.authkey = Some(authkey.to_vec());
        self
    }

    /// Whether peers that speak only the legacy HMAC-MD5 handshake (Python 3.11 and earlier)
    /// are accepted (default: no, and such a peer gets [`AuthError::LegacyMd5`], which names
    /// this option).
    pub fn allow_legacy_md5(mut self, allow: bool) -> Self {
        self.auth.allow_legacy_md5 = allow;
        self
    }

    /// How long a connection may take over its handshake before `accept` gives up on it with
    /// [`AuthError::Timeout`] (default 5 s), so a silent or slow peer cannot hold `accept`.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.auth.handshake_timeout = timeout;
        self
    }

    /// Binds and listens. A Unix socket path that exists already is an error
    /// (`AddrInUse`), as in Python.
    pub fn bind(self) -> Result<Listener> {
        let (fd, address, socket_file) = match self.address {
            Address::Tcp(addr) => {
                let listener = std::net::TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                let bound = listener.local_addr()?;
                (OwnedFd::from(listener), Address::Tcp(bound), None)
            }
            Address::Unix(path) => {
                let listener = UnixListener::bind(&path)?;
                listener.set_nonblocking(true)?;
                let st = rustix::fs::lstat(&path)?;
                let pid = rustix::process::getpid();
                let file = SocketFile { path: path.clone(), pid, dev: st.st_dev, ino: st.st_ino };
                (OwnedFd::from(listener), Address::Unix(path), Some(file))
            }
            Address::Abstract(name) => {
                let listener = UnixListener::bind_addr(&UnixSocketAddr::from_abstract_name(&name)?)?;
                listener.set_nonblocking(true)?;
                (OwnedFd::from(listener), Address::Abstract(name), None)
            }
        };
        Ok(Listener { fd, address, handshake: self.auth.handshake(), socket_file })
    }
}

/// A connection a [`Listener`] took ([`Listener::try_accept_incoming`]) and has not
/// authenticated yet: [`authenticate`](Self::authenticate) makes it a [`Connection`]. Its fd
/// ([`AsFd`]) is the connected socket, close-on-exec: shutting it down (`shutdown(2)`, on a
/// duplicate too) fails a handshake in progress at once.
pub struct Incoming<S, R = S> {
    fd: OwnedFd,
    handshake: Option<Handshake>,
    _marker: PhantomData<fn(S) -> R>,
}

impl<S, R> std::fmt::Debug for Incoming<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").field("fd", &self.fd).finish_non_exhaustive()
    }
}

impl<S, R> Incoming<S, R> {
    /// Runs the handshake, as [`Listener::accept`] does (with the listener's key and
    /// deadline; nothing when it has no key): the connection, or why this peer failed.
    pub fn authenticate(self) -> Result<Connection<S, R>> {
        open(self.fd, self.handshake.as_ref(), true)
    }
}

impl<S, R> AsFd for Incoming<S, R> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Connects to a [`Listener`], ours or Python's: `multiprocessing.connection.Client`.
///
/// `Client::connect(address, authkey)` connects with the defaults; [`Client::builder`] sets
/// the legacy digest and the handshake's deadline. See [`Listener`] for an example.
#[derive(Debug)]
pub enum Client {}

impl Client {
    /// Connects to `address` and, with an `authkey`, authenticates (see
    /// [`ListenerBuilder::authkey`]); `None` connects without a handshake, as in Python.
    pub fn connect<S, R>(address: impl Into<Address>, authkey: Option<&[u8]>) -> Result<Connection<S, R>> {
        let mut builder = Client::builder(address);
        builder.auth.authkey = authkey.map(<[u8]>::to_vec);
        builder.connect()
    }

    /// A connection to configure before it is made.
    pub fn builder(address: impl Into<Address>) -> ClientBuilder {
        ClientBuilder { address: address.into(), auth: AuthOptions::new() }
    }
}

/// Configures a connection before it is made: `Client::builder(address)...connect()`.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until connect"]
pub struct ClientBuilder {
    address: Address,
    auth: AuthOptions,
}

impl ClientBuilder {
    /// Authenticates with `authkey` (see [`ListenerBuilder::authkey`]).
    pub fn authkey(mut self, authkey: &[u8]) -> Self {
        self.auth.authkey = Some(authkey.to_vec());
        self
    }

    /// Whether a listener that speaks only the legacy HMAC-MD5 handshake (Python 3.11 and
    /// earlier) is answered in kind (default: no, [`AuthError::LegacyMd5`]).
    pub fn allow_legacy_md5(mut self, allow: bool) -> Self {
        self.auth.allow_legacy_md5 = allow;
        self
    }

    /// How long connecting (TCP) and the handshake may take (default 5 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.auth.handshake_timeout = timeout;
        self
    }

    /// Connects and authenticates.
    pub fn connect<S, R>(self) -> Result<Connection<S, R>> {
        let fd = match &self.address {
            Address::Tcp(addr) => {
                OwnedFd::from(std::net::TcpStream::connect_timeout(addr, self.auth.handshake_timeout)?)
            }
            Address::Unix(path) => OwnedFd::from(UnixStream::connect(path)?),
            Address::Abstract(name) => {
                OwnedFd::from(UnixStream::connect_addr(&UnixSocketAddr::from_abstract_name(name)?)?)
            }
        };
        open(fd, self.auth.handshake().as_ref(), false)
    }
}
