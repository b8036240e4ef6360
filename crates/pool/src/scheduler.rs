//! The pool's scheduling decisions, as plain inputs and outputs: how many tasks each worker
//! gets now, and from which worker to take unstarted tasks back. The handler gathers a
//! [`Load`] per worker, asks, and carries the answer out; nothing here touches a process.
//!
//! The policy:
//!
//! - A worker gets tasks in batches sized by its recent time per task (about
//!   [`BATCH_WORK`] of work, at most [`BATCH_MAX`] tasks), so a trivial task costs a fraction
//!   of a round trip; never more than its fair share of what is pending (the pending tasks
//!   divided among the workers with room), so one worker does not take everything; two
//!   batches in flight per worker, so it never waits for its next batch to travel. With a
//!   `task_timeout`, one task at a time (its clock starts when the worker starts it).
//! - Estimates go stale (a worker that ran thousands of trivial tasks sizes its batch for
//!   more of them, and the next tasks may take 50 ms each), so batching alone cannot keep
//!   workers busy. The rule that does: **no worker sits idle while tasks it could run wait
//!   unstarted in another worker's batch.** When nothing is pending and a worker that could
//!   take tasks holds none, the pool takes back the unstarted tasks of the worker with the
//!   most of them (`claim.rs` makes that exactly-once for a local worker, the grants and
//!   `Revoke` of `remote.rs` for a remote one) and hands them out again, so the idle
//!   worker gets its share. A worker not running any task yet keeps the next one it would
//!   start: taking it would only move it (and with one task at a time, nothing is ever
//!   taken back).

use std::time::Duration;

/// The work a batch should hold, judged by how long the worker's recent tasks took: long
/// enough that the round trip is paid rarely, short enough that a batch holds little work
/// back from a worker that is about to go idle.
pub(crate) const BATCH_WORK: Duration = Duration::from_micros(500);
/// The most tasks in one batch.
pub(crate) const BATCH_MAX: usize = 4096;
/// The most input bytes in one batch (a batch takes at least one task whatever its size).
pub(crate) const BATCH_BYTES: usize = 1 << 20;
/// The most fds (the ends and shared state in tasks' arguments, and their memfds) one batch
/// carries: what one message carries ([`MAX_ENDS`](mproc_process::ipc::MAX_ENDS)), less one
/// for the memfd of a message that goes out of line. A batch past it could not be sent at all.
pub(crate) const BATCH_FDS: usize = mproc_process::ipc::MAX_ENDS - 1;
/// What a task is assumed to take before any has been measured.
pub(crate) const FIRST_GUESS_NS: f64 = 20_000.0;

/// How the pool schedules (from its configuration).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// One task at a time per worker (the pool has a `task_timeout`).
    pub(crate) one_at_a_time: bool,
    /// `max_tasks_per_child`.
    pub(crate) max_tasks: Option<u64>,
}

/// What the scheduler knows of one worker.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Load {
    /// It may be given tasks (its connection works and it is not leaving).
    pub(crate) usable: bool,
    /// Batches sent and not wholly answered.
    pub(crate) batches: usize,
    /// Tasks sent in all (for `max_tasks_per_child`; tasks taken back do not count).
    pub(crate) sent: u64,
    /// Its recent time per task, nanoseconds.
    pub(crate) task_ns: f64,
    /// Tasks sent and not answered.
    pub(crate) held: usize,
    /// Of those, how many it has claimed (started, or finished with the outcome on its way).
    pub(crate) claimed: usize,
}

impl Load {
    /// Tasks it holds and has not started.
    fn unstarted(&self) -> usize {
        self.held - self.claimed
    }
}

impl Policy {
    /// How many batches a worker may have in flight.
    fn depth(&self) -> usize {
        if self.one_at_a_time { 1 } else { 2 }
    }

    /// How many more tasks `max_tasks_per_child` lets `w` be sent.
    fn allowance(&self, w: &Load) -> u64 {
        self.max_tasks.map_or(u64::MAX, |max| max.saturating_sub(w.sent))
    }

    /// Whether `w` can be sent a batch now.
    pub(crate) fn has_room(&self, w: &Load) -> bool {
        w.usable && w.batches < self.depth() && self.allowance(w) > 0
    }

    /// The batches to send now, `(worker index, number of tasks)`, given `pending` tasks
    /// waiting: each worker with room gets one batch, the least loaded first.
    pub(crate) fn batches(&self, pending: usize, workers: &[Load]) -> Vec<(usize, usize)> {
        let mut open: Vec<usize> = (0..workers.len()).filter(|&i| self.has_room(&workers[i])).collect();
        // The idle first: a batch to a worker with nothing to do starts at once.
        open.sort_by_key(|&i| (workers[i].batches, workers[i].held));
        let mut left = pending;
        let mut plan = Vec::new();
        for (k, &i) in open.iter().enumerate() {
            if left == 0 {
                break;
            }
            let w = &workers[i];
            let n = if self.one_at_a_time {
                1
            } else {
                let by_time = (BATCH_WORK.as_nanos() as f64 / w.task_ns.max(1.0)) as usize;
                // A fair share of what is left for the workers with room.
                let share = left.div_ceil(open.len() - k);
                by_time.clamp(1, BATCH_MAX).min(share)
            };
            let n = n.min(self.allowance(w).min(BATCH_MAX as u64) as usize);
            left -= n;
            plan.push((i, n));
        }
        plan
    }

