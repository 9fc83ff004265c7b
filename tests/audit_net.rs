//! The held-out audit of greenhack's network and loop API (issues 11 and
//! 14): programs written as a user who knows `std::net` and tokio would
//! write them, from the public docs only. Each test names the std or tokio
//! behaviour it holds greenhack to.
//!
//! Anything that could hang runs under a watchdog ([`within`]) or in a
//! child process with a deadline ([`child`]); tests that count descriptors
//! or threads run in a child process of their own, where no other test
//! opens any meanwhile.

mod util;

use std::io::{self, BufRead, BufReader, BufWriter, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use greenhack::net::{TcpListener, TcpSocket, TcpStream, UdpSocket, UnixListener, UnixStream};

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// Runs `f` on a thread of its own and fails the test if it has not
/// returned within `secs` (a hang), re-raising its panic otherwise.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(());
        r
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => match t.join().unwrap() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("hung: not done within {secs} s"),
    }
}

/// Open descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Threads of this process.
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// The thread count once it has come down to `want`, or what it still is
/// after 5 s: a joined thread can stay listed in /proc for a moment after
/// `join` returns (seen under qemu-user), a thread that stays is a failure.
fn thread_count_settled(want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = thread_count();
        if n == want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh path for a Unix socket.
fn sock_path(tag: &str) -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("gh-audit-net-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{tag}-{}.sock", N.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_file(&p);
    p
}

/// A connected greenhack pair on loopback: (client, server side).
fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

/// Sets `SO_LINGER` to zero so that closing `fd` sends a reset.
fn linger_zero(fd: i32) {
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `lg` is a valid linger struct for the call's duration.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const lg).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
}

/// A timeout as the kernel keeps it (rounded to its clock), read back
/// from a std socket: what std's getters report for `d`.
fn kernel_rounded(d: Duration) -> Option<Duration> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(d)).unwrap();
    s.read_timeout().unwrap()
}

/// Writes until an error; returns its kind (a reset peer fails a write).
fn write_until_error(mut w: impl Write) -> io::Error {
    for _ in 0..1000 {
        if let Err(e) = w.write(b"data after reset") {
            return e;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("writes to a reset peer kept succeeding");
}

// ---------------------------------------------------------------------------
// TCP: std's errors
// ---------------------------------------------------------------------------

/// std: `TcpStream::connect` to a port nobody listens on is
/// `ConnectionRefused`, on a plain thread and inside a greenlet.
#[test]
fn tcp_connect_closed_port_is_connection_refused_as_std() {
    within(20, || {
        let (_held, addr) = util::closed_port();
        let std_err = std::net::TcpStream::connect(addr).unwrap_err();
        assert_eq!(std_err.kind(), ErrorKind::ConnectionRefused);
        let e = TcpStream::connect(addr).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
        assert_eq!(e.raw_os_error(), std_err.raw_os_error());
        let in_greenlet = greenhack::run(|| {
            greenhack::spawn(move || TcpStream::connect(addr).map(drop))
                .join()
                .unwrap()
        });
        assert_eq!(
            in_greenlet.unwrap_err().kind(),
            ErrorKind::ConnectionRefused
        );
        let via_socket = TcpSocket::new_v4().unwrap().connect(addr).unwrap_err();
        assert_eq!(via_socket.kind(), ErrorKind::ConnectionRefused);
        let timed = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_err();
        assert_eq!(timed.kind(), ErrorKind::ConnectionRefused);
    })
}

/// std: binding an address a listener holds is `AddrInUse` (TCP and UDP).
#[test]
fn bind_in_use_is_addr_in_use_as_std() {
    within(20, || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let e = TcpListener::bind(addr).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AddrInUse, "{e}");
        let s = TcpSocket::new_v4().unwrap();
        assert_eq!(s.bind(addr).unwrap_err().kind(), ErrorKind::AddrInUse);
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = UdpSocket::bind(u.local_addr().unwrap()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AddrInUse, "{e}");
    })
}

/// std: once the peer closed, `read` returns `Ok(0)` (after the bytes it
/// sent), again and again.
#[test]
fn read_after_peer_close_is_ok_zero_as_std() {
    within(20, || {
        greenhack::run(|| {
            let (mut c, s) = tcp_pair();
            let writer = greenhack::spawn(move || {
                let mut s = s;
                greenhack::sleep(Duration::from_millis(20));
                s.write_all(b"last words").unwrap();
                drop(s);
            });
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            assert_eq!(got, b"last words");
            assert_eq!(c.read(&mut [0; 16]).unwrap(), 0);
            assert_eq!(c.read(&mut [0; 16]).unwrap(), 0);
            writer.join().unwrap();
        });
    })
}

/// std: writing to a peer that reset the connection fails with
/// `ConnectionReset` or `BrokenPipe` (the process survives: no SIGPIPE);
/// the first error's kind is the one std's stream gets.
#[test]
fn write_after_peer_reset_fails_as_std() {
    within(20, || {
        // std, for reference.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        linger_zero(s.as_raw_fd());
        drop(s);
        std::thread::sleep(Duration::from_millis(20));
        let std_kind = write_until_error(&c).kind();

        let (c, s) = tcp_pair();
        linger_zero(s.as_raw_fd());
        drop(s);
        std::thread::sleep(Duration::from_millis(20));
        let e = write_until_error(&c);
        assert!(
            matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
            "{e:?}"
        );
        assert_eq!(e.kind(), std_kind);
        // And the read side sees the reset as std's does.
        let (mut c, s) = tcp_pair();
        linger_zero(s.as_raw_fd());
        drop(s);
        let e = c.read(&mut [0; 4]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionReset);
    })
}

/// std: writing after the peer closed (orderly) eventually fails with
/// `BrokenPipe`/`ConnectionReset`, inside a greenlet too.
#[test]
fn write_after_peer_close_in_greenlet_fails_as_std() {
    within(20, || {
        greenhack::run(|| {
            let (c, s) = tcp_pair();
            drop(s);
            let e = greenhack::spawn(move || write_until_error(&c))
                .join()
                .unwrap();
            assert!(
                matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
                "{e:?}"
            );
        });
    })
}

/// std: `shutdown(Write)` sends EOF and the other side's reply can still
/// be read to its end; `shutdown(Read)` makes reads return 0.
#[test]
fn shutdown_write_then_read_the_rest_as_std() {
    within(20, || {
        greenhack::run(|| {
            let (mut c, s) = tcp_pair();
            let server = greenhack::spawn(move || {
                let mut s = s;
                let mut req = Vec::new();
                s.read_to_end(&mut req).unwrap();
                req.reverse();
                s.write_all(&req).unwrap();
            });
            c.write_all(b"abcdef").unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).unwrap();
            assert_eq!(back, b"fedcba");
            server.join().unwrap();
            // Writing after our own shutdown(Write): std says BrokenPipe.
            assert_eq!(c.write(b"x").unwrap_err().kind(), ErrorKind::BrokenPipe);

            let (mut c, _s) = tcp_pair();
            c.shutdown(Shutdown::Read).unwrap();
            assert_eq!(c.read(&mut [0; 4]).unwrap(), 0);
        });
    })
}

/// std: `peek` waits for data and does not consume it.
#[test]
fn peek_waits_and_does_not_consume_as_std() {
    within(20, || {
        greenhack::run(|| {
            let (mut c, s) = tcp_pair();
            let w = greenhack::spawn(move || {
                greenhack::sleep(Duration::from_millis(20));
                (&s).write_all(b"hello").unwrap();
                s
            });
            let mut buf = [0; 5];
            let n = c.peek(&mut buf).unwrap();
            assert!(n > 0 && buf[..n] == b"hello"[..n]);
            let mut all = [0; 5];
            c.read_exact(&mut all).unwrap();
            assert_eq!(&all, b"hello");
            let _s = w.join().unwrap();
        });
    })
}

/// std: `read_exact`/`write_all` move every byte of a large transfer, and
/// `BufReader::lines`/`BufWriter` work over the stream.
#[test]
fn large_transfer_and_buffered_io_as_std() {
    within(60, || {
        greenhack::run(|| {
            let (c, s) = tcp_pair();
            let data: Vec<u8> = (0..2 << 20).map(|i: u32| (i * 7 + i / 251) as u8).collect();
            let expect = data.clone();
            let w = greenhack::spawn(move || {
                let mut s = s;
                s.write_all(&data).unwrap();
                s
            });
            let mut got = vec![0; expect.len()];
            (&c).read_exact(&mut got).unwrap();
            assert!(got == expect, "bytes differ");
            let s = w.join().unwrap();

            let w = greenhack::spawn(move || {
                let mut bw = BufWriter::new(&s);
                for i in 0..1000 {
                    writeln!(bw, "line {i}").unwrap();
                }
                bw.flush().unwrap();
                drop(bw);
                s.shutdown(Shutdown::Write).unwrap();
            });
            let lines: Vec<String> = BufReader::new(&c).lines().map(Result::unwrap).collect();
            assert_eq!(lines.len(), 1000);
            assert_eq!(lines[999], "line 999");
            w.join().unwrap();
        });
    })
}

/// std: `local_addr`/`peer_addr` of both ends match; `peer_addr` of a
/// listener-accepted stream is the client's `local_addr`.
#[test]
fn addresses_match_as_std() {
    within(20, || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, peer) = l.accept().unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        assert_eq!(s.peer_addr().unwrap(), c.local_addr().unwrap());
        assert_eq!(c.peer_addr().unwrap(), s.local_addr().unwrap());
        assert_eq!(c.peer_addr().unwrap(), l.local_addr().unwrap());
    })
}

/// std: a read timeout makes a read fail with `WouldBlock` (EAGAIN on
/// Linux) after about the timeout; the getter reports it; zero is
/// `InvalidInput`; inside a greenlet the other greenlets run meanwhile.
#[test]
fn read_timeout_as_std() {
    within(20, || {
        greenhack::run(|| {
            let (mut c, _s) = tcp_pair();
            assert_eq!(c.read_timeout().unwrap(), None);
            assert_eq!(
                c.set_read_timeout(Some(Duration::ZERO)).unwrap_err().kind(),
                ErrorKind::InvalidInput
            );
            c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            assert_eq!(
                c.read_timeout().unwrap(),
                kernel_rounded(Duration::from_millis(50))
            );
            let ticks = Arc::new(AtomicUsize::new(0));
            let t = ticks.clone();
            let ticker = greenhack::spawn(move || {
                for _ in 0..3 {
                    greenhack::sleep(Duration::from_millis(5));
                    t.fetch_add(1, Ordering::Relaxed);
                }
            });
            let start = Instant::now();
            let e = c.read(&mut [0; 8]).unwrap_err();
            let took = start.elapsed();
            assert_eq!(e.kind(), ErrorKind::WouldBlock, "{e}");
            assert_eq!(e.raw_os_error(), Some(libc::EAGAIN));
            assert!(took >= Duration::from_millis(45), "{took:?}");
            assert!(took < Duration::from_secs(2), "{took:?}");
            ticker.join().unwrap();
            assert_eq!(ticks.load(Ordering::Relaxed), 3);
            // peek honours it too, as std's does.
            assert_eq!(
                c.peek(&mut [0; 8]).unwrap_err().kind(),
                ErrorKind::WouldBlock
            );
            c.set_read_timeout(None).unwrap();
            assert_eq!(c.read_timeout().unwrap(), None);
        });
    })
}

/// std: a write timeout makes a write to a peer that never reads fail with
/// `WouldBlock` once the buffers are full.
#[test]
fn write_timeout_as_std() {
    within(30, || {
        let (c, _s) = tcp_pair();
        c.set_write_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        assert_eq!(
            c.write_timeout().unwrap(),
            kernel_rounded(Duration::from_millis(50))
        );
        let chunk = vec![0u8; 1 << 16];
        let e = loop {
            if let Err(e) = (&c).write(&chunk) {
                break e;
            }
        };
        assert_eq!(e.kind(), ErrorKind::WouldBlock, "{e}");
    })
}

/// std: timeouts live in the socket, so `try_clone` and `into_std` carry
/// them, and `from_std` keeps a std socket's.
#[test]
fn timeouts_travel_with_the_socket_as_std() {
    within(20, || {
        let (c, _s) = tcp_pair();
        c.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
        let clone = c.try_clone().unwrap();
        let ms = |n| kernel_rounded(Duration::from_millis(n));
        assert_eq!(clone.read_timeout().unwrap(), ms(30));
        clone
            .set_read_timeout(Some(Duration::from_millis(40)))
            .unwrap();
        assert_eq!(c.read_timeout().unwrap(), ms(40));
        drop(clone);
        let std = c.into_std().unwrap();
        assert_eq!(std.read_timeout().unwrap(), ms(40));
        std.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut back = TcpStream::from_std(std).unwrap();
        assert_eq!(back.read_timeout().unwrap(), ms(20));
        assert_eq!(
            back.read(&mut [0; 4]).unwrap_err().kind(),
            ErrorKind::WouldBlock
        );
    })
}

