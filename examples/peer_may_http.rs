//! Minimal HTTP/1.1 server with keep-alive on `may`'s stackful coroutines
//! with one worker thread: the peer of `examples/http.rs` in
//! `scripts/bench-servers`.
//!
//! ```text
//! cargo run --release --example peer_may_http -- 127.0.0.1:8080
//! ```
//!
//! One worker (`may::config().set_workers(1)`); the accept loop runs in a
//! coroutine and `go!`s a coroutine per connection. The handler is
//! greenhack's `serve`, byte for byte: read until a full request is
//! buffered, parse it with `httparse`, write the responses, repeat.
//! Pipelined requests are answered in order; `Connection: close` (or
//! HTTP/1.0 without keep-alive) ends the connection after the response.
//!
//! `--threads N` gives may N workers: the peer of greenhack's server with
//! `--threads N` in `scripts/bench-scaling`.

use std::io::{self, Read, Write};
use std::time::Duration;

use may::go;
use may::net::{TcpListener, TcpStream};

#[path = "support/args.rs"]
mod args;

#[path = "support/http_protocol.rs"]
mod http_protocol;

fn main() -> io::Result<()> {
    let args = args::server_args("127.0.0.1:8080");
    let addr = args.addr;
    // One worker, as scripts/bench-servers compares; --threads N for
    // scripts/bench-scaling.
    may::config().set_workers(args.threads.unwrap_or(1));
    let server = go!(move || -> io::Result<()> {
        let listener = TcpListener::bind(&addr)?;
        println!("may http: listening on {}", listener.local_addr()?);
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    go!(move || {
                        if let Err(e) = serve(stream) {
                            if !matches!(
                                e.kind(),
                                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                            ) {
                                eprintln!("may http: {e}");
                            }
                        }
                    });
                }
                Err(e) => {
                    eprintln!("may http: accept: {e}");
                    may::coroutine::sleep(Duration::from_millis(10));
                }
            }
        }
    });
    server.join().expect("the accept loop panicked")
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
