//! The per-thread event loop: I/O readiness over `mio`, timers, a ready
//! queue of tasks, and cross-thread wake-ups.
//!
//! # Implementation
//!
//! Each thread that uses greenhack's I/O, timers or `spawn` gets one
//! [`Reactor`], created on first use. It is driven by [`block_on`], which runs
//! on the thread's own stack whenever code outside any greenlet waits (that is
//! `exempt`, `JoinHandle::join` and the blocking-looking socket calls on a
//! plain thread). While it runs it:
//!
//! 1. polls the future it was asked to wait for, whenever that future's waker
//!    fired;
//! 2. polls every task in the ready queue (a spawned greenlet is a task: its
//!    `AsAsync` future);
//! 3. waits in `epoll` for I/O, for the earliest timer, or for a wake-up from
//!    another thread, then turns what happened into wakes.
//!
//! # I/O readiness
//!
//! Sources are registered edge-triggered, for reading and writing at once,
//! when a socket is created. Readiness reported by `epoll` is latched in the
//! source's slot until the socket operation that consumes it returns
//! `WouldBlock`, so an edge that arrives while nobody waits is never lost. As
//! with mio, an operation must be retried until `WouldBlock` before waiting:
//! [`Reactor::io`] is that loop. The one exception is a short stream read,
//! which proves the receive buffer drained: the socket layer then drops the
//! latch itself (`mark_drained`) and its next read waits first, saving a
//! system call that could only say `WouldBlock`. Readers and writers wait
//! separately; several greenlets may wait on one direction of one socket
//! (all are woken).
//!
//! # Wakers
//!
//! A task's waker is a small `Arc` holding the task's slot index and
//! generation, so a wake that arrives after the task finished and the slot
//! was reused is ignored. Waking on the reactor's own thread pushes onto the
//! ready queue; waking from another thread pushes onto a locked queue and
//! wakes `epoll` through a `mio::Waker`.
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
//!
//! `EINTR` from `epoll_wait` counts as a turn with no events.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll as MioPoll, Registry, Token};

/// The token of the cross-thread waker; I/O tokens are slot index + 1.
const WAKE_TOKEN: Token = Token(0);

/// Readiness bits latched per source.
const READABLE: u8 = 1;
const WRITABLE: u8 = 2;
const READ_CLOSED: u8 = 4;
const WRITE_CLOSED: u8 = 8;
const ERROR: u8 = 16;
// issue 15 (defect 4), net/ short-read rule: sticky, never cleared. The
// peer sent TCP urgent data (EPOLLPRI), so `recv` may stop short at the
// urgent mark with more bytes behind it.
const URGENT: u8 = 32;

/// Which way an operation goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Read,
    Write,
}

impl Direction {
    /// Bits that end a wait in this direction.
    fn ready_mask(self) -> u8 {
        match self {
            Direction::Read => READABLE | READ_CLOSED | ERROR,
            Direction::Write => WRITABLE | WRITE_CLOSED | ERROR,
        }
    }

    /// Bits an operation's `WouldBlock` clears. Closed states are final and
    /// never cleared. An error is not: the kernel reports a pending socket
    /// error before `EAGAIN`, so `WouldBlock` proves it was consumed (a UDP
    /// socket's ICMP error, returned once by `recv`); left latched, every
    /// later wait would end at once and the retry loop would spin.
    fn clear_mask(self) -> u8 {
        match self {
            Direction::Read => READABLE | ERROR,
            Direction::Write => WRITABLE | ERROR,
        }
    }
}

/// One registered I/O source.
#[derive(Default)]
struct IoSlot {
    /// The registered fd, for `debug::dump`'s "waiting for fd N".
    fd: std::os::fd::RawFd,
    readiness: u8,
    readers: Vec<Waker>,
    writers: Vec<Waker>,
}

