//! Framing: CPython's `multiprocessing.connection` wire format, as pure logic over [`RawIo`].
//!
//! A frame is a 4-byte big-endian signed length and the payload. A payload longer than
//! `i32::MAX` bytes gets the header `-1` followed by an 8-byte big-endian unsigned length.
//! Any other negative length is invalid.
//!
//! Nothing here touches a file descriptor: [`FrameReader`] and [`write_frame`] drive a
//! [`RawIo`], which the real ends implement with syscalls and the tests with scripted short
//! reads, short writes and interruptions.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::ops::Range;
use std::time::Instant;

use crate::error::{Error, Result};

/// Payloads up to this length use the 4-byte header.
pub(crate) const SHORT_MAX: u64 = i32::MAX as u64;
/// The longest header: `-1` and an 8-byte length.
pub(crate) const HEADER_MAX: usize = 12;
/// What a receive buffer grows by at most before the bytes to fill it have arrived, so a header
/// that claims a huge length costs nothing until the peer really sends that much.
const RESERVE_STEP: usize = 16 << 20;

/// The bytes a file descriptor (or a test double) moves. Implementations may return
/// [`io::ErrorKind::Interrupted`] at any time and may read or write fewer bytes than asked.
pub(crate) trait RawIo {
    /// Reads into `buf`, whose first byte is at stream offset `at`; `Ok(0)` is end of file.
    fn read(&self, buf: &mut [u8], at: u64) -> io::Result<usize>;
    /// Appends at most `max` bytes to `dst` (in its spare capacity); `Ok(0)` is end of file.
    fn read_append(&self, dst: &mut Vec<u8>, max: usize) -> io::Result<usize>;
    /// Reads into the front of `buf`, which need not be initialized: the bytes read (none at
    /// end of file). For a stream that carries no fds (see [`FrameReader::stream_payload`]).
    fn read_uninit<'b>(&self, buf: &'b mut [MaybeUninit<u8>]) -> io::Result<&'b mut [u8]>;
    /// Writes some prefix of `bufs`.
    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Waits until a read would not block or `deadline` passes; `Ok(false)` on the deadline.
    fn wait_readable(&self, deadline: Instant) -> io::Result<bool>;
    /// Waits until a write would not block (for an fd made non-blocking elsewhere).
    fn wait_writable(&self) -> io::Result<()>;
}

/// The header for a payload of `len` bytes, right-aligned in 12 bytes: the header is
/// `buf[HEADER_MAX - n..]` where `n` is the returned length.
pub(crate) fn encode_header(len: u64, buf: &mut [u8; HEADER_MAX]) -> usize {
    if len <= SHORT_MAX {
        buf[8..].copy_from_slice(&(len as u32).to_be_bytes());
        4
    } else {
        buf[..4].copy_from_slice(&(-1i32).to_be_bytes());
        buf[4..].copy_from_slice(&len.to_be_bytes());
        12
    }
}

/// What the first four bytes of a frame say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShortHeader {
    /// The payload length.
    Len(u64),
    /// `-1`: the length follows as 8 bytes.
    Long,
    /// Any other negative number.
    Invalid(i32),
}

#[inline]
pub(crate) fn decode_short(bytes: [u8; 4]) -> ShortHeader {
    match i32::from_be_bytes(bytes) {
        n if n >= 0 => ShortHeader::Len(n as u64),
        -1 => ShortHeader::Long,
        n => ShortHeader::Invalid(n),
    }
}

/// Writes one whole frame: `header` then `payload`, in one `writev` where the kernel takes it,
/// going on after short writes and interruptions, and waiting for room where the fd does not
/// wait (made non-blocking elsewhere: a part of a frame is never reported as sent).
pub(crate) fn write_frame(io: &impl RawIo, header: &[u8], payload: &[u8]) -> Result<()> {
    let total = header.len() + payload.len();
    let mut written = write_some(io, header, payload)?;
    while written < total {
        io.wait_writable()?;
        written = write_rest(io, &mut [IoSlice::new(header), IoSlice::new(payload)], written)?;
    }
    Ok(())
}

/// Writes as much of `header` then `payload` as `io` takes: all of it, unless `io` does not
/// wait and runs out of room (`WouldBlock`); the bytes written.
pub(crate) fn write_some(io: &impl RawIo, header: &[u8], payload: &[u8]) -> Result<usize> {
    let mut bufs = [IoSlice::new(header), IoSlice::new(payload)];
    // Nearly always one call takes the whole frame: then there is nothing to advance.
    let total = header.len() + payload.len();
    if total == 0 {
        return Ok(0);
    }
    match io.write_vectored(&bufs) {
        Ok(n) if n == total => return Ok(n),
        Ok(0) => return Err(Error::Io(io::ErrorKind::WriteZero.into())),
        Ok(n) => return write_rest(io, &mut bufs, n),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
        Err(e) => return Err(e.into()),
    }
    write_rest(io, &mut bufs, 0)
}

