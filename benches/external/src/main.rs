//! The held-out switch benchmark: greenhack measured from outside, as a user
//! crate sees it, against corosensei and stackful in the same run.
//!
//! ```text
//! scripts/bench-external            # both profiles, pinned, the table
//! cargo run --release -- [--reps N] [--sample-us M] [case...]   # one profile, this dir
//! ```
//!
//! Every timed loop is instantiated once per code layout: a const generic
//! `PAD` puts `PAD` bytes of `nop` at the start of the timing function and
//! of the coroutine body, which moves the loop, the inlined switch stubs and
//! their resume labels against cache lines and fetch blocks (the loop header
//! is realigned to 16 bytes by LLVM, so the pads are multiples of 16 and
//! cover each 16-byte slot of a 64-byte line). A case's ratio is
//! greenhack's median over its peer's median for the same layout, both
//! measured in the same interleaved rounds; the table reports the median
//! ratio over the layouts and the worst one.
//!
//! Output: one line per (case, layout) starting with `row`, then the table
//! (`--table`, the default) for a reader; scripts/bench-external merges the
//! rows of both profiles.

use std::future::{Future, ready};
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use greenhack::greenlet::{Greenlet, GreenletResult, Suspender};

/// `PAD` bytes of `nop` where it is called: a layout perturbation.
#[inline(always)]
fn pad<const PAD: usize>() {
    // SAFETY: nops only; no memory, stack or flags touched.
    unsafe {
        core::arch::asm!(".rept {n}", "nop", ".endr", n = const PAD, options(nomem, nostack, preserves_flags));
    }
}

/// Runs `n` operations; returns the time taken.
type Runner = Box<dyn FnMut(u64) -> Duration>;

// ---------------------------------------------------------------------------
// flat: one resume + suspend round trip

fn gh_flat_body<const PAD: usize>(s: &Suspender<u64, u64>, mut x: u64) {
    pad::<PAD>();
    loop {
        x = s.suspend(x.wrapping_add(1));
    }
}

fn gh_flat<const PAD: usize>() -> Runner {
    let mut g: Greenlet<u64, u64, ()> = Greenlet::new(gh_flat_body::<PAD>);
    Box::new(move |n| {
        pad::<PAD>();
        let mut x = 0u64;
        let t = Instant::now();
        for _ in 0..n {
            x = match g.resume(black_box(x)) {
                GreenletResult::Yielded(y) => y,
                GreenletResult::Complete(()) => unreachable!(),
            };
        }
        let d = t.elapsed();
        assert_eq!(black_box(x), n);
        d
    })
}

fn co_flat_body<const PAD: usize>(y: &Yielder<u64, u64>, mut x: u64) {
    pad::<PAD>();
    loop {
        x = y.suspend(x.wrapping_add(1));
    }
}

fn co_flat<const PAD: usize>() -> Runner {
    let mut co: Coroutine<u64, u64, ()> = Coroutine::new(co_flat_body::<PAD>);
    Box::new(move |n| {
        pad::<PAD>();
        let mut x = 0u64;
        let t = Instant::now();
        for _ in 0..n {
            x = match co.resume(black_box(x)) {
                CoroutineResult::Yield(y) => y,
                CoroutineResult::Return(()) => unreachable!(),
            };
        }
        let d = t.elapsed();
        assert_eq!(black_box(x), n);
        d
    })
}

// ---------------------------------------------------------------------------
// nested: suspend at depth 3, resumed from an #[inline(never)] function

