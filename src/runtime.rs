//! A runtime of several loops: one OS thread per loop, each running
//! greenhack's loop with its own greenlets, a stop signal that reaches every
//! loop, and [`Handle`]s to hand work from one loop (or any thread) to
//! another.
//!
//! Greenlets never move between threads: what crosses is a `Send` closure
//! (run as a new greenlet on the target loop) and its `Send` result, or a
//! socket converted to its std type and back. So a server uses every core
//! the way glommio and monoio do, thread per core: each loop binds its own
//! `SO_REUSEPORT` listener (see [`TcpSocket`](crate::net::TcpSocket)) and the
//! kernel spreads the connections. With the `tokio` feature,
//! `Builder::tokio(true)` puts a tokio runtime under each loop, as
//! `greenhack::tokio::run` does for one thread.
//!
//! ```
//! use std::io::{Read, Write};
//! use greenhack::net::{TcpSocket, TcpStream};
//! use greenhack::runtime::Builder;
//!
//! // Reserve a port for the group: bound with SO_REUSEPORT, not listening,
//! // so it gets no connections itself.
//! let reserve = TcpSocket::new_v4()?;
//! reserve.set_reuseport(true)?;
//! reserve.bind("127.0.0.1:0".parse().unwrap())?;
//! let addr = reserve.local_addr()?;
//!
//! let (listening, ready) = std::sync::mpsc::channel();
//! let rt = Builder::new().worker_threads(2).build(move || {
//!     // On each loop: its own listener on the shared port.
//!     let socket = TcpSocket::new_v4()?;
//!     socket.set_reuseport(true)?;
//!     socket.bind(addr)?;
//!     let listener = socket.listen(1024)?;
//!     let _ = listening.send(());
//!     loop {
//!         let (mut conn, _) = listener.accept()?;
//!         drop(greenhack::spawn(move || {
//!             let mut buf = [0; 64];
//!             while let Ok(n @ 1..) = conn.read(&mut buf) {
//!                 if conn.write_all(&buf[..n]).is_err() {
//!                     break;
//!                 }
//!             }
//!         }));
//!     }
//! })?;
//! // `build` returns once the threads run; the setups may still be binding.
//! for _ in 0..2 {
//!     ready.recv()?;
//! }
//! drop(reserve);
//!
//! let mut client = std::net::TcpStream::connect(addr)?;
//! client.write_all(b"ping")?;
//! let mut back = [0; 4];
//! client.read_exact(&mut back)?;
//! assert_eq!(&back, b"ping");
//!
//! // Every greenlet on every loop is unwound (the listeners and the
//! // connections closed), the threads joined.
//! rt.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Handing a connection to another loop
//!
//! A greenhack socket belongs to its loop (`!Send`). To move one, convert it
//! with `into_std`, send the std socket inside the closure, and `from_std`
//! it on arrival: it is then registered with the target loop.
//!
//! ```
//! use std::io::{Read, Write};
//! use greenhack::net::{TcpListener, TcpStream};
//! use greenhack::Runtime;
//!
//! let rt = Runtime::builder().worker_threads(3).build(|| Ok(()))?;
//! let workers = [rt.handle(1).clone(), rt.handle(2).clone()];
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let addr = listener.local_addr()?;
//! // An acceptor on loop 0 deals connections out to loops 1 and 2.
//! let _acceptor = rt.handle(0).spawn(move || -> std::io::Result<()> {
//!     let listener = TcpListener::from_std(listener)?;
//!     for (i, conn) in listener.incoming().enumerate() {
//!         let conn = conn?.into_std()?; // deregistered from loop 0
//!         drop(workers[i % 2].spawn(move || -> std::io::Result<()> {
//!             let mut conn = TcpStream::from_std(conn)?; // on the worker's loop
//!             let loop_index = greenhack::runtime::Handle::try_current().unwrap().index();
//!             conn.write_all(&[loop_index as u8])
//!         }));
//!     }
//!     Ok(())
//! });
//!
//! let mut served_by = Vec::new();
//! for _ in 0..2 {
//!     let mut byte = [0];
//!     std::net::TcpStream::connect(addr)?.read_exact(&mut byte)?;
//!     served_by.push(byte[0]);
//! }
//! assert_eq!(served_by, [1, 2]);
//! rt.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # When a loop runs out of work
//!
//! A loop with nothing to run yields its CPU once before it sleeps in
//! `epoll_wait` ([`set_yield_before_sleep`], on by default), so clients and
//! other loops sharing its CPU get to send first and the loop wakes without
//! a sleep; it can also busy-poll for a while ([`set_busy_poll`], off by
//! default), for servers with a core to themselves whose peers pay for
//! waking them. [`Builder::yield_before_sleep`] and [`Builder::busy_poll`]
//! set both for every loop of a runtime.
//!
//! # Shutdown
//!
//! [`Runtime::shutdown`] (or dropping the runtime) sends every loop a stop
//! signal: a future that each loop's control code — the thread's own stack,
//! outside any greenlet — waits on, woken from the stopping thread through
//! the loop's `epoll` waker. The loop then refuses new work from its
//! handles, cancels every greenlet it has (each stack is unwound: its
//! destructors run and its sockets close), and its thread ends. `shutdown`
//! joins the threads and reports every loop whose setup failed or whose
//! thread panicked, with the payload. A greenlet stuck in code that blocks
//! its thread without waiting on greenhack's loop (`std::thread::sleep`, a
//! std socket) delays the stop of its loop until that code returns.
//!
//! # Implementation
//!
//! Each loop thread runs [`run`](crate::run): the setup as a greenlet, and
//! on the thread's own stack a control loop that [`exempt`](crate::exempt)s
//! one future, ready when the stop signal arrived, when handles queued work
//! (each item spawns a greenlet), or when the setup ended. To stop, it
//! closes its queue and cancels every task of its reactor
//! (`Reactor::cancel_all`) until none is left.

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use crate::reactor::{Reactor, TaskFuture};
use crate::task::{JoinError, JoinHandle};

