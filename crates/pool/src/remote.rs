//! The pool's side of one worker, local or remote (the worker's side is `worker.rs`, or
//! `networker.rs` for a remote one): its connection, the writer thread that sends to it, the
//! tasks it holds, how it claims them (its progress word, or grants by message), and how it
//! is started, read from, reaped and killed.
//!
//! Taking unstarted tasks back, exactly once: from a local worker by fencing its progress
//! word (`claim.rs`), then `Resume`. From a remote worker without asking: it runs only the
//! stream positions granted to it, so the held tasks past `granted` are the pool's to take;
//! `Revoke(granted)`, sent after every grant so far, makes it drop them. Positions are never
//! reused, so a claim it sent before it read the `Revoke` grants only the holes, never a task
//! sent since. A remote worker that holds tasks and claims none of them for its silence limit
//! (stalled, though its writer thread may still heartbeat) is given up, and all it holds goes
//! to other workers (`note_claims`).

use std::collections::VecDeque;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use mproc_process::ipc::{self, Connection, Receiver};

use crate::cluster::RemoteConfig;
use mproc_process::{Builder, ExitStatus, Process};

use crate::claim;
use crate::error::Error;
use crate::scheduler::{self, FIRST_GUESS_NS, Load};
use crate::shared::{self, Config, Queued, Role};
use crate::sys::Progress;
use crate::wire::{self, Failure, FromWorker, Outcome, ToWorker, WireTask};
use crate::worker::{self, WorkerArgs};

/// Sends `message` on `conn`, giving up with [`ipc::Error::Timeout`] when the peer takes none
/// of it for `idle` (it does not read: a blocking send would wait for it for ever). A peer
/// that reads slowly, on a slow link, is waited for as long as it takes something. Both
/// sides of a remote connection send this way: the pool to a worker, a worker to its pool.
pub(crate) fn send_within<S: serde::Serialize, R>(
    conn: &Connection<S, R>,
    message: &S,
    idle: Duration,
) -> Result<(), ipc::Error> {
    let mut taken = conn.try_send(message)?;
    loop {
        if taken && conn.try_flush()? {
            return Ok(());
        }
        let timeout = rustix::event::Timespec {
            tv_sec: idle.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: idle.subsec_nanos().into(),
        };
        let mut fds = [rustix::event::PollFd::new(conn, rustix::event::PollFlags::OUT)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) => return Err(ipc::Error::Timeout),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        if !taken {
            taken = conn.try_send(message)?;
        }
    }
}

/// Whether a failed send says the peer is gone (its end closed), not that the message could
/// not go.
fn peer_gone(e: &ipc::Error) -> bool {
    use std::io::ErrorKind;
    match e {
        ipc::Error::Closed => true,
        ipc::Error::Io(e) => matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
        _ => false,
    }
}

pub(crate) enum Body {
    Process(Option<Box<Process<()>>>),
    Thread,
    /// A worker that connected over the network: nothing to reap or signal, only its
    /// connection to shut.
    Remote,
}

/// How a worker claims the tasks sent to it, and how the pool learns it.
pub(crate) enum Claims {
    /// Through their shared progress word (`claim.rs`).
    Local(Progress),
    /// By message (`networker.rs`): it runs only the positions of its stream the pool granted.
    /// Positions count every task ever sent to it (the first is 1) and are never reused:
    /// tasks taken back (`Revoke`) leave holes, which a grant may cover harmlessly.
    Remote {
        /// The positions granted: every position up to this one.
        granted: u64,
        /// The position of the last task sent.
        last_position: u64,
        /// When it was last heard from.
        last_heard: Instant,
        /// How long it may stay silent, and hold tasks without claiming one.
        silence: Duration,
        /// Since when (as the handler saw it) it has held tasks and run none: it claims the
        /// next the moment it has none to run, so one that claims nothing for `silence` is
        /// stalled (`note_claims`).
        idle_since: Option<Instant>,
    },
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
    /// How many tasks of each batch in flight are not answered yet, oldest first (the
    /// batches are `held`, cut in order).
    pub(crate) batches: VecDeque<usize>,
    /// Tasks sent in all, less those taken back (for `max_tasks_per_child`).
    pub(crate) sent: u64,
    /// Recent time per task, nanoseconds.
    pub(crate) task_ns: f64,
    /// When the task it holds is overdue (`task_timeout`).
    pub(crate) deadline: Option<Instant>,
    /// Its connection failed: it is dead or dying.
    pub(crate) lost: bool,
    /// A remote worker that broke the protocol (an answer it could not give): nothing more
    /// it sends is read.
    pub(crate) distrusted: bool,
    /// Tasks it has answered.
    pub(crate) answered: u64,
    /// Its progress word is fenced (tasks were taken back) and it has not said `Resumed`.
    pub(crate) fenced: bool,
    /// How it claims tasks.
    pub(crate) claims: Claims,
}

