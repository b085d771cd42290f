//! The cost model: one step of a workload on a system at a design point.
//!
//! Every figure is a sum of terms with a name, each a formula over IR
//! quantities and hardware figures:
//!
//! * an op's time is its roofline, `max(FLOPs / (peak x e), bytes / (HBM x
//!   e_mem))`, where `e` for a matrix product follows the device's
//!   saturating curve `e_matmul x F / (F + knee)` in the product's size `F`,
//!   and for a fused attention kernel its key loop against the query load
//!   and output store (`flash_efficiency`: a call per ring step of context
//!   parallelism) with its softmax's exponentials in series on the
//!   special-function units (`softmax_exponentials` over the device's
//!   `sfu`), plus a kernel launch overhead;
//! * backward costs twice the forward for products and twice the traffic
//!   for elementwise ops; recomputation adds forward passes (all of a layer
//!   for `full`, the attention core for `selective`);
//! * tensor-parallel all-reduces come from the IR (`tp_allreduce`), once
//!   forward and once backward (again when recomputing);
//! * the pipeline runs `m` microbatches in `(m + (p - 1) / v)` slots of the
//!   slowest stage (1F1B, interleaved with `v` virtual stages), each slot
//!   also paying the stage-to-stage sends;
//! * data-parallel gradient reduction overlaps the last microbatch's
//!   backward; only what sticks out is exposed. ZeRO-3 gathers overlap the
//!   whole compute.
//!
//! The evaluator does no allocation proportional to the model and no
//! string work on the hot path except the small communication list, so the
//! search can call it millions of times.

use std::borrow::Cow;

use gantry_lang::program::{Optimizer, Phase, TableSharding};
use serde::{Deserialize, Serialize};

use crate::collective::{Collective, Level, Topology};
use crate::hardware::Hardware;
use crate::ir::{Class, FLASH_BLOCK, Ir, IrOp, SegmentKind};
use crate::memory::{self, Held, Role};
use crate::placement::Skew;
use crate::point::{DesignPoint, Recompute};
use crate::sharded::{Kind, Pass};

/// Time of one forward (or backward) pass over some ops, split by class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassTimes {
    pub matmul: f64,
    pub attention: f64,
    pub elementwise: f64,
    pub embedding: f64,
    pub layout: f64,
}

impl ClassTimes {
    pub fn total(&self) -> f64 {
        self.matmul + self.attention + self.elementwise + self.embedding + self.layout
    }
    fn add(&mut self, c: Class, t: f64) {
        match c {
            Class::Matmul => self.matmul += t,
            Class::Attention => self.attention += t,
            Class::Elementwise => self.elementwise += t,
            Class::Embedding => self.embedding += t,
            Class::Layout => self.layout += t,
        }
    }
    fn scaled(&self, k: f64) -> ClassTimes {
        ClassTimes {
            matmul: self.matmul * k,
            attention: self.attention * k,
            elementwise: self.elementwise * k,
            embedding: self.embedding * k,
            layout: self.layout * k,
        }
    }
    fn plus(&self, o: &ClassTimes) -> ClassTimes {
        ClassTimes {
            matmul: self.matmul + o.matmul,
            attention: self.attention + o.attention,
            elementwise: self.elementwise + o.elementwise,
            embedding: self.embedding + o.embedding,
            layout: self.layout + o.layout,
        }
    }
}

/// One kind of communication in a step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comm {
    pub what: Cow<'static, str>,
    pub collective: Collective,
    pub group: u64,
    pub level: Level,
    pub algorithm: Cow<'static, str>,
    /// Bytes per device per step.
    pub bytes: f64,
    /// Seconds per step if nothing overlapped.
    pub time: f64,
    /// Seconds per step on the critical path.
    pub exposed: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub weights: f64,
    pub gradients: f64,
    pub optimizer: f64,
    pub activations: f64,
    pub kv_cache: f64,
    pub embeddings: f64,
    /// Transient buffers at the step's peak. Training: one recomputed
    /// layer's activations, ZeRO-3's gathered weights and unsharded
    /// gradients, the loss's logits on the last pipeline stage. Inference:
    /// the larger of the pass's transient at its widest op and its
    /// sampling.
    pub working: f64,
    pub reserve: f64,
    pub capacity: f64,
    /// Embedding-table bytes per device kept in host memory (not in HBM).
    pub host_embeddings: f64,
}

impl Memory {
    pub fn total(&self) -> f64 {
        self.weights
            + self.gradients
            + self.optimizer
            + self.activations
            + self.kv_cache
            + self.embeddings
            + self.working
            + self.reserve
    }
}

/// The step time, split so that the parts add up to `step`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepTime {
    /// Compute of all microbatches on the slowest stage, by op class
    /// (forward, backward and recomputation together).
    pub compute: ClassTimes,
    /// Of `compute`, the part spent recomputing forward passes.
    pub recompute: f64,
    /// Tensor/sequence-parallel collectives on the critical path.
    pub tp_comm: f64,
    /// Context-parallel K/V exchange not hidden behind attention.
    pub cp_comm: f64,
    /// Expert-parallel and embedding all-to-alls.
    pub all_to_all: f64,
    /// Pipeline sends between stages.
    pub pp_comm: f64,
    /// Idle time of the pipeline schedule (fill and drain).
    pub bubble: f64,
    /// Data-parallel reduction (and ZeRO gathers) not hidden behind compute.
    pub dp_exposed: f64,
    /// Optimizer step.
    pub optimizer: f64,
    /// Prefill share per generated token when serving (decode only).
    pub prefill: f64,
    /// Host-side time per step: the device's `step_overhead`, plus in
    /// inference over token sequences [`StepTime::host_seq`].
    pub overhead: f64,
    /// Of `overhead`, the serving engine's per-sequence host time: the
    /// device's `seq_overhead` times the sequences in the pass (0 in
    /// training and for workloads that are not token sequences).
    #[serde(default)]
    pub host_seq: f64,
    /// Embedding lookups and updates served from host memory.
    pub host_lookups: f64,
    pub step: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub point: DesignPoint,
    /// Inference: bytes one sequence's sampling holds (its full-vocabulary
    /// logits, [`SAMPLING_BYTES_PER_LOGIT`] over the activation type's);
    /// 0 in training. A server's profiling run samples `max_seqs` at once.
    #[serde(default)]
    pub sampling_bytes_per_seq: f64,
    pub devices: u64,
    pub feasible: bool,
    pub time: StepTime,
    pub memory: Memory,
    pub comms: Vec<Comm>,
    /// Layers per pipeline stage.
    pub stage_layers: Vec<u64>,
    /// Training: one pipeline slot of the slowest stage (one microbatch's
    /// forward and backward, with its exposed sends), in seconds; the
    /// pipeline runs `m + (pp - 1) / v` of them. 0 in inference.
    pub slot: f64,
    /// Of [`Estimate::slot`], the forward pass (its compute, exposed
    /// tensor-parallel collectives and expert all-to-all).
    pub slot_forward: f64,
    pub samples_per_step: f64,
    pub tokens_per_step: f64,
    pub model_flops: f64,
    pub hardware_flops: f64,
    /// Peak FLOP/s per device at the activation dtype: what MFU is
    /// measured against (as published runs quote it, FP8 runs included).
    pub peak: f64,
    /// The peak the hardware FLOPs could run at, each at its own
    /// precision: the FLOP-weighted harmonic mean of the matrix-product
    /// peak (for `linear` FLOPs) and the dtype peak (for the rest). What
    /// HFU is measured against, so that it stays at or under 100% when
    /// products run in FP8. Equal to `peak` without a matmul precision.
    pub hardware_peak: f64,
    pub power: f64,
    pub price_per_s: Option<f64>,
    pub ttft: Option<f64>,
    pub tpot: Option<f64>,
}

impl Estimate {
    pub fn step_time(&self) -> f64 {
        self.time.step
    }
    pub fn samples_per_s(&self) -> f64 {
        self.samples_per_step / self.time.step
    }
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens_per_step / self.time.step
    }
    pub fn model_tflops_per_device(&self) -> f64 {
        self.model_flops / self.time.step / self.devices as f64 / 1e12
    }
    pub fn hardware_tflops_per_device(&self) -> f64 {
        self.hardware_flops / self.time.step / self.devices as f64 / 1e12
    }
    pub fn mfu(&self) -> f64 {
        self.model_tflops_per_device() * 1e12 / self.peak
    }
    pub fn hfu(&self) -> f64 {
        self.hardware_tflops_per_device() * 1e12 / self.hardware_peak
    }
    pub fn energy_per_step(&self) -> f64 {
        self.power * self.time.step
    }
    pub fn cost_per_million_tokens(&self) -> Option<f64> {
        let p = self.price_per_s?;
        (self.tokens_per_step > 0.0).then(|| p * self.time.step / self.tokens_per_step * 1e6)
    }
    pub fn cost_per_million_samples(&self) -> Option<f64> {
        let p = self.price_per_s?;
        Some(p * self.time.step / self.samples_per_step * 1e6)
    }
    /// The named metric, for objectives, constraints and `expect`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        Some(match name {
            "tokens_per_s" => self.tokens_per_s(),
            "tokens_per_s_per_device" => self.tokens_per_s() / self.devices.max(1) as f64,
            "samples_per_s" => self.samples_per_s(),
            "throughput" => {
                if self.tokens_per_step > 0.0 {
                    self.tokens_per_s()
                } else {
                    self.samples_per_s()
                }
            }
            "step_time" | "iteration_time" => self.time.step,
            "ttft" => self.ttft?,
            "tpot" => self.tpot?,
            "mfu" => self.mfu(),
            "hfu" => self.hfu(),
            "memory" => self.memory.total(),
            "hbm" => self.memory.capacity,
            "power" => self.power,
            "energy_per_step" => self.energy_per_step(),
            "cost_per_million_tokens" => self.cost_per_million_tokens()?,
            "throughput_per_dollar" => {
                let t = self.metric("throughput")?;
                t / self.price_per_s?
            }
            "throughput_per_watt" => self.metric("throughput")? / self.power,
            "model_tflops_per_device" => self.model_tflops_per_device() * 1e12,
            "hardware_tflops_per_device" => self.hardware_tflops_per_device() * 1e12,
            "devices" => self.devices as f64,
            _ => return None,
        })
    }
}

