//! A greenlet that swallows the unwind of its own drop aborts the process
//! with a message, rather than leaving a stack that can be neither freed nor
//! resumed.

mod util;

use std::panic::{self, AssertUnwindSafe};

use greenhack::greenlet::{Builder, Greenlet};

#[test]
fn catching_the_drop_unwind_and_suspending_aborts() {
    const NAME: &str = "catching_the_drop_unwind_and_suspending_aborts";
    if util::is_child(NAME) {
        let mut g: Greenlet<(), (), ()> = Builder::new()
            .name("stubborn")
            .build(|s, ()| {
                let _ = panic::catch_unwind(AssertUnwindSafe(|| s.suspend(())));
                s.suspend(());
            })
            .unwrap();
        g.resume(());
        drop(g);
        unreachable!();
    }
    let out = util::run_child(NAME);
    let stderr = String::from_utf8_lossy(&out.stderr);
    util::assert_aborted(&out);
    assert!(
        stderr.contains("greenlet 'stubborn'")
            && stderr.contains("suspended again while it was being dropped"),
        "stderr:\n{stderr}"
    );
}

#[test]
fn catching_the_drop_unwind_and_returning_aborts() {
    const NAME: &str = "catching_the_drop_unwind_and_returning_aborts";
    if util::is_child(NAME) {
        let mut g: Greenlet<(), (), u8> = Builder::new()
            .name("returner")
            .build(|s, ()| {
                let _ = panic::catch_unwind(AssertUnwindSafe(|| s.suspend(())));
                7
            })
            .unwrap();
        g.resume(());
        drop(g);
        unreachable!();
    }
    let out = util::run_child(NAME);
    let stderr = String::from_utf8_lossy(&out.stderr);
    util::assert_aborted(&out);
    assert!(
        stderr.contains("greenlet 'returner'")
            && stderr.contains("returned normally while it was being dropped"),
        "stderr:\n{stderr}"
    );
}
