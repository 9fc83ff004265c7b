//! Behaviour of the raw `Greenlet` primitive.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;

mod util;

use greenhack::greenlet::{Builder, Greenlet, GreenletResult};

#[test]
fn smoke() {
    let mut g = Greenlet::<i32, (), i32>::new(|_, x| x + 1);
    assert!(!g.is_started());
    assert_eq!(g.resume(41), GreenletResult::Complete(42));
    assert!(g.is_finished());
    assert!(g.stack_range().is_none());
}

#[test]
fn suspend_and_resume() {
    let mut g = Greenlet::new(|s, a: u64| {
        let b = s.suspend(a * 2);
        let c = s.suspend(b * 3);
        format!("{a} {b} {c}")
    });
    assert_eq!(g.resume(1), GreenletResult::Yielded(2));
    assert_eq!(g.resume(5), GreenletResult::Yielded(15));
    assert_eq!(g.resume(7), GreenletResult::Complete("1 5 7".to_string()));
}

#[test]
fn values_in_and_out_over_a_million_switches() {
    const N: u64 = 1_000_000;
    let mut g = Greenlet::new(|s, mut x: u64| {
        let mut sum = 0u64;
        loop {
            if x == u64::MAX {
                return sum;
            }
            sum = sum.wrapping_add(x);
            // Hand out a value derived from the input, so both directions
            // are checked on every switch.
            x = s.suspend(x.wrapping_mul(3) ^ 0x5a5a);
        }
    });
    for i in 0..N {
        assert_eq!(
            g.resume(i),
            GreenletResult::Yielded(i.wrapping_mul(3) ^ 0x5a5a)
        );
    }
    assert_eq!(
        g.resume(u64::MAX),
        GreenletResult::Complete(N * (N - 1) / 2)
    );
}

#[test]
fn large_values_cross_both_ways() {
    let mut g = Greenlet::new(|s, a: [u8; 4096]| {
        let b = s.suspend([a[4095]; 8192]);
        b.iter().map(|&x| x as u64).sum::<u64>()
    });
    let mut a = [0u8; 4096];
    a[4095] = 9;
    assert_eq!(g.resume(a).into_yielded(), Some([9u8; 8192]));
    assert_eq!(g.resume([1u8; 4096]).into_complete(), Some(4096));
}

#[test]
fn panics_propagated() {
    let mut g = Greenlet::<(), (), ()>::new(|s, ()| {
        s.suspend(());
        std::panic::panic_any(1234u32);
    });
    g.resume(());
    let err = panic::catch_unwind(AssertUnwindSafe(|| g.resume(()))).unwrap_err();
    assert_eq!(err.downcast_ref::<u32>(), Some(&1234));
    assert!(g.is_finished());
}

#[test]
fn panic_message_payload_is_the_original_string() {
    let mut g = Greenlet::<(), (), ()>::new(|_, ()| panic!("bad {}", std::hint::black_box(42)));
    let err = panic::catch_unwind(AssertUnwindSafe(|| g.resume(()))).unwrap_err();
    assert_eq!(
        err.downcast_ref::<String>().map(String::as_str),
        Some("bad 42")
    );
}

#[test]
fn resume_after_finish_panics_with_name() {
    let mut g: Greenlet<(), (), ()> = Builder::new().name("done-one").build(|_, ()| ()).unwrap();
    g.resume(());
    let err = panic::catch_unwind(AssertUnwindSafe(|| g.resume(()))).unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(
        msg.contains("'done-one'") && msg.contains("finished"),
        "{msg}"
    );
}

