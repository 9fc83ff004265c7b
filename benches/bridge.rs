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
//! Our own, small (`harness = false`), as in `benches/switch.rs`. Each side is
//! warmed up and calibrated to its own n, then S samples (31) are taken,
//! the four sides interleaved sample by sample with the order rotated every
//! sample, so that drift on a noisy machine hits all alike. Nothing is
//! pinned. Each cell reports the median ns per wait, the minimum and the
//! p25–p75 spread over samples.
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

/// One side of a case: runs `n` waits and returns how long they took.
type Runner = Box<dyn FnMut(u64) -> Duration>;

/// The sides, in column order.
const SIDES: [&str; 4] = ["greenhack", "stackful", "block_in_place", "async"];

struct Case {
    name: &'static str,
    sides: [Runner; 4],
}

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
        let start = Instant::now();
        let acc = rt.block_on(greenhack::as_async(move || {
            let mut acc = 0u64;
            for i in 0..n {
                acc = acc.wrapping_add(greenhack::exempt(mk(i)));
            }
            acc
        }));
        let t = start.elapsed();
        check(acc, n);
        t
    })
}

fn stackful<F, M>(mk: M) -> Runner
where
    M: Fn(u64) -> F + Copy + 'static,
    F: Future<Output = u64>,
{
    let rt = current_thread();
    Box::new(move |n| {
        let start = Instant::now();
        let acc = rt.block_on(stackful::stackful(move || {
            let mut acc = 0u64;
            for i in 0..n {
                acc = acc.wrapping_add(stackful::wait(mk(i)));
            }
            acc
        }));
        let t = start.elapsed();
        check(acc, n);
        t
    })
}

fn block_in_place<F, M>(mk: M) -> Runner
where
    M: Fn(u64) -> F + Copy + Send + 'static,
    F: Future<Output = u64>,
{
    let rt = multi_thread();
    Box::new(move |n| {
        let (t, acc) = rt.block_on(async move {
            tokio::spawn(async move {
                let start = Instant::now();
                let acc = tokio::task::block_in_place(|| {
                    let mut acc = 0u64;
                    for i in 0..n {
                        acc = acc.wrapping_add(Handle::current().block_on(mk(i)));
                    }
                    acc
                });
                (start.elapsed(), acc)
            })
            .await
            .expect("the block_in_place task panicked")
        });
        check(acc, n);
        t
    })
}

fn plain_async<F, M>(mk: M) -> Runner
where
    M: Fn(u64) -> F + Copy + 'static,
    F: Future<Output = u64>,
{
    let rt = current_thread();
    Box::new(move |n| {
        let start = Instant::now();
        let acc = rt.block_on(async move {
            let mut acc = 0u64;
            for i in 0..n {
                acc = acc.wrapping_add(mk(i).await);
            }
            acc
        });
        let t = start.elapsed();
        check(acc, n);
        t
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
        let start = Instant::now();
        let acc = rt.block_on(async move {
            let mut acc = 0u64;
            for i in 0..n {
                let v = greenhack::as_async(move || greenhack::exempt(mk(i))).await;
                acc = acc.wrapping_add(v);
                tokio::task::yield_now().await;
            }
            acc
        });
        let t = start.elapsed();
        check(acc, n);
        t
    })
}

fn stackful_enter<F, M>(mk: M) -> Runner
where
    M: Fn(u64) -> F + Copy + 'static,
    F: Future<Output = u64>,
{
    let rt = current_thread();
    Box::new(move |n| {
        let start = Instant::now();
        let acc = rt.block_on(async move {
            let mut acc = 0u64;
            for i in 0..n {
                let v = stackful::stackful(move || stackful::wait(mk(i))).await;
                acc = acc.wrapping_add(v);
                tokio::task::yield_now().await;
            }
            acc
        });
        let t = start.elapsed();
        check(acc, n);
        t
    })
}

fn block_in_place_enter<F, M>(mk: M) -> Runner
where
    M: Fn(u64) -> F + Copy + Send + 'static,
    F: Future<Output = u64>,
{
    let rt = multi_thread();
    Box::new(move |n| {
        let (t, acc) = rt.block_on(async move {
            tokio::spawn(async move {
                let start = Instant::now();
                let mut acc = 0u64;
                for i in 0..n {
                    let v = tokio::task::block_in_place(|| Handle::current().block_on(mk(i)));
                    acc = acc.wrapping_add(v);
                    tokio::task::yield_now().await;
                }
                (start.elapsed(), acc)
            })
            .await
            .expect("the block_in_place task panicked")
        });
        check(acc, n);
        t
    })
}

