//! A synchronous PostgreSQL client for greenlets: plain `fn` methods over
//! the async driver tokio-postgres, its I/O on greenhack's sockets and loop.
//!
//! # The pattern (copy it for any async client)
//!
//! 1. **Open the socket with greenhack** — a [`greenhack::net::TcpStream`]
//!    or `UnixStream`, which implement tokio's `AsyncRead`/`AsyncWrite`
//!    (feature `tokio`) — and hand it to the driver's runtime-free entry,
//!    [`Config::connect_raw`]. No tokio runtime is involved: the driver's
//!    futures are polled by greenhack, and a socket that is not ready
//!    registers the waiting greenlet with greenhack's reactor.
//! 2. **Run the driver's background future as a driver task**:
//!    tokio-postgres returns a `Connection` that does the actual socket I/O
//!    for every request; [`greenhack::spawn_driver`] runs it on the loop
//!    until the client is dropped or the server goes away. Every query
//!    passes through it twice (written out, answer read back), so it is
//!    polled ahead of the queued greenlets (within 16 tasks of its wake):
//!    with hundreds of busy connections, as an ordinary greenlet it would
//!    wait behind all of them at each hop.
//! 3. **Wrap each async method in a sync one that `exempt`s it**:
//!    `fn query(..) { greenhack::exempt(self.inner.query(..)) }`. Called
//!    from a greenlet, the call suspends only that greenlet; the loop serves
//!    the others meanwhile. Errors are the driver's own
//!    ([`tokio_postgres::Error`]), unchanged.
//!
//! ```text
//! let db = Client::connect("host=127.0.0.1 user=postgres dbname=hello_world")?;
//! let row = db.query_one("SELECT randomnumber FROM world WHERE id = $1", &[&42])?;
//! let n: i32 = row.get(0);
//! ```
//!
//! # Sharing connections among thousands of greenlets
//!
//! A tokio-postgres client pipelines: requests from many greenlets on one
//! connection are written back to back and answered in order, so one
//! connection serves many concurrent greenlets without a lock. [`Pool`]
//! keeps a few connections and hands out shared [`Rc<Client>`]s round-robin.
//! A connection found closed on checkout (the server restarted, the network
//! dropped it) is replaced then, by one greenlet while the others that want
//! it wait (so thousands of greenlets do not open thousands of
//! connections): requests in flight on a dead connection fail with the
//! driver's error (the server's "terminating connection due to
//! administrator command", or "connection closed") and later ones succeed
//! on a new connection. Statements that must not interleave with other
//! greenlets' — a transaction — need a [`Client`] of their own
//! ([`Client::connect`] or [`Pool::connect_exclusive`]), since a
//! transaction is a property of the connection.
//!
//! Everything here is `!Send`: clients live on the thread (the greenhack
//! loop) that opened them.

#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use greenhack::net::{TcpStream, UnixStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::Host;
use tokio_postgres::types::ToSql;
pub use tokio_postgres::{Config, Error, Row, Statement, ToStatement};

/// Query parameters, as tokio-postgres takes them.
pub type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// One connection to the server, with blocking-style methods that suspend
/// only the calling greenlet.
pub struct Client {
    inner: tokio_postgres::Client,
    /// Statements prepared on this connection, by SQL text.
    cache: RefCell<HashMap<String, Statement>>,
}

impl Client {
    /// Connects with a libpq-style string (`host=… port=… user=…
    /// dbname=…`) or a `postgresql://` URL. A `host` that is a path is a
    /// unix-socket directory. The connection's background future runs as a
    /// driver task (`greenhack::spawn_driver`) until the client is dropped.
    pub fn connect(params: &str) -> Result<Client, Error> {
        Client::connect_config(&params.parse()?)
    }

    /// [`connect`](Self::connect) with a parsed [`Config`].
    pub fn connect_config(config: &Config) -> Result<Client, Error> {
        let stream = Stream::open(config);
        let (inner, connection) =
            greenhack::exempt(config.connect_raw(stream, tokio_postgres::NoTls))?;
        // Detached: it ends by itself once `inner` (every sender of
        // requests) is dropped, or with an error once the server is gone
        // (which the requests in flight report as theirs).
        greenhack::spawn_driver(async move {
            let _ = connection.await;
        });
        Ok(Client {
            inner,
            cache: RefCell::new(HashMap::new()),
        })
    }

