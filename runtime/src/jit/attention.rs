//! Attention of one device's heads: per query row, blocks of
//! [`KEY_BLOCK`] keys with an online maximum and sum (grouped query heads,
//! optional causal mask).
//!
//! Shaped so: the generator is split by loop level (row setup, one key
//! block's scores and online softmax, the value accumulation), each a
//! function of the values the enclosing loops fix; the block of scores
//! lives in a caller-owned scratch buffer of [`KEY_BLOCK`] floats.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{InstBuilder, Type, Value, types};
use cranelift_frontend::Variable;

use super::codegen::{Gen, V4};
use super::context::{Jit, buffer_err, check};
use super::spec::{AttentionSpec, KernelSpec};
use crate::error::RuntimeError;

/// Keys per block of the attention kernel's online softmax.
pub const KEY_BLOCK: usize = 64;

impl Jit {
    /// Attention of one device's heads: `q [batch, seq_q, heads*hd]`,
    /// `k`, `v [batch, seq_kv, kv_heads*hd]`, `out` like `q`.
    pub fn attention(
        &mut self,
        spec: &AttentionSpec,
        batch: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let s = KernelSpec::Attention(spec.clone());
        let nm = s.name();
        let qn = batch * spec.seq_q * spec.heads * spec.head_dim;
        let kn = batch * spec.seq_kv * spec.kv_heads * spec.head_dim;
        check(&nm, "q", qn, q.len())?;
        check(&nm, "k", kn, k.len())?;
        check(&nm, "v", kn, v.len())?;
        check(&nm, "out", qn, out.len())?;
        // Every local query head must read a local key/value head.
        for h in 0..spec.heads {
            let g = (h + spec.q_head_offset) / spec.group.max(1);
            if spec.group == 0
                || g < spec.kv_head_offset
                || g - spec.kv_head_offset >= spec.kv_heads
            {
                return Err(buffer_err(
                    &nm,
                    "key/value heads",
                    g + 1,
                    spec.kv_head_offset + spec.kv_heads,
                ));
            }
        }
        if qn == 0 {
            return Ok(());
        }
        if self.scratch.len() < KEY_BLOCK {
            self.scratch.resize(KEY_BLOCK, 0.0);
        }
        let scratch = self.scratch.as_mut_ptr();
        self.call(
            &s,
            &[
                q.as_ptr() as *mut f32,
                k.as_ptr() as *mut f32,
                v.as_ptr() as *mut f32,
                out.as_mut_ptr(),
                scratch,
            ],
            &[batch as i64],
        )
    }
}

/// What one query row's code needs from the enclosing loops.
#[derive(Clone, Copy)]
struct QueryRow {
    /// The query row, its output row (`head_dim` floats each).
    qrow: Value,
    orow: Value,
    /// Row 0 of this head's keys and values (rows `kv_heads * head_dim` apart).
    kbase: Value,
    vbase: Value,
    /// [`KEY_BLOCK`] floats: one block's scores, then its probabilities.
    scratch: Value,
    /// Keys the row sees (all, or up to its causal position).
    visible: Value,
}

