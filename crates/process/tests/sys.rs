//! The tests' only `unsafe`: changing this process's environment.
#![allow(unsafe_code)]

/// Sets (`Some`) or removes (`None`) the variable `key` of this process.
///
/// For a forked test child only, whose other threads (mproc's reaper, if started) never read
/// the environment.
pub fn set_env(key: &str, value: Option<&str>) {
    match value {
        // SAFETY: no other thread of this process reads or writes the environment (see above).
        Some(value) => unsafe { std::env::set_var(key, value) },
        // SAFETY: as above.
        None => unsafe { std::env::remove_var(key) },
    }
}
