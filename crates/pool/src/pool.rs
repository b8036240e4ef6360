//! `Pool` and its builder: what callers use.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use mproc_process::{FnPtr, FnRef, StartMethod};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cluster::{self, Arrivals, Launcher, RemoteConfig};
use crate::error::{Error, Result};
use crate::handler::Handler;
use crate::remote::Worker;
use crate::result::{AsyncResult, Done, Hook, Slot, decode_chunks, decode_one, decode_value};
use crate::scheduler;
use crate::shared::{self, Config, Queue, Queued, Role, Shared};
use mproc_process::ipc::{Address, Carried, Listener};

use crate::wire::{self, Driver};

/// What the callback thread runs: a task's callback, and the task (for the log if it panics).
type Job = (Box<dyn FnOnce() + Send>, String);

/// A pool of worker processes (or threads, see [`PoolBuilder::threads`]) that run
/// `fn(A) -> R` tasks: Python's `multiprocessing.Pool`.
///
/// All methods take `&self`: a pool can be shared between threads (it is `Sync`). Dropping it
/// closes it and waits for every task submitted ([`close`](Self::close) then
/// [`join`](Self::join)); [`terminate`](Self::terminate) stops at once instead.
pub struct Pool {
    shared: Arc<Shared>,
    handler: Mutex<Option<JoinHandle<()>>>,
    callbacks: Mutex<Option<(mpsc::Sender<Job>, JoinHandle<()>)>>,
    next_id: AtomicU64,
    /// The process whose threads and workers these are: a forked child has a copy of the
    /// `Pool` but no handler thread, no workers.
    owner: u32,
    /// How to start remote workers, if it listens.
    launcher: Option<Launcher>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queue = self.shared.queue.lock();
        f.debug_struct("Pool")
            .field("processes", &self.shared.config.processes)
            .field("threads", &self.shared.config.threads)
            .field("queued", &queue.tasks.len())
            .field("closed", &queue.closed)
            .field("terminated", &queue.terminate)
            .finish()
    }
}

/// Configures a [`Pool`]: `Pool::builder().processes(4).task_timeout(d).build()`.
#[derive(Debug, Default)]
pub struct PoolBuilder {
    processes: Option<usize>,
    init: Option<(FnRef<Driver>, std::result::Result<Carried, String>, &'static str)>,
    max_tasks_per_child: Option<u64>,
    start_method: Option<StartMethod>,
    task_timeout: Option<Duration>,
    threads: bool,
    max_message_size: Option<usize>,
    listen: Option<Address>,
    authkey: Option<Vec<u8>>,
    remote_workers: usize,
    worker_wait: Option<Duration>,
    heartbeat: Option<(Duration, Duration)>,
    remote_claim_ahead: bool,
}

/// The default message limit: the machine's memory (`MemTotal`), at least 1 GiB.
fn default_max_message_size() -> usize {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|info| {
        let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: usize =
            line.trim_start_matches("MemTotal:").trim().trim_end_matches("kB").trim().parse().ok()?;
        kib.checked_mul(1024)
    });
    total.unwrap_or(0).max(mproc_process::ipc::DEFAULT_MAX_MESSAGE_SIZE)
}

/// How long `build` waits for [`remote_workers`](PoolBuilder::remote_workers), and tasks
/// wait for a worker in a pool that has none, by default.
pub const DEFAULT_WORKER_WAIT: Duration = Duration::from_secs(60);
/// How often each side of a remote worker's connection sends a heartbeat when it has sent
/// nothing else, by default.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// How long either side of a remote worker's connection may stay silent before the other
/// gives it up, by default.
pub const DEFAULT_SILENCE: Duration = Duration::from_secs(10);
/// The shortest heartbeat interval a pool takes: a shorter one (zero above all) would keep
/// both sides of every remote connection busy sending heartbeats.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(1);
/// The longest heartbeat interval a pool takes.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(3600);
/// The longest silence a pool takes: a lost remote worker (or pool) is always noticed within
/// a day.
pub const MAX_SILENCE: Duration = Duration::from_secs(24 * 3600);

