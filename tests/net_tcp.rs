//! TCP: one echo code path serving greenlets and plain threads, 1,000
//! concurrent clients on one thread, 10,000 connect/disconnect cycles that
//! leave no descriptor or stack behind, and cancellation of a blocked read.
//!
//! Sockets are counted process-wide (`/proc/self/fd`), so every test in
//! this file that opens sockets holds `LOCK`.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use greenhack::net::{TcpListener, TcpStream};

static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sockets this process has open. Only sockets: a test thread's reactor
/// (its epoll fd, its dup, its eventfd) is closed when the thread exits,
/// which for the previous test's thread may happen at any moment (under
/// qemu-user, well after it released the test lock).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// The open-socket count once it has stopped changing (a closing socket of
/// the previous test may still be on its way out).
fn settled_fds() -> usize {
    let mut last = open_fds();
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(5));
        let now = open_fds();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit if it is below `want`.
fn ensure_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to write to.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur < want {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; raising the soft limit up to the
        // hard one needs no privilege.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    }
    assert!(
        lim.rlim_cur >= want,
        "RLIMIT_NOFILE hard limit {} is below the {want} this test needs",
        lim.rlim_max
    );
}

/// Distinct bytes for client `id`: its id, then a pattern seeded by it.
fn payload(id: usize, len: usize) -> Vec<u8> {
    let mut v = (id as u32).to_le_bytes().to_vec();
    v.extend(
        (0..len - 4).map(|i| (i.wrapping_mul(31) ^ id.wrapping_mul(2654435761) >> (i % 13)) as u8),
    );
    v
}

/// Echoes until the peer shuts down its write half; returns bytes echoed.
/// Plain sync code: the same function serves a greenlet and a thread.
fn echo(mut conn: TcpStream) -> io::Result<usize> {
    // Small echoed segments would otherwise wait for delayed ACKs (Nagle).
    conn.set_nodelay(true)?;
    let mut buf = [0; 4096];
    let mut total = 0;
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        conn.write_all(&buf[..n])?;
        total += n;
    }
}

/// Sends `data` in chunks, checking each chunk's echo byte for byte, then
/// shuts down and expects EOF.
fn client_session(addr: SocketAddr, data: &[u8]) -> io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    let mut back = vec![0; 16 * 1024];
    for chunk in data.chunks(16 * 1024) {
        s.write_all(chunk)?;
        let back = &mut back[..chunk.len()];
        s.read_exact(back)?;
        assert_eq!(back, chunk, "echoed bytes differ");
    }
    s.shutdown(Shutdown::Write)?;
    assert_eq!(s.read(&mut [0; 1])?, 0, "EOF after the echo");
    Ok(())
}

#[test]
fn echo_round_trip_between_greenlets() {
    let _g = lock();
    let data = payload(1, 256 * 1024);
    let (echoed, sent) = greenhack::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = greenhack::spawn(move || {
            let (conn, peer) = listener.accept().unwrap();
            assert_eq!(peer.ip(), addr.ip());
            echo(conn).unwrap()
        });
        let d = data.clone();
        let client = greenhack::spawn(move || client_session(addr, &d).map(|()| d.len()));
        (server.join().unwrap(), client.join().unwrap().unwrap())
    });
    assert_eq!(echoed, data.len());
    assert_eq!(sent, data.len());
}

#[test]
fn the_same_echo_code_on_plain_threads_without_greenlets() {
    let _g = lock();
    let data = payload(2, 256 * 1024);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // The listener moves to the server thread as a std listener.
    let std_listener = listener.into_std().unwrap();
    let server = std::thread::spawn(move || {
        let listener = TcpListener::from_std(std_listener).unwrap();
        let (conn, _) = listener.accept().unwrap();
        echo(conn).unwrap()
    });
    let d = data.clone();
    let client = std::thread::spawn(move || client_session(addr, &d));
    client.join().unwrap().unwrap();
    assert_eq!(server.join().unwrap(), data.len());
}

