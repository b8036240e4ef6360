//! What the task cell synchronises with: the standard library's types (and parking_lot's
//! mutex), or, in the model-checked build (`RUSTFLAGS="--cfg loom"`, run by `cargo xtask
//! test`), loom's, so that the loom tests in `sys/loom_tests.rs` check the very code that runs.
//!
//! `UnsafeCell` has loom's API in both builds (access through a closure, so loom can see each
//! access); the rest are the standard types or loom's copies of them.

#[cfg(not(loom))]
mod imp {
    pub(crate) use std::cell::Cell;
    pub(crate) use std::sync::Arc;
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};

    /// `std::cell::UnsafeCell` with loom's API.
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(value: T) -> UnsafeCell<T> {
            UnsafeCell(std::cell::UnsafeCell::new(value))
        }

        /// Runs `f` on a pointer to the value; what `f` may do with it is the caller's
        /// business, as with `std::cell::UnsafeCell::get`.
        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }

    /// parking_lot's mutex (no poisoning: `lock` gives the guard).
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(parking_lot::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Mutex<T> {
            Mutex(parking_lot::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, T> {
            self.0.lock()
        }
    }
}

#[cfg(loom)]
mod imp {
    pub(crate) use loom::cell::{Cell, UnsafeCell};
    pub(crate) use loom::sync::Arc;
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};

    /// loom's mutex, with parking_lot's API.
    #[derive(Debug)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Mutex<T> {
            Mutex(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
            self.0.lock().expect("no panic while locked")
        }
    }
}

pub(crate) use imp::*;
