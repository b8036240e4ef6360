//! Large values: bytes and floats at the speed of their bytes, and out of line (a sealed
//! memfd passed with the frame) on a duplex connection. Bad memfds from a peer are errors.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};

use mproc_ipc::{Connection, Error, Sender, duplex, pipe};
use serde::{Deserialize, Serialize};

use crate::support::{DEADLINE, assert_success, in_child, msg};

/// Past the out-of-line threshold (4 MiB).
const BIG: usize = 6 << 20;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Frame {
    name: String,
    pixels: Vec<u8>,
    samples: Vec<f64>,
    tags: Vec<u32>,
}

fn frame_value(n: usize) -> Frame {
    Frame {
        name: "é".repeat(n / 64),
        pixels: (0..n).map(|i| (i * 7) as u8).collect(),
        samples: (0..n / 8).map(|i| i as f64 * 0.5).collect(),
        tags: (0..1000).collect(),
    }
}

#[test]
fn a_large_value_crosses_a_duplex_as_a_small_frame_and_a_pipe_whole() {
    let value = frame_value(BIG);
    let (a, b) = duplex::<Frame>().unwrap();
    a.send(&value).unwrap();
    assert_eq!(b.recv().unwrap(), value);
    // What travelled on the socket: a descriptor of a few bytes, not the value.
    a.send(&value).unwrap();
    let frame = b.recv_bytes_timeout(DEADLINE).unwrap();
    assert!(frame.len() < 64, "{} bytes went through the socket", frame.len());

    let (rx, tx) = pipe::<Frame>().unwrap();
    let sender = std::thread::spawn(move || {
        tx.send(&frame_value(BIG)).unwrap();
        tx.send(&frame_value(BIG)).unwrap();
    });
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), value);
    let frame = rx.recv_bytes_timeout(DEADLINE).unwrap();
    assert_eq!(frame, postcard::to_allocvec(&value).unwrap(), "a pipe carries the postcard bytes");
    sender.join().unwrap();
}

/// Bytes and, at the end, a string shown through `collect_str` (as chrono's dates are).
#[derive(Debug, PartialEq, Deserialize)]
struct Padded(Vec<u8>, String);

impl Serialize for Padded {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        struct Shown<'a>(&'a str);
        impl Serialize for Shown<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self.0)
            }
        }
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(&self.0)?;
        t.serialize_element(&Shown(&self.1))?;
        t.end()
    }
}

/// A `collect_str` that crosses the out-of-line threshold goes out of line like any value
/// (it used to fail with postcard's `CollectStrError`).
#[test]
fn a_string_shown_across_the_out_of_line_threshold_crosses() {
    let (a, b) = duplex::<Padded>().unwrap();
    let value = Padded(vec![7; (4 << 20) - 50], "shown through collect_str ".repeat(8));
    a.send(&value).unwrap();
    assert_eq!(b.recv_timeout(DEADLINE).unwrap(), value);
}

#[test]
fn a_large_value_reaches_another_process_with_the_ends_inside_it() {
    let (ours, theirs) = duplex::<(Vec<u8>, Connection<u64>)>().unwrap();
    let child = in_child(&[&theirs], || {
        let (bytes, end) = theirs.recv_timeout(DEADLINE).map_err(msg)?;
        if bytes.len() != BIG || bytes.iter().enumerate().any(|(i, &b)| b != i as u8) {
            return Err("the bytes changed on the way".into());
        }
        end.send(&(bytes.len() as u64)).map_err(msg)
    });
    drop(theirs);
    let (here, there) = duplex::<u64>().unwrap();
    ours.send(&((0..BIG).map(|i| i as u8).collect(), there)).unwrap();
    assert_eq!(here.recv_timeout(DEADLINE).unwrap(), BIG as u64);
    assert_success(child);
}

#[test]
fn under_a_small_file_size_limit_a_large_value_is_copied_inline() {
    let (ours, theirs) = duplex::<Vec<f64>>().unwrap();
    let child = in_child(&[&theirs], || {
        // A memfd past this would kill the sender with SIGXFSZ.
        let limit = rustix::process::Rlimit { current: Some(1 << 20), maximum: None };
        rustix::process::setrlimit(rustix::process::Resource::Fsize, limit).map_err(msg)?;
        let floats: Vec<f64> = (0..BIG / 8).map(|i| i as f64).collect();
        theirs.send(&floats).map_err(msg)?;
        theirs.send(&floats).map_err(msg)
    });
    drop(theirs);
    let floats = ours.recv_timeout(DEADLINE).unwrap();
    assert_eq!(floats.len(), BIG / 8);
    assert!(floats.iter().enumerate().all(|(i, &f)| f == i as f64));
    assert!(ours.recv_bytes_timeout(DEADLINE).unwrap().len() > BIG, "the second went inline");
    assert_success(child);
}

