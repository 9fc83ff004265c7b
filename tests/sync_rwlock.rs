//! `greenhack::sync::RwLock`: shared readers, exclusive writers, arrival
//! order, poisoning.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::TryLockError;
use std::time::Duration;

use greenhack::sync::RwLock;

/// How long each holder keeps the lock: far longer than spawning the five
/// contenders takes, also under Valgrind or qemu-user (2 ms was not).
const HOLD: Duration = Duration::from_millis(100);

#[test]
fn readers_share_writers_exclude() {
    let lock = Rc::new(RwLock::new(0));
    let log = Rc::new(RefCell::new(Vec::new()));
    greenhack::run(|| {
        let spawn = |kind: &'static str| {
            let (lock, log) = (lock.clone(), log.clone());
            greenhack::spawn(move || {
                if kind == "w" {
                    let mut g = lock.write().unwrap();
                    log.borrow_mut().push("w+");
                    greenhack::sleep(HOLD);
                    *g += 1;
                    log.borrow_mut().push("w-");
                } else {
                    let _g = lock.read().unwrap();
                    log.borrow_mut().push("r+");
                    greenhack::sleep(HOLD);
                    log.borrow_mut().push("r-");
                }
            })
        };
        // Two readers together, then the writer alone, then the last two
        // readers (queued behind the writer, not barging past it) together.
        let hs: Vec<_> = ["r", "r", "w", "r", "r"]
            .into_iter()
            .map(|k| {
                let h = spawn(k);
                greenhack::yield_now();
                h
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
    });
    assert_eq!(
        *log.borrow(),
        ["r+", "r+", "r-", "r-", "w+", "w-", "r+", "r+", "r-", "r-"]
    );
    assert_eq!(*lock.read().unwrap(), 1);
}

#[test]
fn try_read_and_try_write() {
    let lock = RwLock::new(1);
    let r = lock.try_read().unwrap();
    let r2 = lock.try_read().unwrap();
    assert!(matches!(lock.try_write(), Err(TryLockError::WouldBlock)));
    drop((r, r2));
    let w = lock.try_write().unwrap();
    assert!(matches!(lock.try_read(), Err(TryLockError::WouldBlock)));
    drop(w);
    assert_eq!(lock.into_inner().unwrap(), 1);
}

#[test]
fn cancelled_queued_writer_releases_the_readers_behind_it() {
    let lock = Rc::new(RwLock::new(()));
    greenhack::run(|| {
        let r = lock.read().unwrap();
        let l = lock.clone();
        let writer = greenhack::spawn(move || drop(l.write().unwrap()));
        greenhack::yield_now();
        let l = lock.clone();
        let reader = greenhack::spawn(move || drop(l.read().unwrap()));
        greenhack::yield_now();
        assert!(!reader.is_finished(), "queued behind the writer");
        writer.cancel();
        assert!(writer.join().unwrap_err().is_cancelled());
        join_soon(reader, "the reader stayed queued behind a cancelled writer");
        drop(r);
    });
    assert!(lock.try_write().is_ok());
}

#[test]
fn a_panicking_writer_poisons() {
    let lock = Rc::new(RwLock::new(3));
    greenhack::run(|| {
        let l = lock.clone();
        let h = greenhack::spawn(move || {
            let _w = l.write().unwrap();
            panic!("writer died");
        });
        assert!(h.join().unwrap_err().is_panic());
    });
    assert!(lock.is_poisoned());
    assert_eq!(*lock.read().unwrap_err().into_inner(), 3);
    lock.clear_poison();
    assert_eq!(*lock.read().unwrap(), 3);
}

/// Joins `h` if it finishes within 5 s; otherwise cancels it and fails,
/// naming `what` (a lost hand-off would leave it waiting forever).
fn join_soon<T>(h: greenhack::JoinHandle<T>, what: &str) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !h.is_finished() && std::time::Instant::now() < deadline {
        greenhack::sleep(std::time::Duration::from_millis(1));
    }
    if !h.is_finished() {
        h.cancel();
        panic!("{what}");
    }
    h.join().unwrap()
}
