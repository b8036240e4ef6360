//! Where a task's result lands ([`Slot`]) and the handle the caller holds ([`AsyncResult`]).

use std::future::Future;
use std::marker::PhantomData;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::wire::Bytes;

/// What a slot's task ended with: the encoded value, or why there is none.
pub(crate) type Done = Result<Bytes>;

/// Runs when a slot completes, on the pool's handler thread: must be quick (it hands work to
/// a callback thread or a channel).
pub(crate) type Hook = Box<dyn FnOnce(&Slot, &Done) + Send>;

enum State {
    Pending {
        waker: Option<Waker>,
        hook: Option<Hook>,
    },
    Done(Done),
    /// Taken by its `AsyncResult`; whether it was a value.
    Taken {
        ok: bool,
    },
}

/// One task's result, filled exactly once by the pool.
pub(crate) struct Slot {
    state: Mutex<State>,
    cond: Condvar,
    id: u64,
    /// The task's function type, for errors.
    what: &'static str,
    /// For a chunk of `map` and friends: its items' indexes in the input.
    items: Option<Range<usize>>,
}

impl Slot {
    pub(crate) fn new(
        id: u64,
        what: &'static str,
        items: Option<Range<usize>>,
        hook: Option<Hook>,
    ) -> Arc<Slot> {
        Arc::new(Slot {
            state: Mutex::new(State::Pending { waker: None, hook }),
            cond: Condvar::new(),
            id,
            what,
            items,
        })
    }

    /// What the task is, for errors: `task #17 (fn(u64) -> u64)`, and for a chunk
    /// `task #17 (fn(u64) -> u64, items 40..50 of the input)`.
    pub(crate) fn task(&self) -> String {
        match &self.items {
            None => format!("task #{} ({})", self.id, self.what),
            Some(items) => format!("task #{} ({}, items {items:?} of the input)", self.id, self.what),
        }
    }

    /// Item `i` of this chunk, for errors: `task #17 (fn(u64) -> u64), item 47 of the input`.
    pub(crate) fn item(&self, i: u64) -> String {
        let at = self.items.as_ref().map_or(i, |items| items.start as u64 + i);
        format!("task #{} ({}), item {at} of the input", self.id, self.what)
    }

    /// Fills the slot; later calls do nothing (a task completes exactly once).
    pub(crate) fn complete(&self, done: Done) {
        let mut state = self.state.lock();
        let State::Pending { waker, hook } = &mut *state else { return };
        let (waker, hook) = (waker.take(), hook.take());
        if let Some(hook) = hook {
            hook(self, &done);
        }
        *state = State::Done(done);
        drop(state);
        self.cond.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        !matches!(&*self.state.lock(), State::Pending { .. })
    }

    /// Waits until done or `deadline`; whether done.
    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let mut state = self.state.lock();
        while matches!(&*state, State::Pending { .. }) {
            match deadline {
                None => self.cond.wait(&mut state),
                Some(d) => {
                    if self.cond.wait_until(&mut state, d).timed_out() {
                        return !matches!(&*state, State::Pending { .. });
                    }
                }
            }
        }
        true
    }

    fn take(&self) -> Result<Bytes> {
        let mut state = self.state.lock();
        match &*state {
            State::Pending { .. } => Err(Error::NotReady),
            State::Taken { .. } => Err(Error::AlreadyTaken),
            State::Done(done) => {
                let ok = done.is_ok();
                let State::Done(done) = std::mem::replace(&mut *state, State::Taken { ok }) else {
                    unreachable!("matched Done above")
                };
                done
            }
        }
    }

    fn successful(&self) -> Option<bool> {
        match &*self.state.lock() {
            State::Pending { .. } => None,
            State::Done(done) => Some(done.is_ok()),
            State::Taken { ok } => Some(*ok),
        }
    }

    /// `Ready` when done; otherwise remembers the waker.
    fn poll_done(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state.lock();
        match &mut *state {
            State::Pending { waker, .. } => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }
}

/// Turns the slots' bytes into the caller's value, one slot at a time in order: `value` is
/// what the slots before made (`None` before the first), `items` how many items the slots
/// hold in all (`map` and friends; 0 otherwise). Called as each slot is done, so a `map`'s
/// chunks are decoded while later chunks still run.
pub(crate) type Decode<R> = fn(value: &mut Option<R>, bytes: &Bytes, slot: &Slot, items: usize) -> Result<()>;

