//! Backtraces taken inside a greenlet continue into the code that resumed
//! it, through the trampoline's CFI.

use std::backtrace::Backtrace;

use greenhack::greenlet::Greenlet;

#[inline(never)]
fn capture_inside_greenlet() -> String {
    Backtrace::force_capture().to_string()
}

#[inline(never)]
fn unique_resumer_frame_c0ffee(g: &mut Greenlet<(), String, ()>) -> String {
    let bt = g.resume(()).into_yielded().unwrap();
    std::hint::black_box(bt)
}

#[test]
fn backtrace_traces_to_host() {
    // A frame of our own below the resumer, named so in release builds too
    // (the test function itself may be inlined into the harness).
    backtrace_traces_to_host_body();
}

#[inline(never)]
fn backtrace_traces_to_host_body() {
    let mut g = Greenlet::<(), String, ()>::new(|s, ()| {
        s.suspend(capture_inside_greenlet());
    });
    let bt = unique_resumer_frame_c0ffee(&mut g);
    let inside = bt.find("capture_inside_greenlet");
    let host = bt.find("unique_resumer_frame_c0ffee");
    assert!(inside.is_some(), "greenlet frame missing:\n{bt}");
    assert!(
        host.is_some(),
        "backtrace stops at the greenlet's root:\n{bt}"
    );
    assert!(inside < host, "greenlet frames come first:\n{bt}");
    // And it continues below the resumer, into this test.
    assert!(
        bt[host.unwrap()..].contains("backtrace_traces_to_host"),
        "{bt}"
    );
}

#[test]
fn backtrace_after_resume_from_another_frame_follows_the_new_resumer() {
    #[inline(never)]
    fn second_resumer_ba5eba11(g: &mut Greenlet<(), String, ()>) -> String {
        std::hint::black_box(g.resume(()).into_yielded().unwrap())
    }
    let mut g = Greenlet::<(), String, ()>::new(|s, ()| {
        s.suspend(String::new());
        s.suspend(capture_inside_greenlet());
    });
    let _ = unique_resumer_frame_c0ffee(&mut g);
    let bt = second_resumer_ba5eba11(&mut g);
    assert!(bt.contains("second_resumer_ba5eba11"), "{bt}");
    assert!(
        !bt.contains("unique_resumer_frame_c0ffee"),
        "stale parent link:\n{bt}"
    );
}

#[test]
fn backtrace_through_nested_greenlets() {
    let mut outer = Greenlet::<(), String, String>::new(|_, ()| {
        let mut inner = Greenlet::<(), String, ()>::new(|s, ()| {
            s.suspend(capture_inside_greenlet());
        });
        #[inline(never)]
        fn inner_resumer_d00d(g: &mut Greenlet<(), String, ()>) -> String {
            std::hint::black_box(g.resume(()).into_yielded().unwrap())
        }
        inner_resumer_d00d(&mut inner)
    });
    let bt = match outer.resume(()) {
        greenhack::greenlet::GreenletResult::Complete(bt) => bt,
        _ => unreachable!(),
    };
    assert!(bt.contains("inner_resumer_d00d"), "{bt}");
    assert!(bt.contains("backtrace_through_nested_greenlets"), "{bt}");
}
