//! The time of one engine iteration, from the cost model.
//!
//! A continuous-batching iteration runs one forward pass over a mix of
//! prefill chunks and one token of each decoding sequence. The cost model
//! prices whole phases, so this module evaluates it on four probes of the
//! deployment (a decode step of one sequence at context 1 and at context
//! `C`, and a prefill of `n` tokens) and reads the terms off the
//! estimates' own breakdown (docs/COST-MODEL.md §4a):
//!
//! ```text
//! T(P, D, K, Q, S) = t_fixed + (P + D) c_comm + max(t_weights, (P + D) c_token)
//!                    + K c_kv + Q c_pair + S c_seq
//! ```
//!
//! `P` prefill tokens computed, `D` decoding sequences, `K` KV-cache tokens
//! the decoding sequences read, `Q` query-key pairs of the prefill chunks'
//! attention, `S` sequences scheduled (the decoding ones and those with a
//! prefill chunk): the engine's host work per sequence is paid per
//! sequence, not per token, so it is its own term. Every coefficient is a difference or ratio of cost-model
//! figures, so calibration, dtype, kernels and tensor parallelism reach the
//! simulator through the cost model alone, and no hardware figure is read
//! here. Built once per (deployment, tensor-parallel degree); the
//! simulator then calls [`IterModel::time`], a handful of flops.

use std::collections::BTreeMap;

use gantry_lang::program::{Cluster, Phase, Workload};

use crate::cost::{Estimate, Evaluator};
use crate::hardware::Hardware;
use crate::ir::lower;
use crate::point::{DesignPoint, Pin, PinError};

/// Per-iteration time coefficients and per-replica capacities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IterModel {
    pub tp: u64,
    /// Pipeline stages. A pipelined deployment runs as `pp` virtual
    /// engines (vLLM's V0 engine with pipeline parallelism), each a
    /// replica of the simulator with this model: an iteration crosses
    /// every stage (its time is the sum of the stages and the hand-offs),
    /// and each virtual engine owns a `pp`-th of the KV cache and is
    /// charged `tp` devices, so the `pp` of them cost the pipeline's
    /// `tp x pp`. The engines' host parts ([`IterModel::host`]) take
    /// turns on the pipeline's one host process (`sim.rs`).
    pub pp: u64,
    /// Host overhead, collective latency and the attention of a
    /// one-token context: paid by every iteration.
    pub t_fixed: f64,
    /// Host time per scheduled sequence: the device's `seq_overhead` plus
    /// the serving engine's.
    pub c_seq: f64,
    /// The serving engine's host time per iteration and per scheduled
    /// sequence (its `iteration_overhead` and `seq_overhead`, already in
    /// `t_fixed` and `c_seq`): the part of an iteration that runs on the
    /// engine's host process, [`IterModel::host`]. A pipeline's virtual
    /// engines share that process (`sim.rs`); the rest of the iteration
    /// is the device's.
    pub host_fixed: f64,
    pub host_seq: f64,
    /// Streaming the weights once (linear layers at one token).
    pub t_weights: f64,
    /// Linear-layer compute per token when compute-bound.
    pub c_token: f64,
    /// Tensor-parallel collective and pipeline hand-off seconds per token.
    pub c_comm: f64,
    /// Decode attention per KV-cache token read.
    pub c_kv: f64,
    /// Prefill attention per query-key pair.
    pub c_pair: f64,
    /// Seconds from a request's arrival until the scheduler can take it
    /// (the engine's `request_overhead`): the request waits it out before
    /// it is queued, and its TTFT and end-to-end latency count it.
    pub admission: f64,
    /// Seconds a front end (API server) is busy per request (the engine's
    /// `frontend_time`): requests take turns there, before `admission`.
    pub frontend: f64,
    /// KV-cache bytes per token per device (`memory::kv_per_token`).
    pub kv_bytes_per_token: f64,
    /// KV-cache bytes per token of the whole model (what a transfer moves).
    pub kv_bytes_per_token_model: f64,
    /// Tokens the replica's KV cache holds: the server's share of HBM
    /// (`memory_utilization`) minus weights, reserve and the prefill's
    /// activations, per device, over the bytes per token.
    pub kv_capacity_tokens: f64,
    /// Dollars per second of one replica (`None`: no price declared).
    pub price_per_s: Option<f64>,
    /// Watts of one replica (devices only; node overhead shared).
    pub power: f64,
}

