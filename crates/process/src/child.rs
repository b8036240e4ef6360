//! One child as mproc tracks it, whether or not a `Process` handle still exists.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Instant;

use mproc_ipc::{Connection, Waitable};
use parking_lot::Mutex;
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use serde::{Deserialize, Serialize};

use crate::bootstrap::Outcome;
use crate::error::{Error, Result};
use crate::global::PerProcess;
use crate::identity::Identity;
use crate::slot::Slot;
use crate::status::ExitStatus;

/// What the fork server says about one child it started, on that child's report connection.
#[derive(Debug, Serialize, Deserialize)]
// A few of these per child; boxing the end would cost an allocation per start.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Report {
    /// The child started; its pidfd comes along (opened by the server, its parent, so it
    /// cannot name a recycled pid).
    Started { pid: u32, pidfd: mproc_ipc::Receiver<()> },
    /// The child ended and the server reaped it.
    Exited(ExitStatus),
    /// The server could not start the child.
    Failed(String),
}

/// Where a child's end is learned.
pub(crate) enum Exit {
    /// Our own child: `waitid` on its pid reaps it. Its pidfd, readable when it ends, is
    /// opened the first time something waits with a deadline or beside other fds (a timed
    /// join, a sentinel, a coroutine, the reaper): a child only joined, or only asked
    /// `is_alive`, needs none.
    ///
    /// The pid cannot name another process meanwhile: a pid is only recycled once its
    /// process is reaped, and it is reaped only under the status lock ([`ChildState::try_status`],
    /// or the joiner's last step), which whatever opens the pidfd or signals by pid holds
    /// too. A join without a deadline sleeps on the pid itself, but only while it holds the
    /// joiner's mark, under which nobody else reaps (they only look, with `WNOWAIT`); any
    /// other wait is on the pidfd.
    Own { pidfd: OnceLock<Watch> },
    /// A child of the fork server: a pidfd to watch, and the server's report of its status
    /// (the server is its parent and reaps it).
    Server { pidfd: OwnedFd, reports: Box<Connection<(), Report>> },
}

impl Exit {
    /// Our own child, its pidfd opened when first needed.
    pub(crate) fn own() -> Result<Exit> {
        prepare_ended()?;
        Ok(Exit::Own { pidfd: OnceLock::new() })
    }

    /// Our own child, with the pidfd opened already.
    pub(crate) fn own_with(pidfd: OwnedFd) -> Exit {
        Exit::Own { pidfd: OnceLock::from(Watch::Pidfd(pidfd)) }
    }
}

/// What shows an own child's end.
pub(crate) enum Watch {
    /// Its pidfd, or for a child reaped already an fd of its own that is readable at once
    /// (see [`ended_fd`]).
    Pidfd(OwnedFd),
    /// No fd could be had (the process is out of them): [`ENDED`], readable at once.
    Ended(BorrowedFd<'static>),
}

impl Waitable for Watch {
    fn wait_fd(&self) -> BorrowedFd<'_> {
        match self {
            Watch::Pidfd(fd) => fd.as_fd(),
            Watch::Ended(fd) => *fd,
        }
    }
}

/// An fd of its own, readable at once and for ever: the read end of a fresh pipe whose write
/// end is closed. What a child reaped before anything watched it is watched by, so that each
/// such child has its own (an event loop registers each fd once: a shared one could be
/// registered for one child only, and unregistered for all by dropping one).
fn ended_fd() -> Option<OwnedFd> {
    let (read, _write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).ok()?;
    Some(read)
}

/// An fd readable at once and for ever, the read end of a pipe whose write end is closed:
/// what an own child is watched by when the process is out of fds. One per process, made
/// before its first child that needs it, so that running out of fds later cannot leave a
/// child without one.
static ENDED: PerProcess<Option<&'static OwnedFd>> = PerProcess::new();

fn prepare_ended() -> Result<()> {
    ENDED.with(
        || None,
        |ended| {
            if ended.is_none() {
                let (read, _write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
                *ended = Some(Box::leak(Box::new(read)));
            }
            Ok(())
        },
    )
}

fn ended() -> BorrowedFd<'static> {
    let ended = ENDED.with(|| None, |ended| *ended);
    ended.expect("made by `Exit::own` before any child that watches it").as_fd()
}

pub(crate) struct ChildState {
    /// The child's pid; 0 until it is started (a `Fork` child's state is made, and listed,
    /// before the fork: see [`unstarted`](Self::unstarted)).
    pid: AtomicI32,
    /// What the child was started as (its name, whether it is a daemon); set with the pid.
    identity: OnceLock<Box<Identity>>,
    exit: Exit,
    status: Mutex<Option<ExitStatus>>,
    /// A thread sleeps in `waitid` on the pid (see [`wait_status`](Self::wait_status)): until
    /// it clears this, it alone reaps the child. Changed only under the status lock.
    joiner: AtomicBool,
    /// Where a `Fork` child leaves its value.
    slot: Option<Mutex<Slot>>,
    /// Joined, and another process (the fork server) reaps it, or never started: nothing
    /// left to track here.
    let_go: AtomicBool,
}

