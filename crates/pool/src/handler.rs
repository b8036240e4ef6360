//! The pool's handler thread: hands tasks to workers in batches, collects their outcomes,
//! notices dead and overdue workers, replaces them, and shuts the pool down.
//!
//! It is the only owner of the workers. Everything it waits for (new tasks, a worker's
//! outcomes, a worker's death, the next task deadline) goes through one `mproc_ipc::wait`.

use std::collections::VecDeque;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use mproc_process::ipc::{Connection, Receiver, Sender, Waitable};
use mproc_process::{Builder, ExitStatus, FnRef, Process, StartMethod};
use parking_lot::Mutex;

use crate::error::Error;
use crate::result::Slot;
use crate::sys::Progress;
use mproc_process::ipc::Carried;

use crate::wire::{Driver, Failure, FromWorker, ToWorker, WireTask};
use crate::worker::{self, WorkerArgs};

/// The work a batch should hold, judged by how long the worker's recent tasks took: long
/// enough that the round trip is paid rarely, short enough that a batch never holds much
/// work back from an idle worker.
const BATCH_WORK: Duration = Duration::from_micros(500);
/// The most tasks in one batch.
const BATCH_MAX: usize = 4096;
/// The most input bytes in one batch (a batch takes at least one task whatever its size).
const BATCH_BYTES: usize = 1 << 20;
/// What a task is assumed to take before any has been measured.
const FIRST_GUESS_NS: f64 = 20_000.0;

/// How the pool was configured.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) init: Option<(FnRef<Driver>, Carried)>,
    pub(crate) max_tasks_per_child: Option<u64>,
    pub(crate) start_method: Option<StartMethod>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) threads: bool,
}

/// A task waiting for a worker.
pub(crate) struct Queued {
    pub(crate) id: u64,
    pub(crate) driver: FnRef<Driver>,
    pub(crate) input: Carried,
    pub(crate) slot: Arc<Slot>,
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
}

impl Shared {
    /// Wakes the handler (for close, terminate, or a new task while it sleeps).
    pub(crate) fn wake(&self) {
        let _ = self.wake.send_bytes(&[]);
    }
}

enum Body {
    Process(Option<Box<Process<()>>>),
    Thread,
}

pub(crate) struct Worker {
    name: String,
    pid: u32,
    /// Read by the handler; written by the worker's writer thread.
    conn: Arc<Connection<ToWorker, FromWorker>>,
    /// What the writer thread sends to the worker, in order. The handler never writes to a
    /// worker itself: a worker blocked writing outcomes to a handler blocked writing tasks to
    /// it would wait for ever.
    outbox: mpsc::Sender<ToWorker>,
    body: Body,
    /// Tasks sent and not yet answered, in the order sent (outcomes come in that order).
    held: VecDeque<Queued>,
    /// The id of each outstanding batch's last task.
    batch_ends: VecDeque<u64>,
    /// Tasks sent in all (for `max_tasks_per_child`).
    sent: u64,
    /// Recent time per task, nanoseconds.
    task_ns: f64,
    /// When the task it holds is overdue (`task_timeout`).
    deadline: Option<Instant>,
    /// Its connection failed: it is dead or dying.
    lost: bool,
    /// The last task it started.
    progress: Progress,
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

    fn sentinel(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match &self.body {
            Body::Process(Some(p)) => Some(p.sentinel()),
            _ => None,
        }
    }