#[test]
fn greenhack_server_serves_a_std_client_and_vice_versa() {
    let _g = lock();
    let data = payload(3, 64 * 1024);
    // greenhack server, std client on another thread.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let d = data.clone();
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(&d).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        back
    });
    let (conn, _) = listener.accept().unwrap();
    assert_eq!(echo(conn).unwrap(), data.len());
    assert_eq!(client.join().unwrap(), data);
    // std server, greenhack client.
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = std_listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        std::io::copy(&mut s.try_clone().unwrap(), &mut s).unwrap()
    });
    client_session(addr, &data).unwrap();
    assert_eq!(server.join().unwrap(), data.len() as u64);
}

#[test]
fn thousand_concurrent_clients_on_one_thread() {
    const CLIENTS: usize = 1000;
    let _g = lock();
    ensure_nofile(2 * CLIENTS as u64 + 200);
    let max_live = Rc::new(Cell::new(0));
    let clients_ok = Rc::new(Cell::new(0));
    let (m, ok) = (max_live.clone(), clients_ok.clone());
    greenhack::run(move || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let live = Rc::new(Cell::new(0usize));
        // The server: a greenlet per connection.
        let _server = greenhack::spawn(move || {
            for _ in 0..CLIENTS {
                let (conn, _) = listener.accept().unwrap();
                let (live, m) = (live.clone(), m.clone());
                let _handler = greenhack::spawn(move || {
                    live.set(live.get() + 1);
                    m.set(m.get().max(live.get()));
                    echo(conn).unwrap();
                    live.set(live.get() - 1);
                });
            }
        });
        // Every client connects, then waits for all the others before
        // sending, so all 1,000 connections are open at once.
        let all_connected = Rc::new(tokio::sync::Barrier::new(CLIENTS));
        for id in 0..CLIENTS {
            let (barrier, ok) = (all_connected.clone(), ok.clone());
            let _client = greenhack::spawn(move || {
                let data = payload(id, 4096 + (id % 8) * 512);
                let mut s = TcpStream::connect(addr).unwrap();
                greenhack::exempt(barrier.wait());
                s.write_all(&data).unwrap();
                let mut back = vec![0; data.len()];
                s.read_exact(&mut back).unwrap();
                assert_eq!(back, data, "client {id}: echoed bytes differ");
                s.shutdown(Shutdown::Write).unwrap();
                assert_eq!(s.read(&mut [0; 1]).unwrap(), 0);
                ok.set(ok.get() + 1);
            });
            // Let the server accept between batches: the listen backlog is
            // 128, as with std.
            if id % 32 == 31 {
                greenhack::yield_now();
            }
        }
    });
    assert_eq!(clients_ok.get(), CLIENTS);
    assert_eq!(max_live.get(), CLIENTS, "all connections were open at once");
}

#[test]
fn ten_thousand_connect_disconnect_cycles_leave_nothing_behind() {
    const CYCLES: usize = 10_000;
    let _g = lock();
    // A thread of its own: its stack counters are its own.
    std::thread::spawn(|| {
        greenhack::yield_now(); // creates this thread's reactor (epoll + waker fds)
        let fds_before = settled_fds();
        let stacks_before = greenhack::stack::stats();
        greenhack::run(|| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let _server = greenhack::spawn(move || {
                for conn in listener.incoming().take(CYCLES) {
                    let mut conn = conn.unwrap();
                    let _handler = greenhack::spawn(move || {
                        let mut b = [0; 1];
                        conn.read_exact(&mut b).unwrap();
                        conn.write_all(&b).unwrap();
                    });
                }
            });
            for i in 0..CYCLES {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(&[i as u8]).unwrap();
                let mut b = [0; 1];
                s.read_exact(&mut b).unwrap();
                assert_eq!(b[0], i as u8);
            }
        });
        let stacks = greenhack::stack::stats();
        assert_eq!(settled_fds(), fds_before, "descriptors leaked");
        assert_eq!(
            stacks.mapped - stacks.pooled,
            stacks_before.mapped - stacks_before.pooled,
            "stacks still in use: {stacks:?}"
        );
        assert!(
            stacks.mapped <= greenhack::stack::POOL_CAPACITY,
            "only the pool keeps stacks: {stacks:?}"
        );
    })
    .join()
    .unwrap();
}

