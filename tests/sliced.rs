//! Sliced greenlets (`Builder::sliced`): one shared stack per thread, each
//! suspended greenlet's live frames on the heap. What a user relies on:
//! values and addresses on the stack survive being sliced out and back,
//! no mapping per greenlet (past the `vm.max_map_count` limit), panics,
//! cancellation and drops unwind as with ordinary greenlets, foreign futures
//! are safe to wait on, and the debugging tools still see every greenlet.

mod util;

use std::cell::Cell;
use std::io::{Read, Write};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Duration;

use greenhack::{Builder, JoinHandle};

/// Running under Valgrind (the CI's memcheck pass): fewer greenlets.
fn scaled(n: usize) -> usize {
    let valgrind = std::env::var("LD_PRELOAD").is_ok_and(|p| p.contains("vgpreload"));
    if valgrind { n / 20 } else { n }
}

fn sliced() -> Builder {
    // SAFETY: the greenlets of these tests wait on greenhack's own timers,
    // sockets and join handles, and on futures passed to `exempt` by
    // value: none keeps a pointer into a waiting greenlet's stack.
    unsafe { Builder::new().sliced() }
}

fn spawn_sliced<T: 'static>(f: impl FnOnce() -> T + 'static) -> JoinHandle<T> {
    sliced().spawn(f).expect("spawn a sliced greenlet")
}

/// Recurses `depth` frames, each holding a filled array, waits at the
/// bottom, and checks every frame's array (and its address) afterwards: the
/// slice copied out and back in must be byte-exact and at the same place.
#[inline(never)]
fn deep_wait(depth: u64, seed: u64, waits: u32) -> u64 {
    let frame = std::hint::black_box([seed.wrapping_mul(depth + 1); 24]);
    let at = &frame as *const [u64; 24] as usize;
    let below = if depth == 0 {
        for i in 0..waits {
            if i % 2 == 0 {
                greenhack::sleep(Duration::from_millis(1));
            } else {
                greenhack::yield_now();
            }
        }
        0
    } else {
        deep_wait(depth - 1, seed, waits)
    };
    assert_eq!(&frame as *const [u64; 24] as usize, at, "a frame moved");
    assert!(frame.iter().all(|&v| v == seed.wrapping_mul(depth + 1)));
    below + frame[7]
}

fn expected(depth: u64, seed: u64) -> u64 {
    (0..=depth).map(|d| seed.wrapping_mul(d + 1)).sum()
}

#[test]
fn frames_and_their_addresses_survive_slicing() {
    greenhack::run(|| {
        let n = scaled(300) as u64;
        let handles: Vec<_> = (0..n)
            .map(|i| {
                // Different depths: slices of different lengths take turns
                // on the shared stack.
                let depth = i % 7;
                (depth, i, spawn_sliced(move || deep_wait(depth, i, 6)))
            })
            .collect();
        for (depth, i, h) in handles {
            assert_eq!(h.join().unwrap(), expected(depth, i));
        }
    });
}

#[test]
fn a_pointer_into_a_sliced_stack_stays_valid_across_waits() {
    greenhack::run(|| {
        let handles: Vec<_> = (0..scaled(100) as u64)
            .map(|i| {
                spawn_sliced(move || {
                    let mut local = [i; 8];
                    let p: *mut [u64; 8] = &mut local;
                    for round in 0..5 {
                        greenhack::sleep(Duration::from_millis(1));
                        // SAFETY: `local` is alive; its address is unchanged
                        // (what this test checks).
                        unsafe { (*p)[round] += 1 };
                    }
                    local.iter().sum::<u64>()
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), 8 * i as u64 + 5);
        }
    });
}

#[test]
fn sliced_greenlets_need_no_stack_mapping_of_their_own() {
    std::thread::spawn(|| {
        greenhack::stack::set_pool_capacity(0);
        let before = greenhack::stack::stats().mapped;
        greenhack::run(|| {
            let n = scaled(5_000);
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    spawn_sliced(move || greenhack::sleep(Duration::from_millis(20 + i as u64 % 5)))
                })
                .collect();
            greenhack::sleep(Duration::from_millis(5));
            let during = greenhack::stack::stats().mapped;
            // `run`'s own greenlet and the one shared stack.
            assert!(
                during <= before + 2,
                "{n} sliced greenlets mapped {} stacks",
                during - before
            );
            for h in handles {
                h.join().unwrap();
            }
        });
        // The shared stack is unmapped with its last greenlet.
        assert_eq!(greenhack::stack::stats().mapped, before);
    })
    .join()
    .unwrap();
}

