//! The raw-syscall floors that need `unsafe`: a bare `fork` + `_exit` + `waitpid`.
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