impl ChildState {
    pub(crate) fn new(pid: Pid, identity: Box<Identity>, exit: Exit) -> ChildState {
        let state = ChildState::unstarted(exit);
        state.started(pid, identity);
        state
    }

    /// The state of a child about to be forked: made (and listed) before the fork, so that
    /// the parent writes as little as it can after it (each page it writes then, while the
    /// child runs, is a copy). Until [`started`](Self::started) it counts as running and
    /// nothing waits for it or signals it.
    pub(crate) fn unstarted(exit: Exit) -> ChildState {
        ChildState {
            pid: AtomicI32::new(0),
            identity: OnceLock::new(),
            exit,
            status: Mutex::new(None),
            joiner: AtomicBool::new(false),
            slot: None,
            let_go: AtomicBool::new(false),
        }
    }

    /// The child was started as `pid`, with `identity` (kept here: freeing it right after a
    /// fork would write to pages the child shares).
    pub(crate) fn started(&self, pid: Pid, identity: Box<Identity>) {
        let _ = self.identity.set(identity);
        self.pid.store(pid.as_raw_nonzero().get(), Ordering::Release);
    }

    /// What the child was started as. Only asked of started children (the registry lists
    /// no other).
    pub(crate) fn identity(&self) -> &Identity {
        self.identity.get().expect("the identity of a child not started yet")
    }

    /// The child could not be started: nothing to track (and its slot is free again).
    pub(crate) fn never_started(&self) {
        self.let_go.store(true, Ordering::Release);
    }

    /// The child's pid, once started.
    pub(crate) fn pid(&self) -> Option<Pid> {
        Pid::from_raw(self.pid.load(Ordering::Acquire))
    }

    /// The state of a child that leaves its value in `slot`.
    pub(crate) fn with_slot(mut self, slot: Slot) -> ChildState {
        self.slot = Some(Mutex::new(slot));
        self
    }

    /// The value a child with a slot left there, read once it has ended (`None`: it left none).
    /// It may not be reaped yet (a join that found another thread sleeping as the joiner sees
    /// the end without reaping): the slot is given back only once it is.
    pub(crate) fn take_outcome<R: serde::de::DeserializeOwned>(&self) -> Result<Option<Outcome<R>>> {
        match &self.slot {
            Some(slot) => slot.lock().read(),
            None => Ok(None),
        }
    }

    /// The child's pid (0 before it is started).
    pub(crate) fn pid_u32(&self) -> u32 {
        self.pid().map_or(0, |pid| pid.as_raw_nonzero().get() as u32)
    }

