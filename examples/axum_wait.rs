//! The server of `scripts/bench-axum`: axum on tokio's multi-thread runtime,
//! one route whose work waits 10 ms on a tokio timer (a database call's
//! stand-in), called three ways:
//!
//! * `greenhack` — a sync fn, through [`greenhack::tokio::spawn_sync`]: a
//!   greenlet on a pool worker, waiting with `exempt`;
//! * `greenhack_sliced` — the same through a [`greenhack::tokio::Pool`]
//!   built with `sliced()`: the waiting calls share the worker's stack and
//!   keep only their live frames, on the heap;
//! * `spawn_blocking` — the same sync fn through
//!   `tokio::task::spawn_blocking`, waiting with `Handle::block_on`: today's
//!   usual way to call sync code from axum, one OS thread per call;
//! * `async` — an `async fn` handler awaiting the timer: the ceiling.
//!
//! ```text
//! cargo run --release --features tokio --example axum_wait -- MODE [ADDR] [WAIT_MS]
//! # MODE: greenhack, greenhack_sliced, spawn_blocking or async
//! ```

use std::time::Duration;

use axum::routing::get;

/// The sync work, as written for threads (`wait` blocks its caller).
fn lookup(wait: impl FnOnce(Duration)) -> &'static str {
    wait(Duration::from_millis(wait_ms()));
    "row 42\n"
}

fn wait_ms() -> u64 {
    static MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MS.get_or_init(|| {
        std::env::args()
            .nth(3)
            .map_or(10, |s| s.parse().expect("WAIT_MS"))
    })
}

async fn via_greenhack() -> &'static str {
    greenhack::tokio::spawn_sync(|| lookup(|d| greenhack::exempt(tokio::time::sleep(d))))
        .await
        .unwrap()
}

async fn via_greenhack_sliced() -> &'static str {
    static POOL: std::sync::OnceLock<greenhack::tokio::Pool> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| {
        // SAFETY: `lookup` waits only through `exempt` of a future passed by
        // value (moved to the heap), and holds no reference into its stack
        // that anything else could use while it waits.
        unsafe { greenhack::tokio::Pool::builder().sliced() }
            .build()
            .expect("the sliced pool")
    });
    pool.spawn(|| lookup(|d| greenhack::exempt(tokio::time::sleep(d))))
        .await
        .unwrap()
}

async fn via_spawn_blocking() -> &'static str {
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || lookup(|d| rt.block_on(tokio::time::sleep(d))))
        .await
        .unwrap()
}

async fn via_async() -> &'static str {
    tokio::time::sleep(Duration::from_millis(wait_ms())).await;
    "row 42\n"
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let app = match mode.as_str() {
        "greenhack" => axum::Router::new().route("/", get(via_greenhack)),
        "greenhack_sliced" => axum::Router::new().route("/", get(via_greenhack_sliced)),
        "spawn_blocking" => axum::Router::new().route("/", get(via_spawn_blocking)),
        "async" => axum::Router::new().route("/", get(via_async)),
        _ => {
            eprintln!(
                "usage: axum_wait greenhack|greenhack_sliced|spawn_blocking|async [ADDR] [WAIT_MS]"
            );
            std::process::exit(2);
        }
    };
    let addr = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    // A backlog for 1,000 connections arriving at once (std's is 128).
    let addr: std::net::SocketAddr = addr.parse().expect("ADDR");
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    println!("axum_wait ({mode}) listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
