//! The per-thread event loop: I/O readiness over `mio`, timers, a ready
//! queue of tasks, and cross-thread wake-ups.
//!
//! The reactor reports readiness and fires timers by waking `Waker`s; it
//! does not know who waits (a greenlet, a plain thread, another executor's
//! task). The layers above turn a wait into a suspension (`pair`) and a
//! socket operation into a retry loop (`net`).
//!
//! | file | concept |
//! | --- | --- |
//! | [`io`] | sources registered with `epoll`, latched readiness, waiters |
//! | [`timers`] | deadlines and their wakers |
//! | [`run_queue`] | spawned tasks, the ready queue and its driver lane, what a wake does, prefetching |
//! | [`task_waker`] | task wakers packed into the waker's word (no allocation, no reference count); the registry of reactors for wakes from other threads |
//! | [`hosted`] | running this loop inside another executor's loop |
//! | `tokio_note` | the note after tokio's "no reactor running" panic (feature `tokio`) |
//! | [`slab`] | stable indices for sources and tasks |
//! | here | the thread's reactor, the turn, [`block_on`], thread exit |
//!
//! # Who drives it
//!
//! Each thread that uses greenhack's I/O, timers or `spawn` gets one
//! [`Reactor`], created on first use. It is driven either
//!
//! * **standalone**, by [`block_on`], which runs on the thread's own stack
//!   whenever code outside any greenlet waits (`exempt`, `JoinHandle::join`
//!   and the blocking-looking socket calls on a plain thread). While it runs
//!   it polls the future it was asked to wait for whenever that future's
//!   waker fired, polls every task in the ready queue, and waits in `epoll`
//!   for I/O, the earliest timer, or a wake-up from another thread;
//! * or **hosted**, from the polls of another executor's tasks (see
//!   [`hosted`]): the `epoll` fd is registered with the host's own reactor
//!   and each turn is non-blocking.
//!
//! Polls made by the loop itself are marked ([`loop_poll`]), so a greenlet
//! can tell whether greenhack's loop or a foreign executor polls it.
//!
//! # Thread exit
//!
//! A reactor is owned by a thread-local whose destructor shuts it down: it
//! drops every task (which unwinds each spawned greenlet, so destructors run
//! and sockets close), wakes the remaining I/O waiters and drops the timers.
//! Without that, a task holding a socket (which holds the reactor) would
//! keep the reactor, its `epoll` fd and every stack alive forever. The
//! pointer through which code finds the reactor is a separate thread-local
//! without a destructor, so a `Drop` that waits during that shutdown still
//! finds its reactor. A wait in a thread-local's destructor that runs after
//! the owner's makes a new reactor, owned (and shut down in turn) by a
//! second thread-local first touched then.
//!
//! # Busy polling
//!
//! Standalone, a loop that runs out of work can first poll `epoll` without
//! sleeping for a while ([`Reactor::set_busy_poll`], off by default) and
//! sleep only if nothing arrives meanwhile. A thread asleep in
//! `epoll_wait` is woken by whoever sends to its sockets, and that costs the
//! *sender*: the kernel's wake-up of a sleeping thread on another CPU (an
//! inter-processor interrupt, a VM exit under virtualization) runs in the
//! sender's system call. Measured with `perf` under the kitchen benchmark
//! (`scripts/bench-kitchen`), PostgreSQL spent 13% of its cycles waking the
//! half-idle server in `sock_def_readable`, 4% once the server busy-polled.
//! Hosted loops never busy-poll: their host decides when to sleep.
//!
//! # Yielding before sleeping
//!
//! Standalone, a loop that runs out of work (after any busy polling) first
//! gives up its CPU once (`sched_yield`) before it enters `epoll_wait`,
//! which then sleeps only if nothing arrived meanwhile
//! ([`Reactor::set_yield_before_sleep`], on by default). When the loop
//! shares its CPU with the threads that feed it (clients, a load generator,
//! other loops), they run during the yield, and what they send is there
//! when the loop looks again: the loop goes on without a sleep and a
//! wake-up. Measured with `scripts/bench-scaling`, two loops sharing two
//! CPUs with the load generator at 50 echo connections slept 0.31 times per
//! request and served 0.78–0.85× tokio's req/s; yielding first,
//! 1.13–1.19×. With the CPU to itself the yield returns at once: one
//! `sched_yield` per sleep, not per request. The price is latency on a
//! contended CPU: an event that arrives while the loop is yielded waits for
//! the threads it yielded to.
//!
//! `EINTR` from `epoll_wait` counts as a turn with no events.

