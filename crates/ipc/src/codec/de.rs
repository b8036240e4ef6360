//! A postcard deserializer that reads postcard's bytes (what `postcard::from_bytes` reads),
//! with one addition: a `Vec` of bytes or floats is taken as one copy of its bytes, after one
//! bounds check, and a `Vec` of integers in one loop (`seq.rs`), instead of one visitor call
//! per element.
//!
//! Written after postcard 1.x's `de/deserializer.rs` (MIT OR Apache-2.0); see `ser.rs` for
//! the format.

use std::any::TypeId;
use std::cell::Cell;
use std::sync::OnceLock;

use postcard::Error;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use super::seq::{self, Varint};
use crate::sys::bulk::{self, Bulk};

type Result<T> = std::result::Result<T, Error>;

/// How deep values may nest (sequences, maps, tuples, structs, enums, options and newtypes
/// inside one another) before a decode is refused: each level is a few frames of recursion,
/// and a peer's million one-byte levels would overflow the receiving thread's stack.
pub(crate) const MAX_DEPTH: u32 = 256;

/// How many elements of sequences and maps may take no bytes at all (`()`, unit structs),
/// summed over one decode, before it is refused: a peer's ten-byte count of 2^60 such
/// elements (or a thousand counts of a thousand, nested) would otherwise keep the receiver
/// looping for years.
pub(crate) const MAX_EMPTY_ELEMENTS: usize = 1 << 24;

/// Reads one value from the front of `input`: the value and the bytes after it.
#[inline]
pub(crate) fn take_from_bytes<'de, T: de::Deserialize<'de>>(input: &'de [u8]) -> Result<(T, &'de [u8])> {
    let mut deserializer = Deserializer::new(input);
    let value = T::deserialize(&mut deserializer)?;
    Ok((value, deserializer.input))
}

/// Reads one value from a payload whose front is `input` and whose rest `more` reads as the
/// decode needs it; the payload must hold exactly the value. Gives `more` back: how many bytes
/// it left unread.
pub(crate) fn take_streamed<'de, T: de::Deserialize<'de>>(
    input: &'de [u8],
    more: Refill<'de>,
) -> (Result<T>, Refill<'de>) {
    let elements = input.len().saturating_add(more.left).saturating_add(MAX_EMPTY_ELEMENTS);
    let mut deserializer = Deserializer { input, depth: MAX_DEPTH, elements, more };
    let value = T::deserialize(&mut deserializer);
    let Deserializer { input, more, .. } = deserializer;
    match value {
        Ok(_) if !input.is_empty() || more.left > 0 => (Err(Error::DeserializeBadEncoding), more),
        value => (value, more),
    }
}

/// Where a [`Deserializer`] gets the payload bytes that are not in its `input` yet: nowhere
/// ([`Whole`], a payload decoded from a slice, which compiles to exactly that), or the stream
/// ([`Refill`]).
pub(crate) trait More<'de> {
    /// Whether bytes may come from the stream at all.
    const STREAMED: bool;
    /// Payload bytes still in the stream.
    fn left(&self) -> usize;
    /// Makes `input` hold at least `need` bytes (more than it does), or "unexpected end".
    fn refill(&mut self, input: &mut &'de [u8], need: usize) -> Result<()>;
    /// Appends `len` elements of a bulk type to `values`, taken from `input` and then the
    /// stream.
    fn bulk<E: Bulk>(&mut self, input: &mut &'de [u8], len: usize, values: &mut Vec<E>) -> Result<()>;
}

/// The whole payload is in the input.
pub(crate) struct Whole;

impl<'de> More<'de> for Whole {
    const STREAMED: bool = false;

    #[inline(always)]
    fn left(&self) -> usize {
        0
    }

    #[inline(always)]
    fn refill(&mut self, _input: &mut &'de [u8], _need: usize) -> Result<()> {
        Err(Error::DeserializeUnexpectedEnd)
    }

    #[inline(always)]
    fn bulk<E: Bulk>(&mut self, input: &mut &'de [u8], len: usize, values: &mut Vec<E>) -> Result<()> {
        seq::append_bulk(input, len, values)
    }
}

/// The part of a payload still in the stream, read as a decode needs it: a large frame is
/// decoded as it arrives, and its sequences of bytes and floats (and long strings) are read
/// straight into the values they become, with no copy in a receive buffer first.
pub(crate) struct Refill<'de> {
    /// Reads the next bytes into the front of the room given and returns them (none after an
    /// interruption: called again); `None` when reading failed (the caller keeps why).
    read: ReadSome<'de>,
    /// Payload bytes still in the stream.
    pub(crate) left: usize,
    /// Buffers for input that must be contiguous (an item cut by the end of what was read),
    /// each filled once and then read from for the rest of the decode: the next [`REFILL`]
    /// bytes each, and everything left in the last one.
    spares: &'de mut [Vec<u8>],
}

