//! The reactor: epoll over the fds coroutines wait on, an eventfd for wakes from other threads,
//! and timers as the epoll timeout. It lives in the executor's thread; nothing here is shared.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, CreateFlags, EventData, EventFlags};
use rustix::event::{EventfdFlags, Timespec};

/// The epoll key of the eventfd; sources use their slot + 1.
const WAKE_KEY: u64 = 0;

/// What is known of one registered fd: how many readiness events each direction has had, and
/// who waits for the next one. Several coroutines may wait on one fd (several senders on one
/// connection): an event wakes them all, and each retries its operation.
#[derive(Default)]
struct Source {
    ticks: [u64; 2],
    waiters: [Vec<Waker>; 2],
}

pub(crate) struct Reactor {
    epoll: OwnedFd,
    sources: RefCell<Vec<Option<Source>>>,
    free: RefCell<Vec<usize>>,
    timers: RefCell<BTreeMap<(Instant, u64), Waker>>,
    next_timer: Cell<u64>,
    events: RefCell<Vec<epoll::Event>>,
}

impl Reactor {
    /// A reactor that also wakes when `wake` (an eventfd, see [`eventfd`]) is written.
    pub(crate) fn new(wake: BorrowedFd<'_>) -> io::Result<Reactor> {
        let epoll = epoll::create(CreateFlags::CLOEXEC)?;
        epoll::add(&epoll, wake, EventData::new_u64(WAKE_KEY), EventFlags::IN | EventFlags::ET)?;
        Ok(Reactor {
            epoll,
            sources: RefCell::default(),
            free: RefCell::default(),
            timers: RefCell::default(),
            next_timer: Cell::new(0),
            events: RefCell::new(Vec::with_capacity(256)),
        })
    }

    /// Watches `fd` (edge-triggered, both directions); returns its key.
    pub(crate) fn register(&self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        let key = match self.free.borrow_mut().pop() {
            Some(key) => {
                self.sources.borrow_mut()[key] = Some(Source::default());
                key
            }
            None => {
                let mut sources = self.sources.borrow_mut();
                sources.push(Some(Source::default()));
                sources.len() - 1
            }
        };
        let flags = EventFlags::IN | EventFlags::OUT | EventFlags::RDHUP | EventFlags::ET;
        if let Err(e) = epoll::add(&self.epoll, fd, EventData::new_u64(key as u64 + 1), flags) {
            self.release(key);
            return Err(e.into());
        }
        Ok(key)
    }

    /// Stops watching `fd` (registered as `key`).
    pub(crate) fn deregister(&self, key: usize, fd: BorrowedFd<'_>) {
        let _ = epoll::delete(&self.epoll, fd);
        self.release(key);
    }

    fn release(&self, key: usize) {
        self.sources.borrow_mut()[key] = None;
        self.free.borrow_mut().push(key);
    }

    /// `Ready` once the fd has had a readiness event (in that direction) after `since`, the
    /// event count this waiter saw first (`None` on its first poll: it is recorded). An fd
    /// that is gone counts as ready.
    pub(crate) fn poll_event(
        &self,
        key: usize,
        write: bool,
        since: &mut Option<u64>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let mut sources = self.sources.borrow_mut();
        let Some(source) = sources.get_mut(key).and_then(Option::as_mut) else { return Poll::Ready(()) };
        let dir = usize::from(write);
        let now = source.ticks[dir];
        match *since {
            Some(seen) if seen != now => return Poll::Ready(()),
            Some(_) => {}
            None => *since = Some(now),
        }
        source.waiters[dir].push(cx.waker().clone());
        Poll::Pending
    }

    /// Takes every waker waiting on a source or a timer (when the executor goes away).
    pub(crate) fn take_wakers(&self) -> Vec<Waker> {
        let mut wakers: Vec<Waker> = std::mem::take(&mut *self.timers.borrow_mut()).into_values().collect();
        for source in self.sources.borrow_mut().iter_mut().flatten() {
            for waiters in &mut source.waiters {
                wakers.append(waiters);
            }
        }
        wakers
    }

    /// Adds a timer; returns its id.
    pub(crate) fn add_timer(&self, at: Instant, waker: Waker) -> u64 {
        let id = self.next_timer.get();
        self.next_timer.set(id + 1);
        self.timers.borrow_mut().insert((at, id), waker);
        id
    }

    /// Replaces a timer's waker.
    pub(crate) fn update_timer(&self, at: Instant, id: u64, waker: &Waker) {
        if let Some(w) = self.timers.borrow_mut().get_mut(&(at, id))
            && !w.will_wake(waker)
        {
            *w = waker.clone();
        }
    }

    pub(crate) fn remove_timer(&self, at: Instant, id: u64) {
        self.timers.borrow_mut().remove(&(at, id));
    }

    /// Waits for events at most `timeout` (`None`: until one comes or the next timer), wakes
    /// the waiters of what happened, and fires due timers.
    pub(crate) fn poll(&self, timeout: Option<Duration>) -> io::Result<()> {
        let next_timer = self.timers.borrow().keys().next().map(|&(at, _)| at);
        let timeout = match (timeout, next_timer) {
            (Some(t), Some(at)) => Some(t.min(at.saturating_duration_since(Instant::now()))),
            (Some(t), None) => Some(t),
            (None, Some(at)) => Some(at.saturating_duration_since(Instant::now())),
            (None, None) => None,
        };
        let timespec =
            timeout.map(|t| Timespec::try_from(t).unwrap_or(Timespec { tv_sec: i64::MAX, tv_nsec: 0 }));
        let mut events = self.events.borrow_mut();
        events.clear();
        match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut *events), timespec.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let mut wakers = Vec::new();
        {
            let mut sources = self.sources.borrow_mut();
            for event in events.iter() {
                let key = event.data.u64();
                if key == WAKE_KEY {
                    // Edge-triggered: the counter need not be read back to zero.
                    continue;
                }
                let Some(Some(source)) = sources.get_mut(key as usize - 1) else { continue };
                let flags = event.flags;
                let read = EventFlags::IN | EventFlags::HUP | EventFlags::RDHUP | EventFlags::ERR;
                let write = EventFlags::OUT | EventFlags::HUP | EventFlags::ERR;
                for (dir, mask) in [read, write].into_iter().enumerate() {
                    if flags.intersects(mask) {
                        source.ticks[dir] += 1;
                        wakers.append(&mut source.waiters[dir]);
                    }
                }
            }
        }
        drop(events);
        let now = Instant::now();
        loop {
            let due = {
                let mut timers = self.timers.borrow_mut();
                match timers.first_key_value() {
                    Some((&(at, _), _)) if at <= now => timers.pop_first().map(|(_, w)| w),
                    _ => None,
                }
            };
            match due {
                Some(w) => wakers.push(w),
                None => break,
            }
        }
        for waker in wakers {
            waker.wake();
        }
        Ok(())
    }
}

/// An eventfd for [`Reactor::new`].
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?)
}

/// Wakes a reactor sleeping in `poll`, from any thread.
pub(crate) fn notify(eventfd: BorrowedFd<'_>) {
    // Each write is a new edge. The counter only overflows after 2^64 - 2 writes unread; a
    // full counter (EAGAIN) is readable already, so the wake is not lost.
    let _ = rustix::io::write(eventfd, &1u64.to_ne_bytes());
}

impl AsFd for Reactor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}