/// std: `connect` takes a host name (`"localhost:port"`, `(host, port)`);
/// a malformed address is `InvalidInput` as std's.
#[test]
fn connect_by_host_name_as_std() {
    within(30, || {
        greenhack::run(|| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            // The loop keeps running while the name resolves.
            let ticker = greenhack::spawn(|| greenhack::sleep(Duration::from_millis(1)));
            let c = TcpStream::connect(format!("localhost:{port}")).unwrap();
            assert_eq!(c.peer_addr().unwrap().port(), port);
            ticker.join().unwrap();
            let c2 = TcpStream::connect(("localhost", port)).unwrap();
            assert!(c2.peer_addr().unwrap().ip().is_loopback());
            for bad in ["localhost", "localhost:notaport", "127.0.0.1"] {
                let std_e = std::net::TcpStream::connect(bad).unwrap_err();
                let e = TcpStream::connect(bad).unwrap_err();
                assert_eq!(e.kind(), std_e.kind(), "{bad}: {e} vs {std_e}");
                assert_eq!(e.to_string(), std_e.to_string(), "{bad}");
            }
            let u = UdpSocket::bind("localhost:0").unwrap();
            let v = UdpSocket::bind("127.0.0.1:0").unwrap();
            let vport = v.local_addr().unwrap().port();
            u.send_to(b"by name", format!("localhost:{vport}")).unwrap();
            let mut buf = [0; 16];
            let (n, _) = v.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"by name");
        });
    })
}

/// std: `connect_timeout` to an address that never answers gives up with
/// `TimedOut` near the timeout (or does what std's does where the network
/// here answers or refuses the route).
#[test]
fn connect_timeout_as_std() {
    within(30, || {
        let addr: SocketAddr = "10.255.255.1:9".parse().unwrap();
        let t = Duration::from_millis(200);
        let std_r = std::net::TcpStream::connect_timeout(&addr, t);
        let start = Instant::now();
        let r = TcpStream::connect_timeout(&addr, t);
        let took = start.elapsed();
        match (std_r, r) {
            (Err(se), Err(e)) => {
                assert_eq!(e.kind(), se.kind(), "{e} vs std {se}");
                if e.kind() == ErrorKind::TimedOut {
                    assert!(took >= Duration::from_millis(190), "{took:?}");
                    assert!(took < Duration::from_secs(3), "{took:?}");
                }
            }
            (Ok(_), Ok(_)) => {} // something answers that address here
            (s, g) => panic!("std {s:?}, greenhack {g:?}"),
        }
    })
}

/// std: IPv6 loopback works end to end (skipped where the host has no
/// IPv6).
#[test]
fn ipv6_loopback_as_std() {
    within(20, || {
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            eprintln!("no IPv6 loopback here: skipped");
            return;
        }
        greenhack::run(|| {
            let l = TcpListener::bind("[::1]:0").unwrap();
            let addr = l.local_addr().unwrap();
            assert!(addr.is_ipv6());
            let srv = greenhack::spawn(move || {
                let (mut s, peer) = l.accept().unwrap();
                assert!(peer.is_ipv6());
                let mut b = [0; 2];
                s.read_exact(&mut b).unwrap();
                s.write_all(&b).unwrap();
            });
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"v6").unwrap();
            let mut b = [0; 2];
            c.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"v6");
            srv.join().unwrap();
            let u = UdpSocket::bind("[::1]:0").unwrap();
            u.send_to(b"x", u.local_addr().unwrap()).unwrap();
            let (n, from) = u.recv_from(&mut [0; 4]).unwrap();
            assert_eq!((n, from), (1, u.local_addr().unwrap()));
        });
    })
}

/// std: `into_std` gives a blocking std socket that works on another
/// thread; `from_std` takes a blocking one (or a non-blocking one) back;
/// `into_raw_fd` keeps the descriptor open.
#[test]
fn std_round_trips_as_std() {
    within(20, || {
        let (c, s) = tcp_pair();
        let std_c = c.into_std().unwrap();
        // Blocking again: a std read waits for the data instead of EAGAIN.
        let t = std::thread::spawn(move || {
            let mut std_c = std_c;
            let mut b = [0; 3];
            std_c.read_exact(&mut b).unwrap();
            std_c
        });
        std::thread::sleep(Duration::from_millis(30));
        (&s).write_all(b"abc").unwrap();
        let std_c = t.join().unwrap();
        std_c.set_nonblocking(true).unwrap();
        let mut c = TcpStream::from_std(std_c).unwrap(); // a non-blocking one
        (&s).write_all(b"d").unwrap();
        let mut b = [0; 1];
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"d");

        let fd = c.into_raw_fd();
        // SAFETY: `fd` is the open socket `into_raw_fd` gave up.
        let std_c = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        let mut c = TcpStream::from_std(std_c).unwrap();
        (&s).write_all(b"e").unwrap();
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"e");

        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let std_l = l.into_std().unwrap();
        let t = std::thread::spawn(move || std_l.accept().map(|(_, a)| a));
        let c = std::net::TcpStream::connect(addr).unwrap();
        assert_eq!(t.join().unwrap().unwrap(), c.local_addr().unwrap());

        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = u.local_addr().unwrap();
        let std_u = u.into_std().unwrap();
        assert_eq!(std_u.local_addr().unwrap(), a);
        let u = UdpSocket::from_std(std_u).unwrap();
        assert_eq!(u.local_addr().unwrap(), a);
    })
}

/// Every socket type: no descriptor outlives its socket — connections,
/// listeners, clones, refused connects, timed-out reads, `into_std` and
/// host-name lookups included.
#[test]
fn no_descriptor_leaks() {
    if !util::is_child("no_descriptor_leaks") {
        return util::assert_child_passed(&util::run_child_with_limit(
            "no_descriptor_leaks",
            Duration::from_secs(60),
        ));
    }
    // Warm up: the thread's reactor, the lookup pool.
    greenhack::run(|| {
        let (_c, _s) = tcp_pair();
        drop(TcpStream::connect(format!(
            "localhost:{}",
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        )));
    });
    let before = open_fds();
    greenhack::run(|| {
        for _ in 0..50 {
            let (c, s) = tcp_pair();
            let c2 = c.try_clone().unwrap();
            c.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            let _ = (&c).read(&mut [0; 1]);
            drop((c, s, c2));
            {
                let (_held, refused) = util::closed_port();
                let _ = TcpStream::connect(refused);
            }
            let u = UdpSocket::bind("127.0.0.1:0").unwrap();
            let _u2 = u.try_clone().unwrap();
            let (a, b) = UnixStream::pair().unwrap();
            drop(a.into_std().unwrap());
            drop(b);
            let l = TcpListener::bind("localhost:0").unwrap();
            let port = l.local_addr().unwrap().port();
            let h = greenhack::spawn(move || TcpStream::connect(("localhost", port)).unwrap());
            let (_s, _) = l.accept().unwrap();
            drop(h.join().unwrap());
            let p = sock_path("leak");
            let ul = UnixListener::bind(&p).unwrap();
            let _uc = UnixStream::connect(&p).unwrap();
            let _ = ul.accept().unwrap();
            std::fs::remove_file(&p).unwrap();
            let s = TcpSocket::new_v4().unwrap();
            s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            drop(s.listen(16).unwrap());
        }
    });
    let after = open_fds();
    assert_eq!(before, after, "descriptors leaked");
}

/// std: `Debug` of a socket shows its addresses and descriptor.
#[test]
fn debug_shows_addresses_as_std() {
    let (c, s) = tcp_pair();
    let d = format!("{c:?}");
    assert!(d.contains("TcpStream"), "{d}");
    assert!(d.contains(&c.local_addr().unwrap().to_string()), "{d}");
    assert!(d.contains(&c.peer_addr().unwrap().to_string()), "{d}");
    assert!(d.contains(&format!("fd: {}", c.as_raw_fd())), "{d}");
    drop(s);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    assert!(format!("{l:?}").contains(&l.local_addr().unwrap().to_string()));
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert!(format!("{u:?}").contains(&u.local_addr().unwrap().to_string()));
    let (a, _b) = UnixStream::pair().unwrap();
    assert!(format!("{a:?}").contains("UnixStream"));
    let sock = TcpSocket::new_v4().unwrap();
    assert!(format!("{sock:?}").contains("TcpSocket"));
}

/// The net docs: the socket types are `!Send` and `!Sync` (registered with
/// one thread's loop); `TcpSocket` (not registered) is `Send`; the runtime's
/// handles and errors, the pool's `Task`, `Pool`, `AbortHandle` cross
/// threads.
#[test]
fn send_and_sync_bounds_as_documented() {
    macro_rules! assert_not_impl {
        ($t:ty, $tr:path) => {{
            trait Ambiguous<A> {
                fn some_item() {}
            }
            impl<T: ?Sized> Ambiguous<()> for T {}
            struct Invalid;
            impl<T: ?Sized + $tr> Ambiguous<Invalid> for T {}
            // Compiles only if exactly one impl applies: `$t` is not `$tr`.
            let _ = <$t as Ambiguous<_>>::some_item;
        }};
    }
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    assert_not_impl!(TcpStream, Send);
    assert_not_impl!(TcpStream, Sync);
    assert_not_impl!(TcpListener, Send);
    assert_not_impl!(TcpListener, Sync);
    assert_not_impl!(UdpSocket, Send);
    assert_not_impl!(UdpSocket, Sync);
    assert_not_impl!(UnixStream, Send);
    assert_not_impl!(UnixListener, Send);
    assert_not_impl!(greenhack::AsAsync<u32>, Send);
    send_sync::<TcpSocket>();
    send_sync::<greenhack::runtime::Handle>();
    send_sync::<greenhack::runtime::RemoteJoinHandle<Vec<u8>>>();
    send_sync::<greenhack::runtime::RemoteJoinError>();
    send_sync::<greenhack::runtime::ShutdownError>();
    send::<greenhack::tokio::Task<Vec<u8>>>();
    send_sync::<greenhack::tokio::Pool>();
    send_sync::<greenhack::tokio::AbortHandle>();
    // Errors box into `Box<dyn Error + Send + Sync>`.
    let _: Box<dyn std::error::Error + Send + Sync> =
        Box::new(io::Error::other("x")) as Box<dyn std::error::Error + Send + Sync>;
}

// ---------------------------------------------------------------------------
// TcpSocket options
// ---------------------------------------------------------------------------

/// socket2/tokio `TcpSocket`: options round-trip; `IPV6_V6ONLY` decides
/// whether an IPv4 socket may share the port; on an IPv4 socket it is the
/// kernel's error.
#[test]
fn tcp_socket_options_as_socket2() {
    within(20, || {
        let s = TcpSocket::new_v4().unwrap();
        assert!(!s.reuseaddr().unwrap());
        s.set_reuseaddr(true).unwrap();
        assert!(s.reuseaddr().unwrap());
        s.set_reuseport(true).unwrap();
        assert!(s.reuseport().unwrap());
        s.set_recv_buffer_size(100_000).unwrap();
        assert!(s.recv_buffer_size().unwrap() >= 100_000);
        s.set_send_buffer_size(100_000).unwrap();
        assert!(s.send_buffer_size().unwrap() >= 100_000);
        s.set_nodelay(true).unwrap();
        assert!(s.nodelay().unwrap());
        let e = s.set_only_v6(true).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOPROTOOPT), "{e}");
        // An unbound socket that listens gets an ephemeral port.
        let l = s.listen(8).unwrap();
        assert_ne!(l.local_addr().unwrap().port(), 0);

        if std::net::TcpListener::bind("[::1]:0").is_err() {
            return;
        }
        let v6 = TcpSocket::new_v6().unwrap();
        v6.set_only_v6(true).unwrap();
        assert!(v6.only_v6().unwrap());
        v6.bind("[::]:0".parse().unwrap()).unwrap();
        let port = v6.local_addr().unwrap().port();
        let _v6l = v6.listen(8).unwrap();
        let v4 = TcpListener::bind(("0.0.0.0", port)).unwrap(); // same port, v4
        drop(v4);

        let dual = TcpSocket::new_v6().unwrap();
        dual.set_only_v6(false).unwrap();
        dual.bind("[::]:0".parse().unwrap()).unwrap();
        let port = dual.local_addr().unwrap().port();
        let dual = dual.listen(8).unwrap();
        assert_eq!(
            TcpListener::bind(("0.0.0.0", port)).unwrap_err().kind(),
            ErrorKind::AddrInUse
        );
        // A v4 client reaches the dual-stack listener as a mapped address.
        let _c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_s, peer) = dual.accept().unwrap();
        assert!(peer.is_ipv6(), "{peer}");
    })
}

/// Issue 14: a listener with a backlog of 1,024 takes 300 simultaneous
/// connects without the one-second SYN retransmit stall.
///
/// Timed, so in a process of its own: native speed even when the suite
/// runs under Valgrind (which does not follow the exec).
#[test]
fn backlog_takes_a_burst_of_connects() {
    if !util::is_child("backlog_takes_a_burst_of_connects") {
        return util::assert_child_passed(&util::run_child_with_limit(
            "backlog_takes_a_burst_of_connects",
            Duration::from_secs(60),
        ));
    }
    within(30, || {
        greenhack::run(|| {
            let s = TcpSocket::new_v4().unwrap();
            s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let l = s.listen(1024).unwrap();
            let addr = l.local_addr().unwrap();
            let start = Instant::now();
            let clients: Vec<_> = (0..300)
                .map(|_| greenhack::spawn(move || TcpStream::connect(addr).unwrap()))
                .collect();
            let conns: Vec<_> = clients.into_iter().map(|h| h.join().unwrap()).collect();
            let took = start.elapsed();
            assert_eq!(conns.len(), 300);
            assert!(took < Duration::from_millis(900), "{took:?}");
            for _ in 0..300 {
                l.accept().unwrap();
            }
        });
    })
}

