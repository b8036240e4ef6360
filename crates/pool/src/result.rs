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

/// Turns the slots' bytes into the caller's value.
pub(crate) type Decode<R> = fn(Vec<Bytes>, &[Arc<Slot>]) -> Result<R>;

/// Decodes one task's value.
pub(crate) fn decode_one<R: DeserializeOwned>(mut parts: Vec<Bytes>, slots: &[Arc<Slot>]) -> Result<R> {
    let bytes = parts.pop().unwrap_or_default();
    mproc_process::ipc::decode_bytes(&bytes.0).map_err(|e| Error::Transfer {
        task: slots.first().map_or_else(String::new, |s| s.task()),
        message: format!("cannot decode the value: {}", crate::wire::decode_error(&e)),
    })
}

/// Decodes chunks of values, in order, into one `Vec`.
pub(crate) fn decode_chunks<T: DeserializeOwned>(parts: Vec<Bytes>, slots: &[Arc<Slot>]) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for (bytes, slot) in parts.iter().zip(slots) {
        let chunk: Vec<T> = mproc_process::ipc::decode_bytes(&bytes.0).map_err(|e| Error::Transfer {
            task: slot.task(),
            message: format!("cannot decode the values: {}", crate::wire::decode_error(&e)),
        })?;
        if out.is_empty() {
            out = chunk;
        } else {
            out.extend(chunk);
        }
    }
    Ok(out)
}

/// The result of [`Pool::apply_async`](crate::Pool::apply_async) and friends, as Python's
/// `AsyncResult`: [`get`](Self::get) it, [`wait`](Self::wait) for it, ask whether it is
/// [`ready`](Self::ready), or `.await` it from any executor (it is a [`Future`]).
///
/// Dropping it does not cancel the task: the task runs and its result is dropped.
#[must_use = "a task's result (or its error) is only seen through its AsyncResult"]
pub struct AsyncResult<R> {
    slots: Vec<Arc<Slot>>,
    decode: Decode<R>,
    /// Once the result was taken: whether it was a value.
    taken: Option<bool>,
    _value: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("tasks", &self.slots.iter().map(|s| s.task()).collect::<Vec<_>>())
            .field("ready", &self.ready())
            .finish()
    }
}

impl<R> AsyncResult<R> {
    pub(crate) fn new(slots: Vec<Arc<Slot>>, decode: Decode<R>) -> AsyncResult<R> {
        AsyncResult { slots, decode, taken: None, _value: PhantomData }
    }

    /// Waits for the result and returns it.
    pub fn get(mut self) -> Result<R> {
        self.wait();
        self.take()
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
        for slot in &self.slots {
            slot.wait_until(None);
        }
    }

    /// Waits until the result is ready or `timeout` passes; whether it is ready.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        self.slots.iter().all(|slot| slot.wait_until(deadline))
    }

    /// Whether the result is ready (the task finished, with a value or an error).
    pub fn ready(&self) -> bool {
        self.slots.iter().all(|s| s.is_done())
    }

    /// Whether the task finished without an error (its value also decoded, once taken);
    /// `None` while it is not ready.
    pub fn successful(&self) -> Option<bool> {
        if let Some(ok) = self.taken {
            return Some(ok);
        }
        let mut all = true;
        for slot in &self.slots {
            all &= slot.successful()?;
        }
        Some(all)
    }

    fn take(&mut self) -> Result<R> {
        if self.taken.is_some() {
            return Err(Error::AlreadyTaken);
        }
        if !self.ready() {
            return Err(Error::NotReady);
        }
        // Every slot's error or value, in order: the first error wins.
        let mut parts = Vec::with_capacity(self.slots.len());
        let mut failed = None;
        for slot in &self.slots {
            match slot.take() {
                Ok(part) => parts.push(part),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        let result = match failed {
            Some(e) => Err(e),
            None => (self.decode)(parts, &self.slots),
        };
        self.taken = Some(result.is_ok());
        result
    }
}

impl<R> Future for AsyncResult<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        let this = self.get_mut();
        for slot in &this.slots {
            if slot.poll_done(cx).is_pending() {
                return Poll::Pending;
            }
        }
        Poll::Ready(this.take())
    }
}

impl<R> Unpin for AsyncResult<R> {}
