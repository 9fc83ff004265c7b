//! The pair: sync code on a greenlet, its waits served by an async side.
//!
//! [`as_async`] turns a sync closure into a `Future`: polling the future
//! resumes the closure's greenlet; whenever the closure calls [`exempt`] on a
//! future that is not ready, the greenlet suspends and the poll returns
//! `Pending`. The waker of the task that polls the `AsAsync` is the waker the
//! exempted future sees, so executor-native futures (tokio timers, channels,
//! sockets; task-locals) work unchanged inside sync code.
//!
//! Outside any greenlet, `exempt` waits by running greenhack's own loop on
//! the calling thread's stack (the REPL / legacy-program case, see
//! [`start_loop`]), unless that thread is a foreign executor's worker,
//! where blocking would stall every other task: then `exempt` panics and
//! [`try_exempt`] hands the future back.
//!
//! # The current pair
//!
//! A thread-local pointer names the pair whose greenlet is running. `AsAsync`
//! saves it before each resume and restores it after (also when a panic
//! passes), and the greenlet sets it to its own pair after each suspend
//! returns, so nested pairs (an `AsAsync` polled from inside another
//! greenlet) see strict stack order, and concurrent pairs on one executor
//! never see each other's state. `exempt` also checks that it runs on the
//! stack of the pair it found, so code on any other stack (a raw
//! [`Greenlet`](crate::greenlet::Greenlet) inside a pair) is never suspended
//! through the wrong greenlet.

use std::cell::Cell;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::io;
use std::ops::Range;
use std::pin::{Pin, pin};
use std::ptr;
use std::task::{Context, Poll};

use crate::debug::Wait;
use crate::greenlet::{Builder, Greenlet, GreenletResult, Suspender};
use crate::reactor::{self, Reactor};

/// What each resume hands the greenlet: the poller's context, and whether
/// greenhack's loop is the poller.
#[derive(Clone, Copy)]
struct Resume {
    /// Valid only during the poll that passed it, which is exactly while the
    /// greenlet runs.
    cx: *mut Context<'static>,
    driven_by_loop: bool,
}

/// One pair's state; lives on its greenlet's stack.
struct Pair {
    suspender: *const Suspender<Resume, ()>,
    resume: Cell<Resume>,
    /// The greenlet's stack, to recognise code running on it.
    stack: Range<usize>,
}

thread_local! {
    /// The pair whose greenlet runs now, or null.
    static CURRENT: Cell<*const Pair> = const { Cell::new(ptr::null()) };
    /// Set while greenhack's loop polls a task or the future it blocks on;
    /// an `AsAsync` reads it to learn whether its poller is our loop.
    static LOOP_POLLING: Cell<bool> = const { Cell::new(false) };
}

/// Marks a poll made by greenhack's loop.
pub(crate) fn loop_poll<R>(f: impl FnOnce() -> R) -> R {
    let prev = LOOP_POLLING.replace(true);
    let _restore = Restore(&LOOP_POLLING, prev);
    f()
}

/// Restores a thread-local cell on scope exit, also on unwind.
struct Restore<T: Copy + 'static>(&'static std::thread::LocalKey<Cell<T>>, T);

impl<T: Copy + 'static> Drop for Restore<T> {
    fn drop(&mut self) {
        let v = self.1;
        let _ = self.0.try_with(|c| c.set(v));
    }
}

impl Pair {
    /// Polls `fut` with the poller's context; suspends while it is pending.
    /// `what` is recorded for `debug::dump` while suspended.
    fn wait<F: Future>(&self, fut: F, what: Wait) -> F::Output {
        let mut fut = pin!(fut);
        loop {
            // SAFETY: the context was passed by the poll that resumed us,
            // which is still running (we are inside it).
            let Resume { cx, driven_by_loop } = self.resume.get();
            let cx = unsafe { &mut *cx };
            // The future is polled by this pair: an AsAsync inside it is
            // driven by greenhack's loop exactly when this pair is. Inside
            // the greenlet the flag is false (`AsAsync::poll` cleared it),
            // so only a loop-driven pair has anything to set.
            let polled = if driven_by_loop {
                LOOP_POLLING.with(|l| l.set(true));
                let _restore = Restore(&LOOP_POLLING, false);
                fut.as_mut().poll(cx)
            } else {
                fut.as_mut().poll(cx)
            };
            if let Poll::Ready(v) = polled {
                return v;
            }
            // SAFETY: `suspender` belongs to our own greenlet, on whose stack
            // we run (checked by `current_pair`).
            let suspender = unsafe { &*self.suspender };
            let header = suspender.header();
            header.wait.set(what);
            let next = suspender.suspend(());
            header.wait.set(Wait::Nothing);
            self.resume.set(next);
            CURRENT.with(|c| c.set(self));
        }
    }
}

