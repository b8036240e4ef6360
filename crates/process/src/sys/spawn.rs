//! `posix_spawn(3)` of this same program: the `Spawn` start method and the fork server.

use super::env::key_of;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr;

use rustix::process::Pid;

/// The fd number a spawned program finds its bootstrap connection under.
pub(crate) const BOOTSTRAP_FD: i32 = 3;

/// Starts this program again (`/proc/self/exe`) with this process's `argv[0]` and no other
/// argument, and this process's environment plus `extra_env` (`KEY=VALUE`, each replacing an
/// entry of the same key), less every entry `drop_env` picks (the bootstrap variables this
/// process itself was started with: the new program must see only the one meant for it). The new program holds only stdio and `keep`,
/// as fd [`BOOTSTRAP_FD`]: every other fd is closed, even those inherited without
/// close-on-exec (a jobserver's, a caller's). Signals start with the default mask.
pub(crate) fn spawn_self(
    extra_env: &[CString],
    drop_env: fn(&[u8]) -> bool,
    keep: BorrowedFd<'_>,
) -> io::Result<Pid> {
    let exe = c"/proc/self/exe";
    let argv: [*mut libc::c_char; 2] = [argv0().as_ptr().cast_mut(), ptr::null_mut()];

    // The environment's entries in place (see `env::for_each`), not copies: they stay put
    // until posix_spawn returns, by the same promise that lets `for_each` read them.
    let mut envp: Vec<*mut libc::c_char> = Vec::with_capacity(64);
    super::env::for_each(|entry| {
        let kv = entry.to_bytes();
        let key = key_of(kv);
        if !drop_env(kv) && !extra_env.iter().any(|e| key_of(e.to_bytes()) == key) {
            envp.push(entry.as_ptr().cast_mut());
        }
        true
    });
    envp.extend(extra_env.iter().map(|e| e.as_ptr().cast_mut()));
    envp.push(ptr::null_mut());

    let fd = keep.as_raw_fd();
    let mut pid: libc::pid_t = 0;
    // SAFETY: the attr and file-action objects are initialised before use and destroyed after;
    // every pointer handed to posix_spawn points into a NUL-terminated CString, an entry of
    // the environment (which stays put meanwhile, see above) or a null-terminated array of
    // them, all alive until it returns.
    let rc = unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        libc::posix_spawn_file_actions_init(&mut actions);
        libc::posix_spawnattr_init(&mut attr);
        // dup2 gives the child `keep` as fd 3 without close-on-exec (onto itself, it clears the
        // flag), then every fd above it is closed.
        libc::posix_spawn_file_actions_adddup2(&mut actions, fd, BOOTSTRAP_FD);
        libc::posix_spawn_file_actions_addclosefrom_np(&mut actions, BOOTSTRAP_FD + 1);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::posix_spawnattr_setsigmask(&mut attr, &empty);
        libc::posix_spawnattr_setflags(&mut attr, libc::POSIX_SPAWN_SETSIGMASK as libc::c_short);
        let rc = libc::posix_spawn(&mut pid, exe.as_ptr(), &actions, &attr, argv.as_ptr(), envp.as_ptr());
        libc::posix_spawn_file_actions_destroy(&mut actions);
        libc::posix_spawnattr_destroy(&mut attr);
        rc
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(Pid::from_raw(pid).expect("posix_spawn returns a positive pid"))
}

/// This program's `argv[0]` (the same for the life of the process), or `/proc/self/exe` if it
/// has none or it holds a NUL.
fn argv0() -> &'static CStr {
    static ARGV0: std::sync::OnceLock<CString> = std::sync::OnceLock::new();
    ARGV0.get_or_init(|| {
        let argv0 = std::env::args_os().next().and_then(|a| CString::new(a.into_encoded_bytes()).ok());
        argv0.unwrap_or_else(|| c"/proc/self/exe".to_owned())
    })
}

/// `KEY=VALUE` as a C string.
pub(crate) fn env_entry(key: &str, value: &str) -> CString {
    CString::new(format!("{key}={value}")).expect("no NUL in mproc's own variables")
}

/// Takes ownership of `fd`, the bootstrap socket a parent placed in this program at start,
/// if it is an open socket.
///
/// Sound because it only runs from `init()`, the first line of `main`, on the number the
/// parent put in this process's environment: at that point nothing in this process has opened
/// or owns an fd above stdio (the fd was inherited for exactly this use, or, in a program
/// that merely inherited the variable, belongs to no one yet).
pub(crate) fn inherited_socket(fd: i32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
    // SAFETY: F_GETFD only reads the fd's flags; on a closed number it fails with EBADF.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return None;
    }
    // SAFETY: an open fd that nothing in this process owns (see above).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    match rustix::fs::fstat(&owned) {
        Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket => {
            Some(owned)
        }
        // Not what the parent left here: leave it open, to whoever it belongs.
        _ => {
            let _ = owned.into_raw_fd();
            None
        }
    }
}
