//! [`TcpSocket`]: a TCP socket not yet listening or connected, for the
//! options that must be set before `listen` or `connect` — the backlog,
//! `SO_REUSEADDR`, `SO_REUSEPORT`, `IPV6_V6ONLY`, buffer sizes — in the
//! spirit of tokio's `TcpSocket`, made with `libc` directly.
//!
//! `listen` and `connect` turn it into greenhack's [`TcpListener`] and
//! [`TcpStream`], registered with the calling thread's loop.

use std::fmt;
use std::io;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use super::{TcpListener, TcpStream};

/// A TCP socket that has not yet been turned into a listener or a
/// connection: set options, [`bind`](Self::bind), then
/// [`listen`](Self::listen) or [`connect`](Self::connect).
///
/// The socket is created blocking and close-on-exec; `listen` and `connect`
/// make it non-blocking and register it with the calling thread's loop, as
/// [`TcpListener::from_std`] does. Setting options and binding never wait.
/// Every error is the `io::Error` of the system call that failed
/// (`setsockopt`, `bind`, `listen`, `connect`), as the kernel reports it.
///
/// # Several loops on one port
///
/// `SO_REUSEPORT` lets one listener per loop bind the same address; the
/// kernel spreads incoming connections over them by a hash of the
/// connection's addresses. Every socket of the group must set it before
/// `bind` (and belong to the same user).
///
/// ```
/// use greenhack::net::{TcpSocket, TcpStream};
///
/// let first = TcpSocket::new_v4()?;
/// first.set_reuseport(true)?;
/// first.bind("127.0.0.1:0".parse().unwrap())?;
/// let addr = first.local_addr()?;
/// let first = first.listen(1024)?;
///
/// let second = TcpSocket::new_v4()?;
/// second.set_reuseport(true)?;
/// second.bind(addr)?; // the same port: allowed by SO_REUSEPORT
/// let second = second.listen(1024)?;
///
/// let _client = TcpStream::connect(addr)?;
/// # drop((first, second));
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Backlog
///
/// `listen(backlog)` sets how many connections the kernel completes and
/// queues before the program accepts them (std and mio use 128). When the
/// queue is full, Linux drops further handshakes and the clients retransmit
/// after a second, so a burst of simultaneous connects larger than the
/// backlog stalls for that long. The kernel caps the value at
/// `net.core.somaxconn` (4096 on recent kernels).
///
/// ```
/// use std::io::{Read, Write};
/// use greenhack::net::TcpSocket;
///
/// let socket = TcpSocket::new_v4()?;
/// socket.set_reuseaddr(true)?;
/// socket.bind("127.0.0.1:0".parse().unwrap())?;
/// let listener = socket.listen(1024)?;
///
/// let client = TcpSocket::new_v4()?;
/// client.set_nodelay(true)?;
/// let mut client = client.connect(listener.local_addr()?)?; // waits on the loop
/// let (mut server, _) = listener.accept()?;
/// client.write_all(b"hi")?;
/// let mut buf = [0; 2];
/// server.read_exact(&mut buf)?;
/// assert_eq!(&buf, b"hi");
/// assert!(client.nodelay()?);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct TcpSocket {
    fd: OwnedFd,
}

impl TcpSocket {
    /// A new IPv4 TCP socket (`socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC)`).
    pub fn new_v4() -> io::Result<TcpSocket> {
        TcpSocket::new(libc::AF_INET)
    }

    /// A new IPv6 TCP socket (`socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC)`).
    /// Whether it also accepts IPv4 connections follows the system default
    /// (`net.ipv6.bindv6only`) until [`set_only_v6`](Self::set_only_v6).
    pub fn new_v6() -> io::Result<TcpSocket> {
        TcpSocket::new(libc::AF_INET6)
    }

    /// A new socket of the family of `addr`: [`new_v4`](Self::new_v4) or
    /// [`new_v6`](Self::new_v6).
    pub fn new_for_addr(addr: SocketAddr) -> io::Result<TcpSocket> {
        match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
    }

