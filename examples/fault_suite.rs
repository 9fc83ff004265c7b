//! The fault suite: hostile clients against the example servers (`echo`,
//! `http`), run by `scripts/fault-suite`.
//!
//! ```text
//! cargo build --release --example echo --example http --example fault_suite
//! target/release/examples/fault_suite target/release/examples/echo target/release/examples/http
//! QUICK=1 target/release/examples/fault_suite ...   # the short version CI runs
//! ```
//!
//! For each server binary (its protocol is told by its file name) and each
//! attack — slowloris, RST mid-request, RST mid-response, half-close,
//! malformed and oversized requests, descriptor exhaustion under a low
//! `RLIMIT_NOFILE`, connection churn, thousands of idle connections, TCP
//! urgent data — it starts the server on a fresh port, counts its open
//! descriptors (`/proc/PID/fd`), runs the attack, and checks that:
//!
//! * the server is still alive;
//! * it answers a normal request within 50 ms while the attack is under
//!   way and after it (best of three tries: the machine is shared), except
//!   while its descriptors are exhausted, where a new connection must
//!   instead be closed at once (shed) rather than left waiting;
//! * its descriptor count returns to the baseline once the attackers are
//!   gone or timed out;
//! * the attack-specific behaviour (a 400 for garbage, the idle timeout
//!   closing idle connections, …).
//!
//! Prints a line per check and exits non-zero if any failed.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The answer a probe must get within this long.
const PROBE_LIMIT: Duration = Duration::from_millis(50);
/// The servers run with these timeouts, short so the suite is.
const IDLE_TIMEOUT: &str = "2";
const HEADER_TIMEOUT: &str = "1";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    Echo,
    Http,
}

const HTTP_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
const HTTP_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\nHello, world!";

/// One server process under attack.
struct Server {
    child: Child,
    addr: SocketAddr,
    proto: Proto,
}

