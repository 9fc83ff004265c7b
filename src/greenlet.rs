//! The raw primitive: an asymmetric stackful coroutine.
//!
//! A [`Greenlet`] runs a closure on its own guarded stack. [`Greenlet::resume`]
//! switches to it, handing it a value; inside, [`Suspender::suspend`] switches
//! back, handing a value out and receiving the next resume's value. When the
//! closure returns, `resume` returns its result.
//!
//! ```
//! use greenhack::greenlet::{Greenlet, GreenletResult};
//!
//! let mut g = Greenlet::new(|s, first: u32| {
//!     let second = s.suspend(first * 10);
//!     first + second
//! });
//! assert_eq!(g.resume(1), GreenletResult::Yielded(10));
//! assert_eq!(g.resume(2), GreenletResult::Complete(3));
//! assert!(g.is_finished());
//! ```
//!
//! # Panics
//!
//! A panic inside the closure is caught at the root of the greenlet's stack
//! and resumed in the caller of [`resume`](Greenlet::resume), with its
//! original payload. The greenlet is finished afterwards.
//!
//! # Dropping a suspended greenlet
//!
//! Dropping a greenlet that has started but not finished unwinds its stack:
//! the pending `suspend` call panics with a private payload (without running
//! the panic hook), every `Drop` on the greenlet's stack runs, and the unwind
//! is caught at the greenlet's root. Code that catches that unwind with
//! `catch_unwind` and then suspends again, or returns normally, leaves no
//! sound way to finish the drop: the process aborts with a message naming the
//! greenlet.
//!
//! # Threads
//!
//! A suspended stack may hold `!Send` values and addresses of thread locals
//! that the compiler cached across the switch; resuming it on another thread
//! would be undefined behaviour. [`Greenlet`] and [`Suspender`] are therefore
//! neither `Send` nor `Sync`:
//!
//! ```compile_fail
//! use greenhack::greenlet::Greenlet;
//! let g = Greenlet::<(), (), ()>::new(|_, ()| ());
//! std::thread::spawn(move || drop(g));
//! ```
//!
//! ```compile_fail
//! use greenhack::greenlet::Greenlet;
//! let _g = Greenlet::<(), (), ()>::new(|s, ()| {
//!     std::thread::scope(|scope| {
//!         scope.spawn(|| s.suspend(()));
//!     });
//! });
//! ```

use std::any::Any;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::arch;
use crate::slice::Slice;
use crate::stack::{
    self, GreenletFields, HeaderState, Stack, StackHeader, header_name, header_state,
};

/// What [`Greenlet::resume`] returns: the greenlet suspended with a value, or
/// finished with its closure's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GreenletResult<Y, R> {
    /// The greenlet called [`Suspender::suspend`] with this value.
    Yielded(Y),
    /// The greenlet's closure returned this value; the greenlet is finished.
    Complete(R),
}

impl<Y, R> GreenletResult<Y, R> {
    /// The suspended value, if the greenlet suspended.
    pub fn into_yielded(self) -> Option<Y> {
        match self {
            GreenletResult::Yielded(y) => Some(y),
            GreenletResult::Complete(_) => None,
        }
    }

    /// The result, if the greenlet finished.
    pub fn into_complete(self) -> Option<R> {
        match self {
            GreenletResult::Yielded(_) => None,
            GreenletResult::Complete(r) => Some(r),
        }
    }
}

// The switch protocol. Every switch hands the other side two words, in
// registers (see `arch`): a kind and a payload.
//
// * Into a greenlet, the kind is `RESUME` (the payload carries the resume
//   value), `UNWIND` (its owner is dropping it: unwind the stack), or a
//   pointer to a `Control` request tagged with `CONTROL_TAG`.
// * Out of a greenlet, the kind is `YIELD` (the payload carries the
//   suspended value) or, once it finished, a pointer to the `Outcome<R>` on
//   its stack: `Suspender` knows `Y` but not `R`, so only the
//   `Greenlet<I, Y, R>` reads it.
//
// A value travels in the payload register itself when it fits in a word
// (`()`, integers, pointers, references, most `Option`s of those), and
// otherwise as a pointer to a slot on the sender's stack, which stays valid
// while the sender is suspended. In a register, nothing is stored and
// loaded back on either side: a store-to-load round trip per direction was
// on the critical path of every switch.

/// Into a greenlet: resume with the payload's value.
const RESUME: usize = 0;
/// Into a greenlet: its owner drops it; unwind.
const UNWIND: usize = 2;
/// Into a greenlet: the low bit marks a pointer to a `Control` request.
/// Pointers to `Control` are word-aligned, so the bit is free.
const CONTROL_TAG: usize = 1;
/// Out of a greenlet: suspended with the payload's value. Any other kind is
/// a pointer to its `Outcome`.
const YIELD: usize = 0;

/// True if a `T` travels in the payload register rather than behind a
/// pointer.
const fn in_register<T>() -> bool {
    size_of::<T>() <= size_of::<usize>() && align_of::<T>() <= align_of::<usize>()
}

