//! The `Send` entry: sync closures from any thread, run as greenlets on a
//! pool of thread-pinned workers, each a hosted greenhack loop over a tokio
//! `current_thread` runtime.
//!
//! A multi-thread runtime (axum, tonic, hyper on `#[tokio::main]`) moves its
//! tasks between threads, so it cannot poll an [`AsAsync`],
//! whose greenlet's stack belongs to one thread. [`spawn_sync`] sends the
//! closure instead: to the least-loaded worker of a [`Pool`], where it runs
//! as a greenlet beside thousands of others, with greenhack's sockets,
//! `sleep`, `spawn` and `join` and tokio's context all available. The caller
//! holds a [`Task`]: a `Send` future that holds only the receiving end of
//! the result and the means to cancel.
//!
//! This is `tokio_util::task::LocalPoolHandle::spawn_pinned` with greenlets
//! inside, and replaces `tokio::task::spawn_blocking`, which costs one OS
//! thread per concurrent sync call.
//!
//! # The path of a call
//!
//! 1. [`Pool::spawn`] boxes the closure into a job and pushes it onto the
//!    chosen worker's inbox: a short locked push, never a wait, so a tokio
//!    worker thread is not blocked. If the worker sleeps, the caller's
//!    runtime thread wakes it once it has no other task ready, so the jobs
//!    its other tasks queue meanwhile go with the same wake (the
//!    *courier*, see below); off a multi-thread runtime, at once;
//! 2. the worker's sync side, one future polled by its loop (under
//!    [`run_with`](super::run_with)), takes every queued job and queues
//!    each as a greenlet task;
//! 3. the greenlet runs; its result (or its panic's payload) is stored in
//!    the state the [`Task`] shares, and the task's waker is handed to the
//!    courier of the runtime thread that polled it, which wakes the whole
//!    round's tasks there once the worker has run every greenlet that was
//!    ready;
//! 4. dropping the [`Task`] (or [`Task::abort`]) sets a flag and wakes the
//!    greenlet's task on its worker, whose next poll unwinds the greenlet's
//!    stack there.
//!
//! A closure that calls [`spawn_sync`] (or its pool's [`Pool::spawn`])
//! while it runs on a worker starts the new job on that same worker, at
//! once, with no hand-off.
//!
//! # Choices
//!
//! * **Dispatch**: to the worker with the fewest jobs in flight (one relaxed
//!   load per worker), starting the scan one worker further each time so
//!   that equal loads go round-robin. A worker whose calls wait long keeps
//!   fewer new ones than a round-robin would give it.
//! * **Panics** come back as [`JoinError`], as from tokio's `JoinHandle`,
//!   not resumed in the awaiting task: a handler decides whether a failed
//!   call is a 500 or a crash (`std::panic::resume_unwind(e.into_panic())`).
//! * **Dropping cancels** (see [`Task`]): a handler future dropped because
//!   its client left stops the sync work it started.
//! * **The courier** is one small tokio task per runtime thread that calls
//!   into a pool (on multi-thread runtimes), spawned on first use; it lives
//!   until its runtime shuts down, and it is the one task woken across
//!   threads for a round of results.
//! * **What crosses threads** is the closure and its result, hence `Send`.
//!   greenhack's sockets are bound to the thread that made them: open them
//!   inside the closure.
//! * **The cost** is two thread hand-offs per *burst* of calls, not per
//!   call: waking a sleeping thread is a system call and, on a shared core,
//!   a context switch to a thread that finds only what was queued before
//!   the wake. With a wake per call, `scripts/bench-axum` (the server on
//!   one core) measured 0.55 to 0.75 context switches per request; batched
//!   through the courier, 0.06, and a fifth less server CPU per request
//!   (13.7 against 17.7 µs, medians of 7 interleaved rounds on a busy
//!   machine; 1.06× an `async fn` handler's, 0.67× `spawn_blocking`'s).

mod courier;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::io;
use std::mem;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use courier::Courier;

use crate::pair::AsAsync;
use crate::reactor::{Footprint, Reactor, TaskFuture};
use crate::task::JoinError;

