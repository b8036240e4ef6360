//! What travels between the pool and its workers, and the drivers that run tasks.
//!
//! A task is a driver (a monomorphic `fn(Bytes) -> Outcome` that knows the user function's
//! types) and its input: the user's [`FnRef`] and arguments, postcard-encoded. The worker
//! knows no types: it calls the driver, which decodes, calls the user's function and encodes
//! the value.

use std::fmt;
use std::sync::Arc;

use mproc_process::FnRef;
use mproc_process::ipc::Carried;
use serde::de::{DeserializeOwned, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A task's encoded value. A few bytes (most tasks' values) are kept inline: no allocation
/// where they are made, none where they are received. More are shared: cloning them (to
/// hand an outcome to a callback) copies nothing. A value encoded in the worker past
/// ipc's out-of-line threshold is a [`Carried`] in a sealed memfd: it goes to a local worker's
/// pool as the memfd (no copy) and is decoded in the caller from the mapping.
#[derive(Clone)]
pub(crate) enum Bytes {
    /// At most [`INLINE`] bytes: the first `len` of `bytes`.
    Inline {
        len: u8,
        bytes: [u8; INLINE],
    },
    Shared(Arc<Vec<u8>>),
    Carried(Carried),
}

/// The most bytes a [`Bytes`] keeps inline (it is then as large as a `Vec`).
pub(crate) const INLINE: usize = 22;

impl Bytes {
    /// The bytes inline if they fit, copied.
    pub(crate) fn copy_from(v: &[u8]) -> Bytes {
        if v.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..v.len()].copy_from_slice(v);
            Bytes::Inline { len: v.len() as u8, bytes }
        } else {
            Bytes::Shared(Arc::new(v.to_vec()))
        }
    }

    /// The bytes (those of a memfd made here are mapped on the first call).
    pub(crate) fn get(&self) -> Result<&[u8], mproc_process::ipc::Error> {
        match self {
            Bytes::Inline { len, bytes } => Ok(&bytes[..usize::from(*len)]),
            Bytes::Shared(v) => Ok(v),
            Bytes::Carried(c) => c.bytes(),
        }
    }

    /// How many bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            Bytes::Inline { len, .. } => usize::from(*len),
            Bytes::Shared(v) => v.len(),
            Bytes::Carried(c) => c.len(),
        }
    }

    /// Whether the bytes travel to a local worker's pool as a memfd, not within a message
    /// (so the pool's message limit does not bound them).
    pub(crate) fn is_file(&self) -> bool {
        matches!(self, Bytes::Carried(c) if c.is_file())
    }
}

impl Default for Bytes {
    fn default() -> Bytes {
        Bytes::Inline { len: 0, bytes: [0; INLINE] }
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Bytes) -> bool {
        matches!((self.get(), other.get()), (Ok(a), Ok(b)) if a == b)
    }
}

impl Eq for Bytes {}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Bytes {
        if v.len() <= INLINE { Bytes::copy_from(&v) } else { Bytes::Shared(Arc::new(v)) }
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.len())
    }
}

/// A byte string, not a sequence of `u8` values (postcard: a length and the bytes).
struct ByteStr<'a>(&'a [u8]);

impl Serialize for ByteStr<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// How [`Bytes`] go: a byte string, or a [`Carried`] (which may go as its memfd).
#[derive(Serialize)]
enum Out<'a> {
    Plain(ByteStr<'a>),
    Carried(&'a Carried),
}

/// [`Out`], received.
#[derive(Deserialize)]
enum In {
    Plain(Plain),
    Carried(Carried),
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Bytes::Carried(c) => Out::Carried(c),
            plain => Out::Plain(ByteStr(plain.get().map_err(serde::ser::Error::custom)?)),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match In::deserialize(deserializer)? {
            In::Plain(plain) => plain.0,
            In::Carried(c) => Bytes::Carried(c),
        })
    }
}

/// A byte string received as inline or shared [`Bytes`].
struct Plain(Bytes);

