//! The held-out tester's view of issue 13: programs written against the
//! documented API of `greenhack::sync`, `unblock`, `timeout`, `with_async`,
//! `exempt_iter`, `greenlet_local!` and the stall detector, the way a user
//! who knows `std::sync`, `std::sync::mpsc` and tokio would write them.
//! Each test names the std (or tokio) behaviour it checks. Anything that
//! could hang runs under a watchdog ([`within`]), so the suite never does.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{RecvError, RecvTimeoutError, SendError, TryRecvError, TrySendError};
use std::thread;
use std::time::{Duration, Instant};

mod util;

use greenhack::sync::{
    Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Semaphore,
    SemaphorePermit, TryAcquireError, WaitTimeoutResult, mpsc, oneshot,
};

/// Runs `f` on a thread of its own and fails the test if it has not
/// finished within `secs` seconds (a hang becomes a failure, not a stuck
/// suite). Panics inside `f` are re-raised here with their payload.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let r = panic::catch_unwind(AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(v)) => v,
        Ok(Err(payload)) => panic::resume_unwind(payload),
        Err(_) => panic!("hung: did not finish within {secs} s"),
    }
}

/// Counts drops.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

const MS: Duration = Duration::from_millis(1);

// ----- static checks: the trait impls std has -----------------------------------

fn is_send<T: Send>() {}
fn is_sync<T: Sync>() {}
fn is_clone<T: Clone>() {}
fn is_debug<T: std::fmt::Debug>() {}
fn is_error<T: std::error::Error + Send + Sync + 'static>() {}

/// std: `Mutex`, `RwLock`, `Condvar` are `Send + Sync` for `T: Send`
/// (`RwLock` Sync needs `T: Send + Sync`); `mpsc::Sender`/`SyncSender` are
/// `Send + Sync + Clone`, `Receiver` is `Send`; everything is `Debug`; the
/// error types are `std::error::Error`.
#[test]
fn std_trait_impls_and_auto_traits() {
    is_send::<Mutex<Vec<u8>>>();
    is_sync::<Mutex<Vec<u8>>>();
    is_sync::<Mutex<Cell<u8>>>(); // std: Mutex<T: Send> is Sync
    is_send::<RwLock<Vec<u8>>>();
    is_sync::<RwLock<Vec<u8>>>();
    is_send::<Condvar>();
    is_sync::<Condvar>();
    is_send::<Semaphore>();
    is_sync::<Semaphore>();
    is_send::<mpsc::Sender<Vec<u8>>>();
    is_sync::<mpsc::Sender<Vec<u8>>>();
    is_clone::<mpsc::Sender<Vec<u8>>>();
    is_send::<mpsc::SyncSender<Vec<u8>>>();
    is_sync::<mpsc::SyncSender<Vec<u8>>>();
    is_clone::<mpsc::SyncSender<Vec<u8>>>();
    is_send::<mpsc::Receiver<Vec<u8>>>();
    is_send::<oneshot::Sender<Vec<u8>>>();
    is_send::<oneshot::Receiver<Vec<u8>>>();
    is_sync::<MutexGuard<'static, u8>>();
    is_sync::<RwLockReadGuard<'static, u8>>();
    is_sync::<RwLockWriteGuard<'static, u8>>();

    is_debug::<Mutex<u8>>();
    is_debug::<MutexGuard<'static, u8>>();
    is_debug::<RwLock<u8>>();
    is_debug::<RwLockReadGuard<'static, u8>>();
    is_debug::<RwLockWriteGuard<'static, u8>>();
    is_debug::<Condvar>();
    is_debug::<WaitTimeoutResult>();
    is_debug::<Semaphore>();
    is_debug::<SemaphorePermit<'static>>();
    is_debug::<TryAcquireError>();
    is_debug::<mpsc::Sender<u8>>();
    is_debug::<mpsc::SyncSender<u8>>();
    is_debug::<mpsc::Receiver<u8>>();
    is_debug::<mpsc::Iter<'static, u8>>();
    is_debug::<mpsc::TryIter<'static, u8>>();
    is_debug::<mpsc::IntoIter<u8>>();
    is_debug::<oneshot::Sender<u8>>();
    is_debug::<oneshot::Receiver<u8>>();
    is_debug::<greenhack::Elapsed>();
    is_debug::<greenhack::JoinError>();

    is_error::<greenhack::Elapsed>();
    is_error::<TryAcquireError>();
    is_error::<mpsc::RecvError>();
    is_error::<mpsc::TryRecvError>();
    is_error::<mpsc::RecvTimeoutError>();
    is_error::<mpsc::SendError<u8>>();
    is_error::<mpsc::TrySendError<u8>>();
    is_error::<oneshot::RecvError>();

    // Display like std's / tokio's: a sentence, not a Debug dump.
    assert!(!greenhack::Elapsed::clone(&elapsed()).to_string().is_empty());
    assert!(
        !TryAcquireError::clone(&Semaphore::new(0).try_acquire().unwrap_err())
            .to_string()
            .is_empty()
    );
    let e: std::io::Error = elapsed().into();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
}

fn elapsed() -> greenhack::Elapsed {
    greenhack::timeout(MS, || greenhack::sleep(Duration::from_secs(5))).unwrap_err()
}

// ----- mpsc: std's disconnection rules --------------------------------------------

/// std: "recv will always block the current thread if there is no data
/// available and it's possible for more data to be sent"; once every sender
/// is gone, buffered messages are still received, then `Err(RecvError)`.
#[test]
fn mpsc_recv_drains_the_buffer_before_reporting_disconnection() {
    within(10, || {
        // On a plain thread.
        let (tx, rx) = mpsc::channel();
        for i in 0..3 {
            tx.send(i).unwrap();
        }
        drop(tx);
        assert_eq!(rx.recv(), Ok(0));
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.recv_timeout(MS), Ok(2));
        assert_eq!(rx.recv(), Err(RecvError));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
        assert_eq!(rx.recv_timeout(MS), Err(RecvTimeoutError::Disconnected));

        // Inside greenlets, bounded, with the last sender dropped by a
        // greenlet while the receiver waits.
        greenhack::run(|| {
            let (tx, rx) = mpsc::sync_channel(2);
            let tx2 = tx.clone();
            let _detached = greenhack::spawn(move || {
                tx.send(1).unwrap();
                greenhack::sleep(5 * MS);
                tx2.send(2).unwrap();
                drop(tx2);
                drop(tx);
            });
            assert_eq!(rx.recv(), Ok(1));
            assert_eq!(rx.recv(), Ok(2));
            assert_eq!(rx.recv(), Err(RecvError));
        });
    });
}

/// std: `send` on a channel whose receiver is gone returns
/// `Err(SendError(t))`, giving the value back; same for `SyncSender::send`
/// and `try_send` (`TrySendError::Disconnected(t)`).
#[test]
fn mpsc_send_after_receiver_dropped_gives_the_value_back() {
    let (tx, rx) = mpsc::channel();
    drop(rx);
    assert_eq!(
        tx.send(String::from("a")),
        Err(SendError(String::from("a")))
    );
    let (stx, srx) = mpsc::sync_channel(1);
    drop(srx);
    assert_eq!(stx.send(7), Err(SendError(7)));
    assert_eq!(stx.try_send(8), Err(TrySendError::Disconnected(8)));
}

/// std: a `SyncSender::send` blocked on a full channel returns
/// `Err(SendError(t))` with its own value when the receiver is dropped
/// meanwhile; the buffered messages are dropped with the receiver.
#[test]
fn mpsc_blocked_send_gets_its_value_back_when_the_receiver_goes() {
    within(10, || {
        let drops = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::sync_channel(1);
        tx.send(Counted(drops.clone())).unwrap(); // fills the slot
        let d = drops.clone();
        let sender = thread::spawn(move || match tx.send(Counted(d)) {
            Err(SendError(c)) => {
                drop(c);
                true
            }
            Ok(()) => false,
        });
        thread::sleep(30 * MS); // the sender blocks
        drop(rx);
        assert!(sender.join().unwrap(), "blocked send should fail");
        assert_eq!(drops.load(Ordering::SeqCst), 2);

        // The same between two greenlets of one loop.
        greenhack::run(|| {
            let (tx, rx) = mpsc::sync_channel::<u32>(0);
            let h = greenhack::spawn(move || tx.send(5));
            greenhack::sleep(5 * MS);
            drop(rx);
            assert_eq!(h.join().unwrap(), Err(SendError(5)));
        });
    });
}

/// std (list flavour): messages still buffered are dropped when the receiver
/// is dropped, even while senders live.
#[test]
fn mpsc_receiver_drop_drops_buffered_messages() {
    let drops = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    for _ in 0..3 {
        tx.send(Counted(drops.clone())).unwrap();
    }
    drop(rx);
    assert_eq!(drops.load(Ordering::SeqCst), 3);
    drop(tx);
}

/// std: `sync_channel(0)` is a rendezvous: `send` does not return until a
/// receiver took the message; `try_send` fails with `Full` when no receiver
/// waits.
#[test]
fn mpsc_sync_channel_zero_is_a_rendezvous() {
    within(10, || {
        let (tx, rx) = mpsc::sync_channel(0);
        assert_eq!(tx.try_send(1), Err(TrySendError::Full(1)));
        let sent = Arc::new(AtomicBool::new(false));
        let s = sent.clone();
        let t = thread::spawn(move || {
            tx.send(2).unwrap();
            s.store(true, Ordering::SeqCst);
        });
        thread::sleep(40 * MS);
        assert!(
            !sent.load(Ordering::SeqCst),
            "send returned with no receiver"
        );
        assert_eq!(rx.recv(), Ok(2));
        t.join().unwrap();
        assert!(sent.load(Ordering::SeqCst));

        // Between greenlets: the sender resumes only after the receive.
        let log = Rc::new(RefCell::new(Vec::new()));
        let l = log.clone();
        greenhack::run(move || {
            let (tx, rx) = mpsc::sync_channel(0);
            let l2 = l.clone();
            let _detached = greenhack::spawn(move || {
                l2.borrow_mut().push("send");
                tx.send(1).unwrap();
                l2.borrow_mut().push("sent");
            });
            greenhack::sleep(5 * MS);
            l.borrow_mut().push("recv");
            assert_eq!(rx.recv(), Ok(1));
        });
        assert_eq!(*log.borrow(), ["send", "recv", "sent"]);
    });
}

/// std: `try_recv` says `Empty` while senders live, `Disconnected` once none
/// is left and nothing is buffered.
#[test]
fn mpsc_try_recv_empty_vs_disconnected() {
    let (tx, rx) = mpsc::channel::<u8>();
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    let tx2 = tx.clone();
    drop(tx);
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty)); // a clone lives
    tx2.send(1).unwrap();
    drop(tx2);
    assert_eq!(rx.try_recv(), Ok(1));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
}