/// Packs `value` into a payload word: its bytes, or the address of `slot`
/// after moving it there.
///
/// # Safety
///
/// `slot` must stay put until the receiver has `unpack`ed the word, which
/// it must do exactly once.
#[inline(always)]
unsafe fn pack<T>(slot: &mut MaybeUninit<T>, value: T) -> usize {
    if in_register::<T>() {
        let mut word = 0usize;
        // SAFETY: T fits in a usize and is no more aligned (checked above).
        unsafe { ptr::write(&mut word as *mut usize as *mut T, value) };
        word
    } else {
        slot.write(value);
        slot.as_ptr() as usize
    }
}

/// Moves the value out of a payload word made by [`pack`].
///
/// # Safety
///
/// `word` came from `pack::<T>`, whose slot (if used) is still in place;
/// each word is unpacked once.
#[inline(always)]
unsafe fn unpack<T>(word: usize) -> T {
    if in_register::<T>() {
        // SAFETY: the word holds a T's bytes, written by `pack`.
        unsafe { ptr::read(&word as *const usize as *const T) }
    } else {
        // SAFETY: the word is the address of the sender's slot.
        unsafe { ptr::read(word as *const T) }
    }
}

/// How a greenlet's closure ended.
enum Outcome<R> {
    Return(R),
    Panic(Box<dyn Any + Send>),
    /// The forced unwind reached the root.
    Unwound,
}

impl<R> Outcome<R> {
    /// # Safety
    ///
    /// `p` points to an initialised outcome that is read only this once.
    unsafe fn take(p: *const Outcome<R>) -> Outcome<R> {
        // Read field by field rather than with one `ptr::read` of the whole
        // enum: the tag and the payload were written by separate stores.
        // SAFETY: per the contract.
        unsafe {
            match &*p {
                Outcome::Return(v) => Outcome::Return(ptr::read(v)),
                Outcome::Panic(b) => Outcome::Panic(ptr::read(b)),
                Outcome::Unwound => Outcome::Unwound,
            }
        }
    }
}

/// The panic payload of a forced unwind; private so nobody can fake one.
struct ForcedUnwind;

/// True if `payload` is a forced unwind's: the greenlet is being dropped or
/// cancelled (offload branch: for `with_async`'s cleanup).
pub(crate) fn is_forced_unwind(payload: &(dyn std::any::Any + Send)) -> bool {
    payload.is::<ForcedUnwind>()
}

