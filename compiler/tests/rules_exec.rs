//! Every e-graph rewrite proved by execution.
//!
//! For each rule of the sharding, collective and fusion families this test
//! takes the rule's own left- and right-hand patterns (the `Pattern` ASTs
//! inside the `Rewrite`, so the text tested is the text saturated), binds
//! the op variables (`?i`, `?j`) to concrete ops (linears with random
//! weights of odd sizes, with and without a bias, relu / scale / silu,
//! add / mul, rmsnorm / layernorm / softmax over the last dimension,
//! per-head attention with and without a causal mask, a matrix product, a
//! small mixture of SwiGLU experts with fixed gates) and the value
//! variables to random tensors laid out as the left-hand side needs them
//! (whole, feature blocks of the last dimension, row blocks, or per-shard
//! partial sums),
//! then runs both sides in a small shard-level interpreter written here,
//! independently of the compiler and the runtime: every sharded form runs
//! its op's kernel on each shard's local data, and collectives do what
//! they say (a row-parallel linear's bias joins shard 0's partial sum, as
//! the runtime adds it on rank 0). Blocks are cut as
//! `runtime/src/layout.rs::block` cuts them (uneven when the size does not
//! divide; the last blocks are the larger).
//! Both sides must give the same layout and, gathered, the same tensor
//! within 1e-5 of the largest magnitude, at 2, 3 and 4 shards.
//!
//! A table of rule names per family must match what the families return,
//! so a new rule cannot go unexamined; a deliberately wrong rule (a norm on
//! feature shards) shows the harness can fail. Not modelled: dropout's
//! random masks, broadcasting binary ops, grouped key/value heads, and the
//! pipeline family (its split is a custom applier over layer counts).

use std::collections::BTreeMap;
use std::ops::Range;

use egg::{ENodeOrVar, Id, Language, Pattern, PatternAst, Rewrite, Var};
use gantry_compiler::egraph::{Shard, ShardAnalysis, collectives, fusion, sharding};

// ---------------------------------------------------------------- tensors

/// A row-major 2-D tensor.
#[derive(Clone, Debug)]
struct T {
    r: usize,
    c: usize,
    d: Vec<f64>,
}

impl T {
    fn zeros(r: usize, c: usize) -> T {
        T {
            r,
            c,
            d: vec![0.0; r * c],
        }
    }
    fn rand(r: usize, c: usize, rng: &mut Rng, scale: f64) -> T {
        T {
            r,
            c,
            d: (0..r * c).map(|_| rng.next() * scale).collect(),
        }
    }
    fn at(&self, i: usize, j: usize) -> f64 {
        self.d[i * self.c + j]
    }
    fn set(&mut self, i: usize, j: usize, v: f64) {
        self.d[i * self.c + j] = v;
    }
    fn cols(&self, rg: Range<usize>) -> T {
        let mut o = T::zeros(self.r, rg.len());
        for i in 0..self.r {
            for (jj, j) in rg.clone().enumerate() {
                o.set(i, jj, self.at(i, j));
            }
        }
        o
    }
    fn rows(&self, rg: Range<usize>) -> T {
        T {
            r: rg.len(),
            c: self.c,
            d: self.d[rg.start * self.c..rg.end * self.c].to_vec(),
        }
    }
    fn hcat(parts: &[&T]) -> Result<T, String> {
        let r = parts.first().map_or(0, |p| p.r);
        if parts.iter().any(|p| p.r != r) {
            return Err("feature blocks with different row counts".into());
        }
        let c = parts.iter().map(|p| p.c).sum();
        let mut o = T::zeros(r, c);
        let mut off = 0;
        for p in parts {
            for i in 0..r {
                for j in 0..p.c {
                    o.set(i, off + j, p.at(i, j));
                }
            }
            off += p.c;
        }
        Ok(o)
    }
    fn vcat(parts: &[T]) -> Result<T, String> {
        let c = parts.first().map_or(0, |p| p.c);
        if parts.iter().any(|p| p.c != c) {
            return Err("row blocks with different widths".into());
        }
        Ok(T {
            r: parts.iter().map(|p| p.r).sum(),
            c,
            d: parts.iter().flat_map(|p| p.d.iter().copied()).collect(),
        })
    }
    fn same_shape(&self, o: &T) -> Result<(), String> {
        if (self.r, self.c) == (o.r, o.c) {
            Ok(())
        } else {
            Err(format!(
                "shapes {}x{} and {}x{} differ",
                self.r, self.c, o.r, o.c
            ))
        }
    }
    fn zip(&self, o: &T, f: impl Fn(f64, f64) -> f64) -> Result<T, String> {
        self.same_shape(o)?;
        Ok(T {
            r: self.r,
            c: self.c,
            d: self.d.iter().zip(&o.d).map(|(a, b)| f(*a, *b)).collect(),
        })
    }
    fn map(&self, f: impl Fn(f64) -> f64) -> T {
        T {
            r: self.r,
            c: self.c,
            d: self.d.iter().map(|a| f(*a)).collect(),
        }
    }
    fn matmul(&self, o: &T) -> Result<T, String> {
        if self.c != o.r {
            return Err(format!(
                "product of {}x{} by {}x{}",
                self.r, self.c, o.r, o.c
            ));
        }
        let mut out = T::zeros(self.r, o.c);
        for i in 0..self.r {
            for k in 0..self.c {
                let a = self.at(i, k);
                for j in 0..o.c {
                    out.d[i * o.c + j] += a * o.at(k, j);
                }
            }
        }
        Ok(out)
    }
    fn transpose(&self) -> T {
        let mut o = T::zeros(self.c, self.r);
        for i in 0..self.r {
            for j in 0..self.c {
                o.set(j, i, self.at(i, j));
            }
        }
        o
    }
    fn max_abs(&self) -> f64 {
        self.d.iter().fold(0.0, |m, v| m.max(v.abs()))
    }
}

