//! Waiting for readiness on several ends at once: Python's `multiprocessing.connection.wait`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::time::Timespec;

use crate::error::Result;

/// Something [`wait`] can wait on: an ipc end, or any file descriptor (a child's sentinel, a
/// socket, an eventfd).
///
/// Ends read ahead (see [`Receiver::set_read_ahead`](crate::Receiver::set_read_ahead)), so a
/// frame may already wait inside an end while its fd is not readable: an end says so through
/// [`ready`](Self::ready). Whatever waits on ends (an event loop, a reactor) must ask `ready`
/// before it sleeps on the fd.
pub trait Waitable {
    /// The fd that becomes readable when there is something new.
    fn wait_fd(&self) -> BorrowedFd<'_>;

    /// Whether a receive would return at once without the fd becoming readable (a whole frame
    /// read ahead). Plain fds have no buffer: `false`.
    fn ready(&self) -> bool {
        false
    }
}

impl Waitable for BorrowedFd<'_> {
    fn wait_fd(&self) -> BorrowedFd<'_> {
        *self
    }
}

impl Waitable for OwnedFd {
    fn wait_fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
}

/// Waits until at least one of `ends` is ready to read, or `timeout` passes (`None` waits
/// for ever), and returns the indexes of the ready ones in ascending order; empty on timeout.
///
/// "Ready" means a receive would not block waiting for the first byte: a frame is buffered in
/// the end, data has arrived, or the peer has closed (the receive then reports
/// [`Error::Closed`](crate::Error::Closed)). Ipc ends and plain fds (a child's sentinel, a
/// socket) mix freely. Signals do not cut the wait short.
///
/// ```
/// # fn main() -> mproc_ipc::Result<()> {
/// use std::time::Duration;
/// let (rx_a, tx_a) = mproc_ipc::pipe::<u32>()?;
/// let (rx_b, _tx_b) = mproc_ipc::pipe::<u32>()?;
/// tx_a.send(&7)?;
/// tx_a.send(&8)?;
/// let ready = mproc_ipc::wait(&[&rx_a, &rx_b], Some(Duration::from_secs(5)))?;
/// assert_eq!(ready, vec![0]);
/// assert_eq!(rx_a.recv()?, 7);
/// // 8 may have been read with 7: the end knows, so `wait` still sees it.
/// assert_eq!(mproc_ipc::wait(&[&rx_a, &rx_b], Some(Duration::from_secs(5)))?, vec![0]);
/// assert_eq!(rx_a.recv()?, 8);
/// # Ok(()) }
/// ```
pub fn wait(ends: &[&dyn Waitable], timeout: Option<Duration>) -> Result<Vec<usize>> {
    let buffered: Vec<usize> =
        ends.iter().enumerate().filter(|(_, end)| end.ready()).map(|(i, _)| i).collect();
    let mut fds: Vec<PollFd<'_>> =
        ends.iter().map(|end| PollFd::from_borrowed_fd(end.wait_fd(), PollFlags::IN)).collect();
    let deadline = if buffered.is_empty() {
        timeout.map(|t| Instant::now().checked_add(t).unwrap_or_else(far_future))
    } else {
        // Something is ready already: only look which fds are too.
        Some(Instant::now())
    };
    poll_until(&mut fds, deadline)?;
    Ok(fds
        .iter()
        .enumerate()
        .filter(|(i, fd)| !fd.revents().is_empty() || buffered.contains(i))
        .map(|(i, _)| i)
        .collect())
}

/// [`wait`] for one end: whether it became ready before `timeout` passed. Allocates nothing.
///
/// ```
/// # fn main() -> mproc_ipc::Result<()> {
/// use std::time::Duration;
/// let (rx, tx) = mproc_ipc::pipe::<u32>()?;
/// assert!(!mproc_ipc::wait_one(&rx, Some(Duration::ZERO))?);
/// tx.send(&7)?;
/// assert!(mproc_ipc::wait_one(&rx, Some(Duration::from_secs(5)))?);
/// # Ok(()) }
/// ```
pub fn wait_one(end: &dyn Waitable, timeout: Option<Duration>) -> Result<bool> {
    if end.ready() {
        return Ok(true);
    }
    let mut fds = [PollFd::from_borrowed_fd(end.wait_fd(), PollFlags::IN)];
    let deadline = timeout.map(|t| Instant::now().checked_add(t).unwrap_or_else(far_future));
    Ok(poll_until(&mut fds, deadline)? > 0)
}

/// `poll(2)` until something is ready or `deadline` passes, going on after signals. Returns
/// how many entries are ready (0 on the deadline).
pub(crate) fn poll_until(fds: &mut [PollFd<'_>], deadline: Option<Instant>) -> io::Result<usize> {
    loop {
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Timespec::try_from(left).unwrap_or(Timespec { tv_sec: i64::MAX, tv_nsec: 0 })
        });
        match poll(fds, timeout.as_ref()) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// An instant so far ahead that waiting for it is waiting for ever.
pub(crate) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}
