//! The `Send` entry (`greenhack::tokio::spawn_sync`, `Pool`, `Task`): sync
//! closures from a multi-thread tokio runtime, run as greenlets on pinned
//! workers.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use greenhack::net::{TcpListener, TcpStream};
use greenhack::tokio::{Pool, spawn_sync};

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// How much slower than native this process runs: Valgrind (the CI's
/// memcheck pass) serialises threads and interprets every instruction, so
/// the generous time bounds below stretch under it.
fn slowdown() -> u32 {
    let preload = std::env::var("LD_PRELOAD").unwrap_or_default();
    if preload.contains("vgpreload") { 20 } else { 1 }
}

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("").to_owned()
}

#[test]
fn greenhack_sockets_sleep_spawn_and_join_inside_the_entry_on_a_multi_thread_runtime() {
    let pool = Pool::builder()
        .worker_threads(1)
        .thread_name("sock-wk")
        .build()
        .unwrap();
    let (echoed, name) = multi_thread().block_on(async move {
        // Awaited inside a tokio::spawn: the whole future must be Send.
        tokio::spawn(async move {
            pool.spawn(|| {
                let start = Instant::now();
                greenhack::sleep(Duration::from_millis(20));
                assert!(start.elapsed() >= Duration::from_millis(20));
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let server = greenhack::spawn(move || {
                    let (mut conn, _) = listener.accept().unwrap();
                    let mut buf = [0; 5];
                    conn.read_exact(&mut buf).unwrap();
                    conn.write_all(&buf).unwrap();
                });
                let mut client = TcpStream::connect(addr).unwrap();
                client.write_all(b"hello").unwrap();
                let mut back = vec![0; 5];
                client.read_exact(&mut back).unwrap();
                server.join().unwrap();
                (back, thread_name())
            })
            .await
            .unwrap()
        })
        .await
        .unwrap()
    });
    assert_eq!(echoed, b"hello");
    assert_eq!(name, "sock-wk-0");
}

#[test]
fn tokio_futures_can_be_exempted_inside_the_entry() {
    let v = multi_thread().block_on(async {
        spawn_sync(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let sender = greenhack::spawn(move || {
                greenhack::exempt(tokio::time::sleep(Duration::from_millis(10)));
                tx.send(5).unwrap();
            });
            let v = greenhack::exempt(rx).unwrap();
            sender.join().unwrap();
            v
        })
        .await
        .unwrap()
    });
    assert_eq!(v, 5);
}

#[test]
fn many_closures_wait_concurrently_on_one_worker() {
    let pool = Pool::builder().worker_threads(1).build().unwrap();
    let start = Instant::now();
    let sum: usize = multi_thread().block_on(async move {
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                pool.spawn(move || {
                    greenhack::exempt(tokio::time::sleep(Duration::from_millis(100)));
                    i
                })
            })
            .collect();
        let mut sum = 0;
        for t in tasks {
            sum += t.await.unwrap();
        }
        sum
    });
    assert_eq!(sum, (0..1000).sum());
    // 1,000 waits of 100 ms on one thread: concurrent, not 100 s.
    assert!(
        start.elapsed() < Duration::from_secs(2) * slowdown(),
        "{:?}",
        start.elapsed()
    );
}

