//! The lock that guards each primitive's internal state: a spin lock.
//!
//! Every critical section in [`sync`](super) is a few dozen instructions
//! over a waiter queue and a counter or buffer: it never waits, never wakes
//! (wakers are woken after unlocking), never drops a user's value (those are
//! dropped after unlocking too), and allocates only when a queue grows. For
//! sections that short, std's futex mutex costs two atomic read-modify-write
//! operations per lock-and-unlock (the unlock swaps, to learn whether to
//! wake a sleeper), measured as the largest single cost of a channel round
//! trip between two greenlets (`benches/sync.rs`, ping-pong). A spin lock
//! costs one: unlocking is a plain release store. crossbeam-channel guards
//! its waker lists and zero-capacity channel the same way.
//!
//! A contended `lock` spins on a plain load (which stays in its own cache
//! until the holder's store) and, after a few rounds, yields the thread, so
//! that a holder preempted by the kernel gets the CPU back. Greenlets never
//! switch while holding it (nothing inside waits), so greenlets of one
//! thread cannot deadlock on it.

use std::cell::UnsafeCell;
use std::hint;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

/// Spins before yielding the thread, on contention.
const SPINS_BEFORE_YIELD: u32 = 64;

pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock gives `&mut T` to one holder at a time (the `locked`
// flag, taken with Acquire and released with Release), so sharing it needs
// only `T: Send`, as for std's Mutex.
unsafe impl<T: Send> Sync for SpinLock<T> {}

// A critical section runs none of a user's code (see the module docs), so an
// unwind never leaves the state half-changed: the primitives built on it are
// unwind-safe, as std's `Mutex`, `Condvar` and channels are.
impl<T> std::panic::UnwindSafe for SpinLock<T> {}
impl<T> std::panic::RefUnwindSafe for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub(crate) const fn new(value: T) -> SpinLock<T> {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        if self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        SpinGuard { lock: self }
    }

    #[cold]
    fn lock_contended(&self) {
        let mut backoff = Backoff::new();
        loop {
            while self.locked.load(Ordering::Relaxed) {
                backoff.snooze();
            }
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }
}

/// How a thread waits for a spin lock held by another: a few rounds of
/// [`hint::spin_loop`], then [`thread::yield_now`] each round, so that a
/// holder preempted by the kernel gets the CPU back.
pub(crate) struct Backoff {
    spins: u32,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff { spins: 0 }
    }

    /// Waits a little before the caller looks at the lock again.
    pub(crate) fn snooze(&mut self) {
        if self.spins < SPINS_BEFORE_YIELD {
            self.spins += 1;
            hint::spin_loop();
        } else {
            thread::yield_now();
        }
    }
}

/// Holds a [`SpinLock`]; unlocks on drop (also during a panic).
pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock: no other reference exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes it unique.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn threads_increment_exactly() {
        let lock = Arc::new(SpinLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = lock.clone();
                thread::spawn(move || {
                    for _ in 0..10_000 {
                        *lock.lock() += 1;
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(*lock.lock(), 40_000);
    }
}
