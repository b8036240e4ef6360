//! No fd leaks: spawned children hold only stdio and what they were given; the parent's fd
//! count does not grow.

use mproc_process::ipc::{Receiver, pipe};
use mproc_process::{Builder, StartMethod};

use crate::{DEADLINE, mproc_init, open_fds};

/// The child's open fds, besides the one it reads them with.
fn fds_of_child(given: Receiver<u8>) -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect();
    fds.sort();
    drop(given);
    fds
}

#[test]
fn spawned_children_hold_only_stdio_their_connection_and_what_they_were_given() {
    mproc_init();
    for method in [StartMethod::ForkServer, StartMethod::Spawn] {
        let (given, _tx) = pipe::<u8>().unwrap();
        let child = Builder::new().start_method(method).spawn_fn(fds_of_child, given).unwrap();
        let fds = child.join().unwrap();
        // 0, 1, 2; the bootstrap connection; the given end; read_dir's own fd.
        assert_eq!(fds.len(), 6, "{method:?}: {fds:?}");
        assert_eq!(&fds[..3], &[0, 1, 2], "{method:?}");
    }
}

pub fn nothing(_: ()) {}

#[test]
fn fd_count_is_unchanged_after_many_start_join_cycles() {
    mproc_init();
    // Other tests open fds in this process too, so count in a child that runs the cycles.
    let child = Builder::new()
        .start_method(StartMethod::Fork)
        .spawn(|| {
            crate::warm_up();
            let before = open_fds();
            for i in 0..1000 {
                let method = crate::METHODS[i % 3];
                Builder::new().start_method(method).spawn_fn(nothing, ()).unwrap().join().unwrap();
            }
            (before, open_fds())
        })
        .unwrap();
    let mut child = child;
    let (before, after) = child.join_timeout(DEADLINE * 5).unwrap();
    assert!(after <= before + 2, "fds grew from {before} to {after} over 1,000 cycles");
}

/// Children whose handles were dropped are watched by the reaper through their pidfds; once
/// reaped they hold none (not until the next start: here there is none).
#[test]
fn reaped_children_hold_no_fd() {
    mproc_init();
    let mut child = Builder::new()
        .start_method(StartMethod::Fork)
        .spawn(|| {
            // What the first start and the first dropped handle of a running child open (the
            // slots' files, the reaper's pipe) stays open: open it first.
            let (wait_rx, wait_tx) = pipe::<u8>().unwrap();
            let first = Builder::new()
                .start_method(StartMethod::Fork)
                .close_in_child(&wait_tx)
                .spawn(move || {
                    let _ = wait_rx.recv();
                })
                .unwrap();
            drop(first);
            drop(wait_tx);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !crate::children().is_empty() && std::time::Instant::now() < deadline {
                std::thread::yield_now();
            }
            let (go_rx, go_tx) = pipe::<u8>().unwrap();
            let go_rx = std::sync::Arc::new(go_rx);
            let before = open_fds();
            for _ in 0..300 {
                let go = std::sync::Arc::clone(&go_rx);
                let child = Builder::new()
                    .start_method(StartMethod::Fork)
                    .close_in_child(&go_tx)
                    .spawn(move || {
                        let _ = go.recv(); // until the parent closes its end
                    })
                    .unwrap();
                drop(child); // to the reaper
            }
            drop(go_tx);
            // Each child ends once the pipe is closed, and the reaper reaps it; the fds it
            // held for them must then be gone. (Polling the fd count, the only way to see it,
            // with a deadline: what it waits for is event-driven.)
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let settled = || {
                let now = open_fds();
                (now < before && crate::children().is_empty()).then_some(now)
            };
            let mut now = settled();
            while now.is_none() && std::time::Instant::now() < deadline {
                std::thread::yield_now();
                now = settled();
            }
            (before, now.unwrap_or_else(open_fds), crate::children().len())
        })
        .unwrap();
    let (before, after, zombies) = child.join_timeout(DEADLINE).unwrap();
    assert_eq!(zombies, 0, "every child ended and was reaped");
    assert!(after < before, "{before} fds before 300 dropped children, {after} once they were reaped");
}
