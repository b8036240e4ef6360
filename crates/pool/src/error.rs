//! The one error type of `mproc-pool`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use mproc_process::ExitStatus;

/// Why a task (or the pool) has no value.
///
/// Errors about a task name it (`task #17 (fn(u64) -> u64)`) and the worker that held it
/// (its name and pid), and say what happened. Cloneable, so a callback and the
/// [`AsyncResult`](crate::AsyncResult) can both have it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The worker running the task died (killed, segfault, abort, out of memory). The pool
    /// replaced it; other tasks go on.
    WorkerDied {
        /// The task.
        task: String,
        /// The worker's name.
        worker: String,
        /// The worker's pid.
        pid: u32,
        /// How it ended; `None` for a thread worker.
        status: Option<ExitStatus>,
    },
    /// The task ran longer than the pool's `task_timeout`: its worker was killed (and
    /// replaced).
    Timeout {
        /// The task.
        task: String,
        /// The worker's name.
        worker: String,
        /// The worker's pid.
        pid: u32,
        /// The pool's `task_timeout`.
        timeout: Duration,
    },
    /// The task's function panicked; the worker lives on.
    Panicked {
        /// The task.
        task: String,
        /// The worker's name.
        worker: String,
        /// The worker's pid.
        pid: u32,
        /// The panic message.
        message: String,
    },
    /// The task's arguments or its value could not cross between processes (serialization).
    Transfer {
        /// The task.
        task: String,
        /// What failed.
        message: String,
    },
    /// The initializer failed in a worker: the pool cannot run tasks.
    Initializer {
        /// Why.
        message: String,
    },
    /// The task was submitted to a pool that is closed or terminated.
    Closed,
    /// The pool was terminated before the task finished.
    Terminated {
        /// The task.
        task: String,
    },
    /// `get_timeout` or `wait_timeout` ran out before the result was ready; the handle stays
    /// usable.
    NotReady,
    /// The value was already taken from this handle.
    AlreadyTaken,
    /// `join` on a pool that is neither closed nor terminated (as Python, which raises).
    NotClosed,
    /// `join` from one of the pool's own tasks (on a thread worker, see
    /// [`PoolBuilder::threads`](crate::PoolBuilder::threads)): it would wait for that task,
    /// which is waiting in `join`, for ever.
    JoinInOwnTask,
    /// A worker could not be started.
    Start(Arc<mproc_process::Error>),
    /// The pool's configuration cannot work (the message says which setting and why).
    Config(&'static str),
    /// The pool was used from a forked child: the child has a copy of the `Pool` but not its
    /// handler thread nor its workers, which belong to the process that built it.
    ForkedCopy {
        /// The process that built the pool.
        owner: u32,
        /// This process.
        pid: u32,
    },
    /// Workers keep dying before they run a task (without an initializer: in its place, see
    /// [`Error::Initializer`]): the pool stopped replacing them.
    Broken {
        /// How the workers ended.
        message: String,
    },
    /// Fewer remote workers joined than were waited for, by the deadline
    /// ([`PoolBuilder::remote_workers`](crate::PoolBuilder::remote_workers),
    /// [`Pool::wait_for_workers`](crate::Pool::wait_for_workers)).
    MissingWorkers {
        /// How many were waited for.
        wanted: usize,
        /// How many joined.
        came: usize,
        /// How long the wait was.
        waited: Duration,
        /// Why each connection the pool refused was refused (a wrong authkey, another build).
        refused: Vec<String>,
    },
}

/// `Result` with [`Error`] as the error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::WorkerDied { task, worker, pid, status } => {
                write!(f, "{task} failed: worker {worker:?} (pid {pid}) died")?;
                match status {
                    Some(status @ ExitStatus::Signal(_)) => write!(f, " from {status}"),
                    Some(status @ ExitStatus::Code(_)) => write!(f, " with {status}"),
                    None => Ok(()),
                }
            }
            Error::Timeout { task, worker, pid, timeout } => {
                write!(f, "{task} timed out after {timeout:?}; worker {worker:?} (pid {pid}) was killed")
            }
            Error::Panicked { task, worker, pid, message } => {
                write!(f, "{task} panicked in worker {worker:?} (pid {pid}): {message}")
            }
            Error::Transfer { task, message } => write!(f, "{task}: {message}"),
            Error::Initializer { message } => write!(f, "the pool's initializer failed: {message}"),
            Error::Closed => f.write_str("the pool is closed: it takes no new tasks"),
            Error::Terminated { task } => write!(f, "{task} was cancelled: the pool was terminated"),
            Error::NotReady => f.write_str("the result is not ready yet"),
            Error::AlreadyTaken => f.write_str("the result was already taken"),
            Error::NotClosed => f.write_str("join needs a closed or terminated pool: call close() first"),
            Error::JoinInOwnTask => f.write_str(
                "join was called from one of the pool's own tasks, which it would wait for for ever: \
                 join the pool from outside it (dropping it there closes it without waiting)",
            ),
            Error::Start(e) => write!(f, "cannot start a pool worker: {e}"),
            Error::Config(why) => f.write_str(why),
            Error::ForkedCopy { owner, pid } => write!(
                f,
                "this pool belongs to process {owner}: process {pid} is a forked copy of it, without its \
                 handler thread or workers (build a new pool in the child)"
            ),
            Error::Broken { message } => write!(f, "the pool cannot run tasks: {message}"),
            Error::MissingWorkers { wanted, came, waited, refused } => {
                write!(
                    f,
                    "{came} of the {wanted} remote workers waited for joined the pool within {waited:?}"
                )?;
                if !refused.is_empty() {
                    write!(f, "; refused: {}", refused.join("; "))?;
                }
                Ok(())
            }
        }
    }
}

/// The message of a wrapped error is part of the `Display` (as `cannot start a pool worker:
/// ...`), so it is not also a `source()`: each cause prints once.
impl std::error::Error for Error {}

impl From<mproc_process::Error> for Error {
    fn from(e: mproc_process::Error) -> Self {
        Error::Start(Arc::new(e))
    }
}

impl From<mproc_process::ipc::Error> for Error {
    fn from(e: mproc_process::ipc::Error) -> Self {
        Error::Start(Arc::new(e.into()))
    }
}
