//! `Process<R>`: the handle of one child.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mproc_ipc::Connection;
use rustix::process::Signal;
use serde::de::DeserializeOwned;

use crate::bootstrap::Outcome;
use crate::child::ChildState;
use crate::error::{Error, Result};
use crate::registry;
use crate::status::ExitStatus;

/// A child process that will return an `R`: like a `std::thread::JoinHandle`, with Python's
/// `Process` methods.
///
/// Dropping the handle does not stop the child: it runs on, and is reaped when it ends (no
/// zombie is left), or joined when this program exits (as Python does).
pub struct Process<R> {
    state: Arc<ChildState>,
    /// Where the child's value comes from, until it has been taken.
    result: Option<Source<R>>,
}

/// Where a child's value comes from.
// The size of a connection either way: one per child, and boxing it would add an allocation.
#[allow(clippy::large_enum_variant)]
enum Source<R> {
    /// The child sends it on this connection (Spawn and ForkServer children).
    Connection(Connection<(), Outcome<R>>),
    /// The child leaves it in its slot, read once it has ended (Fork children).
    Slot,
}

impl<R> Process<R> {
    /// A child that sends its value on `result`.
    pub(crate) fn new(state: Arc<ChildState>, result: Connection<(), Outcome<R>>) -> Self {
        registry::add(Arc::clone(&state));
        Process { state, result: Some(Source::Connection(result)) }
    }

    /// A child that leaves its value in the slot of `state`, listed already (before its
    /// fork).
    pub(crate) fn from_slot(state: Arc<ChildState>) -> Self {
        Process { state, result: Some(Source::Slot) }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.state.pid_u32()
    }

    /// The child's name (given at start, or `Process-N`).
    pub fn name(&self) -> &str {
        &self.state.identity().name
    }

    /// Whether the child is a daemon.
    pub fn daemon(&self) -> bool {
        self.state.identity().daemon
    }

    /// Whether the child is still running (reaping it if it has ended).
    pub fn is_alive(&self) -> bool {
        matches!(self.state.try_status(), Ok(None))
    }

    /// Python's `exitcode`: `None` while the child runs, its exit code once it has exited, or
    /// the negated signal number if a signal killed it (`-9` for `SIGKILL`).
    pub fn exitcode(&self) -> Option<i32> {
        self.exit_status().map(ExitStatus::exitcode)
    }

    /// How the child ended, once it has.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.state.try_status().ok().flatten()
    }

    /// Asks the child to stop: `SIGTERM` (Python's `terminate`). Nothing if it has ended.
    pub fn terminate(&self) -> Result<()> {
        self.state.signal(Signal::TERM)
    }

    /// Stops the child at once: `SIGKILL`. Nothing if it has ended.
    pub fn kill(&self) -> Result<()> {
        self.state.signal(Signal::KILL)
    }

    /// An fd that becomes readable when the child ends (its pidfd, opened on the first call;
    /// for a child already reaped, an fd readable at once): wait on it with `mproc_ipc::wait`
    /// together with other ends, or in an event loop.
    pub fn sentinel(&self) -> BorrowedFd<'_> {
        self.state.sentinel()
    }
}

/// Ready when the child has ended and how it ended is known, so that `join` and
/// `exit_status` answer without waiting: its pidfd for a child of this process; for a fork
/// server's child, the connection on which the server reports the end (a little after the
/// pidfd, which [`sentinel`](Process::sentinel) gives, turns readable).
impl<R> mproc_ipc::Waitable for Process<R> {
    fn wait_fd(&self) -> BorrowedFd<'_> {
        self.state.status_source().wait_fd()
    }

    fn ready(&self) -> bool {
        self.state.status_source().ready()
    }
}

impl<R: DeserializeOwned> Process<R> {
    /// Waits for the child to end and returns its value.
    ///
    /// The child's panic is [`Error::Panicked`] with its message; death by a signal
    /// [`Error::Signaled`]; an exit before returning [`Error::Exited`].
    pub fn join(mut self) -> Result<R> {
        // The handle goes with the call, so nobody can ask for the exit status afterwards:
        // a child that sent its value and that the fork server reaps is not waited for.
        self.join_until(None, false)
    }

    /// As [`join`](Self::join), waiting at most `timeout`: [`Error::Timeout`] leaves the child
    /// running and the handle usable. It wakes the moment the child ends.
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<R> {
        self.join_until(Some(Instant::now() + timeout), true)
    }

    /// Joins until `deadline`; `need_status`: the exit status must be known afterwards (the
    /// handle lives on), else a fork server's child is let go once its value is in.
    fn join_until(&mut self, deadline: Option<Instant>, need_status: bool) -> Result<R> {
        match self.result.as_ref().ok_or(Error::AlreadyJoined)? {
            Source::Connection(conn) => {
                let outcome = receive_outcome(conn, &self.state, deadline)?;
                self.join_with(outcome, deadline, need_status)
            }
            Source::Slot => {
                let Some(status) = self.state.wait_status(deadline)? else { return Err(Error::Timeout) };
                let outcome = self.state.take_outcome()?;
                self.result = None;
                self.outcome(outcome, Some(status))
            }
        }
    }