/// What every loop runs first, as a greenlet.
type Setup = dyn Fn() -> io::Result<()> + Send + Sync;

/// Work queued for a loop by a [`Handle`]: runs on the loop's thread, on its
/// own stack (it spawns the greenlet that does the work).
type Job = Box<dyn FnOnce() + Send>;

/// Configures and starts a [`Runtime`].
///
/// ```
/// use greenhack::runtime::Builder;
///
/// let rt = Builder::new()
///     .worker_threads(2)
///     .thread_name("server")
///     .thread_stack_size(1 << 20)
///     .build(|| Ok(()))?;
/// assert_eq!(rt.handles().len(), 2);
/// rt.shutdown()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    worker_threads: Option<usize>,
    thread_name: String,
    pin_threads: bool,
    stack_size: Option<usize>,
    /// Each loop runs with a tokio runtime underneath (feature `tokio`).
    with_tokio: bool,
    /// See [`Builder::busy_poll`].
    busy_poll: Duration,
    /// See [`Builder::yield_before_sleep`].
    yield_before_sleep: bool,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder::new()
    }
}

impl Builder {
    /// A builder with the defaults: one loop per available CPU
    /// (`std::thread::available_parallelism`), threads named
    /// `greenhack-loop-0`, `greenhack-loop-1`, …, not pinned, std's default
    /// thread stack size, no busy polling, a yield before each sleep.
    pub fn new() -> Builder {
        Builder {
            worker_threads: None,
            thread_name: "greenhack-loop".into(),
            pin_threads: false,
            stack_size: None,
            with_tokio: false,
            busy_poll: Duration::ZERO,
            yield_before_sleep: true,
        }
    }

