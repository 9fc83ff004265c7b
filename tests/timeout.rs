//! `greenhack::timeout`: sync code given up on at a deadline, unwound from
//! its wait point.

use std::cell::Cell;
use std::io::{Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use greenhack::net::UnixStream;
use greenhack::{Elapsed, run, sleep, spawn, timeout};

struct CountDrop(Rc<Cell<u32>>);

impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

#[inline(never)]
fn handler(s: &mut UnixStream, drops: &Rc<Cell<u32>>) -> std::io::Result<usize> {
    let _frame1 = CountDrop(drops.clone());
    parse(s, drops)
}

#[inline(never)]
fn parse(s: &mut UnixStream, drops: &Rc<Cell<u32>>) -> std::io::Result<usize> {
    let _frame2 = CountDrop(drops.clone());
    read_header(s, drops)
}

#[inline(never)]
fn read_header(s: &mut UnixStream, drops: &Rc<Cell<u32>>) -> std::io::Result<usize> {
    let _frame3 = CountDrop(drops.clone());
    s.read(&mut [0; 16])
}

/// Three frames deep, a read that would wait forever is abandoned; every
/// frame's destructor runs; the socket still works afterwards.
fn abandons_a_deep_read() {
    let drops = Rc::new(Cell::new(0));
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let start = Instant::now();
    let r = timeout(Duration::from_millis(30), || handler(&mut a, &drops));
    let _: Elapsed = r.expect_err("the read never completes");
    assert!(start.elapsed() >= Duration::from_millis(30));
    assert_eq!(drops.get(), 3, "each frame was unwound");
    b.write_all(b"later").unwrap();
    let mut buf = [0; 5];
    a.read_exact(&mut buf).unwrap();
    assert_eq!(
        &buf, b"later",
        "the socket is still usable, nothing consumed"
    );
}

#[test]
fn a_deep_socket_read_is_abandoned_in_a_greenlet() {
    run(|| spawn(abandons_a_deep_read).join().unwrap());
}

#[test]
fn a_deep_socket_read_is_abandoned_on_a_plain_thread() {
    abandons_a_deep_read();
}

#[test]
fn a_deep_socket_read_is_abandoned_inside_as_async_on_tokio() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(greenhack::as_async(abandons_a_deep_read));
}

#[test]
fn code_that_finishes_in_time_returns_ok() {
    let v = run(|| {
        timeout(Duration::from_secs(5), || {
            sleep(Duration::from_millis(5));
            42
        })
    });
    assert_eq!(v, Ok(42));
}

#[test]
fn nested_scopes_the_earliest_wins_and_only_its_scope_catches() {
    run(|| {
        // The outer deadline comes first: the inner scope does not catch it.
        let inner_ran_to_end = Rc::new(Cell::new(false));
        let flag = inner_ran_to_end.clone();
        let outer = timeout(Duration::from_millis(20), move || {
            let inner = timeout(Duration::from_secs(10), || sleep(Duration::from_secs(60)));
            flag.set(true);
            inner
        });
        assert!(outer.is_err(), "{outer:?}");
        assert!(
            !inner_ran_to_end.get(),
            "the outer expiry passed through the inner scope"
        );
        // The inner deadline comes first: the inner scope catches it and the
        // outer code carries on.
        let outer = timeout(Duration::from_secs(10), || {
            let inner = timeout(Duration::from_millis(10), || sleep(Duration::from_secs(60)));
            assert!(inner.is_err());
            "outer finished"
        });
        assert_eq!(outer, Ok("outer finished"));
    });
}

#[test]
fn a_panic_inside_passes_through_unchanged() {
    let err = std::panic::catch_unwind(|| {
        run(|| timeout(Duration::from_secs(1), || -> () { panic!("boom") }))
    })
    .unwrap_err();
    assert_eq!(err.downcast_ref::<&str>(), Some(&"boom"));
}

#[test]
fn other_greenlets_keep_running_and_an_expired_scope_ends_only_its_code() {
    let ticks = Rc::new(Cell::new(0));
    let t = ticks.clone();
    run(move || {
        let ticker = spawn(move || {
            for _ in 0..5 {
                sleep(Duration::from_millis(5));
                t.set(t.get() + 1);
            }
        });
        let r = timeout(Duration::from_millis(50), || sleep(Duration::from_secs(60)));
        assert!(r.is_err());
        ticker.join().unwrap();
    });
    assert_eq!(ticks.get(), 5);
}

#[test]
fn elapsed_converts_to_timed_out() {
    let e: std::io::Error = timeout(Duration::from_millis(1), || sleep(Duration::from_secs(1)))
        .unwrap_err()
        .into();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
}