thread_local! {
    /// Forced unwinds running on this thread (nested when a destructor drops
    /// another suspended greenlet): `sync`'s guards do not poison their lock
    /// for a cancellation, only for a panic.
    static FORCED_UNWINDS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// True while a greenlet of this thread is being force-unwound (dropped or
/// cancelled): the unwind in flight is that, not a panic. No other greenlet
/// runs meanwhile (a wait during an unwind blocks the thread).
pub(crate) fn in_forced_unwind() -> bool {
    FORCED_UNWINDS.with(|n| n.get() > 0)
}

/// Counts one forced unwind for as long as it lives.
struct ForcedUnwindRunning;

impl ForcedUnwindRunning {
    fn enter() -> ForcedUnwindRunning {
        FORCED_UNWINDS.with(|n| n.set(n.get() + 1));
        ForcedUnwindRunning
    }
}

impl Drop for ForcedUnwindRunning {
    fn drop(&mut self) {
        FORCED_UNWINDS.with(|n| n.set(n.get() - 1));
    }
}

/// Greenlet ids are handed to threads in blocks, so that creating a
/// greenlet costs no atomic read-modify-write (a `lock xadd` was the largest
/// single cost of a pooled create on the bench).
static NEXT_ID_BLOCK: AtomicU64 = AtomicU64::new(1);
const ID_BLOCK: u64 = 1 << 16;

thread_local! {
    /// The next id this thread hands out, and the end of its block.
    static IDS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// A process-unique greenlet id.
#[inline]
fn next_id() -> u64 {
    IDS.with(|ids| {
        let (mut next, mut end) = ids.get();
        if next == end {
            next = NEXT_ID_BLOCK.fetch_add(ID_BLOCK, Ordering::Relaxed);
            end = next + ID_BLOCK;
        }
        ids.set((next + 1, end));
        next
    })
}

/// Configures a greenlet before it is created: its name and stack size.
///
/// ```
/// use greenhack::greenlet::{Builder, Greenlet};
///
/// let mut g: Greenlet<&str, (), usize> = Builder::new()
///     .name("parser")
///     .stack_size(1 << 20)
///     .build(|_, input: &str| input.len())?;
/// assert_eq!(g.name(), Some("parser"));
/// assert_eq!(g.resume("hello").into_complete(), Some(5));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "a Builder does nothing until `build` is called"]
pub struct Builder {
    name: Option<String>,
    stack_size: usize,
    sliced: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// A builder with no name and [`DEFAULT_STACK_SIZE`](stack::DEFAULT_STACK_SIZE).
    pub fn new() -> Builder {
        Builder {
            name: None,
            stack_size: stack::DEFAULT_STACK_SIZE,
            sliced: false,
        }
    }

    /// Names the greenlet; the name appears in [`debug::dump`](crate::debug::dump),
    /// the stall detector's reports and greenhack's own panic, abort and
    /// overflow messages (a panic raised by the greenlet's code is reported
    /// by the panic hook as usual, under the thread's name).
    pub fn name(mut self, name: impl Into<String>) -> Builder {
        self.name = Some(name.into());
        self
    }

    /// Sets the usable stack size in bytes (rounded up to whole pages, at
    /// least [`MIN_STACK_SIZE`](stack::MIN_STACK_SIZE)). The pool reuses a
    /// stack only for a greenlet of the same rounded size.
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.stack_size = bytes;
        self
    }

    /// Makes the greenlets of [`as_async`](Builder::as_async) and
    /// [`spawn`](Builder::spawn) *sliced*: they share one stack per thread
    /// (per stack size) and, while suspended, keep only their live frames,
    /// copied to the heap, instead of a stack mapping of their own (see
    /// below for what that costs and saves).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// greenhack::run(|| {
    ///     let handles: Vec<_> = (0..1000u64)
    ///         .map(|i| {
    ///             // SAFETY: the greenlet waits only through greenhack's
    ///             // `sleep`, which keeps no pointer into its stack.
    ///             let builder = unsafe { greenhack::Builder::new().sliced() };
    ///             builder
    ///                 .spawn(move || {
    ///                     let local = [i; 4]; // frames live on the heap while it sleeps
    ///                     greenhack::sleep(Duration::from_millis(10));
    ///                     local.iter().sum::<u64>()
    ///                 })
    ///                 .unwrap()
    ///         })
    ///         .collect();
    ///     let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    ///     assert_eq!(total, 4 * (0..1000).sum::<u64>());
    /// });
    /// ```
    ///
    /// # When to use it
    ///
    /// For many greenlets that spend most of their life waiting with
    /// shallow frames (idle connections, sleeping timers): a suspended
    /// sliced greenlet costs its live frames plus ~100 bytes of heap, not
    /// a page, and no kernel mapping, so a thread can hold millions
    /// (`vm.max_map_count` limits ordinary greenlets to ~32,700). The
    /// price is a copy on every switch between two sliced greenlets of a
    /// thread: out goes the live slice of the one that last ran, in comes
    /// the other's (none when the same one runs again). Frames that hold a
    /// large buffer across a wait make every switch copy it: keep buffers
    /// on the heap, or out of the frames that wait. The README's
    /// performance section has the measured costs and the break-even.
    ///
    /// # Safety
    ///
    /// While a sliced greenlet is suspended, other sliced greenlets' frames
    /// occupy the addresses of its own. So, while it waits:
    ///
    /// * no other greenlet or thread may hold a reference into its stack
    ///   (safe code cannot, except through the next point);
    /// * it must not wait on a future pinned on its own stack through a
    ///   reference (`exempt(fut.as_mut())` after `std::pin::pin!`, or a
    ///   combinator holding such a reference) if that future registers its
    ///   address with anything outside it (tokio's timers, intrusive
    ///   waiter lists). Futures passed to `exempt` by value are moved to
    ///   the heap first and are safe, whatever they are; greenhack's own
    ///   sockets, timers, channels and locks keep no pointer into a
    ///   waiting greenlet's stack.
    ///
    /// Resuming a sliced greenlet from inside another sliced greenlet of
    /// the same thread (polling one's `as_async` inside the other) panics.
    /// [`build`](Builder::build) refuses a sliced builder: a raw
    /// [`Greenlet`] is resumed by its owner, anywhere.
    pub unsafe fn sliced(mut self) -> Builder {
        self.sliced = true;
        self
    }

    /// Whether [`sliced`](Builder::sliced) was set.
    pub(crate) fn is_sliced(&self) -> bool {
        self.sliced
    }

    /// Refuses a closure that would fill more than half the stack.
    #[inline(always)]
    fn check_closure_size<F>(&self) -> io::Result<()> {
        // Every stack has at least MIN_STACK_SIZE usable bytes, so for most
        // closures this check folds away at compile time.
        if size_of::<F>() > stack::MIN_STACK_SIZE / 2 {
            let usable = stack::usable_size(self.stack_size);
            if size_of::<F>() > usable / 2 {
                return Err(closure_too_big(size_of::<F>(), usable));
            }
        }
        Ok(())
    }

    /// Creates the greenlet. It does not run until the first
    /// [`resume`](Greenlet::resume), whose value becomes `f`'s second
    /// argument.
    ///
    /// # Errors
    ///
    /// The stack could not be mapped: out of memory, out of address space,
    /// or `vm.max_map_count` reached. The message says which and what to do.
    /// `InvalidInput` for a [`sliced`](Builder::sliced) builder, a stack
    /// size that overflows when rounded up to pages, or a closure that would
    /// fill more than half the stack (box its captures, or raise
    /// [`stack_size`](Builder::stack_size)).
    #[track_caller]
    pub fn build<I, Y, R, F>(self, f: F) -> io::Result<Greenlet<I, Y, R>>
    where
        F: FnOnce(&Suspender<I, Y>, I) -> R + 'static,
    {
        self.check_closure_size::<F>()?;
        if self.sliced {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "greenhack: Builder::build makes a raw Greenlet, which cannot be sliced; \
                 sliced greenlets are made by Builder::as_async and Builder::spawn",
            ));
        }
        let stack = crate::overflow::greenlet_stack(self.stack_size)?;
        let name = self.name.map(String::into_boxed_str);
        let id = next_id();
        let header = stack.header();
        header.id.set(id);
        header.unwinding.set(false);
        header.created_at.set(Some(std::panic::Location::caller()));
        if let Some(n) = &name {
            header.name_ptr.set(n.as_ptr());
            header.name_len.set(n.len());
        }
        let f = MaybeUninit::new(f);
        // SAFETY: the area below the header is free, writable stack memory
        // with room for F (checked above) and the initial frame. The stack
        // now owns the closure; `f` is MaybeUninit, so it is not dropped here.
        let sp = unsafe { arch::init_stack(stack.frames_top(), entry::<I, Y, R, F>, f.as_ptr()) };
        header.parent_link.set(sp);
        Ok(Greenlet {
            header: stack.header_ptr(),
            sp,
            stack: Some(stack),
            name,
            id,
            _marker: PhantomData,
        })
    }

    /// Creates a sliced greenlet (see [`sliced`](Builder::sliced)): its
    /// first slice is laid out on the heap, and the returned [`Slice`] must
    /// [`occupy`](Slice::occupy) the shared stack before every switch into
    /// the greenlet, including the one of its drop.
    #[track_caller]
    pub(crate) fn build_sliced<I, Y, R, F>(
        self,
        f: F,
    ) -> io::Result<(Greenlet<I, Y, R>, Box<Slice>)>
    where
        F: FnOnce(&Suspender<I, Y>, I) -> R + 'static,
    {
        self.check_closure_size::<F>()?;
        let name = self.name.map(String::into_boxed_str);
        let id = next_id();
        let fields = GreenletFields {
            parent_link: 0,
            unwinding: false,
            name_ptr: name.as_deref().map_or(ptr::null(), str::as_ptr),
            name_len: name.as_deref().map_or(0, str::len),
            id,
            wait: crate::wait::Wait::Nothing,
            created_at: Some(std::panic::Location::caller()),
            asan: Default::default(),
        };
        // The closure, aligned below the top, and the initial frame.
        let room = size_of::<F>() + align_of::<F>().max(arch::STACK_ALIGN) + 64;
        let f = MaybeUninit::new(f);
        let (slice, header, sp) = Slice::new(self.stack_size, room, fields, |top, image_top| {
            // SAFETY: `Slice::new` gives `room` writable bytes below
            // `image_top`, enough for F and the initial frame; the image
            // now owns the closure (`f` is MaybeUninit: not dropped here).
            unsafe { arch::init_stack_image(top, image_top, entry::<I, Y, R, F>, f.as_ptr()) }
        })?;
        Ok((
            Greenlet {
                header,
                sp,
                stack: None,
                name,
                id,
                _marker: PhantomData,
            },
            slice,
        ))
    }
}