/// Runs `f` as a greenlet on a worker of the default [`Pool`] and returns a
/// `Send` handle to its result.
///
/// The default pool is created on first use, with one worker per available
/// core ([`std::thread::available_parallelism`]); use [`Pool::builder`] to
/// choose. `f` runs as plain sync code: greenhack's sockets, `sleep`,
/// `spawn` and `join` suspend only its greenlet, and
/// [`exempt`](crate::exempt) waits on any tokio future (tokio's context is
/// entered on the workers).
///
/// ```
/// use std::time::Duration;
///
/// /// Sync code, as written for threads.
/// fn lookup(id: u32) -> String {
///     // Stands in for a database call; only this greenlet waits.
///     greenhack::exempt(tokio::time::sleep(Duration::from_millis(5)));
///     format!("user {id}")
/// }
///
/// # let rt = tokio::runtime::Runtime::new()?;
/// # rt.block_on(async {
/// // On a multi-thread runtime (as in an axum handler):
/// let name = tokio::spawn(async {
///     greenhack::tokio::spawn_sync(|| lookup(7)).await.unwrap()
/// });
/// assert_eq!(name.await.unwrap(), "user 7");
/// # });
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Panics
///
/// If the default pool cannot start (its threads or runtimes cannot be
/// created); [`Pool::builder`] returns that error instead.
pub fn spawn_sync<T, F>(f: F) -> Task<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    static DEFAULT: OnceLock<Pool> = OnceLock::new();
    DEFAULT
        .get_or_init(|| {
            Pool::new().unwrap_or_else(|e| {
                panic!("greenhack: cannot start the default worker pool of spawn_sync: {e}")
            })
        })
        .spawn(f)
}

// ----- the pool ----------------------------------------------------------------

/// Worker threads that run `Send` closures as greenlets; see the module
/// docs of [`greenhack::tokio`](super) and [`spawn_sync`].
///
/// A `Pool` is a handle: clones share the workers. When the last handle is
/// dropped, each worker stops taking jobs, finishes the greenlets it runs,
/// and exits.
///
/// ```
/// let pool = greenhack::tokio::Pool::builder().worker_threads(2).build()?;
/// # let rt = tokio::runtime::Runtime::new()?;
/// let sum = rt.block_on(async {
///     let a = pool.spawn(|| 20);
///     let b = pool.spawn(|| 22);
///     a.await.unwrap() + b.await.unwrap()
/// });
/// assert_eq!(sum, 42);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    workers: Box<[Arc<Worker>]>,
    /// Where the search for the least-loaded worker starts: rotated, so
    /// equal loads spread round-robin.
    next: AtomicUsize,
    /// How each job's greenlet is built.
    greenlets: GreenletSpec,
}

/// How a pool builds each job's greenlet: the [`PoolBuilder`] options that
/// reach [`crate::Builder`].
#[derive(Clone, Copy, Debug, Default)]
struct GreenletSpec {
    /// The stack size, if not the default.
    stack_size: Option<usize>,
    /// Sliced greenlets ([`PoolBuilder::sliced`]).
    sliced: bool,
}

impl GreenletSpec {
    fn builder(self) -> crate::Builder {
        let mut builder = crate::Builder::new();
        if let Some(bytes) = self.stack_size {
            builder = builder.stack_size(bytes);
        }
        if self.sliced {
            // SAFETY: the pool's user promised the contract of
            // `Builder::sliced` for every closure when calling
            // `PoolBuilder::sliced` (itself `unsafe`).
            builder = unsafe { builder.sliced() };
        }
        builder
    }
}

/// How many free stacks a worker keeps for reuse by default. A worker runs
/// as many greenlets as there are calls in flight (a thousand at a thousand
/// connections), far more than the per-thread default
/// ([`POOL_CAPACITY`](crate::stack::POOL_CAPACITY)); beyond its pool, each
/// call would map and unmap a stack, and `munmap`'s TLB flush cost 8% of the
/// server's CPU in `scripts/bench-axum`. A pooled stack keeps at most
/// [`POOL_KEEP_BYTES`](crate::stack::POOL_KEEP_BYTES) resident.
pub const WORKER_STACK_POOL: usize = 4096;

/// The spawning side's view of one worker thread.
struct Worker {
    inbox: Inbox,
    /// Jobs sent to this worker and not yet finished.
    load: AtomicUsize,
}

