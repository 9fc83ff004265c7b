//! Seeing through the split stack: greenlet dumps, suspended backtraces and
//! a switch hook.
//!
//! The one real cost of stackful coroutines is that the stack of frames is
//! split between greenlets. This module puts it back together:
//!
//! * [`dump`] lists every greenlet of the thread — id, name, state, what it
//!   waits for, where it was created — with the backtrace of each suspended
//!   one, like Go's SIGQUIT goroutine dump; [`dump_on_signal`] prints it when
//!   the process receives a signal (opt-in);
//! * [`backtrace`] captures the stack of a suspended [`Greenlet`] from
//!   outside;
//! * [`set_switch_hook`] calls a function on every switch, for tracers and
//!   profilers; unset, it costs one relaxed load and a predicted branch per
//!   direction.
//!
//! Backtraces taken *inside* a greenlet already continue into the code that
//! resumed it (the trampoline's CFI, see `asm/`), so panics, gdb's `bt` and
//! `perf --call-graph fp` need nothing from here.
//!
//! # How a suspended greenlet's stack is captured
//!
//! Unwinding a stack needs the registers of its top frame, which only the
//! greenlet itself has. So the capture switches into the greenlet with a
//! tagged request instead of a resume: its pending `suspend` sees the tag,
//! captures `Backtrace::force_capture()` on its own stack and switches
//! straight back; none of its code runs. The frames above that capture (the
//! request handling) and below the greenlet's root (the capturing code) are
//! cut from what is shown.

use std::fmt::{self, Write as _};
use std::os::fd::RawFd;
use std::panic::Location;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::greenlet::{self, Greenlet, HeaderState};
use crate::stack::{self, StackHeader};

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

/// One greenlet in a [`dump`].
#[derive(Debug)]
pub struct GreenletInfo {
    /// The process-unique id.
    pub id: u64,
    /// The name given with `Builder::name`.
    pub name: Option<String>,
    /// Running (the caller itself or one of its resumers), suspended, or
    /// not started.
    pub state: &'static str,
    /// What it waits for.
    pub wait: Wait,
    /// Where it was created.
    pub created_at: Option<&'static Location<'static>>,
    /// Its usable stack size in bytes.
    pub stack_size: usize,
    /// The stack of a suspended greenlet, trimmed to its own frames.
    pub backtrace: Option<String>,
}

/// Every greenlet of the calling thread, from [`dump`]. Its `Display` is the
/// report.
#[derive(Debug)]
pub struct Dump {
    /// The greenlets, most recently created stack first.
    pub greenlets: Vec<GreenletInfo>,
}

/// Lists every live greenlet of the calling thread, with the backtrace of
/// each suspended one.
///
/// ```
/// use greenhack::greenlet::Greenlet;
///
/// let mut g = greenhack::Builder::new()
///     .name("worker")
///     .build::<(), (), (), _>(|s, ()| s.suspend(()))
///     .unwrap();
/// g.resume(());
/// let dump = greenhack::debug::dump();
/// let me = dump.greenlets.iter().find(|i| i.id == g.id()).unwrap();
/// assert_eq!(me.state, "suspended");
/// println!("{dump}");
/// # drop(g);
/// ```
pub fn dump() -> Dump {
    // Collect first: capturing switches into greenlets, and the list must
    // not be walked across that.
    let mut headers: Vec<*const StackHeader> = Vec::new();
    stack::for_each_header(|h| headers.push(h));
    let mut greenlets = Vec::new();
    for h in headers {
        // SAFETY: collected just now from this thread's list; nothing between
        // then and here unmaps a stack (capturing runs no greenlet code).
        let h = unsafe { &*h };
        let state = match greenlet::header_state(h) {
            HeaderState::Free => continue,
            HeaderState::Fresh => "not started",
            HeaderState::Running => "running",
            HeaderState::Suspended => "suspended",
        };
        let backtrace = greenlet::capture_backtrace(h).map(|bt| trim(&bt.to_string()));
        greenlets.push(GreenletInfo {
            id: h.id.get(),
            name: greenlet::header_name(h).map(str::to_owned),
            state,
            wait: h.wait.get(),
            created_at: h.created_at.get(),
            stack_size: h.map_len() - stack::page_size(),
            backtrace,
        });
    }
    Dump { greenlets }
}

