//! x86_64 System V: the switch, inline at each call site, and the Rust face
//! of `asm/x86_64.S` (the trampoline, and the drawings of the saved frame
//! and of the convention the switch follows).
//!
//! The switch saves only rbx, rbp and the resume address; the asm! blocks
//! declare every other register the ABI calls callee-saved (r12–r15)
//! clobbered, together with everything `clobber_abi("sysv64")` covers. The
//! compiler then spills only what is live across a switch, and can hoist
//! those spills out of a loop.
//!
//! The switches are `#[inline(always)]` and their instructions sit in the
//! asm! blocks themselves, not in a routine jumped to: the resume label and
//! the indirect `jmp` into the other side are then per call site, where the
//! branch predictor learns each one's target, and a round trip takes two
//! taken branches fewer (the flat round trip in a user crate went from ~10
//! to ~9 cycles; the `.S` routines they replace were jumped to, never
//! called). A call frame around them would add a `call`/`ret` pair whose
//! `ret` crosses the switch.

use core::arch::asm;
use core::mem::{offset_of, size_of};

use super::EntryFn;

unsafe extern "C" {
    // The first code a fresh greenlet runs; only ever a saved resume address.
    fn greenhack_trampoline();
    // The label after the trampoline's jump into the entry function.
    static greenhack_trampoline_return: [u8; 0];
}

/// The frame a fresh greenlet's saved stack pointer points at; mirrors the
/// pop order of the switch (`pop rbp; pop rcx; pop rbx`).
#[repr(C)]
struct InitialFrame {
    /// Popped into rbp: the trampoline passes it as the object pointer.
    obj: usize,
    /// Popped into rcx and jumped to.
    rip: usize,
    /// Popped into rbx: the trampoline jumps to it.
    entry: usize,
    /// MXCSR (low half) and x87 control word: the creator's, so a greenlet
    /// starts in its creator's floating-point environment.
    #[cfg(feature = "fp-control")]
    fp_control: u64,
}

// The grid in asm/x86_64.S: rbp at 0x00, rip at 0x08, rbx at 0x10, and a
// frame size that keeps the trampoline's stack 16-byte aligned.
const _: () = {
    assert!(offset_of!(InitialFrame, obj) == 0x00);
    assert!(offset_of!(InitialFrame, rip) == 0x08);
    assert!(offset_of!(InitialFrame, entry) == 0x10);
    #[cfg(feature = "fp-control")]
    assert!(offset_of!(InitialFrame, fp_control) == 0x18);
    // FRAME_SIZE in the .S file.
    #[cfg(not(feature = "fp-control"))]
    assert!(size_of::<InitialFrame>() == 0x18);
    #[cfg(feature = "fp-control")]
    assert!(size_of::<InitialFrame>() == 0x20);
};

/// The current MXCSR and x87 control word, packed as the frame stores them.
#[cfg(feature = "fp-control")]
fn current_fp_control() -> u64 {
    let mut word = 0u64;
    // SAFETY: stores 4 + 2 bytes into `word`, which is 8 bytes.
    unsafe {
        asm!(
            "stmxcsr [{p}]",
            "fnstcw [{p} + 4]",
            p = in(reg) &mut word,
            options(nostack, preserves_flags),
        );
    }
    word
}

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
    // The trampoline starts with rsp = obj_addr (16-byte aligned): right
    // above the initial frame.
    let sp = obj_addr - size_of::<InitialFrame>();
    // Where an address below `top` is written.
    let at = |addr: usize| (image_top - (top - addr)) as *mut u8;
    // SAFETY: both regions lie in the writable memory below `image_top`
    // that the caller vouches for; the writes need no alignment.
    unsafe {
        core::ptr::copy_nonoverlapping(obj.cast::<u8>(), at(obj_addr), size_of::<T>());
        at(sp).cast::<InitialFrame>().write_unaligned(InitialFrame {
            obj: obj_addr,
            rip: greenhack_trampoline as *const () as usize,
            entry: entry as *const () as usize,
            #[cfg(feature = "fp-control")]
            fp_control: current_fp_control(),
        });
    }
    sp
}

