//! Sleeping, yielding and deadlines, on greenhack's loop.
//!
//! [`sleep`] and [`yield_now`] are plain functions for sync code; they wait
//! through [`exempt`](crate::exempt) like every other wait. Timers live in
//! the thread's reactor, so they need greenhack's loop: on a plain thread or
//! in a spawned greenlet that is automatic; inside an `as_async` polled by a
//! foreign executor they panic with a message naming the executor-native
//! alternative (`exempt(tokio::time::sleep(d))`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::reactor::{Reactor, Sleep};

/// Puts the current greenlet (or thread) to sleep for at least `duration`;
/// other greenlets of the loop run meanwhile.
///
/// ```
/// use std::time::{Duration, Instant};
///
/// let start = Instant::now();
/// greenhack::sleep(Duration::from_millis(20));
/// assert!(start.elapsed() >= Duration::from_millis(20));
/// ```
///
/// A `duration` too long for `Instant` to represent (`Duration::MAX`)
/// sleeps forever, as `std::thread::sleep` does; cancelling the greenlet
/// still ends it.
///
/// # Panics
///
/// Inside an `as_async` that a foreign executor polls: greenhack's timers
/// need greenhack's loop. The message names the executor-native
/// alternative, `exempt(tokio::time::sleep(d))`.
pub fn sleep(duration: Duration) {
    match Instant::now().checked_add(duration) {
        Some(deadline) => sleep_until(deadline),
        // issue 15 (defect 7): past the end of `Instant` is never; no timer.
        None => crate::pair::wait_loop(
            "greenhack::sleep",
            std::future::pending::<()>(),
            "tokio::time::sleep(d)",
            crate::wait::Wait::Future("greenhack::sleep(forever)"),
        ),
    }
}

/// Sleeps until `deadline`; returns at once if it has passed.
pub fn sleep_until(deadline: Instant) {
    crate::pair::wait_loop(
        "greenhack::sleep",
        Sleep::new(deadline),
        "tokio::time::sleep(d)",
        crate::wait::Wait::Sleep(deadline),
    )
}

/// Lets every other ready greenlet of the loop run once, then continues.
///
/// Outside greenhack's loop (under a foreign executor) this yields to that
/// executor instead, which is equally correct.
pub fn yield_now() {
    crate::pair::exempt(YieldNow(false))
}

/// Resolves on its second poll, waking itself after the first.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        if let Some(reactor) = Reactor::try_current() {
            reactor.note_yield();
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Converts a `Duration` timeout the way std's socket setters validate it.
pub(crate) fn check_timeout(dur: Option<Duration>) -> std::io::Result<Option<Duration>> {
    if dur == Some(Duration::ZERO) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "cannot set a 0 duration timeout",
        ));
    }
    Ok(dur)
}

// ----- timeouts that cancel sync code ---------------------------------------------

/// The error of [`timeout`]: the deadline passed while the code inside
/// waited, and it was unwound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed(());

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

impl From<Elapsed> for std::io::Error {
    fn from(_: Elapsed) -> std::io::Error {
        std::io::ErrorKind::TimedOut.into()
    }
}

/// Runs the sync code `f`, giving up on it once `duration` has passed:
/// `Ok` with its result if it returns in time, else `Err(Elapsed)`.
///
/// Like gevent's `Timeout` or a trio cancel scope: when the deadline passes
/// while the code inside waits (on a socket, a timer, a lock, any
/// [`exempt`](crate::exempt)), that wait does not return — the code is
/// unwound from its wait point up to this call, so every destructor on the
/// way runs and the futures and socket waits it was in are dropped. The
/// sockets themselves stay usable (a read abandoned this way consumed no
/// data).
///
/// ```
/// use std::io::Read;
/// use std::time::Duration;
///
/// let (mut a, _b) = greenhack::net::UnixStream::pair()?;
/// // A read three frames deep that would wait forever: abandoned after 20 ms.
/// fn parse(s: &mut greenhack::net::UnixStream) -> std::io::Result<usize> {
///     read_header(s)
/// }
/// fn read_header(s: &mut greenhack::net::UnixStream) -> std::io::Result<usize> {
///     s.read(&mut [0; 16])
/// }
/// let r = greenhack::timeout(Duration::from_millis(20), || parse(&mut a));
/// assert!(r.is_err());
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Nesting
///
/// Scopes nest: the earliest deadline wins, and only the scope it belongs
/// to returns `Err`: an inner scope with a later deadline does not catch an
/// outer one's expiry, which passes through it (unwinding it too) to the
/// outer call.
///
/// # Caveats
///
/// * Code that does not wait cannot be interrupted: a loop that computes,
///   or a call that blocks the thread in the kernel (`std::thread::sleep`,
///   `std::fs`), runs to its next greenhack wait first — as with gevent.
/// * The deadline is enforced by greenhack's timers, so it applies where
///   greenhack's loop runs (spawned greenlets, `run`, a plain thread, an
///   `as_async` under tokio); inside an `as_async` polled by an executor
///   that cannot host the loop, the code inside runs to completion.
/// * Code inside that catches unwinds (`catch_unwind`) and keeps waiting
///   is unwound again at its next wait.
/// * A panic inside `f` passes through unchanged.
/// * A scope belongs to the greenlet that opened it (one of [`spawn`](crate::spawn)
///   or [`as_async`](crate::as_async)), or else to the thread's own stack,
///   which code on a raw [`Greenlet`](crate::greenlet::Greenlet) shares. A
///   raw greenlet that suspends (`Suspender::suspend`) inside `timeout`
///   leaves its scope open on the thread: a wait of the thread's own code
///   past that deadline is unwound, with a payload no `timeout` catches.
///   Open the scope around the resume instead.
pub fn timeout<T>(duration: Duration, f: impl FnOnce() -> T) -> Result<T, Elapsed> {
    match Instant::now().checked_add(duration) {
        Some(deadline) => timeout_at(deadline, f),
        None => Ok(f()), // never
    }
}

/// [`timeout`] with a deadline instead of a duration.
pub fn timeout_at<T>(deadline: Instant, f: impl FnOnce() -> T) -> Result<T, Elapsed> {
    let id = crate::pair::with_logical(|l| l.push_scope(deadline));
    // Closes the scope on every way out, unwinds included.
    struct Close(u64);
    impl Drop for Close {
        fn drop(&mut self) {
            crate::pair::with_logical(|l| l.pop_scope(self.0));
        }
    }
    let close = Close(id);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    drop(close);
    match result {
        Ok(v) => Ok(v),
        Err(payload) => match payload.downcast_ref::<crate::logical::ScopeElapsed>() {
            Some(crate::logical::ScopeElapsed(scope)) if *scope == id => Err(Elapsed(())),
            _ => std::panic::resume_unwind(payload),
        },
    }
}
