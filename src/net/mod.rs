//! Sockets with std's API whose waits run on greenhack's loop:
//! [`TcpListener`], [`TcpStream`], [`UdpSocket`], [`UnixListener`],
//! [`UnixStream`].
//!
//! Code written against these types is plain blocking-style Rust, the same as
//! with `std::net`: `accept` returns a connection, `read` returns bytes.
//! Where std would block the thread, these wait on the thread's greenhack
//! loop instead:
//!
//! * inside a greenlet driven by greenhack's loop ([`spawn`](crate::spawn),
//!   or an [`as_async`](crate::as_async) that [`run`](crate::run) or
//!   [`exempt`](crate::exempt) waits for), the greenlet suspends and the
//!   loop runs the thread's other greenlets meanwhile;
//! * on a plain thread outside any greenlet, the call runs greenhack's loop
//!   on the calling thread until the socket is ready, so the thread behaves
//!   as if the socket were a blocking std socket (and any greenlets it
//!   spawned make progress meanwhile);
//! * inside an `as_async` polled by tokio (feature `tokio`), the `AsAsync`
//!   hosts greenhack's loop in tokio's (see the crate docs' "Three ways
//!   in"): the greenlet suspends as on greenhack's own loop, and tokio's
//!   other tasks run meanwhile;
//! * inside an `as_async` polled by an executor that cannot host
//!   greenhack's loop (any other, or tokio without the `tokio` feature), a
//!   call that would wait fails at once with
//!   [`ErrorKind::Unsupported`](std::io::ErrorKind::Unsupported) and a
//!   message naming the fix: use that executor's sockets through
//!   [`exempt`](crate::exempt). So does one made outside any greenlet on a
//!   tokio runtime's thread (a plain `async fn`; detected with the `tokio`
//!   feature), where waiting would block the runtime: wrap the sync code
//!   in `as_async`. A call that need not
//!   wait (data already buffered, a `bind`) still succeeds.
//!
//! So one codebase serves a plain program, thousands of connections on one
//! thread, and sync code embedded in an async server.
//!
//! ```
//! use std::io::{Read, Write};
//! use greenhack::net::{TcpListener, TcpStream};
//!
//! let echoed = greenhack::run(|| {
//!     let listener = TcpListener::bind("127.0.0.1:0")?;
//!     let addr = listener.local_addr()?;
//!     // The server: a greenlet per connection.
//!     let _server = greenhack::spawn(move || -> std::io::Result<()> {
//!         let (mut conn, _) = listener.accept()?;
//!         let mut buf = [0; 5];
//!         conn.read_exact(&mut buf)?;
//!         conn.write_all(&buf)
//!     });
//!     // The client, on the thread's own stack.
//!     let mut client = TcpStream::connect(addr)?;
//!     client.write_all(b"hello")?;
//!     let mut back = String::new();
//!     client.read_to_string(&mut back)?;
//!     Ok::<_, std::io::Error>(back)
//! })?;
//! assert_eq!(echoed, "hello");
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Differences from std
//!
//! * **Always non-blocking underneath.** The descriptor is in `O_NONBLOCK`
//!   mode and registered with the thread's reactor (edge-triggered); that is
//!   how the loop learns when to resume a waiter. There is therefore no
//!   `set_nonblocking`: a non-blocking socket would turn every wait into a
//!   `WouldBlock` error, which is what greenhack exists to hide. To wait for
//!   several things at once, spawn a greenlet per wait; to bound a wait, use
//!   a timeout.
//! * **No `FromRawFd` or `From<OwnedFd>`** on the registered types (all but
//!   [`TcpSocket`]): making one registers it with the thread's loop, which
//!   can fail, and those conversions cannot report it. Build the std type
//!   from the descriptor and convert it with `from_std`:
//!   `TcpStream::from_std(std::net::TcpStream::from(fd))?`. `into_raw_fd`
//!   deregisters the socket and returns its descriptor still non-blocking;
//!   `into_std` makes it blocking again.
//! * **Timeouts** (`set_read_timeout`, `set_write_timeout`) are kept where std
//!   keeps them, in the socket (`SO_RCVTIMEO`, `SO_SNDTIMEO`), so clones made
//!   with `try_clone` share them and `into_std`/`from_std` carry them. They
//!   are read from the socket once, the first time an operation waits, and
//!   cached; clones share the cache, as they share the socket.
//!   Expiry is reported as std reports it on Linux: `WouldBlock` (`EAGAIN`,
//!   "Resource temporarily unavailable"). A zero `Duration` is refused with
//!   `InvalidInput`, as std does.
//! * **Errors** are the `io::Error`s of the same system calls std makes, so
//!   their kinds are std's: a refused connect is `ConnectionRefused`, a closed
//!   peer is `Ok(0)` on read and `BrokenPipe`/`ConnectionReset` on write.
//!   Running out of descriptors in `accept` (`EMFILE`, `ENFILE`) is returned
//!   to that caller; the listener and every other socket keep working.
//! * **Name resolution does not block the loop.** `bind`, `connect` and
//!   `send_to` take greenhack's [`ToSocketAddrs`], implemented for the same
//!   types as std's (so `connect("db.internal:5432")` and
//!   `connect((host, port))` compile unchanged): a host name is looked up by
//!   the system resolver on the [`unblock`](crate::unblock) pool while the
//!   calling greenlet waits, and a literal address is parsed in place.
//!   Results and errors are std's. A function generic over
//!   `std::net::ToSocketAddrs` that forwards to greenhack must name
//!   greenhack's trait instead (as with tokio's).
//!
//! # Threads
//!
//! Each socket is registered with the reactor of the thread that created it,
//! so the types are `!Send` and `!Sync`. To hand a socket to another thread,
//! convert it with `into_std`, send the std socket, and `from_std` it there:
//!
//! ```compile_fail,E0277
//! fn assert_send<T: Send>() {}
//! assert_send::<greenhack::net::TcpStream>();
//! ```
//!
//! ```
//! use greenhack::net::{TcpListener, TcpStream};
//!
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! let client = TcpStream::connect(listener.local_addr()?)?;
//! let (_server, _) = listener.accept()?;
//! let std_stream = client.into_std()?; // deregistered, blocking again
//! std::thread::spawn(move || {
//!     let client = TcpStream::from_std(std_stream).unwrap(); // that thread's loop
//!     client.peer_addr().unwrap();
//! })
//! .join()
//! .unwrap();
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Clones
//!
//! `try_clone` duplicates the descriptor (`dup`) and registers the new one
//! separately. Two registrations of one socket are fine with `epoll`: it
//! keys a registration by descriptor (and open file), and each clone has a
//! descriptor of its own. The clones share
//! the socket's open file description, hence its `O_NONBLOCK` flag: calling
//! `into_std` (which makes the socket blocking) while a greenhack clone of
//! the same socket is still in use would make that clone block its thread.
//! The same holds for `from_std` and std clones of the socket, which become
//! non-blocking. Drop the other handles first.
//!
//! # Async I/O traits
//!
//! With the `tokio` feature, [`TcpStream`] and [`UnixStream`] (and `&` of
//! each) implement tokio's `AsyncRead`/`AsyncWrite`; with `futures-io`,
//! futures-io's. Async crates generic over those traits (hyper 1 through
//! `hyper_util::rt::TokioIo`, tokio-postgres's `Config::connect_raw`) then
//! run over these sockets on greenhack's own loop, no tokio runtime needed:
//! wait for their futures with [`exempt`](crate::exempt), run their
//! background futures as greenlets (`spawn(move || exempt(conn))`). A poll
//! that finds the socket not ready registers the task's waker with the
//! thread's greenhack loop, so poll on the socket's own thread, under
//! `exempt` or a spawned greenlet. Socket timeouts bound the blocking-style
//! calls only; bound async operations with your own timer.
//!
//! # Implementation
//!
//! Every socket type is a thin wrapper over a `mio` socket held in a
//! `Registered` (this module), which owns the registration and writes the
//! retry loop once: try the operation; on `WouldBlock`, read the socket's
//! timeout and let the reactor's `io` loop wait for readiness (and retry)
//! until the operation stops returning `WouldBlock` or the deadline passes.