/// The pair whose greenlet is running this code, if any.
#[inline]
fn current_pair() -> Option<&'static Pair> {
    let p = CURRENT.with(|c| c.get());
    if p.is_null() {
        return None;
    }
    // SAFETY: CURRENT points at a Pair on a live greenlet stack: it is
    // cleared or restored whenever that greenlet suspends or finishes.
    let pair = unsafe { &*p };
    let here = crate::asan::stack_address(&p as *const _ as usize);
    pair.stack.contains(&here).then_some(pair)
}

/// Runs the sync closure `f` on a new greenlet; the returned future resumes
/// it whenever it is polled and resolves to `f`'s result.
///
/// ```
/// use std::time::Duration;
///
/// # #[cfg(any())]
/// async fn handler() -> usize {
///     // Inside an existing event loop: decorate the sync entry point.
///     greenhack::as_async(|| legacy_parse("input")).await
/// }
/// // Any executor polls it; here greenhack's own loop does.
/// let n = greenhack::exempt(greenhack::as_async(|| {
///     greenhack::sleep(Duration::from_millis(1)); // a wait inside sync code
///     "hello".len()
/// }));
/// assert_eq!(n, 5);
/// ```
///
/// # Caveats
///
/// * **Drop**: dropping the future while `f` is suspended unwinds `f`'s
///   stack: every destructor on it runs, and the future it was waiting on
///   is dropped. Destructors should not wait (they run during an unwind).
/// * **Panics**: a panic in `f` is re-raised, with its payload, in whoever
///   polls the future.
/// * **Threads**: the future is `!Send` — the suspended stack may hold
///   `!Send` values. On tokio, poll it on a current-thread runtime, in a
///   `LocalSet` (`spawn_local`), or `block_on` it.
/// * **Greenhack's own I/O inside**: greenhack sockets, `sleep` and `spawn`
///   need greenhack's loop. Under a foreign executor they fail at once
///   (sockets with `ErrorKind::Unsupported`, `sleep`/`spawn` with a panic)
///   and name the executor-native alternative, which `exempt` can wait on.
///
/// # Panics
///
/// If the greenlet's stack cannot be mapped; [`Builder::as_async`] returns
/// the error instead.
#[track_caller]
pub fn as_async<T, F>(f: F) -> AsAsync<T>
where
    F: FnOnce() -> T + 'static,
    T: 'static,
{
    match Builder::new().as_async(f) {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    }
}

impl Builder {
    /// [`as_async`] with this builder's name and stack size.
    ///
    /// # Errors
    ///
    /// The greenlet's stack could not be mapped.
    #[track_caller]
    pub fn as_async<T, F>(self, f: F) -> io::Result<AsAsync<T>>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        let greenlet = self.build(move |s: &Suspender<Resume, ()>, first: Resume| {
            let pair = Pair {
                suspender: s,
                resume: Cell::new(first),
                stack: s.stack_range(),
            };
            CURRENT.with(|c| c.set(&pair));
            f()
        })?;
        Ok(AsAsync {
            greenlet: Some(greenlet),
        })
    }
}

/// The future returned by [`as_async`]: sync code on its own greenlet.
///
/// `!Send`: see [`as_async`]'s caveats.
///
/// ```compile_fail
/// fn require_send<T: Send>(_: T) {}
/// require_send(greenhack::as_async(|| 1));
/// ```
#[must_use = "an AsAsync does nothing unless polled"]
pub struct AsAsync<T> {
    /// `None` once the result has been returned.
    greenlet: Option<Greenlet<Resume, (), T>>,
}

impl<T> AsAsync<T> {
    /// The greenlet's name, given with [`Builder::name`].
    pub fn name(&self) -> Option<&str> {
        self.greenlet.as_ref().and_then(|g| g.name())
    }

    /// The greenlet's stack that the next poll touches first (see
    /// `Greenlet::resume_footprint`); `None` once complete.
    pub(crate) fn resume_footprint(&self) -> Option<std::ops::Range<usize>> {
        self.greenlet.as_ref()?.resume_footprint()
    }