/// Per-pass costs of one segment repetition for one microbatch.
#[derive(Clone, Copy, Debug, Default)]
struct SegCost {
    fwd: ClassTimes,
    bwd: ClassTimes,
    /// Extra forward time when recomputing (full: all, selective: attention core).
    recompute: f64,
    /// Tensor-parallel collective seconds (and bytes) of the forward and
    /// of the backward pass.
    tp_fwd: f64,
    tp_bytes_fwd: f64,
    tp_bwd: f64,
    tp_bytes_bwd: f64,
    /// Parameters whose gradients are partial over the tensor-parallel
    /// ranks (norm gains on sequence rows): all-reduced once per step.
    tp_param_elems: f64,
    /// Elements the busiest rank sends for those all-reduces (one per
    /// parameter tensor, exact for uneven blocks).
    tp_param_sent: f64,
    /// Context-parallel exchange seconds, and attention compute to hide it.
    cp: f64,
    cp_bytes: f64,
    attention_time: f64,
    /// Expert all-to-all seconds per pass, and bytes.
    a2a: f64,
    a2a_bytes: f64,
    params: f64,
    /// Of `params`, the experts' (sharded over `ep`).
    expert_params: f64,
    /// Activation bytes saved per microbatch under this point's settings.
    saved: f64,
    /// Activation bytes one repetition saves without recomputation (what
    /// a recomputed layer holds again during its backward).
    saved_all: f64,
    /// Largest output of one repetition per microbatch, bytes per element
    /// excluded (elements on this rank): the logits, in a head.
    widest_out: f64,
    /// The same output whole (before any tensor-parallel split, elements
    /// on this rank's context-parallel share): the full-vocabulary logits
    /// a sampler gathers.
    widest_whole: f64,
    /// Bytes per microbatch that the backward of a tensor-parallel op
    /// holds whole on each rank although the layer's saved bytes count
    /// them split over `tp`: the largest tensor the sharded program
    /// all-gathers in backward (sequence parallelism's re-gathered input
    /// of a column-parallel linear, which its weight gradient reads) plus
    /// the largest it reduce-scatters in backward (that input's gradient,
    /// whole until scattered), each less its `1 / tp` share.
    tp_whole: f64,
    flops: f64,
    recompute_flops: f64,
}

impl SegCost {
    /// Seconds of the context-parallel ring not hidden by attention, per
    /// microbatch: the ring runs in the forward pass and twice in the
    /// backward (blocks, then blocks and their gradients), each pass
    /// overlapped with that pass's attention (`cp` and `attention_time`
    /// are one forward's). The step and the report both read this.
    fn cp_exposed(&self) -> f64 {
        3.0 * (self.cp - self.attention_time).max(0.0)
    }
}

/// What [`Evaluator::segment`] reads of a training point, with the IR
/// and hardware it prices (by address): tp, cp, ep, sequence
/// parallelism, recomputation and the microbatch (its bits). A new
/// dependency of `segment` on a knob must join this key
/// (`compiler/tests/virtual_stages.rs` compares memoized and fresh
/// evaluations over every knob).
type SegKey = (usize, usize, u64, u64, u64, bool, Recompute, u64);

/// The body's cost, its layer count, the prologue's and the epilogue's.
type TrainSegments = (SegCost, u64, SegCost, SegCost);

/// Training segment costs by [`SegKey`], while a [`SegmentMemo`] lives.
type SegmentCache = std::cell::RefCell<Option<std::collections::HashMap<SegKey, TrainSegments>>>;

thread_local! {
    static SEGMENTS: SegmentCache = const { std::cell::RefCell::new(None) };
}

/// While alive, training evaluations on this thread keep the segment
/// costs of every [`SegKey`] they price: a search prices many points that
/// differ only in knobs the segments do not read (dp, pp, ZeRO, virtual
/// stages), and the IR and hardware do not change during it. Dropping it
/// forgets them.
pub struct SegmentMemo(());

/// Starts this thread's [`SegmentMemo`].
pub fn memoize_segments() -> SegmentMemo {
    SEGMENTS.with(|m| *m.borrow_mut() = Some(std::collections::HashMap::new()));
    SegmentMemo(())
}

impl Drop for SegmentMemo {
    fn drop(&mut self) {
        SEGMENTS.with(|m| *m.borrow_mut() = None);
    }
}

/// Evaluates design points of one workload on one system.
pub struct Evaluator<'a> {
    pub ir: &'a Ir,
    pub hw: &'a Hardware,
    /// The prompt's prefill, when a decode workload states its prompt.
    pub prefill: Option<&'a Ir>,
}

