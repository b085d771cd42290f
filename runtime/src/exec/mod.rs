//! Simulated multi-device execution of one design point.
//!
//! Each device is a thread with its own memory (a map from tensor to local
//! buffer), its own JIT context and one endpoint of the in-memory
//! collectives ([`crate::comm`]). Ranks are laid out Megatron-style,
//! tensor-parallel innermost:
//! `rank = ((stage * dp + replica) * cp + chunk) * tp + t`.
//!
//! - Data parallelism: replica `d` runs samples `d * B/dp ..` of the batch,
//!   in microbatches of the design point's size.
//! - Tensor parallelism follows the compiler's propagation rule (see
//!   [`crate::layout`]): column-parallel linears split their output,
//!   row-parallel ones all-reduce, attention splits heads (key/value heads
//!   are replicated when there are fewer than `tp`), embeddings are
//!   vocab-parallel with an all-reduce, elementwise ops follow their inputs.
//! - Context parallelism cuts every sequence into `cp` chunks; attention
//!   all-gathers the keys and values it may see.
//! - Pipeline parallelism splits the largest top-level `repeat` into the
//!   stages' layer counts (and, interleaved, each stage's layers into model
//!   chunks); the first virtual stage also runs what precedes it, the last
//!   what follows. Microbatches move between stages by send/recv in the
//!   order of [`schedule`] (1F1B or Megatron's interleaved 1F1B).
//! - `embedding_bag` tables follow the planner's placement over the
//!   devices of a stage (table-wise, row-wise or replicated), with two
//!   all-to-alls (ids out, pooled vectors back), as the cost model prices
//!   them.
//! - `moe` experts are split over `ep` data-parallel ranks (all-to-all
//!   dispatch and return) and each expert's width over `tp` (all-reduce).
//! - A decode step first runs its prompt, keeping every attention's local
//!   keys and values (the KV cache), then the step.
//!
//! A run of elementwise ops whose intermediate results have no other use
//! becomes one fused kernel (not when gradients are asked for: the
//! backward pass, `grad.rs`, needs every value). [`run`] compares the
//! outputs (and gradients) with the reference and, when an output
//! diverges, runs again with tracing to name the first op whose local
//! result differs from the reference.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use gantry_compiler::point::DesignPoint;
use gantry_compiler::sharded::{self, Program, Strategy};
use gantry_lang::program::{
    Activation, BinaryOp, Graph, Item, Op, OpKind, Phase, Repeat, TensorId, Workload,
};

use crate::comm::{Endpoint, Kind, mesh};
use crate::error::{RCode, RuntimeError, mismatch, unsupported};
use crate::graph::{self, Param, numel};
use crate::init::Init;
use crate::jit::{self, AttentionSpec, Binary, Expr, Jit, KernelSpec, Unary};
use crate::layout::{Layout, block};
use crate::reference;

mod grad;
mod grad_ops;

use grad::Tape;
pub use grad::{GradCheck, ParamGrad, Reduce, StepCheck};

/// The parallel layout the executor runs: the design point's degrees,
/// the microbatch size and the layers of each pipeline stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parallel {
    pub dp: usize,
    pub tp: usize,
    pub pp: usize,
    pub ep: usize,
    /// Context parallelism: every sample's sequence is cut into `cp`
    /// contiguous chunks, one per rank; attention gathers keys and values.
    pub cp: usize,
    /// Virtual pipeline stages (model chunks) per device: Megatron's
    /// interleaved 1F1B schedule ([`schedule`]).
    pub vp: usize,
    pub microbatch: usize,
    /// Layers of each (physical) pipeline stage; with `vp > 1` each
    /// stage's layers are cut into `vp` chunks ([`chunk_layers`]).
    pub stage_layers: Vec<usize>,
    /// Sequence parallelism (with `tp > 1`): row-parallel linears
    /// reduce-scatter rows instead of all-reducing, and the row-wise ops
    /// after them (norms, elementwise, residuals) run on the local rows;
    /// the rows are all-gathered before any other op reads them.
    pub sp: bool,
    /// ZeRO stage: with `zero >= 1` the optimizer state of a block shared
    /// by `R` devices is cut into `R` parts, one per device, and the step
    /// all-gathers the updated parts (see [`crate::optim`]).
    pub zero: u8,
    /// How each `embedding_bag` table is sharded over the devices of a
    /// stage, in table order (the planner's placement); tables past the
    /// end are table-wise on device `table mod devices`.
    pub tables: Vec<TableShard>,
}

/// The sharding of one embedding table over the devices of a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableShard {
    /// Held whole by one device (its index in the stage); lookups go to it
    /// by all-to-all and pooled vectors come back.
    Table(usize),
    /// Rows cut into contiguous blocks, one per device; every device pools
    /// the rows it holds and the requester sums the partial vectors.
    Row,
    /// Every device holds the table (data-parallel, or in host memory that
    /// every device reads) and looks up its own samples; gradients are
    /// summed over the replicas.
    Replicated,
}

impl Default for Parallel {
    /// One device, one microbatch of one sample.
    fn default() -> Parallel {
        Parallel {
            dp: 1,
            tp: 1,
            pp: 1,
            ep: 1,
            cp: 1,
            vp: 1,
            microbatch: 1,
            stage_layers: Vec::new(),
            sp: false,
            zero: 0,
            tables: Vec::new(),
        }
    }
}

impl Parallel {
    pub fn devices(&self) -> usize {
        self.dp * self.cp * self.tp * self.pp
    }

    /// The layout of a design point for `workload`. Stage layer counts
    /// come from `stage_layers` (the cost model's split) when they cover
    /// the pipelined `repeat` exactly, else the layers are split evenly.
    /// `recompute` changes what is kept, not what is computed, and is
    /// ignored; `zero` is executed by the optimizer step.
    pub fn from_point(
        p: &DesignPoint,
        workload: &Workload,
        stage_layers: &[u64],
    ) -> Result<Parallel, RuntimeError> {
        let layers =
            pipelined_repeat(&workload.model.graph.body).map_or(0, |(_, r)| r.count as usize);
        let pp = p.pp as usize;
        let given: Vec<usize> = stage_layers.iter().map(|x| *x as usize).collect();
        let stage_layers = if given.len() == pp
            && given.iter().sum::<usize>() == layers
            && given.iter().all(|x| *x > 0)
        {
            given
        } else {
            even_split(layers, pp)
        };
        let batch = workload.bindings.get("batch").copied().unwrap_or(1).max(1) as usize;
        let per_replica = batch / (p.dp as usize).max(1);
        // Serving without a pipeline runs the whole per-replica batch at once.
        let microbatch =
            if pp == 1 && !matches!(workload.phase, gantry_lang::program::Phase::Train { .. }) {
                // (A batch smaller than dp is reported by `validate`.)
                per_replica.max(1)
            } else {
                p.microbatch as usize
            };
        Ok(Parallel {
            dp: p.dp as usize,
            tp: p.tp as usize,
            pp,
            ep: p.ep as usize,
            cp: p.cp as usize,
            vp: p.virtual_stages.max(1) as usize,
            microbatch,
            stage_layers,
            sp: p.sequence_parallel,
            zero: p.zero,
            tables: Vec::new(),
        })
    }
}

impl Parallel {
    /// The planner's embedding-table placement
    /// ([`gantry_compiler::placement::tables`]) as shardings of the
    /// workload's `embedding_bag` tables, matched by name: table-wise on
    /// the given device, row-wise, or replicated for tables kept in host
    /// memory (every device reads the host copy).
    pub fn with_tables(
        mut self,
        w: &Workload,
        placement: &[gantry_compiler::placement::TablePlacement],
    ) -> Parallel {
        let names: Vec<&str> = graph::ops(&w.model.graph.body)
            .into_iter()
            .find_map(|o| match &o.kind {
                OpKind::EmbeddingBag { tables } => {
                    Some(tables.iter().map(|t| t.name.as_str()).collect())
                }
                _ => None,
            })
            .unwrap_or_default();
        self.tables = names
            .iter()
            .enumerate()
            .map(
                |(i, name)| match placement.iter().find(|p| p.table == *name) {
                    Some(p) if p.sharding == "table_wise" => {
                        TableShard::Table(p.ranks.first().copied().unwrap_or(0) as usize)
                    }
                    Some(p) if p.sharding == "row_wise" => TableShard::Row,
                    Some(_) => TableShard::Replicated,
                    None => TableShard::Table(i),
                },
            )
            .collect();
        self
    }
}

/// `layers` split into `pp` counts differing by at most one (later stages
/// take the remainder).
pub fn even_split(layers: usize, pp: usize) -> Vec<usize> {
    let pp = pp.max(1);
    (0..pp)
        .map(|i| layers / pp + usize::from(i >= pp - layers % pp))
        .collect()
}

/// A step of a pipeline stage's schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Forward(usize),
    Backward(usize),
}

/// The 1F1B schedule of `stage` of `pp` over `m` microbatches: warm-up
/// forwards, then alternating forward and backward, then the remaining
/// backwards.
pub fn one_f_one_b(pp: usize, stage: usize, m: usize) -> Vec<Action> {
    let warm = (pp - stage - 1).min(m);
    let mut v = Vec::with_capacity(2 * m);
    let (mut f, mut b) = (0, 0);
    while f < warm {
        v.push(Action::Forward(f));
        f += 1;
    }
    while f < m {
        v.push(Action::Forward(f));
        f += 1;
        v.push(Action::Backward(b));
        b += 1;
    }
    while b < m {
        v.push(Action::Backward(b));
        b += 1;
    }
    v
}

/// The steps of `stage` of `pp` over `m` microbatches with `vp` model
/// chunks per stage, each with its chunk. `vp = 1` is [`one_f_one_b`];
/// otherwise Megatron-LM's interleaved 1F1B: `(pp - stage - 1) * 2 +
/// (vp - 1) * pp` warm-up forwards (all of them when that reaches
/// `m * vp`), then one forward and one backward alternately, then the
/// remaining backwards. Forward `k` runs chunk `(k mod pp·vp) / pp` of
/// microbatch `(k / pp·vp) * pp + k mod pp`; backward `k` the same
/// microbatch with the chunks in reverse. Needs `m` to be a multiple of
/// `pp` (checked by [`validate`]).
pub fn schedule(pp: usize, vp: usize, stage: usize, m: usize) -> Vec<(Action, usize)> {
    if vp <= 1 {
        return one_f_one_b(pp, stage, m)
            .into_iter()
            .map(|a| (a, 0))
            .collect();
    }
    let total = m * vp;
    let group = pp * vp;
    let at = |k: usize, forward: bool| {
        let chunk = (k % group) / pp;
        let mb = (k / group) * pp + k % pp;
        (mb, if forward { chunk } else { vp - 1 - chunk })
    };
    let warm = ((pp - stage - 1) * 2 + (vp - 1) * pp).min(total);
    let mut v = Vec::with_capacity(2 * total);
    for k in 0..warm {
        let (mb, c) = at(k, true);
        v.push((Action::Forward(mb), c));
    }
    for k in 0..total - warm {
        let (mb, c) = at(k + warm, true);
        v.push((Action::Forward(mb), c));
        let (mb, c) = at(k, false);
        v.push((Action::Backward(mb), c));
    }
    for k in total - warm..total {
        let (mb, c) = at(k, false);
        v.push((Action::Backward(mb), c));
    }
    v
}

/// The layers of every virtual stage `k = chunk * pp + stage`, in model
/// order: stage `s`'s layers are cut into `vp` chunks differing by at most
/// one ([`even_split`]), and virtual stages take consecutive layers.
pub fn chunk_layers(stage_layers: &[usize], vp: usize) -> Vec<std::ops::Range<usize>> {
    let pp = stage_layers.len();
    let vp = vp.max(1);
    let splits: Vec<Vec<usize>> = stage_layers.iter().map(|n| even_split(*n, vp)).collect();
    let mut out = Vec::with_capacity(pp * vp);
    let mut at = 0;
    for k in 0..pp * vp {
        let n = splits[k % pp][k / pp];
        out.push(at..at + n);
        at += n;
    }
    out
}

/// The top-level `repeat` with the most iterations (ties: the first), and
/// its index among the top-level items.
pub fn pipelined_repeat(items: &[Item]) -> Option<(usize, &Repeat)> {
    let mut best: Option<(usize, &Repeat)> = None;
    for (i, it) in items.iter().enumerate() {
        if let Item::Repeat(r) = it
            && best.is_none_or(|(_, b)| r.count > b.count)
        {
            best = Some((i, r));
        }
    }
    best
}

/// Options of a run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub seed: u64,
    /// Largest accepted relative error (normwise) per output.
    pub tolerance: f64,
    /// How long a device waits for a message before giving up.
    pub timeout: Duration,
    /// Fault injection for testing the divergence diagnostic: device 0
    /// adds 1 to the first element of its result of the op producing this
    /// tensor (every microbatch and iteration).
    pub fault: Option<TensorId>,
    /// Also compare every op's local result on every device with the
    /// reference (not only the outputs): slower, and strict even where an
    /// output saturates (e.g. a ReLU before a sigmoid).
    pub check_all: bool,
    /// Also run the backward pass of one training step (loss = the sum of
    /// every output element) on the devices and compare every parameter
    /// gradient with the reference backward ([`crate::backward`]).
    pub gradients: bool,
    /// Fault injection for the gradient check: device 0 adds 1 to the
    /// first element of its gradient of the op producing this tensor.
    pub grad_fault: Option<TensorId>,
    /// Fault injection for the optimizer step: under ZeRO, device 0
    /// updates the wrong part of every shared block.
    pub step_fault: bool,
    /// Largest simulated memory (bytes, all devices and the reference
    /// together, estimated by [`footprint`]) a run may use (R007 above).
    pub max_bytes: f64,
}

impl Default for RunConfig {
    fn default() -> RunConfig {
        RunConfig {
            seed: 0,
            tolerance: 1e-4,
            timeout: Duration::from_secs(120),
            fault: None,
            check_all: false,
            gradients: false,
            grad_fault: None,
            step_fault: false,
            max_bytes: 4e9,
        }
    }
}

/// One output compared with the reference.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputCheck {
    pub name: String,
    pub shape: Vec<usize>,
    pub max_abs: f64,
    pub max_rel: f64,
}

/// The first op whose result on some device differs from the reference.
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    /// `linear %12`, `attention %9 (iteration 1)`.
    pub op: String,
    pub device: usize,
    pub microbatch: usize,
    pub max_abs: f64,
    pub max_rel: f64,
}

