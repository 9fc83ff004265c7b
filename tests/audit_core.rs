//! The core API as a user writes against its documentation: greenlets,
//! stacks, the pair (`run`, `start_loop`, `as_async`, `exempt`), spawned
//! greenlets and their handles, the core loop's timers, `debug`, and the
//! types' traits. Every test names the documented behaviour it checks; the
//! ones that abort or could hang run in a child process with a timeout.

mod util;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::process::Output;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use greenhack::greenlet::{Builder, Greenlet, GreenletResult, Suspender};
use greenhack::{Elapsed, ExemptError, JoinError, JoinHandle};

// ----- helpers ----------------------------------------------------------------------

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Sleeps in steps until `cond` holds; fails after 10 s. Greenlets woken at
/// the same turn as the caller may run after it, so "after a longer sleep"
/// is no proof that they ran: poll for it.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting until {what}"
        );
        greenhack::sleep(Duration::from_millis(1));
    }
}

/// The stack pointer of the caller. Under AddressSanitizer a local's
/// address may be on its fake stack (the heap), so tests that measure stack
/// depth read the register.
#[inline(always)]
fn current_sp() -> usize {
    let sp: usize;
    // SAFETY: reads a register.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    // SAFETY: reads a register.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        std::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    sp
}

/// True under Valgrind (its preload library is in the environment).
fn under_valgrind() -> bool {
    std::env::var("LD_PRELOAD").is_ok_and(|p| p.contains("vgpreload"))
}

/// True in CI's AddressSanitizer pass (`.ci/sanitizers` sets the variable).
fn under_asan() -> bool {
    std::env::var_os("ASAN_OPTIONS").is_some()
}

/// Counts its drops.
struct DropCounter(Rc<Cell<usize>>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

fn catch<T>(f: impl FnOnce() -> T) -> Result<T, Box<dyn std::any::Any + Send>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "<non-string payload>".into())
}

/// A waker that counts its wakes.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Pending until `ready` is set; records the waker of its last poll.
struct Gate {
    ready: Rc<Cell<bool>>,
    waker: Rc<RefCell<Option<Waker>>>,
}

