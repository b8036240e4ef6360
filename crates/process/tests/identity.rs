//! current_process, parent_process, active_children, cpu_count.

use mproc_process::{Builder, active_children, cpu_count, current_process, parent_process};

use crate::{DEADLINE, METHODS, mproc_init};

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Seen {
    name: String,
    pid: u32,
    daemon: bool,
    authkey: [u8; 32],
    parent: Option<(u32, String)>,
}

fn look(_: ()) -> Seen {
    let me = current_process();
    Seen {
        name: me.name().into(),
        pid: me.pid(),
        daemon: me.daemon(),
        authkey: *me.authkey(),
        parent: parent_process().map(|p| (p.pid(), p.name().to_string())),
    }
}

#[test]
fn children_know_who_they_are() {
    mproc_init();
    let me = current_process();
    assert_eq!(me.name(), "MainProcess");
    assert!(parent_process().is_none());
    for method in METHODS {
        let child = Builder::new().name("scout").start_method(method).spawn_fn(look, ()).unwrap();
        let pid = child.pid();
        let seen = child.join().unwrap();
        assert_eq!(
            seen,
            Seen {
                name: "scout".into(),
                pid,
                daemon: false,
                authkey: *me.authkey(),
                parent: Some((std::process::id(), "MainProcess".into()))
            },
            "{method:?}"
        );
    }
    let unnamed = Builder::new().spawn(|| current_process().name().to_string()).unwrap();
    assert!(unnamed.join().unwrap().starts_with("Process-"));
}

#[test]
fn active_children_lists_the_running_ones() {
    mproc_init();
    let (rx, tx) = mproc_process::ipc::pipe::<()>().unwrap();
    let child = Builder::new().name("lister").spawn(move || rx.recv().is_ok()).unwrap();
    let pid = child.pid();
    let listed = active_children();
    assert!(listed.iter().any(|c| c.pid == pid && c.name == "lister" && !c.daemon), "{listed:?}");
    tx.send(&()).unwrap();
    let mut child = child;
    assert!(child.join_timeout(DEADLINE).unwrap());
    assert!(!active_children().iter().any(|c| c.pid == pid));
}

#[test]
fn cpu_count_respects_affinity() {
    let n = cpu_count();
    assert!(n >= 1);
    assert!(n <= std::thread::available_parallelism().unwrap().get().max(n));
    // In a child limited to one CPU, cpu_count says 1.
    let one = Builder::new()
        .spawn(|| {
            let mut set = rustix::thread::CpuSet::new();
            set.set(rustix::thread::sched_getcpu());
            rustix::thread::sched_setaffinity(None, &set).unwrap();
            cpu_count()
        })
        .unwrap();
    assert_eq!(one.join().unwrap(), 1);
}
