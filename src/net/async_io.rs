//! The async I/O traits of tokio (feature `tokio`) and futures-io (feature
//! `futures-io`) for the stream sockets, [`TcpStream`](super::TcpStream) and
//! [`UnixStream`](super::UnixStream), and for shared references to them.
//!
//! They let runtime-agnostic async crates — hyper 1 (through
//! `hyper_util::rt::TokioIo`), tokio-postgres's `Config::connect_raw`,
//! tokio-tungstenite, anything generic over `AsyncRead + AsyncWrite` — run
//! over greenhack's sockets on greenhack's own loop, with no tokio runtime:
//! their futures are waited for from sync code with
//! [`exempt`](crate::exempt), and their background futures run as
//! [`spawn`](crate::spawn)ed greenlets that `exempt` them.
//!
//! ```
//! # #[cfg(feature = "tokio")] {
//! use greenhack::net::{TcpListener, TcpStream};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! greenhack::run(|| {
//!     let listener = TcpListener::bind("127.0.0.1:0")?;
//!     let mut client = TcpStream::connect(listener.local_addr()?)?;
//!     let (mut server, _) = listener.accept()?;
//!     // An async function, written against tokio's traits only.
//!     let echo_once = async move {
//!         let mut buf = [0; 4];
//!         server.read_exact(&mut buf).await?;
//!         server.write_all(&buf).await
//!     };
//!     let echo = greenhack::spawn(move || greenhack::exempt(echo_once));
//!     greenhack::exempt(client.write_all(b"ping"))?;
//!     let mut back = [0; 4];
//!     greenhack::exempt(client.read_exact(&mut back))?;
//!     assert_eq!(&back, b"ping");
//!     echo.join().unwrap()
//! })?;
//! # }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # How a poll waits
//!
//! `poll_read` tries the non-blocking read; on `WouldBlock` it registers the
//! task's waker with greenhack's reactor for read readiness and returns
//! `Pending` (`poll_write` likewise for write readiness). The waker fires
//! when the thread's greenhack loop sees the socket ready, so the future
//! must be polled on the thread that owns the socket, by something that
//! lets that loop run: `exempt` or a spawned greenlet. Reads keep the
//! blocking API's short-read rule (a read that returned less than asked
//! emptied the receive buffer, so the next poll waits for readiness before
//! trying), sharing its state, so blocking-style and async reads of one
//! socket can be mixed.
//!
//! # Differences from the blocking API
//!
//! * The socket's read and write timeouts (`set_read_timeout`, …) bound
//!   blocking-style calls only; a poll never times out on its own. Bound an
//!   async operation with the caller's own timer.
//! * `poll_flush` does nothing (nothing is buffered in user space);
//!   `poll_shutdown` (tokio) and `poll_close` (futures-io) shut the writing
//!   half down, as `shutdown(Shutdown::Write)` does.
//! * With both std's `Read`/`Write` and tokio's or futures' extension
//!   traits in scope, `stream.read(..)` is ambiguous: import only the
//!   traits a module uses, or call one through its trait
//!   (`std::io::Read::read(&mut s, ..)`). The inherent
//!   [`shutdown`](super::TcpStream::shutdown) wins over
//!   `AsyncWriteExt::shutdown`; call the latter as
//!   `AsyncWriteExt::shutdown(&mut s)`.

/// tokio's and futures-io's `AsyncRead`/`AsyncWrite` for a stream wrapper
/// `$ty` whose `reg` field is a `Registered` stream, and for `&$ty`.
/// Invoked in the module that defines `$ty`, where `reg` is visible.
macro_rules! impl_async_io {
    ($ty:ty) => {
        #[cfg(feature = "tokio")]
        impl tokio::io::AsyncRead for &$ty {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                // Read straight into the unfilled, possibly uninitialised
                // part of `buf` through a raw pointer (no `&mut [u8]` over
                // uninitialised bytes is ever made).
                // SAFETY: `unfilled_mut` asks that no initialised byte be
                // de-initialised through the slice; it is only written by
                // `read(2)` below, which stores initialised bytes.
                let unfilled = unsafe { buf.unfilled_mut() };
                let (ptr, len) = (unfilled.as_mut_ptr(), unfilled.len());
                match self.reg.poll_read_stream(cx, len, |s| {
                    let fd = std::os::fd::AsRawFd::as_raw_fd(s);
                    // SAFETY: `ptr` is valid for writes of `len` bytes (the
                    // unfilled part of `buf`, which outlives this call and
                    // is not otherwise accessed meanwhile); `read(2)`
                    // writes at most `len` bytes there and reads none.
                    let n = unsafe { libc::read(fd, ptr.cast(), len) };
                    if n < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                }) {
                    std::task::Poll::Ready(Ok(n)) => {
                        // SAFETY: `read(2)` initialised the first `n`
                        // bytes of the unfilled part.
                        unsafe { buf.assume_init(n) };
                        buf.advance(n);
                        std::task::Poll::Ready(Ok(()))
                    }
                    std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
                    std::task::Poll::Pending => std::task::Poll::Pending,
                }
            }
        }

        #[cfg(feature = "tokio")]
        impl tokio::io::AsyncWrite for &$ty {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.reg.poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.reg.poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                true
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(self.shutdown(std::net::Shutdown::Write))
            }
        }

        #[cfg(feature = "tokio")]
        impl tokio::io::AsyncRead for $ty {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut &*self).poll_read(cx, buf)
            }
        }

        #[cfg(feature = "tokio")]
        impl tokio::io::AsyncWrite for $ty {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut &*self).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut &*self).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                true
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut &*self).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut &*self).poll_shutdown(cx)
            }
        }

        #[cfg(feature = "futures-io")]
        impl futures_io::AsyncRead for &$ty {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut [u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                let len = buf.len();
                self.reg
                    .poll_read_stream(cx, len, |mut s| std::io::Read::read(&mut s, buf))
            }

            fn poll_read_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &mut [std::io::IoSliceMut<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                let len = bufs.iter().map(|b| b.len()).sum();
                self.reg
                    .poll_read_stream(cx, len, |mut s| std::io::Read::read_vectored(&mut s, bufs))
            }
        }

        #[cfg(feature = "futures-io")]
        impl futures_io::AsyncWrite for &$ty {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.reg.poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.reg.poll_write_vectored(cx, bufs)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }

            fn poll_close(
                self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(self.shutdown(std::net::Shutdown::Write))
            }
        }

        #[cfg(feature = "futures-io")]
        impl futures_io::AsyncRead for $ty {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut [u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut &*self).poll_read(cx, buf)
            }

            fn poll_read_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &mut [std::io::IoSliceMut<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut &*self).poll_read_vectored(cx, bufs)
            }
        }

        #[cfg(feature = "futures-io")]
        impl futures_io::AsyncWrite for $ty {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut &*self).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut &*self).poll_write_vectored(cx, bufs)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut &*self).poll_flush(cx)
            }

            fn poll_close(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut &*self).poll_close(cx)
            }
        }
    };
}
pub(crate) use impl_async_io;
