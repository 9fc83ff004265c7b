//! AddressSanitizer fiber annotations around every switch.
//!
//! # Why
//!
//! ASan keeps, per thread, the bounds of "the" stack, and uses them when a
//! `noreturn` call (a panic starting to unwind, `longjmp`) makes it unpoison
//! the dying frames: from the stack pointer up to the top of the current
//! stack. Unannotated, a greenlet that panics makes ASan unpoison from the
//! greenlet's stack pointer to the *thread* stack's top (or refuse, with
//! "ASan is ignoring requested `__asan_handle_no_return`"), and frames left
//! poisoned then show up as false stack-buffer-overflow reports. With
//! detect_stack_use_after_return, ASan also keeps a per-thread "fake stack"
//! of frames that must follow the real stack across a switch.
//!
//! The fiber interface of `<sanitizer/common_interface_defs.h>` fixes both:
//!
//! * `__sanitizer_start_switch_fiber(&save, bottom, size)` right before a
//!   switch: `bottom`/`size` are the bounds of the stack being entered,
//!   `save` receives the leaving side's fake stack (a null `&save` means the
//!   leaving stack is gone for good: ASan frees its fake stack);
//! * `__sanitizer_finish_switch_fiber(save, &old_bottom, &old_size)` right
//!   after landing: `save` is what this side's own start call stored when it
//!   left (null on a greenlet's first entry), and `old_*` receive the bounds
//!   of the stack just left.
//!
//! A greenlet learns its resumer's bounds from `finish` each time it is
//! entered (resumers change: any code may resume a suspended greenlet) and
//! keeps them in its stack header ([`Fiber`]) for its next switch out. The
//! resumer keeps its fake stack in a local of the resuming frame, which
//! stays put while the greenlet runs; the greenlet keeps its own in a local
//! of `suspend`.
//!
//! The [`Fiber`] also holds the bounds of the stack it lives in, given when
//! the stack is mapped, which a resumer entering it passes to `start`. So
//! this module works on plain address ranges and knows nothing of the stack
//! layout: the stack module owns the [`Fiber`], not the other way round.
//!
//! When a greenlet finishes, its stack keeps the shadow of the frames that
//! never returned (the entry frame, which leaves by a switch): poisoned
//! redzones that the next greenlet's closure, written from outside
//! by `init_stack`, would hit. So a stack is unpoisoned when it goes back to
//! the pool, before its memory is read or reused, and before it is unmapped
//! ([`unpoison_stack`]).
//!
//! ASan's use-after-return detection (on by default in current runtimes)
//! moves locals whose address is taken into heap-allocated "fake stack"
//! frames. Code that asks "am I running on this greenlet's stack?" by
//! comparing the address of a local with the stack's range would then get
//! the wrong answer (`pair` does, to find the greenlet it runs in); it goes
//! through [`stack_address`], which reads the stack pointer under ASan.
//!
//! # When it is compiled in
//!
//! Only in a build instrumented by ASan, where the `__sanitizer_*`
//! functions exist: the build script sets `--cfg greenhack_asan` when the
//! target's cfg has `sanitize = "address"` (`RUSTFLAGS=-Zsanitizer=address`
//! on nightly). Testing `cfg(sanitize = "address")` here directly would need
//! `#![feature(cfg_sanitize)]`, which stable Rust refuses; a cargo feature
//! would be switched on by `--all-features` in a build without ASan and fail
//! to link. Without the cfg, every function here is an empty
//! `#[inline(always)]` function and [`Fiber`] and [`Leaving`] are zero-sized,
//! so the switch path compiles to exactly what it was, and a stable build
//! never names a `__sanitizer_*` symbol.

#[cfg(greenhack_asan)]
use core::ffi::c_void;
#[cfg(greenhack_asan)]
use std::cell::Cell;

