//! The prefix cache's index: which block holds the KV of which token prefix.
//!
//! A block is keyed by a chain hash, `hash(parent block's hash, this block's token ids)`, so
//! equal keys mean equal whole prefixes up to a 64-bit hash collision. Collisions are made
//! harmless rather than unlikely: every indexed block also keeps its own token ids and the exact
//! *content id* of the prefix before it, and a lookup compares both. Content ids are handed out
//! from a counter and never reused, so, by induction from the empty prefix, a hit is a block
//! whose KV was computed from exactly the looked-up tokens. A colliding lookup is a miss.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

/// Computes a block's chain hash from its parent's chain hash and its own token ids.
pub(crate) type BlockHasher = fn(u64, &[u32]) -> u64;

/// The chain hash of the empty prefix, the "parent" of every sequence's first block.
/// Arbitrary; nonzero so that it does not look like an uninitialized value.
pub(crate) const ROOT_HASH: u64 = 0x9e37_79b9_7f4a_7c15;

/// The default [`BlockHasher`]: SipHash-1-3 with fixed keys (`DefaultHasher::new()`) over the
/// parent hash and the token ids. Hashes live only in memory, so a change of the algorithm in a
/// later Rust release does no harm.
pub(crate) fn hash_block(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// The identity of the token prefix that ends with some block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PrefixId {
    /// Chain hash of the prefix: the index key. Equal prefixes have equal hashes; the converse
    /// is only probable.
    pub(crate) hash: u64,
    /// Exact identity: blocks with equal content ids hold KV of equal prefixes. 0 is the empty
    /// prefix; real ids start at 1.
    pub(crate) content: u64,
}

impl PrefixId {
    /// The empty prefix.
    pub(crate) const ROOT: PrefixId = PrefixId {
        hash: ROOT_HASH,
        content: 0,
    };
}

/// What the cache knows about one block.
#[derive(Clone, Copy, Debug, Default)]
struct BlockMeta {
    /// `Some` iff the block is *sealed*: full, computed and identified. A sealed block is either
    /// indexed or a duplicate of the indexed block with the same content id (or of one that was).
    id: Option<PrefixId>,
    /// Content id of the prefix before this block. Meaningful only while `indexed`.
    parent_content: u64,
    /// Whether the index maps `id.hash` to this block.
    indexed: bool,
}

/// Index from chain hash to the block holding that prefix, with each indexed block's tokens.
///
/// Invariants: the index maps `h` to `b` iff `meta[b].indexed` and `meta[b].id.hash == h`;
/// an indexed block's `tokens` slot holds the token ids it was sealed with; every content id in
/// use is below `next_content`, and an indexed block's parent content id is below its own.
#[derive(Debug)]
pub(crate) struct PrefixCache {
    /// Tokens per block.
    block_size: usize,
    /// The hash function; a field so that tests can force collisions.
    hasher: BlockHasher,
    /// Chain hash -> the one block indexed under it.
    index: HashMap<u64, u32>,
    /// One entry per block id.
    meta: Vec<BlockMeta>,
    /// Block `b`'s token ids at `b * block_size..(b + 1) * block_size`; valid while indexed.
    tokens: Vec<u32>,
    /// The next fresh content id.
    next_content: u64,
}

impl PrefixCache {
    /// An empty index over `num_blocks` blocks of `block_size` tokens.
    pub(crate) fn new(num_blocks: usize, block_size: usize, hasher: BlockHasher) -> Self {
        PrefixCache {
            block_size,
            hasher,
            index: HashMap::new(),
            meta: vec![BlockMeta::default(); num_blocks],
            // Zeroed memory is mapped lazily, so unused slots cost no resident memory.
            tokens: vec![0; num_blocks * block_size],
            next_content: 1,
        }
    }

    /// Token ids block `b` was indexed with.
    fn tokens_of(&self, b: u32) -> &[u32] {
        let at = b as usize * self.block_size;
        &self.tokens[at..at + self.block_size]
    }

    /// The block holding the prefix `parent` + `tokens` (one full block), with that prefix's id,
    /// if one is indexed. Never returns a block computed from other tokens, hash collision or not.
    pub(crate) fn lookup(&self, parent: PrefixId, tokens: &[u32]) -> Option<(u32, PrefixId)> {
        self.find((self.hasher)(parent.hash, tokens), parent, tokens)
    }

    /// [`PrefixCache::lookup`] with the chain hash already computed.
    fn find(&self, hash: u64, parent: PrefixId, tokens: &[u32]) -> Option<(u32, PrefixId)> {
        let b = *self.index.get(&hash)?;
        let meta = self.meta[b as usize];
        let exact = meta.parent_content == parent.content && self.tokens_of(b) == tokens;
        exact.then_some((b, meta.id?))
    }

    /// Block `b`'s prefix id if it is sealed.
    pub(crate) fn prefix_id(&self, b: u32) -> Option<PrefixId> {
        self.meta[b as usize].id
    }

    /// Whether block `b` is in the index (findable by [`PrefixCache::lookup`]).
    pub(crate) fn is_indexed(&self, b: u32) -> bool {
        self.meta[b as usize].indexed
    }

