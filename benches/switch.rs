//! Switch benchmark: greenhack's greenlets against three peers' stackful
//! coroutines, the same shapes measured in the same run.
//!
//! ```text
//! cargo bench --bench switch            # every case
//! cargo bench --bench switch -- create  # cases whose name contains "create"
//! GREENHACK_BENCH_QUICK=1 cargo bench --bench switch   # smoke run (CI)
//! ```
//!
//! # The peers (the columns)
//!
//! What each switch is, on x86_64 (aarch64 differs in registers, not in
//! kind):
//!
//! * **greenhack** — our own switch, inline asm at the call site
//!   (`#[inline(always)]`; on aarch64 a routine in `asm/` behind inline
//!   stubs), left by an indirect `jmp`: it never pushes or pops a
//!   return-stack-buffer entry, and the compiler spills only what is live,
//!   as with corosensei's. Values that fit a word cross in a register.
//!   Without the `fp-control` feature (`cargo bench`'s default) it saves no
//!   floating-point control state. `scripts/bench-external` measures the
//!   same shapes from a separate crate, under both release profiles.
//! * **corosensei** (0.3) — inline asm at the call site: the compiler sees
//!   a switch that clobbers the callee-saved registers and spills only what
//!   is live. Resume is a `call`, suspend a `ret`. `Coroutine::resume(x)`
//!   returns `Yield(y)` or `Return(r)`; `Yielder::suspend(y)` returns the
//!   next `x`.
//! * **generator** (0.8, the crate under may's coroutines) — its own asm
//!   `swap_registers`, entered by `call`: it stores rbx, rsp, rbp and r12–r15
//!   into the suspending side's register block (in memory, not on the stack)
//!   and loads the other's, then leaves by `pop` + indirect `jmp`, so the
//!   `call`'s return-stack-buffer entry is never consumed by a `ret`. No
//!   floating-point control state. Around it, each switch walks a
//!   thread-local stack of generator contexts and keeps a reference count,
//!   and values travel through memory as `Option`s: `Generator::send(x)`
//!   stores `Some(x)` in the generator's parameter slot and takes the
//!   yielded `Option` back out (panicking on `None`); `Scope::yield_(y)`
//!   stores `Some(y)` and returns the next `Option<x>`; the first sent value
//!   is read with `Scope::get_yield`.
//! * **context** (3.0, the Rust port of boost.context) — boost's
//!   `jump_fcontext` asm (built by `cc`), entered by `call`: it pushes
//!   MXCSR, the x87 control word, r12–r15, rbx and rbp on the current stack,
//!   swaps `rsp` for the target's saved context pointer, pops the target's
//!   and leaves by indirect `jmp`. It saves the floating-point control state
//!   that greenhack saves only with `fp-control`. The API passes
//!   `Transfer { context, data }`: `Context::resume(data)` consumes the
//!   target context and returns the `Transfer` of whoever switches back (the
//!   context to resume them with, and their `usize` datum, which carries our
//!   `u64`). There is no ambient yielder: code that suspends needs the
//!   resumer's `Context` in hand.
//!
//! # Cases
//!
//! * **flat** — one resume + suspend round trip. The coroutine's body is
//!   `loop { x = suspend(x + 1) }` and the resumer calls `resume` in a plain
//!   loop: the bare cost of the two switches and of passing a value each way,
//!   with every branch as predictable as it can be. generator: `loop { x =
//!   s.yield_(x + 1).expect(..) }` against `x = g.send(x)`. context: the
//!   entry function loops `t = t.context.resume(t.data + 1)` (the crate's own
//!   example shape); the resumer keeps the context it gets back in an
//!   `Option` for its next resume. ns per round trip.
//! * **flat, switch hook set** — the flat case with a no-op
//!   [`set_switch_hook`](greenhack::debug::set_switch_hook) installed: the
//!   cost of a hook when set. Unset, the hook is one relaxed load and a
//!   predicted branch per direction, already inside the **flat** row. The
//!   peers have no such hook: they run their plain flat case again (a second
//!   measurement of it, interleaved like every other).
//! * **nested** — the same round trip, but the coroutine suspends from depth
//!   3 of `#[inline(never)]` functions (body loop → `a` → `b` → `c`, which
//!   suspends) and the resumer calls `resume` inside an `#[inline(never)]`
//!   function called from the timing loop: the shape of an I/O wait deep in
//!   synchronous code, which is what greenhack exists for. Every side is
//!   written the same way, `black_box` around each level's result so that no
//!   call becomes a tail call; what is passed down is each library's handle
//!   for suspending: greenhack's `&Suspender`, corosensei's `&Yielder`,
//!   generator's `&mut Scope`, and for context the resumer's `Context`, kept
//!   in an `Option` local of the entry function and passed down as `&mut`
//!   (as context code must). Here mispredicted returns dominate: the CPU's
//!   return-stack buffer (RSB) holds the return addresses of whichever stack
//!   made the last calls, so after each switch the returns on the other
//!   stack (`c` → `b` → `a` → loop in the coroutine, back up to the timing
//!   loop in the resumer) pop the wrong entries, for any stackful coroutine.
//!   What differs is the switch itself. corosensei's is a call/ret pair
//!   (`call` on resume, `ret` on suspend): in the flat shape the `ret` pops
//!   the entry of the resume's `call` and is predicted, but from depth 3 it
//!   pops the coroutine's own last call and mispredicts too. generator's and
//!   context's are call/jmp: no `ret` of their own, but each switch's `call`
//!   leaves an RSB entry that no `ret` consumes, so the first return on the
//!   other stack pops that one. greenhack's is jmp/jmp: it never touches the
//!   RSB, and its indirect `jmp`s are predicted by the branch-target
//!   predictor at any depth. Every out-of-line frame between `resume` and the
//!   switch adds one more return on the resume path, and so one more
//!   misprediction here. ns per round trip.
//! * **create pooled** — create + resume to completion + drop, with the stack
//!   reused: greenhack with its per-thread pool on (asserted: no `mmap` in the
//!   timed loop); corosensei by taking the stack back with `into_stack` and
//!   handing it to the next coroutine (the ideal pool: no bookkeeping at
//!   all); generator, which has no pool, by its own reuse API: one finished
//!   generator re-initialised with `scoped_init` for each new body (the
//!   closure is placed on the generator's stack, its registers set up anew;
//!   no system call, no heap); context with one `ProtectedFixedSizeStack` and
//!   a new `Context` made on it each time. An fcontext entry function must
//!   never return: the create body's last act is to resume its creator with
//!   the result, and its context is then abandoned, never resumed. That is
//!   sound because nothing on that stack needs dropping (the frame holds a
//!   `Transfer` and a `u64`: like a `longjmp` over plain frames), and the
//!   next `Context::new` builds its frame from the top of the stack over the
//!   old one. ns per coroutine.
//! * **create fresh** — the same with a fresh stack every time: greenhack with
//!   `set_pool_capacity(0)` (asserted: one `mmap` per greenlet), corosensei
//!   with `DefaultStack::new`, generator with `Gn::new_scoped_opt`, context
//!   with `ProtectedFixedSizeStack::new`, all with
//!   [`DEFAULT_STACK_SIZE`](greenhack::stack::DEFAULT_STACK_SIZE) usable bytes
//!   above one guard page (asserted for generator and context, whose sizes
//!   are in words and exclude the guard page, respectively). Dominated by
//!   `mmap`, `mprotect`, `munmap` and page faults; the report also prints
//!   minor page faults per coroutine. generator writes an 8-word footprint at
//!   the bottom of each new stack (its overflow check when the generator
//!   drops), which touches a second page. ns per coroutine.
//! * **floor** — an empty `#[inline(never)]` function called in a loop: the
//!   cheapest thing a call can cost on this machine, the unit of the "floor
//!   ratio" column. It is measured once per column (interleaved like every
//!   other case), so its ratio columns show how much identical measurements
//!   disagree in this run: the noise level. Always runs.
//!
//! Every runner checks what came back: the switch cases that the value
//! passed around grew by exactly one (flat) or three (nested) per round trip,
//! the create cases the sum of their coroutines' results, so a broken side
//! fails instead of looking fast.
//!
//! Allocation stays outside the timed loops: the switch cases reuse one
//! coroutine for the whole run, and none of the libraries allocates on the
//! heap to create one (generator places its bookkeeping and the body's
//! closure on the coroutine's own stack).
//!
//! A "—" cell marks a peer with no faithful version of a case (its runner is
//! `None`): the table shows nothing rather than something else measured
//! under the case's name, and the case's JSON record omits that peer. Every
//! peer has a faithful version of every case today; the nearest miss is
//! generator's pooled create, which has no pool and uses its own
//! re-initialisation instead (above).
//!
//! generator's first run in a process installs its own SIGSEGV/SIGBUS
//! handler (for its guard pages) over greenhack's overflow handler, for the
//! rest of the process: a greenhack stack overflow in this benchmark would
//! not get greenhack's message.
//!
//! # Harness
//!
//! Our own, small (`harness = false`), shared with `benches/bridge.rs` in
//! `benches/common/mod.rs`. For each case, each side is warmed up and
//! calibrated to N iterations per sample (a sample lasts ~3 ms), then S
//! samples (31) are taken: each round runs every side once, the side that
//! goes first rotating round by round, so that drift on a noisy machine hits
//! all alike. Nothing is pinned. Each cell reports the median ns per op, the
//! minimum and the p25–p75 spread over samples; ratios are of medians.
//!
//! The table is printed and written to `target/bench-switch.md`, the medians
//! to `target/bench-switch.json` for `scripts/bench-report`.
//! `GREENHACK_BENCH_QUICK=1` takes 5 short samples. Run without `--bench`
//! (`cargo test --benches`), the binary does a minimal smoke run and writes
//! nothing. Unknown `--flags` are ignored; a positional word keeps only the
//! cases whose name contains it.

