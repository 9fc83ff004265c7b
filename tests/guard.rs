//! `with_async`: the cleanup runs, and is told how the body ended, on
//! success, on `?`, on panic and on cancellation.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use greenhack::Exit;

type Log = Rc<RefCell<Vec<String>>>;

/// Pending once (waking itself), then ready: a real suspension of the
/// waiting greenlet, on any executor.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if std::mem::replace(&mut self.0, true) {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Logs its name when dropped: shows the unwind continued past the guard.
struct Dropped(&'static str, Log);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.1.borrow_mut().push(format!("dropped {}", self.0));
    }
}

/// A transaction stand-in: a resource set up and cleaned up asynchronously.
struct Tx {
    rows: Vec<u32>,
}

async fn begin(log: Log) -> Tx {
    YieldOnce(false).await;
    log.borrow_mut().push("begin".into());
    Tx { rows: Vec::new() }
}

/// A cleanup that waits, then records what it was told and that it ran to
/// its end.
async fn finish<T: std::fmt::Debug>(log: &Log, tx: Tx, exit: Exit<'_, T>) {
    let told = match exit {
        Exit::Returned(v) => format!("returned {v:?}"),
        Exit::Panicked(p) => format!("panicked {:?}", p.downcast_ref::<&str>()),
        Exit::Cancelled => "cancelled".to_string(),
        _ => unreachable!(),
    };
    log.borrow_mut()
        .push(format!("cleanup told {told}, rows {:?}", tx.rows));
    YieldOnce(false).await;
    log.borrow_mut().push("cleanup done".into());
}

fn insert(tx: &mut Tx, v: u32) -> Result<(), String> {
    if v == 0 {
        return Err("zero".into());
    }
    tx.rows.push(v);
    Ok(())
}

#[test]
fn success_is_reported_to_the_cleanup() {
    let log = Log::default();
    let l = log.clone();
    let out = greenhack::run(|| {
        greenhack::with_async(
            begin(log.clone()),
            |tx| {
                insert(tx, 1)?;
                greenhack::sleep(Duration::from_millis(1)); // the body waits too
                insert(tx, 2)?;
                Ok::<_, String>(tx.rows.len())
            },
            async |tx, exit| {
                assert!(exit.is_ok());
                finish(&l, tx, exit).await
            },
        )
    });
    assert_eq!(out, Ok(2));
    assert_eq!(
        *log.borrow(),
        [
            "begin",
            "cleanup told returned Ok(2), rows [1, 2]",
            "cleanup done"
        ]
    );
}

#[test]
fn an_error_returned_by_question_mark_is_reported_to_the_cleanup() {
    let log = Log::default();
    let l = log.clone();
    let out = greenhack::with_async(
        begin(log.clone()),
        |tx| {
            insert(tx, 1)?;
            insert(tx, 0)?; // fails: the body returns here
            insert(tx, 2)?;
            Ok::<_, String>(tx.rows.len())
        },
        async |tx, exit| {
            assert!(!exit.is_ok());
            finish(&l, tx, exit).await
        },
    );
    assert_eq!(out, Err("zero".to_string()));
    assert_eq!(
        *log.borrow(),
        [
            "begin",
            "cleanup told returned Err(\"zero\"), rows [1]",
            "cleanup done"
        ]
    );
}

#[test]
fn a_panic_runs_the_cleanup_then_continues_with_its_payload() {
    let log = Log::default();
    let (l, l2) = (log.clone(), log.clone());
    let joined = greenhack::spawn(move || {
        let _outer = Dropped("outer", l2.clone());
        greenhack::with_async(
            begin(l2),
            |tx| {
                insert(tx, 7).unwrap();
                panic!("body failed");
            },
            async |tx, exit: Exit<'_, ()>| finish(&l, tx, exit).await,
        )
    })
    .join();
    let payload = joined.unwrap_err().into_panic();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"body failed"));
    assert_eq!(
        *log.borrow(),
        [
            "begin",
            "cleanup told panicked Some(\"body failed\"), rows [7]",
            "cleanup done",
            "dropped outer",
        ]
    );
}

/// Cancelling the greenlet while the body waits: the cleanup runs, told
/// "cancelled", to its end (its own wait included), and the greenlet then
/// finishes unwinding.
///
/// The cleanup's wait runs while the greenlet is being unwound: this relies
/// on `exempt` blocking the thread on that one wait there (the lead's
/// change, "waits inside Drop during a panic"); before it, it depends on how
/// the unwinding greenlet is resumed.
#[test]
fn cancellation_runs_the_cleanup_told_cancelled() {
    let log = Log::default();
    let (l, l2) = (log.clone(), log.clone());
    let h = greenhack::spawn(move || {
        let _outer = Dropped("outer", l2.clone());
        greenhack::with_async(
            begin(l2.clone()),
            |tx| {
                insert(tx, 3).unwrap();
                l2.borrow_mut().push("body waits".into());
                greenhack::sleep(Duration::from_secs(60));
                unreachable!("cancelled while asleep");
            },
            async |tx, exit: Exit<'_, ()>| finish(&l, tx, exit).await,
        )
    });
    while !log.borrow().iter().any(|e| e == "body waits") {
        greenhack::sleep(Duration::from_millis(1));
    }
    h.cancel();
    assert!(h.join().unwrap_err().is_cancelled());
    assert_eq!(
        *log.borrow(),
        [
            "begin",
            "body waits",
            "cleanup told cancelled, rows [3]",
            "cleanup done",
            "dropped outer",
        ]
    );
}

/// Under tokio (`as_async`), the setup and cleanup are tokio futures.
#[test]
fn works_inside_as_async_under_tokio() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let log = Log::default();
    let l = log.clone();
    let out = rt.block_on(greenhack::as_async(move || {
        greenhack::with_async(
            tokio::time::sleep(Duration::from_millis(1)),
            |()| 5,
            async |(), exit| {
                tokio::time::sleep(Duration::from_millis(1)).await;
                l.borrow_mut().push(format!("{exit:?}"));
            },
        )
    }));
    assert_eq!(out, 5);
    assert_eq!(*log.borrow(), ["Returned(5)"]);
}
