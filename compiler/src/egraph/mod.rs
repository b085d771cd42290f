//! The e-graph of one repeated block: sharding strategies and collectives.
//!
//! The block (one transformer layer, say) is written as a term over the
//! IR's ops (`lin`, `attn`, `ew`, `ew2`, each naming its IR op by index).
//! Rewrites add equivalent distributed forms: column- and row-parallel
//! linears with the collectives they need, head-parallel attention,
//! elementwise ops on feature or sequence shards, `allreduce =
//! all-gather . reduce-scatter`, fusion of elementwise chains and
//! recomputation. Shardings name the tensor-parallel *axis*, not a degree,
//! so the e-graph is saturated once per model; each mesh then extracts
//! with a cost function that prices nodes at that mesh's degree and link
//! bandwidth (`cost.rs`-derived per-op times, `collective.rs` collectives).
//! Only the block is built, once, whatever the layer count.

pub mod collectives;
pub mod fusion;
pub mod lang;
pub mod pipeline;
pub mod sharding;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use egg::{EGraph, Extractor, Id, RecExpr, Runner};

pub use lang::{BlockCost, Info, Shard, ShardAnalysis};

use crate::ir::{Class, Segment};

/// Bounds of one saturation run.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub nodes: usize,
    pub iterations: usize,
    pub seconds: f64,
}

impl Default for Limits {
    fn default() -> Self {
        // A sharding decision moves one op per iteration along a chain,
        // so the iteration limit is above the longest blocks (60 ops);
        // nodes and time bound the rest.
        Limits {
            nodes: 50_000,
            iterations: 200,
            seconds: 2.0,
        }
    }
}

/// A saturated block, ready for per-mesh extraction.
pub struct Block {
    /// The saturated e-graph, shared by every system the same model body
    /// is planned on ([`saturate`] keeps it).
    pub egraph: Arc<EGraph<Shard, ShardAnalysis>>,
    /// The block with a replicated boundary, and with a sequence-sharded one.
    pub roots: [Id; 2],
    pub stop_reason: String,
    pub nodes: usize,
    /// Forward time of each IR op of the block at tp = 1 (seconds per microbatch).
    pub op_time: Vec<f64>,
}

/// Builds the block term from an IR segment, following its data flow: each
/// op's children are its IR op index and the terms of its inputs (the
/// block input for values from outside the segment). Consecutive blocks
/// hand each other their boundary value in one layout: replicated (the
/// term is the block as written), or sequence-sharded (the input arrives
/// as shards and is all-gathered where a replicated value is needed, and
/// the output is scattered, which cancels against a trailing all-gather).
/// Both are saturated together and the cheaper extraction wins.
pub fn block_term(seg: &Segment, sequence_boundary: bool) -> RecExpr<Shard> {
    let mut e = RecExpr::default();
    let leaf = e.add(Shard::Input);
    // With a sequence-sharded boundary the block receives its input as
    // sequence shards: the replicated value costs an all-gather.
    let input = if sequence_boundary {
        e.add(Shard::AllGather([leaf]))
    } else {
        leaf
    };
    let mut ids: Vec<Id> = Vec::with_capacity(seg.ops.len());
    for (i, o) in seg.ops.iter().enumerate() {
        let idx = e.add(Shard::Num(i as i64));
        let arg = |k: usize| -> Id {
            o.args
                .get(k)
                .and_then(|&a| (a >= 0).then(|| ids.get(a as usize).copied()).flatten())
                .unwrap_or(input)
        };
        // Each op by its class: a rule may only shard what it knows.
        let node = match (o.op, o.class) {
            ("linear", _) => Shard::Lin([idx, arg(0)]),
            ("matmul", _) => Shard::Mm([idx, arg(0), arg(1)]),
            ("moe", _) => Shard::Moe([idx, arg(0)]),
            (_, Class::Attention) => Shard::Attn([idx, arg(0), arg(1), arg(2)]),
            ("rmsnorm" | "layernorm" | "softmax", _) => Shard::Red([idx, arg(0)]),
            (_, Class::Elementwise) if o.args.len() == 2 => Shard::Ew2([idx, arg(0), arg(1)]),
            (_, Class::Elementwise) => Shard::Ew([idx, arg(0)]),
            _ => Shard::Opaque(
                std::iter::once(idx)
                    .chain((0..o.args.len()).map(arg))
                    .collect(),
            ),
        };
        ids.push(e.add(node));
    }
    let last = ids.last().copied().unwrap_or(input);
    if sequence_boundary {
        e.add(Shard::Scatter([last]));
    }
    e
}

