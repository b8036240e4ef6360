//! Model checks of the task cell's cross-thread protocol with loom: every interleaving (up to
//! a preemption bound) of an executor thread running, cancelling and dropping tasks while
//! other threads wake, clone and drop their wakers. Loom checks that no access to the cell's
//! `Cell`s and stage races (so the last reference, wherever it is dropped, frees the cell
//! after the executor's last use of it), that no `Arc` leaks (each cell holds its executor's
//! `Remote`: a cell never freed leaks it), and each test checks that no wake is lost and that
//! futures are polled and dropped in the executor's thread only.
//!
//! Run by `cargo xtask test`, as
//! `RUSTFLAGS="--cfg loom" cargo test -p mproc-coroutine --lib --target-dir target/loom` (about
//! a minute and a half to build on 2 cores, a second or two to run).

use std::cell::Cell as StdCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use loom::thread::{self, ThreadId};

use super::*;

/// Every interleaving with at most this many preemptions: enough for the races below (each
/// needs one or two), and a few seconds a test.
const PREEMPTIONS: usize = 3;

fn model(test: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(PREEMPTIONS);
    builder.check(test);
}

/// An executor's tasks, with a remote side and an eventfd of their own, running in this
/// thread (so wakes here go straight to the run queue, as in `block_on`).
fn executor() -> (Rc<Tasks>, Running) {
    let eventfd = reactor::eventfd().expect("an eventfd");
    let tasks = Rc::new(Tasks::new(Arc::new(Remote::new(eventfd))));
    let running = Running::enter(&tasks);
    (tasks, running)
}

/// One turn of the executor's loop without the reactor: the wakes from other threads, then the
/// run queue until it is empty.
fn turn(tasks: &Tasks) {
    tasks.take_remote_wakes();
    while let Some(task) = tasks.pop() {
        tasks.run(task);
    }
}

/// What `Executor`'s drop does with the tasks: refuse remote wakes, drop every future.
fn close(tasks: Rc<Tasks>, running: Running) {
    drop(tasks.remote().close());
    tasks.close_all();
    assert!(tasks.is_empty());
    drop(running);
}

/// Where a future was polled and dropped, seen from the executor's thread.
#[derive(Default)]
struct Seen {
    polls: StdCell<usize>,
    drops: StdCell<usize>,
}

/// A future that is ready once another thread has set its flag (and then woken its task, as a
/// pool result or a channel would), polled and dropped only in the executor's thread.
struct Signal {
    set: Arc<AtomicBool>,
    executor_thread: ThreadId,
    seen: Rc<Seen>,
}

impl Signal {
    fn new(seen: &Rc<Seen>) -> (Signal, Arc<AtomicBool>) {
        let set = Arc::new(AtomicBool::new(false));
        let signal =
            Signal { set: Arc::clone(&set), executor_thread: thread::current().id(), seen: Rc::clone(seen) };
        (signal, set)
    }
}

impl Future for Signal {
    type Output = usize;

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<usize> {
        assert_eq!(thread::current().id(), self.executor_thread, "a future polled in another thread");
        self.seen.polls.set(self.seen.polls.get() + 1);
        if self.set.load(Ordering::Acquire) { Poll::Ready(self.seen.polls.get()) } else { Poll::Pending }
    }
}

impl Drop for Signal {
    fn drop(&mut self) {
        assert_eq!(thread::current().id(), self.executor_thread, "a future dropped in another thread");
        self.seen.drops.set(self.seen.drops.get() + 1);
    }
}

/// The output of a finished task.
fn output<T>(handle: &mut JoinHandle<T>) -> Option<Result<T, String>> {
    match handle.poll_output(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the task is not finished"),
    }
}

/// A wake from another thread, before, between or after the executor's runs, is never lost:
/// the task runs again after the flag is set and finishes. Also with a second wake that finds
/// the task still in the remote queue from the first (it must then be run after the flag is
/// visible, by the first wake's entry).
#[test]
fn a_remote_wake_racing_the_runs_is_never_lost() {
    model(|| {
        let (tasks, running) = executor();
        let seen = Rc::new(Seen::default());
        let (signal, set) = Signal::new(&seen);
        let mut handle = spawn(&tasks, signal);
        let waker = handle.waker();
        let waking = thread::spawn(move || {
            waker.wake_by_ref();
            set.store(true, Ordering::Release);
            waker.wake();
        });
        turn(&tasks);
        waking.join().unwrap();
        turn(&tasks);
        assert!(handle.is_finished(), "a wake was lost");
        assert!(matches!(output(&mut handle), Some(Ok(_))));
        drop(handle);
        assert_eq!(seen.drops.get(), 1);
        close(tasks, running);
    });
}

/// Wakers cloned and dropped in two other threads while the task finishes and its handle is
/// dropped: whichever reference goes last frees the cell, once, after every use of it.
#[test]
fn the_last_reference_frees_the_cell_in_whatever_thread() {
    model(|| {
        let (tasks, running) = executor();
        let seen = Rc::new(Seen::default());
        let (signal, set) = Signal::new(&seen);
        set.store(true, Ordering::Relaxed);
        let mut handle = spawn(&tasks, signal);
        let (first, second) = (handle.waker(), handle.waker());
        let cloning = thread::spawn(move || drop(first.clone()));
        let dropping = thread::spawn(move || second.wake());
        turn(&tasks);
        assert_eq!(output(&mut handle).map(|r| r.is_ok()), Some(true));
        drop(handle);
        close(tasks, running);
        cloning.join().unwrap();
        dropping.join().unwrap();
        assert_eq!((seen.polls.get(), seen.drops.get()), (1, 1));
    });
}

