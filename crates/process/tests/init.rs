//! A program that forgot `init()`: a clear error, at once, and no child started.

use mproc_process::{Builder, Error, Process, StartMethod, active_children};

use crate::DEADLINE;

fn never_runs(_: ()) -> u8 {
    unreachable!("a child of a program without init() must not start")
}

#[test]
fn spawn_and_forkserver_without_init_give_a_clear_error() {
    // In a forked child, so forgetting init() does not touch the other tests.
    let mut child = Process::spawn(|| {
        mproc_process::__private::forget_init();
        let mut messages = Vec::new();
        for method in [StartMethod::Spawn, StartMethod::ForkServer] {
            match Builder::new().start_method(method).spawn_fn(never_runs, ()) {
                Err(e @ Error::InitNotCalled) => messages.push(e.to_string()),
                other => panic!("{method:?}: expected InitNotCalled, got {other:?}"),
            }
        }
        assert!(active_children().is_empty(), "no child was started");
        // Fork needs no init().
        let forked = Builder::new().start_method(StartMethod::Fork).spawn_fn(|x: u8| x + 1, 1).unwrap();
        assert_eq!(forked.join().unwrap(), 2);
        messages
    })
    .unwrap();
    let messages = child.join_timeout(DEADLINE).unwrap();
    for m in messages {
        assert!(m.contains("mproc_process::init()"), "{m}");
        assert!(m.contains("first line of `main`"), "{m}");
    }
}
