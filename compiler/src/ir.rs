//! The IR: a checked workload lowered to per-op costs.
//!
//! Each op of the model graph becomes an [`IrOp`] with its forward FLOPs,
//! HBM bytes, parameters and saved activations *per sample* (batch = 1),
//! because within one workload every op's cost is linear in the batch: the
//! sequence length is fixed by the workload, so even attention's quadratic
//! term is a constant per sample. The cost model multiplies by the
//! microbatch. Ops stay in segments: the prologue, each `repeat` body once
//! with its count, the epilogue; nothing is unrolled, so a 126-layer model
//! lowers exactly as fast as a 2-layer one.
//!
//! Tensor parallelism is not decided here: the sharded program
//! ([`crate::sharded`]) of the graph gives every tensor's layout and every
//! collective. Lowering copies what does not depend on the degree from a
//! program on a symbolic degree (whether an op's work is divided, what it
//! keeps for backward split or whole); the collectives are read, per
//! design point, from the program built on that point's concrete degree
//! ([`Ir::tp_table`], built once per degree and sequence-parallel choice
//! and kept), so that key/value head grouping, uneven splits and heads
//! that do not divide are priced as the runtime runs them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use gantry_lang::program::{DType, Graph, Item, Kernels, OpKind, Phase, TensorId, Workload};

use crate::sharded::{Form, Forms, Layout, Mesh, Program};

/// What kind of hardware resource an op mostly uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Dense matrix multiplication (linear, matmul, MLP, MoE experts).
    Matmul,
    /// Attention scores and the weighted sum of values.
    Attention,
    /// Memory-bound elementwise work: norms, activations, dropout, softmax, adds.
    Elementwise,
    /// Embedding and embedding-bag lookups.
    Embedding,
    /// Data movement only (reshape, concat).
    Layout,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Matmul => "matmul",
            Class::Attention => "attention",
            Class::Elementwise => "elementwise",
            Class::Embedding => "embedding",
            Class::Layout => "layout",
        }
    }
}

/// A matrix product `[m, k] x [k, n]`, per sample (`m` scales with batch).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub m: f64,
    pub n: f64,
    pub k: f64,
    /// Independent products of this shape per sample (e.g. heads).
    pub count: f64,
}

/// One tensor-parallel collective of an op, from the sharded program.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TpComm {
    /// The collective as the program states it: kind, pass, elements per
    /// sample of the whole tensor.
    pub comm: crate::sharded::Comm,
    /// Width of the tensor's last dimension (its rows' length), for the
    /// busiest rank's share ([`crate::sharded::Comm::busiest_sent`]).
    pub width: f64,
}

impl TpComm {
    /// Hidden behind compute: a backward re-gather under the weight
    /// gradient's GEMM.
    pub fn overlapped(&self) -> bool {
        self.comm.why == crate::sharded::Why::Regather
    }
}

/// An op's part of the sharded program on one concrete degree.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OpTp {
    /// Its tensor-parallel collectives, forward and backward.
    pub comms: Vec<TpComm>,
    /// Its parameter gradients are partial sums over the tensor-parallel
    /// ranks (it ran on sequence rows): all-reduced once per step.
    pub param_reduce: bool,
    /// Its work (and its parameters) are divided over the ranks; a
    /// contraction the extraction runs whole is not.
    pub sharded: bool,
    /// Saved bytes per sample (of `saved_shard`, or negative: of
    /// `saved_rep`) that this program keeps whole although the symbolic
    /// program the IR was lowered with splits them: the layouts of this
    /// degree and its pinned forms decide what is split, not a symbolic
    /// degree.
    pub saved_to_rep: f64,
}

/// The sharded program of the model on one tensor-parallel degree and
/// sequence-parallel choice, as the cost model reads it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TpTable {
    /// Why the model has no sharded program here, if it has none (its ops
    /// then carry no collectives; the planner refuses the point, C002).
    pub unshardable: Option<String>,
    /// Per segment, per op (the [`Ir::segments`] order).
    pub ops: Vec<Vec<OpTp>>,
}

/// What one op saves for backward that a program re-classes: the tensors
/// classed by layout ([`IrOp::saved_tensors`]) and its own split bytes
/// ([`IrOp::saved_own`]).
type SavedOf = (Vec<(TensorId, f64)>, f64);

/// What is needed to build the sharded program on any degree, and the
/// programs built so far.
pub struct Programs {
    graph: Arc<Graph>,
    numel: Arc<[f64]>,
    widths: Arc<[f64]>,
    /// The output tensor of every op, per segment.
    outputs: Vec<Vec<TensorId>>,
    /// The symbolic program's layouts and strategies the IR's saved bytes
    /// were classed with, and each op's classed tensors and own bytes
    /// ([`IrOp::saved_tensors`], [`IrOp::saved_own`]), per segment.
    base: Arc<Program>,
    saved: Arc<[Vec<SavedOf>]>,
    memo: Mutex<HashMap<(usize, bool), Arc<TpTable>>>,
    /// Per degree, the contraction forms the e-graph's extraction pinned.
    forms: Mutex<HashMap<usize, Forms>>,
}

impl Clone for Programs {
    fn clone(&self) -> Self {
        Programs {
            graph: self.graph.clone(),
            numel: self.numel.clone(),
            widths: self.widths.clone(),
            outputs: self.outputs.clone(),
            base: self.base.clone(),
            saved: self.saved.clone(),
            memo: Mutex::new(self.memo.lock().map(|m| m.clone()).unwrap_or_default()),
            forms: Mutex::new(self.forms.lock().map(|m| m.clone()).unwrap_or_default()),
        }
    }
}

impl std::fmt::Debug for Programs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Programs")
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Programs {
    /// Programs are a function of the graph and its sizes.
    fn eq(&self, other: &Self) -> bool {
        self.graph == other.graph && self.numel == other.numel
    }
}

