//! The sharded backward pass's own local gradient arithmetic for the ops
//! whose backward does not run on JIT kernels: attention, interact,
//! concat, embedding-bag table scatter and the SwiGLU gate of the MoE
//! experts.
//!
//! Why a module of its own: [`super::grad`] is checked against
//! [`crate::backward`], so a gradient computed by calling the reference
//! would be compared with itself and a bug in it could never show. Every
//! formula here is derived afresh, and on purpose in a different shape
//! from the reference's loops (which work per query row, per pair, per
//! sample): attention is blocked per (sample, head) as matrices, with
//! `D = rowsum(dO ∘ O)` (FlashAttention's form) rather than
//! `rowsum(P ∘ dP)`; interact goes back through the Gram matrix
//! `Z = V Vᵀ` as `dV = (G + Gᵀ) V`; concat is slicing of each output row;
//! the embedding bag first sums the pooled gradients per start row and
//! then spreads each sum over its pooling window. The two sides thus agree
//! only if both are right. Only shape and id helpers are shared (the id
//! clamp is the forward's own, [`crate::reference::clamp_id`], which the
//! JIT gather uses too); the source test at the end of this file keeps it
//! that way.

use crate::jit::AttentionSpec;
use crate::reference::clamp_id;

/// A matrix stored inside a larger row-major buffer: row `i` starts at
/// `base + i * stride` and has `width` elements (one head of a
/// `[rows, heads * head_dim]` tensor).
#[derive(Clone, Copy)]
struct View {
    base: usize,
    stride: usize,
    width: usize,
}

impl View {
    fn row<'a>(&self, data: &'a [f32], i: usize) -> &'a [f32] {
        &data[self.base + i * self.stride..][..self.width]
    }
    fn row_mut<'a>(&self, data: &'a mut [f32], i: usize) -> &'a mut [f32] {
        &mut data[self.base + i * self.stride..][..self.width]
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `dst += s * src`.
fn axpy(dst: &mut [f32], s: f32, src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(d, x)| *d += s * x);
}

/// How many keys query row `i` of `sq` sees out of `skv`: all of them, or
/// under a causal mask those up to its own position when the queries are
/// the last `sq` positions of the `skv` keys.
fn visible_keys(i: usize, sq: usize, skv: usize, causal: bool) -> usize {
    if causal {
        (i + 1 + skv).saturating_sub(sq).min(skv)
    } else {
        skv
    }
}

/// Local attention gradients `(dq, dk, dv)` for the heads of `spec` over
/// `b` samples: `q`, `dout` `[b, seq_q, heads * hd]`, `k`, `v`
/// `[b, seq_kv, kv_heads * hd]` (local heads). Local query head `h` is
/// global head `q_head_offset + h` and reads local key/value head
/// `(q_head_offset + h) / group - kv_head_offset`, so a key/value head
/// collects the gradients of every query head of its group.
pub fn attention(
    spec: &AttentionSpec,
    b: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let hd = spec.head_dim;
    let (sq, skv) = (spec.seq_q, spec.seq_kv);
    let (qw, kw) = (spec.heads * hd, spec.kv_heads * hd);
    let mut dq = vec![0.0f32; q.len()];
    let mut dk = vec![0.0f32; k.len()];
    let mut dv = vec![0.0f32; v.len()];
    for s in 0..b {
        for h in 0..spec.heads {
            let g = (spec.q_head_offset + h) / spec.group.max(1) - spec.kv_head_offset;
            let qv = View {
                base: s * sq * qw + h * hd,
                stride: qw,
                width: hd,
            };
            let kv = View {
                base: s * skv * kw + g * hd,
                stride: kw,
                width: hd,
            };
            let head = Head {
                q,
                k,
                v,
                dout,
                qv,
                kv,
                dims: [sq, skv],
                causal: spec.causal,
            };
            head.backward(&mut dq, &mut dk, &mut dv);
        }
    }
    (dq, dk, dv)
}

/// One (sample, head) block of attention: `Q [sq, hd]`, `K`, `V
/// [skv, hd]`, `dO [sq, hd]`, read through views.
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    dout: &'a [f32],
    qv: View,
    kv: View,
    dims: [usize; 2],
    causal: bool,
}

