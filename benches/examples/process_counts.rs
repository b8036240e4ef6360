//! Deterministic counts for the process bench: run one kind of start + join `N` times, so
//! that `strace -c -f` (system calls) or `perf stat -e page-faults` over the run, divided by
//! `N`, gives the cost of one start + join without a timer (the machine may be loaded).
//!
//! ```text
//! cargo build --release -p mproc-benches --example process_counts
//! strace -f -c target/release/examples/process_counts fork_closure 2000
//! ```
//!
//! Kinds: `floor` (bare `fork` + `_exit` + `waitpid`), `spawn_floor` (`posix_spawn` of
//! `/bin/true` through `std::process::Command`, Spawn's floor), `fork_closure`, `fork_fn`,
//! `forkserver_fn`, `spawn_fn`, `none` (the program's own start, to subtract). It also prints
//! its own page faults and those of its children (`/proc/self/stat`), per start + join.

use std::hint::black_box;

use mproc_process::{Builder, Process, StartMethod};

fn nothing(x: u32) -> u32 {
    x
}

/// This process's minor page faults, and those of its waited-for children (`/proc/self/stat`
/// fields 10 and 11).
fn faults() -> (i64, i64) {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<i64> = rest.split(' ').map(|f| f.parse().unwrap_or(0)).collect();
    (fields[10 - 3], fields[11 - 3])
}

/// The fork server's minor page faults so far and its children's (in a `forkserver_fn` run:
/// it is not waited for while it serves, so neither is among this process's children's).
fn server_faults() -> Option<(i64, i64)> {
    // Between starts this thread's one live child is the server (it started it).
    let me = std::process::id();
    let children = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).ok()?;
    let server: u32 = children.split_whitespace().next()?.parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{server}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 2..].split(' ').skip(10 - 3);
    let minflt = fields.next()?.parse().ok()?;
    let cminflt = fields.next()?.parse().ok()?;
    Some((minflt, cminflt))
}

fn main() {
    mproc_process::init();
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "fork_closure".into());
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let one: Box<dyn Fn()> = match kind.as_str() {
        "floor" => Box::new(mproc_benches::sys::fork_exit_wait),
        "spawn_floor" => Box::new(|| {
            assert!(std::process::Command::new("/bin/true").status().unwrap().success());
        }),
        "fork_closure" => Box::new(|| {
            black_box(Process::spawn(|| black_box(7u32)).unwrap().join().unwrap());
        }),
        "fork_fn" | "forkserver_fn" | "spawn_fn" => {
            let method = match kind.as_str() {
                "fork_fn" => StartMethod::Fork,
                "forkserver_fn" => StartMethod::ForkServer,
                _ => StartMethod::Spawn,
            };
            Box::new(move || {
                black_box(Builder::new().start_method(method).spawn_fn(nothing, 7).unwrap().join().unwrap());
            })
        }
        "none" => Box::new(|| {}),
        other => panic!("unknown kind {other}"),
    };
    one(); // the first start makes per-process state (the slot file, the server)
    let (self_before, children_before) = faults();
    let server_before = server_faults();
    let start = std::time::Instant::now();
    for _ in 0..n {
        one();
    }
    let elapsed = start.elapsed();
    let (self_after, children_after) = faults();
    if let (Some(before), Some(after)) = (server_before, server_faults()) {
        let per = |a: i64, b: i64| (a - b) as f64 / n as f64;
        println!(
            "fork server: minor faults per start: server {:.2}, its children {:.2}",
            per(after.0, before.0),
            per(after.1, before.1)
        );
    }
    let per = |a: i64, b: i64| (a - b) as f64 / n as f64;
    println!(
        "{kind}: {n} start+join, {:.1} us each; minor faults per start+join: parent {:.2}, child {:.2}",
        elapsed.as_secs_f64() * 1e6 / n as f64,
        per(self_after, self_before),
        per(children_after, children_before),
    );
}
