//! R007's memory estimate: an upper bound of what a run allocates, from
//! the same shapes, layouts and schedule the devices use, so that a run
//! that would exhaust memory is refused before anything is allocated.
//!
//! All counts are f32 elements (4 B each), summed over every simulated
//! device, plus the reference interpreter's copies:
//!
//! - **Weights** (per device, prepared once and kept): every op instance
//!   (a `repeat` body counts once per iteration) lives on the devices of
//!   its pipeline stage (by [`chunk_layers`] of the stage split); each of
//!   the `dp * cp` replicas holds it over its `tp` ranks: a sharded op
//!   (column, row, heads, vocabulary, expert width) one copy cut `tp`
//!   ways, a replicated one `tp` copies, each row padded to the gemm's
//!   packing width ([`crate::jit::pack_b`]). `embedding_bag` tables follow
//!   the placement: one copy over the stage (table-, row- or
//!   column-wise) or one on every device of the stage (replicated). With gradients the parameter
//!   gradients are as large again, and each device's backward of an
//!   `embedding_bag` makes a dense gradient of every table. The largest
//!   op's weights count twice more (made, and cloned for each use).
//! - **Activations** (per device, one microbatch): every op result in the
//!   sharded program's layout ([`sharded_program`]) at the microbatch's
//!   shapes, summed over the `tp` ranks (a replicated value `tp` times, a
//!   split one once per copy; a `moe` also keeps the tokens it sent and
//!   received, `top_k` copies each, and its experts' three `d_ff`-wide
//!   activations). With gradients a device keeps one such tape
//!   per microbatch in flight: the most tapes its own [`schedule`] has
//!   outstanding, each as large as its virtual stage's values. On top,
//!   the largest virtual stage's current values (the environment, every
//!   tensor once) and either their conversions to other layouts (as large
//!   again) or, with gradients, the backward's gradients (one tape).
//!   Sends between stages wait in the receiver's queue: every
//!   microbatch's boundary values (and, with gradients, their gradients
//!   going back) may be queued at once when a stage runs ahead, which a
//!   forward-only run's first stage does.
//! - **Inputs and outputs**: every device holds its replica's inputs for
//!   all its microbatches (the whole batch over `tp * pp` devices of a
//!   replica) and a copy per forward; the outputs are gathered whole.
//! - **Reference**: the interpreter's values of every tensor once (the
//!   whole batch), and with gradients its tape (every op result, every
//!   iteration), as many gradients and the parameter gradients; twice the
//!   largest op's weights (made while it runs the op).
//! - **Phases**: the reference's forward, the devices, then the
//!   reference's backward run one after the other, so the estimate is the
//!   largest of (a) the inputs twice and the reference's forward, (b) the
//!   inputs, the outputs and the devices, (c) the inputs and outputs
//!   twice, the devices' parameter gradients and the reference's backward.
//! - **Fixed**: [`DEVICE_HEAP`] bytes per device (JIT module, kernels,
//!   endpoint, maps), and [`PER_DEVICE`] bytes per device (its thread's stack, the
//!   JIT's executable pages, allocator slack: memory outside the counted
//!   allocations) and [`PER_RUN`] once (the process itself).
//!
//! A decode step is estimated at its whole sequence (prompt and step),
//! which bounds the prompt's KV cache. `tests/footprint.rs` counts the
//! bytes a run allocates with a counting global allocator, and per
//! thread the bytes it allocated, and checks over examples and design
//! points that `estimate - fixed` is at least the run's peak and at least
//! the devices' threads' own worsts summed (any interleaving of them),
//! and at most 1.5 times every thread's own worst summed; resident memory
//! (`/usr/bin/time -v`) is compared with the whole estimate in
//! docs/RUNTIME.md.

use gantry_lang::program::{Item, OpKind, Phase, TensorId, Workload};

use crate::error::RuntimeError;
use crate::graph::{self, numel};
use crate::layout::Layout;