/// [`write_some`] after a first call wrote `written` bytes of `bufs`.
fn write_rest(io: &impl RawIo, bufs: &mut [IoSlice<'_>; 2], mut written: usize) -> Result<usize> {
    let mut rest: &mut [IoSlice<'_>] = bufs;
    IoSlice::advance_slices(&mut rest, written);
    while !rest.is_empty() {
        match io.write_vectored(rest) {
            Ok(0) => return Err(Error::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                IoSlice::advance_slices(&mut rest, n);
                written += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(written),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(written)
}

/// How [`FrameReader::stream_payload`] hands a decode the rest of a payload: reads into the
/// front of the room given and returns the bytes read (none after an interruption).
pub(crate) type StreamRead<'a> = &'a mut dyn for<'b> FnMut(&'b mut [MaybeUninit<u8>]) -> Result<&'b mut [u8]>;

/// How many bytes a header read may take at once when reading ahead: a burst of small frames
/// arrives in one `read(2)`, and a lone small frame with its header in one.
const AHEAD: usize = 16 << 10;
/// Where the read-ahead buffer starts: it doubles (up to [`AHEAD`]) each time a read fills it,
/// so an end that only ever carries a few small messages stays small.
const AHEAD_FIRST: usize = 256;

/// Where the reader stands in the byte stream. Kept between calls, so a receive that times out
/// (or fails for a passing reason) loses nothing: the next one carries on.
#[derive(Debug)]
enum Stage {
    /// Reading a header (its bytes gather in the read-ahead buffer).
    Header,
    /// Reading a payload of `len` bytes; the frame began at stream offset `start`.
    Payload { len: usize, header_len: usize, start: u64 },
    /// Discarding an oversized frame of `len` bytes (header included), `remaining` still to come.
    Skip { len: u64, remaining: u64 },
    /// An invalid header was read: the stream cannot be followed any more.
    Broken { header: i32 },
}

/// What the bytes at the start of a buffer say about the frame there.
enum Parsed {
    /// A header of `header_len` bytes for a payload of `len`.
    Header { len: u64, header_len: usize },
    /// Not a header at all.
    Invalid(i32),
    /// At least this many bytes are needed to tell.
    Need(usize),
}

#[inline]
fn parse_header(bytes: &[u8]) -> Parsed {
    let Some(short) = bytes.first_chunk::<4>() else { return Parsed::Need(4) };
    match decode_short(*short) {
        ShortHeader::Len(len) => Parsed::Header { len, header_len: 4 },
        ShortHeader::Invalid(header) => Parsed::Invalid(header),
        ShortHeader::Long => match bytes.get(4..HEADER_MAX) {
            Some(long) => {
                Parsed::Header { len: u64::from_be_bytes(long.try_into().unwrap()), header_len: 12 }
            }
            None => Parsed::Need(HEADER_MAX),
        },
    }
}

/// A whole frame found in the read-ahead buffer by [`FrameReader::buffered_frame`].
pub(crate) struct Buffered<'a> {
    header_len: usize,
    len: usize,
    reader: &'a mut FrameReader,
}

impl Buffered<'_> {
    /// The frame's payload, in the read-ahead buffer.
    #[inline]
    pub(crate) fn payload(&self) -> &[u8] {
        let at = self.reader.start + self.header_len;
        &self.reader.ahead[at..at + self.len]
    }

    /// Consumes the frame: the range of stream offsets it covers (header included).
    #[inline]
    pub(crate) fn take(self) -> Range<u64> {
        let frame = self.header_len + self.len;
        let frame_start = self.reader.offset - (self.reader.end - self.reader.start) as u64;
        self.reader.consume(frame);
        frame_start..frame_start + frame as u64
    }
}

/// Reads frames from a byte stream, one at a time.
///
/// By default a header read takes whatever has arrived, up to [`AHEAD`] bytes, so a small
/// frame costs one `read(2)` and a burst of them fewer still; the bytes past the frame wait in
/// the reader for the next call. Payloads are read with their exact length, straight into the
/// destination. In exact mode every read stops at the end of the current frame, so several
/// processes taking turns on one end each get whole frames and nothing waits in a buffer.
#[derive(Debug)]
pub(crate) struct FrameReader {
    stage: Stage,
    /// Bytes read from the stream and not yet consumed: `ahead[start..end]`. Allocated at the
    /// first read.
    ahead: Vec<u8>,
    start: usize,
    end: usize,
    /// The stream offset of `ahead[end]`: how many bytes have been read in all.
    offset: u64,
    /// Never read past the end of the current frame.
    exact: bool,
    /// Payload bytes of a frame that arrived in part before a receive gave up.
    partial: Vec<u8>,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    pub(crate) fn new() -> Self {
        FrameReader {
            stage: Stage::Header,
            ahead: Vec::new(),
            start: 0,
            end: 0,
            offset: 0,
            exact: false,
            partial: Vec::new(),
        }
    }

    /// Exact mode on or off (see the type's doc).
    pub(crate) fn set_exact(&mut self, exact: bool) {
        self.exact = exact;
    }

    /// Bytes read from the stream that no frame has taken yet, including a frame cut short
    /// by a timeout.
    pub(crate) fn holds_bytes(&self) -> bool {
        self.start < self.end || !self.partial.is_empty() || !matches!(self.stage, Stage::Header)
    }

    /// Whether the next [`read_frame`](Self::read_frame) returns without reading the stream:
    /// a whole frame (or an error the buffered bytes already decide) is buffered.
    ///
    /// When this is false, the stream itself must become readable for a receive to progress,
    /// so waiting on the fd is right.
    pub(crate) fn ready(&self, max: usize) -> bool {
        let mut buffered = &self.ahead[self.start..self.end];
        match self.stage {
            Stage::Broken { .. } => return true,
            Stage::Payload { .. } => return false,
            Stage::Skip { remaining, .. } => match buffered.get(remaining as usize..) {
                Some(rest) if remaining <= buffered.len() as u64 => buffered = rest,
                _ => return false,
            },
            Stage::Header => {}
        }
        match parse_header(buffered) {
            Parsed::Header { len, header_len } => {
                len > max as u64 || (buffered.len() - header_len) as u64 >= len
            }
            Parsed::Invalid(_) => true,
            Parsed::Need(_) => false,
        }
    }

    /// Reads the next whole frame's payload into `dst` (replacing its contents) and returns
    /// the range of stream offsets the frame (header included) covers.
    ///
    /// `max` bounds the payload length, checked before allocating; `deadline` bounds the wait.
    pub(crate) fn read_frame(
        &mut self,
        io: &impl RawIo,
        dst: &mut Vec<u8>,
        max: usize,
        deadline: Option<Instant>,
    ) -> Result<Range<u64>> {
        dst.clear();
        if let Some(range) = self.small_frame(io, dst, max, deadline)? {
            return Ok(range);
        }
        loop {
            match self.stage {
                Stage::Broken { header } => return Err(Error::InvalidHeader { header }),
                Stage::Skip { len, remaining } => self.skip(io, len, remaining, deadline)?,
                Stage::Header => {
                    let (len, header_len, start) = self.read_header(io, deadline)?;
                    if len > max as u64 {
                        self.stage = Stage::Skip { len: len + header_len as u64, remaining: len };
                        return Err(Error::TooLarge { len, max: max as u64 });
                    }
                    // `len <= max`, so it fits in usize.
                    self.stage = Stage::Payload { len: len as usize, header_len, start };
                }
                Stage::Payload { len, header_len, start } => {
                    self.read_payload(io, dst, len, header_len, deadline)?;
                    return Ok(start..start + (header_len + len) as u64);
                }
            }
        }
    }

    /// Starts the next frame for a receive that decodes the payload as it reads it (a large
    /// typed value, whose sequences of bytes and floats then go straight from the stream into
    /// the values they become): reads its header, waiting without a deadline. `Some(len)` when
    /// the payload is at least `min` bytes and not all buffered: [`stream_payload`] reads it.
    /// `None` otherwise, or when a frame is already under way: [`read_frame`] carries on from
    /// where this left the reader.
    ///
    /// [`stream_payload`]: Self::stream_payload
    /// [`read_frame`]: Self::read_frame
    pub(crate) fn large_frame(&mut self, io: &impl RawIo, max: usize, min: usize) -> Result<Option<usize>> {
        if !matches!(self.stage, Stage::Header) || !self.partial.is_empty() {
            return Ok(None);
        }
        let (len, header_len, start) = self.read_header(io, None)?;
        if len > max as u64 {
            self.stage = Stage::Skip { len: len + header_len as u64, remaining: len };
            return Err(Error::TooLarge { len, max: max as u64 });
        }
        let len = len as usize;
        self.stage = Stage::Payload { len, header_len, start };
        Ok((len >= min && len > self.end - self.start).then_some(len))
    }

    /// Reads the payload [`large_frame`](Self::large_frame) announced as `decode(front, left,
    /// read)` decodes it: `front` is what is buffered, `left` how many bytes are still in the
    /// stream, and `read` reads the next of them into the front of the room it is given and
    /// returns them (waiting without a deadline; none after an interruption, to be called
    /// again; [`Error::Truncated`] at end of file). `decode` returns its
    /// result and how many bytes it left unread; those are skipped (after an error), so the
    /// stream stays at the next frame.
    pub(crate) fn stream_payload<T>(
        &mut self,
        io: &impl RawIo,
        decode: impl FnOnce(&[u8], usize, StreamRead<'_>) -> (Result<T>, usize),
    ) -> Result<T> {
        let Stage::Payload { len, header_len, .. } = self.stage else {
            unreachable!("stream_payload follows large_frame")
        };
        let front = self.end - self.start;
        let (mut read, mut ended) = (0, false);
        let (result, unread) =
            decode(&self.ahead[self.start..self.end], len - front, &mut |room: &mut [MaybeUninit<u8>]| {
                match io.read_uninit(room) {
                    Ok([]) => {
                        ended = true;
                        Err(Error::Truncated {
                            expected: (header_len + len) as u64,
                            received: (header_len + front + read) as u64,
                        })
                    }
                    Ok(got) => {
                        read += got.len();
                        Ok(got)
                    }
                    // Nothing read: called again.
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(&mut []),
                    Err(e) => Err(e.into()),
                }
            });
        self.offset += read as u64;
        self.consume(front);
        self.stage = Stage::Header;
        if unread > 0 && !ended {
            self.skip(io, (header_len + len) as u64, unread as u64, None)?;
        }
        result
    }

    /// The common case in few steps: reading ahead, between frames, with nothing buffered or
    /// a whole frame buffered; one read if nothing is, and the frame taken if that brought a
    /// whole one. `None` when it did not (the general path carries on from where this left
    /// the reader: nothing it did is lost).
    fn small_frame(
        &mut self,
        io: &impl RawIo,
        dst: &mut Vec<u8>,
        max: usize,
        deadline: Option<Instant>,
    ) -> Result<Option<Range<u64>>> {
        let Some(frame) = self.buffered_frame(io, max, deadline)? else { return Ok(None) };
        dst.extend_from_slice(frame.payload());
        Ok(Some(frame.take()))
    }

    /// [`small_frame`](Self::small_frame) without the copy: the next frame when it is (or one
    /// read makes it) whole in the read-ahead buffer, its payload readable in place. The frame
    /// is consumed when the returned [`Buffered`] is taken; until then the reader is as if it
    /// had not been found (the next call finds it again).
    #[inline]
    pub(crate) fn buffered_frame(
        &mut self,
        io: &impl RawIo,
        max: usize,
        deadline: Option<Instant>,
    ) -> Result<Option<Buffered<'_>>> {
        if self.exact || !matches!(self.stage, Stage::Header) || !self.partial.is_empty() {
            return Ok(None);
        }
        if self.start == self.end && !self.ahead.is_empty() {
            // Nothing buffered (so `start` and `end` are 0): one read, as much as has come.
            let at = self.offset;
            let n = read_some(deadline, io, |io| io.read(&mut self.ahead, at))?;
            if n == 0 {
                return Err(Error::Closed);
            }
            self.end = n;
            self.offset += n as u64;
            self.grow_if_filled();
        }
        let buffered = &self.ahead[self.start..self.end];
        let Parsed::Header { len, header_len } = parse_header(buffered) else { return Ok(None) };
        if len > max as u64 || len > (buffered.len() - header_len) as u64 {
            return Ok(None);
        }
        Ok(Some(Buffered { header_len, len: len as usize, reader: self }))
    }

    /// After a read that filled the read-ahead buffer, doubles it (up to [`AHEAD`]) unless it
    /// holds only the start of one frame longer than itself (see [`one_big_frame`]).
    ///
    /// [`one_big_frame`]: Self::one_big_frame
    #[inline]
    fn grow_if_filled(&mut self) {
        // A read that did not fill the buffer (nearly every one) decides it here.
        if self.end == self.ahead.len() {
            self.grow_if_worth_it();
        }
    }

    #[cold]
    fn grow_if_worth_it(&mut self) {
        if self.ahead.len() < AHEAD && !self.exact && !self.one_big_frame() {
            // More may be waiting: read more at once next time.
            self.ahead.resize(self.ahead.len() * 2, 0);
        }
    }

    /// Reads until a whole header is buffered and takes it; returns the payload length, the
    /// header's own length and the frame's stream offset.
    fn read_header(&mut self, io: &impl RawIo, deadline: Option<Instant>) -> Result<(u64, usize, u64)> {
        loop {
            let buffered = self.end - self.start;
            let frame_start = self.offset - buffered as u64;
            let need = match parse_header(&self.ahead[self.start..self.end]) {
                Parsed::Header { len, header_len } => {
                    self.consume(header_len);
                    return Ok((len, header_len, frame_start));
                }
                Parsed::Invalid(header) => {
                    self.consume(4);
                    self.stage = Stage::Broken { header };
                    return Err(Error::InvalidHeader { header });
                }
                Parsed::Need(need) => need,
            };
            if self.ahead.is_empty() {
                self.ahead = vec![0; AHEAD_FIRST];
            }
            if self.ahead.len() - self.start < HEADER_MAX {
                self.ahead.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, buffered);
            }
            let limit = if self.exact { self.start + need } else { self.ahead.len() };
            let at = self.offset;
            let room = &mut self.ahead[self.end..limit];
            let n = read_some(deadline, io, |io| io.read(room, at))?;
            if n == 0 {
                self.consume(buffered);
                return Err(if buffered == 0 {
                    Error::Closed
                } else {
                    Error::Truncated { expected: need as u64, received: buffered as u64 }
                });
            }
            self.end += n;
            self.offset += n as u64;
            self.grow_if_filled();
        }
    }

    /// Whether the buffer holds only the start of one frame longer than the buffer: then its
    /// payload goes straight to its destination, and a larger buffer would only copy more of
    /// it twice (so the buffer grows for bursts of frames, not for large ones).
    fn one_big_frame(&self) -> bool {
        match parse_header(&self.ahead[self.start..self.end]) {
            Parsed::Header { len, header_len } => {
                (header_len as u64).saturating_add(len) > (self.ahead.len() - self.start) as u64
            }
            Parsed::Invalid(_) | Parsed::Need(_) => false,
        }
    }

    /// Drops `n` buffered bytes from the front.
    #[inline]
    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
    }

    /// Moves up to `max` buffered bytes into `dst`; returns how many.
    fn take_buffered(&mut self, dst: &mut Vec<u8>, max: usize) -> usize {
        let n = max.min(self.end - self.start);
        dst.extend_from_slice(&self.ahead[self.start..self.start + n]);
        self.consume(n);
        n
    }

    fn read_payload(
        &mut self,
        io: &impl RawIo,
        dst: &mut Vec<u8>,
        len: usize,
        header_len: usize,
        deadline: Option<Instant>,
    ) -> Result<()> {
        if !self.partial.is_empty() {
            std::mem::swap(dst, &mut self.partial);
        }
        dst.reserve(len.min(RESERVE_STEP).saturating_sub(dst.len()));
        let want = len - dst.len();
        self.take_buffered(dst, want);
        while dst.len() < len {
            if dst.capacity() == dst.len() {
                // Grow with what has arrived: at most doubling, never past the frame.
                dst.reserve((len - dst.len()).min(dst.len().max(RESERVE_STEP)));
            }
            let want = len - dst.len();
            match read_some(deadline, io, |io| io.read_append(dst, want)) {
                Ok(0) => {
                    let received = (header_len + dst.len()) as u64;
                    dst.clear();
                    self.stage = Stage::Header;
                    return Err(Error::Truncated { expected: (header_len + len) as u64, received });
                }
                Ok(n) => self.offset += n as u64,
                Err(e) => {
                    self.partial = std::mem::take(dst);
                    return Err(e);
                }
            }
        }
        self.stage = Stage::Header;
        Ok(())
    }

    fn skip(
        &mut self,
        io: &impl RawIo,
        len: u64,
        mut remaining: u64,
        deadline: Option<Instant>,
    ) -> Result<()> {
        let buffered = remaining.min((self.end - self.start) as u64);
        self.consume(buffered as usize);
        remaining -= buffered;
        let mut sink = [0u8; 8192];
        while remaining > 0 {
            let want = remaining.min(sink.len() as u64) as usize;
            let at = self.offset;
            let n = match read_some(deadline, io, |io| io.read(&mut sink[..want], at)) {
                Ok(n) => n,
                Err(e) => {
                    self.stage = Stage::Skip { len, remaining };
                    return Err(e);
                }
            };
            if n == 0 {
                self.stage = Stage::Header;
                return Err(Error::Truncated { expected: len, received: len - remaining });
            }
            self.offset += n as u64;
            remaining -= n as u64;
        }
        self.stage = Stage::Header;
        Ok(())
    }
}