impl Pool {
    /// A pool with the default configuration: one worker per available
    /// core.
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::build`].
    pub fn new() -> io::Result<Pool> {
        Pool::builder().build()
    }

    /// A builder to choose the number of workers, their names and the
    /// greenlets' stack size.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// Runs `f` as a greenlet on this pool's least-loaded worker; see
    /// [`spawn_sync`].
    ///
    /// Never blocks: the job is pushed onto the worker's queue and the
    /// worker woken if it sleeps, so this is safe to call from a tokio
    /// worker thread. From a multi-thread runtime's thread, that wake waits
    /// until the thread has no other task ready (a small tokio task per
    /// runtime thread does it), so that the jobs of a burst of requests go
    /// together: one wake, not one per job. Called from a closure running
    /// on one of this pool's workers, it starts the job on that worker.
    pub fn spawn<T, F>(&self, f: F) -> Task<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let shared = Arc::new(Shared::new());
        let task = Task {
            shared: shared.clone(),
            detached: false,
        };
        // Called by a closure running on one of this pool's workers: start
        // the job right here, with no hand-off at all.
        if let Some(worker) = self.this_worker() {
            worker.load.fetch_add(1, Ordering::Relaxed);
            Box::new(self.job(shared, worker.clone(), f)).start();
            return task;
        }
        let worker = self.least_loaded().clone();
        worker.load.fetch_add(1, Ordering::Relaxed);
        let job = Box::new(self.job(shared.clone(), worker.clone(), f));
        match worker.inbox.push(job) {
            Ok(None) => {}
            // The worker sleeps: on a multi-thread runtime its courier wakes
            // it once this thread has queued what else it has (see
            // `courier`), else now.
            Ok(Some(waker)) => match Courier::current() {
                Some(courier) => courier.dispatch(waker),
                None => waker.wake(),
            },
            Err(job) => {
                // The worker thread is gone (it panicked): say so to the
                // caller.
                drop(job);
                worker.load.fetch_sub(1, Ordering::Relaxed);
                shared.finish(Err(worker_gone()));
            }
        }
        task
    }

    fn job<T, F>(&self, shared: Arc<Shared<T>>, worker: Arc<Worker>, f: F) -> Job<T, F> {
        Job {
            shared,
            greenlets: self.inner.greenlets,
            worker,
            f,
        }
    }

    /// The worker running on this thread, if it is one of this pool's.
    fn this_worker(&self) -> Option<&Arc<Worker>> {
        let here = WORKER.with(Cell::get);
        if here.is_null() {
            return None;
        }
        self.inner
            .workers
            .iter()
            .find(|w| ptr::eq(Arc::as_ptr(w), here))
    }

    /// The number of worker threads.
    pub fn worker_threads(&self) -> usize {
        self.inner.workers.len()
    }

    fn least_loaded(&self) -> &Arc<Worker> {
        let workers = &self.inner.workers;
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let n = workers.len();
        (0..n)
            .map(|i| &workers[(start + i) % n])
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
            .expect("a pool has at least one worker")
    }
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        for w in &self.workers {
            w.inbox.close();
        }
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let loads: Vec<usize> = self
            .inner
            .workers
            .iter()
            .map(|w| w.load.load(Ordering::Relaxed))
            .collect();
        f.debug_struct("Pool").field("loads", &loads).finish()
    }
}

/// Configures a [`Pool`]; from [`Pool::builder`].
///
/// ```
/// let pool = greenhack::tokio::Pool::builder()
///     .worker_threads(4)
///     .thread_name("db-sync")
///     .stack_size(256 * 1024)
///     .build()?;
/// assert_eq!(pool.worker_threads(), 4);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct PoolBuilder {
    workers: Option<usize>,
    name: Option<String>,
    stack_size: Option<usize>,
    stack_pool: Option<usize>,
    sliced: bool,
}

