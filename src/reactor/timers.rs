//! Timers: deadlines ordered in a map, each with the waker to wake when it
//! passes. The turn fires every deadline at or before now; the earliest one
//! bounds how long the turn may wait.

use std::collections::BTreeMap;
use std::task::Waker;
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
        drop(timers);
        self.note_interest(waker);
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