/// What a run did and how close it came.
#[derive(Clone, Debug, PartialEq)]
pub struct RunReport {
    pub parallel: Parallel,
    pub devices: usize,
    pub microbatches: usize,
    /// Kernels compiled, summed over devices.
    pub kernels: usize,
    pub outputs: Vec<OutputCheck>,
    pub divergence: Option<Divergence>,
    /// The parameter gradients of one training step, when asked for.
    pub gradients: Option<GradCheck>,
    /// The optimizer step that follows them (training workloads), summed
    /// over devices.
    pub step: Option<StepCheck>,
    /// Floats the devices sent, per purpose (`tensor`, `context`,
    /// `pipeline`, `expert`, `embedding`, `data`): the most one device
    /// sent, and the total. Gathering outputs and gradients for the
    /// comparisons is not counted.
    pub traffic: BTreeMap<String, (usize, usize)>,
    pub tolerance: f64,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.outputs.iter().all(|o| o.max_rel <= self.tolerance)
            && self.divergence.is_none()
            && self
                .gradients
                .as_ref()
                .is_none_or(|g| g.passed(self.tolerance))
            && self.step.as_ref().is_none_or(|s| s.mismatched.is_empty())
    }
    /// The R001 diagnostic of a failed run.
    pub fn error(&self) -> Option<RuntimeError> {
        if self.outputs.iter().all(|o| o.max_rel <= self.tolerance)
            && self.divergence.is_none()
            && let Some(g) = &self.gradients
        {
            if let Some(e) = g.error(self.tolerance) {
                return Some(e);
            }
            return self.step.as_ref().and_then(StepCheck::error);
        }
        let Some(bad) = self.outputs.iter().find(|o| o.max_rel > self.tolerance) else {
            // Outputs within tolerance, an intermediate result not (`check_all`).
            let d = self.divergence.as_ref()?;
            return Some(RuntimeError::new(
                RCode::R001,
                format!(
                    "{} on device {} (microbatch {}) differs from the reference: max rel error {:.3e} > {:.0e}, although every output is within it",
                    d.op, d.device, d.microbatch, d.max_rel, self.tolerance
                ),
            ));
        };
        let at = match &self.divergence {
            Some(d) => format!(
                "; first diverging op: {} on device {} (microbatch {}), max rel error {:.3e}",
                d.op, d.device, d.microbatch, d.max_rel
            ),
            None => String::new(),
        };
        Some(
            RuntimeError::new(RCode::R001, format!("output `{}` differs from the reference: max rel error {:.3e} > {:.0e}{at}", bad.name, bad.max_rel, self.tolerance))
                .with_help("this is a runtime bug unless the model is numerically unstable at this scale; please report it with the command line"),
        )
    }
}

/// Checks that `par` fits the workload's graph (R002 / R003).
pub fn validate(w: &Workload, par: &Parallel) -> Result<(), RuntimeError> {
    let g = &w.model.graph;
    if par.dp == 0
        || par.tp == 0
        || par.pp == 0
        || par.ep == 0
        || par.cp == 0
        || par.vp == 0
        || par.microbatch == 0
    {
        return Err(mismatch(
            "every parallel degree and the microbatch must be at least 1",
        ));
    }
    let batch = w.bindings.get("batch").copied().unwrap_or(1).max(1) as usize;
    if !batch.is_multiple_of(par.dp) {
        return Err(
            mismatch(format!("batch {batch} does not split over dp = {}", par.dp))
                .with_help("choose dp dividing the batch"),
        );
    }
    let per = batch / par.dp;
    if !per.is_multiple_of(par.microbatch) {
        return Err(mismatch(format!(
            "the per-replica batch {per} is not a multiple of microbatch {}",
            par.microbatch
        ))
        .with_help("choose a microbatch dividing batch / dp"));
    }
    let repeat = pipelined_repeat(&g.body);
    let layers = repeat.map_or(0, |(_, r)| r.count as usize);
    if par.pp > 1 && repeat.is_none() {
        return Err(mismatch(format!(
            "pp = {} but the model has no repeated layers to split",
            par.pp
        ))
        .with_help("pin pp=1"));
    }
    if par.pp > 1
        && (par.stage_layers.len() != par.pp
            || par.stage_layers.iter().sum::<usize>() != layers
            || par.stage_layers.contains(&0))
    {
        return Err(mismatch(format!(
            "stage layers {:?} do not cover the {layers} layers in {} stages",
            par.stage_layers, par.pp
        )));
    }
    if par.vp > 1 {
        if par.pp == 1 {
            return Err(mismatch(format!(
                "virtual_stages = {} needs a pipeline (pp > 1)",
                par.vp
            ))
            .with_help("pin virtual_stages=1"));
        }
        if par.stage_layers.iter().any(|n| *n < par.vp) {
            return Err(mismatch(format!(
                "stage layers {:?} cannot make {} model chunks each",
                par.stage_layers, par.vp
            ))
            .with_help("every virtual stage needs at least one layer"));
        }
        let m = per / par.microbatch;
        if !m.is_multiple_of(par.pp) {
            return Err(mismatch(format!(
                "the interleaved schedule needs the microbatches per replica ({m}) to be a multiple of pp = {}",
                par.pp
            ))
            .with_help("choose a microbatch giving a multiple of pp microbatches, as Megatron-LM requires"));
        }
    }
    if par.cp > 1 {
        let seq = w.bindings.get("seq").copied().unwrap_or(0).max(0) as usize;
        if seq == 0 || !seq.is_multiple_of(par.cp) {
            return Err(
                mismatch(format!("seq {seq} does not split over cp = {}", par.cp))
                    .with_help("choose cp dividing the sequence length"),
            );
        }
        for t in g.inputs.iter().chain(g.outputs.iter().map(|(_, t)| t)) {
            let tensor = g.tensor(*t);
            if graph::seq_axis(&tensor.shape).is_none() {
                return Err(unsupported(format!(
                    "tensor `{}` {} has no `seq` axis to cut into context-parallel chunks",
                    tensor.name, tensor.shape
                ))
                .with_help("pin cp=1"));
            }
        }
        for op in graph::ops(&g.body) {
            if matches!(
                op.kind,
                OpKind::MatMul
                    | OpKind::Reshape
                    | OpKind::Concat { .. }
                    | OpKind::EmbeddingBag { .. }
                    | OpKind::Interact { .. }
            ) {
                return Err(unsupported(format!(
                    "`{}` may mix sequence positions; context parallelism runs token-wise ops and attention",
                    op.kind.name()
                ))
                .with_help("pin cp=1"));
            }
        }
    }
    if par.ep > 1 && !par.dp.is_multiple_of(par.ep) {
        return Err(
            mismatch(format!("ep = {} does not divide dp = {}", par.ep, par.dp))
                .with_help("expert-parallel groups are made of data-parallel replicas"),
        );
    }
    for op in graph::ops(&g.body) {
        match &op.kind {
            OpKind::Attention {
                heads, kv_heads, ..
            } => {
                let (h, kv, tp) = (*heads as usize, *kv_heads as usize, par.tp);
                if h % tp != 0 || (kv % tp != 0 && tp % kv != 0) {
                    return Err(mismatch(format!(
                        "tp = {tp} does not split {h} heads and {kv} key/value heads"
                    ))
                    .with_help(format!(
                        "choose tp dividing the {h} heads and dividing or divisible by the {kv} key/value heads"
                    )));
                }
            }
            OpKind::Moe { experts, .. } if !(*experts as usize).is_multiple_of(par.ep) => {
                return Err(mismatch(format!(
                    "ep = {} does not divide the {experts} experts",
                    par.ep
                )));
            }
            _ => {}
        }
    }
    if par.dp > 1 || par.microbatch < batch {
        for t in g.inputs.iter().chain(g.outputs.iter().map(|(_, t)| t)) {
            let tensor = g.tensor(*t);
            if graph::batch_axis(&tensor.shape, &w.bindings).is_none() {
                return Err(unsupported(format!(
                    "tensor `{}` {} has no `batch` axis to split samples along",
                    tensor.name, tensor.shape
                ))
                .with_help("pin dp=1 and a microbatch equal to the batch"));
            }
        }
    }
    Ok(())
}

/// Runs `w` under `par` on simulated devices and compares every output
/// with the reference interpreter.
pub fn run(w: &Workload, par: &Parallel, cfg: &RunConfig) -> Result<RunReport, RuntimeError> {
    validate(w, par)?;
    if par.devices() > MAX_DEVICES {
        return Err(RuntimeError::new(
            RCode::R007,
            format!(
                "the design point uses {} devices; the runtime simulates at most {MAX_DEVICES} (one thread each)",
                par.devices()
            ),
        )
        .with_help("pin smaller degrees with --fix (e.g. tp=2,pp=2,dp=2) or let the planner choose for --devices 8"));
    }
    let need = footprint(w, par, cfg.gradients)?;
    if need > cfg.max_bytes {
        return Err(RuntimeError::new(
            RCode::R007,
            format!(
                "running `{}` at this scale needs about {:.3} GB of simulated memory (weights on every replica, activations, the reference), more than the {:.3} GB allowed",
                w.name,
                need / 1e9,
                cfg.max_bytes / 1e9
            ),
        )
        .with_help("scale the workload down with --scale (e.g. layers=2,d_model=256,heads=4,kv_heads=2,d_ff=512,vocab=1000,seq=16,batch=4, or rows=10000 for DLRM tables), or raise --max-memory"));
    }
    if let Phase::Decode { context, .. } = w.phase {
        return run_decode(w, par, cfg, context as usize);
    }
    let g = &w.model.graph;
    let init = Init::new(cfg.seed);
    let gshapes = graph::shapes(g, &w.bindings)?;
    let inputs: Vec<Vec<f32>> = g
        .inputs
        .iter()
        .map(|i| graph::input_values(g, *i, &gshapes[i.0 as usize], &init))
        .collect();
    let reference = reference::run(g, &w.bindings, &init, Some(inputs.clone()), false)?;
    let (outs, kernels, pgrads, steps, traffic) = simulate(w, par, cfg, &inputs, false, None)?;
    let step = steps.into_iter().flatten().reduce(|a, b| a.merge(b));
    let gradients = if cfg.gradients {
        let want = crate::backward::backward(
            g,
            &w.bindings,
            &init,
            Some(inputs.clone()),
            &Default::default(),
        )?;
        Some(grad::check(g, &pgrads, &want)?)
    } else {
        None
    };
    let batch = w.bindings.get("batch").copied().unwrap_or(1).max(1) as usize;
    let mut report = RunReport {
        parallel: par.clone(),
        devices: par.devices(),
        microbatches: batch / par.dp / par.microbatch,
        kernels,
        outputs: Vec::new(),
        divergence: None,
        gradients,
        step,
        traffic,
        tolerance: cfg.tolerance,
    };
    for (i, (name, shape, want)) in reference.outputs.iter().enumerate() {
        let (abs, rel) = graph::compare(&outs[i], want);
        report.outputs.push(OutputCheck {
            name: name.clone(),
            shape: shape.clone(),
            max_abs: abs,
            max_rel: rel,
        });
    }
    let outputs_ok = report.outputs.iter().all(|o| o.max_rel <= cfg.tolerance);
    if !outputs_ok || cfg.check_all {
        report.divergence = locate(w, par, cfg, &inputs)?;
    }
    Ok(report)
}

/// The most simulated devices (threads) a run may use.
pub const MAX_DEVICES: usize = 512;

/// A generous estimate of a run's memory in bytes (f32), for refusing runs
/// that cannot fit: every parameter once for the reference and once per
/// device of a stage (replicated tables and tensor-parallel copies), every
/// op result of the whole batch once for the reference and once per
/// tensor-parallel rank (replicated values are held by each), and with
/// gradients the tape and the gradients on top (three times in all).
/// Measured peaks of reviewed runs were 1.4 to 3.2 times the previous,
/// tighter estimate; this one counts those copies.
pub fn footprint(w: &Workload, par: &Parallel, gradients: bool) -> Result<f64, RuntimeError> {
    fn walk(items: &[Item], shapes: &[Vec<usize>], mult: f64, acc: &mut (f64, f64)) {
        for it in items {
            match it {
                Item::Op(op) => {
                    let params: usize = graph::params(&op.kind)
                        .iter()
                        .map(|p| numel(&p.shape))
                        .sum();
                    acc.0 += mult * params as f64;
                    acc.1 += mult * numel(&shapes[op.output.0 as usize]) as f64;
                }
                Item::Repeat(r) => walk(&r.body, shapes, mult * r.count as f64, acc),
            }
        }
    }
    let g = &w.model.graph;
    let mut bindings = w.bindings.clone();
    if let Phase::Decode { context, .. } = w.phase {
        let seq = bindings.get("seq").copied().unwrap_or(1);
        bindings.insert("seq".into(), seq + context as i64);
    }
    let shapes = graph::shapes(g, &bindings)?;
    let mut acc = (0.0, 0.0);
    walk(&g.body, &shapes, 1.0, &mut acc);
    let (params, acts) = acc;
    let copies = 1.0 + (par.dp * par.cp * par.tp) as f64;
    let once = params * copies + (1.0 + par.tp as f64) * acts;
    Ok(4.0 * once * if gradients { 3.0 } else { 1.0 })
}

/// A decode step with a KV cache. The reference runs the whole sequence
/// (`context` prompt tokens and the step's `seq` new ones) with plain
/// causal attention and its last `seq` positions are the expected
/// outputs. The devices run the prompt first (keeping each attention's
/// local keys and values, sharded as the keys and values are), then the
/// step, whose attention reads the cache followed by its own keys.
fn run_decode(
    w: &Workload,
    par: &Parallel,
    cfg: &RunConfig,
    context: usize,
) -> Result<RunReport, RuntimeError> {
    if cfg.gradients {
        return Err(unsupported(
            "gradients of a decode step (a training step's loss is defined on a whole sequence)",
        )
        .with_help("run with --grad off"));
    }
    if par.cp > 1 {
        return Err(
            mismatch("a decode step cannot be cut into context-parallel chunks")
                .with_help("pin cp=1"),
        );
    }
    let g = &w.model.graph;
    let step = w.bindings.get("seq").copied().unwrap_or(1).max(1) as usize;
    let bound = |seq: usize| {
        let mut v = w.clone();
        v.bindings.insert("seq".into(), seq as i64);
        v
    };
    let (whole, prompt) = (bound(context + step), bound(context));
    for t in g.inputs.iter().chain(g.outputs.iter().map(|(_, t)| t)) {
        let tensor = g.tensor(*t);
        if graph::seq_axis(&tensor.shape).is_none() {
            return Err(unsupported(format!(
                "tensor `{}` {} has no `seq` axis to hold the prompt and the step",
                tensor.name, tensor.shape
            )));
        }
    }
    let init = Init::new(cfg.seed);
    let shapes = graph::shapes(g, &whole.bindings)?;
    // Positions `from..from + len` of every sample of tensor `t`.
    let positions = |t: TensorId, data: &[f32], from: usize, len: usize| -> Vec<f32> {
        let axis = graph::seq_axis(&g.tensor(t).shape).unwrap_or(0);
        graph::take_samples(data, &shapes[t.0 as usize], axis, 1, from, len)
    };
    let inputs: Vec<Vec<f32>> = g
        .inputs
        .iter()
        .map(|i| graph::input_values(g, *i, &shapes[i.0 as usize], &init))
        .collect();
    let reference = reference::run(g, &whole.bindings, &init, Some(inputs.clone()), false)?;
    let split = |from: usize, len: usize| -> Vec<Vec<f32>> {
        g.inputs
            .iter()
            .zip(&inputs)
            .map(|(t, x)| positions(*t, x, from, len))
            .collect()
    };
    let (prompt_in, step_in) = (split(0, context), split(context, step));
    let (outs, kernels, _, _, traffic) =
        simulate(w, par, cfg, &step_in, false, Some((&prompt, &prompt_in)))?;
    let batch = w.bindings.get("batch").copied().unwrap_or(1).max(1) as usize;
    let mut report = RunReport {
        parallel: par.clone(),
        devices: par.devices(),
        microbatches: batch / par.dp / par.microbatch,
        kernels,
        outputs: Vec::new(),
        divergence: None,
        gradients: None,
        step: None,
        traffic,
        tolerance: cfg.tolerance,
    };
    for (i, ((name, shape, want), (_, t))) in reference.outputs.iter().zip(&g.outputs).enumerate() {
        let want = positions(*t, want, context, step);
        let (abs, rel) = graph::compare(&outs[i], &want);
        let axis = graph::seq_axis(&g.tensor(*t).shape).unwrap_or(0);
        let mut shape = shape.clone();
        shape[axis] = step;
        report.outputs.push(OutputCheck {
            name: name.clone(),
            shape,
            max_abs: abs,
            max_rel: rel,
        });
    }
    Ok(report)
}

