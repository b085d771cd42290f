//! Row-wise forward kernels: rmsnorm, layernorm (two-pass) and softmax
//! (max, exp-sum, scale).
//!
//! Shaped so: the three share the row entry point ([`Jit::rows_kernel`]:
//! whole rows, parameters of one row) and the row traversals of
//! [`super::codegen`]; their gradients live in [`super::backward`].

use cranelift_codegen::ir::{InstBuilder, Value, types};

use super::codegen::{Gen, V4};
use super::context::{Jit, check};
use super::spec::KernelSpec;
use crate::error::RuntimeError;

impl Jit {
    /// RMS normalization of rows of `dim` with gain `g`.
    pub fn rmsnorm(
        &mut self,
        dim: usize,
        x: &[f32],
        g: &[f32],
        out: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let spec = KernelSpec::RmsNorm { dim };
        self.rows_kernel(spec, dim, x, &[g], out)
    }

    /// Layer normalization of rows of `dim` with gain `g` and shift `b`.
    pub fn layernorm(
        &mut self,
        dim: usize,
        x: &[f32],
        g: &[f32],
        b: &[f32],
        out: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let spec = KernelSpec::LayerNorm { dim };
        self.rows_kernel(spec, dim, x, &[g, b], out)
    }

    /// Softmax over rows of `dim`.
    pub fn softmax(&mut self, dim: usize, x: &[f32], out: &mut [f32]) -> Result<(), RuntimeError> {
        self.rows_kernel(KernelSpec::Softmax { dim }, dim, x, &[], out)
    }

    pub(super) fn rows_kernel(
        &mut self,
        spec: KernelSpec,
        dim: usize,
        x: &[f32],
        params: &[&[f32]],
        out: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let nm = spec.name();
        if dim == 0 {
            return Ok(());
        }
        let rows = x.len() / dim;
        check(&nm, "input", rows * dim, x.len())?;
        check(&nm, "output", rows * dim, out.len())?;
        for p in params {
            check(&nm, "parameters", dim, p.len())?;
        }
        let mut ptrs = vec![x.as_ptr() as *mut f32];
        ptrs.extend(params.iter().map(|p| p.as_ptr() as *mut f32));
        ptrs.push(out.as_mut_ptr());
        self.call(&spec, &ptrs, &[rows as i64])
    }
}

impl Gen<'_> {
    pub(super) fn norm(&mut self, ptrs: Value, ints: Value, dim: usize, layer: bool) {
        let x = self.arg_ptr(ptrs, 0);
        let gain = self.arg_ptr(ptrs, 1);
        let shift = if layer {
            Some(self.arg_ptr(ptrs, 2))
        } else {
            None
        };
        let out = self.arg_ptr(ptrs, if layer { 3 } else { 2 });
        let rows = self.arg_int(ints, 0);
        let zero = self.iconst(0);
        self.for_range(zero, rows, 1, |g, r| {
            let off = g.b.ins().imul_imm_s(r, 4 * dim as i64);
            let row = g.b.ins().iadd(x, off);
            let orow = g.b.ins().iadd(out, off);
            let zv = g.fconst(V4, 0.0);
            let zs = g.fconst(types::F32, 0.0);
            let inv_n = g.fconst(types::F32, 1.0 / dim as f32);
            let mean = if layer {
                let (v, s) = g.fold_row(
                    row,
                    dim,
                    zv,
                    zs,
                    |g, a, x| g.b.ins().fadd(a, x),
                    |g, a, x| g.b.ins().fadd(a, x),
                );
                let h = g.hsum(v);
                let t = g.b.ins().fadd(h, s);
                Some(g.b.ins().fmul(t, inv_n))
            } else {
                None
            };
            let mv = mean.map(|m| g.b.ins().splat(V4, m));
            let (v, s) = g.fold_row(
                row,
                dim,
                zv,
                zs,
                |g, a, x| {
                    let d = match mv {
                        Some(m) => g.b.ins().fsub(x, m),
                        None => x,
                    };
                    g.fma(d, d, a)
                },
                |g, a, x| {
                    let d = match mean {
                        Some(m) => g.b.ins().fsub(x, m),
                        None => x,
                    };
                    g.fma(d, d, a)
                },
            );
            let h = g.hsum(v);
            let t = g.b.ins().fadd(h, s);
            let var = g.b.ins().fmul(t, inv_n);
            let eps = g.fconst(types::F32, crate::graph::NORM_EPS);
            let ve = g.b.ins().fadd(var, eps);
            let sd = g.b.ins().sqrt(ve);
            let one = g.fconst(types::F32, 1.0);
            let inv = g.b.ins().fdiv(one, sd);
            let invv = g.b.ins().splat(V4, inv);
            let mut srcs = vec![row, gain];
            if let Some(sh) = shift {
                srcs.push(sh);
            }
            g.map_row(&srcs, orow, dim, |g, ty, v| {
                let (iv, m) = if ty == V4 { (invv, mv) } else { (inv, mean) };
                let d = match m {
                    Some(m) => g.b.ins().fsub(v[0], m),
                    None => v[0],
                };
                let n = g.b.ins().fmul(d, iv);
                match v.get(2) {
                    Some(b) => g.fma(n, v[1], *b),
                    None => g.b.ins().fmul(n, v[1]),
                }
            });
        });
    }

    pub(super) fn softmax(&mut self, ptrs: Value, ints: Value, dim: usize) {
        let x = self.arg_ptr(ptrs, 0);
        let out = self.arg_ptr(ptrs, 1);
        let rows = self.arg_int(ints, 0);
        let zero = self.iconst(0);
        self.for_range(zero, rows, 1, |g, r| {
            let off = g.b.ins().imul_imm_s(r, 4 * dim as i64);
            let row = g.b.ins().iadd(x, off);
            let orow = g.b.ins().iadd(out, off);
            let lv = g.fconst(V4, f32::MIN);
            let ls = g.fconst(types::F32, f32::MIN);
            let (v, s) = g.fold_row(
                row,
                dim,
                lv,
                ls,
                |g, a, x| g.b.ins().fmax(a, x),
                |g, a, x| g.b.ins().fmax(a, x),
            );
            let h = g.hmax(v);
            let max = g.b.ins().fmax(h, s);
            let maxv = g.b.ins().splat(V4, max);
            // e = exp(x - max) into out, summed.
            let zv = g.fconst(V4, 0.0);
            let acc = g.var(V4, zv);
            g.for_count(dim / 4, |g, j| {
                let a = g.offset(row, j, 16);
                let xv = g.load(V4, a, 0);
                let d = g.b.ins().fsub(xv, maxv);
                let e = g.exp(V4, d);
                let o = g.offset(orow, j, 16);
                g.store(e, o, 0);
                let cur = g.b.use_var(acc);
                let n = g.b.ins().fadd(cur, e);
                g.b.def_var(acc, n);
            });
            let accv = g.b.use_var(acc);
            let mut sum = g.hsum(accv);
            for t in dim / 4 * 4..dim {
                let xv = g.load(types::F32, row, 4 * t as i64);
                let d = g.b.ins().fsub(xv, max);
                let e = g.exp(types::F32, d);
                g.store(e, orow, 4 * t as i64);
                sum = g.b.ins().fadd(sum, e);
            }
            let one = g.fconst(types::F32, 1.0);
            let inv = g.b.ins().fdiv(one, sum);
            let invv = g.b.ins().splat(V4, inv);
            g.map_row(&[orow], orow, dim, |g, ty, v| {
                let i = if ty == V4 { invv } else { inv };
                g.b.ins().fmul(v[0], i)
            });
        });
    }
}
