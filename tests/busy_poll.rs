//! Busy polling (`runtime::set_busy_poll`, `runtime::Builder::busy_poll`):
//! a loop that runs out of work polls without sleeping for its budget, then
//! sleeps; everything a loop does (I/O, timers, wakes from other threads)
//! still happens while it spins; hosted loops ignore it.
//!
//! What proves the spin is CPU time: a thread that sleeps in `epoll_wait`
//! uses almost none while it waits, one that busy-polls uses about its wall
//! time. The bounds are generous (a factor of two or more either side).

use std::io::{Read, Write};
use std::time::Duration;

use greenhack::net::{TcpListener, TcpStream};

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime: {}", std::io::Error::last_os_error());
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A connected pair: a greenhack stream on this thread's loop and a std
/// stream for another thread.
fn pair() -> (TcpStream, std::net::TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (ours, _) = listener.accept().unwrap();
    (ours, peer)
}

#[test]
fn a_busy_polling_loop_spins_while_it_waits_for_a_read() {
    greenhack::runtime::set_busy_poll(Duration::from_secs(10));
    let (spent, got) = greenhack::run(|| {
        let (mut ours, mut peer) = pair();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            peer.write_all(b"late").unwrap();
            peer
        });
        let before = thread_cpu();
        let mut buf = [0; 4];
        ours.read_exact(&mut buf).unwrap();
        let spent = thread_cpu() - before;
        drop(writer.join().unwrap());
        (spent, buf)
    });
    greenhack::runtime::set_busy_poll(Duration::ZERO);
    assert_eq!(&got, b"late");
    // It spun for the 200 ms the data took (budget 10 s): a loop that slept
    // would have used next to nothing.
    assert!(
        spent >= Duration::from_millis(100),
        "the loop used {spent:?} of CPU waiting 200 ms: it slept instead of busy-polling"
    );
}

#[test]
fn a_busy_polling_loop_sleeps_once_its_budget_is_spent() {
    greenhack::runtime::set_busy_poll(Duration::from_millis(2));
    let spent = greenhack::run(|| {
        let (mut ours, mut peer) = pair();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            peer.write_all(b"x").unwrap();
            peer
        });
        let before = thread_cpu();
        // A timer wait and an I/O wait with no deadline: each spins 2 ms,
        // then sleeps.
        greenhack::sleep(Duration::from_millis(300));
        let mut buf = [0; 1];
        ours.read_exact(&mut buf).unwrap();
        let spent = thread_cpu() - before;
        drop(writer.join().unwrap());
        spent
    });
    greenhack::runtime::set_busy_poll(Duration::ZERO);
    assert!(
        spent < Duration::from_millis(150),
        "the loop used {spent:?} of CPU over 400 ms of waiting with a 2 ms budget: it kept spinning"
    );
}

#[test]
fn timers_and_wakes_from_other_threads_are_served_while_spinning() {
    greenhack::runtime::set_busy_poll(Duration::from_secs(10));
    let got = greenhack::run(|| {
        // A timer due in the middle of the budget ends the spin on time.
        let start = std::time::Instant::now();
        greenhack::sleep(Duration::from_millis(50));
        let slept = start.elapsed();
        assert!(
            (Duration::from_millis(50)..Duration::from_secs(5)).contains(&slept),
            "slept {slept:?}"
        );
        // A message from a plain thread wakes the spinning loop's greenlet.
        let (tx, rx) = greenhack::sync::mpsc::channel();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(42).unwrap();
        });
        let got = greenhack::spawn(move || rx.recv().unwrap()).join().unwrap();
        sender.join().unwrap();
        got
    });
    greenhack::runtime::set_busy_poll(Duration::ZERO);
    assert_eq!(got, 42);
}

/// CPU time a one-loop `Runtime` with busy-poll budget `budget` uses over
/// 200 ms with nothing to do.
fn idle_loop_cpu(budget: Duration) -> Duration {
    idle_runtime_cpu(greenhack::runtime::Builder::new().busy_poll(budget))
}

/// CPU time the one loop `builder` builds uses over 200 ms with nothing to
/// do.
fn idle_runtime_cpu(builder: &mut greenhack::runtime::Builder) -> Duration {
    let rt = builder.worker_threads(1).build(|| Ok(())).unwrap();
    let cpu_now = || rt.handle(0).spawn(thread_cpu).join().unwrap();
    let before = cpu_now();
    std::thread::sleep(Duration::from_millis(200));
    let spent = cpu_now() - before;
    rt.shutdown().unwrap();
    spent
}

#[test]
fn a_runtime_builds_busy_polling_loops() {
    let spent = idle_loop_cpu(Duration::from_secs(10));
    assert!(
        spent >= Duration::from_millis(100),
        "the idle loop used {spent:?} of CPU in 200 ms with a 10 s budget: it did not busy-poll"
    );
}

#[test]
fn a_loop_with_no_budget_sleeps_at_once() {
    let spent = idle_loop_cpu(Duration::ZERO);
    assert!(
        spent < Duration::from_millis(100),
        "the idle loop used {spent:?} of CPU in 200 ms"
    );
}

#[cfg(feature = "tokio")]
#[test]
fn runtime_loops_with_tokio_underneath_ignore_the_budget() {
    let spent = idle_runtime_cpu(
        greenhack::runtime::Builder::new()
            .tokio(true)
            .busy_poll(Duration::from_secs(10)),
    );
    assert!(
        spent < Duration::from_millis(100),
        "the idle loop with tokio underneath used {spent:?} of CPU in 200 ms"
    );
}

#[cfg(feature = "tokio")]
#[test]
fn a_hosted_loop_ignores_its_budget() {
    greenhack::runtime::set_busy_poll(Duration::from_secs(10));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let spent = rt.block_on(greenhack::as_async(|| {
        let before = thread_cpu();
        greenhack::sleep(Duration::from_millis(300));
        thread_cpu() - before
    }));
    greenhack::runtime::set_busy_poll(Duration::ZERO);
    // The greenlet's thread is the tokio thread: tokio sleeps in its own
    // epoll_wait, whatever greenhack's budget says.
    assert!(
        spent < Duration::from_millis(150),
        "the hosted loop used {spent:?} of CPU over a 300 ms sleep"
    );
}