/// The Cranelift IR of every kernel device `rank` compiles for one
/// microbatch, in order of first use. Nothing is computed and no weight is
/// made, so this works at full scale.
pub fn kernels(
    w: &Workload,
    par: &Parallel,
    rank: usize,
) -> Result<Vec<(String, String)>, RuntimeError> {
    validate(w, par)?;
    if rank >= par.devices() {
        return Err(mismatch(format!(
            "device {rank} does not exist: the design point uses {} devices",
            par.devices()
        )));
    }
    let jit = Jit::new()?.with_clif(true);
    let mut dev = Dev::new(w, par, rank, Init::new(0), jit, None, false)?;
    // A decode step's attention reads the prompt's cached keys too.
    if let Phase::Decode { context, .. } = w.phase {
        dev.dry_context = context as usize;
    }
    dev.microbatch(0, 0, &[])?;
    Ok(dev.jit.clif().to_vec())
}

type Record = ((TensorId, Vec<u64>), usize, Layout, Vec<f32>);

/// The assembled outputs, the kernel count, every device's parameter
/// gradients and optimizer step, and the traffic.
type Simulated = (
    Vec<Vec<f32>>,
    usize,
    Vec<Vec<ParamGrad>>,
    Vec<Option<StepCheck>>,
    BTreeMap<String, (usize, usize)>,
);

struct DeviceResult {
    outputs: Vec<(usize, Vec<Vec<f32>>)>,
    records: Vec<Record>,
    kernels: usize,
    grads: Vec<ParamGrad>,
    step: Option<StepCheck>,
    traffic: BTreeMap<&'static str, usize>,
}

/// A decode step's prompt: the workload bound to the prompt's length and
/// its whole-batch inputs. Every device first runs it forward, keeping the
/// keys and values of every attention (its KV cache), then the step.
type Prompt<'w> = Option<(&'w Workload, &'w [Vec<f32>])>;

/// Runs every device; returns the assembled outputs and the kernel count.
fn simulate(
    w: &Workload,
    par: &Parallel,
    cfg: &RunConfig,
    inputs: &[Vec<f32>],
    trace: bool,
    prompt: Prompt,
) -> Result<Simulated, RuntimeError> {
    let (results, _) = simulate_devices(w, par, cfg, inputs, trace, prompt)?;
    let g = &w.model.graph;
    let gshapes = graph::shapes(g, &w.bindings)?;
    let mut outs: Vec<Vec<f32>> = g
        .outputs
        .iter()
        .map(|(_, t)| vec![0.0; numel(&gshapes[t.0 as usize])])
        .collect();
    let mut kernels = 0;
    for (rank, res) in results.iter().enumerate() {
        kernels += res.kernels;
        let (d, c) = replica_of(par, rank);
        for (mb, vals) in &res.outputs {
            for (i, (_, t)) in g.outputs.iter().enumerate() {
                let at = Part { d, c, mb: *mb };
                paste(
                    w,
                    par,
                    *t,
                    &gshapes[t.0 as usize],
                    &mut outs[i],
                    &vals[i],
                    at,
                );
            }
        }
    }
    let steps = results.iter().map(|r| r.step.clone()).collect();
    let mut traffic: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in &results {
        for (k, v) in &r.traffic {
            let e = traffic.entry(k.to_string()).or_default();
            e.0 = e.0.max(*v);
            e.1 += v;
        }
    }
    let grads = results.into_iter().map(|r| r.grads).collect();
    Ok((outs, kernels, grads, steps, traffic))
}

fn per_replica(w: &Workload, par: &Parallel) -> usize {
    w.bindings.get("batch").copied().unwrap_or(1).max(1) as usize / par.dp
}

/// The data-parallel replica and the context-parallel rank of `rank`.
fn replica_of(par: &Parallel, rank: usize) -> (usize, usize) {
    (
        (rank / (par.tp * par.cp)) % par.dp,
        (rank / par.tp) % par.cp,
    )
}

/// Which part of a whole-batch tensor a device holds: replica `d`'s
/// microbatch `mb`, sequence chunk `c`.
#[derive(Clone, Copy)]
struct Part {
    d: usize,
    c: usize,
    mb: usize,
}

/// The part `at` of `data`, a whole-batch value of tensor `t`: its
/// samples along the batch axis, then (with `cp > 1`) its chunk of the
/// `seq` axis. A tensor without those axes is whole everywhere.
fn cut(
    w: &Workload,
    par: &Parallel,
    t: TensorId,
    shape: &[usize],
    data: &[f32],
    at: Part,
) -> Vec<f32> {
    let tensor = w.model.graph.tensor(t);
    let mut shape = shape.to_vec();
    let mut out = match graph::batch_axis(&tensor.shape, &w.bindings) {
        Some((axis, each)) => {
            let start = at.d * per_replica(w, par) + at.mb * par.microbatch;
            let v = graph::take_samples(data, &shape, axis, each, start, par.microbatch);
            shape[axis] = par.microbatch * each;
            v
        }
        None => data.to_vec(),
    };
    if par.cp > 1
        && let Some(ax) = graph::seq_axis(&tensor.shape)
    {
        let chunk = shape[ax] / par.cp;
        out = graph::take_samples(&out, &shape, ax, 1, at.c * chunk, chunk);
    }
    out
}

/// Writes `part` (laid out as [`cut`] returns it) into `whole`.
fn paste(
    w: &Workload,
    par: &Parallel,
    t: TensorId,
    shape: &[usize],
    whole: &mut [f32],
    part: &[f32],
    at: Part,
) {
    let tensor = w.model.graph.tensor(t);
    let batch = graph::batch_axis(&tensor.shape, &w.bindings);
    let start = at.d * per_replica(w, par) + at.mb * par.microbatch;
    let mut mb_shape = shape.to_vec();
    let mut mb_part = part.to_vec();
    if let Some((axis, each)) = batch {
        mb_shape[axis] = par.microbatch * each;
    }
    if par.cp > 1
        && let Some(ax) = graph::seq_axis(&tensor.shape)
    {
        // The microbatch's values with this chunk written in.
        let mut mb_whole = match batch {
            Some((axis, each)) => {
                graph::take_samples(whole, shape, axis, each, start, par.microbatch)
            }
            None => whole.to_vec(),
        };
        let chunk = mb_shape[ax] / par.cp;
        graph::put_samples(&mut mb_whole, &mb_shape, ax, 1, at.c * chunk, chunk, part);
        mb_part = mb_whole;
    }
    match batch {
        Some((axis, each)) => {
            graph::put_samples(whole, shape, axis, each, start, par.microbatch, &mb_part)
        }
        None => whole.copy_from_slice(&mb_part),
    }
}

fn simulate_devices(
    w: &Workload,
    par: &Parallel,
    cfg: &RunConfig,
    inputs: &[Vec<f32>],
    trace: bool,
    prompt: Prompt,
) -> Result<(Vec<DeviceResult>, ()), RuntimeError> {
    let g = &w.model.graph;
    let gshapes = graph::shapes(g, &w.bindings)?;
    let pshapes = match prompt {
        Some((pw, _)) => graph::shapes(g, &pw.bindings)?,
        None => Vec::new(),
    };
    let n = par.devices();
    let per = per_replica(w, par);
    let m = per / par.microbatch;
    let endpoints = mesh(n, cfg.timeout);
    let init = Init::new(cfg.seed);
    let results: Vec<Result<DeviceResult, RuntimeError>> = std::thread::scope(|s| {
        let handles: Vec<_> = endpoints
            .into_iter()
            .enumerate()
            .map(|(rank, ep)| {
                let (d, c) = replica_of(par, rank);
                // This replica's samples (and sequence chunk) of every
                // input, per microbatch.
                let mb_inputs: Vec<Vec<Vec<f32>>> = (0..m)
                    .map(|mb| {
                        g.inputs
                            .iter()
                            .zip(inputs)
                            .map(|(t, data)| {
                                let at = Part { d, c, mb };
                                cut(w, par, *t, &gshapes[t.0 as usize], data, at)
                            })
                            .collect()
                    })
                    .collect();
                let prompt_inputs: Option<(&Workload, Vec<Vec<Vec<f32>>>)> =
                    prompt.map(|(pw, data)| {
                        let per_mb = (0..m)
                            .map(|mb| {
                                g.inputs
                                    .iter()
                                    .zip(data)
                                    .map(|(t, x)| {
                                        let at = Part { d, c, mb };
                                        cut(pw, par, *t, &pshapes[t.0 as usize], x, at)
                                    })
                                    .collect()
                            })
                            .collect();
                        (pw, per_mb)
                    });
                s.spawn(move || -> Result<DeviceResult, RuntimeError> {
                    let mut ep = Some(ep);
                    let mut cache = HashMap::new();
                    if let Some((pw, pin)) = &prompt_inputs {
                        let mut pre = Dev::new(pw, par, rank, init, Jit::new()?, ep.take(), false)?;
                        pre.kv_record = true;
                        for (action, chunk) in schedule(par.pp, par.vp, pre.stage, m) {
                            if let Action::Forward(mb) = action {
                                pre.microbatch(mb, chunk, &pin[mb])?;
                            }
                        }
                        cache = std::mem::take(&mut pre.kv_cache);
                        ep = pre.ep.take();
                        // The step's traffic is what a decode step sends.
                        if let Some(e) = &ep {
                            e.reset_traffic();
                        }
                    }
                    let jit = Jit::new()?;
                    let mut dev = Dev::new(w, par, rank, init, jit, ep, trace)?;
                    dev.kv_cache = cache;
                    dev.fault = cfg.fault.filter(|_| rank == 0);
                    dev.grad_fault = cfg.grad_fault.filter(|_| rank == 0);
                    dev.step_fault = cfg.step_fault && rank == 0;
                    let grads = cfg.gradients && !trace;
                    if grads {
                        dev.start_gradients();
                    }
                    let mut outputs = Vec::new();
                    for (action, chunk) in schedule(par.pp, par.vp, dev.stage, m) {
                        match action {
                            Action::Forward(mb) => {
                                if let Some(o) = dev.microbatch(mb, chunk, &mb_inputs[mb])? {
                                    outputs.push((mb, o));
                                }
                            }
                            // Without gradients, backward actions only keep their place.
                            Action::Backward(mb) if grads => dev.backward(mb, chunk)?,
                            Action::Backward(_) => {}
                        }
                    }
                    let (grads, step) = if grads {
                        let g = dev.finish_gradients()?;
                        let step = match w.phase {
                            Phase::Train { optimizer, .. } => {
                                Some(dev.optimizer_step(&g, optimizer)?)
                            }
                            _ => None,
                        };
                        (g, step)
                    } else {
                        (Vec::new(), None)
                    };
                    Ok(DeviceResult {
                        outputs,
                        records: dev.records.take().unwrap_or_default(),
                        kernels: dev.jit.compiled(),
                        grads,
                        step,
                        traffic: dev.ep.as_ref().map(|e| e.traffic()).unwrap_or_default(),
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(RuntimeError::new(
                        RCode::R006,
                        "a simulated device panicked (a runtime bug)",
                    ))
                })
            })
            .collect()
    });
    // Report the root cause: a device's own error before the peers' broken channels.
    let mut ok = Vec::with_capacity(n);
    let mut first_err: Option<RuntimeError> = None;
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => {
                let better = match &first_err {
                    None => true,
                    Some(cur) => cur.code == RCode::R006 && e.code != RCode::R006,
                };
                if better {
                    first_err = Some(e);
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok((ok, ())),
    }
}

/// Runs again with tracing and finds the first op (in the reference's
/// execution order) whose local result on some device differs.
fn locate(
    w: &Workload,
    par: &Parallel,
    cfg: &RunConfig,
    inputs: &[Vec<f32>],
) -> Result<Option<Divergence>, RuntimeError> {
    let g = &w.model.graph;
    let init = Init::new(cfg.seed);
    let reference = reference::run(g, &w.bindings, &init, Some(inputs.to_vec()), true)?;
    let gshapes = graph::shapes(g, &w.bindings)?;
    let order: HashMap<(TensorId, Vec<u64>), usize> = reference
        .trace
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.clone(), i))
        .collect();
    let (results, _) = simulate_devices(w, par, cfg, inputs, true, None)?;
    let mut best: Option<(usize, Divergence)> = None;
    for (rank, res) in results.iter().enumerate() {
        let (d, c) = replica_of(par, rank);
        let t = rank % par.tp;
        for ((id, path), mb, layout, data) in &res.records {
            let Some(want) = reference.traced(*id, path) else {
                continue;
            };
            let gshape = &gshapes[id.0 as usize];
            if par.cp > 1 && graph::seq_axis(&g.tensor(*id).shape).is_none() {
                continue;
            }
            let want = cut(w, par, *id, gshape, want, Part { d, c, mb: *mb });
            let width = *gshape.last().unwrap_or(&1);
            let want = layout.local_part(&want, width, par.tp, t);
            let (abs, rel) = graph::compare(data, &want);
            if rel > cfg.tolerance {
                let idx = order
                    .get(&(*id, path.clone()))
                    .copied()
                    .unwrap_or(usize::MAX);
                if best.as_ref().is_none_or(|(b, _)| idx < *b) {
                    let name = graph::ops(&g.body)
                        .iter()
                        .find(|o| o.output == *id)
                        .map_or("op", |o| o.kind.name());
                    let it = if path.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (iteration {})",
                            path.iter()
                                .map(|p| p.to_string())
                                .collect::<Vec<_>>()
                                .join(".")
                        )
                    };
                    best = Some((
                        idx,
                        Divergence {
                            op: format!("{name} %{}{it}", id.0),
                            device: rank,
                            microbatch: *mb,
                            max_abs: abs,
                            max_rel: rel,
                        },
                    ));
                }
            }
        }
    }
    Ok(best.map(|(_, d)| d))
}

