//! A tour of mproc, layer by layer: child processes started like threads, a pool of worker
//! processes that survives a crash, and one thread talking to many children at once through
//! coroutines.
//!
//! Run it with `cargo run -p mproc-coroutine --example tour`. (The ipc layer alone has its
//! own tour: `cargo run -p mproc-ipc --example tour`.)

use std::rc::Rc;
use std::time::{Duration, Instant};

use mproc_coroutine::ipc::{Connection, duplex};
use mproc_coroutine::pool::Pool;
use mproc_coroutine::process::{Builder, Process, StartMethod, current_process};
use mproc_coroutine::{Async, Executor, spawn, timeout};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // First line of main: a child started by Spawn or ForkServer runs its function here and
    // exits, instead of running main again.
    mproc_coroutine::process::init();
    println!("mproc tour\n");
    processes()?;
    pool()?;
    coroutines()?;
    println!("\ntour complete");
    Ok(())
}

fn square(x: u64) -> u64 {
    x * x
}

fn name_and_pid(_: ()) -> String {
    let me = current_process();
    format!("{} (pid {})", me.name(), me.pid())
}

fn crash_on_13(x: u64) -> u64 {
    if x == 13 {
        // A real crash: the worker process dies by a signal.
        std::process::abort();
    }
    x + 1
}

/// Children like threads: a value back, a panic as an error, a kill as an exit code.
fn processes() -> Result<(), Box<dyn std::error::Error>> {
    println!("1. processes");
    let child = Process::spawn(|| (1..=10u64).sum::<u64>())?;
    println!("   Fork closure returned        {}", child.join()?);
    for method in [StartMethod::ForkServer, StartMethod::Spawn] {
        let child = Builder::new().name("greeter").start_method(method).spawn_fn(name_and_pid, ())?;
        println!("   {:<28} {}", format!("{method:?} child is"), child.join()?);
    }
    // A child's panic also prints to its stderr, as a Python child prints its traceback;
    // quiet here, so the tour reads well.
    let panicking = Process::spawn(|| -> u32 {
        std::panic::set_hook(Box::new(|_| {}));
        panic!("bad input: {}", 42)
    })?;
    println!("   a panic comes back as        {}", panicking.join().unwrap_err());
    let mut sleeper = Process::spawn(|| std::thread::sleep(Duration::from_secs(60)))?;
    sleeper.kill()?;
    let err = sleeper.join_timeout(Duration::from_secs(30)).unwrap_err();
    println!("   killed: exitcode {:?}, error: {err}", sleeper.exitcode());
    Ok(())
}

/// A pool: map over worker processes; a worker that crashes fails only its own task.
fn pool() -> Result<(), Box<dyn std::error::Error>> {
    println!("\n2. pool");
    let pool = Pool::new(2)?;
    let start = Instant::now();
    let squares = pool.map(square, 0..100_000u64)?;
    println!(
        "   map of 100,000 items:          sum {} in {:.1} ms",
        squares.iter().sum::<u64>(),
        start.elapsed().as_secs_f64() * 1e3
    );
    let results: Vec<_> = (10..16).map(|x| pool.apply_async(crash_on_13, x)).collect();
    for (x, result) in (10..16).zip(results) {
        match result.get() {
            Ok(y) => println!("   task {x} -> {y}"),
            Err(e) => println!("   task {x} failed: {e}"),
        }
    }
    println!("   the pool goes on:               {:?}", pool.map(square, 1..=4)?);
    Ok(())
}

/// A child that doubles what it is sent, until its connection closes.
fn doubler() -> Result<(Connection<u64>, Process<()>), Box<dyn std::error::Error>> {
    let (ours, theirs) = duplex::<u64>()?;
    let child = Builder::new().start_method(StartMethod::Fork).close_in_child(&ours).spawn(move || {
        while let Ok(x) = theirs.recv() {
            if theirs.send(&(2 * x)).is_err() {
                break;
            }
        }
    })?;
    Ok((ours, child))
}

/// One thread, many conversations: a coroutine per child does 250 round trips with it, all
/// four at once, while the thread also awaits a pool result and a timeout.
fn coroutines() -> Result<(), Box<dyn std::error::Error>> {
    println!("\n3. coroutines");
    let pool = Pool::new(1)?;
    let (conns, children): (Vec<_>, Vec<_>) =
        (0..4).map(|_| doubler()).collect::<Result<Vec<_>, _>>()?.into_iter().unzip();
    let ex = Executor::new()?;
    let start = Instant::now();
    let (total, pooled, timed_out) = ex.block_on(async {
        let conns: Vec<Rc<Async<Connection<u64>>>> =
            conns.into_iter().map(|c| Async::new(c).map(Rc::new)).collect::<Result<_, _>>()?;
        let pooled = pool.apply_async(square, 12);
        let talks: Vec<_> = conns
            .iter()
            .enumerate()
            .map(|(k, conn)| {
                let conn = Rc::clone(conn);
                spawn(async move {
                    let mut sum = 0;
                    for x in (k as u64..1000).step_by(4) {
                        sum += ask(&conn, x).await?;
                    }
                    Ok::<_, mproc_coroutine::ipc::Error>(sum)
                })
            })
            .collect();
        let mut total = 0;
        for talk in talks {
            total += talk.await??;
        }
        let timed_out = timeout(Duration::from_millis(20), conns[0].recv()).await.is_err();
        Ok::<_, Box<dyn std::error::Error>>((total, pooled.await?, timed_out))
    })?;
    println!(
        "   1,000 round trips with 4 children in one thread: sum {total} in {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    println!("   a pool result awaited meanwhile: {pooled}");
    println!("   a recv from a silent child timed out: {timed_out}");
    drop(ex);
    for child in children {
        child.join()?;
    }
    Ok(())
}

/// One question to a doubler child, as a coroutine: while it waits, the others run.
async fn ask(conn: &Async<Connection<u64>>, x: u64) -> Result<u64, mproc_coroutine::ipc::Error> {
    conn.send(&x).await?;
    conn.recv().await
}