// ---------------------------------------------------------------------------
// UDP
// ---------------------------------------------------------------------------

/// std: `recv_from` waits for a datagram (other greenlets run), `peek_from`
/// leaves it queued, a short buffer truncates it.
#[test]
fn udp_send_recv_peek_as_std() {
    within(20, || {
        greenhack::run(|| {
            let a = UdpSocket::bind("127.0.0.1:0").unwrap();
            let b = UdpSocket::bind("127.0.0.1:0").unwrap();
            let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
            let sender = greenhack::spawn(move || {
                greenhack::sleep(Duration::from_millis(20));
                a.send_to(b"0123456789", ba).unwrap();
                a
            });
            let mut buf = [0; 32];
            let (n, from) = b.peek_from(&mut buf).unwrap();
            assert_eq!((n, from), (10, aa));
            let mut short = [0; 4];
            let (n, from) = b.recv_from(&mut short).unwrap();
            assert_eq!((n, from, &short), (4, aa, b"0123"));
            let a = sender.join().unwrap();
            // Connected: send/recv/peek talk to the one peer.
            a.connect(ba).unwrap();
            b.connect(aa).unwrap();
            assert_eq!(a.peer_addr().unwrap(), ba);
            a.send(b"hi").unwrap();
            assert_eq!(b.peek(&mut buf).unwrap(), 2);
            assert_eq!(b.recv(&mut buf).unwrap(), 2);
            assert_eq!(&buf[..2], b"hi");
            // Unconnected peer_addr: NotConnected, as std.
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            assert_eq!(c.peer_addr().unwrap_err().kind(), ErrorKind::NotConnected);
            // recv with a read timeout: WouldBlock.
            c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            assert_eq!(
                c.recv_from(&mut buf).unwrap_err().kind(),
                ErrorKind::WouldBlock
            );
        });
    })
}

/// std (Linux): a connected UDP socket learns of a closed port through
/// ICMP, and its next `recv` fails with `ConnectionRefused`.
#[test]
fn udp_connected_to_closed_port_is_refused_as_std() {
    within(20, || {
        let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.connect(dead_addr).unwrap();
        s.send(b"x").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let std_kind = s.recv(&mut [0; 4]).unwrap_err().kind();

        let g = UdpSocket::bind("127.0.0.1:0").unwrap();
        g.connect(dead_addr).unwrap();
        g.send(b"x").unwrap();
        g.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let e = g.recv(&mut [0; 4]).unwrap_err();
        assert_eq!(e.kind(), std_kind, "{e}");
        assert_eq!(std_kind, ErrorKind::ConnectionRefused);
    })
}

// ---------------------------------------------------------------------------
// Unix sockets
// ---------------------------------------------------------------------------

/// std: connecting to a missing path is `NotFound`, to a socket file
/// nobody listens on `ConnectionRefused`; binding an existing path is
/// `AddrInUse`; a closed peer reads as `Ok(0)` and fails writes with
/// `BrokenPipe`.
#[test]
fn unix_errors_as_std() {
    within(20, || {
        let missing = sock_path("missing");
        let std_e = std::os::unix::net::UnixStream::connect(&missing).unwrap_err();
        let e = UnixStream::connect(&missing).unwrap_err();
        assert_eq!(e.kind(), std_e.kind());
        assert_eq!(e.kind(), ErrorKind::NotFound);

        let stale = sock_path("stale");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let std_e = std::os::unix::net::UnixStream::connect(&stale).unwrap_err();
        let e = UnixStream::connect(&stale).unwrap_err();
        assert_eq!(e.kind(), std_e.kind());
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
        assert_eq!(
            UnixListener::bind(&stale).unwrap_err().kind(),
            ErrorKind::AddrInUse
        );
        std::fs::remove_file(&stale).unwrap();

        let (mut a, b) = UnixStream::pair().unwrap();
        (&b).write_all(b"bye").unwrap();
        drop(b);
        let mut got = Vec::new();
        a.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"bye");
        assert_eq!(a.read(&mut [0; 4]).unwrap(), 0);
        assert_eq!(a.write(b"x").unwrap_err().kind(), ErrorKind::BrokenPipe);
    })
}

/// std: a Unix listener serves greenlets; `shutdown(Write)` ends the
/// peer's `read_to_end`; `into_std`/`from_std` round-trip.
#[test]
fn unix_stream_round_trip_as_std() {
    within(20, || {
        greenhack::run(|| {
            let p = sock_path("echo");
            let l = UnixListener::bind(&p).unwrap();
            let srv = greenhack::spawn(move || {
                let (s, _) = l.accept().unwrap();
                let mut req = Vec::new();
                (&s).read_to_end(&mut req).unwrap();
                (&s).write_all(&req).unwrap();
            });
            let c = UnixStream::connect(&p).unwrap();
            (&c).write_all(b"unix").unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            let std_c = c.into_std().unwrap();
            let mut c = UnixStream::from_std(std_c).unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).unwrap();
            assert_eq!(back, b"unix");
            srv.join().unwrap();
            std::fs::remove_file(&p).unwrap();
        });
    })
}

// ---------------------------------------------------------------------------
// Outside any loop
// ---------------------------------------------------------------------------

/// The net docs: on a plain thread, outside any greenlet, a socket behaves
/// as a blocking std socket; one made inside `run` keeps working after.
#[test]
fn sockets_on_a_plain_thread_block_as_std() {
    within(20, || {
        let (c, s) = greenhack::run(tcp_pair);
        let mut s = s.into_std().unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            s.write_all(b"late").unwrap();
        });
        let mut b = [0; 4];
        (&c).read_exact(&mut b).unwrap();
        assert_eq!(&b, b"late");
        writer.join().unwrap();
    })
}

/// The pair docs: on a tokio worker thread, outside any greenlet, a socket
/// call that would wait refuses with `Unsupported` and a message naming
/// the fix, instead of blocking the runtime.
#[test]
fn sockets_on_a_tokio_thread_refuse_with_the_fix() {
    within(20, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = TcpListener::bind("127.0.0.1:0").unwrap(); // never waits
            let e = l.accept().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
            assert!(e.to_string().contains("as_async"), "{e}");
        });
    })
}

// ---------------------------------------------------------------------------
// Runtime: N loops, hand-off, shutdown, errors
// ---------------------------------------------------------------------------

use greenhack::runtime::{Builder as RtBuilder, Handle};

/// Sets a flag when dropped: proves a greenlet's stack was unwound.
struct DropFlag(Arc<AtomicUsize>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Issue 14: a setup that panics on one loop is reported by `join` with its
/// payload; every loop is then stopped (handles refuse work) and nothing
/// hangs.
#[test]
fn runtime_setup_panic_is_surfaced_and_stops_all() {
    within(30, || {
        let rt = RtBuilder::new()
            .worker_threads(3)
            .build(|| {
                if Handle::try_current().unwrap().index() == 1 {
                    greenhack::sleep(Duration::from_millis(20));
                    panic!("setup of loop 1 failed");
                }
                // The others serve forever.
                loop {
                    greenhack::sleep(Duration::from_secs(3600));
                }
            })
            .unwrap();
        let handles: Vec<Handle> = rt.handles().to_vec();
        let err = rt.join().unwrap_err();
        assert_eq!(err.loops().len(), 1, "{err}");
        let l = &err.loops()[0];
        assert_eq!(l.index(), 1);
        assert!(l.is_panic());
        assert!(err.to_string().contains("setup of loop 1 failed"), "{err}");
        assert!(l.thread_name().ends_with("-1"));
        for h in &handles {
            assert!(!h.is_running(), "loop {} still running", h.index());
        }
        let payload = err.into_loops().remove(0).into_panic();
        assert_eq!(
            payload.downcast_ref::<&str>(),
            Some(&"setup of loop 1 failed")
        );
    })
}

/// Issue 14: setups that return errors are listed by `shutdown`, each with
/// its `io::Error`.
#[test]
fn runtime_setup_errors_are_reported() {
    within(30, || {
        let rt = RtBuilder::new()
            .worker_threads(2)
            .build(|| {
                greenhack::sleep(Duration::from_millis(5));
                Err(io::Error::new(ErrorKind::InvalidInput, "bad config"))
            })
            .unwrap();
        // Both setups fail on their own; then shutdown reports them.
        let deadline = Instant::now() + Duration::from_secs(10);
        while rt.handles().iter().any(Handle::is_running) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let err = rt.shutdown().unwrap_err();
        assert_eq!(err.loops().len(), 2, "{err}");
        for l in err.loops() {
            assert!(!l.is_panic());
            let e = l.setup_error().unwrap();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            assert_eq!(e.to_string(), "bad config");
        }
        assert!(err.to_string().contains("bad config"), "{err}");
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err);
        assert!(!boxed.to_string().is_empty());
    })
}

/// Issue 14: a handle used after its loop stopped reports it at once,
/// never hangs (`join` on a plain thread, `.await`, and `is_running`); its
/// closure is dropped, never run.
#[test]
fn runtime_handle_after_shutdown_errors() {
    within(30, || {
        let rt = RtBuilder::new().worker_threads(2).build(|| Ok(())).unwrap();
        let h = rt.handle(1).clone();
        assert!(h.is_running());
        assert_eq!(h.spawn(|| 5).join().unwrap(), 5);
        rt.shutdown().unwrap();
        assert!(!h.is_running());
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let e = h
            .spawn(move || r.store(true, Ordering::SeqCst))
            .join()
            .unwrap_err();
        assert!(e.is_stopped(), "{e}");
        let e = futures_executor::block_on(h.spawn(|| 1)).unwrap_err();
        assert!(e.is_stopped(), "{e}");
        // From inside another greenhack loop, too.
        let e = greenhack::run(|| h.spawn(|| 1).join()).unwrap_err();
        assert!(e.is_stopped());
        assert!(!ran.load(Ordering::SeqCst));
        assert!(Handle::try_current().is_none());
    })
}

/// Issue 14: a remote greenlet's panic comes back with its payload; cancel
/// unwinds it (destructors run); shutdown unwinds greenlets parked in
/// reads and closes their sockets, and joins every thread.
#[test]
fn runtime_remote_panic_cancel_and_shutdown_unwind() {
    if !util::is_child("runtime_remote_panic_cancel_and_shutdown_unwind") {
        return util::assert_child_passed(&util::run_child_with_limit(
            "runtime_remote_panic_cancel_and_shutdown_unwind",
            Duration::from_secs(60),
        ));
    }
    let fds_before = open_fds();
    let threads_before = thread_count();
    let rt = RtBuilder::new().worker_threads(2).build(|| Ok(())).unwrap();
    let e = rt
        .handle(0)
        .spawn(|| -> u32 { panic!("remote boom") })
        .join()
        .unwrap_err();
    assert!(e.is_panic());
    assert_eq!(e.into_panic().downcast_ref::<&str>(), Some(&"remote boom"));

    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let h = rt.handle(1).spawn(move || {
        let _f = DropFlag(d);
        greenhack::sleep(Duration::from_secs(3600));
    });
    std::thread::sleep(Duration::from_millis(30));
    h.cancel();
    let e = h.join().unwrap_err();
    assert!(e.is_cancelled(), "{e}");
    assert_eq!(dropped.load(Ordering::SeqCst), 1);

    // 200 greenlets parked in reads on the two loops.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let parked = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..200 {
        let (d, p) = (dropped.clone(), parked.clone());
        drop(rt.handle(i % 2).spawn(move || {
            let _f = DropFlag(d);
            let mut c = TcpStream::connect(addr).unwrap();
            p.fetch_add(1, Ordering::SeqCst);
            let _ = c.read(&mut [0; 1]);
            unreachable!("the peer never writes");
        }));
        clients.push(l.accept().unwrap().0);
    }
    while parked.load(Ordering::SeqCst) < 200 {
        std::thread::sleep(Duration::from_millis(5));
    }
    rt.shutdown().unwrap();
    assert_eq!(dropped.load(Ordering::SeqCst), 201);
    // Their sockets closed: every accepted end reads EOF.
    for mut c in clients {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(c.read(&mut [0; 1]).unwrap(), 0);
    }
    drop(l);
    assert_eq!(
        thread_count_settled(threads_before),
        threads_before,
        "loop threads not joined"
    );
    assert_eq!(open_fds(), fds_before, "descriptors leaked");
}