    /// The greenlet's stack header, for the stall detector (offload branch:
    /// `crate::stall`); `None` once complete.
    pub(crate) fn header(&self) -> Option<&crate::stack::StackHeader> {
        self.greenlet.as_ref()?.header_ref()
    }
}

impl<T> Future for AsAsync<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let driven_by_loop = LOOP_POLLING.replace(false);
        let _restore_loop = Restore(&LOOP_POLLING, driven_by_loop);
        let _restore_pair = Restore(&CURRENT, CURRENT.with(|c| c.get()));
        let greenlet = self
            .greenlet
            .as_mut()
            .expect("greenhack: AsAsync polled after it completed");
        let resume = Resume {
            cx: (cx as *mut Context<'_>).cast::<Context<'static>>(),
            driven_by_loop,
        };
        match greenlet.resume(resume) {
            GreenletResult::Yielded(()) => Poll::Pending,
            GreenletResult::Complete(v) => {
                // Give the stack back to the pool now, not when dropped.
                self.greenlet = None;
                Poll::Ready(v)
            }
        }
    }
}

impl<T> Drop for AsAsync<T> {
    fn drop(&mut self) {
        // The unwinding greenlet is resumed by this drop, not by a poll:
        // it is in no pair while its destructors run.
        let _restore = Restore(&CURRENT, CURRENT.with(|c| c.replace(ptr::null())));
        self.greenlet = None;
    }
}

impl<T> fmt::Debug for AsAsync<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsAsync")
            .field("greenlet", &self.greenlet)
            .finish()
    }
}

/// Waits for `fut` from sync code, and returns its output.
///
/// * Inside a greenlet of [`as_async`] or [`spawn`](crate::spawn): polls
///   `fut` in place, on the greenlet's stack, with the context of the task
///   that polls the pair; returns at once if it is ready, and otherwise
///   suspends the greenlet until the future's waker fires.
/// * Outside any greenlet: runs greenhack's loop on this thread until `fut`
///   completes (other greenlets of the thread run meanwhile).
///
/// ```
/// let v = greenhack::exempt(async { 40 + 2 });
/// assert_eq!(v, 42);
/// ```
///
/// # Panics
///
/// Outside any greenlet, on a thread where a foreign executor runs (a tokio
/// worker or `block_on`; detected with the `tokio` feature), blocking would
/// stall that executor: `exempt` panics with a message saying to wrap the
/// sync code in `as_async`, or to call [`start_loop`] if blocking is
/// intended. [`try_exempt`] returns the future instead.
#[track_caller]
#[inline]
pub fn exempt<F: IntoFuture>(fut: F) -> F::Output {
    match try_exempt(fut) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// Like [`exempt`], but where `exempt` would panic, returns the future in
/// the error so the caller can choose a fallback.
///
/// # Errors
///
/// [`ExemptError`] when called outside any greenlet on a foreign executor's
/// thread (see [`exempt`]).
#[inline]
pub fn try_exempt<F: IntoFuture>(fut: F) -> Result<F::Output, ExemptError<F::IntoFuture>> {
    let fut = fut.into_future();
    if let Some(pair) = current_pair() {
        return Ok(pair.wait(fut, Wait::Future(std::any::type_name::<F::IntoFuture>())));
    }
    if on_foreign_executor() {
        return Err(ExemptError { future: fut });
    }
    Ok(reactor::block_on(fut))
}

/// Waits for a future that needs greenhack's loop (socket readiness):
/// errors with `Unsupported` where that loop does not run.
pub(crate) fn exempt_io<F: Future>(fut: F) -> io::Result<F::Output> {
    exempt_io_for(fut, Wait::Future(std::any::type_name::<F>()))
}

/// `exempt_io`, recording `what` for `debug::dump` while suspended.
pub(crate) fn exempt_io_for<F: Future>(fut: F, what: Wait) -> io::Result<F::Output> {
    match current_pair() {
        Some(pair) if pair.resume.get().driven_by_loop => Ok(pair.wait(fut, what)),
        Some(_) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "greenhack sockets need greenhack's event loop, but this as_async is polled by \
             another executor; use that executor's sockets through exempt (for example \
             exempt(tokio::net::TcpStream::connect(addr))), or run the code on greenhack's \
             loop (greenhack::spawn, greenhack::run)",
        )),
        None if on_foreign_executor() => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "greenhack sockets used outside any greenlet on a foreign executor's thread would \
             block it; wrap the sync code in greenhack::as_async (and use the executor's \
             sockets through exempt), or call greenhack::start_loop() if blocking this thread \
             is intended",
        )),
        None => Ok(reactor::block_on(fut)),
    }
}