use std::hint::black_box;
use std::time::Instant;

use context::stack::ProtectedFixedSizeStack;
use context::{Context, ContextFn, Transfer};
use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult, Yielder};
use generator::{Generator, Gn, Scope};
use greenhack::greenlet::{Greenlet, GreenletResult, Suspender};
use greenhack::stack::{self, DEFAULT_STACK_SIZE, POOL_CAPACITY};

mod common;
use common::{Args, Case, Measured, Runner, cell, ratio};

/// The sides, in column order: greenhack first, then its peers.
const SIDES: [&str; 4] = ["greenhack", "corosensei", "generator", "context"];

/// A case with a runner for every side.
fn case(name: &'static str, runners: [Runner; 4]) -> Case {
    Case::new(name, SIDES, runners.map(Some))
}

/// A switch case's runner: `n` round trips `x = trip(&mut co, x)` in a
/// plain loop, from the value `x` the coroutine last passed back. Each round
/// trip must add `step` to it (checked after each sample). `trip` is a
/// closure or fn item, a static call: inlined, or (`#[inline(never)]`) a
/// direct call from the loop.
fn trips<C: 'static>(
    side: &'static str,
    step: u64,
    mut co: C,
    mut x: u64,
    trip: impl Fn(&mut C, u64) -> u64 + 'static,
) -> Runner {
    Box::new(move |n| {
        // A local, not the captured `x`: the switch is opaque to the
        // compiler, which would otherwise store the captured value back on
        // every round trip.
        let (x0, mut v) = (x, x);
        let start = Instant::now();
        for _ in 0..n {
            v = trip(&mut co, black_box(v));
        }
        let t = start.elapsed();
        x = v;
        assert_eq!(
            black_box(x),
            x0.wrapping_add(n.wrapping_mul(step)),
            "{side}: wrong value after {n} round trips"
        );
        t
    })
}