impl Worker {
    /// Starts worker number `n`.
    pub(crate) fn start(config: &Config, n: u64) -> Result<Worker, Error> {
        let (mut ours, mut theirs) = Connection::<ToWorker, FromWorker>::pair()?;
        let limit = config.max_message_size;
        ours.set_max_message_size(wire::frame_limit(limit));
        theirs.set_max_message_size(wire::frame_limit(limit));
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
            let pool = config.id;
            let timed = config.task_timeout.is_some();
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    shared::serve_as(pool, Role::Worker);
                    worker::serve(&theirs, init, &theirs_progress, limit, timed)
                })
                .map_err(io)?;
            (name, std::process::id(), Body::Thread)
        } else {
            let name = format!("PoolWorker-{n}");
            let mut builder = Builder::new().name(name.clone()).daemon(true).close_in_child(&ours);
            if let Some(method) = config.start_method {
                builder = builder.start_method(method);
            }
            let progress = Receiver::from(progress_fd);
            let process = builder.spawn_fn(
                worker::worker_main,
                WorkerArgs {
                    conn: theirs,
                    init,
                    progress,
                    max_message_size: limit,
                    timed: config.task_timeout.is_some(),
                },
            )?;
            (name, process.pid(), Body::Process(Some(Box::new(process))))
        };
        let worker =
            Worker::with_writer(ours, name, pid, body, Claims::Local(progress), None, format!("w{n}"))?;
        log::info!("mproc-pool: started worker {:?} (pid {pid})", worker.name);
        Ok(worker)
    }

    /// A remote worker that connected as `conn` and was welcomed as `name`.
    pub(crate) fn remote(
        conn: Connection<ToWorker, FromWorker>,
        name: String,
        pid: u32,
        config: &RemoteConfig,
    ) -> Result<Worker, Error> {
        let claims = Claims::Remote {
            granted: 0,
            last_position: 0,
            last_heard: Instant::now(),
            silence: config.silence,
            idle_since: None,
        };
        let timing = Some((config.heartbeat, config.silence));
        Worker::with_writer(conn, name, pid, Body::Remote, claims, timing, format!("r{pid}"))
    }

    /// The worker on `conn`, with its writer thread. For a remote worker (`timing`: its
    /// heartbeat interval and silence limit) it sends a heartbeat after each interval with
    /// nothing else to send, and gives the worker up (shuts its connection, which the
    /// handler sees as its end) when it takes nothing it is sent for the silence limit: a
    /// worker that stops reading holds its tasks no longer than one that falls silent.
    fn with_writer(
        conn: Connection<ToWorker, FromWorker>,
        name: String,
        pid: u32,
        body: Body,
        claims: Claims,
        timing: Option<(Duration, Duration)>,
        thread: String,
    ) -> Result<Worker, Error> {
        let conn = Arc::new(conn);
        let (outbox, inbox) = mpsc::channel::<ToWorker>();
        let writer = Arc::clone(&conn);
        let writer_name = name.clone();
        std::thread::Builder::new()
            .name(format!("mproc-pool-{thread}"))
            .spawn(move || {
                loop {
                    let message = match timing {
                        None => match inbox.recv() {
                            Ok(message) => message,
                            Err(_) => return,
                        },
                        Some((every, _)) => match inbox.recv_timeout(every) {
                            Ok(message) => message,
                            Err(mpsc::RecvTimeoutError::Timeout) => ToWorker::Heartbeat,
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        },
                    };
                    // A failed send means the worker is gone: the handler sees its death.
                    let sent = match timing {
                        None => writer.send(&message),
                        Some((_, silence)) => send_within(&writer, &message, silence),
                    };
                    match sent {
                        Ok(()) => {}
                        Err(ipc::Error::Timeout) => {
                            log::warn!(
                                "mproc-pool: remote worker {writer_name:?} (pid {pid}) took nothing it was sent \
                                 for {:?}: giving it up",
                                timing.map(|t| t.1).unwrap_or_default()
                            );
                            let _ = rustix::net::shutdown(&*writer, rustix::net::Shutdown::Both);
                            return;
                        }
                        Err(e) => {
                            // The worker is gone (the handler sees its end); or this message
                            // could not go, and the worker would wait for it for ever: its
                            // connection is shut, and the handler buries it as lost.
                            if !peer_gone(&e) {
                                log::error!(
                                    "mproc-pool: cannot send to worker {writer_name:?} (pid {pid}): {e}; \
                                     giving it up"
                                );
                            }
                            let _ = rustix::net::shutdown(&*writer, rustix::net::Shutdown::Both);
                            return;
                        }
                    }
                }
            })
            .map_err(|e| Error::Start(Arc::new(mproc_process::Error::Io(e))))?;
        Ok(Worker {
            name,
            pid,
            conn,
            outbox,
            body,
            held: VecDeque::new(),
            batches: VecDeque::new(),
            sent: 0,
            task_ns: FIRST_GUESS_NS,
            deadline: None,
            lost: false,
            distrusted: false,
            answered: 0,
            fenced: false,
            claims,
        })
    }

    /// Whether it connected over the network.
    pub(crate) fn is_remote(&self) -> bool {
        matches!(self.body, Body::Remote)
    }

    /// When a remote worker that stays silent is given up (`None` for a local one).
    pub(crate) fn silence_deadline(&self) -> Option<Instant> {
        match &self.claims {
            // The builder bounds the silence; an overflow would be no deadline, not a panic.
            Claims::Remote { last_heard, silence, .. } => last_heard.checked_add(*silence),
            Claims::Local(_) => None,
        }
    }

    /// Notes, at `now`, whether a remote worker holds tasks and runs none of them (none
    /// granted and unanswered): since when, if it does.
    pub(crate) fn note_claims(&mut self, now: Instant) {
        let idle = !self.held.is_empty() && self.claimed() == 0;
        if let Claims::Remote { idle_since, .. } = &mut self.claims {
            match (idle, *idle_since) {
                (false, _) => *idle_since = None,
                (true, None) => *idle_since = Some(now),
                (true, Some(_)) => {}
            }
        }
    }

    /// When a remote worker that holds tasks and claims none of them is given up as stalled
    /// (`None` if it runs one, holds none, or is local), as of the last [`note_claims`].
    ///
    /// [`note_claims`]: Self::note_claims
    pub(crate) fn claim_deadline(&self) -> Option<Instant> {
        match &self.claims {
            Claims::Remote { idle_since: Some(since), silence, .. } => since.checked_add(*silence),
            _ => None,
        }
    }

    /// How long ago a local worker started its last claimed task (by its start word, which it
    /// writes under a `task_timeout`); `None` for a remote worker.
    pub(crate) fn running_for(&self) -> Option<Duration> {
        match &self.claims {
            Claims::Local(progress) => {
                let started = progress.started_ns().load(std::sync::atomic::Ordering::Relaxed);
                Some(Duration::from_nanos(crate::sys::now_ns().saturating_sub(started)))
            }
            Claims::Remote { .. } => None,
        }
    }

    /// Whether it has claimed no task yet (for deaths before a first task).
    pub(crate) fn never_claimed(&self) -> bool {
        match &self.claims {
            Claims::Local(progress) => claim::last_claim(progress.word()) == 0,
            Claims::Remote { granted, .. } => *granted == 0,
        }
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
                    if let Err(why) = self.expects(id) {
                        return self.give_up(&why);
                    }
                    if !self.complete(id, outcome) {
                        log::error!(
                            "mproc-pool: worker {:?} answered task #{id}, which it does not hold",
                            self.name
                        );
                    }
                }
                self.task_ns = scheduler::observe(self.task_ns, busy_ns, n);
                if self.held.is_empty() {
                    self.deadline = None;
                }
            }
            FromWorker::Resumed => self.fenced = false,
            FromWorker::Claim(through) => {
                if let Claims::Remote { granted, last_position, .. } = &mut self.claims {
                    // It cannot claim what was not sent to it; the rest is granted as asked.
                    // A claim sent before the worker read a `Revoke` may name positions
                    // taken back since: it covers only those holes (every task sent after
                    // the `Revoke` has a later position than any the worker had), and the
                    // worker, which dropped them, runs none of them.
                    *granted = (*granted).max(through.min(*last_position));
                    if self.outbox.send(ToWorker::Grant(*granted)).is_err() {
                        self.lost = true;
                    }
                }
            }
            FromWorker::Heartbeat => {}
            FromWorker::Hello(_) if self.is_remote() => self.give_up("it said hello twice"),
            FromWorker::Hello(_) => {
                log::error!("mproc-pool: worker {:?} said hello twice", self.name);
            }
            // A remote worker runs its initializer before it claims anything.
            FromWorker::InitFailed(_) if self.is_remote() && !self.never_claimed() => {
                self.give_up("it said its initializer failed after it had claimed tasks")
            }
            FromWorker::InitFailed(failure) => {
                let message = match failure {
                    Failure::Panicked(m) | Failure::ItemPanicked { message: m, .. } => {
                        format!("it panicked in worker {:?}: {m}", self.name)
                    }
                    Failure::Encode(m) | Failure::Decode(m) => m,
                    Failure::TooLarge { size, limit } => wire::past_the_limit("value", size, limit),
                };
                log::error!("mproc-pool: the initializer failed in worker {:?}: {message}", self.name);
                broken.get_or_insert(Error::Initializer { message });
            }
        }
    }

    /// Whether a remote worker may answer task `id` now: it answers in the order it was sent
    /// tasks, and only those it was granted (it runs no other). A local worker's answers are
    /// not checked here (they may repeat what its log gave).
    fn expects(&self, id: u64) -> Result<(), String> {
        let Claims::Remote { granted, .. } = &self.claims else { return Ok(()) };
        match self.held.front() {
            Some(first) if first.position > *granted => {
                Err(format!("it answered task #{id} when it had been granted no task left to run"))
            }
            Some(first) if first.id == id => Ok(()),
            Some(first) => Err(format!("it answered task #{id} where task #{} was next", first.id)),
            None => Err(format!("it answered task #{id} holding no task")),
        }
    }

    /// A remote worker broke the protocol: nothing more it sends is taken (the handler buries
    /// it: the tasks it was granted fail, the others go to other workers), and its connection
    /// is shut.
    fn give_up(&mut self, why: &str) {
        log::error!(
            "mproc-pool: remote worker {:?} (pid {}) broke the protocol ({why}): giving it up",
            self.name,
            self.pid
        );
        self.lost = true;
        self.distrusted = true;
        self.kill();
    }

    /// Completes task `id` with `outcome`, if it holds it (false if not: answered already).
    fn complete(&mut self, id: u64, outcome: Outcome) -> bool {
        // Outcomes come in the order sent: the first held, but for a task answered twice
        // (from the stream and the log: then it is held no more).
        let held = match self.held.front() {
            Some(first) if first.id == id => self.held.pop_front(),
            _ => {
                let Some(at) = self.held.iter().position(|h| h.id == id) else { return false };
                self.held.remove(at)
            }
        };
        let held = held.expect("a held task was found");
        self.answered_one();
        self.answered += 1;
        let task = || held.slot.task();
        held.slot.complete(outcome.map_err(|failure| match failure {
            Failure::Panicked(message) => {
                Error::Panicked { task: task(), worker: self.name.clone(), pid: self.pid, message }
            }
            Failure::ItemPanicked { item, message } => Error::Panicked {
                task: held.slot.item(item),
                worker: self.name.clone(),
                pid: self.pid,
                message,
            },
            Failure::Encode(message) | Failure::Decode(message) => Error::Transfer { task: task(), message },
            Failure::TooLarge { size, limit } => {
                Error::Transfer { task: task(), message: wire::past_the_limit("value", size, limit) }
            }
        }));
        true
    }

    /// Once it is gone: completes the tasks whose outcomes it logged and never sent (or sent
    /// and the stream already delivered: those it no longer holds are skipped).
    pub(crate) fn recover_logged(&mut self) {
        let Claims::Local(progress) = &self.claims else { return };
        let mut recovered = 0;
        for record in progress.log_records() {
            match postcard::from_bytes::<(u64, Outcome)>(&record) {
                Ok((id, outcome)) => recovered += usize::from(self.complete(id, outcome)),
                Err(e) => log::error!("mproc-pool: worker {:?} left an unreadable outcome: {e}", self.name),
            }
        }
        if recovered > 0 {
            log::debug!(
                "mproc-pool: worker {:?} finished {recovered} task(s) it had not sent: delivered from its log",
                self.name
            );
        }
    }

    /// Reads every message that has arrived; false if the worker is gone (or broke the
    /// protocol: nothing more is read from it then).
    pub(crate) fn drain(&mut self, broken: &mut Option<Error>) -> bool {
        loop {
            if self.distrusted {
                return false;
            }
            match self.conn.try_recv() {
                Ok(Some(message)) => {
                    if let Claims::Remote { last_heard, .. } = &mut self.claims {
                        *last_heard = Instant::now();
                    }
                    self.take(message, broken)
                }
                Ok(None) => return true,
                Err(e) => {
                    if !self.lost && matches!(e, mproc_process::ipc::Error::Closed) {
                        log::debug!("mproc-pool: worker {:?} connection ended: {e}", self.name);
                    } else if !self.lost {
                        log::error!(
                            "mproc-pool: worker {:?} (pid {}) cannot be read: {e}",
                            self.name,
                            self.pid
                        );
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

    /// Kills a process; shuts a remote worker's connection (so the writer thread blocked in a
    /// send to it returns, and the worker, if it is alive and can hear, sees the end).
    pub(crate) fn kill(&self) {
        match &self.body {
            Body::Process(Some(p)) => {
                let _ = p.kill();
            }
            Body::Remote => {
                let _ = rustix::net::shutdown(&*self.conn, rustix::net::Shutdown::Both);
            }
            _ => {}
        }
    }

    /// Records a batch of `tasks` sent (the tasks already pushed on `held`).
    pub(crate) fn sent_batch(&mut self, tasks: usize) {
        self.sent += tasks as u64;
        self.batches.push_back(tasks);
    }

    /// One task (the oldest held: outcomes come in order) was answered.
    fn answered_one(&mut self) {
        if let Some(front) = self.batches.front_mut() {
            *front -= 1;
            if *front == 0 {
                self.batches.pop_front();
            }
        }
    }

    /// How many of the tasks it holds it has claimed (started, or finished with the outcome
    /// on its way); the rest it has not started.
    pub(crate) fn claimed(&self) -> usize {
        match &self.claims {
            Claims::Local(progress) => {
                claim::claimed_prefix(self.held.iter().map(|h| h.id), claim::last_claim(progress.word()))
            }
            // The held tasks are in the order of their positions: those granted are its.
            Claims::Remote { granted, .. } => self.held.iter().take_while(|h| h.position <= *granted).count(),
        }
    }

    /// What the scheduler needs to know of it.
    pub(crate) fn load(&self) -> Load {
        Load {
            // A fenced worker is sent nothing while it holds tasks (the new ones could not be
            // taken back before it reads `Resume`, and it may be deep in a long task); an idle
            // one reads `Resume` at once, and what follows it.
            usable: !self.lost && (!self.fenced || self.held.is_empty()),
            batches: self.batches.len(),
            // `max_tasks_per_child` does not count for a remote worker: it is not retired
            // (nothing could start its successor), so it must not stop taking tasks either.
            sent: if self.is_remote() { 0 } else { self.sent },
            task_ns: self.task_ns,
            held: self.held.len(),
            claimed: if self.fenced { self.held.len() } else { self.claimed() },
        }
    }

    /// Sends it `task` (to go in the batch being made): it holds it now, at the next
    /// position of its stream if it is remote.
    pub(crate) fn hold(&mut self, mut task: Queued) {
        if let Claims::Remote { last_position, .. } = &mut self.claims {
            *last_position += 1;
            task.position = *last_position;
        }
        self.held.push_back(task);
    }

    /// Takes back every task it has not claimed, in the order they were sent: from a local
    /// worker by the fence of `claim.rs` (then `Resume`; none if it is fenced already), from
    /// a remote one those it was not granted (then `Revoke`: it runs only what it was
    /// granted, so the pool knows without asking).
    pub(crate) fn take_back(&mut self) -> Vec<Queued> {
        let keep = match &self.claims {
            _ if self.fenced => return Vec::new(),
            Claims::Local(progress) => {
                let Some(last) = claim::fence(progress.word()) else { return Vec::new() };
                self.fenced = true;
                claim::claimed_prefix(self.held.iter().map(|h| h.id), last)
            }
            // Nothing ungranted: nothing to take, nothing to tell it.
            Claims::Remote { .. } if self.claimed() == self.held.len() => return Vec::new(),
            Claims::Remote { .. } => self.claimed(),
        };
        let taken: Vec<Queued> = self.held.drain(keep..).collect();
        // The batches in flight now end at `keep`.
        let mut left = keep;
        self.batches.retain_mut(|n| {
            let kept = (*n).min(left);
            left -= kept;
            *n = kept;
            kept > 0
        });
        self.sent -= taken.len() as u64;
        if self.held.is_empty() {
            self.deadline = None;
        }
        let told = match &self.claims {
            Claims::Local(_) => ToWorker::Resume,
            // Sent after every grant so far (the writer keeps the order): the worker drops
            // exactly the positions past `granted`, which the pool took.
            Claims::Remote { granted, .. } => ToWorker::Revoke(*granted),
        };
        if self.outbox.send(told).is_err() {
            self.lost = true;
        }
        taken
    }

    /// Fails every task it holds with `error(task)`.
    pub(crate) fn fail_held(&mut self, error: impl Fn(String) -> Error) {
        for held in self.held.drain(..) {
            held.slot.complete(Err(error(held.slot.task())));
        }
        self.batches.clear();
        self.deadline = None;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use mproc_process::ipc::Carried;

    use super::*;
    use crate::result::Slot;
    use crate::wire::Bytes;

    /// How each task's slot was completed: its value (one byte) or its error, in order.
    type Log = Arc<Mutex<Vec<(u64, Result<u8, String>)>>>;

    /// A remote worker whose peer is the test: the worker, the peer's end, the log of
    /// completions. It holds tasks 1..=n (positions 1..=n), none granted yet.
    fn remote_worker(n: u64) -> (Worker, Connection<FromWorker, ToWorker>, Log) {
        let (ours, theirs) = Connection::<ToWorker, FromWorker>::pair().unwrap();
        let hour = Duration::from_secs(3600);
        let config = RemoteConfig { heartbeat: hour, silence: hour, worker_wait: hour, claim_ahead: false };
        let mut worker = Worker::remote(ours, "hostile".into(), 7, &config).unwrap();
        let log = Log::default();
        fn nothing(_: Carried) -> wire::Outcome {
            Ok(Bytes::default())
        }
        for id in 1..=n {
            let log = Arc::clone(&log);
            let hook: crate::result::Hook = Box::new(move |_slot, done| {
                let done = done.as_ref().map(|bytes| bytes.get().unwrap()[0]).map_err(|e| e.to_string());
                log.lock().unwrap().push((id, done));
            });
            let slot = Slot::new(id, "fn()", None, Some(hook));
            worker.hold(Queued {
                id,
                driver: wire::driver_ref(nothing),
                input: Carried::default(),
                slot,
                position: 0,
            });
        }
        worker.sent_batch(n as usize);
        (worker, theirs, log)
    }

    fn results(ids: &[u64]) -> FromWorker {
        FromWorker::Results {
            outcomes: ids.iter().map(|&id| (id, Ok(Bytes::copy_from(&[id as u8])))).collect(),
            busy_ns: 0,
        }
    }

    /// What the handler does with a worker once it is lost: it reads what is left, and the
    /// tasks it started fail; those it had not go back (here: stay unanswered).
    fn bury(worker: &mut Worker) {
        worker.kill();
        worker.drain(&mut None);
        let started = worker.claimed();
        worker.held.truncate(started);
        worker.fail_held(|task| Error::WorkerDied { task, worker: "hostile".into(), pid: 7, status: None });
    }

    /// Sends `messages` as the peer, then lets the pool read them: whether the worker is
    /// still trusted afterwards.
    fn peer_says(
        worker: &mut Worker,
        peer: &Connection<FromWorker, ToWorker>,
        messages: Vec<FromWorker>,
    ) -> bool {
        for message in messages {
            peer.send(&message).unwrap();
        }
        let alive = worker.drain(&mut None);
        alive && !worker.lost
    }

    #[test]
    fn an_honest_remote_worker_is_answered_in_order() {
        let (mut worker, peer, log) = remote_worker(2);
        assert!(peer_says(&mut worker, &peer, vec![FromWorker::Claim(1)]));
        assert!(matches!(peer.recv_timeout(Duration::from_secs(60)), Ok(ToWorker::Grant(1))));
        assert!(peer_says(&mut worker, &peer, vec![results(&[1]), FromWorker::Claim(2)]));
        assert!(peer_says(&mut worker, &peer, vec![results(&[2])]));
        assert_eq!(*log.lock().unwrap(), [(1, Ok(1)), (2, Ok(2))]);
    }

    /// Taking back from a remote worker takes exactly what it was not granted, and says so
    /// with `Revoke` after the grants; a claim it made before it read the `Revoke` grants
    /// only the holes, never a task sent later; the next task takes the next position.
    #[test]
    fn a_take_back_revokes_what_was_not_granted() {
        let (mut worker, peer, log) = remote_worker(4);
        assert!(peer_says(&mut worker, &peer, vec![FromWorker::Claim(1)]));
        let taken: Vec<u64> = worker.take_back().iter().map(|t| t.id).collect();
        assert_eq!(taken, [2, 3, 4], "all but the granted one");
        assert!(matches!(peer.recv_timeout(Duration::from_secs(60)), Ok(ToWorker::Grant(1))));
        assert!(matches!(peer.recv_timeout(Duration::from_secs(60)), Ok(ToWorker::Revoke(1))));
        assert!(worker.take_back().is_empty(), "nothing left to take");
        assert!(
            matches!(peer.recv_timeout(Duration::ZERO), Err(mproc_process::ipc::Error::Timeout)),
            "nor a Revoke"
        );
        // A task sent after the take-back: position 5.
        let slot = crate::result::Slot::new(9, "fn()", None, None);
        worker.hold(Queued {
            id: 9,
            driver: wire::driver_ref(|_| Ok(Bytes::default())),
            input: Carried::default(),
            slot,
            position: 0,
        });
        assert_eq!(worker.held.back().map(|t| t.position), Some(5));
        // The stale claim (positions 2 and 3, taken back): granted, but task 9 is not.
        assert!(peer_says(&mut worker, &peer, vec![FromWorker::Claim(3), results(&[1])]));
        assert_eq!(worker.claimed(), 0, "task 9 is not granted");
        assert!(!peer_says(&mut worker, &peer, vec![results(&[9])]), "an answer to it breaks the protocol");
        assert_eq!(*log.lock().unwrap(), [(1, Ok(1))]);
    }

    #[test]
    fn a_result_for_a_task_never_granted_fails_the_worker() {
        let (mut worker, peer, log) = remote_worker(2);
        // Task 1 was never granted: the worker cannot have run it.
        assert!(!peer_says(&mut worker, &peer, vec![results(&[1])]), "the worker is given up");
        bury(&mut worker);
        assert_eq!(*log.lock().unwrap(), [], "nothing delivered; both tasks go to other workers");
        // The pool shut the connection: the peer sees the end.
        assert!(matches!(peer.recv_timeout(Duration::from_secs(60)), Err(mproc_process::ipc::Error::Closed)));
    }

    #[test]
    fn a_result_for_a_task_the_worker_does_not_hold_fails_the_worker() {
        let (mut worker, peer, log) = remote_worker(2);
        assert!(!peer_says(&mut worker, &peer, vec![FromWorker::Claim(1), results(&[99])]));
        bury(&mut worker);
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 1, "{log:?}");
        assert!(matches!(&log[0], (1, Err(e)) if e.contains("died")), "{log:?}");
    }

    #[test]
    fn a_duplicate_result_fails_the_worker_and_the_task_completes_once() {
        let (mut worker, peer, log) = remote_worker(2);
        assert!(!peer_says(&mut worker, &peer, vec![FromWorker::Claim(2), results(&[1]), results(&[1])]));
        bury(&mut worker);
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 2, "{log:?}");
        assert_eq!(log[0], (1, Ok(1)));
        assert!(matches!(&log[1], (2, Err(e)) if e.contains("died")), "{log:?}");
    }

    #[test]
    fn a_result_out_of_order_fails_the_worker() {
        let (mut worker, peer, log) = remote_worker(2);
        assert!(!peer_says(&mut worker, &peer, vec![FromWorker::Claim(2), results(&[2, 1])]));
        bury(&mut worker);
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 2, "{log:?}");
        assert!(log.iter().all(|(_, done)| matches!(done, Err(e) if e.contains("died"))), "{log:?}");
    }

    /// A remote worker's initializer runs before it claims anything: an `InitFailed` after
    /// a claim breaks the protocol. It is given up alone; the pool is not marked broken
    /// (which would fail every task of every worker).
    #[test]
    fn an_init_failure_after_a_claim_fails_the_worker_not_the_pool() {
        let (mut worker, peer, log) = remote_worker(2);
        assert!(peer_says(&mut worker, &peer, vec![FromWorker::Claim(1), results(&[1])]));
        peer.send(&FromWorker::InitFailed(Failure::Panicked("late".into()))).unwrap();
        let mut broken = None;
        worker.drain(&mut broken);
        assert!(broken.is_none(), "the pool is not broken: {broken:?}");
        assert!(worker.lost && worker.distrusted, "the worker is given up");
        bury(&mut worker);
        assert_eq!(*log.lock().unwrap(), [(1, Ok(1))], "task 2, never granted, goes to another worker");
    }

    #[test]
    fn garbage_from_a_remote_worker_fails_it() {
        let (mut worker, peer, log) = remote_worker(1);
        assert!(peer_says(&mut worker, &peer, vec![FromWorker::Claim(1)]));
        peer.send_bytes(&[0xff, 0xff, 0xff]).unwrap();
        assert!(!worker.drain(&mut None));
        bury(&mut worker);
        let log = log.lock().unwrap();
        assert!(matches!(&log[..], [(1, Err(e))] if e.contains("died")), "{log:?}");
    }
}
