//! How many greenlets can be alive at once, and what happens past the limit.
//!
//! ```text
//! cargo run --release --example max_greenlets            # 64 KiB stacks (see below)
//! cargo run --release --example max_greenlets -- 262144  # the default 256 KiB
//! ```
//!
//! Creates suspended greenlets until creating one fails, then prints how
//! many were alive, the error (which names `vm.max_map_count` and the sysctl
//! that raises it), the process's mapping count against the limit, and
//! proves the process is still healthy: every greenlet is resumed to
//! completion and the memory is given back.
//!
//! Each guarded stack costs two kernel mappings, so with Linux's default
//! `vm.max_map_count` of 65530 the limit is near 32,700 greenlets whatever
//! the stack size; the size argument only changes how much address space is
//! reserved.

use greenhack::greenlet::{Builder, Greenlet};

fn main() {
    let size: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("stack size in bytes"))
        .unwrap_or(64 * 1024);
    // Keep nothing in the pool, so every greenlet maps its own stack.
    greenhack::stack::set_pool_capacity(0);
    let max_map_count = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());

    let mut alive: Vec<Greenlet<(), (), ()>> = Vec::new();
    let error = loop {
        match Builder::new().stack_size(size).build(|s, ()| s.suspend(())) {
            Ok(mut g) => {
                g.resume(()); // started and suspended: its stack is in use
                alive.push(g);
            }
            Err(e) => break e,
        }
        if alive.len() >= 1_000_000 {
            panic!("no limit reached after 1,000,000 greenlets");
        }
    };
    // Counted through a small buffer: a big read would need a new mapping,
    // which is exactly what has run out.
    let maps = {
        use std::io::Read;
        let mut f = std::fs::File::open("/proc/self/maps").expect("maps");
        let (mut buf, mut lines) = ([0u8; 4096], 0);
        loop {
            match f.read(&mut buf).expect("read maps") {
                0 => break lines,
                n => lines += buf[..n].iter().filter(|&&b| b == b'\n').count(),
            }
        }
    };
    println!("stack size:            {} KiB", size / 1024);
    println!("vm.max_map_count:      {max_map_count}");
    println!("live greenlets:        {}", alive.len());
    println!("process mappings:      {maps}");
    println!("error past the limit:  {error}");
    println!("error kind:            {:?}", error.kind());

    // Still healthy: finish them all, then create one more.
    let n = alive.len();
    for mut g in alive.drain(..) {
        g.resume(());
    }
    let mut again = Greenlet::<(), (), u32>::new(|_, ()| 7);
    assert_eq!(again.resume(()).into_complete(), Some(7));
    println!("after finishing all {n}: a new greenlet runs normally");
}
