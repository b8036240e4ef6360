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
    /// Discarding an oversized frame of `len` bytes (header included), `remaining` still to come.
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
        FrameReader { stage: Stage::Header, header: [0; HEADER_MAX], filled: 0, partial: Vec::new() }
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
                        self.stage = Stage::Skip { len: len + header_len as u64, remaining: len };
                        return Err(Error::TooLarge { len, max: max as u64 });
                    }
                    // `len <= max`, so it fits in usize.
                    self.stage = Stage::Payload { len: len as usize, header_len };
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
            let n = read_some(deadline, io, |io| io.read(&mut self.header[self.filled..need]))?;
            if n == 0 {
                let received = std::mem::take(&mut self.filled) as u64;
                return Err(if received == 0 {
                    Error::Closed
                } else {
                    Error::Truncated { expected: need as u64, received }
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
                    return Err(Error::Truncated { expected: (header_len + len) as u64, received });
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
                return Err(Error::Truncated { expected: len, received: len - remaining });
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
        fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
            let bytes = self.take(buf.len())?;
            buf[..bytes.len()].copy_from_slice(bytes);
            Ok(bytes.len())
        }

        fn read_append(&self, dst: &mut Vec<u8>, max: usize) -> io::Result<usize> {
            let bytes = self.take(max)?;
            dst.extend_from_slice(bytes);
            Ok(bytes.len())
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
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut header = [0; HEADER_MAX];
        let n = encode_header(payload.len() as u64, &mut header);
        let mut out = header[HEADER_MAX - n..].to_vec();
        out.extend_from_slice(payload);
        out
    }

    fn read_all(io: &ScriptedIo, max: usize) -> (Vec<Vec<u8>>, Error) {
        let mut reader = FrameReader::new();
        let mut frames = Vec::new();
        loop {
            let mut dst = Vec::new();
            match reader.read_frame(io, &mut dst, max, None) {
                Ok(()) => frames.push(dst),
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
        let (frames, end) = read_all(&ScriptedIo::new(input, vec![]), 100);
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
        let (_, err) = read_all(&io, 100);
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
                Ok(()) => got.push(dst),
                Err(Error::Timeout) => assert!(dst.is_empty()),
                Err(e) => panic!("{e}"),
            }
        }
        let mut dst = Vec::new();
        reader.read_frame(&io, &mut dst, 100, soon).unwrap();
        got.push(dst);
        assert_eq!(got, vec![b"first message".to_vec(), b"second".to_vec()]);
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
            let (frames, end) = read_all(&ScriptedIo::new(wire, read_chunks), 1 << 20);
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
                    Ok(()) => { prop_assert!(dst.len() <= max); consumed += 1; }
                    Err(Error::TooLarge { len, max: m }) => prop_assert!(len > m),
                    Err(Error::Closed | Error::Truncated { .. } | Error::InvalidHeader { .. }) => return Ok(()),
                    Err(e) => prop_assert!(false, "unexpected error {e}"),
                }
            }
            prop_assert!(false, "no end after {consumed} frames");
        }
    }
}
