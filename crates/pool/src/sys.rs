//! The only `unsafe` of `mproc-pool`: memory shared with a worker.
//!
//! A `memfd`, mapped shared in the pool and in the worker, holding:
//!
//! - The progress word: a worker claims there each task before it starts it, and the pool
//!   takes back the tasks it has not claimed, each with one atomic operation and no syscall
//!   (the protocol is `claim.rs`); when the worker dies the pool reads it to tell the tasks
//!   that had started (failed with it) from those that never did (handed to another worker).
//! - The start word: with a `task_timeout`, when the worker claimed its task (`CLOCK_MONOTONIC`,
//!   nanoseconds), so the task's clock starts when it starts, not when it was sent.
//! - The outcome log: the worker appends there each outcome as it finishes a task, and
//!   empties it once it has sent them; when the worker dies the pool reads what is left, so a
//!   task that finished is delivered even though its outcome never left the worker.
//!
//! Everything in the mapping is read and written through atomics (the log as 64-bit words),
//! so whatever the other side does at the same time, no access is a data race.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::MemfdFlags;
use rustix::mm::{MapFlags, ProtFlags};

/// Where the log's words start: after the progress word, the start word and the log's
/// length, a cache line from the word the pool and the worker both write.
const LOG_AT: usize = 64;
/// The most bytes the log holds: what a worker finishes between two sends is far less
/// (it sends at least every millisecond); an outcome too big for it is sent at once instead.
pub(crate) const LOG_BYTES: usize = 256 << 10;

/// The shared memory of one worker: its progress word and its outcome log.
pub(crate) struct Progress {
    base: NonNull<AtomicU64>,
    /// Bytes mapped: `LOG_AT` and the log's capacity.
    len: usize,
}

// SAFETY: the mapping is only accessed through `AtomicU64` operations, which are safe from any
// thread; `Progress` owns the mapping and unmaps it once, on drop.
unsafe impl Send for Progress {}
// SAFETY: as above: shared access is atomic.
unsafe impl Sync for Progress {}

impl Progress {
    /// New shared memory (a zero word, an empty log), and the fd a worker maps it from.
    pub(crate) fn create() -> io::Result<(Progress, OwnedFd)> {
        // Sealed against exec (which systems with `vm.memfd_noexec = 2` require) where the
        // kernel knows the flag (Linux 6.3).
        let name = "mproc-pool-progress";
        let fd = match rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::NOEXEC_SEAL) {
            Err(rustix::io::Errno::INVAL) => rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC)?,
            made => made?,
        };
        // The log's pages are only allocated as they are written; the file is kept within
        // the file size limit (past it, ftruncate would raise SIGXFSZ): a smaller log only
        // means outcomes are sent sooner.
        let room = match rustix::process::getrlimit(rustix::process::Resource::Fsize).current {
            Some(limit) => (limit as usize).saturating_sub(LOG_AT) & !7,
            None => LOG_BYTES,
        };
        rustix::fs::ftruncate(&fd, (LOG_AT + room.min(LOG_BYTES)) as u64)?;
        Ok((Progress::map(&fd)?, fd))
    }

    /// Maps the memory `fd` holds (made by [`create`](Self::create)).
    pub(crate) fn map(fd: &OwnedFd) -> io::Result<Progress> {
        let size = rustix::fs::fstat(fd)?.st_size;
        if size < LOG_AT as i64 || size as usize > LOG_AT + LOG_BYTES || size % 8 != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a pool worker's progress memory"));
        }
        let len = size as usize;
        // SAFETY: a fresh shared mapping of `len` bytes of a file that long; no existing
        // memory is affected. The kernel returns page-aligned memory, so the `AtomicU64`s
        // below are aligned.
        let addr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        let base = NonNull::new(addr.cast::<AtomicU64>()).expect("mmap never returns null on success");
        Ok(Progress { base, len })
    }

    /// The mapping's 64-bit words.
    fn words(&self) -> &[AtomicU64] {
        // SAFETY: `base` points to a live, aligned shared mapping of `len` bytes (a multiple
        // of 8) owned by `self` (unmapped only in drop), accessed only atomically.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.len / 8) }
    }

    /// The word, for the claim protocol (`claim.rs`): the only way it is read or written.
    pub(crate) fn word(&self) -> &AtomicU64 {
        &self.words()[0]
    }

    /// When the worker claimed its last task, by [`now_ns`] (written only with a task timeout).
    pub(crate) fn started_ns(&self) -> &AtomicU64 {
        &self.words()[2]
    }

    /// The log's length in bytes (of whole records).
    fn log_len(&self) -> &AtomicU64 {
        &self.words()[1]
    }

    fn log_words(&self) -> &[AtomicU64] {
        &self.words()[LOG_AT / 8..]
    }

    /// The worker's side: appends `record` to the log; false (nothing written) if it does not
    /// fit. Only the worker writes the log.
    pub(crate) fn log_append(&self, record: &[u8]) -> bool {
        let words = self.log_words();
        let at = self.log_len().load(Ordering::Relaxed) as usize;
        let padded = (8 + record.len()).next_multiple_of(8);
        if at + padded > words.len() * 8 {
            return false;
        }
        let mut i = at / 8;
        words[i].store(record.len() as u64, Ordering::Relaxed);
        for chunk in record.chunks(8) {
            i += 1;
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            words[i].store(u64::from_le_bytes(word), Ordering::Relaxed);
        }
        // The record is whole before the length that covers it.
        self.log_len().store((at + padded) as u64, Ordering::Release);
        true
    }

    /// The worker's side: empties the log (its outcomes were sent).
    pub(crate) fn log_clear(&self) {
        self.log_len().store(0, Ordering::Release);
    }

    /// The pool's side: the records in the log, in the order appended. Whole records only;
    /// meant to be read once the worker is gone.
    pub(crate) fn log_records(&self) -> Vec<Vec<u8>> {
        let words = self.log_words();
        let len = (self.log_len().load(Ordering::Acquire) as usize).min(words.len() * 8);
        let mut records = Vec::new();
        let mut i = 0;
        while (i + 1) * 8 <= len {
            let n = words[i].load(Ordering::Relaxed) as usize;
            let end = i + 1 + n.div_ceil(8);
            if end * 8 > len {
                break;
            }
            let mut record = Vec::with_capacity(n);
            for word in &words[i + 1..end] {
                record.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
            }
            record.truncate(n);
            records.push(record);
            i = end;
        }
        records
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in the pool and its workers.
pub(crate) fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

impl Drop for Progress {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `map`, which nothing uses after `self` is gone.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_log_hands_over_whole_records_in_order() {
        let (pool, fd) = Progress::create().unwrap();
        let worker = Progress::map(&fd).unwrap();
        assert!(pool.log_records().is_empty());
        let records: Vec<Vec<u8>> = (0..20u8).map(|n| vec![n; n as usize * 3]).collect();
        for r in &records {
            assert!(worker.log_append(r));
        }
        assert_eq!(pool.log_records(), records);
        worker.log_clear();
        assert!(pool.log_records().is_empty());
        assert!(!worker.log_append(&vec![1; LOG_BYTES]), "too big for the log: nothing written");
        assert!(worker.log_append(&vec![2; LOG_BYTES - 8]), "exactly fills it");
        assert!(!worker.log_append(&[]));
        assert_eq!(pool.log_records(), vec![vec![2; LOG_BYTES - 8]]);
    }
}
