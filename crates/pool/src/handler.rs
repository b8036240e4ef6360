//! The pool's handler thread: hands tasks to workers in batches, collects their outcomes,
//! notices dead and overdue workers, replaces them, and shuts the pool down.
//!
//! It is the only owner of the workers. Everything it waits for (new tasks, a worker's
//! outcomes, a worker's death, the next task deadline) goes through one `mproc_ipc::wait`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use mproc_process::ExitStatus;
use mproc_process::ipc::{Receiver, Sender, Waitable};

use crate::error::Error;
use crate::remote::{Body, Worker};
use crate::scheduler::{self, Load, Policy};
use crate::shared::{Queued, Shared};
use crate::wire::{self, ToWorker, WireTask};

pub(crate) struct Handler {
    shared: Arc<Shared>,
    wake: Receiver<()>,
    workers: Vec<Worker>,
    /// Retired by `max_tasks_per_child`: told to leave, not yet reaped.
    retiring: Vec<Worker>,
    pending: VecDeque<Queued>,
    started: u64,
    /// Workers that died before running a task since one last ran one: each named, with how
    /// it ended.
    early_deaths: Vec<String>,
    /// Dropped when the handler ends: stops the listener thread (remote workers).
    stop_listening: Option<Sender<()>>,
    /// Since when the pool has had no worker at all (no local ones, no remote one now).
    alone_since: Option<Instant>,
}

/// How many workers may die in a row before running a task before the pool stops replacing
/// them (an initializer that exits, say, would otherwise have them replaced for ever).
const EARLY_DEATHS: usize = 3;

/// How a worker ended, for logs and errors: `exited with exit code 0`, `died from signal 9
/// (SIGKILL)`.
fn ended(status: Option<ExitStatus>) -> String {
    match status {
        Some(status @ ExitStatus::Code(_)) => format!("exited with {status}"),
        Some(status @ ExitStatus::Signal(_)) => format!("died from {status}"),
        None => "ended (a thread)".into(),
    }
}

impl Handler {
    pub(crate) fn new(
        shared: Arc<Shared>,
        wake: Receiver<()>,
        workers: Vec<Worker>,
        stop_listening: Option<Sender<()>>,
    ) -> Handler {
        let started = workers.len() as u64;
        Handler {
            shared,
            wake,
            workers,
            retiring: Vec::new(),
            pending: VecDeque::new(),
            started,
            early_deaths: Vec::new(),
            stop_listening,
            alone_since: None,
        }
    }

    /// The handler thread's loop.
    pub(crate) fn run(mut self) {
        loop {
            let (closed, terminate, broken) = {
                let mut queue = self.shared.queue.lock();
                self.pending.extend(queue.tasks.drain(..));
                (queue.closed, queue.terminate, queue.broken.clone())
            };
            self.workers.append(&mut self.shared.arrivals.lock().new);
            if terminate {
                self.terminate();
                break;
            }
            if let Some(error) = broken {
                self.fail_everything(&error);
            }
            self.fail_if_alone();
            // Retire first: a retired worker's successor can take tasks at once.
            self.retire();
            self.dispatch();
            if closed && self.pending.is_empty() && self.workers.iter().all(|w| w.held.is_empty()) {
                self.shut_down();
                break;
            }
            let touched = self.wait();
            self.handle(&touched);
        }
        let mut queue = self.shared.queue.lock();
        queue.finished = true;
        for task in queue.tasks.drain(..) {
            task.slot.complete(Err(Error::Closed));
        }
        drop(queue);
        // No more remote workers: stop the listener, and send away any that came meanwhile.
        drop(self.stop_listening.take());
        let mut arrivals = self.shared.arrivals.lock();
        arrivals.closed = true;
        for worker in arrivals.new.drain(..) {
            let _ = worker.outbox.send(ToWorker::Exit);
        }
        drop(arrivals);
        self.shared.finished.notify_all();
    }

