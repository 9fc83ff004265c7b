//! `Runtime`: several loops serving one `SO_REUSEPORT` port, hand-off of
//! connections between loops, remote spawns (values, panics, cancellation),
//! clean shutdown, and errors from stopped loops.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use greenhack::Runtime;
use greenhack::net::{TcpListener, TcpSocket, TcpStream, UnixStream};
use greenhack::runtime::{Builder, Handle};

/// Aborts the test process if the test holding it runs longer than 60 s
/// (it takes well under 1 s): a regression that hangs a shutdown or a join
/// then fails loudly, naming the test, instead of stalling the suite.
struct Watchdog(#[allow(dead_code)] mpsc::Sender<()>);

fn watchdog() -> Watchdog {
    let limit = Duration::from_secs(60);
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("{test}: still running after {limit:?}: hung; aborting");
            std::process::abort();
        }
    });
    Watchdog(tx)
}

/// The payload client `i` sends: distinct per client, so a byte crossed
/// between connections would be seen.
fn payload(i: usize) -> Vec<u8> {
    (0..512).map(|j| (i * 31 + j * 7) as u8).collect()
}

/// Reserves a loopback port for a `SO_REUSEPORT` group: a bound socket that
/// does not listen (so it takes no connections) holds the port.
fn reserve_port() -> (TcpSocket, SocketAddr) {
    let s = TcpSocket::new_v4().unwrap();
    s.set_reuseport(true).unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = s.local_addr().unwrap();
    (s, addr)
}

fn this_loop() -> usize {
    Handle::try_current().expect("on a runtime loop").index()
}

