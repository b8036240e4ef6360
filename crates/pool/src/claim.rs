//! The claim protocol: how a worker and the pool agree, through one shared 64-bit word and no
//! message, which of the tasks sent to the worker it runs and which the pool takes back.
//!
//! The word (a worker's progress word, `sys.rs`) holds the id of the last task the worker
//! claimed (0: none yet) and, in its top bit, the fence. A worker receives its tasks as one
//! stream (batches, in the order sent) and claims each before it runs it; the pool may at any
//! time take back every task the worker has not claimed yet.
//!
//! - **Claim** (worker, before each task): compare-and-swap the word from the id of its
//!   previous claim to the id of this task. It fails only if the pool fenced the word in
//!   between: the worker then runs nothing more until it reads `Resume`, skipping every task
//!   it receives before that (they are the pool's now), and sends no outcome for them.
//! - **Fence** (pool, to take work back): compare-and-swap the word from an unfenced value `c`
//!   to `c | FENCE`. From then on the worker owns exactly the tasks of its stream up to and
//!   including `c` (it claimed them), and the pool owns every task after `c` that it sent
//!   before the fence: it may hand them to any worker at once, without waiting for an answer.
//!   The pool then sends `Resume`, after which the stream goes on with new tasks.
//! - **Resume** (worker, on reading `Resume`): clears the fence, leaving `c`.
//!
//! # Invariants
//!
//! 1. Only the worker changes the claimed id, only by the claim CAS, only while the fence is
//!    clear, and only forward through its stream: so the claimed tasks are a prefix of the
//!    stream, and the word names the prefix's last task.
//! 2. Only the pool sets the fence, by a CAS from an unfenced value: the claim and the fence
//!    are ordered by the word itself, so a task is either claimed before the fence (the
//!    worker's: it runs once, there) or after-the-claim when the fence lands (the pool's: the
//!    worker's CAS on it fails, so it never runs there). Never both, never neither.
//! 3. Only the worker clears the fence, and only on reading `Resume`, which the pool sends
//!    after its fence: every task sent before `Resume` and not claimed was skipped, every task
//!    after it is claimable again. The pool fences again only once it sees the fence cleared,
//!    so each fence meets its own `Resume`.
//! 4. Outcomes come back in stream order, so if the claimed task `c` has been answered, every
//!    task the pool still holds for the worker comes after `c` in the stream (unclaimed); if
//!    not, those up to `c` are claimed and the rest are not ([`claimed_prefix`]). The same
//!    split tells, when a worker dies, the tasks that started (failed with it) from those
//!    that never did (handed to another worker).
//!
//! The cost is one uncontended compare-and-swap per task in the worker.

use std::sync::atomic::{AtomicU64, Ordering};

/// The fence bit: set by the pool, cleared by the worker.
pub(crate) const FENCE: u64 = 1 << 63;

/// The worker's side of the protocol over its word.
pub(crate) struct Claimer<'a> {
    word: &'a AtomicU64,
    /// The id of the worker's last claim (what the word holds, fence aside).
    last: u64,
}

impl<'a> Claimer<'a> {
    /// The worker's side of `word`, which it has not claimed through yet (it holds 0).
    pub(crate) fn new(word: &'a AtomicU64) -> Claimer<'a> {
        Claimer { word, last: word.load(Ordering::Acquire) & !FENCE }
    }

    /// Claims task `id`, the next of the stream: true if the worker may run it; false if the
    /// pool has taken it back (and with it every task received before the next `Resume`).
    pub(crate) fn claim(&mut self, id: u64) -> bool {
        debug_assert!(id & FENCE == 0, "task ids stay below the fence bit");
        match self.word.compare_exchange(self.last, id, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                self.last = id;
                true
            }
            Err(seen) => {
                debug_assert_eq!(seen, self.last | FENCE, "only the pool's fence moves the word");
                false
            }
        }
    }

    /// `Resume` was read: clears the pool's fence, so later tasks can be claimed.
    pub(crate) fn resume(&mut self) {
        let was = self.word.swap(self.last, Ordering::AcqRel);
        debug_assert_eq!(was, self.last | FENCE, "each Resume follows its fence");
    }
}

/// The pool's side: fences `word`, taking back every task after the worker's last claim.
/// The id of that claim (0: none yet), or `None` if the word is fenced already (a fence whose
/// `Resume` the worker has not read yet: nothing may be taken until it has).
pub(crate) fn fence(word: &AtomicU64) -> Option<u64> {
    let mut seen = word.load(Ordering::Acquire);
    loop {
        if seen & FENCE != 0 {
            return None;
        }
        match word.compare_exchange_weak(seen, seen | FENCE, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(seen),
            Err(now) => seen = now,
        }
    }
}

/// The id of the worker's last claim as the pool reads it (fence aside; 0: none yet).
pub(crate) fn last_claim(word: &AtomicU64) -> u64 {
    word.load(Ordering::Acquire) & !FENCE
}

