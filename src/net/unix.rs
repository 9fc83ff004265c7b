//! Unix domain stream sockets: [`UnixListener`], its [`UnixIncoming`]
//! iterator, and [`UnixStream`], with `std::os::unix::net`'s API over
//! `mio`'s non-blocking sockets.

use std::fmt;
use std::io;
use std::net::Shutdown;
use std::os::unix::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{Registered, impl_fd_traits, impl_read_write};
use crate::reactor::Direction;

/// A Unix domain socket server: `std::os::unix::net::UnixListener` whose
/// `accept` waits on greenhack's loop.
///
/// See the [module documentation](super) for how waits work and where this
/// type differs from std (notably: no `set_nonblocking`, and `!Send`).
/// As with std, dropping the listener does not remove its socket file.
///
/// ```
/// use std::io::{Read, Write};
/// use greenhack::net::{UnixListener, UnixStream};
///
/// let dir = std::env::temp_dir().join(format!("greenhack-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("listener.sock");
/// # let _ = std::fs::remove_file(&path);
/// let listener = UnixListener::bind(&path)?;
/// let mut client = UnixStream::connect(&path)?;
/// let (mut server, _) = listener.accept()?;
/// client.write_all(b"hi")?;
/// let mut buf = [0; 2];
/// server.read_exact(&mut buf)?;
/// assert_eq!(&buf, b"hi");
/// std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct UnixListener {
    reg: Registered<mio::net::UnixListener>,
}

impl UnixListener {
    /// Creates a listener bound to the socket file `path` (which must not
    /// exist: `AddrInUse` otherwise, as with std).
    pub fn bind<P: AsRef<Path>>(path: P) -> io::Result<UnixListener> {
        UnixListener::from_mio(mio::net::UnixListener::bind(path)?)
    }

    /// Creates a listener bound to `addr` (a path or, on Linux, an abstract
    /// name).
    pub fn bind_addr(addr: &SocketAddr) -> io::Result<UnixListener> {
        UnixListener::from_mio(mio::net::UnixListener::bind_addr(addr)?)
    }

    fn from_mio(listener: mio::net::UnixListener) -> io::Result<UnixListener> {
        Ok(UnixListener {
            reg: Registered::new(listener)?,
        })
    }

    /// Accepts a new connection, waiting for one on greenhack's loop.
    /// Running out of descriptors is returned to this caller, as for
    /// [`TcpListener::accept`](super::TcpListener::accept).
    pub fn accept(&self) -> io::Result<(UnixStream, SocketAddr)> {
        let (stream, addr) = self.reg.io(Direction::Read, |l| l.accept())?;
        Ok((UnixStream::from_mio(stream)?, addr))
    }

    /// An iterator over incoming connections: `accept` in a loop. It never
    /// returns `None`.
    pub fn incoming(&self) -> UnixIncoming<'_> {
        UnixIncoming { listener: self }
    }

    /// The local address this listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.reg.get().local_addr()
    }

    /// Gets and clears the socket's pending error (`SO_ERROR`).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.reg.get().take_error()
    }

    /// A new handle to the same socket: the descriptor is duplicated and
    /// registered on its own (see the [module documentation](super#clones)).
    pub fn try_clone(&self) -> io::Result<UnixListener> {
        Ok(UnixListener {
            reg: self.reg.try_clone()?,
        })
    }

    /// Wraps a std listener: sets it non-blocking and registers it with this
    /// thread's loop.
    pub fn from_std(listener: std::os::unix::net::UnixListener) -> io::Result<UnixListener> {
        listener.set_nonblocking(true)?;
        UnixListener::from_mio(mio::net::UnixListener::from_std(listener))
    }

    /// Deregisters the listener and returns it as a blocking std listener,
    /// which may be sent to another thread.
    pub fn into_std(self) -> io::Result<std::os::unix::net::UnixListener> {
        let l = std::os::unix::net::UnixListener::from(self.reg.into_inner());
        l.set_nonblocking(false)?;
        Ok(l)
    }
}

impl_fd_traits!(UnixListener);

impl fmt::Debug for UnixListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reg.fmt(f)
    }
}

/// The iterator of [`UnixListener::incoming`].
#[derive(Debug)]
pub struct UnixIncoming<'a> {
    listener: &'a UnixListener,
}

impl Iterator for UnixIncoming<'_> {
    type Item = io::Result<UnixStream>;

    fn next(&mut self) -> Option<io::Result<UnixStream>> {
        Some(self.listener.accept().map(|(s, _)| s))
    }
}

