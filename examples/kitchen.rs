//! The kitchen flow: a food-delivery server whose `POST /order` handler is
//! plain sync code (`place_order` in `examples/support/kitchen.rs`) that
//! saves the order to PostgreSQL, POSTs it to a kitchen service with hyper's
//! client, and pushes the kitchen's estimate to the customer's WebSocket.
//!
//! ```text
//! # the server on greenhack's own loop (one thread, a greenlet per connection)
//! cargo run --features tokio --example kitchen -- 127.0.0.1:8080 --db "host=… user=postgres dbname=…"
//! # the same handler behind axum, through greenhack::tokio::spawn_sync
//! cargo run --features tokio --example kitchen -- 127.0.0.1:8081 --axum --db "…"
//! # the kitchen service alone
//! cargo run --features tokio --example kitchen -- 127.0.0.1:9000 --kitchen-only
//!
//! websocat ws://127.0.0.1:8080/ws?user=ann &
//! curl -d '{"user":"ann","dish":"margherita"}' http://127.0.0.1:8080/order
//! ```
//!
//! Routes: `POST /order` with `{"user": NAME, "dish": DISH}` answers `200
//! {"order": ID, "mins": N}` (and sends `{"mins": N}` to every WebSocket of
//! NAME), `502 {"order": ID, "error": REASON}` when the kitchen fails (the
//! row is then marked `failed`), `503 {"error": REASON}` when the database
//! does; `GET /ws?user=NAME` upgrades to a WebSocket.
//!
//! Flags: `--db CONN` (or `DATABASE_URL`), `--pool N` connections per
//! thread (default 4), `--kitchen ADDR` (default: a kitchen started on a
//! thread of this process), `--kitchen-timeout MS` (default 1000),
//! `--cook MS` (the kitchen's work per order, default 1), `--workers N`
//! (`--axum`: spawn_sync pool workers and tokio worker threads, default
//! 1 each), `--busy-poll µS` (greenhack's server: poll that long before
//! the loop sleeps, `greenhack::runtime::set_busy_poll`; default 0). The
//! first line on stdout is `… listening on ADDR`.

use std::cell::OnceCell;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use greenhack::net::{TcpListener, TcpStream};

#[path = "support/kitchen.rs"]
mod kitchen;
#[path = "support/pg.rs"]
mod pg;

use kitchen::{Ctx, Hub, Order, Reply, Settings};

struct Args {
    addr: String,
    mode: Mode,
    db: String,
    pool: usize,
    kitchen: Option<SocketAddr>,
    kitchen_timeout: Duration,
    cook: Duration,
    workers: usize,
    busy_poll: Duration,
}

#[derive(PartialEq)]
enum Mode {
    Greenhack,
    Axum,
    KitchenOnly,
}

fn args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:8080".into(),
        mode: Mode::Greenhack,
        db: std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=postgres".into()),
        pool: 4,
        kitchen: None,
        kitchen_timeout: Duration::from_millis(1000),
        cook: Duration::from_millis(1),
        workers: 1,
        busy_poll: Duration::ZERO,
    };
    let mut it = std::env::args().skip(1);
    let fail = |msg: String| -> ! {
        eprintln!("kitchen: {msg} (see the example's docs for the flags)");
        std::process::exit(2)
    };
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .unwrap_or_else(|| fail(format!("{name} needs a value")))
        };
        let mut number = |name: &str| -> u64 {
            let v = value(name);
            v.parse()
                .unwrap_or_else(|_| fail(format!("{name}: {v:?} is not a number")))
        };
        match arg.as_str() {
            "--axum" => a.mode = Mode::Axum,
            "--kitchen-only" => a.mode = Mode::KitchenOnly,
            "--db" => a.db = value("--db"),
            "--pool" => a.pool = number("--pool").max(1) as usize,
            "--kitchen" => {
                let v = value("--kitchen");
                a.kitchen = Some(
                    v.parse()
                        .unwrap_or_else(|_| fail(format!("--kitchen: {v:?} is not IP:PORT"))),
                )
            }
            "--kitchen-timeout" => {
                a.kitchen_timeout = Duration::from_millis(number("--kitchen-timeout"))
            }
            "--cook" => a.cook = Duration::from_millis(number("--cook")),
            "--workers" => a.workers = number("--workers").max(1) as usize,
            "--busy-poll" => a.busy_poll = Duration::from_micros(number("--busy-poll")),
            flag if flag.starts_with('-') => fail(format!("unknown flag {flag}")),
            addr => a.addr = addr.into(),
        }
    }
    a
}

