//! `greenhack::sync::Semaphore`: permits bound concurrency, are served in
//! order, and survive cancelled waiters.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use greenhack::sync::Semaphore;

#[test]
fn bounds_the_greenlets_inside() {
    let sem = Rc::new(Semaphore::new(3));
    let (inside, peak) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    greenhack::run(|| {
        for _ in 0..20 {
            let (sem, inside, peak) = (sem.clone(), inside.clone(), peak.clone());
            let _detached = greenhack::spawn(move || {
                let _p = sem.acquire();
                inside.set(inside.get() + 1);
                peak.set(peak.get().max(inside.get()));
                greenhack::sleep(Duration::from_millis(1));
                inside.set(inside.get() - 1);
            });
        }
    });
    assert_eq!(peak.get(), 3);
    assert_eq!(sem.available_permits(), 3, "every permit came back");
}

#[test]
fn try_acquire_forget_and_add_permits() {
    let sem = Semaphore::new(2);
    let p = sem.try_acquire_many(2).unwrap();
    assert_eq!(p.num_permits(), 2);
    assert!(sem.try_acquire().is_err());
    p.forget();
    assert_eq!(sem.available_permits(), 0, "forgotten permits stay out");
    sem.add_permits(1);
    let p = sem.try_acquire().unwrap();
    drop(p);
    assert_eq!(sem.available_permits(), 1);
}

#[test]
fn large_request_is_not_starved_by_small_ones() {
    let sem = Rc::new(Semaphore::new(2));
    let order = Rc::new(RefCell::new(Vec::new()));
    greenhack::run(|| {
        let held = sem.acquire();
        let (s, o) = (sem.clone(), order.clone());
        let big = greenhack::spawn(move || {
            let _p = s.acquire_many(2);
            o.borrow_mut().push("big");
        });
        greenhack::yield_now();
        let (s, o) = (sem.clone(), order.clone());
        let small = greenhack::spawn(move || {
            let _p = s.acquire();
            o.borrow_mut().push("small");
        });
        greenhack::yield_now();
        // One permit is free, but `small` queues behind `big`.
        assert!(order.borrow().is_empty());
        assert!(sem.try_acquire().is_err(), "no barging past waiters");
        drop(held);
        big.join().unwrap();
        small.join().unwrap();
    });
    assert_eq!(*order.borrow(), ["big", "small"]);
}

#[test]
fn cancelled_waiter_gives_its_permits_back() {
    let sem = Rc::new(Semaphore::new(1));
    let got = Rc::new(Cell::new(false));
    greenhack::run(|| {
        let held = sem.acquire();
        let s = sem.clone();
        let doomed = greenhack::spawn(move || {
            let _p = s.acquire();
            unreachable!("cancelled before it runs");
        });
        greenhack::yield_now();
        let (s, g) = (sem.clone(), got.clone());
        let next = greenhack::spawn(move || {
            let _p = s.acquire();
            g.set(true);
        });
        greenhack::yield_now();
        drop(held); // the permit goes to `doomed`...
        doomed.cancel(); // ...which passes it on
        assert!(doomed.join().unwrap_err().is_cancelled());
        join_soon(next, "the permit was lost with the cancelled waiter");
    });
    assert!(got.get());
    assert_eq!(sem.available_permits(), 1);
}

#[test]
fn released_from_a_plain_thread() {
    let sem = Arc::new(Semaphore::new(0));
    let s = sem.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(5));
        s.add_permits(1);
    });
    greenhack::run(|| {
        greenhack::spawn(move || sem.acquire().forget())
            .join()
            .unwrap()
    });
    t.join().unwrap();
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
