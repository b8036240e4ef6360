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
            // At most `MAX_VARINT` bytes per value, so `n` stays within `buf`.
            n += put_varint(value.to_varint(), &mut buf[n..n + MAX_VARINT]);
        }
        out(&buf[..n])?;
    }
    Ok(())
}

/// Writes `v` as a varint at the start of `slot`, and says how many bytes it took.
#[inline(always)]
fn put_varint(v: u64, slot: &mut [u8]) -> usize {
    // Small values, the most common, by their own short paths (a branch that a run of
    // values of one size predicts).
    if v < 1 << 7 {
        slot[0] = v as u8;
        return 1;
    }
    if v < 1 << 14 {
        slot[..2].copy_from_slice(&[v as u8 | 0x80, (v >> 7) as u8]);
        return 2;
    }
    if v < 1 << 21 {
        slot[..3].copy_from_slice(&[v as u8 | 0x80, (v >> 7) as u8 | 0x80, (v >> 14) as u8]);
        return 3;
    }
    if v < 1 << 56 {
        // At most 8 bytes: made in a word, without a branch per byte. The 7-bit groups are
        // spread to one a byte in three steps (28-bit halves, 14-bit quarters, 7-bit
        // bytes), and every byte but the last gets its continuation bit.
        let len = (64 - (v | 1).leading_zeros() as usize).div_ceil(7);
        let x = (v & 0x0fff_ffff) | ((v & 0x00ff_ffff_f000_0000) << 4);
        let x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x0fff_c000_0fff_c000) << 2);
        let x = (x & 0x007f_007f_007f_007f) | ((x & 0x3f80_3f80_3f80_3f80) << 1);
        let more = 0x8080_8080_8080_8080 & ((1u64 << (8 * (len - 1))) - 1);
        slot[..8].copy_from_slice(&(x | more).to_le_bytes());
        return len;
    }
    let (mut v, mut n) = (v, 0);
    while v >= 0x80 {
        slot[n] = v as u8 | 0x80;
        v >>= 7;
        n += 1;
    }
    slot[n] = v as u8;
    n + 1
}

/// Reads a varint of at most `max` bytes whose value is below `2^bits` from the front of
/// `bytes` (postcard's check: no more bytes than the type takes, and no bits past its
/// width in the last one): the value and the bytes after it.
#[inline(always)]
fn take_varint(bytes: &[u8], max: usize, bits: u32) -> Result<(u64, &[u8])> {
    if let Some(word) = bytes.first_chunk::<8>() {
        // The common case, at least 8 bytes left. Varints of up to 3 bytes (within every
        // type's width) by their own short paths; longer ones' end found in a word, their
        // 7-bit groups gathered in three steps (the reverse of `put_varint`'s).
        let [b0, b1, b2, ..] = *word;
        if b0 < 0x80 {
            return Ok((u64::from(b0), &bytes[1..]));
        }
        let v = u64::from(b0 & 0x7f) | u64::from(b1 & 0x7f) << 7;
        if b1 < 0x80 {
            return Ok((v, &bytes[2..]));
        }
        if b2 < 0x80 && (bits > 16 || b2 < 4) {
            return Ok((v | u64::from(b2) << 14, &bytes[3..]));
        }
        let word = u64::from_le_bytes(*word);
        let ends = !word & 0x8080_8080_8080_8080;
        if ends != 0 {
            let len = (ends.trailing_zeros() as usize + 1) / 8;
            let x = word & (ends ^ (ends - 1)) & 0x7f7f_7f7f_7f7f_7f7f;
            let x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
            let x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
            let v = (x & 0x0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4);
            if len > max || (bits < 64 && v >> bits != 0) {
                return Err(Error::DeserializeBadVarint);
            }
            return Ok((v, &bytes[len..]));
        }
    }
    let spare = bits as usize - 7 * (max - 1);
    let mut v = 0;
    for (i, &byte) in bytes.iter().enumerate().take(max) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            // The last byte may only hold the bits left over.
            if i == max - 1 && usize::from(byte) >= (1 << spare) {
                return Err(Error::DeserializeBadVarint);
            }
            return Ok((v, &bytes[i + 1..]));
        }
    }
    Err(if bytes.len() < max { Error::DeserializeUnexpectedEnd } else { Error::DeserializeBadVarint })
}

/// Decodes `len` varints from the front of `input` onto the end of `out` (the bytes after
/// them are left in `input`). `len` is first checked against the bytes (each varint takes at
/// least one), so a hostile length reserves no more than the input could fill.
#[inline]
pub(crate) fn decode_varints<E: Varint>(input: &mut &[u8], len: usize, out: &mut Vec<E>) -> Result<()> {
    if len > input.len() {
        return Err(Error::DeserializeUnexpectedEnd);
    }
    let max = (E::BITS as usize).div_ceil(7);
    let mut bytes = *input;
    bulk::extend_with(out, len, || {
        let (v, rest) = take_varint(bytes, max, E::BITS)?;
        bytes = rest;
        E::from_varint(v).ok_or(Error::DeserializeBadVarint)
    })?;
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
    // `$decode` for the first of the types `T` is, if any.
    macro_rules! decode_as {
        ($decode:ident: $($t:ty),*) => {$(
            if let Some(values) = bulk::vec_mut_as::<$t, T>(values) {
                $decode(&mut rest, len, values)?;
                *input = rest;
                return Ok(());
            }
        )*};
    }
    decode_as!(decode_varints: u64, u32, i64, i32, usize, isize, u16, i16);
    decode_as!(append_bulk: u8, i8);
    #[cfg(target_endian = "little")]
    decode_as!(append_bulk: f32, f64);
    // Each element takes at least a byte, except a few that take none (`()`): reserved no
    // further than the bytes go either way, and counted as the decoder counts elements.
    de.count(len)?;
    values.reserve(len.min(rest.len()));
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
    // A large run of a value out of line may have its `Vec` made ready (faulted in) while the
    // sender was still writing it (see `ready.rs`).
    if n >= super::ready::MIN
        && out.capacity() == 0
        && let Some(prepared) = super::ready::take::<E>(taken)
    {
        *out = prepared;
    }
    bulk::extend_from_bytes(out, taken, len);
    *input = rest;
    Ok(())
}
