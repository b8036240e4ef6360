//! A shared mapping of the start of a file: the pages where `Fork` children leave their
//! values (see [`crate::slot`]).
//!
//! A forked child inherits the mapping, so it writes its value with plain stores (no system
//! call, no `libc` code to fault in), and the parent reads it the same way once the child is
//! reaped. The memory is shared with other processes, which may write it at any time (a
//! buggy or hostile child): it is only ever read and written through raw pointers with
//! volatile accesses, never through a Rust reference, and whatever is read is checked.

use std::io;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

/// `len` bytes of a file, mapped shared for the rest of the process's life.
pub(crate) struct SharedMap {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is never unmapped and only touched through volatile accesses of
// `write`/`read` on ranges the callers own (one slot page per child, one thread at a time);
// nothing about it is tied to a thread.
unsafe impl Send for SharedMap {}
// SAFETY: as above: `&SharedMap` only allows those accesses.
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// Maps the first `len` bytes of `file` (which must be at least that long: a page past
    /// its end would raise `SIGBUS`). Pages are allocated by the file when first written.
    pub(crate) fn map(file: &OwnedFd, len: usize) -> io::Result<SharedMap> {
        use rustix::mm::{MapFlags, ProtFlags};
        // SAFETY: a fresh shared mapping of `file`, placed by the kernel: it aliases no Rust
        // memory, and it is never unmapped, so the pointer stays valid for the process.
        let addr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::NORESERVE,
                file,
                0,
            )
        }?;
        let base = NonNull::new(addr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(SharedMap { base, len })
    }

    /// Copies `bytes` to `offset`, a multiple of 8; `false` (nothing written) if that is not
    /// inside the map.
    ///
    /// Word by word with volatile stores: no call into `memcpy` (a forked child pays a page
    /// fault for each page of code it runs first), and no store the compiler may drop or
    /// merge, for memory another process reads.
    #[inline(always)]
    pub(crate) fn write(&self, offset: usize, bytes: &[u8]) -> bool {
        if !self.holds(offset, bytes.len()) || !offset.is_multiple_of(8) {
            return false;
        }
        let mut words = bytes.chunks_exact(8);
        let mut at = offset;
        for word in words.by_ref() {
            let word = u64::from_ne_bytes(word.try_into().expect("chunks of 8"));
            // SAFETY: `at..at + 8` is inside the mapping (checked above), which is valid for
            // writes for the life of the process, and 8-aligned (the mapping is page-aligned,
            // `offset` a multiple of 8).
            unsafe { self.base.as_ptr().add(at).cast::<u64>().write_volatile(word) };
            at += 8;
        }
        for &byte in words.remainder() {
            // SAFETY: as above, for one byte.
            unsafe { self.base.as_ptr().add(at).write_volatile(byte) };
            at += 1;
        }
        true
    }

    /// Stores `byte` at `offset`; `false` (nothing written) if that is not inside the map.
    #[inline(always)]
    pub(crate) fn write_byte(&self, offset: usize, byte: u8) -> bool {
        if offset >= self.len {
            return false;
        }
        // SAFETY: `offset` is inside the mapping (checked above), valid for writes for the
        // life of the process.
        unsafe { self.base.as_ptr().add(offset).write_volatile(byte) };
        true
    }

    /// Copies the bytes at `offset` into `out`; `false` (nothing read) if that is not inside
    /// the map.
    pub(crate) fn read(&self, offset: usize, out: &mut [u8]) -> bool {
        if !self.holds(offset, out.len()) {
            return false;
        }
        for (i, byte) in out.iter_mut().enumerate() {
            // SAFETY: `offset + i` is inside the mapping (checked above), valid for reads for
            // the life of the process; any byte value is a valid `u8`.
            *byte = unsafe { self.base.as_ptr().add(offset + i).read_volatile() };
        }
        true
    }

    fn holds(&self, offset: usize, len: usize) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.len)
    }
}