/// Issue 14: two loops share a `SO_REUSEPORT` port; hand-off moves accepted
/// connections (as std sockets) to another loop, where they are served.
#[test]
fn runtime_reuseport_and_hand_off() {
    within(60, || {
        let reserve = TcpSocket::new_v4().unwrap();
        reserve.set_reuseport(true).unwrap();
        reserve.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = reserve.local_addr().unwrap();
        let served = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let (ready_tx, ready) = mpsc::channel();
        let ready_tx = std::sync::Mutex::new(ready_tx);
        let s2 = served.clone();
        let rt = RtBuilder::new()
            .worker_threads(2)
            .build(move || {
                let me = Handle::try_current().unwrap().index();
                let s = TcpSocket::new_v4()?;
                s.set_reuseport(true)?;
                s.bind(addr)?;
                let l = s.listen(1024)?;
                ready_tx.lock().unwrap().send(()).unwrap();
                for conn in l.incoming() {
                    let conn = conn?;
                    s2[me].fetch_add(1, Ordering::Relaxed);
                    drop(greenhack::spawn(move || {
                        let mut buf = [0; 64];
                        while let Ok(n @ 1..) = (&conn).read(&mut buf) {
                            (&conn).write_all(&buf[..n]).unwrap();
                        }
                    }));
                }
                Ok(())
            })
            .unwrap();
        ready.recv().unwrap();
        ready.recv().unwrap();
        drop(reserve);
        let clients: Vec<_> = (0..64)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut c = std::net::TcpStream::connect(addr).unwrap();
                    let msg = format!("client {i}");
                    c.write_all(msg.as_bytes()).unwrap();
                    let mut back = vec![0; msg.len()];
                    c.read_exact(&mut back).unwrap();
                    assert_eq!(back, msg.as_bytes());
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        let (a, b) = (
            served[0].load(Ordering::Relaxed),
            served[1].load(Ordering::Relaxed),
        );
        assert_eq!(a + b, 64);
        assert!(a > 0 && b > 0, "one loop got no work: {a}/{b}");

        // Hand-off: an acceptor on loop 0 passes each connection to loop 1.
        let worker = rt.handle(1).clone();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let laddr = l.local_addr().unwrap();
        let acceptor = rt.handle(0).spawn(move || -> io::Result<()> {
            let l = TcpListener::from_std(l)?;
            for _ in 0..20 {
                let (c, _) = l.accept()?;
                let c = c.into_std()?;
                drop(worker.spawn(move || {
                    let c = TcpStream::from_std(c).unwrap();
                    let i = Handle::try_current().unwrap().index() as u8;
                    (&c).write_all(&[i]).unwrap();
                }));
            }
            Ok(())
        });
        for _ in 0..20 {
            let mut c = std::net::TcpStream::connect(laddr).unwrap();
            let mut b = [9];
            c.read_exact(&mut b).unwrap();
            assert_eq!(b[0], 1);
        }
        acceptor.join().unwrap().unwrap();
        rt.shutdown().unwrap();
    })
}

/// Issue 14: dropping a runtime without `shutdown` stops and joins it too.
#[test]
fn runtime_drop_stops_the_loops() {
    within(30, || {
        let rt = RtBuilder::new()
            .worker_threads(2)
            .build(|| {
                greenhack::sleep(Duration::from_secs(3600));
                Ok(())
            })
            .unwrap();
        let h = rt.handle(0).clone();
        drop(rt);
        assert!(!h.is_running());
    })
}

/// The builder's documented panic: zero loops.
#[test]
#[should_panic(expected = "at least one loop")]
fn runtime_zero_loops_panics() {
    RtBuilder::new().worker_threads(0);
}

// ---------------------------------------------------------------------------
// Hosted mode: greenhack inside tokio, on one thread
// ---------------------------------------------------------------------------

/// Issue 11: inside an `as_async` on tokio's `current_thread` runtime,
/// greenhack's sockets, `sleep`, `spawn` and `join` work, beside tokio's
/// timers.
#[test]
fn hosted_current_thread_sockets_sleep_spawn() {
    within(30, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let out = rt.block_on(greenhack::as_async(|| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let srv = greenhack::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let mut b = [0; 4];
                s.read_exact(&mut b).unwrap();
                greenhack::sleep(Duration::from_millis(10));
                s.write_all(&b).unwrap();
            });
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"host").unwrap();
            greenhack::exempt(tokio::time::sleep(Duration::from_millis(5)));
            let mut b = [0; 4];
            c.read_exact(&mut b).unwrap();
            srv.join().unwrap();
            b
        }));
        assert_eq!(&out, b"host");
    })
}

/// Issue 11: in a `LocalSet`, two `as_async` tasks talk over greenhack
/// sockets while a tokio task keeps ticking: greenhack's waits do not
/// block tokio's thread.
#[test]
fn hosted_local_set_two_tasks_and_a_tokio_ticker() {
    within(30, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let ticks = std::rc::Rc::new(std::cell::Cell::new(0u32));
            let t = ticks.clone();
            let ticker = tokio::task::spawn_local(async move {
                for _ in 0..5 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    t.set(t.get() + 1);
                }
            });
            let server = tokio::task::spawn_local(greenhack::as_async(move || {
                let (s, _) = l.accept().unwrap();
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line).unwrap();
                greenhack::sleep(Duration::from_millis(80));
                (&s).write_all(line.to_uppercase().as_bytes()).unwrap();
            }));
            let client = tokio::task::spawn_local(greenhack::as_async(move || {
                let c = TcpStream::connect(addr).unwrap();
                (&c).write_all(b"hosted\n").unwrap();
                let mut back = String::new();
                BufReader::new(&c).read_line(&mut back).unwrap();
                back
            }));
            let back = client.await.unwrap();
            server.await.unwrap();
            assert_eq!(back, "HOSTED\n");
            ticker.await.unwrap();
            assert_eq!(ticks.get(), 5);
        });
    })
}

/// Issue 11: a greenhack socket made inside a hosted `as_async` keeps
/// working after the tokio runtime is gone, on the plain thread (as a
/// blocking socket).
#[test]
fn socket_outlives_its_hosting_runtime() {
    within(30, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (c, s) = rt.block_on(greenhack::as_async(|| {
            let (c, s) = tcp_pair();
            greenhack::sleep(Duration::from_millis(1));
            (c, s)
        }));
        drop(rt);
        let s = s.into_std().unwrap();
        let w = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            (&s).write_all(b"after").unwrap();
        });
        let mut b = [0; 5];
        (&c).read_exact(&mut b).unwrap();
        assert_eq!(&b, b"after");
        greenhack::run(|| greenhack::sleep(Duration::from_millis(5)));
        w.join().unwrap();
    })
}

/// Issue 11, regression: in hosted mode a `greenhack::sleep` polled again
/// after an unrelated wake (here: the sockets' first readiness events,
/// which make the host poll the task) must still wake at its deadline. The
/// timer's re-registration did not renew the task's interest with the
/// host, so tokio slept forever.
#[test]
fn hosted_sleep_wakes_after_an_unrelated_wake() {
    within(20, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for _ in 0..3 {
            let start = Instant::now();
            let kept = rt.block_on(greenhack::as_async(|| {
                let pair = tcp_pair(); // no wait: loopback completes at once
                let unix = UnixStream::pair().unwrap();
                greenhack::sleep(Duration::from_millis(10));
                (pair, unix)
            }));
            assert!(start.elapsed() >= Duration::from_millis(10));
            drop(kept);
        }
    })
}

// ---------------------------------------------------------------------------
// greenhack::tokio::run: tokio under greenhack's loop
// ---------------------------------------------------------------------------

/// Issue 11: under `greenhack::tokio::run`, greenlets exempt tokio timers,
/// tokio sockets and tokio channels beside greenhack's own sockets, all on
/// the calling thread.
#[test]
fn tokio_run_mixes_both_worlds_on_one_thread() {
    if !util::is_child("tokio_run_mixes_both_worlds_on_one_thread") {
        return util::assert_child_passed(&util::run_child_with_limit(
            "tokio_run_mixes_both_worlds_on_one_thread",
            Duration::from_secs(60),
        ));
    }
    let me = std::thread::current().id();
    let threads_before = thread_count();
    let out = greenhack::tokio::run(move || {
        let tl = greenhack::exempt(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let taddr = tl.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(4);
        let tokio_server = greenhack::spawn(move || {
            assert_eq!(std::thread::current().id(), me);
            let (mut s, _) = greenhack::exempt(tl.accept()).unwrap();
            let mut b = [0; 5];
            greenhack::exempt(tokio::io::AsyncReadExt::read_exact(&mut s, &mut b)).unwrap();
            greenhack::exempt(tx.send(String::from_utf8(b.to_vec()).unwrap())).unwrap();
        });
        let gl = TcpListener::bind("127.0.0.1:0").unwrap();
        let gaddr = gl.local_addr().unwrap();
        let gh_server = greenhack::spawn(move || {
            assert_eq!(std::thread::current().id(), me);
            let (mut s, _) = gl.accept().unwrap();
            greenhack::exempt(tokio::time::sleep(Duration::from_millis(10)));
            s.write_all(b"green").unwrap();
        });
        let mut tc = greenhack::exempt(tokio::net::TcpStream::connect(taddr)).unwrap();
        greenhack::exempt(tokio::io::AsyncWriteExt::write_all(&mut tc, b"tokio")).unwrap();
        let from_tokio = greenhack::exempt(rx.recv()).unwrap();
        let mut gc = TcpStream::connect(gaddr).unwrap();
        greenhack::sleep(Duration::from_millis(5));
        let mut b = [0; 5];
        gc.read_exact(&mut b).unwrap();
        tokio_server.join().unwrap();
        gh_server.join().unwrap();
        assert_eq!(std::thread::current().id(), me);
        format!("{from_tokio}+{}", String::from_utf8_lossy(&b))
    });
    assert_eq!(out, "tokio+green");
    // No hidden second thread stayed behind (the lookup pool aside, which
    // only starts for host names).
    assert_eq!(thread_count_settled(threads_before), threads_before);
}

/// Issue 11: a tokio future used on a standalone loop with no tokio
/// underneath panics with tokio's message followed by a note that names
/// the fix (`greenhack::tokio::run`): for a future that panics when polled
/// (a tokio connect, exempted) and one that panics when created (a tokio
/// sleep); the panic's payload is tokio's, unchanged.
#[test]
fn tokio_future_on_standalone_loop_names_the_fix() {
    const NAME: &str = "tokio_future_on_standalone_loop_names_the_fix";
    if !util::is_child(NAME) {
        let out = util::run_child_with_limit(NAME, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(
            stderr.matches("there is no reactor running").count(),
            2,
            "{stderr}"
        );
        assert_eq!(
            stderr.matches("greenhack::tokio::run").count(),
            2,
            "the panics do not name the fix:\n{stderr}"
        );
        return;
    }
    greenhack::run(|| {
        let polled = greenhack::spawn(|| {
            let _ = greenhack::exempt(tokio::net::TcpStream::connect("127.0.0.1:9"));
        });
        let created = greenhack::spawn(|| {
            greenhack::exempt(tokio::time::sleep(Duration::from_millis(1)));
        });
        for h in [polled, created] {
            let e = h.join().unwrap_err();
            let p = e.into_panic();
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap();
            assert!(msg.contains("there is no reactor running"), "{msg}");
        }
    });
    // Under greenhack::tokio::run the same code works: no note there.
    greenhack::tokio::run(|| {
        greenhack::spawn(|| greenhack::exempt(tokio::time::sleep(Duration::from_millis(1))))
            .join()
            .unwrap();
    });
}

// ---------------------------------------------------------------------------
// The Send entry: spawn_sync on a multi-thread runtime
// ---------------------------------------------------------------------------

/// Issue 11 / tokio's `JoinHandle`: a panic in the closure comes back as a
/// `JoinError` carrying the payload.
#[test]
fn spawn_sync_panic_carries_payload() {
    within(30, || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let e = tokio::spawn(async {
                greenhack::tokio::spawn_sync(|| -> u8 { panic!("sync handler failed") }).await
            })
            .await
            .unwrap()
            .unwrap_err();
            assert!(e.is_panic());
            let p = e.into_panic();
            assert_eq!(p.downcast_ref::<&str>(), Some(&"sync handler failed"));
        });
    })
}

/// Issue 11: dropping the `Task` (here: a tokio timeout that gives up)
/// cancels and unwinds the greenlet: its destructors run and the tokio
/// future it waited on is dropped.
#[test]
fn spawn_sync_drop_cancels_and_unwinds() {
    within(30, || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dropped = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        rt.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..20 {
                let (d, s) = (dropped.clone(), started.clone());
                tasks.push(tokio::spawn(async move {
                    let work = greenhack::tokio::spawn_sync(move || {
                        let _f = DropFlag(d.clone());
                        s.fetch_add(1, Ordering::SeqCst);
                        if i % 2 == 0 {
                            greenhack::sleep(Duration::from_secs(3600));
                        } else {
                            // A tokio future held across the cancel.
                            struct OnDrop(Arc<AtomicUsize>);
                            impl Drop for OnDrop {
                                fn drop(&mut self) {
                                    self.0.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            let guard = OnDrop(d);
                            greenhack::exempt(async move {
                                let _g = guard;
                                tokio::time::sleep(Duration::from_secs(3600)).await
                            });
                        }
                    });
                    tokio::time::timeout(Duration::from_millis(100), work)
                        .await
                        .is_err()
                }));
            }
            for t in tasks {
                assert!(t.await.unwrap(), "timed out as it should");
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        // 20 DropFlags + 10 futures' guards.
        while dropped.load(Ordering::SeqCst) < 30 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(started.load(Ordering::SeqCst), 20);
        assert_eq!(dropped.load(Ordering::SeqCst), 30);
    })
}

/// Issue 11: the worker count is configurable; the closures run on that
/// many threads, never on the caller's, and greenhack's sockets work
/// inside them.
#[test]
fn pool_worker_count_and_sockets_inside() {
    within(30, || {
        let pool = greenhack::tokio::Pool::builder()
            .worker_threads(3)
            .thread_name("audw")
            .build()
            .unwrap();
        assert_eq!(pool.worker_threads(), 3);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let names = rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..30 {
                let pool = pool.clone();
                tasks.push(tokio::spawn(async move {
                    pool.spawn(|| {
                        let (c, s) = tcp_pair();
                        (&c).write_all(b"x").unwrap();
                        let mut b = [0];
                        (&s).read_exact(&mut b).unwrap();
                        greenhack::sleep(Duration::from_millis(20));
                        std::thread::current().name().unwrap().to_owned()
                    })
                    .await
                    .unwrap()
                }));
            }
            let mut names = Vec::new();
            for t in tasks {
                names.push(t.await.unwrap());
            }
            names
        });
        let mut distinct: Vec<_> = names.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() <= 3, "{distinct:?}");
        assert!(
            distinct.iter().all(|n| n.starts_with("audw-")),
            "{distinct:?}"
        );
    })
}

