//! The kitchen flow, shared by both servers of `examples/kitchen.rs`
//! (greenhack's own loop, and axum through `greenhack::tokio::spawn_sync`):
//! the sync order handler [`place_order`], its HTTP client for the kitchen
//! service ([`KitchenClient`]: hyper 1 over a greenhack socket), the
//! registry of customers' WebSockets ([`Hub`]) and one WebSocket's session
//! ([`ws_session`]: tungstenite over std `Read`/`Write`), and the kitchen
//! service itself ([`serve_kitchen`]).
//!
//! # One handler, two servers
//!
//! [`place_order`] is a plain `fn`: it inserts the order row, POSTs the
//! order to the kitchen, pushes the answer to the customer's WebSockets and
//! records the outcome, every wait suspending only its greenlet. It takes
//! its per-thread resources as a [`Ctx`] (a database pool, which is `!Send`
//! and so per thread, and the kitchen client's idle connections, bound to
//! their thread's loop too). greenhack's server makes one `Ctx` for its one
//! thread; under axum each `spawn_sync` worker makes its own on first use.
//!
//! # Why the WebSocket registry is shared across threads
//!
//! Under axum the order handler runs on whichever pool worker
//! `spawn_sync` picked, and the customer's WebSocket session on another
//! (or on the same one by chance): a per-thread registry would miss most
//! pushes. So [`Hub`] is one `Arc` for the process, a `std::sync::Mutex`
//! over `user -> [greenhack::sync::mpsc::Sender]`: each session owns the
//! receiving end, and a `Sender` is `Send + Sync`, waking the session's
//! greenlet on its own worker's loop. The lock is held only to look up or
//! edit the map, never across a wait, so a std mutex is right (and a
//! greenhack one would buy nothing). greenhack's own server uses the same
//! `Hub`, on its one thread.
//!
//! # No interleaved frames
//!
//! Each WebSocket has exactly one writer: its session's greenlet, fed by the
//! channel. Order handlers never touch the socket; they `send` the text to
//! the channel, which never waits. A second greenlet reads the client's
//! frames from a clone (greenhack) or the read half (axum) of the same
//! connection and hands what needs an answer (ping, close) to the writer
//! through that same channel, so even tungstenite's automatic pong is
//! written by the one writer.

#![allow(dead_code)] // each binary uses its own part

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use greenhack::net::{TcpListener, TcpStream};
use greenhack::sync::mpsc;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tungstenite::Message;
use tungstenite::protocol::{CloseFrame, Role, WebSocket};

use crate::pg;

/// The orders table; created at startup if missing.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS orders (
    id bigserial PRIMARY KEY,
    customer text NOT NULL,
    dish text NOT NULL,
    status text NOT NULL DEFAULT 'placed',  -- placed, accepted, failed
    mins integer,
    error text,
    created timestamptz NOT NULL DEFAULT now()
)";

/// `POST /order`'s body.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Order {
    /// The customer, as in `GET /ws?user=NAME`.
    pub user: String,
    /// What they want.
    pub dish: String,
}

/// What the kitchen service is sent.
#[derive(Debug, Deserialize, Serialize)]
pub struct Ticket {
    /// The order's row id.
    pub order: i64,
    /// The dish.
    pub dish: String,
}

/// The kitchen's `201` answer, and what the customer's WebSocket gets.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Eta {
    /// Minutes until delivery.
    pub mins: i32,
}

/// The answer to an order: an HTTP status and a JSON body.
#[derive(Debug)]
pub struct Reply {
    /// 200 (the kitchen took it), 502 (the kitchen failed), 503 (the
    /// database failed), 400 (a bad request).
    pub status: u16,
    /// `{"order":ID,"mins":N}` or `{"order":ID,"error":"…"}` (no `order`
    /// when the row could not be written).
    pub body: String,
}

impl Reply {
    fn new(status: u16, body: serde_json::Value) -> Reply {
        Reply {
            status,
            body: body.to_string(),
        }
    }

    /// A 400 for a request that is not an order.
    pub fn bad_request(why: impl fmt::Display) -> Reply {
        Reply::new(400, serde_json::json!({ "error": why.to_string() }))
    }
}

