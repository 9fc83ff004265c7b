//! Guard-page stacks, the per-thread stack pool, and the per-thread list of
//! mapped stacks that the overflow handler consults.
//!
//! # Layout
//!
//! A stack is one private anonymous mapping:
//!
//! ```text
//! +---------------------+  <- top (page aligned)
//! | StackHeader         |  link (parent or saved sp), name, list links
//! +---------------------+
//! | usable stack ...    |  grows down; pages are committed on first touch
//! |                     |
//! +---------------------+  <- base + page size
//! | guard page          |  PROT_NONE: touching it raises SIGSEGV, which
//! +---------------------+  <- base            `overflow` turns into a message
//! ```
//!
//! The whole range is reserved `PROT_NONE` first and the part above the guard
//! made read-write; the owning `Stack` value exists before the `mprotect`, so a
//! failure unmaps through `Drop`.
//!
//! # Limits
//!
//! A guarded stack costs two kernel mappings (VMAs). Linux caps a process at
//! `vm.max_map_count` of them (65530 by default), so roughly 32,000 greenlets
//! can be alive at once; `sysctl -w vm.max_map_count=N` raises it. The error
//! returned when the cap is hit says so.
//!
//! # Pool
//!
//! Finished greenlets give their stack to a per-thread pool (up to
//! [`POOL_CAPACITY`] stacks), so creating a greenlet in the steady state costs
//! no system call. The pool is a list threaded through the free stacks' own
//! headers, most recently used first: taking and giving back a stack is a
//! few loads and stores on one thread local, with no allocation and no
//! borrow flag. A stack whose use reached below its top
//! [`POOL_KEEP_BYTES`] gives those deeper pages back with
//! `madvise(MADV_DONTNEED)` before it is pooled: deep recursion once does not
//! pin memory forever.

use std::cell::Cell;
use std::io;
use std::ptr;

/// The default usable size of a greenlet stack: 256 KiB.
///
/// Pages are committed by the kernel on first touch, so the size is address
/// space, not memory: an idle greenlet that never went deep costs a few
/// pages. 256 KiB fits ordinary sync code (formatting, serde, regex matching)
/// in release and debug builds; deep recursion needs
/// [`Builder::stack_size`](crate::greenlet::Builder::stack_size).
pub const DEFAULT_STACK_SIZE: usize = 256 * 1024;

/// The smallest usable size accepted: room for the header, the entry frames
/// and a panic's unwinding, including the default panic hook's backtrace
/// (`RUST_BACKTRACE`), which it symbolizes on the panicking greenlet's stack:
/// ~24 KiB in a debug build, on top of the frames that panicked (16 KiB
/// overflowed there).
pub const MIN_STACK_SIZE: usize = 32 * 1024;

/// How many free stacks each thread keeps for reuse, unless changed with
/// [`set_pool_capacity`].
pub const POOL_CAPACITY: usize = 256;

/// How much of a pooled stack's top keeps its memory; deeper pages that were
/// used are released when the stack is pooled.
pub const POOL_KEEP_BYTES: usize = 32 * 1024;