    /// The number of loops, each on its own thread.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn worker_threads(&mut self, n: usize) -> &mut Builder {
        assert!(
            n > 0,
            "greenhack: a runtime needs at least one loop (worker_threads(0))"
        );
        self.worker_threads = Some(n);
        self
    }

    /// The prefix of the loop threads' names: loop `i` is named
    /// `{prefix}-{i}` (as seen by `ps -L`, `top -H`, debuggers, and panic
    /// messages).
    pub fn thread_name(&mut self, prefix: impl Into<String>) -> &mut Builder {
        self.thread_name = prefix.into();
        self
    }

    /// Pins loop `i` to one CPU (`sched_setaffinity`): the `i`-th of the
    /// CPUs this process may run on, wrapping around when there are more
    /// loops than CPUs. Off by default. Pinning keeps each loop's caches
    /// warm, at the price of not moving away from a busy CPU.
    pub fn pin_threads(&mut self, pin: bool) -> &mut Builder {
        self.pin_threads = pin;
        self
    }

    /// The stack size of the loop threads: the stack that runs the loop
    /// itself and code outside greenlets (greenlets have their own stacks,
    /// sized by [`crate::Builder::stack_size`]).
    pub fn thread_stack_size(&mut self, bytes: usize) -> &mut Builder {
        self.stack_size = Some(bytes);
        self
    }

    /// Each loop busy-polls for up to `budget` before it sleeps, as
    /// [`set_busy_poll`] sets for one thread's loop. Zero (the default): a
    /// loop with nothing to do sleeps at once. No effect on loops with
    /// [`tokio`](Self::tokio) underneath: tokio decides when they sleep.
    pub fn busy_poll(&mut self, budget: Duration) -> &mut Builder {
        self.busy_poll = budget;
        self
    }

    /// Whether each loop, once it has nothing to run, yields its CPU once
    /// and looks for I/O again before it sleeps, as
    /// [`set_yield_before_sleep`] sets for one thread's loop. On by
    /// default; it pays when loops share CPUs with each other or with the
    /// threads that feed them. No effect on loops with
    /// [`tokio`](Self::tokio) underneath.
    pub fn yield_before_sleep(&mut self, on: bool) -> &mut Builder {
        self.yield_before_sleep = on;
        self
    }

    /// Runs each loop with a tokio `current_thread` runtime (I/O and time
    /// enabled) underneath, on the loop's thread, as
    /// [`greenhack::tokio::run`](crate::tokio::run) does for one thread: the
    /// setup and every greenlet can [`exempt`](crate::exempt) tokio's
    /// futures (its timers, sockets and channels, tokio-postgres, reqwest)
    /// beside greenhack's sockets. Off by default: greenhack's loop alone
    /// costs less per wait. (Calling `greenhack::tokio::run` inside a setup
    /// cannot do this: tokio goes under a loop only as the loop starts.)
    ///
    /// ```
    /// use std::time::Duration;
    /// use greenhack::runtime::Builder;
    ///
    /// let rt = Builder::new().worker_threads(2).tokio(true).build(|| {
    ///     greenhack::exempt(tokio::time::sleep(Duration::from_millis(1)));
    ///     Ok(())
    /// })?;
    /// let n = rt.handle(1).spawn(|| {
    ///     let (tx, rx) = tokio::sync::oneshot::channel();
    ///     greenhack::spawn(move || tx.send(7).unwrap());
    ///     greenhack::exempt(rx).unwrap()
    /// });
    /// assert_eq!(n.join()?, 7);
    /// rt.shutdown()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "tokio")]
    pub fn tokio(&mut self, enable: bool) -> &mut Builder {
        self.with_tokio = enable;
        self
    }

    /// Starts the loops and runs `setup` on each, as a greenlet (typically:
    /// bind a `SO_REUSEPORT` listener and accept). It may return at once
    /// (the greenlets it spawned keep running) or never (an accept loop).
    /// Returns once every loop thread has started (and been pinned).
    ///
    /// A setup that returns an error or panics stops its loop: its other
    /// greenlets are cancelled, and [`Runtime::join`] and
    /// [`Runtime::shutdown`] report it. The other loops keep running.
    ///
    /// # Errors
    ///
    /// A thread could not be created or pinned, or its tokio runtime (see
    /// [`tokio`](Self::tokio)) built; the loops already started are stopped
    /// first.
    pub fn build<F>(&mut self, setup: F) -> io::Result<Runtime>
    where
        F: Fn() -> io::Result<()> + Send + Sync + 'static,
    {
        let n = match self.worker_threads {
            Some(n) => n,
            None => thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let cpus = if self.pin_threads {
            allowed_cpus()?
        } else {
            Vec::new()
        };
        let setup: Arc<Setup> = Arc::new(setup);
        let ended = Arc::new(Ended::default());
        let mut rt = Runtime {
            loops: Vec::with_capacity(n),
            handles: Vec::with_capacity(n),
            ended: ended.clone(),
        };
        for index in 0..n {
            let shared = Arc::new(LoopShared {
                index,
                inbox: Mutex::new(Inbox {
                    jobs: Vec::new(),
                    open: true,
                    stop: false,
                    waker: None,
                }),
            });
            let name = format!("{}-{index}", self.thread_name);
            let mut builder = thread::Builder::new().name(name.clone());
            if let Some(size) = self.stack_size {
                builder = builder.stack_size(size);
            }
            let cpu = (!cpus.is_empty()).then(|| cpus[index % cpus.len()]);
            let (started_tx, started_rx) = mpsc::channel();
            let (setup, ended, loop_shared) = (setup.clone(), ended.clone(), shared.clone());
            let (with_tokio, busy_poll) = (self.with_tokio, self.busy_poll);
            let yield_before_sleep = self.yield_before_sleep;
            let thread = builder.spawn(move || {
                let config = LoopConfig {
                    cpu,
                    with_tokio,
                    busy_poll,
                    yield_before_sleep,
                };
                loop_thread(loop_shared, setup, ended, config, started_tx)
            })?;
            match started_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let _ = thread.join();
                    let _ = rt.stop_and_join();
                    return Err(io::Error::new(
                        e.kind(),
                        format!("greenhack: loop {index} ({name}) {e}"),
                    ));
                }
                Err(_) => {
                    // The thread ended before it said it started: it panicked.
                    let why = match thread.join() {
                        Err(payload) => panic_message(&*payload).to_owned(),
                        Ok(_) => "it exited".into(),
                    };
                    let _ = rt.stop_and_join();
                    return Err(io::Error::other(format!(
                        "greenhack: loop {index} ({name}) failed to start: {why}"
                    )));
                }
            }
            rt.handles.push(Handle { shared });
            rt.loops.push(LoopThread {
                name,
                thread: Some(thread),
            });
        }
        Ok(rt)
    }
}

/// Sets how long this thread's loop polls for I/O without sleeping, once
/// it has nothing to run, before it sleeps in `epoll_wait`. Zero (the
/// default) turns busy polling off. For the loops of a [`Runtime`], see
/// [`Builder::busy_poll`].
///
/// A loop asleep in `epoll_wait` is woken by whoever sends to its sockets,
/// and the sender pays for it: waking a thread that sleeps on another CPU
/// takes an inter-processor interrupt inside the sender's system call (a
/// VM exit under virtualization). When the senders are the bottleneck — a
/// database or a load balancer on CPUs that are already busy — a server
/// with idle time makes them slower. Measured under
/// `scripts/bench-kitchen`, PostgreSQL sharing a saturated CPU spent 13% of
/// its time waking the half-idle server, 4% with 200 µs of busy polling,
/// and the server answered 10% more orders per second at a lower p99.
///
/// The price is CPU: a loop spins for up to `budget` each time it runs out
/// of work (a few system calls per microsecond), so an idle server wakes
/// once per event and then spins for `budget` before it sleeps again.
/// Hosted loops (polled by another executor, such as the loops of
/// `greenhack::tokio::run` and `Builder::tokio`) ignore it: the host
/// decides when to sleep.
///
/// ```
/// use std::time::Duration;
///
/// greenhack::runtime::set_busy_poll(Duration::from_micros(200));
/// let n = greenhack::run(|| {
///     let h = greenhack::spawn(|| {
///         greenhack::sleep(Duration::from_millis(1));
///         7
///     });
///     h.join().unwrap()
/// });
/// assert_eq!(n, 7);
/// ```
pub fn set_busy_poll(budget: Duration) {
    Reactor::current().set_busy_poll(budget);
}

