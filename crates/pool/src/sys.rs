//! The only `unsafe` of `mproc-pool`: a word of memory shared with a worker.
//!
//! A worker claims there each task before it starts it, and the pool takes back the tasks it
//! has not claimed, each with one atomic operation and no syscall (the protocol is
//! `claim.rs`); when the worker dies the pool reads it to tell the tasks that had started
//! (failed with it) from those that never did (handed to another worker). It is an 8-byte
//! `memfd`, mapped shared in the pool and in the worker.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use rustix::fs::MemfdFlags;
use rustix::mm::{MapFlags, ProtFlags};

const LEN: usize = std::mem::size_of::<AtomicU64>();

/// The shared word.
pub(crate) struct Progress {
    cell: NonNull<AtomicU64>,
}

// SAFETY: the mapping is only accessed through `AtomicU64` operations, which are safe from any
// thread; `Progress` owns the mapping and unmaps it once, on drop.
unsafe impl Send for Progress {}
// SAFETY: as above: shared access is atomic.
unsafe impl Sync for Progress {}

impl Progress {
    /// A new shared word (zero), and the fd a worker maps it from.
    pub(crate) fn create() -> io::Result<(Progress, OwnedFd)> {
        // Sealed against exec (which systems with `vm.memfd_noexec = 2` require) where the
        // kernel knows the flag (Linux 6.3).
        let name = "mproc-pool-progress";
        let fd = match rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::NOEXEC_SEAL) {
            Err(rustix::io::Errno::INVAL) => rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC)?,
            made => made?,
        };
        rustix::fs::ftruncate(&fd, LEN as u64)?;
        Ok((Progress::map(&fd)?, fd))
    }

    /// Maps the word `fd` holds (made by [`create`](Self::create)).
    pub(crate) fn map(fd: &OwnedFd) -> io::Result<Progress> {
        let size = rustix::fs::fstat(fd)?.st_size;
        if size < LEN as i64 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a progress word"));
        }
        // SAFETY: a fresh shared mapping of `LEN` bytes of a file at least that long; no
        // existing memory is affected. The kernel returns page-aligned memory, so the
        // `AtomicU64` below is aligned.
        let addr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                LEN,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        let cell = NonNull::new(addr.cast::<AtomicU64>()).expect("mmap never returns null on success");
        Ok(Progress { cell })
    }

    /// The word, for the claim protocol (`claim.rs`): the only way it is read or written.
    pub(crate) fn word(&self) -> &AtomicU64 {
        // SAFETY: `cell` points to a live, aligned, `LEN`-byte shared mapping owned by `self`
        // (unmapped only in drop), accessed only atomically.
        unsafe { self.cell.as_ref() }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `map`, which nothing uses after `self` is gone.
        let _ = unsafe { rustix::mm::munmap(self.cell.as_ptr().cast(), LEN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn both_mappings_see_one_word() {
        let (a, fd) = Progress::create().unwrap();
        let b = Progress::map(&fd).unwrap();
        assert_eq!(b.word().load(Ordering::Relaxed), 0);
        a.word().store(17, Ordering::Relaxed);
        assert_eq!(b.word().load(Ordering::Relaxed), 17);
        drop(a);
        b.word().store(3, Ordering::Relaxed);
        assert_eq!(Progress::map(&fd).unwrap().word().load(Ordering::Relaxed), 3);
    }
}