impl Programs {
    fn table(&self, tp: usize, sp: bool) -> Arc<TpTable> {
        let key = (tp, sp && tp > 1);
        if let Some(t) = self.memo.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return t;
        }
        let t = Arc::new(self.build(key.0, key.1));
        if let Ok(mut m) = self.memo.lock() {
            m.insert(key, t.clone());
        }
        t
    }

    fn forms(&self, tp: usize) -> Forms {
        self.forms
            .lock()
            .ok()
            .and_then(|m| m.get(&tp).cloned())
            .unwrap_or_default()
    }

    fn set_forms(&self, tp: usize, forms: Forms) {
        if let Ok(mut m) = self.forms.lock() {
            if m.get(&tp) == Some(&forms) {
                return;
            }
            m.insert(tp, forms);
        }
        if let Ok(mut m) = self.memo.lock() {
            m.retain(|(t, _), _| *t != tp);
        }
    }

    /// Bytes per sample op `j` of segment `si` saves that `program` keeps
    /// whole but the symbolic program split (negative: the converse).
    /// Sequence rows count as split,
    /// as in the symbolic program under sequence parallelism.
    fn reclassed(&self, program: &Program, si: usize, j: usize, out: TensorId, tp: usize) -> f64 {
        let Some((tensors, own)) = self.saved.get(si).and_then(|s| s.get(j)) else {
            return 0.0;
        };
        let split = |p: &Program, t: TensorId| tp > 1 && p.layout(t) != Layout::Rep;
        let mut all = 0.0;
        for &(t, b) in tensors {
            let d = match (split(&self.base, t), split(program, t)) {
                (true, false) => b,
                (false, true) => -b,
                _ => 0.0,
            };
            all += d;
        }
        let divides = |p: &Program| p.op(out).is_some_and(|o| o.strategy.divides_work(o.layout));
        if *own > 0.0 && divides(&self.base) && !(tp > 1 && divides(program)) {
            all += own;
        }
        all
    }

    fn build(&self, tp: usize, sp: bool) -> TpTable {
        let mesh = Mesh {
            forms: self.forms(tp),
            ..Mesh::new(tp, sp)
        };
        let (program, unshardable) = match crate::sharded::build(&self.graph, &self.numel, &mesh) {
            Ok(p) => (p, None),
            // A replicated build has no failure path.
            Err(e) => (
                crate::sharded::build(&self.graph, &self.numel, &Mesh::new(1, false))
                    .unwrap_or_else(|_| Program::empty()),
                Some(e.reason),
            ),
        };
        let width = |t: TensorId| self.widths.get(t.0 as usize).copied().unwrap_or(0.0);
        let ops = self
            .outputs
            .iter()
            .enumerate()
            .map(|(si, seg)| {
                seg.iter()
                    .enumerate()
                    .map(|(j, t)| {
                        let to_rep = self.reclassed(&program, si, j, *t, tp);
                        program.op(*t).map_or_else(OpTp::default, |so| OpTp {
                            saved_to_rep: to_rep,
                            param_reduce: so.params_partial,
                            sharded: tp > 1 && so.strategy.divides_work(so.layout),
                            comms: so
                                .comms
                                .iter()
                                .map(|c| TpComm {
                                    comm: *c,
                                    width: width(c.tensor),
                                })
                                .collect(),
                        })
                    })
                    .collect()
            })
            .collect();
        TpTable { unshardable, ops }
    }
}

/// One embedding table of an `embedding_bag`, as [`crate::placement`]
/// places it.
#[derive(Clone, Debug, PartialEq)]
pub struct IrTable {
    pub name: String,
    pub rows: u64,
    pub dim: u64,
    /// Bytes per element (the table's dtype).
    pub elem_bytes: f64,
    /// Rows looked up and pooled per sample.
    pub pooling: f64,
}

