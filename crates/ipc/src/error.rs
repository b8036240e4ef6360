//! The one error type of `mproc-ipc`.

use std::fmt;
use std::io;

/// What can go wrong on a pipe or a connection.
///
/// Every variant is recoverable information, never a panic: bad input from the peer ends up
/// here. Whether the end is still usable afterwards is said on each variant.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The peer is gone: end of file at a frame boundary on receive, or a broken pipe / reset
    /// connection on send. Nothing was lost; the conversation is over.
    Closed,
    /// End of file inside a frame: the peer died (or closed) part way through a message.
    /// The partial message is discarded; a later receive reports [`Error::Closed`].
    Truncated {
        /// How many bytes the frame has, header included (as far as the bytes that arrived
        /// tell: a header cut short counts only the header).
        expected: u64,
        /// How many bytes of the frame arrived before end of file.
        received: u64,
    },
    /// The deadline passed before a whole message arrived. Nothing is lost: bytes of a
    /// message that arrived in part are kept, and the next receive carries on with them.
    Timeout,
    /// The peer announced a message larger than this end accepts. Checked before anything
    /// is allocated. The oversized payload is skipped (not buffered) by later receives, so
    /// the end stays usable for the messages after it. Raise the limit with
    /// `set_max_message_size` if such messages are expected.
    TooLarge {
        /// The length the frame header announced.
        len: u64,
        /// The largest length this end accepts.
        max: u64,
    },
    /// A frame header that no sender writes (a negative length other than -1): the stream is
    /// out of step and cannot be read further. Every later receive on this end repeats it.
    InvalidHeader {
        /// The 4-byte header as a big-endian signed integer.
        header: i32,
    },
    /// A value could not be serialized; nothing was sent and the end stays usable.
    Encode(postcard::Error),
    /// A large value the peer sent out of line (in a memfd passed with the frame) cannot be
    /// read: the file is not a memfd, is not sealed against writing and shrinking, or holds
    /// fewer bytes than announced. The frame was consumed whole; the end stays usable.
    OutOfLine(String),
    /// A whole frame arrived but its payload is not a valid value of the expected type. The
    /// frame was consumed whole, so the end stays usable for the next message.
    Decode(postcard::Error),
    /// A whole frame arrived holding a shared object (a [`Value`](crate::Value), an
    /// [`Array`](crate::Array), a [`Shared`](crate::Shared) region) of another type or shape
    /// than the receiver's: the message names both. Or a value the decoder refuses to walk:
    /// nested deeper than 256 levels, or counting more elements than its bytes can hold (the
    /// message names the limit). The frame was consumed whole, so the end stays usable.
    Mismatch(String),
    /// A value holding ends (file descriptors) could not be sent: ends travel only over a
    /// duplex [`Connection`](crate::Connection), at most 253 in one message. Nothing was sent.
    FdPassing(&'static str),
    /// A call the object's state does not allow: a `put` on a queue handle that was
    /// closed, a `task_done` with no item left to mark. Nothing changed.
    Misuse(&'static str),
    /// The authkey handshake of a [`Listener`](crate::Listener) or [`Client`](crate::Client)
    /// failed (Python's `multiprocessing.AuthenticationError`): that one connection is closed,
    /// the listener goes on accepting.
    Authentication(AuthError),
    /// A value could not be pickled or unpickled (the `pickle` feature). As for
    /// [`Error::Encode`] and [`Error::Decode`], the end stays usable.
    #[cfg(feature = "pickle")]
    Pickle(serde_pickle::Error),
    /// Any other operating-system error.
    Io(io::Error),
}

/// Why an authkey handshake failed (inside [`Error::Authentication`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// The peer's answer to our challenge is wrong: it holds another authkey.
    WrongDigest,
    /// The peer rejected our answer to its challenge: it holds another authkey.
    Rejected,
    /// The peer speaks only the legacy HMAC-MD5 handshake (Python 3.11 and earlier), which
    /// this end accepts only when allowed (`allow_legacy_md5(true)`).
    LegacyMd5,
    /// The peer did not finish the handshake within the handshake timeout.
    Timeout(std::time::Duration),
    /// The peer sent something the handshake has no place for (a message too long, not a
    /// challenge, an unknown digest).
    Protocol(String),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::WrongDigest => {
                f.write_str("the peer's answer to our challenge is wrong (another authkey)")
            }
            AuthError::Rejected => {
                f.write_str("the peer rejected our answer to its challenge (another authkey)")
            }
            AuthError::LegacyMd5 => f.write_str(
                "the peer speaks only the legacy HMAC-MD5 handshake (Python 3.11 or earlier); \
                 allow_legacy_md5(true) accepts it",
            ),
            AuthError::Timeout(limit) => write!(f, "the peer did not finish the handshake within {limit:?}"),
            AuthError::Protocol(what) => write!(f, "the peer does not follow the handshake: {what}"),
        }
    }
}

