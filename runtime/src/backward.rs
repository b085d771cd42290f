//! Reference gradients of one training step, with plain loops.
//!
//! The loss is the sum of every element of every graph output (so the
//! gradient flowing into each output is all ones). [`backward`] runs the
//! forward pass on a tape (one entry per executed op, `repeat` iterations
//! included, carried values aliased rather than copied), then walks the
//! tape in reverse and accumulates the gradient of every parameter of
//! every op at every iteration. Ops: `linear` (with bias), `matmul`,
//! `add`/`sub`/`mul`/`div`, `scale`, the activations, `rmsnorm`,
//! `layernorm`, `softmax`, `dropout` (identity), `embedding`, `attention`
//! (causal, grouped-query; the probabilities are recomputed), `reshape`;
//! anything else is R003. Ids get no gradient.
//!
//! [`data_parallel`] is the sharded path for `dp > 1, tp = pp = 1`: each
//! replica (a thread) computes the gradients of its contiguous shard of
//! the batch and the replicas sum them with the in-memory all-reduce of
//! [`crate::comm`]. [`tensor_parallel_pair`] is `tp`-way Megatron
//! tensor parallelism for one column-parallel/row-parallel linear pair.

use std::collections::BTreeMap;
use std::time::Duration;

use gantry_lang::program::{Activation, BinaryOp, Graph, Item, Op, OpKind, TensorId};

use crate::comm;
use crate::error::{RCode, RuntimeError, unsupported};
use crate::graph::{self, NORM_EPS, numel};
use crate::init::Init;
use crate::reference as r;

/// A parameter instance: the op (its output tensor), the iterations of the
/// enclosing `repeat`s and the slot.
pub type ParamKey = (TensorId, Vec<u64>, u32);

/// Parameter values that replace the initialized ones (finite differences).
pub type Overrides = BTreeMap<ParamKey, Vec<f32>>;

/// The result of [`backward`].
#[derive(Clone, Debug, Default)]
pub struct Gradients {
    /// The loss: the sum of every output element (accumulated in f64).
    pub loss: f64,
    /// The gradient of the loss per parameter instance.
    pub params: BTreeMap<ParamKey, Vec<f32>>,
    /// The gradient w.r.t. each graph input, in `graph.inputs` order
    /// (empty for id inputs and inputs nothing differentiable reads).
    pub inputs: Vec<Vec<f32>>,
}

struct Entry<'g> {
    op: &'g Op,
    path: Vec<u64>,
    ins: Vec<usize>,
    out: usize,
}

struct Tape<'g> {
    shapes: Vec<Vec<usize>>,
    init: &'g Init,
    overrides: &'g Overrides,
    values: Vec<Vec<f32>>,
    env: BTreeMap<TensorId, usize>,
    entries: Vec<Entry<'g>>,
}

impl<'g> Tape<'g> {
    fn param(&self, op: &Op, path: &[u64], slot: usize) -> Vec<f32> {
        let ps = graph::params(&op.kind);
        let p = &ps[slot];
        self.overrides
            .get(&(op.output, path.to_vec(), p.slot))
            .cloned()
            .unwrap_or_else(|| p.full(self.init, op.output, path))
    }

    fn slot(&self, t: TensorId) -> Result<usize, RuntimeError> {
        self.env
            .get(&t)
            .copied()
            .ok_or_else(|| unsupported(format!("tensor %{} is read before it is computed", t.0)))
    }

    fn items(&mut self, items: &'g [Item], path: &mut Vec<u64>) -> Result<(), RuntimeError> {
        for it in items {
            match it {
                Item::Op(op) => {
                    let ins: Vec<usize> = op
                        .inputs
                        .iter()
                        .map(|t| self.slot(*t))
                        .collect::<Result<_, _>>()?;
                    let v = self.forward(op, path, &ins)?;
                    self.values.push(v);
                    let out = self.values.len() - 1;
                    self.env.insert(op.output, out);
                    self.entries.push(Entry {
                        op,
                        path: path.clone(),
                        ins,
                        out,
                    });
                }
                Item::Repeat(rep) => {
                    for i in 0..rep.count {
                        for c in &rep.carried {
                            let s = self.slot(if i == 0 { c.init } else { c.next })?;
                            self.env.insert(c.param, s);
                        }
                        path.push(i);
                        self.items(&rep.body, path)?;
                        path.pop();
                    }
                    for c in &rep.carried {
                        let s = self.slot(if rep.count == 0 { c.init } else { c.next })?;
                        self.env.insert(c.result, s);
                    }
                }
            }
        }
        Ok(())
    }

