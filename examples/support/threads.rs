//! `--threads N` for greenhack's servers (`examples/echo.rs`,
//! `examples/http.rs`): one greenhack loop per thread, each with its own
//! `SO_REUSEPORT` listener on the one address, so the kernel spreads the
//! connections over the loops; or, with `--balanced`, one listener on the
//! first loop, which hands every connection it accepts to the loop serving
//! the fewest (`runtime`-style hand-off: as a std socket over a channel).
//! The kernel's `SO_REUSEPORT` spread is a hash: 50 connections over two
//! loops often split 28/22, and the busier loop sets the pace.
//!
//! A server keeps its accept loop and hands it over:
//!
//! ```text
//! #[path = "support/threads.rs"]
//! mod threads;
//!
//! fn main() -> io::Result<()> {
//!     threads::serve("echo", "127.0.0.1:7000", None, Spread::ReusePort, |incoming| {
//!         loop { /* incoming.accept(), spawn a greenlet per connection */ }
//!     })
//! }
//! ```
//!
//! `--threads` defaults to every CPU the process may use (under `taskset -c
//! 0` that is one).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use greenhack::net::{TcpListener, TcpSocket, TcpStream};
use greenhack::runtime::Builder;

/// How connections reach the loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spread {
    /// A `SO_REUSEPORT` listener per loop: the kernel picks.
    ReusePort,
    /// One listener; its loop hands each connection to the least loaded.
    Balanced,
}

/// Where one loop's connections come from.
pub enum Incoming {
    /// Its own listener.
    Listener(TcpListener),
    /// Connections handed over by the accepting loop, and the count of live
    /// connections per loop that the hand-off balances.
    Handed {
        rx: greenhack::sync::mpsc::Receiver<std::net::TcpStream>,
        live: Arc<[AtomicUsize]>,
        me: usize,
    },
}

impl Incoming {
    /// The next connection.
    pub fn accept(&self) -> io::Result<TcpStream> {
        match self {
            Incoming::Listener(l) => l.accept().map(|(s, _)| s),
            Incoming::Handed { rx, .. } => match rx.recv() {
                Ok(s) => TcpStream::from_std(s),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the acceptor stopped",
                )),
            },
        }
    }

    /// Counts a handed-over connection as live on this loop until the
    /// returned guard drops (the accepting loop counted it in).
    pub fn live_guard(&self) -> Option<LiveGuard> {
        match self {
            Incoming::Listener(_) => None,
            Incoming::Handed { live, me, .. } => Some(LiveGuard(live.clone(), *me)),
        }
    }
}

/// One live connection of a loop, for the balanced hand-off.
pub struct LiveGuard(Arc<[AtomicUsize]>, usize);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

/// The listen backlog of each loop's listener: a burst of a few hundred
/// connects (the benchmark's 500 connections) must not overflow it, or the
/// overflowing clients stall for a second (std's 128 does).
const BACKLOG: u32 = 1024;

/// Binds `addr` with one `SO_REUSEPORT` listener per loop (`threads` loops,
/// default one per CPU; or one listener, with [`Spread::Balanced`]), prints
/// `{name}: listening on ADDR` once all of them listen, and runs
/// `accept_loop` on every loop until one fails; returns that failure. With
/// `hosted`: one loop, on this thread, hosted inside a tokio
/// `current_thread` runtime (`greenhack::tokio::run`; needs the `tokio`
/// feature).
pub fn serve(
    name: &'static str,
    addr: &str,
    threads: Option<usize>,
    hosted: bool,
    spread: Spread,
    accept_loop: impl Fn(Incoming) -> io::Result<()> + Send + Sync + 'static,
) -> io::Result<()> {
    if hosted {
        return serve_hosted(name, addr, move |l| accept_loop(Incoming::Listener(l)));
    }
    let threads = match threads {
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let addr = resolve(addr)?;
    if spread == Spread::Balanced && threads > 1 {
        return serve_balanced(name, addr, threads, accept_loop);
    }
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
            accept_loop(Incoming::Listener(listener?))
        })?;
    for _ in 0..threads {
        listening.recv().map_err(io::Error::other)??;
    }
    drop(reserve);
    println!("{name}: listening on {addr}");
    rt.join().map_err(io::Error::other)
}

/// [`Spread::Balanced`]: the first loop accepts on the one listener and
/// hands each connection, as a std socket, to the loop with the fewest live
/// connections (itself included); every loop serves what it is handed.
fn serve_balanced(
    name: &'static str,
    addr: SocketAddr,
    threads: usize,
    accept_loop: impl Fn(Incoming) -> io::Result<()> + Send + Sync + 'static,
) -> io::Result<()> {
    let socket = TcpSocket::new_for_addr(addr)?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(BACKLOG)?;
    let addr = listener.local_addr()?;
    let listener = Mutex::new(Some(listener.into_std()?));
    let live: Arc<[AtomicUsize]> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..threads)
        .map(|_| greenhack::sync::mpsc::channel())
        .unzip();
    let receivers = Mutex::new(receivers.into_iter().map(Some).collect::<Vec<_>>());
    let rt = Builder::new()
        .worker_threads(threads)
        .thread_name(name)
        .build(move || {
            let me = greenhack::runtime::Handle::try_current().map_or(0, |h| h.index());
            let rx = receivers.lock().unwrap()[me]
                .take()
                .expect("one receiver per loop");
            if me == 0 {
                let listener = listener.lock().unwrap().take().expect("the listener");
                let listener = TcpListener::from_std(listener)?;
                let (senders, live) = (senders.clone(), live.clone());
                drop(greenhack::spawn(move || {
                    hand_off(name, listener, &senders, &live)
                }));
            }
            accept_loop(Incoming::Handed {
                rx,
                live: live.clone(),
                me,
            })
        })?;
    println!("{name}: listening on {addr}");
    rt.join().map_err(io::Error::other)
}

/// The accepting loop's greenlet: each connection to the least loaded loop.
fn hand_off(
    name: &str,
    listener: TcpListener,
    senders: &[greenhack::sync::mpsc::Sender<std::net::TcpStream>],
    live: &[AtomicUsize],
) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("{name}: accept: {e}");
                greenhack::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        let i = (0..live.len())
            .min_by_key(|&i| live[i].load(Ordering::Relaxed))
            .expect("at least one loop");
        live[i].fetch_add(1, Ordering::Relaxed);
        match stream.into_std() {
            Ok(s) => {
                if senders[i].send(s).is_err() {
                    return; // that loop stopped: the runtime is going down
                }
            }
            Err(e) => {
                live[i].fetch_sub(1, Ordering::Relaxed);
                eprintln!("{name}: hand-off: {e}");
            }
        }
    }
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