/// A sliced pool (`PoolBuilder::sliced`): 1,000 jobs waiting at once on
/// one worker share its stack; each keeps its frames, at the same
/// addresses, across a tokio timer, and the values come back.
#[test]
fn a_sliced_pool_runs_many_waiting_jobs_on_one_shared_stack() {
    // SAFETY: the jobs wait only through `exempt` of futures passed by
    // value (moved to the heap), and share no reference into their stacks.
    let pool = unsafe { Pool::builder().worker_threads(1).sliced() }
        .build()
        .unwrap();
    let results: Vec<(u64, usize, bool)> = multi_thread().block_on(async move {
        let tasks: Vec<_> = (0..1000u64)
            .map(|i| {
                pool.spawn(move || {
                    let frame = [i; 16];
                    let at = std::hint::black_box(&frame) as *const [u64; 16] as usize;
                    greenhack::exempt(tokio::time::sleep(Duration::from_millis(50)));
                    let still = std::hint::black_box(&frame) as *const [u64; 16] as usize;
                    (frame.iter().sum::<u64>(), at, at == still)
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        results
    });
    let mut places: Vec<usize> = results.iter().map(|r| r.1).collect();
    places.sort_unstable();
    places.dedup();
    // One shared stack: the jobs' frames sit at the same address, not in
    // 1,000 stacks of their own. (Not under AddressSanitizer, whose fake
    // stacks hold the locals on the heap; CI's ASan pass sets ASAN_OPTIONS.)
    if std::env::var_os("ASAN_OPTIONS").is_none() {
        assert_eq!(places.len(), 1, "frames at {} addresses", places.len());
    }
    for (i, (sum, _, same_place)) in results.into_iter().enumerate() {
        assert_eq!(
            sum,
            16 * i as u64,
            "job {i}'s frame changed while it waited"
        );
        assert!(same_place, "job {i}'s frame moved");
    }
}

/// A sliced pool's job that panics or is dropped while it waits: the
/// payload comes back, the destructors run on the worker.
#[test]
fn a_sliced_pools_jobs_carry_panics_and_unwind_when_dropped() {
    // SAFETY: as above: waits through `exempt` by value only.
    let pool = unsafe {
        Pool::builder()
            .worker_threads(1)
            .thread_name("cancel-wk-sl")
            .sliced()
    }
    .build()
    .unwrap();
    let rt = multi_thread();
    let panicked = pool.spawn(|| {
        greenhack::exempt(tokio::time::sleep(Duration::from_millis(1)));
        std::panic::panic_any(7u32)
    });
    let err = rt.block_on(panicked).unwrap_err();
    assert_eq!(err.into_panic().downcast_ref::<u32>(), Some(&7));

    let drops = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let (d, w, s) = (drops.clone(), wrong.clone(), started.clone());
    let task = pool.spawn(move || {
        let _guard = Guard {
            drops: d.clone(),
            wrong_thread: w,
        };
        s.fetch_add(1, Ordering::SeqCst);
        greenhack::exempt(Pending(d));
        unreachable!("the pending future completed");
    });
    // Another job runs meanwhile, so the waiting one is sliced out.
    assert_eq!(rt.block_on(pool.spawn(|| 5)).unwrap(), 5);
    wait_for("the closure to start", || {
        started.load(Ordering::SeqCst) == 1
    });
    drop(task);
    wait_for("the destructors", || drops.load(Ordering::SeqCst) == 2);
    assert_eq!(
        wrong.load(Ordering::SeqCst),
        0,
        "a destructor ran off the greenlet"
    );
}

/// A job of a sliced pool that starts another job on its own worker, then
/// cancels it while both are sliced out: the second unwinds on the worker
/// (not inside the first's greenlet), and the first goes on.
#[test]
fn a_sliced_job_cancels_a_job_it_started_on_its_own_worker() {
    // SAFETY: waits through `exempt` by value only.
    let pool = unsafe {
        Pool::builder()
            .worker_threads(1)
            .thread_name("cancel-wk-nest")
            .sliced()
    }
    .build()
    .unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(AtomicUsize::new(0));
    let (d, w) = (drops.clone(), wrong.clone());
    let inner_pool = pool.clone();
    let outer = pool.spawn(move || {
        let inner = inner_pool.spawn(move || {
            let _guard = Guard {
                drops: d.clone(),
                wrong_thread: w,
            };
            greenhack::exempt(Pending(d));
        });
        // Let the inner job start and wait, then cancel it from here.
        greenhack::exempt(tokio::time::sleep(Duration::from_millis(20)));
        drop(inner);
        greenhack::exempt(tokio::time::sleep(Duration::from_millis(20)));
        let frame = [3u64; 8];
        greenhack::exempt(tokio::time::sleep(Duration::from_millis(1)));
        frame.iter().sum::<u64>()
    });
    assert_eq!(multi_thread().block_on(outer).unwrap(), 24);
    wait_for("the inner job's destructors", || {
        drops.load(Ordering::SeqCst) == 2
    });
    assert_eq!(
        wrong.load(Ordering::SeqCst),
        0,
        "a destructor ran off the greenlet"
    );
}

#[test]
fn jobs_spread_over_the_workers() {
    let pool = Pool::builder()
        .worker_threads(2)
        .thread_name("spread")
        .build()
        .unwrap();
    let names = multi_thread().block_on(async move {
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                pool.spawn(|| {
                    greenhack::sleep(Duration::from_millis(50));
                    thread_name()
                })
            })
            .collect();
        let mut names = Vec::new();
        for t in tasks {
            names.push(t.await.unwrap());
        }
        names
    });
    let mut distinct = names.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct, ["spread-0", "spread-1"], "{names:?}");
}

#[test]
fn a_panic_comes_back_with_its_payload() {
    let err = multi_thread().block_on(async {
        spawn_sync(|| -> u32 {
            greenhack::sleep(Duration::from_millis(1));
            panic!("order {} failed", std::hint::black_box(7))
        })
        .await
        .unwrap_err()
    });
    assert!(err.is_panic());
    assert_eq!(err.to_string(), "greenlet panicked: order 7 failed");
    let payload = err.into_panic();
    assert_eq!(payload.downcast_ref::<String>().unwrap(), "order 7 failed");
}

#[test]
fn a_worker_keeps_serving_after_a_closure_panics() {
    let pool = Pool::builder().worker_threads(1).build().unwrap();
    let (err, after) = multi_thread().block_on(async move {
        let err = pool.spawn(|| panic!("first")).await.unwrap_err();
        (err, pool.spawn(|| 2).await.unwrap())
    });
    assert_eq!(*err.into_panic().downcast::<&str>().unwrap(), "first");
    assert_eq!(after, 2);
}

/// The threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|t| {
            let comm = t.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm).is_ok_and(|c| c.starts_with(prefix))
        })
        .count()
}

