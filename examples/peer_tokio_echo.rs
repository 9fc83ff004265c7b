//! Echo server on tokio's current-thread runtime: the peer of
//! `examples/echo.rs` in `scripts/bench-servers`.
//!
//! ```text
//! cargo run --release --example peer_tokio_echo -- 127.0.0.1:7000
//! ```
//!
//! What an experienced tokio user writes for a minimal single-threaded echo
//! server: a current-thread runtime, a task per connection, `read` then
//! `write_all` in a loop. Same 2 KiB buffer and `TCP_NODELAY` as greenhack's
//! example.
//!
//! `--threads N` runs it on tokio's multi-thread runtime with N workers
//! instead: the peer of `echo --threads N` in `scripts/bench-scaling`.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[path = "support/args.rs"]
mod args;

fn main() -> io::Result<()> {
    let args = args::server_args("127.0.0.1:7000");
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
    println!("tokio echo: listening on {}", listener.local_addr()?);
    let readable = std::env::var_os("PEER_ECHO_READABLE").is_some();
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                // Spawned apart, so that neither task is sized for the other.
                if readable {
                    tokio::spawn(serve_readable(stream));
                } else {
                    tokio::spawn(serve_buffered(stream));
                }
            }
            Err(e) => {
                eprintln!("tokio echo: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Echoes until the peer closes; errors end only this connection. The
/// buffer lives across the wait, in the task.
async fn serve_buffered(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 2 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The buffer lives only while reading: the task waits in `readable()` and
/// reads with `try_read` into a buffer that is not held across an await
/// (the shape of greenhack's echo handler; `PEER_ECHO_READABLE=1`).
async fn serve_readable(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        // In a block of its own: not held across the write's await.
        let data = {
            let mut buf = [0u8; 2 * 1024];
            match stream.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => buf[..n].to_vec(),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(_) => return,
            }
        };
        if stream.write_all(&data).await.is_err() {
            return;
        }
    }
}
