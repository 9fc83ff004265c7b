//! Spawned greenlets: more logical threads on the current thread's loop.
//!
//! [`spawn`] runs a sync closure on a new greenlet that greenhack's loop
//! drives, and returns a [`JoinHandle`]: `join()` waits for it from sync
//! code, and the handle is also a `Future`. A panic in the greenlet comes out
//! of `join` as a [`JoinError`] carrying the payload; [`JoinHandle::cancel`]
//! unwinds the greenlet's stack (its destructors run) and `join` then reports
//! the cancellation. Dropping the handle detaches the greenlet.
//!
//! [`spawn_driver`] runs a plain future (a client library's background
//! connection) as a task polled ahead of most greenlets: the reactor's
//! driver lane.

use std::any::Any;
use std::cell::{Cell, OnceCell, RefCell};
use std::fmt;
use std::future::Future;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::greenlet::Builder;
use crate::pair::AsAsync;
use crate::reactor::{self, Footprint, Reactor, TaskFuture};
use crate::wait::Wait;

/// Spawns `f` on a new greenlet of this thread's loop.
///
/// The greenlet first runs when this thread next waits on greenhack's loop:
/// inside another greenlet, at its next wait; on a plain thread, at the next
/// `exempt`, `join`, socket call or `sleep`, or at the end of [`run`](crate::run).
///
/// ```
/// let h = greenhack::spawn(|| 6 * 7);
/// assert_eq!(h.join().unwrap(), 42);
/// ```
///
/// # Panics
///
/// Inside an `as_async` polled by a foreign executor (nothing would run the
/// greenlet: use that executor's `spawn_local(greenhack::as_async(f))`), or
/// if the stack cannot be mapped ([`Builder::spawn`] returns that error).
#[track_caller]
pub fn spawn<T, F>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + 'static,
    T: 'static,
{
    match Builder::new().spawn(f) {
        Ok(h) => h,
        Err(e) => panic!("{e}"),
    }
}

impl Builder {
    /// [`spawn`] with this builder's name and stack size.
    ///
    /// # Errors
    ///
    /// The greenlet's stack could not be mapped, or as
    /// [`build`](Builder::build) for a bad stack size or closure size.
    ///
    /// # Panics
    ///
    /// As [`spawn`].
    #[track_caller]
    pub fn spawn<T, F>(self, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        crate::pair::require_loop(
            "greenhack::spawn",
            "the executor's spawn_local(greenhack::as_async(f))",
        );
        let future = self.as_async(f)?;
        let state = Rc::new(JoinState {
            result: RefCell::new(None),
            finished: Cell::new(false),
            joiner: RefCell::new(None),
            task: OnceCell::new(),
            cancelled: Cell::new(false),
        });
        let waker = Reactor::current().spawn(Box::pin(Task {
            future: Some(future),
            state: state.clone(),
        }));
        let _ = state.task.set(waker);
        Ok(JoinHandle { state })
    }
}

/// Shared between a task and its handle.
struct JoinState<T> {
    /// Set once, when the greenlet ends; taken by the joiner.
    result: RefCell<Option<Result<T, JoinError>>>,
    /// Set when the greenlet ends, and stays set after the joiner took
    /// `result` (a handle awaited by reference is still finished).
    finished: Cell<bool>,
    /// Who waits in `join` or polls the handle.
    joiner: RefCell<Option<Waker>>,
    /// The task's own waker, to make it notice a cancellation. Set once at
    /// spawn: the reactor polls a task with the same waker every time.
    task: OnceCell<Waker>,
    cancelled: Cell<bool>,
}

impl<T> JoinState<T> {
    fn finish(&self, result: Result<T, JoinError>) {
        *self.result.borrow_mut() = Some(result);
        self.finished.set(true);
        if let Some(w) = self.joiner.borrow_mut().take() {
            w.wake();
        }
    }
}

/// The reactor's view of a spawned greenlet.
struct Task<T> {
    future: Option<AsAsync<T>>,
    state: Rc<JoinState<T>>,
}

impl<T> Future for Task<T> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.future.is_none() {
            return Poll::Ready(());
        }
        if self.state.cancelled.get() {
            // Unwind the greenlet's stack here, where no poll is running.
            let unwound = panic::catch_unwind(AssertUnwindSafe(|| self.future = None));
            let err = match unwound {
                Ok(()) => JoinError::cancelled(),
                Err(payload) => JoinError::panicked(payload),
            };
            self.state.finish(Err(err));
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
        self.state.finish(result);
        Poll::Ready(())
    }
}

/// A task dropped unfinished — by the thread-exit shutdown, or a runtime
/// stopping its loop — is a cancellation: its greenlet is unwound (by the
/// field's drop) and its joiner told.
impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if self.future.is_none() {
            return;
        }
        let unwound = panic::catch_unwind(AssertUnwindSafe(|| self.future = None));
        let err = match unwound {
            Ok(()) => JoinError::cancelled(),
            Err(payload) => JoinError::panicked(payload),
        };
        self.state.finish(Err(err));
    }
}

