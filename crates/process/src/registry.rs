//! Every child this process started and has not reaped yet: for `active_children()`, for the
//! reaper that collects children whose handles were dropped, and for the join at exit.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::Once;

use rustix::process::Signal;

use crate::child::ChildState;
use crate::global::PerProcess;

/// The children not reaped yet.
static CHILDREN: PerProcess<Vec<Arc<ChildState>>> = PerProcess::new();
/// The reaper's wake-up pipe and the children it watches (handles dropped).
static REAPER: PerProcess<Option<Reaper>> = PerProcess::new();

/// The reaper: a thread, started at the first dropped handle of a running child, that reaps
/// such children as they end. Its pipe is made with the first child (see [`prepare`]).
struct Reaper {
    wake: OwnedFd,
    /// The pipe's read end, until the thread is started with it.
    wake_rx: Option<OwnedFd>,
    orphans: Arc<parking_lot::Mutex<Vec<Arc<ChildState>>>>,
}

impl Reaper {
    fn new() -> std::io::Result<Reaper> {
        let (wake_rx, wake) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        Ok(Reaper { wake, wake_rx: Some(wake_rx), orphans: Arc::default() })
    }

    /// Starts the thread, unless it runs. If it cannot be started, the orphans wait in the
    /// list for the next try (and are joined at exit meanwhile).
    fn start(&mut self) {
        let Some(wake_rx) = self.wake_rx.take() else { return };
        let watched = Arc::clone(&self.orphans);
        // Made by hand (not `spawn`'s move), so a failed start gives the read end back.
        let wake_rx = Arc::new(wake_rx);
        let kept = Arc::clone(&wake_rx);
        let started = std::thread::Builder::new()
            .name("mproc-reaper".into())
            // After each round the children it reaped are forgotten (their state, pidfd
            // included, freed): a reaped child holds no fd.
            .spawn(move || {
                while reap_once(&IpcWait, &kept, &watched) {
                    prune();
                }
            });
        if started.is_err() {
            self.wake_rx = Arc::into_inner(wake_rx);
        }
    }
}

/// Makes the reaper's pipe (not its thread), before this process's first child: a handle
/// dropped later, when the process may be out of fds, then needs none (as a child's end is
/// watched by a pidfd or, out of fds, by one made ready beforehand: see `child::prepare_ended`).
pub(crate) fn prepare() -> crate::Result<()> {
    REAPER.with(
        || None,
        |reaper| {
            if reaper.is_none() {
                *reaper = Some(Reaper::new()?);
            }
            Ok(())
        },
    )
}

/// Forgets the children mproc is done with (freeing their state).
pub(crate) fn prune() {
    CHILDREN.with(Vec::new, |children| children.retain(|c| !c.is_settled()));
}

/// Records a new child, pruning first.
pub(crate) fn add(child: Arc<ChildState>) {
    prune();
    push(child);
}

/// Registers the exit hook, with the first child listed in this process.
static AT_EXIT: Once = Once::new();

/// Records a new child (a `Fork` child before it is forked), the list just pruned (by
/// [`prune`]: a Fork start prunes before it takes a slot, so those of forgotten children
/// come back first).
pub(crate) fn push(child: Arc<ChildState>) {
    AT_EXIT.call_once(|| crate::sys::at_exit(join_at_exit));
    CHILDREN.with(Vec::new, |children| children.push(child));
}

/// The children that still run (those that ended are reaped on the way, as in Python); a
/// child being forked by another thread right now is not listed yet.
pub(crate) fn active() -> Vec<Arc<ChildState>> {
    CHILDREN.with(Vec::new, |children| {
        children.retain(|c| !c.is_settled() && !matches!(c.try_status(), Ok(Some(_))));
        children.iter().filter(|c| c.pid().is_some()).cloned().collect()
    })
}

