//! as_async, exempt, spawn, run and start_loop on greenhack's own loop and
//! on foreign executors.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use greenhack::{as_async, exempt, spawn};

#[test]
fn exempt_on_a_ready_future_returns_at_once() {
    assert_eq!(exempt(async { 7 }), 7);
    let v = exempt(as_async(|| exempt(async { 8 })));
    assert_eq!(v, 8);
}

#[test]
fn spawned_greenlets_interleave_on_sleep() {
    let log = Rc::new(RefCell::new(Vec::new()));
    greenhack::run(|| {
        for (i, ms) in [(0, 30u64), (1, 10), (2, 20)] {
            let log = log.clone();
            drop(spawn(move || {
                greenhack::sleep(Duration::from_millis(ms));
                log.borrow_mut().push(i);
            }));
        }
    });
    assert_eq!(*log.borrow(), [1, 2, 0]);
}

#[test]
fn join_returns_value_and_panics_as_errors() {
    let ok = spawn(|| "fine");
    let bad = spawn(|| -> u32 { panic!("boom {}", std::hint::black_box(1)) });
    assert_eq!(ok.join().unwrap(), "fine");
    let err = bad.join().unwrap_err();
    assert!(err.is_panic());
    assert_eq!(
        err.into_panic()
            .downcast_ref::<String>()
            .map(String::as_str),
        Some("boom 1")
    );
}

struct Counted(Rc<Cell<u32>>);
impl Drop for Counted {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

#[test]
fn cancel_unwinds_the_greenlet() {
    let drops = Rc::new(Cell::new(0));
    let d = drops.clone();
    let h = spawn(move || {
        let _c = Counted(d);
        greenhack::sleep(Duration::from_secs(3600));
    });
    greenhack::yield_now(); // let it start and reach its sleep
    greenhack::sleep(Duration::from_millis(5));
    assert_eq!(drops.get(), 0);
    h.cancel();
    let err = h.join().unwrap_err();
    assert!(err.is_cancelled());
    assert_eq!(drops.get(), 1);
}

#[test]
fn dropping_as_async_unwinds_and_drops_the_awaited_future() {
    struct DropFlag(Rc<Cell<bool>>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }
    let stack_dropped = Rc::new(Cell::new(false));
    let future_dropped = Rc::new(Cell::new(false));
    let (s, f) = (stack_dropped.clone(), future_dropped.clone());
    let mut fut = Box::pin(as_async(move || {
        let _on_stack = DropFlag(s);
        let flag = DropFlag(f);
        exempt(async move {
            let _held = flag;
            std::future::pending::<()>().await
        });
    }));
    // Poll once by hand: it suspends on the pending future.
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert!(!stack_dropped.get() && !future_dropped.get());
    drop(fut);
    assert!(
        stack_dropped.get(),
        "destructor on the greenlet's stack ran"
    );
    assert!(future_dropped.get(), "the awaited future was dropped");
}

#[test]
fn panic_in_as_async_reaches_the_poller() {
    let r = std::panic::catch_unwind(|| exempt(as_async(|| -> () { std::panic::panic_any(99u8) })));
    assert_eq!(r.unwrap_err().downcast_ref::<u8>(), Some(&99));
}

#[test]
fn a_std_thread_wakes_a_greenlet() {
    let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
    let h = spawn(move || exempt(rx).unwrap());
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        tx.send(5).unwrap();
    });
    assert_eq!(h.join().unwrap(), 5);
    t.join().unwrap();
}

#[test]
fn tokio_current_thread_two_handlers_finish_in_opposite_order() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let order = Rc::new(RefCell::new(Vec::new()));
    let (o1, o2) = (order.clone(), order.clone());
    let (a, b) = rt.block_on(async move {
        let first = as_async(move || {
            exempt(tokio::time::sleep(Duration::from_millis(40)));
            o1.borrow_mut().push("first");
            "result of first"
        });
        let second = as_async(move || {
            exempt(tokio::time::sleep(Duration::from_millis(5)));
            o2.borrow_mut().push("second");
            "result of second"
        });
        tokio::join!(first, second)
    });
    assert_eq!(a, "result of first");
    assert_eq!(b, "result of second");
    assert_eq!(*order.borrow(), ["second", "first"]);
}

#[test]
fn tokio_local_set_spawn_local() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let out = local.block_on(&rt, async {
        let hs: Vec<_> = (0..10u64)
            .map(|i| {
                tokio::task::spawn_local(as_async(move || {
                    exempt(tokio::time::sleep(Duration::from_millis(10 - i)));
                    i * i
                }))
            })
            .collect();
        let mut out = Vec::new();
        for h in hs {
            out.push(h.await.unwrap());
        }
        out
    });
    assert_eq!(out, (0..10u64).map(|i| i * i).collect::<Vec<_>>());
}

