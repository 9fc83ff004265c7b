//! Echo server on tokio's current-thread runtime: the peer of
//! `examples/echo.rs` in `scripts/bench-servers`.
//!
//! ```text
//! cargo run --release --example peer_tokio_echo -- 127.0.0.1:7000
//! ```
//!
//! What an experienced tokio user writes for a minimal single-threaded echo
//! server: `#[tokio::main(flavor = "current_thread")]`, a task per
//! connection, `read` then `write_all` in a loop. Same 2 KiB buffer and
//! `TCP_NODELAY` as greenhack's example.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main(flavor = "current_thread")]
async fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".into());
    let listener = TcpListener::bind(&addr).await?;
    println!("tokio echo: listening on {}", listener.local_addr()?);
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                tokio::spawn(serve(stream));
            }
            Err(e) => {
                eprintln!("tokio echo: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Echoes until the peer closes; errors end only this connection.
async fn serve(mut stream: TcpStream) {
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
