//! The stall detector: a watchdog thread that notices, from outside, a loop
//! stuck in one greenlet (see [`debug::stall_detector`](crate::debug::stall_detector)).
//!
//! A loop that stops switching — a greenlet spinning, or blocked in a system
//! call greenhack does not own (`std::sync::Mutex::lock`, `std::thread::sleep`,
//! a blocking C library) — stalls every other greenlet of its thread, and
//! nothing on that thread can say so: `debug::dump_on_signal` waits for the
//! loop's next turn, which never comes.
//!
//! # Implementation
//!
//! Each loop thread has a **heartbeat**, created the first time its loop
//! polls a task while a detector is active: a counter and what the current
//! poll runs (greenlet id, name, creation site), all atomics. The reactor
//! calls [`beat`] around every task poll; with no detector active that costs
//! one relaxed load and a branch. With one, the counter says where the loop
//! is, by its value modulo 4:
//!
//! * `0`: between polls (idle in `epoll_wait`, or bookkeeping);
//! * `1`: publishing the next poll's greenlet (only when it changed);
//! * `2`: polling a task.
//!
//! So the counter is also the seqlock guarding the published fields: the
//! watchdog reads them between two loads of the counter and keeps the read
//! only if both loads agree and say `2`. The greenlet's name is copied into
//! the heartbeat (up to 64 bytes) rather than pointed to, since the watchdog
//! must never read memory the loop may free.
//!
//! The watchdog samples every heartbeat each quarter threshold. A counter
//! that says "polling" and has not moved for the threshold is a stall: it is
//! reported once, and again with its length when the counter moves.

use std::cell::{Cell, OnceCell};
use std::collections::HashMap;
use std::fmt;
use std::panic::Location;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::stack::StackHeader;

/// Live detectors; the loop publishes nothing while it is 0.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// Every thread's heartbeat, for the watchdogs.
static HEARTBEATS: Mutex<Vec<Weak<Heartbeat>>> = Mutex::new(Vec::new());

/// Bytes of a greenlet's name kept in a heartbeat.
const NAME_WORDS: usize = 8;
const NAME_BYTES: usize = NAME_WORDS * 8;

/// `name_len` of a greenlet without a name.
const NO_NAME: usize = usize::MAX;

/// One loop thread's heartbeat. Written only by its thread.
struct Heartbeat {
    /// Where the loop is (value mod 4, see the module documentation); it
    /// moves on at every poll.
    counter: AtomicU64,
    /// The polled greenlet's id; 0 for a task that is not a greenlet.
    id: AtomicU64,
    created_at: AtomicPtr<Location<'static>>,
    /// Bytes used in `name`, or `NO_NAME`.
    name_len: AtomicUsize,
    name: [AtomicU64; NAME_WORDS],
    /// The thread's name, for reports.
    thread: String,
}

thread_local! {
    /// This thread's heartbeat once a poll ran under a detector; null before,
    /// and again once the thread's destructors dropped it.
    static HEART: Cell<*const Heartbeat> = const { Cell::new(ptr::null()) };
    /// Keeps the heartbeat alive until the thread exits (the list holds a
    /// `Weak`).
    static HEART_OWNER: OnceCell<HeartOwner> = const { OnceCell::new() };
}

/// Owns a thread's heartbeat; forgets the pointer to it before freeing it,
/// so a poll made by a later thread-exit destructor publishes nothing.
struct HeartOwner(#[allow(dead_code)] Arc<Heartbeat>); // held, never read

impl Drop for HeartOwner {
    fn drop(&mut self) {
        let _ = HEART.try_with(|c| c.set(ptr::null()));
    }
}

/// Marks a task poll for the stall detector; the poll ends when the returned
/// guard drops. `greenlet` names the greenlet the poll resumes; it is only
/// called while a detector is active.
#[inline]
pub(crate) fn beat<'a>(greenlet: impl FnOnce() -> Option<&'a StackHeader>) -> Beat {
    if ACTIVE.load(Ordering::Relaxed) == 0 {
        return Beat(ptr::null());
    }
    beat_slow(greenlet())
}

/// The end of a poll: see [`beat`].
pub(crate) struct Beat(*const Heartbeat);

impl Drop for Beat {
    #[inline]
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: set by `beat_slow` from this thread's heartbeat, which
            // lives until the thread exits; a `Beat` never leaves the
            // `run_ready` frame that made it.
            let h = unsafe { &*self.0 };
            let c = h.counter.load(Ordering::Relaxed);
            h.counter.store(c + 2, Ordering::Release); // 2 -> 0 mod 4: idle
        }
    }
}