/// A create case's runner: `n` coroutine lives `one(&mut state, i)`, each
/// returning its argument `i` plus one (the sum is checked after each
/// sample).
fn creates<C: 'static>(
    side: &'static str,
    mut state: C,
    one: impl Fn(&mut C, u64) -> u64 + 'static,
) -> Runner {
    Box::new(move |n| {
        let mut acc = 0u64;
        let start = Instant::now();
        for i in 0..n {
            acc = acc.wrapping_add(one(&mut state, i));
        }
        let t = start.elapsed();
        assert_eq!(
            black_box(acc),
            common::sum_below(n).wrapping_add(n),
            "{side}: wrong sum of {n} results"
        );
        t
    })
}

// ---------------------------------------------------------------------------
// flat

fn gh_flat_body(s: &Suspender<u64, u64>, mut x: u64) {
    loop {
        x = s.suspend(black_box(x.wrapping_add(1)));
    }
}

fn greenhack_flat() -> Runner {
    let g = Greenlet::<u64, u64, ()>::new(gh_flat_body);
    trips("greenhack", 1, g, 0, |g, x| match g.resume(x) {
        GreenletResult::Yielded(y) => y,
        GreenletResult::Complete(()) => unreachable!(),
    })
}

/// The flat case with a (no-op) switch hook set for the duration of each
/// sample: next to the plain flat row it shows what a set hook costs, and
/// that an unset one costs nothing measurable (the flat row's ratio to
/// corosensei).
fn greenhack_flat_hooked() -> Runner {
    fn no_op(e: greenhack::debug::SwitchEvent<'_>) {
        black_box(e.id);
    }
    let mut flat = greenhack_flat();
    Box::new(move |n| {
        greenhack::debug::set_switch_hook(Some(no_op));
        let t = flat(n);
        greenhack::debug::set_switch_hook(None);
        t
    })
}