/// std: `recv_timeout` returns `Timeout` after about the timeout when
/// nothing comes, the message when one comes in time (from another thread),
/// and `Disconnected` when the last sender goes while it waits.
#[test]
fn mpsc_recv_timeout_timeout_vs_message_vs_disconnected() {
    within(10, || {
        let (tx, rx) = mpsc::channel::<u8>();
        let start = Instant::now();
        assert_eq!(rx.recv_timeout(20 * MS), Err(RecvTimeoutError::Timeout));
        assert!(start.elapsed() >= 20 * MS);

        let t = thread::spawn(move || {
            thread::sleep(10 * MS);
            tx.send(9).unwrap();
            thread::sleep(10 * MS);
            drop(tx);
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(9));
        let start = Instant::now();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Err(RecvTimeoutError::Disconnected)
        );
        assert!(start.elapsed() < Duration::from_secs(4));
        t.join().unwrap();

        // Inside a greenlet; a huge timeout is "no timeout", as std's.
        greenhack::run(|| {
            let (tx, rx) = mpsc::channel::<u8>();
            let h = greenhack::spawn(move || {
                let a = rx.recv_timeout(5 * MS);
                let b = rx.recv_timeout(Duration::MAX);
                (a, b)
            });
            greenhack::sleep(20 * MS);
            tx.send(3).unwrap();
            assert_eq!(h.join().unwrap(), (Err(RecvTimeoutError::Timeout), Ok(3)));
        });
    });
}

/// std: `iter` waits and ends when every sender is gone; `try_iter` yields
/// only what is there now, never waiting; `for x in rx` (into_iter) owns it.
#[test]
fn mpsc_iter_try_iter_into_iter() {
    within(10, || {
        let (tx, rx) = mpsc::channel();
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(rx.try_iter().next(), None); // empty, sender alive: no wait
        let t = thread::spawn(move || {
            for i in 3..6 {
                thread::sleep(2 * MS);
                tx.send(i).unwrap();
            }
        });
        assert_eq!(rx.iter().collect::<Vec<_>>(), [3, 4, 5]);
        t.join().unwrap();

        let (tx, rx) = mpsc::sync_channel(0);
        let t = thread::spawn(move || (0..4).for_each(|i| tx.send(i).unwrap()));
        let mut got = Vec::new();
        for i in rx {
            got.push(i);
        }
        assert_eq!(got, [0, 1, 2, 3]);
        t.join().unwrap();
    });
}

/// The case: 4 OS threads feed greenlets of one loop; every message
/// arrives once, in per-sender order.
#[test]
fn mpsc_many_threads_to_greenlets_in_per_sender_order() {
    within(30, || {
        let (tx, rx) = mpsc::sync_channel::<(usize, usize)>(8);
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let tx = tx.clone();
                thread::spawn(move || (0..500).for_each(|i| tx.send((p, i)).unwrap()))
            })
            .collect();
        drop(tx);
        let rx = Rc::new(rx);
        let seen = Rc::new(RefCell::new(vec![Vec::new(); 4]));
        greenhack::run(|| {
            for _ in 0..3 {
                let (rx, seen) = (rx.clone(), seen.clone());
                let _detached = greenhack::spawn(move || {
                    while let Ok((p, i)) = rx.recv() {
                        seen.borrow_mut()[p].push(i);
                        greenhack::yield_now();
                    }
                });
            }
        });
        producers.into_iter().for_each(|t| t.join().unwrap());
        for per in seen.borrow().iter() {
            assert_eq!(*per, (0..500).collect::<Vec<_>>());
        }
    });
}

/// `Sender` is `Send`: greenlets on two loops on two threads talk through
/// channels both ways (ping-pong), each loop still running its other
/// greenlets.
#[test]
fn mpsc_between_two_loops_on_two_threads() {
    within(20, || {
        let (ping_tx, ping_rx) = mpsc::channel::<u32>();
        let (pong_tx, pong_rx) = mpsc::sync_channel::<u32>(0);
        let other = thread::spawn(move || {
            greenhack::run(move || {
                let ticks = Rc::new(Cell::new(0));
                let t = ticks.clone();
                let ticker = greenhack::spawn(move || {
                    for _ in 0..5 {
                        greenhack::sleep(MS);
                        t.set(t.get() + 1);
                    }
                });
                greenhack::spawn(move || {
                    for v in ping_rx {
                        pong_tx.send(v + 1).unwrap();
                    }
                })
                .join()
                .unwrap();
                ticker.join().unwrap();
                ticks.get()
            })
        });
        let sum = greenhack::run(move || {
            greenhack::spawn(move || {
                let mut sum = 0;
                for i in 0..200 {
                    ping_tx.send(i).unwrap();
                    sum += pong_rx.recv().unwrap();
                }
                sum
            })
            .join()
            .unwrap()
        });
        assert_eq!(sum, (1..=200).sum::<u32>());
        assert_eq!(other.join().unwrap(), 5);
    });
}

// ----- oneshot ---------------------------------------------------------------------

/// tokio/std: a sender dropped unsent makes the receiver fail
/// (`RecvError`), also while it waits; a receiver dropped first makes
/// `send` hand the value back; `try_recv` Empty then the value.
#[test]
fn oneshot_sender_dropped_receiver_dropped_try_recv() {
    within(10, || {
        let (tx, rx) = oneshot::channel::<u8>();
        drop(tx);
        assert_eq!(rx.recv(), Err(oneshot::RecvError));

        let (tx, rx) = oneshot::channel::<u8>();
        let t = thread::spawn(move || {
            thread::sleep(10 * MS);
            drop(tx);
        });
        assert_eq!(rx.recv(), Err(oneshot::RecvError));
        t.join().unwrap();

        let (tx, rx) = oneshot::channel::<String>();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.send("back".into()), Err(String::from("back")));

        let (tx, mut rx) = oneshot::channel::<u8>();
        assert_eq!(rx.try_recv(), Err(oneshot::TryRecvError::Empty));
        assert_eq!(
            rx.recv_timeout(5 * MS),
            Err(oneshot::RecvTimeoutError::Timeout)
        );
        tx.send(4).unwrap();
        assert_eq!(rx.try_recv(), Ok(4));
        assert_eq!(rx.try_recv(), Err(oneshot::TryRecvError::Disconnected));

        // A greenlet waits for a plain thread's answer.
        greenhack::run(|| {
            let (tx, rx) = oneshot::channel();
            let t = thread::spawn(move || {
                thread::sleep(5 * MS);
                tx.send(11).unwrap();
            });
            let h = greenhack::spawn(move || rx.recv());
            assert_eq!(h.join().unwrap(), Ok(11));
            t.join().unwrap();
        });
    });
}

// ----- Mutex -------------------------------------------------------------------

/// std: a guard dropped by a panic poisons the mutex; `lock` then returns
/// `Err(PoisonError)` holding the guard; `into_inner`/`get_mut` report it;
/// `clear_poison` clears it. A greenlet's panic is its thread's panic here.
#[test]
fn mutex_poisoning_as_std() {
    within(10, || {
        let m = Rc::new(Mutex::new(1));
        greenhack::run(|| {
            let m2 = m.clone();
            let h = greenhack::spawn(move || {
                let mut g = m2.lock().unwrap();
                *g = 2;
                greenhack::sleep(MS);
                panic!("while holding");
            });
            let err = h.join().unwrap_err();
            assert!(err.is_panic());
        });
        assert!(m.is_poisoned());
        let g = m.lock().unwrap_err().into_inner();
        assert_eq!(*g, 2);
        drop(g);
        assert!(matches!(
            m.try_lock(),
            Err(std::sync::TryLockError::Poisoned(_))
        ));
        m.clear_poison();
        assert!(!m.is_poisoned());
        assert_eq!(*m.lock().unwrap(), 2);

        let mut m = Mutex::new(vec![1]);
        m.get_mut().unwrap().push(2);
        assert_eq!(m.into_inner().unwrap(), [1, 2]);

        // A panic caught while the lock was taken does not poison (the
        // guard was made before the panic started).
        let m = Mutex::new(0);
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            let _g = m.lock().unwrap();
            panic!("poison me");
        }));
        assert!(r.is_err());
        assert!(m.into_inner().is_err());
    });
}

/// std: `try_lock` fails with `WouldBlock` while another holds the lock,
/// also while the holder waits; Debug shows `<locked>` then, the data else.
#[test]
fn mutex_try_lock_and_debug() {
    within(10, || {
        let m = Rc::new(Mutex::new(5));
        assert_eq!(format!("{m:?}"), "Mutex { data: 5, poisoned: false, .. }");
        greenhack::run(|| {
            let m2 = m.clone();
            let _detached = greenhack::spawn(move || {
                let _g = m2.lock().unwrap();
                greenhack::sleep(10 * MS);
            });
            greenhack::yield_now();
            assert!(matches!(
                m.try_lock(),
                Err(std::sync::TryLockError::WouldBlock)
            ));
            assert!(format!("{m:?}").contains("<locked>"));
            let g = m.lock().unwrap(); // waits for the sleeping holder
            assert_eq!(*g, 5);
        });
    });
}

