//! [`Condvar`]: waiting for a condition under a [`Mutex`](super::Mutex), greenlet-aware.
//!
//! A waiter joins the condvar's queue *before* it unlocks the mutex, so a
//! notification sent after it released the lock cannot be missed. A
//! notified waiter is taken off the queue (FIFO: `notify_one` wakes the one
//! that waited longest); one that goes away after being notified (its
//! `wait_timeout` expired at that moment, its greenlet was cancelled) passes
//! the notification on to the next waiter.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{LockResult, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::mutex::MutexGuard;
use super::spin::{SpinGuard, SpinLock};
use super::waiters::{Key, Status, WaitList};

/// A condition variable for [`Mutex`](super::Mutex): `wait` unlocks the mutex, suspends
/// the calling greenlet until notified, and locks the mutex again. The API
/// is std's [`std::sync::Condvar`].
///
/// ```
/// use std::rc::Rc;
/// use greenhack::sync::{Condvar, Mutex};
///
/// let pair = Rc::new((Mutex::new(false), Condvar::new()));
/// greenhack::run(|| {
///     let p = pair.clone();
///     greenhack::spawn(move || {
///         *p.0.lock().unwrap() = true;
///         p.1.notify_one();
///     });
///     let (ready, cv) = &*pair;
///     let guard = cv.wait_while(ready.lock().unwrap(), |r| !*r).unwrap();
///     assert!(*guard);
/// });
/// ```
///
/// As with std's, a wait may end without a notification having been meant
/// for it (another waiter changed the condition first): check the condition
/// in a loop, or use [`wait_while`](Condvar::wait_while).
pub struct Condvar {
    waiters: SpinLock<WaitList<()>>,
}

/// Whether a timed wait on a [`Condvar`] returned because its time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitTimeoutResult(bool);

impl WaitTimeoutResult {
    /// True if the wait ended because the timeout elapsed.
    pub fn timed_out(&self) -> bool {
        self.0
    }
}

impl Condvar {
    /// Creates a condition variable with no waiters.
    pub const fn new() -> Condvar {
        Condvar {
            waiters: SpinLock::new(WaitList::new()),
        }
    }

    fn queue(&self) -> SpinGuard<'_, WaitList<()>> {
        self.waiters.lock()
    }

    /// Unlocks `guard`'s mutex, waits (suspending this greenlet) until
    /// notified, then locks the mutex again and returns its guard.
    ///
    /// # Errors
    ///
    /// If the mutex is poisoned when it is locked again: the guard inside a
    /// [`PoisonError`].
    pub fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> LockResult<MutexGuard<'a, T>> {
        let mutex = guard.mutex;
        let key = self.queue().push_back((), None);
        drop(guard);
        super::wait::wait(Notified {
            condvar: self,
            key: Some(key),
        });
        mutex.lock()
    }

    /// Waits while `condition` holds for the protected data: returns with
    /// the lock held once it returns `false`.
    ///
    /// # Errors
    ///
    /// As [`wait`](Condvar::wait).
    pub fn wait_while<'a, T, F>(
        &self,
        mut guard: MutexGuard<'a, T>,
        mut condition: F,
    ) -> LockResult<MutexGuard<'a, T>>
    where
        F: FnMut(&mut T) -> bool,
    {
        while condition(&mut *guard) {
            guard = self.wait(guard)?;
        }
        Ok(guard)
    }

    /// [`wait`](Condvar::wait) for at most `dur`; the result says whether
    /// the time ran out.
    ///
    /// ```
    /// use std::time::Duration;
    /// use greenhack::sync::{Condvar, Mutex};
    ///
    /// let (m, cv) = (Mutex::new(()), Condvar::new());
    /// let (_g, r) = cv.wait_timeout(m.lock().unwrap(), Duration::from_millis(5)).unwrap();
    /// assert!(r.timed_out());
    /// ```
    ///
    /// # Errors
    ///
    /// As [`wait`](Condvar::wait), with the timeout result alongside.
    pub fn wait_timeout<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        dur: Duration,
    ) -> LockResult<(MutexGuard<'a, T>, WaitTimeoutResult)> {
        let deadline = Instant::now().checked_add(dur);
        let mutex = guard.mutex;
        let key = self.queue().push_back((), None);
        drop(guard);
        let wait = Notified {
            condvar: self,
            key: Some(key),
        };
        let timed_out = match deadline {
            Some(d) => super::wait::wait_until(wait, d).is_none(),
            None => {
                super::wait::wait(wait);
                false
            }
        };
        let result = WaitTimeoutResult(timed_out);
        match mutex.lock() {
            Ok(g) => Ok((g, result)),
            Err(poisoned) => Err(PoisonError::new((poisoned.into_inner(), result))),
        }
    }

    /// [`wait_while`](Condvar::wait_while) for at most `dur`: returns once
    /// `condition` is false, or when the time runs out with it still true
    /// (then `timed_out()` is true).
    ///
    /// # Errors
    ///
    /// As [`wait_timeout`](Condvar::wait_timeout).
    pub fn wait_timeout_while<'a, T, F>(
        &self,
        mut guard: MutexGuard<'a, T>,
        dur: Duration,
        mut condition: F,
    ) -> LockResult<(MutexGuard<'a, T>, WaitTimeoutResult)>
    where
        F: FnMut(&mut T) -> bool,
    {
        let deadline = Instant::now().checked_add(dur);
        loop {
            if !condition(&mut *guard) {
                return Ok((guard, WaitTimeoutResult(false)));
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return Ok((guard, WaitTimeoutResult(true))),
                },
                None => dur,
            };
            guard = match self.wait_timeout(guard, left) {
                Ok((g, _)) => g,
                Err(poisoned) => {
                    let (g, r) = poisoned.into_inner();
                    return Err(PoisonError::new((g, r)));
                }
            };
        }
    }

    /// Wakes the waiter that has waited longest, if any.
    pub fn notify_one(&self) {
        let waker = self.queue().notify_front();
        if let Some(Some(w)) = waker {
            w.wake();
        }
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) {
        let wakers = self.queue().notify_all();
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// A waiter, queued before its mutex was unlocked.
struct Notified<'a> {
    condvar: &'a Condvar,
    key: Option<Key>,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let key = self.key.expect("polled after completion");
        let mut queue = self.condvar.queue();
        match queue.poll(key, cx.waker()) {
            Status::Queued => Poll::Pending,
            Status::Notified => {
                queue.remove(key);
                self.key = None;
                Poll::Ready(())
            }
        }
    }
}

impl Drop for Notified<'_> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let mut queue = self.condvar.queue();
        if queue.remove(key).0 == Status::Notified {
            // Notified, but leaving without acting on it: pass it on.
            let waker = queue.notify_front();
            drop(queue);
            if let Some(Some(w)) = waker {
                w.wake();
            }
        }
    }
}

impl Default for Condvar {
    fn default() -> Condvar {
        Condvar::new()
    }
}

impl fmt::Debug for Condvar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condvar").finish_non_exhaustive()
    }
}
