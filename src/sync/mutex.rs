//! [`Mutex`]: mutual exclusion whose `lock` suspends the greenlet, not the
//! thread.
//!
//! # Implementation
//!
//! One atomic byte holds three bits: `LOCKED`; `QUEUED` (the waiter queue is
//! not empty; it implies `LOCKED`); and `QUEUE_LOCKED`, the spin lock of the
//! waiter queue ([`lock_queue`](super::lock_queue)). While `QUEUE_LOCKED` is
//! set nobody else changes the byte (every compare-and-swap expects it
//! clear), so its holder releases it with a plain store of the new state.
//! Uncontended, `lock` is one compare-and-swap `0 → LOCKED` and unlocking
//! one `LOCKED → 0`; neither touches the queue. Otherwise:
//!
//! * a locker that finds the lock held takes the queue's lock (one
//!   compare-and-swap), joins the back of the queue, and sets `QUEUED` as it
//!   releases the queue's lock; then it waits (see [`wait`](super::wait));
//! * an unlocker that finds `QUEUED` takes the queue's lock, hands the lock
//!   to the first waiter (`LOCKED` stays set) and wakes it. Once anyone
//!   waits, the lock passes in FIFO order and a newcomer cannot barge in: no
//!   waiter starves.
//! * the woken waiter sees the hand-off in its own queue slot, with one
//!   atomic load and no lock: the unlocker already took it off the queue.
//! * a waiter that goes away (its greenlet was cancelled and unwound)
//!   leaves the queue; if the lock had already been handed to it, it hands
//!   it on, so a hand-off is never lost.
//!
//! A contended hand-off thus costs three atomic read-modify-writes on the
//! state (the failing fast-path compare-and-swap of `lock`, the queueing,
//! the unlocker's taking of the queue's lock; `unlock` looks with a plain
//! load first, so it skips its fast path) and none by the woken waiter,
//! besides the waker's reference count (cloned when queueing, consumed by
//! the wake).

use std::cell::UnsafeCell;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{LockResult, PoisonError, TryLockError, TryLockResult};
use std::task::{Context, Poll, Waker};
use std::thread;

use super::lock_queue::{Queue, Ticket};
use super::spin::Backoff;

/// Someone holds the lock.
const LOCKED: u8 = 1;
/// The waiter queue is not empty (implies `LOCKED`).
const QUEUED: u8 = 2;
/// The waiter queue is being changed; nobody else changes the state.
const QUEUE_LOCKED: u8 = 4;

/// A mutual exclusion lock for greenlets: [`lock`](Mutex::lock) waits by
/// suspending the calling greenlet, so the holder may itself wait (sleep,
/// read a socket) while others queue, and the thread keeps running them.
///
/// The API is std's [`std::sync::Mutex`], with its poisoning: a guard
/// dropped while its thread panics marks the mutex poisoned, and later
/// `lock`s return the guard inside a [`PoisonError`]. A cancellation is not
/// a panic: a guard dropped because a [`timeout`](crate::timeout) expired,
/// or because its greenlet was cancelled, releases the lock without
/// poisoning it (as tokio's locks, which never poison), since that is an
/// expected way for the code inside to end. What it changed before its
/// wait stays changed.
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
    /// Guarded by `QUEUE_LOCKED`.
    queue: UnsafeCell<Queue>,
    data: UnsafeCell<T>,
}

// SAFETY: the mutex hands out `&mut T` to one holder at a time (the LOCKED
// bit, taken with Acquire and released with Release, or passed on through a
// waiter's slot, published with Release and seen with Acquire), and the
// queue is touched only under QUEUE_LOCKED (taken with Acquire, released
// with Release), so sharing it across threads needs only `T: Send`, as for
// std's Mutex.
unsafe impl<T: ?Sized + Send> Send for Mutex<T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Send> Sync for Mutex<T> {}

