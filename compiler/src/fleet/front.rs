//! Pareto fronts of a fleet study: which pools and which whole fleets are
//! worth considering when cost is not the only objective.
//!
//! - Per workload, its pools on every system of the sweep scored on
//!   (TCO rate: min, delivered throughput: max, facility power at load:
//!   min).
//! - For the fleet, candidate fleets (one pool per workload) scored on
//!   (TCO rate: min, facility power at load: min). Every candidate meets
//!   the demand, so throughput is not an objective here. Both objectives
//!   are sums over pools, so a fleet using a pool that another pool of the
//!   same workload beats on both cost and power is dominated by the swap:
//!   only the product of the per-workload (cost, power) fronts is
//!   enumerated, up to [`super::MAX_COMBINATIONS`] fleets (`truncated`
//!   says when the product was larger and the front is of the first ones).
//!
//! The dominance rule is [`crate::pareto`]'s; this module only picks the
//! candidates and their figures, all fields of [`Pool`].

use super::{Answer, MAX_COMBINATIONS, Pool};
use crate::pareto::{Sense, front};

/// One fleet on the front: its system index per demand and totals.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetPoint {
    pub choice: Vec<usize>,
    /// Dollars per second.
    pub cost: f64,
    /// Facility watts at the modelled utilisation.
    pub power: f64,
    /// Facility watts at full load (what the power cap limits).
    pub provisioned: f64,
    pub within_cap: bool,
}

/// The study's fronts.
#[derive(Clone, Debug, PartialEq)]
pub struct Fronts {
    /// Per demand (in demand order): the system indices of the pools on
    /// that workload's (cost, delivered, power) front, ascending.
    pub pools: Vec<Vec<usize>>,
    /// The fleets on the (cost, power) front, cheapest first.
    pub fleets: Vec<FleetPoint>,
    /// Candidate fleets enumerated for the fleet front.
    pub candidates: usize,
    /// The product of the per-workload fronts exceeded the limit.
    pub truncated: bool,
}

fn pools_front(row: &[Result<Pool, String>], with_throughput: bool) -> Vec<usize> {
    let pts: Vec<Vec<f64>> = row
        .iter()
        .map(|p| match p {
            Ok(p) if with_throughput => vec![p.tco.total, p.delivered, p.tco.facility_power],
            Ok(p) => vec![p.tco.total, p.tco.facility_power],
            Err(_) => vec![f64::NAN; if with_throughput { 3 } else { 2 }],
        })
        .collect();
    if with_throughput {
        front(&pts, &[Sense::Minimize, Sense::Maximize, Sense::Minimize])
    } else {
        front(&pts, &[Sense::Minimize, Sense::Minimize])
    }
}

/// The fronts of a fleet answer under the site's power cap `cap` (watts
/// of provisioned facility power; infinity without one).
pub fn of(a: &Answer, cap: f64) -> Fronts {
    let pools: Vec<Vec<usize>> = a.table.iter().map(|r| pools_front(r, true)).collect();
    let axes: Vec<Vec<usize>> = a.table.iter().map(|r| pools_front(r, false)).collect();
    let product = axes
        .iter()
        .try_fold(1usize, |n, ax| n.checked_mul(ax.len()))
        .unwrap_or(usize::MAX);
    let candidates = product.min(MAX_COMBINATIONS);
    let mut points: Vec<FleetPoint> = Vec::with_capacity(candidates);
    for mut i in 0..candidates {
        let mut choice = Vec::with_capacity(axes.len());
        for ax in &axes {
            choice.push(ax[i % ax.len()]);
            i /= ax.len();
        }
        let (mut cost, mut power, mut provisioned) = (0.0, 0.0, 0.0);
        for (d, &s) in choice.iter().enumerate() {
            if let Ok(p) = &a.table[d][s] {
                cost += p.tco.total;
                power += p.tco.facility_power;
                provisioned += p.tco.provisioned_power;
            }
        }
        points.push(FleetPoint {
            choice,
            cost,
            power,
            provisioned,
            within_cap: provisioned <= cap,
        });
    }
    let scores: Vec<Vec<f64>> = points.iter().map(|p| vec![p.cost, p.power]).collect();
    let mut fleets: Vec<FleetPoint> = front(&scores, &[Sense::Minimize, Sense::Minimize])
        .into_iter()
        .map(|i| points[i].clone())
        .collect();
    fleets.sort_by(|x, y| x.cost.total_cmp(&y.cost).then(x.choice.cmp(&y.choice)));
    Fronts {
        pools,
        fleets,
        candidates,
        truncated: product > MAX_COMBINATIONS,
    }
}