/// Hands a child whose handle is gone to the reaper thread, which reaps it when it ends: no
/// zombie is ever left behind.
pub(crate) fn adopt(child: Arc<ChildState>) {
    if matches!(child.try_status(), Ok(Some(_))) {
        prune(); // reaped just now: its state goes (see `Process`'s drop)
        return;
    }
    REAPER.with(
        || None,
        |reaper| {
            // Made before the first child (`prepare`), unless this child came another way.
            if reaper.is_none() {
                *reaper = Reaper::new().ok();
            }
            // Without one (out of fds), the child stays listed: joined at exit, reaped by
            // `active_children` meanwhile.
            let Some(reaper) = reaper else { return };
            reaper.orphans.lock().push(child);
            reaper.start();
            let _ = rustix::io::write(&reaper.wake, &[1]);
        },
    );
}

/// A child the reaper watches: where its end shows, and whether it has ended (reaping it).
pub(crate) trait Orphan {
    fn status_source(&self) -> &dyn mproc_ipc::Waitable;
    fn try_status(&self) -> crate::Result<Option<crate::ExitStatus>>;
}

impl Orphan for Arc<ChildState> {
    fn status_source(&self) -> &dyn mproc_ipc::Waitable {
        ChildState::status_source(self)
    }

    fn try_status(&self) -> crate::Result<Option<crate::ExitStatus>> {
        ChildState::try_status(self)
    }
}

/// How the reaper sleeps until one of its sources is ready: `mproc_ipc::wait`, or a script
/// in tests.
pub(crate) trait Wait {
    fn wait(&self, sources: &[&dyn mproc_ipc::Waitable]) -> mproc_ipc::Result<Vec<usize>>;
}

struct IpcWait;

impl Wait for IpcWait {
    fn wait(&self, sources: &[&dyn mproc_ipc::Waitable]) -> mproc_ipc::Result<Vec<usize>> {
        mproc_ipc::wait(sources, None)
    }
}

/// One round of the reaper: waits on the wake pipe and the orphans' status sources, then
/// drops every orphan that has ended (reaped by asking) or cannot tell any more (an error: a
/// fork server gone, with nothing left to reap). `false` when the wait itself fails: the
/// reaper stops.
fn reap_once<O: Orphan + Clone>(
    waiter: &impl Wait,
    wake: &OwnedFd,
    orphans: &parking_lot::Mutex<Vec<O>>,
) -> bool {
    let watched: Vec<O> = orphans.lock().clone();
    let mut sources: Vec<&dyn mproc_ipc::Waitable> = vec![wake];
    sources.extend(watched.iter().map(|c| c.status_source()));
    match waiter.wait(&sources) {
        Ok(ready) if ready.first() == Some(&0) => {
            let mut buf = [0u8; 64];
            let _ = rustix::io::read(wake, &mut buf);
        }
        Ok(_) => {}
        Err(_) => return false,
    }
    drop(sources);
    orphans.lock().retain(|c| matches!(c.try_status(), Ok(None)));
    true
}

/// At exit (the `atexit` hook): [`join_all`].
extern "C" fn join_at_exit() {
    join_all();
}

