//! The reference interpreter: a graph on the CPU in f32 with plain loops.
//!
//! It is deliberately naive and shares no compute code with the JIT path
//! ([`crate::jit`], [`crate::exec`]): every op is a direct transcription
//! of its definition, one element at a time, so that agreement between the
//! two paths means something. Semantics (also in docs/RUNTIME.md):
//!
//! - `dropout` is the identity (inference semantics), also inside attention.
//! - `attention` splits `q` into `heads` and `k`, `v` into `kv_heads`
//!   (query head `h` reads key/value head `h / (heads / kv_heads)`), scales
//!   scores by `1/sqrt(head_dim)`, and with `causal` lets query `i` see keys
//!   `j <= i + (seq_kv - seq_q)`; the softmax subtracts the row maximum. A
//!   query that sees no key gets zeros.
//! - `gelu` is the tanh approximation; norms use `eps = 1e-5`.
//! - `embedding_bag`: sample `b`, table `t` with id `i` (clamped to the
//!   table) sums rows `(i + p) mod rows` for `p < pooling`.
//! - `interact`: the dense vector and the `n` pooled vectors are `n + 1`
//!   vectors `v_0..v_n`; the result is the dense vector followed by
//!   `v_i . v_j` for `i < j`, in row-major order of `(i, j)`.
//! - `mlp` applies its activation after every layer.
//! - `moe`: router logits `x R`, the `top_k` largest (ties to the lower
//!   expert), gates the softmax of the chosen logits, and the gated sum of
//!   SwiGLU experts `(silu(x w1) * (x w3)) w2`.
//! - Integer tensors hold their ids as exact f32 values; an id outside its
//!   table is clamped to the nearest row.

use std::collections::BTreeMap;

use gantry_lang::program::{
    Activation, BinaryOp, EmbeddingTable, Graph, Item, Op, OpKind, TensorId,
};

use crate::error::{RuntimeError, unsupported};
use crate::graph::{self, NORM_EPS, numel};
use crate::init::Init;

/// One traced op result: the tensor, the iterations of its enclosing
/// `repeat`s, and its values.
pub type TraceEntry = ((TensorId, Vec<u64>), Vec<f32>);

/// The result of a reference run.
#[derive(Clone, Debug, Default)]
pub struct Reference {
    /// Graph outputs by name, with their shapes.
    pub outputs: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// With tracing on: every op's output per iteration path, in execution order.
    pub trace: Vec<TraceEntry>,
}

impl Reference {
    pub fn traced(&self, t: TensorId, path: &[u64]) -> Option<&[f32]> {
        self.trace
            .iter()
            .find(|((id, p), _)| *id == t && p == path)
            .map(|(_, v)| v.as_slice())
    }
}

/// Runs `graph` with every symbol bound by `bindings`. `inputs` gives the
/// graph inputs (row-major, in `graph.inputs` order); `None` makes them
/// from `init`.
pub fn run(
    graph: &Graph,
    bindings: &BTreeMap<String, i64>,
    init: &Init,
    inputs: Option<Vec<Vec<f32>>>,
    trace: bool,
) -> Result<Reference, RuntimeError> {
    let shapes = graph::shapes(graph, bindings)?;
    let mut env: BTreeMap<TensorId, Vec<f32>> = BTreeMap::new();
    let inputs = match inputs {
        Some(v) => v,
        None => graph
            .inputs
            .iter()
            .map(|i| graph::input_values(graph, *i, &shapes[i.0 as usize], init))
            .collect(),
    };
    for (id, v) in graph.inputs.iter().zip(inputs) {
        env.insert(*id, v);
    }
    let mut r = Interp {
        shapes: &shapes,
        init,
        env,
        trace: trace.then(Vec::new),
    };
    r.items(&graph.body, &mut Vec::new())?;
    let mut out = Reference::default();
    for (name, t) in &graph.outputs {
        let v = r
            .env
            .get(t)
            .cloned()
            .ok_or_else(|| unsupported(format!("output `{name}` is never computed")))?;
        out.outputs
            .push((name.clone(), shapes[t.0 as usize].clone(), v));
    }
    out.trace = r.trace.unwrap_or_default();
    Ok(out)
}

struct Interp<'a> {
    shapes: &'a [Vec<usize>],
    init: &'a Init,
    env: BTreeMap<TensorId, Vec<f32>>,
    trace: Option<Vec<TraceEntry>>,
}

