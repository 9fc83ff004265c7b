//! Echo server: one greenlet per connection, each a plain sequential loop.
//!
//! ```text
//! cargo run --release --example echo -- 127.0.0.1:7000
//! ```
//!
//! Every connection is served by ordinary blocking-looking code
//! (`read`, then `write_all`); greenhack's loop switches between them
//! whenever one would wait.
//!
//! `kill -USR1 <pid>` prints a dump of every greenlet — its state, the fd it
//! waits on, where it was spawned, and its stack — to standard error.

use std::io::{self, Read, Write};
use std::time::Duration;

use greenhack::net::{TcpListener, TcpStream};

fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".into());
    greenhack::run(|| {
        greenhack::debug::dump_on_signal(libc::SIGUSR1)?;
        let listener = TcpListener::bind(&addr)?;
        println!("echo: listening on {}", listener.local_addr()?);
        loop {
            match listener.accept() {
                Ok((stream, _peer)) => {
                    // Detached: the handle is not needed, the greenlet ends
                    // with its connection.
                    drop(greenhack::spawn(move || serve(stream)));
                }
                // Out of file descriptors (or another per-connection error):
                // report it, keep serving the connections we have.
                Err(e) => {
                    eprintln!("echo: accept: {e}");
                    greenhack::sleep(Duration::from_millis(10));
                }
            }
        }
    })
}

/// Echoes until the peer closes; errors end only this connection.
fn serve(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // On the greenlet's stack. Its size sets the connection's memory: an
    // idle connection costs the pages its stack ever touched (plus ~0.5 KiB
    // of bookkeeping), so 2 KiB keeps this handler in one 4 KiB page, where
    // 4 KiB would take two (scripts/bench-memory: 4.5 vs 8.5 KiB per idle
    // connection). The peer servers use the same size.
    let mut buf = [0u8; 2 * 1024];
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