#[cold]
fn closure_too_big(closure: usize, usable: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "greenhack: a closure of {closure} bytes leaves too little of a {usable}-byte stack; \
             box its captures or raise Builder::stack_size",
        ),
    )
}

/// An asymmetric stackful coroutine: a closure on its own stack, resumed with
/// values of type `I`, suspending with values of type `Y`, finishing with a
/// value of type `R`.
///
/// See the [module documentation](self) for panics, drop and threads.
pub struct Greenlet<I, Y, R> {
    /// The stack while the greenlet can still run; `None` once finished,
    /// and always for a sliced greenlet (its `Slice` holds the shared
    /// stack).
    stack: Option<Stack>,
    /// The header of `stack`, cached (a sliced greenlet's: the shared
    /// stack's): valid while the greenlet is not finished.
    header: *const StackHeader,
    /// The greenlet's saved stack pointer while it is suspended, as its last
    /// switch handed it back in a register: a resume reads it from here, one
    /// load from `self`, rather than through the header (two dependent
    /// loads, the longest chain of a round trip); 0 once finished. A
    /// backtrace request (`debug::dump`) runs the greenlet, but it suspends
    /// again at the very same place, so the value stays current.
    sp: usize,
    /// Owned here, pointed to by the stack header for messages.
    name: Option<Box<str>>,
    id: u64,
    _marker: NotSendInvariant<(I, Y, R)>,
}

impl<I, Y, R> Greenlet<I, Y, R> {
    /// Creates a greenlet with the default stack size and no name.
    ///
    /// # Panics
    ///
    /// If the stack cannot be mapped; [`Builder::build`] returns the error
    /// instead.
    #[track_caller]
    pub fn new<F>(f: F) -> Greenlet<I, Y, R>
    where
        F: FnOnce(&Suspender<I, Y>, I) -> R + 'static,
    {
        match Builder::new().build(f) {
            Ok(g) => g,
            Err(e) => panic!("{e}"),
        }
    }

