//! Blocking work off the loop: [`unblock`] runs a closure on a bounded pool
//! of plain threads while the calling greenlet waits.
//!
//! A greenlet that calls a blocking function (a C library, `std::fs`, the
//! system resolver, a CPU-heavy step) stalls every other greenlet of its
//! thread, because they share the thread. `unblock` moves that call to a pool
//! thread and waits for its result through [`exempt`](crate::exempt), so the
//! loop keeps running. tokio's `spawn_blocking` and smol's `blocking::unblock`
//! are the models; the defaults are tokio's.
//!
//! # Implementation
//!
//! The pool is process-wide: a queue of jobs under one `Mutex`, a `Condvar`
//! for idle threads, and counters. Submitting a job hands it to an idle
//! thread if there is one (counted as notified, so two submissions never
//! wake the same thread), else starts a thread unless the pool is at its cap
//! ([`set_max_blocking_threads`]), else leaves the job queued for the next
//! thread that finishes. A thread with nothing to do for
//! [`BLOCKING_KEEP_ALIVE`] exits, so an idle program holds no pool threads.
//!
//! Each job reports through a small shared slot (an `Arc` holding the result
//! and the waiter's `Waker`); the waiter is a `Future` over that slot, so the
//! wait works wherever `exempt` works: in a greenlet on greenhack's loop, in
//! an `as_async` polled by tokio, and on a plain thread (where `exempt` runs
//! the loop).

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The default cap on pool threads (tokio's default for its blocking pool).
const DEFAULT_MAX_BLOCKING_THREADS: usize = 512;

/// How long a pool thread waits for a new job before it exits (tokio's
/// default keep-alive).
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Runs `f` on a pool thread and waits for its result without blocking the
/// loop: the calling greenlet suspends, every other greenlet of its thread
/// keeps running, and `f`'s return value comes back.
///
/// ```
/// use std::time::Duration;
///
/// greenhack::run(|| {
///     let ticker = greenhack::spawn(|| {
///         let mut ticks = 0;
///         for _ in 0..5 {
///             greenhack::sleep(Duration::from_millis(2));
///             ticks += 1;
///         }
///         ticks
///     });
///     // A blocking call: the ticker keeps ticking meanwhile.
///     let len = greenhack::unblock(|| {
///         std::thread::sleep(Duration::from_millis(30));
///         std::fs::read_to_string("Cargo.toml").map(|s| s.len())
///     });
///     assert!(len.unwrap() > 0);
///     assert_eq!(ticker.join().unwrap(), 5);
/// });
/// ```
///
/// The wait is an [`exempt`](crate::exempt), so `unblock` works wherever
/// `exempt` does: in a greenlet on greenhack's loop, in an
/// [`as_async`](crate::as_async) polled by another executor (the waiting
/// task is woken when `f` is done), and on a plain thread.
///
/// # The pool
///
/// Threads start on demand, up to [`set_max_blocking_threads`] (512 by
/// default, as tokio's blocking pool); beyond that, calls queue and run in
/// order as threads free up. A thread idle for 10 seconds exits.
///
/// # Panics
///
/// A panic in `f` is caught on the pool thread (whose panic hook prints it,
/// as for any thread) and re-raised here with its original payload, so
/// `catch_unwind` around `unblock` sees what `f` panicked with. `unblock`
/// also panics where [`exempt`](crate::exempt) does, and if the first pool
/// thread cannot be started.
///
/// # Cancellation
///
/// `f` cannot be interrupted. If the caller stops waiting (its greenlet is
/// cancelled or its `as_async` dropped), `f` still runs to the end on its
/// pool thread and its result is dropped there.
#[track_caller]
pub fn unblock<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState {
            result: None,
            waker: None,
        }),
    });
    let job_slot = slot.clone();
    submit(Box::new(move || {
        let result = panic::catch_unwind(AssertUnwindSafe(f));
        let waker = {
            let mut state = lock(&job_slot.state);
            state.result = Some(result);
            state.waker.take()
        };
        // Woken with no lock held: the waker may run the waiter's executor.
        if let Some(w) = waker {
            w.wake();
        }
    }));
    match crate::pair::exempt(Completion { slot }) {
        Ok(v) => v,
        Err(payload) => panic::resume_unwind(payload),
    }
}

/// Sets the most pool threads [`unblock`] may run at once (process-wide);
/// calls beyond it wait in a queue. Threads already running above a lowered
/// cap finish their current job first, then exit as they go idle.
///
/// ```
/// greenhack::set_max_blocking_threads(4);
/// assert_eq!(greenhack::unblock(|| 2 + 2), 4);
/// ```
///
/// # Panics
///
/// If `n` is 0: nothing could ever run.
pub fn set_max_blocking_threads(n: usize) {
    assert!(
        n > 0,
        "greenhack::set_max_blocking_threads(0): the pool needs at least one thread"
    );
    MAX_THREADS.store(n, Ordering::Relaxed);
    // Wake the idle threads so that those above the new cap exit.
    POOL.idle.notify_all();
}

