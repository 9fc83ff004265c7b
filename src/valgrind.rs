//! Valgrind client requests: greenlet stacks are registered as stacks, so
//! that memcheck sees a switch as a change of stack rather than as a huge
//! frame being pushed or popped.
//!
//! # Why
//!
//! Memcheck follows every write to the stack pointer. A small move down is a
//! new frame (its memory becomes addressable but undefined), a small move up
//! is frames dying (their memory becomes inaccessible). A switch moves the
//! stack pointer from one mapping to another, often less than the
//! `--max-stackframe` threshold (2 MB) apart: unannotated, memcheck takes it
//! for a frame of that size and marks everything between the two stacks
//! (other greenlets' live frames, the resumer's frames) undefined or
//! inaccessible, and then reports thousands of invalid reads and
//! uninitialised values. Farther apart, it prints "Warning: client switching
//! stacks?". A stack registered with `VALGRIND_STACK_REGISTER` makes it
//! recognise the switch: a stack pointer that lands in another registered
//! stack changes the current stack and touches no permissions. Valgrind
//! registers the main stack and every thread's stack itself.
//!
//! Each greenlet stack is registered when it is mapped and deregistered
//! when it is unmapped ([`crate::stack`]); a pooled stack stays registered.
//! When a stack goes back to the pool, its memory is marked as a fresh
//! mapping's is (addressable and defined): the frames of the finished
//! greenlet that never returned (its entry frame) left their memory marked
//! inaccessible, and the next greenlet's closure is written there from
//! outside, before any frame of its own exists. Memcheck still checks the
//! new greenlet's locals, since it marks memory undefined as the stack
//! pointer moves down into it.
//!
//! # Cost, and why this is always on
//!
//! A client request is a fixed sequence of instructions that does nothing on
//! a real CPU: four rotates of one register that add up to a full turn, and
//! an exchange of a register with itself. Valgrind's JIT recognises the
//! sequence and performs the request instead; natively the result register
//! keeps the default value (0). Requests are made only when a stack is
//! mapped or unmapped (next to an `mmap` + `mprotect` or a `munmap`, which
//! cost microseconds) and, only when running under Valgrind, when a stack is
//! pooled; none is on the switch path. So the support is compiled in always,
//! rather than behind a cargo feature: a feature would save nothing
//! measurable, and a build without it would run under Valgrind with
//! thousands of false reports, which is the moment nobody wants to rebuild.
//!
//! The sequences and request codes are those of `valgrind.h` and
//! `memcheck.h` (Valgrind 3.19; they have been stable since 3.x). Only
//! x86_64 and aarch64 are implemented, as for the switch itself.

use core::arch::asm;

/// `VG_USERREQ__RUNNING_ON_VALGRIND` (valgrind.h).
#[cfg(test)]
const RUNNING_ON_VALGRIND: usize = 0x1001;
/// `VG_USERREQ__STACK_REGISTER` (valgrind.h).
const STACK_REGISTER: usize = 0x1501;
/// `VG_USERREQ__STACK_DEREGISTER` (valgrind.h).
const STACK_DEREGISTER: usize = 0x1502;
/// `VG_USERREQ__MAKE_MEM_DEFINED` (memcheck.h):
/// `VG_USERREQ_TOOL_BASE('M', 'C') + 2`. Other tools ignore it.
const MAKE_MEM_DEFINED: usize = (((b'M' as usize) << 24) | ((b'C' as usize) << 16)) + 2;

/// Performs a client request: `default` when not running under Valgrind.
///
/// `VALGRIND_DO_CLIENT_REQUEST_EXPR` of valgrind.h. The argument block is
/// read by Valgrind through its address; the asm takes that address, so the
/// block is in memory when the sequence runs.
#[inline]
fn client_request(default: usize, request: usize, args: [usize; 5]) -> usize {
    let block: [usize; 6] = [request, args[0], args[1], args[2], args[3], args[4]];
    let mut result = default;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: natively the four rotates of rdi add up to 3 + 13 + 61 + 51 =
    // 128 bits, two full turns, so rdi is unchanged, and `xchg rbx, rbx`
    // changes nothing; only the flags are clobbered (no `preserves_flags`).
    // Under Valgrind the sequence is replaced by the request, which reads the
    // block at rax and writes the result into rdx; memory is not declared
    // untouched, as a request may read or write client memory.
    unsafe {
        asm!(
            "rol rdi, 3",
            "rol rdi, 13",
            "rol rdi, 61",
            "rol rdi, 51",
            "xchg rbx, rbx",
            in("rax") block.as_ptr(),
            inout("rdx") result,
            options(nostack),
        );
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: natively the four rotates of x12 add up to 3 + 13 + 51 + 61 =
    // 128 bits, two full turns, so x12 is unchanged, and `orr x10, x10, x10`
    // changes nothing. Under Valgrind the sequence is replaced by the
    // request, which reads the block at x4 and writes the result into x3.
    unsafe {
        asm!(
            "ror x12, x12, #3",
            "ror x12, x12, #13",
            "ror x12, x12, #51",
            "ror x12, x12, #61",
            "orr x10, x10, x10",
            in("x4") block.as_ptr(),
            inout("x3") result,
            options(nostack, preserves_flags),
        );
    }
    result
}

/// True when the program runs under Valgrind (any tool). The library itself
/// needs no such test: a stack's id is nonzero exactly under Valgrind.
#[cfg(test)]
fn running() -> bool {
    client_request(0, RUNNING_ON_VALGRIND, [0; 5]) != 0
}

/// Registers `low..high` (a stack's usable range, `high` exclusive) as a
/// stack. Returns Valgrind's id for it, or 0 when not running under Valgrind
/// (Valgrind's own id 0 is the main stack, never returned here).
#[inline]
pub(crate) fn stack_register(low: usize, high: usize) -> usize {
    // valgrind.h: "start is the lowest addressable stack byte, end is the
    // highest addressable stack byte".
    client_request(0, STACK_REGISTER, [low, high - 1, 0, 0, 0])
}

/// Deregisters the stack `id` returned by [`stack_register`]; nothing for 0.
#[inline]
pub(crate) fn stack_deregister(id: usize) {
    if id != 0 {
        client_request(0, STACK_DEREGISTER, [id, 0, 0, 0, 0]);
    }
}

/// Tells memcheck that `low..high` is addressable and defined, as a fresh
/// anonymous mapping is. Nothing natively; ignored by other tools.
#[inline]
pub(crate) fn make_mem_defined(low: usize, high: usize) {
    client_request(0, MAKE_MEM_DEFINED, [low, high - low, 0, 0, 0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_return_the_default_natively() {
        if running() {
            // Under Valgrind: the requests are real; registering returns a
            // fresh id (the main stack has 0).
            let mut local = [0u8; 64];
            let r = local.as_mut_ptr_range();
            let id = stack_register(r.start as usize, r.end as usize);
            assert_ne!(id, 0);
            stack_deregister(id);
        } else {
            assert_eq!(client_request(7, RUNNING_ON_VALGRIND, [0; 5]), 7);
            assert_eq!(stack_register(0x1000, 0x2000), 0);
            stack_deregister(0);
            let local = [1u8; 64];
            let r = local.as_ptr_range();
            make_mem_defined(r.start as usize, r.end as usize);
            assert_eq!(local, [1u8; 64]);
        }
    }
}