pub(crate) mod hosted;
pub(crate) mod io;
pub(crate) mod run_queue;
mod slab;
pub(crate) mod task_waker;
pub(crate) mod timers;
#[cfg(feature = "tokio")]
mod tokio_note;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use mio::{Events, Poll as MioPoll, Registry, Token};

pub(crate) use io::Direction;
use run_queue::TaskSlot;
pub(crate) use run_queue::{Footprint, TaskFuture};
use slab::Slab;
pub(crate) use timers::{Deadline, Sleep};

/// The token of the cross-thread waker; I/O tokens are slot index + 1.
const WAKE_TOKEN: Token = Token(0);

/// While tasks stay ready, the standalone loop turns (a non-blocking
/// `epoll_wait`, due timers, wakes from other threads) once per this many
/// polls, in the middle of a round if need be: tokio's `event_interval`
/// default (61 task polls). I/O and timers wait at most that many polls
/// behind busy greenlets, however many are ready at once. (Counted in
/// rounds, as it once was, a server with 500 busy connections polled up to
/// 61 × 500 tasks between two looks at its sockets: its database answers
/// waited milliseconds to be read.)
const EVENT_INTERVAL: u32 = 61;

/// The part of a reactor other threads may touch.
struct Shared {
    /// Tasks woken from other threads: (slot, generation).
    remote: Mutex<Vec<(u32, u32)>>,
    /// Interrupts `epoll_wait`.
    waker: mio::Waker,
}

/// A thread's event loop. See the module documentation.
pub(crate) struct Reactor {
    /// The host executor's side, once this loop has been driven hosted.
    /// Declared (so dropped) before `poll`: it registers `poll`'s fd.
    hosted: hosted::HostLink,
    /// Owned by whoever runs a turn; borrowed only inside `turn`.
    poll: RefCell<MioPoll>,
    events: RefCell<Events>,
    /// A handle for (de)registering sources at any time.
    registry: Registry,
    /// I/O sources; token = index + 1.
    io: RefCell<Slab<io::IoSlot>>,
    timers: RefCell<timers::Timers>,
    tasks: RefCell<Slab<TaskSlot>>,
    /// Source of task generations.
    spawn_seq: Cell<u32>,
    /// Tasks to poll: (slot, generation).
    ready: RefCell<VecDeque<(u32, u32)>>,
    /// The driver lane: woken driver tasks, polled ahead of `ready`
    /// (`run_queue`, "The driver lane").
    drivers: RefCell<VecDeque<(u32, u32)>>,
    shared: Arc<Shared>,
    /// This reactor's id in the task wakers (`task_waker`).
    id: task_waker::ReactorId,
    /// Set by `start_loop`: blocking this thread is what its owner wants,
    /// even when a foreign executor also runs here.
    explicit_loop: Cell<bool>,
    /// Woken when the last task finishes (`run` waits for that).
    idle_waiters: RefCell<Vec<Waker>>,
    /// A greenlet yielded since the last turn: the next round turns.
    yielded: Cell<bool>,
    /// Polls (of tasks, and of the future `block_on` waits for) since the
    /// last turn; see [`EVENT_INTERVAL`].
    polls_since_turn: Cell<u32>,
    /// How long a turn that may block polls without sleeping first (see
    /// "Busy polling"); zero: it sleeps at once.
    busy_poll: Cell<Duration>,
    /// Whether a turn that may block yields the CPU and looks again first
    /// (see "Yielding before sleeping"); on by default.
    yield_before_sleep: Cell<bool>,
}

thread_local! {
    /// This thread's reactor, or null. No destructor, so it can be read at
    /// any point of thread exit (see the module docs).
    static CURRENT: Cell<*const Reactor> = const { Cell::new(ptr::null()) };
    /// Owns this thread's reactor; shuts it down when the thread exits.
    static OWNER: Owner = const { Owner(RefCell::new(None)) };
    /// Owns a reactor made after OWNER was destroyed (a thread-local's
    /// destructor that waits, late in thread exit). First touched then, so
    /// its own destructor is registered then and runs after that one.
    static LATE_OWNER: Owner = const { Owner(RefCell::new(None)) };
    /// Set while greenhack's loop polls a task or the future it blocks on.
    static LOOP_POLLING: Cell<bool> = const { Cell::new(false) };
}

