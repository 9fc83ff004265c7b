//! `greenhack::sync::oneshot`: one value across threads and worlds.

use std::sync::mpsc::{RecvError, RecvTimeoutError, TryRecvError};
use std::time::Duration;

use greenhack::sync::oneshot;

#[test]
fn from_a_thread_to_a_greenlet() {
    let (tx, rx) = oneshot::channel();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(5));
        tx.send(String::from("answer")).unwrap();
    });
    let got = greenhack::run(|| greenhack::spawn(move || rx.recv()).join().unwrap());
    assert_eq!(got.as_deref(), Ok("answer"));
    t.join().unwrap();
}

#[test]
fn from_a_greenlet_to_a_thread() {
    let (tx, rx) = oneshot::channel();
    let t = std::thread::spawn(move || rx.recv());
    greenhack::run(|| {
        let _detached = greenhack::spawn(move || {
            greenhack::sleep(Duration::from_millis(5));
            tx.send(7).unwrap();
        });
    });
    assert_eq!(t.join().unwrap(), Ok(7));
}

#[test]
fn awaited_by_a_tokio_task() {
    let (tx, rx) = oneshot::channel();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let task = rt.spawn(rx);
    std::thread::spawn(move || tx.send(5u8).unwrap());
    assert_eq!(rt.block_on(task).unwrap(), Ok(5));
}

#[test]
fn try_recv_timeout_and_disconnection() {
    let (tx, mut rx) = oneshot::channel::<u8>();
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(5)),
        Err(RecvTimeoutError::Timeout)
    );
    tx.send(1).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_millis(5)), Ok(1));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected), "taken");

    let (tx, rx) = oneshot::channel::<u8>();
    drop(tx);
    assert_eq!(rx.recv(), Err(RecvError));
}

#[test]
fn send_to_a_dropped_receiver_hands_the_value_back() {
    let (tx, rx) = oneshot::channel();
    assert!(!tx.is_closed());
    drop(rx);
    assert!(tx.is_closed());
    assert_eq!(tx.send("v"), Err("v"));
}
