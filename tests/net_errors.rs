//! Error paths, checked against std in the same test: each scenario is run
//! with a greenhack socket and with a std socket, and the kinds must agree.
//! Also: running out of descriptors in `accept`, and greenhack sockets under
//! a foreign executor.

mod util;

use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use greenhack::net::{TcpListener, TcpStream, UnixStream};

/// An address nothing listens on: a port just bound and closed.
/// Makes closing `s` send a RST (SO_LINGER with a zero timeout).
fn reset_on_close(s: &std::net::TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a valid, initialised struct that outlives the
    // call, and its size is passed.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "{}", io::Error::last_os_error());
}

#[test]
fn refused_connect_is_connection_refused_like_std() {
    let (_closed, addr) = util::closed_port();
    let std_err = std::net::TcpStream::connect(addr).unwrap_err();
    let err = TcpStream::connect(addr).unwrap_err();
    assert_eq!(std_err.kind(), ErrorKind::ConnectionRefused);
    assert_eq!(err.kind(), std_err.kind());
    assert_eq!(err.raw_os_error(), std_err.raw_os_error());
}

#[test]
fn connect_timeout_refused_and_zero_like_std() {
    let (_closed, addr) = util::closed_port();
    let t = Duration::from_secs(5);
    let std_err = std::net::TcpStream::connect_timeout(&addr, t).unwrap_err();
    let err = TcpStream::connect_timeout(&addr, t).unwrap_err();
    assert_eq!(std_err.kind(), ErrorKind::ConnectionRefused);
    assert_eq!(err.kind(), std_err.kind());

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let std_err = std::net::TcpStream::connect_timeout(&addr, Duration::ZERO).unwrap_err();
    let err = TcpStream::connect_timeout(&addr, Duration::ZERO).unwrap_err();
    assert_eq!(std_err.kind(), ErrorKind::InvalidInput);
    assert_eq!(err.kind(), std_err.kind());
    assert_eq!(err.to_string(), std_err.to_string());
    // A real timeout connects.
    TcpStream::connect_timeout(&addr, t).unwrap();
}

#[test]
fn unresolvable_addresses_like_std() {
    let std_err = std::net::TcpStream::connect("not an address").unwrap_err();
    let err = TcpStream::connect("not an address").unwrap_err();
    assert_eq!(err.kind(), std_err.kind());
    let none: &[SocketAddr] = &[];
    let std_err = std::net::TcpListener::bind(none).unwrap_err();
    let err = TcpListener::bind(none).unwrap_err();
    assert_eq!(std_err.kind(), ErrorKind::InvalidInput);
    assert_eq!(err.kind(), std_err.kind());
    assert_eq!(err.to_string(), std_err.to_string());
    // Each address is tried: the first refuses, the second connects.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (_closed, refusing) = util::closed_port();
    let both = [refusing, listener.local_addr().unwrap()];
    let s = TcpStream::connect(&both[..]).unwrap();
    assert_eq!(s.peer_addr().unwrap(), both[1]);
}

/// Runs `scenario` with a connected greenhack client and with a std client;
/// each gets the std server-side socket to act on. Returns both results.
fn both_clients<T>(
    mut scenario_gh: impl FnMut(&mut TcpStream, std::net::TcpStream) -> T,
    mut scenario_std: impl FnMut(&mut std::net::TcpStream, std::net::TcpStream) -> T,
) -> (T, T) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut gh = TcpStream::connect(addr).unwrap();
    let (server, _) = listener.accept().unwrap();
    let a = scenario_gh(&mut gh, server);
    let mut st = std::net::TcpStream::connect(addr).unwrap();
    let (server, _) = listener.accept().unwrap();
    let b = scenario_std(&mut st, server);
    (a, b)
}

#[test]
fn peer_reset_is_connection_reset_like_std() {
    let (gh, st) = both_clients(
        |c, server| {
            reset_on_close(&server);
            drop(server);
            c.read(&mut [0; 16]).unwrap_err()
        },
        |c, server| {
            reset_on_close(&server);
            drop(server);
            c.read(&mut [0; 16]).unwrap_err()
        },
    );
    assert_eq!(st.kind(), ErrorKind::ConnectionReset);
    assert_eq!(gh.kind(), st.kind());
}

#[test]
fn orderly_close_is_eof_like_std() {
    let (gh, st) = both_clients(
        |c, mut server| {
            server.write_all(b"last").unwrap();
            drop(server);
            let mut v = Vec::new();
            let n = c.read_to_end(&mut v).unwrap();
            (n, v, c.read(&mut [0; 4]).unwrap())
        },
        |c, mut server| {
            server.write_all(b"last").unwrap();
            drop(server);
            let mut v = Vec::new();
            let n = c.read_to_end(&mut v).unwrap();
            (n, v, c.read(&mut [0; 4]).unwrap())
        },
    );
    assert_eq!(st, (4, b"last".to_vec(), 0));
    assert_eq!(gh, st);
}

/// Writes until the write fails (the peer has closed); returns the error.
fn write_until_error(mut w: impl Write) -> io::Error {
    for _ in 0..1000 {
        if let Err(e) = w.write(&[7; 1024]) {
            return e;
        }
    }
    panic!("writes to a closed peer kept succeeding");
}

#[test]
fn write_after_peer_closed_is_broken_pipe_like_std() {
    let (gh, st) = both_clients(
        |c, server| {
            drop(server);
            write_until_error(c)
        },
        |c, server| {
            drop(server);
            write_until_error(c)
        },
    );
    assert!(
        matches!(
            st.kind(),
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
        ),
        "{st:?}"
    );
    assert_eq!(gh.kind(), st.kind(), "greenhack {gh:?}, std {st:?}");
}

