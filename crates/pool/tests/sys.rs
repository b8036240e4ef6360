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