    fn forward(&self, op: &Op, path: &[u64], ins: &[usize]) -> Result<Vec<f32>, RuntimeError> {
        let x = &self.values[ins[0]];
        let sh = |k: usize| &self.shapes[op.inputs[k].0 as usize];
        Ok(match &op.kind {
            OpKind::Linear { d_in, d_out, bias } => {
                let b = bias.then(|| self.param(op, path, 1));
                r::linear(
                    x,
                    &self.param(op, path, 0),
                    b.as_deref(),
                    *d_in as usize,
                    *d_out as usize,
                )
            }
            OpKind::MatMul => {
                let (bt, m, k, n) = mm_dims(sh(0), sh(1));
                let y = &self.values[ins[1]];
                let mut out = Vec::with_capacity(bt * m * n);
                for b in 0..bt {
                    out.extend(r::matmul(
                        &x[b * m * k..][..m * k],
                        &y[b * k * n..][..k * n],
                        m,
                        k,
                        n,
                    ));
                }
                out
            }
            OpKind::Embedding { vocab, dim } => {
                let t = self.param(op, path, 0);
                let d = *dim as usize;
                let mut out = Vec::with_capacity(x.len() * d);
                for id in x {
                    let row = r::clamp_id(*id, *vocab);
                    out.extend_from_slice(&t[row * d..(row + 1) * d]);
                }
                out
            }
            OpKind::Attention {
                heads,
                kv_heads,
                head_dim,
                causal,
                ..
            } => r::attention(
                x,
                &self.values[ins[1]],
                &self.values[ins[2]],
                sh(0)[0],
                sh(0)[1],
                sh(1)[1],
                *heads as usize,
                *kv_heads as usize,
                *head_dim as usize,
                *causal,
            ),
            OpKind::Dropout(_) | OpKind::Reshape => x.clone(),
            OpKind::RmsNorm { dim } => r::rmsnorm(x, &self.param(op, path, 0), *dim as usize),
            OpKind::LayerNorm { dim } => r::layernorm(
                x,
                &self.param(op, path, 0),
                &self.param(op, path, 1),
                *dim as usize,
            ),
            OpKind::Softmax => r::softmax(x, *sh(0).last().unwrap_or(&1)),
            OpKind::Activation(a) => x.iter().map(|v| r::activation(*a, *v)).collect(),
            OpKind::Binary(b) => x
                .iter()
                .zip(&self.values[ins[1]])
                .map(|(p, q)| r::binary(*b, *p, *q))
                .collect(),
            OpKind::Scale(c) => x.iter().map(|v| v * *c as f32).collect(),
            other => {
                return Err(RuntimeError::new(
                    RCode::R003,
                    format!("gradients of `{}` are not implemented", other.name()),
                ));
            }
        })
    }
}

fn mm_dims(a: &[usize], b: &[usize]) -> (usize, usize, usize, usize) {
    let (m, k, n) = (a[a.len() - 2], a[a.len() - 1], b[b.len() - 1]);
    (numel(a) / (m * k).max(1), m, k, n)
}

fn acc(slot: &mut Option<Vec<f32>>, g: Vec<f32>) {
    match slot {
        Some(s) => s.iter_mut().zip(&g).for_each(|(a, b)| *a += b),
        None => *slot = Some(g),
    }
}

/// `d/dx activation(x)`.
pub fn activation_grad(a: Activation, x: f32) -> f32 {
    match a {
        Activation::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::Sigmoid => {
            let s = 1.0 / (1.0 + (-x).exp());
            s * (1.0 - s)
        }
        Activation::Silu => {
            let s = 1.0 / (1.0 + (-x).exp());
            s * (1.0 + x * (1.0 - s))
        }
        Activation::Gelu => {
            let c = (2.0 / std::f32::consts::PI).sqrt();
            let u = c * (x + 0.044715 * x * x * x);
            let t = u.tanh();
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x)
        }
    }
}

/// `a^T b` for `a [m, k]`, `b [m, n]`: `[k, n]`.
fn matmul_tn(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0.0f32; k * n];
    for i in 0..m {
        for p in 0..k {
            let av = a[i * k + p];
            for j in 0..n {
                c[p * n + j] += av * b[i * n + j];
            }
        }
    }
    c
}

