//! `Async<T>`: an ipc end or a child process, awaited instead of blocked on.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;

use mproc_pool::ipc::{self, Connection, Receiver, Sender, Waitable};
use mproc_pool::process::{self, Process};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::executor::{Local, current};
use crate::reactor::Readiness;

/// An ipc end ([`Receiver`], [`Sender`], [`Connection`]) or a child [`Process`], registered with
/// the running executor's reactor, so a coroutine awaits it while the thread runs other
/// coroutines.
///
/// ```
/// use mproc_coroutine::{Async, Executor};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (a, b) = mproc_coroutine::ipc::duplex::<u32>()?;
/// let ex = Executor::new()?;
/// let total = ex.block_on(async {
///     let (a, b) = (Async::new(a)?, Async::new(b)?);
///     let echo = mproc_coroutine::spawn(async move {
///         while let Ok(n) = b.recv().await {
///             b.send(&(n * 2)).await?;
///         }
///         Ok::<_, mproc_coroutine::ipc::Error>(())
///     });
///     let mut total = 0;
///     for n in 1..=3 {
///         a.send(&n).await?;
///         total += a.recv().await?;
///     }
///     drop(a);
///     echo.await.unwrap()?;
///     Ok::<_, Box<dyn std::error::Error>>(total)
/// })?;
/// assert_eq!(total, 12);
/// # Ok(()) }
/// ```
pub struct Async<T: Waitable> {
    io: Option<T>,
    key: usize,
    local: Rc<Local>,
}

impl<T: Waitable + fmt::Debug> fmt::Debug for Async<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Async").field(&self.io).finish()
    }
}

impl<T: Waitable> Async<T> {
    /// Registers `io` with the executor running in this thread.
    ///
    /// Fails outside [`Executor::block_on`](crate::Executor::block_on) (and in a forked
    /// child of the process whose executor runs: the reactor belongs to the parent).
    pub fn new(io: T) -> io::Result<Async<T>> {
        let local = current().ok_or_else(|| {
            io::Error::other(
                "mproc_coroutine::Async::new outside Executor::block_on (or in a forked child of it)",
            )
        })?;
        let key = local.reactor.register(io.wait_fd())?;
        Ok(Async { io: Some(io), key, local })
    }

    /// The inner value.
    pub fn get_ref(&self) -> &T {
        self.io.as_ref().expect("present until into_inner")
    }

    /// Unregisters and returns the inner value.
    pub fn into_inner(mut self) -> T {
        let io = self.io.take().expect("present until into_inner");
        self.local.reactor.deregister(self.key, io.wait_fd());
        io
    }

    /// Waits until a receive would not wait for the fd: something arrived (or the peer is
    /// gone), or a frame is already buffered in the end. Ready at once if that is so now.
    pub async fn readable(&self) {
        if self.get_ref().ready() {
            return;
        }
        let io = self.get_ref();
        self.local.reactor.readiness(self.key, false, Some(io.wait_fd())).await;
    }

    /// Waits until the fd has room to write (or the peer is gone). Ready at once if it has now.
    pub async fn writable(&self) {
        let io = self.get_ref();
        self.local.reactor.readiness(self.key, true, Some(io.wait_fd())).await;
    }

    /// Waits for the next readiness event of the fd (edge-triggered: one per change), after an
    /// attempt found it not ready (so an event taken before the attempt does not matter).
    pub(crate) fn event(&self, write: bool) -> Readiness<'_> {
        self.local.reactor.readiness(self.key, write, None)
    }

    /// Retries `start` until the end takes a frame, then `flush` until it has written all of
    /// it, waiting for the fd to be writable in between.
    async fn until_written(
        &self,
        mut start: impl FnMut(&T) -> ipc::Result<bool>,
        flush: impl Fn(&T) -> ipc::Result<bool>,
    ) -> ipc::Result<()> {
        while !start(self.get_ref())? {
            self.event(true).await;
        }
        while !flush(self.get_ref())? {
            self.event(true).await;
        }
        Ok(())
    }

    /// Retries `attempt` until it gives something, waiting for the fd in between.
    async fn receiving<V>(&self, mut attempt: impl FnMut(&T) -> ipc::Result<Option<V>>) -> ipc::Result<V> {
        loop {
            if let Some(value) = attempt(self.get_ref())? {
                return Ok(value);
            }
            self.event(false).await;
        }
    }
}

