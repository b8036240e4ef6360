//! Shared pieces of mproc's criterion benchmarks: peer processes and the ratio report.
//!
//! Every benchmark measures its raw-syscall floor in the same run and reports the ratio, so
//! figures from a noisy machine still compare like with like.

pub mod netns;
pub mod sys;
pub use sys::{process_cpu_time, thread_cpu_time};

use std::fs;
use std::path::{Path, PathBuf};

/// Where criterion writes its results: `<target>/criterion`.
pub fn criterion_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("criterion")
}

/// Criterion as every bench here starts it: results in [`criterion_dir`], 0.5 s of warm-up,
/// 10,000 resamples (of criterion's default 100,000: they only narrow its confidence
/// intervals). Each bench adds its own measurement time and sample size, then
/// `configure_from_args()`.
pub fn criterion() -> criterion::Criterion {
    criterion::Criterion::default()
        .output_directory(&criterion_dir())
        .warm_up_time(std::time::Duration::from_millis(500))
        .nresamples(10_000)
}

static STARTED: std::sync::OnceLock<std::time::SystemTime> = std::sync::OnceLock::new();

/// Marks the start of this run: [`report`] only uses results written after it. Call first.
pub fn start_run() {
    STARTED.get_or_init(std::time::SystemTime::now);
}

/// Whether this is a measuring run (`cargo bench`), not `cargo test` running each bench once.
pub fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The median time in nanoseconds criterion measured for `group/id` in this run, if it ran.
pub fn median_ns(group: &str, id: &str) -> Option<f64> {
    let dir = criterion_dir().join(sanitize(group)).join(sanitize(id)).join("new");
    let file = dir.join("estimates.json");
    let written = fs::metadata(&file).and_then(|m| m.modified()).ok()?;
    if written < *STARTED.get()? {
        return None; // from an earlier run
    }
    let json = fs::read_to_string(file).ok()?;
    // {..,"median":{"confidence_interval":{...},"point_estimate":123.4,...},...}
    let median = &json[json.find("\"median\"")?..];
    let at = median.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    let rest = &median[at..];
    let end = rest.find([',', '}'])?;
    rest[..end].trim().parse().ok()
}

/// Criterion's directory name for an id: characters outside `[A-Za-z0-9_-.]` become `_`.
fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

/// Prints each `ids` entry of `group` as a ratio to `floor`, measured in the same run.
/// `lower_is_better` ratios are time ratios; otherwise throughput ratios (floor time / time).
pub fn report(group: &str, floor: &str, ids: &[&str], what: Ratio) {
    let Some(base) = median_ns(group, floor) else {
        return;
    };
    println!("\n{group}: ratios to {floor} ({base:.0} ns), same run");
    for id in ids {
        if let Some(t) = median_ns(group, id) {
            match what {
                Ratio::Time => println!("  {id:<24} {t:>12.0} ns   {:.3}x the floor's time", t / base),
                Ratio::Throughput => {
                    println!("  {id:<24} {t:>12.0} ns   {:.3}x the floor's throughput", base / t)
                }
            }
        }
    }
}

/// How [`report`] states a ratio.
#[derive(Debug, Clone, Copy)]
pub enum Ratio {
    /// Time over the floor's time: lower is better.
    Time,
    /// The floor's time over time: higher is better.
    Throughput,
}

/// Times `ours` against `floor` in alternating batches of `batch` calls, 31 rounds, and prints
/// the median ratio with its quartiles. Alternating cancels the slow drift of a shared,
/// noisy machine that separate measurements suffer from. `what` says what the ratio is of.
///
/// Returns the median ratio (`None` when not measuring: `cargo test` runs nothing here).
pub fn paired(name: &str, batch: usize, what: Ratio, floor: impl FnMut(), ours: impl FnMut()) -> Option<f64> {
    paired_rounds(name, batch, 31, what, floor, ours)
}

