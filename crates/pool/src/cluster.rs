//! The pool's side of remote workers: the listener thread that takes them in (the authkey
//! handshake, then the build check), and the [`Launcher`] that says how to start them.
//!
//! The worker's side is `networker.rs`; the protocol is in `ARCHITECTURE.md`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mproc_process::ipc::{self, Address, Connection, Incoming, Listener, Receiver, Waitable};

use crate::build_id;
use crate::error::{Error, Result};
use crate::remote::{Worker, send_within};
use crate::shared::Shared;
use crate::wire::{self, FromWorker, Hello, ToWorker, Welcome, WireTask};

/// The environment variable that holds the pool's address: its presence makes
/// `mproc_pool::init` serve as a remote worker.
pub const ADDRESS_ENV: &str = "MPROC_POOL_ADDR";
/// The environment variable that holds the pool's authkey, in hex.
pub const AUTHKEY_ENV: &str = "MPROC_POOL_AUTHKEY";

/// How long a connected worker has to say who it is, and to take something of its welcome
/// (or refusal) each time the pool waits for it to.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a `Hello` may take.
const HELLO_BYTES: usize = 64 << 10;

/// How the pool takes remote workers (its builder's `listen` and friends).
#[derive(Debug, Clone)]
pub(crate) struct RemoteConfig {
    pub(crate) heartbeat: Duration,
    pub(crate) silence: Duration,
    /// How long tasks wait for a worker when the pool has none (no local ones, no remote one
    /// connected) before they fail.
    pub(crate) worker_wait: Duration,
    /// Whether workers claim short tasks ahead of the one they run (`remote_claim_ahead`).
    pub(crate) claim_ahead: bool,
}

/// What the pool knows of the remote workers that came (for `Pool::wait_for_workers`).
#[derive(Default)]
pub(crate) struct Arrivals {
    /// Workers taken in, not yet handed to the handler.
    pub(crate) new: Vec<Worker>,
    /// How many were taken in, in all.
    pub(crate) joined: usize,
    /// Why each refused connection was refused (the first [`MAX_REASONS`]).
    pub(crate) refused: Vec<String>,
    /// How many more were refused.
    pub(crate) more_refused: usize,
    /// The handler has ended: a worker admitted now is sent away.
    pub(crate) closed: bool,
}

/// How many reasons for refusals the pool keeps (a flood of bad connections must not grow
/// its memory without bound); the rest are counted.
pub(crate) const MAX_REASONS: usize = 64;

impl Arrivals {
    /// Records that a connection was refused, and why.
    pub(crate) fn refuse(&mut self, why: String) {
        if self.refused.len() < MAX_REASONS {
            self.refused.push(why);
        } else {
            self.more_refused += 1;
        }
    }

    /// Why connections were refused: the reasons kept, and how many more there were.
    pub(crate) fn reasons(&self) -> Vec<String> {
        let mut reasons = self.refused.clone();
        if self.more_refused > 0 {
            reasons.push(format!("{} more connection(s) refused", self.more_refused));
        }
        reasons
    }
}

/// How many connections the pool admits at once (the authkey handshake, the hello, the
/// welcome), each on a thread of its own with its deadlines; more wait in the kernel's
/// backlog until one is done. A flood of silent clients holds at most this many threads and
/// sockets, and only for the deadlines.
pub(crate) const MAX_ADMITTING: usize = 64;

/// How long the listener waits before it accepts again after accepting failed for want of
/// resources (no fd, no memory): it must not spin on a listener that stays readable.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of `hex`, or `None` if it is not hex.
pub(crate) fn unhex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

/// A connection being admitted on a thread of its own.
struct Admitting {
    /// A duplicate of its socket, to shut it (failing its handshake at once) when the pool
    /// ends; `None` if there was no fd to spare for one.
    socket: Option<OwnedFd>,
    thread: std::thread::JoinHandle<()>,
}

/// Sends its number on the listener thread's pipe when dropped: admission `n` is over.
struct Done(Arc<ipc::Sender<u64>>, u64);

impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.0.send(&self.1);
    }
}

/// Logs why a connection was refused and records it, once.
fn refuse(shared: &Shared, why: String) {
    log::error!("mproc-pool: {why}");
    shared.arrivals.lock().refuse(why);
    shared.joined.notify_all();
}

/// The pipe on which each admission's thread says its number as its last act. Made by the
/// pool's builder before the listener thread starts (and passed to [`listen`]), so that a
/// process short of fds fails `build` instead of leaving a listener that never listens.
pub(crate) type DonePipe = (Receiver<u64>, ipc::Sender<u64>);

