//! UDP: round trips in greenlets and on a plain thread, receive timeouts,
//! and an ICMP error on a connected socket.

use std::cell::Cell;
use std::io::ErrorKind;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use greenhack::net::UdpSocket;

/// A connected socket's ICMP "port unreachable" is reported once, by the
/// next `recv`, as with std; afterwards the socket waits normally again (a
/// timed `recv` times out instead of spinning on the consumed error).
#[test]
fn icmp_error_then_timeout_does_not_spin() {
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = closed.local_addr().unwrap();
    drop(closed);
    let std_s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    std_s.connect(target).unwrap();
    std_s.send(b"anyone?").unwrap();
    let std_first = std_s.recv(&mut [0; 16]).unwrap_err().kind();

    let (tx, rx) = mpsc::channel();
    // On a thread of its own, so that a spin fails the test instead of
    // hanging it.
    std::thread::spawn(move || {
        let s = Rc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        s.connect(target).unwrap();
        let (s2, waiting) = (s.clone(), Rc::new(Cell::new(false)));
        let w = waiting.clone();
        let reader = greenhack::spawn(move || {
            w.set(true);
            // Waits; the error arrives while it does.
            let first = s2.recv(&mut [0; 16]).unwrap_err().kind();
            s2.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let t0 = Instant::now();
            let second = s2.recv(&mut [0; 16]).unwrap_err().kind();
            (first, second, t0.elapsed())
        });
        while !waiting.get() {
            greenhack::yield_now();
        }
        s.send(b"anyone?").unwrap();
        tx.send(reader.join().unwrap()).unwrap();
    });
    let (first, second, waited) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("recv after an ICMP error hung");
    assert_eq!(std_first, ErrorKind::ConnectionRefused);
    assert_eq!(first, std_first);
    assert_eq!(second, ErrorKind::WouldBlock);
    assert!(waited >= Duration::from_millis(45), "{waited:?}");
}

#[test]
fn round_trip_between_greenlets_every_byte_checked() {
    const N: usize = 200;
    let got = greenhack::run(|| {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        // An echo server: every datagram goes back to its sender.
        let _server = greenhack::spawn(move || {
            let mut buf = [0; 2048];
            for _ in 0..N {
                let (n, from) = server.recv_from(&mut buf).unwrap();
                assert_eq!(server.send_to(&buf[..n], from).unwrap(), n);
            }
        });
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(addr).unwrap();
        assert_eq!(client.peer_addr().unwrap(), addr);
        let mut ok = 0;
        for i in 0..N {
            let msg: Vec<u8> = (0..(i % 1000 + 1)).map(|j| (i * 7 + j) as u8).collect();
            assert_eq!(client.send(&msg).unwrap(), msg.len());
            let mut buf = [0; 2048];
            let n = client.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &msg[..]);
            ok += 1;
        }
        ok
    });
    assert_eq!(got, N);
}

#[test]
fn round_trip_on_plain_threads_and_peek() {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b_addr = {
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = b.local_addr().unwrap();
        let std_b = b.into_std().unwrap();
        let a_addr = a.local_addr().unwrap();
        // The other end runs on its own thread, with no greenlet.
        std::thread::spawn(move || {
            let b = UdpSocket::from_std(std_b).unwrap();
            let mut buf = [0; 64];
            let (n, from) = b.recv_from(&mut buf).unwrap();
            assert_eq!(from, a_addr);
            b.send_to(&buf[..n], from).unwrap();
        });
        addr
    };
    a.send_to(b"ping", b_addr).unwrap();
    let mut buf = [0; 64];
    let (n, from) = a.peek_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"ping"[..], b_addr));
    a.connect(b_addr).unwrap();
    let mut small = [0; 2];
    assert_eq!(a.peek(&mut small).unwrap(), 2);
    assert_eq!(&small, b"pi");
    let (n, from) = a.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"ping"[..], b_addr));
}

#[test]
fn recv_timeout_is_would_block_like_std() {
    let wait = Duration::from_millis(50);
    let std_s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    std_s.set_read_timeout(Some(wait)).unwrap();
    let std_err = std_s.recv(&mut [0; 8]).unwrap_err();

    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    // Kept in the socket: the kernel rounds it (to its tick) as it does
    // for std's.
    assert_eq!(s.read_timeout().unwrap(), std_s.read_timeout().unwrap());
    assert!(s.read_timeout().unwrap() >= Some(wait));
    let t0 = Instant::now();
    let err = s.recv_from(&mut [0; 8]).unwrap_err();
    let waited = t0.elapsed();
    assert_eq!(std_err.kind(), ErrorKind::WouldBlock, "std on Linux");
    assert_eq!(err.kind(), std_err.kind());
    assert_eq!(err.raw_os_error(), std_err.raw_os_error());
    assert!(
        waited >= wait && waited < Duration::from_secs(2),
        "{waited:?}"
    );

    let std_zero = std_s.set_read_timeout(Some(Duration::ZERO)).unwrap_err();
    let zero = s.set_write_timeout(Some(Duration::ZERO)).unwrap_err();
    assert_eq!(zero.kind(), std_zero.kind());
    assert_eq!(zero.kind(), ErrorKind::InvalidInput);
}

#[test]
fn options_and_clone() {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_broadcast(true).unwrap();
    assert!(s.broadcast().unwrap());
    s.set_ttl(9).unwrap();
    assert_eq!(s.ttl().unwrap(), 9);
    assert_eq!(s.peer_addr().unwrap_err().kind(), ErrorKind::NotConnected);
    assert!(s.take_error().unwrap().is_none());
    let c = s.try_clone().unwrap();
    assert_eq!(c.local_addr().unwrap(), s.local_addr().unwrap());
    // Sent through the clone, received through the original.
    c.send_to(b"self", s.local_addr().unwrap()).unwrap();
    let mut buf = [0; 8];
    let (n, _) = s.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"self");
}