impl Future for Gate {
    type Output = &'static str;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<&'static str> {
        if self.ready.get() {
            Poll::Ready("opened")
        } else {
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

// ----- greenlets: values ----------------------------------------------------------------

#[test]
fn greenlet_passes_values_of_every_size_both_ways() {
    // Word-sized and larger values, in and out, and a large result.
    let mut g = Greenlet::new(|s: &Suspender<String, [u64; 4]>, first: String| {
        let mut log = vec![first];
        let mut y = [1u64, 2, 3, 4];
        for _ in 0..3 {
            let next = s.suspend(y);
            log.push(next);
            y = y.map(|v| v * 10);
        }
        log
    });
    assert!(!g.is_started());
    assert!(!g.is_finished());
    assert_eq!(g.resume("a".into()), GreenletResult::Yielded([1, 2, 3, 4]));
    assert!(g.is_started());
    assert_eq!(g.resume("b".into()).into_yielded(), Some([10, 20, 30, 40]));
    assert_eq!(
        g.resume("c".into()).into_yielded(),
        Some([100, 200, 300, 400])
    );
    assert_eq!(
        g.resume("d".into()).into_complete(),
        Some(vec!["a".to_string(), "b".into(), "c".into(), "d".into()])
    );
    assert!(g.is_finished());
    assert!(g.is_started(), "a finished greenlet has started");
}

#[test]
fn greenlet_zero_sized_and_option_values() {
    let mut g = Greenlet::new(|s: &Suspender<Option<u8>, Option<Box<u32>>>, first| {
        let a = s.suspend(None);
        let b = s.suspend(Some(Box::new(7)));
        (first, a, b)
    });
    assert_eq!(g.resume(Some(1)), GreenletResult::Yielded(None));
    assert_eq!(g.resume(None), GreenletResult::Yielded(Some(Box::new(7))));
    assert_eq!(
        g.resume(Some(3)).into_complete(),
        Some((Some(1), None, Some(3)))
    );
}

#[test]
fn greenlet_completing_on_first_resume_returns_its_result() {
    let mut g = Greenlet::<u32, (), u32>::new(|_, x| x + 1);
    assert_eq!(g.resume(41), GreenletResult::Complete(42));
    assert!(g.is_finished());
    assert_eq!(g.stack_range(), None, "the stack went back to the pool");
}

#[test]
fn resuming_a_finished_greenlet_panics_naming_it() {
    let mut g: Greenlet<(), (), ()> = Builder::new()
        .name("done-already")
        .build(|_, ()| ())
        .unwrap();
    g.resume(());
    let err = catch(|| g.resume(())).unwrap_err();
    let msg = panic_message(&*err);
    assert!(
        msg.contains("'done-already'") && msg.contains("finished"),
        "message: {msg}"
    );
    // Unnamed: the id.
    let mut g = Greenlet::<(), (), ()>::new(|_, ()| ());
    let id = g.id();
    g.resume(());
    let msg = panic_message(&*catch(|| g.resume(())).unwrap_err());
    assert!(msg.contains(&format!("greenlet {id}")), "message: {msg}");
}

#[test]
fn suspender_and_greenlet_agree_on_the_id_and_ids_are_unique() {
    let seen = Rc::new(Cell::new(0));
    let s2 = seen.clone();
    let mut g = Greenlet::<(), (), ()>::new(move |s, ()| s2.set(s.id()));
    g.resume(());
    assert_eq!(seen.get(), g.id());
    let other = Greenlet::<(), (), ()>::new(|_, ()| ());
    assert_ne!(other.id(), g.id());
    let from_thread = std::thread::spawn(|| Greenlet::<(), (), ()>::new(|_, ()| ()).id())
        .join()
        .unwrap();
    assert_ne!(from_thread, g.id());
    assert_ne!(from_thread, other.id());
}

#[test]
fn builder_names_the_greenlet_and_sizes_its_stack() {
    let g: Greenlet<(), (), ()> = Builder::new()
        .name("sized")
        .stack_size(1 << 20)
        .build(|_, ()| ())
        .unwrap();
    assert_eq!(g.name(), Some("sized"));
    let range = g.stack_range().unwrap();
    assert!(range.len() >= 1 << 20, "{range:x?}");
    assert!(range.len() < (1 << 20) + 64 * 1024, "{range:x?}");
    // Defaults.
    let g = Greenlet::<(), (), ()>::new(|_, ()| ());
    assert_eq!(g.name(), None);
    assert!(g.stack_range().unwrap().len() >= greenhack::stack::DEFAULT_STACK_SIZE);
    // `Default` is `new`.
    let b: Builder = Default::default();
    let g: Greenlet<(), (), ()> = b.build(|_, ()| ()).unwrap();
    assert_eq!(g.name(), None);
}

#[test]
fn stack_size_zero_is_raised_to_the_minimum() {
    // Documented: "rounded up to whole pages, at least MIN_STACK_SIZE".
    for size in [0, 1, 4095, greenhack::stack::MIN_STACK_SIZE - 1] {
        let mut g: Greenlet<(), (), u32> =
            Builder::new().stack_size(size).build(|_, ()| 5).unwrap();
        let len = g.stack_range().unwrap().len();
        assert!(len >= greenhack::stack::MIN_STACK_SIZE, "{size}: {len}");
        assert_eq!(len % 4096, 0);
        assert_eq!(g.resume(()).into_complete(), Some(5));
    }
}

#[test]
fn absurd_stack_sizes_are_clear_errors() {
    // An overflowing size: InvalidInput naming the size.
    let err = Builder::new()
        .stack_size(usize::MAX)
        .build::<(), (), (), _>(|_, ()| ())
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("greenhack"), "{err}");
    // A size the address space cannot hold: OutOfMemory naming the fix.
    let err = Builder::new()
        .stack_size(1 << 60)
        .build::<(), (), (), _>(|_, ()| ())
        .unwrap_err();
    if under_valgrind() {
        // Valgrind's mmap refuses such a length with EINVAL, not ENOMEM.
        assert!(
            err.to_string().contains("cannot map a greenlet stack"),
            "{err}"
        );
    } else {
        assert_eq!(err.kind(), std::io::ErrorKind::OutOfMemory, "{err}");
        assert!(err.to_string().contains("stack_size"), "{err}");
    }
    // `Greenlet::new`'s documented panic is the same error; `as_async` and
    // `spawn` through the builder return it.
    assert!(
        Builder::new()
            .stack_size(usize::MAX)
            .as_async(|| ())
            .is_err()
    );
    greenhack::run(|| {
        assert!(Builder::new().stack_size(usize::MAX).spawn(|| ()).is_err());
    });
}

#[test]
fn a_closure_too_big_for_its_stack_is_refused() {
    let big = [7u8; 64 * 1024];
    let err = Builder::new()
        .stack_size(greenhack::stack::MIN_STACK_SIZE)
        .build::<(), (), u8, _>(move |_, ()| big[100])
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("stack_size"), "{err}");
    // With room, it works. (AddressSanitizer's redzones and fake frames
    // multiply the copies of the 64 KiB closure on the way in.)
    let room = if under_asan() { 16 << 20 } else { 1 << 20 };
    let mut g = Builder::new()
        .stack_size(room)
        .build::<(), (), u8, _>(move |_, ()| big[100])
        .unwrap();
    assert_eq!(g.resume(()).into_complete(), Some(7));
}

#[test]
fn a_sliced_builder_refuses_to_build_a_raw_greenlet() {
    // SAFETY: nothing is built.
    let b = unsafe { Builder::new().sliced() };
    let err = b.build::<(), (), (), _>(|_, ()| ()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

// ----- greenlets: panics ------------------------------------------------------------------

#[test]
fn a_panic_crosses_the_switch_with_its_payload() {
    #[derive(Debug, PartialEq)]
    struct Custom(u32);
    let mut g = Greenlet::<(), (), ()>::new(|s, ()| {
        s.suspend(());
        std::panic::panic_any(Custom(99));
    });
    g.resume(());
    let err = catch(|| g.resume(())).unwrap_err();
    assert_eq!(err.downcast_ref::<Custom>(), Some(&Custom(99)));
    assert!(g.is_finished(), "finished after a panic");
    // Formatted payloads arrive as String.
    let mut g = Greenlet::<u32, (), ()>::new(|_, n| panic!("bad input {n}"));
    let err = catch(|| g.resume(12)).unwrap_err();
    assert_eq!(
        err.downcast_ref::<String>().map(String::as_str),
        Some("bad input 12")
    );
    // And resuming it again is the "finished" panic.
    let msg = panic_message(&*catch(|| g.resume(1)).unwrap_err());
    assert!(msg.contains("finished"), "{msg}");
}

#[test]
fn a_panic_runs_the_greenlets_destructors_before_it_arrives() {
    let drops = Rc::new(Cell::new(0));
    let d = drops.clone();
    let seen_at_catch = Rc::new(Cell::new(usize::MAX));
    let mut g = Greenlet::<(), (), ()>::new(move |_, ()| {
        let _a = DropCounter(d.clone());
        let _b = DropCounter(d);
        panic!("boom");
    });
    let r = catch(|| g.resume(()));
    seen_at_catch.set(drops.get());
    assert!(r.is_err());
    assert_eq!(seen_at_catch.get(), 2);
}

#[test]
fn nested_greenlets_pass_values_and_panics_through_two_levels() {
    let mut outer = Greenlet::<u32, u32, u32>::new(|s, first| {
        let mut inner = Greenlet::<u32, u32, u32>::new(|s, x| {
            let y = s.suspend(x * 2);
            y + 1
        });
        // The inner greenlet's suspend comes back here, not to our resumer.
        let doubled = inner.resume(first).into_yielded().unwrap();
        let from_outside = s.suspend(doubled);
        inner.resume(from_outside).into_complete().unwrap()
    });
    assert_eq!(outer.resume(5), GreenletResult::Yielded(10));
    assert_eq!(outer.resume(100), GreenletResult::Complete(101));

    // A panic two levels down arrives at the top with its payload, and both
    // levels' destructors ran.
    let drops = Rc::new(Cell::new(0));
    let d = drops.clone();
    let mut outer = Greenlet::<(), (), ()>::new(move |_, ()| {
        let _o = DropCounter(d.clone());
        let mut inner = Greenlet::<(), (), ()>::new(move |_, ()| {
            let _i = DropCounter(d);
            std::panic::panic_any(1234u64);
        });
        inner.resume(());
    });
    let err = catch(|| outer.resume(())).unwrap_err();
    assert_eq!(err.downcast_ref::<u64>(), Some(&1234));
    assert_eq!(drops.get(), 2);
}

#[test]
fn a_greenlet_can_drop_a_suspended_nested_greenlet() {
    let drops = Rc::new(Cell::new(0));
    let d = drops.clone();
    let mut outer = Greenlet::<(), (), ()>::new(move |s, ()| {
        let mut inner = Greenlet::<(), (), ()>::new(move |s, ()| {
            let _i = DropCounter(d);
            s.suspend(());
            unreachable!();
        });
        inner.resume(());
        s.suspend(());
        drop(inner);
    });
    outer.resume(());
    assert_eq!(drops.get(), 0);
    assert!(outer.resume(()).into_complete().is_some());
    assert_eq!(drops.get(), 1);
}

// ----- greenlets: drop ----------------------------------------------------------------------

#[test]
fn dropping_a_suspended_greenlet_runs_its_destructors_in_order() {
    let order = Rc::new(RefCell::new(Vec::new()));
    struct Named(&'static str, Rc<RefCell<Vec<&'static str>>>);
    impl Drop for Named {
        fn drop(&mut self) {
            self.1.borrow_mut().push(self.0);
        }
    }
    let o = order.clone();
    let mut g = Greenlet::<(), (), ()>::new(move |s, ()| {
        let _first = Named("first", o.clone());
        #[inline(never)]
        fn deeper(s: &Suspender<(), ()>, o: Rc<RefCell<Vec<&'static str>>>) {
            let _second = Named("second", o);
            s.suspend(());
            unreachable!("never resumed");
        }
        deeper(s, o);
    });
    g.resume(());
    assert!(order.borrow().is_empty());
    drop(g);
    assert_eq!(*order.borrow(), ["second", "first"]);
}

#[test]
fn dropping_a_fresh_greenlet_drops_its_closure() {
    let drops = Rc::new(Cell::new(0));
    let captured = DropCounter(drops.clone());
    let g = Greenlet::<(), (), ()>::new(move |_, ()| {
        let _keep = &captured;
        unreachable!("never resumed");
    });
    assert_eq!(drops.get(), 0);
    drop(g);
    assert_eq!(drops.get(), 1);
}

#[test]
fn dropping_a_finished_greenlet_drops_nothing_twice() {
    let drops = Rc::new(Cell::new(0));
    let captured = DropCounter(drops.clone());
    let mut g = Greenlet::<(), (), DropCounter>::new(move |_, ()| captured);
    let r = g.resume(()).into_complete().unwrap();
    drop(g);
    assert_eq!(drops.get(), 0, "the result is the caller's");
    drop(r);
    assert_eq!(drops.get(), 1);
}

#[test]
fn a_panic_raised_after_catching_the_drop_unwind_reaches_the_dropper() {
    // (A destructor that panics *during* the unwind aborts, as any panic
    // during unwinding does in Rust; a panic raised after catching it is an
    // ordinary one and comes out of the drop.)
    let mut g = Greenlet::<(), (), ()>::new(|s, ()| {
        let _ = catch(|| s.suspend(()));
        panic!("cleanup failed");
    });
    g.resume(());
    let err = catch(move || drop(g)).unwrap_err();
    assert_eq!(panic_message(&*err), "cleanup failed");
}

#[test]
fn the_drop_unwind_does_not_run_the_panic_hook() {
    const NAME: &str = "the_drop_unwind_does_not_run_the_panic_hook";
    if util::is_child(NAME) {
        static HOOK_CALLS: AtomicUsize = AtomicUsize::new(0);
        std::panic::set_hook(Box::new(|_| {
            HOOK_CALLS.fetch_add(1, Ordering::SeqCst);
        }));
        let mut g = Greenlet::<(), (), ()>::new(|s, ()| {
            s.suspend(());
        });
        g.resume(());
        drop(g);
        assert_eq!(HOOK_CALLS.load(Ordering::SeqCst), 0);
        // A real panic does call it.
        let mut g = Greenlet::<(), (), ()>::new(|_, ()| panic!("real"));
        let _ = catch(|| g.resume(()));
        assert_eq!(HOOK_CALLS.load(Ordering::SeqCst), 1);
        let _ = std::panic::take_hook();
        return;
    }
    util::assert_child_passed(&util::run_child(NAME));
}

#[test]
fn catching_the_drop_unwind_and_suspending_again_aborts_naming_the_greenlet() {
    const NAME: &str = "catching_the_drop_unwind_and_suspending_again_aborts_naming_the_greenlet";
    if util::is_child(NAME) {
        let mut g: Greenlet<(), (), ()> = Builder::new()
            .name("stubborn")
            .build(|s, ()| {
                let _ = catch(|| s.suspend(()));
                s.suspend(());
            })
            .unwrap();
        g.resume(());
        drop(g);
        unreachable!("must abort");
    }
    let out = util::run_child(NAME);
    util::assert_aborted(&out);
    let err = stderr_of(&out);
    assert!(
        err.contains("'stubborn'") && err.contains("suspended again"),
        "{err}"
    );
}

#[test]
fn catching_the_drop_unwind_and_returning_aborts_naming_the_greenlet() {
    const NAME: &str = "catching_the_drop_unwind_and_returning_aborts_naming_the_greenlet";
    if util::is_child(NAME) {
        let mut g: Greenlet<(), (), ()> = Builder::new()
            .name("returner")
            .build(|s, ()| {
                let _ = catch(|| s.suspend(()));
            })
            .unwrap();
        g.resume(());
        drop(g);
        unreachable!("must abort");
    }
    let out = util::run_child(NAME);
    util::assert_aborted(&out);
    let err = stderr_of(&out);
    assert!(
        err.contains("'returner'") && err.contains("returned normally"),
        "{err}"
    );
}

// ----- greenlets: stack overflow ------------------------------------------------------------

#[inline(never)]
fn recurse(n: u64) -> u64 {
    let pad = std::hint::black_box([n; 64]);
    if n == u64::MAX {
        return 0;
    }
    recurse(n + 1) + pad[3]
}

#[test]
fn deep_recursion_reports_the_overflow_and_aborts() {
    const NAME: &str = "deep_recursion_reports_the_overflow_and_aborts";
    if util::is_child(NAME) {
        let mut g: Greenlet<(), (), u64> = Builder::new()
            .name("parser")
            .stack_size(128 * 1024)
            .build(|_, ()| recurse(0))
            .unwrap();
        eprintln!("child greenlet id {}", g.id());
        g.resume(());
        unreachable!("the overflow must abort");
    }
    let out = util::run_child(NAME);
    util::assert_aborted(&out);
    let err = stderr_of(&out);
    let id = err
        .lines()
        .find_map(|l| l.strip_prefix("child greenlet id "))
        .expect("id line");
    // The documented line, word for word.
    let expected =
        format!("greenhack: greenlet 'parser' (id {id}) overflowed its stack of 131072 bytes");
    assert!(err.contains(&expected), "expected {expected:?} in:\n{err}");
}

#[test]
fn overflow_in_a_spawned_greenlet_is_reported_too() {
    const NAME: &str = "overflow_in_a_spawned_greenlet_is_reported_too";
    if util::is_child(NAME) {
        greenhack::run(|| {
            let h = greenhack::Builder::new()
                .name("spawned-deep")
                .stack_size(64 * 1024)
                .spawn(|| recurse(0))
                .unwrap();
            let _ = h.join();
        });
        unreachable!("the overflow must abort");
    }
    let out = util::run_child(NAME);
    util::assert_aborted(&out);
    let err = stderr_of(&out);
    assert!(
        err.contains("greenlet 'spawned-deep'")
            && err.contains("overflowed its stack of 65536 bytes"),
        "{err}"
    );
}

#[test]
fn overflow_in_a_sliced_greenlet_is_reported_too() {
    const NAME: &str = "overflow_in_a_sliced_greenlet_is_reported_too";
    if util::is_child(NAME) {
        greenhack::run(|| {
            // SAFETY: the greenlet waits on nothing.
            let b = unsafe { greenhack::Builder::new().sliced() };
            let h = b
                .name("sliced-deep")
                .stack_size(64 * 1024)
                .spawn(|| recurse(0))
                .unwrap();
            let _ = h.join();
        });
        unreachable!("the overflow must abort");
    }
    let out = util::run_child(NAME);
    util::assert_aborted(&out);
    let err = stderr_of(&out);
    assert!(
        err.contains("greenlet 'sliced-deep'") && err.contains("overflowed its stack"),
        "{err}"
    );
}

// ----- stacks and the pool ----------------------------------------------------------------

#[test]
fn the_pool_reuses_stacks_and_its_capacity_is_honoured() {
    // Per-thread counters: a thread of our own keeps other tests out.
    std::thread::spawn(|| {
        use greenhack::stack::{POOL_CAPACITY, set_pool_capacity, stats};
        let start = stats();
        assert_eq!(start.pooled, 0);
        let gs: Vec<_> = (0..10)
            .map(|_| Greenlet::<(), (), ()>::new(|_, ()| ()))
            .collect();
        assert_eq!(stats().mapped, start.mapped + 10);
        assert_eq!(stats().mmaps, start.mmaps + 10);
        drop(gs);
        // Dropped fresh greenlets give their stacks to the pool.
        assert_eq!(stats().pooled, 10);
        assert_eq!(stats().mapped, start.mapped + 10);
        // Creating 10 more maps nothing.
        let gs: Vec<_> = (0..10)
            .map(|_| Greenlet::<(), (), ()>::new(|_, ()| ()))
            .collect();
        assert_eq!(stats().mmaps, start.mmaps + 10);
        assert_eq!(stats().pooled, 0);
        drop(gs);
        // Lowering the capacity unmaps the excess now.
        set_pool_capacity(3);
        assert_eq!(stats().pooled, 3);
        assert_eq!(stats().mapped, start.mapped + 3);
        // Zero disables pooling: every greenlet maps its own stack.
        set_pool_capacity(0);
        assert_eq!(stats().pooled, 0);
        let before = stats();
        for _ in 0..3 {
            let mut g = Greenlet::<(), (), ()>::new(|_, ()| ());
            g.resume(());
        }
        assert_eq!(stats().mmaps, before.mmaps + 3);
        assert_eq!(stats().mapped, before.mapped);
        // Back to the default.
        set_pool_capacity(POOL_CAPACITY);
        for _ in 0..2 {
            let mut g = Greenlet::<(), (), ()>::new(|_, ()| ());
            g.resume(());
        }
        assert_eq!(stats().pooled, 1);
    })
    .join()
    .unwrap();
}

#[test]
fn the_pool_reuses_a_stack_only_for_the_same_rounded_size() {
    std::thread::spawn(|| {
        use greenhack::stack::stats;
        drop(
            Builder::new()
                .stack_size(64 * 1024)
                .build::<(), (), (), _>(|_, ()| ())
                .unwrap(),
        );
        let before = stats();
        // Another size: a new mapping.
        drop(
            Builder::new()
                .stack_size(128 * 1024)
                .build::<(), (), (), _>(|_, ()| ())
                .unwrap(),
        );
        assert_eq!(stats().mmaps, before.mmaps + 1);
        // The same size, spelled unrounded: the pooled one.
        let before = stats();
        drop(
            Builder::new()
                .stack_size(64 * 1024 - 100)
                .build::<(), (), (), _>(|_, ()| ())
                .unwrap(),
        );
        assert_eq!(stats().mmaps, before.mmaps);
    })
    .join()
    .unwrap();
}

#[test]
fn stack_constants_are_consistent() {
    use greenhack::stack::*;
    assert_eq!(DEFAULT_STACK_SIZE, 256 * 1024);
    const {
        assert!(MIN_STACK_SIZE <= DEFAULT_STACK_SIZE);
        assert!(POOL_KEEP_BYTES < DEFAULT_STACK_SIZE);
        assert!(POOL_CAPACITY > 0);
    }
    let s = stats();
    let _ = format!("{s:?}");
}

#[test]
fn a_deep_but_fitting_recursion_completes_on_a_big_stack() {
    #[inline(never)]
    fn depth(n: u32) -> u32 {
        let pad = std::hint::black_box([n as u8; 512]);
        if n == 0 {
            0
        } else {
            depth(n - 1) + 1 + u32::from(pad[511] != n as u8)
        }
    }
    let mut g: Greenlet<(), (), u32> = Builder::new()
        .stack_size(8 << 20)
        .build(|_, ()| depth(5_000))
        .unwrap();
    assert_eq!(g.resume(()).into_complete(), Some(5_000));
}

// ----- the pair: run, start_loop, exempt ----------------------------------------------------

#[test]
fn run_returns_f_and_waits_for_every_spawned_greenlet_detached_ones_included() {
    let done = Rc::new(Cell::new(0));
    let d = done.clone();
    let out = greenhack::run(move || {
        for i in 0..5u64 {
            let d = d.clone();
            // Detached: the handle is dropped at once.
            drop(greenhack::spawn(move || {
                greenhack::sleep(Duration::from_millis(5 * i));
                d.set(d.get() + 1);
            }));
        }
        "body"
    });
    assert_eq!(out, "body");
    assert_eq!(done.get(), 5, "run waited for the detached greenlets");
}

#[test]
fn run_inside_a_greenlet_just_calls_f() {
    let n = greenhack::run(|| {
        greenhack::spawn(|| {
            // Would wait for itself if it waited for every greenlet.
            greenhack::run(|| {
                let inner = greenhack::spawn(|| 2);
                inner.join().unwrap() + 1
            })
        })
        .join()
        .unwrap()
    });
    assert_eq!(n, 3);
}

#[test]
fn a_panic_in_run_propagates_with_its_payload() {
    std::thread::spawn(|| {
        let err = catch(|| greenhack::run(|| std::panic::panic_any(7u8))).unwrap_err();
        assert_eq!(err.downcast_ref::<u8>(), Some(&7));
        // The thread's loop still works afterwards.
        assert_eq!(greenhack::run(|| greenhack::spawn(|| 1).join().unwrap()), 1);
    })
    .join()
    .unwrap();
}

#[test]
fn exempt_on_a_plain_thread_runs_the_loop() {
    std::thread::spawn(|| {
        assert_eq!(greenhack::exempt(async { 40 + 2 }), 42);
        assert_eq!(greenhack::exempt(std::future::ready("ready")), "ready");
        // Spawned greenlets run while the thread waits in exempt.
        let h = greenhack::spawn(|| 5);
        let v = greenhack::exempt(async move { h.await.unwrap() });
        assert_eq!(v, 5);
        // try_exempt succeeds here.
        assert!(matches!(greenhack::try_exempt(async { 1 }), Ok(1)));
    })
    .join()
    .unwrap();
}

#[test]
fn start_loop_is_idempotent_and_runs_spawned_greenlets_at_waits() {
    std::thread::spawn(|| {
        greenhack::start_loop();
        greenhack::start_loop();
        let order = Rc::new(RefCell::new(Vec::new()));
        let o = order.clone();
        let h = greenhack::spawn(move || o.borrow_mut().push("greenlet"));
        order.borrow_mut().push("before the wait");
        greenhack::sleep(Duration::from_millis(1));
        assert_eq!(*order.borrow(), ["before the wait", "greenlet"]);
        assert!(h.is_finished());
        h.join().unwrap();
    })
    .join()
    .unwrap();
}

#[test]
fn exempt_on_a_tokio_thread_outside_a_greenlet_panics_naming_the_fix() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    std::thread::spawn(move || {
        rt.block_on(async {
            let err = catch(|| greenhack::exempt(async { 1 })).unwrap_err();
            let msg = panic_message(&*err);
            assert!(
                msg.contains("as_async") && msg.contains("start_loop"),
                "message: {msg}"
            );
            // try_exempt hands the very future back.
            let fut = async { 2 };
            let err: ExemptError<_> = greenhack::try_exempt(fut).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("as_async") && text.contains("start_loop"),
                "{text}"
            );
            assert!(format!("{err:?}").contains("ExemptError"));
            let e: &dyn std::error::Error = &err;
            assert!(e.source().is_none());
            let back = err.into_future();
            assert_eq!(back.await, 2);
            // sleep, spawn and join refuse the same way.
            let msg =
                panic_message(&*catch(|| greenhack::sleep(Duration::from_millis(1))).unwrap_err());
            assert!(msg.contains("as_async"), "sleep: {msg}");
        });
    })
    .join()
    .unwrap();
}

#[test]
fn start_loop_on_a_tokio_thread_is_the_permission_to_block_it() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    std::thread::spawn(move || {
        rt.block_on(async {
            greenhack::start_loop();
            assert_eq!(greenhack::exempt(async { 3 }), 3);
            greenhack::sleep(Duration::from_millis(1));
            assert_eq!(greenhack::spawn(|| 4).join().unwrap(), 4);
        });
    })
    .join()
    .unwrap();
}

