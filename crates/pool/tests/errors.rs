//! Errors that say what happened and what to do (issue 11).

use mproc_pool::process::Process;
use mproc_pool::{Error, Pool};

use crate::*;

/// Starts a child process from inside a task: what the worker is told.
fn start_a_process(_: ()) -> String {
    match Process::spawn(|| 1u8) {
        Ok(child) => format!("started: {:?}", child.join()),
        Err(e) => e.to_string(),
    }
}

/// Starts a pool from inside a task: what the worker is told.
fn start_a_pool(_: ()) -> String {
    match Pool::new(1) {
        Ok(_) => "started".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_task_that_starts_children_is_told_why_not_and_what_to_do() {
    let pool = pool(1);
    for said in [pool.apply(start_a_process, ()).unwrap(), pool.apply(start_a_pool, ()).unwrap()] {
        assert!(said.contains("daemonic processes are not allowed to have children"), "{said}");
        assert!(said.contains("killed with its parent"), "why: {said}");
        assert!(said.contains("thread pool") && said.contains("non-daemon"), "what to do: {said}");
    }
}

#[test]
fn signals_are_named_in_pool_errors() {
    let pool = pool(1);
    let err = get(pool.apply_async(kill_self, ())).unwrap_err();
    assert!(err.to_string().contains("signal 9 (SIGKILL)"), "{err}");
}

#[test]
fn a_failed_map_item_is_named_by_its_index_in_the_input() {
    let pool = pool(2);
    for chunksize in [1, 3, 20] {
        let err = pool.map_chunked(fail_on_7, 0..20, chunksize).unwrap_err();
        assert!(err.to_string().contains("item 7 of the input"), "chunks of {chunksize}: {err}");
    }
    let err = pool.map(fail_on_7, 0..20).unwrap_err();
    assert!(err.to_string().contains("item 7 of the input"), "{err}");
    let err = pool.imap(fail_on_7, 0..20).find_map(Result::err).unwrap();
    assert!(err.to_string().contains("item 7 of the input"), "{err}");
    let pairs: Vec<(u64, u64)> = (0..20).map(|i| (i, 0)).collect();
    let err = pool.starmap(add_fail_on_7, pairs).unwrap_err();
    assert!(err.to_string().contains("item 7 of the input"), "{err}");
    let err = get(pool.apply_async(fail_on_7, 7)).unwrap_err();
    assert!(!err.to_string().contains("item"), "a single task has no items: {err}");
}

fn add_fail_on_7(a: u64, b: u64) -> u64 {
    fail_on_7(a) + b
}

#[test]
fn pool_errors_print_their_cause_once() {
    mproc_init();
    // A worker that cannot start: the pool error wraps the process error.
    let err = mproc_pool::Error::from(mproc_pool::process::Error::InitNotCalled);
    assert_cause_once(&err);
    let err = Pool::builder().processes(0).build().unwrap_err();
    assert_cause_once(&err);
    assert!(matches!(err, Error::Config(_)));
}

/// No message in `err`'s chain repeats the message of the error below it.
pub fn assert_cause_once(err: &dyn std::error::Error) {
    let mut at = err;
    while let Some(below) = at.source() {
        assert!(
            !at.to_string().contains(&below.to_string()),
            "{at:?} prints its cause {below:?} and returns it from source()"
        );
        at = below;
    }
}
