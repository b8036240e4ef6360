//! The only `unsafe` of `mproc-ipc`.
//!
//! Here: reading straight into a `Vec`'s spare capacity (so a large message is not zero-filled
//! before the kernel overwrites it), and `FromRawFd`, whose contract is unsafe by definition;
//! in the modules below, the codec's bulk casts, shared memory, the robust lock, the
//! out-of-line mapping, the fork handlers of a process-wide lock (`forks.rs`), and a small
//! frame built on the stack without a zero fill (`small.rs`). Each block says why it is sound.
//!
//! This is the bottom of the crate: it names no end type. `FromRawFd` is a macro here that
//! each handle module (`pipe`, `duplex`) invokes for its types.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::BorrowedFd;

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

/// Copies `src` to the front of `dst` (which need not be initialized) and returns those bytes,
/// initialized (`<[MaybeUninit<u8>]>::write_copy_of_slice`, stable only since Rust 1.93).
///
/// # Panics
/// If `src` is longer than `dst`.
pub(crate) fn write_front<'a>(dst: &'a mut [std::mem::MaybeUninit<u8>], src: &[u8]) -> &'a mut [u8] {
    let dst = &mut dst[..src.len()];
    // SAFETY: `dst` has exactly `src.len()` bytes of room, in a distinct allocation (`dst` is
    // borrowed mutably, `src` shared); once copied they are initialized bytes, borrowed as long
    // as `dst` is.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast::<u8>(), src.len());
        &mut *(dst as *mut [std::mem::MaybeUninit<u8>] as *mut [u8])
    }
}

/// Empties `buf` and gives its pages back to the kernel lazily (`MADV_FREE`): they stay mapped
/// and are reused without a fault if the kernel has not taken them by the next fill, and are
/// taken first when memory runs short. For a large receive buffer kept between messages.
pub(crate) fn release_pages(buf: &mut Vec<u8>) {
    buf.clear();
    let page = rustix::param::page_size();
    let start = (buf.as_mut_ptr() as usize).next_multiple_of(page);
    let end = (buf.as_mut_ptr() as usize + buf.capacity()) / page * page;
    if end > start {
        // SAFETY: `[start, end)` lies inside `buf`'s allocation, in its spare capacity (its
        // length is 0), which holds nothing anyone reads before writing: whatever the kernel
        // leaves there (old bytes or zeros) is fine. The allocator's own bookkeeping lies
        // outside the capacity.
        let _ = unsafe { rustix::mm::madvise(start as *mut _, end - start, rustix::mm::Advice::LinuxFree) };
    }
}

/// A cheap, roughly nanosecond-scale tick count for telling a quick look from a slow one:
/// the CPU's time-stamp counter on x86-64 (about 1 to 4 per nanosecond, whatever the clock
/// speed; no system call and, unlike a clock read through the vDSO, no page to touch in a
/// process just switched to), the monotonic clock's nanoseconds elsewhere. Only differences
/// of two reads in one thread mean anything, and only roughly.
#[inline(always)]
pub(crate) fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `rdtsc` reads a counter; it touches no memory and every x86-64 CPU has it.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        (t.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(t.tv_nsec as u64)
    }
}

/// `FromRawFd` for a typed end that is `From<OwnedFd>`, with `$what` saying which fd it takes.
/// Written here, with the crate's other `unsafe`, and invoked by the module of each end type.
macro_rules! impl_from_raw_fd {
    ($name:ident < $($g:ident),* >, $what:literal) => {
        #[allow(unsafe_code)]
        impl<$($g),*> std::os::fd::FromRawFd for $name<$($g),*> {
            #[doc = concat!("Takes ownership of `fd`, ", $what, ".")]
            ///
            /// # Safety
            /// `fd` must be an open file descriptor that nothing else owns or closes.
            unsafe fn from_raw_fd(fd: std::os::fd::RawFd) -> Self {
                // SAFETY: the caller hands over an open, otherwise unowned fd, as this fn requires.
                Self::from(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
            }
        }
    };
}
pub(crate) use impl_from_raw_fd;

pub(crate) mod bulk;
pub(crate) mod forks;
pub(crate) mod outofline;
pub(crate) mod robust;
pub(crate) mod shm;
pub(crate) mod small;
