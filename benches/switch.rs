//! Switch benchmark: greenhack's greenlets against corosensei's coroutines,
//! the same shapes measured in the same run.
//!
//! ```text
//! cargo bench --bench switch            # every case
//! cargo bench --bench switch -- create  # cases whose name contains "create"
//! GREENHACK_BENCH_QUICK=1 cargo bench --bench switch   # smoke run (CI)
//! ```
//!
//! # Cases
//!
//! * **flat** — one resume + suspend round trip. The greenlet's body is
//!   `loop { x = s.suspend(x + 1) }` and the resumer calls `resume` in a plain
//!   loop: the bare cost of the two switches and of passing a value each way,
//!   with every branch as predictable as it can be. ns per round trip.
//! * **flat, switch hook set** — the flat case with a no-op
//!   [`set_switch_hook`](greenhack::debug::set_switch_hook) installed: the
//!   cost of a hook when set. Unset, the hook is one relaxed load and a
//!   predicted branch per direction, already inside the **flat** row.
//! * **nested** — the same round trip, but the greenlet suspends from depth 3
//!   of `#[inline(never)]` functions (body loop → `a` → `b` → `c`, which
//!   suspends) and the resumer calls `resume` inside an `#[inline(never)]`
//!   function called from the timing loop: the shape of an I/O wait deep in
//!   synchronous code, which is what greenhack exists for. Here mispredicted
//!   returns dominate: the CPU's return-stack buffer (RSB) holds the return
//!   addresses of whichever stack made the last calls, so after each switch
//!   the returns on the other stack (`c` → `b` → `a` → loop in the greenlet,
//!   back up to the timing loop in the resumer) pop the wrong entries, for
//!   any stackful coroutine. What differs is the switch itself. corosensei's
//!   is a call/ret pair (`call` on resume, `ret` on suspend): in the flat
//!   shape the `ret` pops the entry of the resume's `call` and is predicted,
//!   but from depth 3 it pops the greenlet's own last call and mispredicts
//!   too. greenhack's is jmp/jmp: it never touches the RSB, and its indirect
//!   `jmp`s are predicted by the branch-target predictor at any depth. Every
//!   out-of-line frame between `resume` and the switch adds one more return
//!   on the resume path, and so one more misprediction here. ns per round
//!   trip.
//! * **create pooled** — create + resume to completion + drop, with the stack
//!   reused: greenhack with its per-thread pool on (asserted: no `mmap` in the
//!   timed loop), corosensei by taking the stack back with `into_stack` and
//!   handing it to the next coroutine (the ideal pool: no bookkeeping at all).
//!   ns per greenlet.
//! * **create fresh** — the same with a fresh stack every time: greenhack with
//!   `set_pool_capacity(0)` (asserted: one `mmap` per greenlet), corosensei
//!   with `DefaultStack::new` per coroutine, both with
//!   [`DEFAULT_STACK_SIZE`](greenhack::stack::DEFAULT_STACK_SIZE) usable bytes
//!   above one guard page. Dominated by `mmap`, `mprotect`, `munmap` and page
//!   faults; the report also prints minor page faults per greenlet. ns per
//!   greenlet.
//! * **floor** — an empty `#[inline(never)]` function called in a loop: the
//!   cheapest thing a call can cost on this machine, the unit of the "floor
//!   ratio" column. It is measured twice (in both columns, interleaved like
//!   every other case), so its ratio column shows how much two identical
//!   measurements disagree in this run: the noise level. Always runs.
//!
//! Allocation stays outside the timed loops: the switch cases reuse one
//! greenlet for the whole run, and neither library allocates on the heap to
//! create one.
//!
//! # Harness
//!
//! Our own, small (`harness = false`). For each case, each side is warmed up
//! and calibrated to N iterations per sample (a sample lasts ~3 ms), then S
//! samples (31) are taken, alternating greenhack and corosensei sample by
//! sample (and which goes first), so that drift on a noisy machine hits both
//! alike. Nothing is pinned. Each cell reports the median ns per op, the
//! minimum and the p25–p75 spread over samples; ratios are of medians.
//!
//! The table is printed and written to `target/bench-switch.md`.
//! `GREENHACK_BENCH_QUICK=1` takes 5 short samples. Run without `--bench`
//! (`cargo test --benches`), the binary does a minimal smoke run and writes
//! nothing. Unknown `--flags` are ignored; a positional word keeps only the
//! cases whose name contains it.