impl Evaluator<'_> {
    /// Time and FLOPs of one op; `sharded`: the program on this point's
    /// degree divides its work ([`crate::ir::OpTp::sharded`]).
    fn op_time(
        &self,
        o: &IrOp,
        sharded: bool,
        p: &DesignPoint,
        b: f64,
        backward: bool,
    ) -> (f64, f64) {
        let hw = self.hw;
        let (t, c) = (p.tp as f64, p.cp as f64);
        let split = match o.class {
            Class::Matmul | Class::Attention => {
                if sharded {
                    t * c
                } else {
                    c
                }
            }
            Class::Embedding => c,
            _ => {
                if sharded || p.sequence_parallel {
                    t * c
                } else {
                    c
                }
            }
        };
        let mult = o.mult * b / split;
        // Backward: products compute two gradients (input and weight), twice
        // the FLOPs and traffic; streaming ops read the incoming gradient and
        // what they saved and write one gradient, about their forward
        // traffic; the attention core re-reads the score matrix once more.
        let bwd_bytes = match o.class {
            Class::Matmul => 2.0,
            Class::Attention => 1.3,
            _ => 1.0,
        };
        let flops = o.flops * mult * if backward { o.bwd_flops } else { 1.0 };
        let mut bytes = o.bytes * mult * if backward { bwd_bytes } else { 1.0 };
        // Weights stream from HBM once per pass and microbatch.
        if o.class == Class::Matmul {
            let wsplit = if sharded { t } else { 1.0 }
                * if o.experts.is_some() {
                    p.ep as f64
                } else {
                    1.0
                };
            bytes += ((o.params - o.replicated) / wsplit + o.replicated)
                * o.mult
                * self.ir.act_bytes
                * if backward { 2.0 } else { 1.0 };
        }
        if o.class == Class::Embedding {
            // Lookups (and, backward, the sparse update) are random row reads.
            bytes += o.lookup_bytes * mult * if backward { 1.0 } else { 0.0 };
        }
        let compute = match (o.gemm, o.class) {
            (Some(g), Class::Matmul | Class::Attention) if flops > 0.0 => {
                // FLOPs of one product: the batch of `count` independent
                // products (heads, experts) per sample is split over samples.
                let instances = if g.count > 1.0 { g.count * mult } else { 1.0 };
                let per = flops / instances.max(1.0);
                let (base, peak) = if o.class == Class::Attention {
                    (hw.e_attention, hw.peak)
                } else if o.op == "linear" {
                    (hw.e_matmul, hw.peak_matmul)
                } else {
                    (hw.e_matmul, hw.peak)
                };
                let e = if let Some(keys) = o.flash {
                    // One kernel call per ring step of context
                    // parallelism, over this rank's query rows and heads
                    // and one step's keys (the causal share of them).
                    let heads = g.count / 2.0 / if sharded { t } else { 1.0 };
                    base * flash_efficiency(
                        keys / c,
                        (g.m / c / FLASH_BLOCK).ceil() * heads * b,
                        self.ir.act_bytes,
                        peak,
                        hw.hbm_bandwidth,
                        hw.cores,
                    )
                } else {
                    base * per / (per + hw.matmul_knee)
                        * wave_efficiency(g.k, per, instances, hw.cores)
                };
                // In series with the products under FlashAttention-2's
                // schedule, which training's PyTorch-native kernels run;
                // the serving engines' Hopper kernels (FlashAttention-3,
                // TensorRT-LLM's) overlap the softmax with them.
                let series = matches!(self.ir.phase, Phase::Train { .. });
                let softmax = match (o.flash, hw.sfu) {
                    (Some(_), Some(sfu)) if series => {
                        let pass = if backward { o.bwd_flops } else { 1.0 };
                        softmax_exponentials(flops / pass, g.k) / sfu
                    }
                    _ => 0.0,
                };
                flops / (peak * e.max(1e-6)) + softmax
            }
            _ => 0.0,
        };
        let memory = bytes / (hw.hbm_bandwidth * hw.e_memory);
        // A fused attention kernel runs once per ring step.
        let mut launches = if o.class == Class::Layout && o.bytes == 0.0 {
            0.0
        } else {
            o.mult * o.kernels * if o.flash.is_some() { c } else { 1.0 }
        };
        // Casts to the matmul precision run as kernels of their own before
        // the product: each reads the element, writes it in the narrower
        // type and, unless compiled into the producer, first reads it once
        // more for its scale (the absolute maximum).
        let cast = if backward { o.cast_bwd } else { o.cast_fwd };
        let mut cast_time = 0.0;
        if cast > 0.0 {
            let amax = if self.ir.kernels.compiled {
                0.0
            } else {
                self.ir.act_bytes
            };
            let per = self.ir.act_bytes + hw.matmul_elem_bytes + amax;
            // The weights this device holds (experts over `ep`, a
            // router whole), cast once per pass.
            let elems = cast * o.mult * b / split + memory::op_params(o, sharded, p);
            cast_time = elems * per / (hw.hbm_bandwidth * hw.e_memory);
            launches += 2.0 * o.mult;
        }
        let side = o.side_bytes * o.mult * b / split / (hw.hbm_bandwidth * hw.e_memory);
        (
            compute.max(memory) + cast_time + side + launches * hw.kernel_overhead,
            flops,
        )
    }

    fn segment(&self, si: usize, p: &DesignPoint, b: f64, training: bool) -> SegCost {
        let s = &self.ir.segments[si];
        let mut sc = SegCost::default();
        let beta = self.ir.act_bytes;
        let stream = self.ir.stream_bytes;
        let t = p.tp as f64;
        let c = p.cp as f64;
        let topo = &self.hw.topo;
        let mut saved_rep = 0.0;
        let mut saved_shard = 0.0;
        let mut saved_probs = 0.0;
        // What torchtitan's op-level selective checkpointing keeps of a
        // layer with fused attention: the outputs of attention (with its
        // log-sum-exp) and of every second matrix product, the first,
        // third, ... in program order (`tests/clients/measure_block_memory.py`
        // measures 15.5 d_model bytes per token for a Llama 3 block, as
        // here).
        let mut sac = 0.0;
        let mut linears = 0usize;
        let (mut gathered, mut scattered) = (0.0f64, 0.0f64);
        let whole = self.ir.layers_recomputed(p.recompute);
        // Sequence parallelism cuts a microbatch's token rows into tp
        // blocks; rows that do not divide stay whole (the runtime's
        // program all-reduces them), which is the program without it.
        let rows = b * self.ir.tokens_per_sample / c;
        let rows_fit = rows.fract() == 0.0 && (rows as u64).is_multiple_of(p.tp.max(1));
        let table = self
            .ir
            .tp_table(p.tp as usize, p.sequence_parallel && rows_fit);
        let no_tp = Vec::new();
        let tp_ops = table.ops.get(si).unwrap_or(&no_tp);
        for (j, o) in s.ops.iter().enumerate() {
            let otp = tp_ops.get(j);
            let sharded = otp.is_some_and(|x| x.sharded);
            let (tf, ff) = self.op_time(o, sharded, p, b, false);
            sc.fwd.add(o.class, tf);
            sc.flops += ff;
            if training {
                let (tb, _) = self.op_time(o, sharded, p, b, true);
                sc.bwd.add(o.class, tb);
                let k = if s.kind == SegmentKind::Body && whole > 0.0 {
                    whole
                } else if p.recompute == Recompute::Selective && s.kind == SegmentKind::Body {
                    self.ir.selective_recomputes(o)
                } else {
                    0.0
                };
                sc.recompute += k * tf;
                sc.recompute_flops += k * ff;
            }
            if o.class == Class::Attention {
                sc.attention_time += tf;
            }
            if p.tp > 1 {
                // The sharded program's collectives for this op: time on
                // the tensor-parallel group, bytes as each rank sends them.
                for tc in otp.map_or(&[][..], |x| &x.comms[..]) {
                    let comm = &tc.comm;
                    let buffer = comm.elems * o.mult * b * stream / c;
                    let kind = match comm.kind {
                        Kind::AllReduce => Collective::AllReduce,
                        Kind::ReduceScatter => Collective::ReduceScatter,
                        Kind::AllGather => Collective::AllGather,
                    };
                    // A value re-gathered for a weight gradient overlaps
                    // that GEMM (Korthikanti et al. 2022): bytes, no time.
                    let time = if tc.overlapped() {
                        0.0
                    } else {
                        topo.time(kind, p.tp, 1, buffer)
                    };
                    // The busiest rank's share, exact for uneven blocks.
                    let sent = o.mult
                        * stream
                        * comm.busiest_sent(comm.elems * b / c, tc.width, p.tp as usize);
                    match comm.pass {
                        Pass::Forward => {
                            sc.tp_fwd += time;
                            sc.tp_bytes_fwd += sent;
                        }
                        Pass::Backward => {
                            sc.tp_bwd += time;
                            sc.tp_bytes_bwd += sent;
                            // One op's backward at a time: the largest
                            // gathered input and the largest gradient
                            // before its scatter, whole on the rank.
                            let whole = comm.elems * b * stream / c * (1.0 - 1.0 / t);
                            match comm.kind {
                                Kind::AllGather => gathered = gathered.max(whole),
                                Kind::ReduceScatter => scattered = scattered.max(whole),
                                Kind::AllReduce => {}
                            }
                        }
                    }
                }
            }
            if p.tp > 1 && otp.is_some_and(|x| x.param_reduce) {
                sc.tp_param_elems += o.params * o.mult;
                // One all-reduce per parameter tensor (a gain, a bias).
                let tensors = o.tensors.max(1.0);
                let per = o.params / tensors;
                sc.tp_param_sent += o.mult
                    * tensors
                    * crate::sharded::busiest_sent(
                        Kind::AllReduce,
                        crate::sharded::Layout::Rep,
                        per,
                        0.0,
                        p.tp as usize,
                    );
            }
            if o.class == Class::Attention && p.cp > 1 {
                // Ring exchange of K/V blocks: (c - 1) steps of this rank's
                // K/V shard; backward sends K, V and their gradients. Each
                // step is a send to the next rank, with its launch and
                // latency, and waits for the ring's slowest hop: the NICs
                // once the c ranks, `tp` apart, span more than one node.
                let block = o.kv_bytes * o.mult * b / (t * c);
                sc.cp_bytes += block * (c - 1.0);
                sc.cp += (c - 1.0) * topo.time(Collective::SendRecv, p.cp, p.tp, block);
            }
            if let Some((_, dispatch)) = o.experts
                && p.ep > 1
            {
                let bytes = dispatch * o.mult * b / (t * c);
                sc.a2a_bytes += 2.0 * bytes;
                sc.a2a += 2.0 * topo.time(Collective::AllToAll, p.ep, p.tp * p.cp, bytes);
            }
            let on_rank = if sharded || p.sequence_parallel {
                t * c
            } else {
                c
            };
            sc.widest_out = sc.widest_out.max(o.out_elems * o.mult * b / on_rank);
            sc.widest_whole = sc.widest_whole.max(o.out_elems * o.mult * b / c);
            let kept = match o.class {
                Class::Attention => true,
                Class::Matmul if o.op == "linear" => {
                    linears += 1;
                    linears % 2 == 1
                }
                _ => false,
            };
            if kept {
                sac += (o.out_elems * beta / on_rank + o.saved_own / (t * c)) * o.mult;
            }
            sc.params += memory::op_params(o, sharded, p);
            sc.expert_params += memory::op_expert_params(o, sharded, p);
            // The saved bytes as this program splits them (not the
            // symbolic program the IR was lowered with).
            let to_rep = otp.map_or(0.0, |x| x.saved_to_rep);
            saved_rep += (o.saved_rep + to_rep) * o.mult;
            saved_shard += (o.saved_shard - to_rep) * o.mult;
            saved_probs += o.saved_probs * o.mult;
        }
        sc.tp_whole = gathered + scattered;
        // Activation memory per microbatch for this segment.
        let shard_div = t * c;
        let rep_div = if p.sequence_parallel { t * c } else { c };
        let all = saved_rep / rep_div + saved_shard / shard_div;
        sc.saved_all = b * all;
        let input = self.ir.hidden * self.ir.tokens_per_sample * beta / rep_div;
        sc.saved = b * match p.recompute {
            _ if s.kind == SegmentKind::Body && whole > 0.0 => whole * input + (1.0 - whole) * all,
            Recompute::Selective
                if s.kind == SegmentKind::Body && self.ir.kernels.fused_attention =>
            {
                // The layer's input (the checkpoint's) and what the
                // policy keeps, never more than recompute none keeps.
                (input + sac).min(all)
            }
            Recompute::Selective => saved_rep / rep_div + (saved_shard - saved_probs) / shard_div,
            _ => all,
        };
        sc
    }

    /// Forward time of each op of the main repeated block at this point's
    /// microbatch, unsharded (tp = cp = 1): what the e-graph's cost
    /// function divides by the degree it prices.
    pub fn body_op_times(&self, p: &DesignPoint) -> Vec<f64> {
        let Some(body) = self.ir.body() else {
            return Vec::new();
        };
        let mut q = *p;
        q.tp = 1;
        q.cp = 1;
        q.sequence_parallel = false;
        body.ops
            .iter()
            .map(|o| self.op_time(o, false, &q, p.microbatch as f64, false).0)
            .collect()
    }

    /// Forward and backward time of one repetition of the main repeated
    /// block (one transformer layer) for one microbatch, collectives
    /// included; backward includes recomputation.
    pub fn layer_times(&self, p: &DesignPoint) -> Option<(f64, f64)> {
        let body = self.ir.body_index()?;
        let sc = self.segment(body, p, p.microbatch as f64, true);
        let whole = self.ir.layers_recomputed(p.recompute);
        let fwd = sc.fwd.total() + self.tp_exposed(&sc, false);
        let bwd = sc.bwd.total()
            + self.tp_exposed(&sc, true)
            + sc.recompute
            + whole * self.tp_exposed(&sc, false);
        Some((fwd, bwd))
    }

    /// Tensor-parallel collective time of one pass of a segment on the
    /// critical path: all of it, or with `overlap = { tp = true }` (async
    /// TP: each collective split and pipelined with the matrix products
    /// around it) less the device's `tp_overlap` share of what the pass's
    /// products could cover.
    fn tp_exposed(&self, s: &SegCost, backward: bool) -> f64 {
        let (comm, cover) = if backward {
            (s.tp_bwd, s.bwd.matmul)
        } else {
            (s.tp_fwd, s.fwd.matmul)
        };
        if self.ir.kernels.overlap.tp {
            comm - self.hw.tp_overlap * comm.min(cover)
        } else {
            comm
        }
    }

    /// Evaluates one design point. `p` must come from [`crate::point::resolve`].
    pub fn evaluate(&self, p: &DesignPoint) -> Estimate {
        match self.ir.phase {
            Phase::Train { .. } => self.train(p),
            _ => self.infer(p),
        }
    }

    /// The cost model's pipeline split: [`crate::point::stage_layers`]
    /// over the model's layers, balanced with these times.
    fn split_layers(
        &self,
        p: &DesignPoint,
        per_layer: f64,
        first_extra: f64,
        last_extra: f64,
    ) -> Vec<u64> {
        let times = crate::point::StageTimes {
            per_layer,
            first_extra,
            last_extra,
        };
        crate::point::stage_layers(self.ir.layers(), p.pp, times)
    }

    /// The body's cost (one layer), its layer count, and the prologue's
    /// and epilogue's costs, for one microbatch of `b` samples; from this
    /// thread's memo while a [`SegmentMemo`] is alive.
    fn train_segments(&self, p: &DesignPoint, b: f64) -> TrainSegments {
        let key: SegKey = (
            self.ir as *const Ir as usize,
            self.hw as *const Hardware as usize,
            p.tp,
            p.cp,
            p.ep,
            p.sequence_parallel,
            p.recompute,
            b.to_bits(),
        );
        if let Some(hit) = SEGMENTS.with(|m| m.borrow().as_ref().and_then(|m| m.get(&key).copied()))
        {
            return hit;
        }
        let ir = self.ir;
        let mut body = SegCost::default();
        let mut layers = 0u64;
        let mut pro = SegCost::default();
        let mut epi = SegCost::default();
        for (si, role) in memory::roles(ir).into_iter().enumerate() {
            let sc = self.segment(si, p, b, true);
            let s = &ir.segments[si];
            match role {
                Role::Body => {
                    body = sc;
                    layers = s.count;
                }
                Role::Prologue => pro = add_seg(&pro, &sc, s.count as f64),
                Role::Epilogue => epi = add_seg(&epi, &sc, s.count as f64),
            }
        }
        let out = (body, layers, pro, epi);
        SEGMENTS.with(|m| {
            if let Some(m) = m.borrow_mut().as_mut() {
                m.insert(key, out);
            }
        });
        out
    }

    fn train(&self, p: &DesignPoint) -> Estimate {
        let ir = self.ir;
        let hw = self.hw;
        let topo: &Topology = &hw.topo;
        let (global_batch, optimizer) = match ir.phase {
            Phase::Train {
                global_batch,
                optimizer,
                ..
            } => (global_batch as f64, optimizer),
            _ => (1.0, Optimizer::Adam),
        };
        let b = p.microbatch as f64;
        let m = (global_batch / (p.dp as f64 * b)).max(1.0);
        let pp = p.pp.max(1);
        let v = p.virtual_stages.max(1) as f64;
        let beta = ir.act_bytes;

        // Costs of each segment once, for one microbatch.
        let (body, _layers, pro, epi) = self.train_segments(p, b);
        // Forward passes per microbatch and layer: one, and the recomputed
        // share again.
        let whole = ir.layers_recomputed(p.recompute);
        let fwd_passes = 1.0 + whole;
        let seg_time = |s: &SegCost, recompute: bool| {
            s.fwd.total()
                + s.bwd.total()
                + if recompute { s.recompute } else { 0.0 }
                + self.tp_exposed(s, false) * fwd_passes
                + self.tp_exposed(s, true)
                + s.cp_exposed()
                + s.a2a * 2.0
        };
        let t_layer = seg_time(&body, true);
        let t_pro = seg_time(&pro, false);
        let t_epi = seg_time(&epi, false);
        let stage_layers = self.split_layers(p, t_layer, t_pro, t_epi);
        let n_stages = stage_layers.len();
        let stage_time = |i: usize| {
            stage_layers[i] as f64 * t_layer
                + if i == 0 { t_pro } else { 0.0 }
                + if i == n_stages - 1 { t_epi } else { 0.0 }
        };
        let (slow, t_stage) = (0..n_stages)
            .map(|i| (i, stage_time(i)))
            .fold((0, 0.0), |a, x| if x.1 > a.1 { x } else { a });
        // The forward share of the slowest stage's slot (the trace export
        // draws the slot as this forward and the rest as backward).
        let fwd_time = |s: &SegCost| s.fwd.total() + self.tp_exposed(s, false) + s.a2a;
        let t_stage_fwd = stage_layers[slow] as f64 * fwd_time(&body)
            + if slow == 0 { fwd_time(&pro) } else { 0.0 }
            + if slow == n_stages - 1 {
                fwd_time(&epi)
            } else {
                0.0
            };

        // Pipeline sends: the hidden state of one microbatch, split across
        // tensor-parallel ranks (Megatron's scatter/gather), each way.
        let p2p_bytes =
            b * ir.tokens_per_sample * ir.hidden * ir.stream_bytes / (p.tp * p.cp) as f64;
        let stride_pp = topo.pipeline_hop(pp, p.tp * p.cp * p.dp);
        let t_send = if pp > 1 {
            topo.time(Collective::SendRecv, 2, stride_pp, p2p_bytes)
        } else {
            0.0
        };
        let slots = m + (pp as f64 - 1.0) / v;
        // Each slot sends 2 v messages; overlapped (`overlap = { pp = true
        // }`) they hide behind the slot's compute up to its length.
        let sends = if pp > 1 { 2.0 * v * t_send } else { 0.0 };
        let t_send_exposed = if ir.kernels.overlap.pp {
            (sends - t_stage).max(0.0)
        } else {
            sends
        };
        let slot = t_stage + t_send_exposed;
        let pipeline = slots * slot;
        let bubble = (pp as f64 - 1.0) / v * slot;

        // What the slowest stage holds.
        let sl = stage_layers[slow] as f64;
        let mut stage_params = sl * body.params;
        let mut stage_saved_layers = stage_layers[0] as f64 * body.saved;
        if slow == 0 {
            stage_params += pro.params;
        }
        if slow == n_stages - 1 {
            stage_params += epi.params;
        }
        let first_params = stage_layers[0] as f64 * body.params
            + pro.params
            + if n_stages == 1 { epi.params } else { 0.0 };
        let params_gpu = stage_params.max(first_params);
        stage_saved_layers += pro.saved + if n_stages == 1 { epi.saved } else { 0.0 };

        // Data parallelism: gradient reduction and ZeRO traffic.
        let mut comms = Vec::new();
        // Embedding tables are model-parallel: only dense gradients are reduced.
        // A tied output projection shares the embedding's weight when one
        // stage runs both; with a pipeline the last stage keeps a copy.
        let tied = memory::tied_params(ir, p);
        let dense_params =
            params_gpu - memory::table_params(ir) - if n_stages == 1 { tied } else { 0.0 };
        // Expert weights live on `ep` ranks of the data-parallel group: their
        // gradients are reduced over the other `dp cp / ep` only.
        let expert_layers = if stage_params >= first_params {
            sl
        } else {
            stage_layers[0] as f64
        };
        let expert_params = (expert_layers * body.expert_params).min(dense_params);
        // Adafactor's factored second moment: per-tensor shapes, read from
        // the IR only for optimizers that keep one.
        let (factored, expert_factored) = if memory::factored_states(optimizer) > 0.0 {
            memory::held_factored(ir, p, &stage_layers, slow, expert_layers)
        } else {
            (0.0, 0.0)
        };
        let held = Held {
            dense: dense_params - expert_params,
            expert: expert_params,
            dense_factored: factored - expert_factored,
            expert_factored,
        };
        let expert_bytes = held.expert * beta;
        let dense_bytes = held.dense * beta;
        // Gradients are reduced over every rank holding the same weights:
        // the data-parallel replicas and, with context parallelism, their
        // sequence chunks (Megatron-LM's data-parallel group with context
        // parallelism), tensor-parallel ranks apart.
        let dp_group = p.dp * p.cp;
        let dp_stride = p.tp;
        // ZeRO's group: `shard` ranks (all dp x cp unless HSDP), tp apart;
        // HSDP's `replicas` of it all-reduce their gradient shards, tp x
        // shard apart.
        let (zgroup, replicas) = if p.zero >= 1 {
            (p.shard.clamp(1, dp_group.max(1)), p.replicas())
        } else {
            (dp_group, 1)
        };
        let (zdense, zexpert) = memory::zero_groups(p);
        let shard_bytes = dense_bytes / zdense + expert_bytes / zexpert;
        let t_replicas = if replicas > 1 {
            topo.time(
                Collective::AllReduce,
                replicas,
                dp_stride * zgroup,
                shard_bytes,
            )
        } else {
            0.0
        };
        // Bytes each member sends per byte of a ring collective's buffer.
        let ring = |n: u64| (n.max(1) - 1) as f64 / n.max(1) as f64;
        let t_bwd_last = (stage_layers[slow] as f64) * body.bwd.total();
        let mut dp_exposed = 0.0;
        // HSDP: the gradient shards all-reduced over the replicas, `rounds`
        // times per step.
        let hsdp = |rounds: f64, exposed: f64| Comm {
            what: "HSDP gradient-shard all-reduce over replicas".into(),
            collective: Collective::AllReduce,
            group: replicas,
            level: topo.level(replicas, dp_stride * zgroup),
            algorithm: topo
                .algorithm(Collective::AllReduce, replicas, dp_stride * zgroup)
                .into(),
            bytes: rounds * 2.0 * shard_bytes * ring(replicas),
            time: rounds * t_replicas,
            exposed,
        };
        if dp_group > 1 {
            if p.zero >= 3 {
                // ZeRO-3 gathers the parameters before their forward and
                // backward use, and reduce-scatters their gradients, each
                // collective paying the ring's latency over the shard
                // group: one per module (DeepSpeed fetches a sub-module's
                // parameters together), or one per layer block under the
                // PyTorch-native fusions (FSDP wraps each transformer
                // block, `per_block`). `overlap = { fsdp = false }` puts
                // them on the critical path (the 2021 ZeRO-3 of section A
                // scales that way); by default they are prefetched.
                let overlap = ir.kernels.overlap.fsdp;
                // Without overlap every recomputed forward gathers again;
                // prefetching FSDP gathers once for the backward and its
                // recomputation. Under pipeline parallelism FSDP keeps a
                // stage's weights gathered and its gradients unsharded
                // across the microbatches (torchtitan, Megatron-FSDP): one
                // gather and one reduce-scatter per step.
                let per_step = overlap && pp > 1;
                let rounds = if per_step { 1.0 } else { m };
                let gathers = rounds
                    * if per_step {
                        1.0
                    } else if overlap {
                        2.0
                    } else {
                        1.0 + fwd_passes
                    };
                let mut total = 0.0;
                let mut exposed = 0.0;
                let mut first_ag = None;
                let per_block = ir.kernels.pytorch_native();
                // Each op's parameters as this device holds them (split as
                // the program on `tp` splits it, experts over `ep`), as the
                // reported bytes count them.
                let held_table = ir.tp_table(p.tp as usize, false);
                // Dense parameters are sharded over the `zgroup` ranks;
                // experts over the `zgroup / ep` that hold the same
                // experts, `ep` data-parallel ranks apart (as their
                // gradients are reduced without ZeRO-3).
                let zexpert_group = zexpert as u64;
                let zgroups = [
                    (zgroup, dp_stride),
                    (zexpert_group, dp_stride * p.ep.max(1)),
                ];
                let no_ops = Vec::new();
                for (si, (s, role)) in ir.segments.iter().zip(memory::roles(ir)).enumerate() {
                    let sharded_ops = held_table.ops.get(si).unwrap_or(&no_ops);
                    let (reps, cost) = match role {
                        Role::Body => (sl, &body),
                        Role::Prologue if slow == 0 => (1.0, &pro),
                        Role::Epilogue if slow == n_stages - 1 => (1.0, &epi),
                        _ => continue,
                    };
                    let reps = if role == Role::Body {
                        reps
                    } else {
                        s.count as f64
                    };
                    let (mut ag, mut rs) = (0.0, 0.0);
                    // Dense and expert bytes of a block (`per_block`).
                    let mut block_bytes = [0.0, 0.0];
                    for (j, o) in s
                        .ops
                        .iter()
                        .enumerate()
                        .filter(|(_, o)| o.params > 0.0 && o.table_bytes == 0.0)
                    {
                        let sharded = sharded_ops.get(j).is_some_and(|x| x.sharded);
                        let experts = memory::op_expert_params(o, sharded, p) * beta;
                        let dense = memory::op_params(o, sharded, p) * beta - experts;
                        if per_block {
                            block_bytes[0] += dense;
                            block_bytes[1] += experts;
                            continue;
                        }
                        let n = o.mult.max(1.0);
                        for (k, bytes) in [dense, experts].into_iter().enumerate() {
                            if bytes > 0.0 {
                                let (g, stride) = zgroups[k];
                                ag += n * topo.time(Collective::AllGather, g, stride, bytes / n);
                                rs +=
                                    n * topo.time(Collective::ReduceScatter, g, stride, bytes / n);
                            }
                        }
                    }
                    if per_block {
                        // FSDP reduce-scatters in its reduction type
                        // (`zero3_grad_bytes`).
                        let reduce = zero3_grad_bytes(ir) / beta;
                        for (k, bytes) in block_bytes.into_iter().enumerate() {
                            if bytes > 0.0 {
                                let (g, stride) = zgroups[k];
                                ag += topo.time(Collective::AllGather, g, stride, bytes);
                                rs +=
                                    topo.time(Collective::ReduceScatter, g, stride, bytes * reduce);
                            }
                        }
                    }
                    let unit = if role == Role::Body {
                        1.0
                    } else {
                        1.0 / s.count.max(1) as f64
                    };
                    first_ag.get_or_insert(ag * unit);
                    total += reps * (gathers * ag + rounds * rs);
                    // Prefetched one layer ahead: a layer's gather runs
                    // under the previous layer's pass, its gradient's
                    // reduce-scatter under the next one's backward.
                    let fwd = cost.fwd.total() * unit;
                    let bwd = (cost.bwd.total() + cost.recompute) * unit;
                    exposed += if per_step {
                        // Hidden behind all microbatches' passes.
                        reps * ((ag - m * fwd).max(0.0) + (rs - m * bwd).max(0.0))
                    } else {
                        reps * m * ((ag - fwd).max(0.0) + (ag + rs - bwd).max(0.0))
                    };
                }
                dp_exposed = if overlap {
                    // The first unit's gather has nothing to hide behind.
                    exposed + rounds * first_ag.unwrap_or(0.0)
                } else {
                    total
                };
                comms.push(Comm {
                    what: "ZeRO-3 parameter gathers and gradient reduce-scatters".into(),
                    collective: Collective::AllGather,
                    group: zgroup,
                    level: topo.level(zgroup, dp_stride),
                    algorithm: topo
                        .algorithm(Collective::AllGather, zgroup, dp_stride)
                        .into(),
                    bytes: (gathers + rounds * zero3_grad_bytes(ir) / beta)
                        * (dense_bytes * ring(zgroup) + expert_bytes * ring(zexpert_group)),
                    time: total,
                    exposed: dp_exposed,
                });
                // HSDP: each microbatch's gradient shards all-reduced over
                // the replicas, on the critical path like the rest.
                if replicas > 1 {
                    dp_exposed += m * t_replicas;
                    comms.push(hsdp(m, m * t_replicas));
                }
            } else {
                let expert_group = (zgroup / p.ep.max(1)).max(1);
                let t_ar = topo.time(Collective::AllReduce, zgroup, dp_stride, dense_bytes)
                    + if expert_bytes > 0.0 && expert_group > 1 {
                        topo.time(
                            Collective::AllReduce,
                            expert_group,
                            dp_stride * p.ep,
                            expert_bytes,
                        )
                    } else {
                        0.0
                    };
                dp_exposed = (t_ar - t_bwd_last).max(0.0);
                comms.push(Comm {
                    what: Cow::Borrowed(if p.zero >= 1 {
                        "gradient reduce-scatter + parameter all-gather (ZeRO)"
                    } else {
                        "data-parallel gradient all-reduce"
                    }),
                    collective: Collective::AllReduce,
                    group: zgroup,
                    level: topo.level(zgroup, dp_stride),
                    algorithm: topo
                        .algorithm(Collective::AllReduce, zgroup, dp_stride)
                        .into(),
                    bytes: 2.0 * dense_bytes * ring(zgroup)
                        + 2.0 * expert_bytes * ring(expert_group),
                    time: t_ar,
                    exposed: dp_exposed,
                });
                // HSDP: the gradient shards all-reduced over the replicas
                // once per step, overlapping the last backward after the
                // shard group's reduction.
                if replicas > 1 {
                    let exposed = (t_ar + t_replicas - t_bwd_last).max(0.0) - dp_exposed;
                    dp_exposed += exposed;
                    comms.push(hsdp(1.0, exposed));
                }
            }
        }
        // Tied embeddings across a pipeline: the first and last stages'
        // copies sum their gradients once per step (Megatron-LM's
        // embedding group), after the backward, before the optimizer.
        if n_stages > 1 && tied > 0.0 {
            let bytes = tied * beta;
            let stride = p.tp * p.cp * p.dp * (pp - 1);
            let t = topo.time(Collective::AllReduce, 2, stride, bytes);
            dp_exposed += t;
            comms.push(Comm {
                what: "tied embedding gradient all-reduce (first and last stage)".into(),
                collective: Collective::AllReduce,
                group: 2,
                level: topo.level(2, stride),
                algorithm: topo.algorithm(Collective::AllReduce, 2, stride).into(),
                bytes: 2.0 * bytes * ring(2),
                time: t,
                exposed: t,
            });
        }
        let on_slow = |first: f64, last: f64| if slow == 0 { first } else { 0.0 } + if slow == n_stages - 1 { last } else { 0.0 };
        // Forward all-reduces run again in each recomputed forward.
        let tp_of = |f: f64, b: f64| f * fwd_passes + b;
        let tp_seg_exposed =
            |s: &SegCost| self.tp_exposed(s, false) * fwd_passes + self.tp_exposed(s, true);
        // Once per step: the gradients of parameters used on sequence rows
        // (norm gains), all-reduced over the tensor-parallel ranks.
        let param_buffer =
            (sl * body.tp_param_elems + on_slow(pro.tp_param_elems, epi.tp_param_elems)) * beta;
        let tp_param_time = if param_buffer > 0.0 {
            topo.time(Collective::AllReduce, p.tp, 1, param_buffer)
        } else {
            0.0
        };
        let tp_comm_step = (sl * tp_of(body.tp_fwd, body.tp_bwd)
            + on_slow(tp_of(pro.tp_fwd, pro.tp_bwd), tp_of(epi.tp_fwd, epi.tp_bwd)))
            * m
            + tp_param_time;
        let tp_comm_exposed =
            (sl * tp_seg_exposed(&body) + on_slow(tp_seg_exposed(&pro), tp_seg_exposed(&epi))) * m
                + tp_param_time;
        if tp_comm_step > 0.0 {
            // Bytes the busiest rank sends, summed over the sharded
            // program's collectives (ring factors applied per collective):
            // the stage that sends most, which need not be the slowest (the
            // head's collectives outweigh the embedding's under sequence
            // parallelism).
            let bytes = (0..n_stages)
                .map(|i| {
                    let (first, last) = (i == 0, i == n_stages - 1);
                    let on = |f: f64, l: f64| {
                        (if first { f } else { 0.0 }) + (if last { l } else { 0.0 })
                    };
                    let layers = stage_layers[i] as f64;
                    (layers * tp_of(body.tp_bytes_fwd, body.tp_bytes_bwd)
                        + on(
                            tp_of(pro.tp_bytes_fwd, pro.tp_bytes_bwd),
                            tp_of(epi.tp_bytes_fwd, epi.tp_bytes_bwd),
                        ))
                        * m
                        + (layers * body.tp_param_sent + on(pro.tp_param_sent, epi.tp_param_sent))
                            * beta
                })
                .fold(0.0, f64::max);
            comms.push(Comm {
                what: Cow::Borrowed(if p.sequence_parallel {
                    "tensor/sequence-parallel reduce-scatter + all-gather"
                } else {
                    "tensor-parallel all-reduce"
                }),
                collective: Collective::AllReduce,
                group: p.tp,
                level: topo.level(p.tp, 1),
                algorithm: topo.algorithm(Collective::AllReduce, p.tp, 1).into(),
                bytes,
                time: tp_comm_step,
                exposed: tp_comm_exposed,
            });
        }
        if pp > 1 {
            comms.push(Comm {
                what: "pipeline activations and gradients".into(),
                collective: Collective::SendRecv,
                group: 2,
                level: topo.level(2, stride_pp),
                algorithm: topo.algorithm(Collective::SendRecv, 2, stride_pp).into(),
                // Sent by the busiest device: a middle stage sends each
                // chunk's activations forward and gradients back (2 v
                // messages per microbatch) and receives as many; with two
                // stages the first sends no gradient from its first chunk
                // and the last no activation from its last (2 v - 1).
                // Without sequence parallelism each received block is
                // all-gathered over the t ranks (Megatron-LM's
                // scatter/gather), (t - 1) blocks more per message, which
                // the time leaves out (it runs inside the node).
                bytes: if pp == 2 { 2.0 * v - 1.0 } else { 2.0 * v }
                    * m
                    * p2p_bytes
                    * if p.sequence_parallel {
                        1.0
                    } else {
                        p.tp as f64
                    },
                // The m microbatches' sends, as the step counts them
                // (`pp_comm`); those of the (p - 1) / v warm-up and
                // drain slots lie on the critical path inside the
                // bubble, which the step reports as its own part.
                time: m * sends,
                exposed: m * t_send_exposed,
            });
        }
        if body.cp_bytes > 0.0 {
            comms.push(Comm {
                what: "context-parallel K/V ring".into(),
                collective: Collective::SendRecv,
                group: p.cp,
                level: topo.level(p.cp, p.tp),
                algorithm: "ring".into(),
                bytes: 3.0 * body.cp_bytes * sl * m,
                time: 3.0 * body.cp * sl * m,
                exposed: body.cp_exposed() * sl * m,
            });
        }
        if body.a2a_bytes > 0.0 {
            comms.push(Comm {
                what: "expert all-to-all (dispatch and combine)".into(),
                collective: Collective::AllToAll,
                group: p.ep,
                level: topo.level(p.ep, p.tp * p.cp),
                algorithm: "pairwise".into(),
                bytes: 2.0 * body.a2a_bytes * sl * m * ring(p.ep),
                time: 2.0 * body.a2a * sl * m,
                exposed: 2.0 * body.a2a * sl * m,
            });
        }

        // Optimizer: a streaming update over this rank's share of the states.
        // Bytes per parameter and per factored value (memory::step_bytes).
        let (bytes_per_param, bytes_per_factored) = memory::step_bytes(optimizer, beta);
        // Under ZeRO each rank updates its share: dense state over the
        // `shard` ranks (all dp x cp by default), experts' over `shard / ep`.
        let (sd, se) = if p.zero >= 1 {
            (zdense, zexpert)
        } else {
            (1.0, 1.0)
        };
        // Embedding tables are updated sparsely in their backward pass.
        let opt_time = ((held.dense * bytes_per_param + held.dense_factored * bytes_per_factored)
            / sd
            + (held.expert * bytes_per_param + held.expert_factored * bytes_per_factored) / se)
            / (hw.hbm_bandwidth * hw.e_memory);

        // Memory of the most loaded stage (the first: it holds the most
        // microbatches in flight): its parameters' state, and activations.
        let mut memory = self.state_memory(held, p);
        memory.activations = stage_saved_layers * pipeline_in_flight(pp as f64, v, m);
        // Working buffers. A layer's backward holds the gradients of its
        // activations (as many bytes as it saves without recomputation),
        // and what recomputation rebuilds of it (all it did not keep).
        let mut working = body.saved_all + (body.saved_all - body.saved).max(0.0) + body.tp_whole;
        if p.zero >= 3 && dp_group > 1 {
            // Unsharded gradients wait for their reduce-scatter in its
            // type, as the reduce-scatters' time above.
            let grad = zero3_grad_bytes(ir);
            if ir.kernels.overlap.fsdp && pp > 1 {
                // The stage's weights stay gathered and its gradients
                // unsharded for the whole step.
                working += params_gpu * (beta + grad);
            } else {
                // The layer being computed and the one prefetched,
                // gathered, and the layer's unsharded gradient before its
                // reduce-scatter.
                let gathered = if ir.kernels.overlap.fsdp { 2.0 } else { 1.0 };
                working += body.params * (gathered * beta + grad);
            }
        }
        // Pipeline receive buffers of a PyTorch-native pipeline (`fusion =
        // compiled` or `eager`: torch.distributed.pipelining, as torchtitan
        // runs it): the stage allocates, when its schedule starts, a buffer
        // for every microbatch each of a rank's chunks receives, and keeps
        // them for the step: the activations of each chunk after the first
        // stage and the gradients of each chunk before the last, `(2 v - 1)
        // m` buffers of one stage-boundary tensor on the first rank (as
        // many on the last, whose chunks receive the mirror). Megatron-LM
        // (`fusion = kernels`) receives into the in-flight microbatches'
        // tensors, which the activations already count.
        if pp > 1 && ir.kernels.pytorch_native() {
            working += (2.0 * v - 1.0) * m * p2p_bytes;
        }
        // The loss upcasts the logits to fp32 and keeps its log-softmax
        // (fp32); at the start of backward that output, the gradient it
        // receives and the one it passes on (fp32 each) coexist: 12 bytes
        // per logit (`tests/clients/measure_block_memory.py` measures
        // 12.04 for torch's cross-entropy), all on the last stage, which
        // holds one microbatch's activations in flight.
        let logits = epi.widest_out * LOSS_BYTES_PER_LOGIT;
        let last = stage_layers[n_stages - 1] as f64 * body.saved;
        working += if n_stages == 1 {
            logits
        } else {
            (logits + last - memory.activations).max(0.0)
        };
        memory.working = working;
        // The embedding tables as the framework places them, in what HBM
        // the rest leaves: the busiest rank's lookups and its share of the
        // pooled all-to-all set the time (docs/COST-MODEL.md, "Embedding
        // tables").
        let devices = p.devices();
        let tc = self.table_costs(p, b, &mut memory);
        // Pooled lookups are exchanged between the table owners and the
        // data-parallel ranks, forward and backward, and the ids once,
        // before the forward lookups, every microbatch.
        let a2a_emb = m * (2.0 * tc.pooled.0 + tc.ids.0);
        self.exchange_comms(
            tc.group,
            (m * 2.0 * tc.pooled.0, m * tc.pooled.1 * tc.skew.sent_step),
            (m * tc.ids.0, m * tc.ids.1),
            &mut comms,
        );
        // Host tables: forward reads, backward read and write.
        let host_lookups = 3.0 * m * tc.host_read;
        let mut compute = body
            .fwd
            .plus(&body.bwd)
            .scaled(sl)
            .plus(
                &pro.fwd
                    .plus(&pro.bwd)
                    .scaled(if slow == 0 { 1.0 } else { 0.0 }),
            )
            .plus(
                &epi.fwd
                    .plus(&epi.bwd)
                    .scaled(if slow == n_stages - 1 { 1.0 } else { 0.0 }),
            )
            .scaled(m);
        // The busiest rank's lookups beyond an even share (the pipeline
        // priced an even share); on the critical path.
        let lookup_skew = compute.embedding * (tc.skew.lookups - 1.0);
        compute.embedding += lookup_skew;
        let recompute = body.recompute * sl * m;
        let tp_comm = tp_comm_exposed;
        let pp_comm = m * t_send_exposed;
        let cp_comm = body.cp_exposed() * sl * m;
        let a2a = body.a2a * 2.0 * sl * m + a2a_emb;
        // The norm gains' gradient all-reduce runs once, after the last
        // backward (`tp_param_time`, reported in the tensor-parallel part):
        // on the critical path.
        let step = pipeline
            + lookup_skew
            + dp_exposed
            + opt_time
            + a2a_emb
            + hw.step_overhead
            + host_lookups
            + tp_param_time;
        let time = StepTime {
            compute,
            recompute,
            tp_comm,
            cp_comm,
            all_to_all: a2a,
            pp_comm,
            bubble,
            dp_exposed,
            optimizer: opt_time,
            prefill: 0.0,
            overhead: hw.step_overhead,
            host_seq: 0.0,
            host_lookups,
            step,
        };
        let samples = global_batch;
        // Model FLOPs exclude recomputation, hardware FLOPs include it.
        let model_flops = 3.0 * ir.flops_per_sample() * samples;
        let hardware_flops = model_flops + ir.recompute_flops_per_sample(p.recompute) * samples;
        let linear_flops = 3.0 * ir.linear_flops_per_sample() * samples
            + ir.recompute_linear_flops_per_sample(p.recompute) * samples;
        let hardware_peak = hw.hardware_peak(hardware_flops, linear_flops);
        Estimate {
            sampling_bytes_per_seq: 0.0,
            point: *p,
            devices,
            feasible: tc.placed && memory.total() <= memory.capacity,
            time,
            memory,
            comms,
            stage_layers,
            slot,
            slot_forward: t_stage_fwd.min(slot),
            samples_per_step: samples,
            tokens_per_step: if ir.tokens_per_sample > 1.0 {
                samples * ir.tokens_per_sample
            } else {
                0.0
            },
            model_flops,
            hardware_flops,
            peak: hw.peak,
            hardware_peak,
            power: devices as f64 * hw.device_power
                + (devices as f64 / hw.devices_per_node as f64).ceil() * hw.node_power,
            price_per_s: hw.price_per_device.map(|pr| pr * devices as f64),
            ttft: None,
            tpot: None,
        }
    }

    /// The embedding tables of point `p` as placed
    /// ([`crate::placement::of_point`]) in what `memory` leaves of HBM,
    /// and what one forward pass of `b` samples per device pays for them.
    /// Sets `memory`'s table bytes: the busiest rank's tables with their
    /// optimizer state, and host tables spread over the devices' host
    /// memory (a table placed nowhere makes the point infeasible; its
    /// memory then counts at least an even share of every table).
    fn table_costs(&self, p: &DesignPoint, b: f64, memory: &mut Memory) -> TableCosts {
        let hw = self.hw;
        let (group, placed) = crate::placement::of_point(
            self.ir,
            p.devices().max(1),
            memory,
            hw.host_bandwidth > 0.0,
        );
        let mut tc = TableCosts {
            skew: Skew::default(),
            placed: true,
            group,
            pooled: (0.0, 0.0),
            ids: (0.0, 0.0),
            host_read: 0.0,
        };
        if placed.is_empty() {
            return tc;
        }
        let states = crate::placement::table_states(self.ir);
        let busiest = crate::placement::bytes_per_rank(&placed, group)
            .into_iter()
            .fold(0.0, f64::max);
        let bytes = |kind: Option<&str>| {
            placed
                .iter()
                .filter(|t| kind.is_none_or(|k| t.sharding == k))
                .fold(0.0, |a, t| a + t.bytes)
        };
        let n = group as f64;
        tc.placed = placed.iter().all(|t| t.sharding != "unplaced");
        memory.embeddings = if tc.placed {
            busiest
        } else {
            busiest.max(bytes(None) / n)
        } * states;
        memory.host_embeddings = bytes(Some("host")) * states / n;
        if host_tables_per_node(memory, p.devices(), hw) > hw.host_capacity {
            tc.placed = false;
        }
        tc.skew = crate::placement::skew(&placed, group);
        let topo = &hw.topo;
        let mut lookup = 0.0;
        for o in self.ir.segments.iter().flat_map(|s| s.ops.iter()) {
            if o.op != "embedding_bag" {
                continue;
            }
            lookup += o.lookup_bytes * o.mult;
            if group > 1 {
                // The pooled vectors of `b` samples, in the activation
                // type: the time is `exchange` times an even spread's.
                let out = (o.bytes - o.lookup_bytes) * b;
                tc.pooled.0 += topo.time(Collective::AllToAll, group, 1, out * tc.skew.exchange);
                tc.pooled.1 += out;
            }
        }
        // The ids: under the cost-balanced placement (TorchRec's input
        // distribution) each rank sends the ids of its samples to the
        // ranks that serve their tables, [`ID_BYTES`] per id and
        // [`LENGTH_BYTES`] per sample and table entry, as [`Skew::ids`]
        // and [`Skew::lengths`] count them. The memory-balanced placement
        // models model-parallel input (DLE's loader reads each rank's
        // features of the whole batch): no exchange.
        if group > 1 && matches!(self.ir.kernels.tables, TableSharding::CostBalanced) {
            let ids = b * (tc.skew.ids * ID_BYTES + tc.skew.lengths * LENGTH_BYTES);
            let sent = b * tc.skew.ids_sent;
            tc.ids = (topo.time(Collective::AllToAll, group, 1, ids), sent);
        }
        // Host tables' share of the rows looked up crosses the host link
        // (host bandwidth split over the node's GPUs).
        if tc.skew.host > 0.0 {
            tc.host_read =
                lookup * b * tc.skew.host / (hw.host_bandwidth / hw.devices_per_node as f64);
        }
        tc
    }

    /// The report lines of the embedding all-to-alls: the pooled vectors
    /// (and their gradients) and, when they travel, the ids; `bytes` are
    /// what the busiest rank sends, `time` prices its larger direction.
    fn exchange_comms(
        &self,
        devices: u64,
        pooled: (f64, f64),
        ids: (f64, f64),
        comms: &mut Vec<Comm>,
    ) {
        let topo = &self.hw.topo;
        for (what, (time, bytes)) in [
            ("embedding all-to-all (busiest rank)", pooled),
            ("embedding ids all-to-all (busiest rank)", ids),
        ] {
            if bytes > 0.0 {
                comms.push(Comm {
                    what: what.into(),
                    collective: Collective::AllToAll,
                    group: devices,
                    level: topo.level(devices, 1),
                    algorithm: topo.algorithm(Collective::AllToAll, devices, 1).into(),
                    bytes,
                    time,
                    exposed: time,
                });
            }
        }
    }

    /// Forward-only time of one pass over all segments for `b` samples per
    /// replica, summed over pipeline stages (a request crosses them all),
    /// and the tensor-parallel bytes the busiest rank sends in it: the
    /// stage of `stage_layers` that sends most, its layers' collectives
    /// plus the prologue's on the first stage and the epilogue's on the
    /// last (as the training step counts them).
    fn forward(&self, ir: &Ir, p: &DesignPoint, b: f64, stage_layers: &[u64]) -> Forward {
        let ev = Evaluator {
            ir,
            hw: self.hw,
            prefill: None,
        };
        let mut t = ClassTimes::default();
        let mut tp = 0.0;
        let mut params = 0.0;
        // Tensor-parallel bytes of the prologue, one body layer, the epilogue.
        let (mut pro, mut layer, mut epi) = (0.0, 0.0, 0.0);
        let (mut widest_layer, mut logits) = (0.0f64, 0.0f64);
        for (si, (s, role)) in ir.segments.iter().zip(memory::roles(ir)).enumerate() {
            let sc = ev.segment(si, p, b, false);
            match role {
                Role::Epilogue => logits = logits.max(sc.widest_whole),
                _ => widest_layer = widest_layer.max(sc.widest_out),
            }
            t = t.plus(&sc.fwd.scaled(s.count as f64));
            tp += sc.tp_fwd * s.count as f64;
            params += sc.params * s.count as f64;
            match role {
                Role::Body => layer = sc.tp_bytes_fwd,
                Role::Prologue => pro += sc.tp_bytes_fwd * s.count as f64,
                Role::Epilogue => epi += sc.tp_bytes_fwd * s.count as f64,
            }
        }
        let n = stage_layers.len().max(1);
        let busiest = (0..n)
            .map(|i| {
                let layers = stage_layers.get(i).copied().unwrap_or(0) as f64;
                layers * layer + if i == 0 { pro } else { 0.0 } + if i == n - 1 { epi } else { 0.0 }
            })
            .fold(0.0, f64::max);
        // What a pass without autograd holds at its widest op: that op's
        // output and the input (or sibling) of the same width it is
        // computed from or with (an activation's input, a gated unit's
        // other half), and the residual stream with its normalised copy.
        // Logits: the sampled token's of each sequence (engines compute
        // the head on those rows only), gathered whole for sampling.
        let rows = b * ir.tokens_per_sample / p.cp as f64;
        let beta = ir.act_bytes;
        Forward {
            compute: t,
            tp_time: tp,
            tp_bytes: busiest,
            params,
            transient: beta * (2.0 * widest_layer + 2.0 * rows * ir.hidden),
            // `widest_whole` is a context-parallel share; the rank that
            // holds a sequence's last token holds its whole vocabulary.
            sampled_logits: logits * p.cp as f64 / ir.tokens_per_sample.max(1.0),
        }
    }

    fn infer(&self, p: &DesignPoint) -> Estimate {
        let ir = self.ir;
        let hw = self.hw;
        let topo = &hw.topo;
        // Inference batch is per replica.
        let b = (p.batch as f64).max(1.0);
        let stage_layers = self.split_layers(p, 1.0, 0.0, 0.0);
        let fwd = self.forward(ir, p, b, &stage_layers);
        let (mut classes, t_tp, tp_bytes, params) =
            (fwd.compute, fwd.tp_time, fwd.tp_bytes, fwd.params);
        let pp = p.pp.max(1) as f64;
        // Embedding tables are held as placed (below), not as weights.
        let mut memory = self.state_memory(
            Held {
                dense: (params - memory::table_params(ir)).max(0.0) / pp,
                ..Held::default()
            },
            p,
        );
        // KV cache: keys and values of every layer for the whole context.
        memory.kv_cache = self.kv_per_token(p) * self.max_context() * b / pp;
        // The pass's transient activations or its sampling, whichever is
        // larger (they do not coexist: the head runs after the layers).
        // Only token sequences are sampled (a recommender scores items).
        let sampled = matches!(ir.phase, Phase::Decode { .. }) || ir.tokens_per_sample > 1.0;
        let sampling_bytes_per_seq = if sampled {
            fwd.sampled_logits / b * (ir.act_bytes + SAMPLING_BYTES_PER_LOGIT)
        } else {
            0.0
        };
        memory.working = fwd.transient.max(sampling_bytes_per_seq * b);
        // Embedding tables as placed: the busiest rank's lookups, the
        // all-to-alls and host lookups (forward only).
        let tc = self.table_costs(p, b, &mut memory);
        classes.embedding *= tc.skew.lookups;
        let t_a2a = tc.pooled.0 + tc.ids.0;
        let host_lookups = tc.host_read;
        let t_fwd = classes.total();
        // What each rank sends a stage on, for `tokens` per sample: a
        // context-parallel rank holds `1/cp` of the tokens, and a
        // tensor-parallel rank sends its `1/tp` of that state, flattened
        // (Megatron-LM's scatter and vLLM's both split the flat tensor).
        let hand_off =
            |tokens: f64| b * tokens * ir.hidden * ir.stream_bytes / (p.cp * p.tp) as f64;
        let p2p_bytes = hand_off(ir.tokens_per_sample);
        let stride_pp = topo.pipeline_hop(p.pp, p.tp * p.cp * p.dp);
        let t_send = if p.pp > 1 {
            topo.time(Collective::SendRecv, 2, stride_pp, p2p_bytes)
        } else {
            0.0
        };
        // The engine's host work per sequence (scheduling, sampling,
        // detokenisation): once per sequence in the pass, for workloads
        // that are token sequences (not a recommender's items).
        let host_seq = if matches!(ir.phase, Phase::Decode { .. }) || ir.tokens_per_sample > 1.0 {
            b * hw.seq_overhead
        } else {
            0.0
        };
        let pass =
            t_fwd + t_tp + (pp - 1.0) * t_send + t_a2a + host_lookups + hw.step_overhead + host_seq;
        let devices = p.devices();
        let generate = match ir.phase {
            Phase::Decode { generate, .. } => generate,
            _ => None,
        };
        let mut comms = Vec::new();
        if t_tp > 0.0 || tp_bytes > 0.0 {
            comms.push(Comm {
                what: "tensor-parallel all-reduce".into(),
                collective: Collective::AllReduce,
                group: p.tp,
                level: topo.level(p.tp, 1),
                algorithm: topo.algorithm(Collective::AllReduce, p.tp, 1).into(),
                // One pass (the decode step, not its share of the prefill).
                bytes: tp_bytes,
                time: t_tp,
                exposed: t_tp,
            });
        }
        if p.pp > 1 {
            comms.push(Comm {
                what: "pipeline activations".into(),
                collective: Collective::SendRecv,
                group: 2,
                level: topo.level(2, stride_pp),
                algorithm: topo.algorithm(Collective::SendRecv, 2, stride_pp).into(),
                // One pass (as the tensor-parallel row), sent by the
                // busiest device: each tensor-parallel rank of a stage
                // sends its 1/t block of the output (Megatron-LM's
                // scatter); without sequence parallelism the next stage
                // all-gathers the blocks, (t - 1) more. A middle stage
                // does both; with two stages the first only sends and the
                // last only gathers. The pass waits for the p - 1 sends
                // in turn (the gathers run inside the node).
                bytes: p2p_bytes
                    * if p.sequence_parallel || p.tp == 1 {
                        1.0
                    } else if p.pp == 2 {
                        (p.tp - 1) as f64
                    } else {
                        p.tp as f64
                    },
                time: (pp - 1.0) * t_send,
                exposed: (pp - 1.0) * t_send,
            });
        }
        self.exchange_comms(
            tc.group,
            (tc.pooled.0, tc.pooled.1 * tc.skew.sent_forward),
            tc.ids,
            &mut comms,
        );
        let (step, ttft, tpot, prefill_share, tokens_per_step) = match (&ir.phase, self.prefill) {
            (Phase::Decode { .. }, Some(pre)) => {
                // Serving: every request's prompt is prefilled once and
                // then `generate` tokens are decoded; in steady state each
                // decode step also carries 1/generate of a batch's prefill.
                let pre_fwd = self.forward(pre, p, b, &stage_layers);
                // The prompt's hand-offs carry its tokens, not one each.
                let t_send_pre = if p.pp > 1 {
                    topo.time(
                        Collective::SendRecv,
                        2,
                        stride_pp,
                        hand_off(pre.tokens_per_sample),
                    )
                } else {
                    0.0
                };
                let t_pre = pre_fwd.compute.total() + pre_fwd.tp_time + (pp - 1.0) * t_send_pre;
                let g = generate.unwrap_or(1).max(1) as f64;
                (
                    pass + t_pre / g,
                    Some(t_pre),
                    Some(pass),
                    t_pre / g,
                    b * p.dp as f64,
                )
            }
            (Phase::Decode { .. }, None) => (pass, None, Some(pass), 0.0, b * p.dp as f64),
            _ => (
                pass,
                (ir.tokens_per_sample > 1.0).then_some(pass),
                None,
                0.0,
                b * p.dp as f64 * ir.tokens_per_sample,
            ),
        };
        let samples = b * p.dp as f64;
        let model_flops = ir.flops_per_sample() * samples;
        Estimate {
            sampling_bytes_per_seq,
            point: *p,
            devices,
            feasible: tc.placed && memory.total() <= memory.capacity,
            time: StepTime {
                compute: classes,
                tp_comm: t_tp,
                pp_comm: (pp - 1.0) * t_send,
                all_to_all: t_a2a,
                host_lookups,
                prefill: prefill_share,
                overhead: hw.step_overhead + host_seq,
                host_seq,
                step,
                ..StepTime::default()
            },
            memory,
            comms,
            stage_layers,
            slot: 0.0,
            slot_forward: 0.0,
            samples_per_step: samples,
            tokens_per_step: if ir.tokens_per_sample > 1.0
                || matches!(ir.phase, Phase::Decode { .. })
            {
                tokens_per_step
            } else {
                0.0
            },
            model_flops,
            hardware_flops: model_flops,
            peak: hw.peak,
            hardware_peak: hw.hardware_peak(model_flops, ir.linear_flops_per_sample() * samples),
            power: devices as f64 * hw.device_power
                + (devices as f64 / hw.devices_per_node as f64).ceil() * hw.node_power,
            price_per_s: hw.price_per_device.map(|pr| pr * devices as f64),
            ttft,
            tpot,
        }
    }
}

