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
//!   same workload beats on both cost and power is dominated by the swap;
//!   likewise for the fleets of the first k workloads. So fleets are built
//!   workload by workload, each step combining the front so far with the
//!   next workload's own (cost, power) front and pruning back to the
//!   front: exact, and small where the plain product of fronts is not.
//!   Of pools or fleets with identical (cost, power), the one with the
//!   lowest system indices stands for all.
//!   A step with more than [`super::MAX_COMBINATIONS`] candidates is cut
//!   there (`truncated`).
//!
//! The dominance rule is [`crate::pareto`]'s; this module only picks the
//! candidates and their figures, all fields of [`Pool`].

use super::{Answer, MAX_COMBINATIONS, Pool};
use crate::pareto::{Sense, front, front_2d};

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
    /// Candidate fleets counted in `points` (see [`FleetFront::points`]).
    pub candidates: usize,
    /// (cost, power at load) of those candidates (what a Pareto scatter
    /// plots).
    pub points: Vec<(f64, f64)>,
    /// A step had more than the limit of candidates and was cut.
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
/// cannot meet the demand), cheapest first, with the last step's
/// candidates. Arithmetic only, so the pruning argument is checked against
/// brute force on random tables.
pub fn fleets(costs: &[Vec<Option<[f64; 3]>>], cap: f64) -> FleetFront {
    // Fleets of the first k workloads, pruned to their front at each step:
    // front(A + B) is within front(A) + front(B) for sums of minimised
    // figures, so the last step's front is the exact fleet front.
    let mut partial: Vec<(Vec<usize>, [f64; 3])> = vec![(Vec::new(), [0.0; 3])];
    let mut points: Vec<(f64, f64)> = Vec::new();
    let mut truncated = false;
    for row in costs {
        let own: Vec<(f64, f64)> = row
            .iter()
            .map(|c| c.map_or((f64::NAN, f64::NAN), |c| (c[0], c[1])))
            .collect();
        let axis = distinct(front_2d(&own), &own);
        let mut next: Vec<(Vec<usize>, [f64; 3])> = Vec::new();
        'all: for (choice, t) in &partial {
            for &s in &axis {
                if next.len() >= MAX_COMBINATIONS {
                    truncated = true;
                    break 'all;
                }
                let Some(c) = row[s] else { continue };
                let mut ch = choice.clone();
                ch.push(s);
                next.push((ch, [t[0] + c[0], t[1] + c[1], t[2] + c[2]]));
            }
        }
        points = next.iter().map(|(_, t)| (t[0], t[1])).collect();
        partial = distinct(front_2d(&points), &points)
            .into_iter()
            .map(|i| next[i].clone())
            .collect();
    }
    if costs.is_empty() {
        partial.clear();
    }
    if let Some(all) = every_fleet(costs) {
        points = all;
    }
    let mut members: Vec<FleetPoint> = partial
        .into_iter()
        .map(|(choice, t)| FleetPoint {
            choice,
            cost: t[0],
            power: t[1],
            provisioned: t[2],
            within_cap: t[2] <= cap,
        })
        .collect();
    members.sort_by(|x, y| x.cost.total_cmp(&y.cost).then(x.choice.cmp(&y.choice)));
    FleetFront {
        members,
        points,
        truncated,
    }
}

/// `members` less repeats of the same (cost, power): the first (lowest
/// index, so lowest system indices) stands for all. Systems of a sweep
/// often give identical pools (an inference pool's replicas do not depend
/// on the cluster's size), and keeping every copy would multiply at each
/// step.
fn distinct(members: Vec<usize>, pts: &[(f64, f64)]) -> Vec<usize> {
    let mut seen = std::collections::BTreeSet::new();
    members
        .into_iter()
        .filter(|&i| seen.insert((pts[i].0.to_bits(), pts[i].1.to_bits())))
        .collect()
}

/// (cost, power at load) of every fleet of one possible pool per
/// workload, if there are at most [`MAX_COMBINATIONS`].
fn every_fleet(costs: &[Vec<Option<[f64; 3]>>]) -> Option<Vec<(f64, f64)>> {
    let rows: Vec<Vec<[f64; 3]>> = costs
        .iter()
        .map(|r| r.iter().flatten().copied().collect())
        .collect();
    let n = rows
        .iter()
        .try_fold(1usize, |n, r| n.checked_mul(r.len()))
        .filter(|&n| n <= MAX_COMBINATIONS)?;
    let mut out = Vec::with_capacity(n);
    for mut i in 0..n {
        let (mut c, mut p) = (0.0, 0.0);
        for r in &rows {
            let x = r[i % r.len()];
            i /= r.len();
            c += x[0];
            p += x[1];
        }
        out.push((c, p));
    }
    Some(out)
}

/// What [`fleets`] finds.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetFront {
    /// The non-dominated fleets, cheapest first.
    pub members: Vec<FleetPoint>,
    /// (cost, power at load) of every fleet of one possible pool per
    /// workload when there are at most [`MAX_COMBINATIONS`], else of the
    /// last step's candidates (the front of the other workloads' fleets
    /// combined with the last workload's own front).
    pub points: Vec<(f64, f64)>,
    /// A step had more than [`MAX_COMBINATIONS`] candidates and was cut.
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
        // Every fleet of possible pools: 3 x 2.
        assert_eq!((f.points.len(), f.truncated), (6, false));
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

    /// Identical pools on several systems (a sweep of cluster sizes) give
    /// one front member, the lowest system indices, not one per copy.
    #[test]
    fn identical_fleets_count_once() {
        let same = Some([1.0, 2.0, 3.0]);
        let t = vec![vec![same, same, same], vec![same, same]];
        let f = fleets(&t, f64::INFINITY);
        assert_eq!(f.members.len(), 1);
        assert_eq!(f.members[0].choice, vec![0, 0]);
        assert_eq!((f.members[0].cost, f.members[0].power), (2.0, 4.0));
        assert_eq!(f.points.len(), 6);
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
        #![proptest_config(crate::seeded::seeded(128, 0xf1ee_0002))]

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
