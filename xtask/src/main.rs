//! `cargo xtask`: the project's one script (alias in `.cargo/config.toml`).
//!
//! - `cargo xtask test [ARGS]`: rustfmt check, clippy, the examples built (some tests run
//!   them), every test target (criterion benches run once in test mode, a smoke test), then
//!   doc tests, then the loom model checks of the coroutine task cell, the doorbell protocol
//!   and the queue's sleep/wake protocol (`--cfg loom`, in `target/loom`). `ARGS` go to both test runs after `--`, e.g. a test name filter.
//! - `cargo xtask proptest [--cases N]`: the property tests (named `prop_*`), in release mode
//!   with `PROPTEST_CASES=N` (default 1024).
//! - `cargo xtask bench [--runs N] [--save FILE] [--bench NAME].. [--fresh-clone] [-- ARGS]`:
//!   every bench of `benches/`, one after another, each timed; then a summary of every figure
//!   that has a target, met or missed, one line each, with the date, the machine and its load
//!   (`src/bench.rs`). `--runs N` repeats the set and ends with a table across the runs.
//! - `cargo xtask tidy`: the house rules of `STYLE.md` a machine can check (`src/tidy.rs`);
//!   they also run as a `#[test]` of this crate.
//!
//! Standard library only, so it builds in a moment on a fresh machine.

mod bench;
mod tidy;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  test [ARGS]           rustfmt check, clippy, all test targets (benches run once as a smoke
                        test), doc tests, the loom model checks (coroutine task cell,
                        doorbell, queue sleep/wake); ARGS go to both test runs after `--`
  proptest [--cases N]  property tests (`prop_*`) in release mode with PROPTEST_CASES=N
                        (default 1024)
  bench [OPTIONS] [-- ARGS]
                        every benchmark of mproc-benches, each timed, then a summary: every
                        figure with its target, met or missed, the machine, its load, the date
                        (ARGS go to each bench binary, e.g. a criterion filter)
      --runs N          run them all N times (compiled once); a table across the runs at
                        the end says which targets held in every run
      --save FILE       also write the summary to FILE
      --bench NAME      only this bench (benches/benches/NAME.rs); may be repeated
      --fresh-clone     all of it in a fresh clone of the committed HEAD in the temporary
                        directory (compiled anew), removed afterwards unless --keep-clone
  tidy                  check SAFETY comments, unsafe_code allowances, layering, crate roots
                        and manifests under crates/
";

/// Cases per property test when `--cases` is not given.
const DEFAULT_PROPTEST_CASES: u32 = 1024;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        return usage();
    };
    let result = match command.as_str() {
        "test" => test(rest),
        "proptest" => proptest(rest),
        "bench" => bench::bench(rest),
        "tidy" if rest.is_empty() => tidy(),
        "help" | "-h" | "--help" => return usage(),
        _ => {
            eprintln!("xtask: unknown command or arguments: {}", args.join(" "));
            return usage();
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

pub(crate) fn usage() -> ExitCode {
    eprint!("{USAGE}");
    ExitCode::from(2)
}

/// The workspace root: the parent of this crate's directory.
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in a subdirectory of the workspace")
        .to_path_buf()
}

/// One cargo invocation, run from the workspace root.
struct Cargo {
    args: Vec<String>,
    envs: Vec<(&'static str, String)>,
    /// Past this the command and everything it started are killed: a hung test must fail
    /// the run, not stall it until CI's own limit.
    timeout: Option<Duration>,
}

impl Cargo {
    fn new(args: &[&str]) -> Self {
        Cargo { args: args.iter().map(|a| a.to_string()).collect(), envs: Vec::new(), timeout: None }
    }

    /// Appends `extra` after a `--`, if there is any.
    fn trailing(mut self, extra: &[String]) -> Self {
        if !extra.is_empty() {
            self.args.push("--".to_owned());
            self.args.extend(extra.iter().cloned());
        }
        self
    }

    fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    fn env(mut self, key: &'static str, value: String) -> Self {
        self.envs.push((key, value));
        self
    }

    /// Prints `==> <command>` and runs it; a failure becomes the exit code to leave with.
    fn run(self) -> Result<(), ExitCode> {
        let shown: Vec<String> = self
            .envs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain(std::iter::once("cargo".to_owned()))
            .chain(self.args.iter().cloned())
            .collect();
        let shown = shown.join(" ");
        println!("==> {shown}");
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (*k, v)))
            .current_dir(workspace_root())
            .spawn()
            .and_then(|child| wait_with_limit(child, self.timeout, &shown));
        match status {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => {
                eprintln!("xtask: `{shown}` failed ({status})");
                let code = status.code().and_then(|c| u8::try_from(c).ok());
                Err(ExitCode::from(code.filter(|c| *c != 0).unwrap_or(1)))
            }
            Err(e) => {
                eprintln!("xtask: could not run `{shown}`: {e}");
                Err(ExitCode::FAILURE)
            }
        }
    }
}

/// How long one test step may run (a normal run takes a minute or two).
const TEST_STEP_LIMIT: Duration = Duration::from_secs(30 * 60);

