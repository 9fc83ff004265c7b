//! A minimal slab: values at stable indices, reused through a free list.
//! Holds the reactor's I/O sources (index + 1 is the mio token) and its
//! tasks (index and generation name a task in a waker).

/// A minimal slab: stable indices, a free list.
pub(super) struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Slab<T> {
    pub(super) const fn new() -> Slab<T> {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    pub(super) fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(i) => {
                self.entries[i] = Some(value);
                i
            }
            None => {
                self.entries.push(Some(value));
                self.entries.len() - 1
            }
        }
    }

    pub(super) fn get(&self, i: usize) -> Option<&T> {
        self.entries.get(i)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.entries.get_mut(i)?.as_mut()
    }

    /// Where entry `i` would be, for a prefetch: computed, never read, so
    /// any `i` will do.
    pub(super) fn entry_addr(&self, i: usize) -> usize {
        self.entries.as_ptr().wrapping_add(i) as usize
    }

    pub(super) fn remove(&mut self, i: usize) -> Option<T> {
        let v = self.entries.get_mut(i)?.take()?;
        self.free.push(i);
        self.len -= 1;
        Some(v)
    }

    /// Every value, in index order.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().flatten()
    }

    /// Takes every value out, leaving the slab empty.
    pub(super) fn drain(&mut self) -> Vec<T> {
        self.free.clear();
        self.len = 0;
        std::mem::take(&mut self.entries)
            .into_iter()
            .flatten()
            .collect()
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }
}