/// How a [`Refill`] reads (see its `read`).
pub(crate) type ReadSome<'a> =
    &'a mut dyn for<'b> FnMut(&'b mut [std::mem::MaybeUninit<u8>]) -> Option<&'b mut [u8]>;

/// How many bytes a refill reads at least (all that is left when less is): a pipe's capacity.
pub(crate) const REFILL: usize = 64 << 10;

/// What the frame reader's `RESERVE_STEP` is to it: a sequence read from the stream gets room
/// for at most this many more bytes before the bytes before them have arrived, so a length
/// that claims a huge sequence costs nothing until the peer really sends it.
const RESERVE_STEP: usize = 16 << 20;

impl<'de> Refill<'de> {
    /// `left` bytes, read by `read`, with `spares` for input that must be contiguous (at
    /// least one; the last may hold a buffer to reuse: it takes everything left, if used).
    pub(crate) fn new(read: ReadSome<'de>, left: usize, spares: &'de mut [Vec<u8>]) -> Self {
        assert!(!spares.is_empty(), "a refill needs a spare buffer");
        Refill { read, left, spares }
    }

    /// Reads bytes of the stream into the front of `room`.
    fn read<'b>(read: &mut ReadSome<'de>, room: &'b mut [std::mem::MaybeUninit<u8>]) -> Result<&'b mut [u8]> {
        read(room).ok_or(Error::DeserializeUnexpectedEnd)
    }
}

impl<'de> More<'de> for Refill<'de> {
    const STREAMED: bool = true;

    fn left(&self) -> usize {
        self.left
    }

    /// Reads into a spare buffer that starts with what `input` held: at least [`REFILL`]
    /// bytes more, all that is left in the last spare.
    #[cold]
    #[inline(never)]
    fn refill(&mut self, input: &mut &'de [u8], need: usize) -> Result<()> {
        let short = need - input.len();
        if short > self.left {
            return Err(Error::DeserializeUnexpectedEnd);
        }
        let (spare, rest) =
            std::mem::take(&mut self.spares).split_first_mut().ok_or(Error::DeserializeUnexpectedEnd)?;
        let want = if rest.is_empty() { self.left } else { short.max(REFILL).min(self.left) };
        self.spares = rest;
        spare.clear();
        // What `input` holds and `want` bytes more, read in steps as a sequence of bytes is
        // (a long string's claimed length reserves nothing before its bytes arrive).
        let mut held = *input;
        self.bulk::<u8>(&mut held, input.len() + want, spare)?;
        let spare: &'de Vec<u8> = spare;
        *input = spare;
        Ok(())
    }

    /// Read straight into `values` when they are not all in `input`, in steps of at most
    /// [`RESERVE_STEP`] bytes of room.
    fn bulk<E: Bulk>(&mut self, input: &mut &'de [u8], len: usize, values: &mut Vec<E>) -> Result<()> {
        let n = len.checked_mul(size_of::<E>()).ok_or(Error::DeserializeUnexpectedEnd)?;
        if n <= input.len() {
            return seq::append_bulk(input, len, values);
        }
        if n - input.len() > self.left {
            return Err(Error::DeserializeUnexpectedEnd);
        }
        let mut prefix = std::mem::take(input);
        let mut done = 0;
        while done < len {
            let step = (len - done).min(done.max(RESERVE_STEP / size_of::<E>()));
            let (now, later) = prefix.split_at(prefix.len().min(step * size_of::<E>()));
            let read = &mut self.read;
            bulk::extend_read(values, step, now, |room| Refill::read(read, room))?;
            self.left -= step * size_of::<E>() - now.len();
            prefix = later;
            done += step;
        }
        Ok(())
    }
}

pub(crate) struct Deserializer<'de, M = Whole> {
    input: &'de [u8],
    /// Levels of nesting left (see [`MAX_DEPTH`]).
    depth: u32,
    /// Elements of sequences and maps the rest of the decode may still hold (see [`count`]).
    ///
    /// [`count`]: Deserializer::count
    elements: usize,
    /// Where the rest of the payload comes from.
    more: M,
}

impl<'de> Deserializer<'de> {
    /// Reads from the front of `input`.
    #[inline]
    pub(crate) fn new(input: &'de [u8]) -> Self {
        let elements = input.len().saturating_add(MAX_EMPTY_ELEMENTS);
        Deserializer { input, depth: MAX_DEPTH, elements, more: Whole }
    }