impl PoolBuilder {
    /// The largest task input or value, in bytes as encoded, that may cross to or from a
    /// worker (default: the machine's physical memory, and at least
    /// [`DEFAULT_MAX_MESSAGE_SIZE`](mproc_process::ipc::DEFAULT_MAX_MESSAGE_SIZE), 1 GiB: a
    /// larger value could not be held anyway). For `map` and friends, a chunk's items and
    /// values count together. A task past it fails alone with [`Error::Transfer`] (an
    /// argument at once, a value once computed), and the pool goes on.
    ///
    /// Inputs and values past 4 MiB are encoded straight into a sealed memfd, which goes to
    /// and from a local worker (process or thread) beside a small message and is mapped
    /// where it arrives: no copy on the way, and the limit does not bound them (their memory
    /// is the sender's). A remote worker gets them inline over TCP, where the limit holds
    /// (past it, the task fails alone when it would be sent there).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    /// How many workers (default: [`cpu_count`](mproc_process::cpu_count), the CPUs this
    /// process may run on). Zero is refused by [`build`](Self::build) ([`Error::Config`]), as
    /// Python refuses it.
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// Runs `f(args)` once in each worker before its first task (and in each replacement).
    /// If it panics, the pool cannot run tasks: every task fails with
    /// [`Error::Initializer`].
    pub fn initializer<A>(mut self, f: fn(A), args: A) -> Self
    where
        A: Serialize + DeserializeOwned + 'static,
    {
        let input = wire::input(f, &args)
            .map_err(|e| format!("cannot encode the initializer's arguments: {}", wire::encode_error(&e)));
        self.init = Some((wire::driver_ref(wire::init_driver::<A>), input, type_name(f)));
        self
    }