/// A Unix domain stream connection: `std::os::unix::net::UnixStream` whose
/// waits run on greenhack's loop. `Read` and `Write` are implemented for
/// `UnixStream` and `&UnixStream`.
///
/// See the [module documentation](super) for how waits work and where this
/// type differs from std (notably: no `set_nonblocking`, and `!Send`).
///
/// ```
/// use std::io::{Read, Write};
/// use greenhack::net::UnixStream;
///
/// let (mut a, mut b) = UnixStream::pair()?;
/// a.write_all(b"over")?;
/// let mut buf = [0; 4];
/// b.read_exact(&mut buf)?;
/// assert_eq!(&buf, b"over");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct UnixStream {
    reg: Registered<mio::net::UnixStream>,
}

impl UnixStream {
    /// Connects to the socket file `path`.
    ///
    /// A Unix connect either completes or fails at once, except when the
    /// listener's backlog is full: std's blocking connect then waits for
    /// room, and the kernel offers no readiness event for that, so this
    /// call retries with a short back-off (1 ms doubling to 50 ms) on
    /// greenhack's loop.
    pub fn connect<P: AsRef<Path>>(path: P) -> io::Result<UnixStream> {
        let path = path.as_ref();
        UnixStream::connect_with(|| mio::net::UnixStream::connect(path))
    }

    /// Connects to `addr` (a path or, on Linux, an abstract name), as
    /// [`connect`](Self::connect) does.
    pub fn connect_addr(addr: &SocketAddr) -> io::Result<UnixStream> {
        UnixStream::connect_with(|| mio::net::UnixStream::connect_addr(addr))
    }

    fn connect_with(
        mut connect: impl FnMut() -> io::Result<mio::net::UnixStream>,
    ) -> io::Result<UnixStream> {
        let mut delay = Duration::from_millis(1);
        loop {
            match connect() {
                Ok(s) => return UnixStream::from_mio(s),
                // EAGAIN: the listener's backlog is full.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let until = Instant::now() + delay;
                    crate::pair::wait_io(
                        crate::reactor::Sleep::new(until),
                        crate::wait::Wait::Sleep(until),
                    )?;
                    delay = (delay * 2).min(Duration::from_millis(50));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// A pair of connected sockets.
    pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
        let (a, b) = mio::net::UnixStream::pair()?;
        Ok((UnixStream::from_mio(a)?, UnixStream::from_mio(b)?))
    }

    fn from_mio(stream: mio::net::UnixStream) -> io::Result<UnixStream> {
        Ok(UnixStream {
            reg: Registered::new(stream)?,
        })
    }

    /// The local address of this end.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.reg.get().local_addr()
    }

    /// The address of the remote end.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.reg.get().peer_addr()
    }

    /// Shuts down the read half, the write half, or both.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.reg.get().shutdown(how)
    }

    /// Sets the read timeout: a read that waits longer fails with
    /// `WouldBlock`, as std's does on Linux. `None` waits forever; a zero
    /// duration is `InvalidInput`. Stored in the socket (`SO_RCVTIMEO`).
    pub fn set_read_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        self.reg.set_timeout(Direction::Read, dur)
    }

    /// The read timeout.
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        self.reg.timeout(Direction::Read)
    }

    /// Waits until the stream is readable; may return when nothing can be
    /// read yet. See [`TcpStream::readable`](super::TcpStream::readable).
    pub fn readable(&self) -> io::Result<()> {
        self.reg.readable()
    }

    /// Reads what is there without waiting: `read`, but `WouldBlock`
    /// instead of a wait. See [`TcpStream::try_read`](super::TcpStream::try_read).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len();
        self.reg
            .try_read_stream(len, |mut s| std::io::Read::read(&mut s, buf))
    }

    /// Sets the write timeout (`SO_SNDTIMEO`), as for reads.
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

    /// A new handle to the same connection: the descriptor is duplicated and
    /// registered on its own (see the [module documentation](super#clones)).
    pub fn try_clone(&self) -> io::Result<UnixStream> {
        Ok(UnixStream {
            reg: self.reg.try_clone()?,
        })
    }

    /// Wraps a connected std stream: sets it non-blocking and registers it
    /// with this thread's loop.
    pub fn from_std(stream: std::os::unix::net::UnixStream) -> io::Result<UnixStream> {
        stream.set_nonblocking(true)?;
        UnixStream::from_mio(mio::net::UnixStream::from_std(stream))
    }

    /// Deregisters the stream and returns it as a blocking std stream,
    /// which may be sent to another thread.
    pub fn into_std(self) -> io::Result<std::os::unix::net::UnixStream> {
        let s = std::os::unix::net::UnixStream::from(self.reg.into_inner());
        s.set_nonblocking(false)?;
        Ok(s)
    }
}

impl_fd_traits!(UnixStream);
impl_read_write!(UnixStream);
#[cfg(any(feature = "tokio", feature = "futures-io"))]
super::async_io::impl_async_io!(UnixStream);

impl fmt::Debug for UnixStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reg.fmt(f)
    }
}
