//! `SharedMemory`: anonymous blocks that travel, named blocks that Python opens and makes.

use std::process::{Command, Stdio};

use mproc_ipc::{SharedMemory, duplex};

use crate::support::{DEADLINE, assert_success, in_child, msg};

/// Runs `script` in `python3` with `args`; returns its stdout, asserting it exited 0 and
/// wrote nothing to stderr (no warnings).
fn python(script: &str, args: &[&str]) -> String {
    let child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed: the interop tests need a real CPython");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
    // A watcher kills python past the deadline, so the wait below cannot hang.
    let watcher = in_child(&[&pidfd], || {
        if mproc_ipc::wait(&[&pidfd], Some(DEADLINE)).map_err(msg)?.is_empty() {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        Ok(())
    });
    let out = child.wait_with_output().unwrap();
    assert_success(watcher);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "python failed or warned: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn unique_name(tag: &str) -> String {
    format!("mproc_test_{tag}_{}", std::process::id())
}

#[test]
fn anonymous_block_travels_and_reports_its_size() {
    let block = SharedMemory::new(1000).unwrap();
    assert_eq!((block.size(), block.name()), (1000, None));
    let (a, b) = duplex::<SharedMemory>().unwrap();
    let (done_tx, done_rx) = duplex::<()>().unwrap();
    let child = in_child(&[&b, &done_tx], || {
        let got = b.recv().map_err(msg)?;
        if got.size() != 1000 {
            return Err(format!("size {} arrived", got.size()));
        }
        got.write(990, b"0123456789");
        done_tx.send(&()).map_err(msg)
    });
    drop(b);
    a.send(&block).unwrap();
    done_rx.recv_timeout(DEADLINE).unwrap();
    assert_success(child);
    assert_eq!(&block.to_vec()[990..], b"0123456789");
}

#[test]
fn named_block_is_shared_by_name_and_removed_only_by_unlink() {
    let name = unique_name("named");
    let block = SharedMemory::create(&name, 5000).unwrap();
    assert!(SharedMemory::create(&name, 10).is_err(), "the name is taken");
    let child = in_child(&[], || {
        let other = SharedMemory::open(&name).map_err(msg)?;
        other.write(0, b"from the child");
        Ok(()) // dropping it does not remove the name
    });
    assert_success(child);
    let again = SharedMemory::open(&name).unwrap();
    assert_eq!(again.size(), 5000);
    let mut buf = [0; 14];
    again.read(0, &mut buf);
    assert_eq!(&buf, b"from the child");
    drop(again);
    block.unlink().unwrap();
    assert!(SharedMemory::open(&name).is_err(), "gone after unlink");
    block.write(0, b"still mapped");
    assert!(SharedMemory::create(&name, 0).is_err(), "a size of 0 is refused");
}

/// Python opens our block by name: it sees our bytes and the size we asked (not page-rounded),
/// writes back, prints no warning, and (once its resource tracker is told it does not own the
/// block: Python 3.11 would unlink it at exit, gh-82300) leaves it in place.
#[test]
fn python_attaches_to_a_block_we_made() {
    let name = unique_name("ours");
    let block = SharedMemory::create(&name, 1000).unwrap();
    block.write(0, b"rust wrote this");
    let out = python(
        r#"
import sys
from multiprocessing import shared_memory, resource_tracker
shm = shared_memory.SharedMemory(name=sys.argv[1])
resource_tracker.unregister(shm._name, "shared_memory")
print(shm.size, bytes(shm.buf[:15]).decode())
shm.buf[100:111] = b"python said"
shm.close()
"#,
        &[&name],
    );
    assert_eq!(out.trim(), "1000 rust wrote this");
    let mut buf = [0; 11];
    block.read(100, &mut buf);
    assert_eq!(&buf, b"python said");
    block.unlink().unwrap();
}

/// We open Python's block by name, with its size, and it sees what we write.
#[test]
fn we_attach_to_a_block_python_made() {
    let name = unique_name("theirs");
    let _ = python(
        r#"
import sys
from multiprocessing import shared_memory, resource_tracker
shm = shared_memory.SharedMemory(name=sys.argv[1], create=True, size=777)
resource_tracker.unregister(shm._name, "shared_memory")
shm.buf[:13] = b"python's size"
shm.close()
"#,
        &[&name],
    );
    let block = SharedMemory::open(&name).unwrap();
    assert_eq!(block.size(), 777);
    let mut buf = [0; 13];
    block.read(0, &mut buf);
    assert_eq!(&buf, b"python's size");
    block.write(500, b"rust");
    let out = python(
        r#"
import sys
from multiprocessing import shared_memory, resource_tracker
shm = shared_memory.SharedMemory(name=sys.argv[1])
print(shm.size, bytes(shm.buf[500:504]).decode())
shm.close()
shm.unlink()  # also tells its resource tracker
"#,
        &[&name],
    );
    assert_eq!(out.trim(), "777 rust");
    assert!(SharedMemory::open(&name).is_err(), "python unlinked it");
}

/// Under a file size limit (`ulimit -f`), a block larger than the limit is an error naming
/// it, not a process killed by `SIGXFSZ` (its `ftruncate`), and a named one leaves no object
/// behind; a block within the limit works. (In a forked child, whose limit is its own.)
#[test]
fn a_block_past_the_file_size_limit_is_an_error_not_a_killed_process() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let name = unique_name("fsize");
    assert_success(in_child(&[], || {
        let hard = getrlimit(Resource::Fsize).maximum;
        setrlimit(Resource::Fsize, Rlimit { current: Some(1 << 20), maximum: hard }).map_err(msg)?;
        let names_the_limit = |what: &str, r: mproc_ipc::Result<()>| match r {
            Err(e) if e.to_string().contains("ulimit -f") => Ok(()),
            other => Err(format!("{what}: expected an error naming ulimit -f, got {other:?}")),
        };
        names_the_limit("named", SharedMemory::create(&name, 2 << 20).map(drop))?;
        if SharedMemory::open(&name).is_ok() {
            return Err("the failed create left its object behind".into());
        }
        names_the_limit("anonymous", SharedMemory::new(2 << 20).map(drop))?;
        names_the_limit("array", mproc_ipc::Array::<u8>::zeroed(2 << 20).map(drop))?;
        let block = SharedMemory::create(&name, 1000).map_err(msg)?;
        block.unlink().map_err(msg)?;
        SharedMemory::new(1000).map_err(msg)?;
        Ok(())
    }));
}

/// An anonymous block is a file sealed against shrinking, so a mapping of it never faults: a
/// peer that sends an unsealed file as one (which it could shrink under the receiver's
/// mapping, a `SIGBUS` at the next access) is refused, not mapped.
#[test]
fn an_anonymous_block_whose_file_could_shrink_is_refused() {
    use rustix::fs::MemfdFlags;
    let memfd = rustix::fs::memfd_create("unsealed", MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&memfd, 4096).unwrap();
    let (a, b) = duplex::<()>().unwrap();
    // What a SharedMemory sends: its fd, its name (none: anonymous) and its size.
    let a = a.cast::<(mproc_ipc::Receiver<()>, Option<String>, u64), ()>();
    let b = b.cast::<(), SharedMemory>();
    a.send(&(mproc_ipc::Receiver::from(memfd.try_clone().unwrap()), None, 4096)).unwrap();
    match b.recv_timeout(DEADLINE) {
        Err(e) => assert!(e.to_string().contains("sealed"), "{e}"),
        other => panic!("an unsealed anonymous block was taken: {other:?}"),
    }
}