/// Sets whether this thread's loop, once it has nothing to run, yields its
/// CPU once (`sched_yield`) and looks for I/O again before it sleeps in
/// `epoll_wait`. On by default. For the loops of a [`Runtime`], see
/// [`Builder::yield_before_sleep`].
///
/// When a loop shares its CPU with the threads that send to it (its
/// clients, a load generator, the other loops of a [`Runtime`] on a
/// machine with fewer free CPUs than loops), they run during the yield, and
/// what they sent is ready when the loop looks again: it goes on serving
/// instead of sleeping and being woken. Measured with
/// `scripts/bench-scaling` (two loops and the load generator on two CPUs,
/// 50 echo connections), it took the server from 0.78–0.85× to
/// 1.13–1.19× the req/s of tokio's multi-thread runtime. With a CPU to
/// itself the yield returns at once, and the cost is one `sched_yield`
/// each time the loop would sleep.
///
/// Turn it off when latency on a shared CPU matters more than throughput:
/// an event that arrives while the loop is yielded waits until the threads
/// it yielded to give the CPU back. Hosted loops (polled by another
/// executor) never yield here: the host decides when to sleep.
///
/// ```
/// greenhack::runtime::set_yield_before_sleep(false);
/// let n = greenhack::run(|| {
///     let h = greenhack::spawn(|| {
///         greenhack::sleep(std::time::Duration::from_millis(1));
///         7
///     });
///     h.join().unwrap()
/// });
/// assert_eq!(n, 7);
/// ```
pub fn set_yield_before_sleep(on: bool) {
    Reactor::current().set_yield_before_sleep(on);
}

/// Several greenhack loops, one per OS thread. See the [module
/// documentation](self).
///
/// Dropping it shuts it down as [`shutdown`](Self::shutdown) does, and
/// prints the failures that would have returned to standard error.
pub struct Runtime {
    loops: Vec<LoopThread>,
    handles: Vec<Handle>,
    ended: Arc<Ended>,
}

struct LoopThread {
    name: String,
    /// `None` once joined.
    thread: Option<thread::JoinHandle<Result<(), Cause>>>,
}

impl Runtime {
    /// Starts a runtime with the default [`Builder`]: one loop per CPU,
    /// each running `setup` first.
    ///
    /// # Errors
    ///
    /// As [`Builder::build`].
    pub fn new<F>(setup: F) -> io::Result<Runtime>
    where
        F: Fn() -> io::Result<()> + Send + Sync + 'static,
    {
        Builder::new().build(setup)
    }

    /// A [`Builder`], to set the number of loops, names, pinning, stacks.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// The handles of every loop, in order: `handles()[i]` is loop `i`.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// The handle of loop `i`.
    ///
    /// # Panics
    ///
    /// If `i` is not below the number of loops.
    pub fn handle(&self, i: usize) -> &Handle {
        match self.handles.get(i) {
            Some(h) => h,
            None => panic!(
                "greenhack: no loop {i} in a runtime of {} loops",
                self.handles.len()
            ),
        }
    }

    /// Waits until some loop stops on its own (its setup returned an error
    /// or panicked, or its thread panicked), then shuts every loop down as
    /// [`shutdown`](Self::shutdown) does and reports. While the loops serve,
    /// it waits: a server's `main` can end with it.
    ///
    /// # Errors
    ///
    /// As [`shutdown`](Self::shutdown).
    pub fn join(self) -> Result<(), ShutdownError> {
        let mut ended = lock(&self.ended.count);
        while *ended == 0 {
            ended = self
                .ended
                .changed
                .wait(ended)
                .unwrap_or_else(|e| e.into_inner());
        }
        drop(ended);
        self.shutdown()
    }

    /// Stops every loop and joins its thread: each loop refuses new work,
    /// cancels every greenlet it has (their stacks unwind, their sockets
    /// close), and its thread ends.
    ///
    /// # Errors
    ///
    /// Every loop whose setup failed or whose thread panicked, with the
    /// error or the panic's payload.
    pub fn shutdown(mut self) -> Result<(), ShutdownError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), ShutdownError> {
        for h in &self.handles {
            h.shared.stop();
        }
        let mut failures = Vec::new();
        for (index, l) in self.loops.iter_mut().enumerate() {
            let Some(thread) = l.thread.take() else {
                continue;
            };
            let cause = match thread.join() {
                Ok(Ok(())) => continue,
                Ok(Err(cause)) => cause,
                Err(payload) => Cause::Panicked(Payload(payload)),
            };
            failures.push(LoopError {
                index,
                thread_name: l.name.clone(),
                cause,
            });
        }
        match failures.is_empty() {
            true => Ok(()),
            false => Err(ShutdownError { loops: failures }),
        }
    }
}