use std::hint::black_box;
use std::time::{Duration, Instant};

use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use greenhack::greenlet::{Greenlet, GreenletResult, Suspender};
use greenhack::stack::{self, DEFAULT_STACK_SIZE, POOL_CAPACITY};

/// One side of a case: runs `n` operations and returns how long they took,
/// setup and checks excluded.
type Runner = Box<dyn FnMut(u64) -> Duration>;

struct Case {
    name: &'static str,
    greenhack: Runner,
    corosensei: Runner,
}

// ---------------------------------------------------------------------------
// flat

fn gh_flat_body(s: &Suspender<u64, u64>, mut x: u64) {
    loop {
        x = s.suspend(black_box(x.wrapping_add(1)));
    }
}

fn greenhack_flat() -> Runner {
    let mut g = Greenlet::<u64, u64, ()>::new(gh_flat_body);
    let mut x = 0u64;
    Box::new(move |n| {
        let start = Instant::now();
        for _ in 0..n {
            x = match g.resume(black_box(x)) {
                GreenletResult::Yielded(y) => y,
                GreenletResult::Complete(()) => unreachable!(),
            };
        }
        let t = start.elapsed();
        black_box(x);
        t
    })
}

/// The flat case with a (no-op) switch hook set for the duration of each
/// sample: next to the plain flat row it shows what a set hook costs, and
/// that an unset one costs nothing measurable (the flat row's ratio to
/// corosensei).
fn greenhack_flat_hooked() -> Runner {
    fn no_op(e: greenhack::debug::SwitchEvent<'_>) {
        black_box(e.id);
    }
    let mut flat = greenhack_flat();
    Box::new(move |n| {
        greenhack::debug::set_switch_hook(Some(no_op));
        let t = flat(n);
        greenhack::debug::set_switch_hook(None);
        t
    })
}

fn co_flat_body(y: &Yielder<u64, u64>, mut x: u64) {
    loop {
        x = y.suspend(black_box(x.wrapping_add(1)));
    }
}

fn corosensei_flat() -> Runner {
    let mut co = Coroutine::with_stack(new_coro_stack(), co_flat_body);
    let mut x = 0u64;
    Box::new(move |n| {
        let start = Instant::now();
        for _ in 0..n {
            x = match co.resume(black_box(x)) {
                CoroutineResult::Yield(y) => y,
                CoroutineResult::Return(()) => unreachable!(),
            };
        }
        let t = start.elapsed();
        black_box(x);
        t
    })
}

// ---------------------------------------------------------------------------
// nested: suspend from depth 3, resume from inside a function.
//
// `black_box` around each callee's result keeps the calls from becoming tail
// calls (jumps), so every level really has a frame and a return.

#[inline(never)]
fn gh_a(s: &Suspender<u64, u64>, x: u64) -> u64 {
    black_box(gh_b(s, x.wrapping_add(1)))
}

#[inline(never)]
fn gh_b(s: &Suspender<u64, u64>, x: u64) -> u64 {
    black_box(gh_c(s, x.wrapping_add(1)))
}

#[inline(never)]
fn gh_c(s: &Suspender<u64, u64>, x: u64) -> u64 {
    s.suspend(black_box(x)).wrapping_add(1)
}

#[inline(never)]
fn gh_wait(g: &mut Greenlet<u64, u64, ()>, x: u64) -> u64 {
    match g.resume(x) {
        GreenletResult::Yielded(y) => y,
        GreenletResult::Complete(()) => unreachable!(),
    }
}

fn gh_nested_body(s: &Suspender<u64, u64>, mut x: u64) {
    loop {
        x = gh_a(s, x);
    }
}