/// How long the loom step may run (it builds in about two and a half minutes on 2 cores and
/// runs in about a minute, most of it the queue's sleep/wake model).
const LOOM_STEP_LIMIT: Duration = Duration::from_secs(10 * 60);

/// `cargo xtask test`: format, lints, every test target, doc tests, mproc-ipc's `pickle`
/// feature, loom model checks; stops at the first failure.
fn test(extra: &[String]) -> Result<(), ExitCode> {
    Cargo::new(&["fmt", "--all", "--", "--check"]).run()?;
    Cargo::new(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]).run()?;
    // Tests that start an example program (the pool's `other_build`) find it at its plain
    // path, `target/debug/examples/NAME`, which only `cargo build` makes: `cargo test` builds
    // examples as test harnesses, under hashed names.
    Cargo::new(&["build", "--workspace", "--examples"]).run()?;
    Cargo::new(&["test", "--workspace", "--all-targets"]).trailing(extra).timeout(TEST_STEP_LIMIT).run()?;
    Cargo::new(&["test", "--workspace", "--doc"]).trailing(extra).timeout(TEST_STEP_LIMIT).run()?;
    // mproc-ipc's optional `pickle` feature: its lints, and the tests and doc tests it adds
    // (their names say pickle).
    Cargo::new(&[
        "clippy",
        "-p",
        "mproc-ipc",
        "--all-targets",
        "--features",
        "pickle",
        "--",
        "-D",
        "warnings",
    ])
    .run()?;
    Cargo::new(&["test", "-p", "mproc-ipc", "--features", "pickle", "--", "pickle"])
        .timeout(TEST_STEP_LIMIT)
        .run()?;
    loom()
}

/// The loom model checks of the coroutine task cell's cross-thread protocol
/// (`crates/coroutine/src/sys/task/loom_tests.rs`): the crate's unit tests built with
/// `--cfg loom`, which swaps its atomics, cells and mutex for loom's (`src/sync.rs`); then
/// those of the queue's sleep/wake protocol (`crates/ipc/src/queue/wake/loom_tests.rs`, only
/// them of mproc-ipc's unit tests). Their own target directory, so the normal build is not
/// rebuilt with the changed `RUSTFLAGS`.
fn loom() -> Result<(), ExitCode> {
    Cargo::new(&["test", "-p", "mproc-coroutine", "--lib", "--target-dir", "target/loom"])
        .env("RUSTFLAGS", "--cfg loom".to_owned())
        .timeout(LOOM_STEP_LIMIT)
        .run()?;
    Cargo::new(&[
        "test",
        "-p",
        "mproc-ipc",
        "--lib",
        "--target-dir",
        "target/loom",
        "--",
        "queue::wake::loom_tests",
    ])
    .env("RUSTFLAGS", "--cfg loom".to_owned())
    .timeout(LOOM_STEP_LIMIT)
    .run()
}

/// Waits for `child`; past `limit`, kills it and every process it started, and fails.
fn wait_with_limit(mut child: Child, limit: Option<Duration>, shown: &str) -> std::io::Result<ExitStatus> {
    let Some(limit) = limit else { return child.wait() };
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            eprintln!(
                "xtask: `{shown}` ran past {} minutes: killing it and what it started",
                limit.as_secs() / 60
            );
            kill_tree(&mut child);
            child.wait()?;
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"));
        }
        // A script polling once a second: nothing here is timed.
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Every process below `root`, by the parent pids in /proc.
/// Kills `child` and every process it started (SIGKILL), without reaping `child`.
fn kill_tree(child: &mut Child) {
    for pid in descendants(child.id()) {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    let _ = child.kill();
}

fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat[stat.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    found.split_off(1)
}

/// `cargo xtask proptest [--cases N]`: the `prop_*` tests in release mode, with more cases.
fn proptest(args: &[String]) -> Result<(), ExitCode> {
    let mut cases = DEFAULT_PROPTEST_CASES;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let value = match arg.strip_prefix("--cases=") {
            Some(value) => Some(value),
            None if arg == "--cases" => args.next().map(String::as_str),
            None => {
                eprintln!("xtask proptest: unknown argument `{arg}`");
                return Err(usage());
            }
        };
        match value.and_then(|v| v.parse().ok()) {
            Some(n) if n > 0 => cases = n,
            _ => {
                eprintln!("xtask proptest: `--cases` needs a positive number");
                return Err(usage());
            }
        }
    }
    Cargo::new(&["test", "--workspace", "--release", "--lib", "--tests", "--", "prop_"])
        .env("PROPTEST_CASES", cases.to_string())
        .run()
}

/// `cargo xtask tidy`: prints every broken rule, one `file:line: message` per line.
fn tidy() -> Result<(), ExitCode> {
    println!("==> tidy");
    let found = match tidy::check(&workspace_root()) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("xtask tidy: could not read the workspace: {e}");
            return Err(ExitCode::FAILURE);
        }
    };
    for violation in &found {
        println!("{violation}");
    }
    if found.is_empty() {
        println!("tidy: ok");
        Ok(())
    } else {
        eprintln!("tidy: {} problem(s)", found.len());
        Err(ExitCode::FAILURE)
    }
}
