//! A greenlet that overflows its stack hits the guard page; the process
//! prints which greenlet it was and aborts.

mod util;

use greenhack::greenlet::{Builder, Greenlet};

#[inline(never)]
fn recurse(n: u64) -> u64 {
    let pad = std::hint::black_box([n; 64]);
    if n == u64::MAX {
        return 0;
    }
    recurse(n + 1) + pad[3]
}

#[test]
fn stack_overflow() {
    const NAME: &str = "stack_overflow";
    if util::is_child(NAME) {
        let mut g: Greenlet<(), (), u64> = Builder::new()
            .name("deep-recursion")
            .stack_size(64 * 1024)
            .build(|_, ()| recurse(0))
            .unwrap();
        g.resume(());
        unreachable!("the overflow must abort");
    }
    let out = util::run_child(NAME);
    let stderr = String::from_utf8_lossy(&out.stderr);
    util::assert_aborted(&out);
    assert!(
        stderr.contains("greenlet 'deep-recursion'") && stderr.contains("overflowed its stack of"),
        "stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("65536 bytes"),
        "stack size reported; stderr:\n{stderr}"
    );
}

#[test]
fn stack_overflow_of_unnamed_greenlet_gives_its_id() {
    const NAME: &str = "stack_overflow_of_unnamed_greenlet_gives_its_id";
    if util::is_child(NAME) {
        let mut g = Greenlet::<(), (), u64>::new(|_, ()| recurse(0));
        eprintln!("child greenlet id {}", g.id());
        g.resume(());
        unreachable!();
    }
    let out = util::run_child(NAME);
    let stderr = String::from_utf8_lossy(&out.stderr);
    util::assert_aborted(&out);
    let id = stderr
        .lines()
        .find_map(|l| l.strip_prefix("child greenlet id "))
        .expect("id line");
    assert!(
        stderr.contains(&format!("greenlet {id} overflowed its stack")),
        "stderr:\n{stderr}"
    );
}

#[test]
fn foreign_segfault_is_passed_on() {
    // A fault that is not on a guard page goes to the previous handler:
    // here std's, which resets to the default action, so the child dies of
    // SIGSEGV, not of our abort.
    const NAME: &str = "foreign_segfault_is_passed_on";
    if util::is_child(NAME) {
        // Map a stack so our handler is installed.
        let mut g = Greenlet::<(), (), ()>::new(|_, ()| ());
        g.resume(());
        // SAFETY: deliberately faulting, in a child process.
        unsafe { std::ptr::write_volatile(16 as *mut u64, 1) };
        unreachable!();
    }
    let out = util::run_child(NAME);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(11), "status {:?}", out.status);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("overflowed"));
}

#[test]
fn main_thread_overflow_is_still_reported_by_std() {
    // std's own "has overflowed its stack" report must survive our handler
    // being installed in front of it.
    const NAME: &str = "main_thread_overflow_is_still_reported_by_std";
    if util::is_child(NAME) {
        let mut g = Greenlet::<(), (), ()>::new(|_, ()| ());
        g.resume(());
        std::thread::Builder::new()
            .name("plain-thread".into())
            .stack_size(128 * 1024)
            .spawn(|| recurse(0))
            .unwrap()
            .join()
            .unwrap();
        unreachable!();
    }
    let out = util::run_child(NAME);
    let stderr = String::from_utf8_lossy(&out.stderr);
    util::assert_aborted(&out);
    assert!(
        stderr.contains("has overflowed its stack"),
        "stderr:\n{stderr}"
    );
    assert!(!stderr.contains("greenhack"), "stderr:\n{stderr}");
}

/// A sliced greenlet (`Builder::sliced`) overflows the stack it shares;
/// the message names it, not the greenlet that ran there before.
#[test]
fn an_overflowing_sliced_greenlet_is_named() {
    const NAME: &str = "an_overflowing_sliced_greenlet_is_named";
    if util::is_child(NAME) {
        greenhack::run(|| {
            // Another sliced greenlet of the same stack size occupies the
            // shared stack first.
            // SAFETY: it waits only on greenhack's timer.
            let idle = unsafe { greenhack::Builder::new().sliced() }
                .stack_size(64 * 1024)
                .spawn(|| greenhack::sleep(std::time::Duration::from_secs(3600)))
                .unwrap();
            greenhack::sleep(std::time::Duration::from_millis(2));
            // SAFETY: it does not wait at all.
            let h = unsafe { greenhack::Builder::new().sliced() }
                .name("sliced-recursion")
                .stack_size(64 * 1024)
                .spawn(|| recurse(0))
                .unwrap();
            let _ = h.join();
            drop(idle);
        });
        unreachable!("the overflow must abort");
    }
    let out = util::run_child(NAME);
    let stderr = String::from_utf8_lossy(&out.stderr);
    util::assert_aborted(&out);
    assert!(
        stderr.contains("greenlet 'sliced-recursion'") && stderr.contains("overflowed its stack"),
        "stderr:\n{stderr}"
    );
}
