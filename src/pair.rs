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
//! [`Greenlet`] inside a pair) is never suspended
//! through the wrong greenlet.

use std::cell::Cell;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::io;
use std::ops::Range;
use std::pin::{Pin, pin};
use std::ptr;
use std::task::{Context, Poll};

use crate::greenlet::{Builder, Greenlet, GreenletResult, Suspender};
use crate::logical::{Logical, Scope};
use crate::reactor::{self, Reactor};
use crate::wait::Wait;

/// What each resume hands the greenlet: the poller's context, and who the
/// poller is.
#[derive(Clone, Copy)]
struct Resume {
    /// Valid only during the poll that passed it, which is exactly while the
    /// greenlet runs.
    cx: *mut Context<'static>,
    driver: Driver,
}

/// Who polls a pair, and so whether greenhack's loop runs for its waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    /// Greenhack's own loop (`block_on`, a spawned task).
    Loop,
    /// A foreign executor that hosts greenhack's loop (see
    /// `reactor::hosted`): greenhack's sockets and timers work too.
    Hosted,
    /// A foreign executor that cannot host it: only its own futures work.
    Foreign,
}

/// One pair's state; lives on its greenlet's stack. `repr(C)` with `stack`
/// first: `NO_PAIR` stands in for "no pair" (see `current_pair`).
#[repr(C)]
pub(super) struct Pair {
    /// The greenlet's stack, to recognise code running on it.
    stack: Range<usize>,
    suspender: *const Suspender<Resume, ()>,
    resume: Cell<Resume>,
    /// Its greenlet-locals and timeout scopes.
    logical: Logical,
    /// The greenlet is sliced (see `crate::slice`): a future it waits on
    /// must not stay on its stack.
    sliced: bool,
    /// UNWINDING's value before this pair's forced unwind set it.
    unwinding_prev: Cell<*const Pair>,
}

// What CURRENT points at when no pair's greenlet runs: an empty
// stack range that no address is inside, read where a `Pair`'s `stack`
// would be. `current_pair` then needs no null test: one branch fewer on the
// path of every `exempt`.
static NO_PAIR: Range<usize> = 0..0;

/// CURRENT's value when no pair's greenlet runs (see `NO_PAIR`).
const NONE: *const Pair = ptr::addr_of!(NO_PAIR).cast();

thread_local! {
    /// The pair whose greenlet runs now, or `NONE`.
    static CURRENT: Cell<*const Pair> = const { Cell::new(NONE) };
    /// The logical thread of code outside any greenlet.
    static THREAD_LOGICAL: Logical = Logical::default();
    /// The pair whose greenlet is being force-unwound (dropped, cancelled),
    /// or null. Its code runs in no pair then (CURRENT is `NONE`: its waits
    /// block the thread), but its destructors still see its locals.
    static UNWINDING: Cell<*const Pair> = const { Cell::new(ptr::null()) };
}

/// Runs `f` with the current logical thread: the running pair's greenlet,
/// the greenlet being force-unwound, or the thread's own stack outside any
/// greenlet.
pub(crate) fn with_logical<R>(f: impl FnOnce(&Logical) -> R) -> R {
    match current_pair() {
        Some(pair) => f(&pair.logical),
        None => match UNWINDING.try_with(Cell::get).unwrap_or(ptr::null()) {
            // SAFETY: UNWINDING points at a pair on the stack being unwound:
            // set as its unwind leaves `suspend`, reset (by `UnwindingEnds`)
            // before that pair is dropped.
            p if !p.is_null() => f(unsafe { &(*p).logical }),
            _ => {
                let mut f = Some(f);
                let call = |l: &Logical| f.take().expect("called once")(l);
                match THREAD_LOGICAL.try_with(call) {
                    Ok(r) => r,
                    // Late in thread exit (a thread-local's destructor that
                    // waits): the thread's own logical thread is gone, so
                    // this call gets a blank one.
                    Err(_) => f.take().expect("not called")(&Logical::default()),
                }
            }
        },
    }
}

/// Unwinds from the current wait to the scope that expired. Like a
/// cancellation, this runs every destructor between the wait and the scope
/// (`resume_unwind`: the panic hook is not called, nothing is printed).
pub(crate) fn raise_elapsed(scope: Scope) -> ! {
    with_logical(|l| l.begin_unwind_to(scope.id));
    std::panic::resume_unwind(Box::new(crate::logical::ScopeElapsed(scope.id)))
}