    /// Replaces a worker after it has run `n` tasks (Python's `maxtasksperchild`): a fresh
    /// process for leaky or stateful task code.
    ///
    /// Zero is refused by [`build`](Self::build) ([`Error::Config`]), as Python refuses it.
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.max_tasks_per_child = Some(n);
        self
    }

    /// How workers start (default: `mproc-process`'s default, `ForkServer`). `Fork` and
    /// `ForkServer` workers start in about a millisecond; `Spawn` is a fresh program.
    /// `ForkServer` and `Spawn` need [`init`](mproc_process::init) first in `main`.
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = Some(method);
        self
    }

    /// A task running longer than `timeout` fails with [`Error::Timeout`] and its worker is
    /// killed and replaced. With a timeout each worker holds one task at a time (its clock
    /// starts when the worker starts it: one still in its initializer is not killed for the
    /// task it was sent), so small tasks are not batched.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// Runs the workers as threads of this process instead: Python's
    /// `multiprocessing.dummy`, the same API for debugging with a debugger and full
    /// backtraces. Tasks still cross as bytes (so what fails to serialize fails here too). A
    /// thread cannot be killed: a timed-out task's thread is abandoned (it ends when the task
    /// returns) and replaced.
    pub fn threads(mut self) -> Self {
        self.threads = true;
        self
    }

    /// Listens at `address` (TCP: `(ip, port)`, a `SocketAddr`; port 0 lets the kernel pick)
    /// for remote workers, beside the local ones (or instead: with `processes(0)`). A remote
    /// worker is this same program started elsewhere with the environment of
    /// [`Pool::launcher`], `main` beginning with [`crate::init`]. Each connection is
    /// authenticated with the [`authkey`](Self::authkey), then the worker's build is checked
    /// against the pool's: another program, or another build of this one, is refused (both
    /// sides say why, naming both builds).
    pub fn listen(mut self, address: impl Into<Address>) -> Self {
        self.listen = Some(address.into());
        self
    }

    /// The key remote workers authenticate with (default: this process's
    /// [`authkey`](mproc_process::ProcessInfo::authkey)).
    pub fn authkey(mut self, authkey: &[u8]) -> Self {
        self.authkey = Some(authkey.to_vec());
        self
    }

    /// Makes [`build`](Self::build) wait until `n` remote workers have joined, for at most
    /// [`worker_wait`](Self::worker_wait) ([`Error::MissingWorkers`], naming how many came
    /// and why any was refused). For workers started after the pool is built (with its
    /// [`launcher`](Pool::launcher)), use [`Pool::wait_for_workers`] instead.
    pub fn remote_workers(mut self, n: usize) -> Self {
        self.remote_workers = n;
        self
    }

    /// How long [`build`](Self::build) waits for its [`remote_workers`](Self::remote_workers),
    /// and how long tasks wait for a worker when the pool has none (no local workers and no
    /// remote one connected) before they fail with [`Error::Broken`] (default
    /// [`DEFAULT_WORKER_WAIT`]).
    pub fn worker_wait(mut self, wait: Duration) -> Self {
        self.worker_wait = Some(wait);
        self
    }

    /// How each side of a remote worker's connection checks the other is there: it sends a
    /// heartbeat after `every` with nothing else to send, and gives the other up after
    /// `silence` without a word (default [`DEFAULT_HEARTBEAT`], [`DEFAULT_SILENCE`]). Each
    /// side also gives up the other when it takes nothing it is sent for `silence` (it stopped
    /// reading, though it may still send heartbeats), and the pool gives up a worker that holds
    /// tasks and claims none of them for `silence` (it stalled). The pool then fails the task
    /// the worker was running ([`Error::WorkerDied`]) and hands on those it had not started;
    /// the worker leaves (exit code 3, naming the pool's address, when it is the one that gave
    /// up: what it would finish could never reach the pool). `silence` is raised to at least
    /// three heartbeats.
    ///
    /// `every` must be within [`MIN_HEARTBEAT`] and [`MAX_HEARTBEAT`] (zero would be a busy
    /// loop), and `silence` at most [`MAX_SILENCE`]: [`build`](Self::build) refuses others
    /// ([`Error::Config`]). A worker refuses a pool that sends others.
    pub fn heartbeat(mut self, every: Duration, silence: Duration) -> Self {
        self.heartbeat = Some((every, silence));
        self
    }

    /// Lets remote workers claim short tasks ahead of the one they run (off by default).
    ///
    /// By default a remote worker runs a task only once the pool has granted it, asks for
    /// the next only when it has sent the last one's value, and so costs a round trip to the
    /// pool per task: a lost worker then fails only the task it was running, as a local one
    /// does, and each finished task's value is delivered. With claiming ahead, a worker whose
    /// tasks are much shorter than a round trip asks for about two round trips of them
    /// ahead and sends values at least every millisecond: many times the throughput of
    /// short tasks over a network, but a lost worker then also fails the tasks it had
    /// claimed and not yet finished, and those whose values had not reached the pool (never
    /// one that another worker runs as well: no task runs twice).
    pub fn remote_claim_ahead(mut self, on: bool) -> Self {
        self.remote_claim_ahead = on;
        self
    }

    /// Starts the workers. Fails if one cannot start (for example
    /// [`mproc_process::Error::InitNotCalled`] inside [`Error::Start`]), or on a count of
    /// zero ([`Error::Config`]).
    pub fn build(self) -> Result<Pool> {
        let remote = self.listen.is_some();
        let processes = if remote && self.processes == Some(0) {
            0
        } else {
            self.processes.unwrap_or_else(mproc_process::cpu_count).max(1)
        };
        if self.processes == Some(0) && !remote {
            return Err(Error::Config("a pool needs at least 1 process: processes(0) was asked for"));
        }
        if self.max_tasks_per_child == Some(0) {
            return Err(Error::Config(
                "max_tasks_per_child must be at least 1 (leave it unset for workers that never retire)",
            ));
        }
        let (heartbeat, silence) = self.heartbeat.unwrap_or((DEFAULT_HEARTBEAT, DEFAULT_SILENCE));
        if heartbeat < MIN_HEARTBEAT {
            return Err(Error::Config(
                "the heartbeat interval must be at least MIN_HEARTBEAT (1 ms): a shorter one, zero above \
                 all, would keep every remote connection busy with heartbeats",
            ));
        }
        if heartbeat > MAX_HEARTBEAT {
            return Err(Error::Config("the heartbeat interval must be at most MAX_HEARTBEAT (1 hour)"));
        }
        if silence > MAX_SILENCE {
            return Err(Error::Config(
                "the heartbeat's silence limit must be at most MAX_SILENCE (1 day): a lost worker must \
                 be noticed",
            ));
        }
        let (init, init_name) = match self.init {
            None => (None, ""),
            Some((driver, Ok(input), name)) => (Some((driver, input)), name),
            Some((_, Err(message), _)) => return Err(Error::Initializer { message }),
        };
        let config = Config {
            id: shared::next_pool_id(),
            processes,
            init,
            init_name,
            max_message_size: self.max_message_size.unwrap_or_else(default_max_message_size),
            max_tasks_per_child: self.max_tasks_per_child,
            start_method: self.start_method,
            task_timeout: self.task_timeout,
            threads: self.threads,
            remote: self.listen.as_ref().map(|_| RemoteConfig {
                heartbeat,
                silence: silence.max(3 * heartbeat),
                worker_wait: self.worker_wait.unwrap_or(DEFAULT_WORKER_WAIT),
                claim_ahead: self.remote_claim_ahead,
            }),
        };
        let listener = match &self.listen {
            None => None,
            Some(address) => {
                let authkey =
                    self.authkey.unwrap_or_else(|| mproc_process::current_process().authkey().to_vec());
                let listener = Listener::builder(address.clone()).authkey(&authkey).bind()?;
                let launcher = Launcher::new(listener.address(), &authkey);
                Some((listener, launcher))
            }
        };
        let workers =
            (1..=processes as u64).map(|n| Worker::start(&config, n)).collect::<Result<Vec<_>>>()?;
        let (wake_rx, wake_tx) = mproc_process::ipc::pipe::<()>()?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            finished: parking_lot::Condvar::new(),
            wake: wake_tx,
            config,
            arrivals: Mutex::new(Arrivals::default()),
            joined: parking_lot::Condvar::new(),
        });
        let io = |e| Error::Start(Arc::new(mproc_process::Error::Io(e)));
        let (stop_listening, launcher) = match listener {
            None => (None, None),
            Some((listener, launcher)) => {
                let (stop_rx, stop_tx) = mproc_process::ipc::pipe::<()>()?;
                let done = mproc_process::ipc::pipe::<u64>()?;
                let listening = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name("mproc-pool-listen".into())
                    .spawn(move || cluster::listen(listener, listening, stop_rx, done))
                    .map_err(io)?;
                (Some(stop_tx), Some(launcher))
            }
        };
        let handler = Handler::new(Arc::clone(&shared), wake_rx, workers, stop_listening);
        let handler =
            std::thread::Builder::new().name("mproc-pool".into()).spawn(move || handler.run()).map_err(io)?;
        let pool = Pool {
            shared,
            handler: Mutex::new(Some(handler)),
            callbacks: Mutex::new(None),
            next_id: AtomicU64::new(1),
            owner: mproc_process::getpid(),
            launcher,
        };
        if self.remote_workers > 0 {
            let wait = self.worker_wait.unwrap_or(DEFAULT_WORKER_WAIT);
            if let Err(e) = pool.wait_for_workers(self.remote_workers, wait) {
                pool.terminate();
                return Err(e);
            }
        }
        Ok(pool)
    }
}

