//! Remote workers: copies of this test binary that connect to a pool over TCP.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mproc_pool::{Error, Pool};

use crate::{DEADLINE, get, square, within};

/// A copy of this test binary started as a remote worker by `command` (the harness never
/// runs in it: `test_support!` makes it a worker before `main`; the filter matches no test
/// in case it did not).
fn worker(mut command: Command) -> Child {
    command.args(["--exact", "no-such-test"]).stdin(Stdio::null());
    command.spawn().expect("a worker starts")
}

/// Waits for `child` to exit, within the deadline; its exit code.
pub fn exit_code(child: &mut Child) -> Option<i32> {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "worker {} did not exit within {DEADLINE:?}",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn loopback_workers_run_tasks_and_leave_with_the_pool() {
    within(DEADLINE, || {
        let pool = Pool::builder().processes(0).listen((std::net::Ipv4Addr::LOCALHOST, 0)).build().unwrap();
        let launcher = pool.launcher().unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut workers: Vec<Child> = (0..2).map(|_| worker(launcher.command(&exe))).collect();
        pool.wait_for_workers(2, DEADLINE).unwrap();
        assert_eq!(pool.map(square, 0..1000u64).unwrap(), (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
        let results: Vec<_> = (0..200u64).map(|x| pool.apply_async(square, x)).collect();
        for (x, r) in results.into_iter().enumerate() {
            assert_eq!(get(r).unwrap(), (x * x) as u64);
        }
        drop(pool);
        for w in &mut workers {
            assert_eq!(exit_code(w), Some(0));
        }
    });
}

#[test]
fn too_few_workers_is_an_error_naming_how_many_came() {
    within(DEADLINE, || {
        let e = Pool::builder()
            .processes(0)
            .listen((std::net::Ipv4Addr::LOCALHOST, 0))
            .remote_workers(1)
            .worker_wait(Duration::from_millis(50))
            .build()
            .unwrap_err();
        assert!(matches!(e, Error::MissingWorkers { wanted: 1, came: 0, .. }), "{e}");
        assert!(e.to_string().starts_with("0 of the 1 remote workers"), "{e}");
    });
}