/// True if the saved frame at `sp` is a fresh greenlet's (it would resume
/// in the trampoline).
pub(crate) fn is_fresh_frame(sp: usize) -> bool {
    // SAFETY: `sp` is a saved stack pointer, which points at a saved frame
    // (see the grid in asm/x86_64.S: the resume address is word 1).
    let rip = unsafe { (sp as *const InitialFrame).read() }.rip;
    rip == greenhack_trampoline as *const () as usize
}

/// The code address stored above the parent link, so that a frame-pointer
/// walker sees the root of a greenlet's chain "return" into the trampoline.
#[inline]
pub(crate) fn trampoline_return() -> usize {
    // Taking the address of an extern static needs no unsafe.
    core::ptr::addr_of!(greenhack_trampoline_return) as usize
}

// The switch (convention and frame: see asm/x86_64.S). In: rax = free,
// rsi = where to store our sp, rdx = the other side's saved sp, rdi and
// r8 = the two words handed over, which no instruction touches. Pushes our
// frame (rbx, resume address, rbp; with `fp-control`, MXCSR and the x87
// control word above them), publishes our sp, pops the other side's frame
// and jumps to its resume address; `$hand_sp` is "mov rax, rsp" on suspend
// (the resumer wants the greenlet's sp) and empty on resume.
macro_rules! switch_asm {
    ($hand_sp:literal) => {
        concat!(
            "lea rax, [rip + 2f]\n",
            fp_save!(),
            "push rbx\n",
            "push rax\n",
            "push rbp\n",
            "mov [rsi], rsp\n",
            $hand_sp,
            "mov rsp, rdx\n",
            "pop rbp\n",
            "pop rcx\n",
            "pop rbx\n",
            fp_restore!(),
            "jmp rcx\n",
            "2:\n",
        )
    };
}

// The floating-point control words, in the frame's top word (FRAME_SIZE
// 0x20 in asm/x86_64.S), with the `fp-control` feature only.
#[cfg(feature = "fp-control")]
macro_rules! fp_save {
    () => {
        "sub rsp, 8\nstmxcsr [rsp]\nfnstcw [rsp + 4]\n"
    };
}
#[cfg(feature = "fp-control")]
macro_rules! fp_restore {
    () => {
        "ldmxcsr [rsp]\nfldcw [rsp + 4]\nadd rsp, 8\n"
    };
}
#[cfg(not(feature = "fp-control"))]
macro_rules! fp_save {
    () => {
        ""
    };
}
#[cfg(not(feature = "fp-control"))]
macro_rules! fp_restore {
    () => {
        ""
    };
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
    // switch saves rbx/rbp/rip and the operands declare every other register
    // clobbered, so all state the compiler relies on survives. Without
    // `nostack`, nothing live lies below rsp, where the frame is pushed.
    unsafe {
        asm!(
            switch_asm!(""),
            // The greenlet switched back (at the label ending the switch):
            // rdi and r8 hold its words, rbx/rbp are ours again. The
            // trampoline's CFI points unwinders at this very address
            // (signal-frame lookup, no -1): keep an instruction of this
            // function after it.
            "nop",
            inlateout("rdi") kind => kind_out,
            inlateout("r8") payload => payload_out,
            lateout("rax") their_sp,
            in("rsi") parent_link,
            in("rdx") sp,
            lateout("r12") _, lateout("r13") _, lateout("r14") _, lateout("r15") _,
            clobber_abi("sysv64"),
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
            switch_asm!("mov rax, rsp\n"),
            inlateout("rdi") kind => kind_out,
            inlateout("r8") payload => payload_out,
            lateout("rax") _,
            in("rsi") save,
            in("rdx") sp,
            lateout("r12") _, lateout("r13") _, lateout("r14") _, lateout("r15") _,
            clobber_abi("sysv64"),
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
    // SAFETY: `prefetcht0` reads nothing architecturally and cannot fault,
    // whatever the address; it touches no register but its operand, no flags
    // and no stack.
    unsafe {
        asm!(
            "prefetcht0 [{addr}]",
            addr = in(reg) addr,
            options(nostack, readonly, preserves_flags),
        );
    }
}
