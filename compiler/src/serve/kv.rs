//! The paged KV cache of one replica: blocks of `kv_block` tokens.
//!
//! Only counts are kept (which block holds what does not change any
//! time), so admission, growth and preemption are integer arithmetic. A
//! sequence holds `ceil(tokens / block)` blocks. Without a prefix cache
//! by key, a declared hit rate's cached tokens are counted as the
//! sequence's own (shared blocks are not deduplicated: an upper bound on
//! the memory a hit rate needs).
//!
//! A [`PrefixCache`] keeps, per replica, prompt prefixes by key: a
//! conversation of a multi-turn dataset, whose turns' prompts are
//! prefixes of one another, or a request index (request `i` of every run
//! of a server is the same prompt, `after`). Of a key it knows the whole
//! blocks present, and the whole prompt blocks of each running sequence
//! of the key: those blocks are shared (held once, by the longest), as an
//! engine's block table shares hashed blocks among sequences. Blocks no
//! running sequence holds are free blocks that still hold their tokens,
//! until admissions need them (least recently used key first out).

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

/// One key's prefix: whole blocks present, and the whole prompt blocks
/// of each running sequence of the key (the longest holds them all).
#[derive(Clone, Debug, Default, PartialEq)]
struct Entry {
    cached: u64,
    /// Whole prompt blocks -> running sequences with that many (a
    /// document's are all alike: one element however many run).
    running: BTreeMap<u64, u32>,
    /// Its place in the eviction order (0: not there, nothing free).
    used: u64,
}

impl Entry {
    /// Blocks running sequences hold (shared).
    fn resident(&self) -> u64 {
        self.running.last_key_value().map_or(0, |(w, _)| *w)
    }
    /// Blocks present that no running sequence holds (free blocks). A
    /// sequence still prefilling holds blocks not yet computed (not
    /// cached).
    fn idle(&self) -> u64 {
        self.cached.saturating_sub(self.resident())
    }
}

/// The prompt prefixes a replica's blocks hold, by key (vLLM's and
/// SGLang's automatic prefix caching: whole blocks only, as an engine
/// hashes them). Blocks no running sequence holds are free blocks:
/// admissions evict the least recently used keys' idle blocks so that
/// they never exceed the free blocks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrefixCache {
    entries: HashMap<u64, Entry>,
    /// Last use -> key: the eviction order of keys with idle blocks.
    order: BTreeMap<u64, u64>,
    clock: u64,
    /// Idle blocks over all keys.
    blocks: u64,
    /// Prompt tokens of fresh prompts admitted, and of them those found.
    pub looked_up: u64,
    pub found: u64,
}

impl PrefixCache {
    /// Whole blocks of `key`'s prefix present (running or idle).
    pub fn peek(&self, key: u64) -> u64 {
        self.entries.get(&key).map_or(0, |e| e.cached)
    }

    /// Blocks a sequence of `key` whose prompt has `whole` whole blocks
    /// must take for them: those beyond what running sequences of the
    /// key hold (idle blocks it reuses leave the free blocks too).
    pub fn extra(&self, key: u64, whole: u64) -> u64 {
        whole.saturating_sub(self.entries.get(&key).map_or(0, Entry::resident))
    }

    /// Re-files `e`'s place in the eviction order after a change of its
    /// idle blocks from `before`.
    fn refile(&mut self, key: u64, before: u64) {
        let Some(e) = self.entries.get_mut(&key) else {
            return;
        };
        let after = e.idle();
        self.blocks = self.blocks - before + after;
        if e.used != 0 {
            self.order.remove(&e.used);
            e.used = 0;
        }
        if after > 0 {
            self.clock += 1;
            e.used = self.clock;
            self.order.insert(self.clock, key);
        } else if e.cached == 0 && e.running.is_empty() {
            self.entries.remove(&key);
        }
    }

