//! Property tests: random programs of greenlet and reactor operations,
//! checked against a simple model of what must happen.
//!
//! A case is a set of greenlets, each with a short program of steps (yield,
//! sleep, wait to read a byte from its own socket pair, panic, return a
//! value), and a script the spawning code plays meanwhile (feed a greenlet
//! its byte, cancel it, drop its handle, join it, yield, sleep). The model:
//!
//! * each greenlet runs a prefix of its program, in order, and stops at its
//!   first `Panic` or at its end;
//! * a greenlet nobody cancelled runs its whole program, and its join
//!   returns its value, or its panic with the payload it panicked with;
//! * a cancelled one joins as cancelled, unless it had already finished,
//!   in which case its own outcome stands;
//! * every greenlet's closure (and what it holds) is dropped exactly once,
//!   whether it ran, panicked, was cancelled before or during its run, or
//!   was detached;
//! * once every greenlet is done, no descriptor is left open.
//!
//! A second property drives raw [`Greenlet`](greenhack::greenlet::Greenlet)s
//! by hand (resume with a value, drop): each resume returns what the model
//! says (the value suspended, the closure's result, or its panic), and each
//! closure drops exactly once, whether the greenlet finished, panicked, or
//! was dropped fresh or suspended.
//!
//! A third property panics greenlets whose unwind waits in a `Drop`, and
//! checks that the others never see `std::thread::panicking()` (it found
//! issue 15's defect 2).
//!
//! `PROPTEST_CASES` sets the number of cases (256 by default; CI runs
//! 10,000, see `.ci/run`).

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::rc::Rc;
use std::time::Duration;

use greenhack::JoinHandle;
use greenhack::net::UnixStream;
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
enum Step {
    Yield,
    /// Sleep this many microseconds.
    Sleep(u8),
    /// Read one byte from the greenlet's own socket pair.
    Read,
    Panic,
}

#[derive(Clone, Debug)]
struct Program {
    steps: Vec<Step>,
    value: u8,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Feed(usize),
    Cancel(usize),
    DropHandle(usize),
    Join(usize),
    Yield,
    Sleep(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Yield),
        2 => (0u8..50).prop_map(Step::Sleep),
        3 => Just(Step::Read),
        1 => Just(Step::Panic),
    ]
}

fn program() -> impl Strategy<Value = Program> {
    (prop::collection::vec(step(), 0..5), any::<u8>())
        .prop_map(|(steps, value)| Program { steps, value })
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..n).prop_map(Op::Feed),
        2 => (0..n).prop_map(Op::Cancel),
        1 => (0..n).prop_map(Op::DropHandle),
        2 => (0..n).prop_map(Op::Join),
        2 => Just(Op::Yield),
        1 => (0u8..50).prop_map(Op::Sleep),
    ]
}

fn case() -> impl Strategy<Value = (Vec<Program>, Vec<Op>)> {
    prop::collection::vec(program(), 1..5).prop_flat_map(|progs| {
        let n = progs.len();
        (Just(progs), prop::collection::vec(op(n), 0..12))
    })
}

/// Counts its drops into a shared cell.
struct DropCount(Rc<Cell<u32>>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// What a greenlet's join returned, in the model's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Value(u8),
    Panicked(String),
    Cancelled,
}

fn outcome(r: Result<u8, greenhack::JoinError>) -> Outcome {
    match r {
        Ok(v) => Outcome::Value(v),
        Err(e) if e.is_cancelled() => Outcome::Cancelled,
        Err(e) => {
            let p = e.into_panic();
            Outcome::Panicked(
                p.downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "<non-string payload>".into()),
            )
        }
    }
}

/// The greenlet's own outcome if it runs to its end.
fn model_outcome(id: usize, p: &Program) -> (usize, Outcome) {
    match p.steps.iter().position(|s| matches!(s, Step::Panic)) {
        Some(i) => (i, Outcome::Panicked(format!("greenlet {id} panics"))),
        None => (p.steps.len(), Outcome::Value(p.value)),
    }
}

struct Live {
    handle: Option<JoinHandle<u8>>,
    feeder: UnixStream,
    fed: usize,
    cancelled: bool,
    joined: Option<Outcome>,
}

