//! Remote workers placed by Slurm: `srun` starts this test binary in worker mode on the
//! one-node cluster `.ci/slurm-up` brings up, and the workers connect to the test's pool.
//!
//! Without a running Slurm these tests skip with a printed reason, except under CI (`CI` or
//! `MPROC_TEST_SLURM` set, as `.ci/run` does), where they fail: a bring-up that broke must not
//! pass as a skip.

use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use mproc_pool::{Error, Pool};
use rustix::fs::{Mode, OFlags};
use rustix::process::Signal;

use crate::*;

/// Longest any one `srun` may run: every `srun` is wrapped in `timeout`, since a step that
/// cannot get its CPUs queues for ever.
const SRUN_LIMIT: Duration = Duration::from_secs(300);

/// Whether a missing Slurm fails the test instead of skipping it.
fn required() -> bool {
    ["CI", "MPROC_TEST_SLURM"].iter().any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// `Ok(node)` when a Slurm node is up and can take jobs, else why not.
fn slurm_node() -> Result<String, String> {
    let out = Command::new("timeout")
        .args(["10", "sinfo", "--noheader", "--Node", "--format=%N %T"])
        .output()
        .map_err(|e| format!("cannot run `timeout 10 sinfo`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`sinfo` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(_, state)| ["idle", "mixed", "allocated", "completing"].contains(state))
        .map(|(node, _)| node.to_owned())
        .ok_or_else(|| format!("no Slurm node takes jobs (`sinfo`: {:?})", text.trim()))
}

/// The node to run on, or `None` when the test should skip (having said why); panics when
/// Slurm is required and missing.
fn slurm_or_skip(test: &str) -> Option<String> {
    match slurm_node() {
        Ok(node) => Some(node),
        Err(why) if required() => {
            panic!("{test}: Slurm is required here (CI or MPROC_TEST_SLURM set) but {why}; see .ci/slurm-up")
        }
        Err(why) => {
            eprintln!("{test}: skipped: {why} (`sudo bash .ci/slurm-up` starts a one-node cluster)");
            None
        }
    }
}

// ---- tasks run by the remote workers ------------------------------------------------------

/// What a worker knows of where Slurm placed it: (rank, node, pid).
pub fn placement(_: ()) -> (String, String, u32) {
    let var = |v: &str| std::env::var(v).unwrap_or_else(|_| format!("<no {v}>"));
    (var("SLURM_PROCID"), var("SLURMD_NODENAME"), std::process::id())
}

/// Writes this worker's pid to the FIFO at `path` (the test's sign that the task has
/// started), then never returns: the test kills the worker mid-task.
pub fn announce_and_hang(path: String) {
    let fifo =
        rustix::fs::open(&path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty()).expect("the FIFO opens");
    assert_eq!(rustix::io::write(&fifo, &std::process::id().to_le_bytes()).unwrap(), 4);
    endless(());
}

// ---- the test's side ----------------------------------------------------------------------

/// A pool with no local workers, listening on loopback (the one node is this host), and
/// `srun` starting `n` copies of this test binary as its workers.
struct SrunPool {
    pool: Pool,
    srun: Receiver<std::io::Result<Output>>,
    /// The pool's address, which every process the launch started has in its environment.
    address: String,
}

impl SrunPool {
    fn start(n: usize) -> SrunPool {
        let pool = Pool::builder().processes(0).listen((Ipv4Addr::LOCALHOST, 0)).build().unwrap();
        let launcher = pool.launcher().expect("a listening pool has a launcher");
        let mut srun = Command::new("timeout");
        srun.args(["--kill-after=10", &SRUN_LIMIT.as_secs().to_string(), "srun"])
            .args(launcher.srun_args(n))
            .arg("--job-name=mproc-pool-test")
            .arg(std::env::current_exe().unwrap())
            // Should worker mode not take over, the test harness runs no test.
            .args(["--exact", "no-such-test"])
            .stdin(Stdio::null());
        let (tx, srun_done) = mpsc::channel();
        // `output()` on a thread of its own: the test waits for it with a deadline.
        std::thread::spawn(move || {
            let _ = tx.send(srun.output());
        });
        if let Err(e) = pool.wait_for_workers(n, DEADLINE) {
            let srun = srun_done.try_recv().map(|o| describe(&o)).unwrap_or_else(|_| "still running".into());
            panic!("the srun workers did not join: {e}; srun: {srun}");
        }
        let address = launcher.address().to_owned();
        // The leftover check of `finish` sees the workers while they run.
        let running = carrying(&address);
        assert!(running.len() >= n, "{n} workers joined but only {running:?} carry the pool's address");
        SrunPool { address, pool, srun: srun_done }
    }

    /// Ends the pool and waits for `srun` (so for every worker) to exit: its exit status and
    /// output. Checks that no process the launch started is left.
    fn finish(self) -> Output {
        drop(self.pool);
        let output = match self.srun.recv_timeout(DEADLINE) {
            Ok(output) => output.expect("srun runs"),
            Err(_) => panic!("srun did not exit within {DEADLINE:?} of the pool's end"),
        };
        let left = carrying(&self.address);
        assert!(left.is_empty(), "processes left with the pool's address in their environment: {left:?}");
        output
    }
}

/// Exit status and output of a finished `srun`, for messages.
fn describe(output: &std::io::Result<Output>) -> String {
    match output {
        Ok(o) => format!(
            "{}, stdout {:?}, stderr {:?}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("did not run: {e}"),
    }
}

/// The pids of the processes whose environment holds `MPROC_POOL_ADDR=address`.
fn carrying(address: &str) -> Vec<u32> {
    let needle = format!("{}={address}\0", mproc_pool::ADDRESS_ENV);
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if env.windows(needle.len()).any(|w| w == needle.as_bytes()) && !gone(pid) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn srun_workers_run_map_and_apply_async_and_leave_with_the_pool() {
    let Some(node) = slurm_or_skip("srun_workers_run_map_and_apply_async_and_leave_with_the_pool") else {
        return;
    };
    within(DEADLINE, move || {
        let srun = SrunPool::start(2);
        let pool = &srun.pool;
        assert_eq!(
            pool.map(square, 0..10_000u64).unwrap(),
            (0..10_000u64).map(|x| x * x).collect::<Vec<_>>()
        );
        let results: Vec<_> = (0..500u64).map(|x| pool.apply_async(square, x)).collect();
        for (x, r) in results.into_iter().enumerate() {
            assert_eq!(get(r).unwrap(), (x * x) as u64);
        }
        // The tasks ran in processes Slurm placed: rank 0 or 1 of the step, on the node.
        for (rank, on, pid) in pool.map_chunked(placement, vec![(); 20], 1).unwrap() {
            assert!(rank == "0" || rank == "1", "rank {rank:?} (pid {pid})");
            assert_eq!(on, node, "pid {pid}");
            assert_ne!(pid, std::process::id());
        }
        let output = srun.finish();
        assert!(output.status.success(), "srun: {}", describe(&Ok(output)));
    });
}

#[test]
fn an_srun_worker_killed_mid_task_fails_only_its_task_naming_the_host() {
    let Some(node) = slurm_or_skip("an_srun_worker_killed_mid_task_fails_only_its_task_naming_the_host")
    else {
        return;
    };
    within(DEADLINE, move || {
        let srun = SrunPool::start(2);
        let pool = &srun.pool;
        let fifo = Fifo::new("slurm-kill");
        let doomed = pool.apply_async(announce_and_hang, fifo.path().to_string_lossy().into_owned());
        // Submitted at once, so some may wait behind the doomed task in its worker's batch:
        // those must go to the survivor. (The workers are fresh, so a worker claims one task
        // at a time: none is granted ahead of a task whose length it has not measured.)
        let good: Vec<_> = (0..1000u64).map(|x| pool.apply_async(square, x)).collect();
        let victim = fifo.read_pid();
        rustix::process::kill_process(rustix::process::Pid::from_raw(victim as i32).unwrap(), Signal::KILL)
            .expect("kill the worker");
        match get(doomed) {
            Err(e @ Error::WorkerDied { .. }) => {
                let Error::WorkerDied { worker, pid, .. } = &e else { unreachable!() };
                assert_eq!(*pid, victim, "{e}");
                assert!(worker.contains(&format!("@{node}")), "the error names the host {node:?}: {e}");
            }
            other => panic!("expected WorkerDied, got {other:?}"),
        }
        for (x, r) in good.into_iter().enumerate() {
            assert_eq!(get(r).unwrap(), (x * x) as u64);
        }
        // The survivor goes on alone.
        let after = pool.map_chunked(placement, vec![(); 10], 1).unwrap();
        assert!(after.iter().all(|(_, _, pid)| *pid != victim), "{after:?}");
        assert!(gone(victim));
        let output = srun.finish();
        // Slurm reports the killed task (137: 128 + SIGKILL), the survivor left with 0.
        assert_eq!(output.status.code(), Some(137), "srun: {}", describe(&Ok(output)));
    });
}