impl Interp<'_> {
    fn items(&mut self, items: &[Item], path: &mut Vec<u64>) -> Result<(), RuntimeError> {
        for it in items {
            match it {
                Item::Op(op) => {
                    let v = self.op(op, path)?;
                    if let Some(t) = &mut self.trace {
                        t.push(((op.output, path.clone()), v.clone()));
                    }
                    self.env.insert(op.output, v);
                }
                Item::Repeat(rep) => {
                    for i in 0..rep.count {
                        for c in &rep.carried {
                            let src = if i == 0 { c.init } else { c.next };
                            let v = self.get(src)?.to_vec();
                            self.env.insert(c.param, v);
                        }
                        path.push(i);
                        self.items(&rep.body, path)?;
                        path.pop();
                    }
                    for c in &rep.carried {
                        let src = if rep.count == 0 { c.init } else { c.next };
                        let v = self.get(src)?.to_vec();
                        self.env.insert(c.result, v);
                    }
                }
            }
        }
        Ok(())
    }

    fn get(&self, t: TensorId) -> Result<&[f32], RuntimeError> {
        self.env
            .get(&t)
            .map(|v| v.as_slice())
            .ok_or_else(|| unsupported(format!("tensor %{} is read before it is computed", t.0)))
    }

    fn shape(&self, t: TensorId) -> &[usize] {
        &self.shapes[t.0 as usize]
    }

    fn op(&mut self, op: &Op, path: &[u64]) -> Result<Vec<f32>, RuntimeError> {
        let ins: Vec<&[f32]> = op
            .inputs
            .iter()
            .map(|i| self.get(*i))
            .collect::<Result<_, _>>()?;
        let out_shape = self.shape(op.output).to_vec();
        let ps = graph::params(&op.kind);
        let w = |k: usize| ps[k].full(self.init, op.output, path);
        let x = ins.first().copied().unwrap_or(&[]);
        let last = |t: TensorId| *self.shape(t).last().unwrap_or(&1);
        Ok(match &op.kind {
            OpKind::Linear {
                d_in, d_out, bias, ..
            } => {
                let b = if *bias { Some(w(1)) } else { None };
                linear(x, &w(0), b.as_deref(), *d_in as usize, *d_out as usize)
            }
            OpKind::MatMul => {
                let a = self.shape(op.inputs[0]);
                let bs = self.shape(op.inputs[1]);
                let (m, k, n) = (a[a.len() - 2], a[a.len() - 1], bs[bs.len() - 1]);
                let batch = numel(a) / (m * k).max(1);
                let mut out = vec![0.0; batch * m * n];
                for bi in 0..batch {
                    let c = matmul(
                        &x[bi * m * k..(bi + 1) * m * k],
                        &ins[1][bi * k * n..(bi + 1) * k * n],
                        m,
                        k,
                        n,
                    );
                    out[bi * m * n..(bi + 1) * m * n].copy_from_slice(&c);
                }
                out
            }
            OpKind::Embedding { vocab, dim } => {
                let table = w(0);
                let d = *dim as usize;
                let mut out = Vec::with_capacity(x.len() * d);
                for id in x {
                    let r = clamp_id(*id, *vocab);
                    out.extend_from_slice(&table[r * d..(r + 1) * d]);
                }
                out
            }
            OpKind::EmbeddingBag { tables } => {
                let ws: Vec<Vec<f32>> = (0..tables.len()).map(w).collect();
                embedding_bag(x, &ws, tables)
            }
            OpKind::Attention {
                heads,
                kv_heads,
                head_dim,
                causal,
                ..
            } => {
                let q = self.shape(op.inputs[0]);
                let k = self.shape(op.inputs[1]);
                attention(
                    x,
                    ins[1],
                    ins[2],
                    q[0],
                    q[1],
                    k[1],
                    *heads as usize,
                    *kv_heads as usize,
                    *head_dim as usize,
                    *causal,
                )
            }
            OpKind::Dropout(_) => x.to_vec(),
            OpKind::RmsNorm { dim } => rmsnorm(x, &w(0), *dim as usize),
            OpKind::LayerNorm { dim } => layernorm(x, &w(0), &w(1), *dim as usize),
            OpKind::Softmax => softmax(x, last(op.inputs[0])),
            OpKind::Activation(a) => x.iter().map(|v| activation(*a, *v)).collect(),
            OpKind::Binary(b) => x
                .iter()
                .zip(ins[1])
                .map(|(p, q)| binary(*b, *p, *q))
                .collect(),
            OpKind::Scale(c) => x.iter().map(|v| v * *c as f32).collect(),
            OpKind::Mlp {
                dims,
                activation: act,
            } => {
                let widths = graph::mlp_widths(dims);
                let ws: Vec<Vec<f32>> = (0..2 * (widths.len() - 1)).map(w).collect();
                mlp_forward(x, &ws, &widths, *act).0
            }
            OpKind::Interact { vectors, dim } => {
                let b = self.shape(op.inputs[0])[0];
                interact(
                    x,
                    ins[1],
                    b,
                    (*vectors as usize).saturating_sub(1),
                    *dim as usize,
                )
            }
            OpKind::Moe {
                experts,
                top_k,
                d_model,
                d_ff,
            } => {
                let all: Vec<Vec<f32>> = (0..ps.len()).map(w).collect();
                moe(
                    x,
                    &all,
                    *experts as usize,
                    *top_k as usize,
                    *d_model as usize,
                    *d_ff as usize,
                )
            }
            OpKind::Reshape => x.to_vec(),
            OpKind::Concat { axis } => {
                let shapes: Vec<&[usize]> = op.inputs.iter().map(|i| self.shape(*i)).collect();
                concat(&ins, &shapes, *axis, &out_shape)
            }
        })
    }
}