// ---------------------------------------------------------------------------
// tokio and futures-io traits on greenhack's sockets
// ---------------------------------------------------------------------------

mod async_traits {
    // Only the async traits in scope: with std's `Read`/`Write` too, the
    // method names are ambiguous (as the async_io docs say).
    use super::{Duration, TcpListener, TcpStream, UnixStream, io, tcp_pair, within};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

    /// tokio: `io::copy` over `io::split` halves echoes every byte;
    /// `AsyncBufReadExt::lines` reads lines; `shutdown` ends the peer's
    /// reads — on greenhack's standalone loop, no tokio runtime.
    #[test]
    fn tokio_copy_split_lines_on_standalone_loop() {
        within(30, || {
            greenhack::run(|| {
                let (c, s) = tcp_pair();
                let echo = greenhack::spawn(move || {
                    greenhack::exempt(async move {
                        let (mut r, mut w) = tokio::io::split(s);
                        let n = tokio::io::copy(&mut r, &mut w).await?;
                        AsyncWriteExt::shutdown(&mut w).await?;
                        Ok::<_, io::Error>(n)
                    })
                });
                let lines = greenhack::exempt(async move {
                    let mut c = c;
                    for i in 0..100 {
                        c.write_all(format!("line {i}\n").as_bytes()).await?;
                    }
                    AsyncWriteExt::shutdown(&mut c).await?;
                    let mut lines = tokio::io::BufReader::new(c).lines();
                    let mut out = Vec::new();
                    while let Some(l) = lines.next_line().await? {
                        out.push(l);
                    }
                    Ok::<_, io::Error>(out)
                })
                .unwrap();
                assert_eq!(lines.len(), 100);
                assert_eq!(lines[42], "line 42");
                let n = echo.join().unwrap().unwrap();
                assert_eq!(
                    n as usize,
                    (0..100).map(|i| format!("line {i}\n").len()).sum::<usize>()
                );
            });
        })
    }

    /// tokio: a task polling greenhack's `UnixStream` through `AsyncRead`
    /// directly (no `as_async`) on a `current_thread` runtime gets the data.
    #[test]
    fn tokio_task_reads_greenhack_socket_directly() {
        within(30, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (a, b) = UnixStream::pair().unwrap();
                let local = tokio::task::LocalSet::new();
                local
                    .run_until(async move {
                        let w = tokio::task::spawn_local(async move {
                            let mut a = a;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            a.write_all(b"direct").await.unwrap();
                        });
                        let mut b = b;
                        let mut buf = [0; 6];
                        b.read_exact(&mut buf).await.unwrap();
                        assert_eq!(&buf, b"direct");
                        w.await.unwrap();
                    })
                    .await;
            });
        })
    }

    /// futures-io: `AsyncReadExt::read_to_end` and `AsyncWriteExt::close`
    /// over greenhack's sockets.
    #[test]
    fn futures_io_read_to_end_and_close() {
        use futures_util::io::AsyncWriteExt as _;
        within(30, || {
            greenhack::run(|| {
                let (c, s) = tcp_pair();
                let w = greenhack::spawn(move || {
                    greenhack::exempt(async move {
                        let mut s = s;
                        futures_util::io::AsyncWriteExt::write_all(&mut s, b"futures").await?;
                        s.close().await
                    })
                });
                let got = greenhack::exempt(async move {
                    let mut c = c;
                    let mut v = Vec::new();
                    futures_util::io::AsyncReadExt::read_to_end(&mut c, &mut v).await?;
                    Ok::<_, io::Error>(v)
                })
                .unwrap();
                assert_eq!(got, b"futures");
                w.join().unwrap().unwrap();
            });
        })
    }

    /// The async_io docs: hyper 1 server and client over greenhack's
    /// sockets on the standalone loop, through `hyper_util::rt::TokioIo`.
    #[test]
    fn hyper_over_greenhack_sockets() {
        use http_body_util::{BodyExt, Full};
        use hyper::body::{Bytes, Incoming};
        use hyper::{Request, Response};
        use hyper_util::rt::TokioIo;
        within(30, || {
            greenhack::run(|| {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = l.local_addr().unwrap();
                let server = greenhack::spawn(move || {
                    let (s, _) = l.accept().unwrap();
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        let mut v = b"echo: ".to_vec();
                        v.extend_from_slice(&body);
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(v))))
                    });
                    greenhack::exempt(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(s), svc),
                    )
                });
                let c = TcpStream::connect(addr).unwrap();
                let (mut sender, conn) = greenhack::exempt(
                    hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(c)),
                )
                .unwrap();
                let conn = greenhack::spawn(move || greenhack::exempt(conn));
                for i in 0..3 {
                    let req = Request::post("/")
                        .header("host", "x")
                        .body(Full::new(Bytes::from(format!("req {i}"))))
                        .unwrap();
                    let resp = greenhack::exempt(sender.send_request(req)).unwrap();
                    assert_eq!(resp.status(), 200);
                    let body = greenhack::exempt(resp.into_body().collect())
                        .unwrap()
                        .to_bytes();
                    assert_eq!(&body[..], format!("echo: req {i}").as_bytes());
                }
                drop(sender);
                conn.join().unwrap().unwrap();
                server.join().unwrap().unwrap();
            });
        })
    }
}

// ---------------------------------------------------------------------------
// More of std's surface
// ---------------------------------------------------------------------------

/// std: an address list is tried in order (the first that connects wins);
/// an empty list, or a name that does not resolve, fails with std's error.
#[test]
fn address_lists_and_resolution_errors_as_std() {
    within(30, || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let good = l.local_addr().unwrap();
        let (_held, refused) = util::closed_port();
        let addrs = [refused, good];
        let c = TcpStream::connect(&addrs[..]).unwrap();
        assert_eq!(c.peer_addr().unwrap(), good);
        let empty: &[SocketAddr] = &[];
        let std_e = std::net::TcpStream::connect(empty).unwrap_err();
        let e = TcpStream::connect(empty).unwrap_err();
        assert_eq!((e.kind(), e.to_string()), (std_e.kind(), std_e.to_string()));
        let std_e = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .send_to(b"x", empty)
            .unwrap_err();
        let e = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .send_to(b"x", empty)
            .unwrap_err();
        assert_eq!((e.kind(), e.to_string()), (std_e.kind(), std_e.to_string()));
        let name = "no-such-host.invalid:80";
        let std_e = std::net::TcpStream::connect(name).unwrap_err();
        let e = TcpStream::connect(name).unwrap_err();
        assert_eq!((e.kind(), e.to_string()), (std_e.kind(), std_e.to_string()));
        let e = greenhack::run(|| TcpStream::connect(name)).unwrap_err();
        assert_eq!(e.kind(), std_e.kind());
    })
}

/// std: vectored reads and writes, `set_nodelay`, `set_ttl`, `take_error`,
/// `try_clone` reading while the original writes; tokio's `readable` +
/// `try_read` pattern.
#[test]
fn stream_odds_and_ends_as_std() {
    within(20, || {
        greenhack::run(|| {
            let (c, s) = tcp_pair();
            let n = (&c)
                .write_vectored(&[io::IoSlice::new(b"ab"), io::IoSlice::new(b"cd")])
                .unwrap();
            assert_eq!(n, 4);
            let (mut x, mut y) = ([0; 1], [0; 3]);
            let mut got = 0;
            while got < 4 {
                let mut bufs = [io::IoSliceMut::new(&mut x), io::IoSliceMut::new(&mut y)];
                got += (&s).read_vectored(&mut bufs).unwrap();
                if got < 4 {
                    unreachable!("loopback delivers 4 bytes at once");
                }
            }
            assert_eq!((&x, &y), (b"a", b"bcd"));
            c.set_nodelay(true).unwrap();
            assert!(c.nodelay().unwrap());
            c.set_ttl(33).unwrap();
            assert_eq!(c.ttl().unwrap(), 33);
            assert!(c.take_error().unwrap().is_none());
            assert_eq!(
                s.try_read(&mut [0; 4]).unwrap_err().kind(),
                ErrorKind::WouldBlock
            );
            let reader = s.try_clone().unwrap();
            let r = greenhack::spawn(move || {
                reader.readable().unwrap();
                let mut b = [0; 8];
                loop {
                    match reader.try_read(&mut b) {
                        Ok(n) => break b[..n].to_vec(),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => reader.readable().unwrap(),
                        Err(e) => panic!("{e}"),
                    }
                }
            });
            greenhack::sleep(Duration::from_millis(10));
            (&c).write_all(b"late").unwrap();
            assert_eq!(r.join().unwrap(), b"late");
            drop(s);
        });
    })
}

/// The UnixStream docs: a connect to a listener whose backlog is full
/// waits (std blocks) and completes once the listener accepts.
#[test]
fn unix_connect_waits_for_a_full_backlog() {
    within(30, || {
        let p = sock_path("backlog");
        let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        // Fill the backlog with non-blocking connects until EAGAIN.
        let mut fillers = Vec::new();
        let addr = std::os::unix::net::SocketAddr::from_pathname(&p).unwrap();
        let _ = addr;
        loop {
            // SAFETY: plain system calls on a descriptor we own; the
            // sockaddr_un is zeroed and filled within its bounds.
            let fd =
                unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
            assert!(fd >= 0);
            let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
            let bytes = p.as_os_str().as_encoded_bytes();
            for (d, s) in sun.sun_path.iter_mut().zip(bytes) {
                *d = *s as libc::c_char;
            }
            // SAFETY: `sun` is a valid sockaddr_un.
            let r = unsafe {
                libc::connect(
                    fd,
                    (&raw const sun).cast(),
                    size_of::<libc::sockaddr_un>() as libc::socklen_t,
                )
            };
            // SAFETY: `fd` is ours.
            let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
            if r == -1 {
                assert_eq!(
                    io::Error::last_os_error().raw_os_error(),
                    Some(libc::EAGAIN)
                );
                break;
            }
            fillers.push(fd);
            assert!(fillers.len() < 100_000, "backlog never filled");
        }
        let n = fillers.len();
        greenhack::run(|| {
            let p2 = p.clone();
            let start = Instant::now();
            let connecting = greenhack::spawn(move || UnixStream::connect(&p2));
            greenhack::sleep(Duration::from_millis(50));
            assert!(!connecting.is_finished(), "connect did not wait");
            l.set_nonblocking(true).unwrap();
            for _ in 0..n {
                l.accept().unwrap();
            }
            let c = connecting.join().unwrap().unwrap();
            assert!(start.elapsed() >= Duration::from_millis(50));
            drop(c);
        });
        std::fs::remove_file(&p).unwrap();
    })
}

// ---------------------------------------------------------------------------
// More of the runtime
// ---------------------------------------------------------------------------

/// Issue 14: the default runtime has one loop per available core; loop
/// threads are named and, when asked, pinned to distinct CPUs; a loop can
/// hand work to itself (its `join` from a greenlet lets the loop run);
/// handles work from a tokio task (`.await`).
#[test]
fn runtime_defaults_names_pinning_and_self_hand_off() {
    within(30, || {
        let cores = std::thread::available_parallelism().unwrap().get();
        let rt = greenhack::Runtime::new(|| Ok(())).unwrap();
        assert_eq!(rt.handles().len(), cores);
        for (i, h) in rt.handles().iter().enumerate() {
            assert_eq!(h.index(), i);
        }
        let dbg = format!("{rt:?} {:?}", rt.handle(0));
        assert!(dbg.contains("greenhack-loop-0"), "{dbg}");
        rt.shutdown().unwrap();

        let rt = RtBuilder::new()
            .worker_threads(2)
            .thread_name("audpin")
            .pin_threads(true)
            .build(|| Ok(()))
            .unwrap();
        let cpus: Vec<String> = (0..2)
            .map(|i| {
                rt.handle(i)
                    .spawn(|| {
                        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
                        let line = status
                            .lines()
                            .find(|l| l.starts_with("Cpus_allowed_list"))
                            .unwrap()
                            .to_owned();
                        let name = std::thread::current().name().unwrap().to_owned();
                        format!("{name} {line}")
                    })
                    .join()
                    .unwrap()
            })
            .collect();
        assert!(cpus[0].starts_with("audpin-0 "), "{cpus:?}");
        for c in &cpus {
            let list = c.split_whitespace().last().unwrap();
            assert!(
                list.parse::<usize>().is_ok(),
                "not pinned to one CPU: {cpus:?}"
            );
        }
        if cores > 1 {
            assert_ne!(
                cpus[0].split_whitespace().last(),
                cpus[1].split_whitespace().last(),
                "{cpus:?}"
            );
        }
        // Self hand-off from a greenlet: join waits on the loop, which
        // runs the new greenlet meanwhile.
        let v = rt
            .handle(0)
            .spawn(|| {
                let me = Handle::try_current().unwrap();
                me.spawn(|| 40).join().unwrap() + 2
            })
            .join()
            .unwrap();
        assert_eq!(v, 42);
        // From a tokio multi-thread task: await the handle.
        let h = rt.handle(1).clone();
        let trt = tokio::runtime::Runtime::new().unwrap();
        let v = trt.block_on(async move { tokio::spawn(async move { h.spawn(|| 7).await }).await });
        assert_eq!(v.unwrap().unwrap(), 7);
        rt.shutdown().unwrap();
    })
}