struct Counted(Rc<Cell<u32>>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

#[test]
fn cancelling_a_greenlet_blocked_in_read_closes_its_socket() {
    let _g = lock();
    greenhack::yield_now(); // creates this thread's reactor
    let fds_before = settled_fds();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    drop(listener);

    let drops = Rc::new(Cell::new(0));
    let started = Rc::new(Cell::new(false));
    let (d, st) = (drops.clone(), started.clone());
    let reader = greenhack::spawn(move || {
        let _counted = Counted(d);
        st.set(true);
        let r = conn.read(&mut [0; 64]);
        panic!("read returned {r:?}, but nothing was sent");
    });
    // The greenlet runs until its read waits, then control comes back.
    while !started.get() {
        greenhack::yield_now();
    }
    assert!(!reader.is_finished());
    assert_eq!(drops.get(), 0);

    reader.cancel();
    let err = reader.join().unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert_eq!(drops.get(), 1, "the greenlet's destructors ran");
    // Its socket was closed: the peer sees EOF.
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(client.read(&mut [0; 8]).unwrap(), 0);
    drop(client);
    assert_eq!(settled_fds(), fds_before);
}

#[test]
fn try_clone_reader_and_writer_in_two_greenlets() {
    let _g = lock();
    let data = payload(4, 1024 * 1024);
    let back = greenhack::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _server = greenhack::spawn(move || echo(listener.accept().unwrap().0).unwrap());
        let stream = TcpStream::connect(addr).unwrap();
        let writer = stream.try_clone().unwrap();
        assert_ne!(
            std::os::fd::AsRawFd::as_raw_fd(&writer),
            std::os::fd::AsRawFd::as_raw_fd(&stream)
        );
        let d = data.clone();
        // One greenlet writes everything while the other reads: neither
        // side's buffers can fill up and deadlock.
        let _w = greenhack::spawn(move || {
            (&writer).write_all(&d).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        (&stream).read_to_end(&mut back).unwrap();
        back
    });
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed bytes differ");
}

#[test]
fn vectored_io_peek_and_options() {
    let _g = lock();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut b, peer) = listener.accept().unwrap();
    assert_eq!(peer, a.local_addr().unwrap());
    assert_eq!(b.peer_addr().unwrap(), a.local_addr().unwrap());

    let n = a
        .write_vectored(&[io::IoSlice::new(b"hello "), io::IoSlice::new(b"world")])
        .unwrap();
    assert_eq!(n, 11);
    let mut peeked = [0; 5];
    assert_eq!(b.peek(&mut peeked).unwrap(), 5);
    assert_eq!(&peeked, b"hello");
    let (mut x, mut y) = ([0; 6], [0; 5]);
    let n = b
        .read_vectored(&mut [io::IoSliceMut::new(&mut x), io::IoSliceMut::new(&mut y)])
        .unwrap();
    assert_eq!(n, 11, "one writev on loopback arrives whole");
    assert_eq!((&x, &y), (b"hello ", b"world"));

    a.set_nodelay(true).unwrap();
    assert!(a.nodelay().unwrap());
    a.set_ttl(42).unwrap();
    assert_eq!(a.ttl().unwrap(), 42);
    listener.set_ttl(43).unwrap();
    assert_eq!(listener.ttl().unwrap(), 43);
    assert!(a.take_error().unwrap().is_none());
    assert_eq!(a.read_timeout().unwrap(), None);
    a.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    a.set_write_timeout(Some(Duration::from_secs(4))).unwrap();
    assert_eq!(a.read_timeout().unwrap(), Some(Duration::from_secs(3)));
    assert_eq!(a.write_timeout().unwrap(), Some(Duration::from_secs(4)));
    // Timeouts live in the socket: a clone and the std stream see them.
    let clone = a.try_clone().unwrap();
    assert_eq!(clone.read_timeout().unwrap(), Some(Duration::from_secs(3)));
    // `a` knew its timeouts before it was cloned: a change through the clone
    // must reach it all the same.
    clone
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(a.read_timeout().unwrap(), Some(Duration::from_secs(5)));
    let clone_of_clone = clone.try_clone().unwrap();
    clone_of_clone.set_write_timeout(None).unwrap();
    assert_eq!(a.write_timeout().unwrap(), None);
    a.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert_eq!(
        clone_of_clone.read_timeout().unwrap(),
        Some(Duration::from_secs(3))
    );
    drop((clone, clone_of_clone));
    a.flush().unwrap();
    let std_a = a.into_std().unwrap();
    assert_eq!(std_a.read_timeout().unwrap(), Some(Duration::from_secs(3)));
    // into_std made it blocking again: a blocking read gets the bytes.
    b.write_all(b"!").unwrap();
    let mut one = [0; 1];
    (&std_a).read_exact(&mut one).unwrap();
    assert_eq!(&one, b"!");
    let _ = listener.try_clone().unwrap();
}

