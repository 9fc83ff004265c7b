//! I/O readiness: sources registered with the reactor's `epoll`, the
//! readiness each one has latched, and the wakers waiting on it.
//!
//! # The edge-triggered contract
//!
//! Sources are registered edge-triggered, for reading and writing at once,
//! when a socket is created. Readiness reported by `epoll` is latched in the
//! source's slot until an operation that consumes it returns `WouldBlock`
//! ([`Reactor::clear_readiness`]), so an edge that arrives while nobody
//! waits is never lost. As with mio, an operation must be retried until
//! `WouldBlock` before waiting: the socket layer's retry loop
//! (`net::Registered::io`) is the one place that does it. The one exception
//! is a short stream read, which proves the receive buffer drained: the
//! socket layer then drops the latch itself ([`Reactor::mark_drained`]).
//! Readers and writers wait separately; several waiters may wait on one
//! direction of one source (all are woken).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use mio::{Interest, Token};

use super::Reactor;

/// Readiness bits latched per source.
const READABLE: u8 = 1;
const WRITABLE: u8 = 2;
const READ_CLOSED: u8 = 4;
const WRITE_CLOSED: u8 = 8;
const ERROR: u8 = 16;
/// Sticky, never cleared: the peer sent TCP urgent data (`EPOLLPRI`), so
/// `recv` may stop short at the urgent mark with more bytes behind it, and a
/// short read no longer proves the buffer drained (issue 15, defect 4).
const URGENT: u8 = 32;

/// Which way an operation goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Reading, accepting, receiving.
    Read,
    /// Writing, connecting, sending.
    Write,
}

impl Direction {
    /// Bits that end a wait in this direction.
    fn ready_mask(self) -> u8 {
        match self {
            Direction::Read => READABLE | READ_CLOSED | ERROR,
            Direction::Write => WRITABLE | WRITE_CLOSED | ERROR,
        }
    }

    /// Bits an operation's `WouldBlock` clears. Closed states are final and
    /// never cleared. An error is not: the kernel reports a pending socket
    /// error before `EAGAIN`, so `WouldBlock` proves it was consumed (a UDP
    /// socket's ICMP error, returned once by `recv`); left latched, every
    /// later wait would end at once and the retry loop would spin.
    fn clear_mask(self) -> u8 {
        match self {
            Direction::Read => READABLE | ERROR,
            Direction::Write => WRITABLE | ERROR,
        }
    }
}

/// One registered I/O source.
#[derive(Default)]
pub(crate) struct IoSlot {
    /// The registered fd, for `debug::dump`'s "waiting for fd N".
    fd: RawFd,
    readiness: u8,
    readers: Vec<Waker>,
    writers: Vec<Waker>,
}

impl IoSlot {
    /// Latches what `event` reports and moves the waiters it ends into
    /// `wakers` (called by the turn, which wakes them after its borrows end).
    pub(crate) fn latch(&mut self, event: &mio::event::Event, wakers: &mut Vec<Waker>) {
        let mut bits = 0;
        if event.is_readable() {
            bits |= READABLE;
        }
        if event.is_writable() {
            bits |= WRITABLE;
        }
        if event.is_read_closed() {
            bits |= READ_CLOSED;
        }
        if event.is_write_closed() {
            bits |= WRITE_CLOSED;
        }
        if event.is_error() {
            bits |= ERROR;
        }
        if event.is_priority() {
            bits |= URGENT;
        }
        self.readiness |= bits;
        if bits & Direction::Read.ready_mask() != 0 {
            wakers.append(&mut self.readers);
        }
        if bits & Direction::Write.ready_mask() != 0 {
            wakers.append(&mut self.writers);
        }
    }

    fn waiters(&mut self, dir: Direction) -> &mut Vec<Waker> {
        match dir {
            Direction::Read => &mut self.readers,
            Direction::Write => &mut self.writers,
        }
    }
}

impl Reactor {
    /// Registers `source` for reading and writing, edge-triggered.
    pub(crate) fn register<S>(&self, source: &mut S) -> io::Result<Token>
    where
        S: mio::event::Source + AsRawFd,
    {
        let index = self.io.borrow_mut().insert(IoSlot {
            fd: source.as_raw_fd(),
            ..IoSlot::default()
        });
        let token = Token(index + 1);
        // PRIORITY reports TCP urgent data, latched as `URGENT` for
        // `saw_urgent`; no other socket type raises it.
        let interest = Interest::READABLE | Interest::WRITABLE | Interest::PRIORITY;
        if let Err(e) = self.registry.register(source, token, interest) {
            self.io.borrow_mut().remove(index);
            return Err(e);
        }
        Ok(token)
    }

    /// Deregisters `source` and frees its slot. Errors are ignored: the
    /// source is being closed, and the kernel forgets a closed fd anyway.
    pub(crate) fn deregister(&self, source: &mut impl mio::event::Source, token: Token) {
        let _ = self.registry.deregister(source);
        let slot = self.io.borrow_mut().remove(token.0 - 1);
        // Waiters of a closed socket are woken so they observe the closure
        // (they hold a borrow of the socket, so normally there are none).
        if let Some(slot) = slot {
            slot.readers
                .into_iter()
                .chain(slot.writers)
                .for_each(Waker::wake);
        }
    }