    /// Switches to the greenlet, handing it `input`, and runs it until it
    /// suspends or finishes.
    ///
    /// On the first resume `input` becomes the closure's second argument;
    /// afterwards it is what the pending [`Suspender::suspend`] returns.
    ///
    /// # Panics
    ///
    /// Re-raises, with its original payload, a panic that escaped the
    /// greenlet's closure. Panics if the greenlet has already finished.
    // Always inlined so that the switch stub, and with it the address the
    // greenlet jumps back to, sits in the caller: no call frame around the
    // switch, and no extra return to mispredict after it. Measured: with
    // `resume` out of line the switch bench's nested round trip goes from
    // ~22 to ~34 ns and the flat one from ~2.3 to ~3.8 ns.
    #[inline(always)]
    pub fn resume(&mut self, input: I) -> GreenletResult<Y, R> {
        // Read first and tested here (0 once finished), so that the read
        // stays at the head of the caller's loop, where the compiler can
        // forward the value from the previous iteration: see `switch`.
        let sp = self.sp;
        if sp == 0 {
            resumed_after_finish(self.name(), self.id);
        }
        let mut slot = MaybeUninit::uninit();
        // SAFETY: `slot` stays put until the greenlet, which unpacks the
        // word first thing, switches back.
        let payload = unsafe { pack(&mut slot, input) };
        let (kind, payload) = self.switch(sp, RESUME, payload);
        if kind == YIELD {
            // SAFETY: the greenlet's `suspend` packed a Y; its slot, if it
            // used one, is on its stack, suspended.
            GreenletResult::Yielded(unsafe { unpack::<Y>(payload) })
        } else {
            match self.take_outcome(kind) {
                Outcome::Return(r) => GreenletResult::Complete(r),
                Outcome::Panic(payload) => panic::resume_unwind(payload),
                Outcome::Unwound => unreachable!("greenhack: unwound without being dropped"),
            }
        }
    }

    /// True once the closure has returned or panicked.
    pub fn is_finished(&self) -> bool {
        self.sp == 0
    }

    /// True once the greenlet has been resumed at least once.
    pub fn is_started(&self) -> bool {
        // A fresh greenlet's saved frame resumes in the trampoline.
        self.sp == 0 || !arch::is_fresh_frame(self.sp)
    }

    /// The name given by [`Builder::name`].
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// A process-unique id, used in messages.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The usable address range of the greenlet's stack (guard page
    /// excluded), or `None` once it has finished and the stack went back to
    /// the pool. For tests and debugging tools.
    pub fn stack_range(&self) -> Option<std::ops::Range<usize>> {
        self.stack.as_ref().map(Stack::range)
    }

    /// The stack header while the greenlet is not finished.
    pub(crate) fn header_ref(&self) -> Option<&StackHeader> {
        // SAFETY: `header` is valid while the stack is held.
        self.stack.as_ref().map(|_| unsafe { &*self.header })
    }

    /// The part of the stack the next resume touches first, while the
    /// greenlet is not finished: from its saved stack pointer (where the
    /// switch restores registers, then each frame it returns through) to the
    /// end of the header. For prefetching only: after a backtrace request the
    /// range may be stale.
    #[inline]
    pub(crate) fn resume_footprint(&self) -> Option<std::ops::Range<usize>> {
        self.header_ref().map(|h| self.sp..h.top())
    }

    /// One switch in and back out: hands `(kind, payload)` over, returns the
    /// greenlet's `(kind, payload)`. A kind other than `YIELD` must go to
    /// `take_outcome` before anything else.
    ///
    /// The hot path makes no call and passes no pointer to `self` anywhere:
    /// a set switch hook is tested by one predicted branch up front and
    /// served by [`switch_slow`]. A call that received a pointer derived
    /// from `self` would let every later opaque operation (the switch
    /// itself) write through it, so the compiler would have to reload
    /// `self.sp` from memory at the next resume, a store-to-load round trip
    /// on the critical path of a caller's resume loop. As it is, `self.sp`
    /// stays in a register across such a loop.
    #[inline(always)]
    fn switch(&mut self, sp: usize, kind: usize, payload: usize) -> (usize, usize) {
        debug_assert!(sp != 0, "greenhack: switch into a finished greenlet");
        // SAFETY: `header` points into the greenlet's stack, which is mapped
        // while the greenlet is not finished (callers check): `self.stack`,
        // or the shared stack its `Slice` holds for a sliced greenlet (whose
        // frames the Slice put there before this switch).
        let header = unsafe { &*self.header };
        if crate::switch_hook::switch_hook() != 0 {
            let (kind, payload, greenlet_sp) =
                switch_slow(header, sp, kind, payload, self.id, self.name());
            self.sp = greenlet_sp;
            return (kind, payload);
        }
        debug_assert_eq!(
            header.saved_sp(),
            Some(sp),
            "greenhack: greenlet resumed while running"
        );
        // No mark that it runs: the switch overwrites its saved sp in the
        // header with ours (see `StackHeader::parent_link`).
        let asan = crate::asan::before_resume(&header.asan);
        // SAFETY: `sp` is the saved stack pointer of this greenlet, fresh or
        // suspended (not finished): the one `build` or its last switch out
        // gave us (the debug assertion above checks it against the
        // header's). The parent link is its own. The greenlet unpacks the
        // payload before switching back; our frame stays put while it runs.
        let (kind, payload, greenlet_sp) =
            unsafe { arch::switch_in(kind, payload, header.parent_link.as_ptr(), sp) };
        self.sp = greenlet_sp;
        crate::asan::after_resume(asan);
        (kind, payload)
    }

    /// Marks the greenlet finished and reads its outcome off its stack,
    /// giving the stack back to the pool (in [`finish`], out of line).
    #[inline(always)]
    fn take_outcome(&mut self, outcome: usize) -> Outcome<R> {
        self.sp = 0;
        finish(self.stack.take(), outcome)
    }
}

