//! Load for the memory benchmark: opens N connections to an echo server,
//! has each one served once (64 bytes out, the echo back), then keeps them
//! all open and idle until standard input closes.
//!
//! ```text
//! cargo run --release --example idle_clients -- 127.0.0.1:7000 10000
//! ```
//!
//! Prints `ready N` once every connection has been served, so a script can
//! measure the server's memory with N idle connections.

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().expect("usage: idle_clients ADDR N");
    let n: usize = args.next().map_or(10_000, |s| s.parse().expect("N"));
    raise_fd_limit(n + 64);

    let msg = [b'x'; 64];
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        s.write_all(&msg).expect("write");
        let mut back = [0u8; 64];
        s.read_exact(&mut back).expect("echo");
        assert_eq!(back, msg, "connection {i}: wrong echo");
        conns.push(s);
    }
    println!("ready {n}");
    std::io::stdout().flush().unwrap();
    // Idle until told to stop.
    for _ in std::io::stdin().lock().lines() {}
    drop(conns);
}

/// Raises the soft open-files limit to at least `want` (up to the hard one).
fn raise_fd_limit(want: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && (lim.rlim_cur as usize) < want {
            lim.rlim_cur = (want as libc::rlim_t).min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
