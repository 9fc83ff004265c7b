//! Multi-producer, single-consumer channels, as `std::sync::mpsc` has them,
//! whose waits suspend the greenlet.
//!
//! [`channel`] is unbounded: [`Sender::send`] never waits. [`sync_channel`]
//! holds at most `bound` messages: [`SyncSender::send`] waits while it is
//! full, and with `bound == 0` each send is a rendezvous with a receiver.
//! Senders are `Send + Sync + Clone`: plain OS threads and greenlets on
//! other threads' loops may send, and the waiting greenlet's loop is woken.
//! Messages from one sender arrive in the order it sent them.
//!
//! The error types are std's own ([`std::sync::mpsc::RecvError`] and the
//! others, re-exported here), with std's meaning: a receive fails with
//! `Disconnected` once every sender is gone *and* the buffer is drained; a
//! send fails, handing the message back, once the receiver is gone.
//!
//! ```
//! use greenhack::sync::mpsc;
//!
//! let (tx, rx) = mpsc::sync_channel(1);
//! greenhack::run(|| {
//!     greenhack::spawn(move || {
//!         for i in 0..3 {
//!             tx.send(i).unwrap(); // waits while the one slot is full
//!         }
//!     });
//!     let got: Vec<i32> = rx.iter().collect(); // ends when tx is dropped
//!     assert_eq!(got, [0, 1, 2]);
//! });
//! ```
//!
//! # Implementation
//!
//! One spin lock guards the buffer, the counts of both ends and two
//! waiter queues (receivers; senders blocked on a full bounded channel, each
//! holding its message). A send wakes the first waiting receiver. A receive
//! that frees a slot moves the first blocked sender's message into the
//! buffer and releases that sender, so blocked senders are served in order
//! and none is woken only to find the slot taken. Wakers are woken, and
//! dropped messages dropped, after the lock is released.

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

pub use std::sync::mpsc::{RecvError, RecvTimeoutError, SendError, TryRecvError, TrySendError};

use super::spin::{SpinGuard, SpinLock};
use super::waiters::{Key, Status, WaitList};

/// Creates an unbounded channel: sends never wait.
///
/// ```
/// let (tx, rx) = greenhack::sync::mpsc::channel();
/// let t = std::thread::spawn(move || tx.send("from a thread").unwrap());
/// assert_eq!(rx.recv(), Ok("from a thread"));
/// t.join().unwrap();
/// ```
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let chan = Chan::new(None);
    (Sender { chan: chan.clone() }, Receiver::new(chan))
}

/// Creates a bounded channel holding at most `bound` messages: a send waits
/// while it is full. With `bound == 0` every send waits until a receiver
/// takes its message (or is already waiting for one).
///
/// ```
/// use std::sync::mpsc::TrySendError;
///
/// let (tx, rx) = greenhack::sync::mpsc::sync_channel(1);
/// tx.try_send(1).unwrap();
/// assert_eq!(tx.try_send(2), Err(TrySendError::Full(2)));
/// assert_eq!(rx.recv(), Ok(1));
/// ```
pub fn sync_channel<T>(bound: usize) -> (SyncSender<T>, Receiver<T>) {
    let chan = Chan::new(Some(bound));
    (SyncSender { chan: chan.clone() }, Receiver::new(chan))
}

/// What both ends share.
struct Chan<T> {
    state: SpinLock<State<T>>,
}

struct State<T> {
    buffer: VecDeque<T>,
    /// `None`: unbounded.
    bound: Option<usize>,
    /// Live `Sender`s and `SyncSender`s.
    senders: usize,
    receiver_alive: bool,
    receivers: WaitList<()>,
    /// Senders waiting for room, each with its message (taken out when it
    /// is moved into the buffer or handed to a receiver).
    blocked_senders: WaitList<Option<T>>,
}

impl<T> Chan<T> {
    fn new(bound: Option<usize>) -> Arc<Chan<T>> {
        Arc::new(Chan {
            state: SpinLock::new(State {
                buffer: VecDeque::new(),
                bound,
                senders: 1,
                receiver_alive: true,
                receivers: WaitList::new(),
                blocked_senders: WaitList::new(),
            }),
        })
    }