/// [`paired`] with `rounds` rounds (odd; at least 3), for operations that take long: the
/// median ratio, which it also prints. `None` when not measuring.
pub fn paired_rounds(
    name: &str,
    batch: usize,
    rounds: usize,
    what: Ratio,
    mut floor: impl FnMut(),
    mut ours: impl FnMut(),
) -> Option<f64> {
    if !measuring() {
        return None;
    }
    let time = |f: &mut dyn FnMut()| {
        let start = std::time::Instant::now();
        for _ in 0..batch {
            f();
        }
        start.elapsed().as_secs_f64()
    };
    // One unmeasured round of each to warm up.
    time(&mut floor);
    time(&mut ours);
    let mut ratios: Vec<f64> = (0..rounds)
        .map(|round| {
            let (f, o) = if round % 2 == 0 {
                let f = time(&mut floor);
                (f, time(&mut ours))
            } else {
                let o = time(&mut ours);
                (time(&mut floor), o)
            };
            match what {
                Ratio::Time => o / f,
                Ratio::Throughput => f / o,
            }
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let unit = match what {
        Ratio::Time => "time",
        Ratio::Throughput => "throughput",
    };
    let (q1, median, q3) = (ratios[rounds / 4], ratios[rounds / 2], ratios[3 * rounds / 4]);
    println!(
        "paired {name:<40} median {median:.3}x the floor's {unit} (quartiles {q1:.3}-{q3:.3}, {rounds} alternating rounds of {batch})"
    );
    Some(median)
}

/// [`paired`], timing each batch by the CPU time this thread and the batch's peer process
/// spent (`floor_peer` for the floor, `ours_peer` for ours) instead of the wall clock: what
/// the two ends of a message exchange cost, without the time slices other processes on the
/// machine get meanwhile. With both processes on one CPU, the wall time of an exchange on a
/// quiet machine is this sum.
pub fn paired_cpu(
    name: &str,
    batch: usize,
    what: Ratio,
    (floor_peer, mut floor): (u32, impl FnMut()),
    (ours_peer, mut ours): (u32, impl FnMut()),
) -> Option<f64> {
    if !measuring() {
        return None;
    }
    let cpu = |peer: u32| thread_cpu_time() + process_cpu_time(peer);
    let time = |peer: u32, f: &mut dyn FnMut()| {
        let start = cpu(peer);
        for _ in 0..batch {
            f();
        }
        (cpu(peer) - start).as_secs_f64()
    };
    time(floor_peer, &mut floor);
    time(ours_peer, &mut ours);
    let mut ratios: Vec<f64> = (0..31)
        .map(|round| {
            let (f, o) = if round % 2 == 0 {
                let f = time(floor_peer, &mut floor);
                (f, time(ours_peer, &mut ours))
            } else {
                let o = time(ours_peer, &mut ours);
                (time(floor_peer, &mut floor), o)
            };
            match what {
                Ratio::Time => o / f,
                Ratio::Throughput => f / o,
            }
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let unit = match what {
        Ratio::Time => "CPU time",
        Ratio::Throughput => "throughput per CPU second",
    };
    println!(
        "paired {name:<40} median {:.3}x the floor's {unit} (both processes; quartiles {:.3}-{:.3}, 31 alternating rounds of {batch})",
        ratios[15], ratios[7], ratios[23]
    );
    Some(ratios[15])
}

/// What a process has done so far that a message may cost: minor page faults (field 10 of
/// `/proc/PID/stat`) and `read`-family and `write`-family system calls (`syscr`, `syscw` of
/// `/proc/PID/io`; `sendmsg`/`recvmsg`/`poll` are not among them).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcCounts {
    /// Minor page faults.
    pub minflt: f64,
    /// `read(2)`, `readv(2)`, ... calls.
    pub reads: f64,
    /// `write(2)`, `writev(2)`, ... calls.
    pub writes: f64,
}

impl ProcCounts {
    /// The counts of process `pid` (this process: `std::process::id()`) so far.
    pub fn of(pid: u32) -> ProcCounts {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (in parentheses, which may hold spaces): state is
        // field 3, minflt field 10.
        let minflt = stat
            .rfind(')')
            .and_then(|at| stat[at + 2..].split(' ').nth(7))
            .and_then(|f| f.parse().ok())
            .unwrap_or(f64::NAN);
        let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        let field = |name: &str| -> f64 {
            io.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
                .unwrap_or(f64::NAN)
        };
        ProcCounts { minflt, reads: field("syscr"), writes: field("syscw") }
    }

    fn minus(self, other: ProcCounts) -> ProcCounts {
        ProcCounts {
            minflt: self.minflt - other.minflt,
            reads: self.reads - other.reads,
            writes: self.writes - other.writes,
        }
    }

    fn per(self, n: usize) -> ProcCounts {
        let n = n as f64;
        ProcCounts { minflt: self.minflt / n, reads: self.reads / n, writes: self.writes / n }
    }
}

/// Runs `f` `n` times (after `n / 10 + 1` uncounted calls) and prints what one call cost
/// this process and the peer process `peer`: faults, read and write system calls (net of
/// what reading the counters costs), and this thread's allocations as `allocations()`
/// counts them.
pub fn per_message(name: &str, n: usize, peer: u32, allocations: fn() -> u64, mut f: impl FnMut()) {
    if !measuring() {
        return;
    }
    (0..n / 10 + 1).for_each(|_| f());
    let me = std::process::id();
    let look = || (ProcCounts::of(me), ProcCounts::of(peer));
    let (a0, b0) = look();
    let (a1, b1) = look();
    let (cost_a, cost_b) = (a1.minus(a0), b1.minus(b0));
    let allocs = allocations();
    (0..n).for_each(|_| f());
    let allocs = allocations() - allocs;
    let (a2, b2) = look();
    let ours = a2.minus(a1).minus(cost_a).per(n);
    let theirs = b2.minus(b1).minus(cost_b).per(n);
    println!(
        "per message {name:<34} here: {:.2} reads {:.2} writes {:.2} faults {:.2} allocations; \
         peer: {:.2} reads {:.2} writes {:.2} faults",
        ours.reads,
        ours.writes,
        ours.minflt,
        allocs as f64 / n as f64,
        theirs.reads,
        theirs.writes,
        theirs.minflt
    );
}

/// A figure with the target it must meet, for [`report_targets`].
#[derive(Debug, Clone)]
pub struct Target {
    name: String,
    value: f64,
    bound: f64,
    /// The target is a ceiling (ratios to an ideal) rather than a floor (rates).
    at_most: bool,
    /// Printed after the value: what it is a ratio to, or a rate's unit.
    unit: String,
}

impl Target {
    /// `value` must be at most `bound` (a ratio to an ideal or a floor, say).
    pub fn at_most(name: impl Into<String>, value: f64, bound: f64, unit: impl Into<String>) -> Target {
        Target { name: name.into(), value, bound, at_most: true, unit: unit.into() }
    }

    /// `value` must be at least `bound` (a rate, say).
    pub fn at_least(name: impl Into<String>, value: f64, bound: f64, unit: impl Into<String>) -> Target {
        Target { name: name.into(), value, bound, at_most: false, unit: unit.into() }
    }

    /// Whether the figure meets its target.
    pub fn met(&self) -> bool {
        if self.at_most { self.value <= self.bound } else { self.value >= self.bound }
    }
}

/// Prints each figure beside its target, one line each, of the shape
/// `target NAME: VALUE UNIT (target OP BOUND): met` (or `: MISSED`), which `cargo xtask bench`
/// gathers into its summary (`xtask/src/bench.rs` parses it: keep `: ` out of names and units,
/// and keep each name the same from run to run, so the runs line up in its table).
pub fn report_targets(targets: &[Target]) {
    if targets.is_empty() {
        return;
    }
    println!();
    for t in targets {
        let op = if t.at_most { "<=" } else { ">=" };
        // Ratios with their decimals, rates (millions) without.
        let digits = if t.bound.abs() < 100.0 { 3 } else { 0 };
        println!(
            "target {}: {:.digits$}{} (target {op} {:.digits$}): {}",
            t.name,
            t.value,
            t.unit,
            t.bound,
            if t.met() { "met" } else { "MISSED" }
        );
    }
}

/// Reads exactly `buf.len()` bytes from `fd` (a bare pipe or socket, for the floors); false at
/// end of file.
pub fn read_exact(fd: std::os::fd::BorrowedFd<'_>, mut buf: &mut [u8]) -> bool {
    while !buf.is_empty() {
        match rustix::io::read(fd, &mut *buf) {
            Ok(0) => return false,
            Ok(n) => buf = &mut buf[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    true
}

/// Writes all of `buf` to `fd` (a bare pipe or socket, for the floors).
pub fn write_all(fd: std::os::fd::BorrowedFd<'_>, mut buf: &[u8]) {
    while !buf.is_empty() {
        match rustix::io::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("write: {e}"),
        }
    }
}