impl IrTable {
    /// Bytes of the table.
    pub fn bytes(&self) -> f64 {
        (self.rows * self.dim) as f64 * self.elem_bytes
    }
    /// Bytes of rows looked up per sample (the lookup cost).
    pub fn lookup_bytes(&self) -> f64 {
        self.pooling * self.dim as f64 * self.elem_bytes
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct IrOp {
    pub op: &'static str,
    pub class: Class,
    /// Forward FLOPs per sample.
    pub flops: f64,
    /// Forward HBM bytes per sample for activations (reads + writes).
    pub bytes: f64,
    /// Parameters.
    pub params: f64,
    /// Of `params`, those every rank of the op holds whole, split neither
    /// over the tensor- nor the expert-parallel ranks: a mixture's router
    /// (`d x experts`), replicated beside its experts as Megatron-LM and
    /// `gantry run` hold it, so its gradient is reduced with the dense
    /// parameters'.
    pub replicated: f64,
    /// Bytes of activations kept for the backward pass, per sample, that
    /// are replicated across tensor-parallel ranks (sharded only by
    /// sequence parallelism). A tensor saved by several ops counts once.
    pub saved_rep: f64,
    /// Saved bytes that tensor parallelism splits across ranks.
    pub saved_shard: f64,
    /// Of `saved_shard`, the attention probabilities (and their dropout
    /// mask and output) that selective recomputation drops.
    pub saved_probs: f64,
    /// Attention: the bytes of its keys and values per sample (what
    /// context parallelism exchanges).
    pub kv_bytes: f64,
    /// The tensors behind `saved_rep` and `saved_shard` that were classed
    /// by their layout in the symbolic program: `(tensor, bytes per
    /// sample)`. Each program re-classes them by its own layouts
    /// ([`OpTp::saved_to_rep`]).
    pub saved_tensors: Vec<(TensorId, f64)>,
    /// Of `saved_shard`, what the op keeps split by its own head split
    /// (attention's probabilities or log-sum-exp), whole when it runs whole.
    pub saved_own: f64,
    /// The dominant matrix product, for the shape-dependent efficiency.
    pub gemm: Option<Gemm>,
    /// The graph tensor the op produces (its collectives are looked up by
    /// it in [`Ir::tp_table`]).
    pub output: TensorId,
    /// Elements per sample of the op's output.
    pub out_elems: f64,
    /// Part of the attention core that selective recomputation recomputes.
    pub attention_core: bool,
    /// Bytes per sample read from embedding tables (lookups).
    pub lookup_bytes: f64,
    /// Bytes of embedding tables (parameters stored in the table dtype).
    pub table_bytes: f64,
    /// Attention heads (query, key/value), for divisibility checks.
    pub heads: Option<(u64, u64)>,
    /// Mixture of experts: experts, and bytes per sample dispatched to them.
    pub experts: Option<(u64, f64)>,
    /// Producers of this op's tensor inputs within its segment (index into
    /// the segment's ops), or -1 for a value from outside the segment.
    pub args: Vec<i64>,
    /// Embedding tables of an embedding bag, in declaration order.
    pub tables: Vec<IrTable>,
    /// Kernels launched per forward pass (an embedding bag launches one
    /// lookup per table, an MLP a GEMM and an activation per layer).
    pub kernels: f64,
    /// Parameter tensors (a weight and a bias are two), for per-tensor
    /// collectives: the tensor-parallel all-reduce of a replicated gain's
    /// or bias's gradient. (ZeRO-3 gathers a module's tensors together.)
    pub tensors: f64,
    /// Values of a factored second moment (Adafactor) of the op's dense
    /// parameters: `rows + cols` per weight matrix (per matrix of a stack
    /// of experts), the whole size of a vector (bias, norm gain). Zero for
    /// embedding tables, which keep theirs in [`IrOp::table_factored`].
    pub factored: f64,
    /// The same for the embedding tables of an embedding bag, in bytes of
    /// the tables' dtype: `(rows + dim) x bytes` per table.
    pub table_factored: f64,
    /// Of `params`, those shared with the token embedding (a tied output
    /// projection's weight): held once when one stage runs both, a copy
    /// on the last stage otherwise (Megatron-LM).
    pub tied: f64,
    /// Nested-repeat multiplicity inside its segment.
    pub mult: f64,
    /// Backward FLOPs as a multiple of the forward's: 2 for products (the
    /// input and the weight gradient), 2.5 for fused attention (its
    /// backward recomputes the scores: five products against two).
    pub bwd_flops: f64,
    /// Activation elements per sample cast to the matrix-product precision
    /// in a forward pass (the input of a `linear` under `precision = {
    /// matmul = fp8 }`) and in a backward pass (the output gradient); the
    /// weight is cast once per pass as well.
    pub cast_fwd: f64,
    pub cast_bwd: f64,
    /// Bytes per sample that separate streaming kernels attached to this op
    /// move in each pass (`fusion = eager`: rotary embeddings of the
    /// queries and keys, run as PyTorch primitives); added to the op's
    /// time, not overlapped with it.
    pub side_bytes: f64,
    /// A fused (flash) attention kernel over the sequence it is given (not
    /// a cache): the keys a block of its queries loops over on average
    /// (all of them, or the causal share). Its efficiency follows that loop
    /// and its grid of query blocks ([`crate::cost::flash_efficiency`]),
    /// not the products' knee.
    pub flash: Option<f64>,
}

impl IrOp {
    fn new(op: &'static str, class: Class) -> IrOp {
        IrOp {
            op,
            class,
            flops: 0.0,
            bytes: 0.0,
            params: 0.0,
            replicated: 0.0,
            saved_rep: 0.0,
            saved_shard: 0.0,
            kv_bytes: 0.0,
            saved_probs: 0.0,
            saved_tensors: Vec::new(),
            saved_own: 0.0,
            gemm: None,
            output: TensorId(0),
            out_elems: 0.0,
            attention_core: false,
            lookup_bytes: 0.0,
            table_bytes: 0.0,
            heads: None,
            experts: None,
            tensors: 0.0,
            bwd_flops: 2.0,
            cast_fwd: 0.0,
            cast_bwd: 0.0,
            side_bytes: 0.0,
            flash: None,
            factored: 0.0,
            table_factored: 0.0,
            tied: 0.0,
            args: Vec::new(),
            tables: Vec::new(),
            kernels: 1.0,
            mult: 1.0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentKind {
    Prologue,
    Body,
    Epilogue,
}

/// A run of ops executed `count` times in sequence (a `repeat` body), or once.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub kind: SegmentKind,
    pub count: u64,
    pub ops: Vec<IrOp>,
}

/// Per-sample totals of a segment (one repetition).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    pub flops: f64,
    pub params: f64,
    pub saved: f64,
    pub table_bytes: f64,
}

impl Segment {
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for o in &self.ops {
            t.flops += o.flops * o.mult;
            // A tied weight is the embedding's: counted once.
            t.params += (o.params - o.tied) * o.mult;
            t.saved += (o.saved_rep + o.saved_shard) * o.mult;
            t.table_bytes += o.table_bytes * o.mult;
        }
        t
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ir {
    pub workload: String,
    pub model: String,
    pub phase: Phase,
    /// Activation / compute element type and its size.
    pub dtype: DType,
    pub act_bytes: f64,
    /// Element size of the residual stream between layers: what tensor
    /// (and sequence) parallel collectives and pipeline sends move. An
    /// fp8 workload quantises the weights, the KV cache and the products'
    /// inputs, but its engines keep the stream in 16 bits (TensorRT-LLM's
    /// and vLLM's all-reduces and hand-offs run in bf16/fp16), so it is
    /// never narrower than 2 bytes.
    pub stream_bytes: f64,
    /// Tokens per sample in one step (the sequence, or 1 when decoding).
    pub tokens_per_sample: f64,
    /// Width of the value passed between pipeline stages, per token.
    pub hidden: f64,
    pub segments: Vec<Segment>,
    /// The sharded programs, built per degree on demand.
    pub programs: Programs,
    /// How the framework runs the kernels and overlaps communication.
    pub kernels: Kernels,
}

impl Ir {
    /// The sharded program on tensor-parallel degree `tp`, with sequence
    /// parallelism or not, as the cost model reads it (built once).
    pub fn tp_table(&self, tp: usize, sequence_parallel: bool) -> Arc<TpTable> {
        self.programs.table(tp, sequence_parallel)
    }
    /// The contraction forms (by output tensor) the program on degree
    /// `tp` pins: the e-graph extraction's choice ([`Ir::set_forms`]),
    /// empty until one is made.
    pub fn forms(&self, tp: usize) -> Forms {
        self.programs.forms(tp)
    }
    /// The strategy of every op of the program on degree `tp` as built now
    /// (without sequence parallelism), by output tensor.
    pub fn tp_strategies(&self, tp: usize) -> BTreeMap<TensorId, crate::sharded::Strategy> {
        let mesh = Mesh {
            forms: self.forms(tp),
            ..Mesh::new(tp, false)
        };
        crate::sharded::build(&self.programs.graph, &self.programs.numel, &mesh)
            .map(|p| p.ops.iter().map(|o| (o.output, o.strategy)).collect())
            .unwrap_or_default()
    }
    /// The contractions pinned to `form` on degree `tp`.
    pub fn pinned(&self, tp: usize, form: Form) -> Vec<TensorId> {
        self.forms(tp)
            .into_iter()
            .filter(|(_, f)| *f == form)
            .map(|(t, _)| t)
            .collect()
    }
    /// Records the extraction's choice of contraction forms on degree
    /// `tp`: every later [`Ir::tp_table`] on that degree builds with it.
    pub fn set_forms(&self, tp: usize, forms: Forms) {
        self.programs.set_forms(tp, forms);
    }
    /// The name of tensor `t` in the model's source (`linear %7` for a
    /// value the source does not name).
    pub fn tensor_name(&self, t: TensorId) -> String {
        let g = &self.programs.graph;
        crate::sharded::ops_of(&g.body)
            .into_iter()
            .find(|o| o.output == t)
            .map_or_else(
                || g.tensor(t).name.clone(),
                |o| crate::sharded::op_label(g, o),
            )
    }
    /// The index of [`Ir::body`] in `segments`.
    pub fn body_index(&self) -> Option<usize> {
        self.segments
            .iter()
            .enumerate()
            .filter(|(_, s)| s.kind == SegmentKind::Body)
            .max_by_key(|(_, s)| s.count)
            .map(|(i, _)| i)
    }
    /// The repeated body with the most repetitions (the transformer layers).
    pub fn body(&self) -> Option<&Segment> {
        self.segments
            .iter()
            .filter(|s| s.kind == SegmentKind::Body)
            .max_by_key(|s| s.count)
    }
    pub fn layers(&self) -> u64 {
        self.body().map_or(0, |b| b.count)
    }
    /// Forward FLOPs per sample of the whole model.
    // The sums over segments start at +0.0: `Iterator::sum` of no f64
    // is -0.0, which a model without segments printed as "-0.0 TFLOP/s".
    pub fn flops_per_sample(&self) -> f64 {
        self.segments
            .iter()
            .map(|s| s.totals().flops * s.count as f64)
            .fold(0.0, |a, b| a + b)
    }
    /// Of [`Ir::flops_per_sample`], the FLOPs of `linear` ops: what runs
    /// at the matrix-product precision (`precision = { matmul = fp8 }`).
    pub fn linear_flops_per_sample(&self) -> f64 {
        self.segments
            .iter()
            .map(|s| {
                s.ops
                    .iter()
                    .filter(|o| o.op == "linear")
                    .map(|o| o.flops * o.mult)
                    .sum::<f64>()
                    * s.count as f64
            })
            .fold(0.0, |a, b| a + b)
    }
    /// Of the main body's layers, the fraction recomputed whole: all of
    /// them under `full`, none otherwise.
    pub fn layers_recomputed(&self, r: crate::point::Recompute) -> f64 {
        use crate::point::Recompute;
        match r {
            Recompute::Full => 1.0,
            _ => 0.0,
        }
    }

    /// How much of op `o` of a body `selective` recomputes: the
    /// attention core when its scores are materialized (Korthikanti et
    /// al.); with fused attention, which stores nothing quadratic, the
    /// elementwise ops (op-level selective checkpointing as torchtitan and
    /// Megatron-Core do it: keep what products and attention produce,
    /// recompute the cheap ops in between, and, as torchtitan's policy
    /// does, every second matrix product: half of each `linear`).
    pub fn selective_recomputes(&self, o: &IrOp) -> f64 {
        if self.kernels.fused_attention {
            match o.class {
                Class::Elementwise => 1.0,
                // torchtitan's op policy also recomputes every second
                // matrix product of a layer.
                Class::Matmul if o.op == "linear" => 0.5,
                _ => 0.0,
            }
        } else if o.attention_core {
            1.0
        } else {
            0.0
        }
    }

    /// Forward FLOPs per sample that recomputation repeats.
    pub fn recompute_flops_per_sample(&self, r: crate::point::Recompute) -> f64 {
        self.recompute_flops_where(r, |_| true)
    }
    /// Of [`Ir::recompute_flops_per_sample`], the FLOPs of `linear` ops.
    pub fn recompute_linear_flops_per_sample(&self, r: crate::point::Recompute) -> f64 {
        self.recompute_flops_where(r, |o| o.op == "linear")
    }
    fn recompute_flops_where(
        &self,
        r: crate::point::Recompute,
        keep: impl Fn(&IrOp) -> bool,
    ) -> f64 {
        use crate::point::Recompute;
        let whole = self.layers_recomputed(r);
        self.segments
            .iter()
            .map(|s| {
                let f: f64 = s
                    .ops
                    .iter()
                    .filter(|o| keep(o))
                    .map(|o| {
                        let k = if s.kind == SegmentKind::Body && whole > 0.0 {
                            whole
                        } else if r == Recompute::Selective && s.kind == SegmentKind::Body {
                            self.selective_recomputes(o)
                        } else {
                            0.0
                        };
                        k * o.flops * o.mult
                    })
                    .sum();
                f * s.count as f64
            })
            .fold(0.0, |a, b| a + b)
    }
    pub fn params(&self) -> f64 {
        self.segments
            .iter()
            .map(|s| s.totals().params * s.count as f64)
            .fold(0.0, |a, b| a + b)
    }
    pub fn table_bytes(&self) -> f64 {
        self.segments
            .iter()
            .map(|s| s.totals().table_bytes * s.count as f64)
            .fold(0.0, |a, b| a + b)
    }
    /// Samples processed by one step of the workload.
    pub fn samples_per_step(&self) -> u64 {
        match &self.phase {
            Phase::Train { global_batch, .. } => *global_batch,
            Phase::Prefill { batch, .. } | Phase::Decode { batch, .. } => *batch,
        }
    }
}

/// Lowering failures: a workload whose graph the cost model cannot price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LowerError {
    UnboundDim { tensor: String, dim: String },
}

impl std::fmt::Display for LowerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LowerError::UnboundDim { tensor, dim } => write!(
                f,
                "dimension `{dim}` of `{tensor}` is not bound by the workload"
            ),
        }
    }
}