/// The bookkeeping at the top of every stack.
///
/// It lives in the stack mapping itself so that it never moves while a
/// `Greenlet` value does, and so that the overflow handler can reach it
/// without allocating.
#[repr(C, align(16))]
pub(crate) struct StackHeader {
    /// The link between the greenlet and its resumer: the resumer's saved
    /// stack pointer while the greenlet runs (its `switch_in` stores it), and
    /// the greenlet's own saved stack pointer while it is suspended or fresh
    /// (its `switch_out` stores it, over the resumer's, which it no longer
    /// needs). The two never overlap in time, and tell themselves apart by
    /// where they point: only the greenlet's own lies inside its stack (see
    /// [`saved_sp`](Self::saved_sp)). One slot rather than two: a second
    /// store on every resume, to mark the greenlet running, cost ~0.4 ns of
    /// a ~2.3 ns round trip. Must stay at offset 0: the trampoline points
    /// the greenlet's root frame pointer here and its CFI dereferences it.
    pub(crate) parent_link: Cell<usize>,
    /// A code address above the parent link, making `(parent_link, ret)` a
    /// frame record for frame-pointer walkers. Offset 8.
    pub(crate) frame_ret: usize,
    /// Set when the owner asked the greenlet to unwind (it is being dropped).
    pub(crate) unwinding: Cell<bool>,
    /// The stack goes deeper than [`POOL_KEEP_BYTES`], so pooling it probes
    /// whether those pages were used (see `release_deep_pages`). Next to
    /// `unwinding`, in its padding.
    has_deep_pages: bool,
    /// The greenlet's name, for messages: a pointer and length into a string
    /// the `Greenlet` owns; null when unnamed or when no greenlet runs here.
    pub(crate) name_ptr: Cell<*const u8>,
    pub(crate) name_len: Cell<usize>,
    /// The greenlet's id, 0 when the stack is free.
    pub(crate) id: Cell<u64>,
    /// What the greenlet waits for while suspended by the pair layer (for
    /// `debug::dump`).
    pub(crate) wait: Cell<crate::wait::Wait>,
    /// Where the greenlet was created (`#[track_caller]`).
    pub(crate) created_at: Cell<Option<&'static std::panic::Location<'static>>>,
    /// The next free stack in this thread's pool while this one is pooled.
    next_free: Cell<*const StackHeader>,
    /// The thread's list of mapped stacks (for the overflow handler).
    next: Cell<*const StackHeader>,
    prev: Cell<*const StackHeader>,
    /// Lowest address of the mapping (the guard page). The mapping ends
    /// where the header does: see [`StackHeader::map_len`].
    pub(crate) map_base: usize,
    /// Valgrind's id for this stack; 0 when not running under Valgrind.
    pub(crate) valgrind_id: Cell<usize>,
    /// The AddressSanitizer fiber state; zero-sized without ASan.
    pub(crate) asan: crate::asan::Fiber,
}

// Two cache lines exactly, at the top of the stack: the word every switch
// touches (the parent link) shares the first with the rest of the hot
// bookkeeping, and the greenlet's frames start on a line boundary.
const _: () = {
    assert!(core::mem::offset_of!(StackHeader, parent_link) == 0);
    assert!(core::mem::offset_of!(StackHeader, frame_ret) == 8);
    assert!(core::mem::size_of::<StackHeader>() == 128 || cfg!(greenhack_asan));
};

impl StackHeader {
    /// The greenlet's saved stack pointer while it is suspended or fresh;
    /// `None` while it runs (see [`parent_link`](Self::parent_link)).
    #[inline]
    pub(crate) fn saved_sp(&self) -> Option<usize> {
        let link = self.parent_link.get();
        // A resumer runs on another stack (a thread's, or another
        // greenlet's), never inside this one.
        (link >= self.map_base && link < self as *const StackHeader as usize).then_some(link)
    }

    /// The end of the stack mapping: the header sits at its very top.
    #[inline]
    pub(crate) fn top(&self) -> usize {
        self as *const StackHeader as usize + core::mem::size_of::<StackHeader>()
    }

    /// The length of the whole mapping, guard page included.
    #[inline]
    pub(crate) fn map_len(&self) -> usize {
        self.top() - self.map_base
    }

    /// The first word below the kept top of the stack: see
    /// `release_deep_pages`.
    #[inline]
    fn deep_probe(&self) -> *const usize {
        (self.top() - POOL_KEEP_BYTES - 8) as *const usize
    }
}

/// The part of a [`StackHeader`] that belongs to the greenlet rather than
/// to the mapping: what a sliced greenlet (see `crate::slice`) takes with
/// it when its frames leave a shared stack, and brings back. The rest (the
/// list links, the mapping's bounds, the Valgrind id) stays with the stack.
#[derive(Clone)]
pub(crate) struct GreenletFields {
    pub(crate) parent_link: usize,
    pub(crate) unwinding: bool,
    pub(crate) name_ptr: *const u8,
    pub(crate) name_len: usize,
    pub(crate) id: u64,
    pub(crate) wait: crate::wait::Wait,
    pub(crate) created_at: Option<&'static std::panic::Location<'static>>,
    pub(crate) asan: crate::asan::Fiber,
}

