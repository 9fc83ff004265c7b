//! How a primitive of [`sync`](super) waits: for a future, with or without a
//! deadline, wherever the caller runs.
//!
//! [`wait`] and [`wait_until`] hand the primitive's waiting future to
//! [`try_exempt`](crate::try_exempt), so that
//!
//! * inside a greenlet only that greenlet is suspended;
//! * on a plain thread greenhack's loop runs on it (other greenlets of the
//!   thread run meanwhile);
//! * inside an `as_async` polled by another executor, the future is polled
//!   with that executor's waker.
//!
//! Where `try_exempt` refuses (outside any greenlet on a foreign executor's
//! thread), the thread is parked until the waker fires, as std's primitives
//! would block it.
//!
//! A deadline is a timer armed at the first `Pending`: on greenhack's loop
//! the reactor's own ([`Sleep`]); when parking,
//! `park_timeout`; under another executor (whose timers greenhack cannot
//! name) a shared timer thread that wakes the waker at the deadline.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Instant;

use crate::reactor::Sleep;

/// Waits until `fut` completes.
///
/// Inline into the primitive's (out-of-line) slow path: one frame fewer
/// for a resumed greenlet to return through, each return after a switch
/// being a mispredicted one and a cold stack line.
#[inline]
pub(crate) fn wait<F: Future + Unpin>(fut: F) -> F::Output {
    // No `Timed` around it: a smaller future and frame on the path every
    // contended lock and empty receive takes.
    match crate::pair::try_exempt(fut) {
        Ok(v) => v,
        Err(refused) => park_on(Timed {
            inner: refused.into_future(),
            deadline: None,
            timer: Timer::Parking,
        })
        .expect("no deadline was set"),
    }
}

/// Waits until `fut` completes or `deadline` passes (`None`); the future is
/// dropped when the deadline wins, which is how a primitive's waiter leaves
/// its queue.
pub(crate) fn wait_until<F: Future + Unpin>(fut: F, deadline: Instant) -> Option<F::Output> {
    wait_timed(fut, Some(deadline))
}

fn wait_timed<F: Future + Unpin>(fut: F, deadline: Option<Instant>) -> Option<F::Output> {
    let timed = Timed {
        inner: fut,
        deadline,
        timer: Timer::Unarmed,
    };
    match crate::pair::try_exempt(timed) {
        Ok(v) => v,
        Err(refused) => park_on(refused.into_future()),
    }
}

/// `inner`, or `None` once `deadline` passes first.
struct Timed<F> {
    inner: F,
    deadline: Option<Instant>,
    timer: Timer,
}

enum Timer {
    Unarmed,
    /// The caller parks the thread with `park_timeout` itself.
    Parking,
    /// greenhack's loop polls us: its reactor's timer.
    Loop(Sleep),
    /// Another executor polls us: the shared timer thread.
    Thread(ThreadTimer),
}

impl<F: Future + Unpin> Future for Timed<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = Pin::new(&mut self.inner).poll(cx) {
            return Poll::Ready(Some(v));
        }
        let Some(deadline) = self.deadline else {
            return Poll::Pending;
        };
        if Instant::now() >= deadline {
            return Poll::Ready(None);
        }
        if let Timer::Unarmed = self.timer {
            self.timer = if crate::reactor::is_loop_poll() {
                Timer::Loop(Sleep::new(deadline))
            } else {
                Timer::Thread(ThreadTimer::new(deadline))
            };
        }
        match &mut self.timer {
            Timer::Unarmed | Timer::Parking => Poll::Pending,
            Timer::Loop(sleep) => Pin::new(sleep).poll(cx).map(|()| None),
            Timer::Thread(t) => {
                t.set_waker(cx.waker());
                Poll::Pending
            }
        }
    }
}

/// Wakes the parked thread that waits on it.
struct Unparker {
    thread: Thread,
    woken: AtomicBool,
}

impl Wake for Unparker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.woken.swap(true, Ordering::Release) {
            self.thread.unpark();
        }
    }
}

/// Polls `fut` on this thread, parking it between polls: std's blocking.
///
/// Out of line: inlined, it tripled the frame of every wait through
/// [`wait`], and a suspended greenlet's resume touches its frames.
#[cold]
#[inline(never)]
fn park_on<F: Future + Unpin>(mut fut: Timed<F>) -> Option<F::Output> {
    fut.timer = Timer::Parking;
    let unparker = Arc::new(Unparker {
        thread: thread::current(),
        woken: AtomicBool::new(false),
    });
    let waker = Waker::from(unparker.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = Pin::new(&mut fut).poll(&mut cx) {
            return v;
        }
        while !unparker.woken.swap(false, Ordering::Acquire) {
            match fut.deadline {
                None => thread::park(),
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => thread::park_timeout(left),
                    // Due: the next poll returns `None`.
                    _ => break,
                },
            }
        }
    }
}

// ----- the shared timer thread ---------------------------------------------

/// Deadlines of waits polled by other executors, served by one thread that
/// sleeps until the earliest and wakes its waker.
struct Timers {
    entries: Mutex<Entries>,
    changed: Condvar,
}

/// (deadline, id) → waker, and the last id given out.
type Entries = (BTreeMap<(Instant, u64), Waker>, u64);

fn timers() -> &'static Timers {
    static TIMERS: OnceLock<&'static Timers> = OnceLock::new();
    TIMERS.get_or_init(|| {
        let timers: &'static Timers = Box::leak(Box::new(Timers {
            entries: Mutex::new((BTreeMap::new(), 0)),
            changed: Condvar::new(),
        }));
        thread::Builder::new()
            .name("greenhack-sync-timer".into())
            .spawn(move || timers.run())
            .expect("greenhack::sync: could not start the timer thread");
        timers
    })
}

impl Timers {
    fn run(&self) {
        let mut guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(entry) = guard.0.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
            if !due.is_empty() {
                drop(guard);
                due.into_iter().for_each(Waker::wake);
                guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            guard = match guard.0.keys().next() {
                Some(&(first, _)) => {
                    self.changed
                        .wait_timeout(guard, first.saturating_duration_since(now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.changed.wait(guard).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

/// One registration with the timer thread; removed on drop.
struct ThreadTimer {
    key: (Instant, u64),
    /// The waker last registered, to skip re-registering the same task.
    waker: Option<Waker>,
}

impl ThreadTimer {
    fn new(deadline: Instant) -> ThreadTimer {
        let mut entries = timers().entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.1 += 1;
        ThreadTimer {
            key: (deadline, entries.1),
            waker: None,
        }
    }

    fn set_waker(&mut self, waker: &Waker) {
        if self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            return;
        }
        self.waker = Some(waker.clone());
        let t = timers();
        let mut entries = t.entries.lock().unwrap_or_else(|e| e.into_inner());
        let earliest = entries.0.keys().next().is_none_or(|&k| self.key < k);
        entries.0.insert(self.key, waker.clone());
        drop(entries);
        if earliest {
            t.changed.notify_one();
        }
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        if self.waker.is_some() {
            let mut entries = timers().entries.lock().unwrap_or_else(|e| e.into_inner());
            entries.0.remove(&self.key);
        }
    }
}