impl<T: Waitable> Drop for Async<T> {
    fn drop(&mut self) {
        if let Some(io) = &self.io {
            self.local.reactor.deregister(self.key, io.wait_fd());
        }
    }
}

/// Sends never block the thread: a frame goes out as room allows ([`Sender::try_send`]), and
/// the coroutine waits for the end to be writable in between.
macro_rules! sending {
    () => {
        /// Sends `value` as one frame, waiting (as a coroutine) for room. When it returns the
        /// whole frame is in the kernel's buffer.
        pub async fn send(&self, value: &S) -> ipc::Result<()> {
            self.until_written(|end| end.try_send(value), |end| end.try_flush()).await
        }

        /// Sends raw bytes as one frame, waiting (as a coroutine) for room.
        pub async fn send_bytes(&self, bytes: &[u8]) -> ipc::Result<()> {
            self.until_written(|end| end.try_send_bytes(bytes), |end| end.try_flush()).await
        }
    };
}

impl<S: Serialize, R: DeserializeOwned> Async<Connection<S, R>> {
    /// Receives the next value, letting other coroutines run while none has arrived.
    pub async fn recv(&self) -> ipc::Result<R> {
        self.receiving(|end| end.try_recv()).await
    }

    /// Receives the next raw frame.
    pub async fn recv_bytes(&self) -> ipc::Result<Vec<u8>> {
        self.receiving(|end| match end.recv_bytes_timeout(std::time::Duration::ZERO) {
            Err(ipc::Error::Timeout) => Ok(None),
            other => other.map(Some),
        })
        .await
    }

    sending!();
}

impl<T: DeserializeOwned> Async<Receiver<T>> {
    /// Receives the next value, letting other coroutines run while none has arrived.
    pub async fn recv(&self) -> ipc::Result<T> {
        self.receiving(|end| end.try_recv()).await
    }
}

impl<S: Serialize> Async<Sender<S>> {
    sending!();
}

impl<R: DeserializeOwned> Async<Process<R>> {
    /// Waits for the child to end (through its pidfd, or for a fork server's child the
    /// server's report of its end), then joins it, which then does not wait. A child that
    /// sends its value (Spawn, ForkServer) has it read as it comes meanwhile: one larger than
    /// its connection's buffer is written only as it is read, and the child cannot end before.
    pub async fn join(self) -> process::Result<R> {
        let value = self.receive_value().await?;
        while self.get_ref().is_alive() {
            self.event(false).await;
        }
        match value {
            Some(value) => self.into_inner().join_received(value),
            None => self.into_inner().join(),
        }
    }

    /// Reads the child's value as it comes on its connection ([`Process::value_fd`]), until it
    /// is all in or the connection closes; `None` for a child without one (a Fork child) and
    /// for one that ended without sending it.
    async fn receive_value(&self) -> process::Result<Option<process::Received<R>>> {
        let Some(fd) = self.get_ref().value_fd() else { return Ok(None) };
        // A duplicate, registered beside the end's fd: the connection goes with the join.
        let value = Async::new(fd.try_clone_to_owned()?)?;
        loop {
            // Ended first: all it sent is then in the connection, to be read now.
            let ended = !self.get_ref().is_alive();
            if let Some(received) = self.get_ref().try_receive()? {
                return Ok(Some(received));
            }
            if ended {
                // Sent no value, and the connection stays open (a copy of the child's end
                // lives on elsewhere): the join tells how it ended.
                return Ok(None);
            }
            // More of the value, or the child's end (it died before sending it all).
            let (mut more, mut end) = (pin!(value.event(false)), pin!(self.event(false)));
            poll_fn(|cx| match (more.as_mut().poll(cx), end.as_mut().poll(cx)) {
                (Poll::Pending, Poll::Pending) => Poll::Pending,
                _ => Poll::Ready(()),
            })
            .await;
        }
    }
}