impl IterModel {
    /// Seconds of one iteration (formula above) of `seqs` scheduled
    /// sequences; 0 for an empty one.
    #[inline]
    pub fn time(&self, prefill: f64, decode: f64, kv: f64, pairs: f64, seqs: f64) -> f64 {
        let n = prefill + decode;
        if n <= 0.0 {
            return 0.0;
        }
        self.t_fixed
            + n * self.c_comm
            + self.t_weights.max(n * self.c_token)
            + kv * self.c_kv
            + pairs * self.c_pair
            + seqs * self.c_seq
    }

    /// Seconds of an iteration of `seqs` scheduled sequences that run on
    /// the engine's host process (the engine's terms; part of
    /// [`IterModel::time`], which is never less).
    #[inline]
    pub fn host(&self, seqs: f64) -> f64 {
        self.host_fixed + seqs * self.host_seq
    }
}

/// The terms a serving engine adds to the iteration model (`engine NAME
/// { ... }`, docs/COST-MODEL.md §4a): its host time per iteration and per
/// scheduled sequence, and its decode-attention speed relative to the
/// device's factors. [`EngineTerms::IDEAL`] changes nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EngineTerms {
    pub iteration_overhead: f64,
    pub seq_overhead: f64,
    pub kv_efficiency: f64,
    pub request_overhead: f64,
    pub frontend_time: f64,
}

impl EngineTerms {
    /// No host time, the device's kernels.
    pub const IDEAL: EngineTerms = EngineTerms {
        iteration_overhead: 0.0,
        seq_overhead: 0.0,
        kv_efficiency: 1.0,
        request_overhead: 0.0,
        frontend_time: 0.0,
    };

    /// The terms of a declared engine (`None`: the ideal one).
    pub fn of(e: Option<&gantry_lang::program::Engine>) -> EngineTerms {
        e.map_or(EngineTerms::IDEAL, |e| EngineTerms {
            iteration_overhead: e.iteration_overhead,
            seq_overhead: e.seq_overhead,
            kv_efficiency: e.kv_efficiency,
            request_overhead: e.request_overhead,
            frontend_time: e.frontend_time,
        })
    }
}

impl IterModel {
    /// This model run by engine `e`: `t_fixed + iteration_overhead`,
    /// `c_seq + seq_overhead`, `c_kv / kv_efficiency`, `admission +
    /// request_overhead`; the two host terms are also the model's host
    /// part (`host_fixed`, `host_seq`). The ideal engine returns the model
    /// unchanged, bit for bit.
    pub fn with_engine(mut self, e: EngineTerms) -> IterModel {
        if e == EngineTerms::IDEAL {
            return self;
        }
        self.t_fixed += e.iteration_overhead;
        self.c_seq += e.seq_overhead;
        self.host_fixed += e.iteration_overhead;
        self.host_seq += e.seq_overhead;
        self.c_kv /= e.kv_efficiency;
        self.admission += e.request_overhead;
        self.frontend += e.frontend_time;
        self
    }
}

/// Query-key pairs of a causal prefill chunk of `c` tokens after `start`
/// tokens already in the cache.
#[inline]
pub fn chunk_pairs(start: f64, c: f64) -> f64 {
    c * start + c * c / 2.0
}

fn probe(w: &Workload, phase: Phase, seq: u64) -> Workload {
    let mut v = w.clone();
    v.serve = None;
    v.phase = phase;
    v.bindings.insert("batch".into(), 1);
    v.bindings.insert("seq".into(), seq as i64);
    v
}

fn linear(e: &Estimate) -> f64 {
    let c = &e.time.compute;
    c.matmul + c.elementwise + c.embedding + c.layout
}

