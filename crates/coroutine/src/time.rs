//! Timers: `sleep`, `sleep_until`, `timeout`.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::executor::{Local, current};

/// Waits `duration` (see [`sleep_until`]).
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(Instant::now().checked_add(duration).unwrap_or_else(far_future))
}

/// Waits until `deadline`. The executor's reactor wakes at the earliest timer (its epoll
/// timeout): no thread, no signal.
///
/// # Panics
///
/// When first polled outside [`Executor::block_on`](crate::Executor::block_on).
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep { deadline, timer: None }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// The future of [`sleep`] and [`sleep_until`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Sleep {
    deadline: Instant,
    timer: Option<(u64, Rc<Local>)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            if let Some((id, local)) = self.timer.take() {
                local.reactor.remove_timer(self.deadline, id);
            }
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        match &self.timer {
            Some((id, local)) => local.reactor.update_timer(deadline, *id, cx.waker()),
            None => {
                let local = current().expect("mproc_coroutine::sleep polled outside Executor::block_on");
                let id = local.reactor.add_timer(deadline, cx.waker().clone());
                self.timer = Some((id, local));
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some((id, local)) = self.timer.take() {
            local.reactor.remove_timer(self.deadline, id);
        }
    }
}

/// [`timeout`] ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the deadline passed first")
    }
}

impl std::error::Error for Elapsed {}

/// Runs `future` for at most `duration`: its output, or [`Elapsed`] (and `future` is
/// dropped, which for an ipc receive leaves the end as it was: nothing is lost).
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, Elapsed> {
    let mut future = pin!(future);
    let mut sleep = pin!(sleep(duration));
    poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        sleep.as_mut().poll(cx).map(|()| Err(Elapsed))
    })
    .await
}
