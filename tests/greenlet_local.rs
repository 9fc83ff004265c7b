//! Greenlet-locals: one value per greenlet, visible to the futures it waits
//! on, not inherited.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::Poll;

greenhack::greenlet_local! {
    static ID: Cell<u32> = Cell::new(u32::MAX);
    static LOG: RefCell<Vec<u32>> = RefCell::new(Vec::new());
}

#[test]
fn values_are_isolated_between_1000_concurrent_greenlets() {
    greenhack::run(|| {
        let hs: Vec<_> = (0..1000u32)
            .map(|i| {
                greenhack::spawn(move || {
                    assert_eq!(ID.with(Cell::get), u32::MAX, "fresh per greenlet");
                    ID.with(|id| id.set(i));
                    for _ in 0..3 {
                        greenhack::yield_now(); // the other 999 run and set theirs
                        LOG.with(|l| l.borrow_mut().push(ID.with(Cell::get)));
                    }
                    LOG.with(|l| l.borrow().clone())
                })
            })
            .collect();
        for (i, h) in hs.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), [i as u32; 3]);
        }
    });
    assert_eq!(
        ID.with(Cell::get),
        u32::MAX,
        "the thread's own value untouched"
    );
}

#[test]
fn visible_from_the_futures_a_greenlet_waits_on() {
    greenhack::run(|| {
        greenhack::spawn(|| {
            ID.with(|id| id.set(7));
            let mut polls = 0;
            let seen = greenhack::exempt(poll_fn(|cx| {
                polls += 1;
                if polls < 3 {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(ID.with(Cell::get))
            }));
            assert_eq!(seen, 7);
        })
        .join()
        .unwrap();
    });
}

#[test]
fn not_inherited_by_spawned_greenlets() {
    greenhack::run(|| {
        greenhack::spawn(|| {
            ID.with(|id| id.set(1));
            let child = greenhack::spawn(|| ID.with(Cell::get)).join().unwrap();
            assert_eq!(child, u32::MAX);
            assert_eq!(ID.with(Cell::get), 1);
        })
        .join()
        .unwrap();
    });
}
