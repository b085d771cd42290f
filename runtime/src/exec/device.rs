//! One simulated device ([`Dev`]): its place in the mesh, its memory,
//! its JIT context and its endpoint of the in-memory collectives.
//!
//! The struct, its constructor and the helpers every op family shares
//! live here: rank and group arithmetic (Megatron-style,
//! tensor-parallel innermost), reading a tensor in another layout
//! (gathering or slicing, cached once per value), the sharded program's
//! layout of each tensor, and tracing. The op families extend `Dev` in
//! their own modules.

use std::collections::HashMap;

use gantry_compiler::sharded::{self, Program};
use gantry_lang::program::{Graph, Op, TensorId, Workload};

use crate::comm::Endpoint;
use crate::error::{RCode, RuntimeError, unsupported};
use crate::graph::{self, numel};
use crate::init::Init;
use crate::jit::Jit;
use crate::layout::{Layout, block};

use super::attention::KvCache;
use super::elementwise::{count_uses, mark_fused};
use super::grad::{ParamGrad, Tape};
use super::moe::MoeSaved;
use super::parallel::Parallel;
use super::pipeline::{boundary_live, pipelined_repeat};
use super::simulate::{Record, replica_of};

/// A tensor on one device.
#[derive(Clone, Debug)]
pub(super) struct Local {
    pub(super) layout: Layout,
    pub(super) data: Vec<f32>,
}

/// The compiler's sharded program for this device's mesh, with the rows
/// of each tensor at this microbatch (sequence parallelism needs them to
/// cut into `tp` blocks).
pub(super) fn sharded_program(
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
        forms: par.forms.clone(),
    };
    sharded::build(g, &elems, &mesh).map_err(|e| {
        unsupported(format!("tp = {}: {}", par.tp, e.reason))
            .with_help("run this model with tp = 1, or write the block so its residual stream keeps one layout")
    })
}

/// The runtime's form of a layout of the sharded program.
/// Prepared local weights of one op at one iteration.
pub(super) type Weights = Vec<Vec<f32>>;

pub(super) struct Dev<'a> {
    pub(super) g: &'a Graph,
    pub(super) par: &'a Parallel,
    pub(super) rank: usize,
    pub(super) stage: usize,
    pub(super) d: usize,
    /// Context-parallel rank (sequence chunk).
    pub(super) c: usize,
    pub(super) t: usize,
    /// Shapes with `batch` bound to the microbatch size (and `seq` to the
    /// chunk length with context parallelism).
    pub(super) shapes: Vec<Vec<usize>>,
    pub(super) init: Init,
    pub(super) jit: Jit,
    pub(super) ep: Option<Endpoint>,
    /// Dry run: compile kernels, compute nothing.
    pub(super) dry: bool,
    pub(super) fused: Vec<bool>,
    pub(super) producer: HashMap<TensorId, &'a Op>,
    /// The compiler's sharded program for this mesh: every layout this
    /// device reads and writes comes from it ([`gantry_compiler::sharded`]).
    pub(super) program: Program,
    pub(super) weights: HashMap<(u32, Vec<u64>), Weights>,
    pub(super) env: HashMap<TensorId, Local>,
    /// Conversions of the current values to other layouts ([`Dev::as_layout`]).
    pub(super) converted: std::cell::RefCell<HashMap<(TensorId, Layout), Vec<f32>>>,
    /// The same for the tape's values during a backward pass, by slot.
    pub(super) slot_converted: std::cell::RefCell<HashMap<(usize, Layout), Vec<f32>>>,
    pub(super) records: Option<Vec<Record>>,
    pub(super) mb: usize,
    pub(super) fault: Option<TensorId>,
    /// Training: the tape of the microbatch being run forward, the tapes
    /// of the microbatches waiting for their backward pass, and the
    /// parameter gradients accumulated so far.
    pub(super) grad: bool,
    pub(super) tape: Option<Tape>,
    pub(super) tapes: HashMap<(usize, usize), Tape>,
    /// Keyed by parameter and first column (a device may hold several
    /// column blocks of a column-wise table).
    pub(super) pgrads: std::collections::BTreeMap<(crate::backward::ParamKey, usize), ParamGrad>,
    pub(super) grad_fault: Option<TensorId>,
    pub(super) step_fault: bool,
    /// Decode: record every attention's local keys and values (the
    /// prompt's pass), or read them back before the step's own.
    pub(super) kv_record: bool,
    pub(super) kv_cache: KvCache,
    /// MoE forward state per (microbatch, op, iterations), for backward.
    pub(super) moe_saved: HashMap<(usize, u32, Vec<u64>), MoeSaved>,
    /// Embedding-bag forward state per (microbatch, op, iterations), for
    /// backward: the ids each requester sent this server (a server keeps
    /// them, as TorchRec's sharded modules do; they are not sent again).
    pub(super) emb_ids: HashMap<(usize, u32, Vec<u64>), Vec<Vec<f32>>>,
    /// Dry runs of a decode step: the cached prompt length.
    pub(super) dry_context: usize,
}