/// Every side must have summed 0..n: the waits really happened.
fn check(acc: u64, n: u64) {
    let want = if n == 0 {
        0
    } else {
        (n as u128 * (n as u128 - 1) / 2) as u64
    };
    assert_eq!(black_box(acc), want, "wrong sum of {n} waits");
}

fn sides<F, M>(mk: M) -> [Runner; 4]
where
    M: Fn(u64) -> F + Copy + Send + 'static,
    F: Future<Output = u64>,
{
    [
        greenhack(mk),
        stackful(mk),
        block_in_place(mk),
        plain_async(mk),
    ]
}

fn plain_async_enter<F, M>(mk: M) -> Runner
where
    M: Fn(u64) -> F + Copy + 'static,
    F: Future<Output = u64>,
{
    let rt = current_thread();
    Box::new(move |n| {
        let start = Instant::now();
        let acc = rt.block_on(async move {
            let mut acc = 0u64;
            for i in 0..n {
                acc = acc.wrapping_add(mk(i).await);
                tokio::task::yield_now().await;
            }
            acc
        });
        let t = start.elapsed();
        check(acc, n);
        t
    })
}

fn enter_sides<F, M>(mk: M) -> [Runner; 4]
where
    M: Fn(u64) -> F + Copy + Send + 'static,
    F: Future<Output = u64> + 'static,
{
    [
        greenhack_enter(mk),
        stackful_enter(mk),
        block_in_place_enter(mk),
        plain_async_enter(mk),
    ]
}

// ---------------------------------------------------------------------------
// harness

struct Config {
    samples: usize,
    sample_time: Duration,
    warmup: Duration,
    label: &'static str,
}

/// Distribution of ns per wait over samples.
#[derive(Clone, Copy)]
struct Summary {
    median: f64,
    min: f64,
    p25: f64,
    p75: f64,
}

fn summarize(ns: &[f64]) -> Summary {
    let mut v = ns.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Summary {
        median: at(0.5),
        min: v[0],
        p25: at(0.25),
        p75: at(0.75),
    }
}

/// Warms `run` up for about `cfg.warmup` and returns the number of waits
/// that makes one sample last about `cfg.sample_time` (at least
/// [`MIN_WAITS`]).
fn calibrate(run: &mut Runner, cfg: &Config) -> u64 {
    let start = Instant::now();
    let mut n = 1u64;
    let mut per_op;
    loop {
        let t = run(n);
        per_op = t.as_secs_f64() / n as f64;
        if t >= cfg.sample_time / 4 || n >= 1 << 40 {
            break;
        }
        n *= 2;
    }
    while start.elapsed() < cfg.warmup {
        per_op = run(n).as_secs_f64() / n as f64;
    }
    ((cfg.sample_time.as_secs_f64() / per_op.max(1e-12)) as u64).max(MIN_WAITS)
}

/// Measures the sides of `case` (only side `only`, if given; the others'
/// summaries are then NaN).
fn measure(case: &mut Case, cfg: &Config, only: Option<usize>) -> [Summary; 4] {
    let run: Vec<usize> = (0..SIDES.len())
        .filter(|&k| only.is_none_or(|o| o == k))
        .collect();
    let mut n = [0u64; 4];
    for &k in &run {
        n[k] = calibrate(&mut case.sides[k], cfg);
    }
    let mut ns: [Vec<f64>; 4] = Default::default();
    for s in 0..cfg.samples {
        // Rotate which side goes first.
        for j in 0..run.len() {
            let k = run[(s + j) % run.len()];
            let t = (case.sides[k])(n[k]);
            ns[k].push(t.as_nanos() as f64 / n[k] as f64);
        }
    }
    ns.map(|v| {
        if v.is_empty() {
            Summary {
                median: f64::NAN,
                min: f64::NAN,
                p25: f64::NAN,
                p75: f64::NAN,
            }
        } else {
            summarize(&v)
        }
    })
}

fn fmt_ns(ns: f64) -> String {
    if ns < 10.0 {
        format!("{ns:.2}")
    } else if ns < 1000.0 {
        format!("{ns:.1}")
    } else {
        format!("{ns:.0}")
    }
}

fn cell(s: &Summary) -> String {
    format!(
        "**{}** (min {}; {}–{})",
        fmt_ns(s.median),
        fmt_ns(s.min),
        fmt_ns(s.p25),
        fmt_ns(s.p75)
    )
}

