//! A value encoded now and decoded later, in another process, with the ends inside it.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, OnceLock};

use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::sys::outofline::Sealed;
use crate::{Error, codec, fdpass, outofline};

/// A value encoded (postcard) together with the file descriptors of the ends and shared
/// regions inside it: what a layer above keeps and forwards as bytes (a pool's task
/// arguments and values) while the ends in the value still reach the process that decodes it.
///
/// Sent inside a value over a duplex [`Connection`](crate::Connection), its fds go along
/// (`SCM_RIGHTS`); [`decode`](Carried::decode) gives the value back, its ends working, in any
/// process that received it (or in this one). `Clone` shares the bytes and the fds.
///
/// An encoding past 4 MiB (the out-of-line threshold) is written into a sealed memfd as it is
/// encoded, never into a buffer: over a duplex connection it travels as that memfd (no copy
/// of its bytes; the receiver maps it and decodes from the mapping), over a pipe or TCP as
/// its bytes. Like an end, such a `Carried` is encoded only by a send or inside another
/// `Carried` (not by [`encode`](crate::encode)). Such a memfd is not counted against the receiving end's message limit: its
/// memory is the sender's, and the receiver allocates for it only what decoding makes.
#[derive(Clone, Debug, Default)]
pub struct Carried {
    bytes: Bytes,
    fds: Arc<[OwnedFd]>,
}

/// A `Carried`'s bytes: encoded here, or received out of line and left in the mapping of the
/// value that brought them (most of it: a pool task's large arguments are decoded from where
/// they arrived, not copied out first), or in a sealed memfd of their own.
#[derive(Clone, Debug)]
enum Bytes {
    Owned(Arc<Vec<u8>>),
    Mapped(crate::outofline::Mapped),
    File(Arc<File>),
}

/// Bytes in a sealed memfd: written here (mapped only if someone here reads them), or
/// received (mapped as they arrive, which checks the seals).
struct File {
    fd: OwnedFd,
    len: usize,
    view: OnceLock<Sealed>,
}

impl File {
    fn bytes(&self) -> crate::Result<&[u8]> {
        if let Some(view) = self.view.get() {
            return Ok(view.bytes());
        }
        let view = Sealed::open(&self.fd, self.len).map_err(Error::OutOfLine)?;
        Ok(self.view.get_or_init(|| view).bytes())
    }
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "File({} bytes)", self.len)
    }
}

impl Default for Bytes {
    fn default() -> Bytes {
        Bytes::Owned(Arc::default())
    }
}

impl Bytes {
    fn get(&self) -> crate::Result<&[u8]> {
        match self {
            Bytes::Owned(v) => Ok(v),
            Bytes::Mapped(m) => Ok(m.bytes()),
            Bytes::File(file) => file.bytes(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Bytes::Owned(v) => v.len(),
            Bytes::Mapped(m) => m.bytes().len(),
            Bytes::File(file) => file.len,
        }
    }
}

/// The fds shared; none (most values carry none) costs no allocation.
fn shared(fds: Vec<OwnedFd>) -> Arc<[OwnedFd]> {
    if fds.is_empty() { Arc::default() } else { Arc::from(fds) }
}

/// What an encoding's pass gave, once the ends in it said whether they could go.
fn refused<R>((encoded, outgoing): (crate::Result<R>, fdpass::Outgoing)) -> crate::Result<(R, Vec<OwnedFd>)> {
    if let Some(why) = outgoing.refused {
        return Err(Error::FdPassing(why));
    }
    Ok((encoded?, outgoing.fds))
}

impl Carried {
    /// Encodes `value`, keeping (duplicates of) the fds of the ends inside it. An encoding
    /// past 4 MiB goes into a sealed memfd as it is made (see the type's docs).
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> crate::Result<Carried> {
        Carried::encode_with_capacity(value, 0)
    }

