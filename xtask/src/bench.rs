//! `cargo xtask bench`: every benchmark of `mproc-benches`, one after another, each timed, and
//! a summary of every figure that has a target, met or missed, with the machine it ran on.
//!
//! The benches print their targets as lines of one shape (`mproc_benches::report_targets`):
//!
//! ```text
//! target NAME: VALUE UNIT (target OP BOUND): met
//! target NAME: VALUE UNIT (target OP BOUND): MISSED
//! ```
//!
//! which this module gathers from each bench's output. With `--runs N` it runs the whole set
//! N times (compiled once) and ends with a table of every target across the runs, saying
//! whether it held in each; `--save FILE` writes that summary to a file as well, ready to
//! paste into the README; `--fresh-clone` does all this in a fresh clone of the committed
//! `HEAD` under the temporary directory, as the lead's closing runs are done.

use std::env;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{Cargo, kill_tree, workspace_root};

/// The benches in the order they run; a bench file not named here runs after them.
const ORDER: [&str; 8] = ["ipc", "listener", "process", "pool", "coroutine", "queue", "sync", "bigval"];

/// Past this one bench is killed with everything it started and counted as failed (a normal
/// one takes one to three minutes).
const BENCH_LIMIT: Duration = Duration::from_secs(20 * 60);

/// What `cargo xtask bench` was asked to do.
#[derive(Debug, Default)]
struct Options {
    runs: usize,
    save: Option<PathBuf>,
    fresh_clone: bool,
    keep_clone: bool,
    benches: Vec<String>,
    /// Arguments for every bench binary (criterion's: a filter, `--sample-size`, ...).
    extra: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options { runs: 1, ..Options::default() };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().cloned().ok_or(format!("`{name}` needs a value"));
        match arg.as_str() {
            "--runs" => {
                o.runs = value("--runs")?
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or("`--runs` needs a positive number")?
            }
            "--save" => o.save = Some(PathBuf::from(value("--save")?)),
            "--bench" => o.benches.push(value("--bench")?),
            "--fresh-clone" => o.fresh_clone = true,
            "--keep-clone" => o.keep_clone = true,
            "--" => o.extra.extend(args.by_ref().cloned()),
            other if other.starts_with("--") => return Err(format!("unknown option `{other}`")),
            other => o.extra.push(other.to_owned()),
        }
    }
    Ok(o)
}

/// `cargo xtask bench [OPTIONS] [-- ARGS]` (see the usage text in `main.rs`).
pub(crate) fn bench(args: &[String]) -> Result<(), ExitCode> {
    let mut o = parse(args).map_err(|why| {
        eprintln!("xtask bench: {why}");
        crate::usage()
    })?;
    if let Some(save) = &o.save {
        // Relative to where the command was given, also when the runs happen in a clone.
        o.save = Some(env::current_dir().map(|d| d.join(save)).unwrap_or_else(|_| save.clone()));
    }
    if o.fresh_clone {
        return in_fresh_clone(args, &o);
    }
    let benches = bench_names(&o.benches)?;
    let compile = Instant::now();
    Cargo::new(&["bench", "-p", "mproc-benches", "--no-run"]).run()?;
    let compile = compile.elapsed();
    let mut runs = Vec::new();
    for n in 1..=o.runs {
        let run = run_once(&benches, &o.extra, n, o.runs);
        // Each run's summary as soon as it ends: the session may end before the next one.
        print!("\n{}", run.summary(o.runs, compile));
        runs.push(run);
    }
    let mut text = String::new();
    for run in &runs {
        text += &run.summary(o.runs, compile);
        text += "\n";
    }
    if runs.len() > 1 {
        let table = across_runs(&runs);
        print!("\n{table}");
        text += &table;
    }
    if let Some(save) = &o.save {
        match std::fs::write(save, &text) {
            Ok(()) => println!("\nxtask bench: summary saved to {}", save.display()),
            Err(e) => {
                eprintln!("xtask bench: could not write {}: {e}", save.display());
                return Err(ExitCode::FAILURE);
            }
        }
    }
    let failed: Vec<String> =
        runs.iter().flat_map(|r| r.benches.iter().filter(|b| !b.ok).map(|b| b.name.clone())).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        eprintln!("xtask bench: failed: {}", failed.join(", "));
        Err(ExitCode::FAILURE)
    }
}