/// Ordinary greenlets stop near 32,700 under the default `vm.max_map_count`
/// (two mappings each); sliced ones are not counted against it.
#[test]
fn more_sliced_greenlets_than_guarded_stacks_could_exist() {
    let n = scaled(40_000);
    let woken = Rc::new(Cell::new(0usize));
    greenhack::run(|| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let woken = woken.clone();
                spawn_sliced(move || {
                    greenhack::sleep(Duration::from_millis(50));
                    woken.set(woken.get() + 1);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    assert_eq!(woken.get(), n);
}

#[test]
fn a_panic_crosses_join_with_its_payload() {
    greenhack::run(|| {
        let seven = std::hint::black_box(7);
        let h = spawn_sliced(move || {
            greenhack::sleep(Duration::from_millis(1));
            panic!("sliced boom {seven}");
        });
        let other = spawn_sliced(|| {
            greenhack::sleep(Duration::from_millis(2));
            5
        });
        let err = h.join().unwrap_err();
        assert!(err.is_panic());
        let payload = err.into_panic();
        assert_eq!(payload.downcast_ref::<String>().unwrap(), "sliced boom 7");
        assert_eq!(other.join().unwrap(), 5);
    });
}

struct CountDrop(Rc<Cell<usize>>);

impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

#[test]
fn cancelling_sliced_greenlets_runs_their_destructors() {
    let dropped = Rc::new(Cell::new(0));
    greenhack::run(|| {
        let n = scaled(200);
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let guard = CountDrop(dropped.clone());
                spawn_sliced(move || {
                    let _on_the_stack = CountDrop(guard.0.clone());
                    let _captured = &guard;
                    greenhack::sleep(Duration::from_secs(3600));
                })
            })
            .collect();
        // Let every one start and be sliced out by the next.
        greenhack::sleep(Duration::from_millis(5));
        for h in &handles {
            h.cancel();
        }
        for h in handles {
            assert!(h.join().unwrap_err().is_cancelled());
        }
        assert_eq!(dropped.get(), 2 * n);
    });
}

#[test]
fn dropping_a_suspended_sliced_as_async_unwinds_it() {
    let dropped = Rc::new(Cell::new(0));
    let (d1, d2) = (dropped.clone(), dropped.clone());
    greenhack::run(move || {
        let a = sliced()
            .as_async(move || {
                let _g = CountDrop(d1);
                greenhack::sleep(Duration::from_secs(3600));
            })
            .unwrap();
        let b = sliced()
            .as_async(move || {
                let _g = CountDrop(d2);
                greenhack::sleep(Duration::from_secs(3600));
            })
            .unwrap();
        // Start both (b's start slices a out), then drop a: its frames come
        // back in to unwind.
        let mut a = Box::pin(a);
        let mut b = Box::pin(b);
        greenhack::exempt(std::future::poll_fn(|c| {
            let _ = a.as_mut().poll(c);
            let _ = b.as_mut().poll(c);
            std::task::Poll::Ready(())
        }));
        drop(a);
        assert_eq!(dropped.get(), 1);
        drop(b);
        assert_eq!(dropped.get(), 2);
    });
}

#[test]
fn a_sliced_greenlet_spawns_and_joins_sliced_greenlets() {
    greenhack::run(|| {
        let parent = spawn_sliced(|| {
            let children: Vec<_> = (0..50u64)
                .map(|i| spawn_sliced(move || deep_wait(i % 4, i, 2)))
                .collect();
            children
                .into_iter()
                .enumerate()
                .map(|(i, h)| {
                    let i = i as u64;
                    assert_eq!(h.join().unwrap(), expected(i % 4, i));
                    1u64
                })
                .sum::<u64>()
        });
        assert_eq!(parent.join().unwrap(), 50);
    });
}

#[test]
fn sliced_and_ordinary_greenlets_interleave() {
    greenhack::run(|| {
        let handles: Vec<_> = (0..60u64)
            .map(|i| {
                if i % 3 == 0 {
                    greenhack::spawn(move || deep_wait(3, i, 4))
                } else {
                    spawn_sliced(move || deep_wait(3, i, 4))
                }
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), expected(3, i as u64));
        }
    });
}