#[test]
fn futures_block_on_polls_as_async() {
    let v = futures_executor::block_on(as_async(|| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || tx.send(11).unwrap());
        exempt(rx).unwrap() + 1
    }));
    assert_eq!(v, 12);
}

tokio::task_local! {
    static REQUEST_ID: u32;
}

#[test]
fn tokio_task_local_is_visible_inside_sync_code() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let seen = rt.block_on(REQUEST_ID.scope(
        77,
        as_async(|| {
            // Sync code several frames down reads the task-local.
            fn deep() -> u32 {
                REQUEST_ID.get()
            }
            deep()
        }),
    ));
    assert_eq!(seen, 77);
}

#[test]
fn nested_as_async_inside_exempted_code() {
    let v = exempt(as_async(|| {
        let inner = exempt(async {
            // An as_async awaited by a future that a greenlet exempts on.
            as_async(|| {
                greenhack::sleep(Duration::from_millis(1));
                20
            })
            .await
        });
        inner + 1
    }));
    assert_eq!(v, 21);
}

#[test]
#[cfg(feature = "tokio")]
fn exempt_outside_a_pair_on_a_tokio_thread_fails_and_names_the_fix() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let err = greenhack::try_exempt(async { 1 }).unwrap_err();
        assert!(err.to_string().contains("as_async"), "{err}");
        // Nothing lost: the future comes back and still works.
        assert_eq!(err.into_future().await, 1);
        let panic = std::panic::catch_unwind(|| exempt(async { 2 })).unwrap_err();
        let msg = panic.downcast_ref::<String>().unwrap();
        assert!(msg.contains("greenhack::as_async"), "{msg}");
    });
}

#[test]
fn sleep_inside_foreign_executor_fails_loudly() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let r = rt.block_on(async {
        // Long enough not to be over by its first poll (under qemu-user a
        // millisecond could be), which would never wait, nor fail.
        std::panic::AssertUnwindSafe(as_async(|| greenhack::sleep(Duration::from_secs(60))))
            .catch_unwind_compat()
            .await
    });
    let msg = r.unwrap_err();
    assert!(msg.contains("tokio::time::sleep"), "{msg}");
}

/// `catch_unwind` for a future without the futures crate's combinators.
trait CatchUnwindCompat: std::future::Future + Sized {
    fn catch_unwind_compat(self) -> CatchUnwind<Self> {
        CatchUnwind(Box::pin(self))
    }
}
impl<F: std::future::Future> CatchUnwindCompat for F {}
struct CatchUnwind<F>(std::pin::Pin<Box<F>>);
impl<F: std::future::Future> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(p) => p.map(Ok),
            Err(e) => {
                std::task::Poll::Ready(Err(e.downcast_ref::<String>().cloned().unwrap_or_default()))
            }
        }
    }
}

#[test]
fn start_loop_then_spawn_from_plain_code() {
    std::thread::spawn(|| {
        greenhack::start_loop();
        greenhack::start_loop(); // idempotent
        // Concurrent, not one after the other: every greenlet starts its
        // sleep before any finishes (checked by order, not by the clock).
        let events = Rc::new(RefCell::new(Vec::new()));
        let hs: Vec<_> = (0..50)
            .map(|i| {
                let events = events.clone();
                spawn(move || {
                    events.borrow_mut().push("start");
                    greenhack::sleep(Duration::from_millis(30));
                    events.borrow_mut().push("end");
                    i
                })
            })
            .collect();
        let sum: i32 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(sum, (0..50).sum());
        let events = events.borrow();
        assert_eq!(events.len(), 100);
        assert!(events[..50].iter().all(|e| *e == "start"), "{events:?}");
    })
    .join()
    .unwrap();
}

#[test]
fn exempt_on_a_raw_greenlet_inside_as_async_waits_there_not_on_the_pair() {
    // A raw Greenlet resumed from a pair's greenlet runs on a stack of its
    // own: its exempt must not suspend the pair's greenlet (whose stack it
    // is not on), but wait where it is, as outside any greenlet.
    struct PendingOnce(bool);
    impl std::future::Future for PendingOnce {
        type Output = u32;
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<u32> {
            if std::mem::replace(&mut self.0, true) {
                std::task::Poll::Ready(5)
            } else {
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        }
    }
    let v = futures_executor::block_on(as_async(|| {
        let before = exempt(PendingOnce(false));
        let mut raw = greenhack::greenlet::Greenlet::<(), (), u32>::new(|_, ()| {
            exempt(std::future::ready(1)) + exempt(PendingOnce(false))
        });
        let inner = raw.resume(()).into_complete();
        (before, inner)
    }));
    assert_eq!(v, (5, Some(6)));
}
