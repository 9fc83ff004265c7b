//! Sync benchmark: `greenhack::sync`'s channels and `Mutex` between
//! greenlets, against tokio's between tasks on a current-thread runtime and
//! may's between coroutines on one worker, measured in the same run.
//!
//! ```text
//! cargo bench --bench sync             # every case
//! cargo bench --bench sync -- mutex    # cases whose name contains "mutex"
//! GREENHACK_BENCH_QUICK=1 cargo bench --bench sync   # smoke run (CI)
//! ```
//!
//! # The sides (the columns)
//!
//! * **greenhack** — greenlets spawned on the bench thread's loop
//!   (`greenhack::spawn`), using `greenhack::sync::{mpsc, Mutex}`;
//! * **tokio** (1.x) — tasks `tokio::spawn`ed on a current-thread runtime
//!   built once (no I/O or time driver), using `tokio::sync::{mpsc, Mutex}`;
//! * **may** (0.3) — coroutines `go!`ed on may's scheduler with one worker
//!   thread (`may::config().set_workers(1)`), using `may::sync::{mpsc,
//!   Mutex}`. may has no bounded mpsc channel: that cell is "—".
//!
//! # Cases
//!
//! * **ping-pong** — two greenlets / tasks / coroutines, two unbounded
//!   channels: A sends `x`, B answers `x + 1`, A waits for the answer. ns per
//!   round trip (two sends, two receives, two waits, two wakes).
//! * **one-way, unbounded** — a producer sends n `u64`s, a consumer
//!   receives and sums them (checked). The time runs from the producer's
//!   first send to the consumer's last receive. ns per message.
//! * **one-way, bounded 64** — the same through a channel of capacity 64:
//!   the producer waits whenever the channel is full, the consumer whenever
//!   it is empty. ns per message.
//! * **mutex, uncontended** — one greenlet / task / coroutine locks,
//!   increments and unlocks. ns per lock + unlock.
//! * **mutex, 1000-way** — 1,000 greenlets / tasks / coroutines each take
//!   the lock, yield (`greenhack::yield_now`, `tokio::task::yield_now`,
//!   `may::coroutine::yield_now`) inside the critical section, increment and
//!   unlock, n ops spread evenly over them (the total is checked): every
//!   lock after the first waits in the queue and is handed the lock. The
//!   time runs from the moment the last contender starts (each has run
//!   once: the first touch of its stack or task is not timed) to the end
//!   of the last op. ns per lock + unlock (including the yield and the
//!   switches it causes). greenhack's stack pool is set to keep 1,024
//!   stacks (`greenhack::stack::set_pool_capacity`, default 256), so that
//!   samples reuse stacks as tokio reuses task allocations.
//!
//! Spawning and channel creation happen outside the timed region.
//!
//! # Harness
//!
//! `benches/common` (shared with `switch` and `bridge`): each side warmed
//! up and calibrated to its own n, then 31 samples, the sides interleaved
//! and rotated sample by sample. Each cell: median ns per op (min; p25–p75).
//! Ratios are peer ÷ greenhack of medians: above 1.0, greenhack is faster
//! (the target is ≥ 1.0). The table is printed and written to
//! `target/bench-sync.md` (and `.json`). `GREENHACK_BENCH_ONLY=<side>`
//! (greenhack, tokio, may) measures that side alone and prints no table: a
//! clean profile for `perf record`.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

mod common;
use common::{Args, Case, Runner, cell, ratio, sum_below};

/// The sides, in column order.
const SIDES: [&str; 3] = ["greenhack", "tokio", "may"];

/// Contenders in the contended mutex case.
const CONTENDERS: u64 = 1000;

/// Fewest ops per sample: every contender gets at least 10.
const MIN_OPS: u64 = 10 * CONTENDERS;

/// Splits `n` ops over `CONTENDERS`: how many the `i`th does.
fn share(n: u64, i: u64) -> u64 {
    n / CONTENDERS + u64::from(i < n % CONTENDERS)
}

fn tokio_rt() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------
// ping-pong

fn gh_ping_pong() -> Runner {
    Box::new(|n| {
        use greenhack::sync::mpsc;
        let (to_b, b_rx) = mpsc::channel::<u64>();
        let (to_a, a_rx) = mpsc::channel::<u64>();
        let echo = greenhack::spawn(move || {
            for v in b_rx.iter() {
                to_a.send(v + 1).unwrap();
            }
        });
        let timer = greenhack::spawn(move || {
            let start = Instant::now();
            let mut x = 0;
            for _ in 0..n {
                to_b.send(x).unwrap();
                x = a_rx.recv().unwrap();
            }
            let t = start.elapsed();
            assert_eq!(x, n);
            t
        });
        let t = timer.join().unwrap();
        echo.join().unwrap();
        t
    })
}

