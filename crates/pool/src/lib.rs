//! A pool of worker processes that runs `fn(A) -> R` tasks: Python's `multiprocessing.Pool`,
//! with its whole surface and without its hangs.
//!
//! - [`Pool::new`] / [`Pool::builder`]: how many workers, an initializer, `max_tasks_per_child`,
//!   the start method, a `task_timeout`, or [`threads`](PoolBuilder::threads) instead of
//!   processes (Python's `multiprocessing.dummy`, for debugging).
//! - [`apply`](Pool::apply), [`apply_async`](Pool::apply_async) (an [`AsyncResult`], also a
//!   `Future`), [`apply_async_with`](Pool::apply_async_with) (callbacks),
//!   [`map`](Pool::map), [`map_chunked`](Pool::map_chunked), [`map_async`](Pool::map_async),
//!   [`imap`](Pool::imap), [`imap_unordered`](Pool::imap_unordered),
//!   [`starmap`](Pool::starmap), [`close`](Pool::close), [`terminate`](Pool::terminate),
//!   [`join`](Pool::join).
//! - Remote workers: [`listen`](PoolBuilder::listen) takes workers that connect over TCP,
//!   beside the local ones or instead; a [`Launcher`] starts them (any command, `ssh`,
//!   Slurm's `srun`); [`init`] makes a copy of the program one. See
//!   [Remote workers](#remote-workers).
//! - [`process`] and [`ipc`] are the layers below, re-exported.
//!
//! ```
//! use mproc_pool::Pool;
//!
//! fn square(x: u64) -> u64 { x * x }
//!
//! fn main() -> Result<(), mproc_pool::Error> {
//!     mproc_pool::process::init(); // first line of main (see mproc_process::init)
//!     let pool = Pool::new(2)?;
//!     assert_eq!(pool.map(square, 1..=4)?, vec![1, 4, 9, 16]);
//!     let pending = pool.apply_async(square, 12);
//!     assert_eq!(pending.get()?, 144);
//!     let mut firsts: Vec<u64> = pool.imap(square, 1..).take(3).collect::<Result<_, _>>()?;
//!     firsts.sort();
//!     assert_eq!(firsts, vec![1, 4, 9]);
//!     Ok(())
//! } // dropping the pool closes it and waits for its tasks
//! ```
//!
//! # Remote workers
//!
//! A pool can take workers on other hosts: copies of the same program, started anywhere
//! that can reach the pool, with two variables in their environment ([`ADDRESS_ENV`],
//! [`AUTHKEY_ENV`], which the pool's [`Launcher`] sets). In such a copy, [`init`] (the first
//! line of `main`) connects, serves the pool's tasks until the pool ends, and exits.
//!
//! ```no_run
//! use std::time::Duration;
//! use mproc_pool::Pool;
//!
//! fn square(x: u64) -> u64 { x * x }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     mproc_pool::init(); // in a remote worker: serves the pool, then exits
//!     let pool = Pool::builder()
//!         .processes(2) // local workers beside the remote ones (0: none)
//!         .listen(("0.0.0.0".parse::<std::net::IpAddr>()?, 7000))
//!         .build()?;
//!     // Two workers placed by Slurm inside an allocation, on the nodes it gives; or
//!     // `launcher.ssh("node2", "/opt/app/bin/app")`, or `launcher.command(program)`.
//!     let launcher = pool.launcher().unwrap().connect_to("head-node:7000");
//!     let mut srun = launcher.srun(2, std::env::current_exe()?).spawn()?;
//!     pool.wait_for_workers(2, Duration::from_secs(60))?;
//!     assert_eq!(pool.map(square, 1..=4)?, vec![1, 4, 9, 16]);
//!     drop(pool); // the workers leave; srun returns
//!     srun.wait()?;
//!     Ok(())
//! }
//! ```
//!
//! Under Slurm, see [On a Slurm cluster](#on-a-slurm-cluster) below.
//!
//! Each connection is authenticated with the pool's authkey (by default the process's own,
//! [`process::ProcessInfo::authkey`]), then the worker says which build of which program it
//! is: a worker of another build is refused, and both sides say so, naming both builds (a
//! task names its function by its place in the binary, so only the pool's own build can run
//! it). A remote worker is named `RemoteWorker-N@HOST (ADDRESS)` (with its Slurm rank when
//! `srun` started it) in errors and logs. Connections are admitted side by side (up to 64 at
//! once, each with its deadlines), so a client that connects and says nothing, or never
//! reads its welcome, delays no other worker; each refused connection is logged once and
//! kept (the first 64 reasons, then a count) for [`Error::MissingWorkers`].
//!
//! The guarantees below hold for remote workers too, with the network in the place of the
//! kernel: a worker that is killed, whose host goes away or whose link is cut fails only what
//! it had started (see below) with [`Error::WorkerDied`], and the tasks it had not started go
//! to other workers. Each side sends a heartbeat when it has sent nothing else for a while
//! and gives the other up after a silence ([`PoolBuilder::heartbeat`], default 1 s and
//! 10 s; the pool also gives up a worker that takes nothing it is sent for that long): a
//! half-open connection never hangs the pool, and a worker whose pool ended or cannot be
//! reached leaves. A remote worker runs a task only once the pool has granted it
//! (by message: it asks for the next task when it sends the last one's value), so the pool
//! always knows which task it may have started: when it is lost, that one fails, its
//! finished tasks' values have all arrived, and nothing runs twice. This costs a round trip
//! to the pool per task; [`PoolBuilder::remote_claim_ahead`] lets workers claim short tasks
//! ahead instead, for throughput, and then a lost worker also fails the few tasks it had
//! been granted to run next or had finished in the last millisecond without their values
//! reaching the pool.
//! Remote workers are never replaced (the pool cannot start them) nor retired
//! (`max_tasks_per_child` does not count for them); a pool with no local workers and no remote worker left fails its
//! tasks after [`worker_wait`](PoolBuilder::worker_wait) rather than wait for ever.
//!
//! ## On a Slurm cluster
//!
//! A batch script (`sbatch squares.sbatch`) runs the program on the allocation's first node,
//! where it is the pool:
//!
//! ```sh
//! #!/bin/bash
//! #SBATCH --job-name=squares
//! #SBATCH --nodes=4
//! #SBATCH --ntasks-per-node=8     # one worker per task: 32 workers
//! #SBATCH --time=00:30:00
//! exec ./target/release/examples/srun
//! ```
//!
//! and the program starts its workers over the whole allocation with `srun`
//! (`examples/srun.rs`; the `srun` line it runs is
//! `srun --ntasks=32 --export=ALL,MPROC_POOL_ADDR=node01:41813,MPROC_POOL_AUTHKEY=<hex> PROGRAM`,
//! and [`Launcher::srun_args`] gives its arguments, to add your own `srun` options):
//!
//! ```no_run
//! use std::net::Ipv4Addr;
//! use std::time::Duration;
//!
//! use mproc_pool::Pool;
//!
//! fn square(x: u64) -> u64 { x * x }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     mproc_pool::init(); // in a worker started by srun: serves the pool, then exits
//!     let workers: usize = std::env::var("SLURM_NTASKS")?.parse()?;
//!     let pool = Pool::builder().processes(0).listen((Ipv4Addr::UNSPECIFIED, 0)).build()?;
//!     // Workers on the other nodes reach this one by its Slurm node name.
//!     let launcher = pool.launcher().unwrap().connect_to_host(&std::env::var("SLURMD_NODENAME")?);
//!     let mut srun = launcher.srun(workers, std::env::current_exe()?).spawn()?;
//!     pool.wait_for_workers(workers, Duration::from_secs(120))?;
//!     println!("{}", pool.map(square, 0..1_000_000u64)?.iter().sum::<u64>());
//!     drop(pool); // the workers leave with the pool, and srun returns
//!     srun.wait()?;
//!     Ok(())
//! }
//! ```
//!
//! Each worker names itself by Slurm's node name and rank (`SLURMD_NODENAME`,
//! `SLURM_PROCID`). Wrap `srun` in `timeout` where an allocation might not fit: a step
//! that cannot get its CPUs waits for them for ever.
//!
//! # Guarantees
//!
//! - Every submitted task completes exactly once: with its value or an [`Error`] naming the
//!   task, the worker (name and pid) and the cause.
//! - Never a hang: a worker that dies (killed, segfault, abort, out of memory) fails exactly
//!   the task it was running with [`Error::WorkerDied`] and is replaced: the tasks it had
//!   finished are delivered (each outcome is kept in memory the pool shares with the worker
//!   until it is sent), the tasks it had not started go to another worker. A task past the
//!   `task_timeout` fails with [`Error::Timeout`] and its worker is killed and replaced; a
//!   panicking task fails with its message ([`Error::Panicked`], naming the item for `map`
//!   and friends) and the worker lives on; an argument or value that does not serialize, or
//!   is larger than [`max_message_size`](PoolBuilder::max_message_size) where it travels
//!   inline (values past 4 MiB go to local workers as sealed memfds, unbounded by it), or
//!   that holds more ipc ends and shared state than one message carries (252), fails that
//!   task alone ([`Error::Transfer`]); a panic message past the limit is cut to it. A worker the pool gives up on is killed, never waited for
//!   alive. Workers that die before running a task, three in a row (an initializer that
//!   exits, say), fail the pending tasks instead of being replaced for ever.
//! - Retiring workers (`max_tasks_per_child`) never strand a task: their successors take
//!   what is pending.
//! - Tasks go to workers with room, in batches sized by how long the worker's recent tasks
//!   took (about half a millisecond of work, at most 4096 tasks, never more than a fair
//!   share of what is pending), two batches in flight per worker: small tasks cost a
//!   fraction of a round trip each.
//! - No worker sits idle while tasks it could run wait unstarted in another worker's batch:
//!   the pool takes them back and hands them out again, exactly once (a task taken back
//!   never runs where it was first sent; one the worker had started is never taken), so a
//!   run of slow tasks after many trivial ones spreads over every worker.
//! - Callbacks run on a callback thread, never on the caller's thread nor on the thread that
//!   collects results. A panicking callback is logged (`log::error!`, naming its task) and
//!   the next ones run.
//! - Worker lifecycle events (started, died, replaced, retired) are logged through the `log`
//!   facade.
//!
//! # Caveats
//!
//! - Tasks are plain `fn` items, not closures: a worker is another process, and only a
//!   function of this same program can be named there (see [`process::FnRef`]).
//! - Dropping a pool waits for its tasks: an endless task keeps the drop waiting (unless the
//!   pool has a `task_timeout`); [`terminate`](Pool::terminate) does not wait. A pool dropped
//!   by one of its own tasks (on a thread worker) closes and cannot wait for them (one is
//!   the task dropping it): its tasks still run; [`join`](Pool::join) there fails with
//!   [`Error::JoinInOwnTask`]. One dropped by its own callback waits for its tasks, not for
//!   its callback thread (which it runs on).
//! - A task that fails because its worker died is not retried: it may have had effects.
//! - Workers are daemons, and a daemon may not have children (it is killed with its parent,
//!   which would orphan them): a task cannot start a `Process` or a process `Pool`
//!   ([`process::Error::DaemonCannotStart`]). Use threads inside the task (a thread pool), or
//!   do that work from a non-daemon `Process`.
//! - Remote workers: the network between the pool and its workers must be trusted, as
//!   Python's: the authkey authenticates each connection but nothing is encrypted, and a
//!   worker that joined runs whatever the pool sends (and can read the pool's process-family
//!   keys, which it is given so that it can run the pool's functions). The environment that
//!   starts a worker holds the authkey (visible in `ps` on a command line). Arguments that
//!   hold ipc ends or shared state cannot reach a remote worker (an fd does not cross TCP):
//!   such a task, handed to a remote worker, fails alone with [`Error::Transfer`].
//! - A pool belongs to the process that built it: in a forked child, its copy fails every
//!   call at once with [`Error::ForkedCopy`] (the handler thread and the workers are the
//!   parent's), and dropping the copy does nothing.
#![deny(unsafe_code)]

