//! Deterministic values for weights and inputs.
//!
//! Every value is a pure function of `(seed, key, index)`: a counter-based
//! hash (SplitMix64's finalizer applied to the seed, the key and the flat
//! index, mixed in turn) whose top 24 bits give a uniform number in
//! `[0, 1)`. Because nothing depends on generation order, a simulated
//! device makes exactly its shard of a weight by asking for the global
//! indices it holds, and the reference interpreter, which makes whole
//! tensors, sees the same numbers.
//!
//! Keys: a weight is keyed by the op that owns it (its output tensor id),
//! the iteration of every enclosing `repeat` (so each layer has its own
//! weights) and a slot number (weight, bias, expert matrices, ...). An
//! input is keyed by its tensor id.

/// SplitMix64's output function.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A value generator for one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Init {
    pub seed: u64,
}

/// Identifies one tensor's worth of values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key(pub u64);

impl Key {
    /// The key of slot `slot` of the op whose output is `op`, at the given
    /// iterations of the enclosing `repeat`s.
    pub fn weight(op: u32, iterations: &[u64], slot: u32) -> Key {
        let mut h = mix(0x5745_4947_4854 ^ u64::from(op));
        for it in iterations {
            h = mix(h ^ it.wrapping_mul(0x1000_0001));
        }
        Key(mix(h ^ u64::from(slot).wrapping_mul(0xA24B_AED4_963E_E407)))
    }
    /// The key of a graph input.
    pub fn input(tensor: u32) -> Key {
        Key(mix(0x0049_4E50_5554 ^ u64::from(tensor)))
    }
}

impl Init {
    pub fn new(seed: u64) -> Init {
        Init { seed }
    }
    /// A uniform number in `[0, 1)` for element `index` of `key`.
    pub fn unit(&self, key: Key, index: u64) -> f32 {
        let h = mix(mix(self.seed ^ key.0) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
        (h >> 40) as f32 / (1u64 << 24) as f32
    }
    /// A uniform number in `[-bound, bound)`.
    pub fn symmetric(&self, key: Key, index: u64, bound: f32) -> f32 {
        (2.0 * self.unit(key, index) - 1.0) * bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_depend_only_on_seed_key_and_index() {
        let a = Init::new(7);
        let k = Key::weight(3, &[1], 0);
        assert_eq!(a.unit(k, 5), Init::new(7).unit(k, 5));
        assert_ne!(a.unit(k, 5), a.unit(k, 6));
        assert_ne!(a.unit(k, 5), a.unit(Key::weight(3, &[2], 0), 5));
        assert_ne!(a.unit(k, 5), Init::new(8).unit(k, 5));
        let mean: f32 = (0..10_000).map(|i| a.unit(k, i)).sum::<f32>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        assert!((0..1000).all(|i| (0.0..1.0).contains(&a.unit(k, i))));
    }
}