/// A cell whose last reference goes in the executor's thread is kept there and taken by the
/// next task of its layout; one whose last reference goes in another thread (a waker dropped
/// there last) goes back to the allocator. Either way the next task's cell is reached by
/// nothing of the first one's.
#[test]
fn a_freed_cell_is_reused_only_once_nothing_reaches_it() {
    model(|| {
        let (tasks, running) = executor();
        let seen = Rc::new(Seen::default());
        let (signal, set) = Signal::new(&seen);
        set.store(true, Ordering::Relaxed);
        let mut handle = spawn(&tasks, signal);
        let waker = handle.waker();
        let dropping = thread::spawn(move || drop(waker));
        turn(&tasks);
        assert_eq!(output(&mut handle).map(|r| r.is_ok()), Some(true));
        drop(handle);
        // The same future type: the first task's cell, if it was kept.
        let (signal, set) = Signal::new(&seen);
        set.store(true, Ordering::Relaxed);
        let mut next = spawn(&tasks, signal);
        turn(&tasks);
        assert_eq!(output(&mut next).map(|r| r.is_ok()), Some(true));
        drop(next);
        dropping.join().unwrap();
        close(tasks, running);
        assert_eq!((seen.polls.get(), seen.drops.get()), (2, 2));
    });
}

/// A task cancelled (its handle dropped) while another thread wakes it: the future is dropped
/// once, in the executor's thread, and never polled again.
#[test]
fn a_cancel_racing_a_remote_wake_drops_the_future_once_here() {
    model(|| {
        let (tasks, running) = executor();
        let seen = Rc::new(Seen::default());
        let (signal, set) = Signal::new(&seen);
        let handle = spawn(&tasks, signal);
        turn(&tasks);
        let waker = handle.waker();
        let waking = thread::spawn(move || {
            set.store(true, Ordering::Release);
            waker.wake();
        });
        drop(handle);
        assert_eq!(seen.drops.get(), 1);
        turn(&tasks);
        waking.join().unwrap();
        turn(&tasks);
        assert_eq!((seen.polls.get(), seen.drops.get()), (1, 1));
        close(tasks, running);
    });
}

/// The executor dropped while another thread wakes a waiting task: the wake is queued before
/// the close (and freed by it) or refused after it (and freed by the waking thread); the
/// future is dropped once, in the executor's thread.
#[test]
fn an_executor_dropped_while_another_thread_wakes_frees_everything() {
    model(|| {
        let (tasks, running) = executor();
        let seen = Rc::new(Seen::default());
        let (signal, _set) = Signal::new(&seen);
        spawn(&tasks, signal).detach();
        turn(&tasks);
        // The waker a pending future would have left with a pool or another thread.
        let waker = {
            let handle = spawn(&tasks, std::future::pending::<()>());
            let waker = handle.waker();
            handle.detach();
            waker
        };
        turn(&tasks);
        let waking = thread::spawn(move || waker.wake());
        close(tasks, running);
        waking.join().unwrap();
        assert_eq!(seen.drops.get(), 1);
    });
}

/// The executor going to sleep in its reactor while another thread wakes a task: either the
/// executor sees the wake before it sleeps, or the waking thread writes the eventfd (which the
/// reactor wakes on). Here "sleeping" waits until the eventfd is written: a lost wake would
/// wait forever, which loom reports.
#[test]
fn a_remote_wake_racing_the_executors_sleep_wakes_it() {
    model(|| {
        let (tasks, running) = executor();
        let seen = Rc::new(Seen::default());
        let (signal, set) = Signal::new(&seen);
        let mut handle = spawn(&tasks, signal);
        turn(&tasks);
        let waker = handle.waker();
        let waking = thread::spawn(move || {
            set.store(true, Ordering::Release);
            waker.wake();
        });
        while !handle.is_finished() {
            turn(&tasks);
            if tasks.is_empty() && !handle.is_finished() {
                let remote = Arc::clone(tasks.remote());
                remote.sleep_unless_woken(|| {
                    let mut count = [0u8; 8];
                    while rustix::io::read(&remote.eventfd, &mut count).is_err() {
                        thread::yield_now();
                    }
                });
            }
        }
        waking.join().unwrap();
        assert!(matches!(output(&mut handle), Some(Ok(_))));
        drop(handle);
        close(tasks, running);
    });
}

/// The same for the future given to `block_on`, woken from another thread (a pool result):
/// the executor sees the wake before it sleeps, or is woken through the eventfd.
#[test]
fn a_remote_wake_of_the_main_future_racing_the_executors_sleep_wakes_it() {
    model(|| {
        let (tasks, running) = executor();
        let remote = Arc::clone(tasks.remote());
        let waking = {
            let remote = Arc::clone(&remote);
            thread::spawn(move || remote.wake_main())
        };
        while !remote.take_main_wake() {
            remote.sleep_unless_woken(|| {
                let mut count = [0u8; 8];
                while rustix::io::read(&remote.eventfd, &mut count).is_err() {
                    thread::yield_now();
                }
            });
        }
        waking.join().unwrap();
        close(tasks, running);
    });
}
