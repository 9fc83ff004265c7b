//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::process::{Command, Output};

/// Re-runs this test binary with only `test` selected and `GREENHACK_CHILD`
/// set, and returns its output. The child half of the test sees the variable
/// and does the dangerous thing (overflow, abort) in a process of its own.
///
/// Under emulation the binary cannot exec itself directly: the variable
/// `GREENHACK_TEST_RUNNER` (e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu`)
/// is put in front of the command.
pub fn run_child(test: &str) -> Output {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = command(&exe);
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("GREENHACK_CHILD", test)
        .env_remove("RUST_BACKTRACE");
    cmd.output().expect("spawn child test process")
}

/// A command running the target binary `exe`, through
/// `GREENHACK_TEST_RUNNER` when set (emulation).
pub fn command(exe: &std::path::Path) -> Command {
    let runner = std::env::var("GREENHACK_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(prog) => {
            let mut c = Command::new(prog);
            c.args(words).arg(exe);
            c
        }
        None => Command::new(exe),
    }
}

/// True in the child half of a `run_child` test.
pub fn is_child(test: &str) -> bool {
    std::env::var("GREENHACK_CHILD").as_deref() == Ok(test)
}

/// Asserts that the child died of SIGABRT.
pub fn assert_aborted(out: &Output) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc_sigabrt()),
        "child should die of SIGABRT; status {:?}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn libc_sigabrt() -> i32 {
    6
}

/// Asserts that the child ran exactly its one test and it passed (a child
/// that matched no test would also exit 0).
pub fn assert_child_passed(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed or ran no test; status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