    /// Joins a child whose outcome came on its connection (`None`: it closed without one).
    fn join_with(
        &mut self,
        outcome: Option<Outcome<R>>,
        deadline: Option<Instant>,
        need_status: bool,
    ) -> Result<R> {
        if outcome.is_some() && !need_status && self.state.let_go() {
            self.result = None;
            return self.outcome(outcome, None);
        }
        // The child sends its value last thing before it exits: wait for the exit too, so
        // the status is known and the child reaped.
        let status = match self.state.wait_status(deadline)? {
            Some(status) => Some(status),
            None if outcome.is_some() => None, // lingering: reaped later
            None => return Err(Error::Timeout),
        };
        self.result = None;
        self.outcome(outcome, status)
    }

    /// For an event loop that joins without blocking its thread: the fd on which the child's
    /// value is to come. A Spawn or ForkServer child sends it on a connection before it ends,
    /// and a value larger than the connection's buffer is written only as it is read: until
    /// then the child cannot end. So wait for this fd beside the [`Waitable`] one (the end),
    /// call [`try_receive`](Self::try_receive) each time it is readable, and join with
    /// [`join_received`](Self::join_received) once the value is in and the child has ended.
    /// `None` for a Fork child (it leaves its value in shared memory) and a joined one.
    ///
    /// [`Waitable`]: mproc_ipc::Waitable
    pub fn value_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.result {
            Some(Source::Connection(conn)) => Some(conn.as_fd()),
            _ => None,
        }
    }

    /// Reads what has come of the child's value on [`value_fd`](Self::value_fd), without
    /// waiting: `Some` once it is all in (or the connection closed without it), for
    /// [`join_received`](Self::join_received); `None` while more is to come, and for a child
    /// with no `value_fd`.
    pub fn try_receive(&self) -> Result<Option<Received<R>>> {
        let Some(Source::Connection(conn)) = &self.result else { return Ok(None) };
        let outcome = match conn.try_recv() {
            Ok(None) => return Ok(None),
            Ok(Some(outcome)) => Ok(outcome),
            Err(e) => Err(e),
        };
        Ok(Some(Received(received(outcome, &self.state)?)))
    }

    /// Joins the child whose value [`try_receive`](Self::try_receive) gave, waiting for its
    /// end (no time at all once its [`Waitable`](mproc_ipc::Waitable) fd is ready).
    pub fn join_received(mut self, value: Received<R>) -> Result<R> {
        if self.result.is_none() {
            return Err(Error::AlreadyJoined);
        }
        self.join_with(value.0, None, false)
    }

    fn outcome(&self, outcome: Option<Outcome<R>>, status: Option<ExitStatus>) -> Result<R> {
        // Only errors name the child: a value comes back without a copy of the name.
        let (name, pid) = (|| self.state.identity().name.clone(), self.pid());
        match (outcome, status) {
            (Some(Outcome::Value(value)), _) => Ok(value),
            (Some(Outcome::Panicked(message)), _) => Err(Error::Panicked { name: name(), pid, message }),
            (Some(Outcome::Transfer(message)), _) => Err(Error::Transfer { name: name(), message }),
            (None, Some(ExitStatus::Signal(signal))) => Err(Error::Signaled { name: name(), pid, signal }),
            (None, Some(ExitStatus::Code(code))) => Err(Error::Exited { name: name(), pid, code }),
            (None, None) => Err(Error::Timeout),
        }
    }
}

/// Waits for the child's outcome message, or for its end without one (`None`).
fn receive_outcome<R: DeserializeOwned>(
    conn: &Connection<(), Outcome<R>>,
    state: &ChildState,
    deadline: Option<Instant>,
) -> Result<Option<Outcome<R>>> {
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let ready = mproc_ipc::wait(&[conn, &state.sentinel()], left)?;
    if ready.is_empty() {
        return Err(Error::Timeout);
    }
    // The child sends its value before it ends: if the connection is readable, read it (to
    // the end of the frame); if only the end is seen, take whatever is already there.
    let received = match (ready.contains(&0), left) {
        (true, None) => conn.recv(),
        (true, Some(left)) => conn.recv_timeout(left),
        (false, _) => conn.recv_timeout(Duration::ZERO),
    };
    match received {
        Err(mproc_ipc::Error::Timeout) if ready.contains(&1) => Ok(None),
        Err(mproc_ipc::Error::Timeout) => Err(Error::Timeout),
        other => self::received(other, state),
    }
}

/// The outcome a receive on a child's connection gave: `None` if the connection closed
/// without one.
fn received<R>(got: mproc_ipc::Result<Outcome<R>>, state: &ChildState) -> Result<Option<Outcome<R>>> {
    match got {
        Ok(outcome) => Ok(Some(outcome)),
        Err(mproc_ipc::Error::Closed | mproc_ipc::Error::Truncated { .. }) => Ok(None),
        Err(mproc_ipc::Error::Decode(e)) => Err(Error::Transfer {
            name: state.identity().name.clone(),
            message: format!("cannot decode the value sent back: {e}"),
        }),
        Err(e) => Err(e.into()),
    }
}

/// A child's value (or its absence) as it came on its connection, taken by
/// [`Process::try_receive`] for [`Process::join_received`].
pub struct Received<R>(Option<Outcome<R>>);

impl<R> fmt::Debug for Received<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Received(..)" } else { "Received(nothing)" })
    }
}

impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        if self.state.is_settled() {
            // Nothing left to track: free its state (its pidfd, its slot) now, not at the
            // next start.
            registry::prune();
        } else {
            registry::adopt(Arc::clone(&self.state));
        }
    }
}

impl<R> fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.state.identity().name)
            .field("pid", &self.pid())
            .field("daemon", &self.state.identity().daemon)
            .field("exitcode", &self.exitcode())
            .finish()
    }
}