impl GreenletFields {
    /// The greenlet's name, as [`header_name`] reads it from a header.
    pub(crate) fn name(&self) -> Option<&str> {
        // SAFETY: copied from a header (`greenlet_fields`) or set at the
        // creation of a sliced greenlet: a pointer into the `Box<str>` of
        // the `Greenlet` they belong to, alive while its slice is.
        unsafe { name_at(self.name_ptr, self.name_len) }
    }
}

impl StackHeader {
    /// The greenlet's fields, copied out.
    pub(crate) fn greenlet_fields(&self) -> GreenletFields {
        GreenletFields {
            parent_link: self.parent_link.get(),
            unwinding: self.unwinding.get(),
            name_ptr: self.name_ptr.get(),
            name_len: self.name_len.get(),
            id: self.id.get(),
            wait: self.wait.get(),
            created_at: self.created_at.get(),
            asan: self.asan.clone(),
        }
    }

    /// Makes this header the greenlet's of `f`.
    pub(crate) fn set_greenlet_fields(&self, f: &GreenletFields) {
        self.parent_link.set(f.parent_link);
        self.unwinding.set(f.unwinding);
        self.name_ptr.set(f.name_ptr);
        self.name_len.set(f.name_len);
        self.id.set(f.id);
        self.wait.set(f.wait);
        self.created_at.set(f.created_at);
        self.asan.set_from(&f.asan);
    }

    /// Marks the stack as running no greenlet, as a pooled stack is.
    pub(crate) fn clear_greenlet(&self) {
        self.id.set(0);
        self.name_ptr.set(ptr::null());
        self.wait.set(crate::wait::Wait::Nothing);
    }
}

thread_local! {
    /// Head of this thread's list of mapped stacks. Constant-initialised and
    /// without a destructor, so reading it is a plain thread-local load: safe
    /// from the SIGSEGV handler.
    static MAPPED: Cell<*const StackHeader> = const { Cell::new(ptr::null()) };
    /// This thread's pool and counters: one thread local, so taking or
    /// giving back a stack costs one thread-local access.
    static STACKS: ThreadStacks = const {
        ThreadStacks {
            free: Cell::new(ptr::null()),
            pooled: Cell::new(0),
            limit: Cell::new(POOL_CAPACITY),
            mapped: Cell::new(0),
            mmaps: Cell::new(0),
        }
    };
}

struct ThreadStacks {
    /// The pool: free stacks linked through their headers' `next_free`,
    /// most recently used first. Every stack on it is owned by the pool.
    free: Cell<*const StackHeader>,
    /// How many stacks are on `free`.
    pooled: Cell<usize>,
    /// How many stacks the pool may hold.
    limit: Cell<usize>,
    /// Stacks mapped by this thread and not yet unmapped.
    mapped: Cell<usize>,
    /// `mmap` calls for stacks so far.
    mmaps: Cell<u64>,
}

impl ThreadStacks {
    /// Takes the first free stack whose mapping is `len` bytes long.
    #[inline(always)]
    fn take(&self, len: usize) -> Option<Stack> {
        // Most pools hold one size: the most recently used stack fits.
        let head = self.free.get();
        if !head.is_null() {
            // SAFETY: every header on the free list belongs to a live mapping
            // the pool owns.
            let h = unsafe { &*head };
            if h.map_len() == len {
                // SAFETY: `free` holds `h`.
                return Some(unsafe { self.unlink(&self.free, h) });
            }
        }
        self.take_other_size(len)
    }