    /// The bytes not read yet.
    pub(crate) fn rest(&self) -> &'de [u8] {
        self.input
    }
}

impl<'de, M: More<'de>> Deserializer<'de, M> {
    /// The bytes of the payload not read yet, in `input` and in the stream.
    #[inline]
    fn bytes_left(&self) -> usize {
        self.input.len() + self.more.left()
    }

    #[inline]
    fn pop_refilled(&mut self) -> Result<u8> {
        self.more.refill(&mut self.input, 1)?;
        let (&first, rest) = self.input.split_first().ok_or(Error::DeserializeUnexpectedEnd)?;
        self.input = rest;
        Ok(first)
    }

    #[inline]
    fn take_refilled(&mut self, n: usize) -> Result<&'de [u8]> {
        self.more.refill(&mut self.input, n)?;
        if n > self.input.len() {
            return Err(Error::DeserializeUnexpectedEnd);
        }
        let (taken, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(taken)
    }
}

macro_rules! varint {
    ($name:ident, $t:ty) => {
        #[inline]
        fn $name(&mut self) -> Result<$t> {
            const MAX: usize = (<$t>::BITS as usize).div_ceil(7);
            let mut out: $t = 0;
            for i in 0..MAX {
                let byte = self.pop()?;
                out |= ((byte & 0x7f) as $t) << (7 * i);
                if byte & 0x80 == 0 {
                    // The last byte may only hold the bits left over.
                    let spare = (<$t>::BITS as usize) - 7 * (MAX - 1);
                    if i == MAX - 1 && (byte as u32) >= (1u32 << spare) {
                        return Err(Error::DeserializeBadVarint);
                    }
                    return Ok(out);
                }
            }
            Err(Error::DeserializeBadVarint)
        }
    };
}

impl<'de, M: More<'de>> Deserializer<'de, M> {
    #[inline]
    fn pop(&mut self) -> Result<u8> {
        let Some((&first, rest)) = self.input.split_first() else { return self.pop_refilled() };
        self.input = rest;
        Ok(first)
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'de [u8]> {
        if n > self.input.len() {
            return self.take_refilled(n);
        }
        let (taken, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(taken)
    }

    /// Runs `f` one level of nesting deeper, or refuses past [`MAX_DEPTH`].
    #[inline]
    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.depth == 0 {
            return Err(crate::codec::refuse(format!("the value is nested deeper than {MAX_DEPTH} levels")));
        }
        self.depth -= 1;
        let out = f(self);
        self.depth += 1;
        out
    }

    /// Charges a sequence's or map's element count `len` to the decode's budget of elements,
    /// or refuses. Every element of more than no bytes has a byte of its own (a leaf's, or the
    /// count of a sequence inside it), so an honest value has at most as many elements, all
    /// levels together, as input bytes plus its elements of no bytes: the budget is that, with
    /// up to [`MAX_EMPTY_ELEMENTS`] of the latter. So a decode loops at most that many times.
    #[inline]
    pub(crate) fn count(&mut self, len: usize) -> Result<()> {
        match self.elements.checked_sub(len) {
            Some(left) => {
                self.elements = left;
                Ok(())
            }
            None => Err(crate::codec::refuse(format!(
                "a count of {len} elements, more than {} bytes can hold with at most {MAX_EMPTY_ELEMENTS} elements of no bytes",
                self.input.len()
            ))),
        }
    }

    varint!(varint_u16, u16);
    varint!(varint_u32, u32);
    varint!(varint_u64, u64);
    varint!(varint_u128, u128);

    #[inline]
    pub(crate) fn varint_usize(&mut self) -> Result<usize> {
        usize::try_from(self.varint_u64()?).map_err(|_| Error::DeserializeBadVarint)
    }

    /// The `len` elements of a `Vec<E>` as one copy, for serde's visitor of `Vec<E>` (read
    /// straight into it, if they are still in the stream).
    fn bulk<E: Bulk, V: Visitor<'de>>(&mut self, len: usize) -> Result<V::Value> {
        let mut values = Vec::new();
        self.more.bulk(&mut self.input, len, &mut values)?;
        bulk::vec_as::<E, V::Value>(values).map_err(|_| Error::DeserializeBadEncoding)
    }

    /// `n` bytes as a `Vec`, read straight into it when they are still in the stream, else
    /// `None` (the caller borrows them from `input`).
    #[inline]
    fn owned_bytes(&mut self, n: usize) -> Result<Option<Vec<u8>>> {
        if !M::STREAMED || n <= self.input.len() {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        self.more.bulk(&mut self.input, n, &mut bytes)?;
        Ok(Some(bytes))
    }

    /// The `len` elements of a `Vec<E>` of integers in one loop, for serde's visitor of
    /// `Vec<E>`.
    fn ints<E: Varint, V: Visitor<'de>>(&mut self, len: usize) -> Result<V::Value> {
        if M::STREAMED && self.more.left() > 0 {
            // From one slice: all the rest of the payload.
            let all = self.bytes_left();
            self.more.refill(&mut self.input, all)?;
        }
        let mut values = Vec::new();
        seq::decode_varints(&mut self.input, len, &mut values)?;
        bulk::vec_as::<E, V::Value>(values).map_err(|_| Error::DeserializeBadEncoding)
    }
}