    /// The worker to take unstarted tasks back from, if a worker that could take tasks
    /// holds none while another holds tasks it has not started and nothing is pending.
    /// The worker with the most unstarted tasks; one running no task keeps its next.
    pub(crate) fn take_back_from(&self, pending: usize, workers: &[Load]) -> Option<usize> {
        if pending > 0 || !workers.iter().any(|w| w.held == 0 && self.has_room(w)) {
            return None;
        }
        let spare = |w: &Load| if w.claimed > 0 { w.unstarted() } else { w.unstarted().saturating_sub(1) };
        (0..workers.len()).filter(|&i| spare(&workers[i]) > 0).max_by_key(|&i| spare(&workers[i]))
    }
}

/// A worker's time per task after it reports `n` tasks run in `busy_ns`: half the old
/// estimate, half the new measure, so one odd batch moves it only halfway.
pub(crate) fn observe(task_ns: f64, busy_ns: u64, n: usize) -> f64 {
    if n == 0 { task_ns } else { 0.5 * task_ns + 0.5 * (busy_ns as f64 / n as f64) }
}

/// How many of the next tasks, with inputs of `(bytes, fds)` each, fit one batch of at most
/// `n`: `budget` bytes (at most [`BATCH_BYTES`], less under a lower message limit) and at most
/// [`BATCH_FDS`] fds, and always at least one task (`submit` refused any past those alone).
pub(crate) fn fit(tasks: impl IntoIterator<Item = (usize, usize)>, n: usize, budget: usize) -> usize {
    let (mut bytes, mut fds) = (0, 0);
    let mut count = 0;
    for (size, ends) in tasks.into_iter().take(n) {
        if count > 0 && (bytes + size > budget || fds + ends > BATCH_FDS) {
            break;
        }
        bytes += size;
        fds += ends;
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy { one_at_a_time: false, max_tasks: None };

    fn idle(task_ns: f64) -> Load {
        Load { usable: true, task_ns, ..Load::default() }
    }

    #[test]
    fn a_batch_holds_about_half_a_millisecond_of_work() {
        // 1 µs tasks: 500 per batch; 1 ms tasks: one.
        assert_eq!(POLICY.batches(100_000, &[idle(1_000.0)]), vec![(0, 500)]);
        assert_eq!(POLICY.batches(100_000, &[idle(1_000_000.0)]), vec![(0, 1)]);
        assert_eq!(POLICY.batches(100_000, &[idle(1.0)]), vec![(0, BATCH_MAX)]);
    }

    #[test]
    fn pending_tasks_are_shared_fairly() {
        // Trivial tasks, few pending: no worker takes them all.
        let plan = POLICY.batches(40, &[idle(10.0), idle(10.0)]);
        assert_eq!(plan, vec![(0, 20), (1, 20)]);
        let plan = POLICY.batches(5, &vec![idle(10.0); 8]);
        assert_eq!(plan.iter().map(|p| p.1).sum::<usize>(), 5);
        assert!(plan.iter().all(|p| p.1 == 1));
    }

    #[test]
    fn the_idle_get_batches_first_and_the_full_none() {
        let busy = Load { batches: 1, held: 30, claimed: 1, ..idle(10.0) };
        let full = Load { batches: 2, held: 60, claimed: 1, ..idle(10.0) };
        let plan = POLICY.batches(3, &[busy.clone(), full, idle(10.0)]);
        assert_eq!(plan, vec![(2, 2), (0, 1)]);
        let lost = Load { usable: false, ..idle(10.0) };
        assert_eq!(POLICY.batches(3, &[lost]), vec![]);
    }

    #[test]
    fn with_a_timeout_one_task_at_a_time() {
        let policy = Policy { one_at_a_time: true, max_tasks: None };
        let busy = Load { batches: 1, held: 1, claimed: 1, ..idle(10.0) };
        assert_eq!(policy.batches(10, &[idle(10.0), busy.clone(), idle(10.0)]), vec![(0, 1), (2, 1)]);
        // An idle worker beside one whose only task travels to it: nothing to take back.
        let sent = Load { claimed: 0, ..busy };
        assert_eq!(policy.take_back_from(0, &[idle(10.0), sent]), None);
    }

    #[test]
    fn max_tasks_per_child_bounds_what_is_sent() {
        let policy = Policy { one_at_a_time: false, max_tasks: Some(3) };
        let w = Load { sent: 2, ..idle(10.0) };
        assert_eq!(policy.batches(100, &[w]), vec![(0, 1)]);
        let spent = Load { sent: 3, ..idle(10.0) };
        assert_eq!(policy.batches(100, std::slice::from_ref(&spent)), vec![]);
        // A worker that may take no more is not idle in the sense that matters.
        let busy = Load { batches: 1, held: 10, claimed: 1, ..idle(10.0) };
        assert_eq!(policy.take_back_from(0, &[spent, busy]), None);
    }

    /// The case: after trivial tasks, a worker holds 39 slow ones it has not started
    /// while the other idles.
    #[test]
    fn an_idle_worker_takes_back_from_the_busiest() {
        let stuck = Load { batches: 2, held: 40, claimed: 1, ..idle(10.0) };
        let some = Load { batches: 1, held: 5, claimed: 1, ..idle(10.0) };
        assert_eq!(POLICY.take_back_from(0, &[some.clone(), stuck.clone(), idle(10.0)]), Some(1));
        // Not while tasks are pending (the idle worker gets those), nor with nobody idle.
        assert_eq!(POLICY.take_back_from(1, &[stuck.clone(), idle(10.0)]), None);
        assert_eq!(POLICY.take_back_from(0, &[stuck.clone(), some]), None);
        // Nothing unstarted: nothing to take.
        let running = Load { batches: 1, held: 1, claimed: 1, ..idle(10.0) };
        assert_eq!(POLICY.take_back_from(0, &[running, idle(10.0)]), None);
        // A worker between tasks keeps its next one; the rest can go.
        let between = Load { batches: 1, held: 1, claimed: 0, ..idle(10.0) };
        assert_eq!(POLICY.take_back_from(0, &[between.clone(), idle(10.0)]), None);
        let between = Load { held: 2, ..between };
        assert_eq!(POLICY.take_back_from(0, &[between, idle(10.0)]), Some(0));
    }

    /// Taking back then handing out again ends with every worker that can hold tasks
    /// holding some: a simulation of the handler's loop on the numbers.
    #[test]
    fn after_a_take_back_no_worker_idles_while_another_holds_unstarted_tasks() {
        for n_workers in [2, 8] {
            let mut workers = vec![idle(10.0); n_workers];
            // Worker 0 holds all 40 slow tasks (one batch), running the first.
            workers[0] = Load { batches: 1, held: 40, claimed: 1, ..idle(10.0) };
            let mut pending = 0;
            for _ in 0..n_workers {
                if let Some(victim) = POLICY.take_back_from(pending, &workers) {
                    let w = &mut workers[victim];
                    pending += w.unstarted();
                    w.held = w.claimed;
                    w.batches = usize::from(w.held > 0);
                }
                for (i, n) in POLICY.batches(pending, &workers) {
                    workers[i].held += n;
                    workers[i].batches += 1;
                    pending -= n;
                }
            }
            assert_eq!(pending, 0);
            assert_eq!(workers.iter().map(|w| w.held).sum::<usize>(), 40);
            assert!(workers.iter().all(|w| w.held > 0), "{workers:?}");
            let most = workers.iter().map(|w| w.held).max().unwrap();
            assert!(most <= 40usize.div_ceil(n_workers) + 1, "{workers:?}");
        }
    }

    #[test]
    fn estimates_move_halfway() {
        assert_eq!(observe(1_000.0, 3_000, 1), 2_000.0);
        assert_eq!(observe(1_000.0, 0, 0), 1_000.0);
    }

    #[test]
    fn a_batch_stops_at_its_byte_budget_but_holds_one_task() {
        let sized = |sizes: &[usize]| sizes.iter().map(|&s| (s, 0)).collect::<Vec<_>>();
        assert_eq!(fit(sized(&[10, 10, 10]), 2, BATCH_BYTES), 2);
        assert_eq!(fit(sized(&[BATCH_BYTES, 1]), 5, BATCH_BYTES), 1);
        assert_eq!(fit(sized(&[BATCH_BYTES + 1, 1]), 5, BATCH_BYTES), 1);
        assert_eq!(fit(sized(&[BATCH_BYTES / 2, BATCH_BYTES / 2, 1]), 5, BATCH_BYTES), 2);
        assert_eq!(fit(sized(&[]), 5, BATCH_BYTES), 0);
        // A lower message limit: smaller batches, still one task at least.
        assert_eq!(fit(sized(&[600, 600, 600]), 5, 1000), 1);
        assert_eq!(fit(sized(&[400, 600, 600]), 5, 1000), 2);
    }

    #[test]
    fn a_batch_carries_no_more_fds_than_a_message() {
        assert_eq!(fit(vec![(10, 1); 1000], 1000, BATCH_BYTES), BATCH_FDS);
        assert_eq!(fit(vec![(10, 100); 5], 5, BATCH_BYTES), 2);
        assert_eq!(fit([(10, BATCH_FDS), (10, 1)], 5, BATCH_BYTES), 1);
        assert_eq!(fit([(10, 0), (10, BATCH_FDS), (10, 0), (10, 1)], 5, BATCH_BYTES), 3);
    }
}
