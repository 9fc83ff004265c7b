//! Addresses to connect or bind to: greenhack's [`ToSocketAddrs`], which
//! resolves host names on the [`unblock`](crate::unblock) pool so the loop
//! never waits for the system resolver.
//!
//! tokio's `net::ToSocketAddrs` is the model: a sealed trait implemented for
//! exactly the types std implements `std::net::ToSocketAddrs` for, so code
//! that passes a `&str`, a `(host, port)` pair or a `SocketAddr` to `bind` or
//! `connect` compiles unchanged. Literal addresses are parsed in place, with
//! no thread hop; only a host name goes to the pool, where std's own
//! resolution runs, so results and errors are std's.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// A value that resolves to one or more socket addresses: what `bind`,
/// `connect` and `send_to` of greenhack's sockets take.
///
/// Implemented for the same types as [`std::net::ToSocketAddrs`]: a
/// [`SocketAddr`] (`V4`, `V6`), `(IpAddr, u16)` (and the `Ipv4Addr`,
/// `Ipv6Addr` forms), `(&str, u16)`, `(String, u16)`, a `"host:port"` `&str`
/// or `String`, `&[SocketAddr]`, and a reference to any of these.
///
/// Unlike std's trait, resolving a host name does not block the thread's
/// loop: the system resolver (`getaddrinfo`) runs on a pool thread through
/// [`unblock`](crate::unblock) while the calling greenlet waits. A literal
/// IP address is parsed in place and costs no thread hop. Errors are std's:
/// `"invalid socket address"` for a string without a port, `"invalid port
/// value"`, and the resolver's own error for a name that does not resolve.
///
/// The trait is sealed: its method is private, so it cannot be implemented
/// outside greenhack, nor called directly (use `std::net::ToSocketAddrs`
/// to resolve without connecting). A generic function that forwards an
/// address to greenhack names this trait as its bound:
///
/// ```
/// use greenhack::net::{TcpStream, ToSocketAddrs};
///
/// fn dial(addr: impl ToSocketAddrs) -> std::io::Result<TcpStream> {
///     TcpStream::connect(addr)
/// }
/// let listener = greenhack::net::TcpListener::bind(("localhost", 0))?;
/// let port = listener.local_addr()?.port();
/// dial(("localhost", port))?; // the name resolves on the pool
/// dial(format!("127.0.0.1:{port}"))?; // parsed in place
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait ToSocketAddrs: sealed::Resolve {}

pub(crate) mod sealed {
    use super::Addrs;

    /// The private half of [`ToSocketAddrs`](super::ToSocketAddrs).
    pub trait Resolve {
        /// The addresses, resolving a host name off the loop.
        fn resolve(&self) -> std::io::Result<Addrs>;
    }
}

/// Resolved addresses: one without an allocation, or a list.
#[derive(Debug)]
pub enum Addrs {
    /// A literal address.
    One(Option<SocketAddr>),
    /// Resolved from a name, or given as a slice.
    Many(std::vec::IntoIter<SocketAddr>),
}

impl Iterator for Addrs {
    type Item = SocketAddr;

    fn next(&mut self) -> Option<SocketAddr> {
        match self {
            Addrs::One(a) => a.take(),
            Addrs::Many(it) => it.next(),
        }
    }
}

macro_rules! literal {
    ($($ty:ty),*) => {$(
        impl ToSocketAddrs for $ty {}

        impl sealed::Resolve for $ty {
            fn resolve(&self) -> io::Result<Addrs> {
                Ok(Addrs::One(Some(SocketAddr::from(*self))))
            }
        }
    )*};
}

literal!(
    SocketAddr,
    SocketAddrV4,
    SocketAddrV6,
    (IpAddr, u16),
    (Ipv4Addr, u16),
    (Ipv6Addr, u16)
);

impl ToSocketAddrs for (&str, u16) {}

impl sealed::Resolve for (&str, u16) {
    fn resolve(&self) -> io::Result<Addrs> {
        let (host, port) = *self;
        // As std: an IP literal is not looked up.
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Addrs::One(Some(SocketAddr::new(ip, port))));
        }
        lookup_off_loop(host.to_owned(), port)
    }
}