impl Server {
    fn start(bin: &str, proto: Proto, nofile: Option<u64>) -> Server {
        let mut cmd = Command::new(bin);
        // One loop: the attacks and the descriptor counts are about one
        // loop's defences (several loops are tests/runtime.rs's business),
        // and one loop makes the counts exact.
        cmd.args([
            "127.0.0.1:0",
            "--threads",
            "1",
            "--idle-timeout",
            IDLE_TIMEOUT,
        ]);
        if proto == Proto::Http {
            cmd.args(["--header-timeout", HEADER_TIMEOUT]);
        }
        // The descriptor-exhaustion run reads the server's log; the others
        // let it through.
        let stderr = if nofile.is_some() {
            Stdio::piped()
        } else {
            Stdio::inherit()
        };
        cmd.stdout(Stdio::piped()).stderr(stderr);
        if let Some(n) = nofile {
            // SAFETY: setrlimit is async-signal-safe and touches only the
            // child's own limits, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let mut out = child.stdout.take().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while out.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        let addr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{bin}: no listening line, got {line:?}"));
        Server { child, addr, proto }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(usize::MAX)
    }

    /// A normal request, answered in full: its latency, or why it failed.
    fn probe_once(&self) -> Result<Duration, String> {
        let start = Instant::now();
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.set_nodelay(true).unwrap();
        let (req, resp): (&[u8], &[u8]) = match self.proto {
            Proto::Echo => (b"ping 0123456789", b"ping 0123456789"),
            Proto::Http => (HTTP_REQUEST, HTTP_RESPONSE),
        };
        s.write_all(req).map_err(|e| format!("write: {e}"))?;
        let mut got = vec![0u8; resp.len()];
        s.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
        if got != resp {
            return Err(format!("wrong answer {:?}", String::from_utf8_lossy(&got)));
        }
        Ok(start.elapsed())
    }

    /// Best of three probes within `PROBE_LIMIT`.
    fn probe(&self) -> Result<Duration, String> {
        let mut last = Err(String::new());
        for _ in 0..3 {
            last = self.probe_once();
            if matches!(last, Ok(t) if t <= PROBE_LIMIT) {
                return last;
            }
        }
        match last {
            Ok(t) => Err(format!("answered in {t:?}, over {PROBE_LIMIT:?}")),
            e => e,
        }
    }

    /// Waits up to `limit` for the descriptor count to come back to
    /// `baseline`.
    fn settle(&self, baseline: usize, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let n = self.fds();
            if n <= baseline {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(format!("{n} descriptors open, baseline {baseline}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Collects the results.
struct Report {
    failed: Vec<String>,
    passed: usize,
}

impl Report {
    fn check(&mut self, what: &str, r: Result<String, String>) {
        match r {
            Ok(note) => {
                self.passed += 1;
                println!(
                    "  ok    {what}{}",
                    if note.is_empty() {
                        note
                    } else {
                        format!(": {note}")
                    }
                );
            }
            Err(e) => {
                println!("  FAIL  {what}: {e}");
                self.failed.push(format!("{what}: {e}"));
            }
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Closes `s` with a reset (`SO_LINGER` 0) instead of a FIN.
fn reset(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a valid struct for the call, its size passed; the
    // fd is open until `s` drops below.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

/// True if the server closes `s` (EOF or reset) within `limit`, reading
/// and discarding whatever it sends first.
fn closed_within(s: &TcpStream, limit: Duration) -> bool {
    let mut s = s;
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

fn send_urgent(s: &TcpStream, byte: u8) {
    // SAFETY: one readable byte that outlives the call; `s` is open.
    unsafe { libc::send(s.as_raw_fd(), (&raw const byte).cast(), 1, libc::MSG_OOB) };
}

struct Sizes {
    slowloris: usize,
    resets: usize,
    churn: usize,
    idle: usize,
}

/// Each attack: runs it against `srv`, probing while it lasts; returns a
/// note or what went wrong (behaviour specific to the attack).
fn attack(name: &str, srv: &Server, sizes: &Sizes) -> Result<String, String> {
    let addr = srv.addr;
    match name {
        "slowloris" => {
            // Connections that send a request a byte at a time and never
            // finish it.
            let mut conns: Vec<TcpStream> = (0..sizes.slowloris).map(|_| connect(addr)).collect();
            let start = Instant::now();
            let mut probed = None;
            let head = b"GET / HTTP/1.1\r\nX-Slow: ";
            for (i, c) in conns.iter_mut().enumerate() {
                let _ = c.write_all(&head[..1 + i % 4]);
            }
            while start.elapsed() < Duration::from_millis(1500) {
                for c in conns.iter_mut() {
                    let _ = c.write_all(b"a");
                }
                if probed.is_none() && start.elapsed() > Duration::from_millis(300) {
                    probed = Some(srv.probe().map_err(|e| format!("during: {e}"))?);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if srv.proto == Proto::Http {
                // The header timeout (1 s) must have closed them all.
                let limit = Duration::from_millis(1500);
                let open = conns
                    .iter_mut()
                    .filter(|c| !closed_within(c, limit))
                    .count();
                if open > 0 {
                    return Err(format!(
                        "{open} slowloris connections outlived the header timeout"
                    ));
                }
                return Ok(format!(
                    "all closed by the header timeout; probe during {probed:?}"
                ));
            }
            Ok(format!("probe during {probed:?}"))
        }
        "rst-mid-request" => {
            for i in 0..sizes.resets {
                let mut s = connect(addr);
                let req: &[u8] = match srv.proto {
                    Proto::Http => b"GET / HTTP/1.1\r\nHost: x\r\nX-Half: ",
                    Proto::Echo => b"half a message",
                };
                let _ = s.write_all(&req[..req.len() / 2 + i % 8]);
                reset(s);
                if i == sizes.resets / 2 {
                    srv.probe().map_err(|e| format!("during: {e}"))?;
                }
            }
            Ok(String::new())
        }
        "rst-mid-response" => {
            // Ask for far more than the socket buffers hold, read a little,
            // reset while the server is still writing.
            for i in 0..sizes.resets / 10 {
                let mut s = connect(addr);
                let big: Vec<u8> = match srv.proto {
                    Proto::Http => HTTP_REQUEST.repeat(4000),
                    Proto::Echo => vec![b'x'; 256 * 1024],
                };
                let writer = {
                    let mut w = s.try_clone().unwrap();
                    std::thread::spawn(move || {
                        let _ = w.write_all(&big);
                    })
                };
                let mut buf = [0u8; 1000];
                let _ = s.read(&mut buf);
                reset(s);
                let _ = writer.join();
                if i == sizes.resets / 20 {
                    srv.probe().map_err(|e| format!("during: {e}"))?;
                }
            }
            Ok(String::new())
        }
        "half-close" => {
            // A complete request, then shutdown(Write): the answer must
            // still come, then the close.
            let (req, resp): (&[u8], &[u8]) = match srv.proto {
                Proto::Http => (HTTP_REQUEST, HTTP_RESPONSE),
                Proto::Echo => (b"half-closed", b"half-closed"),
            };
            let mut s = connect(addr);
            s.write_all(req).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).map_err(|e| format!("read: {e}"))?;
            if got != resp {
                return Err(format!("got {:?}", String::from_utf8_lossy(&got)));
            }
            // And a connection half-closed before sending anything.
            let s = connect(addr);
            s.shutdown(Shutdown::Write).unwrap();
            if !closed_within(&s, Duration::from_secs(1)) {
                return Err("an empty half-closed connection was not closed".into());
            }
            srv.probe().map_err(|e| format!("during: {e}"))?;
            Ok(String::new())
        }
        "malformed" => {
            let garbage: &[u8] = b"\x00\x01\xffNOT HTTP\r\n\r\n";
            let mut s = connect(addr);
            s.write_all(garbage).unwrap();
            match srv.proto {
                Proto::Http => {
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).map_err(|e| format!("read: {e}"))?;
                    if !got.starts_with(b"HTTP/1.1 400 ") {
                        return Err(format!("got {:?}", String::from_utf8_lossy(&got)));
                    }
                    Ok("400 and closed".into())
                }
                Proto::Echo => {
                    let mut got = vec![0u8; garbage.len()];
                    s.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
                    Ok("echoed".into())
                }
            }
        }
        "oversized" => {
            let mut s = connect(addr);
            match srv.proto {
                Proto::Http => {
                    let mut req = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
                    req.resize(64 * 1024, b'a');
                    let _ = s.write_all(&req);
                    let mut got = Vec::new();
                    let _ = s.read_to_end(&mut got);
                    if !got.starts_with(b"HTTP/1.1 431 ") {
                        return Err(format!("got {:?}", String::from_utf8_lossy(&got)));
                    }
                    Ok("431 and closed".into())
                }
                Proto::Echo => {
                    // A message far larger than the server's buffer.
                    let msg: Vec<u8> = (0..4 << 20).map(|i: u32| i as u8).collect();
                    let mut w = s.try_clone().unwrap();
                    let expect = msg.clone();
                    let writer = std::thread::spawn(move || w.write_all(&msg));
                    let mut got = vec![0u8; expect.len()];
                    s.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
                    writer.join().unwrap().map_err(|e| format!("write: {e}"))?;
                    if got != expect {
                        return Err("echo differs".into());
                    }
                    Ok("4 MiB echoed".into())
                }
            }
        }
        "churn" => {
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let n = sizes.churn / 4;
                    let proto = srv.proto;
                    std::thread::spawn(move || {
                        for _ in 0..n {
                            let mut s = connect(addr);
                            let (req, len) = match proto {
                                Proto::Http => (HTTP_REQUEST, HTTP_RESPONSE.len()),
                                Proto::Echo => (&b"churn"[..], 5),
                            };
                            s.write_all(req).unwrap();
                            let mut got = vec![0u8; len];
                            s.read_exact(&mut got).unwrap();
                        }
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(100));
            let during = srv.probe().map_err(|e| format!("during: {e}"));
            for t in threads {
                t.join().map_err(|_| "a churn client failed".to_string())?;
            }
            Ok(format!(
                "{} connections, probe during {:?}",
                sizes.churn, during?
            ))
        }
        "idle" => {
            // Thousands of connections that never send a byte: the server
            // must keep answering, and its idle timeout (2 s) close them.
            let mut conns: Vec<TcpStream> = (0..sizes.idle).map(|_| connect(addr)).collect();
            std::thread::sleep(Duration::from_millis(200));
            let during = srv.probe().map_err(|e| format!("during: {e}"))?;
            let limit = Duration::from_secs(4);
            let start = Instant::now();
            let open = conns
                .iter_mut()
                .filter(|c| !closed_within(c, limit.saturating_sub(start.elapsed())))
                .count();
            if open > 0 {
                return Err(format!(
                    "{open} of {} idle connections outlived the idle timeout",
                    sizes.idle
                ));
            }
            Ok(format!(
                "{} idle, probe during {during:?}, all closed by the idle timeout",
                sizes.idle
            ))
        }
        "urgent" => {
            // "hello" + urgent "!" + "world": the urgent byte leaves the
            // stream; what remains must be served, not stall.
            let mut s = connect(addr);
            let (a, b, want): (&[u8], &[u8], &[u8]) = match srv.proto {
                Proto::Echo => (b"hello", b"world", b"helloworld"),
                Proto::Http => (b"GET / HTTP/1.1\r\nX-A: a", b"c\r\n\r\n", HTTP_RESPONSE),
            };
            s.write_all(a).unwrap();
            send_urgent(&s, b'!');
            s.write_all(b).unwrap();
            let mut got = vec![0u8; want.len()];
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            s.read_exact(&mut got)
                .map_err(|e| format!("read: {e} (stalled?)"))?;
            if got != want {
                return Err(format!("got {:?}", String::from_utf8_lossy(&got)));
            }
            Ok(String::new())
        }
        _ => unreachable!("unknown attack {name}"),
    }
}

/// Descriptor exhaustion: the server runs with `RLIMIT_NOFILE` 64 and is
/// sent 200 connections that stay open.
fn exhaust(bin: &str, proto: Proto, report: &mut Report) {
    let mut srv = Server::start(bin, proto, Some(64));
    srv.probe_once().ok(); // warm up
    let baseline = srv.fds();
    let held: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect_timeout(&srv.addr, Duration::from_secs(1)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // A new client is shed at once: closed, not left waiting.
    let start = Instant::now();
    let shed = TcpStream::connect_timeout(&srv.addr, Duration::from_secs(1))
        .is_ok_and(|s| closed_within(&s, Duration::from_secs(1)));
    let t = start.elapsed();
    report.check(
        "fd-exhaustion: new connection shed at once",
        if shed && t <= PROBE_LIMIT {
            Ok(format!("closed in {t:?}"))
        } else {
            Err(format!("closed: {shed}, after {t:?}"))
        },
    );
    drop(held);
    // Log lines: the accept loop must not flood (≤ 1 a second, plus one).
    std::thread::sleep(Duration::from_millis(300));
    report.check(
        "fd-exhaustion: alive",
        if srv.alive() {
            Ok(String::new())
        } else {
            Err("server died".into())
        },
    );
    report.check(
        "fd-exhaustion: probe after",
        srv.probe().map(|t| format!("{t:?}")),
    );
    report.check(
        "fd-exhaustion: fds back to baseline",
        srv.settle(baseline, Duration::from_secs(5))
            .map(|()| String::new()),
    );
    let _ = srv.child.kill();
    let _ = srv.child.wait();
    let mut err = String::new();
    srv.child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let lines = err.lines().count();
    report.check(
        "fd-exhaustion: rate-limited accept errors",
        if lines <= 3 {
            Ok(format!("{lines} log lines"))
        } else {
            let first: Vec<&str> = err.lines().take(3).collect();
            Err(format!(
                "{lines} log lines, starting:\n{}",
                first.join("\n")
            ))
        },
    );
}

fn main() {
    let bins: Vec<String> = std::env::args().skip(1).collect();
    if bins.is_empty() {
        eprintln!("usage: fault_suite SERVER_BINARY... (named echo or http)");
        std::process::exit(2);
    }
    let quick = std::env::var("QUICK").as_deref() == Ok("1");
    let sizes = if quick {
        Sizes {
            slowloris: 100,
            resets: 300,
            churn: 1000,
            idle: 1000,
        }
    } else {
        Sizes {
            slowloris: 1000,
            resets: 5000,
            churn: 10000,
            idle: 5000,
        }
    };
    raise_nofile(2 * sizes.idle as u64 + 1000);
    let mut report = Report {
        failed: Vec::new(),
        passed: 0,
    };
    let attacks = [
        "slowloris",
        "rst-mid-request",
        "rst-mid-response",
        "half-close",
        "malformed",
        "oversized",
        "churn",
        "idle",
        "urgent",
    ];
    for bin in &bins {
        let proto = if bin.ends_with("http") {
            Proto::Http
        } else {
            Proto::Echo
        };
        println!("{bin} ({proto:?})");
        for name in attacks {
            let mut srv = Server::start(bin, proto, None);
            let _ = srv.probe_once(); // warm up: first connection, first stack
            let baseline = srv.fds();
            // A client step that fails outright (a connect timing out
            // against a full backlog, …) fails the attack, not the suite.
            let r = std::panic::catch_unwind(|| attack(name, &srv, &sizes))
                .unwrap_or_else(|p| Err(panic_message(&*p)));
            report.check(&format!("{name}: behaviour"), r);
            report.check(
                &format!("{name}: alive"),
                if srv.alive() {
                    Ok(String::new())
                } else {
                    Err("server died".into())
                },
            );
            report.check(
                &format!("{name}: probe after"),
                srv.probe().map(|t| format!("{t:?}")),
            );
            report.check(
                &format!("{name}: fds back to baseline"),
                srv.settle(baseline, Duration::from_secs(5))
                    .map(|()| String::new()),
            );
        }
        exhaust(bin, proto, &mut report);
    }
    println!(
        "{} checks passed, {} failed",
        report.passed,
        report.failed.len()
    );
    if !report.failed.is_empty() {
        for f in &report.failed {
            println!("FAILED: {f}");
        }
        std::process::exit(1);
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a client step panicked".into())
}

/// Raises this process's soft descriptor limit (the idle attack holds
/// thousands of client sockets), up to the hard limit.
fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill and then to pass back.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