/// What saturation produced, without the hardware's op times.
struct Saturated {
    egraph: Arc<EGraph<Shard, ShardAnalysis>>,
    roots: [Id; 2],
    stop_reason: String,
    nodes: usize,
}

/// Saturated e-graphs by what saturation reads (the two block terms, the
/// ops' output sizes, the limits): the same model body planned on a
/// thousand systems is saturated once, and the first thread to ask does
/// the work while the others wait for it ([`OnceLock`]). Bounded: past
/// [`SATURATED_KEPT`] blocks the map starts again.
type SaturatedMap = Mutex<HashMap<u64, Arc<OnceLock<Saturated>>>>;

static SATURATED: LazyLock<SaturatedMap> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The most saturated blocks [`SATURATED`] keeps.
const SATURATED_KEPT: usize = 64;

/// How many times [`saturate`] has run the rewrites in this process (a
/// test reads it to see that a sweep saturates each model once).
pub static SATURATIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Forgets every saturated block (benchmarks clear it so that each timed
/// run pays for its own saturations).
pub fn forget_saturated() {
    SATURATED.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// Saturates the block's e-graph with every rule family, once per
/// distinct block: saturation reads the block's structure and sizes, never
/// the hardware (the op times are only carried to the extraction), so a
/// block saturated before is reused.
pub fn saturate(seg: &Segment, op_time: Vec<f64>, input_elems: f64, limits: Limits) -> Block {
    let replicated = block_term(seg, false);
    let sequence = block_term(seg, true);
    // Output elements of each op, then the block input's (the widest op
    // output stands in for the residual stream it carries).
    let mut elems: Vec<f64> = seg.ops.iter().map(|o| o.out_elems.max(0.0)).collect();
    elems.push(input_elems);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    replicated.to_string().hash(&mut h);
    sequence.to_string().hash(&mut h);
    for e in &elems {
        e.to_bits().hash(&mut h);
    }
    (limits.nodes, limits.iterations, limits.seconds.to_bits()).hash(&mut h);
    let key = h.finish();
    let cell = {
        let mut map = SATURATED.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SATURATED_KEPT && !map.contains_key(&key) {
            map.clear();
        }
        map.entry(key).or_default().clone()
    };
    let sat = cell.get_or_init(|| run_rules(&replicated, &sequence, elems, limits));
    Block {
        egraph: sat.egraph.clone(),
        roots: sat.roots,
        stop_reason: sat.stop_reason.clone(),
        nodes: sat.nodes,
        op_time,
    }
}

/// One saturation run of both block terms.
fn run_rules(
    replicated: &RecExpr<Shard>,
    sequence: &RecExpr<Shard>,
    elems: Vec<f64>,
    limits: Limits,
) -> Saturated {
    SATURATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut rules = sharding::rules();
    rules.extend(collectives::rules());
    rules.extend(fusion::rules());
    rules.extend(fusion::recompute_rules());
    let runner = Runner::<Shard, ShardAnalysis>::new(ShardAnalysis { elems })
        .with_node_limit(limits.nodes)
        .with_iter_limit(limits.iterations)
        .with_time_limit(std::time::Duration::from_secs_f64(limits.seconds))
        .with_expr(replicated)
        .with_expr(sequence)
        .run(&rules);
    let stop_reason = match &runner.stop_reason {
        Some(egg::StopReason::Saturated) => "saturated".to_string(),
        Some(egg::StopReason::IterationLimit(n)) => format!("iteration limit ({n})"),
        Some(egg::StopReason::NodeLimit(n)) => format!("node limit ({n})"),
        Some(egg::StopReason::TimeLimit(s)) => format!("time limit ({s:.2} s)"),
        Some(egg::StopReason::Other(s)) => s.clone(),
        None => "not run".to_string(),
    };
    let roots = [runner.roots[0], runner.roots[1]];
    let nodes = runner.egraph.total_number_of_nodes();
    Saturated {
        egraph: Arc::new(runner.egraph),
        roots,
        stop_reason,
        nodes,
    }
}

/// The cheapest distributed form of the block on a mesh of tensor-parallel
/// degree `tp`, where `collective(k, elems)` is the cost model's time of
/// collective `k` (0 all-reduce, 1 reduce-scatter, 2 all-gather) of a
/// value of `elems` elements per sample on this mesh's link (each
/// collective is priced by the size of the value it moves).
pub fn extract(
    block: &Block,
    tp: f64,
    collective: &dyn Fn(usize, f64) -> f64,
) -> (f64, RecExpr<Shard>) {
    let elems = &block.egraph.analysis.elems;
    let table: Vec<[f64; 3]> = elems
        .iter()
        .map(|&n| [0, 1, 2].map(|k| collective(k, n)))
        .collect();
    let cost = BlockCost {
        egraph: &block.egraph,
        tp,
        op_time: &block.op_time,
        elems,
        collective: &table,
        fusion_saving: 0.5,
        recompute_weight: 1.0,
        epsilon: 1e-12,
    };
    let ex = Extractor::new(&block.egraph, cost.clone());
    let (_, ta) = ex.find_best(block.roots[0]);
    let (_, tb) = ex.find_best(block.roots[1]);
    // Compare the two boundary layouts by their true (shared) cost.
    let (a, b) = (cost.dag_cost(&ta), cost.dag_cost(&tb));
    if b < a { (b, tb) } else { (a, ta) }
}

/// Whether an extracted block runs elementwise ops on sequence shards
/// (sequence parallelism was found, not assumed).
pub fn uses_sequence_parallel(e: &RecExpr<Shard>) -> bool {
    e.as_ref()
        .iter()
        .any(|n| matches!(n, Shard::EwSeq(_) | Shard::Ew2Seq(_) | Shard::RedSeq(_)))
}

/// The form an extracted block gives each contraction, by IR op index:
/// a linear is column- (`lin-col`) or row-parallel (`lin-row`), and a
/// contraction present only unsplit (`lin`, `attn`, `mm`) runs whole. On
/// a mesh where a split costs more than it saves (a small projection whose
/// gather's latency exceeds its compute) or where gathering a linear's
/// input beats reducing its partial sums, this is the extraction's
/// decision that the sharded program honours (`sharded::Mesh::forms`,
/// after the cost model's check in `plan::extract_layers`).
pub fn forms(e: &RecExpr<Shard>) -> std::collections::BTreeMap<usize, crate::sharded::Form> {
    use crate::sharded::Form;
    use std::collections::{BTreeMap, BTreeSet};
    let index = |id: &Id| match &e[*id] {
        Shard::Num(n) => usize::try_from(*n).ok(),
        _ => None,
    };
    let mut out = BTreeMap::new();
    let mut split = BTreeSet::new();
    let mut whole = BTreeSet::new();
    for n in e.as_ref() {
        match n {
            Shard::Lin([i, _]) | Shard::Attn([i, ..]) | Shard::Mm([i, ..]) => {
                whole.extend(index(i));
            }
            Shard::LinCol([i, _]) => {
                out.extend(index(i).map(|i| (i, Form::Column)));
                split.extend(index(i));
            }
            Shard::LinRow([i, _]) => {
                out.extend(index(i).map(|i| (i, Form::Row)));
                split.extend(index(i));
            }
            Shard::AttnHeads([i, ..]) | Shard::MmCol([i, ..]) => {
                split.extend(index(i));
            }
            _ => {}
        }
    }
    for i in whole.difference(&split) {
        out.insert(*i, Form::Whole);
    }
    out
}

/// The IR op indices of the contractions an extracted block runs whole.
pub fn whole_ops(e: &RecExpr<Shard>) -> std::collections::BTreeSet<usize> {
    forms(e)
        .into_iter()
        .filter(|(_, f)| *f == crate::sharded::Form::Whole)
        .map(|(i, _)| i)
        .collect()
}

/// Counts collectives of each kind in an extracted block.
pub fn collective_counts(e: &RecExpr<Shard>) -> (usize, usize, usize) {
    let mut ar = 0;
    let mut rs = 0;
    let mut ag = 0;
    for n in e.as_ref() {
        match n {
            Shard::AllReduce(_) => ar += 1,
            Shard::ReduceScatter(_) => rs += 1,
            Shard::AllGather(_) | Shard::GatherFeat(_) => ag += 1,
            _ => {}
        }
    }
    (ar, rs, ag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::lower;

    fn body_of(src: &str) -> crate::ir::Segment {
        let c = gantry_lang::check::check_source("t.gantry", src);
        assert!(!c.has_errors(), "{}", c.render(false));
        let w = c.program.workloads.values().next().expect("workload");
        lower(w).expect("lowers").body().expect("body").clone()
    }

    /// A block of `n` ops: norms, projections, activations, products and
    /// residual adds in turn.
    fn long_block(n: usize) -> String {
        let mut body = String::new();
        let mut i = 0;
        while i + 4 <= n {
            body.push_str(&format!(
                "    h{i} = rmsnorm(x)\n    x = x + linear(silu(linear(h{i}, 16, 32)), 32, 16)\n"
            ));
            i += 5;
        }
        format!(
            "model M(l) {{\n  input x0: f32[batch, seq, 16]\n  x = x0\n  repeat l {{\n{body}  }}\n  output y = x\n}}\nworkload W {{ model M(l = 2)\n  train {{ seq = 8, global_batch = 4 }} }}"
        )
    }

    const MIXTRAL: &str = "model Mixtral(layers, d, heads, kv_heads, f, experts, top_k, vocab) {
  input tokens: i32[batch, seq]
  x = embedding(tokens, vocab, d)
  repeat layers {
    h = rmsnorm(x)
    q = linear(h, d, d)
    k = linear(h, d, kv_heads * (d / heads))
    v = linear(h, d, kv_heads * (d / heads))
    a = attention(q, k, v, heads = heads, kv_heads = kv_heads, causal = true)
    x = x + linear(a, d, d)
    x = x + moe(rmsnorm(x), experts = experts, top_k = top_k, d_ff = f)
  }
  output logits = linear(rmsnorm(x), d, vocab)
}
workload W { model Mixtral(layers = 2, d = 64, heads = 8, kv_heads = 2, f = 128, experts = 8, top_k = 2, vocab = 100)
  train { seq = 16, global_batch = 4 } }";

    #[test]
    fn sixty_op_and_mixtral_blocks_saturate() {
        let long = body_of(&long_block(60));
        assert!(long.ops.len() >= 60, "{} ops", long.ops.len());
        let b = saturate(&long, vec![1.0; long.ops.len()], 1.0, Limits::default());
        eprintln!(
            "60-op block: {} ops, {} nodes, {}",
            long.ops.len(),
            b.nodes,
            b.stop_reason
        );
        assert_eq!(b.stop_reason, "saturated");
        let mx = body_of(MIXTRAL);
        let b = saturate(&mx, vec![1.0; mx.ops.len()], 1.0, Limits::default());
        eprintln!(
            "Mixtral block: {} ops, {} nodes, {}",
            mx.ops.len(),
            b.nodes,
            b.stop_reason
        );
        assert_eq!(b.stop_reason, "saturated");
    }

    /// Extraction decides which contractions run whole: with collectives
    /// free every linear of an MLP splits (Megatron's column then row);
    /// with collectives far dearer than the compute a split saves, both
    /// run whole and the block has no collective at all.
    #[test]
    fn extraction_runs_contractions_whole_when_a_split_costs_more() {
        let src = "model M(l) {\n  input x0: f32[batch, seq, 16]\n  x = x0\n  repeat l {\n    x = x + linear(relu(linear(x, 16, 64)), 64, 16)\n  }\n  output y = x\n}\nworkload W { model M(l = 2)\n  train { seq = 8, global_batch = 4 } }";
        let seg = body_of(src);
        let linears: std::collections::BTreeSet<usize> = seg
            .ops
            .iter()
            .enumerate()
            .filter(|(_, o)| o.op == "linear")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(linears.len(), 2);
        let b = saturate(&seg, vec![1e-6; seg.ops.len()], 128.0, Limits::default());
        let (_, cheap) = extract(&b, 4.0, &|k, n| n * 1e-15 / (1.0 + (k > 0) as u8 as f64));
        assert!(whole_ops(&cheap).is_empty(), "{cheap}");
        assert!(cheap.to_string().contains("lin-row"), "{cheap}");
        let (_, dear) = extract(&b, 4.0, &|k, n| n / (1.0 + (k > 0) as u8 as f64));
        assert_eq!(whole_ops(&dear), linears, "{dear}");
        assert_eq!(collective_counts(&dear), (0, 0, 0), "{dear}");
    }

    #[test]
    fn moe_is_its_own_op_with_split_experts() {
        let mx = body_of(MIXTRAL);
        let t = block_term(&mx, false).to_string();
        assert!(t.contains("(moe "), "{t}");
        let b = saturate(&mx, vec![1.0; mx.ops.len()], 1.0, Limits::default());
        let (_, e) = extract(&b, 4.0, &|k, n| n * 1e-9 / (1.0 + (k > 0) as u8 as f64));
        let s = e.to_string();
        assert!(s.contains("moe-width"), "{s}");
        // Norms never run on feature shards.
        assert!(
            !s.contains("(ew-shard 0") && !s.contains("(ew-shard 7"),
            "{s}"
        );
    }
}
