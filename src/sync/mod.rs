//! Synchronisation for greenlets: [`Mutex`], [`Condvar`], [`RwLock`],
//! [`Semaphore`], channels ([`mpsc`], [`oneshot`]) whose waits suspend the
//! calling greenlet, not the thread.
//!
//! std's primitives block the OS thread: a greenlet that waits on a
//! `std::sync::Mutex` held by another greenlet of the same thread stops the
//! whole loop, and the holder never runs again. These have std's names,
//! signatures, errors and poisoning (by a panic; not by a timeout or a
//! cancellation, see [`Mutex`]), but wait through
//! [`exempt`](crate::exempt):
//!
//! * inside a greenlet ([`spawn`](crate::spawn), [`as_async`](crate::as_async)),
//!   only that greenlet waits;
//! * on a plain thread, greenhack's loop runs on it meanwhile (its spawned
//!   greenlets keep running), so the same code works in a plain program;
//! * inside an `as_async` polled by another executor (tokio), the wait is
//!   that executor's: the greenlet's task is woken;
//! * outside any greenlet on a tokio worker thread, where `exempt` refuses,
//!   the thread blocks as it would with std's primitives.
//!
//! The locks, [`Condvar`] and [`Semaphore`] are `Send + Sync` (for `Send`
//! data) and the channels' halves are `Send` (their senders also `Sync`),
//! as std's are, so greenlets on different threads' loops and plain threads
//! may share them; a wake-up from another thread wakes the waiting
//! greenlet's loop.
//!
//! ```
//! use std::rc::Rc;
//! use greenhack::sync::{mpsc, Mutex};
//!
//! let (tx, rx) = mpsc::channel();
//! // A plain OS thread feeds a greenlet.
//! let feeder = std::thread::spawn(move || (0..3).for_each(|i| tx.send(i).unwrap()));
//! let total = Rc::new(Mutex::new(0));
//! let t = total.clone();
//! greenhack::run(|| {
//!     greenhack::spawn(move || {
//!         for i in rx {
//!             *t.lock().unwrap() += i;
//!         }
//!     });
//! });
//! feeder.join().unwrap();
//! assert_eq!(*total.lock().unwrap(), 3);
//! ```
//!
//! # Timeouts
//!
//! `recv_timeout` and `wait_timeout` arm a timer only when they must wait:
//! on greenhack's loop (in a spawned greenlet, or on a plain thread) the
//! loop's own timer; on a thread parked as std's would be, `park_timeout`;
//! inside an `as_async` polled by another executor, whose timers greenhack
//! cannot reach, a timer thread shared by the process (started on first
//! such use) wakes the task at the deadline.
//!
//! # Waiting and cancellation
//!
//! Each primitive keeps a FIFO of waiters; what it releases (a lock, a
//! permit, a message slot) is handed to the first waiter, so waiters are
//! served in order and none starves. A waiter that goes away (its wait timed
//! out, its greenlet was cancelled and unwound) leaves the queue, passing on
//! anything it had been handed.

mod condvar;
mod lock_queue;
pub mod mpsc;
mod mutex;
pub mod oneshot;
mod rwlock;
mod semaphore;
mod spin;
mod wait;
mod waiters;

pub use condvar::{Condvar, WaitTimeoutResult};
pub use mutex::{Mutex, MutexGuard};
pub use rwlock::{RwLock, RwLockReadGuard, RwLockWriteGuard};
pub use semaphore::{Semaphore, SemaphorePermit, TryAcquireError};