    /// `take` past the head of the list.
    #[cold]
    #[inline(never)]
    fn take_other_size(&self, len: usize) -> Option<Stack> {
        let mut link = &self.free;
        loop {
            let p = link.get();
            if p.is_null() {
                return None;
            }
            // SAFETY: every header on the free list belongs to a live mapping
            // the pool owns.
            let h = unsafe { &*p };
            if h.map_len() == len {
                // SAFETY: `link` holds `h`.
                return Some(unsafe { self.unlink(link, h) });
            }
            link = &h.next_free;
        }
    }

    /// Takes `h` off the free list and hands its stack over.
    ///
    /// # Safety
    ///
    /// `link` is `free` or the `next_free` of a stack on the list, and holds
    /// `h`.
    #[inline(always)]
    unsafe fn unlink(&self, link: &Cell<*const StackHeader>, h: &StackHeader) -> Stack {
        link.set(h.next_free.get());
        self.pooled.set(self.pooled.get() - 1);
        // SAFETY: the pool owned this stack; unlinked, it is ours.
        unsafe { Stack::from_header(h) }
    }

    /// Unlinks and returns every free stack after the first `keep`.
    fn split_off(&self, keep: usize) -> Vec<Stack> {
        let mut excess = Vec::new();
        let mut link = &self.free;
        for _ in 0..keep {
            let p = link.get();
            if p.is_null() {
                return excess;
            }
            // SAFETY: a live header on the free list, as in `take`.
            link = unsafe { &(*p).next_free };
        }
        let mut p = link.replace(ptr::null());
        while !p.is_null() {
            // SAFETY: a live header on the free list, as in `take`.
            let h = unsafe { &*p };
            p = h.next_free.get();
            // SAFETY: the list was cut above, so the pool no longer owns
            // this stack: it becomes ours, once.
            excess.push(unsafe { Stack::from_header(h) });
        }
        self.pooled.set(self.pooled.get() - excess.len());
        excess
    }
}

impl Drop for ThreadStacks {
    /// Thread exit: unmaps the pooled stacks.
    fn drop(&mut self) {
        drop(self.split_off(0));
    }
}

/// This thread's stack counters, from [`stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Stacks currently mapped by this thread (in use or pooled).
    pub mapped: usize,
    /// `mmap` calls made by this thread for stacks since it started.
    pub mmaps: u64,
    /// Free stacks waiting in this thread's pool.
    pub pooled: usize,
}

/// Returns this thread's stack counters.
///
/// ```
/// use greenhack::greenlet::Greenlet;
///
/// let mut g = Greenlet::<(), (), u32>::new(|_, ()| 7);
/// assert_eq!(g.resume(()).into_complete(), Some(7));
/// drop(g);
/// let before = greenhack::stack::stats();
/// let mut g = Greenlet::<(), (), u32>::new(|_, ()| 8);
/// g.resume(());
/// // The second greenlet took the first one's stack from the pool.
/// assert_eq!(greenhack::stack::stats().mmaps, before.mmaps);
/// ```
pub fn stats() -> StackStats {
    STACKS.with(|t| StackStats {
        mapped: t.mapped.get(),
        mmaps: t.mmaps.get(),
        pooled: t.pooled.get(),
    })
}

/// Sets how many free stacks this thread keeps for reuse (default
/// [`POOL_CAPACITY`]); stacks beyond the new capacity are unmapped now.
///
/// `0` disables pooling: every greenlet then maps and unmaps its own stack,
/// which is what a benchmark of fresh creation wants.
///
/// ```
/// greenhack::stack::set_pool_capacity(0);
/// assert_eq!(greenhack::stack::stats().pooled, 0);
/// ```
pub fn set_pool_capacity(stacks: usize) {
    let excess = STACKS.with(|t| {
        t.limit.set(stacks);
        // The least recently used go.
        t.split_off(stacks)
    });
    // Unmapped outside `with`: `Drop for Stack` updates the counters.
    drop(excess);
}

/// The system page size.
#[inline]
pub(crate) fn page_size() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    match PAGE.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
            PAGE.store(page, Ordering::Relaxed);
            page
        }
        page => page,
    }
}