#[cold]
fn beat_slow(greenlet: Option<&StackHeader>) -> Beat {
    let Some(h) = heartbeat() else {
        return Beat(ptr::null()); // the thread is exiting
    };
    let c = h.counter.load(Ordering::Relaxed);
    if c % 4 != 0 {
        // A poll inside a poll: the outer one is what the loop waits on.
        return Beat(ptr::null());
    }
    let id = greenlet.map_or(0, |g| g.id.get());
    if id != h.id.load(Ordering::Relaxed) || id == 0 {
        h.counter.store(c + 1, Ordering::Relaxed); // publishing
        fence(Ordering::Release);
        h.id.store(id, Ordering::Relaxed);
        let created_at = greenlet
            .and_then(|g| g.created_at.get())
            .map_or(ptr::null_mut(), |l| ptr::from_ref(l).cast_mut());
        h.created_at.store(created_at, Ordering::Relaxed);
        match greenlet.and_then(crate::stack::header_name) {
            Some(name) => {
                let mut len = name.len().min(NAME_BYTES);
                while !name.is_char_boundary(len) {
                    len -= 1;
                }
                let mut bytes = [0u8; NAME_BYTES];
                bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
                for (word, chunk) in h.name.iter().zip(bytes.chunks_exact(8)) {
                    let chunk: [u8; 8] = chunk.try_into().expect("8 bytes");
                    word.store(u64::from_ne_bytes(chunk), Ordering::Relaxed);
                }
                h.name_len.store(len, Ordering::Relaxed);
            }
            None => h.name_len.store(NO_NAME, Ordering::Relaxed),
        }
    }
    h.counter.store(c + 2, Ordering::Release); // 0 -> 2 mod 4: polling
    Beat(h)
}

/// This thread's heartbeat, registered on first use; `None` once the
/// thread's destructors have run.
fn heartbeat() -> Option<&'static Heartbeat> {
    let p = HEART.try_with(Cell::get).ok()?;
    if !p.is_null() {
        // SAFETY: HEART is non-null only while HEART_OWNER holds the Arc it
        // points into (`HeartOwner::drop` clears it first), and the
        // reference does not outlive the poll that asked for it.
        return Some(unsafe { &*p });
    }
    let thread = std::thread::current();
    let h = Arc::new(Heartbeat {
        counter: AtomicU64::new(0),
        id: AtomicU64::new(0),
        created_at: AtomicPtr::new(ptr::null_mut()),
        name_len: AtomicUsize::new(NO_NAME),
        name: Default::default(),
        thread: match thread.name() {
            Some(n) => n.to_owned(),
            None => format!("{:?}", thread.id()),
        },
    });
    let p = Arc::as_ptr(&h);
    let weak = Arc::downgrade(&h);
    HEART_OWNER
        .try_with(|o| o.set(HeartOwner(h)).is_ok())
        .ok()
        .filter(|&set| set)?;
    HEART.with(|c| c.set(p));
    let mut list = lock(&HEARTBEATS);
    list.retain(|w| w.strong_count() > 0);
    list.push(weak);
    // SAFETY: as above.
    Some(unsafe { &*p })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Heartbeat {
    /// The counter and what the loop polls, if it is polling a task and the
    /// read was not torn by a new poll.
    fn snapshot(&self) -> (u64, Option<Polled>) {
        let c1 = self.counter.load(Ordering::Acquire);
        if c1 % 4 != 2 {
            return (c1, None);
        }
        let id = self.id.load(Ordering::Relaxed);
        let created_at = self.created_at.load(Ordering::Relaxed);
        let len = self.name_len.load(Ordering::Relaxed);
        let mut bytes = [0u8; NAME_BYTES];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(&self.name) {
            chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
        }
        fence(Ordering::Acquire);
        let c2 = self.counter.load(Ordering::Relaxed);
        if c1 != c2 {
            return (c2, None);
        }
        let name = (len != NO_NAME)
            .then(|| String::from_utf8_lossy(&bytes[..len.min(NAME_BYTES)]).into_owned());
        // SAFETY: non-null values come from `&'static Location` in `beat_slow`.
        let created_at = unsafe { created_at.as_ref() };
        let polled = Polled {
            greenlet: (id != 0).then_some(id),
            name,
            created_at,
        };
        (c1, Some(polled))
    }
}

/// What a stalled poll runs.
struct Polled {
    greenlet: Option<u64>,
    name: Option<String>,
    created_at: Option<&'static Location<'static>>,
}

// ----- the public face: debug::stall_detector --------------------------------------

/// A loop that stopped switching, as a stall detector reports it: once when
/// the stall has lasted the threshold, and once more when it ends.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Stall {
    /// The stuck thread's name (or its `ThreadId` if unnamed).
    pub thread: String,
    /// The id of the greenlet running when the loop stopped; `None` if the
    /// stuck task is not a greenlet.
    pub greenlet: Option<u64>,
    /// Its name, from [`Builder::name`](crate::Builder::name) (the first 64
    /// bytes).
    pub name: Option<String>,
    /// Where it was created.
    pub created_at: Option<&'static Location<'static>>,
    /// How long the loop has not switched: at least the threshold in the
    /// first report; the whole stall (to within a quarter threshold) in the
    /// second.
    pub duration: Duration,
    /// False in the first report, true in the one sent when the loop moves
    /// again.
    pub ended: bool,
}

