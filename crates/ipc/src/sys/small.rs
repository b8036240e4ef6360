//! The `unsafe` of the small-message path: a frame built on the stack without zero-filling
//! its buffer first, so a small send touches only the cache lines its bytes take.

#![allow(unsafe_code)]

use std::mem::MaybeUninit;

/// A short frame header's length: a 4-byte big-endian payload length (`frame.rs`).
const SHORT_HEADER: usize = 4;

/// The most bytes a [`SmallFrame`] holds, its 4-byte header included.
pub(crate) const SMALL_FRAME: usize = 256;

/// One frame with a short header, built on the stack: room for the header, then payload bytes
/// appended up to [`SMALL_FRAME`] in all.
///
/// Invariant: `buf[..len]` is initialized, and `SHORT_HEADER <= len <= SMALL_FRAME`.
pub(crate) struct SmallFrame {
    buf: [MaybeUninit<u8>; SMALL_FRAME],
    len: usize,
}

impl SmallFrame {
    /// An empty payload behind room for the header.
    #[inline]
    pub(crate) fn new() -> Self {
        let mut buf = [MaybeUninit::uninit(); SMALL_FRAME];
        // The header's bytes, written for real by `frame`: now they are initialized.
        buf[..SHORT_HEADER].copy_from_slice(&[MaybeUninit::new(0); SHORT_HEADER]);
        SmallFrame { buf, len: SHORT_HEADER }
    }

    /// Appends `byte`; `false` (nothing appended) if the frame is full.
    #[inline]
    pub(crate) fn push(&mut self, byte: u8) -> bool {
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                slot.write(byte);
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// Appends `bytes`; `false` (nothing appended) if they do not fit.
    #[inline]
    pub(crate) fn extend(&mut self, bytes: &[u8]) -> bool {
        let Some(room) = self.buf.get_mut(self.len..self.len + bytes.len()) else { return false };
        // A few bytes (a varint, a short field) by hand: a `memcpy` call costs more.
        if bytes.len() <= 16 {
            for (slot, &byte) in room.iter_mut().zip(bytes) {
                slot.write(byte);
            }
        } else {
            room.copy_from_slice(as_uninit(bytes));
        }
        self.len += bytes.len();
        true
    }

    /// The whole frame: the header for the payload appended so far, then the payload.
    #[inline]
    pub(crate) fn frame(&mut self) -> &[u8] {
        // `len <= SMALL_FRAME`, far below `i32::MAX`: a short header.
        let header = ((self.len - SHORT_HEADER) as u32).to_be_bytes();
        self.buf[..SHORT_HEADER].copy_from_slice(as_uninit(&header));
        let init = &self.buf[..self.len];
        // SAFETY: `buf[..len]` is initialized (the type's invariant: `new` wrote the header
        // bytes, `push` and `extend` each byte up to `len`), and `MaybeUninit<u8>` has the
        // layout of `u8`.
        unsafe { &*(init as *const [MaybeUninit<u8>] as *const [u8]) }
    }
}

/// `bytes` as initialized `MaybeUninit`s (safe: `MaybeUninit<u8>` is `u8`'s layout, and
/// nothing can write uninitialized bytes through a shared slice).
#[inline]
fn as_uninit(bytes: &[u8]) -> &[MaybeUninit<u8>] {
    // SAFETY: `MaybeUninit<u8>` has `u8`'s size, alignment and validity (every `u8` is a
    // valid one); the slice is shared, so nothing writes through it.
    unsafe { &*(bytes as *const [u8] as *const [MaybeUninit<u8>]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_frame_is_its_header_then_its_bytes_until_full() {
        let mut f = SmallFrame::new();
        assert_eq!(f.frame(), &[0, 0, 0, 0]);
        assert!(f.push(7));
        assert!(f.extend(&[1, 2, 3]));
        assert!(f.extend(&[9; 40]));
        let mut want = vec![0, 0, 0, 44, 7, 1, 2, 3];
        want.extend([9; 40]);
        assert_eq!(f.frame(), want.as_slice());
        // Fill it to the last byte: then neither a byte nor a slice more goes in.
        let room = SMALL_FRAME - want.len();
        assert!(!f.extend(&vec![5; room + 1]));
        assert!(f.extend(&vec![5; room - 1]));
        assert!(f.push(6));
        assert!(!f.push(6));
        assert!(!f.extend(&[6]));
        assert!(f.extend(&[]));
        let frame = f.frame();
        assert_eq!(frame.len(), SMALL_FRAME);
        assert_eq!(frame[..4], ((SMALL_FRAME - 4) as u32).to_be_bytes());
        assert_eq!(frame[SMALL_FRAME - 1], 6);
    }
}
