//! Sliced greenlets: greenlets that share one stack per thread and keep only
//! their live slice of it while suspended, as Python's greenlet does.
//!
//! # Why
//!
//! A greenlet on a stack of its own keeps at least the pages its frames
//! touched (one or two, whatever their live depth) and two kernel mappings
//! (the stack and its guard page), so a thread holds at most ~32,700 of
//! them under Linux's default `vm.max_map_count`. An idle connection
//! handler's live frames are usually well under a page. A sliced greenlet
//! needs no mapping and no page of its own: what it costs while suspended
//! is its live frames, on the heap.
//!
//! # How
//!
//! Every sliced greenlet of a thread (per stack size) runs on one
//! [`SharedStack`], at the same addresses: pointers into its frames stay
//! valid across a slice-out because its frames always come back to the
//! addresses they left. At most one of them *occupies* the shared stack:
//! its frames are there. Resuming another one first copies the occupant's
//! live slice — from its saved stack pointer to the top of the stack — to
//! the heap, with the greenlet's fields of the stack header, then copies the
//! new one's slice back in ([`Slice::occupy`]). The copy is lazy: a greenlet
//! suspended and resumed with no other sliced greenlet in between costs no
//! copy at all, so a lone sliced greenlet switches as fast as any.
//!
//! ```text
//!   shared stack (one mapping, one guard page)        heap
//!   +----------------------+ <- top
//!   | header (occupant's)  |  <- id, name, parent link, wait: swapped
//!   +----------------------+                          Slice of B (out)
//!   | A's live frames      |  A occupies it            +----------------+
//!   |   ...                |                           | B's fields     |
//!   +----------------------+ <- A's saved sp           | B's frames     |
//!   |                      |                           +----------------+
//!   | (free)               |
//!   +----------------------+
//!   | guard page           |
//!   +----------------------+
//! ```
//!
//! A fresh sliced greenlet's first slice (its closure and initial frame) is
//! built on the heap ([`crate::arch::init_stack_image`]), so creating one
//! never touches the shared stack: a sliced greenlet can spawn more.
//!
//! # What it asks of the code inside
//!
//! While a sliced greenlet is suspended, the addresses of its frames hold
//! another greenlet's. Nothing outside it may read or write its stack then:
//! no other greenlet or thread may hold a reference into it, and no future
//! pinned on it may be registered, by address, with something that touches
//! it from outside (a timer wheel, an intrusive waiter list). Futures waited
//! on with [`exempt`](crate::exempt) are moved to the heap first, so they
//! are safe whatever they are; greenhack's own sockets, timers, sync
//! primitives and channels keep no pointer into a waiting greenlet's stack.
//! The case left to the caller is a future pinned on the greenlet's own
//! stack and waited on through a reference (`exempt(fut.as_mut())` after
//! `pin!`): hence [`Builder::sliced`](crate::Builder::sliced) is `unsafe`.
//!
//! Other limits: a sliced greenlet cannot be resumed while another sliced
//! greenlet of its shared stack runs (from inside it, or below a greenlet it
//! resumed): that resume panics. The debugging tools keep working: a
//! suspended sliced greenlet is listed by `debug::dump` (with its backtrace,
//! taken after copying it back in, unless the dump runs on the shared stack
//! itself); the overflow handler names the occupant; Valgrind sees one
//! registered stack (told, before a slice comes back, that the addresses
//! are usable again); under ASan the copied frames are unpoisoned (checked
//! less tightly until they return).

use std::cell::{Cell, UnsafeCell};
use std::io;
use std::ptr::{self, NonNull};

use crate::stack::{GreenletFields, Stack, StackHeader};

/// One shared stack of this thread: the mapping every sliced greenlet of one
/// stack size runs on, who occupies it, and the list of its greenlets.
pub(crate) struct SharedStack {
    stack: Stack,
    /// The slice whose frames are on the stack now; null when none is.
    occupant: Cell<*const Slice>,
    /// Every live slice of this stack (for `debug::dump`), newest first.
    head: Cell<*const Slice>,
    /// How many live slices use this stack; at zero it goes back to the pool.
    users: Cell<usize>,
    /// The next shared stack of this thread (another size).
    next: Cell<*mut SharedStack>,
}