/// Runs `f` with the timeout scopes open now on the current logical thread
/// suspended: its waits are not cut by them (only by scopes `f` opens).
pub(crate) fn shielded<R>(f: impl FnOnce() -> R) -> R {
    struct Unshield(u32);
    impl Drop for Unshield {
        fn drop(&mut self) {
            with_logical(|l| l.unshield(self.0));
        }
    }
    let before = with_logical(Logical::shield);
    let _unshield = Unshield(before);
    f()
}

/// True when the unwind in flight (`std::thread::panicking()`) is a
/// cancellation — a timeout scope's expiry, or a greenlet being dropped or
/// cancelled — rather than a panic. `sync`'s guards poison their lock only
/// for a panic: a cancellation is an expected way for the code inside to
/// end, as it is for tokio's locks.
#[cold]
pub(crate) fn unwinding_for_cancellation() -> bool {
    crate::greenlet::in_forced_unwind() || with_logical(Logical::unwinding_to_scope)
}

/// Armed around `suspend`: dropped only if a forced unwind leaves it, when
/// it makes its pair the one being unwound.
struct UnwindingStarts<'a>(&'a Pair);

impl Drop for UnwindingStarts<'_> {
    fn drop(&mut self) {
        let prev = UNWINDING.with(|u| u.replace(self.0));
        self.0.unwinding_prev.set(prev);
        // The timeouts of the cancelled computation no longer apply: only
        // those its destructors (a `with_async` cleanup) open themselves.
        self.0.logical.suspend_open_scopes();
    }
}

/// Armed around the pair's closure: dropped only if it unwinds, when it
/// drops the pair's locals (their destructors still find the pair's
/// other locals) and hands UNWINDING back (a panic's unwind never set it).
struct UnwindingEnds<'a>(&'a Pair);

impl Drop for UnwindingEnds<'_> {
    fn drop(&mut self) {
        let _ = UNWINDING.try_with(|u| {
            if ptr::eq(u.get(), self.0) {
                self.0.logical.drop_locals();
                u.set(self.0.unwinding_prev.get());
            }
        });
    }
}

/// True when code runs on the greenlet of a pair: `exempt` would poll in
/// place and suspend only that greenlet.
#[inline]
pub(crate) fn in_greenlet() -> bool {
    current_pair().is_some()
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
    // The first poll inline, the rest out of line in
    // `wait_pending`: a ready future costs a user crate's loop a poll, not a
    // call (exempt(ready) was 2.0x stackful's `wait` in a user crate).
    #[inline]
    pub(super) fn wait<F: Future>(&self, fut: F, what: Wait) -> F::Output {
        let mut fut = pin!(fut);
        let Resume { cx, driver } = self.resume.get();
        // SAFETY: the context was passed by the poll that resumed us, which
        // is still running (we are inside it).
        let cx = unsafe { &mut *cx };
        // The future is polled by this pair: an AsAsync inside it is driven
        // by greenhack's loop exactly when this pair is.
        let polled = if driver == Driver::Loop {
            reactor::loop_poll(|| fut.as_mut().poll(cx))
        } else {
            fut.as_mut().poll(cx)
        };
        match polled {
            Poll::Ready(v) => v,
            Poll::Pending => self.wait_pending(fut, what),
        }
    }

    /// The rest of [`Pair::wait`] once a first poll found `fut` pending:
    /// suspend, then poll again, until it is ready (or the thread unwinds,
    /// or a timeout scope expires).
    #[inline(never)]
    fn wait_pending<F: Future>(&self, mut fut: Pin<&mut F>, what: Wait) -> F::Output {
        // The timer of the innermost-expiring timeout scope, armed when the
        // future is first pending.
        let mut scope_timer: Option<(Scope, reactor::Sleep)> = None;
        loop {
            if std::thread::panicking() {
                // A wait inside a `Drop` during an unwind (a panic, or this
                // greenlet being cancelled): switching away would let every
                // other greenlet of the thread see `panicking()`, and a
                // cancellation could not end a greenlet that is mid-unwind.
                return reactor::block_on_alone(fut);
            }
            // Still inside the poll that saw `fut` pending.
            let Resume { cx, driver } = self.resume.get();
            if !self.logical.has_no_scope() && driver != Driver::Foreign {
                // SAFETY: as in `wait`.
                let cx = unsafe { &mut *cx };
                let (scope, timer) = scope_timer.get_or_insert_with(|| {
                    let scope = self.logical.earliest_scope().expect("a scope is open");
                    (scope, reactor::Sleep::new(scope.deadline))
                });
                if pin!(timer).poll(cx).is_ready() {
                    raise_elapsed(*scope);
                }
            }
            // SAFETY: `suspender` belongs to our own greenlet, on whose stack
            // we run (checked by `current_pair`).
            let suspender = unsafe { &*self.suspender };
            let header = suspender.header();
            header.wait.set(what);
            let unwinding = UnwindingStarts(self);
            let next = suspender.suspend(());
            std::mem::forget(unwinding);
            header.wait.set(Wait::Nothing);
            self.resume.set(next);
            CURRENT.with(|c| c.set(self));
            let Resume { cx, driver } = self.resume.get();
            // SAFETY: as in `wait`.
            let cx = unsafe { &mut *cx };
            let polled = if driver == Driver::Loop {
                reactor::loop_poll(|| fut.as_mut().poll(cx))
            } else {
                fut.as_mut().poll(cx)
            };
            if let Poll::Ready(v) = polled {
                return v;
            }
        }
    }
}