#[test]
fn dropping_the_pool_lets_running_closures_finish_then_its_threads_exit() {
    let pool = Pool::builder()
        .worker_threads(2)
        .thread_name("exit-wk")
        .build()
        .unwrap();
    // Each thread names itself as it starts.
    wait_for("the workers to start", || threads_named("exit-wk") == 2);
    let task = pool.spawn(|| {
        greenhack::sleep(Duration::from_millis(50));
        "done"
    });
    drop(pool);
    assert_eq!(multi_thread().block_on(task).unwrap(), "done");
    wait_for("the workers to exit", || threads_named("exit-wk") == 0);
}

/// Counts drops, and checks where they ran.
struct Guard {
    drops: Arc<AtomicUsize>,
    /// Set if the drop ran on a thread other than the worker.
    wrong_thread: Arc<AtomicUsize>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !thread_name().starts_with("cancel-wk") {
            self.wrong_thread.fetch_add(1, Ordering::SeqCst);
        }
        // A destructor of the greenlet's unwinding stack runs on that
        // stack, just below the value it drops. (Not checkable under
        // AddressSanitizer, whose fake stacks hold the locals on the heap;
        // CI's ASan pass sets ASAN_OPTIONS.)
        let here = 0u8;
        let distance = (self as *const Guard as usize).abs_diff(&raw const here as usize);
        let asan = std::env::var_os("ASAN_OPTIONS").is_some();
        if distance > 256 * 1024 && !asan {
            self.wrong_thread.fetch_add(100, Ordering::SeqCst);
        }
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

/// A pending future that counts its drop.
struct Pending(Arc<AtomicUsize>);

impl std::future::Future for Pending {
    type Output = ();
    fn poll(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::task::Poll::Pending
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5) * slowdown();
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn dropping_the_task_unwinds_the_greenlet_on_its_worker() {
    let pool = Pool::builder()
        .worker_threads(1)
        .thread_name("cancel-wk")
        .build()
        .unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let (d, w, f, s) = (
        drops.clone(),
        wrong.clone(),
        finished.clone(),
        started.clone(),
    );
    // Spawning needs no runtime: any thread may.
    let task = pool.spawn(move || {
        let _guard = Guard {
            drops: d.clone(),
            wrong_thread: w,
        };
        s.fetch_add(1, Ordering::SeqCst);
        // Suspended here, in a future that never completes.
        greenhack::exempt(Pending(d));
        f.fetch_add(1, Ordering::SeqCst);
    });
    wait_for("the closure to start", || {
        started.load(Ordering::SeqCst) == 1
    });
    let dropped_at = Instant::now();
    drop(task);
    // The guard on the stack and the pending future were both dropped.
    wait_for("the destructors", || drops.load(Ordering::SeqCst) == 2);
    assert!(dropped_at.elapsed() < Duration::from_secs(1) * slowdown());
    assert_eq!(
        wrong.load(Ordering::SeqCst),
        0,
        "a destructor ran off the greenlet"
    );
    assert_eq!(finished.load(Ordering::SeqCst), 0);
}

#[test]
fn abort_cancels_and_the_task_reports_it() {
    let drops = Arc::new(AtomicUsize::new(0));
    let d = drops.clone();
    let err = multi_thread().block_on(async move {
        let task = spawn_sync(move || {
            let _d = Pending(d);
            greenhack::exempt(tokio::time::sleep(Duration::from_secs(60)));
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!task.is_finished());
        let abort = task.abort_handle();
        abort.abort();
        task.await.unwrap_err()
    });
    assert!(err.is_cancelled());
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn a_task_dropped_at_once_never_completes_its_closure() {
    let pool = Pool::builder().worker_threads(1).build().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let rt = multi_thread();
    rt.block_on(async {
        // Dropped at once: each job is either refused when the worker takes
        // it, or unwound at its first wait.
        for _ in 0..100 {
            let r = ran.clone();
            drop(pool.spawn(move || {
                // Long enough that no scheduling delay (Valgrind serialises
                // threads) lets it end before the drop's cancel arrives.
                greenhack::sleep(Duration::from_secs(10));
                r.fetch_add(1, Ordering::SeqCst);
            }));
        }
        // A job queued after them has run once they were dealt with.
        pool.spawn(|| greenhack::sleep(Duration::from_millis(30)))
            .await
            .unwrap();
    });
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[test]
fn detach_lets_the_closure_finish() {
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    multi_thread().block_on(async move {
        spawn_sync(move || {
            greenhack::sleep(Duration::from_millis(10));
            d.fetch_add(1, Ordering::SeqCst);
        })
        .detach();
    });
    wait_for("the detached closure", || done.load(Ordering::SeqCst) == 1);
}

#[test]
fn the_task_and_its_abort_handle_are_send() {
    fn require_send<T: Send>(_: &T) {}
    fn require_send_sync<T: Send + Sync>(_: &T) {}
    let rt = multi_thread();
    let _guard = rt.enter();
    let task = spawn_sync(|| 1);
    require_send(&task);
    require_send_sync(&task.abort_handle());
    let fut = async move { task.await.unwrap() };
    require_send(&fut);
    assert_eq!(rt.block_on(fut), 1);
}

// ----- the paths of a call ---------------------------------------------------------

#[test]
fn a_closure_on_a_worker_that_calls_spawn_sync_runs_the_new_job_on_its_own_thread() {
    // Two workers: least-loaded dispatch would send the inner job to the
    // idle one; started in place, it runs beside its caller.
    let pool = Pool::builder()
        .worker_threads(2)
        .thread_name("nest-wk")
        .build()
        .unwrap();
    let inner_pool = pool.clone();
    let (outer, inner, from_a_greenlet) = multi_thread().block_on(async move {
        pool.spawn(move || {
            let here = std::thread::current().id();
            // Awaited from the closure, as sync code does.
            let inner = greenhack::exempt(inner_pool.spawn(|| {
                greenhack::exempt(tokio::time::sleep(Duration::from_millis(5)));
                std::thread::current().id()
            }))
            .unwrap();
            // And from a greenlet the closure spawned.
            let p = inner_pool.clone();
            let from_a_greenlet = greenhack::spawn(move || {
                greenhack::exempt(p.spawn(|| std::thread::current().id())).unwrap()
            })
            .join()
            .unwrap();
            (here, inner, from_a_greenlet)
        })
        .await
        .unwrap()
    });
    assert_eq!(inner, outer);
    assert_eq!(from_a_greenlet, outer);
}

#[test]
fn a_panic_and_a_cancel_of_a_job_started_on_its_callers_worker_come_back() {
    let pool = Pool::builder().worker_threads(1).build().unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    let d = drops.clone();
    let (panicked, cancelled) = multi_thread().block_on(async move {
        let p = pool.clone();
        pool.spawn(move || {
            let panicked = greenhack::exempt(p.spawn(|| -> u32 { panic!("inner") }))
                .unwrap_err()
                .into_panic();
            let slow = p.spawn(move || {
                let _counted = DropCounter(d);
                greenhack::sleep(Duration::from_secs(60));
            });
            greenhack::sleep(Duration::from_millis(5));
            slow.abort();
            let cancelled = greenhack::exempt(slow).unwrap_err().is_cancelled();
            (*panicked.downcast::<&str>().unwrap(), cancelled)
        })
        .await
        .unwrap()
    });
    assert_eq!(panicked, "inner");
    assert!(cancelled);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn a_burst_of_calls_from_many_tasks_all_complete() {
    // Jobs queued by many tasks on several runtime threads, their worker
    // woken once per burst; results back in rounds of many.
    let pool = Pool::builder().worker_threads(2).build().unwrap();
    let sum = multi_thread().block_on(async move {
        let tasks: Vec<_> = (0..64u64)
            .map(|t| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let mut sum = 0;
                    for i in 0..20 {
                        let calls: Vec<_> = (0..4)
                            .map(|k| {
                                pool.spawn(move || {
                                    if (t + i + k) % 3 == 0 {
                                        greenhack::exempt(tokio::task::yield_now());
                                    }
                                    t * 1000 + i * 4 + k
                                })
                            })
                            .collect();
                        for c in calls {
                            sum += c.await.unwrap();
                        }
                    }
                    sum
                })
            })
            .collect();
        let mut sum = 0;
        for t in tasks {
            sum += t.await.unwrap();
        }
        sum
    });
    let expected: u64 = (0..64u64)
        .flat_map(|t| (0..20).flat_map(move |i| (0..4).map(move |k| t * 1000 + i * 4 + k)))
        .sum();
    assert_eq!(sum, expected);
}

#[test]
fn a_job_queued_while_its_worker_is_busy_starts_when_the_worker_is_free() {
    // The worker's thread is blocked in a closure (awake, not sleeping), so
    // the second job is queued without a wake: the worker must look at its
    // queue before it sleeps again. The first closure then waits for a
    // minute, so nothing else would wake the worker before that.
    let pool = Pool::builder().worker_threads(1).build().unwrap();
    let b = multi_thread().block_on(async move {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let _a = pool.spawn(move || {
            started_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            greenhack::sleep(Duration::from_secs(60));
        });
        started_rx.await.unwrap();
        let b = pool.spawn(|| 2);
        tokio::time::timeout(Duration::from_secs(2) * slowdown(), b)
            .await
            .expect("the job queued while the worker was busy did not start")
            .unwrap()
    });
    assert_eq!(b, 2);
}

#[test]
fn a_job_queued_as_its_runtime_shuts_down_still_runs() {
    // The wake of the sleeping worker is left to the runtime's courier
    // task; if the runtime drops that task first, the drop wakes it.
    let pool = Pool::builder().worker_threads(1).build().unwrap();
    for _ in 0..20 {
        let (tx, rx) = std::sync::mpsc::channel();
        let rt = multi_thread();
        let p = pool.clone();
        rt.block_on(async move {
            p.spawn(move || tx.send(()).unwrap()).detach();
        });
        drop(rt);
        rx.recv_timeout(Duration::from_secs(5) * slowdown())
            .expect("the job never ran");
    }
}

#[test]
fn a_task_can_be_awaited_on_another_runtime_after_its_first_shut_down() {
    let pool = Pool::builder().worker_threads(1).build().unwrap();
    let first = multi_thread();
    // Long enough to be still running at its first poll, also under
    // qemu-user on a busy machine.
    let mut task = pool.spawn(|| {
        greenhack::exempt(tokio::time::sleep(Duration::from_millis(500)));
        7
    });
    // Polled once on the first runtime, so its courier is the one to wake it.
    first.block_on(async {
        assert!(futures_poll_once(&mut task).await.is_none());
    });
    drop(first);
    let v = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(task)
        .unwrap();
    assert_eq!(v, 7);
}

#[test]
fn a_task_awaited_outside_any_runtime_completes() {
    let pool = Pool::builder().worker_threads(1).build().unwrap();
    let task = pool.spawn(|| {
        greenhack::exempt(tokio::time::sleep(Duration::from_millis(5)));
        3
    });
    // greenhack's own loop waits for it: no tokio runtime on this thread.
    assert_eq!(greenhack::exempt(task).unwrap(), 3);
}

/// Counts its drops.
struct DropCounter(Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Polls `f` once; `Some` if it was ready.
async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    let mut f = std::pin::Pin::new(f);
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match f.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

// ----- axum ------------------------------------------------------------------------

/// The handler's sync part: a database call stood in for by a tokio timer.
fn slow_double(n: u32) -> u32 {
    greenhack::exempt(tokio::time::sleep(Duration::from_millis(50)));
    n * 2
}

async fn handler(axum::extract::Path(n): axum::extract::Path<u32>) -> String {
    spawn_sync(move || slow_double(n))
        .await
        .unwrap()
        .to_string()
}

async fn get(addr: std::net::SocketAddr, n: u32) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /double/{n} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    resp
}

#[test]
fn an_axum_handler_through_the_entry_serves_200_concurrent_requests() {
    multi_thread().block_on(async {
        let app = axum::Router::new().route("/double/{n}", axum::routing::get(handler));
        // std's listen backlog (128) would drop SYNs of a 200-connection burst.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1024).unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        // Warm the pool up (its threads start on first use).
        assert!(get(addr, 0).await.starts_with("HTTP/1.1 200"));

        let start = Instant::now();
        let clients: Vec<_> = (0..200).map(|n| tokio::spawn(get(addr, n))).collect();
        for (n, c) in clients.into_iter().enumerate() {
            let resp = c.await.unwrap();
            assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
            assert!(resp.ends_with(&format!("\r\n\r\n{}", n * 2)), "{resp}");
        }
        // 200 sync waits of 50 ms: concurrent, near one wait, not 10 s.
        let took = start.elapsed();
        assert!(took < Duration::from_secs(1) * slowdown(), "{took:?}");
    });
}
