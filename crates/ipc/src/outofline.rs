//! Large values out of line: past [`MIN`] bytes, a typed value sent on a Unix socket is
//! encoded straight into a memfd, sealed, and passed with a small frame (`SCM_RIGHTS`); the
//! receiver maps it read-only and decodes from the mapping. The bytes are written once and
//! read once, instead of being copied into a send buffer, through the socket's buffers in
//! pieces and into a receive buffer.
//!
//! The sender fills the file with `write(2)` as the value is encoded (the streaming encoder:
//! small pieces gathered, bytes and floats straight from the value's memory), never through
//! a mapping: the kernel copies into page-cache pages it allocates for the write, which it
//! need not zero first and which no user page fault maps in. A writable mapping of a new
//! file costs a zeroed page and a page-table entry per 4 KiB, and a `munmap` after (1 GiB
//! here: about 0.9 s of CPU that way, 0.55 s by `write`).
//!
//! The frame's payload is a descriptor: [`MAGIC`] and the encoding's length (8 bytes, little
//! endian); the memfd is the last fd that comes with the frame (the fds of ends inside the
//! value come first, at the indexes the encoding names). The receiver checks the file before
//! it maps it (`sys::outofline::Sealed::open`): a memfd sealed against writing and shrinking,
//! at least as long as announced; and the announced length against the end's message limit,
//! as for any frame. Anything else is [`Error::OutOfLine`], with the frame consumed.
//!
//! When no memfd can be had (the file size limit, `ulimit -f`, is below the value's size: the
//! kernel would kill the sender with `SIGXFSZ`; or `memfd_create` fails) the value goes
//! inline, copied like any other. Pipes and TCP sockets carry no fds and always copy.
//!
//! A value that is mostly one run of bytes or floats goes *early* on a blocking send: its memfd
//! first, then the value written into it, then an end frame, while the receiver makes the
//! run's `Vec` ready (see the section on it below).
//!
//! A value in flight is held by the kernel as the fd in the socket's queue: if the receiver
//! dies or closes its end before reading it, the kernel closes the fd and frees the file. The
//! file's pages count against the sender's memory (its cgroup) until the receiver is done.

use std::any::Any;
use std::cell::RefCell;
use std::io::IoSlice;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{MemfdFlags, SealFlags};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::error::{Error, Result};
use crate::fdpass;
use crate::sys::outofline::Sealed;

/// Values whose encoding passes this many bytes go out of line on a Unix socket.
pub(crate) const MIN: usize = 4 << 20;

/// How a descriptor payload begins.
const MAGIC: [u8; 16] = *b"\x00mproc:memfd\x9b\x3e\x71\xc4";

/// A descriptor payload's length.
const DESCRIPTOR_LEN: usize = MAGIC.len() + 8;

/// Encodes `value` into a new sealed memfd: the fd, and the encoding's length. `None` when no
/// memfd can hold it or it cannot be sealed (the caller sends it inline). `buf` gathers the
/// encoding's small pieces between writes.
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
) -> Result<Option<(OwnedFd, usize)>> {
    // The ends met are the writing pass's to collect (see `fdpass::measuring`).
    let len = fdpass::measuring(|| codec::encoded_len(value))?;
    if len as u64 > file_size_limit() {
        return Ok(None);
    }
    let Ok(file) = new_memfd() else {
        return Ok(None);
    };
    buf.clear();
    let mut write_failed = false;
    let written = codec::encode_streaming(value, buf, len, |gathered, direct| {
        write_all(&file, gathered, direct).map_err(|e| {
            write_failed = true;
            Error::Io(e)
        })
    });
    match written {
        Ok(n) if n == len => {}
        // A value that encodes otherwise the second time.
        Ok(_) => return Err(Error::Encode(postcard::Error::SerializeBufferFull)),
        // No room for the file (memory, its cgroup): inline after all.
        Err(_) if write_failed => return Ok(None),
        Err(e) => return Err(e),
    }
    let sealed = rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
    );
    Ok(sealed.ok().map(|()| (file, len)))
}

/// A new memfd (close-on-exec, sealable; sealed against exec where the kernel knows the flag,
/// which systems with `vm.memfd_noexec = 2` require).
fn new_memfd() -> std::io::Result<OwnedFd> {
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    match rustix::fs::memfd_create("mproc-value", flags | MemfdFlags::NOEXEC_SEAL) {
        Err(rustix::io::Errno::INVAL) => Ok(rustix::fs::memfd_create("mproc-value", flags)?),
        made => Ok(made?),
    }
}