    /// Runs a statement; returns its rows.
    pub fn query<T>(&self, statement: &T, params: Params<'_>) -> Result<Vec<Row>, Error>
    where
        T: ?Sized + ToStatement,
    {
        greenhack::exempt(self.inner.query(statement, params))
    }

    /// Runs a statement that returns exactly one row (else an error).
    pub fn query_one<T>(&self, statement: &T, params: Params<'_>) -> Result<Row, Error>
    where
        T: ?Sized + ToStatement,
    {
        greenhack::exempt(self.inner.query_one(statement, params))
    }

    /// Runs a statement that returns at most one row.
    pub fn query_opt<T>(&self, statement: &T, params: Params<'_>) -> Result<Option<Row>, Error>
    where
        T: ?Sized + ToStatement,
    {
        greenhack::exempt(self.inner.query_opt(statement, params))
    }

    /// Runs a statement; returns the number of rows it changed.
    pub fn execute<T>(&self, statement: &T, params: Params<'_>) -> Result<u64, Error>
    where
        T: ?Sized + ToStatement,
    {
        greenhack::exempt(self.inner.execute(statement, params))
    }

    /// Runs several `;`-separated statements without parameters (the
    /// simple query protocol).
    pub fn batch_execute(&self, sql: &str) -> Result<(), Error> {
        greenhack::exempt(self.inner.batch_execute(sql))
    }

    /// Prepares a statement on this connection.
    pub fn prepare(&self, sql: &str) -> Result<Statement, Error> {
        greenhack::exempt(self.inner.prepare(sql))
    }

    /// Prepares `sql` once per connection and reuses the statement after
    /// that: what a server that runs the same queries all day wants.
    pub fn prepare_cached(&self, sql: &str) -> Result<Statement, Error> {
        if let Some(s) = self.cache.borrow().get(sql) {
            return Ok(s.clone());
        }
        let s = self.prepare(sql)?;
        self.cache.borrow_mut().insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    /// Starts a transaction. It commits with
    /// [`Transaction::commit`]; dropped without that (an early `?` return,
    /// a panic), it rolls back.
    pub fn transaction(&mut self) -> Result<Transaction<'_>, Error> {
        let inner = greenhack::exempt(self.inner.transaction())?;
        Ok(Transaction { inner })
    }

    /// True once the connection is gone (server shut down, network error):
    /// every later call fails, and the client should be replaced.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// The async client, for what the sync face leaves out: e.g. sending
    /// several queries at once and waiting for all of them with one
    /// `exempt` (they are pipelined on the connection).
    pub fn as_async(&self) -> &tokio_postgres::Client {
        &self.inner
    }
}

/// A transaction on a [`Client`] borrowed mutably for its duration. Dropping
/// it without [`commit`](Self::commit) rolls it back.
pub struct Transaction<'a> {
    inner: tokio_postgres::Transaction<'a>,
}

impl Transaction<'_> {
    /// [`Client::query`] inside the transaction.
    pub fn query<T>(&self, statement: &T, params: Params<'_>) -> Result<Vec<Row>, Error>
    where
        T: ?Sized + ToStatement,
    {
        greenhack::exempt(self.inner.query(statement, params))
    }

    /// [`Client::query_one`] inside the transaction.
    pub fn query_one<T>(&self, statement: &T, params: Params<'_>) -> Result<Row, Error>
    where
        T: ?Sized + ToStatement,
    {
        greenhack::exempt(self.inner.query_one(statement, params))
    }

    /// [`Client::execute`] inside the transaction.
    pub fn execute<T>(&self, statement: &T, params: Params<'_>) -> Result<u64, Error>
    where
        T: ?Sized + ToStatement,
    {
        greenhack::exempt(self.inner.execute(statement, params))
    }

    /// [`Client::prepare`] inside the transaction.
    pub fn prepare(&self, sql: &str) -> Result<Statement, Error> {
        greenhack::exempt(self.inner.prepare(sql))
    }

    /// Commits the transaction.
    pub fn commit(self) -> Result<(), Error> {
        greenhack::exempt(self.inner.commit())
    }

    /// Rolls the transaction back (dropping it does the same, without
    /// waiting for the server's answer).
    pub fn rollback(self) -> Result<(), Error> {
        greenhack::exempt(self.inner.rollback())
    }
}

/// A fixed number of connections shared by every greenlet of one thread,
/// handed out round-robin; see the module docs.
pub struct Pool {
    config: Config,
    slots: Vec<RefCell<Slot>>,
    next: Cell<usize>,
}

/// One connection of a [`Pool`].
enum Slot {
    /// Never connected, or the last attempt failed.
    Empty,
    /// A greenlet is connecting it; these greenlets wait for the outcome
    /// (so a restart of the database costs one connect per slot, not one
    /// per waiting request).
    Connecting(Vec<Waker>),
    Ready(Rc<Client>),
}

impl Pool {
    /// A pool of `size` connections to `params` (see
    /// [`Client::connect`]). Connections open lazily, on first checkout,
    /// so a pool can be built before the database is up; the parameters are
    /// checked now.
    ///
    /// # Panics
    ///
    /// If `size` is 0.
    pub fn new(params: &str, size: usize) -> Result<Pool, Error> {
        assert!(size > 0, "a pool needs at least one connection");
        Ok(Pool {
            config: params.parse()?,
            slots: (0..size).map(|_| RefCell::new(Slot::Empty)).collect(),
            next: Cell::new(0),
        })
    }

    /// A shared connection, the next one round-robin. If it is missing or
    /// closed, this greenlet (re)connects it, and greenlets that check the
    /// same slot out meanwhile wait for that connection instead of opening
    /// their own. A failure to connect is returned to the greenlet that
    /// tried; the next checkout of the slot tries again.
    pub fn get(&self) -> Result<Rc<Client>, Error> {
        let i = self.next.get();
        self.next.set((i + 1) % self.slots.len());
        let slot = &self.slots[i];
        loop {
            match &mut *slot.borrow_mut() {
                Slot::Ready(c) if !c.is_closed() => return Ok(c.clone()),
                Slot::Connecting(_) => {}
                other => {
                    *other = Slot::Connecting(Vec::new());
                    break;
                }
            }
            // Someone else is connecting this slot: wait for the outcome.
            greenhack::exempt(std::future::poll_fn(|cx| match &mut *slot.borrow_mut() {
                Slot::Connecting(waiters) => {
                    if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                        waiters.push(cx.waker().clone());
                    }
                    Poll::Pending
                }
                _ => Poll::Ready(()),
            }));
        }
        // This greenlet connects. The guard settles the slot and wakes the
        // waiters however this ends — also if the greenlet is cancelled
        // (unwound) while it waits for the server.
        struct Settle<'a> {
            slot: &'a RefCell<Slot>,
            outcome: Slot,
        }
        impl Drop for Settle<'_> {
            fn drop(&mut self) {
                let outcome = std::mem::replace(&mut self.outcome, Slot::Empty);
                if let Slot::Connecting(waiters) = self.slot.replace(outcome) {
                    waiters.into_iter().for_each(Waker::wake);
                }
            }
        }
        let mut settle = Settle {
            slot,
            outcome: Slot::Empty,
        };
        let fresh = Rc::new(Client::connect_config(&self.config)?);
        settle.outcome = Slot::Ready(fresh.clone());
        Ok(fresh)
    }

    /// A new connection of the caller's own, outside the pool: for
    /// transactions, which must not interleave with other greenlets'
    /// statements.
    pub fn connect_exclusive(&self) -> Result<Client, Error> {
        Client::connect_config(&self.config)
    }

    /// How many connections the pool holds at most.
    pub fn size(&self) -> usize {
        self.slots.len()
    }
}

/// The socket a client talks over: greenhack's TCP or unix stream. If
/// opening it failed, the error is kept and returned by the first I/O, so
/// that the driver reports it as its own `Error` (kind I/O, the original
/// `io::Error` as its source) and `connect` has one error type.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Failed(Option<io::Error>),
}

impl Stream {
    /// Connects to the first host of `config` (TCP, or a unix socket when
    /// the host is a directory), on its port (5432 by default).
    fn open(config: &Config) -> Stream {
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let opened = match config.get_hosts().first() {
            Some(Host::Tcp(host)) => TcpStream::connect((host.as_str(), port)).and_then(|s| {
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }),
            Some(Host::Unix(dir)) => {
                let path: PathBuf = dir.join(format!(".s.PGSQL.{port}"));
                UnixStream::connect(path).map(Stream::Unix)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no host in the connection parameters (add host=…)",
            )),
        };
        opened.unwrap_or_else(|e| Stream::Failed(Some(e)))
    }

    fn failed(e: &mut Option<io::Error>) -> io::Error {
        e.take()
            .unwrap_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Failed(e) => Poll::Ready(Err(Stream::failed(e))),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Failed(e) => Poll::Ready(Err(Stream::failed(e))),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Failed(e) => Poll::Ready(Err(Stream::failed(e))),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Failed(e) => Poll::Ready(Err(Stream::failed(e))),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Failed(_) => Poll::Ready(Ok(())),
        }
    }
}
