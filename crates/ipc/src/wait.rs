//! Waiting for readiness on several ends at once: Python's `multiprocessing.connection.wait`.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::time::Timespec;

use crate::error::Result;

/// Waits until at least one of `ends` is ready to read, or `timeout` passes (`None` waits
/// for ever), and returns the indexes of the ready ones in ascending order; empty on timeout.
///
/// "Ready" means a receive would not block waiting for the first byte: data has arrived, or
/// the peer has closed (the receive then reports [`Error::Closed`](crate::Error::Closed)).
/// Any [`AsFd`] works: ipc ends, a child's sentinel, a socket. Signals do not cut the wait
/// short.
///
/// ```
/// # fn main() -> mproc_ipc::Result<()> {
/// use std::time::Duration;
/// let (rx_a, tx_a) = mproc_ipc::pipe::<u32>()?;
/// let (rx_b, _tx_b) = mproc_ipc::pipe::<u32>()?;
/// tx_a.send(&7)?;
/// let ready = mproc_ipc::wait(&[&rx_a, &rx_b], Some(Duration::from_secs(5)))?;
/// assert_eq!(ready, vec![0]);
/// assert_eq!(rx_a.recv()?, 7);
/// # Ok(()) }
/// ```
pub fn wait(ends: &[&dyn AsFd], timeout: Option<Duration>) -> Result<Vec<usize>> {
    let mut fds: Vec<PollFd<'_>> =
        ends.iter().map(|end| PollFd::from_borrowed_fd(end.as_fd(), PollFlags::IN)).collect();
    let deadline = timeout.map(|t| Instant::now().checked_add(t).unwrap_or_else(far_future));
    poll_until(&mut fds, deadline)?;
    Ok(fds.iter().enumerate().filter(|(_, fd)| !fd.revents().is_empty()).map(|(i, _)| i).collect())
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
