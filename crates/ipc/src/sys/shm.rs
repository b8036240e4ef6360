//! The `unsafe` of shared memory: a file mapped shared, and the process-shared robust mutex.
//!
//! A [`Mapping`] is a whole file mapped `MAP_SHARED` for as long as the value lives. Other
//! processes map the same pages and write them at any time, so the mapping is only reached
//! through raw pointers: typed views are atomics (made for shared memory), [`RawMutex`] (the
//! robust futex lock of `sys/robust.rs`, all atomics) and byte copies. The file is sealed
//! against shrinking before anything else sees it, so no access through a live mapping can
//! fault with `SIGBUS`, and it is sized only after the file size limit was checked (past it,
//! `ftruncate` would raise `SIGXFSZ`).

use std::io;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use rustix::fs::SealFlags;
use rustix::mm::{MapFlags, ProtFlags};

/// A file mapped shared, read-write, whole.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
    /// For a [`Shared`] region: whether a thread of this process holds one of its locks
    /// (then the mapping is never unmapped, see `Drop`).
    held_here: Option<fn(&Mapping) -> bool>,
}

// SAFETY: the mapping is plain memory owned by this value (unmapped once, on drop); it is
// reached only through raw pointers and atomics, never through references that assume no
// other thread or process writes it, so sharing or moving it between threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above: `&Mapping` only gives raw-pointer and atomic access.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// A new anonymous file (`memfd`, close-on-exec, sealed against shrinking and growing)
    /// of exactly `len` zero bytes, mapped.
    pub(crate) fn anonymous(name: &str, len: usize) -> io::Result<Mapping> {
        use rustix::fs::MemfdFlags;
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        set_len(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        Mapping::map(fd, len)
    }

    /// Maps `len` bytes of `fd`, which must be a file of at least `len` bytes that cannot
    /// shrink under the mapping (a sealed memfd, or a file only its creator truncates).
    pub(crate) fn map(fd: OwnedFd, len: usize) -> io::Result<Mapping> {
        let size = rustix::fs::fstat(&fd)?.st_size as u64;
        if size < len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("shared file holds {size} bytes, fewer than the {len} expected"),
            ));
        }
        if len == 0 {
            return Ok(Mapping { ptr: NonNull::dangling(), len, fd, held_here: None });
        }
        // SAFETY: a fresh mapping placed by the kernel (no fixed address), so it aliases no
        // Rust memory; it is unmapped only by `drop`.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }?;
        Ok(Mapping {
            ptr: NonNull::new(ptr.cast()).expect("mmap never returns null"),
            len,
            fd,
            held_here: None,
        })
    }

    /// The file's seals include "cannot shrink": a mapping of it never faults.
    pub(crate) fn cannot_shrink(fd: &OwnedFd) -> bool {
        rustix::fs::fcntl_get_seals(fd).is_ok_and(|s| s.contains(SealFlags::SHRINK))
    }

    /// The mapped length.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The file.
    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The first byte. Only ever dereferenced as raw memory other processes share.
    pub(crate) fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// A typed view of `T` at `offset`, which must lie in the mapping at `T`'s alignment.
    ///
    /// # Safety
    /// The bytes at `offset` must hold a valid `T` for as long as the reference lives,
    /// whatever other processes write there: `T` must be a type made for shared memory
    /// (atomics, [`RawMutex`], or aggregates of them), initialized once.
    pub(crate) unsafe fn view<T>(&self, offset: usize) -> &T {
        assert!(offset.checked_add(size_of::<T>()).is_some_and(|end| end <= self.len), "view out of range");
        let p = self.ptr.as_ptr().wrapping_add(offset);
        assert!(p.cast::<T>().is_aligned(), "misaligned view");
        // SAFETY: in range and aligned (checked above); validity is the caller's promise.
        unsafe { &*p.cast::<T>() }
    }

    /// Copies `dst.len()` bytes from `offset` out of the mapping. Panics if out of range.
    ///
    /// The bytes are plain data that another process may be writing at the same moment (then
    /// the copy is some mix of old and new bytes: callers that need a consistent copy hold a
    /// lock around it). No Rust reference to the mapping is made.
    #[inline]
    pub(crate) fn read(&self, offset: usize, dst: &mut [u8]) {
        assert!(offset.checked_add(dst.len()).is_some_and(|end| end <= self.len), "read out of range");
        // SAFETY: the source range lies in the mapping (checked above), which lives as long
        // as `self`; `dst` is a distinct Rust buffer, so the ranges do not overlap; any byte
        // value is a valid `u8`.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), dst.as_mut_ptr(), dst.len()) }
    }

    /// Copies `src` into the mapping at `offset`. Panics if out of range.
    #[inline]
    pub(crate) fn write(&self, offset: usize, src: &[u8]) {
        assert!(offset.checked_add(src.len()).is_some_and(|end| end <= self.len), "write out of range");
        // SAFETY: the destination range lies in the mapping (checked above), memory no Rust
        // reference covers (only raw pointers and atomics reach it); `src` is a distinct
        // buffer.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len()) }
    }
}