/// The benches to run: `asked` (checked to exist), or all of `benches/benches/*.rs`.
fn bench_names(asked: &[String]) -> Result<Vec<String>, ExitCode> {
    let dir = workspace_root().join("benches").join("benches");
    let mut all: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| {
            eprintln!("xtask bench: cannot list {}: {e}", dir.display());
            ExitCode::FAILURE
        })?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rs").map(str::to_owned))
        .collect();
    all.sort_by_key(|name| (ORDER.iter().position(|o| o == name).unwrap_or(ORDER.len()), name.clone()));
    if asked.is_empty() {
        return Ok(all);
    }
    match asked.iter().find(|a| !all.contains(a)) {
        Some(unknown) => {
            eprintln!("xtask bench: no bench `{unknown}` (there are: {})", all.join(", "));
            Err(ExitCode::from(2))
        }
        None => Ok(asked.to_vec()),
    }
}

/// One `target ...` line of a bench, taken apart.
#[derive(Debug, Clone, PartialEq)]
struct TargetLine {
    name: String,
    value: f64,
    /// The value as printed, with its unit.
    shown: String,
    /// `<= 1.150`, `>= 50000000`.
    target: String,
    met: bool,
}

impl TargetLine {
    /// `target NAME: VALUE UNIT (target OP BOUND): met|MISSED`.
    fn parse(line: &str) -> Option<TargetLine> {
        let rest = line.strip_prefix("target ")?;
        let (rest, status) = rest.rsplit_once("): ")?;
        let met = match status.trim() {
            "met" => true,
            "MISSED" => false,
            _ => return None,
        };
        let (head, target) = rest.rsplit_once(" (target ")?;
        let (name, shown) = head.rsplit_once(": ")?;
        let number: String =
            shown.chars().take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | 'e')).collect();
        Some(TargetLine {
            name: name.to_owned(),
            value: number.parse().ok()?,
            shown: shown.to_owned(),
            target: target.to_owned(),
            met,
        })
    }
}

/// One bench binary's run.
#[derive(Debug)]
struct BenchRun {
    name: String,
    took: Duration,
    ok: bool,
    targets: Vec<TargetLine>,
}

/// One run of every bench, and the machine around it.
#[derive(Debug)]
struct Run {
    n: usize,
    date: String,
    machine: String,
    commit: String,
    load_start: String,
    load_end: String,
    took: Duration,
    benches: Vec<BenchRun>,
}

fn run_once(benches: &[String], extra: &[String], n: usize, of: usize) -> Run {
    let (date, load_start, start) = (utc_now(), load_average(), Instant::now());
    println!("\n==> bench run {n} of {of}: {date}, load average {load_start}");
    let benches = benches.iter().map(|b| run_bench(b, extra)).collect();
    Run {
        n,
        date,
        machine: machine(),
        commit: commit(),
        load_start,
        load_end: load_average(),
        took: start.elapsed(),
        benches,
    }
}