thread_local! {
    /// This thread's shared stacks, one per stack size in use. Destructor-
    /// free: each is freed when its last greenlet is.
    static SHARED: Cell<*mut SharedStack> = const { Cell::new(ptr::null_mut()) };
}

impl SharedStack {
    /// This thread's shared stack of `size` usable bytes, mapped (or taken
    /// from the pool) if none exists.
    fn get(size: usize) -> io::Result<NonNull<SharedStack>> {
        let len = crate::stack::usable_size(size);
        let mut p = SHARED.with(Cell::get);
        while !p.is_null() {
            // SAFETY: every entry of SHARED is a live SharedStack of this
            // thread (unlinked before it is freed).
            let s = unsafe { &*p };
            if s.stack.range().len() == len {
                return Ok(NonNull::from(s));
            }
            p = s.next.get();
        }
        let stack = crate::overflow::greenlet_stack(size)?;
        stack.header().clear_greenlet();
        let shared = Box::into_raw(Box::new(SharedStack {
            stack,
            occupant: Cell::new(ptr::null()),
            head: Cell::new(ptr::null()),
            users: Cell::new(0),
            next: Cell::new(SHARED.with(Cell::get)),
        }));
        SHARED.with(|h| h.set(shared));
        // SAFETY: just allocated.
        Ok(unsafe { NonNull::new_unchecked(shared) })
    }

    fn header(&self) -> &StackHeader {
        self.stack.header()
    }

    /// Where the greenlets' frames begin: just below the header.
    fn frames_top(&self) -> usize {
        self.stack.frames_top()
    }

    /// The last slice is gone: unlink this stack and give it to the pool.
    ///
    /// # Safety
    ///
    /// `this` is a live shared stack of this thread with no users.
    unsafe fn release(this: *mut SharedStack) {
        let _ = SHARED.try_with(|h| {
            let mut link = h;
            loop {
                let p = link.get();
                if p.is_null() {
                    return;
                }
                if p == this {
                    // SAFETY: `this` is live (caller).
                    link.set(unsafe { (*this).next.get() });
                    return;
                }
                // SAFETY: entries of SHARED are live.
                link = unsafe { &(*p).next };
            }
        });
        // SAFETY: allocated by `get` with Box; unlinked above, so nothing
        // else reaches it.
        let shared = unsafe { Box::from_raw(this) };
        shared.header().clear_greenlet();
        crate::asan::unpoison_stack(&shared.header().asan);
        shared.stack.recycle();
    }
}

/// A sliced greenlet's hold on its shared stack: its frames while they are
/// off the stack, and its header fields with them.
///
/// Owned (boxed, so it never moves while linked) by the `AsAsync` that
/// drives the greenlet, and dropped after the greenlet is.
pub(crate) struct Slice {
    shared: NonNull<SharedStack>,
    /// While sliced out: the greenlet's live frames, the last bytes of the
    /// buffer being the top of the stack (the first may be slack). While it
    /// occupies the stack: stale, its allocation kept for the next
    /// slice-out (an allocation and a free per switch cost more than the
    /// copy of a small slice).
    image: UnsafeCell<Vec<u64>>,
    /// While sliced out: the greenlet's fields of the stack header; its
    /// `parent_link` is the saved stack pointer, which says how long the
    /// slice is.
    fields: UnsafeCell<GreenletFields>,
    prev: Cell<*const Slice>,
    next: Cell<*const Slice>,
}

/// What [`Slice::occupy`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Occupied {
    /// The slice's frames are on the stack.
    Yes,
    /// Another sliced greenlet of the stack is running (its frames are
    /// live): nothing was moved.
    OccupantRuns,
}

