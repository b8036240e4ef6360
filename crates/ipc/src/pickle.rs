//! Values in Python's pickle format (the `pickle` feature), so a CPython peer sends and
//! receives them with plain `conn.send(obj)` / `conn.recv()`.
//!
//! The codec is `serde-pickle`: it writes protocol 3 and reads protocols 0 to 5. Unpickling
//! here runs no code: a pickle that names a class or a function (anything but ints, floats,
//! strings, bytes, lists, tuples, dicts, sets, `None` and booleans) is [`Error::Pickle`].
//!
//! A pickle from a peer is checked before it is unpickled (see [`check_bounds`]): values nested
//! more than [`MAX_DEPTH`] deep, and pickles that would unpickle to more than the end's message
//! limit (a reference to a memoized value is a copy here, so a few kilobytes of references can
//! name gigabytes), are [`Error::Pickle`] without unpickling anything.

use std::collections::HashMap;
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
    /// next receive goes on after it; so is a pickle nested more than 128 deep, or one that
    /// would unpickle to more than [`max_message_size`](Self::max_message_size) bytes (each
    /// reference to a shared object unpickles to a copy of it).
    pub fn recv_pickle(&self) -> Result<R>
    where
        R: DeserializeOwned,
    {
        unpickle(&self.recv_bytes()?, self.max_message_size())
    }

    /// As [`recv_pickle`](Self::recv_pickle), giving up with [`Error::Timeout`] after `timeout`.
    pub fn recv_pickle_timeout(&self, timeout: Duration) -> Result<R>
    where
        R: DeserializeOwned,
    {
        unpickle(&self.recv_bytes_timeout(timeout)?, self.max_message_size())
    }
}

/// Unpickles `bytes` as an `R`, if it unpickles to at most `max` bytes (see [`check_bounds`]).
fn unpickle<R: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<R> {
    check_bounds(bytes, max as u64).map_err(Error::Pickle)?;
    serde_pickle::from_slice(bytes, serde_pickle::DeOptions::new()).map_err(Error::Pickle)
}

/// How deep values may nest in a received pickle (as `serde_json`'s default): unpickling and
/// dropping recurse once per level, on the receiving thread's stack.
pub(crate) const MAX_DEPTH: u32 = 128;

/// A value on the pickle machine's stack, as far as bounds go: how many bytes it unpickles
/// to (payloads, plus one for every value), how deep it nests, and the memo slot it stands for
/// (the codec keeps a memoized value in its memo and a reference on the stack).
#[derive(Clone, Copy)]
struct Item {
    size: u64,
    depth: u32,
    memo: Option<u32>,
}

/// A memoized value: its bounds, and whether a reference to it was taken (after which the
/// codec would copy it wherever it is referenced, so it may no longer change).
struct Memo {
    size: u64,
    depth: u32,
    shared: bool,
}

/// Runs `pickle`'s opcodes over sizes instead of values (the codec's own stack machine, with
/// its memo semantics) and fails if a value would unpickle to more than `max` bytes or nest
/// more than [`MAX_DEPTH`] deep. The codec copies a memoized value at each reference, so
/// references count in full; a memo slot that changes after it was referenced (a recursive
/// value, which the codec refuses anyway) or is reused is refused, so the count stays exact.
/// Whatever it does not follow (a malformed or unsupported pickle) it leaves to the codec,
/// which fails on it before building anything big.
fn check_bounds(pickle: &[u8], max: u64) -> std::result::Result<(), serde_pickle::Error> {
    let mut machine =
        Machine { pickle, pos: 0, max, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() };
    match machine.run() {
        Ok(()) | Err(Stop::LeftToCodec) => Ok(()),
        Err(Stop::Refused(why)) => {
            Err(serde_pickle::Error::Eval(serde_pickle::ErrorCode::Structure(why), machine.pos))
        }
    }
}

enum Stop {
    /// Not something this check follows: the codec decides.
    LeftToCodec,
    /// Over a bound.
    Refused(String),
}

struct Machine<'a> {
    pickle: &'a [u8],
    pos: usize,
    max: u64,
    stack: Vec<Item>,
    /// Stack lengths at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Memo>,
}

const LEAF: Item = Item { size: 1, depth: 0, memo: None };
const EMPTY: Item = Item { size: 1, depth: 1, memo: None };