/// Runs `cargo bench -p mproc-benches --bench NAME -- EXTRA`, echoing its output and keeping
/// its target lines; past [`BENCH_LIMIT`] kills it and all it started.
fn run_bench(name: &str, extra: &[String]) -> BenchRun {
    let mut args = vec!["bench", "-p", "mproc-benches", "--bench", name];
    if !extra.is_empty() {
        args.push("--");
        args.extend(extra.iter().map(String::as_str));
    }
    println!("==> cargo {}", args.join(" "));
    let start = Instant::now();
    let failed = |why: String| {
        eprintln!("xtask bench: {name}: {why}");
        BenchRun { name: name.to_owned(), took: start.elapsed(), ok: false, targets: Vec::new() }
    };
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child =
        match Command::new(cargo).args(&args).current_dir(workspace_root()).stdout(Stdio::piped()).spawn() {
            Ok(child) => child,
            Err(e) => return failed(format!("could not run cargo: {e}")),
        };
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut targets = Vec::new();
    let mut exited: Option<Instant> = None;
    let status = loop {
        match lines.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                println!("{line}");
                targets.extend(TargetLine::parse(&line));
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if exited.is_none() && matches!(child.try_wait(), Ok(Some(_))) {
                    exited = Some(Instant::now());
                }
                // Output still open after the bench ended: a process it left behind holds
                // it; give that a few seconds, then stop reading.
                let left_behind = exited.is_some_and(|at| at.elapsed() > Duration::from_secs(5));
                if left_behind {
                    eprintln!("xtask bench: {name}: a process it started still holds its output");
                } else if start.elapsed() < BENCH_LIMIT {
                    continue;
                } else {
                    eprintln!(
                        "xtask bench: {name} ran past {} minutes: killing it",
                        BENCH_LIMIT.as_secs() / 60
                    );
                    kill_tree(&mut child);
                }
            }
        }
        break child.wait();
    };
    match status {
        Ok(status) if status.success() && start.elapsed() < BENCH_LIMIT => {
            BenchRun { name: name.to_owned(), took: start.elapsed(), ok: true, targets }
        }
        Ok(status) => BenchRun { targets, ..failed(format!("failed ({status})")) },
        Err(e) => failed(format!("waiting for it: {e}")),
    }
}

impl Run {
    fn targets(&self) -> impl Iterator<Item = &TargetLine> {
        self.benches.iter().flat_map(|b| &b.targets)
    }

    /// The run in a few lines, one per target: what `--save` writes and the README quotes.
    fn summary(&self, of: usize, compile: Duration) -> String {
        let mut s = String::new();
        let missed = self.targets().filter(|t| !t.met).count();
        let all = self.targets().count();
        let _ = writeln!(
            s,
            "== mproc benchmarks, run {} of {of}: {}, {} ==",
            self.n,
            self.date,
            minutes(self.took)
        );
        let _ = writeln!(s, "machine: {}", self.machine);
        let _ = writeln!(
            s,
            "load average (1, 5, 15 min): {} at start, {} at end",
            self.load_start, self.load_end
        );
        let _ = writeln!(s, "commit: {}", self.commit);
        let took: Vec<String> = self
            .benches
            .iter()
            .map(|b| format!("{} {}{}", b.name, minutes(b.took), if b.ok { "" } else { " FAILED" }))
            .collect();
        let _ = writeln!(s, "benches: {} (compile {}, not counted)", took.join(", "), minutes(compile));
        let _ = writeln!(s, "targets: {} met, {missed} missed", all - missed);
        let width = self.targets().map(|t| t.name.len()).max().unwrap_or(0);
        let shown = self.targets().map(|t| t.shown.len()).max().unwrap_or(0);
        for t in self.targets() {
            let _ = writeln!(
                s,
                "  {:<6}  {:<width$}  {:<shown$}  (target {})",
                if t.met { "met" } else { "MISSED" },
                t.name,
                t.shown,
                t.target
            );
        }
        for b in self.benches.iter().filter(|b| !b.ok) {
            let _ = writeln!(s, "  FAILED  bench {}: its targets are missing or incomplete", b.name);
        }
        s
    }
}