/// `a b^T` for `a [m, n]`, `b [k, n]`: `[m, k]`.
fn matmul_nt(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut c = vec![0.0f32; m * k];
    for i in 0..m {
        for p in 0..k {
            let mut s = 0.0f32;
            for j in 0..n {
                s += a[i * n + j] * b[p * n + j];
            }
            c[i * k + p] = s;
        }
    }
    c
}

/// Gradients of the loss (sum of all output elements) w.r.t. every
/// parameter of `graph`, with inputs as in [`r::run`] and parameters
/// replaced by `overrides` where given.
pub fn backward(
    graph: &Graph,
    bindings: &BTreeMap<String, i64>,
    init: &Init,
    inputs: Option<Vec<Vec<f32>>>,
    overrides: &Overrides,
) -> Result<Gradients, RuntimeError> {
    let shapes = graph::shapes(graph, bindings)?;
    let inputs = match inputs {
        Some(v) => v,
        None => graph
            .inputs
            .iter()
            .map(|i| graph::input_values(graph, *i, &shapes[i.0 as usize], init))
            .collect(),
    };
    let mut tape = Tape {
        shapes,
        init,
        overrides,
        values: Vec::new(),
        env: BTreeMap::new(),
        entries: Vec::new(),
    };
    for (id, v) in graph.inputs.iter().zip(inputs) {
        tape.values.push(v);
        tape.env.insert(*id, tape.values.len() - 1);
    }
    tape.items(&graph.body, &mut Vec::new())?;
    let mut grads: Vec<Option<Vec<f32>>> = vec![None; tape.values.len()];
    let mut out = Gradients::default();
    for (_, t) in &graph.outputs {
        let s = tape.slot(*t)?;
        out.loss += tape.values[s].iter().map(|v| f64::from(*v)).sum::<f64>();
        acc(&mut grads[s], vec![1.0; tape.values[s].len()]);
    }
    for e in tape.entries.iter().rev() {
        let Some(dy) = grads[e.out].take() else {
            continue;
        };
        let dins = op_grad(&tape, e, &dy, &mut out.params)?;
        for (k, g) in dins.into_iter().enumerate() {
            if let Some(g) = g {
                acc(&mut grads[e.ins[k]], g);
            }
        }
    }
    out.inputs = graph
        .inputs
        .iter()
        .enumerate()
        .map(|(k, id)| {
            if graph.tensor(*id).dtype.is_int() {
                Vec::new()
            } else {
                grads[k].take().unwrap_or_default()
            }
        })
        .collect();
    Ok(out)
}

fn add_param(params: &mut BTreeMap<ParamKey, Vec<f32>>, e: &Entry, slot: u32, g: Vec<f32>) {
    let key = (e.op.output, e.path.clone(), slot);
    match params.get_mut(&key) {
        Some(s) => s.iter_mut().zip(&g).for_each(|(a, b)| *a += b),
        None => {
            params.insert(key, g);
        }
    }
}

