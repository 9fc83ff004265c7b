//! `greenhack::sync::Mutex`: suspends greenlets, not threads; FIFO hand-off;
//! cancellation never loses the lock; std's poisoning; works on plain
//! threads, across loops and under tokio.

use std::cell::Cell;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, TryLockError};
use std::time::{Duration, Instant};

use greenhack::sync::Mutex;

#[test]
fn held_across_sleep_by_two_greenlets() {
    // With std::sync::Mutex this hangs the thread: the second lock() blocks
    // the OS thread, so the holder never wakes from its sleep.
    let m = Rc::new(Mutex::new(Vec::new()));
    greenhack::run(|| {
        for id in 0..2 {
            let m = m.clone();
            let _detached = greenhack::spawn(move || {
                let mut v = m.lock().unwrap();
                v.push((id, "in"));
                greenhack::sleep(Duration::from_millis(10));
                v.push((id, "out"));
            });
        }
    });
    assert_eq!(
        *m.lock().unwrap(),
        [(0, "in"), (0, "out"), (1, "in"), (1, "out")],
        "the critical sections did not interleave"
    );
}

#[test]
fn thousand_greenlets_count_exactly() {
    let m = Rc::new(Mutex::new(0u64));
    greenhack::run(|| {
        for _ in 0..1000 {
            let m = m.clone();
            let _detached = greenhack::spawn(move || {
                for _ in 0..100 {
                    let mut n = m.lock().unwrap();
                    let seen = *n;
                    greenhack::yield_now(); // everyone else runs here
                    *n = seen + 1;
                }
            });
        }
    });
    assert_eq!(*m.lock().unwrap(), 100_000);
}

#[test]
fn waiters_get_the_lock_in_arrival_order() {
    let m = Rc::new(Mutex::new(Vec::new()));
    greenhack::run(|| {
        let guard = m.lock().unwrap();
        for id in 0..5 {
            let m = m.clone();
            let _detached = greenhack::spawn(move || m.lock().unwrap().push(id));
            greenhack::yield_now(); // let it queue before the next one
        }
        drop(guard);
        // A newcomer queues behind the five, though the lock is in transit.
        assert!(matches!(m.try_lock(), Err(TryLockError::WouldBlock)));
        m.lock().unwrap().push(99);
    });
    assert_eq!(*m.lock().unwrap(), [0, 1, 2, 3, 4, 99]);
}

#[test]
fn cancelled_waiter_does_not_lose_the_lock() {
    let m = Rc::new(Mutex::new(0));
    let unwound = Rc::new(Cell::new(false));
    greenhack::run(|| {
        let guard = m.lock().unwrap();
        let (m1, flag) = (m.clone(), unwound.clone());
        let doomed = greenhack::spawn(move || {
            struct OnUnwind(Rc<Cell<bool>>);
            impl Drop for OnUnwind {
                fn drop(&mut self) {
                    self.0.set(true);
                }
            }
            let _o = OnUnwind(flag);
            *m1.lock().unwrap() += 100; // never gets here
        });
        greenhack::yield_now(); // `doomed` queues
        let m2 = m.clone();
        let next = greenhack::spawn(move || *m2.lock().unwrap() += 1);
        greenhack::yield_now(); // `next` queues behind it
        // Hand the lock to `doomed`, then cancel it before it runs: it must
        // pass the lock on to `next`.
        drop(guard);
        doomed.cancel();
        assert!(doomed.join().unwrap_err().is_cancelled());
        join_soon(next, "the lock was lost with the cancelled waiter");
    });
    assert!(unwound.get(), "the cancelled greenlet was unwound");
    assert_eq!(*m.lock().unwrap(), 1);
}

#[test]
fn cancelled_queued_waiter_leaves_the_queue() {
    let m = Rc::new(Mutex::new(0));
    greenhack::run(|| {
        let guard = m.lock().unwrap();
        let m1 = m.clone();
        let doomed = greenhack::spawn(move || *m1.lock().unwrap() += 100);
        greenhack::yield_now();
        doomed.cancel();
        assert!(doomed.join().unwrap_err().is_cancelled());
        drop(guard);
        // Nobody waits any more: the lock is free, not handed to a ghost.
        let g = m.try_lock().expect("free after the only waiter left");
        assert_eq!(*g, 0);
    });
}