    fn lock(&self) -> SpinGuard<'_, State<T>> {
        self.state.lock()
    }

    fn add_sender(self: &Arc<Self>) -> Arc<Self> {
        self.lock().senders += 1;
        self.clone()
    }

    fn drop_sender(&self) {
        let mut st = self.lock();
        st.senders -= 1;
        if st.senders == 0 {
            let wakers = st.receivers.notify_all();
            drop(st);
            wakers.into_iter().for_each(Waker::wake);
        }
    }

    /// Sends if there is room now; never waits.
    fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        let mut st = self.lock();
        if !st.receiver_alive {
            return Err(TrySendError::Disconnected(msg));
        }
        if !st.has_room() {
            return Err(TrySendError::Full(msg));
        }
        st.buffer.push_back(msg);
        let waker = st.receivers.notify_front();
        drop(st);
        if let Some(Some(w)) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Sends, waiting for room.
    fn send(&self, msg: T) -> Result<(), SendError<T>> {
        match self.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Disconnected(msg)) => Err(SendError(msg)),
            Err(TrySendError::Full(msg)) => super::wait::wait(SendWait {
                chan: self,
                msg: Some(msg),
                key: None,
            }),
        }
    }

    fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut st = self.lock();
        match st.take() {
            Some((msg, waker)) => {
                drop(st);
                if let Some(w) = waker {
                    w.wake();
                }
                Ok(msg)
            }
            None if st.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    fn recv(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        // Inside a greenlet the wait's first poll, in place, is the try;
        // elsewhere a message that is there saves setting up the wait.
        if !crate::pair::in_greenlet() {
            match self.try_recv() {
                Ok(msg) => return Ok(msg),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
        }
        let wait = RecvWait {
            chan: self,
            key: None,
        };
        let got = match deadline {
            None => Some(super::wait::wait(wait)),
            Some(d) => super::wait::wait_until(wait, d),
        };
        match got {
            Some(Ok(msg)) => Ok(msg),
            Some(Err(RecvError)) => Err(RecvTimeoutError::Disconnected),
            None => Err(RecvTimeoutError::Timeout),
        }
    }
}

impl<T> State<T> {
    /// True if a send may complete now: blocked senders go first, and a
    /// rendezvous channel has room only for a waiting receiver.
    fn has_room(&self) -> bool {
        if !self.blocked_senders.is_empty() {
            return false;
        }
        match self.bound {
            None => true,
            Some(0) => self.buffer.len() < self.receivers.len(),
            Some(n) => self.buffer.len() < n,
        }
    }

    /// Takes the next message: from the buffer (refilling it from the first
    /// blocked sender) or, when the buffer is empty, straight from a blocked
    /// sender. Also returns the waker of the sender released.
    fn take(&mut self) -> Option<(T, Option<Waker>)> {
        let msg = match self.buffer.pop_front() {
            Some(msg) => {
                let Some(slot) = self.blocked_senders.front_mut() else {
                    return Some((msg, None));
                };
                let pending = slot.take().expect("a blocked sender holds its message");
                self.buffer.push_back(pending);
                msg
            }
            None => self
                .blocked_senders
                .front_mut()?
                .take()
                .expect("a blocked sender holds its message"),
        };
        let waker = self.blocked_senders.notify_front().flatten();
        Some((msg, waker))
    }
}

/// A receive waiting for a message.
struct RecvWait<'a, T> {
    chan: &'a Chan<T>,
    key: Option<Key>,
}

impl<T> Future for RecvWait<'_, T> {
    type Output = Result<T, RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.chan.lock();
        if let Some((msg, waker)) = st.take() {
            if let Some(key) = self.key.take() {
                st.receivers.remove(key);
            }
            drop(st);
            if let Some(w) = waker {
                w.wake();
            }
            return Poll::Ready(Ok(msg));
        }
        if st.senders == 0 {
            if let Some(key) = self.key.take() {
                st.receivers.remove(key);
            }
            return Poll::Ready(Err(RecvError));
        }
        if let Some(key) = self.key {
            if st.receivers.poll(key, cx.waker()) == Status::Queued {
                return Poll::Pending;
            }
            // Notified, but another receive took the message first: queue
            // again.
            st.receivers.remove(key);
        }
        self.key = Some(st.receivers.push_back((), Some(cx.waker().clone())));
        Poll::Pending
    }
}

