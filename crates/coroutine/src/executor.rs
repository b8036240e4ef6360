//! The executor: a run queue of tasks in one thread, the reactor it sleeps in, and the queue
//! other threads wake tasks through.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use crate::reactor::{self, Reactor};
use crate::sync::Arc;
use crate::sys::task::{self, JoinHandle, Remote, Running, Tasks};

/// How many tasks run between two looks at the reactor while tasks keep being ready.
const BUDGET: usize = 1024;

/// The executor's own state, in its thread.
pub(crate) struct Local {
    id: u64,
    /// The process that made it: a forked child holds a copy, which must stay unused.
    pid: u32,
    tasks: Rc<Tasks>,
    pub(crate) reactor: Reactor,
}

impl Local {
    /// Panics with a clear message in a forked child.
    fn check_process(&self) {
        let me = mproc_pool::process::getpid();
        if me != self.pid {
            panic!(
                "mproc-coroutine: this Executor was made in process {}, and this is process {me} \
                 (a forked child): its reactor is shared with the parent, so it cannot run here. \
                 Make a new Executor in the child.",
                self.pid
            );
        }
    }
}

thread_local! {
    /// The executor whose `block_on` runs in this thread now.
    static CURRENT: RefCell<Option<Rc<Local>>> = const { RefCell::new(None) };
}

/// The running executor of this thread, if it belongs to this process.
pub(crate) fn current() -> Option<Rc<Local>> {
    let local = CURRENT.with(|c| c.borrow().clone())?;
    (local.pid == mproc_pool::process::getpid()).then_some(local)
}

/// Makes `local` current for the life of the guard (and its tasks the running ones).
struct Enter {
    previous: Option<Rc<Local>>,
    _running: Running,
}

impl Enter {
    fn new(local: &Rc<Local>) -> Enter {
        let previous = CURRENT.with(|c| c.replace(Some(Rc::clone(local))));
        Enter { previous, _running: Running::enter(&local.tasks) }
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        let left = CURRENT.with(|c| c.replace(self.previous.take()));
        drop(left);
    }
}

/// Wakes the future given to `block_on`.
struct MainWaker {
    remote: Arc<Remote>,
}

impl Wake for MainWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.remote.wake_main();
    }
}

impl fmt::Debug for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Executor")
    }
}

/// A coroutine executor that runs in the thread that calls [`block_on`](Self::block_on).
///
/// It is not `Send`: it, its tasks and their futures stay in the thread that made it. Wakers
/// are `Send + Sync` as usual: another thread (a pool's result handler, a thread of yours)
/// may wake a task, and the executor wakes up from its reactor to run it.
pub struct Executor {
    local: Rc<Local>,
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor")
            .field("id", &self.local.id)
            .field("queued", &self.local.tasks.len())
            .finish()
    }
}

impl Executor {
    /// A new executor with its own reactor (an epoll fd and an eventfd).
    pub fn new() -> io::Result<Executor> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let eventfd = reactor::eventfd()?;
        let reactor = Reactor::new(eventfd.as_fd())?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let tasks = Rc::new(Tasks::new(Arc::new(Remote::new(eventfd))));
        let local = Local { id, pid: mproc_pool::process::getpid(), tasks, reactor };
        Ok(Executor { local: Rc::new(local) })
    }

    /// Starts `future` as a task of this executor; it runs while [`block_on`](Self::block_on)
    /// runs. Awaiting the [`Task`] gives its output; dropping it cancels the task.
    pub fn spawn<F>(&self, future: F) -> Task<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        spawn_on(&self.local, future)
    }

    /// Runs `future` to completion in this thread, running the executor's tasks and waiting
    /// on its reactor meanwhile, and returns its output.
    ///
    /// # Panics
    ///
    /// In a forked child, when the executor was made by the parent (its reactor is shared
    /// with the parent's): make a new executor in the child. A panic of `future` itself
    /// propagates; panics of spawned tasks are caught (see [`Task`]).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        let local = &self.local;
        local.check_process();
        let _enter = Enter::new(local);
        let remote = local.tasks.remote();
        let waker = Waker::from(std::sync::Arc::new(MainWaker { remote: Arc::clone(remote) }));
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        remote.wake_main();
        loop {
            if remote.take_main_wake()
                && let Poll::Ready(output) = future.as_mut().poll(&mut cx)
            {
                return output;
            }
            // The queue runs before the main future is polled again (up to the budget): a main
            // future awaiting many tasks then finds them finished, instead of being woken by
            // each in turn.
            let mut ran = 0;
            while ran < BUDGET {
                let Some(task) = local.tasks.pop() else { break };
                local.tasks.run(task);
                ran += 1;
            }
            local.tasks.take_remote_wakes();
            if local.tasks.is_empty() && !remote.main_woken() {
                remote.sleep_unless_woken(|| {
                    local.reactor.poll(None).expect("mproc-coroutine: epoll_wait failed");
                });
            } else if ran == BUDGET {
                // Busy: look at I/O and timers without sleeping, so they are not starved.
                local.reactor.poll(Some(Duration::ZERO)).expect("mproc-coroutine: epoll_wait failed");
            }
        }
    }
}