#[test]
fn poisoned_by_a_panicking_holder() {
    let m = Rc::new(Mutex::new(7));
    greenhack::run(|| {
        let m1 = m.clone();
        let h = greenhack::spawn(move || {
            let _g = m1.lock().unwrap();
            panic!("boom while holding");
        });
        let err = h.join().unwrap_err();
        assert_eq!(
            err.into_panic().downcast_ref::<&str>(),
            Some(&"boom while holding")
        );
    });
    assert!(m.is_poisoned());
    let poisoned = m.lock().unwrap_err();
    assert_eq!(**poisoned.get_ref(), 7, "the data is still reachable");
    drop(poisoned);
    assert!(matches!(m.try_lock(), Err(TryLockError::Poisoned(_))));
    m.clear_poison();
    assert_eq!(*m.lock().unwrap(), 7);
    let m = Rc::try_unwrap(m).unwrap();
    assert_eq!(m.into_inner().unwrap(), 7);
}

#[test]
fn guard_taken_while_panicking_does_not_poison() {
    let m = Mutex::new(0);
    struct LocksInDrop<'a>(&'a Mutex<i32>);
    impl Drop for LocksInDrop<'_> {
        fn drop(&mut self) {
            *self.0.lock().unwrap() += 1;
        }
    }
    let r = panic::catch_unwind(AssertUnwindSafe(|| {
        let _d = LocksInDrop(&m);
        panic!("unwinding");
    }));
    assert!(r.is_err());
    assert!(!m.is_poisoned());
    assert_eq!(*m.lock().unwrap(), 1);
}

#[test]
fn try_lock_get_mut_into_inner() {
    let mut m = Mutex::new(String::from("a"));
    {
        let g = m.try_lock().unwrap();
        assert!(matches!(m.try_lock(), Err(TryLockError::WouldBlock)));
        drop(g);
    }
    m.get_mut().unwrap().push('b');
    assert_eq!(
        format!("{m:?}"),
        r#"Mutex { data: "ab", poisoned: false, .. }"#
    );
    assert_eq!(m.into_inner().unwrap(), "ab");
}

#[test]
fn plain_threads_with_no_loop() {
    // Each thread blocks in lock() like std's; a holder sleeps inside.
    let m = Arc::new(Mutex::new(0u32));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let mut g = m.lock().unwrap();
                    let seen = *g;
                    if i % 50 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    *g = seen + 1;
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(*m.lock().unwrap(), 800);
}

#[test]
fn shared_by_greenlets_on_two_loops() {
    let m = Arc::new(Mutex::new(0u32));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || {
                greenhack::run(|| {
                    for _ in 0..50 {
                        let m = m.clone();
                        let _detached = greenhack::spawn(move || {
                            for _ in 0..20 {
                                let mut g = m.lock().unwrap();
                                let seen = *g;
                                greenhack::yield_now();
                                *g = seen + 1;
                            }
                        });
                    }
                })
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(*m.lock().unwrap(), 2000);
}

#[test]
fn inside_as_async_on_tokio_current_thread() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let m = Rc::new(Mutex::new(Vec::new()));
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let tasks: Vec<_> = (0..2)
            .map(|id| {
                let m = m.clone();
                tokio::task::spawn_local(greenhack::as_async(move || {
                    let mut v = m.lock().unwrap();
                    v.push(id);
                    greenhack::exempt(tokio::time::sleep(Duration::from_millis(10)));
                    v.push(id);
                }))
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert_eq!(*m.lock().unwrap(), [0, 0, 1, 1]);
}

#[test]
#[cfg(feature = "tokio")] // hosting greenhack's loop in tokio
fn greenlets_on_a_loop_hosted_in_tokio_hand_off_in_order() {
    // greenhack's loop inside tokio (an as_async polled by tokio): spawned
    // greenlets queue behind the as_async's own greenlet, which holds the
    // lock across a tokio sleep; each hand-off wakes through the hosted
    // loop, in arrival order.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let order = rt.block_on(greenhack::as_async(|| {
        let m = Rc::new(Mutex::new(Vec::new()));
        let guard = m.lock().unwrap();
        let waiters: Vec<_> = (0..5)
            .map(|id| {
                let m = m.clone();
                let h = greenhack::spawn(move || {
                    for _ in 0..3 {
                        let mut v = m.lock().unwrap();
                        greenhack::yield_now();
                        v.push(id);
                    }
                });
                greenhack::yield_now(); // let it queue before the next one
                h
            })
            .collect();
        greenhack::exempt(tokio::time::sleep(Duration::from_millis(5)));
        drop(guard);
        waiters.into_iter().for_each(|h| h.join().unwrap());
        Rc::try_unwrap(m).unwrap().into_inner().unwrap()
    }));
    // FIFO: each re-locker queues behind the four others.
    let round: Vec<i32> = (0..5).collect();
    assert_eq!(order, round.repeat(3));
}

