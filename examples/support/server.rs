//! What makes the example servers (`echo`, `http`) fit to face clients that
//! misbehave: their command line, idle and header-read timeouts, and an
//! accept loop that survives running out of file descriptors.
//!
//! * **Timeouts without a timer per request.** Each connection records the
//!   tick of the coarse clock at which it last made progress (a read that
//!   returned data) and at which its current, incomplete request began. A
//!   reaper greenlet advances the clock every tick (a tenth of the shortest
//!   timeout, between 10 ms and 1 s) and cancels the connections past
//!   either limit; cancelling unwinds the handler's stack, which closes its
//!   socket. So the request path pays two stores into the connection's
//!   cache line, not a timer armed and disarmed per wait, and a timeout
//!   fires between its length and one tick later.
//! * **Idle timeout** (`--idle-timeout SECS`, default 60): no progress for
//!   that long, whether the peer sends nothing or stops reading what it is
//!   sent (a write blocked on a full socket buffer makes no progress).
//! * **Header-read timeout** (`--header-timeout SECS`, default 10; HTTP
//!   only): a request must be complete this long after its first byte
//!   arrived, however slowly it trickles in (slowloris).
//! * **Accept errors** are logged at most once a second, with a count of
//!   the ones suppressed meanwhile, and back off (1 ms doubling to 500 ms)
//!   while they last; a connection the peer aborted before it was accepted
//!   is skipped without a pause.
//! * **Out of descriptors** (`EMFILE`, `ENFILE`): the server keeps one spare
//!   descriptor open (`/dev/null`); when `accept` fails for want of one, it
//!   closes the spare and accepts again, which now waits for a connection
//!   (rather than failing at once in a loop that would starve the other
//!   greenlets) and takes the spare's slot. If the spare cannot then be
//!   reopened, the server is still out of descriptors: it closes the new
//!   connection at once (the client sees it closed, rather than waiting in
//!   the backlog for a slot that may never come) and takes the slot back.
//!   This is the reserve-fd technique of libev and nginx.
//!
//! `0` for a timeout disables it.

#![allow(dead_code)] // each example uses its own part of the module

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use greenhack::JoinHandle;
use greenhack::net::TcpStream;

/// The command line of an example server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen (the first argument that is not a flag).
    pub addr: String,
    /// Cancel a connection that made no progress for this long.
    pub idle_timeout: Option<Duration>,
    /// Cancel a connection whose request is incomplete this long after its
    /// first byte (`None` where the protocol has no requests to bound).
    pub header_timeout: Option<Duration>,
    /// How many loops (threads) serve; `None`: one per CPU the process may
    /// use (see `support/threads.rs`).
    pub threads: Option<usize>,
    /// Run the loop hosted inside a tokio `current_thread` runtime
    /// (`greenhack::tokio::run`; feature `tokio`), to measure hosted mode
    /// against standalone.
    pub hosted: bool,
    /// Serve each connection on a sliced greenlet (`Builder::sliced`): no
    /// stack mapping per connection, its live frames on the heap while it
    /// waits.
    pub sliced: bool,
    /// With several threads: one listener, whose loop hands each
    /// connection to the least loaded loop, instead of a `SO_REUSEPORT`
    /// listener per loop.
    pub balanced: bool,
}

impl Config {
    /// Parses `[ADDR] [--threads N] [--idle-timeout SECS] [--header-timeout SECS]` (the
    /// latter only if `headers`); on a bad command line prints the usage
    /// and exits with status 2.
    pub fn from_args(name: &str, default_addr: &str, headers: bool) -> Config {
        let mut cfg = Config {
            addr: default_addr.to_string(),
            idle_timeout: Some(Duration::from_secs(60)),
            header_timeout: headers.then_some(Duration::from_secs(10)),
            threads: None,
            hosted: false,
            sliced: false,
            balanced: false,
        };
        let usage = format!(
            "usage: {name} [ADDR] [--threads N [--balanced] | --hosted] [--sliced] [--idle-timeout SECS]{} (default \
             ADDR {default_addr}, N every CPU; SECS may be fractional, 0 disables)",
            if headers {
                " [--header-timeout SECS]"
            } else {
                ""
            },
        );
        let fail = |msg: &str| -> ! {
            eprintln!("{name}: {msg}\n{usage}");
            std::process::exit(2)
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut secs = || {
                let v = args
                    .next()
                    .unwrap_or_else(|| fail(&format!("{arg} needs a value")));
                match v.parse::<f64>() {
                    Ok(0.0) => None,
                    Ok(s) if s > 0.0 && s < 1e9 => Some(Duration::from_secs_f64(s)),
                    _ => fail(&format!("{arg}: {v:?} is not a number of seconds")),
                }
            };
            match arg.as_str() {
                "--idle-timeout" => cfg.idle_timeout = secs(),
                "--header-timeout" if headers => cfg.header_timeout = secs(),
                "--hosted" => cfg.hosted = true,
                "--sliced" => cfg.sliced = true,
                "--balanced" => cfg.balanced = true,
                "--threads" => {
                    let v = args
                        .next()
                        .unwrap_or_else(|| fail("--threads needs a value"));
                    match v.parse::<usize>() {
                        Ok(n) if n > 0 => cfg.threads = Some(n),
                        _ => fail(&format!("--threads: {v:?} is not a positive number")),
                    }
                }
                "-h" | "--help" => {
                    println!("{usage}");
                    std::process::exit(0)
                }
                flag if flag.starts_with('-') => fail(&format!("unknown flag {flag}")),
                addr => cfg.addr = addr.to_string(),
            }
        }
        cfg
    }
}