/// std: a `Mutex` shared by plain OS threads with no loop excludes them
/// (each `lock` blocks like std's); the count is exact.
#[test]
fn mutex_between_plain_threads_with_no_loop() {
    within(30, || {
        let m = Arc::new(Mutex::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                thread::spawn(move || {
                    for _ in 0..2000 {
                        let mut g = m.lock().unwrap();
                        let v = *g;
                        std::hint::spin_loop();
                        *g = v + 1;
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(*m.lock().unwrap(), 8000);
    });
}

/// Greenlets on two loops on two threads contend on one `Arc<Mutex>`,
/// holding it across waits: the count is exact.
#[test]
fn mutex_between_greenlets_of_two_loops() {
    within(30, || {
        let m = Arc::new(Mutex::new(0u64));
        let loops: Vec<_> = (0..2)
            .map(|_| {
                let m = m.clone();
                thread::spawn(move || {
                    greenhack::run(move || {
                        for _ in 0..20 {
                            let m = m.clone();
                            let _detached = greenhack::spawn(move || {
                                for _ in 0..20 {
                                    let mut g = m.lock().unwrap();
                                    let v = *g;
                                    greenhack::yield_now();
                                    *g = v + 1;
                                }
                            });
                        }
                    })
                })
            })
            .collect();
        loops.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(*m.lock().unwrap(), 800);
    });
}

/// `timeout` around code holding a `sync::Mutex` guard across a wait: the
/// guard is released by the unwind (others can lock at once), its
/// destructors ran, and the timeout is not a panic: the mutex is not
/// poisoned (tokio's cancellation does not poison either; see `Mutex`'s
/// docs).
#[test]
fn timeout_releases_a_held_mutex_guard_without_poisoning() {
    within(10, || {
        let m = Rc::new(Mutex::new(0));
        let drops = Arc::new(AtomicUsize::new(0));
        greenhack::run(|| {
            let (m2, d) = (m.clone(), drops.clone());
            let waiter = greenhack::spawn(move || {
                greenhack::sleep(2 * MS);
                *m2.lock().unwrap() += 1; // queued behind the holder
            });
            let r = greenhack::timeout(10 * MS, || {
                let _c = Counted(d);
                let mut g = m.lock().unwrap();
                *g += 10;
                greenhack::sleep(Duration::from_secs(10));
            });
            assert_eq!(r, Err(greenhack::Elapsed::clone(&elapsed())));
            waiter.join().unwrap();
        });
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert!(m.try_lock().is_ok(), "mutex left locked or poisoned");
        assert_eq!(*m.lock().unwrap(), 11);
    });
}

/// A cancelled greenlet holding a guard releases it, without poisoning.
#[test]
fn cancel_releases_a_held_mutex_guard_without_poisoning() {
    within(10, || {
        let m = Rc::new(Mutex::new(0));
        greenhack::run(|| {
            let m2 = m.clone();
            let h = greenhack::spawn(move || {
                let _g = m2.lock().unwrap();
                greenhack::sleep(Duration::from_secs(10));
            });
            // The greenlet runs to its wait in the round this yield gives
            // (a 2 ms sleep could expire before its first poll under
            // qemu-user, and the greenlet was cancelled before it started).
            greenhack::yield_now();
            h.cancel();
            assert!(h.join().unwrap_err().is_cancelled());
        });
        assert!(m.try_lock().is_ok(), "mutex left locked or poisoned");
    });
}

// ----- Condvar ---------------------------------------------------------------------

/// std: `wait_while` returns once the condition is false, with the lock
/// held; `notify_all` wakes every waiter; `notify_one` one.
#[test]
fn condvar_wait_while_notify_one_notify_all() {
    within(10, || {
        let pair = Rc::new((Mutex::new(0u32), Condvar::new()));
        let woke = Rc::new(Cell::new(0));
        greenhack::run(|| {
            for _ in 0..3 {
                let (p, w) = (pair.clone(), woke.clone());
                let _detached = greenhack::spawn(move || {
                    let g = p.1.wait_while(p.0.lock().unwrap(), |n| *n == 0).unwrap();
                    assert!(*g > 0);
                    w.set(w.get() + 1);
                });
            }
            greenhack::sleep(5 * MS);
            assert_eq!(woke.get(), 0);
            *pair.0.lock().unwrap() = 1;
            pair.1.notify_one();
            greenhack::sleep(5 * MS);
            assert_eq!(woke.get(), 1);
            pair.1.notify_all();
        });
        assert_eq!(woke.get(), 3);
    });
}

/// std: `wait_timeout` returns `timed_out() == true` after the time with no
/// notification; `wait_timeout_while` returns the guard and `timed_out()`
/// true if the condition still holds, false if it became false in time.
/// Between plain threads too (no loop anywhere).
#[test]
fn condvar_wait_timeout_and_wait_timeout_while() {
    within(10, || {
        let m = Mutex::new(false);
        let cv = Condvar::new();
        let start = Instant::now();
        let (g, r) = cv.wait_timeout(m.lock().unwrap(), 15 * MS).unwrap();
        assert!(r.timed_out());
        assert!(start.elapsed() >= 15 * MS);
        let (g, r) = cv.wait_timeout_while(g, 15 * MS, |b| !*b).unwrap();
        assert!(r.timed_out());
        assert!(!*g);
        drop(g);

        let pair = Arc::new((Mutex::new(false), Condvar::new()));
        let p = pair.clone();
        let t = thread::spawn(move || {
            thread::sleep(10 * MS);
            *p.0.lock().unwrap() = true;
            p.1.notify_one();
        });
        let (g, r) = pair
            .1
            .wait_timeout_while(pair.0.lock().unwrap(), Duration::from_secs(5), |b| !*b)
            .unwrap();
        assert!(!r.timed_out());
        assert!(*g);
        drop(g);
        t.join().unwrap();
    });
}

// ----- RwLock ----------------------------------------------------------------------

/// std: many readers at once, a writer alone; `try_read` fails while a
/// writer holds it, `try_write` while a reader does; documented fairness: a
/// waiting writer holds back readers that come after it.
#[test]
fn rwlock_readers_writers_and_documented_fairness() {
    within(10, || {
        let l = Rc::new(RwLock::new(0));
        let log = Rc::new(RefCell::new(Vec::new()));
        greenhack::run(|| {
            let r1 = l.read().unwrap();
            let r2 = l.try_read().unwrap(); // readers share
            assert!(matches!(
                l.try_write(),
                Err(std::sync::TryLockError::WouldBlock)
            ));
            let (l2, log2) = (l.clone(), log.clone());
            let writer = greenhack::spawn(move || {
                *l2.write().unwrap() += 1;
                log2.borrow_mut().push("writer");
            });
            greenhack::yield_now(); // the writer now waits
            let (l3, log3) = (l.clone(), log.clone());
            let late_reader = greenhack::spawn(move || {
                let v = *l3.read().unwrap();
                log3.borrow_mut().push("late reader");
                v
            });
            greenhack::yield_now();
            // Fair: the late reader does not pass the waiting writer.
            assert!(matches!(
                l.try_read(),
                Err(std::sync::TryLockError::WouldBlock)
            ));
            drop((r1, r2));
            writer.join().unwrap();
            assert_eq!(late_reader.join().unwrap(), 1);
        });
        assert_eq!(*log.borrow(), ["writer", "late reader"]);
        let mut l = Rc::try_unwrap(l).unwrap();
        *l.get_mut().unwrap() += 1;
        assert_eq!(l.into_inner().unwrap(), 2);
    });
}

/// std: a writer that panics poisons the lock; a reader that panics does not.
#[test]
fn rwlock_poisoning_as_std() {
    let l = RwLock::new(0);
    let _ = panic::catch_unwind(AssertUnwindSafe(|| {
        let _r = l.read().unwrap();
        panic!("reader");
    }));
    assert!(!l.is_poisoned());
    let _ = panic::catch_unwind(AssertUnwindSafe(|| {
        let _w = l.write().unwrap();
        panic!("writer");
    }));
    assert!(l.is_poisoned());
    assert!(l.read().is_err());
    l.clear_poison();
    assert!(l.read().is_ok());
}

// ----- Semaphore ---------------------------------------------------------------------

/// tokio: `try_acquire` fails with no permit free; a permit's drop returns
/// it; `forget` keeps it; `add_permits` wakes waiters; `acquire_many`.
#[test]
fn semaphore_acquire_try_acquire_permits() {
    within(10, || {
        let s = Rc::new(Semaphore::new(2));
        let a = s.try_acquire().unwrap();
        let b = s.acquire();
        assert_eq!(s.available_permits(), 0);
        assert_eq!(
            s.try_acquire().unwrap_err(),
            TryAcquireError::clone(&s.try_acquire().unwrap_err())
        );
        drop(a);
        assert_eq!(s.available_permits(), 1);
        b.forget();
        assert_eq!(s.available_permits(), 1);
        greenhack::run(|| {
            let s2 = s.clone();
            let h = greenhack::spawn(move || s2.acquire_many(3).num_permits());
            greenhack::yield_now();
            assert!(!h.is_finished());
            s.add_permits(2);
            assert_eq!(h.join().unwrap(), 3);
        });
        assert_eq!(s.available_permits(), 3);
    });
}

/// A semaphore shared by plain threads blocks them like a std-built one.
#[test]
fn semaphore_between_plain_threads() {
    within(20, || {
        let s = Arc::new(Semaphore::new(2));
        let inside = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let ts: Vec<_> = (0..6)
            .map(|_| {
                let (s, inside, peak) = (s.clone(), inside.clone(), peak.clone());
                thread::spawn(move || {
                    let _p = s.acquire();
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    thread::sleep(5 * MS);
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        ts.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!(s.available_permits(), 2);
    });
}

// ----- unblock -------------------------------------------------------------------

/// tokio's `spawn_blocking`: the loop runs meanwhile; a panic in the
/// closure is re-raised with its payload (a `String` from `panic!("{}")`).
#[test]
fn unblock_keeps_the_loop_running_and_carries_panics() {
    within(20, || {
        greenhack::run(|| {
            let ticks = Rc::new(Cell::new(0));
            let t = ticks.clone();
            let ticker = greenhack::spawn(move || {
                for _ in 0..10 {
                    greenhack::sleep(2 * MS);
                    t.set(t.get() + 1);
                }
            });
            let v = greenhack::unblock(|| {
                thread::sleep(60 * MS);
                42
            });
            assert_eq!(v, 42);
            assert!(ticks.get() >= 3, "the loop stalled during unblock");
            ticker.join().unwrap();

            let err = panic::catch_unwind(|| {
                greenhack::unblock(|| -> u8 { panic!("bad row {}", std::hint::black_box(7)) })
            })
            .unwrap_err();
            assert_eq!(
                err.downcast_ref::<String>().map(String::as_str),
                Some("bad row 7")
            );

            // In a spawned greenlet the panic reaches join() with its payload.
            let h = greenhack::spawn(|| greenhack::unblock(|| -> u8 { panic!("static") }));
            let p = h.join().unwrap_err().into_panic();
            assert_eq!(p.downcast_ref::<&str>(), Some(&"static"));
        });
        // On a plain thread too.
        assert_eq!(greenhack::unblock(|| 1 + 1), 2);
    });
}

/// Name resolution off the loop: connecting to a host name ("localhost")
/// works from a greenlet while another greenlet keeps ticking.
#[test]
fn connect_by_name_from_a_greenlet() {
    within(20, || {
        let listener = greenhack::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        greenhack::run(move || {
            let acc = greenhack::spawn(move || listener.accept().map(|_| ()));
            let c =
                greenhack::spawn(move || greenhack::net::TcpStream::connect(("localhost", port)));
            let s = c.join().unwrap();
            // "localhost" may resolve to ::1 first; either way it connects.
            assert!(s.is_ok(), "{s:?}");
            acc.join().unwrap().unwrap();
        });
    });
}

// ----- timeout ---------------------------------------------------------------------

/// Nested timeouts: the earliest wins and only its scope catches it; an
/// outer deadline passes through an inner scope with a later one.
#[test]
fn timeout_nested_earliest_wins_and_only_its_scope_catches() {
    within(10, || {
        // Inner earlier: the inner catches, the outer goes on.
        let r = greenhack::timeout(Duration::from_secs(5), || {
            let inner = greenhack::timeout(5 * MS, || greenhack::sleep(Duration::from_secs(5)));
            assert!(inner.is_err());
            "outer went on"
        });
        assert_eq!(r, Ok("outer went on"));

        // Outer earlier: the inner does not catch it.
        let reached = Cell::new(false);
        let r = greenhack::timeout(5 * MS, || {
            let _inner = greenhack::timeout(Duration::from_secs(5), || {
                greenhack::sleep(Duration::from_secs(5))
            });
            reached.set(true);
        });
        assert!(r.is_err());
        assert!(!reached.get(), "inner scope caught the outer's expiry");

        // Completes in time: Ok, and the scope is gone afterwards (a later
        // long wait is not cut).
        assert_eq!(greenhack::timeout(Duration::from_secs(5), || 3), Ok(3));
        greenhack::sleep(20 * MS);

        // A panic inside passes through unchanged.
        let p =
            panic::catch_unwind(|| greenhack::timeout(Duration::from_secs(5), || panic!("inner")))
                .unwrap_err();
        assert_eq!(p.downcast_ref::<&str>(), Some(&"inner"));
    });
}

/// `timeout` cuts the sync primitives' waits: a `recv`, a `lock` and a
/// `Condvar::wait` are abandoned, and the primitives still work afterwards
/// (the abandoned waiter left their queues).
#[test]
fn timeout_cuts_sync_waits_and_leaves_primitives_usable() {
    within(10, || {
        greenhack::run(|| {
            let (tx, rx) = mpsc::channel::<u8>();
            assert!(greenhack::timeout(5 * MS, || rx.recv()).is_err());
            tx.send(1).unwrap();
            assert_eq!(rx.recv(), Ok(1));

            let m = Rc::new(Mutex::new(0));
            let m2 = m.clone();
            let holder = greenhack::spawn(move || {
                let _g = m2.lock().unwrap();
                greenhack::sleep(20 * MS);
            });
            greenhack::yield_now();
            assert!(greenhack::timeout(5 * MS, || drop(m.lock())).is_err());
            holder.join().unwrap();
            assert!(m.try_lock().is_ok());

            let pair = (Mutex::new(()), Condvar::new());
            let r = greenhack::timeout(5 * MS, || drop(pair.1.wait(pair.0.lock().unwrap())));
            assert!(r.is_err());
            assert!(
                pair.0.try_lock().is_ok(),
                "mutex left locked by the cut wait"
            );

            let s = Semaphore::new(0);
            assert!(greenhack::timeout(5 * MS, || drop(s.acquire())).is_err());
            s.add_permits(1);
            assert!(s.try_acquire().is_ok());
        });
    });
}

// ----- with_async (exempt_cm) ---------------------------------------------------

/// `with_async` inside `timeout`: the cleanup runs and completes (a
/// rollback that itself waits), and is told the body did not return.
#[test]
fn with_async_cleanup_runs_when_a_timeout_cuts_the_body() {
    within(10, || {
        let log = Rc::new(RefCell::new(Vec::new()));
        let l = log.clone();
        let r = greenhack::run(move || {
            greenhack::timeout(10 * MS, || {
                greenhack::with_async(
                    async { "tx" },
                    |_tx| greenhack::sleep(Duration::from_secs(5)),
                    async |tx, exit| {
                        let what = match exit {
                            greenhack::Exit::Returned(_) => "returned",
                            greenhack::Exit::Panicked(_) => "panicked",
                            greenhack::Exit::Cancelled => "cancelled",
                            _ => "other",
                        };
                        l.borrow_mut().push(format!("{tx} {what}"));
                        // The rollback waits, as a real one would.
                        greenhack::sleep(2 * MS);
                        l.borrow_mut().push("rolled back".to_string());
                    },
                )
            })
        });
        assert!(r.is_err());
        let log = log.borrow();
        assert_eq!(log.len(), 2, "cleanup did not finish: {log:?}");
        assert_eq!(log[1], "rolled back");
        assert_ne!(log[0], "tx returned");
    });
}

/// `with_async`: `?` in the body is a return the cleanup sees as `Err`.
#[test]
fn with_async_question_mark_is_seen_by_the_cleanup() {
    let seen = Cell::new(None);
    let r: Result<u8, String> = greenhack::with_async(
        async {},
        |_| {
            let n: u8 = "x".parse().map_err(|_| "not a number".to_string())?;
            Ok(n)
        },
        async |(), exit| seen.set(Some(exit.is_ok())),
    );
    assert_eq!(r, Err("not a number".to_string()));
    assert_eq!(seen.get(), Some(false));
}

// ----- exempt_iter (exempt_it) ----------------------------------------------------

/// A tokio mpsc receiver read as a plain iterator from a greenlet, fed by
/// a tokio task; it ends when the senders are gone.
#[cfg(all(feature = "futures", feature = "tokio"))]
#[test]
fn exempt_iter_reads_a_tokio_channel() {
    within(10, || {
        greenhack::tokio::run(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            tokio::spawn(async move {
                for i in 0..5 {
                    tx.send(i).await.unwrap();
                }
            });
            let got: Vec<i32> =
                greenhack::exempt_iter(tokio_stream::wrappers::ReceiverStream::new(rx)).collect();
            assert_eq!(got, [0, 1, 2, 3, 4]);
        });
    });
}

// ----- greenlet-locals -----------------------------------------------------------

greenhack::greenlet_local! {
    static REQ: Cell<u32> = Cell::new(0);
    static DROPPED: RefCell<Option<Counted>> = RefCell::new(None);
}

/// `thread_local!`-like: each greenlet its own value, fresh in spawned
/// greenlets (not inherited), seen by the futures it exempts, dropped when
/// the greenlet ends.
#[test]
fn greenlet_local_isolated_not_inherited_visible_in_exempted_futures_dropped() {
    within(10, || {
        let drops = Arc::new(AtomicUsize::new(0));
        let d = drops.clone();
        greenhack::run(move || {
            REQ.with(|r| r.set(99));
            let hs: Vec<_> = (1..=50)
                .map(|i| {
                    let d = d.clone();
                    greenhack::spawn(move || {
                        assert_eq!(REQ.with(Cell::get), 0, "inherited");
                        REQ.with(|r| r.set(i));
                        DROPPED.with(|c| *c.borrow_mut() = Some(Counted(d)));
                        greenhack::sleep(MS);
                        let in_future = greenhack::exempt(async { REQ.with(Cell::get) });
                        (REQ.with(Cell::get), in_future)
                    })
                })
                .collect();
            for (i, h) in (1..=50).zip(hs) {
                assert_eq!(h.join().unwrap(), (i, i));
            }
            assert_eq!(REQ.with(Cell::get), 99);
        });
        assert_eq!(drops.load(Ordering::SeqCst), 50);
    });
}

// ----- hosted tokio and the Send entry ------------------------------------------------

/// Under `greenhack::tokio::run` (tokio beneath greenhack's loop) the sync
/// primitives work between greenlets, and a tokio task can feed a greenlet.
#[cfg(feature = "tokio")]
#[test]
fn sync_under_hosted_tokio() {
    within(10, || {
        greenhack::tokio::run(|| {
            let (tx, rx) = mpsc::channel();
            tokio::spawn(async move {
                for i in 0..3 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    tx.send(i).unwrap();
                }
            });
            let m = Rc::new(Mutex::new(Vec::new()));
            let m2 = m.clone();
            greenhack::spawn(move || {
                for i in rx {
                    m2.lock().unwrap().push(i);
                }
            })
            .join()
            .unwrap();
            assert_eq!(*m.lock().unwrap(), [0, 1, 2]);
            assert_eq!(
                mpsc::channel::<u8>().1.recv_timeout(5 * MS),
                Err(RecvTimeoutError::Timeout)
            );
        });
        // as_async polled by a plain tokio current_thread runtime.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let (go_tx, go_rx) = oneshot::channel::<()>();
        let got = rt.block_on(async move {
            tokio::spawn(async move {
                go_rx.await.unwrap(); // greenhack's oneshot, awaited by tokio
                tokio::time::sleep(Duration::from_millis(5)).await;
                tx.send(5u8).unwrap();
            });
            greenhack::as_async(move || {
                let a = rx.recv_timeout(MS);
                go_tx.send(()).unwrap();
                let b = rx.recv();
                (a, b)
            })
            .await
        });
        assert_eq!(got, (Err(RecvTimeoutError::Timeout), Ok(5)));
    });
}

/// Through the Send entry on a multi-thread runtime: a `spawn_sync` closure
/// waits on a channel fed by a plain thread, and on a `Mutex` shared with
/// other `spawn_sync` closures.
#[cfg(feature = "tokio")]
#[test]
fn sync_through_spawn_sync() {
    within(20, || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let (tx, rx) = mpsc::channel();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let t = thread::spawn(move || {
                ready_rx.recv().unwrap(); // the closure runs
                thread::sleep(50 * MS);
                tx.send(1u8).unwrap();
            });
            let got = greenhack::tokio::spawn_sync(move || {
                ready_tx.send(()).unwrap();
                let a = rx.recv_timeout(Duration::from_millis(1));
                (a, rx.recv())
            })
            .await
            .unwrap();
            assert_eq!(got, (Err(RecvTimeoutError::Timeout), Ok(1)));
            t.join().unwrap();

            let m = Arc::new(Mutex::new(0));
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let m = m.clone();
                    greenhack::tokio::spawn_sync(move || {
                        for _ in 0..10 {
                            let mut g = m.lock().unwrap();
                            let v = *g;
                            greenhack::yield_now();
                            *g = v + 1;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            assert_eq!(*m.lock().unwrap(), 80);
        });
    });
}

// ----- the stall detector --------------------------------------------------------

/// A greenlet blocked in a std call is named within twice the threshold,
/// once, and the end is reported with the stall's length.
#[test]
fn stall_detector_names_the_stuck_greenlet() {
    within(20, || {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let threshold = 30 * MS;
        let detector = greenhack::debug::stall_detector_with(threshold, move |st| {
            if st.name.as_deref() == Some("audit-blocker") {
                s.lock()
                    .unwrap()
                    .push((st.ended, st.duration, Instant::now()));
            }
        });
        let start = Instant::now();
        greenhack::Builder::new()
            .name("audit-blocker")
            .spawn(|| thread::sleep(200 * MS))
            .unwrap()
            .join()
            .unwrap();
        greenhack::sleep(30 * MS);
        drop(detector);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [false, true]);
        assert!(
            seen[0].2 - start <= 2 * threshold + 10 * MS,
            "late: {:?}",
            seen[0].2 - start
        );
        assert!(seen[1].1 >= 190 * MS);
    });
}

/// The other side of the rule above: a real panic still poisons, inside a
/// `timeout` too, and also right after a timeout was caught (nothing of the
/// cancellation lingers).
#[test]
fn panics_still_poison_inside_and_after_a_timeout() {
    within(10, || {
        let m = Mutex::new(0);
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            greenhack::timeout(Duration::from_secs(5), || {
                let _g = m.lock().unwrap();
                panic!("inside a timeout");
            })
        }));
        assert!(r.is_err());
        assert!(m.is_poisoned());
        m.clear_poison();

        assert!(greenhack::timeout(MS, || greenhack::sleep(Duration::from_secs(5))).is_err());
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            let _g = m.lock().unwrap();
            panic!("after a timeout");
        }));
        assert!(r.is_err());
        assert!(m.is_poisoned());

        // And in a greenlet whose sibling was cancelled.
        let m = Rc::new(Mutex::new(0));
        greenhack::run(|| {
            let h = greenhack::spawn(|| greenhack::sleep(Duration::from_secs(5)));
            greenhack::yield_now();
            h.cancel();
            assert!(h.join().unwrap_err().is_cancelled());
            let m2 = m.clone();
            let p = greenhack::spawn(move || {
                let _g = m2.lock().unwrap();
                panic!("real");
            });
            assert!(p.join().unwrap_err().is_panic());
        });
        assert!(m.is_poisoned());
    });
}