fn tokio_ping_pong() -> Runner {
    let rt = tokio_rt();
    Box::new(move |n| {
        rt.block_on(async move {
            use tokio::sync::mpsc;
            let (to_b, mut b_rx) = mpsc::unbounded_channel::<u64>();
            let (to_a, mut a_rx) = mpsc::unbounded_channel::<u64>();
            let echo = tokio::spawn(async move {
                while let Some(v) = b_rx.recv().await {
                    to_a.send(v + 1).unwrap();
                }
            });
            let timer = tokio::spawn(async move {
                let start = Instant::now();
                let mut x = 0;
                for _ in 0..n {
                    to_b.send(x).unwrap();
                    x = a_rx.recv().await.unwrap();
                }
                let t = start.elapsed();
                assert_eq!(x, n);
                t
            });
            let t = timer.await.unwrap();
            echo.await.unwrap();
            t
        })
    })
}

fn may_ping_pong() -> Runner {
    Box::new(|n| {
        use may::sync::mpsc;
        let (to_b, b_rx) = mpsc::channel::<u64>();
        let (to_a, a_rx) = mpsc::channel::<u64>();
        let echo = may::go!(move || {
            for v in b_rx.iter() {
                to_a.send(v + 1).unwrap();
            }
        });
        let timer = may::go!(move || {
            let start = Instant::now();
            let mut x = 0;
            for _ in 0..n {
                to_b.send(x).unwrap();
                x = a_rx.recv().unwrap();
            }
            let t = start.elapsed();
            assert_eq!(x, n);
            t
        });
        let t = timer.join().unwrap();
        echo.join().unwrap();
        t
    })
}

// ---------------------------------------------------------------------------
// one-way

fn gh_one_way(bound: Option<usize>) -> Runner {
    Box::new(move |n| {
        use greenhack::sync::mpsc;
        let start = Rc::new(Cell::new(None));
        let s = start.clone();
        let (consumer, producer) = match bound {
            None => {
                let (tx, rx) = mpsc::channel::<u64>();
                let c = greenhack::spawn(move || (rx.iter().sum::<u64>(), Instant::now()));
                let p = greenhack::spawn(move || {
                    s.set(Some(Instant::now()));
                    (0..n).for_each(|i| tx.send(i).unwrap());
                });
                (c, p)
            }
            Some(b) => {
                let (tx, rx) = mpsc::sync_channel::<u64>(b);
                let c = greenhack::spawn(move || (rx.iter().sum::<u64>(), Instant::now()));
                let p = greenhack::spawn(move || {
                    s.set(Some(Instant::now()));
                    (0..n).for_each(|i| tx.send(i).unwrap());
                });
                (c, p)
            }
        };
        producer.join().unwrap();
        let (sum, end) = consumer.join().unwrap();
        assert_eq!(sum, sum_below(n));
        end - start.get().unwrap()
    })
}

fn tokio_one_way(rt: Runtime, bound: Option<usize>) -> Runner {
    Box::new(move |n| {
        rt.block_on(async move {
            use tokio::sync::mpsc;
            let (consumer, producer) = match bound {
                None => {
                    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
                    let c = tokio::spawn(async move {
                        let mut sum = 0u64;
                        while let Some(v) = rx.recv().await {
                            sum = sum.wrapping_add(v);
                        }
                        (sum, Instant::now())
                    });
                    let p = tokio::spawn(async move {
                        let start = Instant::now();
                        (0..n).for_each(|i| tx.send(i).unwrap());
                        start
                    });
                    (c, p)
                }
                Some(b) => {
                    let (tx, mut rx) = mpsc::channel::<u64>(b);
                    let c = tokio::spawn(async move {
                        let mut sum = 0u64;
                        while let Some(v) = rx.recv().await {
                            sum = sum.wrapping_add(v);
                        }
                        (sum, Instant::now())
                    });
                    let p = tokio::spawn(async move {
                        let start = Instant::now();
                        for i in 0..n {
                            tx.send(i).await.unwrap();
                        }
                        start
                    });
                    (c, p)
                }
            };
            let start = producer.await.unwrap();
            let (sum, end) = consumer.await.unwrap();
            assert_eq!(sum, sum_below(n));
            end - start
        })
    })
}