fn co_flat_body(y: &Yielder<u64, u64>, mut x: u64) {
    loop {
        x = y.suspend(black_box(x.wrapping_add(1)));
    }
}

fn corosensei_flat() -> Runner {
    let co = Coroutine::with_stack(new_coro_stack(), co_flat_body);
    trips("corosensei", 1, co, 0, |co, x| match co.resume(x) {
        CoroutineResult::Yield(y) => y,
        CoroutineResult::Return(()) => unreachable!(),
    })
}

fn gen_flat_body(mut s: GenScope<'_>) -> u64 {
    let mut x = s.get_yield().expect("generator: the first send");
    loop {
        x = s
            .yield_(black_box(x.wrapping_add(1)))
            .expect("generator: a send");
    }
}

fn generator_flat() -> Runner {
    let g = new_generator(gen_flat_body);
    trips("generator", 1, g, 0, |g, x| g.send(x))
}

extern "C" fn ctx_flat_entry(mut t: Transfer) -> ! {
    loop {
        let x = t.data as u64;
        // SAFETY: `t.context` is the resumer, suspended in its `resume`.
        t = unsafe { t.context.resume(black_box(x.wrapping_add(1)) as usize) };
    }
}

fn context_flat() -> Runner {
    let co = CtxCoroutine::new(ctx_flat_entry);
    trips("context", 1, co, 0, |co, x| co.resume(x))
}

// ---------------------------------------------------------------------------
// nested: suspend from depth 3, resume from inside a function.
//
// `black_box` around each callee's result keeps the calls from becoming tail
// calls (jumps), so every level really has a frame and a return. Each runner
// resumes once before timing, so that its coroutine waits in `c`; from then
// on every round trip adds 3 to the value passed around.

#[inline(never)]
fn gh_a(s: &Suspender<u64, u64>, x: u64) -> u64 {
    black_box(gh_b(s, x.wrapping_add(1)))
}

#[inline(never)]
fn gh_b(s: &Suspender<u64, u64>, x: u64) -> u64 {
    black_box(gh_c(s, x.wrapping_add(1)))
}

#[inline(never)]
fn gh_c(s: &Suspender<u64, u64>, x: u64) -> u64 {
    s.suspend(black_box(x)).wrapping_add(1)
}

#[inline(never)]
fn gh_wait(g: &mut Greenlet<u64, u64, ()>, x: u64) -> u64 {
    match g.resume(x) {
        GreenletResult::Yielded(y) => y,
        GreenletResult::Complete(()) => unreachable!(),
    }
}

fn gh_nested_body(s: &Suspender<u64, u64>, mut x: u64) {
    loop {
        x = gh_a(s, x);
    }
}