use std::cell::{Cell, OnceCell};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::Token;
use mio::event::Source;

use crate::reactor::Deadline;
use crate::reactor::{Direction, Reactor};
use crate::wait::Wait;

mod addr;
#[cfg(any(feature = "tokio", feature = "futures-io"))]
mod async_io;
mod socket;
mod tcp;
mod udp;
mod unix;

pub use addr::ToSocketAddrs;

pub use socket::TcpSocket;
pub use tcp::{Incoming, TcpListener, TcpStream};
pub use udp::UdpSocket;
pub use unix::{UnixIncoming, UnixListener, UnixStream};

/// A `mio` source registered with the current thread's reactor: the shared
/// core of every socket type. Owns the registration: dropping it
/// deregisters the source, then closes it.
pub(crate) struct Registered<S: Source + AsRawFd> {
    /// `None` only after `into_inner` took it (then `Drop` has nothing to do).
    source: Option<S>,
    token: Token,
    /// The reactor the source is registered with. Holding it makes every
    /// socket `!Send` and `!Sync`, as it must be.
    reactor: Rc<Reactor>,
    /// Set after a short stream read (see `read_stream`): the kernel buffer
    /// was drained, so the next read waits for readiness before trying.
    drained: Cell<bool>,
    /// The socket's timeouts as last read from or written to it: the
    /// socket is asked once, not on every wait. Kept here, inline, while the
    /// descriptor has never been cloned, so the check every read and write
    /// makes is a load from the socket value itself rather than from another
    /// heap object (with thousands of connections, a cache miss per
    /// request). See `timeouts()`.
    own_timeouts: Timeouts,
    /// Set by the first `try_clone`: from then on every clone of the
    /// descriptor (they are one socket) shares these.
    shared_timeouts: OnceCell<Rc<Timeouts>>,
}

