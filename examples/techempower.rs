//! The TechEmpower Framework Benchmarks' six test types on greenhack's own
//! HTTP/1.1 server, every handler plain sync code over a sync PostgreSQL
//! client (`examples/support/pg.rs`):
//!
//! | path | answer |
//! | --- | --- |
//! | `/plaintext` | `Hello, World!` (pipelined requests answered in one write) |
//! | `/json` | `{"message":"Hello, World!"}`, serialized per request |
//! | `/db` | one random `World` row as JSON |
//! | `/queries?queries=N` | N random rows (N clamped to 1..=500, junk = 1) |
//! | `/fortunes` | the `Fortune` table plus one added row, sorted, as escaped HTML |
//! | `/updates?queries=N` | N random rows given new random numbers, stored |
//!
//! ```text
//! cargo run --release --features tokio --example techempower -- 127.0.0.1:8080 \
//!     --db "host=127.0.0.1 port=5432 user=postgres dbname=hello_world" --pool 4
//! ```
//!
//! The database comes from `--db` or the `DATABASE_URL` variable
//! (libpq-style string or `postgresql://` URL); `--pool N` sets how many
//! connections the thread's greenlets share (default 4); `--busy-poll µS`
//! lets the loop poll that long before it sleeps
//! (`greenhack::runtime::set_busy_poll`, default 0). One greenlet per
//! connection on one thread; a handler that queries the database suspends
//! only its greenlet. The database is reached lazily, so `/plaintext` and
//! `/json` work without one.

use std::io::{self, Read, Write};
use std::rc::Rc;
use std::time::Duration;

use greenhack::net::{TcpListener, TcpStream};

#[path = "support/http_protocol.rs"]
#[allow(dead_code)] // the hello servers' answer; only the keep-alive rule is shared
mod http_protocol;
#[path = "support/pg.rs"]
mod pg;
#[path = "support/tfb.rs"]
mod tfb;

use pg::Pool;
use tfb::World;

fn main() -> io::Result<()> {
    let mut addr = "127.0.0.1:8080".to_owned();
    let mut db = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=hello_world".to_owned());
    let mut pool_size = 4;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--db" => db = args.next().expect("--db needs a connection string"),
            "--pool" => {
                pool_size = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .expect("--pool needs a positive number")
            }
            "--busy-poll" => greenhack::runtime::set_busy_poll(Duration::from_micros(
                args.next()
                    .and_then(|n| n.parse().ok())
                    .expect("--busy-poll needs a number of microseconds"),
            )),
            _ => addr = arg,
        }
    }
    let pool = Rc::new(Pool::new(&db, pool_size).map_err(io::Error::other)?);
    greenhack::run(|| {
        let listener = TcpListener::bind(&addr)?;
        println!("techempower: listening on {}", listener.local_addr()?);
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    let pool = pool.clone();
                    drop(greenhack::spawn(move || {
                        if let Err(e) = serve(stream, &pool) {
                            if !matches!(
                                e.kind(),
                                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                            ) {
                                eprintln!("techempower: {e}");
                            }
                        }
                    }))
                }
                Err(e) => {
                    eprintln!("techempower: accept: {e}");
                    greenhack::sleep(Duration::from_millis(10));
                }
            }
        }
    })
}