struct Counted(Rc<Cell<u32>>);
impl Drop for Counted {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

#[test]
fn drop_of_suspended_greenlet_runs_destructors() {
    let drops = Rc::new(Cell::new(0));
    let d = drops.clone();
    let mut g = Greenlet::<(), u32, ()>::new(move |s, ()| {
        let _a = Counted(d.clone());
        #[inline(never)]
        fn deeper(s: &greenhack::greenlet::Suspender<(), u32>, d: Rc<Cell<u32>>) {
            let _b = Counted(d.clone());
            let _c = Counted(d);
            s.suspend(1);
            unreachable!();
        }
        deeper(s, d.clone());
        s.suspend(2);
    });
    assert_eq!(g.resume(()), GreenletResult::Yielded(1));
    assert_eq!(drops.get(), 0);
    drop(g);
    // _a, _b, _c, and the closure's captured `d` clone held by... (the Rc
    // captured by the closure itself is moved into the frame and dropped).
    assert_eq!(drops.get(), 3);
    assert_eq!(
        Rc::strong_count(&drops),
        1,
        "every Rc clone on the stack was dropped"
    );
}

#[test]
fn drop_of_fresh_greenlet_drops_the_closure() {
    let drops = Rc::new(Cell::new(0));
    let c = Counted(drops.clone());
    let g = Greenlet::<(), (), ()>::new(move |_, ()| {
        let _keep = &c;
    });
    drop(g);
    assert_eq!(drops.get(), 1);
}

#[test]
fn destructors_see_an_unwind_when_a_suspended_greenlet_is_dropped() {
    struct SeesPanicking(Rc<Cell<Option<bool>>>);
    impl Drop for SeesPanicking {
        fn drop(&mut self) {
            self.0.set(Some(std::thread::panicking()));
        }
    }
    let seen = Rc::new(Cell::new(None));
    let s2 = seen.clone();
    let mut g = Greenlet::<(), (), ()>::new(move |s, ()| {
        let _p = SeesPanicking(s2);
        s.suspend(());
    });
    g.resume(());
    drop(g);
    // Cancellation is an unwind: code that distinguishes (poisoning, guards
    // that roll back) behaves as it would for a panic.
    assert_eq!(seen.get(), Some(true));
    // The unwind did not leak out of the drop.
    assert!(!std::thread::panicking());
}

#[test]
fn nested_greenlets() {
    let mut outer = Greenlet::new(|s, n: u32| {
        let mut inner = Greenlet::new(|s2, m: u32| {
            let k = s2.suspend(m + 1);
            k * 10
        });
        let a = inner.resume(n).into_yielded().unwrap();
        let b = s.suspend(a);
        let c = inner.resume(b).into_complete().unwrap();
        // A third level, finished inside.
        let mut third = Greenlet::<u32, (), u32>::new(|_, x| x + 5);
        c + third.resume(0).into_complete().unwrap()
    });
    assert_eq!(outer.resume(1), GreenletResult::Yielded(2));
    assert_eq!(outer.resume(3), GreenletResult::Complete(35));
}

#[test]
fn greenlet_resumed_from_different_parents() {
    let mut child = Greenlet::new(|s, x: u32| {
        let y = s.suspend(x);
        let z = s.suspend(y);
        x + y + z
    });
    assert_eq!(child.resume(1), GreenletResult::Yielded(1));
    // Move the suspended child into another greenlet, which resumes it.
    let mut host = Greenlet::<(), (), _>::new(move |_, ()| {
        let r = child.resume(2);
        (r, child)
    });
    let (r, mut child) = host.resume(()).into_complete().unwrap();
    assert_eq!(r, GreenletResult::Yielded(2));
    assert_eq!(child.resume(3), GreenletResult::Complete(6));
}

#[test]
fn names_and_ids() {
    let a: Greenlet<(), (), ()> = Builder::new().name("alpha").build(|_, ()| ()).unwrap();
    let b = Greenlet::<(), (), ()>::new(|_, ()| ());
    assert_eq!(a.name(), Some("alpha"));
    assert_eq!(b.name(), None);
    assert_ne!(a.id(), b.id());
    assert!(format!("{a:?}").contains("alpha"));
}

#[test]
fn suspender_reports_its_greenlet_id() {
    let mut g = Greenlet::<(), (), u64>::new(|s, ()| s.id());
    let id = g.id();
    assert_eq!(g.resume(()).into_complete(), Some(id));
}

#[test]
fn pool_reuses_the_stack_without_a_new_mapping() {
    // Run on a fresh thread so the pool starts empty and other tests do not
    // interleave.
    std::thread::spawn(|| {
        let mut first = Greenlet::<(), (), ()>::new(|_, ()| ());
        let range = first.stack_range().unwrap();
        first.resume(());
        drop(first);
        let before = greenhack::stack::stats();
        assert_eq!(before.pooled, 1);
        let second = Greenlet::<(), (), ()>::new(|_, ()| ());
        assert_eq!(second.stack_range(), Some(range), "same stack reused");
        let after = greenhack::stack::stats();
        assert_eq!(after.mmaps, before.mmaps, "no new mmap");
        assert_eq!(after.mapped, before.mapped, "no new mapping");
        assert_eq!(after.pooled, 0);
    })
    .join()
    .unwrap();
}

#[test]
fn stacks_of_other_sizes_are_not_mixed() {
    std::thread::spawn(|| {
        let g: Greenlet<(), (), ()> = Builder::new()
            .stack_size(64 * 1024)
            .build(|_, ()| ())
            .unwrap();
        drop(g);
        let big: Greenlet<(), (), ()> = Builder::new()
            .stack_size(1 << 20)
            .build(|_, ()| ())
            .unwrap();
        assert!(big.stack_range().unwrap().len() >= 1 << 20);
        assert_eq!(greenhack::stack::stats().pooled, 1);
    })
    .join()
    .unwrap();
}

#[test]
fn pool_finds_a_size_behind_others_and_sheds_the_least_recently_used() {
    fn build(size: usize) -> Greenlet<(), (), ()> {
        Builder::new().stack_size(size).build(|_, ()| ()).unwrap()
    }
    std::thread::spawn(|| {
        let (small, big) = (64 * 1024, 128 * 1024);
        let (a, b, c) = (build(small), build(big), build(small));
        let (ra, rb, rc) = (a.stack_range(), b.stack_range(), c.stack_range());
        drop(a);
        drop(b);
        drop(c);
        let start = greenhack::stack::stats();
        assert_eq!((start.pooled, start.mapped), (3, 3));

        // The big stack sits between two small ones in the pool.
        let b = build(big);
        assert_eq!(b.stack_range(), rb);
        drop(b);
        assert_eq!(greenhack::stack::stats().pooled, 3);

        // Shrinking unmaps the stack unused for longest: `a`'s.
        greenhack::stack::set_pool_capacity(2);
        let shrunk = greenhack::stack::stats();
        assert_eq!((shrunk.pooled, shrunk.mapped), (2, 2));
        let c = build(small);
        assert_eq!(c.stack_range(), rc, "the small stack left is c's");
        assert_ne!(c.stack_range(), ra);
        assert_eq!(greenhack::stack::stats().mmaps, start.mmaps, "no new mmap");
        drop(c);

        greenhack::stack::set_pool_capacity(0);
        let empty = greenhack::stack::stats();
        assert_eq!((empty.pooled, empty.mapped), (0, 0));
    })
    .join()
    .unwrap();
}

#[test]
fn thread_exit_unmaps_pooled_stacks() {
    // In a child process: concurrent tests could map a new stack at the
    // freed address and make the check below lie.
    const NAME: &str = "thread_exit_unmaps_pooled_stacks";
    if !util::is_child(NAME) {
        util::assert_child_passed(&util::run_child(NAME));
        return;
    }
    fn is_mapped(addr: usize) -> bool {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .any(|l| {
                let range = l.split_whitespace().next().unwrap();
                let (lo, hi) = range.split_once('-').unwrap();
                let (lo, hi) = (
                    usize::from_str_radix(lo, 16).unwrap(),
                    usize::from_str_radix(hi, 16).unwrap(),
                );
                (lo..hi).contains(&addr)
            })
    }
    let (stats, range) = std::thread::spawn(|| {
        let mut range = None;
        for _ in 0..10 {
            let mut g = Greenlet::<(), (), ()>::new(|_, ()| ());
            range = g.stack_range();
            g.resume(());
        }
        (greenhack::stack::stats(), range.unwrap())
    })
    .join()
    .unwrap();
    // Ten greenlets in a row shared one stack…
    assert_eq!(stats.mapped, 1);
    assert_eq!(stats.mmaps, 1);
    assert_eq!(stats.pooled, 1);
    // …which the thread's exit unmapped.
    assert!(!is_mapped(range.start), "pooled stack outlived its thread");
}

#[test]
fn oversized_closure_is_an_error() {
    let big = [0u8; 200 * 1024];
    let err = Builder::new()
        .stack_size(64 * 1024)
        .build::<(), (), u8, _>(move |_, ()| big[0])
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("stack_size"), "{err}");
}