/// Writes `first` then `second` at the file's offset, all of them.
fn write_all(file: &OwnedFd, mut first: &[u8], mut second: &[u8]) -> std::io::Result<()> {
    while !first.is_empty() || !second.is_empty() {
        let n = match rustix::io::writev(file, &[IoSlice::new(first), IoSlice::new(second)]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let in_first = n.min(first.len());
        first = &first[in_first..];
        second = &second[n - in_first..];
    }
    Ok(())
}

/// The payload that announces an out-of-line value of `len` bytes.
pub(crate) fn descriptor(len: usize) -> [u8; DESCRIPTOR_LEN] {
    let mut out = [0; DESCRIPTOR_LEN];
    out[..MAGIC.len()].copy_from_slice(&MAGIC);
    out[MAGIC.len()..].copy_from_slice(&(len as u64).to_le_bytes());
    out
}

/// The length a descriptor payload announces, if `payload` is one.
pub(crate) fn announced(payload: &[u8]) -> Option<u64> {
    let (magic, len) = payload.split_first_chunk::<16>()?;
    (magic == &MAGIC && len.len() == 8).then(|| u64::from_le_bytes(len.try_into().expect("8 bytes")))
}

/// Whether `frame` (header and payload) is a descriptor's: a frame with fds that is one is
/// read as an out-of-line value.
pub(crate) fn is_descriptor_frame(frame: &[u8]) -> bool {
    let spells = |len: usize, is: &dyn Fn(&[u8]) -> bool| {
        frame.len() == 4 + len && frame[..4] == (len as u32).to_be_bytes() && is(&frame[4..])
    };
    spells(DESCRIPTOR_LEN, &|p| announced(p).is_some()) || spells(EARLY_LEN, &is_early)
}

/// Decodes the value of `len` bytes in `file`, with `fds` for the ends inside it; `max` is
/// the end's message limit.
pub(crate) fn decode<T: DeserializeOwned>(
    file: OwnedFd,
    len: u64,
    max: usize,
    fds: Vec<OwnedFd>,
) -> Result<T> {
    if len > max as u64 {
        return Err(Error::TooLarge { len, max: max as u64 });
    }
    decode_mapped(file, len, fds, None)
}

/// [`decode`] after the checks of the length, with the `Vec` made ready for the value's run.
fn decode_mapped<T: DeserializeOwned>(
    file: OwnedFd,
    len: u64,
    fds: Vec<OwnedFd>,
    ready: Option<(codec::Run, Box<dyn Any + Send>)>,
) -> Result<T> {
    let view = match ready {
        None => Sealed::open(&file, len as usize),
        Some(_) => Sealed::open_with(&file, len as usize, false),
    };
    let view = Arc::new(view.map_err(Error::OutOfLine)?);
    drop(file);
    /// Puts back the mapping decoded from before, even if a `Deserialize` panics.
    struct Restore(Option<Arc<Sealed>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DECODING.set(self.0.take());
        }
    }
    let _restore = Restore(DECODING.replace(Some(view.clone())));
    let decode = || fdpass::providing(fds, || codec::decode(view.bytes()));
    match ready {
        Some((run, vec)) => {
            codec::ready::providing(view.bytes().as_ptr() as usize + run.offset, run.bytes, vec, decode)
        }
        None => decode(),
    }
}

thread_local! {
    /// The mapping a value is being decoded from, while it is (see [`adopt`]).
    static DECODING: RefCell<Option<Arc<Sealed>>> = const { RefCell::new(None) };
}

/// Bytes inside a received value's mapping, kept mapped while they live: a byte string that
/// is most of a value out of line is kept where it arrived instead of copied out (a
/// [`Carried`](crate::Carried) holding a pool task's arguments).
#[derive(Clone)]
pub(crate) struct Mapped {
    view: Arc<Sealed>,
    start: usize,
    len: usize,
}

impl Mapped {
    /// The bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.view.bytes()[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mapped({} bytes)", self.len)
    }
}

/// `bytes` kept in place, if they lie in the mapping of the value being decoded on this
/// thread and are at least half of it (so a few small byte strings never keep a large
/// mapping alive).
pub(crate) fn adopt(bytes: &[u8]) -> Option<Mapped> {
    DECODING.with_borrow(|view| {
        let view = view.as_ref()?;
        let whole = view.bytes().as_ptr_range();
        let inside = bytes.as_ptr() >= whole.start && bytes.as_ptr_range().end <= whole.end;
        (inside && 2 * bytes.len() >= view.bytes().len()).then(|| Mapped {
            view: view.clone(),
            start: bytes.as_ptr() as usize - whole.start as usize,
            len: bytes.len(),
        })
    })
}