impl Drop for Executor {
    /// Drops every unfinished task's future: queued to run, woken from other threads, or
    /// waiting on the reactor. A future holding an [`Async`](crate::Async) holds the executor
    /// too: without this, the two would keep each other alive, and with them every end and
    /// child the futures hold. Wakes from other threads are refused from now on.
    fn drop(&mut self) {
        let _enter = Enter::new(&self.local);
        drop(self.local.tasks.remote().close());
        loop {
            self.local.tasks.close_all();
            // Wakers waiting on fds and timers: their tasks are done now; drop them too.
            let waiting = self.local.reactor.take_wakers();
            if waiting.is_empty() && self.local.tasks.is_empty() {
                break;
            }
            drop(waiting);
        }
    }
}

/// Starts `future` as a task of the executor running in this thread (inside
/// [`Executor::block_on`]).
///
/// # Panics
///
/// Outside `block_on`, and in a forked child of the process whose executor is running.
pub fn spawn<F>(future: F) -> Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let local = current().unwrap_or_else(|| {
        panic!("mproc_coroutine::spawn outside Executor::block_on (or in a forked child of it)")
    });
    spawn_on(&local, future)
}

fn spawn_on<F>(local: &Rc<Local>, future: F) -> Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    Task { inner: Some(task::spawn(&local.tasks, future)) }
}

/// A spawned task: await it for its output. Dropping it cancels the task (its future is
/// dropped at once, or when its current run ends if it drops its own handle);
/// [`detach`](Self::detach) lets it run on unobserved.
///
/// A panic inside the task is caught: the other tasks go on, and awaiting this one gives
/// [`Panicked`] with the message. A task whose executor was dropped before it finished gives
/// [`Panicked`] saying it was cancelled.
///
/// Like the executor, a `Task` is `!Send`: it is awaited in the executor's thread.
#[must_use = "dropping a Task cancels it; call detach() to let it run"]
pub struct Task<T> {
    inner: Option<JoinHandle<T>>,
}

impl<T> fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task").field("finished", &self.inner.as_ref().map(|t| t.is_finished())).finish()
    }
}

impl<T> Task<T> {
    /// Lets the task run to its end with nobody awaiting it (its output is dropped).
    pub fn detach(mut self) {
        if let Some(task) = self.inner.take() {
            task.detach();
        }
    }

    /// Whether the task has finished (with an output or a panic).
    pub fn is_finished(&self) -> bool {
        self.inner.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl<T> Future for Task<T> {
    type Output = Result<T, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(task) = self.inner.as_mut() else {
            return Poll::Ready(Err(Panicked { message: "the task was detached".into() }));
        };
        task.poll_output(cx).map(|output| match output {
            Some(Ok(value)) => Ok(value),
            Some(Err(message)) => Err(Panicked { message }),
            None => Err(Panicked { message: "the task was cancelled: its executor was dropped".into() }),
        })
    }
}

/// A task panicked; its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked {
    /// The panic message (or a note that the payload was not a string).
    pub message: String,
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the task panicked: {}", self.message)
    }
}

impl std::error::Error for Panicked {}
