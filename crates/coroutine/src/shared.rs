//! `AsyncShared<T>`: a primitive in shared memory (an `Event`, a queue) awaited instead of
//! blocked on, through its doorbell.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use mproc_pool::ipc::{Awaitable, Event};

use crate::io::Async;

#[cfg(all(test, loom))]
mod loom_tests;

/// A shared-memory primitive of `mproc-ipc` ([`Event`], and anything [`Awaitable`]) whose
/// doorbell is registered with the running executor's reactor, so a coroutine awaits it
/// while the thread runs other coroutines.
///
/// The primitive's changes ring its doorbell (an eventfd) when coroutines listen (see
/// `mproc_ipc::Doorbell`): a wait counts itself in, registers interest in the next ring,
/// checks the state, and sleeps in the reactor until a ring, so a change from any process
/// (or thread) between the check and the sleep still wakes it. Dropping a wait (cancelling
/// it, or a [`timeout`](crate::timeout) around it) counts it out and leaves nothing behind.
///
/// ```
/// use std::time::Duration;
/// use mproc_coroutine::{AsyncShared, Executor, spawn, ipc::Event};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let event = Event::new()?; // clone it into a child, or send it to one
/// let ex = Executor::new()?;
/// ex.block_on(async {
///     let waiting = AsyncShared::new(event.clone())?;
///     assert!(!waiting.wait_timeout(Duration::from_millis(1)).await);
///     let setter = spawn(async move { event.set() });
///     waiting.wait().await;
///     setter.await?;
///     Ok::<_, Box<dyn std::error::Error>>(())
/// })?;
/// # Ok(()) }
/// ```
pub struct AsyncShared<T: Awaitable> {
    inner: T,
    /// A duplicate of the doorbell's eventfd, registered with the reactor.
    bell: Async<OwnedFd>,
}

impl<T: Awaitable + fmt::Debug> fmt::Debug for AsyncShared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AsyncShared").field(&self.inner).finish()
    }
}

impl<T: Awaitable> AsyncShared<T> {
    /// Registers `inner`'s doorbell with the executor running in this thread (a duplicate of
    /// its fd, so handles on one primitive can be registered side by side).
    ///
    /// Fails outside [`Executor::block_on`](crate::Executor::block_on), as [`Async::new`] does.
    pub fn new(inner: T) -> io::Result<AsyncShared<T>> {
        let fd = inner.doorbell().try_clone_fd().map_err(io::Error::from)?;
        Ok(AsyncShared { bell: Async::new(fd)?, inner })
    }

    /// The primitive.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Unregisters and returns the primitive.
    pub fn into_inner(self) -> T {
        self.inner
    }

    /// Waits (as a coroutine) until `check` gives something, checking again after each ring
    /// of the doorbell. `check` must look at state whose every change rings the doorbell
    /// (after the change), or a change can go unseen until the next ring.
    pub async fn until<V>(&self, mut check: impl FnMut(&T) -> Option<V>) -> V {
        if let Some(v) = check(&self.inner) {
            return v;
        }
        let _listening = self.inner.doorbell().listen(self.inner.listeners());
        let mut ring = pin!(self.bell.event(false));
        poll_fn(|cx| {
            loop {
                // Interest first (the first poll of a wait notes the event count), then the
                // state: a ring after the check is an event the reactor counts.
                let rung = ring.as_mut().poll(cx).is_ready();
                if let Some(v) = check(&self.inner) {
                    return Poll::Ready(v);
                }
                if !rung {
                    return Poll::Pending;
                }
                ring.set(self.bell.event(false));
            }
        })
        .await
    }
}

impl AsyncShared<Event> {
    /// Waits until the event is set.
    pub async fn wait(&self) {
        self.until(|event| event.is_set().then_some(())).await;
    }

    /// Waits at most `timeout` for the event; whether it is set.
    pub async fn wait_timeout(&self, timeout: Duration) -> bool {
        crate::time::timeout(timeout, self.wait()).await.is_ok() || self.inner.is_set()
    }
}