fn may_one_way() -> Runner {
    Box::new(|n| {
        use may::sync::mpsc;
        let (tx, rx) = mpsc::channel::<u64>();
        let consumer = may::go!(move || (rx.iter().sum::<u64>(), Instant::now()));
        let producer = may::go!(move || {
            let start = Instant::now();
            (0..n).for_each(|i| tx.send(i).unwrap());
            start
        });
        let start = producer.join().unwrap();
        let (sum, end) = consumer.join().unwrap();
        assert_eq!(sum, sum_below(n));
        end - start
    })
}

// ---------------------------------------------------------------------------
// mutex, uncontended

fn gh_mutex_uncontended() -> Runner {
    Box::new(|n| {
        greenhack::spawn(move || {
            let m = greenhack::sync::Mutex::new(0u64);
            let start = Instant::now();
            for _ in 0..n {
                *m.lock().unwrap() += 1;
            }
            let t = start.elapsed();
            assert_eq!(m.into_inner().unwrap(), n);
            t
        })
        .join()
        .unwrap()
    })
}

fn tokio_mutex_uncontended() -> Runner {
    let rt = tokio_rt();
    Box::new(move |n| {
        rt.block_on(async move {
            tokio::spawn(async move {
                let m = tokio::sync::Mutex::new(0u64);
                let start = Instant::now();
                for _ in 0..n {
                    *m.lock().await += 1;
                }
                let t = start.elapsed();
                assert_eq!(m.into_inner(), n);
                t
            })
            .await
            .unwrap()
        })
    })
}

fn may_mutex_uncontended() -> Runner {
    Box::new(|n| {
        may::go!(move || {
            let m = may::sync::Mutex::new(0u64);
            let start = Instant::now();
            for _ in 0..n {
                *m.lock().unwrap() += 1;
            }
            let t = start.elapsed();
            assert_eq!(m.into_inner().unwrap(), n);
            t
        })
        .join()
        .unwrap()
    })
}

// ---------------------------------------------------------------------------
// mutex, 1000-way

/// The timed span of a contended run, shared by the contenders: from the
/// arrival of the last contender (when every one has run once, so the
/// first touch of each stack or task is not timed) to the end of the last.
#[derive(Default)]
struct Span {
    arrived: std::sync::Mutex<u64>,
    start: std::sync::Mutex<Option<Instant>>,
    end: std::sync::Mutex<Option<Instant>>,
}

impl Span {
    fn begin(&self) {
        let mut arrived = self.arrived.lock().unwrap();
        *arrived += 1;
        if *arrived == CONTENDERS {
            *self.start.lock().unwrap() = Some(Instant::now());
        }
    }

    fn finish(&self) {
        *self.end.lock().unwrap() = Some(Instant::now());
    }

    fn elapsed(&self) -> Duration {
        self.end.lock().unwrap().unwrap() - self.start.lock().unwrap().unwrap()
    }
}

