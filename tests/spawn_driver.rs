//! `greenhack::spawn_driver`: a client library's background future polled
//! in the reactor's driver lane, ahead of most greenlets, yet never
//! starving them.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

/// A woken driver runs after at most this many more tasks (the documented
/// "at most 16 more tasks" of `spawn_driver`).
const DRIVER_INTERVAL: usize = 16;

/// What the driver lane is for: a greenlet hands a driver work, and the
/// driver runs after `DRIVER_INTERVAL` tasks, not behind the 99
/// greenlets queued after it (in one FIFO queue it ran last).
#[test]
fn a_driver_woken_by_a_greenlet_runs_before_the_greenlets_queued_behind_it() {
    const DRIVER: i32 = -1;
    let log = Rc::new(RefCell::new(Vec::new()));
    let handed_over = Rc::new(Cell::new(false));
    let driver_waker = Rc::new(RefCell::new(None::<Waker>));
    greenhack::run(|| {
        let (l, h, w) = (log.clone(), handed_over.clone(), driver_waker.clone());
        greenhack::spawn_driver(std::future::poll_fn(move |cx| {
            if h.get() {
                l.borrow_mut().push(DRIVER);
                return Poll::Ready(());
            }
            *w.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }));
        for i in 0..100 {
            let (l, h, w) = (log.clone(), handed_over.clone(), driver_waker.clone());
            drop(greenhack::spawn(move || {
                if i == 0 {
                    h.set(true);
                    w.borrow_mut().take().expect("the driver ran first").wake();
                }
                l.borrow_mut().push(i);
            }));
        }
    });
    let log = log.borrow();
    assert_eq!(log.len(), 101);
    let at = log.iter().position(|&e| e == DRIVER).unwrap();
    assert_eq!(at, DRIVER_INTERVAL, "the driver ran after {at} greenlets");
}

/// The lane is bounded: a driver that wakes itself on every poll runs
/// at most once per drain (twice in a row at a round's boundary), so
/// the greenlets keep running. Unbounded, it would run all of its
/// 10,000 polls before the next greenlet.
#[test]
fn a_driver_that_keeps_waking_itself_does_not_starve_the_greenlets() {
    const DRIVER: i32 = -1;
    let log = Rc::new(RefCell::new(Vec::new()));
    greenhack::run(|| {
        let l = log.clone();
        let mut polls = 0;
        greenhack::spawn_driver(std::future::poll_fn(move |cx| {
            polls += 1;
            l.borrow_mut().push(DRIVER);
            if polls == 10_000 {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }));
        for i in 0..10 {
            let l = log.clone();
            drop(greenhack::spawn(move || {
                for _ in 0..5 {
                    l.borrow_mut().push(i);
                    greenhack::yield_now();
                }
            }));
        }
    });
    let log = log.borrow();
    assert_eq!(log.iter().filter(|&&e| e != DRIVER).count(), 50);
    let greenlets_done = log.iter().rposition(|&e| e != DRIVER).unwrap();
    let longest_run = log[..greenlets_done]
        .split(|&e| e != DRIVER)
        .map(<[i32]>::len)
        .max()
        .unwrap();
    assert!(longest_run <= 2, "{longest_run} driver polls in a row");
}

/// Waking a queued driver again does not queue it twice: one poll
/// answers every wake that came before it.
#[test]
fn wakes_of_a_queued_driver_cost_one_poll() {
    let polls = Rc::new(Cell::new(0));
    let stop = Rc::new(Cell::new(false));
    let waker = Rc::new(RefCell::new(None::<Waker>));
    greenhack::run(|| {
        let (p, s, w) = (polls.clone(), stop.clone(), waker.clone());
        greenhack::spawn_driver(std::future::poll_fn(move |cx| {
            p.set(p.get() + 1);
            if s.get() {
                return Poll::Ready(());
            }
            *w.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }));
        let w = waker.clone();
        drop(greenhack::spawn(move || {
            let w = w.borrow().clone().expect("the driver ran first");
            for _ in 0..5 {
                w.wake_by_ref();
            }
        }));
        let (s, w) = (stop.clone(), waker.clone());
        drop(greenhack::spawn(move || {
            greenhack::yield_now(); // after the drain that answers the five wakes
            s.set(true);
            w.borrow().as_ref().expect("the driver ran").wake_by_ref();
        }));
    });
    // The first poll, one for the five wakes, one for the stop.
    assert_eq!(polls.get(), 3, "a queued driver was polled once per wake");
}

/// A driver's panic ends that driver only: the loop and its greenlets
/// carry on.
#[test]
fn a_panicking_driver_ends_without_stopping_the_loop() {
    let after = Rc::new(Cell::new(false));
    greenhack::run(|| {
        greenhack::spawn_driver(async { panic!("driver failed") });
        let a = after.clone();
        drop(greenhack::spawn(move || {
            greenhack::yield_now();
            a.set(true);
        }));
    });
    assert!(after.get());
}

/// A driver that never finishes is dropped, its destructors run, when
/// its thread's loop shuts down.
#[test]
fn a_pending_driver_is_dropped_when_its_thread_exits() {
    struct Flag(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = dropped.clone();
    std::thread::spawn(move || {
        let flag = Flag(d);
        greenhack::spawn_driver(async move {
            let _flag = flag;
            std::future::pending::<()>().await;
        });
    })
    .join()
    .unwrap();
    assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
}