impl<'de> Deserialize<'de> for Plain {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = Plain;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Plain, E> {
                Ok(Plain(Bytes::copy_from(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Plain, E> {
                Ok(Plain(Bytes::from(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Plain, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(b) = seq.next_element()? {
                    v.push(b);
                }
                Ok(Plain(Bytes::from(v)))
            }
        }
        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}

/// Why a task has no value, as the worker tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Failure {
    /// The function panicked with this message.
    Panicked(String),
    /// The function panicked on item `item` of a chunk (`map` and friends).
    ItemPanicked {
        /// The item's index in the chunk.
        item: u64,
        /// The panic message.
        message: String,
    },
    /// The value could not be encoded.
    Encode(String),
    /// The arguments could not be decoded.
    Decode(String),
    /// The value, encoded, is larger than the pool's message limit: it stayed in the worker.
    TooLarge {
        /// Its size in bytes.
        size: u64,
        /// The limit.
        limit: u64,
    },
}

impl Failure {
    /// The failure with its message cut to at most `limit` bytes (a panic message may be as
    /// large as the values an `assert_eq!` prints; past the message limit it could not be
    /// sent, and the worker would seem to die): the start of it, and how much was cut.
    pub(crate) fn cut_to(self, limit: usize) -> Failure {
        let cut = |message: String| {
            if message.len() <= limit {
                return message;
            }
            let note = format!("... ({} bytes cut: past the pool's message limit)", message.len());
            let mut keep = limit.saturating_sub(note.len());
            while !message.is_char_boundary(keep) {
                keep -= 1;
            }
            let mut message = message;
            message.truncate(keep);
            message + &note
        };
        match self {
            Failure::Panicked(m) => Failure::Panicked(cut(m)),
            Failure::ItemPanicked { item, message } => Failure::ItemPanicked { item, message: cut(message) },
            Failure::Encode(m) => Failure::Encode(cut(m)),
            Failure::Decode(m) => Failure::Decode(cut(m)),
            too_large @ Failure::TooLarge { .. } => too_large,
        }
    }
}

/// What a message may hold per task beyond the task's input or value: its id, its driver,
/// the lengths (postcard varints), a failure's tag.
pub(crate) const PER_TASK: usize = 64;
/// What a message may hold beyond its tasks: its tag, the list's length, `busy_ns`.
pub(crate) const PER_MESSAGE: usize = 64;

/// The limit an end between the pool and a worker is set to, for a pool whose tasks' inputs
/// and values may be `max_message_size` bytes: batches and outcome messages are cut so that
/// their tasks' bytes (with [`PER_TASK`] each) stay within it, or hold a single task.
pub(crate) fn frame_limit(max_message_size: usize) -> usize {
    max_message_size.saturating_add(PER_TASK + PER_MESSAGE)
}

/// Why a task's `what` ("arguments", "value") did not cross: its size past the limit.
pub(crate) fn past_the_limit(what: &str, size: u64, limit: u64) -> String {
    format!(
        "cannot send the {what}: {size} bytes, past the pool's limit of {limit} bytes \
         (PoolBuilder::max_message_size raises it)"
    )
}

/// A task's result in the worker: the encoded value, or why there is none.
pub(crate) type Outcome = Result<Bytes, Failure>;

/// A driver: runs one task's input, in any process of this program.
pub(crate) type Driver = fn(Carried) -> Outcome;

/// One task, on its way to a worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireTask {
    pub(crate) id: u64,
    pub(crate) driver: FnRef<Driver>,
    pub(crate) input: Carried,
}

/// From the pool to a worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// Run these, in order, and send their outcomes back in that order.
    Batch(Vec<WireTask>),
    /// The pool fenced the worker's progress word and took back every task it had not
    /// claimed: skip what came before this, clear the fence, go on (`claim.rs`).
    Resume,
    /// Leave (after the tasks sent before).
    Exit,
    /// To a remote worker: you may run the tasks of your stream up to this position (counted
    /// from 1, over every task sent to you), the answer to a [`FromWorker::Claim`].
    Grant(u64),
    /// To a remote worker: the pool is alive (sent when it has sent nothing else for a
    /// heartbeat interval).
    Heartbeat,
    /// To a remote worker, after its [`FromWorker::Hello`]: you are in (what to run first,
    /// and the pool's settings).
    Welcome(Box<Welcome>),
    /// To a remote worker, after its [`FromWorker::Hello`]: you are not taken, and why.
    Refused(String),
    /// To a remote worker: the tasks of your stream past this position that came before
    /// this message are taken back (none of them was granted): drop them. Positions are not
    /// reused: the next task sent has the position after the last one sent.
    Revoke(u64),
}

/// What a remote worker learns from the pool when it is taken (`ToWorker::Welcome`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Welcome {
    /// The worker's name in the pool (in its errors and logs).
    pub(crate) name: String,
    /// The pool process's pid and name (the worker's parent, as `parent_process` tells).
    pub(crate) pool: (u32, String),
    /// The pool's process family's secrets (`mproc_process::__private::family_keys`): the
    /// worker joins the family, so it decodes the family's function references.
    pub(crate) family: Vec<u8>,
    pub(crate) init: Option<WireTask>,
    pub(crate) max_message_size: usize,
    /// How often each side sends when it has nothing else to send.
    pub(crate) heartbeat_ns: u64,
    /// How long a side waits, hearing nothing, before it gives the other up.
    pub(crate) silence_ns: u64,
    /// Whether the worker claims short tasks ahead of the one it runs.
    pub(crate) claim_ahead: bool,
}

/// A remote worker's first message: who it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Hello {
    /// [`PROTOCOL`]: a worker of another version of this protocol is refused.
    pub(crate) protocol: u32,
    /// The worker's build (`build_id.rs`): a worker of another build is refused.
    pub(crate) build: String,
    /// Its program, for errors.
    pub(crate) program: String,
    /// Its host name (Slurm's node name if there is one).
    pub(crate) host: String,
    pub(crate) pid: u32,
    /// Its rank among the tasks of a Slurm step (`SLURM_PROCID`), if there is one.
    pub(crate) rank: Option<u32>,
}

/// The version of the pool's remote protocol (`Hello`); 2: `Revoke`.
pub(crate) const PROTOCOL: u32 = 2;

/// From a worker to the pool.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// Outcomes of the next tasks, in the order they were sent, and the time spent running
    /// them (for the batch size).
    Results { outcomes: Vec<(u64, Outcome)>, busy_ns: u64 },
    /// The fence is cleared: the worker can be sent tasks again (`claim.rs`).
    Resumed,
    /// The initializer failed: the worker leaves.
    InitFailed(Failure),
    /// From a remote worker: it asks to run the tasks of its stream up to this position (it
    /// runs none the pool has not granted, so the pool always knows which it may have
    /// started).
    Claim(u64),
    /// From a remote worker: it is alive (sent when it has sent nothing else for a heartbeat
    /// interval).
    Heartbeat,
    /// A remote worker's first message.
    Hello(Hello),
}

