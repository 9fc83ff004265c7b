//! The TechEmpower test types on axum + tokio-postgres, what most Rust users
//! would pick: the peer of `examples/techempower.rs` in `scripts/bench-tfb`.
//!
//! ```text
//! cargo run --release --features tokio --example peer_axum_tfb -- 127.0.0.1:8081 \
//!     --db "host=127.0.0.1 port=5432 user=postgres dbname=hello_world" --pool 4
//! ```
//!
//! One thread: tokio's current_thread runtime. `--pool N` connections
//! (default 4), each with its statements prepared once, shared round-robin
//! by the handlers (tokio-postgres pipelines concurrent queries on a
//! connection), as greenhack's server shares its pool. The same statements,
//! query-string rule, fortunes page and JSON as greenhack's server
//! (`examples/support/tfb.rs`); `/queries` and `/updates` send their
//! queries at once and wait for all, as greenhack's does. hyper writes the
//! `Date` header; each handler adds `Server`. Sockets get `TCP_NODELAY`, as
//! axum's own TFB entry sets it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::header::{CONTENT_TYPE, SERVER};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio_postgres::{Client, NoTls, Statement};

#[path = "support/tfb.rs"]
mod tfb;

use tfb::World;

/// One connection and its prepared statements.
struct Conn {
    client: Client,
    world: Statement,
    fortunes: Statement,
    update: Statement,
}

struct Db {
    conns: Vec<Conn>,
    next: AtomicUsize,
}

impl Db {
    fn conn(&self) -> &Conn {
        &self.conns[self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len()]
    }
}

type AppState = State<Arc<Db>>;

fn main() {
    let mut addr = "127.0.0.1:8081".to_owned();
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
                    .expect("--pool needs a number")
            }
            _ => addr = arg,
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let config: tokio_postgres::Config = db.parse().expect("a connection string");
        let mut conns = Vec::new();
        for _ in 0..pool_size {
            conns.push(connect(&config).await);
        }
        let state = Arc::new(Db {
            conns,
            next: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/plaintext", get(plaintext))
            .route("/json", get(json))
            .route("/db", get(single))
            .route("/queries", get(queries))
            .route("/updates", get(updates))
            .route("/fortunes", get(fortunes))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
        println!("axum tfb: listening on {}", listener.local_addr().unwrap());
        // TCP_NODELAY, as greenhack's server and axum's TFB entry set it:
        // without it, pipelined responses stall on Nagle + delayed ACKs.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await.unwrap();
    });
}

/// A connection over a tokio socket, its driver spawned on the runtime.
async fn connect(config: &tokio_postgres::Config) -> Conn {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => panic!("peer_axum_tfb connects over TCP: give host=…"),
    };
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .expect("connect to the database");
    stream.set_nodelay(true).unwrap();
    let (client, connection) = config.connect_raw(stream, NoTls).await.unwrap();
    tokio::spawn(connection);
    Conn {
        world: client.prepare(tfb::SELECT_WORLD).await.unwrap(),
        fortunes: client.prepare(tfb::SELECT_FORTUNES).await.unwrap(),
        update: client.prepare(tfb::UPDATE_WORLDS).await.unwrap(),
        client,
    }
}

fn reply(content_type: &'static str, body: Vec<u8>) -> Response {
    ([(SERVER, "axum"), (CONTENT_TYPE, content_type)], body).into_response()
}

fn json_reply<T: serde::Serialize>(v: &T) -> Response {
    reply("application/json", serde_json::to_vec(v).unwrap())
}

fn db_error(e: tokio_postgres::Error) -> Response {
    (
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        format!("database error: {e}"),
    )
        .into_response()
}

async fn plaintext() -> Response {
    reply("text/plain", tfb::PLAINTEXT.to_vec())
}

async fn json() -> Response {
    json_reply(&tfb::Message {
        message: "Hello, World!",
    })
}

async fn single(State(db): AppState) -> Response {
    let c = db.conn();
    match c.client.query_one(&c.world, &[&tfb::random_id()]).await {
        Ok(row) => json_reply(&World {
            id: row.get(0),
            random_number: row.get(1),
        }),
        Err(e) => db_error(e),
    }
}

async fn fetch(c: &Conn, n: usize) -> Result<Vec<World>, tokio_postgres::Error> {
    let ids: Vec<i32> = (0..n).map(|_| tfb::random_id()).collect();
    let rows = futures_util::future::try_join_all(
        ids.iter()
            .map(|id| async move { c.client.query_one(&c.world, &[id]).await }),
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| World {
            id: row.get(0),
            random_number: row.get(1),
        })
        .collect())
}

async fn queries(State(db): AppState, RawQuery(q): RawQuery) -> Response {
    match fetch(db.conn(), tfb::queries_param(q.as_deref())).await {
        Ok(w) => json_reply(&w),
        Err(e) => db_error(e),
    }
}

async fn updates(State(db): AppState, RawQuery(q): RawQuery) -> Response {
    let c = db.conn();
    let mut worlds = match fetch(c, tfb::queries_param(q.as_deref())).await {
        Ok(w) => w,
        Err(e) => return db_error(e),
    };
    let (ids, numbers) = tfb::plan_updates(&mut worlds);
    match c.client.execute(&c.update, &[&ids, &numbers]).await {
        Ok(_) => json_reply(&worlds),
        Err(e) => db_error(e),
    }
}

async fn fortunes(State(db): AppState) -> Response {
    let c = db.conn();
    match c.client.query(&c.fortunes, &[]).await {
        Ok(rows) => reply(
            "text/html; charset=utf-8",
            tfb::fortunes_html(rows.iter().map(|r| (r.get(0), r.get(1))).collect()).into_bytes(),
        ),
        Err(e) => db_error(e),
    }
}
