//! What belongs to one *logical thread* — a greenlet of a pair, or a plain
//! thread's own stack outside any greenlet: its greenlet-local values
//! ([`crate::local`]) and its active timeout scopes ([`crate::timeout`]).
//!
//! A pair keeps its `Logical` on its greenlet's stack, next to the rest of
//! its state; a plain thread keeps one in a thread-local. `pair::with_logical`
//! finds the current one.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::time::Instant;

/// One logical thread's state.
#[derive(Default)]
pub(crate) struct Logical {
    /// Active timeout scopes, innermost last.
    scopes: RefCell<Vec<Scope>>,
    /// Greenlet-local values, by key address. Few per greenlet: a vector
    /// beats a map.
    locals: RefCell<Vec<(usize, Box<dyn Any>)>>,
    /// The scope whose expiry is unwinding this logical thread, until that
    /// scope closes: the unwind is a timeout, not a panic.
    /// 0: none (scope ids start at 1). Kept small, as the fields below: a
    /// sliced greenlet's switch copies its `Logical` with its frames.
    unwinding_to: Cell<u64>,
    /// The scopes below this index do not fire (`with_async`'s cleanup
    /// after a timeout, which must be able to wait; a greenlet being
    /// cancelled); scopes opened inside the cleanup do.
    shielded: Cell<u32>,
    /// What `shielded` never goes below again: the scopes open when the
    /// greenlet's cancellation began.
    cancelled_below: Cell<u32>,
}

/// An active `timeout` scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Scope {
    pub(crate) deadline: Instant,
    /// Unique per scope: the unwind it raises names it, so only it catches.
    pub(crate) id: u64,
}

thread_local! {
    static NEXT_SCOPE: Cell<u64> = const { Cell::new(1) };
}

impl Logical {
    /// Opens a scope ending at `deadline`; returns its id.
    pub(crate) fn push_scope(&self, deadline: Instant) -> u64 {
        let id = NEXT_SCOPE.with(|n| n.replace(n.get() + 1));
        self.scopes.borrow_mut().push(Scope { deadline, id });
        id
    }

    /// Closes the scope `id` (the innermost).
    pub(crate) fn pop_scope(&self, id: u64) {
        if self.unwinding_to.get() == id {
            // Its own expiry reached it: that unwind ends here.
            self.unwinding_to.set(0);
        }
        let mut scopes = self.scopes.borrow_mut();
        if let Some(i) = scopes.iter().rposition(|s| s.id == id) {
            scopes.remove(i);
        }
    }

    /// The scope whose deadline comes first: it is the one that fires.
    pub(crate) fn earliest_scope(&self) -> Option<Scope> {
        let scopes = self.scopes.borrow();
        let active = scopes
            .get(self.shielded.get() as usize..)
            .unwrap_or_default();
        active.iter().min_by_key(|s| (s.deadline, s.id)).copied()
    }

    /// Suspends every scope open now, for good: a greenlet being
    /// cancelled, whose remaining waits (its destructors') are bounded only
    /// by the scopes they open themselves.
    pub(crate) fn suspend_open_scopes(&self) {
        let open = self.open_scopes();
        self.cancelled_below.set(open);
        self.shielded.set(self.shielded.get().max(open));
    }

    /// Records that an unwind to scope `id` is under way (see
    /// `pair::raise_elapsed`).
    pub(crate) fn begin_unwind_to(&self, id: u64) {
        self.unwinding_to.set(id);
    }

    /// True while an unwind to a timeout scope is under way.
    pub(crate) fn unwinding_to_scope(&self) -> bool {
        self.unwinding_to.get() != 0
    }

    /// Suspends the scopes open now (see `pair::shielded`); returns what
    /// [`unshield`](Self::unshield) restores.
    pub(crate) fn shield(&self) -> u32 {
        self.shielded.replace(self.open_scopes())
    }

    /// Ends a [`shield`](Self::shield), not below a cancellation's floor if
    /// one began meanwhile.
    pub(crate) fn unshield(&self, before: u32) {
        self.shielded.set(before.max(self.cancelled_below.get()));
    }

    /// How many scopes are open (they nest: far fewer than `u32::MAX`).
    fn open_scopes(&self) -> u32 {
        u32::try_from(self.scopes.borrow().len()).expect("timeout scopes nest")
    }

    /// True when no timeout scope is active (the common case: one borrow).
    #[inline]
    pub(crate) fn has_no_scope(&self) -> bool {
        self.scopes.borrow().len() <= self.shielded.get() as usize
    }

    /// The local stored under `key`, created by `init` on first use.
    pub(crate) fn local<T: 'static, R>(
        &self,
        key: usize,
        init: impl FnOnce() -> T,
        f: impl FnOnce(&T) -> R,
    ) -> R {
        let found = self
            .locals
            .borrow()
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| &**v as *const dyn Any);
        let value = match found {
            Some(v) => v,
            None => {
                // `init` runs with no borrow held: it may use other locals.
                let boxed: Box<dyn Any> = Box::new(init());
                let at = &*boxed as *const dyn Any;
                let mut locals = self.locals.borrow_mut();
                // `init` used this very key (made it recursively): ours
                // replaces that value, as with std's `thread_local!`.
                let replaced = match locals.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => Some(std::mem::replace(v, boxed)),
                    None => {
                        locals.push((key, boxed));
                        None
                    }
                };
                drop(locals);
                drop(replaced);
                at
            }
        };
        // SAFETY: boxes do not move when the vector grows, and one is
        // removed (replaced above, or dropped by `Logical`'s `drop`) only
        // when no `with` of its key runs: a reference made here does not
        // outlive `f`, which runs on this logical thread.
        let value = unsafe { &*value };
        f(value
            .downcast_ref::<T>()
            .expect("greenhack: a greenlet-local key maps to its own type"))
    }
}

impl Logical {
    /// Drops the locals newest first, one at a time and with no borrow
    /// held: a value's destructor may use the locals still alive (as a
    /// `thread_local!`'s may); one it makes afresh is dropped in turn.
    pub(crate) fn drop_locals(&self) {
        loop {
            let newest = self.locals.borrow_mut().pop();
            match newest {
                Some(entry) => drop(entry),
                None => break,
            }
        }
    }
}

impl Drop for Logical {
    fn drop(&mut self) {
        // Most greenlets have none: no borrow to take.
        if !self.locals.get_mut().is_empty() {
            self.drop_locals();
        }
    }
}

/// The unwind a timeout scope raises at the wait point of the code inside
/// it; only the scope it names catches it (`crate::time::timeout`).
pub(crate) struct ScopeElapsed(pub(crate) u64);

/// True if `payload` is a timeout scope's unwind.
pub(crate) fn is_elapsed(payload: &(dyn Any + Send)) -> bool {
    payload.is::<ScopeElapsed>()
}