#[cfg(greenhack_asan)]
unsafe extern "C" {
    fn __sanitizer_start_switch_fiber(
        fake_stack_save: *mut *mut c_void,
        bottom: *const c_void,
        size: usize,
    );
    fn __sanitizer_finish_switch_fiber(
        fake_stack_save: *mut c_void,
        bottom_old: *mut *const c_void,
        size_old: *mut usize,
    );
    fn __asan_unpoison_memory_region(addr: *const c_void, size: usize);
}

/// Per-stack state, in the stack header: the bounds of the stack itself,
/// and those of the stack that last entered its greenlet, which the
/// greenlet's next switch out goes back to. Zero-sized without ASan.
#[derive(Clone, Default)]
pub(crate) struct Fiber {
    #[cfg(greenhack_asan)]
    bottom: usize,
    #[cfg(greenhack_asan)]
    size: usize,
    #[cfg(greenhack_asan)]
    resumer_bottom: Cell<usize>,
    #[cfg(greenhack_asan)]
    resumer_size: Cell<usize>,
}

impl Fiber {
    /// The state of a stack whose usable part (above the guard page, up to
    /// the top of the mapping) is `stack`, entered by no one yet.
    #[inline(always)]
    pub(crate) fn new(stack: core::ops::Range<usize>) -> Fiber {
        #[cfg(greenhack_asan)]
        {
            Fiber {
                bottom: stack.start,
                size: stack.end - stack.start,
                resumer_bottom: Cell::new(0),
                resumer_size: Cell::new(0),
            }
        }
        #[cfg(not(greenhack_asan))]
        {
            let _ = stack;
            Fiber {}
        }
    }

    /// Takes over `other`'s resumer (a sliced greenlet's, coming back onto
    /// its shared stack); the bounds of the stack itself stay.
    #[inline(always)]
    pub(crate) fn set_from(&self, other: &Fiber) {
        #[cfg(greenhack_asan)]
        {
            self.resumer_bottom.set(other.resumer_bottom.get());
            self.resumer_size.set(other.resumer_size.get());
        }
        let _ = other;
    }
}

/// What the leaving side of a switch keeps until it is switched back to:
/// its fake stack. Zero-sized without ASan.
pub(crate) struct Leaving {
    #[cfg(greenhack_asan)]
    fake_stack: *mut c_void,
}

/// Before switching into the greenlet whose stack's state is `fiber` (a
/// resume, or a control request); pair with [`after_resume`] once the
/// greenlet has switched back.
#[inline(always)]
pub(crate) fn before_resume(fiber: &Fiber) -> Leaving {
    #[cfg(greenhack_asan)]
    {
        let mut leaving = Leaving {
            fake_stack: core::ptr::null_mut(),
        };
        // SAFETY: plain ASan bookkeeping: `fake_stack` is a valid out slot
        // and the bounds are those of a mapped greenlet stack.
        unsafe {
            __sanitizer_start_switch_fiber(
                &mut leaving.fake_stack,
                fiber.bottom as *const c_void,
                fiber.size,
            )
        };
        leaving
    }
    #[cfg(not(greenhack_asan))]
    {
        let _ = fiber;
        Leaving {}
    }
}

/// Back in the resumer after [`before_resume`]'s switch.
#[inline(always)]
pub(crate) fn after_resume(leaving: Leaving) {
    #[cfg(greenhack_asan)]
    // SAFETY: `fake_stack` is what our own start call saved; null out
    // pointers are allowed and mean "not needed".
    unsafe {
        __sanitizer_finish_switch_fiber(
            leaving.fake_stack,
            core::ptr::null_mut(),
            core::ptr::null_mut(),
        )
    };
    let _ = leaving;
}

/// Before the greenlet whose stack's state is `fiber` switches out to its
/// resumer; pair with [`after_suspend`] once it is entered again.
#[inline(always)]
pub(crate) fn before_suspend(fiber: &Fiber) -> Leaving {
    #[cfg(greenhack_asan)]
    {
        let mut leaving = Leaving {
            fake_stack: core::ptr::null_mut(),
        };
        // SAFETY: as in `before_resume`; the bounds are the resumer's, as
        // reported by ASan when it entered us.
        unsafe {
            __sanitizer_start_switch_fiber(
                &mut leaving.fake_stack,
                fiber.resumer_bottom.get() as *const c_void,
                fiber.resumer_size.get(),
            )
        };
        leaving
    }
    #[cfg(not(greenhack_asan))]
    {
        let _ = fiber;
        Leaving {}
    }
}