// Unwind safe, as std's sockets are, so that `catch_unwind(|| s.read(..))`
// compiles with a plain `&TcpStream` (every socket type is built on this
// one). The cells here are caches written by this module in single stores
// that run no user code: `drained` is a hint checked against the reactor's
// readiness before it is trusted, the timeouts are stored after the socket
// accepted them. What unwinds through a socket call is a cancellation or a
// `timeout` raised at its wait, where nothing is half-updated: the
// reactor's readiness stays latched, so the next call on the socket works
// as if the cancelled one had never started. The `Rc<Reactor>` is the
// thread's loop, which any code on the thread reaches whether or not it
// holds a socket: holding one exposes nothing more of it.
impl<S: Source + AsRawFd + std::panic::UnwindSafe> std::panic::UnwindSafe for Registered<S> {}
impl<S: Source + AsRawFd + std::panic::RefUnwindSafe> std::panic::RefUnwindSafe for Registered<S> {}

/// Cached `SO_RCVTIMEO` / `SO_SNDTIMEO`: `None` until known.
#[derive(Clone, Default)]
struct Timeouts {
    read: Cell<Option<Option<Duration>>>,
    write: Cell<Option<Option<Duration>>>,
}

impl Timeouts {
    fn slot(&self, dir: Direction) -> &Cell<Option<Option<Duration>>> {
        match dir {
            Direction::Read => &self.read,
            Direction::Write => &self.write,
        }
    }
}

/// A stream socket type, and whether a short read proves its receive buffer
/// drained (the short-read rule of [`Registered::read_stream`]).
pub(crate) trait StreamSource {
    /// True if a read returning fewer bytes than asked means no more bytes
    /// were queued, except where the reactor can tell otherwise.
    const SHORT_READ_DRAINS: bool;
}

/// TCP stops short only at the urgent mark, which the reactor detects
/// (`EPOLLPRI`).
impl StreamSource for mio::net::TcpStream {
    const SHORT_READ_DRAINS: bool = true;
}