#[test]
fn a_receiver_gone_before_the_value_is_read_frees_it_and_the_sender_sees_closed() {
    let (a, b) = duplex::<Vec<u8>>().unwrap();
    a.send(&vec![1; BIG]).unwrap(); // in flight: the memfd is in b's queue
    drop(b); // the kernel closes the memfd with the queue
    assert!(matches!(a.send(&vec![1; BIG]), Err(Error::Closed)));
    assert!(matches!(a.recv_timeout(DEADLINE), Err(Error::Closed)));
}

/// The 24 payload bytes of a descriptor announcing `len` (what `descriptor` frames).
fn descriptor_payload(len: u64) -> [u8; 24] {
    let mut payload = [0; 24];
    payload.copy_from_slice(&descriptor(len)[4..]);
    payload
}

#[test]
fn a_value_whose_bytes_look_like_a_descriptor_crosses_a_pipe_and_a_duplex() {
    // A `[u8; 24]` encodes as its 24 bytes: a value can spell a descriptor exactly.
    let value = descriptor_payload(100);
    let (rx, tx) = pipe::<[u8; 24]>().unwrap();
    tx.send(&value).unwrap();
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), value);
    let (a, b) = duplex::<[u8; 24]>().unwrap();
    a.send(&value).unwrap();
    assert_eq!(b.recv_timeout(DEADLINE).unwrap(), value);
}

#[test]
fn a_value_with_an_end_whose_bytes_look_like_a_descriptor_crosses_a_duplex() {
    // Magic, seven bytes, and the end (its index, one zero byte): the 24 bytes of a
    // descriptor, sent with an fd, as an out-of-line value is.
    type Spelled = ([u8; 16], [u8; 7], Sender<u8>);
    let payload = descriptor_payload(100);
    let (magic, rest) = payload.split_at(16);
    assert_eq!(rest[7], 0, "the announced length's top byte is the end's index");
    let (rx, tx) = pipe::<u8>().unwrap();
    let (a, b) = duplex::<Spelled>().unwrap();
    a.send(&(magic.try_into().unwrap(), rest[..7].try_into().unwrap(), tx)).unwrap();
    let (m, r, end) = b.recv_timeout(DEADLINE).unwrap();
    assert_eq!((&m[..], &r[..]), (magic, &rest[..7]));
    end.send(&9).unwrap();
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), 9);
}

// ---- a peer that sends bad memfds ---------------------------------------------------------

/// The payload our sender writes for a value of `len` bytes out of line (see `outofline.rs`).
fn descriptor(len: u64) -> Vec<u8> {
    let mut payload = b"\x00mproc:memfd\x9b\x3e\x71\xc4".to_vec();
    payload.extend_from_slice(&len.to_le_bytes());
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    frame
}

/// Writes `bytes` on `sock` with `fds` attached.
fn send_with_fds(sock: &OwnedFd, bytes: &[u8], fds: &[&OwnedFd]) {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(borrowed.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
    }
    let n = rustix::net::sendmsg(sock, &[std::io::IoSlice::new(bytes)], &mut control, SendFlags::empty())
        .unwrap();
    assert_eq!(n, bytes.len());
}

/// A socket pair: our typed end, and a bare socket to write anything on.
fn raw_peer() -> (Connection<u8, Vec<u8>>, OwnedFd) {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
    let (a, b) = socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None).unwrap();
    (Connection::from(a), b)
}

