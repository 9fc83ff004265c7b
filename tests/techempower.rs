//! The TechEmpower example (`examples/techempower.rs`) checked against the
//! published test-type requirements, one test per type, over a real
//! PostgreSQL with the benchmark's schema: shape, headers, escaping,
//! clamping, and updates read back from the database.

#![cfg(feature = "tokio")]

mod util;

#[path = "../examples/support/pg_cluster.rs"]
mod pg_cluster;
#[path = "../examples/support/tfb.rs"]
mod tfb;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::Duration;

use pg_cluster::PgCluster;
use serde_json::Value;

/// The example server, killed when the test ends; the cluster (if any) is
/// dropped after it.
struct Server {
    child: Child,
    addr: String,
    db: Option<PgCluster>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a cluster with the TFB schema (if `with_db`) and the example
/// server on an ephemeral port.
fn start(with_db: bool) -> Server {
    let db = with_db.then(|| {
        let pg = PgCluster::start();
        pg.create_tfb_schema();
        pg
    });
    // Without a database the server still starts (it connects lazily).
    let url = db
        .as_ref()
        .map(|pg| pg.url("hello_world"))
        .unwrap_or_else(|| "host=127.0.0.1 port=1 user=nobody".into());
    let exe = util::example_path("techempower");
    let mut child = util::command(&exe)
        .args(["127.0.0.1:0", "--db", &url, "--pool", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_owned();
    Server { child, addr, db }
}

/// A parsed response.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// The checks every test type shares: 200, `Server`, a well-formed
    /// current `Date`, the content type, a `Content-Length` that matches.
    fn assert_common(&self, content_type: &str) {
        assert_eq!(self.status, 200, "{self:?}");
        assert_eq!(self.header("server"), Some(tfb::SERVER));
        let date = self.header("date").expect("a Date header");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            [now, now - 1, now - 2]
                .map(tfb::format_http_date)
                .contains(&date.to_owned()),
            "Date {date:?} is not the current IMF-fixdate"
        );
        assert_eq!(self.header("content-type"), Some(content_type));
        assert_eq!(
            self.header("content-length"),
            Some(self.body.len().to_string().as_str())
        );
    }
}

/// Reads one response (with a `Content-Length` body) from `r`.
fn read_response(r: &mut impl BufRead) -> Response {
    let mut status_line = String::new();
    r.read_line(&mut status_line).unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':').expect("a header line");
        headers.push((n.to_owned(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .expect("a Content-Length");
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    Response {
        status,
        headers,
        body,
    }
}

/// Sends `GET path` on a new connection and reads the response.
fn get(server: &Server, path: &str) -> Response {
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: tfb\r\n\r\n").unwrap();
    read_response(&mut BufReader::new(s))
}

/// `World` rows as a JSON array or object, checked for shape: exactly the
/// keys `id` and `randomNumber`, both integers in 1..=10000.
fn worlds(v: &Value) -> Vec<(i64, i64)> {
    let one = |w: &Value| {
        let o = w.as_object().expect("a World object");
        assert_eq!(o.len(), 2, "only id and randomNumber: {w}");
        let id = o["id"].as_i64().expect("integer id");
        let n = o["randomNumber"].as_i64().expect("integer randomNumber");
        assert!((1..=10_000).contains(&id), "{w}");
        assert!((1..=10_000).contains(&n), "{w}");
        (id, n)
    };
    match v {
        Value::Array(a) => a.iter().map(one).collect(),
        w => vec![one(w)],
    }
}

/// The stored random number of each id.
fn stored(pg: &PgCluster, ids: &[i64]) -> Vec<i64> {
    ids.iter()
        .map(|id| {
            pg.psql(
                "hello_world",
                &format!("SELECT randomnumber FROM world WHERE id = {id}"),
            )
            .trim()
            .parse()
            .unwrap()
        })
        .collect()
}

#[test]
fn http_date_is_imf_fixdate() {
    assert_eq!(
        tfb::format_http_date(784_111_777),
        "Sun, 06 Nov 1994 08:49:37 GMT"
    );
    assert_eq!(
        tfb::format_http_date(951_782_400),
        "Tue, 29 Feb 2000 00:00:00 GMT"
    );
    assert_eq!(tfb::format_http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
}

#[test]
fn queries_parameter_is_clamped_and_junk_counts_as_one() {
    let q = |s| tfb::queries_param(s);
    assert_eq!(q(None), 1);
    assert_eq!(q(Some("")), 1);
    assert_eq!(q(Some("queries=")), 1);
    assert_eq!(q(Some("queries=foo")), 1);
    assert_eq!(q(Some("queries=0")), 1);
    assert_eq!(q(Some("queries=-3")), 1);
    assert_eq!(q(Some("queries=20")), 20);
    assert_eq!(q(Some("a=b&queries=7")), 7);
    assert_eq!(q(Some("queries=501")), 500);
    assert_eq!(q(Some("queries=99999999999999999999")), 1);
}

#[test]
fn plaintext_and_its_16_deep_pipeline() {
    let server = start(false);
    let r = get(&server, "/plaintext");
    r.assert_common("text/plain");
    assert_eq!(r.body, b"Hello, World!");

    // 16 requests in one write, as the benchmark's pipelined load sends
    // them: 16 answers, in order.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let one = "GET /plaintext HTTP/1.1\r\nHost: tfb\r\n\r\n";
    s.write_all(one.repeat(15).as_bytes()).unwrap();
    s.write_all(b"GET /json HTTP/1.1\r\nHost: tfb\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    for _ in 0..15 {
        let resp = read_response(&mut r);
        resp.assert_common("text/plain");
        assert_eq!(resp.body, b"Hello, World!");
    }
    read_response(&mut r).assert_common("application/json");
}

#[test]
fn json() {
    let server = start(false);
    let r = get(&server, "/json");
    r.assert_common("application/json");
    assert_eq!(r.json(), serde_json::json!({"message": "Hello, World!"}));
    // Unknown paths are 404, not a test type.
    assert_eq!(get(&server, "/nope").status, 404);
}

#[test]
fn single_query() {
    let server = start(true);
    let pg = server.db.as_ref().unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        let r = get(&server, "/db");
        r.assert_common("application/json");
        let v = r.json();
        assert!(v.is_object(), "/db answers an object, not an array: {v}");
        let w = worlds(&v);
        assert_eq!(stored(pg, &[w[0].0]), [w[0].1], "the row as stored");
        seen.insert(w[0].0);
    }
    assert!(seen.len() > 1, "random ids: {seen:?}");
}

#[test]
fn multiple_queries_clamped() {
    let server = start(true);
    let pg = server.db.as_ref().unwrap();
    let r = get(&server, "/queries?queries=20");
    r.assert_common("application/json");
    let w = worlds(&r.json());
    assert_eq!(w.len(), 20);
    let ids: Vec<i64> = w.iter().map(|w| w.0).collect();
    let numbers: Vec<i64> = w.iter().map(|w| w.1).collect();
    assert_eq!(stored(pg, &ids), numbers);
    for (query, len) in [
        ("", 1),
        ("?queries=", 1),
        ("?queries=foo", 1),
        ("?queries=0", 1),
        ("?queries=501", 500),
    ] {
        let r = get(&server, &format!("/queries{query}"));
        r.assert_common("application/json");
        let v = r.json();
        assert!(v.is_array(), "/queries{query} answers an array: {v}");
        assert_eq!(worlds(&v).len(), len, "/queries{query}");
    }
}

#[test]
fn fortunes_sorted_escaped_utf8() {
    let server = start(true);
    let r = get(&server, "/fortunes");
    r.assert_common("text/html; charset=utf-8");
    let html = String::from_utf8(r.body).expect("UTF-8");
    let expected = concat!(
        "<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table>",
        "<tr><th>id</th><th>message</th></tr>",
        "<tr><td>11</td><td>&lt;script&gt;alert(&quot;This should not be displayed in a browser alert box.&quot;);&lt;/script&gt;</td></tr>",
        "<tr><td>4</td><td>A bad random number generator: 1, 1, 1, 1, 1, 4.33e+67, 1, 1, 1</td></tr>",
        "<tr><td>5</td><td>A computer program does what you tell it to do, not what you want it to do.</td></tr>",
        "<tr><td>2</td><td>A computer scientist is someone who fixes things that aren&#x27;t broken.</td></tr>",
        "<tr><td>8</td><td>A list is only as strong as its weakest link. — Donald Knuth</td></tr>",
        "<tr><td>0</td><td>Additional fortune added at request time.</td></tr>",
        "<tr><td>3</td><td>After enough decimal places, nobody gives a damn.</td></tr>",
        "<tr><td>7</td><td>Any program that runs right is obsolete.</td></tr>",
        "<tr><td>10</td><td>Computers make very fast, very accurate mistakes.</td></tr>",
        "<tr><td>6</td><td>Emacs is a nice operating system, but I prefer UNIX. — Tom Christaensen</td></tr>",
        "<tr><td>9</td><td>Feature: A bug with seniority.</td></tr>",
        "<tr><td>1</td><td>fortune: No such file or directory</td></tr>",
        "<tr><td>12</td><td>フレームワークのベンチマーク</td></tr>",
        "</table></body></html>",
    );
    assert_eq!(html, expected);
}

#[test]
fn updates_persisted_and_clamped() {
    let server = start(true);
    let pg = server.db.as_ref().unwrap();
    for _ in 0..3 {
        let r = get(&server, "/updates?queries=20");
        r.assert_common("application/json");
        let w = worlds(&r.json());
        assert_eq!(w.len(), 20);
        let ids: Vec<i64> = w.iter().map(|w| w.0).collect();
        let numbers: Vec<i64> = w.iter().map(|w| w.1).collect();
        assert_eq!(stored(pg, &ids), numbers, "the new numbers are stored");
    }
    // Over many updates, stored numbers really change (not just echoed).
    let before = pg.psql("hello_world", "SELECT sum(randomnumber) FROM world");
    get(&server, "/updates?queries=500");
    let after = pg.psql("hello_world", "SELECT sum(randomnumber) FROM world");
    assert_ne!(before, after, "500 updates changed nothing");
    for (query, len) in [
        ("", 1),
        ("?queries=foo", 1),
        ("?queries=0", 1),
        ("?queries=501", 500),
    ] {
        let r = get(&server, &format!("/updates{query}"));
        r.assert_common("application/json");
        let v = r.json();
        assert!(v.is_array(), "/updates{query} answers an array: {v}");
        assert_eq!(worlds(&v).len(), len, "/updates{query}");
    }
}