/// A Unix stream stops short after bytes that carried descriptors
/// (`SCM_RIGHTS`) and, with `SO_PASSCRED`, at every change of writer,
/// with more bytes queued and no event to come; nothing cheap tells those
/// reads apart, so every read tries the socket first.
impl StreamSource for mio::net::UnixStream {
    const SHORT_READ_DRAINS: bool = false;
}

impl<S: Source + AsRawFd> Registered<S> {
    /// Registers `source` (which must be in non-blocking mode) with this
    /// thread's reactor.
    pub(crate) fn new(mut source: S) -> io::Result<Self> {
        let reactor = Reactor::current();
        let token = reactor.register(&mut source)?;
        Ok(Registered {
            source: Some(source),
            token,
            reactor,
            drained: Cell::new(false),
            own_timeouts: Timeouts::default(),
            shared_timeouts: OnceCell::new(),
        })
    }

    /// The cached timeouts: this descriptor's own until it is first cloned,
    /// then the ones all its clones share.
    #[inline]
    fn timeouts(&self) -> &Timeouts {
        match self.shared_timeouts.get() {
            Some(shared) => shared,
            None => &self.own_timeouts,
        }
    }

    /// A duplicate of the descriptor, registered on its own, sharing this
    /// socket's timeouts.
    pub(crate) fn try_clone(&self) -> io::Result<Self>
    where
        S: From<OwnedFd> + AsFd,
    {
        let clone = Registered::new(S::from(self.dup()?))?;
        let shared = self
            .shared_timeouts
            .get_or_init(|| Rc::new(self.own_timeouts.clone()));
        let _ = clone.shared_timeouts.set(shared.clone());
        Ok(clone)
    }

    /// The `mio` source, for operations that never wait.
    pub(crate) fn get(&self) -> &S {
        match &self.source {
            Some(s) => s,
            None => unreachable!("greenhack: source used after into_inner"),
        }
    }

    /// Runs `op` like a blocking socket call: until it stops returning
    /// `WouldBlock`, waiting for readiness in `dir` in between, bounded by
    /// the socket's timeout for that direction (`SO_RCVTIMEO` for reading,
    /// `SO_SNDTIMEO` for writing).
    pub(crate) fn io<R>(
        &self,
        dir: Direction,
        op: impl FnMut(&S) -> io::Result<R>,
    ) -> io::Result<R> {
        self.io_from(dir, false, op)
    }

    /// A read from a stream socket: `io`, plus the short-read rule. A read
    /// that returns fewer bytes than asked (but some) drained the kernel's
    /// receive buffer, so the next read waits for the next readiness event
    /// instead of making a system call that could only say `WouldBlock` —
    /// one system call fewer per request on a request/response connection.
    /// Sound for stream sockets under edge-triggered epoll, where any data
    /// arriving after the read raises a new event (tokio applies the same
    /// rule).
    ///
    /// Except at TCP's urgent mark: Linux `recv` stops short there (in
    /// both `SO_OOBINLINE` modes) with the bytes after the mark already
    /// queued, and no event will announce them. Urgent data raises
    /// `EPOLLPRI`, which the reactor latches for good (`saw_urgent`); a
    /// socket whose peer ever sent urgent data gives up the rule. That
    /// costs no system call (a bit read from the socket's reactor slot,
    /// on short reads only; an echo request still makes one `recvfrom`
    /// under strace) and is sound: urgent data that arrived before the
    /// short read either raised an event the loop has already latched
    /// (with `EPOLLPRI`, since the kernel reports the state at delivery)
    /// or one still queued in epoll, which the wait will receive.
    ///
    /// Unix streams never use the rule (see [`StreamSource`]).
    pub(crate) fn read_stream(
        &self,
        len: usize,
        op: impl FnMut(&S) -> io::Result<usize>,
    ) -> io::Result<usize>
    where
        S: StreamSource,
    {
        let known_empty = self.drained.get() && !self.reactor.is_ready(self.token, Direction::Read);
        let r = self.io_from(Direction::Read, known_empty, op);
        self.note_read(len, &r);
        r
    }

