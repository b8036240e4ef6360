//! A remote worker: this program, started anywhere with the pool's address and key in its
//! environment (`cluster.rs`'s `Launcher`), connects to the pool and serves its tasks until
//! the pool ends, then exits. [`crate::init`] makes it one.
//!
//! It shares no memory with the pool, so it claims tasks by message: it runs a task only once
//! the pool has granted its position in the stream (`Claim` / `Grant`; the pool may take back
//! any it has not granted, with `Revoke`, and the worker drops them): by default it claims
//! the next only once the last one's outcome is sent, and with the pool's
//! `remote_claim_ahead` it asks ahead by about two round trips of short tasks so that they do
//! not wait for grants, sending outcomes at least every millisecond. It heartbeats when it
//! has sent nothing else for a heartbeat interval, and leaves (code 3) if it hears nothing
//! from the pool for the pool's silence limit, or if the pool takes nothing it sends for that
//! long (a pool whose handler is stuck while its writer heartbeats, or a host gone without a
//! FIN): a pool that ended, crashed, stopped reading or can no longer be reached never leaves
//! it behind. Looking up the pool's name and connecting share one deadline,
//! [`CONNECT_TIMEOUT`] from the start (a resolver that does not answer holds the worker no
//! longer than a host that does not), the handshake and the welcome at most as long again
//! each: a worker that cannot join says why and leaves (code 2).

use std::collections::VecDeque;
use std::net::ToSocketAddrs;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use mproc_process::ipc::{self, Client, Connection};

use crate::build_id;
use crate::cluster::{ADDRESS_ENV, AUTHKEY_ENV, unhex};
use crate::pool::{MAX_HEARTBEAT, MAX_SILENCE, MIN_HEARTBEAT};
use crate::remote::send_within;
use crate::wire::{self, FromWorker, Hello, ToWorker, WireTask};
use crate::worker::{run, within_limit};

/// How long joining may take: looking up the pool's name and connecting together; then the
/// authkey handshake, and the welcome, each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// A worker sends what it has finished at least this often.
const FLUSH_AFTER: Duration = Duration::from_millis(1);
/// The most tasks a worker asks for ahead of the one it runs.
const MAX_AHEAD: u64 = 4096;

/// The exit code of a worker that could not join the pool (no connection, a wrong authkey,
/// refused at the handshake).
pub(crate) const EXIT_NOT_JOINED: i32 = 2;
/// The exit code of a worker that stopped hearing from its pool.
pub(crate) const EXIT_POOL_SILENT: i32 = 3;
/// The exit code of a worker whose initializer failed.
pub(crate) const EXIT_INIT_FAILED: i32 = 4;

/// If this process was started as a remote worker, serves the pool and exits; else returns.
pub(crate) fn serve_if_asked() {
    let Some(address) = std::env::var_os(ADDRESS_ENV) else { return };
    let authkey = std::env::var_os(AUTHKEY_ENV);
    mproc_process::__private::remove_env(&[ADDRESS_ENV, AUTHKEY_ENV]);
    let address = address.to_string_lossy().into_owned();
    let authkey = match authkey.as_ref().map(|k| unhex(&k.to_string_lossy())) {
        Some(Some(key)) => key,
        Some(None) => leave(EXIT_NOT_JOINED, &format!("{AUTHKEY_ENV} is not hex")),
        // The default key of a pool is its process's: a worker started by it has it too.
        None => mproc_process::current_process().authkey().to_vec(),
    };
    let code = serve(&address, &authkey);
    std::process::exit(code)
}

/// Says why on standard error and exits with `code`.
fn leave(code: i32, why: &str) -> ! {
    eprintln!("mproc-pool worker (pid {}): {why}", std::process::id());
    std::process::exit(code)
}

/// This host's name: Slurm's node name if there is one, else the kernel's.
fn host_name() -> String {
    std::env::var("SLURMD_NODENAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_or_else(|_| "?".into(), |h| h.trim().to_string())
    })
}