/// The pair whose greenlet is running this code, if any.
#[inline]
fn current_pair() -> Option<&'static Pair> {
    let p = CURRENT.with(|c| c.get());
    // SAFETY: CURRENT points at a Pair on a live greenlet stack (it is
    // cleared or restored whenever that greenlet suspends or finishes), or
    // at NO_PAIR, which is laid out as a Pair's first field.
    let stack = unsafe { &*(p as *const Range<usize>) };
    let here = crate::asan::stack_address(&p as *const _ as usize);
    // SAFETY: inside the range, so not NO_PAIR (empty): a Pair.
    stack.contains(&here).then(|| unsafe { &*p })
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
///   need greenhack's loop. Polled by tokio (feature `tokio`), the future
///   hosts that loop in tokio's, so they work. Under an executor that cannot
///   host it they fail at once (sockets with `ErrorKind::Unsupported`,
///   `sleep`/`spawn` with a panic) and name the executor-native
///   alternative, which `exempt` can wait on.
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
    /// The greenlet's stack could not be mapped, or as
    /// [`build`](Builder::build) for a bad stack size or closure size.
    #[track_caller]
    pub fn as_async<T, F>(self, f: F) -> io::Result<AsAsync<T>>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        let sliced = self.is_sliced();
        let body = move |s: &Suspender<Resume, ()>, first: Resume| {
            let pair = Pair {
                suspender: s,
                resume: Cell::new(first),
                stack: s.stack_range(),
                logical: Logical::default(),
                sliced,
                unwinding_prev: Cell::new(ptr::null()),
            };
            CURRENT.with(|c| c.set(&pair));
            let ends = UnwindingEnds(&pair);
            let r = f();
            std::mem::forget(ends);
            r
        };
        let (greenlet, slice) = if sliced {
            let (greenlet, slice) = self.build_sliced(body)?;
            (greenlet, Some(slice))
        } else {
            (self.build(body)?, None)
        };
        Ok(AsAsync {
            greenlet: Some(greenlet),
            slice,
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
    /// A sliced greenlet's hold on its shared stack (see `crate::slice`):
    /// occupied before every switch into the greenlet. Declared after
    /// `greenlet`, and so dropped after it: an unwinding greenlet's frames
    /// need the stack.
    slice: Option<Box<crate::slice::Slice>>,
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
    ///
    /// A sliced greenlet's frames (and header fields) are brought onto its
    /// shared stack first: the detector asks right before the poll that
    /// would do it anyway.
    pub(crate) fn header(&self) -> Option<&crate::stack::StackHeader> {
        let greenlet = self.greenlet.as_ref()?;
        match &self.slice {
            None => greenlet.header_ref(),
            Some(slice) => {
                (slice.try_occupy() == crate::slice::Occupied::Yes).then(|| slice.stack_header())
            }
        }
    }
}

impl<T> Future for AsAsync<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let (by_loop, _restore_loop) = reactor::take_loop_poll();
        let _restore_pair = Restore(&CURRENT, CURRENT.with(|c| c.get()));
        let driver = if by_loop {
            Driver::Loop
        } else if reactor::hosted::can_host() {
            Driver::Hosted
        } else {
            Driver::Foreign
        };
        if self.greenlet.is_none() {
            polled_after_completion();
        }
        let resume = Resume {
            cx: (cx as *mut Context<'_>).cast::<Context<'static>>(),
            driver,
        };
        // Hosted: the turn before the resume latches what woke this task.
        if driver == Driver::Hosted {
            reactor::hosted::drive(cx, false);
        }
        let this = &mut *self;
        if let Some(slice) = &this.slice {
            // After the hosted turn above, which may have run other sliced
            // greenlets: right before the switch.
            slice.occupy();
        }
        let greenlet = this.greenlet.as_mut().expect("checked above");
        let polled = match greenlet.resume(resume) {
            GreenletResult::Yielded(()) => Poll::Pending,
            GreenletResult::Complete(v) => {
                // Give the stack back to the pool now, not when dropped.
                self.greenlet = None;
                self.slice = None;
                Poll::Ready(v)
            }
        };
        // Hosted: run what the greenlet spawned or woke, and have the host
        // poll this task again when greenhack's loop has news.
        if driver == Driver::Hosted {
            reactor::hosted::drive(cx, false);
        }
        polled
    }
}

