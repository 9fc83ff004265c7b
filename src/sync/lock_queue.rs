//! The waiter queue of a [`Mutex`](super::Mutex): a FIFO whose slots keep
//! one heap address for the queue's whole life, so that a waiter learns it
//! was handed the lock from one atomic load of its own slot, without taking
//! the queue's lock.
//!
//! The generic [`WaitList`](super::waiters::WaitList) keeps its slots in a
//! `Vec` that may reallocate, so a woken waiter must lock the list to read
//! its status and free its slot: on the mutex's contended hand-off (unlock,
//! wake, the woken greenlet resumes) a compare-and-swap, and a cache line
//! the unlocker had just written. Here the notifier frees the slot itself
//! and the woken waiter only loads its slot's generation.
//!
//! # Slots
//!
//! A slot is allocated once (`Box`) when the queue first needs it and is
//! reused through a free list until the queue drops: a [`Ticket`] (the
//! slot's address and the generation it had when the waiter was queued)
//! stays dereferenceable for as long as the queue lives. Notifying a waiter
//! takes its waker, moves its slot to the free list and then bumps the
//! slot's generation (`Release`): a waiter whose slot's generation differs
//! from its ticket's has been notified. A slot's generation changes at most
//! once while its ticket is live: after the bump the waiter holds what it
//! was handed (the lock), so nobody else can notify anyone until it has
//! seen the news. A waiter that leaves (its wait was cancelled) frees its
//! own slot without a bump.
//!
//! Slots live on the heap, not in the waiting future: a greenlet's stack
//! may be sliced out (copied away, its addresses reused) while it is
//! suspended, so nothing may write into a suspended greenlet's stack.
//!
//! Apart from the generation, a slot and the links are touched only by the
//! holder of the queue's lock (the mutex's `QUEUE_LOCKED` bit), which the
//! `&mut Queue` of each method stands for.

use std::cell::UnsafeCell;
use std::panic::UnwindSafe;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::Waker;

/// One waiter's place; see the module doc.
struct Slot {
    /// Bumped when the waiter is notified; read by the waiter without the
    /// queue's lock.
    generation: AtomicU32,
    /// The FIFO links while queued; `next` links the free list while free.
    prev: UnsafeCell<*mut Slot>,
    next: UnsafeCell<*mut Slot>,
    /// The waiter's waker while queued.
    waker: UnsafeCell<Option<Waker>>,
}

/// A queued waiter's claim on its slot: whether it was notified is one
/// atomic load ([`Ticket::is_notified`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    slot: NonNull<Slot>,
    generation: u32,
}

impl Ticket {
    /// True once the waiter has been notified (handed the lock). `Acquire`:
    /// what the notifier did before notifying is visible after `true`.
    ///
    /// # Safety
    ///
    /// The queue that issued the ticket has not been dropped.
    #[inline]
    pub(crate) unsafe fn is_notified(self) -> bool {
        // SAFETY: slots are freed only when the queue drops (the caller's
        // promise); `generation` is atomic, so reading it while the lock
        // holder writes the slot's other fields is no race.
        let slot = unsafe { self.slot.as_ref() };
        slot.generation.load(Ordering::Acquire) != self.generation
    }
}

/// The FIFO of waiters for a mutex, and the free slots.
pub(crate) struct Queue {
    head: *mut Slot,
    tail: *mut Slot,
    /// Free slots, linked through `next`.
    free: *mut Slot,
}

// A panic never leaves a half-done change behind: no method panics between
// its first and last write (allocation failure aborts).
impl UnwindSafe for Queue {}

impl Queue {
    pub(crate) const fn new() -> Queue {
        Queue {
            head: ptr::null_mut(),
            tail: ptr::null_mut(),
            free: ptr::null_mut(),
        }
    }

    /// True when nobody is queued.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// Queues a waiter at the back.
    pub(crate) fn push_back(&mut self, waker: Waker) -> Ticket {
        let slot = match self.free {
            f if f.is_null() => Box::into_raw(Box::new(Slot {
                generation: AtomicU32::new(0),
                prev: UnsafeCell::new(ptr::null_mut()),
                next: UnsafeCell::new(ptr::null_mut()),
                waker: UnsafeCell::new(None),
            })),
            f => {
                // SAFETY: a slot of ours (see `Slot`'s invariants above);
                // `&mut self` is the queue's lock.
                self.free = unsafe { *(*f).next.get() };
                f
            }
        };
        // SAFETY: `slot` is ours and free, so no other reference to its
        // fields exists (its old ticket, if any, reads only `generation`);
        // the tail, if any, is a queued slot of ours.
        unsafe {
            *(*slot).prev.get() = self.tail;
            *(*slot).next.get() = ptr::null_mut();
            *(*slot).waker.get() = Some(waker);
            match self.tail {
                t if t.is_null() => self.head = slot,
                t => *(*t).next.get() = slot,
            }
        }
        self.tail = slot;
        Ticket {
            // SAFETY: from `Box::into_raw` or the free list: not null.
            slot: unsafe { NonNull::new_unchecked(slot) },
            // SAFETY: `slot` is ours; `generation` is atomic.
            generation: unsafe { &*slot }.generation.load(Ordering::Relaxed),
        }
    }

    /// [`Ticket::is_notified`] for a ticket this queue issued.
    fn is_notified(&self, ticket: Ticket) -> bool {
        // SAFETY: the ticket is of this queue, which `&self` shows alive.
        unsafe { ticket.is_notified() }
    }