#[test]
fn blocks_a_tokio_worker_outside_any_greenlet() {
    // exempt refuses here (with the `tokio` feature); lock() parks the
    // thread instead, as std's would.
    // Built first: under qemu-user building it took most of the holder's
    // sleep, and the lock then barely waited.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let m = Arc::new(Mutex::new(0));
    let held = Arc::new(AtomicBool::new(false));
    let (m1, held1) = (m.clone(), held.clone());
    let holder = std::thread::spawn(move || {
        let mut g = m1.lock().unwrap();
        held1.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
        *g += 1;
    });
    while !held.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    let start = Instant::now();
    let seen = rt.block_on(async { *m.lock().unwrap() });
    assert_eq!(seen, 1, "waited for the holder");
    assert!(start.elapsed() >= Duration::from_millis(10));
    holder.join().unwrap();
}

#[test]
fn a_waiter_polled_by_another_task_is_woken_through_it() {
    // The as_async future of a queued waiter is polled first by one task,
    // then by another (as when it moves between executors' tasks): the
    // hand-off must wake the task that polled it last.
    struct Flag(AtomicBool);
    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let flag = || Arc::new(Flag(AtomicBool::new(false)));
    let (first, second) = (flag(), flag());
    let m = Arc::new(Mutex::new(0));
    let guard = m.lock().unwrap();
    let m1 = m.clone();
    let mut waiter = std::pin::pin!(greenhack::as_async(move || *m1.lock().unwrap() += 1));
    for f in [&first, &second] {
        let waker = std::task::Waker::from(f.clone());
        let polled = waiter
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker));
        assert!(polled.is_pending(), "the lock is held");
    }
    drop(guard);
    assert!(second.0.load(Ordering::SeqCst), "the last poller was woken");
    assert!(
        !first.0.load(Ordering::SeqCst),
        "the earlier poller was not"
    );
    let waker = std::task::Waker::from(second);
    let polled = waiter
        .as_mut()
        .poll(&mut std::task::Context::from_waker(&waker));
    assert!(polled.is_ready(), "the lock was handed over");
    assert_eq!(*m.lock().unwrap(), 1);
}

#[test]
fn threads_and_greenlets_of_two_loops_contend_with_cancellations() {
    // The queue's lock is a bit of the mutex's state, taken and released by
    // greenlets of two loops and by plain threads at once, while some
    // waiters are cancelled: every increment made is counted once, and no
    // hand-off is lost (a lost one would hang the test).
    const THREADS: u64 = 3;
    const THREAD_OPS: u64 = 20_000;
    const GREENLET_OPS: u64 = 200;
    let m = Arc::new(Mutex::new(0u64));
    let made = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..THREADS {
        let (m, made) = (m.clone(), made.clone());
        threads.push(std::thread::spawn(move || {
            for _ in 0..THREAD_OPS {
                *m.lock().unwrap() += 1;
                made.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for _ in 0..2 {
        let (m, made) = (m.clone(), made.clone());
        threads.push(std::thread::spawn(move || {
            greenhack::run(|| {
                for i in 0..75 {
                    let (m, made) = (m.clone(), made.clone());
                    let _detached = greenhack::spawn(move || {
                        for _ in 0..GREENLET_OPS {
                            let mut g = m.lock().unwrap();
                            if i % 2 == 0 {
                                greenhack::yield_now();
                            }
                            *g += 1;
                            made.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                // These never hold the lock across a switch, so cancelling
                // them catches them queued, handed the lock, or between two
                // critical sections (cancelling a holder would poison it).
                let doomed: Vec<_> = (0..25)
                    .map(|_| {
                        let (m, made) = (m.clone(), made.clone());
                        greenhack::spawn(move || {
                            loop {
                                greenhack::yield_now();
                                *m.lock().unwrap() += 1;
                                made.fetch_add(1, Ordering::Relaxed);
                            }
                        })
                    })
                    .collect();
                for _ in 0..200 {
                    greenhack::yield_now();
                }
                for h in doomed {
                    h.cancel();
                }
            })
        }));
    }
    threads.into_iter().for_each(|t| t.join().unwrap());
    let made = made.load(Ordering::Relaxed);
    assert!(
        made >= THREADS * THREAD_OPS + 2 * 75 * GREENLET_OPS,
        "only the cancelled ones stopped early"
    );
    assert_eq!(*m.lock().unwrap(), made);
}

/// Joins `h` if it finishes within 5 s; otherwise cancels it and fails,
/// naming `what` (a lost hand-off would leave it waiting forever).
fn join_soon<T>(h: greenhack::JoinHandle<T>, what: &str) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !h.is_finished() && std::time::Instant::now() < deadline {
        greenhack::sleep(std::time::Duration::from_millis(1));
    }
    if !h.is_finished() {
        h.cancel();
        panic!("{what}");
    }
    h.join().unwrap()
}