/// Bytes per element of a dtype, with `Act` resolved to the workload's.
fn elem_bytes(d: DType, act: DType) -> f64 {
    match d {
        DType::Act => act.bytes().unwrap_or(2) as f64,
        other => other.bytes().unwrap_or(2) as f64,
    }
}

/// Bytes per element of the residual stream for a workload whose elements
/// take `act_bytes` ([`Ir::stream_bytes`]): never below 16 bits, the type
/// fp8 engines keep between layers.
pub fn stream_bytes(act_bytes: f64) -> f64 {
    act_bytes.max(2.0)
}

/// Compute dtype of a workload: TF32 runs on tensor cores but stores fp32.
fn act_dtype(d: DType) -> DType {
    d
}

struct Lowering<'a> {
    graph: &'a Graph,
    binding: BTreeMap<String, i64>,
    beta: f64,
    /// Context length for attention keys in decode (KV cache).
    context: Option<f64>,
    numel: Vec<f64>,
    /// The sharded program on a symbolic degree: what is split.
    base: Program,
    /// Tensors already saved for backward by an earlier op.
    saved: Vec<bool>,
    /// Index of the op producing each tensor within the current segment.
    producer: Vec<i64>,
    training: bool,
    kernels: Kernels,
}

/// Closes the ops run so far (outside any `repeat`) into a segment: the
/// prologue before the first body, an epilogue after one.
fn flush(segments: &mut Vec<Segment>, current: &mut Vec<IrOp>, seen_body: bool) {
    if current.is_empty() {
        return;
    }
    segments.push(Segment {
        kind: if seen_body {
            SegmentKind::Epilogue
        } else {
            SegmentKind::Prologue
        },
        count: 1,
        ops: std::mem::take(current),
    });
}