impl<T> Drop for RecvWait<'_, T> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let mut st = self.chan.lock();
        let notified = st.receivers.remove(key).0 == Status::Notified;
        if notified && !(st.buffer.is_empty() && st.blocked_senders.is_empty()) {
            // Woken for a message we will not take: pass the wake-up on.
            let waker = st.receivers.notify_front();
            drop(st);
            if let Some(Some(w)) = waker {
                w.wake();
            }
        }
    }
}

/// A bounded send waiting for room; its message sits in its queue slot.
struct SendWait<'a, T> {
    chan: &'a Chan<T>,
    /// The message, until it is queued.
    msg: Option<T>,
    key: Option<Key>,
}

// The message is never pinned: it is moved in and out by value.
impl<T> Unpin for SendWait<'_, T> {}

impl<T> Future for SendWait<'_, T> {
    type Output = Result<(), SendError<T>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut st = this.chan.lock();
        if let Some(key) = this.key {
            if st.blocked_senders.poll(key, cx.waker()) == Status::Notified {
                st.blocked_senders.remove(key);
                this.key = None;
                return Poll::Ready(Ok(()));
            }
            if st.receiver_alive {
                return Poll::Pending;
            }
            this.key = None;
            let msg = st.blocked_senders.remove(key).1;
            return Poll::Ready(Err(SendError(msg.expect("not yet taken"))));
        }
        let msg = this.msg.take().expect("polled after completion");
        if !st.receiver_alive {
            return Poll::Ready(Err(SendError(msg)));
        }
        if st.has_room() {
            st.buffer.push_back(msg);
            let waker = st.receivers.notify_front();
            drop(st);
            if let Some(Some(w)) = waker {
                w.wake();
            }
            return Poll::Ready(Ok(()));
        }
        this.key = Some(
            st.blocked_senders
                .push_back(Some(msg), Some(cx.waker().clone())),
        );
        Poll::Pending
    }
}

impl<T> Drop for SendWait<'_, T> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let mut st = self.chan.lock();
        let (_, msg) = st.blocked_senders.remove(key);
        drop(st);
        // An unsent message is dropped here, outside the lock: its
        // destructor may use this very channel.
        drop(msg);
    }
}

/// The sending half of a [`channel`]: `send` never waits. Clone it for more
/// producers; it may be moved to and shared with other threads.
pub struct Sender<T> {
    chan: Arc<Chan<T>>,
}