/// The block of `len` that part `i` of `parts` holds (as the runtime cuts).
fn block(len: usize, parts: usize, i: usize) -> Range<usize> {
    let parts = parts.max(1);
    (i * len / parts)..((i + 1) * len / parts)
}

/// xorshift64*: deterministic values in [-1, 1).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        (v as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

/// A weight of shape `r x c` determined by `seed` and its shape, so both
/// sides of a rule (and every shard) see the same weight.
fn weight(seed: u64, r: usize, c: usize) -> T {
    let mut rng = Rng::new(seed ^ ((r as u64) << 32) ^ ((c as u64) << 16) ^ 0xABCD);
    T::rand(r, c, &mut rng, 1.0 / (r.max(1) as f64).sqrt())
}

// ---------------------------------------------------------------- ops

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Linear,
    Unary,
    Binary,
    Reduce,
    Attn,
    Matmul,
    Moe,
}

/// A concrete IR op bound to an op variable.
#[derive(Clone, Debug)]
enum Op {
    /// `x W (+ b)` with `W` of shape `k x n` (k from the input).
    Linear {
        n: usize,
        seed: u64,
        bias: bool,
    },
    Relu,
    Scale(f64),
    Silu,
    Add,
    Mul,
    RmsNorm,
    LayerNorm,
    Softmax,
    /// Per-head `softmax(q kᵀ / sqrt(dh)) v`, heads of width `dh`, with a
    /// causal mask or without.
    Attn {
        dh: usize,
        causal: bool,
    },
    Matmul,
    /// `Σ_e g_e · (silu(x W1_e) ⊙ x W3_e) W2_e`, hidden width `f`.
    Moe {
        experts: usize,
        f: usize,
        seed: u64,
    },
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

impl Op {
    fn kind(&self) -> Kind {
        match self {
            Op::Linear { .. } => Kind::Linear,
            Op::Relu | Op::Scale(_) | Op::Silu => Kind::Unary,
            Op::Add | Op::Mul => Kind::Binary,
            Op::RmsNorm | Op::LayerNorm | Op::Softmax => Kind::Reduce,
            Op::Attn { .. } => Kind::Attn,
            Op::Matmul => Kind::Matmul,
            Op::Moe { .. } => Kind::Moe,
        }
    }

    /// The op's kernel on one input, over whatever columns it is given
    /// (a row reduction over a feature block reduces that block only).
    fn apply1(&self, x: &T) -> Result<T, String> {
        Ok(match self {
            Op::Relu => x.map(|v| v.max(0.0)),
            Op::Scale(s) => x.map(|v| v * s),
            Op::Silu => x.map(silu),
            Op::RmsNorm => {
                let mut o = x.clone();
                for i in 0..x.r {
                    let ms = (0..x.c).map(|j| x.at(i, j).powi(2)).sum::<f64>() / x.c.max(1) as f64;
                    let s = 1.0 / (ms + 1e-6).sqrt();
                    for j in 0..x.c {
                        o.set(i, j, x.at(i, j) * s);
                    }
                }
                o
            }
            Op::LayerNorm => {
                let mut o = x.clone();
                let c = x.c.max(1) as f64;
                for i in 0..x.r {
                    let m = (0..x.c).map(|j| x.at(i, j)).sum::<f64>() / c;
                    let var = (0..x.c).map(|j| (x.at(i, j) - m).powi(2)).sum::<f64>() / c;
                    let s = 1.0 / (var + 1e-5).sqrt();
                    for j in 0..x.c {
                        o.set(i, j, (x.at(i, j) - m) * s);
                    }
                }
                o
            }
            Op::Softmax => softmax_rows(x),
            other => return Err(format!("{other:?} is not a one-input pointwise/row op")),
        })
    }

    fn apply2(&self, a: &T, b: &T) -> Result<T, String> {
        match self {
            Op::Add => a.zip(b, |x, y| x + y),
            Op::Mul => a.zip(b, |x, y| x * y),
            other => Err(format!("{other:?} is not a binary pointwise op")),
        }
    }

    /// The linear's weight for input width `k`, and its bias (a `1 x n`
    /// row) if it has one.
    fn weight(&self, k: usize) -> Result<(T, Option<T>), String> {
        match self {
            Op::Linear { n, seed, bias } => Ok((
                weight(*seed, k, *n),
                bias.then(|| weight(seed.wrapping_add(7), 1, *n)),
            )),
            other => Err(format!("{other:?} is not a linear")),
        }
    }

