//! Per-greenlet CPU time accounting with the switch hook.
//!
//! ```text
//! cargo run --release --example cpu_accounting
//! ```
//!
//! The hook reads the thread's CPU clock when a greenlet is resumed and
//! charges the difference to that greenlet when it suspends or finishes.
//! Three greenlets with different amounts of work interleave through
//! `yield_now`; the report shows each one's share.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use greenhack::debug::{SwitchEvent, SwitchKind};

/// Per greenlet id: its name and the CPU time charged to it so far.
type Accounts = BTreeMap<u64, (String, Duration)>;

thread_local! {
    /// The accounts, and the CPU clock at the last resume.
    static ACCOUNTS: RefCell<(Accounts, Option<Duration>)> =
        const { RefCell::new((BTreeMap::new(), None)) };
}

/// This thread's CPU time.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn account(e: SwitchEvent<'_>) {
    let now = thread_cpu_time();
    ACCOUNTS.with(|a| {
        let (accounts, started) = &mut *a.borrow_mut();
        match e.kind {
            SwitchKind::Resume => *started = Some(now),
            SwitchKind::Suspend | SwitchKind::Finish => {
                if let Some(start) = started.take() {
                    let entry = accounts
                        .entry(e.id)
                        .or_insert_with(|| (e.name.unwrap_or("?").to_string(), Duration::ZERO));
                    entry.1 += now - start;
                }
            }
        }
    });
}

/// Work in slices, yielding between them so the greenlets interleave.
fn work(slices: u32) -> u64 {
    let mut x = 0u64;
    for _ in 0..slices {
        for i in 0..200_000u64 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        greenhack::yield_now();
    }
    x
}

fn main() {
    greenhack::debug::set_switch_hook(Some(account));
    greenhack::run(|| {
        for (name, slices) in [("light", 10), ("medium", 30), ("heavy", 60)] {
            // Detached: `run` waits for every spawned greenlet anyway.
            drop(
                greenhack::Builder::new()
                    .name(name)
                    .spawn(move || work(slices))
                    .expect("spawn"),
            );
        }
    });
    greenhack::debug::set_switch_hook(None);

    // The pair layer wraps each spawned greenlet's closure; every switch of
    // that greenlet is charged to its id.
    let accounts = ACCOUNTS.with(|a| a.borrow().0.clone());
    let total: Duration = accounts.values().map(|(_, d)| *d).sum();
    println!("{:<8} {:>10} {:>6}", "greenlet", "cpu", "share");
    for (name, cpu) in accounts.values() {
        println!(
            "{name:<8} {:>8.1}ms {:>5.1}%",
            cpu.as_secs_f64() * 1e3,
            100.0 * cpu.as_secs_f64() / total.as_secs_f64()
        );
    }
}