/// Sizes the file `fd` to `len` bytes; an error naming the file size limit (`ulimit -f`,
/// `RLIMIT_FSIZE`) if `len` is past it, where `ftruncate` would have the kernel kill the
/// process with `SIGXFSZ`.
pub(crate) fn set_len(fd: &OwnedFd, len: u64) -> io::Result<()> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Fsize).current.unwrap_or(u64::MAX);
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!(
                "a shared block of {len} bytes is past this process's file size limit of {limit} bytes (ulimit -f)"
            ),
        ));
    }
    Ok(rustix::fs::ftruncate(fd, len)?)
}

impl Drop for Mapping {
    /// Unmaps, unless a thread of this process still holds a lock in the mapping: a guard
    /// that was `mem::forget`-ed, its lock's last handle then dropped. That lock is linked on
    /// its thread's robust list (which the thread's next lock operation, and the kernel at the
    /// thread's end, write through), so its memory stays mapped for the rest of the process,
    /// like the lock a forgotten `std` guard leaks. The check runs only here, on the last
    /// handle of a region: locking costs nothing more.
    fn drop(&mut self) {
        if self.held_here.is_some_and(|held| held(self)) {
            return;
        }
        if self.len > 0 {
            // SAFETY: the mapping made in `map`, unmapped once; every view of it borrowed
            // `self`, so none outlives it.
            let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

pub(crate) use super::robust::{MutexKind, RawMutex, Taken};

/// A process-shared robust mutex that refuses a relock by its owner (`EDEADLK`).
///
/// Lives only inside shared memory (a [`Shared`]); see [`crate::shm`] for its API.
#[repr(transparent)]
pub struct ShmMutex(RawMutex);

/// A process-shared robust mutex that its owner may lock again (released after as many
/// unlocks). Lives only inside shared memory.
#[repr(transparent)]
pub struct ShmRecursiveMutex(RawMutex);

impl ShmMutex {
    pub(crate) fn raw(&self) -> &RawMutex {
        &self.0
    }
}

impl ShmRecursiveMutex {
    pub(crate) fn raw(&self) -> &RawMutex {
        &self.0
    }
}

/// A type that can live in memory shared between processes: valid whatever bytes other
/// processes leave in it, and made ready by [`init`](ShmType::init) on zeroed memory.
///
/// Implemented by mproc-ipc for the atomic integers, [`ShmMutex`], [`ShmRecursiveMutex`],
/// [`ShmCondvar`](crate::ShmCondvar), arrays and tuples of these. Build your layout from
/// them (a tuple, or an array): both sides of a [`Shared`] are the same program, so a tuple's
/// layout is the same in every process.
///
/// # Safety
/// Every byte pattern another process can leave in the memory must be a valid `Self`, it must
/// be usable from many threads and processes at once through `&Self`, and `init` on zeroed
/// memory must make it ready for use. A type that holds a [`ShmMutex`] or
/// [`ShmRecursiveMutex`] must report each one to [`for_each_lock`](ShmType::for_each_lock)
/// (a held lock's memory is then never unmapped under the thread's robust list).
pub unsafe trait ShmType: Sync + Sized {
    /// Makes zeroed memory at `this` ready for use.
    ///
    /// # Safety
    /// `this` points to zeroed, writable memory for a `Self` that nothing uses yet.
    #[doc(hidden)]
    unsafe fn init(this: *mut Self) -> io::Result<()>;

    /// Calls `f` with the futex word of every lock in `self` (none by default).
    #[doc(hidden)]
    fn for_each_lock(&self, f: &mut dyn FnMut(&AtomicU32)) {
        let _ = f;
    }
}

macro_rules! zero_is_ready {
    ($($t:ty),*) => {$(
        // SAFETY: an atomic integer (or a struct of them) is valid for every byte pattern,
        // made for concurrent access, and zero is a ready value.
        unsafe impl ShmType for $t {
            /// # Safety
            /// As [`ShmType::init`].
            unsafe fn init(_: *mut Self) -> io::Result<()> {
                Ok(())
            }
        }
    )*};
}
zero_is_ready!(
    std::sync::atomic::AtomicU8,
    std::sync::atomic::AtomicU16,
    std::sync::atomic::AtomicU32,
    std::sync::atomic::AtomicU64,
    std::sync::atomic::AtomicI8,
    std::sync::atomic::AtomicI16,
    std::sync::atomic::AtomicI32,
    std::sync::atomic::AtomicI64,
    std::sync::atomic::AtomicUsize,
    std::sync::atomic::AtomicIsize,
    ShmCondvar,
    Listeners
);

// SAFETY: glibc's mutex words are only touched with its atomics; a dead owner's state is
// repaired by the robust protocol; `init` runs `pthread_mutex_init` on unused memory.
unsafe impl ShmType for ShmMutex {
    /// # Safety
    /// As [`ShmType::init`].
    unsafe fn init(this: *mut Self) -> io::Result<()> {
        // SAFETY: `this` is unused writable memory (the caller's promise); transparent.
        unsafe { RawMutex::init(this.cast(), MutexKind::ErrorCheck) }
    }

    fn for_each_lock(&self, f: &mut dyn FnMut(&AtomicU32)) {
        f(self.0.word());
    }
}

// SAFETY: as for `ShmMutex`.
unsafe impl ShmType for ShmRecursiveMutex {
    /// # Safety
    /// As [`ShmType::init`].
    unsafe fn init(this: *mut Self) -> io::Result<()> {
        // SAFETY: `this` is unused writable memory (the caller's promise); transparent.
        unsafe { RawMutex::init(this.cast(), MutexKind::Recursive) }
    }

    fn for_each_lock(&self, f: &mut dyn FnMut(&AtomicU32)) {
        f(self.0.word());
    }
}

// SAFETY: zero-sized: no byte to be invalid, nothing to share or initialize. It only names
// `P` in a region's type (and so in the type tag a receiver checks): `Value<P>` and `Array<P>`
// keep their `P`s in the data bytes, and are mapped as `(ShmMutex, PhantomData<P>)`.
unsafe impl<P: Plain> ShmType for PhantomData<P> {
    /// # Safety
    /// As [`ShmType::init`].
    unsafe fn init(_: *mut Self) -> io::Result<()> {
        Ok(())
    }
}

// SAFETY: valid and concurrent if each element is; each element is initialized in place.
unsafe impl<T: ShmType, const N: usize> ShmType for [T; N] {
    /// # Safety
    /// As [`ShmType::init`].
    unsafe fn init(this: *mut Self) -> io::Result<()> {
        for i in 0..N {
            // SAFETY: element `i` of the array the caller hands over.
            unsafe { T::init(this.cast::<T>().add(i))? };
        }
        Ok(())
    }

    fn for_each_lock(&self, f: &mut dyn FnMut(&AtomicU32)) {
        self.iter().for_each(|t| t.for_each_lock(f));
    }
}

macro_rules! tuple_shm {
    ($($name:ident . $idx:tt),*) => {
        // SAFETY: valid and concurrent if each field is; each is initialized in place.
        unsafe impl<$($name: ShmType),*> ShmType for ($($name,)*) {
            /// # Safety
            /// As [`ShmType::init`].
            unsafe fn init(this: *mut Self) -> io::Result<()> {
                // SAFETY: each field of the tuple the caller hands over.
                unsafe { $($name::init(&raw mut (*this).$idx)?;)* }
                Ok(())
            }

            fn for_each_lock(&self, f: &mut dyn FnMut(&AtomicU32)) {
                $(self.$idx.for_each_lock(f);)*
            }
        }
    };
}
tuple_shm!(A.0);
tuple_shm!(A.0, B.1);
tuple_shm!(A.0, B.1, C.2);
tuple_shm!(A.0, B.1, C.2, D.3);
tuple_shm!(A.0, B.1, C.2, D.3, E.4);
tuple_shm!(A.0, B.1, C.2, D.3, E.4, F.5);
tuple_shm!(A.0, B.1, C.2, D.3, E.4, F.5, G.6);
tuple_shm!(A.0, B.1, C.2, D.3, E.4, F.5, G.6, H.7);

/// Where the data bytes start after a header `T`: a cache line past it.
pub(crate) const fn data_offset<T>() -> usize {
    size_of::<T>().next_multiple_of(64)
}

/// A `T` and `data_len` plain bytes in memory shared with other processes (see
/// [`crate::shm`]).
pub struct Shared<T: ShmType> {
    map: Arc<Mapping>,
    _t: PhantomData<T>,
}

impl<T: ShmType> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared { map: self.map.clone(), _t: PhantomData }
    }
}

impl<T: ShmType> Shared<T> {
    /// A new anonymous region: `T` initialized, then `data_len` zero bytes.
    pub(crate) fn create(data_len: usize) -> io::Result<Self> {
        let len = data_offset::<T>()
            .checked_add(data_len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "shared region too large"))?;
        let mut map = Mapping::anonymous("mproc-shared", len)?;
        const { assert!(align_of::<T>() <= 64) };
        // SAFETY: the file is new and zero-filled, mapped here only, so the header is unused
        // zeroed memory; the mapping is at least `data_offset::<T>() >= size_of::<T>()` long
        // and page-aligned, so aligned for `T` (alignment at most 64, asserted above).
        unsafe { T::init(map.base().cast())? };
        map.held_here = Some(held_here::<T>);
        Ok(Shared { map: Arc::new(map), _t: PhantomData })
    }