/// Python's default `chunksize` for `map`: the items in about four chunks per worker.
pub(crate) fn default_chunksize(len: usize, processes: usize) -> usize {
    len.div_ceil(processes * 4).max(1)
}

impl Pool {
    /// A pool of `processes` workers, started by the default method.
    pub fn new(processes: usize) -> Result<Pool> {
        Pool::builder().processes(processes).build()
    }

    /// A builder for a pool with more settings.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// How many workers the pool keeps: its local ones, plus the remote workers that joined
    /// (at least 1, for chunk sizes).
    pub fn processes(&self) -> usize {
        (self.shared.config.processes + self.shared.arrivals.lock().joined).max(1)
    }

    /// How to start remote workers for this pool (`None` unless it
    /// [listens](PoolBuilder::listen)): the environment to set, or a `Command`, an `ssh` or an
    /// `srun` line that sets it.
    pub fn launcher(&self) -> Option<Launcher> {
        self.launcher.clone()
    }

    /// How many remote workers have joined the pool, in all (those lost since included).
    pub fn remote_workers(&self) -> usize {
        self.shared.arrivals.lock().joined
    }

    /// Waits until `n` remote workers have joined the pool (in all), for at most `timeout`:
    /// else [`Error::MissingWorkers`], naming how many came and why any was refused.
    pub fn wait_for_workers(&self, n: usize, timeout: Duration) -> Result<()> {
        self.owned()?;
        cluster::wait_for(&self.shared, n, timeout)
    }

