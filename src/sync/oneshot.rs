//! A channel for one value: [`channel`] gives a [`Sender`] that sends once
//! and a [`Receiver`] that waits for it from sync code (`recv`) or from
//! async code (it is a `Future`).
//!
//! Both ends may cross threads: a plain thread or another loop can answer a
//! greenlet, and a greenlet can answer a tokio task. The errors are std's
//! mpsc errors, with their meaning: `Disconnected` when the sender was
//! dropped without sending. One spin lock guards the value, the
//! liveness of both ends and the receiver's waker.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::spin::{SpinGuard, SpinLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

pub use std::sync::mpsc::{RecvError, RecvTimeoutError, TryRecvError};

/// Creates a one-value channel.
///
/// ```
/// let (tx, rx) = greenhack::sync::oneshot::channel();
/// std::thread::spawn(move || tx.send(42).unwrap());
/// assert_eq!(rx.recv(), Ok(42));
/// ```
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        state: SpinLock::new(State {
            value: None,
            sender_alive: true,
            receiver_alive: true,
            waker: None,
        }),
    });
    (
        Sender {
            inner: inner.clone(),
        },
        Receiver { inner },
    )
}

struct Inner<T> {
    state: SpinLock<State<T>>,
}

struct State<T> {
    value: Option<T>,
    sender_alive: bool,
    receiver_alive: bool,
    /// Who waits for the value.
    waker: Option<Waker>,
}

impl<T> Inner<T> {
    fn lock(&self) -> SpinGuard<'_, State<T>> {
        self.state.lock()
    }
}

/// Sends the one value; dropping it unsent disconnects the receiver.
pub struct Sender<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Sender<T> {
    /// Sends `value`, waking the receiver.
    ///
    /// # Errors
    ///
    /// If the receiver is gone: the value, handed back.
    pub fn send(self, value: T) -> Result<(), T> {
        let mut st = self.inner.lock();
        if !st.receiver_alive {
            return Err(value);
        }
        st.value = Some(value);
        st.sender_alive = false;
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        // `Drop` finds the value sent and does nothing more.
        Ok(())
    }

    /// True once the receiver is gone: a send would fail.
    pub fn is_closed(&self) -> bool {
        !self.inner.lock().receiver_alive
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        if !st.sender_alive {
            return; // sent
        }
        st.sender_alive = false;
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

/// Receives the one value: [`recv`](Receiver::recv) from sync code, or
/// `.await` from async code.
///
/// ```
/// let (tx, rx) = greenhack::sync::oneshot::channel();
/// let rt = tokio::runtime::Builder::new_current_thread().build()?;
/// std::thread::spawn(move || tx.send("hi").unwrap());
/// assert_eq!(rt.block_on(rx), Ok("hi"));
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Receiver<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Receiver<T> {
    /// Waits (suspending this greenlet) for the value.
    ///
    /// # Errors
    ///
    /// [`RecvError`] if the sender was dropped without sending.
    pub fn recv(mut self) -> Result<T, RecvError> {
        match self.try_recv() {
            Ok(v) => Ok(v),
            Err(TryRecvError::Disconnected) => Err(RecvError),
            Err(TryRecvError::Empty) => super::wait::wait(&mut self),
        }
    }

    /// Takes the value if it has been sent; never waits.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] if not sent yet;
    /// [`TryRecvError::Disconnected`] if the sender was dropped without
    /// sending, or the value was already taken.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut st = self.inner.lock();
        match st.value.take() {
            Some(v) => Ok(v),
            None if st.sender_alive => Err(TryRecvError::Empty),
            None => Err(TryRecvError::Disconnected),
        }
    }

    /// Waits for the value for at most `timeout`; after a timeout the
    /// receiver can wait again.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`] if it did not come in time;
    /// [`RecvTimeoutError::Disconnected`] as `try_recv`'s.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        match self.try_recv() {
            Ok(v) => return Ok(v),
            Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) => {}
        }
        let got = match Instant::now().checked_add(timeout) {
            Some(deadline) => super::wait::wait_until(&mut *self, deadline),
            None => Some(super::wait::wait(&mut *self)),
        };
        match got {
            Some(Ok(v)) => Ok(v),
            Some(Err(RecvError)) => Err(RecvTimeoutError::Disconnected),
            None => Err(RecvTimeoutError::Timeout),
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = Result<T, RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.inner.lock();
        if let Some(v) = st.value.take() {
            return Poll::Ready(Ok(v));
        }
        if !st.sender_alive {
            return Poll::Ready(Err(RecvError));
        }
        match &mut st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        st.receiver_alive = false;
        st.waker = None;
        let value = st.value.take();
        drop(st);
        // Dropped outside the lock: its destructor may use this channel.
        drop(value);
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}
