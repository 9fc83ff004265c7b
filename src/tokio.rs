//! tokio underneath greenhack's loop, on one thread (feature `tokio`).
//!
//! tokio's I/O and timer drivers cannot be polled from outside, so "tokio's
//! futures on greenhack's loop" means greenhack's loop runs *inside* a tokio
//! current-thread runtime, hosted (see [`as_async`](crate::as_async) and the
//! crate docs' "Three ways in"): one OS thread, both reactors, and tokio's
//! context entered for every greenlet. So `exempt` of a tokio timer, a tokio
//! socket, tokio-postgres, reqwest or a tokio channel works in every
//! greenlet, beside greenhack's own sockets:
//!
//! ```
//! use std::time::Duration;
//!
//! let out = greenhack::tokio::run(|| {
//!     let a = greenhack::spawn(|| {
//!         // A tokio timer, waited on from plain sync code.
//!         greenhack::exempt(tokio::time::sleep(Duration::from_millis(10)));
//!         1
//!     });
//!     // A greenhack timer in the same program, on the same thread.
//!     greenhack::sleep(Duration::from_millis(5));
//!     let (tx, rx) = tokio::sync::oneshot::channel();
//!     greenhack::spawn(move || tx.send(2).unwrap());
//!     a.join().unwrap() + greenhack::exempt(rx).unwrap()
//! });
//! assert_eq!(out, 3);
//! ```
//!
//! [`run`] is the scoped form, [`start_loop`] the one for programs that keep
//! the loop for the rest of the thread (a REPL, a legacy CLI), and
//! [`run_with`] takes a runtime you built yourself (a tokio
//! `current_thread` runtime with I/O enabled, which greenhack's loop runs
//! through; enable time on it too for tokio's own timers).
//!
//! On a multi-thread runtime (axum, tonic, hyper under `#[tokio::main]`),
//! whose tasks move between threads and so cannot hold a greenlet,
//! [`spawn_sync`] is the `Send` entry: it runs a sync closure as a greenlet
//! on a [`Pool`] of workers, each one thread with this same setup, and
//! returns a `Send` [`Task`] to await.
//!
//! Without this, a tokio future used on greenhack's standalone loop (a
//! `tokio::time::sleep` created in a greenlet, a tokio socket or client
//! exempted there) panics with tokio's "there is no reactor running". With
//! the `tokio` feature, greenhack adds a note naming the fix after that
//! panic's message: the first greenhack loop of the process installs a
//! panic hook that calls the hook it replaced, then, for that one panic on
//! a thread running greenhack's loop with no tokio runtime underneath,
//! prints the note. A hook set later replaces it, as any hook does.

mod pool;
pub use pool::{AbortHandle, Pool, PoolBuilder, Task, WORKER_STACK_POOL, spawn_sync};

/// Runs `f` as the sync side of greenhack's loop with a tokio
/// `current_thread` runtime (I/O and time enabled) underneath it, on the
/// calling thread, until `f` returns and every greenlet it spawned has
/// finished; then drops the runtime. Like [`crate::run`], with tokio's
/// futures usable everywhere inside.
///
/// # Inside a greenlet
///
/// As [`crate::run`] does, called from a greenlet it calls `f` in place,
/// where the loop already runs: a loop with tokio underneath (an
/// [`as_async`](crate::as_async) polled by tokio, a greenlet of this
/// `run`) keeps it, and tokio's futures work in `f`. tokio can only be put
/// under a loop as the loop starts, so a greenlet of a loop that runs
/// without tokio ([`crate::run`], [`crate::spawn`] on a plain thread, a
/// [`Runtime`](crate::Runtime)'s loops unless built with
/// [`tokio(true)`](crate::runtime::Builder::tokio)) panics, naming the fix, rather
/// than leave tokio's futures waiting on a runtime that nothing drives.
///
/// # Panics
///
/// If the tokio runtime cannot be built (no `epoll` or `eventfd`: as
/// `#[tokio::main]` does; [`run_with`] takes a runtime you built), if
/// called inside a tokio runtime (tokio refuses to start a runtime from
/// within one): where tokio already runs, use
/// [`as_async`](crate::as_async), which hosts greenhack's loop there; or
/// inside a greenlet of a loop without tokio (see above).
pub fn run<T>(f: impl FnOnce() -> T) -> T {
    if crate::pair::in_greenlet() {
        return in_place(f);
    }
    run_with(build_runtime(), f)
}

/// A `current_thread` runtime with I/O and time enabled.
fn build_runtime() -> ::tokio::runtime::Runtime {
    match ::tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("greenhack: cannot build the tokio runtime: {e}"),
    }
}

/// [`run`] with a runtime you built (a `current_thread` one; the
/// multi-thread flavour would run greenhack's driver on this thread only).
/// Its I/O driver must be enabled (`enable_io()` or `enable_all()`):
/// greenhack's loop waits through it, so on a runtime without one the
/// first wait panics, naming that fix. Time is needed only for tokio's own
/// timers (greenhack's `sleep` has its own).
///
/// ```
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// let v = greenhack::tokio::run_with(rt, || {
///     greenhack::exempt(async { tokio::task::yield_now().await; 5 })
/// });
/// assert_eq!(v, 5);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn run_with<T>(rt: ::tokio::runtime::Runtime, f: impl FnOnce() -> T) -> T {
    if crate::pair::in_greenlet() {
        // Not needed: the loop keeps the tokio it runs with. Shut down
        // without blocking, which tokio allows in an async context.
        rt.shutdown_background();
        return in_place(f);
    }
    let handle = rt.handle().clone();
    let _host = crate::reactor::hosted::HostRuntime::install(rt);
    // Between waits too, `f` runs in the runtime's context: tokio futures
    // (a `Sleep`, a `TcpStream::connect`) look their runtime up on creation.
    let _enter = handle.enter();
    crate::run(f)
}

/// [`run`] called from a greenlet: `f` in place if tokio runs under the
/// loop, else the panic that names the fix (see [`run`]).
fn in_place<T>(f: impl FnOnce() -> T) -> T {
    if ::tokio::runtime::Handle::try_current().is_err() {
        panic!(
            "greenhack::tokio::run called inside a greenlet whose loop runs without tokio: tokio \
             can only be put under greenhack's loop as the loop starts. Call \
             greenhack::tokio::run on the thread's own stack, outside any greenlet, in place of \
             greenhack::run (for a Runtime's loops: runtime::Builder::tokio(true)), or poll an \
             as_async from a tokio runtime"
        );
    }
    f()
}

/// Makes the calling thread's own stack the sync side of greenhack's loop
/// for the rest of the thread, with a tokio `current_thread` runtime (I/O
/// and time enabled) underneath: [`crate::start_loop`] plus tokio. Idempotent.
///
/// ```
/// greenhack::tokio::start_loop();
/// let h = greenhack::spawn(|| greenhack::exempt(async { 2 }));
/// greenhack::exempt(tokio::time::sleep(std::time::Duration::from_millis(1)));
/// assert_eq!(h.join().unwrap(), 2);
/// ```
///
/// # Panics
///
/// As [`run`], also inside a greenlet: there it only keeps the tokio the
/// loop runs with, and panics if there is none.
pub fn start_loop() {
    if crate::pair::in_greenlet() {
        return in_place(crate::start_loop);
    }
    if !crate::reactor::hosted::HostRuntime::is_installed() {
        let rt = build_runtime();
        let handle = rt.handle().clone();
        std::mem::forget(crate::reactor::hosted::HostRuntime::install(rt));
        // For the rest of the thread, as the runtime is.
        std::mem::forget(handle.enter());
    }
    crate::start_loop();
}