impl Slice {
    /// A fresh greenlet's slice on this thread's shared stack of `size`
    /// usable bytes, built by `init` on the heap: `init(top, image_top)`
    /// lays out the frames that belong below the shared stack's `top`,
    /// writes them below `image_top`, and returns the saved stack pointer
    /// (see [`crate::arch::init_stack_image`]); at most `room` bytes.
    /// Returns the slice and the stack header every greenlet of that stack
    /// switches through.
    pub(crate) fn new(
        size: usize,
        room: usize,
        fields: GreenletFields,
        init: impl FnOnce(usize, usize) -> usize,
    ) -> io::Result<(Box<Slice>, *const StackHeader, usize)> {
        let shared = SharedStack::get(size)?;
        // SAFETY: live: we are about to count ourselves as a user.
        let s = unsafe { shared.as_ref() };
        let words = room.div_ceil(8);
        let mut image = vec![0u64; words];
        let image_top = image.as_mut_ptr_range().end as usize;
        let top = s.frames_top();
        let sp = init(top, image_top);
        debug_assert!(top - sp <= words * 8, "greenhack: first slice overran");
        let slice = Box::new(Slice {
            shared,
            image: UnsafeCell::new(image),
            fields: UnsafeCell::new(GreenletFields {
                parent_link: sp,
                ..fields
            }),
            prev: Cell::new(ptr::null()),
            next: Cell::new(s.head.get()),
        });
        if let Some(next) = NonNull::new(s.head.get().cast_mut()) {
            // SAFETY: slices on the list are live.
            unsafe { next.as_ref() }.prev.set(&*slice);
        }
        s.head.set(&*slice);
        s.users.set(s.users.get() + 1);
        Ok((slice, s.header(), sp))
    }

    fn shared(&self) -> &SharedStack {
        // SAFETY: a slice counts as a user of its shared stack, which lives
        // until its last user is dropped.
        unsafe { self.shared.as_ref() }
    }

    /// True when this slice's frames are on the shared stack.
    #[inline]
    pub(crate) fn is_occupant(&self) -> bool {
        ptr::eq(self.shared().occupant.get(), self)
    }

    /// Brings this greenlet's frames onto the shared stack, first moving the
    /// occupant's to the heap. Must not run on the shared stack itself.
    ///
    /// # Panics
    ///
    /// If another sliced greenlet of the same stack is running.
    #[inline]
    pub(crate) fn occupy(&self) {
        if !self.is_occupant() && self.try_occupy() == Occupied::OccupantRuns {
            occupant_runs();
        }
    }

    /// [`occupy`](Self::occupy), reporting instead of panicking.
    #[inline(never)]
    pub(crate) fn try_occupy(&self) -> Occupied {
        let s = self.shared();
        let occupant = s.occupant.get();
        if ptr::eq(occupant, self) {
            return Occupied::Yes;
        }
        let header = s.header();
        let top = s.frames_top();
        if let Some(occupant) = NonNull::new(occupant.cast_mut()) {
            let Some(sp) = header.saved_sp() else {
                return Occupied::OccupantRuns;
            };
            // SAFETY: the occupant is a live slice of this stack (a slice
            // leaves the occupant slot before it is freed).
            let occupant = unsafe { occupant.as_ref() };
            let len = top - sp;
            let words = len / 8;
            crate::asan::unpoison_range(sp, len);
            // SAFETY: a slice's image and fields are touched only by this
            // module, on its thread, never across a call that could re-enter.
            let (image, fields) =
                unsafe { (&mut *occupant.image.get(), &mut *occupant.fields.get()) };
            image.clear();
            if image.capacity() > 2 * words + 64 {
                // Went deep once, shallow now: do not keep the high-water mark.
                image.shrink_to(words);
            }
            image.reserve_exact(words);
            // SAFETY: [sp, top) is the occupant's live slice, in the shared
            // stack's mapping; it is suspended (its saved sp is in the
            // header), so nothing writes there meanwhile; `image` has room
            // for `words` words (`sp` is word aligned), which the copy
            // initialises before `set_len`.
            unsafe {
                ptr::copy_nonoverlapping(sp as *const u64, image.as_mut_ptr(), words);
                image.set_len(words);
            }
            *fields = header.greenlet_fields();
        }
        // SAFETY: as above; this slice is out, so its image and fields hold
        // its frames and header.
        let (image, fields) = unsafe { (&*self.image.get(), &*self.fields.get()) };
        let sp = fields.parent_link;
        let len = top - sp;
        let from = image.as_ptr_range().end as usize - len;
        crate::asan::unpoison_range(sp, len);
        if header.valgrind_id.get() != 0 {
            // Memcheck marked the stack below the last greenlet's deepest
            // live frame unaddressable as its frames returned; the slice
            // comes back there, and the copy brings its own definedness.
            crate::valgrind::make_mem_defined(sp, top);
        }
        // SAFETY: the image's last `len` bytes are this greenlet's slice,
        // taken from (or built for) [sp, top) of this very stack; the stack
        // holds no live frames there now (its occupant was moved out above,
        // and we do not run on it: a caller on it would be the occupant,
        // running, which returned above).
        unsafe { ptr::copy_nonoverlapping(from as *const u8, sp as *mut u8, len) };
        header.set_greenlet_fields(fields);
        s.occupant.set(self);
        Occupied::Yes
    }

