//! The pool's promise at its edges (issue 11): it never hangs and fails only the crashed task,
//! with retiring workers, payloads past the message limit, crashes late in a batch, panicking
//! callbacks, a forked copy of the pool, zero counts, taken results, dying initializers.

use std::io::Write;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use mproc_pool::process::{Process, StartMethod};
use mproc_pool::{Error, Pool};

use crate::*;

// ---- 1. max_tasks_per_child never hangs ----------------------------------------------------

/// `n` tasks submitted at once, one at a time, and through `map_chunked(.., 1)`, on a pool
/// that retires its workers: every value right.
fn retiring_pool_runs_everything(pool: Pool, n: u64, what: &str) {
    let at_once: Vec<_> = (0..n).map(|x| pool.apply_async(square, x)).collect();
    for (x, r) in at_once.into_iter().enumerate() {
        assert_eq!(get(r).unwrap(), (x * x) as u64, "at once: task {x} ({what})");
    }
    for x in 0..n {
        let value = get(pool.apply_async(square, x));
        assert_eq!(value.unwrap(), x * x, "one at a time: task {x} ({what})");
    }
    let mapped = pool.map_chunked(square, 0..n, 1).unwrap();
    assert_eq!(mapped, (0..n).map(|x| x * x).collect::<Vec<_>>(), "map_chunked ({what})");
}

/// The matrix (1, 2 and 4 workers, `max_tasks_per_child` 1 and 3, 500 tasks each
/// way, 20 times) on thread workers, whose replacements cost little (the handler that
/// retires and replaces them is the same); then on worker processes, fewer times.
#[test]
fn max_tasks_per_child_never_hangs() {
    mproc_init();
    for round in 0..20 {
        for workers in [1, 2, 4] {
            for max in [1, 3] {
                let what = format!("round {round}: {workers} threads, max_tasks_per_child({max})");
                within(DEADLINE, move || {
                    let pool = Pool::builder().processes(workers).max_tasks_per_child(max).threads();
                    retiring_pool_runs_everything(pool.build().unwrap(), 500, &what);
                });
            }
        }
    }
    for round in 0..2 {
        for workers in [1, 2, 4] {
            for max in [1, 3] {
                let what = format!("round {round}: {workers} processes, max_tasks_per_child({max})");
                within(DEADLINE, move || {
                    let pool = Pool::builder().processes(workers).max_tasks_per_child(max);
                    let pool = pool.start_method(StartMethod::Fork).build().unwrap();
                    retiring_pool_runs_everything(pool, 100, &what);
                });
            }
        }
    }
}

// ---- 2 and 8. payloads past the message limit ----------------------------------------------

const LIMIT: usize = 64 << 10;

fn limited_pool(workers: usize) -> Pool {
    mproc_init();
    Pool::builder().processes(workers).max_message_size(LIMIT).build().unwrap()
}

fn bytes_of_len(n: usize) -> Vec<u8> {
    vec![7; n]
}

fn len_of(v: Vec<u8>) -> usize {
    v.len()
}

/// The pids of the pool's `n` workers, sorted: `n` tasks of 20 ms at once, again until they
/// ran in `n` different processes (on a loaded machine a worker may finish one and take the
/// next before another is given it: seen at load 23, both tasks on one pid).
fn worker_pids(pool: &Pool, n: usize) -> Vec<u32> {
    loop {
        let mut pids: Vec<u32> = pool.map_chunked(pid_after, vec![20; n], 1).unwrap();
        pids.sort_unstable();
        pids.dedup();
        if pids.len() == n {
            return pids;
        }
    }
}

/// A transfer error that names the size, the limit and how to raise it.
fn assert_names_the_limit(result: Result<impl std::fmt::Debug, Error>, size: usize) {
    match result {
        Err(Error::Transfer { message, task }) => {
            // The size as encoded: the bytes and their length.
            let numbers: Vec<usize> =
                message.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
            assert!(numbers.iter().any(|n| (size..size + 64).contains(n)), "{task}: {message}");
            assert!(message.contains(&LIMIT.to_string()), "{task}: {message}");
            assert!(message.contains("PoolBuilder::max_message_size"), "{task}: {message}");
        }
        other => panic!("expected a transfer error, got {other:?}"),
    }
}