macro_rules! vec_visitors {
    ($($(#[$cfg:meta])* $t:ident: $how:ident),*) => {
        /// The visitor types serde's `Deserialize for Vec<E>` uses, one per bulk or integer
        /// `E`, found once by asking each to deserialize from [`Probe`]. `None` where serde
        /// does it some other way.
        struct VecVisitors {
            $($(#[$cfg])* $t: Option<TypeId>,)*
        }

        fn vec_visitors() -> &'static VecVisitors {
            static VISITORS: OnceLock<VecVisitors> = OnceLock::new();
            VISITORS.get_or_init(|| VecVisitors { $($(#[$cfg])* $t: visitor_of::<Vec<$t>>(),)* })
        }

        impl<'de, M: More<'de>> Deserializer<'de, M> {
            /// The sequence of `len` elements for `visitor`, in one copy or one loop if it is
            /// serde's visitor of a `Vec` of bytes, floats or integers; else element by element.
            fn seq<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value> {
                let (ids, id) = (vec_visitors(), Some(bulk::type_id::<V>()));
                $(
                    $(#[$cfg])*
                    if id == ids.$t {
                        return self.$how::<$t, V>(len);
                    }
                )*
                self.count(len)?;
                self.nested(|de| visitor.visit_seq(SeqAccess { deserializer: de, len }))
            }
        }
    };
}
vec_visitors!(
    u8: bulk,
    i8: bulk,
    #[cfg(target_endian = "little")]
    f32: bulk,
    #[cfg(target_endian = "little")]
    f64: bulk,
    u64: ints,
    u32: ints,
    i64: ints,
    i32: ints,
    usize: ints,
    isize: ints,
    u16: ints,
    i16: ints
);

/// The type of the visitor `T::deserialize` hands to `deserialize_seq`.
fn visitor_of<T: DeserializeOwned>() -> Option<TypeId> {
    let found = Cell::new(None);
    let _ = T::deserialize(Probe(&found));
    found.get()
}

/// A deserializer that only notes which visitor asked it for a sequence.
struct Probe<'a>(&'a Cell<Option<TypeId>>);

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        Err(Error::WontImplement)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        self.0.set(Some(bulk::type_id::<V>()));
        Err(Error::WontImplement)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct tuple tuple_struct map struct enum identifier
        ignored_any
    }
}

struct SeqAccess<'a, 'de, M> {
    deserializer: &'a mut Deserializer<'de, M>,
    len: usize,
}

impl<'de, M: More<'de>> de::SeqAccess<'de> for SeqAccess<'_, 'de, M> {
    type Error = Error;

    #[inline]
    fn next_element_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<Option<V::Value>> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        seed.deserialize(&mut *self.deserializer).map(Some)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        // Never more than the bytes left: a hostile length must not reserve memory.
        (self.len <= self.deserializer.bytes_left()).then_some(self.len)
    }
}

struct MapAccess<'a, 'de, M> {
    deserializer: &'a mut Deserializer<'de, M>,
    len: usize,
}

impl<'de, M: More<'de>> de::MapAccess<'de> for MapAccess<'_, 'de, M> {
    type Error = Error;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        seed.deserialize(&mut *self.deserializer).map(Some)
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.deserializer)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        Some(self.len)
    }
}