impl<T> TaskFuture for Task<T> {
    fn record_footprint(&self, into: &mut Footprint) {
        let stack = self.future.as_ref().and_then(AsAsync::resume_footprint);
        *into = Footprint {
            // `poll` reads `cancelled` first.
            object: Rc::as_ptr(&self.state) as usize,
            stack: stack.unwrap_or_default(),
        }
    }

    // For the stall detector (offload branch: `crate::stall`).
    fn greenlet(&self) -> Option<&crate::stack::StackHeader> {
        self.future.as_ref()?.header()
    }
}

/// Runs `future` on this thread's event loop as a *driver*: a task that,
/// whenever it is woken, is polled ahead of most of the greenlets waiting
/// to run.
///
/// This is for the background future of a client library, which every
/// request passes through on its way out and on its way back:
/// tokio-postgres's `Connection`, hyper's client connection, a multiplexed
/// channel's reader. Spawned as a greenlet with [`spawn`], it
/// would wait behind every other ready greenlet at each hop, so a query
/// from a server with hundreds of busy connections paid for hundreds of
/// them twice. A driver woken by a greenlet (a request handed over) runs
/// after at most 16 more tasks, so that it still writes several greenlets'
/// requests at once, and a driver woken by I/O (the answer arrived) runs
/// before the greenlets woken with it. Fairness is kept: the loop polls
/// each driver at most once per 16 tasks (twice at a round's boundary), so
/// a driver that keeps waking itself slows the greenlets down but cannot
/// starve them.
///
/// The future is polled by the loop itself, outside any greenlet: it must
/// await (greenhack's sockets implement tokio's `AsyncRead` and
/// `AsyncWrite` with the `tokio` feature), not call greenhack's blocking
/// functions ([`exempt`](crate::exempt), [`sleep`](crate::sleep), a
/// socket's `read`). Keep each poll short, as for any task on a shared
/// loop: a driver's poll delays every greenlet behind it.
///
/// The task is detached: it runs until `future` completes, or until the
/// thread's loop shuts down, which drops it. A panic in its poll ends the
/// task (the panic hook has reported it), as it ends a detached greenlet.
///
/// ```
/// use std::cell::Cell;
/// use std::rc::Rc;
///
/// let driven = Rc::new(Cell::new(0));
/// greenhack::run(|| {
///     let d = driven.clone();
///     greenhack::spawn_driver(async move { d.set(42) });
/// });
/// // `run` returns once every task it started, drivers included, is done.
/// assert_eq!(driven.get(), 42);
/// ```
///
/// # Panics
///
/// Inside an `as_async` polled by an executor that cannot host greenhack's
/// loop (nothing would poll the driver).
#[track_caller]
pub fn spawn_driver<F>(future: F)
where
    F: Future<Output = ()> + 'static,
{
    crate::pair::require_loop(
        "greenhack::spawn_driver",
        "the future, or the executor's spawn_local(future)",
    );
    drop(Reactor::current().spawn_driver(Box::pin(Driver(future))));
}

/// The reactor's view of a [`spawn_driver`] future: it ends at its first
/// panic instead of unwinding through the loop.
struct Driver<F>(F);

impl<F: Future<Output = ()>> Future for Driver<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: structural pinning: the field is never moved out of the
        // pinned `Driver`, and `Driver` has no `Drop` or `Unpin` impl of its
        // own that could move it.
        let future = unsafe { self.map_unchecked_mut(|d| &mut d.0) };
        match panic::catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(polled) => polled,
            // The panic hook has printed the message; a detached task has
            // no one else to tell.
            Err(_payload) => Poll::Ready(()),
        }
    }
}

/// No stack; the reactor prefetches the task's own allocation.
impl<F: Future<Output = ()>> TaskFuture for Driver<F> {}

/// Owns the right to join a spawned greenlet. Dropping it detaches the
/// greenlet, which keeps running.
#[must_use = "dropping a JoinHandle detaches the greenlet; call join() to wait for it"]
pub struct JoinHandle<T> {
    state: Rc<JoinState<T>>,
}

impl<T> JoinHandle<T> {
    /// Waits for the greenlet to finish and returns its result, or the
    /// payload of its panic, or the news that it was cancelled.
    ///
    /// Waits like [`exempt`](crate::exempt): inside a greenlet it suspends,
    /// on a plain thread it runs the loop.
    ///
    /// # Panics
    ///
    /// Inside an `as_async` polled by an executor that cannot host
    /// greenhack's loop (nothing would run the greenlet).
    #[track_caller]
    pub fn join(self) -> Result<T, JoinError> {
        crate::pair::wait_loop(
            "JoinHandle::join",
            self,
            "the executor's JoinHandle of spawn_local(greenhack::as_async(f))",
            Wait::Future(std::any::type_name::<Self>()),
        )
    }

    /// True once the greenlet has finished (returned, panicked or been
    /// cancelled).
    pub fn is_finished(&self) -> bool {
        self.state.finished.get()
    }

