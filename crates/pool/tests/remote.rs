//! Remote workers: copies of this test binary that connect to a pool over TCP.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mproc_pool::{Error, Pool, PoolBuilder};

use crate::{DEADLINE, get, square, within};

/// A copy of this test binary started as a remote worker by `command` (the harness never
/// runs in it: `test_support!` makes it a worker before `main`; the filter matches no test
/// in case it did not).
fn worker(mut command: Command) -> Child {
    command.args(["--exact", "no-such-test"]).stdin(Stdio::null()).stdout(Stdio::piped());
    command.spawn().expect("a worker starts")
}

/// Waits for `child` to exit, within the deadline; its exit code.
pub fn exit_code(child: &mut Child) -> Option<i32> {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "worker {} did not exit within {DEADLINE:?}",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn loopback_workers_run_tasks_and_leave_with_the_pool() {
    within(DEADLINE, || {
        let pool = Pool::builder().processes(0).listen((std::net::Ipv4Addr::LOCALHOST, 0)).build().unwrap();
        let launcher = pool.launcher().unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut workers = Workers((0..2).map(|_| worker(launcher.command(&exe))).collect());
        pool.wait_for_workers(2, DEADLINE).unwrap();
        assert_eq!(pool.map(square, 0..1000u64).unwrap(), (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
        let results: Vec<_> = (0..200u64).map(|x| pool.apply_async(square, x)).collect();
        for (x, r) in results.into_iter().enumerate() {
            assert_eq!(get(r).unwrap(), (x * x) as u64);
        }
        drop(pool);
        for w in workers.iter_mut() {
            assert_eq!(exit_code(w), Some(0));
        }
    });
}

/// A loopback pool (`processes` local workers beside) and `n` remote workers that joined it.
fn loopback(
    processes: usize,
    n: usize,
    configure: impl FnOnce(PoolBuilder) -> PoolBuilder,
) -> (Pool, Workers) {
    let builder = Pool::builder().processes(processes).listen((std::net::Ipv4Addr::LOCALHOST, 0));
    let pool = configure(builder).build().unwrap();
    let launcher = pool.launcher().unwrap();
    let exe = std::env::current_exe().unwrap();
    let workers = Workers((0..n).map(|_| worker(launcher.command(&exe))).collect());
    pool.wait_for_workers(n, DEADLINE).unwrap();
    (pool, workers)
}

#[test]
fn remote_workers_beside_local_ones_serve_the_whole_api() {
    within(DEADLINE, || {
        let (pool, mut workers) = loopback(1, 1, |b| b);
        // Every worker gets work: the remote one's pid differs from ours and the local one's.
        let pids: std::collections::HashSet<u32> =
            pool.map(crate::pid_after, std::iter::repeat_n(20u64, 8)).unwrap().into_iter().collect();
        assert!(pids.contains(&workers[0].id()), "the remote worker ran tasks: {pids:?}");
        let (tx, rx) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        let with = pool.apply_async_with(
            square,
            9,
            move |v| tx.send(Ok(v)).unwrap(),
            move |e| tx2.send(Err(e)).unwrap(),
        );
        assert_eq!(rx.recv_timeout(DEADLINE).unwrap().unwrap(), 81, "the callback");
        assert_eq!(get(with).unwrap(), 81);
        let ordered: Vec<u64> = pool.imap(square, 0..300u64).collect::<Result<_, _>>().unwrap();
        assert_eq!(ordered, (0..300u64).map(|x| x * x).collect::<Vec<_>>());
        let mut unordered: Vec<u64> =
            pool.imap_unordered(square, 0..300u64).collect::<Result<_, _>>().unwrap();
        unordered.sort_unstable();
        assert_eq!(unordered, ordered);
        assert_eq!(
            pool.starmap(crate::add, (0..50u64).map(|x| (x, 1))).unwrap(),
            (1..=50u64).collect::<Vec<_>>()
        );
        match pool.apply(crate::fail_on_7, 7) {
            Err(Error::Panicked { message, .. }) => {
                assert!(message.contains("seven is unlucky"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        pool.close();
        pool.join().unwrap();
        assert_eq!(exit_code(&mut workers[0]), Some(0), "the remote worker leaves at join");
    });
}

/// Sends 1 on the pipe it is given.
pub fn send_one(tx: mproc_pool::ipc::Sender<u64>) {
    tx.send(&1).unwrap();
}

#[test]
fn a_task_with_an_ipc_end_fails_alone_on_a_remote_worker() {
    within(DEADLINE, || {
        let (pool, mut workers) = loopback(0, 1, |b| b);
        let (_rx, tx) = mproc_pool::ipc::pipe::<u64>().unwrap();
        match pool.apply(send_one, tx) {
            Err(Error::Transfer { message, .. }) => {
                assert!(message.contains("cannot reach a remote worker"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(pool.apply(square, 3).unwrap(), 9, "the worker goes on");
        drop(pool);
        assert_eq!(exit_code(&mut workers[0]), Some(0));
    });
}

/// A remote worker that has measured its tasks as short (much shorter than a round trip to
/// the pool) and is killed mid-task fails only that task: the tasks sent to it behind the
/// one it runs, unstarted, go to the other worker. (Claiming tasks ahead, which would fail
/// them too, is only on when asked for: `remote_claim_ahead`.)
#[test]
fn a_killed_warm_remote_worker_fails_only_its_task() {
    within(DEADLINE, || {
        let (pool, mut workers) = loopback(0, 2, |b| b);
        // Warm both up: each learns its round trip and that these tasks are short.
        for _ in 0..3 {
            let warm: Vec<_> = (0..2000u64).map(|x| pool.apply_async(square, x)).collect();
            for (x, r) in warm.into_iter().enumerate() {
                assert_eq!(get(r).unwrap(), (x * x) as u64);
            }
        }
        let out = {
            let (a, b) = workers.split_at_mut(1);
            lines(&mut [&mut a[0], &mut b[0]])
        };
        // The blocking task and, in the same burst, short ones behind it.
        let blocked = pool.apply_async(announce_then_block, ());
        let behind: Vec<_> = (0..400u64).map(|x| pool.apply_async(square, x)).collect();
        let (struck, line) = out.recv_timeout(DEADLINE).expect("the blocking task starts");
        assert_eq!(line, format!("started {}", workers[struck].id()));
        workers[struck].kill().unwrap();
        assert!(matches!(get(blocked), Err(Error::WorkerDied { .. })), "the struck worker's task fails");
        let failed: Vec<_> = behind
            .into_iter()
            .enumerate()
            .filter_map(|(x, r)| match get(r) {
                Ok(v) => {
                    assert_eq!(v, (x * x) as u64);
                    None
                }
                Err(e) => Some((x, e.to_string())),
            })
            .collect();
        assert!(
            failed.is_empty(),
            "{} tasks behind the struck one failed, first: {:?}",
            failed.len(),
            failed.first()
        );
    });
}

/// A remote worker deep in a long task does not keep the tasks sent to it behind that task
/// while another worker has nothing to do: the pool takes back those it never granted (a
/// `Revoke`, which the worker obeys before any later grant) and hands them to the idle one,
/// as it does a local worker's unclaimed tasks. They used to wait for the long task.
#[test]
fn tasks_behind_a_long_one_on_a_remote_worker_go_to_an_idle_worker() {
    within(DEADLINE, || {
        let (pool, mut workers) = loopback(0, 2, |b| b);
        let out = {
            let (a, b) = workers.split_at_mut(1);
            lines(&mut [&mut a[0], &mut b[0]])
        };
        let blocked = pool.apply_async(announce_then_block, ());
        let (struck, line) = out.recv_timeout(DEADLINE).expect("the blocking task starts");
        assert_eq!(line, format!("started {}", workers[struck].id()));
        // Half of these go to the blocked worker, behind its task.
        let behind: Vec<_> = (0..40u64).map(|x| pool.apply_async(square, x)).collect();
        for (x, r) in behind.into_iter().enumerate() {
            assert_eq!(get(r).unwrap(), (x * x) as u64, "a task sent behind the long one");
        }
        workers[struck].kill().unwrap();
        assert!(matches!(get(blocked), Err(Error::WorkerDied { .. })));
        assert_eq!(pool.map(square, 0..100u64).unwrap().len(), 100, "the other worker goes on");
    });
}

#[test]
fn max_tasks_per_child_does_not_starve_remote_workers() {
    within(DEADLINE, || {
        // A remote worker is not retired (nothing could start its successor): it goes on
        // taking tasks past the count.
        let (pool, mut workers) = loopback(0, 1, |b| b.max_tasks_per_child(2));
        for x in 0..6u64 {
            assert_eq!(get(pool.apply_async(square, x)).unwrap(), x * x);
        }
        drop(pool);
        assert_eq!(exit_code(&mut workers[0]), Some(0));
    });
}

#[test]
fn terminate_fails_a_remote_workers_task_and_the_worker_leaves() {
    within(DEADLINE, || {
        let (pool, mut workers) = loopback(0, 1, |b| b);
        let mut out = std::io::BufReader::new(workers[0].stdout.take().unwrap());
        let blocked = pool.apply_async(announce_then_block, ());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(line.starts_with("started"), "{line}");
        pool.terminate();
        assert!(matches!(get(blocked), Err(Error::Terminated { .. })));
        pool.join().unwrap();
        // Mid-task, it sees the end of the pool's stream and leaves.
        assert_eq!(exit_code(&mut workers[0]), Some(0));
    });
}

#[test]
fn a_task_timeout_holds_for_remote_workers() {
    within(DEADLINE, || {
        let (pool, mut workers) = loopback(0, 1, |b| b.task_timeout(Duration::from_millis(300)));
        match pool.apply(crate::endless, ()) {
            Err(Error::Timeout { worker, .. }) => assert!(worker.contains("127.0.0.1"), "{worker}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(exit_code(&mut workers[0]), Some(0), "the pool shut its connection: it left");
    });
}

#[test]
fn a_worker_with_no_pool_to_join_says_so_and_exits() {
    within(DEADLINE, || {
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .env(mproc_pool::ADDRESS_ENV, format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = Workers(vec![worker(command)]);
        let err = stderr_after_exit(&mut child[0], 2);
        assert!(err.contains("cannot join the pool at 127.0.0.1"), "{err}");
    });
}

#[test]
fn too_few_workers_is_an_error_naming_how_many_came() {
    within(DEADLINE, || {
        let e = Pool::builder()
            .processes(0)
            .listen((std::net::Ipv4Addr::LOCALHOST, 0))
            .remote_workers(1)
            .worker_wait(Duration::from_millis(50))
            .build()
            .unwrap_err();
        assert!(matches!(e, Error::MissingWorkers { wanted: 1, came: 0, .. }), "{e}");
        assert!(e.to_string().starts_with("0 of the 1 remote workers"), "{e}");
    });
}

/// How many silent connections the slowloris test holds open: each held the old listener
/// (one handshake at a time) for the handshake's deadline (5 s), so together they held it far
/// past the test's deadline; the pool handshakes this many side by side (its bound is larger).
const SILENT: usize = 40;

/// How many connections the pool admits at once (`MAX_ADMITTING` in `cluster.rs`).
const MAX_ADMITTING: usize = 64;

/// Connections of a test, what came on each: a challenge (the pool admits it), the end (the
/// pool gave it up).
struct Watched {
    conns: Vec<Option<std::net::TcpStream>>,
    challenged: Vec<bool>,
    ended: Vec<bool>,
}

impl Watched {
    /// Reads what comes until `enough` connections were challenged, checking after each look
    /// that no more than the bound are admitted at once.
    fn until_challenged(&mut self, enough: usize) {
        use std::io::Read;
        let n = self.conns.len();
        let deadline = std::time::Instant::now() + DEADLINE;
        while self.challenged.iter().filter(|&&c| c).count() < enough {
            let open: Vec<usize> = (0..n).filter(|&i| self.conns[i].is_some() && !self.ended[i]).collect();
            let mut fds: Vec<_> = open
                .iter()
                .map(|&i| {
                    rustix::event::PollFd::new(self.conns[i].as_ref().unwrap(), rustix::event::PollFlags::IN)
                })
                .collect();
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let timeout = rustix::event::Timespec { tv_sec: left.as_secs() as i64, tv_nsec: 0 };
            assert!(
                rustix::event::poll(&mut fds, Some(&timeout)).unwrap() > 0,
                "no admission within {DEADLINE:?}"
            );
            let ready: Vec<usize> =
                open.iter().zip(&fds).filter(|(_, fd)| !fd.revents().is_empty()).map(|(&i, _)| i).collect();
            drop(fds);
            for i in ready {
                match self.conns[i].as_mut().unwrap().read(&mut [0; 4096]) {
                    Ok(0) | Err(_) => self.ended[i] = true,
                    Ok(_) => self.challenged[i] = true,
                }
            }
            let in_progress = (0..n).filter(|&i| self.challenged[i] && !self.ended[i]).count();
            assert!(in_progress <= MAX_ADMITTING, "{in_progress} admissions at once");
        }
    }
}

/// A flood of silent clients is admitted side by side, but never more than the bound at
/// once: each admitted one is challenged (the handshake's first message), and those past the
/// bound wait in the backlog until one ends, then are taken in turn.
#[test]
fn admissions_in_progress_are_bounded() {
    within(DEADLINE, || {
        let pool = Pool::builder().processes(0).listen((std::net::Ipv4Addr::LOCALHOST, 0)).build().unwrap();
        let address = pool.launcher().unwrap().address().to_string();
        let n = MAX_ADMITTING + 36;
        let conns = (0..n)
            .map(|_| {
                let conn = std::net::TcpStream::connect(&address).unwrap();
                conn.set_nonblocking(true).unwrap();
                Some(conn)
            })
            .collect();
        let mut watched = Watched { conns, challenged: vec![false; n], ended: vec![false; n] };
        watched.until_challenged(MAX_ADMITTING);
        // Hang up the challenged ones: their admissions fail, and the rest are taken in.
        for i in 0..n {
            if watched.challenged[i] {
                watched.conns[i] = None;
                watched.ended[i] = true;
            }
        }
        watched.until_challenged(n);
        drop(pool);
    });
}

/// Clients that connect and say nothing, or only part of their first message, do not delay
/// another worker's admission: handshakes run side by side, each with its own deadline, and
/// each failed one is refused (recorded once) when its client hangs up.
#[test]
fn silent_connections_do_not_hold_up_other_workers() {
    use std::io::Write;
    within(DEADLINE, || {
        let pool = Pool::builder().processes(0).listen((std::net::Ipv4Addr::LOCALHOST, 0)).build().unwrap();
        let launcher = pool.launcher().unwrap();
        let address = launcher.address().to_string();
        let mut silent: Vec<std::net::TcpStream> =
            (0..SILENT).map(|_| std::net::TcpStream::connect(&address).unwrap()).collect();
        // One sends half of a length header, one a header promising more than it sends.
        silent[0].write_all(&[0, 0]).unwrap();
        silent[1].write_all(&[0, 0, 0, 40, b'{']).unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut workers = Workers(vec![worker(launcher.command(&exe))]);
        // Admitted and serving while every silent connection is still open.
        assert_eq!(get(pool.apply_async(square, 7)).unwrap(), 49);
        assert_eq!(pool.remote_workers(), 1);
        drop(silent);
        // Each silent connection's handshake failed, and is recorded once.
        crate::eventually("every silent connection refused", || {
            match pool.wait_for_workers(usize::MAX, Duration::ZERO) {
                Err(Error::MissingWorkers { refused, .. }) => refused.len() >= SILENT,
                other => panic!("{other:?}"),
            }
        });
        let Err(Error::MissingWorkers { refused, .. }) = pool.wait_for_workers(usize::MAX, Duration::ZERO)
        else {
            unreachable!()
        };
        assert_eq!(refused.len(), SILENT, "{refused:?}");
        drop(pool);
        assert_eq!(exit_code(&mut workers[0]), Some(0));
    });
}

/// Every refusal the pool reports, counting "N more connection(s) refused" as N.
fn refusals_counted(refused: &[String]) -> usize {
    refused
        .iter()
        .map(|r| match r.strip_suffix(" more connection(s) refused") {
            Some(n) => n.parse().unwrap_or(1),
            None => 1,
        })
        .sum()
}

/// A flood of connections that hang up at once is refused, each counted, but the pool keeps
/// only so many reasons: its memory (and the `MissingWorkers` message) does not grow with
/// the flood.
#[test]
fn a_flood_of_bad_connections_keeps_a_bounded_list_of_reasons() {
    const FLOOD: usize = 300;
    within(DEADLINE, || {
        let pool = Pool::builder().processes(0).listen((std::net::Ipv4Addr::LOCALHOST, 0)).build().unwrap();
        let address = pool.launcher().unwrap().address().to_string();
        for _ in 0..FLOOD {
            drop(std::net::TcpStream::connect(&address).unwrap());
        }
        let mut refused = Vec::new();
        crate::eventually("every connection refused", || {
            match pool.wait_for_workers(usize::MAX, Duration::ZERO) {
                Err(Error::MissingWorkers { refused: r, .. }) => {
                    refused = r;
                    refusals_counted(&refused) >= FLOOD
                }
                other => panic!("{other:?}"),
            }
        });
        assert_eq!(refusals_counted(&refused), FLOOD);
        assert!(refused.len() <= 100, "{} reasons kept", refused.len());
        assert!(refused[0].contains("refused"), "{refused:?}");
    });
}

/// A heartbeat interval of zero would be a busy loop on both sides of every remote
/// connection, and one too long for its deadlines to be computed would panic the pool's
/// handler: the builder refuses both, and silences past their bound, saying why.
#[test]
fn heartbeats_out_of_range_are_refused_by_the_builder() {
    let hour = Duration::from_secs(3600);
    for (every, silence) in [
        (Duration::ZERO, Duration::from_secs(10)),
        (Duration::from_micros(1), Duration::from_secs(10)),
        (Duration::MAX, Duration::from_secs(10)),
        (2 * hour, 10 * hour),
        (Duration::from_secs(1), Duration::MAX),
    ] {
        let built = std::panic::catch_unwind(|| {
            Pool::builder()
                .processes(0)
                .listen((std::net::Ipv4Addr::LOCALHOST, 0))
                .heartbeat(every, silence)
                .build()
                .map(drop)
        });
        match built {
            Ok(Err(e @ Error::Config(_))) => {
                let e = e.to_string();
                assert!(e.contains("heartbeat"), "{every:?}/{silence:?}: {e}");
            }
            Ok(other) => panic!("heartbeat({every:?}, {silence:?}): {other:?}"),
            Err(_) => panic!("heartbeat({every:?}, {silence:?}): build panicked"),
        }
    }
}

/// A pool (here the test, by hand) whose welcome carries a heartbeat interval of zero, one
/// past any sense, or a silence shorter than the heartbeat breaks the protocol: the worker
/// says so and leaves (code 2) before it sends anything more, where it used to send
/// heartbeats in a busy loop (or wait centuries between them).
#[test]
fn a_welcome_with_an_absurd_heartbeat_is_refused_by_the_worker() {
    use mproc_pool::ipc::{Connection, Listener};
    within(DEADLINE, || {
        let second = 1_000_000_000u64;
        for (heartbeat_ns, silence_ns) in [(0, 10 * second), (u64::MAX, u64::MAX), (second, 0)] {
            let key = [7u8; 32];
            let listener = Listener::bind((std::net::Ipv4Addr::LOCALHOST, 0), Some(&key)).unwrap();
            let mut command = Command::new(std::env::current_exe().unwrap());
            command
                .env(mproc_pool::ADDRESS_ENV, listener.address().to_string())
                .env(mproc_pool::AUTHKEY_ENV, "07".repeat(32))
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let mut child = Workers(vec![worker(command)]);
            let conn: Connection<Vec<u8>> = listener.accept_timeout(DEADLINE).unwrap();
            conn.recv_bytes_timeout(DEADLINE).expect("the worker's hello");
            conn.send_bytes(&mproc_pool::__private::welcome_bytes(heartbeat_ns, silence_ns)).unwrap();
            match conn.recv_bytes_timeout(DEADLINE) {
                Err(mproc_pool::ipc::Error::Closed) => {}
                other => {
                    panic!("heartbeat {heartbeat_ns} ns, silence {silence_ns} ns: the worker sent {other:?}")
                }
            }
            let err = stderr_after_exit(&mut child[0], 2);
            assert!(err.contains("heartbeat") || err.contains("silence"), "{err}");
            assert!(err.contains("protocol"), "{err}");
        }
    });
}

/// `Duration::MAX` as a wait means no deadline (as `recv_timeout` takes it), never an
/// `Instant` overflow: not for `worker_wait` (tasks submitted before any worker came wait
/// for one), `wait_for_workers` or `task_timeout`.
#[test]
fn a_wait_of_duration_max_means_no_deadline() {
    crate::mproc_init();
    within(DEADLINE, || {
        let pool = Pool::builder()
            .processes(0)
            .listen((std::net::Ipv4Addr::LOCALHOST, 0))
            .worker_wait(Duration::MAX)
            .build()
            .unwrap();
        let early = pool.apply_async(square, 3);
        let exe = std::env::current_exe().unwrap();
        let mut workers = Workers(vec![worker(pool.launcher().unwrap().command(&exe))]);
        assert_eq!(get(early).unwrap(), 9, "the task waited for the worker");
        pool.wait_for_workers(1, Duration::MAX).unwrap();
        drop(pool);
        assert_eq!(exit_code(&mut workers[0]), Some(0));
    });
    within(DEADLINE, || {
        let pool = Pool::builder().processes(1).task_timeout(Duration::MAX).build().unwrap();
        assert_eq!(get(pool.apply_async(square, 4)).unwrap(), 16);
    });
}

/// An initializer that keeps nothing of its (large) arguments.
pub fn ignore_bytes(_: Vec<u8>) {}

/// A client that authenticates and says hello but never reads its welcome (a large one: the
/// initializer's arguments travel in it) is given up once its welcome makes no progress for
/// the admission's deadline: its connection shut, its refusal recorded, no thread held.
#[test]
fn a_worker_that_never_reads_its_welcome_is_given_up() {
    use mproc_pool::ipc::{Client, Connection};
    within(DEADLINE, || {
        let key = [9u8; 32];
        let pool = Pool::builder()
            .processes(0)
            .listen((std::net::Ipv4Addr::LOCALHOST, 0))
            .authkey(&key)
            .initializer(ignore_bytes, vec![1u8; 64 << 20])
            .build()
            .unwrap();
        let address = pool.launcher().unwrap().address().to_string();
        let address: std::net::SocketAddr = address.parse().unwrap();
        let conn: Connection<Vec<u8>> = Client::connect(address, Some(&key)).unwrap();
        conn.send_bytes(&mproc_pool::__private::hello_bytes()).unwrap();
        let refused = refusals(&pool);
        assert!(refused[0].contains("welcome"), "{refused:?}");
        // The pool shut the connection: what it sent ends early.
        let mut got = 0usize;
        while let Ok(bytes) = conn.recv_bytes_timeout(DEADLINE) {
            got += bytes.len();
        }
        assert!(got < 64 << 20, "the whole welcome came: {got} bytes");
    });
}

/// The length of a byte string.
pub fn len_of(bytes: Vec<u8>) -> usize {
    bytes.len()
}

/// A remote worker that keeps sending heartbeats but stops reading (its tasks' inputs, large,
/// fill the connection) is given up once the pool's sends make no progress for the silence
/// limit, like one that falls silent: the tasks it held and never started go to another
/// worker, none is lost.
#[test]
fn a_worker_that_stops_reading_is_given_up_and_its_tasks_run_elsewhere() {
    within(DEADLINE, || {
        let (pool, launcher, conn) = pool_with_a_worker_by_hand([5u8; 32]);
        // The stalled worker: heartbeats every 100 ms (never silent), reads nothing more.
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let stalled = std::thread::spawn(move || {
            let heartbeat = mproc_pool::__private::heartbeat_bytes();
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(Duration::from_millis(100))
            {
                if conn.send_bytes(&heartbeat).is_err() {
                    break;
                }
            }
        });
        let size = 16 << 20;
        let results: Vec<_> = (0..4).map(|_| pool.apply_async(len_of, vec![7u8; size])).collect();
        let exe = std::env::current_exe().unwrap();
        let mut workers = Workers(vec![worker(launcher.command(&exe))]);
        for r in results {
            assert_eq!(get(r).unwrap(), size, "every task ran, on the worker that reads");
        }
        let _ = stop.send(());
        stalled.join().unwrap();
        drop(pool);
        assert_eq!(exit_code(&mut workers[0]), Some(0));
    });
}

/// A pool with no workers of its own, listening on loopback (heartbeat 100 ms, silence 1 s),
/// and its one worker played by the test: a connection that has said hello and read its
/// welcome.
fn pool_with_a_worker_by_hand(
    key: [u8; 32],
) -> (Pool, mproc_pool::Launcher, mproc_pool::ipc::Connection<Vec<u8>>) {
    use mproc_pool::ipc::{Client, Connection};
    let pool = Pool::builder()
        .processes(0)
        .listen((std::net::Ipv4Addr::LOCALHOST, 0))
        .authkey(&key)
        .heartbeat(Duration::from_millis(100), Duration::from_secs(1))
        .build()
        .unwrap();
    let launcher = pool.launcher().unwrap();
    let address: std::net::SocketAddr = launcher.address().parse().unwrap();
    let conn: Connection<Vec<u8>> = Client::connect(address, Some(&key)).unwrap();
    conn.send_bytes(&mproc_pool::__private::hello_bytes()).unwrap();
    conn.recv_bytes_timeout(DEADLINE).expect("the welcome");
    pool.wait_for_workers(1, DEADLINE).unwrap();
    (pool, launcher, conn)
}

/// `n` zero bytes: a large value from a small argument.
pub fn zeros(n: usize) -> Vec<u8> {
    vec![0; n]
}

/// Sends `heartbeat` on `conn` every 100 ms, from a thread, until the returned sender is
/// dropped (or the connection fails): a peer that is never silent, whatever else it does.
fn heartbeats(
    conn: std::sync::Arc<mproc_pool::ipc::Connection<Vec<u8>>>,
    heartbeat: Vec<u8>,
) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            stopped.recv_timeout(Duration::from_millis(100))
        {
            if conn.send_bytes(&heartbeat).is_err() {
                break;
            }
        }
    });
    (stop, thread)
}

/// A pool (here the test, by hand) that keeps sending heartbeats but stops reading (its
/// handler stuck, say, while its writer thread lives on) never lets the worker's outcomes
/// through: the worker's writer, whose sends make no progress for the silence limit, gives
/// the pool up and the worker leaves (code 3) naming the pool's address, as it does a pool
/// that falls silent. It used to block in its send for ever, and the worker with it.
#[test]
fn a_worker_whose_pool_stops_reading_leaves_naming_the_pool() {
    use mproc_pool::ipc::{Connection, Listener};
    within(DEADLINE, || {
        let key = [3u8; 32];
        let listener = Listener::bind((std::net::Ipv4Addr::LOCALHOST, 0), Some(&key)).unwrap();
        let address = listener.address().to_string();
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .env(mproc_pool::ADDRESS_ENV, &address)
            .env(mproc_pool::AUTHKEY_ENV, "03".repeat(32))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = Workers(vec![worker(command)]);
        let conn: Connection<Vec<u8>> = listener.accept_timeout(DEADLINE).unwrap();
        conn.recv_bytes_timeout(DEADLINE).expect("the worker's hello");
        let (heartbeat, silence) = (Duration::from_millis(100), Duration::from_secs(1));
        let welcome =
            mproc_pool::__private::welcome_bytes(heartbeat.as_nanos() as u64, silence.as_nanos() as u64);
        conn.send_bytes(&welcome).unwrap();
        // Tasks whose values (64 MB in all, each within the welcome's 1 MiB limit) fill the
        // connection many times over, all granted.
        const TASKS: u64 = 64;
        for id in 1..=TASKS {
            conn.send_bytes(&mproc_pool::__private::apply_bytes(zeros, &1_000_000, id)).unwrap();
        }
        conn.send_bytes(&mproc_pool::__private::grant_bytes(TASKS)).unwrap();
        // From here the pool reads nothing, and is never silent.
        let conn = std::sync::Arc::new(conn);
        let (stop, beating) = heartbeats(conn, mproc_pool::__private::pool_heartbeat_bytes());
        let err = stderr_after_exit(&mut child[0], 3);
        assert!(err.contains(&address), "names the pool: {err}");
        assert!(err.contains("took nothing"), "says why: {err}");
        drop(stop);
        beating.join().unwrap();
    });
}

/// A worker that joins, keeps sending heartbeats and reading what it is sent, but never
/// claims a task (its main thread stalled before its first claim) holds the tasks sent to it
/// no longer than a silent one: once it has claimed nothing for the silence limit while it
/// holds tasks and runs none, the pool gives it up (shuts its connection) and hands the
/// tasks, none of which it may run (none was granted), to another worker. They used to stay
/// with it for ever, unless a `task_timeout` was set.
#[test]
fn a_worker_that_never_claims_is_given_up_and_its_tasks_run_elsewhere() {
    within(DEADLINE, || {
        let (pool, launcher, conn) = pool_with_a_worker_by_hand([6u8; 32]);
        // The stalled worker: heartbeats every 100 ms and reads all it is sent (so it is
        // neither silent nor deaf), claims nothing.
        let conn = std::sync::Arc::new(conn);
        let (stop, beating) = heartbeats(conn.clone(), mproc_pool::__private::heartbeat_bytes());
        let results: Vec<_> = (0..4u64).map(|x| pool.apply_async(square, x)).collect();
        // The only worker so far: the tasks go to it.
        let sent = conn.recv_bytes_timeout(DEADLINE).expect("a batch for the stalled worker");
        assert!(!sent.is_empty());
        let exe = std::env::current_exe().unwrap();
        let mut workers = Workers(vec![worker(launcher.command(&exe))]);
        for (x, r) in results.into_iter().enumerate() {
            assert_eq!(get(r).unwrap(), (x * x) as u64, "every task ran, on the worker that claims");
        }
        // The pool gave the stalled worker up: its connection ends.
        loop {
            match conn.recv_bytes_timeout(DEADLINE) {
                Ok(_) => {}
                Err(mproc_pool::ipc::Error::Closed) => break,
                Err(e) => panic!("the stalled worker's connection: {e}"),
            }
        }
        drop(stop);
        beating.join().unwrap();
        drop(pool);
        assert_eq!(exit_code(&mut workers[0]), Some(0));
    });
}

/// Set in the copy of this test binary that runs the body of
/// `running_out_of_fds_while_accepting_is_said_once_and_survived`.
const OUT_OF_FDS_ENV: &str = "MPROC_TEST_POOL_OUT_OF_FDS";

/// A listener that cannot accept for want of fds (`EMFILE`: the connection stays in the
/// backlog, the listener readable) says so once and waits before it tries again, rather than
/// spinning and recording the same failure without end; once fds are free it takes workers
/// again. Run in a copy of this test binary, whose fd limit it lowers.
#[test]
fn running_out_of_fds_while_accepting_is_said_once_and_survived() {
    if std::env::var_os(OUT_OF_FDS_ENV).is_none() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "remote::running_out_of_fds_while_accepting_is_said_once_and_survived"])
            .args(["--nocapture", "--test-threads=1"])
            .env(OUT_OF_FDS_ENV, "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let said =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{said}");
        assert!(said.contains("1 passed"), "{said}");
        return;
    }
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let pool = Pool::builder().processes(0).listen((std::net::Ipv4Addr::LOCALHOST, 0)).build().unwrap();
    let launcher = pool.launcher().unwrap();
    let address: std::net::SocketAddr = launcher.address().parse().unwrap();
    // A socket made while there are fds, connected once there are none left.
    let client =
        rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::STREAM, None).unwrap();
    let hard = getrlimit(Resource::Nofile).maximum;
    setrlimit(Resource::Nofile, Rlimit { current: Some(256), maximum: hard }).unwrap();
    let mut filler = Vec::new();
    loop {
        match rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            0.into(),
        ) {
            Ok(fd) => filler.push(fd),
            Err(rustix::io::Errno::MFILE) => break,
            Err(e) => panic!("{e}"),
        }
    }
    rustix::net::connect(&client, &address).unwrap();
    let refused = refusals(&pool);
    assert!(refused[0].contains("open files"), "{refused:?}");
    drop(filler);
    // Fds again: a worker is taken in and runs tasks.
    let exe = std::env::current_exe().unwrap();
    let mut workers = Workers(vec![worker(launcher.command(&exe))]);
    assert_eq!(get(pool.apply_async(square, 5)).unwrap(), 25);
    let Err(Error::MissingWorkers { refused, .. }) = pool.wait_for_workers(usize::MAX, Duration::ZERO) else {
        unreachable!()
    };
    let out_of_fds: Vec<_> = refused.iter().filter(|r| r.contains("open files")).collect();
    assert_eq!(out_of_fds.len(), 1, "said once: {} times, {:?}", refusals_counted(&refused), refused.last());
    drop(client);
    drop(pool);
    assert_eq!(exit_code(&mut workers[0]), Some(0));
}

// ---- hosts as network namespaces ----------------------------------------------------------

/// Hosts as network namespaces: one for the pool, `n` for workers, each worker's joined to
/// the pool's by a veth pair (`10.77.K.1` on the pool's side, `10.77.K.2` on host K's). Names
/// are unique to this process and call; the namespaces (and with them the links) are deleted
/// when the [`Cleanup`] the test holds is dropped, whatever happened (a test past its
/// deadline included: the thread left behind holds the `Hosts`, not the `Cleanup`).
struct Hosts {
    pool: String,
    hosts: Vec<String>,
    /// The pool's end of each host's link.
    links: Vec<String>,
}

/// The port the pool listens on in its namespace (its own: no other process uses it).
const PORT: u16 = 7000;

/// Runs `ip args`; its error output if it failed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Hosts {
    /// `n` worker hosts and the pool's, or `None` (with the reason printed) where this
    /// process may not make network namespaces.
    fn new(n: usize) -> Option<(Hosts, Cleanup)> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{:x}{k:02x}", std::process::id());
        let mut hosts = Hosts { pool: format!("mproc-{tag}-pool"), hosts: Vec::new(), links: Vec::new() };
        if let Err(e) = ip(&["netns", "add", &hosts.pool]) {
            if e.contains("ermission denied") || e.contains("not permitted") || e.starts_with("ip: ") {
                println!("skipped: this process cannot make network namespaces ({e})");
                return None;
            }
            panic!("{e}");
        }
        let mut cleanup = Cleanup(vec![hosts.pool.clone()]);
        for h in 1..=n {
            let host = format!("mproc-{tag}-h{h}");
            ip(&["netns", "add", &host]).unwrap();
            cleanup.0.push(host.clone());
            hosts.hosts.push(host.clone());
            let (ours, theirs) = (format!("m{tag}{h}p"), format!("m{tag}{h}h"));
            ip(&[
                "link",
                "add",
                &ours,
                "netns",
                &hosts.pool,
                "type",
                "veth",
                "peer",
                "name",
                &theirs,
                "netns",
                &host,
            ])
            .unwrap();
            hosts.links.push(ours.clone());
            for (ns, dev, addr) in
                [(&hosts.pool, &ours, format!("10.77.{h}.1/24")), (&host, &theirs, format!("10.77.{h}.2/24"))]
            {
                ip(&["-n", ns, "addr", "add", &addr, "dev", dev]).unwrap();
                ip(&["-n", ns, "link", "set", dev, "up"]).unwrap();
            }
        }
        Some((hosts, cleanup))
    }

    /// `f()` on a thread inside the pool's namespace (the sockets it makes are there).
    fn in_pool_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.pool);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    /// A pool of remote workers only, listening in the pool's namespace.
    fn pool(&self, silence: Duration) -> Pool {
        self.in_pool_ns(move || {
            Pool::builder()
                .processes(0)
                .listen((std::net::Ipv4Addr::UNSPECIFIED, PORT))
                .heartbeat(Duration::from_millis(100), silence)
                .build()
                .unwrap()
        })
    }

    /// `program` (default: this test binary) started in host `h`'s namespace as a worker
    /// of `pool`, with `env` on top; its output piped.
    fn worker(
        &self,
        pool: &Pool,
        h: usize,
        program: Option<&std::path::Path>,
        env: &[(&str, &str)],
    ) -> Child {
        let exe = std::env::current_exe().unwrap();
        let launcher = pool.launcher().unwrap().connect_to(format!("10.77.{h}.1:{PORT}"));
        let mut command = launcher.command("ip");
        command.args(["netns", "exec", &self.hosts[h - 1]]).arg(program.unwrap_or(&exe));
        command.envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped());
        worker(command)
    }
}

/// Deletes a test's namespaces when dropped.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in &self.0 {
            // A test's resolver settings for the namespace, if it made any.
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Workers, killed and reaped when dropped (a failing test leaves none behind).
pub struct Workers(Vec<Child>);

impl std::ops::Deref for Workers {
    type Target = Vec<Child>;
    fn deref(&self) -> &Vec<Child> {
        &self.0
    }
}

impl std::ops::DerefMut for Workers {
    fn deref_mut(&mut self) -> &mut Vec<Child> {
        &mut self.0
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Lines of the workers' standard outputs, each with its worker's index, as they come.
fn lines(children: &mut [&mut Child]) -> std::sync::mpsc::Receiver<(usize, String)> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, child) in children.iter_mut().enumerate() {
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let _ = tx.send((i, line));
            }
        });
    }
    rx
}