fn greenhack_nested() -> Runner {
    let mut g = Greenlet::<u64, u64, ()>::new(gh_nested_body);
    let x = gh_wait(&mut g, 0);
    trips("greenhack", 3, g, x, gh_wait)
}

#[inline(never)]
fn co_a(y: &Yielder<u64, u64>, x: u64) -> u64 {
    black_box(co_b(y, x.wrapping_add(1)))
}

#[inline(never)]
fn co_b(y: &Yielder<u64, u64>, x: u64) -> u64 {
    black_box(co_c(y, x.wrapping_add(1)))
}

#[inline(never)]
fn co_c(y: &Yielder<u64, u64>, x: u64) -> u64 {
    y.suspend(black_box(x)).wrapping_add(1)
}

#[inline(never)]
fn co_wait(co: &mut Coroutine<u64, u64, (), DefaultStack>, x: u64) -> u64 {
    match co.resume(x) {
        CoroutineResult::Yield(y) => y,
        CoroutineResult::Return(()) => unreachable!(),
    }
}

fn co_nested_body(y: &Yielder<u64, u64>, mut x: u64) {
    loop {
        x = co_a(y, x);
    }
}

fn corosensei_nested() -> Runner {
    let mut co = Coroutine::with_stack(new_coro_stack(), co_nested_body);
    let x = co_wait(&mut co, 0);
    trips("corosensei", 3, co, x, co_wait)
}

#[inline(never)]
fn gen_a(s: &mut GenScope<'_>, x: u64) -> u64 {
    black_box(gen_b(s, x.wrapping_add(1)))
}

#[inline(never)]
fn gen_b(s: &mut GenScope<'_>, x: u64) -> u64 {
    black_box(gen_c(s, x.wrapping_add(1)))
}

#[inline(never)]
fn gen_c(s: &mut GenScope<'_>, x: u64) -> u64 {
    s.yield_(black_box(x))
        .expect("generator: a send")
        .wrapping_add(1)
}

#[inline(never)]
fn gen_wait(g: &mut Generator<'static, u64, u64>, x: u64) -> u64 {
    g.send(x)
}

fn gen_nested_body(mut s: GenScope<'_>) -> u64 {
    let mut x = s.get_yield().expect("generator: the first send");
    loop {
        x = gen_a(&mut s, x);
    }
}

fn generator_nested() -> Runner {
    let mut g = new_generator(gen_nested_body);
    let x = gen_wait(&mut g, 0);
    trips("generator", 3, g, x, gen_wait)
}

#[inline(never)]
fn ctx_a(parent: &mut Option<Context>, x: u64) -> u64 {
    black_box(ctx_b(parent, x.wrapping_add(1)))
}

#[inline(never)]
fn ctx_b(parent: &mut Option<Context>, x: u64) -> u64 {
    black_box(ctx_c(parent, x.wrapping_add(1)))
}

#[inline(never)]
fn ctx_c(parent: &mut Option<Context>, x: u64) -> u64 {
    ctx_switch(parent, black_box(x)).wrapping_add(1)
}

#[inline(never)]
fn ctx_wait(co: &mut CtxCoroutine, x: u64) -> u64 {
    co.resume(x)
}

/// The nested body: the resumer's context, which every suspend needs, is a
/// local of the entry function passed down by reference.
extern "C" fn ctx_nested_entry(t: Transfer) -> ! {
    let mut parent = Some(t.context);
    let mut x = t.data as u64;
    loop {
        x = ctx_a(&mut parent, x);
    }
}

fn context_nested() -> Runner {
    let mut co = CtxCoroutine::new(ctx_nested_entry);
    let x = ctx_wait(&mut co, 0);
    trips("context", 3, co, x, ctx_wait)
}

// ---------------------------------------------------------------------------
// create + resume to completion + drop

/// One greenhack greenlet's life; returns its result.
#[inline(always)]
fn greenhack_one(i: u64) -> u64 {
    let mut g = Greenlet::<u64, (), u64>::new(|_, x| x.wrapping_add(1));
    match g.resume(black_box(i)) {
        GreenletResult::Complete(r) => r,
        GreenletResult::Yielded(()) => unreachable!(),
    }
}