/// Every target across `runs`, one line each: its value in each run, its target, and whether
/// it held in every run.
fn across_runs(runs: &[Run]) -> String {
    // Names in the order of the first run that has them.
    let mut names: Vec<&str> = Vec::new();
    for run in runs {
        for t in run.targets() {
            if !names.contains(&t.name.as_str()) {
                names.push(&t.name);
            }
        }
    }
    let find = |run: &'_ Run, name: &str| run.targets().find(|t| t.name == name).cloned();
    let held = names.iter().filter(|name| runs.iter().all(|r| find(r, name).is_some_and(|t| t.met))).count();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "== {} runs ({} to {}): {held} of {} targets held in every run ==",
        runs.len(),
        runs[0].date,
        runs[runs.len() - 1].date,
        names.len()
    );
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0).max("target".len());
    let mut header = format!("{:<width$}", "target");
    for run in runs {
        let _ = write!(header, "  {:>9}", format!("run {}", run.n));
    }
    let _ = writeln!(s, "{header}  {:<14}  held", "target");
    for name in &names {
        let mut line = format!("{name:<width$}");
        let mut target = String::new();
        let mut misses = 0;
        for run in runs {
            let cell = match find(run, name) {
                Some(t) => {
                    target = t.target.clone();
                    misses += usize::from(!t.met);
                    format!("{}{}", short(t.value), if t.met { "" } else { "!" })
                }
                None => {
                    misses += 1;
                    "-".to_owned()
                }
            };
            let _ = write!(line, "  {cell:>9}");
        }
        let verdict = if misses == 0 {
            "every run".to_owned()
        } else {
            format!("MISSED in {misses} of {}", runs.len())
        };
        let _ = writeln!(s, "{line}  {target:<14}  {verdict}");
    }
    let _ = writeln!(s, "(`!`: missed in that run; `-`: not reported in that run)");
    s
}

/// A value in a few characters: ratios with three decimals, rates in millions or thousands.
fn short(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}

/// CPU model, cores, memory, kernel.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {:.0} GiB, Linux {} ({})",
        mem_kib / (1 << 20) as f64,
        kernel.trim(),
        env::consts::ARCH
    )
}

fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The date and time in UTC, from `date(1)`.
fn utc_now() -> String {
    output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .unwrap_or_else(|| "(no date: `date -u` failed)".to_owned())
}

/// `HEAD`'s short hash and branch, and whether the tree has uncommitted changes.
fn commit() -> String {
    let git = |args: &[&str]| output(Command::new("git").args(args).current_dir(workspace_root()));
    let Some(hash) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "(not a git checkout)".to_owned();
    };
    let branch = git(&["rev-parse", "--abbrev-ref", "HEAD"]).unwrap_or_default();
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    format!("{hash} ({branch}){}", if dirty { ", with uncommitted changes" } else { "" })
}

