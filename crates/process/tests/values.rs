//! A `Fork` child's value comes back through its result slot: every size, every way a child
//! can end, many children at once, and slots reused without a stale value leaking through.

use mproc_process::{Error, Process, ipc};

use crate::{DEADLINE, mproc_init};

/// A value of `len` bytes whose contents tell where they came from.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64).wrapping_mul(31).wrapping_add(seed) as u8).collect()
}

#[test]
fn values_of_every_size_come_back_whole() {
    mproc_init();
    // Around the stack buffers (256 B in the child and in the parent), the slot's page
    // (4 KiB), and far past it.
    for len in [0, 1, 200, 230, 256, 300, 990, 1000, 1024, 2000, 4070, 4072, 4096, 5000, 1 << 20, 9 << 20] {
        let child = Process::spawn(move || pattern(len as u64, len)).unwrap();
        let value = child.join().unwrap_or_else(|e| panic!("{len} bytes: {e}"));
        assert!(value == pattern(len as u64, len), "{len} bytes came back changed");
    }
}

#[test]
fn many_children_at_once_each_get_their_own_value() {
    mproc_init();
    let children: Vec<_> = (0..40u64)
        .map(|i| Process::spawn(move || (i, pattern(i, (i as usize * 397) % 9000))).unwrap())
        .collect();
    // Joined in reverse, so the slots are read in another order than handed out.
    for (i, child) in children.into_iter().enumerate().rev() {
        let (n, bytes) = child.join().unwrap();
        assert_eq!(n, i as u64);
        assert!(bytes == pattern(n, (i * 397) % 9000), "child {i} got another's bytes");
    }
}

#[test]
fn a_reused_slot_never_hands_back_an_earlier_childs_value() {
    mproc_init();
    for round in 0..50u32 {
        let value = Process::spawn(move || round).unwrap().join().unwrap();
        assert_eq!(value, round);
        // The next child most likely gets the same slot, and leaves nothing in it.
        let quiet = Process::spawn(|| -> u32 { std::process::exit(0) }).unwrap();
        match quiet.join() {
            Err(Error::Exited { code: 0, .. }) => {}
            other => panic!("round {round}: a child that exited without a value gave {other:?}"),
        }
        let big = Process::spawn(move || pattern(u64::from(round), 20_000)).unwrap().join().unwrap();
        assert!(big == pattern(u64::from(round), 20_000));
        let killed = Process::spawn(|| -> Vec<u8> {
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
            unreachable!()
        })
        .unwrap();
        assert!(matches!(killed.join(), Err(Error::Signaled { signal: 9, .. })));
    }
}

#[test]
fn join_timeout_then_join_reads_the_value_once() {
    mproc_init();
    let (go_rx, go_tx) = ipc::pipe::<()>().unwrap();
    let mut child = Process::spawn(move || {
        go_rx.recv().unwrap();
        "after the wait".to_string()
    })
    .unwrap();
    assert!(matches!(child.join_timeout(std::time::Duration::from_millis(20)), Err(Error::Timeout)));
    go_tx.send(&()).unwrap();
    assert_eq!(child.join_timeout(DEADLINE).unwrap(), "after the wait");
    assert!(matches!(child.join_timeout(DEADLINE), Err(Error::AlreadyJoined)));
}

#[test]
fn a_value_carrying_an_end_is_a_clear_transfer_error() {
    mproc_init();
    let child = Process::spawn(|| ipc::pipe::<u8>().unwrap()).unwrap();
    match child.join() {
        Err(Error::Transfer { message, .. }) => {
            assert!(message.contains("ipc ends"), "unclear: {message}");
        }
        other => panic!("expected a transfer error, got {other:?}"),
    }
}

