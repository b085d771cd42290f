//! Memory per device: one function for the cost model's evaluation and for
//! the search's pruning bound.
//!
//! [`Evaluator::state_memory`] gives the bytes per device that depend only
//! on the parameters a device holds and on the point's sharding (tp, pp,
//! cp, dp, ep, ZeRO stage): weights, gradients, optimizer state, its share
//! of the embedding tables and the reserve. The evaluator adds the
//! activations (training) or the KV cache (inference) to it; the search's
//! bound, [`Evaluator::memory_floor`], is the same function at the fewest
//! parameters any stage split can leave on the most loaded device, with the
//! activation-dependent terms at their minimum. Every term is a
//! non-negative multiple of the parameters held, so the bound never exceeds
//! the evaluated memory (`compiler/tests/search_bound.rs` checks it over
//! random points of every example).

use gantry_lang::program::{Optimizer, Phase};

use crate::cost::{Evaluator, Memory};
use crate::ir::{Class, Ir, IrOp, SegmentKind};
use crate::point::DesignPoint;

/// Optimizer-state values per parameter, kept in fp32: Adam, AdamW and
/// LAMB two moments, Adagrad the sum of squared gradients, SGD with
/// momentum its buffer, plain SGD (as the DLRM references run it) and
/// Adafactor (no first moment; its second moment is factored, see
/// [`factored_states`]) none.
pub fn optimizer_states(opt: Optimizer) -> f64 {
    match opt {
        Optimizer::Adam | Optimizer::AdamW | Optimizer::Lamb => 2.0,
        Optimizer::Adagrad | Optimizer::SgdMomentum => 1.0,
        Optimizer::Sgd | Optimizer::Adafactor => 0.0,
    }
}

/// fp32 state values per factored value of the parameters
/// ([`IrOp::factored`]: `rows + cols` per weight matrix, the whole of a
/// vector): Adafactor's row and column statistics of the second moment,
/// 1; every other optimizer keeps per-parameter state only, 0.
pub fn factored_states(opt: Optimizer) -> f64 {
    match opt {
        Optimizer::Adafactor => 1.0,
        _ => 0.0,
    }
}

/// HBM bytes one optimizer step moves, per parameter and per factored
/// value ([`IrOp::factored`]), with `beta` bytes per element of the
/// compute dtype. Every optimizer reads the fp32 master weight and the
/// fp32 gradient, writes the master weight back and writes the
/// compute-dtype copy (12 + beta); each fp32 state value is read and
/// written (8 more per value). LAMB's trust ratio (one per tensor) reads
/// the master weights and the update once more (8). Adafactor reads and
/// writes its row and column statistics (8 per factored value) and forms
/// each element's second moment from them on the fly.
pub fn step_bytes(opt: Optimizer, beta: f64) -> (f64, f64) {
    let per_param = 12.0 + beta + 8.0 * optimizer_states(opt);
    let trust_ratio = if opt == Optimizer::Lamb { 8.0 } else { 0.0 };
    (per_param + trust_ratio, 8.0 * factored_states(opt))
}

/// The workload's optimizer (`None` when it does not train).
pub fn optimizer(ir: &Ir) -> Option<Optimizer> {
    match ir.phase {
        Phase::Train { optimizer, .. } => Some(optimizer),
        _ => None,
    }
}

/// The ranks ZeRO shards state over: `shard` for dense parameters (every
/// data x context parallel rank unless HSDP pins fewer), `shard / ep` for
/// experts (the expert-parallel ranks lie within the shard group, as
/// torchtitan's `dp_shard_mod_ep`), at least 1 each.
pub fn zero_groups(p: &DesignPoint) -> (f64, f64) {
    let s = p.shard.max(1);
    (s as f64, (s / p.ep.max(1)).max(1) as f64)
}

/// Parameters one device holds on its pipeline stage, by how ZeRO shards
/// them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Held {
    /// Dense parameters (the same on all `dp x cp` ranks of the
    /// data-parallel group).
    pub dense: f64,
    /// Expert parameters, already divided over `ep` (the same on the
    /// `dp x cp / ep` ranks that hold the same experts).
    pub expert: f64,
    /// Factored second-moment values ([`IrOp::factored`]) of the dense
    /// parameters held, split like them (read only for Adafactor).
    pub dense_factored: f64,
    /// The same of the expert parameters held.
    pub expert_factored: f64,
}

