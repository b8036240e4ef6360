//! The only `unsafe` of `mproc-process`: what rustix does not offer.
//!
//! - [`fork`](fork::fork): the one call of `fork(2)` in mproc, and `_exit(2)` for the child.
//! - [`spawn`](spawn::spawn_self): `posix_spawn(3)` of this same program, keeping one fd.
//! - [`env`]: the environment as libc holds it, read in place.
//! - [`fnref`]: the function an [`FnRef`](crate::FnRef) names, from its offset.
//! - [`at_exit`]: `atexit(3)`, so children are joined when the program ends.
//! - [`wiped`]: per-process state, on a page every forked child finds zeroed.
//! - [`shared`]: a shared mapping of a file, where `Fork` children leave their values.
//! - [`leaked`]: a `&'static T` one store replaces, for what a forked child changes.
#![allow(unsafe_code)]

pub(crate) mod env;
pub(crate) mod fnref;
pub(crate) mod fork;
pub(crate) mod leaked;
pub(crate) mod shared;
pub(crate) mod spawn;
pub(crate) mod wiped;

/// The address of a function, as an offset from a fixed function of this crate. Offsets
/// (unlike addresses) are the same in every run of one binary, whatever its load address.
pub(crate) fn offset_of(addr: usize) -> i64 {
    addr as i64 - anchor as *const () as usize as i64
}

/// The fixed point offsets are taken from.
#[inline(never)]
fn anchor() {}

/// The function of type `F` at `offset` from [`anchor`].
///
/// # Safety
/// `offset` must come from [`offset_of`] of a function of type `F` in a process running this
/// same binary, and `F` must be a fn pointer type.
unsafe fn fn_at<F: Copy>(offset: i64) -> F {
    let addr = (anchor as *const () as usize as i64 + offset) as usize;
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<usize>(), "a fn pointer");
    // SAFETY: by this fn's contract `addr` is the address of an `F` in this binary, and `F`
    // is a fn pointer, the size of a usize (asserted).
    unsafe { std::mem::transmute_copy::<usize, F>(&addr) }
}

/// Makes `vars` this process's environment: sets those that differ, removes those not
/// there.
///
/// Changing the environment is sound only while no other thread may read it (`getenv` in C
/// code does so without the lock the standard library takes). A fork server's child is
/// forked from a one-thread server and runs this first thing, before its function: it has
/// one thread, which is checked here; with more (not possible there), nothing is changed.
pub(crate) fn replace_env(vars: &[(std::ffi::OsString, std::ffi::OsString)]) {
    if !only_thread() {
        return;
    }
    let stale: Vec<std::ffi::OsString> =
        std::env::vars_os().map(|(k, _)| k).filter(|k| !vars.iter().any(|(key, _)| key == k)).collect();
    for key in stale {
        // SAFETY: this process has one thread (checked above): nothing reads the environment
        // meanwhile.
        unsafe { std::env::remove_var(key) };
    }
    for (key, value) in vars {
        if std::env::var_os(key).as_ref() != Some(value) {
            // SAFETY: as above.
            unsafe { std::env::set_var(key, value) };
        }
    }
}

/// Removes the variables `keys` from this process's environment, in `init()`: mproc's
/// bootstrap variables, read once there, which nothing this process starts or runs is to
/// inherit.
///
/// Sound only while no other thread may read the environment. `init()` is the first line of
/// `main` (or runs from `.init_array`, before `main`, in a test binary), and a program that
/// has these variables was started by mproc (a Spawn child, the fork server): it has one
/// thread there, which is checked here. With more (`init` called late in a program that
/// merely inherited them), nothing is removed; a child it starts gets none of them anyway
/// (see [`spawn::spawn_self`]).
pub(crate) fn remove_env(keys: &[&str]) {
    // Most programs have none of them: no need to list this process's threads then.
    if !keys.iter().any(|key| std::env::var_os(key).is_some()) || !only_thread() {
        return;
    }
    for key in keys {
        // SAFETY: this process has one thread (checked above): nothing reads the environment
        // meanwhile.
        unsafe { std::env::remove_var(key) };
    }
}

/// Whether the calling thread is this process's only one.
///
/// Asked of the kernel with `unshare(CLONE_THREAD)`, which changes nothing: it succeeds, as a
/// no-op, in a process of one thread, and fails with `EINVAL` in one with more (one system
/// call, where listing `/proc/self/task` takes five and a walk of `/proc`: 0.1 us against
/// 10-12 us, in every Spawn child's `init`). Where it is refused for another reason (a
/// seccomp filter that forbids `unshare`), `/proc/self/task` is listed.
pub(crate) fn only_thread() -> bool {
    // SAFETY: unshare(CLONE_THREAD) unshares nothing: the kernel pretends it works when there
    // is nothing to unshare (this process has one thread) and refuses it otherwise; no other
    // flag is given, so no fd table, directory or namespace changes.
    match unsafe { libc::unshare(libc::CLONE_THREAD) } {
        0 => true,
        _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) => false,
        _ => std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() == 1),
    }
}

/// The size of a page of memory. (libc's `sysconf`, not rustix's auxv reader: both report the
/// same size, and this one also works under valgrind.)
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// Makes `$f` (a `fn()`) run before `main`, as the loader runs every function in a binary's
/// `.init_array` (glibc passes them `argc`, `argv` and `envp`, which a C `fn()` may ignore;
/// the standard library's own such function, which records the arguments, is ordered
/// before): for [`test_support!`](crate::test_support), so a copy of a test binary becomes
/// its child before the test harness starts.
#[doc(hidden)]
#[macro_export]
macro_rules! __before_main {
    ($f:path) => {
        // SAFETY: the section holds pointers to functions the loader calls before `main`;
        // this one is an `extern "C" fn()` that calls a safe Rust `fn()`.
        #[allow(unsafe_code)]
        #[used]
        #[unsafe(link_section = ".init_array")]
        static MPROC_BEFORE_MAIN: extern "C" fn() = {
            extern "C" fn mproc_before_main() {
                $f()
            }
            mproc_before_main
        };
    };
}

/// Runs `f` when the program exits normally (return from `main`, `std::process::exit`).
pub(crate) fn at_exit(f: extern "C" fn()) {
    // SAFETY: `f` is a plain `extern "C" fn()`, which is what atexit takes; registering can
    // only fail for lack of memory, in which case the hook simply does not run.
    unsafe { libc::atexit(f) };
}
