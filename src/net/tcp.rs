//! TCP: [`TcpListener`], its [`Incoming`] iterator, and [`TcpStream`], with
//! `std::net`'s API over `mio`'s non-blocking sockets.

use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use super::{Registered, ToSocketAddrs, each_addr, impl_fd_traits, impl_read_write};
use crate::reactor::Direction;

/// A TCP socket server, listening for connections: `std::net::TcpListener`
/// whose `accept` waits on greenhack's loop.
///
/// See the [module documentation](super) for how waits work and where this
/// type differs from std (notably: no `set_nonblocking`, and `!Send`).
///
/// ```
/// use std::io::{Read, Write};
/// use greenhack::net::{TcpListener, TcpStream};
///
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let addr = listener.local_addr()?;
/// let client = greenhack::spawn(move || -> std::io::Result<Vec<u8>> {
///     let mut s = TcpStream::connect(addr)?;
///     s.write_all(b"ping")?;
///     s.shutdown(std::net::Shutdown::Write)?;
///     let mut reply = Vec::new();
///     s.read_to_end(&mut reply)?;
///     Ok(reply)
/// });
/// let (mut conn, peer) = listener.accept()?; // runs the client meanwhile
/// assert_eq!(peer.ip(), addr.ip());
/// let mut req = Vec::new();
/// conn.read_to_end(&mut req)?;
/// conn.write_all(b"pong")?;
/// drop(conn);
/// assert_eq!(req, b"ping");
/// assert_eq!(client.join().unwrap()?, b"pong");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct TcpListener {
    reg: Registered<mio::net::TcpListener>,
}

impl TcpListener {
    /// Creates a listener bound to `addr`, as `std::net::TcpListener::bind`
    /// does: each resolved address is tried in turn, the first to bind is
    /// used, and if none does the last error is returned. `SO_REUSEADDR` is
    /// set and the backlog is 128, as with std.
    pub fn bind<A: ToSocketAddrs>(addr: A) -> io::Result<TcpListener> {
        let listener = each_addr(addr, mio::net::TcpListener::bind)?;
        Ok(TcpListener {
            reg: Registered::new(listener)?,
        })
    }

    /// Accepts a new connection, waiting for one on greenhack's loop.
    ///
    /// Errors are std's. Running out of descriptors (`EMFILE`, `ENFILE`) is
    /// returned to this caller; the pending connection stays queued and the
    /// next `accept` retries it at once, so the loop and every other socket
    /// keep working.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, addr) = self.reg.io(Direction::Read, |l| l.accept())?;
        Ok((TcpStream::from_mio(stream)?, addr))
    }

    /// An iterator over incoming connections: `accept` in a loop. It never
    /// returns `None`.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    /// The local address this listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.reg.get().local_addr()
    }

    /// Sets `IP_TTL`.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.reg.get().set_ttl(ttl)
    }

    /// Gets `IP_TTL`.
    pub fn ttl(&self) -> io::Result<u32> {
        self.reg.get().ttl()
    }

    /// Gets and clears the socket's pending error (`SO_ERROR`).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.reg.get().take_error()
    }

    /// A new handle to the same socket: the descriptor is duplicated and
    /// registered on its own (see the [module documentation](super#clones)).
    pub fn try_clone(&self) -> io::Result<TcpListener> {
        let l = mio::net::TcpListener::from(self.reg.dup()?);
        Ok(TcpListener {
            reg: Registered::new(l)?,
        })
    }

    /// Wraps a std listener: sets it non-blocking and registers it with this
    /// thread's loop.
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<TcpListener> {
        listener.set_nonblocking(true)?;
        Ok(TcpListener {
            reg: Registered::new(mio::net::TcpListener::from_std(listener))?,
        })
    }

    /// Deregisters the listener and returns it as a blocking std listener,
    /// which may be sent to another thread.
    pub fn into_std(self) -> io::Result<std::net::TcpListener> {
        let l = std::net::TcpListener::from(self.reg.into_inner());
        l.set_nonblocking(false)?;
        Ok(l)
    }
}

impl_fd_traits!(TcpListener);

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reg.fmt(f)
    }
}

/// The iterator of [`TcpListener::incoming`].
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a TcpListener,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<TcpStream>;

    fn next(&mut self) -> Option<io::Result<TcpStream>> {
        Some(self.listener.accept().map(|(s, _)| s))
    }
}

