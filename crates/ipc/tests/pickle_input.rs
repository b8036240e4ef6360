//! Hostile pickles (the `pickle` feature): a clear `Error::Pickle`, never a crash or an
//! allocation far beyond the message itself.

use mproc_ipc::{Connection, Error, duplex};

use crate::support::DEADLINE;

/// Sends `pickle` as one raw frame from a thread (it may not fit the socket's buffer) and
/// unpickles it as `R` on the other end, whose message limit is `max`.
fn unpickle_as<R: serde::de::DeserializeOwned + Send + 'static>(
    pickle: Vec<u8>,
    max: usize,
) -> mproc_ipc::Result<R> {
    let (ours, theirs) = duplex::<()>().unwrap();
    let mut ours: Connection<(), R> = ours.cast();
    ours.set_max_message_size(max);
    let sender = std::thread::spawn(move || theirs.send_bytes(&pickle));
    let got = ours.recv_pickle_timeout(DEADLINE);
    sender.join().unwrap().unwrap();
    got
}

/// A list nested a million deep: `]` (EMPTY_LIST) a million times, then `a` (APPEND) to put
/// each into the one below. Two megabytes, well within the message limit; unpickling it must
/// not recurse once per level (the stack overflowed before, in parsing's drop or in
/// deserializing).
#[test]
fn pickle_nested_a_million_deep_is_an_error() {
    let depth = 1_000_000;
    let mut pickle = b"\x80\x02".to_vec();
    pickle.extend(std::iter::repeat_n(b']', depth));
    pickle.extend(std::iter::repeat_n(b'a', depth - 1));
    pickle.push(b'.');
    let err = match unpickle_as::<Vec<i64>>(pickle, 1 << 30) {
        Ok(v) => panic!("unpickled {v:?}"),
        Err(e) => e,
    };
    assert!(matches!(err, Error::Pickle(_)), "{err}");
    assert!(err.to_string().contains("nested"), "{err}");
}

/// Nesting as deep as real values go still unpickles.
#[test]
fn pickle_nested_a_few_levels_unpickles() {
    let mut pickle = b"\x80\x02".to_vec();
    pickle.extend(std::iter::repeat_n(b']', 4));
    pickle.extend(std::iter::repeat_n(b'a', 3));
    pickle.push(b'.');
    let got = unpickle_as::<Vec<Vec<Vec<Vec<i64>>>>>(pickle, 1 << 30).unwrap();
    assert_eq!(got, vec![vec![vec![vec![]]]]);
}

/// One 64 KiB string, memoized, then a list of 1,024 references to it (`h\0`, BINGET): a
/// 66 KB pickle that unpickles to 64 MiB of strings, each reference a copy. On an end whose
/// messages are at most 1 MiB that is refused: a pickle may not unpickle to more than a
/// message may hold (before, it unpickled, allocating the 64 MiB).
#[test]
fn pickle_of_shared_references_expanding_past_the_limit_is_an_error() {
    let mut pickle = b"\x80\x02](X".to_vec(); // EMPTY_LIST, MARK, BINUNICODE
    pickle.extend_from_slice(&(64u32 << 10).to_le_bytes());
    pickle.extend(std::iter::repeat_n(b'x', 64 << 10));
    pickle.extend_from_slice(b"q\x00"); // BINPUT 0
    for _ in 0..1024 {
        pickle.extend_from_slice(b"h\x00"); // BINGET 0
    }
    pickle.extend_from_slice(b"e."); // APPENDS, STOP
    let err = match unpickle_as::<Vec<String>>(pickle.clone(), 1 << 20) {
        Ok(strings) => panic!("unpickled {} strings of 64 KiB on an end of 1 MiB messages", strings.len()),
        Err(e) => e,
    };
    assert!(matches!(err, Error::Pickle(_)), "{err}");
    assert!(err.to_string().contains("more than"), "{err}");
    // Within the limit, the same pickle unpickles (shared references are fine).
    let got = unpickle_as::<Vec<String>>(pickle, 1 << 30).unwrap();
    assert_eq!(got.len(), 1025);
}
