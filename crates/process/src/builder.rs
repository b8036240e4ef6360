//! `Builder` and `StartMethod`: how a child is started.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::mpsc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::global::PerProcess;
use crate::identity;
use crate::process::Process;
use crate::start;

/// How a child process comes to be, as Python's start methods.
///
/// | method | runs | cost | safe from a multi-threaded parent |
/// |---|---|---|---|
/// | `Fork` | any closure | a `fork` | only if the child touches no lock another thread held |
/// | `ForkServer` (default) | `fn(A) -> R` | a request to a one-thread server, which forks | yes |
/// | `Spawn` | `fn(A) -> R` | a fresh `exec` of this program | yes |
///
/// Measured (`cargo bench -p mproc-benches --bench process`, start and join of a child that
/// returns at once): `Fork` about 1.15x a bare `fork` + `_exit` + `waitpid` of the same
/// process, `ForkServer` about 1.7x that, `Spawn` about 1.75x a `posix_spawn` of `/bin/true`.
///
/// `ForkServer` and `Spawn` need [`init`](crate::init) as the first line of `main`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StartMethod {
    /// `fork(2)` this process: the child is a copy of it and runs a closure. The fastest, and
    /// the only one that runs closures. In a parent with other threads the child starts with
    /// a copy of memory in which another thread may hold a lock (of a logger, an allocator
    /// other than glibc's, your own `Mutex`): touching it in the child hangs. mproc's own
    /// locks and stdio are safe. So is a panic in the child only if no other thread was
    /// panicking or capturing a backtrace at the fork: the standard library's panic hook takes
    /// its backtrace lock, which that thread then holds for ever in the child.
    Fork,
    /// Ask the fork server, a small one-thread copy of this program started on first use, to
    /// fork the child. Safe whatever threads the parent runs, and cheap per child.
    #[default]
    ForkServer,
    /// Run this program again (`/proc/self/exe`); `init()` makes the new copy run the
    /// function instead of `main`. Safe and fully fresh, and the slowest.
    Spawn,
}

/// Configures and starts a child: `Builder::new().name("worker").daemon(true).spawn(..)`,
/// like `std::thread::Builder`. `'a` is how long the ends given to
/// [`close_in_child`](Self::close_in_child) are borrowed.
#[derive(Debug, Clone, Default)]
pub struct Builder<'a> {
    name: Option<String>,
    daemon: bool,
    start_method: Option<StartMethod>,
    /// Held, not their numbers: each stays open until the start, so the number the child
    /// closes is this end's and nothing else's.
    close_in_child: Vec<BorrowedFd<'a>>,
}