// ----- batch 2: what std says is *not* implemented, and more places to wait ----------

/// The `static_assertions` trick: `some_item` resolves only if exactly one
/// impl applies, i.e. only if `T` does *not* have the marker trait.
trait AmbiguousIfSend<A> {
    fn some_item() {}
}
impl<T: ?Sized> AmbiguousIfSend<()> for T {}
impl<T: ?Sized + Send> AmbiguousIfSend<u8> for T {}
trait AmbiguousIfSync<A> {
    fn some_item() {}
}
impl<T: ?Sized> AmbiguousIfSync<()> for T {}
impl<T: ?Sized + Sync> AmbiguousIfSync<u8> for T {}

/// std: guards are `!Send`; `Receiver` is `!Sync`; `Sender<T>` is `Send`
/// only for `T: Send`; `Mutex<T>` is `Sync` only for `T: Send`; `RwLock<T>`
/// is `Sync` only for `T: Send + Sync`. And `Mutex<dyn Trait>` coerces
/// (`T: ?Sized`), as std's does.
#[test]
fn std_negative_auto_traits_and_unsizing() {
    let _ = <MutexGuard<'static, u8> as AmbiguousIfSend<_>>::some_item;
    let _ = <RwLockReadGuard<'static, u8> as AmbiguousIfSend<_>>::some_item;
    let _ = <RwLockWriteGuard<'static, u8> as AmbiguousIfSend<_>>::some_item;
    let _ = <mpsc::Receiver<u8> as AmbiguousIfSync<_>>::some_item;
    let _ = <mpsc::Sender<Rc<u8>> as AmbiguousIfSend<_>>::some_item;
    let _ = <mpsc::Receiver<Rc<u8>> as AmbiguousIfSend<_>>::some_item;
    let _ = <Mutex<Rc<u8>> as AmbiguousIfSync<_>>::some_item;
    let _ = <RwLock<Cell<u8>> as AmbiguousIfSync<_>>::some_item;
    let _ = <oneshot::Sender<Rc<u8>> as AmbiguousIfSend<_>>::some_item;

    let m: Arc<Mutex<dyn std::fmt::Debug + Send>> = Arc::new(Mutex::new(5u8));
    assert_eq!(format!("{:?}", &*m.lock().unwrap()), "5");
    let s: Box<Mutex<[u8]>> = Box::new(Mutex::new([1, 2, 3]));
    assert_eq!(s.lock().unwrap().len(), 3);
    let r: Arc<RwLock<[u8]>> = Arc::new(RwLock::new([1, 2]));
    assert_eq!(r.read().unwrap().len(), 2);
}

