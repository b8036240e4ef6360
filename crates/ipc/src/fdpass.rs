//! Ends inside values: passing file descriptors with `SCM_RIGHTS`.
//!
//! `Sender`, `Receiver` and `Connection` implement `Serialize` and `Deserialize`, but only
//! inside a send on a duplex [`Connection`](crate::Connection) (a Unix socket): serializing an
//! end records its fd in a side table and writes the fd's index in that table; the send then
//! attaches the table to the frame as `SCM_RIGHTS`. On the receiving side the fds arrive with
//! the frame's header and deserializing an end takes its fd by index. Anywhere else,
//! serializing or deserializing an end is an error, never a silent copy of a number.
//!
//! This is how a value carrying ends reaches another process: over a connection, or as the
//! arguments of a process started by `mproc-process`.

use std::cell::RefCell;
use std::os::fd::{BorrowedFd, OwnedFd};

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most fds one message can carry (the kernel's `SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;

/// What encoding a value met: the fds of its ends, in order, and why an end refused to go.
#[derive(Default)]
pub(crate) struct Outgoing {
    pub(crate) fds: Vec<OwnedFd>,
    pub(crate) refused: Option<&'static str>,
    /// Whether the encoding is for a Unix socket, where a value's sealed memfd may go as an
    /// fd instead of its bytes ([`file_may_travel`]).
    pub(crate) files: bool,
}

/// The side tables of this thread's send and receive in progress. One thread-local for both,
/// so a thread registers one destructor, once (a forked child that only sends then finds it
/// registered by its parent and writes no extra page).
struct Tables {
    /// While a send encodes its value: what the ends in it said.
    outgoing: RefCell<Option<Outgoing>>,
    /// While a receive decodes its value: the fds that came with the frame.
    incoming: RefCell<Option<Vec<Option<OwnedFd>>>>,
}

thread_local! {
    static TABLES: Tables = const { Tables { outgoing: RefCell::new(None), incoming: RefCell::new(None) } };
}

thread_local! {
    /// Set whenever an end (or a bare fd) is serialized or deserialized, with or without
    /// tables: a send or receive that ran without them and failed does it again with them
    /// only then ([`end_met`]). No destructor, so a cheap access.
    static END_MET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

thread_local! {
    /// Set while [`walk`] serializes a value for what serializing does besides writing.
    static WALKING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Serializes `value` into nothing, ends standing for no fd (no duplicate is made, nothing
/// sent), for what a type's `Serialize` does when [`walking`] says so (a `Barrier` registers
/// the calling thread as a party). Errors are ignored: the walk has no output to fail.
pub(crate) fn walk<T: Serialize + ?Sized>(value: &T) {
    WALKING.set(true);
    let _ = crate::codec::encoded_len(value);
    WALKING.set(false);
}

/// Whether this thread's serializing is a [`walk`].
pub(crate) fn walking() -> bool {
    WALKING.get()
}

fn note_end() {
    END_MET.set(true);
}

/// Whether an end was serialized or deserialized in this thread since the last call (which
/// clears it). A send encodes without tables first, so a value with no end in it (nearly all)
/// costs no table set-up: if that fails and this says an end was met, it encodes again under
/// [`collecting`], which says whether and why the end cannot go; the same for a receive
/// without fds and [`providing`].
pub(crate) fn end_met() -> bool {
    END_MET.replace(false)
}

/// Runs `f` on this thread's tables; `None` while the thread is being torn down (a send or
/// receive from an `atexit` hook or a thread-local destructor): ends then cannot travel, and
/// everything else still can.
fn with_tables<R>(f: impl FnOnce(&Tables) -> R) -> Option<R> {
    TABLES.try_with(f).ok()
}

/// Runs `encode` with fd collection on; returns its result and (duplicates of) the fds met,
/// in order. Bytes kept in a sealed memfd are encoded as their bytes.
pub(crate) fn collecting<R>(encode: impl FnOnce() -> R) -> (R, Outgoing) {
    collecting_for(false, encode)
}

/// [`collecting`] for a send on an end that carries fds when `files`: then bytes kept in a
/// sealed memfd ([`Carried`](crate::Carried)'s large ones) go as the memfd, not copied.
pub(crate) fn collecting_for<R>(files: bool, encode: impl FnOnce() -> R) -> (R, Outgoing) {
    let fresh = Outgoing { files, ..Outgoing::default() };
    let outer = with_tables(|t| t.outgoing.replace(Some(fresh)));
    let result = encode();
    let outgoing = outer.and_then(|outer| with_tables(|t| t.outgoing.replace(outer))).flatten();
    (result, outgoing.unwrap_or_default())
}

/// Runs `measure`, a pass that only sizes a value whose encoding a later pass writes, then
/// drops the fds it added to the outgoing table: the later pass adds them again at the same
/// indices, so both passes encode the same bytes and each fd goes once.
pub(crate) fn measuring<R>(measure: impl FnOnce() -> R) -> R {
    let mark = with_tables(|t| t.outgoing.borrow().as_ref().map(|outgoing| outgoing.fds.len())).flatten();
    let result = measure();
    if let Some(mark) = mark {
        with_tables(|t| t.outgoing.borrow_mut().as_mut().map(|outgoing| outgoing.fds.truncate(mark)));
    }
    result
}

/// An end cannot go, for the reason `why`: the send reports it as
/// [`Error::FdPassing`](crate::Error::FdPassing) (postcard would keep only "custom error").
pub(crate) fn refuse<E: serde::ser::Error>(why: &'static str) -> E {
    note_end();
    with_tables(|t| {
        if let Some(outgoing) = t.outgoing.borrow_mut().as_mut() {
            outgoing.refused.get_or_insert(why);
        }
    });
    E::custom(why)
}

/// Runs `decode` with `fds` available to the ends inside the value; those it does not take
/// are closed.
pub(crate) fn providing<R>(fds: Vec<OwnedFd>, decode: impl FnOnce() -> R) -> R {
    let table = fds.into_iter().map(Some).collect();
    let outer = with_tables(|t| t.incoming.replace(Some(table)));
    let result = decode();
    if let Some(outer) = outer {
        with_tables(|t| t.incoming.replace(outer));
    }
    result
}

/// Whether bytes kept in a sealed memfd may go as that fd in the encoding in progress (a send
/// on a Unix socket), or must go as bytes (a pipe, TCP, inside a `Carried`); `None` outside
/// a send, where they cannot go at all (as an end cannot): a send encodes without the fd
/// tables first, and tries again with them only when an end was met, which this notes.
pub(crate) fn file_may_travel() -> Option<bool> {
    note_end();
    with_tables(|t| t.outgoing.borrow().as_ref().map(|outgoing| outgoing.files)).flatten()
}

/// `Serialize` for an end: its fd's index in the outgoing table.
pub(crate) fn serialize_fd<S: Serializer>(fd: BorrowedFd<'_>, serializer: S) -> Result<S::Ok, S::Error> {
    if walking() {
        return serializer.serialize_u32(0);
    }
    note_end();
    // A duplicate, so the table owns what it sends whatever happens to the end meanwhile.
    let index = with_tables(|t| {
        t.outgoing.borrow_mut().as_mut().map(|outgoing| {
            let dup = fd.try_clone_to_owned()?;
            outgoing.fds.push(dup);
            Ok::<_, std::io::Error>(outgoing.fds.len() - 1)
        })
    })
    .flatten();
    match index {
        Some(Ok(index)) => serializer.serialize_u32(index as u32),
        Some(Err(e)) => Err(S::Error::custom(format!("cannot duplicate an end's fd: {e}"))),
        None => Err(S::Error::custom(
            "an ipc end can only be serialized by a send on a duplex Connection or a process start",
        )),
    }
}

/// `Deserialize` for an end: takes the fd at the index the value holds.
pub(crate) fn deserialize_fd<'de, D: Deserializer<'de>>(deserializer: D) -> Result<OwnedFd, D::Error> {
    note_end();
    let index = u32::deserialize(deserializer)? as usize;
    let taken = with_tables(|t| {
        t.incoming.borrow_mut().as_mut().map(|table| table.get_mut(index).and_then(Option::take))
    });
    match taken.flatten() {
        None => Err(D::Error::custom(
            "an ipc end can only be deserialized by a receive on a duplex Connection or a process start",
        )),
        Some(None) => Err(D::Error::custom(format!("the message carries no file descriptor #{index}"))),
        Some(Some(fd)) => Ok(fd),
    }
}

/// `Serialize` and `Deserialize` for a typed end, by its fd.
macro_rules! impl_end_serde {
    ($name:ident < $($g:ident),* >) => {
        impl<$($g),*> serde::Serialize for $name<$($g),*> {
            fn serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
                // A walk sends nothing: an end that could not go now does not stop it.
                if !$crate::fdpass::walking()
                    && let Err(why) = self.end.check_transferable()
                {
                    return Err($crate::fdpass::refuse(why));
                }
                $crate::fdpass::serialize_fd(std::os::fd::AsFd::as_fd(self), serializer)
            }
        }

        impl<'de, $($g),*> serde::Deserialize<'de> for $name<$($g),*> {
            fn deserialize<De: serde::Deserializer<'de>>(deserializer: De) -> Result<Self, De::Error> {
                $crate::fdpass::deserialize_fd(deserializer).map(Self::from)
            }
        }
    };
}
pub(crate) use impl_end_serde;

/// One fd inside a value, serialized as an end is (for types that carry a bare fd: shared
/// regions, [`Carried`](crate::Carried)).
pub(crate) struct FdOf<'a>(pub(crate) BorrowedFd<'a>);

impl serde::Serialize for FdOf<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_fd(self.0, serializer)
    }
}

/// The fd an [`FdOf`] sent, received.
pub(crate) struct FdIn(pub(crate) OwnedFd);

impl<'de> Deserialize<'de> for FdIn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_fd(deserializer).map(FdIn)
    }
}
