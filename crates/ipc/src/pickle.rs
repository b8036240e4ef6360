//! Values in Python's pickle format (the `pickle` feature), so a CPython peer sends and
//! receives them with plain `conn.send(obj)` / `conn.recv()`.
//!
//! The codec is `serde-pickle`: it writes protocol 3 and reads protocols 0 to 5. Unpickling
//! here runs no code: a pickle that names a class or a function (anything but ints, floats,
//! strings, bytes, lists, tuples, dicts, sets, `None` and booleans) is [`Error::Pickle`].

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::duplex::Connection;
use crate::error::{Error, Result};

impl<S, R> Connection<S, R> {
    /// Sends `value` pickled, as Python's `Connection.send`: a Python peer's `conn.recv()`
    /// returns it (structs as dicts, tuples as tuples, `Vec`s as lists, maps as dicts).
    ///
    /// ```
    /// # fn main() -> mproc_ipc::Result<()> {
    /// let (a, b) = mproc_ipc::duplex::<(i64, String)>()?;
    /// a.send_pickle(&(7, "seven".to_string()))?;
    /// assert_eq!(b.recv_pickle()?, (7, "seven".to_string()));
    /// # Ok(()) }
    /// ```
    pub fn send_pickle(&self, value: &S) -> Result<()>
    where
        S: Serialize,
    {
        let bytes = serde_pickle::to_vec(value, serde_pickle::SerOptions::new()).map_err(Error::Pickle)?;
        self.send_bytes(&bytes)
    }

    /// Receives a pickled value, as Python's `Connection.recv` (what a Python peer sent with
    /// `conn.send(obj)`). A frame that is not a pickle of an `R` is [`Error::Pickle`], and the
    /// next receive goes on after it.
    pub fn recv_pickle(&self) -> Result<R>
    where
        R: DeserializeOwned,
    {
        unpickle(&self.recv_bytes()?)
    }

    /// As [`recv_pickle`](Self::recv_pickle), giving up with [`Error::Timeout`] after `timeout`.
    pub fn recv_pickle_timeout(&self, timeout: Duration) -> Result<R>
    where
        R: DeserializeOwned,
    {
        unpickle(&self.recv_bytes_timeout(timeout)?)
    }
}

fn unpickle<R: DeserializeOwned>(bytes: &[u8]) -> Result<R> {
    serde_pickle::from_slice(bytes, serde_pickle::DeOptions::new()).map_err(Error::Pickle)
}