/// The Builder docs: after one loop's setup fails, "the other loops keep
/// running" until `join`/`shutdown`, which report the failure.
#[test]
fn runtime_other_loops_keep_running_after_a_setup_failure() {
    within(30, || {
        let rt = RtBuilder::new()
            .worker_threads(2)
            .build(|| {
                if Handle::try_current().unwrap().index() == 0 {
                    return Err(io::Error::other("loop 0 cannot start"));
                }
                Ok(())
            })
            .unwrap();
        let h0 = rt.handle(0).clone();
        let deadline = Instant::now() + Duration::from_secs(5);
        while h0.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!h0.is_running());
        assert!(h0.spawn(|| 1).join().unwrap_err().is_stopped());
        assert_eq!(rt.handle(1).spawn(|| 2).join().unwrap(), 2);
        let err = rt.join().unwrap_err();
        assert_eq!(err.loops().len(), 1);
        assert_eq!(err.loops()[0].index(), 0);
        assert!(err.to_string().contains("loop 0 cannot start"), "{err}");
    })
}

// ---------------------------------------------------------------------------
// More of hosted mode and the Send entry
// ---------------------------------------------------------------------------

/// Issue 11: a greenlet spawned inside a hosted `as_async` outlives it, and
/// its `JoinHandle` awaited by tokio completes.
#[test]
fn hosted_join_handle_awaited_by_tokio() {
    within(30, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let h = rt.block_on(greenhack::as_async(|| {
            greenhack::spawn(|| {
                greenhack::sleep(Duration::from_millis(20));
                let (c, s) = tcp_pair();
                (&c).write_all(b"k").unwrap();
                let mut b = [0];
                (&s).read_exact(&mut b).unwrap();
                b[0]
            })
        }));
        assert_eq!(rt.block_on(h).unwrap(), b'k');
    })
}

/// Issue 11: `spawn_sync` off a multi-thread runtime (a current-thread
/// runtime, a plain `block_on`), nested calls staying on their worker,
/// `detach` letting the closure finish, a non-string panic payload.
#[test]
fn spawn_sync_elsewhere_nested_detach_and_payloads() {
    within(30, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(greenhack::tokio::spawn_sync(|| 3)).unwrap(), 3);
        assert_eq!(
            futures_executor::block_on(greenhack::tokio::spawn_sync(|| 4)).unwrap(),
            4
        );
        let pool = greenhack::tokio::Pool::builder()
            .worker_threads(2)
            .build()
            .unwrap();
        let p2 = pool.clone();
        let (outer, inner) = futures_executor::block_on(pool.spawn(move || {
            let here = std::thread::current().id();
            let inner = greenhack::exempt(p2.spawn(|| std::thread::current().id())).unwrap();
            (here, inner)
        }))
        .unwrap();
        assert_eq!(outer, inner);
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        pool.spawn(move || {
            greenhack::sleep(Duration::from_millis(20));
            d.store(true, Ordering::SeqCst);
        })
        .detach();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            done.load(Ordering::SeqCst),
            "a detached closure was cancelled"
        );
        let e =
            futures_executor::block_on(pool.spawn(|| std::panic::panic_any(42u32))).unwrap_err();
        assert_eq!(e.into_panic().downcast_ref::<u32>(), Some(&42));
        let t = pool.spawn(|| greenhack::sleep(Duration::from_secs(3600)));
        let abort = t.abort_handle();
        assert!(!abort.is_finished());
        abort.abort();
        assert!(futures_executor::block_on(t).unwrap_err().is_cancelled());
        assert!(abort.is_finished());
    })
}

/// tokio: `AsyncRead`/`AsyncWrite` on `&TcpStream`: one task copies from a
/// shared reference while the same socket writes through another.
#[test]
fn tokio_traits_on_shared_references() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(30, || {
        greenhack::run(|| {
            let (c, s) = tcp_pair();
            let echo = greenhack::spawn(move || {
                greenhack::exempt(async {
                    let (mut r, mut w) = (&s, &s);
                    let mut buf = [0; 4];
                    AsyncReadExt::read_exact(&mut r, &mut buf).await?;
                    AsyncWriteExt::write_all(&mut w, &buf).await
                })
            });
            greenhack::exempt(async {
                let mut w = &c;
                AsyncWriteExt::write_all(&mut w, b"refs").await?;
                let mut r = &c;
                let mut b = [0; 4];
                AsyncReadExt::read_exact(&mut r, &mut b).await?;
                assert_eq!(&b, b"refs");
                Ok::<_, io::Error>(())
            })
            .unwrap();
            echo.join().unwrap().unwrap();
        });
    })
}

/// std: `shutdown(Read)` or `shutdown(Both)` from elsewhere ends a read
/// that waits on the same socket (it returns `Ok(0)`), the usual way to
/// stop a blocked reader.
#[test]
fn shutdown_from_elsewhere_ends_a_waiting_read_as_std() {
    within(20, || {
        greenhack::run(|| {
            for how in [Shutdown::Read, Shutdown::Both] {
                let (c, _s) = tcp_pair();
                let c = std::rc::Rc::new(c);
                let c2 = c.clone();
                let reader = greenhack::spawn(move || (&*c2).read(&mut [0; 8]));
                greenhack::sleep(Duration::from_millis(20));
                assert!(!reader.is_finished());
                c.shutdown(how).unwrap();
                assert_eq!(reader.join().unwrap().unwrap(), 0, "{how:?}");
            }
        });
    })
}

/// std: data followed at once by the peer's close — read the data (a short
/// read), then `Ok(0)` at once, blocking-style and through tokio's traits.
#[test]
fn data_then_close_before_the_first_read() {
    within(20, || {
        greenhack::run(|| {
            let (c, s) = tcp_pair();
            (&s).write_all(b"tail").unwrap();
            drop(s);
            std::thread::sleep(Duration::from_millis(20)); // both arrived
            let mut buf = [0; 64];
            assert_eq!((&c).read(&mut buf).unwrap(), 4);
            assert_eq!((&c).read(&mut buf).unwrap(), 0);

            let (c, s) = tcp_pair();
            (&s).write_all(b"tail").unwrap();
            drop(s);
            std::thread::sleep(Duration::from_millis(20));
            let n = greenhack::exempt(async {
                let mut c = &c;
                let mut buf = [0; 64];
                let a = tokio::io::AsyncReadExt::read(&mut c, &mut buf).await?;
                let b = tokio::io::AsyncReadExt::read(&mut c, &mut buf).await?;
                Ok::<_, io::Error>((a, b))
            })
            .unwrap();
            assert_eq!(n, (4, 0));
        });
    })
}

/// Issue 11: in hosted mode a host-name connect (the lookup on the pool),
/// a read timeout, `greenhack::timeout` and `yield_now` all work.
#[test]
fn hosted_lookup_timeouts_and_yield() {
    within(30, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(greenhack::as_async(|| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            let c = TcpStream::connect(("localhost", port)).unwrap();
            let (_s, _) = l.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
            let start = Instant::now();
            let e = (&c).read(&mut [0; 4]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::WouldBlock);
            assert!(start.elapsed() >= Duration::from_millis(25));
            let r = greenhack::timeout(Duration::from_millis(20), || {
                greenhack::sleep(Duration::from_secs(3600))
            });
            assert!(r.is_err());
            let h = greenhack::spawn(|| {
                for _ in 0..3 {
                    greenhack::yield_now();
                }
                1
            });
            greenhack::yield_now();
            assert_eq!(h.join().unwrap(), 1);
            // In a spawned greenlet too.
            greenhack::spawn(move || TcpStream::connect(("localhost", port)).map(drop))
                .join()
                .unwrap()
                .unwrap();
        }));
    })
}

/// Issue 11 / `as_async` docs: dropping a hosted `AsAsync` suspended in a
/// greenhack socket read (a tokio timeout gives up) unwinds its stack and
/// closes its socket.
#[test]
fn hosted_as_async_dropped_mid_read_unwinds() {
    within(30, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let dropped = Arc::new(AtomicUsize::new(0));
        let d = dropped.clone();
        let r = rt.block_on(async move {
            tokio::time::timeout(
                Duration::from_millis(50),
                greenhack::as_async(move || {
                    let _f = DropFlag(d);
                    let c = TcpStream::connect(addr).unwrap();
                    let _ = (&c).read(&mut [0; 1]);
                    unreachable!("nobody writes");
                }),
            )
            .await
        });
        assert!(r.is_err());
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(s.read(&mut [0; 1]).unwrap(), 0, "socket not closed");
    })
}

/// Issue 11: a `Task` dropped while its closure waits in a greenhack read
/// unwinds it on its worker: the socket closes (the peer reads EOF).
#[test]
fn spawn_sync_drop_closes_the_closures_socket() {
    within(30, || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let task = greenhack::tokio::spawn_sync(move || {
            let c = TcpStream::connect(addr).unwrap();
            let _ = (&c).read(&mut [0; 1]);
        });
        let (mut s, _) = l.accept().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!task.is_finished());
        drop(task);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(s.read(&mut [0; 1]).unwrap(), 0, "socket not closed");
    })
}

/// The Pool docs: dropping the last handle lets running closures finish
/// (their tasks still complete), then the workers exit.
#[test]
fn pool_drop_finishes_running_closures() {
    if !util::is_child("pool_drop_finishes_running_closures") {
        return util::assert_child_passed(&util::run_child_with_limit(
            "pool_drop_finishes_running_closures",
            Duration::from_secs(30),
        ));
    }
    let threads_before = thread_count();
    let pool = greenhack::tokio::Pool::builder()
        .worker_threads(2)
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            pool.spawn(move || {
                greenhack::sleep(Duration::from_millis(30));
                i
            })
        })
        .collect();
    drop(pool);
    let got: Vec<u32> = tasks
        .into_iter()
        .map(|t| futures_executor::block_on(t).unwrap())
        .collect();
    assert_eq!(got, [0, 1, 2, 3]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while thread_count() > threads_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        thread_count_settled(threads_before),
        threads_before,
        "workers did not exit"
    );
}

/// The `greenhack::tokio::run` docs: called inside a tokio runtime it
/// panics (tokio refuses a runtime within a runtime) — a panic the caller
/// can catch, not an abort, and the thread stays usable.
#[test]
fn tokio_run_inside_tokio_panics_cleanly() {
    if !util::is_child("tokio_run_inside_tokio_panics_cleanly") {
        return util::assert_child_passed(&util::run_child_with_limit(
            "tokio_run_inside_tokio_panics_cleanly",
            Duration::from_secs(30),
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r =
        rt.block_on(async { std::panic::catch_unwind(|| greenhack::tokio::run(|| 1)).is_err() });
    assert!(r, "greenhack::tokio::run inside tokio did not panic");
    drop(rt);
    // The thread still runs either kind of loop.
    assert_eq!(greenhack::tokio::run(|| 2), 2);
    assert_eq!(greenhack::run(|| 3), 3);
}

/// Issue 14: a remote greenlet's panic, unobserved (its handle dropped),
/// does not stop its loop.
#[test]
fn runtime_detached_panic_leaves_the_loop_running() {
    within(30, || {
        let rt = RtBuilder::new().worker_threads(1).build(|| Ok(())).unwrap();
        drop(rt.handle(0).spawn(|| panic!("unobserved")));
        std::thread::sleep(Duration::from_millis(20));
        assert!(rt.handle(0).is_running());
        assert_eq!(rt.handle(0).spawn(|| 1).join().unwrap(), 1);
        rt.shutdown().unwrap();
    })
}

/// Issue 11: one thread hosted by a tokio runtime, then (that runtime
/// dropped) by another, then under `greenhack::tokio::run` twice: each
/// time greenhack's sockets and timers work, and sockets made under the
/// first host keep working under the next.
#[test]
fn hosts_in_succession_on_one_thread() {
    within(30, || {
        let make = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let rt = make();
        let (c, s) = rt.block_on(greenhack::as_async(|| {
            let p = tcp_pair();
            greenhack::sleep(Duration::from_millis(5));
            p
        }));
        drop(rt);
        let rt = make();
        let got = rt.block_on(greenhack::as_async(move || {
            let w = greenhack::spawn(move || {
                greenhack::sleep(Duration::from_millis(10));
                (&s).write_all(b"next host").unwrap();
            });
            let mut b = [0; 9];
            (&c).read_exact(&mut b).unwrap();
            w.join().unwrap();
            b
        }));
        assert_eq!(&got, b"next host");
        drop(rt);
        for _ in 0..2 {
            let v = greenhack::tokio::run(|| {
                greenhack::exempt(tokio::time::sleep(Duration::from_millis(2)));
                let (c, s) = tcp_pair();
                (&s).write_all(b"x").unwrap();
                let mut b = [0];
                (&c).read_exact(&mut b).unwrap();
                greenhack::sleep(Duration::from_millis(2));
                b[0]
            });
            assert_eq!(v, b'x');
        }
        let rt = make();
        rt.block_on(greenhack::as_async(|| {
            greenhack::sleep(Duration::from_millis(2))
        }));
    })
}

/// std: `send` on an unconnected UDP socket fails as std's does.
#[test]
fn udp_send_unconnected_as_std() {
    let std_e = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send(b"x")
        .unwrap_err();
    let e = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send(b"x")
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.raw_os_error()),
        (std_e.kind(), std_e.raw_os_error())
    );
}

/// Issue 11, as a user writes it: an axum handler calls sync code through
/// `spawn_sync`; the sync code waits 50 ms on a tokio timer. 200 concurrent
/// requests are all answered correctly, in about one wait, not 200.
/// Timed, so in a process of its own (see the backlog test).
#[test]
fn axum_sync_handler_serves_concurrent_requests() {
    if !util::is_child("axum_sync_handler_serves_concurrent_requests") {
        return util::assert_child_passed(&util::run_child_with_limit(
            "axum_sync_handler_serves_concurrent_requests",
            Duration::from_secs(60),
        ));
    }
    use axum::extract::Path;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn food_delivery(id: u32) -> String {
        // Plain sync code; only this greenlet waits.
        greenhack::exempt(tokio::time::sleep(Duration::from_millis(50)));
        format!("order {id} delivered")
    }

    async fn handler(Path(id): Path<u32>) -> String {
        greenhack::tokio::spawn_sync(move || food_delivery(id))
            .await
            .unwrap()
    }

    within(60, || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let app = axum::Router::new().route("/order/{id}", axum::routing::get(handler));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            // Warm the pool (its workers start on first use).
            handler(Path(0)).await;
            let start = Instant::now();
            let clients: Vec<_> = (0..200u32)
                .map(|i| {
                    tokio::spawn(async move {
                        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                        let req = format!(
                            "GET /order/{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                        );
                        c.write_all(req.as_bytes()).await.unwrap();
                        let mut resp = String::new();
                        c.read_to_string(&mut resp).await.unwrap();
                        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
                        assert!(resp.ends_with(&format!("order {i} delivered")), "{resp}");
                    })
                })
                .collect();
            for c in clients {
                c.await.unwrap();
            }
            let took = start.elapsed();
            assert!(took < Duration::from_secs(3), "{took:?} for 200 × 50 ms");
        });
    })
}

