//! The machinery every end shares: one owned fd, a send lock, a receive lock with the framing
//! state, and the message-size limit. `Sender`, `Receiver` and `Connection` are typed views.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustix::event::{PollFd, PollFlags};
use rustix::io::{Errno, FdFlags, ReadWriteFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::error::{Error, Result};
use crate::fdpass;
use crate::frame::{FrameReader, HEADER_MAX, RawIo, encode_header, write_frame, write_some};
use crate::outofline;
use crate::sys;
use crate::wait::{far_future, poll_until};

/// The largest message an end accepts unless told otherwise: 1 GiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 30;

/// Typed values whose encoding passes this size are sent as they are encoded (a pipe, or a
/// socket that cannot have a memfd), not encoded whole into the send buffer first.
const STREAM_MIN: usize = 1 << 20;

/// Raw payloads up to this size are copied behind their header and written as one slice.
const SMALL_COPY: usize = 1024;

/// Raw payloads from this size on are written after their header, not with it (see
/// `send_bytes`).
const SPLIT_HEADER: usize = 64 << 10;

/// The most bytes one write to a pipe may carry when it must not wait and the kernel takes
/// no `RWF_NOWAIT` for pipes: a pipe that polls writable has room for this many (`PIPE_BUF`).
const PIPE_NOWAIT_CHUNK: usize = 4096;

/// Set once a pipe refused `RWF_NOWAIT` (an older kernel): from then on, writes that must not
/// wait poll first and write at most [`PIPE_NOWAIT_CHUNK`] bytes.
static PIPES_REFUSE_NOWAIT: AtomicBool = AtomicBool::new(false);

/// Behaves from now on as if pipes refused `RWF_NOWAIT` (for the tests of the fallback).
pub(crate) fn refuse_pipe_nowait() {
    PIPES_REFUSE_NOWAIT.store(true, Ordering::Relaxed);
}

/// What the fd is: it decides how bytes are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A pipe or anything else `writev` serves.
    Pipe,
    /// A Unix socket: written with `sendmsg(MSG_NOSIGNAL)`, so a vanished peer is an error,
    /// never a `SIGPIPE`. Carries fds.
    Socket,
    /// Any other socket (TCP): written as a Unix socket is, but carries no fds (the kernel
    /// would drop them silently).
    NetSocket,
}

impl Kind {
    /// Asks the kernel what `fd` is.
    pub(crate) fn of(fd: BorrowedFd<'_>) -> Kind {
        match rustix::fs::fstat(fd) {
            Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket => {
                match rustix::net::sockopt::socket_domain(fd) {
                    Ok(AddressFamily::UNIX) => Kind::Socket,
                    _ => Kind::NetSocket,
                }
            }
            _ => Kind::Pipe,
        }
    }
}

/// The receive side's state: where the stream stands, a buffer for typed payloads, and the
/// fds that have arrived, each with the stream offset of the last byte of the read that brought
/// it (the kernel stops a read at the end of the bytes sent with fds, and those bytes begin
/// with the frame's header, so that offset lies inside the frame the fds came with).
#[derive(Debug, Default)]
struct ReadSide {
    frames: FrameReader,
    scratch: Vec<u8>,
    fds: Vec<(u64, OwnedFd)>,
}

/// The send side's state: the encode buffer, and the rest of a frame a non-blocking send
/// started but could not finish (it goes out before any other frame).
#[derive(Debug, Default)]
struct SendSide {
    buf: Vec<u8>,
    unsent: Vec<u8>,
    /// How much of `unsent` is written.
    written: usize,
}

impl SendSide {
    fn pending(&self) -> &[u8] {
        &self.unsent[self.written..]
    }

    /// Counts `n` more pending bytes written; once none is left, the buffer starts over.
    fn advance(&mut self, n: usize) {
        self.written += n;
        if self.pending().is_empty() {
            self.unsent.clear();
            self.written = 0;
            codec::trim(&mut self.unsent);
        }
    }
}

