//! The switch hook: a function called on every greenlet switch, for tracers
//! and profilers. Owned here, below [`greenlet`](crate::greenlet) which calls
//! it; public as [`crate::debug::set_switch_hook`].

use std::sync::atomic::{AtomicUsize, Ordering};

/// Which way a switch went, for [`set_switch_hook`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchKind {
    /// A greenlet is about to be resumed (called on the resumer's stack).
    Resume,
    /// A greenlet suspended; control is back with its resumer.
    Suspend,
    /// A greenlet finished (returned, panicked or unwound).
    Finish,
}

/// A switch, as reported to the hook.
#[derive(Clone, Copy, Debug)]
pub struct SwitchEvent<'a> {
    /// Which way.
    pub kind: SwitchKind,
    /// The greenlet switched to or from.
    pub id: u64,
    /// Its name, if it has one.
    pub name: Option<&'a str>,
}

/// The hook as a `fn` address; 0 when unset. A global, so the check on the
/// switch path is one relaxed load with no thread-local access.
static SWITCH_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Sets (or with `None` clears) the function called on every greenlet
/// switch of every thread: before each resume and after each suspend or
/// finish, on the resumer's side. The hook must not switch greenlets itself.
///
/// # Panics in the hook
///
/// A hook that panics aborts the process, after printing
/// `greenhack: the switch hook panicked: <message>` to standard error. The
/// panic cannot unwind into the code that switched (the switch is half
/// done), and quietly disabling the hook would leave a tracer or profiler
/// reporting numbers that silently stopped being true; a hook that can fail
/// should catch its own errors.
///
/// Unset, the cost is a relaxed load and a well-predicted branch per
/// direction (see README, "Switch variants"). The `cpu_accounting` example
/// uses it to account CPU time per greenlet.
///
/// ```
/// use greenhack::debug::{set_switch_hook, SwitchEvent, SwitchKind};
/// use std::sync::atomic::{AtomicU32, Ordering};
///
/// static RESUMES: AtomicU32 = AtomicU32::new(0);
/// fn count(e: SwitchEvent<'_>) {
///     if e.kind == SwitchKind::Resume {
///         RESUMES.fetch_add(1, Ordering::Relaxed);
///     }
/// }
/// set_switch_hook(Some(count));
/// let mut g = greenhack::greenlet::Greenlet::<(), (), ()>::new(|s, ()| s.suspend(()));
/// g.resume(());
/// g.resume(());
/// set_switch_hook(None);
/// assert!(RESUMES.load(Ordering::Relaxed) >= 2);
/// ```
pub fn set_switch_hook(hook: Option<fn(SwitchEvent<'_>)>) {
    SWITCH_HOOK.store(hook.map_or(0, |f| f as usize), Ordering::Release);
}

/// The current hook, 0 if unset.
#[inline(always)]
pub(crate) fn switch_hook() -> usize {
    SWITCH_HOOK.load(Ordering::Relaxed)
}

/// Calls the hook, if one is (still) set.
pub(crate) fn call_switch_hook(kind: SwitchKind, id: u64, name: Option<&str>) {
    let hook = SWITCH_HOOK.load(Ordering::Acquire);
    if hook == 0 {
        return;
    }
    // SAFETY: non-zero values of SWITCH_HOOK are only ever stored from a
    // `fn(SwitchEvent)` by `set_switch_hook`.
    let hook: fn(SwitchEvent<'_>) =
        unsafe { std::mem::transmute::<usize, fn(SwitchEvent<'_>)>(hook) };
    let event = SwitchEvent { kind, id, name };
    // A panic must not unwind from here: the switch is half done (issue 15,
    // defect 8: it aborted with no message, or resumed a running greenlet).
    if let Err(payload) = std::panic::catch_unwind(move || hook(event)) {
        hook_panicked(&*payload);
    }
}

/// Reports a panic of the switch hook and aborts (see `set_switch_hook`).
#[cold]
#[inline(never)]
fn hook_panicked(payload: &(dyn std::any::Any + Send)) -> ! {
    let msg = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a non-string payload)");
    eprintln!(
        "greenhack: the switch hook panicked: {msg}\n\
         greenhack: a switch hook must not panic (the switch it reports is half done); aborting"
    );
    std::process::abort()
}
