//! Fuzzes the HTTP example's request handling (`examples/support/
//! http_protocol.rs`): whatever bytes a client sends, `answer` must not
//! panic, and what it returns must be consistent:
//!
//! * it consumes no more than it was given, and only whole requests;
//! * unless it asks to close, what it left unconsumed is an incomplete
//!   request (nothing answerable is left behind), and it answered with one
//!   `200` per request consumed;
//! * every response it wrote is one of the protocol's exact responses;
//! * answering the input in two pieces (as two reads would deliver it)
//!   gives the same responses as answering it whole.
//!
//! ```text
//! cargo +nightly fuzz run http_request -- -max_total_time=60
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../examples/support/http_protocol.rs"]
#[allow(dead_code)]
mod http_protocol;

const OK: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\nHello, world!";
const OK_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\nconnection: close\r\n\r\nHello, world!";
const BAD: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Splits `out` into the protocol's responses; panics on anything else.
fn responses(mut out: &[u8]) -> Vec<&'static [u8]> {
    let mut seen = Vec::new();
    while !out.is_empty() {
        let r = [OK, OK_CLOSE, BAD]
            .into_iter()
            .find(|r| out.starts_with(r))
            .unwrap_or_else(|| panic!("not a response: {:?}", String::from_utf8_lossy(out)));
        seen.push(r);
        out = &out[r.len()..];
    }
    seen
}

/// Feeds `input` as a server would, in reads cut at `cuts`: answer what is
/// buffered, keep the rest, append the next piece. Returns the responses
/// and whether the connection closed.
fn serve(input: &[u8], cuts: &[usize]) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain([&input.len()]) {
        buf.extend_from_slice(&input[start..end]);
        start = end;
        let before = out.len();
        let (consumed, close) = http_protocol::answer(&buf, &mut out);
        assert!(
            consumed <= buf.len(),
            "consumed {consumed} of {}",
            buf.len()
        );
        let written = responses(&out[before..]);
        if close {
            // The last response says so, and it is the only close.
            let last = written.last().copied();
            assert!(
                last == Some(OK_CLOSE) || last == Some(BAD),
                "closed without saying so"
            );
            assert!(written[..written.len() - 1].iter().all(|r| *r == OK));
            return (out, true);
        }
        assert!(
            written.iter().all(|r| *r == OK),
            "a close response without closing"
        );
        // Nothing complete was left behind.
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let rest = httparse::Request::new(&mut headers).parse(&buf[consumed..]);
        assert!(
            matches!(rest, Ok(httparse::Status::Partial)),
            "left {:?} unanswered: {rest:?}",
            String::from_utf8_lossy(&buf[consumed..])
        );
        buf.drain(..consumed);
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let whole = serve(data, &[]);
    // The same bytes in two reads, cut where the first byte says.
    if let Some(&b) = data.first() {
        let cut = (b as usize * data.len()) / 256;
        assert_eq!(
            serve(data, &[cut]),
            whole,
            "answers depend on how reads cut the input"
        );
    }
});