    /// [`encode`](Carried::encode) into a buffer that starts with room for `capacity` bytes
    /// (a guess at the size, so a large encoding is not copied at each doubling).
    pub fn encode_with_capacity<T: Serialize + ?Sized>(value: &T, capacity: usize) -> crate::Result<Carried> {
        let within = fdpass::collecting(|| codec::to_vec_within(value, capacity, outofline::MIN));
        if let (Some(bytes), fds) = refused(within)? {
            return Ok(Carried { bytes: Bytes::Owned(Arc::new(bytes)), fds: shared(fds) });
        }
        // Past the threshold: into a memfd, unless ends are inside (their fds are counted
        // once per encoding pass, so the memfd's encoder would meet them twice).
        let (_, with_ends) = refused(fdpass::collecting(|| codec::encoded_len(value)))?;
        // (With the tables, though none is met: a large `Carried` inside goes as its bytes.)
        if with_ends.is_empty()
            && let (Some((fd, len)), _) =
                refused(fdpass::collecting(|| outofline::encode(value, &mut Vec::new())))?
        {
            let file = File { fd, len, view: OnceLock::new() };
            return Ok(Carried { bytes: Bytes::File(Arc::new(file)), fds: Arc::default() });
        }
        let (bytes, fds) = refused(fdpass::collecting(|| codec::encode_with_capacity(value, capacity)))?;
        Ok(Carried { bytes: Bytes::Owned(Arc::new(bytes)), fds: shared(fds) })
    }

    /// Decodes the value; its ends get duplicates of the fds (so it can be decoded again).
    pub fn decode<T: DeserializeOwned>(&self) -> crate::Result<T> {
        let bytes = self.bytes.get()?;
        let fds = self.fds.iter().map(|fd| fd.try_clone()).collect::<Result<Vec<_>, _>>()?;
        fdpass::providing(fds, || codec::from_bytes(bytes))
    }

    /// The encoded bytes (those in a memfd made here are mapped on the first call).
    pub fn bytes(&self) -> crate::Result<&[u8]> {
        self.bytes.get()
    }

    /// How many bytes the encoding takes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the encoding takes no bytes (a `Carried::default()`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the bytes are in a sealed memfd of their own, which a duplex connection sends
    /// as the memfd instead of copying them.
    pub fn is_file(&self) -> bool {
        matches!(self.bytes, Bytes::File(_))
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

/// How a `Carried`'s bytes go: as bytes, or as the sealed memfd that holds them and their
/// length (only where fds travel).
#[derive(Serialize)]
enum Out<'a> {
    Bytes(ByteStr<'a>),
    File(fdpass::FdOf<'a>, u64),
}

/// [`Out`], received.
#[derive(Deserialize)]
enum In {
    Bytes(ByteBuf),
    File(fdpass::FdIn, u64),
}

impl Serialize for Carried {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fds: Vec<fdpass::FdOf<'_>> = self.fds.iter().map(|fd| fdpass::FdOf(fd.as_fd())).collect();
        let out = match &self.bytes {
            Bytes::File(file) => match fdpass::file_may_travel() {
                Some(true) => Out::File(fdpass::FdOf(file.fd.as_fd()), file.len as u64),
                Some(false) => Out::Bytes(ByteStr(file.bytes().map_err(S::Error::custom)?)),
                // Not mapped only to be refused: the send tries again with its fd tables.
                None => {
                    return Err(S::Error::custom(
                        "a Carried in a memfd can only be encoded by a send or inside another Carried",
                    ));
                }
            },
            bytes => Out::Bytes(ByteStr(bytes.get().map_err(S::Error::custom)?)),
        };
        (out, fds).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Carried {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (bytes, fds) = <(In, Vec<fdpass::FdIn>)>::deserialize(deserializer)?;
        let bytes = match bytes {
            In::Bytes(bytes) => bytes.0,
            In::File(fd, len) => {
                // Mapped now: its seals and length are checked as it arrives.
                let len = usize::try_from(len).map_err(|_| D::Error::custom("a memfd longer than memory"))?;
                let view = Sealed::open(&fd.0, len)
                    .map_err(|why| codec::refuse(format!("cannot read a value sent in a memfd: {why}")))?;
                Bytes::File(Arc::new(File { fd: fd.0, len, view: OnceLock::from(view) }))
            }
        };
        Ok(Carried { bytes, fds: shared(fds.into_iter().map(|f| f.0).collect()) })
    }
}