    /// With no worker at all (a pool of remote workers only, none connected now), tasks wait
    /// for one for the pool's `worker_wait`, then fail: nothing waits for ever.
    fn fail_if_alone(&mut self) {
        let Some(remote) = &self.shared.config.remote else { return };
        if !self.workers.is_empty() {
            self.alone_since = None;
            return;
        }
        let since = *self.alone_since.get_or_insert_with(Instant::now);
        if self.pending.is_empty() || since.elapsed() < remote.worker_wait {
            return;
        }
        let message = format!(
            "no worker to run it: the pool has no local workers and no remote worker was connected for {:?}",
            remote.worker_wait
        );
        log::error!("mproc-pool: {message}; failing {} task(s)", self.pending.len());
        for task in self.pending.drain(..) {
            task.slot.complete(Err(Error::Broken { message: message.clone() }));
        }
    }

    /// How the pool schedules.
    fn policy(&self) -> Policy {
        let config = &self.shared.config;
        Policy { one_at_a_time: config.task_timeout.is_some(), max_tasks: config.max_tasks_per_child }
    }

    /// What the scheduler needs to know of each worker.
    fn loads(&self) -> Vec<Load> {
        self.workers.iter().map(|w| w.load()).collect()
    }

    /// Hands pending tasks to workers with room, as the scheduler says; then, while a worker
    /// that could take tasks has none and another holds tasks it has not started, takes
    /// those back and hands them out again.
    fn dispatch(&mut self) {
        let policy = self.policy();
        // Each round either empties `pending` into batches or takes back from a worker,
        // which then is fenced (not taken from again until it says `Resumed`): bounded.
        for _ in 0..=self.workers.len() {
            let loads = self.loads();
            for (i, n) in policy.batches(self.pending.len(), &loads) {
                self.send_batch(i, n);
            }
            let loads = self.loads();
            let Some(victim) = policy.take_back_from(self.pending.len(), &loads) else { break };
            let taken = self.workers[victim].take_back();
            log::debug!(
                "mproc-pool: took back {} unstarted task(s) from worker {:?} for an idle worker",
                taken.len(),
                self.workers[victim].name
            );
            for task in taken.into_iter().rev() {
                self.pending.push_front(task);
            }
        }
    }

    /// Sends worker `i` a batch of up to `n` pending tasks (fewer past the byte budget).
    fn send_batch(&mut self, i: usize, n: usize) {
        // Within the byte budget, and within the message limit (each task's input is within
        // it, `submit` checked, or in a memfd that goes beside the message); within the fds
        // one message carries (each task's are, `submit` checked).
        let budget = scheduler::BATCH_BYTES.min(self.shared.config.max_message_size);
        let sizes = self.pending.iter().map(|t| (t.input.len() + wire::PER_TASK, wire::fds_of(&t.input)));
        let n = scheduler::fit(sizes, n, budget);
        if n == 0 {
            return;
        }
        let worker = &mut self.workers[i];
        let remote = worker.is_remote();
        let mut batch = Vec::with_capacity(n);
        for task in self.pending.drain(..n) {
            if remote && task.input.n_fds() > 0 {
                // An fd does not cross TCP: the task fails alone, and the stream goes on.
                let message = "its arguments hold ipc ends or shared state, which cannot reach a remote \
                               worker (an fd does not cross a TCP connection)"
                    .to_string();
                task.slot.complete(Err(Error::Transfer { task: task.slot.task(), message }));
                continue;
            }
            if remote && task.input.len() > self.shared.config.max_message_size {
                // Past the limit, let through only to go as a memfd: a remote worker gets it
                // inline, where the limit holds.
                let limit = self.shared.config.max_message_size as u64;
                let message = format!(
                    "{} (it would reach a remote worker inline, not as a memfd)",
                    wire::past_the_limit("arguments", task.input.len() as u64, limit)
                );
                task.slot.complete(Err(Error::Transfer { task: task.slot.task(), message }));
                continue;
            }
            batch.push(WireTask { id: task.id, driver: task.driver, input: task.input.clone() });
            worker.hold(task);
        }
        if batch.is_empty() {
            return;
        }
        worker.sent_batch(batch.len());
        if let Some(timeout) = self.shared.config.task_timeout {
            // `Duration::MAX` and the like: no deadline.
            worker.deadline = Instant::now().checked_add(timeout);
        }
        if worker.outbox.send(ToWorker::Batch(batch)).is_err() {
            // Its writer has stopped: the worker is dying, and its death fails (or hands
            // on) what it holds.
            worker.lost = true;
        }
    }