#[inline(never)]
fn gh_a(s: &Suspender<u64, u64>, x: u64) -> u64 {
    black_box(gh_b(s, x))
}
#[inline(never)]
fn gh_b(s: &Suspender<u64, u64>, x: u64) -> u64 {
    black_box(gh_c(s, x))
}
#[inline(never)]
fn gh_c(s: &Suspender<u64, u64>, x: u64) -> u64 {
    black_box(s.suspend(x.wrapping_add(1)))
}
#[inline(never)]
fn gh_wait(g: &mut Greenlet<u64, u64, ()>, x: u64) -> u64 {
    match g.resume(x) {
        GreenletResult::Yielded(y) => y,
        GreenletResult::Complete(()) => unreachable!(),
    }
}
fn gh_nested_body<const PAD: usize>(s: &Suspender<u64, u64>, mut x: u64) {
    pad::<PAD>();
    loop {
        x = gh_a(s, x);
    }
}
fn gh_nested<const PAD: usize>() -> Runner {
    let mut g: Greenlet<u64, u64, ()> = Greenlet::new(gh_nested_body::<PAD>);
    Box::new(move |n| {
        pad::<PAD>();
        let mut x = 0u64;
        let t = Instant::now();
        for _ in 0..n {
            x = black_box(gh_wait(&mut g, x));
        }
        let d = t.elapsed();
        assert_eq!(x, n);
        d
    })
}

#[inline(never)]
fn co_a(y: &Yielder<u64, u64>, x: u64) -> u64 {
    black_box(co_b(y, x))
}
#[inline(never)]
fn co_b(y: &Yielder<u64, u64>, x: u64) -> u64 {
    black_box(co_c(y, x))
}
#[inline(never)]
fn co_c(y: &Yielder<u64, u64>, x: u64) -> u64 {
    black_box(y.suspend(x.wrapping_add(1)))
}
#[inline(never)]
fn co_wait(co: &mut Coroutine<u64, u64, ()>, x: u64) -> u64 {
    match co.resume(x) {
        CoroutineResult::Yield(y) => y,
        CoroutineResult::Return(()) => unreachable!(),
    }
}
fn co_nested_body<const PAD: usize>(y: &Yielder<u64, u64>, mut x: u64) {
    pad::<PAD>();
    loop {
        x = co_a(y, x);
    }
}
fn co_nested<const PAD: usize>() -> Runner {
    let mut co: Coroutine<u64, u64, ()> = Coroutine::new(co_nested_body::<PAD>);
    Box::new(move |n| {
        pad::<PAD>();
        let mut x = 0u64;
        let t = Instant::now();
        for _ in 0..n {
            x = black_box(co_wait(&mut co, x));
        }
        let d = t.elapsed();
        assert_eq!(x, n);
        d
    })
}

// ---------------------------------------------------------------------------
// create + run to completion + drop, the stack reused

fn gh_create<const PAD: usize>() -> Runner {
    Box::new(move |n| {
        pad::<PAD>();
        let mut acc = 0u64;
        let t = Instant::now();
        for i in 0..n {
            let mut g: Greenlet<u64, (), u64> = Greenlet::new(|_, x: u64| x.wrapping_add(1));
            match g.resume(black_box(i)) {
                GreenletResult::Complete(r) => acc = acc.wrapping_add(r),
                GreenletResult::Yielded(()) => unreachable!(),
            }
        }
        let d = t.elapsed();
        assert_eq!(black_box(acc), n * (n + 1) / 2);
        d
    })
}

fn co_create<const PAD: usize>() -> Runner {
    let mut spare = Some(DefaultStack::new(greenhack::stack::DEFAULT_STACK_SIZE).unwrap());
    Box::new(move |n| {
        pad::<PAD>();
        let mut acc = 0u64;
        let t = Instant::now();
        for i in 0..n {
            let stack = spare.take().unwrap();
            let mut co: Coroutine<u64, (), u64, DefaultStack> =
                Coroutine::with_stack(stack, |_, x: u64| x.wrapping_add(1));
            match co.resume(black_box(i)) {
                CoroutineResult::Return(r) => acc = acc.wrapping_add(r),
                CoroutineResult::Yield(()) => unreachable!(),
            }
            spare = Some(co.into_stack());
        }
        let d = t.elapsed();
        assert_eq!(black_box(acc), n * (n + 1) / 2);
        d
    })
}

