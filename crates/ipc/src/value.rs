//! Python's `multiprocessing.Value` and `Array`: plain data in shared memory, behind a lock.

use std::time::{Duration, Instant};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::shm::{LockError, Shared, ShmMutex};
pub use crate::sys::shm::{ArrayGuard, Plain};

/// The region of a `Value<P>`/`Array<P>`: the lock, then the `P`s in the data bytes. `P` is in
/// the type so that the type tag a receiving [`Shared`] checks covers it: a region sent as
/// another `P` is refused at deserialize time, not read as the wrong type.
type Region<P> = Shared<(ShmMutex, std::marker::PhantomData<P>)>;

/// `P`'s name as a sender writes it, and a receiver compares it with its own.
fn name<P>() -> &'static str {
    std::any::type_name::<P>()
}

/// Reads an element type's name and compares it with `P`'s where it lies (no copy, so a
/// received `Value` or `Array` allocates nothing for it): `None` if it is `P`'s, else the name
/// found (copied only then, for the error).
struct NameOf<P>(std::marker::PhantomData<P>);

impl<'de, P> serde::de::DeserializeSeed<'de> for NameOf<P> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<P> serde::de::Visitor<'_> for NameOf<P> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an element type's name")
    }

    fn visit_str<E: serde::de::Error>(self, found: &str) -> Result<Self::Value, E> {
        Ok((found != name::<P>()).then(|| found.to_owned()))
    }
}

/// Deserializes what a `Value<P>` (`LEN` false) or `Array<P>` (`LEN` true) sent: the name of
/// its element type, then its region (and length), refusing another element type with an
/// error naming both (before the region's own check, which cannot name the type it found),
/// and a region that does not hold `len` values of `P` (the accessors rely on it).
struct Incoming<P, const LEN: bool>(std::marker::PhantomData<P>);

impl<'de, P: Plain, const LEN: bool> serde::de::Visitor<'de> for Incoming<P, LEN> {
    type Value = (Region<P>, usize);

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if LEN { "a shared Array" } else { "a shared Value" })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let what = if LEN { "Array" } else { "Value" };
        let missing = || A::Error::custom("a shared value cut short");
        if let Some(found) =
            seq.next_element_seed(NameOf::<P>(std::marker::PhantomData))?.ok_or_else(missing)?
        {
            return Err(crate::codec::refuse(format!(
                "a {what}<{found}> was received as a {what}<{}>",
                name::<P>()
            )));
        }
        let found = name::<P>();
        let shared: Region<P> = seq.next_element()?.ok_or_else(missing)?;
        let len = if LEN { seq.next_element::<u64>()?.ok_or_else(missing)? } else { 1 };
        let len = usize::try_from(len).map_err(A::Error::custom)?;
        if len.checked_mul(size_of::<P>()) != Some(shared.data_len()) {
            return Err(crate::codec::refuse(format!(
                "a {what}<{found}> whose region's {} data bytes are not {len} values of {found}",
                shared.data_len()
            )));
        }
        Ok((shared, len))
    }
}

/// Python's `multiprocessing.Value(typecode, value)`: one [`Plain`] value in shared memory,
/// with its robust lock.
///
/// [`get`](Value::get) and [`set`](Value::set) take the lock for the one access (as Python's
/// `.value` does); [`get_lock`](Value::get_lock) holds it across several, through a
/// [`ValueGuard`] that derefs to the value.
///
/// ```
/// # fn main() -> mproc_ipc::Result<()> {
/// let counter = mproc_ipc::Value::new(0u64)?;
/// {
///     let mut v = counter.get_lock().unwrap_or_else(|e| e.into_guard().expect("owner died"));
///     *v += 1;
/// }
/// assert_eq!(counter.get(), 1);
/// # Ok(()) }
/// ```
pub struct Value<P: Plain> {
    shared: Region<P>,
    _p: std::marker::PhantomData<P>,
}

impl<P: Plain> Serialize for Value<P> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (name::<P>(), &self.shared).serialize(serializer)
    }
}

impl<'de, P: Plain> Deserialize<'de> for Value<P> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (shared, _) =
            deserializer.deserialize_tuple(2, Incoming::<P, false>(std::marker::PhantomData))?;
        Ok(Value { shared, _p: std::marker::PhantomData })
    }
}

impl<P: Plain> Clone for Value<P> {
    fn clone(&self) -> Self {
        Value { shared: self.shared.clone(), _p: std::marker::PhantomData }
    }
}

impl<P: Plain + std::fmt::Debug> std::fmt::Debug for Value<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Value").field(&self.get()).finish()
    }
}

/// A held [`Value`]'s lock: derefs to the value.
pub struct ValueGuard<'a, P: Plain>(ArrayGuard<'a, P>);

impl<P: Plain> std::ops::Deref for ValueGuard<'_, P> {
    type Target = P;
    fn deref(&self) -> &P {
        &self.0[0]
    }
}

impl<P: Plain> std::ops::DerefMut for ValueGuard<'_, P> {
    fn deref_mut(&mut self) -> &mut P {
        &mut self.0[0]
    }
}

/// What [`Value::get_lock`] returns.
pub type ValueResult<'a, P> = Result<ValueGuard<'a, P>, LockError<ValueGuard<'a, P>>>;

/// Takes `m`, treating a dead owner as repaired (a plain value is valid whatever was left).
fn lock_any(m: &ShmMutex) -> crate::shm::ShmGuard<'_> {
    match m.lock() {
        Ok(g) | Err(LockError::OwnerDied(g)) => g,
        // Only `EDEADLK`: this thread holds the lock through a guard, and asks again.
        Err(e) => panic!("Value/Array accessed while this thread holds its lock: {e}"),
    }
}

