//! `greenhack::sync::Condvar`: wait / notify_one / notify_all between
//! greenlets and threads, timeouts, poisoning, cancellation.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use greenhack::sync::{Condvar, Mutex};

/// Spawns `n` greenlets that each wait until a ticket is available, take
/// it, and count themselves in `woken`.
fn spawn_ticket_waiters(
    n: usize,
    state: &Rc<(Mutex<u32>, Condvar)>,
    woken: &Rc<Cell<usize>>,
) -> Vec<greenhack::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let (state, woken) = (state.clone(), woken.clone());
            greenhack::spawn(move || {
                let (m, cv) = &*state;
                let mut tickets = cv.wait_while(m.lock().unwrap(), |t| *t == 0).unwrap();
                *tickets -= 1;
                woken.set(woken.get() + 1);
            })
        })
        .collect()
}

#[test]
fn notify_one_wakes_one_and_notify_all_wakes_the_rest() {
    let state = Rc::new((Mutex::new(0u32), Condvar::new()));
    let woken = Rc::new(Cell::new(0));
    greenhack::run(|| {
        let hs = spawn_ticket_waiters(3, &state, &woken);
        greenhack::sleep(Duration::from_millis(2));
        assert_eq!(woken.get(), 0, "nobody passes without a ticket");

        *state.0.lock().unwrap() += 1;
        state.1.notify_one();
        greenhack::sleep(Duration::from_millis(2));
        assert_eq!(woken.get(), 1, "notify_one woke exactly one");

        *state.0.lock().unwrap() += 2;
        state.1.notify_all();
        hs.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(woken.get(), 3);
    });
    assert_eq!(*state.0.lock().unwrap(), 0);
}

#[test]
fn notify_all_without_tickets_lets_everyone_recheck() {
    let state = Rc::new((Mutex::new(0u32), Condvar::new()));
    let woken = Rc::new(Cell::new(0));
    greenhack::run(|| {
        let hs = spawn_ticket_waiters(4, &state, &woken);
        greenhack::sleep(Duration::from_millis(2));
        state.1.notify_all(); // no tickets: all go back to waiting
        greenhack::sleep(Duration::from_millis(2));
        assert_eq!(woken.get(), 0);
        *state.0.lock().unwrap() = 4;
        state.1.notify_all();
        hs.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(woken.get(), 4);
    });
}

#[test]
fn notified_from_a_plain_thread() {
    let state = Arc::new((Mutex::new(false), Condvar::new()));
    let s = state.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(10));
        *s.0.lock().unwrap() = true;
        s.1.notify_one();
    });
    let ticks = Rc::new(Cell::new(0));
    greenhack::run(|| {
        let ticks2 = ticks.clone();
        let ticker = greenhack::spawn(move || {
            for _ in 0..3 {
                greenhack::sleep(Duration::from_millis(1));
                ticks2.set(ticks2.get() + 1);
            }
        });
        let (m, cv) = &*state;
        let g = cv.wait_while(m.lock().unwrap(), |ready| !*ready).unwrap();
        assert!(*g);
        ticker.join().unwrap();
    });
    assert_eq!(
        ticks.get(),
        3,
        "the loop kept running while the waiter waited"
    );
    t.join().unwrap();
}

#[test]
fn wait_timeout_times_out_and_wait_timeout_while_reports_it() {
    let (m, cv) = (Mutex::new(0), Condvar::new());
    greenhack::run(|| {
        let start = Instant::now();
        let (g, r) = cv
            .wait_timeout(m.lock().unwrap(), Duration::from_millis(10))
            .unwrap();
        assert!(r.timed_out());
        assert!(start.elapsed() >= Duration::from_millis(10));
        drop(g);
        let (g, r) = cv
            .wait_timeout_while(m.lock().unwrap(), Duration::from_millis(10), |v| *v == 0)
            .unwrap();
        assert!(r.timed_out(), "the condition still held");
        assert_eq!(*g, 0);
    });
}

#[test]
fn wait_timeout_while_returns_early_when_the_condition_clears() {
    let state = Rc::new((Mutex::new(0), Condvar::new()));
    greenhack::run(|| {
        let s = state.clone();
        let _detached = greenhack::spawn(move || {
            greenhack::sleep(Duration::from_millis(5));
            *s.0.lock().unwrap() = 1;
            s.1.notify_all();
        });
        let start = Instant::now();
        let (g, r) = state
            .1
            .wait_timeout_while(state.0.lock().unwrap(), Duration::from_secs(10), |v| {
                *v == 0
            })
            .unwrap();
        assert!(!r.timed_out());
        assert_eq!(*g, 1);
        assert!(start.elapsed() < Duration::from_secs(5));
    });
}

#[test]
fn cancelled_notified_waiter_passes_the_notification_on() {
    let state = Rc::new((Mutex::new(()), Condvar::new()));
    let woken = Rc::new(Cell::new(0));
    greenhack::run(|| {
        let spawn_waiter = || {
            let (state, woken) = (state.clone(), woken.clone());
            greenhack::spawn(move || {
                let g = state.0.lock().unwrap();
                let _g = state.1.wait(g).unwrap();
                woken.set(woken.get() + 1);
            })
        };
        let first = spawn_waiter();
        greenhack::yield_now();
        let second = spawn_waiter();
        greenhack::yield_now();
        state.1.notify_one(); // goes to `first`...
        first.cancel(); // ...which leaves before acting on it
        assert!(first.join().unwrap_err().is_cancelled());
        join_soon(
            second,
            "the notification was lost with the cancelled waiter",
        );
    });
    assert_eq!(woken.get(), 1);
}

#[test]
fn wait_reports_a_mutex_poisoned_meanwhile() {
    let state = Rc::new((Mutex::new(5), Condvar::new()));
    greenhack::run(|| {
        let s = state.clone();
        let waiter = greenhack::spawn(move || {
            let g = s.0.lock().unwrap();
            match s.1.wait(g) {
                Ok(_) => panic!("expected poisoning"),
                Err(p) => *p.into_inner(),
            }
        });
        greenhack::yield_now();
        let s = state.clone();
        let poisoner = greenhack::spawn(move || {
            let _g = s.0.lock().unwrap();
            s.1.notify_all();
            panic!("poison it");
        });
        assert!(poisoner.join().unwrap_err().is_panic());
        assert_eq!(waiter.join().unwrap(), 5);
    });
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