/// The README: under an executor that cannot host greenhack's loop
/// (`futures::executor::block_on`), a socket wait fails at once with
/// `Unsupported` and `sleep` panics, naming the alternative: never a hang.
#[test]
fn foreign_executor_refuses_never_hangs() {
    within(20, || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let e = futures_executor::block_on(greenhack::as_async(move || l.accept().map(drop)))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(e.to_string().contains("exempt"), "{e}");
        let p = std::panic::catch_unwind(|| {
            futures_executor::block_on(greenhack::as_async(|| {
                greenhack::sleep(Duration::from_millis(1))
            }))
        })
        .unwrap_err();
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap();
        assert!(msg.contains("exempt("), "{msg}");
    })
}

/// tokio: `copy_bidirectional` between a greenhack socket and a tokio
/// socket — a proxy greenlet under `greenhack::tokio::run`.
#[test]
fn proxy_between_greenhack_and_tokio_sockets() {
    within(30, || {
        greenhack::tokio::run(|| {
            // The upstream: a tokio echo server.
            let up = greenhack::exempt(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
            let up_addr = up.local_addr().unwrap();
            let upstream = greenhack::spawn(move || {
                greenhack::exempt(async move {
                    let (mut s, _) = up.accept().await?;
                    let (mut r, mut w) = s.split();
                    tokio::io::copy(&mut r, &mut w).await
                })
            });
            // The proxy: greenhack's listener, tokio's client socket.
            let front = TcpListener::bind("127.0.0.1:0").unwrap();
            let front_addr = front.local_addr().unwrap();
            let proxy = greenhack::spawn(move || {
                let (mut down, _) = front.accept().unwrap();
                let mut upc = greenhack::exempt(tokio::net::TcpStream::connect(up_addr)).unwrap();
                greenhack::exempt(tokio::io::copy_bidirectional(&mut down, &mut upc))
            });
            let c = TcpStream::connect(front_addr).unwrap();
            let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
            let p2 = payload.clone();
            let c2 = c.try_clone().unwrap();
            let writer = greenhack::spawn(move || {
                (&c2).write_all(&p2).unwrap();
                c2.shutdown(Shutdown::Write).unwrap();
            });
            let mut back = Vec::new();
            (&c).read_to_end(&mut back).unwrap();
            writer.join().unwrap();
            assert!(back == payload, "proxied bytes differ");
            let (a, b) = proxy.join().unwrap().unwrap();
            assert_eq!((a, b), (200_000, 200_000));
            assert_eq!(upstream.join().unwrap().unwrap(), 200_000);
        });
    })
}

/// The `accept` docs: running out of descriptors is returned to that
/// caller (`EMFILE`, as std reports it); the connection stays queued and
/// the next `accept`, once a descriptor is free, takes it at once.
#[test]
fn accept_out_of_descriptors_as_documented() {
    if !util::is_child("accept_out_of_descriptors_as_documented") {
        return util::assert_child_passed(&util::run_child_with_limit(
            "accept_out_of_descriptors_as_documented",
            Duration::from_secs(30),
        ));
    }
    greenhack::run(|| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        // Lower the limit to what is open now, plus nothing.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid rlimit to fill.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        let old = lim;
        let mut hog = Vec::new();
        let highest = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap();
        lim.rlim_cur = highest + 8;
        // SAFETY: as above.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
        while let Ok(f) = std::fs::File::open("/dev/null") {
            hog.push(f);
        }
        let e = l.accept().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
        // The loop still works meanwhile.
        greenhack::sleep(Duration::from_millis(1));
        hog.pop();
        let start = Instant::now();
        let (s, peer) = l.accept().unwrap();
        assert!(start.elapsed() < Duration::from_millis(500));
        assert_eq!(peer, client.local_addr().unwrap());
        drop((s, hog));
        // SAFETY: as above.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) }, 0);
    });
}

/// The `Handle::spawn` docs: work queued on a loop that stops before
/// running it reports the stop, and its closure is dropped (its captures
/// with it), never run.
#[test]
fn runtime_queued_work_dropped_at_shutdown() {
    within(30, || {
        let rt = RtBuilder::new()
            .worker_threads(1)
            .build(|| {
                // Blocks the loop's thread: queued work waits.
                std::thread::sleep(Duration::from_millis(200));
                Ok(())
            })
            .unwrap();
        let dropped = Arc::new(AtomicUsize::new(0));
        let ran = Arc::new(AtomicBool::new(false));
        let (d, r) = (DropFlag(dropped.clone()), ran.clone());
        let h = rt.handle(0).spawn(move || {
            let _d = d;
            r.store(true, Ordering::SeqCst);
        });
        rt.shutdown().unwrap();
        let e = h.join();
        // Either it ran before the stop signal was seen, or it never ran:
        // never lost.
        match e {
            Ok(()) => assert!(ran.load(Ordering::SeqCst)),
            Err(e) => {
                assert!(e.is_stopped(), "{e}");
                assert!(!ran.load(Ordering::SeqCst));
            }
        }
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    })
}

/// tokio's `spawn` semantics, which greenhack's `spawn` follows: a greenlet
/// spawned (and detached) inside a hosted `as_async` runs to its end after
/// that `as_async` returned, while the runtime keeps running other tasks.
#[test]
fn hosted_detached_greenlet_outlives_its_as_async() {
    within(30, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        rt.block_on(async move {
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async move {
                    tokio::task::spawn_local(greenhack::as_async(move || {
                        let d2 = d.clone();
                        drop(greenhack::spawn(move || {
                            greenhack::sleep(Duration::from_millis(20));
                            d2.fetch_add(1, Ordering::SeqCst);
                        }));
                        let (c, s) = tcp_pair();
                        drop(greenhack::spawn(move || {
                            let mut b = [0; 2];
                            (&s).read_exact(&mut b).unwrap();
                            d.fetch_add(1, Ordering::SeqCst);
                        }));
                        c
                    }))
                    .await
                    .map(|c| {
                        std::thread::sleep(Duration::from_millis(5));
                        c.into_std().unwrap().write_all(b"go").unwrap();
                    })
                    .unwrap();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                })
                .await;
        });
        assert_eq!(done.load(Ordering::SeqCst), 2, "detached greenlets starved");
    })
}

/// The `run_with` docs: the runtime needs its I/O driver (greenhack's loop
/// waits through it), not its timers: with I/O only, greenhack's sockets,
/// timers and greenlets run; a bare runtime panics at the first wait with
/// a message naming `enable_io`.
#[test]
fn tokio_run_with_needs_io_only() {
    within(30, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let v = greenhack::tokio::run_with(rt, || {
            let (c, s) = tcp_pair();
            let w = greenhack::spawn(move || {
                greenhack::sleep(Duration::from_millis(10));
                (&s).write_all(b"io").unwrap();
            });
            let mut b = [0; 2];
            (&c).read_exact(&mut b).unwrap();
            w.join().unwrap();
            greenhack::exempt(async {
                tokio::task::yield_now().await;
                1
            }) + b.len()
        });
        assert_eq!(v, 3);
        let bare = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let p = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            greenhack::tokio::run_with(bare, || greenhack::sleep(Duration::from_millis(1)))
        }))
        .unwrap_err();
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap();
        assert!(msg.contains("enable_io()"), "{msg}");
    })
}
/// Regression: a second tokio runtime hosting the thread's loop after the
/// first was dropped. The loop found its registration with the dead
/// runtime gone but registered with the new one only at the next drive,
/// which nothing caused when the program waited on greenhack alone (no
/// tokio timer): it hung.
#[test]
fn second_host_after_the_first_is_dropped() {
    within(20, || {
        for _ in 0..3 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .unwrap();
            greenhack::tokio::run_with(rt, || greenhack::sleep(Duration::from_millis(2)));
        }
        for _ in 0..3 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .unwrap();
            rt.block_on(greenhack::as_async(|| {
                greenhack::sleep(Duration::from_millis(2))
            }));
        }
    })
}

/// Issue 11: in hosted mode a greenlet woken from another thread (its
/// `unblock` job done on the pool) runs, also when no `as_async` is left
/// to poll: the result reaches a tokio task through a tokio channel.
#[test]
fn hosted_cross_thread_wake_of_a_detached_greenlet() {
    within(20, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(async {
            let (tx, rx) = tokio::sync::oneshot::channel();
            greenhack::as_async(move || {
                drop(greenhack::spawn(move || {
                    let v = greenhack::unblock(|| {
                        std::thread::sleep(Duration::from_millis(20));
                        5
                    });
                    let (c, s) = tcp_pair();
                    (&c).write_all(&[v]).unwrap();
                    let mut b = [0];
                    (&s).read_exact(&mut b).unwrap();
                    let _ = tx.send(b[0]);
                }));
            })
            .await;
            rx.await.unwrap()
        });
        assert_eq!(got, 5);
    })
}

/// The `bind` docs: "`SO_REUSEADDR` is set ..., as with std".
#[test]
fn listener_sets_reuseaddr_as_std() {
    fn reuseaddr(fd: i32) -> i32 {
        let mut v: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are valid for the call.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&raw mut v).cast(),
                &raw mut len,
            )
        };
        assert_eq!(r, 0);
        v
    }
    let std_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    assert_eq!(reuseaddr(l.as_raw_fd()), reuseaddr(std_l.as_raw_fd()));
    assert_ne!(reuseaddr(l.as_raw_fd()), 0);
}

/// Issue 11: `spawn_sync` awaited from sync code on greenhack's own loop
/// (`exempt`), not only from tokio.
#[test]
fn spawn_sync_from_greenhack_loop() {
    within(20, || {
        let v = greenhack::run(|| {
            let a = greenhack::spawn(|| greenhack::exempt(greenhack::tokio::spawn_sync(|| 20)));
            let b = greenhack::exempt(greenhack::tokio::spawn_sync(|| 22)).unwrap();
            a.join().unwrap().unwrap() + b
        });
        assert_eq!(v, 42);
    })
}

/// Issue 14: every setup panicking at once: `join` returns promptly (at
/// the first failure it stops the rest, whose setups may not have run
/// yet) with each failed loop's payload, in loop order.
#[test]
fn runtime_all_setups_panic_at_once() {
    within(20, || {
        let rt = RtBuilder::new()
            .worker_threads(3)
            .build(|| panic!("no config"))
            .unwrap();
        let err = rt.join().unwrap_err();
        let idx: Vec<usize> = err.loops().iter().map(|l| l.index()).collect();
        assert!(
            !idx.is_empty() && idx.windows(2).all(|w| w[0] < w[1]),
            "{idx:?}"
        );
        assert!(idx.iter().all(|&i| i < 3));
        for l in err.into_loops() {
            assert!(l.is_panic());
            assert_eq!(l.into_panic().downcast_ref::<&str>(), Some(&"no config"));
        }
    })
}

