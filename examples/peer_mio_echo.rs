//! Echo server as a hand-written `mio` state machine: the floor that
//! greenhack's `examples/echo.rs` is measured against in
//! `scripts/bench-servers`.
//!
//! ```text
//! cargo run --release --example peer_mio_echo -- 127.0.0.1:7000
//! ```
//!
//! One thread, one `mio::Poll`, a hand-rolled slab of connections indexed
//! by token, every socket registered once for reading and writing
//! (edge-triggered): the loop in `support/mio_server.rs`. On an event a connection reads and writes each chunk
//! straight back; what the kernel does not take is kept and the connection
//! stops reading until it is writable again. One 2 KiB read buffer shared
//! by all connections (greenhack's example has 2 KiB per connection on its
//! stack); `TCP_NODELAY` on every accepted socket.
//!
//! Like tokio on the same `mio` (`PollEvented::poll_read`), a read that
//! fills less than the buffer is taken as proof that the socket is drained:
//! with epoll's edge-triggered mode the next data brings a new event, so the
//! connection waits at once instead of making the `read` that would only
//! say `WouldBlock` (and a short write likewise proves the send buffer
//! full). This is the floor: the fewest system calls per request, two.

use std::io::{self, Read, Write};

use mio::net::TcpStream;

#[path = "support/mio_server.rs"]
mod mio_server;

struct Conn {
    stream: TcpStream,
    /// Bytes read but not yet written back.
    pending: Vec<u8>,
}

fn main() -> io::Result<()> {
    let addr = mio_server::addr_arg("127.0.0.1:7000")?;
    let mut buf = vec![0u8; 2 * 1024];
    mio_server::serve(
        "mio echo",
        addr,
        |stream| Conn {
            stream,
            pending: Vec::new(),
        },
        |conn| drive(conn, &mut buf),
    )
}

/// Echoes what can be echoed without waiting. Returns whether the
/// connection stays open.
fn drive(conn: &mut Conn, buf: &mut [u8]) -> bool {
    loop {
        // Flush what the kernel did not take last time before reading more.
        while !conn.pending.is_empty() {
            match conn.stream.write(&conn.pending) {
                Ok(n) => {
                    let short = n < conn.pending.len();
                    conn.pending.drain(..n);
                    if short {
                        return true; // the send buffer is full
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        let n = match conn.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        match conn.stream.write(&buf[..n]) {
            Ok(m) if m == n => {}
            Ok(m) => {
                conn.pending.extend_from_slice(&buf[m..n]);
                return true; // the send buffer is full
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.pending.extend_from_slice(&buf[..n]);
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                conn.pending.extend_from_slice(&buf[..n]);
            }
            Err(_) => return false,
        }
        if n < buf.len() {
            return true; // a short read: the socket is drained
        }
    }
}