/// Under a file size limit (`ulimit -f`), which the memfds behind the slots obey: a process
/// whose limit is below what the slot pages need gets a clear error from the start, a value
/// past the limit comes back as a clear transfer error, and neither is killed by `SIGXFSZ`.
#[test]
fn a_file_size_limit_gives_clear_errors_and_kills_nobody() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    mproc_init();
    // In a forked child, whose slots are its own (made afresh), so the limit touches no
    // other test.
    let mut checked = Process::spawn(|| {
        let hard = getrlimit(Resource::Fsize).maximum;
        let limit =
            |bytes: u64| setrlimit(Resource::Fsize, Rlimit { current: Some(bytes), maximum: hard }).unwrap();
        limit(1 << 20);
        match Process::spawn(|| 1u8) {
            Err(e) => assert!(e.to_string().contains("ulimit -f"), "{e}"),
            Ok(child) => panic!("started under a 1 MiB limit; joined: {:?}", child.join()),
        }
        limit(3 << 20);
        match Process::spawn(|| vec![7u8; 4 << 20]).unwrap().join() {
            Err(Error::Transfer { message, .. }) => assert!(message.contains("ulimit -f"), "{message}"),
            other => panic!("expected a transfer error naming the limit, got {:?}", other.map(|v| v.len())),
        }
        // Under the limit, big values still come back, as many as run at once.
        let children: Vec<_> = (0..4).map(|_| Process::spawn(|| vec![7u8; 512 << 10]).unwrap()).collect();
        for child in children {
            assert_eq!(child.join().unwrap().len(), 512 << 10);
        }
        true
    })
    .unwrap();
    assert!(checked.join_timeout(DEADLINE).unwrap());
}

/// While a long-lived Fork child holds its slot (so the overflow file is never emptied), big
/// values read out of order leave holes the next ones reuse: the file's offsets do not creep
/// up to a finite file size limit. (In a forked child, whose limit and slots are its own.)
#[test]
fn big_values_reuse_the_space_of_those_read_while_a_fork_child_lives_on() {
    const LEN: usize = 300_000;
    let mut child = Process::spawn(|| {
        // Room for the slots' pages (2 MiB) and a few big values at once, far from 40 of them.
        let limit = 4 << 20;
        rustix::process::setrlimit(
            rustix::process::Resource::Fsize,
            rustix::process::Rlimit { current: Some(limit), maximum: Some(limit) },
        )
        .unwrap();
        let (hold_rx, hold_tx) = ipc::pipe::<u8>().unwrap();
        let long_lived = mproc_process::Builder::new()
            .close_in_child(&hold_tx)
            .spawn(move || {
                let _ = hold_rx.recv();
            })
            .unwrap();
        let mut failures = Vec::new();
        for round in 0..20u64 {
            // The first takes the lower range and is read first: the second's range, read
            // next, was the last taken, and the counter comes back only to the first's end.
            let first = Process::spawn(move || pattern(round, LEN)).unwrap();
            ipc::wait(&[&first.sentinel()], Some(DEADLINE)).unwrap();
            let second = Process::spawn(move || pattern(round + 100, LEN)).unwrap();
            ipc::wait(&[&second.sentinel()], Some(DEADLINE)).unwrap();
            for (child, seed) in [(first, round), (second, round + 100)] {
                match child.join() {
                    Ok(value) if value == pattern(seed, LEN) => {}
                    Ok(_) => failures.push(format!("round {round}: a value came back changed")),
                    Err(e) => failures.push(format!("round {round}: {e}")),
                }
            }
        }
        drop(hold_tx);
        long_lived.join().unwrap();
        failures
    })
    .unwrap();
    let failures = child.join_timeout(DEADLINE).unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A value whose encoding counts 2^60 elements of no bytes: ten bytes on a `Fork` child's
/// slot page (what a stray write there could leave too).
struct CountsWithoutElements;

impl serde::Serialize for CountsWithoutElements {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        serializer.serialize_seq(Some(1 << 60))?.end()
    }
}

impl<'de> serde::Deserialize<'de> for CountsWithoutElements {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <Vec<()>>::deserialize(deserializer).map(|_| CountsWithoutElements)
    }
}

#[test]
fn a_fork_childs_value_is_decoded_with_the_ipc_limits() {
    mproc_init();
    let child = mproc_process::Builder::new()
        .start_method(mproc_process::StartMethod::Fork)
        .spawn(|| CountsWithoutElements)
        .unwrap();
    // The parent decodes in a thread, so that a decode that never ends fails the test.
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || done_tx.send(child.join().map(|_| ())));
    match done.recv_timeout(DEADLINE) {
        Ok(Err(Error::Transfer { message, .. })) => {
            assert!(message.contains("elements"), "unclear: {message}");
            assert_eq!(message.matches("cannot decode").count(), 1, "said twice: {message}");
        }
        Ok(other) => panic!("expected a transfer error, got {other:?}"),
        Err(_) => panic!("the parent was still decoding the child's value after {DEADLINE:?}"),
    }
}
