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
//! # Three ways in
//!
//! 1. **Standalone** — no event loop at all (a CLI, a test, a server that
//!    is all greenhack): [`run`], [`start_loop`], or nothing (greenhack's
//!    own I/O starts its loop implicitly); [`Runtime`] runs one loop per
//!    core.
//! 2. **Inside tokio, on one thread** — [`as_async`] polled by a tokio
//!    `current_thread` runtime or a `LocalSet` *hosts* greenhack's loop:
//!    greenhack's sockets, [`sleep`], [`spawn`] and [`JoinHandle`]s work
//!    there beside tokio's futures. The other way round,
//!    `greenhack::tokio::run` puts a tokio runtime *under* greenhack's loop,
//!    so tokio futures (tokio-postgres, reqwest, tokio channels) can be
//!    [`exempt`]ed from any greenlet. One OS thread in both cases.
//! 3. **From a multi-thread runtime** (axum, tonic, hyper on
//!    `#[tokio::main]`) — `greenhack::tokio::spawn_sync(f)` runs a `Send`
//!    closure as a greenlet on a pool of thread-pinned workers and returns a
//!    `Send` task: the `!Send` greenlet never leaves its thread.
//!
//! # Cargo features
//!
//! | feature | turns on |
//! | --- | --- |
//! | `tokio` | hosting in tokio (`as_async` under tokio runs greenhack's loop), `greenhack::tokio` (`run`, `start_loop`, `spawn_sync`, `Pool`), tokio's `AsyncRead`/`AsyncWrite` on the stream sockets, and the detection of tokio threads where blocking would stall the runtime |
//! | `futures-io` | futures-io's `AsyncRead`/`AsyncWrite` on the stream sockets |
//! | `futures` | `exempt_iter`: a `futures_core::Stream` read as an `Iterator` |
//! | `fp-control` | save and restore the floating-point control registers on every switch |
//!
//! All are off by default: the library itself depends on `mio` and `libc`.
//!
//! # Modules
//!
//! Public:
//!
//! * [`greenlet`] — the raw asymmetric coroutine ([`greenlet::Greenlet`]):
//!   resume/suspend with values in and out, panics propagated, unwinding on
//!   drop; everything else is built on it;
//! * [`net`] — TCP, UDP and Unix sockets, [`net::TcpSocket`] for options
//!   set before `listen`;
//! * [`sync`] — `Mutex`, `Condvar`, `RwLock`, `Semaphore`, `mpsc` and
//!   `oneshot` channels whose waits suspend the greenlet, not the thread;
//! * [`runtime`] — a [`Runtime`] of several loops, one per thread, with
//!   handles to hand work (and connections) from one loop to another;
//! * `tokio` (feature `tokio`) — tokio under greenhack's loop, and the
//!   `Send` entry for multi-thread runtimes;
//! * [`debug`] — dumps of every greenlet, suspended backtraces, a switch
//!   hook, a stall detector;
//! * [`stack`] — guard-page stacks, the per-thread pool, stack sizes;
//! * the crate root — the pair ([`as_async`], [`exempt`], [`try_exempt`],
//!   [`start_loop`], [`run`]), [`spawn`] and [`JoinHandle`],
//!   [`spawn_driver`] (a client library's background future, polled ahead
//!   of the greenlets), [`sleep`],
//!   [`yield_now`], [`timeout`], [`greenlet_local!`], the [`Builder`] that
//!   names greenlets, sizes their stacks and can make them
//!   [sliced](Builder::sliced) (sharing one stack, their live frames on the
//!   heap while they wait), [`unblock`], which runs
//!   blocking work on a thread pool while the loop keeps running, and
//!   [`with_async`], an async setup and cleanup around sync code (a
//!   transaction that commits or rolls back); with the `futures` feature,
//!   `exempt_iter`.
//!
//! The layers, each importing only the ones before it:
//!
//! | layer | modules | owns |
//! | --- | --- | --- |
//! | the switch | [`arch`] (private) and `asm/` | the saved context, `switch_in`/`switch_out`, the initial frame |
//! | stacks | [`stack`], [`wait`], `overflow`, `asan`, `valgrind`, [`slice`](mod@slice) | mapped stacks and the [`StackHeader`](stack::StackHeader) at their top, which the overflow handler and the sanitizers read too (the one shared type: they sit beside `stack`, not above it); the shared stacks of sliced greenlets and their slices on the heap |
//! | greenlets | [`greenlet`], [`switch_hook`] | resume, suspend, panics, forced unwinding |
//! | the loop | [`reactor`] | readiness, timers, the run queue, hosting; it knows no pairs and no sockets |
//! | the pair | [`pair`], [`logical`] | `as_async`, the one wait ([`pair::wait`]), per-greenlet scopes and locals |
//! | on top of waiting | [`task`], [`time`], [`sync`], [`local`], [`blocking`], [`guard`], `stream` | spawn/join, sleep/timeout, locks and channels, greenlet-locals, `unblock`, `with_async` |
//! | sockets | [`net`] | std's socket types and the one retry loop |
//! | around | [`runtime`], `tokio`, [`debug`], [`stall`] | several loops; tokio integration; diagnostics |
//!
//! # How a wait travels
//!
//! A `read` on a [`net::TcpStream`] inside a spawned greenlet, hop by hop
//! (`cargo doc --document-private-items` makes each a link):
//!
//! 1. `Read::read` → [`net::Registered::read_stream`] →
//!    [`net::Registered::io_from`]: the `recv` system call, through
//!    [`net::try_op`]. Data there: returned, no switch.
//! 2. `WouldBlock` → [`net::Registered::wait_and_retry`], the one retry loop:
//!    [`reactor::Reactor::clear_readiness`] forgets the readiness the
//!    `WouldBlock` disproved, [`reactor::Reactor::readiness`] makes the
//!    future to wait on, and [`pair::wait_io`] waits for it.
//! 3. [`pair::wait`] decides where the code runs ([`pair::place`]): on a
//!    pair, [`pair::Pair::wait`] polls the future in place, on the
//!    greenlet's stack; [`reactor::Reactor::poll_ready`] leaves the
//!    task's waker in the socket's slot and says `Pending`.
//! 4. The greenlet suspends: [`greenlet::Suspender::suspend`] →
//!    [`arch::switch_out`] lands in [`greenlet::Greenlet::resume`], called
//!    by [`AsAsync`]'s `poll`, which returns `Pending` to the task's poll
//!    ([`task`]'s `Task::poll`), which returns to
//!    [`reactor::Reactor::run_ready`]: the next ready greenlet runs.
//! 5. With nothing left to run, [`reactor::block_on`] calls
//!    [`reactor::Reactor::turn`]: `epoll_wait`, then
//!    [`reactor::io::IoSlot::latch`] latches the readiness and collects the
//!    slot's wakers, and each is woken.
//!
//! The wake-up:
//!
//! 6. The waker names the task in its own data word
//!    ([`reactor::task_waker`]: reactor id, slot, generation); on the loop's
//!    own thread waking it calls [`reactor::Reactor::wake_task`], which
//!    queues the task. From another thread it finds the reactor in a
//!    registry, pushes onto its locked queue and writes the loop's eventfd
//!    (`mio::Waker`); the turn drains that queue into `wake_task`.
//! 7. [`reactor::Reactor::run_ready`] polls the task → [`AsAsync`]'s `poll`
//!    → [`greenlet::Greenlet::resume`] → [`arch::switch_in`]: execution
//!    continues inside `suspend`, back in [`pair::Pair::wait`], which polls
//!    the readiness future again (`Ready`), and the retry loop of step 2
//!    makes the `recv` again: data.
//!
//! Inside an `as_async` polled by tokio the same path runs, except that in
//! step 4 the `Pending` goes to tokio, and in step 5 tokio's reactor sees
//! greenhack's `epoll` fd readable and a host task runs the turn
//! ([`reactor::hosted`]).
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
#![warn(clippy::undocumented_unsafe_blocks)]
// The crate docs' "How a wait travels" names private functions: resolved
// (so checked) always, rendered as links with --document-private-items.
#![allow(rustdoc::private_intra_doc_links)]

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
mod slice;
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
pub use task::{JoinError, JoinHandle, spawn, spawn_driver};
pub use time::{Elapsed, sleep, sleep_until, timeout, timeout_at, yield_now};

/// The README's Rust examples, compiled and run as doc tests.
#[cfg(all(doctest, feature = "tokio"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
