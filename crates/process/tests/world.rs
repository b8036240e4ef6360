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

/// mproc's bootstrap variables (`MPROC_CHILD`, `MPROC_FORKSERVER`) a child sees in its own
/// environment, and those a program it runs sees (`/usr/bin/env`).
fn bootstrap_vars_seen(_: ()) -> (Vec<String>, Vec<String>) {
    let bootstrap = |line: &str| line.starts_with("MPROC_CHILD=") || line.starts_with("MPROC_FORKSERVER=");
    let own = std::env::vars().map(|(k, v)| format!("{k}={v}")).filter(|l| bootstrap(l)).collect();
    let out = std::process::Command::new("/usr/bin/env").output().unwrap();
    assert!(out.status.success(), "env: {:?}", out.status);
    let theirs =
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| bootstrap(l)).map(String::from).collect();
    (own, theirs)
}

/// The variables that tell a program it is mproc's child or fork server are read once, at
/// `init`: neither the child nor a program it runs has them (one that is an mproc program
/// would take itself for a child).
#[test]
fn no_child_and_no_program_it_runs_sees_the_bootstrap_variables() {
    mproc_init();
    let seen: Vec<_> = METHODS
        .iter()
        .map(|&method| {
            let mut child = Builder::new().start_method(method).spawn_fn(bootstrap_vars_seen, ()).unwrap();
            (method, child.join_timeout(DEADLINE).unwrap())
        })
        .filter(|(_, (own, theirs))| !own.is_empty() || !theirs.is_empty())
        .collect();
    assert!(seen.is_empty(), "(method, (the child's own, a program's it runs)): {seen:?}");
}

/// Runs this test binary (an mproc program: `test_support!` calls `init` first) from the
/// child, with a socket at fd 3, and returns its exit code. It only lists one test.
fn run_an_mproc_program_with_a_socket_at_fd_3(_: ()) -> Option<i32> {
    let (socket, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command.args([
        "--list",
        "--exact",
        "world::no_child_and_no_program_it_runs_sees_the_bootstrap_variables",
    ]);
    crate::sys::with_socket_at_fd_3(&mut command, socket.into());
    command.output().unwrap().status.code()
}

/// An mproc program run by a child, with a socket at fd 3 as its parent's bootstrap would
/// be, runs its own `main`: it does not take itself for a child whose parent died (exit 70).
#[test]
fn an_mproc_program_run_by_a_child_runs_its_own_main() {
    mproc_init();
    let codes: Vec<_> = METHODS
        .iter()
        .map(|&method| {
            let mut child = Builder::new()
                .start_method(method)
                .spawn_fn(run_an_mproc_program_with_a_socket_at_fd_3, ())
                .unwrap();
            (method, child.join_timeout(DEADLINE).unwrap())
        })
        .collect();
    assert!(codes.iter().all(|(_, code)| *code == Some(0)), "exit codes: {codes:?}");
}
