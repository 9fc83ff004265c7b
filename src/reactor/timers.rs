//! Timers: deadlines ordered in a map, each with the waker to wake when it
//! passes. The turn fires every deadline at or before now; the earliest one
//! bounds how long the turn may wait. [`Sleep`] is a timer as a future, and
//! [`Deadline`] bounds another future with one: the waits of the layers
//! above (`sleep`, socket timeouts, `timeout` scopes) are built from them.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::Reactor;

/// A timer's key: its deadline and a sequence number that keeps equal
/// deadlines apart and identifies the entry for removal.
pub(crate) type TimerKey = (Instant, u64);

/// The reactor's timers.
#[derive(Default)]
pub(super) struct Timers {
    map: BTreeMap<TimerKey, Waker>,
    seq: u64,
}

impl Timers {
    /// Moves the wakers of every timer due at `now` into `wakers` (the
    /// clock is read only when a timer exists).
    pub(super) fn fire_due(&mut self, wakers: &mut Vec<Waker>) {
        if self.map.is_empty() {
            return;
        }
        let now = Instant::now();
        while let Some(entry) = self.map.first_entry() {
            if entry.key().0 > now {
                break;
            }
            wakers.push(entry.remove());
        }
    }

    /// The earliest deadline.
    pub(super) fn earliest(&self) -> Option<Instant> {
        self.map.keys().next().map(|&(deadline, _)| deadline)
    }

    /// Takes every timer out (shutdown).
    pub(super) fn drain(&mut self) -> Vec<Waker> {
        std::mem::take(&mut self.map).into_values().collect()
    }
}

impl Reactor {
    /// Registers (or re-registers, keeping `old`'s place) a timer that wakes
    /// `waker` at `deadline`; returns its key.
    pub(crate) fn add_timer(
        &self,
        deadline: Instant,
        waker: &Waker,
        old: Option<TimerKey>,
    ) -> TimerKey {
        let key = self.set_timer(deadline, waker, old);
        // On every poll that leaves the timer pending, not only the first: a
        // host task's interest is forgotten each time the host wakes it (a
        // socket event, say), and a re-poll that found its timer already
        // registered must renew it, or the timer's expiry wakes no one.
        self.note_interest(waker);
        key
    }

    /// The registration behind [`add_timer`](Self::add_timer).
    fn set_timer(&self, deadline: Instant, waker: &Waker, old: Option<TimerKey>) -> TimerKey {
        let mut timers = self.timers.borrow_mut();
        if let Some(key) = old {
            if let Some(w) = timers.map.get_mut(&key) {
                if !w.will_wake(waker) {
                    *w = waker.clone();
                }
                return key;
            }
        }
        timers.seq += 1;
        let key = (deadline, timers.seq);
        timers.map.insert(key, waker.clone());
        key
    }

    /// Forgets a timer (it fired or its wait ended).
    pub(crate) fn remove_timer(&self, key: TimerKey) {
        self.timers.borrow_mut().map.remove(&key);
    }

    /// How long the turn may wait for the earliest timer (`None`: no timer).
    pub(super) fn next_timeout(&self) -> Option<Duration> {
        let deadline = self.timers.borrow().earliest()?;
        // mio rounds a sub-millisecond timeout up, never down to a spin.
        Some(deadline.saturating_duration_since(Instant::now()))
    }
}

/// A timer on the thread's reactor, as a future.
pub(crate) struct Sleep {
    deadline: Instant,
    /// The registration, once polled.
    key: Option<(Instant, u64)>,
    reactor: std::rc::Rc<Reactor>,
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
