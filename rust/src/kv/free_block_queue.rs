//! The queue of free KV blocks: an intrusive doubly-linked list over block ids (vLLM's
//! `FreeKVCacheBlockQueue`), so that a block can be taken out of the middle in O(1) when a
//! prefix-cache hit revives it.

/// Marks the `prev`/`next` entries of a block that is not in the queue, and the end of the list.
const DETACHED: u32 = u32::MAX;

/// An ordered set of block ids `0..num_blocks` with O(1) push at either end, pop at the front
/// and removal of any member.
///
/// The list is circular through a sentinel node whose id is `num_blocks`, so no operation has
/// to special-case an empty list or an end. [`crate::kv::BlockManager`] keeps blocks holding no
/// reusable content at the front and cached blocks at the back in least-recently-freed-first
/// order, so popping the front takes plain blocks first and then evicts the oldest cached one.
#[derive(Debug)]
pub(crate) struct FreeBlockQueue {
    /// `prev[b]` is the node before `b`; `DETACHED` iff `b` is not in the queue. Has
    /// `num_blocks + 1` entries: the last is the sentinel's, never `DETACHED`.
    prev: Vec<u32>,
    /// `next[b]` is the node after `b`; `DETACHED` iff `b` is not in the queue.
    next: Vec<u32>,
    /// Number of blocks in the queue (the sentinel not counted).
    len: usize,
}

impl FreeBlockQueue {
    /// A queue holding every block `0..num_blocks`, in increasing order from the front.
    ///
    /// `num_blocks` must be below `u32::MAX`: ids are `u32` and one value is the sentinel.
    pub(crate) fn new(num_blocks: usize) -> Self {
        assert!(
            num_blocks < DETACHED as usize,
            "num_blocks {num_blocks} does not fit a u32 block id"
        );
        let n = num_blocks as u32;
        // Node i links to i - 1 and i + 1, wrapping through the sentinel n.
        let prev = (0..=n).map(|i| if i == 0 { n } else { i - 1 }).collect();
        let next = (0..=n).map(|i| if i == n { 0 } else { i + 1 }).collect();
        FreeBlockQueue {
            prev,
            next,
            len: num_blocks,
        }
    }

    /// The sentinel's node id.
    fn sentinel(&self) -> u32 {
        (self.next.len() - 1) as u32
    }

    /// Number of blocks in the queue.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether block `b` is in the queue.
    pub(crate) fn contains(&self, b: u32) -> bool {
        (b as usize) < self.len_nodes() - 1 && self.next[b as usize] != DETACHED
    }

    /// Nodes including the sentinel.
    fn len_nodes(&self) -> usize {
        self.next.len()
    }

    /// Links detached block `b` in between the adjacent nodes `before` and `after`.
    fn link(&mut self, before: u32, b: u32, after: u32) {
        debug_assert!(!self.contains(b), "block {b} is already free");
        self.next[before as usize] = b;
        self.prev[after as usize] = b;
        self.prev[b as usize] = before;
        self.next[b as usize] = after;
        self.len += 1;
    }

    /// Puts block `b`, which must not be in the queue, at the front (taken first).
    pub(crate) fn push_front(&mut self, b: u32) {
        let s = self.sentinel();
        let first = self.next[s as usize];
        self.link(s, b, first);
    }

    /// Puts block `b`, which must not be in the queue, at the back (taken last).
    pub(crate) fn push_back(&mut self, b: u32) {
        let s = self.sentinel();
        let last = self.prev[s as usize];
        self.link(last, b, s);
    }

    /// Takes the block at the front, if any.
    pub(crate) fn pop_front(&mut self) -> Option<u32> {
        let first = self.next[self.sentinel() as usize];
        self.remove(first).then_some(first)
    }

    /// Takes block `b` out of the queue in O(1). Returns false, changing nothing, if `b` was not
    /// in it.
    pub(crate) fn remove(&mut self, b: u32) -> bool {
        if !self.contains(b) {
            return false;
        }
        let (before, after) = (self.prev[b as usize], self.next[b as usize]);
        self.next[before as usize] = after;
        self.prev[after as usize] = before;
        self.prev[b as usize] = DETACHED;
        self.next[b as usize] = DETACHED;
        self.len -= 1;
        true
    }

    /// The blocks from front to back.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let s = self.sentinel();
        let mut at = self.next[s as usize];
        // Bounded by the node count so that a corrupted list cannot loop forever.
        (0..self.len_nodes()).map_while(move |_| {
            (at != s && at != DETACHED).then(|| {
                let b = at;
                at = self.next[b as usize];
                b
            })
        })
    }

    /// Checks that the links are mutually consistent, that walking from the front reaches every
    /// member exactly once and that `len` counts them. O(num_blocks); for tests and debugging.
    pub(crate) fn check(&self) -> Result<(), String> {
        let s = self.sentinel();
        let mut seen = 0usize;
        let mut at = s;
        loop {
            let nx = self.next[at as usize];
            if nx == DETACHED || nx as usize >= self.len_nodes() {
                return Err(format!("free queue: node {at} links to invalid node {nx}"));
            }
            if self.prev[nx as usize] != at {
                return Err(format!(
                    "free queue: {at} -> {nx} but {nx} <- {}",
                    self.prev[nx as usize]
                ));
            }
            if nx == s {
                break;
            }
            seen += 1;
            if seen > self.len {
                return Err(format!(
                    "free queue: more than len = {} members (cycle?)",
                    self.len
                ));
            }
            at = nx;
        }
        let detached = self.next.iter().filter(|&&n| n == DETACHED).count();
        if seen != self.len || seen + detached != self.len_nodes() - 1 {
            return Err(format!(
                "free queue: walked {seen} members, len says {}, {detached} detached of {}",
                self.len,
                self.len_nodes() - 1
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[test]
    fn starts_full_in_id_order_and_pops_front_first() {
        let mut q = FreeBlockQueue::new(4);
        assert_eq!(q.iter().collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(q.pop_front(), Some(0));
        assert!(q.remove(2));
        assert!(!q.remove(2));
        q.push_back(2);
        q.push_front(0);
        assert_eq!(q.iter().collect::<Vec<_>>(), [0, 1, 3, 2]);
        assert_eq!(q.len(), 4);
        while q.pop_front().is_some() {}
        assert_eq!(q.len(), 0);
        assert_eq!(q.pop_front(), None);
        q.check().unwrap();
    }

    #[test]
    fn empty_queue_is_consistent() {
        let mut q = FreeBlockQueue::new(0);
        assert_eq!(q.pop_front(), None);
        assert!(!q.contains(0));
        q.check().unwrap();
    }

    proptest! {
        /// The queue behaves as a `VecDeque` with removal by value.
        #[test]
        fn matches_a_vecdeque(ops in prop::collection::vec((0u8..4, 0u32..8), 0..64)) {
            let mut q = FreeBlockQueue::new(8);
            let mut model: VecDeque<u32> = (0..8).collect();
            for (op, b) in ops {
                match op {
                    0 => prop_assert_eq!(q.pop_front(), model.pop_front()),
                    1 => {
                        let pos = model.iter().position(|&x| x == b);
                        prop_assert_eq!(q.remove(b), pos.is_some());
                        if let Some(p) = pos { model.remove(p); }
                    }
                    _ if model.contains(&b) => {}
                    2 => { q.push_front(b); model.push_front(b); }
                    _ => { q.push_back(b); model.push_back(b); }
                }
                prop_assert!(q.check().is_ok(), "{:?}", q.check());
                prop_assert_eq!(q.iter().collect::<Vec<_>>(), Vec::from(model.clone()));
            }
        }
    }
}