/// The largest file this process may write (`RLIMIT_FSIZE`, `ulimit -f`).
fn file_size_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Fsize).current.unwrap_or(u64::MAX)
}

// ---- early: the memfd goes before the value is written in it -------------------------------
//
// A value whose encoding is mostly one run of bytes or floats (a `Vec<u8>`, a `Vec<f64>`, a
// struct around one) goes *early* on a blocking send: the sender sends the memfd with an
// early descriptor first (the encoding's length, and where its largest run lies), writes the
// value into it and seals it, then sends an end frame (one byte: whole, or failed). Meanwhile
// the receiver makes the run's `Vec` ready, allocated and faulted in: the fresh memory a
// decoded value needs costs about what writing the file costs, and the two overlap. Once the
// end frame says whole, the file is checked and mapped as above, and the decode copies the run
// into the ready `Vec` (`codec/ready.rs`). The sender holds its end's send lock throughout, so the
// end frame is the next frame after the descriptor.
//
// A sender that fails midway (its encoding changed, no memory for the file) sends a failed end
// frame, and one that panics midway sends it as it unwinds: the receiver reports
// `Error::OutOfLine` and the stream stays in step. A sender that dies midway closes its end:
// the receiver reports `Error::OutOfLine` (and `Closed` after that). A receive that times out
// before the end frame keeps the value pending in the end (`Pending`) and reports `Timeout`;
// the next receive goes on with it.

/// How an early descriptor's payload begins.
const EARLY_MAGIC: [u8; 16] = *b"\x00mproc:memfd>\x5a\x2d\xe1";

/// An early descriptor's length: the magic, then the encoding's length and its largest run's
/// offset, length and element size (8 bytes each, little endian).
const EARLY_LEN: usize = EARLY_MAGIC.len() + 4 * 8;

/// How the payload of the frame that ends an early value begins; one byte follows: 1 when the
/// file is whole and sealed, 0 when the sender failed.
const END_MAGIC: [u8; 16] = *b"\x00mproc:memfd<\xa5\xd2\x1e";

/// The end frame's payload length.
const END_LEN: usize = END_MAGIC.len() + 1;

/// A value that should go early: its encoding's length and largest run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    len: usize,
    run: codec::Run,
}

/// The plan for sending `value` early: `None` unless it encodes past [`MIN`] bytes, at least
/// half of them one run of bytes or floats, with no ends inside, within the file size limit.
pub(crate) fn plan<T: Serialize + ?Sized>(value: &T) -> Option<Plan> {
    let (counted, outgoing) = fdpass::collecting(|| codec::encoded_len_and_run(value));
    let (len, run) = counted.ok()?;
    let early = outgoing.fds.is_empty()
        && outgoing.refused.is_none()
        && len > MIN
        && run.bytes >= codec::ready::MIN
        && 2 * run.bytes >= len
        && len as u64 <= file_size_limit();
    early.then_some(Plan { len, run })
}

/// An early value's memfd, not written yet.
#[derive(Debug)]
pub(crate) struct Early {
    file: OwnedFd,
    plan: Plan,
}

impl Early {
    /// A new memfd for the value `plan` is of; `None` when none can be made.
    pub(crate) fn new(plan: Plan) -> Option<Early> {
        new_memfd().ok().map(|file| Early { file, plan })
    }

    /// The early descriptor's payload and the fd that goes with it (the memfd's, duplicated).
    pub(crate) fn descriptor(&self) -> std::io::Result<([u8; EARLY_LEN], OwnedFd)> {
        let mut out = [0; EARLY_LEN];
        out[..EARLY_MAGIC.len()].copy_from_slice(&EARLY_MAGIC);
        let Plan { len, run } = self.plan;
        for (i, field) in [len, run.offset, run.bytes, run.elem].into_iter().enumerate() {
            let at = EARLY_MAGIC.len() + 8 * i;
            out[at..at + 8].copy_from_slice(&(field as u64).to_le_bytes());
        }
        Ok((out, self.file.try_clone()?))
    }

    /// Writes `value` into the file and seals it; `buf` gathers the encoding's small pieces.
    pub(crate) fn write<T: Serialize + ?Sized>(self, value: &T, buf: &mut Vec<u8>) -> Result<()> {
        buf.clear();
        let written = codec::encode_streaming(value, buf, self.plan.len, |gathered, direct| {
            write_all(&self.file, gathered, direct).map_err(Error::Io)
        })?;
        if written != self.plan.len {
            // A value that encodes otherwise the second time.
            return Err(Error::Encode(postcard::Error::SerializeBufferFull));
        }
        rustix::fs::fcntl_add_seals(
            &self.file,
            SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )
        .map_err(|e| Error::Io(e.into()))
    }
}