// ----- the pair: as_async under executors ---------------------------------------------------

#[test]
fn as_async_under_greenhacks_own_loop() {
    let n = greenhack::exempt(greenhack::as_async(|| {
        greenhack::sleep(Duration::from_millis(1));
        "hello".len()
    }));
    assert_eq!(n, 5);
}

#[test]
fn as_async_polled_by_a_hand_written_executor_uses_the_pollers_waker() {
    let ready = Rc::new(Cell::new(false));
    let waker_slot = Rc::new(RefCell::new(None::<Waker>));
    let (r, w) = (ready.clone(), waker_slot.clone());
    let mut fut = Box::pin(greenhack::as_async(move || {
        let a = greenhack::exempt(Gate {
            ready: r.clone(),
            waker: w.clone(),
        });
        let b = greenhack::exempt(async { 10 });
        (a, b)
    }));
    let counter = Arc::new(CountingWaker::default());
    let waker = Waker::from(counter.clone());
    let mut cx = Context::from_waker(&waker);
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    // The gate saw our waker: waking it wakes us.
    let seen = waker_slot.borrow_mut().take().expect("the gate was polled");
    assert!(
        seen.will_wake(&waker),
        "the exempted future sees the poller's waker"
    );
    assert_eq!(counter.0.load(Ordering::SeqCst), 0);
    ready.set(true);
    seen.wake();
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);
    assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(("opened", 10)));
    // Polled again after completion: the documented panic.
    let msg = panic_message(&*catch(|| fut.as_mut().poll(&mut cx)).unwrap_err());
    assert!(msg.contains("after it completed"), "{msg}");
}

#[test]
fn as_async_under_futures_block_on() {
    std::thread::spawn(|| {
        // An exempted future woken from another thread.
        let out = futures_executor::block_on(greenhack::as_async(|| {
            let (tx, rx) = futures_channel_oneshot();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(5));
                tx.send(9)
            });
            greenhack::exempt(rx)
        }));
        assert_eq!(out, 9);
        // A panic comes out of the executor with its payload.
        let err = catch(|| {
            futures_executor::block_on(greenhack::as_async(|| -> u32 {
                std::panic::panic_any("from sync code")
            }))
        })
        .unwrap_err();
        assert_eq!(err.downcast_ref::<&str>(), Some(&"from sync code"));
    })
    .join()
    .unwrap();
}

/// A minimal cross-thread oneshot on std (no extra dependency): the receiver
/// is a future.
fn futures_channel_oneshot() -> (OneshotTx, OneshotRx) {
    let shared = Arc::new(std::sync::Mutex::new((None::<u32>, None::<Waker>)));
    (OneshotTx(shared.clone()), OneshotRx(shared))
}

struct OneshotTx(Arc<std::sync::Mutex<(Option<u32>, Option<Waker>)>>);
struct OneshotRx(Arc<std::sync::Mutex<(Option<u32>, Option<Waker>)>>);

impl OneshotTx {
    fn send(self, v: u32) {
        let mut g = self.0.lock().unwrap();
        g.0 = Some(v);
        if let Some(w) = g.1.take() {
            w.wake();
        }
    }
}

impl Future for OneshotRx {
    type Output = u32;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
        let mut g = self.0.lock().unwrap();
        match g.0.take() {
            Some(v) => Poll::Ready(v),
            None => {
                g.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[test]
fn greenhack_loop_waits_under_a_foreign_executor_fail_at_once_naming_the_alternative() {
    std::thread::spawn(|| {
        // sleep: a panic naming exempt(tokio::time::sleep(d)).
        let err = catch(|| {
            futures_executor::block_on(greenhack::as_async(|| {
                greenhack::sleep(Duration::from_millis(1))
            }))
        })
        .unwrap_err();
        let msg = panic_message(&*err);
        assert!(msg.contains("exempt(tokio::time::sleep(d))"), "{msg}");
        // spawn: a panic naming spawn_local.
        let err = catch(|| {
            futures_executor::block_on(greenhack::as_async(|| drop(greenhack::spawn(|| ()))))
        })
        .unwrap_err();
        let msg = panic_message(&*err);
        assert!(msg.contains("spawn_local"), "{msg}");
        // Sockets: Unsupported at once, not a hang.
        let kind = futures_executor::block_on(greenhack::as_async(|| {
            let (mut a, _b) = greenhack::net::UnixStream::pair().unwrap();
            use std::io::Read;
            a.read(&mut [0; 4]).unwrap_err().kind()
        }));
        assert_eq!(kind, std::io::ErrorKind::Unsupported);
        // timeout: the code inside runs to completion (documented caveat).
        let r = futures_executor::block_on(greenhack::as_async(|| {
            greenhack::timeout(Duration::from_millis(1), || {
                std::thread::sleep(Duration::from_millis(5));
                greenhack::exempt(async { 8 })
            })
        }));
        assert_eq!(r, Ok(8));
        // yield_now yields to that executor instead.
        futures_executor::block_on(greenhack::as_async(greenhack::yield_now));
    })
    .join()
    .unwrap();
}

#[test]
fn a_join_handle_polled_by_a_foreign_executor_panics_rather_than_hangs() {
    std::thread::spawn(|| {
        let h = greenhack::spawn(|| 1);
        let err = catch(|| futures_executor::block_on(h)).unwrap_err();
        let msg = panic_message(&*err);
        assert!(msg.contains("join()"), "{msg}");
    })
    .join()
    .unwrap();
}

#[test]
fn dropping_a_suspended_as_async_unwinds_it_and_drops_its_future() {
    struct Flag(Rc<Cell<bool>>);
    impl Future for Flag {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
    }
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }
    let future_dropped = Rc::new(Cell::new(false));
    let drops = Rc::new(Cell::new(0));
    let (f, d) = (future_dropped.clone(), drops.clone());
    let mut fut = Box::pin(greenhack::as_async(move || {
        let _guard = DropCounter(d);
        greenhack::exempt(Flag(f));
        unreachable!("never woken");
    }));
    let waker = Waker::from(Arc::new(CountingWaker::default()));
    assert!(
        fut.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    assert!(!future_dropped.get());
    drop(fut);
    assert!(future_dropped.get());
    assert_eq!(drops.get(), 1);
}

#[test]
fn dropping_an_unpolled_as_async_drops_its_closure() {
    let drops = Rc::new(Cell::new(0));
    let c = DropCounter(drops.clone());
    let fut = greenhack::as_async(move || drop(c));
    drop(fut);
    assert_eq!(drops.get(), 1);
}

#[test]
fn as_async_on_tokio_current_thread_hosts_greenhacks_loop() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task_local! {
        static REQUEST: u32;
    }
    let out = rt.block_on(
        REQUEST.scope(
            77,
            greenhack::Builder::new()
                .name("legacy")
                .as_async(|| {
                    // A tokio timer and a greenhack timer from sync code.
                    greenhack::exempt(tokio::time::sleep(Duration::from_millis(2)));
                    greenhack::sleep(Duration::from_millis(2));
                    // Task-locals of the polling task are visible.
                    let req = REQUEST.with(|r| *r);
                    // Spawned greenlets run and join.
                    let h = greenhack::spawn(move || req + 1);
                    let joined = h.join().unwrap();
                    // A tokio channel.
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    tx.send(3).unwrap();
                    joined + greenhack::exempt(rx).unwrap()
                })
                .unwrap(),
        ),
    );
    assert_eq!(out, 81);
}

#[test]
fn as_async_on_a_local_set_many_at_once_and_join_handles_awaited_by_tokio() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let total = local.block_on(&rt, async {
        let tasks: Vec<_> = (0..20u64)
            .map(|i| {
                tokio::task::spawn_local(greenhack::as_async(move || {
                    greenhack::sleep(Duration::from_millis(20 - i));
                    greenhack::exempt(tokio::time::sleep(Duration::from_millis(i)));
                    i
                }))
            })
            .collect();
        let mut sum = 0;
        for t in tasks {
            sum += t.await.unwrap();
        }
        // A greenhack JoinHandle awaited directly by tokio.
        let h = greenhack::as_async(|| greenhack::spawn(|| 100)).await;
        sum + h.await.unwrap()
    });
    assert_eq!(total, (0..20).sum::<u64>() + 100);
}

#[test]
fn a_panic_in_as_async_reaches_the_tokio_task_with_its_payload() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let t = tokio::task::spawn_local(greenhack::as_async(|| -> u32 {
            greenhack::exempt(tokio::time::sleep(Duration::from_millis(1)));
            panic!("sync code failed")
        }));
        let err = t.await.unwrap_err();
        assert!(err.is_panic());
        let payload = err.into_panic();
        assert_eq!(panic_message(&*payload), "sync code failed");
    });
}

