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
    /// (cost, power at load) of every enumerated candidate, in
    /// enumeration order (what a Pareto scatter plots).
    pub points: Vec<(f64, f64)>,
    /// The product of the per-workload fronts exceeded the limit.
    pub truncated: bool,
}

/// The systems whose pools are on a workload's (cost, delivered, power)
/// front.
fn pools_front(row: &[Result<Pool, String>]) -> Vec<usize> {
    let pts: Vec<Vec<f64>> = row
        .iter()
        .map(|p| match p {
            Ok(p) => vec![p.tco.total, p.delivered, p.tco.facility_power],
            Err(_) => vec![f64::NAN; 3],
        })
        .collect();
    front(&pts, &[Sense::Minimize, Sense::Maximize, Sense::Minimize])
}

/// The fleets on the (cost, power) front from `costs[demand][system]` =
/// (cost, power at load, provisioned power) of that pool (None: it
/// cannot meet the demand), cheapest first; the candidates enumerated and
/// whether the enumeration was truncated. Arithmetic only, so the pruning
/// argument is checked against brute force on random tables.
pub fn fleets(costs: &[Vec<Option<[f64; 3]>>], cap: f64) -> FleetFront {
    let axes: Vec<Vec<usize>> = costs
        .iter()
        .map(|row| {
            let pts: Vec<Vec<f64>> = row
                .iter()
                .map(|c| c.map_or(vec![f64::NAN; 2], |c| vec![c[0], c[1]]))
                .collect();
            front(&pts, &[Sense::Minimize, Sense::Minimize])
        })
        .collect();
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
        let mut t = [0.0; 3];
        for (d, &s) in choice.iter().enumerate() {
            if let Some(c) = costs[d][s] {
                t = [t[0] + c[0], t[1] + c[1], t[2] + c[2]];
            }
        }
        points.push(FleetPoint {
            choice,
            cost: t[0],
            power: t[1],
            provisioned: t[2],
            within_cap: t[2] <= cap,
        });
    }
    let scores: Vec<Vec<f64>> = points.iter().map(|p| vec![p.cost, p.power]).collect();
    let mut members: Vec<FleetPoint> = front(&scores, &[Sense::Minimize, Sense::Minimize])
        .into_iter()
        .map(|i| points[i].clone())
        .collect();
    members.sort_by(|x, y| x.cost.total_cmp(&y.cost).then(x.choice.cmp(&y.choice)));
    FleetFront {
        members,
        points: points.iter().map(|p| (p.cost, p.power)).collect(),
        truncated: product > MAX_COMBINATIONS,
    }
}

/// What [`fleets`] finds.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetFront {
    /// The non-dominated fleets, cheapest first.
    pub members: Vec<FleetPoint>,
    /// (cost, power at load) of every candidate enumerated.
    pub points: Vec<(f64, f64)>,
    /// The product of the per-workload fronts exceeded the limit.
    pub truncated: bool,
}

/// The fronts of a fleet answer under the site's power cap `cap` (watts
/// of provisioned facility power; infinity without one).
pub fn of(a: &Answer, cap: f64) -> Fronts {
    let pools: Vec<Vec<usize>> = a.table.iter().map(|r| pools_front(r)).collect();
    let costs: Vec<Vec<Option<[f64; 3]>>> = a
        .table
        .iter()
        .map(|row| {
            row.iter()
                .map(|p| {
                    p.as_ref()
                        .ok()
                        .map(|p| [p.tco.total, p.tco.facility_power, p.tco.provisioned_power])
                })
                .collect()
        })
        .collect();
    let f = fleets(&costs, cap);
    Fronts {
        pools,
        candidates: f.points.len(),
        fleets: f.members,
        points: f.points,
        truncated: f.truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pareto::dominates;
    use proptest::prelude::*;

    /// Two workloads on three systems, by hand (cost, power, provisioned):
    /// workload 0: s0 (1, 10, 20), s1 (2, 5, 8), s2 (3, 6, 9), s2 beaten
    /// by s1; workload 1: s0 (4, 4, 5), s1 none, s2 (1, 9, 12). Fleets of
    /// {s0, s1} x {s0, s2}: [0, 0] (5, 14, 25), [1, 0] (6, 9, 13),
    /// [0, 2] (2, 19, 32), [1, 2] (3, 14, 20); [0, 0] is beaten by
    /// [1, 2]. Under a cap of 20 W, [0, 2] (32 W) is over, [1, 2] (20 W)
    /// and [1, 0] (13 W) within.
    #[test]
    fn two_workloads_by_hand() {
        let t = vec![
            vec![
                Some([1.0, 10.0, 20.0]),
                Some([2.0, 5.0, 8.0]),
                Some([3.0, 6.0, 9.0]),
            ],
            vec![Some([4.0, 4.0, 5.0]), None, Some([1.0, 9.0, 12.0])],
        ];
        let f = fleets(&t, 20.0);
        assert_eq!((f.points.len(), f.truncated), (4, false));
        let m = f.members;
        let got: Vec<(Vec<usize>, f64, f64, bool)> = m
            .iter()
            .map(|f| (f.choice.clone(), f.cost, f.power, f.within_cap))
            .collect();
        assert_eq!(
            got,
            vec![
                (vec![0, 2], 2.0, 19.0, false),
                (vec![1, 2], 3.0, 14.0, true),
                (vec![1, 0], 6.0, 9.0, true),
            ]
        );
    }

    fn table() -> impl Strategy<Value = Vec<Vec<Option<[f64; 3]>>>> {
        (1usize..4, 1usize..5)
            .prop_flat_map(|(d, s)| {
                prop::collection::vec(
                    prop::collection::vec(
                        prop::option::weighted(0.8, (1u8..20, 1u8..20, 1u8..40)),
                        s,
                    ),
                    d,
                )
            })
            .prop_map(|t| {
                t.into_iter()
                    .map(|r| {
                        r.into_iter()
                            .map(|c| c.map(|(a, b, p)| [f64::from(a), f64::from(b), f64::from(p)]))
                            .collect()
                    })
                    .collect()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Enumerating only the per-workload fronts loses no fleet: the
        /// (cost, power) figures of the front equal those of the front of
        /// every combination.
        #[test]
        fn pruned_front_equals_brute_force(t in table()) {
            let systems = t[0].len();
            let mut all: Vec<Vec<f64>> = Vec::new();
            for mut i in 0..systems.pow(t.len() as u32) {
                let mut tot = Some([0.0, 0.0]);
                for row in &t {
                    tot = tot.zip(row[i % systems]).map(|(a, c)| [a[0] + c[0], a[1] + c[1]]);
                    i /= systems;
                }
                if let Some(x) = tot {
                    all.push(x.to_vec());
                }
            }
            let mut want: Vec<(u64, u64)> = all
                .iter()
                .filter(|a| !all.iter().any(|b| dominates(b, a, &[Sense::Minimize, Sense::Minimize])))
                .map(|a| (a[0] as u64, a[1] as u64))
                .collect();
            want.sort_unstable();
            want.dedup();
            let mut got: Vec<(u64, u64)> = fleets(&t, f64::INFINITY)
                .members
                .iter()
                .map(|f| (f.cost as u64, f.power as u64))
                .collect();
            got.sort_unstable();
            got.dedup();
            prop_assert_eq!(got, want);
        }
    }
}