impl<'a> Builder<'a> {
    /// A builder with the defaults: a `Process-N` name, not a daemon, the default start method.
    pub fn new() -> Builder<'a> {
        Builder::default()
    }

    /// Names the child (`current_process().name()` in it).
    pub fn name(mut self, name: impl Into<String>) -> Builder<'a> {
        self.name = Some(name.into());
        self
    }

    /// Makes the child a daemon: the kernel kills it when this process dies (even by
    /// `SIGKILL`), it is terminated when this program exits, and it may not start children.
    pub fn daemon(mut self, daemon: bool) -> Builder<'a> {
        self.daemon = daemon;
        self
    }

    /// With [`StartMethod::Fork`], closes the child's copy of `end` (a file descriptor of the
    /// parent's) as soon as it starts.
    ///
    /// A forked child is a copy of its parent and holds every end the parent holds. An end the
    /// child reads until end of file then never gets there, because the child itself keeps the
    /// parent's side open: name the parent's side here. The child's closure must not use
    /// `end`. Other start methods give children only what they are passed, so this changes
    /// nothing for them.
    ///
    /// The builder borrows `end` until it starts the child: the child closes that very end,
    /// never whatever took its fd number after it was closed.
    ///
    /// ```compile_fail
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (parent_end, _child_end) = mproc_process::ipc::duplex::<u32>()?;
    /// let builder = mproc_process::Builder::new().close_in_child(&parent_end);
    /// drop(parent_end); // error: still borrowed by the builder
    /// let child = builder.spawn(|| 1u32)?;
    /// # Ok(()) }
    /// ```
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use mproc_process::{Builder, ipc};
    /// let (parent_end, child_end) = ipc::duplex::<u32>()?;
    /// let summer = Builder::new().close_in_child(&parent_end).spawn(move || {
    ///     let mut total = 0;
    ///     while let Ok(n) = child_end.recv() {
    ///         total += n;
    ///     }
    ///     total // the loop ends when the parent drops its end
    /// })?;
    /// for n in 1..=4 {
    ///     parent_end.send(&n)?;
    /// }
    /// drop(parent_end);
    /// assert_eq!(summer.join()?, 10);
    /// # Ok(()) }
    /// ```
    pub fn close_in_child<'b>(self, end: &'b impl AsFd) -> Builder<'b>
    where
        'a: 'b,
    {
        let mut close_in_child: Vec<BorrowedFd<'b>> = self.close_in_child;
        close_in_child.push(end.as_fd());
        Builder { name: self.name, daemon: self.daemon, start_method: self.start_method, close_in_child }
    }

    /// Chooses the start method (default [`StartMethod::ForkServer`]).
    pub fn start_method(mut self, method: StartMethod) -> Builder<'a> {
        self.start_method = Some(method);
        self
    }

    /// Forks a child that runs `f` and sends back its value. Closures can only be started by
    /// [`StartMethod::Fork`]; any other method set on this builder is an error (use
    /// [`spawn_fn`](Self::spawn_fn)).
    ///
    /// The child is a party of every [`Barrier`](mproc_ipc::Barrier) the closure owns from
    /// its start, as a `spawn_fn` child is of those in its arguments: killed before its first
    /// `wait`, it breaks them (ending normally, it leaves them).
    pub fn spawn<F, R>(self, f: F) -> Result<Process<R>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        if !matches!(self.start_method, None | Some(StartMethod::Fork)) {
            return Err(Error::Unsupported(
                "a closure can only be started with StartMethod::Fork; use spawn_fn for other methods",
            ));
        }
        let identity = self.child_identity()?;
        let close = self.close_numbers();
        on_long_lived_thread(identity.daemon, move || {
            // The barriers the closure owns count the child as a party from its start (as
            // a spawn_fn child is of those in its arguments): found by their handle counts
            // once this side has dropped its copy of the closure, and told to the child.
            let Some((parties, child_parties)) = mproc_ipc::__private::closure_parties()? else {
                return start::fork::start(identity, &close, f);
            };
            let close = [&close[..], &[parties.fd().as_raw_fd()]].concat();
            let started = start::fork::start(identity, &close, move || {
                child_parties.join();
                f()
            });
            if started.is_ok() {
                parties.tell();
            }
            started
        })
    }

    /// Starts a child that runs `f(args)` by the chosen start method and sends back its value.
    /// `args` may hold ipc ends (they reach the child open).
    pub fn spawn_fn<A, R>(self, f: fn(A) -> R, args: A) -> Result<Process<R>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let identity = self.child_identity()?;
        let daemon = identity.daemon;
        match self.start_method.unwrap_or_default() {
            StartMethod::Fork => {
                let close = self.close_numbers();
                on_long_lived_thread(daemon, move || {
                    start::fork::start(identity, &close, move || {
                        // As a Spawn child's at receiving them: the barriers in `args` count
                        // this child as a party from its start, not from its first wait.
                        mproc_ipc::__private::join_parties_in(&args);
                        f(args)
                    })
                })
            }
            StartMethod::Spawn => {
                on_long_lived_thread(daemon, move || start::spawn::start(identity, f, &args))
            }
            StartMethod::ForkServer => start::forkserver::start(identity, f, &args),
        }
    }

    /// The numbers of the ends to close in a Fork child, for a start that may run on another
    /// thread (a daemon's). They name those ends for as long as `self` lives, which is the
    /// whole start: `spawn` and `spawn_fn` hold `self` until it returns, and the start runs
    /// on its own thread or one it waits for.
    fn close_numbers(&self) -> Vec<i32> {
        self.close_in_child.iter().map(|end| end.as_raw_fd()).collect()
    }

    fn child_identity(&self) -> Result<identity::Identity> {
        if identity::is_daemon() {
            return Err(Error::DaemonCannotStart);
        }
        // What a dropped handle will need, made while a failure can still be reported.
        crate::registry::prepare()?;
        Ok(identity::child_identity(self.name.clone(), self.daemon))
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The thread daemons are started from when the caller is not the main thread.
static STARTER: PerProcess<Option<mpsc::Sender<Job>>> = PerProcess::new();

/// Runs `start` where a daemon child's death signal means what it should.
///
/// The kernel's parent-death signal fires when the *thread* that started the child exits, not
/// the process. So a daemon is started from the main thread (which lives as long as the
/// process) or from a dedicated thread that never exits; anything else starts right here.
fn on_long_lived_thread<T: Send + 'static>(daemon: bool, start: impl FnOnce() -> T + Send + 'static) -> T {
    if !daemon || rustix::thread::gettid() == rustix::process::getpid() {
        return start();
    }
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = done_tx.send(start());
    });
    let job = STARTER.with(
        || None,
        |starter| {
            let sender = starter.get_or_insert_with(|| {
                let (tx, rx) = mpsc::channel::<Job>();
                std::thread::Builder::new()
                    .name("mproc-starter".into())
                    .spawn(move || rx.into_iter().for_each(|job| job()))
                    .expect("thread for starting daemons");
                tx
            });
            sender.send(job).err().map(|e| e.0)
        },
    );
    if let Some(job) = job {
        // The starter thread is gone (it never exits while the process lives): start here.
        job();
    }
    done_rx.recv().expect("the starter thread runs every job")
}