impl fmt::Display for Stall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.ended { "stall over" } else { "stall" };
        write!(f, "greenhack: {what}: thread '{}' ", self.thread)?;
        f.write_str(if self.ended {
            "ran "
        } else {
            "has been running "
        })?;
        match self.greenlet {
            Some(id) => write!(f, "greenlet {id}")?,
            None => f.write_str("a task")?,
        }
        if let Some(n) = &self.name {
            write!(f, " '{n}'")?;
        }
        if let Some(loc) = self.created_at {
            write!(f, " (created at {loc})")?;
        }
        write!(f, " for {:?} without switching", self.duration)?;
        if !self.ended {
            f.write_str(
                "; every other greenlet of the thread waits. Is it blocked in a call greenhack \
                 does not own (std::sync::Mutex, std::thread::sleep, blocking I/O) or spinning? \
                 Use greenhack's waits, or greenhack::unblock for blocking calls",
            )?;
        }
        Ok(())
    }
}

/// A running stall detector: its watchdog thread stops when this is dropped.
/// Made by [`stall_detector`](crate::debug::stall_detector).
#[must_use = "the detector stops when this guard is dropped"]
pub struct StallDetector {
    stop: Arc<(Mutex<bool>, Condvar)>,
    watchdog: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for StallDetector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StallDetector").finish_non_exhaustive()
    }
}

// Unwind safe although a std `thread::JoinHandle` is not: the detector is a
// guard with nothing to read or call but its `Drop`, which joins the
// watchdog whatever state the thread left; its only shared state is the
// `Mutex<bool>` stop flag, which poisoning already makes unwind safe.
impl std::panic::UnwindSafe for StallDetector {}
impl std::panic::RefUnwindSafe for StallDetector {}

impl Drop for StallDetector {
    fn drop(&mut self) {
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
        ACTIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts a detector; see `debug::stall_detector`.
pub(crate) fn start(
    threshold: Duration,
    report: Box<dyn FnMut(&Stall) + Send>,
) -> std::io::Result<StallDetector> {
    assert!(
        !threshold.is_zero(),
        "greenhack: a stall detector's threshold must be above zero"
    );
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let s = stop.clone();
    ACTIVE.fetch_add(1, Ordering::Relaxed);
    let watchdog = std::thread::Builder::new()
        .name("greenhack-stall-watchdog".into())
        .spawn(move || watch(threshold, report, &s));
    match watchdog {
        Ok(w) => Ok(StallDetector {
            stop,
            watchdog: Some(w),
        }),
        Err(e) => {
            ACTIVE.fetch_sub(1, Ordering::Relaxed);
            Err(e)
        }
    }
}

/// What the watchdog remembers of one heartbeat.
struct Watch {
    heart: Weak<Heartbeat>,
    /// The counter as last seen, and since when.
    seen: u64,
    since: Instant,
    /// The stall reported for `seen`, to report its end.
    reported: Option<Stall>,
}

/// The watchdog thread.
fn watch(
    threshold: Duration,
    mut report: Box<dyn FnMut(&Stall) + Send>,
    stop: &(Mutex<bool>, Condvar),
) {
    let tick = (threshold / 4).max(Duration::from_millis(1));
    let mut watches: HashMap<usize, Watch> = HashMap::new();
    let mut stopped = lock(&stop.0);
    loop {
        stopped = stop
            .1
            .wait_timeout(stopped, tick)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        if *stopped {
            return;
        }
        let now = Instant::now();
        for w in lock(&HEARTBEATS).iter() {
            watches.entry(w.as_ptr() as usize).or_insert_with(|| Watch {
                heart: w.clone(),
                seen: u64::MAX,
                since: now,
                reported: None,
            });
        }
        watches.retain(|_, w| w.heart.strong_count() > 0);
        for w in watches.values_mut() {
            let Some(heart) = w.heart.upgrade() else {
                continue;
            };
            let (counter, polled) = heart.snapshot();
            if counter != w.seen {
                if let Some(mut stall) = w.reported.take() {
                    stall.duration = now - w.since;
                    stall.ended = true;
                    report(&stall);
                }
                w.seen = counter;
                w.since = now;
                continue;
            }
            let stuck_for = now - w.since;
            if let (None, Some(p)) = (&w.reported, polled) {
                if stuck_for >= threshold {
                    let stall = Stall {
                        thread: heart.thread.clone(),
                        greenlet: p.greenlet,
                        name: p.name,
                        created_at: p.created_at,
                        duration: stuck_for,
                        ended: false,
                    };
                    report(&stall);
                    w.reported = Some(stall);
                }
            }
        }
    }
}