    /// Applies the short-read rule (see [`read_stream`](Self::read_stream))
    /// to a read of `len` bytes that returned `r`.
    fn note_read(&self, len: usize, r: &io::Result<usize>)
    where
        S: StreamSource,
    {
        let short = S::SHORT_READ_DRAINS
            && matches!(r, Ok(n) if *n > 0 && *n < len)
            && !self.reactor.saw_urgent(self.token);
        self.drained.set(short);
        if short {
            self.reactor.mark_drained(self.token, Direction::Read);
        }
    }

    /// Waits until a read would likely not block: returns at once unless
    /// the last read (or [`try_read_stream`](Self::try_read_stream)) showed
    /// the receive buffer empty and no event has come since. May return
    /// with nothing to read (a readiness left from before); the caller's
    /// `try_read_stream` then says `WouldBlock`, and the next call waits.
    pub(crate) fn readable(&self) -> io::Result<()> {
        if !self.drained.get() || self.reactor.is_ready(self.token, Direction::Read) {
            return Ok(());
        }
        let fd = self.get().as_raw_fd();
        let ready = self.reactor.readiness(self.token, Direction::Read);
        crate::pair::wait_io(ready, Wait::Readable(fd))?;
        Ok(())
    }

    /// One read attempt, never waiting: `read_stream` without its wait. A
    /// `WouldBlock` is returned, and remembered, so that the next
    /// [`readable`](Self::readable) waits for an event.
    pub(crate) fn try_read_stream(
        &self,
        len: usize,
        mut op: impl FnMut(&S) -> io::Result<usize>,
    ) -> io::Result<usize>
    where
        S: StreamSource,
    {
        let source = self.get();
        let Some(r) = try_op(|| op(source)) else {
            self.drained.set(true);
            self.reactor.mark_drained(self.token, Direction::Read);
            return Err(io::ErrorKind::WouldBlock.into());
        };
        self.note_read(len, &r);
        r
    }

    /// `io`, optionally starting from a wait (when `op` is known to block).
    fn io_from<R>(
        &self,
        dir: Direction,
        known_would_block: bool,
        mut op: impl FnMut(&S) -> io::Result<R>,
    ) -> io::Result<R> {
        let source = self.get();
        // Fast path: the timeout is only looked up when we are about to wait.
        if !known_would_block {
            if let Some(done) = try_op(|| op(source)) {
                return done;
            }
        }
        let deadline = self
            .timeout(dir)?
            .and_then(|t| Instant::now().checked_add(t));
        self.wait_and_retry(dir, deadline, || op(source))
    }

    /// Like [`io`](Self::io) with an explicit deadline instead of the
    /// socket's timeout. Past the deadline the result is `WouldBlock`.
    pub(crate) fn io_until<R>(
        &self,
        dir: Direction,
        deadline: Option<Instant>,
        mut op: impl FnMut(&S) -> io::Result<R>,
    ) -> io::Result<R> {
        let source = self.get();
        match try_op(|| op(source)) {
            Some(done) => done,
            None => self.wait_and_retry(dir, deadline, || op(source)),
        }
    }

    /// The retry loop of every blocking-style socket call, entered after
    /// `op` said `WouldBlock`: forget the readiness that `WouldBlock`
    /// disproved, wait for the next readiness event in `dir` (through the
    /// pair: the greenlet suspends, or the thread runs greenhack's loop),
    /// try again. Past `deadline` the result is `WouldBlock` with the
    /// message std gives a timed-out socket (EAGAIN).
    fn wait_and_retry<R>(
        &self,
        dir: Direction,
        deadline: Option<Instant>,
        mut op: impl FnMut() -> io::Result<R>,
    ) -> io::Result<R> {
        loop {
            let fd = self.reactor.clear_readiness(self.token, dir);
            let ready = self.reactor.readiness(self.token, dir);
            let what = match dir {
                Direction::Read => Wait::Readable(fd),
                Direction::Write => Wait::Writable(fd),
            };
            match deadline {
                None => crate::pair::wait_io(ready, what)?,
                Some(d) => {
                    if crate::pair::wait_io(Deadline::new(ready, d), what)?.is_none() {
                        return Err(io::Error::from_raw_os_error(libc::EAGAIN));
                    }
                }
            }
            if let Some(done) = try_op(&mut op) {
                return done;
            }
        }
    }

