//! The language of sharded blocks, its analysis and its mesh cost.

use egg::{Analysis, CostFunction, DidMerge, EGraph, Id, Language, define_language};

define_language! {
    /// Ops of a block. The first child of an op is its IR op index.
    pub enum Shard {
        "input" = Input,
        // Unsharded ops (replicated on every tensor-parallel rank).
        "lin" = Lin([Id; 2]),
        "attn" = Attn([Id; 4]),
        "ew" = Ew([Id; 2]),
        "ew2" = Ew2([Id; 3]),
        // A reduction over the last dimension (norms, softmax): it needs
        // whole rows, so it never runs on feature shards.
        "red" = Red([Id; 2]),
        // A batched matrix product `a x b`.
        "mm" = Mm([Id; 3]),
        // A mixture of experts.
        "moe" = Moe([Id; 2]),
        // Any other op (DLRM ops, reshape, concat, embeddings): replicated
        // on whole inputs; no rule shards it.
        "op" = Opaque(Box<[Id]>),
        // Tensor-parallel forms: features (columns, heads) split over the axis.
        "lin-col" = LinCol([Id; 2]),
        "lin-row" = LinRow([Id; 2]),
        "attn-heads" = AttnHeads([Id; 4]),
        "ew-shard" = EwShard([Id; 2]),
        "ew2-shard" = Ew2Shard([Id; 3]),
        // `a x b` with b split along its kept (last) dimension.
        "mm-col" = MmCol([Id; 3]),
        // Every expert's hidden width split (partial sums of the output).
        "moe-width" = MoeWidth([Id; 2]),
        // Sequence-parallel elementwise ops (on a sequence shard).
        "ew-seq" = EwSeq([Id; 2]),
        "ew2-seq" = Ew2Seq([Id; 3]),
        "red-seq" = RedSeq([Id; 2]),
        // An elementwise op fused into the elementwise op feeding it: one
        // kernel, the intermediate never round-trips HBM.
        "fused" = Fused([Id; 2]),
        // A forward recomputed in backward instead of keeping activations.
        "recompute" = Recompute([Id; 1]),
        // Collectives over the tensor-parallel axis.
        "allreduce" = AllReduce([Id; 1]),
        "reduce-scatter" = ReduceScatter([Id; 1]),
        "all-gather" = AllGather([Id; 1]),
        "gather-feat" = GatherFeat([Id; 1]),
        "scatter" = Scatter([Id; 1]),
        // Pipeline: a run of layers, and two runs on consecutive stages.
        "layers" = Layers([Id; 1]),
        "stages" = Stages([Id; 2]),
        Num(i64),
    }
}

/// Per-class facts: the IR op index that produced the value (if any).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Info {
    pub op: Option<i64>,
}

#[derive(Clone, Debug, Default)]
pub struct ShardAnalysis {
    /// Elements per sample of each IR op's output, then of the block's
    /// input.
    pub elems: Vec<f64>,
}

impl Analysis<Shard> for ShardAnalysis {
    type Data = Info;
    fn make(egraph: &mut EGraph<Shard, Self>, enode: &Shard, _id: Id) -> Info {
        // The block input stands for the pseudo-op after the block's last
        // (its size is the last entry of `elems`).
        let op = match enode {
            Shard::Num(n) => Some(*n),
            Shard::Input => Some(egraph.analysis.elems.len().saturating_sub(1) as i64),
            _ => enode.children().first().and_then(|c| egraph[*c].data.op),
        };
        Info { op }
    }
    fn merge(&mut self, a: &mut Info, b: Info) -> DidMerge {
        if a.op.is_none() && b.op.is_some() {
            a.op = b.op;
            return DidMerge(true, false);
        }
        DidMerge(false, a.op != b.op)
    }
}

/// Prices a node on one mesh: op times divided by the tensor-parallel
/// degree when sharded, collectives by their closed forms.
#[derive(Clone, Debug)]
pub struct BlockCost<'a> {
    pub egraph: &'a EGraph<Shard, ShardAnalysis>,
    pub tp: f64,
    /// Forward time of each IR op at tp = 1.
    pub op_time: &'a [f64],
    /// Elements per sample of each IR op's output (what a collective of
    /// that value moves).
    pub elems: &'a [f64],
    /// Seconds of each collective of each IR op's output (then of the
    /// block input) on this mesh, `[all-reduce, reduce-scatter,
    /// all-gather]`: the cost model's collective time on the link of the
    /// tensor-parallel axis for that value's bytes, latency included.
    pub collective: &'a [[f64; 3]],
    /// Fraction of an elementwise op's time saved by fusing it into the
    /// previous one (the intermediate never round-trips HBM).
    pub fusion_saving: f64,
    /// Extra cost of a recomputed forward, relative to the forward.
    pub recompute_weight: f64,
    /// A tiny per-node price so that, among equal costs, simpler plans win.
    pub epsilon: f64,
}