fn greenhack_create_pooled() -> Runner {
    let mut run = creates("greenhack", (), |_, i| greenhack_one(i));
    Box::new(move |n| {
        // The fresh case empties the pool; put one stack back first.
        stack::set_pool_capacity(POOL_CAPACITY);
        black_box(greenhack_one(0));
        let before = stack::stats();
        let t = run(n);
        let mmaps = stack::stats().mmaps - before.mmaps;
        assert_eq!(mmaps, 0, "create pooled: the timed loop mapped stacks");
        t
    })
}

fn greenhack_create_fresh() -> Runner {
    let mut run = creates("greenhack", (), |_, i| greenhack_one(i));
    Box::new(move |n| {
        stack::set_pool_capacity(0);
        let before = stack::stats();
        let t = run(n);
        let after = stack::stats();
        stack::set_pool_capacity(POOL_CAPACITY);
        assert_eq!(
            after.mmaps - before.mmaps,
            n,
            "create fresh: expected one mmap per greenlet"
        );
        assert_eq!(after.mapped, before.mapped, "create fresh: stacks leaked");
        t
    })
}

/// One corosensei coroutine's life on `stack`; returns its result and the
/// stack.
#[inline(always)]
fn corosensei_one(stack: DefaultStack, i: u64) -> (u64, DefaultStack) {
    let mut co = Coroutine::with_stack(stack, |_: &Yielder<u64, ()>, x: u64| x.wrapping_add(1));
    match co.resume(black_box(i)) {
        CoroutineResult::Return(r) => (r, co.into_stack()),
        CoroutineResult::Yield(()) => unreachable!(),
    }
}

fn corosensei_create_pooled() -> Runner {
    // The reused stack: taken back from each coroutine with `into_stack`.
    let spare = Some(new_coro_stack());
    creates("corosensei", spare, |spare, i| {
        let stack = spare.take().expect("the reused stack");
        let (r, stack) = corosensei_one(stack, i);
        *spare = Some(stack);
        r
    })
}

fn corosensei_create_fresh() -> Runner {
    creates("corosensei", (), |_, i| {
        let (r, stack) = corosensei_one(new_coro_stack(), i);
        drop(stack);
        r
    })
}

/// A corosensei stack with the same usable size as greenhack's default.
fn new_coro_stack() -> DefaultStack {
    DefaultStack::new(DEFAULT_STACK_SIZE).expect("corosensei: mapping a stack")
}

fn gen_create_body(mut s: GenScope<'_>) -> u64 {
    s.get_yield()
        .expect("generator: the first send")
        .wrapping_add(1)
}

fn generator_create_pooled() -> Runner {
    // One generator, run to completion; `scoped_init` then makes each new
    // one in its place, on its stack.
    let mut g = new_generator(gen_create_body);
    assert_eq!(g.send(0), 1);
    assert!(g.is_done());
    creates("generator", g, |g, i| {
        g.scoped_init(gen_create_body);
        g.send(black_box(i))
    })
}

fn generator_create_fresh() -> Runner {
    drop(new_generator(gen_create_body)); // checks the stack size
    creates("generator", (), |_, i| {
        let mut g = Gn::<u64>::new_scoped_opt(GEN_STACK_WORDS, gen_create_body);
        let r = g.send(black_box(i));
        drop(g);
        r
    })
}

/// The create body: returns the resume value plus one to its creator, and
/// is never resumed again. An fcontext entry function must not return, so
/// this resume is its end: the frame is abandoned on its stack, which is
/// sound because nothing in it needs dropping (a `Transfer`, a `u64`).
extern "C" fn ctx_create_entry(t: Transfer) -> ! {
    let r = (t.data as u64).wrapping_add(1);
    // SAFETY: `t.context` is the creator, suspended in its `resume`.
    unsafe { t.context.resume(r as usize) };
    unreachable!("context: a finished coroutine was resumed");
}

/// One context coroutine's life on `stack`; returns its result.
#[inline(always)]
fn context_one(stack: &ProtectedFixedSizeStack, i: u64) -> u64 {
    // SAFETY: `stack` outlives the context, which is never resumed again
    // once it has handed back its result.
    let ctx = unsafe { Context::new(stack, ctx_create_entry) };
    // SAFETY: a fresh context, started with its argument.
    let t = unsafe { ctx.resume(black_box(i) as usize) };
    // `t.context` (the finished coroutine) is a pointer into `stack`:
    // nothing to free.
    t.data as u64
}