/// Says which process runs it (on standard output, which the test reads), then blocks.
pub fn announce_then_block(_: ()) -> u64 {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "started {}", std::process::id());
    let _ = out.flush();
    drop(out);
    std::thread::sleep(DEADLINE);
    0
}

/// Everything a fault test checks but the fault: one worker runs a blocking task (the pid
/// it announces), `fault` strikes that worker (its index given), and the task must fail
/// with `WorkerDied` naming its host, while the tasks queued behind it and everything after
/// run on the other worker. Returns the struck worker's index, the workers (not yet
/// reaped) and the pool (alive).
fn fault_mid_task(hosts: &Hosts, pool: &Pool, fault: impl FnOnce(usize, &mut Child)) -> (usize, Workers) {
    let mut workers = Workers((1..=2).map(|h| hosts.worker(pool, h, None, &[])).collect());
    pool.wait_for_workers(2, DEADLINE).unwrap();
    let out = {
        let (a, b) = workers.split_at_mut(1);
        lines(&mut [&mut a[0], &mut b[0]])
    };
    let blocked = pool.apply_async(announce_then_block, ());
    let (struck, line) = out.recv_timeout(DEADLINE).expect("the blocking task starts");
    assert_eq!(line, format!("started {}", workers[struck].id()), "the worker is our child itself");
    // Queued behind the blocking task (some of them sent to its worker, unstarted).
    let behind: Vec<_> = (0..40u64).map(|x| pool.apply_async(square, x)).collect();
    fault(struck, &mut workers[struck]);
    match get(blocked) {
        Err(Error::WorkerDied { worker, .. }) => {
            assert!(worker.contains(&format!("10.77.{}.2", struck + 1)), "names the host: {worker}")
        }
        other => panic!("the struck worker's task: {other:?}"),
    }
    for (x, r) in behind.into_iter().enumerate() {
        assert_eq!(get(r).unwrap(), (x * x) as u64, "a task queued behind the struck one");
    }
    assert_eq!(pool.map(square, 0..500u64).unwrap(), (0..500u64).map(|x| x * x).collect::<Vec<_>>());
    (struck, workers)
}