pub(crate) struct End {
    fd: OwnedFd,
    kind: Kind,
    /// Held for the whole of a send, so frames never interleave.
    send: Mutex<SendSide>,
    /// Held for the whole of a receive, so each receiver gets whole frames.
    recv: Mutex<ReadSide>,
    max_message_size: usize,
}

impl End {
    pub(crate) fn new(fd: OwnedFd, kind: Kind) -> End {
        End {
            fd,
            kind,
            send: Mutex::new(SendSide::default()),
            recv: Mutex::new(ReadSide::default()),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }

    fn io(&self) -> FdIo<'_> {
        FdIo {
            fd: self.fd.as_fd(),
            kind: self.kind,
            outgoing: RefCell::default(),
            incoming: None,
            nowait: false,
        }
    }

    /// An [`FdIo`] whose writes never wait: they stop with `WouldBlock` when there is no room.
    fn io_nowait(&self) -> FdIo<'_> {
        FdIo { nowait: true, ..self.io() }
    }

    /// An [`FdIo`] that keeps the fds arriving with frames in `fds`.
    fn reading<'a>(&'a self, fds: &'a mut Vec<(u64, OwnedFd)>) -> FdIo<'a> {
        FdIo { incoming: Some(RefCell::new(fds)), ..self.io() }
    }

    pub(crate) fn into_fd(self) -> OwnedFd {
        self.fd
    }

    pub(crate) fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    pub(crate) fn set_max_message_size(&mut self, max: usize) {
        self.max_message_size = max;
    }

    pub(crate) fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let mut side = self.send.lock();
        self.finish_unsent(&mut side)?;
        let SendSide { buf, .. } = &mut *side;
        // The common case in few steps: encoded whole within the inline limit with no end in
        // it (an end met fails this first encoding), then one write.
        let result = match codec::encode_frame_within(value, buf, self.inline_max(true)) {
            Ok(Some(start)) => self.write_whole(&buf[start..]),
            first => self.send_rest(value, buf, first),
        };
        codec::trim(buf);
        result
    }

    /// The rest of [`send`](Self::send), after a first encoding that did not give a frame to
    /// write as it is.
    fn send_rest<T: Serialize + ?Sized>(
        &self,
        value: &T,
        buf: &mut Vec<u8>,
        first: Result<Option<usize>>,
    ) -> Result<()> {
        match self.encode_rest(value, buf, true, first) {
            Ok(Some((start, fds))) => {
                let mut io = self.io();
                io.outgoing = RefCell::new(fds);
                write_frame(&io, &buf[start..], &[])
            }
            Ok(None) => self.send_streaming(value, buf),
            Err(e) => Err(e),
        }
    }

    /// Writes a whole frame that carries no fds, waiting for room: one `write(2)` (`send(2)`
    /// with `MSG_NOSIGNAL` on a socket) nearly always; after a short write or an interruption
    /// [`write_frame`] goes on.
    #[inline]
    fn write_whole(&self, frame: &[u8]) -> Result<()> {
        let written = match self.kind {
            Kind::Pipe => rustix::io::write(&self.fd, frame),
            Kind::Socket | Kind::NetSocket => rustix::net::send(&self.fd, frame, SendFlags::NOSIGNAL),
        };
        match written {
            Ok(n) if n == frame.len() => Ok(()),
            Ok(n) => write_frame(&self.io(), &frame[n..], &[]),
            // Again, with `write_frame`'s handling of these.
            Err(Errno::INTR | Errno::AGAIN) => write_frame(&self.io(), frame, &[]),
            Err(e) => Err(io::Error::from(e).into()),
        }
    }

    /// The most payload bytes a typed frame carries inline (see [`encode`](Self::encode)).
    #[inline]
    fn inline_max(&self, may_stream: bool) -> usize {
        match self.kind {
            Kind::Socket => outofline::MIN,
            _ if may_stream => STREAM_MIN,
            _ => usize::MAX,
        }
    }

    /// Sends a large value as it is encoded, never whole in a buffer: its length first (one
    /// encoding pass that only counts, which for bytes and floats costs nothing), then the
    /// frame in pieces, bytes and floats straight from the value's memory.
    ///
    /// A value that encodes otherwise the second time (a `Serialize` that is not a function
    /// of the value) fails after part of its frame went: the frame is completed with zeros,
    /// so the stream stays in step (the receiver's decode of it fails or gives a wrong value),
    /// and the send reports [`Error::Encode`].
    fn send_streaming<T: Serialize + ?Sized>(&self, value: &T, buf: &mut Vec<u8>) -> Result<()> {
        let (len, fds) = fds_or_refusal(self.collecting(|| codec::encoded_len(value)))?;
        self.check_fds(&fds)?;
        let n = header_only(buf, len as u64);
        let mut io = self.io();
        io.outgoing = RefCell::new(fds);
        let mut sent = 0;
        let (result, _fds_again) = self.collecting(|| {
            codec::encode_streaming(value, buf, n + len, |gathered, direct| {
                write_frame(&io, gathered, direct)?;
                sent += gathered.len() + direct.len();
                Ok(())
            })
        });
        match result {
            Ok(total) if total == n + len => Ok(()),
            Ok(_) | Err(Error::Encode(_)) if sent > 0 => {
                let zeros = vec![0; (n + len - sent).min(codec::SCRATCH_KEEP)];
                while sent < n + len {
                    let k = zeros.len().min(n + len - sent);
                    write_frame(&io, &zeros[..k], &[])?;
                    sent += k;
                }
                Err(Error::Encode(postcard::Error::SerializeBufferFull))
            }
            Ok(_) => Err(Error::Encode(postcard::Error::SerializeBufferFull)),
            Err(e) => Err(e),
        }
    }

    /// Encodes `value` as a frame into `buf`: where the frame starts, and the fds its ends
    /// carry (checked to be sendable on this end). On a Unix socket, a value past
    /// [`outofline::MIN`] bytes goes in a sealed memfd instead: the frame is its descriptor
    /// and the memfd is the last fd. `None` when the caller may stream (`may_stream`) and
    /// should: a value past [`STREAM_MIN`] bytes that has no memfd.
    fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        buf: &mut Vec<u8>,
        may_stream: bool,
    ) -> Result<Option<(usize, Vec<OwnedFd>)>> {
        // Without the fd tables first: a value with an end in it fails here (an end met
        // outside a send that collects), and only then is encoded again with them.
        let first = codec::encode_frame_within(value, buf, self.inline_max(may_stream));
        self.encode_rest(value, buf, may_stream, first)
    }

    /// [`encode`](Self::encode) after its first encoding (without the fd tables, within the
    /// inline limit) gave `first`.
    fn encode_rest<T: Serialize + ?Sized>(
        &self,
        value: &T,
        buf: &mut Vec<u8>,
        may_stream: bool,
        first: Result<Option<usize>>,
    ) -> Result<Option<(usize, Vec<OwnedFd>)>> {
        let inline_max = self.inline_max(may_stream);
        let first = match first {
            // (Too long inline and a memfd met: with the tables, the memfd may go as an fd.)
            Err(_) | Ok(None) if fdpass::end_met() => {
                fds_or_refusal(self.collecting(|| codec::encode_frame_within(value, buf, inline_max)))?
            }
            encoded => (encoded?, Vec::new()),
        };
        // A frame with fds whose payload spells a descriptor would be read as one: such a
        // value goes out of line (the receiver then decodes it whatever it spells).
        let spelled = matches!(&first, (Some(start), fds)
            if self.kind == Kind::Socket && !fds.is_empty() && outofline::is_descriptor_frame(&buf[*start..]));
        let (start, fds) = match first {
            (Some(start), fds) if !spelled => (start, fds),
            (None, _) if self.kind != Kind::Socket => return Ok(None),
            _ => match fds_or_refusal(self.collecting(|| outofline::encode(value, buf)))? {
                (Some((file, len)), mut fds) => {
                    fds.push(file);
                    let descriptor = outofline::descriptor(len);
                    header_only(buf, descriptor.len() as u64);
                    buf.extend_from_slice(&descriptor);
                    (0, fds)
                }
                (None, _) if spelled => {
                    return Err(Error::OutOfLine(
                        "a value with ends whose bytes spell a memfd descriptor must go in a memfd, and none could be made".into(),
                    ));
                }
                // No memfd for it: inline after all.
                (None, _) if may_stream => return Ok(None),
                (None, _) => fds_or_refusal(self.collecting(|| codec::encode_frame(value, buf)))?,
            },
        };
        self.check_fds(&fds)?;
        Ok(Some((start, fds)))
    }

    /// Runs `encode` collecting the fds it meets ([`fdpass::collecting_for`]): on a Unix
    /// socket, bytes kept in a sealed memfd go as the memfd.
    fn collecting<R>(&self, encode: impl FnOnce() -> R) -> (R, fdpass::Outgoing) {
        fdpass::collecting_for(self.kind == Kind::Socket, encode)
    }

    /// Whether this end can carry `fds` with a frame.
    fn check_fds(&self, fds: &[OwnedFd]) -> Result<()> {
        if !fds.is_empty() && self.kind == Kind::Pipe {
            return Err(Error::FdPassing(
                "ends can only travel over a duplex Connection (a Unix socket), not a pipe",
            ));
        }
        if !fds.is_empty() && self.kind == Kind::NetSocket {
            return Err(Error::FdPassing(
                "ends can only travel over a Unix socket, not a TCP connection (fds do not cross the network)",
            ));
        }
        if fds.len() > fdpass::MAX_FDS {
            return Err(Error::FdPassing("one message can carry at most 253 ends"));
        }
        Ok(())
    }

    pub(crate) fn send_bytes(&self, payload: &[u8]) -> Result<()> {
        let mut header = [0; HEADER_MAX];
        let n = encode_header(payload.len() as u64, &mut header);
        let mut side = self.send.lock();
        self.finish_unsent(&mut side)?;
        let buf = &mut side.buf;
        if payload.len() <= SMALL_COPY {
            // One slice for the kernel: copying a few bytes costs less than a second iovec.
            buf.clear();
            buf.extend_from_slice(&header[HEADER_MAX - n..]);
            buf.extend_from_slice(payload);
            let result = self.write_whole(buf);
            codec::trim(buf);
            return result;
        }
        let header = &header[HEADER_MAX - n..];
        if payload.len() >= SPLIT_HEADER {
            // The header in a write of its own, so the payload lands in the pipe's pages (or
            // the socket's buffers) exactly as a bare write of it would: at the same offsets,
            // so the kernel's copies in and out have the alignment the raw floor's have (a
            // 4-byte shift makes every 8-byte word of the copy straddle: up to half the speed
            // on some CPUs). One more system call per frame this large is noise.
            write_frame(&self.io(), header, &[])?;
            return write_frame(&self.io(), payload, &[]);
        }
        write_frame(&self.io(), header, payload)
    }

    /// Writes, waiting for room, what a non-blocking send left unsent (nearly always nothing:
    /// that check inline, the rest out of line).
    #[inline]
    fn finish_unsent(&self, side: &mut SendSide) -> Result<()> {
        // (`written` never passes `unsent`'s length: a comparison, not a slice.)
        if side.written == side.unsent.len() {
            return Ok(());
        }
        self.write_unsent(side)
    }

    #[cold]
    fn write_unsent(&self, side: &mut SendSide) -> Result<()> {
        write_frame(&self.io(), side.pending(), &[])?;
        side.advance(side.pending().len());
        Ok(())
    }

    /// Writes what a non-blocking send left unsent, without waiting: whether it all went.
    fn flush_unsent(&self, side: &mut SendSide) -> Result<bool> {
        if side.pending().is_empty() {
            return Ok(true);
        }
        let n = write_some(&self.io_nowait(), side.pending(), &[])?;
        side.advance(n);
        Ok(side.pending().is_empty())
    }

    /// Starts sending a frame without waiting: `header` then `payload`, with `fds` on its first
    /// byte. `false` if nothing could be written (the frame is not sent; try again once the
    /// end is writable); `true` once the frame is taken, written or partly written with the
    /// rest kept to go out first ([`try_flush`](Self::try_flush)).
    fn start_frame(
        &self,
        side: &mut SendSide,
        header: &[u8],
        payload: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<bool> {
        let mut io = self.io_nowait();
        io.outgoing = RefCell::new(fds);
        let written = write_some(&io, header, payload)?;
        if written == 0 && header.len() + payload.len() > 0 {
            return Ok(false);
        }
        let (in_header, in_payload) = (written.min(header.len()), written.saturating_sub(header.len()));
        side.unsent.clear();
        side.unsent.extend_from_slice(&header[in_header..]);
        side.unsent.extend_from_slice(&payload[in_payload..]);
        side.written = 0;
        Ok(true)
    }

    pub(crate) fn try_send<T: Serialize + ?Sized>(&self, value: &T) -> Result<bool> {
        let mut side = self.send.lock();
        if !self.flush_unsent(&mut side)? {
            return Ok(false);
        }
        let mut buf = std::mem::take(&mut side.buf);
        let result = self.encode(value, &mut buf, false).and_then(|encoded| {
            let (start, fds) = encoded.expect("a value that may not stream is encoded whole");
            self.start_frame(&mut side, &buf[start..], &[], fds)
        });
        codec::trim(&mut buf);
        side.buf = buf;
        result
    }

    pub(crate) fn try_send_bytes(&self, payload: &[u8]) -> Result<bool> {
        let mut header = [0; HEADER_MAX];
        let n = encode_header(payload.len() as u64, &mut header);
        let mut side = self.send.lock();
        if !self.flush_unsent(&mut side)? {
            return Ok(false);
        }
        self.start_frame(&mut side, &header[HEADER_MAX - n..], payload, Vec::new())
    }

    pub(crate) fn try_flush(&self) -> Result<bool> {
        self.flush_unsent(&mut self.send.lock())
    }

    pub(crate) fn recv<T: DeserializeOwned>(&self, timeout: Option<Duration>) -> Result<T> {
        let mut side = self.recv.lock();
        let ReadSide { frames, scratch, fds } = &mut *side;
        let deadline = deadline(timeout);
        // The common case in few steps: a frame that came without fds, whole in the read-ahead
        // buffer (or after one read), decoded where it lies.
        if fds.is_empty() {
            let io = self.reading(fds);
            if let Some(frame) = frames.buffered_frame(&io, self.max_message_size, deadline)?
                && let payload = frame.payload()
                && !io.received_fds()
            {
                let result = decode_without_fds(payload);
                frame.take();
                return result;
            }
        }
        let result = self.read_frame(frames, fds, scratch, deadline).and_then(|mut fds| {
            // A descriptor always comes with its memfd: a frame without fds is a value, whatever
            // its bytes spell (a sender never sends a value with ends inline if it spells one).
            if fds.is_empty() {
                return decode_without_fds(scratch);
            }
            match outofline::announced(scratch) {
                None => fdpass::providing(fds, || codec::decode(scratch)),
                Some(len) => {
                    let file = fds.pop().expect("fds is not empty");
                    outofline::decode(file, len, self.max_message_size, fds)
                }
            }
        });
        codec::trim_scratch(scratch);
        result
    }

    /// [`recv`](Self::recv) without waiting: `None` if no whole frame is there yet.
    pub(crate) fn try_recv<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        match self.recv(Some(Duration::ZERO)) {
            Err(Error::Timeout) => Ok(None),
            other => other.map(Some),
        }
    }

    pub(crate) fn recv_bytes(&self, timeout: Option<Duration>) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.recv_bytes_into(&mut buf, timeout)?;
        Ok(buf)
    }

    pub(crate) fn recv_bytes_into(&self, dst: &mut Vec<u8>, timeout: Option<Duration>) -> Result<usize> {
        let mut side = self.recv.lock();
        let ReadSide { frames, fds, .. } = &mut *side;
        // Ends sent with a raw frame have nowhere to go: dropping them closes them.
        self.read_frame(frames, fds, dst, deadline(timeout)).map(|_fds| dst.len())
    }

    /// Reads one frame into `dst` and hands over the fds that came with it. Fds of frames
    /// before it (skipped, or read raw) are closed; fds of frames after it stay for them.
    fn read_frame(
        &self,
        frames: &mut FrameReader,
        fds: &mut Vec<(u64, OwnedFd)>,
        dst: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<Vec<OwnedFd>> {
        let range = frames.read_frame(&self.reading(fds), dst, self.max_message_size, deadline)?;
        if fds.is_empty() {
            return Ok(Vec::new());
        }
        fds.retain(|(at, _)| *at >= range.start);
        let (mine, later): (Vec<_>, Vec<_>) =
            std::mem::take(fds).into_iter().partition(|(at, _)| *at < range.end);
        *fds = later;
        Ok(mine.into_iter().map(|(_, fd)| fd).collect())
    }

    /// Whether a receive would return at once from bytes already read ahead (see
    /// [`FrameReader::ready`]). False while another thread is receiving.
    pub(crate) fn ready(&self) -> bool {
        self.recv.try_lock().is_some_and(|side| side.frames.ready(self.max_message_size))
    }

    pub(crate) fn set_read_ahead(&self, on: bool) {
        self.recv.lock().frames.set_exact(!on);
    }

    /// Refuses to hand this end to another process while it holds bytes read from the
    /// stream: they would stay behind in this copy.
    pub(crate) fn check_transferable(&self) -> std::result::Result<(), &'static str> {
        match self.send.try_lock() {
            Some(side) if side.pending().is_empty() => {}
            Some(_) => {
                return Err("this end holds the rest of a frame a non-blocking send started; \
                     flush it (try_flush) before sending the end");
            }
            None => return Err("another thread is sending on this end"),
        }
        match self.recv.try_lock() {
            Some(side) if !side.frames.holds_bytes() => Ok(()),
            Some(_) => Err("this end holds bytes it has read ahead (frames that arrived together, or a \
                 frame cut short by a timeout); receive them before sending the end, or turn read-ahead off"),
            None => Err("another thread is receiving on this end"),
        }
    }

    pub(crate) fn poll(&self, timeout: Option<Duration>) -> Result<bool> {
        if self.ready() {
            return Ok(true);
        }
        let mut fds = [PollFd::from_borrowed_fd(self.fd.as_fd(), PollFlags::IN)];
        Ok(poll_until(&mut fds, deadline(timeout))? > 0)
    }

    pub(crate) fn set_inheritable(&self, inheritable: bool) -> Result<()> {
        let flags = rustix::io::fcntl_getfd(&self.fd)?;
        let flags = if inheritable { flags - FdFlags::CLOEXEC } else { flags | FdFlags::CLOEXEC };
        rustix::io::fcntl_setfd(&self.fd, flags)?;
        Ok(())
    }
}