/// A TCP connection: `std::net::TcpStream` whose waits (connect, read,
/// write) run on greenhack's loop. `Read` and `Write` are implemented for
/// `TcpStream` and `&TcpStream`.
///
/// See the [module documentation](super) for how waits work and where this
/// type differs from std (notably: no `set_nonblocking`, and `!Send`).
///
/// ```
/// use std::io::{Read, Write};
/// use greenhack::net::{TcpListener, TcpStream};
///
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let mut client = TcpStream::connect(listener.local_addr()?)?;
/// let (mut server, _) = listener.accept()?;
/// client.set_nodelay(true)?;
/// client.write_all(b"abc")?;
/// let mut buf = [0; 3];
/// server.read_exact(&mut buf)?;
/// assert_eq!(&buf, b"abc");
/// assert_eq!(server.peer_addr()?, client.local_addr()?);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct TcpStream {
    reg: Registered<mio::net::TcpStream>,
}

impl TcpStream {
    /// Opens a connection to `addr`, as `std::net::TcpStream::connect`
    /// does: each resolved address is tried in turn, and if none connects
    /// the last error is returned. The connect is non-blocking underneath:
    /// the wait for the handshake runs on greenhack's loop, and a host name
    /// is resolved off the loop (see [`ToSocketAddrs`]).
    pub fn connect<A: ToSocketAddrs>(addr: A) -> io::Result<TcpStream> {
        each_addr(addr, |a| {
            let stream = TcpStream::from_mio(mio::net::TcpStream::connect(a)?)?;
            stream.wait_connected(None)?;
            Ok(stream)
        })
    }