/// Reads the outcome of a finished greenlet off its stack, then gives the
/// stack back to the pool. Out of line: inlined, it makes `resume` too big
/// to inline (the switch bench's flat case went 2.3 -> 3.6 ns).
#[inline(never)]
fn finish<R>(stack: Option<Stack>, outcome: usize) -> Outcome<R> {
    // SAFETY: entry::<I, Y, R, F> wrote an Outcome<R> there, on a stack
    // that stays mapped until the recycle below.
    let outcome = unsafe { Outcome::take(outcome as *const Outcome<R>) };
    if let Some(s) = stack {
        s.recycle();
    }
    outcome
}

#[cold]
#[inline(never)]
fn resumed_after_finish(name: Option<&str>, id: u64) -> ! {
    panic!("greenhack: resumed {}, which has finished", Label(name, id))
}

/// [`Greenlet::switch`] when a switch hook is set: reports the switch to
/// the hook. Returns the greenlet's kind, payload and new saved sp.
///
/// Out of line, with a switch stub of its own, and a free function: no call
/// on the switch path receives a pointer to the `Greenlet` (see
/// `Greenlet::switch`).
#[cold]
#[inline(never)]
fn switch_slow(
    header: &StackHeader,
    sp: usize,
    kind: usize,
    payload: usize,
    id: u64,
    name: Option<&str>,
) -> (usize, usize, usize) {
    debug_assert_eq!(
        header.saved_sp(),
        Some(sp),
        "greenhack: greenlet resumed while running"
    );
    report_switch(crate::switch_hook::SwitchKind::Resume, id, name);
    let asan = crate::asan::before_resume(&header.asan);
    // SAFETY: as in `Greenlet::switch`.
    let (kind, payload, greenlet_sp) =
        unsafe { arch::switch_in(kind, payload, header.parent_link.as_ptr(), sp) };
    crate::asan::after_resume(asan);
    let event = if kind == YIELD {
        crate::switch_hook::SwitchKind::Suspend
    } else {
        crate::switch_hook::SwitchKind::Finish
    };
    report_switch(event, id, name);
    (kind, payload, greenlet_sp)
}

/// Calls the switch hook; out of line, so the switch path only tests
/// whether a hook is set.
#[cold]
#[inline(never)]
fn report_switch(kind: crate::switch_hook::SwitchKind, id: u64, name: Option<&str>) {
    crate::switch_hook::call_switch_hook(kind, id, name);
}

impl<I, Y, R> Drop for Greenlet<I, Y, R> {
    #[inline]
    fn drop(&mut self) {
        if self.sp != 0 {
            self.drop_unfinished();
        }
    }
}

impl<I, Y, R> Greenlet<I, Y, R> {
    /// Drop of a greenlet that can still run: out of line, so that dropping
    /// a finished one is a compare.
    #[inline(never)]
    fn drop_unfinished(&mut self) {
        // Fresh or suspended: unwind the stack so every destructor on it runs
        // (for a fresh greenlet, the closure's).
        // SAFETY: not finished, so the stack and its header are live.
        let header = unsafe { &*self.header };
        header.unwinding.set(true);
        let running = ForcedUnwindRunning::enter();
        let (kind, _) = self.switch(self.sp, UNWIND, 0);
        drop(running);
        if kind == YIELD {
            // It caught the forced unwind and suspended again: it can be
            // neither resumed nor freed.
            abort_kept_running(header, "suspended again");
        }
        let outcome = self.take_outcome(kind);
        match outcome {
            Outcome::Unwound => {}
            // A destructor on the greenlet's stack panicked while unwinding,
            // or the closure caught the unwind and panicked: hand the panic on
            // unless one is already in flight (two at once would abort).
            Outcome::Panic(payload) => {
                if !std::thread::panicking() {
                    panic::resume_unwind(payload)
                }
            }
            // entry() aborts in this case.
            Outcome::Return(_) => {
                unreachable!("greenhack: greenlet returned after being dropped")
            }
        }
    }
}

impl<I, Y, R> fmt::Debug for Greenlet<I, Y, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Greenlet")
            .field("id", &self.id)
            .field("name", &self.name)
            .field(
                "state",
                &if self.is_finished() {
                    "finished"
                } else if self.is_started() {
                    "suspended"
                } else {
                    "fresh"
                },
            )
            .finish()
    }
}

/// The greenlet's side of the switch: passed by reference to its closure.
///
/// `!Send` and `!Sync`: only the greenlet itself may suspend.
pub struct Suspender<I, Y> {
    header: *const StackHeader,
    _marker: NotSendInvariant<(I, Y)>,
}

/// `!Send`, `!Sync` (the raw pointer) and invariant in `T` (the `fn`).
type NotSendInvariant<T> = PhantomData<(*mut (), fn(T) -> T)>;

