//! Past `vm.max_map_count`, creating a greenlet fails with an error that
//! names the limit and the sysctl; the process stays healthy.

mod util;

use greenhack::greenlet::{Builder, Greenlet};

#[test]
fn map_count_limit_is_a_clear_error_not_a_crash() {
    const NAME: &str = "map_count_limit_is_a_clear_error_not_a_crash";
    if !util::is_child(NAME) {
        // In a child: it exhausts the process's mappings on purpose.
        util::assert_child_passed(&util::run_child(NAME));
        return;
    }
    greenhack::stack::set_pool_capacity(0);
    let mut alive: Vec<Greenlet<(), (), ()>> = Vec::new();
    let err = loop {
        match Builder::new()
            .stack_size(16 * 1024)
            .build(|s, ()| s.suspend(()))
        {
            Ok(mut g) => {
                g.resume(());
                alive.push(g);
            }
            Err(e) => break e,
        }
        assert!(alive.len() < 1_000_000, "no limit reached");
    };
    let msg = err.to_string();
    assert_eq!(err.kind(), std::io::ErrorKind::OutOfMemory);
    // Under qemu-user the kernel's limit counts qemu's own mappings, which
    // the guest's /proc/self/maps does not show, so the cause cannot be
    // told apart from plain exhaustion there; the error must still be clean.
    let emulated = std::env::var_os("GREENHACK_TEST_RUNNER").is_some();
    assert!(
        emulated
            || (msg.contains("vm.max_map_count") && msg.contains("sysctl -w vm.max_map_count=")),
        "{msg}"
    );
    // Healthy afterwards: every greenlet finishes, and a new one runs.
    for mut g in alive.drain(..) {
        assert!(g.resume(()).into_complete().is_some());
    }
    let mut g = Greenlet::<(), (), u8>::new(|_, ()| 1);
    assert_eq!(g.resume(()).into_complete(), Some(1));
}