#[test]
fn netns_a_killed_remote_worker_fails_only_its_task() {
    let Some((hosts, _cleanup)) = Hosts::new(2) else { return };
    within(DEADLINE, move || {
        let pool = hosts.pool(Duration::from_secs(5));
        let (struck, mut workers) = fault_mid_task(&hosts, &pool, |_, child| child.kill().unwrap());
        drop(pool);
        for (i, w) in workers.iter_mut().enumerate() {
            let code = exit_code(w);
            if i == struck {
                assert_eq!(code, None, "killed by a signal");
            } else {
                assert_eq!(code, Some(0), "the other worker leaves with the pool");
            }
        }
    });
}

#[test]
fn netns_a_link_cut_mid_task_fails_only_its_task_and_the_worker_leaves() {
    let Some((hosts, _cleanup)) = Hosts::new(2) else { return };
    within(DEADLINE, move || {
        let pool = hosts.pool(Duration::from_secs(3));
        let (struck, mut workers) = fault_mid_task(&hosts, &pool, |i, _| {
            ip(&["-n", &hosts.pool, "link", "set", &hosts.links[i], "down"]).unwrap();
        });
        // Cut off, it hears nothing from the pool and leaves by itself.
        assert_eq!(exit_code(&mut workers[struck]), Some(3), "the cut-off worker leaves: pool silent");
        drop(pool);
        assert_eq!(exit_code(&mut workers[1 - struck]), Some(0));
    });
}

