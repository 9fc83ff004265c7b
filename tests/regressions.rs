//! Regressions: from issue 15 ("nine defects found under abuse") and
//! defects found since, one test per defect fixed here, each named after
//! what the user relies on. Hangs are bounded: the work runs on a thread
//! (or in a child process) and the test fails after a timeout instead of
//! stalling the suite.

mod util;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::Duration;

use greenhack::net::TcpListener;

/// Runs `f` on a new thread and returns its result, or panics naming `what`
/// if it has not finished within `limit` (the stuck thread is abandoned).
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("{what}: no result within {limit:?} (hung)"),
    }
}

/// Sends `byte` as TCP urgent data (`MSG_OOB`) on `sock`.
fn send_urgent(sock: &impl AsRawFd, byte: u8) {
    // SAFETY: `byte` is one readable byte that outlives the call; the fd is
    // an open socket borrowed for the call.
    let n = unsafe { libc::send(sock.as_raw_fd(), (&raw const byte).cast(), 1, libc::MSG_OOB) };
    assert_eq!(n, 1, "send(MSG_OOB): {}", std::io::Error::last_os_error());
}

/// Sets `SO_OOBINLINE`: urgent bytes stay in the stream.
fn set_oob_inline(sock: &impl AsRawFd) {
    let one: libc::c_int = 1;
    // SAFETY: `one` is a valid c_int that outlives the call, its size passed.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_OOBINLINE,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_OOBINLINE: {}", std::io::Error::last_os_error());
}