impl<T> Drop for AsAsync<T> {
    fn drop(&mut self) {
        // The unwinding greenlet is resumed by this drop, not by a poll:
        // it is in no pair while its destructors run.
        let _restore = Restore(&CURRENT, CURRENT.with(|c| c.replace(NONE)));
        if let (Some(slice), Some(_)) = (&self.slice, &self.greenlet) {
            // Unwinding runs the greenlet's destructors on its frames.
            if slice.try_occupy() == crate::slice::Occupied::OccupantRuns {
                if !slice.is_fresh() {
                    sliced_drop_inside_sliced();
                }
                // Never started (the usual case: its first resume was
                // refused for the same reason): its closure is leaked, as
                // `mem::forget` would, rather than dropped.
                std::mem::forget(self.greenlet.take());
            }
        }
        self.greenlet = None;
    }
}

#[cold]
fn polled_after_completion() -> ! {
    panic!("greenhack: AsAsync polled after it completed")
}

/// An unfinished sliced greenlet dropped where its frames cannot be brought
/// back (inside another sliced greenlet of its stack): its destructors
/// cannot run, and freeing its frames unrun would break what `Pin`
/// promises the values on them.
#[cold]
fn sliced_drop_inside_sliced() -> ! {
    eprintln!(
        "greenhack: an unfinished sliced greenlet was dropped inside another sliced greenlet \
         of the same stack, where its frames cannot be brought back to unwind; drop it (or \
         let it finish) from greenhack's loop or the executor that polls it. Aborting."
    );
    std::process::abort()
}

impl<T> fmt::Debug for AsAsync<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsAsync")
            .field("greenlet", &self.greenlet)
            .finish()
    }
}

// ----- the one wait -------------------------------------------------------------

/// Where the calling code runs: the one decision every wait makes.
pub(super) enum Place {
    /// On the greenlet of a pair.
    Pair(&'static Pair),
    /// Outside any greenlet, where blocking the thread is fine: greenhack's
    /// loop runs on the thread's own stack meanwhile.
    Thread,
    /// Outside any greenlet, on a thread that a foreign executor runs, which
    /// blocking would stall.
    ForeignThread,
}

/// What a wait needs besides a `Context` to poll with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Needs {
    /// Nothing: any executor's future.
    Poll,
    /// Greenhack's loop must run (its sockets, timers, spawned greenlets).
    Loop,
}

/// Why a wait could not be made where it was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Outside any greenlet on a foreign executor's thread.
    ForeignThread,
    /// Inside an `as_async` whose executor cannot host greenhack's loop.
    NoLoop,
}

/// Where the calling code runs. Inline (it is on the path of every wait),
/// with the outside-a-greenlet half out of line.
#[inline]
pub(super) fn place() -> Place {
    if let Some(pair) = current_pair() {
        return Place::Pair(pair);
    }
    place_outside()
}

/// [`place`] outside any greenlet: on a thread of our own, or of a foreign
/// executor.
#[inline(never)]
fn place_outside() -> Place {
    if on_foreign_executor() {
        return Place::ForeignThread;
    }
    Place::Thread
}

/// Whether a wait that `needs` this could be made here.
pub(crate) fn check(needs: Needs) -> Result<(), Refusal> {
    match place() {
        Place::Pair(pair)
            if needs == Needs::Loop && pair.resume.get().driver == Driver::Foreign =>
        {
            Err(Refusal::NoLoop)
        }
        Place::Pair(_) | Place::Thread => Ok(()),
        Place::ForeignThread => Err(Refusal::ForeignThread),
    }
}