/// One inference pass of the cost model (`Evaluator::forward`).
struct Forward {
    compute: ClassTimes,
    tp_time: f64,
    /// Tensor-parallel bytes the busiest stage sends.
    tp_bytes: f64,
    params: f64,
    /// Bytes the pass holds at its widest op beyond weights and KV.
    transient: f64,
    /// Full-vocabulary logits of the sampled tokens (one per sequence).
    sampled_logits: f64,
}

/// What a pass pays for its embedding tables ([`Evaluator::table_costs`]).
struct TableCosts {
    /// The placement's busiest rank against an even spread.
    skew: Skew,
    /// Every table found a place.
    placed: bool,
    /// Devices one copy of the tables spans.
    group: u64,
    /// The pooled-vector all-to-all of one pass: time, and the pooled
    /// bytes of the local samples (`W x beta x b`, which the skew's
    /// `sent_*` scale to what the busiest rank sends).
    pooled: (f64, f64),
    /// The ids' all-to-all of one forward pass: time and the bytes the
    /// busiest rank sends.
    ids: (f64, f64),
    /// One read of the host tables' rows looked up in a pass: time.
    host_read: f64,
}

pub use crate::placement::{ID_BYTES, LENGTH_BYTES};

/// Bytes per logit a sampling pass holds beyond the activation type's
/// copy: the fp32 upcast and the fp32 probabilities of its softmax.
pub const SAMPLING_BYTES_PER_LOGIT: f64 = 4.0 + 4.0;

