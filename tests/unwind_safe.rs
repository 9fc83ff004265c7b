//! Unwind safety as with std and tokio: `catch_unwind(move || handle.join())`
//! and `catch_unwind(|| stream.read(..))` compile without
//! `AssertUnwindSafe`, as they do with `std::thread::JoinHandle` (through
//! tokio's `JoinHandle`, which is unwind safe) and `std::net::TcpStream`,
//! and the value is still sound to use after the panic was caught.
//!
//! The sync primitives' assertions are in `audit_sync::unwind_safe_as_std`.

use std::io::{Read, Write};
use std::panic::{self, RefUnwindSafe, UnwindSafe};
use std::time::Duration;

use greenhack::net::{TcpListener, TcpStream};

/// Compiles only if `T` may cross a `catch_unwind` boundary by value and by
/// reference.
fn assert_unwind_safe<T: UnwindSafe + RefUnwindSafe + ?Sized>() {}

#[test]
fn public_handles_and_sockets_are_unwind_safe() {
    // Handles, as tokio's `JoinHandle` and `AbortHandle`.
    assert_unwind_safe::<greenhack::JoinHandle<u32>>();
    assert_unwind_safe::<greenhack::JoinHandle<std::cell::RefCell<u32>>>();
    assert_unwind_safe::<greenhack::JoinError>();
    assert_unwind_safe::<greenhack::runtime::Handle>();
    assert_unwind_safe::<greenhack::runtime::RemoteJoinHandle<u32>>();
    assert_unwind_safe::<greenhack::Runtime>();
    #[cfg(feature = "tokio")]
    {
        assert_unwind_safe::<greenhack::tokio::Task<u32>>();
        assert_unwind_safe::<greenhack::tokio::AbortHandle>();
        assert_unwind_safe::<greenhack::tokio::Pool>();
    }
    // Sockets, as std's.
    assert_unwind_safe::<greenhack::net::TcpStream>();
    assert_unwind_safe::<greenhack::net::TcpListener>();
    assert_unwind_safe::<greenhack::net::Incoming<'static>>();
    assert_unwind_safe::<greenhack::net::TcpSocket>();
    assert_unwind_safe::<greenhack::net::UdpSocket>();
    assert_unwind_safe::<greenhack::net::UnixStream>();
    assert_unwind_safe::<greenhack::net::UnixListener>();
    assert_unwind_safe::<greenhack::net::UnixIncoming<'static>>();
    // Builders, guards and plain values.
    assert_unwind_safe::<greenhack::Builder>();
    assert_unwind_safe::<greenhack::runtime::Builder>();
    assert_unwind_safe::<greenhack::debug::StallDetector>();
    assert_unwind_safe::<greenhack::debug::Dump>();
    assert_unwind_safe::<greenhack::Elapsed>();
    assert_unwind_safe::<greenhack::stack::StackStats>();
}

/// std's idiom for a joined thread's panic, on a greenlet: the joiner
/// resumes it, and a `catch_unwind` around the join catches it with the
/// greenlet's own payload.
#[test]
fn a_join_inside_catch_unwind_carries_the_greenlets_panic() {
    greenhack::run(|| {
        let h = greenhack::spawn(|| -> u32 { panic!("boom") });
        let caught = panic::catch_unwind(move || {
            h.join()
                .unwrap_or_else(|e| panic::resume_unwind(e.into_panic()))
        });
        let payload = caught.expect_err("the greenlet's panic, resumed by the joiner");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom"));

        let h = greenhack::spawn(|| 7u32);
        assert_eq!(panic::catch_unwind(move || h.join()).unwrap().unwrap(), 7);
    });
}

/// A handle borrowed by a closure that panics is still sound afterwards: a
/// cancellation it asked for before the panic is carried out.
#[test]
fn a_handle_borrowed_across_a_caught_panic_still_joins() {
    greenhack::run(|| {
        let h = greenhack::spawn(|| greenhack::sleep(Duration::from_secs(30)));
        let caught = panic::catch_unwind(|| {
            h.cancel();
            panic!("after cancel")
        });
        assert!(caught.is_err());
        assert!(h.join().unwrap_err().is_cancelled());
    });
}

/// A read that waits, inside `catch_unwind` in a greenlet, with the stream
/// borrowed: the closure panics after it read, and the stream, used again,
/// goes on with the next byte.
#[test]
fn a_read_inside_catch_unwind_leaves_the_stream_usable() {
    greenhack::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = greenhack::spawn(move || {
            let stream = TcpStream::connect(addr).unwrap();
            let caught = panic::catch_unwind(|| {
                let mut head = [0u8; 5];
                // Waits: the peer writes only once it has accepted.
                (&stream).read_exact(&mut head).unwrap();
                panic!("bad header {:?}", String::from_utf8_lossy(&head))
            });
            let payload = caught.expect_err("the closure panics after its read");
            let mut rest = String::new();
            (&stream).read_to_string(&mut rest).unwrap();
            (*payload.downcast::<String>().unwrap(), rest)
        });
        let (mut peer, _) = listener.accept().unwrap();
        peer.write_all(b"hello world").unwrap();
        drop(peer);
        let (message, rest) = reader.join().unwrap();
        assert_eq!(message, "bad header \"hello\"");
        assert_eq!(rest, " world");
    });
}