impl Head<'_> {
    /// The probabilities `P = softmax(mask(Q Kᵀ · scale))`, `[sq, skv]`
    /// (masked entries 0; a row that sees no key is all 0).
    fn probabilities(&self, scale: f32) -> Vec<f32> {
        let [sq, skv] = self.dims;
        let mut p = vec![0.0f32; sq * skv];
        for i in 0..sq {
            let n = visible_keys(i, sq, skv, self.causal);
            let qi = self.qv.row(self.q, i);
            let row = &mut p[i * skv..i * skv + n];
            for (j, x) in row.iter_mut().enumerate() {
                *x = dot(qi, self.kv.row(self.k, j)) * scale;
            }
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            row.iter_mut().for_each(|x| *x = (*x - m).exp());
            let z: f32 = row.iter().sum();
            row.iter_mut().for_each(|x| *x /= z);
        }
        p
    }

    /// Adds this head's `dQ`, `dK`, `dV` into the full gradient buffers:
    /// `O = P V`, `D = rowsum(dO ∘ O)`, `dP = dO Vᵀ`,
    /// `dS = P ∘ (dP − D)`, `dQ = dS K · scale`, `dK = dSᵀ Q · scale`,
    /// `dV = Pᵀ dO`.
    fn backward(&self, dq: &mut [f32], dk: &mut [f32], dv: &mut [f32]) {
        let [sq, skv] = self.dims;
        let hd = self.qv.width;
        let scale = 1.0 / (hd as f32).sqrt();
        let p = self.probabilities(scale);
        let mut o = vec![0.0f32; hd];
        let mut ds = vec![0.0f32; skv];
        for i in 0..sq {
            let n = visible_keys(i, sq, skv, self.causal);
            let pi = &p[i * skv..i * skv + n];
            let doi = self.qv.row(self.dout, i);
            o.fill(0.0);
            for (j, pij) in pi.iter().enumerate() {
                axpy(&mut o, *pij, self.kv.row(self.v, j));
            }
            let d_i = dot(doi, &o);
            for (j, pij) in pi.iter().enumerate() {
                let dp = dot(doi, self.kv.row(self.v, j));
                ds[j] = pij * (dp - d_i);
                axpy(self.kv.row_mut(dv, j), *pij, doi);
            }
            let qi = self.qv.row(self.q, i);
            for (j, dsij) in ds[..n].iter().enumerate() {
                axpy(self.qv.row_mut(dq, i), dsij * scale, self.kv.row(self.k, j));
                axpy(self.kv.row_mut(dk, j), dsij * scale, qi);
            }
        }
    }
}

/// The gradients `(d dense, d sparse)` of DLRM's dot interaction over
/// `dense [b, d]` and `sparse [b, n, d]` given `dout [b, d + m(m-1)/2]`
/// (`m = n + 1`). Per sample, with `V [m, d]` the stacked vectors, the
/// output is `V_0` followed by the strict upper triangle (row-major) of
/// the Gram matrix `Z = V Vᵀ`. So with `G` the output gradient placed on
/// that triangle, `dV = (G + Gᵀ) V`, plus the pass-through into `V_0`.
pub fn interact(
    dense: &[f32],
    sparse: &[f32],
    dout: &[f32],
    b: usize,
    n: usize,
    d: usize,
) -> (Vec<f32>, Vec<f32>) {
    let m = n + 1;
    let width = d + m * (m - 1) / 2;
    let mut dd = vec![0.0f32; dense.len()];
    let mut dsp = vec![0.0f32; sparse.len()];
    let mut sym = vec![0.0f32; m * m];
    for s in 0..b {
        let g = &dout[s * width..(s + 1) * width];
        // The symmetric `G + Gᵀ` (zero diagonal: no self products).
        sym.fill(0.0);
        let mut pairs = g[d..].iter();
        for i in 0..m {
            for j in i + 1..m {
                let x = *pairs.next().unwrap_or(&0.0);
                sym[i * m + j] = x;
                sym[j * m + i] = x;
            }
        }
        let vec_of = |r: usize| -> &[f32] {
            if r == 0 {
                &dense[s * d..(s + 1) * d]
            } else {
                &sparse[(s * n + r - 1) * d..(s * n + r) * d]
            }
        };
        for r in 0..m {
            let out: &mut [f32] = if r == 0 {
                &mut dd[s * d..(s + 1) * d]
            } else {
                &mut dsp[(s * n + r - 1) * d..(s * n + r) * d]
            };
            if r == 0 {
                out.copy_from_slice(&g[..d]);
            }
            for c in 0..m {
                let w = sym[r * m + c];
                if w != 0.0 {
                    axpy(out, w, vec_of(c));
                }
            }
        }
    }
    (dd, dsp)
}

