//! Bridge benchmark: the cost of "sync code waits on a future", greenhack's
//! `as_async` + `exempt` against the other ways of doing it, measured in the
//! same run.
//!
//! ```text
//! cargo bench --bench bridge            # every case
//! cargo bench --bench bridge -- ready   # cases whose name contains "ready"
//! GREENHACK_BENCH_QUICK=1 cargo bench --bench bridge   # smoke run (CI)
//! GREENHACK_BENCH_ONLY=greenhack cargo bench --bench bridge  # one side, to profile
//! ```
//!
//! # The futures
//!
//! One operation is one wait of sync code on a future made from a
//! `black_box`ed index `i` (whose output is `i`, summed and checked):
//!
//! * **ready** — `std::future::ready(black_box(i))`: ready on its first poll.
//!   The fast path of every bridge: what it costs to poll a future from sync
//!   code when nothing has to wait.
//! * **pending once** — a future that, on its first poll, calls
//!   `cx.waker().wake_by_ref()` and returns `Pending`, and is `Ready` on the
//!   second. Every wait is a real round trip through the executor: the
//!   bridge gives up (suspends its stack, or parks its thread), the executor
//!   sees the wake and polls again, the bridge resumes and polls the future a
//!   second time. The wake comes from the waiting thread itself, so a parked
//!   thread (block_in_place) finds its wake-up already posted and never
//!   sleeps in the kernel.
//!
//! # The cases
//!
//! * **ready**, **pending once** — the sync side runs a loop of n waits
//!   inside *one* bridge entry: one `as_async` (one `stackful`, one
//!   `block_in_place`) per sample, timed as a whole, n calibrated so that a
//!   sample lasts ~3 ms and at least 1000. Creating the greenlet (a stack
//!   from greenhack's per-thread pool; stackful boxes its closure and takes
//!   its cached stack) and entering `block_on` are inside the timing but
//!   once per sample, shared by hundreds of thousands of waits (*ready*) or
//!   tens of thousands (*pending once*): negligible. These are the costs of
//!   a wait deep inside long-running sync code.
//! * **enter + ready**, **enter + pending once** — one bridge entry *per
//!   wait*: async code calls a sync function that waits once and returns
//!   (`as_async(move || exempt(fut(i))).await`), then yields to the
//!   executor (`tokio::task::yield_now().await`), n times; every side,
//!   including the async floor, does the same yield. Here creating the
//!   greenlet is the point and is timed. The yield matters for
//!   block_in_place: it hands its worker's core to a new blocking-pool
//!   thread (`spawn_blocking`) and takes it back only if that thread has not
//!   started yet, so a task that calls it many times in one poll pays the
//!   hand-off only once (and then runs without a core); a task that calls it
//!   once per poll, as a request handler does, pays it every time.
//!
//! # The implementations (the columns)
//!
//! * **greenhack** — `rt.block_on(as_async(move || { for i in 0..n { acc +=
//!   exempt(fut(i)) } acc }))` on a tokio current-thread runtime: sync code
//!   on a greenlet, each `exempt` polling the future in place with the
//!   poller's `Context` and suspending the greenlet (the `AsAsync` poll
//!   returns `Pending`) while it is pending.
//! * **stackful** — the `stackful` crate (0.1.5), the same shape:
//!   `rt.block_on(stackful::stackful(move || ... stackful::wait(fut(i))
//!   ...))` on the same kind of runtime. Its switch also saves and restores
//!   MXCSR and the x87 control word, which greenhack does only with the
//!   `fp-control` feature.
//! * **block_in_place** — the usual answer without a stackful coroutine: a
//!   tokio multi-thread runtime (2 workers) and a spawned task that runs
//!   `tokio::task::block_in_place(|| for i in 0..n { acc +=
//!   Handle::current().block_on(fut(i)) })`. Each wait enters the runtime
//!   context and blocks the thread on a parker. `Handle::current()` is looked
//!   up per wait, as a sync helper without a handle passed down would
//!   (greenhack's `exempt` likewise finds its pair in a thread-local per
//!   wait). The clock runs inside the spawned task (spawning and joining it
//!   is not timed).
//! * **async** — the same loop as plain async/await, `rt.block_on(async move
//!   { for i in 0..n { acc += fut(i).await } acc })` on a current-thread
//!   runtime: the floor, the wait with no bridge at all. For *ready* the
//!   compiler sees straight through it (an add per wait); for *pending once*
//!   it is the executor's own wake and re-poll.
//!
//! The ratios are greenhack ÷ stackful (target ≤ 1.0), greenhack ÷
//! block_in_place (target ≤ 0.1) and greenhack ÷ async (greenhack's overhead
//! over no bridge at all), all of medians. The report lists the targets
//! missed.
//!
//! The runtimes are built once, before any measurement. The current-thread
//! runtimes have neither the I/O nor the time driver enabled, so a wake is
//! the scheduler's flag and a parker's atomic, never an `epoll_wait`: what
//! is left is the bridge.
//!
//! # Harness
//!
//! Our own, small (`harness = false`), shared with `benches/switch.rs` in
//! `benches/common/mod.rs`. Each side is warmed up and calibrated to its own
//! n, then S samples (31) are taken, the four sides interleaved sample by
//! sample with the order rotated every sample, so that drift on a noisy
//! machine hits all alike. Nothing is pinned. Each cell reports the median ns
//! per wait, the minimum and the p25–p75 spread over samples.
//!
//! The table is printed and written to `target/bench-bridge.md`.
//! `GREENHACK_BENCH_QUICK=1` takes 5 short samples. Run without `--bench`
//! (`cargo test --benches`), the binary does a minimal smoke run and writes
//! nothing. Unknown `--flags` are ignored; a positional word keeps only the
//! cases whose name contains it. `GREENHACK_BENCH_ONLY=<side>` (greenhack,
//! stackful, block_in_place, async) measures that side alone and prints no
//! table: a clean profile for `perf record`.

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::runtime::{Builder, Handle, Runtime};

