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
    /// Reads into `buf`; `Ok(0)` is end of file.
    fn read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Appends at most `max` bytes to `dst` (in its spare capacity); `Ok(0)` is end of file.
    fn read_append(&self, dst: &mut Vec<u8>, max: usize) -> io::Result<usize>;
    /// Writes some prefix of `bufs`.
    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Waits until a read would not block or `deadline` passes; `Ok(false)` on the deadline.
    fn wait_readable(&self, deadline: Instant) -> io::Result<bool>;
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

pub(crate) fn decode_short(bytes: [u8; 4]) -> ShortHeader {
    match i32::from_be_bytes(bytes) {
        n if n >= 0 => ShortHeader::Len(n as u64),
        -1 => ShortHeader::Long,
        n => ShortHeader::Invalid(n),
    }
}

/// Writes one whole frame: `header` then `payload`, in one `writev` where the kernel takes it,
/// going on after short writes and interruptions.
pub(crate) fn write_frame(io: &impl RawIo, header: &[u8], payload: &[u8]) -> Result<()> {
    let mut bufs = [IoSlice::new(header), IoSlice::new(payload)];
    let mut rest: &mut [IoSlice<'_>] = &mut bufs;
    IoSlice::advance_slices(&mut rest, 0);
    while !rest.is_empty() {
        match io.write_vectored(rest) {
            Ok(0) => return Err(Error::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Where the reader stands in the byte stream. Kept between calls, so a receive that times out
/// (or fails for a passing reason) loses nothing: the next one carries on.
#[derive(Debug)]
enum Stage {
    /// Reading the header; `filled` of its bytes are in `header`.
    Header,
    /// Reading a payload of `len` bytes.
    Payload { len: usize, header_len: usize },
    /// Discarding an oversized payload announced as `len` bytes, `remaining` still to come.
    Skip { len: u64, remaining: u64 },
    /// An invalid header was read: the stream cannot be followed any more.
    Broken { header: i32 },
}

/// Reads frames from a byte stream, one at a time, never past the end of the current frame
/// (so ends shared by several readers hand out whole frames only).
#[derive(Debug)]
pub(crate) struct FrameReader {
    stage: Stage,
    header: [u8; HEADER_MAX],
    filled: usize,
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
            header: [0; HEADER_MAX],
            filled: 0,
            partial: Vec::new(),
        }
    }

    /// Reads the next whole frame's payload into `dst` (replacing its contents).
    ///
    /// `max` bounds the payload length, checked before allocating; `deadline` bounds the wait.
    pub(crate) fn read_frame(
        &mut self,
        io: &impl RawIo,
        dst: &mut Vec<u8>,
        max: usize,
        deadline: Option<Instant>,
    ) -> Result<()> {
        dst.clear();
        loop {
            match self.stage {
                Stage::Broken { header } => return Err(Error::InvalidHeader { header }),
                Stage::Skip { len, remaining } => self.skip(io, len, remaining, deadline)?,
                Stage::Header => {
                    let (len, header_len) = self.read_header(io, deadline)?;
                    if len > max as u64 {
                        self.stage = Stage::Skip {
                            len,
                            remaining: len,
                        };
                        return Err(Error::TooLarge {
                            len,
                            max: max as u64,
                        });
                    }
                    // `len <= max`, so it fits in usize.
                    self.stage = Stage::Payload {
                        len: len as usize,
                        header_len,
                    };
                }
                Stage::Payload { len, header_len } => {
                    return self.read_payload(io, dst, len, header_len, deadline);
                }
            }
        }
    }

    /// Fills the header; returns the payload length and the header's own length.
    fn read_header(&mut self, io: &impl RawIo, deadline: Option<Instant>) -> Result<(u64, usize)> {
        loop {
            let need = if self.filled < 4 {
                4
            } else {
                match decode_short(self.short()) {
                    ShortHeader::Len(len) => {
                        self.filled = 0;
                        return Ok((len, 4));
                    }
                    ShortHeader::Invalid(header) => {
                        self.filled = 0;
                        self.stage = Stage::Broken { header };
                        return Err(Error::InvalidHeader { header });
                    }
                    ShortHeader::Long if self.filled == HEADER_MAX => {
                        self.filled = 0;
                        let len = u64::from_be_bytes(self.header[4..].try_into().unwrap());
                        return Ok((len, HEADER_MAX));
                    }
                    ShortHeader::Long => HEADER_MAX,
                }
            };
            let n = read_some(deadline, io, |io| {
                io.read(&mut self.header[self.filled..need])
            })?;
            if n == 0 {
                let received = std::mem::take(&mut self.filled) as u64;
                return Err(if received == 0 {
                    Error::Closed
                } else {
                    Error::Truncated {
                        expected: need as u64,
                        received,
                    }
                });
            }
            self.filled += n;
        }
    }

    fn short(&self) -> [u8; 4] {
        self.header[..4].try_into().unwrap()
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
                    return Err(Error::Truncated {
                        expected: (header_len + len) as u64,
                        received,
                    });
                }
                Ok(_) => {}
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
        let mut sink = [0u8; 8192];
        while remaining > 0 {
            let want = remaining.min(sink.len() as u64) as usize;
            let n = match read_some(deadline, io, |io| io.read(&mut sink[..want])) {
                Ok(n) => n,
                Err(e) => {
                    self.stage = Stage::Skip { len, remaining };
                    return Err(e);
                }
            };
            if n == 0 {
                self.stage = Stage::Header;
                return Err(Error::Truncated {
                    expected: len,
                    received: len - remaining,
                });
            }
            remaining -= n as u64;
        }
        self.stage = Stage::Header;
        Ok(())
    }
}

/// One read that makes progress: waits for the deadline if there is one, and goes on after
/// interruptions by signals.
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