fn greenhack_nested() -> Runner {
    let mut g = Greenlet::<u64, u64, ()>::new(gh_nested_body);
    let mut x = 0u64;
    Box::new(move |n| {
        let start = Instant::now();
        for _ in 0..n {
            x = gh_wait(&mut g, black_box(x));
        }
        let t = start.elapsed();
        black_box(x);
        t
    })
}

#[inline(never)]
fn co_a(y: &Yielder<u64, u64>, x: u64) -> u64 {
    black_box(co_b(y, x.wrapping_add(1)))
}

#[inline(never)]
fn co_b(y: &Yielder<u64, u64>, x: u64) -> u64 {
    black_box(co_c(y, x.wrapping_add(1)))
}

#[inline(never)]
fn co_c(y: &Yielder<u64, u64>, x: u64) -> u64 {
    y.suspend(black_box(x)).wrapping_add(1)
}

#[inline(never)]
fn co_wait(co: &mut Coroutine<u64, u64, (), DefaultStack>, x: u64) -> u64 {
    match co.resume(x) {
        CoroutineResult::Yield(y) => y,
        CoroutineResult::Return(()) => unreachable!(),
    }
}

fn co_nested_body(y: &Yielder<u64, u64>, mut x: u64) {
    loop {
        x = co_a(y, x);
    }
}

fn corosensei_nested() -> Runner {
    let mut co = Coroutine::with_stack(new_coro_stack(), co_nested_body);
    let mut x = 0u64;
    Box::new(move |n| {
        let start = Instant::now();
        for _ in 0..n {
            x = co_wait(&mut co, black_box(x));
        }
        let t = start.elapsed();
        black_box(x);
        t
    })
}

// ---------------------------------------------------------------------------
// create + resume to completion + drop

/// One greenhack greenlet's life; returns its result.
#[inline(always)]
fn greenhack_one(i: u64) -> u64 {
    let mut g = Greenlet::<u64, (), u64>::new(|_, x| x.wrapping_add(1));
    match g.resume(black_box(i)) {
        GreenletResult::Complete(r) => r,
        GreenletResult::Yielded(()) => unreachable!(),
    }
}

fn greenhack_create_pooled() -> Runner {
    Box::new(|n| {
        // The fresh case empties the pool; put one stack back first.
        stack::set_pool_capacity(POOL_CAPACITY);
        black_box(greenhack_one(0));
        let before = stack::stats();
        let start = Instant::now();
        for i in 0..n {
            black_box(greenhack_one(i));
        }
        let t = start.elapsed();
        let mmaps = stack::stats().mmaps - before.mmaps;
        assert_eq!(mmaps, 0, "create pooled: the timed loop mapped stacks");
        t
    })
}

fn greenhack_create_fresh() -> Runner {
    Box::new(|n| {
        stack::set_pool_capacity(0);
        let before = stack::stats();
        let start = Instant::now();
        for i in 0..n {
            black_box(greenhack_one(i));
        }
        let t = start.elapsed();
        let after = stack::stats();
        stack::set_pool_capacity(POOL_CAPACITY);
        assert_eq!(
            after.mmaps - before.mmaps,
            n,
            "create fresh: expected one mmap per greenlet"
        );
        assert_eq!(after.mapped, before.mapped, "create fresh: stacks leaked");
        t
    })
}

/// One corosensei coroutine's life on `stack`; returns its result and the
/// stack.
#[inline(always)]
fn corosensei_one(stack: DefaultStack, i: u64) -> (u64, DefaultStack) {
    let mut co = Coroutine::with_stack(stack, |_: &Yielder<u64, ()>, x: u64| x.wrapping_add(1));
    match co.resume(black_box(i)) {
        CoroutineResult::Return(r) => (r, co.into_stack()),
        CoroutineResult::Yield(()) => unreachable!(),
    }
}

fn corosensei_create_pooled() -> Runner {
    let mut spare = Some(new_coro_stack());
    Box::new(move |n| {
        let mut stack = spare.take().expect("the reused stack");
        let start = Instant::now();
        for i in 0..n {
            let (r, s) = corosensei_one(stack, i);
            black_box(r);
            stack = s;
        }
        let t = start.elapsed();
        spare = Some(stack);
        t
    })
}