/// Serves one connection: every complete request in the buffer is answered
/// in order (pipelining), the answers written at once.
fn serve(mut stream: TcpStream, pool: &Pool) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    let mut out = Vec::with_capacity(4096);
    loop {
        let mut consumed = 0;
        let mut close = false;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf[consumed..filled]) {
                Ok(httparse::Status::Complete(len)) => {
                    close = http_protocol::wants_close(&req);
                    respond(req.path.unwrap_or("/"), pool, close, &mut out);
                    consumed += len;
                    if close {
                        break;
                    }
                }
                Ok(httparse::Status::Partial) => break,
                Err(_) => {
                    out.extend_from_slice(
                        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    close = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
            out.clear();
        }
        if close {
            return Ok(());
        }
        buf.copy_within(consumed..filled, 0);
        filled -= consumed;
        if filled == buf.len() {
            return Ok(()); // a request larger than the buffer: give up on it
        }
        match stream.read(&mut buf[filled..])? {
            0 => return Ok(()),
            n => filled += n,
        }
    }
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain";
const HTML: &str = "text/html; charset=utf-8";

/// Routes one request and appends its response to `out`.
fn respond(target: &str, pool: &Pool, close: bool, out: &mut Vec<u8>) {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let result = match path {
        "/plaintext" => Ok((TEXT, tfb::PLAINTEXT.to_vec())),
        "/json" => Ok((
            JSON,
            json(&tfb::Message {
                message: "Hello, World!",
            }),
        )),
        "/db" => db(pool).map(|w| (JSON, json(&w))),
        "/queries" => queries(pool, tfb::queries_param(query)).map(|w| (JSON, json(&w))),
        "/updates" => updates(pool, tfb::queries_param(query)).map(|w| (JSON, json(&w))),
        "/fortunes" => fortunes(pool).map(|html| (HTML, html.into_bytes())),
        _ => {
            head(out, "404 Not Found", TEXT, 9, close);
            out.extend_from_slice(b"not found");
            return;
        }
    };
    match result {
        Ok((ctype, body)) => {
            head(out, "200 OK", ctype, body.len(), close);
            out.extend_from_slice(&body);
        }
        Err(e) => {
            let body = format!("database error: {e}");
            head(out, "500 Internal Server Error", TEXT, body.len(), close);
            out.extend_from_slice(body.as_bytes());
        }
    }
}

/// The status line and headers (`Server`, `Date`, `Content-Type`,
/// `Content-Length`).
fn head(out: &mut Vec<u8>, status: &str, ctype: &str, len: usize, close: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\nServer: ");
    out.extend_from_slice(tfb::SERVER.as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    tfb::http_date(|d| out.extend_from_slice(d.as_bytes()));
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(ctype.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(len.to_string().as_bytes());
    if close {
        out.extend_from_slice(b"\r\nConnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("plain structs serialize")
}

fn db(pool: &Pool) -> Result<World, pg::Error> {
    let client = pool.get()?;
    let stmt = client.prepare_cached(tfb::SELECT_WORLD)?;
    let row = client.query_one(&stmt, &[&tfb::random_id()])?;
    Ok(World {
        id: row.get(0),
        random_number: row.get(1),
    })
}

/// `n` random rows, the queries sent at once (pipelined on the connection)
/// and waited for together.
fn queries(pool: &Pool, n: usize) -> Result<Vec<World>, pg::Error> {
    let client = pool.get()?;
    let stmt = client.prepare_cached(tfb::SELECT_WORLD)?;
    let db = client.as_async();
    let ids: Vec<i32> = (0..n).map(|_| tfb::random_id()).collect();
    let stmt = &stmt;
    let rows = greenhack::exempt(futures_util::future::try_join_all(
        ids.iter()
            .map(|id| async move { db.query_one(stmt, &[id]).await }),
    ))?;
    Ok(rows
        .iter()
        .map(|row| World {
            id: row.get(0),
            random_number: row.get(1),
        })
        .collect())
}

fn updates(pool: &Pool, n: usize) -> Result<Vec<World>, pg::Error> {
    let mut worlds = queries(pool, n)?;
    let (ids, numbers) = tfb::plan_updates(&mut worlds);
    let client = pool.get()?;
    let stmt = client.prepare_cached(tfb::UPDATE_WORLDS)?;
    client.execute(&stmt, &[&ids, &numbers])?;
    Ok(worlds)
}

fn fortunes(pool: &Pool) -> Result<String, pg::Error> {
    let client = pool.get()?;
    let stmt = client.prepare_cached(tfb::SELECT_FORTUNES)?;
    let rows = client.query(&stmt, &[])?;
    Ok(tfb::fortunes_html(
        rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
    ))
}
