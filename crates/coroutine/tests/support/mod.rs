//! What the test modules share that needs `unsafe`: the counting allocator.

mod sys;

pub use sys::allocations;
