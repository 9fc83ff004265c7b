/*
 * greenhack context switch — aarch64, AAPCS64, ELF, GNU as.
 *
 * The same three routines as asm/x86_64.S, with the same roles, the same
 * convention (entered by a direct branch from an asm! stub, left by an
 * indirect one) and the same unwind trick. asm/x86_64.S gives the reasoning
 * behind all of that; this file comments only what differs on aarch64.
 *
 *   greenhack_switch_in    resume: leave the resumer's stack, enter a greenlet's
 *   greenhack_switch_out   suspend: leave a greenlet's stack, enter its resumer's
 *   greenhack_trampoline   where a fresh greenlet starts on its first resume
 *
 * ---------------------------------------------------------------------------
 * Calling convention (custom; reached only from the asm! stubs in
 * src/arch/aarch64.rs, never called from C):
 *
 *   entered by `b`, left by `br`: no `bl` and no `ret`. On aarch64 the
 *   return-stack predictor is pushed by `bl`/`blr` and popped by `ret` only
 *   (`br` is predicted as a plain indirect branch), so the pair leaves it
 *   untouched, as `jmp`/`jmp` does on x86_64.
 *
 *   in   x3   this side's resume address (`adr x3, 2f` in the stub)
 *        x1   where to store this side's stack pointer
 *        x2   the other side's saved stack pointer
 *        x0, x4  the two words handed over (kind and payload); never
 *             touched, so they arrive unchanged on the other side (x0 is
 *             also the first argument register, which is what the
 *             trampoline needs; it moves x4 to x3)
 *   out  x19, x29: the other side's, restored from its frame
 *        x3: this side's saved stack pointer (what it stored in [x1]), so
 *            the resumer gets the greenlet's in a register on suspend
 *        x16: clobbered (the address we branch to)
 *
 *   The asm! stubs declare x20-x28, x30 (lr) and v8-v15 clobbered, the rest
 *   of the callee-saved set of AAPCS64 (x19-x29, x30, sp, d8-d15). x19 and
 *   x29 cannot be named as operands in Rust inline asm (LLVM reserves x19 as
 *   its base pointer and x29 as the frame pointer), so they are saved here.
 *   x18, the platform register, is never touched.
 *
 *   The branch goes through x16 (IP0), the register AAPCS64 sets aside for
 *   veneers and PLT stubs, i.e. for exactly this kind of tail branch.
 *
 * FPCR (rounding mode, flush-to-zero) is callee-saved by AAPCS64 and is NOT
 * saved by default, for the reasons MXCSR is not on x86_64: Rust code never
 * changes it, and an `msr fpcr` per switch is a system-register write that
 * many cores serialise (not measured on aarch64 by this project: no
 * hardware). The `fp-control` cargo feature (GREENHACK_FP_CONTROL) saves it
 * in the frame's padding word, so the frame keeps its size.
 *
 * Hardening: Debian's aarch64-unknown-linux-gnu target builds without BTI
 * and PAC, and so does this file. This object carries no
 * GNU_PROPERTY_AARCH64_FEATURE_1_AND note, so a binary linked from BTI code
 * and this file has BTI switched off by the linker rather than faulting.
 * Enabling BTI would need: `bti j` after each resume label in the stubs,
 * `bti c` at greenhack_trampoline (a `br x16` may land on `bti c`), the jump
 * into the entry function made through x16 or x17 (an entry built with BTI
 * starts with `bti c`, which a `br x19` may not land on), and the property
 * note. With PAC (pac-ret), the saved resume address could be signed with
 * the saved sp as modifier (`pacib`/`autib`) to protect suspended contexts;
 * an entry function built with pac-ret signs the trampoline_return address
 * in its own frame, which unwinders already handle through its CFI.
 *
 * ---------------------------------------------------------------------------
 * The saved frame. sp must stay 16-byte aligned on aarch64 (Linux turns on
 * the hardware's alignment check for every sp-based access, SCTLR_EL1.SA0),
 * so the frame is 32 bytes, one word of padding included, where x86_64's is
 * 24. A suspended side's stack pointer points at:
 *
 *      word  offset  holds
 *      ----  ------  ------------------------------------------------------
 *        0    0x00   x29         \  a valid AArch64 frame record (fp, lr)
 *        1    0x08   resume pc   /  so frame-pointer walkers can step through
 *        2    0x10   x19
 *        3    0x18   FPCR with fp-control; otherwise padding, never written
 *                    ...         <- 0x20: the stub's sp before the switch
 *                                   (the CFA the trampoline's CFI computes)
 *
 * Stack top of a greenlet while it runs (same as x86_64; x29 is the frame
 * pointer):
 *
 *      +-----------------------+  <- stack top (page aligned)
 *      |  ... StackHeader ...  |
 *      | frame-record lr       |  header + 0x08: greenhack_trampoline_return
 *      +-----------------------+
 *      | parent link           |  header + 0x00: the resumer's saved sp. The
 *      +-----------------------+  greenlet's root x29 points here.
 *      | closure (F), aligned  |  written by init_stack, moved out on entry
 *      +-----------------------+
 *      | greenlet frames ...   |
 *
 * The resumer's stack while the greenlet runs:
 *
 *      | resumer frames ...    |
 *      +-----------------------+  <- CFA of the trampoline frame
 *      | (padding)             |
 *      | x19                   |
 *      | resume pc             |  (the label after `b greenhack_switch_in`)
 *      | x29                   |  <- parent link points here
 *      +-----------------------+
 *
 * A fresh greenlet, as init_stack (src/arch/aarch64.rs) leaves it:
 *
 *      | closure (F)           |  <- 16-byte aligned: the trampoline's sp
 *      +-----------------------+
 *      | (padding)             |
 *      | x19 = entry function  |  the monomorphised Rust entry point
 *      | pc = trampoline       |
 *      | x29 = &closure        |  <- initial saved sp
 *      +-----------------------+
 */

        .text