impl AsFd for End {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl fmt::Debug for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use std::os::fd::AsRawFd;
        f.debug_struct("End")
            .field("fd", &self.fd.as_raw_fd())
            .field("kind", &self.kind)
            .field("max_message_size", &self.max_message_size)
            .finish()
    }
}

/// An encoding's result and the fds it met; an end that refused to go is reported as such
/// (the encoding only says "custom error").
fn fds_or_refusal<R>((encoded, outgoing): (Result<R>, fdpass::Outgoing)) -> Result<(R, Vec<OwnedFd>)> {
    match (encoded, outgoing.refused) {
        (Err(_), Some(why)) => Err(Error::FdPassing(why)),
        (encoded, _) => Ok((encoded?, outgoing.fds)),
    }
}

/// Decodes a payload that came without fds, without the fd tables; only if that fails on an
/// end is it decoded again with them (for the precise error).
#[inline]
fn decode_without_fds<T: DeserializeOwned>(payload: &[u8]) -> Result<T> {
    match codec::decode(payload) {
        Err(_) if fdpass::end_met() => fdpass::providing(Vec::new(), || codec::decode(payload)),
        decoded => decoded,
    }
}

/// Makes `buf` hold only the header of a frame of `len` payload bytes: the header's length.
fn header_only(buf: &mut Vec<u8>, len: u64) -> usize {
    let mut header = [0; HEADER_MAX];
    let n = encode_header(len, &mut header);
    buf.clear();
    buf.extend_from_slice(&header[HEADER_MAX - n..]);
    n
}

fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now().checked_add(t).unwrap_or_else(far_future))
}

/// [`RawIo`] on a real file descriptor.
struct FdIo<'a> {
    fd: BorrowedFd<'a>,
    kind: Kind,
    /// Fds to attach (as `SCM_RIGHTS`) to the first bytes written; sockets only.
    outgoing: RefCell<Vec<OwnedFd>>,
    /// Where fds that arrive go, with the stream offset of the last byte read with them;
    /// `None` on the sending side. Sockets only.
    incoming: Option<RefCell<&'a mut Vec<(u64, OwnedFd)>>>,
    /// Writes must not wait: they fail with `WouldBlock` when there is no room.
    nowait: bool,
}

impl FdIo<'_> {
    /// Whether fds arrived through this reader.
    #[inline]
    fn received_fds(&self) -> bool {
        self.incoming.as_ref().is_some_and(|fds| !fds.borrow().is_empty())
    }
}

impl RawIo for FdIo<'_> {
    #[inline]
    fn read(&self, buf: &mut [u8], at: u64) -> io::Result<usize> {
        match (&self.incoming, self.kind) {
            // Fds ride on the first bytes of a frame, its header: read those with recvmsg.
            (Some(incoming), Kind::Socket) => {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fdpass::MAX_FDS))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let got = rustix::net::recvmsg(
                    self.fd,
                    &mut [IoSliceMut::new(buf)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )?;
                let last = at + got.bytes.saturating_sub(1) as u64;
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(fds) = message {
                        incoming.borrow_mut().extend(fds.map(|fd| (last, fd)));
                    }
                }
                Ok(got.bytes)
            }
            _ => Ok(rustix::io::read(self.fd, buf)?),
        }
    }

    fn read_append(&self, dst: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        sys::read_append(self.fd, dst, max)
    }

    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.kind == Kind::Pipe && self.nowait {
            // O_NONBLOCK would change the end for every process sharing it; `RWF_NOWAIT`
            // says "do not wait" for this call alone: as much as fits goes now (the offset
            // -1, all ones, is "none", which a pipe needs).
            if !PIPES_REFUSE_NOWAIT.load(Ordering::Relaxed) {
                match rustix::io::pwritev2(self.fd, bufs, u64::MAX, ReadWriteFlags::NOWAIT) {
                    Ok(n) => return Ok(n),
                    Err(Errno::AGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
                    // Older kernels (before 5.x) do not take it for pipes.
                    Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => {
                        PIPES_REFUSE_NOWAIT.store(true, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            // Without it: a pipe that polls writable has room for PIPE_BUF bytes, so write
            // at most that much, and only then.
            let mut fds = [PollFd::from_borrowed_fd(self.fd, PollFlags::OUT)];
            if rustix::event::poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 }))? == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
            return Ok(rustix::io::write(self.fd, &first[..first.len().min(PIPE_NOWAIT_CHUNK)])?);
        }
        if self.kind == Kind::Pipe {
            // A frame in one slice (typed, or small) goes with plain write(2), which costs
            // less than writev(2).
            return Ok(match bufs {
                [one] => rustix::io::write(self.fd, one)?,
                [one, rest] if rest.is_empty() => rustix::io::write(self.fd, one)?,
                _ => rustix::io::writev(self.fd, bufs)?,
            });
        }
        let flags = if self.nowait { SendFlags::NOSIGNAL | SendFlags::DONTWAIT } else { SendFlags::NOSIGNAL };
        let mut outgoing = self.outgoing.borrow_mut();
        if outgoing.is_empty() {
            // Without fds, a frame in one slice goes with send(2), which the kernel serves with
            // less work than sendmsg(2) (no message header or iovec array to copy in).
            let single = match bufs {
                [one] => Some(one),
                [one, rest] if rest.is_empty() => Some(one),
                _ => None,
            };
            if let Some(one) = single {
                return Ok(rustix::net::send(self.fd, one, flags)?);
            }
            let mut none = SendAncillaryBuffer::default();
            return Ok(rustix::net::sendmsg(self.fd, bufs, &mut none, flags)?);
        }
        let borrowed: Vec<BorrowedFd<'_>> = outgoing.iter().map(|fd| fd.as_fd()).collect();
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(borrowed.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&borrowed));
        let n = rustix::net::sendmsg(self.fd, bufs, &mut control, flags)?;
        // The kernel took the fds with these bytes: the rest of the frame goes without.
        drop(borrowed);
        outgoing.clear();
        Ok(n)
    }

    fn wait_readable(&self, deadline: Instant) -> io::Result<bool> {
        let mut fds = [PollFd::from_borrowed_fd(self.fd, PollFlags::IN)];
        Ok(poll_until(&mut fds, Some(deadline))? > 0)
    }

    fn wait_writable(&self) -> io::Result<()> {
        let mut fds = [PollFd::from_borrowed_fd(self.fd, PollFlags::OUT)];
        poll_until(&mut fds, None).map(drop)
    }
}

