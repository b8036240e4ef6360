//! The worker: a process (or, in thread mode, a thread) that runs batches of tasks.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use crate::wire;

use mproc_process::ipc::{Connection, Receiver};
use serde::{Deserialize, Serialize};

use crate::claim::Claimer;
use crate::sys::{self, Progress};
use crate::wire::{Failure, FromWorker, Outcome, ToWorker, WireTask};

/// A worker sends what it has finished at least this often while it works through a batch,
/// so a task that ends early is not held back by a slow one after it.
const FLUSH_AFTER: Duration = Duration::from_millis(1);

/// What a worker process is started with.
#[derive(Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    pub(crate) conn: Connection<FromWorker, ToWorker>,
    pub(crate) init: Option<WireTask>,
    /// The shared progress memory's memfd (an fd crosses to a child as an ipc end).
    pub(crate) progress: Receiver<()>,
    /// The pool's `max_message_size`.
    pub(crate) max_message_size: usize,
    /// The pool has a `task_timeout`: the worker says when it starts each task.
    pub(crate) timed: bool,
}

/// The worker process's function.
pub(crate) fn worker_main(mut args: WorkerArgs) {
    let progress = match Progress::map(&args.progress.into()) {
        Ok(progress) => progress,
        Err(e) => panic!("mproc-pool worker: cannot map the progress word: {e}"),
    };
    args.conn.set_max_message_size(wire::frame_limit(args.max_message_size));
    serve(&args.conn, args.init, &progress, args.max_message_size, args.timed);
}

/// The outcomes finished and not sent yet, each also in the shared log (`sys.rs`) so that
/// they reach the pool even if the worker dies before it sends them.
struct Unsent<'a> {
    outcomes: Vec<(u64, Outcome)>,
    /// Their bytes as the pool's limit counts them.
    bytes: usize,
    log: &'a Progress,
    record: Vec<u8>,
    limit: usize,
}

impl Unsent<'_> {
    /// Keeps task `id`'s outcome to send (a value past the limit becomes its failure),
    /// sending first what is kept if it would not fit one message with it, and sending it at
    /// once if the log cannot hold it.
    fn push(
        &mut self,
        conn: &Connection<FromWorker, ToWorker>,
        id: u64,
        outcome: Outcome,
        since: &mut Instant,
    ) -> mproc_process::ipc::Result<()> {
        let (outcome, size) = within_limit(outcome, self.limit, true);
        if !self.outcomes.is_empty() && self.bytes + size > self.limit {
            self.flush(conn, since)?;
        }
        self.record.clear();
        let logged = size <= sys::LOG_BYTES
            && match postcard::to_extend(&(id, &outcome), std::mem::take(&mut self.record)) {
                Ok(record) => {
                    self.record = record;
                    self.log.log_append(&self.record)
                }
                Err(_) => false,
            };
        self.outcomes.push((id, outcome));
        self.bytes += size;
        if !logged {
            // Not in the log: it must not wait behind another task that may crash.
            self.flush(conn, since)?;
        }
        Ok(())
    }

    /// Sends what is kept (if anything) and empties the log.
    fn flush(
        &mut self,
        conn: &Connection<FromWorker, ToWorker>,
        since: &mut Instant,
    ) -> mproc_process::ipc::Result<()> {
        if self.outcomes.is_empty() {
            return Ok(());
        }
        let busy_ns = since.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        let message = FromWorker::Results { outcomes: std::mem::take(&mut self.outcomes), busy_ns };
        let sent = conn.send(&message);
        if let FromWorker::Results { outcomes: mut back, .. } = message {
            back.clear();
            self.outcomes = back;
        }
        sent?;
        // Sent: the pool has them (a death from here on finds them in the stream, or in both
        // places, and the pool takes each once).
        self.log.log_clear();
        self.bytes = 0;
        *since = Instant::now();
        Ok(())
    }
}

/// Runs the initializer, then batches until told to leave or the pool is gone. Values and
/// messages stay within `limit` (the pool's `max_message_size`); `timed` (a `task_timeout`):
/// says when each task starts.
pub(crate) fn serve(
    conn: &Connection<FromWorker, ToWorker>,
    init: Option<WireTask>,
    progress: &Progress,
    limit: usize,
    timed: bool,
) {
    if let Some(init) = init
        && let Err(failure) = run(init)
    {
        let _ = conn.send(&FromWorker::InitFailed(failure.cut_to(limit)));
        return;
    }
    let mut claimer = Claimer::new(progress.word());
    let mut unsent = Unsent { outcomes: Vec::new(), bytes: 0, log: progress, record: Vec::new(), limit };
    loop {
        let tasks = match conn.recv() {
            Ok(ToWorker::Batch(tasks)) => tasks,
            Ok(ToWorker::Resume) => {
                claimer.resume();
                if conn.send(&FromWorker::Resumed).is_err() {
                    return;
                }
                continue;
            }
            // Told to leave, or the pool is gone: nothing more will come.
            Ok(ToWorker::Exit) | Err(_) => return,
            // Only for remote workers (`networker.rs`).
            Ok(
                ToWorker::Grant(_)
                | ToWorker::Revoke(_)
                | ToWorker::Heartbeat
                | ToWorker::Welcome(_)
                | ToWorker::Refused(_),
            ) => {
                continue;
            }
        };
        let mut since = Instant::now();
        for task in tasks {
            let id = task.id;
            if timed {
                // Before the claim, which publishes it: a pool that sees the claim sees when.
                progress.started_ns().store(sys::now_ns(), std::sync::atomic::Ordering::Relaxed);
            }
            if !claimer.claim(id) {
                // The pool took back the rest (and everything up to its `Resume`).
                break;
            }
            let outcome = run(task);
            if unsent.push(conn, id, outcome, &mut since).is_err() {
                return;
            }
            if since.elapsed() >= FLUSH_AFTER && unsent.flush(conn, &mut since).is_err() {
                return;
            }
        }
        if unsent.flush(conn, &mut since).is_err() {
            return;
        }
    }
}

/// `outcome`, or its failure if its value is past `limit` (unless it is in a memfd and
/// `files` says the connection carries it as one), a failure's message cut to fit it; and its
/// size in a message.
pub(crate) fn within_limit(outcome: Outcome, limit: usize, files: bool) -> (Outcome, usize) {
    let outcome = match outcome {
        Ok(value) if value.len() > limit && !(files && value.is_file()) => {
            Err(Failure::TooLarge { size: value.len() as u64, limit: limit as u64 })
        }
        Ok(value) => Ok(value),
        Err(failure) => Err(failure.cut_to(limit)),
    };
    let size = wire::PER_TASK
        + match &outcome {
            Ok(value) => value.len(),
            Err(
                Failure::Panicked(m)
                | Failure::ItemPanicked { message: m, .. }
                | Failure::Encode(m)
                | Failure::Decode(m),
            ) => m.len(),
            Err(Failure::TooLarge { .. }) => 0,
        };
    (outcome, size)
}

/// Runs one task; a panic becomes its failure and the worker goes on.
pub(crate) fn run(task: WireTask) -> Outcome {
    let driver = task.driver.get();
    match catch_unwind(AssertUnwindSafe(|| driver(task.input))) {
        Ok(outcome) => outcome,
        Err(payload) => Err(Failure::Panicked(mproc_process::panic_message(&*payload))),
    }
}