/// A command's standard output, trimmed, if it succeeded.
fn output(command: &mut Command) -> Option<String> {
    let out = command.stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `--fresh-clone`: clones the committed `HEAD` into a new directory under the temporary
/// directory and runs `cargo xtask bench` there with the other options (a fresh `target/`:
/// everything is compiled anew); removes the clone afterwards unless `--keep-clone`.
fn in_fresh_clone(args: &[String], o: &Options) -> Result<(), ExitCode> {
    let root = workspace_root();
    let git = |args: &[&str], dir: &Path| output(Command::new("git").args(args).current_dir(dir));
    let Some(head) = git(&["rev-parse", "HEAD"], &root) else {
        eprintln!("xtask bench: --fresh-clone needs a git checkout");
        return Err(ExitCode::FAILURE);
    };
    if git(&["status", "--porcelain", "--untracked-files=no"], &root).is_some_and(|s| !s.is_empty()) {
        println!("xtask bench: note: uncommitted changes are not in the clone; it has {head}");
    }
    let dir = env::temp_dir().join(format!("mproc-bench-{}", std::process::id()));
    println!("==> git clone {} {} (at {head})", root.display(), dir.display());
    let cloned = Command::new("git")
        .args(["clone", "--quiet", "--no-checkout"])
        .arg(&root)
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success())
        && git(&["checkout", "--quiet", "--detach", &head], &dir).is_some();
    if !cloned {
        eprintln!("xtask bench: could not clone into {}", dir.display());
        let _ = std::fs::remove_dir_all(&dir);
        return Err(ExitCode::FAILURE);
    }
    // The same options, less the clone's own; `--save` made absolute already.
    let mut rest: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--fresh-clone" | "--keep-clone" => {}
            "--save" => {
                it.next();
            }
            "--" => {
                rest.push(a.clone());
                rest.extend(it.by_ref().cloned());
            }
            _ => rest.push(a.clone()),
        }
    }
    if let Some(save) = &o.save {
        rest.insert(0, save.display().to_string());
        rest.insert(0, "--save".to_owned());
    }
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("==> (in {}) cargo xtask bench {}", dir.display(), rest.join(" "));
    let status = Command::new(cargo)
        .args(["xtask", "bench"])
        .args(&rest)
        .current_dir(&dir)
        .env_remove("CARGO_TARGET_DIR")
        .status();
    if o.keep_clone {
        println!("xtask bench: the clone stays in {}", dir.display());
    } else if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("xtask bench: could not remove {}: {e}", dir.display());
    }
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => {
            Err(ExitCode::from(s.code().and_then(|c| u8::try_from(c).ok()).filter(|c| *c != 0).unwrap_or(1)))
        }
        Err(e) => {
            eprintln!("xtask bench: could not run cargo in the clone: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_lines_parse() {
        let t = TargetLine::parse(
            "target ipc::rtt_8b/typed_pipe: 1.120x the floor's time (target <= 1.150): met",
        )
        .unwrap();
        assert_eq!(
            (t.name.as_str(), t.value, t.shown.as_str(), t.target.as_str(), t.met),
            ("ipc::rtt_8b/typed_pipe", 1.12, "1.120x the floor's time", "<= 1.150", true)
        );
        let t = TargetLine::parse("target pool::map: 41234567 items/s (target >= 50000000): MISSED").unwrap();
        assert_eq!((t.value, t.met, t.target.as_str()), (41234567.0, false, ">= 50000000"));
        let t = TargetLine::parse(
            "target coroutine::spawn_await vs the fastest other (tokio): 0.250x (target <= 0.500): met",
        )
        .unwrap();
        assert_eq!(t.name, "coroutine::spawn_await vs the fastest other (tokio)");
        assert_eq!(TargetLine::parse("target practice: fun"), None);
        assert_eq!(TargetLine::parse("paired ipc: 1.0x"), None);
    }

    #[test]
    fn options_parse() {
        let args: Vec<String> =
            ["--runs", "3", "--save", "s.txt", "--bench", "ipc", "--", "--sample-size", "10"]
                .map(String::from)
                .into();
        let o = parse(&args).unwrap();
        assert_eq!(
            (o.runs, o.benches, o.extra),
            (3, vec!["ipc".to_owned()], vec!["--sample-size".into(), "10".into()])
        );
        assert_eq!(o.save, Some(PathBuf::from("s.txt")));
        assert!(parse(&["--runs".to_owned(), "0".to_owned()]).is_err());
        assert!(parse(&["--bogus".to_owned()]).is_err());
    }

    #[test]
    fn the_table_says_what_held_in_every_run() {
        let run = |n, value: f64, met| Run {
            n,
            date: format!("day {n}"),
            machine: String::new(),
            commit: String::new(),
            load_start: String::new(),
            load_end: String::new(),
            took: Duration::ZERO,
            benches: vec![BenchRun {
                name: "pool".into(),
                took: Duration::ZERO,
                ok: true,
                targets: vec![
                    TargetLine {
                        name: "pool::map".into(),
                        value,
                        shown: String::new(),
                        target: ">= 50000000".into(),
                        met,
                    },
                    TargetLine {
                        name: "pool::skew".into(),
                        value: 1.0,
                        shown: String::new(),
                        target: "<= 1.100".into(),
                        met: true,
                    },
                ],
            }],
        };
        let table = across_runs(&[run(1, 51e6, true), run(2, 49e6, false)]);
        assert!(table.contains("1 of 2 targets held in every run"), "{table}");
        let map = table.lines().find(|l| l.starts_with("pool::map")).unwrap();
        assert!(
            map.contains("51.00M") && map.contains("49.00M!") && map.ends_with("MISSED in 1 of 2"),
            "{map}"
        );
        assert!(table.lines().any(|l| l.starts_with("pool::skew") && l.ends_with("every run")), "{table}");
    }
}