/// What [`place_order`] needs, per thread (see the module docs).
pub struct Ctx {
    /// The thread's database connections.
    pub db: pg::Pool,
    /// The thread's kitchen client.
    pub kitchen: KitchenClient,
    /// The process's WebSocket registry.
    pub hub: Arc<Hub>,
}

/// How to build a [`Ctx`] on any thread.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The database's connection string.
    pub db: String,
    /// Connections per thread.
    pub pool: usize,
    /// The kitchen service.
    pub kitchen: SocketAddr,
    /// How long the kitchen may take to answer.
    pub kitchen_timeout: Duration,
}

impl Ctx {
    /// The resources of the calling thread, built from `settings`.
    pub fn new(settings: &Settings, hub: Arc<Hub>) -> Result<Ctx, pg::Error> {
        Ok(Ctx {
            db: pg::Pool::new(&settings.db, settings.pool)?,
            kitchen: KitchenClient::new(settings.kitchen, settings.kitchen_timeout),
            hub,
        })
    }
}

// ----- the handler ------------------------------------------------------------

/// Takes an order, as sync code: (1) insert the row, (2) POST it to the
/// kitchen, (3) on `201 {"mins": N}` push `{"mins": N}` to the customer's
/// WebSockets and reply `200 {"order":ID,"mins":N}`. A kitchen failure
/// (an error status, no connection, no answer within the timeout) replies
/// `502` with the reason and marks the row `failed` with that reason; a
/// database failure replies `503` with the driver's error.
pub fn place_order(ctx: &Ctx, order: &Order) -> Reply {
    let id = match insert(ctx, order) {
        Ok(id) => id,
        Err(e) => {
            return Reply::new(
                503,
                serde_json::json!({ "error": format!("database: {}", chain(&e)) }),
            );
        }
    };
    let ticket = Ticket {
        order: id,
        dish: order.dish.clone(),
    };
    match ctx.kitchen.cook(&ticket) {
        Ok(eta) => {
            record(ctx, id, "accepted", Some(eta.mins), None);
            ctx.hub.push(&order.user, &eta);
            Reply::new(200, serde_json::json!({ "order": id, "mins": eta.mins }))
        }
        Err(e) => {
            let reason = format!("kitchen: {e}");
            record(ctx, id, "failed", None, Some(&reason));
            Reply::new(502, serde_json::json!({ "order": id, "error": reason }))
        }
    }
}

fn insert(ctx: &Ctx, order: &Order) -> Result<i64, pg::Error> {
    let db = ctx.db.get()?;
    let stmt =
        db.prepare_cached("INSERT INTO orders (customer, dish) VALUES ($1, $2) RETURNING id")?;
    Ok(db.query_one(&stmt, &[&order.user, &order.dish])?.get(0))
}

/// Stores the kitchen's outcome in the row. If the database fails now, the
/// row stays `placed` (nothing is lost: it is there to retry) and the error
/// is logged; the reply still tells the customer what the kitchen said.
fn record(ctx: &Ctx, id: i64, status: &str, mins: Option<i32>, error: Option<&str>) {
    let done = ctx.db.get().and_then(|db| {
        let stmt = db
            .prepare_cached("UPDATE orders SET status = $2, mins = $3, error = $4 WHERE id = $1")?;
        db.execute(&stmt, &[&id, &status, &mins, &error])
    });
    if let Err(e) = done {
        eprintln!(
            "kitchen: order {id} stays 'placed': cannot mark it {status}: {}",
            chain(&e)
        );
    }
}

/// An error with its sources, `outer: inner: …`: tokio-postgres's own
/// `Display` says only "db error" for what the server said, which is in the
/// source ("FATAL: terminating connection due to administrator command").
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

// ----- the kitchen client -----------------------------------------------------

/// Why the kitchen did not take an order.
#[derive(Debug)]
pub enum KitchenError {
    /// No connection (refused, unreachable).
    Connect(io::Error),
    /// The connection failed mid-request.
    Http(hyper::Error),
    /// An answer other than `201`, with its body.
    Status(StatusCode, String),
    /// A `201` whose body is not `{"mins": N}`.
    Body(serde_json::Error),
    /// No answer within the timeout.
    Timeout(Duration),
}