/// A worker whose pool address is a name its host's resolver is slow to answer for (here a
/// DNS server that never answers, waited for 30 s a try, five tries) gives up at its join
/// deadline, naming the name and what to check, instead of waiting on the resolver for
/// minutes (the lookup had no deadline).
#[test]
fn netns_a_pool_name_that_resolves_slowly_is_given_up_naming_it() {
    let Some((hosts, _cleanup)) = Hosts::new(1) else { return };
    within(DEADLINE, move || {
        // The DNS server: a socket in the pool's namespace that reads nothing.
        let _dns = hosts.in_pool_ns(|| std::net::UdpSocket::bind("10.77.1.1:53").unwrap());
        // Host 1's resolver asks it (`ip netns exec` mounts this file on /etc/resolv.conf).
        let dir = format!("/etc/netns/{}", hosts.hosts[0]);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/resolv.conf"), "nameserver 10.77.1.1\noptions timeout:30 attempts:5\n")
            .unwrap();
        let name = "pool.mproc.test";
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &hosts.hosts[0]])
            .arg(std::env::current_exe().unwrap())
            .env(mproc_pool::ADDRESS_ENV, format!("{name}:{PORT}"))
            .env(mproc_pool::AUTHKEY_ENV, "00".repeat(32))
            .stderr(Stdio::piped());
        let mut workers = Workers(vec![worker(command)]);
        let err = stderr_after_exit(&mut workers[0], 2);
        assert!(err.contains(name), "names the name: {err}");
        assert!(err.contains("did not resolve"), "says why: {err}");
    });
}

