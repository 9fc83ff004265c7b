//! The protocol of the HTTP "hello" servers, shared by `examples/http.rs`
//! and the peer servers the benchmark runs against it, so all of them parse
//! with the same code and answer with the same bytes.
//!
//! HTTP/1.1 with keep-alive and pipelining: every complete request in the
//! buffer is answered, in order, with `Hello, world!`; `Connection: close`
//! (or HTTP/1.0 without keep-alive) ends the connection after its response,
//! and a malformed request gets a 400 and the connection closes.

/// The body of every response.
pub const BODY: &[u8] = b"Hello, world!";

/// Answers every complete request at the start of `buf`, appending the
/// responses to `out`. Returns how many bytes of `buf` were consumed and
/// whether the connection must close once `out` is written.
pub fn answer(buf: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
    let mut consumed = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[consumed..]) {
            Ok(httparse::Status::Complete(len)) => {
                let close = wants_close(&req);
                respond(out, close);
                consumed += len;
                if close {
                    return (consumed, true);
                }
            }
            Ok(httparse::Status::Partial) => return (consumed, false),
            Err(_) => {
                out.extend_from_slice(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                return (consumed, true);
            }
        }
    }
}

/// HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 closes
/// unless told to keep it. (Also the TechEmpower example's rule.)
pub fn wants_close(req: &httparse::Request<'_, '_>) -> bool {
    let header = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| h.value.to_ascii_lowercase());
    match (req.version, header.as_deref()) {
        (_, Some(b"close")) => true,
        (Some(0), Some(b"keep-alive")) => false,
        (Some(0), _) => true,
        _ => false,
    }
}

fn respond(out: &mut Vec<u8>, close: bool) {
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: ");
    out.extend_from_slice(BODY.len().to_string().as_bytes());
    if close {
        out.extend_from_slice(b"\r\nconnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(BODY);
}
