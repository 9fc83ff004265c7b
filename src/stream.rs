//! Streams read as iterators: [`exempt_iter`] turns any
//! [`Stream`] into an [`Iterator`] whose `next` waits
//! through [`exempt`](crate::exempt) (the Python library's `exempt_it`).

use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;

use futures_core::Stream;

/// Reads `stream` as a plain [`Iterator`]: each `next` waits for the
/// stream's next item through [`exempt`](crate::exempt), so sync code
/// consumes a database cursor, a message channel or any async sequence with
/// a `for` loop.
///
/// ```
/// use futures_util::stream;
///
/// let rows = stream::iter([1, 2, 3]); // any Stream, Unpin or not
/// let total: i32 = greenhack::exempt_iter(rows).sum();
/// assert_eq!(total, 6);
/// ```
///
/// The stream need not be `Unpin`: it is pinned on the heap, once. Waits
/// work wherever `exempt` does (a greenlet on greenhack's loop, an
/// `as_async` polled by tokio, a plain thread).
///
/// As with `Iterator`, what follows the first `None` is up to the stream;
/// wrap it in [`Iterator::fuse`] if the code reads past the end.
///
/// # Panics
///
/// Each `next` panics where [`exempt`](crate::exempt) does.
pub fn exempt_iter<S: Stream>(stream: S) -> ExemptIter<S> {
    ExemptIter {
        stream: Box::pin(stream),
    }
}

/// The iterator of [`exempt_iter`].
#[must_use = "iterators are lazy and do nothing unless consumed"]
pub struct ExemptIter<S> {
    stream: Pin<Box<S>>,
}

impl<S: Stream> Iterator for ExemptIter<S> {
    type Item = S::Item;

    fn next(&mut self) -> Option<S::Item> {
        let mut stream = self.stream.as_mut();
        crate::pair::exempt(poll_fn(move |cx| stream.as_mut().poll_next(cx)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.stream.size_hint()
    }
}

impl<S> ExemptIter<S> {
    /// The stream, pinned.
    pub fn stream(&mut self) -> Pin<&mut S> {
        self.stream.as_mut()
    }

    /// Gives the stream back.
    pub fn into_inner(self) -> Pin<Box<S>> {
        self.stream
    }
}

impl<S> fmt::Debug for ExemptIter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExemptIter")
            .field("stream", &std::any::type_name::<S>())
            .finish()
    }
}
