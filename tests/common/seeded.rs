//! The one proptest configuration every property test in the workspace
//! draws from: a fixed seed, so that a run (and CI) is a function of the
//! code, not of the clock. `GANTRY_PROPTEST_CASES` and
//! `GANTRY_PROPTEST_SEED` override the count and the seed, to explore
//! further by hand (docs/TESTING.md). One file, included by path from the
//! compiler's unit tests and its and the root crate's integration tests.

use proptest::test_runner::{Config, RngSeed};

/// `cases` cases from the stream of `seed` (each unless overridden).
#[allow(dead_code)]
pub fn seeded(cases: u32, seed: u64) -> Config {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    Config {
        cases: env("GANTRY_PROPTEST_CASES").map_or(cases, |c| c as u32),
        rng_seed: RngSeed::Fixed(env("GANTRY_PROPTEST_SEED").unwrap_or(seed)),
        ..Config::default()
    }
}