/// A raw anonymous mapping, unmapped on drop: owns the memory while `map`
/// sets it up, before a `Stack` (with its header) exists.
struct Mapping {
    base: usize,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own the mapping and nothing runs on it.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// An owned, guarded stack mapping with its header written and linked into
/// this thread's list. Unlinked and unmapped on drop.
///
/// Two words, so that `io::Result<Stack>` travels in registers: the pool's
/// hot path moves it by value.
#[derive(Debug)]
pub(crate) struct Stack {
    /// Lowest address of the mapping: the guard page. Never null.
    base: std::ptr::NonNull<u8>,
    /// Length of the whole mapping, guard page included.
    len: usize,
}

impl Stack {
    /// Maps a stack with at least `size` usable bytes (rounded up to pages)
    /// above one guard page.
    pub(crate) fn map(size: usize) -> io::Result<Stack> {
        let page = page_size();
        let usable = checked_usable_size(size).ok_or_else(|| size_error(size))?;
        let len = usable.checked_add(page).ok_or_else(|| size_error(size))?;
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choosing touches no existing memory.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_NONE,
                // MAP_NORESERVE: a stack is mostly address space; commit
                // accounting happens page by page as it is touched.
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(map_error(io::Error::last_os_error(), len));
        }
        // Own the mapping before the next fallible step.
        let mapping = Mapping {
            base: base as usize,
            len,
        };
        // SAFETY: the range above the guard page lies inside the mapping we
        // just created and own.
        let rc = unsafe {
            libc::mprotect(
                (mapping.base + page) as *mut libc::c_void,
                usable,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc != 0 {
            return Err(map_error(io::Error::last_os_error(), len));
        }
        let mapping = std::mem::ManuallyDrop::new(mapping);
        let stack = Stack {
            // SAFETY: mmap succeeded, so the address is not null.
            base: unsafe { std::ptr::NonNull::new_unchecked(mapping.base as *mut u8) },
            len,
        };
        stack.link();
        let range = stack.range();
        let valgrind_id = crate::valgrind::stack_register(range.start, range.end);
        stack.header().valgrind_id.set(valgrind_id);
        // Late in thread exit (a thread-local's destructor making a
        // greenlet) the counters may be gone; the stack is unmapped on drop.
        let _ = STACKS.try_with(|t| {
            t.mapped.set(t.mapped.get() + 1);
            t.mmaps.set(t.mmaps.get() + 1);
        });
        Ok(stack)
    }

    /// Takes a stack of exactly `size` usable bytes from this thread's pool,
    /// if it holds one (the caller maps a new one otherwise: see
    /// `overflow::greenlet_stack`). Always inlined (as is `recycle`): a
    /// pooled create is a few loads and stores, and a call around them was
    /// measured at ~1.5 ns of the ~11 ns a pooled greenlet costs.
    #[inline(always)]
    pub(crate) fn pooled(size: usize) -> Option<Stack> {
        let len = usable_size(size).saturating_add(page_size());
        STACKS.try_with(|t| t.take(len)).ok().flatten()
    }

    /// Rebuilds the owning value of a stack from its header.
    ///
    /// # Safety
    ///
    /// `h` is the header of a live stack that nothing else owns (one just
    /// unlinked from the pool).
    #[inline]
    unsafe fn from_header(h: &StackHeader) -> Stack {
        Stack {
            // SAFETY: `map_base` came from a successful mmap: not null.
            base: unsafe { std::ptr::NonNull::new_unchecked(h.map_base as *mut u8) },
            len: h.map_len(),
        }
    }

    /// Returns the stack to this thread's pool, or unmaps it when the pool
    /// is full.
    #[inline(always)]
    pub(crate) fn recycle(self) {
        let header = self.header();
        header.clear_greenlet();
        if header.valgrind_id.get() != 0 || cfg!(greenhack_asan) {
            self.reset_sanitizer_state();
        }
        // During thread exit the pool may be gone: then the stack is unmapped.
        let pooled = STACKS.try_with(|t| {
            if t.pooled.get() >= t.limit.get() {
                return false;
            }
            // Only a stack that stays needs its deep pages released (and the
            // probe would cost a fresh stack a page fault).
            self.release_deep_pages();
            header.next_free.set(t.free.get());
            t.free.set(header);
            t.pooled.set(t.pooled.get() + 1);
            true
        });
        if pooled == Ok(true) {
            // The pool owns it now, through the free list.
            std::mem::forget(self);
        }
    }

    /// The finished greenlet's frames left marks in the sanitizers' shadow
    /// memory: make the stack look freshly mapped.
    #[cold]
    fn reset_sanitizer_state(&self) {
        let header = self.header();
        crate::asan::unpoison_stack(&header.asan);
        if header.valgrind_id.get() != 0 {
            crate::valgrind::make_mem_defined(self.base() + page_size(), self.frames_top());
        }
    }

    /// If the greenlet wrote below the kept top of the stack, gives those
    /// pages back to the kernel.
    ///
    /// The probe is the first word below the kept region: any frame that
    /// crossed that line almost always wrote it (return addresses and saved
    /// registers are written densely). A frame that straddles it without
    /// writing that word escapes; its pages are reclaimed when the stack is
    /// unmapped.
    #[inline]
    fn release_deep_pages(&self) {
        let header = self.header();
        if !header.has_deep_pages {
            return;
        }
        let probe = header.deep_probe();
        // Under ASan a frame leaves its locals' redzones unwritten, so a deep
        // recursion can step over the probe word (seen with 1 KiB arrays
        // whose redzones fell on it): there, every pooled stack is released
        // below its kept top, at the cost of one system call.
        //
        // SAFETY: with deep pages, the probe lies in the read-write part of
        // our mapping (`link` checked); reading an untouched page maps the
        // shared zero page.
        if cfg!(greenhack_asan) || unsafe { probe.read_volatile() } != 0 {
            self.release_below(probe as usize + 8);
        }
    }

    #[cold]
    fn release_below(&self, keep_from: usize) {
        let low = self.base() + page_size();
        // SAFETY: the range is page aligned, inside our mapping, and holds no
        // live frames: the greenlet that used it has finished.
        unsafe {
            libc::madvise(
                low as *mut libc::c_void,
                keep_from - low,
                libc::MADV_DONTNEED,
            );
        }
    }

    /// The lowest address of the mapping (the guard page).
    fn base(&self) -> usize {
        self.base.as_ptr() as usize
    }

    /// The highest address of the stack (exclusive), page aligned.
    pub(crate) fn top(&self) -> usize {
        self.base() + self.len
    }

    /// Where the greenlet's frames begin: just below the header.
    pub(crate) fn frames_top(&self) -> usize {
        self.top() - core::mem::size_of::<StackHeader>()
    }

    /// The lowest usable address and the top, for tests and debugging.
    pub(crate) fn range(&self) -> std::ops::Range<usize> {
        self.base() + page_size()..self.top()
    }

    pub(crate) fn header(&self) -> &StackHeader {
        // SAFETY: `map` wrote a header at `frames_top` before returning the
        // stack, and it lives as long as the mapping.
        unsafe { &*(self.frames_top() as *const StackHeader) }
    }

    pub(crate) fn header_ptr(&self) -> *mut StackHeader {
        self.frames_top() as *mut StackHeader
    }

    /// Writes the header and links it into this thread's list.
    fn link(&self) {
        let head = MAPPED.with(|m| m.get());
        let header = StackHeader {
            parent_link: Cell::new(0),
            frame_ret: crate::arch::trampoline_return(),
            unwinding: Cell::new(false),
            has_deep_pages: self.range().len() > POOL_KEEP_BYTES,
            name_ptr: Cell::new(ptr::null()),
            name_len: Cell::new(0),
            id: Cell::new(0),
            wait: Cell::new(crate::wait::Wait::Nothing),
            created_at: Cell::new(None),
            next_free: Cell::new(ptr::null()),
            next: Cell::new(head),
            prev: Cell::new(ptr::null()),
            map_base: self.base(),
            valgrind_id: Cell::new(0),
            asan: crate::asan::Fiber::new(self.range()),
        };
        let h = self.header_ptr();
        // SAFETY: the header slot is read-write memory of our mapping,
        // aligned to 16 (top is page aligned, the header size a multiple of 16).
        unsafe { h.write(header) };
        if !head.is_null() {
            // SAFETY: every header on the list belongs to a live mapping.
            unsafe { (*head).prev.set(h) };
        }
        MAPPED.with(|m| m.set(h));
    }

    fn unlink(&self) {
        let h = self.header();
        let (next, prev) = (h.next.get(), h.prev.get());
        // SAFETY: neighbours on the list belong to live mappings of this
        // thread (a Stack is !Send, so it is dropped where it was mapped).
        unsafe {
            if !next.is_null() {
                (*next).prev.set(prev);
            }
            if prev.is_null() {
                let _ = MAPPED.try_with(|m| m.set(next));
            } else {
                (*prev).next.set(next);
            }
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.unlink();
        crate::valgrind::stack_deregister(self.header().valgrind_id.get());
        crate::asan::unpoison_stack(&self.header().asan);
        let _ = STACKS.try_with(|t| t.mapped.set(t.mapped.get() - 1));
        drop(Mapping {
            base: self.base(),
            len: self.len,
        });
    }
}

/// Calls `f` with the header of every stack this thread has mapped (in use
/// or pooled), most recently mapped first.
pub(crate) fn for_each_header(mut f: impl FnMut(&StackHeader)) {
    let mut p = MAPPED.with(|m| m.get());
    while !p.is_null() {
        // SAFETY: every header on the list belongs to a live mapping of this
        // thread; `f` cannot unmap it (it gets a shared reference only, and
        // stacks are unmapped only by their owners).
        let h = unsafe { &*p };
        let next = h.next.get();
        f(h);
        p = next;
    }
}

/// Finds the mapped stack of this thread whose guard page contains `addr`.
///
/// Async-signal-safe: reads a constant-initialised thread local and walks
/// headers in mapped memory; no allocation, no locks.
pub(crate) fn guard_owner(addr: usize) -> Option<&'static StackHeader> {
    // A relaxed atomic load: set before any stack (and so this handler's
    // reason to run) existed.
    let page = page_size();
    let mut p = MAPPED.try_with(|m| m.get()).ok()?;
    while !p.is_null() {
        // SAFETY: every header on the list belongs to a live mapping.
        let h = unsafe { &*p };
        if addr >= h.map_base && addr < h.map_base + page {
            return Some(h);
        }
        p = h.next.get();
    }
    None
}

/// The usable size `map` gives a stack asked for `size` bytes (saturating:
/// an overflowing size is rejected by `map`).
#[inline]
pub(crate) fn usable_size(size: usize) -> usize {
    let page = page_size();
    if size >= MIN_STACK_SIZE && size & (page - 1) == 0 {
        return size; // the common case: a whole number of pages
    }
    checked_usable_size(size).unwrap_or(usize::MAX)
}

/// `size` raised to [`MIN_STACK_SIZE`] and rounded up to whole pages; `None`
/// if that overflows.
fn checked_usable_size(size: usize) -> Option<usize> {
    size.max(MIN_STACK_SIZE)
        .checked_next_multiple_of(page_size())
}

fn size_error(size: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("greenhack: stack size of {size} bytes overflows when rounded to pages"),
    )
}

/// The number of mappings of this process: the lines of /proc/self/maps,
/// counted through a small buffer. Reading the file into a `String` would
/// not do: at the map-count limit a large allocation needs a new mapping
/// and fails too.
fn count_mappings() -> Option<usize> {
    use std::io::Read;
    let mut file = std::fs::File::open("/proc/self/maps").ok()?;
    let mut buf = [0u8; 4096];
    let mut lines = 0;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Some(lines),
            Ok(n) => lines += buf[..n].iter().filter(|&&b| b == b'\n').count(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// Turns a failed `mmap`/`mprotect` into an error that says what to do.
fn map_error(err: io::Error, len: usize) -> io::Error {
    if err.raw_os_error() != Some(libc::ENOMEM) {
        return io::Error::new(
            err.kind(),
            format!("greenhack: cannot map a greenlet stack of {len} bytes: {err}"),
        );
    }
    let max = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok());
    let maps = count_mappings();
    match (max, maps) {
        (Some(max), Some(maps)) if maps + 8 >= max => io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!(
                "greenhack: cannot map a greenlet stack: the process has {maps} memory mappings \
                 and vm.max_map_count is {max}. Each live greenlet stack costs two mappings \
                 (stack and guard page). Raise the limit with \
                 `sysctl -w vm.max_map_count={}` or keep fewer greenlets alive ({err})",
                max * 2
            ),
        ),
        _ => io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!(
                "greenhack: cannot map a greenlet stack of {len} bytes: out of memory or address \
                 space; use smaller stacks (Builder::stack_size) or fewer greenlets ({err})"
            ),
        ),
    }
}

