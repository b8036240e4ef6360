//! Typed values as bytes: postcard's format, written straight after room for the frame header.
//!
//! The encoder and decoder are our own (`codec/ser.rs`, `codec/de.rs`) and write and read
//! exactly postcard's bytes, so a value encoded with `postcard` decodes here and back. What
//! they add: a slice or `Vec` of `u8`, `i8`, `f32` or `f64` (and so a `String`, a struct of
//! them, ...) moves as one copy of its memory, and one of integers (`u16`..`u64`, `i16`..`i64`,
//! `usize`, `isize`) as varints made and read in one loop (`codec/seq.rs`), not one serde call
//! per element.

mod de;
mod seq;
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

/// Decodes a sequence (what a `Vec<T>` or a `&[T]` encodes to, [`encode`] or `postcard`) from
/// the whole of `bytes`, appending its elements to `values`: several encoded pieces of one
/// list gathered into one `Vec` without a `Vec` per piece (a pool's `map`, its chunks'
/// values). Integers, bytes and floats are read in one loop or one copy. A length read from
/// the bytes reserves no more than the bytes can hold; trailing bytes are an error. On an
/// error, `values` may hold some of the elements.
pub fn decode_append<T: DeserializeOwned>(bytes: &[u8], values: &mut Vec<T>) -> Result<()> {
    decoding(|| {
        let mut input = bytes;
        seq::append(&mut input, values)?;
        if input.is_empty() { Ok(()) } else { Err(postcard::Error::DeserializeBadEncoding) }
    })
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

/// `value`'s encoding as a new `Vec` that starts with room for `capacity` bytes; `None` (after
/// encoding part of it) once it would pass `cap` bytes.
pub(crate) fn to_vec_within<T: Serialize + ?Sized>(
    value: &T,
    capacity: usize,
    cap: usize,
) -> Result<Option<Vec<u8>>> {
    let mut vec = Vec::with_capacity(capacity.min(cap));
    match ser::serialize(value, ser::ToVecWithin { vec: &mut vec, end: cap }) {
        Ok(_) => Ok(Some(vec)),
        Err(postcard::Error::SerializeBufferFull) => Ok(None),
        Err(e) => Err(Error::Encode(e)),
    }
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
        ints: Ints,
    }

    /// Every integer type whose sequences take the one-loop path (`codec/seq.rs`), as `Vec`s
    /// and as a borrowed slice, with values of every length of varint.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
    struct Ints {
        u16: Vec<u16>,
        u32: Vec<u32>,
        u64: Vec<u64>,
        usize: Vec<usize>,
        i16: Vec<i16>,
        i32: Vec<i32>,
        i64: Vec<i64>,
        isize: Vec<isize>,
        boxed: Box<[u64]>,
        nested: Vec<Vec<i64>>,
    }

    /// Integers of every varint length: any bit width from 0 to 64, sign included.
    fn wide() -> impl Strategy<Value = u64> {
        (any::<u64>(), 0..=64u32).prop_map(|(v, bits)| if bits == 64 { v } else { v & ((1 << bits) - 1) })
    }

    fn ints() -> impl Strategy<Value = Ints> {
        let v = || proptest::collection::vec(wide(), 0..80);
        ((v(), v(), v(), v()), (v(), v(), v(), v()), (v(), proptest::collection::vec(v(), 0..3))).prop_map(
            |((a, b, c, d), (e, f, g, h), (i, j))| Ints {
                u16: a.iter().map(|&x| x as u16).collect(),
                u32: b.iter().map(|&x| x as u32).collect(),
                u64: c,
                usize: d.iter().map(|&x| x as usize).collect(),
                i16: e.iter().map(|&x| x as i16).collect(),
                i32: f.iter().map(|&x| x as i32).collect(),
                i64: g.iter().map(|&x| x as i64).collect(),
                isize: h.iter().map(|&x| x as isize).collect(),
                boxed: i.into_boxed_slice(),
                nested: j.into_iter().map(|v| v.into_iter().map(|x| x as i64).collect()).collect(),
            },
        )
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
            (
                proptest::collection::vec(shape(), 0..4),
                any::<BTreeMap<String, Vec<u64>>>(),
                any::<[u8; 3]>(),
                ints(),
            ),
        )
            .prop_map(
                |(
                    (bytes, signed, floats, singles, words),
                    (text, chars, flags, wide),
                    (shapes, map, array, ints),
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
                        ints,
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

    /// Decodes a `Vec<T>` from the front of `bytes` here (alone, and appended after
    /// `prefix`) and with postcard: the same values and the same bytes left, or an error from
    /// each.
    fn agrees_with_postcard<T>(bytes: &[u8], prefix: &[T]) -> Result<(), TestCaseError>
    where
        T: serde::de::DeserializeOwned + Serialize + Clone + PartialEq + std::fmt::Debug,
    {
        let theirs = postcard::take_from_bytes::<Vec<T>>(bytes).ok().map(|(v, rest)| (v, rest.len()));
        let ours = de::take_from_bytes::<Vec<T>>(bytes).ok().map(|(v, rest)| (v, rest.len()));
        prop_assert_eq!(&ours, &theirs);
        // Appended, the bytes postcard read (all of them where it failed) must be exactly one
        // sequence.
        let used = theirs.as_ref().map_or(bytes.len(), |(_, rest)| bytes.len() - rest);
        let mut appended = prefix.to_vec();
        let done = decode_append(&bytes[..used], &mut appended);
        prop_assert_eq!(done.is_ok(), theirs.is_some());
        if let Some((theirs, _)) = theirs {
            prop_assert_eq!(&appended[..prefix.len()], prefix);
            prop_assert_eq!(&appended[prefix.len()..], &theirs[..]);
        } else {
            // A length read from the bytes reserved no more than the bytes hold (a `Vec` grows
            // to twice its length, and to at least 4).
            let most = (2 * (prefix.len() + bytes.len())).max(4);
            prop_assert!(appended.capacity() <= most, "{} for {} bytes", appended.capacity(), bytes.len());
        }
        Ok(())
    }

    /// Borrowed slices of integers, as `map` sends its chunks.
    #[derive(Serialize)]
    struct Slices<'a> {
        u64: &'a [u64],
        i32: &'a [i32],
        usize: &'a [usize],
        i16: &'a [i16],
    }

    proptest! {
        #[test]
        fn integer_slices_are_postcards(ints in ints()) {
            let value = Slices { u64: &ints.u64, i32: &ints.i32, usize: &ints.usize, i16: &ints.i16 };
            let ours = to_vec(&value).unwrap();
            prop_assert_eq!(&ours, &postcard::to_allocvec(&value).unwrap());
            prop_assert_eq!(encoded_len(&value).unwrap(), ours.len());
        }

        #[test]
        fn sequences_append_as_postcard_decodes_them(ints in ints(), text in any::<Vec<String>>(), floats in any::<Vec<f64>>(), bytes in any::<Vec<u8>>()) {
            agrees_with_postcard(&postcard::to_allocvec(&ints.u64).unwrap(), &[7u64])?;
            agrees_with_postcard(&postcard::to_allocvec(&ints.i32).unwrap(), &[-7i32])?;
            agrees_with_postcard::<usize>(&postcard::to_allocvec(&ints.usize).unwrap(), &[])?;
            agrees_with_postcard(&postcard::to_allocvec(&ints.i16).unwrap(), &[1i16, 2])?;
            agrees_with_postcard(&postcard::to_allocvec(&text).unwrap(), &["a".to_string()])?;
            agrees_with_postcard(&postcard::to_allocvec(&bytes).unwrap(), &[1u8])?;
            let floats: Vec<u64> = floats.iter().map(|f| f.to_bits()).collect();
            let as_floats: Vec<f64> = floats.iter().map(|&b| f64::from_bits(b)).collect();
            // Compared by bits (NaN): decoded as `f64`, re-encoded, the same bytes.
            let encoded = postcard::to_allocvec(&as_floats).unwrap();
            let mut appended = vec![0.5f64];
            decode_append(&encoded, &mut appended).unwrap();
            prop_assert_eq!(appended[1..].iter().map(|f| f.to_bits()).collect::<Vec<_>>(), floats);
        }

        #[test]
        fn any_bytes_decode_as_integers_as_postcard_decodes_them(len in 0..40u8, body in proptest::collection::vec(prop_oneof![any::<u8>(), 0x80..=0xffu8, 0x80..=0x83u8, 0..=0x1fu8, Just(0)], 0..120)) {
            // A length, then bytes that are often varints, often not (too long, overflowing
            // their type, cut short): many continuation bytes, and many small last bytes
            // (around the bits a type's last byte may hold: below 4, 16 or 2), and groups of
            // zero bits (a value that fits its type in more bytes than the type takes).
            let mut bytes = vec![len];
            bytes.extend_from_slice(&body);
            agrees_with_postcard::<u64>(&bytes, &[])?;
            agrees_with_postcard::<u32>(&bytes, &[1])?;
            agrees_with_postcard::<u16>(&bytes, &[])?;
            agrees_with_postcard::<usize>(&bytes, &[])?;
            agrees_with_postcard::<i64>(&bytes, &[])?;
            agrees_with_postcard::<i32>(&bytes, &[])?;
            agrees_with_postcard::<i16>(&bytes, &[-1])?;
            agrees_with_postcard::<isize>(&bytes, &[])?;
            agrees_with_postcard::<u8>(&bytes, &[])?;
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
        assert_ne!(ids[4], ids[5]);
        use crate::sys::bulk::{slice_of, vec_mut_as};
        let ints = vec![1u64, 2];
        assert_eq!(slice_of::<u64, _>(&&ints), Some(&[1u64, 2][..]));
        assert_eq!(slice_of::<u64, _>(&&ints[..]), Some(&[1u64, 2][..]));
        assert_eq!(slice_of::<i64, _>(&&ints), None);
        assert_eq!(slice_of::<u64, _>(&ints.iter()), None);
        assert!(vec_mut_as::<u64, u64>(&mut vec![]).is_some());
        assert!(vec_mut_as::<u64, usize>(&mut vec![]).is_none());
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
        // Appended: the same error, nothing reserved past the bytes.
        for n in [0, 3] {
            let mut values = vec![0u64; n];
            assert!(matches!(
                decode_append(&bytes, &mut values),
                Err(Error::Decode(postcard::Error::DeserializeUnexpectedEnd))
            ));
            assert!(values.capacity() <= 2 * (n + bytes.len()), "{}", values.capacity());
            let mut values: Vec<String> = Vec::new();
            assert!(decode_append(&bytes, &mut values).is_err());
            assert!(values.capacity() <= 2 * bytes.len(), "{}", values.capacity());
        }
    }

    #[test]
    fn a_value_that_grows_between_count_and_write_is_an_error_or_shorter() {
        let len = encoded_len(&vec![1u8; 10]).unwrap();
        let stream = |v: Vec<u8>| encode_streaming(&v, &mut Vec::new(), len, |_, _| Ok(()));
        assert!(stream(vec![1u8; 11]).is_err());
        assert_eq!(stream(vec![1u8; 9]).unwrap(), len - 1, "the caller sees it is short");
    }
}