    /// Sets the timeout of `dir` in the socket, validated as std does.
    pub(crate) fn set_timeout(&self, dir: Direction, dur: Option<Duration>) -> io::Result<()> {
        let dur = crate::time::check_timeout(dur)?;
        set_timeout_opt(self.get().as_raw_fd(), timeout_opt(dir), dur)?;
        // Read back: the kernel rounds to its clock, and the getter must
        // report what std would.
        self.timeouts().slot(dir).set(None);
        self.timeout(dir).map(|_| ())
    }

    /// The timeout of `dir` as the socket holds it (asked once, then
    /// cached: a `getsockopt` per wait cost ~10% of an echo server's
    /// throughput).
    pub(crate) fn timeout(&self, dir: Direction) -> io::Result<Option<Duration>> {
        let slot = self.timeouts().slot(dir);
        if let Some(t) = slot.get() {
            return Ok(t);
        }
        let t = get_timeout_opt(self.get().as_raw_fd(), timeout_opt(dir))?;
        slot.set(Some(t));
        Ok(t)
    }

    /// A duplicate of the descriptor, not registered (the caller registers
    /// it as its own source).
    pub(crate) fn dup(&self) -> io::Result<OwnedFd>
    where
        S: AsFd,
    {
        self.get().as_fd().try_clone_to_owned()
    }

    /// Deregisters the source and hands it back, open.
    pub(crate) fn into_inner(mut self) -> S {
        let mut source = match self.source.take() {
            Some(s) => s,
            None => unreachable!("greenhack: into_inner called twice"),
        };
        self.reactor.deregister(&mut source, self.token);
        source
    }
}