    /// True if readiness in `dir` is latched (an event arrived and no
    /// operation has since seen `WouldBlock`).
    pub(crate) fn is_ready(&self, token: Token, dir: Direction) -> bool {
        self.io
            .borrow_mut()
            .get_mut(token.0 - 1)
            .is_none_or(|slot| slot.readiness & dir.ready_mask() != 0)
    }

    /// True once an event reported urgent data (`EPOLLPRI`) on the source:
    /// from then on a short read does not prove the receive buffer drained,
    /// since `recv` stops at the urgent mark.
    pub(crate) fn saw_urgent(&self, token: Token) -> bool {
        self.io
            .borrow()
            .get(token.0 - 1)
            .is_some_and(|slot| slot.readiness & URGENT != 0)
    }

    /// Forgets latched readiness in `dir` without an operation having seen
    /// `WouldBlock`: for a caller that knows the source is drained (a short
    /// stream read).
    pub(crate) fn mark_drained(&self, token: Token, dir: Direction) {
        self.clear_readiness(token, dir);
    }

    /// Clears the readiness an operation's `WouldBlock` disproved; returns
    /// the source's fd (-1 if it is no longer registered).
    pub(crate) fn clear_readiness(&self, token: Token, dir: Direction) -> RawFd {
        match self.io.borrow_mut().get_mut(token.0 - 1) {
            Some(slot) => {
                slot.readiness &= !dir.clear_mask();
                slot.fd
            }
            None => -1,
        }
    }

    /// A future that resolves when `token` is ready in `dir` (or closed, or
    /// in error).
    pub(crate) fn readiness(&self, token: Token, dir: Direction) -> Readiness<'_> {
        Readiness {
            reactor: self,
            token,
            dir,
            registered: None,
        }
    }

    /// Ready when the source is, else registers `cx`'s waker. For poll-based
    /// callers (the `AsyncRead`/`AsyncWrite` impls), which retry their
    /// operation themselves.
    pub(crate) fn poll_ready(
        &self,
        token: Token,
        dir: Direction,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let mut io = self.io.borrow_mut();
        let Some(slot) = io.get_mut(token.0 - 1) else {
            return Poll::Ready(());
        };
        if slot.readiness & dir.ready_mask() != 0 {
            return Poll::Ready(());
        }
        let waiters = slot.waiters(dir);
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        drop(io);
        self.note_interest(cx.waker());
        Poll::Pending
    }

    /// Removes a waiter that stopped waiting (its wait timed out or was
    /// dropped), so waiters do not pile up on a quiet socket.
    fn forget_waiter(&self, token: Token, dir: Direction, waker: WakerId) {
        if let Some(slot) = self.io.borrow_mut().get_mut(token.0 - 1) {
            let waiters = slot.waiters(dir);
            if let Some(i) = waiters.iter().position(|w| WakerId::of(w) == waker) {
                waiters.swap_remove(i);
            }
        }
    }

    /// Wakes every waiter of every source (the reactor is shutting down:
    /// they observe their socket's fate when they next run).
    pub(super) fn wake_all_io_waiters(&self) {
        let mut wakers = Vec::new();
        for slot in self.io.borrow_mut().iter_mut() {
            wakers.append(&mut slot.readers);
            wakers.append(&mut slot.writers);
        }
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// Resolves when `token` is ready in `dir` (or closed, or in error).
/// Dropped before that (a timeout, a cancellation), it takes its waker back
/// out of the source's waiters.
pub(crate) struct Readiness<'a> {
    reactor: &'a Reactor,
    token: Token,
    dir: Direction,
    /// The waker this future left with the source, while pending, by
    /// identity (data and vtable, what `Waker::will_wake` compares): keeping
    /// a clone would cost two atomic operations per wait.
    registered: Option<WakerId>,
}

/// A waker's identity.
#[derive(Clone, Copy, PartialEq, Eq)]
struct WakerId(*const (), *const std::task::RawWakerVTable);

impl WakerId {
    fn of(w: &Waker) -> WakerId {
        WakerId(w.data(), w.vtable())
    }
}

impl std::future::Future for Readiness<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let polled = self.reactor.poll_ready(self.token, self.dir, cx);
        self.registered = match polled {
            // A wake removed the waiters it woke; nothing is left to forget.
            Poll::Ready(()) => None,
            Poll::Pending => Some(WakerId::of(cx.waker())),
        };
        polled
    }
}

impl Drop for Readiness<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.registered.take() {
            self.reactor.forget_waiter(self.token, self.dir, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Regression: a wait that timed out left its waker with the source, and
    /// on a plain thread every wait brings a new waker, so they piled up
    /// until the socket next became ready.
    #[test]
    fn timed_out_waits_leave_no_waiter_behind() {
        let (mut a, _b) = mio::net::UnixStream::pair().unwrap();
        let reactor = Reactor::current();
        let token = reactor.register(&mut a).unwrap();
        for _ in 0..20 {
            let deadline = Instant::now() + Duration::from_millis(1);
            let timed =
                super::super::Deadline::new(reactor.readiness(token, Direction::Read), deadline);
            assert_eq!(super::super::block_on(timed), None, "nothing was written");
        }
        let readers = reactor
            .io
            .borrow_mut()
            .get_mut(token.0 - 1)
            .unwrap()
            .readers
            .len();
        assert_eq!(readers, 0);
        reactor.deregister(&mut a, token);
    }
}