/// Waits for `fut` from sync code: polls it in place; while it is pending,
/// suspends the current greenlet (on a pair), or runs greenhack's loop on
/// the thread's stack (outside any greenlet), or — during an unwind —
/// blocks the thread on this one future. Every public wait is a thin
/// adapter over this one, turning a refusal into a panic, an
/// [`ExemptError`] or an `io::Error`. `what` is recorded for
/// `debug::dump` while suspended.
#[inline]
pub(crate) fn wait<F: Future>(fut: F, what: Wait, needs: Needs) -> Result<F::Output, (F, Refusal)> {
    // The greenlet case inline, the rest out of line (`wait_outside`),
    // so that `exempt` inlines into a user crate's code.
    if let Some(pair) = current_pair() {
        if needs == Needs::Loop && pair.resume.get().driver == Driver::Foreign {
            return Err((fut, Refusal::NoLoop));
        }
        // Any executor's future may register its address (a timer wheel's
        // entry, an intrusive waiter) while it waits: on a sliced greenlet,
        // whose stack's addresses other greenlets' frames take meanwhile,
        // it waits on the heap. Greenhack's own waits (`Needs::Loop`) keep
        // no such pointer.
        if needs == Needs::Poll && pair.sliced {
            return Ok(pair.wait(Box::pin(fut), what));
        }
        return Ok(pair.wait(fut, what));
    }
    wait_outside(fut)
}