impl PoolBuilder {
    /// The number of worker threads; default: the available cores.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn worker_threads(mut self, n: usize) -> PoolBuilder {
        assert!(n > 0, "greenhack: a pool needs at least one worker thread");
        self.workers = Some(n);
        self
    }

    /// The workers' thread names are `{name}-{index}`; default
    /// `greenhack-wk`. Linux shows the first 15 bytes.
    pub fn thread_name(mut self, name: impl Into<String>) -> PoolBuilder {
        self.name = Some(name.into());
        self
    }

    /// The stack size of each greenlet (see
    /// [`greenhack::Builder::stack_size`](crate::Builder::stack_size)).
    pub fn stack_size(mut self, bytes: usize) -> PoolBuilder {
        self.stack_size = Some(bytes);
        self
    }

    /// Runs every job as a *sliced* greenlet (see
    /// [`greenhack::Builder::sliced`](crate::Builder::sliced)): the jobs of a
    /// worker share one stack, and a waiting job keeps only its live frames,
    /// on the heap — a few hundred bytes instead of a page or more. For
    /// pools that hold thousands of calls waiting at once (a sync handler
    /// per request of a busy axum server), at the price of a copy per
    /// switch between two jobs.
    ///
    /// ```
    /// # let rt = tokio::runtime::Runtime::new()?;
    /// // SAFETY: the jobs wait only through `exempt` of futures passed by
    /// // value, which keeps no pointer into a waiting job's stack.
    /// let pool = unsafe { greenhack::tokio::Pool::builder().sliced() }.build()?;
    /// let doubled = rt.block_on(pool.spawn(|| {
    ///     greenhack::exempt(tokio::time::sleep(std::time::Duration::from_millis(1)));
    ///     21 * 2
    /// }))?;
    /// assert_eq!(doubled, 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Safety
    ///
    /// Every closure the pool runs must keep the contract of
    /// [`Builder::sliced`](crate::Builder::sliced): while it waits, nothing
    /// holds a reference into its stack, and it does not wait on a future
    /// pinned on its own stack through a reference.
    pub unsafe fn sliced(mut self) -> PoolBuilder {
        self.sliced = true;
        self
    }

    /// How many free stacks each worker keeps for reuse; default
    /// [`WORKER_STACK_POOL`] (see [`greenhack::stack::set_pool_capacity`](crate::stack::set_pool_capacity)).
    pub fn stack_pool_capacity(mut self, stacks: usize) -> PoolBuilder {
        self.stack_pool = Some(stacks);
        self
    }

    /// Starts the worker threads, each with a tokio `current_thread`
    /// runtime (every driver enabled) under its greenhack loop.
    ///
    /// # Errors
    ///
    /// A runtime or a thread could not be created; threads started before
    /// the failure exit.
    pub fn build(self) -> io::Result<Pool> {
        let n = match self.workers {
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        let name = self.name.unwrap_or_else(|| "greenhack-wk".to_owned());
        let mut workers = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let worker = Arc::new(Worker {
                inbox: Inbox::default(),
                load: AtomicUsize::new(0),
            });
            let parks = worker.clone();
            let rt = ::tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_park(move || parks.inbox.before_park())
                .build()?;
            let w = worker.clone();
            let stacks = self.stack_pool.unwrap_or(WORKER_STACK_POOL);
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    crate::stack::set_pool_capacity(stacks);
                    work(rt, &w);
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    workers.iter().for_each(|w: &Arc<Worker>| w.inbox.close());
                    return Err(e);
                }
            }
            workers.push(worker);
        }
        // The threads are detached: they exit once the pool is dropped and
        // their greenlets have finished.
        drop(threads);
        Ok(Pool {
            inner: Arc::new(PoolInner {
                workers: workers.into(),
                next: AtomicUsize::new(0),
                greenlets: GreenletSpec {
                    stack_size: self.stack_size,
                    sliced: self.sliced,
                },
            }),
        })
    }
}

/// A worker thread's body: greenhack's loop over `rt`, its sync side
/// serving the inbox (queuing each job as a greenlet) until the pool is
/// dropped and every greenlet has finished.
fn work(rt: ::tokio::runtime::Runtime, worker: &Worker) {
    WORKER.with(|w| w.set(worker));
    let _gone = Gone(&worker.inbox);
    super::run_with(rt, || {
        crate::exempt(Serve {
            inbox: &worker.inbox,
            taken: Vec::new(),
        });
    });
}

thread_local! {
    /// On a worker thread, its worker (for [`Pool::spawn`]'s local start).
    static WORKER: Cell<*const Worker> = const { Cell::new(ptr::null()) };
    /// On a worker thread, the deliveries of the current round.
    static ROUND: RefCell<Round> = const {
        RefCell::new(Round {
            serve: None,
            couriers: Vec::new(),
        })
    };
}

/// A worker's round: the greenlets that were ready run, and the couriers
/// that got their results are notified together, once each, by an
/// [`EndRound`] task queued behind them (see `courier`).
struct Round {
    /// The waker of the worker's [`Serve`] while it runs (for
    /// [`Inbox::before_park`]); `None` when the worker is not serving.
    serve: Option<Waker>,
    /// The couriers to notify at the end of the round.
    couriers: Vec<Arc<Courier>>,
}