    /// A region another process made, from its file.
    pub(crate) fn attach(fd: OwnedFd, data_len: usize) -> io::Result<Self> {
        if !Mapping::cannot_shrink(&fd) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "shared region file is not sealed"));
        }
        let len = data_offset::<T>().saturating_add(data_len);
        const { assert!(align_of::<T>() <= 64) };
        let mut map = Mapping::map(fd, len)?;
        map.held_here = Some(held_here::<T>);
        Ok(Shared { map: Arc::new(map), _t: PhantomData })
    }

    pub(crate) fn mapping(&self) -> &Mapping {
        &self.map
    }
}

/// Whether a thread of this process holds one of the locks of the `T` at the start of `map`,
/// a [`Shared<T>`]'s mapping.
fn held_here<T: ShmType>(map: &Mapping) -> bool {
    if size_of::<T>() == 0 {
        return false;
    }
    // SAFETY: `map` is a `Shared<T>`'s (only `create` and `attach` set this function), whose
    // header is an initialized `T`, valid whatever other processes write.
    let header = unsafe { map.view::<T>(0) };
    let mut held = false;
    header.for_each_lock(&mut |word| held = held || super::robust::held_in_this_process(word));
    held
}

impl<T: ShmType> std::ops::Deref for Shared<T> {
    type Target = T;

