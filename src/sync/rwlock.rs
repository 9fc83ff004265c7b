//! [`RwLock`]: many readers or one writer, served in arrival order.
//!
//! The state (reader count, writer flag, waiter queue) sits under one
//! spin lock. Once anyone waits, newcomers queue behind them, so a
//! stream of readers cannot starve a writer. Releasing hands the lock on
//! from the front of the queue: one writer, or every reader up to the next
//! writer. A waiter that goes away gives back what it was handed and lets
//! the queue move on.

use std::cell::UnsafeCell;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LockResult, PoisonError, TryLockError, TryLockResult};
use std::task::{Context, Poll, Waker};
use std::thread;

use super::spin::{SpinGuard, SpinLock};
use super::waiters::{Key, Status, WaitList};

/// A reader-writer lock for greenlets, with std's API and poisoning
/// ([`std::sync::RwLock`]): `read` and `write` suspend the calling greenlet
/// while they wait. Fair: readers and writers are served in arrival order.
/// As for [`Mutex`](super::Mutex), a write guard dropped by a cancellation
/// (an expired [`timeout`](crate::timeout), a cancelled greenlet) does not
/// poison; one dropped by a panic does.
///
/// ```
/// use std::rc::Rc;
/// use std::time::Duration;
/// use greenhack::sync::RwLock;
///
/// let config = Rc::new(RwLock::new(String::from("v1")));
/// greenhack::run(|| {
///     let c = config.clone();
///     greenhack::spawn(move || {
///         let r = c.read().unwrap(); // readers share the lock
///         greenhack::sleep(Duration::from_millis(5));
///         assert_eq!(*r, "v1");
///     });
///     greenhack::yield_now();
///     *config.write().unwrap() = String::from("v2"); // waits for the reader
/// });
/// assert_eq!(*config.read().unwrap(), "v2");
/// ```
pub struct RwLock<T: ?Sized> {
    poisoned: AtomicBool,
    state: SpinLock<State>,
    data: UnsafeCell<T>,
}

// SAFETY: readers on several threads share `&T` (hence `T: Sync`), a writer
// gets `&mut T` (hence `T: Send`); `state` grants one writer or only
// readers at a time, as std's RwLock.
unsafe impl<T: ?Sized + Send> Send for RwLock<T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Send + Sync> Sync for RwLock<T> {}

// As std's: poisoning tells later holders that a panic interrupted a
// writer, so a `&RwLock` may cross `catch_unwind`.
impl<T: ?Sized> std::panic::UnwindSafe for RwLock<T> {}
impl<T: ?Sized> std::panic::RefUnwindSafe for RwLock<T> {}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

struct State {
    readers: usize,
    writer: bool,
    waiters: WaitList<Kind>,
}

impl State {
    /// Takes the lock for `kind` if it is free for it and nobody waits.
    fn try_take(&mut self, kind: Kind) -> bool {
        if !self.waiters.is_empty() || self.writer {
            return false;
        }
        match kind {
            Kind::Read => self.readers += 1,
            Kind::Write if self.readers == 0 => self.writer = true,
            Kind::Write => return false,
        }
        true
    }

    /// Hands the lock to the front of the queue: one writer, or the readers
    /// before the next writer. Returns their wakers.
    fn grant(&mut self) -> Vec<Waker> {
        let mut wakers = Vec::new();
        while let Some(&kind) = self.waiters.front() {
            match kind {
                Kind::Read if !self.writer => self.readers += 1,
                Kind::Write if !self.writer && self.readers == 0 => self.writer = true,
                _ => break,
            }
            if let Some(Some(w)) = self.waiters.notify_front() {
                wakers.push(w);
            }
            if kind == Kind::Write {
                break;
            }
        }
        wakers
    }

    fn release(&mut self, kind: Kind) -> Vec<Waker> {
        match kind {
            Kind::Read => self.readers -= 1,
            Kind::Write => self.writer = false,
        }
        self.grant()
    }
}

/// Shared access to an [`RwLock`]'s data; released when dropped. `!Send`.
#[must_use = "if unused the RwLock will immediately unlock"]
pub struct RwLockReadGuard<'a, T: ?Sized + 'a> {
    lock: &'a RwLock<T>,
    _not_send: PhantomData<*const ()>,
}

/// Exclusive access to an [`RwLock`]'s data; released when dropped.
/// `!Send`.
#[must_use = "if unused the RwLock will immediately unlock"]
pub struct RwLockWriteGuard<'a, T: ?Sized + 'a> {
    lock: &'a RwLock<T>,
    panicking: bool,
    _not_send: PhantomData<*const ()>,
}

// SAFETY: a `&guard` gives only `&T`.
unsafe impl<T: ?Sized + Sync> Sync for RwLockReadGuard<'_, T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Sync> Sync for RwLockWriteGuard<'_, T> {}

impl<T> RwLock<T> {
    /// Creates an unlocked lock holding `value`.
    pub const fn new(value: T) -> RwLock<T> {
        RwLock {
            poisoned: AtomicBool::new(false),
            state: SpinLock::new(State {
                readers: 0,
                writer: false,
                waiters: WaitList::new(),
            }),
            data: UnsafeCell::new(value),
        }
    }