fn main() -> io::Result<()> {
    let args = args();
    if args.mode == Mode::KitchenOnly {
        return greenhack::run(|| {
            let listener = listen(&args.addr)?;
            println!("kitchen service: listening on {}", listener.local_addr()?);
            kitchen::serve_kitchen(listener, args.cook)
        });
    }
    let kitchen_addr = match args.kitchen {
        Some(addr) => addr,
        None => start_kitchen(args.cook)?,
    };
    let settings = Settings {
        db: args.db.clone(),
        pool: args.pool,
        kitchen: kitchen_addr,
        kitchen_timeout: args.kitchen_timeout,
    };
    match args.mode {
        Mode::Axum => axum_mode::main(&args.addr, settings, args.workers),
        _ => {
            greenhack::runtime::set_busy_poll(args.busy_poll);
            greenhack::run(|| serve(&args.addr, settings))
        }
    }
}

/// A listener on `addr` with a backlog of 1,024, as tokio's (and so axum's)
/// `bind` has: std's 128 drops the handshakes of a burst of new clients
/// beyond it, and they retry a second later.
fn listen(addr: &str) -> io::Result<TcpListener> {
    let addr = std::net::ToSocketAddrs::to_socket_addrs(addr)?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
    let socket = greenhack::net::TcpSocket::new_for_addr(addr)?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The kitchen service on a thread of its own (greenhack's loop there).
fn start_kitchen(cook: Duration) -> io::Result<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        greenhack::run(|| {
            let listener = match listen("127.0.0.1:0") {
                Ok(l) => l,
                Err(e) => return tx.send(Err(e)).unwrap(),
            };
            tx.send(listener.local_addr()).unwrap();
            if let Err(e) = kitchen::serve_kitchen(listener, cook) {
                eprintln!("kitchen service: {e}");
            }
        })
    });
    rx.recv().expect("the kitchen thread answers")
}

/// Creates the orders table (once, at startup).
fn create_schema(settings: &Settings) -> io::Result<()> {
    let db = pg::Client::connect(&settings.db)
        .map_err(|e| io::Error::other(format!("database: {e}")))?;
    db.batch_execute(kitchen::SCHEMA)
        .map_err(|e| io::Error::other(format!("database: creating the orders table: {e}")))
}

// ----- greenhack's server: one thread, a greenlet per connection ----------------

fn serve(addr: &str, settings: Settings) -> io::Result<()> {
    create_schema(&settings)?;
    let ctx =
        std::rc::Rc::new(Ctx::new(&settings, Arc::new(Hub::default())).map_err(io::Error::other)?);
    let listener = listen(addr)?;
    println!(
        "kitchen (greenhack): listening on {}",
        listener.local_addr()?
    );
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let ctx = ctx.clone();
                drop(greenhack::spawn(move || {
                    if let Err(e) = connection(stream, &ctx) {
                        if !matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                        ) {
                            eprintln!("kitchen: {e}");
                        }
                    }
                }));
            }
            Err(e) => {
                eprintln!("kitchen: accept: {e}");
                greenhack::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// One connection: HTTP/1.1 requests in turn (keep-alive), until it closes
/// or upgrades to a WebSocket.
fn connection(mut stream: TcpStream, ctx: &Ctx) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 8 * 1024];
    let mut filled = 0;
    loop {
        // Read until the head is complete.
        let (head_len, method, target, close, length, ws_key) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf[..filled]) {
                Ok(httparse::Status::Complete(n)) => {
                    let header = |name: &str| {
                        req.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| h.value)
                    };
                    let close = header("connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case(b"close"))
                        || req.version == Some(0);
                    let length = header("content-length")
                        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    let ws_key = header("sec-websocket-key").map(<[u8]>::to_vec);
                    break (
                        n,
                        req.method.unwrap_or("").to_owned(),
                        req.path.unwrap_or("/").to_owned(),
                        close,
                        length,
                        ws_key,
                    );
                }
                Ok(httparse::Status::Partial) if filled < buf.len() => {}
                _ => {
                    return write_reply(
                        &mut stream,
                        &Reply::bad_request("malformed request"),
                        true,
                    );
                }
            }
            match stream.read(&mut buf[filled..])? {
                0 => return Ok(()),
                n => filled += n,
            }
        };
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        if method == "GET" && path == "/ws" {
            let (Some(user), Some(key)) = (user_param(query), ws_key) else {
                return write_reply(
                    &mut stream,
                    &Reply::bad_request("a WebSocket upgrade with ?user=NAME"),
                    true,
                );
            };
            write!(
                stream,
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n\r\n",
                kitchen::accept_key(&key)
            )?;
            let leftover = buf[head_len..filled].to_vec();
            let reader = stream.try_clone()?;
            kitchen::ws_session(&ctx.hub, &user, reader, stream, leftover);
            return Ok(());
        }
        // The body.
        if head_len + length > buf.len() {
            return write_reply(&mut stream, &Reply::bad_request("body too large"), true);
        }
        while filled < head_len + length {
            match stream.read(&mut buf[filled..])? {
                0 => return Ok(()),
                n => filled += n,
            }
        }
        let body = &buf[head_len..head_len + length];
        let reply = if method == "POST" && path == "/order" {
            match serde_json::from_slice::<Order>(body) {
                Ok(order) => kitchen::place_order(ctx, &order),
                Err(e) => Reply::bad_request(format!("not an order: {e}")),
            }
        } else {
            Reply {
                status: 404,
                body: "{\"error\":\"no such route\"}".into(),
            }
        };
        write_reply(&mut stream, &reply, close)?;
        if close {
            return Ok(());
        }
        buf.copy_within(head_len + length..filled, 0);
        filled -= head_len + length;
    }
}

