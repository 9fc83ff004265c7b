//! Echo load generator for `scripts/bench-servers`: closed-loop, many
//! connections, one thread.
//!
//! ```text
//! cargo run --release --example echo_load -- ADDR [CONNECTIONS [SECONDS [MESSAGE_BYTES [MODE]]]]
//! cargo run --release --example echo_load -- 127.0.0.1:7000 50 5 64
//! ```
//!
//! Opens CONNECTIONS (default 50) connections to ADDR, then for SECONDS
//! (default 5) each connection sends a MESSAGE_BYTES (default 64) message,
//! waits until the whole echo is back (and checks it), and sends the next.
//! The latency of a request is from just before its `write` to the moment
//! the last byte of its echo is read. Connecting is not timed.
//!
//! MODE `http` sends keep-alive `GET /` requests instead and waits for the
//! byte-exact response of the benchmark's HTTP servers: a closed-loop HTTP
//! load far lighter on its core than `wrk`, for when `wrk` saturates first.
//!
//! Prints one line of JSON on standard output:
//!
//! ```text
//! {"connections":50,"message_bytes":64,"requests":812345,"seconds":5.000,"rps":162469.0,"p50_us":301.2,"p99_us":402.7,"max_us":1203.4}
//! ```
//!
//! # Why a raw `mio` loop
//!
//! The generator has one core (the benchmark pins it with `taskset`), so it
//! must spend as little CPU per request as it can, or it — not the server —
//! sets the pace. A thread per connection would pay a context switch per
//! request on that one core; tokio, or greenhack itself, would add their own
//! scheduling costs (and greenhack would be measuring itself on both ends).
//! A hand-written edge-triggered `mio` state machine costs one `epoll_wait`
//! per batch of ready connections and, per request, one `read` and one
//! `write`: it knows the protocol, so once a whole echo is in, the socket is
//! empty (the server sends nothing unasked) and it skips the `read` that
//! would only return `WouldBlock`. The server makes at least three calls per
//! request (`read`, `write`, `read` → `WouldBlock`), so the client is the
//! lighter side.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

struct Conn {
    stream: TcpStream,
    /// Bytes of the current echo received so far.
    got: usize,
    sent_at: Instant,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("echo_load: {e}");
        std::process::exit(1);
    }
}

fn arg<T: std::str::FromStr>(i: usize, default: T) -> io::Result<T> {
    match std::env::args().nth(i) {
        None => Ok(default),
        Some(s) => s.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("argument {i}: cannot parse {s:?}"),
            )
        }),
    }
}

fn run() -> io::Result<()> {
    let addr: String = arg(1, "127.0.0.1:7000".to_string())?;
    let connections: usize = arg(2, 50)?;
    let seconds: f64 = arg(3, 5.0)?;
    let size: usize = arg(4, 64)?;
    let mode: String = arg(5, "echo".to_string())?;
    if connections == 0 || size == 0 || seconds.is_nan() || seconds <= 0.0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "connections, seconds and message bytes must be positive",
        ));
    }
    let addr: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;

    // What each request sends and the exact reply it waits for: an echo of
    // a recognisable pattern (so a wrong echo is caught), or, in `http`
    // mode, a keep-alive GET and the byte-exact response every HTTP server
    // of the benchmark gives (examples/support/http_protocol.rs).
    let (message, expected): (Vec<u8>, Vec<u8>) = match mode.as_str() {
        "echo" => {
            let m: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
            (m.clone(), m)
        }
        "http" => (
            b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\nHello, world!"
                .to_vec(),
        ),
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("mode {other:?}: echo or http"),
            ));
        }
    };
    let size = expected.len();

    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut conns = Vec::with_capacity(connections);
    for i in 0..connections {
        // Blocking connect, so every connection is established before the
        // clock starts; then handed to mio.
        let s = std::net::TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(s);
        poll.registry()
            .register(&mut stream, Token(i), Interest::READABLE)?;
        conns.push(Conn {
            stream,
            got: 0,
            sent_at: Instant::now(),
        });
    }

    let mut latencies: Vec<u32> = Vec::with_capacity(1 << 20);
    let mut buf = vec![0u8; size.max(16 * 1024)];
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    for c in &mut conns {
        send(c, &message)?;
    }
    let mut requests: u64 = 0;
    'run: loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match poll.poll(&mut events, Some(deadline - now)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            let c = &mut conns[event.token().0];
            loop {
                let want = size - c.got;
                match c.stream.read(&mut buf[..want]) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the server closed a connection",
                        ));
                    }
                    Ok(n) => {
                        if buf[..n] != expected[c.got..c.got + n] {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "the reply differs from the expected one",
                            ));
                        }
                        c.got += n;
                        if c.got == size {
                            let done = Instant::now();
                            if done > deadline {
                                break 'run;
                            }
                            let ns = done.duration_since(c.sent_at).as_nanos();
                            latencies.push(u32::try_from(ns).unwrap_or(u32::MAX));
                            requests += 1;
                            c.got = 0;
                            send(c, &message)?;
                            // The socket is empty now: the server sends
                            // nothing until it has our next message.
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64().min(seconds);

    let (p50, p99, max) = if latencies.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        let n = latencies.len();
        let us = |ns: u32| f64::from(ns) / 1000.0;
        let p50 = us(*latencies.select_nth_unstable(n / 2).1);
        let p99 = us(*latencies.select_nth_unstable((n * 99 / 100).min(n - 1)).1);
        let max = us(latencies.iter().copied().max().unwrap_or(0));
        (p50, p99, max)
    };
    println!(
        "{{\"mode\":\"{mode}\",\"connections\":{connections},\"message_bytes\":{},\"requests\":{requests},\
         \"seconds\":{elapsed:.3},\"rps\":{:.1},\"p50_us\":{p50:.1},\"p99_us\":{p99:.1},\
         \"max_us\":{max:.1}}}",
        message.len(),
        requests as f64 / elapsed
    );
    Ok(())
}

/// Sends one whole message; a 64-byte write into an empty socket buffer is
/// taken at once, so `WouldBlock` here is an error, not a wait.
fn send(c: &mut Conn, message: &[u8]) -> io::Result<()> {
    c.sent_at = Instant::now();
    let n = c.stream.write(message)?;
    if n != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write of a message",
        ));
    }
    Ok(())
}
