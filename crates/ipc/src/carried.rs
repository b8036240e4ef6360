//! A value encoded now and decoded later, in another process, with the ends inside it.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// A value encoded (postcard) together with the file descriptors of the ends and shared
/// regions inside it: what a layer above keeps and forwards as bytes (a pool's task
/// arguments) while the ends in the value still reach the process that decodes it.
///
/// Sent inside a value over a duplex [`Connection`](crate::Connection), its fds go along
/// (`SCM_RIGHTS`); [`decode`](Carried::decode) gives the value back, its ends working, in any
/// process that received it (or in this one). `Clone` shares the bytes and the fds.
#[derive(Clone, Debug, Default)]
pub struct Carried {
    bytes: Bytes,
    fds: Arc<[OwnedFd]>,
}

/// A `Carried`'s bytes: encoded here, or received out of line and left in the mapping of the
/// value that brought them (most of it: a pool task's large arguments are decoded from where
/// they arrived, not copied out first).
#[derive(Clone, Debug)]
enum Bytes {
    Owned(Arc<Vec<u8>>),
    Mapped(crate::outofline::Mapped),
}

impl Default for Bytes {
    fn default() -> Bytes {
        Bytes::Owned(Arc::default())
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped(m) => m.bytes(),
        }
    }
}

/// The fds shared; none (most values carry none) costs no allocation.
fn shared(fds: Vec<OwnedFd>) -> Arc<[OwnedFd]> {
    if fds.is_empty() { Arc::default() } else { Arc::from(fds) }
}

impl Carried {
    /// Encodes `value`, keeping (duplicates of) the fds of the ends inside it.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> crate::Result<Carried> {
        let (bytes, outgoing) = crate::fdpass::collecting(|| crate::codec::to_vec(value));
        if let Some(why) = outgoing.refused {
            return Err(Error::FdPassing(why));
        }
        Ok(Carried { bytes: Bytes::Owned(Arc::new(bytes?)), fds: shared(outgoing.fds) })
    }

    /// Decodes the value; its ends get duplicates of the fds (so it can be decoded again).
    pub fn decode<T: DeserializeOwned>(&self) -> crate::Result<T> {
        let fds = self.fds.iter().map(|fd| fd.try_clone()).collect::<Result<Vec<_>, _>>()?;
        crate::fdpass::providing(fds, || crate::codec::from_bytes(&self.bytes))
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// How many fds go with the bytes.
    pub fn n_fds(&self) -> usize {
        self.fds.len()
    }
}

/// A byte string, not a sequence of `u8`s.
struct ByteStr<'a>(&'a [u8]);

impl Serialize for ByteStr<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

struct ByteBuf(Bytes);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                let adopted = crate::outofline::adopt(v).map(Bytes::Mapped);
                Ok(ByteBuf(adopted.unwrap_or_else(|| Bytes::Owned(Arc::new(v.to_vec())))))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(Bytes::Owned(Arc::new(v))))
            }
        }
        deserializer.deserialize_byte_buf(V)
    }
}

impl Serialize for Carried {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fds: Vec<crate::fdpass::FdOf<'_>> =
            self.fds.iter().map(|fd| crate::fdpass::FdOf(fd.as_fd())).collect();
        (ByteStr(&self.bytes), fds).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Carried {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (bytes, fds) = <(ByteBuf, Vec<crate::fdpass::FdIn>)>::deserialize(deserializer)?;
        Ok(Carried { bytes: bytes.0, fds: shared(fds.into_iter().map(|f| f.0).collect()) })
    }
}