/// Decodes one task's value.
pub(crate) fn decode_value<R: DeserializeOwned>(bytes: &Bytes, task: impl FnOnce() -> String) -> Result<R> {
    bytes.get().and_then(mproc_process::ipc::decode_bytes).map_err(|e| Error::Transfer {
        task: task(),
        message: format!("cannot decode the value: {}", crate::wire::decode_error(&e)),
    })
}

/// [`Decode`] for one task's value.
pub(crate) fn decode_one<R: DeserializeOwned>(
    value: &mut Option<R>,
    bytes: &Bytes,
    slot: &Slot,
    _items: usize,
) -> Result<()> {
    *value = Some(decode_value(bytes, || slot.task())?);
    Ok(())
}

/// [`Decode`] for chunks of values: each chunk's values appended, as they are decoded, to one
/// `Vec` sized for every item at the first (no `Vec` per chunk, no copy from one to the other).
pub(crate) fn decode_chunks<T: DeserializeOwned>(
    values: &mut Option<Vec<T>>,
    bytes: &Bytes,
    slot: &Slot,
    items: usize,
) -> Result<()> {
    let values = values.get_or_insert_with(|| Vec::with_capacity(items));
    // Through ipc's decoder: integers, bytes and floats straight into `values` in one loop or
    // one copy; a length read from the bytes reserves no more than the bytes can hold.
    bytes.get().and_then(|bytes| mproc_process::ipc::decode_append(bytes, values)).map_err(|e| {
        Error::Transfer {
            task: slot.task(),
            message: format!("cannot decode the values: {}", crate::wire::decode_error(&e)),
        }
    })
}

/// A result's slots: one for most tasks (kept inline, no allocation), one per chunk for
/// `map` and friends.
enum Slots {
    One(Arc<Slot>),
    Many(Vec<Arc<Slot>>),
}

impl Slots {
    fn as_slice(&self) -> &[Arc<Slot>] {
        match self {
            Slots::One(slot) => std::slice::from_ref(slot),
            Slots::Many(slots) => slots,
        }
    }
}

/// The result of [`Pool::apply_async`](crate::Pool::apply_async) and friends, as Python's
/// `AsyncResult`: [`get`](Self::get) it, [`wait`](Self::wait) for it, ask whether it is
/// [`ready`](Self::ready), or `.await` it from any executor (it is a [`Future`]).
///
/// Dropping it does not cancel the task: the task runs and its result is dropped.
#[must_use = "a task's result (or its error) is only seen through its AsyncResult"]
pub struct AsyncResult<R> {
    slots: Slots,
    decode: Decode<R>,
    /// Once the result was taken: whether it was a value.
    taken: Option<bool>,
    _value: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("tasks", &self.slots().iter().map(|s| s.task()).collect::<Vec<_>>())
            .field("ready", &self.ready())
            .finish()
    }
}

impl<R> AsyncResult<R> {
    /// The result of one task.
    pub(crate) fn one(slot: Arc<Slot>, decode: Decode<R>) -> AsyncResult<R> {
        AsyncResult { slots: Slots::One(slot), decode, taken: None, _value: PhantomData }
    }

    /// The result of several tasks (the chunks of a `map`), in order.
    pub(crate) fn many(slots: Vec<Arc<Slot>>, decode: Decode<R>) -> AsyncResult<R> {
        AsyncResult { slots: Slots::Many(slots), decode, taken: None, _value: PhantomData }
    }

    fn slots(&self) -> &[Arc<Slot>] {
        self.slots.as_slice()
    }

    /// Waits for the result and returns it. The parts of a result of several tasks are
    /// decoded as each is done, while the later ones still run.
    pub fn get(mut self) -> Result<R> {
        self.take_parts(true)
    }

    /// Waits at most `timeout`: [`Error::NotReady`] if the result is not there by then (the
    /// handle stays usable), otherwise the result, taken ([`Error::AlreadyTaken`] after).
    pub fn get_timeout(&mut self, timeout: Duration) -> Result<R> {
        if !self.wait_timeout(timeout) {
            return Err(Error::NotReady);
        }
        self.take()
    }

    /// Waits until the result is ready.
    pub fn wait(&self) {
        for slot in self.slots() {
            slot.wait_until(None);
        }
    }

