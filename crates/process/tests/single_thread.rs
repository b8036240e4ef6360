//! Fork starts from a parent with one thread (this test has no libtest harness, so `main` is
//! all there is): the parent's pending output is printed once, before the child's, and a
//! child's unfinished line is printed when it ends. Checked on this process's own stdout, redirected to a pipe.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use mproc_process::{Builder, Error, Process};

fn main() {
    mproc_process::init();
    assert!(
        mproc_process::__private::single_threaded(),
        "this test must run with one thread, or it does not test the path it is for"
    );
    let (mut output, restore) = capture_stdout();
    let checks = [values_panics_and_daemons(), output_is_printed_once_and_in_order(&mut output)];
    drop(restore);
    let passed = checks.iter().filter(|ok| **ok).count();
    println!("single_thread: {passed} of {} checks passed", checks.len());
    assert_eq!(passed, checks.len(), "a check failed (see above)");
}

fn values_panics_and_daemons() -> bool {
    for n in 0..50u32 {
        let value = Process::spawn(move || n * 3).unwrap().join().unwrap();
        assert_eq!(value, n * 3);
    }
    match Process::spawn(|| -> u8 { panic!("from a child of a one-thread parent") }).unwrap().join() {
        Err(Error::Panicked { message, .. }) => assert!(message.contains("one-thread parent"), "{message}"),
        other => panic!("expected the child's panic, got {other:?}"),
    }
    let daemon = Builder::new().daemon(true).spawn(|| 5u8).unwrap();
    assert_eq!(daemon.join().unwrap(), 5);
    eprintln!("single_thread: values, panics and daemons ok");
    true
}

fn output_is_printed_once_and_in_order(output: &mut std::fs::File) -> bool {
    print!("parent-before ");
    let child = Process::spawn(|| {
        print!("child-unfinished-line");
        1u8
    })
    .unwrap();
    assert_eq!(child.join().unwrap(), 1);
    println!(" parent-after");
    std::io::stdout().flush().unwrap();
    let mut seen = vec![0u8; 4096];
    let n = output.read(&mut seen).unwrap();
    let seen = String::from_utf8_lossy(&seen[..n]).into_owned();
    let expected = "parent-before child-unfinished-line parent-after\n";
    if seen != expected {
        eprintln!("single_thread: stdout was {seen:?}, expected {expected:?}");
        return false;
    }
    eprintln!("single_thread: output once and in order ok");
    true
}

/// Points fd 1 at a pipe; returns the read end and what puts the old stdout back on drop.
fn capture_stdout() -> (std::fs::File, Restore) {
    let (read, write) = rustix::pipe::pipe().unwrap();
    let saved = rustix::io::dup(rustix::stdio::stdout()).unwrap();
    rustix::stdio::dup2_stdout(&write).unwrap();
    (std::fs::File::from(read), Restore(saved))
}

/// Puts the saved stdout back on fd 1.
struct Restore(OwnedFd);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::io::stdout().flush();
        let _ = rustix::stdio::dup2_stdout(&self.0);
    }
}
