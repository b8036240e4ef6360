//! Each start method: value, panic, exit code, signals, join_timeout, terminate.

use std::time::Duration;

use mproc_process::{Builder, Error, Process, StartMethod};

use crate::{DEADLINE, METHODS, mproc_init};

fn square(x: u64) -> u64 {
    x * x
}

fn describe(v: (String, Vec<u8>)) -> String {
    format!("{} has {} bytes", v.0, v.1.len())
}

fn boom(msg: String) -> u8 {
    panic!("{msg}")
}

fn exit_with(code: i32) -> u8 {
    std::process::exit(code)
}

fn sleep_then(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn sleep_forever(_: ()) -> u8 {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn start<A, R>(method: StartMethod, f: fn(A) -> R, args: A) -> Process<R>
where
    A: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    R: serde::Serialize + serde::de::DeserializeOwned + 'static,
{
    Builder::new().start_method(method).spawn_fn(f, args).unwrap_or_else(|e| panic!("{method:?}: {e}"))
}

#[test]
fn values_round_trip() {
    mproc_init();
    for method in METHODS {
        assert_eq!(start(method, square, 12).join().unwrap(), 144, "{method:?}");
        let big = ("payload".to_string(), vec![7u8; 3 << 20]);
        assert_eq!(start(method, describe, big).join().unwrap(), "payload has 3145728 bytes", "{method:?}");
    }
    let child = Process::spawn(|| vec!["closures".to_string(), "fork".into()]).unwrap();
    assert_eq!(child.join().unwrap(), ["closures", "fork"]);
}

#[test]
fn panic_comes_back_with_its_message() {
    mproc_init();
    for method in METHODS {
        let child =
            Builder::new().name("boomer").start_method(method).spawn_fn(boom, "kaboom 42".into()).unwrap();
        let pid = child.pid();
        match child.join() {
            Err(Error::Panicked { name, pid: p, message }) => {
                assert_eq!((name.as_str(), p, message.as_str()), ("boomer", pid, "kaboom 42"), "{method:?}");
            }
            other => panic!("{method:?}: expected a panic, got {other:?}"),
        }
    }
}

#[test]
fn exit_code_without_a_value() {
    mproc_init();
    for method in METHODS {
        let mut child = start(method, exit_with, 3);
        let err = child.join_timeout(DEADLINE).unwrap_err();
        assert!(matches!(err, Error::Exited { code: 3, .. }), "{method:?}: {err}");
        assert_eq!(child.exitcode(), Some(3), "{method:?}");
        assert!(!child.is_alive());
        assert!(err.to_string().contains("exited with code 3"), "{err}");
    }
}

#[test]
fn killed_and_terminated_children() {
    mproc_init();
    for method in METHODS {
        for (signal, exitcode) in [(9, -9), (15, -15)] {
            let mut child = start(method, sleep_forever, ());
            assert!(child.is_alive());
            assert_eq!(child.exitcode(), None);
            if signal == 9 {
                child.kill().unwrap()
            } else {
                child.terminate().unwrap()
            }
            match child.join_timeout(DEADLINE) {
                Err(Error::Signaled { signal: s, .. }) => assert_eq!(s, signal, "{method:?}"),
                other => panic!("{method:?}: expected death by signal {signal}, got {other:?}"),
            }
            assert_eq!(child.exitcode(), Some(exitcode), "{method:?}");
            // Signalling a child that has ended is harmless.
            child.kill().unwrap();
        }
    }
}

#[test]
fn join_timeout_on_a_sleeping_child() {
    mproc_init();
    for method in METHODS {
        let mut child = start(method, sleep_then, 400);
        assert!(matches!(child.join_timeout(Duration::from_millis(1)), Err(Error::Timeout)), "{method:?}");
        assert!(child.is_alive());
        // Wakes when the child ends, well before the deadline.
        assert_eq!(child.join_timeout(DEADLINE).unwrap(), 400, "{method:?}");
        assert!(matches!(child.join_timeout(DEADLINE), Err(Error::AlreadyJoined)));
    }
}

#[test]
fn sentinel_becomes_readable_when_the_child_ends() {
    mproc_init();
    for method in METHODS {
        let child = start(method, sleep_then, 50);
        let ready = mproc_process::ipc::wait(&[&child.sentinel()], Some(DEADLINE)).unwrap();
        assert_eq!(ready, vec![0], "{method:?}");
        assert_eq!(child.join().unwrap(), 50);
    }
}

#[test]
fn closures_need_fork() {
    let err = Builder::new().start_method(StartMethod::Spawn).spawn(|| 1u8).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
}

#[test]
fn pipe_ends_carry_values_both_ways() {
    use mproc_process::ipc::{Connection, duplex};
    mproc_init();
    fn serve(conn: Connection<u64>) -> u64 {
        let mut total = 0;
        while let Ok(n) = conn.recv() {
            total += n;
            conn.send(&(n * 2)).unwrap();
        }
        total
    }
    // Through arguments: the end travels as SCM_RIGHTS, and the child holds nothing else, so
    // it sees the end of the conversation when we drop ours.
    for method in [StartMethod::ForkServer, StartMethod::Spawn] {
        let (ours, theirs) = duplex::<u64>().unwrap();
        let child = start(method, serve, theirs);
        for n in 1..=10 {
            ours.send(&n).unwrap();
            assert_eq!(ours.recv_timeout(DEADLINE).unwrap(), n * 2, "{method:?}");
        }
        drop(ours);
        assert_eq!(child.join().unwrap(), 55, "{method:?}");
    }
    // Captured by a forked closure. A forked child is a copy of this process, so it also
    // holds a copy of `ours` (as with Python's fork): the conversation ends by a message, not
    // by end of file.
    fn serve_until_zero(conn: Connection<u64>) -> u64 {
        let mut total = 0;
        loop {
            match conn.recv().unwrap() {
                0 => return total,
                n => {
                    total += n;
                    conn.send(&(n * 2)).unwrap();
                }
            }
        }
    }
    let (ours, theirs) = duplex::<u64>().unwrap();
    let child = Process::spawn(move || serve_until_zero(theirs)).unwrap();
    ours.send(&5).unwrap();
    assert_eq!(ours.recv_timeout(DEADLINE).unwrap(), 10);
    ours.send(&0).unwrap();
    assert_eq!(child.join().unwrap(), 5);
}

#[test]
fn close_in_child_lets_a_forked_child_see_end_of_file() {
    use mproc_process::ipc::duplex;
    let (parent_end, child_end) = duplex::<u64>().unwrap();
    let mut child = Builder::new()
        .close_in_child(&parent_end)
        .spawn(move || {
            let mut total = 0;
            while let Ok(n) = child_end.recv() {
                total += n;
                child_end.send(&total).unwrap();
            }
            total
        })
        .unwrap();
    for n in 1..=3 {
        parent_end.send(&n).unwrap();
        assert!(parent_end.recv_timeout(DEADLINE).unwrap() > 0);
    }
    drop(parent_end);
    assert_eq!(child.join_timeout(DEADLINE).unwrap(), 6);
}

/// An end closed in the child that the child's closure can still reach (another handle to it,
/// here through an `Arc`) names no other file there: its number is not free for the child's
/// next fds, so the closure's copy reads a dead end, never a file the child opened since.
#[test]
fn an_end_closed_in_the_child_keeps_its_number_from_the_childs_new_fds() {
    use std::os::fd::AsRawFd;
    use std::sync::Arc;
    let (parent_end, _child_end) = mproc_process::ipc::duplex::<u64>().unwrap();
    let parent_end = Arc::new(parent_end);
    let held = Arc::clone(&parent_end);
    let mut child = Builder::new()
        .close_in_child(&*parent_end)
        .spawn(move || {
            // Each dup takes the lowest free number: were the end's number free, one of
            // these would get it before any number above it.
            let number = held.as_raw_fd();
            let mut opened = Vec::new();
            loop {
                let fd = rustix::io::dup(rustix::stdio::stdin()).expect("dup");
                let got = fd.as_raw_fd();
                opened.push(fd);
                if got >= number {
                    return got == number;
                }
            }
        })
        .unwrap();
    assert!(!child.join_timeout(DEADLINE).unwrap(), "the child reused the number of an end it closed");
}

/// A `Process` waited on (it is `Waitable`) is ready once its end is known: its exit status
/// is there at once, for every start method (a fork server's child's status comes in the
/// server's report, a little after its pidfd turns readable).
#[test]
fn a_waited_process_has_its_status_at_once() {
    mproc_init();
    for method in METHODS {
        for _ in 0..10 {
            let child = start(method, square, 3);
            let ready = mproc_process::ipc::wait(&[&child], Some(DEADLINE)).unwrap();
            assert_eq!(ready, vec![0], "{method:?}");
            assert!(child.exit_status().is_some(), "{method:?}: ready, but its status is not known");
            assert_eq!(child.join().unwrap(), 9);
        }
    }
}

/// A sentinel asked for after the child was reaped (no pidfd can be opened for it any more)
/// is readable at once, as the pidfd of an ended child is. (Our own children: a fork server's
/// child's sentinel is the pidfd the server sent.)
#[test]
fn a_sentinel_taken_after_the_end_is_readable_at_once() {
    mproc_init();
    for method in [StartMethod::Fork, StartMethod::Spawn] {
        let child = start(method, sleep_then, 20);
        // The test's own pidfd of the child, readable once it has ended; the handle has
        // opened none.
        let pid = rustix::process::Pid::from_raw(child.pid() as i32).unwrap();
        let watch = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
        assert_eq!(mproc_process::ipc::wait(&[&watch], Some(DEADLINE)).unwrap(), vec![0], "{method:?}");
        assert!(child.exit_status().is_some(), "{method:?}: ended, so reaped when asked");
        let ready = mproc_process::ipc::wait(&[&child.sentinel()], Some(DEADLINE)).unwrap();
        assert_eq!(ready, vec![0], "{method:?}");
        assert_eq!(child.join().unwrap(), 20, "{method:?}");
    }
}

/// Runs `main` while another thread calls `meanwhile` over and over (and fails if that
/// thread panicked).
fn while_another_thread_calls(meanwhile: impl Fn() + Send + 'static, main: impl FnOnce()) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                meanwhile();
            }
        })
    };
    main();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    other.join().expect("the other thread panicked");
}