/// Back in the greenlet of `fiber` after [`before_suspend`]'s switch:
/// records the bounds of whoever resumed it.
#[inline(always)]
pub(crate) fn after_suspend(fiber: &Fiber, leaving: Leaving) {
    #[cfg(greenhack_asan)]
    landed(fiber, leaving.fake_stack);
    let _ = (fiber, leaving);
}

/// The first code of a greenlet, on its own stack: records its resumer.
#[inline(always)]
pub(crate) fn first_entry(fiber: &Fiber) {
    #[cfg(greenhack_asan)]
    landed(fiber, core::ptr::null_mut());
    let _ = fiber;
}

/// The finished greenlet of `fiber` leaves its stack for good.
#[inline(always)]
pub(crate) fn before_exit(fiber: &Fiber) {
    #[cfg(greenhack_asan)]
    {
        // SAFETY: as in `before_suspend`; a null save slot tells ASan this
        // stack is gone, so it frees its fake stack.
        unsafe {
            __sanitizer_start_switch_fiber(
                core::ptr::null_mut(),
                fiber.resumer_bottom.get() as *const c_void,
                fiber.resumer_size.get(),
            )
        };
    }
    let _ = fiber;
}

#[cfg(greenhack_asan)]
fn landed(fiber: &Fiber, fake_stack: *mut c_void) {
    let mut bottom: *const c_void = core::ptr::null();
    let mut size = 0usize;
    // SAFETY: `fake_stack` is what this side saved when it left (or null
    // on first entry); the out slots are valid.
    unsafe { __sanitizer_finish_switch_fiber(fake_stack, &mut bottom, &mut size) };
    fiber.resumer_bottom.set(bottom as usize);
    fiber.resumer_size.set(size);
}

/// Clears ASan's poison from the stack whose state is `fiber`, whose frames
/// are all gone (a finished greenlet's stack going back to the pool, or
/// unmapped).
#[inline(always)]
pub(crate) fn unpoison_stack(fiber: &Fiber) {
    #[cfg(greenhack_asan)]
    // SAFETY: plain ASan bookkeeping over memory the stack owns.
    unsafe {
        __asan_unpoison_memory_region(fiber.bottom as *const c_void, fiber.size)
    };
    let _ = fiber;
}

/// Clears ASan's poison from `len` bytes at `addr` of a greenlet stack
/// whose frames are being copied out or overwritten as a whole (a sliced
/// greenlet's slice, see `crate::slice`): the copy reads and writes
/// redzones on purpose. The frames restored later carry no poison, so ASan
/// checks a restored frame's locals less tightly until it returns.
#[inline(always)]
pub(crate) fn unpoison_range(addr: usize, len: usize) {
    #[cfg(greenhack_asan)]
    // SAFETY: plain ASan bookkeeping over memory a stack owns.
    unsafe {
        __asan_unpoison_memory_region(addr as *const c_void, len)
    };
    let _ = (addr, len);
}

/// An address on the stack the caller runs on, for tests of which stack
/// that is: `local`, the address of one of the caller's locals, normally.
///
/// Under ASan, whose use-after-return detection (on by default) may place a
/// local whose address is taken in a heap-allocated "fake stack" frame, the
/// address of a local says nothing about the stack; the stack pointer is
/// read instead.
#[inline(always)]
pub(crate) fn stack_address(local: usize) -> usize {
    #[cfg(greenhack_asan)]
    {
        let _ = local;
        let sp: usize;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: reads a register.
        unsafe {
            core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
        };
        #[cfg(target_arch = "aarch64")]
        // SAFETY: reads a register.
        unsafe {
            core::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags))
        };
        sp
    }
    #[cfg(not(greenhack_asan))]
    local
}
