//! Echo server: one greenlet per connection, each a plain sequential loop.
//!
//! ```text
//! cargo run --release --example echo -- 127.0.0.1:7000 [--threads N] [--idle-timeout SECS]
//! ```
//!
//! `--threads N` (default: every CPU) runs N loops, one per thread, each
//! with its own `SO_REUSEPORT` listener on the address.
//!
//! Every connection is served by ordinary blocking-looking code
//! (`read`, then `write_all`); greenhack's loop switches between them
//! whenever one would wait.
//!
//! The server is fit to face misbehaving clients (`support/server.rs`): a
//! connection that makes no progress for `--idle-timeout` seconds (default
//! 60), sending nothing or not reading its echo, is closed; accept errors
//! are logged at most once a second and back off; out of file descriptors,
//! new connections are closed at once instead of left waiting.
//!
//! `kill -USR1 <pid>` prints a dump of every greenlet — its state, the fd it
//! waits on, where it was spawned, and its stack — to standard error.

use std::io::{self, Write};

use greenhack::net::TcpStream;

#[path = "support/server.rs"]
mod server;
#[path = "support/threads.rs"]
mod threads;

fn main() -> io::Result<()> {
    let cfg = server::Config::from_args("echo", "127.0.0.1:7000", false);
    let (addr, threads, hosted) = (cfg.addr.clone(), cfg.threads, cfg.hosted);
    let spread = if cfg.balanced {
        threads::Spread::Balanced
    } else {
        threads::Spread::ReusePort
    };
    threads::serve("echo", &addr, threads, hosted, spread, move |incoming| {
        if greenhack::runtime::Handle::try_current().is_some_and(|h| h.index() == 0) {
            greenhack::debug::dump_on_signal(libc::SIGUSR1)?; // one loop dumps
        }
        server::serve("echo", &cfg, incoming, serve)
    })
}

/// Echoes until the peer closes; errors end only this connection.
///
/// Waits for data in this frame, which holds no buffer, and reads it in
/// `echo_available`, which does: while the connection is idle its greenlet
/// keeps only small frames, which is all a `--sliced` greenlet keeps (on
/// the heap) while it waits. Same system calls as `read` in a loop.
fn serve(stream: TcpStream, conn: &server::Conn) {
    let _ = stream.set_nodelay(true);
    loop {
        if stream.readable().is_err() || !echo_available(&stream, conn) {
            return;
        }
    }
}

/// Reads what has arrived and writes it back; false once the connection
/// is done (closed by the peer, or an error).
#[inline(never)]
fn echo_available(mut stream: &TcpStream, conn: &server::Conn) -> bool {
    // Its size sets an ordinary greenlet's memory: an idle connection
    // costs the pages its stack ever touched (plus ~0.5 KiB of
    // bookkeeping), so 2 KiB keeps this handler in one 4 KiB page, where
    // 4 KiB would take two (scripts/bench-memory). The peer servers use the
    // same size.
    let mut buf = [0u8; 2 * 1024];
    match stream.try_read(&mut buf) {
        Ok(0) => false,
        Ok(n) => {
            conn.progress();
            stream.write_all(&buf[..n]).is_ok()
        }
        Err(e) => matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        ),
    }
}
