//! Linked backtraces: a backtrace taken inside a greenlet continues into the
//! code that resumed it — for `std::backtrace`, for gdb's `bt`, and for
//! `perf`'s frame-pointer and DWARF call graphs.
//!
//! ```text
//! cargo run --example linked_backtrace            # print a backtrace from inside a greenlet
//! cargo run --example linked_backtrace -- spin    # burn CPU inside a greenlet (for perf)
//! ```
//!
//! `.ci/debuggers` drives this program under gdb (a breakpoint on
//! `work_inside_greenlet`, then `bt`) and under `perf record`, and checks that
//! `resumer_in_the_host` — a frame of the resumer, outside the greenlet —
//! shows up below the greenlet's frames.

use std::backtrace::Backtrace;
use std::hint::black_box;
use std::time::{Duration, Instant};

use greenhack::greenlet::Greenlet;

/// Runs inside the greenlet; a breakpoint target for gdb.
#[inline(never)]
fn work_inside_greenlet(spin: Option<Duration>) -> u64 {
    match spin {
        None => {
            println!("{}", Backtrace::force_capture());
            0
        }
        Some(d) => {
            let start = Instant::now();
            let mut x = 0u64;
            while start.elapsed() < d {
                for i in 0..10_000u64 {
                    x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
                }
            }
            x
        }
    }
}

/// The resumer: a frame on the host stack that a linked backtrace reaches.
#[inline(never)]
fn resumer_in_the_host(g: &mut Greenlet<(), (), u64>) -> u64 {
    black_box(g.resume(()).into_complete().unwrap_or(0))
}

fn main() {
    let spin = std::env::args()
        .nth(1)
        .filter(|a| a == "spin")
        .map(|_| Duration::from_secs(2));
    let mut g = Greenlet::new(move |_, ()| work_inside_greenlet(spin));
    let v = resumer_in_the_host(&mut g);
    black_box(v);
}