/// Has `courier` notified at the end of this thread's round (at once if
/// this thread is not a worker serving its inbox).
fn notify_after_round(courier: Arc<Courier>) {
    // `Some(first)`: joined the round, the first to; `None`: no round.
    let joined = ROUND
        .try_with(|round| {
            let mut round = round.borrow_mut();
            round.serve.as_ref()?;
            let first = round.couriers.is_empty();
            if !round.couriers.iter().any(|c| Arc::ptr_eq(c, &courier)) {
                round.couriers.push(courier.clone());
            }
            Some(first)
        })
        .ok()
        .flatten();
    match joined {
        // The round's first delivery: queued behind the tasks that are
        // ready, on the loop itself (no system call, no poll of the host's
        // loop).
        Some(true) => match Reactor::try_current() {
            Some(reactor) => drop(reactor.spawn(Box::pin(EndRound))),
            None => end_round(),
        },
        Some(false) => {}
        None => courier.notify(),
    }
}

/// Notifies the couriers of the round that ends.
fn end_round() {
    let couriers = ROUND
        .try_with(|round| mem::take(&mut round.borrow_mut().couriers))
        .unwrap_or_default();
    couriers.iter().for_each(|c| c.notify());
}

/// The task that ends a round: queued at its first delivery, it runs once
/// the tasks ready before it have, and notifies the round's couriers; also
/// if dropped unpolled (the loop shuts down).
struct EndRound;

impl Future for EndRound {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        end_round();
        Poll::Ready(())
    }
}

impl Drop for EndRound {
    fn drop(&mut self) {
        end_round();
    }
}

impl TaskFuture for EndRound {}

// ----- the inbox ---------------------------------------------------------------

/// A worker's job queue: many senders on any thread, one receiver (the
/// worker's sync side), which takes the whole queue at once.
#[derive(Default)]
struct Inbox {
    state: Mutex<InboxState>,
}

#[derive(Default)]
struct InboxState {
    jobs: Vec<Box<dyn Start>>,
    /// The worker's waker while its thread sleeps (or is about to) with
    /// the queue empty: the one who takes it wakes the worker. `None` while
    /// the worker is awake, so that jobs queued meanwhile cost no wake: it
    /// looks at the queue before it sleeps.
    waker: Option<Waker>,
    /// The pool was dropped (or its build failed): no more jobs.
    closed: bool,
    /// The worker stopped receiving (it exited).
    gone: bool,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, InboxState> {
        // A panic while held cannot leave the queue inconsistent: every
        // critical section is a push, a take or a flag.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `job`; returns the worker's waker if it sleeps (the caller
    /// wakes it), or gives the job back if the worker has exited. Pushes
    /// while the worker is awake, or already being woken, find no waker: a
    /// burst of jobs costs one wake.
    fn push(&self, job: Box<dyn Start>) -> Result<Option<Waker>, Box<dyn Start>> {
        let mut state = self.lock();
        if state.gone {
            return Err(job);
        }
        state.jobs.push(job);
        Ok(state.waker.take())
    }

    /// The worker's runtime is about to sleep (its `on_thread_park` hook,
    /// on the worker's thread): leaves the [`Serve`] waker for the next
    /// push, or, if jobs came (or the pool closed) since `Serve` looked,
    /// wakes it, so the runtime polls again instead of sleeping. The lock
    /// orders this against [`push`](Inbox::push): either the push finds
    /// the waker, or this finds the job.
    fn before_park(&self) {
        let Some(serve) = ROUND
            .try_with(|round| round.borrow().serve.clone())
            .ok()
            .flatten()
        else {
            return; // not serving (yet, or any more)
        };
        let mut state = self.lock();
        if state.jobs.is_empty() && !state.closed {
            state.waker = Some(serve);
        } else {
            drop(state);
            serve.wake();
        }
    }

    fn close(&self) {
        let waker = {
            let mut state = self.lock();
            state.closed = true;
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The worker's sync side: starts every queued job as a greenlet, each
/// time it is polled, until the inbox is closed. Its waker, kept in
/// [`Round`], is the one a push wakes while the worker sleeps.
struct Serve<'a> {
    inbox: &'a Inbox,
    /// The taken queue, kept for its capacity: swapped with the inbox's.
    taken: Vec<Box<dyn Start>>,
}

impl Future for Serve<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let _ = ROUND.try_with(|round| {
            let mut round = round.borrow_mut();
            match &mut round.serve {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
        });
        loop {
            {
                let mut state = self.inbox.lock();
                // Awake: pushes need not wake us until `before_park`.
                state.waker = None;
                if state.jobs.is_empty() {
                    if state.closed {
                        return Poll::Ready(());
                    }
                    return Poll::Pending;
                }
                let this = &mut *self;
                mem::swap(&mut state.jobs, &mut this.taken);
            }
            // Started outside the lock: a start may finish a task, which
            // wakes.
            for job in self.taken.drain(..) {
                job.start();
            }
        }
    }
}

/// Leaving the serve loop: deliveries from now on notify their couriers at
/// once, and those of the round in progress go now.
impl Drop for Serve<'_> {
    fn drop(&mut self) {
        let _ = ROUND.try_with(|round| round.borrow_mut().serve = None);
        end_round();
    }
}

/// Marks the inbox gone when the worker's loop ends, normally or by a
/// panic, and refuses what is still queued, so no [`Task`] waits forever.
struct Gone<'a>(&'a Inbox);

