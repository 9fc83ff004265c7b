//! may_minihttp's TechEmpower server for `/plaintext` and `/json` (its
//! PostgreSQL client is not published), with one may worker thread: the
//! stackful-coroutine peer of `examples/techempower.rs` in
//! `scripts/bench-tfb`.
//!
//! ```text
//! cargo run --release --example peer_may_tfb -- 127.0.0.1:8082
//! ```
//!
//! As may_minihttp's own TechEmpower entry, except that JSON goes through
//! serde_json (as greenhack's and axum's servers do) instead of yarte.
//! may_minihttp writes the `Server` and `Date` headers itself and answers
//! pipelined requests in one write.

use std::io;

use may_minihttp::{HttpService, HttpServiceFactory, Request, Response};

#[path = "support/tfb.rs"]
mod tfb;

struct Techempower;

impl HttpService for Techempower {
    fn call(&mut self, req: Request, rsp: &mut Response) -> io::Result<()> {
        match req.path() {
            "/json" => {
                rsp.header("Content-Type: application/json");
                let body = serde_json::to_vec(&tfb::Message {
                    message: "Hello, World!",
                })?;
                rsp.body_mut().extend_from_slice(&body);
            }
            "/plaintext" => {
                rsp.header("Content-Type: text/plain").body("Hello, World!");
            }
            _ => {
                rsp.status_code(404, "Not Found");
            }
        }
        Ok(())
    }
}

struct Factory;

impl HttpServiceFactory for Factory {
    type Service = Techempower;

    fn new_service(&self, _: usize) -> Techempower {
        Techempower
    }
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8082".into());
    may::config().set_workers(1);
    let server = Factory.start(&addr).expect("bind");
    // may_minihttp cannot report an ephemeral port: pass a fixed one.
    println!("may_minihttp tfb: listening on {addr}");
    server.join().unwrap();
}