/// How many of `held` (the ids of the tasks sent to a worker and not yet answered, in stream
/// order) the worker has claimed, given its last claim `last`: those up to `last` if it is
/// among them, none if it is not (it was answered, or nothing was claimed yet: invariant 4).
pub(crate) fn claimed_prefix(held: impl IntoIterator<Item = u64>, last: u64) -> usize {
    let mut n = 0;
    for id in held {
        n += 1;
        if id == last {
            return n;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, mpsc};

    #[test]
    fn a_claim_moves_the_word_and_a_fence_stops_the_next() {
        let word = AtomicU64::new(0);
        let mut worker = Claimer::new(&word);
        assert!(worker.claim(5));
        assert!(worker.claim(9));
        assert_eq!(last_claim(&word), 9);
        assert_eq!(fence(&word), Some(9));
        assert_ne!(word.load(Ordering::Relaxed) & FENCE, 0);
        assert_eq!(fence(&word), None, "a fenced word is not fenced twice");
        assert!(!worker.claim(11));
        assert!(!worker.claim(12), "every task before Resume is skipped");
        assert_eq!(last_claim(&word), 9);
        worker.resume();
        assert_eq!(word.load(Ordering::Relaxed), 9);
        assert!(worker.claim(13));
        assert_eq!(last_claim(&word), 13);
    }

    #[test]
    fn the_claimed_prefix_is_up_to_the_last_claim() {
        assert_eq!(claimed_prefix([4, 5, 6, 7], 5), 2);
        assert_eq!(claimed_prefix([4, 5, 6, 7], 7), 4);
        // The last claim was answered already (or none yet): nothing held is claimed.
        assert_eq!(claimed_prefix([4, 5, 6, 7], 3), 0);
        assert_eq!(claimed_prefix([4, 5, 6, 7], 0), 0);
        assert_eq!(claimed_prefix([], 3), 0);
        // Ids need not be in order in a stream (tasks taken back go out again later).
        assert_eq!(claimed_prefix([9, 2, 3], 2), 2);
    }

    /// What the simulated pool sends its simulated worker.
    enum Message {
        Batch(Vec<u64>),
        Resume,
        Exit,
    }

    /// The race itself, many times over: a pool thread streams tasks to a worker thread and
    /// takes work back at arbitrary moments while the worker claims; whatever it took back it
    /// sends again later. Every task must run exactly once, and each take-back must split the
    /// stream exactly at the claim the fence returned.
    #[test]
    fn fencing_while_the_worker_claims_runs_every_task_exactly_once() {
        const TASKS: u64 = 2_000;
        for round in 0..50u64 {
            let word = Arc::new(AtomicU64::new(0));
            let (to_worker, inbox) = mpsc::channel::<Message>();
            let (ran_tx, ran) = mpsc::channel::<u64>();
            let worker_word = Arc::clone(&word);
            let worker = std::thread::spawn(move || {
                let mut claimer = Claimer::new(&worker_word);
                for message in inbox {
                    match message {
                        Message::Batch(ids) => {
                            for id in ids {
                                if !claimer.claim(id) {
                                    break;
                                }
                                ran_tx.send(id).unwrap();
                                if id % 7 == round % 7 {
                                    std::thread::yield_now();
                                }
                            }
                        }
                        Message::Resume => claimer.resume(),
                        Message::Exit => return,
                    }
                }
            });
            // The pool: its view of the stream (held, unanswered ids in stream order) and
            // what it took back. "Answered" here is what the worker reported running.
            let mut held: std::collections::VecDeque<u64> = Default::default();
            let mut next = 1;
            let mut returned: Vec<u64> = Vec::new();
            let mut done = std::collections::HashSet::new();
            let mut fences = 0;
            let mut step = round;
            while done.len() < TASKS as usize {
                for id in ran.try_iter() {
                    assert!(done.insert(id), "task {id} ran twice");
                    assert_eq!(held.pop_front(), Some(id), "the worker runs its stream in order");
                }
                step = step.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                match step >> 61 {
                    0 | 1 if !held.is_empty() => {
                        if let Some(last) = fence(&word) {
                            fences += 1;
                            // Everything answered so far is in `done`; of what is held, the
                            // claimed prefix is the worker's, the rest ours.
                            let keep = claimed_prefix(held.iter().copied(), last);
                            returned.extend(held.drain(keep..));
                            to_worker.send(Message::Resume).unwrap();
                        }
                    }
                    _ => {
                        let mut batch: Vec<u64> = std::mem::take(&mut returned);
                        let more = (step >> 40) % 50;
                        while next <= TASKS && (batch.len() as u64) < more {
                            batch.push(next);
                            next += 1;
                        }
                        held.extend(&batch);
                        if !batch.is_empty() {
                            to_worker.send(Message::Batch(batch)).unwrap();
                        }
                    }
                }
                if held.len() > 200 {
                    // Let the worker catch up a little: take its next answer.
                    let id = ran.recv().unwrap();
                    assert!(done.insert(id), "task {id} ran twice");
                    assert_eq!(held.pop_front(), Some(id));
                }
                assert!(done.len() + held.len() + returned.len() == (next - 1) as usize, "a task was lost");
            }
            to_worker.send(Message::Exit).unwrap();
            worker.join().unwrap();
            assert!(ran.try_iter().next().is_none(), "a task ran that the pool had taken back");
            assert!(fences > 0);
        }
    }
}