impl<I, Y> Suspender<I, Y> {
    /// Suspends the greenlet, handing `value` to the caller of
    /// [`Greenlet::resume`], and returns the value of the next resume.
    ///
    /// # Panics
    ///
    /// When the greenlet is dropped while suspended here, this call unwinds
    /// (with a private payload, silently) so that the greenlet's destructors
    /// run. Let that unwind pass: a greenlet that catches it and then
    /// suspends again aborts the process.
    ///
    /// Only the greenlet's own code may suspend it: a `Suspender` lent to a
    /// nested greenlet (as its resume value) and used on that greenlet's
    /// stack is a bug, caught by an assertion in debug builds only (the
    /// check would cost every switch).
    #[inline(always)]
    pub fn suspend(&self, value: Y) -> I {
        // SAFETY: the header lives at the top of our own stack, which is
        // mapped while we run.
        let header = unsafe { &*self.header };
        debug_assert!(
            self.stack_range()
                .contains(&crate::asan::stack_address(ptr::from_ref(&header) as usize)),
            "greenhack: Suspender::suspend called on another greenlet's stack (a Suspender \
             lent to a nested greenlet); only the greenlet's own code may suspend it"
        );
        let mut slot = MaybeUninit::uninit();
        // SAFETY: `slot` stays put until we are resumed; the resumer unpacks
        // the word first thing.
        let payload = unsafe { pack(&mut slot, value) };
        // Each turn of this loop suspends from the same frame, so our saved
        // stack pointer is the same every time: a control request served in
        // between leaves the resumer's copy of it current.
        loop {
            let asan = crate::asan::before_suspend(&header.asan);
            // SAFETY: we run on the greenlet's stack and the parent link
            // holds the resumer's frame, saved by its switch_in; our own sp
            // replaces it there. Our frame (and `slot`) stays put until we
            // are resumed.
            let (kind, back) = unsafe {
                arch::switch_out(
                    YIELD,
                    payload,
                    header.parent_link.as_ptr(),
                    header.parent_link.get(),
                )
            };
            crate::asan::after_suspend(&header.asan, asan);
            if kind == RESUME {
                // SAFETY: the resumer packed an I for us to unpack once.
                return unsafe { unpack::<I>(back) };
            }
            // Dropped (unwinds from here), or a debugger-style request (a
            // backtrace for `debug::dump`): served, then suspend again.
            serve(kind);
        }
    }

    /// This greenlet's stack header.
    pub(crate) fn header(&self) -> &StackHeader {
        // SAFETY: as in `suspend`.
        unsafe { &*self.header }
    }

    /// The usable address range of this greenlet's stack.
    pub(crate) fn stack_range(&self) -> std::ops::Range<usize> {
        // SAFETY: as in `suspend`.
        let header = unsafe { &*self.header };
        header.map_base + stack::page_size()..self.header as usize
    }

    /// The id of the greenlet this suspender belongs to.
    pub fn id(&self) -> u64 {
        // SAFETY: as in `suspend`.
        unsafe { &*self.header }.id.get()
    }
}

impl<I, Y> fmt::Debug for Suspender<I, Y> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Suspender").field("id", &self.id()).finish()
    }
}

/// A request served by a suspended greenlet without resuming its code.
pub(crate) struct Control {
    /// Filled by the greenlet: its backtrace, captured on its own stack.
    pub(crate) backtrace: Option<std::backtrace::Backtrace>,
}

/// Serves a kind other than `RESUME` that reached a suspended greenlet:
/// unwinds for `UNWIND`, and otherwise fills in the tagged `Control`
/// request and returns, for the greenlet to suspend again.
#[cold]
#[inline(never)]
fn serve(kind: usize) {
    if kind == UNWIND {
        panic::resume_unwind(Box::new(ForcedUnwind));
    }
    debug_assert!(
        kind & CONTROL_TAG != 0,
        "greenhack: bad switch kind {kind:#x}"
    );
    // SAFETY: the requester passed a pointer to a Control on its stack,
    // tagged; it stays valid until we switch back.
    let control = unsafe { &mut *((kind & !CONTROL_TAG) as *mut Control) };
    control.backtrace = Some(std::backtrace::Backtrace::force_capture());
}

/// How much stack below a suspended greenlet's frames a backtrace capture
/// needs: the request's frames and the unwinder's (~5 KiB in a debug
/// build), with a margin. A greenlet with less left is not captured: its
/// guard page would abort the process for a diagnostic.
pub(crate) const CAPTURE_ROOM: usize = 12 * 1024;

/// What [`capture_backtrace`] found.
pub(crate) enum Capture {
    /// The greenlet's stack, from its suspend.
    Backtrace(std::backtrace::Backtrace),
    /// Only this many bytes of its stack are left: too few to capture.
    NoRoom(usize),
}

/// Captures the backtrace of the suspended greenlet owning `header` by
/// switching into it (its code does not run: `suspend` serves the request
/// and switches straight back). `None` unless it is suspended.
pub(crate) fn capture_backtrace(header: &StackHeader) -> Option<Capture> {
    if header_state(header) != HeaderState::Suspended || header.unwinding.get() {
        return None;
    }
    let mut control = Control { backtrace: None };
    let sp = header.saved_sp()?;
    let left = sp.saturating_sub(header.map_base + stack::page_size());
    if left < CAPTURE_ROOM {
        return Some(Capture::NoRoom(left));
    }
    let asan = crate::asan::before_resume(&header.asan);
    // SAFETY: the greenlet is suspended in `suspend` (checked above), which
    // serves tagged requests; `control` outlives the round trip.
    let (_, _, new_sp) = unsafe {
        arch::switch_in(
            (&mut control as *mut Control as usize) | CONTROL_TAG,
            0,
            header.parent_link.as_ptr(),
            sp,
        )
    };
    crate::asan::after_resume(asan);
    // `suspend` suspends again from the same frame: its owner's copy of the
    // saved sp is still right. Resuming a wrong one would run the greenlet
    // anywhere, so this is checked in release builds too (off the switch
    // path: backtrace requests only).
    if new_sp != sp {
        eprintln!("greenhack: a backtrace request moved a greenlet's saved stack pointer");
        std::process::abort();
    }
    control.backtrace.map(Capture::Backtrace)
}

