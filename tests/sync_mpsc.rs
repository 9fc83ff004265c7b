//! `greenhack::sync::mpsc`: std's channel semantics, waits that suspend
//! greenlets, senders on other threads.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc::{RecvError, RecvTimeoutError, SendError, TryRecvError, TrySendError};
use std::sync::{Arc, atomic::AtomicUsize, atomic::Ordering};
use std::time::{Duration, Instant};

use greenhack::sync::mpsc;

#[test]
fn four_threads_feed_greenlets_every_message_once_in_sender_order() {
    const PER: u32 = 2_000;
    let (tx, rx) = mpsc::channel::<(u32, u32)>();
    let rx = Rc::new(rx);
    let got = Rc::new(RefCell::new(Vec::new()));
    greenhack::run(|| {
        // Four greenlets drain one receiver concurrently.
        for _ in 0..4 {
            let (rx, got) = (rx.clone(), got.clone());
            let _detached = greenhack::spawn(move || {
                for m in rx.iter() {
                    got.borrow_mut().push(m);
                    if m.1 % 64 == 0 {
                        greenhack::yield_now();
                    }
                }
            });
        }
        let feeders: Vec<_> = (0..4)
            .map(|id| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for seq in 0..PER {
                        tx.send((id, seq)).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        // Wait for the threads without blocking the loop.
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            feeders.into_iter().for_each(|t| t.join().unwrap());
            done_tx.send(()).unwrap();
        });
        done_rx.recv().unwrap();
    });
    let got = got.borrow();
    assert_eq!(got.len(), 4 * PER as usize, "every message received once");
    for id in 0..4 {
        let seqs: Vec<u32> = got.iter().filter(|m| m.0 == id).map(|m| m.1).collect();
        assert_eq!(seqs, (0..PER).collect::<Vec<_>>(), "sender {id}'s order");
    }
}

#[test]
fn recv_timeout_times_out_then_reports_disconnection() {
    let (tx, rx) = mpsc::channel::<u8>();
    greenhack::run(|| {
        let start = Instant::now();
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(20)),
            Err(RecvTimeoutError::Timeout)
        );
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(20), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        // A message that comes before the deadline is returned.
        let tx2 = tx.clone();
        let _detached = greenhack::spawn(move || {
            greenhack::sleep(Duration::from_millis(5));
            tx2.send(9).unwrap();
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(9));
        drop(tx);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Err(RecvTimeoutError::Disconnected)
        );
    });
}

#[test]
fn recv_timeout_on_a_plain_thread_and_under_tokio() {
    let (tx, rx) = mpsc::channel::<u8>();
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(5)),
        Err(RecvTimeoutError::Timeout)
    );
    // Inside an as_async on tokio: greenhack's timers are not there, the
    // timeout still fires.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let r = rt.block_on(greenhack::as_async(move || {
        let first = rx.recv_timeout(Duration::from_millis(10));
        drop(tx);
        (first, rx.recv_timeout(Duration::from_millis(10)))
    }));
    assert_eq!(
        r,
        (
            Err(RecvTimeoutError::Timeout),
            Err(RecvTimeoutError::Disconnected)
        )
    );
}

#[test]
fn try_recv_states() {
    let (tx, rx) = mpsc::channel();
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    tx.send(1).unwrap();
    tx.send(2).unwrap();
    drop(tx);
    // Buffered messages outlive the senders.
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    assert_eq!(rx.recv(), Err(RecvError));
}

#[test]
fn send_after_receiver_dropped_hands_the_message_back() {
    let (tx, rx) = mpsc::channel();
    drop(rx);
    assert_eq!(
        tx.send(String::from("x")),
        Err(SendError(String::from("x")))
    );
    let (stx, srx) = mpsc::sync_channel(1);
    drop(srx);
    assert_eq!(stx.try_send(1), Err(TrySendError::Disconnected(1)));
    assert_eq!(stx.send(2), Err(SendError(2)));
}

#[test]
fn bounded_channel_back_pressure() {
    let (tx, rx) = mpsc::sync_channel(2);
    let log = Rc::new(RefCell::new(Vec::new()));
    greenhack::run(|| {
        let l = log.clone();
        let producer = greenhack::spawn(move || {
            for i in 0..5 {
                tx.send(i).unwrap();
                l.borrow_mut().push(format!("sent {i}"));
            }
        });
        greenhack::yield_now();
        // The producer filled the two slots and waits on the third.
        assert_eq!(*log.borrow(), ["sent 0", "sent 1"]);
        assert_eq!(rx.recv(), Ok(0));
        greenhack::yield_now();
        assert_eq!(log.borrow().len(), 3, "one slot freed, one more sent");
        let rest: Vec<i32> = rx.iter().collect();
        assert_eq!(rest, [1, 2, 3, 4]);
        producer.join().unwrap();
    });
}

