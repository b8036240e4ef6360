//! The one error type of `mproc-process`.

use std::fmt;
use std::io;

/// What can go wrong starting or joining a child process.
///
/// Errors about a child name it (its name and pid) and say what happened to it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The child's function panicked; `message` is the panic message.
    Panicked {
        /// The child's name.
        name: String,
        /// The child's pid.
        pid: u32,
        /// The panic message (or a note that the payload was not a string).
        message: String,
    },
    /// The child was killed by a signal before it returned a value.
    Signaled {
        /// The child's name.
        name: String,
        /// The child's pid.
        pid: u32,
        /// The signal number (9 for `SIGKILL`).
        signal: i32,
    },
    /// The child exited with a non-zero code (or with code 0 by calling `exit` itself)
    /// before it returned a value.
    Exited {
        /// The child's name.
        name: String,
        /// The child's pid.
        pid: u32,
        /// The exit code.
        code: i32,
    },
    /// `join_timeout` ran out before the child ended; the child runs on and the handle stays
    /// usable.
    Timeout,
    /// The value was already taken by an earlier `join_timeout`.
    AlreadyJoined,
    /// Spawn or ForkServer was asked for, but this program never called
    /// [`init`](crate::init): without it a new copy of the program cannot tell it is a child
    /// and would run `main` again.
    InitNotCalled,
    /// A daemon process may not start children (as in Python): they would be orphaned when
    /// it is killed with its parent. A pool's workers are daemons, so a task cannot start a
    /// `Process` or a pool of processes: use threads in the task (a thread pool), or do the
    /// work from a non-daemon `Process`.
    DaemonCannotStart,
    /// The child's value could not be sent back (it failed to serialize), or the arguments
    /// could not be sent to it.
    Transfer {
        /// The child's name.
        name: String,
        /// What failed.
        message: String,
    },
    /// The request cannot be done this way (the message says why and what to do instead).
    Unsupported(&'static str),
    /// The fork server failed or died.
    ForkServer(String),
    /// Sending to or receiving from the child failed.
    Ipc(mproc_ipc::Error),
    /// An operating-system call failed.
    Io(io::Error),
}

/// `Result` with [`Error`] as the error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Panicked { name, pid, message } => {
                write!(f, "process {name:?} (pid {pid}) panicked: {message}")
            }
            Error::Signaled { name, pid, signal } => {
                write!(f, "process {name:?} (pid {pid}) was killed by signal {signal}")?;
                match signal_name(*signal) {
                    Some(sig) => write!(f, " ({sig})"),
                    None => Ok(()),
                }
            }
            Error::Exited { name, pid, code: 0 } => {
                write!(f, "process {name:?} (pid {pid}) exited with code 0 without returning a value")
            }
            Error::Exited { name, pid, code } => {
                write!(f, "process {name:?} (pid {pid}) exited with code {code}")
            }
            Error::Timeout => f.write_str("timed out waiting for the process"),
            Error::AlreadyJoined => f.write_str("the process was already joined"),
            Error::InitNotCalled => f.write_str(
                "the Spawn and ForkServer start methods need `mproc_process::init()` as the first line of `main` \
                 (in tests: `mproc_process::test_support!()` and `mproc_init()`); \
                 Fork works without it",
            ),
            Error::DaemonCannotStart => f.write_str(
                "daemonic processes are not allowed to have children: a daemon is killed with its parent, \
                 which would leave its children orphaned (a pool's workers are daemons: inside a task, \
                 use threads, such as a thread pool, or start the work from a non-daemon Process instead)",
            ),
            Error::Transfer { name, message } => write!(f, "process {name:?}: {message}"),
            Error::Unsupported(why) => f.write_str(why),
            Error::ForkServer(why) => write!(f, "fork server: {why}"),
            Error::Ipc(e) => write!(f, "talking to the child: {e}"),
            Error::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

/// The usual name of a signal number.
pub(crate) fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return None,
    })
}

/// A wrapped error's message is part of the `Display` (`talking to the child: ...`), so it is
/// not also a `source()`: each cause prints once.
impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<rustix::io::Errno> for Error {
    fn from(e: rustix::io::Errno) -> Self {
        Error::Io(e.into())
    }
}

impl From<mproc_ipc::Error> for Error {
    fn from(e: mproc_ipc::Error) -> Self {
        Error::Ipc(e)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::Io(inner) => inner.kind(),
            Error::Timeout => io::ErrorKind::TimedOut,
            Error::InitNotCalled
            | Error::DaemonCannotStart
            | Error::AlreadyJoined
            | Error::Unsupported(_) => io::ErrorKind::Unsupported,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No message in an error's chain repeats the message of the error below it.
    #[test]
    fn each_cause_prints_once() {
        let errors = [
            Error::Ipc(mproc_ipc::Error::Io(io::Error::other("boom"))),
            Error::Io(io::Error::other("boom")),
            Error::Signaled { name: "child".into(), pid: 1, signal: 9 },
        ];
        for e in errors {
            let mut at: &dyn std::error::Error = &e;
            while let Some(below) = at.source() {
                assert!(!at.to_string().contains(&below.to_string()), "{at} repeats {below}");
                at = below;
            }
        }
    }
}
