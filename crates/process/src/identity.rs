//! Who this process is: `current_process()`, `parent_process()`, `cpu_count()`.

use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

use crate::sys::leaked::Leaked;

/// What a process knows of itself; a child gets it from its parent at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Identity {
    pub(crate) name: String,
    pub(crate) daemon: bool,
    pub(crate) authkey: [u8; 32],
    /// The key of [`FnRef`](crate::FnRef) tags: secret, unlike the authkey, which any code
    /// can read.
    pub(crate) fn_key: [u8; 16],
    /// The parent's pid and name; `None` in the main process.
    pub(crate) parent: Option<(u32, String)>,
}

/// This process's identity. No lock: nothing of it is held across a fork, and a forked child
/// becomes its identity with one store (see [`Leaked`]).
static IDENTITY: Leaked<Identity> = Leaked::new();

/// This process's identity (made on first use in the main process).
fn me() -> &'static Identity {
    IDENTITY.get_or_init(main_identity)
}

/// Numbers children's default names: `Process-1`, `Process-2`, ... (`Process-1:1` below a
/// child named `Process-1`).
static CHILDREN_STARTED: AtomicU32 = AtomicU32::new(0);

fn main_identity() -> Identity {
    // The function key is what makes `FnRef` tags unforgeable: a process that cannot draw it
    // must not run with a guessable one (all zeros), so it stops here, loudly.
    let random = |buf: &mut [u8]| {
        fill_random(buf, |rest| rustix::rand::getrandom(rest, rustix::rand::GetRandomFlags::empty()))
            .unwrap_or_else(|e| panic!("mproc: cannot draw this process's secret keys (getrandom): {e}"))
    };
    let (mut authkey, mut fn_key) = ([0; 32], [0; 16]);
    random(&mut authkey);
    random(&mut fn_key);
    Identity { name: "MainProcess".into(), daemon: false, authkey, fn_key, parent: None }
}

/// Fills `buf` from `source` (getrandom(2), or a script in tests), which may fill less than
/// asked or be interrupted: all of it, or the error that stopped it.
fn fill_random(
    buf: &mut [u8],
    mut source: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match source(&mut buf[done..]) {
            Ok(0) => return Err(rustix::io::Errno::AGAIN),
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// This process's identity (made on first use in the main process).
pub(crate) fn identity() -> Identity {
    me().clone()
}

/// Whether this process is a daemon (without copying its identity).
pub(crate) fn is_daemon() -> bool {
    IDENTITY.get().is_some_and(|me| me.daemon)
}

/// The key of [`FnRef`](crate::FnRef) tags.
pub(crate) fn fn_key() -> [u8; 16] {
    me().fn_key
}

/// Becomes the child described by `identity`: at a spawned start, or in a forked child (a
/// few stores, no call: each page of code a forked child runs first costs it a fault). The
/// identity the process had before is not dropped: freeing it in a forked child would write
/// to heap pages, each write a page copied.
#[inline(always)]
pub(crate) fn become_child(identity: Box<Identity>) {
    IDENTITY.set(Box::leak(identity));
    CHILDREN_STARTED.store(0, Ordering::Relaxed);
}

/// Whether this process has started (or tried to start) a child: if not, it has none to join.
/// A load of a word the parent's memory had, where a Fork child looks before it leaves (the
/// registry's per-process page it may never have touched).
#[inline(always)]
pub(crate) fn started_children() -> bool {
    CHILDREN_STARTED.load(Ordering::Relaxed) != 0
}

/// The identity of a new child of this process.
pub(crate) fn child_identity(name: Option<String>, daemon: bool) -> Identity {
    let me = me();
    let n = CHILDREN_STARTED.fetch_add(1, Ordering::Relaxed) + 1;
    let name = name.unwrap_or_else(|| match me.parent {
        None => format!("Process-{n}"),
        Some(_) => format!("{}:{n}", me.name),
    });
    Identity {
        name,
        daemon,
        authkey: me.authkey,
        fn_key: me.fn_key,
        parent: Some((crate::global::pid(), me.name.clone())),
    }
}

/// The identity of a daemon child mproc starts for itself (the fork server), which does not
/// count among the user's children.
pub(crate) fn helper_identity(name: &str) -> Identity {
    let me = me();
    Identity {
        name: name.into(),
        daemon: true,
        authkey: me.authkey,
        fn_key: me.fn_key,
        parent: Some((crate::global::pid(), me.name.clone())),
    }
}

/// What [`current_process`] tells.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pid: u32,
    identity: Identity,
}

impl ProcessInfo {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The name: `MainProcess`, the name given at start, or `Process-N` (`Process-N:M` for a
    /// grandchild), as Python names them.
    pub fn name(&self) -> &str {
        &self.identity.name
    }

    /// Whether this process is a daemon (killed when its parent dies, and not allowed to have
    /// children).
    pub fn daemon(&self) -> bool {
        self.identity.daemon
    }

    /// 32 random bytes made by the main process and inherited by every child: a shared
    /// secret the family can use to recognise its own connections.
    pub fn authkey(&self) -> &[u8; 32] {
        &self.identity.authkey
    }
}

/// This process: its pid, name, daemon flag and authkey (Python's `current_process()`).
pub fn current_process() -> ProcessInfo {
    ProcessInfo { pid: crate::global::pid(), identity: identity() }
}

/// This process's parent, if it was started by mproc (Python's `parent_process()`); `None` in
/// the main process.
pub fn parent_process() -> Option<ParentProcess> {
    let (pid, name) = identity().parent?;
    Some(ParentProcess { pid, name })
}

/// The parent of a process started by mproc.
#[derive(Debug, Clone)]
pub struct ParentProcess {
    pid: u32,
    name: String,
}

impl ParentProcess {
    /// The parent's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The parent's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the parent still runs. A process whose parent died is re-parented (to init or
    /// a subreaper), so this compares the kernel's idea of our parent with the one we had.
    pub fn is_alive(&self) -> bool {
        rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32) == Some(self.pid)
    }
}

/// How many CPUs this process may run on (its affinity mask), at least 1. This is the
/// default number of pool workers; unlike a count of the machine's CPUs it respects
/// `taskset` and container CPU sets.
pub fn cpu_count() -> usize {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => set.count().max(1) as usize,
        Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Short reads and interruptions are carried on from; a failure is an error, never a key
    /// left partly zero.
    #[test]
    fn random_keys_are_filled_whole_or_not_at_all() {
        let mut answers = vec![Ok(3), Err(rustix::io::Errno::INTR), Ok(13)].into_iter();
        let mut key = [0u8; 16];
        let mut asked = Vec::new();
        fill_random(&mut key, |rest| {
            asked.push(rest.len());
            rest.fill(7);
            answers.next().unwrap()
        })
        .unwrap();
        assert_eq!(asked, [16, 13, 13]);
        assert_eq!(key, [7; 16]);

        let mut key = [0u8; 16];
        let failed = fill_random(&mut key, |_| Err(rustix::io::Errno::NOSYS));
        assert_eq!(failed, Err(rustix::io::Errno::NOSYS));
        let failed = fill_random(&mut key, |_| Ok(0));
        assert!(failed.is_err(), "a source that gives nothing is an error, not a loop");
    }
}
