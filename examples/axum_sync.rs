//! An axum server whose handler is plain sync code: `food_delivery` saves
//! the order to a "database" and asks the kitchen service for a time, both
//! written as blocking calls, yet each waits as a greenlet on one of
//! greenhack's pool workers, so thousands of orders wait at once on a few
//! threads.
//!
//! ```text
//! cargo run --features tokio --example axum_sync [ADDR]
//! curl -X POST http://127.0.0.1:3000/order/margherita
//! ```
//!
//! The database is stood in for by a tokio timer (the same `exempt` waits on
//! a tokio-postgres query); the kitchen is a line-based TCP service this
//! program also runs, on greenhack's standalone loop on a thread of its own.

use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::post;

/// Where the kitchen listens; set once at startup.
static KITCHEN: OnceLock<SocketAddr> = OnceLock::new();

// ----- the sync code, as written for threads -----------------------------------

/// Takes an order: saves it, asks the kitchen, returns the answer.
fn food_delivery(dish: &str) -> io::Result<String> {
    let id = save_order(dish);
    let minutes = ask_kitchen(id, dish)?;
    Ok(format!("order {id}: {dish}, ready in {minutes} min\n"))
}

/// Stands in for `INSERT INTO orders ... RETURNING id`: a 10 ms wait.
fn save_order(_dish: &str) -> u64 {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    // Any tokio future can be waited on like this (a tokio-postgres query,
    // a reqwest call): only this greenlet waits.
    greenhack::exempt(tokio::time::sleep(Duration::from_millis(10)));
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// One request to the kitchen over a greenhack socket: std's API, and a
/// wait here suspends only this greenlet.
fn ask_kitchen(id: u64, dish: &str) -> io::Result<u32> {
    let kitchen = KITCHEN.get().expect("the kitchen starts first");
    let mut conn = greenhack::net::TcpStream::connect(kitchen)?;
    writeln!(conn, "{id} {dish}")?;
    let mut answer = String::new();
    BufReader::new(conn).read_line(&mut answer)?;
    answer
        .trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("kitchen: {e}")))
}

// ----- the async side: axum, on tokio's multi-thread runtime --------------------

async fn order(Path(dish): Path<String>) -> Result<String, (StatusCode, String)> {
    // The Send entry: the closure runs as a greenlet on a pool worker; the
    // returned task is Send, so axum can hold it across threads.
    match greenhack::tokio::spawn_sync(move || food_delivery(&dish)).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err((StatusCode::BAD_GATEWAY, format!("{e}\n"))),
        // The closure panicked (the payload is in the error).
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))),
    }
}

#[tokio::main]
async fn main() -> io::Result<()> {
    KITCHEN.set(start_kitchen()?).expect("set once");
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("axum_sync listening on {}", listener.local_addr()?);
    let app = axum::Router::new().route("/order/{dish}", post(order));
    axum::serve(listener, app).await
}

// ----- the kitchen: another service, on its own thread --------------------------

/// Answers each line `ID DISH` with a number of minutes, after "cooking"
/// 1 ms; greenhack's standalone loop, one greenlet per connection.
fn start_kitchen() -> io::Result<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // greenhack sockets belong to the thread that made them (!Send).
        let listener = match greenhack::net::TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => return tx.send(Err(e)).unwrap(),
        };
        tx.send(listener.local_addr()).unwrap();
        greenhack::run(|| {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                drop(greenhack::spawn(move || -> io::Result<()> {
                    let mut line = String::new();
                    BufReader::new(&mut conn).read_line(&mut line)?;
                    greenhack::sleep(Duration::from_millis(1));
                    let minutes = 10 + line.len() % 20;
                    writeln!(conn, "{minutes}")
                }));
            }
        })
    });
    rx.recv().expect("the kitchen thread answers")
}