/// One read that makes progress: waits for the deadline if there is one, and goes on after
/// interruptions by signals.
#[inline]
fn read_some<I: RawIo>(
    deadline: Option<Instant>,
    io: &I,
    mut read: impl FnMut(&I) -> io::Result<usize>,
) -> Result<usize> {
    loop {
        if let Some(deadline) = deadline {
            match io.wait_readable(deadline) {
                Ok(true) => {}
                Ok(false) => return Err(Error::Timeout),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        match read(io) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map_err(Error::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    /// A byte stream that hands out data in scripted chunk sizes, raises `EINTR` on a script,
    /// and takes writes in scripted chunk sizes too.
    #[derive(Default)]
    struct ScriptedIo {
        input: Vec<u8>,
        pos: Cell<usize>,
        /// Chunk limits for reads and writes, cycled; 0 means "interrupted".
        chunks: Vec<usize>,
        step: Cell<usize>,
        /// Bytes written.
        output: RefCell<Vec<u8>>,
        /// Input beyond this offset has "not arrived yet": waits on it time out.
        arrived: Cell<usize>,
    }

    impl ScriptedIo {
        fn new(input: Vec<u8>, chunks: Vec<usize>) -> Self {
            let arrived = Cell::new(input.len());
            ScriptedIo { input, chunks, arrived, ..Default::default() }
        }

        fn limit(&self, want: usize) -> io::Result<usize> {
            if self.chunks.is_empty() {
                return Ok(want);
            }
            let step = self.step.get();
            self.step.set(step + 1);
            match self.chunks[step % self.chunks.len()] {
                0 => Err(io::ErrorKind::Interrupted.into()),
                n => Ok(want.min(n)),
            }
        }

        fn available(&self) -> &[u8] {
            &self.input[self.pos.get()..self.arrived.get()]
        }

        fn take(&self, want: usize) -> io::Result<&[u8]> {
            let n = self.limit(want)?.min(self.available().len());
            let start = self.pos.get();
            self.pos.set(start + n);
            Ok(&self.input[start..start + n])
        }
    }

    impl RawIo for ScriptedIo {
        fn read(&self, buf: &mut [u8], _at: u64) -> io::Result<usize> {
            let bytes = self.take(buf.len())?;
            buf[..bytes.len()].copy_from_slice(bytes);
            Ok(bytes.len())
        }

        fn read_append(&self, dst: &mut Vec<u8>, max: usize) -> io::Result<usize> {
            let bytes = self.take(max)?;
            dst.extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn read_uninit<'b>(&self, buf: &'b mut [MaybeUninit<u8>]) -> io::Result<&'b mut [u8]> {
            let bytes = self.take(buf.len())?;
            Ok(crate::sys::write_front(buf, bytes))
        }

        fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            let mut n = self.limit(total)?;
            let written = n;
            for buf in bufs {
                let k = n.min(buf.len());
                self.output.borrow_mut().extend_from_slice(&buf[..k]);
                n -= k;
            }
            Ok(written)
        }

        fn wait_readable(&self, _deadline: Instant) -> io::Result<bool> {
            // End of file is readable too: only input that has not arrived yet blocks.
            Ok(!self.available().is_empty() || self.arrived.get() == self.input.len())
        }

        fn wait_writable(&self) -> io::Result<()> {
            Err(io::Error::other("the script has no room to wait for"))
        }
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut header = [0; HEADER_MAX];
        let n = encode_header(payload.len() as u64, &mut header);
        let mut out = header[HEADER_MAX - n..].to_vec();
        out.extend_from_slice(payload);
        out
    }

    fn read_all(io: &ScriptedIo, max: usize, exact: bool) -> (Vec<Vec<u8>>, Error) {
        let mut reader = FrameReader::new();
        reader.set_exact(exact);
        let mut frames = Vec::new();
        loop {
            let mut dst = Vec::new();
            match reader.read_frame(io, &mut dst, max, None) {
                Ok(_) => frames.push(dst),
                Err(e) => return (frames, e),
            }
        }
    }

    #[test]
    fn header_matches_cpython() {
        let mut h = [0; HEADER_MAX];
        assert_eq!(encode_header(5, &mut h), 4);
        assert_eq!(&h[8..], &[0, 0, 0, 5]);
        assert_eq!(encode_header(SHORT_MAX, &mut h), 4);
        assert_eq!(&h[8..], &[0x7f, 0xff, 0xff, 0xff]);
        // Python: struct.pack("!i", -1) + struct.pack("!Q", n) for n > 0x7fffffff.
        assert_eq!(encode_header(SHORT_MAX + 1, &mut h), 12);
        assert_eq!(h, [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0x80, 0, 0, 0]);
        assert_eq!(decode_short([0, 0, 1, 0]), ShortHeader::Len(256));
        assert_eq!(decode_short([0xff; 4]), ShortHeader::Long);
        assert_eq!(decode_short([0xff, 0xff, 0xff, 0xfe]), ShortHeader::Invalid(-2));
    }

    #[test]
    fn long_header_is_read_and_checked_before_allocating() {
        // -1 then 2^60: far above any limit.
        let mut input = vec![0xff; 4];
        input.extend_from_slice(&(1u64 << 60).to_be_bytes());
        let io = ScriptedIo::new(input, vec![1, 0, 3]);
        let mut dst = Vec::new();
        let err = FrameReader::new().read_frame(&io, &mut dst, 1 << 20, None).unwrap_err();
        assert!(matches!(err, Error::TooLarge { len, max } if len == 1 << 60 && max == 1 << 20), "{err}");
        assert_eq!(dst.capacity(), 0, "nothing allocated for a rejected frame");
    }

    #[test]
    fn long_header_within_limit_reads_payload() {
        let mut input = vec![0xff; 4];
        input.extend_from_slice(&3u64.to_be_bytes());
        input.extend_from_slice(b"abc");
        let (frames, end) = read_all(&ScriptedIo::new(input, vec![]), 100, false);
        assert_eq!(frames, vec![b"abc".to_vec()]);
        assert!(matches!(end, Error::Closed));
    }

    #[test]
    fn oversized_frame_is_skipped_and_the_next_one_reads() {
        let mut input = frame(&[7; 100]);
        input.extend(frame(b"next"));
        let io = ScriptedIo::new(input, vec![13, 0]);
        let mut reader = FrameReader::new();
        let mut dst = Vec::new();
        assert!(matches!(
            reader.read_frame(&io, &mut dst, 10, None),
            Err(Error::TooLarge { len: 100, max: 10 })
        ));
        reader.read_frame(&io, &mut dst, 10, None).unwrap();
        assert_eq!(dst, b"next");
    }

    #[test]
    fn invalid_header_breaks_the_stream_for_good() {
        let mut input = (-5i32).to_be_bytes().to_vec();
        input.extend(frame(b"never"));
        let io = ScriptedIo::new(input, vec![]);
        let mut reader = FrameReader::new();
        for _ in 0..3 {
            let err = reader.read_frame(&io, &mut Vec::new(), 100, None).unwrap_err();
            assert!(matches!(err, Error::InvalidHeader { header: -5 }), "{err}");
        }
    }

    #[test]
    fn eof_in_header_and_payload_is_truncated_then_closed() {
        let io = ScriptedIo::new(vec![0, 0], vec![]);
        let (_, err) = read_all(&io, 100, true);
        assert!(matches!(err, Error::Truncated { expected: 4, received: 2 }), "{err}");

        let mut input = frame(b"hello");
        input.truncate(7);
        let io = ScriptedIo::new(input, vec![]);
        let mut reader = FrameReader::new();
        let err = reader.read_frame(&io, &mut Vec::new(), 100, None).unwrap_err();
        assert!(matches!(err, Error::Truncated { expected: 9, received: 7 }), "{err}");
        let err = reader.read_frame(&io, &mut Vec::new(), 100, None).unwrap_err();
        assert!(matches!(err, Error::Closed), "{err}");
    }

    #[test]
    fn timeout_mid_frame_keeps_what_arrived() {
        let mut input = frame(b"first message");
        input.extend(frame(b"second"));
        let io = ScriptedIo::new(input, vec![3]);
        let mut reader = FrameReader::new();
        let soon = Some(Instant::now() + Duration::from_millis(1));
        // The stream arrives a few bytes at a time; each receive times out part way.
        let mut got = Vec::new();
        for arrived in [2, 6, 10, 30] {
            io.arrived.set(arrived.min(io.input.len()));
            let mut dst = b"junk".to_vec();
            match reader.read_frame(&io, &mut dst, 100, soon) {
                Ok(_) => got.push(dst),
                Err(Error::Timeout) => assert!(dst.is_empty()),
                Err(e) => panic!("{e}"),
            }
        }
        let mut dst = Vec::new();
        reader.read_frame(&io, &mut dst, 100, soon).unwrap();
        got.push(dst);
        assert_eq!(got, vec![b"first message".to_vec(), b"second".to_vec()]);
    }

    /// Frames laid end to end, and the stream offset where each one ends.
    fn stream(payloads: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let mut wire = Vec::new();
        let mut ends = Vec::new();
        for p in payloads {
            wire.extend(frame(p));
            ends.push(wire.len());
        }
        (wire, ends)
    }

    #[test]
    fn read_ahead_takes_a_burst_of_frames_in_one_read() {
        let (wire, _) = stream(&[b"one", b"two", b"three"]);
        let io = ScriptedIo::new(wire, vec![]);
        let mut reader = FrameReader::new();
        let mut dst = Vec::new();
        assert!(!reader.ready(100), "nothing read yet");
        assert_eq!(reader.read_frame(&io, &mut dst, 100, None).unwrap(), 0..7);
        assert_eq!(dst, b"one");
        assert_eq!(io.step.get(), 0, "unscripted reads are not counted");
        assert_eq!(io.pos.get(), io.input.len(), "one read took the whole burst");
        assert!(reader.ready(100) && reader.holds_bytes());
        assert_eq!(reader.read_frame(&io, &mut dst, 100, None).unwrap(), 7..14);
        assert_eq!(dst, b"two");
        assert_eq!(reader.read_frame(&io, &mut dst, 100, None).unwrap(), 14..23);
        assert_eq!(dst, b"three");
        assert!(!reader.ready(100) && !reader.holds_bytes());
        assert!(matches!(reader.read_frame(&io, &mut dst, 100, None), Err(Error::Closed)));
    }

    #[test]
    fn exact_mode_never_reads_past_the_frame() {
        let (wire, ends) = stream(&[b"one", b"", b"a longer payload", &[9; 5000]]);
        let io = ScriptedIo::new(wire, vec![]);
        let mut reader = FrameReader::new();
        reader.set_exact(true);
        for end in ends {
            reader.read_frame(&io, &mut Vec::new(), 1 << 20, None).unwrap();
            assert_eq!(io.pos.get(), end, "the stream stands at the end of the frame");
            assert!(!reader.holds_bytes() && !reader.ready(1 << 20));
        }
    }

    #[test]
    fn ready_means_a_receive_returns_without_reading() {
        let (wire, _) = stream(&[b"whole", &[1; 100], b"after"]);
        // The first read brings the first frame whole and the second in part.
        let io = ScriptedIo::new(wire, vec![30, 1000]);
        let mut reader = FrameReader::new();
        reader.read_frame(&io, &mut Vec::new(), 1000, None).unwrap();
        assert!(!reader.ready(1000), "the next frame is only partly buffered");
        assert!(reader.ready(50), "its header already says it is too large");
        let err = reader.read_frame(&io, &mut Vec::new(), 50, None).unwrap_err();
        assert!(matches!(err, Error::TooLarge { len: 100, max: 50 }), "{err}");
        let mut dst = Vec::new();
        reader.read_frame(&io, &mut dst, 50, None).unwrap();
        assert_eq!(dst, b"after", "the oversized frame was skipped, buffered part and all");
    }

    #[test]
    fn write_frame_survives_short_writes_and_interrupts() {
        let io = ScriptedIo::new(Vec::new(), vec![1, 0, 2, 0, 0, 5]);
        write_frame(&io, &[0, 0, 0, 3], b"abc").unwrap();
        write_frame(&io, &[0, 0, 0, 0], b"").unwrap();
        assert_eq!(*io.output.borrow(), [0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0]);
    }

    proptest! {
        /// Any sequence of payloads survives any pattern of short reads, short writes and
        /// interruptions, byte for byte.
        #[test]
        fn prop_payloads_survive_short_reads_and_writes(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..600), 0..12),
            write_chunks in prop::collection::vec(0usize..700, 1..8),
            read_chunks in prop::collection::vec(0usize..700, 1..8),
            exact in any::<bool>(),
        ) {
            // Never an endless run of interruptions: each script has progress in it.
            prop_assume!(write_chunks.iter().any(|&c| c > 0) && read_chunks.iter().any(|&c| c > 0));
            let writer = ScriptedIo::new(Vec::new(), write_chunks);
            for p in &payloads {
                let mut header = [0; HEADER_MAX];
                let n = encode_header(p.len() as u64, &mut header);
                write_frame(&writer, &header[HEADER_MAX - n..], p).unwrap();
            }
            let wire = writer.output.into_inner();
            let (frames, end) = read_all(&ScriptedIo::new(wire, read_chunks), 1 << 20, exact);
            prop_assert_eq!(frames, payloads);
            prop_assert!(matches!(end, Error::Closed));
        }

        /// Any bytes at all give frames and then an error, never a panic or an endless loop.
        #[test]
        fn prop_any_bytes_give_frames_or_errors(
            input in prop::collection::vec(any::<u8>(), 0..256),
            chunks in prop::collection::vec(1usize..64, 1..4),
            max in 0usize..300,
        ) {
            let io = ScriptedIo::new(input.clone(), chunks);
            let mut reader = FrameReader::new();
            let mut consumed = 0;
            for _ in 0..=input.len() + 1 {
                let mut dst = Vec::new();
                match reader.read_frame(&io, &mut dst, max, None) {
                    Ok(_) => { prop_assert!(dst.len() <= max); consumed += 1; }
                    Err(Error::TooLarge { len, max: m }) => prop_assert!(len > m),
                    Err(Error::Closed | Error::Truncated { .. } | Error::InvalidHeader { .. }) => return Ok(()),
                    Err(e) => prop_assert!(false, "unexpected error {e}"),
                }
            }
            prop_assert!(false, "no end after {consumed} frames");
        }
    }
}
