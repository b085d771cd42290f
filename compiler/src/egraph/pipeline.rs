//! Rule family: pipeline stage boundaries at layer boundaries of a
//! `repeat` block. `(layers n)` is n consecutive layers on one stage;
//! `(stages a b)` runs a then b on consecutive stages. A run splits at any
//! layer boundary, so uneven splits are reachable; the cost of a split is
//! its slowest stage (see [`stage_cost`]), which the outer search balances
//! against the embedding and the head.

use egg::{Applier, EGraph, Id, Pattern, PatternAst, Rewrite, Subst, Symbol, Var};

use super::lang::{Shard, ShardAnalysis};

/// Splits `(layers n)` into `(stages (layers a) (layers n - a))` for the
/// halves (and their neighbours, for uneven splits).
struct Split {
    n: Var,
}

impl Applier<Shard, ShardAnalysis> for Split {
    fn apply_one(
        &self,
        egraph: &mut EGraph<Shard, ShardAnalysis>,
        eclass: Id,
        subst: &Subst,
        _ast: Option<&PatternAst<Shard>>,
        _rule: Symbol,
    ) -> Vec<Id> {
        let Some(n) = egraph[subst[self.n]].nodes.iter().find_map(|x| {
            if let Shard::Num(v) = x {
                Some(*v)
            } else {
                None
            }
        }) else {
            return vec![];
        };
        let mut changed = vec![];
        if n < 2 {
            return changed;
        }
        let half = n / 2;
        for a in [half, half + 1, half - 1] {
            if a < 1 || a >= n {
                continue;
            }
            let na = egraph.add(Shard::Num(a));
            let nb = egraph.add(Shard::Num(n - a));
            let la = egraph.add(Shard::Layers([na]));
            let lb = egraph.add(Shard::Layers([nb]));
            let st = egraph.add(Shard::Stages([la, lb]));
            if egraph.union(eclass, st) {
                changed.push(eclass);
            }
        }
        changed
    }
}

pub fn rules() -> Vec<Rewrite<Shard, ShardAnalysis>> {
    let pat: Pattern<Shard> = "(layers ?n)".parse().expect("pattern");
    let split = Rewrite::new(
        "split-stages",
        pat,
        Split {
            n: "?n".parse().expect("var"),
        },
    )
    .expect("rule");
    vec![split]
}

/// Time of a pipeline term per microbatch slot: a run costs its layers, a
/// split costs its slower half (stages run concurrently in the pipeline).
pub fn stage_cost(e: &egg::RecExpr<Shard>, layer_time: f64) -> f64 {
    fn go(e: &[Shard], i: usize, t: f64) -> (f64, usize) {
        match &e[i] {
            Shard::Layers([n]) => match &e[usize::from(*n)] {
                Shard::Num(k) => (*k as f64 * t, 1),
                _ => (0.0, 1),
            },
            Shard::Stages([a, b]) => {
                let (x, sa) = go(e, usize::from(*a), t);
                let (y, sb) = go(e, usize::from(*b), t);
                (x.max(y), sa + sb)
            }
            _ => (0.0, 0),
        }
    }
    let nodes = e.as_ref();
    go(nodes, nodes.len() - 1, layer_time).0
}

#[cfg(test)]
mod tests {
    use egg::*;

    use super::super::lang::{Shard, ShardAnalysis};

    fn reaches(start: &str, goal: &str, iters: usize) -> bool {
        let start: RecExpr<Shard> = start.parse().expect("start");
        let goal: Pattern<Shard> = goal.parse().expect("goal");
        let runner = Runner::<Shard, ShardAnalysis>::default()
            .with_iter_limit(iters)
            .with_expr(&start)
            .run(&super::rules());
        !goal
            .search_eclass(&runner.egraph, runner.roots[0])
            .is_none_or(|m| m.substs.is_empty())
    }

    #[test]
    fn even_split() {
        assert!(reaches("(layers 8)", "(stages (layers 4) (layers 4))", 2));
    }

    #[test]
    fn uneven_split_of_126_layers() {
        // Llama 3 405B: 126 layers; 63 + 63, and the uneven 62 + 64.
        assert!(reaches(
            "(layers 126)",
            "(stages (layers 63) (layers 63))",
            2
        ));
        assert!(reaches(
            "(layers 126)",
            "(stages (layers 62) (layers 64))",
            2
        ));
    }

    #[test]
    fn four_stages_nest() {
        assert!(reaches(
            "(layers 8)",
            "(stages (stages (layers 2) (layers 2)) (stages (layers 2) (layers 2)))",
            4
        ));
    }

    #[test]
    fn stage_cost_is_the_slowest_stage() {
        let e: RecExpr<Shard> = "(stages (layers 3) (layers 5))".parse().expect("term");
        assert_eq!(super::stage_cost(&e, 2.0), 10.0);
    }
}