/// The fd traits and conversions every typed end has, written once.
macro_rules! impl_end_traits {
    ($name:ident < $($g:ident),* >) => {
        impl<$($g),*> std::os::fd::AsFd for $name<$($g),*> {
            fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                std::os::fd::AsFd::as_fd(&self.end)
            }
        }

        impl<$($g),*> std::os::fd::AsRawFd for $name<$($g),*> {
            fn as_raw_fd(&self) -> std::os::fd::RawFd {
                std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(&self.end))
            }
        }

        impl<$($g),*> std::os::fd::IntoRawFd for $name<$($g),*> {
            fn into_raw_fd(self) -> std::os::fd::RawFd {
                std::os::fd::IntoRawFd::into_raw_fd(self.end.into_fd())
            }
        }

        impl<$($g),*> From<$name<$($g),*>> for std::os::fd::OwnedFd {
            fn from(end: $name<$($g),*>) -> std::os::fd::OwnedFd {
                end.end.into_fd()
            }
        }

        impl<$($g),*> From<std::os::fd::OwnedFd> for $name<$($g),*> {
            /// Takes over `fd`: a pipe end, a connected socket, or an fd inherited from a
            /// parent process. Sockets are written with `MSG_NOSIGNAL`.
            fn from(fd: std::os::fd::OwnedFd) -> Self {
                let kind = $crate::end::Kind::of(std::os::fd::AsFd::as_fd(&fd));
                Self::from_end($crate::end::End::new(fd, kind))
            }
        }

        impl<$($g),*> $crate::wait::Waitable for $name<$($g),*> {
            fn wait_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                std::os::fd::AsFd::as_fd(&self.end)
            }

            fn ready(&self) -> bool {
                self.end.ready()
            }
        }

        impl<$($g),*> std::fmt::Debug for $name<$($g),*> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_tuple(stringify!($name)).field(&self.end).finish()
            }
        }
    };
}
pub(crate) use impl_end_traits;
