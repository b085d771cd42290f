//! Rule family: collective algebra. An all-reduce is a reduce-scatter then
//! an all-gather; elementwise ops between them (norms, dropout, residual
//! adds) commute into the sequence-sharded middle, which is sequence
//! parallelism, found rather than hard-coded; a scatter of a gathered value
//! cancels.

use egg::{Rewrite, rewrite as rw};

use super::lang::{Shard, ShardAnalysis};

pub fn rules() -> Vec<Rewrite<Shard, ShardAnalysis>> {
    vec![
        rw!("allreduce-split"; "(allreduce ?x)" => "(all-gather (reduce-scatter ?x))"),
        rw!("allreduce-join"; "(all-gather (reduce-scatter ?x))" => "(allreduce ?x)"),
        rw!("sequence-parallel-unary"; "(ew ?i (all-gather ?y))" => "(all-gather (ew-seq ?i ?y))"),
        rw!("sequence-parallel-binary"; "(ew2 ?i (all-gather ?a) (all-gather ?b))" => "(all-gather (ew2-seq ?i ?a ?b))"),
        // Row-wise reductions run on sequence rows (whole rows each).
        rw!("sequence-parallel-reduction"; "(red ?i (all-gather ?y))" => "(all-gather (red-seq ?i ?y))"),
        rw!("scatter-of-gather"; "(scatter (all-gather ?x))" => "?x"),
    ]
}

#[cfg(test)]
mod tests {
    use egg::{test_fn, *};

    use super::super::lang::{Shard, ShardAnalysis};

    fn all() -> Vec<Rewrite<Shard, ShardAnalysis>> {
        let mut r = super::rules();
        r.extend(super::super::sharding::rules());
        r
    }

    test_fn! { allreduce_is_reduce_scatter_then_all_gather, all(),
        runner = Runner::<Shard, ShardAnalysis>::default(),
        "(allreduce (lin-row 1 input))" => "(all-gather (reduce-scatter (lin-row 1 input)))"
    }

    test_fn! { norm_runs_sequence_parallel, all(),
        runner = Runner::<Shard, ShardAnalysis>::default(),
        "(ew 2 (allreduce (lin-row 1 input)))" => "(all-gather (ew-seq 2 (reduce-scatter (lin-row 1 input))))"
    }

    test_fn! { residual_add_on_sequence_shards, all(),
        runner = Runner::<Shard, ShardAnalysis>::default(),
        "(scatter (ew2 2 (all-gather input) (allreduce (lin-row 1 input))))" => "(ew2-seq 2 input (reduce-scatter (lin-row 1 input)))"
    }
}
