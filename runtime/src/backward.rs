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
//! (causal, grouped-query; the probabilities are recomputed), `reshape`,
//! and the DLRM and MoE ops:
//!
//! - `embedding_bag`: each table's rows `(i + p) mod rows`, `p < pooling`,
//!   collect the pooled gradient of sample `s` (id `i` clamped as the
//!   forward clamps it; a row hit twice collects it twice),
//!   [`embedding_bag_grad`];
//! - `interact`: the dense and pooled vectors get `g v_j` / `g v_i` from
//!   each pair's dot product and the dense vector its copied gradient,
//!   [`interact_grad`];
//! - `mlp`: linear + bias + activation per layer (the last included),
//!   [`mlp_grad`];
//! - `moe`: the routing (top `top_k`, ties to the lower expert) is
//!   recomputed and held fixed, the router gets its gradient through the
//!   gates (the softmax of the chosen logits) only, the SwiGLU experts
//!   through [`swiglu_grad`], [`moe_grad`];
//! - `concat` along any axis splits the gradient back, [`concat_grad`].
//!
//! Every op the language has is covered. Ids get no gradient.
//!
//! [`data_parallel`] is the sharded path for `dp > 1, tp = pp = 1`: each
//! replica (a thread) computes the gradients of its contiguous shard of
//! the batch and the replicas sum them with the in-memory all-reduce of
//! [`crate::comm`]. [`tensor_parallel_pair`] is `tp`-way Megatron
//! tensor parallelism for one column-parallel/row-parallel linear pair.

use std::collections::BTreeMap;
use std::time::Duration;

