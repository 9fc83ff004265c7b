/*
 * greenhack context switch — x86_64, System V ABI, ELF, GNU as (Intel syntax).
 *
 * The switch itself is inline at each call site: the `switch_asm!` asm!
 * blocks of src/arch/x86_64.rs (resume: leave the resumer's stack, enter a
 * greenlet's; suspend: the way back). One routine lives here:
 *
 *   greenhack_trampoline   where a fresh greenlet starts on its first resume
 *
 * and this file draws, for both, the switch's convention and saved frame.
 *
 * ---------------------------------------------------------------------------
 * The switch's convention (custom; inline asm, never called):
 *
 *   no `call` and no `ret`: the switch pushes its resume address and leaves
 *   by an indirect `jmp`, so the CPU's return-stack buffer is never pushed
 *   or popped by a switch. A `ret` into the other stack would pop an entry
 *   pushed on this one and mispredict (~7 ns); each call site's `jmp` is
 *   predicted by the indirect-branch predictor instead.
 *
 *   in   rax  free: takes this side's resume address (the label ending the
 *             asm! block)
 *        rsi  where to store this side's stack pointer
 *        rdx  the other side's saved stack pointer
 *        rdi, r8  the two words handed over (kind and payload); never
 *             touched, so they arrive unchanged on the other side
 *   out  rbx, rbp: the other side's, restored from its frame
 *        rax: on suspend, this side's saved stack pointer (what it stored
 *             in [rsi]), so the resumer gets the greenlet's in a register;
 *             on resume, garbage
 *        rcx: clobbered (holds the resume address we jump to)
 *
 *   Everything else the ABI calls callee-saved (r12-r15) is declared clobbered
 *   by the asm! block, so the compiler spills only what is live across the
 *   switch. rbx and rbp cannot be declared clobbered in Rust inline asm (LLVM
 *   reserves them), so the switch saves them in its frame.
 *
 * MXCSR and the x87 control word are callee-saved by the ABI. By default they
 * are NOT saved: Rust code never changes them, and the serialising
 * ldmxcsr/fldcw pair costs more than the rest of the switch (measured with
 * the `fp-control` cargo feature, which saves them: see README, "Switch
 * variants"). corosensei and libco make the same choice; boost.context and
 * CPython's greenlet make the other. A program whose greenlets change the
 * rounding mode or denormal flushing (fesetround, DAZ/FTZ) enables
 * `fp-control`, which defines GREENHACK_FP_CONTROL here (and adds the save
 * and restore to `switch_asm!`) and adds one word to the frame.
 *
 * ---------------------------------------------------------------------------
 * The saved frame. A suspended side's stack pointer points at three words;
 * offsets are the ones `switch_asm!` and the trampoline use:
 *
 *      word  offset  holds
 *      ----  ------  ------------------------------------------------------
 *        0    0x00   rbp         \  a valid frame record (rbp, return address)
 *        1    0x08   resume rip  /  so frame-pointer walkers can step through
 *        2    0x10   rbx
 *       (3    0x18   MXCSR (low 4 bytes), x87 CW (next 2): fp-control only)
 *                    ...         <- FRAME_SIZE (0x18, or 0x20 with
 *                                   fp-control): the asm! block's rsp before the
 *                                   switch, the CFA the trampoline computes
 *
 * Stack top of a greenlet (the StackHeader of src/stack.rs, highest addresses
 * first). While the greenlet runs:
 *
 *      +-----------------------+  <- stack top (page aligned)
 *      |  ... StackHeader ...  |
 *      | frame-record rip      |  header + 0x08: greenhack_trampoline_return, so
 *      +-----------------------+  the chain's root "returns" into the trampoline
 *      | parent link           |  header + 0x00: the resumer's saved sp. The
 *      +-----------------------+  greenlet's root rbp points here.
 *      | closure (F), aligned  |  written by init_stack, moved out on entry
 *      +-----------------------+
 *      | greenlet frames ...   |
 *
 * The resumer's stack while the greenlet runs:
 *
 *      | resumer frames ...    |
 *      +-----------------------+  <- CFA of the trampoline frame
 *      | rbx                   |
 *      | resume rip            |  (the label ending the resume asm! block)
 *      | rbp                   |  <- parent link points here
 *      +-----------------------+
 *
 * A fresh greenlet, as init_stack (src/arch/x86_64.rs) leaves it:
 *
 *      | closure (F)           |  <- 16-byte aligned
 *      +-----------------------+
 *      |(MXCSR, CW: creator's) |  fp-control only
 *      +-----------------------+
 *      | rbx = entry function  |  the monomorphised Rust entry point
 *      | rip = trampoline      |
 *      | rbp = &closure        |  <- initial saved sp
 *      +-----------------------+
 */

        .intel_syntax noprefix
        .text

