//! A postcard serializer whose bytes are postcard's (`postcard::to_allocvec` gives the same),
//! with one addition: a slice or `Vec` of bytes or floats goes out as one copy of its memory,
//! and one of integers as varints made in one loop (`seq.rs`), instead of one call per element.
//!
//! Written after postcard 1.x's `ser/serializer.rs` (MIT OR Apache-2.0), where the format is
//! defined: unsigned integers as varints, signed ones zigzagged first, `u8`/`i8` as one byte,
//! floats as their little-endian bits, lengths and variant indexes as varints, structs and
//! tuples as their fields in order.

use serde::{Serialize, ser};

use super::seq;
use crate::sys::bulk;
use crate::sys::small::SmallFrame;

type Result<T> = std::result::Result<T, postcard::Error>;

/// Where encoded bytes go.
pub(crate) trait Output {
    fn push(&mut self, byte: u8) -> Result<()>;
    fn extend(&mut self, bytes: &[u8]) -> Result<()>;

    /// The memory of a sequence of bytes or floats (`bytes`, elements of `elem` bytes each),
    /// after its length: [`extend`](Self::extend) but for [`CountRuns`], which notes it.
    #[inline]
    fn run(&mut self, _elem: usize, bytes: &[u8]) -> Result<()> {
        self.extend(bytes)
    }
}

/// Slices up to this long are appended byte by byte rather than with `memcpy`.
const SMALL_EXTEND: usize = 16;

/// Appends to a borrowed `Vec` (a reused send buffer).
pub(crate) struct ToVec<'a>(pub(crate) &'a mut Vec<u8>);

impl Output for ToVec<'_> {
    #[inline]
    fn push(&mut self, byte: u8) -> Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline]
    fn extend(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() <= SMALL_EXTEND {
            // A varint or a short field: a call to `memcpy` for a few bytes costs more than
            // the bytes (most of a small value's encoding).
            for &byte in bytes {
                self.0.push(byte);
            }
        } else {
            self.0.extend_from_slice(bytes);
        }
        Ok(())
    }
}

/// Appends to a borrowed `Vec` up to a length: [`postcard::Error::SerializeBufferFull`] past
/// `end` (a value too large to go inline).
pub(crate) struct ToVecWithin<'a> {
    pub(crate) vec: &'a mut Vec<u8>,
    pub(crate) end: usize,
}

impl Output for ToVecWithin<'_> {
    #[inline]
    fn push(&mut self, byte: u8) -> Result<()> {
        if self.vec.len() >= self.end {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.vec.push(byte);
        Ok(())
    }

    #[inline]
    fn extend(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() > self.end.saturating_sub(self.vec.len()) {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.vec.extend_from_slice(bytes);
        Ok(())
    }
}

/// Appends to a frame on the stack: [`postcard::Error::SerializeBufferFull`] once it is full
/// (a value too large for the small-message path).
impl Output for &mut SmallFrame {
    #[inline]
    fn push(&mut self, byte: u8) -> Result<()> {
        if SmallFrame::push(self, byte) { Ok(()) } else { Err(postcard::Error::SerializeBufferFull) }
    }

    #[inline]
    fn extend(&mut self, bytes: &[u8]) -> Result<()> {
        if SmallFrame::extend(self, bytes) { Ok(()) } else { Err(postcard::Error::SerializeBufferFull) }
    }
}

/// Hands the encoding to `sink` in pieces, at most `limit` bytes in all: small writes gather
/// in `buf` (sent once it holds [`GATHER`] bytes), and slices of [`DIRECT`] bytes or more go
/// as they are, from the value's memory, after what gathered before them. `sink(gathered,
/// slice)` sends both, in order. Its error is kept in `failed` (the encoder only sees
/// [`postcard::Error::SerializeBufferFull`]).
pub(crate) struct Streaming<'a, F> {
    pub(crate) buf: &'a mut Vec<u8>,
    pub(crate) sink: F,
    pub(crate) sent: usize,
    pub(crate) limit: usize,
    pub(crate) failed: &'a mut Option<crate::error::Error>,
}

