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

fn tag<F: 'static>(offset: i64, key: &[u8; 16]) -> u64 {
    #[allow(deprecated)] // SipHasher is deprecated for HashMaps, not as a keyed PRF.
    let mut hasher = std::hash::SipHasher::new_with_keys(
        u64::from_le_bytes(key[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(key[8..].try_into().expect("8 bytes")),
    );
    offset.hash(&mut hasher);
    TypeId::of::<F>().hash(&mut hasher);
    hasher.finish()
}
