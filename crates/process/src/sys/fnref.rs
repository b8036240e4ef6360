//! A function of this binary named by its offset: the unsafe core of
//! [`FnRef`](crate::FnRef). Its offset can only come from a function of the right type in
//! this binary ([`FnAt::of`]) or from a tag only such a one has ([`FnAt::checked`]), so
//! calling what it names is sound.

use std::any::TypeId;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

mod sealed {
    pub trait Sealed {}
}

/// A plain function pointer type that [`FnRef`](crate::FnRef) can carry: `fn(A) -> R`,
/// `fn(A, B) -> R` or `fn(A, B, C) -> R` (with `'static` argument and result types).
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

/// A function of type `F` in this binary, as its offset from a fixed function (the same in
/// every process running the binary, wherever it is loaded).
pub(crate) struct FnAt<F: FnPtr> {
    offset: i64,
    _type: PhantomData<F>,
}

impl<F: FnPtr> Clone for FnAt<F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: FnPtr> Copy for FnAt<F> {}

impl<F: FnPtr> FnAt<F> {
    /// Names `f`.
    pub(crate) fn of(f: F) -> FnAt<F> {
        FnAt { offset: super::offset_of(f.addr()), _type: PhantomData }
    }

    /// The offset, for the wire and for `Debug`.
    pub(crate) fn offset(&self) -> i64 {
        self.offset
    }

    /// A keyed hash (SipHash-2-4) of the offset and of `F`: what proves, on the wire, that
    /// the offset names an `F`.
    pub(crate) fn tag(&self, key: &[u8; 16]) -> u64 {
        tag::<F>(self.offset, key)
    }

    /// The function at `offset`, if `tag` is its [`tag`](Self::tag) under `key`: `key` is the
    /// process family's secret (drawn at random by its main process, inherited by its
    /// children), so only a process of the family, holding an `FnAt<F>` for that offset, can
    /// have computed it. Anything else (another program's bytes, a forged or corrupted
    /// message, another `F`) is `None`.
    pub(crate) fn checked(offset: i64, tag_seen: u64, key: &[u8; 16]) -> Option<FnAt<F>> {
        (tag_seen == tag::<F>(offset, key)).then_some(FnAt { offset, _type: PhantomData })
    }

    /// The function, callable in this process.
    pub(crate) fn get(&self) -> F {
        // SAFETY: `offset` came from `of` with an `F` of this binary, or passed `checked`, whose
        // tag only a process of this family computes from such an `FnAt<F>`; every process of
        // the family runs this same binary (checked when it starts), and `F` is a fn pointer
        // type (the only `FnPtr` impls are for fn pointers).
        unsafe { super::fn_at(self.offset) }
    }
}

/// The tag of `offset` for `F` under `key`, from this thread's recent tags when it is there.
fn tag<F: 'static>(offset: i64, key: &[u8; 16]) -> u64 {
    let (key, ty) = (*key, TypeId::of::<F>());
    let slot = (offset as u64 >> 4) as usize % TAG_CACHE;
    RECENT_TAGS
        .try_with(|recent| {
            let seen = Seen { key, offset, ty, tag: 0 };
            match recent[slot].get() {
                Some(hit) if Seen { tag: 0, ..hit } == seen => hit.tag,
                _ => {
                    let tag = compute_tag(&key, offset, ty);
                    recent[slot].set(Some(Seen { tag, ..seen }));
                    tag
                }
            }
        })
        .unwrap_or_else(|_| compute_tag(&key, offset, ty))
}

/// SipHash-2-4 of `offset` and `ty` under `key`.
fn compute_tag(key: &[u8; 16], offset: i64, ty: TypeId) -> u64 {
    #[allow(deprecated)] // SipHasher is deprecated for HashMaps, not as a keyed PRF.
    let mut hasher = std::hash::SipHasher::new_with_keys(
        u64::from_le_bytes(key[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(key[8..].try_into().expect("8 bytes")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_tags_are_the_tags() {
        // More offsets and types than the cache holds, in an order that makes them evict
        // each other, under two keys: every tag is the one computed afresh.
        for key in [[1u8; 16], [2u8; 16]] {
            for round in 0..3 {
                for offset in (0..40 * 16).step_by(16).chain((0..40 * 16).step_by(48)) {
                    let offset = offset + round;
                    let a = tag::<fn(u32) -> u32>(offset, &key);
                    let b = tag::<fn(u64) -> u64>(offset, &key);
                    assert_eq!(a, compute_tag(&key, offset, TypeId::of::<fn(u32) -> u32>()));
                    assert_eq!(b, compute_tag(&key, offset, TypeId::of::<fn(u64) -> u64>()));
                    assert_ne!(a, b);
                }
            }
        }
    }
}