/// What [`Streaming`] gathers before sending.
pub(crate) const GATHER: usize = 64 << 10;
/// Slices at least this long go straight from the value.
pub(crate) const DIRECT: usize = 16 << 10;

impl<F: FnMut(&[u8], &[u8]) -> crate::error::Result<()>> Streaming<'_, F> {
    /// Sends what gathered, and `slice` after it.
    pub(crate) fn send(&mut self, slice: &[u8]) -> Result<()> {
        let n = self.buf.len() + slice.len();
        if n > self.limit - self.sent {
            return Err(postcard::Error::SerializeBufferFull);
        }
        if let Err(e) = (self.sink)(self.buf, slice) {
            *self.failed = Some(e);
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.sent += n;
        self.buf.clear();
        Ok(())
    }
}

impl<F: FnMut(&[u8], &[u8]) -> crate::error::Result<()>> Output for Streaming<'_, F> {
    #[inline]
    fn push(&mut self, byte: u8) -> Result<()> {
        self.buf.push(byte);
        if self.buf.len() >= GATHER {
            return self.send(&[]);
        }
        Ok(())
    }

    #[inline]
    fn extend(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() >= DIRECT {
            return self.send(bytes);
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= GATHER {
            return self.send(&[]);
        }
        Ok(())
    }
}

/// Counts the bytes an encoding takes, writing none.
#[derive(Default)]
pub(crate) struct Count(pub(crate) usize);

impl Output for Count {
    #[inline]
    fn push(&mut self, _byte: u8) -> Result<()> {
        self.0 += 1;
        Ok(())
    }

    #[inline]
    fn extend(&mut self, bytes: &[u8]) -> Result<()> {
        self.0 += bytes.len();
        Ok(())
    }
}

/// The largest sequence of bytes or floats in an encoding (see [`CountRuns`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Run {
    /// Where its memory starts in the encoding (after its length).
    pub(crate) offset: usize,
    /// Its memory's length in bytes.
    pub(crate) bytes: usize,
    /// The size of its elements: 1 (`u8`, `i8`), 4 (`f32`) or 8 (`f64`).
    pub(crate) elem: usize,
}

/// Counts the bytes an encoding takes, as [`Count`], and notes its largest sequence of bytes
/// or floats (the first of the largest).
#[derive(Default)]
pub(crate) struct CountRuns {
    pub(crate) len: usize,
    pub(crate) largest: Run,
}

impl Output for CountRuns {
    #[inline]
    fn push(&mut self, _byte: u8) -> Result<()> {
        self.len += 1;
        Ok(())
    }

    #[inline]
    fn extend(&mut self, bytes: &[u8]) -> Result<()> {
        self.len += bytes.len();
        Ok(())
    }

    fn run(&mut self, elem: usize, bytes: &[u8]) -> Result<()> {
        if bytes.len() > self.largest.bytes {
            self.largest = Run { offset: self.len, bytes: bytes.len(), elem };
        }
        self.extend(bytes)
    }
}

/// Encodes `value` into `out`.
#[inline]
pub(crate) fn serialize<T: Serialize + ?Sized, O: Output>(value: &T, out: O) -> Result<O> {
    let mut serializer = Serializer { out };
    value.serialize(&mut serializer)?;
    Ok(serializer.out)
}

pub(crate) struct Serializer<O> {
    out: O,
}

macro_rules! varint {
    ($name:ident, $t:ty) => {
        #[inline]
        fn $name(&mut self, mut value: $t) -> Result<()> {
            if value < 0x80 {
                return self.out.push(value as u8);
            }
            let mut buf = [0u8; (<$t>::BITS as usize).div_ceil(7)];
            let mut i = 0;
            while value >= 0x80 {
                buf[i] = value as u8 | 0x80;
                value >>= 7;
                i += 1;
            }
            buf[i] = value as u8;
            self.out.extend(&buf[..=i])
        }
    };
}

