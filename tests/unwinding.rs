//! Regressions of issue 15 ("Unwinding, thread exit and hostile peers"):
//! waits inside `Drop` during an unwind, greenlets alive at thread exit,
//! `run` inside a greenlet, a `JoinHandle` under a foreign executor. Where
//! the old failure was an abort or a hang, the test runs in a child process
//! with a timeout.

mod util;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenhack::{run, sleep, spawn, yield_now};

/// Runs `f` when dropped.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Defect 1: cancelling a greenlet whose `Drop` waits while its panic
/// unwinds aborted the process ("panic in a destructor during cleanup").
/// Now the wait blocks the thread until it is over (it never suspends
/// mid-unwind), so the greenlet has finished with its panic by the time
/// the cancellation arrives.
#[test]
fn cancelling_a_greenlet_that_waits_in_drop_during_its_panic_does_not_abort() {
    const NAME: &str = "cancelling_a_greenlet_that_waits_in_drop_during_its_panic_does_not_abort";
    if util::is_child(NAME) {
        let flushed = Rc::new(Cell::new(false));
        let f = flushed.clone();
        let err = run(move || {
            let a = spawn(move || {
                let _flush = OnDrop(move || {
                    // A BufWriter flushing to a slow peer, say.
                    sleep(Duration::from_millis(100));
                    f.set(true);
                });
                panic!("handler failed")
            });
            sleep(Duration::from_millis(20));
            a.cancel();
            a.join().unwrap_err()
        });
        assert!(flushed.get(), "the wait in Drop ran to its end");
        assert!(err.is_panic(), "{err}");
        assert_eq!(
            err.into_panic().downcast_ref::<&str>(),
            Some(&"handler failed")
        );
        return;
    }
    util::assert_child_passed(&util::run_child_with_limit(NAME, Duration::from_secs(20)));
}

/// Defect 2: while greenlet A waited inside a `Drop` during its unwind,
/// every other greenlet saw `std::thread::panicking()`, and a
/// `std::sync::Mutex` that B locked and unlocked normally was poisoned.
#[test]
fn other_greenlets_do_not_see_a_panic_in_flight() {
    let mutex = Arc::new(Mutex::new(0));
    let seen_panicking = Rc::new(Cell::new(false));
    let (m, seen) = (mutex.clone(), seen_panicking.clone());
    run(move || {
        let a = spawn(|| {
            let _g = OnDrop(|| sleep(Duration::from_millis(50)));
            panic!("a fails")
        });
        let b = spawn(move || {
            for _ in 0..10 {
                seen.set(seen.get() || std::thread::panicking());
                *m.lock().unwrap() += 1;
                sleep(Duration::from_millis(10));
            }
        });
        assert!(a.join().unwrap_err().is_panic());
        b.join().unwrap();
    });
    assert!(!seen_panicking.get(), "B observed A's panic");
    assert!(!mutex.is_poisoned(), "B's mutex was poisoned by A's panic");
    assert_eq!(*mutex.lock().unwrap(), 10);
}

/// The "inversion" seen with two cancelled greenlets whose `Drop`s wait:
/// A's 10 ms wait took 500 ms under B's nested loop. Each wait during an
/// unwind now runs alone.
#[test]
fn waits_in_drops_of_cancelled_greenlets_do_not_nest() {
    let took = Rc::new(Cell::new(Duration::ZERO));
    let t = took.clone();
    run(move || {
        let a = spawn(move || {
            let _g = OnDrop(move || {
                let start = Instant::now();
                sleep(Duration::from_millis(10));
                t.set(start.elapsed());
            });
            sleep(Duration::from_secs(3600));
        });
        let b = spawn(|| {
            let _g = OnDrop(|| sleep(Duration::from_millis(300)));
            sleep(Duration::from_secs(3600));
        });
        yield_now();
        a.cancel();
        b.cancel();
        assert!(a.join().unwrap_err().is_cancelled());
        assert!(b.join().unwrap_err().is_cancelled());
    });
    // Generous: the point is that it is not B's 300 ms.
    assert!(took.get() < Duration::from_millis(200), "{:?}", took.get());
}

