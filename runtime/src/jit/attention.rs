//! Attention of one device's heads: per query row, blocks of
//! [`KEY_BLOCK`] keys with an online maximum and sum (grouped query heads,
//! optional causal mask).
//!
//! Shaped so: the generator is split by loop level (row setup, one key
//! block's scores and online softmax, the value accumulation), each a
//! function of the values the enclosing loops fix; the block of scores
//! lives in a caller-owned scratch buffer of [`KEY_BLOCK`] floats.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{InstBuilder, Value, types};
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

impl Gen<'_> {
    pub(super) fn attention(&mut self, ptrs: Value, ints: Value, s: &AttentionSpec) {
        let q = self.arg_ptr(ptrs, 0);
        let k = self.arg_ptr(ptrs, 1);
        let v = self.arg_ptr(ptrs, 2);
        let out = self.arg_ptr(ptrs, 3);
        let scratch = self.arg_ptr(ptrs, 4);
        let batch = self.arg_int(ints, 0);
        let hd = s.head_dim;
        let qf = (s.heads * hd) as i64;
        let kf = (s.kv_heads * hd) as i64;
        let (sq, skv) = (s.seq_q as i64, s.seq_kv as i64);
        let scale = 1.0 / (hd as f32).sqrt();
        let zero = self.iconst(0);
        self.for_range(zero, batch, 1, |g, b| {
            g.for_count(s.heads, |g, h| {
                // Local key/value head of local query head h.
                let gh = g.b.ins().iadd_imm_s(h, s.q_head_offset as i64);
                let gkv = g.b.ins().udiv_imm_s(gh, s.group as i64);
                let kvh = g.b.ins().iadd_imm_s(gkv, -(s.kv_head_offset as i64));
                let kbase = g.offset(k, b, 4 * skv * kf);
                let kbase = g.offset(kbase, kvh, 4 * hd as i64);
                let vbase = g.offset(v, b, 4 * skv * kf);
                let vbase = g.offset(vbase, kvh, 4 * hd as i64);
                g.for_count(s.seq_q, |g, i| {
                    let bi = g.b.ins().imul_imm_s(b, sq);
                    let row = g.b.ins().iadd(bi, i);
                    let qrow = g.offset(q, row, 4 * qf);
                    let qrow = g.offset(qrow, h, 4 * hd as i64);
                    let orow = g.offset(out, row, 4 * qf);
                    let orow = g.offset(orow, h, 4 * hd as i64);
                    let visible = if s.causal {
                        let vis = g.b.ins().iadd_imm_s(i, skv - sq + 1);
                        let z = g.iconst(0);
                        let e = g.iconst(skv);
                        let vis = g.imax(vis, z);
                        g.imin(vis, e)
                    } else {
                        g.iconst(skv)
                    };
                    // Zero the output row; it accumulates unnormalized sums.
                    let zv = g.fconst(V4, 0.0);
                    for c in 0..hd / 4 {
                        g.store(zv, orow, 16 * c as i64);
                    }
                    let zs = g.fconst(types::F32, 0.0);
                    for t in hd / 4 * 4..hd {
                        g.store(zs, orow, 4 * t as i64);
                    }
                    let big = g.fconst(types::F32, -1e30);
                    let mvar = g.var(types::F32, big);
                    let lvar = g.var(types::F32, zs);
                    let z = g.iconst(0);
                    g.for_range(z, visible, KEY_BLOCK as i64, |g, j0| {
                        let rest = g.b.ins().isub(visible, j0);
                        let kb = g.iconst(KEY_BLOCK as i64);
                        let jn = g.imin(rest, kb);
                        // Scores of the block, and their maximum.
                        let bmax = g.var(types::F32, big);
                        let z = g.iconst(0);
                        let scl = g.fconst(types::F32, scale);
                        g.for_range(z, jn, 1, |g, j| {
                            let jj = g.b.ins().iadd(j0, j);
                            let krow = g.offset(kbase, jj, 4 * kf);
                            let d = g.dot(qrow, krow, hd);
                            let sc = g.b.ins().fmul(d, scl);
                            let sp = g.offset(scratch, j, 4);
                            g.store(sc, sp, 0);
                            let cur = g.b.use_var(bmax);
                            let nm = g.b.ins().fmax(cur, sc);
                            g.b.def_var(bmax, nm);
                        });
                        let m_old = g.b.use_var(mvar);
                        let bm = g.b.use_var(bmax);
                        let m_new = g.b.ins().fmax(m_old, bm);
                        let dm = g.b.ins().fsub(m_old, m_new);
                        let corr = g.exp(types::F32, dm);
                        // p = exp(s - m_new), summed.
                        let mv = g.b.ins().splat(V4, m_new);
                        let zv = g.fconst(V4, 0.0);
                        let pacc = g.var(V4, zv);
                        let z = g.iconst(0);
                        let end4 = g.b.ins().iadd_imm_s(jn, -3);
                        let j = g.for_range(z, end4, 4, |g, j| {
                            let sp = g.offset(scratch, j, 4);
                            let x = g.load(V4, sp, 0);
                            let d = g.b.ins().fsub(x, mv);
                            let e = g.exp(V4, d);
                            g.store(e, sp, 0);
                            let cur = g.b.use_var(pacc);
                            let n = g.b.ins().fadd(cur, e);
                            g.b.def_var(pacc, n);
                        });
                        let pv = g.b.use_var(pacc);
                        let ps = g.hsum(pv);
                        let psum = g.var(types::F32, ps);
                        g.for_range(j, jn, 1, |g, j| {
                            let sp = g.offset(scratch, j, 4);
                            let x = g.load(types::F32, sp, 0);
                            let d = g.b.ins().fsub(x, m_new);
                            let e = g.exp(types::F32, d);
                            g.store(e, sp, 0);
                            let cur = g.b.use_var(psum);
                            let n = g.b.ins().fadd(cur, e);
                            g.b.def_var(psum, n);
                        });
                        let l_old = g.b.use_var(lvar);
                        let ps = g.b.use_var(psum);
                        let l_new = g.fma(l_old, corr, ps);
                        g.b.def_var(lvar, l_new);
                        g.b.def_var(mvar, m_new);
                        // out = out * corr + sum_j p_j v_j, in chunks of 8 vectors.
                        let corrv = g.b.ins().splat(V4, corr);
                        let nvec = hd / 4;
                        let mut c0 = 0;
                        while c0 < nvec {
                            let cn = (nvec - c0).min(8);
                            let accs: Vec<Variable> = (0..cn)
                                .map(|c| {
                                    let o = g.load(V4, orow, 16 * (c0 + c) as i64);
                                    let o = g.b.ins().fmul(o, corrv);
                                    g.var(V4, o)
                                })
                                .collect();
                            let z = g.iconst(0);
                            g.for_range(z, jn, 1, |g, j| {
                                let sp = g.offset(scratch, j, 4);
                                let p = g.load(types::F32, sp, 0);
                                let pv = g.b.ins().splat(V4, p);
                                let jj = g.b.ins().iadd(j0, j);
                                let vrow = g.offset(vbase, jj, 4 * kf);
                                for (c, acc) in accs.iter().enumerate() {
                                    let x = g.load(V4, vrow, 16 * (c0 + c) as i64);
                                    let cur = g.b.use_var(*acc);
                                    let n = g.fma(pv, x, cur);
                                    g.b.def_var(*acc, n);
                                }
                            });
                            for (c, acc) in accs.iter().enumerate() {
                                let val = g.b.use_var(*acc);
                                g.store(val, orow, 16 * (c0 + c) as i64);
                            }
                            c0 += cn;
                        }
                        if !hd.is_multiple_of(4) {
                            let tails: Vec<Variable> = (hd / 4 * 4..hd)
                                .map(|t| {
                                    let o = g.load(types::F32, orow, 4 * t as i64);
                                    let o = g.b.ins().fmul(o, corr);
                                    g.var(types::F32, o)
                                })
                                .collect();
                            let z = g.iconst(0);
                            g.for_range(z, jn, 1, |g, j| {
                                let sp = g.offset(scratch, j, 4);
                                let p = g.load(types::F32, sp, 0);
                                let jj = g.b.ins().iadd(j0, j);
                                let vrow = g.offset(vbase, jj, 4 * kf);
                                for (ti, acc) in tails.iter().enumerate() {
                                    let x = g.load(types::F32, vrow, 4 * (hd / 4 * 4 + ti) as i64);
                                    let cur = g.b.use_var(*acc);
                                    let n = g.fma(p, x, cur);
                                    g.b.def_var(*acc, n);
                                }
                            });
                            for (ti, acc) in tails.iter().enumerate() {
                                let val = g.b.use_var(*acc);
                                g.store(val, orow, 4 * (hd / 4 * 4 + ti) as i64);
                            }
                        }
                    });
                    // Normalize (a row that saw no key stays zero).
                    let l = g.b.use_var(lvar);
                    let zs = g.fconst(types::F32, 0.0);
                    let pos = g.b.ins().fcmp(FloatCC::GreaterThan, l, zs);
                    let one = g.fconst(types::F32, 1.0);
                    let inv = g.b.ins().fdiv(one, l);
                    let inv = g.b.ins().select(pos, inv, zs);
                    let invv = g.b.ins().splat(V4, inv);
                    g.map_row(&[orow], orow, hd, |g, ty, vals| {
                        let i = if ty == V4 { invv } else { inv };
                        g.b.ins().fmul(vals[0], i)
                    });
                });
            });
        });
    }
}
