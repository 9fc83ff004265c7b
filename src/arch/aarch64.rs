//! aarch64 AAPCS64: the asm! stubs around `asm/aarch64.S`.
//!
//! The same design as `x86_64.rs`: the routines in the `.S` file save only
//! x19, x29 and the resume address (LLVM reserves x19 and x29, so inline asm
//! cannot declare them clobbered); the stubs here declare every other
//! callee-saved register of AAPCS64 (x20–x28, x30, v8–v15) clobbered,
//! together with everything `clobber_abi("C")` covers, so the compiler spills
//! only what is live across a switch. The stubs are `#[inline(always)]` for
//! the reasons given in `x86_64.rs`.
//!
//! `clobber_abi("C")` already lists x30 and all of v0–v31 on aarch64 (Rust
//! cannot express that only the upper halves of v8–v15 are caller-saved), so
//! the explicit `lateout`s for x30 and v8–v15 change nothing in the code
//! generated; they are spelled out so that the stubs state the whole
//! callee-saved set and do not depend on that detail of `clobber_abi`.

use core::arch::asm;
use core::mem::{offset_of, size_of};

use super::EntryFn;

unsafe extern "C" {
    // Custom convention, see asm/aarch64.S: x3 = resume address,
    // x1 = where to save our sp, x2 = sp to switch to, x0 = value; the
    // other side receives x0 and, in x3, our saved sp.
    // Entered by `b`; never called.
    fn greenhack_switch_in();
    fn greenhack_switch_out();
    // The first code a fresh greenlet runs; only ever a saved resume address.
    fn greenhack_trampoline();
    // The label after the trampoline's branch into the entry function.
    static greenhack_trampoline_return: [u8; 0];
}

/// The frame a fresh greenlet's saved stack pointer points at; mirrors the
/// loads of the switch (`ldp x29, x16, [x2]; ldr x19, [x2, #0x10]`).
#[repr(C)]
struct InitialFrame {
    /// Loaded into x29: the trampoline passes it as the object pointer.
    obj: usize,
    /// Loaded into x16 and branched to.
    pc: usize,
    /// Loaded into x19: the trampoline branches to it.
    entry: usize,
    /// With `fp-control`, loaded into FPCR: the creator's, so a greenlet
    /// starts in its creator's floating-point environment. Otherwise
    /// padding that keeps sp 16-byte aligned, never read.
    fpcr: usize,
}

// The grid in asm/aarch64.S: x29 at 0x00, pc at 0x08, x19 at 0x10, FPCR or
// padding at 0x18, and a frame size that keeps sp 16-byte aligned.
const _: () = {
    assert!(offset_of!(InitialFrame, obj) == 0x00);
    assert!(offset_of!(InitialFrame, pc) == 0x08);
    assert!(offset_of!(InitialFrame, entry) == 0x10);
    assert!(offset_of!(InitialFrame, fpcr) == 0x18);
    assert!(size_of::<InitialFrame>() == 0x20);
    assert!(size_of::<InitialFrame>() % super::STACK_ALIGN == 0);
};

/// Lays out a fresh stack below `top`: `obj` copied to a 16-byte aligned
/// slot, then the initial frame. Returns the saved stack pointer to resume.
///
/// # Safety
///
/// `top` must be 16-byte aligned and the memory below it writable for the
/// object plus 64 bytes. Ownership of `*obj` passes to the stack: the caller
/// must not drop it.
pub(crate) unsafe fn init_stack<T>(top: usize, entry: EntryFn, obj: *const T) -> usize {
    // SAFETY: the caller's contract, with the image written in place.
    unsafe { init_stack_image(top, top, entry, obj) }
}

/// [`init_stack`] for a stack that is elsewhere: lays out the frames that
/// belong below `top`, but writes them below `image_top` instead (the same
/// bytes, moved by `top - image_top`), for a sliced greenlet whose first
/// slice is built on the heap and copied to `top` when it first runs. The
/// addresses inside the frames are those below `top`.
///
/// # Safety
///
/// The memory below `image_top` must be writable for the object plus 64
/// bytes (no alignment needed: it is written byte-wise); `top` must be
/// 16-byte aligned. Ownership of `*obj` passes to the image.
pub(crate) unsafe fn init_stack_image<T>(
    top: usize,
    image_top: usize,
    entry: EntryFn,
    obj: *const T,
) -> usize {
    let align = core::mem::align_of::<T>().max(super::STACK_ALIGN);
    let obj_addr = super::alloc_below(top, size_of::<T>(), align);
    // The switch leaves sp = saved sp + 0x20 = obj_addr (16-byte aligned)
    // when it branches to the trampoline.
    let sp = obj_addr - size_of::<InitialFrame>();
    // Where an address below `top` is written.
    let at = |addr: usize| (image_top - (top - addr)) as *mut u8;
    // SAFETY: both regions lie in the writable memory below `image_top`
    // that the caller vouches for; the writes need no alignment.
    unsafe {
        core::ptr::copy_nonoverlapping(obj.cast::<u8>(), at(obj_addr), size_of::<T>());
        at(sp).cast::<InitialFrame>().write_unaligned(InitialFrame {
            obj: obj_addr,
            pc: greenhack_trampoline as *const () as usize,
            entry: entry as *const () as usize,
            fpcr: current_fpcr(),
        });
    }
    sp
}