// ---------------------------------------------------------------------------
// exempt / wait inside a bridge polled by tokio on a LocalSet

/// Pending on its first poll (waking itself first), then ready.
struct YieldOnce(u64, bool);

impl Future for YieldOnce {
    type Output = u64;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        if self.1 {
            Poll::Ready(self.0)
        } else {
            self.1 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

fn local() -> (tokio::runtime::Runtime, tokio::task::LocalSet) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    (rt, tokio::task::LocalSet::new())
}

fn gh_bridge<const PAD: usize, F, M>(mk: M) -> Runner
where
    F: Future<Output = u64> + 'static,
    M: Fn(u64) -> F + Copy + 'static,
{
    let (rt, set) = local();
    Box::new(move |n| {
        set.block_on(&rt, async move {
            greenhack::as_async(move || {
                pad::<PAD>();
                let mut acc = 0u64;
                let t = Instant::now();
                for i in 0..n {
                    acc = acc.wrapping_add(greenhack::exempt(mk(black_box(i))));
                }
                let d = t.elapsed();
                assert_eq!(black_box(acc), n * n.saturating_sub(1) / 2);
                d
            })
            .await
        })
    })
}

fn sf_bridge<const PAD: usize, F, M>(mk: M) -> Runner
where
    F: Future<Output = u64> + 'static,
    M: Fn(u64) -> F + Copy + 'static,
{
    let (rt, set) = local();
    Box::new(move |n| {
        set.block_on(&rt, async move {
            stackful::stackful(move || {
                pad::<PAD>();
                let mut acc = 0u64;
                let t = Instant::now();
                for i in 0..n {
                    acc = acc.wrapping_add(stackful::wait(mk(black_box(i))));
                }
                let d = t.elapsed();
                assert_eq!(black_box(acc), n * n.saturating_sub(1) / 2);
                d
            })
            .await
        })
    })
}

fn gh_ready<const PAD: usize>() -> Runner {
    gh_bridge::<PAD, _, _>(ready)
}
fn sf_ready<const PAD: usize>() -> Runner {
    sf_bridge::<PAD, _, _>(ready)
}
fn gh_yield<const PAD: usize>() -> Runner {
    gh_bridge::<PAD, _, _>(|i| YieldOnce(i, false))
}
fn sf_yield<const PAD: usize>() -> Runner {
    sf_bridge::<PAD, _, _>(|i| YieldOnce(i, false))
}

// ---------------------------------------------------------------------------
// the driver

struct Case {
    name: &'static str,
    peer: &'static str,
    layouts: Vec<(usize, Runner, Runner)>,
}

macro_rules! layouts {
    ($gh:ident, $peer:ident) => {
        vec![
            (0, $gh::<0>(), $peer::<0>()),
            (16, $gh::<16>(), $peer::<16>()),
            (32, $gh::<32>(), $peer::<32>()),
            (48, $gh::<48>(), $peer::<48>()),
            (8, $gh::<8>(), $peer::<8>()),
            (40, $gh::<40>(), $peer::<40>()),
        ]
    };
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "flat",
            peer: "corosensei",
            layouts: layouts!(gh_flat, co_flat),
        },
        Case {
            name: "nested",
            peer: "corosensei",
            layouts: layouts!(gh_nested, co_nested),
        },
        Case {
            name: "create",
            peer: "corosensei",
            layouts: layouts!(gh_create, co_create),
        },
        Case {
            name: "exempt_ready",
            peer: "stackful",
            layouts: layouts!(gh_ready, sf_ready),
        },
        Case {
            name: "exempt_yield",
            peer: "stackful",
            layouts: layouts!(gh_yield, sf_yield),
        },
    ]
}