/// The poll-based face of `Registered`, for the async I/O traits
/// (`async_io`): the same operations as `io` and `read_stream`, but a wait
/// registers the caller's waker with the reactor and returns `Pending`
/// instead of suspending a greenlet.
#[cfg(any(feature = "tokio", feature = "futures-io"))]
impl<S: Source + AsRawFd> Registered<S> {
    /// Tries `op` until it stops returning `WouldBlock`; on `WouldBlock`,
    /// drops the latched readiness of `dir` that it disproved and registers
    /// `cx`'s waker for the next readiness edge. The loop repeats only when
    /// readiness arrived in between (the waker is then not needed).
    ///
    /// The socket's timeouts (`SO_RCVTIMEO`, `SO_SNDTIMEO`) do not apply:
    /// an async caller bounds its waits with its own timer, as it would for
    /// any other runtime's socket.
    pub(crate) fn poll_io<R>(
        &self,
        dir: Direction,
        cx: &mut std::task::Context<'_>,
        mut op: impl FnMut(&S) -> io::Result<R>,
    ) -> std::task::Poll<io::Result<R>> {
        let source = self.get();
        loop {
            match op(source) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return std::task::Poll::Ready(other),
            }
            // `mark_drained` clears exactly what a `WouldBlock` disproves.
            self.reactor.mark_drained(self.token, dir);
            if self.reactor.poll_ready(self.token, dir, cx).is_pending() {
                return pending_for(cx);
            }
        }
    }

    /// `poll_io` for a write of `buf`: the body of both `AsyncWrite` impls
    /// (tokio's and futures-io's).
    pub(crate) fn poll_write(
        &self,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>>
    where
        for<'a> &'a S: io::Write,
    {
        self.poll_io(Direction::Write, cx, |mut s| io::Write::write(&mut s, buf))
    }

    /// [`poll_write`](Self::poll_write) of several buffers.
    pub(crate) fn poll_write_vectored(
        &self,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>>
    where
        for<'a> &'a S: io::Write,
    {
        self.poll_io(Direction::Write, cx, |mut s| {
            io::Write::write_vectored(&mut s, bufs)
        })
    }

    /// `poll_io` for a stream read, with the short-read rule of
    /// `read_stream` (the same [`note_read`](Self::note_read): off at
    /// TCP's urgent mark and for Unix streams), sharing its `drained` flag so that blocking-style and
    /// poll-based reads of one socket can be mixed. After a short read the
    /// next poll registers for readiness without a system call; that waits
    /// only for an edge that must come, since the short read emptied the
    /// receive buffer and any data arriving later raises a new event.
    pub(crate) fn poll_read_stream(
        &self,
        cx: &mut std::task::Context<'_>,
        len: usize,
        op: impl FnMut(&S) -> io::Result<usize>,
    ) -> std::task::Poll<io::Result<usize>>
    where
        S: StreamSource,
    {
        if self.drained.get()
            && !self.reactor.is_ready(self.token, Direction::Read)
            && self
                .reactor
                .poll_ready(self.token, Direction::Read, cx)
                .is_pending()
        {
            return pending_for(cx);
        }
        let r = self.poll_io(Direction::Read, cx, op);
        if let std::task::Poll::Ready(r) = &r {
            self.note_read(len, r);
        }
        r
    }
}

impl<S: Source + AsRawFd> Drop for Registered<S> {
    fn drop(&mut self) {
        if let Some(mut source) = self.source.take() {
            // Deregister before closing. Errors are ignored: deregistering
            // fails only if the descriptor is not in our epoll set (it is:
            // we registered it) or the kernel is out of memory, and a
            // destructor has no one to report to. Deregistering explicitly
            // matters even though close would do it: epoll drops an entry
            // only when the last descriptor of the open file description
            // closes, and a `try_clone` (or a descriptor inherited by a
            // child process) may keep it open, which would leave events
            // arriving for a token that a new socket may reuse.
            self.reactor.deregister(&mut source, self.token);
            drop(source); // closes the descriptor
        }
    }
}

impl<S: Source + AsRawFd + fmt::Debug> fmt::Debug for Registered<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

/// The socket option holding the timeout of `dir`.
fn timeout_opt(dir: Direction) -> libc::c_int {
    match dir {
        Direction::Read => libc::SO_RCVTIMEO,
        Direction::Write => libc::SO_SNDTIMEO,
    }
}

/// Stores a timeout in the socket, converted exactly as std's
/// `set_read_timeout` does (seconds saturate; a non-zero duration below a
/// microsecond becomes one microsecond, since zero means "none").
fn set_timeout_opt(fd: RawFd, opt: libc::c_int, dur: Option<Duration>) -> io::Result<()> {
    let tv = match dur {
        Some(d) => {
            let mut tv = libc::timeval {
                tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_usec: d.subsec_micros() as libc::suseconds_t,
            };
            if tv.tv_sec == 0 && tv.tv_usec == 0 {
                tv.tv_usec = 1;
            }
            tv
        }
        None => libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
    };
    // SAFETY: `tv` is a valid, initialised timeval that outlives the call,
    // and the length passed is its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads a timeout from the socket, as std's `read_timeout` does.
fn get_timeout_opt(fd: RawFd, opt: libc::c_int) -> io::Result<Option<Duration>> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: `tv` is writable for `len` bytes, and `len` is a valid
    // in/out length for the duration of the call.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&raw mut tv).cast(),
            &raw mut len,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    if tv.tv_sec == 0 && tv.tv_usec == 0 {
        return Ok(None);
    }
    Ok(Some(Duration::new(
        tv.tv_sec as u64,
        (tv.tv_usec as u32) * 1000,
    )))
}

/// `Pending` from a poll-based socket operation. A task of another executor
/// that polls the socket directly (not through a greenlet, not from
/// greenhack's loop) must keep greenhack's loop going itself: it hosts it,
/// as an `as_async` would (see `reactor::hosted`).
#[cfg(any(feature = "tokio", feature = "futures-io"))]
fn pending_for<T>(cx: &mut std::task::Context<'_>) -> std::task::Poll<T> {
    if !crate::reactor::is_loop_poll() && !crate::pair::in_greenlet() {
        crate::reactor::hosted::drive(cx, false);
    }
    std::task::Poll::Pending
}

/// One attempt of a socket operation: `None` if it would block (wait for
/// readiness, then try again); `EINTR` is retried at once, as std does.
pub(super) fn try_op<R>(mut op: impl FnMut() -> io::Result<R>) -> Option<io::Result<R>> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return Some(other),
        }
    }
}