/// Connects to the pool at `address`, joins it and serves it; the exit code.
fn serve(address: &str, authkey: &[u8]) -> i32 {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let resolved = match resolve(address, CONNECT_TIMEOUT) {
        Ok(resolved) => resolved,
        Err(why) => leave(EXIT_NOT_JOINED, &format!("cannot join the pool at {address}: {why}")),
    };
    let mut conn: Connection<FromWorker, ToWorker> = match connect(&resolved, authkey, deadline) {
        Ok(conn) => conn,
        Err(e) => leave(EXIT_NOT_JOINED, &format!("cannot join the pool at {address}: {e}")),
    };
    if let Err(e) = conn.send(&FromWorker::Hello(hello())) {
        leave(EXIT_NOT_JOINED, &format!("cannot join the pool at {address}: {e}"));
    }
    let welcome = match conn.recv_timeout(CONNECT_TIMEOUT) {
        Ok(ToWorker::Welcome(welcome)) => welcome,
        Ok(ToWorker::Refused(why)) => leave(EXIT_NOT_JOINED, &format!("the pool at {address} {why}")),
        Ok(other) => leave(EXIT_NOT_JOINED, &format!("the pool at {address} answered {other:?}")),
        Err(e) => leave(EXIT_NOT_JOINED, &format!("the pool at {address} did not welcome us: {e}")),
    };
    let Ok(family) = <[u8; 48]>::try_from(&welcome.family[..]) else {
        leave(
            EXIT_NOT_JOINED,
            &format!("the pool at {address} sent {} bytes of keys, not 48", welcome.family.len()),
        )
    };
    // Before any thread starts: the worker becomes a process of the pool's family.
    mproc_process::__private::join_family(&family, welcome.name.clone(), welcome.pool.clone());
    let limit = welcome.max_message_size;
    conn.set_max_message_size(wire::frame_limit(limit));
    let (heartbeat, silence) = match timing(&welcome) {
        Ok(timing) => timing,
        Err(why) => leave(EXIT_NOT_JOINED, &format!("the pool at {address} broke the protocol: {why}")),
    };
    let name = welcome.name;
    if let Some(init) = welcome.init
        && let Err(failure) = run(init)
    {
        let _ = conn.send(&FromWorker::InitFailed(failure.cut_to(limit)));
        return EXIT_INIT_FAILED;
    }
    let conn = Arc::new(conn);
    // The reader: what the pool sends, to the main thread; the process ends when the pool
    // does (end of stream) or falls silent, even in the middle of a task.
    let (inbox_tx, inbox) = mpsc::channel::<ToWorker>();
    let reader = Arc::clone(&conn);
    let reader_name = name.clone();
    let pool = address.to_string();
    let spawned = std::thread::Builder::new().name("mproc-pool-reader".into()).spawn(move || {
        loop {
            match reader.recv_timeout(silence) {
                Ok(ToWorker::Heartbeat) => {}
                Ok(message) => {
                    let exit = matches!(message, ToWorker::Exit);
                    if inbox_tx.send(message).is_err() || exit {
                        return;
                    }
                }
                Err(ipc::Error::Timeout) => leave(
                    EXIT_POOL_SILENT,
                    &format!(
                        "worker {reader_name:?}: no word from the pool at {pool} for {silence:?}: leaving"
                    ),
                ),
                Err(ipc::Error::Closed) => std::process::exit(0),
                Err(e) => {
                    leave(EXIT_POOL_SILENT, &format!("worker {reader_name:?}: the pool at {pool}: {e}"))
                }
            }
        }
    });
    // The writer: what the main thread sends, and a heartbeat when it has sent nothing. A
    // pool that takes nothing of it for the silence limit (its handler stuck while its writer
    // heartbeats, or its host gone without a FIN) is given up as a silent one is: what this
    // worker finishes could never reach it.
    let (outbox, outgoing) = mpsc::channel::<FromWorker>();
    let writer = Arc::clone(&conn);
    let writer_name = name.clone();
    let pool = address.to_string();
    let spawned = spawned.and_then(|_| {
        std::thread::Builder::new().name("mproc-pool-writer".into()).spawn(move || {
            loop {
                let message = match outgoing.recv_timeout(heartbeat) {
                    Ok(message) => message,
                    Err(mpsc::RecvTimeoutError::Timeout) => FromWorker::Heartbeat,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                };
                match send_within(&writer, &message, silence) {
                    Ok(()) => {}
                    Err(ipc::Error::Timeout) => leave(
                        EXIT_POOL_SILENT,
                        &format!(
                            "worker {writer_name:?}: the pool at {pool} took nothing we sent for {silence:?} \
                             (it stopped reading: its handler is stuck, or its host cannot be reached): \
                             leaving"
                        ),
                    ),
                    // A failed send: the reader sees the end of the stream.
                    Err(_) => return,
                }
            }
        })
    });
    if let Err(e) = spawned {
        leave(EXIT_NOT_JOINED, &format!("cannot start a thread: {e}"));
    }
    let mut stream = Stream::new(outbox, limit);
    stream.claim_ahead = welcome.claim_ahead;
    stream.serve(&inbox);
    // Let the writer send what is left, then leave.
    drop(stream);
    0
}