    /// A sequence of `key` is admitted, its prompt's `whole` whole blocks
    /// held from now (shared with the key's running sequences).
    pub fn admit(&mut self, key: u64, whole: u64) {
        let e = self.entries.entry(key).or_default();
        let before = e.idle();
        *e.running.entry(whole).or_default() += 1;
        self.refile(key, before);
    }

    /// A running sequence of `key` finished its prefill: its prompt's
    /// `whole` whole blocks are computed, and found by later prompts.
    pub fn computed(&mut self, key: u64, whole: u64) {
        if let Some(e) = self.entries.get_mut(&key) {
            let before = e.idle();
            e.cached = e.cached.max(whole);
            self.refile(key, before);
        }
    }

    /// A sequence of `key` holding `whole` prompt blocks left (done,
    /// handed over or preempted): returns the blocks no running sequence
    /// holds any more, which stay cached as idle free blocks.
    pub fn release(&mut self, key: u64, whole: u64) -> u64 {
        let Some(e) = self.entries.get_mut(&key) else {
            return 0;
        };
        let (before, held) = (e.idle(), e.resident());
        if let Some(n) = e.running.get_mut(&whole) {
            *n -= 1;
            if *n == 0 {
                e.running.remove(&whole);
            }
        }
        let freed = held - e.resident();
        self.refile(key, before);
        freed
    }

    /// Evicts the least recently used keys' idle blocks until they are
    /// at most `free`.
    pub fn fit(&mut self, free: u64) {
        while self.blocks > free {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.get_mut(&key) {
                e.used = 0;
                let idle = e.idle();
                e.cached -= idle;
                self.blocks -= idle;
                if e.cached == 0 && e.running.is_empty() {
                    self.entries.remove(&key);
                }
            }
        }
    }

    /// A fresh prompt of `prompt` tokens was admitted, `found` of them
    /// from the cache (the report's share).
    pub fn count(&mut self, prompt: u32, found: u32) {
        self.looked_up += prompt as u64;
        self.found += found as u64;
    }

    /// Idle blocks (free blocks that hold cached prefixes).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key's running sequences share their prompts' whole blocks (the
    /// longest holds them); what none holds stays cached, idle, and the
    /// least recently used key's idle blocks go first.
    #[test]
    fn running_sequences_share_a_keys_blocks_and_idle_ones_are_evicted_oldest_first() {
        let mut c = PrefixCache::default();
        c.admit(1, 2);
        c.count(40, 0);
        // Not found before its prefill is computed.
        assert_eq!((c.peek(1), c.blocks()), (0, 0));
        c.computed(1, 2);
        assert_eq!((c.peek(1), c.blocks()), (2, 0));
        // A longer turn of the same conversation takes one block more.
        assert_eq!(c.extra(1, 3), 1);
        assert_eq!(c.extra(1, 1), 0);
        c.admit(1, 3);
        c.count(50, 32);
        c.computed(1, 3);
        assert_eq!((c.looked_up, c.found), (90, 32));
        // The longer leaves first: its third block is no longer held.
        assert_eq!(c.release(1, 3), 1);
        assert_eq!((c.peek(1), c.blocks()), (3, 1));
        assert_eq!(c.release(1, 2), 2);
        assert_eq!((c.peek(1), c.blocks()), (3, 3));
        // A second key, idle later: the first is evicted first.
        c.admit(2, 4);
        c.computed(2, 4);
        assert_eq!(c.release(2, 4), 4);
        assert_eq!(c.blocks(), 7);
        c.fit(5);
        assert_eq!((c.peek(1), c.peek(2), c.blocks()), (0, 4, 4));
        // Held blocks are never evicted; a preempted prefill (never
        // computed) leaves nothing cached.
        c.admit(2, 4);
        c.admit(3, 5);
        c.fit(0);
        assert_eq!((c.peek(2), c.blocks()), (4, 0));
        assert_eq!(c.release(3, 5), 5);
        assert_eq!((c.peek(3), c.blocks()), (0, 0));
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
