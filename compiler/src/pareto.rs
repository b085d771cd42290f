//! Pareto fronts: the non-dominated set of candidates scored on several
//! objectives at once (cost, throughput, power), so a study reports every
//! trade-off worth considering instead of one weighted score.
//!
//! One pure function over plain numbers, shared by the weighted studies
//! (systems per workload) and the fleet studies (pools per workload, whole
//! fleets), so the dominance rule has one owner and is unit-tested on
//! hand-computed cases.
//!
//! Candidate `a` dominates `b` when `a` is no worse on every objective and
//! strictly better on at least one. Identical candidates do not dominate
//! each other, so both stay on the front. A candidate with a figure that is
//! not finite (NaN, infinity) is never on the front and dominates nothing.
//! The front is built incrementally: a new candidate is dropped if a
//! member dominates it, else it evicts the members it dominates; since
//! dominance is transitive this gives the exact front in O(n * front).

/// Whether an objective is better smaller (cost, power) or larger
/// (throughput).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sense {
    Minimize,
    Maximize,
}

/// Does `a` dominate `b` under `senses`?
pub fn dominates(a: &[f64], b: &[f64], senses: &[Sense]) -> bool {
    let mut strictly = false;
    for ((x, y), s) in a.iter().zip(b).zip(senses) {
        let (x, y) = match s {
            Sense::Minimize => (*x, *y),
            Sense::Maximize => (-*x, -*y),
        };
        if x > y {
            return false;
        }
        if x < y {
            strictly = true;
        }
    }
    strictly
}

/// The indices of the non-dominated candidates, ascending. Every
/// candidate has one figure per entry of `senses`.
pub fn front(points: &[Vec<f64>], senses: &[Sense]) -> Vec<usize> {
    let mut members: Vec<usize> = Vec::new();
    for (i, p) in points.iter().enumerate() {
        if p.len() != senses.len() || !p.iter().all(|x| x.is_finite()) {
            continue;
        }
        if members.iter().any(|&m| dominates(&points[m], p, senses)) {
            continue;
        }
        members.retain(|&m| !dominates(p, &points[m], senses));
        members.push(i);
    }
    members.sort_unstable();
    members
}

/// [`front`] for two minimised objectives in O(n log n): sorted by the
/// first figure then the second, a candidate is on the front when its
/// second figure is below every earlier one's, or equals the last member
/// (an identical candidate). For fleets, whose fronts can hold thousands.
pub fn front_2d(points: &[(f64, f64)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..points.len())
        .filter(|&i| points[i].0.is_finite() && points[i].1.is_finite())
        .collect();
    order.sort_by(|&a, &b| {
        let (p, q) = (points[a], points[b]);
        p.0.total_cmp(&q.0).then(p.1.total_cmp(&q.1))
    });
    let mut members = Vec::new();
    let mut last: Option<(f64, f64)> = None;
    for i in order {
        let p = points[i];
        if last.is_none_or(|l| p.1 < l.1 || p == l) {
            members.push(i);
            last = Some(p);
        }
    }
    members.sort_unstable();
    members
}

#[cfg(test)]
mod tests {
    use super::*;
    use Sense::{Maximize as Max, Minimize as Min};
    use proptest::prelude::*;

    /// Five systems scored (cost $/h, throughput, power kW), worked by
    /// hand: A (10, 100, 5); B (20, 150, 6); C (20, 140, 6) is dominated
    /// by B; D (8, 90, 7) is cheapest; E (10, 100, 6) is dominated by A
    /// (same cost and throughput, more power). Front: A, B, D.
    #[test]
    fn three_objectives_by_hand() {
        let pts = vec![
            vec![10.0, 100.0, 5.0],
            vec![20.0, 150.0, 6.0],
            vec![20.0, 140.0, 6.0],
            vec![8.0, 90.0, 7.0],
            vec![10.0, 100.0, 6.0],
        ];
        assert_eq!(front(&pts, &[Min, Max, Min]), vec![0, 1, 3]);
        // Power ignored: E ties A and both stay; C is still dominated.
        let two: Vec<Vec<f64>> = pts.iter().map(|p| p[..2].to_vec()).collect();
        assert_eq!(front(&two, &[Min, Max]), vec![0, 1, 3, 4]);
        // All three minimized: A (10, 100, 5) is no worse than B, C and
        // E on every figure; D (8, 90, 7) beats A on cost and throughput
        // and loses on power. Front: A, D.
        assert_eq!(front(&pts, &[Min, Min, Min]), vec![0, 3]);
    }

    #[test]
    fn ties_nan_and_empty() {
        assert!(front(&[], &[Min]).is_empty());
        let pts = vec![vec![1.0, 1.0], vec![1.0, 1.0], vec![f64::NAN, 0.0]];
        assert_eq!(front(&pts, &[Min, Min]), vec![0, 1]);
        // A NaN candidate dominates nothing, even where it would.
        let pts = vec![vec![5.0, f64::NAN], vec![6.0, 1.0]];
        assert_eq!(front(&pts, &[Min, Min]), vec![1]);
        // A candidate of the wrong arity is skipped, not a panic.
        assert_eq!(front(&[vec![1.0]], &[Min, Min]), Vec::<usize>::new());
    }

    proptest! {
        #![proptest_config(crate::seeded::seeded(128, 0x9a4e_0001))]

        /// The incremental front equals the definition checked pairwise.
        #[test]
        fn equals_the_quadratic_definition(
            pts in prop::collection::vec(prop::collection::vec(0u8..6, 3), 0..40)
        ) {
            let pts: Vec<Vec<f64>> =
                pts.iter().map(|p| p.iter().map(|&x| f64::from(x)).collect()).collect();
            let senses = [Min, Max, Min];
            let slow: Vec<usize> = (0..pts.len())
                .filter(|&i| !pts.iter().any(|q| dominates(q, &pts[i], &senses)))
                .collect();
            prop_assert_eq!(front(&pts, &senses), slow);
        }

        /// The two-objective sweep equals the general front.
        #[test]
        fn front_2d_equals_front(
            pts in prop::collection::vec((0u8..8, 0u8..8), 0..60)
        ) {
            let pairs: Vec<(f64, f64)> =
                pts.iter().map(|&(a, b)| (f64::from(a), f64::from(b))).collect();
            let vecs: Vec<Vec<f64>> = pairs.iter().map(|&(a, b)| vec![a, b]).collect();
            prop_assert_eq!(front_2d(&pairs), front(&vecs, &[Min, Min]));
        }
    }
}
