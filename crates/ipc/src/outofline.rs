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
//! A value in flight is held by the kernel as the fd in the socket's queue: if the receiver
//! dies or closes its end before reading it, the kernel closes the fd and frees the file. The
//! file's pages count against the sender's memory (its cgroup) until the receiver is done.

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
    let len = codec::encoded_len(value)?;
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
    frame.len() == 4 + DESCRIPTOR_LEN
        && frame[..4] == (DESCRIPTOR_LEN as u32).to_be_bytes()
        && announced(&frame[4..]).is_some()
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
    let view = Arc::new(Sealed::open(&file, len as usize).map_err(Error::OutOfLine)?);
    drop(file);
    /// Puts back the mapping decoded from before, even if a `Deserialize` panics.
    struct Restore(Option<Arc<Sealed>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DECODING.set(self.0.take());
        }
    }
    let _restore = Restore(DECODING.replace(Some(view.clone())));
    fdpass::providing(fds, || codec::decode(view.bytes()))
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
