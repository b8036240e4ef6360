//! The only `unsafe` of `mproc-ipc`.
//!
//! Two things need it: reading straight into a `Vec`'s spare capacity (so a large message is
//! not zero-filled before the kernel overwrites it), and `FromRawFd`, whose contract is unsafe
//! by definition. Each block below says why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::duplex::Connection;
use crate::pipe::{Receiver, Sender};

/// `read(2)` of at most `max` bytes appended to `dst`, into its spare capacity.
pub(crate) fn read_append(fd: BorrowedFd<'_>, dst: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    let spare = dst.spare_capacity_mut();
    let take = spare.len().min(max);
    let (init, _) = rustix::io::read(fd, &mut spare[..take])?;
    let n = init.len();
    // SAFETY: rustix returned `init`, the first `n` bytes of the spare capacity, as initialized
    // by the kernel; `n <= take <= spare.len()`, so the new length is within capacity.
    unsafe { dst.set_len(dst.len() + n) };
    Ok(n)
}

impl<T> FromRawFd for Receiver<T> {
    /// Takes ownership of `fd`, the read end of a pipe or a socket.
    ///
    /// # Safety
    /// `fd` must be an open file descriptor that nothing else owns or closes.
    unsafe fn from_raw_fd(fd: RawFd) -> Self {
        // SAFETY: the caller hands over an open, otherwise unowned fd, as this fn requires.
        Receiver::from(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

impl<T> FromRawFd for Sender<T> {
    /// Takes ownership of `fd`, the write end of a pipe or a socket.
    ///
    /// # Safety
    /// `fd` must be an open file descriptor that nothing else owns or closes.
    unsafe fn from_raw_fd(fd: RawFd) -> Self {
        // SAFETY: the caller hands over an open, otherwise unowned fd, as this fn requires.
        Sender::from(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

impl<S, R> FromRawFd for Connection<S, R> {
    /// Takes ownership of `fd`, a connected stream socket (or anything both readable and
    /// writable).
    ///
    /// # Safety
    /// `fd` must be an open file descriptor that nothing else owns or closes.
    unsafe fn from_raw_fd(fd: RawFd) -> Self {
        // SAFETY: the caller hands over an open, otherwise unowned fd, as this fn requires.
        Connection::from(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

pub(crate) mod shm;
