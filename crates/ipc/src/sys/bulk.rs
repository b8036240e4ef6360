//! The `unsafe` of the codec's bulk paths: telling at run time that a generic type is one of a
//! few concrete ones (a slice or `Vec` of bytes, floats or integers), and moving sequences of
//! bytes and floats as whole byte ranges instead of element by element (integers are varints:
//! `codec/seq.rs` encodes and decodes them in one loop, through the casts here).
//!
//! Serde gives a serializer `collect_seq(iter)` and a deserializer `deserialize_seq(visitor)`
//! with the types only as generic parameters, and `std::any::TypeId` needs `'static` types.
//! [`type_id`] is the non-`'static` type id `erased-serde` and the `typeid` crate use: the id
//! of the type with its lifetimes erased. Each cast below is from a type whose id equals that
//! of a type *without* lifetime parameters (`&[E]`'s referent, `Vec<E>`), so equal ids mean the
//! same type and the cast changes nothing but the static type.

#![allow(unsafe_code)]

use std::any::TypeId;
use std::marker::PhantomData;
use std::mem::{ManuallyDrop, MaybeUninit};

/// The element types the casts below may name: plain numbers, without lifetime parameters (so
/// equal erased type ids mean equal types) and without padding.
pub(crate) trait Elem: Copy + 'static + sealed::Sealed {}

/// The element types whose postcard encoding is their memory: `u8`, `i8` (one byte each),
/// `f32`, `f64` (`to_bits().to_le_bytes()`, which on a little-endian machine is the value's
/// bytes). Every bit pattern is a valid value of each.
pub(crate) trait Bulk: Elem {}

mod sealed {
    pub(crate) trait Sealed {}
}

macro_rules! elem {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Elem for $t {}
    )*};
}
elem!(u8, i8, f32, f64, u16, u32, u64, usize, i16, i32, i64, isize);

impl Bulk for u8 {}
impl Bulk for i8 {}
#[cfg(target_endian = "little")]
impl Bulk for f32 {}
#[cfg(target_endian = "little")]
impl Bulk for f64 {}

/// `TypeId::of` without the `'static` bound: the id of `T` with its lifetimes erased.
pub(crate) fn type_id<T: ?Sized>() -> TypeId {
    trait NonStaticAny {
        fn get_type_id(&self) -> TypeId
        where
            Self: 'static;
    }
    impl<T: ?Sized> NonStaticAny for PhantomData<T> {
        fn get_type_id(&self) -> TypeId
        where
            Self: 'static,
        {
            TypeId::of::<T>()
        }
    }
    let phantom = PhantomData::<T>;
    let object: &dyn NonStaticAny = &phantom;
    // SAFETY: only the trait object's lifetime bound changes; `get_type_id` reads nothing of
    // `self` and returns the id of `T` as the compiler erased it. This is the `typeid` crate's
    // `of`, which `erased-serde` relies on.
    let object: &(dyn NonStaticAny + 'static) = unsafe { std::mem::transmute(object) };
    object.get_type_id()
}

/// If `I` is `&[E]` or `&Vec<E>` for some bulk `E` (the iterators serde's `Serialize` for
/// slices and vectors hands to `collect_seq`): the number of elements and their bytes, which
/// are their postcard encoding back to back.
pub(crate) fn bulk_bytes<I>(iter: &I) -> Option<(usize, &[u8])> {
    let found = view::<u8, I>(iter).or_else(|| view::<i8, I>(iter));
    #[cfg(target_endian = "little")]
    let found = found.or_else(|| view::<f32, I>(iter)).or_else(|| view::<f64, I>(iter));
    found
}

fn view<E: Bulk, I>(iter: &I) -> Option<(usize, &[u8])> {
    let slice = slice_of::<E, I>(iter)?;
    // SAFETY: `E` is plain data without padding (a bulk type); its bytes are initialized and
    // live as long as the slice.
    let bytes = unsafe { std::slice::from_raw_parts(slice.as_ptr().cast::<u8>(), size_of_val(slice)) };
    Some((slice.len(), bytes))
}

/// If `I` is `&[E]` or `&Vec<E>` (the iterators serde's `Serialize` for slices and vectors
/// hands to `collect_seq`): the elements.
pub(crate) fn slice_of<E: Elem, I>(iter: &I) -> Option<&[E]> {
    let id = type_id::<I>();
    if id == TypeId::of::<&[E]>() {
        // SAFETY: `I` is `&'a [E]` for some `'a` (ids are equal, and `[E]` has no lifetime);
        // the slice lives at least as long as the borrow of `iter`.
        Some(unsafe { *(iter as *const I as *const &[E]) })
    } else if id == TypeId::of::<&Vec<E>>() {
        // SAFETY: as above, `I` is `&'a Vec<E>`.
        Some(unsafe { (*(iter as *const I as *const &Vec<E>)).as_slice() })
    } else {
        None
    }
}

/// `values` as a `Vec<E>`, if `T` is `E`.
pub(crate) fn vec_mut_as<E: Elem, T>(values: &mut Vec<T>) -> Option<&mut Vec<E>> {
    if type_id::<T>() != TypeId::of::<E>() {
        return None;
    }
    // SAFETY: `T` is `E` (equal ids, and `E` has no lifetime parameters): the same type, so
    // the same `Vec` type, borrowed for as long as `values` is.
    Some(unsafe { &mut *(values as *mut Vec<T>).cast::<Vec<E>>() })
}

/// `value` as a `T`, if `T` is `Vec<E>` (the value a visitor of `Vec<E>` returns).
pub(crate) fn vec_as<E: Elem, T>(value: Vec<E>) -> Result<T, Vec<E>> {
    if type_id::<T>() != TypeId::of::<Vec<E>>() {
        return Err(value);
    }
    let value = ManuallyDrop::new(value);
    // SAFETY: `T` is `Vec<E>` (equal ids, and `Vec<E>` has no lifetime): a bitwise move of
    // the same type, and `ManuallyDrop` keeps the original from being dropped.
    Ok(unsafe { std::ptr::read(&*value as *const Vec<E> as *const T) })
}

/// Appends to `out` the `count` elements of type `E` whose bytes `bytes` holds
/// (`count * size_of::<E>()`), copied in one pass.
pub(crate) fn extend_from_bytes<E: Bulk>(out: &mut Vec<E>, bytes: &[u8], count: usize) {
    assert_eq!(bytes.len(), count * size_of::<E>());
    out.reserve(count);
    let len = out.len();
    // SAFETY: `out` has room for `count` more elements, `bytes.len()` bytes, after its `len`;
    // the ranges are distinct allocations (`out` is borrowed mutably, `bytes` shared); every
    // bit pattern is a valid `E` (a bulk type), so once copied all `len + count` elements are
    // initialized.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr().add(len).cast::<u8>(), bytes.len());
        out.set_len(len + count);
    }
}