mod build_id;
mod claim;
mod cluster;
mod error;
mod handler;
mod networker;
mod pool;
mod remote;
mod result;
mod scheduler;
mod shared;
mod sys;
mod wire;
mod worker;

pub use cluster::{ADDRESS_ENV, AUTHKEY_ENV, Launcher};
pub use error::{Error, Result};
pub use mproc_process as process;
pub use mproc_process::ipc;
pub use pool::{
    DEFAULT_HEARTBEAT, DEFAULT_SILENCE, DEFAULT_WORKER_WAIT, IMap, IMapUnordered, MAX_HEARTBEAT, MAX_SILENCE,
    MIN_HEARTBEAT, Pool, PoolBuilder,
};
pub use result::AsyncResult;

/// The first line of `main` in a program whose pools take remote workers: what
/// [`process::init`] does, and, in a copy of the program started as a remote worker (with
/// [`ADDRESS_ENV`] set, by a [`Launcher`]), serving the pool at that address until it ends,
/// then exiting: the rest of `main` never runs there.
///
/// A worker that cannot join (no connection, a wrong authkey, another build: the pool refuses
/// it and both sides say why) exits with code 2 after saying why on standard error; one that
/// stops hearing from its pool exits with code 3; one whose initializer failed, with 4; one
/// whose pool ended, with 0.
///
/// In tests, where the harness owns `main`, use [`test_support!`] instead.
pub fn init() {
    mproc_process::init();
    networker::serve_if_asked();
}