/// Builds the iteration model of `w` at tensor parallelism `tp` and
/// `pp` pipeline stages on `system`, probing with a prefill of `n`
/// tokens and a decode at context `ctx`. Errors are the cost model's (an
/// unpriceable workload, a degree the heads, layers or the system do not
/// allow, a missing hardware figure).
pub fn build(
    w: &Workload,
    system: &Cluster,
    tp: u64,
    pp: u64,
    n: u64,
    ctx: u64,
) -> Result<IterModel, PinError> {
    let pp = pp.max(1);
    let n = n.max(2);
    let ctx = ctx.max(2);
    let dec = |c: u64| {
        probe(
            w,
            Phase::Decode {
                batch: 1,
                context: c,
                generate: None,
                prompt: None,
            },
            1,
        )
    };
    let pre = probe(
        w,
        Phase::Prefill {
            batch: 1,
            prompt: Some(n),
        },
        n,
    );
    let err = |e: crate::ir::LowerError| PinError {
        code: gantry_lang::diagnostic::Code::C008,
        knob: "fix",
        message: format!("cannot price `{}`: {e}", w.name),
        help: "bind every shape symbol in the workload".into(),
    };
    let (ir1, irc, irp) = (
        lower(&dec(1)).map_err(err)?,
        lower(&dec(ctx)).map_err(err)?,
        lower(&pre).map_err(err)?,
    );
    let hw = Hardware::new(system, &dec(1)).map_err(|m| PinError {
        code: gantry_lang::diagnostic::Code::C009,
        knob: "fix",
        message: format!("device `{}` has no {}", m.device, m.what),
        help: "add the figure to the device in stdlib, or choose another dtype".into(),
    })?;
    let mut pins = BTreeMap::new();
    for (k, v) in [("tp", tp), ("pp", pp), ("dp", 1), ("batch", 1)] {
        pins.insert(k.to_string(), Pin::Int(v as i64));
    }
    let point: DesignPoint = crate::point::resolve(&pins, &ir1, system)?;
    let eval = |ir| {
        let ev = Evaluator {
            ir,
            hw: &hw,
            prefill: None,
        };
        let e = ev.evaluate(&point);
        crate::sanity::verify(&e, &hw).map(|_| e)
    };
    let (e1, ec, ep) = (eval(&ir1)?, eval(&irc)?, eval(&irp)?);
    let nf = n as f64;
    let c_token = linear(&ep) / nf;
    // Communication: tensor-parallel collectives and, pipelined, the
    // activation hand-offs between stages (0 at pp 1).
    let comm = |e: &Estimate| e.time.tp_comm + e.time.pp_comm;
    let c_comm = ((comm(&ep) - comm(&e1)) / (nf - 1.0)).max(0.0);
    let c_kv =
        ((ec.time.compute.attention - e1.time.compute.attention) / (ctx as f64 - 1.0)).max(0.0);
    let c_pair = ep.time.compute.attention / chunk_pairs(0.0, nf);
    // The probes are of one sequence: their per-sequence host time is
    // `c_seq`, the rest of their overhead is paid per iteration.
    let c_seq = e1.time.host_seq;
    let t_fixed =
        (e1.time.overhead - c_seq) + (comm(&e1) - c_comm).max(0.0) + e1.time.compute.attention;
    // Per device: a stage holds its layers' share.
    let kv_dev = Evaluator {
        ir: &ir1,
        hw: &hw,
        prefill: None,
    }
    .kv_per_token(&point)
        / pp as f64;
    let kv_model = Evaluator {
        ir: &ir1,
        hw: &hw,
        prefill: None,
    }
    .kv_per_token(&DesignPoint {
        tp: 1,
        pp: 1,
        ..point
    });
    let m = &ep.memory;
    // The server's share of HBM (vLLM's `--gpu-memory-utilization`).
    let util = w.serve.as_ref().map_or(1.0, |s| s.memory_utilization);
    // What the server holds back before sizing its cache: the peak of its
    // profiling run, a forward pass at the token budget (the prefill
    // probe's transient) and a sampling pass over `max_seqs` sequences.
    let max_seqs = w.serve.as_ref().map_or(1, |s| s.scheduler.max_seqs) as f64;
    let profile = m.working.max(ep.sampling_bytes_per_seq * max_seqs);
    let free = util * m.capacity - m.weights - m.reserve - m.activations - profile;
    // A stage's devices hold its layers' KV for every virtual engine:
    // each engine gets a `pp`-th of the tokens.
    let kv_capacity_tokens = if kv_dev > 0.0 {
        (free / kv_dev / pp as f64).max(0.0).floor()
    } else {
        0.0
    };
    let devices = tp as f64;
    let engine = EngineTerms::of(w.serve.as_ref().and_then(|s| s.engine.as_ref()));
    Ok(IterModel {
        tp,
        pp,
        t_fixed,
        c_seq,
        host_fixed: 0.0,
        host_seq: 0.0,
        t_weights: linear(&e1),
        c_token,
        c_comm,
        c_kv,
        c_pair,
        admission: 0.0,
        frontend: 0.0,
        kv_bytes_per_token: kv_dev,
        kv_bytes_per_token_model: kv_model,
        kv_capacity_tokens,
        price_per_s: hw.price_per_device.map(|p| p * devices),
        power: hw.device_power * devices,
    }
    .with_engine(engine))
}