/// Echoes until the peer closes.
fn echo(mut conn: TcpStream) {
    let mut buf = [0; 1024];
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        if conn.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Runs `n` clients at once on this thread's loop; client `i` sends
/// `payload(i)` and checks that exactly that comes back after `prefix`
/// bytes, which it returns.
fn clients(addr: SocketAddr, n: usize, prefix: usize) -> Vec<Vec<u8>> {
    greenhack::run(|| {
        let clients: Vec<_> = (0..n)
            .map(|i| {
                greenhack::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    let sent = payload(i);
                    s.write_all(&sent).unwrap();
                    let mut back = vec![0; prefix + sent.len()];
                    s.read_exact(&mut back).unwrap();
                    assert_eq!(back[prefix..], sent[..], "client {i} got other bytes");
                    back.truncate(prefix);
                    back
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    })
}

#[test]
fn two_loops_serve_1000_clients_over_one_reuseport_port() {
    let _watchdog = watchdog();
    let (reserve, addr) = reserve_port();
    let accepted: Arc<[AtomicUsize; 2]> = Arc::default();
    let counts = accepted.clone();
    let rt = Builder::new()
        .worker_threads(2)
        .build(move || {
            let s = TcpSocket::new_v4()?;
            s.set_reuseport(true)?;
            s.bind(addr)?;
            let listener = s.listen(1024)?;
            loop {
                let (conn, _) = listener.accept()?;
                counts[this_loop()].fetch_add(1, Ordering::Relaxed);
                drop(greenhack::spawn(move || echo(conn)));
            }
        })
        .unwrap();
    clients(addr, 1000, 0);
    let per_loop = [0, 1].map(|i| accepted[i].load(Ordering::Relaxed));
    assert_eq!(per_loop[0] + per_loop[1], 1000);
    // The kernel hashes each connection to one listener of the group: a
    // loop getting none of 1,000 has probability 2^-999.
    assert!(per_loop.iter().all(|&n| n > 0), "per loop: {per_loop:?}");
    rt.shutdown().unwrap();
    drop(reserve);
}

/// A listener with room for a burst of 1,000 connects, as a std listener
/// (to send to a loop).
fn std_listener() -> (std::net::TcpListener, SocketAddr) {
    let s = TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = s.listen(1024).unwrap();
    let addr = l.local_addr().unwrap();
    (l.into_std().unwrap(), addr)
}

#[test]
fn hand_off_of_1000_accepted_connections_from_an_acceptor_loop_to_workers() {
    let _watchdog = watchdog();
    let rt = Runtime::builder()
        .worker_threads(3)
        .build(|| Ok(()))
        .unwrap();
    let (listener, addr) = std_listener();
    let workers = [rt.handle(1).clone(), rt.handle(2).clone()];
    // Loop 0 accepts and deals the connections out, round-robin; each
    // worker first writes its loop index, then echoes.
    let acceptor = rt.handle(0).spawn(move || -> std::io::Result<()> {
        let listener = TcpListener::from_std(listener)?;
        for i in 0.. {
            let (conn, _) = listener.accept()?;
            let conn = conn.into_std()?; // deregistered from loop 0
            drop(workers[i % 2].spawn(move || {
                let mut conn = TcpStream::from_std(conn).unwrap(); // on this loop
                conn.write_all(&[this_loop() as u8]).unwrap();
                echo(conn);
            }));
        }
        Ok(())
    });
    let served_by = clients(addr, 1000, 1);
    let per_loop = [0, 1, 2].map(|l| served_by.iter().filter(|b| b[0] == l).count());
    assert_eq!(per_loop, [0, 500, 500]);
    rt.shutdown().unwrap();
    // The acceptor was parked in accept: unwound by the shutdown.
    assert!(acceptor.join().unwrap_err().is_stopped());
}

/// Counts its drops: proves a cancelled greenlet's stack was unwound.
struct DropCounter(Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).unwrap().count()
}

/// `count_dir(path)` once it has come down to `want`, or after 5 s: a joined
/// thread's /proc entry goes a moment after `join` returns (the kernel
/// wakes the joiner before it reaps the thread; under qemu-user, later).
fn settled_count(path: &str, want: usize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = count_dir(path);
        if n <= want || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// In a child process (descriptors and threads are counted process-wide,
/// and other tests run in parallel threads): 500 greenlets over two loops
/// parked in reads of Unix socket pairs nobody writes to; shutdown unwinds
/// every one (500 drops), closes every descriptor (the count under
/// /proc/self/fd is back where it was before the runtime started: the
/// sockets and each loop's epoll and eventfd), and joins the threads (the
/// count under /proc/self/task is back too).
#[test]
fn shutdown_unwinds_500_greenlets_parked_in_reads_and_closes_their_fds() {
    let _watchdog = watchdog();
    const NAME: &str = "shutdown_unwinds_500_greenlets_parked_in_reads_and_closes_their_fds";
    if !util::is_child(NAME) {
        util::assert_child_passed(&util::run_child(NAME));
        return;
    }
    let (fds_before, threads_before) = (count_dir("/proc/self/fd"), count_dir("/proc/self/task"));
    let rt = Runtime::builder()
        .worker_threads(2)
        .build(|| Ok(()))
        .unwrap();
    let (parked, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let handles: Vec<_> = (0..500)
        .map(|i| {
            let (parked, dropped) = (parked.clone(), dropped.clone());
            rt.handle(i % 2).spawn(move || {
                let _guard = DropCounter(dropped);
                let (mut a, _b) = UnixStream::pair().unwrap();
                parked.fetch_add(1, Ordering::SeqCst);
                let n = a.read(&mut [0; 16]);
                unreachable!("nobody writes, yet read returned {n:?}");
            })
        })
        .collect();
    while parked.load(Ordering::SeqCst) < 500 {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(count_dir("/proc/self/fd") >= fds_before + 1000);
    assert_eq!(count_dir("/proc/self/task"), threads_before + 2);
    rt.shutdown().unwrap();
    assert_eq!(dropped.load(Ordering::SeqCst), 500);
    assert_eq!(count_dir("/proc/self/fd"), fds_before);
    assert_eq!(
        settled_count("/proc/self/task", threads_before),
        threads_before
    );
    for h in handles {
        assert!(h.join().unwrap_err().is_stopped());
    }
}

/// A handle kept after its loop stopped: spawning through it fails at
/// once (1 s is a generous bound for "at once": it takes microseconds;
/// a hang would hit the test's timeout instead), and the closure is
/// dropped, never run.
#[test]
fn a_handle_used_after_its_loop_stopped_returns_an_error_at_once() {
    let _watchdog = watchdog();
    let rt = Runtime::builder()
        .worker_threads(1)
        .build(|| Ok(()))
        .unwrap();
    let h = rt.handle(0).clone();
    assert!(h.is_running());
    rt.shutdown().unwrap();
    assert!(!h.is_running());
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let start = Instant::now();
    let err = h
        .spawn(move || {
            r.fetch_add(1, Ordering::SeqCst);
        })
        .join()
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(err.is_stopped(), "{err}");
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(Arc::strong_count(&ran), 1, "the closure was not dropped");
    // Also from inside a greenlet of another thread's loop.
    let err = greenhack::run(|| greenhack::spawn(move || h.spawn(|| 1).join()).join());
    assert!(err.unwrap().unwrap_err().is_stopped());
}

#[test]
fn remote_spawn_returns_values_panics_with_payload_and_cancels() {
    let _watchdog = watchdog();
    let rt = Runtime::builder()
        .worker_threads(2)
        .build(|| Ok(()))
        .unwrap();
    // A value, computed on loop 1, read on this plain thread (parked).
    let (index, name) = rt
        .handle(1)
        .spawn(|| {
            (
                this_loop(),
                std::thread::current().name().map(str::to_owned),
            )
        })
        .join()
        .unwrap();
    assert_eq!((index, name.as_deref()), (1, Some("greenhack-loop-1")));

    // A panic, with its payload.
    let err = rt
        .handle(0)
        .spawn(|| -> u32 { panic!("bad input on loop {}", this_loop()) })
        .join()
        .unwrap_err();
    assert!(err.is_panic());
    let payload = err.into_panic();
    assert_eq!(
        payload.downcast_ref::<String>().unwrap(),
        "bad input on loop 0"
    );

    // Cancellation unwinds the greenlet on its own loop.
    let (started, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (s, d) = (started.clone(), dropped.clone());
    let sleeper = rt.handle(1).spawn(move || {
        let _guard = DropCounter(d);
        s.fetch_add(1, Ordering::SeqCst);
        greenhack::sleep(Duration::from_secs(3600));
    });
    while started.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    sleeper.cancel();
    assert!(sleeper.join().unwrap_err().is_cancelled());
    assert_eq!(dropped.load(Ordering::SeqCst), 1);

    // Joined from a greenlet of loop 0: waits on loop 0, which keeps
    // serving its other greenlets meanwhile.
    let h1 = rt.handle(1).clone();
    let (sum, ticks) = rt
        .handle(0)
        .spawn(move || {
            let ticks = Arc::new(AtomicUsize::new(0));
            let t = ticks.clone();
            let ticker = greenhack::spawn(move || {
                loop {
                    greenhack::sleep(Duration::from_millis(1));
                    t.fetch_add(1, Ordering::Relaxed);
                }
            });
            let sum = h1
                .spawn(|| {
                    greenhack::sleep(Duration::from_millis(30));
                    40 + 2
                })
                .join()
                .unwrap();
            ticker.cancel();
            (sum, ticks.load(Ordering::Relaxed))
        })
        .join()
        .unwrap();
    assert_eq!(sum, 42);
    assert!(ticks > 0, "loop 0 was blocked while its greenlet joined");

    // Awaited as a future by another executor.
    let h = rt.handle(1).spawn(this_loop);
    assert_eq!(futures_executor::block_on(h).unwrap(), 1);
    rt.shutdown().unwrap();
}

#[test]
fn a_failed_setup_stops_its_loop_and_is_reported_with_its_payload() {
    let _watchdog = watchdog();
    let rt = Builder::new()
        .worker_threads(3)
        .thread_name("srv")
        .build(|| match this_loop() {
            0 => Ok(()),
            1 => panic!("setup of loop 1 broke"),
            _ => Err(std::io::Error::new(ErrorKind::AddrInUse, "port taken")),
        })
        .unwrap();
    let failed = rt.handle(1).clone();
    // `join` returns once a loop stopped on its own, and stops the others.
    let err = rt.join().unwrap_err();
    // The failed loop took no more work: its handle says so at once.
    assert!(failed.spawn(|| ()).join().unwrap_err().is_stopped());
    let msg = err.to_string();
    let loops = err.into_loops();
    // Loop 2 may or may not have failed yet when loop 1's failure woke
    // `join`: both are reported if so, each with its cause.
    let first = &loops[0];
    assert!(first.index() == 1 || first.index() == 2, "{msg}");
    for l in loops {
        match l.index() {
            1 => {
                assert_eq!(l.thread_name(), "srv-1");
                assert!(l.is_panic());
                assert_eq!(
                    *l.into_panic().downcast::<&str>().unwrap(),
                    "setup of loop 1 broke"
                );
            }
            2 => {
                assert_eq!(l.thread_name(), "srv-2");
                assert_eq!(
                    l.setup_error().unwrap().kind(),
                    ErrorKind::AddrInUse,
                    "{msg}"
                );
            }
            i => panic!("loop {i} reported: {msg}"),
        }
    }
}

#[test]
fn pinned_loops_run_on_the_cpus_they_were_given() {
    let _watchdog = watchdog();
    let rt = Builder::new()
        .worker_threads(2)
        .pin_threads(true)
        .build(|| Ok(()))
        .unwrap();
    // SAFETY: sched_getcpu takes no arguments.
    let cpus: Vec<_> = (0..2)
        .map(|i| {
            rt.handle(i)
                .spawn(|| unsafe { libc::sched_getcpu() })
                .join()
                .unwrap()
        })
        .collect();
    let ncpu = std::thread::available_parallelism().unwrap().get();
    if ncpu >= 2 {
        assert_ne!(cpus[0], cpus[1], "two pinned loops share a CPU: {cpus:?}");
    }
    rt.shutdown().unwrap();
}
