//! Rule family: fusion of elementwise chains into one kernel (the runtime
//! JITs these), and recomputation of forwards in backward.

use egg::{Rewrite, rewrite as rw};

use super::lang::{Shard, ShardAnalysis};

pub fn rules() -> Vec<Rewrite<Shard, ShardAnalysis>> {
    vec![
        rw!("fuse-elementwise"; "(ew ?i (ew ?j ?x))" => "(fused ?i (ew ?j ?x))"),
        rw!("fuse-elementwise-seq"; "(ew-seq ?i (ew-seq ?j ?x))" => "(fused ?i (ew-seq ?j ?x))"),
        rw!("fuse-elementwise-shard"; "(ew-shard ?i (ew-shard ?j ?x))" => "(fused ?i (ew-shard ?j ?x))"),
    ]
}

/// Recomputation choices for the attention core (selective) and whole
/// blocks (full); extraction weighs their time, the outer search their memory.
pub fn recompute_rules() -> Vec<Rewrite<Shard, ShardAnalysis>> {
    vec![
        rw!("recompute-attention"; "(attn-heads ?i ?q ?k ?v)" => "(recompute (attn-heads ?i ?q ?k ?v))"),
        rw!("recompute-attention-replicated"; "(attn ?i ?q ?k ?v)" => "(recompute (attn ?i ?q ?k ?v))"),
    ]
}

#[cfg(test)]
mod tests {
    use egg::{test_fn, *};

    use super::super::lang::{Shard, ShardAnalysis};

    fn all() -> Vec<Rewrite<Shard, ShardAnalysis>> {
        let mut r = super::rules();
        r.extend(super::recompute_rules());
        r
    }

    test_fn! { silu_after_norm_fuses, all(),
        runner = Runner::<Shard, ShardAnalysis>::default(),
        "(ew 2 (ew 1 input))" => "(fused 2 (ew 1 input))"
    }

    test_fn! { attention_can_be_recomputed, all(),
        runner = Runner::<Shard, ShardAnalysis>::default(),
        "(attn 3 input input input)" => "(recompute (attn 3 input input input))"
    }
}