/// The gradients of an op's inputs (`None`: no gradient) given `dy`;
/// parameter gradients go to `params`.
fn op_grad(
    tape: &Tape,
    e: &Entry,
    dy: &[f32],
    params: &mut BTreeMap<ParamKey, Vec<f32>>,
) -> Result<Vec<Option<Vec<f32>>>, RuntimeError> {
    let op = e.op;
    let x = &tape.values[e.ins[0]];
    let y = &tape.values[e.out];
    let sh = |k: usize| &tape.shapes[op.inputs[k].0 as usize];
    let row_len = |d: u64| (d as usize).max(1);
    Ok(match &op.kind {
        OpKind::Linear { d_in, d_out, bias } => {
            let (di, dout) = (*d_in as usize, *d_out as usize);
            let rows = x.len() / di.max(1);
            let w = tape.param(op, &e.path, 0);
            add_param(params, e, 0, matmul_tn(x, dy, rows, di, dout));
            if *bias {
                let mut db = vec![0.0f32; dout];
                for row in dy.chunks(dout.max(1)) {
                    db.iter_mut().zip(row).for_each(|(a, b)| *a += b);
                }
                add_param(params, e, 1, db);
            }
            vec![Some(matmul_nt(dy, &w, rows, dout, di))]
        }
        OpKind::MatMul => {
            let (bt, m, k, n) = mm_dims(sh(0), sh(1));
            let b = &tape.values[e.ins[1]];
            let (mut da, mut dbv) = (Vec::with_capacity(x.len()), Vec::with_capacity(b.len()));
            for i in 0..bt {
                let (a_i, b_i, d_i) = (
                    &x[i * m * k..][..m * k],
                    &b[i * k * n..][..k * n],
                    &dy[i * m * n..][..m * n],
                );
                da.extend(matmul_nt(d_i, b_i, m, n, k));
                dbv.extend(matmul_tn(a_i, d_i, m, k, n));
            }
            vec![Some(da), Some(dbv)]
        }
        OpKind::Embedding { vocab, dim } => {
            let d = *dim as usize;
            let mut dt = vec![0.0f32; *vocab as usize * d];
            for (i, id) in x.iter().enumerate() {
                let row = r::clamp_id(*id, *vocab);
                for j in 0..d {
                    dt[row * d + j] += dy[i * d + j];
                }
            }
            add_param(params, e, 0, dt);
            vec![None]
        }
        OpKind::Attention {
            heads,
            kv_heads,
            head_dim,
            causal,
            ..
        } => {
            let (dq, dk, dv) = attention_grad(
                x,
                &tape.values[e.ins[1]],
                &tape.values[e.ins[2]],
                dy,
                [sh(0)[0], sh(0)[1], sh(1)[1]],
                *heads as usize,
                *kv_heads as usize,
                *head_dim as usize,
                *causal,
            );
            vec![Some(dq), Some(dk), Some(dv)]
        }
        OpKind::Dropout(_) | OpKind::Reshape => vec![Some(dy.to_vec())],
        OpKind::RmsNorm { dim } => {
            let d = row_len(*dim);
            let g = tape.param(op, &e.path, 0);
            let mut dx = vec![0.0f32; x.len()];
            let mut dg = vec![0.0f32; d];
            for (ri, row) in x.chunks(d).enumerate() {
                let dyr = &dy[ri * d..][..d];
                let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
                let inv = 1.0 / (ms + NORM_EPS).sqrt();
                let mut dot = 0.0f32;
                for j in 0..d {
                    dg[j] += dyr[j] * row[j] * inv;
                    dot += dyr[j] * g[j] * row[j];
                }
                for j in 0..d {
                    dx[ri * d + j] =
                        inv * g[j] * dyr[j] - row[j] * inv * inv * inv * dot / d as f32;
                }
            }
            add_param(params, e, 0, dg);
            vec![Some(dx)]
        }
        OpKind::LayerNorm { dim } => {
            let d = row_len(*dim);
            let g = tape.param(op, &e.path, 0);
            let mut dx = vec![0.0f32; x.len()];
            let (mut dg, mut db) = (vec![0.0f32; d], vec![0.0f32; d]);
            for (ri, row) in x.chunks(d).enumerate() {
                let dyr = &dy[ri * d..][..d];
                let mean = row.iter().sum::<f32>() / d as f32;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                let inv = 1.0 / (var + NORM_EPS).sqrt();
                let (mut s1, mut s2) = (0.0f32, 0.0f32);
                for j in 0..d {
                    let xh = (row[j] - mean) * inv;
                    dg[j] += dyr[j] * xh;
                    db[j] += dyr[j];
                    let dxh = dyr[j] * g[j];
                    s1 += dxh;
                    s2 += dxh * xh;
                }
                for j in 0..d {
                    let xh = (row[j] - mean) * inv;
                    dx[ri * d + j] = inv / d as f32 * (d as f32 * dyr[j] * g[j] - s1 - xh * s2);
                }
            }
            add_param(params, e, 0, dg);
            add_param(params, e, 1, db);
            vec![Some(dx)]
        }
        OpKind::Softmax => {
            let d = (*sh(0).last().unwrap_or(&1)).max(1);
            let mut dx = vec![0.0f32; x.len()];
            for (ri, yr) in y.chunks(d).enumerate() {
                let dyr = &dy[ri * d..][..d];
                let dot: f32 = yr.iter().zip(dyr).map(|(a, b)| a * b).sum();
                for j in 0..d {
                    dx[ri * d + j] = yr[j] * (dyr[j] - dot);
                }
            }
            vec![Some(dx)]
        }
        OpKind::Activation(a) => vec![Some(
            x.iter()
                .zip(dy)
                .map(|(v, g)| activation_grad(*a, *v) * g)
                .collect(),
        )],
        OpKind::Binary(b) => {
            let z = &tape.values[e.ins[1]];
            let (da, db): (Vec<f32>, Vec<f32>) = x
                .iter()
                .zip(z)
                .zip(dy)
                .map(|((p, q), g)| match b {
                    BinaryOp::Add => (*g, *g),
                    BinaryOp::Sub => (*g, -*g),
                    BinaryOp::Mul => (g * q, g * p),
                    BinaryOp::Div => (g / q, -g * p / (q * q)),
                })
                .unzip();
            vec![Some(da), Some(db)]
        }
        OpKind::Scale(c) => vec![Some(dy.iter().map(|g| g * *c as f32).collect())],
        other => {
            return Err(RuntimeError::new(
                RCode::R003,
                format!("gradients of `{}` are not implemented", other.name()),
            ));
        }
    })
}