fn decode<T: DeserializeOwned>(input: &Carried) -> Result<T, Failure> {
    input.decode().map_err(|e| Failure::Decode(format!("cannot decode the arguments: {e}")))
}

/// Encodes a task's value: inline when `capacity` (a guess at its size) says it may fit,
/// else into a `Vec`.
fn encode<T: Serialize>(value: &T, capacity: usize) -> Outcome {
    if capacity <= INLINE {
        // Most values of single tasks fit inline: encoded there, no allocation at all.
        let mut bytes = [0; INLINE];
        // On an error, too large for the room (which postcard reports as `CollectStrError`
        // when a `collect_str` runs out of it) or a real one: the `Vec` path says which.
        if let Ok(used) = postcard::to_slice(value, &mut bytes) {
            let len = used.len() as u8;
            return Ok(Bytes::Inline { len, bytes });
        }
    }
    // Larger ones through ipc's codec (bytes and floats copied whole, short pieces without
    // a `memcpy` call each); past the out-of-line threshold, written into a memfd as they are
    // encoded, which goes to the pool as it is.
    let cannot = |e: &mproc_process::ipc::Error| {
        Failure::Encode(format!("cannot encode the result: {}", encode_error(e)))
    };
    match Carried::encode_with_capacity(value, capacity.max(2 * INLINE)) {
        // A value is decoded without fds: one with ends fails here as it would inline.
        Ok(c) if c.n_fds() > 0 => Err(cannot(&mproc_process::ipc::Error::FdPassing(
            "a task's value cannot hold ipc ends (pass them in its arguments)",
        ))),
        Ok(c) => Ok(Bytes::Carried(c)),
        Err(e) => Err(cannot(&e)),
    }
}

