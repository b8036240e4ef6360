//! `FnRef`: a function another process of this program can call.

use std::any::TypeId;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::sys;

mod sealed {
    pub trait Sealed {}
}

/// A plain function pointer type that [`FnRef`] can carry: `fn(A) -> R`, `fn(A, B) -> R` or
/// `fn(A, B, C) -> R` (with `'static` argument and result types).
pub trait FnPtr: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The function's address.
    #[doc(hidden)]
    fn addr(self) -> usize;
}

macro_rules! fn_ptr {
    ($($arg:ident),*) => {
        impl<$($arg: 'static,)* R: 'static> sealed::Sealed for fn($($arg),*) -> R {}
        impl<$($arg: 'static,)* R: 'static> FnPtr for fn($($arg),*) -> R {
            fn addr(self) -> usize {
                self as usize
            }
        }
    };
}
fn_ptr!(A);
fn_ptr!(A, B);
fn_ptr!(A, B, C);

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
    offset: i64,
    _type: PhantomData<F>,
}

impl<F: FnPtr> FnRef<F> {
    /// Refers to `f`.
    pub fn new(f: F) -> FnRef<F> {
        FnRef { offset: sys::offset_of(f.addr()), _type: PhantomData }
    }

    /// The function, callable in this process.
    pub fn get(&self) -> F {
        // Sound: `offset` came from `new` with an `F` in this process, or from a tag only a
        // process of this family (running this binary, checked at its start) computes for an
        // `F` it made with `new`.
        sys::fn_ref_target::<F>(self.offset)
    }

    /// The tag of `offset` for `F`, from this thread's cache of recent tags when it is there.
    fn tag(offset: i64) -> u64 {
        let key = crate::identity::fn_key();
        let ty = TypeId::of::<F>();
        let compute = || compute_tag(key, offset, ty);
        let slot = (offset as u64 >> 4) as usize % TAG_CACHE;
        RECENT_TAGS
            .try_with(|recent| {
                let seen = Seen { key, offset, ty, tag: 0 };
                match recent[slot].get() {
                    Some(hit) if Seen { tag: 0, ..hit } == seen => hit.tag,
                    _ => {
                        let tag = compute();
                        recent[slot].set(Some(Seen { tag, ..seen }));
                        tag
                    }
                }
            })
            .unwrap_or_else(|_| compute())
    }
}

/// SipHash-2-4 of `offset` and `ty` under `key`.
fn compute_tag(key: [u8; 16], offset: i64, ty: TypeId) -> u64 {
    #[allow(deprecated)] // SipHasher is deprecated for HashMaps, not as a keyed PRF.
    let mut hasher = std::hash::SipHasher::new_with_keys(
        u64::from_le_bytes(key[..8].try_into().unwrap()),
        u64::from_le_bytes(key[8..].try_into().unwrap()),
    );
    offset.hash(&mut hasher);
    ty.hash(&mut hasher);
    hasher.finish()
}

/// How many tags a thread remembers.
const TAG_CACHE: usize = 4;

/// A tag computed lately, with what it was computed from (the key too: a spawned child takes
/// its parent's key when it starts, and a tag made before under its own key is not that one).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Seen {
    key: [u8; 16],
    offset: i64,
    ty: TypeId,
    tag: u64,
}

thread_local! {
    /// This thread's recent tags: a pool sends and checks the same few functions' tags with
    /// every task, and a SipHash costs more than the rest of a small task's encoding.
    static RECENT_TAGS: [std::cell::Cell<Option<Seen>>; TAG_CACHE] = const {
        [const { std::cell::Cell::new(None) }; TAG_CACHE]
    };
}

impl<F: FnPtr> Clone for FnRef<F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: FnPtr> Copy for FnRef<F> {}

impl<F: FnPtr> PartialEq for FnRef<F> {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset
    }
}

impl<F: FnPtr> Eq for FnRef<F> {}

impl<F: FnPtr> fmt::Debug for FnRef<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FnRef<{}>({:#x})", std::any::type_name::<F>(), self.offset)
    }
}

impl<F: FnPtr> Serialize for FnRef<F> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (self.offset, Self::tag(self.offset)).serialize(serializer)
    }
}

impl<'de, F: FnPtr> Deserialize<'de> for FnRef<F> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (offset, tag) = <(i64, u64)>::deserialize(deserializer)?;
        if tag != Self::tag(offset) {
            return Err(D::Error::custom(format!(
                "not a function reference made by this program's processes for {}",
                std::any::type_name::<F>()
            )));
        }
        Ok(FnRef { offset, _type: PhantomData })
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
    fn remembered_tags_are_the_tags() {
        // More offsets and types than the cache holds, in an order that makes them evict
        // each other: every tag is the one computed afresh.
        let key = crate::identity::fn_key();
        for round in 0..3 {
            for offset in (0..40 * 16).step_by(16).chain((0..40 * 16).step_by(48)) {
                let offset = offset + round;
                let a = FnRef::<fn(u32) -> u32>::tag(offset);
                let b = FnRef::<fn(u64) -> u64>::tag(offset);
                assert_eq!(a, compute_tag(key, offset, TypeId::of::<fn(u32) -> u32>()));
                assert_eq!(b, compute_tag(key, offset, TypeId::of::<fn(u64) -> u64>()));
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn wrong_type_or_forged_offset_is_refused() {
        let f = FnRef::new(double as fn(u32) -> u32);
        let bytes = postcard::to_allocvec(&f).unwrap();
        let err = postcard::from_bytes::<FnRef<fn(u64) -> u64>>(&bytes).unwrap_err();
        assert!(matches!(err, postcard::Error::SerdeDeCustom), "{err:?}");
        let forged = postcard::to_allocvec(&(f.offset + 16, FnRef::<fn(u32) -> u32>::tag(f.offset))).unwrap();
        assert!(postcard::from_bytes::<FnRef<fn(u32) -> u32>>(&forged).is_err());
    }
}
