//! The address bookkeeping of an [`Arena`](super::arena::Arena): which offsets of its reserved
//! range are in use. Allocations take the first freed range that holds them, else the top;
//! freed ranges coalesce, and one that reaches the top lowers it (the chunks above stay mapped
//! for what comes next).

/// The offsets in use: everything below `top` except the holes.
#[derive(Debug, Default)]
pub(super) struct Space {
    /// Bytes below this offset may be in use.
    pub top: usize,
    /// Freed ranges below `top` (offset, bytes), sorted and coalesced.
    holes: Vec<(usize, usize)>,
}

impl Space {
    /// The offset of `size` bytes taken from the first hole that holds them, if one does.
    pub fn take_hole(&mut self, size: usize) -> Option<usize> {
        let i = self.holes.iter().position(|&(_, len)| len >= size)?;
        let (offset, len) = self.holes[i];
        if len == size {
            self.holes.remove(i);
        } else {
            self.holes[i] = (offset + size, len - size);
        }
        Some(offset)
    }

    /// Returns `[offset, offset + bytes)`, coalescing it with its neighbours; a hole that
    /// reaches `top` lowers it instead.
    pub fn free(&mut self, offset: usize, bytes: usize) {
        let holes = &mut self.holes;
        let at = holes.partition_point(|&(o, _)| o < offset);
        holes.insert(at, (offset, bytes));
        if at + 1 < holes.len() && offset + bytes == holes[at + 1].0 {
            holes[at].1 += holes.remove(at + 1).1;
        }
        if at > 0 && holes[at - 1].0 + holes[at - 1].1 == offset {
            holes[at - 1].1 += holes.remove(at).1;
        }
        if let Some(&(o, len)) = holes.last() {
            if o + len == self.top {
                self.top = o;
                holes.pop();
            }
        }
    }
}

#[cfg(test)]
#[path = "arena_tests.rs"]
mod tests;
