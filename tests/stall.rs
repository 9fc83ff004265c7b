//! The stall detector: a loop stuck in one greenlet is reported from
//! outside, by name, within twice the threshold.

mod util;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenhack::debug::{Stall, stall_detector, stall_detector_with};

const THRESHOLD: Duration = Duration::from_millis(200);
const CHILD_ENV: &str = "GREENHACK_STALL_CHILD";

/// Issue 13's hang: two greenlets share a `std::sync::Mutex` and one holds it
/// across `greenhack::sleep`; the other's `lock()` blocks the thread for
/// good. Run in a child process (it never ends): the detector must name the
/// stuck greenlet within 2 × its threshold of the `lock()` call.
#[test]
fn the_std_mutex_hang_is_named() {
    // Through GREENHACK_TEST_RUNNER when set: under qemu-user the binary
    // cannot exec itself directly.
    let mut child = util::command(&std::env::current_exe().unwrap())
        .args([
            "--exact",
            "std_mutex_hang_child",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let mut next = |until: Instant| -> Option<(Instant, String)> {
        let left = until.checked_duration_since(Instant::now())?;
        let got = rx.recv_timeout(left).ok()?;
        log.push(got.1.clone());
        Some(got)
    };
    let start = Instant::now() + Duration::from_secs(30);
    let locking_at = loop {
        match next(start) {
            Some((t, l)) if l.contains("about to lock") => break t,
            Some(_) => {}
            None => panic!("the child never reached the lock"),
        }
    };
    let report = loop {
        match next(locking_at + 2 * THRESHOLD) {
            Some((t, l)) if l.contains("greenhack: stall:") => break Some((t, l)),
            Some(_) => {}
            None => break None,
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let Some((_, line)) = report else {
        panic!(
            "no stall report within {:?}; the child wrote: {log:#?}",
            2 * THRESHOLD
        )
    };
    assert!(
        line.contains("greenlet") && line.contains("'stuck-locker'"),
        "{line}"
    );
    assert!(line.contains(concat!("created at ", file!())), "{line}");
    // Not early: the child's own measure of the stall, from the report.
    // (The parent's clock cannot say: under Valgrind the parent may read
    // "about to lock" late, and the report right after it.)
    let stalled = reported_duration(&line).unwrap_or_else(|| panic!("no duration in: {line}"));
    assert!(stalled >= THRESHOLD, "reported early: {line}");
}

/// The duration in a stall report ("... for 200.698143ms without
/// switching ..."), as `Duration`'s `Debug` wrote it.
fn reported_duration(line: &str) -> Option<Duration> {
    let rest = &line[line.find(" for ")? + 5..];
    let word = rest.split_whitespace().next()?;
    let (number, scale) = if let Some(n) = word.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = word.strip_suffix("µs") {
        (n, 1e-6)
    } else if let Some(n) = word.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    Some(Duration::from_secs_f64(number.parse::<f64>().ok()? * scale))
}

/// The child of `the_std_mutex_hang_is_named`; hangs forever.
#[test]
#[ignore = "run by the_std_mutex_hang_is_named in a child process"]
fn std_mutex_hang_child() {
    assert!(
        std::env::var_os(CHILD_ENV).is_some(),
        "hangs: only for the parent test"
    );
    let _detector = stall_detector(THRESHOLD);
    let shared = Rc::new(std::sync::Mutex::new(0));
    let s = shared.clone();
    greenhack::run(move || {
        let _holder = greenhack::Builder::new()
            .name("holder")
            .spawn(move || {
                let mut n = s.lock().unwrap();
                greenhack::sleep(Duration::from_millis(50)); // lets the other run
                *n += 1;
            })
            .unwrap();
        let _locker = greenhack::Builder::new()
            .name("stuck-locker")
            .spawn(move || {
                eprintln!("about to lock");
                *shared.lock().unwrap() += 1; // blocks the thread: the holder never resumes
            })
            .unwrap();
    });
    unreachable!("the loop was stuck");
}

/// Collects the reports about greenlets named `name` (tests run in
/// parallel, and a detector watches every thread).
fn collector(name: &'static str) -> (Arc<Mutex<Vec<Stall>>>, impl FnMut(&Stall) + Send) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let report = move |stall: &Stall| {
        if stall.name.as_deref() == Some(name) {
            s.lock().unwrap().push(stall.clone());
        }
    };
    (seen, report)
}

/// One report when the stall passes the threshold, one with its length
/// when it ends.
#[test]
fn a_stall_is_reported_once_and_its_end_with_its_length() {
    let (seen, report) = collector("blocker");
    let detector = stall_detector_with(THRESHOLD, report);
    greenhack::run(|| {
        let _blocker = greenhack::Builder::new()
            .name("blocker")
            .spawn(|| std::thread::sleep(3 * THRESHOLD))
            .unwrap();
    });
    greenhack::sleep(THRESHOLD); // the watchdog sees the loop move on
    drop(detector);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert!(!seen[0].ended && seen[0].duration >= THRESHOLD, "{seen:#?}");
    assert!(
        seen[1].ended && seen[1].duration >= 2 * THRESHOLD,
        "{seen:#?}"
    );
    assert_eq!(seen[0].greenlet, seen[1].greenlet);
    assert_eq!(seen[0].created_at.unwrap().file(), file!());
}

/// A loop idle in `epoll_wait` is not stalled, however long it waits.
#[test]
fn waiting_on_the_loop_is_not_a_stall() {
    let (seen, report) = collector("patient");
    let detector = stall_detector_with(THRESHOLD, report);
    greenhack::Builder::new()
        .name("patient")
        .spawn(|| greenhack::sleep(3 * THRESHOLD))
        .unwrap()
        .join()
        .unwrap();
    drop(detector);
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:#?}",
        seen.lock().unwrap()
    );
}

/// A sliced greenlet (`Builder::sliced`) that blocks is named too, though
/// another sliced greenlet held the shared stack when its poll began.
#[test]
fn a_stalled_sliced_greenlet_is_named() {
    let (seen, report) = collector("sliced-blocker");
    let detector = stall_detector_with(THRESHOLD, report);
    greenhack::run(|| {
        // SAFETY: these greenlets wait only on greenhack's timer.
        let sliced = || unsafe { greenhack::Builder::new().sliced() };
        let first = sliced().spawn(|| greenhack::sleep(THRESHOLD / 4)).unwrap();
        greenhack::yield_now(); // `first` now occupies the shared stack
        let _blocker = sliced()
            .name("sliced-blocker")
            .spawn(|| std::thread::sleep(2 * THRESHOLD))
            .unwrap();
        first.join().unwrap();
    });
    greenhack::sleep(THRESHOLD);
    drop(detector);
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty(), "no stall reported");
    assert_eq!(seen[0].created_at.unwrap().file(), file!(), "{seen:#?}");
}