/// The `Task` docs: "a closure that has not started yet never runs" once
/// its task is dropped.
#[test]
fn spawn_sync_dropped_before_start_never_runs() {
    within(20, || {
        let pool = greenhack::tokio::Pool::builder()
            .worker_threads(1)
            .build()
            .unwrap();
        // Keeps the only worker's thread busy.
        let busy = pool.spawn(|| std::thread::sleep(Duration::from_millis(100)));
        let ran = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicUsize::new(0));
        let (r, d) = (ran.clone(), DropFlag(dropped.clone()));
        let never = pool.spawn(move || {
            let _d = d;
            r.store(true, Ordering::SeqCst);
        });
        drop(never);
        futures_executor::block_on(busy).unwrap();
        // A later job runs, so the dropped one had its chance.
        futures_executor::block_on(pool.spawn(|| ())).unwrap();
        assert!(!ran.load(Ordering::SeqCst), "a cancelled closure ran");
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "its captures leaked");
    })
}

/// The net docs: no `FromRawFd` on registered sockets; a descriptor comes
/// in through the std type and `from_std`; `into_raw_fd` leaves it
/// non-blocking, `into_std` blocking.
#[test]
fn descriptors_in_and_out_as_documented() {
    within(20, || {
        let (c, s) = tcp_pair();
        let fd = c.into_raw_fd();
        // SAFETY: `fd` is the open descriptor `into_raw_fd` handed over.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        assert_ne!(flags & libc::O_NONBLOCK, 0, "into_raw_fd: non-blocking");
        // SAFETY: as above; ownership moves to the OwnedFd.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let c = TcpStream::from_std(std::net::TcpStream::from(owned)).unwrap();
        (&s).write_all(b"fd").unwrap();
        let mut b = [0; 2];
        (&c).read_exact(&mut b).unwrap();
        let std_c = c.into_std().unwrap();
        // SAFETY: reads the flags of a descriptor `std_c` owns.
        let flags = unsafe { libc::fcntl(std_c.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0, "into_std: blocking");
    })
}

/// Issue 11: in hosted mode, greenlets spawned inside the `as_async`
/// exempt tokio's own futures (a timer, a socket, a channel): tokio wakes
/// them through greenhack's loop.
#[test]
fn hosted_spawned_greenlets_exempt_tokio_futures() {
    within(20, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let v = rt.block_on(greenhack::as_async(|| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let timer = greenhack::spawn(move || {
                greenhack::exempt(tokio::time::sleep(Duration::from_millis(15)));
                tx.send(1u32).unwrap();
            });
            let sock = greenhack::spawn(|| {
                let l = greenhack::exempt(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
                let addr = l.local_addr().unwrap();
                let client = greenhack::spawn(move || {
                    let mut c = greenhack::exempt(tokio::net::TcpStream::connect(addr)).unwrap();
                    greenhack::exempt(tokio::io::AsyncWriteExt::write_all(&mut c, b"t")).unwrap();
                });
                let (mut s, _) = greenhack::exempt(l.accept()).unwrap();
                let mut b = [0];
                greenhack::exempt(tokio::io::AsyncReadExt::read_exact(&mut s, &mut b)).unwrap();
                client.join().unwrap();
                b[0] as u32
            });
            let from_timer = greenhack::spawn(move || greenhack::exempt(rx.recv()).unwrap());
            timer.join().unwrap();
            sock.join().unwrap() + from_timer.join().unwrap()
        }));
        assert_eq!(v, b't' as u32 + 1);
    })
}
/// `greenhack::tokio::run` (and `run_with`, `start_loop`) called from a
/// greenlet, as `greenhack::run` is: where tokio already runs under the
/// loop (an `as_async` polled by tokio, a greenlet of `tokio::run`), `f`
/// runs in place and tokio's futures work; on a loop without tokio (a
/// `greenhack::run` greenlet, a `Runtime` setup) it panics naming the fix.
/// Both used to hang at the first tokio wait, on a runtime nothing drove.
#[test]
fn tokio_run_inside_a_greenlet() {
    within(30, || {
        let tokio_sleep = || greenhack::exempt(tokio::time::sleep(Duration::from_millis(5)));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(greenhack::as_async(move || {
            greenhack::tokio::run(tokio_sleep);
            let own = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            greenhack::tokio::run_with(own, tokio_sleep);
            greenhack::tokio::start_loop();
            tokio_sleep();
        }));
        greenhack::tokio::run(move || {
            greenhack::spawn(move || greenhack::tokio::run(tokio_sleep))
                .join()
                .unwrap()
        });

        let e = greenhack::run(move || {
            greenhack::spawn(move || greenhack::tokio::run(tokio_sleep)).join()
        })
        .unwrap_err();
        let p = e.into_panic();
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap();
        assert!(msg.contains("outside any greenlet"), "{msg}");

        let rt = RtBuilder::new()
            .worker_threads(1)
            .build(move || {
                greenhack::tokio::run(tokio_sleep);
                Ok(())
            })
            .unwrap();
        let err = rt.join().unwrap_err();
        assert!(err.loops()[0].is_panic());
        assert!(err.to_string().contains("greenhack::tokio::run"), "{err}");
    })
}

/// Issue 11: `spawn_sync` awaited from a `greenhack::tokio::run` greenlet
/// and from inside a hosted `as_async` (both current-thread tokio).
#[test]
fn spawn_sync_from_current_thread_greenlets() {
    within(20, || {
        let v = greenhack::tokio::run(|| {
            greenhack::spawn(|| greenhack::exempt(greenhack::tokio::spawn_sync(|| 1)).unwrap())
                .join()
                .unwrap()
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let w = rt.block_on(greenhack::as_async(|| {
            greenhack::exempt(greenhack::tokio::spawn_sync(|| {
                greenhack::sleep(Duration::from_millis(5));
                2
            }))
            .unwrap()
        }));
        assert_eq!(v + w, 3);
    })
}

/// std (Linux): Unix sockets at an abstract name, through `bind_addr` and
/// `connect_addr`; `incoming` serves them.
#[test]
fn unix_abstract_names_as_std() {
    use std::os::linux::net::SocketAddrExt;
    within(20, || {
        greenhack::run(|| {
            let name = format!("greenhack-audit-{}", std::process::id());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            let l = UnixListener::bind_addr(&addr).unwrap();
            assert_eq!(
                l.local_addr().unwrap().as_abstract_name(),
                Some(name.as_bytes())
            );
            let srv = greenhack::spawn(move || {
                let s = l.incoming().next().unwrap().unwrap();
                (&s).write_all(b"abstract").unwrap();
            });
            let c = UnixStream::connect_addr(&addr).unwrap();
            let mut got = String::new();
            (&c).read_to_string(&mut got).unwrap();
            assert_eq!(got, "abstract");
            srv.join().unwrap();
        });
    })
}

/// Issues 11 + 14: a `Runtime` whose loops have tokio underneath: setups
/// and handed-off greenlets exempt tokio's timers, sockets and channels
/// beside greenhack's sockets, on the loop's own thread; shutdown unwinds
/// greenlets parked in a tokio future.
#[test]
fn runtime_with_tokio_underneath() {
    within(30, || {
        let rt = RtBuilder::new()
            .worker_threads(2)
            .thread_name("audtok")
            .tokio(true)
            .build(|| {
                greenhack::exempt(tokio::time::sleep(Duration::from_millis(2)));
                Ok(())
            })
            .unwrap();
        let v = rt
            .handle(1)
            .spawn(|| {
                let me = std::thread::current().id();
                let l = greenhack::exempt(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
                let addr = l.local_addr().unwrap();
                let client = greenhack::spawn(move || {
                    assert_eq!(std::thread::current().id(), me);
                    let (c, s) = tcp_pair(); // greenhack's sockets too
                    (&c).write_all(b"g").unwrap();
                    let mut b = [0];
                    (&s).read_exact(&mut b).unwrap();
                    let mut t = greenhack::exempt(tokio::net::TcpStream::connect(addr)).unwrap();
                    greenhack::exempt(tokio::io::AsyncWriteExt::write_all(&mut t, &b)).unwrap();
                });
                let (mut s, _) = greenhack::exempt(l.accept()).unwrap();
                let mut b = [0];
                greenhack::exempt(tokio::io::AsyncReadExt::read_exact(&mut s, &mut b)).unwrap();
                client.join().unwrap();
                (std::thread::current().name().unwrap().to_owned(), b[0])
            })
            .join()
            .unwrap();
        assert_eq!(v, ("audtok-1".to_owned(), b'g'));
        let dropped = Arc::new(AtomicUsize::new(0));
        let d = dropped.clone();
        drop(rt.handle(0).spawn(move || {
            let _f = DropFlag(d);
            greenhack::exempt(tokio::time::sleep(Duration::from_secs(3600)));
        }));
        std::thread::sleep(Duration::from_millis(20));
        rt.shutdown().unwrap();
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    })
}

/// `#[tokio::main]`'s default flavour is multi-thread, and its `main`
/// future (`block_on`, no `Send` needed) may await an `as_async`: hosted
/// on the main thread, greenhack's sockets, `sleep` and `spawn` work there.
#[test]
fn hosted_in_multi_thread_block_on() {
    within(30, || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let v = rt.block_on(async {
            let other = tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                1
            });
            let mine = greenhack::as_async(|| {
                let (c, s) = tcp_pair();
                let h = greenhack::spawn(move || {
                    greenhack::sleep(Duration::from_millis(10));
                    (&s).write_all(b"mt").unwrap();
                });
                let mut b = [0; 2];
                (&c).read_exact(&mut b).unwrap();
                greenhack::exempt(tokio::time::sleep(Duration::from_millis(2)));
                h.join().unwrap();
                b.len()
            })
            .await;
            mine + other.await.unwrap()
        });
        assert_eq!(v, 3);
    })
}

/// No descriptor or thread outlives a thread that hosted greenhack's loop
/// in tokio, ran `greenhack::tokio::run`, a `Runtime` (with tokio
/// underneath too) or a `Pool`.
#[test]
fn no_leaks_across_hosting_threads() {
    if !util::is_child("no_leaks_across_hosting_threads") {
        return util::assert_child_passed(&util::run_child_with_limit(
            "no_leaks_across_hosting_threads",
            Duration::from_secs(60),
        ));
    }
    let work = || {
        let (c, s) = tcp_pair();
        (&c).write_all(b"x").unwrap();
        let mut b = [0];
        (&s).read_exact(&mut b).unwrap();
        drop(greenhack::spawn(|| {
            greenhack::sleep(Duration::from_millis(1))
        }));
        greenhack::sleep(Duration::from_millis(2));
    };
    let round = move || {
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(greenhack::as_async(work));
        })
        .join()
        .unwrap();
        std::thread::spawn(move || greenhack::tokio::run(work))
            .join()
            .unwrap();
        for tokio in [false, true] {
            let rt = RtBuilder::new()
                .worker_threads(2)
                .tokio(tokio)
                .build(move || {
                    work();
                    Ok(())
                })
                .unwrap();
            rt.handle(1).spawn(work).join().unwrap();
            rt.shutdown().unwrap();
        }
        let pool = greenhack::tokio::Pool::builder()
            .worker_threads(2)
            .build()
            .unwrap();
        futures_executor::block_on(pool.spawn(work)).unwrap();
        drop(pool);
    };
    round(); // warm-up: lazily made process-wide state
    std::thread::sleep(Duration::from_millis(100));
    let (fds, threads) = (open_fds(), thread_count());
    for _ in 0..5 {
        round();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while (open_fds(), thread_count()) != (fds, threads) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(open_fds(), fds, "descriptors leaked");
    assert_eq!(thread_count(), threads, "threads leaked");
}
/// `run` (and `greenhack::tokio::run`) nest on the thread's own stack: the
/// inner one serves the same loop, tokio still underneath.
#[test]
fn runs_nest_on_the_threads_stack() {
    within(10, || {
        let v = greenhack::tokio::run(|| {
            greenhack::run(|| {
                greenhack::exempt(tokio::time::sleep(Duration::from_millis(2)));
                greenhack::spawn(|| greenhack::sleep(Duration::from_millis(2)))
                    .join()
                    .unwrap();
                1
            })
        });
        let w = greenhack::run(|| greenhack::run(|| greenhack::spawn(|| 2).join().unwrap()));
        assert_eq!(v + w, 3);
    })
}

/// Issue 11: 200 `as_async` tasks in a `LocalSet`, each a client of a
/// greenhack server greenlet hosted on the same thread, all served.
#[test]
fn hosted_many_as_async_tasks() {
    within(60, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let total = local.block_on(&rt, async {
            // A backlog above the burst: no SYN retransmit stall.
            let sock = TcpSocket::new_v4().unwrap();
            sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let l = sock.listen(1024).unwrap();
            let addr = l.local_addr().unwrap();
            let server = tokio::task::spawn_local(greenhack::as_async(move || {
                for conn in l.incoming().take(200) {
                    let conn = conn.unwrap();
                    drop(greenhack::spawn(move || {
                        let mut b = [0; 4];
                        (&conn).read_exact(&mut b).unwrap();
                        greenhack::sleep(Duration::from_millis(5));
                        (&conn).write_all(&b).unwrap();
                    }));
                }
            }));
            let clients: Vec<_> = (0..200u32)
                .map(|i| {
                    tokio::task::spawn_local(greenhack::as_async(move || {
                        let c = TcpStream::connect(addr).unwrap();
                        (&c).write_all(&i.to_le_bytes()).unwrap();
                        let mut b = [0; 4];
                        (&c).read_exact(&mut b).unwrap();
                        assert_eq!(u32::from_le_bytes(b), i);
                        i as u64
                    }))
                })
                .collect();
            let mut total = 0;
            for c in clients {
                total += c.await.unwrap();
            }
            server.await.unwrap();
            total
        });
        assert_eq!(total, (0..200).sum::<u64>());
    })
}