#[test]
fn aborting_the_tokio_task_of_an_as_async_unwinds_the_sync_code() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let drops = Rc::new(Cell::new(0));
    let d = drops.clone();
    local.block_on(&rt, async move {
        let t = tokio::task::spawn_local(greenhack::as_async(move || {
            let _g = DropCounter(d);
            greenhack::sleep(Duration::from_secs(3600));
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
        t.abort();
        assert!(t.await.unwrap_err().is_cancelled());
    });
    assert_eq!(drops.get(), 1);
}

#[test]
fn as_async_nested_inside_a_greenlet() {
    // An AsAsync polled from inside another greenlet (strict stack order).
    let n = greenhack::run(|| {
        greenhack::exempt(greenhack::as_async(|| {
            let inner = greenhack::exempt(greenhack::as_async(|| {
                greenhack::sleep(Duration::from_millis(1));
                20
            }));
            inner + 1
        }))
    });
    assert_eq!(n, 21);
}

// ----- spawn, JoinHandle, JoinError ---------------------------------------------------------

#[test]
fn joining_a_panicked_greenlet_gives_the_payload() {
    greenhack::run(|| {
        let n = std::hint::black_box(3);
        let h = greenhack::spawn(move || -> u32 { panic!("worker failed: {n}") });
        let err: JoinError = h.join().unwrap_err();
        assert!(err.is_panic());
        assert!(!err.is_cancelled());
        assert_eq!(err.to_string(), "greenlet panicked: worker failed: 3");
        assert!(format!("{err:?}").contains("worker failed: 3"));
        let e: &dyn std::error::Error = &err;
        assert!(e.source().is_none());
        let payload = err.into_panic();
        assert_eq!(
            payload.downcast_ref::<String>().map(String::as_str),
            Some("worker failed: 3")
        );
        // A non-string payload.
        let h = greenhack::spawn(|| std::panic::panic_any(5i64));
        let err = h.join().unwrap_err();
        assert_eq!(err.to_string(), "greenlet panicked");
        assert_eq!(err.into_panic().downcast_ref::<i64>(), Some(&5));
    });
}

#[test]
fn cancel_unwinds_a_waiting_greenlet_and_join_reports_it() {
    greenhack::run(|| {
        let drops = Rc::new(Cell::new(0));
        let d = drops.clone();
        let h = greenhack::spawn(move || {
            let _g = DropCounter(d);
            greenhack::sleep(Duration::MAX); // forever, documented
            unreachable!();
        });
        greenhack::yield_now(); // it runs to its wait
        greenhack::sleep(Duration::from_millis(2));
        assert!(!h.is_finished());
        h.cancel();
        h.cancel(); // twice is fine
        let err = h.join().unwrap_err();
        assert!(err.is_cancelled());
        assert!(!err.is_panic());
        assert_eq!(err.to_string(), "greenlet was cancelled");
        assert_eq!(drops.get(), 1);
        // into_panic on a cancellation panics, as documented;
        // try_into_panic hands the error back.
        let err = err.try_into_panic().unwrap_err();
        assert!(err.is_cancelled());
        assert!(catch(move || err.into_panic()).is_err());
    });
}

#[test]
fn cancelling_a_greenlet_before_it_started_drops_its_closure() {
    greenhack::run(|| {
        let drops = Rc::new(Cell::new(0));
        let c = DropCounter(drops.clone());
        let ran = Rc::new(Cell::new(false));
        let r = ran.clone();
        let h = greenhack::spawn(move || {
            let _c = c;
            r.set(true);
        });
        h.cancel();
        assert!(h.join().unwrap_err().is_cancelled());
        assert!(!ran.get());
        assert_eq!(drops.get(), 1);
    });
}

#[test]
fn cancelling_a_finished_greenlet_does_nothing() {
    greenhack::run(|| {
        let h = greenhack::spawn(|| 5);
        greenhack::yield_now();
        greenhack::yield_now();
        assert!(h.is_finished());
        h.cancel();
        assert_eq!(h.join().unwrap(), 5);
    });
}

#[test]
fn a_panic_raised_while_cancelled_is_reported_as_a_panic() {
    greenhack::run(|| {
        let h = greenhack::spawn(|| {
            let _ = catch(|| greenhack::sleep(Duration::from_secs(3600)));
            panic!("cleanup failed");
        });
        greenhack::yield_now();
        h.cancel();
        let err = h.join().unwrap_err();
        assert!(err.is_panic(), "{err}");
        assert_eq!(err.to_string(), "greenlet panicked: cleanup failed");
    });
}

#[test]
fn a_detached_greenlet_keeps_running() {
    let flag = Rc::new(Cell::new(false));
    let f = flag.clone();
    greenhack::run(move || {
        let h = greenhack::spawn(move || {
            greenhack::sleep(Duration::from_millis(5));
            f.set(true);
        });
        drop(h);
        wait_until("the detached greenlet runs", || flag.get());
    });
}

#[test]
fn is_finished_tracks_the_greenlet() {
    greenhack::run(|| {
        let h = greenhack::spawn(|| greenhack::sleep(Duration::from_millis(5)));
        assert!(!h.is_finished(), "not started yet");
        greenhack::yield_now();
        assert!(!h.is_finished(), "sleeping");
        wait_until("the greenlet finishes", || h.is_finished());
        h.join().unwrap();
    });
}

#[test]
fn a_join_handle_awaited_by_reference_stays_finished() {
    // `JoinHandle` is a `Future` (and `Unpin`): awaiting `&mut h` is how a
    // user keeps it, e.g. in `select!`; afterwards it has finished.
    greenhack::run(|| {
        let mut h = greenhack::spawn(|| 5);
        let v = greenhack::exempt(async { (&mut h).await });
        assert_eq!(v.unwrap(), 5);
        assert!(h.is_finished(), "the greenlet has finished");
        h.cancel(); // does nothing: it finished
        // Its result was handed out: polled again, it panics (as `AsAsync`
        // does) rather than waiting forever.
        let waker = Waker::from(Arc::new(CountingWaker::default()));
        let err = catch(|| Pin::new(&mut h).poll(&mut Context::from_waker(&waker))).unwrap_err();
        assert!(panic_message(&*err).contains("after it completed"));
    });
}

#[test]
fn join_handles_join_from_other_greenlets_in_any_order() {
    let out = greenhack::run(|| {
        let a = greenhack::spawn(|| {
            greenhack::sleep(Duration::from_millis(10));
            "a"
        });
        let b = greenhack::spawn(move || {
            let from_a = a.join().unwrap();
            format!("{from_a}b")
        });
        b.join().unwrap()
    });
    assert_eq!(out, "ab");
}

#[test]
fn builder_spawn_names_the_greenlet() {
    greenhack::run(|| {
        let h = greenhack::Builder::new()
            .name("named-worker")
            .spawn(|| {
                let dump = greenhack::debug::dump();
                dump.greenlets
                    .iter()
                    .any(|g| g.name.as_deref() == Some("named-worker") && g.state == "running")
            })
            .unwrap();
        assert!(
            h.join().unwrap(),
            "the dump shows the running greenlet by name"
        );
    });
}

// ----- time at the level of the loop -------------------------------------------------------

#[test]
fn sleep_until_a_past_deadline_returns_at_once() {
    std::thread::spawn(|| {
        let start = Instant::now();
        greenhack::sleep_until(start - Duration::from_millis(100));
        greenhack::sleep(Duration::ZERO);
        assert!(start.elapsed() < Duration::from_millis(500));
        let start = Instant::now();
        greenhack::sleep_until(start + Duration::from_millis(15));
        assert!(start.elapsed() >= Duration::from_millis(15));
    })
    .join()
    .unwrap();
}

#[test]
fn sleeping_greenlets_wake_in_deadline_order() {
    let order = Rc::new(RefCell::new(Vec::new()));
    let o = order.clone();
    greenhack::run(move || {
        for ms in [30u64, 10, 20] {
            let o = o.clone();
            let _detached = greenhack::spawn(move || {
                greenhack::sleep(Duration::from_millis(ms));
                o.borrow_mut().push(ms);
            });
        }
    });
    assert_eq!(*order.borrow(), [10, 20, 30]);
}

#[test]
fn yield_now_lets_every_other_ready_greenlet_run_once() {
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    greenhack::run(move || {
        for name in ["a", "b"] {
            let l = l.clone();
            let _detached = greenhack::spawn(move || {
                for i in 0..3 {
                    l.borrow_mut().push(format!("{name}{i}"));
                    greenhack::yield_now();
                }
            });
        }
    });
    assert_eq!(*log.borrow(), ["a0", "b0", "a1", "b1", "a2", "b2"]);
}

#[test]
fn timeout_unwinds_the_code_and_returns_elapsed() {
    greenhack::run(|| {
        let drops = Rc::new(Cell::new(0));
        let d = drops.clone();
        let start = Instant::now();
        let r = greenhack::timeout(Duration::from_millis(10), move || {
            let _g = DropCounter(d);
            greenhack::sleep(Duration::from_secs(3600));
            "never"
        });
        assert_eq!(r, Err(Elapsed::default_for_test()));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(drops.get(), 1);
        // In time: Ok.
        assert_eq!(
            greenhack::timeout(Duration::from_secs(5), || {
                greenhack::sleep(Duration::from_millis(1));
                3
            }),
            Ok(3)
        );
        // In a spawned greenlet too.
        let h = greenhack::spawn(|| {
            greenhack::timeout(Duration::from_millis(5), || {
                greenhack::sleep(Duration::from_secs(3600))
            })
        });
        assert!(h.join().unwrap().is_err());
    });
}

trait ElapsedForTest {
    fn default_for_test() -> Elapsed;
}

impl ElapsedForTest for Elapsed {
    /// An `Elapsed` to compare with, from a real timeout (it has no public
    /// constructor).
    fn default_for_test() -> Elapsed {
        greenhack::timeout(Duration::ZERO, || {
            greenhack::sleep(Duration::from_secs(3600))
        })
        .unwrap_err()
    }
}

#[test]
fn elapsed_is_an_error_and_becomes_timed_out() {
    let e = Elapsed::default_for_test();
    assert_eq!(e.to_string(), "deadline has elapsed");
    let _: &dyn std::error::Error = &e;
    let io: std::io::Error = e.into();
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
    assert!(format!("{e:?}").contains("Elapsed"));
}

#[test]
fn nested_timeouts_the_earliest_wins_and_only_its_scope_returns_err() {
    greenhack::run(|| {
        // Outer earlier: the inner scope does not catch it.
        let inner_returned = Cell::new(false);
        let r = greenhack::timeout(Duration::from_millis(10), || {
            let inner = greenhack::timeout(Duration::from_secs(3600), || {
                greenhack::sleep(Duration::from_secs(3600))
            });
            inner_returned.set(true);
            inner
        });
        assert!(r.is_err());
        assert!(
            !inner_returned.get(),
            "the outer expiry passed through the inner scope"
        );
        // Inner earlier: the inner returns Err, the outer goes on.
        let r = greenhack::timeout(Duration::from_secs(3600), || {
            let inner = greenhack::timeout(Duration::from_millis(5), || {
                greenhack::sleep(Duration::from_secs(3600))
            });
            assert!(inner.is_err());
            "outer finished"
        });
        assert_eq!(r, Ok("outer finished"));
    });
}

#[test]
fn a_panic_inside_timeout_passes_through_unchanged() {
    greenhack::run(|| {
        let err =
            catch(|| greenhack::timeout(Duration::from_secs(1), || panic!("inner"))).unwrap_err();
        assert_eq!(panic_message(&*err), "inner");
    });
}

// ----- debug ---------------------------------------------------------------------------------

#[inline(never)]
fn audit_parked_here(s: &Suspender<(), ()>) {
    s.suspend(());
}

#[test]
fn backtrace_of_a_suspended_greenlet_shows_its_own_frames_first() {
    let mut g = Greenlet::<(), (), ()>::new(|s, ()| audit_parked_here(s));
    assert_eq!(greenhack::debug::backtrace(&mut g), None, "not started");
    g.resume(());
    let bt = greenhack::debug::backtrace(&mut g).unwrap();
    assert!(bt.contains("audit_parked_here"), "{bt}");
    // Trimmed to the greenlet's frames: the capture machinery is cut off,
    // and numbering starts at 0.
    // The first frame is the suspend the greenlet waits in.
    let first = bt.lines().next().unwrap();
    assert!(
        first.trim_start().starts_with("0: ") && first.contains("Suspender<I,Y>::suspend"),
        "first line {first:?} of:\n{bt}"
    );
    assert!(
        !bt.contains("std::backtrace")
            && !bt.contains("force_capture")
            && !bt.contains("greenhack::greenlet::serve"),
        "capture frames are cut:\n{bt}"
    );
    // The resumer's frames (this test function, not its closure, which is
    // the greenlet's body) are cut too.
    assert!(
        !bt.lines()
            .any(|l| l.trim_end().ends_with("shows_its_own_frames_first")),
        "{bt}"
    );
    // Still resumable afterwards.
    g.resume(());
    assert!(g.is_finished());
    assert_eq!(greenhack::debug::backtrace(&mut g), None, "finished");
}

#[test]
fn dump_lists_every_greenlet_of_the_thread_with_state_name_and_wait() {
    std::thread::Builder::new()
        .name("dump-thread".into())
        .spawn(|| {
            let mut raw: Greenlet<(), (), ()> = Builder::new()
                .name("raw-suspended")
                .build(|s, ()| audit_parked_here(s))
                .unwrap();
            raw.resume(());
            let fresh: Greenlet<(), (), ()> =
                Builder::new().name("raw-fresh").build(|_, ()| ()).unwrap();
            greenhack::run(|| {
                let sleeper = greenhack::Builder::new()
                    .name("sleeper")
                    .stack_size(64 * 1024)
                    .spawn(|| greenhack::sleep(Duration::from_secs(3600)))
                    .unwrap();
                greenhack::yield_now();
                let dump = greenhack::debug::dump();
                let find = |n: &str| {
                    dump.greenlets
                        .iter()
                        .find(|g| g.name.as_deref() == Some(n))
                        .unwrap_or_else(|| panic!("{n} missing from:\n{dump}"))
                };
                let r = find("raw-suspended");
                assert_eq!(r.state, "suspended");
                assert_eq!(r.id, raw.id());
                assert!(
                    r.backtrace
                        .as_deref()
                        .unwrap()
                        .contains("audit_parked_here")
                );
                assert_eq!(r.wait, greenhack::debug::Wait::Nothing);
                assert!(r.created_at.unwrap().file().ends_with("audit_core.rs"));
                let f = find("raw-fresh");
                assert_eq!(f.state, "not started");
                assert!(f.backtrace.is_none());
                let s = find("sleeper");
                assert_eq!(s.state, "suspended");
                assert!(
                    matches!(s.wait, greenhack::debug::Wait::Sleep(_)),
                    "{:?}",
                    s.wait
                );
                assert_eq!(s.stack_size, 64 * 1024);
                let text = dump.to_string();
                assert!(text.contains("thread \"dump-thread\""), "{text}");
                assert!(
                    text.contains("'sleeper': suspended, waiting for sleeping"),
                    "{text}"
                );
                assert!(text.contains("(stack 64 KiB)"), "{text}");
                sleeper.cancel();
            });
            drop(fresh);
            raw.resume(());
            // All gone: none of ours is listed.
            let dump = greenhack::debug::dump();
            assert!(dump.greenlets.is_empty(), "{dump}");
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn dump_on_signal_refuses_an_uncatchable_signal() {
    let err = greenhack::debug::dump_on_signal(libc::SIGKILL).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    assert!(greenhack::debug::dump_on_signal(-3).is_err());
}

#[test]
fn dump_on_signal_prints_the_dump_when_the_signal_arrives() {
    const NAME: &str = "dump_on_signal_prints_the_dump_when_the_signal_arrives";
    if util::is_child(NAME) {
        greenhack::run(|| {
            greenhack::debug::dump_on_signal(libc::SIGUSR2).unwrap();
            let _sleeper = greenhack::Builder::new()
                .name("signalled-sleeper")
                .spawn(|| greenhack::sleep(Duration::from_millis(200)))
                .unwrap();
            greenhack::yield_now();
            // SAFETY: raising a signal whose handler we just installed.
            unsafe { libc::raise(libc::SIGUSR2) };
            greenhack::sleep(Duration::from_millis(50));
        });
        return;
    }
    let out = util::run_child(NAME);
    util::assert_child_passed(&out);
    let err = stderr_of(&out);
    assert!(
        err.contains("greenlet(s) on thread") && err.contains("'signalled-sleeper': suspended"),
        "{err}"
    );
}

#[inline(never)]
fn audit_resumer_frame(g: &mut Greenlet<(), (), String>) -> String {
    g.resume(()).into_complete().unwrap()
}

#[test]
fn a_backtrace_inside_a_greenlet_continues_into_its_resumer() {
    let mut g = Greenlet::<(), (), String>::new(|_, ()| {
        std::backtrace::Backtrace::force_capture().to_string()
    });
    let bt = audit_resumer_frame(&mut g);
    assert!(bt.contains("audit_resumer_frame"), "{bt}");
}

#[test]
fn the_switch_hook_sees_resume_suspend_and_finish() {
    // Process-wide: in a child, so other tests' switches do not count.
    const NAME: &str = "the_switch_hook_sees_resume_suspend_and_finish";
    if util::is_child(NAME) {
        use greenhack::debug::{SwitchEvent, SwitchKind, set_switch_hook};
        static EVENTS: std::sync::Mutex<Vec<(SwitchKind, Option<String>)>> =
            std::sync::Mutex::new(Vec::new());
        fn hook(e: SwitchEvent<'_>) {
            EVENTS
                .lock()
                .unwrap()
                .push((e.kind, e.name.map(str::to_owned)));
        }
        set_switch_hook(Some(hook));
        let mut g: Greenlet<(), (), ()> = Builder::new()
            .name("hooked")
            .build(|s, ()| s.suspend(()))
            .unwrap();
        g.resume(());
        g.resume(());
        set_switch_hook(None);
        let events = EVENTS.lock().unwrap().clone();
        let name = Some("hooked".to_string());
        assert_eq!(
            events,
            [
                (SwitchKind::Resume, name.clone()),
                (SwitchKind::Suspend, name.clone()),
                (SwitchKind::Resume, name.clone()),
                (SwitchKind::Finish, name),
            ]
        );
        return;
    }
    util::assert_child_passed(&util::run_child(NAME));
}

// ----- thread exit --------------------------------------------------------------------------

fn mapping_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

#[test]
fn thread_exit_unwinds_suspended_greenlets_and_frees_their_stacks() {
    const NAME: &str = "thread_exit_unwinds_suspended_greenlets_and_frees_their_stacks";
    if util::is_child(NAME) {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        struct Count;
        impl Drop for Count {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::SeqCst);
            }
        }
        // Warm up whatever a first thread maps (its stack, malloc arena).
        std::thread::spawn(|| greenhack::run(|| greenhack::spawn(|| ()).join().unwrap()))
            .join()
            .unwrap();
        let before = mapping_count();
        for _ in 0..3 {
            std::thread::spawn(|| {
                greenhack::start_loop();
                for _ in 0..50 {
                    drop(greenhack::spawn(|| {
                        let _c = Count;
                        greenhack::sleep(Duration::from_secs(3600));
                    }));
                }
                // A raw greenlet suspended in a thread-local, too.
                thread_local! {
                    static RAW: RefCell<Option<Greenlet<(), (), ()>>> = const { RefCell::new(None) };
                }
                let mut g = Greenlet::<(), (), ()>::new(|s, ()| {
                    let _c = Count;
                    s.suspend(());
                });
                g.resume(());
                RAW.with(|r| *r.borrow_mut() = Some(g));
                greenhack::yield_now(); // every one is asleep now
            })
            .join()
            .unwrap();
        }
        assert_eq!(DROPS.load(Ordering::SeqCst), 3 * 51);
        let after = mapping_count();
        assert!(
            // A leak would be two mappings per greenlet: hundreds. The
            // allocator (ASan's too) may map a few regions of its own.
            after <= before + 64,
            "mappings {before} -> {after}: stacks leaked at thread exit"
        );
        return;
    }
    util::assert_child_passed(&util::run_child(NAME));
}

#[test]
fn thread_exit_with_a_greenlet_stored_in_a_late_thread_local_does_not_crash() {
    // A suspended raw greenlet in a thread-local whose destructor may run
    // after greenhack's own thread-locals are gone.
    const NAME: &str = "thread_exit_with_a_greenlet_stored_in_a_late_thread_local_does_not_crash";
    if util::is_child(NAME) {
        struct Holder(RefCell<Vec<Greenlet<(), (), ()>>>);
        thread_local! {
            static EARLY: Holder = const { Holder(RefCell::new(Vec::new())) };
        }
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        std::thread::spawn(|| {
            // Registered before greenhack's thread-locals exist: destroyed
            // after them (destructors run in reverse order).
            EARLY.with(|_| ());
            for _ in 0..3 {
                let mut g = Greenlet::<(), (), ()>::new(|s, ()| {
                    struct C;
                    impl Drop for C {
                        fn drop(&mut self) {
                            DROPS.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    let _c = C;
                    s.suspend(());
                });
                g.resume(());
                EARLY.with(|h| h.0.borrow_mut().push(g));
            }
            greenhack::run(|| greenhack::spawn(|| ()).join().unwrap());
        })
        .join()
        .unwrap();
        assert_eq!(DROPS.load(Ordering::SeqCst), 3);
        return;
    }
    util::assert_child_passed(&util::run_child(NAME));
}

// ----- traits: !Send, Debug, Error -------------------------------------------------------------

/// `IsSend::<T>::IS` is `true` for `Send` types and `false` otherwise,
/// resolved at compile time (inherent constants win over the trait's).
mod send_check {
    use std::marker::PhantomData;
    pub struct Probe<T: ?Sized>(PhantomData<T>);
    pub trait NotSend {
        const IS_SEND: bool = false;
    }
    impl<T: ?Sized> NotSend for Probe<T> {}
    impl<T: ?Sized + Send> Probe<T> {
        pub const IS_SEND: bool = true;
    }
    pub struct SyncProbe<T: ?Sized>(PhantomData<T>);
    pub trait NotSync {
        const IS_SYNC: bool = false;
    }
    impl<T: ?Sized> NotSync for SyncProbe<T> {}
    impl<T: ?Sized + Sync> SyncProbe<T> {
        pub const IS_SYNC: bool = true;
    }
}

macro_rules! is_send {
    ($t:ty) => {{
        #[allow(unused_imports)]
        use send_check::NotSend as _;
        send_check::Probe::<$t>::IS_SEND
    }};
}

macro_rules! is_sync {
    ($t:ty) => {{
        #[allow(unused_imports)]
        use send_check::NotSync as _;
        send_check::SyncProbe::<$t>::IS_SYNC
    }};
}

#[test]
fn greenlets_and_their_handles_are_not_send() {
    // Evaluated at compile time: a regression fails the build.
    const {
        // The probe works.
        assert!(is_send!(u32));
        assert!(!is_send!(Rc<u32>));
        // Documented !Send (and !Sync).
        assert!(!is_send!(Greenlet<(), (), ()>));
        assert!(!is_sync!(Greenlet<(), (), ()>));
        assert!(!is_send!(Suspender<(), ()>));
        assert!(!is_sync!(Suspender<(), ()>));
        assert!(!is_send!(greenhack::AsAsync<u32>));
        assert!(!is_send!(JoinHandle<u32>));
        // The errors travel: Send and Sync, so they convert into
        // `Box<dyn Error + Send + Sync>` (anyhow, io::Error::other) as tokio's do.
        assert!(is_send!(JoinError) && is_sync!(JoinError));
        assert!(is_send!(Elapsed) && is_sync!(Elapsed));
        assert!(is_send!(ExemptError<std::future::Ready<u32>>));
        assert!(is_send!(Builder) && is_sync!(Builder));
        assert!(is_send!(greenhack::debug::Dump));
    }
}

#[test]
fn public_types_implement_debug() {
    fn debug<T: std::fmt::Debug>(t: &T) -> String {
        format!("{t:?}")
    }
    let b = Builder::new().name("dbg").stack_size(64 * 1024);
    let text = debug(&b);
    assert!(text.contains("dbg") && text.contains("65536"), "{text}");
    let mut g: Greenlet<(), (), ()> = b
        .build(|s, ()| {
            assert!(format!("{s:?}").contains("Suspender"));
            s.suspend(());
        })
        .unwrap();
    let text = debug(&g);
    assert!(text.contains("dbg") && text.contains("fresh"), "{text}");
    g.resume(());
    assert!(debug(&g).contains("suspended"));
    g.resume(());
    assert!(debug(&g).contains("finished"));
    assert_eq!(debug(&GreenletResult::<u8, u8>::Yielded(1)), "Yielded(1)");
    let a = greenhack::Builder::new()
        .name("pair")
        .as_async(|| 1)
        .unwrap();
    assert!(debug(&a).contains("AsAsync"), "{}", debug(&a));
    assert_eq!(a.name(), Some("pair"));
    greenhack::run(|| {
        let h = greenhack::spawn(|| 1);
        assert!(debug(&h).contains("finished: false"), "{}", debug(&h));
        h.join().unwrap();
    });
    let _ = debug(&greenhack::stack::stats());
    let _ = debug(&greenhack::debug::dump());
}

// ----- edges: re-parented greenlets, waits in destructors, sliced greenlets, thread exit, ... --

#[test]
fn a_greenlet_resumed_from_a_different_parent_each_time() {
    let mut shared = Box::new(Greenlet::<u32, u32, u32>::new(|s, mut x| {
        for _ in 0..3 {
            x = s.suspend(x + 1);
        }
        x
    }));
    assert_eq!(shared.resume(1).into_yielded(), Some(2));
    // Moved (in its box, and out of it) while suspended, then resumed from
    // inside another greenlet.
    let moved: Greenlet<u32, u32, u32> = *shared;
    let mut host = Greenlet::<(), (), (Greenlet<u32, u32, u32>, u32)>::new(move |_, ()| {
        let mut g = moved;
        let v = g.resume(10).into_yielded().unwrap();
        (g, v)
    });
    let (mut g, v) = host.resume(()).into_complete().unwrap();
    assert_eq!(v, 11);
    // And back from the thread's own stack.
    assert_eq!(g.resume(20).into_yielded(), Some(21));
    assert_eq!(g.resume(30).into_complete(), Some(30));
}

#[test]
fn a_panic_unwinding_through_a_greenlet_drops_its_suspended_children() {
    let drops = Rc::new(Cell::new(0));
    let d = drops.clone();
    let mut outer = Greenlet::<(), (), ()>::new(move |_, ()| {
        let mut child = Greenlet::<(), (), ()>::new(move |s, ()| {
            let _c = DropCounter(d);
            s.suspend(());
        });
        child.resume(());
        panic!("outer failed");
    });
    let err = catch(|| outer.resume(())).unwrap_err();
    assert_eq!(panic_message(&*err), "outer failed");
    assert_eq!(drops.get(), 1, "the child was unwound during the panic");
}

#[test]
fn a_raw_greenlet_waiting_inside_a_spawned_greenlet() {
    const NAME: &str = "a_raw_greenlet_waiting_inside_a_spawned_greenlet";
    if util::is_child(NAME) {
        let out = greenhack::run(|| {
            let other = greenhack::spawn(|| {
                greenhack::sleep(Duration::from_millis(5));
                "other"
            });
            let h = greenhack::spawn(|| {
                let mut raw = Greenlet::<(), (), u32>::new(|_, ()| {
                    greenhack::sleep(Duration::from_millis(10));
                    greenhack::exempt(async { 5 })
                });
                raw.resume(()).into_complete().unwrap()
            });
            (h.join().unwrap(), other.join().unwrap())
        });
        assert_eq!(out, (5, "other"));
        return;
    }
    let out = util::run_child_with_limit(NAME, Duration::from_secs(20));
    eprintln!("{}", stderr_of(&out));
    util::assert_child_passed(&out);
}

#[test]
fn a_wait_in_a_destructor_of_a_cancelled_greenlet_blocks_only_on_that_wait() {
    greenhack::run(|| {
        struct SlowClose(Rc<RefCell<Vec<&'static str>>>);
        impl Drop for SlowClose {
            fn drop(&mut self) {
                self.0.borrow_mut().push("close start");
                greenhack::sleep(Duration::from_millis(20));
                self.0.borrow_mut().push("close end");
            }
        }
        let log = Rc::new(RefCell::new(Vec::new()));
        let l = log.clone();
        let victim = greenhack::spawn(move || {
            let _c = SlowClose(l);
            greenhack::sleep(Duration::from_secs(3600));
        });
        let l = log.clone();
        let ticker = greenhack::spawn(move || {
            for _ in 0..3 {
                greenhack::sleep(Duration::from_millis(5));
                l.borrow_mut().push("tick");
            }
        });
        greenhack::yield_now();
        victim.cancel();
        assert!(victim.join().unwrap_err().is_cancelled());
        ticker.join().unwrap();
        let log = log.borrow();
        // No tick between the destructor's start and end.
        let start = log.iter().position(|e| *e == "close start").unwrap();
        assert_eq!(log[start + 1], "close end", "{log:?}");
        assert_eq!(log.iter().filter(|e| **e == "tick").count(), 3);
    });
}

#[test]
fn timeout_of_code_that_does_not_wait_returns_ok() {
    std::thread::spawn(|| {
        assert_eq!(greenhack::timeout(Duration::ZERO, || 5), Ok(5));
        assert_eq!(
            greenhack::timeout(Duration::ZERO, || greenhack::exempt(async { 6 })),
            Ok(6)
        );
        assert_eq!(greenhack::timeout(Duration::MAX, || 7), Ok(7));
        // On a plain thread, outside run: the deadline still cuts a wait.
        let start = Instant::now();
        let r = greenhack::timeout(Duration::from_millis(10), || {
            greenhack::sleep(Duration::from_secs(3600))
        });
        assert!(r.is_err());
        assert!(start.elapsed() < Duration::from_secs(5));
        // And a wait after the scope closed is not cut.
        greenhack::sleep(Duration::from_millis(15));
    })
    .join()
    .unwrap();
}

#[test]
fn run_nested_on_a_plain_thread() {
    std::thread::spawn(|| {
        let n = greenhack::run(|| {
            let a = greenhack::spawn(|| {
                greenhack::sleep(Duration::from_millis(5));
                1
            });
            let inner = greenhack::run(|| greenhack::spawn(|| 2).join().unwrap());
            inner + a.join().unwrap()
        });
        assert_eq!(n, 3);
    })
    .join()
    .unwrap();
}

#[test]
fn resuming_a_sliced_greenlet_inside_another_sliced_one_panics() {
    const NAME: &str = "resuming_a_sliced_greenlet_inside_another_sliced_one_panics";
    if util::is_child(NAME) {
        greenhack::run(|| {
            // SAFETY: the greenlets wait on nothing outside them.
            let b = unsafe { greenhack::Builder::new().sliced() };
            let h = b
                .clone()
                .spawn(move || {
                    let inner = b.as_async(|| 1).unwrap();
                    catch(|| greenhack::exempt(inner)).map_err(|p| panic_message(&*p))
                })
                .unwrap();
            let r = h.join().unwrap();
            let msg = r.unwrap_err();
            assert!(msg.contains("sliced"), "{msg}");
        });
        return;
    }
    let out = util::run_child(NAME);
    util::assert_child_passed(&out);
}

#[test]
fn a_sliced_greenlet_passes_values_and_panics_like_any_other() {
    greenhack::run(|| {
        let handles: Vec<_> = (0..50u64)
            .map(|i| {
                // SAFETY: the greenlets wait only on greenhack's timer.
                let b = unsafe { greenhack::Builder::new().sliced() };
                b.name(format!("sliced-{i}"))
                    .spawn(move || {
                        let local = std::hint::black_box(vec![i; 10]); // on the heap, across waits
                        greenhack::sleep(Duration::from_millis(i % 5));
                        greenhack::yield_now();
                        if i == 7 {
                            panic!("seven");
                        }
                        local.iter().sum::<u64>()
                    })
                    .unwrap()
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let r = h.join();
            if i == 7 {
                assert_eq!(r.unwrap_err().to_string(), "greenlet panicked: seven");
            } else {
                assert_eq!(r.unwrap(), 10 * i as u64);
            }
        }
    });
}

#[test]
fn cancelling_a_sliced_greenlet_runs_its_destructors() {
    greenhack::run(|| {
        let drops = Rc::new(Cell::new(0));
        let hs: Vec<_> = (0..3)
            .map(|_| {
                let d = drops.clone();
                // SAFETY: the greenlets wait only on greenhack's timer.
                let b = unsafe { greenhack::Builder::new().sliced() };
                b.spawn(move || {
                    let _g = DropCounter(d);
                    greenhack::sleep(Duration::from_secs(3600));
                })
                .unwrap()
            })
            .collect();
        greenhack::yield_now();
        for h in &hs {
            h.cancel();
        }
        for h in hs {
            assert!(h.join().unwrap_err().is_cancelled());
        }
        assert_eq!(drops.get(), 3);
    });
}

#[test]
fn as_async_under_a_multi_thread_runtimes_block_on() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let n = rt.block_on(greenhack::as_async(|| {
        greenhack::sleep(Duration::from_millis(2));
        greenhack::exempt(tokio::time::sleep(Duration::from_millis(2)));
        greenhack::spawn(|| 4).join().unwrap()
    }));
    assert_eq!(n, 4);
}

#[test]
fn a_frame_larger_than_the_stack_hits_the_guard_page_and_is_reported() {
    const NAME: &str = "a_frame_larger_than_the_stack_hits_the_guard_page_and_is_reported";
    if util::is_child(NAME) {
        #[inline(never)]
        fn huge_frame() -> u8 {
            let big = std::hint::black_box([1u8; 1 << 20]);
            big[12345]
        }
        let mut g: Greenlet<(), (), u8> = Builder::new()
            .name("big-frame")
            .build(|_, ()| huge_frame())
            .unwrap();
        g.resume(());
        unreachable!("must abort");
    }
    let out = util::run_child(NAME);
    util::assert_aborted(&out);
    let err = stderr_of(&out);
    assert!(
        err.contains("greenlet 'big-frame'")
            && err.contains("overflowed its stack of 262144 bytes"),
        "{err}"
    );
}

#[test]
fn join_inside_an_as_async_of_a_foreign_executor_panics_naming_the_alternative() {
    std::thread::spawn(|| {
        let h = greenhack::spawn(|| 1);
        let err =
            catch(|| futures_executor::block_on(greenhack::as_async(move || h.join().unwrap())))
                .unwrap_err();
        let msg = panic_message(&*err);
        assert!(
            msg.contains("JoinHandle::join") && msg.contains("spawn_local"),
            "{msg}"
        );
    })
    .join()
    .unwrap();
}

#[test]
fn dump_gives_the_creation_site_of_spawned_greenlets_and_backtraces_from_inside_one() {
    greenhack::run(|| {
        let line = line!() + 1;
        let sleeper = greenhack::spawn(|| greenhack::sleep(Duration::from_secs(3600)));
        let sleeper_id = Rc::new(Cell::new(0u64));
        greenhack::yield_now();
        let inspector = greenhack::spawn(move || {
            let dump = greenhack::debug::dump();
            let mine = dump
                .greenlets
                .iter()
                .filter(|g| {
                    g.created_at
                        .is_some_and(|l| l.file().ends_with("audit_core.rs") && l.line() == line)
                })
                .collect::<Vec<_>>();
            assert_eq!(mine.len(), 1, "{dump}");
            let s = mine[0];
            assert_eq!(s.state, "suspended");
            let bt = s
                .backtrace
                .as_deref()
                .expect("a suspended greenlet's backtrace");
            assert!(bt.contains("greenhack::time::sleep"), "{bt}");
            s.id
        });
        sleeper_id.set(inspector.join().unwrap());
        assert_ne!(sleeper_id.get(), 0);
        sleeper.cancel();
    });
}

#[test]
fn after_a_panic_in_run_the_greenlets_left_run_at_the_next_run() {
    std::thread::spawn(|| {
        let ran = Rc::new(Cell::new(false));
        let r = ran.clone();
        let err = catch(move || {
            greenhack::run(move || {
                let _detached = greenhack::spawn(move || r.set(true));
                panic!("body failed")
            })
        })
        .unwrap_err();
        assert_eq!(panic_message(&*err), "body failed");
        assert!(!ran.get(), "the panic propagated at once");
        greenhack::run(|| ());
        assert!(ran.get(), "ran the next time the loop ran");
    })
    .join()
    .unwrap();
}

#[test]
fn a_panic_in_run_on_a_tokio_thread_does_not_leave_blocking_permitted() {
    // `run` on a foreign executor's thread permits blocking for its
    // duration only: after it returns, or panics, `exempt` refuses again.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    std::thread::spawn(move || {
        rt.block_on(async {
            assert_eq!(greenhack::run(|| greenhack::exempt(async { 1 })), 1);
            assert!(
                greenhack::try_exempt(async { 2 }).is_err(),
                "after run returned"
            );
            let _ = catch(|| greenhack::run(|| panic!("body failed")));
            assert!(
                greenhack::try_exempt(async { 3 }).is_err(),
                "after run panicked"
            );
        });
    })
    .join()
    .unwrap();
}

#[test]
fn thread_exit_drops_the_closures_of_greenlets_that_never_ran() {
    let drops = Arc::new(AtomicUsize::new(0));
    let ran = Arc::new(AtomicUsize::new(0));
    let (d, r) = (drops.clone(), ran.clone());
    std::thread::spawn(move || {
        struct Count(Arc<AtomicUsize>);
        impl Drop for Count {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        for _ in 0..5 {
            let c = Count(d.clone());
            let r = r.clone();
            drop(greenhack::spawn(move || {
                let _c = c;
                r.fetch_add(1, Ordering::SeqCst);
            }));
        }
        // The thread never waits: the greenlets never run.
    })
    .join()
    .unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(drops.load(Ordering::SeqCst), 5);
}

#[test]
fn thread_exit_with_a_destructor_that_waits() {
    const NAME: &str = "thread_exit_with_a_destructor_that_waits";
    if util::is_child(NAME) {
        static CLOSED: AtomicUsize = AtomicUsize::new(0);
        std::thread::spawn(|| {
            struct SlowClose;
            impl Drop for SlowClose {
                fn drop(&mut self) {
                    greenhack::sleep(Duration::from_millis(5));
                    greenhack::exempt(async {});
                    CLOSED.fetch_add(1, Ordering::SeqCst);
                }
            }
            greenhack::start_loop();
            for _ in 0..3 {
                drop(greenhack::spawn(|| {
                    let _c = SlowClose;
                    greenhack::sleep(Duration::from_secs(3600));
                }));
            }
            greenhack::yield_now();
        })
        .join()
        .unwrap();
        assert_eq!(CLOSED.load(Ordering::SeqCst), 3);
        return;
    }
    util::assert_child_passed(&util::run_child_with_limit(NAME, Duration::from_secs(20)));
}

#[test]
fn a_greenlet_woken_from_another_thread() {
    greenhack::run(|| {
        let hs: Vec<_> = (0..10u32)
            .map(|i| {
                greenhack::spawn(move || {
                    let (tx, rx) = futures_channel_oneshot();
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(2));
                        tx.send(i)
                    });
                    greenhack::exempt(rx)
                })
            })
            .collect();
        let sum: u32 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(sum, 45);
    });
}

/// Keeps the waker of the task that polls it.
struct StealWaker(Rc<RefCell<Option<Waker>>>);

impl Future for StealWaker {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        *self.0.borrow_mut() = Some(cx.waker().clone());
        Poll::Ready(())
    }
}

#[test]
fn stale_wakers_of_finished_greenlets_are_harmless() {
    let stash = Rc::new(RefCell::new(None));
    let s = stash.clone();
    greenhack::run(move || {
        greenhack::spawn(move || greenhack::exempt(StealWaker(s)))
            .join()
            .unwrap();
        let stale = stash.borrow_mut().take().unwrap();
        // New greenlets may reuse the finished one's slot: a stale wake must
        // not run them early, twice, or crash.
        let counts = Rc::new(Cell::new(0));
        let hs: Vec<_> = (0..5)
            .map(|_| {
                let c = counts.clone();
                greenhack::spawn(move || {
                    greenhack::sleep(Duration::from_millis(5));
                    c.set(c.get() + 1);
                })
            })
            .collect();
        for _ in 0..10 {
            stale.wake_by_ref();
            greenhack::yield_now();
        }
        let thread_waker = stale.clone();
        std::thread::spawn(move || thread_waker.wake())
            .join()
            .unwrap();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(counts.get(), 5);
        stale.wake();
    });
}

#[test]
fn a_waker_of_a_greenlet_woken_after_its_thread_exited_is_harmless() {
    let (tx, rx) = std::sync::mpsc::channel::<Waker>();
    std::thread::spawn(move || {
        greenhack::run(move || {
            let stash = Rc::new(RefCell::new(None));
            let s = stash.clone();
            drop(greenhack::spawn(move || {
                greenhack::exempt(StealWaker(s.clone()));
                // Suspended at thread exit, its waker in another thread.
                greenhack::exempt(std::future::pending::<()>());
            }));
            greenhack::yield_now();
            tx.send(stash.borrow_mut().take().unwrap()).unwrap();
        })
    });
    let waker = rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    waker.wake_by_ref();
    waker.wake();
}

/// CPU time of the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[test]
fn a_far_deadline_neither_spins_nor_wakes_early() {
    std::thread::spawn(|| {
        greenhack::run(|| {
            let woke = Rc::new(Cell::new(false));
            let w = woke.clone();
            // Centuries, but representable by `Instant`.
            let far = greenhack::spawn(move || {
                greenhack::sleep(Duration::from_secs(1 << 40));
                w.set(true);
            });
            greenhack::yield_now();
            let cpu = thread_cpu_time();
            let (tx, rx) = futures_channel_oneshot();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                tx.send(1)
            });
            assert_eq!(greenhack::exempt(rx), 1);
            let spent = thread_cpu_time() - cpu;
            assert!(
                spent < Duration::from_millis(50),
                "the idle loop spun: {spent:?}"
            );
            assert!(!woke.get());
            far.cancel();
            assert!(far.join().unwrap_err().is_cancelled());
        });
    })
    .join()
    .unwrap();
}