// Unwind safe, as tokio's `Runtime` is: through `&self` it hands out only
// `&Handle`s (unwind safe themselves); its thread handles are joined only by
// `join`, `shutdown` and `Drop`, which take it whole.
impl std::panic::UnwindSafe for Runtime {}
impl std::panic::RefUnwindSafe for Runtime {}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Err(e) = self.stop_and_join() {
            eprintln!(
                "greenhack: runtime dropped with failed loops (Runtime::shutdown returns these): {e}"
            );
        }
    }
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field(
                "loops",
                &self.loops.iter().map(|l| &l.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Counts loops that have stopped, for [`Runtime::join`].
#[derive(Default)]
struct Ended {
    count: Mutex<usize>,
    changed: Condvar,
}

/// Why a loop stopped other than by the stop signal.
enum Cause {
    Setup(io::Error),
    Panicked(Payload),
}

/// A panic's payload, made `Sync` so the errors that carry it are (and
/// convert into `Box<dyn Error + Send + Sync>` and `io::Error`), as tokio's
/// `JoinError` does it: the payload is only ever moved out by value, or
/// read through a downcast to a type that is itself `Sync`.
struct Payload(Box<dyn Any + Send>);

// SAFETY: a `&Payload` gives access to the box only in `message`, which
// reads it as `&str` or `String` (both `Sync`) after checking its type
// (`type_id` reads no data); every other use takes the payload by value.
unsafe impl Sync for Payload {}

impl Payload {
    /// The payload's message, when it is a string.
    fn message(&self) -> &str {
        panic_message(&*self.0)
    }
}

/// What a loop shares with its handles.
struct LoopShared {
    index: usize,
    inbox: Mutex<Inbox>,
}

struct Inbox {
    /// Work queued by handles, not yet taken by the loop.
    jobs: Vec<Job>,
    /// False once the loop stopped taking work: `Handle::spawn` then fails.
    open: bool,
    /// The stop signal.
    stop: bool,
    /// The loop's control future's waker, while it waits.
    waker: Option<Waker>,
}

impl LoopShared {
    /// Sends the stop signal.
    fn stop(&self) {
        let waker = {
            let mut inbox = lock(&self.inbox);
            inbox.stop = true;
            inbox.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Queues `job`, or hands it back if the loop takes no more work.
    fn push(&self, job: Job) -> Result<(), Job> {
        let waker = {
            let mut inbox = lock(&self.inbox);
            if !inbox.open {
                return Err(job);
            }
            inbox.jobs.push(job);
            inbox.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Refuses further work and drops what is queued (their handles then
    /// report that the loop stopped).
    fn close(&self) {
        let jobs = {
            let mut inbox = lock(&self.inbox);
            inbox.open = false;
            std::mem::take(&mut inbox.jobs)
        };
        drop(jobs);
    }
}

/// Locks `m`, ignoring poisoning: every critical section here leaves its
/// data consistent (plain pushes, takes and flag stores), so a panic in
/// another holder cannot have broken it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

thread_local! {
    /// The handle of the loop this thread runs, on a runtime's threads.
    static CURRENT: RefCell<Option<Handle>> = const { RefCell::new(None) };
}

/// Closes the loop's inbox and counts it as ended when its thread leaves
/// `loop_thread`, also by a panic, so no handle waits on a dead loop.
struct OnExit {
    shared: Arc<LoopShared>,
    ended: Arc<Ended>,
    /// True when the loop stopped because it was told to: not counted by
    /// `Runtime::join`, which waits for loops that stop on their own.
    told_to_stop: bool,
}

impl Drop for OnExit {
    fn drop(&mut self) {
        self.shared.close();
        if !self.told_to_stop {
            *lock(&self.ended.count) += 1;
            self.ended.changed.notify_all();
        }
    }
}

/// How a loop thread sets itself up (from the [`Builder`]).
struct LoopConfig {
    /// The CPU to pin the thread to.
    cpu: Option<usize>,
    with_tokio: bool,
    busy_poll: Duration,
    yield_before_sleep: bool,
}

/// The body of a loop thread.
fn loop_thread(
    shared: Arc<LoopShared>,
    setup: Arc<Setup>,
    ended: Arc<Ended>,
    config: LoopConfig,
    started: mpsc::Sender<io::Result<()>>,
) -> Result<(), Cause> {
    let mut on_exit = OnExit {
        shared: shared.clone(),
        ended,
        told_to_stop: false,
    };
    let under = match start(config.cpu, config.with_tokio) {
        Ok(under) => under,
        Err(e) => {
            let _ = started.send(Err(e));
            on_exit.told_to_stop = true; // a failed start is reported by build
            return Ok(());
        }
    };
    let reactor = Reactor::current();
    reactor.set_busy_poll(config.busy_poll);
    reactor.set_yield_before_sleep(config.yield_before_sleep);
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Handle {
            shared: shared.clone(),
        })
    });
    let _ = started.send(Ok(()));
    let outcome = under.run(|| {
        let name = format!(
            "setup of {}",
            thread::current().name().unwrap_or("a runtime loop")
        );
        let outcome = match crate::greenlet::Builder::new()
            .name(name)
            .spawn(move || setup())
        {
            Ok(task) => control(&shared, task),
            Err(e) => Err(Cause::Setup(e)),
        };
        // Stop: refuse new work first, then unwind every greenlet. The
        // destructors of cancelled greenlets may spawn more; cancel those
        // too.
        shared.close();
        while reactor.live_tasks() > 0 {
            reactor.cancel_all();
        }
        outcome
    });
    on_exit.told_to_stop = outcome.is_ok();
    outcome
}

/// What a loop thread runs its loop under.
enum Under {
    /// greenhack's loop alone ([`crate::run`]).
    Alone,
    /// With a tokio runtime underneath ([`crate::tokio::run_with`]).
    #[cfg(feature = "tokio")]
    Tokio(::tokio::runtime::Runtime),
}

impl Under {
    fn run<T>(self, f: impl FnOnce() -> T) -> T {
        match self {
            Under::Alone => crate::pair::run(f),
            #[cfg(feature = "tokio")]
            Under::Tokio(rt) => crate::tokio::run_with(rt, f),
        }
    }
}

/// A loop thread's start, before it serves: pinned to `cpu`, and its tokio
/// runtime built if asked; the error says which failed.
fn start(cpu: Option<usize>, with_tokio: bool) -> io::Result<Under> {
    if let Some(cpu) = cpu {
        pin_to(cpu)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot be pinned to CPU {cpu}: {e}")))?;
    }
    #[cfg(feature = "tokio")]
    if with_tokio {
        let rt = ::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot build its tokio runtime: {e}"))
            })?;
        return Ok(Under::Tokio(rt));
    }
    let _ = with_tokio; // without the feature, never set
    Ok(Under::Alone)
}

/// The loop's control, on the thread's own stack: runs queued work until
/// the stop signal arrives or the setup fails.
fn control(shared: &LoopShared, setup: JoinHandle<io::Result<()>>) -> Result<(), Cause> {
    let mut setup = Some(setup);
    loop {
        match crate::pair::exempt(Control {
            shared,
            setup: &mut setup,
        }) {
            Event::Stop => return Ok(()),
            Event::Jobs(jobs) => jobs.into_iter().for_each(|job| job()),
            Event::SetupEnded(Ok(Ok(()))) => {}
            Event::SetupEnded(Ok(Err(e))) => return Err(Cause::Setup(e)),
            Event::SetupEnded(Err(e)) if e.is_panic() => {
                return Err(Cause::Panicked(Payload(e.into_panic())));
            }
            Event::SetupEnded(Err(_)) => {} // cancelled: nobody holds its handle
        }
    }
}

/// What woke the control.
enum Event {
    Stop,
    Jobs(Vec<Job>),
    SetupEnded(Result<io::Result<()>, JoinError>),
}

/// The control's one wait: the stop signal, queued work, or the end of the
/// setup greenlet.
struct Control<'a> {
    shared: &'a LoopShared,
    setup: &'a mut Option<JoinHandle<io::Result<()>>>,
}

impl Future for Control<'_> {
    type Output = Event;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Event> {
        if let Some(setup) = self.setup.as_mut() {
            if let Poll::Ready(r) = Pin::new(setup).poll(cx) {
                *self.setup = None;
                return Poll::Ready(Event::SetupEnded(r));
            }
        }
        let mut inbox = lock(&self.shared.inbox);
        if inbox.stop {
            return Poll::Ready(Event::Stop);
        }
        if !inbox.jobs.is_empty() {
            return Poll::Ready(Event::Jobs(std::mem::take(&mut inbox.jobs)));
        }
        // Registered under the lock that `stop` and `push` take: no wake
        // is lost between the checks above and this.
        match &inbox.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => inbox.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// A handle to one loop of a [`Runtime`]: spawns work there from any
/// thread. `Send`, `Sync` and cheap to clone.
///
/// ```
/// use greenhack::Runtime;
///
/// let rt = Runtime::builder().worker_threads(2).build(|| Ok(()))?;
/// let h = rt.handle(1).spawn(|| {
///     let here = greenhack::runtime::Handle::try_current().unwrap();
///     (here.index(), std::thread::current().name().map(str::to_owned))
/// });
/// let (index, name) = h.join()?; // parks this plain thread
/// assert_eq!(index, 1);
/// assert_eq!(name.as_deref(), Some("greenhack-loop-1"));
/// rt.shutdown()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Handle {
    shared: Arc<LoopShared>,
}

impl Handle {
    /// The handle of the loop the calling code runs on, if it runs on a
    /// [`Runtime`]'s loop thread (in a greenlet or not).
    pub fn try_current() -> Option<Handle> {
        CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()
    }

    /// This loop's index in its runtime: `rt.handle(i).index() == i`.
    pub fn index(&self) -> usize {
        self.shared.index
    }

    /// False once the loop has stopped taking work (it was shut down, or
    /// its setup failed); [`spawn`](Self::spawn) then fails.
    pub fn is_running(&self) -> bool {
        lock(&self.shared.inbox).open
    }

    /// Runs `f` on a new greenlet of this loop and returns a handle to its
    /// result. The closure moves to the loop's thread and runs there, like
    /// any greenlet: a socket it needs travels as a std socket (see the
    /// [module documentation](self#handing-a-connection-to-another-loop)).
    ///
    /// Never waits. If the loop has stopped, the handle's
    /// [`join`](RemoteJoinHandle::join) returns an error at once (and `f`
    /// is dropped, never run); if it stops before `f` finishes, `f`'s
    /// greenlet is unwound and `join` returns an error.
    pub fn spawn<T, F>(&self, f: F) -> RemoteJoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let state = Arc::new(Remote {
            slot: Mutex::new(RemoteSlot {
                result: None,
                done: false,
                joiner: None,
                cancel: false,
                task: None,
            }),
        });
        let completer = Completer {
            state: Some(state.clone()),
        };
        let job: Job = Box::new(move || {
            if lock(&completer.state().slot).cancel {
                completer.complete(Err(RemoteJoinError(Repr::Cancelled)));
                return;
            }
            match crate::greenlet::Builder::new().spawn(f) {
                Ok(local) => {
                    Reactor::current().spawn(Box::pin(Relay {
                        local,
                        completer: Some(completer),
                        cancel_sent: false,
                    }));
                }
                Err(e) => completer.complete(Err(RemoteJoinError(Repr::Spawn(e)))),
            }
        });
        // A refused job is dropped here: its completer reports the stop.
        drop(self.shared.push(job));
        RemoteJoinHandle { state }
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("index", &self.index())
            .field("running", &self.is_running())
            .finish()
    }
}

