//! Pipes and duplex connections that carry typed values between processes.
//!
//! `mproc-ipc` is the bottom layer of mproc, Python's `multiprocessing` in Rust. It knows
//! nothing about processes: it moves whole messages over file descriptors that a parent and
//! its children share.
//!
//! - [`pipe`] makes a one-way pipe, `(`[`Receiver`]`, `[`Sender`]`)`: Python's
//!   `Pipe(duplex=False)`, with the direction checked at compile time.
//! - [`duplex`] makes two [`Connection`]s on a Unix socket pair: Python's `Pipe()`.
//!   [`Connection::pair`] gives a different type in each direction.
//! - [`wait`] tells which of several ends are ready: `multiprocessing.connection.wait`
//!   ([`wait_one`] for one end, without allocating).
//! - `try_send` / `try_flush` send without ever waiting, for event loops: a frame is taken
//!   (the part the kernel has no room for yet stays in the end and goes out first) or refused
//!   with nothing sent.
//! - [`Listener`] and [`Client`] connect processes that did not start one another, over a Unix
//!   socket path, a Linux abstract name or TCP ([`Address`]): Python's
//!   `multiprocessing.connection.Listener` / `Client`, with the same `authkey` handshake, so
//!   either side may be CPython. [`Listener::accept`] gives a [`Connection`].
//! - With the `pickle` feature, `Connection::send_pickle` / `recv_pickle` exchange values
//!   with a Python peer's plain `conn.send(obj)` / `conn.recv()`.
//! - Ends are values too: a struct holding a `Sender` or a `Connection` can be sent over a
//!   duplex `Connection`, and the end arrives working in the other process (its fd travels as
//!   `SCM_RIGHTS`). That is also how ends reach processes started by `mproc-process`.
//!
//! - [`Shared`] is memory shared between processes (a sealed memfd mapped shared) holding a
//!   layout of atomics, robust process-shared mutexes ([`ShmMutex`]: a holder's death hands
//!   the lock over with [`LockError::OwnerDied`]) and condition variables ([`ShmCondvar`]),
//!   plus plain bytes. It travels like an end (module `shm`'s docs say how).
//! - [`Lock`], [`RLock`], [`Semaphore`], [`BoundedSemaphore`], [`Event`], [`Condition`],
//!   [`Barrier`], [`Value`], [`Array`] and [`SharedMemory`]: Python's synchronisation
//!   primitives and shared state, each a handle that travels like an end (each type's docs
//!   have a runnable example). A lock whose holder dies is handed over with
//!   [`LockError::OwnerDied`].
//! - [`Doorbell`]: how a change in shared memory reaches coroutines in an event loop (an
//!   eventfd that travels with its primitive, rung only while some listen); an [`Event`] has
//!   one, and `mproc-coroutine` awaits anything [`Awaitable`].
//! - [`Queue`] (with a `maxsize`, `put`/`get` and their `try_`/timed forms, `qsize`, `empty`,
//!   `full`, `close`), [`JoinableQueue`] (`task_done`, `join`) and [`SimpleQueue`]: Python's
//!   queues, kept in a `Shared` region with no feeder thread. A `put` that returned is in
//!   shared memory; a value that does not serialize fails in `put`; a process killed inside
//!   `put` or `get` leaves the queue whole. They travel like ends. (Module `queue`'s docs give
//!   the layout and the commit protocol.)
//!
//! Every end sends and receives typed values (`send` / `recv`, postcard-encoded) or raw bytes
//! (`send_bytes` / `recv_bytes`), framed exactly like CPython's `multiprocessing.connection`: a
//! 4-byte big-endian signed length, or `-1` and an 8-byte length above `i32::MAX`. A Python
//! process holding the other end as a `multiprocessing.connection.Connection` exchanges
//! `send_bytes` / `recv_bytes` with us.
//!
//! Large values move at the speed of their bytes. A slice or `Vec` of `u8`, `i8`, `f32` or
//! `f64` (and so a `String`, or a struct of them) is encoded and decoded as one copy of its
//! memory, not one serde call per element; the bytes are still postcard's ([`encode`] and
//! [`decode_bytes`] give them to layers that keep values as bytes). On a duplex
//! [`Connection`], a typed value whose encoding passes 4 MiB does not go through the socket
//! at all: it is encoded straight into a memfd, sealed against writing and shrinking, and
//! passed with a small frame; the receiver maps it and decodes from the mapping. A value that
//! is mostly one run of bytes or floats (a `Vec<u8>`, a `Vec<f64>`) goes early on a blocking
//! `send`: the memfd first, so the receiver makes the decoded `Vec`'s memory ready while the
//! sender still writes, then a small frame that says the file is whole. Pipes and TCP
//! carry no fds and copy, as does a send under a file size limit (`ulimit -f`) smaller than
//! the value (a memfd past it would kill the sender with `SIGXFSZ`).
//!
//! ```
//! # fn main() -> mproc_ipc::Result<()> {
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! enum Msg { Work { id: u32, data: Vec<f64> }, Stop }
//!
//! let (parent, child) = mproc_ipc::duplex::<Msg>()?;
//! parent.send(&Msg::Work { id: 1, data: vec![0.5, 1.5] })?;
//! // `child` would usually live in another process (ends survive fork); here a thread does.
//! let worker = std::thread::spawn(move || -> mproc_ipc::Result<()> {
//!     while let Msg::Work { id, data } = child.recv()? {
//!         child.send(&Msg::Work { id, data: data.iter().map(|x| x * 2.0).collect() })?;
//!     }
//!     Ok(())
//! });
//! assert_eq!(parent.recv()?, Msg::Work { id: 1, data: vec![1.0, 3.0] });
//! parent.send(&Msg::Stop)?;
//! worker.join().unwrap()?;
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! - Whole frames or nothing: concurrent sends from several threads on one end never
//!   interleave, and each receive returns one whole frame. A frame goes out in one `writev`
//!   where the kernel takes it.
//! - One syscall a small message on each side: a receive reads ahead whatever has arrived (up
//!   to 16 KiB), and the frames past the one it returns wait in the end, where `poll`,
//!   [`wait`] (through [`Waitable`]) and the next receive find them.
//! - Bad input from the peer is an [`Error`], never a panic, a hang or a large allocation: a
//!   header above the end's [`max_message_size`](Connection::max_message_size) is
//!   [`Error::TooLarge`] before any allocation (and the payload is then skipped, so the end
//!   stays usable); a payload that is not the expected type is [`Error::Decode`] and the next
//!   frame reads normally; end of file inside a frame is [`Error::Truncated`], at a frame
//!   boundary [`Error::Closed`]. A memfd a peer passes as a large value is mapped only if it
//!   is sealed against writing and shrinking, holds the bytes announced, and they are within
//!   the message limit; otherwise [`Error::OutOfLine`] (or [`Error::TooLarge`]), and the end
//!   stays usable.
//! - Nothing is lost to a timeout or a signal: a receive that times out keeps what arrived of
//!   a message for the next receive; `EINTR` and short reads and writes are resumed everywhere.
//! - Every fd is created close-on-exec in the same syscall. Ends survive `fork`; across
//!   `exec` only after `set_inheritable(true)`.
//! - Writes to a socket never raise `SIGPIPE`: a vanished peer is [`Error::Closed`].
//! - Authentication: with an authkey, [`Listener::accept`] and [`Client::connect`] return a
//!   connection only after both sides proved they hold the key (CPython 3.12's HMAC-SHA256
//!   challenge each way, digests compared in constant time; legacy HMAC-MD5 only when
//!   allowed). Before that a peer can make us read at most 256 bytes a message, and the whole
//!   handshake has a deadline ([`ListenerBuilder::handshake_timeout`]); a failed handshake is
//!   an error of that one connection and leaves nothing behind.
//!
//! # Caveats
//!
//! - Frames from several *processes* sharing one sending end: a pipe write of at most 4096
//!   bytes (`PIPE_BUF`, header included) is atomic, so such frames never interleave; larger
//!   frames from several processes need a lock held around the send. Several processes
//!   reading one end each get whole frames only if they take turns (a lock around `recv`)
//!   and turn read-ahead off ([`Receiver::set_read_ahead`]).
//! - Code that polls an end's raw fd itself (its own event loop) must first ask
//!   [`Waitable::ready`]: a frame read ahead does not make the fd readable.
//! - Writes to a pipe whose readers are gone raise `SIGPIPE` unless it is ignored; Rust
//!   programs ignore it by default, and the send then reports [`Error::Closed`].
//! - An authkey authenticates, it does not encrypt: over a network, what follows the handshake
//!   travels in clear (as in Python). TCP connections carry no ends (fds): sending one is
//!   [`Error::FdPassing`].
//! - A large value sent out of line is memory the sender allocated (a memfd, counted against
//!   its memory cgroup) until the receiver has decoded it; if the receiver dies first, the
//!   kernel frees it with the socket's queue. A raw receive (`recv_bytes`) of such a frame
//!   gets the small descriptor, and the memfd is closed. A receive that times out while a
//!   value sent early is still being written keeps it (the next receive goes on with it);
//!   until then the receiving end holds the value's ready memory. A sender that fails, panics
//!   or dies while it writes such a value is an [`Error::OutOfLine`] for the receiver, and
//!   the sender gets its error too (a value that no memory can be found for midway is not
//!   sent inline then, as one that finds none at first is).
//! - `poll` and [`wait`] report that bytes (or end of file) are there, not that a whole frame
//!   is: a following `recv` may still wait for the rest of a frame a slow peer is writing.
//! - A lock guard that is `mem::forget`-ed keeps its lock held until its thread ends (then
//!   the next `acquire` gets [`LockError::OwnerDied`]), as a forgotten `std` guard leaks its
//!   lock. If the primitive's last handle in this process is dropped meanwhile, its memory
//!   stays mapped (a page or so, leaked for the rest of the process): the held lock is linked
//!   on its thread's robust list, which the kernel and later locks write through.
#![deny(unsafe_code)]