/// Lowers a checked workload to per-sample op costs.
pub fn lower(w: &Workload) -> Result<Ir, LowerError> {
    let g = &w.model.graph;
    let mut binding = w.bindings.clone();
    binding.insert("batch".into(), 1);
    let act = act_dtype(w.dtype);
    let beta = elem_bytes(DType::Act, act);
    let mut numel = Vec::with_capacity(g.tensors.len());
    for t in &g.tensors {
        let n = t.shape.numel();
        match n.eval(&binding) {
            Some(v) => numel.push(v as f64),
            None => {
                return Err(LowerError::UnboundDim {
                    tensor: t.name.clone(),
                    dim: n.to_string(),
                });
            }
        }
    }
    let context = match &w.phase {
        Phase::Decode { context, .. } => Some(*context as f64),
        _ => None,
    };
    let tokens_per_sample = match &w.phase {
        Phase::Decode { .. } => 1.0,
        _ => binding.get("seq").copied().unwrap_or(1) as f64,
    };
    let base = crate::sharded::build(g, &numel, &Mesh::symbolic(2))
        .or_else(|_| crate::sharded::build(g, &numel, &Mesh::new(1, false)))
        .unwrap_or_else(|_| Program::empty());
    let widths: Vec<f64> = g
        .tensors
        .iter()
        .map(|t| {
            t.shape
                .last()
                .and_then(|d| d.eval(&binding))
                .map_or(0.0, |v| v as f64)
        })
        .collect();
    let mut l = Lowering {
        graph: g,
        binding,
        beta,
        context,
        base,
        saved: vec![false; g.tensors.len()],
        producer: vec![-1; g.tensors.len()],
        numel,
        training: matches!(w.phase, Phase::Train { .. }),
        kernels: w.kernels,
    };
    let mut segments = Vec::new();
    let mut current = Vec::new();
    let mut seen_body = false;
    for item in &g.body {
        match item {
            Item::Op(op) => l.push(op, 1.0, &mut current),
            Item::Repeat(r) => {
                l.producer.iter_mut().for_each(|p| *p = -1);
                flush(&mut segments, &mut current, seen_body);
                let mut ops = Vec::new();
                l.repeat(r, 1.0, &mut ops);
                segments.push(Segment {
                    kind: SegmentKind::Body,
                    count: r.count,
                    ops,
                });
                seen_body = true;
                l.producer.iter_mut().for_each(|p| *p = -1);
            }
        }
    }
    flush(&mut segments, &mut current, seen_body);
    if w.kernels.compiled {
        for s in &mut segments {
            fuse_elementwise(&mut s.ops, beta);
        }
    }
    // The value between pipeline stages: the widest carried tensor of the
    // body, per token.
    let hidden = g
        .body
        .iter()
        .filter_map(|i| match i {
            Item::Repeat(r) => Some(
                r.carried
                    .iter()
                    .map(|c| l.numel[c.param.0 as usize])
                    .sum::<f64>(),
            ),
            _ => None,
        })
        .fold(0.0, f64::max)
        / tokens_per_sample.max(1.0);
    Ok(Ir {
        workload: w.name.clone(),
        model: w.model.name.clone(),
        phase: w.phase.clone(),
        dtype: act,
        act_bytes: beta,
        stream_bytes: stream_bytes(beta),
        tokens_per_sample,
        hidden,
        programs: Programs {
            graph: Arc::new(g.clone()),
            numel: l.numel.clone().into(),
            widths: widths.into(),
            outputs: segments
                .iter()
                .map(|s| s.ops.iter().map(|o| o.output).collect())
                .collect(),
            base: Arc::new(l.base.clone()),
            saved: segments
                .iter()
                .map(|s| {
                    s.ops
                        .iter()
                        .map(|o| (o.saved_tensors.clone(), o.saved_own))
                        .collect()
                })
                .collect::<Vec<_>>()
                .into(),
            memo: Mutex::new(HashMap::new()),
            forms: Mutex::new(HashMap::new()),
        },
        segments,
        kernels: w.kernels,
    })
}

/// Rows of a query block of a fused attention kernel (FlashAttention-2
/// and -3 use 128): the granularity at which a causal kernel skips work.
pub const FLASH_BLOCK: f64 = 128.0;

/// `fusion = compiled`: an elementwise op whose only consumer is the next
/// elementwise op of a chain hands its output over in registers. The
/// producer no longer writes it and the consumer no longer reads it, and
/// the two launch one kernel. What backward saves is unchanged (a
/// compiler still stores the values backward needs).
fn fuse_elementwise(ops: &mut [IrOp], beta: f64) {
    let mut consumers = vec![0u32; ops.len()];
    for o in ops.iter() {
        for &a in &o.args {
            if a >= 0 {
                consumers[a as usize] += 1;
            }
        }
    }
    for j in 0..ops.len() {
        if ops[j].class != Class::Elementwise {
            continue;
        }
        for k in 0..ops[j].args.len() {
            let a = ops[j].args[k];
            if a < 0 || consumers[a as usize] != 1 {
                continue;
            }
            let i = a as usize;
            if ops[i].class != Class::Elementwise || ops[i].mult != ops[j].mult {
                continue;
            }
            let handed = beta * ops[i].out_elems;
            ops[i].bytes = (ops[i].bytes - handed).max(0.0);
            ops[j].bytes = (ops[j].bytes - handed).max(0.0);
            ops[i].kernels = 0.0;
        }
    }
}