/// [`process::test_support!`] with [`init`]'s remote-worker mode: put it once at the root of
/// a test crate, and a copy of the test binary started with a [`Launcher`]'s environment
/// serves the pool before the test harness starts.
#[macro_export]
macro_rules! test_support {
    () => {
        $crate::process::__before_main!($crate::__private::before_main);

        /// Makes this test binary ready to start `Spawn` and `ForkServer` children: nothing
        /// more than `test_support!()` did already, before the test harness started.
        #[allow(dead_code)]
        pub fn mproc_init() {
            $crate::__private::before_main();
        }
    };
}

#[doc(hidden)]
pub mod __private {
    /// [`init`](crate::init), run before the test harness's `main`.
    pub fn before_main() {
        crate::init();
    }

    /// A worker's `Hello`, from this process, as bytes: for tests that play a worker to a
    /// pool.
    pub fn hello_bytes() -> Vec<u8> {
        crate::networker::hello_bytes()
    }

    /// A worker's `Heartbeat`, as bytes.
    pub fn heartbeat_bytes() -> Vec<u8> {
        crate::networker::heartbeat_bytes()
    }

    /// A pool's `Welcome` as bytes, with these heartbeat settings: for tests that play the
    /// pool to a worker.
    pub fn welcome_bytes(heartbeat_ns: u64, silence_ns: u64) -> Vec<u8> {
        crate::networker::welcome_bytes(heartbeat_ns, silence_ns)
    }

