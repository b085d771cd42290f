//! Reliability-aware goodput of a training pool: how much of its raw
//! throughput survives failures, checkpoints and restarts.
//!
//! Plain functions of plain numbers, so each term is checkable by hand
//! (docs/COST-MODEL.md §9):
//!
//! - the pool's mean time between interruptions
//!   `M = 1 / (devices / mtbf_device + nodes / mtbf_node)`;
//! - checkpoint time `δ = state / storage bandwidth`, the state being one
//!   copy of the weights, fp32 master weights (below 4-byte types), the
//!   optimizer's fp32 states and any embedding tables;
//! - Young's optimal interval `τ = sqrt(2 δ M)` (Young 1974; Daly 2006
//!   shows it is the first-order optimum);
//! - useful fraction `g = τ / (τ + δ) * (1 - (R + (τ + δ) / 2) / M)`:
//!   checkpoints take `δ` of every `τ + δ`, and each interruption loses the
//!   restart `R` plus on average half an interval of work; at most 1, at
//!   least 0 (a pool that fails faster than it can checkpoint does nothing
//!   useful).

use serde::{Deserialize, Serialize};

/// The failure figures a pool needs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failures {
    pub devices: u64,
    pub nodes: u64,
    /// Mean time between failures of one device and of one node (beyond
    /// its devices), seconds.
    pub device_mtbf: f64,
    pub node_mtbf: Option<f64>,
}

/// A training pool's goodput terms.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Goodput {
    /// Mean time between interruptions of the whole pool, seconds.
    pub mtbf: f64,
    /// Bytes written per checkpoint and seconds to write them.
    pub state: f64,
    pub checkpoint: f64,
    /// Young's interval, seconds of work between checkpoints.
    pub interval: f64,
    pub restart: f64,
    /// Useful share of the raw throughput, in [0, 1].
    pub fraction: f64,
}

/// The pool's mean time between interruptions.
pub fn pool_mtbf(f: &Failures) -> f64 {
    let rate = f.devices as f64 / f.device_mtbf + f.node_mtbf.map_or(0.0, |m| f.nodes as f64 / m);
    if rate > 0.0 {
        1.0 / rate
    } else {
        f64::INFINITY
    }
}

/// Young's optimal checkpoint interval for checkpoint time `delta` and
/// mean time between failures `mtbf`: `sqrt(2 delta mtbf)`.
pub fn young_interval(delta: f64, mtbf: f64) -> f64 {
    (2.0 * delta * mtbf).sqrt()
}

/// Goodput of a pool writing `state` bytes to storage at `storage` B/s and
/// restarting in `restart` seconds.
pub fn goodput(f: &Failures, state: f64, storage: f64, restart: f64) -> Goodput {
    let mtbf = pool_mtbf(f);
    let checkpoint = state / storage;
    let interval = young_interval(checkpoint, mtbf);
    let fraction = if mtbf.is_infinite() {
        1.0
    } else if !checkpoint.is_finite() || !interval.is_finite() {
        // A checkpoint that never finishes (storage too slow for the
        // state): every interruption loses all the work since the start.
        0.0
    } else if interval > 0.0 {
        let period = interval + checkpoint;
        interval / period * (1.0 - (restart + period / 2.0) / mtbf)
    } else {
        // Free checkpoints: only the restarts cost.
        1.0 - restart / mtbf
    };
    Goodput {
        mtbf,
        state,
        checkpoint,
        interval,
        restart,
        // NaN (a pool that fails continually, 0 / 0) is no useful work;
        // `clamp` would keep it.
        fraction: if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_interruption_rate_by_hand() {
        // 16,384 GPUs at one failure per 86,300 h and 2,048 nodes at one per
        // 15,300 h: 0.189848 + 0.133856 = 0.323704 per hour, one
        // interruption per 3.0892 h; 54 days of that is 419.5 interruptions,
        // what Llama 3 reported (419).
        let f = Failures {
            devices: 16_384,
            nodes: 2_048,
            device_mtbf: 86_300.0 * 3600.0,
            node_mtbf: Some(15_300.0 * 3600.0),
        };
        let m = pool_mtbf(&f);
        assert!((m / 3600.0 - 3.0892).abs() < 1e-3, "{}", m / 3600.0);
        assert!((54.0 * 86_400.0 / m - 419.5).abs() < 0.5);
    }

    #[test]
    fn young_daly_by_hand() {
        // δ = 100 s, M = 20,000 s: τ = sqrt(2 * 100 * 20,000) = 2,000 s.
        assert!((young_interval(100.0, 20_000.0) - 2_000.0).abs() < 1e-9);
        // A pool with M = 20,000 s (one device of that MTBF), 1 TB at
        // 10 GB/s (δ = 100 s), restart 300 s:
        // g = 2000 / 2100 * (1 - (300 + 1050) / 20000) = 0.952381 * 0.9325
        //   = 0.888095.
        let f = Failures {
            devices: 1,
            nodes: 1,
            device_mtbf: 20_000.0,
            node_mtbf: None,
        };
        let g = goodput(&f, 1e12, 1e10, 300.0);
        assert!((g.checkpoint - 100.0).abs() < 1e-9);
        assert!((g.interval - 2_000.0).abs() < 1e-9);
        assert!((g.fraction - 0.888095).abs() < 1e-6, "{}", g.fraction);
    }

    #[test]
    fn storage_too_slow_or_failures_too_fast_is_no_goodput_not_nan() {
        let f = Failures {
            devices: 16,
            nodes: 2,
            device_mtbf: 80_000.0 * 3600.0,
            node_mtbf: Some(50_000.0 * 3600.0),
        };
        // 1.4 GB at 1e-300 B/s: an infinite checkpoint (inf / inf was NaN).
        for storage in [1e-300, 0.0, f64::MIN_POSITIVE] {
            let g = goodput(&f, 1.4e9, storage, 600.0);
            assert_eq!(g.fraction, 0.0, "{storage}: {g:?}");
        }
        // A pool failing continually (MTBF 0) does nothing useful.
        let always = Failures {
            devices: 1,
            nodes: 1,
            device_mtbf: 5e-324,
            node_mtbf: None,
        };
        for restart in [0.0, 600.0] {
            let g = goodput(&always, 1.4e9, 1e9, restart);
            assert_eq!(g.fraction, 0.0, "{restart}: {g:?}");
        }
    }

    #[test]
    fn goodput_is_optimal_at_young_and_bounded() {
        // The first-order waste is smallest at Young's interval: nearby
        // intervals do no better.
        let (delta, m, r) = (60.0, 36_000.0, 600.0);
        let g = |tau: f64| tau / (tau + delta) * (1.0 - (r + (tau + delta) / 2.0) / m);
        let t = young_interval(delta, m);
        assert!(g(t) >= g(t * 0.8) && g(t) >= g(t * 1.25));
        // A pool that fails faster than it restarts does no useful work.
        let f = Failures {
            devices: 1_000,
            nodes: 0,
            device_mtbf: 1_000.0,
            node_mtbf: None,
        };
        assert_eq!(goodput(&f, 1e9, 1e9, 600.0).fraction, 0.0);
        // No failures, nothing lost.
        let none = Failures {
            devices: 0,
            nodes: 0,
            device_mtbf: 1.0,
            node_mtbf: None,
        };
        assert_eq!(goodput(&none, 1e9, 1e9, 600.0).fraction, 1.0);
    }
}