    /// Runs `f(args)` in a worker and waits for its value.
    pub fn apply<A, R>(&self, f: fn(A) -> R, args: A) -> Result<R>
    where
        A: Serialize + 'static + DeserializeOwned,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.apply_async(f, args).get()
    }

    /// Submits `f(args)` and returns at once; the value comes through the [`AsyncResult`].
    pub fn apply_async<A, R>(&self, f: fn(A) -> R, args: A) -> AsyncResult<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let slot = self.submit(wire::apply_driver::<A, R>, wire::input(f, &args), type_name(f), None, None);
        AsyncResult::one(slot, decode_one::<R>)
    }

    /// As [`apply_async`](Self::apply_async), and then `callback(value)` or
    /// `error_callback(error)` runs on the pool's callback thread (never the caller's, never
    /// the one that collects results: a slow callback delays only later callbacks).
    pub fn apply_async_with<A, R>(
        &self,
        f: fn(A) -> R,
        args: A,
        callback: impl FnOnce(R) + Send + 'static,
        error_callback: impl FnOnce(Error) + Send + 'static,
    ) -> AsyncResult<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let hook = self.callback_hook(move |done: Done| {
            match done.and_then(|bytes| decode_value::<R>(&bytes, String::new)) {
                Ok(value) => callback(value),
                Err(e) => error_callback(e),
            }
        });
        let slot =
            self.submit(wire::apply_driver::<A, R>, wire::input(f, &args), type_name(f), None, Some(hook));
        AsyncResult::one(slot, decode_one::<R>)
    }

    /// `f` over every item, in parallel, values in order (Python's `map`). Items go in chunks
    /// of Python's default size (about four chunks per worker); the first error (in item
    /// order) is returned.
    pub fn map<A, R>(&self, f: fn(A) -> R, items: impl IntoIterator<Item = A>) -> Result<Vec<R>>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.map_async(f, items).get()
    }

    /// [`map`](Self::map) with chunks of `chunksize` items.
    pub fn map_chunked<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<Vec<R>>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let items: Vec<A> = items.into_iter().collect();
        self.map_items(f, items, Some(chunksize)).get()
    }

    /// [`map`](Self::map) without waiting: the values come through the [`AsyncResult`].
    pub fn map_async<A, R>(&self, f: fn(A) -> R, items: impl IntoIterator<Item = A>) -> AsyncResult<Vec<R>>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let items: Vec<A> = items.into_iter().collect();
        self.map_items(f, items, None)
    }

    fn map_items<A, R>(&self, f: fn(A) -> R, items: Vec<A>, chunksize: Option<usize>) -> AsyncResult<Vec<R>>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let chunksize = chunksize.unwrap_or_else(|| default_chunksize(items.len(), self.processes())).max(1);
        let slots = items
            .chunks(chunksize)
            .enumerate()
            .map(|(k, chunk)| {
                let at = k * chunksize..k * chunksize + chunk.len();
                self.submit(wire::chunk_driver::<A, R>, wire::input(f, chunk), type_name(f), Some(at), None)
            })
            .collect();
        AsyncResult::many(slots, decode_chunks::<R>)
    }

    /// `f(a, b)` over every pair, values in order (Python's `starmap`).
    pub fn starmap<A, B, R>(
        &self,
        f: fn(A, B) -> R,
        items: impl IntoIterator<Item = (A, B)>,
    ) -> Result<Vec<R>>
    where
        A: Serialize + DeserializeOwned + 'static,
        B: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let items: Vec<(A, B)> = items.into_iter().collect();
        let chunksize = default_chunksize(items.len(), self.processes());
        let slots = items
            .chunks(chunksize)
            .enumerate()
            .map(|(k, chunk)| {
                let at = k * chunksize..k * chunksize + chunk.len();
                self.submit(wire::star_driver::<A, B, R>, wire::input(f, chunk), type_name(f), Some(at), None)
            })
            .collect();
        AsyncResult::many(slots, decode_chunks::<R>).get()
    }

    /// `f` over the items lazily, values in order (Python's `imap`, chunks of one item).
    ///
    /// Items are taken from `items` only as results are consumed, a bounded window ahead (four
    /// chunks per worker), so an endless iterator is fine and memory stays bounded.
    pub fn imap<A, R, I>(&self, f: fn(A) -> R, items: I) -> IMap<'_, I::IntoIter, A, R>
    where
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.imap_chunked(f, items, 1)
    }

    /// [`imap`](Self::imap) with chunks of `chunksize` items: fewer, larger messages.
    pub fn imap_chunked<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunksize: usize,
    ) -> IMap<'_, I::IntoIter, A, R>
    where
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        IMap {
            feed: Feed::new(self, f, items.into_iter(), chunksize),
            in_flight: VecDeque::new(),
            ready: Vec::new().into_iter(),
        }
    }

    /// `f` over the items lazily, values in the order they are done (Python's
    /// `imap_unordered`); bounded like [`imap`](Self::imap).
    pub fn imap_unordered<A, R, I>(&self, f: fn(A) -> R, items: I) -> IMapUnordered<'_, I::IntoIter, A, R>
    where
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let (done_tx, done_rx) = mpsc::channel();
        IMapUnordered {
            feed: Feed::new(self, f, items.into_iter(), 1),
            in_flight: HashMap::new(),
            done_tx,
            done_rx,
            ready: Vec::new().into_iter(),
        }
    }

    /// Takes no more tasks; those submitted still run. Then [`join`](Self::join) waits.
    pub fn close(&self) {
        if self.owned().is_err() {
            return;
        }
        self.shared.queue.lock().closed = true;
        self.shared.wake();
    }

    /// Stops now: workers are killed, unfinished tasks fail with [`Error::Terminated`]. Returns
    /// when every worker is gone.
    pub fn terminate(&self) {
        if self.owned().is_err() {
            return;
        }
        self.shared.queue.lock().terminate = true;
        self.shared.wake();
        let _ = self.join();
    }

    /// Waits until every task is done and every worker has left. The pool must be closed (or
    /// terminated) first, as in Python: otherwise [`Error::NotClosed`]. From one of the pool's
    /// own tasks (on a thread worker), which it would wait for for ever, it fails at once
    /// with [`Error::JoinInOwnTask`] unless the pool is terminated (which waits for no task).
    pub fn join(&self) -> Result<()> {
        self.owned()?;
        {
            let queue = self.shared.queue.lock();
            if !queue.closed && !queue.terminate {
                return Err(Error::NotClosed);
            }
            if !queue.terminate && self.role() == Some(Role::Worker) {
                return Err(Error::JoinInOwnTask);
            }
        }
        if let Some(handler) = self.handler.lock().take() {
            let _ = handler.join();
        }
        // Another thread may have taken the handle: wait for the handler's own word.
        let mut queue = self.shared.queue.lock();
        while !queue.finished {
            self.shared.finished.wait(&mut queue);
        }
        Ok(())
    }

    /// How the calling thread serves this pool, if it is one of its own.
    fn role(&self) -> Option<Role> {
        shared::role_in(self.shared.config.id)
    }

    /// `Ok` in the process that built the pool; in a forked child (which has a copy of the
    /// `Pool` but not its handler thread or workers), the error that says so.
    fn owned(&self) -> Result<()> {
        let pid = mproc_process::getpid();
        if pid == self.owner { Ok(()) } else { Err(Error::ForkedCopy { owner: self.owner, pid }) }
    }

    /// Queues one task (`items`: a chunk's place in the input); its slot is failed at once if
    /// it cannot be queued.
    fn submit(
        &self,
        driver: Driver,
        input: std::result::Result<Carried, mproc_process::ipc::Error>,
        what: &'static str,
        items: Option<Range<usize>>,
        hook: Option<Hook>,
    ) -> Arc<Slot> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Slot::new(id, what, items, hook);
        if let Err(e) = self.owned() {
            slot.complete(Err(e));
            return slot;
        }
        let limit = self.shared.config.max_message_size;
        let input = match input {
            // A memfd goes beside the message to a local worker: the limit does not bound it.
            Ok(input) if input.len() > limit && !input.is_file() => {
                let message = wire::past_the_limit("arguments", input.len() as u64, limit as u64);
                slot.complete(Err(Error::Transfer { task: slot.task(), message }));
                return slot;
            }
            // No message to a worker could carry it.
            Ok(input) if wire::fds_of(&input) > scheduler::BATCH_FDS => {
                let message = format!(
                    "cannot send the arguments: they hold {} ipc ends or shared state, past the {} \
                     one message to a worker carries (pass fewer, or share one)",
                    input.n_fds(),
                    scheduler::BATCH_FDS - usize::from(input.is_file()),
                );
                slot.complete(Err(Error::Transfer { task: slot.task(), message }));
                return slot;
            }
            Ok(input) => input,
            Err(e) => {
                slot.complete(Err(Error::Transfer {
                    task: slot.task(),
                    message: format!("cannot encode the arguments: {}", wire::encode_error(&e)),
                }));
                return slot;
            }
        };
        let mut queue = self.shared.queue.lock();
        let refused = match &queue.broken {
            Some(error) => Some(error.clone()),
            None if queue.closed || queue.terminate => Some(Error::Closed),
            None => None,
        };
        if let Some(error) = refused {
            drop(queue);
            slot.complete(Err(error));
            return slot;
        }
        queue.tasks.push_back(Queued {
            id,
            driver: wire::driver_ref(driver),
            input,
            slot: Arc::clone(&slot),
            position: 0,
        });
        let wake = std::mem::take(&mut queue.asleep);
        drop(queue);
        if wake {
            self.shared.wake();
        }
        slot
    }

    /// A hook that runs `callback` with the task's outcome on the callback thread.
    fn callback_hook(&self, callback: impl FnOnce(Done) + Send + 'static) -> Hook {
        let tx = {
            let mut callbacks = self.callbacks.lock();
            let (tx, _) = callbacks.get_or_insert_with(|| {
                let (tx, rx) = mpsc::channel::<Job>();
                let pool = self.shared.config.id;
                let thread = std::thread::Builder::new()
                    .name("mproc-pool-callbacks".into())
                    .spawn(move || {
                        shared::serve_as(pool, Role::Callbacks);
                        rx.into_iter().for_each(run_callback)
                    })
                    .expect("a thread for the pool's callbacks");
                (tx, thread)
            });
            tx.clone()
        };
        Box::new(move |slot: &Slot, done: &Done| {
            let done = done.clone();
            let _ = tx.send((Box::new(move || callback(done)), slot.task()));
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.owned().is_err() {
            // A forked copy: the threads these handles name are the parent's, and do not
            // exist here. Nothing to close, wait for or join.
            std::mem::forget(self.handler.lock().take());
            std::mem::forget(self.callbacks.lock().take());
            return;
        }
        self.close();
        let role = self.role();
        if role == Some(Role::Worker) {
            // Dropped by one of its own tasks, which waiting for every task would wait for
            // for ever: closed, its handler finishes the tasks and ends on its own, and the
            // callback thread once the last callback has run.
            drop(self.handler.lock().take());
            drop(self.callbacks.lock().take());
            return;
        }
        let _ = self.join();
        // Every task is done: the callback thread runs what is queued and ends (or, dropped
        // by a callback, ends after it: it cannot wait for itself).
        if let Some((tx, thread)) = self.callbacks.lock().take() {
            drop(tx);
            if role != Some(Role::Callbacks) {
                let _ = thread.join();
            }
        }
    }
}

/// Runs one callback; a panic is logged, and the next callbacks run.
fn run_callback((callback, task): Job) {
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(callback)) {
        log::error!(
            "mproc-pool: the callback of {task} panicked: {}",
            mproc_process::panic_message(&*payload)
        );
    }
}