    /// Without `view`'s checks (the hot path of every queue and lock operation): they hold
    /// from the region's making on.
    #[inline]
    fn deref(&self) -> &T {
        if size_of::<T>() == 0 {
            // SAFETY: as below (a zero-sized `T`'s mapping may be empty: checked).
            return unsafe { self.map.view::<T>(0) };
        }
        // SAFETY: `create` and `attach` made the mapping at least `data_offset::<T>() >=
        // size_of::<T>()` bytes long (so, `T` not zero-sized, a real mapping from `mmap`),
        // at a page boundary, so aligned for `T` (alignment at most 64, asserted in both); it
        // lives as long as `self.map`. The header was initialized by the region's creator
        // before it was shared (`create`), and `T: ShmType` is valid whatever other processes
        // write.
        unsafe { &*self.map.base().cast::<T>() }
    }
}

/// Plain data that [`Value`](crate::Value) and [`Array`](crate::Array) hold: `Copy`, with
/// no padding, valid for every byte pattern (so whatever a process killed mid-write leaves is
/// a value): the integers, the floats, and arrays of them.
///
/// # Safety
/// Every byte pattern of `size_of::<Self>()` bytes is a valid `Self`; alignment at most 64.
pub unsafe trait Plain: Copy + Send + Sync + 'static {}

