//! Rule family: tensor-parallel sharding of each op, with the collective
//! each choice needs. Only ops whose class allows a split have a rule:
//! reductions over the last dimension (`red`), `op` (DLRM ops, reshape,
//! concat) and a product whose left operand is split have none, so a
//! feature split reaching them stays gathered. `gather-feat` is the all-gather of a feature-sharded
//! tensor; the rules move it outward through ops that can run on shards and
//! cancel it into an all-reduce at a row-parallel linear.

use egg::{Rewrite, rewrite as rw};

use super::lang::{Shard, ShardAnalysis};

pub fn rules() -> Vec<Rewrite<Shard, ShardAnalysis>> {
    vec![
        // A linear is its column-parallel form followed by a feature gather.
        rw!("column-parallel"; "(lin ?i ?x)" => "(gather-feat (lin-col ?i ?x))"),
        // A linear of gathered features is the row-parallel linear of the
        // shards plus an all-reduce of the partial sums.
        rw!("row-parallel"; "(lin ?i (gather-feat ?y))" => "(allreduce (lin-row ?i ?y))"),
        // Attention splits by heads when q, k and v are head-sharded.
        rw!("head-parallel"; "(attn ?i (gather-feat ?q) (gather-feat ?k) (gather-feat ?v))" => "(gather-feat (attn-heads ?i ?q ?k ?v))"),
        // Elementwise ops run on feature shards.
        rw!("elementwise-on-features"; "(ew ?i (gather-feat ?y))" => "(gather-feat (ew-shard ?i ?y))"),
        rw!("binary-on-features"; "(ew2 ?i (gather-feat ?a) (gather-feat ?b))" => "(gather-feat (ew2-shard ?i ?a ?b))"),
        // A product keeps a split of its right operand's kept dimension.
        rw!("matmul-column"; "(mm ?i ?a (gather-feat ?b))" => "(gather-feat (mm-col ?i ?a ?b))"),
        // Every expert's width splits; the combined output is all-reduced.
        rw!("expert-width"; "(moe ?i ?x)" => "(allreduce (moe-width ?i ?x))"),
    ]
}

#[cfg(test)]
mod tests {
    use egg::{test_fn, *};

    use super::super::lang::{Shard, ShardAnalysis};

    fn all() -> Vec<Rewrite<Shard, ShardAnalysis>> {
        super::rules()
    }

    test_fn! { megatron_mlp, all(),
        runner = Runner::<Shard, ShardAnalysis>::default(),
        "(lin 1 (ew 2 (lin 0 input)))" => "(allreduce (lin-row 1 (ew-shard 2 (lin-col 0 input))))"
    }

    test_fn! { megatron_attention, all(),
        runner = Runner::<Shard, ShardAnalysis>::default(),
        "(lin 4 (attn 3 (lin 0 input) (lin 1 input) (lin 2 input)))"
            => "(allreduce (lin-row 4 (attn-heads 3 (lin-col 0 input) (lin-col 1 input) (lin-col 2 input))))"
    }

    test_fn! { swiglu_product_stays_sharded, all(),
        runner = Runner::<Shard, ShardAnalysis>::default(),
        "(lin 3 (ew2 2 (lin 0 input) (lin 1 input)))" => "(allreduce (lin-row 3 (ew2-shard 2 (lin-col 0 input) (lin-col 1 input))))"
    }
}
