//! tokio's and futures-io's `AsyncRead`/`AsyncWrite` on greenhack's stream
//! sockets, driven by greenhack's standalone loop (no tokio runtime): async
//! crates written against those traits run over greenhack's sockets, their
//! futures waited for with `exempt` or run as spawned greenlets.

#![cfg(all(feature = "tokio", feature = "futures-io"))]

use greenhack::net::{TcpListener, TcpStream, UnixStream};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// hyper 1's HTTP/1 server and client, both over greenhack sockets on one
/// thread's greenhack loop: each connection future is a greenlet that
/// exempts it, the requests are waited for from sync code.
#[test]
fn hyper_client_and_server_over_greenhack_sockets() {
    let bodies = greenhack::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // The server: a greenlet per connection, each exempting hyper's
        // connection future.
        let server = greenhack::spawn(move || {
            for _ in 0..2 {
                let (stream, _) = listener.accept().unwrap();
                drop(greenhack::spawn(move || {
                    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await?.to_bytes();
                        let reply = format!("{path}: {} bytes", body.len());
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(reply))))
                    });
                    greenhack::exempt(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service),
                    )
                    .unwrap();
                }));
            }
        });
        // Two clients, each its own connection, concurrently.
        let clients: Vec<_> = (0..2)
            .map(|i| {
                greenhack::spawn(move || {
                    let stream = TcpStream::connect(addr).unwrap();
                    let (mut send, conn) =
                        greenhack::exempt(hyper::client::conn::http1::handshake::<_, Full<Bytes>>(
                            TokioIo::new(stream),
                        ))
                        .unwrap();
                    let conn = greenhack::spawn(move || greenhack::exempt(conn));
                    let mut bodies = Vec::new();
                    // Keep-alive: three requests on the one connection.
                    for n in 0..3 {
                        let req = Request::post(format!("/c{i}/r{n}"))
                            .header("host", addr.to_string())
                            .body(Full::new(Bytes::from(vec![b'x'; 1000 * (n + 1)])))
                            .unwrap();
                        let resp = greenhack::exempt(send.send_request(req)).unwrap();
                        assert_eq!(resp.status(), 200);
                        let body = greenhack::exempt(resp.into_body().collect())
                            .unwrap()
                            .to_bytes();
                        bodies.push(String::from_utf8(body.to_vec()).unwrap());
                    }
                    drop(send); // ends the client connection future
                    conn.join().unwrap().unwrap();
                    bodies
                })
            })
            .collect();
        let bodies: Vec<Vec<String>> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        server.join().unwrap();
        bodies
    });
    for (i, b) in bodies.iter().enumerate() {
        let want: Vec<String> = (0..3)
            .map(|n| format!("/c{i}/r{n}: {} bytes", 1000 * (n + 1)))
            .collect();
        assert_eq!(b, &want);
    }
}

/// A megabyte each way through tokio's `AsyncReadExt`/`AsyncWriteExt`:
/// the writer meets a full send buffer (write readiness), the reader an
/// empty receive buffer (read readiness), many times over.
#[test]
fn tokio_traits_round_trip_a_megabyte() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let expected = data.clone();
    let back = greenhack::run(move || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        // Echo through `&TcpStream`: reading and writing halves at once.
        let echo = greenhack::spawn(move || {
            greenhack::exempt(async {
                let (mut r, mut w) = (&server, &server);
                let n = tokio::io::copy(&mut r, &mut w).await?;
                AsyncWriteExt::shutdown(&mut w).await?;
                Ok::<_, std::io::Error>(n)
            })
        });
        let writer_half = client.try_clone().unwrap();
        let writer = greenhack::spawn(move || {
            let mut w = writer_half;
            greenhack::exempt(async {
                w.write_all(&data).await?;
                AsyncWriteExt::shutdown(&mut w).await
            })
        });
        let mut back = Vec::new();
        greenhack::exempt(client.read_to_end(&mut back)).unwrap();
        writer.join().unwrap().unwrap();
        assert_eq!(echo.join().unwrap().unwrap(), 1 << 20);
        back
    });
    assert!(back == expected, "echoed bytes differ");
}