impl<P: Plain> Value<P> {
    /// A new shared value.
    pub fn new(value: P) -> crate::Result<Value<P>> {
        let v = Value { shared: Shared::with_data(size_of::<P>())?, _p: std::marker::PhantomData };
        v.set(value);
        Ok(v)
    }

    /// The value, read under the lock. A dead previous holder is not reported here (the value
    /// is whatever it left); [`get_lock`](Value::get_lock) reports it.
    ///
    /// Panics if this thread holds the lock (through a [`ValueGuard`]): read through the
    /// guard then.
    pub fn get(&self) -> P {
        let g = ArrayGuard::<P>::new(&self.shared, lock_any(&self.shared.0), 1);
        g[0]
    }

    /// Stores `value` under the lock. Panics as [`get`](Value::get) does.
    pub fn set(&self, value: P) {
        let mut g = ArrayGuard::<P>::new(&self.shared, lock_any(&self.shared.0), 1);
        g[0] = value;
    }

    /// Holds the lock (Python's `get_lock()`), waiting as long as it takes.
    pub fn get_lock(&self) -> ValueResult<'_, P> {
        self.wrap(self.shared.0.lock())
    }

    /// Holds the lock, waiting at most `timeout`.
    pub fn get_lock_timeout(&self, timeout: Duration) -> ValueResult<'_, P> {
        self.wrap(self.shared.0.lock_until(Instant::now().checked_add(timeout)))
    }

    fn wrap<'a>(&'a self, r: crate::LockResult<'a>) -> ValueResult<'a, P> {
        let wrap = |g| ValueGuard(ArrayGuard::new(&self.shared, g, 1));
        r.map(wrap).map_err(|e| e.map(wrap))
    }
}

/// Python's `multiprocessing.Array(typecode, size)`: a fixed number of [`Plain`] values in
/// shared memory, with its robust lock. [`get_lock`](Array::get_lock) gives an
/// [`ArrayGuard`], which derefs to the slice.
///
/// ```
/// # fn main() -> mproc_ipc::Result<()> {
/// let a = mproc_ipc::Array::from_slice(&[1.0f64, 2.0, 3.0])?;
/// a.get_lock().unwrap_or_else(|e| e.into_guard().expect("owner died"))[1] = 5.0;
/// assert_eq!(a.to_vec(), [1.0, 5.0, 3.0]);
/// # Ok(()) }
/// ```
pub struct Array<P: Plain> {
    shared: Region<P>,
    len: usize,
    _p: std::marker::PhantomData<P>,
}

impl<P: Plain> Serialize for Array<P> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (name::<P>(), &self.shared, self.len as u64).serialize(serializer)
    }
}

impl<'de, P: Plain> Deserialize<'de> for Array<P> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (shared, len) =
            deserializer.deserialize_tuple(3, Incoming::<P, true>(std::marker::PhantomData))?;
        Ok(Array { shared, len, _p: std::marker::PhantomData })
    }
}

impl<P: Plain> Clone for Array<P> {
    fn clone(&self) -> Self {
        Array { shared: self.shared.clone(), len: self.len, _p: std::marker::PhantomData }
    }
}

impl<P: Plain + std::fmt::Debug> std::fmt::Debug for Array<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Array").field(&self.to_vec()).finish()
    }
}

/// What [`Array::get_lock`] returns.
pub type ArrayResult<'a, P> = Result<ArrayGuard<'a, P>, LockError<ArrayGuard<'a, P>>>;

impl<P: Plain> Array<P> {
    /// `len` zero values.
    pub fn zeroed(len: usize) -> crate::Result<Array<P>> {
        let bytes = len
            .checked_mul(size_of::<P>())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "array too large"))?;
        Ok(Array { shared: Shared::with_data(bytes)?, len, _p: std::marker::PhantomData })
    }

    /// A copy of `values`.
    pub fn from_slice(values: &[P]) -> crate::Result<Array<P>> {
        let a = Array::zeroed(values.len())?;
        ArrayGuard::new(&a.shared, lock_any(&a.shared.0), a.len).copy_from_slice(values);
        Ok(a)
    }

    /// How many values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no value.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A copy of the values, taken under the lock. Panics if this thread holds the lock.
    pub fn to_vec(&self) -> Vec<P> {
        ArrayGuard::new(&self.shared, lock_any(&self.shared.0), self.len).to_vec()
    }

    /// Holds the lock (Python's `get_lock()`), waiting as long as it takes.
    pub fn get_lock(&self) -> ArrayResult<'_, P> {
        self.wrap(self.shared.0.lock())
    }

    /// Holds the lock, waiting at most `timeout`.
    pub fn get_lock_timeout(&self, timeout: Duration) -> ArrayResult<'_, P> {
        self.wrap(self.shared.0.lock_until(Instant::now().checked_add(timeout)))
    }

    fn wrap<'a>(&'a self, r: crate::LockResult<'a>) -> ArrayResult<'a, P> {
        let wrap = |g| ArrayGuard::new(&self.shared, g, self.len);
        r.map(wrap).map_err(|e| e.map(wrap))
    }
}

impl<P: Plain + std::fmt::Debug> std::fmt::Debug for ValueGuard<'_, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ValueGuard").field(&**self).finish()
    }
}

impl<P: Plain + std::fmt::Debug> std::fmt::Debug for ArrayGuard<'_, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ArrayGuard").field(&&**self).finish()
    }
}
