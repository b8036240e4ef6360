//! Work spread to idle workers: no worker sits idle while tasks it could run wait unstarted
//! in another worker's batch (issue 11).

use std::os::fd::OwnedFd;

use mproc_pool::Pool;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};

use crate::{DEADLINE, Fifo, get, mproc_init, square};

/// Blocks until a byte can be read from the FIFO at `path` (the test's release), at most
/// `DEADLINE`: true if released, false if the deadline passed first.
fn gate(path: String) -> bool {
    let fifo: OwnedFd =
        rustix::fs::open(&path, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())
            .expect("the gate's FIFO opens");
    let timeout = Timespec { tv_sec: DEADLINE.as_secs() as i64, tv_nsec: 0 };
    let mut fds = [PollFd::new(&fifo, PollFlags::IN)];
    matches!(rustix::event::poll(&mut fds, Some(&timeout)), Ok(1))
}

/// The case: after 5,000 trivial tasks (so batches are sized for trivial tasks), one
/// task that blocks until released, then 39 more submitted at once. The 39 must all finish
/// while the first still blocks: any of them left behind it in its worker's batch would wait
/// for ever while the other workers idle (here: until the deadline, then the test fails).
fn the_rest_run_while_one_task_blocks(pool: &Pool, name: &str) {
    let warm: Vec<_> = (0..5_000u64).map(|x| pool.apply_async(square, x)).collect();
    for (x, r) in warm.into_iter().enumerate() {
        assert_eq!(get(r).unwrap(), (x * x) as u64);
    }
    let gate_fifo = Fifo::new(&format!("gate-{name}"));
    let blocked = pool.apply_async(gate, gate_fifo.path().to_string_lossy().into_owned());
    let rest: Vec<_> = (0..39u64).map(|x| pool.apply_async(square, x)).collect();
    let done: Vec<u64> = rest.into_iter().map(|r| get(r).unwrap()).collect();
    assert_eq!(done, (0..39u64).map(|x| x * x).collect::<Vec<_>>());
    assert!(!blocked.ready(), "the gate task is still blocked: the 39 ran beside it");
    gate_fifo.release();
    assert!(get(blocked).unwrap(), "the gate task saw its release");
}

#[test]
fn no_worker_idles_while_another_holds_unstarted_tasks() {
    mproc_init();
    for n_workers in [2, 8] {
        for round in 0..5 {
            let pool = Pool::new(n_workers).unwrap();
            the_rest_run_while_one_task_blocks(&pool, &format!("p{n_workers}-{round}"));
        }
    }
    let pool = Pool::builder().processes(2).threads().build().unwrap();
    the_rest_run_while_one_task_blocks(&pool, "threads");
}