/// A `join` (which blocks in `waitid` on the pid) while another thread reaps the same child
/// (`active_children` reaps those that ended) still returns the child's value, never "no
/// such child".
#[test]
fn a_join_returns_the_value_while_another_thread_reaps() {
    mproc_init();
    while_another_thread_calls(
        || drop(mproc_process::active_children()),
        || {
            for n in 0..100u32 {
                let child = Process::spawn(move || {
                    std::thread::sleep(Duration::from_micros(u64::from(n % 7) * 100));
                    n
                })
                .unwrap();
                assert_eq!(child.join().unwrap(), n);
            }
        },
    );
}

/// A `Fork` child's state is listed before its fork: `active_children` called meanwhile from
/// another thread never lists one that has no pid yet, nor fails.
#[test]
fn active_children_while_another_thread_forks_lists_only_started_children() {
    mproc_init();
    while_another_thread_calls(
        || {
            for child in mproc_process::active_children() {
                assert_ne!(child.pid, 0, "a child listed before it was started: {child:?}");
            }
        },
        || {
            for n in 0..200u32 {
                assert_eq!(Process::spawn(move || n).unwrap().join().unwrap(), n);
            }
        },
    );
}

fn wait_for_go(go: mproc_process::ipc::Receiver<()>) -> u8 {
    let _ = go.recv_timeout(DEADLINE);
    0
}