/// Appends `len` elements to `out`, each made by `next`, written straight into the room
/// reserved for them (no length check and update per element); on `next`'s first error, the
/// elements made before it are kept and the error returned.
#[inline]
pub(crate) fn extend_with<E: Elem, Err>(
    out: &mut Vec<E>,
    len: usize,
    mut next: impl FnMut() -> Result<E, Err>,
) -> Result<(), Err> {
    out.reserve(len);
    let start = out.len();
    let mut done = 0;
    let result = (|| {
        for slot in &mut out.spare_capacity_mut()[..len] {
            slot.write(next()?);
            done += 1;
        }
        Ok(())
    })();
    // SAFETY: the `done` elements after `start` were written above (each `slot.write` is
    // counted once it has happened), within the capacity `reserve` made.
    unsafe { out.set_len(start + done) };
    result
}

/// Appends to `out` `count` elements of type `E` whose bytes are `prefix` and then what
/// `read` reads, written straight into `out`'s spare room (after `reserve_exact(count)`): a
/// large sequence read from a stream lands where it stays, with no buffer between and no
/// zero-filling first. `read` fills the front of the room it is given and returns those bytes
/// (none: it is called again); it is called until the elements are whole, and errs at the end
/// of its stream. On its error nothing is appended (the room keeps whatever it read).
///
/// # Panics
/// If `prefix` is longer than the elements, or `read` returns bytes other than the front of
/// the room it was given.
pub(crate) fn extend_read<E: Bulk, Err>(
    out: &mut Vec<E>,
    count: usize,
    prefix: &[u8],
    mut read: impl for<'b> FnMut(&'b mut [MaybeUninit<u8>]) -> Result<&'b mut [u8], Err>,
) -> Result<(), Err> {
    out.reserve_exact(count);
    let len = out.len();
    let spare = &mut out.spare_capacity_mut()[..count];
    let size = size_of_val(spare);
    // SAFETY: the bytes of `count` possibly uninitialized `E`s, viewed as possibly
    // uninitialized bytes: the same memory and length in bytes, alignment 1, borrowed as long
    // as `spare` is.
    let bytes = unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<MaybeUninit<u8>>(), size) };
    super::write_front(bytes, prefix);
    let mut filled = prefix.len();
    while filled < size {
        let room = &mut bytes[filled..];
        let (front, most) = (room.as_ptr().cast::<u8>(), room.len());
        let got = read(room)?;
        // A `&mut [u8]` is initialized memory: at the room's front, these bytes are written.
        assert!(
            got.is_empty() || (std::ptr::eq(got.as_ptr(), front) && got.len() <= most),
            "extend_read: read returned bytes other than the front of its room"
        );
        filled += got.len();
    }
    // SAFETY: all `size` bytes of the `count` elements are initialized (the prefix, then each
    // read's bytes, checked above to be the front of what was left); every bit pattern is a
    // valid `E` (a bulk type), and the room is within the capacity `reserve_exact` made.
    unsafe { out.set_len(len + count) };
    Ok(())
}