    /// Readable when the child has ended (Python's `sentinel`).
    pub(crate) fn sentinel(&self) -> BorrowedFd<'_> {
        match &self.exit {
            Exit::Own { pidfd } => self.watch(pidfd).wait_fd(),
            Exit::Server { pidfd, .. } => pidfd.as_fd(),
        }
    }

    /// What shows our own child's end: its pidfd, opened on first use.
    fn watch<'a>(&self, pidfd: &'a OnceLock<Watch>) -> &'a Watch {
        pidfd.get_or_init(|| self.open_pidfd())
    }

    /// The child's pidfd, opened while it is not reaped (so its pid still names it). A child
    /// reaped already gets an fd of its own readable at once, as the pidfd of an ended child
    /// is ([`ended_fd`]); a process out of fds gets [`ENDED`]: waiting on it then asks
    /// [`try_status`](Self::try_status) again (a busy wait, not a hang).
    fn open_pidfd(&self) -> Watch {
        let status = self.status.lock();
        let opened = match (*status, self.pid()) {
            (None, Some(pid)) => rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok(),
            _ => None,
        };
        let reaped = status.is_some();
        drop(status);
        let opened = if reaped { ended_fd() } else { opened };
        opened.map_or_else(|| Watch::Ended(ended()), Watch::Pidfd)
    }

    /// Ready when [`try_status`](Self::try_status) can tell: the pidfd, or the server's
    /// report (which comes after the server has reaped the child, and may already wait inside
    /// the connection, read ahead with the `Started` report).
    pub(crate) fn status_source(&self) -> &dyn Waitable {
        match &self.exit {
            Exit::Own { pidfd } => self.watch(pidfd),
            Exit::Server { reports, .. } => &**reports,
        }
    }

    /// The exit status if the child has ended (reaping it if it is ours); `None` while it runs.
    pub(crate) fn try_status(&self) -> Result<Option<ExitStatus>> {
        let mut status = self.status.lock();
        if status.is_none() {
            *status = match &self.exit {
                Exit::Own { .. } => {
                    let Some(pid) = self.pid() else { return Ok(None) };
                    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
                    if self.joiner.load(Ordering::Relaxed) {
                        // The joiner reaps it: only look (the pid stays this child's).
                        let seen =
                            rustix::process::waitid(WaitId::Pid(pid), options | WaitIdOptions::NOWAIT)?;
                        return Ok(seen.map(ExitStatus::from_waitid));
                    }
                    rustix::process::waitid(WaitId::Pid(pid), options)?.map(ExitStatus::from_waitid)
                }
                Exit::Server { reports, .. } => match reports.try_recv() {
                    Ok(Some(Report::Exited(s))) => Some(s),
                    Ok(Some(other)) => return Err(Error::ForkServer(format!("unexpected report {other:?}"))),
                    Ok(None) => None,
                    Err(mproc_ipc::Error::Closed) => {
                        return Err(Error::ForkServer(format!(
                            "the server died before reporting how {:?} (pid {}) ended",
                            self.identity().name,
                            self.pid_u32()
                        )));
                    }
                    Err(e) => return Err(e.into()),
                },
            };
        }
        Ok(*status)
    }

    /// Waits for the child to end, until `deadline` (`None`: for ever); `None` on the deadline.
    pub(crate) fn wait_status(&self, deadline: Option<Instant>) -> Result<Option<ExitStatus>> {
        if deadline.is_none()
            && let Some(status) = self.join_own()?
        {
            return Ok(Some(status));
        }
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(Some(status));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if !mproc_ipc::wait_one(self.status_source(), left)? {
                return self.try_status();
            }
        }
    }

    /// Waits for our own child to end as the floor does, with no fd: sleeps in `waitid` on
    /// the pid with `WNOWAIT` (which leaves the child unreaped), then reaps it under the
    /// status lock. The pid names this child throughout: this thread holds the joiner's mark
    /// from before it sleeps (taken while the child was not reaped) until it has reaped, and
    /// meanwhile nobody else reaps ([`try_status`](Self::try_status) only looks), so the pid
    /// cannot be recycled. `None` if this way is not open (not our own child, not started,
    /// or another thread sleeps so already): the caller waits on the pidfd instead.
    fn join_own(&self) -> Result<Option<ExitStatus>> {
        let Exit::Own { .. } = self.exit else { return Ok(None) };
        let pid = {
            let status = self.status.lock();
            if let Some(status) = *status {
                return Ok(Some(status));
            }
            match self.pid() {
                Some(pid) if !self.joiner.load(Ordering::Relaxed) => {
                    self.joiner.store(true, Ordering::Relaxed);
                    pid
                }
                _ => return Ok(None),
            }
        };
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
        let slept = loop {
            match rustix::process::waitid(WaitId::Pid(pid), options) {
                Err(rustix::io::Errno::INTR) => continue,
                other => break other,
            }
        };
        let mut status = self.status.lock();
        self.joiner.store(false, Ordering::Relaxed);
        slept?;
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
        let reaped = rustix::process::waitid(WaitId::Pid(pid), options)?.map(ExitStatus::from_waitid);
        *status = reaped;
        Ok(reaped)
    }

    /// Stops tracking a child that has sent its value and is reaped by another process (a
    /// fork server's child): its end need not be waited for here. `false` (and nothing done)
    /// for a child of ours, which must be reaped.
    pub(crate) fn let_go(&self) -> bool {
        let elsewhere = matches!(self.exit, Exit::Server { .. });
        if elsewhere {
            self.let_go.store(true, Ordering::Release);
        }
        elsewhere
    }

    /// Whether mproc is done with the child: reaped, or let go.
    pub(crate) fn is_settled(&self) -> bool {
        self.let_go.load(Ordering::Acquire) || self.is_done()
    }

    /// Whether the child has ended and been reaped.
    pub(crate) fn is_done(&self) -> bool {
        self.status.lock().is_some()
    }

    /// Sends `signal`; nothing if the child is already gone. A recycled pid is never hit:
    /// our own child is signalled under the status lock while it is not reaped (so its pid
    /// still names it), a fork server's through its pidfd.
    pub(crate) fn signal(&self, signal: Signal) -> Result<()> {
        let status = self.status.lock();
        if status.is_some() {
            return Ok(());
        }
        let sent = match &self.exit {
            Exit::Own { .. } => match self.pid() {
                Some(pid) => rustix::process::kill_process(pid, signal),
                None => Ok(()),
            },
            Exit::Server { pidfd, .. } => {
                drop(status);
                rustix::process::pidfd_send_signal(pidfd, signal)
            }
        };
        match sent {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for ChildState {
    fn drop(&mut self) {
        // A reaped child writes nothing more, and one never started wrote nothing: its slot
        // may serve the next one.
        if (self.status.get_mut().is_some() || *self.pid.get_mut() == 0)
            && let Some(slot) = self.slot.take()
        {
            slot.into_inner().give_back();
        }
    }
}
