//! The reactor: epoll over the fds coroutines wait on, an eventfd for wakes from other threads,
//! and timers as the epoll timeout. It lives in the executor's thread; nothing here is shared.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, CreateFlags, EventData, EventFlags};
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};

/// The epoll key of the eventfd; sources use their slot + 1.
const WAKE_KEY: u64 = 0;

/// What is known of one registered fd: how many readiness events each direction has had, and
/// who waits for the next one. Several coroutines may wait on one fd (several senders on one
/// connection): an event wakes them all, and each retries its operation.
#[derive(Default)]
struct Source {
    ticks: [u64; 2],
    waiters: [Waiters; 2],
}

/// The wakers of the waits on one direction of a source: one entry per waiting [`Readiness`]
/// future, which replaces its waker in place when polled again and removes its entry when
/// dropped, so the list is as long as the number of waits, however often they are polled or
/// given up (a receive under a timeout in a loop).
#[derive(Default)]
struct Waiters {
    /// `None`: a wait that was woken (or is between polls) and still owns its entry.
    entries: Vec<Option<Waker>>,
    /// Indexes of entries no wait owns.
    free: Vec<usize>,
}

impl Waiters {
    /// An entry for a new wait.
    fn insert(&mut self) -> usize {
        match self.free.pop() {
            Some(index) => index,
            None => {
                self.entries.push(None);
                self.entries.len() - 1
            }
        }
    }

    /// Sets the waker of entry `index`, unless it already wakes the same task.
    fn set(&mut self, index: usize, waker: &Waker) {
        let entry = &mut self.entries[index];
        match entry {
            Some(kept) if kept.will_wake(waker) => {}
            _ => *entry = Some(waker.clone()),
        }
    }

    /// Gives up entry `index` (its wait is dropped).
    fn remove(&mut self, index: usize) {
        self.entries[index] = None;
        self.free.push(index);
    }

    /// Takes every waker (the entries stay with their waits).
    fn take_all(&mut self, into: &mut Vec<Waker>) {
        into.extend(self.entries.iter_mut().filter_map(Option::take));
    }
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

    /// A wait for the next readiness event of `key` in one direction (`write`), or, with
    /// `now` given (the registered fd), for the fd to be ready now or later.
    pub(crate) fn readiness<'a>(
        &'a self,
        key: usize,
        write: bool,
        now: Option<BorrowedFd<'a>>,
    ) -> Readiness<'a> {
        Readiness { reactor: self, key, dir: usize::from(write), now, wait: None }
    }

    /// Takes every waker waiting on a source or a timer (when the executor goes away).
    pub(crate) fn take_wakers(&self) -> Vec<Waker> {
        let mut wakers: Vec<Waker> = std::mem::take(&mut *self.timers.borrow_mut()).into_values().collect();
        for source in self.sources.borrow_mut().iter_mut().flatten() {
            for waiters in &mut source.waiters {
                waiters.take_all(&mut wakers);
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
                        source.waiters[dir].take_all(&mut wakers);
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

/// The future of [`Reactor::readiness`]: `Ready` once the fd has had a readiness event in its
/// direction after the first poll (or is ready at the first poll, when asked), or is no longer
/// registered. It holds one entry in the source's waiters from its first poll until it is
/// dropped.
pub(crate) struct Readiness<'a> {
    reactor: &'a Reactor,
    key: usize,
    dir: usize,
    /// Check the fd's state at the first poll (`readable()` / `writable()`): an edge taken
    /// while nobody waited is not seen again.
    now: Option<BorrowedFd<'a>>,
    /// The event count seen at the first poll, and this wait's entry in the waiters.
    wait: Option<(u64, usize)>,
}

impl Future for Readiness<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut sources = this.reactor.sources.borrow_mut();
        let Some(source) = sources.get_mut(this.key).and_then(Option::as_mut) else {
            return Poll::Ready(());
        };
        let ticks = source.ticks[this.dir];
        let (seen, index) = match this.wait {
            Some(wait) => wait,
            None => {
                // Interest first, then the state: an event after the check is counted.
                let wait = (ticks, source.waiters[this.dir].insert());
                this.wait = Some(wait);
                if let Some(fd) = this.now.take()
                    && ready_now(fd, this.dir == 1)
                {
                    return Poll::Ready(());
                }
                wait
            }
        };
        if ticks != seen {
            return Poll::Ready(());
        }
        source.waiters[this.dir].set(index, cx.waker());
        Poll::Pending
    }
}

impl Drop for Readiness<'_> {
    fn drop(&mut self) {
        let Some((_, index)) = self.wait else { return };
        // The source outlives the wait (its `Async` is borrowed by it); `try_borrow_mut`
        // only guards a drop from inside the reactor's own borrow, which never happens.
        if let Ok(mut sources) = self.reactor.sources.try_borrow_mut()
            && let Some(Some(source)) = sources.get_mut(self.key)
        {
            source.waiters[self.dir].remove(index);
        }
    }
}

/// Whether `fd` is readable (`write`: writable) now, by a `poll(2)` that does not wait. An
/// error or a hang-up counts as ready, as it does for the reactor's events.
fn ready_now(fd: BorrowedFd<'_>, write: bool) -> bool {
    let wanted = if write { PollFlags::OUT } else { PollFlags::IN | PollFlags::RDHUP };
    let mut fds = [PollFd::new(&fd, wanted)];
    match rustix::event::poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 })) {
        Ok(n) => n > 0,
        Err(_) => true,
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
