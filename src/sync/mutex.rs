//! [`Mutex`]: mutual exclusion whose `lock` suspends the greenlet, not the
//! thread.
//!
//! # Implementation
//!
//! One atomic byte holds two bits: `LOCKED`, and `QUEUED` (the waiter queue
//! is not empty; it implies `LOCKED`). Uncontended, `lock` is one
//! compare-and-swap `0 → LOCKED` and unlocking one `LOCKED → 0`; neither
//! touches the queue. Otherwise both go through the queue, under its
//! spin lock ([`spin`](super::spin)):
//!
//! * a locker that finds the lock held sets `QUEUED`, joins the back of the
//!   queue and waits (see [`wait`](super::wait));
//! * an unlocker that finds `QUEUED` hands the lock to the first waiter
//!   (`LOCKED` stays set) and wakes it. Once anyone waits, the lock passes
//!   in FIFO order and a newcomer cannot barge in: no waiter starves.
//! * a waiter that goes away (its wait timed out, its greenlet was
//!   cancelled and unwound) leaves the queue; if the lock had already been
//!   handed to it, it hands it on, so a hand-off is never lost.

use std::cell::UnsafeCell;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{LockResult, PoisonError, TryLockError, TryLockResult};
use std::task::{Context, Poll};
use std::thread;

use super::spin::SpinLock;
use super::waiters::{Key, Status, WaitList};

const LOCKED: u8 = 1;
const QUEUED: u8 = 2;

/// A mutual exclusion lock for greenlets: [`lock`](Mutex::lock) waits by
/// suspending the calling greenlet, so the holder may itself wait (sleep,
/// read a socket) while others queue, and the thread keeps running them.
///
/// The API is std's [`std::sync::Mutex`], with its poisoning: a guard
/// dropped while its thread panics marks the mutex poisoned, and later
/// `lock`s return the guard inside a [`PoisonError`].
///
/// ```
/// use std::rc::Rc;
/// use std::time::Duration;
/// use greenhack::sync::Mutex;
///
/// let m = Rc::new(Mutex::new(Vec::new()));
/// greenhack::run(|| {
///     for i in 0..2 {
///         let m = m.clone();
///         greenhack::spawn(move || {
///             let mut v = m.lock().unwrap();
///             v.push(i);
///             // Held across a wait: the other greenlet queues meanwhile.
///             greenhack::sleep(Duration::from_millis(5));
///             v.push(i);
///         });
///     }
/// });
/// assert_eq!(*m.lock().unwrap(), [0, 0, 1, 1]);
/// ```
///
/// # Fairness
///
/// Once a greenlet waits, unlocking hands the lock directly to the first
/// waiter (FIFO), so no waiter starves; only an uncontended `lock` takes it
/// without queueing.
///
/// # Where it waits
///
/// Inside a greenlet, only that greenlet waits; on a plain thread,
/// greenhack's loop runs on it meanwhile; outside any greenlet on a tokio
/// worker, the thread blocks, as with std's mutex. A `Mutex` is `Send` and
/// `Sync` for `T: Send`, so greenlets on different threads' loops may share
/// one (through an `Arc`).
pub struct Mutex<T: ?Sized> {
    state: AtomicU8,
    poisoned: AtomicBool,
    waiters: SpinLock<WaitList<()>>,
    data: UnsafeCell<T>,
}

// SAFETY: the mutex hands out `&mut T` to one holder at a time (the LOCKED
// bit, taken with Acquire and released with Release, or passed on under the
// queue's lock), so sharing it across threads needs only `T: Send`, as for
// std's Mutex.
unsafe impl<T: ?Sized + Send> Send for Mutex<T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Send> Sync for Mutex<T> {}

/// Holds a [`Mutex`] locked; unlocks it when dropped. Dereferences to the
/// protected data.
///
/// `!Send`, like std's guard: the greenlet that locked unlocks.
///
/// ```compile_fail
/// fn require_send<T: Send>(_: T) {}
/// let m = greenhack::sync::Mutex::new(0);
/// require_send(m.lock().unwrap());
/// ```
#[must_use = "if unused the Mutex will immediately unlock"]
pub struct MutexGuard<'a, T: ?Sized + 'a> {
    pub(super) mutex: &'a Mutex<T>,
    /// Whether the thread was panicking when the lock was taken (a guard
    /// dropped by that same panic does not poison).
    panicking: bool,
    _not_send: PhantomData<*const ()>,
}

// SAFETY: a `&MutexGuard` only gives `&T`.
unsafe impl<T: ?Sized + Sync> Sync for MutexGuard<'_, T> {}

impl<T> Mutex<T> {
    /// Creates an unlocked mutex holding `value`.
    ///
    /// ```
    /// static COUNT: greenhack::sync::Mutex<u32> = greenhack::sync::Mutex::new(0);
    /// *COUNT.lock().unwrap() += 1;
    /// ```
    pub const fn new(value: T) -> Mutex<T> {
        Mutex {
            state: AtomicU8::new(0),
            poisoned: AtomicBool::new(false),
            waiters: SpinLock::new(WaitList::new()),
            data: UnsafeCell::new(value),
        }
    }

    /// Consumes the mutex and returns the data.
    ///
    /// # Errors
    ///
    /// If the mutex is poisoned, the data inside a [`PoisonError`].
    pub fn into_inner(self) -> LockResult<T> {
        let poisoned = self.poisoned.load(Ordering::Relaxed);
        let data = self.data.into_inner();
        if poisoned {
            Err(PoisonError::new(data))
        } else {
            Ok(data)
        }
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Locks the mutex, waiting (suspending this greenlet) until it is free.
    ///
    /// # Errors
    ///
    /// If the mutex is poisoned: the guard, inside a [`PoisonError`]; the
    /// lock is held either way.
    ///
    /// # Panics
    ///
    /// Locking a mutex the same greenlet already holds never returns (it
    /// waits for itself), as with std's.
    #[inline]
    pub fn lock(&self) -> LockResult<MutexGuard<'_, T>> {
        if self
            .state
            .compare_exchange(0, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_slow();
        }
        self.guard()
    }

