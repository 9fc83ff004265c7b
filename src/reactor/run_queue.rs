//! The run queue: spawned tasks in a slab, the queue of those ready to be
//! polled (with its driver lane), and what a wake does.
//!
//! A task's waker names the task's slot index and generation (packed into
//! the waker itself: `task_waker`), so a wake that arrives after the task
//! finished and the slot was reused is ignored. Waking on the reactor's own
//! thread pushes onto the ready queue; waking from another thread pushes
//! onto a locked queue and wakes `epoll` through a `mio::Waker` (the turn
//! drains that queue).
//!
//! A task is queued at most once: a wake that finds it already queued is
//! absorbed, since the one poll to come answers every wake before it. A
//! greenlet that waits for 20 pipelined queries is woken by each answer;
//! queued once per wake, it was resumed 20 times per request, 19 of them
//! for nothing, and the extra entries delayed every task behind them.
//!
//! # The driver lane
//!
//! A round polls the tasks that were ready when it began, in the order they
//! were woken. That is fair, but a client library's background future (the
//! "driver": tokio-postgres's `Connection`, hyper's client connection) sits
//! on the path of every request: a greenlet hands it a query, the driver
//! writes it to the socket, later reads the answer and hands it back. As an
//! ordinary task each of those hops waited for every task queued before it:
//! under `/queries` of `examples/techempower.rs` at 256 connections, a
//! woken tokio-postgres connection had a mean of 87 and a 99th percentile
//! of 1,823 task polls ahead of it (in the lane: at most 16 tasks, and the
//! other drivers).
//!
//! A task spawned with [`spawn_driver`](crate::spawn_driver) is a plain future (no greenlet, no
//! stack switch) that, when woken, joins the driver lane instead of the back
//! of the queue. The lane is drained before the round's first task, after
//! every [`DRIVER_INTERVAL`]th task the round polls, and after its last: a
//! query a greenlet hands over is written after at most that many more
//! tasks, and an answer read by the turn is dispatched before the round's
//! greenlets run. The interval is a trade: drained after every task, a
//! driver wrote each greenlet's request on its own (one more poll, a
//! `write` and a failed `read` per request: 7% more server CPU per request
//! on `/fortunes` of `examples/techempower.rs`); every 16 tasks keeps
//! several greenlets' requests in one write and still bounds the wait. The
//! lane is bounded: a driver is in it at most once, and a drain polls only
//! the drivers queued when it began, so between two drains each driver runs
//! at most once and a driver that keeps waking itself cannot starve the
//! greenlets.
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

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::ptr;
use std::task::{Context, Waker};

use super::Reactor;
use super::slab::Slab;

/// What the reactor runs as a task: a future that can say where its next
/// poll will read memory first.
pub(crate) trait TaskFuture: Future<Output = ()> {
    /// Asked each time a poll returns `Pending`, while the task's memory is
    /// still in the cache; see [`Footprint`]. The default (no stack, no
    /// other object) suits a task that is a plain future. It writes into the
    /// task's slot in place.
    fn record_footprint(&self, into: &mut Footprint) {
        *into = Footprint::default();
    }

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

/// The driver lane is drained before a round, after every this many of its
/// tasks and after its last: a woken driver waits behind at most this many
/// tasks, and writes up to this many greenlets' requests at once (see "The
/// driver lane").
const DRIVER_INTERVAL: usize = 16;

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
    /// Spawned by [`spawn_driver`](crate::spawn_driver): queued in the driver lane.
    driver: bool,
    /// In its queue, not yet polled: a second wake then does not queue it
    /// twice.
    queued: bool,
}

impl Reactor {
    /// Queues `future` as a task; it first runs at the next turn. Returns
    /// the task's waker, the one every poll of it gets.
    pub(crate) fn spawn(&self, future: Pin<Box<dyn TaskFuture>>) -> Waker {
        self.spawn_in_lane(future, false)
    }

    /// Queues `future` as a driver task (see "The driver lane" and
    /// [`spawn_driver`](crate::spawn_driver)); it first runs at the next
    /// drain of the lane.
    pub(crate) fn spawn_driver(&self, future: Pin<Box<dyn TaskFuture>>) -> Waker {
        self.spawn_in_lane(future, true)
    }

    /// [`spawn`](Self::spawn), into the driver lane when `driver` is set.
    fn spawn_in_lane(&self, future: Pin<Box<dyn TaskFuture>>, driver: bool) -> Waker {
        let generation = self.spawn_seq.get().wrapping_add(1) & super::task_waker::GENERATION_MASK;
        self.spawn_seq.set(generation);
        let mut tasks = self.tasks.borrow_mut();
        let index = tasks.insert(TaskSlot {
            future: Some(future),
            generation,
            woken_while_polled: false,
            waker: None,
            footprint: Footprint::default(),
            driver,
            queued: true,
        });
        assert!(
            index < super::task_waker::MAX_TASKS,
            "greenhack: more than 2^28 tasks on one thread's loop"
        );
        let waker = self.task_waker(index as u32, generation);
        tasks.get_mut(index).expect("just inserted").waker = Some(waker.clone());
        drop(tasks);
        self.lane(driver)
            .borrow_mut()
            .push_back((index as u32, generation));
        waker
    }