impl<T> Sender<T> {
    /// Sends `t`; never waits.
    ///
    /// # Errors
    ///
    /// If the [`Receiver`] is gone: the message, handed back in a
    /// [`SendError`].
    pub fn send(&self, t: T) -> Result<(), SendError<T>> {
        self.chan.try_send(t).map_err(|e| match e {
            TrySendError::Disconnected(t) | TrySendError::Full(t) => SendError(t),
        })
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Sender<T> {
        Sender {
            chan: self.chan.add_sender(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.chan.drop_sender();
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

/// The sending half of a [`sync_channel`]: `send` waits while the channel is
/// full. Clone it for more producers; it may be moved to and shared with
/// other threads.
pub struct SyncSender<T> {
    chan: Arc<Chan<T>>,
}

impl<T> SyncSender<T> {
    /// Sends `t`, waiting (suspending this greenlet) while the channel is
    /// full. Blocked senders are served in the order they blocked.
    ///
    /// # Errors
    ///
    /// If the [`Receiver`] is gone, before or while waiting: the message,
    /// handed back in a [`SendError`].
    pub fn send(&self, t: T) -> Result<(), SendError<T>> {
        self.chan.send(t)
    }

    /// Sends `t` if there is room now; never waits.
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] if the channel is full (or, with bound 0, no
    /// receiver is waiting); [`TrySendError::Disconnected`] if the receiver
    /// is gone. Both hand the message back.
    pub fn try_send(&self, t: T) -> Result<(), TrySendError<T>> {
        self.chan.try_send(t)
    }
}

impl<T> Clone for SyncSender<T> {
    fn clone(&self) -> SyncSender<T> {
        SyncSender {
            chan: self.chan.add_sender(),
        }
    }
}

impl<T> Drop for SyncSender<T> {
    fn drop(&mut self) {
        self.chan.drop_sender();
    }
}

impl<T> fmt::Debug for SyncSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncSender").finish_non_exhaustive()
    }
}

/// The receiving half of a channel. It may be moved to another thread but
/// not shared between threads (`!Sync`, as std's); greenlets of one thread
/// may share it (through an `Rc`) and receive concurrently, each message
/// going to one of them.
///
/// ```compile_fail
/// fn require_sync<T: Sync>(_: T) {}
/// let (_tx, rx) = greenhack::sync::mpsc::channel::<u8>();
/// require_sync(rx);
/// ```
pub struct Receiver<T> {
    chan: Arc<Chan<T>>,
    _not_sync: PhantomData<Cell<()>>,
}

// As std's: the `Cell` marker only makes it `!Sync`.
impl<T> std::panic::UnwindSafe for Receiver<T> {}
impl<T> std::panic::RefUnwindSafe for Receiver<T> {}

impl<T> Receiver<T> {
    fn new(chan: Arc<Chan<T>>) -> Receiver<T> {
        Receiver {
            chan,
            _not_sync: PhantomData,
        }
    }

    /// Waits (suspending this greenlet) for a message.
    ///
    /// # Errors
    ///
    /// [`RecvError`] once every sender is gone and the buffer is empty.
    pub fn recv(&self) -> Result<T, RecvError> {
        self.chan.recv(None).map_err(|_| RecvError)
    }

    /// Takes a message if one is there now; never waits.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] if none is there yet;
    /// [`TryRecvError::Disconnected`] once every sender is gone and the
    /// buffer is empty.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.chan.try_recv()
    }

    /// Waits for a message for at most `timeout`.
    ///
    /// ```
    /// use std::sync::mpsc::RecvTimeoutError;
    /// use std::time::Duration;
    ///
    /// let (tx, rx) = greenhack::sync::mpsc::channel::<u8>();
    /// let t = Duration::from_millis(5);
    /// assert_eq!(rx.recv_timeout(t), Err(RecvTimeoutError::Timeout));
    /// drop(tx);
    /// assert_eq!(rx.recv_timeout(t), Err(RecvTimeoutError::Disconnected));
    /// ```
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`] if nothing came in time;
    /// [`RecvTimeoutError::Disconnected`] once every sender is gone and the
    /// buffer is empty.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.chan.recv(Some(deadline)),
            // Too far to represent: no deadline.
            None => self.chan.recv(None),
        }
    }

    /// An iterator that waits for each message and ends once every sender is
    /// gone.
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { rx: self }
    }

    /// An iterator over the messages there now; never waits.
    pub fn try_iter(&self) -> TryIter<'_, T> {
        TryIter { rx: self }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut st = self.chan.lock();
        st.receiver_alive = false;
        let dropped = std::mem::take(&mut st.buffer);
        // Blocked senders are woken, not released: they find the receiver
        // gone and take their messages back.
        let wakers = st.blocked_senders.wakers();
        drop(st);
        wakers.into_iter().for_each(Waker::wake);
        drop(dropped);
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

/// Waits for each message; from [`Receiver::iter`].
#[derive(Debug)]
pub struct Iter<'a, T> {
    rx: &'a Receiver<T>,
}

impl<T> Iterator for Iter<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.rx.recv().ok()
    }
}

/// The messages there now; from [`Receiver::try_iter`].
#[derive(Debug)]
pub struct TryIter<'a, T> {
    rx: &'a Receiver<T>,
}

impl<T> Iterator for TryIter<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.rx.try_recv().ok()
    }
}

/// Waits for each message, owning the receiver; from
/// `Receiver::into_iter`.
#[derive(Debug)]
pub struct IntoIter<T> {
    rx: Receiver<T>,
}

impl<T> Iterator for IntoIter<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.rx.recv().ok()
    }
}

impl<'a, T> IntoIterator for &'a Receiver<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<T> IntoIterator for Receiver<T> {
    type Item = T;
    type IntoIter = IntoIter<T>;

    fn into_iter(self) -> IntoIter<T> {
        IntoIter { rx: self }
    }
}