/// What a segment is to the pipeline: the repeated body that is split into
/// stages, or extra work on the first or the last stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Body,
    Prologue,
    Epilogue,
}

/// The role of each segment of `ir`: the body with the most repetitions
/// is pipelined ([`Ir::body`]); other bodies and prologues run on the first
/// stage, epilogues on the last.
pub fn roles(ir: &Ir) -> Vec<Role> {
    let body = ir.body().map(|b| b as *const _);
    ir.segments
        .iter()
        .map(|s| match s.kind {
            SegmentKind::Body if Some(s as *const _) == body => Role::Body,
            SegmentKind::Prologue | SegmentKind::Body => Role::Prologue,
            SegmentKind::Epilogue => Role::Epilogue,
        })
        .collect()
}

/// Parameters one device holds of segment `si` (only the experts' with
/// `experts_only`), each op split as the program on `p.tp` splits it.
fn segment_params(ir: &Ir, si: usize, p: &DesignPoint, experts_only: bool) -> f64 {
    // An expert op's replicated part (its router) is held whole and is
    // not the experts'.
    segment_sum(ir, si, p, experts_only, |o| o.params - o.replicated)
        + if experts_only {
            0.0
        } else {
            ir.segments[si]
                .ops
                .iter()
                .map(|o| o.replicated * o.mult)
                .sum::<f64>()
        }
}

/// `value` of each op of segment `si` (only the experts' with
/// `experts_only`) on one device, split like the op's parameters
/// ([`op_split`]).
fn segment_sum(
    ir: &Ir,
    si: usize,
    p: &DesignPoint,
    experts_only: bool,
    value: impl Fn(&IrOp) -> f64,
) -> f64 {
    let table = ir.tp_table(p.tp as usize, false);
    ir.segments[si]
        .ops
        .iter()
        .enumerate()
        .filter(|(_, o)| !experts_only || o.experts.is_some())
        .map(|(j, o)| {
            let sharded = table
                .ops
                .get(si)
                .and_then(|s| s.get(j))
                .is_some_and(|x| x.sharded);
            value(o) * o.mult / op_split(o, sharded, p)
        })
        .sum()
}

/// Into how many parts one op's parameters are split on one device:
/// the tensor-parallel ranks when the op's work is sharded (elementwise
/// ops keep whole parameters), times the expert-parallel ranks for
/// experts.
pub fn op_split(o: &IrOp, sharded: bool, p: &DesignPoint) -> f64 {
    let psplit = if sharded && o.class != Class::Elementwise {
        p.tp as f64
    } else {
        1.0
    };
    let esplit = if o.experts.is_some() {
        p.ep as f64
    } else {
        1.0
    };
    psplit * esplit
}

/// Parameters of one op on one device ([`op_split`]).
pub fn op_params(o: &IrOp, sharded: bool, p: &DesignPoint) -> f64 {
    ((o.params - o.replicated) / op_split(o, sharded, p) + o.replicated) * o.mult
}

/// Of [`op_params`], the experts' (an expert op's parameters but its
/// replicated router).
pub fn op_expert_params(o: &IrOp, sharded: bool, p: &DesignPoint) -> f64 {
    if o.experts.is_some() {
        (o.params - o.replicated) * o.mult / op_split(o, sharded, p)
    } else {
        0.0
    }
}

/// Factored second-moment values ([`IrOp::factored`]) one device holds,
/// all and the experts', for the stage split `stage_layers`: like the
/// parameters the evaluator charges ([`crate::cost`]: the larger of the
/// slowest stage's and the first stage's), the larger of the two stages'
/// values, and the experts' of `expert_layers` layers. A factored matrix
/// split over tensor-parallel ranks counts `(rows + cols) / tp` per rank,
/// split like its parameters (a rank factoring its own block holds
/// `rows / tp + cols` or `rows + cols / tp`; the difference is a few
/// values per row of a matrix, against the matrix's fp32 master copy).
pub fn held_factored(
    ir: &Ir,
    p: &DesignPoint,
    stage_layers: &[u64],
    slow: usize,
    expert_layers: f64,
) -> (f64, f64) {
    let (mut body, mut body_expert, mut pro, mut epi) = (0.0, 0.0, 0.0, 0.0);
    for (si, (s, role)) in ir.segments.iter().zip(roles(ir)).enumerate() {
        let all = segment_sum(ir, si, p, false, |o| o.factored);
        match role {
            Role::Body => {
                body = all;
                body_expert = segment_sum(ir, si, p, true, |o| o.factored);
            }
            Role::Prologue => pro += all * s.count as f64,
            Role::Epilogue => epi += all * s.count as f64,
        }
    }
    let n = stage_layers.len();
    let stage = |i: usize| {
        stage_layers.get(i).copied().unwrap_or(0) as f64 * body
            + if i == 0 { pro } else { 0.0 }
            + if i + 1 == n { epi } else { 0.0 }
    };
    let all = stage(slow).max(stage(0));
    (all, (expert_layers * body_expert).min(all))
}