/// What a chunk's values' encoding is first given room for: often about as much as its
/// items' took (up to 64 MiB; past that it grows as it must).
fn values_guess(input: &Carried) -> usize {
    input.len().min(64 << 20)
}

/// What a single task's value is first given room for: inline, if it fits.
const SMALL_VALUE: usize = INLINE;

/// Encodes a task's input: the function and its arguments, with the fds of the ipc ends and
/// shared state inside them (which go to the worker with the task).
pub(crate) fn input<F: mproc_process::FnPtr, A: Serialize + ?Sized>(
    f: F,
    args: &A,
) -> Result<Carried, mproc_process::ipc::Error> {
    Carried::encode(&(FnRef::new(f), args))
}

/// How many fds a task's input takes in a message: those of the ends and shared state in its
/// arguments, and its memfd if it has one.
pub(crate) fn fds_of(input: &Carried) -> usize {
    input.n_fds() + usize::from(input.is_file())
}

/// Why arguments could not be encoded, said once (an ipc `Encode` error would repeat
/// "cannot encode").
pub(crate) fn encode_error(e: &mproc_process::ipc::Error) -> String {
    match e {
        mproc_process::ipc::Error::Encode(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

/// Why a value could not be decoded, said once.
pub(crate) fn decode_error(e: &mproc_process::ipc::Error) -> String {
    match e {
        mproc_process::ipc::Error::Decode(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

/// A task's input: the function and its arguments.
type Input<F, T> = (FnRef<F>, T);

/// `f(a)`.
pub(crate) fn apply_driver<A: DeserializeOwned + 'static, R: Serialize + 'static>(input: Carried) -> Outcome {
    let (f, a): Input<fn(A) -> R, A> = decode(&input)?;
    encode(&(f.get())(a), SMALL_VALUE)
}

/// `f` over a chunk of items; the values in order.
pub(crate) fn chunk_driver<A: DeserializeOwned + 'static, R: Serialize + 'static>(input: Carried) -> Outcome {
    let (f, items): Input<fn(A) -> R, Vec<A>> = decode(&input)?;
    let f = f.get();
    encode(&each_item(items, f)?, values_guess(&input))
}

/// `f` over `items`, in order; a panic names the item it happened on.
fn each_item<A, R>(items: Vec<A>, f: impl Fn(A) -> R) -> Result<Vec<R>, Failure> {
    // Counted as they finish rather than caught one by one, so the loop stays a plain `map`
    // (and its `collect` may reuse the input's allocation).
    let done = std::cell::Cell::new(0u64);
    let run = || {
        items
            .into_iter()
            .map(|item| {
                let value = f(item);
                done.set(done.get() + 1);
                value
            })
            .collect()
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).map_err(|payload| Failure::ItemPanicked {
        item: done.get(),
        message: mproc_process::panic_message(&*payload),
    })
}

/// `f(a, b)` over a chunk of pairs: `starmap`.
pub(crate) fn star_driver<
    A: DeserializeOwned + 'static,
    B: DeserializeOwned + 'static,
    R: Serialize + 'static,
>(
    input: Carried,
) -> Outcome {
    type Star<A, B, R> = Input<fn(A, B) -> R, Vec<(A, B)>>;
    let (f, items): Star<A, B, R> = decode(&input)?;
    let f = f.get();
    encode(&each_item(items, |(a, b)| f(a, b))?, values_guess(&input))
}

/// The initializer: `f(a)`, once per worker.
pub(crate) fn init_driver<A: DeserializeOwned + 'static>(input: Carried) -> Outcome {
    let (f, a): (FnRef<fn(A)>, A) = decode(&input)?;
    (f.get())(a);
    Ok(Bytes::default())
}

/// The driver for `driver` as a reference a worker can call.
pub(crate) fn driver_ref(driver: Driver) -> FnRef<Driver> {
    FnRef::new(driver)
}