/// std: `recv_timeout(Duration::ZERO)` returns a message that is there and
/// `Timeout` at once otherwise; `wait_timeout(ZERO)` times out at once.
#[test]
fn zero_timeouts_do_not_wait() {
    within(10, || {
        let (tx, rx) = mpsc::channel();
        tx.send(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::ZERO), Ok(1));
        assert_eq!(
            rx.recv_timeout(Duration::ZERO),
            Err(RecvTimeoutError::Timeout)
        );
        let (m, cv) = (Mutex::new(()), Condvar::new());
        let (_g, r) = cv.wait_timeout(m.lock().unwrap(), Duration::ZERO).unwrap();
        assert!(r.timed_out());
        greenhack::run(|| {
            let (tx, rx) = mpsc::channel::<u8>();
            let h = greenhack::spawn(move || rx.recv_timeout(Duration::ZERO));
            assert_eq!(h.join().unwrap(), Err(RecvTimeoutError::Timeout));
            drop(tx);
        });
    });
}

/// std: on a rendezvous channel `try_send` succeeds when a receiver is
/// already waiting.
#[test]
fn mpsc_rendezvous_try_send_to_a_waiting_receiver() {
    within(10, || {
        greenhack::run(|| {
            let (tx, rx) = mpsc::sync_channel(0);
            let h = greenhack::spawn(move || rx.recv());
            greenhack::yield_now(); // the receiver now waits
            assert_eq!(tx.try_send(3), Ok(()));
            assert_eq!(h.join().unwrap(), Ok(3));
        });
    });
}

/// Outside any greenlet on a tokio worker the primitives block the thread
/// as std's would (documented), and a greenlet on another thread's loop
/// wakes it.
#[cfg(feature = "tokio")]
#[test]
fn sync_blocks_like_std_on_a_tokio_worker() {
    within(20, || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = mpsc::channel::<u8>();
        let m = Arc::new(Mutex::new(0));
        let pair = Arc::new((Mutex::new(false), Condvar::new()));
        let (m2, p2) = (m.clone(), pair.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let other_loop = thread::spawn(move || {
            greenhack::run(move || {
                let g = m2.lock().unwrap();
                ready_rx.recv().unwrap(); // the tokio task runs
                greenhack::sleep(30 * MS);
                drop(g);
                tx.send(7).unwrap();
                *p2.0.lock().unwrap() = true;
                p2.1.notify_all();
            })
        });
        let got = rt.block_on(async move {
            tokio::spawn(async move {
                ready_tx.send(()).unwrap();
                let a = rx.recv_timeout(MS);
                *m.lock().unwrap() += 1; // held by the other loop meanwhile
                let b = rx.recv();
                let (g, r) = pair
                    .1
                    .wait_timeout_while(pair.0.lock().unwrap(), Duration::from_secs(5), |b| !*b)
                    .unwrap();
                (a, b, *g, r.timed_out())
            })
            .await
            .unwrap()
        });
        assert_eq!(got, (Err(RecvTimeoutError::Timeout), Ok(7), true, false));
        other_loop.join().unwrap();
    });
}

/// A greenlet on one loop releases permits and a plain thread blocked in
/// `acquire` (no loop) gets them; and the other way round.
#[test]
fn semaphore_between_a_loop_and_a_plain_thread() {
    within(10, || {
        let s = Arc::new(Semaphore::new(0));
        let s2 = s.clone();
        let t = thread::spawn(move || {
            let p = s2.acquire_many(2);
            p.num_permits()
        });
        greenhack::run(|| {
            let s = s.clone();
            greenhack::spawn(move || {
                greenhack::sleep(10 * MS);
                s.add_permits(2);
            })
            .join()
            .unwrap();
        });
        assert_eq!(t.join().unwrap(), 2);
        assert_eq!(s.available_permits(), 2);
    });
}

/// `timeout` around `JoinHandle::join` and around `unblock`: the wait is
/// abandoned, the greenlet (or the pool job) runs on; a greenlet spawned
/// inside a timeout is not bound by it.
#[test]
fn timeout_around_join_and_unblock_abandons_only_the_wait() {
    within(10, || {
        greenhack::run(|| {
            let h = Rc::new(RefCell::new(None));
            let h2 = h.clone();
            let r = greenhack::timeout(5 * MS, move || {
                let child = greenhack::spawn(|| {
                    greenhack::sleep(30 * MS);
                    "child done"
                });
                *h2.borrow_mut() = Some(child);
                greenhack::sleep(Duration::from_secs(5));
            });
            assert!(r.is_err());
            let child = h.borrow_mut().take().unwrap();
            assert_eq!(child.join().unwrap(), "child done");

            let ran = Arc::new(AtomicBool::new(false));
            let r2 = ran.clone();
            let r = greenhack::timeout(5 * MS, move || {
                greenhack::unblock(move || {
                    thread::sleep(30 * MS);
                    r2.store(true, Ordering::SeqCst);
                })
            });
            assert!(r.is_err());
            greenhack::sleep(60 * MS);
            assert!(
                ran.load(Ordering::SeqCst),
                "the pool job was not left to run"
            );
        });
    });
}

/// A greenlet's locals are dropped when it is cancelled, too; each
/// `as_async` under tokio has its own.
#[cfg(feature = "tokio")]
#[test]
fn greenlet_local_dropped_on_cancel_and_per_as_async() {
    within(10, || {
        let drops = Arc::new(AtomicUsize::new(0));
        let d = drops.clone();
        greenhack::run(move || {
            let h = greenhack::spawn(move || {
                DROPPED.with(|c| *c.borrow_mut() = Some(Counted(d)));
                greenhack::sleep(Duration::from_secs(5));
            });
            // The greenlet runs to its wait in the round this yield gives
            // (a 2 ms sleep could expire before its first poll under
            // qemu-user, and the greenlet was cancelled before it started).
            greenhack::yield_now();
            h.cancel();
            assert!(h.join().unwrap_err().is_cancelled());
        });
        assert_eq!(drops.load(Ordering::SeqCst), 1);

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let got = local.block_on(&rt, async {
            let a = tokio::task::spawn_local(greenhack::as_async(|| {
                REQ.with(|r| r.set(1));
                greenhack::exempt(tokio::time::sleep(Duration::from_millis(5)));
                REQ.with(Cell::get)
            }));
            let b = tokio::task::spawn_local(greenhack::as_async(|| {
                REQ.with(|r| r.set(2));
                greenhack::exempt(tokio::time::sleep(Duration::from_millis(5)));
                REQ.with(Cell::get)
            }));
            (a.await.unwrap(), b.await.unwrap())
        });
        assert_eq!(got, (1, 2));
    });
}

/// `exempt_iter` over a `!Unpin` stream whose items are greenhack oneshot
/// receivers awaited (the `Receiver` is a `Future`), answered by threads.
#[cfg(feature = "futures")]
#[test]
fn exempt_iter_over_an_unpin_less_stream_of_oneshots() {
    within(10, || {
        let rxs: Vec<_> = (0..3)
            .map(|i| {
                let (tx, rx) = oneshot::channel();
                thread::spawn(move || {
                    thread::sleep((3 - i) * 5 * MS);
                    tx.send(i).unwrap();
                });
                rx
            })
            .collect();
        let stream = futures_util::stream::unfold(rxs.into_iter(), |mut it| async move {
            let rx = it.next()?;
            Some((rx.await.unwrap(), it))
        });
        let got: Vec<u32> = greenhack::run(|| greenhack::exempt_iter(stream).collect());
        assert_eq!(got, [0, 1, 2]);
    });
}

/// std: a `Mutex` hands the lock on in the order of waiting (documented
/// FIFO): three greenlets queue behind a holder and get it in turn.
#[test]
fn mutex_waiters_served_in_arrival_order() {
    within(10, || {
        let m = Rc::new(Mutex::new(Vec::new()));
        greenhack::run(|| {
            let g = m.lock().unwrap();
            let hs: Vec<_> = (0..3)
                .map(|i| {
                    let m = m.clone();
                    let h = greenhack::spawn(move || m.lock().unwrap().push(i));
                    greenhack::yield_now();
                    h
                })
                .collect();
            drop(g);
            hs.into_iter().for_each(|h| h.join().unwrap());
        });
        assert_eq!(*m.lock().unwrap(), [0, 1, 2]);
    });
}

// ----- batch 3: races between hand-offs and abandoned waits ----------------------------

/// A tiny xorshift, for wait lengths.
fn next_rand(state: &Cell<u64>) -> u64 {
    let mut x = state.get();
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    state.set(x);
    x
}

