//! greenhack: async I/O without function colouring.
//!
//! Code is written as plain synchronous Rust, yet whenever it would wait, its
//! stack is switched out and other work runs until the wait is over. The
//! switching unit is a **greenlet**: a stackful coroutine with its own
//! `mmap`ed, guard-paged stack, switched by a few lines of hand-written
//! assembly (`asm/x86_64.S`, `asm/aarch64.S`).
//!
//! This release provides the core:
//!
//! * [`greenlet::Greenlet`] — the raw asymmetric coroutine (resume/suspend
//!   with values in and out, panics propagated, unwinding on drop);
//! * [`stack`] — guard-page stacks and the per-thread pool;
//! * stack-overflow detection that names the greenlet (see
//!   [`Builder::name`](greenlet::Builder::name));
//! * [`net`] — TCP, UDP and Unix sockets with std's API whose waits run on
//!   greenhack's loop.
//!
//! # A tour
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
pub mod debug;
pub mod greenlet;
pub mod net;
mod overflow;
mod pair;
mod reactor;
pub mod stack;
mod task;
mod time;

pub use greenlet::Builder;
pub use pair::{AsAsync, ExemptError, as_async, exempt, run, start_loop, try_exempt};
pub use task::{JoinError, JoinHandle, spawn};
pub use time::{sleep, sleep_until, yield_now};