/// How many pages of `range` are resident.
fn resident_pages(range: std::ops::Range<usize>) -> usize {
    let page = 4096;
    let pages = range.len().div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: `range` is page aligned and mapped (a pooled stack); `vec`
    // has one byte per page.
    let rc = unsafe {
        libc::mincore(
            range.start as *mut libc::c_void,
            range.len(),
            vec.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    vec.iter().filter(|&&b| b & 1 != 0).count()
}

#[test]
fn a_pooled_stack_gives_back_its_deep_pages() {
    std::thread::spawn(|| {
        use greenhack::stack::{POOL_KEEP_BYTES, stats};
        let mut g: Greenlet<(), (), u64> = Builder::new()
            .stack_size(1 << 20)
            .build(|s, ()| {
                // 160 KiB deep, far below the kept top, measured by the
                // stack pointer (frame sizes vary by build).
                let bottom = current_sp() - 160 * 1024;
                #[inline(never)]
                fn deep(s: &Suspender<(), ()>, bottom: usize) -> u64 {
                    let pad = std::hint::black_box([7u64; 128]); // ~1 KiB a frame
                    if current_sp() < bottom {
                        s.suspend(()); // at the bottom
                        0
                    } else {
                        deep(s, bottom) + pad[1]
                    }
                }
                deep(s, bottom)
            })
            .unwrap();
        let range = g.stack_range().unwrap();
        let deep_part = range.start..range.end - POOL_KEEP_BYTES - 4096;
        g.resume(());
        assert!(
            resident_pages(deep_part.clone()) > 16,
            "the recursion went deep"
        );
        g.resume(());
        assert_eq!(stats().pooled, 1, "the stack is in the pool, still mapped");
        assert_eq!(resident_pages(deep_part), 0, "deep pages released");
        assert!(
            resident_pages(range.end - 4096..range.end) > 0,
            "the top is kept"
        );
    })
    .join()
    .unwrap();
}

#[test]
#[cfg(debug_assertions)]
fn a_suspender_lent_to_a_nested_greenlet_is_refused_in_debug_builds() {
    let mut outer = Greenlet::<u32, u32, u32>::new(|s, first| {
        // The resume value may be a reference: here, the outer suspender.
        let mut inner =
            Greenlet::<&Suspender<u32, u32>, (), u32>::new(|_, outer_s| outer_s.suspend(100) + 1);
        first + inner.resume(s).into_complete().unwrap()
    });
    let err = catch(|| outer.resume(1)).unwrap_err();
    let msg = panic_message(&*err);
    assert!(msg.contains("another greenlet's stack"), "{msg}");
    assert!(outer.is_finished());
}

#[test]
fn each_poll_of_an_as_async_hands_the_current_pollers_waker_to_the_wait() {
    let ready = Rc::new(Cell::new(false));
    let slot = Rc::new(RefCell::new(None::<Waker>));
    let (r, w) = (ready.clone(), slot.clone());
    let mut fut = Box::pin(greenhack::as_async(move || {
        greenhack::exempt(Gate { ready: r, waker: w })
    }));
    let a = Waker::from(Arc::new(CountingWaker::default()));
    let b = Waker::from(Arc::new(CountingWaker::default()));
    assert!(fut.as_mut().poll(&mut Context::from_waker(&a)).is_pending());
    assert!(slot.borrow().as_ref().unwrap().will_wake(&a));
    // Moved to another task (a spurious poll): the wait now sees b.
    assert!(fut.as_mut().poll(&mut Context::from_waker(&b)).is_pending());
    assert!(slot.borrow().as_ref().unwrap().will_wake(&b));
    ready.set(true);
    assert_eq!(
        fut.as_mut().poll(&mut Context::from_waker(&b)),
        Poll::Ready("opened")
    );
}

#[test]
fn exempt_takes_any_into_future() {
    struct Later(u8);
    impl std::future::IntoFuture for Later {
        type Output = u8;
        type IntoFuture = std::future::Ready<u8>;
        fn into_future(self) -> Self::IntoFuture {
            std::future::ready(self.0 * 2)
        }
    }
    std::thread::spawn(|| {
        assert_eq!(greenhack::exempt(Later(21)), 42);
        assert_eq!(
            greenhack::run(|| greenhack::spawn(|| greenhack::exempt(Later(4)))
                .join()
                .unwrap()),
            8
        );
    })
    .join()
    .unwrap();
}

#[test]
fn a_timed_out_join_leaves_the_greenlet_running_detached() {
    greenhack::run(|| {
        let done = Rc::new(Cell::new(false));
        let d = done.clone();
        let h = greenhack::spawn(move || {
            greenhack::sleep(Duration::from_millis(30));
            d.set(true);
        });
        assert!(greenhack::timeout(Duration::from_millis(5), move || h.join()).is_err());
        assert!(!done.get());
        wait_until("the greenlet finishes", || done.get());
    });
}

#[test]
fn many_greenlets_spawned_and_joined() {
    let total = greenhack::run(|| {
        let hs: Vec<_> = (0..5_000u64)
            .map(|i| {
                greenhack::spawn(move || {
                    greenhack::yield_now();
                    i
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
    });
    assert_eq!(total, (0..5_000).sum::<u64>());
}

#[test]
fn a_later_dump_on_signal_call_moves_the_dump_to_its_thread() {
    const NAME: &str = "a_later_dump_on_signal_call_moves_the_dump_to_its_thread";
    if util::is_child(NAME) {
        std::thread::Builder::new()
            .name("first-target".into())
            .spawn(|| greenhack::debug::dump_on_signal(libc::SIGUSR2).unwrap())
            .unwrap()
            .join()
            .unwrap();
        std::thread::Builder::new()
            .name("second-target".into())
            .spawn(|| {
                greenhack::debug::dump_on_signal(libc::SIGUSR2).unwrap();
                greenhack::run(|| {
                    let _s = greenhack::Builder::new()
                        .name("moved-dump-sleeper")
                        .spawn(|| greenhack::sleep(Duration::from_millis(100)))
                        .unwrap();
                    greenhack::yield_now();
                    // SAFETY: raising a signal whose handler is installed.
                    unsafe { libc::raise(libc::SIGUSR2) };
                    greenhack::sleep(Duration::from_millis(30));
                });
            })
            .unwrap()
            .join()
            .unwrap();
        return;
    }
    let out = util::run_child(NAME);
    util::assert_child_passed(&out);
    let err = stderr_of(&out);
    assert!(
        err.contains("on thread \"second-target\"") && err.contains("moved-dump-sleeper"),
        "{err}"
    );
}

#[test]
fn overflow_on_a_thread_created_by_c_is_reported() {
    // Such a thread has no alternate signal stack until greenhack gives it
    // one (module docs of the overflow handler).
    const NAME: &str = "overflow_on_a_thread_created_by_c_is_reported";
    if util::is_child(NAME) {
        extern "C" fn body(_: *mut libc::c_void) -> *mut libc::c_void {
            let mut g: Greenlet<(), (), u64> = Builder::new()
                .name("c-thread-deep")
                .stack_size(64 * 1024)
                .build(|_, ()| recurse(0))
                .unwrap();
            g.resume(());
            std::ptr::null_mut()
        }
        let mut t: libc::pthread_t = 0;
        // SAFETY: a plain pthread running `body`, joined below.
        unsafe {
            assert_eq!(
                libc::pthread_create(&mut t, std::ptr::null(), body, std::ptr::null_mut()),
                0
            );
            libc::pthread_join(t, std::ptr::null_mut());
        }
        unreachable!("must abort");
    }
    let out = util::run_child(NAME);
    util::assert_aborted(&out);
    let err = stderr_of(&out);
    assert!(
        err.contains("greenlet 'c-thread-deep'")
            && err.contains("overflowed its stack of 65536 bytes"),
        "{err}"
    );
}

#[test]
fn dump_names_the_future_a_greenlet_waits_on() {
    let ready = Rc::new(Cell::new(false));
    let slot = Rc::new(RefCell::new(None::<Waker>));
    let (r, w) = (ready.clone(), slot.clone());
    let mut fut = Box::pin(
        greenhack::Builder::new()
            .name("gated")
            .as_async(move || greenhack::exempt(Gate { ready: r, waker: w }))
            .unwrap(),
    );
    let waker = Waker::from(Arc::new(CountingWaker::default()));
    assert!(
        fut.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    let dump = greenhack::debug::dump();
    let g = dump
        .greenlets
        .iter()
        .find(|g| g.name.as_deref() == Some("gated"))
        .unwrap();
    assert_eq!(g.wait, greenhack::debug::Wait::Future("audit_core::Gate"));
    assert!(
        dump.to_string()
            .contains("waiting for future audit_core::Gate"),
        "{dump}"
    );
    ready.set(true);
    assert!(
        fut.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready()
    );
}

#[test]
fn a_greenlet_that_cancels_itself_is_unwound_at_its_next_wait() {
    greenhack::run(|| {
        let me: Rc<RefCell<Option<JoinHandle<u32>>>> = Rc::new(RefCell::new(None));
        let drops = Rc::new(Cell::new(0));
        let (m, d) = (me.clone(), drops.clone());
        let h = greenhack::spawn(move || {
            let _g = DropCounter(d);
            greenhack::yield_now(); // the handle is stored meanwhile
            m.borrow().as_ref().unwrap().cancel();
            greenhack::sleep(Duration::from_millis(1));
            unreachable!("unwound at the wait");
        });
        *me.borrow_mut() = Some(h);
        wait_until("it is unwound", || {
            me.borrow().as_ref().unwrap().is_finished()
        });
        let h = me.borrow_mut().take().unwrap();
        assert!(h.join().unwrap_err().is_cancelled());
        assert_eq!(drops.get(), 1);

        // Cancelled, but it finishes without waiting again: its value.
        let me: Rc<RefCell<Option<JoinHandle<u32>>>> = Rc::new(RefCell::new(None));
        let done = Rc::new(Cell::new(false));
        let (m, d) = (me.clone(), done.clone());
        let h = greenhack::spawn(move || {
            greenhack::yield_now();
            m.borrow().as_ref().unwrap().cancel();
            d.set(true);
            7
        });
        *me.borrow_mut() = Some(h);
        wait_until("it cancelled itself", || done.get());
        let h = me.borrow_mut().take().unwrap();
        assert_eq!(h.join().unwrap(), 7);
    });
}

#[test]
fn cancelling_a_greenlet_inside_a_nested_as_async_unwinds_both() {
    greenhack::run(|| {
        let drops = Rc::new(Cell::new(0));
        let d = drops.clone();
        let h = greenhack::spawn(move || {
            let _outer = DropCounter(d.clone());
            greenhack::exempt(greenhack::as_async(move || {
                let _inner = DropCounter(d);
                greenhack::sleep(Duration::from_secs(3600));
            }));
        });
        greenhack::yield_now(); // it runs to its wait
        h.cancel();
        assert!(h.join().unwrap_err().is_cancelled());
        assert_eq!(drops.get(), 2);
    });
}

#[test]
fn spawning_from_a_destructor_during_thread_exit() {
    const NAME: &str = "spawning_from_a_destructor_during_thread_exit";
    if util::is_child(NAME) {
        static EVENTS: AtomicUsize = AtomicUsize::new(0);
        std::thread::spawn(|| {
            struct SpawnOnDrop;
            impl Drop for SpawnOnDrop {
                fn drop(&mut self) {
                    EVENTS.fetch_add(1, Ordering::SeqCst);
                    struct Counted;
                    impl Drop for Counted {
                        fn drop(&mut self) {
                            EVENTS.fetch_add(10, Ordering::SeqCst);
                        }
                    }
                    let c = Counted;
                    let _ = catch(move || drop(greenhack::spawn(move || drop(c))));
                }
            }
            greenhack::start_loop();
            drop(greenhack::spawn(|| {
                let _s = SpawnOnDrop;
                greenhack::sleep(Duration::from_secs(3600));
            }));
            greenhack::yield_now();
        })
        .join()
        .unwrap();
        // The destructor ran, and the closure it spawned was dropped (run or
        // not) rather than leaked.
        assert_eq!(EVENTS.load(Ordering::SeqCst), 11);
        return;
    }
    let out = util::run_child_with_limit(NAME, Duration::from_secs(20));
    util::assert_child_passed(&out);
}

#[test]
fn timeout_cuts_a_tokio_wait_inside_as_async_on_tokio() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let drops = Rc::new(Cell::new(0));
    let d = drops.clone();
    let start = Instant::now();
    let r = rt.block_on(greenhack::as_async(move || {
        greenhack::timeout(Duration::from_millis(10), move || {
            let _g = DropCounter(d);
            greenhack::exempt(tokio::time::sleep(Duration::from_secs(3600)));
        })
    }));
    assert!(r.is_err());
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(drops.get(), 1);
}

#[test]
fn thread_exit_unwinds_suspended_sliced_greenlets_and_frees_their_stack() {
    const NAME: &str = "thread_exit_unwinds_suspended_sliced_greenlets_and_frees_their_stack";
    if util::is_child(NAME) {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        struct Count;
        impl Drop for Count {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::SeqCst);
            }
        }
        let work = || {
            greenhack::start_loop();
            for i in 0..100u64 {
                // SAFETY: the greenlets wait only on greenhack's timer.
                let b = unsafe { greenhack::Builder::new().sliced() };
                drop(
                    b.spawn(move || {
                        let _c = Count;
                        let frames = std::hint::black_box([i; 16]);
                        greenhack::sleep(Duration::from_secs(3600));
                        frames[0]
                    })
                    .unwrap(),
                );
            }
            greenhack::yield_now();
        };
        std::thread::spawn(work).join().unwrap();
        let before = mapping_count();
        let start = DROPS.load(Ordering::SeqCst);
        // A thread's sliced greenlets share one stack: a leaked one is two
        // mappings a thread, so enough threads to tell it from the
        // allocator's own few.
        for _ in 0..64 {
            std::thread::spawn(work).join().unwrap();
        }
        assert_eq!(DROPS.load(Ordering::SeqCst) - start, 6400);
        let after = mapping_count();
        assert!(after <= before + 64, "mappings {before} -> {after}");
        return;
    }
    util::assert_child_passed(&util::run_child(NAME));
}

#[test]
fn dropping_a_greenlet_unwinds_the_suspended_greenlets_it_owns() {
    let drops = Rc::new(Cell::new(0));
    let d = drops.clone();
    let mut outer = Greenlet::<(), (), ()>::new(move |s, ()| {
        let _o = DropCounter(d.clone());
        let mut inner = Greenlet::<(), (), ()>::new(move |s, ()| {
            let _i = DropCounter(d);
            s.suspend(());
        });
        inner.resume(());
        s.suspend(());
        unreachable!();
    });
    outer.resume(());
    drop(outer);
    assert_eq!(drops.get(), 2);
}

#[test]
fn odd_sized_and_over_aligned_values_cross_intact() {
    #[derive(Debug, Clone, Copy, PartialEq)]
    #[repr(align(64))]
    struct Wide(u64, u8);
    let mut g = Greenlet::new(|s: &Suspender<u128, [u8; 3]>, first: u128| {
        let a = s.suspend([1, 2, 3]);
        let b = s.suspend([4, 5, 6]);
        (Wide(first as u64, 9), a, b)
    });
    assert_eq!(g.resume(u128::MAX - 1).into_yielded(), Some([1, 2, 3]));
    assert_eq!(g.resume(1 << 100).into_yielded(), Some([4, 5, 6]));
    let (w, a, b) = g.resume(7).into_complete().unwrap();
    assert_eq!(w, Wide((u128::MAX - 1) as u64, 9));
    assert_eq!((a, b), (1 << 100, 7));
    let mut g = Greenlet::<Wide, Wide, Wide>::new(|s, w| {
        let w2 = s.suspend(Wide(w.0 + 1, w.1));
        Wide(w2.0 * 2, w2.1)
    });
    assert_eq!(g.resume(Wide(1, 2)).into_yielded(), Some(Wide(2, 2)));
    assert_eq!(g.resume(Wide(5, 3)).into_complete(), Some(Wide(10, 3)));
}

#[test]
fn join_errors_convert_into_boxed_send_sync_errors() {
    fn boxed(e: JoinError) -> Box<dyn std::error::Error + Send + Sync> {
        e.into()
    }
    greenhack::run(|| {
        let err = greenhack::spawn(|| panic!("{}", "as a box"))
            .join()
            .unwrap_err();
        let b = boxed(err);
        assert_eq!(b.to_string(), "greenlet panicked: as a box");
        // io::Error::other takes it too, and it comes back out.
        let h = greenhack::spawn(|| greenhack::sleep(Duration::from_secs(3600)));
        h.cancel();
        let io = std::io::Error::other(h.join().unwrap_err());
        let inner = io.into_inner().unwrap().downcast::<JoinError>().unwrap();
        assert!(inner.is_cancelled());
        // Shared between threads, its message reads the same.
        let err = Arc::new(greenhack::spawn(|| panic!("shared")).join().unwrap_err());
        let e2 = err.clone();
        let text = std::thread::spawn(move || e2.to_string()).join().unwrap();
        assert_eq!(text, "greenlet panicked: shared");
        let payload = Arc::try_unwrap(err).unwrap().into_panic();
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"shared"));
    });
}

#[test]
fn a_greenlet_created_in_a_late_thread_local_destructor() {
    // A thread-local registered before greenhack's, so destroyed after
    // them, whose destructor runs a greenlet (a generator, say).
    const NAME: &str = "a_greenlet_created_in_a_late_thread_local_destructor";
    if util::is_child(NAME) {
        static RESULT: AtomicUsize = AtomicUsize::new(0);
        struct RunsAGreenletOnDrop;
        impl Drop for RunsAGreenletOnDrop {
            fn drop(&mut self) {
                let mut g = Greenlet::<u32, u32, u32>::new(|s, x| s.suspend(x + 1) * 2);
                let a = g.resume(1).into_yielded().unwrap();
                let b = g.resume(a).into_complete().unwrap();
                RESULT.store(b as usize, Ordering::SeqCst);
            }
        }
        thread_local! {
            static EARLY: RunsAGreenletOnDrop = const { RunsAGreenletOnDrop };
        }
        std::thread::spawn(|| {
            EARLY.with(|_| ());
            // greenhack's thread-locals come to life after EARLY.
            greenhack::run(|| greenhack::spawn(|| ()).join().unwrap());
            let mut g = Greenlet::<(), (), ()>::new(|_, ()| ());
            g.resume(());
        })
        .join()
        .unwrap();
        assert_eq!(RESULT.load(Ordering::SeqCst), 4);
        return;
    }
    let out = util::run_child(NAME);
    util::assert_child_passed(&out);
}

/// A thread-local registered before greenhack's (so destroyed after them)
/// whose destructor runs `f`, on a thread that used greenhack's loop.
fn in_a_late_thread_local_destructor(f: fn()) {
    thread_local! {
        static LATE: RefCell<Option<LateCall>> = const { RefCell::new(None) };
    }
    struct LateCall(fn());
    impl Drop for LateCall {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    std::thread::spawn(move || {
        LATE.with(|l| *l.borrow_mut() = Some(LateCall(f)));
        greenhack::run(|| greenhack::spawn(|| ()).join().unwrap());
    })
    .join()
    .unwrap();
}

#[test]
fn a_ready_wait_in_a_late_thread_local_destructor() {
    const NAME: &str = "a_ready_wait_in_a_late_thread_local_destructor";
    if util::is_child(NAME) {
        static DONE: AtomicUsize = AtomicUsize::new(0);
        in_a_late_thread_local_destructor(|| {
            let v = greenhack::exempt(async { 3 });
            let t = greenhack::timeout(Duration::from_secs(1), || greenhack::exempt(async { 4 }));
            DONE.store(v + t.unwrap(), Ordering::SeqCst);
        });
        assert_eq!(DONE.load(Ordering::SeqCst), 7);
        return;
    }
    util::assert_child_passed(&util::run_child_with_limit(NAME, Duration::from_secs(20)));
}

/// After the reactor's owner is destroyed, the reactor a late wait makes
/// is kept for the rest of the thread's exit: the timer a `sleep` arms is
/// on the reactor its wait turns (each call made a new one, and it hung).
#[test]
fn a_sleep_in_a_late_thread_local_destructor() {
    const NAME: &str = "a_sleep_in_a_late_thread_local_destructor";
    if util::is_child(NAME) {
        static DONE: AtomicUsize = AtomicUsize::new(0);
        in_a_late_thread_local_destructor(|| {
            greenhack::sleep(Duration::from_millis(1));
            DONE.store(1, Ordering::SeqCst);
        });
        assert_eq!(DONE.load(Ordering::SeqCst), 1);
        return;
    }
    util::assert_child_passed(&util::run_child_with_limit(NAME, Duration::from_secs(10)));
}

/// The same late reactor runs a greenlet spawned there: `join` gets its
/// value (it reported the greenlet cancelled, run by no loop).
#[test]
fn a_spawn_and_join_in_a_late_thread_local_destructor() {
    const NAME: &str = "a_spawn_and_join_in_a_late_thread_local_destructor";
    if util::is_child(NAME) {
        static GOT: AtomicUsize = AtomicUsize::new(0);
        in_a_late_thread_local_destructor(|| {
            let h = greenhack::spawn(|| {
                greenhack::sleep(Duration::from_millis(1));
                7
            });
            GOT.store(h.join().unwrap(), Ordering::SeqCst);
        });
        assert_eq!(GOT.load(Ordering::SeqCst), 7);
        return;
    }
    util::assert_child_passed(&util::run_child_with_limit(NAME, Duration::from_secs(10)));
}

#[test]
fn a_panic_on_the_smallest_stack_unwinds_with_backtraces_on() {
    // MIN_STACK_SIZE is documented as room for "a panic's unwinding"; the
    // default panic hook prints a backtrace on that stack when asked to.
    const NAME: &str = "a_panic_on_the_smallest_stack_unwinds_with_backtraces_on";
    if under_asan() {
        // ASan's redzones grow the symbolizer's frames past what an
        // uninstrumented build needs; the size is for ordinary builds.
        return;
    }
    if util::is_child(NAME) {
        // (std reads the variable once, at the first panic.)
        // SAFETY: the child test runs alone (one thread).
        unsafe { std::env::set_var("RUST_BACKTRACE", "full") };
        let mut g: Greenlet<(), (), ()> = Builder::new()
            .name("tiny")
            .stack_size(greenhack::stack::MIN_STACK_SIZE)
            .build(|_, ()| panic!("small but fine"))
            .unwrap();
        let err = catch(|| g.resume(())).unwrap_err();
        assert_eq!(panic_message(&*err), "small but fine");
        return;
    }
    let out = util::run_child(NAME);
    util::assert_child_passed(&out);
    let err = stderr_of(&out);
    assert!(
        err.contains("stack backtrace:"),
        "the hook printed one: {err}"
    );
}

#[test]
fn a_backtrace_of_a_greenlet_near_its_stack_limit_is_refused_not_fatal() {
    // The capture runs below the greenlet's frames: with too little stack
    // left it would hit the guard page and abort the whole process.
    const NAME: &str = "a_backtrace_of_a_greenlet_near_its_stack_limit_is_refused_not_fatal";
    if util::is_child(NAME) {
        thread_local!(static BASE: Cell<usize> = const { Cell::new(0) });
        #[inline(never)]
        fn down_to(s: &Suspender<(), ()>, left: usize) {
            std::hint::black_box([0u8; 256]);
            if current_sp() - BASE.with(Cell::get) <= left {
                s.suspend(());
            } else {
                down_to(s, left);
            }
        }
        for left in [2048, 4096, 8192] {
            let mut g: Greenlet<(), (), ()> = Builder::new()
                .name("near-the-limit")
                .stack_size(128 * 1024)
                .build(move |s, ()| down_to(s, left))
                .unwrap();
            BASE.with(|b| b.set(g.stack_range().unwrap().start));
            g.resume(());
            let bt = greenhack::debug::backtrace(&mut g).unwrap();
            assert!(bt.contains("not captured"), "{left}: {bt}");
            let dump = greenhack::debug::dump();
            let info = dump.greenlets.iter().find(|i| i.id == g.id()).unwrap();
            assert!(info.backtrace.as_deref().unwrap().contains("not captured"));
            g.resume(());
        }
        // With room, captured.
        let mut g: Greenlet<(), (), ()> = Builder::new()
            .stack_size(128 * 1024)
            .build(|s, ()| down_to(s, 64 * 1024))
            .unwrap();
        BASE.with(|b| b.set(g.stack_range().unwrap().start));
        g.resume(());
        assert!(
            greenhack::debug::backtrace(&mut g)
                .unwrap()
                .contains("down_to")
        );
        g.resume(());
        return;
    }
    util::assert_child_passed(&util::run_child(NAME));
}

#[test]
fn inside_spawn_blocking_run_permits_greenhacks_waits() {
    // A spawn_blocking task carries the runtime's context: greenhack cannot
    // tell its thread from a worker, so a bare wait refuses (documented), and
    // `run` is the way in.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (refused, n) = rt.block_on(async {
        tokio::task::spawn_blocking(|| {
            let refused = greenhack::try_exempt(async { 0 }).is_err();
            let n = greenhack::run(|| {
                greenhack::sleep(Duration::from_millis(1));
                greenhack::spawn(|| 3).join().unwrap() + greenhack::exempt(async { 1 })
            });
            (refused, n)
        })
        .await
        .unwrap()
    });
    assert!(refused);
    assert_eq!(n, 4);
}

#[test]
fn cancelling_a_greenlet_inside_a_timeout_scope_is_a_cancellation() {
    greenhack::run(|| {
        let drops = Rc::new(Cell::new(0));
        let d = drops.clone();
        let h = greenhack::spawn(move || {
            let _g = DropCounter(d);
            greenhack::timeout(Duration::from_secs(3600), || {
                greenhack::sleep(Duration::from_secs(3600));
            })
        });
        greenhack::yield_now();
        h.cancel();
        assert!(h.join().unwrap_err().is_cancelled());
        assert_eq!(drops.get(), 1);
    });
}

#[test]
fn dump_from_inside_a_sliced_greenlet_lists_its_sliced_out_neighbours() {
    greenhack::run(|| {
        // SAFETY: the greenlets wait only on greenhack's timer.
        let b = unsafe { greenhack::Builder::new().sliced() };
        let sleepers: Vec<_> = (0..3)
            .map(|i| {
                b.clone()
                    .name(format!("sliced-sleeper-{i}"))
                    .spawn(|| greenhack::sleep(Duration::from_secs(3600)))
                    .unwrap()
            })
            .collect();
        greenhack::yield_now();
        let inspector = b
            .clone()
            .name("sliced-inspector")
            .spawn(|| {
                let dump = greenhack::debug::dump();
                let listed = (0..3)
                    .filter(|i| {
                        dump.greenlets.iter().any(|g| {
                            g.name.as_deref() == Some(&format!("sliced-sleeper-{i}"))
                                && g.state == "suspended"
                                && matches!(g.wait, greenhack::debug::Wait::Sleep(_))
                        })
                    })
                    .count();
                let me = dump
                    .greenlets
                    .iter()
                    .find(|g| g.name.as_deref() == Some("sliced-inspector"))
                    .map(|g| g.state);
                (listed, me, dump.to_string())
            })
            .unwrap();
        let (listed, me, text) = inspector.join().unwrap();
        assert_eq!(listed, 3, "{text}");
        assert_eq!(me, Some("running"), "{text}");
        // From outside, their backtraces come back in.
        let dump = greenhack::debug::dump();
        let bt = dump
            .greenlets
            .iter()
            .find(|g| g.name.as_deref() == Some("sliced-sleeper-0"))
            .and_then(|g| g.backtrace.clone())
            .unwrap_or_default();
        assert!(bt.contains("greenhack::time::sleep"), "{dump}");
        for s in sleepers {
            s.cancel();
        }
    });
}

#[test]
fn a_panic_out_of_an_exempted_as_async_leaves_the_loop_usable() {
    std::thread::spawn(|| {
        let err = catch(|| {
            greenhack::exempt(greenhack::as_async(|| {
                greenhack::sleep(Duration::from_millis(1));
                std::panic::panic_any(5u8)
            }))
        })
        .unwrap_err();
        assert_eq!(err.downcast_ref::<u8>(), Some(&5));
        // The loop still runs greenlets, timers and nested pairs.
        let n = greenhack::run(|| {
            let h = greenhack::spawn(|| {
                greenhack::sleep(Duration::from_millis(1));
                greenhack::exempt(greenhack::as_async(|| 2))
            });
            h.join().unwrap() + greenhack::exempt(async { 1 })
        });
        assert_eq!(n, 3);
        // And the same from inside a greenlet.
        let r = greenhack::run(|| {
            greenhack::spawn(|| {
                let e = catch(|| greenhack::exempt(greenhack::as_async(|| panic!("inner"))));
                greenhack::sleep(Duration::from_millis(1));
                e.is_err()
            })
            .join()
            .unwrap()
        });
        assert!(r);
    })
    .join()
    .unwrap();
}
