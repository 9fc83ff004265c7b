//! What slicing costs a switch: greenlets taking turns on greenhack's loop
//! (each `yield_now` in a loop), ordinary vs sliced (`Builder::sliced`),
//! with 2 and 1,000 greenlets and live frames of ~0.3 KiB up to ~4.3 KiB
//! (a buffer held across the wait). Reports ns per resume and the ratio,
//! measured alternately in one run (median of 11 samples each).
//!
//! ```text
//! taskset -c 1 cargo bench --bench sliced
//! ```

use std::hint::black_box;
use std::time::Instant;

/// Yields `rounds` times with an `N`-byte buffer live across each yield.
#[inline(never)]
fn hold<const N: usize>(rounds: u64) {
    let buf = black_box([1u8; N]);
    for _ in 0..rounds {
        greenhack::yield_now();
    }
    black_box(&buf);
}

/// ns per resume of `n` greenlets each yielding `rounds` times.
fn sample(n: usize, sliced: bool, rounds: u64, body: fn(u64)) -> f64 {
    greenhack::run(|| {
        let start = Instant::now();
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let b = if sliced {
                    // SAFETY: the greenlets wait only in `yield_now`.
                    unsafe { greenhack::Builder::new().sliced() }
                } else {
                    greenhack::Builder::new()
                };
                b.spawn(move || body(rounds)).unwrap()
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        start.elapsed().as_nanos() as f64 / (n as f64 * rounds as f64)
    })
}

/// A case: its name and the greenlets' body.
type Case = (&'static str, fn(u64));

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this once
    // quickly; GREENHACK_BENCH_QUICK=1 (scripts/bench-all's smoke run)
    // takes fewer samples.
    let test = !std::env::args().any(|a| a == "--bench");
    let smoke = std::env::var_os("GREENHACK_BENCH_QUICK").is_some();
    let samples = if test {
        1
    } else if smoke {
        3
    } else {
        11
    };
    let cases: [Case; 4] = [
        ("0 B buffer", hold::<0>),
        ("1 KiB buffer", hold::<1024>),
        ("2 KiB buffer", hold::<2048>),
        ("4 KiB buffer", hold::<4096>),
    ];
    println!(
        "| greenlets | live frames | ordinary ns/resume | sliced ns/resume | sliced ÷ ordinary |"
    );
    println!("|---|---|---|---|---|");
    for n in [2usize, 1000] {
        let rounds = match (test, smoke) {
            (true, _) => 10,
            (false, true) => 20_000 / n as u64 * 10,
            (false, false) => 200_000 / n as u64 * 10,
        };
        for (name, body) in cases {
            let (mut plain, mut sliced) = (Vec::new(), Vec::new());
            for _ in 0..samples {
                plain.push(sample(n, false, rounds, body));
                sliced.push(sample(n, true, rounds, body));
            }
            let (p, s) = (median(plain), median(sliced));
            println!("| {n} | {name} | {p:.1} | {s:.1} | {:.2} |", s / p);
        }
    }
}
