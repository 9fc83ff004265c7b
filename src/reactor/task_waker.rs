//! Task wakers with no allocation: the task is named in the waker's data
//! word, and the registry of live reactors that wakes from other threads
//! find theirs in.
//!
//! A `Waker` is a data word and a vtable; std never dereferences the word.
//! A task's waker packs into it the reactor's id, the task's slot and the
//! slot's generation:
//!
//! ```text
//!  63          48 47                      20 19               0
//! +--------------+--------------------------+------------------+
//! |  reactor id  |        slot index        |    generation    |
//! +--------------+--------------------------+------------------+
//!      16 bits             28 bits                20 bits
//! ```
//!
//! So cloning a waker copies a word and dropping one does nothing: no
//! reference count is touched per wait. A waker held in an `Arc` cost two
//! atomic read-modify-writes per hand-off between two greenlets (a clone
//! when the waiter registers, a decrement when the waker wakes it).
//!
//! A wake on the reactor's own thread queues the task directly. A wake
//! from another thread looks the reactor up by id in a global registry
//! (read-locked) and pushes onto its cross-thread queue; a wake for a
//! reactor that is gone finds nothing and is dropped. Ids are reused once a
//! reactor is gone, and generations wrap after 2^20 spawns in one slot: a
//! stale waker can then wake a task it was not made for. That is a
//! spurious wake, which every future tolerates (it is polled, finds its
//! event not there, and waits again); it never loses a wake.

use std::sync::{Arc, PoisonError, RwLock};
use std::task::{RawWaker, RawWakerVTable, Waker};

use super::{Reactor, Shared};

/// Bits of the slot index in a packed waker; a reactor holds at most
/// `1 << INDEX_BITS` tasks at once (268 million).
const INDEX_BITS: u32 = 28;
/// Bits of the generation; [`Reactor`]'s generations wrap at `1 << GENERATION_BITS`.
pub(super) const GENERATION_BITS: u32 = 20;
/// Mask of a generation.
pub(super) const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;
/// The most tasks a reactor holds at once.
pub(super) const MAX_TASKS: usize = 1 << INDEX_BITS;

/// Ids of live reactors: the index into `slots` plus one (0 is never an id).
struct Registry {
    slots: Vec<Option<Arc<Shared>>>,
    free: Vec<u16>,
}

static REGISTRY: RwLock<Registry> = RwLock::new(Registry {
    slots: Vec::new(),
    free: Vec::new(),
});

/// A reactor's place in the registry, released when the reactor drops.
pub(super) struct ReactorId(u16);

impl ReactorId {
    /// Registers `shared` and returns its id.
    ///
    /// # Errors
    ///
    /// 65,535 reactors (threads with a greenhack loop) are alive at once.
    pub(super) fn register(shared: &Arc<Shared>) -> std::io::Result<ReactorId> {
        let mut registry = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(id) = registry.free.pop() {
            registry.slots[usize::from(id) - 1] = Some(shared.clone());
            return Ok(ReactorId(id));
        }
        let Ok(id) = u16::try_from(registry.slots.len() + 1) else {
            return Err(std::io::Error::other(
                "greenhack: 65,535 threads already run a greenhack loop",
            ));
        };
        registry.slots.push(Some(shared.clone()));
        Ok(ReactorId(id))
    }
}

impl Drop for ReactorId {
    fn drop(&mut self) {
        let mut registry = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
        registry.slots[usize::from(self.0) - 1] = None;
        registry.free.push(self.0);
    }
}

impl Reactor {
    /// The waker of the task in slot `index` with `generation`.
    pub(super) fn task_waker(&self, index: u32, generation: u32) -> Waker {
        debug_assert!((index as usize) < MAX_TASKS && generation <= GENERATION_MASK);
        let word = (usize::from(self.id.0) << (INDEX_BITS + GENERATION_BITS))
            | ((index as usize) << GENERATION_BITS)
            | generation as usize;
        // SAFETY: the vtable's functions treat the data word as a number
        // and never dereference it, so any word is valid for them.
        unsafe { Waker::from_raw(RawWaker::new(word as *const (), &VTABLE)) }
    }
}

/// The packed word's fields: reactor id, slot index, generation.
fn unpack(data: *const ()) -> (u16, u32, u32) {
    let word = data as usize;
    let id = (word >> (INDEX_BITS + GENERATION_BITS)) as u16;
    let index = ((word >> GENERATION_BITS) as u32) & ((1 << INDEX_BITS) - 1);
    let generation = (word as u32) & GENERATION_MASK;
    (id, index, generation)
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake, drop);

fn clone(data: *const ()) -> RawWaker {
    RawWaker::new(data, &VTABLE)
}

fn wake(data: *const ()) {
    let (id, index, generation) = unpack(data);
    // On the reactor's own thread: straight onto its queue.
    let local = Reactor::with_current(|r| {
        let ours = r.id.0 == id;
        if ours {
            r.wake_task(index, generation);
        }
        ours
    });
    if local == Some(true) {
        return;
    }
    let registry = REGISTRY.read().unwrap_or_else(PoisonError::into_inner);
    // Gone: its tasks were dropped with it, nothing to wake.
    if let Some(Some(shared)) = registry.slots.get(usize::from(id).wrapping_sub(1)) {
        shared
            .remote
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((index, generation));
        let _ = shared.waker.wake();
    }
}

fn drop(_: *const ()) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_waker_names_its_reactor_slot_and_generation() {
        let reactor = Reactor::current();
        let waker = reactor.task_waker(MAX_TASKS as u32 - 1, GENERATION_MASK);
        let (id, index, generation) = unpack(waker.data());
        assert_eq!(id, reactor.id.0);
        assert_eq!(index, MAX_TASKS as u32 - 1);
        assert_eq!(generation, GENERATION_MASK);
        assert!(waker.will_wake(&waker.clone()));
    }

    /// A waker that outlives its reactor (its thread exited) wakes nothing;
    /// after the id is reused by another thread's reactor, it is at most a
    /// spurious wake there, never a crash.
    #[test]
    fn a_waker_that_outlives_its_reactor_wakes_nothing() {
        let stale = std::thread::spawn(|| {
            let reactor = Reactor::current();
            reactor.task_waker(12_345, 7)
        })
        .join()
        .unwrap();
        stale.wake_by_ref(); // its reactor is gone
        std::thread::spawn(move || {
            // Most likely the freed id again: the wake reaches this
            // reactor, whose slot 12,345 holds no task.
            let reactor = Reactor::current();
            stale.wake();
            reactor.run_ready();
            assert_eq!(reactor.live_tasks(), 0);
        })
        .join()
        .unwrap();
    }
}
