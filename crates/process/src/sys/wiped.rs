//! Per-process state on a page the kernel gives every forked child zeroed
//! (`MADV_WIPEONFORK`, Linux 4.14; mproc needs 5.3 for pidfds anyway).
//!
//! A forked child inherits a copy of every static, locks included: a lock another thread of
//! the parent held at the fork stays locked for ever in the child, and the parent's registries
//! (its children, its reaper thread) mean nothing there. So each [`PerProcess`] value lives
//! behind a pointer in a word of this page: in a child, whoever forked it and however, the
//! word reads null and the value is made afresh on first use. The parent's copy is left
//! untouched in the child's memory (never dropped: it may be half-updated by a thread that no
//! longer exists), and nothing runs or writes at the fork itself.

use std::marker::PhantomData;
use std::ptr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use parking_lot::Mutex;

/// The words of the page, and how many are handed out.
struct Page {
    words: &'static [AtomicPtr<()>],
    used: AtomicUsize,
}

fn page() -> &'static Page {
    static PAGE: OnceLock<Page> = OnceLock::new();
    PAGE.get_or_init(|| Page { words: map_page(), used: AtomicUsize::new(0) })
}

/// Maps the page and marks it wiped on fork. Never unmapped.
fn map_page() -> &'static [AtomicPtr<()>] {
    use rustix::mm::{Advice, MapFlags, ProtFlags};
    let size = super::page_size();
    // SAFETY: a fresh private anonymous mapping, placed by the kernel: it aliases nothing.
    let addr = unsafe {
        rustix::mm::mmap_anonymous(
            ptr::null_mut(),
            size,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )
    }
    .unwrap_or_else(|e| panic!("mproc: cannot map a page for per-process state: {e}"));
    // SAFETY: `addr..addr+size` is the mapping just made, used by nothing else yet.
    if let Err(e) = unsafe { rustix::mm::madvise(addr, size, Advice::LinuxWipeOnFork) } {
        panic!("mproc needs MADV_WIPEONFORK (Linux 4.14 or later): {e}");
    }
    let len = size / std::mem::size_of::<AtomicPtr<()>>();
    // SAFETY: the page is mapped read-write for the rest of the process's life, zero-filled
    // (a null `AtomicPtr` is all zeros) and page-aligned, so it holds `len` valid, aligned
    // `AtomicPtr`s, which only atomic operations touch from here on.
    unsafe { std::slice::from_raw_parts(addr.cast::<AtomicPtr<()>>(), len) }
}

/// The next free word of the page, for one static for the life of the process.
fn claim_word() -> usize {
    let index = page().used.fetch_add(1, Ordering::Relaxed);
    assert!(index < page().words.len(), "mproc: more per-process statics than a page holds");
    index
}

/// This process's pid, asked of the kernel once per process.
pub(crate) fn pid() -> u32 {
    static WORD: OnceLock<usize> = OnceLock::new();
    let word = &page().words[*WORD.get_or_init(claim_word)];
    match word.load(Ordering::Relaxed) as usize {
        0 => {
            let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
            word.store(pid as usize as *mut (), Ordering::Relaxed);
            pid
        }
        pid => pid as u32,
    }
}

/// A `T` of this process: made with `init` on first use in each process, forked children
/// included. Use it from a `static`.
pub(crate) struct PerProcess<T> {
    /// Which word of the page points at this process's value (0: not claimed yet; else the
    /// index plus one). The same in a child: it inherits the claim, not the value.
    word: AtomicUsize,
    _value: PhantomData<Mutex<T>>,
}

impl<T: Send> PerProcess<T> {
    pub(crate) const fn new() -> Self {
        PerProcess { word: AtomicUsize::new(0), _value: PhantomData }
    }

    /// Runs `f` on this process's value, made with `init` first if there is none yet. `init`
    /// may run and its value be dropped unused when two threads race for the first use: keep
    /// it cheap and free of side effects.
    pub(crate) fn with<R>(&self, init: impl FnOnce() -> T, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.value(init).lock())
    }

    fn value(&self, init: impl FnOnce() -> T) -> &Mutex<T> {
        let word = &page().words[self.claimed()];
        let mut value = word.load(Ordering::Acquire).cast::<Mutex<T>>();
        if value.is_null() {
            let fresh = Box::into_raw(Box::new(Mutex::new(init())));
            value = match word.compare_exchange(
                ptr::null_mut(),
                fresh.cast(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => fresh,
                Err(theirs) => {
                    // SAFETY: `fresh` came from `Box::into_raw` just above and was never shared.
                    drop(unsafe { Box::from_raw(fresh) });
                    theirs.cast()
                }
            };
        }
        // SAFETY: a non-null word points at a `Mutex<T>` leaked from a `Box` by this static
        // in this process (a forked child finds the word null), never freed.
        unsafe { &*value }
    }

    fn claimed(&self) -> usize {
        match self.word.load(Ordering::Acquire) {
            0 => {
                let index = claim_word();
                match self.word.compare_exchange(0, index + 1, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => index,
                    // Another thread claimed first; the word claimed here stays unused.
                    Err(theirs) => theirs - 1,
                }
            }
            n => n - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    static VALUE: PerProcess<u32> = PerProcess::new();

    /// A child forked (by plain `fork(3)`, not by mproc) while another thread holds this
    /// process's value finds a fresh value of its own, and a fresh pid, instead of hanging.
    #[test]
    fn a_forked_child_starts_afresh_even_with_the_lock_held() {
        VALUE.with(|| 1, |v| *v = 2);
        let parent_pid = pid();
        let (held_tx, held_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            VALUE.with(
                || 1,
                |_| {
                    held_tx.send(()).unwrap();
                    release_rx.recv_timeout(Duration::from_secs(60)).ok();
                },
            )
        });
        held_rx.recv().unwrap();
        // SAFETY: the child only reads its per-process state and leaves with `_exit`.
        let child = unsafe { libc::fork() };
        if child == 0 {
            let fresh = VALUE.with(|| 7, |v| *v);
            let pid_ok =
                pid() != parent_pid && pid() == rustix::process::getpid().as_raw_nonzero().get() as u32;
            // SAFETY: `_exit` ends the child at once.
            unsafe { libc::_exit(if fresh == 7 && pid_ok { 0 } else { 1 }) };
        }
        assert!(child > 0, "fork failed");
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(child).unwrap(),
            rustix::process::PidfdFlags::empty(),
        )
        .unwrap();
        let mut fds = [rustix::event::PollFd::new(&pidfd, rustix::event::PollFlags::IN)];
        let deadline = rustix::event::Timespec { tv_sec: 60, tv_nsec: 0 };
        assert_eq!(rustix::event::poll(&mut fds, Some(&deadline)).unwrap(), 1, "the child hung");
        let status = rustix::process::waitid(
            rustix::process::WaitId::PidFd(std::os::fd::AsFd::as_fd(&pidfd)),
            rustix::process::WaitIdOptions::EXITED,
        )
        .unwrap()
        .unwrap();
        assert_eq!(status.exit_status(), Some(0), "the child saw its parent's value or pid");
        assert_eq!(VALUE.with(|| 1, |v| *v), 2, "the parent keeps its own value");
    }
}
