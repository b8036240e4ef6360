//! The parent's side of one worker (the child's side is `worker.rs`): its connection, the
//! writer thread that sends to it, the tasks it holds, its progress word, and how it is
//! started, read from, reaped and killed.

use std::collections::VecDeque;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use mproc_process::ipc::{Connection, Receiver};
use mproc_process::{Builder, ExitStatus, Process};

use crate::error::Error;
use crate::shared::{Config, Queued};
use crate::sys::Progress;
use crate::wire::{Failure, FromWorker, ToWorker, WireTask};
use crate::worker::{self, WorkerArgs};

/// What a task is assumed to take before any has been measured.
const FIRST_GUESS_NS: f64 = 20_000.0;

pub(crate) enum Body {
    Process(Option<Box<Process<()>>>),
    Thread,
}

pub(crate) struct Worker {
    pub(crate) name: String,
    pub(crate) pid: u32,
    /// Read by the handler; written by the worker's writer thread.
    pub(crate) conn: Arc<Connection<ToWorker, FromWorker>>,
    /// What the writer thread sends to the worker, in order. The handler never writes to a
    /// worker itself: a worker blocked writing outcomes to a handler blocked writing tasks to
    /// it would wait for ever.
    pub(crate) outbox: mpsc::Sender<ToWorker>,
    pub(crate) body: Body,
    /// Tasks sent and not yet answered, in the order sent (outcomes come in that order).
    pub(crate) held: VecDeque<Queued>,
    /// The id of each outstanding batch's last task.
    pub(crate) batch_ends: VecDeque<u64>,
    /// Tasks sent in all (for `max_tasks_per_child`).
    pub(crate) sent: u64,
    /// Recent time per task, nanoseconds.
    pub(crate) task_ns: f64,
    /// When the task it holds is overdue (`task_timeout`).
    pub(crate) deadline: Option<Instant>,
    /// Its connection failed: it is dead or dying.
    pub(crate) lost: bool,
    /// The last task it started.
    pub(crate) progress: Progress,
}

