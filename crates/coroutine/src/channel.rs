//! A channel between coroutines of one thread.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

struct Chan<T> {
    queue: VecDeque<T>,
    receiver: Option<Waker>,
    senders: usize,
    receiver_alive: bool,
}

/// An unbounded channel for coroutines of one thread: [`LocalSender::send`] never waits,
/// [`LocalReceiver::recv`] waits for a value or for every sender to be gone.
pub fn channel<T>() -> (LocalSender<T>, LocalReceiver<T>) {
    let chan = Rc::new(RefCell::new(Chan {
        queue: VecDeque::new(),
        receiver: None,
        senders: 1,
        receiver_alive: true,
    }));
    (LocalSender { chan: Rc::clone(&chan) }, LocalReceiver { chan })
}

/// The sending side of a [`channel`]; clone it for more senders.
pub struct LocalSender<T> {
    chan: Rc<RefCell<Chan<T>>>,
}

/// The receiving side of a [`channel`].
pub struct LocalReceiver<T> {
    chan: Rc<RefCell<Chan<T>>>,
}

impl<T> fmt::Debug for LocalSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LocalSender")
    }
}

impl<T> fmt::Debug for LocalReceiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LocalReceiver")
    }
}

impl<T> LocalSender<T> {
    /// Queues `value`; gives it back if the receiver is gone.
    pub fn send(&self, value: T) -> Result<(), T> {
        let mut chan = self.chan.borrow_mut();
        if !chan.receiver_alive {
            return Err(value);
        }
        chan.queue.push_back(value);
        let waker = chan.receiver.take();
        drop(chan);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl<T> Clone for LocalSender<T> {
    fn clone(&self) -> Self {
        self.chan.borrow_mut().senders += 1;
        LocalSender { chan: Rc::clone(&self.chan) }
    }
}

impl<T> Drop for LocalSender<T> {
    fn drop(&mut self) {
        let mut chan = self.chan.borrow_mut();
        chan.senders -= 1;
        let waker = if chan.senders == 0 { chan.receiver.take() } else { None };
        drop(chan);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> LocalReceiver<T> {
    /// The next value; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&self) -> Option<T> {
        poll_fn(|cx| {
            let mut chan = self.chan.borrow_mut();
            if let Some(value) = chan.queue.pop_front() {
                return Poll::Ready(Some(value));
            }
            if chan.senders == 0 {
                return Poll::Ready(None);
            }
            chan.receiver = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// The next value if one is queued.
    pub fn try_recv(&self) -> Option<T> {
        self.chan.borrow_mut().queue.pop_front()
    }
}

impl<T> Drop for LocalReceiver<T> {
    fn drop(&mut self) {
        let mut chan = self.chan.borrow_mut();
        chan.receiver_alive = false;
        // Dropped after the borrow ends: a value may hold a sender of this very channel.
        let queued = std::mem::take(&mut chan.queue);
        drop(chan);
        drop(queued);
    }
}
