//! Async guards for sync code: [`with_async`] runs an async setup, sync code,
//! and an async cleanup that learns how the sync code ended.
//!
//! This is the Python library's `exempt_cm` (an async context manager used
//! as a plain `with`), done so that the cleanup sees errors: a transaction
//! commits when the body succeeded and rolls back when it returned an error,
//! panicked, timed out, or its greenlet was cancelled.
//!
//! # Implementation
//!
//! The body runs inside `catch_unwind`. A caught panic is either a real one,
//! the private payload of a forced unwind (the greenlet is being dropped
//! or cancelled while the body waited), or a timeout scope's (after which
//! the cleanup runs shielded from the scopes); either way the unwind is stopped,
//! the cleanup runs through [`exempt`](crate::exempt) outside it, and then
//! the same payload is re-raised with `resume_unwind`, so the panic (or the
//! cancellation) continues exactly as if nothing had caught it.

use std::any::Any;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::panic::{self, AssertUnwindSafe};
use std::pin::pin;
use std::task::{Context, Waker};

/// How the body of [`with_async`] ended, as its cleanup is told.
#[non_exhaustive]
pub enum Exit<'a, T> {
    /// The body returned this value: `Ok` or `Err` alike (an early return or
    /// a `?` is a return). The cleanup may replace it — for example turn an
    /// `Ok` into the `Err` of a failed commit — and `with_async` returns
    /// what it holds after the cleanup.
    Returned(&'a mut T),
    /// The body panicked with this payload; the panic continues, with it,
    /// once the cleanup is done.
    Panicked(&'a (dyn Any + Send)),
    /// The body's greenlet was cancelled ([`JoinHandle::cancel`](crate::JoinHandle::cancel),
    /// or its `as_async` dropped) while the body waited, or a
    /// [`timeout`](crate::timeout) around it expired; the unwind goes on
    /// once the cleanup is done.
    Cancelled,
}

impl<T, E> Exit<'_, Result<T, E>> {
    /// True if the body returned `Ok`: the one case where a transaction
    /// should commit.
    pub fn is_ok(&self) -> bool {
        matches!(self, Exit::Returned(Ok(_)))
    }
}

impl<T: fmt::Debug> fmt::Debug for Exit<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Returned(v) => f.debug_tuple("Returned").field(v).finish(),
            Exit::Panicked(_) => f.write_str("Panicked(..)"),
            Exit::Cancelled => f.write_str("Cancelled"),
        }
    }
}