#[test]
fn blocked_sender_gets_its_message_back_when_the_receiver_goes() {
    let (tx, rx) = mpsc::sync_channel(1);
    greenhack::run(|| {
        tx.send(1).unwrap();
        let h = greenhack::spawn(move || tx.send(2));
        greenhack::yield_now(); // h blocks: the channel is full
        drop(rx);
        assert_eq!(h.join().unwrap(), Err(SendError(2)));
    });
}

#[test]
fn rendezvous_channel() {
    let (tx, rx) = mpsc::sync_channel(0);
    assert_eq!(
        tx.try_send("z"),
        Err(TrySendError::Full("z")),
        "nobody waits"
    );
    let order = Rc::new(RefCell::new(Vec::new()));
    greenhack::run(|| {
        let o = order.clone();
        let h = greenhack::spawn(move || {
            tx.send("a").unwrap();
            o.borrow_mut().push("sent");
        });
        greenhack::sleep(Duration::from_millis(5));
        assert!(order.borrow().is_empty(), "send waits for a receiver");
        assert_eq!(rx.recv(), Ok("a"));
        h.join().unwrap();
        assert_eq!(*order.borrow(), ["sent"]);
    });
}

#[test]
fn rendezvous_try_send_succeeds_only_for_a_waiting_receiver() {
    let (tx, rx) = mpsc::sync_channel(0);
    greenhack::run(|| {
        let h = greenhack::spawn(move || rx.recv());
        greenhack::yield_now(); // the receiver waits now
        assert_eq!(tx.try_send(5), Ok(()));
        assert_eq!(tx.try_send(6), Err(TrySendError::Full(6)), "it took one");
        assert_eq!(h.join().unwrap(), Ok(5));
    });
}

#[test]
fn cancelled_blocked_sender_drops_its_message() {
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let drops = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::sync_channel(0);
    greenhack::run(|| {
        let d = drops.clone();
        let h = greenhack::spawn(move || tx.send(Counted(d)).is_ok());
        greenhack::yield_now();
        h.cancel();
        assert!(h.join().unwrap_err().is_cancelled());
    });
    assert_eq!(drops.load(Ordering::SeqCst), 1, "dropped once, on unwind");
    assert_eq!(rx.try_recv().err(), Some(TryRecvError::Disconnected));
}

#[test]
fn bounded_senders_on_threads_wake_a_greenlet_and_are_woken_by_it() {
    let (tx, rx) = mpsc::sync_channel(1);
    let threads: Vec<_> = (0..3)
        .map(|id| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for seq in 0..300 {
                    tx.send((id, seq)).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let got = greenhack::run(|| {
        greenhack::spawn(move || rx.into_iter().collect::<Vec<_>>())
            .join()
            .unwrap()
    });
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(got.len(), 900);
    for id in 0..3 {
        let seqs: Vec<i32> = got.iter().filter(|m| m.0 == id).map(|m| m.1).collect();
        assert_eq!(seqs, (0..300).collect::<Vec<_>>());
    }
}

#[test]
fn inside_as_async_polled_by_tokio() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (tx, rx) = mpsc::sync_channel(0);
    let local = tokio::task::LocalSet::new();
    let got = local.block_on(&rt, async {
        let producer = tokio::task::spawn_local(greenhack::as_async(move || {
            for i in 0..10 {
                tx.send(i).unwrap();
            }
        }));
        let consumer =
            tokio::task::spawn_local(greenhack::as_async(move || rx.iter().sum::<i32>()));
        producer.await.unwrap();
        consumer.await.unwrap()
    });
    assert_eq!(got, 45);
}

#[test]
fn recv_timeout_parks_a_tokio_worker_outside_any_greenlet() {
    // exempt refuses here (with the `tokio` feature): the thread parks with
    // park_timeout, as std's recv_timeout would block it.
    let (tx, rx) = mpsc::channel::<u8>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let r = rt.block_on(async {
        let start = Instant::now();
        let r = rx.recv_timeout(Duration::from_millis(10));
        (r, start.elapsed())
    });
    assert_eq!(r.0, Err(RecvTimeoutError::Timeout));
    assert!(r.1 >= Duration::from_millis(10), "{:?}", r.1);
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(5));
        tx.send(3).unwrap();
    });
    let got = rt.block_on(async { rx.recv_timeout(Duration::from_secs(5)) });
    assert_eq!(got, Ok(3));
    t.join().unwrap();
}

#[test]
fn thread_safety_matches_std() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<mpsc::Sender<String>>();
    send_sync::<mpsc::SyncSender<String>>();
    send::<mpsc::Receiver<String>>();
    send_sync::<greenhack::sync::oneshot::Sender<String>>();
    send_sync::<greenhack::sync::oneshot::Receiver<String>>();
    send_sync::<greenhack::sync::Mutex<String>>();
    send_sync::<greenhack::sync::RwLock<String>>();
    send_sync::<greenhack::sync::Condvar>();
    send_sync::<greenhack::sync::Semaphore>();
}