impl<'de, M: More<'de>> de::Deserializer<'de> for &mut Deserializer<'de, M> {
    type Error = Error;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        Err(Error::WontImplement)
    }

    #[inline]
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.pop()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            _ => Err(Error::DeserializeBadBool),
        }
    }

    #[inline]
    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i8(self.pop()? as i8)
    }

    #[inline]
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let n = self.varint_u16()?;
        visitor.visit_i16(((n >> 1) as i16) ^ -((n & 1) as i16))
    }

    #[inline]
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let n = self.varint_u32()?;
        visitor.visit_i32(((n >> 1) as i32) ^ -((n & 1) as i32))
    }

    #[inline]
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let n = self.varint_u64()?;
        visitor.visit_i64(((n >> 1) as i64) ^ -((n & 1) as i64))
    }

    #[inline]
    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let n = self.varint_u128()?;
        visitor.visit_i128(((n >> 1) as i128) ^ -((n & 1) as i128))
    }

    #[inline]
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u8(self.pop()?)
    }

    #[inline]
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u16(self.varint_u16()?)
    }

    #[inline]
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u32(self.varint_u32()?)
    }

    #[inline]
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u64(self.varint_u64()?)
    }

    #[inline]
    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u128(self.varint_u128()?)
    }

    #[inline]
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let bytes = self.take(4)?;
        visitor.visit_f32(f32::from_le_bytes(bytes.try_into().map_err(|_| Error::DeserializeUnexpectedEnd)?))
    }

    #[inline]
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let bytes = self.take(8)?;
        visitor.visit_f64(f64::from_le_bytes(bytes.try_into().map_err(|_| Error::DeserializeUnexpectedEnd)?))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let n = self.varint_usize()?;
        if n > 4 {
            return Err(Error::DeserializeBadChar);
        }
        let text = std::str::from_utf8(self.take(n)?).map_err(|_| Error::DeserializeBadChar)?;
        let mut chars = text.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => visitor.visit_char(c),
            _ => Err(Error::DeserializeBadChar),
        }
    }

    #[inline]
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let n = self.varint_usize()?;
        let text = std::str::from_utf8(self.take(n)?).map_err(|_| Error::DeserializeBadUtf8)?;
        visitor.visit_borrowed_str(text)
    }

    #[inline]
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let n = self.varint_usize()?;
        match self.owned_bytes(n)? {
            None => {
                let text = std::str::from_utf8(self.take(n)?).map_err(|_| Error::DeserializeBadUtf8)?;
                visitor.visit_borrowed_str(text)
            }
            Some(bytes) => {
                visitor.visit_string(String::from_utf8(bytes).map_err(|_| Error::DeserializeBadUtf8)?)
            }
        }
    }

    #[inline]
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let n = self.varint_usize()?;
        visitor.visit_borrowed_bytes(self.take(n)?)
    }

    #[inline]
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let n = self.varint_usize()?;
        match self.owned_bytes(n)? {
            None => visitor.visit_borrowed_bytes(self.take(n)?),
            Some(bytes) => visitor.visit_byte_buf(bytes),
        }
    }

    #[inline]
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.pop()? {
            0 => visitor.visit_none(),
            1 => self.nested(|de| visitor.visit_some(de)),
            _ => Err(Error::DeserializeBadOption),
        }
    }

    #[inline]
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_unit()
    }

    #[inline]
    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value> {
        visitor.visit_unit()
    }

    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.nested(|de| visitor.visit_newtype_struct(de))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.varint_usize()?;
        self.seq(len, visitor)
    }

    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        self.nested(|de| visitor.visit_seq(SeqAccess { deserializer: de, len }))
    }

    #[inline]
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.varint_usize()?;
        self.count(len)?;
        self.nested(|de| visitor.visit_map(MapAccess { deserializer: de, len }))
    }

    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_tuple(fields.len(), visitor)
    }

    #[inline]
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.nested(|de| visitor.visit_enum(de))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        Err(Error::WontImplement)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        Err(Error::WontImplement)
    }
}

impl<'de, M: More<'de>> de::VariantAccess<'de> for &mut Deserializer<'de, M> {
    type Error = Error;

    #[inline]
    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    #[inline]
    fn newtype_variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<V::Value> {
        seed.deserialize(self)
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        de::Deserializer::deserialize_tuple(self, fields.len(), visitor)
    }
}

impl<'de, M: More<'de>> de::EnumAccess<'de> for &mut Deserializer<'de, M> {
    type Error = Error;
    type Variant = Self;

    #[inline]
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let index = self.varint_u32()?;
        let value = seed.deserialize(IntoDeserializer::<'de, Error>::into_deserializer(index))?;
        Ok((value, self))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// The visitor types found for `Vec<u8>`, `Vec<i8>`, `Vec<f32>`, `Vec<f64>`, `Vec<u64>`,
    /// `Vec<i32>`.
    pub(crate) fn visitor_ids() -> [Option<std::any::TypeId>; 6] {
        let ids = super::vec_visitors();
        [ids.u8, ids.i8, ids.f32, ids.f64, ids.u64, ids.i32]
    }
}
