//! Minimal HTTP/1.1 server with keep-alive on tokio's current-thread
//! runtime: the peer of `examples/http.rs` in `scripts/bench-servers`.
//!
//! ```text
//! cargo run --release --example peer_tokio_http -- 127.0.0.1:8080
//! ```
//!
//! The handler is greenhack's `serve` with `.await` on the two socket calls:
//! read until a full request is buffered, parse it with `httparse`, write
//! the responses, repeat. Pipelined requests are answered in order;
//! `Connection: close` (or HTTP/1.0 without keep-alive) ends the connection
//! after the response. The bytes on the wire are greenhack's.
//!
//! `--threads N` runs it on tokio's multi-thread runtime with N workers
//! instead: the peer of `http --threads N` in `scripts/bench-scaling`.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[path = "support/args.rs"]
mod args;

#[path = "support/http_protocol.rs"]
mod http_protocol;

fn main() -> io::Result<()> {
    let args = args::server_args("127.0.0.1:8080");
    // Without --threads: current_thread, as scripts/bench-servers compares.
    // With --threads N: multi_thread with N workers (scripts/bench-scaling);
    // the accept loop is a task too, so only the N workers do the work.
    let rt = match args.threads {
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    rt.block_on(async move {
        match tokio::spawn(accept_loop(args.addr)).await {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(e)),
        }
    })
}

async fn accept_loop(addr: String) -> io::Result<()> {
    let listener = TcpListener::bind(&addr).await?;
    println!("tokio http: listening on {}", listener.local_addr()?);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    if let Err(e) = serve(stream).await {
                        if !matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                        ) {
                            eprintln!("tokio http: {e}");
                        }
                    }
                });
            }
            Err(e) => {
                eprintln!("tokio http: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves one connection until the peer closes or asks to.
async fn serve(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 8192];
    let mut filled = 0;
    let mut out = Vec::with_capacity(1024);
    loop {
        // Answer every complete request in the buffer (pipelining).
        let (consumed, close) = http_protocol::answer(&buf[..filled], &mut out);
        if !out.is_empty() {
            stream.write_all(&out).await?;
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
        match stream.read(&mut buf[filled..]).await? {
            0 => return Ok(()),
            n => filled += n,
        }
    }
}
