//! `net::ToSocketAddrs`: std's address types accepted unchanged, names
//! resolved off the loop, errors exactly std's.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use greenhack::net::{TcpListener, TcpStream, UdpSocket};

/// What std reports for `addr`, as (kind, message).
fn std_error(addr: impl std::net::ToSocketAddrs) -> (io::ErrorKind, String) {
    let e = std::net::TcpStream::connect(addr).unwrap_err();
    (e.kind(), e.to_string())
}

fn our_error(r: io::Result<TcpStream>) -> (io::ErrorKind, String) {
    let e = r.unwrap_err();
    (e.kind(), e.to_string())
}

/// Every type std accepts compiles and connects. (The borrowed forms are
/// the point: code written for std passes references.)
#[test]
#[allow(clippy::needless_borrows_for_generic_args)]
fn std_address_types_are_accepted() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let port = addr.port();
    let SocketAddr::V4(v4): SocketAddr = addr else {
        unreachable!()
    };
    let s = format!("127.0.0.1:{port}");
    let host = String::from("127.0.0.1");
    let slice = [addr];
    let connects: Vec<io::Result<TcpStream>> = vec![
        TcpStream::connect(addr),
        TcpStream::connect(&addr),
        TcpStream::connect(v4),
        TcpStream::connect((IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
        TcpStream::connect(("127.0.0.1", port)),
        TcpStream::connect((host.clone(), port)),
        TcpStream::connect(&(host.as_str(), port)),
        TcpStream::connect(s.as_str()),
        TcpStream::connect(&s),
        TcpStream::connect(s.clone()),
        TcpStream::connect(&slice[..]),
    ];
    for (i, c) in connects.into_iter().enumerate() {
        assert_eq!(c.unwrap().peer_addr().unwrap(), addr, "form {i}");
    }
    // The remaining std forms, checked by the compiler.
    let _ = |a: SocketAddrV6| TcpStream::connect(a);
    let _ = |a: SocketAddrV4| TcpStream::connect(&a);
    let _ = |a: Ipv6Addr| TcpStream::connect((a, port));
}

/// A host name resolves (through the pool) like std resolves it.
#[test]
fn localhost_resolves_as_with_std() {
    let listener = TcpListener::bind(("localhost", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let expected: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&("localhost", port))
        .unwrap()
        .collect();
    assert!(expected.contains(&listener.local_addr().unwrap()));
    let ours = greenhack::run(|| TcpStream::connect(format!("localhost:{port}")));
    assert!(expected.contains(&ours.unwrap().peer_addr().unwrap()));
}

/// Malformed addresses and names that do not resolve fail as with std.
#[test]
fn errors_are_std_errors() {
    assert_eq!(
        our_error(TcpStream::connect("no-port")),
        std_error("no-port")
    );
    assert_eq!(
        our_error(TcpStream::connect("127.0.0.1:http")),
        std_error("127.0.0.1:http")
    );
    assert_eq!(
        our_error(TcpStream::connect("host:99999")),
        std_error("host:99999")
    );
    assert_eq!(
        our_error(TcpStream::connect(("nul\0byte", 80))),
        std_error(("nul\0byte", 80))
    );
    let empty: &[SocketAddr] = &[];
    assert_eq!(our_error(TcpStream::connect(empty)), std_error(empty));
    // A name under .invalid never resolves (RFC 6761); the resolver's error.
    let name = ("does-not-exist.invalid", 80);
    assert_eq!(our_error(TcpStream::connect(name)), std_error(name));
}

/// `send_to` takes the same addresses.
#[test]
fn udp_send_to_a_name() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = rx.local_addr().unwrap().port();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.send_to(b"hi", ("localhost", port)).unwrap();
    let mut buf = [0; 8];
    let (n, from) = rx.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"hi"[..], tx.local_addr().unwrap()));
}
