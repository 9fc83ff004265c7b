//! Greenlet-local storage: a `thread_local!` whose value is per greenlet.
//!
//! Sync code that runs on greenlets often keeps per-request context — a
//! request id, a tracing span, the connection in use — in a thread-local.
//! With greenlets that is wrong: every greenlet of the thread would share
//! it. [`greenlet_local!`](crate::greenlet_local) declares a
//! [`GreenletLocal`] instead: each logical thread (each greenlet, and a
//! plain thread's own stack outside any greenlet) has its own value, made
//! by the initialiser on first use and dropped when the greenlet ends.
//!
//! The value is visible to the futures the greenlet waits on through
//! [`exempt`](crate::exempt) while they are polled by it (they run on its
//! stack, inside its wait), as Python's `contextvars` are to the coroutines
//! a greenlet awaits, and to the destructors that run on its stack while it
//! is cancelled (its frames unwound), as a `thread_local!` is to those of a
//! panicking thread. It is not inherited: a greenlet spawned from another
//! starts with its own fresh value (pass what it needs into its closure).

/// Declares greenlet-local statics: like `std::thread_local!`, one value
/// per greenlet.
///
/// ```
/// use std::cell::Cell;
///
/// greenhack::greenlet_local! {
///     /// The id of the request this greenlet serves.
///     static REQUEST_ID: Cell<u64> = Cell::new(0);
/// }
///
/// greenhack::run(|| {
///     let handlers: Vec<_> = (1..=3)
///         .map(|id| {
///             greenhack::spawn(move || {
///                 REQUEST_ID.with(|r| r.set(id));
///                 greenhack::yield_now(); // the others run and set theirs
///                 REQUEST_ID.with(Cell::get)
///             })
///         })
///         .collect();
///     let seen: Vec<u64> = handlers.into_iter().map(|h| h.join().unwrap()).collect();
///     assert_eq!(seen, [1, 2, 3]);
///     // Outside any greenlet: the thread's own value, untouched.
///     assert_eq!(REQUEST_ID.with(Cell::get), 0);
/// });
/// ```
#[macro_export]
macro_rules! greenlet_local {
    () => {};
    ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = $init:expr; $($rest:tt)*) => {
        $(#[$attr])*
        $vis static $name: $crate::GreenletLocal<$t> = {
            fn __init() -> $t {
                $init
            }
            $crate::GreenletLocal::__new(__init)
        };
        $crate::greenlet_local!($($rest)*);
    };
    ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = $init:expr) => {
        $crate::greenlet_local!($(#[$attr])* $vis static $name: $t = $init;);
    };
}

/// A greenlet-local key, declared with
/// [`greenlet_local!`](crate::greenlet_local): one value per greenlet (and
/// one for a plain thread's own stack), made by the initialiser on first
/// use, dropped when the greenlet ends, not inherited by the greenlets it
/// spawns, and visible to the futures it `exempt`s while they run in its
/// polls.
pub struct GreenletLocal<T: 'static> {
    init: fn() -> T,
}

impl<T: 'static> GreenletLocal<T> {
    #[doc(hidden)]
    pub const fn __new(init: fn() -> T) -> GreenletLocal<T> {
        GreenletLocal { init }
    }

    /// Runs `f` with the current greenlet's value, creating it on first use.
    /// For mutation, store a `Cell` or `RefCell`, as with `thread_local!`.
    pub fn with<R>(&'static self, f: impl FnOnce(&T) -> R) -> R {
        let key = std::ptr::from_ref(self) as usize;
        crate::pair::with_logical(|l| l.local(key, self.init, f))
    }
}

impl<T: 'static> std::fmt::Debug for GreenletLocal<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GreenletLocal").finish_non_exhaustive()
    }
}
