//! Typed values in a frame: postcard, written straight after room for the frame header.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::frame::{HEADER_MAX, encode_header};

/// Slices up to this long are appended byte by byte rather than with `memcpy`.
const SMALL_EXTEND: usize = 16;

/// A postcard flavor that appends to a borrowed `Vec`, so the send buffer is reused.
struct AppendVec<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendVec<'_> {
    type Output = ();

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        if bytes.len() <= SMALL_EXTEND {
            // A varint or a short field: a call to `memcpy` for a few bytes costs more than
            // the bytes (this is most of a small value's encoding).
            for &byte in bytes {
                self.0.push(byte);
            }
        } else {
            self.0.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends `value`'s postcard encoding to `buf`.
pub(crate) fn encode_append<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<()> {
    postcard::serialize_with_flavor(value, AppendVec(buf)).map_err(Error::Encode)
}

/// Encodes `value` as one whole frame in `buf`; the frame is `buf[start..]` for the returned
/// `start`.
///
/// `buf` is cleared first; the header is written in front of the payload, so the frame goes
/// out as one contiguous slice.
pub(crate) fn encode_frame<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<usize> {
    buf.clear();
    buf.extend_from_slice(&[0; HEADER_MAX]);
    postcard::serialize_with_flavor(value, AppendVec(buf)).map_err(Error::Encode)?;
    let payload_len = (buf.len() - HEADER_MAX) as u64;
    let mut header = [0; HEADER_MAX];
    let n = encode_header(payload_len, &mut header);
    let start = HEADER_MAX - n;
    buf[start..HEADER_MAX].copy_from_slice(&header[start..]);
    Ok(start)
}

/// Decodes a whole payload; trailing bytes mean the sender sent another type.
pub(crate) fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T> {
    decoding(|| match postcard::take_from_bytes(payload) {
        Ok((value, [])) => Ok(value),
        Ok(_) => Err(postcard::Error::DeserializeBadEncoding),
        Err(e) => Err(e),
    })
}

thread_local! {
    /// Why the decode in progress in this thread was refused, in words postcard would drop.
    static REFUSED: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs a postcard decode; a refusal recorded by [`refuse`] meanwhile becomes
/// [`Error::Mismatch`] (postcard keeps no custom message), any other failure
/// [`Error::Decode`].
pub(crate) fn decoding<T>(decode: impl FnOnce() -> postcard::Result<T>) -> Result<T> {
    let _ = REFUSED.try_with(|r| r.take());
    decode().map_err(|e| match REFUSED.try_with(|r| r.take()).ok().flatten() {
        Some(why) => Error::Mismatch(why),
        None => Error::Decode(e),
    })
}

/// A `Deserialize` impl refuses what it received, saying why (a shared object of another
/// type than the receiver's): the receive reports it as [`Error::Mismatch`].
pub(crate) fn refuse<E: serde::de::Error>(why: String) -> E {
    let e = E::custom(&why);
    let _ = REFUSED.try_with(|r| r.borrow_mut().get_or_insert(why).len());
    e
}

/// Scratch buffers above this size are dropped after use, so one huge message does not pin
/// its memory for the life of the end.
pub(crate) const SCRATCH_KEEP: usize = 4 << 20;

pub(crate) fn trim(buf: &mut Vec<u8>) {
    if buf.capacity() > SCRATCH_KEEP {
        *buf = Vec::new();
    }
}
