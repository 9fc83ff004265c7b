//! Minimal HTTP/1.1 server with keep-alive: one greenlet per connection,
//! answering every request with "Hello, world!".
//!
//! ```text
//! cargo run --release --example http -- 127.0.0.1:8080
//! wrk -t1 -c50 -d10s http://127.0.0.1:8080/
//! ```
//!
//! The handler is sequential code: read until a full request is buffered,
//! parse it with `httparse`, write the response, repeat. Pipelined requests
//! are answered in order; `Connection: close` (or HTTP/1.0 without
//! keep-alive) ends the connection after the response.

use std::io::{self, Read, Write};
use std::time::Duration;

use greenhack::net::{TcpListener, TcpStream};

#[path = "support/http_protocol.rs"]
mod http_protocol;

fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    greenhack::run(|| {
        let listener = TcpListener::bind(&addr)?;
        println!("http: listening on {}", listener.local_addr()?);
        loop {
            match listener.accept() {
                Ok((stream, _)) => drop(greenhack::spawn(move || {
                    if let Err(e) = serve(stream) {
                        if !matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                        ) {
                            eprintln!("http: {e}");
                        }
                    }
                })),
                Err(e) => {
                    eprintln!("http: accept: {e}");
                    greenhack::sleep(Duration::from_millis(10));
                }
            }
        }
    })
}

/// Serves one connection until the peer closes or asks to.
fn serve(mut stream: TcpStream) -> io::Result<()> {
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
        if filled == buf.len() {
            return Ok(()); // a request larger than our buffer: give up on it
        }
        match stream.read(&mut buf[filled..])? {
            0 => return Ok(()),
            n => filled += n,
        }
    }
}