/// The listener thread: takes in workers until `stop` says the pool has ended. Each connection
/// is admitted on a thread of its own, at most [`MAX_ADMITTING`] at once: a client that
/// connects and says nothing holds up no other.
pub(crate) fn listen(listener: Listener, shared: Arc<Shared>, stop: Receiver<()>, (done, done_tx): DonePipe) {
    let done_tx = Arc::new(done_tx);
    let mut admitting: HashMap<u64, Admitting> = HashMap::new();
    let mut n = 0u64;
    // Accepting failed for want of resources (said once until it works again): back off.
    let mut starved = false;
    loop {
        let room = admitting.len() < MAX_ADMITTING;
        let mut sources: Vec<&dyn Waitable> = vec![&stop, &done];
        if room && !starved {
            sources.push(&listener);
        }
        let ready = match ipc::wait(&sources, starved.then_some(ACCEPT_BACKOFF)) {
            Ok(ready) => ready,
            Err(e) => {
                log::error!("mproc-pool: waiting for remote workers failed: {e}");
                break;
            }
        };
        if ready.contains(&0) {
            break;
        }
        while let Ok(Some(k)) = done.try_recv() {
            // Its thread is ending: a slot for the next connection.
            if let Some(a) = admitting.remove(&k) {
                let _ = a.thread.join();
            }
        }
        let room = admitting.len() < MAX_ADMITTING;
        if !room || !(starved || ready.contains(&2)) {
            continue;
        }
        // Take what has arrived, up to the bound; never wait here (the stop pipe would go
        // unwatched).
        while admitting.len() < MAX_ADMITTING {
            let incoming = match listener.try_accept_incoming::<ToWorker, FromWorker>() {
                Ok(Some(incoming)) => incoming,
                Ok(None) => break,
                Err(e) => {
                    if !starved {
                        refuse(&shared, format!("cannot accept a connection at {}: {e}", listener.address()));
                    }
                    starved = true;
                    break;
                }
            };
            starved = false;
            n += 1;
            let socket = incoming.as_fd().try_clone_to_owned().ok();
            let (ours, done_tx) = (Arc::clone(&shared), Arc::clone(&done_tx));
            let spawned = std::thread::Builder::new().name("mproc-pool-admit".into()).spawn(move || {
                // Said as the thread ends, even by a panic: the slot is never lost.
                let _done = Done(done_tx, n);
                admit_one(incoming, &ours, n);
            });
            match spawned {
                Ok(thread) => {
                    admitting.insert(n, Admitting { socket, thread });
                }
                Err(e) => {
                    // The connection was dropped with the closure: closed.
                    refuse(&shared, format!("cannot admit a connection: no thread for it: {e}"));
                    starved = true;
                    break;
                }
            }
        }
    }
    // The pool has ended: fail the handshakes in progress now, and let their threads end.
    for a in admitting.values() {
        if let Some(socket) = &a.socket {
            let _ = rustix::net::shutdown(socket, rustix::net::Shutdown::Both);
        }
    }
    for (_, a) in admitting {
        let _ = a.thread.join();
    }
}

/// Admits one connection: authenticates it, reads its hello, welcomes it and hands the worker
/// to the handler; or refuses it, saying why once.
fn admit_one(incoming: Incoming<ToWorker, FromWorker>, shared: &Shared, n: u64) {
    let from = peer(&incoming);
    let admitted = match incoming.authenticate() {
        Ok(conn) => admit(conn, shared, &from, n),
        Err(e) => Err(format!("a connection from {from} was refused: {e}")),
    };
    let worker = match admitted {
        Ok(worker) => worker,
        Err(why) => return refuse(shared, why),
    };
    let mut arrivals = shared.arrivals.lock();
    if arrivals.closed {
        drop(arrivals);
        log::info!("mproc-pool: remote worker {:?} came as the pool ended: sent away", worker.name);
        let _ = worker.outbox.send(ToWorker::Exit);
        return;
    }
    log::info!("mproc-pool: remote worker {:?} (pid {}) joined", worker.name, worker.pid);
    arrivals.new.push(worker);
    arrivals.joined += 1;
    drop(arrivals);
    shared.joined.notify_all();
    shared.wake();
}

/// The address of the peer connected on `socket`, for names.
fn peer(socket: &impl AsFd) -> String {
    match rustix::net::getpeername(socket) {
        Ok(Some(addr)) => {
            std::net::SocketAddr::try_from(addr).map_or_else(|_| "?".into(), |a| a.ip().to_string())
        }
        Ok(None) => "?".into(),
        Err(e) => format!("? ({e})"),
    }
}