    /// Seals unsealed block `b`, now holding KV of `parent` + `tokens` (one full block).
    ///
    /// If an indexed block already holds exactly that prefix, it stays indexed and `b` becomes
    /// a sealed duplicate sharing its content id. Otherwise `b` is indexed under a fresh content
    /// id; if a block was indexed under the same hash with other content (a collision, or a
    /// child of an evicted parent that can no longer be reached), it is unindexed and returned
    /// so that the caller can recycle it if it is free. It stays sealed: its KV is still valid
    /// for whoever holds it.
    pub(crate) fn seal(&mut self, b: u32, parent: PrefixId, tokens: &[u32]) -> Option<u32> {
        debug_assert!(self.meta[b as usize].id.is_none(), "block {b} sealed twice");
        debug_assert_eq!(tokens.len(), self.block_size);
        let hash = (self.hasher)(parent.hash, tokens);
        if let Some((_, existing)) = self.find(hash, parent, tokens) {
            self.meta[b as usize] = BlockMeta {
                id: Some(existing),
                parent_content: parent.content,
                indexed: false,
            };
            return None;
        }
        let displaced = self.index.insert(hash, b);
        if let Some(d) = displaced {
            self.meta[d as usize].indexed = false;
        }
        let at = b as usize * self.block_size;
        self.tokens[at..at + self.block_size].copy_from_slice(tokens);
        self.meta[b as usize] = BlockMeta {
            id: Some(PrefixId {
                hash,
                content: self.next_content,
            }),
            parent_content: parent.content,
            indexed: true,
        };
        self.next_content += 1;
        displaced
    }

    /// Unseals block `b` (about to be overwritten or no longer worth keeping), removing it from
    /// the index if it is there.
    pub(crate) fn forget(&mut self, b: u32) {
        let meta = std::mem::take(&mut self.meta[b as usize]);
        if let (true, Some(id)) = (meta.indexed, meta.id) {
            self.index.remove(&id.hash);
        }
    }

    /// Checks the invariants stated on [`PrefixCache`], returning the first violation.
    /// O(num_blocks); for tests and debugging.
    pub(crate) fn check(&self) -> Result<(), String> {
        for (&hash, &b) in &self.index {
            let meta = self
                .meta
                .get(b as usize)
                .ok_or(format!("index holds bad id {b}"))?;
            if !meta.indexed || meta.id.map(|id| id.hash) != Some(hash) {
                return Err(format!(
                    "index maps {hash:#x} to block {b} whose meta is {meta:?}"
                ));
            }
        }
        let mut indexed = 0;
        for (b, meta) in self.meta.iter().enumerate() {
            if meta.indexed {
                indexed += 1;
            }
            match meta.id {
                None if meta.indexed => return Err(format!("block {b} indexed but not sealed")),
                Some(id) if id.content == 0 || id.content >= self.next_content => {
                    return Err(format!(
                        "block {b} has content id {} out of range",
                        id.content
                    ));
                }
                Some(id) if meta.indexed && meta.parent_content >= id.content => {
                    return Err(format!(
                        "block {b}'s parent content id is not older than its own"
                    ));
                }
                _ => {}
            }
        }
        if indexed != self.index.len() {
            return Err(format!(
                "{indexed} blocks marked indexed, index has {}",
                self.index.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_exactly_what_was_sealed() {
        let mut c = PrefixCache::new(4, 2, hash_block);
        assert_eq!(c.lookup(PrefixId::ROOT, &[1, 2]), None);
        assert_eq!(c.seal(0, PrefixId::ROOT, &[1, 2]), None);
        let (b, id0) = c.lookup(PrefixId::ROOT, &[1, 2]).unwrap();
        assert_eq!(b, 0);
        assert_eq!(c.seal(1, id0, &[3, 4]), None);
        assert_eq!(c.lookup(id0, &[3, 4]).map(|(b, _)| b), Some(1));
        assert_eq!(c.lookup(PrefixId::ROOT, &[3, 4]), None);
        assert_eq!(c.index.len(), 2);
        c.forget(0);
        assert_eq!(c.lookup(PrefixId::ROOT, &[1, 2]), None);
        c.check().unwrap();
    }

    #[test]
    fn duplicate_shares_the_content_id_and_stays_unindexed() {
        let mut c = PrefixCache::new(4, 2, hash_block);
        c.seal(0, PrefixId::ROOT, &[1, 2]);
        c.seal(1, PrefixId::ROOT, &[1, 2]);
        assert!(c.is_indexed(0) && !c.is_indexed(1));
        assert_eq!(c.prefix_id(0), c.prefix_id(1));
        c.check().unwrap();
    }

    #[test]
    fn colliding_hashes_miss_and_the_newer_block_takes_the_slot() {
        let mut c = PrefixCache::new(4, 2, |_, _| 7);
        c.seal(0, PrefixId::ROOT, &[1, 2]);
        assert_eq!(c.lookup(PrefixId::ROOT, &[9, 9]), None);
        let id0 = c.prefix_id(0).unwrap();
        // Same tokens but a different parent: not the same prefix.
        assert_eq!(c.lookup(id0, &[1, 2]), None);
        assert_eq!(c.seal(1, PrefixId::ROOT, &[9, 9]), Some(0));
        assert!(!c.is_indexed(0) && c.prefix_id(0).is_some());
        assert_eq!(c.lookup(PrefixId::ROOT, &[9, 9]).map(|(b, _)| b), Some(1));
        c.check().unwrap();
    }
}
