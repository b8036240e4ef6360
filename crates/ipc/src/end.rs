//! The machinery every end shares: one owned fd, a send lock, a receive lock with the framing
//! state, and the message-size limit. `Sender`, `Receiver` and `Connection` are typed views.

use std::fmt;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustix::event::{PollFd, PollFlags};
use rustix::io::FdFlags;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::error::Result;
use crate::frame::{FrameReader, HEADER_MAX, RawIo, encode_header, write_frame};
use crate::sys;
use crate::wait::{far_future, poll_until};

/// The largest message an end accepts unless told otherwise: 1 GiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 30;

/// What the fd is: it decides how bytes are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A pipe or anything else `writev` serves.
    Pipe,
    /// A socket: written with `sendmsg(MSG_NOSIGNAL)`, so a vanished peer is an error, never
    /// a `SIGPIPE`.
    Socket,
}

impl Kind {
    /// Asks the kernel what `fd` is.
    pub(crate) fn of(fd: BorrowedFd<'_>) -> Kind {
        match rustix::fs::fstat(fd) {
            Ok(st)
                if rustix::fs::FileType::from_raw_mode(st.st_mode)
                    == rustix::fs::FileType::Socket =>
            {
                Kind::Socket
            }
            _ => Kind::Pipe,
        }
    }
}

/// The receive side's state: where the stream stands, and a buffer for typed payloads.
#[derive(Debug, Default)]
struct ReadSide {
    frames: FrameReader,
    scratch: Vec<u8>,
}

pub(crate) struct End {
    fd: OwnedFd,
    kind: Kind,
    /// Held for the whole of a send, so frames never interleave; holds the encode buffer.
    send: Mutex<Vec<u8>>,
    /// Held for the whole of a receive, so each receiver gets whole frames.
    recv: Mutex<ReadSide>,
    max_message_size: usize,
}

impl End {
    pub(crate) fn new(fd: OwnedFd, kind: Kind) -> End {
        End {
            fd,
            kind,
            send: Mutex::new(Vec::new()),
            recv: Mutex::new(ReadSide::default()),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }

    fn io(&self) -> FdIo<'_> {
        FdIo {
            fd: self.fd.as_fd(),
            kind: self.kind,
        }
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
        let mut buf = self.send.lock();
        let result = codec::encode_frame(value, &mut buf)
            .and_then(|frame| write_frame(&self.io(), frame, &[]));
        codec::trim(&mut buf);
        result
    }

    pub(crate) fn send_bytes(&self, payload: &[u8]) -> Result<()> {
        let mut header = [0; HEADER_MAX];
        let n = encode_header(payload.len() as u64, &mut header);
        let _guard = self.send.lock();
        write_frame(&self.io(), &header[HEADER_MAX - n..], payload)
    }

    pub(crate) fn recv<T: DeserializeOwned>(&self, timeout: Option<Duration>) -> Result<T> {
        let deadline = deadline(timeout);
        let mut side = self.recv.lock();
        let ReadSide { frames, scratch } = &mut *side;
        let result = frames
            .read_frame(&self.io(), scratch, self.max_message_size, deadline)
            .and_then(|()| codec::decode(scratch));
        codec::trim(scratch);
        result
    }

    pub(crate) fn recv_bytes_into(
        &self,
        dst: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<usize> {
        let deadline = deadline(timeout);
        let mut side = self.recv.lock();
        side.frames
            .read_frame(&self.io(), dst, self.max_message_size, deadline)?;
        Ok(dst.len())
    }

    pub(crate) fn poll(&self, timeout: Option<Duration>) -> Result<bool> {
        let mut fds = [PollFd::from_borrowed_fd(self.fd.as_fd(), PollFlags::IN)];
        Ok(poll_until(&mut fds, deadline(timeout))? > 0)
    }

    pub(crate) fn set_inheritable(&self, inheritable: bool) -> Result<()> {
        let flags = rustix::io::fcntl_getfd(&self.fd)?;
        let flags = if inheritable {
            flags - FdFlags::CLOEXEC
        } else {
            flags | FdFlags::CLOEXEC
        };
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

fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now().checked_add(t).unwrap_or_else(far_future))
}

/// [`RawIo`] on a real file descriptor.
struct FdIo<'a> {
    fd: BorrowedFd<'a>,
    kind: Kind,
}

impl RawIo for FdIo<'_> {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(rustix::io::read(self.fd, buf)?)
    }

    fn read_append(&self, dst: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        sys::read_append(self.fd, dst, max)
    }

    fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Ok(match self.kind {
            Kind::Pipe => rustix::io::writev(self.fd, bufs)?,
            Kind::Socket => rustix::net::sendmsg(
                self.fd,
                bufs,
                &mut rustix::net::SendAncillaryBuffer::default(),
                rustix::net::SendFlags::NOSIGNAL,
            )?,
        })
    }

    fn wait_readable(&self, deadline: Instant) -> io::Result<bool> {
        let mut fds = [PollFd::from_borrowed_fd(self.fd, PollFlags::IN)];
        Ok(poll_until(&mut fds, Some(deadline))? > 0)
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

        impl<$($g),*> std::fmt::Debug for $name<$($g),*> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_tuple(stringify!($name)).field(&self.end).finish()
            }
        }
    };
}
pub(crate) use impl_end_traits;
