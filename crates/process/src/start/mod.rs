//! The three start methods.

pub(crate) mod fork;
pub(crate) mod forkserver;
pub(crate) mod spawn;
