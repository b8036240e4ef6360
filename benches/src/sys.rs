//! What needs `unsafe`: the raw-syscall floor (a bare `fork` + `_exit` + `waitpid`),
//! allocators that count allocations (per thread, or per process), and CPU clocks.
#![allow(unsafe_code)]

/// Forks a child that exits at once, and waits for it: the floor every fork-based start
/// method is measured against.
pub fn fork_exit_wait() {
    // SAFETY: the child calls only `_exit`, which is async-signal-safe: nothing it could do
    // touches state other threads own.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        // SAFETY: `_exit` ends the child at once.
        0 => unsafe { libc::_exit(0) },
        pid => {
            let mut status = 0;
            // SAFETY: waits for the child just forked; `status` is a valid out-pointer.
            let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
            assert_eq!(rc, pid, "waitpid");
        }
    }
}

/// A global allocator that counts this thread's allocations (and reallocations) and passes
/// every call to the system allocator: install it with `#[global_allocator]`, read it with
/// [`allocations`].
pub struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many allocations this thread has made under [`CountingAlloc`].
pub fn allocations() -> u64 {
    ALLOCATIONS.with(std::cell::Cell::get)
}

fn count() {
    // A const-initialised thread-local `Cell`: no allocation, no re-entry; gone (and not
    // counted) while the thread is being torn down.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call goes straight to `System`, which upholds the `GlobalAlloc` contract;
// counting touches only a thread-local `Cell`.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count();
        // SAFETY: our caller upholds `alloc`'s contract, which is `System`'s.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from `System` with `layout`, as our caller promises.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: our caller upholds `realloc`'s contract, which is `System`'s.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

/// This thread's CPU time so far. A single-threaded workload timed with it costs the same
/// whoever else runs on the machine: a wall clock also counts the time slices others get,
/// and a longer run gets more of them, which skews a ratio on a loaded machine. (glibc's
/// `clock_gettime`, not rustix's vDSO lookup, which valgrind's loader trips.)
pub fn thread_cpu_time() -> std::time::Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid out-pointer for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The CPU time of process `pid` so far (all its threads), from its CPU-time clock: precise,
/// unlike the tick counts of `/proc/PID/stat`.
pub fn process_cpu_time(pid: u32) -> std::time::Duration {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid out-pointer for the call's duration.
    let rc = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    assert_eq!(rc, 0, "clock_getcpuclockid({pid})");
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: as above, for `t`.
    let rc = unsafe { libc::clock_gettime(clock, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CPU clock of {pid})");
    std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A global allocator that counts every allocation (and reallocation) of the process, all
/// threads together, and passes every call to the system allocator: install it with
/// `#[global_allocator]`, read it with [`process_allocations`]. (An atomic add per call: for
/// benches that count what several threads, or a worker process, allocate.)
pub struct ProcessCountingAlloc;

static PROCESS_ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many allocations this process has made under [`ProcessCountingAlloc`].
pub fn process_allocations() -> u64 {
    PROCESS_ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed)
}

// SAFETY: every call goes straight to `System`, which upholds the `GlobalAlloc` contract;
// counting touches only an atomic.
unsafe impl std::alloc::GlobalAlloc for ProcessCountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        PROCESS_ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: our caller upholds `alloc`'s contract, which is `System`'s.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from `System` with `layout`, as our caller promises.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        PROCESS_ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: our caller upholds `realloc`'s contract, which is `System`'s.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}