/// Output tile edge of a matrix-product kernel (cuBLAS, CUTLASS and
/// Triton GEMMs tile the output in 128 x 128 blocks or multiples).
pub const GEMM_TILE: f64 = 128.0;

/// Bytes per logit at the loss's peak: the fp32 log-softmax output it
/// keeps, the fp32 gradient it receives and the fp32 gradient it passes
/// on (the activation-type logits are freed once upcast).
pub const LOSS_BYTES_PER_LOGIT: f64 = 3.0 * 4.0;

/// Microbatches' activations the first pipeline stage holds at its peak,
/// in units of one microbatch through all of the stage's layers, for `pp`
/// stages, `v` virtual stages (model chunks) per device and `m`
/// microbatches. 1F1B runs `pp - 1` warm-up forwards before its first
/// backward: `min(m, pp)` in flight. The interleaved schedule (Megatron-LM,
/// torch's `ScheduleInterleaved1F1B`) runs `2 (pp - 1) + (v - 1) pp`
/// warm-up chunk forwards on the first stage, so `min(m v, 2 (pp - 1) +
/// (v - 1) pp + 1)` chunks of `1 / v` of the layers are in flight: for
/// large `m` this is Korthikanti et al.'s `pp (1 + (pp - 1) / (pp v))`,
/// where the paper's `m` is the number of model chunks.
pub fn pipeline_in_flight(pp: f64, v: f64, m: f64) -> f64 {
    if v <= 1.0 {
        pp.min(m)
    } else {
        (m * v).min(2.0 * (pp - 1.0) + (v - 1.0) * pp + 1.0) / v
    }
}

