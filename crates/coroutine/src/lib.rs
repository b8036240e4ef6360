//! An in-thread coroutine executor that awaits pipes, child processes and pool results.
//!
//! Coroutines are Rust futures: tasks that keep their state across suspensions in one
//! allocation each, one running at a time, all in the thread that calls
//! [`Executor::block_on`]. A reactor in the same thread (epoll, plus an eventfd for wakes from
//! other threads, with timers as the epoll timeout; no helper threads) lets them wait on:
//!
//! - an ipc end: [`Async`]`<`[`Connection`](ipc::Connection)`>` (or a `Receiver`, a `Sender`):
//!   `recv().await`, `send(&v).await`;
//! - a child's end: `Async<`[`Process`](process::Process)`>::join().await`;
//! - a pool result: [`AsyncResult`](pool::AsyncResult) is a future already;
//! - a shared [`Event`](ipc::Event) set by any process: [`AsyncShared`]`<Event>`:
//!   `wait().await` (through the event's doorbell, an eventfd; any
//!   [`Awaitable`](ipc::Awaitable) primitive the same way);
//! - a [`Queue`](ipc::Queue) (or `JoinableQueue`) shared with other processes:
//!   [`AsyncShared`]`<Queue<T>>`: `get().await`, `put(&v).await`, `get_timeout`,
//!   `put_timeout` (see the example below);
//! - time: [`sleep`], [`timeout`];
//! - each other: [`spawn`] gives a [`Task`], [`channel`], [`join_all`], [`first_of`],
//!   [`yield_now`].
//!
//! So one thread can hold thousands of conversations with child processes at once (what Python
//! programs do with asyncio and aiomultiprocess).
//!
//! ```
//! use std::time::Duration;
//! use mproc_coroutine::{Executor, spawn, sleep, timeout, channel};
//!
//! # fn main() -> std::io::Result<()> {
//! let ex = Executor::new()?;
//! let sum = ex.block_on(async {
//!     let (tx, rx) = channel();
//!     for i in 0..10u64 {
//!         let tx = tx.clone();
//!         spawn(async move {
//!             sleep(Duration::from_millis(i)).await;
//!             tx.send(i).unwrap();
//!         })
//!         .detach();
//!     }
//!     drop(tx);
//!     let mut sum = 0;
//!     while let Some(i) = rx.recv().await {
//!         sum += i;
//!     }
//!     assert!(timeout(Duration::from_millis(1), sleep(Duration::from_secs(60))).await.is_err());
//!     sum
//! });
//! assert_eq!(sum, 45);
//! # Ok(()) }
//! ```
//!
//! A queue between processes, awaited from both sides of a fork-started child:
//!
//! ```
//! use mproc_coroutine::{AsyncShared, Executor, ipc::Queue, process::Process};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (jobs, results) = (Queue::<u32>::with_maxsize(4)?, Queue::<u32>::new()?);
//! let worker = {
//!     let (jobs, results) = (jobs.clone(), results.clone());
//!     Process::spawn(move || {
//!         // A plain thread's side: blocking gets and puts.
//!         while let Ok(n @ 1..) = jobs.get() {
//!             results.put(&(n * n)).unwrap();
//!         }
//!     })?
//! };
//! let ex = Executor::new()?;
//! let sum = ex.block_on(async {
//!     let (jobs, results) = (AsyncShared::new(jobs)?, AsyncShared::new(results)?);
//!     for n in (1..=10).chain([0]) {
//!         jobs.put(&n).await?; // waits as a coroutine while the queue is full
//!     }
//!     let mut sum = 0;
//!     for _ in 1..=10 {
//!         sum += results.get().await?; // waits as a coroutine until an item comes
//!     }
//!     Ok::<_, Box<dyn std::error::Error>>(sum)
//! })?;
//! worker.join()?;
//! assert_eq!(sum, 385);
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! - One allocation per task at most (its cell: header, future, then output, in one block);
//!   none when a finished task's cell of the same size is there to reuse (an executor keeps
//!   up to 256 KiB of them, freed with it). The
//!   executor's own wakes, yields and runs take no lock and no atomic operation; wakes from
//!   other threads go through a locked queue and the eventfd.
//! - A panic inside a task is caught: the other tasks go on, and awaiting the task gives
//!   [`Panicked`] with the message.
//! - The executor and its tasks are `!Send` (they stay in their thread); wakers are
//!   `Send + Sync` and may be woken or dropped from any thread, also after their task finished
//!   or was cancelled. That cross-thread protocol is model-checked with loom.
//! - A wait on an `Async` holds one waker however often it is polled, and none once dropped;
//!   [`Async::readable`] and [`Async::writable`] return at once when the end is ready now.
//! - Dropping a [`Task`] cancels it; [`Task::detach`] lets it run on.
//! - No call blocks the thread: receives and sends on an `Async` end wait as coroutines (a
//!   frame larger than the room in the pipe or socket goes out in parts, as room appears);
//!   a queue's `get`/`put` wait in the reactor for the queue's doorbell, taking the queue's
//!   lock only for a copy and a commit.
//! - A queue's async `get`/`put` are cancellation-safe: the item moves in the poll that
//!   returns it, so dropping the future (or a `timeout` around it) takes or puts nothing.
//! - Dropping the [`Executor`] drops the futures of all its unfinished tasks (queued, waiting
//!   on I/O or a timer), and with them the ends and children they hold.
//!
//! # Fork
//!
//! A forked child gets a copy of its parent's memory, executor included, and a copy of its
//! epoll fd, which still names the *parent's* epoll instance: used from the child it would
//! take the parent's events. So an executor knows the process that made it: in any other
//! process [`Executor::block_on`] panics with a message saying so, and [`spawn`] and
//! [`Async::new`] see no running executor. A child makes its own [`Executor`].
//!
//! # Caveats
//!
//! - Waking a task from another thread after its executor was dropped does nothing: its
//!   future was dropped with the executor, and its cell is freed with the last waker.
//! - A future that returns `Pending` without keeping its waker can never be woken: it stays
//!   (with what it holds) until its [`Task`] is dropped or the executor is.
//! - Cancelling a task (dropping its [`Task`]) drops its future at once; a task that drops
//!   its own `Task` while it runs is dropped when that run ends.
#![deny(unsafe_code)]

mod channel;
mod combinators;
mod executor;
mod io;
mod queue;
mod reactor;
mod shared;
mod sync;
mod sys;
mod time;

pub use channel::{LocalReceiver, LocalSender, channel};
pub use combinators::{first_of, join_all, yield_now};
pub use executor::{Executor, Panicked, Task, spawn};
pub use io::Async;
pub use mproc_pool as pool;
pub use mproc_pool::{ipc, process};
pub use shared::AsyncShared;
pub use time::{Elapsed, Sleep, sleep, sleep_until, timeout};