/// A memfd holding the postcard encoding of `vec![7u8; n]`, with `seals`.
fn memfd(n: usize, seals: rustix::fs::SealFlags) -> (OwnedFd, u64) {
    use rustix::fs::MemfdFlags;
    let bytes = postcard::to_allocvec(&vec![7u8; n]).unwrap();
    let fd = rustix::fs::memfd_create("bad", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    let mut at = &bytes[..];
    while !at.is_empty() {
        let k = rustix::io::write(&fd, at).unwrap();
        at = &at[k..];
    }
    rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    (fd, bytes.len() as u64)
}

/// Each bad frame is an `OutOfLine` (or `TooLarge`) error, and the good value after it reads.
fn assert_refused_then_usable(ours: &Connection<u8, Vec<u8>>, theirs: &OwnedFd, expect: &str) {
    let err = ours.recv_timeout(DEADLINE).unwrap_err();
    assert!(err.to_string().contains(expect), "{err}");
    let (good, len) = memfd(10, rustix::fs::SealFlags::WRITE | rustix::fs::SealFlags::SHRINK);
    send_with_fds(theirs, &descriptor(len), &[&good]);
    assert_eq!(ours.recv_timeout(DEADLINE).unwrap(), vec![7u8; 10]);
}

#[test]
fn an_unsealed_memfd_is_refused() {
    use rustix::fs::SealFlags;
    let (ours, theirs) = raw_peer();
    for seals in
        [SealFlags::empty(), SealFlags::SHRINK, SealFlags::WRITE, SealFlags::FUTURE_WRITE | SealFlags::SHRINK]
    {
        let (fd, len) = memfd(100, seals);
        send_with_fds(&theirs, &descriptor(len), &[&fd]);
        assert_refused_then_usable(&ours, &theirs, "not sealed against writing and shrinking");
        assert!(matches!(ours.recv_timeout(std::time::Duration::ZERO), Err(Error::Timeout)));
    }
}

#[test]
fn a_short_memfd_is_refused() {
    use rustix::fs::SealFlags;
    let (ours, theirs) = raw_peer();
    let (fd, len) = memfd(100, SealFlags::WRITE | SealFlags::SHRINK);
    send_with_fds(&theirs, &descriptor(len + 4096 * 3), &[&fd]);
    assert_refused_then_usable(&ours, &theirs, "not the 12389 announced");
    send_with_fds(&theirs, &descriptor(0), &[&fd]);
    assert_refused_then_usable(&ours, &theirs, "not the 0 announced");
}

#[test]
fn a_file_that_is_not_a_memfd_is_refused_and_no_file_is_no_descriptor() {
    let (ours, theirs) = raw_peer();
    let (r, _w) = rustix::pipe::pipe().unwrap();
    send_with_fds(&theirs, &descriptor(10), &[&r]);
    assert_refused_then_usable(&ours, &theirs, "not a sealable memfd");
    // Without an fd it is no descriptor but a value (here an empty `Vec` and 23 bytes more).
    send_with_fds(&theirs, &descriptor(10), &[]);
    let got = ours.recv_timeout(DEADLINE);
    assert!(!matches!(got, Err(Error::OutOfLine(_))), "{got:?}");
    let (good, len) = memfd(10, rustix::fs::SealFlags::WRITE | rustix::fs::SealFlags::SHRINK);
    send_with_fds(&theirs, &descriptor(len), &[&good]);
    assert_eq!(ours.recv_timeout(DEADLINE).unwrap(), vec![7u8; 10]);
}

#[test]
fn a_memfd_past_the_message_limit_is_refused_before_it_is_mapped() {
    use rustix::fs::SealFlags;
    let (mut ours, theirs) = raw_peer();
    ours.set_max_message_size(1000);
    // A sparse file of 1 TiB: mapping it populated would allocate it all.
    let fd = rustix::fs::memfd_create(
        "huge",
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    rustix::fs::ftruncate(&fd, 1 << 40).unwrap();
    rustix::fs::fcntl_add_seals(&fd, SealFlags::WRITE | SealFlags::SHRINK).unwrap();
    send_with_fds(&theirs, &descriptor(1 << 40), &[&fd]);
    let err = ours.recv_timeout(DEADLINE).unwrap_err();
    assert!(matches!(err, Error::TooLarge { len, max: 1000 } if len == 1 << 40), "{err}");
    let (good, len) = memfd(10, SealFlags::WRITE | SealFlags::SHRINK);
    send_with_fds(&theirs, &descriptor(len), &[&good]);
    assert_eq!(ours.recv_timeout(DEADLINE).unwrap(), vec![7u8; 10]);
}

#[test]
fn a_memfd_holding_another_type_is_a_decode_error() {
    use rustix::fs::SealFlags;
    let (ours, theirs) = raw_peer();
    let (fd, len) = memfd(10, SealFlags::WRITE | SealFlags::SHRINK);
    // Announced one byte short: the encoding is cut.
    send_with_fds(&theirs, &descriptor(len - 1), &[&fd]);
    assert!(matches!(ours.recv_timeout(DEADLINE), Err(Error::Decode(_))));
}

/// Encodes as `base + step * (times asked)` bytes (`base` 2 MiB unless said): another
/// length each time.
struct Shifty {
    asked: std::cell::Cell<i64>,
    step: i64,
    base: i64,
}

impl Serialize for Shifty {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let n = self.asked.get();
        self.asked.set(n + 1);
        vec![5u8; (self.base + self.step * n * 100_000) as usize].serialize(serializer)
    }
}

#[test]
fn a_value_that_encodes_otherwise_the_second_time_fails_and_the_stream_stays_in_step() {
    let (rx, tx) = pipe::<Vec<u8>>().unwrap();
    let reader = std::thread::spawn(move || {
        // Whatever went of the bad values (nothing, or a whole frame padded with zeros), then
        // the good one, whole.
        (0..3).map(|_| rx.recv_timeout(DEADLINE)).find_map(|got| got.ok().filter(|v| v.len() == 10))
    });
    let tx = tx.cast::<Shifty>();
    for step in [1, -1] {
        let shifty = Shifty { asked: std::cell::Cell::new(0), step, base: 2 << 20 };
        assert!(matches!(tx.send(&shifty), Err(Error::Encode(_))), "step {step}");
    }
    tx.cast::<Vec<u8>>().send(&vec![9; 10]).unwrap();
    assert_eq!(reader.join().unwrap(), Some(vec![9; 10]), "the frame after the bad ones reads");
}

#[test]
fn a_value_past_the_threshold_that_encodes_otherwise_fails_on_a_duplex_and_the_receiver_is_told() {
    // The memfd goes first (early: a value that is mostly one run of bytes) and is written as
    // the value is encoded a second time, after its length was counted: a value that comes
    // out longer or shorter is an error for both ends, and the stream stays in step.
    let (a, b) = duplex::<Vec<u8>>().unwrap();
    let shifty = a.cast::<Shifty, Vec<u8>>();
    for step in [1, -1] {
        let value = Shifty { asked: std::cell::Cell::new(0), step, base: BIG as i64 };
        assert!(matches!(shifty.send(&value), Err(Error::Encode(_))), "step {step}");
        let err = b.recv_timeout(DEADLINE).unwrap_err();
        assert!(err.to_string().contains("failed to write the value whole"), "{err}");
    }
    let a = shifty.cast::<Vec<u8>, Vec<u8>>();
    a.send(&vec![9; BIG]).unwrap();
    assert_eq!(b.recv_timeout(DEADLINE).unwrap(), vec![9; BIG], "the frame after the bad ones reads");
}

/// The line of `/proc/self/maps` whose range holds `at`.
fn mapping_of(at: *const u8) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let at = at as usize;
    maps.lines()
        .find(|line| {
            let range = line.split(' ').next().unwrap();
            let (lo, hi) = range.split_once('-').unwrap();
            let (lo, hi) = (usize::from_str_radix(lo, 16).unwrap(), usize::from_str_radix(hi, 16).unwrap());
            (lo..hi).contains(&at)
        })
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_large_carried_value_is_decoded_from_where_it_arrived_not_copied_out() {
    let value = frame_value(BIG);
    let (a, b) = duplex::<mproc_ipc::Carried>().unwrap();
    a.send(&mproc_ipc::Carried::encode(&value).unwrap()).unwrap();
    let got = b.recv_timeout(DEADLINE).unwrap();
    let line = mapping_of(got.bytes().unwrap().as_ptr());
    assert!(line.contains("mproc-value"), "the bytes are not in the value's memfd: {line}");
    assert_eq!(got.decode::<Frame>().unwrap(), value);
    // Kept while the Carried lives (a clone shares it), unmapped once it is gone.
    let at = got.bytes().unwrap().as_ptr();
    let copy = got.clone();
    drop(got);
    assert_eq!(copy.decode::<Frame>().unwrap(), value);
    drop(copy);
    assert!(!mapping_of(at).contains("mproc-value"), "the mapping outlived the value");

    // A small Carried inside a large value is copied out: it keeps no large mapping alive.
    let (a, b) = duplex::<(Vec<u8>, mproc_ipc::Carried)>().unwrap();
    a.send(&(vec![1; BIG], mproc_ipc::Carried::encode(&7u32).unwrap())).unwrap();
    let (_, small) = b.recv_timeout(DEADLINE).unwrap();
    assert!(!mapping_of(small.bytes().unwrap().as_ptr()).contains("mproc-value"));
    assert_eq!(small.decode::<u32>().unwrap(), 7);
}

// ---- large values over a pipe, decoded as they are read --------------------------------

/// Everything a decode from the stream meets: bytes, floats and a long string read straight
/// into their values, integers (all the rest in one piece), many short strings (more items
/// cut by reads than the decoder has spare buffers), and small fields between them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Mixed {
    id: u32,
    text: String,
    pixels: Vec<u8>,
    tail: (u8, i64),
    samples: Vec<f64>,
    words: Vec<String>,
    ints: Vec<u64>,
    after: Option<Box<Mixed>>,
}

