//! `StartMethod::ForkServer`: children are forked by a small single-threaded server process.
//!
//! The server is this program started again (like a Spawn child) that, in `init()`, serves
//! requests instead of running `main`. It has one thread, so forking it is always safe,
//! whatever the threads of the program asking. For each request it receives the child's
//! bootstrap end and a report connection (both as `SCM_RIGHTS`), forks, and tells the client
//! on the report connection the child's pid (with a pidfd it opened as the child's parent) and,
//! once it has reaped the child, its exit status. The child then behaves as a Spawn child,
//! first taking the working directory and environment its parent had at the request (the
//! server's are those of when it started).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use mproc_ipc::{Connection, Receiver};
use rustix::process::{Pid, PidfdFlags, WaitId, WaitIdOptions};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::bootstrap::{self, SERVER_ENV, Start, World, is_bootstrap_var};
use crate::child::{ChildState, Exit, Report};
use crate::error::{Error, Result};
use crate::global::PerProcess;
use crate::identity::Identity;
use crate::process::Process;
use crate::start::{bootstrap_env, finish_start, send_start};
use crate::status::ExitStatus;
use crate::sys;

/// How long the client waits for the server to answer a request: it is local and does
/// nothing but fork, so only a wedged server takes this long.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// One request: start a child on `bootstrap`, report on `reports`.
#[derive(Serialize, Deserialize)]
pub(crate) struct Request {
    bootstrap: Connection<(), Start>,
    reports: Connection<Report, ()>,
    daemon: bool,
}

/// This process's connection to its fork server.
static SERVER: PerProcess<Option<Arc<Server>>> = PerProcess::new();

/// The fork server, as its client sees it.
struct Server {
    conn: Connection<Request, ()>,
    /// The directory and environment this process had just before it started the server:
    /// the server's own (or, if they changed meanwhile, not theirs, which only makes the next
    /// start send them). A child forked by the server has them; it is sent the client's
    /// current ones only when they differ.
    world: Snapshot,
}

/// The directory and environment a fork server's children start with, kept to tell cheaply
/// whether this process's differ now: the environment as its raw entries, compared in place
/// (a [`World`] of owned copies costs two allocations per variable, and this comparison runs
/// at every start).
struct Snapshot {
    cwd: Option<std::path::PathBuf>,
    env: Vec<Box<[u8]>>,
}

impl Snapshot {
    /// This process's, less mproc's bootstrap variables (as [`World::current`]).
    fn current() -> Snapshot {
        let mut env = Vec::new();
        sys::env::for_each(|entry| {
            if !is_bootstrap_var(entry.to_bytes()) {
                env.push(entry.to_bytes().into());
            }
            true
        });
        Snapshot { cwd: std::env::current_dir().ok(), env }
    }

    /// Whether this process's directory and environment are still these.
    fn holds(&self) -> bool {
        if std::env::current_dir().ok() != self.cwd {
            return false;
        }
        let (mut kept, mut same) = (self.env.iter(), true);
        sys::env::for_each(|entry| {
            let entry = entry.to_bytes();
            same = is_bootstrap_var(entry) || kept.next().is_some_and(|k| **k == *entry);
            same
        });
        same && kept.next().is_none()
    }
}

/// Starts a child running `f(args)` from the fork server (starting the server first if need be).
pub(crate) fn start<A, R>(identity: Identity, f: fn(A) -> R, args: &A) -> Result<Process<R>>
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    crate::bootstrap::check_initialized()?;
    let (parent_end, child_end) = Connection::<Start, ()>::pair()?;
    let (reports, server_reports) = Connection::<(), Report>::pair()?;
    let request = Request { bootstrap: child_end, reports: server_reports.cast(), daemon: identity.daemon };
    let server = send_request(&request)?;
    drop(request);
    // What to run goes straight into the child's connection, while the server forks.
    let started_as = Box::new(identity.clone());
    let world = (!server.world.holds()).then(World::current);
    let (conn, sent) = send_start(parent_end, identity, false, world, f, args);
    let (pid, pidfd) = match reports.recv_timeout(ANSWER_TIMEOUT) {
        Ok(Report::Started { pid, pidfd }) => (pid, OwnedFd::from(pidfd)),
        Ok(Report::Failed(why)) => return Err(Error::ForkServer(format!("{:?}: {why}", started_as.name))),
        Ok(other) => {
            return Err(Error::ForkServer(format!("{:?}: unexpected answer {other:?}", started_as.name)));
        }
        Err(e) => return Err(Error::ForkServer(format!("{:?}: no answer: {e}", started_as.name))),
    };
    let pid = Pid::from_raw(pid as i32).ok_or_else(|| Error::ForkServer("pid 0".into()))?;
    let exit = Exit::Server { pidfd, reports: Box::new(reports) };
    let state = Arc::new(ChildState::new(pid, started_as, exit));
    finish_start(state, conn, sent)
}