fn corosensei_create_fresh() -> Runner {
    Box::new(|n| {
        let start = Instant::now();
        for i in 0..n {
            let (r, s) = corosensei_one(new_coro_stack(), i);
            black_box(r);
            drop(s);
        }
        start.elapsed()
    })
}

/// A corosensei stack with the same usable size as greenhack's default.
fn new_coro_stack() -> DefaultStack {
    DefaultStack::new(DEFAULT_STACK_SIZE).expect("corosensei: mapping a stack")
}

// ---------------------------------------------------------------------------
// floor

#[inline(never)]
fn floor_fn(x: u64) -> u64 {
    x.wrapping_add(1)
}

fn floor() -> Runner {
    Box::new(|n| {
        let start = Instant::now();
        for i in 0..n {
            black_box(floor_fn(black_box(i)));
        }
        start.elapsed()
    })
}

// ---------------------------------------------------------------------------
// harness

struct Config {
    samples: usize,
    sample_time: Duration,
    warmup: Duration,
    label: &'static str,
}

/// Distribution of ns/op over samples.
#[derive(Clone, Copy)]
struct Summary {
    median: f64,
    min: f64,
    p25: f64,
    p75: f64,
    /// Minor page faults per op, median over samples.
    faults: f64,
}

fn summarize(ns: &[f64], faults: &[f64]) -> Summary {
    let sorted = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v
    };
    let (v, f) = (sorted(ns), sorted(faults));
    let at = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Summary {
        median: at(&v, 0.5),
        min: v[0],
        p25: at(&v, 0.25),
        p75: at(&v, 0.75),
        faults: at(&f, 0.5),
    }
}

/// Minor page faults of this process so far.
fn minor_faults() -> libc::c_long {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the pointed-to memory.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage failed");
    // SAFETY: zero-initialised, then filled in by getrusage.
    unsafe { ru.assume_init() }.ru_minflt
}

/// Warms `run` up for about `cfg.warmup` and returns the iteration count that
/// makes one sample last about `cfg.sample_time`.
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
    ((cfg.sample_time.as_secs_f64() / per_op.max(1e-12)) as u64).max(1)
}

/// Takes one sample of `n` ops: (ns per op, minor faults per op).
fn sample(run: &mut Runner, n: u64) -> (f64, f64) {
    let f0 = minor_faults();
    let t = run(n);
    let f1 = minor_faults();
    (t.as_nanos() as f64 / n as f64, (f1 - f0) as f64 / n as f64)
}

