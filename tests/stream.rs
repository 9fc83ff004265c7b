//! `exempt_iter`: async streams read as iterators from sync code.
#![cfg(feature = "futures")]

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use futures_util::stream;

/// A tokio mpsc receiver, read as an iterator by sync code in a greenlet
/// under tokio, fed by a tokio task: every message, in order, then the end.
#[test]
fn a_tokio_channel_read_as_an_iterator() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let got = rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let feeder = tokio::spawn(async move {
            for i in 0..20 {
                tx.send(i).await.unwrap();
                if i % 5 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            // Dropping the sender ends the stream.
        });
        let got = greenhack::as_async(move || {
            let messages = tokio_stream::wrappers::ReceiverStream::new(rx);
            greenhack::exempt_iter(messages).collect::<Vec<_>>()
        })
        .await;
        feeder.await.unwrap();
        got
    });
    assert_eq!(got, (0..20).collect::<Vec<_>>());
}

/// A row stream that waits before each row and is `!Unpin` (its state is
/// an `async` block), like a database driver's query stream; row `broken`
/// is an error.
fn rows(
    n: u32,
    broken: u32,
    log: Rc<RefCell<Vec<String>>>,
) -> impl stream::Stream<Item = Result<String, String>> {
    stream::unfold(0, move |i| {
        let log = log.clone();
        async move {
            if i == n {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await; // the fetch
            log.borrow_mut().push(format!("fetched {i}"));
            let row = if i == broken {
                Err(format!("row {i} is broken"))
            } else {
                Ok(format!("row {i}"))
            };
            Some((row, i + 1))
        }
    })
}

/// Sync code over rows: a `for` loop and `?`.
fn total_length(rows: impl Iterator<Item = Result<String, String>>) -> Result<usize, String> {
    let mut total = 0;
    for row in rows {
        total += row?.len();
    }
    Ok(total)
}

#[test]
fn a_row_stream_read_as_an_iterator() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    let total = rt.block_on(greenhack::as_async(move || {
        total_length(greenhack::exempt_iter(rows(3, u32::MAX, l)))
    }));
    assert_eq!(total, Ok("row 0row 1row 2".len()));
    assert_eq!(*log.borrow(), ["fetched 0", "fetched 1", "fetched 2"]);
    // An error row stops the loop there: later rows are never fetched.
    let l = log.clone();
    log.borrow_mut().clear();
    let total = rt.block_on(greenhack::as_async(move || {
        total_length(greenhack::exempt_iter(rows(5, 1, l)))
    }));
    assert_eq!(total, Err("row 1 is broken".to_string()));
    assert_eq!(*log.borrow(), ["fetched 0", "fetched 1"]);
}

/// On greenhack's own loop, while the iterator waits for the stream's next
/// item, other greenlets run: item 1 can only be produced once another
/// greenlet has run (it waits for that greenlet's signal), so without that
/// the test would hang rather than pass.
#[test]
fn other_greenlets_run_while_the_iterator_waits() {
    let log = Rc::new(RefCell::new(Vec::new()));
    let (a, b) = (log.clone(), log.clone());
    let (tx, rx) = greenhack::sync::oneshot::channel::<()>();
    let rx = Rc::new(RefCell::new(Some(rx)));
    greenhack::run(|| {
        let _reader = greenhack::spawn(move || {
            // Each item is produced by a greenlet, awaited as a future; item
            // 1 waits for the other greenlet's signal.
            let slow = stream::unfold(0, move |i| {
                let rx = rx.clone();
                async move {
                    if i == 3 {
                        return None;
                    }
                    let producer = greenhack::spawn(move || {
                        greenhack::sleep(Duration::from_millis(1));
                        if i == 1 {
                            let rx = rx.borrow_mut().take().expect("item 1 is made once");
                            rx.recv().expect("the other greenlet signals");
                        }
                        i
                    });
                    Some((producer.await.unwrap(), i + 1))
                }
            });
            for i in greenhack::exempt_iter(slow) {
                a.borrow_mut().push(format!("item {i}"));
            }
        });
        let _other = greenhack::spawn(move || {
            greenhack::yield_now();
            b.borrow_mut().push("other".to_string());
            tx.send(()).unwrap();
        });
    });
    let log = log.borrow();
    let items: Vec<_> = log.iter().filter(|l| l.starts_with("item")).collect();
    assert_eq!(items, ["item 0", "item 1", "item 2"]);
    let other = log
        .iter()
        .position(|l| l == "other")
        .expect("the other greenlet ran");
    let item1 = log.iter().position(|l| l == "item 1").unwrap();
    assert!(other < item1, "{log:?}");
}