use gantry_compiler::sharded::Strategy;

use super::device::sharded_program;
use super::parallel::{Parallel, TableShard};
use super::pipeline::{boundary_live, pipelined_repeat};
use super::schedule::{Action, chunk_layers, schedule};

/// Bytes per simulated device that do not scale with the model and that
/// the global allocator does not see: its thread's stack, the JIT's
/// executable pages and the allocator's per-thread arena slack. Resident
/// memory of small runs (8 devices, a few MB of tensors) grows by 0.8 to
/// 1.5 MB per device over their counted allocations.
pub const PER_DEVICE: f64 = 1e6;
/// Bytes per simulated device that do not scale with the model and that
/// the allocator does see: its JIT module and compiled kernels, endpoint
/// and maps, and the compile working set of a kernel the device compiles
/// while its tensors are live (kernels are compiled when first run).
/// Measured on the runs of `tests/footprint.rs` (2026-12-05), per device
/// thread: the bytes it allocated that were live at its own worst, less
/// the rest of its estimate, are 97 kB (`llm_decode` tp 2 dp 2), 224 to
/// 268 kB (`llm_prefill` tp 2 pp 2 dp 2), 224 to 355 kB (`llm_train` tp 2
/// pp 2 dp 2) and 330 to 494 kB (`llm_train` tp 4 pp 2, 2 virtual
/// stages). On the prefill devices 240 to 260 kB of that are seven
/// buffers of sizes no tensor has (91, 65, 36, 23 kB, ...), which
/// Cranelift's compile contexts keep for the largest kernel compiled. At
/// 100 kB the devices' worst, all at once, exceeded the estimate on the
/// prefill run (5.15 MB against 4.12 MB), which one interleaving in ten
/// or so reached (a peak of 4.28 MB).
pub const DEVICE_HEAP: f64 = 500e3;

/// Bytes per run that the run's own allocations do not include: the
/// process before the run (binary, libraries, the checked program), about
/// 7.2 MB of resident memory for a run refused by R007.
pub const PER_RUN: f64 = 8e6;

/// The gemm's packing width: prepared weights are padded to it per row.
const PACK: usize = 8;

/// Per virtual stage: weights, one microbatch's values (every iteration)
/// and its distinct values (a repeat body once).
#[derive(Clone, Copy, Default)]
struct Stage {
    weights: f64,
    tape: f64,
    env: f64,
    /// Dense table gradients made by a backward (per device).
    dense: f64,
    /// The largest op's weights (over `tp` ranks): made, then cloned for
    /// each use while the kept copy stays.
    largest: f64,
}