    fn attn(&self, q: &T, k: &T, v: &T) -> Result<T, String> {
        let Op::Attn { dh, causal } = self else {
            return Err(format!("{self:?} is not attention"));
        };
        q.same_shape(k)?;
        q.same_shape(v)?;
        if !q.c.is_multiple_of(*dh) {
            return Err(format!("width {} is not whole heads of {dh}", q.c));
        }
        let mut heads = Vec::new();
        for h in 0..q.c / dh {
            let c = h * dh..(h + 1) * dh;
            let s = q
                .cols(c.clone())
                .matmul(&k.cols(c.clone()).transpose())?
                .map(|x| x / (*dh as f64).sqrt());
            let mut s = s;
            if *causal {
                for i in 0..s.r {
                    for j in i + 1..s.c {
                        s.set(i, j, f64::NEG_INFINITY);
                    }
                }
            }
            heads.push(softmax_rows(&s).matmul(&v.cols(c))?);
        }
        let refs: Vec<&T> = heads.iter().collect();
        if refs.is_empty() {
            return Ok(T::zeros(q.r, 0));
        }
        T::hcat(&refs)
    }

    fn matmul(&self, a: &T, b: &T) -> Result<T, String> {
        match self {
            Op::Matmul => a.matmul(b),
            other => Err(format!("{other:?} is not a matrix product")),
        }
    }

    /// The experts' output using hidden columns `hidden` of every expert
    /// (all of them: the op; a block: one shard's partial sum).
    fn moe(&self, x: &T, hidden: Option<Range<usize>>) -> Result<T, String> {
        let Op::Moe { experts, f, seed } = self else {
            return Err(format!("{self:?} is not a mixture of experts"));
        };
        let hidden = hidden.unwrap_or(0..*f);
        let k = x.c;
        let gsum: f64 = (1..=*experts).map(|e| e as f64).sum();
        let mut out = T::zeros(x.r, k);
        for e in 0..*experts {
            let s = seed.wrapping_mul(31).wrapping_add(e as u64 * 3);
            let w1 = weight(s + 1, k, *f).cols(hidden.clone());
            let w3 = weight(s + 2, k, *f).cols(hidden.clone());
            let w2 = weight(s + 3, *f, k).rows(hidden.clone());
            let h = x
                .matmul(&w1)?
                .map(silu)
                .zip(&x.matmul(&w3)?, |a, b| a * b)?;
            let y = h.matmul(&w2)?;
            let g = (e + 1) as f64 / gsum;
            out = out.zip(&y, |a, b| a + g * b)?;
        }
        Ok(out)
    }
}

/// `x + b` with the `1 x n` row `b` added to every row.
fn add_bias(x: T, b: Option<&T>) -> Result<T, String> {
    let Some(b) = b else { return Ok(x) };
    if b.c != x.c {
        return Err(format!("bias of {} on width {}", b.c, x.c));
    }
    let mut o = x;
    for i in 0..o.r {
        for j in 0..o.c {
            o.d[i * o.c + j] += b.d[j];
        }
    }
    Ok(o)
}

fn softmax_rows(x: &T) -> T {
    let mut o = x.clone();
    for i in 0..x.r {
        let m = (0..x.c).fold(f64::NEG_INFINITY, |m, j| m.max(x.at(i, j)));
        let s: f64 = (0..x.c).map(|j| (x.at(i, j) - m).exp()).sum();
        for j in 0..x.c {
            o.set(i, j, (x.at(i, j) - m).exp() / s);
        }
    }
    o
}

// ---------------------------------------------------------------- values

/// A value across the tensor-parallel shards.
#[derive(Clone, Debug)]
enum Val {
    /// Every shard holds the whole tensor.
    Whole(T),
    /// Shard `s` holds columns `ranges[s]` of the last dimension.
    Feat(Vec<(Range<usize>, T)>),
    /// Shard `s` holds row block `s`.
    Rows(Vec<T>),
    /// Shard `s` holds a partial sum; the value is their sum.
    Partial(Vec<T>),
}

impl Val {
    fn name(&self) -> &'static str {
        match self {
            Val::Whole(_) => "whole",
            Val::Feat(_) => "feature shards",
            Val::Rows(_) => "row shards",
            Val::Partial(_) => "partial sums",
        }
    }
    /// What each shard holds, as a comparable signature.
    fn layout(&self) -> String {
        match self {
            Val::Whole(t) => format!("whole {}x{}", t.r, t.c),
            Val::Feat(p) => format!(
                "feature blocks {:?}",
                p.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>()
            ),
            Val::Rows(p) => format!("row blocks {:?}", p.iter().map(|t| t.r).collect::<Vec<_>>()),
            // A partial sum's split is not observable: only its sum is.
            Val::Partial(p) => format!("partial sums {}x{}", p[0].r, p[0].c),
        }
    }
    fn whole(self) -> Result<T, String> {
        match self {
            Val::Whole(t) => Ok(t),
            v => Err(format!("needs a whole tensor, got {}", v.name())),
        }
    }
    fn feat(self) -> Result<Vec<(Range<usize>, T)>, String> {
        match self {
            Val::Feat(p) => Ok(p),
            v => Err(format!("needs feature shards, got {}", v.name())),
        }
    }
    fn rows(self) -> Result<Vec<T>, String> {
        match self {
            Val::Rows(p) => Ok(p),
            v => Err(format!("needs row shards, got {}", v.name())),
        }
    }
    fn partial(self) -> Result<Vec<T>, String> {
        match self {
            Val::Partial(p) => Ok(p),
            v => Err(format!("needs partial sums, got {}", v.name())),
        }
    }
    /// The whole tensor the value stands for.
    fn gathered(self) -> Result<T, String> {
        match self {
            Val::Whole(t) => Ok(t),
            Val::Feat(p) => gather_feat(p),
            Val::Rows(p) => T::vcat(&p),
            Val::Partial(p) => sum(p),
        }
    }
}

