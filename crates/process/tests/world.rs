//! What a child sees of the world: the parent's current directory and environment, and the
//! program's own name in `ps`.

use std::path::PathBuf;

use mproc_process::{Builder, Process, StartMethod};

use crate::{DEADLINE, METHODS, mproc_init};

/// The child's working directory and the two variables the test changes.
fn world(_: ()) -> (PathBuf, Option<String>, Option<String>) {
    (
        std::env::current_dir().unwrap(),
        std::env::var("MPROC_TEST_FRESH").ok(),
        std::env::var("MPROC_TEST_GONE").ok(),
    )
}

/// The fork server is started once, with the directory and environment of that moment; a
/// child it starts later still sees the parent's current ones, as Fork and Spawn children do.
#[test]
fn every_child_sees_the_parents_current_directory_and_environment() {
    mproc_init();
    // In a forked child: a process of its own, whose fork server, directory and environment
    // no other test shares.
    let mut child = Process::spawn(|| {
        crate::sys::set_env("MPROC_TEST_GONE", Some("old"));
        let before = Builder::new().start_method(StartMethod::ForkServer).spawn_fn(world, ()).unwrap();
        let before = before.join().unwrap();
        let dir = std::env::temp_dir().canonicalize().unwrap();
        std::env::set_current_dir(&dir).unwrap();
        crate::sys::set_env("MPROC_TEST_GONE", None);
        crate::sys::set_env("MPROC_TEST_FRESH", Some("new"));
        let after: Vec<_> = METHODS
            .iter()
            .map(|&method| {
                let child = Builder::new().start_method(method).spawn_fn(world, ()).unwrap();
                (format!("{method:?}"), child.join().unwrap())
            })
            .collect();
        (before, dir, after)
    })
    .unwrap();
    let (before, dir, after) = child.join_timeout(DEADLINE).unwrap();
    assert_eq!(before.2.as_deref(), Some("old"));
    for (method, seen) in after {
        assert_eq!(seen, (dir.clone(), Some("new".into()), None), "{method}");
    }
}

/// `/proc/PID/comm`: the name `ps -o comm`, `pgrep -x`, `top` and `killall` show.
fn comm(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim_end().to_string()
}

/// The child's name and its parent's, as `ps` shows them.
fn names(_: ()) -> (String, String) {
    let parent = rustix::process::getppid().unwrap().as_raw_nonzero().get().to_string();
    (comm("self"), comm(&parent))
}

/// Spawn children and the fork server (so its children too) carry the program's own name,
/// not `exe` (from `/proc/self/exe`, which they are started as).
#[test]
fn spawned_children_and_the_fork_server_carry_the_programs_name() {
    mproc_init();
    let ours = comm("self");
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        let (child, parent) =
            Builder::new().start_method(method).spawn_fn(names, ()).unwrap().join().unwrap();
        assert_eq!(child, ours, "{method:?}");
        if method == StartMethod::ForkServer {
            assert_eq!(parent, ours, "the fork server");
        }
    }
}