#[test]
fn sliced_connection_handlers_serve_every_byte() {
    use greenhack::net::{TcpListener, TcpStream};
    greenhack::run(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let clients = scaled(100);
        let server = spawn_sliced(move || {
            let mut handlers = Vec::new();
            for _ in 0..clients {
                let (mut conn, _) = listener.accept().unwrap();
                handlers.push(spawn_sliced(move || {
                    let mut buf = [0u8; 256];
                    loop {
                        let n = conn.read(&mut buf).unwrap();
                        if n == 0 {
                            return;
                        }
                        conn.write_all(&buf[..n]).unwrap();
                    }
                }));
            }
            for h in handlers {
                h.join().unwrap();
            }
        });
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                spawn_sliced(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    for round in 0..5u8 {
                        let msg: Vec<u8> = (0..100).map(|i| (i as u8) ^ round ^ c as u8).collect();
                        s.write_all(&msg).unwrap();
                        let mut back = vec![0u8; msg.len()];
                        s.read_exact(&mut back).unwrap();
                        assert_eq!(back, msg);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        server.join().unwrap();
    });
}

/// Foreign futures that register their own address (tokio's timer entries
/// are intrusive) are moved off the sliced stack by `exempt`.
#[test]
fn tokio_timers_waited_on_by_sliced_greenlets_under_tokio() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let total = local.block_on(&rt, async {
        let tasks: Vec<_> = (0..scaled(200) as u64)
            .map(|i| {
                let fut = sliced()
                    .as_async(move || {
                        let mut sum = 0;
                        for round in 0..3 {
                            greenhack::exempt(tokio::time::sleep(Duration::from_millis(
                                1 + (i + round) % 3,
                            )));
                            sum += deep_wait(i % 3, i, 0);
                        }
                        sum
                    })
                    .unwrap();
                tokio::task::spawn_local(fut)
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total
    });
    let want: u64 = (0..scaled(200) as u64)
        .map(|i| 3 * expected(i % 3, i))
        .sum();
    assert_eq!(total, want);
}

#[test]
fn resuming_a_sliced_greenlet_inside_another_one_panics() {
    greenhack::run(|| {
        let h = spawn_sliced(|| {
            let inner = sliced().as_async(|| 1).unwrap();
            let caught = panic::catch_unwind(AssertUnwindSafe(|| greenhack::exempt(inner)));
            let payload = caught.expect_err("resuming it must panic");
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap();
            assert!(msg.contains("another sliced greenlet"), "{msg}");
            2
        });
        assert_eq!(h.join().unwrap(), 2);
        // The thread's sliced greenlets still work.
        assert_eq!(
            spawn_sliced(|| deep_wait(2, 9, 2)).join().unwrap(),
            expected(2, 9)
        );
    });
}

#[test]
fn build_refuses_a_sliced_builder() {
    let err = sliced()
        .build::<(), (), (), _>(|_, ()| ())
        .expect_err("a raw greenlet cannot be sliced");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("as_async"), "{err}");
}

#[inline(never)]
fn parked_in_sliced_frame() {
    greenhack::sleep(Duration::from_secs(3600));
    // Not a tail call: the frame stays on the stack while it sleeps.
    std::hint::black_box(());
}

#[test]
fn dump_lists_sliced_out_greenlets_with_their_backtraces() {
    greenhack::run(|| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                sliced()
                    .name(format!("sliced-{i}"))
                    .spawn(parked_in_sliced_frame)
                    .unwrap()
            })
            .collect();
        greenhack::sleep(Duration::from_millis(5));
        let dump = greenhack::debug::dump();
        for i in 0..3 {
            let name = format!("sliced-{i}");
            let g = dump
                .greenlets
                .iter()
                .find(|g| g.name.as_deref() == Some(&name))
                .unwrap_or_else(|| panic!("{name} missing from:\n{dump}"));
            assert_eq!(g.state, "suspended", "{dump}");
            assert_ne!(g.wait, greenhack::debug::Wait::Nothing, "{dump}");
            let bt = g.backtrace.as_deref().unwrap_or_default();
            assert!(bt.contains("parked_in_sliced_frame"), "{name}:\n{bt}");
        }
        for h in &handles {
            h.cancel();
        }
        for h in handles {
            assert!(h.join().unwrap_err().is_cancelled());
        }
    });
}

#[inline(never)]
fn capture_in_sliced_greenlet() -> String {
    std::backtrace::Backtrace::force_capture().to_string()
}

/// A backtrace taken in a sliced greenlet that was sliced out and brought
/// back continues into the loop that resumed it (the header's parent link
/// came back with it), not into whoever ran on the stack before.
#[test]
fn a_backtrace_in_a_restored_sliced_greenlet_reaches_its_resumer() {
    greenhack::run(|| {
        let h = spawn_sliced(|| {
            greenhack::yield_now();
            capture_in_sliced_greenlet()
        });
        // Another sliced greenlet takes the stack in between.
        let other = spawn_sliced(greenhack::yield_now);
        let bt = h.join().unwrap();
        other.join().unwrap();
        let inside = bt.find("capture_in_sliced_greenlet");
        let loop_frame = bt.find("run_ready");
        assert!(inside.is_some(), "greenlet frame missing:\n{bt}");
        assert!(
            loop_frame.is_some(),
            "backtrace stops at the greenlet's root:\n{bt}"
        );
        assert!(inside < loop_frame, "{bt}");
    });
}

/// A thread that exits with sliced greenlets still waiting unwinds them
/// (their destructors run on their frames, brought back in turn) and gives
/// the shared stack back.
#[test]
fn sliced_greenlets_are_unwound_at_thread_exit() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Count(Arc<AtomicUsize>);
    impl Drop for Count {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let mapped_after = std::thread::spawn(move || {
        greenhack::stack::set_pool_capacity(0);
        for depth in 0..20u64 {
            let c = Count(d.clone());
            drop(spawn_sliced(move || {
                let _c = c;
                deep_wait(depth % 5, depth, u32::MAX);
            }));
        }
        greenhack::yield_now(); // every one starts, slicing the others out
        greenhack::stack::stats().mapped
    })
    .join()
    .unwrap();
    assert!(mapped_after >= 1, "the shared stack was mapped");
    assert_eq!(dropped.load(Ordering::SeqCst), 20);
}