fn gather_feat(p: Vec<(Range<usize>, T)>) -> Result<T, String> {
    let mut next = 0;
    for (r, t) in &p {
        if r.start != next || r.len() != t.c {
            return Err(format!("feature blocks do not tile: {r:?} after {next}"));
        }
        next = r.end;
    }
    let refs: Vec<&T> = p.iter().map(|(_, t)| t).collect();
    T::hcat(&refs)
}

fn sum(p: Vec<T>) -> Result<T, String> {
    let mut it = p.into_iter();
    let mut acc = it.next().ok_or("no shards")?;
    for t in it {
        acc = acc.zip(&t, |a, b| a + b)?;
    }
    Ok(acc)
}

fn same_ranges(a: &[(Range<usize>, T)], b: &[(Range<usize>, T)]) -> Result<(), String> {
    let ra: Vec<_> = a.iter().map(|x| x.0.clone()).collect();
    let rb: Vec<_> = b.iter().map(|x| x.0.clone()).collect();
    if ra == rb {
        Ok(())
    } else {
        Err(format!("feature blocks {ra:?} and {rb:?} differ"))
    }
}

// ---------------------------------------------------------------- interpreter

/// Bindings of one instantiation.
struct Env {
    p: usize,
    ops: BTreeMap<Var, Op>,
    vals: BTreeMap<Var, Val>,
}

impl Env {
    fn op(&self, ast: &PatternAst<Shard>, id: Id) -> Result<&Op, String> {
        match &ast[id] {
            ENodeOrVar::Var(v) => self.ops.get(v).ok_or(format!("op {v} unbound")),
            ENodeOrVar::ENode(n) => Err(format!("op index {n:?} is not a variable")),
        }
    }
}

/// Runs a pattern's term under `env`.
fn eval(ast: &PatternAst<Shard>, id: Id, env: &Env) -> Result<Val, String> {
    let n = match &ast[id] {
        ENodeOrVar::Var(v) => {
            return env.vals.get(v).cloned().ok_or(format!("value {v} unbound"));
        }
        ENodeOrVar::ENode(n) => n,
    };
    let ev = |c: Id| eval(ast, c, env);
    let op = |c: Id| env.op(ast, c);
    let p = env.p;
    Ok(match n {
        Shard::Lin([i, x]) => {
            let x = ev(*x)?.whole()?;
            let (w, b) = op(*i)?.weight(x.c)?;
            Val::Whole(add_bias(x.matmul(&w)?, b.as_ref())?)
        }
        Shard::Attn([i, q, k, v]) => {
            Val::Whole(op(*i)?.attn(&ev(*q)?.whole()?, &ev(*k)?.whole()?, &ev(*v)?.whole()?)?)
        }
        Shard::Ew([i, x]) | Shard::Red([i, x]) => Val::Whole(op(*i)?.apply1(&ev(*x)?.whole()?)?),
        Shard::Ew2([i, a, b]) => Val::Whole(op(*i)?.apply2(&ev(*a)?.whole()?, &ev(*b)?.whole()?)?),
        Shard::Mm([i, a, b]) => Val::Whole(op(*i)?.matmul(&ev(*a)?.whole()?, &ev(*b)?.whole()?)?),
        Shard::Moe([i, x]) => Val::Whole(op(*i)?.moe(&ev(*x)?.whole()?, None)?),
        Shard::LinCol([i, x]) => {
            let x = ev(*x)?.whole()?;
            let (w, b) = op(*i)?.weight(x.c)?;
            // Each shard its output columns (and their bias entries).
            let parts = (0..p)
                .map(|s| {
                    let cols = block(w.c, p, s);
                    let bs = b.as_ref().map(|b| b.cols(cols.clone()));
                    let y = add_bias(x.matmul(&w.cols(cols.clone()))?, bs.as_ref())?;
                    Ok((cols, y))
                })
                .collect::<Result<_, String>>()?;
            Val::Feat(parts)
        }
        Shard::LinRow([i, y]) => {
            let y = ev(*y)?.feat()?;
            let k = y.last().map_or(0, |(r, _)| r.end);
            let (w, b) = op(*i)?.weight(k)?;
            // Each shard its input-row block times the matching weight
            // rows; the bias joins one shard's partial sum only (shard 0,
            // as runtime/src/exec/mod.rs adds it on rank 0).
            let parts = y
                .into_iter()
                .enumerate()
                .map(|(s, (r, t))| {
                    let bs = if s == 0 { b.as_ref() } else { None };
                    add_bias(t.matmul(&w.rows(r))?, bs)
                })
                .collect::<Result<_, String>>()?;
            Val::Partial(parts)
        }
        Shard::AttnHeads([i, q, k, v]) => {
            let o = op(*i)?;
            let Op::Attn { dh, .. } = o else {
                return Err(format!("{o:?} is not attention"));
            };
            let (q, k, v) = (ev(*q)?.feat()?, ev(*k)?.feat()?, ev(*v)?.feat()?);
            same_ranges(&q, &k)?;
            same_ranges(&q, &v)?;
            let mut parts = Vec::new();
            for ((r, qs), ((_, ks), (_, vs))) in q.iter().zip(k.iter().zip(v.iter())) {
                if !r.start.is_multiple_of(*dh) || !r.end.is_multiple_of(*dh) {
                    return Err(format!("feature block {r:?} splits a head of {dh}"));
                }
                parts.push((r.clone(), o.attn(qs, ks, vs)?));
            }
            Val::Feat(parts)
        }
        Shard::EwShard([i, y]) => {
            let o = op(*i)?;
            Val::Feat(
                ev(*y)?
                    .feat()?
                    .into_iter()
                    .map(|(r, t)| Ok((r, o.apply1(&t)?)))
                    .collect::<Result<_, String>>()?,
            )
        }
        Shard::Ew2Shard([i, a, b]) => {
            let o = op(*i)?;
            let (a, b) = (ev(*a)?.feat()?, ev(*b)?.feat()?);
            same_ranges(&a, &b)?;
            Val::Feat(
                a.into_iter()
                    .zip(b)
                    .map(|((r, x), (_, y))| Ok((r, o.apply2(&x, &y)?)))
                    .collect::<Result<_, String>>()?,
            )
        }
        Shard::MmCol([i, a, b]) => {
            let o = op(*i)?;
            let a = ev(*a)?.whole()?;
            Val::Feat(
                ev(*b)?
                    .feat()?
                    .into_iter()
                    .map(|(r, t)| Ok((r, o.matmul(&a, &t)?)))
                    .collect::<Result<_, String>>()?,
            )
        }
        Shard::MoeWidth([i, x]) => {
            let o = op(*i)?;
            let Op::Moe { f, .. } = o else {
                return Err(format!("{o:?} is not a mixture of experts"));
            };
            let x = ev(*x)?.whole()?;
            Val::Partial(
                (0..p)
                    .map(|s| o.moe(&x, Some(block(*f, p, s))))
                    .collect::<Result<_, String>>()?,
            )
        }
        Shard::EwSeq([i, y]) | Shard::RedSeq([i, y]) => {
            let o = op(*i)?;
            Val::Rows(
                ev(*y)?
                    .rows()?
                    .iter()
                    .map(|t| o.apply1(t))
                    .collect::<Result<_, String>>()?,
            )
        }
        Shard::Ew2Seq([i, a, b]) => {
            let o = op(*i)?;
            let (a, b) = (ev(*a)?.rows()?, ev(*b)?.rows()?);
            Val::Rows(
                a.iter()
                    .zip(&b)
                    .map(|(x, y)| o.apply2(x, y))
                    .collect::<Result<_, String>>()?,
            )
        }
        // Op i runs inside the kernel that produced x, on x's layout.
        Shard::Fused([i, x]) => {
            let o = op(*i)?;
            match ev(*x)? {
                Val::Whole(t) => Val::Whole(o.apply1(&t)?),
                Val::Feat(ps) => Val::Feat(
                    ps.into_iter()
                        .map(|(r, t)| Ok((r, o.apply1(&t)?)))
                        .collect::<Result<_, String>>()?,
                ),
                Val::Rows(ps) => Val::Rows(
                    ps.iter()
                        .map(|t| o.apply1(t))
                        .collect::<Result<_, String>>()?,
                ),
                Val::Partial(_) => return Err("fused op on partial sums".into()),
            }
        }
        Shard::Recompute([x]) => ev(*x)?,
        Shard::AllReduce([x]) => Val::Whole(sum(ev(*x)?.partial()?)?),
        Shard::ReduceScatter([x]) => {
            let t = sum(ev(*x)?.partial()?)?;
            Val::Rows((0..p).map(|s| t.rows(block(t.r, p, s))).collect())
        }
        Shard::AllGather([x]) => Val::Whole(T::vcat(&ev(*x)?.rows()?)?),
        Shard::GatherFeat([x]) => Val::Whole(gather_feat(ev(*x)?.feat()?)?),
        Shard::Scatter([x]) => {
            let t = ev(*x)?.whole()?;
            Val::Rows((0..p).map(|s| t.rows(block(t.r, p, s))).collect())
        }
        other => return Err(format!("the harness does not interpret {other:?}")),
    })
}

