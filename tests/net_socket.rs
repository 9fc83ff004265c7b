//! `TcpSocket`: options set before `listen`/`connect`, the backlog, and
//! the errors the system calls report.

use std::cell::Cell;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use greenhack::net::{TcpListener, TcpSocket, TcpStream};

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[test]
fn options_read_back_what_was_set() {
    let s = TcpSocket::new_v4().unwrap();
    for on in [true, false] {
        s.set_reuseaddr(on).unwrap();
        assert_eq!(s.reuseaddr().unwrap(), on);
        s.set_reuseport(on).unwrap();
        assert_eq!(s.reuseport().unwrap(), on);
        s.set_nodelay(on).unwrap();
        assert_eq!(s.nodelay().unwrap(), on);
    }
    // Linux doubles buffer sizes for its bookkeeping: at least what was asked.
    s.set_send_buffer_size(64 * 1024).unwrap();
    assert!(s.send_buffer_size().unwrap() >= 64 * 1024);
    s.set_recv_buffer_size(32 * 1024).unwrap();
    assert!(s.recv_buffer_size().unwrap() >= 32 * 1024);
    assert!(s.take_error().unwrap().is_none());

    let v6 = TcpSocket::new_v6().unwrap();
    for on in [true, false] {
        v6.set_only_v6(on).unwrap();
        assert_eq!(v6.only_v6().unwrap(), on);
    }
}

#[test]
fn only_v6_on_an_ipv4_socket_is_the_kernels_error() {
    let err = TcpSocket::new_v4().unwrap().set_only_v6(true).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOPROTOOPT));
}