/// Bytes per element of a ZeRO-3 gradient before its reduce-scatter (the
/// reduce-scatter's bytes and the unsharded gradient the working memory
/// holds): fp32 under FSDP (`fusion = compiled` or `eager`; its reduce
/// dtype for bf16 mixed precision, torchtitan's), the model's type under
/// DeepSpeed (`kernels`).
fn zero3_grad_bytes(ir: &Ir) -> f64 {
    if ir.kernels.pytorch_native() {
        ir.act_bytes.max(4.0)
    } else {
        ir.act_bytes
    }
}

/// Bytes of embedding tables that a point of `devices` devices keeps in
/// one node's host memory: the shares of its devices on the node. Over
/// the node's `host_capacity`, the point does not fit.
pub fn host_tables_per_node(memory: &Memory, devices: u64, hw: &Hardware) -> f64 {
    memory.host_embeddings * devices.min(hw.devices_per_node) as f64
}

/// Fused attention's efficiency before the fitted factor. A call runs a
/// thread block per `FLASH_BLOCK` query rows and head (`blocks` in all):
/// it loads its queries, loops over `keys` keys on average (a block of
/// `FLASH_BLOCK` keys costs `4 FLASH_BLOCK^2 d` FLOPs at the core's share
/// of `peak`) and writes its output (`2 FLASH_BLOCK d beta` bytes at the
/// core's share of `bandwidth`). The load and the store cost as much as
/// `L0 = beta peak / (2 bandwidth)` keys of the loop, whatever the block
/// and head sizes, so a call runs at `keys / (keys + L0)`, in whole waves
/// of blocks on the device's `cores` (docs/COST-MODEL.md, "Fused
/// attention").
pub fn flash_efficiency(
    keys: f64,
    blocks: f64,
    beta: f64,
    peak: f64,
    bandwidth: f64,
    cores: Option<u64>,
) -> f64 {
    let l0 = beta * peak / (2.0 * bandwidth);
    let keys = keys.max(1.0);
    keys / (keys + l0) * whole_waves(blocks.max(1.0).round(), cores)
}