impl Drop for Gone<'_> {
    fn drop(&mut self) {
        let jobs = {
            let mut state = self.0.lock();
            state.gone = true;
            mem::take(&mut state.jobs)
        };
        jobs.into_iter().for_each(Start::refuse);
    }
}

// ----- a job -------------------------------------------------------------------

/// A job as the worker sees it: starts itself on the worker's loop.
trait Start: Send {
    /// Queues the closure as a greenlet task on this thread's loop.
    fn start(self: Box<Self>);
    /// Finishes the task unrun: its worker has exited.
    fn refuse(self: Box<Self>);
}

/// A closure on its way to a worker, with the state its [`Task`] shares.
struct Job<T, F> {
    shared: Arc<Shared<T>>,
    greenlets: GreenletSpec,
    worker: Arc<Worker>,
    f: F,
}

impl<T, F> Start for Job<T, F>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    /// On the worker's sync side: queues the closure as a greenlet task.
    fn start(self: Box<Self>) {
        let Job {
            shared,
            greenlets,
            worker,
            f,
        } = *self;
        if shared.cancelled.load(Ordering::Acquire) {
            // Dropped before it started: `f` is dropped here, unrun.
            drop(f);
            worker.load.fetch_sub(1, Ordering::Relaxed);
            shared.finish(Err(JoinError::cancelled()));
            return;
        }
        let future = match greenlets.builder().as_async(f) {
            Ok(future) => future,
            Err(e) => {
                // The stack could not be mapped; the message names the fix.
                worker.load.fetch_sub(1, Ordering::Relaxed);
                shared.finish(Err(JoinError::panicked(Box::new(e.to_string()))));
                return;
            }
        };
        let waker = Reactor::current().spawn(Box::pin(PoolTask {
            future: Some(future),
            shared: shared.clone(),
            worker,
        }));
        shared.set_greenlet_waker(waker);
    }

    fn refuse(self: Box<Self>) {
        self.worker.load.fetch_sub(1, Ordering::Relaxed);
        self.shared.finish(Err(worker_gone()));
    }
}

/// The error of a job whose worker thread has exited (a panic escaped its
/// loop): a panic payload, as the job never ran.
fn worker_gone() -> JoinError {
    JoinError::panicked(Box::new(
        "greenhack: the pool's worker thread has exited; the closure never ran",
    ))
}

/// The reactor's view of a job's greenlet on its worker.
struct PoolTask<T> {
    /// `None` once finished.
    future: Option<AsAsync<T>>,
    shared: Arc<Shared<T>>,
    worker: Arc<Worker>,
}

impl<T> PoolTask<T> {
    /// Unwinds the greenlet (its destructors run, on its own stack) and
    /// reports the cancellation, or the panic of a destructor.
    fn unwind(&mut self) {
        let unwound = panic::catch_unwind(AssertUnwindSafe(|| self.future = None));
        self.done(Err(match unwound {
            Ok(()) => JoinError::cancelled(),
            Err(payload) => JoinError::panicked(payload),
        }));
    }

    fn done(&mut self, result: Result<T, JoinError>) {
        self.worker.load.fetch_sub(1, Ordering::Relaxed);
        self.shared.finish(result);
    }
}