#[test]
fn a_result_past_the_limit_fails_its_task_and_the_pool_goes_on() {
    within(DEADLINE, || {
        let pool = limited_pool(2);
        let workers = worker_pids(&pool, 2);
        let big = pool.apply_async(bytes_of_len, 100_000);
        let after: Vec<_> = (0..100).map(|x| pool.apply_async(square, x)).collect();
        assert_names_the_limit(get(big), 100_000);
        for (x, r) in after.into_iter().enumerate() {
            assert_eq!(get(r).unwrap(), (x * x) as u64);
        }
        // Values just under the limit, many at once, still arrive (batches split to fit).
        let fits = pool.map_chunked(bytes_of_len, vec![LIMIT - 1024; 8], 1).unwrap();
        assert!(fits.iter().all(|v| v.len() == LIMIT - 1024));
        assert_eq!(worker_pids(&pool, 2), workers, "no worker was replaced");
        let _pending = pool.apply_async(bytes_of_len, 200_000);
        pool.terminate();
    });
}

#[test]
fn an_argument_past_the_limit_fails_its_task_and_the_pool_goes_on() {
    within(DEADLINE, || {
        let pool = limited_pool(2);
        let workers = worker_pids(&pool, 2);
        assert_names_the_limit(get(pool.apply_async(len_of, vec![1; 100_000])), 100_000);
        // Arguments just under the limit, many at once, still go (batches split to fit).
        let fits = pool.map_chunked(len_of, vec![vec![1; LIMIT - 1024]; 8], 1).unwrap();
        assert_eq!(fits, vec![LIMIT - 1024; 8]);
        assert_eq!(worker_pids(&pool, 2), workers, "no worker was replaced");
    });
}

/// Writes a frame header no sender writes to every socket the worker holds (its connection to
/// the pool among them; which fd that is depends on how the worker started), then returns: the
/// pool can no longer read that worker's stream.
fn garble_the_stream(_: ()) -> u8 {
    let sockets: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")))
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect();
    assert!(!sockets.is_empty(), "the worker has a connection");
    for fd in sockets {
        sys::write_to_fd(fd, &[0x80, 0, 0, 7]);
    }
    1
}

#[test]
fn a_worker_whose_stream_is_out_of_step_is_killed_not_waited_for() {
    within(DEADLINE, || {
        let pool = pool(2);
        let garbled = get(pool.apply_async(garble_the_stream, ()));
        assert!(matches!(garbled, Err(Error::WorkerDied { .. })), "{garbled:?}");
        let after: Vec<_> = (0..100).map(|x| pool.apply_async(square, x)).collect();
        for (x, r) in after.into_iter().enumerate() {
            assert_eq!(get(r).unwrap(), (x * x) as u64);
        }
    });
}

// ---- 3. finished results survive a crash later in the batch --------------------------------

/// Appends `x` to the file, then returns it; `x == crash` aborts first.
fn append((path, x, crash): (String, u64, u64)) -> u64 {
    if x == crash {
        std::process::abort();
    }
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(format!("{x}\n").as_bytes()).unwrap();
    x
}

/// 100 tasks, task 60 aborts: every task whose line is in the file returned `Ok`, and only the
/// crashing one failed.
fn only_the_crashing_task_fails(pool: &Pool, path: &std::path::Path) {
    std::fs::write(path, "").unwrap();
    let name = path.to_string_lossy().into_owned();
    let results: Vec<_> = (0..100u64).map(|x| pool.apply_async(append, (name.clone(), x, 60))).collect();
    let results: Vec<_> = results.into_iter().map(get).collect();
    let ran = std::fs::read_to_string(path).unwrap();
    let ran: Vec<u64> = ran.lines().map(|l| l.parse().unwrap()).collect();
    for x in &ran {
        assert_eq!(results[*x as usize].as_ref().ok(), Some(x), "task {x} ran: {:?}", results[*x as usize]);
    }
    for (x, result) in results.iter().enumerate() {
        if x == 60 {
            assert!(matches!(result, Err(Error::WorkerDied { .. })), "{result:?}");
        } else {
            assert_eq!(result.as_ref().ok(), Some(&(x as u64)), "task {x}");
        }
    }
}

#[test]
fn finished_results_survive_a_crash_later_in_the_batch() {
    mproc_init();
    let path = std::env::temp_dir().join(format!("mproc-pool-append-{}", std::process::id()));
    for run in 0..50 {
        let path = path.clone();
        within(DEADLINE, move || {
            let cold = Pool::new(2).unwrap();
            only_the_crashing_task_fails(&cold, &path);
            let warm = Pool::new(2).unwrap();
            warm.map(square, 0..100_000).unwrap();
            only_the_crashing_task_fails(&warm, &path);
        });
        eprintln!("run {run} done");
    }
    let _ = std::fs::remove_file(path);
}