/// futures-io's traits on a Unix socket pair, mixed with the blocking API
/// on the same socket: a short blocking read followed by an async read must
/// not wait for an edge that never comes.
#[test]
fn futures_io_round_trip_mixed_with_blocking_reads() {
    use futures_util::io::{AsyncReadExt, AsyncWriteExt};
    greenhack::run(|| {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let peer = greenhack::spawn(move || {
            // Blocking-style write, then async writes.
            std::io::Write::write_all(&mut b, b"hello ").unwrap();
            greenhack::sleep(std::time::Duration::from_millis(20));
            greenhack::exempt(b.write_all(b"async world")).unwrap();
            let mut reply = [0; 2];
            greenhack::exempt(b.read_exact(&mut reply)).unwrap();
            assert_eq!(&reply, b"ok");
            greenhack::exempt(b.close()).unwrap();
        });
        // A short blocking read (6 of 64 bytes): the socket is marked drained.
        let mut buf = [0; 64];
        let n = std::io::Read::read(&mut a, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello ");
        // Then async reads: they wait for the next edge, which comes.
        let mut rest = [0; 11];
        greenhack::exempt(a.read_exact(&mut rest)).unwrap();
        assert_eq!(&rest, b"async world");
        greenhack::exempt(a.write_all(b"ok")).unwrap();
        let mut tail = Vec::new();
        greenhack::exempt(a.read_to_end(&mut tail)).unwrap();
        assert!(tail.is_empty(), "peer closed its writing half");
        peer.join().unwrap();
    });
}

/// A closed peer reads as end of stream and a write to it fails, as with
/// the blocking API; an idle async read does not spin (it is woken once
/// data arrives, and only then).
#[test]
fn closed_peer_is_eof_and_write_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    greenhack::run(|| {
        let (mut a, b) = UnixStream::pair().unwrap();
        let closer = greenhack::spawn(move || {
            greenhack::sleep(std::time::Duration::from_millis(20));
            drop(b);
        });
        let mut buf = [0; 8];
        let n = greenhack::exempt(a.read(&mut buf)).unwrap();
        assert_eq!(n, 0, "end of stream once the peer closed");
        closer.join().unwrap();
        let err = greenhack::exempt(async {
            // The first write may be accepted by the kernel; a later one fails.
            loop {
                a.write_all(&[0; 4096]).await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), std::io::Error>(())
        })
        .unwrap_err();
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{err:?}"
        );
    });
}

/// A read that finds no data registers its waker and stays pending until
/// the data arrives: it is polled once to start and once per wake-up, not
/// in a loop.
#[test]
fn pending_read_waits_for_readiness_without_spinning() {
    use std::cell::Cell;
    use std::rc::Rc;
    use tokio::io::AsyncReadExt;

    /// Counts the polls of the future it wraps.
    struct Counted<F>(F, Rc<Cell<u32>>);
    impl<F: Future + Unpin> Future for Counted<F> {
        type Output = F::Output;
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<F::Output> {
            self.1.set(self.1.get() + 1);
            std::pin::Pin::new(&mut self.0).poll(cx)
        }
    }

    greenhack::run(|| {
        let (mut a, b) = UnixStream::pair().unwrap();
        let writer = greenhack::spawn(move || {
            greenhack::sleep(std::time::Duration::from_millis(50));
            std::io::Write::write_all(&mut &b, b"late").unwrap();
            b
        });
        let polls = Rc::new(Cell::new(0));
        let mut buf = [0; 4];
        let n = greenhack::exempt(Counted(Box::pin(a.read(&mut buf)), polls.clone())).unwrap();
        assert_eq!(&buf[..n], b"late");
        assert!(
            polls.get() <= 3,
            "polled {} times while waiting",
            polls.get()
        );
        drop(writer.join().unwrap());
    });
}
