//! Many children: busy parents, dropped handles, no zombies.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use mproc_process::{Builder, StartMethod};

use crate::{DEADLINE, mproc_init, open_fds, zombies};

fn add_one(x: u32) -> u32 {
    x + 1
}

#[test]
fn busy_threaded_parent_starts_200_children_by_the_default_method() {
    mproc_init();
    let stop = Arc::new(AtomicBool::new(false));
    let lock = Arc::new(parking_lot::Mutex::new(Vec::<Vec<u8>>::new()));
    let busy: Vec<_> = (0..8)
        .map(|t| {
            let (stop, lock) = (Arc::clone(&stop), Arc::clone(&lock));
            std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    // Allocate and hold a lock, all the time.
                    let mut held = lock.lock();
                    held.push(vec![t as u8; 1 + n % 4096]);
                    if held.len() > 64 {
                        held.clear();
                    }
                    n += 1;
                }
            })
        })
        .collect();
    for i in 0..200 {
        let child = Builder::new().spawn_fn(add_one, i).unwrap();
        assert_eq!(child.join().unwrap(), i + 1);
    }
    stop.store(true, Ordering::Relaxed);
    busy.into_iter().for_each(|t| t.join().unwrap());
}

#[test]
fn a_thousand_dropped_children_leave_no_zombie() {
    mproc_init();
    // In a child of its own, so other tests' children do not count.
    let mut checker = Builder::new()
        .start_method(StartMethod::Fork)
        .spawn(|| {
            crate::warm_up();
            let fds_before = open_fds();
            let mut pids = Vec::new();
            for i in 0..1000u32 {
                let method = [StartMethod::Fork, StartMethod::ForkServer][i as usize % 2];
                let child = Builder::new().start_method(method).spawn_fn(add_one, i).unwrap();
                pids.push(child.pid());
                drop(child); // never joined
            }
            // Every child ends on its own; the reaper collects them (and, with a fork server's
            // child, closes its fds once the server's report of its end is in). Wait for it.
            let deadline = Instant::now() + crate::DEADLINE;
            while !(zombies().is_empty()
                && mproc_process::active_children().is_empty()
                && open_fds() <= fds_before + 2)
            {
                if Instant::now() > deadline {
                    break;
                }
                std::thread::yield_now();
            }
            assert!(zombies().is_empty(), "zombies left: {:?}", zombies());
            (fds_before, open_fds(), pids.len())
        })
        .unwrap();
    let (before, after, n) = checker.join_timeout(DEADLINE * 5).unwrap();
    assert_eq!(n, 1000);
    assert!(after <= before + 2, "fds grew from {before} to {after}");
}

/// Fork children started while other threads keep using mproc's own state (the identity,
/// the registry, the pid) and take the stdio locks: a lock that another thread holds or waits
/// for at the moment of a fork must still be free in the child. Each child also asks who it
/// is and takes the stdio locks itself: a child stuck on a lock fails the join's deadline.
#[test]
fn fork_children_start_while_other_threads_use_mprocs_state() {
    mproc_init();
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (0..3)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::black_box(mproc_process::current_process());
                    std::hint::black_box(mproc_process::active_children());
                    let _ = std::io::stdout().lock().flush();
                    let _ = std::io::stderr().lock().flush();
                }
            })
        })
        .collect();
    for i in 0..200u32 {
        let mut child = Builder::new()
            .start_method(StartMethod::Fork)
            .spawn(move || {
                let _ = std::io::stdout().lock().flush();
                let _ = std::io::stderr().lock().flush();
                (i, mproc_process::current_process().name().to_string())
            })
            .unwrap();
        let (n, name) = child.join_timeout(DEADLINE).unwrap_or_else(|e| panic!("child {i}: {e}"));
        assert_eq!(n, i);
        assert!(name.starts_with("Process-"), "{name}");
    }
    stop.store(true, Ordering::Relaxed);
    for t in busy {
        t.join().unwrap();
    }
}

/// A fork server's child that sent its value is not waited for by `join` (the server reaps
/// it): 300 start+join cycles leave nothing tracked, no fd open, and no child of the server
/// behind once they have all ended.
#[test]
fn joined_fork_server_children_leave_nothing_behind() {
    mproc_init();
    // In a child of its own, so other tests' fds and children do not count.
    let mut checker = Builder::new()
        .start_method(StartMethod::Fork)
        .spawn(|| {
            // No `warm_up`: the child it drops is reaped by a thread, at a time of its own,
            // which would move the count. Two joins start the server and fill the registry.
            let join =
                |i| Builder::new().start_method(StartMethod::ForkServer).spawn_fn(add_one, i).unwrap().join();
            assert_eq!(join(0).unwrap(), 1);
            assert_eq!(join(0).unwrap(), 1);
            let fds = open_fds();
            for i in 0..300 {
                assert_eq!(join(i).unwrap(), i + 1);
            }
            // (Counted before `active_children`, which drops the registry's hold on the last
            // child, as the count before held the first's.)
            let fds_after = open_fds();
            assert!(mproc_process::active_children().is_empty(), "joined children still tracked");
            // Our only child now is the fork server: its children all end and are reaped.
            let me = std::process::id();
            let deadline = Instant::now() + DEADLINE;
            let left = loop {
                let servers = processes_whose_parent_is(me);
                let left: usize = servers.iter().map(|&s| processes_whose_parent_is(s).len()).sum();
                if left == 0 || Instant::now() > deadline {
                    break left;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            };
            (fds, fds_after, left)
        })
        .unwrap();
    let (before, after, left) = checker.join_timeout(DEADLINE * 2).unwrap();
    assert_eq!(before, after, "fds leaked");
    assert_eq!(left, 0, "the fork server kept children it should have reaped");
}

/// The pids of the processes whose parent is `parent`.
fn processes_whose_parent_is(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
                rest[1].parse::<u32>() == Ok(parent)
            })
        })
        .collect()
}

/// Starts a fork-server child and joins it, and another it never joins; returns normally,
/// so the process exits through its `atexit` hooks (which wait for unjoined children).
fn start_two_and_leave(_: ()) -> u32 {
    let joined = Builder::new().start_method(StartMethod::ForkServer).spawn_fn(add_one, 1).unwrap();
    let kept = Builder::new().start_method(StartMethod::ForkServer).spawn_fn(add_one, 2).unwrap();
    let value = joined.join().unwrap();
    drop(kept);
    value
}

/// A program that exits with fork-server children joined and unjoined exits cleanly: the
/// exit hook waits for the unjoined one (through the server's report, received while the
/// main thread is being torn down) and skips the one let go.
#[test]
fn a_program_exits_cleanly_with_fork_server_children_around() {
    mproc_init();
    let mut child =
        Builder::new().start_method(StartMethod::Spawn).spawn_fn(start_two_and_leave, ()).unwrap();
    assert_eq!(child.join_timeout(DEADLINE).unwrap(), 2);
    assert_eq!(child.exitcode(), Some(0));
}
