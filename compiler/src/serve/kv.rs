//! The paged KV cache of one replica: blocks of `kv_block` tokens.
//!
//! Only counts are kept (which block holds what does not change any
//! time), so admission, growth and preemption are integer arithmetic. A
//! sequence holds `ceil(tokens / block)` blocks; cached prefix tokens are
//! counted as the sequence's own (shared blocks are not deduplicated: an
//! upper bound on the memory a hit rate needs).

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

#[cfg(test)]
mod tests {
    use super::*;

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
