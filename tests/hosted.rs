//! One thread, both worlds: greenhack's loop hosted inside tokio
//! (`as_async` polled by tokio), and tokio underneath greenhack's loop
//! (`greenhack::tokio::run`).

use std::cell::Cell;
use std::io::{Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use greenhack::net::{TcpListener, TcpStream, UnixStream};

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An echo exchange over greenhack sockets, both ends greenlets.
fn echo_over_greenhack_sockets() -> Vec<u8> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = greenhack::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0; 5];
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(&buf).unwrap();
    });
    let mut client = TcpStream::connect(addr).unwrap();
    client.write_all(b"hello").unwrap();
    let mut back = vec![0; 5];
    client.read_exact(&mut back).unwrap();
    server.join().unwrap();
    back
}

#[test]
fn greenhack_sockets_sleep_spawn_and_join_inside_as_async_on_current_thread() {
    let rt = current_thread();
    let back = rt.block_on(greenhack::as_async(|| {
        let start = Instant::now();
        greenhack::sleep(Duration::from_millis(20));
        assert!(start.elapsed() >= Duration::from_millis(20));
        echo_over_greenhack_sockets()
    }));
    assert_eq!(back, b"hello");
}

#[test]
fn greenhack_waits_inside_as_async_on_a_local_set_run_concurrently() {
    let rt = current_thread();
    let local = tokio::task::LocalSet::new();
    let start = Instant::now();
    local.block_on(&rt, async {
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                tokio::task::spawn_local(greenhack::as_async(move || {
                    greenhack::sleep(Duration::from_millis(50));
                    let (mut a, mut b) = UnixStream::pair().unwrap();
                    let reader = greenhack::spawn(move || {
                        let mut buf = [0; 1];
                        a.read_exact(&mut buf).unwrap();
                        buf[0]
                    });
                    greenhack::sleep(Duration::from_millis(5));
                    b.write_all(&[i]).unwrap();
                    reader.join().unwrap()
                }))
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), i as u8);
        }
    });
    // Twenty 55 ms waits, concurrently: far less than their sum (1.1 s).
    assert!(
        start.elapsed() < Duration::from_millis(800),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_join_handle_awaited_by_tokio_completes() {
    let rt = current_thread();
    let v = rt.block_on(async {
        let h = greenhack::spawn(|| {
            greenhack::sleep(Duration::from_millis(10));
            7
        });
        h.await.unwrap()
    });
    assert_eq!(v, 7);
}

#[test]
fn tokio_and_greenhack_on_one_thread_with_tokio_run() {
    let thread = std::thread::current().id();
    let out = greenhack::tokio::run(|| {
        // A tokio listener and a tokio client, waited on from greenlets.
        let listener = greenhack::exempt(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = greenhack::spawn(move || {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = greenhack::exempt(listener.accept()).unwrap();
            let mut buf = [0; 4];
            greenhack::exempt(s.read_exact(&mut buf)).unwrap();
            greenhack::exempt(s.write_all(&buf)).unwrap();
            assert_eq!(std::thread::current().id(), thread);
        });
        let client = greenhack::spawn(move || {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut c = greenhack::exempt(tokio::net::TcpStream::connect(addr)).unwrap();
            greenhack::exempt(c.write_all(b"ping")).unwrap();
            let mut buf = [0; 4];
            greenhack::exempt(c.read_exact(&mut buf)).unwrap();
            buf
        });
        // A tokio channel between greenlets, and tokio timers.
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let producer = greenhack::spawn(move || {
            for i in 0..3 {
                greenhack::exempt(tokio::time::sleep(Duration::from_millis(5)));
                greenhack::exempt(tx.send(i)).unwrap();
            }
        });
        let mut got = Vec::new();
        while let Some(v) = greenhack::exempt(rx.recv()) {
            got.push(v);
        }
        producer.join().unwrap();
        server.join().unwrap();
        // greenhack's own sockets in the same program.
        let echoed = echo_over_greenhack_sockets();
        assert_eq!(std::thread::current().id(), thread);
        (client.join().unwrap(), got, echoed)
    });
    assert_eq!(out.0, *b"ping");
    assert_eq!(out.1, [0, 1, 2]);
    assert_eq!(out.2, b"hello");
}

#[test]
fn tokio_run_waits_for_spawned_greenlets() {
    let done = Rc::new(Cell::new(0));
    let d = done.clone();
    greenhack::tokio::run(move || {
        for _ in 0..10 {
            let d = d.clone();
            drop(greenhack::spawn(move || {
                greenhack::exempt(tokio::time::sleep(Duration::from_millis(10)));
                d.set(d.get() + 1);
            }));
        }
    });
    assert_eq!(done.get(), 10);
}