    /// Consumes the lock and returns the data.
    ///
    /// # Errors
    ///
    /// If it is poisoned, the data inside a [`PoisonError`].
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

impl<T: ?Sized> RwLock<T> {
    fn lock_state(&self) -> SpinGuard<'_, State> {
        self.state.lock()
    }

    fn acquire(&self, kind: Kind) {
        if !self.lock_state().try_take(kind) {
            super::wait::wait(Acquire {
                lock: self,
                kind,
                key: None,
            });
        }
    }

    fn poison<G>(&self, guard: G) -> LockResult<G> {
        if self.poisoned.load(Ordering::Relaxed) {
            Err(PoisonError::new(guard))
        } else {
            Ok(guard)
        }
    }

    fn read_guard(&self) -> RwLockReadGuard<'_, T> {
        RwLockReadGuard {
            lock: self,
            _not_send: PhantomData,
        }
    }

    fn write_guard(&self) -> RwLockWriteGuard<'_, T> {
        RwLockWriteGuard {
            lock: self,
            panicking: thread::panicking(),
            _not_send: PhantomData,
        }
    }

    /// Locks for shared reading, waiting (suspending this greenlet) while a
    /// writer holds the lock or anyone waits before us.
    ///
    /// # Errors
    ///
    /// If poisoned (a writer panicked): the guard inside a [`PoisonError`].
    pub fn read(&self) -> LockResult<RwLockReadGuard<'_, T>> {
        self.acquire(Kind::Read);
        self.poison(self.read_guard())
    }

    /// Locks for exclusive writing, waiting until every earlier holder and
    /// waiter is done.
    ///
    /// # Errors
    ///
    /// If poisoned: the guard inside a [`PoisonError`].
    pub fn write(&self) -> LockResult<RwLockWriteGuard<'_, T>> {
        self.acquire(Kind::Write);
        self.poison(self.write_guard())
    }

    /// Locks for reading if that is possible now; never waits.
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`] or [`TryLockError::Poisoned`].
    pub fn try_read(&self) -> TryLockResult<RwLockReadGuard<'_, T>> {
        if !self.lock_state().try_take(Kind::Read) {
            return Err(TryLockError::WouldBlock);
        }
        Ok(self.poison(self.read_guard())?)
    }

    /// Locks for writing if that is possible now; never waits.
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`] or [`TryLockError::Poisoned`].
    pub fn try_write(&self) -> TryLockResult<RwLockWriteGuard<'_, T>> {
        if !self.lock_state().try_take(Kind::Write) {
            return Err(TryLockError::WouldBlock);
        }
        Ok(self.poison(self.write_guard())?)
    }

    /// True if a writer panicked while holding the lock.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }

    /// Clears the poisoned state.
    pub fn clear_poison(&self) {
        self.poisoned.store(false, Ordering::Relaxed);
    }

    /// A mutable reference to the data; the borrow proves exclusivity.
    ///
    /// # Errors
    ///
    /// If poisoned, the reference inside a [`PoisonError`].
    pub fn get_mut(&mut self) -> LockResult<&mut T> {
        let poisoned = self.is_poisoned();
        let data = self.data.get_mut();
        if poisoned {
            Err(PoisonError::new(data))
        } else {
            Ok(data)
        }
    }

    fn release(&self, kind: Kind) {
        let wakers = self.lock_state().release(kind);
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// A wait for the lock, in `kind`.
struct Acquire<'a, T: ?Sized> {
    lock: &'a RwLock<T>,
    kind: Kind,
    key: Option<Key>,
}

impl<T: ?Sized> Future for Acquire<'_, T> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.lock.lock_state();
        match self.key {
            None if st.try_take(self.kind) => Poll::Ready(()),
            None => {
                self.key = Some(st.waiters.push_back(self.kind, Some(cx.waker().clone())));
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

impl<T: ?Sized> Drop for Acquire<'_, T> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let mut st = self.lock.lock_state();
        let wakers = match st.waiters.remove(key).0 {
            // Handed the lock: release it.
            Status::Notified => st.release(self.kind),
            // Maybe we were the writer holding readers back.
            Status::Queued => st.grant(),
        };
        drop(st);
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl<T: ?Sized> Deref for RwLockReadGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: a read guard exists only while the lock is held for
        // reading: no writer has `&mut T`.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for RwLockReadGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.release(Kind::Read);
    }
}

impl<T: ?Sized> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: a write guard exists only while the lock is held for
        // writing, by it alone.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> DerefMut for RwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this reference unique.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for RwLockWriteGuard<'_, T> {
    fn drop(&mut self) {
        if !self.panicking && thread::panicking() && !crate::pair::unwinding_for_cancellation() {
            self.lock.poisoned.store(true, Ordering::Relaxed);
        }
        self.lock.release(Kind::Write);
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLockReadGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLockWriteGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RwLock");
        match self.try_read() {
            Ok(guard) => d.field("data", &&*guard),
            Err(TryLockError::Poisoned(err)) => d.field("data", &&**err.get_ref()),
            Err(TryLockError::WouldBlock) => d.field("data", &format_args!("<locked>")),
        };
        d.field("poisoned", &self.is_poisoned());
        d.finish_non_exhaustive()
    }
}

impl<T: Default> Default for RwLock<T> {
    fn default() -> RwLock<T> {
        RwLock::new(T::default())
    }
}

impl<T> From<T> for RwLock<T> {
    fn from(value: T) -> RwLock<T> {
        RwLock::new(value)
    }
}