/// Exponentials of a fused attention pass whose forward computes
/// `forward_flops` with head dim `head_dim`: one per score, `4 d` FLOPs of
/// products per score (`q k` and `p v`), in the forward and again in the
/// backward, which recomputes the probabilities from the saved log-sum-exp
/// (FlashAttention-2). They run on the special-function units, in series
/// with the products inside a warp group (docs/COST-MODEL.md §2, "Fused
/// attention").
pub fn softmax_exponentials(forward_flops: f64, head_dim: f64) -> f64 {
    forward_flops / (4.0 * head_dim.max(1.0))
}

/// The share of `cores` busy over the whole waves that run `tiles` tiles
/// of equal work (1 when the device does not declare `cores`).
fn whole_waves(tiles: f64, cores: Option<u64>) -> f64 {
    let Some(cores) = cores else {
        return 1.0;
    };
    let cores = cores as f64;
    tiles / ((tiles / cores).ceil() * cores)
}

/// Wave quantisation: a product of `instances` independent outputs of
/// `per / (2 k)` elements each runs `ceil(elements / 128^2)` output tiles
/// per instance on the device's `cores`, in whole waves; the last wave's
/// idle cores are lost. 1 when the device does not declare `cores`.
pub fn wave_efficiency(k: f64, per: f64, instances: f64, cores: Option<u64>) -> f64 {
    let elements = per / (2.0 * k.max(1.0));
    let tiles = (elements / (GEMM_TILE * GEMM_TILE)).ceil().max(1.0) * instances.max(1.0).round();
    whole_waves(tiles, cores)
}

