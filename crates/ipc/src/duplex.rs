//! Two-way connections on a Unix socket pair: Python's `Pipe()` / `Pipe(duplex=True)`.

use std::marker::PhantomData;
use std::time::Duration;

use rustix::net::{AddressFamily, SocketFlags, SocketType};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::end::{End, Kind, impl_end_traits};
#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;
use crate::fdpass::impl_end_serde;
use crate::sys::impl_from_raw_fd;

/// Creates a two-way connection carrying `T` both ways, on a Unix stream socket pair.
///
/// For a different type in each direction, use [`Connection::pair`].
///
/// ```
/// # fn main() -> mproc_ipc::Result<()> {
/// let (a, b) = mproc_ipc::duplex::<u64>()?;
/// a.send(&41)?;
/// b.send(&(b.recv()? + 1))?;
/// assert_eq!(a.recv()?, 42);
/// # Ok(()) }
/// ```
pub fn duplex<T>() -> Result<(Connection<T>, Connection<T>)> {
    Connection::pair()
}

/// One end of a two-way connection: sends `S`, receives `R`.
///
/// Sending and receiving are independent (one thread may block in `recv` while another
/// sends). `&Connection` may be shared between threads: frames never interleave and each
/// receive takes one whole frame.
pub struct Connection<S, R = S> {
    end: End,
    _marker: PhantomData<Directions<S, R>>,
}

/// Sends `S`, receives `R`: the end is `Send + Sync` whatever the types, as it holds neither.
type Directions<S, R> = (fn(&S), fn() -> R);

impl<S, R> Connection<S, R> {
    /// Creates a connected pair where the first end sends `S` and receives `R`, and the
    /// second the other way round.
    ///
    /// ```
    /// # fn main() -> mproc_ipc::Result<()> {
    /// use mproc_ipc::Connection;
    /// let (client, server) = Connection::<String, usize>::pair()?;
    /// client.send(&"four".to_string())?;
    /// server.send(&server.recv()?.len())?;
    /// assert_eq!(client.recv()?, 4);
    /// # Ok(()) }
    /// ```
    pub fn pair() -> Result<(Connection<S, R>, Connection<R, S>)> {
        let (a, b) =
            rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
        Ok((Connection::from_end(End::new(a, Kind::Socket)), Connection::from_end(End::new(b, Kind::Socket))))
    }

    pub(crate) fn from_end(end: End) -> Self {
        Connection { end, _marker: PhantomData }
    }

    /// Sends `value` as one frame (postcard inside CPython's framing). [`Error::Closed`] if
    /// the peer is gone.
    #[inline]
    pub fn send(&self, value: &S) -> Result<()>
    where
        S: Serialize,
    {
        self.end.send(value)
    }

    /// Sends `bytes` as one raw frame, as Python's `Connection.send_bytes`.
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<()> {
        self.end.send_bytes(bytes)
    }

    /// Sends `value` as one frame without waiting for room: `Ok(true)` once the frame is
    /// taken, `Ok(false)` if the socket has no room now (nothing was sent: try again once
    /// the end is writable, as an event loop reports).
    ///
    /// A frame larger than the room left is taken in part: the rest stays in this end and
    /// goes out before any later frame, by [`try_flush`](Self::try_flush) or by the next send.
    /// Until it has gone, the peer holds half a frame, so flush before dropping the end.
    pub fn try_send(&self, value: &S) -> Result<bool>
    where
        S: Serialize,
    {
        self.end.try_send(value)
    }

    /// [`send_bytes`](Self::send_bytes) without waiting for room, as [`try_send`](Self::try_send).
    pub fn try_send_bytes(&self, bytes: &[u8]) -> Result<bool> {
        self.end.try_send_bytes(bytes)
    }

    /// Writes, without waiting, the rest of a frame [`try_send`](Self::try_send) took in
    /// part: `Ok(true)` once nothing is left.
    pub fn try_flush(&self) -> Result<bool> {
        self.end.try_flush()
    }

    /// Receives the next value, blocking until a whole frame has arrived.
    ///
    /// [`Error::Closed`] when the peer is gone and everything it sent was read;
    /// [`Error::Decode`] if the frame is not an `R` (the next receive goes on after it).
    #[inline]
    pub fn recv(&self) -> Result<R>
    where
        R: DeserializeOwned,
    {
        self.end.recv(None)
    }

    /// As [`recv`](Self::recv), but gives up with [`Error::Timeout`] after `timeout`. A
    /// message that had arrived in part is kept for the next receive.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<R>
    where
        R: DeserializeOwned,
    {
        self.end.recv(Some(timeout))
    }

    /// Receives a value if a whole one can be had without waiting.
    pub fn try_recv(&self) -> Result<Option<R>>
    where
        R: DeserializeOwned,
    {
        self.end.try_recv()
    }

    /// Receives the next frame as raw bytes, as Python's `Connection.recv_bytes`.
    pub fn recv_bytes(&self) -> Result<Vec<u8>> {
        self.end.recv_bytes(None)
    }

    /// As [`recv_bytes`](Self::recv_bytes), giving up with [`Error::Timeout`] after `timeout`.
    pub fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>> {
        self.end.recv_bytes(Some(timeout))
    }

    /// Receives the next frame into `buf`, replacing its contents and reusing its capacity;
    /// returns the frame's length.
    pub fn recv_bytes_into(&self, buf: &mut Vec<u8>) -> Result<usize> {
        self.end.recv_bytes_into(buf, None)
    }

    /// Whether there is anything to read (data, or the peer's end of file), waiting up to
    /// `timeout` (`None`: for ever). As Python's `Connection.poll`.
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool> {
        self.end.poll(timeout)
    }

    /// The largest frame this end accepts ([`DEFAULT_MAX_MESSAGE_SIZE`](crate::DEFAULT_MAX_MESSAGE_SIZE)
    /// unless set). Larger frames fail with [`Error::TooLarge`] before any allocation.
    pub fn max_message_size(&self) -> usize {
        self.end.max_message_size()
    }

    /// Sets the largest frame this end accepts.
    pub fn set_max_message_size(&mut self, max: usize) {
        self.end.set_max_message_size(max);
    }

    /// Whether receives may read ahead (on by default); see [`Receiver::set_read_ahead`](crate::Receiver::set_read_ahead).
    pub fn set_read_ahead(&self, on: bool) {
        self.end.set_read_ahead(on);
    }

    /// Whether the fd survives `exec` into another program (it is close-on-exec by default).
    ///
    /// Making an fd inheritable lets every program started by any thread of this process
    /// inherit it until it is made close-on-exec again; prefer setting it in the child
    /// between `fork` and `exec`.
    pub fn set_inheritable(&self, inheritable: bool) -> Result<()> {
        self.end.set_inheritable(inheritable)
    }

    /// Closes the end now (dropping it does the same); the peer's receives then report
    /// [`Error::Closed`] after the last message, when no other copy of this end is open.
    pub fn close(self) {}

    /// The same end, carrying other types.
    pub fn cast<S2, R2>(self) -> Connection<S2, R2> {
        Connection::from_end(self.end)
    }
}

impl_end_traits!(Connection<S, R>);
impl_end_serde!(Connection<S, R>);
impl_from_raw_fd!(
    Connection<S, R>,
    "a connected stream socket (or anything both readable and writable)"
);
