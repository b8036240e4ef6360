//! This process's environment as libc holds it (`environ`), read in place: what a start
//! passes to a spawned program, and what the fork server's client compares with the server's,
//! without copying every variable into an allocation of its own (`std::env::vars_os` makes two
//! per variable: 25 us for 35 variables, more than a tenth of a ForkServer start).

use std::ffi::{CStr, c_char};

// SAFETY: `environ` is declared as libc defines it (`char **environ`), read only.
unsafe extern "C" {
    /// libc's environment: a null-terminated array of `KEY=VALUE` C strings.
    static environ: *const *const c_char;
}

/// Calls `f` with each entry of this process's environment, `KEY=VALUE` as libc holds it (an
/// entry without `=` too, as a program may have been given one), in order; stops when `f`
/// returns `false`. Nothing is copied: `f` sees the entries in place.
///
/// Sound as `getenv(3)` is: the environment changes only through `setenv`, `putenv`,
/// `unsetenv` (and Rust's `std::env::set_var` and `remove_var`, which call them), and those may
/// not run while another thread reads the environment (it is what makes `set_var` and
/// `remove_var` `unsafe`: their callers promise it). mproc changes it only while it has one
/// thread (`remove_env`, `replace_env`). So no entry changes or goes away during this call.
pub(crate) fn for_each(mut f: impl FnMut(&CStr) -> bool) {
    // SAFETY: `environ` is libc's, always a valid (possibly null) pointer to a null-terminated
    // array of pointers to NUL-terminated strings; it and they stay put during this call (see
    // above). Reading the static's value is a plain load.
    unsafe {
        let mut entry = environ;
        if entry.is_null() {
            return;
        }
        while !(*entry).is_null() {
            if !f(CStr::from_ptr(*entry)) {
                return;
            }
            entry = entry.add(1);
        }
    }
}

/// The key of `KEY=VALUE` (up to the first `=`; all of an entry without one, so a bare key
/// is its own key).
pub(crate) fn key_of(entry: &[u8]) -> &[u8] {
    entry.split(|&b| b == b'=').next().unwrap_or(entry)
}
