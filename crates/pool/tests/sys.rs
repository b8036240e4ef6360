//! The tests' only `unsafe`: a real segmentation fault.
#![allow(unsafe_code)]

/// Reads from an address that is never mapped. (A `SIGSEGV` sent with `kill` would not do:
/// std's handler for stack overflows catches it, resets the action and returns.)
pub fn segfault(_: ()) {
    let unmapped = std::hint::black_box(8usize) as *const u8;
    // SAFETY: not safe at all, on purpose: the read faults and the worker dies of SIGSEGV,
    // which is what the test needs. Nothing runs after it.
    let _ = unsafe { std::ptr::read_volatile(unmapped) };
    unreachable!("reading address 8 did not fault");
}

/// Writes `bytes` to file descriptor `fd` of this process, whatever it is.
pub fn write_to_fd(fd: i32, bytes: &[u8]) {
    // SAFETY: the caller names an fd this process has open; it is only borrowed for the write.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    assert_eq!(rustix::io::write(fd, bytes).unwrap(), bytes.len());
}

/// Ends this process at once with code 0, running nothing (no atexit hooks, no unwinding):
/// as a worker whose initializer calls `_exit(0)`.
pub fn exit_at_once(_: ()) {
    // SAFETY: `_exit` ends the process; nothing of this process runs after it.
    unsafe { libc::_exit(0) }
}
