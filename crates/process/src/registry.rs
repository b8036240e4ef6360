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
/// The reaper thread's wake-up pipe and the children it watches (handles dropped).
static REAPER: PerProcess<Option<Reaper>> = PerProcess::new();

struct Reaper {
    wake: OwnedFd,
    orphans: Arc<parking_lot::Mutex<Vec<Arc<ChildState>>>>,
}

/// Forgets the children mproc is done with (freeing their state), and makes room for one
/// more. The Fork start calls it before forking: what it writes would otherwise be written
/// after the fork, each page a copy while the child runs.
pub(crate) fn prune() {
    CHILDREN.with(Vec::new, |children| {
        children.retain(|c| !c.is_settled());
        children.reserve(1);
    });
}

/// Records a new child.
pub(crate) fn add(child: Arc<ChildState>) {
    static AT_EXIT: Once = Once::new();
    AT_EXIT.call_once(|| crate::sys::at_exit(join_at_exit));
    CHILDREN.with(Vec::new, |children| {
        children.retain(|c| !c.is_settled());
        children.push(child);
    });
}

/// The children that still run (those that ended are reaped on the way, as in Python).
pub(crate) fn active() -> Vec<Arc<ChildState>> {
    CHILDREN.with(Vec::new, |children| {
        children.retain(|c| !c.is_settled() && !matches!(c.try_status(), Ok(Some(_))));
        children.clone()
    })
}

/// Hands a child whose handle is gone to the reaper thread, which reaps it when it ends: no
/// zombie is ever left behind.
pub(crate) fn adopt(child: Arc<ChildState>) {
    if matches!(child.try_status(), Ok(Some(_))) {
        return;
    }
    REAPER.with(
        || None,
        |reaper| {
            let reaper = reaper.get_or_insert_with(start_reaper);
            reaper.orphans.lock().push(child);
            let _ = rustix::io::write(&reaper.wake, &[1]);
        },
    );
}

fn start_reaper() -> Reaper {
    let (wake_rx, wake) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe for the reaper");
    let orphans: Arc<parking_lot::Mutex<Vec<Arc<ChildState>>>> = Arc::default();
    let watched = Arc::clone(&orphans);
    std::thread::Builder::new()
        .name("mproc-reaper".into())
        .spawn(move || reap_loop(wake_rx, &watched))
        .expect("thread for the reaper");
    Reaper { wake, orphans }
}

/// Waits on the orphans' status fds and the wake pipe; reaps each orphan as it ends.
fn reap_loop(wake: OwnedFd, orphans: &parking_lot::Mutex<Vec<Arc<ChildState>>>) {
    loop {
        let watched: Vec<Arc<ChildState>> = orphans.lock().clone();
        let mut sources: Vec<&dyn mproc_ipc::Waitable> = vec![&wake];
        sources.extend(watched.iter().map(|c| c.status_source()));
        match mproc_ipc::wait(&sources, None) {
            Ok(ready) if ready.first() == Some(&0) => {
                let mut buf = [0u8; 64];
                let _ = rustix::io::read(&wake, &mut buf);
            }
            Ok(_) => {}
            Err(_) => return,
        }
        drop(sources);
        // An error (a fork server gone) also ends the watch: there is nothing left to reap.
        orphans.lock().retain(|c| matches!(c.try_status(), Ok(None)));
    }
}

/// At exit, as Python does: daemon children are terminated, then every child is waited for,
/// so none is orphaned silently and none is left a zombie.
extern "C" fn join_at_exit() {
    let children = CHILDREN.with(Vec::new, std::mem::take);
    for child in children.iter().filter(|c| c.daemon) {
        let _ = child.signal(Signal::TERM);
    }
    for child in children.iter().filter(|c| !c.is_settled()) {
        let _ = child.wait_status(None, false);
    }
}