/// What the reactor runs as a task: a future that can say where its next
/// poll will read memory first.
pub(crate) trait TaskFuture: Future<Output = ()> {
    /// Asked each time a poll returns `Pending`, while the task's memory is
    /// still in the cache; see [`Footprint`].
    fn footprint(&self) -> Footprint;
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
struct TaskSlot {
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

/// The part of a reactor other threads may touch.
struct Shared {
    /// Tasks woken from other threads: (slot, generation).
    remote: Mutex<Vec<(u32, u32)>>,
    /// Interrupts `epoll_wait`.
    waker: mio::Waker,
}

/// A thread's event loop. See the module documentation.
pub(crate) struct Reactor {
    /// Owned by whoever runs a turn; borrowed only inside `turn`.
    poll: RefCell<MioPoll>,
    events: RefCell<Events>,
    /// A handle for (de)registering sources at any time.
    registry: Registry,
    /// I/O sources; token = index + 1.
    io: RefCell<Slab<IoSlot>>,
    /// Deadline, sequence number -> waker. The sequence number keeps equal
    /// deadlines apart and identifies an entry for removal.
    timers: RefCell<BTreeMap<(Instant, u64), Waker>>,
    timer_seq: Cell<u64>,
    tasks: RefCell<Slab<TaskSlot>>,
    /// Source of task generations.
    spawn_seq: Cell<u32>,
    /// Tasks to poll: (slot, generation).
    ready: RefCell<VecDeque<(u32, u32)>>,
    shared: Arc<Shared>,
    /// Set by `start_loop`: blocking this thread is what its owner wants,
    /// even when a foreign executor also runs here.
    explicit_loop: Cell<bool>,
    /// Woken when the last task finishes (`run` waits for that).
    idle_waiters: RefCell<Vec<Waker>>,
}

thread_local! {
    static REACTOR: RefCell<Option<Rc<Reactor>>> = const { RefCell::new(None) };
}

impl Reactor {
    /// This thread's reactor, created on first use.
    pub(crate) fn current() -> Rc<Reactor> {
        REACTOR.with(|r| {
            r.borrow_mut()
                .get_or_insert_with(|| {
                    Rc::new(
                        Reactor::new().expect("greenhack: cannot create the event loop (epoll)"),
                    )
                })
                .clone()
        })
    }

    /// This thread's reactor if it exists.
    pub(crate) fn try_current() -> Option<Rc<Reactor>> {
        REACTOR.try_with(|r| r.borrow().clone()).ok().flatten()
    }

