//! Sleeping, yielding and deadlines, on greenhack's loop.
//!
//! [`sleep`] and [`yield_now`] are plain functions for sync code; they wait
//! through [`exempt`](crate::exempt) like every other wait. Timers live in
//! the thread's reactor, so they need greenhack's loop: on a plain thread or
//! in a spawned greenlet that is automatic; inside an `as_async` polled by a
//! foreign executor they panic with a message naming the executor-native
//! alternative (`exempt(tokio::time::sleep(d))`).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::reactor::Reactor;

/// Puts the current greenlet (or thread) to sleep for at least `duration`;
/// other greenlets of the loop run meanwhile.
///
/// ```
/// use std::time::{Duration, Instant};
///
/// let start = Instant::now();
/// greenhack::sleep(Duration::from_millis(20));
/// assert!(start.elapsed() >= Duration::from_millis(20));
/// ```
///
/// A `duration` too long for `Instant` to represent (`Duration::MAX`)
/// sleeps forever, as `std::thread::sleep` does; cancelling the greenlet
/// still ends it.
///
/// # Panics
///
/// Inside an `as_async` that a foreign executor polls: greenhack's timers
/// need greenhack's loop. The message names the executor-native
/// alternative, `exempt(tokio::time::sleep(d))`.
pub fn sleep(duration: Duration) {
    match Instant::now().checked_add(duration) {
        Some(deadline) => sleep_until(deadline),
        // issue 15 (defect 7): past the end of `Instant` is never; no timer.
        None => crate::pair::exempt_loop(
            "greenhack::sleep",
            std::future::pending::<()>(),
            "tokio::time::sleep(d)",
            crate::debug::Wait::Future("greenhack::sleep(forever)"),
        ),
    }
}

/// Sleeps until `deadline`; returns at once if it has passed.
pub fn sleep_until(deadline: Instant) {
    crate::pair::exempt_loop(
        "greenhack::sleep",
        Sleep::new(deadline),
        "tokio::time::sleep(d)",
        crate::debug::Wait::Sleep(deadline),
    )
}

/// Lets every other ready greenlet of the loop run once, then continues.
///
/// Outside greenhack's loop (under a foreign executor) this yields to that
/// executor instead, which is equally correct.
pub fn yield_now() {
    crate::exempt(YieldNow(false))
}

/// Resolves on its second poll, waking itself after the first.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A timer on the thread's reactor, as a future.
pub(crate) struct Sleep {
    deadline: Instant,
    /// The registration, once polled.
    key: Option<(Instant, u64)>,
    reactor: Rc<Reactor>,
}

impl Sleep {
    pub(crate) fn new(deadline: Instant) -> Sleep {
        Sleep {
            deadline,
            key: None,
            reactor: Reactor::current(),
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            if let Some(key) = self.key.take() {
                self.reactor.remove_timer(key);
            }
            return Poll::Ready(());
        }
        let key = self.reactor.add_timer(self.deadline, cx.waker(), self.key);
        self.key = Some(key);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.reactor.remove_timer(key);
        }
    }
}

/// `inner`, or `None` once `deadline` passes first.
pub(crate) struct Deadline<F> {
    inner: F,
    timer: Sleep,
}

impl<F: Future> Deadline<F> {
    pub(crate) fn new(inner: F, deadline: Instant) -> Deadline<F> {
        Deadline {
            inner,
            timer: Sleep::new(deadline),
        }
    }
}

impl<F: Future + Unpin> Future for Deadline<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = Pin::new(&mut self.inner).poll(cx) {
            return Poll::Ready(Some(v));
        }
        match Pin::new(&mut self.timer).poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Converts a `Duration` timeout the way std's socket setters validate it.
pub(crate) fn check_timeout(dur: Option<Duration>) -> std::io::Result<Option<Duration>> {
    if dur == Some(Duration::ZERO) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "cannot set a 0 duration timeout",
        ));
    }
    Ok(dur)
}
