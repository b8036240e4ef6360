//! Daemon children die with their parent, even when it is killed with SIGKILL.

use std::time::{Duration, Instant};

use mproc_process::ipc::{Sender, pipe};
use mproc_process::{Builder, Error, Process, StartMethod, current_process};

use crate::{DEADLINE, METHODS, gone, mproc_init};

fn sleep_long(_: ()) -> u8 {
    std::thread::sleep(Duration::from_secs(600));
    0
}

/// In the middle process: start a daemon grandchild by `method` from a short-lived thread,
/// report its pid once that thread has exited, then wait to be killed. The kernel documents
/// the death signal as following the parent *thread* (a daemon tied to that thread would die
/// with it, too early); mproc starts daemons from a long-lived thread for that reason. On this
/// project's kernel (6.18) a sibling thread's exit no longer kills it either way.
fn middle(method: StartMethod, report: Sender<u32>) -> u8 {
    let starter = std::thread::spawn(move || {
        let daemon = Builder::new()
            .name("grandchild")
            .daemon(true)
            .start_method(method)
            .spawn_fn(sleep_long, ())
            .unwrap();
        let pid = daemon.pid();
        std::mem::forget(daemon); // keep it running; this process is about to be killed anyway
        pid
    });
    let pid = starter.join().unwrap();
    report.send(&pid).unwrap();
    std::thread::sleep(Duration::from_secs(600));
    0
}

fn middle_fork(report: Sender<u32>) -> u8 {
    middle(StartMethod::Fork, report)
}
fn middle_forkserver(report: Sender<u32>) -> u8 {
    middle(StartMethod::ForkServer, report)
}
fn middle_spawn(report: Sender<u32>) -> u8 {
    middle(StartMethod::Spawn, report)
}

fn wait_gone(pid: u32, method: StartMethod) {
    let deadline = Instant::now() + DEADLINE;
    // The grandchild is not ours, so no pidfd wait can reap it; its pidfd still says when it
    // ends.
    let pidfd = match rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::PidfdFlags::empty(),
    ) {
        Ok(fd) => fd,
        Err(_) => return, // already gone
    };
    let ready = mproc_process::ipc::wait(&[&pidfd], Some(deadline - Instant::now())).unwrap();
    assert_eq!(ready, vec![0], "{method:?}: daemon grandchild {pid} still alive after its parent was killed");
}

#[test]
fn daemon_dies_when_its_parent_is_sigkilled() {
    mproc_init();
    // Started from this test's thread, which is not the main thread: the daemon must still be
    // tied to its parent's life, not to a thread's.
    for (method, middle) in [
        (StartMethod::Fork, middle_fork as fn(Sender<u32>) -> u8),
        (StartMethod::ForkServer, middle_forkserver),
        (StartMethod::Spawn, middle_spawn),
    ] {
        let (rx, tx) = pipe::<u32>().unwrap();
        let parent =
            Builder::new().name("middle").start_method(StartMethod::Spawn).spawn_fn(middle, tx).unwrap();
        let grandchild = rx.recv_timeout(DEADLINE).unwrap();
        // The thread that started it has exited; the daemon lives on with its parent process.
        assert!(!gone(grandchild), "{method:?}: the daemon died with the thread that started it");
        parent.kill().unwrap();
        wait_gone(grandchild, method);
        drop(parent);
    }
}

#[test]
fn daemons_may_not_start_children() {
    mproc_init();
    fn try_child(_: ()) -> String {
        assert!(current_process().daemon());
        match Process::spawn(|| 1u8) {
            Err(Error::DaemonCannotStart) => "refused".into(),
            other => format!("{other:?}"),
        }
    }
    for method in METHODS {
        let child = Builder::new().daemon(true).start_method(method).spawn_fn(try_child, ()).unwrap();
        assert_eq!(child.join().unwrap(), "refused", "{method:?}");
    }
}

/// In the middle process: start a Spawn daemon, report its pid, and die at once, most likely
/// before the new program has even read its start message.
fn middle_spawn_then_die(report: Sender<u32>) -> u8 {
    let daemon =
        Builder::new().daemon(true).start_method(StartMethod::Spawn).spawn_fn(sleep_long, ()).unwrap();
    report.send(&daemon.pid()).unwrap();
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    unreachable!("killed itself")
}

/// A Spawn daemon whose parent dies before it has tied its life to the parent's leaves at
/// once instead of running on as an orphan.
#[test]
fn a_spawned_daemon_whose_parent_died_during_its_start_leaves() {
    mproc_init();
    let (rx, tx) = pipe::<u32>().unwrap();
    let parent = Builder::new().start_method(StartMethod::Spawn).spawn_fn(middle_spawn_then_die, tx).unwrap();
    let grandchild = rx.recv_timeout(DEADLINE).unwrap();
    wait_gone(grandchild, StartMethod::Spawn);
    assert!(matches!(parent.join(), Err(Error::Signaled { signal: 9, .. })));
}

/// In the middle process: two ForkServer daemons (as a pool's workers are), then a long-lived
/// Fork child that is no daemon (a copy of the middle, holding whatever it holds). Reports the
/// pids of the fork server, the daemons and the Fork child, then waits to be killed.
fn middle_with_a_fork_child(report: Sender<Vec<u32>>) -> u8 {
    let daemons: Vec<u32> = (0..2)
        .map(|_| {
            let daemon = Builder::new()
                .daemon(true)
                .start_method(StartMethod::ForkServer)
                .spawn_fn(sleep_long, ())
                .unwrap();
            let pid = daemon.pid();
            std::mem::forget(daemon);
            pid
        })
        .collect();
    let forked = Builder::new().start_method(StartMethod::Fork).spawn(|| sleep_long(())).unwrap();
    let mut pids = vec![crate::ppid(daemons[0]), daemons[0], daemons[1], forked.pid()];
    pids.dedup();
    report.send(&pids).unwrap();
    std::thread::sleep(Duration::from_secs(600));
    0
}

/// The fork server and its daemon children go with a parent killed by SIGKILL, whatever its
/// other children hold: here a long-lived Fork child, a copy of the parent with all its fds.
/// (The server wakes on the parent's end, an event: the deadline is a bound on a hang, and
/// is no measure of the second it takes.)
#[test]
fn the_fork_server_and_its_daemons_die_with_a_killed_parent_despite_a_fork_child() {
    mproc_init();
    let (rx, tx) = pipe::<Vec<u32>>().unwrap();
    let parent = Builder::new()
        .name("middle")
        .start_method(StartMethod::Spawn)
        .spawn_fn(middle_with_a_fork_child, tx)
        .unwrap();
    let pids = rx.recv_timeout(DEADLINE).unwrap();
    assert_eq!(pids.len(), 4, "server, two daemons, the Fork child: {pids:?}");
    let (server, daemons, forked) = (pids[0], &pids[1..3], pids[3]);
    assert_eq!(crate::ppid(daemons[1]), server);
    parent.kill().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let lingering: Vec<u32> = [server, daemons[0], daemons[1]]
        .into_iter()
        .filter(|&pid| !crate::wait_gone_until(pid, deadline))
        .collect();
    // The Fork child is no daemon: it runs on, orphaned, until killed here.
    crate::kill_if_alive(forked);
    for pid in &lingering {
        crate::kill_if_alive(*pid);
    }
    assert!(lingering.is_empty(), "still alive after the parent was killed (server {server}): {lingering:?}");
    assert!(matches!(parent.join(), Err(Error::Signaled { signal: 9, .. })));
}