    fn new(family: libc::c_int) -> io::Result<TcpSocket> {
        // SAFETY: `socket` takes no pointers; a non-negative result is a
        // new descriptor that nothing else owns.
        let fd = cvt(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
        Ok(TcpSocket {
            // SAFETY: `fd` was just returned by `socket`, open and unowned.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Sets `SO_REUSEADDR`: bind an address whose earlier connections are
    /// still in `TIME_WAIT` (a restarted server). std and mio set it on
    /// every listener they bind.
    pub fn set_reuseaddr(&self, reuseaddr: bool) -> io::Result<()> {
        self.set_opt(
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            reuseaddr as libc::c_int,
        )
    }

    /// Gets `SO_REUSEADDR`.
    pub fn reuseaddr(&self) -> io::Result<bool> {
        Ok(self.get_opt(libc::SOL_SOCKET, libc::SO_REUSEADDR)? != 0)
    }

    /// Sets `SO_REUSEPORT`: several sockets (of the same user) may bind the
    /// same address, and the kernel spreads incoming connections over those
    /// that listen. See [the type's documentation](Self#several-loops-on-one-port).
    pub fn set_reuseport(&self, reuseport: bool) -> io::Result<()> {
        self.set_opt(
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            reuseport as libc::c_int,
        )
    }

    /// Gets `SO_REUSEPORT`.
    pub fn reuseport(&self) -> io::Result<bool> {
        Ok(self.get_opt(libc::SOL_SOCKET, libc::SO_REUSEPORT)? != 0)
    }

    /// Sets `IPV6_V6ONLY` on an IPv6 socket: `true` refuses IPv4 peers
    /// (mapped addresses), so an IPv4 socket can bind the same port. An IPv4
    /// socket reports the kernel's error (`ENOPROTOOPT`).
    pub fn set_only_v6(&self, only_v6: bool) -> io::Result<()> {
        self.set_opt(
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            only_v6 as libc::c_int,
        )
    }

    /// Gets `IPV6_V6ONLY`.
    pub fn only_v6(&self) -> io::Result<bool> {
        Ok(self.get_opt(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)? != 0)
    }

    /// Sets `SO_SNDBUF`. Linux doubles the value (for its bookkeeping) and
    /// clamps it to `net.core.wmem_max`; [`send_buffer_size`](Self::send_buffer_size)
    /// reports what it kept.
    pub fn set_send_buffer_size(&self, size: u32) -> io::Result<()> {
        self.set_opt(libc::SOL_SOCKET, libc::SO_SNDBUF, clamp(size))
    }

    /// Gets `SO_SNDBUF`.
    pub fn send_buffer_size(&self) -> io::Result<u32> {
        Ok(self.get_opt(libc::SOL_SOCKET, libc::SO_SNDBUF)? as u32)
    }

    /// Sets `SO_RCVBUF`. Linux doubles the value and clamps it to
    /// `net.core.rmem_max`, as for [`set_send_buffer_size`](Self::set_send_buffer_size).
    /// Set on a listener, it is inherited by the connections it accepts.
    pub fn set_recv_buffer_size(&self, size: u32) -> io::Result<()> {
        self.set_opt(libc::SOL_SOCKET, libc::SO_RCVBUF, clamp(size))
    }

    /// Gets `SO_RCVBUF`.
    pub fn recv_buffer_size(&self) -> io::Result<u32> {
        Ok(self.get_opt(libc::SOL_SOCKET, libc::SO_RCVBUF)? as u32)
    }

    /// Sets `TCP_NODELAY` (no Nagle delay on small writes). Set on a
    /// listener, Linux passes it on to the connections it accepts.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.set_opt(libc::IPPROTO_TCP, libc::TCP_NODELAY, nodelay as libc::c_int)
    }

    /// Gets `TCP_NODELAY`.
    pub fn nodelay(&self) -> io::Result<bool> {
        Ok(self.get_opt(libc::IPPROTO_TCP, libc::TCP_NODELAY)? != 0)
    }

    /// Binds the socket to `addr`. Port 0 asks the kernel for a free port;
    /// [`local_addr`](Self::local_addr) tells which.
    pub fn bind(&self, addr: SocketAddr) -> io::Result<()> {
        let (storage, len) = sockaddr(&addr);
        // SAFETY: `storage` holds a valid sockaddr of `len` bytes for the
        // duration of the call.
        cvt(unsafe { libc::bind(self.fd.as_raw_fd(), (&raw const storage).cast(), len) })?;
        Ok(())
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        // std parses `getsockname` for us; the std value borrows the
        // descriptor and is never dropped, so it does not close it.
        // SAFETY: the descriptor is open (we own it) for the std value's
        // whole life, and `ManuallyDrop` keeps that value from closing it.
        let std =
            ManuallyDrop::new(unsafe { std::net::TcpListener::from_raw_fd(self.as_raw_fd()) });
        std.local_addr()
    }

    /// Gets and clears the socket's pending error (`SO_ERROR`).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self.get_opt(libc::SOL_SOCKET, libc::SO_ERROR)? {
            0 => Ok(None),
            e => Ok(Some(io::Error::from_raw_os_error(e))),
        }
    }

    /// Starts listening with room for `backlog` connections completed but
    /// not yet accepted (see [Backlog](Self#backlog); values above
    /// `i32::MAX` are passed as `i32::MAX`, which the kernel caps at
    /// `net.core.somaxconn`), and returns greenhack's listener, registered
    /// with this thread's loop. Binds to an ephemeral port first if the
    /// socket is unbound, as `listen(2)` does.
    pub fn listen(self, backlog: u32) -> io::Result<TcpListener> {
        let backlog = libc::c_int::try_from(backlog).unwrap_or(libc::c_int::MAX);
        // SAFETY: `listen` takes no pointers; the descriptor is ours.
        cvt(unsafe { libc::listen(self.fd.as_raw_fd(), backlog) })?;
        TcpListener::from_std(std::net::TcpListener::from(self.fd))
    }

    /// Connects to `addr` and returns greenhack's stream, registered with
    /// this thread's loop. Waits for the handshake as
    /// [`TcpStream::connect`] does (on the loop: inside a greenlet only the
    /// greenlet waits). A refused connection is `ConnectionRefused`, as
    /// with std.
    pub fn connect(self, addr: SocketAddr) -> io::Result<TcpStream> {
        let std = std::net::TcpStream::from(self.fd);
        std.set_nonblocking(true)?;
        let (storage, len) = sockaddr(&addr);
        // SAFETY: `storage` holds a valid sockaddr of `len` bytes for the
        // duration of the call.
        let r = unsafe { libc::connect(std.as_raw_fd(), (&raw const storage).cast(), len) };
        if r == -1 {
            let e = io::Error::last_os_error();
            // Non-blocking: the handshake goes on; wait_connected waits.
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        let stream = TcpStream::from_mio(mio::net::TcpStream::from_std(std))?;
        stream.wait_connected(None)?;
        Ok(stream)
    }

    fn set_opt(&self, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
        // SAFETY: `value` is a valid c_int for the call's duration and the
        // length passed is its size.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
        Ok(())
    }

    fn get_opt(&self, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` is writable for `len` bytes and `len` is a valid
        // in/out length, both for the call's duration.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&raw mut value).cast(),
                &raw mut len,
            )
        })?;
        Ok(value)
    }
}

/// A buffer size as the `c_int` `setsockopt` takes: above `i32::MAX`,
/// `i32::MAX` (the kernel clamps it to its maximum anyway).
fn clamp(size: u32) -> libc::c_int {
    libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX)
}

/// `-1` as the last OS error, anything else as is.
fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `addr` as the kernel takes it: a `sockaddr_in` or `sockaddr_in6` in a
/// `sockaddr_storage`, and its length.
fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid `sockaddr_storage` (plain integers).
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `sockaddr_storage` is larger than and aligned for
            // every sockaddr type, `sockaddr_in` included.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for `sockaddr_in6`.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

impl AsRawFd for TcpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for TcpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl IntoRawFd for TcpSocket {
    fn into_raw_fd(self) -> RawFd {
        self.fd.into_raw_fd()
    }
}

/// Unlike the connected types, a `TcpSocket` is not registered with any
/// loop, so it can be built from any TCP socket descriptor.
impl FromRawFd for TcpSocket {
    /// # Safety
    ///
    /// `fd` must be an open TCP socket that the caller owns and gives up.
    unsafe fn from_raw_fd(fd: RawFd) -> TcpSocket {
        TcpSocket {
            // SAFETY: the caller gives us ownership of an open descriptor.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        }
    }
}

impl From<OwnedFd> for TcpSocket {
    fn from(fd: OwnedFd) -> TcpSocket {
        TcpSocket { fd }
    }
}

impl fmt::Debug for TcpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpSocket")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}