impl<O: Output> Serializer<O> {
    varint!(varint_u16, u16);
    varint!(varint_u32, u32);
    varint!(varint_u64, u64);
    varint!(varint_u128, u128);

    #[inline]
    fn varint_usize(&mut self, value: usize) -> Result<()> {
        self.varint_u64(value as u64)
    }
}

impl<O: Output> ser::Serializer for &mut Serializer<O> {
    type Ok = ();
    type Error = postcard::Error;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn is_human_readable(&self) -> bool {
        false
    }

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<()> {
        self.out.push(v as u8)
    }

    #[inline]
    fn serialize_i8(self, v: i8) -> Result<()> {
        self.out.push(v as u8)
    }

    #[inline]
    fn serialize_i16(self, v: i16) -> Result<()> {
        self.varint_u16(((v << 1) ^ (v >> 15)) as u16)
    }

    #[inline]
    fn serialize_i32(self, v: i32) -> Result<()> {
        self.varint_u32(((v << 1) ^ (v >> 31)) as u32)
    }

    #[inline]
    fn serialize_i64(self, v: i64) -> Result<()> {
        self.varint_u64(((v << 1) ^ (v >> 63)) as u64)
    }

    #[inline]
    fn serialize_i128(self, v: i128) -> Result<()> {
        self.varint_u128(((v << 1) ^ (v >> 127)) as u128)
    }

    #[inline]
    fn serialize_u8(self, v: u8) -> Result<()> {
        self.out.push(v)
    }

    #[inline]
    fn serialize_u16(self, v: u16) -> Result<()> {
        self.varint_u16(v)
    }

    #[inline]
    fn serialize_u32(self, v: u32) -> Result<()> {
        self.varint_u32(v)
    }

    #[inline]
    fn serialize_u64(self, v: u64) -> Result<()> {
        self.varint_u64(v)
    }

    #[inline]
    fn serialize_u128(self, v: u128) -> Result<()> {
        self.varint_u128(v)
    }

    #[inline]
    fn serialize_f32(self, v: f32) -> Result<()> {
        self.out.extend(&v.to_bits().to_le_bytes())
    }

    #[inline]
    fn serialize_f64(self, v: f64) -> Result<()> {
        self.out.extend(&v.to_bits().to_le_bytes())
    }

