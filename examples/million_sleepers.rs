//! A million live greenlets on one thread: sliced greenlets
//! (`Builder::sliced`) need no stack mapping of their own, so Linux's
//! default `vm.max_map_count` (65530, ~32,700 ordinary greenlets) does not
//! bound them.
//!
//! ```text
//! cargo run --release --example million_sleepers            # 1,000,000
//! cargo run --release --example million_sleepers -- 200000  # fewer
//! ```
//!
//! Spawns N sliced greenlets that each sleep until 5 s after the start (all
//! alive at once), then
//! wakes and joins them all, and prints the peak resident memory, the
//! memory per sleeping greenlet and the process's mapping count.

use std::time::{Duration, Instant};

/// How long each greenlet sleeps: past the time it takes to spawn them all.
const SLEEP: Duration = Duration::from_secs(5);

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a kB field")
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().count())
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("a number of greenlets"))
        .unwrap_or(1_000_000);
    let max_map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let before = status_kib("VmRSS:");
    let start = Instant::now();
    let asleep = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let (woken, asleep_rss, maps, all_asleep) = greenhack::run(|| {
        let wake_at = Instant::now() + SLEEP;
        let handles: Vec<_> = (0..n)
            .map(|i| {
                // SAFETY: the greenlets wait only on greenhack's timer,
                // which keeps no pointer into a waiting greenlet's stack.
                let builder = unsafe { greenhack::Builder::new().sliced() };
                let asleep = asleep.clone();
                builder
                    .spawn(move || {
                        asleep.set(asleep.get() + 1);
                        greenhack::sleep_until(wake_at);
                        i
                    })
                    .expect("spawn a sliced greenlet")
            })
            .collect();
        // Let every one run to its sleep.
        while asleep.get() < n {
            greenhack::yield_now();
        }
        let all_asleep = start.elapsed();
        assert!(
            Instant::now() < wake_at,
            "spawning took longer than the sleep"
        );
        let asleep_rss = status_kib("VmRSS:");
        let maps = mappings();
        let mut woken = 0usize;
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().expect("a sleeper failed"), i);
            woken += 1;
        }
        (woken, asleep_rss, maps, all_asleep)
    });
    let elapsed = start.elapsed();
    assert_eq!(woken, n);
    println!("sliced greenlets:      {n}, all asleep at once, then woken and joined");
    println!("vm.max_map_count:      {max_map_count}");
    println!("process mappings:      {maps} while they slept");
    println!(
        "RSS while asleep:      {:.1} MiB ({:.2} KiB per greenlet, from {:.1} MiB at start)",
        asleep_rss as f64 / 1024.0,
        (asleep_rss.saturating_sub(before)) as f64 / n as f64,
        before as f64 / 1024.0,
    );
    println!(
        "peak RSS:              {:.1} MiB",
        status_kib("VmHWM:") as f64 / 1024.0
    );
    println!(
        "all asleep after:      {:.2} s (spawned and run to their sleep)",
        all_asleep.as_secs_f64()
    );
    println!(
        "woken and joined at:   {:.2} s (each slept until {} s after the start)",
        elapsed.as_secs_f64(),
        SLEEP.as_secs()
    );
}