    fn new() -> io::Result<Reactor> {
        let poll = MioPoll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = mio::Waker::new(poll.registry(), WAKE_TOKEN)?;
        Ok(Reactor {
            poll: RefCell::new(poll),
            events: RefCell::new(Events::with_capacity(1024)),
            registry,
            io: RefCell::new(Slab::new()),
            timers: RefCell::new(BTreeMap::new()),
            timer_seq: Cell::new(0),
            tasks: RefCell::new(Slab::new()),
            spawn_seq: Cell::new(0),
            ready: RefCell::new(VecDeque::new()),
            shared: Arc::new(Shared {
                remote: Mutex::new(Vec::new()),
                waker,
            }),
            explicit_loop: Cell::new(false),
            idle_waiters: RefCell::new(Vec::new()),
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

    // ----- I/O -------------------------------------------------------------

    /// Registers `source` for reading and writing, edge-triggered.
    pub(crate) fn register<S>(&self, source: &mut S) -> io::Result<Token>
    where
        S: mio::event::Source + std::os::fd::AsRawFd,
    {
        let index = self.io.borrow_mut().insert(IoSlot {
            fd: source.as_raw_fd(),
            ..IoSlot::default()
        });
        let token = Token(index + 1);
        // issue 15 (defect 4): PRIORITY reports TCP urgent data, latched
        // as `URGENT` for `saw_urgent`; no other socket type raises it.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let interest = Interest::READABLE | Interest::WRITABLE | Interest::PRIORITY;
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.registry.register(source, token, interest) {
            self.io.borrow_mut().remove(index);
            return Err(e);
        }
        Ok(token)
    }

    /// Deregisters `source` and frees its slot. Errors are ignored: the
    /// source is being closed, and the kernel forgets a closed fd anyway.
    pub(crate) fn deregister(&self, source: &mut impl mio::event::Source, token: Token) {
        let _ = self.registry.deregister(source);
        let slot = self.io.borrow_mut().remove(token.0 - 1);
        // Waiters of a closed socket are woken so they observe the closure
        // (they hold a borrow of the socket, so normally there are none).
        if let Some(slot) = slot {
            slot.readers
                .into_iter()
                .chain(slot.writers)
                .for_each(Waker::wake);
        }
    }

    /// Runs `op` until it stops returning `WouldBlock`, waiting for
    /// readiness in `dir` between attempts. `deadline` bounds the whole
    /// call: past it, the result is `WouldBlock` with the message std gives
    /// a timed-out socket (`Resource temporarily unavailable`, EAGAIN).
    pub(crate) fn io<R>(
        &self,
        token: Token,
        dir: Direction,
        deadline: Option<Instant>,
        mut op: impl FnMut() -> io::Result<R>,
    ) -> io::Result<R> {
        loop {
            match op() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
            let fd = self.clear_readiness(token, dir);
            let ready = Readiness {
                reactor: self,
                token,
                dir,
                registered: None,
            };
            let wait = match dir {
                Direction::Read => crate::debug::Wait::Readable(fd),
                Direction::Write => crate::debug::Wait::Writable(fd),
            };
            match deadline {
                None => crate::pair::exempt_io_for(ready, wait)?,
                Some(d) => {
                    let timed = crate::time::Deadline::new(ready, d);
                    if crate::pair::exempt_io_for(timed, wait)?.is_none() {
                        return Err(io::Error::from_raw_os_error(libc::EAGAIN));
                    }
                }
            }
        }
    }

    /// True if readiness in `dir` is latched (an event arrived and no
    /// operation has since seen `WouldBlock`).
    pub(crate) fn is_ready(&self, token: Token, dir: Direction) -> bool {
        self.io
            .borrow_mut()
            .get_mut(token.0 - 1)
            .is_none_or(|slot| slot.readiness & dir.ready_mask() != 0)
    }

    /// True once an event reported urgent data (`EPOLLPRI`) on the source
    /// (issue 15, defect 4): from then on a short read does not prove the
    /// receive buffer drained, since `recv` stops at the urgent mark.
    pub(crate) fn saw_urgent(&self, token: Token) -> bool {
        self.io
            .borrow()
            .get(token.0 - 1)
            .is_some_and(|slot| slot.readiness & URGENT != 0)
    }

    /// Forgets latched readiness in `dir` without an operation having seen
    /// `WouldBlock`: for a caller that knows the source is drained (a short
    /// stream read).
    pub(crate) fn mark_drained(&self, token: Token, dir: Direction) {
        self.clear_readiness(token, dir);
    }

    /// Clears the readiness an operation's `WouldBlock` disproved; returns
    /// the source's fd.
    fn clear_readiness(&self, token: Token, dir: Direction) -> std::os::fd::RawFd {
        match self.io.borrow_mut().get_mut(token.0 - 1) {
            Some(slot) => {
                slot.readiness &= !dir.clear_mask();
                slot.fd
            }
            None => -1,
        }
    }

    /// Removes a waiter that stopped waiting (its wait timed out or was
    /// dropped), so waiters do not pile up on a quiet socket.
    fn forget_waiter(&self, token: Token, dir: Direction, waker: WakerId) {
        if let Some(slot) = self.io.borrow_mut().get_mut(token.0 - 1) {
            let waiters = match dir {
                Direction::Read => &mut slot.readers,
                Direction::Write => &mut slot.writers,
            };
            if let Some(i) = waiters.iter().position(|w| WakerId::of(w) == waker) {
                waiters.swap_remove(i);
            }
        }
    }

    /// Ready when the source is, else registers `cx`'s waker.
    fn poll_ready(&self, token: Token, dir: Direction, cx: &mut Context<'_>) -> Poll<()> {
        let mut io = self.io.borrow_mut();
        let Some(slot) = io.get_mut(token.0 - 1) else {
            return Poll::Ready(());
        };
        if slot.readiness & dir.ready_mask() != 0 {
            return Poll::Ready(());
        }
        let waiters = match dir {
            Direction::Read => &mut slot.readers,
            Direction::Write => &mut slot.writers,
        };
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    // ----- timers ------------------------------------------------------------

    /// Registers (or re-registers) a timer; returns its key.
    pub(crate) fn add_timer(
        &self,
        deadline: Instant,
        waker: &Waker,
        old: Option<(Instant, u64)>,
    ) -> (Instant, u64) {
        let mut timers = self.timers.borrow_mut();
        if let Some(key) = old {
            if let Some(w) = timers.get_mut(&key) {
                if !w.will_wake(waker) {
                    *w = waker.clone();
                }
                return key;
            }
        }
        let seq = self.timer_seq.get() + 1;
        self.timer_seq.set(seq);
        timers.insert((deadline, seq), waker.clone());
        (deadline, seq)
    }

    pub(crate) fn remove_timer(&self, key: (Instant, u64)) {
        self.timers.borrow_mut().remove(&key);
    }

    // ----- tasks -------------------------------------------------------------

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

    fn wake_task(&self, index: u32, generation: u32) {
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
        self.ready.borrow_mut().push_back((index, generation));
    }

    /// Polls every task that is ready now (not the ones woken meanwhile:
    /// those wait for the next round, so I/O is not starved).
    fn run_ready(&self) {
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
            let done = crate::pair::loop_poll(|| {
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

    // ----- the turn ----------------------------------------------------------

    /// Waits for events (at most `timeout`), then wakes what they concern:
    /// I/O waiters, due timers and tasks woken from other threads.
    fn turn(&self, timeout: Option<Duration>) -> io::Result<()> {
        let mut wakers = Vec::new();
        {
            let mut poll = self.poll.borrow_mut();
            let mut events = self.events.borrow_mut();
            // Phase 1: wait. EINTR is a turn with no events.
            match poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => events.clear(),
                Err(e) => return Err(e),
            }
            // Phase 2: latch readiness and collect the waiters.
            let mut io = self.io.borrow_mut();
            for event in events.iter() {
                if event.token() == WAKE_TOKEN {
                    continue;
                }
                let Some(slot) = io.get_mut(event.token().0 - 1) else {
                    continue;
                };
                let mut bits = 0;
                if event.is_readable() {
                    bits |= READABLE;
                }
                if event.is_writable() {
                    bits |= WRITABLE;
                }
                if event.is_read_closed() {
                    bits |= READ_CLOSED;
                }
                if event.is_write_closed() {
                    bits |= WRITE_CLOSED;
                }
                if event.is_error() {
                    bits |= ERROR;
                }
                if event.is_priority() {
                    bits |= URGENT; // issue 15 (defect 4)
                }
                slot.readiness |= bits;
                if bits & Direction::Read.ready_mask() != 0 {
                    wakers.append(&mut slot.readers);
                }
                if bits & Direction::Write.ready_mask() != 0 {
                    wakers.append(&mut slot.writers);
                }
            }
        }
        // Phase 3: due timers: every deadline at or before now (the clock
        // is read only when a timer exists).
        {
            let mut timers = self.timers.borrow_mut();
            let now = if timers.is_empty() {
                None
            } else {
                Some(Instant::now())
            };
            while let (Some(now), Some(entry)) = (now, timers.first_entry()) {
                if entry.key().0 > now {
                    break;
                }
                wakers.push(entry.remove());
            }
        }
        // Phase 4: tasks woken from other threads.
        let remote =
            std::mem::take(&mut *self.shared.remote.lock().unwrap_or_else(|e| e.into_inner()));
        for (index, generation) in remote {
            self.wake_task(index, generation);
        }
        // Phase 5: wake, with no borrow held: a waker may run arbitrary code.
        wakers.into_iter().for_each(Waker::wake);
        Ok(())
    }

    fn next_timeout(&self) -> Option<Duration> {
        let timers = self.timers.borrow();
        let (deadline, _) = timers.keys().next()?;
        // mio rounds a sub-millisecond timeout up, never down to a spin.
        Some(deadline.saturating_duration_since(Instant::now()))
    }
}

/// Runs the reactor on this thread until `future` completes.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let reactor = Reactor::current();
    let main = Arc::new(MainWaker {
        woken: AtomicBool::new(true),
        thread: std::thread::current().id(),
        shared: reactor.shared.clone(),
    });
    let waker = Waker::from(main.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if main.woken.swap(false, Ordering::Acquire) {
            if let Poll::Ready(v) = crate::pair::loop_poll(|| future.as_mut().poll(&mut cx)) {
                return v;
            }
        }
        reactor.run_ready();
        let busy = main.woken.load(Ordering::Acquire) || !reactor.ready.borrow().is_empty();
        let timeout = if busy {
            Some(Duration::ZERO)
        } else {
            reactor.next_timeout()
        };
        reactor.turn(timeout).expect("greenhack: epoll_wait failed");
        if reactor.is_dump_target() {
            crate::debug::dump_if_requested();
        }
    }
}

/// The `mio::Waker` of the reactor that prints dumps on a signal
/// (`debug::dump_on_signal`); leaked so the signal handler can use it at any
/// time.
static DUMP_TARGET: std::sync::atomic::AtomicPtr<Shared> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

impl Reactor {
    /// Makes this reactor the one a dump signal wakes.
    pub(crate) fn make_dump_target(&self) {
        let leaked = Arc::into_raw(self.shared.clone()) as *mut Shared;
        // The previous target (if any) stays leaked: a signal handler may be
        // reading it right now.
        DUMP_TARGET.store(leaked, Ordering::Release);
    }

    fn is_dump_target(&self) -> bool {
        std::ptr::eq(
            DUMP_TARGET.load(Ordering::Relaxed),
            Arc::as_ptr(&self.shared),
        )
    }
}

/// Wakes the dump target's `epoll_wait`. Async-signal-safe: an atomic load
/// and an eventfd `write`.
pub(crate) fn wake_dump_target() {
    let target = DUMP_TARGET.load(Ordering::Acquire);
    if !target.is_null() {
        // SAFETY: stored from a leaked Arc, never freed.
        let _ = unsafe { &*target }.waker.wake();
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

/// The waker of a task: its slot and generation.
struct TaskWaker {
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
        let woken_locally = REACTOR
            .try_with(|r| match &*r.borrow() {
                Some(r) if Arc::ptr_eq(&r.shared, &self.shared) => {
                    r.wake_task(self.index, self.generation);
                    true
                }
                _ => false,
            })
            .unwrap_or(false);
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

/// Resolves when `token` is ready in `dir` (or closed, or in error).
/// Dropped before that (a timeout, a cancellation), it takes its waker back
/// out of the source's waiters.
struct Readiness<'a> {
    reactor: &'a Reactor,
    token: Token,
    dir: Direction,
    /// The waker this future left with the source, while pending, by
    /// identity (data and vtable, what `Waker::will_wake` compares): keeping
    /// a clone would cost two atomic operations per wait.
    registered: Option<WakerId>,
}

/// A waker's identity.
#[derive(Clone, Copy, PartialEq, Eq)]
struct WakerId(*const (), *const std::task::RawWakerVTable);

impl WakerId {
    fn of(w: &Waker) -> WakerId {
        WakerId(w.data(), w.vtable())
    }
}

impl Future for Readiness<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let polled = self.reactor.poll_ready(self.token, self.dir, cx);
        self.registered = match polled {
            // A wake removed the waiters it woke; nothing is left to forget.
            Poll::Ready(()) => None,
            Poll::Pending => Some(WakerId::of(cx.waker())),
        };
        polled
    }
}

impl Drop for Readiness<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.registered.take() {
            self.reactor.forget_waiter(self.token, self.dir, id);
        }
    }
}

/// A minimal slab: stable indices, a free list.
struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Slab<T> {
    const fn new() -> Slab<T> {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(i) => {
                self.entries[i] = Some(value);
                i
            }
            None => {
                self.entries.push(Some(value));
                self.entries.len() - 1
            }
        }
    }

    fn get(&self, i: usize) -> Option<&T> {
        self.entries.get(i)?.as_ref()
    }

    fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.entries.get_mut(i)?.as_mut()
    }

    /// Where entry `i` would be, for a prefetch: computed, never read, so
    /// any `i` will do.
    fn entry_addr(&self, i: usize) -> usize {
        self.entries.as_ptr().wrapping_add(i) as usize
    }

    fn remove(&mut self, i: usize) -> Option<T> {
        let v = self.entries.get_mut(i)?.take()?;
        self.free.push(i);
        self.len -= 1;
        Some(v)
    }

    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Regression: a wait that timed out left its waker with the source, and
    /// on a plain thread every wait brings a new waker, so they piled up
    /// until the socket next became ready.
    #[test]
    fn timed_out_waits_leave_no_waiter_behind() {
        let (mut a, _b) = mio::net::UnixStream::pair().unwrap();
        let reactor = Reactor::current();
        let token = reactor.register(&mut a).unwrap();
        for _ in 0..20 {
            let deadline = Some(Instant::now() + Duration::from_millis(1));
            let r = reactor.io(token, Direction::Read, deadline, || {
                (&a).read(&mut [0u8; 8])
            });
            assert_eq!(r.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        }
        let readers = reactor
            .io
            .borrow_mut()
            .get_mut(token.0 - 1)
            .unwrap()
            .readers
            .len();
        assert_eq!(readers, 0);
        reactor.deregister(&mut a, token);
    }

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