impl Worker {
    /// Starts worker number `n`.
    pub(crate) fn start(config: &Config, n: u64) -> Result<Worker, Error> {
        let (ours, theirs) = Connection::<ToWorker, FromWorker>::pair()?;
        let io = |e: std::io::Error| Error::Start(Arc::new(mproc_process::Error::Io(e)));
        let (progress, progress_fd) = Progress::create().map_err(io)?;
        let init = config.init.as_ref().map(|(driver, input)| WireTask {
            id: 0,
            driver: *driver,
            input: input.clone(),
        });
        let (name, pid, body) = if config.threads {
            let name = format!("PoolThread-{n}");
            let theirs_progress = Progress::map(&progress_fd).map_err(io)?;
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || worker::serve(&theirs, init, &theirs_progress))
                .map_err(io)?;
            (name, std::process::id(), Body::Thread)
        } else {
            let name = format!("PoolWorker-{n}");
            let mut builder = Builder::new().name(name.clone()).daemon(true).close_in_child(&ours);
            if let Some(method) = config.start_method {
                builder = builder.start_method(method);
            }
            let progress = Receiver::from(progress_fd);
            let process =
                builder.spawn_fn(worker::worker_main, WorkerArgs { conn: theirs, init, progress })?;
            (name, process.pid(), Body::Process(Some(Box::new(process))))
        };
        let conn = Arc::new(ours);
        let (outbox, inbox) = mpsc::channel::<ToWorker>();
        let writer = Arc::clone(&conn);
        std::thread::Builder::new()
            .name(format!("mproc-pool-w{n}"))
            .spawn(move || {
                for message in inbox {
                    // A failed send means the worker is gone: the handler sees its death.
                    if writer.send(&message).is_err() {
                        break;
                    }
                }
            })
            .map_err(io)?;
        log::info!("mproc-pool: started worker {name:?} (pid {pid})");
        Ok(Worker {
            name,
            pid,
            conn,
            outbox,
            body,
            held: VecDeque::new(),
            batch_ends: VecDeque::new(),
            sent: 0,
            task_ns: FIRST_GUESS_NS,
            deadline: None,
            lost: false,
            progress,
        })
    }

    pub(crate) fn sentinel(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match &self.body {
            Body::Process(Some(p)) => Some(p.sentinel()),
            _ => None,
        }
    }

    /// Takes one message's outcomes.
    pub(crate) fn take(&mut self, message: FromWorker, broken: &mut Option<Error>) {
        match message {
            FromWorker::Results { outcomes, busy_ns } => {
                let n = outcomes.len();
                for (id, outcome) in outcomes {
                    let Some(at) = self.held.iter().position(|h| h.id == id) else {
                        log::error!(
                            "mproc-pool: worker {:?} answered task #{id}, which it does not hold",
                            self.name
                        );
                        continue;
                    };
                    let held = self.held.remove(at).expect("position is in range");
                    while self.batch_ends.front().is_some_and(|&end| end <= id) {
                        self.batch_ends.pop_front();
                    }
                    let task = || held.slot.task();
                    held.slot.complete(outcome.map_err(|failure| match failure {
                        Failure::Panicked(message) => Error::Panicked {
                            task: task(),
                            worker: self.name.clone(),
                            pid: self.pid,
                            message,
                        },
                        Failure::Encode(message) | Failure::Decode(message) => {
                            Error::Transfer { task: task(), message }
                        }
                    }));
                }
                if n > 0 {
                    let per = busy_ns as f64 / n as f64;
                    self.task_ns = 0.5 * self.task_ns + 0.5 * per;
                }
                if self.held.is_empty() {
                    self.deadline = None;
                }
            }
            FromWorker::InitFailed(failure) => {
                let message = match failure {
                    Failure::Panicked(m) => format!("it panicked in worker {:?}: {m}", self.name),
                    Failure::Encode(m) | Failure::Decode(m) => m,
                };
                log::error!("mproc-pool: the initializer failed in worker {:?}: {message}", self.name);
                broken.get_or_insert(Error::Initializer { message });
            }
        }
    }

    /// Reads every message that has arrived; false if the worker is gone.
    pub(crate) fn drain(&mut self, broken: &mut Option<Error>) -> bool {
        loop {
            match self.conn.try_recv() {
                Ok(Some(message)) => self.take(message, broken),
                Ok(None) => return true,
                Err(e) => {
                    if !self.lost {
                        log::debug!("mproc-pool: worker {:?} connection ended: {e}", self.name);
                    }
                    self.lost = true;
                    return false;
                }
            }
        }
    }

    /// Waits for the worker's end; how it ended (`None` for a thread).
    pub(crate) fn reap(&mut self) -> Option<ExitStatus> {
        let Body::Process(process) = &mut self.body else { return None };
        let process = process.take()?;
        match process.join() {
            Ok(()) => Some(ExitStatus::Code(0)),
            Err(mproc_process::Error::Signaled { signal, .. }) => Some(ExitStatus::Signal(signal)),
            Err(mproc_process::Error::Exited { code, .. }) => Some(ExitStatus::Code(code)),
            Err(mproc_process::Error::Panicked { .. }) => Some(ExitStatus::Code(1)),
            Err(e) => {
                log::warn!("mproc-pool: joining worker {:?}: {e}", self.name);
                None
            }
        }
    }

    pub(crate) fn kill(&self) {
        if let Body::Process(Some(p)) = &self.body {
            let _ = p.kill();
        }
    }

    /// Fails every task it holds with `error(task)`.
    pub(crate) fn fail_held(&mut self, error: impl Fn(String) -> Error) {
        for held in self.held.drain(..) {
            held.slot.complete(Err(error(held.slot.task())));
        }
        self.batch_ends.clear();
        self.deadline = None;
    }
}
