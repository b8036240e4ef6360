//! Large values: past ipc's out-of-line threshold (4 MiB) a task's arguments and value go to
//! and from local workers (processes or threads) as sealed memfds, unbounded by the pool's
//! message limit; a worker killed while it writes one fails its task alone.

use mproc_pool::process::ExitStatus;
use mproc_pool::{Error, Pool};
use serde::{Deserialize, Serialize};

use crate::*;

/// Past the out-of-line threshold.
const BIG: usize = 24 << 20;
/// The pools' message limit here: far below `BIG`.
const LIMIT: usize = 1 << 20;

pub fn echo(v: Vec<u8>) -> Vec<u8> {
    v
}

pub fn reversed(mut v: Vec<u8>) -> Vec<u8> {
    v.reverse();
    v
}

fn value(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + i / 4096) as u8).collect()
}

#[test]
fn large_values_reach_process_and_thread_workers_past_the_message_limit_and_come_back() {
    within(DEADLINE, || {
        mproc_init();
        let v = value(BIG);
        let mut back = v.clone();
        back.reverse();
        for threads in [false, true] {
            let builder = Pool::builder().processes(2).max_message_size(LIMIT);
            let pool = if threads { builder.threads() } else { builder }.build().unwrap();
            let what = if threads { "threads" } else { "processes" };
            assert!(pool.apply(echo, v.clone()).unwrap() == v, "{what}");
            let both: Vec<_> = (0..2).map(|_| pool.apply_async(reversed, v.clone())).collect();
            for r in both {
                assert!(get(r).unwrap() == back, "{what}");
            }
            // Small ones past the limit still fail: they would travel inline.
            let small_past = pool.apply(echo, vec![1; LIMIT + 1]);
            assert!(
                matches!(&small_past, Err(Error::Transfer { message, .. }) if message.contains("max_message_size")),
                "{what}: {small_past:?}"
            );
            assert_eq!(pool.apply(square, 7).unwrap(), 49, "{what}");
        }
    });
}

/// The tail of a value that kills its worker once the value's first part is in a memfd:
/// encoding it, the worker finds a memfd of ipc's named `mproc-value` holding `BIG` bytes.
#[derive(Debug, Deserialize)]
pub struct KillsInTheMemfd;

impl Serialize for KillsInTheMemfd {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let writing = std::fs::read_dir("/proc/self/fd").unwrap().flatten().any(|fd| {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            target.to_string_lossy().contains("memfd:mproc-value")
                && std::fs::metadata(fd.path()).is_ok_and(|m| m.len() >= BIG as u64)
        });
        if writing {
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL).unwrap();
        }
        serializer.serialize_unit_struct("KillsInTheMemfd")
    }
}

pub fn big_then_killed(_: ()) -> (Vec<u8>, KillsInTheMemfd) {
    (vec![5; BIG], KillsInTheMemfd)
}

#[test]
fn a_worker_killed_while_it_writes_a_value_into_a_memfd_fails_that_task_alone() {
    within(DEADLINE, || {
        let pool = pool(2);
        let doomed = pool.apply_async(big_then_killed, ());
        let good: Vec<_> = (0..100).map(|x| pool.apply_async(square, x)).collect();
        match get(doomed) {
            Err(Error::WorkerDied { status, worker, task, .. }) => {
                assert_eq!(status, Some(ExitStatus::Signal(9)));
                assert!(worker.starts_with("PoolWorker-"), "{worker}");
                assert!(task.contains("big_then_killed") || task.contains("KillsInTheMemfd"), "{task}");
            }
            Ok(_) => panic!("expected WorkerDied, got the value: the worker was not killed"),
            Err(other) => panic!("expected WorkerDied, got {other:?}"),
        }
        for (x, r) in good.into_iter().enumerate() {
            assert_eq!(get(r).unwrap(), (x * x) as u64);
        }
        // The pool goes on with large values too.
        let v = value(BIG);
        assert!(pool.apply(echo, v.clone()).unwrap() == v);
    });
}
