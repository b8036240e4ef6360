//! The `unsafe` of values that travel out of line: a memfd the sender fills through a private
//! writable mapping and then seals against writing, and the receiver's read-only view of it.
//!
//! The receiver makes a `&[u8]` of the mapped file, which is sound only if no one can change
//! those bytes or cut the file short while the slice lives: [`Sealed::open`] checks the seals
//! `F_SEAL_WRITE` (no `write(2)`, no writable shared mapping, and the kernel refused to add
//! it while one existed) and `F_SEAL_SHRINK` (no truncation, so no `SIGBUS`), and that the
//! file holds the bytes it is asked to map. A sender that holds back a seal gets an error,
//! never a view of memory it could still change.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// A new memfd of `len` bytes, mapped writable for its creator alone (no other process has the
/// fd until [`Filling::seal`] returns it).
pub(crate) struct Filling {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

impl Filling {
    /// A memfd (close-on-exec, sealable) of `len > 0` zero bytes, its pages allocated up front
    /// (`MAP_POPULATE`: one system call rather than a fault per page).
    pub(crate) fn new(len: usize) -> io::Result<Filling> {
        assert!(len > 0, "an out-of-line value has bytes");
        let fd = rustix::fs::memfd_create("mproc-value", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        // SAFETY: a fresh mapping placed by the kernel (no fixed address): it aliases no Rust
        // memory; only `Filling` reaches it, and it is unmapped once (by `seal` or `drop`).
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::POPULATE,
                &fd,
                0,
            )
        }?;
        let filling = Filling { ptr: NonNull::new(ptr.cast()).expect("mmap never returns null"), len, fd };
        // A child another thread forks meanwhile must not inherit the writable mapping: the
        // kernel would refuse the write seal while the child holds it.
        // SAFETY: advice on the mapping just made, which only `filling` reaches.
        unsafe { rustix::mm::madvise(filling.ptr.as_ptr().cast(), len, rustix::mm::Advice::LinuxDontFork) }?;
        Ok(filling)
    }

    /// The bytes to fill.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, alive while `self` is;
        // no one else can reach it (the fd is ours alone until `seal`), and `&mut self`
        // makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Unmaps the file and seals it against writing, shrinking, growing and further seals:
    /// the fd to send.
    pub(crate) fn seal(self) -> io::Result<OwnedFd> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: unmaps exactly the mapping `new` made, once (`ManuallyDrop` skips `drop`);
        // no reference from `bytes_mut` outlives the `&mut self` it came from.
        unsafe { rustix::mm::munmap(this.ptr.as_ptr().cast(), this.len) }?;
        // SAFETY: `this` is never used again; the fd is moved out once.
        let fd = unsafe { std::ptr::read(&this.fd) };
        rustix::fs::fcntl_add_seals(
            &fd,
            SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )?;
        Ok(fd)
    }
}

impl Drop for Filling {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made, unmapped once; no reference to it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

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
                MapFlags::SHARED | MapFlags::POPULATE,
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

// SAFETY: `Sealed` is a read-only view of bytes no one can change; sending it to or sharing
// it with another thread is like sharing a `Box<[u8]>`.
unsafe impl Send for Sealed {}
// SAFETY: as above.
unsafe impl Sync for Sealed {}