/// An upper bound of the bytes a run of `w` under `par` allocates (see
/// the module note for the formula).
pub fn footprint(w: &Workload, par: &Parallel, gradients: bool) -> Result<f64, RuntimeError> {
    let g = &w.model.graph;
    let mut whole_b = w.bindings.clone();
    if let Phase::Decode { context, .. } = w.phase {
        let seq = whole_b.get("seq").copied().unwrap_or(1);
        whole_b.insert("seq".into(), seq.saturating_add(context as i64));
    }
    let whole = graph::shapes(g, &whole_b)?;
    let mut mb_b = whole_b.clone();
    mb_b.insert("batch".into(), par.microbatch as i64);
    if par.cp > 1
        && let Some(seq) = mb_b.get_mut("seq")
    {
        *seq /= par.cp as i64;
    }
    let mb = graph::shapes(g, &mb_b)?;
    let program = sharded_program(g, &mb, par)?;
    let tp = par.tp.max(1);
    let replicas = (par.dp * par.cp).max(1) as f64;
    let stage_size = par.dp * par.cp * tp;
    // A tensor's elements summed over the `tp` ranks of one replica.
    let spread = |t: TensorId| -> f64 {
        let n = numel(&mb[t.0 as usize]) as f64;
        match program.layout(t) {
            Layout::Rep => n * tp as f64,
            Layout::Rows => n,
            Layout::Cols { groups } => n * (tp / groups.max(1)).max(1) as f64,
        }
    };
    // An op's prepared weights over the `tp` ranks of one replica, and
    // the dense gradient of its tables on one device.
    let weights = |op: &gantry_lang::program::Op| -> (f64, f64) {
        let params = graph::params(&op.kind);
        if let OpKind::EmbeddingBag { .. } = &op.kind {
            let mut held = 0.0;
            let mut dense = 0.0;
            for (i, p) in params.iter().enumerate() {
                let n = numel(&p.shape) as f64;
                dense += n;
                held += match par.tables.get(i).copied() {
                    Some(TableShard::Replicated) => n * stage_size as f64,
                    // Column-wise: one copy over the stage, the slices
                    // tiling the columns (`validate`).
                    Some(TableShard::Column) => n,
                    // Table- or row-wise: one copy over the stage (a
                    // row block rounds up by at most one row per device).
                    _ => {
                        n + (n / p.shape.first().copied().unwrap_or(1).max(1) as f64)
                            * stage_size as f64
                    }
                };
            }
            // `held` already counts the whole stage: per replica.
            return (held / replicas, dense);
        }
        let sharded = !matches!(
            program.op(op.output).map(|o| o.strategy),
            None | Some(Strategy::Replicated) | Some(Strategy::Local)
        ) && tp > 1;
        let mut sum = 0.0;
        for p in &params {
            let n = p.shape.last().copied().unwrap_or(1).max(1);
            let rows = numel(&p.shape) / n;
            let per_rank = if sharded {
                let by_rows = rows.div_ceil(tp) * n.next_multiple_of(PACK);
                let by_cols = rows * n.div_ceil(tp).next_multiple_of(PACK);
                by_rows.max(by_cols)
            } else {
                rows * n.next_multiple_of(PACK)
            };
            sum += (per_rank * tp) as f64;
        }
        (sum, 0.0)
    };
    // Adds `items` (run `times` times; `distinct` once) to `st`.
    fn add(
        items: &[Item],
        times: f64,
        st: &mut Stage,
        spread: &dyn Fn(TensorId) -> f64,
        weights: &dyn Fn(&gantry_lang::program::Op) -> (f64, f64),
    ) {
        for it in items {
            match it {
                Item::Op(op) => {
                    let (wt, dense) = weights(op);
                    st.weights += times * wt;
                    st.largest = st.largest.max(wt);
                    st.dense += dense;
                    st.tape += times * spread(op.output) * saved(&op.kind);
                    st.env += spread(op.output);
                }
                Item::Repeat(r) => {
                    let mut inner = Stage::default();
                    add(&r.body, 1.0, &mut inner, spread, weights);
                    let n = r.count as f64;
                    st.weights += times * n * inner.weights;
                    st.dense += inner.dense;
                    st.largest = st.largest.max(inner.largest);
                    st.tape += times * n * inner.tape;
                    st.env += inner.env;
                    for c in &r.carried {
                        st.env += spread(c.result);
                    }
                }
            }
        }
    }
    let vp = par.vp.max(1);
    let pp = par.pp.max(1);
    let virtual_stages = pp * vp;
    let mut stages = vec![Stage::default(); virtual_stages];
    let inputs_rep: f64 = g.inputs.iter().map(|t| spread_rep(&mb, *t, tp)).sum();
    // One microbatch's values crossing a stage boundary (the pipelined
    // repeat's carried values and what travels with them, over the `tp`
    // ranks of one replica).
    let mut boundary = 0.0;
    match pipelined_repeat(&g.body).filter(|_| pp > 1) {
        None => add(&g.body, 1.0, &mut stages[0], &spread, &weights),
        Some((idx, rep)) => {
            boundary = rep.carried.iter().map(|c| spread(c.result)).sum::<f64>()
                + boundary_live(g, idx).into_iter().map(&spread).sum::<f64>();
            add(&g.body[..idx], 1.0, &mut stages[0], &spread, &weights);
            add(
                &g.body[idx + 1..],
                1.0,
                &mut stages[virtual_stages - 1],
                &spread,
                &weights,
            );
            let mut layer = Stage::default();
            add(&rep.body, 1.0, &mut layer, &spread, &weights);
            for (k, r) in chunk_layers(&par.stage_layers, vp).iter().enumerate() {
                let n = r.len() as f64;
                if let Some(s) = stages.get_mut(k) {
                    s.weights += n * layer.weights;
                    s.tape += n * layer.tape;
                    s.env += layer.env;
                    s.dense += layer.dense;
                    s.largest = s.largest.max(layer.largest);
                }
            }
        }
    }
    for s in &mut stages {
        // Received and bound values: at most the inputs' size again.
        s.tape += inputs_rep;
        s.env += inputs_rep;
    }
    let per_replica = whole_b.get("batch").copied().unwrap_or(1).max(1) as usize / par.dp.max(1);
    let m = per_replica / par.microbatch.max(1);
    let mut devices = 0.0;
    // What the devices hand back: their parameter gradients.
    let mut kept = 0.0;
    for s in 0..pp {
        let chunk = |c: usize| stages[c * pp + s];
        let mut w = 0.0;
        let (mut env, mut tape, mut dense, mut largest) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for c in 0..vp {
            w += chunk(c).weights;
            env = env.max(chunk(c).env);
            tape = tape.max(chunk(c).tape);
            dense = dense.max(chunk(c).dense);
            largest = largest.max(chunk(c).largest);
        }
        // The environment and its conversions; with gradients the
        // backward's gradients of one tape instead of the conversions.
        let work = env + if gradients { tape } else { env };
        let mut tapes = 0.0;
        if gradients {
            let (mut live, mut most) = (0.0f64, 0.0f64);
            let mut open = std::collections::HashMap::new();
            for (a, c) in schedule(pp, vp, s, m) {
                match a {
                    Action::Forward(i) => {
                        live += chunk(c).tape;
                        open.insert((i, c), chunk(c).tape);
                    }
                    Action::Backward(i) => live -= open.remove(&(i, c)).unwrap_or(0.0),
                }
                most = most.max(live);
            }
            tapes = most;
        }
        // Sends wait in the receiver's queue until it takes them: a
        // stage that runs ahead (every forward-only run, the warm-up of a
        // training schedule) can leave every microbatch's boundary values
        // queued at the next stage, and with gradients every gradient at
        // the previous one.
        let queued = boundary
            * (m * vp) as f64
            * (f64::from(u8::from(s > 0 || vp > 1))
                + if gradients {
                    f64::from(u8::from(s + 1 < pp || vp > 1))
                } else {
                    0.0
                });
        let grads = if gradients { 2.0 } else { 1.0 };
        devices += replicas * (grads * w + 2.0 * largest + tapes + work + queued)
            + if gradients {
                dense * stage_size as f64
            } else {
                0.0
            };
        kept += replicas * if gradients { w } else { 0.0 };
    }
    // Inputs cut per replica for all its microbatches, on every device.
    let inputs_whole: f64 = g
        .inputs
        .iter()
        .map(|t| numel(&whole[t.0 as usize]) as f64)
        .sum();
    let outputs_whole: f64 = g
        .outputs
        .iter()
        .map(|(_, t)| numel(&whole[t.0 as usize]) as f64)
        .sum();
    devices += inputs_whole * (tp * pp) as f64 + 2.0 * outputs_whole;
    // The reference: its values once, or its tape, gradients and
    // parameter gradients.
    let mut r = Stage::default();
    let spread_whole = |t: TensorId| numel(&whole[t.0 as usize]) as f64;
    let params = |op: &gantry_lang::program::Op| -> (f64, f64) {
        let n = graph::params(&op.kind)
            .iter()
            .map(|p| numel(&p.shape) as f64)
            .sum();
        (n, 0.0)
    };
    add(&g.body, 1.0, &mut r, &spread_whole, &params);
    // The reference makes each op's weights while it runs it.
    let transient = 2.0 * r.largest;
    // Three phases, one after the other: the reference's forward, the
    // devices (with the reference's outputs), the reference's backward
    // (with the devices' parameter gradients).
    let phases = [
        2.0 * inputs_whole + r.env + transient,
        inputs_whole + outputs_whole + devices,
        if gradients {
            2.0 * inputs_whole
                + 2.0 * outputs_whole
                + kept
                + 2.0 * r.tape
                + 2.0 * r.weights
                + transient
        } else {
            0.0
        },
    ];
    let most = phases.iter().copied().fold(0.0, f64::max);
    let n = par.devices() as f64;
    Ok(4.0 * most + (DEVICE_HEAP + PER_DEVICE) * n + PER_RUN)
}

