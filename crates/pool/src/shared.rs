//! What the pool's callers and its handler thread share: the configuration, the queue of
//! submitted tasks, and the handler's wake-up pipe.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mproc_process::ipc::Sender;
use mproc_process::{FnRef, StartMethod};
use parking_lot::Mutex;

use crate::cluster::{Arrivals, RemoteConfig};
use crate::error::Error;
use crate::result::Slot;
use mproc_process::ipc::Carried;

use crate::wire::Driver;

/// How the pool was configured.
#[derive(Clone)]
pub(crate) struct Config {
    /// This pool among the process's pools (from 1), for [`Role`].
    pub(crate) id: u64,
    pub(crate) processes: usize,
    pub(crate) init: Option<(FnRef<Driver>, Carried)>,
    /// The initializer's type, for errors.
    pub(crate) init_name: &'static str,
    /// The largest task input or value, in bytes.
    pub(crate) max_message_size: usize,
    pub(crate) max_tasks_per_child: Option<u64>,
    pub(crate) start_method: Option<StartMethod>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) threads: bool,
    /// How it takes remote workers, if it listens.
    pub(crate) remote: Option<RemoteConfig>,
}

/// A task waiting for a worker.
pub(crate) struct Queued {
    pub(crate) id: u64,
    pub(crate) driver: FnRef<Driver>,
    pub(crate) input: Carried,
    pub(crate) slot: Arc<Slot>,
    /// Its position in a remote worker's stream, once sent to one (`Claims::Remote`).
    pub(crate) position: u64,
}

/// What callers and the handler share.
#[derive(Default)]
pub(crate) struct Queue {
    pub(crate) tasks: VecDeque<Queued>,
    pub(crate) closed: bool,
    pub(crate) terminate: bool,
    /// The handler sleeps and wants a wake-up for new tasks.
    pub(crate) asleep: bool,
    /// The pool cannot run tasks (its initializer failed, or no worker can start): new
    /// tasks fail at once with this.
    pub(crate) broken: Option<Error>,
    /// The handler has finished: every task is done and every worker gone.
    pub(crate) finished: bool,
}

pub(crate) struct Shared {
    pub(crate) queue: Mutex<Queue>,
    pub(crate) finished: parking_lot::Condvar,
    pub(crate) wake: Sender<()>,
    pub(crate) config: Config,
    /// Remote workers taken in by the listener thread, for the handler.
    pub(crate) arrivals: Mutex<Arrivals>,
    /// Signalled when a remote worker joins or is refused.
    pub(crate) joined: parking_lot::Condvar,
}

impl Shared {
    /// Wakes the handler (for close, terminate, or a new task while it sleeps).
    pub(crate) fn wake(&self) {
        let _ = self.wake.send_bytes(&[]);
    }
}

/// What a thread of the pool's own does: a pool dropped or joined there must not wait for it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A thread worker (`PoolBuilder::threads`): it runs the pool's tasks.
    Worker,
    /// The callback thread: it runs the callbacks.
    Callbacks,
}

thread_local! {
    /// The pool (its [`Config::id`]) this thread serves, and how; none on other threads.
    static SERVES: Cell<Option<(u64, Role)>> = const { Cell::new(None) };
}

/// A new pool's [`Config::id`].
pub(crate) fn next_pool_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Marks this thread as serving pool `id` as `role`, for the rest of its life.
pub(crate) fn serve_as(id: u64, role: Role) {
    SERVES.with(|serves| serves.set(Some((id, role))));
}

/// How this thread serves pool `id`, if it does.
pub(crate) fn role_in(id: u64) -> Option<Role> {
    SERVES.with(|serves| serves.get()).filter(|&(pool, _)| pool == id).map(|(_, role)| role)
}