/// Sends `request` to the server, starting it first if there is none (or it died); the
/// server it went to.
fn send_request(request: &Request) -> Result<Arc<Server>> {
    for _ in 0..2 {
        let server = SERVER.with(|| None, |server| server.clone());
        let server = match server {
            Some(server) => server,
            None => {
                let server = Arc::new(start_server()?);
                SERVER.with(|| None, |slot| slot.get_or_insert_with(|| server).clone())
            }
        };
        match server.conn.send(request) {
            Ok(()) => return Ok(server),
            // The server is gone: forget it and start another.
            Err(mproc_ipc::Error::Closed) => SERVER.with(|| None, |slot| *slot = None),
            Err(e) => return Err(Error::ForkServer(format!("cannot send a request: {e}"))),
        }
    }
    Err(Error::ForkServer("the server keeps dying".into()))
}

/// Starts the server: this program again, with the server variable set.
fn start_server() -> Result<Server> {
    let (ours, theirs) = Connection::<Request, ()>::pair()?;
    let env = [bootstrap_env(SERVER_ENV)];
    let world = Snapshot::current();
    let pid = sys::spawn::spawn_self(&env, bootstrap::is_bootstrap_var, theirs.as_fd())?;
    drop(theirs);
    // The server is our child too: reap it whenever it ends.
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty())?;
    let server = Box::new(crate::identity::helper_identity("ForkServer"));
    let state = Arc::new(ChildState::new(pid, server, Exit::own_with(pidfd)));
    crate::registry::adopt(state);
    Ok(Server { conn: ours, world })
}

/// A child the server started and has not reaped.
struct Served {
    pidfd: OwnedFd,
    reports: Connection<Report, ()>,
}

/// The server's loop, in the server process: never returns.
///
/// The server lives as long as the process that started it: it watches that process's pidfd,
/// not the end of `control`, since a copy of the client's end may live on in any process
/// forked from the client (a `Fork` child holds one). When the client dies, even by
/// `SIGKILL`, the server leaves at once, and its daemon children die with it.
pub(crate) fn serve(control: Connection<(), Request>) -> ! {
    let me = rustix::process::getpid();
    let Some(client) = parent_pidfd() else { crate::bootstrap::exit(0) };
    let mut children: HashMap<i32, Served> = HashMap::new();
    loop {
        // Requests may arrive together and wait inside `control`, read ahead: `wait` sees them.
        let ready: Vec<usize> = {
            let mut sources: Vec<&dyn mproc_ipc::Waitable> = vec![&control, &client];
            sources.extend(children.values().map(|c| &c.pidfd as &dyn mproc_ipc::Waitable));
            match mproc_ipc::wait(&sources, None) {
                Ok(ready) => ready,
                Err(_) => crate::bootstrap::exit(1),
            }
        };
        if ready.contains(&1) {
            // The client is gone: so is the server (see above).
            crate::bootstrap::exit(0);
        }
        // Reap first: a pidfd that is ready belongs to an ended child.
        let pids: Vec<i32> = children.keys().copied().collect();
        for &i in ready.iter().filter(|&&i| i > 1) {
            let pid = pids[i - 2];
            let served = children.remove(&pid).expect("known child");
            let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
            match rustix::process::waitid(WaitId::PidFd(served.pidfd.as_fd()), options) {
                Ok(Some(status)) => {
                    let _ = served.reports.send(&Report::Exited(ExitStatus::from_waitid(status)));
                }
                _ => {
                    children.insert(pid, served);
                }
            }
        }
        if ready.first() == Some(&0) {
            match control.recv() {
                Ok(request) => {
                    if let Some((pid, served)) = fork_child(request, me) {
                        children.insert(pid, served);
                    }
                }
                // The client closed its end: the server is done. Children run on (daemons
                // die with this process, their parent).
                Err(mproc_ipc::Error::Closed) => crate::bootstrap::exit(0),
                Err(_) => {}
            }
        }
    }
}