/// The owner of a thread's reactor; see "Thread exit" in the module docs.
struct Owner(RefCell<Option<Rc<Reactor>>>);

impl Drop for Owner {
    fn drop(&mut self) {
        let Some(reactor) = self.0.get_mut().take() else {
            return;
        };
        reactor.shutdown();
        CURRENT.with(|c| c.set(ptr::null()));
        drop(reactor);
    }
}

impl Reactor {
    /// This thread's reactor, created on first use.
    pub(crate) fn current() -> Rc<Reactor> {
        match Reactor::try_current() {
            Some(r) => r,
            None => Reactor::install(),
        }
    }

    /// Runs `f` with this thread's reactor, if it exists, without taking a
    /// reference count (the wake path: one per hand-off between greenlets).
    #[inline]
    pub(crate) fn with_current<R>(f: impl FnOnce(&Reactor) -> R) -> Option<R> {
        let p = CURRENT.with(Cell::get);
        // SAFETY: CURRENT holds `Rc::as_ptr` of the reactor OWNER (or
        // LATE_OWNER) keeps alive, and is cleared before the owner lets go
        // of it; `f` cannot make the owner let go (that happens only in the
        // owner's thread-local destructor, which holds its own reference
        // while it shuts the reactor down).
        (!p.is_null()).then(|| f(unsafe { &*p }))
    }

    /// This thread's reactor if it exists.
    pub(crate) fn try_current() -> Option<Rc<Reactor>> {
        let p = CURRENT.with(Cell::get);
        if p.is_null() {
            return None;
        }
        // SAFETY: CURRENT holds `Rc::as_ptr` of the reactor OWNER keeps
        // alive; it is cleared before OWNER lets go of it.
        unsafe {
            Rc::increment_strong_count(p);
            Some(Rc::from_raw(p))
        }
    }

    #[cold]
    fn install() -> Rc<Reactor> {
        // tokio's missing-runtime panic gets a note naming the fix.
        #[cfg(feature = "tokio")]
        tokio_note::install();
        let reactor =
            Rc::new(Reactor::new().expect("greenhack: cannot create the event loop (epoll)"));
        // Once OWNER is destroyed (a destructor running late in thread exit
        // waits), LATE_OWNER keeps the new reactor for the rest of the exit,
        // so that a timer armed by one call is the one the next call's wait
        // turns. Only if that is gone too does the reactor serve one call
        // and drop with it.
        let owned = OWNER
            .try_with(|o| *o.0.borrow_mut() = Some(reactor.clone()))
            .or_else(|_| LATE_OWNER.try_with(|o| *o.0.borrow_mut() = Some(reactor.clone())));
        if owned.is_ok() {
            CURRENT.with(|c| c.set(Rc::as_ptr(&reactor)));
        }
        reactor
    }

    fn new() -> std::io::Result<Reactor> {
        let poll = MioPoll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = mio::Waker::new(poll.registry(), WAKE_TOKEN)?;
        let shared = Arc::new(Shared {
            remote: Mutex::new(Vec::new()),
            waker,
        });
        let id = task_waker::ReactorId::register(&shared)?;
        Ok(Reactor {
            poll: RefCell::new(poll),
            events: RefCell::new(Events::with_capacity(1024)),
            registry,
            io: RefCell::new(Slab::new()),
            timers: RefCell::new(timers::Timers::default()),
            tasks: RefCell::new(Slab::new()),
            spawn_seq: Cell::new(0),
            ready: RefCell::new(VecDeque::new()),
            drivers: RefCell::new(VecDeque::new()),
            shared,
            id,
            explicit_loop: Cell::new(false),
            idle_waiters: RefCell::new(Vec::new()),
            yielded: Cell::new(false),
            polls_since_turn: Cell::new(0),
            busy_poll: Cell::new(Duration::ZERO),
            yield_before_sleep: Cell::new(true),
            hosted: hosted::HostLink::default(),
        })
    }

    pub(crate) fn set_explicit_loop(&self) {
        self.explicit_loop.set(true);
    }

    pub(crate) fn has_explicit_loop(&self) -> bool {
        self.explicit_loop.get()
    }

    pub(crate) fn clear_explicit_loop(&self) {
        self.explicit_loop.set(false);
    }

    // ----- the turn ----------------------------------------------------------

