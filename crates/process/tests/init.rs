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

fn hello(_: ()) -> u8 {
    println!("hello from a child");
    1
}

/// Starts children without calling `mproc_init()`: `test_support!()` alone makes a test binary
/// ready, in a suite or run alone (the test below runs it alone).
#[test]
fn children_of_a_test_that_never_calls_mproc_init() {
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        let child = Builder::new().start_method(method).spawn_fn(hello, ()).unwrap();
        assert_eq!(child.join().unwrap(), 1, "{method:?}");
    }
}

/// Runs the test above alone, as `cargo test NAME` would: it passes, and its children print
/// only what they print themselves, nothing of the test harness's.
#[test]
fn a_test_run_alone_starts_children_which_print_nothing_of_the_harness() {
    use std::io::Read;
    let mut run = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "init::children_of_a_test_that_never_calls_mproc_init",
            "--test-threads=1",
            "--nocapture",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, mut err) = (run.stdout.take().unwrap(), run.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let mut stdout = String::new();
    // Ends when the run and every process holding its stdout (its children, its fork
    // server) are gone; bounded by the run's own deadline below.
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(run.id() as i32).unwrap(),
        rustix::process::PidfdFlags::empty(),
    )
    .unwrap();
    if mproc_process::ipc::wait(&[&pidfd], Some(DEADLINE)).unwrap().is_empty() {
        let _ = run.kill();
    }
    let status = run.wait().unwrap();
    let _ = out.read_to_string(&mut stdout);
    let stderr = reader.join().unwrap();
    assert!(status.success(), "run alone, the test failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout.matches("running 1 test").count(), 1, "the harness's line, once:\n{stdout}");
    assert_eq!(stdout.matches("hello from a child").count(), 2, "{stdout}");
}