/// The sockets this process has open. Only sockets: the other properties
/// run on threads of their own, whose reactors (an epoll fd, an eventfd)
/// are opened and closed with them at any moment.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// Plays one case; returns an error describing the first mismatch.
fn play(progs: &[Program], ops: &[Op]) -> Result<(), TestCaseError> {
    // The thread's reactor (epoll, eventfd) is opened on first use.
    greenhack::run(greenhack::yield_now);
    let fds_before = open_fds();
    let log: Rc<RefCell<Vec<(usize, usize)>>> = Rc::default();
    let drops: Vec<Rc<Cell<u32>>> = progs.iter().map(|_| Rc::default()).collect();
    let result = greenhack::run(|| -> Result<Vec<Live>, TestCaseError> {
        let mut live = Vec::new();
        for (id, p) in progs.iter().enumerate() {
            let (a, b) = UnixStream::pair().unwrap();
            let guard = DropCount(drops[id].clone());
            let steps = p.steps.clone();
            let value = p.value;
            let log = log.clone();
            let handle = greenhack::spawn(move || {
                let _guard = guard;
                let mut reader = a;
                for (i, s) in steps.into_iter().enumerate() {
                    log.borrow_mut().push((id, i));
                    match s {
                        Step::Yield => greenhack::yield_now(),
                        Step::Sleep(us) => greenhack::sleep(Duration::from_micros(us.into())),
                        Step::Read => {
                            let mut byte = [0u8; 1];
                            assert_eq!(reader.read(&mut byte).unwrap(), 1);
                        }
                        Step::Panic => std::panic::panic_any(format!("greenlet {id} panics")),
                    }
                }
                value
            });
            live.push(Live {
                handle: Some(handle),
                feeder: b,
                fed: 0,
                cancelled: false,
                joined: None,
            });
        }
        for &op in ops {
            match op {
                Op::Feed(i) => {
                    live[i].feeder.write_all(b"x").ok(); // the reader may be gone
                    live[i].fed += 1;
                }
                Op::Cancel(i) => {
                    if let Some(h) = &live[i].handle {
                        h.cancel();
                        live[i].cancelled = true;
                    }
                }
                Op::DropHandle(i) => drop(live[i].handle.take()),
                Op::Join(i) => {
                    // Joining a greenlet that waits for a byte nobody will
                    // send would hang: feed what its program still reads.
                    let reads = progs[i]
                        .steps
                        .iter()
                        .filter(|s| matches!(s, Step::Read))
                        .count();
                    while live[i].fed < reads {
                        live[i].feeder.write_all(b"x").ok(); // the reader may be gone
                        live[i].fed += 1;
                    }
                    if let Some(h) = live[i].handle.take() {
                        live[i].joined = Some(outcome(h.join()));
                    }
                }
                Op::Yield => greenhack::yield_now(),
                Op::Sleep(us) => greenhack::sleep(Duration::from_micros(us.into())),
            }
        }
        // The end: feed every greenlet what it still reads, join the rest.
        for (i, l) in live.iter_mut().enumerate() {
            let reads = progs[i]
                .steps
                .iter()
                .filter(|s| matches!(s, Step::Read))
                .count();
            while l.fed < reads {
                l.feeder.write_all(b"x").ok(); // the reader may be gone
                l.fed += 1;
            }
        }
        for l in live.iter_mut() {
            if let Some(h) = l.handle.take() {
                l.joined = Some(outcome(h.join()));
            }
        }
        // Detached greenlets finish on their own: wait for their drops.
        for _ in 0..1000 {
            if drops.iter().all(|d| d.get() >= 1) {
                break;
            }
            greenhack::sleep(Duration::from_micros(100));
        }
        Ok(live)
    });
    let live = result?;
    let log = log.borrow();
    for (id, p) in progs.iter().enumerate() {
        let ran: Vec<usize> = log
            .iter()
            .filter(|(g, _)| *g == id)
            .map(|(_, i)| *i)
            .collect();
        let (last, own) = model_outcome(id, p);
        // A prefix of the program, in order, stopping at the first panic.
        prop_assert!(
            ran.iter().copied().eq(0..ran.len()),
            "greenlet {id} ran steps {ran:?}"
        );
        let full = (last + 1).min(p.steps.len());
        prop_assert!(
            ran.len() <= full,
            "greenlet {id} ran {ran:?} past its end {full}"
        );
        prop_assert_eq!(
            drops[id].get(),
            1,
            "greenlet {}'s closure dropped {} times",
            id,
            drops[id].get()
        );
        let l = &live[id];
        if let Some(got) = &l.joined {
            if l.cancelled {
                prop_assert!(
                    *got == Outcome::Cancelled || *got == own,
                    "greenlet {id}: cancelled, joined with {got:?}, own outcome {own:?}"
                );
            } else {
                prop_assert_eq!(got, &own, "greenlet {} joined wrongly", id);
            }
            if *got == own {
                prop_assert_eq!(
                    ran.len(),
                    full,
                    "greenlet {} finished without running all its steps",
                    id
                );
            }
        } else if !l.cancelled {
            // Detached and never cancelled: it ran to its end.
            prop_assert_eq!(ran.len(), full, "detached greenlet {} stopped early", id);
        }
    }
    drop(live); // closes the feeders
    prop_assert_eq!(open_fds(), fds_before, "descriptors leaked");
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn greenlets_follow_the_model((progs, ops) in case()) {
        quiet_expected_panics();
        play(&progs, &ops)?;
    }

    #[test]
    fn raw_greenlets_follow_the_model((progs, ops) in raw_case()) {
        quiet_expected_panics();
        play_raw(&progs, &ops)?;
    }
}