    /// The queue a task waits in: the driver lane or the ready queue.
    fn lane(&self, driver: bool) -> &RefCell<VecDeque<(u32, u32)>> {
        if driver { &self.drivers } else { &self.ready }
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
        if slot.queued {
            return; // already queued: one poll answers both wakes
        }
        slot.queued = true;
        let driver = slot.driver;
        drop(tasks);
        // Poke after releasing `ready`: poking wakes the host's wakers,
        // which can be this loop's own task wakers (a pool worker's sync side
        // waits through `exempt` on a hosted loop) and re-enter `wake_task`;
        // holding the borrow panicked with "RefCell already borrowed"
        // (tests/kitchen.rs, the axum variant, is the reproducer).
        let was_idle = {
            let mut lane = self.lane(driver).borrow_mut();
            let was_empty = lane.is_empty();
            lane.push_back((index, generation));
            was_empty && self.lane(!driver).borrow().is_empty()
        };
        if was_idle {
            self.hosted.poke();
        }
    }

    /// Polls every task that is ready now (not the ones woken meanwhile:
    /// those wait for the next round, so I/O is not starved), and the
    /// drivers woken meanwhile, every `DRIVER_INTERVAL` tasks (see "The
    /// driver lane").
    pub(super) fn run_ready(&self) {
        self.run_drivers();
        let n = self.ready.borrow().len();
        for i in 1..=n {
            let Some((index, generation)) = self.ready.borrow_mut().pop_front() else {
                break;
            };
            self.poll_task(index, generation);
            if i % DRIVER_INTERVAL == 0 || i == n {
                self.run_drivers();
            }
            // A long round lets I/O in as it goes: what the turn wakes runs
            // in the next round, a woken driver at the next drain. (Hosted,
            // the host's readiness paces the turns: see `hosted::drive`.)
            if i < n && self.turn_due() && !self.hosted.is_active() {
                self.turn(Some(std::time::Duration::ZERO))
                    .expect("greenhack: epoll_wait failed");
            }
        }
    }

    /// Polls the drivers queued now; those woken meanwhile (also by
    /// themselves) wait for the next drain. Inline: on most loops the lane
    /// is empty, and this runs twice per round.
    #[inline]
    fn run_drivers(&self) {
        let n = self.drivers.borrow().len();
        if n != 0 {
            self.run_queued_drivers(n);
        }
    }

    /// [`run_drivers`](Self::run_drivers) once some are queued.
    #[inline(never)]
    fn run_queued_drivers(&self, n: usize) {
        for _ in 0..n {
            let Some((index, generation)) = self.drivers.borrow_mut().pop_front() else {
                break;
            };
            self.poll_task(index, generation);
        }
    }

    /// Polls one task taken from its lane, unless it finished meanwhile.
    fn poll_task(&self, index: u32, generation: u32) {
        let (mut future, waker) = {
            let mut tasks = self.tasks.borrow_mut();
            self.prefetch_next(&tasks);
            let Some(slot) = tasks.get_mut(index as usize) else {
                return;
            };
            if slot.generation != generation {
                return;
            }
            let Some(f) = slot.future.take() else {
                return;
            };
            slot.queued = false;
            (f, slot.waker.take().expect("task waker"))
        };
        self.count_poll();
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
            future.record_footprint(&mut slot.footprint);
            slot.future = Some(future);
            slot.waker = Some(waker);
            if std::mem::take(&mut slot.woken_while_polled) {
                let driver = slot.driver;
                slot.queued = true;
                drop(tasks);
                self.lane(driver)
                    .borrow_mut()
                    .push_back((index, generation));
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

    impl<F: Future<Output = ()>> TaskFuture for NoFootprint<F> {}

    /// A task woken again while it waits in the queue is polled once, not
    /// once per wake: a greenlet waiting for 20 pipelined query results
    /// (woken by each) was resumed 20 times, 19 of them for nothing, and
    /// its 19 extra entries delayed every task queued behind them.
    #[test]
    fn wakes_of_a_queued_task_cost_one_poll() {
        let reactor = Reactor::current();
        let polls = Rc::new(Cell::new(0));
        let waker = Rc::new(RefCell::new(None::<Waker>));
        let (p, w) = (polls.clone(), waker.clone());
        reactor.spawn(Box::pin(NoFootprint(std::future::poll_fn(move |cx| {
            p.set(p.get() + 1);
            *w.borrow_mut() = Some(cx.waker().clone());
            Poll::<()>::Pending
        }))));
        reactor.run_ready();
        assert_eq!(polls.get(), 1);
        let w = waker.borrow().clone().expect("polled once");
        for _ in 0..20 {
            w.wake_by_ref();
        }
        reactor.run_ready();
        reactor.run_ready();
        assert_eq!(polls.get(), 2, "one poll per wake");
        reactor.cancel_all();
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
            fn record_footprint(&self, into: &mut Footprint) {
                *into = Footprint {
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