macro_rules! plain {
    ($($t:ty),*) => {$(
        // SAFETY: a primitive number: no padding, every bit pattern valid.
        unsafe impl Plain for $t {}
    )*};
}
plain!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64);
// SAFETY: an array of `Plain` has no padding between elements and every pattern is valid.
unsafe impl<P: Plain, const N: usize> Plain for [P; N] {}

/// A held lock and the `len` plain values it guards, at the data bytes of a region.
pub struct ArrayGuard<'a, P: Plain> {
    _guard: ShmGuard<'a>,
    ptr: NonNull<P>,
    len: usize,
}

impl<'a, P: Plain> ArrayGuard<'a, P> {
    /// The `len` values of `P` in `shared`'s data, guarded by `guard`, which must be the lock
    /// that every access to those bytes holds (in every process).
    pub(crate) fn new<T: ShmType>(shared: &'a Shared<T>, guard: ShmGuard<'a>, len: usize) -> Self {
        const { assert!(align_of::<P>() <= 64) };
        let bytes = len.checked_mul(size_of::<P>()).expect("array size overflows");
        assert!(bytes <= shared.map.len() - data_offset::<T>(), "array larger than the region");
        let ptr = shared.map.base().wrapping_add(data_offset::<T>()).cast::<P>();
        ArrayGuard { _guard: guard, ptr: NonNull::new(ptr).unwrap_or(NonNull::dangling()), len }
    }
}

impl<P: Plain> std::ops::Deref for ArrayGuard<'_, P> {
    type Target = [P];

    fn deref(&self) -> &[P] {
        // SAFETY: the range is in the mapping (checked in `new`), aligned (the data start is
        // 64-aligned), every pattern is a valid `P`, and the lock held makes this the only
        // access: every process reaches these bytes only through an `ArrayGuard` of this lock.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<P: Plain> std::ops::DerefMut for ArrayGuard<'_, P> {
    fn deref_mut(&mut self) -> &mut [P] {
        // SAFETY: as in `deref`; `&mut self` makes it the only reference in this process too.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

/// Holds a [`ShmMutex`] or [`ShmRecursiveMutex`]; unlocks on drop.
///
/// Not `Send`: the lock is released by the thread that took it.
///
/// A guard that is `mem::forget`-ed leaves its lock held until the thread ends; the lock's
/// memory then stays mapped even after its last handle is dropped (see the crate's caveats).
#[must_use = "the lock is released when the guard is dropped"]
pub struct ShmGuard<'a> {
    pub(crate) raw: &'a RawMutex,
    pub(crate) _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for ShmGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShmGuard")
    }
}

impl Drop for ShmGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        // Only fails if this thread does not hold it, which a guard rules out.
        let _ = self.raw.unlock();
    }
}

/// A condition variable in shared memory, used with a [`ShmMutex`] (or
/// [`ShmRecursiveMutex`] held once). A sequence number and a waiter count; waits are futex
/// waits on the sequence number. Zeroed memory is a ready condvar.
#[repr(C)]
#[derive(Debug)]
pub struct ShmCondvar {
    pub(crate) seq: std::sync::atomic::AtomicU32,
    pub(crate) waiters: std::sync::atomic::AtomicU32,
}

/// How many coroutines (in any process) listen for a [`Doorbell`](crate::Doorbell): a count in
/// shared memory, beside the state whose changes ring it. Zeroed memory is a ready count.
#[repr(transparent)]
#[derive(Debug, Default)]
pub struct Listeners(pub(crate) std::sync::atomic::AtomicU32);