/// The result of a [`Handle::spawn`], shared by the loop and the
/// [`RemoteJoinHandle`].
struct Remote<T> {
    slot: Mutex<RemoteSlot<T>>,
}

struct RemoteSlot<T> {
    /// Set once, when the greenlet ended or could not run; taken by `join`.
    result: Option<Result<T, RemoteJoinError>>,
    done: bool,
    /// Who waits for the result (a task waker, a parked thread).
    joiner: Option<Waker>,
    /// `RemoteJoinHandle::cancel` was called.
    cancel: bool,
    /// The relay task's waker, to make it notice `cancel`.
    task: Option<Waker>,
}

/// Delivers a result exactly once; dropped without delivering (the job was
/// refused or dropped by a stopping loop, or the relay was cancelled with
/// its loop), it reports that the loop stopped.
struct Completer<T> {
    /// `None` once delivered.
    state: Option<Arc<Remote<T>>>,
}

impl<T> Completer<T> {
    fn state(&self) -> &Remote<T> {
        self.state
            .as_deref()
            .expect("greenhack: completer used after completing")
    }

    fn complete(mut self, result: Result<T, RemoteJoinError>) {
        if let Some(state) = self.state.take() {
            deliver(&state, result);
        }
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            deliver(&state, Err(RemoteJoinError(Repr::Stopped)));
        }
    }
}

