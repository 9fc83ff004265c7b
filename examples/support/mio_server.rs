//! The event loop of the hand-written `mio` servers (`peer_mio_echo`,
//! `peer_mio_http`): one thread, one `mio::Poll`, a hand-rolled slab of
//! connections indexed by token, every accepted socket set `TCP_NODELAY` and
//! registered once for reading and writing (edge-triggered). What a
//! connection is and how it is driven on an event is the caller's.

use std::io;
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);

/// The address from the first command-line argument, else `default`.
pub fn addr_arg(default: &str) -> io::Result<SocketAddr> {
    std::env::args()
        .nth(1)
        .unwrap_or_else(|| default.into())
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Listens on `addr`, printing "`name`: listening on ADDR", and runs for
/// ever: each accepted stream becomes a connection through `new_conn`, and
/// every event on it calls `drive`, which returns whether the connection
/// stays open (a closed one is dropped, which also takes its socket out of
/// the epoll set).
pub fn serve<C>(
    name: &str,
    addr: SocketAddr,
    mut new_conn: impl FnMut(TcpStream) -> C,
    mut drive: impl FnMut(&mut C) -> bool,
) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("{name}: listening on {}", listener.local_addr()?);

    let mut conns: Vec<Option<C>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _peer)) => {
                            let _ = stream.set_nodelay(true);
                            let i = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            poll.registry().register(
                                &mut stream,
                                Token(i),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            conns[i] = Some(new_conn(stream));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            eprintln!("{name}: accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let i = event.token().0;
            let Some(conn) = conns.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            if !drive(conn) {
                conns[i] = None;
                free.push(i);
            }
        }
    }
}
