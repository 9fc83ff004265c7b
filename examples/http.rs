//! Minimal HTTP/1.1 server with keep-alive: one greenlet per connection,
//! answering every request with "Hello, world!".
//!
//! ```text
//! cargo run --release --example http -- 127.0.0.1:8080 [--threads N] [--idle-timeout SECS] [--header-timeout SECS]
//! wrk -t1 -c50 -d10s http://127.0.0.1:8080/
//! ```
//!
//! `--threads N` (default: every CPU) runs N loops, one per thread, each
//! with its own `SO_REUSEPORT` listener on the address.
//!
//! The handler is sequential code: read until a full request is buffered,
//! parse it with `httparse`, write the response, repeat. Pipelined requests
//! are answered in order; `Connection: close` (or HTTP/1.0 without
//! keep-alive) ends the connection after the response.
//!
//! The server is fit to face misbehaving clients (`support/server.rs`): a
//! request must be complete `--header-timeout` seconds (default 10) after
//! its first byte, however slowly it trickles in; a connection that makes
//! no progress for `--idle-timeout` seconds (default 60) is closed; a
//! request head larger than the 8 KiB buffer gets a 431; accept errors are
//! logged at most once a second and back off; out of file descriptors, new
//! connections are closed at once instead of left waiting.

use std::io::{self, Read, Write};

use greenhack::net::TcpStream;

#[path = "support/http_protocol.rs"]
mod http_protocol;
#[path = "support/server.rs"]
mod server;
#[path = "support/threads.rs"]
mod threads;

fn main() -> io::Result<()> {
    let cfg = server::Config::from_args("http", "127.0.0.1:8080", true);
    let (addr, threads, hosted) = (cfg.addr.clone(), cfg.threads, cfg.hosted);
    let spread = if cfg.balanced {
        threads::Spread::Balanced
    } else {
        threads::Spread::ReusePort
    };
    threads::serve("http", &addr, threads, hosted, spread, move |incoming| {
        server::serve("http", &cfg, incoming, |stream, conn| {
            if let Err(e) = serve(stream, conn) {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) {
                    eprintln!("http: {e}");
                }
            }
        })
    })
}

/// Serves one connection until the peer closes or asks to.
fn serve(mut stream: TcpStream, conn: &server::Conn) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 8192];
    let mut filled = 0;
    let mut out = Vec::with_capacity(1024);
    loop {
        // Answer every complete request in the buffer (pipelining).
        let (consumed, close) = http_protocol::answer(&buf[..filled], &mut out);
        if !out.is_empty() {
            stream.write_all(&out)?;
            out.clear();
        }
        if close {
            return Ok(());
        }
        buf.copy_within(consumed..filled, 0);
        filled -= consumed;
        // What is left is the start of a request: it has until the header
        // timeout to complete.
        conn.request_pending(filled > 0);
        if filled == buf.len() {
            // A request head larger than our buffer: refuse it and close.
            return stream.write_all(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
                  content-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
        match stream.read(&mut buf[filled..])? {
            0 => return Ok(()),
            n => {
                conn.progress();
                filled += n;
            }
        }
    }
}