fn gh_mutex_contended() -> Runner {
    Box::new(|n| {
        let m = Rc::new(greenhack::sync::Mutex::new(0u64));
        let span = Rc::new(Span::default());
        let handles: Vec<_> = (0..CONTENDERS)
            .map(|i| {
                let (m, span) = (m.clone(), span.clone());
                greenhack::spawn(move || {
                    span.begin();
                    for _ in 0..share(n, i) {
                        let mut g = m.lock().unwrap();
                        greenhack::yield_now();
                        *g += 1;
                    }
                    span.finish();
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(*m.lock().unwrap(), n);
        span.elapsed()
    })
}

fn tokio_mutex_contended() -> Runner {
    let rt = tokio_rt();
    Box::new(move |n| {
        rt.block_on(async move {
            let m = Arc::new(tokio::sync::Mutex::new(0u64));
            let span = Arc::new(Span::default());
            let handles: Vec<_> = (0..CONTENDERS)
                .map(|i| {
                    let (m, span) = (m.clone(), span.clone());
                    tokio::spawn(async move {
                        span.begin();
                        for _ in 0..share(n, i) {
                            let mut g = m.lock().await;
                            tokio::task::yield_now().await;
                            *g += 1;
                        }
                        span.finish();
                    })
                })
                .collect();
            for h in handles {
                h.await.unwrap();
            }
            assert_eq!(*m.lock().await, n);
            span.elapsed()
        })
    })
}

fn may_mutex_contended() -> Runner {
    Box::new(|n| {
        // Spawned from a coroutine, so that none runs before all exist (as
        // on the other sides).
        may::go!(move || {
            let m = Arc::new(may::sync::Mutex::new(0u64));
            let span = Arc::new(Span::default());
            let handles: Vec<_> = (0..CONTENDERS)
                .map(|i| {
                    let (m, span) = (m.clone(), span.clone());
                    may::go!(move || {
                        span.begin();
                        for _ in 0..share(n, i) {
                            let mut g = m.lock().unwrap();
                            may::coroutine::yield_now();
                            *g += 1;
                        }
                        span.finish();
                    })
                })
                .collect();
            handles.into_iter().for_each(|h| h.join().unwrap());
            assert_eq!(*m.lock().unwrap(), n);
            span.elapsed()
        })
        .join()
        .unwrap()
    })
}

fn main() {
    let mut args = Args::from_env();
    args.cfg.min_ops = MIN_OPS;
    may::config().set_workers(1);
    greenhack::stack::set_pool_capacity(1024);

    let cases = vec![
        Case::new(
            "ping-pong",
            SIDES,
            [
                Some(gh_ping_pong()),
                Some(tokio_ping_pong()),
                Some(may_ping_pong()),
            ],
        ),
        Case::new(
            "one-way, unbounded",
            SIDES,
            [
                Some(gh_one_way(None)),
                Some(tokio_one_way(tokio_rt(), None)),
                Some(may_one_way()),
            ],
        ),
        Case::new(
            "one-way, bounded 64",
            SIDES,
            [
                Some(gh_one_way(Some(64))),
                Some(tokio_one_way(tokio_rt(), Some(64))),
                None,
            ],
        ),
        Case::new(
            "mutex, uncontended",
            SIDES,
            [
                Some(gh_mutex_uncontended()),
                Some(tokio_mutex_uncontended()),
                Some(may_mutex_uncontended()),
            ],
        ),
        Case::new(
            "mutex, 1000-way",
            SIDES,
            [
                Some(gh_mutex_contended()),
                Some(tokio_mutex_contended()),
                Some(may_mutex_contended()),
            ],
        ),
    ];
    let only = match std::env::var("GREENHACK_BENCH_ONLY") {
        Ok(side) if !side.is_empty() => match SIDES.iter().position(|s| *s == side) {
            Some(k) => Some(k),
            None => {
                eprintln!("GREENHACK_BENCH_ONLY={side}: no such side; sides: {SIDES:?}");
                return;
            }
        },
        _ => None,
    };
    let Some(mut selected) = args.select(cases, &[]) else {
        return;
    };
    if let Some(o) = only {
        // A profiling run: drop the other sides' runners (and runtimes).
        for case in &mut selected {
            for (k, (_, r)) in case.sides.iter_mut().enumerate() {
                if k != o {
                    *r = None;
                }
            }
        }
    }
    let results = common::run_cases(selected, &args.cfg);
    if only.is_some() {
        return;
    }

    let mut md = String::new();
    md.push_str("## greenhack::sync vs tokio::sync vs may::sync\n\n");
    md.push_str(&format!(
        "{}: tokio ÷ greenhack and may ÷ greenhack (above 1.0, greenhack is faster; \
         target ≥ 1.0).\n\n",
        args.preamble("op"),
    ));
    md.push_str("| case | greenhack ns | tokio ns | may ns | tokio/greenhack | may/greenhack |\n");
    md.push_str("|---|---|---|---|---|---|\n");
    let mut misses = Vec::new();
    let mut records = Vec::new();
    for r in &results {
        let [gh, tk, my] = [0, 1, 2].map(|k| r.summaries[k]);
        let gh = gh.expect("greenhack always runs");
        let speedup = |peer: Option<common::Summary>| peer.map(|p| p.median / gh.median);
        let (r_tk, r_my) = (speedup(tk), speedup(my));
        let show = |r: Option<f64>| r.map_or_else(|| "—".to_string(), |r| format!("{}×", ratio(r)));
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.name,
            cell(Some(&gh)),
            cell(tk.as_ref()),
            cell(my.as_ref()),
            show(r_tk),
            show(r_my),
        ));
        for (peer, rr) in [("tokio", r_tk), ("may", r_my)] {
            if let Some(rr) = rr.filter(|&rr| rr < 1.0) {
                misses.push(format!("{}: {peer}/greenhack {} < 1.0", r.name, ratio(rr)));
            }
        }
        let mut peers = Vec::new();
        if let Some(t) = tk {
            peers.push(("tokio", t.median));
        }
        if let Some(m) = my {
            peers.push(("may", m.median));
        }
        records.push(common::json_record("sync", r.name, gh.median, &peers));
    }
    md.push('\n');
    if misses.is_empty() {
        md.push_str("Target met in every case.\n");
    } else {
        md.push_str("Targets missed:\n\n");
        for m in misses {
            md.push_str(&format!("- {m}\n"));
        }
    }
    println!("\n{md}");

    if args.bench_mode {
        common::write_report("sync", &md, &records);
    }
}