// ---- 4. a panicking callback ---------------------------------------------------------------

/// Keeps the error records logged, for the tests to read.
struct Errors(Mutex<Vec<String>>);

impl log::Log for Errors {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Error
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            self.0.lock().unwrap().push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

static ERRORS: Errors = Errors(Mutex::new(Vec::new()));

#[test]
fn a_panicking_callback_is_logged_and_later_callbacks_run() {
    within(DEADLINE, || {
        let _ = log::set_logger(&ERRORS);
        log::set_max_level(log::LevelFilter::Error);
        let pool = pool(2);
        let first = pool.apply_async_with(square, 3, |_| panic!("the callback is broken"), |_| {});
        get(first).unwrap();
        let (tx, rx) = mpsc::channel();
        for x in 0..10u64 {
            let tx = tx.clone();
            drop(pool.apply_async_with(square, x, move |v| tx.send(v).unwrap(), |e| panic!("{e}")));
        }
        let mut got: Vec<u64> =
            (0..10).map(|_| rx.recv_timeout(DEADLINE).expect("later callbacks run")).collect();
        got.sort_unstable();
        assert_eq!(got, (0..10u64).map(|x| x * x).collect::<Vec<_>>());
        let errors = ERRORS.0.lock().unwrap();
        assert!(
            errors.iter().any(|e| e.contains("the callback is broken") && e.contains("task #")),
            "{errors:?}"
        );
    });
}

// ---- 5. a pool in a forked child -----------------------------------------------------------

#[test]
fn a_forked_copy_of_a_pool_fails_at_once_and_drops_quietly() {
    let pool = Arc::new(pool(1));
    let copy = Arc::clone(&pool);
    let mut child = Process::spawn(move || match copy.apply(square, 3) {
        Ok(v) => format!("ran: {v}"),
        Err(e) => e.to_string(),
    })
    .unwrap();
    let said = child.join_timeout(DEADLINE);
    if said.is_err() {
        let _ = child.kill();
    }
    let said = said.expect("the child's pool answers at once");
    assert!(said.contains("fork") && said.contains(&std::process::id().to_string()), "{said}");

    let own = super::pool(1);
    let mut child = Process::spawn(move || {
        drop(own);
        7u8
    })
    .unwrap();
    let dropped = child.join_timeout(DEADLINE);
    if dropped.is_err() {
        let _ = child.kill();
    }
    assert_eq!(dropped.unwrap(), 7, "the drop does nothing harmful");
    assert_eq!(pool.apply(square, 4).unwrap(), 16, "the parent's pool goes on");
}

// ---- 6. counts of zero ---------------------------------------------------------------------

#[test]
fn counts_of_zero_are_refused() {
    mproc_init();
    for built in [
        Pool::new(0),
        Pool::builder().processes(0).build(),
        Pool::builder().processes(1).max_tasks_per_child(0).build(),
    ] {
        match built {
            Err(e @ Error::Config(_)) => assert!(e.to_string().contains("at least 1"), "{e}"),
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }
}

// ---- 7. successful() in every state --------------------------------------------------------

#[test]
fn successful_tells_the_truth_after_the_result_is_taken() {
    let pool = pool(1);
    let mut failed = pool.apply_async(fail_on_7, 7);
    assert!(failed.get_timeout(DEADLINE).is_err());
    assert_eq!(failed.successful(), Some(false));
    let mut chunks = pool.map_async(fail_on_7, 0..20);
    assert!(chunks.get_timeout(DEADLINE).is_err());
    assert_eq!(chunks.successful(), Some(false));
    let mut fine = pool.apply_async(fail_on_7, 6);
    assert_eq!(fine.get_timeout(DEADLINE).unwrap(), 6);
    assert_eq!(fine.successful(), Some(true));
}

// ---- 9. a worker that dies in its initializer ----------------------------------------------

#[test]
fn workers_dying_in_their_initializer_fail_the_tasks() {
    within(DEADLINE, || {
        mproc_init();
        let pool = Pool::builder().processes(2).initializer(sys::exit_at_once, ()).build().unwrap();
        let pending: Vec<_> = (0..10).map(|x| pool.apply_async(square, x)).collect();
        for r in pending {
            match get(r) {
                Err(Error::Initializer { message }) => {
                    assert!(message.contains("initializer (fn(()))"), "{message}");
                    assert!(message.contains("exit code 0"), "{message}");
                }
                other => panic!("expected an initializer error, got {other:?}"),
            }
        }
        assert!(matches!(get(pool.apply_async(square, 1)), Err(Error::Initializer { .. })));
    });
}