mod common;
use common::{Args, Case, Runner, cell, ratio};

/// The sides, in column order.
const SIDES: [&str; 4] = ["greenhack", "stackful", "block_in_place", "async"];

/// Fewest waits per sample, so that one greenlet creation per sample stays
/// negligible whatever the calibration says.
const MIN_WAITS: u64 = 1000;

// ---------------------------------------------------------------------------
// the futures

/// Pending on its first poll (after waking its own task), ready with `v` on
/// the second.
struct PendingOnce {
    v: u64,
    polled: bool,
}

impl Future for PendingOnce {
    type Output = u64;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        if self.polled {
            Poll::Ready(self.v)
        } else {
            self.polled = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

fn ready_fut(i: u64) -> std::future::Ready<u64> {
    std::future::ready(black_box(i))
}

fn pending_once(i: u64) -> PendingOnce {
    PendingOnce {
        v: black_box(i),
        polled: false,
    }
}

// ---------------------------------------------------------------------------
// the sides

fn current_thread() -> Runtime {
    Builder::new_current_thread()
        .build()
        .expect("building a current-thread runtime")
}

fn multi_thread() -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("building a multi-thread runtime")
}

fn greenhack<F, M>(mk: M) -> Runner
where
    M: Fn(u64) -> F + Copy + 'static,
    F: Future<Output = u64>,
{
    let rt = current_thread();
    Box::new(move |n| {
        timed_sum(
            &rt,
            n,
            greenhack::as_async(move || {
                let mut acc = 0u64;
                for i in 0..n {
                    acc = acc.wrapping_add(greenhack::exempt(mk(i)));
                }
                acc
            }),
        )
    })
}

fn stackful<F, M>(mk: M) -> Runner
where
    M: Fn(u64) -> F + Copy + 'static,
    F: Future<Output = u64>,
{
    let rt = current_thread();
    Box::new(move |n| {
        timed_sum(
            &rt,
            n,
            stackful::stackful(move || {
                let mut acc = 0u64;
                for i in 0..n {
                    acc = acc.wrapping_add(stackful::wait(mk(i)));
                }
                acc
            }),
        )
    })
}

fn block_in_place<F, M>(mk: M) -> Runner
where
    M: Fn(u64) -> F + Copy + Send + 'static,
    F: Future<Output = u64>,
{
    let rt = multi_thread();
    Box::new(move |n| {
        timed_sum_in_task(&rt, n, async move {
            tokio::task::block_in_place(|| {
                let mut acc = 0u64;
                for i in 0..n {
                    acc = acc.wrapping_add(Handle::current().block_on(mk(i)));
                }
                acc
            })
        })
    })
}

fn plain_async<F, M>(mk: M) -> Runner
where
    M: Fn(u64) -> F + Copy + 'static,
    F: Future<Output = u64>,
{
    let rt = current_thread();
    Box::new(move |n| {
        timed_sum(&rt, n, async move {
            let mut acc = 0u64;
            for i in 0..n {
                acc = acc.wrapping_add(mk(i).await);
            }
            acc
        })
    })
}

// ---------------------------------------------------------------------------
// the sides, one bridge entry per wait (the "enter" cases)

fn greenhack_enter<F, M>(mk: M) -> Runner
where
    M: Fn(u64) -> F + Copy + 'static,
    F: Future<Output = u64> + 'static,
{
    let rt = current_thread();
    Box::new(move |n| {
        timed_sum(&rt, n, async move {
            let mut acc = 0u64;
            for i in 0..n {
                let v = greenhack::as_async(move || greenhack::exempt(mk(i))).await;
                acc = acc.wrapping_add(v);
                tokio::task::yield_now().await;
            }
            acc
        })
    })
}

fn stackful_enter<F, M>(mk: M) -> Runner
where
    M: Fn(u64) -> F + Copy + 'static,
    F: Future<Output = u64>,
{
    let rt = current_thread();
    Box::new(move |n| {
        timed_sum(&rt, n, async move {
            let mut acc = 0u64;
            for i in 0..n {
                let v = stackful::stackful(move || stackful::wait(mk(i))).await;
                acc = acc.wrapping_add(v);
                tokio::task::yield_now().await;
            }
            acc
        })
    })
}

fn block_in_place_enter<F, M>(mk: M) -> Runner
where
    M: Fn(u64) -> F + Copy + Send + 'static,
    F: Future<Output = u64>,
{
    let rt = multi_thread();
    Box::new(move |n| {
        timed_sum_in_task(&rt, n, async move {
            let mut acc = 0u64;
            for i in 0..n {
                let v = tokio::task::block_in_place(|| Handle::current().block_on(mk(i)));
                acc = acc.wrapping_add(v);
                tokio::task::yield_now().await;
            }
            acc
        })
    })
}

/// Runs `sum`, n waits adding up their outputs, to completion on `rt`;
/// returns how long it took, its result checked.
fn timed_sum(rt: &Runtime, n: u64, sum: impl Future<Output = u64>) -> Duration {
    let start = Instant::now();
    let acc = rt.block_on(sum);
    let t = start.elapsed();
    check(acc, n);
    t
}

/// `timed_sum` inside a task spawned on `rt`'s workers (where
/// `block_in_place` may run), timed from within the task.
fn timed_sum_in_task(
    rt: &Runtime,
    n: u64,
    sum: impl Future<Output = u64> + Send + 'static,
) -> Duration {
    let (t, acc) = rt.block_on(async move {
        tokio::spawn(async move {
            let start = Instant::now();
            let acc = sum.await;
            (start.elapsed(), acc)
        })
        .await
        .expect("the block_in_place task panicked")
    });
    check(acc, n);
    t
}

/// Every side must have summed 0..n: the waits really happened.
fn check(acc: u64, n: u64) {
    assert_eq!(
        black_box(acc),
        common::sum_below(n),
        "wrong sum of {n} waits"
    );
}

fn sides<F, M>(mk: M) -> [Option<Runner>; 4]
where
    M: Fn(u64) -> F + Copy + Send + 'static,
    F: Future<Output = u64>,
{
    [
        Some(greenhack(mk)),
        Some(stackful(mk)),
        Some(block_in_place(mk)),
        Some(plain_async(mk)),
    ]
}

fn plain_async_enter<F, M>(mk: M) -> Runner
where
    M: Fn(u64) -> F + Copy + 'static,
    F: Future<Output = u64>,
{
    let rt = current_thread();
    Box::new(move |n| {
        timed_sum(&rt, n, async move {
            let mut acc = 0u64;
            for i in 0..n {
                acc = acc.wrapping_add(mk(i).await);
                tokio::task::yield_now().await;
            }
            acc
        })
    })
}

fn enter_sides<F, M>(mk: M) -> [Option<Runner>; 4]
where
    M: Fn(u64) -> F + Copy + Send + 'static,
    F: Future<Output = u64> + 'static,
{
    [
        Some(greenhack_enter(mk)),
        Some(stackful_enter(mk)),
        Some(block_in_place_enter(mk)),
        Some(plain_async_enter(mk)),
    ]
}

// ---------------------------------------------------------------------------
// main

fn main() {
    let mut args = Args::from_env();
    args.cfg.min_ops = MIN_WAITS;
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

    let cases = vec![
        Case::new("ready", SIDES, sides(ready_fut)),
        Case::new("pending once", SIDES, sides(pending_once)),
        Case::new("enter + ready", SIDES, enter_sides(ready_fut)),
        Case::new("enter + pending once", SIDES, enter_sides(pending_once)),
    ];
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
        // A profiling run: no table to compare.
        return;
    }

