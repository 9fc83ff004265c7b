//! The waiter queue every primitive of [`sync`](super) keeps: a FIFO of
//! waiters, each a [`Waker`] and a small payload, with O(1) removal of any
//! waiter by its [`Key`].
//!
//! A waiter is either *queued* (linked into the FIFO) or *notified* (taken
//! off the FIFO by [`WaitList::notify_front`] and handed something: the
//! lock, a permit, a wake-up; its slot stays allocated until the waiting
//! future has seen the news). The future keeps its `Key`; when it is polled
//! it asks [`WaitList::poll`] which state it is in, and when it is dropped it
//! calls [`WaitList::remove`], which says whether it had been notified, so
//! the primitive can pass on what a waiter that went away was handed.
//!
//! Slots live in a `Vec` reused through a free list, and the FIFO is linked
//! through slot indices: no allocation per wait in the steady state, no
//! `unsafe`, and a stale key (its slot freed and reused) is recognised by a
//! generation count. A `WaitList` is not synchronised: each primitive keeps
//! it under its own spin lock ([`spin`](super::spin)) and wakes the returned
//! wakers after unlocking. [`Mutex`](super::Mutex) has its own queue
//! ([`lock_queue`](super::lock_queue)), whose waiters see a hand-off
//! without taking the lock.

use std::task::Waker;

/// No slot: the end of a list.
const NIL: u32 = u32::MAX;

/// Names one waiter's slot; stale once the slot is freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    index: u32,
    generation: u32,
}

/// Where a waiter stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    /// In the FIFO, still waiting.
    Queued,
    /// Taken off the FIFO and handed what it waited for.
    Notified,
}

#[derive(Debug)]
struct Slot<T> {
    /// Bumped each time the slot is freed, so old keys miss.
    generation: u32,
    /// `None` while the slot is free.
    status: Option<Status>,
    /// FIFO links while queued; `next` links the free list while free.
    prev: u32,
    next: u32,
    waker: Option<Waker>,
    data: Option<T>,
}

/// A FIFO of waiters with payloads of type `T`.
#[derive(Debug)]
pub(crate) struct WaitList<T> {
    slots: Vec<Slot<T>>,
    free: u32,
    head: u32,
    tail: u32,
    /// Queued waiters (notified ones are not counted).
    len: usize,
}