/// Waits until the pool has refused a connection; the reasons.
fn refusals(pool: &Pool) -> Vec<String> {
    let mut refused = Vec::new();
    crate::eventually("a refusal", || match pool.wait_for_workers(usize::MAX, Duration::ZERO) {
        Err(Error::MissingWorkers { refused: r, .. }) => {
            refused = r;
            !refused.is_empty()
        }
        other => panic!("{other:?}"),
    });
    refused
}

/// The standard error of a worker that has exited with `code`.
fn stderr_after_exit(child: &mut Child, code: i32) -> String {
    use std::io::Read;
    assert_eq!(exit_code(child), Some(code));
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    err
}

#[test]
fn netns_a_worker_with_a_wrong_authkey_is_refused() {
    let Some((hosts, _cleanup)) = Hosts::new(2) else { return };
    within(DEADLINE, move || {
        let pool = hosts.pool(Duration::from_secs(5));
        let wrong = "00".repeat(32);
        let mut workers = Workers(vec![
            hosts.worker(&pool, 1, None, &[(mproc_pool::AUTHKEY_ENV, &wrong)]),
            hosts.worker(&pool, 2, None, &[]),
        ]);
        let err = stderr_after_exit(&mut workers[0], 2);
        assert!(err.contains("authentication failed"), "the worker says why: {err}");
        let refused = refusals(&pool);
        assert!(refused[0].contains("authentication"), "the pool says why: {refused:?}");
        pool.wait_for_workers(1, DEADLINE).unwrap();
        assert_eq!(pool.map(square, 0..100u64).unwrap().len(), 100);
        drop(pool);
        assert_eq!(exit_code(&mut workers[1]), Some(0));
    });
}