/// [`wait`] outside any greenlet, out of line.
#[inline(never)]
fn wait_outside<F: Future>(fut: F) -> Result<F::Output, (F, Refusal)> {
    match place_outside() {
        Place::Thread if std::thread::panicking() => Ok(reactor::block_on_alone(fut)),
        // Late in thread exit the thread's logical thread is gone, and with
        // it any scope (`with_logical` hands a blank one).
        Place::Thread => match with_logical(Logical::earliest_scope) {
            None => Ok(reactor::block_on(fut)),
            Some(scope) => {
                let fut = pin!(fut);
                match reactor::block_on(reactor::Deadline::new(fut, scope.deadline)) {
                    Some(v) => Ok(v),
                    None => raise_elapsed(scope),
                }
            }
        },
        Place::ForeignThread => Err((fut, Refusal::ForeignThread)),
        Place::Pair(_) => unreachable!("greenhack: place_outside found a pair"),
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
/// # Waits inside `Drop` during an unwind
///
/// While the calling greenlet unwinds — a panic passing through it, or
/// its cancellation ([`JoinHandle::cancel`](crate::JoinHandle::cancel),
/// dropping an [`AsAsync`]) — a destructor that waits does not switch to
/// other greenlets: it blocks the thread on that one wait (greenhack's loop
/// turns for the future's I/O and timers, but runs no other greenlet until
/// it completes), as a destructor in blocking std code would. Switching
/// away would let every other greenlet of the thread observe
/// `std::thread::panicking()` (and poison `std::sync::Mutex`es they lock),
/// and a greenlet suspended mid-unwind could not be cancelled. Such a wait
/// must therefore not depend on another greenlet of the same thread, nor,
/// inside tokio, on tokio's own timers or sockets (tokio's loop does not
/// turn meanwhile): greenhack's sockets and timers, other threads and
/// already-ready futures are fine.
///
/// # Panics
///
/// Outside any greenlet, on a thread where a foreign executor runs (a tokio
/// worker or `block_on`; detected with the `tokio` feature), blocking would
/// stall that executor: `exempt` panics with a message saying to wrap the
/// sync code in `as_async`, or to call [`start_loop`] if blocking is
/// intended. [`try_exempt`] returns the future instead. A task of tokio's
/// `spawn_blocking` carries the runtime's context as well, and greenhack
/// cannot tell its thread from a worker: there, where blocking is the
/// point, wrap the sync code in [`run`].
#[track_caller]
#[inline]
pub fn exempt<F: IntoFuture>(fut: F) -> F::Output {
    match try_exempt(fut) {
        Ok(v) => v,
        Err(e) => exempt_refused(e),
    }
}

// `exempt`'s panic, out of line: formatting it inline made
// `exempt` too big to inline into a user crate's loop.
#[cold]
#[track_caller]
#[inline(never)]
fn exempt_refused<F>(e: ExemptError<F>) -> ! {
    panic!("{e}")
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
    let what = Wait::Future(std::any::type_name::<F::IntoFuture>());
    wait(fut.into_future(), what, Needs::Poll).map_err(|(future, _)| ExemptError { future })
}

/// Waits for a future of greenhack's loop (socket readiness) for the socket
/// layer: a refusal becomes an `Unsupported` error naming the fix.
pub(crate) fn wait_io<F: Future>(fut: F, what: Wait) -> io::Result<F::Output> {
    wait(fut, what, Needs::Loop).map_err(|(_, refusal)| refusal_error(refusal))
}

/// The `io::Error` of a refused socket wait.
pub(crate) fn refusal_error(refusal: Refusal) -> io::Error {
    let msg = match refusal {
        Refusal::NoLoop => {
            "greenhack sockets need greenhack's event loop, but this as_async is polled by an \
             executor that cannot host it (greenhack hosts itself in tokio, with the `tokio` \
             feature); use that executor's sockets through exempt, or run the code on \
             greenhack's loop (greenhack::spawn, greenhack::run)"
        }
        Refusal::ForeignThread => {
            "greenhack sockets used outside any greenlet on a foreign executor's thread would \
             block it; wrap the sync code in greenhack::as_async (and use the executor's \
             sockets through exempt), or call greenhack::start_loop() if blocking this thread \
             is intended"
        }
    };
    io::Error::new(io::ErrorKind::Unsupported, msg)
}

/// Waits for a future of greenhack's loop (a timer, a spawned greenlet) for
/// `time` and `task`: a refusal panics, naming `alternative`.
#[track_caller]
pub(crate) fn wait_loop<F: Future>(
    what: &str,
    fut: F,
    alternative: &str,
    wait_for: Wait,
) -> F::Output {
    match wait(fut, wait_for, Needs::Loop) {
        Ok(v) => v,
        Err((_, refusal)) => refuse(what, alternative, refusal),
    }
}

/// Panics unless greenhack's loop can serve the current code (for `spawn`,
/// which queues a greenlet nothing else would run).
#[track_caller]
pub(crate) fn require_loop(what: &str, alternative: &str) {
    if let Err(Refusal::NoLoop) = check(Needs::Loop) {
        refuse(what, alternative, Refusal::NoLoop)
    }
}

#[track_caller]
#[cold]
fn refuse(what: &str, alternative: &str, refusal: Refusal) -> ! {
    match refusal {
        Refusal::NoLoop => panic!(
            "greenhack: {what} needs greenhack's event loop, but this as_async is polled by an \
             executor that cannot host it (greenhack hosts itself in tokio, with the `tokio` \
             feature); use `exempt({alternative})` instead"
        ),
        Refusal::ForeignThread => panic!(
            "greenhack: {what} called outside any greenlet on a thread that runs an async \
             executor: waiting here would block the executor. Wrap the sync code in \
             greenhack::as_async(|| ...) and await that future, or call \
             greenhack::start_loop() first if blocking this thread is intended"
        ),
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
        !reactor::hosted::HostRuntime::is_installed()
            && tokio::runtime::Handle::try_current().is_ok()
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
///
/// # Inside a greenlet
///
/// Called from a greenlet (a [`spawn`](crate::spawn)ed one, or inside
/// [`as_async`]), `run` simply calls `f` there and returns its result: the
/// thread's loop already runs, and waiting for *every* greenlet of the
/// thread would wait for the caller itself. Greenlets that `f` spawns keep
/// running on that loop; join them to wait for them.
///
/// ```
/// let n = greenhack::run(|| greenhack::spawn(|| greenhack::run(|| 9)).join().unwrap());
/// assert_eq!(n, 9);
/// ```
pub fn run<T>(f: impl FnOnce() -> T) -> T {
    if current_pair().is_some() {
        return f();
    }
    let reactor = Reactor::current();
    // The permission to block this thread lasts for the call only, also
    // when `f` panics (on a foreign executor's thread, `exempt` must refuse
    // again afterwards).
    struct Permit(Option<std::rc::Rc<Reactor>>);
    impl Drop for Permit {
        fn drop(&mut self) {
            if let Some(reactor) = &self.0 {
                reactor.clear_explicit_loop();
            }
        }
    }
    let _permit = Permit((!reactor.has_explicit_loop()).then(|| reactor.clone()));
    reactor.set_explicit_loop();
    let out = f();
    reactor::block_on(reactor::AllTasksDone);
    out
}