/// `Result` with [`Error`] as the error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Closed => f.write_str("connection closed by the peer"),
            Error::Truncated { expected, received } => {
                write!(f, "connection closed inside a message: {received} of its {expected} bytes arrived")
            }
            Error::Timeout => f.write_str("timed out waiting for a message"),
            Error::TooLarge { len, max } => write!(
                f,
                "message of {len} bytes exceeds the limit of {max} bytes (set_max_message_size raises it)"
            ),
            Error::InvalidHeader { header } => write!(
                f,
                "invalid frame header {header} (0x{:08x}): the stream is out of step",
                *header as u32
            ),
            Error::Encode(e) => write!(f, "cannot encode value: {e}"),
            Error::Decode(e) => write!(f, "cannot decode message: {e}"),
            Error::Mismatch(why) => write!(f, "cannot decode message: {why}"),
            Error::OutOfLine(why) => write!(f, "cannot read a value sent out of line: {why}"),
            Error::FdPassing(why) => write!(f, "cannot pass file descriptors: {why}"),
            Error::Misuse(what) => f.write_str(what),
            Error::Authentication(why) => write!(f, "authentication failed: {why}"),
            #[cfg(feature = "pickle")]
            Error::Pickle(e) => write!(f, "cannot pickle or unpickle value: {e}"),
            Error::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

/// A wrapped error's message is part of the `Display` (`i/o error: ...`), so it is not also a
/// `source()`: each cause prints once.
impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => Error::Closed,
            _ => Error::Io(e),
        }
    }
}

impl From<rustix::io::Errno> for Error {
    fn from(e: rustix::io::Errno) -> Self {
        io::Error::from(e).into()
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::Io(inner) => return io::Error::new(inner.kind(), e),
            Error::Closed => io::ErrorKind::BrokenPipe,
            Error::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            Error::Timeout => io::ErrorKind::TimedOut,
            Error::TooLarge { .. }
            | Error::InvalidHeader { .. }
            | Error::Decode(_)
            | Error::Mismatch(_)
            | Error::OutOfLine(_) => io::ErrorKind::InvalidData,
            Error::Encode(_) | Error::FdPassing(_) | Error::Misuse(_) => io::ErrorKind::InvalidInput,
            Error::Authentication(AuthError::Timeout(_)) => io::ErrorKind::TimedOut,
            Error::Authentication(_) => io::ErrorKind::PermissionDenied,
            #[cfg(feature = "pickle")]
            Error::Pickle(_) => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_lowercase_without_trailing_period() {
        let all = [
            Error::Closed,
            Error::Truncated { expected: 10, received: 3 },
            Error::Timeout,
            Error::TooLarge { len: 1 << 60, max: 1 << 30 },
            Error::InvalidHeader { header: -7 },
            Error::OutOfLine("the value's memfd holds 3 bytes, not the 8 announced".into()),
            Error::Authentication(AuthError::WrongDigest),
            Error::Authentication(AuthError::Rejected),
            Error::Authentication(AuthError::LegacyMd5),
            Error::Authentication(AuthError::Timeout(std::time::Duration::from_secs(5))),
            Error::Authentication(AuthError::Protocol("a message of 300 bytes".into())),
            Error::Io(io::Error::other("boom")),
        ];
        for e in all {
            let s = e.to_string();
            assert!(s.chars().next().unwrap().is_lowercase(), "{s}");
            assert!(!s.ends_with('.'), "{s}");
        }
    }

    /// No message in an error's chain repeats the message of the error below it.
    #[test]
    fn each_cause_prints_once() {
        let postcard = postcard::from_bytes::<u8>(&[]).unwrap_err();
        for e in
            [Error::Encode(postcard.clone()), Error::Decode(postcard), Error::Io(io::Error::other("boom"))]
        {
            let mut at: &dyn std::error::Error = &e;
            while let Some(below) = at.source() {
                assert!(!at.to_string().contains(&below.to_string()), "{at} repeats {below}");
                at = below;
            }
        }
    }

    #[test]
    fn broken_pipe_is_closed() {
        let e: Error = io::Error::from(io::ErrorKind::BrokenPipe).into();
        assert!(matches!(e, Error::Closed));
        let e: Error = rustix::io::Errno::PIPE.into();
        assert!(matches!(e, Error::Closed));
    }
}
