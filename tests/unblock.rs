//! `unblock`: blocking work on the pool while the loop keeps running.

use std::cell::Cell;
use std::panic;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The result comes back, computed on another thread.
#[test]
fn smoke() {
    let here = std::thread::current().id();
    let (v, there) = greenhack::unblock(|| (6 * 7, std::thread::current().id()));
    assert_eq!(v, 42);
    assert_ne!(there, here);
}

/// While one greenlet waits on a blocking call, the others run.
#[test]
fn the_loop_runs_while_the_closure_blocks() {
    let ticks = Rc::new(Cell::new(0));
    let t = ticks.clone();
    greenhack::run(|| {
        let done = Rc::new(Cell::new(false));
        let d = done.clone();
        let ticker = greenhack::spawn(move || {
            while !d.get() {
                greenhack::sleep(Duration::from_millis(10));
                t.set(t.get() + 1);
            }
        });
        let worker = greenhack::spawn(move || {
            greenhack::unblock(|| std::thread::sleep(Duration::from_millis(300)));
            done.set(true);
        });
        worker.join().unwrap();
        ticker.join().unwrap();
    });
    assert!(ticks.get() >= 20, "only {} ticks in 300 ms", ticks.get());
}

/// A panic in the closure is re-raised in the caller with its payload.
#[test]
fn panics_propagated() {
    let err = panic::catch_unwind(|| {
        greenhack::unblock(|| -> u32 { panic::panic_any(String::from("disk on fire")) })
    })
    .unwrap_err();
    assert_eq!(err.downcast_ref::<String>().unwrap(), "disk on fire");
    // The same from inside a greenlet: the JoinError carries the payload.
    let joined = greenhack::spawn(|| greenhack::unblock(|| panic::panic_any(7_u8))).join();
    assert_eq!(
        *joined.unwrap_err().into_panic().downcast::<u8>().unwrap(),
        7
    );
}

/// Inside `as_async` on tokio, the waiting task is woken by the pool.
#[test]
fn works_inside_as_async_under_tokio() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let ticked = Rc::new(Cell::new(0));
    let t = ticked.clone();
    let v = rt.block_on(async move {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async move {
                let ticker = tokio::task::spawn_local(async move {
                    for _ in 0..5 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        t.set(t.get() + 1);
                    }
                });
                let v = greenhack::as_async(|| {
                    greenhack::unblock(|| {
                        std::thread::sleep(Duration::from_millis(150));
                        "done"
                    })
                })
                .await;
                ticker.await.unwrap();
                v
            })
            .await
    });
    assert_eq!(v, "done");
    assert_eq!(ticked.get(), 5);
}

/// A cancelled caller stops waiting; the closure still runs to the end and
/// its result is dropped on the pool.
#[test]
fn a_cancelled_caller_leaves_the_closure_running() {
    #[derive(Debug)]
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let started = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let result_dropped = Arc::new(AtomicBool::new(false));
    let (s, f, r) = (started.clone(), finished.clone(), result_dropped.clone());
    let caller = greenhack::spawn(move || {
        greenhack::unblock(move || {
            s.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(500));
            f.store(true, Ordering::SeqCst);
            Flag(r)
        })
    });
    // The closure runs on the pool: the caller waits in `unblock`. (A fixed
    // sleep here was no proof of that: under Valgrind the caller could still
    // be unstarted when it ran out, and the cancel then dropped the closure
    // before `unblock` was ever called.)
    while !started.load(Ordering::SeqCst) {
        greenhack::sleep(Duration::from_millis(1));
    }
    caller.cancel();
    assert!(caller.join().unwrap_err().is_cancelled());
    assert!(
        !finished.load(Ordering::SeqCst),
        "cancel waited for the closure"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !result_dropped.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the result was never dropped"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(finished.load(Ordering::SeqCst));
}

/// With the pool capped at one thread, calls queue and all complete.
#[test]
fn calls_beyond_the_cap_queue() {
    // The cap is process-wide: the other tests of this file, running in
    // parallel, merely queue behind these jobs meanwhile.
    greenhack::set_max_blocking_threads(1);
    let results = greenhack::run(|| {
        let hs: Vec<_> = (0..8)
            .map(|i| greenhack::spawn(move || greenhack::unblock(move || i * 10)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    greenhack::set_max_blocking_threads(512);
    assert_eq!(results, (0..8).map(|i| i * 10).collect::<Vec<_>>());
}