/// Waits for a future that needs greenhack's loop (timers, spawned
/// greenlets); panics where that loop does not run, naming `alternative`.
/// `wait` is recorded for `debug::dump` while suspended.
#[track_caller]
pub(crate) fn exempt_loop<F: Future>(
    what: &str,
    fut: F,
    alternative: &str,
    wait: Wait,
) -> F::Output {
    require_loop(what, alternative);
    match current_pair() {
        Some(pair) => pair.wait(fut, wait),
        None => exempt(fut),
    }
}

/// Panics unless greenhack's loop can serve the current code.
#[track_caller]
pub(crate) fn require_loop(what: &str, alternative: &str) {
    match current_pair() {
        Some(pair) if !pair.resume.get().driven_by_loop => panic!(
            "greenhack: {what} needs greenhack's event loop, but this as_async is polled by \
             another executor; use `exempt({alternative})` instead"
        ),
        _ => {}
    }
}

/// True when this thread runs a foreign executor that blocking would stall,
/// and the owner has not asked for greenhack's loop with `start_loop`.
fn on_foreign_executor() -> bool {
    if Reactor::try_current().is_some_and(|r| r.has_explicit_loop()) {
        return false;
    }
    #[cfg(feature = "tokio")]
    {
        tokio::runtime::Handle::try_current().is_ok()
    }
    #[cfg(not(feature = "tokio"))]
    {
        false
    }
}

/// The error of [`try_exempt`]: the future could not be waited for here.
/// It owns the future, so nothing is lost.
pub struct ExemptError<F> {
    future: F,
}

impl<F> ExemptError<F> {
    /// Takes the future back.
    pub fn into_future(self) -> F {
        self.future
    }
}

impl<F> fmt::Display for ExemptError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "greenhack::exempt called outside any greenlet on a thread that runs an async \
             executor: waiting here would block the executor. Wrap the sync code in \
             greenhack::as_async(|| ...) and await that future, or call \
             greenhack::start_loop() first if blocking this thread is intended",
        )
    }
}

impl<F> fmt::Debug for ExemptError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExemptError").finish_non_exhaustive()
    }
}

impl<F> std::error::Error for ExemptError<F> {}

/// Makes the calling thread's own stack the sync side of a pair with
/// greenhack's loop: from now on, whenever code on this thread outside any
/// greenlet waits (`exempt`, a socket call, `sleep`, `join`), the loop runs
/// the thread's other greenlets until the wait is over.
///
/// For programs that have no event loop: a REPL, a legacy command-line tool,
/// `main` of a test. Idempotent. Without it the same happens implicitly on
/// first use, except on a thread where a foreign executor runs, where
/// `start_loop` is the explicit permission to block it.
///
/// ```
/// greenhack::start_loop();
/// let a = greenhack::spawn(|| 1);
/// let b = greenhack::spawn(|| 2);
/// assert_eq!(a.join().unwrap() + b.join().unwrap(), 3);
/// ```
pub fn start_loop() {
    Reactor::current().set_explicit_loop();
}

/// Runs `f` on the calling thread as the sync side of greenhack's loop, then
/// keeps the loop running until every greenlet spawned on this thread has
/// finished, and returns `f`'s result.
///
/// If `f` panics, the panic propagates at once; greenlets still alive stay
/// queued on the thread's loop and run the next time it runs (or are unwound
/// when the thread exits).
///
/// ```
/// use std::time::Duration;
///
/// let out = greenhack::run(|| {
///     for i in 0..3 {
///         greenhack::spawn(move || {
///             greenhack::sleep(Duration::from_millis(10 * i));
///             println!("greenlet {i} done");
///         });
///     }
///     "spawned"
/// });
/// // All three have finished here.
/// assert_eq!(out, "spawned");
/// ```
pub fn run<T>(f: impl FnOnce() -> T) -> T {
    let reactor = Reactor::current();
    let was_explicit = reactor.has_explicit_loop();
    reactor.set_explicit_loop();
    let out = f();
    reactor::block_on(reactor::AllTasksDone);
    if !was_explicit {
        reactor.clear_explicit_loop();
    }
    out
}