/// The iteration model of a batching-window workload (recommendation
/// inference: one forward pass scores a batch of items, no sequence and
/// no KV cache) on one device, from two cost-model probes of the
/// workload's own step: a batch of one item and a batch of `n`. With
/// `e(b)` the estimate at batch `b` and `o` its fixed host overhead,
///
/// ```text
/// T(p) = o + max(e(1) - o, p (e(n) - o) / n)
/// ```
///
/// (the same form as [`IterModel::time`] with no decode, KV or attention
/// terms): one item pays the weight and table traffic of a whole pass;
/// a full batch the cost model's own step. The replica's capacity in
/// items (`kv_capacity_tokens`, a block per item) is the HBM the
/// weights, tables and reserve leave over the activations per item, so
/// a batch that does not fit is never formed. `C030` when the model
/// does not fit one device at batch 1.
pub fn build_batched(w: &Workload, system: &Cluster, n: u64) -> Result<IterModel, PinError> {
    let n = n.max(2);
    let err = |e: crate::ir::LowerError| PinError {
        code: gantry_lang::diagnostic::Code::C008,
        knob: "fix",
        message: format!("cannot price `{}`: {e}", w.name),
        help: "bind every shape symbol in the workload".into(),
    };
    let mut v = w.clone();
    v.serve = None;
    v.phase = Phase::Prefill {
        batch: n,
        prompt: None,
    };
    v.bindings.insert("batch".into(), n as i64);
    let ir = lower(&v).map_err(err)?;
    let hw = Hardware::new(system, &v).map_err(|m| PinError {
        code: gantry_lang::diagnostic::Code::C009,
        knob: "fix",
        message: format!("device `{}` has no {}", m.device, m.what),
        help: "add the figure to the device in stdlib, or choose another dtype".into(),
    })?;
    let at = |b: u64| -> Result<Estimate, PinError> {
        let mut pins = BTreeMap::new();
        for (k, x) in [("tp", 1), ("pp", 1), ("dp", 1), ("batch", b)] {
            pins.insert(k.to_string(), Pin::Int(x as i64));
        }
        let point: DesignPoint = crate::point::resolve(&pins, &ir, system)?;
        let e = Evaluator {
            ir: &ir,
            hw: &hw,
            prefill: None,
        }
        .evaluate(&point);
        crate::sanity::verify(&e, &hw).map(|_| e)
    };
    let (e1, en) = (at(1)?, at(n)?);
    let m = &e1.memory;
    let fixed = m.weights + m.embeddings + m.reserve;
    let per_item = (en.memory.activations / n as f64).max(0.0);
    let free = m.capacity - fixed - m.activations;
    if free < 0.0 {
        return Err(PinError {
            code: gantry_lang::diagnostic::Code::C030,
            knob: "fix",
            message: format!(
                "`{}` does not fit one device of `{}` at batch 1: {:.1} GB of weights, tables and reserve against {:.1} GB",
                w.name,
                system.name,
                (fixed + m.activations) / 1e9,
                m.capacity / 1e9
            ),
            help: "a batching-window replica is one device: use devices with more memory, or keep tables in host memory".into(),
        });
    }
    let capacity = if per_item > 0.0 {
        (1.0 + free / per_item).floor()
    } else {
        n as f64
    };
    let o = e1.time.overhead;
    Ok(IterModel {
        tp: 1,
        pp: 1,
        t_fixed: o,
        // Items, not sequences: no per-sequence host work.
        c_seq: 0.0,
        host_fixed: 0.0,
        host_seq: 0.0,
        t_weights: (e1.time.step - o).max(0.0),
        c_token: ((en.time.step - o) / n as f64).max(0.0),
        c_comm: 0.0,
        c_kv: 0.0,
        c_pair: 0.0,
        admission: 0.0,
        frontend: 0.0,
        kv_bytes_per_token: 0.0,
        kv_bytes_per_token_model: 0.0,
        kv_capacity_tokens: capacity,
        price_per_s: hw.price_per_device,
        power: hw.device_power,
    }
    // A batching window scores items, not sequences: only the engine's
    // per-iteration host time applies.
    .with_engine(EngineTerms {
        seq_overhead: 0.0,
        ..EngineTerms::of(w.serve.as_ref().and_then(|s| s.engine.as_ref()))
    }))
}