fn write_reply(stream: &mut TcpStream, reply: &Reply, close: bool) -> io::Result<()> {
    let reason = match reply.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    };
    let out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{}",
        reply.status,
        reply.body.len(),
        if close { "Connection: close\r\n" } else { "" },
        reply.body
    );
    stream.write_all(out.as_bytes())
}

/// `user=NAME` from a query string.
fn user_param(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("user="))
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
}

// ----- the same handler behind axum ---------------------------------------------

mod axum_mode {
    //! axum on tokio's multi-thread runtime; each order runs `place_order`
    //! through `spawn_sync` on a pool worker, with that worker's own `Ctx`.

    use super::*;
    use axum::body::{Body, Bytes};
    use axum::extract::Request;
    use axum::http::{StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use hyper_util::rt::TokioIo;

    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    static HUB: OnceLock<Arc<Hub>> = OnceLock::new();
    static POOL: OnceLock<greenhack::tokio::Pool> = OnceLock::new();

    thread_local! {
        /// The worker's database pool and kitchen client, made on its
        /// first order.
        static CTX: OnceCell<Ctx> = const { OnceCell::new() };
    }

    /// Runs `f` with the calling worker's `Ctx`.
    fn with_ctx<T>(f: impl FnOnce(&Ctx) -> T) -> T {
        CTX.with(|cell| {
            let ctx = cell.get_or_init(|| {
                let hub = HUB.get().expect("set at startup").clone();
                Ctx::new(SETTINGS.get().expect("set at startup"), hub)
                    .expect("the connection string was checked at startup")
            });
            f(ctx)
        })
    }

    pub fn main(addr: &str, settings: Settings, workers: usize) -> io::Result<()> {
        settings
            .db
            .parse::<pg::Config>()
            .map_err(io::Error::other)?;
        SETTINGS.set(settings).ok();
        HUB.set(Arc::new(Hub::default())).ok();
        let pool = greenhack::tokio::Pool::builder()
            .worker_threads(workers)
            .build()?;
        POOL.set(pool).ok();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?;
        rt.block_on(async {
            let settings = SETTINGS.get().unwrap();
            POOL.get()
                .unwrap()
                .spawn(|| create_schema(settings))
                .await
                .map_err(|e| io::Error::other(e.to_string()))??;
            let app = axum::Router::new()
                .route("/order", post(order))
                .route("/ws", get(ws));
            let listener = tokio::net::TcpListener::bind(addr).await?;
            println!("kitchen (axum): listening on {}", listener.local_addr()?);
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app).await
        })
    }

    fn json(status: u16, body: String) -> Response {
        (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }

    async fn order(body: Bytes) -> Response {
        let order: Order = match serde_json::from_slice(&body) {
            Ok(o) => o,
            Err(e) => {
                let r = Reply::bad_request(format!("not an order: {e}"));
                return json(r.status, r.body);
            }
        };
        // The same sync fn as greenhack's server, as a greenlet on a pool
        // worker.
        match POOL
            .get()
            .unwrap()
            .spawn(move || with_ctx(|ctx| kitchen::place_order(ctx, &order)))
            .await
        {
            Ok(reply) => json(reply.status, reply.body),
            Err(e) => json(
                500,
                serde_json::json!({ "error": e.to_string() }).to_string(),
            ),
        }
    }

    async fn ws(mut req: Request) -> Response {
        let user = req.uri().query().and_then(user_param);
        let key = req
            .headers()
            .get(header::SEC_WEBSOCKET_KEY)
            .map(|k| k.as_bytes().to_vec());
        let (Some(user), Some(key)) = (user, key) else {
            let r = Reply::bad_request("a WebSocket upgrade with ?user=NAME");
            return json(r.status, r.body);
        };
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            // The session is sync code too: a greenlet on a pool worker,
            // over the upgraded connection's two halves.
            let session = POOL.get().unwrap().spawn(move || {
                let (r, w) = tokio::io::split(TokioIo::new(upgraded));
                let hub = HUB.get().unwrap();
                kitchen::ws_session(
                    hub,
                    &user,
                    kitchen::SyncIo(r),
                    kitchen::SyncIo(w),
                    Vec::new(),
                );
            });
            let _ = session.await;
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "Upgrade")
            .header(header::SEC_WEBSOCKET_ACCEPT, kitchen::accept_key(&key))
            .body(Body::empty())
            .unwrap()
    }
}