/// The name of `f`'s type, for errors.
fn type_name<F: FnPtr>(_f: F) -> &'static str {
    std::any::type_name::<F>()
}

/// Takes items from an iterator a chunk at a time and submits them.
struct Feed<'p, I, A, R> {
    pool: &'p Pool,
    f: fn(A) -> R,
    items: I,
    chunksize: usize,
    /// How many chunks may be in flight.
    window: usize,
    /// How many items were taken so far.
    taken: usize,
}

impl<'p, I, A, R> Feed<'p, I, A, R>
where
    I: Iterator<Item = A>,
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    fn new(pool: &'p Pool, f: fn(A) -> R, items: I, chunksize: usize) -> Self {
        Feed { pool, f, items, chunksize: chunksize.max(1), window: pool.processes() * 4, taken: 0 }
    }

    /// Submits the next chunk, if the input has one.
    fn next_chunk(&mut self, hook: Option<Hook>) -> Option<Arc<Slot>> {
        let chunk: Vec<A> = self.items.by_ref().take(self.chunksize).collect();
        if chunk.is_empty() {
            return None;
        }
        let input = wire::input(self.f, &chunk);
        let at = self.taken..self.taken + chunk.len();
        self.taken = at.end;
        Some(self.pool.submit(wire::chunk_driver::<A, R>, input, type_name(self.f), Some(at), hook))
    }
}

