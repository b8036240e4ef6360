//! [`Leaked`]: a `&'static T` one store replaces, for state a forked child must be able to
//! change without a lock.
//!
//! A lock held across a fork costs the parent a page copy when it lets go (its page is shared
//! copy-on-write with the child just made), and a lock another thread held at the fork never
//! opens in the child. A value read through one atomic pointer needs neither: readers get a
//! `&'static T`, and whoever changes it stores a pointer to a new, leaked value. Old values
//! are leaked too (a reader may still hold them): use it for what changes a few times in a
//! process's life.

use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

/// A `&'static T`, made on first use or replaced by [`set`](Self::set).
pub(crate) struct Leaked<T> {
    value: AtomicPtr<T>,
}

impl<T> Leaked<T> {
    pub(crate) const fn new() -> Self {
        Leaked { value: AtomicPtr::new(ptr::null_mut()) }
    }

    /// The value, made with `init` if there is none yet. `init` may run and its value be
    /// dropped unused when two threads race for the first use.
    pub(crate) fn get_or_init(&self, init: impl FnOnce() -> T) -> &'static T {
        if let Some(value) = self.get() {
            return value;
        }
        let fresh = Box::into_raw(Box::new(init()));
        match self.value.compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
            // SAFETY: `fresh` came from `Box::into_raw` and is never freed once stored.
            Ok(_) => unsafe { &*fresh },
            Err(theirs) => {
                // SAFETY: `fresh` came from `Box::into_raw` just above and was never shared.
                drop(unsafe { Box::from_raw(fresh) });
                // SAFETY: a stored pointer is never null here and never freed (see `set`).
                unsafe { &*theirs }
            }
        }
    }

    /// The value, if there is one.
    pub(crate) fn get(&self) -> Option<&'static T> {
        let value = self.value.load(Ordering::Acquire);
        // SAFETY: every non-null pointer stored here is a `&'static T` (from `set`) or a leaked
        // box (from `get_or_init`): valid for the rest of the process, never freed.
        (!value.is_null()).then(|| unsafe { &*value })
    }

    /// Makes `value` the value. The one before stays allocated: a reader may hold it.
    #[inline(always)]
    pub(crate) fn set(&self, value: &'static T) {
        self.value.store(ptr::from_ref(value).cast_mut(), Ordering::Release);
    }
}