/// The entry point of every greenlet, monomorphised per closure type. Runs on
/// the new stack, called by the trampoline; never returns.
///
/// # Safety
///
/// Called only by `greenhack_trampoline` with the first resume's `kind` and
/// `payload` (`RESUME` with a packed `I` to unpack once, or `UNWIND`),
/// `parent_link` the parent-link slot at offset 0 of this stack's header,
/// and `obj` the closure placed by `init_stack`.
unsafe extern "C" fn entry<I, Y, R, F>(
    kind: usize,
    parent_link: *mut usize,
    obj: *mut u8,
    payload: usize,
) -> !
where
    F: FnOnce(&Suspender<I, Y>, I) -> R,
{
    let header = parent_link as *const StackHeader;
    // SAFETY: the header is at the top of this stack.
    crate::asan::first_entry(unsafe { &(*header).asan });
    // SAFETY: per the contract above; the closure is moved off its slot
    // exactly once.
    let f = unsafe { ptr::read(obj as *mut F) };
    let outcome: Outcome<R> = if kind == UNWIND {
        match panic::catch_unwind(AssertUnwindSafe(|| drop(f))) {
            Ok(()) => Outcome::Unwound,
            Err(p) => Outcome::Panic(p),
        }
    } else {
        debug_assert_eq!(kind, RESUME, "greenhack: bad first switch kind");
        // SAFETY: per the contract above.
        let input = unsafe { unpack::<I>(payload) };
        let suspender = Suspender {
            header,
            _marker: PhantomData,
        };
        let result = panic::catch_unwind(AssertUnwindSafe(|| f(&suspender, input)));
        // SAFETY: the header is at the top of this stack.
        let header = unsafe { &*header };
        match result {
            Ok(r) if header.unwinding.get() => {
                drop(r);
                abort_kept_running(header, "returned normally")
            }
            Ok(r) => Outcome::Return(r),
            Err(p) if p.is::<ForcedUnwind>() => Outcome::Unwound,
            Err(p) => Outcome::Panic(p),
        }
    };
    // Everything this frame owned is gone but `outcome`, which the resumer
    // reads from here before it recycles the stack.
    let outcome = MaybeUninit::new(outcome);
    // SAFETY: the header is at the top of this stack.
    let header = unsafe { &*header };
    crate::asan::before_exit(&header.asan);
    // SAFETY: as in `Suspender::suspend`; this greenlet is never resumed
    // again (its owner marks it finished on reading a final reply, whose
    // kind is the outcome's non-null address).
    unsafe {
        arch::switch_out(
            outcome.as_ptr() as usize,
            0,
            header.parent_link.as_ptr(),
            header.parent_link.get(),
        );
    }
    // A finished greenlet was resumed: the state machine is broken.
    std::process::abort()
}

/// Aborts because a greenlet that is being dropped did not unwind.
#[cold]
fn abort_kept_running(header: &StackHeader, what: &str) -> ! {
    let name = header_name(header);
    eprintln!(
        "greenhack: {} {what} while it was being dropped. Dropping a suspended greenlet \
         unwinds its stack; this greenlet caught that unwind (catch_unwind) and kept running, \
         so its stack can be neither freed nor resumed. Aborting.",
        Label(name, header.id.get())
    );
    std::process::abort()
}

/// Formats "greenlet 'name' (id N)" or "greenlet N".
struct Label<'a>(Option<&'a str>, u64);

impl fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(name) => write!(f, "greenlet '{name}' (id {})", self.1),
            None => write!(f, "greenlet {}", self.1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// What a suspended greenlet reports for the reactor to prefetch covers
    /// the frames its resume returns through, up to the top of its stack.
    #[test]
    fn resume_footprint_covers_the_suspended_frames() {
        let local_at = Rc::new(Cell::new(0usize));
        let at = local_at.clone();
        let mut g = Greenlet::<(), (), ()>::new(move |s, ()| {
            let local = std::hint::black_box(7u64);
            // Under ASan the local may live on its fake stack: the stack
            // pointer of this frame stands in for it then.
            at.set(crate::asan::stack_address(ptr::from_ref(&local) as usize));
            s.suspend(());
            std::hint::black_box(&local);
        });
        let top = g.stack_range().expect("not finished").end;
        g.resume(());
        let footprint = g.resume_footprint().expect("suspended");
        assert!(
            footprint.contains(&local_at.get()),
            "{footprint:x?} misses a local of a suspended frame at {:#x}",
            local_at.get()
        );
        assert_eq!(footprint.end, top, "the footprint ends with the header");
        assert!(footprint.len() < 4096, "a shallow suspend: {footprint:x?}");
        g.resume(());
        assert_eq!(g.resume_footprint(), None, "finished: nothing to prefetch");
    }
}