    /// Waits until the result is ready or `timeout` passes; whether it is ready.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        self.slots().iter().all(|slot| slot.wait_until(deadline))
    }

    /// Whether the result is ready (the task finished, with a value or an error).
    pub fn ready(&self) -> bool {
        self.slots().iter().all(|s| s.is_done())
    }

    /// Whether the task finished without an error (its value also decoded, once taken);
    /// `None` while it is not ready.
    pub fn successful(&self) -> Option<bool> {
        if let Some(ok) = self.taken {
            return Some(ok);
        }
        let mut all = true;
        for slot in self.slots() {
            all &= slot.successful()?;
        }
        Some(all)
    }

    fn take(&mut self) -> Result<R> {
        if !self.ready() {
            return Err(Error::NotReady);
        }
        self.take_parts(false)
    }

    /// Takes every slot's error or value, in order (waiting for each first if `wait`): the
    /// first task error wins; then the first error decoding a value.
    fn take_parts(&mut self, wait: bool) -> Result<R> {
        if self.taken.is_some() {
            return Err(Error::AlreadyTaken);
        }
        let slots = self.slots.as_slice();
        let items = match &self.slots {
            Slots::One(_) => 0,
            Slots::Many(slots) => slots.iter().map(|s| s.items.as_ref().map_or(0, |r| r.len())).sum(),
        };
        let (mut value, mut failed, mut undecodable) = (None, None, None);
        for slot in slots {
            if wait {
                slot.wait_until(None);
            }
            match slot.take() {
                Ok(bytes) if failed.is_none() && undecodable.is_none() => {
                    if let Err(e) = (self.decode)(&mut value, &bytes, slot, items) {
                        undecodable = Some(e);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        let result = match failed.or(undecodable) {
            Some(e) => Err(e),
            None if value.is_some() => value.ok_or(Error::NotReady),
            None => {
                // No slot at all (`map` of nothing): the decoder makes the empty value.
                let nothing = Slot::new(0, "", None, None);
                (self.decode)(&mut value, &Bytes::from(EMPTY_SEQ.to_vec()), &nothing, 0)
                    .and_then(|()| value.ok_or(Error::NotReady))
            }
        };
        self.taken = Some(result.is_ok());
        result
    }
}

/// The encoding of an empty sequence (postcard: its length, 0).
const EMPTY_SEQ: [u8; 1] = [0];

impl<R> Future for AsyncResult<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        let this = self.get_mut();
        for slot in this.slots() {
            if slot.poll_done(cx).is_pending() {
                return Poll::Pending;
            }
        }
        Poll::Ready(this.take())
    }
}

impl<R> Unpin for AsyncResult<R> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(id: u64, items: Range<usize>, bytes: std::result::Result<Vec<u8>, Error>) -> Arc<Slot> {
        let slot = Slot::new(id, "fn(u64) -> u64", Some(items), None);
        slot.complete(bytes.map(Bytes::from));
        slot
    }

    fn encoded(values: &[u64]) -> std::result::Result<Vec<u8>, Error> {
        Ok(postcard::to_allocvec(values).unwrap())
    }

    #[test]
    fn chunks_decode_in_order_into_one_vec_sized_for_all() {
        let slots = vec![done(1, 0..2, encoded(&[1, 2])), done(2, 2..5, encoded(&[3, 4, 5]))];
        let values = AsyncResult::many(slots, decode_chunks::<u64>).get().unwrap();
        assert_eq!(values, [1, 2, 3, 4, 5]);
        assert_eq!(values.capacity(), 5, "one allocation for every item");
    }

    #[test]
    fn no_chunks_decode_to_no_values() {
        assert_eq!(AsyncResult::many(vec![], decode_chunks::<u64>).get().unwrap(), Vec::<u64>::new());
    }

    #[test]
    fn a_task_error_wins_over_an_earlier_chunk_that_does_not_decode() {
        let slots = vec![done(1, 0..1, Ok(vec![0xff])), done(2, 1..2, Err(Error::Closed))];
        assert!(matches!(AsyncResult::many(slots, decode_chunks::<u64>).get(), Err(Error::Closed)));
        let slots = vec![done(1, 0..1, Ok(vec![0xff])), done(2, 1..2, encoded(&[1]))];
        match AsyncResult::many(slots, decode_chunks::<u64>).get() {
            Err(Error::Transfer { task, .. }) => assert!(task.starts_with("task #1 "), "{task}"),
            other => panic!("expected the first chunk's decode error, got {other:?}"),
        }
    }

    #[test]
    fn taken_once_whichever_way() {
        let mut r =
            AsyncResult::one(done(1, 0..1, Ok(postcard::to_allocvec(&7u64).unwrap())), decode_one::<u64>);
        assert_eq!(r.get_timeout(Duration::from_secs(1)).unwrap(), 7);
        assert!(matches!(r.get_timeout(Duration::from_secs(1)), Err(Error::AlreadyTaken)));
        assert_eq!(r.successful(), Some(true));
    }
}