impl fmt::Display for KitchenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KitchenError::Connect(e) => write!(f, "cannot connect: {e}"),
            KitchenError::Http(e) => write!(f, "request failed: {e}"),
            KitchenError::Status(s, body) => write!(f, "answered {s}: {}", body.trim()),
            KitchenError::Body(e) => write!(f, "answered 201 without {{\"mins\": N}}: {e}"),
            KitchenError::Timeout(t) => write!(f, "no answer within {} ms", t.as_millis()),
        }
    }
}

/// An HTTP client for the kitchen service: hyper 1's client over greenhack
/// sockets, with sync methods. Keeps its idle keep-alive connections for
/// reuse; opens another when all are busy. Per thread (its connections
/// belong to the thread's loop).
pub struct KitchenClient {
    addr: SocketAddr,
    timeout: Duration,
    idle: RefCell<Vec<SendRequest<Full<Bytes>>>>,
}

impl KitchenClient {
    /// A client for the kitchen at `addr`, giving up on an order after
    /// `timeout`.
    pub fn new(addr: SocketAddr, timeout: Duration) -> KitchenClient {
        KitchenClient {
            addr,
            timeout,
            idle: RefCell::new(Vec::new()),
        }
    }

    /// `POST /cook` with the ticket as JSON; `201 {"mins": N}` is success.
    /// The whole exchange (connecting included) is bounded by the timeout:
    /// past it, the wait is unwound by `greenhack::timeout`, which drops the
    /// request and its connection.
    pub fn cook(&self, ticket: &Ticket) -> Result<Eta, KitchenError> {
        greenhack::timeout(self.timeout, || self.exchange(ticket))
            .unwrap_or(Err(KitchenError::Timeout(self.timeout)))
    }

    fn exchange(&self, ticket: &Ticket) -> Result<Eta, KitchenError> {
        let body = serde_json::to_vec(ticket).expect("a ticket serializes");
        let request = Request::post("/cook")
            .header(hyper::header::HOST, self.addr.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request");
        let mut sender = self.checkout()?;
        let response =
            greenhack::exempt(sender.send_request(request)).map_err(KitchenError::Http)?;
        let status = response.status();
        let body = greenhack::exempt(response.into_body().collect())
            .map_err(KitchenError::Http)?
            .to_bytes();
        // The exchange is complete: the connection can take the next one.
        self.idle.borrow_mut().push(sender);
        if status != StatusCode::CREATED {
            return Err(KitchenError::Status(
                status,
                String::from_utf8_lossy(&body).into_owned(),
            ));
        }
        serde_json::from_slice(&body).map_err(KitchenError::Body)
    }

    /// An idle connection that is still open, or a new one whose driver
    /// (hyper's connection future) runs as a driver task until the
    /// connection closes.
    fn checkout(&self) -> Result<SendRequest<Full<Bytes>>, KitchenError> {
        loop {
            let idle = self.idle.borrow_mut().pop();
            match idle {
                // Just after a response the connection may still be
                // finishing the exchange (its driver not yet polled):
                // wait for it rather than open another.
                Some(mut sender) if !sender.is_closed() => {
                    if greenhack::exempt(sender.ready()).is_ok() {
                        return Ok(sender);
                    }
                }
                Some(_closed) => {}
                None => break,
            }
        }
        let stream = TcpStream::connect(self.addr).map_err(KitchenError::Connect)?;
        stream.set_nodelay(true).map_err(KitchenError::Connect)?;
        let (sender, connection) =
            greenhack::exempt(hyper::client::conn::http1::handshake(TokioIo::new(stream)))
                .map_err(KitchenError::Http)?;
        // A driver task, polled ahead of most queued greenlets: each
        // order's request and response pass through it.
        greenhack::spawn_driver(async move {
            // Ends when every sender is dropped or the peer closes.
            let _ = connection.await;
        });
        Ok(sender)
    }
}

// ----- the WebSocket registry -----------------------------------------------

/// What a WebSocket's writer is asked to write.
#[derive(Debug)]
pub enum Outgoing {
    /// A text message (an order's `{"mins": N}`).
    Text(String),
    /// The answer to the client's ping.
    Pong(Bytes),
    /// The client closed: answer with this close frame and end.
    Close(Option<CloseFrame>),
    /// The connection is gone (read error or EOF): end.
    Gone,
}

/// The connected customers' WebSockets, by user: shared by every thread
/// (see the module docs).
#[derive(Default)]
pub struct Hub {
    next: AtomicU64,
    users: Mutex<Sockets>,
}

/// Each user's open WebSockets: an id (to remove it by) and its writer's
/// channel.
type Sockets = HashMap<String, Vec<(u64, mpsc::Sender<Outgoing>)>>;

impl Hub {
    /// Adds a WebSocket of `user`; it is removed when the returned guard is
    /// dropped.
    pub fn register(self: &Arc<Self>, user: &str, tx: mpsc::Sender<Outgoing>) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .entry(user.to_owned())
            .or_default()
            .push((id, tx));
        Registration {
            hub: self.clone(),
            user: user.to_owned(),
            id,
        }
    }