impl<T> Future for PoolTask<T> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.future.is_none() {
            return Poll::Ready(());
        }
        if self.shared.cancelled.load(Ordering::Acquire) {
            self.unwind();
            return Poll::Ready(());
        }
        let future = self.future.as_mut().expect("checked above");
        let polled = panic::catch_unwind(AssertUnwindSafe(|| Pin::new(future).poll(cx)));
        let result = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(v)) => Ok(v),
            Err(payload) => Err(JoinError::panicked(payload)),
        };
        self.future = None;
        self.done(result);
        Poll::Ready(())
    }
}

/// Dropped unfinished (the worker's thread exits): a cancellation.
impl<T> Drop for PoolTask<T> {
    fn drop(&mut self) {
        if self.future.is_some() {
            self.unwind();
        }
    }
}

impl<T> TaskFuture for PoolTask<T> {
    fn record_footprint(&self, into: &mut Footprint) {
        let stack = self.future.as_ref().and_then(AsAsync::resume_footprint);
        *into = Footprint {
            // `poll` reads `cancelled` first.
            object: Arc::as_ptr(&self.shared) as usize,
            stack: stack.unwrap_or_default(),
        }
    }
}

// ----- the state a Task shares -------------------------------------------------

/// Shared by a [`Task`] (any thread) and its greenlet's task (the worker).
struct Shared<T> {
    /// Set by `abort` or the `Task`'s drop; read by each poll on the worker.
    cancelled: AtomicBool,
    state: Mutex<State<T>>,
}

struct State<T> {
    /// The outcome, until the `Task` takes it.
    result: Option<Result<T, JoinError>>,
    finished: bool,
    /// The `Task`'s waker while it waits.
    waiter: Option<Waiter>,
    /// The greenlet task's waker on its worker, once started: a cancel
    /// wakes it so the worker notices at once.
    greenlet: Option<Waker>,
}

/// Who waits for a [`Task`]: its waker, and the courier of the runtime
/// thread that polled it, which wakes it in a batch with others (see
/// `courier`), if it is a multi-thread runtime's.
struct Waiter {
    waker: Waker,
    courier: Option<Arc<Courier>>,
}

impl Waiter {
    /// Wakes the task: through its courier at the end of this worker's
    /// round if it has one, else now.
    fn wake(self) {
        match self.courier {
            Some(courier) => {
                if courier.deliver(self.waker) {
                    notify_after_round(courier);
                }
            }
            None => self.waker.wake(),
        }
    }
}