fn deliver<T>(state: &Remote<T>, result: Result<T, RemoteJoinError>) {
    let joiner = {
        let mut slot = lock(&state.slot);
        slot.result = Some(result);
        slot.done = true;
        slot.task = None;
        slot.joiner.take()
    };
    if let Some(w) = joiner {
        w.wake();
    }
}

/// A task on the target loop that waits for the spawned greenlet and
/// relays its result (and a cancellation) across threads. A plain future,
/// not a greenlet: it needs no stack of its own.
struct Relay<T> {
    local: JoinHandle<T>,
    completer: Option<Completer<T>>,
    cancel_sent: bool,
}

impl<T> Future for Relay<T> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if !this.cancel_sent {
            let Some(completer) = &this.completer else {
                return Poll::Ready(());
            };
            let mut slot = lock(&completer.state().slot);
            if slot.cancel {
                this.cancel_sent = true;
            } else if !slot.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                slot.task = Some(cx.waker().clone());
            }
            drop(slot);
            if this.cancel_sent {
                this.local.cancel();
            }
        }
        match Pin::new(&mut this.local).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => {
                let r = r.map_err(|e| match e.is_panic() {
                    true => RemoteJoinError(Repr::Panicked(Payload(e.into_panic()))),
                    false => RemoteJoinError(Repr::Cancelled),
                });
                if let Some(c) = this.completer.take() {
                    c.complete(r);
                }
                Poll::Ready(())
            }
        }
    }
}

impl<T> TaskFuture for Relay<T> {}

/// Owns the right to join a greenlet started by [`Handle::spawn`] on
/// another loop. `Send`; also a `Future`. Dropping it detaches the greenlet.
#[must_use = "dropping a RemoteJoinHandle detaches the greenlet; call join() to wait for it"]
pub struct RemoteJoinHandle<T> {
    state: Arc<Remote<T>>,
}

impl<T> RemoteJoinHandle<T> {
    /// Waits for the greenlet and returns its result, the payload of its
    /// panic, or why it did not finish (cancelled, or its loop stopped).
    ///
    /// On a thread that runs greenhack's loop (a greenlet, or a thread that
    /// used greenhack's I/O) it waits like [`exempt`](crate::exempt), so the
    /// loop's other greenlets run meanwhile; on a plain thread it parks the
    /// thread. Inside an async executor, `.await` the handle instead.
    pub fn join(self) -> Result<T, RemoteJoinError> {
        if Reactor::try_current().is_some() {
            crate::pair::exempt(self)
        } else {
            park_on(self)
        }
    }

    /// True once a result is there for `join` to return.
    pub fn is_finished(&self) -> bool {
        lock(&self.state.slot).done
    }

    /// Asks the greenlet to stop. On its loop, at that loop's next turn,
    /// its stack is unwound (its destructors run); `join` then returns an
    /// error whose [`is_cancelled`](RemoteJoinError::is_cancelled) is true.
    /// A greenlet that has not started yet never runs. Cancelling a
    /// finished greenlet does nothing.
    pub fn cancel(&self) {
        let task = {
            let mut slot = lock(&self.state.slot);
            if slot.done {
                return;
            }
            slot.cancel = true;
            slot.task.take()
        };
        if let Some(w) = task {
            w.wake();
        }
    }
}

impl<T> Future for RemoteJoinHandle<T> {
    type Output = Result<T, RemoteJoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = lock(&self.state.slot);
        if let Some(r) = slot.result.take() {
            return Poll::Ready(r);
        }
        assert!(
            !slot.done,
            "greenhack: RemoteJoinHandle polled after it completed"
        );
        match &slot.joiner {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.joiner = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> fmt::Debug for RemoteJoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteJoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// Polls `fut` to completion on a plain thread, parking it in between.
fn park_on<F: Future>(fut: F) -> F::Output {
    struct Unpark {
        thread: Thread,
        woken: AtomicBool,
    }
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.woken.store(true, Ordering::Release);
            self.thread.unpark();
        }
    }
    let unpark = Arc::new(Unpark {
        thread: thread::current(),
        woken: AtomicBool::new(false),
    });
    let waker = Waker::from(unpark.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        // `park` may return spuriously: wait for the flag.
        while !unpark.woken.swap(false, Ordering::Acquire) {
            thread::park();
        }
    }
}

