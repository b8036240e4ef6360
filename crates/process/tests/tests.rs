//! mproc-process's integration tests: one binary, so processes are not started by many at once.
#![allow(unreachable_pub)]

mproc_process::test_support!();

mod daemon;
mod fds;
mod identity;
mod init;
mod lifecycle;
mod stress;
mod sync;
mod sys;
mod values;
mod world;

use std::time::Duration;

/// How long a test waits for anything: generous for a loaded machine, bounded so a bug never
/// hangs the suite.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Every start method.
pub const METHODS: [mproc_process::StartMethod; 3] = [
    mproc_process::StartMethod::Fork,
    mproc_process::StartMethod::ForkServer,
    mproc_process::StartMethod::Spawn,
];

/// The pids of this process's children that are zombies (ended, not reaped).
pub fn zombies() -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid ...: the command name may hold spaces; it ends at the last ')'.
        let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        if rest[0] == "Z" && rest[1].parse::<u32>() == Ok(me) {
            found.push(pid);
        }
    }
    found
}

/// The pids of this process's children, running or zombies.
pub fn children() -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        if rest[1].parse::<u32>() == Ok(me) {
            found.push(pid);
        }
    }
    found
}

/// This process's open fds.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Whether process `pid` is gone (or a zombie).
pub fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'),
    }
}

/// Opens what a process opens once, on first use: its fork server, its reaper (a dropped
/// handle starts it). Fd counts taken after this only move with children.
pub fn warm_up() {
    for method in METHODS {
        mproc_process::Builder::new()
            .start_method(method)
            .spawn_fn(fds::nothing, ())
            .unwrap()
            .join()
            .unwrap();
    }
    let dropped = mproc_process::Builder::new().spawn_fn(fds::nothing, ()).unwrap();
    drop(dropped);
    let deadline = std::time::Instant::now() + DEADLINE;
    while !mproc_process::active_children().is_empty() {
        assert!(std::time::Instant::now() < deadline, "warm-up child never ended");
        std::thread::yield_now();
    }
}

/// The parent pid of process `pid`, from `/proc`.
pub fn ppid(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 2..].split(' ').nth(1).unwrap().parse().unwrap()
}

/// Waits until process `pid` (not necessarily ours) has ended, at most until `deadline`;
/// whether it did. Event-driven: its pidfd turns readable when it ends.
pub fn wait_gone_until(pid: u32, deadline: std::time::Instant) -> bool {
    let pidfd = match rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::PidfdFlags::empty(),
    ) {
        Ok(fd) => fd,
        Err(_) => return true, // already gone
    };
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    mproc_process::ipc::wait(&[&pidfd], Some(left)).unwrap() == vec![0]
}

/// Sends SIGKILL to process `pid` (not necessarily ours) if it still runs.
pub fn kill_if_alive(pid: u32) {
    let Ok(pidfd) = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::PidfdFlags::empty(),
    ) else {
        return;
    };
    let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
}
