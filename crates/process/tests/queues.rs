//! Queues reach children of every start method: in a `fn(A) -> R`'s arguments (their shared
//! memory's fd travels as `SCM_RIGHTS`), and captured by a forked closure.

use mproc_process::ipc::{JoinableQueue, Queue};
use mproc_process::{Builder, Process};

use crate::{DEADLINE, METHODS, mproc_init};

/// Gets strings until an empty one, puts each one's length (one of them 2 MiB, past the
/// ring), marks each done.
fn measure((input, output): (JoinableQueue<String>, Queue<usize>)) -> usize {
    let mut n = 0;
    loop {
        let s = input.get_timeout(DEADLINE).unwrap();
        input.task_done().unwrap();
        if s.is_empty() {
            return n;
        }
        output.put(&s.len()).unwrap();
        n += 1;
    }
}

#[test]
fn queues_travel_to_children_of_every_start_method() {
    mproc_init();
    for method in METHODS {
        let input = JoinableQueue::<String>::with_maxsize(2).unwrap();
        let output = Queue::<usize>::new().unwrap();
        let child = Builder::new()
            .start_method(method)
            .spawn_fn(measure, (input.clone(), output.clone()))
            .unwrap_or_else(|e| panic!("{method:?}: {e}"));
        let strings = ["a".repeat(3), "b".repeat(2 << 20), "c".repeat(70)];
        for s in &strings {
            input.put_timeout(s, DEADLINE).unwrap();
        }
        input.put(&String::new()).unwrap();
        for s in &strings {
            assert_eq!(output.get_timeout(DEADLINE).unwrap(), s.len(), "{method:?}");
        }
        input.join_timeout(DEADLINE).unwrap();
        assert_eq!(child.join().unwrap(), strings.len(), "{method:?}");
        assert!(output.empty(), "{method:?}");
    }
}

#[test]
fn a_forked_closure_captures_a_queue() {
    let queue = Queue::<u64>::new().unwrap();
    let theirs = queue.clone();
    let child = Process::spawn(move || {
        for n in 1..=100 {
            theirs.put(&n).unwrap();
        }
    })
    .unwrap();
    let total: u64 = (0..100).map(|_| queue.get_timeout(DEADLINE).unwrap()).sum();
    child.join().unwrap();
    assert_eq!(total, 5050);
}