impl ToSocketAddrs for (String, u16) {}

impl sealed::Resolve for (String, u16) {
    fn resolve(&self) -> io::Result<Addrs> {
        (self.0.as_str(), self.1).resolve()
    }
}

impl ToSocketAddrs for str {}

impl sealed::Resolve for str {
    fn resolve(&self) -> io::Result<Addrs> {
        // As std: a literal "ip:port" first.
        if let Ok(addr) = self.parse::<SocketAddr>() {
            return Ok(Addrs::One(Some(addr)));
        }
        match self.rsplit_once(':') {
            Some((host, port)) => match port.parse::<u16>() {
                Ok(port) => lookup_off_loop(host.to_owned(), port),
                // std rejects it before any lookup: the same error, here.
                Err(_) => std_resolve(self),
            },
            None => std_resolve(self),
        }
    }
}

impl ToSocketAddrs for String {}

impl sealed::Resolve for String {
    fn resolve(&self) -> io::Result<Addrs> {
        self.as_str().resolve()
    }
}

impl ToSocketAddrs for &[SocketAddr] {}

impl sealed::Resolve for &[SocketAddr] {
    fn resolve(&self) -> io::Result<Addrs> {
        Ok(Addrs::Many(Vec::from(*self).into_iter()))
    }
}

impl<T: ToSocketAddrs + ?Sized> ToSocketAddrs for &T {}

impl<T: ToSocketAddrs + ?Sized> sealed::Resolve for &T {
    fn resolve(&self) -> io::Result<Addrs> {
        (**self).resolve()
    }
}

/// Resolves with std where std fails without a lookup (a malformed
/// address), so the error is exactly std's.
fn std_resolve(addr: &str) -> io::Result<Addrs> {
    let addrs = std::net::ToSocketAddrs::to_socket_addrs(addr)?;
    Ok(Addrs::Many(addrs.collect::<Vec<_>>().into_iter()))
}

/// Looks `host` up on the blocking pool while the caller waits.
fn lookup_off_loop(host: String, port: u16) -> io::Result<Addrs> {
    let addrs = crate::unblock(move || resolver()(&host, port))?;
    Ok(Addrs::Many(addrs.into_iter()))
}

/// What looks a host name up: std's resolution (the system resolver).
type Resolver = fn(&str, u16) -> io::Result<Vec<SocketAddr>>;

fn system_resolver(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok(std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?.collect())
}

#[cfg(not(test))]
fn resolver() -> Resolver {
    system_resolver
}

#[cfg(test)]
fn resolver() -> Resolver {
    tests::slow_resolver
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::Duration;

    /// A name that only the stand-in knows (`.invalid` never resolves).
    const SLOW_NAME: &str = "slow.greenhack.invalid";

    /// The resolver of the unit tests: `SLOW_NAME` takes 300 ms to resolve
    /// to the loopback address, as a slow DNS server would; any other name
    /// goes to the system resolver.
    pub(super) fn slow_resolver(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        if host == SLOW_NAME {
            std::thread::sleep(Duration::from_millis(300));
            return Ok(vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))]);
        }
        system_resolver(host, port)
    }

    /// Issue 13: a 300 ms resolver let a 10 ms ticker tick twice. The
    /// lookup now waits on the pool, and the ticker keeps ticking.
    #[test]
    fn a_slow_lookup_does_not_stop_the_loop() {
        let ticks = Rc::new(Cell::new(0));
        let t = ticks.clone();
        crate::run(move || {
            let listener = crate::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let connected = Rc::new(Cell::new(false));
            let c = connected.clone();
            let ticker = crate::spawn(move || {
                while !c.get() {
                    crate::sleep(Duration::from_millis(10));
                    t.set(t.get() + 1);
                }
            });
            let stream = crate::net::TcpStream::connect((SLOW_NAME, port)).unwrap();
            assert_eq!(stream.peer_addr().unwrap().port(), port);
            connected.set(true);
            ticker.join().unwrap();
        });
        assert!(
            ticks.get() >= 20,
            "the ticker ticked {} times during a 300 ms lookup",
            ticks.get()
        );
    }
}