    /// Retires workers that ran `max_tasks_per_child` tasks and starts their successors.
    fn retire(&mut self) {
        let Some(max) = self.shared.config.max_tasks_per_child else { return };
        let mut i = 0;
        while i < self.workers.len() {
            let w = &self.workers[i];
            // A remote worker is not retired: the pool cannot start its successor.
            if w.sent >= max && w.held.is_empty() && !w.lost && !w.is_remote() {
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
    /// worker's outcomes or death, or the next deadline. The workers with news: `(index,
    /// whether it is its exit)`, in order of index.
    fn wait(&mut self) -> Vec<(usize, bool)> {
        let policy = self.policy();
        let has_room = self.loads().iter().any(|w| policy.has_room(w));
        {
            let mut queue = self.shared.queue.lock();
            // Tasks a worker could take, new or handed back: no sleep, dispatch them.
            if queue.terminate || has_room && !(queue.tasks.is_empty() && self.pending.is_empty()) {
                return Vec::new();
            }
            // New tasks wake the handler only when a worker could take them; otherwise the
            // next outcome will.
            queue.asleep = has_room;
        }
        let alone = match (&self.shared.config.remote, self.alone_since) {
            (Some(remote), Some(since)) if !self.pending.is_empty() => since.checked_add(remote.worker_wait),
            _ => None,
        };
        let now = Instant::now();
        for worker in &mut self.workers {
            worker.note_claims(now);
        }
        let deadline = self
            .workers
            .iter()
            .flat_map(|w| [w.deadline, w.silence_deadline(), w.claim_deadline()])
            .flatten()
            .chain(alone)
            .min();
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
        ready.iter().filter(|&&i| i > 0).map(|&i| owners[i - 1]).collect()
    }

    /// Takes the outcomes of the workers with news (`touched`, from [`wait`](Self::wait)),
    /// and buries those that died or overran their task.
    fn handle(&mut self, touched: &[(usize, bool)]) {
        let mut broken = None;
        let mut dead = Vec::new();
        for (n, &(i, _)) in touched.iter().enumerate() {
            if n > 0 && touched[n - 1].0 == i {
                continue;
            }
            let exited = touched.iter().any(|&(j, sentinel)| j == i && sentinel);
            let worker = &mut self.workers[i];
            let alive = worker.drain(&mut broken);
            if worker.answered > 0 {
                // Workers run tasks: deaths before a first task are no longer "in a row".
                self.early_deaths.clear();
            }
            if !alive || exited || worker.lost {
                dead.push((i, false));
            }
        }
        let now = Instant::now();
        for (i, worker) in self.workers.iter_mut().enumerate() {
            if dead.iter().any(|&(j, _)| j == i) {
                continue;
            }
            if worker.deadline.is_some_and(|d| d <= now) {
                // A task's clock starts when it starts: a worker that has not started it (its
                // initializer still runs, or it is slow to read) is not killed for it (its
                // successor, in its initializer again, would be too, for ever); one that
                // started it late has the rest of its time.
                let timeout = self.shared.config.task_timeout.unwrap_or_default();
                let left = match worker.claimed() {
                    0 => Some(timeout),
                    _ => {
                        worker.running_for().and_then(|ran| timeout.checked_sub(ran)).filter(|d| !d.is_zero())
                    }
                };
                match left {
                    Some(left) => worker.deadline = now.checked_add(left),
                    None => dead.push((i, true)),
                }
            } else if worker.silence_deadline().is_some_and(|d| d <= now) {
                // Read what has come before giving it up (its heartbeat may be right there).
                let alive = worker.drain(&mut broken);
                if !alive || worker.silence_deadline().is_some_and(|d| d <= now) {
                    log::warn!(
                        "mproc-pool: remote worker {:?} (pid {}) was silent past its limit: giving it up",
                        worker.name,
                        worker.pid
                    );
                    worker.lost = true;
                    dead.push((i, false));
                }
            } else if worker.claim_deadline().is_some_and(|d| d <= now) {
                // Read what has come first (its claim may be right there).
                let alive = worker.drain(&mut broken);
                worker.note_claims(now);
                if !alive || worker.claim_deadline().is_some_and(|d| d <= now) {
                    log::warn!(
                        "mproc-pool: remote worker {:?} (pid {}) held {} task(s) and claimed none for its \
                         silence limit (stalled, though it still sends heartbeats): giving it up, its \
                         tasks go to other workers",
                        worker.name,
                        worker.pid,
                        worker.held.len()
                    );
                    worker.lost = true;
                    dead.push((i, false));
                }
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

    /// A worker died, overran its task or can no longer be read: fail what it held, reap it,
    /// replace it.
    fn bury(&mut self, mut worker: Worker, timed_out: bool) {
        // The pool has given up on it: it may still live (overdue, or blocked in a send on a
        // stream the pool cannot read), so it is killed before it is waited for. One that
        // has ended already keeps how it ended.
        worker.kill();
        let status = worker.reap();
        // Gone: what it sent is all in the stream, what it finished and did not send is in
        // its log.
        let mut broken = None;
        worker.drain(&mut broken);
        worker.recover_logged();
        if let Some(error) = broken {
            self.shared.queue.lock().broken.get_or_insert(error);
        }
        let early = !timed_out && worker.answered == 0 && worker.never_claimed() && !worker.is_remote();
        if early {
            self.early_deaths.push(format!("{:?} (pid {}) {}", worker.name, worker.pid, ended(status)));
            if self.early_deaths.len() >= EARLY_DEATHS {
                let error = self.early_deaths_error();
                log::error!("mproc-pool: {error}");
                self.shared.queue.lock().broken.get_or_insert(error);
            }
        }
        // Tasks it never started go to another worker, in their order; the rest fail.
        let started = worker.claimed();
        let broken = self.shared.queue.lock().broken.clone();
        if broken.is_none() {
            while worker.held.len() > started {
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
            let how = if worker.is_remote() {
                "was lost (its connection ended, or it fell silent, stopped reading or stopped claiming)"
                    .to_string()
            } else {
                ended(status)
            };
            log::warn!("mproc-pool: worker {name:?} (pid {pid}) {how}, failing the {lost} task(s) it held");
            worker.fail_held(|task| Error::WorkerDied { task, worker: name.clone(), pid, status });
        }
        if broken.is_none() && !worker.is_remote() {
            log::info!("mproc-pool: replacing worker {name:?}");
            self.replace();
        }
    }

    /// Why the pool stops replacing workers that die before their first task.
    fn early_deaths_error(&self) -> Error {
        let deaths = self.early_deaths.join(", ");
        let n = self.early_deaths.len();
        match &self.shared.config.init {
            Some(_) => Error::Initializer {
                message: format!(
                    "{n} workers in a row ended before running a task, in or right after the \
                     initializer ({}): {deaths}",
                    self.shared.config.init_name
                ),
            },
            None => Error::Broken {
                message: format!("{n} workers in a row ended before running a task: {deaths}"),
            },
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
