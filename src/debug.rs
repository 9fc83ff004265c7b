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
//!   direction;
//! * [`stall_detector`] starts a watchdog thread that reports, from outside,
//!   a loop stuck in one greenlet: which greenlet, and for how long.
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
use std::panic::Location;
use std::sync::atomic::Ordering;

use crate::greenlet::{self, Greenlet};
use crate::slice::{self, Occupied};
use crate::stack::{self, HeaderState, StackHeader};
pub use crate::stall::{Stall, StallDetector};
pub use crate::switch_hook::{SwitchEvent, SwitchKind, set_switch_hook};
pub use crate::wait::Wait;

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
    /// The stack of a suspended greenlet, trimmed to its own frames (or a
    /// line saying why it was not captured: see [`backtrace`]).
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
        if let Some(info) = info_from_header(h) {
            greenlets.push(info);
        }
    }
    // Sliced greenlets whose frames are off their shared stack (its header
    // above showed the one on it): brought back in for their backtrace,
    // unless the dump runs inside a sliced greenlet of that stack.
    for slice in slice::sliced_out() {
        // SAFETY: collected just now; capturing runs no greenlet code, so
        // no greenlet finishes meanwhile.
        let slice = unsafe { &*slice };
        if slice.try_occupy() == Occupied::Yes {
            greenlets.extend(info_from_header(slice.stack_header()));
            continue;
        }
        let Some(fields) = slice.fields_out() else {
            continue;
        };
        greenlets.push(GreenletInfo {
            id: fields.id,
            name: fields.name().map(str::to_owned),
            state: if slice.is_fresh() {
                "not started"
            } else {
                "suspended"
            },
            wait: fields.wait,
            created_at: fields.created_at,
            stack_size: slice.stack_header().map_len() - stack::page_size(),
            backtrace: None,
        });
    }
    Dump { greenlets }
}

/// What the header of a stack says of the greenlet on it; `None` when no
/// greenlet is.
fn info_from_header(h: &StackHeader) -> Option<GreenletInfo> {
    let state = match stack::header_state(h) {
        HeaderState::Free => return None,
        HeaderState::Fresh => "not started",
        HeaderState::Running => "running",
        HeaderState::Suspended => "suspended",
    };
    let backtrace = greenlet::capture_backtrace(h).map(shown);
    Some(GreenletInfo {
        id: h.id.get(),
        name: stack::header_name(h).map(str::to_owned),
        state,
        wait: h.wait.get(),
        created_at: h.created_at.get(),
        stack_size: h.map_len() - stack::page_size(),
        backtrace,
    })
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
/// The capture runs on the greenlet's own stack, below its frames: a
/// greenlet with less than 12 KiB left there is not captured (its guard
/// page would abort the process), and the string says so instead.
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
    greenlet::capture_backtrace(header).map(shown)
}

/// A capture as shown: the greenlet's frames, or why there are none.
fn shown(capture: greenlet::Capture) -> String {
    match capture {
        greenlet::Capture::Backtrace(bt) => trim(&bt.to_string()),
        greenlet::Capture::NoRoom(left) => format!(
            "   (not captured: {left} bytes of its stack are left, and capturing needs {})\n",
            greenlet::CAPTURE_ROOM
        ),
    }
}

/// Cuts a backtrace captured by `greenlet::serve` to the greenlet's frames:
/// drops the frames of the capture itself (`serve` and any above it, down
/// to `Suspender::suspend` exclusive) and everything from the trampoline on
/// (the capturing side), then renumbers.
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
        .rposition(|f| is_frame_of(f[0], "greenhack::greenlet::serve"))
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

/// True if the backtrace line `line` ("  N: name" or "  N: 0xADDR - name")
/// starts the frame of the function `name` itself (a symbol hash suffix
/// allowed), not of one whose name merely begins the same way.
fn is_frame_of(line: &str, name: &str) -> bool {
    let Some((_, rest)) = line.trim_start().split_once(": ") else {
        return false;
    };
    let symbol = rest.rsplit_once(" - ").map_or(rest, |(_, s)| s).trim_end();
    symbol
        .strip_prefix(name)
        .is_some_and(|tail| tail.is_empty() || tail.starts_with("::h"))
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
    crate::reactor::Reactor::current().make_signal_target(dump_if_requested);
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
    crate::reactor::wake_signal_target();
}