fn ratio(r: f64) -> String {
    if r < 0.1 {
        format!("{r:.3}")
    } else {
        format!("{r:.2}")
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench_mode = args.iter().any(|a| a == "--bench");
    let filters: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    let quick = std::env::var("GREENHACK_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let cfg = if !bench_mode {
        Config {
            samples: 3,
            sample_time: Duration::from_micros(200),
            warmup: Duration::from_millis(1),
            label: "smoke run (not `--bench`)",
        }
    } else if quick {
        Config {
            samples: 5,
            sample_time: Duration::from_micros(500),
            warmup: Duration::from_millis(10),
            label: "quick run (GREENHACK_BENCH_QUICK)",
        }
    } else {
        Config {
            samples: 31,
            sample_time: Duration::from_millis(3),
            warmup: Duration::from_millis(200),
            label: "full run",
        }
    };
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
    let label = if filters.is_empty() {
        cfg.label.to_string()
    } else {
        format!("{}, filter {filters:?}", cfg.label)
    };

    let cases = vec![
        Case {
            name: "ready",
            sides: sides(ready_fut),
        },
        Case {
            name: "pending once",
            sides: sides(pending_once),
        },
        Case {
            name: "enter + ready",
            sides: enter_sides(ready_fut),
        },
        Case {
            name: "enter + pending once",
            sides: enter_sides(pending_once),
        },
    ];
    let selected: Vec<Case> = cases
        .into_iter()
        .filter(|c| filters.is_empty() || filters.iter().any(|f| c.name.contains(f)))
        .collect();
    if selected.is_empty() {
        eprintln!(
            "no case matches {filters:?}; cases: ready, pending once, enter + ready, \
             enter + pending once"
        );
        return;
    }

    let mut results = Vec::new();
    for mut case in selected {
        eprint!("{:<21} ", case.name);
        let r = measure(&mut case, &cfg, only);
        let line: Vec<String> = SIDES
            .iter()
            .zip(&r)
            .filter(|(_, s)| !s.median.is_nan())
            .map(|(side, s)| format!("{side} {} ns", fmt_ns(s.median)))
            .collect();
        eprintln!("{}", line.join(", "));
        results.push((case.name, r));
    }
    if only.is_some() {
        // A profiling run: no table to compare.
        return;
    }

    let mut md = String::new();
    md.push_str("## greenhack vs stackful vs block_in_place: sync code waiting on a future\n\n");
    md.push_str(&format!(
        "{}, {}: {} samples of ~{:?} per side, sides interleaved; \
         ns per wait: **median** (min; p25–p75). Ratios are of medians. \
         Targets: greenhack/stackful ≤ 1.0, greenhack/block_in_place ≤ 0.1.\n\n",
        std::env::consts::ARCH,
        label,
        cfg.samples,
        cfg.sample_time
    ));
    md.push_str(
        "| case | greenhack ns | stackful ns | block_in_place ns | async ns \
         | greenhack/stackful | greenhack/block_in_place | greenhack/async |\n",
    );
    md.push_str("|---|---|---|---|---|---|---|---|\n");
    let mut misses = Vec::new();
    for (name, [gh, sf, bip, asy]) in &results {
        let (r_sf, r_bip, r_asy) = (
            gh.median / sf.median,
            gh.median / bip.median,
            gh.median / asy.median,
        );
        md.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {}× |\n",
            cell(gh),
            cell(sf),
            cell(bip),
            cell(asy),
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

    if bench_mode {
        let path = report_path();
        match std::fs::write(&path, &md) {
            Ok(()) => eprintln!("written to {}", path.display()),
            Err(e) => eprintln!("could not write {}: {e}", path.display()),
        }
        // The same figures for scripts/bench-report (the schema every bench
        // writes): ns per wait, lower is better.
        let records: Vec<String> = results
            .iter()
            .map(|(name, [gh, sf, bip, asy])| {
                format!(
                    "  {{\"group\": \"exempt\", \"case\": \"{name}\", \"unit\": \"ns\", \
                     \"lower_is_better\": true, \"greenhack\": {:.3}, \"peers\": \
                     {{\"stackful\": {:.3}, \"block_in_place\": {:.3}, \"plain async\": {:.3}}}}}",
                    gh.median, sf.median, bip.median, asy.median
                )
            })
            .collect();
        let json_path = path.with_extension("json");
        if let Err(e) = std::fs::write(&json_path, format!("[\n{}\n]\n", records.join(",\n"))) {
            eprintln!("could not write {}: {e}", json_path.display());
        }
    }
}

/// `target/bench-bridge.md`: the target directory is three levels above this
/// binary (`target/release/deps/bridge-…`), wherever it was configured.
fn report_path() -> std::path::PathBuf {
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let deps = exe.parent()?;
        (deps.file_name()? == "deps").then(|| deps.parent()?.parent().map(|t| t.to_path_buf()))?
    });
    from_exe
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench-bridge.md")
}
