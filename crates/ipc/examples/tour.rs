//! A tour of mproc-ipc: typed messages with child processes, waiting on several at once,
//! raw bytes with a CPython peer, and what errors look like.
//!
//! Run it with `cargo run -p mproc-ipc --example tour`.
//!
//! mproc-ipc knows nothing about starting processes (that is `mproc-process`, the next layer
//! up), so the tour starts its children the plain way: it runs this program again with
//! `TOUR_CHILD` set and the child's end of a connection as its stdin.

use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mproc_ipc::{Connection, Error, duplex, pipe, wait};
use serde::{Deserialize, Serialize};

/// What the parent asks a worker.
#[derive(Serialize, Deserialize, Debug)]
enum Job {
    Square(Vec<i64>),
    Sleep(u64),
    Stop,
}

/// What a worker answers.
#[derive(Serialize, Deserialize, Debug)]
struct Reply {
    worker: u32,
    squares: Vec<i64>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("TOUR_CHILD").is_some() {
        return worker();
    }
    println!("mproc-ipc tour\n");
    typed_worker()?;
    several_workers()?;
    python_peer()?;
    errors()?;
    println!("\ntour complete");
    Ok(())
}

/// The child side: serve jobs on stdin (a socket) until told to stop.
fn worker() -> Result<(), Box<dyn std::error::Error>> {
    let stdin = std::io::stdin().as_fd().try_clone_to_owned()?;
    let conn = Connection::<Reply, Job>::from(stdin);
    let me = std::process::id();
    loop {
        match conn.recv()? {
            Job::Square(v) => conn.send(&Reply { worker: me, squares: v.iter().map(|x| x * x).collect() })?,
            Job::Sleep(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                conn.send(&Reply { worker: me, squares: vec![] })?;
            }
            Job::Stop => return Ok(()),
        }
    }
}

fn start_worker() -> Result<(Connection<Job, Reply>, std::process::Child), Box<dyn std::error::Error>> {
    let (ours, theirs) = Connection::<Job, Reply>::pair()?;
    let child = Command::new(std::env::current_exe()?)
        .env("TOUR_CHILD", "1")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .spawn()?;
    Ok((ours, child))
}

fn typed_worker() -> Result<(), Box<dyn std::error::Error>> {
    println!("1. typed values with a child process");
    let (conn, mut child) = start_worker()?;
    let started = Instant::now();
    conn.send(&Job::Square((1..=10).collect()))?;
    let reply = conn.recv()?;
    println!("   worker {} squared 1..=10: {:?}", reply.worker, reply.squares);
    let rounds = 10_000;
    let started_rt = Instant::now();
    for i in 0..rounds {
        conn.send(&Job::Square(vec![i]))?;
        assert_eq!(conn.recv()?.squares, [i * i]);
    }
    let per = started_rt.elapsed() / rounds as u32;
    println!(
        "   {rounds} typed round trips, {per:?} each (child started and served in {:?})",
        started.elapsed()
    );
    conn.send(&Job::Stop)?;
    child.wait()?;
    Ok(())
}

fn several_workers() -> Result<(), Box<dyn std::error::Error>> {
    println!("\n2. waiting on several children at once (multiprocessing.connection.wait)");
    let (slow, mut slow_child) = start_worker()?;
    let (fast, mut fast_child) = start_worker()?;
    slow.send(&Job::Sleep(300))?;
    fast.send(&Job::Sleep(10))?;
    let mut order = Vec::new();
    while order.len() < 2 {
        for i in wait(&[&slow, &fast], Some(Duration::from_secs(30)))? {
            let (name, conn) = if i == 0 { ("slow", &slow) } else { ("fast", &fast) };
            let reply = conn.recv()?;
            println!("   {name} worker {} answered", reply.worker);
            order.push(name);
        }
    }
    println!("   answers came in the order {order:?}");
    for (conn, child) in [(&slow, &mut slow_child), (&fast, &mut fast_child)] {
        conn.send(&Job::Stop)?;
        child.wait()?;
    }
    Ok(())
}

fn python_peer() -> Result<(), Box<dyn std::error::Error>> {
    println!("\n3. raw bytes with a CPython peer (multiprocessing.connection.Connection)");
    let (ours, theirs) = duplex::<()>()?;
    let script = "import os\nfrom multiprocessing.connection import Connection\n\
                  c = Connection(os.dup(0))\nmsg = c.recv_bytes()\n\
                  c.send_bytes(b'python got ' + str(len(msg)).encode() + b' bytes: ' + msg[:12])\n";
    let child =
        Command::new("python3").args(["-c", script]).stdin(Stdio::from(OwnedFd::from(theirs))).spawn();
    let Ok(mut child) = child else {
        println!("   (python3 not found: skipped)");
        return Ok(());
    };
    ours.send_bytes(b"hello from Rust, framed like CPython")?;
    println!("   {}", String::from_utf8_lossy(&ours.recv_bytes_timeout(Duration::from_secs(30))?));
    child.wait()?;
    Ok(())
}

fn errors() -> Result<(), Box<dyn std::error::Error>> {
    println!("\n4. errors are values, never panics or hangs");
    let (mut rx, tx) = pipe::<String>()?;
    match rx.recv_timeout(Duration::from_millis(50)) {
        Err(e @ Error::Timeout) => println!("   silent peer:      {e}"),
        other => println!("   unexpected: {other:?}"),
    }
    rx.set_max_message_size(16);
    tx.send(&"far too long for this receiver".to_string())?;
    tx.send(&"short".to_string())?;
    match rx.recv() {
        Err(e @ Error::TooLarge { .. }) => println!("   oversized:        {e}"),
        other => println!("   unexpected: {other:?}"),
    }
    println!("   and the next one: {:?}", rx.recv()?);
    tx.send_bytes(&[0xff, 0xff, 0xff, 0xff, 0xff])?;
    match rx.recv() {
        Err(e @ Error::Decode(_)) => println!("   wrong type:       {e}"),
        other => println!("   unexpected: {other:?}"),
    }
    drop(tx);
    match rx.recv() {
        Err(e @ Error::Closed) => println!("   peer gone:        {e}"),
        other => println!("   unexpected: {other:?}"),
    }
    Ok(())
}