fn mixed(n: usize, words: usize) -> Mixed {
    Mixed {
        id: n as u32,
        text: "ü".repeat(n / 2),
        pixels: (0..n).map(|i| (i * 13) as u8).collect(),
        tail: (7, -3),
        samples: (0..n / 8 + 3).map(|i| i as f64 * 0.25).collect(),
        words: (0..words).map(|i| format!("word {i} ").repeat(1 + i % 20)).collect(),
        ints: (0..n as u64 / 64).map(|i| i * i * 1_000_003).collect(),
        after: (n > 0).then(|| Box::new(mixed(n / 3, 3))),
    }
}

/// Sizes around the thresholds: below decoding as read (64 KiB), past it, past streaming on
/// the sending side (1 MiB), past a reservation step (16 MiB).
const SIZES: [usize; 5] = [1000, 70 << 10, (1 << 20) + 5, 3 << 20, 17 << 20];

#[test]
fn large_values_decode_as_they_are_read_from_a_pipe() {
    let (rx, tx) = pipe::<Mixed>().unwrap();
    let child = in_child(&[&rx], || {
        for (k, n) in SIZES.into_iter().enumerate() {
            // A blocking receive: the one that decodes as it reads (the child is waited for
            // with a deadline).
            let got = rx.recv().map_err(msg)?;
            if got != mixed(n, 30_000 * (k % 2)) {
                return Err(format!("value {k} ({n} bytes) changed on the way"));
            }
            if got.pixels.capacity() != got.pixels.len() || got.samples.capacity() != got.samples.len() {
                return Err(format!("value {k}: vectors allocated past their length"));
            }
        }
        Ok(())
    });
    drop(rx);
    let sender = std::thread::spawn(move || {
        for (k, n) in SIZES.into_iter().enumerate() {
            tx.send(&mixed(n, 30_000 * (k % 2)))?;
        }
        Ok::<_, Error>(())
    });
    assert_success(child);
    sender.join().unwrap().unwrap();

    // 200 MiB: many reservation steps.
    let (rx, tx) = pipe::<Vec<u8>>().unwrap();
    let child = in_child(&[&rx], || {
        let bytes = rx.recv().map_err(msg)?;
        if bytes.len() != 200 << 20 || bytes.iter().enumerate().any(|(i, &b)| b != i as u8) {
            return Err("the 200 MiB Vec<u8> changed on the way".into());
        }
        Ok(())
    });
    drop(rx);
    let sender = std::thread::spawn(move || tx.send(&(0..200 << 20).map(|i| i as u8).collect()));
    assert_success(child);
    sender.join().unwrap().unwrap();
}