// ---------------------------------------------------------------- instantiation

/// The layout a pattern position needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Whole,
    Feat,
    Rows,
    Partial,
    Any,
}

/// The shape a value variable gets from the op consuming it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Activations `rows x width`.
    Act,
    /// Attention q, k, v: `rows x heads·dh`, feature blocks on head bounds.
    Qkv,
    /// Right operand of a product: `width x n`.
    Right,
}

/// A node's op kind (if its first child is an op index) and what each of
/// its value children needs (`None` role: the node keeps its input's shape).
type Sig = (Option<Kind>, Vec<(Need, Option<Role>)>);

fn signature(n: &Shard) -> Result<Sig, String> {
    use Need::*;
    use Role::*;
    let act = Some(Act);
    Ok(match n {
        Shard::Lin(_) => (Some(Kind::Linear), vec![(Whole, act)]),
        Shard::LinCol(_) => (Some(Kind::Linear), vec![(Whole, act)]),
        Shard::LinRow(_) => (Some(Kind::Linear), vec![(Feat, act)]),
        Shard::Attn(_) => (Some(Kind::Attn), vec![(Whole, Some(Qkv)); 3]),
        Shard::AttnHeads(_) => (Some(Kind::Attn), vec![(Feat, Some(Qkv)); 3]),
        Shard::Ew(_) => (Some(Kind::Unary), vec![(Whole, None)]),
        Shard::EwShard(_) => (Some(Kind::Unary), vec![(Feat, None)]),
        Shard::EwSeq(_) => (Some(Kind::Unary), vec![(Rows, None)]),
        Shard::Fused(_) => (Some(Kind::Unary), vec![(Any, None)]),
        Shard::Ew2(_) => (Some(Kind::Binary), vec![(Whole, None); 2]),
        Shard::Ew2Shard(_) => (Some(Kind::Binary), vec![(Feat, None); 2]),
        Shard::Ew2Seq(_) => (Some(Kind::Binary), vec![(Rows, None); 2]),
        Shard::Red(_) => (Some(Kind::Reduce), vec![(Whole, None)]),
        Shard::RedSeq(_) => (Some(Kind::Reduce), vec![(Rows, None)]),
        Shard::Mm(_) => (Some(Kind::Matmul), vec![(Whole, act), (Whole, Some(Right))]),
        Shard::MmCol(_) => (Some(Kind::Matmul), vec![(Whole, act), (Feat, Some(Right))]),
        Shard::Moe(_) | Shard::MoeWidth(_) => (Some(Kind::Moe), vec![(Whole, act)]),
        Shard::Recompute(_) => (None, vec![(Any, None)]),
        Shard::AllReduce(_) | Shard::ReduceScatter(_) => (None, vec![(Partial, None)]),
        Shard::AllGather(_) => (None, vec![(Rows, None)]),
        Shard::GatherFeat(_) => (None, vec![(Feat, None)]),
        Shard::Scatter(_) => (None, vec![(Whole, None)]),
        other => return Err(format!("no signature for {other:?}")),
    })
}