fn measure(case: &mut Case, cfg: &Config) -> (Summary, Summary) {
    let n_gh = calibrate(&mut case.greenhack, cfg);
    let n_co = calibrate(&mut case.corosensei, cfg);
    let (mut gh, mut gh_f) = (Vec::new(), Vec::new());
    let (mut co, mut co_f) = (Vec::new(), Vec::new());
    for s in 0..cfg.samples {
        // Alternate which side goes first, too.
        for side in [s % 2, 1 - s % 2] {
            if side == 0 {
                let (ns, f) = sample(&mut case.greenhack, n_gh);
                gh.push(ns);
                gh_f.push(f);
            } else {
                let (ns, f) = sample(&mut case.corosensei, n_co);
                co.push(ns);
                co_f.push(f);
            }
        }
    }
    (summarize(&gh, &gh_f), summarize(&co, &co_f))
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
    let label = if filters.is_empty() {
        cfg.label.to_string()
    } else {
        format!("{}, filter {filters:?}", cfg.label)
    };

    let cases = vec![
        Case {
            name: "flat",
            greenhack: greenhack_flat(),
            corosensei: corosensei_flat(),
        },
        Case {
            name: "flat, switch hook set",
            greenhack: greenhack_flat_hooked(),
            corosensei: corosensei_flat(),
        },
        Case {
            name: "nested",
            greenhack: greenhack_nested(),
            corosensei: corosensei_nested(),
        },
        Case {
            name: "create pooled",
            greenhack: greenhack_create_pooled(),
            corosensei: corosensei_create_pooled(),
        },
        Case {
            name: "create fresh",
            greenhack: greenhack_create_fresh(),
            corosensei: corosensei_create_fresh(),
        },
        Case {
            name: "floor",
            greenhack: floor(),
            corosensei: floor(),
        },
    ];
    let selected: Vec<Case> = cases
        .into_iter()
        .filter(|c| {
            c.name == "floor" || filters.is_empty() || filters.iter().any(|f| c.name.contains(f))
        })
        .collect();
    if selected.len() == 1 {
        eprintln!(
            "no case matches {filters:?}; cases: flat, flat, switch hook set, nested, \
             create pooled, create fresh, floor"
        );
    }

    let mut results = Vec::new();
    for mut case in selected {
        eprint!("{:<14} ", case.name);
        let (gh, co) = measure(&mut case, &cfg);
        eprintln!(
            "greenhack {} ns, corosensei {} ns",
            fmt_ns(gh.median),
            fmt_ns(co.median)
        );
        results.push((case.name, gh, co));
    }
    let floor_ns = results
        .iter()
        .find(|r| r.0 == "floor")
        .map(|r| (r.1.median + r.2.median) / 2.0)
        .expect("floor always runs");

    let mut md = String::new();
    md.push_str("## greenhack vs corosensei: switch benchmark\n\n");
    md.push_str(&format!(
        "{}, {}: {} samples of ~{:?} per side, sides interleaved; \
         ns per op: **median** (min; p25–p75). Ratios are of medians; \
         floor ratio = greenhack ÷ floor / corosensei ÷ floor.\n\n",
        std::env::consts::ARCH,
        label,
        cfg.samples,
        cfg.sample_time
    ));
    md.push_str("| case | greenhack ns | corosensei ns | greenhack/corosensei | floor ratio |\n");
    md.push_str("|---|---|---|---|---|\n");
    for (name, gh, co) in &results {
        md.push_str(&format!(
            "| {name} | {} | {} | {:.2} | {:.1}× / {:.1}× |\n",
            cell(gh),
            cell(co),
            gh.median / co.median,
            gh.median / floor_ns,
            co.median / floor_ns,
        ));
    }
    let faulting: Vec<_> = results
        .iter()
        .filter(|(_, gh, co)| gh.faults >= 0.01 || co.faults >= 0.01)
        .collect();
    if !faulting.is_empty() {
        md.push('\n');
        for (name, gh, co) in faulting {
            md.push_str(&format!(
                "- {name}: minor page faults per op: greenhack {:.2}, corosensei {:.2}\n",
                gh.faults, co.faults
            ));
        }
    }
    md.push_str(
        "\nThe floor row measures the same empty call in both columns: its ratio is the noise \
         between two identical measurements in this run.\n",
    );
    println!("\n{md}");

    if bench_mode {
        let path = report_path();
        match std::fs::write(&path, &md) {
            Ok(()) => eprintln!("written to {}", path.display()),
            Err(e) => eprintln!("could not write {}: {e}", path.display()),
        }
        // The same figures for scripts/bench-report: one record per case,
        // in the schema every bench writes.
        let records: Vec<String> = results
            .iter()
            .filter(|(name, _, _)| *name != "floor")
            .map(|(name, gh, co)| {
                format!(
                    "  {{\"group\": \"switch\", \"case\": \"{name}\", \"unit\": \"ns\", \
                     \"lower_is_better\": true, \"greenhack\": {:.3}, \
                     \"peers\": {{\"corosensei\": {:.3}}}}}",
                    gh.median, co.median
                )
            })
            .collect();
        let json_path = path.with_extension("json");
        if let Err(e) = std::fs::write(&json_path, format!("[\n{}\n]\n", records.join(",\n"))) {
            eprintln!("could not write {}: {e}", json_path.display());
        }
    }
}

/// `target/bench-switch.md`: the target directory is three levels above this
/// binary (`target/release/deps/switch-…`), wherever it was configured.
fn report_path() -> std::path::PathBuf {
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let deps = exe.parent()?;
        (deps.file_name()? == "deps").then(|| deps.parent()?.parent().map(|t| t.to_path_buf()))?
    });
    from_exe
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench-switch.md")
}