impl<T> WaitList<T> {
    pub(crate) const fn new() -> WaitList<T> {
        WaitList {
            slots: Vec::new(),
            free: NIL,
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    /// True when no waiter is queued.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of queued waiters.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Queues a waiter at the back; `waker` may be set by a later `poll`.
    pub(crate) fn push_back(&mut self, data: T, waker: Option<Waker>) -> Key {
        let index = if self.free != NIL {
            let i = self.free;
            self.free = self.slots[i as usize].next;
            i
        } else {
            let i = u32::try_from(self.slots.len()).expect("greenhack::sync: too many waiters");
            assert!(i != NIL, "greenhack::sync: too many waiters");
            self.slots.push(Slot {
                generation: 0,
                status: None,
                prev: NIL,
                next: NIL,
                waker: None,
                data: None,
            });
            i
        };
        let tail = self.tail;
        let slot = &mut self.slots[index as usize];
        slot.status = Some(Status::Queued);
        slot.prev = tail;
        slot.next = NIL;
        slot.waker = waker;
        slot.data = Some(data);
        let key = Key {
            index,
            generation: slot.generation,
        };
        match tail {
            NIL => self.head = index,
            t => self.slots[t as usize].next = index,
        }
        self.tail = index;
        self.len += 1;
        key
    }

    fn slot(&self, key: Key) -> &Slot<T> {
        let slot = &self.slots[key.index as usize];
        assert!(
            slot.generation == key.generation && slot.status.is_some(),
            "greenhack::sync: stale waiter key"
        );
        slot
    }

    fn slot_mut(&mut self, key: Key) -> &mut Slot<T> {
        let slot = &mut self.slots[key.index as usize];
        assert!(
            slot.generation == key.generation && slot.status.is_some(),
            "greenhack::sync: stale waiter key"
        );
        slot
    }

    /// The waiter's status; while it is queued, `waker` replaces the stored
    /// waker unless both wake the same task.
    pub(crate) fn poll(&mut self, key: Key, waker: &Waker) -> Status {
        let slot = self.slot_mut(key);
        let status = slot.status.expect("checked by slot_mut");
        if status == Status::Queued {
            match &mut slot.waker {
                Some(w) if w.will_wake(waker) => {}
                w => *w = Some(waker.clone()),
            }
        }
        status
    }

    /// The payload of the first queued waiter.
    pub(crate) fn front(&self) -> Option<&T> {
        match self.head {
            NIL => None,
            h => self.slots[h as usize].data.as_ref(),
        }
    }

    /// The payload of the first queued waiter, to take from or to fill.
    pub(crate) fn front_mut(&mut self) -> Option<&mut T> {
        match self.head {
            NIL => None,
            h => self.slots[h as usize].data.as_mut(),
        }
    }

    fn unlink(&mut self, index: u32) {
        let (prev, next) = {
            let s = &self.slots[index as usize];
            (s.prev, s.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
        self.len -= 1;
    }

    /// Takes the first queued waiter off the FIFO, marks it notified and
    /// returns its waker (to wake once the primitive's lock is released;
    /// `None` inside if it was never polled). `None` if nobody is queued.
    pub(crate) fn notify_front(&mut self) -> Option<Option<Waker>> {
        let head = self.head;
        if head == NIL {
            return None;
        }
        self.unlink(head);
        let slot = &mut self.slots[head as usize];
        slot.status = Some(Status::Notified);
        Some(slot.waker.take())
    }

    /// Notifies every queued waiter; returns their wakers.
    pub(crate) fn notify_all(&mut self) -> Vec<Waker> {
        let mut wakers = Vec::with_capacity(self.len);
        while let Some(w) = self.notify_front() {
            wakers.extend(w);
        }
        wakers
    }

    /// Clones the wakers of every queued waiter without notifying them: they
    /// are to poll again and find the primitive changed (closed).
    pub(crate) fn wakers(&self) -> Vec<Waker> {
        let mut wakers = Vec::with_capacity(self.len);
        let mut i = self.head;
        while i != NIL {
            let slot = &self.slots[i as usize];
            wakers.extend(slot.waker.clone());
            i = slot.next;
        }
        wakers
    }

    /// Frees a waiter's slot (queued or notified) and returns its status and
    /// payload: `Notified` means it was handed something it will not use.
    pub(crate) fn remove(&mut self, key: Key) -> (Status, T) {
        let status = self.slot(key).status.expect("checked by slot");
        if status == Status::Queued {
            self.unlink(key.index);
        }
        let free = self.free;
        let slot = &mut self.slots[key.index as usize];
        slot.status = None;
        slot.generation = slot.generation.wrapping_add(1);
        slot.waker = None;
        slot.next = free;
        let data = slot.data.take().expect("a live slot has data");
        self.free = key.index;
        (status, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_order_and_removal_from_the_middle() {
        let mut l = WaitList::new();
        let keys: Vec<Key> = (0..4).map(|i| l.push_back(i, None)).collect();
        assert_eq!(l.remove(keys[1]), (Status::Queued, 1));
        assert_eq!(l.front(), Some(&0));
        assert!(l.notify_front().is_some());
        assert_eq!(l.poll(keys[0], Waker::noop()), Status::Notified);
        assert_eq!(l.front(), Some(&2));
        assert_eq!(l.remove(keys[0]), (Status::Notified, 0));
        // The freed slots are reused; the order stays 2, 3, then the new one.
        let k = l.push_back(9, None);
        assert_eq!(l.notify_all().len(), 0, "no waker was ever stored");
        assert!(l.is_empty());
        for key in [keys[2], keys[3], k] {
            assert_eq!(l.remove(key).0, Status::Notified);
        }
    }

    #[test]
    #[should_panic(expected = "stale waiter key")]
    fn stale_key_is_caught() {
        let mut l = WaitList::new();
        let k = l.push_back((), None);
        l.remove(k);
        l.push_back((), None);
        l.poll(k, Waker::noop());
    }
}