/// The gradients of a concatenation along `axis` of inputs of shapes
/// `shapes`: each output row (all axes before `axis` flattened) is the
/// inputs' rows side by side, so each input's gradient is its column
/// range of every row of `dy`.
pub fn concat(dy: &[f32], shapes: &[&[usize]], axis: usize) -> Vec<Vec<f32>> {
    let widths: Vec<usize> = shapes
        .iter()
        .map(|s| s.get(axis..).map_or(1, |t| t.iter().product()))
        .collect();
    let total: usize = widths.iter().sum();
    let mut starts = Vec::with_capacity(widths.len());
    let mut at = 0;
    for w in &widths {
        starts.push(at);
        at += w;
    }
    let rows = dy.len().checked_div(total).unwrap_or(0);
    widths
        .iter()
        .zip(&starts)
        .map(|(w, st)| {
            let mut g = Vec::with_capacity(rows * w);
            for row in dy.chunks_exact(total.max(1)).take(rows) {
                g.extend_from_slice(&row[*st..st + w]);
            }
            g
        })
        .collect()
}

/// Adds the gradient of one embedding-bag table, `[rows, dim]`, into `dt`:
/// `ids [samples, stride]` (the table reads column `col`) and `dpooled
/// [samples, stride, dim]`. The pooled vector of id `i` is the sum of rows
/// `i, i+1, .., i+pooling-1` (mod `rows`), so each of those rows receives
/// the pooled gradient once per occurrence. The pooled gradients are first
/// summed per start row, then each sum is added over its window.
pub fn embedding_bag_scatter(
    dt: &mut [f32],
    ids: &[f32],
    dpooled: &[f32],
    (stride, col): (usize, usize),
    rows: u64,
    pooling: usize,
    dim: usize,
) {
    let r = rows as usize;
    if r == 0 || stride == 0 || dim == 0 {
        return;
    }
    let mut per_start = vec![0.0f32; r * dim];
    let mut hit = vec![false; r];
    for (s, sample) in ids.chunks_exact(stride).enumerate() {
        let id = clamp_id(sample[col], rows);
        let g = &dpooled[(s * stride + col) * dim..][..dim];
        axpy(&mut per_start[id * dim..(id + 1) * dim], 1.0, g);
        hit[id] = true;
    }
    for id in (0..r).filter(|i| hit[*i]) {
        let g = &per_start[id * dim..(id + 1) * dim];
        for p in 0..pooling {
            let row = (id + p) % r;
            axpy(&mut dt[row * dim..(row + 1) * dim], 1.0, g);
        }
    }
}