impl Gen<'_> {
    pub(super) fn attention(&mut self, ptrs: Value, ints: Value, s: &AttentionSpec) {
        let q = self.arg_ptr(ptrs, 0);
        let k = self.arg_ptr(ptrs, 1);
        let v = self.arg_ptr(ptrs, 2);
        let out = self.arg_ptr(ptrs, 3);
        let scratch = self.arg_ptr(ptrs, 4);
        let batch = self.arg_int(ints, 0);
        let hd = s.head_dim as i64;
        let qf = (s.heads * s.head_dim) as i64;
        let kf = (s.kv_heads * s.head_dim) as i64;
        let (sq, skv) = (s.seq_q as i64, s.seq_kv as i64);
        let zero = self.iconst(0);
        self.for_range(zero, batch, 1, |g, b| {
            g.for_count(s.heads, |g, h| {
                // Local key/value head of local query head h.
                let gh = g.b.ins().iadd_imm_s(h, s.q_head_offset as i64);
                let gkv = g.b.ins().udiv_imm_s(gh, s.group as i64);
                let kvh = g.b.ins().iadd_imm_s(gkv, -(s.kv_head_offset as i64));
                let kbase = g.offset(k, b, 4 * skv * kf);
                let kbase = g.offset(kbase, kvh, 4 * hd);
                let vbase = g.offset(v, b, 4 * skv * kf);
                let vbase = g.offset(vbase, kvh, 4 * hd);
                g.for_count(s.seq_q, |g, i| {
                    let bi = g.b.ins().imul_imm_s(b, sq);
                    let row = g.b.ins().iadd(bi, i);
                    let qrow = g.offset(q, row, 4 * qf);
                    let qrow = g.offset(qrow, h, 4 * hd);
                    let orow = g.offset(out, row, 4 * qf);
                    let orow = g.offset(orow, h, 4 * hd);
                    let visible = if s.causal {
                        let vis = g.b.ins().iadd_imm_s(i, skv - sq + 1);
                        let z = g.iconst(0);
                        let e = g.iconst(skv);
                        let vis = g.imax(vis, z);
                        g.imin(vis, e)
                    } else {
                        g.iconst(skv)
                    };
                    let r = QueryRow {
                        qrow,
                        orow,
                        kbase,
                        vbase,
                        scratch,
                        visible,
                    };
                    g.attention_row(s, r);
                });
            });
        });
    }

    /// One query row: the output row accumulates unnormalized sums over
    /// blocks of keys (running maximum `m`, running sum `l`), then is
    /// divided by `l`.
    fn attention_row(&mut self, s: &AttentionSpec, r: QueryRow) {
        let hd = s.head_dim;
        let zv = self.fconst(V4, 0.0);
        for c in 0..hd / 4 {
            self.store(zv, r.orow, 16 * c as i64);
        }
        let zs = self.fconst(types::F32, 0.0);
        for t in hd / 4 * 4..hd {
            self.store(zs, r.orow, 4 * t as i64);
        }
        let big = self.fconst(types::F32, -1e30);
        let mvar = self.var(types::F32, big);
        let lvar = self.var(types::F32, zs);
        let z = self.iconst(0);
        self.for_range(z, r.visible, KEY_BLOCK as i64, |g, j0| {
            let rest = g.b.ins().isub(r.visible, j0);
            let kb = g.iconst(KEY_BLOCK as i64);
            let jn = g.imin(rest, kb);
            let bm = g.attention_scores(s, r, j0, jn);
            let m_old = g.b.use_var(mvar);
            let m_new = g.b.ins().fmax(m_old, bm);
            let dm = g.b.ins().fsub(m_old, m_new);
            let corr = g.exp(types::F32, dm);
            let ps = g.attention_probs(r.scratch, jn, m_new);
            let l_old = g.b.use_var(lvar);
            let l_new = g.fma(l_old, corr, ps);
            g.b.def_var(lvar, l_new);
            g.b.def_var(mvar, m_new);
            g.attention_values(s, r, j0, jn, corr);
        });
        // Normalize (a row that saw no key stays zero).
        let l = self.b.use_var(lvar);
        let pos = self.b.ins().fcmp(FloatCC::GreaterThan, l, zs);
        let one = self.fconst(types::F32, 1.0);
        let inv = self.b.ins().fdiv(one, l);
        let inv = self.b.ins().select(pos, inv, zs);
        let invv = self.b.ins().splat(V4, inv);
        self.map_row(&[r.orow], r.orow, hd, |g, ty, vals| {
            let i = if ty == V4 { invv } else { inv };
            g.b.ins().fmul(vals[0], i)
        });
    }

    /// Scaled scores of keys `j0..j0 + jn` into the scratch block; returns
    /// their maximum.
    fn attention_scores(&mut self, s: &AttentionSpec, r: QueryRow, j0: Value, jn: Value) -> Value {
        let kf = (s.kv_heads * s.head_dim) as i64;
        let big = self.fconst(types::F32, -1e30);
        let bmax = self.var(types::F32, big);
        let z = self.iconst(0);
        let scl = self.fconst(types::F32, 1.0 / (s.head_dim as f32).sqrt());
        self.for_range(z, jn, 1, |g, j| {
            let jj = g.b.ins().iadd(j0, j);
            let krow = g.offset(r.kbase, jj, 4 * kf);
            let d = g.dot(r.qrow, krow, s.head_dim);
            let sc = g.b.ins().fmul(d, scl);
            let sp = g.offset(r.scratch, j, 4);
            g.store(sc, sp, 0);
            let cur = g.b.use_var(bmax);
            let nm = g.b.ins().fmax(cur, sc);
            g.b.def_var(bmax, nm);
        });
        self.b.use_var(bmax)
    }

    /// `p = exp(score - m)` in place over the `jn` scores of the scratch
    /// block; returns their sum.
    fn attention_probs(&mut self, scratch: Value, jn: Value, m: Value) -> Value {
        let mv = self.b.ins().splat(V4, m);
        let zv = self.fconst(V4, 0.0);
        let pacc = self.var(V4, zv);
        let z = self.iconst(0);
        let end4 = self.b.ins().iadd_imm_s(jn, -3);
        let j = self.for_range(z, end4, 4, |g, j| {
            let sp = g.offset(scratch, j, 4);
            let x = g.load(V4, sp, 0);
            let d = g.b.ins().fsub(x, mv);
            let e = g.exp(V4, d);
            g.store(e, sp, 0);
            let cur = g.b.use_var(pacc);
            let n = g.b.ins().fadd(cur, e);
            g.b.def_var(pacc, n);
        });
        let pv = self.b.use_var(pacc);
        let ps = self.hsum(pv);
        let psum = self.var(types::F32, ps);
        self.for_range(j, jn, 1, |g, j| {
            let sp = g.offset(scratch, j, 4);
            let x = g.load(types::F32, sp, 0);
            let d = g.b.ins().fsub(x, m);
            let e = g.exp(types::F32, d);
            g.store(e, sp, 0);
            let cur = g.b.use_var(psum);
            let n = g.b.ins().fadd(cur, e);
            g.b.def_var(psum, n);
        });
        self.b.use_var(psum)
    }

    /// `out = out * corr + sum_j p_j v_j` over the block's `jn` keys: the
    /// row's vectors in chunks of up to 8 accumulators (registers), then
    /// its scalar tail.
    fn attention_values(
        &mut self,
        s: &AttentionSpec,
        r: QueryRow,
        j0: Value,
        jn: Value,
        corr: Value,
    ) {
        let hd = s.head_dim;
        let corrv = self.b.ins().splat(V4, corr);
        let pieces: Vec<(Type, i64)> = (0..hd / 4)
            .map(|c| (V4, 16 * c as i64))
            .chain((hd / 4 * 4..hd).map(|t| (types::F32, 4 * t as i64)))
            .collect();
        for chunk in pieces.chunks(8) {
            let accs: Vec<Variable> = chunk
                .iter()
                .map(|(ty, o)| {
                    let c = if *ty == V4 { corrv } else { corr };
                    let x = self.load(*ty, r.orow, *o);
                    let x = self.b.ins().fmul(x, c);
                    self.var(*ty, x)
                })
                .collect();
            self.attention_value_chunk(s, r, j0, jn, chunk, &accs);
            for ((_, o), acc) in chunk.iter().zip(&accs) {
                let val = self.b.use_var(*acc);
                self.store(val, r.orow, *o);
            }
        }
    }

    /// The loop over keys for one chunk of the output row: `accs[c] +=
    /// p_j * v_j[chunk[c]]`.
    fn attention_value_chunk(
        &mut self,
        s: &AttentionSpec,
        r: QueryRow,
        j0: Value,
        jn: Value,
        chunk: &[(Type, i64)],
        accs: &[Variable],
    ) {
        let kf = (s.kv_heads * s.head_dim) as i64;
        let z = self.iconst(0);
        self.for_range(z, jn, 1, |g, j| {
            let sp = g.offset(r.scratch, j, 4);
            let p = g.load(types::F32, sp, 0);
            let pv = g.b.ins().splat(V4, p);
            let jj = g.b.ins().iadd(j0, j);
            let vrow = g.offset(r.vbase, jj, 4 * kf);
            for ((ty, o), acc) in chunk.iter().zip(accs) {
                let x = g.load(*ty, vrow, *o);
                let cur = g.b.use_var(*acc);
                let pp = if *ty == V4 { pv } else { p };
                let n = g.fma(pp, x, cur);
                g.b.def_var(*acc, n);
            }
        });
    }
}