impl Machine<'_> {
    fn run(&mut self) -> std::result::Result<(), Stop> {
        loop {
            let op = self.take(1)?[0];
            match op {
                b'.' => return Ok(()),
                0x80 => drop(self.take(1)?),               // PROTO
                0x95 => drop(self.take(8)?),               // FRAME
                b'(' => self.marks.push(self.stack.len()), // MARK
                b'0' => {
                    // POP (of the mark itself when nothing is above it, as the codec does)
                    if self.stack.len() > self.marks.last().copied().unwrap_or(0) {
                        self.pop()?;
                    } else {
                        self.pop_mark()?;
                    }
                }
                b'1' => drop(self.pop_mark()?), // POP_MARK
                b'2' => {
                    // DUP
                    let top = *self.stack.last().ok_or(Stop::LeftToCodec)?;
                    self.share(top);
                    self.stack.push(top);
                }
                b'p' => {
                    let id = self.line_number()?;
                    self.memoize(id)?;
                }
                b'q' => {
                    let id = self.take(1)?[0].into();
                    self.memoize(id)?;
                }
                b'r' => {
                    let id = self.u32()?;
                    self.memoize(id)?;
                }
                0x94 => {
                    let id = u32::try_from(self.memo.len()).map_err(|_| Stop::LeftToCodec)?;
                    self.memoize(id)?;
                }
                b'g' => {
                    let id = self.line_number()?;
                    self.get(id)?;
                }
                b'h' => {
                    let id = self.take(1)?[0].into();
                    self.get(id)?;
                }
                b'j' => {
                    let id = self.u32()?;
                    self.get(id)?;
                }
                b'N' | 0x88 | 0x89 => self.stack.push(LEAF),
                b'I' | b'L' | b'F' | b'S' | b'V' => {
                    let len = self.line()?.len();
                    self.push_leaf(len)?;
                }
                b'J' => self.leaf_of(4)?,
                b'K' => self.leaf_of(1)?,
                b'M' => self.leaf_of(2)?,
                b'G' => self.leaf_of(8)?,
                b'c' => {
                    let len = self.line()?.len() + self.line()?.len();
                    self.push_leaf(len)?;
                }
                0x8a | b'U' | b'C' | 0x8c => {
                    let len = self.take(1)?[0].into();
                    self.leaf_of(len)?;
                }
                0x8b | b'T' | b'B' | b'X' => {
                    let len = self.u32()?;
                    self.leaf_of(len as usize)?;
                }
                0x8d | 0x8e | 0x96 => {
                    let len = u64::from_le_bytes(self.take(8)?.try_into().unwrap());
                    self.leaf_of(usize::try_from(len).map_err(|_| Stop::LeftToCodec)?)?;
                }
                b')' | b']' | b'}' | 0x8f => self.stack.push(EMPTY),
                0x85 => self.combine_top(1)?,
                0x86 | 0x93 | b'R' | 0x81 => self.combine_top(2)?,
                0x87 | 0x92 => self.combine_top(3)?,
                b't' | b'l' | b'd' | 0x91 | b'o' => {
                    let items = self.pop_mark()?;
                    self.push_combined(&items)?;
                }
                b'i' => {
                    self.line()?;
                    self.line()?;
                    let items = self.pop_mark()?;
                    self.push_combined(&items)?;
                }
                b'a' | b'b' => {
                    let item = self.pop()?;
                    self.add_to_top(&[item])?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.add_to_top(&[key, value])?;
                }
                b'e' | b'u' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.add_to_top(&items)?;
                }
                _ => return Err(Stop::LeftToCodec),
            }
        }
    }

    fn take(&mut self, n: usize) -> std::result::Result<&[u8], Stop> {
        let bytes = self.pickle.get(self.pos..self.pos.checked_add(n).ok_or(Stop::LeftToCodec)?);
        let bytes = bytes.ok_or(Stop::LeftToCodec)?;
        self.pos += n;
        Ok(bytes)
    }

    fn u32(&mut self) -> std::result::Result<u32, Stop> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn line(&mut self) -> std::result::Result<&[u8], Stop> {
        let rest = &self.pickle[self.pos..];
        let len = rest.iter().position(|&b| b == b'\n').ok_or(Stop::LeftToCodec)?;
        self.pos += len + 1;
        Ok(&rest[..len])
    }

    fn line_number(&mut self) -> std::result::Result<u32, Stop> {
        let line = self.line()?;
        std::str::from_utf8(line).ok().and_then(|s| s.trim().parse().ok()).ok_or(Stop::LeftToCodec)
    }

    fn pop(&mut self) -> std::result::Result<Item, Stop> {
        if self.stack.len() <= self.marks.last().copied().unwrap_or(0) {
            return Err(Stop::LeftToCodec);
        }
        self.stack.pop().ok_or(Stop::LeftToCodec)
    }

    fn pop_mark(&mut self) -> std::result::Result<Vec<Item>, Stop> {
        let mark = self.marks.pop().ok_or(Stop::LeftToCodec)?;
        Ok(self.stack.split_off(mark))
    }

    /// An item's bounds: its memo slot's if it stands for one.
    fn bounds(&self, item: &Item) -> std::result::Result<(u64, u32), Stop> {
        match item.memo {
            Some(id) => self.memo.get(&id).map(|m| (m.size, m.depth)).ok_or(Stop::LeftToCodec),
            None => Ok((item.size, item.depth)),
        }
    }

    fn check(&self, size: u64, depth: u32) -> std::result::Result<(), Stop> {
        if depth > MAX_DEPTH {
            return Err(Stop::Refused(format!("values nested more than {MAX_DEPTH} deep")));
        }
        if size > self.max {
            return Err(Stop::Refused(format!(
                "the pickle unpickles to more than {} bytes (the end's message limit; each reference to a shared value is a copy)",
                self.max
            )));
        }
        Ok(())
    }

    fn push_leaf(&mut self, payload: usize) -> std::result::Result<(), Stop> {
        let size = payload as u64 + 1;
        self.check(size, 0)?;
        self.stack.push(Item { size, depth: 0, memo: None });
        Ok(())
    }

    /// A leaf whose `len` payload bytes follow.
    fn leaf_of(&mut self, len: usize) -> std::result::Result<(), Stop> {
        self.take(len)?;
        self.push_leaf(len)
    }

    /// A value holding `items`.
    fn push_combined(&mut self, items: &[Item]) -> std::result::Result<(), Stop> {
        let (mut size, mut depth) = (1u64, 1u32);
        for item in items {
            let (s, d) = self.bounds(item)?;
            size = size.saturating_add(s);
            depth = depth.max(d.saturating_add(1));
        }
        self.check(size, depth)?;
        self.stack.push(Item { size, depth, memo: None });
        Ok(())
    }

    fn combine_top(&mut self, n: usize) -> std::result::Result<(), Stop> {
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.pop()?);
        }
        self.push_combined(&items)
    }

    /// `items` go into the value on top of the stack (APPEND, SETITEM, BUILD, ...).
    fn add_to_top(&mut self, items: &[Item]) -> std::result::Result<(), Stop> {
        let top = *self.stack.last().ok_or(Stop::LeftToCodec)?;
        let (mut size, mut depth) = self.bounds(&top)?;
        for item in items {
            let (s, d) = self.bounds(item)?;
            size = size.saturating_add(s);
            depth = depth.max(d.saturating_add(1));
        }
        self.check(size, depth)?;
        match top.memo {
            Some(id) => {
                let memo = self.memo.get_mut(&id).ok_or(Stop::LeftToCodec)?;
                if memo.shared {
                    return Err(Stop::Refused("a shared value changes after it was referenced".into()));
                }
                (memo.size, memo.depth) = (size, depth);
            }
            None => *self.stack.last_mut().ok_or(Stop::LeftToCodec)? = Item { size, depth, memo: None },
        }
        Ok(())
    }

    fn memoize(&mut self, id: u32) -> std::result::Result<(), Stop> {
        let top = self.pop()?;
        let (size, depth) = self.bounds(&top)?;
        if self.memo.contains_key(&id) {
            return Err(Stop::Refused(format!("memo slot {id} is reused")));
        }
        self.memo.insert(id, Memo { size, depth, shared: false });
        self.stack.push(Item { size, depth, memo: Some(id) });
        Ok(())
    }

    fn get(&mut self, id: u32) -> std::result::Result<(), Stop> {
        let memo = self.memo.get_mut(&id).ok_or(Stop::LeftToCodec)?;
        memo.shared = true;
        self.stack.push(Item { size: memo.size, depth: memo.depth, memo: Some(id) });
        Ok(())
    }

    /// A reference to a memo slot was copied: the slot may no longer change.
    fn share(&mut self, item: Item) {
        if let Some(memo) = item.memo.and_then(|id| self.memo.get_mut(&id)) {
            memo.shared = true;
        }
    }
}