// As std's: poisoning tells later holders that a panic interrupted a
// critical section, so a `&Mutex` may cross `catch_unwind`.
impl<T: ?Sized> std::panic::UnwindSafe for Mutex<T> {}
impl<T: ?Sized> std::panic::RefUnwindSafe for Mutex<T> {}

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
            queue: UnsafeCell::new(Queue::new()),
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
        if !self.try_acquire() {
            self.lock_slow();
        }
        self.guard()
    }

    #[cold]
    fn lock_slow(&self) {
        super::wait::wait(Lock {
            mutex: self,
            ticket: None,
        });
    }

    /// Takes the lock if it is free.
    ///
    /// No plain load first, unlike `unlock`: it would spare a contended
    /// `lock` a failing compare-and-swap, but cost the uncontended
    /// lock-and-unlock 5 ns in 15, and the contended case measured no
    /// faster for it (within the noise of `benches/sync.rs`).
    #[inline]
    fn try_acquire(&self) -> bool {
        self.state
            .compare_exchange(0, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Locks the mutex if it is free now; never waits.
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`] if it is held (or waited for);
    /// [`TryLockError::Poisoned`] with the guard if it is poisoned.
    pub fn try_lock(&self) -> TryLockResult<MutexGuard<'_, T>> {
        if !self.try_acquire() {
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

    /// Releases the lock held by a guard. The plain load first: when
    /// someone waits, it goes to the hand-off without a compare-and-swap
    /// bound to fail (about 5 ns of the 1000-way case's 325, for 2.5 ns of
    /// the uncontended case's 15; `benches/sync.rs`).
    #[inline]
    fn unlock(&self) {
        if self.state.load(Ordering::Relaxed) != LOCKED
            || self
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
        let mut backoff = Backoff::new();
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s & QUEUE_LOCKED != 0 {
                backoff.snooze();
                s = self.state.load(Ordering::Relaxed);
                continue;
            }
            // Nobody waits (the last waiter may have left since `unlock`
            // looked): free the lock.
            let (new, success) = if s & QUEUED == 0 {
                (0, Ordering::Release)
            } else {
                (s | QUEUE_LOCKED, Ordering::Acquire)
            };
            match self
                .state
                .compare_exchange_weak(s, new, success, Ordering::Relaxed)
            {
                Ok(_) if new == 0 => return,
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        // SAFETY: we hold QUEUE_LOCKED.
        let queue = unsafe { &mut *self.queue.get() };
        // QUEUED: someone is queued. Its slot publishes the hand-off (with
        // Release: our critical section happens before its).
        let waker = queue.notify_front();
        let state = if queue.is_empty() {
            LOCKED
        } else {
            LOCKED | QUEUED
        };
        self.unlock_queue(state);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Takes the queue's lock, waiting while another holder has it. Returns
    /// the state it found (`QUEUE_LOCKED` clear), to give back to
    /// [`unlock_queue`](Self::unlock_queue), changed or not.
    fn lock_queue(&self) -> u8 {
        let mut backoff = Backoff::new();
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s & QUEUE_LOCKED != 0 {
                backoff.snooze();
                s = self.state.load(Ordering::Relaxed);
                continue;
            }
            match self.state.compare_exchange_weak(
                s,
                s | QUEUE_LOCKED,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return s,
                Err(now) => s = now,
            }
        }
    }

    /// Releases the queue's lock, leaving the mutex in `state`: nobody else
    /// changed the state while we held it, so a plain store does.
    fn unlock_queue(&self, state: u8) {
        debug_assert!(state & QUEUE_LOCKED == 0);
        self.state.store(state, Ordering::Release);
    }
}

/// A wait for the lock: in the queue from its first `Pending` poll until
/// the lock is handed to it, or until it is dropped.
struct Lock<'a, T: ?Sized> {
    mutex: &'a Mutex<T>,
    /// Set while queued (and once handed the lock, until it sees so).
    ticket: Option<Ticket>,
}

impl<T: ?Sized> Lock<'_, T> {
    /// Whether the lock was handed to this waiter.
    fn is_notified(&self, ticket: Ticket) -> bool {
        // SAFETY: the ticket is of the queue of `self.mutex`, which outlives
        // `self`.
        unsafe { ticket.is_notified() }
    }

    /// First poll: takes the lock if it is free, else queues. Out of line,
    /// so that the resume's check (`poll`) inlines into a small frame.
    #[inline(never)]
    fn acquire_or_queue(&mut self, waker: &Waker) -> Poll<()> {
        let mutex = self.mutex;
        // Cloned before taking the queue's lock: a foreign waker's clone
        // runs code we do not know.
        let waker = waker.clone();
        let mut backoff = Backoff::new();
        let mut s = mutex.state.load(Ordering::Relaxed);
        loop {
            let new = if s & QUEUE_LOCKED != 0 {
                backoff.snooze();
                s = mutex.state.load(Ordering::Relaxed);
                continue;
            } else if s & LOCKED == 0 {
                // Free (and so nobody queued): take it.
                s | LOCKED
            } else {
                s | QUEUE_LOCKED
            };
            match mutex
                .state
                .compare_exchange_weak(s, new, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) if new & QUEUE_LOCKED == 0 => return Poll::Ready(()),
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        // SAFETY: we hold QUEUE_LOCKED.
        let queue = unsafe { &mut *mutex.queue.get() };
        self.ticket = Some(queue.push_back(waker));
        mutex.unlock_queue(s | QUEUED);
        Poll::Pending
    }

    /// A later poll that found the lock not handed over yet (a spurious
    /// wake, or a poll by another task): keeps the waker up to date.
    #[cold]
    fn requeue(&mut self, ticket: Ticket, waker: &Waker) -> Poll<()> {
        let mutex = self.mutex;
        let waker = waker.clone();
        let s = mutex.lock_queue();
        // Handed over meanwhile: the hand-off happened under the queue's
        // lock, which we now hold.
        let (polled, unused) = if self.is_notified(ticket) {
            (Poll::Ready(()), Some(waker))
        } else {
            // SAFETY: we hold QUEUE_LOCKED.
            let queue = unsafe { &mut *mutex.queue.get() };
            (Poll::Pending, queue.set_waker(ticket, waker))
        };
        mutex.unlock_queue(s);
        drop(unused);
        if polled.is_ready() {
            self.ticket = None;
        }
        polled
    }
}

impl<T: ?Sized> Future for Lock<'_, T> {
    type Output = ();

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.ticket {
            None => self.acquire_or_queue(cx.waker()),
            Some(ticket) if self.is_notified(ticket) => {
                self.ticket = None;
                Poll::Ready(())
            }
            Some(ticket) => self.requeue(ticket, cx.waker()),
        }
    }
}

impl<T: ?Sized> Drop for Lock<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.leave(ticket);
        }
    }
}

impl<T: ?Sized> Lock<'_, T> {
    /// Leaves the queue (a cancelled wait), or passes on the lock if it
    /// was handed over already.
    #[cold]
    fn leave(&mut self, ticket: Ticket) {
        let mutex = self.mutex;
        if !self.is_notified(ticket) {
            let s = mutex.lock_queue();
            if !self.is_notified(ticket) {
                // SAFETY: we hold QUEUE_LOCKED.
                let queue = unsafe { &mut *mutex.queue.get() };
                let waker = queue.remove(ticket);
                let s = if queue.is_empty() { s & !QUEUED } else { s };
                mutex.unlock_queue(s);
                drop(waker);
                return;
            }
            mutex.unlock_queue(s);
        }
        // The lock was handed to us and we will not use it: pass it on.
        mutex.unlock();
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
        if !self.panicking && thread::panicking() && !crate::pair::unwinding_for_cancellation() {
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