#[test]
fn a_bad_large_frame_is_an_error_and_the_next_frame_reads() {
    let (rx, tx) = pipe::<Vec<u8>>().unwrap();
    let child = in_child(&[&rx], || {
        let expect = |k: usize, got: Result<Vec<u8>, Error>, ok: bool| match got {
            Ok(v) if ok && v == [k as u8; 3] => Ok(()),
            Err(Error::Decode(_) | Error::Mismatch(_)) if !ok => Ok(()),
            other => Err(format!("frame {k}: {other:?}")),
        };
        for k in 0..3 {
            // A bad large frame, then a good small one.
            expect(k, rx.recv(), false)?;
            expect(k, rx.recv(), true)?;
        }
        match rx.recv() {
            Err(Error::Truncated { expected, received }) if received < expected => Ok(()),
            other => Err(format!("a frame cut short by the end of the stream: {other:?}")),
        }
    });
    drop(rx);
    let big = |n: usize| postcard::to_allocvec(&vec![1u8; n]).unwrap();
    let mut trailing = big(1 << 20);
    trailing.extend_from_slice(&[0; 100]);
    let mut short = big(1 << 20);
    short.truncate(short.len() - 100);
    let wide = postcard::to_allocvec(&vec![u64::MAX; 1 << 17]).unwrap();
    let raw = tx.cast::<()>();
    let sender = std::thread::spawn(move || {
        // Bytes past the value; a length past the payload; integers where bytes were
        // expected (as many bytes as integers read, the rest left over).
        for (k, bad) in [trailing, short, wide].into_iter().enumerate() {
            raw.send_bytes(&bad)?;
            raw.send_bytes(&postcard::to_allocvec(&vec![k as u8; 3]).unwrap())?;
        }
        // A header announcing 2 MiB, and 1 MiB, then the end of the stream.
        let mut cut = ((2u32 << 20).to_be_bytes()).to_vec();
        cut.extend_from_slice(&big(1 << 20));
        rustix::io::write(&raw, &cut).map(drop).map_err(|e| Error::Io(std::io::Error::from(e)))
    });
    assert_success(child);
    sender.join().unwrap().unwrap();
}