/// The greenlets' own panics are expected: their messages would drown the
/// output. Any other panic is reported as usual.
fn quiet_expected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let expected = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|m| m.starts_with("greenlet ") && m.ends_with(" panics"));
            if !expected {
                default(info);
            }
        }));
    });
}

// ----- raw greenlets -----------------------------------------------------------

/// A raw greenlet's program: at its k-th resume it runs `steps[k]`
/// (suspending with the input plus the number, or panicking); resumed once
/// more after its last step, it returns the input plus `ret`.
#[derive(Clone, Debug)]
struct RawProgram {
    steps: Vec<Option<u32>>, // `None`: panic
    ret: u32,
}

#[derive(Clone, Copy, Debug)]
enum RawOp {
    Resume(usize, u32),
    Drop(usize),
}

fn raw_case() -> impl Strategy<Value = (Vec<RawProgram>, Vec<RawOp>)> {
    let step = prop_oneof![6 => (0u32..1000).prop_map(Some), 1 => Just(None)];
    let prog = (prop::collection::vec(step, 0..5), 0u32..1000)
        .prop_map(|(steps, ret)| RawProgram { steps, ret });
    prop::collection::vec(prog, 1..4).prop_flat_map(|progs| {
        let n = progs.len();
        let op = prop_oneof![
            6 => (0..n, 0u32..1000).prop_map(|(i, x)| RawOp::Resume(i, x)),
            1 => (0..n).prop_map(RawOp::Drop),
        ];
        (Just(progs), prop::collection::vec(op, 0..16))
    })
}

fn play_raw(progs: &[RawProgram], ops: &[RawOp]) -> Result<(), TestCaseError> {
    use greenhack::greenlet::{Greenlet, GreenletResult};
    let drops: Vec<Rc<Cell<u32>>> = progs.iter().map(|_| Rc::default()).collect();
    let mut gs: Vec<Option<Greenlet<u32, u32, u32>>> = progs
        .iter()
        .enumerate()
        .map(|(id, p)| {
            let guard = DropCount(drops[id].clone());
            let p = p.clone();
            Some(Greenlet::new(move |s, mut x| {
                let _guard = guard;
                for step in p.steps {
                    match step {
                        Some(c) => x = s.suspend(x + c),
                        None => std::panic::panic_any(format!("greenlet {id} panics")),
                    }
                }
                x + p.ret
            }))
        })
        .collect();
    let mut resumes = vec![0usize; progs.len()];
    let mut finished = vec![false; progs.len()];
    for &op in ops {
        match op {
            RawOp::Resume(i, x) => {
                let Some(g) = gs[i].as_mut() else { continue };
                if finished[i] {
                    continue;
                }
                let k = resumes[i];
                resumes[i] += 1;
                let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| g.resume(x)));
                let p = &progs[i];
                match (p.steps.get(k), got) {
                    (Some(Some(c)), Ok(GreenletResult::Yielded(y))) => {
                        prop_assert_eq!(y, x + c, "greenlet {} resume {}", i, k)
                    }
                    (Some(None), Err(payload)) => {
                        finished[i] = true;
                        let msg = payload
                            .downcast_ref::<String>()
                            .cloned()
                            .unwrap_or_default();
                        prop_assert_eq!(msg, format!("greenlet {i} panics"));
                    }
                    (None, Ok(GreenletResult::Complete(r))) => {
                        finished[i] = true;
                        prop_assert_eq!(r, x + p.ret, "greenlet {} result", i);
                    }
                    (want, got) => {
                        return Err(TestCaseError::fail(format!(
                            "greenlet {i} resume {k}: step {want:?}, got {:?}",
                            got.map_err(|_| "a panic")
                        )));
                    }
                }
                prop_assert_eq!(g.is_finished(), finished[i]);
                prop_assert_eq!(
                    drops[i].get(),
                    u32::from(finished[i]),
                    "greenlet {} drops",
                    i
                );
            }
            RawOp::Drop(i) => {
                drop(gs[i].take());
                prop_assert_eq!(drops[i].get(), 1, "greenlet {} dropped", i);
            }
        }
    }
    drop(gs);
    for (i, d) in drops.iter().enumerate() {
        prop_assert_eq!(
            d.get(),
            1,
            "greenlet {}'s closure dropped {} times",
            i,
            d.get()
        );
    }
    Ok(())
}