/// This machine's physical memory in bytes (`MemTotal` of
/// `/proc/meminfo`), or `None` where it cannot be read. A run whose
/// estimate exceeds it would die on an allocation failure (an abort, not
/// an error), so the CLI caps `--max-memory` at it.
pub fn host_memory() -> Option<f64> {
    mem_total(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
fn mem_total(meminfo: &str) -> Option<f64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let n: f64 = words.next()?.parse().ok()?;
    let scale = match words.next() {
        Some("kB") => 1024.0,
        None => 1.0,
        Some(_) => return None,
    };
    Some(n * scale).filter(|b| b.is_finite() && *b > 0.0)
}

/// The most op instances a run may execute ([`op_instances`]): about a
/// second of the interpreter's and the devices' per-op work in a release
/// build; a full-size model at `layers=126` is a few thousand.
pub const MAX_OP_INSTANCES: f64 = 1e6;

/// The op instances a run of `w` under `par` executes on each replica:
/// every op of the graph once per iteration of every `repeat` around it
/// (nested repeats multiply), once per microbatch. Memory does not bound
/// this: `repeat 1000 { repeat 1000 { repeat 1000 { y = relu(y) } } }`
/// allocates nothing new and runs 10^9 ops.
pub fn op_instances(w: &Workload, par: &Parallel) -> f64 {
    fn count(items: &[Item]) -> f64 {
        items.iter().fold(0.0, |n, it| {
            n + match it {
                Item::Op(_) => 1.0,
                Item::Repeat(r) => r.count as f64 * count(&r.body),
            }
        })
    }
    let batch = w.bindings.get("batch").copied().unwrap_or(1).max(1) as f64;
    let microbatches = (batch / (par.dp.max(1) * par.microbatch.max(1)) as f64)
        .floor()
        .max(1.0);
    count(&w.model.graph.body) * microbatches
}

/// The most arithmetic a run may do ([`work`]): about a minute of the
/// reference interpreter's and the devices' forward and backward in a
/// release build (`layers=2, d_model=1024, d_ff=1024, seq=64, batch=8` is
/// 4.3e9 and took 45 s on two shared cores, 78 s when measured again;
/// `layers=2, d_model=2048, seq=64, batch=8` at `llm_train`'s simulate
/// scale is 1.4e10, some 3 to 4 minutes at that rate, so the bound stays).
/// Memory does not bound it: a
/// fused attention keeps no scores, so `seq=1000000` at `d_model=1` fits
/// in 41 MB and compares 10^12 pairs of rows (days).
pub const MAX_WORK: f64 = 1e10;

/// Multiply-adds of one forward pass of `w` over its whole batch (the
/// reference's; the devices split it), every `repeat` iteration counted:
/// a product's output elements times its reduction length, an
/// attention's query-key pairs times `head_dim` plus the softmax's work
/// per pair (counted as 32), a `moe`'s tokens times `top_k` times its
/// three expert products, any other op its output's elements. A decode
/// step counts its whole sequence, as [`footprint`] does.
pub fn work(w: &Workload) -> Result<f64, RuntimeError> {
    let g = &w.model.graph;
    let mut b = w.bindings.clone();
    if let Phase::Decode { context, .. } = w.phase {
        let seq = b.get("seq").copied().unwrap_or(1);
        b.insert("seq".into(), seq.saturating_add(context as i64));
    }
    let shapes = graph::shapes(g, &b)?;
    let n = |t: TensorId| numel(&shapes[t.0 as usize]) as f64;
    let dim = |t: TensorId, i: usize| shapes[t.0 as usize].get(i).copied().unwrap_or(1) as f64;
    let op_work = |op: &gantry_lang::program::Op| -> f64 {
        let out = n(op.output);
        match &op.kind {
            OpKind::Linear { d_in, .. } => out * *d_in as f64,
            OpKind::MatMul => {
                let a = &shapes[op.inputs[0].0 as usize];
                out * a.last().copied().unwrap_or(1) as f64
            }
            OpKind::Attention { head_dim, .. } => {
                // q is [batch, seq, heads * head_dim]; k is [batch, kv_seq, ..].
                let pairs = out / (*head_dim).max(1) as f64 * dim(op.inputs[1], 1);
                pairs * (*head_dim as f64 + 32.0)
            }
            OpKind::Mlp { dims, .. } => {
                let rows = n(op.inputs[0]) / dims.first().copied().unwrap_or(1).max(1) as f64;
                rows * dims.windows(2).map(|d| (d[0] * d[1]) as f64).sum::<f64>()
            }
            OpKind::Moe {
                top_k,
                d_model,
                d_ff,
                ..
            } => {
                let tokens = n(op.inputs[0]) / (*d_model).max(1) as f64;
                tokens * *top_k as f64 * 3.0 * (*d_model * *d_ff) as f64
            }
            OpKind::Interact { vectors, dim } => {
                let rows = n(op.inputs[0]) / (*dim).max(1) as f64;
                rows * (*vectors * *dim) as f64
            }
            _ => out,
        }
    };
    fn count(items: &[Item], op_work: &dyn Fn(&gantry_lang::program::Op) -> f64) -> f64 {
        items.iter().fold(0.0, |acc, it| {
            acc + match it {
                Item::Op(op) => op_work(op),
                Item::Repeat(r) => r.count as f64 * count(&r.body, op_work),
            }
        })
    }
    Ok(count(&g.body, &op_work))
}

/// What a device keeps of one op per microbatch for its backward, in
/// multiples of its result: the result, and for `moe` the tokens sent to
/// and received from the experts (`top_k` copies each) and the experts'
/// activations `a`, `b`, `h` (`d_ff` wide).
fn saved(kind: &OpKind) -> f64 {
    match kind {
        OpKind::Moe {
            top_k,
            d_model,
            d_ff,
            ..
        } => {
            let k = *top_k as f64;
            1.0 + k * (2.0 + 3.0 * *d_ff as f64 / (*d_model).max(1) as f64)
        }
        _ => 1.0,
    }
}

/// Elements of tensor `t` replicated over `tp` ranks.
fn spread_rep(shapes: &[Vec<usize>], t: TensorId, tp: usize) -> f64 {
    (numel(&shapes[t.0 as usize]) * tp) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_reads_meminfo() {
        let text = "MemTotal:       24522740 kB\nMemFree:        21000000 kB\n";
        assert_eq!(mem_total(text), Some(24522740.0 * 1024.0));
        assert_eq!(mem_total("MemFree: 3 kB\n"), None);
        assert_eq!(mem_total("MemTotal: 0 kB\n"), None);
        assert_eq!(mem_total("MemTotal: many kB\n"), None);
        assert_eq!(mem_total("MemTotal: 3 MB\n"), None);
    }
}