// ---- values sent early: the memfd first, then the value written, then an end frame ---------

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Around {
    head: String,
    samples: Vec<f64>,
    tail: u32,
}

#[test]
fn values_mostly_one_run_cross_a_duplex_early_within_and_between_processes() {
    // A run past half the value, with bytes before and after it, of each element size.
    let around =
        Around { head: "é".repeat(100), samples: (0..BIG / 8).map(|i| i as f64 * 0.25).collect(), tail: 7 };
    let (a, b) = duplex::<Around>().unwrap();
    a.send(&around).unwrap();
    assert_eq!(b.recv_timeout(DEADLINE).unwrap(), around);
    let floats: Vec<f32> = (0..BIG / 4).map(|i| i as f32).collect();
    let (a, b) = duplex::<Vec<f32>>().unwrap();
    a.send(&floats).unwrap();
    assert_eq!(b.recv_timeout(DEADLINE).unwrap(), floats);
    let (ours, theirs) = duplex::<Vec<u8>>().unwrap();
    let child = in_child(&[&theirs], || {
        let bytes = theirs.recv_timeout(DEADLINE).map_err(msg)?;
        theirs.send(&bytes).map_err(msg)
    });
    drop(theirs);
    let bytes: Vec<u8> = (0..BIG).map(|i| (i * 13) as u8).collect();
    ours.send(&bytes).unwrap();
    assert_eq!(ours.recv_timeout(DEADLINE).unwrap(), bytes);
    assert_success(child);
}

/// The encoding of `vec![7u8; n]`, and where its bytes start.
fn sevens(n: usize) -> (Vec<u8>, u64) {
    let bytes = postcard::to_allocvec(&vec![7u8; n]).unwrap();
    let at = (bytes.len() - n) as u64;
    (bytes, at)
}

/// An early descriptor frame: a value of `len` bytes whose run of `bytes` lies at `offset`,
/// in elements of `elem` bytes (what our sender writes, see `outofline.rs`).
fn early(len: u64, offset: u64, bytes: u64, elem: u64) -> Vec<u8> {
    let mut payload = b"\x00mproc:memfd>\x5a\x2d\xe1".to_vec();
    for field in [len, offset, bytes, elem] {
        payload.extend_from_slice(&field.to_le_bytes());
    }
    framed(payload)
}

/// The frame that ends an early value: its file is `whole` and sealed, or the sender failed.
fn early_end(whole: bool) -> Vec<u8> {
    let mut payload = b"\x00mproc:memfd<\xa5\xd2\x1e".to_vec();
    payload.push(u8::from(whole));
    framed(payload)
}

fn framed(payload: Vec<u8>) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    frame
}

/// A memfd, writable and unsealed.
fn open_memfd() -> OwnedFd {
    use rustix::fs::MemfdFlags;
    rustix::fs::memfd_create("early", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap()
}

fn write_file(fd: &OwnedFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let k = rustix::io::write(fd, bytes).unwrap();
        bytes = &bytes[k..];
    }
}

const N: usize = 3 << 20; // a run past `outofline::PREPARED_MIN`: its `Vec` is made ready