/// Progress of one connection, in ticks of its server's clock; what the
/// handler reports and the reaper reads.
pub struct Conn {
    clock: Rc<Cell<u64>>,
    last_progress: Cell<u64>,
    /// When the buffered, incomplete request began; `u64::MAX` if none.
    request_since: Cell<u64>,
}

impl Conn {
    /// The connection made progress (a read returned data).
    #[inline]
    pub fn progress(&self) {
        self.last_progress.set(self.clock.get());
    }

    /// Whether an incomplete request is buffered: starts the header-read
    /// clock at the first call with `true`, stops it at `false`.
    #[inline]
    pub fn request_pending(&self, pending: bool) {
        if !pending {
            self.request_since.set(u64::MAX);
        } else if self.request_since.get() == u64::MAX {
            self.request_since.set(self.clock.get());
        }
    }
}

/// A live connection: its progress, and the handle the reaper cancels it by.
struct Slot {
    conn: Rc<Conn>,
    handle: Option<JoinHandle<()>>,
}

/// Every live connection of the server, and the clock they are timed by.
struct Table {
    clock: Rc<Cell<u64>>,
    /// Limits in ticks (`u64::MAX`: none).
    idle_ticks: u64,
    header_ticks: u64,
    slots: RefCell<Vec<Option<Slot>>>,
    free: RefCell<Vec<usize>>,
}

impl Table {
    fn new(cfg: &Config, tick: Duration) -> Table {
        // One tick more than the limit, so that a connection whose last
        // progress came just before a tick still gets the whole limit.
        let ticks = |t: Option<Duration>| {
            t.map_or(u64::MAX, |t| {
                t.as_nanos().div_ceil(tick.as_nanos()) as u64 + 1
            })
        };
        Table {
            clock: Rc::new(Cell::new(0)),
            idle_ticks: ticks(cfg.idle_timeout),
            header_ticks: ticks(cfg.header_timeout),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
        }
    }

    fn insert(&self, conn: Rc<Conn>) -> usize {
        let slot = Some(Slot { conn, handle: None });
        let mut slots = self.slots.borrow_mut();
        match self.free.borrow_mut().pop() {
            Some(key) => {
                slots[key] = slot;
                key
            }
            None => {
                slots.push(slot);
                slots.len() - 1
            }
        }
    }

    fn remove(&self, key: usize) {
        self.slots.borrow_mut()[key] = None;
        self.free.borrow_mut().push(key);
    }

    /// Advances the clock and cancels the connections past a limit.
    fn tick(&self) {
        let now = self.clock.get() + 1;
        self.clock.set(now);
        let mut expired = Vec::new();
        for slot in self.slots.borrow_mut().iter_mut().flatten() {
            let c = &slot.conn;
            let idle = now.saturating_sub(c.last_progress.get()) >= self.idle_ticks;
            let since = c.request_since.get();
            let slow = since != u64::MAX && now.saturating_sub(since) >= self.header_ticks;
            if idle || slow {
                expired.extend(slot.handle.take());
            }
        }
        // Cancelled handlers unwind at the loop's next turn; their guards
        // then free their slots.
        for handle in expired {
            handle.cancel();
        }
    }
}

/// Frees the connection's slot when its handler returns or is cancelled.
struct SlotGuard(Rc<Table>, usize);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.remove(self.1);
    }
}