/// The pooled lookups of `embedding_bag`:
/// `ids [b, n]`, one table `[rows, dim]` per column; `[b, n, dim]`.
pub fn embedding_bag(ids: &[f32], ws: &[Vec<f32>], tables: &[EmbeddingTable]) -> Vec<f32> {
    let n = tables.len();
    let d = tables.first().map_or(0, |t| t.dim as usize);
    let b = ids.len() / n.max(1);
    let mut out = vec![0.0f32; b * n * d];
    for (t, (table, w)) in tables.iter().zip(ws).enumerate() {
        for s in 0..b {
            let id = clamp_id(ids[s * n + t], table.rows);
            for p in 0..table.pooling as usize {
                let row = (id + p) % table.rows as usize;
                for j in 0..d {
                    out[(s * n + t) * d + j] += w[row * d + j];
                }
            }
        }
    }
    out
}

/// The forward pass of `mlp` (linear + bias + activation per layer): the output and each layer's input and
/// pre-activation (`layers[l] = (input, pre-activation)`).
#[allow(clippy::type_complexity)]
pub fn mlp_forward(
    x: &[f32],
    w: &[Vec<f32>],
    widths: &[usize],
    act: Activation,
) -> (Vec<f32>, Vec<(Vec<f32>, Vec<f32>)>) {
    let mut h = x.to_vec();
    let mut layers = Vec::with_capacity(widths.len().saturating_sub(1));
    for l in 0..widths.len().saturating_sub(1) {
        let z = linear(&h, &w[2 * l], Some(&w[2 * l + 1]), widths[l], widths[l + 1]);
        let next = z.iter().map(|v| activation(act, *v)).collect();
        layers.push((std::mem::replace(&mut h, next), z));
    }
    (h, layers)
}

/// An id stored as f32, clamped to `0..rows`.
pub fn clamp_id(v: f32, rows: u64) -> usize {
    let r = if v.is_nan() || v < 0.0 {
        0.0
    } else {
        f64::from(v).floor()
    };
    (r.min(rows.saturating_sub(1) as f64)) as usize
}

/// `x [rows, d_in] @ w [d_in, d_out] + b`.
pub fn linear(x: &[f32], w: &[f32], b: Option<&[f32]>, d_in: usize, d_out: usize) -> Vec<f32> {
    let rows = x.len() / d_in.max(1);
    let mut out = matmul(x, w, rows, d_in, d_out);
    if let Some(b) = b {
        for r in 0..rows {
            for o in 0..d_out {
                out[r * d_out + o] += b[o];
            }
        }
    }
    out
}

/// `a [m, k] @ b [k, n]`, row-major.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f32;
            for p in 0..k {
                s += a[i * k + p] * b[p * n + j];
            }
            c[i * n + j] = s;
        }
    }
    c
}

pub fn activation(a: Activation, x: f32) -> f32 {
    match a {
        Activation::Relu => x.max(0.0),
        Activation::Gelu => {
            0.5 * x
                * (1.0 + ((2.0 / std::f32::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
        }
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
    }
}

pub fn binary(op: BinaryOp, a: f32, b: f32) -> f32 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
    }
}

pub fn rmsnorm(x: &[f32], g: &[f32], dim: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(dim.max(1)) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (ms + NORM_EPS).sqrt();
        out.extend(row.iter().zip(g).map(|(v, g)| v * inv * g));
    }
    out
}

pub fn layernorm(x: &[f32], g: &[f32], b: &[f32], dim: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(dim.max(1)) {
        let mean = row.iter().sum::<f32>() / dim as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
        let inv = 1.0 / (var + NORM_EPS).sqrt();
        out.extend(
            row.iter()
                .zip(g.iter().zip(b))
                .map(|(v, (g, b))| (v - mean) * inv * g + b),
        );
    }
    out
}