    /// Opens a connection to `addr`, giving up after `timeout` with
    /// `TimedOut`, as `std::net::TcpStream::connect_timeout` does; a zero
    /// `timeout` is refused with `InvalidInput` (after the connect was
    /// started, in std's order).
    ///
    /// ```
    /// use std::time::Duration;
    /// use greenhack::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let addr = listener.local_addr()?;
    /// TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    /// let zero = TcpStream::connect_timeout(&addr, Duration::ZERO).unwrap_err();
    /// assert_eq!(zero.kind(), std::io::ErrorKind::InvalidInput);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn connect_timeout(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let stream = mio::net::TcpStream::connect(*addr)?;
        crate::time::check_timeout(Some(timeout))?;
        let deadline = Instant::now().checked_add(timeout);
        let stream = TcpStream::from_mio(stream)?;
        match stream.wait_connected(deadline) {
            Ok(()) => Ok(stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection timed out",
            )),
            Err(e) => Err(e),
        }
    }

    /// Waits until a non-blocking connect has finished, following mio's
    /// recipe: once writable, a pending `SO_ERROR` is the connect's error;
    /// otherwise `peer_addr` succeeding means connected, and `NotConnected`
    /// means the wake-up was early and we wait again. Past `deadline`, the
    /// result is `WouldBlock`.
    pub(super) fn wait_connected(&self, deadline: Option<Instant>) -> io::Result<()> {
        self.reg.io_until(Direction::Write, deadline, |s| {
            if let Some(e) = s.take_error()? {
                return Err(e);
            }
            match s.peer_addr() {
                Ok(_) => Ok(()),
                Err(e)
                    if e.kind() == io::ErrorKind::NotConnected
                        || e.raw_os_error() == Some(libc::EINPROGRESS) =>
                {
                    Err(io::ErrorKind::WouldBlock.into())
                }
                Err(e) => Err(e),
            }
        })
    }

    /// Registers a non-blocking `mio` stream.
    pub(super) fn from_mio(stream: mio::net::TcpStream) -> io::Result<TcpStream> {
        Ok(TcpStream {
            reg: Registered::new(stream)?,
        })
    }

    /// The address of the remote peer.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.reg.get().peer_addr()
    }

    /// The local address of this end.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.reg.get().local_addr()
    }

    /// Shuts down the read half, the write half, or both.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.reg.get().shutdown(how)
    }

    /// Sets `TCP_NODELAY` (disables Nagle's algorithm when `true`).
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.reg.get().set_nodelay(nodelay)
    }

    /// Gets `TCP_NODELAY`.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.reg.get().nodelay()
    }

    /// Sets `IP_TTL`.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.reg.get().set_ttl(ttl)
    }

    /// Gets `IP_TTL`.
    pub fn ttl(&self) -> io::Result<u32> {
        self.reg.get().ttl()
    }

    /// Sets the read timeout: a read that waits longer fails with
    /// `WouldBlock`, as std's does on Linux. `None` waits forever; a zero
    /// duration is `InvalidInput`. Stored in the socket (`SO_RCVTIMEO`), so
    /// clones share it.
    ///
    /// ```
    /// use std::io::Read;
    /// use std::time::Duration;
    /// use greenhack::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let mut client = TcpStream::connect(listener.local_addr()?)?;
    /// client.set_read_timeout(Some(Duration::from_millis(10)))?;
    /// let err = client.read(&mut [0; 8]).unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_read_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        self.reg.set_timeout(Direction::Read, dur)
    }

    /// The read timeout (as the kernel rounded it, like std).
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        self.reg.timeout(Direction::Read)
    }

    /// Sets the write timeout, as [`set_read_timeout`](Self::set_read_timeout)
    /// does for reads (`SO_SNDTIMEO`).
    pub fn set_write_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        self.reg.set_timeout(Direction::Write, dur)
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        self.reg.timeout(Direction::Write)
    }

    /// Gets and clears the socket's pending error (`SO_ERROR`).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.reg.get().take_error()
    }

    /// Waits until the stream is readable: until a read would likely return
    /// data, EOF or an error rather than block. Like tokio's
    /// `TcpStream::readable`, it may return when nothing can be read yet;
    /// follow it with [`try_read`](Self::try_read), which then says
    /// `WouldBlock`, and wait again.
    ///
    /// With `try_read` it lets a handler wait in a frame that does not hold
    /// its read buffer, which matters for a [sliced](crate::Builder::sliced)
    /// greenlet: what stays on the heap while it waits is only its live
    /// frames.
    ///
    /// ```
    /// use std::io::{ErrorKind, Write};
    /// use greenhack::net::{TcpListener, TcpStream};
    ///
    /// # greenhack::run(|| -> std::io::Result<()> {
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let mut client = TcpStream::connect(listener.local_addr()?)?;
    /// let (server, _) = listener.accept()?;
    /// client.write_all(b"ping")?;
    /// let n = loop {
    ///     server.readable()?; // no buffer in this frame while it waits
    ///     let mut buf = [0u8; 64];
    ///     match server.try_read(&mut buf) {
    ///         Ok(n) => break n,
    ///         Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
    ///         Err(e) => return Err(e),
    ///     }
    /// };
    /// assert_eq!(n, 4);
    /// # Ok(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// As `read`'s wait: `Unsupported` inside an `as_async` polled by an
    /// executor that cannot run greenhack's loop.
    pub fn readable(&self) -> io::Result<()> {
        self.reg.readable()
    }

    /// Reads what is there without waiting: `read`, but `WouldBlock`
    /// instead of a wait when nothing is (see [`readable`](Self::readable)).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len();
        self.reg
            .try_read_stream(len, |mut s| std::io::Read::read(&mut s, buf))
    }

    /// Reads without consuming: waits until data (or EOF) is available,
    /// like `read`, and honours the read timeout.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.reg.io(Direction::Read, |s| s.peek(buf))
    }

    /// A new handle to the same connection: the descriptor is duplicated and
    /// registered on its own (see the [module documentation](super#clones)).
    /// One clone may read while another writes, from two greenlets.
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        Ok(TcpStream {
            reg: self.reg.try_clone()?,
        })
    }

    /// Wraps a connected std stream: sets it non-blocking and registers it
    /// with this thread's loop.
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        stream.set_nonblocking(true)?;
        TcpStream::from_mio(mio::net::TcpStream::from_std(stream))
    }

    /// Deregisters the stream and returns it as a blocking std stream (its
    /// timeouts and other options kept), which may be sent to another
    /// thread.
    pub fn into_std(self) -> io::Result<std::net::TcpStream> {
        let s = std::net::TcpStream::from(self.reg.into_inner());
        s.set_nonblocking(false)?;
        Ok(s)
    }
}

impl_fd_traits!(TcpStream);
impl_read_write!(TcpStream);
#[cfg(any(feature = "tokio", feature = "futures-io"))]
super::async_io::impl_async_io!(TcpStream);

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reg.fmt(f)
    }
}