/// The socket addresses of `address` (`host:port`), looked up within `timeout`: the lookup
/// runs on a thread of its own, left behind if it is slower (a resolver that does not
/// answer can take minutes, and the worker then leaves). Why not, said for the user.
fn resolve(address: &str, timeout: Duration) -> Result<Vec<std::net::SocketAddr>, String> {
    // An IP address and port needs no lookup (and no thread).
    if let Ok(addr) = address.parse::<std::net::SocketAddr>() {
        return Ok(vec![addr]);
    }
    let (tx, rx) = mpsc::channel();
    let name = address.to_string();
    std::thread::Builder::new()
        .name("mproc-pool-resolve".into())
        .spawn(move || {
            let _ = tx.send(name.to_socket_addrs().map(Iterator::collect::<Vec<_>>));
        })
        .map_err(|e| format!("cannot start a thread to look up its name: {e}"))?;
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    match rx.recv_timeout(timeout) {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(_)) => Err(format!("the name {host:?} has no address (check the name)")),
        Ok(Err(e)) => {
            Err(format!("cannot look up the name {host:?}: {e} (check the name, and this host's DNS)"))
        }
        Err(_) => Err(format!(
            "the name {host:?} did not resolve within {timeout:?} (check the name, and this host's DNS: \
             /etc/resolv.conf; or give the workers the pool's IP address, `Launcher::connect_to`)"
        )),
    }
}