// ----- the completion slot ------------------------------------------------------

/// What a job hands back: the result (or panic payload) and who waits.
struct Slot<T> {
    state: Mutex<SlotState<T>>,
}

struct SlotState<T> {
    result: Option<std::thread::Result<T>>,
    waker: Option<Waker>,
}

/// The waiter's side: ready once the job stored its result.
struct Completion<T> {
    slot: Arc<Slot<T>>,
}

impl<T> Future for Completion<T> {
    type Output = Result<T, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = lock(&self.slot.state);
        if let Some(r) = state.result.take() {
            return Poll::Ready(r);
        }
        match &mut state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> fmt::Debug for Completion<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unblock")
    }
}

// ----- the pool --------------------------------------------------------------------

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    state: Mutex<PoolState>,
    /// Idle threads wait here.
    idle: Condvar,
}

struct PoolState {
    queue: VecDeque<Job>,
    /// Threads alive (running a job, idle, or starting).
    threads: usize,
    /// Threads waiting on `idle` that no submission has claimed yet.
    idle: usize,
    /// Wake-ups sent and not yet taken: a woken thread takes one, so each
    /// submission that found an idle thread wakes exactly one.
    notified: usize,
}

static POOL: Pool = Pool {
    state: Mutex::new(PoolState {
        queue: VecDeque::new(),
        threads: 0,
        idle: 0,
        notified: 0,
    }),
    idle: Condvar::new(),
};

static MAX_THREADS: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_BLOCKING_THREADS);

/// Locks, ignoring poison: every critical section here leaves the state
/// consistent (jobs run outside the lock, and cannot unwind into it).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Queues `job`, and wakes or starts a thread for it.
#[track_caller]
fn submit(job: Job) {
    let mut state = lock(&POOL.state);
    state.queue.push_back(job);
    if state.idle > 0 {
        state.idle -= 1;
        state.notified += 1;
        drop(state);
        POOL.idle.notify_one();
        return;
    }
    if state.threads >= MAX_THREADS.load(Ordering::Relaxed) {
        return; // a busy thread takes it when done
    }
    state.threads += 1;
    let spawned = std::thread::Builder::new()
        .name("greenhack-blocking".into())
        .spawn(worker);
    if let Err(e) = spawned {
        state.threads -= 1;
        if state.threads == 0 {
            // Nobody would ever run the job: take it back and say so.
            state.queue.pop_back();
            drop(state);
            panic!("greenhack::unblock: cannot start a pool thread: {e}");
        }
        // Otherwise a running thread takes it when done.
    }
}

/// A pool thread: runs jobs until it has been idle for the keep-alive, or
/// is above the cap.
fn worker() {
    let mut state = lock(&POOL.state);
    loop {
        while let Some(job) = state.queue.pop_front() {
            drop(state);
            // A job catches its closure's panic; nothing unwinds to here.
            job();
            state = lock(&POOL.state);
        }
        if state.threads > MAX_THREADS.load(Ordering::Relaxed) {
            state.threads -= 1;
            return;
        }
        state.idle += 1;
        loop {
            let (s, timeout) = POOL
                .idle
                .wait_timeout(state, BLOCKING_KEEP_ALIVE)
                .unwrap_or_else(|e| e.into_inner());
            state = s;
            if state.notified > 0 {
                // Claimed by a submission, which already took us off `idle`.
                state.notified -= 1;
                break;
            }
            let over_cap = state.threads > MAX_THREADS.load(Ordering::Relaxed);
            if timeout.timed_out() || over_cap {
                state.idle -= 1;
                state.threads -= 1;
                return;
            }
            // A spurious wake-up, or a cap change that keeps us: wait on.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Submissions that each find an idle thread wake one thread apiece:
    /// two jobs that wait for each other both run.
    #[test]
    fn concurrent_jobs_run_on_separate_threads() {
        // Two idle threads first.
        let warm: Vec<_> = (0..2)
            .map(|_| {
                std::thread::spawn(|| unblock(|| std::thread::sleep(Duration::from_millis(20))))
            })
            .collect();
        warm.into_iter().for_each(|t| t.join().unwrap());
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let (a, b) = (barrier.clone(), barrier);
        let t = std::thread::spawn(move || unblock(move || a.wait().is_leader()));
        let here = unblock(move || b.wait().is_leader());
        assert_ne!(here, t.join().unwrap());
    }
}