impl BlockCost<'_> {
    /// The IR op an op node names (its first child), or for a collective
    /// the op that produced the value it moves.
    fn op_of(&self, enode: &Shard) -> Option<i64> {
        let first = enode.children().first()?;
        self.egraph[*first].data.op
    }
    /// Forward time of the IR op an op node names.
    fn time(&self, enode: &Shard) -> f64 {
        self.op_of(enode)
            .and_then(|i| self.op_time.get(i as usize))
            .copied()
            .unwrap_or(0.0)
    }
    /// Seconds of collective `k` (0 all-reduce, 1 reduce-scatter, 2
    /// all-gather) of IR op `op`'s output.
    fn collective(&self, op: Option<i64>, k: usize) -> f64 {
        op.and_then(|i| self.collective.get(i as usize))
            .map_or(0.0, |c| c[k])
    }
}

impl BlockCost<'_> {
    /// A node's own cost, given the forward time `t` of the IR op it names
    /// and `child` of the op under it (what a `recompute` repeats).
    fn own(&self, n: &Shard, t: f64, child: f64, op: Option<i64>) -> f64 {
        match n {
            Shard::Input
            | Shard::Num(_)
            | Shard::Layers(_)
            | Shard::Stages(_)
            | Shard::Scatter(_) => 0.0,
            Shard::Lin(_)
            | Shard::Attn(_)
            | Shard::Ew(_)
            | Shard::Ew2(_)
            | Shard::Red(_)
            | Shard::Mm(_)
            | Shard::Moe(_)
            | Shard::Opaque(_) => t,
            Shard::LinCol(_)
            | Shard::LinRow(_)
            | Shard::AttnHeads(_)
            | Shard::EwShard(_)
            | Shard::Ew2Shard(_)
            | Shard::EwSeq(_)
            | Shard::Ew2Seq(_)
            | Shard::RedSeq(_)
            | Shard::MmCol(_)
            | Shard::MoeWidth(_) => t / self.tp,
            // (fused i x): op i runs inside the kernel that produced x, on
            // x's layout; its HBM round trip is saved.
            Shard::Fused(_) => (1.0 - self.fusion_saving) * t / self.tp,
            Shard::Recompute(_) => self.recompute_weight * child,
            Shard::AllReduce(_) => self.collective(op, 0),
            Shard::ReduceScatter(_) => self.collective(op, 1),
            Shard::AllGather(_) | Shard::GatherFeat(_) => self.collective(op, 2),
        }
    }

    /// Cost of an extracted term with shared subterms counted once (egg's
    /// extractor sums children as a tree, which double-counts a value used
    /// twice, such as the normalized input of q, k and v).
    pub fn dag_cost(&self, e: &egg::RecExpr<Shard>) -> f64 {
        let nodes = e.as_ref();
        // Children come before parents in a RecExpr: one pass finds each
        // node's IR op and its own cost.
        let mut op: Vec<Option<i64>> = Vec::with_capacity(nodes.len());
        let mut own: Vec<f64> = Vec::with_capacity(nodes.len());
        for n in nodes {
            let o = match n {
                Shard::Num(i) => Some(*i),
                _ => n.children().first().and_then(|c| op[usize::from(*c)]),
            };
            let t = o
                .and_then(|i| self.op_time.get(i as usize))
                .copied()
                .unwrap_or(0.0);
            let child = n.children().first().map_or(0.0, |c| own[usize::from(*c)]);
            op.push(o);
            own.push(self.own(n, t, child, o));
        }
        own.iter().sum()
    }
}

impl CostFunction<Shard> for BlockCost<'_> {
    type Cost = f64;
    fn cost<C>(&mut self, enode: &Shard, mut costs: C) -> f64
    where
        C: FnMut(Id) -> f64,
    {
        if matches!(enode, Shard::Input | Shard::Num(_)) {
            return 0.0;
        }
        let kids: f64 = enode.children().iter().map(|c| costs(*c)).sum();
        let t = self.time(enode);
        let child = enode.children().first().map_or(0.0, |c| costs(*c));
        (self.own(enode, t, child.min(t), self.op_of(enode)) + kids + self.epsilon).max(0.0)
    }
}