/// Every message is received exactly once although receivers keep giving
/// up (`recv_timeout`, and `timeout` around `recv`) at random moments, while
/// one receiver waits with plain `recv` (a lost wake-up would hang it).
#[test]
fn stress_mpsc_abandoned_receives_lose_nothing() {
    within(60, || {
        let (tx, rx) = mpsc::sync_channel::<u64>(2);
        let producers: Vec<_> = (0..3u64)
            .map(|p| {
                let tx = tx.clone();
                thread::spawn(move || {
                    for i in 0..2000 {
                        tx.send(p * 10_000 + i).unwrap();
                        if i % 64 == 0 {
                            thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let rx = Rc::new(rx);
        let got = Rc::new(RefCell::new(Vec::new()));
        greenhack::run(|| {
            for k in 0..5u64 {
                let (rx, got) = (rx.clone(), got.clone());
                let _detached = greenhack::spawn(move || {
                    let rng = Cell::new(0x9e37_79b9_7f4a_7c15 ^ (k + 1));
                    loop {
                        let us = next_rand(&rng) % 300;
                        let r = match k {
                            0 => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                            1 | 2 => rx.recv_timeout(Duration::from_micros(us)),
                            _ => {
                                match greenhack::timeout(Duration::from_micros(us), || rx.recv()) {
                                    Ok(r) => r.map_err(|_| RecvTimeoutError::Disconnected),
                                    Err(_) => Err(RecvTimeoutError::Timeout),
                                }
                            }
                        };
                        match r {
                            Ok(v) => got.borrow_mut().push(v),
                            Err(RecvTimeoutError::Timeout) => {}
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                    }
                });
            }
        });
        producers.into_iter().for_each(|t| t.join().unwrap());
        let mut got = got.borrow().clone();
        got.sort_unstable();
        let want: Vec<u64> = (0..3u64)
            .flat_map(|p| (0..2000).map(move |i| p * 10_000 + i))
            .collect();
        assert_eq!(got.len(), want.len());
        assert_eq!(got, want);
    });
}

/// Greenlets on two loops lock one `Mutex`, many through a `timeout` that
/// may cut the wait at any moment (also just as the lock is handed over);
/// the others lock plainly, so a lost hand-off would hang them. Every lock
/// taken is counted once, and the mutex ends free and unpoisoned.
#[test]
fn stress_mutex_abandoned_locks_lose_no_hand_off() {
    within(60, || {
        let m = Arc::new(Mutex::new(0u64));
        let taken = Arc::new(AtomicUsize::new(0));
        let loops: Vec<_> = (0..2u64)
            .map(|l| {
                let (m, taken) = (m.clone(), taken.clone());
                thread::spawn(move || {
                    greenhack::run(move || {
                        for k in 0..20u64 {
                            let (m, taken) = (m.clone(), taken.clone());
                            let _detached = greenhack::spawn(move || {
                                let rng = Cell::new(0x2545_f491_4f6c_dd1d ^ (l * 100 + k + 1));
                                for _ in 0..100 {
                                    let us = next_rand(&rng) % 200;
                                    let body = || {
                                        let mut g = m.lock().unwrap();
                                        taken.fetch_add(1, Ordering::SeqCst);
                                        *g += 1;
                                        if us % 3 == 0 {
                                            greenhack::yield_now();
                                        }
                                    };
                                    if k % 4 == 0 {
                                        body();
                                    } else {
                                        let _ = greenhack::timeout(Duration::from_micros(us), body);
                                    }
                                }
                            });
                        }
                    })
                })
            })
            .collect();
        loops.into_iter().for_each(|t| t.join().unwrap());
        assert!(!m.is_poisoned());
        let g = m.try_lock().expect("mutex left locked");
        assert_eq!(*g as usize, taken.load(Ordering::SeqCst));
    });
}

/// The same for `Semaphore` (permits conserved), `RwLock` (ends free) and
/// `Condvar` (every notified item consumed once).
#[test]
fn stress_semaphore_rwlock_condvar_abandoned_waits() {
    within(60, || {
        let sem = Rc::new(Semaphore::new(3));
        let rw = Rc::new(RwLock::new(0u64));
        let queue = Rc::new((Mutex::new(Vec::<u64>::new()), Condvar::new()));
        let consumed = Rc::new(RefCell::new(Vec::new()));
        greenhack::run(|| {
            for k in 0..30u64 {
                let (sem, rw) = (sem.clone(), rw.clone());
                let _detached = greenhack::spawn(move || {
                    let rng = Cell::new(0x1234_5678_9abc_def1 ^ (k + 1));
                    for i in 0..60u64 {
                        let us = next_rand(&rng) % 300;
                        let _ = greenhack::timeout(Duration::from_micros(us), || {
                            let _p = sem.acquire_many(1 + (i % 2) as u32);
                            if i % 5 == 0 {
                                *rw.write().unwrap() += 1;
                            } else {
                                let _r = rw.read().unwrap();
                                greenhack::yield_now();
                            }
                        });
                    }
                });
            }
            // Producers and consumers over a Condvar, consumers giving up
            // at random.
            let done = Rc::new(Cell::new(false));
            let consumers: Vec<_> = (0..4u64)
                .map(|k| {
                    let (q, consumed, done) = (queue.clone(), consumed.clone(), done.clone());
                    greenhack::spawn(move || {
                        let rng = Cell::new(0xdead_beef_1234_5678 ^ (k + 1));
                        loop {
                            let us = next_rand(&rng) % 300;
                            let g = q.0.lock().unwrap();
                            let (mut g, _) =
                                q.1.wait_timeout_while(g, Duration::from_micros(us), |v| {
                                    v.is_empty() && !done.get()
                                })
                                .unwrap();
                            match g.pop() {
                                Some(v) => consumed.borrow_mut().push(v),
                                None if done.get() => break,
                                None => {}
                            }
                        }
                    })
                })
                .collect();
            for i in 0..500u64 {
                queue.0.lock().unwrap().push(i);
                queue.1.notify_one();
                if i % 7 == 0 {
                    greenhack::yield_now();
                }
            }
            while !queue.0.lock().unwrap().is_empty() {
                greenhack::sleep(MS);
            }
            done.set(true);
            queue.1.notify_all();
            consumers.into_iter().for_each(|h| h.join().unwrap());
        });
        assert_eq!(sem.available_permits(), 3);
        assert!(rw.try_write().is_ok(), "rwlock left held");
        let mut c = consumed.borrow().clone();
        c.sort_unstable();
        assert_eq!(c, (0..500).collect::<Vec<_>>());
    });
}

/// Aborting the tokio task of an `as_async` that holds a `Mutex` (its
/// greenlet is dropped, so unwound) releases the lock unpoisoned, and the
/// abandoned `with_async` is told `Cancelled`.
#[cfg(feature = "tokio")]
#[test]
fn tokio_abort_of_an_as_async_releases_its_guard_unpoisoned() {
    within(10, || {
        let m = Arc::new(Mutex::new(0));
        let told = Arc::new(std::sync::Mutex::new(None));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let (m2, t2) = (m.clone(), told.clone());
        local.block_on(&rt, async move {
            let task = tokio::task::spawn_local(greenhack::as_async(move || {
                let _g = m2.lock().unwrap();
                greenhack::with_async(
                    async {},
                    |()| greenhack::exempt(tokio::time::sleep(Duration::from_secs(5))),
                    async |(), exit| {
                        *t2.lock().unwrap() = Some(matches!(exit, greenhack::Exit::Cancelled));
                    },
                );
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
            task.abort();
            assert!(task.await.unwrap_err().is_cancelled());
        });
        assert_eq!(*told.lock().unwrap(), Some(true));
        assert!(m.try_lock().is_ok(), "mutex left locked or poisoned");
    });
}

/// `timeout` inside an `as_async` under tokio and inside `spawn_sync`
/// cuts a wait on a tokio future (documented: an `as_async` under tokio
/// hosts greenhack's loop, whose timers enforce it).
#[cfg(feature = "tokio")]
#[test]
fn timeout_under_tokio_and_spawn_sync() {
    within(20, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r = rt.block_on(greenhack::as_async(|| {
            greenhack::timeout(5 * MS, || {
                greenhack::exempt(tokio::time::sleep(Duration::from_secs(5)))
            })
        }));
        assert!(r.is_err());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let r = rt.block_on(async {
            greenhack::tokio::spawn_sync(|| {
                let (_tx, rx) = mpsc::channel::<u8>();
                greenhack::timeout(5 * MS, || rx.recv())
            })
            .await
            .unwrap()
        });
        assert!(r.is_err());
    });
}

/// A destructor on a cancelled greenlet's stack (a span guard, a request
/// log) still sees that greenlet's locals while the cancellation unwinds
/// it, as a `thread_local!` is still its thread's during an unwind.
#[test]
fn greenlet_local_seen_by_destructors_of_a_cancelled_greenlet() {
    struct LogOnDrop(Rc<Cell<u32>>);
    impl Drop for LogOnDrop {
        fn drop(&mut self) {
            self.0.set(REQ.with(Cell::get));
        }
    }
    within(10, || {
        let seen = Rc::new(Cell::new(0));
        let s = seen.clone();
        greenhack::run(move || {
            REQ.with(|r| r.set(1)); // the thread's own value
            let h = greenhack::spawn(move || {
                REQ.with(|r| r.set(42));
                let _log = LogOnDrop(s);
                greenhack::sleep(Duration::from_secs(5));
            });
            // The greenlet runs to its wait in the round this yield gives
            // (a 2 ms sleep could expire before its first poll under
            // qemu-user, and the greenlet was cancelled before it started).
            greenhack::yield_now();
            h.cancel();
            assert!(h.join().unwrap_err().is_cancelled());
        });
        assert_eq!(seen.get(), 42);
    });
}

/// Nested: while a cancelled greenlet unwinds, one of its destructors drops
/// another suspended greenlet (an `as_async`), which unwinds in turn; each
/// one's destructors see its own locals.
#[test]
fn greenlet_local_seen_by_destructors_of_nested_cancellations() {
    use std::future::Future;
    use std::task::{Context, Waker};

    struct LogOnDrop(Rc<RefCell<Vec<u32>>>);
    impl Drop for LogOnDrop {
        fn drop(&mut self) {
            self.0.borrow_mut().push(REQ.with(Cell::get));
        }
    }
    within(10, || {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let s = seen.clone();
        greenhack::run(move || {
            let h = greenhack::spawn(move || {
                REQ.with(|r| r.set(42));
                let _outer_last = LogOnDrop(s.clone());
                let s2 = s.clone();
                let mut inner = greenhack::as_async(move || {
                    REQ.with(|r| r.set(7));
                    let _inner = LogOnDrop(s2);
                    greenhack::exempt(std::future::pending::<()>());
                });
                let mut cx = Context::from_waker(Waker::noop());
                assert!(std::pin::Pin::new(&mut inner).poll(&mut cx).is_pending());
                let _inner_owner = inner; // dropped first by the unwind
                greenhack::sleep(Duration::from_secs(5));
            });
            // The greenlet runs to its wait in the round this yield gives
            // (a 2 ms sleep could expire before its first poll under
            // qemu-user, and the greenlet was cancelled before it started).
            greenhack::yield_now();
            h.cancel();
            assert!(h.join().unwrap_err().is_cancelled());
        });
        assert_eq!(*seen.borrow(), [7, 42]);
    });
}

/// Sliced greenlets (documented: greenhack's channels and locks keep no
/// pointer into a waiting greenlet's stack) contend on a `Mutex`, pass
/// messages and wait under `timeout`s; the counts are exact.
#[test]
fn sync_between_sliced_greenlets() {
    within(30, || {
        let m = Rc::new(Mutex::new(0u64));
        let (tx, rx) = mpsc::sync_channel::<u64>(1);
        let rx = Rc::new(rx);
        let got = Rc::new(Cell::new(0u64));
        greenhack::run(|| {
            let mut hs = Vec::new();
            for k in 0..100u64 {
                let (m, tx, rx, got) = (m.clone(), tx.clone(), rx.clone(), got.clone());
                // SAFETY: the greenlet waits only through greenhack's locks,
                // channels and timers, passed by value to their waits.
                let b = unsafe { greenhack::Builder::new().sliced() };
                hs.push(
                    b.spawn(move || {
                        let frame = [k; 8]; // live across the waits
                        for i in 0..10u64 {
                            {
                                let mut g = m.lock().unwrap();
                                let v = *g;
                                greenhack::yield_now();
                                *g = v + 1;
                            }
                            if k % 2 == 0 {
                                tx.send(i).unwrap();
                            } else {
                                loop {
                                    match greenhack::timeout(Duration::from_micros(50), || {
                                        rx.recv()
                                    }) {
                                        Ok(v) => {
                                            got.set(got.get() + v.unwrap());
                                            break;
                                        }
                                        Err(_) => continue,
                                    }
                                }
                            }
                        }
                        frame.iter().sum::<u64>()
                    })
                    .unwrap(),
                );
            }
            drop(tx);
            for (k, h) in hs.into_iter().enumerate() {
                assert_eq!(h.join().unwrap(), 8 * k as u64);
            }
        });
        assert_eq!(*m.lock().unwrap(), 1000);
        assert_eq!(got.get(), 50 * (0..10).sum::<u64>());
    });
}

static COUNTED_INITS: AtomicUsize = AtomicUsize::new(0);

greenhack::greenlet_local! {
    static LAZY: Cell<u32> = {
        COUNTED_INITS.fetch_add(1, Ordering::SeqCst);
        Cell::new(100)
    };
    static NAMES: RefCell<Vec<String>> = RefCell::new(Vec::new());
}

/// std's `LocalKey<Cell<T>>`/`LocalKey<RefCell<T>>` shortcuts, per
/// greenlet: `set` on first use skips the initialiser; `get`, `take`,
/// `replace`, `with_borrow`, `with_borrow_mut`.
#[test]
fn greenlet_local_has_std_local_key_shortcuts() {
    within(10, || {
        greenhack::run(|| {
            let a = greenhack::spawn(|| {
                LAZY.set(5); // no initialiser
                let first = LAZY.get();
                let old = LAZY.replace(6);
                NAMES.with_borrow_mut(|v| v.push("a".into()));
                (first, old, LAZY.take(), NAMES.with_borrow(|v| v.clone()))
            });
            let b = greenhack::spawn(|| {
                NAMES.set(vec!["b".into()]);
                greenhack::yield_now();
                (LAZY.get(), NAMES.take())
            });
            assert_eq!(a.join().unwrap(), (5, 5, 6, vec!["a".to_string()]));
            assert_eq!(b.join().unwrap(), (100, vec!["b".to_string()]));
        });
        assert_eq!(COUNTED_INITS.load(Ordering::SeqCst), 1); // b's only
    });
}

/// Under an executor that cannot host greenhack's loop
/// (`futures::executor::block_on`), the sync primitives still wait and
/// time out (documented: a shared timer thread serves their deadlines).
#[test]
fn sync_timeouts_under_a_foreign_executor() {
    within(10, || {
        let (tx, rx) = mpsc::channel::<u8>();
        let pair = Arc::new((Mutex::new(false), Condvar::new()));
        let p2 = pair.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let t = thread::spawn(move || {
            ready_rx.recv().unwrap(); // the greenlet runs
            thread::sleep(30 * MS);
            tx.send(1).unwrap();
            *p2.0.lock().unwrap() = true;
            p2.1.notify_all();
        });
        let got = futures_executor::block_on(greenhack::as_async(move || {
            ready_tx.send(()).unwrap();
            let a = rx.recv_timeout(5 * MS);
            let b = rx.recv_timeout(Duration::from_secs(5));
            let (m, cv) = &*pair;
            let (g, r) = cv
                .wait_timeout_while(m.lock().unwrap(), Duration::from_secs(5), |b| !*b)
                .unwrap();
            let s = Semaphore::new(0);
            let start = Instant::now();
            let c = s.try_acquire().is_err();
            let (_tx2, rx2) = oneshot::channel::<u8>();
            let mut rx2 = rx2;
            let d = rx2.recv_timeout(5 * MS);
            (a, b, *g, r.timed_out(), c, d, start.elapsed() >= 5 * MS)
        }));
        t.join().unwrap();
        assert_eq!(
            got,
            (
                Err(RecvTimeoutError::Timeout),
                Ok(1),
                true,
                false,
                true,
                Err(oneshot::RecvTimeoutError::Timeout),
                true
            )
        );
    });
}

/// `timeout` documents that code inside which catches the unwind and keeps
/// waiting is unwound again at its next wait.
#[test]
fn timeout_caught_inside_is_raised_again_at_the_next_wait() {
    within(10, || {
        let reached = Cell::new(false);
        let r = greenhack::timeout(5 * MS, || {
            let first = panic::catch_unwind(AssertUnwindSafe(|| {
                greenhack::sleep(Duration::from_secs(5))
            }));
            assert!(first.is_err());
            greenhack::sleep(MS);
            reached.set(true);
        });
        assert!(r.is_err());
        assert!(!reached.get());
    });
}

/// Messages dropped by the channel (receiver gone, blocked send abandoned)
/// are dropped outside its lock: a message holding a `Sender` of its own
/// channel, or sending on it from its destructor, does not deadlock.
#[test]
fn mpsc_messages_that_use_their_own_channel_when_dropped() {
    enum Msg {
        Tx(mpsc::Sender<Msg>),
        SendOnDrop(mpsc::SyncSender<u8>),
    }
    impl Drop for Msg {
        fn drop(&mut self) {
            match self {
                Msg::SendOnDrop(tx) => {
                    let _ = tx.try_send(1);
                }
                // Dropped with the message, after this.
                Msg::Tx(tx) => assert!(format!("{tx:?}").starts_with("Sender")),
            }
        }
    }
    within(10, || {
        let (tx, rx) = mpsc::channel::<Msg>();
        tx.send(Msg::Tx(tx.clone())).unwrap();
        drop(tx); // the last Sender outside is gone; one is in the buffer
        match rx.try_recv() {
            Ok(msg) => drop(msg),
            Err(e) => panic!("the message: {e}"),
        }
        // Its Sender was the last one.
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
        let (tx, rx) = mpsc::channel::<Msg>();
        tx.send(Msg::Tx(tx.clone())).unwrap();
        drop(rx); // drops the buffered Sender of this very channel

        let (stx, srx) = mpsc::sync_channel::<u8>(1);
        let (mtx, mrx) = mpsc::channel::<Msg>();
        mtx.send(Msg::SendOnDrop(stx.clone())).unwrap();
        drop(mrx);
        assert_eq!(srx.try_recv(), Ok(1));
        drop(stx);
    });
}

/// The cleanup after a timeout is not cut by the expired deadline, but a
/// timeout of its own (a bounded rollback) still fires.
#[test]
fn with_async_cleanup_after_a_timeout_keeps_its_own_timeouts() {
    within(10, || {
        let inner = Rc::new(Cell::new(None));
        let i2 = inner.clone();
        let start = Instant::now();
        let r = greenhack::run(move || {
            greenhack::timeout(5 * MS, || {
                greenhack::with_async(
                    async {},
                    |()| greenhack::sleep(Duration::from_secs(5)),
                    async |(), _exit| {
                        let bounded = greenhack::timeout(10 * MS, || {
                            greenhack::sleep(Duration::from_secs(5))
                        });
                        i2.set(Some(bounded.is_err()));
                    },
                )
            })
        });
        assert!(r.is_err());
        assert_eq!(inner.get(), Some(true));
        assert!(start.elapsed() < Duration::from_secs(4));
    });
}

/// No false alarm: a greenlet that waits through greenhack (sleep, a lock,
/// a channel) for many thresholds is not a stall, nor is a loop idle in
/// `epoll_wait`.
#[test]
fn stall_detector_quiet_for_greenlets_that_wait() {
    within(20, || {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let detector = greenhack::debug::stall_detector_with(10 * MS, move |st| {
            if st
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("audit-waiter"))
            {
                s.lock().unwrap().push(st.clone());
            }
        });
        greenhack::run(|| {
            let m = Rc::new(Mutex::new(()));
            let (tx, rx) = mpsc::channel::<u8>();
            let g = m.lock().unwrap();
            let m2 = m.clone();
            let a = greenhack::Builder::new()
                .name("audit-waiter-sleep")
                .spawn(|| greenhack::sleep(80 * MS))
                .unwrap();
            let b = greenhack::Builder::new()
                .name("audit-waiter-lock")
                .spawn(move || drop(m2.lock().unwrap()))
                .unwrap();
            let c = greenhack::Builder::new()
                .name("audit-waiter-recv")
                .spawn(move || rx.recv().unwrap())
                .unwrap();
            greenhack::sleep(80 * MS);
            drop(g);
            tx.send(1).unwrap();
            a.join().unwrap();
            b.join().unwrap();
            assert_eq!(c.join().unwrap(), 1);
        });
        drop(detector);
        assert!(
            seen.lock().unwrap().is_empty(),
            "{:?}",
            seen.lock().unwrap()
        );
    });
}

/// A `Runtime`'s loops share sync primitives: greenlets handed to two
/// loops contend on one `Mutex` and feed one channel; greenlets still
/// holding a guard when the runtime shuts down are unwound, releasing it
/// unpoisoned; a cancelled remote greenlet too.
#[test]
fn sync_across_runtime_loops_and_shutdown() {
    within(30, || {
        let rt = greenhack::runtime::Builder::new()
            .worker_threads(2)
            .build(|| Ok(()))
            .unwrap();
        let m = Arc::new(Mutex::new(0u64));
        let (tx, rx) = mpsc::channel::<u64>();
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let (m, tx) = (m.clone(), tx.clone());
                rt.handle(i % 2).spawn(move || {
                    for _ in 0..50 {
                        let mut g = m.lock().unwrap();
                        let v = *g;
                        greenhack::yield_now();
                        *g = v + 1;
                    }
                    tx.send(i as u64).unwrap();
                })
            })
            .collect();
        drop(tx);
        hs.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(rx.iter().sum::<u64>(), (0..8).sum());
        assert_eq!(*m.lock().unwrap(), 400);

        // Holders unwound by a cancel and by the shutdown.
        let m1 = Arc::new(Mutex::new(()));
        let m2 = Arc::new(Mutex::new(()));
        let (held_tx, held_rx) = mpsc::channel::<()>();
        let (a, ht) = (m1.clone(), held_tx.clone());
        let cancelled = rt.handle(0).spawn(move || {
            let _g = a.lock().unwrap();
            ht.send(()).unwrap();
            greenhack::sleep(Duration::from_secs(30));
        });
        let (b, ht) = (m2.clone(), held_tx);
        let _left = rt.handle(1).spawn(move || {
            let _g = b.lock().unwrap();
            ht.send(()).unwrap();
            greenhack::sleep(Duration::from_secs(30));
        });
        held_rx.recv().unwrap();
        held_rx.recv().unwrap();
        cancelled.cancel();
        assert!(cancelled.join().unwrap_err().is_cancelled());
        assert!(m1.try_lock().is_ok(), "cancel left it locked or poisoned");
        rt.shutdown().unwrap();
        assert!(m2.try_lock().is_ok(), "shutdown left it locked or poisoned");
    });
}

/// std: a thread-local's destructor may use the thread's other locals that
/// are still alive. Here: a greenlet-local whose value reads another one
/// when the greenlet's locals are dropped, in either order of creation.
#[test]
fn greenlet_local_destructor_uses_another_local() {
    struct ReadsReqOnDrop(Arc<std::sync::Mutex<Vec<u32>>>);
    impl Drop for ReadsReqOnDrop {
        fn drop(&mut self) {
            self.0.lock().unwrap().push(REQ.with(Cell::get));
        }
    }
    greenhack::greenlet_local! {
        static READER: RefCell<Option<ReadsReqOnDrop>> = RefCell::new(None);
    }
    within(10, || {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        greenhack::run(move || {
            let s1 = s.clone();
            // REQ first, then READER.
            greenhack::spawn(move || {
                REQ.with(|r| r.set(5));
                READER.with(|r| *r.borrow_mut() = Some(ReadsReqOnDrop(s1)));
            })
            .join()
            .unwrap();
            // READER first, then REQ.
            greenhack::spawn(move || {
                READER.with(|r| *r.borrow_mut() = Some(ReadsReqOnDrop(s)));
                REQ.with(|r| r.set(6));
            })
            .join()
            .unwrap();
        });
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0], 5);
        // The second may see 6, or REQ made afresh (0): never garbage.
        assert!(seen[1] == 6 || seen[1] == 0, "{seen:?}");
    });
}

static REENTERED: AtomicUsize = AtomicUsize::new(0);

greenhack::greenlet_local! {
    /// Its initialiser uses the key itself once.
    static REENTRANT: Cell<usize> = {
        let n = REENTERED.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            // The inner value (1) is made and then replaced by ours (0).
            assert_eq!(REENTRANT.with(Cell::get), 1);
        }
        Cell::new(n)
    };
}

/// std's `thread_local!`: an initialiser that uses its own key ends with the
/// outer value in place, one value per key.
#[test]
fn greenlet_local_reentrant_initialiser_keeps_the_outer_value() {
    within(10, || {
        greenhack::run(|| {
            greenhack::spawn(|| {
                assert_eq!(REENTRANT.with(Cell::get), 0);
                assert_eq!(REENTRANT.with(Cell::get), 0, "two values for one key");
                REENTRANT.with(|c| c.set(9));
                assert_eq!(REENTRANT.get(), 9);
            })
            .join()
            .unwrap();
        });
    });
}

/// The same while a cancellation unwinds the greenlet: its locals'
/// destructors still see its other locals, not the thread's.
#[test]
fn greenlet_local_destructor_uses_another_local_on_cancel() {
    struct ReadsReqOnDrop(Rc<Cell<u32>>);
    impl Drop for ReadsReqOnDrop {
        fn drop(&mut self) {
            self.0.set(REQ.with(Cell::get));
        }
    }
    greenhack::greenlet_local! {
        static READER: RefCell<Option<ReadsReqOnDrop>> = RefCell::new(None);
    }
    within(10, || {
        let seen = Rc::new(Cell::new(0));
        let s = seen.clone();
        greenhack::run(move || {
            REQ.with(|r| r.set(1)); // the thread's own
            let h = greenhack::spawn(move || {
                REQ.with(|r| r.set(42));
                READER.with(|r| *r.borrow_mut() = Some(ReadsReqOnDrop(s)));
                greenhack::sleep(Duration::from_secs(5));
            });
            // The greenlet runs to its wait in the round this yield gives
            // (a 2 ms sleep could expire before its first poll under
            // qemu-user, and the greenlet was cancelled before it started).
            greenhack::yield_now();
            h.cancel();
            assert!(h.join().unwrap_err().is_cancelled());
        });
        assert_eq!(seen.get(), 42);
    });
}

/// std: on a rendezvous channel `try_recv` takes the message of a sender
/// blocked in `send` (and releases it); `Empty` when none is.
#[test]
fn mpsc_rendezvous_try_recv_takes_from_a_blocked_sender() {
    within(10, || {
        let (tx, rx) = mpsc::sync_channel(0);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        let t = thread::spawn(move || tx.send(8));
        let deadline = Instant::now() + Duration::from_secs(5);
        let got = loop {
            match rx.try_recv() {
                Ok(v) => break v,
                Err(TryRecvError::Empty) if Instant::now() < deadline => thread::sleep(MS),
                Err(e) => panic!("{e:?}"),
            }
        };
        assert_eq!(got, 8);
        assert_eq!(t.join().unwrap(), Ok(()));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    });
}

/// `RwLock` documents the same rule as `Mutex`: a write guard released by
/// a timeout's unwind does not poison; by a panic it does.
#[test]
fn rwlock_write_guard_released_by_timeout_unpoisoned() {
    within(10, || {
        let l = RwLock::new(0);
        let r = greenhack::timeout(5 * MS, || {
            let mut w = l.write().unwrap();
            *w += 1;
            greenhack::sleep(Duration::from_secs(5));
        });
        assert!(r.is_err());
        assert!(!l.is_poisoned());
        assert_eq!(*l.try_read().unwrap(), 1);
    });
}

fn is_unwind_safe<T: std::panic::UnwindSafe + std::panic::RefUnwindSafe + ?Sized>() {}

/// std: `Mutex`, `RwLock` (poisoning makes them so), `Condvar`, the mpsc
/// halves and `MutexGuard` are `UnwindSafe + RefUnwindSafe`, so
/// `catch_unwind(|| m.lock() ...)` compiles with a plain `&Mutex`.
#[test]
fn unwind_safe_as_std() {
    is_unwind_safe::<Mutex<u8>>();
    is_unwind_safe::<Mutex<Cell<u8>>>();
    is_unwind_safe::<RwLock<u8>>();
    is_unwind_safe::<Condvar>();
    is_unwind_safe::<Semaphore>();
    is_unwind_safe::<mpsc::Sender<u8>>();
    is_unwind_safe::<mpsc::SyncSender<u8>>();
    is_unwind_safe::<mpsc::Receiver<u8>>();
    is_unwind_safe::<MutexGuard<'static, u8>>();
    is_unwind_safe::<oneshot::Sender<u8>>();
    is_unwind_safe::<oneshot::Receiver<u8>>();

    let m = Mutex::new(0);
    let r = panic::catch_unwind(|| {
        let _g = m.lock().unwrap();
        panic!("poison");
    });
    assert!(r.is_err());
    assert!(m.is_poisoned());
}

/// A cancelled greenlet's `with_async` cleanup may bound its own waits with
/// a `timeout`, which fires.
#[test]
fn cancelled_cleanup_keeps_its_own_timeouts() {
    within(10, || {
        let inner = Rc::new(Cell::new(None));
        let i2 = inner.clone();
        let started = Rc::new(Cell::new(false));
        let s2 = started.clone();
        greenhack::run(move || {
            let h = greenhack::spawn(move || {
                greenhack::with_async(
                    async {},
                    |()| {
                        s2.set(true);
                        greenhack::sleep(Duration::from_secs(5))
                    },
                    async |(), _exit| {
                        let bounded =
                            greenhack::timeout(5 * MS, || greenhack::sleep(Duration::from_secs(5)));
                        i2.set(Some(bounded.is_err()));
                    },
                )
            });
            // Cancelled once the body waits (not by a sleep's margin: under
            // emulation the greenlet may not have started after 2 ms).
            while !started.get() {
                greenhack::yield_now();
            }
            h.cancel();
            assert!(h.join().unwrap_err().is_cancelled());
        });
        assert_eq!(inner.get(), Some(true));
    });
}

/// A greenlet cancelled inside a `timeout` whose deadline passes while its
/// cleanup waits: the cleanup completes (the cancelled computation's
/// deadline does not cut it, nor turn the cancellation into an `Elapsed`
/// that would let the greenlet run on). In a child process: getting this
/// wrong aborts.
#[test]
fn cancelled_inside_a_timeout_cleanup_outlives_the_deadline() {
    if util::is_child("cancelled_inside_a_timeout_cleanup_outlives_the_deadline") {
        let done = Rc::new(Cell::new(false));
        let d = done.clone();
        let started = Rc::new(Cell::new(false));
        let s2 = started.clone();
        greenhack::run(move || {
            let h = greenhack::spawn(move || {
                greenhack::timeout(200 * MS, || {
                    greenhack::with_async(
                        async {},
                        |()| {
                            s2.set(true);
                            greenhack::sleep(Duration::from_secs(5))
                        },
                        async |(), _exit| {
                            greenhack::sleep(300 * MS); // past the 200 ms deadline
                            d.set(true);
                        },
                    )
                })
            });
            // Cancelled once the body waits, well before the deadline.
            while !started.get() {
                greenhack::yield_now();
            }
            h.cancel();
            assert!(h.join().unwrap_err().is_cancelled());
        });
        assert!(done.get(), "cleanup cut");
        println!("child ok");
        return;
    }
    let out = util::run_child("cancelled_inside_a_timeout_cleanup_outlives_the_deadline");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("child ok"),
        "status {:?}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Cancelled while a `with_async` cleanup runs after a timeout (shielded),
/// inside an outer `with_async` inside the same timeout: the outer cleanup
/// completes, not cut by the expired deadline, and the greenlet ends
/// cancelled. In a child process: getting this wrong aborts.
#[test]
fn cancelled_during_a_shielded_cleanup() {
    if util::is_child("cancelled_during_a_shielded_cleanup") {
        let log = Rc::new(RefCell::new(Vec::new()));
        let l = log.clone();
        greenhack::run(move || {
            let h = greenhack::spawn(move || {
                let l2 = l.clone();
                let _ = greenhack::timeout(5 * MS, || {
                    greenhack::with_async(
                        async {},
                        |()| {
                            greenhack::with_async(
                                async {},
                                |()| greenhack::sleep(Duration::from_secs(5)),
                                async |(), _| {
                                    l2.borrow_mut().push("inner cleanup starts");
                                    greenhack::sleep(Duration::from_secs(5)); // cancelled here
                                },
                            )
                        },
                        async |(), exit| {
                            let cancelled = matches!(exit, greenhack::Exit::Cancelled);
                            greenhack::sleep(20 * MS);
                            l.borrow_mut().push(if cancelled {
                                "outer cancelled"
                            } else {
                                "outer other"
                            });
                        },
                    )
                });
            });
            greenhack::sleep(15 * MS);
            h.cancel();
            assert!(h.join().unwrap_err().is_cancelled());
        });
        assert_eq!(*log.borrow(), ["inner cleanup starts", "outer cancelled"]);
        println!("child ok");
        return;
    }
    let out = util::run_child("cancelled_during_a_shielded_cleanup");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("child ok"),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