    /// Queues `eta` as JSON for every WebSocket `user` has open; returns how
    /// many. Never waits: each socket's writer sends it.
    pub fn push(&self, user: &str, eta: &Eta) -> usize {
        let text = serde_json::to_string(eta).expect("an Eta serializes");
        let users = self.lock();
        let Some(sockets) = users.get(user) else {
            return 0;
        };
        sockets
            .iter()
            .filter(|(_, tx)| tx.send(Outgoing::Text(text.clone())).is_ok())
            .count()
    }

    /// How many WebSockets `user` has open.
    pub fn connected(&self, user: &str) -> usize {
        self.lock().get(user).map_or(0, Vec::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sockets> {
        // Never held across a wait or user code: a poisoned map is intact.
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A WebSocket's place in the [`Hub`]; dropping it removes the socket.
pub struct Registration {
    hub: Arc<Hub>,
    user: String,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut users = self.hub.lock();
        if let Some(sockets) = users.get_mut(&self.user) {
            sockets.retain(|(id, _)| *id != self.id);
            if sockets.is_empty() {
                users.remove(&self.user);
            }
        }
    }
}

// ----- one WebSocket ------------------------------------------------------------

/// The `Sec-WebSocket-Accept` value for a request's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    tungstenite::handshake::derive_accept_key(key)
}

/// Serves one customer's WebSocket after the `101` has been sent: `reader`
/// and `writer` are the two directions of the connection (a greenhack
/// socket and its clone, or the halves of an upgraded axum connection);
/// `leftover` is what was read past the upgrade request. Registers the
/// socket under `user`, sends `{"user": NAME}` to say so (a client that
/// orders after this message gets the order's push), writes what is pushed
/// to it, answers pings and close, and returns once the connection is
/// closed or fails.
///
/// This greenlet is the socket's only writer. The reader runs as a greenlet
/// of its own on the same thread; its tungstenite writes nothing (its
/// automatic answers go to a sink) but hands them to the writer.
pub fn ws_session<R, W>(hub: &Arc<Hub>, user: &str, reader: R, writer: W, leftover: Vec<u8>)
where
    R: Read + 'static,
    W: Write,
{
    let (tx, rx) = mpsc::channel();
    let _registration = hub.register(user, tx.clone());
    let reading = greenhack::spawn(move || read_frames(reader, leftover, tx));
    let mut ws = WebSocket::from_raw_socket(WriteOnly(writer), Role::Server, None);
    // Tells the client that pushes for `user` reach it from now on.
    let hello = serde_json::json!({ "user": user }).to_string();
    if ws.send(Message::text(hello)).is_err() {
        reading.cancel();
        return;
    }
    // `rx` never disconnects (the registry holds a sender): the reader's
    // `Gone` or `Close` ends the loop.
    while let Ok(out) = rx.recv() {
        let sent = match out {
            Outgoing::Text(text) => ws.send(Message::text(text)),
            Outgoing::Pong(payload) => ws.send(Message::Pong(payload)),
            Outgoing::Close(frame) => {
                if ws.close(frame).is_ok() {
                    let _ = ws.flush();
                }
                break;
            }
            Outgoing::Gone => break,
        };
        if sent.is_err() {
            break;
        }
    }
    // The writer is done: stop the reader too (it may wait on a client that
    // never sends).
    reading.cancel();
}

/// The reader's loop: client frames in, what needs an answer handed to the
/// writer.
fn read_frames<R: Read>(reader: R, leftover: Vec<u8>, tx: mpsc::Sender<Outgoing>) {
    let mut ws = WebSocket::from_partially_read(ReadOnly(reader), leftover, Role::Server, None);
    loop {
        let out = match ws.read() {
            Ok(Message::Ping(payload)) => Outgoing::Pong(payload),
            Ok(Message::Close(frame)) => Outgoing::Close(frame),
            Ok(_) => continue, // customers have nothing to say here
            Err(_) => Outgoing::Gone,
        };
        let end = !matches!(out, Outgoing::Pong(_));
        if tx.send(out).is_err() || end {
            return;
        }
    }
}

/// The read direction for tungstenite: its writes go nowhere.
struct ReadOnly<R>(R);

impl<R: Read> Read for ReadOnly<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R> Write for ReadOnly<R> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The write direction for tungstenite: it is never asked to read.
struct WriteOnly<W>(W);

impl<W> Read for WriteOnly<W> {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

impl<W: Write> Write for WriteOnly<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Any tokio `AsyncRead`/`AsyncWrite` as std `Read`/`Write`, each call
/// waiting through `exempt`: how sync code (tungstenite) runs over an
/// upgraded hyper connection inside a greenlet.
pub struct SyncIo<T>(pub T);

impl<T: tokio::io::AsyncRead + Unpin> Read for SyncIo<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use tokio::io::AsyncReadExt;
        greenhack::exempt(self.0.read(buf))
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> Write for SyncIo<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use tokio::io::AsyncWriteExt;
        greenhack::exempt(self.0.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        greenhack::exempt(self.0.flush())
    }
}

// ----- the kitchen service ----------------------------------------------------

/// Serves the kitchen on `listener` forever: hyper 1's server over
/// greenhack sockets, a greenlet per connection. `POST /cook` with a
/// [`Ticket`] answers `201 {"mins": N}` after `cook` (N from the order id,
/// so that every order's answer differs from its neighbours'); anything
/// else is a 404. Runs on greenhack's standalone loop or under
/// `greenhack::tokio`.
pub fn serve_kitchen(listener: TcpListener, cook: Duration) -> io::Result<()> {
    loop {
        let (stream, _) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("kitchen service: accept: {e}");
                greenhack::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        drop(greenhack::spawn(move || {
            let service = hyper::service::service_fn(move |req| answer(req, cook));
            let _ = greenhack::exempt(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }));
    }
}

/// The minutes the kitchen quotes for order `id`.
pub fn quote(id: i64) -> i32 {
    10 + (id.rem_euclid(97) as i32) * 7 % 50
}

async fn answer(
    req: Request<Incoming>,
    cook: Duration,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: String| {
        Ok(Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response"))
    };
    if req.method() != hyper::Method::POST || req.uri().path() != "/cook" {
        return reply(
            StatusCode::NOT_FOUND,
            "{\"error\":\"no such route\"}".into(),
        );
    }
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return reply(StatusCode::BAD_REQUEST, format!("{{\"error\":\"{e}\"}}")),
    };
    let ticket: Ticket = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": e.to_string()}).to_string(),
            );
        }
    };
    if !cook.is_zero() {
        cook_for(cook).await;
    }
    let eta = Eta {
        mins: quote(ticket.order),
    };
    reply(
        StatusCode::CREATED,
        serde_json::to_string(&eta).expect("an Eta serializes"),
    )
}

/// Waits `d` inside an async fn on greenhack's loop: a greenlet sleeps and
/// then wakes the task, so the kitchen needs no tokio timer.
async fn cook_for(d: Duration) {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut started = false;
    std::future::poll_fn(|cx| {
        if done.load(Ordering::Acquire) {
            return std::task::Poll::Ready(());
        }
        if !started {
            started = true;
            let (done, waker) = (done.clone(), cx.waker().clone());
            drop(greenhack::spawn(move || {
                greenhack::sleep(d);
                done.store(true, Ordering::Release);
                waker.wake();
            }));
        }
        std::task::Poll::Pending
    })
    .await
}