#[test]
fn an_early_value_waits_past_a_timeout_and_the_next_receive_gets_it() {
    use rustix::fs::SealFlags;
    let (ours, theirs) = raw_peer();
    let (bytes, at) = sevens(N);
    let file = open_memfd();
    send_with_fds(&theirs, &early(bytes.len() as u64, at, N as u64, 1), &[&file]);
    // The value is not written yet: a receive times out and keeps it; so does a wait.
    assert!(matches!(ours.recv_timeout(std::time::Duration::ZERO), Err(Error::Timeout)));
    assert!(!mproc_ipc::wait_one(&ours, Some(std::time::Duration::ZERO)).unwrap());
    write_file(&file, &bytes);
    rustix::fs::fcntl_add_seals(&file, SealFlags::WRITE | SealFlags::SHRINK).unwrap();
    send_with_fds(&theirs, &early_end(true), &[]);
    assert!(mproc_ipc::wait_one(&ours, Some(DEADLINE)).unwrap());
    assert_eq!(ours.recv_timeout(DEADLINE).unwrap(), vec![7u8; N]);
    assert_refused_then_usable_after(&ours, &theirs, None);
}

/// The good value after a refused one reads (see [`assert_refused_then_usable`]); `expect`:
/// the refusal to read first, if any.
fn assert_refused_then_usable_after(ours: &Connection<u8, Vec<u8>>, theirs: &OwnedFd, expect: Option<&str>) {
    match expect {
        Some(expect) => assert_refused_then_usable(ours, theirs, expect),
        None => {
            let (good, len) = memfd(10, rustix::fs::SealFlags::WRITE | rustix::fs::SealFlags::SHRINK);
            send_with_fds(theirs, &descriptor(len), &[&good]);
            assert_eq!(ours.recv_timeout(DEADLINE).unwrap(), vec![7u8; 10]);
        }
    }
}

#[test]
fn an_early_value_its_sender_failed_to_write_is_an_error_and_the_stream_stays_in_step() {
    let (ours, theirs) = raw_peer();
    let (bytes, at) = sevens(N);
    let file = open_memfd();
    send_with_fds(&theirs, &early(bytes.len() as u64, at, N as u64, 1), &[&file]);
    write_file(&file, &bytes[..bytes.len() / 2]);
    send_with_fds(&theirs, &early_end(false), &[]);
    assert_refused_then_usable_after(&ours, &theirs, Some("the sender failed to write the value whole"));
}

#[test]
fn an_early_value_whose_file_is_unsealed_or_short_is_refused() {
    use rustix::fs::SealFlags;
    let (ours, theirs) = raw_peer();
    let (bytes, at) = sevens(N);
    for (seals, cut, expect) in [
        (SealFlags::SHRINK, 0, "not sealed against writing and shrinking"),
        (SealFlags::WRITE | SealFlags::SHRINK, 1, "not the 3145732 announced"),
    ] {
        let file = open_memfd();
        send_with_fds(&theirs, &early(bytes.len() as u64, at, N as u64, 1), &[&file]);
        write_file(&file, &bytes[..bytes.len() - cut]);
        rustix::fs::fcntl_add_seals(&file, seals).unwrap();
        send_with_fds(&theirs, &early_end(true), &[]);
        assert_refused_then_usable_after(&ours, &theirs, Some(expect));
    }
}

#[test]
fn an_early_value_with_sizes_that_do_not_fit_is_refused_once_it_ends() {
    let (mut ours, theirs) = raw_peer();
    ours.set_max_message_size(8 << 20);
    let len = (N + 4) as u64;
    for (descriptor, expect) in [
        (early(len, 4, N as u64 + 1, 1), "does not fit"),
        (early(len, u64::MAX, 2, 1), "does not fit"),
        (early(len, 4, N as u64, 3), "does not fit"),
        (early(len, 4, N as u64 - 4, 8), "does not fit"),
        (early(9 << 20, 4, N as u64, 1), "exceeds"),
    ] {
        let file = open_memfd();
        send_with_fds(&theirs, &descriptor, &[&file]);
        // Refused only once the end frame is read: the stream stays in step.
        assert!(matches!(ours.recv_timeout(std::time::Duration::ZERO), Err(Error::Timeout)));
        send_with_fds(&theirs, &early_end(true), &[]);
        assert_refused_then_usable_after(&ours, &theirs, Some(expect));
    }
}

#[test]
fn a_frame_where_an_early_value_should_end_is_an_error() {
    let (ours, theirs) = raw_peer();
    let (bytes, at) = sevens(N);
    let file = open_memfd();
    send_with_fds(&theirs, &early(bytes.len() as u64, at, N as u64, 1), &[&file]);
    send_with_fds(&theirs, &framed(vec![0]), &[]);
    assert_refused_then_usable_after(&ours, &theirs, Some("its sender broke off"));
}