/// What the left-hand side needs of its variables.
#[derive(Default, Debug)]
struct Vars {
    ops: BTreeMap<Var, Kind>,
    vals: BTreeMap<Var, (Need, Role)>,
}

fn infer(
    ast: &PatternAst<Shard>,
    id: Id,
    need: Need,
    role: Role,
    vars: &mut Vars,
) -> Result<(), String> {
    match &ast[id] {
        ENodeOrVar::Var(v) => match vars.vals.get(v) {
            Some(&(n, r)) if (n == need || need == Need::Any) && r == role => Ok(()),
            Some(&(Need::Any, r)) if r == role => {
                vars.vals.insert(*v, (need, role));
                Ok(())
            }
            Some(prev) => Err(format!("{v} used as {prev:?} and as {:?}", (need, role))),
            None => {
                vars.vals.insert(*v, (need, role));
                Ok(())
            }
        },
        ENodeOrVar::ENode(n) => {
            let (kind, kids) = signature(n)?;
            let mut children = n.children().iter();
            if let Some(k) = kind {
                let c = children.next().ok_or("op node without an index")?;
                let ENodeOrVar::Var(v) = &ast[*c] else {
                    return Err(format!("op index of {n:?} is not a variable"));
                };
                if let Some(prev) = vars.ops.insert(*v, k)
                    && prev != k
                {
                    return Err(format!("{v} names a {prev:?} and a {k:?}"));
                }
            }
            let children: Vec<Id> = children.copied().collect();
            if children.len() != kids.len() {
                return Err(format!("{n:?}: arity"));
            }
            for (c, (nd, r)) in children.into_iter().zip(kids) {
                infer(ast, c, nd, r.unwrap_or(role), vars)?;
            }
            Ok(())
        }
    }
}

/// Sizes of one trial (odd and uneven on purpose).
#[derive(Clone, Copy, Debug)]
struct Dims {
    rows: usize,
    width: usize,
    n: usize,
    heads: usize,
    dh: usize,
    f: usize,
}

const DIMS: [Dims; 3] = [
    Dims {
        rows: 5,
        width: 7,
        n: 5,
        heads: 3,
        dh: 2,
        f: 5,
    },
    Dims {
        rows: 7,
        width: 5,
        n: 7,
        heads: 5,
        dh: 1,
        f: 7,
    },
    Dims {
        rows: 6,
        width: 9,
        n: 6,
        heads: 4,
        dh: 3,
        f: 6,
    },
];

const SHARDS: [usize; 3] = [2, 3, 4];

/// Concrete ops of a kind.
fn variants(k: Kind, d: Dims, seed: u64) -> Vec<Op> {
    match k {
        Kind::Linear => vec![
            Op::Linear {
                n: d.n,
                seed,
                bias: false,
            },
            Op::Linear {
                n: d.n,
                seed,
                bias: true,
            },
        ],
        Kind::Unary => vec![Op::Relu, Op::Scale(1.7), Op::Silu],
        Kind::Binary => vec![Op::Add, Op::Mul],
        Kind::Reduce => vec![Op::RmsNorm, Op::LayerNorm, Op::Softmax],
        Kind::Attn => vec![
            Op::Attn {
                dh: d.dh,
                causal: false,
            },
            Op::Attn {
                dh: d.dh,
                causal: true,
            },
        ],
        Kind::Matmul => vec![Op::Matmul],
        Kind::Moe => vec![Op::Moe {
            experts: 3,
            f: d.f,
            seed,
        }],
    }
}

/// A random value of the layout and shape a variable needs.
fn leaf(need: Need, role: Role, d: Dims, p: usize, rng: &mut Rng) -> Val {
    let (r, c, unit) = match role {
        Role::Act => (d.rows, d.width, 1),
        Role::Qkv => (d.rows, d.heads * d.dh, d.dh),
        Role::Right => (d.width, d.n, 1),
    };
    let t = T::rand(r, c, rng, 1.0);
    match need {
        Need::Whole | Need::Any => Val::Whole(t),
        Need::Feat => Val::Feat(
            (0..p)
                .map(|s| {
                    let b = block(c / unit, p, s);
                    let cols = b.start * unit..b.end * unit;
                    (cols.clone(), t.cols(cols))
                })
                .collect(),
        ),
        Need::Rows => Val::Rows((0..p).map(|s| t.rows(block(r, p, s))).collect()),
        Need::Partial => Val::Partial((0..p).map(|_| T::rand(r, c, rng, 1.0)).collect()),
    }
}