/// True if the saved frame at `sp` is a fresh greenlet's (it would resume
/// in the trampoline).
pub(crate) fn is_fresh_frame(sp: usize) -> bool {
    // SAFETY: `sp` is a saved stack pointer, which points at a saved frame
    // (see the grid in asm/aarch64.S: the resume address is word 1).
    let pc = unsafe { (sp as *const InitialFrame).read() }.pc;
    pc == greenhack_trampoline as *const () as usize
}

/// The current FPCR with `fp-control`; 0 (unused padding) without.
fn current_fpcr() -> usize {
    #[cfg(feature = "fp-control")]
    {
        let fpcr: usize;
        // SAFETY: reading FPCR has no side effects.
        unsafe { asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack, preserves_flags)) };
        fpcr
    }
    #[cfg(not(feature = "fp-control"))]
    0
}

/// The code address stored above the parent link, so that a frame-pointer
/// walker sees the root of a greenlet's chain "return" into the trampoline.
#[inline]
pub(crate) fn trampoline_return() -> usize {
    // Taking the address of an extern static needs no unsafe.
    core::ptr::addr_of!(greenhack_trampoline_return) as usize
}

/// Resumes the greenlet whose saved stack pointer is `sp`, handing it the
/// words `kind` and `payload`. Our own stack pointer is stored in
/// `*parent_link` for the greenlet to switch back to. Returns the two words
/// the greenlet hands back and the greenlet's saved stack pointer (the value
/// it also stored in its save slot).
///
/// # Safety
///
/// `sp` must be the saved stack pointer of a suspended (or fresh) greenlet of
/// this thread and `parent_link` the parent-link slot of that same greenlet.
#[inline(always)]
pub(crate) unsafe fn switch_in(
    kind: usize,
    payload: usize,
    parent_link: *mut usize,
    sp: usize,
) -> (usize, usize, usize) {
    let (kind_out, payload_out, their_sp): (usize, usize, usize);
    // SAFETY: the caller guarantees `sp` is a valid suspended context; the
    // routine saves x19/x29/pc and the operands declare every other register
    // clobbered (x16, which the routine uses, by `clobber_abi`), so
    // all state the compiler relies on survives. Without `nostack`, the
    // compiler keeps sp 16-byte aligned and nothing live below it, as the
    // routine's store of its frame below sp requires.
    unsafe {
        asm!(
            // Our resume address, then hand over to the routine.
            "adr x3, 2f",
            "b {switch}",
            // The greenlet switched back: x0 and x4 hold its words, x19/x29
            // are ours again. The trampoline's CFI points unwinders at this very
            // address (signal-frame lookup, no -1): keep an instruction of
            // this function after it.
            "2:",
            "nop",
            switch = sym greenhack_switch_in,
            inlateout("x0") kind => kind_out,
            inlateout("x4") payload => payload_out,
            lateout("x3") their_sp,
            in("x1") parent_link,
            in("x2") sp,
            lateout("x20") _, lateout("x21") _, lateout("x22") _,
            lateout("x23") _, lateout("x24") _, lateout("x25") _,
            lateout("x26") _, lateout("x27") _, lateout("x28") _,
            lateout("x30") _,
            lateout("v8") _, lateout("v9") _, lateout("v10") _, lateout("v11") _,
            lateout("v12") _, lateout("v13") _, lateout("v14") _, lateout("v15") _,
            clobber_abi("C"),
        );
    }
    (kind_out, payload_out, their_sp)
}

/// Suspends the running greenlet: stores our stack pointer in `*save` and
/// continues the side whose saved stack pointer is `sp` (the parent link),
/// handing it the words `kind` and `payload`. Returns the two words of the
/// next resume.
///
/// # Safety
///
/// Must run on a greenlet's stack, with `sp` the current value of its parent
/// link.
#[inline(always)]
pub(crate) unsafe fn switch_out(
    kind: usize,
    payload: usize,
    save: *mut usize,
    sp: usize,
) -> (usize, usize) {
    let (kind_out, payload_out): (usize, usize);
    // SAFETY: as for `switch_in`; `sp` is the resumer's frame saved by its
    // `switch_in`, which is suspended while we run.
    unsafe {
        asm!(
            "adr x3, 2f",
            "b {switch}",
            "2:",
            switch = sym greenhack_switch_out,
            inlateout("x0") kind => kind_out,
            inlateout("x4") payload => payload_out,
            lateout("x3") _,
            in("x1") save,
            in("x2") sp,
            lateout("x20") _, lateout("x21") _, lateout("x22") _,
            lateout("x23") _, lateout("x24") _, lateout("x25") _,
            lateout("x26") _, lateout("x27") _, lateout("x28") _,
            lateout("x30") _,
            lateout("v8") _, lateout("v9") _, lateout("v10") _, lateout("v11") _,
            lateout("v12") _, lateout("v13") _, lateout("v14") _, lateout("v15") _,
            clobber_abi("C"),
        );
    }
    (kind_out, payload_out)
}

/// Starts loading the cache line holding `addr` into every cache level and
/// returns at once. A hint only: it never faults, whatever `addr` is
/// (unmapped, freed, null), and has no effect the program can observe except
/// timing.
#[inline(always)]
pub(crate) fn prefetch(addr: usize) {
    // SAFETY: `prfm` reads nothing architecturally and cannot fault, whatever
    // the address; it touches no register but its operand, no flags and no
    // stack.
    unsafe {
        asm!(
            "prfm pldl1keep, [{addr}]",
            addr = in(reg) addr,
            options(nostack, readonly, preserves_flags),
        );
    }
}
