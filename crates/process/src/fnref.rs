//! `FnRef`: a function another process of this program can call.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::sys::fnref::FnAt;
pub use crate::sys::fnref::FnPtr;

/// A function that can be sent to another process of this program and called there: how a
/// pool hands a `fn(A) -> R` to its workers, or how a child is told what to run.
///
/// On the wire it is the function's offset in the binary (the same in every process running
/// it, wherever the binary is loaded) and a tag: a keyed hash (SipHash-2-4) of that offset and
/// of the function's type, under a key the main process draws at random and its children
/// inherit. Deserializing checks the tag, so only a process of this family can name a
/// function, and only with its true type; anything else (another program's message, a
/// forged or corrupted one, the wrong type on the receiving side) is a deserialization
/// error, never a call to a wrong address.
///
/// ```
/// use mproc_process::FnRef;
/// fn double(x: u32) -> u32 { x * 2 }
/// let f = FnRef::new(double as fn(u32) -> u32);
/// assert_eq!((f.get())(21), 42);
/// ```
pub struct FnRef<F: FnPtr> {
    at: FnAt<F>,
}

impl<F: FnPtr> FnRef<F> {
    /// Refers to `f`.
    pub fn new(f: F) -> FnRef<F> {
        FnRef { at: FnAt::of(f) }
    }

    /// The function, callable in this process.
    pub fn get(&self) -> F {
        self.at.get()
    }
}

impl<F: FnPtr> Clone for FnRef<F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: FnPtr> Copy for FnRef<F> {}

impl<F: FnPtr> PartialEq for FnRef<F> {
    fn eq(&self, other: &Self) -> bool {
        self.at.offset() == other.at.offset()
    }
}

impl<F: FnPtr> Eq for FnRef<F> {}

impl<F: FnPtr> fmt::Debug for FnRef<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FnRef<{}>({:#x})", std::any::type_name::<F>(), self.at.offset())
    }
}

impl<F: FnPtr> Serialize for FnRef<F> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (self.at.offset(), self.at.tag(&crate::identity::fn_key())).serialize(serializer)
    }
}

impl<'de, F: FnPtr> Deserialize<'de> for FnRef<F> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (offset, tag) = <(i64, u64)>::deserialize(deserializer)?;
        match FnAt::checked(offset, tag, &crate::identity::fn_key()) {
            Some(at) => Ok(FnRef { at }),
            None => Err(D::Error::custom(format!(
                "not a function reference made by this program's processes for {}",
                std::any::type_name::<F>()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(x: u32) -> u32 {
        x * 2
    }

    fn add(a: u64, b: u64) -> u64 {
        a + b
    }

    #[test]
    fn round_trips_and_calls() {
        let f = FnRef::new(double as fn(u32) -> u32);
        let bytes = postcard::to_allocvec(&f).unwrap();
        let back: FnRef<fn(u32) -> u32> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, f);
        assert_eq!((back.get())(4), 8);
        let g = FnRef::new(add as fn(u64, u64) -> u64);
        assert_eq!((g.get())(2, 3), 5);
    }

    #[test]
    fn wrong_type_or_forged_offset_is_refused() {
        let f = FnRef::new(double as fn(u32) -> u32);
        let bytes = postcard::to_allocvec(&f).unwrap();
        let err = postcard::from_bytes::<FnRef<fn(u64) -> u64>>(&bytes).unwrap_err();
        assert!(matches!(err, postcard::Error::SerdeDeCustom), "{err:?}");
        let tag = f.at.tag(&crate::identity::fn_key());
        let forged = postcard::to_allocvec(&(f.at.offset() + 16, tag)).unwrap();
        assert!(postcard::from_bytes::<FnRef<fn(u32) -> u32>>(&forged).is_err());
    }
}