/// Runs both sides under `env`: they must both run, give the same layout
/// and, gathered, the same tensor within 1e-5 of the largest magnitude.
fn compare(lhs: &PatternAst<Shard>, rhs: &PatternAst<Shard>, env: &Env) -> Result<(), String> {
    let root = |a: &PatternAst<Shard>| Id::from(a.as_ref().len() - 1);
    let a = eval(lhs, root(lhs), env).map_err(|e| format!("left side fails ({e})"))?;
    let b = eval(rhs, root(rhs), env).map_err(|e| format!("right side fails ({e})"))?;
    if a.layout() != b.layout() {
        return Err(format!("layouts differ: {} vs {}", a.layout(), b.layout()));
    }
    let x = a.gathered().map_err(|e| format!("gather fails ({e})"))?;
    let y = b.gathered().map_err(|e| format!("gather fails ({e})"))?;
    x.same_shape(&y)?;
    let diff =
        x.d.iter()
            .zip(&y.d)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    let scale = x.max_abs().max(y.max_abs()).max(1e-12);
    if diff > 1e-5 * scale {
        return Err(format!(
            "values differ by {diff:.3e} (max |value| {scale:.3e})"
        ));
    }
    Ok(())
}

/// How one rule fared.
#[derive(Debug, Default)]
struct Outcome {
    runs: usize,
    failures: Vec<String>,
}

/// Runs `lhs` and `rhs` under every instantiation; any difference (a
/// layout, a value, or one side failing to run) is a failure.
fn check(lhs: &PatternAst<Shard>, rhs: &PatternAst<Shard>) -> Outcome {
    let mut out = Outcome::default();
    let root = |a: &PatternAst<Shard>| Id::from(a.as_ref().len() - 1);
    let mut vars = Vars::default();
    if let Err(e) = infer(lhs, root(lhs), Need::Any, Role::Act, &mut vars) {
        out.failures.push(format!("left-hand side: {e}"));
        return out;
    }
    let op_vars: Vec<(Var, Kind)> = vars.ops.iter().map(|(v, k)| (*v, *k)).collect();
    for (di, d) in DIMS.iter().enumerate() {
        // Every combination of concrete ops for the op variables.
        let choices: Vec<Vec<Op>> = op_vars
            .iter()
            .enumerate()
            .map(|(j, (_, k))| variants(*k, *d, 100 + j as u64))
            .collect();
        let total: usize = choices.iter().map(Vec::len).product();
        for combo in 0..total {
            let mut rest = combo;
            let mut ops = BTreeMap::new();
            for ((v, _), ch) in op_vars.iter().zip(&choices) {
                ops.insert(*v, ch[rest % ch.len()].clone());
                rest /= ch.len();
            }
            for &p in &SHARDS {
                let mut rng = Rng::new(7 + 1000 * di as u64 + 10 * combo as u64 + p as u64);
                let vals = vars
                    .vals
                    .iter()
                    .map(|(v, (need, role))| (*v, leaf(*need, *role, *d, p, &mut rng)))
                    .collect();
                let env = Env {
                    p,
                    ops: ops.clone(),
                    vals,
                };
                out.runs += 1;
                debug_assert!(op_vars.iter().all(|(v, k)| ops[v].kind() == *k));
                if let Err(e) = compare(lhs, rhs, &env) {
                    out.failures
                        .push(format!("{e} at p = {p}, {d:?}, ops {ops:?}"));
                }
            }
        }
    }
    out
}

fn sides(r: &Rewrite<Shard, ShardAnalysis>) -> (PatternAst<Shard>, PatternAst<Shard>) {
    let lhs = r
        .searcher
        .get_pattern_ast()
        .unwrap_or_else(|| panic!("{}: searcher is not a pattern", r.name))
        .clone();
    let rhs = r
        .applier
        .get_pattern_ast()
        .unwrap_or_else(|| panic!("{}: applier is not a pattern", r.name))
        .clone();
    (lhs, rhs)
}

type Family = (
    &'static str,
    Vec<Rewrite<Shard, ShardAnalysis>>,
    &'static [&'static str],
);

/// The families under test, with the rule names each must return.
fn families() -> Vec<Family> {
    vec![
        (
            "sharding",
            sharding::rules(),
            &[
                "column-parallel",
                "row-parallel",
                "head-parallel",
                "elementwise-on-features",
                "binary-on-features",
                "matmul-column",
                "expert-width",
            ],
        ),
        (
            "collectives",
            collectives::rules(),
            &[
                "allreduce-split",
                "allreduce-join",
                "sequence-parallel-unary",
                "sequence-parallel-binary",
                "sequence-parallel-reduction",
                "scatter-of-gather",
            ],
        ),
        (
            "fusion",
            fusion::rules(),
            &[
                "fuse-elementwise",
                "fuse-elementwise-seq",
                "fuse-elementwise-shard",
            ],
        ),
        (
            "recompute",
            fusion::recompute_rules(),
            &["recompute-attention", "recompute-attention-replicated"],
        ),
    ]
}

// ---------------------------------------------------------------- tests

