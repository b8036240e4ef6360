//! Sequences of integers in one loop: a slice or `Vec` of `u16`..`u64`, `i16`..`i64`, `usize`
//! or `isize` is encoded and decoded as postcard does it (one varint per element, signed ones
//! zigzagged first), but by a loop over the elements instead of one serde call each, and
//! decoded straight into the output `Vec` (reserved once, from the length, never past what
//! the bytes can hold).
//!
//! Which sequences take this path is found by type (`sys/bulk.rs`): the encoder's
//! `collect_seq`, the decoder's `deserialize_seq` for serde's visitor of `Vec<E>`, and
//! [`append`] (a sequence decoded onto the end of a `Vec`, for the pool's `map`).

use postcard::Error;
use serde::Deserialize;

use super::de::Deserializer;
use crate::sys::bulk::{self, Bulk, Elem};

type Result<T> = std::result::Result<T, Error>;

/// An integer type postcard encodes as one varint.
pub(crate) trait Varint: Elem {
    /// The varint's width in bits, as postcard reads it (16, 32 or 64): at most
    /// `BITS.div_ceil(7)` bytes, the last holding only the bits left over.
    const BITS: u32;
    /// The value postcard's varint carries (zigzagged, for a signed type).
    fn to_varint(self) -> u64;
    /// The value back from a varint below `2^BITS`; `None` if it does not fit (a `usize` of
    /// more than 32 bits on a 32-bit machine).
    fn from_varint(v: u64) -> Option<Self>;
}

macro_rules! unsigned {
    ($($t:ty: $bits:expr),*) => {$(
        impl Varint for $t {
            const BITS: u32 = $bits;
            #[inline(always)]
            fn to_varint(self) -> u64 {
                self as u64
            }
            #[inline(always)]
            fn from_varint(v: u64) -> Option<Self> {
                <$t>::try_from(v).ok()
            }
        }
    )*};
}
unsigned!(u16: 16, u32: 32, u64: 64, usize: 64);

macro_rules! signed {
    ($($t:ty, $u:ty: $bits:expr),*) => {$(
        impl Varint for $t {
            const BITS: u32 = $bits;
            #[inline(always)]
            fn to_varint(self) -> u64 {
                let v = self as i64;
                ((v << 1) ^ (v >> 63)) as $u as u64
            }
            #[inline(always)]
            fn from_varint(v: u64) -> Option<Self> {
                let v = v as $u;
                <$t>::try_from(((v >> 1) as i64) ^ -((v & 1) as i64)).ok()
            }
        }
    )*};
}
signed!(i16, u16: 16, i32, u32: 32, i64, u64: 64, isize, u64: 64);

/// Values encoded per block: each block is written to the stack, then handed to the output in
/// one piece.
const BLOCK: usize = 64;
/// The longest varint (a `u64`).
const MAX_VARINT: usize = 10;

/// Encodes `values` (without their length) as postcard's varints, a block at a time into
/// `out`.
#[inline]
pub(crate) fn encode_varints<E: Varint>(
    values: &[E],
    mut out: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let mut buf = [0u8; BLOCK * MAX_VARINT];
    for block in values.chunks(BLOCK) {
        let mut n = 0;
        for &value in block {
            let mut v = value.to_varint();
            // At most `MAX_VARINT` bytes per value, so `n` stays within `buf`.
            while v >= 0x80 {
                buf[n] = v as u8 | 0x80;
                v >>= 7;
                n += 1;
            }
            buf[n] = v as u8;
            n += 1;
        }
        out(&buf[..n])?;
    }
    Ok(())
}

/// Decodes `len` varints from the front of `input` onto the end of `out` (the bytes after
/// them are left in `input`). `len` is first checked against the bytes (each varint takes at
/// least one), so a hostile length reserves no more than the input could fill.
#[inline]
pub(crate) fn decode_varints<E: Varint>(input: &mut &[u8], len: usize, out: &mut Vec<E>) -> Result<()> {
    if len > input.len() {
        return Err(Error::DeserializeUnexpectedEnd);
    }
    out.reserve(len);
    let max = (E::BITS as usize).div_ceil(7);
    // The last byte may only hold the bits left over.
    let spare = E::BITS as usize - 7 * (max - 1);
    let mut bytes = *input;
    for _ in 0..len {
        let (&first, rest) = bytes.split_first().ok_or(Error::DeserializeUnexpectedEnd)?;
        bytes = rest;
        let v = if first < 0x80 {
            u64::from(first)
        } else {
            let mut v = u64::from(first & 0x7f);
            let mut i = 1;
            loop {
                let (&byte, rest) = bytes.split_first().ok_or(Error::DeserializeUnexpectedEnd)?;
                bytes = rest;
                v |= u64::from(byte & 0x7f) << (7 * i);
                if byte < 0x80 {
                    if i == max - 1 && usize::from(byte) >= (1 << spare) {
                        return Err(Error::DeserializeBadVarint);
                    }
                    break v;
                }
                i += 1;
                if i == max {
                    return Err(Error::DeserializeBadVarint);
                }
            }
        };
        out.push(E::from_varint(v).ok_or(Error::DeserializeBadVarint)?);
    }
    *input = bytes;
    Ok(())
}

/// Decodes the sequence at the front of `input` (its length, then its elements) onto the end
/// of `values`; the bytes after it are left in `input`. Integers, bytes and floats in one
/// loop or one copy; other types element by element. On an error `values` may hold some of
/// the elements.
pub(crate) fn append<'de, T: Deserialize<'de>>(input: &mut &'de [u8], values: &mut Vec<T>) -> Result<()> {
    let mut de = Deserializer::new(input);
    let len = de.varint_usize()?;
    let mut rest = de.rest();
    macro_rules! ints {
        ($($t:ty),*) => {$(
            if let Some(values) = bulk::vec_mut_as::<$t, T>(values) {
                decode_varints(&mut rest, len, values)?;
                *input = rest;
                return Ok(());
            }
        )*};
    }
    ints!(u64, u32, i64, i32, usize, isize, u16, i16);
    macro_rules! bytes {
        ($($t:ty),*) => {$(
            if let Some(values) = bulk::vec_mut_as::<$t, T>(values) {
                append_bulk(&mut rest, len, values)?;
                *input = rest;
                return Ok(());
            }
        )*};
    }
    bytes!(u8, i8);
    #[cfg(target_endian = "little")]
    bytes!(f32, f64);
    // Each element takes at least a byte, except a few that take none (`()`): reserved no
    // further than the bytes go either way.
    values.reserve(len.min(rest.len()));
    let mut de = Deserializer::new(rest);
    for _ in 0..len {
        values.push(T::deserialize(&mut de)?);
    }
    *input = de.rest();
    Ok(())
}

/// Takes `len` elements of a bulk type from the front of `input` onto `out`, in one copy.
pub(crate) fn append_bulk<E: Bulk>(input: &mut &[u8], len: usize, out: &mut Vec<E>) -> Result<()> {
    let n = len.checked_mul(size_of::<E>()).ok_or(Error::DeserializeUnexpectedEnd)?;
    if n > input.len() {
        return Err(Error::DeserializeUnexpectedEnd);
    }
    let (taken, rest) = input.split_at(n);
    bulk::extend_from_bytes(out, taken, len);
    *input = rest;
    Ok(())
}