impl Lowering<'_> {
    fn n(&self, t: TensorId) -> f64 {
        self.numel[t.0 as usize]
    }

    /// Whether the sharded program splits tensor `t` over the ranks.
    fn sharded(&self, t: TensorId) -> bool {
        self.base.layout(t) != Layout::Rep
    }

    /// Records that `o` keeps tensor `t` (of `bytes_per` bytes per element)
    /// for the backward pass, unless an earlier op already keeps it.
    fn save(&mut self, o: &mut IrOp, t: TensorId, bytes_per: f64) {
        let i = t.0 as usize;
        if self.saved[i] {
            return;
        }
        self.saved[i] = true;
        let b = bytes_per * self.numel[i];
        o.saved_tensors.push((t, b));
        if self.sharded(t) {
            o.saved_shard += b;
        } else {
            o.saved_rep += b;
        }
    }

    /// Lowers one op onto `out`, recording it as its output's producer.
    fn push(&mut self, op: &gantry_lang::program::Op, mult: f64, out: &mut Vec<IrOp>) {
        let o = self.op(op, mult);
        self.producer[op.output.0 as usize] = out.len() as i64;
        out.push(o);
    }

    fn repeat(&mut self, r: &gantry_lang::program::Repeat, mult: f64, out: &mut Vec<IrOp>) {
        for item in &r.body {
            match item {
                Item::Op(op) => self.push(op, mult, out),
                Item::Repeat(inner) => self.repeat(inner, mult * inner.count as f64, out),
            }
        }
    }

    fn op(&mut self, op: &gantry_lang::program::Op, mult: f64) -> IrOp {
        let beta = self.beta;
        let out_n = self.n(op.output);
        let in_n: f64 = op.inputs.iter().map(|i| self.n(*i)).sum();
        let mut o = match &op.kind {
            OpKind::Linear {
                d_in,
                d_out,
                bias,
                tied,
            } => {
                let (di, dout) = (*d_in as f64, *d_out as f64);
                let m = in_n / di;
                let mut o = IrOp::new("linear", Class::Matmul);
                o.flops = 2.0 * m * di * dout;
                o.params = di * dout + if *bias { dout } else { 0.0 };
                o.tensors = if *bias { 2.0 } else { 1.0 };
                o.factored = di + dout + if *bias { dout } else { 0.0 };
                if *tied {
                    o.tied = di * dout;
                }
                o.bytes = beta * (m * di + m * dout);
                self.save(&mut o, op.inputs[0], beta);
                o.gemm = Some(Gemm {
                    m,
                    n: dout,
                    k: di,
                    count: 1.0,
                });
                if self.kernels.matmul_dtype.is_some() {
                    // Weights and input cast forward; the output gradient
                    // and the transposed weight backward.
                    o.cast_fwd = m * di;
                    o.cast_bwd = m * dout;
                }
                o
            }
            OpKind::MatMul => {
                let a = self.graph.tensor(op.inputs[0]);
                let b = self.graph.tensor(op.inputs[1]);
                let r = a.shape.rank();
                let dims = |t: &gantry_lang::program::Tensor, i: usize| {
                    t.shape.0[i].eval(&self.binding).unwrap_or(1) as f64
                };
                let (m, k, n) = (dims(a, r - 2), dims(a, r - 1), dims(b, r - 1));
                let count = self.n(op.inputs[0]) / (m * k);
                let mut o = IrOp::new("matmul", Class::Matmul);
                o.flops = 2.0 * m * k * n * count;
                o.bytes = beta * (in_n + out_n);
                for i in op.inputs.clone() {
                    self.save(&mut o, i, beta);
                }
                o.gemm = Some(Gemm { m, n, k, count });
                o
            }
            OpKind::Attention {
                heads,
                kv_heads,
                head_dim,
                dropout,
                causal,
            } => {
                let (h, hd) = (*heads as f64, *head_dim as f64);
                let q_tokens = self.n(op.inputs[0]) / (h * hd);
                let kv_tokens = self
                    .context
                    .unwrap_or(self.n(op.inputs[1]) / (*kv_heads as f64 * hd));
                let scores = h * q_tokens * kv_tokens;
                let mut o = IrOp::new("attention", Class::Attention);
                // Scores are materialized by the 2021-era training kernels
                // (`attention = materialized`: write scores, softmax
                // read/write, dropout, read for the weighted sum); fused
                // kernels and every inference kernel keep them on chip.
                let materialized =
                    self.context.is_none() && self.is_training() && !self.kernels.fused_attention;
                // A fused causal kernel skips the key blocks above the
                // diagonal: of `n` query blocks of FLASH_BLOCK rows, it
                // computes n (n + 1) / 2 of the n^2 block pairs (the
                // diagonal ones whole). Decode's one query row sees the
                // whole cache; dense kernels compute every score.
                let work = if *causal && !materialized && self.context.is_none() {
                    let n = (q_tokens / FLASH_BLOCK).ceil().max(1.0);
                    (n + 1.0) / (2.0 * n)
                } else {
                    1.0
                };
                o.flops = 4.0 * scores * hd * work;
                if !materialized && self.context.is_none() {
                    o.bwd_flops = 2.5;
                    o.flash = Some(kv_tokens * work);
                }
                let kv_elems = 2.0 * kv_tokens * *kv_heads as f64 * hd;
                let qo = self.n(op.inputs[0]) + out_n;
                if self.kernels.eager {
                    // Rotary embeddings in PyTorch primitives on the
                    // queries and the new keys: upcast to fp32 (read the
                    // type, write 4 bytes), complex multiply (read and
                    // write 8 bytes per pair, 4 per element each way),
                    // downcast (read 4, write the type).
                    let new_keys = self.n(op.inputs[1]);
                    o.side_bytes =
                        (self.n(op.inputs[0]) + new_keys) * (beta + 4.0 + 8.0 + 4.0 + beta);
                }
                // Forward passes over the score matrix: write scores, softmax
                // read and write, (dropout read, write and a 1-byte mask),
                // read by the weighted sum.
                let score_passes = if materialized {
                    if *dropout > 0.0 {
                        6.0 + 1.0 / beta
                    } else {
                        4.0
                    }
                } else {
                    0.0
                };
                o.bytes = beta * (qo + kv_elems) + beta * score_passes * scores;
                o.kv_bytes = beta * kv_elems;
                // q, k, v, and the softmax output (plus dropout mask and
                // output when attention dropout is on).
                let probs = if *dropout > 0.0 {
                    2.0 * beta + 1.0
                } else {
                    beta
                };
                if self.context.is_some() {
                    // Decode: the KV cache is accounted separately.
                    self.save(&mut o, op.inputs[0], beta);
                } else {
                    for i in op.inputs.clone() {
                        self.save(&mut o, i, beta);
                    }
                }
                if materialized {
                    o.saved_probs = probs * scores;
                    o.saved_shard += o.saved_probs;
                    o.saved_own = o.saved_probs;
                } else if self.context.is_none() && self.is_training() {
                    // A fused kernel keeps one fp32 log-sum-exp per query
                    // row and head for its backward.
                    o.saved_shard += 4.0 * h * q_tokens;
                    o.saved_own = 4.0 * h * q_tokens;
                }
                o.gemm = Some(Gemm {
                    m: q_tokens,
                    n: kv_tokens,
                    k: hd,
                    count: 2.0 * h,
                });
                o.heads = Some((*heads, *kv_heads));
                // Selective recomputation of the attention core exists to
                // drop the score matrix; a fused kernel never stores it.
                o.attention_core = materialized;
                o
            }
            OpKind::Embedding { vocab, dim } => {
                let mut o = IrOp::new("embedding", Class::Embedding);
                o.params = (*vocab * *dim) as f64;
                o.tensors = 1.0;
                o.factored = (*vocab + *dim) as f64;
                o.bytes = beta * 2.0 * out_n;
                o.lookup_bytes = beta * out_n;
                o
            }
            OpKind::EmbeddingBag { tables } => {
                let mut o = IrOp::new("embedding_bag", Class::Embedding);
                for t in tables {
                    let tb = t.dtype.bytes().unwrap_or(4) as f64;
                    o.params += (t.rows * t.dim) as f64;
                    o.table_bytes += (t.rows * t.dim) as f64 * tb;
                    o.table_factored += (t.rows + t.dim) as f64 * tb;
                    o.lookup_bytes += (t.pooling * t.dim) as f64 * tb;
                    o.tables.push(IrTable {
                        name: t.name.clone(),
                        rows: t.rows,
                        dim: t.dim,
                        elem_bytes: tb,
                        pooling: t.pooling as f64,
                    });
                }
                o.bytes = o.lookup_bytes + beta * out_n;
                o.kernels = tables.len() as f64;
                o
            }
            OpKind::Mlp { dims, .. } => {
                let mut o = IrOp::new("mlp", Class::Matmul);
                o.kernels = 0.0;
                let m = in_n / dims[0] as f64;
                let mut widest = (0.0f64, 0.0, 0.0);
                for w in dims.windows(2) {
                    let (a, b) = (w[0] as f64, w[1] as f64);
                    o.flops += 2.0 * m * a * b;
                    o.params += a * b + b;
                    o.tensors += 2.0;
                    o.factored += a + b + b;
                    o.kernels += 2.0;
                    // Input of each layer and its activation are saved.
                    o.saved_rep += beta * m * (a + b);
                    o.bytes += beta * m * (a + 3.0 * b);
                    if a * b > widest.1 * widest.2 {
                        widest = (m, a, b);
                    }
                }
                o.gemm = Some(Gemm {
                    m: widest.0,
                    n: widest.2,
                    k: widest.1,
                    count: 1.0,
                });
                o
            }
            OpKind::Interact { vectors, dim } => {
                let (n, d) = (*vectors as f64, *dim as f64);
                let mut o = IrOp::new("interact", Class::Matmul);
                o.flops = 2.0 * n * n * d;
                o.bytes = beta * (in_n + out_n + n * n);
                for i in op.inputs.clone() {
                    self.save(&mut o, i, beta);
                }
                o.gemm = Some(Gemm {
                    m: n,
                    n,
                    k: d,
                    count: 1.0,
                });
                o
            }
            OpKind::Moe {
                experts,
                top_k,
                d_model,
                d_ff,
            } => {
                let (e, k, d, f) = (
                    *experts as f64,
                    *top_k as f64,
                    *d_model as f64,
                    *d_ff as f64,
                );
                let tokens = in_n / d;
                let mut o = IrOp::new("moe", Class::Matmul);
                // Router, then top_k gated (SwiGLU) experts per token.
                o.flops = 2.0 * tokens * d * e + k * tokens * 6.0 * d * f;
                o.params = d * e + e * 3.0 * d * f;
                o.replicated = d * e;
                o.tensors = 1.0 + 3.0 * e;
                // The router (d x e), then three d x f matrices per expert.
                o.factored = d + e + 3.0 * e * (d + f);
                o.bytes = beta * tokens * (2.0 * d + k * (2.0 * d + 3.0 * f));
                o.saved_shard = beta * tokens * k * (d + 3.0 * f);
                o.gemm = Some(Gemm {
                    m: tokens * k / e,
                    n: f,
                    k: d,
                    count: e,
                });
                o.experts = Some((*experts, beta * tokens * k * d));
                o
            }
            OpKind::Reshape => IrOp::new("reshape", Class::Layout),
            OpKind::Concat { .. } => {
                let mut o = IrOp::new("concat", Class::Layout);
                o.bytes = beta * (in_n + out_n);
                o
            }
            other => {
                // Elementwise family: norms, softmax, activations, dropout,
                // binary ops, scaling.
                let name = other.name();
                let mut o = IrOp::new(name, Class::Elementwise);
                let flops_per = match other {
                    OpKind::RmsNorm { .. } | OpKind::LayerNorm { .. } | OpKind::Softmax => 5.0,
                    OpKind::Activation(_) => 8.0,
                    OpKind::Dropout(_) => 2.0,
                    _ => 1.0,
                };
                o.flops = flops_per * out_n;
                o.bytes = beta * (in_n + out_n)
                    + if matches!(other, OpKind::Dropout(_)) {
                        out_n
                    } else {
                        0.0
                    };
                if self.kernels.eager && matches!(other, OpKind::RmsNorm { .. }) {
                    // RMSNorm as PyTorch primitives, each a pass over the
                    // tensor: upcast (read the type, write fp32), square
                    // (read and write fp32), mean (read fp32), scale by
                    // the reciprocal root (read and write fp32), downcast
                    // (read fp32, write the type), gain (read and write
                    // the type): 28 + 4 x type bytes per element.
                    o.bytes = (28.0 + 4.0 * beta) * in_n;
                    o.kernels = 6.0;
                }
                // What backward needs: norms and activations their input,
                // softmax its output, dropout its 1-byte mask, products
                // their inputs; sums and scalings nothing.
                match other {
                    OpKind::RmsNorm { .. } | OpKind::LayerNorm { .. } | OpKind::Activation(_) => {
                        self.save(&mut o, op.inputs[0], beta)
                    }
                    OpKind::Softmax => self.save(&mut o, op.output, beta),
                    OpKind::Dropout(_) => {
                        o.saved_tensors.push((op.output, out_n));
                        if self.sharded(op.output) {
                            o.saved_shard += out_n;
                        } else {
                            o.saved_rep += out_n;
                        }
                    }
                    OpKind::Binary(
                        gantry_lang::program::BinaryOp::Mul | gantry_lang::program::BinaryOp::Div,
                    ) => {
                        for i in op.inputs.clone() {
                            self.save(&mut o, i, beta);
                        }
                    }
                    _ => {}
                }
                if let OpKind::RmsNorm { dim } | OpKind::LayerNorm { dim } = other {
                    let n = if matches!(other, OpKind::LayerNorm { .. }) {
                        2.0
                    } else {
                        1.0
                    };
                    o.params = *dim as f64 * n;
                    o.tensors = n;
                    o.factored = o.params;
                }
                o
            }
        };
        o.output = op.output;
        o.out_elems = out_n;
        o.mult = mult;
        o.args = op
            .inputs
            .iter()
            .map(|i| self.producer[i.0 as usize])
            .collect();
        o
    }

    fn is_training(&self) -> bool {
        self.training
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(src: &str) -> Workload {
        let c = gantry_lang::check::check_source("t.gantry", src);
        assert!(!c.has_errors(), "{}", c.render(false));
        c.program
            .workloads
            .values()
            .next()
            .cloned()
            .expect("a workload")
    }

    const GPT: &str = "model GPT(l, h, a, v) {
  input t: i32[batch, seq]
  x = embedding(t, v, h)
  repeat l {
    y = layernorm(x)
    q = linear(y, h, h, bias = true)
    k = linear(y, h, h, bias = true)
    w = linear(y, h, h, bias = true)
    c = attention(q, k, w, heads = a, causal = true, dropout = 0.1)
    x = x + dropout(linear(c, h, h, bias = true))
    y = layernorm(x)
    x = x + dropout(linear(gelu(linear(y, h, 4 * h, bias = true)), 4 * h, h, bias = true))
  }
  output o = linear(layernorm(x), h, v)
}
workload W { model GPT(l = 4, h = 64, a = 4, v = 1000)
  train { seq = 32, global_batch = 8, attention = materialized } }";

    #[test]
    fn gpt_flops_match_megatron_formula() {
        let ir = lower(&workload(GPT)).expect("lowers");
        let (s, h, l, v) = (32.0, 64.0, 4.0, 1000.0);
        // Forward FLOPs per sample: 24 s h^2 + 4 s^2 h per layer, 2 s h V logits.
        let expect = l * (24.0 * s * h * h + 4.0 * s * s * h) + 2.0 * s * h * v;
        let got: f64 = ir
            .segments
            .iter()
            .map(|seg| {
                seg.ops
                    .iter()
                    .filter(|o| matches!(o.class, Class::Matmul | Class::Attention))
                    .map(|o| o.flops * o.mult)
                    .sum::<f64>()
                    * seg.count as f64
            })
            .sum();
        assert!((got - expect).abs() / expect < 1e-12, "{got} vs {expect}");
        assert_eq!(ir.layers(), 4);
        assert_eq!(ir.hidden, h);
    }

    #[test]
    fn gpt_activation_memory_matches_korthikanti() {
        // sbh(34 + 5as/h) bytes per layer per sample, fp16/bf16.
        let ir = lower(&workload(GPT)).expect("lowers");
        let (s, h, a) = (32.0, 64.0, 4.0);
        let body = ir.body().expect("body");
        let saved = body.totals().saved;
        let expect = s * h * (34.0 + 5.0 * a * s / h);
        assert!((saved - expect).abs() < 1e-9, "{saved} vs {expect}");
    }

    #[test]
    fn tensor_parallel_roles_are_derived() {
        let ir = lower(&workload(GPT)).expect("lowers");
        let body = ir.body().expect("body");
        use crate::sharded::{Kind, Pass};
        let bi = ir.body_index().expect("body");
        let count = |v: usize, pass: Pass, kind: Kind| {
            ir.tp_table(4, v == 1).ops[bi]
                .iter()
                .flat_map(|o| o.comms.iter())
                .filter(|c| c.comm.pass == pass && c.comm.kind == kind)
                .count()
        };
        // Megatron: two all-reduces per layer forward and two backward; with
        // sequence parallelism each becomes a reduce-scatter and an
        // all-gather, and backward re-gathers the two column inputs.
        assert_eq!(count(0, Pass::Forward, Kind::AllReduce), 2);
        assert_eq!(count(0, Pass::Backward, Kind::AllReduce), 2);
        assert_eq!(count(0, Pass::Forward, Kind::AllGather), 0);
        assert_eq!(count(1, Pass::Forward, Kind::ReduceScatter), 2);
        assert_eq!(count(1, Pass::Forward, Kind::AllGather), 2);
        assert_eq!(count(1, Pass::Backward, Kind::ReduceScatter), 2);
        assert_eq!(count(1, Pass::Backward, Kind::AllGather), 4);
        // Korthikanti et al.: with tensor parallelism t the saved bytes are
        // sbh(10 + 24/t + 5as/(ht)): 10 sbh replicated, the rest split.
        let (s, h, a) = (32.0, 64.0, 4.0);
        let rep: f64 = body.ops.iter().map(|o| o.saved_rep).sum();
        let shard: f64 = body.ops.iter().map(|o| o.saved_shard).sum();
        let probs: f64 = body.ops.iter().map(|o| o.saved_probs).sum();
        assert!((rep - 10.0 * s * h).abs() < 1e-9, "{rep}");
        assert!(
            (shard - s * h * (24.0 + 5.0 * a * s / h)).abs() < 1e-9,
            "{shard}"
        );
        assert!((probs - 5.0 * a * s * s).abs() < 1e-9, "{probs}");
    }
}
