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

/// Has the program `command` runs find `socket` as its fd 3 (not close-on-exec there), where a
/// program started by mproc finds its bootstrap connection.
pub fn with_socket_at_fd_3(command: &mut std::process::Command, socket: std::os::fd::OwnedFd) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = socket.as_raw_fd();
    // SAFETY: the closure runs in the forked child before its exec and only calls dup2 (and
    // fcntl), which are async-signal-safe; `socket` is moved into the closure, so the fd stays
    // open in the parent until the command is dropped.
    unsafe {
        command.pre_exec(move || {
            let _keep = &socket;
            if fd == 3 {
                // dup2 onto itself keeps close-on-exec: clear it instead.
                if libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
}
