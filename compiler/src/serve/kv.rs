//! The paged KV cache of one replica: blocks of `kv_block` tokens.
//!
//! Only counts are kept (which block holds what does not change any
//! time), so admission, growth and preemption are integer arithmetic. A
//! sequence holds `ceil(tokens / block)` blocks; cached prefix tokens are
//! counted as the sequence's own (shared blocks are not deduplicated: an
//! upper bound on the memory a hit rate needs).
//!
//! A [`PrefixCache`] keeps, per replica, the prompts whose requests have
//! left it (by request index: request `i` of every run of a server is
//! the same prompt), in the blocks their requests freed, until new
//! admissions need those blocks (least recently used first out).

use std::collections::{BTreeMap, HashMap};

/// Free and total blocks of one replica.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Blocks {
    pub block: u64,
    pub total: u64,
    pub free: u64,
}

impl Blocks {
    /// A cache of `capacity_tokens` tokens in blocks of `block` tokens.
    pub fn new(capacity_tokens: f64, block: u64) -> Blocks {
        let block = block.max(1);
        let total = (capacity_tokens.max(0.0) / block as f64).floor() as u64;
        Blocks {
            block,
            total,
            free: total,
        }
    }

    /// Blocks that hold `tokens` tokens.
    #[inline]
    pub fn for_tokens(&self, tokens: u64) -> u64 {
        tokens.div_ceil(self.block)
    }

    /// Takes `n` blocks if that many are free.
    #[inline]
    pub fn take(&mut self, n: u64) -> bool {
        if n <= self.free {
            self.free -= n;
            true
        } else {
            false
        }
    }

    #[inline]
    pub fn give(&mut self, n: u64) {
        self.free = (self.free + n).min(self.total);
    }
}

/// The prompts a replica's freed blocks still hold (vLLM's and SGLang's
/// automatic prefix caching, keyed by prompt): whole blocks only, as an
/// engine hashes them. The entries' blocks are free blocks: admissions
/// evict the least recently used entries so that the entries never hold
/// more blocks than are free.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrefixCache {
    /// Prompt (request index) -> (cached tokens, last use).
    entries: HashMap<u32, (u32, u64)>,
    /// Last use -> prompt: the eviction order.
    order: BTreeMap<u64, u32>,
    clock: u64,
    /// Blocks the entries hold.
    blocks: u64,
    /// Prompt tokens of fresh prompts admitted, and of them those found.
    pub looked_up: u64,
    pub found: u64,
}

impl PrefixCache {
    /// Cached tokens of prompt `id` (0 if none).
    pub fn peek(&self, id: u32) -> u32 {
        self.entries.get(&id).map_or(0, |e| e.0)
    }

    /// Prompt `id` is admitted with `prompt` tokens, `found` of them from
    /// the cache: its entry leaves the cache (its blocks are the
    /// sequence's again).
    pub fn admit(&mut self, id: u32, prompt: u32, found: u32, block: u64) {
        self.looked_up += prompt as u64;
        self.found += found as u64;
        if let Some((tokens, used)) = self.entries.remove(&id) {
            self.order.remove(&used);
            self.blocks -= tokens as u64 / block;
        }
    }

    /// Prompt `id` of `prompt` tokens left the replica: its whole blocks
    /// are cached, then entries are evicted until they fit in `free`.
    pub fn put(&mut self, id: u32, prompt: u32, block: u64, free: u64) {
        let whole = prompt as u64 / block;
        if whole > 0 {
            if let Some((tokens, used)) = self.entries.remove(&id) {
                self.order.remove(&used);
                self.blocks -= tokens as u64 / block;
            }
            self.clock += 1;
            self.entries
                .insert(id, ((whole * block) as u32, self.clock));
            self.order.insert(self.clock, id);
            self.blocks += whole;
        }
        self.fit(block, free);
    }

    /// Evicts the least recently used entries until they hold at most
    /// `free` blocks.
    pub fn fit(&mut self, block: u64, free: u64) {
        while self.blocks > free {
            let Some((_, id)) = self.order.pop_first() else {
                break;
            };
            if let Some((tokens, _)) = self.entries.remove(&id) {
                self.blocks -= tokens as u64 / block;
            }
        }
    }

    /// Blocks the entries hold.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whole blocks only, found once and then held by the sequence, put
    /// back when it leaves, and the least recently used out first when
    /// the free blocks shrink.
    #[test]
    fn the_prefix_cache_keeps_whole_blocks_and_evicts_the_oldest() {
        let mut c = PrefixCache::default();
        c.put(1, 40, 16, 100);
        assert_eq!((c.peek(1), c.blocks()), (32, 2));
        c.put(2, 15, 16, 100);
        assert_eq!(c.peek(2), 0);
        c.put(3, 64, 16, 100);
        assert_eq!(c.blocks(), 6);
        c.admit(1, 40, 32, 16);
        assert_eq!(
            (c.peek(1), c.blocks(), c.looked_up, c.found),
            (0, 4, 40, 32)
        );
        c.put(1, 40, 16, 100);
        // 1 is now the most recent: shrinking to 3 free blocks evicts 3.
        c.fit(16, 3);
        assert_eq!((c.peek(3), c.peek(1), c.blocks()), (0, 32, 2));
        c.fit(16, 0);
        assert_eq!((c.peek(1), c.blocks()), (0, 0));
    }

    #[test]
    fn blocks_round_up_and_never_overfill() {
        let mut b = Blocks::new(100.0, 16);
        assert_eq!(b.total, 6);
        assert_eq!(b.for_tokens(17), 2);
        assert_eq!(b.for_tokens(16), 1);
        assert!(b.take(6));
        assert!(!b.take(1));
        b.give(10);
        assert_eq!(b.free, 6);
    }
}
