//! Hosted mode: greenhack's loop driven from another executor's polls, on
//! the same thread.
//!
//! An `epoll` fd is itself pollable: it reports readable while any of its
//! registrations is ready. So the loop nests in a host reactor the way
//! glommio, async-io and the glib integrations nest theirs:
//!
//! 1. the reactor's `epoll` fd is registered with the host (for tokio,
//!    `tokio::io::unix::AsyncFd`); the host's readiness wakes a *fan-out*
//!    waker, which wakes every host task that waits on greenhack's loop;
//! 2. such a task, when polled, runs [`drive`]: non-blocking turns while the
//!    host reports the fd readable, clearing the host's readiness only after
//!    a turn that found nothing (or the edge-triggered host would not report
//!    the next event), then the ready greenhack tasks;
//! 3. the earliest greenhack timer is armed on a `timerfd` inside
//!    greenhack's own `epoll`, so a due timer makes the fd readable too: no
//!    timer of the host's is needed, whichever executor it is;
//! 4. a greenhack task woken on this thread (by a tokio future it waits on,
//!    say) pokes the fan-out, so the host polls again.
//!
//! A host task registers with the fan-out whenever a poll of it (not one of
//! greenhack's loop) waits on one of greenhack's sockets or timers
//! ([`Reactor::note_interest`]) or on a greenlet's `JoinHandle`, and while
//! greenlets are spawned on the thread; a driver task
//! (`greenhack::tokio::run`) stays registered for good. On a tokio
//! `current_thread` runtime, while greenlets live, a background task
//! (`Background`) drives the loop too, so that greenlets outlive the host
//! task that spawned them, as tokio's spawned tasks do.

use std::cell::{Cell, RefCell};
#[cfg(feature = "tokio")]
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
#[cfg(feature = "tokio")]
use std::task::Poll;
use std::task::{Context, Wake, Waker};
use std::time::Instant;

use super::Reactor;

/// The token of the hosted timer's `timerfd` in greenhack's `epoll`.
pub(super) const TIMER_TOKEN: mio::Token = mio::Token(usize::MAX);

/// How many turns one drive runs before it yields to the host (a loop that
/// always has events must not starve the host's other tasks).
const MAX_TURNS_PER_DRIVE: usize = 8;

/// True when the executor polling on this thread can host greenhack's loop.
#[inline]
pub(crate) fn can_host() -> bool {
    #[cfg(feature = "tokio")]
    {
        tokio::runtime::Handle::try_current().is_ok()
    }
    #[cfg(not(feature = "tokio"))]
    {
        false
    }
}

/// Runs greenhack's loop for a host task being polled with `cx` (see the
/// module docs); with `register`, the task is polled again when the loop
/// has news. Does nothing on a thread without a reactor.
pub(crate) fn drive(cx: &mut Context<'_>, register: bool) {
    if !can_host() {
        return;
    }
    if let Some(reactor) = Reactor::try_current() {
        reactor.drive_hosted(cx, register);
    }
}

/// The host's side of a reactor, once it has been driven hosted.
#[derive(Default)]
pub(crate) struct HostLink {
    host: RefCell<Option<Host>>,
    /// A host task waits on greenhack's sockets or timers: start hosting.
    wanted: Cell<bool>,
    /// Wakes the host tasks waiting on greenhack's loop.
    fan_out: Arc<FanOut>,
    /// Set once hosted: local task wakes then poke the fan-out.
    active: Cell<bool>,
    /// A [`Background`] driver task is spawned on the host (cleared by its
    /// drop, on whichever thread the host drops it).
    #[cfg(feature = "tokio")]
    background: Arc<AtomicBool>,
}

/// The registrations with the host.
struct Host {
    /// The reactor's `epoll` fd as the host sees it.
    #[cfg(feature = "tokio")]
    epoll: tokio::io::unix::AsyncFd<BorrowedEpoll>,
    /// Fires at the earliest greenhack deadline, inside greenhack's `epoll`.
    timer: std::os::fd::OwnedFd,
    /// The deadline the timer is armed for.
    armed: Option<Instant>,
}

/// The reactor's `epoll` fd, borrowed: the reactor owns and closes it, and
/// drops the host registration first.
#[cfg(feature = "tokio")]
struct BorrowedEpoll(std::os::fd::RawFd);