    /// A pool's `Batch` of one task, `f(arg)` numbered `id`, as bytes: for tests that play
    /// the pool to a worker (the worker must have joined this process's family: a
    /// [`welcome_bytes`] welcome).
    pub fn apply_bytes<A, R>(f: fn(A) -> R, arg: &A, id: u64) -> Vec<u8>
    where
        A: serde::Serialize + serde::de::DeserializeOwned + 'static,
        R: serde::Serialize + 'static,
    {
        crate::networker::apply_bytes(f, arg, id)
    }

    /// A pool's `Grant` of the positions of the worker's stream up to `through`, as bytes.
    pub fn grant_bytes(through: u64) -> Vec<u8> {
        crate::networker::grant_bytes(through)
    }

    /// A pool's `Heartbeat`, as bytes.
    pub fn pool_heartbeat_bytes() -> Vec<u8> {
        crate::networker::pool_heartbeat_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunksize_is_pythons() {
        // Python: chunksize, extra = divmod(len, processes * 4); if extra: chunksize += 1
        assert_eq!(pool::default_chunksize(1_000_000, 2), 125_000);
        assert_eq!(pool::default_chunksize(10, 2), 2);
        assert_eq!(pool::default_chunksize(9, 2), 2);
        assert_eq!(pool::default_chunksize(0, 2), 1);
        assert_eq!(pool::default_chunksize(1, 8), 1);
    }

    #[test]
    fn errors_name_the_task_the_worker_and_the_cause() {
        let died = Error::WorkerDied {
            task: "task #3 (fn(u64) -> u64)".into(),
            worker: "PoolWorker-2".into(),
            pid: 42,
            status: Some(process::ExitStatus::Signal(9)),
        };
        assert_eq!(
            died.to_string(),
            "task #3 (fn(u64) -> u64) failed: worker \"PoolWorker-2\" (pid 42) died from signal 9 (SIGKILL)"
        );
        let timeout = Error::Timeout {
            task: "task #1 (fn(()))".into(),
            worker: "PoolWorker-1".into(),
            pid: 7,
            timeout: std::time::Duration::from_millis(50),
        };
        assert!(timeout.to_string().contains("timed out after 50ms"));
    }
}