#ifdef GREENHACK_FP_CONTROL
#define FRAME_SIZE 0x20
#else
#define FRAME_SIZE 0x18
#endif

/*
 * greenhack_trampoline: the first instruction a greenlet runs.
 *
 * Entered from the resume switch (`switch_in`) on the first resume, with:
 *   rsp  16-byte aligned, just below the closure (init_stack guarantees it)
 *   rbx  the Rust entry function, popped from the fresh frame
 *   rbp  the address of the closure, popped from the fresh frame
 *   rsi  the address of the parent link (the resumer's `mov [rsi], rsp`
 *        just filled it)
 *   rdi  the kind handed over by the first resume
 *   r8   the payload handed over by the first resume
 *   rax  garbage (the resumer's resume address)
 *
 * It calls entry(rdi = kind, rsi = &parent link, rdx = &closure, rcx =
 * payload), which never returns: a finished greenlet leaves through a
 * suspend switch.
 *
 * Its unwind information is what makes a backtrace taken inside a greenlet
 * continue into the code that resumed it: the CFA is computed from the parent
 * link, and the resumer's rip, rbp and rbx are read from the saved frame.
 */
        .globl  greenhack_trampoline
        .hidden greenhack_trampoline
        .type   greenhack_trampoline, @function
        .balign 16
greenhack_trampoline:
        .cfi_startproc
        /* gdb refuses a backtrace whose frame addresses do not grow ("previous
         * frame inner to this frame"); a greenlet's stack may lie below its
         * resumer's. Signal frames are allowed to jump stacks, so say we are
         * one. The cost: the unwinder looks up the resumer's frame at the
         * resume address itself rather than one byte before it, so every
         * resume label in src/arch is followed by an instruction of the same
         * function (a `nop`). */
        .cfi_signal_frame
        /* The frame pointer of the root frame points at the parent link:
         * [rbp] = the resumer's saved sp, which points at the resumer's
         * (rbp, rip) record, and [rbp + 8] = greenhack_trampoline_return. The
         * frame-pointer chain therefore runs on into the resumer, and
         * terminates where the resumer's own chain does. */
        mov     rdx, rbp
        mov     rbp, rsi
        /* CFA = [rbp] + FRAME_SIZE, as a DWARF expression:
         *   0x0f        DW_CFA_def_cfa_expression
         *   0x05        expression length: 5 bytes
         *   0x76 0x00   DW_OP_breg6 (rbp) + 0; gdb mishandles DW_OP_reg6 here
         *   0x06        DW_OP_deref: load the parent link = resumer's sp
         *   0x23 N      DW_OP_plus_uconst FRAME_SIZE (0x18 or 0x20): skip the
         *               saved frame (the CFA is the asm! block's rsp before it) */
        .cfi_escape 0x0f, 0x05, 0x76, 0x00, 0x06, 0x23, FRAME_SIZE
        /* The resumer's registers, as offsets from that CFA (see the saved
         * frame grid): rbx at word 2, rip at word 1, rbp at word 0. */
        .cfi_offset rbx, 0x10 - FRAME_SIZE
        .cfi_offset rip, 0x08 - FRAME_SIZE
        .cfi_offset rbp, 0x00 - FRAME_SIZE
        /* Call the entry with push + jmp rather than `call`: the entry never
         * returns, and a `call` would leave a return-stack-buffer entry that
         * the resumer's next `ret` would pop and mispredict. */
        mov     rcx, r8
        lea     rax, [rip + greenhack_trampoline_return]
        push    rax
        jmp     rbx
        .globl  greenhack_trampoline_return
        .hidden greenhack_trampoline_return
greenhack_trampoline_return:
        /* Never reached: entry functions do not return. The instruction keeps
         * the return address inside this function's bounds, where both the
         * ra-1 lookup of ordinary unwinders and gdb's signal-frame lookup find
         * the CFI above. */
        ud2
        .cfi_endproc
        .size   greenhack_trampoline, . - greenhack_trampoline

        .section .note.GNU-stack, "", @progbits