#[test]
fn the_table_names_every_rule_of_every_family() {
    for (family, rules, table) in families() {
        let names: Vec<String> = rules.iter().map(|r| r.name.to_string()).collect();
        let table: Vec<String> = table.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            names, table,
            "{family}: rules and the harness's table differ; a new rule needs a row here (and an interpreter case if it adds a node)"
        );
    }
}

#[test]
fn every_rule_holds_by_execution() {
    let mut bad = Vec::new();
    for (family, rules, _) in families() {
        for r in &rules {
            let (lhs, rhs) = sides(r);
            let o = check(&lhs, &rhs);
            eprintln!(
                "{family}/{}: {} instantiations, {} failures",
                r.name,
                o.runs,
                o.failures.len()
            );
            assert!(
                o.runs >= SHARDS.len() * DIMS.len(),
                "{}: too few runs",
                r.name
            );
            if let Some(f) = o.failures.first() {
                bad.push(format!(
                    "{family}/{}: {lhs} => {rhs}: {f} ({} of {} fail)",
                    r.name,
                    o.failures.len(),
                    o.runs
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "rules unsound by execution:\n{}",
        bad.join("\n")
    );
}

fn check_text(lhs: &str, rhs: &str) -> Outcome {
    let l: Pattern<Shard> = lhs.parse().expect("pattern");
    let r: Pattern<Shard> = rhs.parse().expect("pattern");
    check(&l.ast, &r.ast)
}

#[test]
fn the_harness_catches_a_norm_on_feature_shards() {
    let o = check_text(
        "(red ?i (gather-feat ?y))",
        "(gather-feat (ew-shard ?i ?y))",
    );
    eprintln!(
        "wrong rule: {} of {} instantiations fail; first: {:?}",
        o.failures.len(),
        o.runs,
        o.failures.first()
    );
    assert_eq!(o.failures.len(), o.runs, "every instantiation must differ");
    assert!(
        o.failures.iter().all(|f| f.starts_with("values differ")),
        "{:?}",
        o.failures
    );
}

#[test]
fn the_harness_catches_wrong_layouts_and_ill_typed_sides() {
    // An all-reduce is not a reduce-scatter: whole vs row shards.
    let o = check_text("(allreduce ?x)", "(reduce-scatter ?x)");
    assert_eq!(o.failures.len(), o.runs);
    assert!(
        o.failures[0].starts_with("layouts differ"),
        "{:?}",
        o.failures
    );
    // A sound detour passes: column blocks of a linear, gathered.
    let o = check_text(
        "(lin ?i (gather-feat ?y))",
        "(gather-feat (lin-col ?i (gather-feat ?y)))",
    );
    assert_eq!(o.failures.len(), 0, "{:?}", o.failures);
    // A row-parallel linear's partial sums are not the whole output.
    let o = check_text("(lin ?i (gather-feat ?y))", "(lin-row ?i ?y)");
    assert_eq!(o.failures.len(), o.runs);
    // A pointwise op may not run on partial sums (relu of a sum is not
    // the sum of relus): the interpreter refuses it.
    let o = check_text("(ew ?i (allreduce ?x))", "(allreduce (fused ?i ?x))");
    assert_eq!(o.failures.len(), o.runs);
}

#[test]
fn column_then_head_parallel_needs_whole_heads_per_shard() {
    // Two sound rules composed: column-parallel q, k, v feeding
    // head-parallel attention. `gather-feat` does not say where the blocks
    // fall, so the composition holds only when the column blocks of the
    // projections fall on head bounds, i.e. when the degree divides the
    // heads (which `point.rs` requires of tp).
    let lhs = "(attn ?a (lin ?q ?x) (lin ?k ?x) (lin ?v ?x))";
    let rhs = "(gather-feat (attn-heads ?a (lin-col ?q ?x) (lin-col ?k ?x) (lin-col ?v ?x)))";
    let l: Pattern<Shard> = lhs.parse().expect("pattern");
    let r: Pattern<Shard> = rhs.parse().expect("pattern");
    let (heads, dh) = (6, 2);
    for p in SHARDS {
        let mut rng = Rng::new(p as u64);
        let var = |s: &str| s.parse::<Var>().expect("var");
        let mut ops = BTreeMap::new();
        ops.insert(var("?a"), Op::Attn { dh, causal: true });
        for (j, v) in ["?q", "?k", "?v"].iter().enumerate() {
            ops.insert(
                var(v),
                Op::Linear {
                    n: heads * dh,
                    seed: 50 + j as u64,
                    bias: true,
                },
            );
        }
        let mut vals = BTreeMap::new();
        vals.insert(var("?x"), Val::Whole(T::rand(5, 7, &mut rng, 1.0)));
        let got = compare(&l.ast, &r.ast, &Env { p, ops, vals });
        if heads.is_multiple_of(p) {
            assert!(got.is_ok(), "p = {p}: {got:?}");
        } else {
            let e = got.expect_err("a head split across shards");
            assert!(e.contains("splits a head"), "p = {p}: {e}");
        }
    }
}

#[test]
fn blocks_tile_unevenly_like_the_runtime() {
    assert_eq!(block(5, 4, 3), 3..5);
    assert_eq!(block(7, 3, 0), 0..2);
    for len in 0..12 {
        for parts in 1..5 {
            let mut next = 0;
            for i in 0..parts {
                let b = block(len, parts, i);
                assert_eq!(b.start, next);
                next = b.end;
            }
            assert_eq!(next, len);
        }
    }
}