// ----- reading a header ----------------------------------------------------

/// Where a greenlet stands, read from its stack header alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeaderState {
    /// No greenlet owns the stack (it is pooled).
    Free,
    /// Created, never resumed.
    Fresh,
    /// Running, or resuming another greenlet (an ancestor of the caller).
    Running,
    /// Waiting in `suspend`.
    Suspended,
}

/// Derives the state from the header: a greenlet that runs has no saved sp
/// (its link holds its resumer's); a fresh one's saved frame resumes at the
/// trampoline.
pub(crate) fn header_state(header: &StackHeader) -> HeaderState {
    if header.id.get() == 0 {
        return HeaderState::Free;
    }
    match header.saved_sp() {
        None => HeaderState::Running,
        Some(sp) if crate::arch::is_fresh_frame(sp) => HeaderState::Fresh,
        Some(_) => HeaderState::Suspended,
    }
}

/// The name of the greenlet owning `header`, if it has one.
pub(crate) fn header_name(header: &StackHeader) -> Option<&str> {
    // SAFETY: name_ptr/len point into the `Box<str>` of the Greenlet that
    // owns this stack, which outlives every switch into it.
    unsafe { name_at(header.name_ptr.get(), header.name_len.get()) }
}

/// The name a greenlet's fields point at (see [`header_name`]).
///
/// # Safety
///
/// `ptr` is null, or `ptr`/`len` are a `str` that outlives `'a`.
unsafe fn name_at<'a>(ptr: *const u8, len: usize) -> Option<&'a str> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: the caller's contract.
    Some(unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(ptr, len)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_rounds_to_pages_and_links() {
        let s = Stack::map(MIN_STACK_SIZE + 1).unwrap();
        assert_eq!(s.range().len() % page_size(), 0);
        assert!(s.range().len() > MIN_STACK_SIZE);
        assert_eq!(guard_owner(s.base()).map(|h| h.map_base), Some(s.base()));
        assert!(guard_owner(s.base() + page_size()).is_none());
    }

    #[test]
    fn huge_size_is_an_error() {
        let e = Stack::map(usize::MAX - 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn deep_pages_are_released_when_pooled() {
        let s = Stack::map(DEFAULT_STACK_SIZE).unwrap();
        let probe = (s.top() - POOL_KEEP_BYTES - 8) as *mut usize;
        // SAFETY: inside the read-write part of the mapping.
        unsafe { probe.write_volatile(0xdead) };
        s.release_deep_pages();
        // SAFETY: as above; MADV_DONTNEED on anonymous memory reads back zero.
        assert_eq!(unsafe { probe.read_volatile() }, 0);
    }
}
