//! One-way pipes: Python's `Pipe(duplex=False)`, with the direction in the types.

use std::marker::PhantomData;
use std::time::Duration;

use rustix::pipe::PipeFlags;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::end::{End, Kind, impl_end_traits};
#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;
use crate::fdpass::impl_end_serde;
use crate::sys::impl_from_raw_fd;

/// Creates a one-way pipe carrying values of type `T`: `(receiver, sender)`, in the order of
/// Python's `Pipe(duplex=False)`.
///
/// Both ends are close-on-exec; hand one to a child process by `fork` (it is inherited) or,
/// across `exec`, with [`Sender::set_inheritable`] / [`Receiver::set_inheritable`].
///
/// ```
/// # fn main() -> mproc_ipc::Result<()> {
/// let (rx, tx) = mproc_ipc::pipe::<String>()?;
/// tx.send(&"hello".to_string())?;
/// assert_eq!(rx.recv()?, "hello");
/// # Ok(()) }
/// ```
pub fn pipe<T>() -> Result<(Receiver<T>, Sender<T>)> {
    let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
    Ok((Receiver::from_end(End::new(read, Kind::Pipe)), Sender::from_end(End::new(write, Kind::Pipe))))
}

/// The sending end of a [`pipe`]: writes whole frames of `T` (or raw bytes).
///
/// `&Sender` may be shared between threads: each send holds the end for the whole frame, so
/// frames never interleave.
pub struct Sender<T> {
    end: End,
    _marker: PhantomData<fn(&T)>,
}

/// The receiving end of a [`pipe`]: reads whole frames as `T` (or raw bytes).
///
/// `&Receiver` may be shared between threads: each receive takes one whole frame.
pub struct Receiver<T> {
    end: End,
    _marker: PhantomData<fn() -> T>,
}

impl<T> Sender<T> {
    pub(crate) fn from_end(end: End) -> Self {
        Sender { end, _marker: PhantomData }
    }

    /// Sends `value` as one frame (postcard inside CPython's framing). Blocks while the pipe
    /// is full. [`Error::Closed`] if the receiving end is gone everywhere.
    #[inline]
    pub fn send(&self, value: &T) -> Result<()>
    where
        T: Serialize,
    {
        self.end.send(value)
    }

    /// Sends `bytes` as one raw frame, as Python's `Connection.send_bytes`.
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<()> {
        self.end.send_bytes(bytes)
    }

    /// Sends `value` as one frame without waiting for room: `Ok(true)` once the frame is
    /// taken, `Ok(false)` if the pipe has no room now (nothing was sent: try again once
    /// the end is writable, as an event loop reports).
    ///
    /// A frame larger than the room left is taken in part: the rest stays in this end and
    /// goes out before any later frame, by [`try_flush`](Self::try_flush) or by the next send.
    /// Until it has gone, the peer holds half a frame, so flush before dropping the end.
    pub fn try_send(&self, value: &T) -> Result<bool>
    where
        T: Serialize,
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

    /// Whether the fd survives `exec` into another program (it is close-on-exec by default).
    ///
    /// Making an fd inheritable lets every program started by any thread of this process
    /// inherit it until it is made close-on-exec again; prefer setting it in the child
    /// between `fork` and `exec`.
    pub fn set_inheritable(&self, inheritable: bool) -> Result<()> {
        self.end.set_inheritable(inheritable)
    }

    /// Closes the end now (dropping it does the same). The receiver sees [`Error::Closed`]
    /// once it has read everything sent before, when no other copy of this end is open.
    pub fn close(self) {}

    /// The same end, carrying another type.
    pub fn cast<U>(self) -> Sender<U> {
        Sender::from_end(self.end)
    }
}

impl<T> Receiver<T> {
    pub(crate) fn from_end(end: End) -> Self {
        Receiver { end, _marker: PhantomData }
    }

    /// Receives the next value, blocking until a whole frame has arrived.
    ///
    /// [`Error::Closed`] when the sender is gone and everything sent was read;
    /// [`Error::Decode`] if the frame is not a `T` (the next receive goes on after it).
    #[inline]
    pub fn recv(&self) -> Result<T>
    where
        T: DeserializeOwned,
    {
        self.end.recv(None)
    }

    /// As [`recv`](Self::recv), but gives up with [`Error::Timeout`] after `timeout`. A
    /// message that had arrived in part is kept for the next receive.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T>
    where
        T: DeserializeOwned,
    {
        self.end.recv(Some(timeout))
    }

    /// Receives a value if a whole one can be had without waiting.
    pub fn try_recv(&self) -> Result<Option<T>>
    where
        T: DeserializeOwned,
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

    /// Whether there is anything to read (data, or the sender's end of file), waiting up to
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

    /// Whether receives may read ahead (on by default).
    ///
    /// With read-ahead a receive takes whatever has arrived, up to 16 KiB, in one `read(2)`:
    /// a small message costs one syscall instead of two, and a burst of them far fewer. The
    /// frames read past the one returned wait inside this end, where [`poll`](Self::poll),
    /// [`wait`](crate::wait) and every later receive find them; nothing is lost or reordered.
    ///
    /// Turn it off for an end that several *processes* read in turns (a shared work queue):
    /// each receive then stops at the end of its own frame, so no frame waits in one reader's
    /// buffer while another reader starves. A copy made by `fork` holds what its parent had
    /// read ahead at that moment; an end holding read-ahead bytes refuses to be sent to
    /// another process (the bytes would stay behind).
    pub fn set_read_ahead(&self, on: bool) {
        self.end.set_read_ahead(on);
    }

    /// Whether the fd survives `exec` into another program; see [`Sender::set_inheritable`].
    pub fn set_inheritable(&self, inheritable: bool) -> Result<()> {
        self.end.set_inheritable(inheritable)
    }

    /// Closes the end now (dropping it does the same). Senders then get [`Error::Closed`]
    /// when no other copy of this end is open.
    pub fn close(self) {}

    /// The same end, carrying another type.
    pub fn cast<U>(self) -> Receiver<U> {
        Receiver::from_end(self.end)
    }
}

impl_end_traits!(Sender<T>);
impl_end_traits!(Receiver<T>);
impl_end_serde!(Sender<T>);
impl_end_serde!(Receiver<T>);
impl_from_raw_fd!(Sender<T>, "the write end of a pipe or a socket");
impl_from_raw_fd!(Receiver<T>, "the read end of a pipe or a socket");
