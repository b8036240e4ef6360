//! A `Vec` made ready for a value's largest run of bytes or floats before the decode reaches
//! it: allocated and faulted in while the value was still arriving (`outofline.rs`, values
//! sent early). The decode's bulk path ([`take`], from `seq::append_bulk`) copies the run into
//! it instead of into a new allocation.

use std::any::Any;
use std::cell::RefCell;

/// Runs at least this long may have a `Vec` made ready.
pub(crate) const MIN: usize = 2 << 20;

/// The `Vec` made ready for the run whose bytes lie at `at` (an address in the input).
struct Ready {
    at: usize,
    bytes: usize,
    vec: Option<Box<dyn Any + Send>>,
}

thread_local! {
    static READY: RefCell<Option<Ready>> = const { RefCell::new(None) };
}

/// Runs `decode` with `vec` (an empty `Vec<E>` with room for the run) ready for the run of
/// `bytes` bytes at address `at`; it is dropped afterwards if the decode did not take it.
pub(crate) fn providing<R>(
    at: usize,
    bytes: usize,
    vec: Box<dyn Any + Send>,
    decode: impl FnOnce() -> R,
) -> R {
    /// Puts back what was ready before, even if a `Deserialize` panics.
    struct Restore(Option<Ready>);
    impl Drop for Restore {
        fn drop(&mut self) {
            READY.set(self.0.take());
        }
    }
    let _restore = Restore(READY.replace(Some(Ready { at, bytes, vec: Some(vec) })));
    decode()
}

/// The empty `Vec` made ready for `taken`, if `taken` is the run it was made for and its
/// elements are `E`s.
pub(crate) fn take<E: 'static>(taken: &[u8]) -> Option<Vec<E>> {
    READY.with_borrow_mut(|ready| {
        let ready = ready.as_mut().filter(|r| r.at == taken.as_ptr() as usize && r.bytes == taken.len())?;
        match ready.vec.take()?.downcast::<Vec<E>>() {
            Ok(vec) => Some(*vec),
            Err(other) => {
                ready.vec = Some(other);
                None
            }
        }
    })
}
