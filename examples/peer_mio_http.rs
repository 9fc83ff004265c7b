//! Minimal HTTP/1.1 server with keep-alive as a hand-written `mio` state
//! machine: the floor that greenhack's `examples/http.rs` is measured
//! against in `scripts/bench-servers`.
//!
//! ```text
//! cargo run --release --example peer_mio_http -- 127.0.0.1:8080
//! ```
//!
//! One thread, one `mio::Poll`, a hand-rolled slab of connections indexed by
//! token, every socket registered once for reading and writing
//! (edge-triggered): the loop in `support/mio_server.rs`. Each connection is greenhack's `serve` turned inside
//! out: an 8 KiB request buffer, every complete request in it parsed with
//! `httparse` and answered in order (pipelining), the responses written in
//! one go; while the kernel does not take all of them the connection waits
//! for writability and reads nothing more. `Connection: close` (or HTTP/1.0
//! without keep-alive) ends the connection after the response. The bytes on
//! the wire are greenhack's.
//!
//! Like tokio on the same `mio` (`PollEvented::poll_read`), a read that
//! fills less than the free part of the buffer is taken as proof that the
//! socket is drained: with epoll's edge-triggered mode the next data brings a
//! new event, so the connection waits at once instead of making the `read`
//! that would only say `WouldBlock` (and a short write likewise proves the
//! send buffer full). This is the floor: the fewest system calls per
//! request, two.

use std::io::{self, Read, Write};

use mio::net::TcpStream;

#[path = "support/http_protocol.rs"]
mod http_protocol;
#[path = "support/mio_server.rs"]
mod mio_server;

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    filled: usize,
    /// Responses not yet (fully) written, from `written` on.
    out: Vec<u8>,
    written: usize,
    /// Close once `out` is written.
    close: bool,
}

fn main() -> io::Result<()> {
    let addr = mio_server::addr_arg("127.0.0.1:8080")?;
    mio_server::serve(
        "mio http",
        addr,
        |stream| Conn {
            stream,
            buf: vec![0u8; 8192],
            filled: 0,
            out: Vec::with_capacity(1024),
            written: 0,
            close: false,
        },
        |conn| match drive(conn) {
            Ok(keep) => keep,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) {
                    eprintln!("mio http: {e}");
                }
                false
            }
        },
    )
}

/// Serves what can be served without waiting. Returns whether the
/// connection stays open.
fn drive(c: &mut Conn) -> io::Result<bool> {
    // Responses left over from last time go out before anything is read.
    if !flush(c)? {
        return Ok(true);
    }
    if c.close {
        return Ok(false);
    }
    loop {
        if c.filled == c.buf.len() {
            return Ok(false); // a request larger than our buffer: give up on it
        }
        let space = c.buf.len() - c.filled;
        let n = match c.stream.read(&mut c.buf[c.filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        c.filled += n;
        // Answer every complete request in the buffer (pipelining).
        let (consumed, close) = http_protocol::answer(&c.buf[..c.filled], &mut c.out);
        c.close = close;
        c.buf.copy_within(consumed..c.filled, 0);
        c.filled -= consumed;
        if !flush(c)? {
            return Ok(true);
        }
        if c.close {
            return Ok(false);
        }
        if n < space {
            return Ok(true); // a short read: the socket is drained
        }
    }
}

/// Writes `out`; returns whether all of it went (else wait for writability).
fn flush(c: &mut Conn) -> io::Result<bool> {
    while c.written < c.out.len() {
        match c.stream.write(&c.out[c.written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                c.written += n;
                if c.written < c.out.len() {
                    return Ok(false); // the send buffer is full
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    c.out.clear();
    c.written = 0;
    Ok(true)
}