#[test]
fn only_v6_lets_ipv4_and_ipv6_listeners_share_a_port() {
    let v6 = TcpSocket::new_v6().unwrap();
    v6.set_only_v6(true).unwrap();
    v6.bind("[::]:0".parse().unwrap()).unwrap();
    let port = v6.local_addr().unwrap().port();
    let _v6 = v6.listen(16).unwrap();
    let v4 = TcpSocket::new_v4().unwrap();
    v4.bind(SocketAddr::from(([0, 0, 0, 0], port))).unwrap();
    let _v4 = v4.listen(16).unwrap();

    // Without IPV6_V6ONLY the IPv6 wildcard also claims IPv4: EADDRINUSE.
    let dual = TcpSocket::new_v6().unwrap();
    dual.set_only_v6(false).unwrap();
    let err = dual.bind(SocketAddr::from(([0u16; 8], port))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
}

#[test]
fn reuseport_lets_two_listeners_bind_one_port_and_both_get_connections() {
    let bind = |addr: SocketAddr, reuseport: bool| {
        let s = TcpSocket::new_v4()?;
        s.set_reuseport(reuseport)?;
        s.bind(addr)?;
        s.listen(1024)
    };
    let a = bind(localhost(), true).unwrap();
    let addr = a.local_addr().unwrap();
    let b = bind(addr, true).unwrap();
    assert_eq!(b.local_addr().unwrap(), addr);
    // Without SO_REUSEPORT on the newcomer, the port is taken.
    assert_eq!(bind(addr, false).unwrap_err().kind(), ErrorKind::AddrInUse);

    // The kernel spreads connections over both by a hash of the client's
    // address and port: with 200 clients, both get some (the chance that
    // one gets none is 2^-199).
    let clients: Vec<_> = (0..200)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let drain = |l: &TcpListener| {
        let n = Rc::new(Cell::new(0));
        let (l, n2) = (l.try_clone().unwrap(), n.clone());
        let h = greenhack::spawn(move || {
            loop {
                l.accept().unwrap();
                n2.set(n2.get() + 1);
            }
        });
        (h, n)
    };
    let ((ha, na), (hb, nb)) = (drain(&a), drain(&b));
    while na.get() + nb.get() < clients.len() {
        greenhack::sleep(Duration::from_millis(1));
    }
    ha.cancel();
    hb.cancel();
    assert!(na.get() > 0 && nb.get() > 0, "{} / {}", na.get(), nb.get());
}

/// What a burst of connects achieved within the bound.
#[derive(Debug)]
struct Burst {
    connected: usize,
    accepted: usize,
    took: Duration,
}

/// Connects `n` clients at once (a greenlet each, all started in the same
/// loop turn, before the acceptor greenlet first runs) to a listener with
/// `backlog`, and counts how many are connected and accepted within
/// `bound` (stopping early once all are).
fn burst_connect(backlog: u32, n: usize, bound: Duration) -> Burst {
    greenhack::run(|| {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(localhost()).unwrap();
        let listener = socket.listen(backlog).unwrap();
        let addr = listener.local_addr().unwrap();
        let (connected, accepted) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
        let clients: Vec<_> = (0..n)
            .map(|_| {
                let connected = connected.clone();
                greenhack::spawn(move || {
                    let s = TcpStream::connect(addr).unwrap();
                    connected.set(connected.get() + 1);
                    s
                })
            })
            .collect();
        let acc = accepted.clone();
        // The clock starts once every greenlet exists: none has run yet.
        let start = Instant::now();
        let acceptor = greenhack::spawn(move || {
            let mut held = Vec::new();
            loop {
                held.push(listener.accept().unwrap().0);
                acc.set(acc.get() + 1);
            }
        });
        while (connected.get() < n || accepted.get() < n) && start.elapsed() < bound {
            greenhack::sleep(Duration::from_millis(2));
        }
        let burst = Burst {
            connected: connected.get(),
            accepted: accepted.get(),
            took: start.elapsed(),
        };
        acceptor.cancel();
        clients.iter().for_each(|c| c.cancel());
        burst
    })
}

/// The kernel completes and queues up to `backlog` handshakes before the
/// program accepts; past that it drops them (the client retransmits its SYN
/// after 1 s, or, with SYN cookies, believes itself connected while the
/// server never sees the connection). With a backlog of 1,024, 1,000
/// simultaneous connects are all connected and accepted within 500 ms — a
/// generous bound: on loopback it takes tens of milliseconds, and one
/// dropped handshake costs at least 1,000 ms. With a backlog of 16 the same
/// burst misses the bound, which shows the test detects the stall.
#[test]
fn a_backlog_of_1024_lets_1000_simultaneous_connects_complete_without_a_stall() {
    // Under Valgrind (CI runs the suite under memcheck) everything is ~20x
    // slower, while a dropped handshake still costs a whole second: the
    // bound then only checks that every connect completes, and the control
    // (which relies on the bound telling a stall apart) is left out.
    let valgrind = std::env::var("LD_PRELOAD").is_ok_and(|p| p.contains("vgpreload"));
    let bound = Duration::from_millis(if valgrind { 30_000 } else { 500 });
    let big = burst_connect(1024, 1000, bound);
    assert_eq!((big.connected, big.accepted), (1000, 1000), "{big:?}");
    assert!(big.took < bound, "{big:?}");
    if valgrind {
        return;
    }
    let small = burst_connect(16, 1000, bound);
    assert!(
        small.accepted < 1000,
        "a backlog of 16 did not stall: {small:?} (did the kernel raise the backlog?)"
    );
}

#[test]
fn connect_and_exchange_bytes() {
    let listener = TcpListener::bind(localhost()).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = greenhack::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    let socket = TcpSocket::new_for_addr(addr).unwrap();
    socket.set_nodelay(true).unwrap();
    socket.bind(localhost()).unwrap();
    let local = socket.local_addr().unwrap();
    let mut c = socket.connect(addr).unwrap();
    assert_eq!(c.local_addr().unwrap(), local);
    assert!(c.nodelay().unwrap());
    c.write_all(b"hello").unwrap();
    let mut back = [0; 5];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");
    server.join().unwrap();
}

#[test]
fn connect_to_a_closed_port_is_refused() {
    let addr = {
        let l = TcpListener::bind(localhost()).unwrap();
        l.local_addr().unwrap()
    };
    let err = TcpSocket::new_v4().unwrap().connect(addr).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}

#[test]
fn binding_an_address_in_use_is_addr_in_use() {
    let l = TcpListener::bind(localhost()).unwrap();
    let err = TcpSocket::new_v4()
        .unwrap()
        .bind(l.local_addr().unwrap())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
    // A family mismatch is the kernel's EINVAL... or EAFNOSUPPORT: as reported.
    let err = TcpSocket::new_v6().unwrap().bind(localhost()).unwrap_err();
    assert!(err.raw_os_error().is_some(), "{err}");
}
