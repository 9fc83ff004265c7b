//! greenhack: async I/O without function colouring.
//!
//! Code is written as plain synchronous Rust, yet whenever it would wait, its
//! stack is switched out and other work runs until the wait is over. The
//! switching unit is a **greenlet**: a stackful coroutine with its own
//! `mmap`ed, guard-paged stack, switched by a few lines of hand-written
//! assembly (`asm/x86_64.S`, `asm/aarch64.S`).
//!
//! # The two cases
//!
//! **Inside an event loop** (tokio, smol, any executor): [`as_async`] turns
//! sync code into a `Future`; inside it, [`exempt`] waits for any future,
//! polled with the waker of the task that polls the `AsAsync`:
//!
//! ```
//! use std::time::Duration;
//!
//! fn legacy_step() -> u32 {
//!     // Deep inside sync code: waits asynchronously on a tokio timer.
//!     greenhack::exempt(tokio::time::sleep(Duration::from_millis(5)));
//!     7
//! }
//!
//! let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
//! let n = rt.block_on(greenhack::as_async(|| legacy_step() * 6));
//! assert_eq!(n, 42);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! **With no event loop** (a REPL, a legacy CLI, `main`): [`start_loop`]
//! makes the thread's own stack the sync side; [`spawn`]ed greenlets run
//! whenever it waits. [`run`] is the scoped form:
//!
//! ```
//! use std::cell::RefCell;
//! use std::rc::Rc;
//! use std::time::Duration;
//!
//! let log = Rc::new(RefCell::new(Vec::new()));
//! let (l1, l2) = (log.clone(), log.clone());
//! let total = greenhack::run(|| {
//!     let slow = greenhack::spawn(move || {
//!         greenhack::sleep(Duration::from_millis(20)); // waits: the other one runs
//!         l1.borrow_mut().push("slow");
//!         1
//!     });
//!     let quick = greenhack::spawn(move || {
//!         l2.borrow_mut().push("quick");
//!         2
//!     });
//!     slow.join().unwrap() + quick.join().unwrap()
//! });
//! assert_eq!(total, 3);
//! assert_eq!(*log.borrow(), ["quick", "slow"]);
//! ```
//!
//! [`net`] has std's socket types with std's methods and errors: on a plain
//! thread they behave like blocking std sockets, inside greenlets they
//! suspend only their greenlet — one codebase serves both.
//!
//! # Modules
//!
//! * [`greenlet`] — the raw asymmetric coroutine ([`greenlet::Greenlet`]):
//!   resume/suspend with values in and out, panics propagated, unwinding on
//!   drop; everything else is built on it;
//! * [`net`] — TCP, UDP and Unix sockets;
//! * [`sync`] — `Mutex`, `Condvar`, `RwLock`, `Semaphore`, `mpsc` and
//!   `oneshot` channels whose waits suspend the greenlet, not the thread;
//! * [`runtime`] — a [`Runtime`] of several loops, one per thread, with
//!   handles to hand work (and connections) from one loop to another;
//! * [`debug`] — dumps of every greenlet, suspended backtraces, a switch hook;
//! * [`stack`] — guard-page stacks, the per-thread pool, stack sizes;
//! * the crate root — the pair ([`as_async`], [`exempt`], [`try_exempt`],
//!   [`start_loop`], [`run`]), [`spawn`] and [`JoinHandle`], [`sleep`],
//!   [`yield_now`], the [`Builder`] that names greenlets and sizes their
//!   stacks, [`unblock`], which runs blocking work on a thread pool while
//!   the loop keeps running, and [`with_async`], an async setup and cleanup
//!   around sync code (a transaction that commits or rolls back);
//! * with the `futures` feature, `exempt_iter`, which reads any
//!   `futures_core::Stream` as an `Iterator` (a database cursor, a channel).
//!
//! # The raw primitive
//!
//! ```
//! use greenhack::greenlet::{Greenlet, GreenletResult};
//!
//! // A generator of the Fibonacci numbers below 20.
//! let mut fib = Greenlet::new(|s, ()| {
//!     let (mut a, mut b) = (0u64, 1u64);
//!     while a < 20 {
//!         s.suspend(a);
//!         (a, b) = (b, a + b);
//!     }
//!     "done"
//! });
//! let mut seen = Vec::new();
//! while let GreenletResult::Yielded(n) = fib.resume(()) {
//!     seen.push(n);
//! }
//! assert_eq!(seen, [0, 1, 1, 2, 3, 5, 8, 13]);
//! ```
//!
//! # Panics cross the switch
//!
//! ```
//! use greenhack::greenlet::Greenlet;
//!
//! let mut g = Greenlet::<(), (), ()>::new(|_, ()| panic!("parse error at line 3"));
//! let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| g.resume(())))
//!     .unwrap_err();
//! assert_eq!(err.downcast_ref::<&str>(), Some(&"parse error at line 3"));
//! ```
//!
//! # Cleanup on drop
//!
//! Dropping a suspended greenlet unwinds its stack, so its destructors run:
//!
//! ```
//! use std::{cell::Cell, rc::Rc};
//! use greenhack::greenlet::Greenlet;
//!
//! struct Guard(Rc<Cell<bool>>);
//! impl Drop for Guard {
//!     fn drop(&mut self) { self.0.set(true) }
//! }
//!
//! let dropped = Rc::new(Cell::new(false));
//! let flag = dropped.clone();
//! let mut g = Greenlet::<(), (), ()>::new(move |s, ()| {
//!     let _guard = Guard(flag);
//!     s.suspend(());
//!     unreachable!("never resumed");
//! });
//! g.resume(());
//! drop(g);
//! assert!(dropped.get());
//! ```
//!
//! # Linked backtraces
//!
//! The entry trampoline carries DWARF CFI that continues a backtrace taken
//! inside a greenlet into the code that resumed it, so a panic message's
//! backtrace, `gdb`'s `bt` and `std::backtrace::Backtrace` all show the
//! resumer's frames below the greenlet's.
//!
//! # Supported targets
//!
//! | target | switch | tested |
//! | --- | --- | --- |
//! | `x86_64-unknown-linux-gnu` | `asm/x86_64.S` (System V) | natively |
//! | `aarch64-unknown-linux-gnu` | `asm/aarch64.S` (AAPCS64) | under qemu-user |
//!
//! Other targets are refused by the build script.

#![warn(missing_docs, missing_debug_implementations)]
#![deny(unsafe_op_in_unsafe_fn)]

mod arch;
mod asan;
mod blocking;
pub mod debug;
pub mod greenlet;
mod guard;
mod local;
mod logical;
pub mod net;
mod overflow;
mod pair;
mod reactor;
pub mod runtime;
pub mod stack;
mod stall;
#[cfg(feature = "futures")]
mod stream;
mod switch_hook;
pub mod sync;
mod task;
mod time;
#[cfg(feature = "tokio")]
pub mod tokio;
mod valgrind;
mod wait;

pub use blocking::{set_max_blocking_threads, unblock};
pub use greenlet::Builder;
pub use guard::{Exit, with_async};
pub use local::GreenletLocal;
pub use pair::{AsAsync, ExemptError, as_async, exempt, run, start_loop, try_exempt};
pub use runtime::Runtime;
#[cfg(feature = "futures")]
pub use stream::{ExemptIter, exempt_iter};
pub use task::{JoinError, JoinHandle, spawn};
pub use time::{Elapsed, sleep, sleep_until, timeout, timeout_at, yield_now};