    /// Waits for events (at most `timeout`), then wakes what they concern:
    /// I/O waiters, due timers and tasks woken from other threads. Returns
    /// whether anything happened.
    fn turn(&self, timeout: Option<Duration>) -> std::io::Result<bool> {
        self.polls_since_turn.set(0);
        let mut wakers = Vec::new();
        let mut events_seen = false;
        // A turn that must not block, on a loop with no I/O source, has
        // nothing to ask epoll: the only other registration, the
        // cross-thread waker, just interrupts blocking waits (its queue is
        // read below either way). Channels and locks between greenlets with
        // no socket in sight then cost no system call per round. Not when
        // hosted: the host's edge-triggered readiness of our epoll fd needs
        // each turn to consume what is ready.
        let nothing_to_poll = timeout == Some(Duration::ZERO)
            && self.io.borrow().len() == 0
            && !self.hosted.is_active();
        if !nothing_to_poll {
            let mut poll = self.poll.borrow_mut();
            let mut events = self.events.borrow_mut();
            // Phase 1: wait. EINTR is a turn with no events.
            match self.wait_for_events(&mut poll, &mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => events.clear(),
                Err(e) => return Err(e),
            }
            // Phase 2: latch readiness and collect the waiters.
            let mut io = self.io.borrow_mut();
            for event in events.iter() {
                events_seen = true;
                if event.token() == WAKE_TOKEN {
                    continue;
                }
                if let Some(slot) = io.get_mut(event.token().0 - 1) {
                    slot.latch(event, &mut wakers);
                }
            }
        }
        // Phase 3: due timers, every deadline at or before now.
        self.timers.borrow_mut().fire_due(&mut wakers);
        // Phase 4: tasks woken from other threads.
        let remote =
            std::mem::take(&mut *self.shared.remote.lock().unwrap_or_else(|e| e.into_inner()));
        let woke = events_seen || !wakers.is_empty() || !remote.is_empty();
        for (index, generation) in remote {
            self.wake_task(index, generation);
        }
        // Phase 5: wake, with no borrow held: a waker may run arbitrary code.
        wakers.into_iter().for_each(Waker::wake);
        Ok(woke)
    }

    /// Phase 1 of a turn: fills `events` with what is ready, waiting up to
    /// `timeout` (`None`: for good). With a busy-poll budget (see "Busy
    /// polling"), a wait that may block first polls without blocking for up
    /// to that budget (never past `timeout`); then, unless turned off, it
    /// yields the CPU once (see "Yielding before sleeping"); it blocks for
    /// the rest of `timeout` only if nothing came.
    fn wait_for_events(
        &self,
        poll: &mut MioPoll,
        events: &mut Events,
        mut timeout: Option<Duration>,
    ) -> std::io::Result<()> {
        // A turn that must not block just polls; so does every hosted turn
        // (the host decides when to sleep).
        if timeout == Some(Duration::ZERO) || self.hosted.is_active() {
            return poll.poll(events, timeout);
        }
        let budget = self.busy_poll.get();
        if !budget.is_zero() {
            let budget = timeout.map_or(budget, |t| t.min(budget));
            let start = std::time::Instant::now();
            loop {
                poll.poll(events, Some(Duration::ZERO))?;
                if !events.is_empty() {
                    return Ok(());
                }
                let spent = start.elapsed();
                if spent >= budget {
                    timeout = timeout.map(|t| t.saturating_sub(spent));
                    break;
                }
                std::hint::spin_loop();
            }
        }
        // Unless the busy poll used up `timeout`.
        if self.yield_before_sleep.get() && timeout != Some(Duration::ZERO) {
            // What the threads we yield to send is ready when `epoll_wait`
            // is entered, which then returns at once, without a sleep.
            let start = timeout.map(|_| std::time::Instant::now());
            std::thread::yield_now();
            // The yield may have lasted: the timer that set `timeout` must
            // not fire late by as much.
            if let (Some(t), Some(start)) = (timeout, start) {
                timeout = Some(t.saturating_sub(start.elapsed()));
            }
        }
        poll.poll(events, timeout)
    }

    /// Sets how long this loop polls for I/O without sleeping before it
    /// sleeps in `epoll_wait` (see "Busy polling"). Zero turns it off.
    pub(crate) fn set_busy_poll(&self, budget: Duration) {
        self.busy_poll.set(budget);
    }

    /// Turns yielding before sleeping on or off for this loop (see
    /// "Yielding before sleeping").
    pub(crate) fn set_yield_before_sleep(&self, on: bool) {
        self.yield_before_sleep.set(on);
    }