/// Tied weights ([`IrOp::tied`]) one device holds, split like their
/// parameters: what a single pipeline stage, running both the embedding
/// and the output projection, holds once instead of twice.
pub fn tied_params(ir: &Ir, p: &DesignPoint) -> f64 {
    // Most models tie nothing: skip the sharded program's lookup.
    if !ir
        .segments
        .iter()
        .any(|s| s.ops.iter().any(|o| o.tied > 0.0))
    {
        return 0.0;
    }
    (0..ir.segments.len())
        .map(|si| segment_sum(ir, si, p, false, |o| o.tied) * ir.segments[si].count as f64)
        .sum()
}

/// Parameters of the embedding tables (sharded over all devices, counted
/// in [`Memory::embeddings`], not as dense parameters).
pub fn table_params(ir: &Ir) -> f64 {
    ir.segments
        .iter()
        .flat_map(|s| s.ops.iter())
        .filter(|o| o.table_bytes > 0.0)
        .fold(0.0, |a, o| a + o.params * o.mult)
}

impl Evaluator<'_> {
    /// Memory per device of `held` parameters at `p`, without activations
    /// and KV cache: weights in the compute dtype, gradients (fp32 when the
    /// dtype is narrower), optimizer state with an fp32 master copy for
    /// narrow dtypes, the embedding tables with their optimizer state, and
    /// the reserve. ZeRO-1 shards the optimizer state, ZeRO-2 also the
    /// gradients, ZeRO-3 also the weights, over the ranks of the ZeRO group
    /// ([`zero_groups`]: `shard`, by default all `dp x cp` ranks that hold
    /// the same parameters, for dense ones; `shard / ep` for experts).
    /// Inference holds weights only here; `cost::Evaluator::infer` adds
    /// the KV cache and the pass's working buffers.
    pub fn state_memory(&self, held: Held, p: &DesignPoint) -> Memory {
        let beta = self.ir.act_bytes;
        let mut m = Memory {
            reserve: self.hw.reserve,
            capacity: self.hw.hbm_capacity,
            ..Memory::default()
        };
        let Some(opt) = optimizer(self.ir) else {
            m.weights = (held.dense + held.expert) * beta;
            return m;
        };
        let (dense_group, expert_group) = zero_groups(p);
        // Bytes of `bytes_per_param` per held parameter, sharded from ZeRO
        // stage `stage` on.
        let sharded = |bytes_per_param: f64, stage: u8| {
            let (d, e) = if p.zero >= stage {
                (dense_group, expert_group)
            } else {
                (1.0, 1.0)
            };
            bytes_per_param * (held.dense / d + held.expert / e)
        };
        let master = if beta < 4.0 { 4.0 } else { 0.0 };
        m.weights = sharded(beta, 3);
        m.gradients = sharded(beta.max(4.0), 2);
        m.optimizer = sharded(4.0 * optimizer_states(opt) + master, 1);
        // Adafactor's row and column statistics, sharded like the rest of
        // the optimizer state.
        let (fd, fe) = if p.zero >= 1 {
            (dense_group, expert_group)
        } else {
            (1.0, 1.0)
        };
        m.optimizer +=
            4.0 * factored_states(opt) * (held.dense_factored / fd + held.expert_factored / fe);
        // Tables are sharded over all devices, with their optimizer state
        // (stored in their own dtype: no master copy).
        let tables: f64 = self
            .ir
            .segments
            .iter()
            .flat_map(|s| s.ops.iter())
            .filter(|o| o.table_bytes > 0.0)
            .fold(0.0, |a, o| a + o.table_bytes * o.mult);
        let table_factored: f64 = self
            .ir
            .segments
            .iter()
            .flat_map(|s| s.ops.iter())
            .fold(0.0, |a, o| a + o.table_factored * o.mult);
        m.embeddings = (tables * (1.0 + optimizer_states(opt))
            + table_factored * factored_states(opt))
            / p.devices().max(1) as f64;
        m
    }

    /// Bytes of KV cache per token of context, per device (inference).
    pub(crate) fn kv_per_token(&self, p: &DesignPoint) -> f64 {
        let ir = self.ir;
        let mut kv_per_token = 0.0;
        for s in &ir.segments {
            for o in &s.ops {
                if let (Some((_, kv)), Some(g)) = (o.heads, o.gemm) {
                    let hd = g.k;
                    let kv_split = (kv as f64).min(p.tp as f64);
                    kv_per_token +=
                        2.0 * kv as f64 * hd * ir.act_bytes * o.mult * s.count as f64 / kv_split;
                }
            }
        }
        kv_per_token
    }

    /// Tokens of context the KV cache holds (inference).
    pub(crate) fn max_context(&self) -> f64 {
        let (context, generate, prompt) = match self.ir.phase {
            Phase::Decode {
                context,
                generate,
                prompt,
                ..
            } => (context as f64, generate, prompt),
            Phase::Prefill { prompt, .. } => (prompt.unwrap_or(0) as f64, None, None),
            _ => (0.0, None, None),
        };
        match (prompt, generate) {
            (Some(pr), Some(g)) => (pr + g) as f64,
            _ => context,
        }
    }

    /// The search's memory bound at `p`: [`Evaluator::state_memory`] at
    /// the fewest parameters the most loaded device can hold whatever the
    /// stage split (the first stage keeps at least
    /// `layers - (pp - 1) ceil(layers / pp)` layers, one at least, and the
    /// prologue), with activations at zero, the KV cache at a batch of one
    /// and the embedding tables at zero where host memory can take them.
    /// It depends only on tp, pp, cp, dp, ep and the ZeRO stage, and never
    /// exceeds `evaluate(p).memory.total()`.
    pub fn memory_floor(&self, p: &DesignPoint) -> Memory {
        let ir = self.ir;
        let pp = p.pp.max(1);
        if optimizer(ir).is_none() {
            // Inference holds every stage's weights divided evenly.
            let params: f64 = ir
                .segments
                .iter()
                .enumerate()
                .map(|(si, s)| segment_params(ir, si, p, false) * s.count as f64)
                .sum();
            let mut m = self.state_memory(
                Held {
                    dense: (params - table_params(ir)).max(0.0) / pp as f64,
                    ..Held::default()
                },
                p,
            );
            m.kv_cache = self.kv_per_token(p) * self.max_context() / pp as f64;
            return m;
        }
        let layers = ir.layers();
        let min_layers = if pp == 1 {
            layers
        } else {
            layers.saturating_sub((pp - 1) * layers.div_ceil(pp)).max(1)
        } as f64;
        let (mut body, mut body_expert, mut pro, mut epi) = (0.0, 0.0, 0.0, 0.0);
        for (si, (s, role)) in ir.segments.iter().zip(roles(ir)).enumerate() {
            let all = segment_params(ir, si, p, false);
            match role {
                Role::Body => {
                    body = all;
                    body_expert = segment_params(ir, si, p, true);
                }
                Role::Prologue => pro += all * s.count as f64,
                Role::Epilogue => epi += all * s.count as f64,
            }
        }
        // One stage holds a tied weight once (as the evaluator counts it).
        let held = min_layers * body
            + pro
            + if pp == 1 {
                epi - tied_params(ir, p)
            } else {
                0.0
            }
            - table_params(ir);
        let expert = (min_layers * body_expert).min(held);
        // Factored values at the same layers: the first stage's with the
        // fewest layers (never above the larger of the first and slowest
        // stages' the evaluator charges).
        let (factored, expert_factored) =
            if factored_states(optimizer(ir).unwrap_or(Optimizer::Adam)) > 0.0 {
                let split = if pp == 1 {
                    vec![min_layers as u64]
                } else {
                    let mut v = vec![0; pp as usize];
                    v[0] = min_layers as u64;
                    v
                };
                held_factored(ir, p, &split, 0, min_layers)
            } else {
                (0.0, 0.0)
            };
        let mut m = self.state_memory(
            Held {
                dense: held - expert,
                expert,
                dense_factored: factored - expert_factored,
                expert_factored,
            },
            p,
        );
        if self.hw.host_bandwidth > 0.0 {
            m.embeddings = 0.0;
        }
        m
    }
}