/// Why a greenlet started by [`Handle::spawn`] produced no value.
pub struct RemoteJoinError(Repr);

enum Repr {
    Panicked(Payload),
    Cancelled,
    /// The loop stopped before the greenlet ran or finished.
    Stopped,
    /// The greenlet's stack could not be mapped.
    Spawn(io::Error),
}

impl RemoteJoinError {
    /// True if [`RemoteJoinHandle::cancel`] stopped the greenlet.
    pub fn is_cancelled(&self) -> bool {
        matches!(self.0, Repr::Cancelled)
    }

    /// True if the greenlet panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self.0, Repr::Panicked(_))
    }

    /// True if the loop had stopped, or stopped before the greenlet
    /// finished (the runtime was shut down, or the loop's setup failed).
    pub fn is_stopped(&self) -> bool {
        matches!(self.0, Repr::Stopped)
    }

    /// The panic's payload, to inspect or to `resume_unwind`.
    ///
    /// # Panics
    ///
    /// If the greenlet did not panic.
    pub fn into_panic(self) -> Box<dyn Any + Send> {
        match self.0 {
            Repr::Panicked(p) => p.0,
            other => panic!(
                "greenhack: into_panic on a greenlet that did not panic: {}",
                RemoteJoinError(other)
            ),
        }
    }
}

impl fmt::Display for RemoteJoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Panicked(p) => write!(f, "greenlet panicked: {}", p.message()),
            Repr::Cancelled => f.write_str("greenlet was cancelled"),
            Repr::Stopped => f.write_str(
                "the loop stopped before the greenlet finished (the runtime was shut down, \
                 or the loop's setup failed)",
            ),
            Repr::Spawn(e) => write!(f, "could not start the greenlet: {e}"),
        }
    }
}

impl fmt::Debug for RemoteJoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteJoinError({self})")
    }
}

impl std::error::Error for RemoteJoinError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            Repr::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

/// A panic payload's message, when it is a string.
fn panic_message(p: &(dyn Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a non-string payload)")
}

/// One loop that stopped other than by the stop signal: which, and why.
pub struct LoopError {
    index: usize,
    thread_name: String,
    cause: Cause,
}

impl LoopError {
    /// The loop's index in its runtime.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The loop thread's name.
    pub fn thread_name(&self) -> &str {
        &self.thread_name
    }

    /// True if the setup or the loop thread panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self.cause, Cause::Panicked(_))
    }

    /// The error the setup returned, if that is why the loop stopped.
    pub fn setup_error(&self) -> Option<&io::Error> {
        match &self.cause {
            Cause::Setup(e) => Some(e),
            Cause::Panicked(_) => None,
        }
    }

    /// The panic's payload, to inspect or to `resume_unwind`.
    ///
    /// # Panics
    ///
    /// If the loop stopped because its setup returned an error.
    pub fn into_panic(self) -> Box<dyn Any + Send> {
        match self.cause {
            Cause::Panicked(p) => p.0,
            Cause::Setup(e) => panic!(
                "greenhack: into_panic on loop {} ({}), which did not panic: its setup failed: {e}",
                self.index, self.thread_name
            ),
        }
    }
}

impl fmt::Display for LoopError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "loop {} ({}) ", self.index, self.thread_name)?;
        match &self.cause {
            Cause::Setup(e) => write!(f, "stopped: its setup failed: {e}"),
            Cause::Panicked(p) => write!(f, "panicked: {}", p.message()),
        }
    }
}

impl fmt::Debug for LoopError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LoopError({self})")
    }
}

impl std::error::Error for LoopError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.setup_error().map(|e| e as _)
    }
}

/// The loops that failed, as [`Runtime::shutdown`] and [`Runtime::join`]
/// report them: every one, in loop order.
pub struct ShutdownError {
    loops: Vec<LoopError>,
}

impl ShutdownError {
    /// The failed loops, in order.
    pub fn loops(&self) -> &[LoopError] {
        &self.loops
    }

    /// The failed loops, owned (to take a panic's payload).
    pub fn into_loops(self) -> Vec<LoopError> {
        self.loops
    }
}

impl fmt::Display for ShutdownError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.loops.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            l.fmt(f)?;
        }
        Ok(())
    }
}

impl fmt::Debug for ShutdownError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShutdownError({self})")
    }
}

impl std::error::Error for ShutdownError {}

/// The CPUs this process may run on (`sched_getaffinity`), in order.
fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: all-zero is a valid (empty) cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is writable for the size passed.
    let r = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    let max = 8 * size_of::<libc::cpu_set_t>();
    // SAFETY: `CPU_ISSET` reads `set` for CPU numbers below its capacity.
    Ok((0..max)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> io::Result<()> {
    // SAFETY: all-zero is a valid (empty) cpu_set_t; `CPU_SET` writes a bit
    // below its capacity (`cpu` came from `allowed_cpus`).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above, `cpu` is below the set's capacity.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; 0 is this thread.
    let r = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// Handles cross threads, and errors go into `Box<dyn Error + Send + Sync>`:
// keep them `Send + Sync`.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Handle>();
    send_sync::<RemoteJoinHandle<Vec<u8>>>();
    send_sync::<RemoteJoinError>();
    send_sync::<ShutdownError>();
};