impl fmt::Display for Dump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "greenhack: {} greenlet(s) on thread {:?}",
            self.greenlets.len(),
            std::thread::current().name().unwrap_or("<unnamed>")
        )?;
        for g in &self.greenlets {
            write!(f, "\ngreenlet {}", g.id)?;
            if let Some(n) = &g.name {
                write!(f, " '{n}'")?;
            }
            write!(f, ": {}", g.state)?;
            if g.wait != Wait::Nothing {
                write!(f, ", waiting for {}", g.wait)?;
            }
            writeln!(f, " (stack {} KiB)", g.stack_size / 1024)?;
            if let Some(loc) = g.created_at {
                writeln!(f, "  created at {loc}")?;
            }
            if let Some(bt) = &g.backtrace {
                for line in bt.lines() {
                    writeln!(f, "  {line}")?;
                }
            }
        }
        Ok(())
    }
}

/// The backtrace of a suspended greenlet, captured from outside, trimmed to
/// the greenlet's own frames; `None` unless it is suspended.
///
/// ```
/// use greenhack::greenlet::Greenlet;
///
/// #[inline(never)]
/// fn parked_in_here(s: &greenhack::greenlet::Suspender<(), ()>) {
///     s.suspend(());
/// }
/// let mut g = Greenlet::<(), (), ()>::new(|s, ()| parked_in_here(s));
/// g.resume(());
/// let bt = greenhack::debug::backtrace(&mut g).unwrap();
/// assert!(bt.contains("parked_in_here"));
/// # drop(g);
/// ```
pub fn backtrace<I, Y, R>(greenlet: &mut Greenlet<I, Y, R>) -> Option<String> {
    let header = greenlet.header_ref()?;
    greenlet::capture_backtrace(header).map(|bt| trim(&bt.to_string()))
}

/// Cuts a backtrace captured by `serve_control` to the greenlet's frames:
/// drops the frames of the capture itself (down to `Suspender::suspend`
/// exclusive) and everything from the trampoline on (the capturing side),
/// then renumbers.
fn trim(bt: &str) -> String {
    // Group lines into frames: a frame starts with "<spaces><n>: ".
    let mut frames: Vec<Vec<&str>> = Vec::new();
    for line in bt.lines() {
        let t = line.trim_start();
        let is_start = t
            .split_once(": ")
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if is_start || frames.is_empty() {
            frames.push(vec![line]);
        } else {
            frames.last_mut().expect("non-empty").push(line);
        }
    }
    let first = frames
        .iter()
        .rposition(|f| f[0].contains("greenhack::greenlet::serve_control"))
        .map_or(0, |i| i + 1);
    let end = frames
        .iter()
        .position(|f| f[0].contains("greenhack_trampoline"))
        .unwrap_or(frames.len());
    let mut out = String::new();
    for (n, frame) in frames[first.min(end)..end].iter().enumerate() {
        let (_, rest) = frame[0]
            .trim_start()
            .split_once(": ")
            .unwrap_or(("", frame[0]));
        let _ = writeln!(out, "{n:4}: {rest}");
        for l in &frame[1..] {
            let _ = writeln!(out, "{l}");
        }
    }
    out
}

// ----- dump on a signal ---------------------------------------------------------

/// Set by the signal handler; the registered loop prints a dump and clears it.
static DUMP_REQUESTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes the calling thread's loop print a [`dump`] to standard error
/// whenever the process receives `signal` — like Go's SIGQUIT goroutine dump,
/// but opt-in and on a signal of your choice (`libc::SIGUSR1` is a good
/// one):
///
/// ```no_run
/// greenhack::debug::dump_on_signal(libc::SIGUSR1)?;
/// // ... serve; then from a shell: kill -USR1 <pid>
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// The handler only sets a flag and wakes the loop (both async-signal-safe);
/// the dump is taken by the loop between two turns, where every greenlet of
/// the thread is suspended or ready. It is printed the next time this
/// thread's loop runs. A later call moves the dump to the calling thread.
///
/// # Errors
///
/// `sigaction` refused the signal (e.g. `SIGKILL`, or an invalid number).
pub fn dump_on_signal(signal: i32) -> std::io::Result<()> {
    crate::reactor::Reactor::current().make_dump_target();
    // SAFETY: installing a handler that only does async-signal-safe work.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = request_dump as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

extern "C" fn request_dump(_signal: libc::c_int) {
    DUMP_REQUESTED.store(true, Ordering::Release);
    crate::reactor::wake_dump_target();
}

/// Called by the loop between turns: prints a dump if one was requested.
pub(crate) fn dump_if_requested() {
    if DUMP_REQUESTED.load(Ordering::Relaxed) && DUMP_REQUESTED.swap(false, Ordering::Acquire) {
        eprint!("{}", dump());
    }
}

// ----- switch hook ------------------------------------------------------------

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