    /// Takes the first waiter off the queue, frees its slot and marks it
    /// notified; returns its waker, to wake once the queue's lock is
    /// released. `None` if nobody is queued.
    pub(crate) fn notify_front(&mut self) -> Option<Waker> {
        let slot = self.head;
        if slot.is_null() {
            return None;
        }
        // SAFETY: `slot` is the queued head, ours; `&mut self` is the lock.
        let waker = unsafe {
            self.unlink(slot);
            let waker = (*(*slot).waker.get()).take();
            *(*slot).next.get() = self.free;
            waker
        };
        self.free = slot;
        // Last: once the waiter sees the bump it may go on (on another
        // thread) without waiting for us; we no longer touch its slot's
        // fields after this point, and what we did before is visible to it.
        // SAFETY: `slot` is ours; `generation` is atomic.
        let generation = &unsafe { &*slot }.generation;
        generation.store(
            generation.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Release,
        );
        waker
    }

    /// Replaces a queued waiter's waker with `waker` unless both wake the
    /// same task; returns the waker to drop (after releasing the lock).
    ///
    /// The ticket must be of this queue and not notified.
    pub(crate) fn set_waker(&mut self, ticket: Ticket, waker: Waker) -> Option<Waker> {
        debug_assert!(
            !self.is_notified(ticket),
            "greenhack::sync: notified waiter"
        );
        // SAFETY: a queued slot of ours; `&mut self` is the lock.
        let stored = unsafe { &mut *(*ticket.slot.as_ptr()).waker.get() };
        match stored {
            Some(w) if w.will_wake(&waker) => Some(waker),
            _ => stored.replace(waker),
        }
    }

    /// Takes a queued (not notified) waiter off the queue and frees its
    /// slot; returns its waker, to drop after releasing the lock.
    pub(crate) fn remove(&mut self, ticket: Ticket) -> Option<Waker> {
        debug_assert!(
            !self.is_notified(ticket),
            "greenhack::sync: notified waiter"
        );
        let slot = ticket.slot.as_ptr();
        // SAFETY: a queued slot of ours; `&mut self` is the lock.
        let waker = unsafe {
            self.unlink(slot);
            *(*slot).next.get() = self.free;
            (*(*slot).waker.get()).take()
        };
        self.free = slot;
        waker
    }

    /// Unlinks a queued slot from the FIFO.
    ///
    /// # Safety
    ///
    /// `slot` is queued in this queue, and the caller holds the lock.
    unsafe fn unlink(&mut self, slot: *mut Slot) {
        // SAFETY: the caller's promise; queued neighbours are ours too.
        unsafe {
            let (prev, next) = (*(*slot).prev.get(), *(*slot).next.get());
            match prev {
                p if p.is_null() => self.head = next,
                p => *(*p).next.get() = next,
            }
            match next {
                n if n.is_null() => self.tail = prev,
                n => *(*n).prev.get() = prev,
            }
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // Queued waiters borrow the mutex, so normally only free slots are
        // left; a waiter leaked with its greenlet (never resumed, never
        // unwound) leaves its slot queued: free both lists.
        for mut slot in [self.head, self.free] {
            while !slot.is_null() {
                // SAFETY: every slot came from `Box::into_raw` and is on
                // exactly one of the two lists; `&mut self` is exclusive.
                let boxed = unsafe { Box::from_raw(slot) };
                slot = boxed.next.into_inner();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    fn woken(c: &Count) -> usize {
        c.0.load(Ordering::Relaxed)
    }

    #[test]
    fn fifo_order_notification_and_removal() {
        let mut q = Queue::new();
        let counts: Vec<_> = (0..4).map(|_| counter()).collect();
        let t: Vec<Ticket> = counts.iter().map(|(_, w)| q.push_back(w.clone())).collect();
        // The second leaves from the middle.
        assert!(q.remove(t[1]).is_some());
        q.notify_front().unwrap().wake();
        assert!(q.is_notified(t[0]));
        assert!(!q.is_notified(t[2]));
        assert_eq!(woken(&counts[0].0), 1);
        // The freed slots are reused; the order stays 2, 3, then the new one.
        let (last, w) = counter();
        let t4 = q.push_back(w);
        q.notify_front().unwrap().wake();
        assert!(q.is_notified(t[2]) && !q.is_notified(t[3]));
        q.notify_front().unwrap().wake();
        assert!(!q.is_notified(t4));
        q.notify_front().unwrap().wake();
        assert!(q.is_notified(t4) && q.is_empty());
        assert!(q.notify_front().is_none());
        let woken: Vec<usize> = counts.iter().map(|(c, _)| woken(c)).collect();
        assert_eq!(woken, [1, 0, 1, 1], "the removed waiter is never woken");
        assert_eq!(self::woken(&last), 1);
    }

    #[test]
    fn set_waker_replaces_the_waker_to_wake() {
        let mut q = Queue::new();
        let (a, wa) = counter();
        let (b, wb) = counter();
        let t = q.push_back(wa.clone());
        // The same task's waker: one of the two comes back, to be dropped.
        assert!(q.set_waker(t, wa).is_some());
        assert_eq!(
            Arc::strong_count(&a),
            2,
            "ours and the queue's: none leaked"
        );
        // Another task's: swapped in, the old one comes back.
        assert!(q.set_waker(t, wb).is_some());
        q.notify_front().unwrap().wake();
        assert_eq!((woken(&a), woken(&b)), (0, 1));
    }

    #[test]
    fn dropping_with_a_leaked_waiter_frees_its_waker() {
        let (c, w) = counter();
        let mut q = Queue::new();
        q.push_back(w);
        drop(q);
        assert_eq!(Arc::strong_count(&c), 1);
    }
}
