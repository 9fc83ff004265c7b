//! Turns a hit on a greenlet's guard page into a clear message and an abort.
//!
//! A greenlet that recurses too deep touches the `PROT_NONE` page below its
//! stack and the kernel raises `SIGSEGV` (or `SIGBUS`). The handler installed
//! here runs on the thread's alternate signal stack — the faulting stack has
//! no room left — and looks the fault address up in the thread's list of
//! mapped stacks (`stack::guard_owner`). If the address is a greenlet's guard
//! page it writes
//!
//! ```text
//! greenhack: greenlet 'parser' (id 7) overflowed its stack of 262144 bytes
//! ```
//!
//! to standard error and aborts. Any other fault goes to the handler that was
//! installed before ours (std's own stack-overflow reporter, a sanitizer's,
//! or the default action, which then dumps core as usual).
//!
//! The handler uses only async-signal-safe operations: a thread-local load,
//! reads of mapped memory, `write(2)`, `sigaction(2)` and `abort(3)`.
//!
//! The handler is installed when the process maps its first greenlet
//! stack: greenlets get their stacks from [`greenlet_stack`], which makes
//! sure of it whenever it maps one. (`stack` itself, the lower layer, knows
//! nothing of this module.)
//!
//! # Alternate stacks
//!
//! Rust's standard library gives the main thread and every thread it spawns
//! an alternate signal stack. For a thread without one (created by C code),
//! the first greenlet stack mapped on it installs one, freed when the thread
//! exits.

use std::cell::Cell;
use std::io;
use std::mem;
use std::ptr;
use std::sync::Once;
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::stack::{self, Stack};

/// The handlers that were installed before ours, one per signal; written
/// once under `INSTALL`, read by the signal handler.
static PREV_SEGV: AtomicPtr<libc::sigaction> = AtomicPtr::new(ptr::null_mut());
static PREV_BUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(ptr::null_mut());
static INSTALL: Once = Once::new();

thread_local! {
    static ALT_STACK_CHECKED: Cell<bool> = const { Cell::new(false) };
    static OWN_ALT_STACK: OwnAltStack = const { OwnAltStack(Cell::new(0)) };
}

/// A stack of `size` usable bytes for a new greenlet, its guard page
/// watched by the handler: taken from this thread's pool, or mapped, and
/// then the handler is installed if it is not yet. (A pooled stack was
/// mapped on this thread, which then installed it.)
#[inline(always)]
pub(crate) fn greenlet_stack(size: usize) -> io::Result<Stack> {
    match Stack::pooled(size) {
        Some(stack) => Ok(stack),
        None => map_greenlet_stack(size),
    }
}

#[cold]
#[inline(never)]
fn map_greenlet_stack(size: usize) -> io::Result<Stack> {
    let stack = Stack::map(size)?;
    ensure_installed();
    Ok(stack)
}

/// Installs the process-wide handler (once) and makes sure this thread has
/// an alternate signal stack. Called whenever a greenlet stack is mapped.
fn ensure_installed() {
    INSTALL.call_once(|| {
        // SAFETY: installing a handler with a valid function and saving the
        // previous one; the leaked boxes live for the rest of the process.
        unsafe {
            PREV_SEGV.store(install(libc::SIGSEGV), Ordering::Release);
            PREV_BUS.store(install(libc::SIGBUS), Ordering::Release);
        }
    });
    if !ALT_STACK_CHECKED.with(|c| c.replace(true)) {
        ensure_alt_stack();
    }
}

/// # Safety
///
/// `sig` must be a signal whose handler may be replaced.
unsafe fn install(sig: libc::c_int) -> *mut libc::sigaction {
    // SAFETY: zeroed sigaction is a valid "no handler" value; sigemptyset and
    // sigaction get valid pointers.
    unsafe {
        let mut action: libc::sigaction = mem::zeroed();
        action.sa_sigaction = handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        let prev = Box::into_raw(Box::new(mem::zeroed::<libc::sigaction>()));
        if libc::sigaction(sig, &action, prev) != 0 {
            drop(Box::from_raw(prev));
            return ptr::null_mut();
        }
        prev
    }
}

/// An alternate signal stack this thread had to map itself.
struct OwnAltStack(Cell<usize>);

/// Size of an alternate stack we map: generous next to the handler's needs
/// (a few hundred bytes), and above glibc's dynamic `SIGSTKSZ` for AVX-512.
const ALT_STACK_SIZE: usize = 64 * 1024;

