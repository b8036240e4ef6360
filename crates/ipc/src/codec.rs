//! Typed values as bytes: postcard's format, written straight after room for the frame header.
//!
//! The encoder and decoder are our own (`codec/ser.rs`, `codec/de.rs`) and write and read
//! exactly postcard's bytes, so a value encoded with `postcard` decodes here and back. What
//! they add: a slice or `Vec` of `u8`, `i8`, `f32` or `f64` (and so a `String`, a struct of
//! them, ...) moves as one copy of its memory, not one serde call per element.

mod de;
mod ser;

use serde::Serialize;
use serde::de::{Deserialize, DeserializeOwned};

use crate::error::{Error, Result};
use crate::frame::{HEADER_MAX, encode_header};

/// Encodes `value` as the bytes a typed send carries: postcard's (so `postcard::from_bytes`
/// reads them), with slices and vectors of bytes and floats copied whole.
///
/// For a layer above that keeps values as bytes (a pool's task values). Ends inside the value
/// cannot be encoded this way: use [`Carried`](crate::Carried).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    to_vec(value)
}

/// [`encode`] into a `Vec` that starts with room for `capacity` bytes (a guess at the size,
/// so a large encoding is not copied at each doubling of its buffer).
pub fn encode_with_capacity<T: Serialize + ?Sized>(value: &T, capacity: usize) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(capacity);
    encode_append(value, &mut buf)?;
    Ok(buf)
}

/// Decodes what [`encode`] (or `postcard`) made: the whole of `bytes` is one `T` (trailing
/// bytes mean another type), vectors of bytes and floats taken in one copy.
pub fn decode_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    decode(bytes)
}

/// Appends `value`'s encoding to `buf`.
pub(crate) fn encode_append<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<()> {
    ser::serialize(value, ser::ToVec(buf)).map(drop).map_err(Error::Encode)
}

/// `value`'s encoding as a new `Vec`.
pub(crate) fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    encode_append(value, &mut buf)?;
    Ok(buf)
}

/// How many bytes `value`'s encoding takes.
pub(crate) fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize> {
    ser::serialize(value, ser::Count::default()).map(|count| count.0).map_err(Error::Encode)
}

/// Encodes `value` as one whole frame in `buf`; the frame is `buf[start..]` for the returned
/// `start`.
///
/// `buf` is cleared first; the header is written in front of the payload, so the frame goes
/// out as one contiguous slice.
pub(crate) fn encode_frame<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<usize> {
    Ok(encode_frame_within(value, buf, usize::MAX)?.expect("no value encodes past usize::MAX bytes"))
}

/// Encodes `value` through `sink` in pieces (see `ser::Streaming`), `buf` already holding what
/// goes first (a frame header): sends everything, and says how many bytes went in all,
/// `buf`'s first bytes included. At most `limit` bytes go; past that, or when `sink` fails,
/// an error after some bytes may have gone.
pub(crate) fn encode_streaming<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
    limit: usize,
    sink: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<usize> {
    let mut failed = None;
    let out = ser::Streaming { buf, sink, sent: 0, limit, failed: &mut failed };
    let result = ser::serialize(value, out).and_then(|mut out| out.send(&[]).map(|()| out.sent));
    // The sink's error if it failed, else the encoder's.
    result.map_err(|e| failed.unwrap_or(Error::Encode(e)))
}

/// As [`encode_frame`], but gives up (`Ok(None)`, `buf` holding part of the encoding) once the
/// payload would pass `cap` bytes.
pub(crate) fn encode_frame_within<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
    cap: usize,
) -> Result<Option<usize>> {
    // Room for the longest header, its bytes written below (`resize` of a cleared `Vec`: a
    // fixed-size fill, no copy from elsewhere).
    buf.clear();
    buf.resize(HEADER_MAX, 0);
    let out = ser::ToVecWithin { vec: buf, end: HEADER_MAX.saturating_add(cap) };
    match ser::serialize(value, out) {
        Ok(_) => {}
        // Only the output says this (a `Serialize` impl's own errors are `custom`).
        Err(postcard::Error::SerializeBufferFull) => return Ok(None),
        Err(e) => return Err(Error::Encode(e)),
    }
    let payload_len = (buf.len() - HEADER_MAX) as u64;
    let mut header = [0; HEADER_MAX];
    let n = encode_header(payload_len, &mut header);
    // Both lengths copied whole (a fixed-size copy, no `memcpy` call); `start` picks the frame.
    buf[..HEADER_MAX].copy_from_slice(&header);
    Ok(Some(HEADER_MAX - n))
}

/// Decodes a value from the front of `bytes`, ignoring what follows it (`postcard::from_bytes`).
pub(crate) fn from_bytes<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T> {
    decoding(|| de::take_from_bytes(bytes).map(|(value, _rest)| value))
}