    let mut md = String::new();
    md.push_str("## greenhack vs stackful vs block_in_place: sync code waiting on a future\n\n");
    md.push_str(&format!(
        "{}. Targets: greenhack/stackful ≤ 1.0, greenhack/block_in_place ≤ 0.1.\n\n",
        args.preamble("wait"),
    ));
    md.push_str(
        "| case | greenhack ns | stackful ns | block_in_place ns | async ns \
         | greenhack/stackful | greenhack/block_in_place | greenhack/async |\n",
    );
    md.push_str("|---|---|---|---|---|---|---|---|\n");
    let mut misses = Vec::new();
    let mut records = Vec::new();
    for r in &results {
        let [gh, sf, bip, asy] = [0, 1, 2, 3].map(|k| r.summaries[k].expect("every side ran"));
        let name = r.name;
        let (r_sf, r_bip, r_asy) = (
            gh.median / sf.median,
            gh.median / bip.median,
            gh.median / asy.median,
        );
        md.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {}× |\n",
            cell(Some(&gh)),
            cell(Some(&sf)),
            cell(Some(&bip)),
            cell(Some(&asy)),
            ratio(r_sf),
            ratio(r_bip),
            ratio(r_asy),
        ));
        if r_sf > 1.0 {
            misses.push(format!("{name}: greenhack/stackful {} > 1.0", ratio(r_sf)));
        }
        if r_bip > 0.1 {
            misses.push(format!(
                "{name}: greenhack/block_in_place {} > 0.1",
                ratio(r_bip)
            ));
        }
        // The same figures for scripts/bench-report: ns per wait.
        records.push(common::json_record(
            "exempt",
            name,
            gh.median,
            &[
                ("stackful", sf.median),
                ("block_in_place", bip.median),
                ("plain async", asy.median),
            ],
        ));
    }
    md.push('\n');
    if misses.is_empty() {
        md.push_str("Both targets met in every case.\n");
    } else {
        md.push_str("Targets missed:\n\n");
        for m in misses {
            md.push_str(&format!("- {m}\n"));
        }
    }
    println!("\n{md}");

    if args.bench_mode {
        common::write_report("bridge", &md, &records);
    }
}
