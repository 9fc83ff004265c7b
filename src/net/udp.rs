//! UDP: [`UdpSocket`], with `std::net`'s API over `mio`'s non-blocking
//! socket.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::{Registered, ToSocketAddrs, each_addr, impl_fd_traits};
use crate::reactor::Direction;

/// A UDP socket: `std::net::UdpSocket` whose waits (receiving, and sending
/// when the send buffer is full) run on greenhack's loop.
///
/// See the [module documentation](super) for how waits work and where this
/// type differs from std (notably: no `set_nonblocking`, and `!Send`).
///
/// ```
/// use greenhack::net::UdpSocket;
///
/// let a = UdpSocket::bind("127.0.0.1:0")?;
/// let b = UdpSocket::bind("127.0.0.1:0")?;
/// a.send_to(b"datagram", b.local_addr()?)?;
/// let mut buf = [0; 16];
/// let (n, from) = b.recv_from(&mut buf)?;
/// assert_eq!(&buf[..n], b"datagram");
/// assert_eq!(from, a.local_addr()?);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct UdpSocket {
    reg: Registered<mio::net::UdpSocket>,
}

impl UdpSocket {
    /// Creates a socket bound to `addr`; each resolved address is tried in
    /// turn, as std does.
    pub fn bind<A: ToSocketAddrs>(addr: A) -> io::Result<UdpSocket> {
        UdpSocket::from_mio(each_addr(addr, mio::net::UdpSocket::bind)?)
    }

    fn from_mio(socket: mio::net::UdpSocket) -> io::Result<UdpSocket> {
        Ok(UdpSocket {
            reg: Registered::new(socket)?,
        })
    }

    /// Connects the socket to `addr`, the only peer `send` and `recv` then
    /// talk to; each resolved address is tried in turn, as std does.
    pub fn connect<A: ToSocketAddrs>(&self, addr: A) -> io::Result<()> {
        each_addr(addr, |a| self.reg.get().connect(a))
    }