/// Reads a connected worker's `Hello`, checks its build, welcomes it: the worker, or why not.
fn admit(
    mut conn: Connection<ToWorker, FromWorker>,
    shared: &Shared,
    from: &str,
    n: u64,
) -> Result<Worker, String> {
    let config = &shared.config;
    let remote = config.remote.as_ref().expect("a listening pool has its remote settings");
    conn.set_max_message_size(HELLO_BYTES);
    let hello = match conn.recv_timeout(HELLO_TIMEOUT) {
        Ok(FromWorker::Hello(hello)) => hello,
        Ok(other) => return Err(format!("a worker from {from} began with {other:?}, not its hello")),
        Err(e) => return Err(format!("a worker from {from} did not say who it is: {e}")),
    };
    let Hello { protocol, build, program, host, pid, rank } = &hello;
    let refuse = |why: String| {
        let _ = send_within(&conn, &ToWorker::Refused(why.clone()), HELLO_TIMEOUT);
        Err(why)
    };
    if *protocol != wire::PROTOCOL {
        return refuse(format!(
            "refused the worker from {from} (pid {pid} on {host:?}): it speaks protocol {protocol}, \
             the pool {}",
            wire::PROTOCOL
        ));
    }
    let ours = build_id::this_build();
    if build != ours {
        return refuse(format!(
            "refused the worker from {from} (pid {pid} on {host:?}): it runs {program} built as {build}, \
             the pool runs {} built as {ours}; a remote worker must be the pool's own build",
            build_id::this_program()
        ));
    }
    if shared.queue.lock().finished {
        return refuse("the pool has ended".into());
    }
    let rank = rank.map(|r| format!(", rank {r}")).unwrap_or_default();
    let name = format!("RemoteWorker-{n}@{host} ({from}{rank})");
    let init =
        config.init.as_ref().map(|(driver, input)| WireTask { id: 0, driver: *driver, input: input.clone() });
    let me = mproc_process::current_process();
    let welcome = Welcome {
        name: name.clone(),
        pool: (me.pid(), me.name().to_string()),
        family: mproc_process::__private::family_keys().to_vec(),
        init,
        max_message_size: config.max_message_size,
        heartbeat_ns: remote.heartbeat.as_nanos() as u64,
        silence_ns: remote.silence.as_nanos() as u64,
        claim_ahead: remote.claim_ahead,
    };
    match send_within(&conn, &ToWorker::Welcome(Box::new(welcome)), HELLO_TIMEOUT) {
        Ok(()) => {}
        Err(ipc::Error::Timeout) => {
            // Shut, so that it sees the end rather than half a welcome that never finishes.
            let _ = rustix::net::shutdown(&conn, rustix::net::Shutdown::Both);
            return Err(format!(
                "remote worker {name:?} did not read its welcome: nothing of it taken for {HELLO_TIMEOUT:?}"
            ));
        }
        Err(e) => return Err(format!("remote worker {name:?} left during its welcome: {e}")),
    }
    conn.set_max_message_size(wire::frame_limit(config.max_message_size));
    Worker::remote(conn, name, *pid, remote).map_err(|e| format!("cannot take in a remote worker: {e}"))
}

/// Waits until `n` remote workers have joined `shared`'s pool (in all), or `timeout`.
pub(crate) fn wait_for(shared: &Shared, n: usize, timeout: Duration) -> Result<()> {
    // `Duration::MAX` and the like: no deadline.
    let deadline = Instant::now().checked_add(timeout);
    let mut arrivals = shared.arrivals.lock();
    while arrivals.joined < n {
        let Some(deadline) = deadline else {
            shared.joined.wait(&mut arrivals);
            continue;
        };
        if shared.joined.wait_until(&mut arrivals, deadline).timed_out() && arrivals.joined < n {
            return Err(Error::MissingWorkers {
                wanted: n,
                came: arrivals.joined,
                waited: timeout,
                refused: arrivals.reasons(),
            });
        }
    }
    Ok(())
}

/// How to start remote workers for a pool: the environment that makes a copy of this program
/// (on any host that can reach the pool) serve the pool, and commands that set it.
///
/// From [`Pool::launcher`](crate::Pool::launcher). The program must be this same build (the
/// pool refuses another, naming both builds), and its `main` must begin with
/// [`mproc_pool::init`](crate::init). The environment holds the pool's authkey: whoever can
/// read it (on the command line of `ssh` or `srun`, in `/proc/PID/environ`) can join the pool
/// and run its tasks.
#[derive(Clone)]
pub struct Launcher {
    address: String,
    authkey: String,
}

impl std::fmt::Debug for Launcher {
    /// The address, never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launcher").field("address", &self.address).finish_non_exhaustive()
    }
}

