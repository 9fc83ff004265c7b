//! What the TechEmpower servers (`examples/techempower.rs` on greenhack,
//! `examples/peer_axum_tfb.rs` on axum) share, so both answer with the same
//! bytes: the JSON shapes, the `queries` parameter rule, the fortunes page,
//! HTML escaping, the `Date` header and a small random number generator.
//!
//! The rules are the published TechEmpower Framework Benchmarks test
//! requirements (<https://github.com/TechEmpower/FrameworkBenchmarks/wiki/Project-Information-Framework-Tests-Overview>).

#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The `Server` header's value.
pub const SERVER: &str = "greenhack";

/// The body of `/plaintext`.
pub const PLAINTEXT: &[u8] = b"Hello, World!";

/// The fortune every `/fortunes` request adds before sorting.
pub const ADDED_FORTUNE: &str = "Additional fortune added at request time.";

/// `/json`'s object.
#[derive(Serialize)]
pub struct Message {
    /// Always `Hello, World!`.
    pub message: &'static str,
}

/// A row of `World`, as `/db`, `/queries` and `/updates` answer it.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct World {
    pub id: i32,
    #[serde(rename = "randomNumber")]
    pub random_number: i32,
}

/// The statements, shared so both servers send the database the same work.
pub const SELECT_WORLD: &str = "SELECT id, randomnumber FROM world WHERE id = $1";
pub const SELECT_FORTUNES: &str = "SELECT id, message FROM fortune";
/// One statement updates a batch (allowed by the rules: "individual update
/// statements that affect multiple rows"); ids are sorted by the caller so
/// that concurrent batches lock rows in one order and cannot deadlock.
pub const UPDATE_WORLDS: &str = "UPDATE world SET randomnumber = t.r \
     FROM (SELECT unnest($1::int[]) AS id, unnest($2::int[]) AS r) AS t \
     WHERE world.id = t.id";

/// The number of queries a `/queries` or `/updates` request asks for: the
/// `queries` parameter of the query string, clamped to 1..=500; missing,
/// empty or not a number counts as 1.
pub fn queries_param(query: Option<&str>) -> usize {
    let n = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("queries="))
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(1);
    n.clamp(1, 500) as usize
}

/// The new random numbers of an `/updates` batch: one per distinct id (a
/// repeated id gets one number, so the answer matches what is stored), and
/// the batch's parameters with ids sorted. Sets each world's new number.
pub fn plan_updates(worlds: &mut [World]) -> (Vec<i32>, Vec<i32>) {
    let mut new: Vec<(i32, i32)> = Vec::with_capacity(worlds.len());
    for w in worlds.iter_mut() {
        match new.iter().find(|(id, _)| *id == w.id) {
            Some(&(_, r)) => w.random_number = r,
            None => {
                w.random_number = random_id();
                new.push((w.id, w.random_number));
            }
        }
    }
    new.sort_unstable();
    new.into_iter().unzip()
}

/// The `/fortunes` page: `rows` plus the added fortune, sorted by message,
/// escaped, in the exact shape the verifier compares against.
pub fn fortunes_html(mut rows: Vec<(i32, String)>) -> String {
    rows.push((0, ADDED_FORTUNE.to_owned()));
    rows.sort_by(|a, b| a.1.cmp(&b.1));
    let mut html = String::with_capacity(1200);
    html.push_str(
        "<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table>\
         <tr><th>id</th><th>message</th></tr>",
    );
    for (id, message) in &rows {
        let _ = write!(html, "<tr><td>{id}</td><td>");
        escape_html(message, &mut html);
        html.push_str("</td></tr>");
    }
    html.push_str("</table></body></html>");
    html
}

/// Appends `s` to `out` with `&`, `<`, `>`, `"` and `'` escaped.
pub fn escape_html(s: &str, out: &mut String) {
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'"' => "&quot;",
            b'\'' => "&#x27;",
            _ => continue,
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        last = i + 1;
    }
    out.push_str(&s[last..]);
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

fn seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ 0x9E37_79B9_7F4A_7C15) | 1
}

/// A random `World` id (and random number), uniform in 1..=10000
/// (xorshift64*: any generator will do, the rules ask for none in
/// particular).
pub fn random_id() -> i32 {
    RNG.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as i32 % 10_000 + 1
    })
}

/// The current `Date` header value (IMF-fixdate), formatted once a second.
pub fn http_date(f: impl FnOnce(&str)) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != now {
            d.1 = format_http_date(now);
            d.0 = now;
        }
        f(&d.1)
    })
}

/// `secs` since the epoch as `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn format_http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