    /// The greenlet's header fields while sliced out; `None` while its
    /// frames are on the stack (read the stack's header then).
    pub(crate) fn fields_out(&self) -> Option<GreenletFields> {
        // SAFETY: as in `try_occupy`.
        (!self.is_occupant()).then(|| unsafe { (*self.fields.get()).clone() })
    }

    /// True if the greenlet has not started (read from its slice).
    pub(crate) fn is_fresh(&self) -> bool {
        if self.is_occupant() {
            let header = self.shared().header();
            return header.saved_sp().is_some_and(crate::arch::is_fresh_frame);
        }
        // SAFETY: as in `try_occupy`.
        let (image, fields) = unsafe { (&*self.image.get(), &*self.fields.get()) };
        let len = self.shared().frames_top() - fields.parent_link;
        let frame = image.as_ptr_range().end as usize - len;
        // The saved frame starts the slice; the image is word aligned.
        crate::arch::is_fresh_frame(frame)
    }

    /// The header of the shared stack: this greenlet's while it occupies it.
    pub(crate) fn stack_header(&self) -> &StackHeader {
        self.shared().header()
    }
}

impl Drop for Slice {
    /// The greenlet is gone (finished or unwound): leave the stack, and the
    /// list; the last slice gives the shared stack back.
    fn drop(&mut self) {
        let shared = self.shared.as_ptr();
        let s = self.shared();
        if self.is_occupant() {
            s.occupant.set(ptr::null());
            s.header().clear_greenlet();
        }
        let (prev, next) = (self.prev.get(), self.next.get());
        // SAFETY: neighbours on the list are live slices of this thread.
        unsafe {
            if !next.is_null() {
                (*next).prev.set(prev);
            }
            if prev.is_null() {
                s.head.set(next);
            } else {
                (*prev).next.set(next);
            }
        }
        s.users.set(s.users.get() - 1);
        if s.users.get() == 0 {
            // SAFETY: live, and this was its last user.
            unsafe { SharedStack::release(shared) };
        }
    }
}

/// Every sliced greenlet of this thread whose frames are off their stack,
/// for `debug::dump` (collected: the dump moves slices in and out).
pub(crate) fn sliced_out() -> Vec<*const Slice> {
    let mut out = Vec::new();
    let mut p = SHARED.with(Cell::get);
    while !p.is_null() {
        // SAFETY: entries of SHARED are live.
        let s = unsafe { &*p };
        let mut q = s.head.get();
        while !q.is_null() {
            // SAFETY: slices on the list are live.
            let slice = unsafe { &*q };
            if !slice.is_occupant() {
                out.push(q);
            }
            q = slice.next.get();
        }
        p = s.next.get();
    }
    out
}

#[cold]
#[inline(never)]
fn occupant_runs() -> ! {
    panic!(
        "greenhack: a sliced greenlet was resumed while another sliced greenlet of the same \
         stack is running (the resume happened inside it, or below a greenlet it resumed); \
         sliced greenlets are resumed by greenhack's loop or an executor, from outside any \
         sliced greenlet"
    )
}