pub fn softmax(x: &[f32], dim: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(dim.max(1)) {
        let max = row.iter().fold(f32::NEG_INFINITY, |a, v| a.max(*v));
        let e: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
        let s: f32 = e.iter().sum();
        out.extend(e.iter().map(|v| v / s));
    }
    out
}

/// Attention over `q [b, sq, heads*hd]`, `k`, `v [b, skv, kv_heads*hd]`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    b: usize,
    sq: usize,
    skv: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    causal: bool,
) -> Vec<f32> {
    let group = heads / kv_heads.max(1);
    let (qf, kf) = (heads * hd, kv_heads * hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0.0f32; b * sq * qf];
    for bi in 0..b {
        for h in 0..heads {
            let g = h / group.max(1);
            for i in 0..sq {
                let visible = if causal {
                    (i as isize + skv as isize - sq as isize + 1).clamp(0, skv as isize) as usize
                } else {
                    skv
                };
                if visible == 0 {
                    continue;
                }
                let qrow = &q[(bi * sq + i) * qf + h * hd..][..hd];
                let scores: Vec<f32> = (0..visible)
                    .map(|j| {
                        let krow = &k[(bi * skv + j) * kf + g * hd..][..hd];
                        qrow.iter().zip(krow).map(|(a, b)| a * b).sum::<f32>() * scale
                    })
                    .collect();
                let p = softmax(&scores, visible);
                let o = &mut out[(bi * sq + i) * qf + h * hd..][..hd];
                for (j, pj) in p.iter().enumerate() {
                    let vrow = &v[(bi * skv + j) * kf + g * hd..][..hd];
                    for d in 0..hd {
                        o[d] += pj * vrow[d];
                    }
                }
            }
        }
    }
    out
}

/// DLRM's dot interaction of `dense [b, d]` and `sparse [b, n, d]`.
pub fn interact(dense: &[f32], sparse: &[f32], b: usize, n: usize, d: usize) -> Vec<f32> {
    let vecs = n + 1;
    let width = d + vecs * (vecs - 1) / 2;
    let mut out = Vec::with_capacity(b * width);
    for s in 0..b {
        let v = |i: usize| -> &[f32] {
            if i == 0 {
                &dense[s * d..(s + 1) * d]
            } else {
                &sparse[(s * n + i - 1) * d..(s * n + i) * d]
            }
        };
        out.extend_from_slice(v(0));
        for i in 0..vecs {
            for j in i + 1..vecs {
                out.push(v(i).iter().zip(v(j)).map(|(a, b)| a * b).sum());
            }
        }
    }
    out
}

/// Mixture of experts over `x [tokens, d]`; `w` holds the router and then
/// `w1, w3, w2` of each expert (see [`graph::params`]).
pub fn moe(
    x: &[f32],
    w: &[Vec<f32>],
    experts: usize,
    top_k: usize,
    d: usize,
    f: usize,
) -> Vec<f32> {
    let tokens = x.len() / d.max(1);
    let logits = matmul(x, &w[0], tokens, d, experts);
    let mut out = vec![0.0f32; x.len()];
    for t in 0..tokens {
        let row = &logits[t * experts..(t + 1) * experts];
        let chosen = top_k_indices(row, top_k);
        let sel: Vec<f32> = chosen.iter().map(|e| row[*e]).collect();
        let gates = softmax(&sel, sel.len());
        let xt = &x[t * d..(t + 1) * d];
        for (e, g) in chosen.iter().zip(gates) {
            let a = matmul(xt, &w[1 + 3 * e], 1, d, f);
            let b = matmul(xt, &w[2 + 3 * e], 1, d, f);
            let h: Vec<f32> = a
                .iter()
                .zip(&b)
                .map(|(a, b)| activation(Activation::Silu, *a) * b)
                .collect();
            let y = matmul(&h, &w[3 + 3 * e], 1, f, d);
            for j in 0..d {
                out[t * d + j] += g * y[j];
            }
        }
    }
    out
}

/// The indices of the `k` largest values, largest first; ties go to the
/// lower index.
pub fn top_k_indices(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|a, b| row[*b].total_cmp(&row[*a]).then(a.cmp(b)));
    idx.truncate(k);
    idx
}

pub fn concat(ins: &[&[f32]], shapes: &[&[usize]], axis: usize, out_shape: &[usize]) -> Vec<f32> {
    let outer: usize = out_shape[..axis].iter().product();
    let mut out = Vec::with_capacity(numel(out_shape));
    for o in 0..outer {
        for (x, s) in ins.iter().zip(shapes) {
            let chunk: usize = s[axis..].iter().product();
            out.extend_from_slice(&x[o * chunk..(o + 1) * chunk]);
        }
    }
    out
}
