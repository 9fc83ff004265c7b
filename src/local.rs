//! Greenlet-local storage: a `thread_local!` whose value is per greenlet.
//!
//! Sync code that runs on greenlets often keeps per-request context — a
//! request id, a tracing span, the connection in use — in a thread-local.
//! With greenlets that is wrong: every greenlet of the thread would share
//! it. [`greenlet_local!`](crate::greenlet_local) declares a
//! [`GreenletLocal`] instead: each logical thread (each greenlet, and a
//! plain thread's own stack outside any greenlet) has its own value, made
//! by the initialiser on first use and dropped when the greenlet ends
//! (newest first; a value's destructor may use the locals still alive).
//!
//! The value is visible to the futures the greenlet waits on through
//! [`exempt`](crate::exempt) while they are polled by it (they run on its
//! stack, inside its wait), as Python's `contextvars` are to the coroutines
//! a greenlet awaits, and to the destructors that run on its stack while it
//! is cancelled (its frames unwound), as a `thread_local!` is to those of a
//! panicking thread. It is not inherited: a greenlet spawned from another
//! starts with its own fresh value (pass what it needs into its closure).
//!
//! A key has `std::thread::LocalKey`'s `with`, and for `Cell` and `RefCell`
//! values its shortcuts (`get`, `set`, `take`, `replace`, `with_borrow`,
//! `with_borrow_mut`).

use std::cell::{Cell, RefCell};

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
        self.with_init(self.init, f)
    }

    /// Runs `f` with the current greenlet's value, creating it with `init`
    /// (not the declared initialiser) if this is its first use.
    fn with_init<R>(&'static self, init: impl FnOnce() -> T, f: impl FnOnce(&T) -> R) -> R {
        let key = std::ptr::from_ref(self) as usize;
        crate::pair::with_logical(|l| l.local(key, init, f))
    }
}

/// The shortcuts std's `LocalKey<Cell<T>>` has.
///
/// ```
/// use std::cell::Cell;
///
/// greenhack::greenlet_local! {
///     static DEPTH: Cell<u32> = Cell::new(0);
/// }
///
/// DEPTH.set(3);
/// assert_eq!(DEPTH.get(), 3);
/// assert_eq!(DEPTH.replace(4), 3);
/// assert_eq!(DEPTH.take(), 4);
/// let other = greenhack::run(|| greenhack::spawn(|| DEPTH.get()).join().unwrap());
/// assert_eq!(other, 0); // another greenlet's value
/// ```
impl<T: 'static> GreenletLocal<Cell<T>> {
    /// Sets the current greenlet's value; on first use the initialiser does
    /// not run (as std's `LocalKey::set`).
    pub fn set(&'static self, value: T) {
        let value = Cell::new(Some(value));
        self.with_init(
            || Cell::new(value.take().expect("taken once")),
            |c| {
                if let Some(v) = value.take() {
                    c.set(v);
                }
            },
        );
    }

    /// A copy of the current greenlet's value.
    pub fn get(&'static self) -> T
    where
        T: Copy,
    {
        self.with(Cell::get)
    }

    /// Takes the current greenlet's value, leaving `T::default()`.
    pub fn take(&'static self) -> T
    where
        T: Default,
    {
        self.with(Cell::take)
    }

    /// Replaces the current greenlet's value, returning the old one.
    pub fn replace(&'static self, value: T) -> T {
        self.with(|c| c.replace(value))
    }
}

/// The shortcuts std's `LocalKey<RefCell<T>>` has.
///
/// ```
/// use std::cell::RefCell;
///
/// greenhack::greenlet_local! {
///     static TRAIL: RefCell<Vec<&'static str>> = RefCell::new(Vec::new());
/// }
///
/// TRAIL.with_borrow_mut(|t| t.push("parse"));
/// assert_eq!(TRAIL.with_borrow(|t| t.len()), 1);
/// assert_eq!(TRAIL.replace(vec!["x"]), ["parse"]);
/// TRAIL.set(Vec::new());
/// assert!(TRAIL.take().is_empty());
/// ```
impl<T: 'static> GreenletLocal<RefCell<T>> {
    /// Runs `f` with a shared borrow of the current greenlet's value.
    ///
    /// # Panics
    ///
    /// If the value is mutably borrowed (inside `with_borrow_mut`).
    pub fn with_borrow<R>(&'static self, f: impl FnOnce(&T) -> R) -> R {
        self.with(|c| f(&c.borrow()))
    }

    /// Runs `f` with a mutable borrow of the current greenlet's value.
    ///
    /// # Panics
    ///
    /// If the value is already borrowed.
    pub fn with_borrow_mut<R>(&'static self, f: impl FnOnce(&mut T) -> R) -> R {
        self.with(|c| f(&mut c.borrow_mut()))
    }

    /// Sets the current greenlet's value; on first use the initialiser does
    /// not run (as std's `LocalKey::set`).
    ///
    /// # Panics
    ///
    /// If the value is borrowed.
    pub fn set(&'static self, value: T) {
        let value = Cell::new(Some(value));
        self.with_init(
            || RefCell::new(value.take().expect("taken once")),
            |c| {
                if let Some(v) = value.take() {
                    *c.borrow_mut() = v;
                }
            },
        );
    }

    /// Takes the current greenlet's value, leaving `T::default()`.
    ///
    /// # Panics
    ///
    /// If the value is borrowed.
    pub fn take(&'static self) -> T
    where
        T: Default,
    {
        self.with(RefCell::take)
    }

    /// Replaces the current greenlet's value, returning the old one.
    ///
    /// # Panics
    ///
    /// If the value is borrowed.
    pub fn replace(&'static self, value: T) -> T {
        self.with(|c| c.replace(value))
    }
}

impl<T: 'static> std::fmt::Debug for GreenletLocal<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GreenletLocal").finish_non_exhaustive()
    }
}