/// The payload of the frame that ends an early value: the file is `whole` and sealed, or the
/// sender failed.
pub(crate) fn end_payload(whole: bool) -> [u8; END_LEN] {
    let mut out = [0; END_LEN];
    out[..END_MAGIC.len()].copy_from_slice(&END_MAGIC);
    out[END_MAGIC.len()] = u8::from(whole);
    out
}

/// Whether `payload` is an early descriptor's.
pub(crate) fn is_early(payload: &[u8]) -> bool {
    payload.len() == EARLY_LEN && payload[..EARLY_MAGIC.len()] == EARLY_MAGIC
}

/// An early value received whose end frame has not been read yet: its file, the fds of the
/// ends inside it, and the run's `Vec`, made ready; or why it is refused (reported once its
/// end frame is read, so the stream stays in step).
pub(crate) struct Pending(Result<Arrived>);

/// An early value that passed the checks of its descriptor.
struct Arrived {
    file: OwnedFd,
    len: u64,
    run: codec::Run,
    fds: Vec<OwnedFd>,
    ready: Option<Box<dyn Any + Send>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Ok(arrived) => write!(f, "Pending({} bytes)", arrived.len),
            Err(e) => write!(f, "Pending(refused: {e})"),
        }
    }
}

impl Pending {
    /// The early value whose descriptor is `payload` (see [`is_early`]), with the `fds` that
    /// came with it (its memfd last, so at least one): checked against the end's message limit
    /// `max` and for sizes that fit, and its run's `Vec` made ready.
    pub(crate) fn new(payload: &[u8], max: usize, mut fds: Vec<OwnedFd>) -> Pending {
        let field = |i: usize| {
            let at = EARLY_MAGIC.len() + 8 * i;
            u64::from_le_bytes(payload[at..at + 8].try_into().expect("8 bytes"))
        };
        let (len, offset, bytes, elem) = (field(0), field(1), field(2), field(3));
        let fits = offset.checked_add(bytes).is_some_and(|end| end <= len)
            && matches!(elem, 1 | 4 | 8)
            && bytes % elem == 0;
        Pending(if len > max as u64 {
            Err(Error::TooLarge { len, max: max as u64 })
        } else if !fits {
            Err(Error::OutOfLine(format!(
                "the value's run of {bytes} bytes at {offset} (elements of {elem} bytes) does not fit in its {len} bytes"
            )))
        } else {
            let file = fds.pop().expect("an early descriptor comes with fds");
            let run = codec::Run { offset: offset as usize, bytes: bytes as usize, elem: elem as usize };
            Ok(Arrived { file, len, run, fds, ready: ready_vec(run) })
        })
    }

    /// The value, now that its end frame's payload `end` has come.
    pub(crate) fn finish<T: DeserializeOwned>(self, end: &[u8]) -> Result<T> {
        let whole = match end.split_first_chunk::<16>() {
            Some((magic, [whole @ (0 | 1)])) if magic == &END_MAGIC => *whole == 1,
            _ => {
                return Err(Error::OutOfLine(
                    "a frame came where the end of a value out of line was due (its sender broke off)".into(),
                ));
            }
        };
        let arrived = self.0?;
        if !whole {
            return Err(Error::OutOfLine("the sender failed to write the value whole".into()));
        }
        let ready = arrived.ready.map(|vec| (arrived.run, vec));
        decode_mapped(arrived.file, arrived.len, arrived.fds, ready)
    }
}

/// A `Vec` of the run's elements with room for all of them, faulted in; `None` for a short
/// run, or when there is no memory for it (the decode then allocates as usual).
fn ready_vec(run: codec::Run) -> Option<Box<dyn Any + Send>> {
    fn ready<E: Copy + Send + 'static>(bytes: usize) -> Option<Box<dyn Any + Send>> {
        let mut vec = Vec::<E>::new();
        vec.try_reserve_exact(bytes / size_of::<E>()).ok()?;
        crate::sys::outofline::fault_in(vec.spare_capacity_mut());
        Some(Box::new(vec))
    }
    if run.bytes < codec::ready::MIN {
        return None;
    }
    match run.elem {
        1 => ready::<u8>(run.bytes),
        4 => ready::<f32>(run.bytes),
        8 => ready::<f64>(run.bytes),
        _ => None,
    }
}