    /// Counts a poll towards the next turn (see [`EVENT_INTERVAL`]).
    #[inline]
    fn count_poll(&self) {
        self.polls_since_turn
            .set(self.polls_since_turn.get().saturating_add(1));
    }

    /// True once [`EVENT_INTERVAL`] polls ran since the last turn.
    #[inline]
    fn turn_due(&self) -> bool {
        self.polls_since_turn.get() >= EVENT_INTERVAL
    }

    /// Records a `yield_now`: the loop turns (looks for I/O, timers) before
    /// the yielder runs again, so a yield loop never starves I/O.
    pub(crate) fn note_yield(&self) {
        self.yielded.set(true);
    }

    /// True when a task is queued to run.
    fn has_ready(&self) -> bool {
        !self.ready.borrow().is_empty() || !self.drivers.borrow().is_empty()
    }

    // ----- thread exit -------------------------------------------------------

    /// Drops every task (unwinding its greenlet), wakes every I/O waiter and
    /// drops every timer: what is left holds no reference to the reactor.
    fn shutdown(&self) {
        self.cancel_all();
        self.wake_all_io_waiters();
        let timers = self.timers.borrow_mut().drain();
        drop(timers);
        self.hosted.shutdown();
    }

    /// Drops every task of this loop now, unwinding each spawned greenlet
    /// (their joiners see a cancellation), and wakes whoever waits for the
    /// loop to be idle. A task's destructors may spawn more: those are
    /// dropped too, for a bounded number of rounds (a destructor that always
    /// spawns again would otherwise never let the loop stop).
    pub(crate) fn cancel_all(&self) {
        for _ in 0..16 {
            let tasks = self.tasks.borrow_mut().drain();
            if tasks.is_empty() {
                break;
            }
            self.ready.borrow_mut().clear();
            self.drivers.borrow_mut().clear();
            // Dropped outside the borrow: destructors run greenlet code.
            drop(tasks);
        }
        let idle = std::mem::take(&mut *self.idle_waiters.borrow_mut());
        idle.into_iter().for_each(Waker::wake);
    }
}

// ----- who polls ----------------------------------------------------------------

/// Runs `f` marked as a poll made by greenhack's loop (see [`is_loop_poll`]).
pub(crate) fn loop_poll<R>(f: impl FnOnce() -> R) -> R {
    let prev = LOOP_POLLING.with(|l| l.replace(true));
    let _restore = RestoreLoopPolling(prev);
    f()
}

/// True inside a poll made by greenhack's loop (see [`loop_poll`]).
pub(crate) fn is_loop_poll() -> bool {
    LOOP_POLLING.with(Cell::get)
}

/// Reads and clears the mark [`loop_poll`] sets, for a poll that passes
/// control on (an `AsAsync` resuming its greenlet); the returned guard
/// restores it.
pub(crate) fn take_loop_poll() -> (bool, impl Drop) {
    let prev = LOOP_POLLING.with(|l| l.replace(false));
    (prev, RestoreLoopPolling(prev))
}

/// Restores the loop-polling mark on scope exit, also on unwind.
struct RestoreLoopPolling(bool);

impl Drop for RestoreLoopPolling {
    fn drop(&mut self) {
        let _ = LOOP_POLLING.try_with(|l| l.set(self.0));
    }
}

// ----- driving the loop on this thread -------------------------------------------

/// Runs the reactor on this thread until `future` completes: the standalone
/// loop.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    // With a tokio runtime installed underneath, tokio's loop is the one
    // that blocks, and greenhack's runs hosted inside it.
    let future = match hosted::block_on_host(future) {
        Ok(v) => return v,
        Err(future) => future,
    };
    let reactor = Reactor::current();
    let main = MainWaker::new(&reactor);
    let waker = Waker::from(main.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if main.woken.swap(false, Ordering::Acquire) {
            reactor.count_poll();
            if let Poll::Ready(v) = loop_poll(|| future.as_mut().poll(&mut cx)) {
                return v;
            }
        }
        reactor.run_ready();
        let busy = main.woken.load(Ordering::Acquire) || reactor.has_ready();
        // While greenlets keep each other busy (a channel ping-pong, a lock
        // handed on), a non-blocking `epoll_wait` between every round would
        // be a system call per hand-off; look for events every
        // EVENT_INTERVAL polls instead, as tokio does (`run_ready` also
        // turns inside a long round). A greenlet that yielded asks for
        // exactly that turn (`yield_now` lets I/O in, as tokio's does).
        let yielded = reactor.yielded.replace(false);
        if busy && !yielded && !reactor.turn_due() {
            continue;
        }
        let timeout = if busy {
            Some(Duration::ZERO)
        } else {
            reactor.next_timeout()
        };
        reactor.turn(timeout).expect("greenhack: epoll_wait failed");
        if reactor.is_signal_target() {
            run_signal_hook();
        }
    }
}