/// The fastest sample: on a machine shared with other work, interference
/// only ever adds time, so the minimum over interleaved rounds is the
/// steadiest estimate of a loop's own cost (the median moved by 2x between
/// runs here with the load average above the core count).
fn fastest(v: &[f64]) -> f64 {
    v.iter().cloned().fold(f64::INFINITY, f64::min)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Ops per sample so that one lasts about `target`.
fn calibrate(r: &mut Runner, target: Duration) -> u64 {
    let mut n = 64u64;
    loop {
        let d = r(n);
        if d >= target / 4 {
            let per = d.as_secs_f64() / n as f64;
            return ((target.as_secs_f64() / per) as u64).max(64);
        }
        n *= 4;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse().expect("a number"))
            .unwrap_or(default)
    };
    let reps = get("--reps", 41) as usize;
    let sample = Duration::from_micros(get("--sample-us", 500));
    let only: Vec<&String> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with("--") && a.parse::<u64>().is_err())
        .collect();
    let label = std::env::var("GREENHACK_BENCH_PROFILE").unwrap_or_else(|_| "release".into());

    let mut cases = cases();
    cases.retain(|c| only.is_empty() || only.iter().any(|o| c.name.contains(o.as_str())));
    // (case, layout) -> (gh ns samples, peer ns samples)
    let mut results: Vec<Vec<(Vec<f64>, Vec<f64>)>> = Vec::new();
    let mut ops: Vec<Vec<(u64, u64)>> = Vec::new();
    for c in &mut cases {
        let mut o = Vec::new();
        for (_, g, p) in &mut c.layouts {
            // Warm up both, then size each side's samples.
            o.push((calibrate(g, sample), calibrate(p, sample)));
        }
        ops.push(o);
        results.push(c.layouts.iter().map(|_| (Vec::new(), Vec::new())).collect());
    }
    // Interleaved: every round measures every (case, layout, side) once, the
    // side that goes first alternating round by round.
    for rep in 0..reps {
        for (ci, c) in cases.iter_mut().enumerate() {
            for (li, (_, g, p)) in c.layouts.iter_mut().enumerate() {
                let (ng, np) = ops[ci][li];
                let mut run_g = || g(ng).as_secs_f64() * 1e9 / ng as f64;
                let mut run_p = || p(np).as_secs_f64() * 1e9 / np as f64;
                let (tg, tp) = if rep % 2 == 0 {
                    let a = run_g();
                    (a, run_p())
                } else {
                    let b = run_p();
                    (run_g(), b)
                };
                results[ci][li].0.push(tg);
                results[ci][li].1.push(tp);
            }
        }
    }
    println!(
        "# profile {label}: {reps} interleaved rounds, {} us samples, fastest round per layout",
        sample.as_micros()
    );
    println!(
        "# row profile case peer pad greenhack_ns peer_ns ratio (fastest rounds) greenhack_median_ns peer_median_ns"
    );
    let mut summary = Vec::new();
    for (ci, c) in cases.iter().enumerate() {
        let mut ratios = Vec::new();
        let mut ghs = Vec::new();
        let mut prs = Vec::new();
        for (li, (pad, _, _)) in c.layouts.iter().enumerate() {
            let (g, p) = &mut results[ci][li];
            let (mg, mp) = (fastest(g), fastest(p));
            println!(
                "row {label} {} {} {pad} {mg:.3} {mp:.3} {:.3} {:.3} {:.3}",
                c.name,
                c.peer,
                mg / mp,
                median(g),
                median(p),
            );
            ratios.push(mg / mp);
            ghs.push(mg);
            prs.push(mp);
        }
        let worst = ratios.iter().cloned().fold(0.0, f64::max);
        summary.push((
            c.name,
            c.peer,
            median(&mut ghs),
            median(&mut prs),
            median(&mut ratios),
            worst,
        ));
    }
    println!();
    println!("| {label} | greenhack ns | peer ns | median ratio | worst layout |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, peer, g, p, r, w) in summary {
        println!("| {name} ÷ {peer} | {g:.2} | {p:.2} | {r:.2}× | {w:.2}× |");
    }
}
