//! How a blocking wait looks for its condition before it sleeps (a queue's `get` and `put`,
//! an [`Event`](crate::Event)'s `wait`).
//!
//! A sleep and a wake-up cost two system calls and, when the partner is on another CPU, a
//! cross-CPU wake-up (an interrupt to the sleeping CPU, which may first have to leave its
//! idle state): several microseconds. A partner that runs on another CPU and answers within
//! a microsecond or two is met for far less by looking (busy, without a system call) for a
//! while first. When the partner is not running (the CPUs are busy with other work, so it
//! waits for one), the looks only delay it; so how long to look is learnt (see
//! [`spin_until`]). On one CPU a look is a `sched_yield` (see [`yield_until`]).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The longest a blocking call looks for its condition before it sleeps: about what a sleep
/// and a wake-up cost.
const SPIN_NS: u32 = 20_000;

/// The shortest look: below it a blocking call sleeps at once (but for a probe now and then).
const SPIN_MIN_NS: u32 = 1_000;

/// Looks for `cond` (busy, without a system call) for as long as looking has lately paid;
/// whether it came. The budget is this process's, in nanoseconds: a look that succeeded
/// after `t` sets it to `2t` (within [`SPIN_MIN_NS`] and [`SPIN_NS`]); one that failed
/// halves it. Below [`SPIN_MIN_NS`] it does not look, except every 64th wait, which looks
/// for [`SPIN_NS`] (long enough for a partner to be woken and answer) to learn whether
/// looking pays again; a probe that fails leaves the budget where it was. A process that may
/// run on one CPU only does not look busy (its partner cannot run meanwhile): it hands the
/// CPU over instead ([`yield_until`]).
pub(crate) fn spin_until(cond: impl Fn() -> bool) -> bool {
    // The budget (ns), and waits since the last probe in the top 8 bits.
    static BUDGET: AtomicU32 = AtomicU32::new(SPIN_MIN_NS);
    if !several_cpus() {
        return yield_until(&cond);
    }
    let word = BUDGET.load(Ordering::Relaxed);
    let (learnt, waits) = (word & 0xff_ffff, word >> 24);
    let mut budget = learnt;
    if learnt < SPIN_MIN_NS {
        if waits < 63 {
            BUDGET.store(((waits + 1) << 24) | learnt, Ordering::Relaxed);
            return false;
        }
        budget = SPIN_NS;
    }
    let start = Instant::now();
    let limit = Duration::from_nanos(u64::from(budget));
    loop {
        for _ in 0..16 {
            std::hint::spin_loop();
            if cond() {
                let took = start.elapsed().as_nanos().min(u128::from(SPIN_NS)) as u32;
                BUDGET.store((2 * took).clamp(SPIN_MIN_NS, SPIN_NS), Ordering::Relaxed);
                return true;
            }
        }
        if start.elapsed() >= limit {
            BUDGET.store(learnt / 2, Ordering::Relaxed);
            return false;
        }
    }
}

/// How many times a look on one CPU gives the CPU away before it gives up.
const YIELDS: u32 = 2;

/// After this many looks in a row that did not pay, a process on one CPU stops looking (but
/// for a probe every [`YIELD_PROBE`]th wait).
const YIELD_FAILS: u32 = 4;

/// A look on one CPU that took more than this many [`ticks`](crate::sys::ticks) was slow
/// (other processes ran meanwhile): about 15 to 60 µs, [`SPIN_NS`] on a 3 GHz counter.
const SLOW_TICKS: u64 = 60_000;

/// How often a process on one CPU whose looks stopped paying tries one again.
const YIELD_PROBE: u32 = 256;

/// [`spin_until`] for a process that may run on one CPU only: gives the CPU to whoever else
/// is runnable on it (`sched_yield`, at most [`YIELDS`] times) and looks again. A partner
/// on the same CPU that is runnable (woken earlier, or itself looking) then runs at once
/// and answers, so a round trip costs two `sched_yield`s and two context switches, where a
/// sleep costs a `futex` wait and the partner's `futex` wake besides (and a pipe's round
/// trip two `read`s and two `write`s).
///
/// A look pays when the condition came within [`SLOW_TICKS`]. It does not when the partner
/// was asleep (the look only cost a system call), nor when other processes were runnable on
/// the CPU: a yield puts this process behind them for their whole time slices, where a
/// sleeper woken by its partner would run soon (the scheduler credits sleepers). After
/// [`YIELD_FAILS`] looks in a row that did not pay, it stops looking, but for a probe every
/// [`YIELD_PROBE`]th wait (a probe on a busy CPU may cost a time slice of others'). One slow
/// look alone does not stop them: an interrupt, a daemon's wake-up or the hypervisor taking
/// the CPU makes one now and then on a quiet machine, and each would cost the next
/// [`YIELD_PROBE`] waits a `futex` sleep and wake-up (queue ping-pong on one CPU under
/// `SCHED_FIFO` on a shared VM: 12% of the round trips slept so, at 1.77 µs of CPU per round
/// trip against 1.62 µs). The time is read from the CPU's counter
/// ([`ticks`](crate::sys::ticks)), not the clock: two clock reads per wait cost a process
/// just switched to the vDSO's pages (1.62 µs against 1.57 µs).
fn yield_until(cond: &impl Fn() -> bool) -> bool {
    // Looks in a row that did not pay (low 8 bits, at most YIELD_FAILS), waits since the
    // last look above them.
    static FAILS: AtomicU32 = AtomicU32::new(0);
    let word = FAILS.load(Ordering::Relaxed);
    let (fails, waits) = (word & 0xff, word >> 8);
    if fails >= YIELD_FAILS && waits < YIELD_PROBE - 1 {
        FAILS.store(((waits + 1) << 8) | fails, Ordering::Relaxed);
        return false;
    }
    let start = crate::sys::ticks();
    for _ in 0..YIELDS {
        rustix::thread::sched_yield();
        if cond() {
            let paid = crate::sys::ticks().wrapping_sub(start) <= SLOW_TICKS;
            FAILS.store(if paid { 0 } else { (fails + 1).min(YIELD_FAILS) }, Ordering::Relaxed);
            return true;
        }
    }
    FAILS.store((fails + 1).min(YIELD_FAILS), Ordering::Relaxed);
    false
}

/// Whether this process may run on more than one CPU: its affinity mask, asked again every
/// 256 calls (it can change at run time) so that a wait costs no system call.
pub(crate) fn several_cpus() -> bool {
    // The count of CPUs in the low 16 bits (0: not asked yet), calls since asked above.
    static CACHED: AtomicU32 = AtomicU32::new(0);
    let cached = CACHED.fetch_add(1 << 16, Ordering::Relaxed);
    let (cpus, calls) = (cached & 0xffff, cached >> 16);
    if cpus != 0 && calls < 256 {
        return cpus > 1;
    }
    let cpus = rustix::thread::sched_getaffinity(None).map_or(2, |set| set.count()).clamp(1, 0xffff);
    CACHED.store(cpus, Ordering::Relaxed);
    cpus > 1
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    #[test]
    fn a_look_sees_a_condition_another_thread_makes_or_gives_up() {
        let done = AtomicBool::new(false);
        assert!(!spin_until(|| false), "nothing makes it true");
        std::thread::scope(|s| {
            s.spawn(|| done.store(true, Ordering::Relaxed));
            // Looks (and gives up) until the thread has run: every look ends, and one (a
            // probe at the latest) sees it.
            while !spin_until(|| done.load(Ordering::Relaxed)) {
                std::thread::yield_now();
            }
        });
    }
}
