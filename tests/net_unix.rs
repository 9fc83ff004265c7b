//! Unix domain streams: a pair echoing between greenlets, a listener
//! accepting clients, bind errors like std, and a connect that waits while
//! the listener's backlog is full.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use greenhack::net::{UnixListener, UnixStream};

/// A fresh directory for socket files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("greenhack-net-unix-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn pair_echo_between_greenlets() {
    let data: Vec<u8> = (0..512 * 1024u32).map(|i| (i ^ (i >> 9)) as u8).collect();
    let back = greenhack::run(|| {
        let (a, mut b) = UnixStream::pair().unwrap();
        let _echo = greenhack::spawn(move || {
            let mut buf = [0; 8192];
            loop {
                let n = b.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                b.write_all(&buf[..n]).unwrap();
            }
        });
        let writer = a.try_clone().unwrap();
        let d = data.clone();
        let _w = greenhack::spawn(move || {
            (&writer).write_all(&d).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        (&a).read_to_end(&mut back).unwrap();
        back
    });
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed bytes differ");
}

#[test]
fn listener_accepts_clients_in_greenlets() {
    const CLIENTS: usize = 20;
    let dir = TempDir::new("accept");
    let path = dir.0.join("server.sock");
    let served = greenhack::run(|| {
        let listener = UnixListener::bind(&path).unwrap();
        assert_eq!(
            listener.local_addr().unwrap().as_pathname(),
            Some(path.as_path())
        );
        let server = greenhack::spawn(move || {
            let mut served = 0;
            for conn in listener.incoming().take(CLIENTS) {
                let mut conn = conn.unwrap();
                assert!(conn.peer_addr().unwrap().is_unnamed());
                let _h = greenhack::spawn(move || {
                    let mut req = Vec::new();
                    conn.read_to_end(&mut req).unwrap();
                    req.reverse();
                    conn.write_all(&req).unwrap();
                });
                served += 1;
            }
            served
        });
        for i in 0..CLIENTS {
            let path = path.clone();
            let _c = greenhack::spawn(move || {
                let mut s = UnixStream::connect(&path).unwrap();
                assert_eq!(s.peer_addr().unwrap().as_pathname(), Some(path.as_path()));
                let msg = format!("client {i}");
                s.write_all(msg.as_bytes()).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                let mut reply = String::new();
                s.read_to_string(&mut reply).unwrap();
                assert_eq!(reply, msg.chars().rev().collect::<String>());
            });
        }
        server.join().unwrap()
    });
    assert_eq!(served, CLIENTS);
}

#[test]
fn second_bind_of_a_path_is_addr_in_use_like_std() {
    let dir = TempDir::new("bind");
    let path = dir.0.join("taken.sock");
    let _first = UnixListener::bind(&path).unwrap();
    let err = UnixListener::bind(&path).unwrap_err();
    let std_err = std::os::unix::net::UnixListener::bind(&path).unwrap_err();
    assert_eq!(std_err.kind(), ErrorKind::AddrInUse);
    assert_eq!(err.kind(), std_err.kind());
    // Connecting to a path nobody listens on, as std.
    let missing = dir.0.join("missing.sock");
    let err = UnixStream::connect(&missing).unwrap_err();
    let std_err = std::os::unix::net::UnixStream::connect(&missing).unwrap_err();
    assert_eq!(std_err.kind(), ErrorKind::NotFound);
    assert_eq!(err.kind(), std_err.kind());
}

#[test]
fn connect_waits_while_the_backlog_is_full() {
    let dir = TempDir::new("backlog");
    let path = dir.0.join("busy.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // Shrink the backlog so that one pending connection fills it.
    // SAFETY: listen on our own listening socket; it only changes the
    // backlog.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let _first = UnixStream::connect(&path).unwrap();
    // A plain non-blocking connect now fails at once: the backlog is full.
    let raw = mio::net::UnixStream::connect(&path)
        .map(|_| ())
        .unwrap_err();
    assert_eq!(raw.kind(), ErrorKind::WouldBlock);

    let accepter = greenhack::spawn(move || {
        let mut accepted = Vec::new();
        for _ in 0..2 {
            accepted.push(listener.accept().unwrap().0);
        }
        accepted.len()
    });
    // Waits (the loop runs the accepter meanwhile) instead of failing.
    let mut second = UnixStream::connect(&path).unwrap();
    assert_eq!(accepter.join().unwrap(), 2);
    // The accepted end was dropped with the greenlet: EOF.
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(second.read(&mut [0; 4]).unwrap(), 0);
}

#[test]
fn timeouts_and_std_conversions() {
    let (a, b) = UnixStream::pair().unwrap();
    let wait = Duration::from_millis(20);
    a.set_read_timeout(Some(wait)).unwrap();
    assert!(a.read_timeout().unwrap() >= Some(wait));
    let err = (&a).read(&mut [0; 4]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WouldBlock);
    assert_eq!(
        a.set_write_timeout(Some(Duration::ZERO))
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(a.write_timeout().unwrap(), None);
    assert!(a.take_error().unwrap().is_none());
    // To a std stream and back; the timeout travels with the socket.
    let std_a = a.into_std().unwrap();
    assert!(std_a.read_timeout().unwrap() >= Some(wait));
    (&b).write_all(b"xy").unwrap();
    let a = UnixStream::from_std(std_a).unwrap();
    let mut buf = [0; 2];
    (&a).read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"xy");
    assert!(a.local_addr().unwrap().is_unnamed());
}