    /// Sends a datagram to the connected peer.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.reg.io(Direction::Write, |s| s.send(buf))
    }

    /// Receives a datagram from the connected peer, waiting for one.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.reg.io(Direction::Read, |s| s.recv(buf))
    }

    /// Sends a datagram to `addr`: its first resolved address, as std does
    /// (`InvalidInput` if it resolves to none).
    pub fn send_to<A: ToSocketAddrs>(&self, buf: &[u8], addr: A) -> io::Result<usize> {
        let Some(target) = addr.resolve()?.next() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no addresses to send data to",
            ));
        };
        self.reg.io(Direction::Write, |s| s.send_to(buf, target))
    }

    /// Receives a datagram and its sender's address, waiting for one.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.reg.io(Direction::Read, |s| s.recv_from(buf))
    }

    /// Like [`recv`](Self::recv), leaving the datagram queued.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.reg.io(Direction::Read, |s| s.peek(buf))
    }

    /// Like [`recv_from`](Self::recv_from), leaving the datagram queued.
    pub fn peek_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.reg.io(Direction::Read, |s| s.peek_from(buf))
    }

    /// The local address this socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.reg.get().local_addr()
    }

    /// The address of the connected peer (`NotConnected` if none).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.reg.get().peer_addr()
    }

    /// Sets the read timeout: a receive that waits longer fails with
    /// `WouldBlock`, as std's does on Linux. `None` waits forever; a zero
    /// duration is `InvalidInput`. Stored in the socket (`SO_RCVTIMEO`).
    pub fn set_read_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        self.reg.set_timeout(Direction::Read, dur)
    }

    /// The read timeout.
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        self.reg.timeout(Direction::Read)
    }

    /// Sets the write timeout (`SO_SNDTIMEO`), as for reads.
    pub fn set_write_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        self.reg.set_timeout(Direction::Write, dur)
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        self.reg.timeout(Direction::Write)
    }

    /// Sets `SO_BROADCAST`.
    pub fn set_broadcast(&self, on: bool) -> io::Result<()> {
        self.reg.get().set_broadcast(on)
    }

    /// Gets `SO_BROADCAST`.
    pub fn broadcast(&self) -> io::Result<bool> {
        self.reg.get().broadcast()
    }

    /// Sets `IP_TTL`.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.reg.get().set_ttl(ttl)
    }

    /// Gets `IP_TTL`.
    pub fn ttl(&self) -> io::Result<u32> {
        self.reg.get().ttl()
    }

    /// Sets `IP_MULTICAST_LOOP`.
    pub fn set_multicast_loop_v4(&self, on: bool) -> io::Result<()> {
        self.reg.get().set_multicast_loop_v4(on)
    }

    /// Gets `IP_MULTICAST_LOOP`.
    pub fn multicast_loop_v4(&self) -> io::Result<bool> {
        self.reg.get().multicast_loop_v4()
    }

    /// Sets `IP_MULTICAST_TTL`.
    pub fn set_multicast_ttl_v4(&self, ttl: u32) -> io::Result<()> {
        self.reg.get().set_multicast_ttl_v4(ttl)
    }

    /// Gets `IP_MULTICAST_TTL`.
    pub fn multicast_ttl_v4(&self) -> io::Result<u32> {
        self.reg.get().multicast_ttl_v4()
    }

    /// Sets `IPV6_MULTICAST_LOOP`.
    pub fn set_multicast_loop_v6(&self, on: bool) -> io::Result<()> {
        self.reg.get().set_multicast_loop_v6(on)
    }

    /// Gets `IPV6_MULTICAST_LOOP`.
    pub fn multicast_loop_v6(&self) -> io::Result<bool> {
        self.reg.get().multicast_loop_v6()
    }

    /// Joins an IPv4 multicast group.
    pub fn join_multicast_v4(&self, multiaddr: &Ipv4Addr, interface: &Ipv4Addr) -> io::Result<()> {
        self.reg.get().join_multicast_v4(multiaddr, interface)
    }

    /// Joins an IPv6 multicast group.
    pub fn join_multicast_v6(&self, multiaddr: &Ipv6Addr, interface: u32) -> io::Result<()> {
        self.reg.get().join_multicast_v6(multiaddr, interface)
    }

    /// Leaves an IPv4 multicast group.
    pub fn leave_multicast_v4(&self, multiaddr: &Ipv4Addr, interface: &Ipv4Addr) -> io::Result<()> {
        self.reg.get().leave_multicast_v4(multiaddr, interface)
    }

    /// Leaves an IPv6 multicast group.
    pub fn leave_multicast_v6(&self, multiaddr: &Ipv6Addr, interface: u32) -> io::Result<()> {
        self.reg.get().leave_multicast_v6(multiaddr, interface)
    }

    /// Gets and clears the socket's pending error (`SO_ERROR`), such as an
    /// ICMP "port unreachable" reported for a connected socket.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.reg.get().take_error()
    }

    /// A new handle to the same socket: the descriptor is duplicated and
    /// registered on its own (see the [module documentation](super#clones)).
    pub fn try_clone(&self) -> io::Result<UdpSocket> {
        Ok(UdpSocket {
            reg: self.reg.try_clone()?,
        })
    }

    /// Wraps a std socket: sets it non-blocking and registers it with this
    /// thread's loop.
    pub fn from_std(socket: std::net::UdpSocket) -> io::Result<UdpSocket> {
        socket.set_nonblocking(true)?;
        UdpSocket::from_mio(mio::net::UdpSocket::from_std(socket))
    }

    /// Deregisters the socket and returns it as a blocking std socket,
    /// which may be sent to another thread.
    pub fn into_std(self) -> io::Result<std::net::UdpSocket> {
        let s = std::net::UdpSocket::from(self.reg.into_inner());
        s.set_nonblocking(false)?;
        Ok(s)
    }
}

impl_fd_traits!(UdpSocket);

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reg.fmt(f)
    }
}