    /// Asks the greenlet to stop: at the loop's next turn its stack is
    /// unwound, so every destructor on it runs and the future it waits on is
    /// dropped. [`join`](Self::join) then returns an error whose
    /// [`is_cancelled`](JoinError::is_cancelled) is true. Cancelling a
    /// finished greenlet does nothing.
    pub fn cancel(&self) {
        if self.is_finished() {
            return;
        }
        self.state.cancelled.set(true);
        if let Some(w) = self.state.task.get() {
            w.wake_by_ref();
        }
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(r) = self.state.result.borrow_mut().take() {
            return Poll::Ready(r);
        }
        if self.state.finished.get() {
            // Its result was handed out by an earlier poll: waiting again
            // would never end.
            polled_after_completion();
        }
        *self.state.joiner.borrow_mut() = Some(cx.waker().clone());
        if !reactor::is_loop_poll() {
            // Polled by another executor, not through greenhack's loop: that
            // executor must run the loop, or the greenlet never would.
            if !reactor::hosted::can_host() {
                panic!(
                    "{}",
                    "greenhack: a JoinHandle polled by an executor that cannot host greenhack's \
                     loop would never complete: wait for it with join() (or exempt) from sync \
                     code, inside greenhack::run, or under tokio (the `tokio` feature)"
                );
            }
            reactor::hosted::drive(cx, true);
            if let Some(r) = self.state.result.borrow_mut().take() {
                return Poll::Ready(r);
            }
        }
        Poll::Pending
    }
}

// Unwind safe, as tokio's `JoinHandle` is (and for the same reason): the
// handle has no state a user can see half-updated. `JoinState`'s cells are
// written only by this module, each in one step that runs no user code
// (`finish` stores the result and the flag before it wakes the joiner;
// `poll` clones the waker before it stores it), and the `T` is handed out
// by value once the closure has returned it, never borrowed. So
// `catch_unwind(move || handle.join())` needs no `AssertUnwindSafe`, as with
// a std `Mutex`. The closure's own panic is caught in the greenlet and comes
// back as a `JoinError`.
impl<T> std::panic::UnwindSafe for JoinHandle<T> {}
impl<T> std::panic::RefUnwindSafe for JoinHandle<T> {}

#[cold]
fn polled_after_completion() -> ! {
    panic!("greenhack: JoinHandle polled after it completed")
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// Why a spawned greenlet produced no value.
///
/// `Send` and `Sync`, as tokio's `JoinError` is: it converts into
/// `Box<dyn Error + Send + Sync>` (and so `io::Error::other`, `anyhow`).
pub struct JoinError {
    /// The panic's payload. In a `Mutex` only to make the error `Sync`
    /// without `unsafe` (the payload is `Send` but need not be `Sync`):
    /// `Display` locks it to read a string message; nothing else shares it.
    panic: Option<std::sync::Mutex<Box<dyn Any + Send>>>,
}

impl JoinError {
    pub(crate) fn cancelled() -> JoinError {
        JoinError { panic: None }
    }

    pub(crate) fn panicked(payload: Box<dyn Any + Send>) -> JoinError {
        JoinError {
            panic: Some(std::sync::Mutex::new(payload)),
        }
    }

    /// True if [`JoinHandle::cancel`] stopped the greenlet.
    pub fn is_cancelled(&self) -> bool {
        self.panic.is_none()
    }

    /// True if the greenlet panicked.
    pub fn is_panic(&self) -> bool {
        self.panic.is_some()
    }

    /// The panic's payload, to inspect or to `resume_unwind`.
    ///
    /// # Panics
    ///
    /// If the greenlet was cancelled rather than panicking.
    pub fn into_panic(self) -> Box<dyn Any + Send> {
        let payload = self
            .panic
            .expect("greenhack: the greenlet was cancelled, it did not panic");
        // Never poisoned: nothing panics while holding the lock.
        payload.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl JoinError {
    /// The panic's payload, or the error back if the greenlet was cancelled
    /// (tokio's `JoinError::try_into_panic`).
    ///
    /// ```
    /// greenhack::run(|| {
    ///     let h = greenhack::spawn(|| std::panic::panic_any(7u8));
    ///     let payload = h.join().unwrap_err().try_into_panic().unwrap();
    ///     assert_eq!(payload.downcast_ref::<u8>(), Some(&7));
    /// });
    /// ```
    ///
    /// # Errors
    ///
    /// The error itself when the greenlet was cancelled.
    pub fn try_into_panic(self) -> Result<Box<dyn Any + Send>, JoinError> {
        match self.panic {
            Some(_) => Ok(self.into_panic()),
            None => Err(self),
        }
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(payload) = &self.panic else {
            return f.write_str("greenlet was cancelled");
        };
        let p = payload.lock().unwrap_or_else(|e| e.into_inner());
        match p
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        {
            Some(msg) => write!(f, "greenlet panicked: {msg}"),
            None => f.write_str("greenlet panicked"),
        }
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinError({self})")
    }
}

impl std::error::Error for JoinError {}