// ---------------------------------------------------------------- devices

/// A tensor on one device.
#[derive(Clone, Debug)]
struct Local {
    layout: Layout,
    data: Vec<f32>,
}

/// The compiler's sharded program for this device's mesh, with the rows
/// of each tensor at this microbatch (sequence parallelism needs them to
/// cut into `tp` blocks).
fn sharded_program(
    g: &Graph,
    shapes: &[Vec<usize>],
    par: &Parallel,
) -> Result<Program, RuntimeError> {
    let elems: Vec<f64> = shapes.iter().map(|s| numel(s) as f64).collect();
    let rows_fit = shapes
        .iter()
        .map(|s| {
            let width = s.last().copied().unwrap_or(1).max(1);
            Layout::rows_fit(numel(s) / width, par.tp)
        })
        .collect();
    let mesh = sharded::Mesh {
        tp: par.tp,
        sp: par.sp,
        rows_fit: Some(rows_fit),
        symbolic: false,
    };
    sharded::build(g, &elems, &mesh).map_err(|e| {
        unsupported(format!("tp = {}: {}", par.tp, e.reason))
            .with_help("run this model with tp = 1, or write the block so its residual stream keeps one layout")
    })
}

/// The runtime's form of a layout of the sharded program.
fn layout_of(l: sharded::Layout) -> Layout {
    match l {
        sharded::Layout::Rep => Layout::Rep,
        sharded::Layout::Cols { groups } => Layout::split(groups),
        sharded::Layout::Rows => Layout::Rows,
    }
}

fn is_elementwise(k: &OpKind) -> bool {
    matches!(
        k,
        OpKind::Activation(_) | OpKind::Binary(_) | OpKind::Scale(_) | OpKind::Dropout(_)
    )
}

fn unary_of(a: Activation) -> Unary {
    match a {
        Activation::Relu => Unary::Relu,
        Activation::Gelu => Unary::Gelu,
        Activation::Silu => Unary::Silu,
        Activation::Sigmoid => Unary::Sigmoid,
    }
}

fn binary_of(b: BinaryOp) -> Binary {
    match b {
        BinaryOp::Add => Binary::Add,
        BinaryOp::Sub => Binary::Sub,
        BinaryOp::Mul => Binary::Mul,
        BinaryOp::Div => Binary::Div,
    }
}

/// What a `moe` op's backward pass reuses from its forward pass: the
/// routing, the records each device sent and received, and the experts'
/// outputs that came back.
struct MoeSaved {
    choices: Vec<Vec<(usize, f32)>>,
    sent: Vec<Vec<(usize, usize)>>,
    received: Vec<Vec<f32>>,
    back: Vec<Vec<f32>>,
}

/// Local keys and values per (microbatch, attention op, iterations).
type KvCache = HashMap<(usize, u32, Vec<u64>), (Vec<f32>, Vec<f32>)>;

/// Prepared local weights of one op at one iteration.
type Weights = Vec<Vec<f32>>;

struct Dev<'a> {
    g: &'a Graph,
    par: &'a Parallel,
    rank: usize,
    stage: usize,
    d: usize,
    /// Context-parallel rank (sequence chunk).
    c: usize,
    t: usize,
    /// Shapes with `batch` bound to the microbatch size (and `seq` to the
    /// chunk length with context parallelism).
    shapes: Vec<Vec<usize>>,
    init: Init,
    jit: Jit,
    ep: Option<Endpoint>,
    /// Dry run: compile kernels, compute nothing.
    dry: bool,
    fused: Vec<bool>,
    producer: HashMap<TensorId, &'a Op>,
    /// The compiler's sharded program for this mesh: every layout this
    /// device reads and writes comes from it ([`gantry_compiler::sharded`]).
    program: Program,
    weights: HashMap<(u32, Vec<u64>), Weights>,
    env: HashMap<TensorId, Local>,
    /// Conversions of the current values to other layouts ([`Dev::as_layout`]).
    converted: std::cell::RefCell<HashMap<(TensorId, Layout), Vec<f32>>>,
    /// The same for the tape's values during a backward pass, by slot.
    slot_converted: std::cell::RefCell<HashMap<(usize, Layout), Vec<f32>>>,
    records: Option<Vec<Record>>,
    mb: usize,
    fault: Option<TensorId>,
    /// Training: the tape of the microbatch being run forward, the tapes
    /// of the microbatches waiting for their backward pass, and the
    /// parameter gradients accumulated so far.
    grad: bool,
    tape: Option<Tape>,
    tapes: HashMap<(usize, usize), Tape>,
    pgrads: std::collections::BTreeMap<crate::backward::ParamKey, ParamGrad>,
    grad_fault: Option<TensorId>,
    step_fault: bool,
    /// Decode: record every attention's local keys and values (the
    /// prompt's pass), or read them back before the step's own.
    kv_record: bool,
    kv_cache: KvCache,
    /// MoE forward state per (microbatch, op, iterations), for backward.
    moe_saved: HashMap<(usize, u32, Vec<u64>), MoeSaved>,
    /// Dry runs of a decode step: the cached prompt length.
    dry_context: usize,
}

