//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long [`run_child`] lets a child run before it counts as hung: far
/// above what any child needs (well under a second natively), so only a
/// hang reaches it.
pub const CHILD_LIMIT: Duration = Duration::from_secs(60);

/// Re-runs this test binary with only `test` selected and `GREENHACK_CHILD`
/// set, and returns its output. The child half of the test sees the variable
/// and does the dangerous thing (overflow, abort) in a process of its own.
/// A child still running after [`CHILD_LIMIT`] is killed and the test fails
/// (see [`run_child_with_limit`]).
///
/// Under emulation the binary cannot exec itself directly: the variable
/// `GREENHACK_TEST_RUNNER` (e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu`)
/// is put in front of the command.
pub fn run_child(test: &str) -> Output {
    run_child_with_limit(test, CHILD_LIMIT)
}

/// [`run_child`], killing the child after `limit`: a hang then fails the
/// test with a message saying so and what the child printed, instead of
/// stalling the suite.
///
/// The child runs the test even if it is `#[ignore]`d (the parent runs it
/// only when asked to, and then the child must too).
pub fn run_child_with_limit(test: &str, limit: Duration) -> Output {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = command(&exe);
    cmd.args([
        test,
        "--exact",
        "--nocapture",
        "--test-threads=1",
        "--include-ignored",
    ])
    .env("GREENHACK_CHILD", test)
    .env_remove("RUST_BACKTRACE")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn child test process");
    // Read both pipes while the child runs: one that prints more than a
    // pipe holds would otherwise block on its write and look hung.
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let start = Instant::now();
    let mut hung = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if start.elapsed() > limit {
            hung = true;
            let _ = child.kill();
            break child.wait().expect("wait for the killed child");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = Output {
        status,
        stdout: stdout.finish(),
        stderr: stderr.finish(),
    };
    if hung {
        panic!(
            "child {test} hung: killed after {limit:?}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// What a child wrote to one of its pipes, read by a thread of its own.
struct Drain {
    bytes: Arc<Mutex<Vec<u8>>>,
    reader: std::thread::JoinHandle<()>,
}

fn drain(mut pipe: impl Read + Send + 'static) -> Drain {
    let bytes = Arc::new(Mutex::new(Vec::new()));
    let sink = bytes.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    });
    Drain { bytes, reader }
}

impl Drain {
    /// Everything read, once the pipe closed; after the child has exited
    /// that is at once, unless a process it started still holds the pipe:
    /// then what was read within a second.
    fn finish(self) -> Vec<u8> {
        let start = Instant::now();
        while !self.reader.is_finished() && start.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::mem::take(&mut *self.bytes.lock().unwrap())
    }
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

/// A loopback port that refuses connections for as long as the returned
/// guard lives: a TCP socket bound there but not listening. (Binding a
/// listener and closing it would free the port, and a test running in
/// parallel could take it before the connect.)
pub fn closed_port() -> (std::os::fd::OwnedFd, SocketAddr) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a new fd that we own; the sockaddr
    // structs are initialised and their sizes passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let guard = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &sin as *const _ as *const libc::sockaddr, len),
            0
        );
        let mut out: libc::sockaddr_in = std::mem::zeroed();
        let mut out_len = len;
        assert_eq!(
            libc::getsockname(fd, &mut out as *mut _ as *mut libc::sockaddr, &mut out_len),
            0
        );
        let port = u16::from_be(out.sin_port);
        (guard, SocketAddr::from(([127, 0, 0, 1], port)))
    }
}

/// The path of example `name`, built for this test's target and profile.
///
/// Cargo builds plain example binaries for `cargo test`, but under
/// `--all-targets` (or `--examples`) only test-harness builds with hashed
/// names, which do not run `main`; a plain binary left by an earlier build
/// may be stale. So the example is built here, once per process, with the
/// cargo running this test (`$CARGO`), into this test's target directory,
/// for its target triple and profile and with its features; a no-op when
/// cargo already built it.
pub fn example_path(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    // <target-dir>[/<triple>]/<profile>/deps/<this test>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let path = profile_dir.join("examples").join(name);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if built.iter().any(|b| b == name) {
        return path;
    }
    // Cargo tags the target directory, and under `--target` also the
    // triple's directory inside it, with CACHEDIR.TAG.
    let above = profile_dir.parent().unwrap();
    let (target_dir, triple) = match above.parent() {
        Some(root) if root.join("CACHEDIR.TAG").exists() => (root, above.file_name()),
        _ => (above, None),
    };
    let profile = match profile_dir.file_name().and_then(|p| p.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("no profile directory above {exe:?}"),
    };
    let mut features = Vec::new();
    if cfg!(feature = "fp-control") {
        features.push("fp-control");
    }
    if cfg!(feature = "tokio") {
        features.push("tokio");
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--example", name, "--profile", profile])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--features")
        .arg(features.join(","));
    if let Some(triple) = triple {
        cmd.arg("--target").arg(triple);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running {cmd:?} to build the example: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
    assert!(path.exists(), "{cmd:?} succeeded but {path:?} is missing");
    built.push(name.to_string());
    path
}