/// Accepts connections from `incoming` forever, serving each with
/// `handler` on a greenlet of its own, under the limits of `cfg`.
pub fn serve(
    name: &'static str,
    cfg: &Config,
    incoming: crate::threads::Incoming,
    handler: fn(TcpStream, &Conn),
) -> io::Result<()> {
    let shortest = [cfg.idle_timeout, cfg.header_timeout]
        .into_iter()
        .flatten()
        .min();
    let tick = shortest.map_or(Duration::from_secs(1), |t| {
        (t / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
    });
    let table = Rc::new(Table::new(cfg, tick));
    if shortest.is_some() {
        let table = table.clone();
        drop(greenhack::spawn(move || {
            loop {
                greenhack::sleep(tick);
                table.tick();
            }
        }));
    }
    let mut spare = Spare::open();
    let mut log = ErrorLog::new(name);
    let mut backoff = Backoff::default();
    loop {
        match incoming.accept() {
            Ok(stream) => {
                if !spare.reclaim() {
                    // Accepted with the spare's slot, and there is no other:
                    // out of descriptors. Close the connection at once; the
                    // spare gets its slot back.
                    drop(stream);
                    spare.reclaim();
                    log.error(format_args!("out of file descriptors: connection shed"));
                    continue;
                }
                backoff.reset();
                let conn = Rc::new(Conn {
                    clock: table.clock.clone(),
                    last_progress: Cell::new(table.clock.get()),
                    request_since: Cell::new(u64::MAX),
                });
                let key = table.insert(conn.clone());
                let guard = (SlotGuard(table.clone(), key), incoming.live_guard());
                let builder = if cfg.sliced {
                    // SAFETY: the handlers wait only on greenhack's sockets
                    // and timers, which keep no pointer into a waiting
                    // greenlet's stack.
                    unsafe { greenhack::Builder::new().sliced() }
                } else {
                    greenhack::Builder::new()
                };
                match builder.spawn(move || {
                    let _guard = guard;
                    handler(stream, &conn)
                }) {
                    Ok(handle) => {
                        if let Some(slot) = table.slots.borrow_mut()[key].as_mut() {
                            slot.handle = Some(handle);
                        }
                    }
                    // No memory for a stack: the closure (the stream and
                    // the guard freeing the slot) is dropped with the error.
                    Err(e) => log.error(format_args!("spawn: {e}")),
                }
            }
            Err(e) if is_out_of_fds(&e) => {
                // Free the spare's slot: the next accept waits for a
                // connection (other greenlets run meanwhile and may close
                // theirs) and takes it; see the `Ok` arm.
                if spare.release() {
                    log.error(format_args!("accept: {e}; shedding new connections"));
                } else {
                    log.error(format_args!(
                        "accept: {e}; no spare descriptor to shed with"
                    ));
                    backoff.wait();
                }
            }
            // The peer gave up before we accepted: nothing to back off from.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            // Handed-over connections: the accepting loop is gone.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(e),
            Err(e) => {
                log.error(format_args!("accept: {e}"));
                backoff.wait();
            }
        }
    }
}

fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The spare descriptor of the reserve-fd technique.
struct Spare(Option<File>);

impl Spare {
    fn open() -> Spare {
        Spare(File::open("/dev/null").ok())
    }

    /// Holds the spare again if it was released; false if no descriptor is
    /// left to hold it with.
    #[inline]
    fn reclaim(&mut self) -> bool {
        if self.0.is_none() {
            *self = Spare::open();
        }
        self.0.is_some()
    }

    /// Closes the spare, freeing one descriptor slot; false if there was
    /// none to close (and none can be opened now).
    fn release(&mut self) -> bool {
        self.reclaim();
        self.0.take().is_some()
    }
}

/// Error lines at most once a second, each with the count suppressed since
/// the last one.
struct ErrorLog {
    name: &'static str,
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn new(name: &'static str) -> ErrorLog {
        ErrorLog {
            name,
            last: None,
            suppressed: 0,
        }
    }

    fn error(&mut self, msg: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        match std::mem::take(&mut self.suppressed) {
            0 => eprintln!("{}: {msg}", self.name),
            n => eprintln!(
                "{}: {msg} ({n} more errors suppressed since the last line)",
                self.name
            ),
        }
        self.last = Some(now);
    }
}

/// Exponential back-off between failing accepts: 1 ms doubling to 500 ms,
/// reset by a successful accept.
#[derive(Default)]
struct Backoff(Option<Duration>);

impl Backoff {
    fn wait(&mut self) {
        let d = self.0.map_or(Duration::from_millis(1), |d| {
            (d * 2).min(Duration::from_millis(500))
        });
        self.0 = Some(d);
        greenhack::sleep(d);
    }

    fn reset(&mut self) {
        self.0 = None;
    }
}