/// Run by the signal target's loop between turns: prints a dump if one was
/// requested.
fn dump_if_requested() {
    if DUMP_REQUESTED.load(Ordering::Relaxed) && DUMP_REQUESTED.swap(false, Ordering::Acquire) {
        eprint!("{}", dump());
    }
}

// ----- stall detector -----------------------------------------------------------

/// Starts a watchdog thread that reports, to standard error, every loop that
/// has not switched for longer than `threshold`: which thread, which
/// greenlet is running (id, [`Builder::name`](crate::Builder::name),
/// creation site), once per stall, and how long the stall lasted when it
/// ends. The watchdog stops when the returned guard is dropped.
///
/// A stall is one task poll — one greenlet's turn between two waits — that
/// lasts longer than `threshold`: the greenlet spins, or blocks its thread in
/// a call greenhack does not own (a `std::sync::Mutex` held across a
/// greenhack wait by another greenlet, `std::thread::sleep`, blocking I/O).
/// It is reported within 1.5 × `threshold`. What greenhack's loop does not
/// poll is not watched: code on a plain thread outside any greenlet, and an
/// `as_async` polled by another executor. A loop idle in `epoll_wait` is not
/// stalled.
///
/// ```
/// use std::time::Duration;
///
/// let _detector = greenhack::debug::stall_detector(Duration::from_millis(20));
/// greenhack::Builder::new()
///     .name("spinner")
///     .spawn(|| std::thread::sleep(Duration::from_millis(60))) // blocks the loop
///     .unwrap()
///     .join()
///     .unwrap();
/// // Standard error shows, from the watchdog thread:
/// // greenhack: stall: thread 'main' has been running greenlet 5 'spinner'
/// //   (created at src/main.rs:5:6) for 20.1ms without switching; ...
/// // greenhack: stall over: thread 'main' ran greenlet 5 'spinner' (...) for 60.3ms ...
/// ```
///
/// While a detector is active, each task poll publishes what it runs (a few
/// relaxed stores, and a copy of the greenlet's name when the greenlet
/// changes); with none active the cost is one relaxed load per poll.
///
/// # Panics
///
/// If `threshold` is zero, or the watchdog thread cannot be started.
pub fn stall_detector(threshold: std::time::Duration) -> StallDetector {
    stall_detector_with(threshold, |stall| eprintln!("{stall}"))
}

/// [`stall_detector`], reporting each [`Stall`] to `report` (called on the
/// watchdog thread) instead of standard error.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let s = seen.clone();
/// let detector = greenhack::debug::stall_detector_with(Duration::from_millis(20), move |st| {
///     // The detector watches every loop of the process: keep ours.
///     if st.name.as_deref() == Some("blocking-sleeper") {
///         s.lock().unwrap().push(st.ended);
///     }
/// });
/// greenhack::Builder::new()
///     .name("blocking-sleeper")
///     .spawn(|| std::thread::sleep(Duration::from_millis(100)))
///     .unwrap()
///     .join()
///     .unwrap();
/// greenhack::sleep(Duration::from_millis(20)); // the watchdog sees the loop move
/// drop(detector);
/// // Reported once while stuck, once when it ended.
/// assert_eq!(*seen.lock().unwrap(), [false, true]);
/// ```
///
/// # Panics
///
/// As [`stall_detector`].
pub fn stall_detector_with(
    threshold: std::time::Duration,
    report: impl FnMut(&Stall) + Send + 'static,
) -> StallDetector {
    match crate::stall::start(threshold, Box::new(report)) {
        Ok(d) => d,
        Err(e) => panic!("greenhack: cannot start the stall watchdog thread: {e}"),
    }
}