/// The descriptors this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Defect 3: greenlets holding a socket or a timer were never unwound when
/// their thread exited (a reference cycle through the reactor), leaking the
/// epoll fd, its dup, the eventfd, the sockets and the stacks.
#[test]
fn greenlets_waiting_on_sockets_and_timers_are_unwound_at_thread_exit() {
    // In a process of its own: the other tests' threads open and close
    // their reactors' descriptors at any moment.
    const NAME: &str = "greenlets_waiting_on_sockets_and_timers_are_unwound_at_thread_exit";
    if !util::is_child(NAME) {
        return util::assert_child_passed(&util::run_child_with_limit(
            NAME,
            Duration::from_secs(30),
        ));
    }
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    // Warm up this process's one-time descriptors (the overflow handler...).
    std::thread::spawn(|| greenhack::exempt(async {}))
        .join()
        .unwrap();
    let before = open_fds();
    let threads: Vec<_> = (0..10)
        .map(|_| {
            std::thread::spawn(|| {
                let count = || {
                    OnDrop(|| {
                        DROPPED.fetch_add(1, Ordering::SeqCst);
                    })
                };
                let sleeper = spawn(move || {
                    let _c = count();
                    sleep(Duration::from_secs(3600));
                });
                let (mut a, _b) = greenhack::net::UnixStream::pair().unwrap();
                let reader = spawn(move || {
                    let _c = count();
                    let _ = std::io::Read::read(&mut a, &mut [0; 8]);
                });
                let listener = greenhack::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let acceptor = spawn(move || {
                    let _c = count();
                    let _ = listener.accept();
                });
                drop((sleeper, reader, acceptor));
                yield_now(); // all three start and wait
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(DROPPED.load(Ordering::SeqCst), 30, "every greenlet unwound");
    assert_eq!(open_fds(), before, "no descriptor leaked");
}

/// Defect 5: `run` inside a spawned greenlet hung forever, silently.
#[test]
fn run_inside_a_spawned_greenlet_returns() {
    const NAME: &str = "run_inside_a_spawned_greenlet_returns";
    if util::is_child(NAME) {
        let v = run(|| spawn(|| run(|| 9)).join().unwrap());
        assert_eq!(v, 9);
        return;
    }
    util::assert_child_passed(&util::run_child_with_limit(NAME, Duration::from_secs(20)));
}

/// Defect 6: a `Drop` that waits, unwound at thread exit, aborted with
/// "cannot access a Thread Local Storage value during or after
/// destruction".
#[test]
fn a_drop_that_waits_at_thread_exit_does_not_abort() {
    const NAME: &str = "a_drop_that_waits_at_thread_exit_does_not_abort";
    if util::is_child(NAME) {
        static RAN: AtomicUsize = AtomicUsize::new(0);
        std::thread::spawn(|| {
            drop(spawn(|| {
                let _g = OnDrop(|| {
                    sleep(Duration::from_millis(10));
                    RAN.fetch_add(1, Ordering::SeqCst);
                });
                sleep(Duration::from_secs(3600));
            }));
            yield_now();
        })
        .join()
        .unwrap();
        assert_eq!(RAN.load(Ordering::SeqCst), 1);
        return;
    }
    util::assert_child_passed(&util::run_child_with_limit(NAME, Duration::from_secs(20)));
}

/// Defect 9: a greenhack `JoinHandle` awaited inside a tokio `block_on`
/// never completed and said nothing; now tokio hosts greenhack's loop.
#[test]
fn a_join_handle_awaited_inside_tokio_block_on_completes() {
    const NAME: &str = "a_join_handle_awaited_inside_tokio_block_on_completes";
    if util::is_child(NAME) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let h = spawn(|| {
            sleep(Duration::from_millis(5));
            5
        });
        assert_eq!(rt.block_on(h).unwrap(), 5);
        return;
    }
    util::assert_child_passed(&util::run_child_with_limit(NAME, Duration::from_secs(20)));
}

/// Defect 9, the other half: an executor that cannot host greenhack's loop
/// is told so, instead of waiting forever.
#[test]
fn a_join_handle_polled_by_an_executor_that_cannot_host_says_so() {
    let h = spawn(|| 1);
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        futures_executor::block_on(h)
    }))
    .unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("join()"), "{msg}");
}