mod address;
mod barrier;
mod carried;
mod codec;
mod doorbell;
mod duplex;
mod end;
mod error;
mod fdpass;
mod frame;
mod handshake;
mod listener;
mod outofline;
#[cfg(feature = "pickle")]
mod pickle;
mod pipe;
mod queue;
mod shared_memory;
mod shm;
mod spin;
mod sync;
mod sys;
mod value;
mod wait;

pub use address::Address;
pub use barrier::{Barrier, BrokenBarrier};
pub use carried::Carried;
pub use codec::{decode_append, decode_bytes, encode, encode_with_capacity};
pub use doorbell::{Awaitable, Doorbell, Listeners, Listening};
pub use duplex::{Connection, duplex};
pub use end::DEFAULT_MAX_MESSAGE_SIZE;
pub use error::{AuthError, Error, Result};
pub use listener::{Client, ClientBuilder, Incoming, Listener, ListenerBuilder};
pub use pipe::{Receiver, Sender, pipe};
pub use queue::{JoinableQueue, Queue, QueueBuilder, SimpleQueue};
pub use shared_memory::SharedMemory;
pub use shm::{LockError, Shared, ShmCondvar, ShmGuard, ShmMutex, ShmRecursiveMutex, ShmType, WaitOutcome};
pub use sync::{
    BoundedSemaphore, Condition, ConditionGuard, ConditionResult, Event, Lock, LockGuard, LockResult, RLock,
    ReleasedTooManyTimes, Semaphore,
};
pub use value::{Array, ArrayGuard, ArrayResult, Plain, Value, ValueGuard, ValueResult};
pub use wait::{Waitable, wait, wait_one};

/// The most ends (ipc ends, shared state, sync primitives, memfds: each an fd) one message
/// over a duplex [`Connection`] carries: the kernel's `SCM_MAX_FD`. A message with more fails
/// with [`Error::FdPassing`], and nothing is sent.
pub const MAX_ENDS: usize = fdpass::MAX_FDS;

/// For mproc's own tests and crates: not part of the API.
#[doc(hidden)]
pub mod __private {
    /// Makes this process write to pipes without `RWF_NOWAIT`, as on a kernel that refuses
    /// it for pipes, so that the fallback is tested too.
    pub fn refuse_pipe_nowait() {
        crate::end::refuse_pipe_nowait();
    }

    pub use crate::barrier::{
        ChildParties, ClosureParties, closure_parties, join_parties_in, leave_barriers,
    };
    pub use crate::queue::QueueCrash;

    /// Arms `point`: this process kills itself with `SIGKILL` when a queue operation of
    /// any thread reaches it.
    pub fn crash_at(point: QueueCrash) {
        crate::queue::crash_at(point);
    }
}
