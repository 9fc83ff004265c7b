//! What a suspended greenlet waits for: the diagnostic record each wait
//! leaves in its greenlet's [`StackHeader`](crate::stack::StackHeader), read
//! by `debug::dump` and the stall detector. Public as [`crate::debug::Wait`].

use std::fmt;
use std::os::fd::RawFd;
use std::time::Instant;

/// What a suspended greenlet waits for, as recorded by greenhack's waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Wait {
    /// Nothing recorded: running, not started, or suspended by a raw
    /// [`Suspender::suspend`](crate::greenlet::Suspender::suspend).
    #[default]
    Nothing,
    /// Socket `fd` to become readable.
    Readable(RawFd),
    /// Socket `fd` to become writable.
    Writable(RawFd),
    /// A timer (`sleep`) until this instant.
    Sleep(Instant),
    /// A future passed to `exempt`, by type name.
    Future(&'static str),
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Wait::Nothing => f.write_str("-"),
            Wait::Readable(fd) => write!(f, "fd {fd} to become readable"),
            Wait::Writable(fd) => write!(f, "fd {fd} to become writable"),
            Wait::Sleep(t) => {
                let now = Instant::now();
                if t > now {
                    write!(f, "sleeping, {:?} left", t - now)
                } else {
                    f.write_str("sleeping, due")
                }
            }
            Wait::Future(name) => write!(f, "future {name}"),
        }
    }
}
