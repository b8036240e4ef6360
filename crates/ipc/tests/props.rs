//! Property tests through real file descriptors.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::time::Duration;

use mproc_ipc::{Error, Receiver, duplex};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Leaf {
    Unit,
    Int(i64),
    Text(String),
    Pair(u8, Option<bool>),
    Float(u64), // bit pattern: NaN never compares equal, its bits do
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Tree {
    label: String,
    leaves: Vec<Leaf>,
    index: BTreeMap<u32, Vec<u8>>,
    children: Vec<Tree>,
}

fn leaf() -> impl Strategy<Value = Leaf> {
    prop_oneof![
        Just(Leaf::Unit),
        any::<i64>().prop_map(Leaf::Int),
        ".{0,20}".prop_map(Leaf::Text),
        (any::<u8>(), any::<Option<bool>>()).prop_map(|(a, b)| Leaf::Pair(a, b)),
        any::<f64>().prop_map(|f| Leaf::Float(f.to_bits())),
    ]
}

fn tree() -> impl Strategy<Value = Tree> {
    let flat = (
        ".{0,10}",
        prop::collection::vec(leaf(), 0..6),
        prop::collection::btree_map(any::<u32>(), prop::collection::vec(any::<u8>(), 0..20), 0..4),
    )
        .prop_map(|(label, leaves, index)| Tree { label, leaves, index, children: vec![] });
    flat.prop_recursive(3, 24, 4, |inner| {
        (".{0,10}", prop::collection::vec(leaf(), 0..4), prop::collection::vec(inner, 0..4))
            .prop_map(|(label, leaves, children)| Tree { label, leaves, index: BTreeMap::new(), children })
    })
}

proptest! {
    /// Nested serde values round-trip exactly, several in flight at once.
    #[test]
    fn prop_nested_values_round_trip(values in prop::collection::vec(tree(), 1..6)) {
        let (a, b) = duplex::<Tree>().unwrap();
        for v in &values {
            a.send(v).unwrap();
        }
        for v in &values {
            prop_assert_eq!(&b.recv_timeout(Duration::from_secs(60)).unwrap(), v);
        }
    }

    /// Any bytes at all fed to a receiver give values and errors, never a panic or a hang, and
    /// end with end of file or a broken stream.
    #[test]
    fn prop_any_bytes_fed_to_recv(input in prop::collection::vec(any::<u8>(), 0..2048), typed in any::<bool>()) {
        let (rx, tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let mut rx = Receiver::<Tree>::from(rx);
        rx.set_max_message_size(4096);
        write_and_close(tx, &input);
        for _ in 0..=input.len() + 1 {
            let got = if typed { rx.recv_timeout(Duration::from_secs(60)).map(drop) } else { rx.recv_bytes_timeout(Duration::from_secs(60)).map(drop) };
            match got {
                Ok(()) | Err(Error::Decode(_) | Error::TooLarge { .. }) => {}
                Err(Error::Closed | Error::Truncated { .. } | Error::InvalidHeader { .. }) => return Ok(()),
                Err(e) => prop_assert!(false, "unexpected error: {e}"),
            }
        }
        prop_assert!(false, "the receiver never reached the end of its input");
    }
}

/// The pipe buffer holds 64 KiB, more than the input, so this never blocks.
fn write_and_close(fd: OwnedFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        bytes = &bytes[rustix::io::write(&fd, bytes).unwrap()..];
    }
}