/// In a Fork child: starts a child that runs until told, reports its pid, drops its handle
/// and returns.
fn leave_a_child_running(
    (method, go, report): (usize, mproc_process::ipc::Receiver<()>, mproc_process::ipc::Sender<u32>),
) -> u8 {
    let child = start(METHODS[method], wait_for_go, go);
    report.send(&child.pid()).unwrap();
    0
}

/// Whether process `pid`'s main thread sleeps in `waitid` (x86_64's system call 247), from
/// `/proc/PID/syscall`.
fn in_waitid(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/syscall")).is_ok_and(|s| s.starts_with("247 "))
}

/// A Fork child ends as the others do (as Python's forked children do): it joins its own
/// children before it leaves, so none runs on orphaned. Seen without timing: once the Fork
/// child's function returned, it must sleep waiting for its child (which runs until told),
/// not end.
#[test]
fn a_fork_child_joins_its_own_children_before_it_ends() {
    mproc_init();
    for method in [StartMethod::Fork, StartMethod::Spawn] {
        let index = METHODS.iter().position(|&m| m == method).unwrap();
        let (go_rx, go_tx) = mproc_process::ipc::pipe::<()>().unwrap();
        let (pid_rx, pid_tx) = mproc_process::ipc::pipe::<u32>().unwrap();
        let mut middle = Builder::new()
            .start_method(StartMethod::Fork)
            .close_in_child(&go_tx)
            .close_in_child(&pid_rx)
            .spawn_fn(leave_a_child_running, (index, go_rx, pid_tx))
            .unwrap();
        let grandchild = pid_rx.recv_timeout(DEADLINE).unwrap();
        // Polling /proc, the only way to see where a process sleeps, with a deadline.
        let deadline = std::time::Instant::now() + DEADLINE;
        while !in_waitid(middle.pid()) {
            if crate::gone(middle.pid()) {
                crate::kill_if_alive(grandchild);
                panic!(
                    "{method:?}: the Fork child ended with its child {grandchild} still running, not joined"
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{method:?}: the Fork child neither ended nor waited"
            );
            std::thread::yield_now();
        }
        assert!(!crate::gone(grandchild), "{method:?}: the grandchild ended untold");
        go_tx.send(&()).unwrap();
        assert_eq!(middle.join_timeout(DEADLINE).unwrap(), 0, "{method:?}");
        assert!(crate::gone(grandchild), "{method:?}: the grandchild outlived the join of its parent");
    }
}

/// The pids of process `parent`'s children (running or zombies), from `/proc`.
fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok() && crate::ppid(pid) == parent
        })
        .collect()
}

