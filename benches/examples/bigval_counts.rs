//! Deterministic counts for the bigval bench: move one large `Vec<u8>` `N` times, so that
//! `strace -c -f` over the run, divided by `N`, gives the system calls of one value, and the
//! page faults and CPU time of both processes (`/proc/PID/stat`) per value are printed.
//!
//! ```text
//! cargo build --release -p mproc-benches --example bigval_counts
//! target/release/examples/bigval_counts duplex 200 5
//! strace -f -c target/release/examples/bigval_counts duplex 200 5
//! ```
//!
//! Kinds: `memcpy_fresh` (a clone, dropped: the floor), `duplex` (a typed send over a Unix
//! socket to a Fork child, which receives it and answers one byte), `pool` (`apply` of a
//! function returning its argument, with the argument's clone, on 1 worker), `bytes_pipe`
//! (the pool's floor: `send_bytes` there and back through pipes to a Fork child).

use std::hint::black_box;

use mproc_ipc::{Connection, Receiver, Sender};
use mproc_process::Process;

/// Minor faults and CPU seconds (user + system) of process `pid` so far.
fn counts(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = &stat[stat.rfind(')').map_or(0, |at| at + 2)..];
    let fields: Vec<f64> = rest.split(' ').map(|f| f.parse().unwrap_or(0.0)).collect();
    // minflt is field 10, utime 14, stime 15 (from field 3 on here).
    (fields[10 - 3], (fields[14 - 3] + fields[15 - 3]) / 100.0)
}

/// This process's descendants (`/proc/PID/task/*/children`, recursively).
fn descendants() -> Vec<u32> {
    let mut pids = Vec::new();
    let mut todo = vec![std::process::id()];
    while let Some(pid) = todo.pop() {
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten() {
            let list = std::fs::read_to_string(task.unwrap().path().join("children")).unwrap_or_default();
            for child in list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
                pids.push(child);
                todo.push(child);
            }
        }
    }
    pids
}

fn echo(v: Vec<u8>) -> Vec<u8> {
    v
}

fn main() {
    mproc_pool::process::init();
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "duplex".into());
    let mib: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(200);
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(5);
    let size = mib << 20;
    let value: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut peers: Vec<u32> = Vec::new();
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
    let mut stop: Box<dyn FnOnce()> = Box::new(|| ());
    let mut one: Box<dyn FnMut()> = match kind.as_str() {
        "memcpy_fresh" => Box::new(|| drop(black_box(black_box(&value).clone()))),
        "duplex" => {
            let (ours, theirs) = Connection::<Vec<u8>, u8>::pair().unwrap();
            let mut theirs = Some(theirs);
            let child = Process::spawn(move || {
                let mut conn: Connection<u8, Vec<u8>> = theirs.take().unwrap();
                conn.set_max_message_size(usize::MAX);
                // An empty value says stop (the child holds our end too: no EOF comes).
                while conn.recv().is_ok_and(|v| !v.is_empty()) {
                    conn.send(&1).unwrap();
                }
            })
            .unwrap();
            peers.push(child.pid());
            keep.push(Box::new(child));
            let ours = std::rc::Rc::new(ours);
            let last = ours.clone();
            stop = Box::new(move || last.send(&Vec::new()).unwrap());
            Box::new(move || {
                ours.send(black_box(&value)).unwrap();
                assert_eq!(ours.recv().unwrap(), 1);
            })
        }
        "bytes_pipe" => {
            let (peer_rx, tx) = mproc_ipc::pipe::<()>().unwrap();
            let (rx, peer_tx) = mproc_ipc::pipe::<()>().unwrap();
            let (mut peer_rx, mut peer_tx) = (Some(peer_rx), Some(peer_tx));
            let child = Process::spawn(move || {
                let (rx, tx): (Receiver<()>, Sender<()>) = (peer_rx.take().unwrap(), peer_tx.take().unwrap());
                while let Ok(bytes) = rx.recv_bytes().map(|b| Some(b).filter(|b| !b.is_empty())) {
                    let Some(bytes) = bytes else { break };
                    tx.send_bytes(&bytes).unwrap();
                }
            })
            .unwrap();
            peers.push(child.pid());
            keep.push(Box::new(child));
            let tx = std::rc::Rc::new(tx);
            let last = tx.clone();
            stop = Box::new(move || last.send_bytes(&[]).unwrap());
            Box::new(move || {
                tx.send_bytes(black_box(&value)).unwrap();
                black_box(rx.recv_bytes().unwrap());
            })
        }
        "pool" => {
            let pool = mproc_pool::Pool::new(1).unwrap();
            assert_eq!(pool.apply(echo, vec![1]).unwrap(), vec![1]);
            peers.extend(descendants());
            Box::new(move || assert_eq!(pool.apply(echo, black_box(value.clone())).unwrap().len(), size))
        }
        other => panic!("unknown kind {other}"),
    };
    one();
    let me = std::process::id();
    let before: Vec<(f64, f64)> = std::iter::once(me).chain(peers.iter().copied()).map(counts).collect();
    let start = std::time::Instant::now();
    for _ in 0..n {
        one();
    }
    let wall = start.elapsed().as_secs_f64() / n as f64;
    let after: Vec<(f64, f64)> = std::iter::once(me).chain(peers.iter().copied()).map(counts).collect();
    let per = |i: usize| ((after[i].0 - before[i].0) / n as f64, (after[i].1 - before[i].1) / n as f64);
    let (f, c) = per(0);
    print!(
        "{kind} {mib} MiB x{n}: wall {:.1} ms; this process {f:.0} faults, {:.1} ms CPU",
        wall * 1e3,
        c * 1e3
    );
    for i in 1..after.len() {
        let (f, c) = per(i);
        print!("; peer {f:.0} faults, {:.1} ms CPU", c * 1e3);
    }
    println!();
    drop(one);
    stop();
    drop(keep);
}