/// The gradients of [`r::attention`] w.r.t. `q`, `k`, `v`; `dims` is
/// `[batch, seq_q, seq_kv]`. The probabilities are recomputed.
#[allow(clippy::too_many_arguments)]
pub fn attention_grad(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    dims: [usize; 3],
    heads: usize,
    kv_heads: usize,
    hd: usize,
    causal: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let [b, sq, skv] = dims;
    let group = (heads / kv_heads.max(1)).max(1);
    let (qf, kf) = (heads * hd, kv_heads * hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let (mut dq, mut dk, mut dv) = (
        vec![0.0f32; q.len()],
        vec![0.0f32; k.len()],
        vec![0.0f32; v.len()],
    );
    for bi in 0..b {
        for h in 0..heads {
            let g = h / group;
            for i in 0..sq {
                let visible = if causal {
                    (i as isize + skv as isize - sq as isize + 1).clamp(0, skv as isize) as usize
                } else {
                    skv
                };
                if visible == 0 {
                    continue;
                }
                let qo = (bi * sq + i) * qf + h * hd;
                let ko = |j: usize| (bi * skv + j) * kf + g * hd;
                let scores: Vec<f32> = (0..visible)
                    .map(|j| (0..hd).map(|d| q[qo + d] * k[ko(j) + d]).sum::<f32>() * scale)
                    .collect();
                let p = r::softmax(&scores, visible);
                let dor = &dout[qo..qo + hd];
                let dp: Vec<f32> = (0..visible)
                    .map(|j| (0..hd).map(|d| dor[d] * v[ko(j) + d]).sum())
                    .collect();
                let dot: f32 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for j in 0..visible {
                    let ds = p[j] * (dp[j] - dot) * scale;
                    for d in 0..hd {
                        dv[ko(j) + d] += p[j] * dor[d];
                        dq[qo + d] += ds * k[ko(j) + d];
                        dk[ko(j) + d] += ds * q[qo + d];
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}

/// Data-parallel gradients: `dp` replicas (threads) each run the backward
/// pass on their contiguous shard of the batch (`batch / dp` samples) and
/// all-reduce every parameter gradient over the replicas with
/// [`comm::Endpoint::all_reduce`]. Returns replica 0's gradients (all
/// replicas hold bit-identical ones; this is checked).
pub fn data_parallel(
    graph: &Graph,
    bindings: &BTreeMap<String, i64>,
    init: &Init,
    dp: usize,
) -> Result<Gradients, RuntimeError> {
    let batch = bindings.get("batch").copied().unwrap_or(1).max(1) as usize;
    if dp == 0 || !batch.is_multiple_of(dp) {
        return Err(RuntimeError::new(
            RCode::R002,
            format!("batch {batch} does not split over dp = {dp}"),
        ));
    }
    let per = batch / dp;
    let shapes = graph::shapes(graph, bindings)?;
    let inputs: Vec<Vec<f32>> = graph
        .inputs
        .iter()
        .map(|i| graph::input_values(graph, *i, &shapes[i.0 as usize], init))
        .collect();
    let mut local = bindings.clone();
    local.insert("batch".into(), per as i64);
    let mut shards = Vec::with_capacity(dp);
    for d in 0..dp {
        let mut ins = Vec::with_capacity(inputs.len());
        for (id, v) in graph.inputs.iter().zip(&inputs) {
            let (axis, span) =
                graph::batch_axis(&graph.tensor(*id).shape, bindings).ok_or_else(|| {
                    unsupported(format!(
                        "input `{}` has no batch axis to split",
                        graph.tensor(*id).name
                    ))
                })?;
            ins.push(graph::take_samples(
                v,
                &shapes[id.0 as usize],
                axis,
                span,
                d * per,
                per,
            ));
        }
        shards.push(ins);
    }
    let group: Vec<usize> = (0..dp).collect();
    let ends = comm::mesh(dp, Duration::from_secs(60));
    let results: Vec<Result<Gradients, RuntimeError>> = std::thread::scope(|s| {
        let handles: Vec<_> = ends
            .into_iter()
            .zip(shards)
            .map(|(ep, ins)| {
                let (local, group) = (&local, &group);
                s.spawn(move || {
                    let mut g = backward(graph, local, init, Some(ins), &Overrides::new())?;
                    for v in g.params.values_mut() {
                        ep.all_reduce(group, v)?;
                    }
                    Ok(g)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(RuntimeError::new(RCode::R006, "a replica panicked")))
            })
            .collect()
    });
    let mut all = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let loss: f64 = all.iter().map(|g| g.loss).sum();
    let first = all.swap_remove(0);
    if all.iter().any(|g| g.params != first.params) {
        return Err(RuntimeError::new(
            RCode::R006,
            "replicas disagree after the gradient all-reduce",
        ));
    }
    Ok(Gradients {
        loss,
        params: first.params,
        inputs: Vec::new(),
    })
}

/// `(dW1, dW2, dX)` of [`tensor_parallel_pair`].
pub type PairGrads = (Vec<f32>, Vec<f32>, Vec<f32>);

/// Tensor-parallel gradients of the pair `y = act(x w1) w2` (`x [rows, d]`,
/// `w1 [d, f]`, `w2 [f, d]`) on `tp` devices (threads), Megatron style:
/// `w1` is column-parallel (device `t` holds columns `block(f, tp, t)`),
/// `w2` row-parallel (the same rows). Backward with `dy = 1`: the
/// row-parallel linear's `dH` and `dW2` are shard-local; the
/// column-parallel linear's `dW1` is shard-local and its `dX` is
/// all-reduced over the devices. Returns the gathered `dW1`, `dW2` and
/// `dX` (device 0's; all devices hold the same `dX`).
pub fn tensor_parallel_pair(
    x: &[f32],
    w1: &[f32],
    w2: &[f32],
    act: Activation,
    d: usize,
    f: usize,
    tp: usize,
) -> Result<PairGrads, RuntimeError> {
    let rows = x.len() / d.max(1);
    let group: Vec<usize> = (0..tp).collect();
    let ends = comm::mesh(tp, Duration::from_secs(60));
    let results: Vec<Result<_, RuntimeError>> = std::thread::scope(|s| {
        let handles: Vec<_> = ends
            .into_iter()
            .map(|ep| {
                let group = &group;
                s.spawn(move || {
                    let cols = crate::layout::block(f, tp, ep.rank);
                    let fl = cols.len();
                    // This device's shards of the weights.
                    let w1l: Vec<f32> = (0..d)
                        .flat_map(|r| w1[r * f + cols.start..r * f + cols.end].to_vec())
                        .collect();
                    let w2l = w2[cols.start * d..cols.end * d].to_vec();
                    // Forward: the local columns of z = x w1 and h = act(z).
                    let z = r::matmul(x, &w1l, rows, d, fl);
                    let h: Vec<f32> = z.iter().map(|v| r::activation(act, *v)).collect();
                    // Backward of the row-parallel linear (dy = 1, replicated).
                    let dy = vec![1.0f32; rows * d];
                    let dw2 = matmul_tn(&h, &dy, rows, fl, d);
                    let dh = matmul_nt(&dy, &w2l, rows, d, fl);
                    let dz: Vec<f32> = dh
                        .iter()
                        .zip(&z)
                        .map(|(g, v)| g * activation_grad(act, *v))
                        .collect();
                    // Backward of the column-parallel linear.
                    let dw1 = matmul_tn(x, &dz, rows, d, fl);
                    let mut dx = matmul_nt(&dz, &w1l, rows, fl, d);
                    ep.all_reduce(group, &mut dx)?;
                    Ok((cols, dw1, dw2, dx))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(RuntimeError::new(RCode::R006, "a device panicked")))
            })
            .collect()
    });
    let parts = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let (mut dw1, mut dw2) = (vec![0.0f32; d * f], vec![0.0f32; f * d]);
    for (cols, l1, l2, _) in &parts {
        let fl = cols.len();
        for r in 0..d {
            dw1[r * f + cols.start..r * f + cols.end].copy_from_slice(&l1[r * fl..(r + 1) * fl]);
        }
        dw2[cols.start * d..cols.end * d].copy_from_slice(l2);
    }
    if parts.iter().any(|p| p.3 != parts[0].3) {
        return Err(RuntimeError::new(
            RCode::R006,
            "devices disagree after the dX all-reduce",
        ));
    }
    let dx = parts.into_iter().next().map(|p| p.3).unwrap_or_default();
    Ok((dw1, dw2, dx))
}

/// The largest difference between two sets of parameter gradients over
/// the largest reference gradient, both over all parameters (a
/// per-parameter norm would blow up on gradients that vanish exactly,
/// such as a key bias under softmax), and the largest reference gradient.
/// A missing or misshapen parameter gives infinity.
pub fn compare(got: &Gradients, want: &Gradients) -> (f64, f64) {
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    if got.params.len() != want.params.len() {
        return (f64::INFINITY, 0.0);
    }
    for (k, w) in &want.params {
        let Some(g) = got.params.get(k).filter(|g| g.len() == w.len()) else {
            return (f64::INFINITY, 0.0);
        };
        for (a, b) in g.iter().zip(w) {
            let d = (f64::from(*a) - f64::from(*b)).abs();
            diff = if d.is_nan() {
                f64::INFINITY
            } else {
                diff.max(d)
            };
            scale = scale.max(f64::from(b.abs()));
        }
    }
    (if scale > 0.0 { diff / scale } else { diff }, scale)
}

/// The loss (sum of every output element) of a forward pass with
/// `overrides`, for finite differences.
pub fn loss(
    graph: &Graph,
    bindings: &BTreeMap<String, i64>,
    init: &Init,
    overrides: &Overrides,
) -> Result<f64, RuntimeError> {
    let shapes = graph::shapes(graph, bindings)?;
    let mut tape = Tape {
        shapes,
        init,
        overrides,
        values: Vec::new(),
        env: BTreeMap::new(),
        entries: Vec::new(),
    };
    for id in &graph.inputs {
        let v = graph::input_values(graph, *id, &tape.shapes[id.0 as usize], init);
        tape.values.push(v);
        tape.env.insert(*id, tape.values.len() - 1);
    }
    tape.items(&graph.body, &mut Vec::new())?;
    let mut l = 0.0f64;
    for (_, t) in &graph.outputs {
        l += tape.values[tape.slot(*t)?]
            .iter()
            .map(|v| f64::from(*v))
            .sum::<f64>();
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_lang::check::check_source;
    use gantry_lang::program::Workload;

    fn workload(src: &str) -> Workload {
        let c = check_source("t.gantry", src);
        assert!(!c.has_errors(), "{}", c.render(false));
        c.program.workloads["w"].clone()
    }

    const LLAMA_LIKE: &str = "model P(layers = 2, heads = 4, kv = 2, hd = 2, ff = 6, vocab = 7) {
  let d = heads * hd
  input tokens: i32[batch, seq]
  x = embedding(tokens, vocab, d)
  repeat layers {
    h = rmsnorm(x)
    a = attention(linear(h, d, d), linear(h, d, kv * hd), linear(h, d, kv * hd), heads = heads, kv_heads = kv, causal = true)
    x = x + linear(a, d, d)
    h = layernorm(x)
    x = x + linear(gelu(linear(h, d, ff, bias = true)) * linear(h, d, ff), ff, d)
  }
  output logits = linear(rmsnorm(x), d, vocab)
}
workload w {
  model P
  train { seq = 4, global_batch = 4, dtype = fp32 }
}
";

    const ELEMENTWISE: &str = "model Q(d = 4, vocab = 7) {
  input tokens: i32[batch, seq]
  x = embedding(tokens, vocab, d)
  h = linear(x, d, d, bias = true)
  s = softmax(relu(h) - sigmoid(x) * 0.5)
  y = dropout(silu(linear(s, d, d)), p = 0.1) + s * h
  output logits = linear(layernorm(y), d, vocab)
}
workload w {
  model Q
  train { seq = 3, global_batch = 2, dtype = fp32 }
}
";

    const SOFTMAX: &str = "model S(d = 5, vocab = 6) {
  input tokens: i32[batch, seq]
  x = embedding(tokens, vocab, d)
  output o = softmax(linear(x, d, d) * 3) * linear(x, d, d, bias = true)
}
workload w {
  model S
  train { seq = 3, global_batch = 2, dtype = fp32 }
}
";

    /// Central finite differences (step 1e-3, f32 forward, f64 loss sum)
    /// at every entry of every parameter instance; the error is relative
    /// to the largest gradient of that parameter.
    fn check_fd(src: &str, tol: f64) -> f64 {
        let w = workload(src);
        let g = &w.model.graph;
        let init = Init::new(7);
        let grads = backward(g, &w.bindings, &init, None, &Overrides::new()).expect("backward");
        assert!(!grads.params.is_empty());
        let mut worst = 0.0f64;
        for (key, dg) in &grads.params {
            let op = graph::ops(&g.body)
                .into_iter()
                .find(|o| o.output == key.0)
                .expect("op");
            let p = graph::params(&op.kind)
                .into_iter()
                .find(|p| p.slot == key.2)
                .expect("param");
            let base = p.full(&init, op.output, &key.1);
            let scale = dg.iter().fold(0.0f64, |a, v| a.max(f64::from(v.abs())));
            for i in 0..base.len() {
                let h = 1e-3f32;
                let at = |delta: f32| {
                    let mut v = base.clone();
                    v[i] += delta;
                    let mut o = Overrides::new();
                    o.insert(key.clone(), v);
                    loss(g, &w.bindings, &init, &o).expect("loss")
                };
                let fd = (at(h) - at(-h)) / (2.0 * f64::from(h));
                let err = (fd - f64::from(dg[i])).abs() / scale.max(1e-3);
                assert!(
                    err <= tol,
                    "{} {:?} slot {} [{i}]: fd {fd} vs {}",
                    op.kind.name(),
                    key.1,
                    key.2,
                    dg[i]
                );
                worst = worst.max(err);
            }
        }
        worst
    }

    #[test]
    fn gradients_match_finite_differences() {
        let a = check_fd(LLAMA_LIKE, 1e-2);
        let b = check_fd(ELEMENTWISE, 1e-3);
        let c = check_fd(SOFTMAX, 1e-3);
        eprintln!(
            "finite differences: max rel err {a:.2e} (llama-like), {b:.2e} (elementwise), {c:.2e} (softmax)"
        );
    }

    #[test]
    fn tensor_parallel_pair_matches_reference() {
        let src = "model M(d = 6, f = 10) {
  input x: f32[batch, d]
  output y = linear(silu(linear(x, d, f)), f, d)
}
workload w {
  model M
  train { seq = 1, global_batch = 5, dtype = fp32 }
}
";
        let w = workload(src);
        let g = &w.model.graph;
        let init = Init::new(5);
        let want = backward(g, &w.bindings, &init, None, &Overrides::new()).expect("backward");
        let shapes = graph::shapes(g, &w.bindings).expect("shapes");
        let x = graph::input_values(g, g.inputs[0], &shapes[g.inputs[0].0 as usize], &init);
        let ops = graph::ops(&g.body);
        let (l1, l2) = (ops[0], ops[2]);
        let w1 = graph::params(&l1.kind)[0].full(&init, l1.output, &[]);
        let w2 = graph::params(&l2.kind)[0].full(&init, l2.output, &[]);
        for tp in [2, 3] {
            let (dw1, dw2, dx) =
                tensor_parallel_pair(&x, &w1, &w2, Activation::Silu, 6, 10, tp).expect("tp");
            for (got, want) in [
                (&dw1, &want.params[&(l1.output, vec![], 0)]),
                (&dw2, &want.params[&(l2.output, vec![], 0)]),
                (&dx, &want.inputs[0]),
            ] {
                let (_, rel) = graph::compare(got, want);
                assert!(rel <= 1e-4, "tp = {tp}: off by {rel:.2e}");
                eprintln!("tp = {tp}: max rel err {rel:.2e} ({} values)", got.len());
            }
        }
    }

    #[test]
    fn data_parallel_gradients_match_single_device() {
        let w = workload(LLAMA_LIKE);
        let g = &w.model.graph;
        let init = Init::new(3);
        let want = backward(g, &w.bindings, &init, None, &Overrides::new()).expect("backward");
        for dp in [2, 4] {
            let got = data_parallel(g, &w.bindings, &init, dp).expect("dp");
            let (worst, _) = compare(&got, &want);
            assert!(worst <= 1e-4, "dp = {dp}: max rel err {worst:.2e}");
            assert!((got.loss - want.loss).abs() <= 1e-4 * want.loss.abs().max(1.0));
            eprintln!("dp = {dp}: max rel err {worst:.2e}");
        }
    }
}