#[cfg(feature = "tokio")]
impl std::os::fd::AsRawFd for BorrowedEpoll {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// A waker that wakes a set of wakers: the host's readiness reaches every
/// host task that waits on greenhack's loop.
#[derive(Default)]
struct FanOut {
    wakers: Mutex<Vec<Waker>>,
}

impl FanOut {
    fn add(&self, waker: &Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }
}

impl Wake for FanOut {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|e| e.into_inner()));
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl HostLink {
    /// True once this loop is driven hosted.
    #[inline]
    pub(super) fn is_active(&self) -> bool {
        self.active.get()
    }

    /// Called when a task is queued on the reactor's own thread: the host
    /// must poll someone who runs it.
    #[inline]
    pub(super) fn poke(&self) {
        if self.active.get() {
            self.fan_out.wake_by_ref();
        }
    }

    /// Drops the registrations with the host (thread exit).
    pub(super) fn shutdown(&self) {
        self.active.set(false);
        drop(self.host.borrow_mut().take());
        std::mem::take(
            &mut *self
                .fan_out
                .wakers
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
    }
}

impl Reactor {
    /// Called when `waker` starts waiting on one of this reactor's sockets
    /// or timers: if that is a host task (not a poll of greenhack's own
    /// loop), the host must poll it again when the loop has news.
    #[inline]
    pub(super) fn note_interest(&self, waker: &Waker) {
        if !super::is_loop_poll() {
            self.hosted.wanted.set(true);
            self.hosted.fan_out.add(waker);
        }
    }

    /// One hosted drive; see the module docs.
    fn drive_hosted(&self, cx: &mut Context<'_>, register: bool) {
        let register = register || self.live_tasks() > 0;
        if !self.hosted.active.get() {
            if !register && !self.hosted.wanted.get() {
                return; // nothing of greenhack's runs here
            }
            self.start_hosting_or_panic();
        }
        let fan_out = Waker::from(self.hosted.fan_out.clone());
        let mut host_cx = Context::from_waker(&fan_out);
        let mut turns = 0;
        loop {
            let woke = self.turn_if_host_ready(&mut host_cx);
            if !self.hosted.active.get() {
                // The runtime it was registered with has shut down: register
                // with this one now, or nothing would wake this task again.
                self.start_hosting_or_panic();
                continue;
            }
            self.run_ready();
            turns += 1;
            if !woke && !self.has_ready() {
                break;
            }
            if turns == MAX_TURNS_PER_DRIVE {
                cx.waker().wake_by_ref();
                break;
            }
        }
        self.arm_host_timer();
        if register {
            self.hosted.fan_out.add(cx.waker());
        }
        #[cfg(feature = "tokio")]
        if self.live_tasks() > 0 && !self.hosted.background.load(Ordering::Relaxed) {
            self.spawn_background();
        }
    }

    /// Spawns a [`Background`] driver on the host, so that greenlets keep
    /// running once the host tasks that spawned them are gone (an
    /// `as_async` that spawned a greenlet and returned), as tokio's spawned
    /// tasks do. Only a `current_thread` runtime runs it on this thread;
    /// under `greenhack::tokio::run` the loop is driven for good anyway.
    #[cfg(feature = "tokio")]
    #[cold]
    fn spawn_background(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread
            || HostRuntime::is_installed()
        {
            return;
        }
        self.hosted.background.store(true, Ordering::Relaxed);
        drop(handle.spawn(Background {
            thread: std::thread::current().id(),
            spawned: self.hosted.background.clone(),
        }));
    }

    /// Runs non-blocking turns while the host reports the `epoll` fd ready;
    /// returns whether one found anything.
    fn turn_if_host_ready(&self, host_cx: &mut Context<'_>) -> bool {
        let mut slot = self.hosted.host.borrow_mut();
        let Some(host) = slot.as_mut() else {
            return false;
        };
        #[cfg(feature = "tokio")]
        loop {
            let mut guard = match host.epoll.poll_read_ready(host_cx) {
                Poll::Ready(Ok(guard)) => guard,
                // The runtime it was registered with shut down: register
                // again with the next host that polls.
                Poll::Ready(Err(_)) => {
                    *slot = None;
                    self.hosted.active.set(false);
                    return false;
                }
                Poll::Pending => return false,
            };
            // The turn runs with the host's guard held but no borrow of ours
            // that a waker could need.
            if self
                .turn(Some(std::time::Duration::ZERO))
                .expect("greenhack: epoll_wait failed")
            {
                if host.armed.is_some_and(|t| t <= Instant::now()) {
                    host.armed = None;
                    drain_timer(&host.timer);
                }
                return true;
            }
            // Nothing left: only now may the host forget the readiness.
            guard.clear_ready();
        }
        #[cfg(not(feature = "tokio"))]
        {
            // Without tokio nothing hosts the loop (`drive` returns early).
            let _ = (host, host_cx);
            false
        }
    }

    /// [`start_hosting`](Self::start_hosting), its failure a panic that
    /// names the fix.
    fn start_hosting_or_panic(&self) {
        // tokio panics (rather than erring) when its I/O driver is off.
        let started =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.start_hosting()));
        match started {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                panic!("greenhack: cannot register the event loop with the host executor: {e}")
            }
            Err(_) => panic!(
                "{}",
                "greenhack: greenhack's event loop cannot be hosted on this tokio runtime: \
                 its I/O driver is disabled. Build the runtime with enable_io() (or \
                 enable_all()), or wait on the executor's own futures through exempt \
                 (for greenhack::sleep: exempt(tokio::time::sleep(d)))"
            ),
        }
    }

    /// Registers the reactor's `epoll` fd with the host and creates the
    /// timer.
    fn start_hosting(&self) -> std::io::Result<()> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: plain system call; the result is checked.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just created and own.
        let timer = unsafe { OwnedFd::from_raw_fd(raw) };
        self.registry.register(
            &mut mio::unix::SourceFd(&timer.as_raw_fd()),
            TIMER_TOKEN,
            mio::Interest::READABLE,
        )?;
        #[cfg(feature = "tokio")]
        // SAFETY: the fd is the reactor's epoll fd, which stays open and the
        // same for the AsyncFd's whole life: the reactor declares `hosted`
        // before `poll`, so the registration is dropped before the fd closes.
        let epoll = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                BorrowedEpoll(self.poll.borrow().as_raw_fd()),
                tokio::io::Interest::READABLE,
            )
        }
        .map_err(std::io::Error::from)?;
        *self.hosted.host.borrow_mut() = Some(Host {
            #[cfg(feature = "tokio")]
            epoll,
            timer,
            armed: None,
        });
        self.hosted.active.set(true);
        Ok(())
    }

    /// Arms the timer for the earliest greenhack deadline, if it changed.
    fn arm_host_timer(&self) {
        let earliest = self.timers.borrow().earliest();
        let mut host = self.hosted.host.borrow_mut();
        let Some(host) = host.as_mut() else {
            return;
        };
        if host.armed == earliest {
            return;
        }
        host.armed = earliest;
        let left = earliest.map(|t| t.saturating_duration_since(Instant::now()));
        // A zero it_value disarms the timer: a due deadline fires in 1 ns.
        let value = match left {
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            Some(d) if d.is_zero() => libc::timespec {
                tv_sec: 0,
                tv_nsec: 1,
            },
            Some(d) => libc::timespec {
                tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: d.subsec_nanos().into(),
            },
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // SAFETY: `spec` is a valid itimerspec for the duration of the call;
        // the fd is our timerfd. Arming cannot fail for a valid fd and spec.
        unsafe {
            use std::os::fd::AsRawFd;
            libc::timerfd_settime(host.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut());
        }
    }
}