#[test]
fn an_early_value_whose_sender_is_gone_midway_is_an_error_not_a_hang() {
    let (ours, theirs) = raw_peer();
    let (bytes, at) = sevens(N);
    let file = open_memfd();
    send_with_fds(&theirs, &early(bytes.len() as u64, at, N as u64, 1), &[&file]);
    write_file(&file, &bytes[..N / 2]);
    drop(theirs);
    let err = ours.recv_timeout(DEADLINE).unwrap_err();
    assert!(err.to_string().contains("went away before it wrote the value whole"), "{err}");
    assert!(matches!(ours.recv_timeout(DEADLINE), Err(Error::Closed)));
}

/// A run of bytes, then a field that kills its process the second time it is encoded: a
/// sender killed while it writes an early value (the first encoding only counts).
#[derive(Serialize)]
struct KilledMidway(Vec<u8>, Killer);

struct Killer(std::cell::Cell<u32>);

impl Serialize for Killer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.set(self.0.get() + 1);
        if self.0.get() == 2 {
            crate::support::kill_self();
        }
        serializer.serialize_u8(1)
    }
}

/// A run of bytes, then a field that panics the second time it is encoded.
#[derive(Serialize)]
struct PanicsMidway(Vec<u8>, Panicker);

struct Panicker(std::cell::Cell<u32>);

impl Serialize for Panicker {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.set(self.0.get() + 1);
        assert_ne!(self.0.get(), 2, "a Serialize that panics midway (expected by the test)");
        serializer.serialize_u8(1)
    }
}

#[test]
fn a_sender_killed_or_panicking_midway_through_an_early_value_is_an_error_for_the_receiver() {
    let (ours, theirs) = duplex::<(Vec<u8>, u8)>().unwrap();
    let theirs = theirs.cast::<KilledMidway, (Vec<u8>, u8)>();
    let child = in_child(&[&theirs], || {
        theirs.send(&KilledMidway(vec![3; BIG], Killer(Default::default()))).map_err(msg)?;
        Err("the sender outlived its own SIGKILL".into())
    });
    drop(theirs);
    let err = ours.recv_timeout(DEADLINE).unwrap_err();
    assert!(err.to_string().contains("went away before it wrote the value whole"), "{err}");
    assert!(matches!(child.wait(DEADLINE), crate::support::Exit::Signal(_)));
    // A panic: the sender sends the end frame as it unwinds.
    let (a, b) = duplex::<(Vec<u8>, u8)>().unwrap();
    let panics = a.cast::<PanicsMidway, (Vec<u8>, u8)>();
    let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        panics.send(&PanicsMidway(vec![3; BIG], Panicker(Default::default())))
    }));
    assert!(sent.is_err(), "the send panicked");
    let err = b.recv_timeout(DEADLINE).unwrap_err();
    assert!(err.to_string().contains("the sender failed to write the value whole"), "{err}");
    let a = panics.cast::<(Vec<u8>, u8), (Vec<u8>, u8)>();
    a.send(&(vec![4; BIG], 2)).unwrap();
    assert_eq!(b.recv_timeout(DEADLINE).unwrap(), (vec![4; BIG], 2));
}

/// A large value with many ends in it goes out of line with each end's fd once: the length
/// pass and the writing pass of the memfd must not each add the ends to the fd table (their
/// indices would then differ between the passes, past 127 in one and not in the other, and
/// twice the fds would count against the 253 a frame may carry).
#[test]
fn a_large_value_with_many_ends_goes_out_of_line_with_each_fd_once() {
    const ENDS: usize = 120;
    let (ours, theirs) = duplex::<(Vec<u8>, Vec<Sender<u64>>)>().unwrap();
    let (receivers, senders): (Vec<_>, Vec<_>) = (0..ENDS).map(|_| pipe::<u64>().unwrap()).unzip();
    let sent = std::thread::spawn(move || ours.send(&(vec![7u8; BIG], senders)).map(|()| ours));
    let got = theirs.recv_timeout(DEADLINE);
    let _ours = sent.join().unwrap().unwrap();
    let (bytes, ends) = got.unwrap();
    assert_eq!((bytes.len(), ends.len()), (BIG, ENDS));
    for (i, end) in ends.iter().enumerate() {
        end.send(&(i as u64)).unwrap();
    }
    for (i, rx) in receivers.iter().enumerate() {
        assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), i as u64, "end {i} is not the one sent");
    }
}