/// Blocks the thread until `future` completes, turning the reactor for its
/// I/O and timers but running no other task (those woken meanwhile stay
/// queued for the loop). For a wait that must not switch: one made during a
/// panic's unwinding, where every other greenlet of the thread would
/// observe `std::thread::panicking()`.
pub(crate) fn block_on_alone<F: Future>(future: F) -> F::Output {
    let reactor = Reactor::current();
    let main = MainWaker::new(&reactor);
    let waker = Waker::from(main.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if main.woken.swap(false, Ordering::Acquire) {
            if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
                return v;
            }
        }
        let timeout = if main.woken.load(Ordering::Acquire) {
            Some(Duration::ZERO)
        } else {
            reactor.next_timeout()
        };
        reactor.turn(timeout).expect("greenhack: epoll_wait failed");
    }
}

/// Resolves when the thread's reactor has no live task.
pub(crate) struct AllTasksDone;

impl Future for AllTasksDone {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let reactor = Reactor::current();
        if reactor.live_tasks() == 0 {
            return Poll::Ready(());
        }
        reactor.idle_waiters.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}

/// The waker of the future `block_on` waits for.
struct MainWaker {
    woken: AtomicBool,
    thread: std::thread::ThreadId,
    shared: Arc<Shared>,
}

impl MainWaker {
    fn new(reactor: &Reactor) -> Arc<MainWaker> {
        Arc::new(MainWaker {
            woken: AtomicBool::new(true),
            thread: std::thread::current().id(),
            shared: reactor.shared.clone(),
        })
    }
}

impl Wake for MainWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if std::thread::current().id() != self.thread {
            let _ = self.shared.waker.wake();
        }
    }
}

// ----- a signal that reaches one loop ---------------------------------------------

/// The `mio::Waker` of the reactor a signal handler wakes
/// ([`wake_signal_target`]); leaked so the handler can use it at any time.
static SIGNAL_TARGET: AtomicPtr<Shared> = AtomicPtr::new(ptr::null_mut());

/// What the signal target's loop runs after a turn (a `fn()`, 0 if none):
/// set by the layer above (`debug::dump_on_signal`), so the loop needs no
/// knowledge of what a dump is.
static SIGNAL_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Earlier signal targets (`Arc::into_raw` of their `Shared`, as
/// addresses): never freed, since a signal handler may still hold one.
static RETIRED_SIGNAL_TARGETS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

impl Reactor {
    /// Makes this reactor the one [`wake_signal_target`] wakes; it then runs
    /// `hook` between turns.
    pub(crate) fn make_signal_target(&self, hook: fn()) {
        SIGNAL_HOOK.store(hook as usize, Ordering::Release);
        if self.is_signal_target() {
            return;
        }
        let target = Arc::into_raw(self.shared.clone()) as *mut Shared;
        let previous = SIGNAL_TARGET.swap(target, Ordering::AcqRel);
        if !previous.is_null() {
            // A signal handler may have loaded it just before the swap and
            // be waking it now: it is never freed, but kept where it stays
            // reachable (one per move of the target to another thread).
            RETIRED_SIGNAL_TARGETS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(previous as usize);
        }
    }

    fn is_signal_target(&self) -> bool {
        ptr::eq(
            SIGNAL_TARGET.load(Ordering::Relaxed),
            Arc::as_ptr(&self.shared),
        )
    }
}

fn run_signal_hook() {
    let hook = SIGNAL_HOOK.load(Ordering::Acquire);
    if hook != 0 {
        // SAFETY: non-zero values are only stored from a `fn()` by
        // `make_signal_target`.
        let hook = unsafe { std::mem::transmute::<usize, fn()>(hook) };
        hook();
    }
}

/// Wakes the signal target's `epoll_wait`. Async-signal-safe: an atomic
/// load and an eventfd `write`.
pub(crate) fn wake_signal_target() {
    let target = SIGNAL_TARGET.load(Ordering::Acquire);
    if !target.is_null() {
        // SAFETY: stored from a leaked Arc, never freed.
        let _ = unsafe { &*target }.waker.wake();
    }
}