use gantry_lang::program::{
    Activation, BinaryOp, EmbeddingTable, Graph, Item, Op, OpKind, TensorId,
};

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

    /// Every parameter of `op` at `path`, in slot order.
    fn params(&self, op: &Op, path: &[u64]) -> Vec<Vec<f32>> {
        (0..graph::params(&op.kind).len())
            .map(|k| self.param(op, path, k))
            .collect()
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
            OpKind::Linear {
                d_in, d_out, bias, ..
            } => {
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
            OpKind::EmbeddingBag { tables } => {
                let ws: Vec<Vec<f32>> =
                    (0..tables.len()).map(|t| self.param(op, path, t)).collect();
                r::embedding_bag(x, &ws, tables)
            }
            OpKind::Interact { vectors, dim } => r::interact(
                x,
                &self.values[ins[1]],
                sh(0)[0],
                (*vectors as usize).saturating_sub(1),
                *dim as usize,
            ),
            OpKind::Mlp { dims, activation } => {
                let ws = self.params(op, path);
                r::mlp_forward(x, &ws, &graph::mlp_widths(dims), *activation).0
            }
            OpKind::Moe {
                experts,
                top_k,
                d_model,
                d_ff,
            } => r::moe(
                x,
                &self.params(op, path),
                *experts as usize,
                *top_k as usize,
                *d_model as usize,
                *d_ff as usize,
            ),
            OpKind::Concat { axis } => {
                let parts: Vec<&[f32]> = ins.iter().map(|s| self.values[*s].as_slice()).collect();
                let shapes: Vec<&[usize]> = (0..ins.len()).map(|k| sh(k).as_slice()).collect();
                r::concat(&parts, &shapes, *axis, &self.shapes[op.output.0 as usize])
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
        OpKind::Linear {
            d_in, d_out, bias, ..
        } => {
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
        OpKind::EmbeddingBag { tables } => {
            for (t, dt) in embedding_bag_grad(x, dy, tables).into_iter().enumerate() {
                add_param(params, e, t as u32, dt);
            }
            vec![None]
        }
        OpKind::Interact { vectors, dim } => {
            let (dd, ds) = interact_grad(
                x,
                &tape.values[e.ins[1]],
                dy,
                sh(0)[0],
                (*vectors as usize).saturating_sub(1),
                *dim as usize,
            );
            vec![Some(dd), Some(ds)]
        }
        OpKind::Mlp { dims, activation } => {
            let w = tape.params(op, &e.path);
            let (dx, dw) = mlp_grad(x, &w, &graph::mlp_widths(dims), *activation, dy);
            for (k, g) in dw.into_iter().enumerate() {
                add_param(params, e, k as u32, g);
            }
            vec![Some(dx)]
        }
        OpKind::Moe {
            experts,
            top_k,
            d_model,
            d_ff,
        } => {
            let w = tape.params(op, &e.path);
            let (dx, dw) = moe_grad(
                x,
                &w,
                dy,
                *experts as usize,
                *top_k as usize,
                *d_model as usize,
                *d_ff as usize,
            );
            for (k, g) in dw.into_iter().enumerate() {
                add_param(params, e, k as u32, g);
            }
            vec![Some(dx)]
        }
        OpKind::Concat { axis } => {
            let shapes: Vec<&[usize]> = (0..e.ins.len()).map(|k| sh(k).as_slice()).collect();
            concat_grad(dy, &shapes, *axis)
                .into_iter()
                .map(Some)
                .collect()
        }
    })
}

/// The gradient of one `embedding_bag` table w.r.t. its rows: `ids` is
/// `[b, stride]` and `dpooled` (the gradient of the pooled vectors) is
/// `[b, stride, dim]`; the table reads column `col`. Sample `s` with id
/// `i` (clamped to `0..rows` as the forward does) adds its pooled
/// gradient to rows `(i + p) mod rows` for `p < pooling` (a row hit
/// several times collects it several times). Returns `[rows, dim]`.
/// The ids get no gradient.
pub fn embedding_bag_table_grad(
    ids: &[f32],
    dpooled: &[f32],
    stride: usize,
    col: usize,
    rows: u64,
    pooling: usize,
    dim: usize,
) -> Vec<f32> {
    let mut dt = vec![0.0f32; rows as usize * dim];
    embedding_bag_table_grad_into(&mut dt, ids, dpooled, (stride, col), rows, pooling, dim);
    dt
}

/// [`embedding_bag_table_grad`] added into `dt` (`[rows, dim]`); `at` is
/// `(stride, col)`.
pub fn embedding_bag_table_grad_into(
    dt: &mut [f32],
    ids: &[f32],
    dpooled: &[f32],
    (stride, col): (usize, usize),
    rows: u64,
    pooling: usize,
    dim: usize,
) {
    let n = rows as usize;
    if n == 0 {
        return;
    }
    for s in 0..ids.len() / stride.max(1) {
        let id = r::clamp_id(ids[s * stride + col], rows);
        let g = &dpooled[(s * stride + col) * dim..][..dim];
        for p in 0..pooling {
            let row = (id + p) % n;
            dt[row * dim..(row + 1) * dim]
                .iter_mut()
                .zip(g)
                .for_each(|(a, b)| *a += b);
        }
    }
}

/// The gradients of an `embedding_bag` op w.r.t. each of its tables (in
/// `tables` order, which is the slot order of [`graph::params`]): `ids`
/// `[b, n]`, `dy` `[b, n, dim]`. See [`embedding_bag_table_grad`].
pub fn embedding_bag_grad(ids: &[f32], dy: &[f32], tables: &[EmbeddingTable]) -> Vec<Vec<f32>> {
    tables
        .iter()
        .enumerate()
        .map(|(t, table)| {
            embedding_bag_table_grad(
                ids,
                dy,
                tables.len(),
                t,
                table.rows,
                table.pooling as usize,
                table.dim as usize,
            )
        })
        .collect()
}

/// The gradients of [`r::interact`] w.r.t. `dense [b, d]` and
/// `sparse [b, n, d]` given `dout [b, d + (n + 1) n / 2]`. With
/// `v_0 = dense`, `v_1.. = sparse`: the first `d` outputs are `v_0`
/// itself, then `v_i . v_j` for `i < j` row-major, so the pair's gradient
/// `g` adds `g v_j` to `v_i` and `g v_i` to `v_j`.
pub fn interact_grad(
    dense: &[f32],
    sparse: &[f32],
    dout: &[f32],
    b: usize,
    n: usize,
    d: usize,
) -> (Vec<f32>, Vec<f32>) {
    let vecs = n + 1;
    let width = d + vecs * (vecs - 1) / 2;
    let (mut dd, mut ds) = (vec![0.0f32; dense.len()], vec![0.0f32; sparse.len()]);
    // The gradients of one sample's `v_0..v_n`, `[n + 1, d]`.
    let mut dv = vec![0.0f32; vecs * d];
    for s in 0..b {
        let g = &dout[s * width..(s + 1) * width];
        let v = |i: usize| -> &[f32] {
            if i == 0 {
                &dense[s * d..(s + 1) * d]
            } else {
                &sparse[(s * n + i - 1) * d..(s * n + i) * d]
            }
        };
        dv.fill(0.0);
        dv[..d].copy_from_slice(&g[..d]);
        let mut k = d;
        for i in 0..vecs {
            for j in i + 1..vecs {
                let gk = g[k];
                k += 1;
                for c in 0..d {
                    dv[i * d + c] += gk * v(j)[c];
                    dv[j * d + c] += gk * v(i)[c];
                }
            }
        }
        dd[s * d..(s + 1) * d].copy_from_slice(&dv[..d]);
        ds[s * n * d..(s + 1) * n * d].copy_from_slice(&dv[d..]);
    }
    (dd, ds)
}

/// The gradients of an `mlp` (every layer `act(h W + b)`, the activation
/// after the last layer too): `x [rows, widths[0]]`, `w` the weight and
/// bias of each layer in [`graph::params`] order, `dy` the gradient of the
/// output `[rows, widths.last()]`. Returns `dx` and the gradient of each
/// entry of `w`, in the same order. The forward pass is recomputed.
pub fn mlp_grad(
    x: &[f32],
    w: &[Vec<f32>],
    widths: &[usize],
    act: Activation,
    dy: &[f32],
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let (_, layers) = r::mlp_forward(x, w, widths, act);
    let mut dw: Vec<Vec<f32>> = w.iter().map(|p| vec![0.0f32; p.len()]).collect();
    let mut g = dy.to_vec();
    for (l, (h, z)) in layers.iter().enumerate().rev() {
        let (di, dout) = (widths[l], widths[l + 1]);
        let rows = h.len() / di.max(1);
        let dz: Vec<f32> = z
            .iter()
            .zip(&g)
            .map(|(v, g)| activation_grad(act, *v) * g)
            .collect();
        dw[2 * l] = matmul_tn(h, &dz, rows, di, dout);
        let db = &mut dw[2 * l + 1];
        for row in dz.chunks(dout.max(1)) {
            db.iter_mut().zip(row).for_each(|(a, b)| *a += b);
        }
        g = matmul_nt(&dz, &w[2 * l], rows, dout, di);
    }
    (g, dw)
}

/// One SwiGLU expert's forward output and gradients, from [`swiglu_grad`].
#[derive(Clone, Debug, Default)]
pub struct SwigluGrads {
    /// The output `(silu(x w1) * (x w3)) w2`, `[rows, d]`.
    pub y: Vec<f32>,
    /// `[rows, d]`.
    pub dx: Vec<f32>,
    /// `[d, f]`.
    pub dw1: Vec<f32>,
    /// `[d, f]`.
    pub dw3: Vec<f32>,
    /// `[f, d]`.
    pub dw2: Vec<f32>,
}

/// The SwiGLU expert `y = (silu(x w1) * (x w3)) w2` over `x [rows, d]`
/// (`w1`, `w3` `[d, f]`, `w2` `[f, d]`): its output and the gradients
/// given `dy [rows, d]`.
pub fn swiglu_grad(
    x: &[f32],
    w1: &[f32],
    w3: &[f32],
    w2: &[f32],
    dy: &[f32],
    d: usize,
    f: usize,
) -> SwigluGrads {
    let rows = x.len() / d.max(1);
    let a = r::matmul(x, w1, rows, d, f);
    let b = r::matmul(x, w3, rows, d, f);
    let h: Vec<f32> = a
        .iter()
        .zip(&b)
        .map(|(a, b)| r::activation(Activation::Silu, *a) * b)
        .collect();
    let y = r::matmul(&h, w2, rows, f, d);
    let dw2 = matmul_tn(&h, dy, rows, f, d);
    let dh = matmul_nt(dy, w2, rows, d, f);
    let mut da = vec![0.0f32; dh.len()];
    let mut db = vec![0.0f32; dh.len()];
    for i in 0..dh.len() {
        da[i] = dh[i] * b[i] * activation_grad(Activation::Silu, a[i]);
        db[i] = dh[i] * r::activation(Activation::Silu, a[i]);
    }
    let dw1 = matmul_tn(x, &da, rows, d, f);
    let dw3 = matmul_tn(x, &db, rows, d, f);
    let mut dx = matmul_nt(&da, w1, rows, f, d);
    dx.iter_mut()
        .zip(matmul_nt(&db, w3, rows, f, d))
        .for_each(|(p, q)| *p += q);
    SwigluGrads {
        y,
        dx,
        dw1,
        dw3,
        dw2,
    }
}

/// The gradients of [`r::moe`] over `x [tokens, d]` given `dy [tokens, d]`;
/// `w` holds the router `[d, experts]` and then `w1, w3, w2` of each
/// expert ([`graph::params`] order). Returns `dx` and the gradient of
/// each entry of `w`, in the same order. The routing is recomputed
/// exactly as the forward does it (top `top_k` logits, ties to the lower
/// expert) and held fixed: the selection is piecewise constant, so the
/// router gets its gradient through the gates (the softmax over the
/// chosen logits) only, and unchosen logits get none. Each expert
/// processes the tokens routed to it as one batch ([`swiglu_grad`]).
#[allow(clippy::too_many_arguments)]
pub fn moe_grad(
    x: &[f32],
    w: &[Vec<f32>],
    dy: &[f32],
    experts: usize,
    top_k: usize,
    d: usize,
    f: usize,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let tokens = x.len() / d.max(1);
    let logits = r::matmul(x, &w[0], tokens, d, experts);
    // Per token: the chosen experts and their gates; per expert: the
    // (token, position among the token's choices) pairs routed to it.
    let mut chosen = Vec::with_capacity(tokens);
    let mut gates = Vec::with_capacity(tokens);
    let mut routed: Vec<Vec<(usize, usize)>> = vec![Vec::new(); experts];
    for t in 0..tokens {
        let row = &logits[t * experts..(t + 1) * experts];
        let c = r::top_k_indices(row, top_k);
        let sel: Vec<f32> = c.iter().map(|e| row[*e]).collect();
        gates.push(r::softmax(&sel, sel.len()));
        for (k, e) in c.iter().enumerate() {
            routed[*e].push((t, k));
        }
        chosen.push(c);
    }
    let mut dw: Vec<Vec<f32>> = w.iter().map(|p| vec![0.0f32; p.len()]).collect();
    let mut dx = vec![0.0f32; x.len()];
    // d loss / d gate, per token and choice.
    let mut dgate: Vec<Vec<f32>> = chosen.iter().map(|c| vec![0.0f32; c.len()]).collect();
    for (e, pairs) in routed.iter().enumerate() {
        if pairs.is_empty() {
            continue;
        }
        let mut xe = Vec::with_capacity(pairs.len() * d);
        let mut dye = Vec::with_capacity(pairs.len() * d);
        for (t, k) in pairs {
            let g = gates[*t][*k];
            xe.extend_from_slice(&x[t * d..(t + 1) * d]);
            dye.extend(dy[t * d..(t + 1) * d].iter().map(|v| g * v));
        }
        let sg = swiglu_grad(&xe, &w[1 + 3 * e], &w[2 + 3 * e], &w[3 + 3 * e], &dye, d, f);
        for (i, (t, k)) in pairs.iter().enumerate() {
            let yrow = &sg.y[i * d..(i + 1) * d];
            dgate[*t][*k] = yrow
                .iter()
                .zip(&dy[t * d..(t + 1) * d])
                .map(|(a, b)| a * b)
                .sum();
            dx[t * d..(t + 1) * d]
                .iter_mut()
                .zip(&sg.dx[i * d..(i + 1) * d])
                .for_each(|(a, b)| *a += b);
        }
        for (k, g) in [sg.dw1, sg.dw3, sg.dw2].into_iter().enumerate() {
            dw[1 + 3 * e + k] = g;
        }
    }
    // Back through the gate softmax to the chosen logits.
    let mut dlogits = vec![0.0f32; tokens * experts];
    for t in 0..tokens {
        let (g, dg) = (&gates[t], &dgate[t]);
        let dot: f32 = g.iter().zip(dg).map(|(a, b)| a * b).sum();
        for (k, e) in chosen[t].iter().enumerate() {
            dlogits[t * experts + e] = g[k] * (dg[k] - dot);
        }
    }
    dw[0] = matmul_tn(x, &dlogits, tokens, d, experts);
    dx.iter_mut()
        .zip(matmul_nt(&dlogits, &w[0], tokens, experts, d))
        .for_each(|(a, b)| *a += b);
    (dx, dw)
}

/// The gradients of [`r::concat`] w.r.t. its inputs (of shapes `shapes`,
/// joined along `axis`): `dy` split back into the inputs' pieces.
pub fn concat_grad(dy: &[f32], shapes: &[&[usize]], axis: usize) -> Vec<Vec<f32>> {
    let outer: usize = shapes.first().map_or(1, |s| s[..axis].iter().product());
    let mut out: Vec<Vec<f32>> = shapes
        .iter()
        .map(|s| Vec::with_capacity(numel(s)))
        .collect();
    let mut at = 0;
    for _ in 0..outer {
        for (o, s) in out.iter_mut().zip(shapes) {
            let chunk: usize = s[axis..].iter().product();
            o.extend_from_slice(&dy[at..at + chunk]);
            at += chunk;
        }
    }
    out
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
    use crate::init::Key;
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

    /// The stdlib DLRM's shape, small: bottom mlp, pooled lookups in
    /// three tables (one pooling more rows than it has, so rows repeat),
    /// the dot interaction, top mlp and sigmoid. The default activation
    /// (relu) is used as the stdlib does, after every layer.
    const DLRM_LIKE: &str = "table T(rows, dim = 4, pooling = 1) {
  dtype = fp32
}
model D(tables = [T(rows = 5), T(rows = 7, pooling = 2), T(rows = 3, pooling = 4)], dense_features = 5) {
  input dense: fp32[batch, dense_features]
  input sparse: i32[batch, len(tables)]
  b = mlp(dense, [8, 4])
  e = embedding_bag(sparse, tables)
  z = interact(b, e)
  output ctr = sigmoid(mlp(z, [6, 1]))
}
workload w {
  model D
  train { global_batch = 4, dtype = fp32 }
}
";

    /// The DLRM ops without the damping of the top mlp and the sigmoid
    /// (gradients of order 1): a smooth bottom mlp, the pooled lookups and
    /// the interaction as the output.
    const DLRM_PARTS: &str = "table T(rows, dim = 4, pooling = 1) {
  dtype = fp32
}
model D(tables = [T(rows = 5), T(rows = 7, pooling = 2), T(rows = 3, pooling = 4)], dense_features = 5) {
  input dense: fp32[batch, dense_features]
  input sparse: i32[batch, len(tables)]
  b = mlp(dense, [8, 4], activation = silu)
  e = embedding_bag(sparse, tables)
  output z = interact(b, e)
}
workload w {
  model D
  train { global_batch = 4, dtype = fp32 }
}
";

    /// The stdlib Mixtral's shape, small: 2 layers of attention and a
    /// 4-expert top-2 SwiGLU MoE, d_model 8, d_ff 16.
    const MOE_LIKE: &str = "model M(layers = 2, d_model = 8, heads = 2, kv_heads = 1, d_ff = 16, experts = 4, top_k = 2, vocab = 6) {
  let head_dim = d_model / heads
  input tokens: i32[batch, seq]
  x = embedding(tokens, vocab, d_model)
  repeat layers {
    h = rmsnorm(x)
    q = linear(h, d_model, heads * head_dim)
    k = linear(h, d_model, kv_heads * head_dim)
    v = linear(h, d_model, kv_heads * head_dim)
    a = attention(q, k, v, heads = heads, kv_heads = kv_heads, causal = true)
    x = x + linear(a, heads * head_dim, d_model)
    x = x + moe(rmsnorm(x), experts = experts, top_k = top_k, d_ff = d_ff)
  }
  output logits = linear(rmsnorm(x), d_model, vocab)
}
workload w {
  model M
  train { seq = 4, global_batch = 2, dtype = fp32 }
}
";

    /// `concat` along the last axis (an input repeated), a middle axis
    /// and a leading axis, each followed by something that tells the
    /// pieces apart.
    const CONCAT: &str = "model C(d = 3) {
  input x: f32[batch, 2, d]
  input w: f32[2, d]
  a = linear(x, d, 4, bias = true)
  b = silu(linear(x, d, 2))
  c = concat([a, b, a], axis = -1)
  s = softmax(c) * linear(x, d, 10)
  m = concat([s, gelu(s)], axis = 1)
  output y = linear(reshape(m, [batch, 40]), 40, 3)
  r = concat([linear(w, d, 5), sigmoid(linear(w, d, 5)), linear(w, d, 5)], axis = 0)
  output z = softmax(r) * linear(r, 5, 5)
}
workload w {
  model C
  train { seq = 1, global_batch = 2, dtype = fp32 }
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

    /// The whole DLRM-like model is checked at the Llama-like tolerance:
    /// behind the top mlp and the sigmoid its bottom-mlp gradients are of
    /// order 1e-2, where the f32 rounding of the central differences
    /// (about 5e-5) is a few 1e-3 of them; a larger step would cross the
    /// top mlp's relu kinks. [`DLRM_PARTS`] checks the same ops at 1e-3.
    #[test]
    fn dlrm_gradients_match_finite_differences() {
        let a = check_fd(DLRM_LIKE, 1e-2);
        let b = check_fd(DLRM_PARTS, 1e-3);
        eprintln!("finite differences: max rel err {a:.2e} (dlrm-like), {b:.2e} (dlrm parts)");
    }

    #[test]
    fn moe_gradients_match_finite_differences() {
        // Every expert of every layer is chosen by some token, so every
        // expert's weights (and the router) are checked.
        let w = workload(MOE_LIKE);
        let grads = backward(
            &w.model.graph,
            &w.bindings,
            &Init::new(7),
            None,
            &Overrides::new(),
        )
        .expect("backward");
        let moe: Vec<_> = graph::ops(&w.model.graph.body)
            .into_iter()
            .filter(|o| matches!(o.kind, OpKind::Moe { .. }))
            .map(|o| o.output)
            .collect();
        let mut slots = 0;
        for (key, g) in &grads.params {
            if moe.contains(&key.0) {
                slots += 1;
                assert!(g.iter().any(|v| *v != 0.0), "moe {key:?} has no gradient");
            }
        }
        assert_eq!(slots, 2 * 13);
        let e = check_fd(MOE_LIKE, 1e-2);
        eprintln!("finite differences: max rel err {e:.2e} (moe-like)");
    }

    #[test]
    fn embedding_bag_grad_clamps_ids_like_the_forward() {
        // The lookup is linear in the table, so its gradient is the
        // adjoint: sum(dy * bag(W)) = sum(grad * W) for any W and dy.
        let table = |rows, pooling| EmbeddingTable {
            name: "T".into(),
            rows,
            dim: 3,
            pooling,
            dtype: gantry_lang::program::DType::F32,
        };
        let tables = vec![table(4, 2), table(3, 5)];
        let ids = [-2.0, 7.0, 9.5, f32::NAN, 2.7, 1.0, 3.0, -0.5];
        let init = Init::new(11);
        let ws: Vec<Vec<f32>> = (0..2)
            .map(|t| {
                (0..12)
                    .map(|i| init.symmetric(Key::input(t), i, 1.0))
                    .collect()
            })
            .collect();
        let dy: Vec<f32> = (0..24)
            .map(|i| init.symmetric(Key::input(9), i, 1.0))
            .collect();
        let y = r::embedding_bag(&ids, &ws, &tables);
        let lhs: f64 = y.iter().zip(&dy).map(|(a, b)| f64::from(a * b)).sum();
        let grads = embedding_bag_grad(&ids, &dy, &tables);
        let rhs: f64 = grads
            .iter()
            .zip(&ws)
            .flat_map(|(g, w)| g.iter().zip(w).map(|(a, b)| f64::from(a * b)))
            .sum();
        assert!(
            (lhs - rhs).abs() <= 1e-5 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
        // Id -2 clamps to row 0, 9.5 to row 3 (pooling 2 wraps to row 0).
        assert_eq!(
            &grads[0][..3],
            &[
                dy[0] + dy[6] + dy[18],
                dy[1] + dy[7] + dy[19],
                dy[2] + dy[8] + dy[20]
            ][..] as &[f32]
        );
    }

    #[test]
    fn moe_grad_breaks_ties_like_the_forward() {
        // A zero router ties every logit: the forward picks experts 0 and
        // 1 (gates 1/2), so only their weights may get gradients.
        let (e, k, d, f) = (4, 2, 3, 5);
        let init = Init::new(13);
        let mut w = vec![vec![0.0f32; d * e]];
        for ex in 0..e {
            for (m, len) in [(0, d * f), (1, d * f), (2, f * d)] {
                w.push(
                    (0..len as u64)
                        .map(|i| init.symmetric(Key::input((3 * ex + m) as u32), i, 0.5))
                        .collect(),
                );
            }
        }
        let x: Vec<f32> = (0..2 * d as u64)
            .map(|i| init.symmetric(Key::input(99), i, 1.0))
            .collect();
        let dy = vec![1.0f32; x.len()];
        let (_, dw) = moe_grad(&x, &w, &dy, e, k, d, f);
        for ex in 0..e {
            let used = dw[1 + 3 * ex..4 + 3 * ex]
                .iter()
                .any(|g| g.iter().any(|v| *v != 0.0));
            assert_eq!(used, ex < k, "expert {ex}");
        }
    }

    #[test]
    fn concat_gradients_match_finite_differences() {
        let e = check_fd(CONCAT, 1e-3);
        eprintln!("finite differences: max rel err {e:.2e} (concat)");
    }

    #[test]
    fn dlrm_data_parallel_gradients_match_single_device() {
        let w = workload(DLRM_LIKE);
        let g = &w.model.graph;
        let init = Init::new(3);
        let mut bindings = w.bindings.clone();
        bindings.insert("batch".into(), 8);
        let want = backward(g, &bindings, &init, None, &Overrides::new()).expect("backward");
        for dp in [2, 4] {
            let got = data_parallel(g, &bindings, &init, dp).expect("dp");
            let (worst, _) = compare(&got, &want);
            assert!(worst <= 1e-4, "dp = {dp}: max rel err {worst:.2e}");
            assert!((got.loss - want.loss).abs() <= 1e-4 * want.loss.abs().max(1.0));
            eprintln!("dlrm dp = {dp}: max rel err {worst:.2e}");
        }
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
