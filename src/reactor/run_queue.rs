//! The run queue: spawned tasks in a slab, the queue of those ready to be
//! polled, and their wakers.
//!
//! A task's waker is a small `Arc` holding the task's slot index and
//! generation, so a wake that arrives after the task finished and the slot
//! was reused is ignored. Waking on the reactor's own thread pushes onto the
//! ready queue; waking from another thread pushes onto a locked queue and
//! wakes `epoll` through a `mio::Waker` (the turn drains that queue).
//!
//! # Prefetching the next task
//!
//! With hundreds of connections, the other connections' work evicts a
//! suspended greenlet's stack from the cache, and its resume would start
//! with a miss on every frame it returns through (seen with `perf` at the
//! first load of each frame). A task therefore reports, when its poll
//! returns `Pending`, where its next poll will read (a [`Footprint`]: the
//! live part of its stack and one heap object), and `run_ready` prefetches
//! that for the next task in the queue while the current one runs.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::ptr;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use super::slab::Slab;
use super::{Reactor, Shared};

/// What the reactor runs as a task: a future that can say where its next
/// poll will read memory first.
pub(crate) trait TaskFuture: Future<Output = ()> {
    /// Asked each time a poll returns `Pending`, while the task's memory is
    /// still in the cache; see [`Footprint`].
    fn footprint(&self) -> Footprint;

    /// The greenlet a poll resumes, for the stall detector (`crate::stall`).
    fn greenlet(&self) -> Option<&crate::stack::StackHeader> {
        None
    }
}

/// Memory a task's next poll reads first, besides the task's own heap
/// allocation (which the reactor knows). While one task runs, the ready
/// queue prefetches this for the task after it: with hundreds of
/// connections each resume would otherwise start with cache misses on a
/// stack that other connections' work evicted.
#[derive(Clone, Debug, Default)]
pub(crate) struct Footprint {
    /// Another heap object the poll reads (its first cache line), or 0.
    pub(crate) object: usize,
    /// A suspended greenlet's live stack: its saved stack pointer, where the
    /// switch restores registers, up to the end of its header.
    pub(crate) stack: Range<usize>,
}

/// At most this many cache lines of a task's stack are prefetched: 2 KiB, the
/// frames the resume returns through first. Deeper ones come in on demand.
const PREFETCH_STACK_LINES: usize = 32;

/// The size of a cache line on every supported CPU (x86_64, aarch64).
const CACHE_LINE: usize = 64;

const _: () = assert!(size_of::<Option<TaskSlot>>() == CACHE_LINE);

/// A spawned task. One cache line, aligned to one: `prefetch_next` fetches
/// a slot with a single prefetch.
#[repr(align(64))]
pub(super) struct TaskSlot {
    /// `None` while the task is being polled (taken out so the task may
    /// spawn or wake without a double borrow) or after it finished.
    future: Option<Pin<Box<dyn TaskFuture>>>,
    /// Unique per spawn (the slot index is reused), so a wake meant for a
    /// finished task is ignored.
    generation: u32,
    /// Woken while it was being polled: poll again.
    woken_while_polled: bool,
    /// The waker handed to the task; built once per spawn. Moved out for
    /// the poll like `future`, and back: no reference counting per poll.
    waker: Option<Waker>,
    /// Where the next poll reads first, for `prefetch_next`.
    footprint: Footprint,
}

impl Reactor {
    /// Queues `future` as a task; it first runs at the next turn. Returns
    /// the task's waker, the one every poll of it gets.
    pub(crate) fn spawn(&self, future: Pin<Box<dyn TaskFuture>>) -> Waker {
        let generation = self.spawn_seq.get().wrapping_add(1);
        self.spawn_seq.set(generation);
        let mut tasks = self.tasks.borrow_mut();
        let index = tasks.insert(TaskSlot {
            future: Some(future),
            generation,
            woken_while_polled: false,
            waker: None,
            footprint: Footprint::default(),
        });
        let waker = Waker::from(Arc::new(TaskWaker {
            index: index as u32,
            generation,
            shared: self.shared.clone(),
        }));
        tasks.get_mut(index).expect("just inserted").waker = Some(waker.clone());
        drop(tasks);
        self.ready
            .borrow_mut()
            .push_back((index as u32, generation));
        waker
    }

    /// Number of tasks not finished.
    pub(crate) fn live_tasks(&self) -> usize {
        self.tasks.borrow().len()
    }

    pub(super) fn wake_task(&self, index: u32, generation: u32) {
        let mut tasks = self.tasks.borrow_mut();
        let Some(slot) = tasks.get_mut(index as usize) else {
            return;
        };
        if slot.generation != generation {
            return; // stale: the task finished and the slot was reused
        }
        if slot.future.is_none() {
            slot.woken_while_polled = true;
            return;
        }
        drop(tasks);
        // Poke after releasing `ready`: poking wakes the host's wakers,
        // which can be this loop's own task wakers (a pool worker's sync side
        // waits through `exempt` on a hosted loop) and re-enter `wake_task`;
        // holding the borrow panicked with "RefCell already borrowed"
        // (tests/kitchen.rs, the axum variant, is the reproducer).
        let was_empty = {
            let mut ready = self.ready.borrow_mut();
            let was_empty = ready.is_empty();
            ready.push_back((index, generation));
            was_empty
        };
        if was_empty {
            self.hosted.poke();
        }
    }