/// Tries `f` on each address `addr` resolves to, as std does: the first
/// success, or the last error. A host name is resolved off the loop (see
/// [`ToSocketAddrs`]).
fn each_addr<A: ToSocketAddrs, T>(
    addr: A,
    mut f: impl FnMut(SocketAddr) -> io::Result<T>,
) -> io::Result<T> {
    let mut last_err = None;
    for addr in addr::sealed::Resolve::resolve(&addr)? {
        match f(addr) {
            Ok(v) => return Ok(v),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve to any addresses",
        )
    }))
}

/// `AsRawFd`, `AsFd` and `IntoRawFd` for a wrapper whose `reg` field is a
/// [`Registered`].
///
/// `FromRawFd` is left out on purpose: building a socket registers it with
/// the reactor, which can fail, and `from_raw_fd` cannot report that. Use
/// `from_std(std_type::from_raw_fd(fd))` instead.
macro_rules! impl_fd_traits {
    ($ty:ty) => {
        impl std::os::fd::AsRawFd for $ty {
            fn as_raw_fd(&self) -> std::os::fd::RawFd {
                std::os::fd::AsRawFd::as_raw_fd(self.reg.get())
            }
        }

        impl std::os::fd::AsFd for $ty {
            fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                std::os::fd::AsFd::as_fd(self.reg.get())
            }
        }

        /// Deregisters the socket and returns its descriptor, still in
        /// non-blocking mode (`into_std` makes it blocking).
        impl std::os::fd::IntoRawFd for $ty {
            fn into_raw_fd(self) -> std::os::fd::RawFd {
                std::os::fd::IntoRawFd::into_raw_fd(self.reg.into_inner())
            }
        }
    };
}
pub(crate) use impl_fd_traits;

/// `Read` and `Write` for a stream wrapper and a shared reference to it,
/// over the `mio` stream's own impls for `&S`. Reads follow the short-read
/// rule of `Registered::read_stream`.
macro_rules! impl_read_write {
    ($ty:ty) => {
        impl std::io::Read for &$ty {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let len = buf.len();
                self.reg
                    .read_stream(len, |mut s| std::io::Read::read(&mut s, buf))
            }

            fn read_vectored(
                &mut self,
                bufs: &mut [std::io::IoSliceMut<'_>],
            ) -> std::io::Result<usize> {
                let len = bufs.iter().map(|b| b.len()).sum();
                self.reg
                    .read_stream(len, |mut s| std::io::Read::read_vectored(&mut s, bufs))
            }
        }

        impl std::io::Write for &$ty {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.reg.io(crate::reactor::Direction::Write, |mut s| {
                    std::io::Write::write(&mut s, buf)
                })
            }

            fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
                self.reg.io(crate::reactor::Direction::Write, |mut s| {
                    std::io::Write::write_vectored(&mut s, bufs)
                })
            }

            /// A no-op: nothing is buffered in user space.
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        impl std::io::Read for $ty {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                std::io::Read::read(&mut &*self, buf)
            }

            fn read_vectored(
                &mut self,
                bufs: &mut [std::io::IoSliceMut<'_>],
            ) -> std::io::Result<usize> {
                std::io::Read::read_vectored(&mut &*self, bufs)
            }
        }

        impl std::io::Write for $ty {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                std::io::Write::write(&mut &*self, buf)
            }

            fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
                std::io::Write::write_vectored(&mut &*self, bufs)
            }

            /// A no-op: nothing is buffered in user space.
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
    };
}
pub(crate) use impl_read_write;
