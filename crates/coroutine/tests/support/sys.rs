//! The test suite's only `unsafe`: the binary's allocator, the system's with each thread's
//! allocations counted, so a test can assert how many an operation makes.
#![allow(unsafe_code)]

/// The test binary's allocator: the system's, counting each thread's allocations (and
/// reallocations), so a test can assert how many an operation makes ([`allocations`]).
pub struct CountingAlloc;

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many allocations and reallocations this thread has made so far.
pub fn allocations() -> u64 {
    ALLOCATIONS.with(std::cell::Cell::get)
}

fn count_allocation() {
    // A const-initialised thread-local `Cell`: no allocation, no re-entry; not counted while
    // the thread is being torn down.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call goes straight to `System`, which upholds the `GlobalAlloc` contract;
// counting touches only a thread-local `Cell`.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    /// # Safety
    ///
    /// `GlobalAlloc::alloc`'s contract, which `System` upholds.
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: our caller upholds `alloc`'s contract, which is `System`'s.
        unsafe { std::alloc::System.alloc(layout) }
    }

    /// # Safety
    ///
    /// `GlobalAlloc::alloc_zeroed`'s contract, which `System` upholds.
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: our caller upholds `alloc_zeroed`'s contract, which is `System`'s.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    /// # Safety
    ///
    /// `GlobalAlloc::dealloc`'s contract, which `System` upholds.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from `System` with `layout`, as our caller promises.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    /// # Safety
    ///
    /// `GlobalAlloc::realloc`'s contract, which `System` upholds.
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        // SAFETY: our caller upholds `realloc`'s contract, which is `System`'s.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}