    /// Polls every task that is ready now (not the ones woken meanwhile:
    /// those wait for the next round, so I/O is not starved).
    pub(super) fn run_ready(&self) {
        let n = self.ready.borrow().len();
        for _ in 0..n {
            let Some((index, generation)) = self.ready.borrow_mut().pop_front() else {
                break;
            };
            let (mut future, waker) = {
                let mut tasks = self.tasks.borrow_mut();
                self.prefetch_next(&tasks);
                let Some(slot) = tasks.get_mut(index as usize) else {
                    continue;
                };
                if slot.generation != generation {
                    continue;
                }
                let Some(f) = slot.future.take() else {
                    continue;
                };
                (f, slot.waker.take().expect("task waker"))
            };
            let _beat = crate::stall::beat(|| future.greenlet());
            let done = super::loop_poll(|| {
                future
                    .as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_ready()
            });
            let mut tasks = self.tasks.borrow_mut();
            if done {
                let removed = tasks.remove(index as usize);
                let idle = tasks.len() == 0;
                drop(tasks);
                // The task's future is dropped outside the borrow: its
                // destructors may spawn or wake.
                drop(removed);
                drop(future);
                drop(waker);
                if idle {
                    let waiters = std::mem::take(&mut *self.idle_waiters.borrow_mut());
                    waiters.into_iter().for_each(Waker::wake);
                }
            } else if let Some(slot) = tasks.get_mut(index as usize) {
                slot.footprint = future.footprint();
                slot.future = Some(future);
                slot.waker = Some(waker);
                if std::mem::take(&mut slot.woken_while_polled) {
                    drop(tasks);
                    self.ready.borrow_mut().push_back((index, generation));
                }
            }
        }
    }

    /// Prefetches, while the task just taken from the ready queue runs, what
    /// the next two will read first: a software pipeline two deep. The slot
    /// of the task after next is only an address (its index is in the
    /// queue), so it costs no load; the next task's slot was prefetched that
    /// way one poll ago, so reading its footprint now is a cache hit, and its
    /// heap allocation and stack are requested before they are needed.
    #[inline]
    fn prefetch_next(&self, tasks: &Slab<TaskSlot>) {
        let ready = self.ready.borrow();
        if let Some(&(index, _)) = ready.get(1) {
            crate::arch::prefetch(tasks.entry_addr(index as usize));
        }
        let Some(&(index, generation)) = ready.front() else {
            return;
        };
        let Some(slot) = tasks.get(index as usize) else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        if let Some(future) = &slot.future {
            let at = ptr::from_ref::<dyn TaskFuture>(&**future).cast::<u8>() as usize;
            crate::arch::prefetch(at);
            crate::arch::prefetch(at + size_of_val::<dyn TaskFuture>(&**future).saturating_sub(1));
        }
        let Footprint { object, stack } = &slot.footprint;
        if *object != 0 {
            crate::arch::prefetch(*object);
        }
        (stack.start & !(CACHE_LINE - 1)..stack.end)
            .step_by(CACHE_LINE)
            .take(PREFETCH_STACK_LINES)
            .for_each(crate::arch::prefetch);
    }
}

/// The waker of a task: its slot and generation.
pub(crate) struct TaskWaker {
    index: u32,
    generation: u32,
    shared: Arc<Shared>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // On the reactor's own thread: straight onto the ready queue.
        let woken_locally = match Reactor::try_current() {
            Some(r) if Arc::ptr_eq(&r.shared, &self.shared) => {
                r.wake_task(self.index, self.generation);
                true
            }
            _ => false,
        };
        match woken_locally {
            true => {}
            false => {
                self.shared
                    .remote
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((self.index, self.generation));
                let _ = self.shared.waker.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;
    use std::task::Poll;

    /// Stale wakes (a task that finished, its slot reused) are ignored.
    #[test]
    fn a_stale_wake_does_not_poll_the_slots_new_task() {
        let reactor = Reactor::current();
        let polls = Rc::new(Cell::new(0));
        reactor.spawn(Box::pin(NoFootprint(async {})));
        reactor.run_ready(); // the first task finishes; its slot is free
        let p = polls.clone();
        reactor.spawn(Box::pin(NoFootprint(std::future::poll_fn(move |_| {
            p.set(p.get() + 1);
            Poll::<()>::Pending
        }))));
        reactor.run_ready();
        assert_eq!(polls.get(), 1);
        // A wake carrying the first task's generation for the same slot.
        let stale = reactor.spawn_seq.get() - 1;
        reactor.wake_task(0, stale);
        reactor.run_ready();
        assert_eq!(polls.get(), 1, "the stale wake polled the new task");
    }

    /// A plain future as a task that names no memory to prefetch.
    struct NoFootprint<F>(F);

    impl<F: Future<Output = ()>> Future for NoFootprint<F> {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            // SAFETY: structural pinning; the field is never moved out.
            unsafe { self.map_unchecked_mut(|s| &mut s.0) }.poll(cx)
        }
    }

    impl<F: Future<Output = ()>> TaskFuture for NoFootprint<F> {
        fn footprint(&self) -> Footprint {
            Footprint::default()
        }
    }

    /// A task whose footprint points at nothing mapped: the ready queue
    /// prefetches it (a hint that cannot fault) and runs every task.
    #[test]
    fn prefetching_a_footprint_that_points_nowhere_is_harmless() {
        struct Wild(Rc<Cell<u32>>);
        impl Future for Wild {
            type Output = ();
            fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                let n = self.0.get() + 1;
                self.0.set(n);
                if n < 3 {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(())
            }
        }
        impl TaskFuture for Wild {
            fn footprint(&self) -> Footprint {
                Footprint {
                    object: 8, // the null page
                    stack: usize::MAX - 4096..usize::MAX,
                }
            }
        }
        let reactor = Reactor::current();
        let polls: Vec<_> = (0..3).map(|_| Rc::new(Cell::new(0))).collect();
        for p in &polls {
            reactor.spawn(Box::pin(Wild(p.clone())));
        }
        while reactor.live_tasks() > 0 {
            reactor.run_ready();
        }
        assert!(polls.iter().all(|p| p.get() == 3));
    }
}
