//! Echo server on `may`'s stackful coroutines with one worker thread: the
//! peer of `examples/echo.rs` in `scripts/bench-servers`.
//!
//! ```text
//! cargo run --release --example peer_may_echo -- 127.0.0.1:7000
//! ```
//!
//! What may's own `examples/echo.rs` does, on one worker
//! (`may::config().set_workers(1)`): the accept loop runs in a coroutine and
//! `go!`s a coroutine per connection, each `read` then `write_all` in a loop.
//! Same 2 KiB buffer (on the heap, as in may's example: may's default
//! coroutine stack is 32 KiB) and `TCP_NODELAY` as greenhack's example.
//!
//! `--threads N` gives may N workers: the peer of greenhack's server with
//! `--threads N` in `scripts/bench-scaling`.

use std::io::{self, Read, Write};
use std::time::Duration;

use may::go;
use may::net::{TcpListener, TcpStream};

#[path = "support/args.rs"]
mod args;

fn main() -> io::Result<()> {
    let args = args::server_args("127.0.0.1:7000");
    let addr = args.addr;
    // One worker, as scripts/bench-servers compares; --threads N for
    // scripts/bench-scaling.
    may::config().set_workers(args.threads.unwrap_or(1));
    let server = go!(move || -> io::Result<()> {
        let listener = TcpListener::bind(&addr)?;
        println!("may echo: listening on {}", listener.local_addr()?);
        loop {
            match listener.accept() {
                Ok((stream, _peer)) => {
                    go!(move || serve(stream));
                }
                Err(e) => {
                    eprintln!("may echo: accept: {e}");
                    may::coroutine::sleep(Duration::from_millis(10));
                }
            }
        }
    });
    server.join().expect("the accept loop panicked")
}

/// Echoes until the peer closes; errors end only this connection.
fn serve(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 2 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
