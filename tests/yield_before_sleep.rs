//! Yielding before sleeping (`runtime::set_yield_before_sleep`,
//! `runtime::Builder::yield_before_sleep`): a loop that runs out of work
//! gives its CPU to the threads that feed it and looks again before it
//! sleeps, so a client sharing its CPU finds the loop awake.
//!
//! What proves it is the loop thread's *voluntary* context switches (it
//! blocked in `epoll_wait`), counted by the kernel per thread: in a
//! ping-pong between a loop and a client pinned to the same CPU, the client
//! computing for 20 µs between a reply and its next request (the loop runs
//! out of work meanwhile), the loop sleeps once per round trip when it does
//! not yield (0.88–0.99 natively, 0.94 under ASan, 0.55 under qemu-user,
//! 0.30 under Valgrind, which schedules threads itself) and almost never
//! when it does (0 natively and under ASan, at most 0.026 emulated). Both
//! directions are asserted, so the test fails without the feature and
//! cannot pass on a scheduler where the loop would not have slept anyway.

use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use greenhack::net::TcpListener;

/// Round trips per measurement.
const ROUND_TRIPS: u32 = 2_000;

/// How long the client computes between a reply and its next request.
const CLIENT_WORK: Duration = Duration::from_micros(20);

/// The tests pin threads to one CPU: one measurement at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The first CPU this process may run on.
fn first_allowed_cpu() -> usize {
    // SAFETY: an all-zero cpu_set_t is a valid (empty) set, filled in by
    // sched_getaffinity for the calling thread (pid 0), with its true size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let r = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        assert_eq!(
            r,
            0,
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        );
        (0..libc::CPU_SETSIZE as usize)
            .find(|&cpu| libc::CPU_ISSET(cpu, &set))
            .expect("the process may run on some CPU")
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: as in `first_allowed_cpu`; sched_setaffinity only reads the
    // set, and pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let r = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            r,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The calling thread's voluntary context switches so far (it blocked).
fn voluntary_switches() -> i64 {
    // SAFETY: an all-zero rusage is valid, and getrusage fills it in.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let r = libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        assert_eq!(r, 0, "getrusage: {}", std::io::Error::last_os_error());
        usage
    };
    usage.ru_nvcsw
}

/// Serves `ROUND_TRIPS` one-byte round trips from a std client thread
/// pinned to `cpu`, on a greenhack loop run by `serve_on_loop` (which must
/// call the closure it is given on a loop pinned to the same CPU), and
/// returns the loop thread's voluntary context switches per round trip.
fn sleeps_per_round_trip(
    cpu: usize,
    serve_on_loop: impl FnOnce(Box<dyn FnOnce() -> f64 + Send>) -> f64,
) -> f64 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client = std::thread::spawn(move || {
        pin_to(cpu);
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut byte = [0u8; 1];
        for i in 0..ROUND_TRIPS {
            stream.write_all(&[i as u8]).unwrap();
            stream.read_exact(&mut byte).unwrap();
            assert_eq!(byte[0], i as u8, "round trip {i} came back wrong");
            // Work of its own before the next request, as any client has:
            // the loop runs out of work meanwhile.
            let start = Instant::now();
            while start.elapsed() < CLIENT_WORK {
                std::hint::spin_loop();
            }
        }
    });
    let per_round_trip = serve_on_loop(Box::new(move || {
        let listener = TcpListener::from_std(listener).unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_nodelay(true).unwrap();
        let before = voluntary_switches();
        let mut byte = [0u8; 1];
        for _ in 0..ROUND_TRIPS {
            stream.read_exact(&mut byte).unwrap();
            stream.write_all(&byte).unwrap();
        }
        (voluntary_switches() - before) as f64 / f64::from(ROUND_TRIPS)
    }));
    client.join().unwrap();
    per_round_trip
}

/// The same on a new thread's own loop, with yielding set to `on` (`None`:
/// left at its default).
fn sleeps_on_a_thread(on: Option<bool>) -> f64 {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cpu = first_allowed_cpu();
    std::thread::spawn(move || {
        pin_to(cpu);
        if let Some(on) = on {
            greenhack::runtime::set_yield_before_sleep(on);
        }
        sleeps_per_round_trip(cpu, greenhack::run)
    })
    .join()
    .unwrap()
}

#[test]
fn a_loop_that_yields_first_finds_its_client_s_request_instead_of_sleeping() {
    let sleeps = sleeps_on_a_thread(Some(true));
    assert!(
        sleeps < 0.08,
        "the loop slept {sleeps:.2} times per round trip with a client on its CPU"
    );
}

#[test]
fn a_loop_that_does_not_yield_sleeps_between_round_trips() {
    let sleeps = sleeps_on_a_thread(Some(false));
    assert!(
        sleeps > 0.15,
        "the loop slept only {sleeps:.2} times per round trip without yielding: \
         the other test proves nothing on this scheduler"
    );
}

#[test]
fn a_loop_yields_before_sleeping_by_default() {
    let sleeps = sleeps_on_a_thread(None);
    assert!(
        sleeps < 0.08,
        "a loop left at its defaults slept {sleeps:.2} times per round trip"
    );
}

#[test]
fn a_runtime_builds_loops_with_yielding_set() {
    // None: the builder's default.
    for on in [Some(true), Some(false), None] {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let cpu = first_allowed_cpu();
        // pin_threads: loop 0 on the first CPU the process may use.
        let mut builder = greenhack::runtime::Builder::new();
        builder.worker_threads(1).pin_threads(true);
        if let Some(on) = on {
            builder.yield_before_sleep(on);
        }
        let rt = builder.build(|| Ok(())).unwrap();
        let handle = rt.handle(0);
        let sleeps = sleeps_per_round_trip(cpu, |serve| handle.spawn(serve).join().unwrap());
        rt.shutdown().unwrap();
        if on != Some(false) {
            assert!(
                sleeps < 0.08,
                "yielding loop slept {sleeps:.2} times per round trip"
            );
        } else {
            assert!(
                sleeps > 0.15,
                "loop that does not yield slept {sleeps:.2} times per round trip"
            );
        }
    }
}