/// The iterator of [`Pool::imap`]: `Ok(value)` per item in order; a failed chunk gives one
/// `Err` in its place.
pub struct IMap<'p, I, A, R> {
    feed: Feed<'p, I, A, R>,
    in_flight: VecDeque<Arc<Slot>>,
    ready: std::vec::IntoIter<R>,
}

impl<I, A, R> Iterator for IMap<'_, I, A, R>
where
    I: Iterator<Item = A>,
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        let IMap { feed, in_flight, ready } = self;
        next_value(ready, || {
            while in_flight.len() < feed.window {
                match feed.next_chunk(None) {
                    Some(slot) => in_flight.push_back(slot),
                    None => break,
                }
            }
            in_flight.pop_front()
        })
    }
}

/// The iterator of [`Pool::imap_unordered`]: `Ok(value)` per item as done; a failed item
/// gives an `Err` in its place.
pub struct IMapUnordered<'p, I, A, R> {
    feed: Feed<'p, I, A, R>,
    in_flight: HashMap<usize, Arc<Slot>>,
    done_tx: mpsc::Sender<usize>,
    done_rx: mpsc::Receiver<usize>,
    ready: std::vec::IntoIter<R>,
}

impl<I, A, R> Iterator for IMapUnordered<'_, I, A, R>
where
    I: Iterator<Item = A>,
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        let IMapUnordered { feed, in_flight, done_tx, done_rx, ready } = self;
        next_value(ready, || {
            while in_flight.len() < feed.window {
                let tx = done_tx.clone();
                let token = next_token();
                let hook: Hook = Box::new(move |_: &Slot, _: &Done| {
                    let _ = tx.send(token);
                });
                match feed.next_chunk(Some(hook)) {
                    Some(slot) => {
                        in_flight.insert(token, slot);
                    }
                    None => break,
                }
            }
            if in_flight.is_empty() {
                return None;
            }
            let token = done_rx.recv().ok()?;
            in_flight.remove(&token)
        })
    }
}

/// The next value of an `imap`: from the chunk being handed out, or else from the chunk
/// `next_done` waits for (`None`: no chunk left); a failed chunk gives one `Err`.
fn next_value<R: DeserializeOwned>(
    ready: &mut std::vec::IntoIter<R>,
    mut next_done: impl FnMut() -> Option<Arc<Slot>>,
) -> Option<Result<R>> {
    loop {
        if let Some(value) = ready.next() {
            return Some(Ok(value));
        }
        let slot = next_done()?;
        match AsyncResult::many(vec![slot], decode_chunks::<R>).get() {
            Ok(values) => *ready = values.into_iter(),
            Err(e) => return Some(Err(e)),
        }
    }
}

/// A number no other in-flight chunk of this process has.
fn next_token() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