/// In a Fork child: its fork server, its file limit then lowered (`prlimit`) to leave it
/// room for `free` more fds, and children from it (each running until told) until a start
/// fails. Every child the server forked must be tracked and reaped, that of the failed start
/// too: once the others are joined, the server has no child left. (Per child the server
/// keeps two fds, its pidfd and report connection. With an even `free`, the last start has
/// two, for the ends a request brings; the pidfd it then opens, and its copy for the client,
/// find none. With an odd one, the copy is made, and the copy the report carrying it needs
/// is not.)
fn fork_server_out_of_fds(free: u64) -> Result<String, String> {
    use rustix::process::{Pid, Resource, Rlimit, getrlimit, prlimit};
    start(StartMethod::ForkServer, square, 3).join().unwrap(); // starts the server
    let server = *children_of(std::process::id()).first().ok_or("no fork server")?;
    let held = std::fs::read_dir(format!("/proc/{server}/fd")).unwrap().count() as u64;
    // (The hard limit stays the server's, inherited from this process.)
    let limit = Rlimit { current: Some(held + free), maximum: getrlimit(Resource::Nofile).maximum };
    prlimit(Pid::from_raw(server as i32), Resource::Nofile, limit).map_err(|e| e.to_string())?;
    let (mut running, mut gos) = (Vec::new(), Vec::new());
    let failed = loop {
        let (go_rx, go_tx) = mproc_process::ipc::pipe::<()>().unwrap();
        gos.push(go_tx);
        match Builder::new().start_method(StartMethod::ForkServer).spawn_fn(wait_for_go, go_rx) {
            Ok(child) => running.push(child),
            Err(e) => break e.to_string(),
        }
        if running.len() > free as usize {
            return Err(format!("{free} fds free: no start failed"));
        }
    };
    drop(gos);
    for mut child in running {
        child.join_timeout(DEADLINE).map_err(|e| format!("{free} fds free: {e}"))?;
    }
    match children_of(server).as_slice() {
        [] => Ok(failed),
        left => Err(format!(
            "{free} fds free: the server holds children {left:?} after a start failed with '{failed}'"
        )),
    }
}

#[test]
fn a_fork_server_out_of_fds_leaves_no_child_unreaped() {
    mproc_init();
    for free in [2, 3, 6, 7] {
        let mut tester = Builder::new()
            .start_method(StartMethod::Fork)
            .spawn(move || fork_server_out_of_fds(free))
            .unwrap();
        let failed = tester.join_timeout(DEADLINE).unwrap().unwrap();
        assert!(failed.contains("ulimit -n"), "{free} fds free: the failed start says what to do: {failed}");
    }
}

/// Opens `/dev/null` until this process is out of fds; what it opened.
fn all_fds() -> Vec<std::fs::File> {
    std::iter::from_fn(|| std::fs::File::open("/dev/null").ok()).take(1 << 20).collect()
}

/// A handle dropped while its child runs and the process is out of fds hands the child to the
/// reaper all the same (no panic in `drop`), and the child is reaped once it ends. Run in a
/// Fork child, which may run out of fds on its own.
#[test]
fn a_handle_dropped_with_no_fd_to_spare_still_has_its_child_reaped() {
    mproc_init();
    let mut tester = Builder::new()
        .start_method(StartMethod::Fork)
        .spawn(|| {
            let (go_rx, go_tx) = mproc_process::ipc::pipe::<()>().unwrap();
            let child = Builder::new()
                .start_method(StartMethod::Fork)
                .close_in_child(&go_tx)
                .spawn(move || {
                    let _ = go_rx.recv_timeout(DEADLINE);
                })
                .unwrap();
            let held = all_fds();
            let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(child)));
            drop(held);
            if let Err(payload) = dropped {
                return Err(format!(
                    "dropping the handle panicked: {}",
                    mproc_process::panic_message(&*payload)
                ));
            }
            drop(go_tx);
            // Polling /proc for the reap, with a deadline: what it waits for is event-driven.
            let deadline = std::time::Instant::now() + DEADLINE;
            while !crate::children().is_empty() {
                if std::time::Instant::now() > deadline {
                    return Err(format!("children {:?} not reaped", crate::children()));
                }
                std::thread::yield_now();
            }
            Ok(())
        })
        .unwrap();
    tester.join_timeout(DEADLINE).unwrap().unwrap();
}