/// Waits for `setup`, runs the sync `body` with its output, then waits for
/// `cleanup` — however the body ends: returning (also early, or by `?`),
/// panicking, or being cancelled while it waits. The cleanup gets the setup's
/// output back by value and an [`Exit`] saying how the body ended.
///
/// A transaction: committed if the body returned `Ok`, rolled back
/// otherwise, and a failed commit reported as the body's error.
///
/// ```
/// # use std::cell::RefCell;
/// # use std::rc::Rc;
/// use greenhack::Exit;
///
/// # #[derive(Default)] struct Db { log: RefCell<Vec<String>> }
/// # struct Tx { db: Rc<Db>, rows: Vec<i32> }
/// # impl Db {
/// #     async fn begin(self: &Rc<Self>) -> Tx { Tx { db: self.clone(), rows: Vec::new() } }
/// # }
/// # impl Tx {
/// #     fn insert(&mut self, v: i32) -> Result<(), String> {
/// #         if v < 0 { return Err(format!("negative: {v}")) }
/// #         self.rows.push(v); Ok(())
/// #     }
/// #     async fn commit(self) -> Result<(), String> {
/// #         self.db.log.borrow_mut().push(format!("commit {:?}", self.rows)); Ok(())
/// #     }
/// #     async fn rollback(self) { self.db.log.borrow_mut().push("rollback".into()) }
/// # }
/// // An async client (say, a database pool), used from sync code.
/// fn save(db: &Rc<Db>, values: &[i32]) -> Result<usize, String> {
///     greenhack::with_async(
///         db.begin(),
///         |tx| {
///             for &v in values {
///                 tx.insert(v)?; // an Err ends the body: rollback
///             }
///             Ok(values.len())
///         },
///         async |tx, exit| match exit {
///             Exit::Returned(result @ Ok(_)) => {
///                 if let Err(e) = tx.commit().await {
///                     *result = Err(e); // the caller sees the failed commit
///                 }
///             }
///             _ => tx.rollback().await, // an Err, a panic, a cancellation
///         },
///     )
/// }
///
/// let db = Rc::new(Db::default());
/// assert_eq!(save(&db, &[1, 2]), Ok(2));
/// assert_eq!(save(&db, &[3, -4]), Err("negative: -4".to_string()));
/// assert_eq!(*db.log.borrow(), ["commit [1, 2]", "rollback"]);
/// ```
///
/// # Panics and cancellation
///
/// A panic in `body` is caught, the cleanup runs (told
/// [`Exit::Panicked`]), and the panic then continues with its original
/// payload. If the body's greenlet is cancelled while the body waits, or a
/// [`timeout`](crate::timeout) around it expires, the cleanup runs (told
/// [`Exit::Cancelled`]) and the unwind then continues. After a timeout the
/// cleanup runs with the timeouts around it suspended, so that a rollback
/// can wait (on the network, a lock) to its end: it is not cut by the
/// deadline that already passed.
/// The cleanup itself is not protected: a panic in it replaces the body's,
/// and a cancellation that arrives while it waits stops it at that wait.
/// If `setup` does not complete (it panics, or the greenlet is cancelled
/// while it waits), there is nothing to clean up and `cleanup` does not run.
///
/// The cleanup of a cancelled body waits while its greenlet is being
/// dropped, outside any pair: on greenhack's loop (a cancelled `spawn`, an
/// `as_async` dropped on a plain thread) that wait runs the loop; an
/// `as_async` dropped by another executor has nothing to serve it: a
/// cleanup that completes without waiting (its first poll is ready) still
/// runs there, and one that would wait makes `exempt` panic as it does
/// outside any greenlet (the panic replaces the cancellation, and the
/// cleanup does not complete).
///
/// `body` gets `&mut R` and the cleanup gets `R` even after a panic, so the
/// cleanup may find `R` in whatever state the body left it (the reason to
/// roll back).
///
/// All waits are [`exempt`](crate::exempt)s: `with_async` works wherever
/// `exempt` does.
pub fn with_async<R, T, S, B, C>(setup: S, body: B, cleanup: C) -> T
where
    S: IntoFuture<Output = R>,
    B: FnOnce(&mut R) -> T,
    C: AsyncFnOnce(R, Exit<'_, T>),
{
    let mut resource = crate::pair::exempt(setup);
    // Unwind safety: the panic is re-raised below after the cleanup, which
    // is the code meant to see `resource` in a broken state.
    match panic::catch_unwind(AssertUnwindSafe(|| body(&mut resource))) {
        Ok(mut value) => {
            crate::pair::exempt(cleanup(resource, Exit::Returned(&mut value)));
            value
        }
        Err(payload) => {
            if crate::logical::is_elapsed(&*payload) {
                // A timeout expired: the cleanup's own waits must not be cut
                // by that same, already expired, deadline.
                crate::pair::shielded(|| {
                    crate::pair::exempt(cleanup(resource, Exit::Cancelled));
                });
            } else if crate::greenlet::is_forced_unwind(&*payload) {
                wait_cancelled_cleanup(cleanup(resource, Exit::Cancelled));
            } else {
                crate::pair::exempt(cleanup(resource, Exit::Panicked(&*payload)));
            }
            panic::resume_unwind(payload)
        }
    }
}

/// Waits for the cleanup of a cancelled body, which runs outside any pair.
/// Where `exempt` refuses (an `as_async` dropped by another executor), a
/// cleanup that completes without waiting still runs: it is polled once.
fn wait_cancelled_cleanup<F: Future<Output = ()>>(cleanup: F) {
    if let Err(refused) = crate::pair::try_exempt(cleanup) {
        let mut cleanup = pin!(refused.into_future());
        let mut cx = Context::from_waker(Waker::noop());
        if cleanup.as_mut().poll(&mut cx).is_pending() {
            // Refused again, with the message that names the fix.
            crate::pair::exempt(cleanup);
        }
    }
}
