//! `--threads N` for greenhack's servers (`examples/echo.rs`,
//! `examples/http.rs`): one greenhack loop per thread, each with its own
//! `SO_REUSEPORT` listener on the one address, so the kernel spreads the
//! connections over the loops.
//!
//! A server keeps its accept loop and hands it over:
//!
//! ```text
//! #[path = "support/threads.rs"]
//! mod threads;
//!
//! fn main() -> io::Result<()> {
//!     threads::serve("echo", "127.0.0.1:7000", None, false, |listener| {
//!         loop { /* accept, spawn a greenlet per connection */ }
//!     })
//! }
//! ```
//!
//! `--threads` defaults to every CPU the process may use (under `taskset -c
//! 0` that is one).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc;

use greenhack::net::{TcpListener, TcpSocket};
use greenhack::runtime::Builder;

/// The listen backlog of each loop's listener: a burst of a few hundred
/// connects (the benchmark's 500 connections) must not overflow it, or the
/// overflowing clients stall for a second (std's 128 does).
const BACKLOG: u32 = 1024;

/// Binds `addr` with one `SO_REUSEPORT` listener per loop (`threads` loops,
/// default one per CPU), prints `{name}: listening on ADDR` once all of
/// them listen, and runs `accept_loop` on every loop until one fails;
/// returns that failure. With `hosted`: one loop, on this thread, hosted
/// inside a tokio `current_thread` runtime (`greenhack::tokio::run`; needs
/// the `tokio` feature).
pub fn serve(
    name: &'static str,
    addr: &str,
    threads: Option<usize>,
    hosted: bool,
    accept_loop: impl Fn(TcpListener) -> io::Result<()> + Send + Sync + 'static,
) -> io::Result<()> {
    if hosted {
        return serve_hosted(name, addr, accept_loop);
    }
    let threads = match threads {
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let addr = resolve(addr)?;
    // A port 0 must become one port for every loop: a bound, non-listening
    // member of the group reserves it (and receives no connections).
    let reserve = TcpSocket::new_for_addr(addr)?;
    reserve.set_reuseport(true)?;
    reserve.bind(addr)?;
    let addr = reserve.local_addr()?;
    let (listening_tx, listening) = mpsc::channel::<io::Result<()>>();
    let rt = Builder::new()
        .worker_threads(threads)
        .thread_name(name)
        .build(move || {
            let listener = listen(addr);
            let ready = listener.as_ref().map(|_| ()).map_err(copy_error);
            let _ = listening_tx.send(ready);
            accept_loop(listener?)
        })?;
    for _ in 0..threads {
        listening.recv().map_err(io::Error::other)??;
    }
    drop(reserve);
    println!("{name}: listening on {addr}");
    rt.join().map_err(io::Error::other)
}

#[cfg(feature = "tokio")]
fn serve_hosted(
    name: &'static str,
    addr: &str,
    accept_loop: impl Fn(TcpListener) -> io::Result<()>,
) -> io::Result<()> {
    let addr = resolve(addr)?;
    greenhack::tokio::run(|| {
        let listener = listen(addr)?;
        println!(
            "{name} (hosted in tokio): listening on {}",
            listener.local_addr()?
        );
        accept_loop(listener)
    })
}

#[cfg(not(feature = "tokio"))]
fn serve_hosted(
    name: &'static str,
    _addr: &str,
    _accept_loop: impl Fn(TcpListener) -> io::Result<()>,
) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{name}: --hosted needs the tokio feature (cargo run --features tokio ...)"),
    ))
}

/// One loop's listener on the group's address.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_for_addr(addr)?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: no address")))
}

/// An `io::Error` to send to `main` while the setup returns the original.
fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}
