//! debug::dump, debug::backtrace, dump_on_signal and the switch hook.

mod util;

use std::sync::Mutex;
use std::time::Duration;

use greenhack::debug::{self, SwitchEvent, SwitchKind, Wait};
use greenhack::greenlet::{Builder, Greenlet, Suspender};

#[inline(never)]
fn parked_deep_inside(s: &Suspender<(), ()>) {
    s.suspend(());
}

#[test]
fn backtrace_of_a_suspended_greenlet_shows_its_frames_only() {
    let mut g = Greenlet::<(), (), ()>::new(|s, ()| {
        parked_deep_inside(s);
        parked_deep_inside(s);
    });
    g.resume(());
    let bt = debug::backtrace(&mut g).expect("suspended");
    assert!(bt.contains("parked_deep_inside"), "{bt}");
    assert!(!bt.contains("serve_control"), "capture frames cut:\n{bt}");
    assert!(
        !bt.contains("greenhack_trampoline") && !bt.contains("greenhack::debug::backtrace"),
        "capturer's frames cut:\n{bt}"
    );
    // Capturing did not disturb it: it resumes where it was, twice.
    g.resume(());
    assert!(
        debug::backtrace(&mut g)
            .unwrap()
            .contains("parked_deep_inside")
    );
    assert!(g.resume(()).into_complete().is_some());
    assert!(
        debug::backtrace(&mut g).is_none(),
        "finished: nothing to capture"
    );
}

/// Capturing a backtrace runs the suspended greenlet's `suspend` until it
/// suspends again, from a deeper frame than where its owner saw it stop:
/// resumes and drops afterwards must still find its current frame.
#[test]
fn greenlets_resume_and_unwind_correctly_after_being_captured() {
    use std::rc::Rc;

    struct Counted(Rc<std::cell::Cell<u32>>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    let body = |s: &Suspender<u64, u64>, mut x: u64| {
        for _ in 0..4 {
            x = s.suspend(x * 2);
        }
        x
    };
    let mut g = Greenlet::<u64, u64, u64>::new(body);
    assert_eq!(g.resume(1).into_yielded(), Some(2));
    debug::backtrace(&mut g).expect("suspended");
    assert_eq!(g.resume(3).into_yielded(), Some(6));
    // Captured through the thread's list, twice in a row, then resumed.
    assert!(debug::dump().to_string().contains("suspended"));
    assert!(debug::dump().to_string().contains("suspended"));
    assert_eq!(g.resume(5).into_yielded(), Some(10));
    assert_eq!(g.resume(7).into_yielded(), Some(14));
    assert_eq!(g.resume(9).into_complete(), Some(9));

    // Dropped right after a capture: the unwind starts from the right frame
    // and runs the destructors on the greenlet's stack.
    let drops = Rc::new(std::cell::Cell::new(0));
    let witness = Counted(drops.clone());
    let mut g = Greenlet::<(), (), ()>::new(move |s, ()| {
        let _held = witness;
        parked_deep_inside(s);
        unreachable!("dropped while suspended");
    });
    g.resume(());
    debug::backtrace(&mut g).expect("suspended");
    drop(g);
    assert_eq!(drops.get(), 1);
}

#[test]
fn dump_lists_every_greenlet_with_state_wait_and_origin() {
    std::thread::spawn(|| {
        greenhack::run(|| {
            let sleeper = Builder::new()
                .name("sleeper")
                .spawn(|| greenhack::sleep(Duration::from_secs(60)))
                .unwrap();
            let (_tx, rx) = tokio::sync::oneshot::channel::<()>();
            let waiter = Builder::new()
                .name("waiter")
                .spawn(move || {
                    let _ = greenhack::exempt(rx);
                })
                .unwrap();
            let fresh = Builder::new()
                .name("never-run")
                .build::<(), (), (), _>(|_, ()| ())
                .unwrap();
            // Let both reach their waits (a fixed sleep is not enough on a
            // loaded machine: sleep returns at once if the thread stalled).
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while debug::dump()
                .greenlets
                .iter()
                .filter(|g| g.state == "suspended" && g.wait != Wait::Nothing)
                .count()
                < 2
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "greenlets never waited"
                );
                greenhack::yield_now();
                greenhack::sleep(Duration::from_millis(1));
            }

            let dump = debug::dump();
            let text = dump.to_string();
            let find = |name: &str| {
                dump.greenlets
                    .iter()
                    .find(|g| g.name.as_deref() == Some(name))
                    .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
            };
            let s = find("sleeper");
            assert_eq!(s.state, "suspended");
            assert!(matches!(s.wait, Wait::Sleep(_)), "{text}");
            assert!(
                s.backtrace
                    .as_deref()
                    .unwrap()
                    .contains("greenhack::time::sleep"),
                "{text}"
            );
            assert!(
                s.created_at.unwrap().file().ends_with("tests/debug.rs"),
                "creation site is the caller of spawn:\n{text}"
            );
            let w = find("waiter");
            assert!(
                matches!(w.wait, Wait::Future(t) if t.contains("oneshot::Receiver")),
                "{text}"
            );
            assert_eq!(find("never-run").state, "not started");
            assert!(
                text.contains("greenlet")
                    && text.contains("'sleeper': suspended, waiting for sleeping"),
                "{text}"
            );

            sleeper.cancel();
            waiter.cancel();
            drop(fresh);
        });
    })
    .join()
    .unwrap();
}

#[test]
fn dump_on_signal_prints_the_dump() {
    const NAME: &str = "dump_on_signal_prints_the_dump";
    if util::is_child(NAME) {
        greenhack::run(|| {
            debug::dump_on_signal(libc::SIGUSR1).unwrap();
            let sleeper = Builder::new()
                .name("signal-sleeper")
                .spawn(|| greenhack::sleep(Duration::from_millis(300)))
                .unwrap();
            drop(greenhack::spawn(|| {
                greenhack::sleep(Duration::from_millis(20));
                // SAFETY: raising a signal whose handler we installed.
                unsafe { libc::raise(libc::SIGUSR1) };
            }));
            sleeper.join().unwrap();
        });
        return;
    }
    let out = util::run_child(NAME);
    let stderr = String::from_utf8_lossy(&out.stderr);
    util::assert_child_passed(&out);
    assert!(
        stderr.contains("'signal-sleeper': suspended, waiting for sleeping"),
        "{stderr}"
    );
}

static EVENTS: Mutex<Vec<(SwitchKind, u64)>> = Mutex::new(Vec::new());

fn record(e: SwitchEvent<'_>) {
    if e.name == Some("hooked") {
        EVENTS.lock().unwrap().push((e.kind, e.id));
    }
}

#[test]
fn switch_hook_sees_every_switch_in_order() {
    debug::set_switch_hook(Some(record));
    let mut g = Builder::new()
        .name("hooked")
        .build::<(), (), (), _>(|s, ()| {
            s.suspend(());
        })
        .unwrap();
    let id = g.id();
    g.resume(());
    g.resume(());
    debug::set_switch_hook(None);
    let mut g2 = Builder::new()
        .name("hooked")
        .build::<(), (), (), _>(|_, ()| ())
        .unwrap();
    g2.resume(()); // after clearing: not recorded
    let events = EVENTS.lock().unwrap().clone();
    assert_eq!(
        events,
        [
            (SwitchKind::Resume, id),
            (SwitchKind::Suspend, id),
            (SwitchKind::Resume, id),
            (SwitchKind::Finish, id),
        ]
    );
}