/// A pidfd of this process's parent, the client, or `None` if the parent is gone already
/// (this process was re-parented). The pid is opened, then the parent asked again: if it is
/// still ours, the pidfd was opened while the parent lived, so it names the parent and not a
/// process that reused its pid.
fn parent_pidfd() -> Option<OwnedFd> {
    let parent = rustix::process::getppid()?;
    let pidfd = rustix::process::pidfd_open(parent, PidfdFlags::empty()).ok()?;
    (rustix::process::getppid() == Some(parent)).then_some(pidfd)
}

/// Forks the requested child (which holds only stdio and its bootstrap end, and dies with
/// the server, `me`, if it is a daemon) and tells the client its pid: the new child, or
/// `None` if it could not be started (the client was told).
fn fork_child(request: Request, me: Pid) -> Option<(i32, Served)> {
    let Request { bootstrap, reports, daemon } = request;
    let child: fn(OwnedFd) -> ! =
        |bootstrap| crate::bootstrap::child_main(Connection::from(bootstrap), leave);
    let pid = match sys::fork::fork_keeping(bootstrap.into(), daemon.then_some(me), child) {
        Ok(pid) => pid,
        Err(e) => {
            let _ = reports.send(&Report::Failed(format!("fork failed: {e}")));
            return None;
        }
    };
    let (pidfd, for_client) = match pidfds(pid) {
        Ok(fds) => fds,
        Err(e) => return stop(pid, &reports, &format!("cannot watch the child it forked ({e})")),
    };
    let raw = pid.as_raw_nonzero().get();
    match reports.send(&Report::Started { pid: raw as u32, pidfd: Receiver::<()>::from(for_client) }) {
        // Told, or the client is gone (the child then leaves on its own, and is reaped here).
        Ok(()) | Err(mproc_ipc::Error::Closed) => Some((raw, Served { pidfd, reports })),
        // Not told (the pidfd it carries could not be duplicated: out of fds): the client
        // would wait for an answer that never comes.
        Err(e) => stop(pid, &reports, &format!("cannot tell the client about the child it forked ({e})")),
    }
}

/// Stops a child just forked that cannot be started as it should (`why`), and tells the
/// client: a child nothing watched would be a zombie nobody reaps, so it is killed and
/// reaped here (unreaped until then, its pid still names it).
fn stop(pid: Pid, reports: &Connection<Report, ()>, why: &str) -> Option<(i32, Served)> {
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    while let Err(rustix::io::Errno::INTR) = rustix::process::waitid(WaitId::Pid(pid), WaitIdOptions::EXITED)
    {
    }
    let _ = reports.send(&Report::Failed(format!(
        "{why}, so it was stopped; if the server is out of fds (too many children at once), raise \
         the file limit (ulimit -n)"
    )));
    None
}

/// The pidfd of the child `pid` just forked, and a copy for the client.
fn pidfds(pid: Pid) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty())?;
    let for_client = pidfd.try_clone()?;
    Ok((pidfd, for_client))
}

/// How a fork server's child leaves once it has reported, as Python's forked children do
/// (`os._exit` after `_bootstrap`): it joins its own children (terminating its daemons), as
/// the exit hook would, flushes what it printed, and ends with `_exit`, without libc's exit
/// path (the exit hooks, stdio's and every library's destructors), which is code the forked
/// child would fault in page by page (a fork does not copy the page tables of code): 13 of
/// its 45 page faults. C `atexit` hooks registered in the child do not run (as in Python).
fn leave(code: i32) -> ! {
    use std::io::Write;
    crate::registry::join_all();
    let _ = std::io::stdout().flush();
    sys::fork::exit_now(code)
}
