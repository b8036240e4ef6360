//! Start + join of a child that returns at once, per start method, beside the floors measured
//! in the same run: a bare `fork` + `_exit` + `waitpid`, and `posix_spawn` of `/bin/true`
//! (through `std::process::Command`, which uses it) for Spawn, whose child is a fresh program.

use std::hint::black_box;
use std::time::Duration;

use mproc_benches::{Ratio, Target, report};
use mproc_process::{Builder, StartMethod};

fn nothing(x: u32) -> u32 {
    x
}

fn main() {
    mproc_process::init();
    mproc_benches::start_run();
    // The paired rounds first, while this process is small: after criterion's runs its heap
    // is larger, every fork (the floor's too) copies more page tables, and the ratios drift
    // towards 1.
    // Targets (issue 12): Fork at most 1.3x the fork floor, ForkServer at most 2x it, Spawn
    // at most 2x `posix_spawn` of `/bin/true`; each the median of the paired rounds.
    let mut targets = Vec::new();
    let mut target = |name: &str, ratio: Option<f64>, bound: f64, floor: &str| {
        if let Some(r) = ratio {
            targets.push(Target::at_most(name, r, bound, format!("x the time of {floor}")));
        }
    };
    let floor = mproc_benches::sys::fork_exit_wait;
    let r = mproc_benches::paired("process: Fork closure vs raw fork", 100, Ratio::Time, floor, || {
        black_box(mproc_process::Process::spawn(|| black_box(7u32)).unwrap().join().unwrap());
    });
    target("process::start_join/fork_closure", r, 1.3, "fork+_exit+waitpid");
    for (name, id, bound, method) in [
        ("process: Fork fn vs raw fork", "fork_fn", 1.3, StartMethod::Fork),
        ("process: ForkServer fn vs raw fork", "forkserver_fn", 2.0, StartMethod::ForkServer),
    ] {
        let r = mproc_benches::paired(name, 100, Ratio::Time, floor, || {
            black_box(Builder::new().start_method(method).spawn_fn(nothing, 7).unwrap().join().unwrap());
        });
        target(&format!("process::start_join/{id}"), r, bound, "fork+_exit+waitpid");
    }
    let exec_floor = || assert!(std::process::Command::new("/bin/true").status().unwrap().success());
    let r = mproc_benches::paired(
        "process: Spawn fn vs posix_spawn /bin/true",
        20,
        Ratio::Time,
        exec_floor,
        || {
            black_box(
                Builder::new().start_method(StartMethod::Spawn).spawn_fn(nothing, 7).unwrap().join().unwrap(),
            );
        },
    );
    target("process::start_join/spawn_fn", r, 2.0, "posix_spawn /bin/true");
    println!();
    let mut c = mproc_benches::criterion()
        // Figures only (the targets come from the paired rounds above).
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
        .configure_from_args();
    let mut g = c.benchmark_group("process::start_join");
    g.bench_function("raw_fork_exit_waitpid", |b| b.iter(mproc_benches::sys::fork_exit_wait));
    g.bench_function("raw_posix_spawn_true", |b| {
        b.iter(|| assert!(std::process::Command::new("/bin/true").status().unwrap().success()))
    });
    g.bench_function("fork_closure", |b| {
        b.iter(|| mproc_process::Process::spawn(|| black_box(7u32)).unwrap().join().unwrap())
    });
    for (id, method) in [
        ("fork_fn", StartMethod::Fork),
        ("forkserver_fn", StartMethod::ForkServer),
        ("spawn_fn", StartMethod::Spawn),
    ] {
        g.bench_function(id, |b| {
            b.iter(|| {
                Builder::new().start_method(method).spawn_fn(nothing, black_box(7)).unwrap().join().unwrap()
            })
        });
    }
    g.finish();
    c.final_summary();
    report(
        "process::start_join",
        "raw_fork_exit_waitpid",
        &["fork_closure", "fork_fn", "forkserver_fn"],
        Ratio::Time,
    );
    report("process::start_join", "raw_posix_spawn_true", &["spawn_fn"], Ratio::Time);
    mproc_benches::report_targets(&targets);
}