    #[inline]
    fn serialize_char(self, v: char) -> Result<()> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }

    #[inline]
    fn serialize_str(self, v: &str) -> Result<()> {
        self.serialize_bytes(v.as_bytes())
    }

    #[inline]
    fn serialize_bytes(self, v: &[u8]) -> Result<()> {
        self.varint_usize(v.len())?;
        self.out.extend(v)
    }

    #[inline]
    fn serialize_none(self) -> Result<()> {
        self.out.push(0)
    }

    #[inline]
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<()> {
        self.out.push(1)?;
        value.serialize(self)
    }

    #[inline]
    fn serialize_unit(self) -> Result<()> {
        Ok(())
    }

    #[inline]
    fn serialize_unit_struct(self, _name: &'static str) -> Result<()> {
        Ok(())
    }

    #[inline]
    fn serialize_unit_variant(self, _name: &'static str, index: u32, _variant: &'static str) -> Result<()> {
        self.varint_u32(index)
    }

    #[inline]
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _name: &'static str, value: &T) -> Result<()> {
        value.serialize(self)
    }

    #[inline]
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
        value: &T,
    ) -> Result<()> {
        self.varint_u32(index)?;
        value.serialize(self)
    }

    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self> {
        self.varint_usize(len.ok_or(postcard::Error::SerializeSeqLengthUnknown)?)?;
        Ok(self)
    }

    #[inline]
    fn serialize_tuple(self, _len: usize) -> Result<Self> {
        Ok(self)
    }

    #[inline]
    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Self> {
        Ok(self)
    }

    #[inline]
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self> {
        self.varint_u32(index)?;
        Ok(self)
    }

    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<Self> {
        self.varint_usize(len.ok_or(postcard::Error::SerializeSeqLengthUnknown)?)?;
        Ok(self)
    }

    #[inline]
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self> {
        Ok(self)
    }

    #[inline]
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self> {
        self.varint_u32(index)?;
        Ok(self)
    }

    /// Slices and vectors of bytes and floats (serde hands them over as `&[E]` / `&Vec<E>`)
    /// go as their length and one copy of their memory, those of integers as their length
    /// and varints made in one loop; everything else element by element.
    fn collect_seq<I>(self, iter: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: Serialize,
    {
        if let Some((len, bytes)) = bulk::bulk_bytes(&iter) {
            self.varint_usize(len)?;
            return self.out.run(bytes.len().checked_div(len).unwrap_or(1), bytes);
        }
        macro_rules! ints {
            ($($t:ty),*) => {$(
                if let Some(values) = bulk::slice_of::<$t, I>(&iter) {
                    self.varint_usize(values.len())?;
                    let out = &mut self.out;
                    return seq::encode_varints(values, |bytes| out.extend(bytes));
                }
            )*};
        }
        ints!(u64, u32, i64, i32, usize, isize, u16, i16);
        let iter = iter.into_iter();
        let len = match iter.size_hint() {
            (lo, Some(hi)) if lo == hi => lo,
            _ => return Err(postcard::Error::SerializeSeqLengthUnknown),
        };
        self.varint_usize(len)?;
        for item in iter {
            item.serialize(&mut *self)?;
        }
        Ok(())
    }

    fn collect_str<T: ?Sized + std::fmt::Display>(self, value: &T) -> Result<()> {
        // The length goes first, so format twice: once to count, once to write.
        use std::fmt::Write;
        struct Counter(usize);
        impl Write for Counter {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                self.0 += s.len();
                Ok(())
            }
        }
        // The output's own error (a full buffer: go out of line) is kept, not made a
        // formatting error.
        struct Writer<'a, O>(&'a mut O, Option<postcard::Error>);
        impl<O: Output> Write for Writer<'_, O> {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                self.0.extend(s.as_bytes()).map_err(|e| {
                    self.1 = Some(e);
                    std::fmt::Error
                })
            }
        }
        let mut counter = Counter(0);
        write!(counter, "{value}").map_err(|_| postcard::Error::CollectStrError)?;
        self.varint_usize(counter.0)?;
        let mut writer = Writer(&mut self.out, None);
        write!(writer, "{value}").map_err(|_| writer.1.take().unwrap_or(postcard::Error::CollectStrError))
    }
}

macro_rules! compound {
    ($($trait:ident :: $method:ident),*) => {$(
        impl<O: Output> ser::$trait for &mut Serializer<O> {
            type Ok = ();
            type Error = postcard::Error;

            #[inline]
            fn $method<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<()> {
                value.serialize(&mut **self)
            }

            #[inline]
            fn end(self) -> Result<()> {
                Ok(())
            }
        }
    )*};
}
compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl<O: Output> ser::SerializeMap for &mut Serializer<O> {
    type Ok = ();
    type Error = postcard::Error;

    #[inline]
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<()> {
        key.serialize(&mut **self)
    }

    #[inline]
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<()> {
        value.serialize(&mut **self)
    }

    #[inline]
    fn end(self) -> Result<()> {
        Ok(())
    }
}

macro_rules! fields {
    ($($trait:ident),*) => {$(
        impl<O: Output> ser::$trait for &mut Serializer<O> {
            type Ok = ();
            type Error = postcard::Error;

            #[inline]
            fn serialize_field<T: ?Sized + Serialize>(&mut self, _key: &'static str, value: &T) -> Result<()> {
                value.serialize(&mut **self)
            }

            #[inline]
            fn end(self) -> Result<()> {
                Ok(())
            }
        }
    )*};
}
fields!(SerializeStruct, SerializeStructVariant);
