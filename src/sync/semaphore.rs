//! [`Semaphore`]: a count of permits, handed out in FIFO order.
//!
//! std has no semaphore; the names are tokio's (`acquire`, `try_acquire`,
//! `add_permits`, a RAII [`SemaphorePermit`]), the waits greenhack's. The
//! count and the waiter queue sit under one spin lock. Released
//! permits go to the first waiter as soon as there are enough for it; a
//! waiter asking for many blocks the ones behind it (no starvation of large
//! requests), and one that goes away gives back what it was handed and lets
//! the queue move on.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use super::spin::{SpinGuard, SpinLock};
use super::waiters::{Key, Status, WaitList};

/// A counting semaphore for greenlets: [`acquire`](Semaphore::acquire)
/// waits (suspending the greenlet) until a permit is free; the permit is
/// returned when the [`SemaphorePermit`] drops.
///
/// ```
/// use std::cell::Cell;
/// use std::rc::Rc;
/// use std::time::Duration;
/// use greenhack::sync::Semaphore;
///
/// // At most two greenlets in the section at once.
/// let sem = Rc::new(Semaphore::new(2));
/// let (inside, peak) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
/// greenhack::run(|| {
///     for _ in 0..5 {
///         let (sem, inside, peak) = (sem.clone(), inside.clone(), peak.clone());
///         greenhack::spawn(move || {
///             let _permit = sem.acquire();
///             inside.set(inside.get() + 1);
///             peak.set(peak.get().max(inside.get()));
///             greenhack::sleep(Duration::from_millis(2));
///             inside.set(inside.get() - 1);
///         });
///     }
/// });
/// assert_eq!(peak.get(), 2);
/// ```
pub struct Semaphore {
    state: SpinLock<State>,
}

struct State {
    permits: usize,
    /// Each waiter with the number of permits it asks for.
    waiters: WaitList<usize>,
}

/// Permits taken from a [`Semaphore`]; dropping it gives them back.
#[must_use = "dropping the permit releases it at once"]
pub struct SemaphorePermit<'a> {
    sem: &'a Semaphore,
    permits: usize,
}

/// [`Semaphore::try_acquire`] found too few permits free (or others
/// waiting for them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TryAcquireError(());

impl fmt::Display for TryAcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no permits available")
    }
}

impl std::error::Error for TryAcquireError {}

impl State {
    /// Hands permits to the waiters at the front while there are enough;
    /// returns their wakers.
    fn grant(&mut self) -> Vec<Waker> {
        let mut wakers = Vec::new();
        while let Some(&want) = self.waiters.front() {
            if want > self.permits {
                break;
            }
            self.permits -= want;
            if let Some(Some(w)) = self.waiters.notify_front() {
                wakers.push(w);
            }
        }
        wakers
    }

    /// Takes `n` permits if they are free and nobody waits before us.
    fn try_take(&mut self, n: usize) -> bool {
        if self.waiters.is_empty() && self.permits >= n {
            self.permits -= n;
            true
        } else {
            false
        }
    }
}

impl Semaphore {
    /// Creates a semaphore with `permits` permits.
    pub const fn new(permits: usize) -> Semaphore {
        Semaphore {
            state: SpinLock::new(State {
                permits,
                waiters: WaitList::new(),
            }),
        }
    }

    fn lock(&self) -> SpinGuard<'_, State> {
        self.state.lock()
    }

    /// The number of permits free now.
    pub fn available_permits(&self) -> usize {
        self.lock().permits
    }

    /// Adds `n` permits, waking waiters they satisfy.
    pub fn add_permits(&self, n: usize) {
        let mut st = self.lock();
        st.permits = st
            .permits
            .checked_add(n)
            .expect("greenhack::sync::Semaphore: permit count overflow");
        let wakers = st.grant();
        drop(st);
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Waits (suspending this greenlet) for one permit.
    pub fn acquire(&self) -> SemaphorePermit<'_> {
        self.acquire_many(1)
    }

    /// Waits for `n` permits, taken at once. Waiters are served in order:
    /// a large request holds back later small ones until it is served (so
    /// asking for more permits than will ever exist waits forever, and holds
    /// back everyone behind it).
    pub fn acquire_many(&self, n: u32) -> SemaphorePermit<'_> {
        let n = n as usize;
        if !self.lock().try_take(n) {
            super::wait::wait(Acquire {
                sem: self,
                want: n,
                key: None,
            });
        }
        SemaphorePermit {
            sem: self,
            permits: n,
        }
    }

    /// Takes one permit if one is free now; never waits.
    ///
    /// # Errors
    ///
    /// [`TryAcquireError`] if none is free, or others wait for permits.
    pub fn try_acquire(&self) -> Result<SemaphorePermit<'_>, TryAcquireError> {
        self.try_acquire_many(1)
    }

    /// Takes `n` permits if they are free now; never waits.
    ///
    /// # Errors
    ///
    /// [`TryAcquireError`] if too few are free, or others wait for permits.
    pub fn try_acquire_many(&self, n: u32) -> Result<SemaphorePermit<'_>, TryAcquireError> {
        let n = n as usize;
        if self.lock().try_take(n) {
            Ok(SemaphorePermit {
                sem: self,
                permits: n,
            })
        } else {
            Err(TryAcquireError(()))
        }
    }
}

/// A wait for `want` permits.
struct Acquire<'a> {
    sem: &'a Semaphore,
    want: usize,
    key: Option<Key>,
}

impl Future for Acquire<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.sem.lock();
        match self.key {
            None if st.try_take(self.want) => Poll::Ready(()),
            None => {
                self.key = Some(st.waiters.push_back(self.want, Some(cx.waker().clone())));
                Poll::Pending
            }
            Some(key) => match st.waiters.poll(key, cx.waker()) {
                Status::Queued => Poll::Pending,
                Status::Notified => {
                    st.waiters.remove(key);
                    self.key = None;
                    Poll::Ready(())
                }
            },
        }
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let mut st = self.sem.lock();
        if st.waiters.remove(key).0 == Status::Notified {
            // Handed permits we will not use: give them back.
            st.permits += self.want;
        }
        // Either way the queue's front may have changed.
        let wakers = st.grant();
        drop(st);
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl SemaphorePermit<'_> {
    /// The number of permits held.
    pub fn num_permits(&self) -> usize {
        self.permits
    }

    /// Keeps the permits out of the semaphore for good.
    pub fn forget(mut self) {
        self.permits = 0;
    }
}

impl Drop for SemaphorePermit<'_> {
    fn drop(&mut self) {
        if self.permits > 0 {
            self.sem.add_permits(self.permits);
        }
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("permits", &self.available_permits())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SemaphorePermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphorePermit")
            .field("permits", &self.permits)
            .finish()
    }
}