    /// Takes one message's outcomes.
    fn take(&mut self, message: FromWorker, broken: &mut Option<Error>) {
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
    fn drain(&mut self, broken: &mut Option<Error>) -> bool {
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
    fn reap(&mut self) -> Option<ExitStatus> {
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

    fn kill(&self) {
        if let Body::Process(Some(p)) = &self.body {
            let _ = p.kill();
        }
    }

    /// Fails every task it holds with `error(task)`.
    fn fail_held(&mut self, error: impl Fn(String) -> Error) {
        for held in self.held.drain(..) {
            held.slot.complete(Err(error(held.slot.task())));
        }
        self.batch_ends.clear();
        self.deadline = None;
    }
}

pub(crate) struct Handler {
    shared: Arc<Shared>,
    wake: Receiver<()>,
    workers: Vec<Worker>,
    /// Retired by `max_tasks_per_child`: told to leave, not yet reaped.
    retiring: Vec<Worker>,
    pending: VecDeque<Queued>,
    started: u64,
}

impl Handler {
    pub(crate) fn new(shared: Arc<Shared>, wake: Receiver<()>, workers: Vec<Worker>) -> Handler {
        let started = workers.len() as u64;
        Handler { shared, wake, workers, retiring: Vec::new(), pending: VecDeque::new(), started }
    }

    /// The handler thread's loop.
    pub(crate) fn run(mut self) {
        loop {
            let (closed, terminate, broken) = {
                let mut queue = self.shared.queue.lock();
                self.pending.extend(queue.tasks.drain(..));
                (queue.closed, queue.terminate, queue.broken.clone())
            };
            if terminate {
                self.terminate();
                break;
            }
            if let Some(error) = broken {
                self.fail_everything(&error);
            }
            self.dispatch();
            self.retire();
            if closed && self.pending.is_empty() && self.workers.iter().all(|w| w.held.is_empty()) {
                self.shut_down();
                break;
            }
            self.wait_for_events();
        }
        let mut queue = self.shared.queue.lock();
        queue.finished = true;
        for task in queue.tasks.drain(..) {
            task.slot.complete(Err(Error::Closed));
        }
        drop(queue);
        self.shared.finished.notify_all();
    }

    /// Hands pending tasks to workers that have room, in batches sized by their recent tasks.
    fn dispatch(&mut self) {
        let timeout = self.shared.config.task_timeout;
        let max_tasks = self.shared.config.max_tasks_per_child;
        // With a timeout a worker holds one task at a time, so the task's clock starts when
        // it is sent; otherwise two batches, so a worker never idles while its next one travels.
        let depth = if timeout.is_some() { 1 } else { 2 };
        let mut open: usize = self.workers.iter().filter(|w| !w.lost && w.batch_ends.len() < depth).count();
        for worker in &mut self.workers {
            if self.pending.is_empty() {
                break;
            }
            if worker.lost || worker.batch_ends.len() >= depth {
                continue;
            }
            let room = max_tasks.map_or(u64::MAX, |max| max.saturating_sub(worker.sent));
            if room == 0 {
                continue;
            }
            let by_time = (BATCH_WORK.as_nanos() as f64 / worker.task_ns.max(1.0)) as usize;
            // Leave a fair share for the other workers with room.
            let share = self.pending.len().div_ceil(open.max(1));
            open = open.saturating_sub(1);
            let mut n = by_time.clamp(1, BATCH_MAX).min(share).min(room.min(BATCH_MAX as u64) as usize);
            if timeout.is_some() {
                n = 1;
            }
            let mut batch = Vec::with_capacity(n);
            let mut bytes = 0;
            while batch.len() < n {
                let Some(task) = self.pending.front() else { break };
                if !batch.is_empty() && bytes + task.input.bytes().len() > BATCH_BYTES {
                    break;
                }
                let task = self.pending.pop_front().expect("front exists");
                bytes += task.input.bytes().len();
                batch.push(WireTask { id: task.id, driver: task.driver, input: task.input.clone() });
                worker.held.push_back(task);
            }
            let last = batch.last().map(|t| t.id).expect("a batch has a task");
            worker.sent += batch.len() as u64;
            worker.batch_ends.push_back(last);
            if let Some(timeout) = timeout {
                worker.deadline = Some(Instant::now() + timeout);
            }
            if worker.outbox.send(ToWorker::Batch(batch)).is_err() {
                // Its writer has stopped: the worker is dying, and its death fails (or hands
                // on) what it holds.
                worker.lost = true;
            }
        }
    }

    /// Retires workers that ran `max_tasks_per_child` tasks and starts their successors.
    fn retire(&mut self) {
        let Some(max) = self.shared.config.max_tasks_per_child else { return };
        let mut i = 0;
        while i < self.workers.len() {
            let w = &self.workers[i];
            if w.sent >= max && w.held.is_empty() && !w.lost {
                let worker = self.workers.swap_remove(i);
                let _ = worker.outbox.send(ToWorker::Exit);
                log::info!(
                    "mproc-pool: worker {:?} (pid {}) retired after {} tasks (max_tasks_per_child)",
                    worker.name,
                    worker.pid,
                    worker.sent
                );
                self.retiring.push(worker);
                self.replace();
            } else {
                i += 1;
            }
        }
        // Reap the retired ones that have left.
        self.retiring.retain_mut(|w| match &w.body {
            Body::Process(Some(p)) if p.is_alive() => true,
            _ => {
                w.reap();
                false
            }
        });
    }

    /// Starts a worker to take a lost one's place.
    fn replace(&mut self) {
        self.started += 1;
        match Worker::start(&self.shared.config, self.started) {
            Ok(worker) => self.workers.push(worker),
            Err(e) => {
                log::error!("mproc-pool: cannot start a replacement worker: {e}");
                if self.workers.is_empty() {
                    // Nothing can run the tasks: fail them rather than wait for ever.
                    self.shared.queue.lock().broken.get_or_insert(e);
                }
            }
        }
    }

    /// Sleeps until something happens: a new task (when a worker has room for it), a
    /// worker's outcomes or death, or the next deadline. Then handles what happened.
    fn wait_for_events(&mut self) {
        let depth = if self.shared.config.task_timeout.is_some() { 1 } else { 2 };
        let has_room = self.workers.iter().any(|w| !w.lost && w.batch_ends.len() < depth);
        {
            let mut queue = self.shared.queue.lock();
            if queue.terminate || has_room && !queue.tasks.is_empty() {
                return;
            }
            // New tasks wake the handler only when a worker could take them; otherwise the
            // next outcome will.
            queue.asleep = has_room;
        }
        let deadline = self.workers.iter().filter_map(|w| w.deadline).min();
        let sentinels: Vec<Option<std::os::fd::BorrowedFd<'_>>> =
            self.workers.iter().map(Worker::sentinel).collect();
        let mut sources: Vec<&dyn Waitable> = vec![&self.wake];
        // For each source after the wake pipe: its worker, and whether it is the sentinel.
        let mut owners = Vec::new();
        for (i, worker) in self.workers.iter().enumerate() {
            sources.push(&*worker.conn);
            owners.push((i, false));
            if let Some(sentinel) = &sentinels[i] {
                sources.push(sentinel);
                owners.push((i, true));
            }
        }
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let ready = mproc_process::ipc::wait(&sources, timeout).unwrap_or_else(|e| {
            log::error!("mproc-pool: waiting for workers failed: {e}");
            vec![0]
        });
        drop(sources);
        drop(sentinels);
        self.shared.queue.lock().asleep = false;
        if ready.first() == Some(&0) {
            while let Ok(Some(())) = self.wake.try_recv() {}
        }
        // The wait already says which sentinels are readable: no second look at them.
        let touched: Vec<(usize, bool)> = ready.iter().filter(|&&i| i > 0).map(|&i| owners[i - 1]).collect();
        let mut broken = None;
        let mut dead = Vec::new();
        for (n, &(i, _)) in touched.iter().enumerate() {
            if n > 0 && touched[n - 1].0 == i {
                continue;
            }
            let exited = touched.iter().any(|&(j, sentinel)| j == i && sentinel);
            let worker = &mut self.workers[i];
            let alive = worker.drain(&mut broken);
            if !alive || exited || worker.lost {
                dead.push((i, false));
            }
        }
        let now = Instant::now();
        for (i, worker) in self.workers.iter().enumerate() {
            if worker.deadline.is_some_and(|d| d <= now) && !dead.iter().any(|&(j, _)| j == i) {
                dead.push((i, true));
            }
        }
        if let Some(error) = broken {
            self.shared.queue.lock().broken.get_or_insert(error);
        }
        dead.sort_unstable_by_key(|d| std::cmp::Reverse(d.0));
        for (i, timed_out) in dead {
            let worker = self.workers.swap_remove(i);
            self.bury(worker, timed_out);
        }
    }

    /// A worker died or overran its task: fail what it held, reap it, replace it.
    fn bury(&mut self, mut worker: Worker, timed_out: bool) {
        if timed_out {
            worker.kill();
        }
        let mut broken = None;
        worker.drain(&mut broken);
        let status = worker.reap();
        if let Some(error) = broken {
            self.shared.queue.lock().broken.get_or_insert(error);
        }
        // Tasks it never started go to another worker, in their order; the rest fail.
        let started = worker.progress.get();
        let broken = self.shared.queue.lock().broken.clone();
        if broken.is_none() {
            while worker.held.back().is_some_and(|h| h.id > started) {
                let held = worker.held.pop_back().expect("back exists");
                self.pending.push_front(held);
            }
        }
        if let Some(error) = &broken {
            worker.fail_held(|_| error.clone());
        }
        let (name, pid) = (worker.name.clone(), worker.pid);
        let lost = worker.held.len();
        if timed_out {
            let timeout = self.shared.config.task_timeout.unwrap_or_default();
            log::warn!(
                "mproc-pool: a task of worker {name:?} (pid {pid}) ran past {timeout:?}: worker killed"
            );
            worker.fail_held(|task| Error::Timeout { task, worker: name.clone(), pid, timeout });
        } else {
            log::warn!(
                "mproc-pool: worker {name:?} (pid {pid}) died ({}), failing the {lost} task(s) it held",
                match status {
                    Some(ExitStatus::Signal(s)) => format!("signal {s}"),
                    Some(ExitStatus::Code(c)) => format!("exit code {c}"),
                    None => "thread ended".into(),
                }
            );
            worker.fail_held(|task| Error::WorkerDied { task, worker: name.clone(), pid, status });
        }
        if broken.is_none() {
            log::info!("mproc-pool: replacing worker {name:?}");
            self.replace();
        }
    }

    fn fail_everything(&mut self, error: &Error) {
        for task in self.pending.drain(..) {
            task.slot.complete(Err(error.clone()));
        }
        for worker in &mut self.workers {
            worker.fail_held(|_| error.clone());
        }
    }

    /// Close: every task is done; tell the workers to leave and wait for them.
    fn shut_down(&mut self) {
        for worker in &self.workers {
            let _ = worker.outbox.send(ToWorker::Exit);
        }
        for mut worker in self.workers.drain(..).chain(self.retiring.drain(..)) {
            worker.reap();
            log::debug!("mproc-pool: worker {:?} (pid {}) left", worker.name, worker.pid);
        }
    }

    /// Terminate: kill the workers now; every unfinished task fails.
    fn terminate(&mut self) {
        for task in self.pending.drain(..) {
            let task_name = task.slot.task();
            task.slot.complete(Err(Error::Terminated { task: task_name }));
        }
        for worker in self.workers.iter().chain(&self.retiring) {
            worker.kill();
        }
        for mut worker in self.workers.drain(..).chain(self.retiring.drain(..)) {
            worker.reap();
            worker.fail_held(|task| Error::Terminated { task });
        }
        log::info!("mproc-pool: terminated");
    }
}
