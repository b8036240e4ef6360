//! The `unsafe` of values that travel out of line: the receiver's read-only view of a memfd
//! the sender filled (with `write(2)`) and sealed against writing.
//!
//! The receiver makes a `&[u8]` of the mapped file, which is sound only if no one can change
//! those bytes or cut the file short while the slice lives: [`Sealed::open`] checks the seals
//! `F_SEAL_WRITE` (no `write(2)`, no writable shared mapping, and the kernel refused to add
//! it while one existed) and `F_SEAL_SHRINK` (no truncation, so no `SIGBUS`), and that the
//! file holds the bytes it is asked to map. A sender that holds back a seal gets an error,
//! never a view of memory it could still change.

#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use rustix::fs::SealFlags;
use rustix::mm::{MapFlags, ProtFlags};

/// A received memfd, checked and mapped read-only.
pub(crate) struct Sealed {
    ptr: NonNull<u8>,
    len: usize,
}

impl Sealed {
    /// Maps the first `len > 0` bytes of `fd` after checking that they cannot change: the
    /// file is sealed against writing and shrinking and holds at least `len` bytes. The fd
    /// may be closed afterwards (the mapping keeps the file).
    pub(crate) fn open(fd: &OwnedFd, len: usize) -> Result<Sealed, String> {
        Sealed::open_with(fd, len, true)
    }

    /// [`open`](Self::open), with the pages mapped in at once (`populate`) or as they are
    /// read (a fault maps in the pages around it too: cheaper for one copy of all of them into
    /// memory faulted in already, as measured for values sent early, see `ARCHITECTURE.md`).
    pub(crate) fn open_with(fd: &OwnedFd, len: usize, populate: bool) -> Result<Sealed, String> {
        let seals = rustix::fs::fcntl_get_seals(fd)
            .map_err(|e| format!("the value's file is not a sealable memfd ({e})"))?;
        if !seals.contains(SealFlags::WRITE | SealFlags::SHRINK) {
            return Err("the value's memfd is not sealed against writing and shrinking".to_owned());
        }
        let size = rustix::fs::fstat(fd).map_err(|e| format!("cannot stat the value's memfd: {e}"))?.st_size;
        if (size as u64) < len as u64 || len == 0 {
            return Err(format!("the value's memfd holds {size} bytes, not the {len} announced"));
        }
        // SAFETY: a fresh read-only mapping placed by the kernel: it aliases no Rust memory.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                if populate { MapFlags::SHARED | MapFlags::POPULATE } else { MapFlags::SHARED },
                fd,
                0,
            )
        }
        .map_err(|e| format!("cannot map the value's memfd: {e}"))?;
        Ok(Sealed { ptr: NonNull::new(ptr.cast()).expect("mmap never returns null"), len })
    }

    /// The value's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `len` mapped, readable bytes, alive while `self` is; the file is sealed
        // against writes and shrinking (checked in `open`), so they never change and never
        // fault while the slice lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Sealed {
    fn drop(&mut self) {
        // SAFETY: the mapping `open` made, unmapped once; no slice from `bytes` outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Faults in the pages of `spare`, memory about to be written (a `Vec`'s room): one
/// `madvise(MADV_POPULATE_WRITE)` instead of a page fault per 4 KiB as it is written; where the
/// kernel lacks it (before 5.14), a zero byte written on each page. The contents stay
/// uninitialized as far as the caller knows.
pub(crate) fn fault_in<T>(spare: &mut [MaybeUninit<T>]) {
    let page = rustix::param::page_size();
    let (start, len) = (spare.as_mut_ptr() as usize, size_of_val(spare));
    let first = start.next_multiple_of(page);
    let end = (start + len) / page * page;
    if end <= first {
        return;
    }
    // SAFETY: whole pages inside `spare`, which the caller owns mutably; populating changes
    // no byte of memory that is already there and makes zero pages of the rest.
    let populated = unsafe {
        rustix::mm::madvise((first as *mut u8).cast(), end - first, rustix::mm::Advice::LinuxPopulateWrite)
    };
    if populated.is_err() {
        // SAFETY: `spare`'s bytes, borrowed mutably for this block; writing bytes into
        // `MaybeUninit` memory is always allowed.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<MaybeUninit<u8>>(), len) };
        for at in (first - start..end - start).step_by(page) {
            bytes[at] = MaybeUninit::new(0);
        }
    }
}

// SAFETY: `Sealed` is a read-only view of bytes no one can change; sending it to or sharing
// it with another thread is like sharing a `Box<[u8]>`.
unsafe impl Send for Sealed {}
// SAFETY: as above.
unsafe impl Sync for Sealed {}