fn ensure_alt_stack() {
    // SAFETY: querying the current alternate stack.
    let mut current: libc::stack_t = unsafe { mem::zeroed() };
    // SAFETY: a null new stack only queries; `current` is writable.
    if unsafe { libc::sigaltstack(ptr::null(), &mut current) } != 0 {
        return;
    }
    if current.ss_flags & libc::SS_DISABLE == 0 {
        return; // std (or someone) already gave this thread one
    }
    let page = stack::page_size();
    // SAFETY: a fresh anonymous mapping; a guard page below the signal stack.
    let base = unsafe {
        libc::mmap(
            ptr::null_mut(),
            ALT_STACK_SIZE + page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return;
    }
    // SAFETY: the first page of our own mapping becomes its guard.
    unsafe { libc::mprotect(base, page, libc::PROT_NONE) };
    let stack = libc::stack_t {
        ss_sp: (base as usize + page) as *mut libc::c_void,
        ss_flags: 0,
        ss_size: ALT_STACK_SIZE,
    };
    // SAFETY: `stack` describes memory we own until the thread exits.
    if unsafe { libc::sigaltstack(&stack, ptr::null_mut()) } == 0 {
        OWN_ALT_STACK.with(|o| o.0.set(base as usize));
    } else {
        // SAFETY: unmapping what we just mapped and nobody uses.
        unsafe { libc::munmap(base, ALT_STACK_SIZE + page) };
    }
}

impl Drop for OwnAltStack {
    fn drop(&mut self) {
        let base = self.0.get();
        if base == 0 {
            return;
        }
        // SAFETY: disable the alternate stack before unmapping it, so no
        // signal can land on freed memory.
        unsafe {
            let disable = libc::stack_t {
                ss_sp: ptr::null_mut(),
                ss_flags: libc::SS_DISABLE,
                ss_size: 0,
            };
            libc::sigaltstack(&disable, ptr::null_mut());
            libc::munmap(
                base as *mut libc::c_void,
                ALT_STACK_SIZE + stack::page_size(),
            );
        }
    }
}

/// The SIGSEGV/SIGBUS handler.
extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    if let Some(header) = stack::guard_owner(addr) {
        report_overflow(header);
        // SAFETY: abort is async-signal-safe.
        unsafe { libc::abort() };
    }
    forward(sig, info, ctx);
}

/// Writes the overflow message with `write(2)` and no allocation.
fn report_overflow(header: &stack::StackHeader) {
    let mut buf = Buf::new();
    buf.push(b"\ngreenhack: greenlet ");
    let name = header.name_ptr.get();
    if !name.is_null() {
        buf.push(b"'");
        // SAFETY: name_ptr/len point into the live Greenlet's name.
        buf.push(unsafe { std::slice::from_raw_parts(name, header.name_len.get()) });
        buf.push(b"' (id ");
        buf.push_u64(header.id.get());
        buf.push(b")");
    } else {
        buf.push_u64(header.id.get());
    }
    buf.push(b" overflowed its stack of ");
    buf.push_u64((header.map_len() - stack::page_size()) as u64);
    buf.push(b" bytes; give it more with greenlet::Builder::stack_size. Aborting.\n");
    // SAFETY: write(2) on stderr with a valid buffer.
    unsafe { libc::write(2, buf.bytes.as_ptr().cast(), buf.len) };
}

/// Hands a fault that is not ours to the previous handler.
fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let prev = if sig == libc::SIGBUS {
        &PREV_BUS
    } else {
        &PREV_SEGV
    };
    let prev = prev.load(Ordering::Acquire);
    // SAFETY: `prev` was written once before our handler could run and is
    // never freed; calling the previous handler with our arguments is what
    // the kernel would have done.
    unsafe {
        if prev.is_null() {
            reset_default(sig);
            return;
        }
        let action = &*prev;
        let h = action.sa_sigaction;
        if h == libc::SIG_DFL || h == libc::SIG_IGN {
            // Restore it and return: the faulting instruction runs again and
            // the default action (core dump) applies.
            libc::sigaction(sig, action, ptr::null_mut());
        } else if action.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                mem::transmute(h);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = mem::transmute(h);
            f(sig);
        }
    }
}

/// # Safety
///
/// Async-signal-safe: only sigaction.
unsafe fn reset_default(sig: libc::c_int) {
    // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask.
    unsafe {
        let mut dfl: libc::sigaction = mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &dfl, ptr::null_mut());
    }
}

/// A fixed buffer for composing the message without allocating.
struct Buf {
    bytes: [u8; 512],
    len: usize,
}

impl Buf {
    fn new() -> Buf {
        Buf {
            bytes: [0; 512],
            len: 0,
        }
    }

    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_u64(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

#[cfg(test)]
mod tests {
    use super::Buf;

    #[test]
    fn buf_formats_numbers_and_truncates() {
        let mut b = Buf::new();
        b.push(b"x=");
        b.push_u64(0);
        b.push(b",");
        b.push_u64(u64::MAX);
        assert_eq!(&b.bytes[..b.len], b"x=0,18446744073709551615");
        b.push(&[b'a'; 1000]);
        assert_eq!(b.len, 512);
    }
}