/// "hello" + urgent "!" + "world" queued before the server's first read;
/// the server reads until `want` bytes arrived. Returns what it read.
/// With `latched`, the loop turns (and latches the socket's events) before
/// the first read; without, the events are still queued in epoll.
fn read_past_urgent(inline: bool, latched: bool, want: usize) -> Vec<u8> {
    greenhack::run(move || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        if inline {
            set_oob_inline(&conn);
        }
        client.write_all(b"hello").unwrap();
        send_urgent(&client, b'!');
        client.write_all(b"world").unwrap();
        // Let every segment arrive and the loop latch its events before
        // the first read, the case that stalled.
        if latched {
            greenhack::sleep(Duration::from_millis(50));
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < want {
            match conn.read(&mut buf).unwrap() {
                0 => break,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    })
}

/// What a std blocking reader gets in the same situation.
fn std_read_past_urgent(inline: bool, want: usize) -> Vec<u8> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    if inline {
        set_oob_inline(&conn);
    }
    client.write_all(b"hello").unwrap();
    send_urgent(&client, b'!');
    client.write_all(b"world").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < want {
        match conn.read(&mut buf).unwrap() {
            0 => break,
            n => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// Issue 15, defect 4: Linux `recv` stops short at the urgent mark, so a
/// short read did not mean the receive buffer was drained, and the next
/// read waited for an event that never came.
#[test]
fn urgent_data_does_not_stall_reads() {
    for _ in 0..5 {
        let std_got = std_read_past_urgent(false, 10);
        assert_eq!(std_got, b"helloworld", "std's view of the stream");
        for latched in [true, false] {
            let got = within(Duration::from_secs(5), "read past urgent data", move || {
                read_past_urgent(false, latched, 10)
            });
            assert_eq!(got, std_got, "events latched before the read: {latched}");
        }
    }
}

/// The same with `SO_OOBINLINE`, where the urgent byte stays in the stream
/// and `recv` still stops at it.
#[test]
fn urgent_data_inline_does_not_stall_reads() {
    for _ in 0..5 {
        let std_got = std_read_past_urgent(true, 11);
        assert_eq!(std_got, b"hello!world", "std's view of the stream");
        for latched in [true, false] {
            let got = within(
                Duration::from_secs(5),
                "read past inline urgent data",
                move || read_past_urgent(true, latched, 11),
            );
            assert_eq!(got, std_got, "events latched before the read: {latched}");
        }
    }
}

/// A greenhack Unix stream whose peer (returned, to keep it open) has sent
/// "hello" carrying a descriptor (`SCM_RIGHTS`), then "world", both already
/// arrived.
fn passed_descriptor_then_world() -> (greenhack::net::UnixStream, std::os::unix::net::UnixStream) {
    let (std_a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let a = greenhack::net::UnixStream::from_std(std_a).unwrap();
    send_with_fd(&b, b"hello", 0);
    (&b).write_all(b"world").unwrap();
    greenhack::sleep(Duration::from_millis(50));
    (a, b)
}

/// A Unix stream peer that passes a descriptor (`SCM_RIGHTS`) with "hello",
/// then sends "world": `recv` stops after the bytes that carried the fd.
#[test]
fn a_passed_descriptor_does_not_stall_unix_reads() {
    let got = within(Duration::from_secs(5), "read past SCM_RIGHTS", || {
        greenhack::run(|| {
            let (mut a, _b) = passed_descriptor_then_world();
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while got.len() < 10 {
                match a.read(&mut buf).unwrap() {
                    0 => break,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
            got
        })
    });
    assert_eq!(got, b"helloworld");
}

/// The same through tokio's `AsyncRead` (the poll-based path keeps its own
/// wait): a short read after the bytes that carried a descriptor must not
/// make the next read wait for an event that will not come.
#[cfg(feature = "tokio")]
#[test]
fn a_passed_descriptor_does_not_stall_async_unix_reads() {
    let got = within(Duration::from_secs(5), "async read past SCM_RIGHTS", || {
        greenhack::run(|| {
            let (mut a, _b) = passed_descriptor_then_world();
            greenhack::exempt(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 64];
                while got.len() < 10 {
                    match tokio::io::AsyncReadExt::read(&mut a, &mut buf)
                        .await
                        .unwrap()
                    {
                        0 => break,
                        n => got.extend_from_slice(&buf[..n]),
                    }
                }
                got
            })
        })
    });
    assert_eq!(got, b"helloworld");
}

/// Sends `data` on `sock` with a duplicate of `fd` attached.
fn send_with_fd(sock: &impl AsRawFd, data: &[u8], fd: std::os::fd::RawFd) {
    // SAFETY: msghdr, iovec and the control buffer are initialised locals
    // that outlive the call; CMSG_* compute offsets inside `cbuf`, which is
    // sized with CMSG_SPACE for one fd.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut _,
            iov_len: data.len(),
        };
        let space = libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) as usize;
        let mut cbuf = vec![0u8; space];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
        let n = libc::sendmsg(sock.as_raw_fd(), &msg, 0);
        assert_eq!(
            n,
            data.len() as isize,
            "sendmsg: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Issue 15, defect 7: `sleep(Duration::MAX)` panicked with "overflow when
/// adding duration to instant"; std's `thread::sleep` sleeps forever. A
/// deadline past the end of `Instant` means "never", and such a sleep still
/// ends when the greenlet is cancelled.
#[test]
fn sleep_for_duration_max_sleeps_until_cancelled() {
    let (err, finished_early) = within(Duration::from_secs(5), "cancel a forever sleep", || {
        greenhack::run(|| {
            let sleeper = greenhack::spawn(|| greenhack::sleep(Duration::MAX));
            greenhack::sleep(Duration::from_millis(20));
            let finished_early = sleeper.is_finished();
            sleeper.cancel();
            (sleeper.join().unwrap_err(), finished_early)
        })
    });
    assert!(!finished_early, "a forever sleep ended on its own");
    assert!(err.is_cancelled(), "joined with {err:?}, not as cancelled");
}

/// The socket timeouts and `connect_timeout` take `Duration::MAX` as std
/// does: no deadline, no overflow.
#[test]
fn socket_timeouts_of_duration_max_do_not_overflow() {
    within(Duration::from_secs(5), "timeouts of Duration::MAX", || {
        greenhack::run(|| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let client = greenhack::net::TcpStream::connect_timeout(&addr, Duration::MAX).unwrap();
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::MAX)).unwrap();
            conn.set_write_timeout(Some(Duration::MAX)).unwrap();
            let writer = greenhack::spawn(move || {
                greenhack::sleep(Duration::from_millis(20));
                (&client).write_all(b"late").unwrap();
            });
            let mut buf = [0u8; 4];
            conn.read_exact(&mut buf).unwrap(); // waits, no deadline
            assert_eq!(&buf, b"late");
            conn.write_all(b"ok").unwrap();
            writer.join().unwrap();
        })
    });
}

/// Issue 15, defect 8: a switch hook that panicked ended the process with a
/// bare SIGABRT. The process still aborts (see `set_switch_hook`), but
/// standard error names the hook and carries the panic's message.
#[test]
fn a_panicking_switch_hook_aborts_with_a_message() {
    const TEST: &str = "a_panicking_switch_hook_aborts_with_a_message";
    if util::is_child(TEST) {
        fn hook(_: greenhack::debug::SwitchEvent<'_>) {
            panic!("tracer bug 42");
        }
        greenhack::debug::set_switch_hook(Some(hook));
        greenhack::run(|| greenhack::spawn(|| 1).join().unwrap());
        unreachable!("the hook panics on the first switch");
    }
    let out = util::run_child(TEST);
    util::assert_aborted(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("greenhack: the switch hook panicked: tracer bug 42"),
        "stderr does not name the problem:\n{stderr}"
    );
}

/// A socket that turns readable while a hundred greenlets keep the loop busy
/// (channel ping-pong, never yielding) is noticed within about one
/// `EVENT_INTERVAL` (61) of polls and a round, not 61 *rounds* of a hundred
/// polls each: the loop counts polls between its looks at I/O, and turns in
/// the middle of a long round. (A server's database answers waited
/// milliseconds behind its busy connections.)
#[test]
fn io_is_noticed_within_a_bounded_number_of_polls_however_many_greenlets_are_busy() {
    use std::cell::Cell;
    use std::rc::Rc;

    use greenhack::net::UnixStream;
    use greenhack::sync::mpsc as gmpsc;

    const PAIRS: usize = 50;
    const HOPS: u64 = 400;
    let lag = within(Duration::from_secs(60), "the busy loop", || {
        greenhack::run(|| {
            let hops = Rc::new(Cell::new(0u64));
            let (mut reader, mut writer) = UnixStream::pair().unwrap();
            let woke_at = {
                let hops = hops.clone();
                greenhack::spawn(move || {
                    let mut byte = [0u8; 1];
                    reader.read_exact(&mut byte).unwrap();
                    hops.get()
                })
            };
            for _ in 0..PAIRS {
                let (to_b, b_rx) = gmpsc::channel::<u64>();
                let (to_a, a_rx) = gmpsc::channel::<u64>();
                let h = hops.clone();
                drop(greenhack::spawn(move || {
                    for v in b_rx.iter() {
                        h.set(h.get() + 1);
                        if to_a.send(v + 1).is_err() {
                            break;
                        }
                    }
                }));
                drop(greenhack::spawn(move || {
                    for i in 0..HOPS {
                        to_b.send(i).unwrap();
                        a_rx.recv().unwrap();
                    }
                }));
            }
            // Written once the ping-pong is under way.
            let written_at = {
                let hops = hops.clone();
                greenhack::spawn(move || {
                    while hops.get() < 1_000 {
                        // Wait one hop without yielding the turn.
                        let (tx, rx) = gmpsc::channel::<()>();
                        drop(greenhack::spawn(move || tx.send(()).unwrap()));
                        rx.recv().unwrap();
                    }
                    writer.write_all(b"!").unwrap();
                    hops.get()
                })
            };
            let written = written_at.join().unwrap();
            let woke = woke_at.join().unwrap();
            woke - written
        })
    });
    // Each hop is a poll of a replying greenlet (half the polls); with 100
    // busy greenlets a round is ~100 polls. Counting rounds, the lag
    // measured 1,550 hops; counting polls, 51.
    assert!(
        lag <= 300,
        "the readable socket was noticed {lag} hops late"
    );
}
