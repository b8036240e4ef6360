//! A receive interrupted by signals goes on: `EINTR` never reaches the caller.

use std::sync::atomic::Ordering;
use std::time::Instant;

use mproc_ipc::duplex;

use crate::support::{DEADLINE, SIGNALS_SEEN, assert_success, in_child, install_counting_handler, msg};

/// Waits until process `pid` sleeps in the kernel (state `S` in `/proc/PID/stat`): after it
/// said "ready", the only place it can sleep is the blocking receive.
fn wait_until_sleeping(pid: i32) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("child's stat");
        // The state follows the command name, which is in parentheses.
        let state = stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap();
        if state == 'S' {
            return;
        }
        assert!(Instant::now() < deadline, "child {pid} never blocked (state {state})");
        std::thread::yield_now();
    }
}

#[test]
fn blocking_and_timed_receives_go_on_after_signals() {
    let (parent, child_end) = duplex::<u32>().unwrap();
    let child = in_child(&[&child_end], || {
        install_counting_handler();
        child_end.send(&0).map_err(msg)?; // ready: next we block in recv
        let first = child_end.recv().map_err(msg)?;
        child_end.send(&1).map_err(msg)?; // ready again: next we block in recv_timeout
        let second = child_end.recv_timeout(DEADLINE).map_err(msg)?;
        let seen = SIGNALS_SEEN.load(Ordering::Relaxed);
        if (first, second) != (41, 42) {
            return Err(format!("received {first}, {second}"));
        }
        // Pending signals of one kind merge: at least one arrives per round.
        if seen < 2 {
            return Err(format!("only {seen} signals arrived"));
        }
        Ok(())
    });
    let pid = rustix::process::Pid::from_raw(child.pid()).unwrap();
    drop(child_end);
    for (ready, value) in [(0, 41), (1, 42)] {
        assert_eq!(parent.recv_timeout(DEADLINE).unwrap(), ready);
        wait_until_sleeping(child.pid());
        for _ in 0..3 {
            rustix::process::kill_process(pid, rustix::process::Signal::USR1).unwrap();
        }
        parent.send(&value).unwrap();
    }
    assert_success(child);
}