impl Launcher {
    pub(crate) fn new(address: &Address, authkey: &[u8]) -> Launcher {
        Launcher { address: address.to_string(), authkey: hex(authkey) }
    }

    /// The address the workers connect to (`host:port`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Connects the workers to `address` (`host:port`, `host` a name or an IP) instead of
    /// the pool's bound address: for a pool bound to `0.0.0.0`, or reached through a name.
    pub fn connect_to(mut self, address: impl Into<String>) -> Launcher {
        self.address = address.into();
        self
    }

    /// Connects the workers to `host` (a name, an IPv4 address or an IPv6 one, bracketed or not) at
    /// the port the pool listens on: for a pool bound to `0.0.0.0` with port 0 (the kernel's
    /// choice), reached by this host's name, as in a Slurm batch script
    /// (`SLURMD_NODENAME`).
    pub fn connect_to_host(self, host: &str) -> Launcher {
        let port = self.address.rsplit_once(':').map_or("", |(_, port)| port).to_owned();
        // An IPv6 address is bracketed (else its last group would read as the port).
        if host.contains(':') && !host.starts_with('[') {
            return self.connect_to(format!("[{host}]:{port}"));
        }
        self.connect_to(format!("{host}:{port}"))
    }

    /// The environment to set for a worker: [`ADDRESS_ENV`] and [`AUTHKEY_ENV`].
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(ADDRESS_ENV.into(), self.address.clone()), (AUTHKEY_ENV.into(), self.authkey.clone())]
    }

    /// `program` with the worker environment set, to run on this host (or under any tool
    /// that passes the environment on, as `ip netns exec` does).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        command.envs(self.env());
        command
    }

    /// `ssh HOST env MPROC_POOL_ADDR=... MPROC_POOL_AUTHKEY=... PROGRAM`: a worker on `host`
    /// (the same build of the program must be at `program` there). Add arguments with
    /// `.arg`; `ssh` options go before, with [`Command::new`] and [`env`](Self::env).
    pub fn ssh(&self, host: &str, program: &str) -> Command {
        let mut command = Command::new("ssh");
        command.arg(host).arg("env");
        for (k, v) in self.env() {
            command.arg(format!("{k}={v}"));
        }
        command.arg(program);
        command
    }

    /// `srun --ntasks=N --export=ALL,MPROC_POOL_ADDR=...,MPROC_POOL_AUTHKEY=... PROGRAM`:
    /// `ntasks` workers placed by Slurm, inside an allocation (`salloc`, `sbatch`). Each
    /// worker names itself by Slurm's node name and rank (`SLURMD_NODENAME`,
    /// `SLURM_PROCID`). Add `srun` options with [`srun_args`](Self::srun_args) instead.
    pub fn srun(&self, ntasks: usize, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("srun");
        command.args(self.srun_args(ntasks)).arg(program);
        command
    }

    /// The arguments of [`srun`](Self::srun) before the program: `--ntasks=N` and the
    /// `--export` that carries the worker environment (with the rest of the caller's).
    pub fn srun_args(&self, ntasks: usize) -> Vec<String> {
        let export: Vec<String> = self.env().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        vec![format!("--ntasks={ntasks}"), format!("--export=ALL,{}", export.join(","))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
        assert_eq!(unhex("0001abff"), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
    }

    #[test]
    fn launchers_carry_the_environment() {
        let launcher =
            Launcher::new(&Address::from(std::net::SocketAddr::from(([10, 0, 0, 1], 7000))), b"\x01\x02");
        assert_eq!(launcher.address(), "10.0.0.1:7000");
        assert_eq!(
            launcher.srun_args(4),
            ["--ntasks=4", "--export=ALL,MPROC_POOL_ADDR=10.0.0.1:7000,MPROC_POOL_AUTHKEY=0102"]
        );
        assert_eq!(launcher.clone().connect_to_host("node1").address(), "node1:7000");
        assert_eq!(launcher.clone().connect_to_host("[fe80::1]").address(), "[fe80::1]:7000");
        // An IPv6 address without brackets would read as a port of the address.
        assert_eq!(launcher.clone().connect_to_host("fe80::1").address(), "[fe80::1]:7000");
        let ssh = launcher.clone().connect_to("head:7000").ssh("node2", "/opt/app");
        let args: Vec<_> = ssh.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            ["node2", "env", "MPROC_POOL_ADDR=head:7000", "MPROC_POOL_AUTHKEY=0102", "/opt/app"]
        );
        assert!(!format!("{launcher:?}").contains("0102"), "the key stays out of Debug");
    }
}
