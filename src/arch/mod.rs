//! The Rust face of `asm/`: the saved-context layout, the switch stubs and
//! the initial frame of a fresh greenlet.
//!
//! Each architecture module provides the same five items:
//!
//! * `init_stack(top, entry, obj) -> sp`: lay out a fresh greenlet's stack so
//!   that the first `switch_in` to `sp` starts `entry` in the trampoline
//!   (and `init_stack_image`, the same frames written elsewhere: the first
//!   slice of a sliced greenlet, see `crate::slice`);
//! * `switch_in(kind, payload, parent_link, sp) -> (kind, payload, their
//!   sp)`: resume the greenlet whose saved stack pointer is `sp`, storing
//!   ours in `*parent_link`;
//! * `switch_out(kind, payload, save, sp) -> (kind, payload)`:
//!   suspend, storing our stack pointer in `*save`, and continue the side
//!   whose saved pointer is `sp`;
//! * `trampoline_return()`: the code address that roots a greenlet's
//!   frame-pointer chain (see the drawings in `asm/`);
//! * `prefetch(addr)`: ask for the cache line holding `addr`, without
//!   waiting for it (the reactor warms the next task's stack with it).
//!
//! Two machine words are handed over, in registers that the switch does not
//! touch: `greenlet` sends a kind and a payload (a small value itself, or a
//! pointer to a larger one on the sender's stack, which stays valid while
//! the sender is suspended).
//!
//! An entry function has the signature of [`EntryFn`]: it receives the first
//! kind, the address of the parent link, the address of the object that
//! `init_stack` copied onto the new stack, and the first payload. It must
//! never return and never unwind.

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86_64;

#[cfg(target_arch = "aarch64")]
pub(crate) use aarch64::*;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86_64::*;

/// The entry point of a greenlet: `(first kind, &parent link, &object,
/// first payload) -> !`.
pub(crate) type EntryFn = unsafe extern "C" fn(usize, *mut usize, *mut u8, usize) -> !;

/// The alignment of a stack pointer at a call boundary on every supported ABI.
pub(crate) const STACK_ALIGN: usize = 16;

/// Reserves `size` bytes aligned to `align` (a power of two) below `sp` and
/// returns the new, lower `sp`.
#[inline]
pub(crate) fn alloc_below(sp: usize, size: usize, align: usize) -> usize {
    debug_assert!(align.is_power_of_two());
    (sp - size) & !(align - 1)
}