/* The switch. One macro, two names (see asm/x86_64.S). */
.macro GREENHACK_SWITCH name
        .globl  \name
        .hidden \name
        .type   \name, %function
        .balign 16
\name:
        .cfi_startproc
        /* Unlike x86_64.S, this routine describes itself to unwinders, so a
         * profiler or debugger stopping inside it still walks back into the
         * stub's function. On entry the return address is in x3, not lr (the
         * stub declared lr clobbered), and the CFA is sp, the CIE's default. */
        .cfi_register x30, x3
        /* Store this side's frame: one pre-indexed pair store that also moves
         * sp down by the whole 16-byte aligned frame, then x19. */
        stp     x29, x3, [sp, #-0x20]!
        .cfi_def_cfa_offset 0x20
        .cfi_offset x29, -0x20
        .cfi_offset x30, -0x18
        str     x19, [sp, #0x10]
        .cfi_offset x19, -0x10
#ifdef GREENHACK_FP_CONTROL
        mrs     x16, fpcr
        str     x16, [sp, #0x18]
#endif
        /* Publish where this side stopped. sp cannot be the source of a
         * `str` (register 31 there is xzr), hence the copy, into x3 (free
         * again: the resume address is stored). x3 reaches the other side
         * unchanged, so a resumer learns where the greenlet stopped without
         * reading it back from memory. */
        mov     x3, sp
        str     x3, [x1]
        /* Load the other side's frame through x2 before moving sp onto it,
         * so sp never points above data still to be read: a signal arriving
         * in between cannot overwrite the frame. */
#ifdef GREENHACK_FP_CONTROL
        ldr     x16, [x2, #0x18]
        msr     fpcr, x16
#endif
        ldp     x29, x16, [x2]
        ldr     x19, [x2, #0x10]
        /* Cross over, to the other side's sp before its switch. */
        add     sp, x2, #0x20
        /* From here on we are, for unwinding, at the other side's resume
         * address (held in x16) with its registers. */
        .cfi_def_cfa_offset 0
        .cfi_register x30, x16
        .cfi_same_value x29
        .cfi_same_value x19
        /* Continue after the other side's stub, or in greenhack_trampoline
         * for a fresh greenlet. x0 and x4 still hold the words handed
         * over. */
        br      x16
        .cfi_endproc
        .size   \name, . - \name
.endm

        GREENHACK_SWITCH greenhack_switch_in
        GREENHACK_SWITCH greenhack_switch_out

/*
 * greenhack_trampoline: the first instruction a greenlet runs.
 *
 * Entered from greenhack_switch_in on the first resume, with:
 *   sp   16-byte aligned, just below the closure (init_stack guarantees it)
 *   x19  the Rust entry function, loaded from the fresh frame
 *   x29  the address of the closure, loaded from the fresh frame
 *   x1   the address of the parent link (the resumer's `str x3, [x1]`
 *        just filled it)
 *   x0   the kind handed over by the first resume
 *   x4   the payload handed over by the first resume
 *   x3   the resumer's saved sp (not needed)
 *
 * It calls entry(x0 = kind, x1 = &parent link, x2 = &closure, x3 =
 * payload), which never returns. The CFA and the resumer's registers are found as on x86_64.
 */
        .globl  greenhack_trampoline
        .hidden greenhack_trampoline
        .type   greenhack_trampoline, %function
        .balign 16
greenhack_trampoline:
        .cfi_startproc
        /* For gdb; see asm/x86_64.S. The resume label in each stub of
         * src/arch/aarch64.rs is followed by a `nop` for the same reason. */
        .cfi_signal_frame
        /* Until x29 holds the parent link's address, x1 does: CFA = [x1] +
         * 0x20, so a debugger stopped on the first instructions also walks
         * into the resumer.
         *   0x0f        DW_CFA_def_cfa_expression
         *   0x05        expression length: 5 bytes
         *   0x71 0x00   DW_OP_breg1 (x1) + 0: DWARF numbers x0-x30 as 0-30,
         *               and DW_OP_breg0 is 0x70
         *   0x06        DW_OP_deref: load the parent link = resumer's sp
         *   0x23 0x20   DW_OP_plus_uconst 32: skip x29, pc, x19, padding */
        .cfi_escape 0x0f, 0x05, 0x71, 0x00, 0x06, 0x23, 0x20
        /* The resumer's registers, as offsets from that CFA (see the grid):
         * x19 at word 2, the resume pc at word 1, x29 at word 0. The resume
         * pc is restored into x30, the return-address column of AArch64
         * CFI. */
        .cfi_offset x19, -0x10
        .cfi_offset x30, -0x18
        .cfi_offset x29, -0x20
        /* x2 = &closure (third argument); then point the root frame pointer
         * at the parent link, so [x29] = the resumer's (x29, pc) record and
         * [x29 + 8] = greenhack_trampoline_return (see asm/x86_64.S). */
        mov     x2, x29
        mov     x29, x1
        /* CFA = [x29] + 0x20, for the rest of the trampoline and for every
         * unwinder that reaches it from the entry function's frame:
         *   0x0f        DW_CFA_def_cfa_expression
         *   0x05        expression length: 5 bytes
         *   0x8d 0x00   DW_OP_breg29 (x29) + 0 = 0x70 + 29
         *   0x06        DW_OP_deref: load the parent link = resumer's sp
         *   0x23 0x20   DW_OP_plus_uconst 32 */
        .cfi_escape 0x0f, 0x05, 0x8d, 0x00, 0x06, 0x23, 0x20
        /* Call the entry with lr set by hand and `br` rather than `bl`: the
         * entry never returns, and a `bl` would push a return-stack entry
         * that the resumer's next `ret` would pop and mispredict. The entry
         * saves lr in its frame record, chained to the root one above. */
        mov     x3, x4
        adr     x30, greenhack_trampoline_return
        br      x19
        .globl  greenhack_trampoline_return
        .hidden greenhack_trampoline_return
greenhack_trampoline_return:
        /* Never reached: keeps the address inside this function, see
         * asm/x86_64.S (`udf` is aarch64's ud2). */
        udf     #0
        .cfi_endproc
        .size   greenhack_trampoline, . - greenhack_trampoline

        .section .note.GNU-stack, "", %progbits