/// Decodes a whole payload; trailing bytes mean the sender sent another type.
pub(crate) fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T> {
    decoding(|| match de::take_from_bytes(payload) {
        Ok((value, [])) => Ok(value),
        Ok(_) => Err(postcard::Error::DeserializeBadEncoding),
        Err(e) => Err(e),
    })
}

thread_local! {
    /// Why the decode in progress in this thread was refused, in words postcard would drop.
    static REFUSED: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    /// Whether [`REFUSED`] may hold a reason: checked by every decode, set by [`refuse`]. A
    /// thread-local without a destructor, so the check is one load (`REFUSED` itself is
    /// reached through its destructor's registration).
    static MAY_BE_REFUSED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Takes the reason a decode was refused, if one was given.
#[inline]
fn take_refusal() -> Option<String> {
    if !MAY_BE_REFUSED.replace(false) {
        return None;
    }
    REFUSED.try_with(|r| r.take()).ok().flatten()
}

/// Runs a postcard decode; a refusal recorded by [`refuse`] meanwhile becomes
/// [`Error::Mismatch`] (postcard keeps no custom message), any other failure
/// [`Error::Decode`].
#[inline]
pub(crate) fn decoding<T>(decode: impl FnOnce() -> postcard::Result<T>) -> Result<T> {
    // A reason left by a decode that succeeded after all (a refusal it recovered from).
    drop(take_refusal());
    decode().map_err(|e| match take_refusal() {
        Some(why) => Error::Mismatch(why),
        None => Error::Decode(e),
    })
}

/// A `Deserialize` impl refuses what it received, saying why (a shared object of another
/// type than the receiver's): the receive reports it as [`Error::Mismatch`].
pub(crate) fn refuse<E: serde::de::Error>(why: String) -> E {
    let e = E::custom(&why);
    let _ = REFUSED.try_with(|r| r.borrow_mut().get_or_insert(why).len());
    MAY_BE_REFUSED.set(true);
    e
}

/// Scratch buffers above this size are dropped after use, so one huge message does not pin
/// its memory for the life of the end.
pub(crate) const SCRATCH_KEEP: usize = 4 << 20;

/// A receive buffer is kept whatever its size, its pages released lazily above
/// [`SCRATCH_KEEP`] (`MADV_FREE`): the next large message reuses them without faulting them in
/// again, unless the kernel needed them meanwhile.
pub(crate) fn trim_scratch(buf: &mut Vec<u8>) {
    if buf.capacity() > SCRATCH_KEEP {
        crate::sys::release_pages(buf);
    }
}

pub(crate) fn trim(buf: &mut Vec<u8>) {
    if buf.capacity() > SCRATCH_KEEP {
        *buf = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    enum Shape {
        Unit,
        Newtype(i64),
        Tuple(u16, i16),
        Struct { bytes: Vec<u8>, floats: Vec<f32> },
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct Everything {
        bytes: Vec<u8>,
        signed: Vec<i8>,
        floats: Vec<f64>,
        singles: Vec<f32>,
        words: Vec<u32>,
        text: String,
        chars: Vec<char>,
        flags: Vec<bool>,
        wide: (u128, i128),
        maybe: Option<Box<Everything>>,
        shapes: Vec<Shape>,
        map: BTreeMap<String, Vec<u64>>,
        array: [u8; 3],
        unit: (),
        boxed: Box<[u8]>,
    }

    fn shape() -> impl Strategy<Value = Shape> {
        prop_oneof![
            Just(Shape::Unit),
            any::<i64>().prop_map(Shape::Newtype),
            any::<(u16, i16)>().prop_map(|(a, b)| Shape::Tuple(a, b)),
            (any::<Vec<u8>>(), any::<Vec<f32>>()).prop_map(|(bytes, floats)| Shape::Struct { bytes, floats }),
        ]
    }

    fn leaf() -> impl Strategy<Value = Everything> {
        (
            (any::<Vec<u8>>(), any::<Vec<i8>>(), any::<Vec<f64>>(), any::<Vec<f32>>(), any::<Vec<u32>>()),
            (any::<String>(), any::<Vec<char>>(), any::<Vec<bool>>(), any::<(u128, i128)>()),
            (proptest::collection::vec(shape(), 0..4), any::<BTreeMap<String, Vec<u64>>>(), any::<[u8; 3]>()),
        )
            .prop_map(
                |(
                    (bytes, signed, floats, singles, words),
                    (text, chars, flags, wide),
                    (shapes, map, array),
                )| {
                    Everything {
                        boxed: bytes.clone().into_boxed_slice(),
                        bytes,
                        signed,
                        floats,
                        singles,
                        words,
                        text,
                        chars,
                        flags,
                        wide,
                        maybe: None,
                        shapes,
                        map,
                        array,
                        unit: (),
                    }
                },
            )
    }

    fn everything() -> impl Strategy<Value = Everything> {
        (leaf(), proptest::option::of(leaf())).prop_map(|(mut outer, inner)| {
            outer.maybe = inner.map(Box::new);
            outer
        })
    }

    /// Floats compared by their bits, so NaNs compare equal to themselves.
    fn same(a: &Everything, b: &Everything) -> bool {
        postcard::to_allocvec(a).unwrap() == postcard::to_allocvec(b).unwrap()
    }

    proptest! {
        #[test]
        fn bytes_are_postcards_both_ways(value in everything()) {
            let ours = to_vec(&value).unwrap();
            let theirs = postcard::to_allocvec(&value).unwrap();
            prop_assert_eq!(&ours, &theirs);
            prop_assert_eq!(encoded_len(&value).unwrap(), ours.len());
            // In pieces, as a large value is written to its memfd.
            let mut streamed = Vec::new();
            let sent = encode_streaming(&value, &mut Vec::new(), ours.len(), |gathered, direct| {
                streamed.extend_from_slice(gathered);
                streamed.extend_from_slice(direct);
                Ok(())
            }).unwrap();
            prop_assert_eq!(sent, ours.len());
            prop_assert_eq!(&streamed, &ours);
            let back: Everything = decode(&theirs).unwrap();
            prop_assert!(same(&back, &value));
        }

        #[test]
        fn cut_or_garbled_input_is_an_error_like_postcards(value in everything(), cut in any::<prop::sample::Index>(), flip in any::<(prop::sample::Index, u8)>()) {
            let mut bytes = to_vec(&value).unwrap();
            let cut = cut.index(bytes.len() + 1);
            prop_assert!(decode::<Everything>(&bytes[..cut]).is_err() || cut == bytes.len());
            if !bytes.is_empty() {
                let at = flip.0.index(bytes.len());
                bytes[at] ^= flip.1 | 1;
                let ours = de::take_from_bytes::<Everything>(&bytes).map(|(v, rest)| (postcard::to_allocvec(&v).unwrap(), rest.len()));
                let theirs = postcard::take_from_bytes::<Everything>(&bytes).map(|(v, rest)| (postcard::to_allocvec(&v).unwrap(), rest.len()));
                prop_assert_eq!(ours.is_ok(), theirs.is_ok());
                if let (Ok(ours), Ok(theirs)) = (ours, theirs) {
                    prop_assert_eq!(ours, theirs);
                }
            }
        }
    }

    #[test]
    fn bytes_and_floats_take_the_bulk_paths() {
        use crate::sys::bulk::bulk_bytes;
        let (bytes, floats) = (vec![1u8, 2, 3], vec![1.5f64, -2.0]);
        assert_eq!(bulk_bytes(&&bytes), Some((3, &[1u8, 2, 3][..])));
        assert_eq!(bulk_bytes(&&bytes[..]).map(|b| b.0), Some(3));
        assert_eq!(bulk_bytes(&&floats).map(|b| b.1.len()), Some(16));
        assert_eq!(bulk_bytes(&&vec![1u32]), None);
        assert_eq!(bulk_bytes(&[1u8].iter()), None);
        let ids = de::tests::visitor_ids();
        assert!(ids.iter().all(Option::is_some), "{ids:?}");
        assert_ne!(ids[0], ids[3]);
    }

    #[test]
    fn a_hostile_length_reserves_nothing() {
        // A `Vec<u8>` or `Vec<f64>` claiming 2^60 elements in a 10-byte payload.
        let mut bytes = Vec::new();
        encode_append(&(1u64 << 60), &mut bytes).unwrap();
        bytes.extend_from_slice(&[0; 4]);
        assert!(matches!(
            decode::<Vec<u8>>(&bytes),
            Err(Error::Decode(postcard::Error::DeserializeUnexpectedEnd))
        ));
        assert!(matches!(
            decode::<Vec<f64>>(&bytes),
            Err(Error::Decode(postcard::Error::DeserializeUnexpectedEnd))
        ));
        assert!(decode::<Vec<u32>>(&bytes).is_err());
    }

    #[test]
    fn a_value_that_grows_between_count_and_write_is_an_error_or_shorter() {
        let len = encoded_len(&vec![1u8; 10]).unwrap();
        let stream = |v: Vec<u8>| encode_streaming(&v, &mut Vec::new(), len, |_, _| Ok(()));
        assert!(stream(vec![1u8; 11]).is_err());
        assert_eq!(stream(vec![1u8; 9]).unwrap(), len - 1, "the caller sees it is short");
    }
}