/// What a process does about its children when it ends, as Python does: daemon children are
/// terminated, then every child is waited for, so none is orphaned silently and none is left
/// a zombie. At exit, and by a fork server's child, which leaves without the exit hooks.
pub(crate) fn join_all() {
    // No child was ever listed in this process (nor in the one it was forked from): nothing
    // to do, and no per-process state to make only to find it empty (a fork server's child
    // that started none leaves without mapping its page).
    if !AT_EXIT.is_completed() {
        return;
    }
    let children = CHILDREN.with(Vec::new, std::mem::take);
    for child in children.iter().filter(|c| c.pid().is_some() && c.identity().daemon) {
        let _ = child.signal(Signal::TERM);
    }
    // (A child another thread is forking right now has no pid yet: nothing to wait for.)
    for child in children.iter().filter(|c| !c.is_settled() && c.pid().is_some()) {
        let _ = child.wait_status(None);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;
    use crate::error::Error;
    use crate::status::ExitStatus;

    /// A child whose answers are scripted: `None` (running) until it has been asked `runs`
    /// times, then `end`.
    #[derive(Clone)]
    struct Scripted {
        fd: Rc<OwnedFd>,
        asked: Rc<Cell<u32>>,
        runs: u32,
        end: Result<ExitStatus, &'static str>,
    }

    impl Orphan for Scripted {
        fn status_source(&self) -> &dyn mproc_ipc::Waitable {
            &*self.fd
        }

        fn try_status(&self) -> crate::Result<Option<ExitStatus>> {
            self.asked.set(self.asked.get() + 1);
            if self.asked.get() <= self.runs {
                return Ok(None);
            }
            self.end.map(Some).map_err(|why| Error::ForkServer(why.into()))
        }
    }

    /// Returns the scripted readiness, one answer per round, and records how many sources
    /// each round watched.
    struct ScriptedWait {
        answers: parking_lot::Mutex<Vec<mproc_ipc::Result<Vec<usize>>>>,
        watched: parking_lot::Mutex<Vec<usize>>,
    }

    impl Wait for ScriptedWait {
        fn wait(&self, sources: &[&dyn mproc_ipc::Waitable]) -> mproc_ipc::Result<Vec<usize>> {
            self.watched.lock().push(sources.len());
            self.answers.lock().remove(0)
        }
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap()
    }

    fn orphan(runs: u32, end: Result<ExitStatus, &'static str>) -> Scripted {
        Scripted { fd: Rc::new(pipe().0), asked: Rc::default(), runs, end }
    }

    #[test]
    fn the_reaper_drops_each_orphan_once_it_has_ended_or_cannot_tell() {
        let (wake, wake_tx) = pipe();
        let quick = orphan(0, Ok(ExitStatus::Code(0)));
        // Every orphan is asked in every round (asking is a cheap non-blocking `waitid`).
        let slow = orphan(3, Ok(ExitStatus::Signal(9)));
        let server_gone = orphan(1, Err("the server died"));
        let orphans = parking_lot::Mutex::new(vec![quick.clone(), slow.clone(), server_gone.clone()]);
        let waiter = ScriptedWait {
            answers: parking_lot::Mutex::new(vec![Ok(vec![1]), Ok(vec![3]), Ok(vec![0]), Ok(vec![2])]),
            watched: parking_lot::Mutex::default(),
        };
        rustix::io::write(&wake_tx, &[1]).unwrap();
        // Round 1: the quick one ended; the others still run.
        assert!(reap_once(&waiter, &wake, &orphans));
        assert_eq!(orphans.lock().len(), 2);
        // Round 2: the server of the third is gone: nothing left to reap, it is dropped.
        assert!(reap_once(&waiter, &wake, &orphans));
        assert_eq!(orphans.lock().len(), 1);
        // Round 3: only the wake pipe (a new orphan would be added): nothing ends, and the
        // pipe is drained.
        assert!(reap_once(&waiter, &wake, &orphans));
        assert_eq!(orphans.lock().len(), 1);
        let mut buf = [0u8; 8];
        rustix::fs::fcntl_setfl(&wake, rustix::fs::OFlags::NONBLOCK).unwrap();
        assert!(rustix::io::read(&wake, &mut buf).is_err(), "the wake pipe was drained");
        // Round 4: the slow one ends.
        assert!(reap_once(&waiter, &wake, &orphans));
        assert!(orphans.lock().is_empty());
        // Each round watched the wake pipe and the orphans left.
        assert_eq!(*waiter.watched.lock(), vec![4, 3, 2, 2]);
        assert_eq!(quick.asked.get(), 1, "asked once, reaped once");
        assert_eq!(slow.asked.get(), 4);
    }

    #[test]
    fn the_reaper_stops_when_it_cannot_wait() {
        let (wake, _tx) = pipe();
        let still = orphan(u32::MAX, Ok(ExitStatus::Code(0)));
        let orphans = parking_lot::Mutex::new(vec![still.clone()]);
        let waiter = ScriptedWait {
            answers: parking_lot::Mutex::new(vec![Err(mproc_ipc::Error::Closed)]),
            watched: parking_lot::Mutex::default(),
        };
        assert!(!reap_once(&waiter, &wake, &orphans));
        assert_eq!(still.asked.get(), 0, "no status asked after a failed wait");
    }
}