#[test]
fn netns_a_worker_of_another_build_is_refused_naming_both() {
    let Some((hosts, _cleanup)) = Hosts::new(1) else { return };
    within(DEADLINE, move || {
        // Built beside this binary by `cargo xtask test` (`cargo build --examples`: `cargo
        // test` alone builds examples as test harnesses, under hashed names).
        let exe = std::env::current_exe().unwrap();
        let other = exe.parent().unwrap().parent().unwrap().join("examples/other_build");
        assert!(
            other.exists(),
            "{} is missing: `cargo xtask test` builds it (or `cargo build -p mproc-pool --examples`)",
            other.display()
        );
        let pool = hosts.pool(Duration::from_secs(5));
        let mut stranger = Workers(vec![hosts.worker(&pool, 1, Some(&other), &[])]);
        let err = stderr_after_exit(&mut stranger[0], 2);
        let refused = refusals(&pool);
        for said in [&err, &refused[0]] {
            assert_eq!(said.matches("built as gnu:").count(), 2, "names both builds: {said}");
            assert!(said.contains("other_build"), "names the worker's program: {said}");
        }
        assert_eq!(pool.remote_workers(), 0);
    });
}

#[test]
fn large_values_reach_a_remote_worker_inline_and_the_limit_holds_there() {
    within(DEADLINE, || {
        let v: Vec<u8> = (0..(24usize << 20)).map(|i| (i * 31) as u8).collect();
        let (pool, mut workers) = loopback(0, 1, |b| b);
        assert!(pool.apply(crate::large::echo, v.clone()).unwrap() == v, "24 MiB there and back over TCP");
        drop(pool);
        assert_eq!(exit_code(&mut workers[0]), Some(0));
        // Past the limit, the memfd that lets a value reach a local worker does not cross TCP.
        let (pool, _workers) = loopback(0, 1, |b| b.max_message_size(1 << 20));
        match pool.apply(crate::large::echo, v.clone()) {
            Err(Error::Transfer { message, .. }) => {
                assert!(message.contains("max_message_size") && message.contains("remote"), "{message}")
            }
            Err(other) => panic!("expected a transfer error, got {other:?}"),
            Ok(_) => panic!("a value past the limit reached a remote worker"),
        }
        assert_eq!(pool.apply(square, 7).unwrap(), 49, "the worker stays");
    });
}
