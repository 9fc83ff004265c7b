//! The courier: batches the wake-ups that cross between a multi-thread
//! tokio runtime and the pool's workers, so that a burst of calls costs one
//! thread hand-off each way instead of one per call.
//!
//! # Why
//!
//! Waking a thread that sleeps is a system call (an `eventfd` write), and
//! the woken thread, when it shares a core with the waker, usually runs at
//! once (the scheduler's wake-up preemption): it finds only what was queued
//! before the wake, handles that, sleeps again, and the waker resumes. A
//! runtime thread that hands a dozen calls to a sleeping worker one by one,
//! or a worker that wakes a dozen callers one by one, then pays a dozen
//! round trips of two context switches each, where one would do.
//! `scripts/bench-axum` counted about one context switch per two requests
//! that way.
//!
//! # How
//!
//! Each runtime thread that calls into a pool (spawns or awaits a
//! [`Task`](super::Task)) gets a courier: a small tokio task on that runtime
//! and a queue it shares with the workers.
//!
//! * **Results back** (*deliveries*): a worker does not wake a caller's
//!   task; it queues the caller's waker with the courier of the runtime
//!   thread that last polled it, and once per round of its loop (after
//!   every greenlet that was ready has run) wakes each courier that got
//!   some. The courier task then wakes them all on its runtime thread,
//!   where a wake is a push onto the local run queue.
//! * **Jobs out** (*dispatches*): a job is queued at once, but waking the
//!   sleeping worker is left to the courier, which does it when its
//!   runtime thread has no other task ready (tokio runs a
//!   [`yield_now`](tokio::task::yield_now)ed task again only then, or at
//!   its periodic I/O check), so the jobs that thread's other tasks queue
//!   meanwhile go with the same wake.
//!
//! Only for multi-thread runtimes: a `current_thread` runtime may not be
//! running its tasks at all (`Handle::block_on` from another thread), and
//! there the wakes are direct, as they are everywhere else. When the
//! runtime shuts down, the courier task is dropped, and it wakes everything
//! still queued with it: no caller or worker is left waiting.

use std::cell::RefCell;
use std::future::poll_fn;
use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::runtime::{Handle, Id, RuntimeFlavor};

/// One runtime thread's courier; see the module docs.
#[derive(Default)]
pub(super) struct Courier {
    state: Mutex<State>,
    /// The courier task is gone (its runtime shut down): wake directly.
    /// Set under the lock; read without it as a hint.
    closed: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Callers whose results are ready, to wake on the runtime's side.
    deliveries: Vec<Waker>,
    /// Workers with new jobs, to wake once this runtime thread has nothing
    /// else ready.
    dispatches: Vec<Waker>,
    /// The courier task's waker while it waits for work.
    waker: Option<Waker>,
}

thread_local! {
    /// The calling thread's courier and the runtime it serves.
    static LOCAL: RefCell<Option<(Id, Arc<Courier>)>> = const { RefCell::new(None) };
}

impl Courier {
    /// The courier for the calling thread, if it runs inside a multi-thread
    /// tokio runtime; its task is spawned on first use.
    pub(super) fn current() -> Option<Arc<Courier>> {
        let handle = Handle::try_current().ok()?;
        if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
            return None;
        }
        let id = handle.id();
        LOCAL
            .try_with(|local| {
                let mut local = local.borrow_mut();
                if let Some((served, courier)) = &*local {
                    if *served == id && !courier.closed.load(Ordering::Relaxed) {
                        return courier.clone();
                    }
                }
                let courier = Arc::new(Courier::default());
                // Detached: it lives as long as its runtime. On a runtime
                // that is shutting down the future is dropped at once, which
                // closes the courier.
                drop(handle.spawn(run(CloseOnDrop(courier.clone()))));
                *local = Some((id, courier.clone()));
                courier
            })
            .ok()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section only moves wakers in or out.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a caller's `waker` for the courier task to wake. Returns
    /// false if the courier is closed, having woken it here instead; on
    /// true the caller must [`notify`](Courier::notify) later (once for a
    /// whole round of deliveries).
    pub(super) fn deliver(&self, waker: Waker) -> bool {
        let mut state = self.lock();
        if self.closed.load(Ordering::Relaxed) {
            drop(state);
            waker.wake();
            return false;
        }
        state.deliveries.push(waker);
        true
    }

    /// Wakes the courier task if it waits (a no-op if it is already due to
    /// run: it looks at its queues before it waits again).
    pub(super) fn notify(&self) {
        let waker = self.lock().waker.take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Has the courier wake a worker's `waker` once this runtime thread has
    /// no other task ready (directly now if the courier is closed).
    pub(super) fn dispatch(&self, waker: Waker) {
        let mut state = self.lock();
        if self.closed.load(Ordering::Relaxed) {
            drop(state);
            waker.wake();
            return;
        }
        state.dispatches.push(waker);
        let courier = state.waker.take();
        drop(state);
        // Called on the courier's own runtime thread: a local wake, no
        // system call.
        if let Some(w) = courier {
            w.wake();
        }
    }

    /// Ready when there is something to deliver or dispatch; else registers
    /// the courier task's waker.
    fn poll_work(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if state.deliveries.is_empty() && state.dispatches.is_empty() {
            match &mut state.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        state.waker = None;
        Poll::Ready(())
    }

    fn wake_deliveries(&self) {
        let deliveries = mem::take(&mut self.lock().deliveries);
        deliveries.into_iter().for_each(Waker::wake);
    }

    fn wake_dispatches(&self) {
        let dispatches = mem::take(&mut self.lock().dispatches);
        dispatches.into_iter().for_each(Waker::wake);
    }

    fn has_dispatches(&self) -> bool {
        !self.lock().dispatches.is_empty()
    }
}

/// The courier task. It owns the guard from its creation on, so a task
/// dropped before its first poll closes the courier too.
async fn run(close: CloseOnDrop) {
    let courier = &*close.0;
    loop {
        poll_fn(|cx| courier.poll_work(cx)).await;
        courier.wake_deliveries();
        if courier.has_dispatches() {
            // Back once this thread has run every task that is ready (the
            // ones just woken included), whose jobs then share the wake.
            // The dispatches stay queued meanwhile, where a drop of this
            // task still finds them.
            tokio::task::yield_now().await;
            courier.wake_dispatches();
        }
    }
}

/// Closes the courier when its task is dropped (the runtime shuts down) and
/// wakes what is still queued.
struct CloseOnDrop(Arc<Courier>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let (deliveries, dispatches) = {
            let mut state = self.0.lock();
            self.0.closed.store(true, Ordering::Relaxed);
            state.waker = None;
            (
                mem::take(&mut state.deliveries),
                mem::take(&mut state.dispatches),
            )
        };
        deliveries.into_iter().for_each(Waker::wake);
        dispatches.into_iter().for_each(Waker::wake);
    }
}