#[test]
fn a_timeout_set_on_one_clone_holds_for_the_other() {
    let _guard = lock();
    // Clones are one socket, as with std: a timeout belongs to the socket.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (_server, _) = listener.accept().unwrap();
    let mut b = a.try_clone().unwrap();
    assert_eq!(b.read_timeout().unwrap(), None); // known (and cached) as none
    a.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
    // The kernel rounds to its tick (30 ms may read back as 32 ms, with std
    // too): compare the clones, not the literal.
    let t = b
        .read_timeout()
        .unwrap()
        .expect("the other clone's timeout");
    assert_eq!(Some(t), a.read_timeout().unwrap());
    assert!(t >= Duration::from_millis(30));
    let start = std::time::Instant::now();
    let err = b.read(&mut [0u8; 8]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    assert!(start.elapsed() >= Duration::from_millis(30));
}

#[test]
fn data_arriving_after_a_short_read_is_still_read() {
    // A short read lets the next read wait for readiness instead of trying
    // first: the bytes that arrive later must still wake it.
    let _guard = lock();
    greenhack::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = greenhack::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            for chunk in [&b"first"[..], b"second", b"third!"] {
                s.write_all(chunk).unwrap();
                greenhack::sleep(Duration::from_millis(10));
            }
        });
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match conn.read(&mut buf).unwrap() {
                0 => break,
                n => got.extend_from_slice(&buf[..n]), // every read here is short
            }
        }
        assert_eq!(got, b"firstsecondthird!");
        writer.join().unwrap();
    });
}

/// `readable` waits for data (it does not spin: a reader that meets
/// `WouldBlock` waits in `readable` until the peer writes), `try_read`
/// never waits, and EOF reads as 0.
#[test]
fn readable_waits_and_try_read_never_does() {
    use std::io::ErrorKind;
    use std::time::Instant;
    let _g = lock();
    greenhack::run(|| {
        let listener = greenhack::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = greenhack::net::TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(
            server.try_read(&mut buf).unwrap_err().kind(),
            ErrorKind::WouldBlock
        );
        let writer = greenhack::spawn(move || {
            greenhack::sleep(Duration::from_millis(30));
            client.write_all(b"hello").unwrap();
            greenhack::sleep(Duration::from_millis(30));
            drop(client);
        });
        let start = Instant::now();
        let (mut got, mut would_block) = (Vec::new(), 0);
        loop {
            server.readable().unwrap();
            match server.try_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => would_block += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, b"hello");
        assert!(start.elapsed() >= Duration::from_millis(55));
        assert!(
            would_block <= 2,
            "readable returned {would_block} times with nothing to read"
        );
        writer.join().unwrap();
    });
}