#[test]
fn read_timeout_is_would_block_like_std() {
    let wait = Duration::from_millis(50);
    let (gh, st) = both_clients(
        |c, _server| {
            c.set_read_timeout(Some(wait)).unwrap();
            let t0 = Instant::now();
            (c.read(&mut [0; 16]).unwrap_err(), t0.elapsed())
        },
        |c, _server| {
            c.set_read_timeout(Some(wait)).unwrap();
            let t0 = Instant::now();
            (c.read(&mut [0; 16]).unwrap_err(), t0.elapsed())
        },
    );
    assert_eq!(st.0.kind(), ErrorKind::WouldBlock, "std on Linux");
    assert_eq!(gh.0.kind(), st.0.kind());
    assert_eq!(gh.0.raw_os_error(), st.0.raw_os_error());
    assert_eq!(gh.0.to_string(), st.0.to_string());
    assert!(gh.1 >= wait && gh.1 < Duration::from_secs(2), "{:?}", gh.1);
}

#[test]
fn write_timeout_is_would_block_like_std() {
    let wait = Duration::from_millis(50);
    let fill = |c: &mut dyn Write| loop {
        // The peer never reads: the buffers fill, then a write times out.
        if let Err(e) = c.write(&[1; 64 * 1024]) {
            return e;
        }
    };
    let (gh, st) = both_clients(
        |c, _server| {
            c.set_write_timeout(Some(wait)).unwrap();
            fill(c)
        },
        |c, _server| {
            c.set_write_timeout(Some(wait)).unwrap();
            fill(c)
        },
    );
    assert_eq!(st.kind(), ErrorKind::WouldBlock, "std on Linux");
    assert_eq!(gh.kind(), st.kind());
    assert_eq!(gh.raw_os_error(), st.raw_os_error());
}

#[test]
fn zero_timeouts_are_invalid_input_like_std() {
    let (gh, st) = both_clients(
        |c, _| {
            (
                c.set_read_timeout(Some(Duration::ZERO)).unwrap_err(),
                c.set_write_timeout(Some(Duration::ZERO)).unwrap_err(),
            )
        },
        |c, _| {
            (
                c.set_read_timeout(Some(Duration::ZERO)).unwrap_err(),
                c.set_write_timeout(Some(Duration::ZERO)).unwrap_err(),
            )
        },
    );
    for (g, s) in [(gh.0, st.0), (gh.1, st.1)] {
        assert_eq!(s.kind(), ErrorKind::InvalidInput);
        assert_eq!(g.kind(), s.kind());
        assert_eq!(g.to_string(), s.to_string());
    }
}

#[test]
fn accept_out_of_descriptors_is_returned_and_the_listener_keeps_working() {
    const NAME: &str = "accept_out_of_descriptors_is_returned_and_the_listener_keeps_working";
    if !util::is_child(NAME) {
        // The descriptor limit is process-wide: lower it in a child.
        let out = util::run_child(NAME);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child failed; status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Two connections complete their handshake and wait in the backlog.
    let c1 = std::net::TcpStream::connect(addr).unwrap();
    let _c2 = std::net::TcpStream::connect(addr).unwrap();

    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to write to.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_cur = open + 8;
    // SAFETY: `lim` is a valid rlimit; lowering the soft limit is allowed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let mut fillers = Vec::new();
    let exhausted = loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => fillers.push(f),
            Err(e) => break e,
        }
    };
    assert_eq!(exhausted.raw_os_error(), Some(libc::EMFILE));

    // accept reports it, twice, without waiting or breaking anything.
    for _ in 0..2 {
        let err = listener.accept().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EMFILE), "{err}");
    }
    // With a descriptor free again, the pending connection is accepted
    // and served.
    drop(fillers.pop());
    let (mut s1, _) = listener.accept().unwrap();
    (&c1).write_all(b"ok").unwrap();
    let mut buf = [0; 2];
    s1.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ok");
    drop(fillers.pop());
    let (_s2, _) = listener.accept().unwrap();
}

/// Under an executor that cannot host greenhack's loop (tokio can: see
/// tests/hosted.rs), greenhack's sockets fail at once and name the fix.
#[test]
fn greenhack_sockets_under_an_executor_that_cannot_host_fail_at_once_naming_exempt() {
    // Without a peer nothing would ever complete these calls: getting the
    // errors back at all is the proof they did not wait.
    let (accept_err, read_err) = futures_executor::block_on(greenhack::as_async(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let accept_err = listener.accept().map(|_| ()).unwrap_err();
        let (mut a, _b) = UnixStream::pair().unwrap();
        let read_err = a.read(&mut [0; 8]).unwrap_err();
        (accept_err, read_err)
    }));
    for err in [accept_err, read_err] {
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains("exempt"), "{err}");
    }
    // An operation that need not wait still works there.
    let ok = futures_executor::block_on(greenhack::as_async(|| {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"ready").unwrap();
        let mut buf = [0; 5];
        a.read_exact(&mut buf).map(|()| buf)
    }));
    assert_eq!(&ok.unwrap(), b"ready");
}

#[test]
fn the_same_handler_with_tokio_sockets_through_exempt_works() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reply = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        };
        // Sync code whose waits go to tokio through exempt.
        let handler = greenhack::as_async(move || -> io::Result<Vec<u8>> {
            let mut s = greenhack::exempt(tokio::net::TcpStream::connect(addr))?;
            greenhack::exempt(s.write_all(b"hello"))?;
            let mut back = vec![0; 5];
            greenhack::exempt(s.read_exact(&mut back))?;
            Ok(back)
        });
        let ((), reply) = tokio::join!(server, handler);
        reply
    });
    assert_eq!(reply.unwrap(), b"hello");
}