#[test]
fn deep_recursion_within_the_stack_works() {
    #[inline(never)]
    fn depth(n: u32) -> u32 {
        let buf = std::hint::black_box([n as u8; 256]);
        if n == 0 {
            0
        } else {
            depth(n - 1) + buf[0] as u32 % 2
        }
    }
    let mut g: Greenlet<u32, (), u32> = Builder::new()
        .stack_size(4 << 20)
        .build(|_, n: u32| depth(n))
        .unwrap();
    assert_eq!(g.resume(5000).into_complete(), Some(2500));
}

/// Counts its drops: a value moved across a switch must be dropped exactly
/// once, on the side that received it.
struct Tagged(Rc<Cell<u32>>, u8);

impl Drop for Tagged {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

#[test]
fn values_in_and_out_of_the_payload_register_are_moved_exactly_once() {
    // A value that fits a word travels in a register, a larger one behind
    // a pointer to the sender's stack: each kind, each way, with a
    // destructor counting that it runs once, where the value ended up.
    let drops = Rc::new(Cell::new(0));

    let d = drops.clone();
    let mut small = Greenlet::new(move |s, first: Option<Box<Tagged>>| {
        assert_eq!(first.as_ref().map(|c| c.1), Some(1));
        drop(first);
        let next = s.suspend(Some(Box::new(Tagged(d, 2))));
        assert!(next.is_none());
        7u8
    });
    let y = small.resume(Some(Box::new(Tagged(drops.clone(), 1))));
    assert_eq!(drops.get(), 1);
    let y = y.into_yielded().flatten().unwrap();
    assert_eq!((y.1, drops.get()), (2, 1));
    drop(y);
    assert_eq!(drops.get(), 2);
    assert_eq!(small.resume(None).into_complete(), Some(7));

    let mut big = Greenlet::new(|s, (c, a): (Tagged, [u64; 3])| {
        let (c, a) = s.suspend((c, a.map(|x| x + 1)));
        let id = c.1;
        drop(c);
        (id, a)
    });
    let (c, a) = big
        .resume((Tagged(drops.clone(), 3), [7, 8, 9]))
        .into_yielded()
        .unwrap();
    assert_eq!((c.1, a, drops.get()), (3, [8, 9, 10], 2));
    assert_eq!(big.resume((c, a)).into_complete(), Some((3, [8, 9, 10])));
    assert_eq!(drops.get(), 3);
}

#[test]
fn started_and_finished_follow_the_greenlets_life() {
    let mut g = Greenlet::new(|s, ()| s.suspend(1u8));
    assert!(!g.is_started() && !g.is_finished());
    assert_eq!(g.resume(()).into_yielded(), Some(1));
    assert!(g.is_started() && !g.is_finished());
    assert_eq!(g.resume(()).into_complete(), Some(()));
    assert!(g.is_started() && g.is_finished());
    assert!(g.stack_range().is_none());
}