impl<T> Shared<T> {
    fn new() -> Shared<T> {
        Shared {
            cancelled: AtomicBool::new(false),
            state: Mutex::new(State {
                result: None,
                finished: false,
                waiter: None,
                greenlet: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every critical section only moves values in or out.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self, result: Result<T, JoinError>) {
        let waiter = {
            let mut state = self.lock();
            state.result = Some(result);
            state.finished = true;
            state.greenlet = None;
            state.waiter.take()
        };
        if let Some(w) = waiter {
            w.wake();
        }
    }

    /// Called on the worker once the greenlet is queued. The flag and the
    /// waker are both read under the lock, so a cancel either finds the
    /// waker or is seen here.
    fn set_greenlet_waker(&self, waker: Waker) {
        let mut state = self.lock();
        if state.finished {
            return;
        }
        if self.cancelled.load(Ordering::Acquire) {
            drop(state);
            waker.wake();
        } else {
            state.greenlet = Some(waker);
        }
    }
}

impl<T> Shared<T> {
    /// Sets the flag and wakes the greenlet's task on its worker (a
    /// cross-thread wake interrupts the worker's `epoll`); that poll unwinds
    /// the greenlet. Does nothing once finished.
    fn cancel(&self) {
        let greenlet = {
            let mut state = self.lock();
            if state.finished {
                return;
            }
            self.cancelled.store(true, Ordering::Release);
            state.greenlet.take()
        };
        if let Some(w) = greenlet {
            w.wake();
        }
    }
}

/// The type-erased cancel of an [`AbortHandle`].
///
/// `RefUnwindSafe` so that [`AbortHandle`] is unwind safe as tokio's is:
/// the compiler checks it of `Shared` (its state is behind a `Mutex`,
/// which poisoning makes so, and an atomic).
trait Abort: Send + Sync + std::panic::RefUnwindSafe {
    fn abort(&self);
    fn is_finished(&self) -> bool;
}

impl<T: Send> Abort for Shared<T> {
    fn abort(&self) {
        self.cancel();
    }

    fn is_finished(&self) -> bool {
        self.lock().finished
    }
}

// ----- the caller's handle -----------------------------------------------------

/// A `Send` handle to a closure running as a greenlet on a [`Pool`]
/// worker; from [`spawn_sync`] or [`Pool::spawn`].
///
/// Awaiting it gives the closure's value, or a [`JoinError`]: as with
/// tokio's `JoinHandle`, a panic in the closure is caught on the worker and
/// comes back as an error carrying the payload
/// ([`JoinError::into_panic`], to inspect or to `std::panic::resume_unwind`),
/// and a cancelled closure gives an error whose
/// [`is_cancelled`](JoinError::is_cancelled) is true.
///
/// Await it (or poll it) rather than block a runtime thread on it: from a
/// multi-thread runtime's thread, the wake of a sleeping worker waits until
/// that thread has no other task ready (see [`Pool::spawn`]), so a
/// thread blocked on the task (`futures::executor::block_on` inside a tokio
/// task) would hold back its start; `tokio::task::block_in_place` hands
/// the thread's other tasks on first.
///
/// # Cancellation
///
/// **Dropping a `Task` cancels its closure**, as smol's `Task` does (not
/// tokio's `JoinHandle`, which detaches): when a request handler is
/// dropped because its client went away, the sync work it started stops
/// too. On its worker thread the greenlet's stack is unwound from the wait
/// it is suspended in, so its destructors run there and the future it
/// waits on is dropped; a closure that has not started yet never runs. A
/// closure that never waits runs to its end (cancellation takes effect at
/// a wait). [`detach`](Task::detach) lets it run on unobserved;
/// [`abort`](Task::abort) cancels while keeping the handle.
///
/// ```
/// # let rt = tokio::runtime::Runtime::new()?;
/// # rt.block_on(async {
/// let slow = greenhack::tokio::spawn_sync(|| {
///     greenhack::sleep(std::time::Duration::from_secs(60));
/// });
/// slow.abort();
/// assert!(slow.await.unwrap_err().is_cancelled());
/// # });
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use = "dropping a Task cancels its closure; .await it, or call detach()"]
pub struct Task<T> {
    shared: Arc<Shared<T>>,
    detached: bool,
}

impl<T: Send + 'static> Task<T> {
    /// Cancels the closure (see [Cancellation](Task#cancellation)); awaiting
    /// the task then gives a cancelled [`JoinError`], unless the closure had
    /// already finished. Returns at once; the unwinding happens on the
    /// worker.
    pub fn abort(&self) {
        self.shared.cancel();
    }

    /// A handle that can cancel the closure from elsewhere, without the
    /// right to its result.
    pub fn abort_handle(&self) -> AbortHandle {
        AbortHandle {
            shared: self.shared.clone(),
        }
    }

    /// Lets the closure run to its end without anyone awaiting it.
    pub fn detach(mut self) {
        self.detached = true;
    }
}

impl<T> Task<T> {
    /// True once the closure has finished (returned, panicked or been
    /// cancelled).
    pub fn is_finished(&self) -> bool {
        self.shared.lock().finished
    }
}

impl<T> Future for Task<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.shared.lock();
        if let Some(result) = state.result.take() {
            return Poll::Ready(result);
        }
        assert!(
            !state.finished,
            "greenhack: Task polled after it returned its result"
        );
        if !state
            .waiter
            .as_ref()
            .is_some_and(|w| w.waker.will_wake(cx.waker()))
        {
            // A new waker (the first poll, or the task moved): found with
            // the lock released, as finding a courier may spawn it.
            drop(state);
            let waiter = Waiter {
                waker: cx.waker().clone(),
                courier: Courier::current(),
            };
            let mut state = self.shared.lock();
            if let Some(result) = state.result.take() {
                return Poll::Ready(result);
            }
            state.waiter = Some(waiter);
        }
        Poll::Pending
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if !self.detached {
            self.shared.cancel();
        }
    }
}

impl<T> fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// Cancels a [`Task`]'s closure from anywhere; from [`Task::abort_handle`].
/// `Send`, `Sync` and `Clone`; holds no right to the result.
#[derive(Clone)]
pub struct AbortHandle {
    shared: Arc<dyn Abort>,
}

impl AbortHandle {
    /// As [`Task::abort`].
    pub fn abort(&self) {
        self.shared.abort();
    }

    /// True once the closure has finished.
    pub fn is_finished(&self) -> bool {
        self.shared.is_finished()
    }
}

impl fmt::Debug for AbortHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AbortHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}