// ----- waits inside a `Drop` during a panic ------------------------------------

/// A greenlet's program for the unwinding property: steps that observe the
/// thread's panic state, and at most one panic whose unwind runs a `Drop`
/// that waits (sleeps) — the `BufWriter` flushing to a slow peer of issue 15.
#[derive(Clone, Copy, Debug)]
enum UnwindStep {
    Yield,
    Sleep(u8),
    /// Record `std::thread::panicking()`: false in a greenlet not unwinding.
    Observe,
    /// Panic with a guard whose `Drop` sleeps this many microseconds.
    PanicWaitingInDrop(u8),
}

fn unwind_case() -> impl Strategy<Value = Vec<Vec<UnwindStep>>> {
    let step = prop_oneof![
        2 => Just(UnwindStep::Yield),
        2 => (0u8..50).prop_map(UnwindStep::Sleep),
        3 => Just(UnwindStep::Observe),
        1 => (0u8..50).prop_map(UnwindStep::PanicWaitingInDrop),
    ];
    prop::collection::vec(prop::collection::vec(step, 0..5), 1..4)
}

/// Sleeps in its `Drop`, and counts the drop.
struct WaitInDrop(u8, Rc<Cell<u32>>);

impl Drop for WaitInDrop {
    fn drop(&mut self) {
        greenhack::sleep(Duration::from_micros(self.0.into()));
        self.1.set(self.1.get() + 1);
    }
}

fn play_unwind(progs: &[Vec<UnwindStep>]) -> Result<(), TestCaseError> {
    let seen_panicking: Rc<Cell<Option<usize>>> = Rc::default();
    let waited: Vec<Rc<Cell<u32>>> = progs.iter().map(|_| Rc::default()).collect();
    let outcomes = greenhack::run(|| {
        let handles: Vec<_> = progs
            .iter()
            .enumerate()
            .map(|(id, steps)| {
                let steps = steps.clone();
                let seen = seen_panicking.clone();
                let waited = waited[id].clone();
                greenhack::spawn(move || {
                    for s in steps {
                        match s {
                            UnwindStep::Yield => greenhack::yield_now(),
                            UnwindStep::Sleep(us) => {
                                greenhack::sleep(Duration::from_micros(us.into()))
                            }
                            UnwindStep::Observe => {
                                if std::thread::panicking() {
                                    seen.set(Some(id));
                                }
                            }
                            UnwindStep::PanicWaitingInDrop(us) => {
                                let _g = WaitInDrop(us, waited.clone());
                                std::panic::panic_any(format!("greenlet {id} panics"));
                            }
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| outcome(h.join().map(|()| 0)))
            .collect::<Vec<_>>()
    });
    prop_assert_eq!(
        seen_panicking.get(),
        None,
        "a greenlet that was not unwinding saw std::thread::panicking()"
    );
    for (id, steps) in progs.iter().enumerate() {
        let panics = steps
            .iter()
            .any(|s| matches!(s, UnwindStep::PanicWaitingInDrop(_)));
        let want = if panics {
            Outcome::Panicked(format!("greenlet {id} panics"))
        } else {
            Outcome::Value(0)
        };
        prop_assert_eq!(&outcomes[id], &want, "greenlet {} joined wrongly", id);
        prop_assert_eq!(
            waited[id].get(),
            u32::from(panics),
            "greenlet {}'s waiting drop",
            id
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    // Regression of issue 15, defect 2. Minimal input it found:
    //   progs = [[Yield, Yield, Observe], [PanicWaitingInDrop(2)]]
    // (greenlet 0 observed `std::thread::panicking() == true` while greenlet
    // 1 slept in the `Drop` its panic runs).
    #[test]
    fn a_wait_in_drop_during_a_panic_stays_in_its_greenlet(progs in unwind_case()) {
        quiet_expected_panics();
        play_unwind(&progs)?;
    }
}