/// A connection to the first of `addrs` that takes one, authenticated with `authkey`, by
/// `deadline`; the last one's error if none does (the first past connecting, an
/// authentication failure say, at once: another address of the pool would say the same).
fn connect(
    addrs: &[std::net::SocketAddr],
    authkey: &[u8],
    deadline: Instant,
) -> Result<Connection<FromWorker, ToWorker>, ipc::Error> {
    let mut last = ipc::Error::Timeout;
    for &addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match Client::builder(addr).authkey(authkey).handshake_timeout(left).connect() {
            Ok(conn) => return Ok(conn),
            Err(e @ ipc::Error::Io(_)) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// The heartbeat interval and the silence limit a welcome gives, if they are within what a
/// pool may give (`PoolBuilder::heartbeat`): a heartbeat of zero would be a busy loop, one of
/// centuries no heartbeat at all.
fn timing(welcome: &wire::Welcome) -> Result<(Duration, Duration), String> {
    let (heartbeat, silence) =
        (Duration::from_nanos(welcome.heartbeat_ns), Duration::from_nanos(welcome.silence_ns));
    if !(MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(&heartbeat) {
        return Err(format!(
            "its heartbeat interval, {heartbeat:?}, is not within {MIN_HEARTBEAT:?} and {MAX_HEARTBEAT:?}"
        ));
    }
    if !(heartbeat..=MAX_SILENCE).contains(&silence) {
        return Err(format!(
            "its silence limit, {silence:?}, is not within its heartbeat interval ({heartbeat:?}) and \
             {MAX_SILENCE:?}"
        ));
    }
    Ok((heartbeat, silence))
}

/// Who this worker is.
fn hello() -> Hello {
    Hello {
        protocol: wire::PROTOCOL,
        build: build_id::this_build().to_string(),
        program: build_id::this_program(),
        host: host_name(),
        pid: std::process::id(),
        rank: std::env::var("SLURM_PROCID").ok().and_then(|r| r.parse().ok()),
    }
}

/// This process's `Hello`, encoded (`__private::hello_bytes`).
pub(crate) fn hello_bytes() -> Vec<u8> {
    ipc::encode(&FromWorker::Hello(hello())).expect("a hello encodes")
}

/// A `Heartbeat`, encoded (`__private::heartbeat_bytes`).
pub(crate) fn heartbeat_bytes() -> Vec<u8> {
    ipc::encode(&FromWorker::Heartbeat).expect("a heartbeat encodes")
}

/// A `Welcome` from this process as a pool, with these heartbeat settings, encoded
/// (`__private::welcome_bytes`).
pub(crate) fn welcome_bytes(heartbeat_ns: u64, silence_ns: u64) -> Vec<u8> {
    let me = mproc_process::current_process();
    let welcome = wire::Welcome {
        name: "a test's worker".into(),
        pool: (me.pid(), me.name().to_string()),
        family: mproc_process::__private::family_keys().to_vec(),
        init: None,
        max_message_size: 1 << 20,
        heartbeat_ns,
        silence_ns,
        claim_ahead: false,
    };
    ipc::encode(&ToWorker::Welcome(Box::new(welcome))).expect("a welcome encodes")
}

/// A `Batch` of one task, `f(arg)` with id `id`, as a pool sends it, encoded
/// (`__private::apply_bytes`).
pub(crate) fn apply_bytes<A, R>(f: fn(A) -> R, arg: &A, id: u64) -> Vec<u8>
where
    A: serde::Serialize + serde::de::DeserializeOwned + 'static,
    R: serde::Serialize + 'static,
{
    let input = wire::input(f, arg).expect("the arguments encode");
    let task = WireTask { id, driver: wire::driver_ref(wire::apply_driver::<A, R>), input };
    ipc::encode(&ToWorker::Batch(vec![task])).expect("a batch encodes")
}

/// A pool's `Grant` of the positions up to `through`, encoded (`__private::grant_bytes`).
pub(crate) fn grant_bytes(through: u64) -> Vec<u8> {
    ipc::encode(&ToWorker::Grant(through)).expect("a grant encodes")
}

/// A pool's `Heartbeat`, encoded (`__private::pool_heartbeat_bytes`).
pub(crate) fn pool_heartbeat_bytes() -> Vec<u8> {
    ipc::encode(&ToWorker::Heartbeat).expect("a heartbeat encodes")
}

/// The worker's view of its stream of tasks.
struct Stream {
    outbox: mpsc::Sender<FromWorker>,
    /// The tasks received and not started, each with its position (in order; those the pool
    /// revoked leave holes).
    queue: VecDeque<(u64, WireTask)>,
    /// Positions: of the last task received, the last granted, the last asked for.
    received: u64,
    granted: u64,
    asked: u64,
    asked_at: Instant,
    /// A claim's round trip, nanoseconds (0: not measured yet).
    rtt_ns: f64,
    /// Recent time per task, nanoseconds (0: not measured yet).
    task_ns: f64,
    /// `Exit` came: leave once the queue is done.
    exiting: bool,
    /// Whether short tasks are claimed ahead (the pool's `remote_claim_ahead`).
    claim_ahead: bool,
    /// Outcomes finished and not sent, their bytes, the time spent running them, since
    /// when.
    unsent: Vec<(u64, wire::Outcome)>,
    bytes: usize,
    busy_ns: u64,
    since: Instant,
    limit: usize,
}

impl Stream {
    fn new(outbox: mpsc::Sender<FromWorker>, limit: usize) -> Stream {
        let now = Instant::now();
        Stream {
            outbox,
            queue: VecDeque::new(),
            received: 0,
            granted: 0,
            asked: 0,
            asked_at: now,
            rtt_ns: 0.0,
            task_ns: 0.0,
            exiting: false,
            claim_ahead: false,
            unsent: Vec::new(),
            bytes: 0,
            busy_ns: 0,
            since: now,
            limit,
        }
    }

    /// Runs the stream until `Exit` (or the reader ends).
    fn serve(&mut self, inbox: &mpsc::Receiver<ToWorker>) {
        loop {
            loop {
                match inbox.try_recv() {
                    Ok(message) => self.take(message),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            if let Some(&(position, _)) = self.queue.front()
                && position <= self.granted
                && let Some((_, task)) = self.queue.pop_front()
            {
                // Ask for the next ones while this one runs.
                self.ask_running();
                let start = Instant::now();
                let id = task.id;
                let outcome = run(task);
                let ns = start.elapsed().as_nanos() as f64;
                self.busy_ns += ns as u64;
                self.task_ns = if self.task_ns == 0.0 { ns } else { 0.8 * self.task_ns + 0.2 * ns };
                self.push(id, outcome);
                if self.since.elapsed() >= FLUSH_AFTER || !self.may_run_next() {
                    self.flush();
                }
                continue;
            }
            if self.exiting && self.queue.is_empty() {
                self.flush();
                return;
            }
            self.ask_idle();
            self.flush();
            match inbox.recv() {
                Ok(message) => self.take(message),
                Err(_) => return,
            }
        }
    }

    fn take(&mut self, message: ToWorker) {
        match message {
            ToWorker::Batch(tasks) => {
                for task in tasks {
                    self.received += 1;
                    self.queue.push_back((self.received, task));
                }
            }
            // The pool took back the tasks past `at` it had sent so far (it granted none of
            // them: it never revokes a granted one, and a pool that did would find the
            // worker running it anyway, never a task dropped after it started).
            ToWorker::Revoke(at) => {
                let keep = at.max(self.granted);
                self.queue.retain(|&(position, _)| position <= keep);
            }
            ToWorker::Grant(through) => {
                if through >= self.asked {
                    let ns = self.asked_at.elapsed().as_nanos() as f64;
                    self.rtt_ns = if self.rtt_ns == 0.0 { ns } else { 0.8 * self.rtt_ns + 0.2 * ns };
                }
                self.granted = self.granted.max(through);
            }
            ToWorker::Exit => self.exiting = true,
            // `Resume` is for a local worker's fence (a remote one is sent `Revoke`).
            ToWorker::Resume | ToWorker::Heartbeat | ToWorker::Welcome(_) | ToWorker::Refused(_) => {}
        }
    }

    /// Whether the next task received may run now (it was granted).
    fn may_run_next(&self) -> bool {
        self.queue.front().is_some_and(|&(position, _)| position <= self.granted)
    }

    /// How many tasks to claim beyond the next one needed: none unless claiming ahead is on;
    /// then about two round trips of work (none until both are measured, or for tasks
    /// longer than that).
    fn ahead(&self) -> u64 {
        if self.claim_ahead && self.task_ns > 0.0 && self.rtt_ns > 0.0 {
            ((2.0 * self.rtt_ns / self.task_ns) as u64).min(MAX_AHEAD)
        } else {
            0
        }
    }

    /// While a task runs: asks for the tasks after it that about two round trips of work
    /// cover, if any.
    fn ask_running(&mut self) {
        self.ask(self.ahead());
    }

    /// With nothing granted to run: asks for the next task, and those after it that about
    /// two round trips of work cover.
    fn ask_idle(&mut self) {
        self.ask(1 + self.ahead());
    }

    /// Claims the next `n` tasks of the queue (those received), unless asked already.
    fn ask(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        let Some(&(want, _)) = self.queue.get(n as usize - 1).or(self.queue.back()) else { return };
        if want > self.asked && want > self.granted {
            self.asked = want;
            self.asked_at = Instant::now();
            let _ = self.outbox.send(FromWorker::Claim(want));
        }
    }

    fn push(&mut self, id: u64, outcome: wire::Outcome) {
        // Over TCP every value goes inline: the limit holds for all.
        let (outcome, size) = within_limit(outcome, self.limit, false);
        if !self.unsent.is_empty() && self.bytes + size > self.limit {
            self.flush();
        }
        self.unsent.push((id, outcome));
        self.bytes += size;
    }

    fn flush(&mut self) {
        if self.unsent.is_empty() {
            return;
        }
        let busy_ns = std::mem::take(&mut self.busy_ns);
        let _ = self.outbox.send(FromWorker::Results { outcomes: std::mem::take(&mut self.unsent), busy_ns });
        self.bytes = 0;
        self.since = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mproc_process::ipc::Carried;

    fn tasks(ids: std::ops::Range<u64>) -> ToWorker {
        fn nothing(_: Carried) -> wire::Outcome {
            Ok(wire::Bytes::default())
        }
        ToWorker::Batch(
            ids.map(|id| WireTask { id, driver: wire::driver_ref(nothing), input: Carried::default() })
                .collect(),
        )
    }

    fn claims(out: &mpsc::Receiver<FromWorker>) -> Vec<u64> {
        out.try_iter()
            .filter_map(|m| match m {
                FromWorker::Claim(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// With no measure of its tasks yet, or tasks longer than two round trips, a worker
    /// claims one task at a time: the one it is about to run, never the next while it runs
    /// one (a lost worker then fails only the task it was running).
    #[test]
    fn long_tasks_are_claimed_one_at_a_time() {
        let (outbox, out) = mpsc::channel();
        let mut stream = Stream::new(outbox, 1 << 20);
        stream.take(tasks(1..4));
        stream.ask_idle();
        assert_eq!(claims(&out), [1], "only the first");
        stream.take(ToWorker::Grant(1));
        // Runs task 1 (long: 10 round trips).
        assert!(stream.may_run_next());
        stream.queue.pop_front();
        stream.rtt_ns = 1_000.0;
        stream.task_ns = 10_000.0;
        stream.ask_running();
        assert_eq!(claims(&out), Vec::<u64>::new(), "nothing more while it runs");
        stream.ask_idle();
        assert_eq!(claims(&out), [2], "the next once it is done");
    }

    /// Short tasks are claimed ahead, about two round trips of work.
    #[test]
    fn short_tasks_are_claimed_two_round_trips_ahead() {
        let (outbox, out) = mpsc::channel();
        let mut stream = Stream::new(outbox, 1 << 20);
        stream.claim_ahead = true;
        stream.take(tasks(1..100));
        stream.queue.pop_front();
        stream.granted = 1;
        stream.asked = 1;
        stream.rtt_ns = 10_000.0;
        stream.task_ns = 1_000.0;
        stream.ask_running();
        assert_eq!(claims(&out), [21], "task 1 runs, 20 tasks (two round trips) ahead");
    }

    /// A `Revoke` drops the tasks past its position received before it, and no later grant
    /// lets them run (a claim the pool read after its `Revoke` covers only these holes);
    /// the tasks sent after it take the positions after the last one sent.
    #[test]
    fn revoked_tasks_are_dropped_and_positions_go_on() {
        let (outbox, out) = mpsc::channel();
        let mut stream = Stream::new(outbox, 1 << 20);
        stream.take(tasks(1..6)); // positions 1..=5
        stream.take(ToWorker::Grant(2));
        stream.queue.pop_front(); // runs task 1
        stream.take(ToWorker::Revoke(2));
        assert_eq!(stream.queue.iter().map(|(p, t)| (*p, t.id)).collect::<Vec<_>>(), [(2, 2)]);
        stream.queue.pop_front(); // runs task 2
        stream.take(tasks(10..12)); // positions 6 and 7
        assert!(!stream.may_run_next(), "not granted yet");
        // A grant that answers a claim made before the revoke: it covers the holes only.
        stream.take(ToWorker::Grant(4));
        assert!(!stream.may_run_next(), "position 6 is past the grant");
        stream.ask_idle();
        assert_eq!(claims(&out), [6], "the next task's position");
        stream.take(ToWorker::Grant(6));
        assert!(stream.may_run_next());
        assert_eq!(stream.queue.front().map(|(_, t)| t.id), Some(10));
    }

    /// Unless claiming ahead is on, even short tasks are claimed one at a time.
    #[test]
    fn without_claiming_ahead_short_tasks_are_claimed_one_at_a_time() {
        let (outbox, out) = mpsc::channel();
        let mut stream = Stream::new(outbox, 1 << 20);
        stream.take(tasks(1..100));
        stream.queue.pop_front();
        stream.granted = 1;
        stream.asked = 1;
        stream.rtt_ns = 10_000.0;
        stream.task_ns = 1_000.0;
        stream.ask_running();
        assert_eq!(claims(&out), Vec::<u64>::new(), "nothing while task 1 runs");
        stream.ask_idle();
        assert_eq!(claims(&out), [2], "the next once it is done");
    }
}