impl<'a> Dev<'a> {
    pub(super) fn new(
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
            emb_ids: HashMap::new(),
            dry_context: 0,
        })
    }

    /// The rank at `stage`, replica `d`, tensor-parallel rank `t` and this
    /// device's sequence chunk.
    pub(super) fn rank_of(&self, stage: usize, d: usize, t: usize) -> usize {
        self.rank_at(stage, d, self.c, t)
    }
    pub(super) fn rank_at(&self, stage: usize, d: usize, c: usize, t: usize) -> usize {
        ((stage * self.par.dp + d) * self.par.cp + c) * self.par.tp + t
    }
    /// The context-parallel group (the sequence chunks of this replica).
    pub(super) fn cp_group(&self) -> Vec<usize> {
        (0..self.par.cp)
            .map(|c| self.rank_at(self.stage, self.d, c, self.t))
            .collect()
    }
    pub(super) fn tp_group(&self) -> Vec<usize> {
        (0..self.par.tp)
            .map(|t| self.rank_of(self.stage, self.d, t))
            .collect()
    }
    pub(super) fn stage_group(&self) -> Vec<usize> {
        let n = self.par.dp * self.par.cp * self.par.tp;
        (self.stage * n..(self.stage + 1) * n).collect()
    }
    pub(super) fn ep_group(&self) -> Vec<usize> {
        let e0 = self.d - self.d % self.par.ep;
        (e0..e0 + self.par.ep)
            .map(|d| self.rank_of(self.stage, d, self.t))
            .collect()
    }
    pub(super) fn endpoint(&self) -> Result<&Endpoint, RuntimeError> {
        self.ep
            .as_ref()
            .ok_or_else(|| RuntimeError::new(RCode::R006, "a dry run has no collectives"))
    }
    pub(super) fn all_reduce_tp(&self, data: &mut [f32]) -> Result<(), RuntimeError> {
        if self.dry || self.par.tp == 1 {
            return Ok(());
        }
        let group = self.tp_group();
        self.endpoint()?.all_reduce(&group, data)
    }

    pub(super) fn width(&self, t: TensorId) -> usize {
        *self.shapes[t.0 as usize].last().unwrap_or(&1)
    }
    pub(super) fn numel(&self, t: TensorId) -> usize {
        numel(&self.shapes[t.0 as usize])
    }
    pub(super) fn local_len(&self, t: TensorId, l: Layout) -> usize {
        if l == Layout::Rows {
            return block(self.numel(t), self.par.tp, self.t).len();
        }
        let w = self.width(t);
        self.numel(t) / w.max(1) * l.range(w, self.par.tp, self.t).len()
    }

    pub(super) fn get(&self, t: TensorId) -> Result<&Local, RuntimeError> {
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
    pub(super) fn as_layout(&self, t: TensorId, to: Layout) -> Result<Vec<f32>, RuntimeError> {
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
    pub(super) fn put(&mut self, t: TensorId, v: Local) {
        self.converted.get_mut().retain(|(k, _), _| *k != t);
        self.env.insert(t, v);
    }

    /// `x`, a local part of tensor `t`, in layout `to`.
    pub(super) fn convert(
        &self,
        t: TensorId,
        x: &Local,
        to: Layout,
    ) -> Result<Vec<f32>, RuntimeError> {
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
            Layout::Cols { groups } => {
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
            _ => crate::layout::local_part(to, &full, width, self.par.tp, self.t),
        })
    }

    pub(super) fn rep(&self, t: TensorId) -> Result<Vec<f32>, RuntimeError> {
        self.as_layout(t, Layout::Rep)
    }

    /// The layout the sharded program stores `t` in.
    pub(super) fn layout(&self, t: TensorId) -> Layout {
        self.program.layout(t)
    }

    /// The sharded program's op producing `t`.
    pub(super) fn planned(&self, t: TensorId) -> Result<&sharded::ShardedOp, RuntimeError> {
        self.program
            .op(t)
            .ok_or_else(|| unsupported(format!("no sharded op produces %{}", t.0)))
    }

    pub(super) fn record(&mut self, t: TensorId, path: &[u64], l: &Local) {
        let mb = self.mb;
        if let Some(r) = &mut self.records {
            r.push(((t, path.to_vec()), mb, l.layout, l.data.clone()));
        }
    }

    /// Counts this device's messages from now on under `label` (see
    /// [`crate::comm::Endpoint::label`]); returns the previous label.
    pub(super) fn label(&self, label: &'static str) -> &'static str {
        self.ep.as_ref().map_or("", |e| e.label(label))
    }
}