fn context_create_pooled() -> Runner {
    creates("context", new_ctx_stack(), |stack, i| context_one(stack, i))
}

fn context_create_fresh() -> Runner {
    creates("context", (), |_, i| {
        let stack = new_ctx_stack();
        let r = context_one(&stack, i);
        drop(stack);
        r
    })
}

// ---------------------------------------------------------------------------
// the peers' plumbing

/// The scope a generator body gets: sends `u64`, yields `u64`.
type GenScope<'s> = Scope<'s, 'static, u64, u64>;

/// generator's stack sizes are in `usize` words, not bytes.
const GEN_STACK_WORDS: usize = DEFAULT_STACK_SIZE / std::mem::size_of::<usize>();

/// A generator with the same usable stack size as greenhack's default.
fn new_generator(body: fn(GenScope<'_>) -> u64) -> Generator<'static, u64, u64> {
    let g = Gn::<u64>::new_scoped_opt(GEN_STACK_WORDS, body);
    assert_eq!(
        g.stack_usage().0,
        GEN_STACK_WORDS,
        "generator: unexpected stack size"
    );
    g
}

/// A context stack with the same usable size as greenhack's default (the
/// size asked for excludes the guard page below it).
fn new_ctx_stack() -> ProtectedFixedSizeStack {
    let stack = ProtectedFixedSizeStack::new(DEFAULT_STACK_SIZE).expect("context: mapping a stack");
    assert_eq!(
        stack.len(),
        DEFAULT_STACK_SIZE,
        "context: unexpected stack size"
    );
    stack
}

/// Passes `x` to the suspended context in `to` and switches to it; returns
/// what it passes back, and leaves in `to` the context that did.
#[inline(always)]
fn ctx_switch(to: &mut Option<Context>, x: u64) -> u64 {
    let ctx = to.take().expect("context: no context to switch to");
    // SAFETY: every context handed around here is suspended in a `resume`
    // (or fresh) on a stack that outlives it.
    let t = unsafe { ctx.resume(x as usize) };
    *to = Some(t.context);
    t.data as u64
}

/// A context-crate coroutine: its stack and, between resumes, its context
/// (the role corosensei's `Coroutine` plays).
struct CtxCoroutine {
    ctx: Option<Context>,
    /// Owns the memory `ctx` points into; never touched otherwise. Whatever
    /// was left on it when this drops holds nothing to drop.
    _stack: ProtectedFixedSizeStack,
}

impl CtxCoroutine {
    fn new(entry: ContextFn) -> CtxCoroutine {
        let stack = new_ctx_stack();
        // SAFETY: the stack moves into the same value as the context (the
        // mapping does not move with it), so it outlives the context.
        let ctx = unsafe { Context::new(&stack, entry) };
        CtxCoroutine {
            ctx: Some(ctx),
            _stack: stack,
        }
    }

    #[inline(always)]
    fn resume(&mut self, x: u64) -> u64 {
        ctx_switch(&mut self.ctx, x)
    }
}

// ---------------------------------------------------------------------------
// floor

#[inline(never)]
fn floor_fn(x: u64) -> u64 {
    x.wrapping_add(1)
}

fn floor() -> Runner {
    Box::new(|n| {
        let start = Instant::now();
        for i in 0..n {
            black_box(floor_fn(black_box(i)));
        }
        start.elapsed()
    })
}

// ---------------------------------------------------------------------------
// main

fn main() {
    let args = Args::from_env();
    let cases = vec![
        case(
            "flat",
            [
                greenhack_flat(),
                corosensei_flat(),
                generator_flat(),
                context_flat(),
            ],
        ),
        case(
            "flat, switch hook set",
            [
                greenhack_flat_hooked(),
                corosensei_flat(),
                generator_flat(),
                context_flat(),
            ],
        ),
        case(
            "nested",
            [
                greenhack_nested(),
                corosensei_nested(),
                generator_nested(),
                context_nested(),
            ],
        ),
        case(
            "create pooled",
            [
                greenhack_create_pooled(),
                corosensei_create_pooled(),
                generator_create_pooled(),
                context_create_pooled(),
            ],
        ),
        case(
            "create fresh",
            [
                greenhack_create_fresh(),
                corosensei_create_fresh(),
                generator_create_fresh(),
                context_create_fresh(),
            ],
        ),
        case("floor", [floor(), floor(), floor(), floor()]),
    ];
    let Some(selected) = args.select(cases, &["floor"]) else {
        return;
    };
    let results = common::run_cases(selected, &args.cfg);
    let md = report(&args, &results);
    println!("\n{md}");

    if args.bench_mode {
        // The same figures for scripts/bench-report: one record per case,
        // peers without a runner for it left out.
        let records: Vec<String> = results
            .iter()
            .filter(|r| r.name != "floor")
            .map(|r| {
                let gh = r.summaries[0].expect("greenhack runs every case");
                let peers: Vec<(&str, f64)> = r.sides[1..]
                    .iter()
                    .zip(&r.summaries[1..])
                    .filter_map(|(side, s)| Some((*side, s.as_ref()?.median)))
                    .collect();
                common::json_record("switch", r.name, gh.median, &peers)
            })
            .collect();
        common::write_report("switch", &md, &records);
    }
}

/// The markdown table.
fn report(args: &Args, results: &[Measured]) -> String {
    let floor = results
        .iter()
        .find(|r| r.name == "floor")
        .expect("floor always runs");
    let floor_medians: Vec<f64> = floor.summaries.iter().flatten().map(|s| s.median).collect();
    let floor_ns = floor_medians.iter().sum::<f64>() / floor_medians.len() as f64;

    let peers = &SIDES[1..];
    let mut md = String::new();
    md.push_str(&format!(
        "## greenhack vs {}: switch benchmark\n\n",
        peers.join(", ")
    ));
    md.push_str(&format!(
        "{}; greenhack/peer columns are greenhack ÷ peer; floor ratio = each side ÷ floor, \
         in column order. — : the peer has no faithful version of the case \
         (see benches/switch.rs).\n\n",
        args.preamble("op"),
    ));
    let mut head = vec!["case".to_string()];
    head.extend(SIDES.iter().map(|s| format!("{s} ns")));
    head.extend(peers.iter().map(|p| format!("greenhack/{p}")));
    head.push("floor ratio".to_string());
    md.push_str(&format!("| {} |\n", head.join(" | ")));
    md.push_str(&format!("|{}\n", "---|".repeat(head.len())));
    for r in results {
        let s = &r.summaries;
        let mut row = vec![r.name.to_string()];
        row.extend(s.iter().map(|s| cell(s.as_ref())));
        row.extend(s[1..].iter().map(|p| match (&s[0], p) {
            (Some(gh), Some(p)) => ratio(gh.median / p.median),
            _ => "—".to_string(),
        }));
        let floors: Vec<String> = s
            .iter()
            .map(|s| match s {
                Some(s) if s.median >= 100.0 * floor_ns => format!("{:.0}×", s.median / floor_ns),
                Some(s) => format!("{:.1}×", s.median / floor_ns),
                None => "—".to_string(),
            })
            .collect();
        row.push(floors.join(" / "));
        md.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    let faulting: Vec<&Measured> = results
        .iter()
        .filter(|r| r.summaries.iter().flatten().any(|s| s.faults >= 0.01))
        .collect();
    if !faulting.is_empty() {
        md.push('\n');
        for r in faulting {
            let per_side: Vec<String> = r
                .sides
                .iter()
                .zip(&r.summaries)
                .filter_map(|(side, s)| Some(format!("{side} {:.2}", s.as_ref()?.faults)))
                .collect();
            md.push_str(&format!(
                "- {}: minor page faults per op: {}\n",
                r.name,
                per_side.join(", ")
            ));
        }
    }
    md.push_str(
        "\nThe floor row measures the same empty call in every column: its ratios are the \
         noise between identical measurements in this run.\n",
    );
    md
}
