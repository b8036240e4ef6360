//! Memory shared with forked children: the pages where `Fork` children leave their values
//! (see [`crate::slot`]), and the counter they take overflow ranges from.
//!
//! A forked child inherits the mapping, so it writes its value with plain stores (no system
//! call, no `libc` code to fault in), and the parent reads it the same way once the child is
//! reaped. The memory is shared with other processes, which may write it at any time (a
//! buggy or hostile child): it is only ever read and written through raw pointers with
//! volatile accesses, never through a Rust reference, and whatever is read is checked.

use std::io;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// How much of the file one [`SharedMap`] maps.
pub(crate) const CHUNK: usize = 2 << 20;

/// A chunk of a file's pages, mapped shared for the rest of the process's life.
pub(crate) struct SharedMap {
    base: NonNull<u8>,
}

// SAFETY: the mapping is never unmapped and only touched through volatile accesses of
// `write`/`read` on ranges the callers own (one slot page per child, one thread at a time);
// nothing about it is tied to a thread.
unsafe impl Send for SharedMap {}
// SAFETY: as above: `&SharedMap` only allows those accesses.
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// Maps `file`'s bytes `offset..offset + CHUNK` (`offset` a multiple of the page size),
    /// which the file must hold (a page past its end would raise `SIGBUS`). Pages are
    /// allocated by the file when first written.
    pub(crate) fn map_chunk(file: &OwnedFd, offset: u64) -> io::Result<SharedMap> {
        use rustix::mm::{MapFlags, ProtFlags};
        // SAFETY: a fresh mapping placed by the kernel: it aliases no Rust memory, and it is
        // never unmapped, so the pointer stays valid for the life of the process.
        let addr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                CHUNK,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                file,
                offset,
            )
        }?;
        let base = NonNull::new(addr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(SharedMap { base })
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
        if !self.holds(offset, 1) {
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
        offset.checked_add(len).is_some_and(|end| end <= CHUNK)
    }
}

/// A counter in memory shared with every child forked after it was made: where `Fork`
/// children take the ranges of the overflow file they write their big values to.
///
/// Other processes may store anything in it: it is only ever touched atomically, and what it
/// hands out is checked by whoever uses it.
pub(crate) struct SharedCounter {
    word: NonNull<AtomicU64>,
}

// SAFETY: the page is never unmapped and only touched through atomic operations.
unsafe impl Send for SharedCounter {}
// SAFETY: as above.
unsafe impl Sync for SharedCounter {}

impl SharedCounter {
    /// A counter at 0, on a page of its own.
    pub(crate) fn new() -> io::Result<SharedCounter> {
        use rustix::mm::{MapFlags, ProtFlags};
        // SAFETY: a fresh shared anonymous mapping placed by the kernel: it aliases no Rust
        // memory, and it is never unmapped, so the pointer stays valid for the process.
        let addr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                super::page_size(),
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
            )
        }?;
        let word =
            NonNull::new(addr.cast::<AtomicU64>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(SharedCounter { word })
    }

    fn word(&self) -> &AtomicU64 {
        // SAFETY: the page is mapped for the life of the process, page-aligned (so aligned
        // for an `AtomicU64`), zero-filled when made (a valid 0), and only ever accessed
        // atomically, by this process and its children.
        unsafe { self.word.as_ref() }
    }

    /// Adds `n`; the value before.
    pub(crate) fn fetch_add(&self, n: u64) -> u64 {
        self.word().fetch_add(n, Ordering::AcqRel)
    }

    /// Back to `to` if it is at `at` (nothing was added since); whether it went back.
    pub(crate) fn rewind(&self, at: u64, to: u64) -> bool {
        self.word().compare_exchange(at, to, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// The value now.
    pub(crate) fn get(&self) -> u64 {
        self.word().load(Ordering::Acquire)
    }

    /// Back to 0.
    pub(crate) fn reset(&self) {
        self.word().store(0, Ordering::Release);
    }
}