/// A host task that drives greenhack's loop while it has live tasks (see
/// [`Reactor::spawn_background`]); it ends when none is left. `Send` (it
/// holds no reference to the reactor, which it finds on its thread) so that
/// tokio's `spawn` takes it: polled on any other thread it ends at once.
#[cfg(feature = "tokio")]
struct Background {
    thread: std::thread::ThreadId,
    /// The reactor's [`HostLink::background`] flag.
    spawned: Arc<AtomicBool>,
}

#[cfg(feature = "tokio")]
impl std::future::Future for Background {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if std::thread::current().id() != self.thread {
            return Poll::Ready(());
        }
        let Some(reactor) = Reactor::try_current() else {
            return Poll::Ready(());
        };
        if reactor.live_tasks() > 0 {
            reactor.drive_hosted(cx, true);
        }
        match reactor.live_tasks() {
            0 => Poll::Ready(()),
            _ => Poll::Pending,
        }
    }
}

/// Ended, or dropped with its runtime: the next drive with live tasks
/// starts another.
#[cfg(feature = "tokio")]
impl Drop for Background {
    fn drop(&mut self) {
        self.spawned.store(false, Ordering::Relaxed);
    }
}

/// Reads the expiration count so the timerfd stops reporting readable.
#[cfg(feature = "tokio")]
fn drain_timer(timer: &std::os::fd::OwnedFd) {
    use std::os::fd::AsRawFd;
    let mut count = 0u64;
    // SAFETY: reads 8 bytes into a u64 we own; EAGAIN (not expired) is fine.
    unsafe {
        libc::read(timer.as_raw_fd(), (&raw mut count).cast(), 8);
    }
}

