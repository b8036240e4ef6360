//! The worker: a process (or, in thread mode, a thread) that runs batches of tasks.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use mproc_process::ipc::{Connection, Receiver};
use serde::{Deserialize, Serialize};

use crate::claim::Claimer;
use crate::sys::Progress;
use crate::wire::{Failure, FromWorker, Outcome, ToWorker, WireTask};

/// A worker sends what it has finished at least this often while it works through a batch,
/// so a task that ends early is not held back by a slow one after it.
const FLUSH_AFTER: Duration = Duration::from_millis(1);

/// What a worker process is started with.
#[derive(Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    pub(crate) conn: Connection<FromWorker, ToWorker>,
    pub(crate) init: Option<WireTask>,
    /// The shared progress word's memfd (an fd crosses to a child as an ipc end).
    pub(crate) progress: Receiver<()>,
}

/// The worker process's function.
pub(crate) fn worker_main(args: WorkerArgs) {
    let progress = match Progress::map(&args.progress.into()) {
        Ok(progress) => progress,
        Err(e) => panic!("mproc-pool worker: cannot map the progress word: {e}"),
    };
    serve(&args.conn, args.init, &progress);
}

/// Runs the initializer, then batches until told to leave or the pool is gone.
pub(crate) fn serve(conn: &Connection<FromWorker, ToWorker>, init: Option<WireTask>, progress: &Progress) {
    if let Some(init) = init
        && let Err(failure) = run(init)
    {
        let _ = conn.send(&FromWorker::InitFailed(failure));
        return;
    }
    let mut claimer = Claimer::new(progress.word());
    let mut outcomes = Vec::new();
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
        };
        let mut since = Instant::now();
        for task in tasks {
            let id = task.id;
            if !claimer.claim(id) {
                // The pool took back the rest (and everything up to its `Resume`).
                break;
            }
            outcomes.push((id, run(task)));
            let busy = since.elapsed();
            if busy >= FLUSH_AFTER {
                if flush(conn, &mut outcomes, busy).is_err() {
                    return;
                }
                since = Instant::now();
            }
        }
        if !outcomes.is_empty() && flush(conn, &mut outcomes, since.elapsed()).is_err() {
            return;
        }
    }
}

fn flush(
    conn: &Connection<FromWorker, ToWorker>,
    outcomes: &mut Vec<(u64, Outcome)>,
    busy: Duration,
) -> mproc_process::ipc::Result<()> {
    let busy_ns = busy.as_nanos().min(u64::MAX as u128) as u64;
    let message = FromWorker::Results { outcomes: std::mem::take(outcomes), busy_ns };
    let sent = conn.send(&message);
    if let FromWorker::Results { outcomes: mut back, .. } = message {
        back.clear();
        *outcomes = back;
    }
    sent
}

/// Runs one task; a panic becomes its failure and the worker goes on.
fn run(task: WireTask) -> Outcome {
    let driver = task.driver.get();
    match catch_unwind(AssertUnwindSafe(|| driver(task.input))) {
        Ok(outcome) => outcome,
        Err(payload) => Err(Failure::Panicked(mproc_process::panic_message(&*payload))),
    }
}