    #[cold]
    fn lock_slow(&self) {
        super::wait::wait(Lock {
            mutex: self,
            key: None,
        });
    }

    /// Locks the mutex if it is free now; never waits.
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`] if it is held (or waited for);
    /// [`TryLockError::Poisoned`] with the guard if it is poisoned.
    pub fn try_lock(&self) -> TryLockResult<MutexGuard<'_, T>> {
        if self
            .state
            .compare_exchange(0, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(TryLockError::WouldBlock);
        }
        Ok(self.guard()?)
    }

    /// The guard for a lock just taken, poisoned or not.
    fn guard(&self) -> LockResult<MutexGuard<'_, T>> {
        let guard = MutexGuard {
            mutex: self,
            panicking: thread::panicking(),
            _not_send: PhantomData,
        };
        if self.poisoned.load(Ordering::Relaxed) {
            Err(PoisonError::new(guard))
        } else {
            Ok(guard)
        }
    }

    /// True if a holder panicked (see [`Mutex`]).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }

    /// Clears the poisoned state, after the data has been put right.
    pub fn clear_poison(&self) {
        self.poisoned.store(false, Ordering::Relaxed);
    }

    /// A mutable reference to the data: no locking is needed, the borrow
    /// proves exclusivity.
    ///
    /// # Errors
    ///
    /// If the mutex is poisoned, the reference inside a [`PoisonError`].
    pub fn get_mut(&mut self) -> LockResult<&mut T> {
        let poisoned = self.is_poisoned();
        let data = self.data.get_mut();
        if poisoned {
            Err(PoisonError::new(data))
        } else {
            Ok(data)
        }
    }

    /// Releases the lock held by a guard.
    #[inline]
    fn unlock(&self) {
        if self
            .state
            .compare_exchange(LOCKED, 0, Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            self.unlock_slow();
        }
    }

    /// Hands the lock to the first waiter, or frees it if none is left.
    #[cold]
    fn unlock_slow(&self) {
        let mut waiters = self.waiters.lock();
        match waiters.notify_front() {
            Some(waker) => {
                if waiters.is_empty() {
                    self.state.store(LOCKED, Ordering::Relaxed);
                }
                drop(waiters);
                if let Some(w) = waker {
                    w.wake();
                }
            }
            // The last waiter left after we saw QUEUED.
            None => self.state.store(0, Ordering::Release),
        }
    }
}

/// A wait for the lock: in the queue from its first `Pending` poll until
/// the lock is handed to it, or until it is dropped.
struct Lock<'a, T: ?Sized> {
    mutex: &'a Mutex<T>,
    key: Option<Key>,
}

impl<T: ?Sized> Future for Lock<'_, T> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mutex = self.mutex;
        let mut waiters = mutex.waiters.lock();
        if let Some(key) = self.key {
            return match waiters.poll(key, cx.waker()) {
                Status::Queued => Poll::Pending,
                Status::Notified => {
                    waiters.remove(key);
                    self.key = None;
                    Poll::Ready(())
                }
            };
        }
        // First poll: take the lock if it is free, else queue. QUEUED only
        // changes under the queue's lock, which we hold; LOCKED may be
        // cleared by an uncontended unlock at any time, hence the loop.
        let mut s = mutex.state.load(Ordering::Relaxed);
        loop {
            if s & LOCKED == 0 {
                match mutex.state.compare_exchange_weak(
                    s,
                    s | LOCKED,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Poll::Ready(()),
                    Err(now) => s = now,
                }
            } else if s & QUEUED != 0 {
                break;
            } else {
                match mutex.state.compare_exchange_weak(
                    s,
                    s | QUEUED,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(now) => s = now,
                }
            }
        }
        self.key = Some(waiters.push_back((), Some(cx.waker().clone())));
        Poll::Pending
    }
}

impl<T: ?Sized> Drop for Lock<'_, T> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let mut waiters = self.mutex.waiters.lock();
        match waiters.remove(key).0 {
            Status::Queued => {
                if waiters.is_empty() {
                    self.mutex.state.fetch_and(!QUEUED, Ordering::Relaxed);
                }
            }
            Status::Notified => {
                // The lock was handed to us and we will not use it: pass it on.
                drop(waiters);
                self.mutex.unlock_slow();
            }
        }
    }
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock: no other reference to the data
        // exists while it lives.
        unsafe { &*self.mutex.data.get() }
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this reference unique.
        unsafe { &mut *self.mutex.data.get() }
    }
}

impl<T: ?Sized> Drop for MutexGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if !self.panicking && thread::panicking() {
            self.mutex.poisoned.store(true, Ordering::Relaxed);
        }
        self.mutex.unlock();
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Display> fmt::Display for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Mutex");
        match self.try_lock() {
            Ok(guard) => d.field("data", &&*guard),
            Err(TryLockError::Poisoned(err)) => d.field("data", &&**err.get_ref()),
            Err(TryLockError::WouldBlock) => d.field("data", &format_args!("<locked>")),
        };
        d.field("poisoned", &self.is_poisoned());
        d.finish_non_exhaustive()
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Mutex<T> {
        Mutex::new(T::default())
    }
}

impl<T> From<T> for Mutex<T> {
    fn from(value: T) -> Mutex<T> {
        Mutex::new(value)
    }
}