impl<'a> Dev<'a> {
    fn new(
        w: &'a Workload,
        par: &'a Parallel,
        rank: usize,
        init: Init,
        jit: Jit,
        ep: Option<Endpoint>,
        trace: bool,
    ) -> Result<Dev<'a>, RuntimeError> {
        let g = &w.model.graph;
        let mut b = w.bindings.clone();
        b.insert("batch".into(), par.microbatch as i64);
        if par.cp > 1
            && let Some(seq) = b.get_mut("seq")
        {
            *seq /= par.cp as i64;
        }
        let shapes = graph::shapes(g, &b)?;
        let mut producer = HashMap::new();
        for op in graph::ops(&g.body) {
            producer.insert(op.output, op);
        }
        // Uses of every tensor (op inputs, carries, outputs).
        let mut uses = vec![0u32; g.tensors.len()];
        count_uses(&g.body, &mut uses);
        for (_, t) in &g.outputs {
            uses[t.0 as usize] += 1;
        }
        let mut fused = vec![false; g.tensors.len()];
        mark_fused(&g.body, &uses, &mut fused);
        // A value that crosses a pipeline boundary must be computed, not
        // fused into a consumer on another stage.
        if par.pp > 1
            && let Some((idx, _)) = pipelined_repeat(&g.body)
        {
            for t in boundary_live(g, idx) {
                fused[t.0 as usize] = false;
            }
        }
        let program = sharded_program(g, &shapes, par)?;
        let dry = ep.is_none();
        Ok(Dev {
            g,
            par,
            rank,
            stage: rank / (par.tp * par.cp * par.dp),
            d: replica_of(par, rank).0,
            c: replica_of(par, rank).1,
            t: rank % par.tp,
            shapes,
            init,
            jit,
            ep,
            dry,
            fused,
            producer,
            program,
            weights: HashMap::new(),
            env: HashMap::new(),
            converted: Default::default(),
            slot_converted: Default::default(),
            records: trace.then(Vec::new),
            mb: 0,
            fault: None,
            grad: false,
            tape: None,
            tapes: HashMap::new(),
            pgrads: Default::default(),
            grad_fault: None,
            step_fault: false,
            kv_record: false,
            kv_cache: HashMap::new(),
            moe_saved: HashMap::new(),
            dry_context: 0,
        })
    }

    // ------------------------------------------------------------ groups

    /// The rank at `stage`, replica `d`, tensor-parallel rank `t` and this
    /// device's sequence chunk.
    fn rank_of(&self, stage: usize, d: usize, t: usize) -> usize {
        self.rank_at(stage, d, self.c, t)
    }
    fn rank_at(&self, stage: usize, d: usize, c: usize, t: usize) -> usize {
        ((stage * self.par.dp + d) * self.par.cp + c) * self.par.tp + t
    }
    /// The context-parallel group (the sequence chunks of this replica).
    fn cp_group(&self) -> Vec<usize> {
        (0..self.par.cp)
            .map(|c| self.rank_at(self.stage, self.d, c, self.t))
            .collect()
    }
    fn tp_group(&self) -> Vec<usize> {
        (0..self.par.tp)
            .map(|t| self.rank_of(self.stage, self.d, t))
            .collect()
    }
    fn stage_group(&self) -> Vec<usize> {
        let n = self.par.dp * self.par.cp * self.par.tp;
        (self.stage * n..(self.stage + 1) * n).collect()
    }
    fn ep_group(&self) -> Vec<usize> {
        let e0 = self.d - self.d % self.par.ep;
        (e0..e0 + self.par.ep)
            .map(|d| self.rank_of(self.stage, d, self.t))
            .collect()
    }
    fn endpoint(&self) -> Result<&Endpoint, RuntimeError> {
        self.ep
            .as_ref()
            .ok_or_else(|| RuntimeError::new(RCode::R006, "a dry run has no collectives"))
    }
    fn all_reduce_tp(&self, data: &mut [f32]) -> Result<(), RuntimeError> {
        if self.dry || self.par.tp == 1 {
            return Ok(());
        }
        let group = self.tp_group();
        self.endpoint()?.all_reduce(&group, data)
    }

    // ------------------------------------------------------------ layouts

    fn width(&self, t: TensorId) -> usize {
        *self.shapes[t.0 as usize].last().unwrap_or(&1)
    }
    fn numel(&self, t: TensorId) -> usize {
        numel(&self.shapes[t.0 as usize])
    }
    fn local_len(&self, t: TensorId, l: Layout) -> usize {
        if l == Layout::Rows {
            return block(self.numel(t), self.par.tp, self.t).len();
        }
        let w = self.width(t);
        self.numel(t) / w.max(1) * l.range(w, self.par.tp, self.t).len()
    }

    fn get(&self, t: TensorId) -> Result<&Local, RuntimeError> {
        self.env.get(&t).ok_or_else(|| {
            unsupported(format!(
                "tensor %{} is read before it is computed on device {}",
                t.0, self.rank
            ))
        })
    }

    /// The tensor `t` in layout `to` (gathering across ranks or slicing
    /// locally). A conversion is made once per value
    /// (three projections reading one sequence-parallel input all-gather
    /// it once, as Megatron-LM's fused QKV projection does).
    fn as_layout(&self, t: TensorId, to: Layout) -> Result<Vec<f32>, RuntimeError> {
        let x = self.get(t)?;
        if x.layout == to || self.dry {
            return self.convert(t, x, to);
        }
        if let Some(v) = self.converted.borrow().get(&(t, to)) {
            return Ok(v.clone());
        }
        let v = self.convert(t, x, to)?;
        self.converted.borrow_mut().insert((t, to), v.clone());
        Ok(v)
    }

    /// Binds `t` to a new value (and forgets its conversions).
    fn put(&mut self, t: TensorId, v: Local) {
        self.converted.get_mut().retain(|(k, _), _| *k != t);
        self.env.insert(t, v);
    }

    /// `x`, a local part of tensor `t`, in layout `to`.
    fn convert(&self, t: TensorId, x: &Local, to: Layout) -> Result<Vec<f32>, RuntimeError> {
        if x.layout == to {
            return Ok(x.data.clone());
        }
        let width = self.width(t);
        let full = match x.layout {
            Layout::Rep => x.data.clone(),
            Layout::Rows if self.dry => Vec::new(),
            Layout::Rows => self
                .endpoint()?
                .all_gather(&self.tp_group(), &x.data)?
                .concat(),
            Layout::Split { groups } => {
                if self.dry {
                    Vec::new()
                } else {
                    let parts = self.endpoint()?.all_gather(&self.tp_group(), &x.data)?;
                    let copies = self.par.tp / groups;
                    let blocks: Vec<&Vec<f32>> = parts.iter().step_by(copies.max(1)).collect();
                    let rows = self.numel(t) / width.max(1);
                    let mut full = Vec::with_capacity(rows * width);
                    for r in 0..rows {
                        for (bi, b) in blocks.iter().enumerate() {
                            let bw = block(width, groups, bi).len();
                            full.extend_from_slice(&b[r * bw..(r + 1) * bw]);
                        }
                    }
                    full
                }
            }
        };
        Ok(match to {
            Layout::Rep => full,
            _ if self.dry => Vec::new(),
            _ => to.local_part(&full, width, self.par.tp, self.t),
        })
    }

    fn rep(&self, t: TensorId) -> Result<Vec<f32>, RuntimeError> {
        self.as_layout(t, Layout::Rep)
    }

    /// The layout the sharded program stores `t` in.
    fn layout(&self, t: TensorId) -> Layout {
        layout_of(self.program.layout(t))
    }

    /// The sharded program's op producing `t`.
    fn planned(&self, t: TensorId) -> Result<&sharded::ShardedOp, RuntimeError> {
        self.program
            .op(t)
            .ok_or_else(|| unsupported(format!("no sharded op produces %{}", t.0)))
    }

    // ------------------------------------------------------------ kernels

    fn mm(
        &mut self,
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        bp: &[f32],
        bias: Option<&[f32]>,
    ) -> Result<Vec<f32>, RuntimeError> {
        if self.dry {
            self.jit.prepare(&KernelSpec::MatMul {
                k,
                n,
                bias: bias.is_some(),
            })?;
            return Ok(Vec::new());
        }
        let mut c = vec![0.0; m * n];
        self.jit.matmul(m, k, n, a, bp, bias, &mut c)?;
        Ok(c)
    }

    fn ew(&mut self, expr: &Expr, inputs: &[&[f32]], len: usize) -> Result<Vec<f32>, RuntimeError> {
        if self.dry {
            self.jit
                .prepare(&KernelSpec::Elementwise { expr: expr.clone() })?;
            return Ok(Vec::new());
        }
        let mut out = vec![0.0; len];
        self.jit.elementwise(expr, inputs, &mut out)?;
        Ok(out)
    }

    /// Prepared weights of `op` at `path`, made on first use by `make`.
    fn weights(
        &mut self,
        op: &Op,
        path: &[u64],
        make: impl FnOnce(&Self, &[Param]) -> Weights,
    ) -> Weights {
        let key = (op.output.0, path.to_vec());
        if let Some(w) = self.weights.get(&key) {
            return w.clone();
        }
        let w = if self.dry {
            Vec::new()
        } else {
            make(self, &graph::params(&op.kind))
        };
        self.weights.insert(key, w.clone());
        w
    }

    fn record(&mut self, t: TensorId, path: &[u64], l: &Local) {
        let mb = self.mb;
        if let Some(r) = &mut self.records {
            r.push(((t, path.to_vec()), mb, l.layout, l.data.clone()));
        }
    }

    // ------------------------------------------------------------ program

    /// Runs one microbatch of this device's stage. Returns the graph
    /// outputs on the last stage's first tensor-parallel rank.
    fn microbatch(
        &mut self,
        mb: usize,
        chunk: usize,
        inputs: &[Vec<f32>],
    ) -> Result<Option<Vec<Vec<f32>>>, RuntimeError> {
        if self.grad {
            self.tape = Some(Tape::default());
        }
        let outs = self.forward(mb, chunk, inputs)?;
        if let Some(tape) = self.tape.take() {
            self.tapes.insert((mb, chunk), tape);
        }
        Ok(outs)
    }

    /// This device's virtual pipeline stage for model chunk `chunk`, and
    /// the last virtual stage.
    fn virtual_stage(&self, chunk: usize) -> (usize, usize) {
        (
            chunk * self.par.pp + self.stage,
            self.par.pp * self.par.vp - 1,
        )
    }
    /// The devices of the previous and the next virtual stage.
    fn neighbours(&self) -> (usize, usize) {
        let pp = self.par.pp;
        (
            self.rank_of((self.stage + pp - 1) % pp, self.d, self.t),
            self.rank_of((self.stage + 1) % pp, self.d, self.t),
        )
    }

    fn forward(
        &mut self,
        mb: usize,
        chunk: usize,
        inputs: &[Vec<f32>],
    ) -> Result<Option<Vec<Vec<f32>>>, RuntimeError> {
        self.mb = mb;
        self.env.clear();
        self.converted.get_mut().clear();
        for (i, t) in self.g.inputs.iter().enumerate() {
            let data = inputs.get(i).cloned().unwrap_or_default();
            self.put(
                *t,
                Local {
                    layout: Layout::Rep,
                    data,
                },
            );
            self.bind(*t);
        }
        let g = self.g;
        match pipelined_repeat(&g.body).filter(|_| self.par.pp > 1) {
            None => self.items(&g.body, &mut Vec::new())?,
            Some((idx, rep)) => {
                let (k, last) = self.virtual_stage(chunk);
                let range = chunk_layers(&self.par.stage_layers, self.par.vp)[k].clone();
                let (l0, l1) = (range.start, range.end);
                let live = boundary_live(g, idx);
                let (prev, next) = self.neighbours();
                if k == 0 {
                    self.items(&g.body[..idx], &mut Vec::new())?;
                } else {
                    self.recv_boundary(rep, &live, prev)?;
                }
                for i in l0..l1 {
                    for c in &rep.carried {
                        if i == 0 {
                            let v = self.get(c.init)?.clone();
                            self.put(c.param, v);
                            self.alias(c.param, c.init);
                        } else if i > l0 {
                            let v = self.get(c.next)?.clone();
                            self.put(c.param, v);
                            self.alias(c.param, c.next);
                        }
                    }
                    let mut path = vec![i as u64];
                    self.items(&rep.body, &mut path)?;
                }
                if k < last {
                    self.send_boundary(rep, &live, next)?;
                    return Ok(None);
                }
                for c in &rep.carried {
                    let v = self.get(c.next)?.clone();
                    self.put(c.result, v);
                    self.alias(c.result, c.next);
                }
                self.items(&g.body[idx + 1..], &mut Vec::new())?;
            }
        }
        // Gathering the outputs for the comparison is not the model's traffic.
        self.label("");
        let mut outs = Vec::new();
        for (_, t) in &g.outputs {
            outs.push(self.rep(*t)?);
        }
        Ok((self.t == 0).then_some(outs))
    }

    fn send_boundary(
        &mut self,
        rep: &Repeat,
        live: &[TensorId],
        dst: usize,
    ) -> Result<(), RuntimeError> {
        if self.dry {
            return Ok(());
        }
        let tensors: Vec<TensorId> = rep
            .carried
            .iter()
            .map(|c| c.next)
            .chain(live.iter().copied())
            .collect();
        for t in tensors {
            if let Some(tape) = &mut self.tape {
                tape.sent.push(tape.slot(t)?);
            }
            let (layout, data) = self.scattered(t, self.get(t)?)?;
            let mut msg = vec![layout.code()];
            msg.extend_from_slice(&data);
            let prev = self.label("pipeline");
            self.endpoint()?.send(dst, Kind::SendRecv, msg)?;
            self.label(prev);
        }
        Ok(())
    }

    /// What a device sends of `x` (a part of `t`) to the next stage:
    /// Megatron-LM's scatter/gather, each tensor-parallel rank sends only
    /// its block of rows of a whole (or row-block) value when the rows
    /// divide by `tp`; a split value goes as it is.
    fn scattered(&self, t: TensorId, x: &Local) -> Result<(Layout, Vec<f32>), RuntimeError> {
        let rows = self.numel(t) / self.width(t).max(1);
        Ok(match x.layout {
            Layout::Rep | Layout::Rows if Layout::rows_fit(rows, self.par.tp) => {
                (Layout::Rows, self.convert(t, x, Layout::Rows)?)
            }
            Layout::Rows => (Layout::Rep, self.convert(t, x, Layout::Rep)?),
            l => (l, x.data.clone()),
        })
    }

    /// Counts this device's messages from now on under `label` (see
    /// [`crate::comm::Endpoint::label`]); returns the previous label.
    fn label(&self, label: &'static str) -> &'static str {
        self.ep.as_ref().map_or("", |e| e.label(label))
    }

    fn recv_boundary(
        &mut self,
        rep: &Repeat,
        live: &[TensorId],
        src: usize,
    ) -> Result<(), RuntimeError> {
        let tensors: Vec<TensorId> = rep
            .carried
            .iter()
            .map(|c| c.param)
            .chain(live.iter().copied())
            .collect();
        for t in tensors {
            let local = if self.dry {
                Local {
                    layout: Layout::Rep,
                    data: Vec::new(),
                }
            } else {
                let msg = self.endpoint()?.recv(src, Kind::SendRecv)?;
                let layout = Layout::from_code(msg.first().copied().unwrap_or(0.0));
                let data = msg.get(1..).unwrap_or(&[]).to_vec();
                if data.len() != self.local_len(t, layout) {
                    return Err(RuntimeError::new(
                        RCode::R006,
                        format!(
                            "device {} received {} floats for %{}, expected {}",
                            self.rank,
                            data.len(),
                            t.0,
                            self.local_len(t, layout)
                        ),
                    ));
                }
                // Without sequence parallelism the stage works on whole
                // values: the row blocks are all-gathered (Megatron-LM's
                // gather after the scattered send).
                if layout == Layout::Rows && !self.par.sp {
                    let was = self.label("pipeline");
                    let data = self.convert(t, &Local { layout, data }, Layout::Rep);
                    self.label(was);
                    let data = data?;
                    Local {
                        layout: Layout::Rep,
                        data,
                    }
                } else {
                    Local { layout, data }
                }
            };
            self.put(t, local);
            self.bind(t);
            if let Some(tape) = &mut self.tape {
                let s = tape.slot(t)?;
                tape.received.push(s);
            }
        }
        Ok(())
    }

    fn items(&mut self, items: &[Item], path: &mut Vec<u64>) -> Result<(), RuntimeError> {
        for it in items {
            match it {
                Item::Op(op) => self.op(op, path)?,
                Item::Repeat(r) => {
                    for i in 0..r.count {
                        for c in &r.carried {
                            let src = if i == 0 { c.init } else { c.next };
                            let v = self.get(src)?.clone();
                            self.put(c.param, v);
                            self.alias(c.param, src);
                        }
                        path.push(i);
                        self.items(&r.body, path)?;
                        path.pop();
                    }
                    for c in &r.carried {
                        let src = if r.count == 0 { c.init } else { c.next };
                        let v = self.get(src)?.clone();
                        self.put(c.result, v);
                        self.alias(c.result, src);
                    }
                }
            }
        }
        Ok(())
    }

    fn op(&mut self, op: &Op, path: &[u64]) -> Result<(), RuntimeError> {
        if self.fused[op.output.0 as usize] {
            return Ok(());
        }
        self.label("tensor");
        let out = match &op.kind {
            k if is_elementwise(k) => self.elementwise(op)?,
            OpKind::Linear { d_in, d_out, bias } => {
                self.linear(op, path, *d_in as usize, *d_out as usize, *bias)?
            }
            OpKind::MatMul => self.matmul(op)?,
            OpKind::Embedding { vocab, dim } => {
                self.embedding(op, path, *vocab as usize, *dim as usize)?
            }
            OpKind::EmbeddingBag { .. } => self.embedding_bag(op, path)?,
            OpKind::Attention { .. } => self.attention(op, path)?,
            OpKind::RmsNorm { .. } | OpKind::LayerNorm { .. } | OpKind::Softmax => {
                self.row_op(op, path)?
            }
            OpKind::Mlp { dims, activation } => self.mlp(op, path, dims, *activation)?,
            OpKind::Interact { vectors, dim } => {
                let dense = self.rep(op.inputs[0])?;
                let sparse = self.rep(op.inputs[1])?;
                let b = self.shapes[op.inputs[0].0 as usize][0];
                // `vectors` counts the dense vector too.
                let (n, d) = ((*vectors as usize).saturating_sub(1), *dim as usize);
                let data = if self.dry {
                    self.jit.prepare(&KernelSpec::Interact { n, dim: d })?;
                    Vec::new()
                } else {
                    let mut out = vec![0.0; self.numel(op.output)];
                    self.jit.interact(n, d, b, &dense, &sparse, &mut out)?;
                    out
                };
                Local {
                    layout: Layout::Rep,
                    data,
                }
            }
            OpKind::Moe {
                experts,
                top_k,
                d_model,
                d_ff,
            } => self.moe(
                op,
                path,
                *experts as usize,
                *top_k as usize,
                *d_model as usize,
                *d_ff as usize,
            )?,
            OpKind::Reshape => Local {
                layout: Layout::Rep,
                data: self.rep(op.inputs[0])?,
            },
            OpKind::Concat { axis } => {
                let parts: Vec<Vec<f32>> = op
                    .inputs
                    .iter()
                    .map(|i| self.rep(*i))
                    .collect::<Result<_, _>>()?;
                let data = if self.dry {
                    Vec::new()
                } else {
                    let out_shape = &self.shapes[op.output.0 as usize];
                    let outer: usize = out_shape[..*axis].iter().product();
                    let mut out = Vec::with_capacity(numel(out_shape));
                    for o in 0..outer {
                        for (p, i) in parts.iter().zip(&op.inputs) {
                            let chunk: usize = self.shapes[i.0 as usize][*axis..].iter().product();
                            out.extend_from_slice(&p[o * chunk..(o + 1) * chunk]);
                        }
                    }
                    out
                };
                Local {
                    layout: Layout::Rep,
                    data,
                }
            }
            other => {
                return Err(unsupported(format!(
                    "op `{}` is not executed by the runtime",
                    other.name()
                )));
            }
        };
        let mut out = out;
        if self.fault == Some(op.output)
            && let Some(x) = out.data.first_mut()
        {
            *x += 1.0;
        }
        self.record(op.output, path, &out);
        self.put(op.output, out);
        if let Some(tape) = &mut self.tape {
            tape.push(op, path, &self.env[&op.output])?;
        }
        Ok(())
    }

    /// A fused elementwise chain ending at `op`.
    fn elementwise(&mut self, op: &Op) -> Result<Local, RuntimeError> {
        let mut leaves = Vec::new();
        let expr = self.expr_of(op, &mut leaves);
        // The sharded program's layout of the chain's result; every leaf
        // is read in it (a replicated leaf is sliced locally).
        let layout = self.layout(op.output);
        let data: Vec<Vec<f32>> = leaves
            .iter()
            .map(|l| self.as_layout(*l, layout))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&[f32]> = data.iter().map(|v| v.as_slice()).collect();
        let len = self.local_len(op.output, layout);
        let out = self.ew(&expr, &refs, len)?;
        Ok(Local { layout, data: out })
    }

    fn expr_of(&self, op: &Op, leaves: &mut Vec<TensorId>) -> Expr {
        let arg =
            |this: &Self, i: usize, leaves: &mut Vec<TensorId>| this.expr_at(op.inputs[i], leaves);
        match &op.kind {
            OpKind::Activation(a) => Expr::Unary(unary_of(*a), Box::new(arg(self, 0, leaves))),
            OpKind::Scale(c) => Expr::Unary(
                Unary::Scale((*c as f32).to_bits()),
                Box::new(arg(self, 0, leaves)),
            ),
            OpKind::Binary(b) => {
                let x = arg(self, 0, leaves);
                let y = arg(self, 1, leaves);
                Expr::Binary(binary_of(*b), Box::new(x), Box::new(y))
            }
            _ => arg(self, 0, leaves),
        }
    }

    fn expr_at(&self, t: TensorId, leaves: &mut Vec<TensorId>) -> Expr {
        if self.fused[t.0 as usize]
            && let Some(op) = self.producer.get(&t)
        {
            return self.expr_of(op, leaves);
        }
        let i = match leaves.iter().position(|l| *l == t) {
            Some(i) => i,
            None => {
                leaves.push(t);
                leaves.len() - 1
            }
        };
        Expr::Input(i as u8)
    }

    fn linear(
        &mut self,
        op: &Op,
        path: &[u64],
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<Local, RuntimeError> {
        let (tp, t) = (self.par.tp, self.t);
        let row_parallel = self.planned(op.output)?.strategy == Strategy::Row;
        let rows = self.numel(op.inputs[0]) / d_in.max(1);
        if row_parallel {
            let ks = Layout::split(tp).range(d_in, tp, t);
            let kl = ks.len();
            let with_bias = bias && t == 0;
            let w = self.weights(op, path, |dev, ps| {
                let mut v = vec![jit::pack_b(
                    &ps[0].block(&dev.init, op.output, path, ks.clone(), 0..d_out),
                    kl,
                    d_out,
                )];
                if bias {
                    v.push(ps[1].full(&dev.init, op.output, path));
                }
                v
            });
            let xl = self.get(op.inputs[0])?.data.clone();
            let empty = Vec::new();
            let bias_v = if with_bias {
                Some(w.get(1).unwrap_or(&empty).as_slice())
            } else {
                None
            };
            let empty = Vec::new();
            let mut y = self.mm(rows, kl, d_out, &xl, w.first().unwrap_or(&empty), bias_v)?;
            if self.layout(op.output) == Layout::Rows {
                // Sequence parallelism: each rank keeps its block of rows.
                if !self.dry {
                    y = self.endpoint()?.reduce_scatter(&self.tp_group(), &y)?;
                }
                return Ok(Local {
                    layout: Layout::Rows,
                    data: y,
                });
            }
            self.all_reduce_tp(&mut y)?;
            return Ok(Local {
                layout: Layout::Rep,
                data: y,
            });
        }
        // Column-parallel (or plain when tp = 1).
        let layout = self.layout(op.output);
        let cols = layout.range(d_out, tp, t);
        let nl = cols.len();
        let w = self.weights(op, path, |dev, ps| {
            let mut v = vec![jit::pack_b(
                &ps[0].block(&dev.init, op.output, path, 0..d_in, cols.clone()),
                d_in,
                nl,
            )];
            if bias {
                v.push(ps[1].block(&dev.init, op.output, path, 0..1, cols.clone()));
            }
            v
        });
        let xr = self.rep(op.inputs[0])?;
        let empty = Vec::new();
        let y = self.mm(
            rows,
            d_in,
            nl,
            &xr,
            w.first().unwrap_or(&empty),
            if bias {
                Some(w.get(1).unwrap_or(&empty))
            } else {
                None
            },
        )?;
        Ok(Local { layout, data: y })
    }

    fn matmul(&mut self, op: &Op) -> Result<Local, RuntimeError> {
        let planned = self.planned(op.output)?;
        let bl = layout_of(
            planned
                .reads
                .get(1)
                .copied()
                .unwrap_or(sharded::Layout::Rep),
        );
        let layout = layout_of(planned.layout);
        let av = self.rep(op.inputs[0])?;
        let bv = self.as_layout(op.inputs[1], bl)?;
        let ashape = self.shapes[op.inputs[0].0 as usize].clone();
        let r = ashape.len();
        let (m, k) = (ashape[r - 2], ashape[r - 1]);
        let n_full = self.width(op.inputs[1]);
        let n = bl.range(n_full, self.par.tp, self.t).len();
        let count = numel(&ashape) / (m * k).max(1);
        let mut out = Vec::with_capacity(count * m * n);
        for i in 0..count {
            if self.dry {
                self.mm(m, k, n, &[], &[], None)?;
                break;
            }
            let packed = jit::pack_b(&bv[i * k * n..(i + 1) * k * n], k, n);
            let c = self.mm(m, k, n, &av[i * m * k..(i + 1) * m * k], &packed, None)?;
            out.extend_from_slice(&c);
        }
        Ok(Local { layout, data: out })
    }

    fn embedding(
        &mut self,
        op: &Op,
        path: &[u64],
        vocab: usize,
        dim: usize,
    ) -> Result<Local, RuntimeError> {
        let rows = Layout::split(self.par.tp).range(vocab, self.par.tp, self.t);
        let start = rows.start;
        let w = self.weights(op, path, |dev, ps| {
            vec![ps[0].block(&dev.init, op.output, path, rows.clone(), 0..dim)]
        });
        let ids = self.rep(op.inputs[0])?;
        let mut out = vec![0.0; if self.dry { 0 } else { self.numel(op.output) }];
        if self.dry {
            self.jit.prepare(&KernelSpec::Gather {
                dim,
                pooling: 1,
                stride: 1,
            })?;
        } else {
            let empty = Vec::new();
            self.jit.gather(
                dim,
                1,
                1,
                0,
                &ids,
                w.first().unwrap_or(&empty),
                vocab,
                start,
                &mut out,
            )?;
        }
        if self.layout(op.output) == Layout::Rows {
            // Sequence parallelism: the partial lookups are reduce-scattered
            // into the row blocks the residual stream is kept in.
            if !self.dry {
                out = self.endpoint()?.reduce_scatter(&self.tp_group(), &out)?;
            }
            return Ok(Local {
                layout: Layout::Rows,
                data: out,
            });
        }
        self.all_reduce_tp(&mut out)?;
        Ok(Local {
            layout: Layout::Rep,
            data: out,
        })
    }

    /// How table `i` of `n` is sharded over the `size` devices of a stage.
    fn table_shard(&self, i: usize, size: usize) -> TableShard {
        match self.par.tables.get(i).copied() {
            _ if size == 1 => TableShard::Replicated,
            Some(TableShard::Table(o)) => TableShard::Table(o % size),
            Some(s) => s,
            None => TableShard::Table(i % size),
        }
    }

    /// The tables device `o` of the stage serves to others (held whole or
    /// by rows), in table order.
    fn served_by(&self, o: usize, n: usize, size: usize) -> Vec<usize> {
        (0..n)
            .filter(|i| match self.table_shard(*i, size) {
                TableShard::Table(owner) => owner == o,
                TableShard::Row => true,
                TableShard::Replicated => false,
            })
            .collect()
    }

    /// The rows of table `i` (of `rows`) this device holds.
    fn held_rows(&self, i: usize, rows: usize, size: usize, me: usize) -> std::ops::Range<usize> {
        match self.table_shard(i, size) {
            TableShard::Row => block(rows, size, me),
            TableShard::Table(o) if o != me => 0..0,
            _ => 0..rows,
        }
    }

    fn embedding_bag(&mut self, op: &Op, path: &[u64]) -> Result<Local, RuntimeError> {
        let OpKind::EmbeddingBag { tables } = &op.kind else {
            return Err(unsupported("not an embedding_bag"));
        };
        let n = tables.len();
        let dim = tables.first().map_or(0, |t| t.dim as usize);
        let group = self.stage_group();
        let size = group.len();
        let me = group.iter().position(|r| *r == self.rank).unwrap_or(0);
        let held: Vec<std::ops::Range<usize>> = (0..n)
            .map(|i| self.held_rows(i, tables[i].rows as usize, size, me))
            .collect();
        let w = self.weights(op, path, |dev, ps| {
            (0..n)
                .map(|i| ps[i].block(&dev.init, op.output, path, held[i].clone(), 0..dim))
                .collect()
        });
        let ids = self.rep(op.inputs[0])?;
        let b = self.shapes[op.inputs[0].0 as usize][0];
        // Pooled (partial, for row-wise tables) vectors of `cols` for ids
        // laid out `[samples, cols.len()]`: `[samples, cols.len(), dim]`.
        let pool =
            |dev: &mut Self, ids: &[f32], cols: &[usize]| -> Result<Vec<f32>, RuntimeError> {
                let stride = cols.len();
                let samples = ids.len().checked_div(stride).unwrap_or(0);
                let mut out = vec![0.0; if dev.dry { 0 } else { samples * stride * dim }];
                for (j, ti) in cols.iter().enumerate() {
                    let t = &tables[*ti];
                    if dev.dry {
                        dev.jit.prepare(&KernelSpec::Gather {
                            dim,
                            pooling: t.pooling as usize,
                            stride,
                        })?;
                    } else {
                        dev.jit.gather(
                            dim,
                            t.pooling as usize,
                            stride,
                            j,
                            ids,
                            &w[*ti],
                            t.rows as usize,
                            held[*ti].start,
                            &mut out,
                        )?;
                    }
                }
                Ok(out)
            };
        let pick = |ids: &[f32], cols: &[usize]| -> Vec<f32> {
            (0..b)
                .flat_map(|s| cols.iter().map(move |c| ids[s * n + c]))
                .collect()
        };
        let mut out = vec![0.0; if self.dry { 0 } else { b * n * dim }];
        // Tables this device looks up itself.
        let local: Vec<usize> = (0..n)
            .filter(|i| self.table_shard(*i, size) == TableShard::Replicated)
            .collect();
        if !local.is_empty() {
            let ids_l = if self.dry {
                Vec::new()
            } else {
                pick(&ids, &local)
            };
            let pooled = pool(self, &ids_l, &local)?;
            for s in 0..b.min(pooled.len()) {
                for (j, c) in local.iter().enumerate() {
                    let src = &pooled[(s * local.len() + j) * dim..][..dim];
                    out[(s * n + c) * dim..][..dim].copy_from_slice(src);
                }
            }
        }
        if local.len() == n {
            return Ok(Local {
                layout: Layout::Rep,
                data: out,
            });
        }
        let served: Vec<Vec<usize>> = (0..size).map(|o| self.served_by(o, n, size)).collect();
        if self.dry {
            pool(self, &[], &served[me])?;
            return Ok(Local {
                layout: Layout::Rep,
                data: Vec::new(),
            });
        }
        // Ids out to the devices serving each table, pooled vectors back.
        let parts: Vec<Vec<f32>> = served.iter().map(|cols| pick(&ids, cols)).collect();
        self.label("embedding");
        let received = self.endpoint()?.all_to_all(&group, parts)?;
        let mut replies = Vec::with_capacity(size);
        for ids_q in &received {
            replies.push(pool(self, ids_q, &served[me])?);
        }
        let pooled = self.endpoint()?.all_to_all(&group, replies)?;
        for (o, p) in pooled.iter().enumerate() {
            let cols = &served[o];
            for s in 0..b {
                for (j, c) in cols.iter().enumerate() {
                    let src = &p[(s * cols.len() + j) * dim..][..dim];
                    for (a, x) in out[(s * n + c) * dim..][..dim].iter_mut().zip(src) {
                        *a += x;
                    }
                }
            }
        }
        Ok(Local {
            layout: Layout::Rep,
            data: out,
        })
    }

    /// The local attention of `op` given its operands' layouts: the
    /// kernel's spec (local heads and their offsets), the layout the query
    /// (and result) is used in and the layout of the keys and values.
    fn attention_plan(&self, op: &Op) -> Result<(AttentionSpec, Layout, Layout), RuntimeError> {
        let OpKind::Attention {
            heads,
            kv_heads,
            head_dim,
            causal,
            ..
        } = op.kind
        else {
            return Err(unsupported("not attention"));
        };
        let (h, kvh, hd, tp, t) = (
            heads as usize,
            kv_heads as usize,
            head_dim as usize,
            self.par.tp,
            self.t,
        );
        let group = h / kvh.max(1);
        // The sharded program reads q split by heads (or whole) and k, v
        // split into their own blocks (or whole).
        let planned = self.planned(op.output)?;
        let read = |i: usize| {
            layout_of(
                planned
                    .reads
                    .get(i)
                    .copied()
                    .unwrap_or(sharded::Layout::Rep),
            )
        };
        let (q_layout, kv_layout) = (read(0), read(1));
        let (hl, qoff) = if q_layout == Layout::Rep {
            (h, 0)
        } else {
            (h / tp, t * (h / tp))
        };
        let (kv_off, kv_local) = match kv_layout {
            Layout::Split { groups } => {
                let per = kvh / groups.max(1);
                (kv_layout.block_of(tp, t) * per, per)
            }
            _ => (0, kvh),
        };
        // Every local query head must find its key/value head locally.
        let need = (qoff / group, (qoff + hl).saturating_sub(1) / group + 1);
        if need.0 < kv_off || need.1 > kv_off + kv_local {
            return Err(unsupported(format!(
                "attention %{}: query heads {}..{} read key/value heads outside the local block",
                op.output.0,
                qoff,
                qoff + hl
            )));
        }
        let qs = &self.shapes[op.inputs[0].0 as usize];
        let ks = &self.shapes[op.inputs[1].0 as usize];
        let spec = AttentionSpec {
            heads: hl,
            head_dim: hd,
            seq_q: qs[1],
            seq_kv: ks[1],
            group,
            q_head_offset: qoff,
            kv_head_offset: kv_off,
            kv_heads: kv_local,
            causal,
        };
        Ok((spec, q_layout, kv_layout))
    }

    /// With context parallelism, how many sequence chunks of keys the
    /// local queries read: those up to their own (causal) or all.
    fn cp_chunks(&self, spec: &AttentionSpec) -> usize {
        if spec.causal { self.c + 1 } else { self.par.cp }
    }

    /// All-gathers keys (or values) `x [b, chunk, w]` over the
    /// context-parallel group and keeps the first `n` chunks of every
    /// sample: `[b, n * chunk, w]`. Query `i` of chunk `c` then sees key
    /// `j <= i + (n - 1) * chunk`, its global position, under the kernel's
    /// causal rule.
    fn cp_gather(&self, x: &[f32], b: usize, n: usize) -> Result<Vec<f32>, RuntimeError> {
        if self.dry {
            return Ok(Vec::new());
        }
        let was = self.label("context");
        let parts = self.endpoint()?.all_gather(&self.cp_group(), x)?;
        self.label(was);
        let per = x.len() / b.max(1);
        let mut out = Vec::with_capacity(b * n * per);
        for bi in 0..b {
            for p in &parts[..n] {
                out.extend_from_slice(&p[bi * per..(bi + 1) * per]);
            }
        }
        Ok(out)
    }

    /// The adjoint of [`Dev::cp_gather`]: gradients `dx [b, n * chunk, w]`
    /// summed over the group into each rank's own chunk.
    fn cp_scatter(&self, dx: &[f32], b: usize, n: usize) -> Result<Vec<f32>, RuntimeError> {
        let per = dx.len() / (b * n).max(1);
        let mut buf = vec![0.0; self.par.cp * b * per];
        for bi in 0..b {
            for c in 0..n {
                buf[(c * b + bi) * per..][..per].copy_from_slice(&dx[(bi * n + c) * per..][..per]);
            }
        }
        let was = self.label("context");
        let out = self.endpoint()?.reduce_scatter(&self.cp_group(), &buf);
        self.label(was);
        out
    }

    fn attention(&mut self, op: &Op, path: &[u64]) -> Result<Local, RuntimeError> {
        let (mut spec, q_layout, kv_layout) = self.attention_plan(op)?;
        let q = self.as_layout(op.inputs[0], q_layout)?;
        let mut k = self.as_layout(op.inputs[1], kv_layout)?;
        let mut v = self.as_layout(op.inputs[2], kv_layout)?;
        let b = self.shapes[op.inputs[0].0 as usize][0];
        if self.par.cp > 1 {
            let n = self.cp_chunks(&spec);
            spec.seq_kv *= n;
            k = self.cp_gather(&k, b, n)?;
            v = self.cp_gather(&v, b, n)?;
        }
        let key = (self.mb, op.output.0, path.to_vec());
        if self.dry {
            spec.seq_kv += self.dry_context;
        }
        if self.kv_record && !self.dry {
            self.kv_cache.insert(key, (k.clone(), v.clone()));
        } else if let Some((ck, cv)) = self.kv_cache.get(&key) {
            // Decode: each sample's cached keys and values, then the step's.
            let step = k.len() / b.max(1);
            let past = ck.len() / b.max(1);
            let join = |cached: &[f32], new: &[f32]| -> Vec<f32> {
                (0..b)
                    .flat_map(|bi| {
                        cached[bi * past..(bi + 1) * past]
                            .iter()
                            .chain(&new[bi * step..(bi + 1) * step])
                            .copied()
                    })
                    .collect()
            };
            spec.seq_kv += past / (step / spec.seq_kv.max(1)).max(1);
            k = join(ck, &k);
            v = join(cv, &v);
        }
        let data = if self.dry {
            self.jit.prepare(&KernelSpec::Attention(spec))?;
            Vec::new()
        } else {
            let mut out = vec![0.0; q.len()];
            self.jit.attention(&spec, b, &q, &k, &v, &mut out)?;
            out
        };
        Ok(Local {
            layout: q_layout,
            data,
        })
    }

    fn row_op(&mut self, op: &Op, path: &[u64]) -> Result<Local, RuntimeError> {
        // Row blocks are normalized where they are; anything else is read
        // whole (a feature split is gathered) and the result is whole.
        let layout = self.layout(op.output);
        let x = if layout == Layout::Rows {
            self.get(op.inputs[0])?.data.clone()
        } else {
            self.rep(op.inputs[0])?
        };
        let dim = self.width(op.inputs[0]);
        let w = self.weights(op, path, |dev, ps| {
            ps.iter()
                .map(|p| p.full(&dev.init, op.output, path))
                .collect()
        });
        let full = if self.dry {
            let spec = match op.kind {
                OpKind::RmsNorm { .. } => KernelSpec::RmsNorm { dim },
                OpKind::LayerNorm { .. } => KernelSpec::LayerNorm { dim },
                _ => KernelSpec::Softmax { dim },
            };
            self.jit.prepare(&spec)?;
            Vec::new()
        } else {
            let mut out = vec![0.0; x.len()];
            match op.kind {
                OpKind::RmsNorm { .. } => self.jit.rmsnorm(dim, &x, &w[0], &mut out)?,
                OpKind::LayerNorm { .. } => self.jit.layernorm(dim, &x, &w[0], &w[1], &mut out)?,
                _ => self.jit.softmax(dim, &x, &mut out)?,
            }
            out
        };
        Ok(Local { layout, data: full })
    }

    /// Sends `[expert, token row]` records to the expert owners (an
    /// all-to-all over the expert-parallel group). Returns, per owner, the
    /// `(token, choice)` pairs sent (in record order) and, per sender, the
    /// records received.
    #[allow(clippy::type_complexity)]
    fn moe_dispatch(
        &self,
        x: &[f32],
        choices: &[Vec<(usize, f32)>],
        d: usize,
        experts: usize,
    ) -> Result<(Vec<Vec<(usize, usize)>>, Vec<Vec<f32>>), RuntimeError> {
        let ep = self.par.ep;
        let per_owner = experts / ep;
        let mut sent: Vec<Vec<(usize, usize)>> = vec![Vec::new(); ep];
        let mut parts: Vec<Vec<f32>> = vec![Vec::new(); ep];
        for (tk, ch) in choices.iter().enumerate() {
            for (c, (e, _)) in ch.iter().enumerate() {
                let o = e / per_owner.max(1);
                sent[o].push((tk, c));
                parts[o].push(*e as f32);
                parts[o].extend_from_slice(&x[tk * d..(tk + 1) * d]);
            }
        }
        Ok((sent, self.ep_exchange(parts)?))
    }

    /// An all-to-all over the expert-parallel group (the identity at `ep = 1`).
    fn ep_exchange(&self, parts: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, RuntimeError> {
        if self.par.ep > 1 {
            let was = self.label("expert");
            let out = self.endpoint()?.all_to_all(&self.ep_group(), parts);
            self.label(was);
            out
        } else {
            Ok(parts)
        }
    }

    fn mlp(
        &mut self,
        op: &Op,
        path: &[u64],
        dims: &[u64],
        act: Activation,
    ) -> Result<Local, RuntimeError> {
        let widths = graph::mlp_widths(dims);
        let w = self.weights(op, path, |dev, ps| {
            let mut v = Vec::new();
            for l in 0..widths.len() - 1 {
                v.push(jit::pack_b(
                    &ps[2 * l].full(&dev.init, op.output, path),
                    widths[l],
                    widths[l + 1],
                ));
                v.push(ps[2 * l + 1].full(&dev.init, op.output, path));
            }
            v
        });
        let mut h = self.rep(op.inputs[0])?;
        let rows = self.numel(op.inputs[0]) / widths[0].max(1);
        let expr = Expr::Unary(unary_of(act), Box::new(Expr::Input(0)));
        let empty = Vec::new();
        for l in 0..widths.len() - 1 {
            let y = self.mm(
                rows,
                widths[l],
                widths[l + 1],
                &h,
                w.get(2 * l).unwrap_or(&empty),
                Some(w.get(2 * l + 1).unwrap_or(&empty)),
            )?;
            h = self.ew(&expr, &[&y], rows * widths[l + 1])?;
        }
        Ok(Local {
            layout: Layout::Rep,
            data: h,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn moe(
        &mut self,
        op: &Op,
        path: &[u64],
        experts: usize,
        top_k: usize,
        d: usize,
        f: usize,
    ) -> Result<Local, RuntimeError> {
        let (tp, t, ep) = (self.par.tp, self.t, self.par.ep);
        let fl = Layout::split(tp).range(f, tp, t);
        let flen = fl.len();
        let ep_rank = self.d % ep;
        let local_experts = block(experts, ep, ep_rank);
        let first = local_experts.start;
        let w = self.weights(op, path, |dev, ps| {
            let mut v = vec![jit::pack_b(
                &ps[0].full(&dev.init, op.output, path),
                d,
                experts,
            )];
            for e in local_experts.clone() {
                v.push(jit::pack_b(
                    &ps[1 + 3 * e].block(&dev.init, op.output, path, 0..d, fl.clone()),
                    d,
                    flen,
                ));
                v.push(jit::pack_b(
                    &ps[2 + 3 * e].block(&dev.init, op.output, path, 0..d, fl.clone()),
                    d,
                    flen,
                ));
                v.push(jit::pack_b(
                    &ps[3 + 3 * e].block(&dev.init, op.output, path, fl.clone(), 0..d),
                    flen,
                    d,
                ));
            }
            v
        });
        let swiglu = Expr::Binary(
            Binary::Mul,
            Box::new(Expr::Unary(Unary::Silu, Box::new(Expr::Input(0)))),
            Box::new(Expr::Input(1)),
        );
        let x = self.rep(op.inputs[0])?;
        if self.dry {
            self.mm(0, d, experts, &[], &[], None)?;
            self.mm(0, d, flen, &[], &[], None)?;
            self.ew(&swiglu, &[], 0)?;
            self.mm(0, flen, d, &[], &[], None)?;
            return Ok(Local {
                layout: Layout::Rep,
                data: Vec::new(),
            });
        }
        let tokens = x.len() / d.max(1);
        let logits = self.mm(tokens, d, experts, &x, &w[0], None)?;
        let choices = route(&logits, experts, top_k);
        let (sent, received) = self.moe_dispatch(&x, &choices, d, experts)?;
        let mut replies = Vec::with_capacity(received.len());
        for msg in &received {
            let recs = msg.len() / (d + 1);
            let mut reply = vec![0.0; recs * d];
            for e in local_experts.clone() {
                let Some((rows, xe)) = expert_rows(msg, d, e) else {
                    continue;
                };
                let base = 1 + 3 * (e - first);
                let a = self.mm(rows.len(), d, flen, &xe, &w[base], None)?;
                let b = self.mm(rows.len(), d, flen, &xe, &w[base + 1], None)?;
                let hgate = self.ew(&swiglu, &[&a, &b], a.len())?;
                let y = self.mm(rows.len(), flen, d, &hgate, &w[base + 2], None)?;
                for (i, r) in rows.iter().enumerate() {
                    reply[r * d..(r + 1) * d].copy_from_slice(&y[i * d..(i + 1) * d]);
                }
            }
            replies.push(reply);
        }
        let back = self.ep_exchange(replies)?;
        if self.grad {
            // The backward pass reuses the routing and the exchanges.
            self.moe_saved.insert(
                (self.mb, op.output.0, path.to_vec()),
                MoeSaved {
                    choices: choices.clone(),
                    sent: sent.clone(),
                    received: received.clone(),
                    back: back.clone(),
                },
            );
        }
        let mut ys: HashMap<(usize, usize), &[f32]> = HashMap::new();
        for (o, recs) in sent.iter().enumerate() {
            for (i, key) in recs.iter().enumerate() {
                ys.insert(*key, &back[o][i * d..(i + 1) * d]);
            }
        }
        let mut out = vec![0.0f32; x.len()];
        for (tk, ch) in choices.iter().enumerate() {
            for (c, (_, gate)) in ch.iter().enumerate() {
                if let Some(y) = ys.get(&(tk, c)) {
                    for j in 0..d {
                        out[tk * d + j] += gate * y[j];
                    }
                }
            }
        }
        self.all_reduce_tp(&mut out)?;
        Ok(Local {
            layout: Layout::Rep,
            data: out,
        })
    }
}

/// The records of dispatch message `msg` (`[expert, token row]` records
/// of `d + 1` floats) for expert `e`: their indices and token rows, or
/// `None` when there are none.
fn expert_rows(msg: &[f32], d: usize, e: usize) -> Option<(Vec<usize>, Vec<f32>)> {
    let recs = msg.len() / (d + 1);
    let rows: Vec<usize> = (0..recs)
        .filter(|r| msg[r * (d + 1)] as usize == e)
        .collect();
    if rows.is_empty() {
        return None;
    }
    let mut xe = Vec::with_capacity(rows.len() * d);
    for r in &rows {
        xe.extend_from_slice(&msg[r * (d + 1) + 1..(r + 1) * (d + 1)]);
    }
    Some((rows, xe))
}

/// MoE routing of every token: the `top_k` largest logits (ties to the
/// lower expert) with softmax gates over the chosen logits.
fn route(logits: &[f32], experts: usize, top_k: usize) -> Vec<Vec<(usize, f32)>> {
    logits
        .chunks(experts.max(1))
        .map(|row| {
            let mut order: Vec<usize> = (0..experts).collect();
            order.sort_by(|a, b| row[*b].total_cmp(&row[*a]).then(a.cmp(b)));
            order.truncate(top_k);
            let max = order
                .iter()
                .map(|e| row[*e])
                .fold(f32::NEG_INFINITY, f32::max);
            let ex: Vec<f32> = order.iter().map(|e| (row[*e] - max).exp()).collect();
            let sum: f32 = ex.iter().sum();
            order
                .into_iter()
                .zip(ex)
                .map(|(e, x)| (e, x / sum))
                .collect()
        })
        .collect()
}

fn count_uses(items: &[Item], uses: &mut [u32]) {
    for it in items {
        match it {
            Item::Op(op) => {
                for i in &op.inputs {
                    uses[i.0 as usize] += 1;
                }
            }
            Item::Repeat(r) => {
                for c in &r.carried {
                    uses[c.init.0 as usize] += 1;
                    uses[c.next.0 as usize] += 1;
                }
                count_uses(&r.body, uses);
            }
        }
    }
}

/// Marks elementwise ops computed inside their only consumer, an
/// elementwise op of the same block.
fn mark_fused(items: &[Item], uses: &[u32], fused: &mut [bool]) {
    let mut elementwise_here: BTreeSet<TensorId> = BTreeSet::new();
    for it in items {
        match it {
            Item::Op(op) => {
                if is_elementwise(&op.kind) {
                    for i in &op.inputs {
                        if elementwise_here.contains(i) && uses[i.0 as usize] == 1 {
                            fused[i.0 as usize] = true;
                        }
                    }
                    elementwise_here.insert(op.output);
                }
            }
            Item::Repeat(r) => mark_fused(&r.body, uses, fused),
        }
    }
}

fn inputs_of(items: &[Item], out: &mut BTreeSet<TensorId>) {
    for it in items {
        match it {
            Item::Op(op) => out.extend(op.inputs.iter().copied()),
            Item::Repeat(r) => {
                out.extend(r.carried.iter().map(|c| c.init));
                inputs_of(&r.body, out);
            }
        }
    }
}

fn outputs_of(items: &[Item], out: &mut BTreeSet<TensorId>) {
    for it in items {
        match it {
            Item::Op(op) => {
                out.insert(op.output);
            }
            Item::Repeat(r) => out.extend(r.carried.iter().map(|c| c.result)),
        }
    }
}

/// Tensors made before the pipelined repeat (at index `idx`) that later
/// stages read, other than the repeat's carried values.
/// The values made before the pipelined `repeat` (at `idx`) that the
/// repeat, what follows it or the graph's outputs read: they travel with
/// every stage boundary.
fn boundary_live(g: &Graph, idx: usize) -> Vec<TensorId> {
    let items = &g.body;
    let mut made = BTreeSet::new();
    outputs_of(&items[..idx], &mut made);
    for t in &g.inputs {
        made.remove(t);
    }
    let mut read: BTreeSet<TensorId> = g.outputs.iter().map(|(_, t)| *t).collect();
    if let Item::Repeat(r) = &items[idx] {
        inputs_of(&r.body, &mut read);
    }
    inputs_of(&items[idx + 1..], &mut read);
    made.intersection(&read).copied().collect()
}

/// The design point in one line (for the CLI and messages).
pub fn describe(par: &Parallel) -> String {
    format!(
        "dp={} tp={} pp={} cp={} ep={} zero={} microbatch={} stage layers {:?}{}{}",
        par.dp,
        par.tp,
        par.pp,
        par.cp,
        par.ep,
        par.zero,
        par.microbatch,
        par.stage_layers,
        if par.vp > 1 {
            format!(" in {} virtual stages each", par.vp)
        } else {
            String::new()
        },
        if par.sp && par.tp > 1 {
            " sequence-parallel"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_f_one_b_orders_warmup_steady_cooldown() {
        use Action::*;
        assert_eq!(
            one_f_one_b(1, 0, 2),
            vec![Forward(0), Backward(0), Forward(1), Backward(1)]
        );
        assert_eq!(
            one_f_one_b(3, 0, 3),
            vec![
                Forward(0),
                Forward(1),
                Forward(2),
                Backward(0),
                Backward(1),
                Backward(2)
            ]
        );
        assert_eq!(
            one_f_one_b(3, 1, 3),
            vec![
                Forward(0),
                Forward(1),
                Backward(0),
                Forward(2),
                Backward(1),
                Backward(2)
            ]
        );
        assert_eq!(even_split(5, 2), vec![2, 3]);
    }
}

#[cfg(test)]
mod run_tests {
    use super::*;

    pub(super) const SRC: &str = "model T(d = 16, heads = 4, kv = 2, layers = 2) {
  input tokens: i32[batch, seq]
  x = embedding(tokens, 50, d)
  repeat layers {
    h = rmsnorm(x)
    q = linear(h, d, d)
    k = linear(h, d, d / heads * kv)
    v = linear(h, d, d / heads * kv)
    a = attention(q, k, v, heads = heads, kv_heads = kv, causal = true)
    x = x + linear(a, d, d, bias = true)
    h = layernorm(x)
    x = x + linear(silu(linear(h, d, 2 * d)) * linear(h, d, 2 * d), 2 * d, d)
  }
  output logits = linear(rmsnorm(x), d, 50)
}
workload w {
  model T
  train { seq = 5, global_batch = 4, dtype = fp32 }
}
";

    pub(super) fn workload() -> Workload {
        let c = gantry_lang::check::check_source("t.gantry", SRC);
        assert!(!c.has_errors(), "{}", c.render(false));
        c.program.workloads["w"].clone()
    }

    #[test]
    fn sharded_runs_match_reference() {
        let w = workload();
        for (dp, tp, pp, mb) in [
            (1, 1, 1, 4),
            (2, 1, 1, 1),
            (1, 2, 1, 2),
            (1, 4, 1, 4),
            (1, 1, 2, 1),
            (2, 2, 2, 1),
        ] {
            let par = Parallel {
                dp,
                tp,
                pp,
                ep: 1,
                cp: 1,
                vp: 1,
                tables: Vec::new(),
                zero: 0,
                microbatch: mb,
                stage_layers: even_split(2, pp),
                sp: false,
            };
            let r = run(&w, &par, &RunConfig::default()).expect("runs");
            assert!(r.passed(), "dp={dp} tp={tp} pp={pp}: {:?}", r);
        }
    }

    #[test]
    fn sequence_parallel_runs_match_reference_op_by_op() {
        let w = workload();
        let g = &w.model.graph;
        let cfg = RunConfig {
            check_all: true,
            ..RunConfig::default()
        };
        let init = Init::new(cfg.seed);
        let gshapes = graph::shapes(g, &w.bindings).expect("shapes");
        let inputs: Vec<Vec<f32>> = g
            .inputs
            .iter()
            .map(|i| graph::input_values(g, *i, &gshapes[i.0 as usize], &init))
            .collect();
        // (dp, tp, pp, microbatch, rows split): 5 rows per sample, so a
        // microbatch of 1 cannot be cut into 2 row blocks (all-reduce).
        for (dp, tp, pp, mb, split) in [
            (1, 2, 1, 4, true),
            (1, 4, 1, 4, true),
            (1, 2, 2, 2, true),
            (2, 2, 2, 1, false),
        ] {
            let par = Parallel {
                dp,
                tp,
                pp,
                ep: 1,
                cp: 1,
                vp: 1,
                tables: Vec::new(),
                zero: 0,
                microbatch: mb,
                stage_layers: even_split(2, pp),
                sp: true,
            };
            let r = run(&w, &par, &cfg).expect("runs");
            assert!(r.passed(), "dp={dp} tp={tp} pp={pp}: {r:?}");
            assert!(r.divergence.is_none(), "{:?}", r.divergence);
            assert!(r.outputs.iter().all(|o| o.max_rel <= 1e-4), "{r:?}");
            let (res, _) = simulate_devices(&w, &par, &cfg, &inputs, true, None).expect("runs");
            let rows = res
                .iter()
                .flat_map(|d| &d.records)
                .filter(|(_, _, l, _)| *l == Layout::Rows)
                .count();
            assert_eq!(
                rows > 0,
                split,
                "dp={dp} tp={tp} pp={pp}: {rows} row-split values"
            );
        }
    }

    #[test]
    fn divergence_names_the_first_diverging_op() {
        let w = workload();
        // The first attention op of the body.
        let att = graph::ops(&w.model.graph.body)
            .into_iter()
            .find(|o| matches!(o.kind, OpKind::Attention { .. }))
            .expect("attention")
            .output;
        let par = Parallel {
            dp: 1,
            tp: 2,
            pp: 2,
            ep: 1,
            cp: 1,
            vp: 1,
            tables: Vec::new(),
            zero: 0,
            microbatch: 2,
            stage_layers: vec![1, 1],
            sp: false,
        };
        let cfg = RunConfig {
            fault: Some(att),
            ..RunConfig::default()
        };
        let r = run(&w, &par, &cfg).expect("runs");
        assert!(!r.passed());
        let d = r.divergence.clone().expect("located");
        assert_eq!(d.op, format!("attention %{} (iteration 0)", att.0));
        assert_eq!(d.device, 0);
        let e = r.error().expect("an error");
        assert_eq!(e.code, RCode::R001);
        assert!(
            e.message.contains("first diverging op: attention"),
            "{}",
            e.message
        );
    }
}

#[cfg(test)]
mod grad_tests {
    use super::run_tests::workload;
    use super::*;

    fn par(dp: usize, tp: usize, pp: usize, mb: usize, sp: bool) -> Parallel {
        Parallel {
            dp,
            tp,
            pp,
            ep: 1,
            cp: 1,
            vp: 1,
            tables: Vec::new(),
            zero: 0,
            microbatch: mb,
            stage_layers: even_split(2, pp),
            sp,
        }
    }

    #[test]
    fn sharded_gradients_match_reference() {
        let w = workload();
        let cfg = RunConfig {
            gradients: true,
            ..RunConfig::default()
        };
        for p in [
            par(1, 1, 1, 4, false),
            par(2, 1, 1, 1, false),
            par(1, 2, 1, 2, false),
            par(1, 4, 1, 4, false),
            par(1, 2, 1, 4, true),
            par(1, 1, 2, 1, false),
            par(2, 2, 2, 1, false),
            par(1, 2, 2, 2, true),
        ] {
            let r = run(&w, &p, &cfg).expect("runs");
            let g = r.gradients.as_ref().expect("gradients");
            eprintln!("{}: {:?}", describe(&p), g);
            assert!(r.passed(), "{}: {:?}", describe(&p), r);
            assert!(g.params > 0 && g.blocks >= g.params);
        }
    }

    /// Context parallelism and interleaved pipelines, forward and backward:
    /// 4 layers, sequences of 6.
    #[test]
    fn context_parallel_and_interleaved_runs_match_reference() {
        let src = super::run_tests::SRC
            .replace("layers = 2", "layers = 4")
            .replace("seq = 5", "seq = 6");
        let c = gantry_lang::check::check_source("t.gantry", &src);
        assert!(!c.has_errors(), "{}", c.render(false));
        let w = c.program.workloads["w"].clone();
        let cfg = RunConfig {
            gradients: true,
            ..RunConfig::default()
        };
        // (dp, tp, pp, cp, vp, microbatch, sp)
        for (dp, tp, pp, cp, vp, mb, sp) in [
            (1, 1, 1, 2, 1, 4, false),
            (1, 1, 1, 3, 1, 2, false),
            (1, 2, 1, 2, 1, 4, false),
            (1, 2, 1, 2, 1, 4, true),
            (2, 2, 2, 2, 1, 1, false),
            (1, 1, 2, 1, 2, 1, false),
            (1, 2, 2, 1, 2, 2, true),
            (1, 1, 4, 1, 1, 1, false),
            (2, 1, 2, 2, 2, 1, false),
        ] {
            let p = Parallel {
                dp,
                tp,
                pp,
                cp,
                vp,
                microbatch: mb,
                stage_layers: even_split(4, pp),
                sp,
                ..Parallel::default()
            };
            let r =
                run(&w, &p, &cfg).unwrap_or_else(|e| panic!("{}: {}", describe(&p), e.render()));
            let g = r.gradients.as_ref().expect("gradients");
            eprintln!("{}: outputs {:?}, {:?}", describe(&p), r.outputs, g);
            assert!(r.passed(), "{}: {:?}", describe(&p), r);
            assert_eq!(g.zero_params, 0, "{}", describe(&p));
        }
    }

    #[test]
    fn interleaved_schedule_is_megatrons() {
        use Action::*;
        // pp = 2, two chunks, 2 microbatches: stage 1 warms up with
        // (2 - 1 - 1) * 2 + (2 - 1) * 2 = 2 forwards.
        assert_eq!(
            schedule(2, 2, 1, 2),
            vec![
                (Forward(0), 0),
                (Forward(1), 0),
                (Forward(0), 1),
                (Backward(0), 1),
                (Forward(1), 1),
                (Backward(1), 1),
                (Backward(0), 0),
                (Backward(1), 0),
            ]
        );
        // Every stage runs every (microbatch, chunk) once each way.
        for stage in 0..4 {
            let s = schedule(4, 3, stage, 8);
            assert_eq!(s.len(), 2 * 8 * 3);
            for mb in 0..8 {
                for c in 0..3 {
                    assert_eq!(s.iter().filter(|x| **x == (Forward(mb), c)).count(), 1);
                    assert_eq!(s.iter().filter(|x| **x == (Backward(mb), c)).count(), 1);
                }
            }
        }
        assert_eq!(chunk_layers(&[3, 4], 2), vec![0..1, 1..3, 3..5, 5..7]);
    }

    /// A decode step reads the prompt's keys and values from its cache:
    /// its outputs match the last position of the whole sequence, which
    /// differ from the step run alone.
    #[test]
    fn decode_steps_read_the_kv_cache() {
        let src = super::run_tests::SRC.replace(
            "train { seq = 5, global_batch = 4, dtype = fp32 }",
            "decode { batch = 4, context = 5, dtype = fp32 }",
        );
        let c = gantry_lang::check::check_source("t.gantry", &src);
        assert!(!c.has_errors(), "{}", c.render(false));
        let w = c.program.workloads["w"].clone();
        assert_eq!(w.bindings.get("seq"), Some(&1));
        for (dp, tp, pp, mb) in [(1, 1, 1, 4), (2, 2, 1, 2), (1, 4, 2, 1), (1, 2, 2, 2)] {
            let p = Parallel {
                microbatch: mb,
                stage_layers: even_split(2, pp),
                ..par(dp, tp, pp, mb, tp > 1)
            };
            let r = run(&w, &p, &RunConfig::default()).expect("runs");
            assert!(r.passed(), "{}: {r:?}", describe(&p));
            assert_eq!(r.outputs[0].shape, vec![4, 1, 50]);
        }
        // Without the cache the step's logits are another function.
        let g = &w.model.graph;
        let init = Init::new(0);
        let alone = reference::run(g, &w.bindings, &init, None, false).expect("runs");
        let mut whole_b = w.bindings.clone();
        whole_b.insert("seq".into(), 6);
        let shapes = graph::shapes(g, &whole_b).expect("shapes");
        let inputs: Vec<Vec<f32>> = g
            .inputs
            .iter()
            .map(|i| graph::input_values(g, *i, &shapes[i.0 as usize], &init))
            .collect();
        // The step alone, fed the same last token.
        let last: Vec<Vec<f32>> = inputs
            .iter()
            .map(|x| x.chunks(6).map(|s| s[5]).collect())
            .collect();
        let alone_last = reference::run(g, &w.bindings, &init, Some(last), false).expect("runs");
        let whole = reference::run(g, &whole_b, &init, Some(inputs), false).expect("runs");
        let want: Vec<f32> = whole.outputs[0]
            .2
            .chunks(6 * 50)
            .flat_map(|s| s[5 * 50..].to_vec())
            .collect();
        let (_, rel) = graph::compare(&alone_last.outputs[0].2, &want);
        assert!(
            rel > 1e-2,
            "the prompt changes the step's logits ({rel:.2e})"
        );
        assert_eq!(alone.outputs[0].1, vec![4, 1, 50]);
    }

    /// ZeRO's sharded optimizer step equals the replicated one bit for
    /// bit and holds a 1/dp share of the state; a device that updates the
    /// wrong part is caught.
    #[test]
    fn zero_steps_equal_the_replicated_step() {
        let w = workload();
        for zero in 0..=3u8 {
            let p = Parallel {
                zero,
                ..par(4, 1, 1, 1, false)
            };
            let cfg = RunConfig {
                gradients: true,
                ..RunConfig::default()
            };
            let r = run(&w, &p, &cfg).expect("runs");
            let s = r.step.as_ref().expect("a step");
            assert!(r.passed(), "zero={zero}: {s:?}");
            assert_eq!(s.optimizer, "adam");
            if zero == 0 {
                assert_eq!(s.state, s.state_unsharded);
            } else {
                // Every block is shared by the 4 replicas.
                assert!(4 * s.state <= s.state_unsharded + 4 * 25, "{s:?}");
            }
            let bad = run(
                &w,
                &p,
                &RunConfig {
                    step_fault: true,
                    ..cfg
                },
            )
            .expect("runs");
            if zero > 0 {
                assert!(!bad.passed());
                let e = bad.error().expect("an error");
                assert!(e.message.contains("step of"), "{}", e.message);
            }
        }
    }

    /// A model with two top-level `repeat`s: the larger is pipelined, the
    /// other runs on the first virtual stage (as the cost model splits it).
    #[test]
    fn models_with_several_repeats_pipeline_the_largest() {
        let src = "model Two(d = 16, layers = 2) {
  input tokens: i32[batch, seq]
  x = embedding(tokens, 40, d)
  repeat layers {
    x = x + linear(relu(linear(rmsnorm(x), d, 2 * d)), 2 * d, d)
  }
  x = linear(x, d, d)
  repeat 2 * layers {
    x = x + linear(silu(linear(rmsnorm(x), d, 2 * d)), 2 * d, d)
  }
  output logits = linear(rmsnorm(x), d, 40)
}
workload w {
  model Two
  train { seq = 4, global_batch = 4, dtype = fp32 }
}
";
        let c = gantry_lang::check::check_source("t.gantry", src);
        assert!(!c.has_errors(), "{}", c.render(false));
        let w = c.program.workloads["w"].clone();
        let cfg = RunConfig {
            gradients: true,
            ..RunConfig::default()
        };
        for (pp, vp, tp) in [(2, 1, 1), (2, 2, 2), (4, 1, 1)] {
            let p = Parallel {
                vp,
                stage_layers: even_split(4, pp),
                ..par(1, tp, pp, 1, false)
            };
            let r = run(&w, &p, &cfg).unwrap_or_else(|e| panic!("{}", e.render()));
            assert!(r.passed(), "{}: {r:?}", describe(&p));
            assert_eq!(r.gradients.as_ref().map(|g| g.zero_params), Some(0));
        }
    }

    /// Values made before the pipelined `repeat` reach the last stage when
    /// an output or a later elementwise op reads them (and are not fused
    /// into a consumer on another stage).
    #[test]
    fn values_before_the_pipeline_cross_it() {
        for (read, out) in [("x + e", "\n  output emb = e"), ("x + e", "")] {
            let src = format!(
                "model T(d = 16, layers = 2) {{
  input tokens: i32[batch, seq]
  x = embedding(tokens, 50, d)
  e = silu(x)
  repeat layers {{
    x = x + linear(relu(linear(rmsnorm(x), d, 2 * d)), 2 * d, d)
  }}
  output logits = linear(rmsnorm({read}), d, 50){out}
}}
workload w {{
  model T
  train {{ seq = 4, global_batch = 4, dtype = fp32 }}
}}
"
            );
            let c = gantry_lang::check::check_source("t.gantry", &src);
            assert!(!c.has_errors(), "{}", c.render(false));
            let w = c.program.workloads["w"].clone();
            for gradients in [false, true] {
                let cfg = RunConfig {
                    gradients,
                    ..RunConfig::default()
                };
                let p = par(1, 1, 2, 1, false);
                let r = run(&w, &p, &cfg).unwrap_or_else(|e| panic!("{src}: {}", e.render()));
                assert!(r.passed(), "{src}: {r:?}");
            }
        }
    }

    #[test]
    fn a_wrong_gradient_is_named() {
        let w = workload();
        let g = &w.model.graph;
        // The first column-parallel linear of the layers.
        let target = graph::ops(&g.body)
            .iter()
            .find(|o| matches!(o.kind, OpKind::Linear { .. }))
            .map(|o| o.output)
            .expect("a linear");
        let cfg = RunConfig {
            gradients: true,
            grad_fault: Some(target),
            ..RunConfig::default()
        };
        let r = run(&w, &par(2, 2, 1, 1, false), &cfg).expect("runs");
        assert!(!r.passed());
        assert!(
            r.outputs.iter().all(|o| o.max_rel <= 1e-4),
            "outputs are fine"
        );
        let e = r.error().expect("an error");
        assert_eq!(e.code, RCode::R001);
        assert!(
            e.message.contains(&format!("linear %{}", target.0)),
            "{}",
            e.message
        );
    }
}