// ----- a tokio runtime underneath the standalone loop -----------------------------

/// A tokio runtime that this thread's loop runs inside (`greenhack::tokio`):
/// while one is installed, [`block_on`](super::block_on) waits inside
/// `LocalSet::block_on` on it, with a driver that keeps greenhack's loop
/// going, so tokio's context is entered for every greenlet.
#[cfg(feature = "tokio")]
pub(crate) struct HostRuntime {
    rt: ::tokio::runtime::Runtime,
    local: ::tokio::task::LocalSet,
}

#[cfg(feature = "tokio")]
thread_local! {
    static HOST_RUNTIME: RefCell<Option<std::rc::Rc<HostRuntime>>> = const { RefCell::new(None) };
}

/// Uninstalls the runtime [`HostRuntime::install`] installed, and the one
/// it replaced comes back.
#[cfg(feature = "tokio")]
pub(crate) struct Installed(Option<std::rc::Rc<HostRuntime>>);

#[cfg(feature = "tokio")]
impl Drop for Installed {
    fn drop(&mut self) {
        let previous = self.0.take();
        let _ = HOST_RUNTIME.try_with(|h| *h.borrow_mut() = previous);
    }
}

#[cfg(feature = "tokio")]
impl HostRuntime {
    /// Makes `rt` the runtime under this thread's loop until the returned
    /// guard drops.
    pub(crate) fn install(rt: ::tokio::runtime::Runtime) -> Installed {
        let host = std::rc::Rc::new(HostRuntime {
            rt,
            local: ::tokio::task::LocalSet::new(),
        });
        Installed(HOST_RUNTIME.with(|h| h.borrow_mut().replace(host)))
    }

    /// True when a runtime is installed under this thread's loop.
    pub(crate) fn is_installed() -> bool {
        HOST_RUNTIME
            .try_with(|h| h.borrow().is_some())
            .unwrap_or(false)
    }

    fn current() -> Option<std::rc::Rc<HostRuntime>> {
        HOST_RUNTIME.try_with(|h| h.borrow().clone()).ok().flatten()
    }
}

/// `block_on` inside the installed tokio runtime, if there is one; else
/// gives the future back.
#[cfg(feature = "tokio")]
pub(super) fn block_on_host<F: std::future::Future>(future: F) -> Result<F::Output, F> {
    let Some(host) = HostRuntime::current() else {
        return Err(future);
    };
    let driven = Driven {
        future: std::pin::pin!(future),
    };
    Ok(host.local.block_on(&host.rt, driven))
}

#[cfg(not(feature = "tokio"))]
pub(super) fn block_on_host<F: std::future::Future>(future: F) -> Result<F::Output, F> {
    Err(future)
}

/// The future `block_on_host` waits for: the caller's, marked as polled by
/// greenhack's loop, and after each poll a drive of that loop that stays
/// registered with the host.
#[cfg(feature = "tokio")]
struct Driven<'a, F> {
    future: std::pin::Pin<&'a mut F>,
}

#[cfg(feature = "tokio")]
impl<F: std::future::Future> std::future::Future for Driven<'_, F> {
    type Output = F::Output;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let fut = self.future.as_mut();
        if let Poll::Ready(v) = super::loop_poll(|| fut.poll(cx)) {
            return Poll::Ready(v);
        }
        // Runs the greenlets; if more is queued than one drive runs, it
        // wakes this task again.
        drive(cx, true);
        Poll::Pending
    }
}