/// The SwiGLU gate `h = silu(a) ∘ b` backward: `(da, db)` given `dh`,
/// with `silu(a) = a σ(a)` and `silu'(a) = σ(a) (1 + a (1 − σ(a)))`.
pub fn swiglu_gate(dh: &[f32], a: &[f32], b: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut da = Vec::with_capacity(dh.len());
    let mut db = Vec::with_capacity(dh.len());
    for ((g, a), b) in dh.iter().zip(a).zip(b) {
        let sig = 1.0 / (1.0 + (-a).exp());
        da.push(g * b * sig * (1.0 + a * (1.0 - sig)));
        db.push(g * a * sig);
    }
    (da, db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use std::ops::Range;

    /// Items of the reference modules the sharded backward may name: the
    /// gradient map's types (what is compared) and the id clamp (the
    /// forward's id semantics, shared with the JIT gather). Anything else
    /// from `crate::backward` or `crate::reference` would be the
    /// reference's arithmetic checking itself.
    const ALLOWED: &[&str] = &["Gradients", "ParamKey", "clamp_id"];
    const MODULES: &[&str] = &["backward", "reference"];

    /// The identifiers and punctuation of Rust source, without comments,
    /// string and char literals (`::` is one token).
    fn tokens(src: &str) -> Vec<String> {
        let c: Vec<char> = src.chars().collect();
        let (mut out, mut i) = (Vec::new(), 0);
        while i < c.len() {
            let ch = c[i];
            if ch == '/' && c.get(i + 1) == Some(&'/') {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            } else if ch == '/' && c.get(i + 1) == Some(&'*') {
                i += 2;
                while i + 1 < c.len() && !(c[i] == '*' && c[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            } else if ch == '"' {
                i += 1;
                while i < c.len() && c[i] != '"' {
                    i += if c[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            } else if ch == '\'' && c.get(i + 1) == Some(&'\\') {
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if ch == '\'' && c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else if ch.is_alphanumeric() || ch == '_' {
                let s = i;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
                out.push(c[s..i].iter().collect());
            } else if ch == ':' && c.get(i + 1) == Some(&':') {
                out.push("::".into());
                i += 2;
            } else {
                if !ch.is_whitespace() {
                    out.push(ch.to_string());
                }
                i += 1;
            }
        }
        out
    }

    /// The paths a `use` tree imports (`t[*i..]` up to its end): the full
    /// path, whether it is a glob, and its alias.
    fn use_tree(
        t: &[String],
        i: &mut usize,
        prefix: &[String],
        out: &mut Vec<(Vec<String>, bool)>,
    ) {
        let mut path = prefix.to_vec();
        loop {
            match t.get(*i).map(String::as_str) {
                Some("{") => {
                    *i += 1;
                    while !matches!(t.get(*i).map(String::as_str), Some("}") | None) {
                        use_tree(t, i, &path, out);
                        if t.get(*i).map(String::as_str) == Some(",") {
                            *i += 1;
                        }
                    }
                    *i += 1;
                    return;
                }
                Some("*") => {
                    *i += 1;
                    out.push((path, true));
                    return;
                }
                Some("::") => *i += 1,
                Some(s) if s.chars().all(|c| c.is_alphanumeric() || c == '_') && s != "as" => {
                    path.push(s.to_string());
                    *i += 1;
                }
                _ => break,
            }
        }
        if t.get(*i).map(String::as_str) == Some("as") {
            path.push("as".into());
            path.extend(t.get(*i + 1).cloned());
            *i += 2;
        }
        out.push((path, false));
    }

    /// Every way `src` reaches into the reference modules for something
    /// not in [`ALLOWED`]: imports (of a module, a glob, an alias or a
    /// disallowed item) and paths `backward::x` / `reference::x` (or
    /// through a module alias an import made).
    fn violations(src: &str) -> Vec<String> {
        let t = tokens(src);
        let (mut bad, mut modules) = (
            Vec::new(),
            MODULES.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
        );
        let mut code = Vec::new();
        let mut i = 0;
        while i < t.len() {
            if t[i] != "use" {
                code.push(i);
                i += 1;
                continue;
            }
            i += 1;
            let mut paths = Vec::new();
            use_tree(&t, &mut i, &[], &mut paths);
            for (p, glob) in paths {
                let Some(m) = p.iter().position(|s| MODULES.contains(&s.as_str())) else {
                    continue;
                };
                let item = p.get(m + 1).map(String::as_str);
                let alias = p.iter().position(|s| s == "as");
                if alias.is_some_and(|a| a <= m + 2 && !item.is_some_and(|x| ALLOWED.contains(&x)))
                {
                    modules.extend(p.last().cloned());
                }
                if glob
                    || alias.is_some()
                    || p.len() != m + 2
                    || !item.is_some_and(|x| ALLOWED.contains(&x))
                {
                    bad.push(format!("use {}", p.join("::")));
                }
            }
        }
        for i in code {
            if modules.contains(&t[i]) && t.get(i + 1).map(String::as_str) == Some("::") {
                let item = t.get(i + 2).map_or("", String::as_str);
                if !ALLOWED.contains(&item) {
                    bad.push(format!("{}::{item}", t[i]));
                }
            }
        }
        bad
    }

    /// This file up to its tests (which may use the reference's forward
    /// as the finite-difference oracle).
    fn ops_source() -> &'static str {
        let src = include_str!("grad_ops.rs");
        let end = src
            .find("\n#[cfg(test)]\nmod tests")
            .expect("the test module marker");
        &src[..end]
    }

    #[test]
    fn the_sharded_backward_calls_no_reference_gradient_arithmetic() {
        let grad = include_str!("grad.rs");
        assert_eq!(violations(grad), Vec::<String>::new(), "grad.rs");
        assert_eq!(
            violations(ops_source()),
            Vec::<String>::new(),
            "grad_ops.rs"
        );
        for f in [
            "attention",
            "interact",
            "concat",
            "embedding_bag_scatter",
            "swiglu_gate",
        ] {
            assert!(
                grad.contains(&format!("grad_ops::{f}(")),
                "grad.rs calls grad_ops::{f}"
            );
        }
    }

    #[test]
    fn the_source_check_catches_reference_calls() {
        for src in [
            "use crate::backward::{self as refgrad, Gradients};",
            "use crate::backward::{Gradients, ParamKey, attention_grad};",
            "use crate::reference as r;",
            "use crate::reference;",
            "use crate::backward::*;",
            "use crate::{graph, backward::interact_grad};",
            "use crate::backward::concat_grad as cg;",
            "fn f() { crate::backward::embedding_bag_table_grad_into(); }",
            "fn f() { let x = super::super::reference::softmax(&y, 3); }",
            "fn f() { refgrad(); backward::activation_grad(a, x) }",
        ] {
            assert!(!violations(src).is_empty(), "{src}");
        }
        // The call through the alias is named too, not only the import.
        let aliased = "use crate::backward::{self as refgrad, Gradients};\n\
                       fn f() { refgrad::attention_grad(); }";
        assert_eq!(violations(aliased).len(), 2, "{:?}", violations(aliased));
        let fine = "use crate::backward::{Gradients, ParamKey};\n\
                    use crate::reference::clamp_id; // backward::attention_grad\n\
                    fn f() { let s = \"reference::softmax\"; self.backward(); let c = '\"'; }";
        assert_eq!(violations(fine), Vec::<String>::new());
    }

    /// Deterministic values in `[-1, 1)`.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The central-difference gradient of `Σ w ∘ f(x)` w.r.t. `x`.
    fn numeric(x: &[f32], w: &[f32], f: impl Fn(&[f32]) -> Vec<f32>) -> Vec<f32> {
        let eps = 1e-2f32;
        let loss = |x: &[f32]| -> f64 {
            f(x).iter()
                .zip(w)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum()
        };
        (0..x.len())
            .map(|i| {
                let (mut up, mut down) = (x.to_vec(), x.to_vec());
                up[i] += eps;
                down[i] -= eps;
                ((loss(&up) - loss(&down)) / (2.0 * f64::from(eps))) as f32
            })
            .collect()
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= 2e-3 * scale, "{what}[{i}]: {a} vs {b}");
        }
    }

    /// Causal GQA attention with fewer queries than keys, all heads
    /// local, against finite differences of the reference forward; then
    /// a shard of the query heads (offsets) against the whole.
    #[test]
    fn attention_gradients_match_finite_differences() {
        let (b, sq, skv, heads, kvh, hd) = (2, 3, 5, 4, 2, 3);
        let q = values(b * sq * heads * hd, 1);
        let k = values(b * skv * kvh * hd, 2);
        let v = values(b * skv * kvh * hd, 3);
        let w = values(b * sq * heads * hd, 4);
        let spec = AttentionSpec {
            heads,
            head_dim: hd,
            seq_q: sq,
            seq_kv: skv,
            group: heads / kvh,
            q_head_offset: 0,
            kv_head_offset: 0,
            kv_heads: kvh,
            causal: true,
        };
        let (dq, dk, dv) = attention(&spec, b, &q, &k, &v, &w);
        let fwd = |q: &[f32], k: &[f32], v: &[f32]| {
            reference::attention(q, k, v, b, sq, skv, heads, kvh, hd, true)
        };
        close(&dq, &numeric(&q, &w, |x| fwd(x, &k, &v)), "dq");
        close(&dk, &numeric(&k, &w, |x| fwd(&q, x, &v)), "dk");
        close(&dv, &numeric(&v, &w, |x| fwd(&q, &k, x)), "dv");
        // Query heads 2 and 3 (key/value head 1) alone.
        let cols = |x: &[f32], width: usize, r: Range<usize>| -> Vec<f32> {
            x.chunks(width)
                .flat_map(|row| row[r.clone()].to_vec())
                .collect()
        };
        let shard = AttentionSpec {
            heads: 2,
            q_head_offset: 2,
            kv_head_offset: 1,
            kv_heads: 1,
            ..spec
        };
        let (qs, ks) = (2 * hd..4 * hd, hd..2 * hd);
        let (sdq, sdk, sdv) = attention(
            &shard,
            b,
            &cols(&q, heads * hd, qs.clone()),
            &cols(&k, kvh * hd, ks.clone()),
            &cols(&v, kvh * hd, ks.clone()),
            &cols(&w, heads * hd, qs.clone()),
        );
        close(&sdq, &cols(&dq, heads * hd, qs), "shard dq");
        close(&sdk, &cols(&dk, kvh * hd, ks.clone()), "shard dk");
        close(&sdv, &cols(&dv, kvh * hd, ks), "shard dv");
    }

    #[test]
    fn interact_concat_and_bag_gradients_match_finite_differences() {
        let (b, n, d) = (2, 3, 4);
        let dense = values(b * d, 5);
        let sparse = values(b * n * d, 6);
        let w = values(b * (d + (n + 1) * n / 2), 7);
        let (dd, ds) = interact(&dense, &sparse, &w, b, n, d);
        let want_dd = numeric(&dense, &w, |x| reference::interact(x, &sparse, b, n, d));
        let want_ds = numeric(&sparse, &w, |x| reference::interact(&dense, x, b, n, d));
        close(&dd, &want_dd, "d dense");
        close(&ds, &want_ds, "d sparse");

        let shapes: [&[usize]; 3] = [&[2, 3, 1], &[2, 3, 2], &[2, 3, 3]];
        let xs: Vec<Vec<f32>> = (0..3).map(|i| values(6 * (i + 1), 8 + i as u64)).collect();
        let w = values(36, 11);
        let got = concat(&w, &shapes, 2);
        for i in 0..3 {
            let f = |x: &[f32]| {
                let mut ins: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
                ins[i] = x;
                reference::concat(&ins, &shapes, 2, &[2, 3, 6])
            };
            close(&got[i], &numeric(&xs[i], &w, f), "concat");
        }

        // Two tables of 5 rows, pooling 3 (wrapping) and 1; repeated and
        // out-of-range ids.
        let tables = [(5u64, 3usize), (5, 1)];
        let ids = [4.0, 0.0, 4.0, 9.0, 1.0, -1.0];
        let dpooled = values(3 * 2 * d, 12);
        for (col, (rows, pooling)) in tables.iter().enumerate() {
            let mut dt = vec![0.0; *rows as usize * d];
            embedding_bag_scatter(&mut dt, &ids, &dpooled, (2, col), *rows, *pooling, d);
            let table = values(*rows as usize * d, 13);
            let f = |t: &[f32]| {
                let spec: Vec<_> = tables
                    .iter()
                    .map(|(r, p)| gantry_lang::program::EmbeddingTable {
                        rows: *r,
                        dim: d as u64,
                        pooling: *p as u64,
                        name: String::new(),
                        dtype: gantry_lang::program::DType::F32,
                    })
                    .collect();
                let mut ws = vec![vec![0.0; 5 * d]; 2];
                ws[col] = t.to_vec();
                reference::embedding_bag(&ids, &ws, &spec)
            };
            close(&dt, &numeric(&table, &dpooled, f), "embedding bag");
        }
    }

    #[test]
    fn swiglu_gate_matches_finite_differences() {
        let (a, b, dh) = (values(16, 14), values(16, 15), values(16, 16));
        let (da, db) = swiglu_gate(&dh, &a, &b);
        let h = |a: &[f32], b: &[f32]| -> Vec<f32> {
            a.iter()
                .zip(b)
                .map(|(a, b)| a / (1.0 + (-a).exp()) * b)
                .collect()
        };
        close(&da, &numeric(&a, &dh, |x| h(x, &b)), "da");
        close(&db, &numeric(&b, &dh, |x| h(&a, x)), "db");
    }
}