fn add_seg(a: &SegCost, s: &SegCost, k: f64) -> SegCost {
    SegCost {
        fwd: a.fwd.plus(&s.fwd.scaled(k)),
        bwd: a.bwd.plus(&s.bwd.scaled(k)),
        recompute: a.recompute + s.recompute * k,
        tp_fwd: a.tp_fwd + s.tp_fwd * k,
        tp_bytes_fwd: a.tp_bytes_fwd + s.tp_bytes_fwd * k,
        tp_bwd: a.tp_bwd + s.tp_bwd * k,
        tp_bytes_bwd: a.tp_bytes_bwd + s.tp_bytes_bwd * k,
        tp_param_elems: a.tp_param_elems + s.tp_param_elems * k,
        tp_param_sent: a.tp_param_sent + s.tp_param_sent * k,
        cp: a.cp + s.cp * k,
        cp_bytes: a.cp_bytes + s.cp_bytes * k,
        attention_time: a.attention_time + s.attention_time * k,
        a2a: a.a2a + s.a2a * k,
        a2a_bytes: a.a2a_bytes + s.a2a_bytes * k,
        params: a.params + s.params * k,
        expert_params: a.expert_params + s.expert_params * k,
        saved: a.saved + s.saved * k,
        saved_all: a.saved_all + s.saved_all * k,
        widest_out: a.widest_out.max(s.widest_out),
        widest_whole: a.widest_whole.max(s.widest_whole),
        tp_whole: a.tp_whole.max(s.tp_whole),
        flops: a.flops + s.flops * k,
        recompute_flops: a.recompute_flops + s.recompute_flops * k,
    }
}
