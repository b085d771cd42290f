//! Backward row kernels: the gradients of rmsnorm, layernorm and softmax.
//!
//! Shaped so: each gradient is a separate kernel with its own buffer
//! contract (`x, params.., dy, dx, grads..`, checked by
//! [`Jit::rows_grad`]); `dx` is overwritten, parameter gradients
//! accumulate over rows. The activation derivatives are not here: they
//! are [`super::Unary`] operations fused into elementwise expressions.

use cranelift_codegen::ir::{InstBuilder, Value, types};

use super::codegen::{Gen, V4};
use super::context::{Jit, check};
use super::spec::KernelSpec;
use crate::error::{RCode, RuntimeError};

impl Jit {
    /// Gradients of [`Jit::rmsnorm`] over rows of `dim` (`rows =
    /// x.len() / dim`, which must divide): `dx` is overwritten, `dgain`
    /// accumulates (`+=`) the gain's gradient summed over the rows.
    pub fn rmsnorm_grad(
        &mut self,
        dim: usize,
        x: &[f32],
        gain: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        dgain: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let spec = KernelSpec::RmsNormGrad { dim };
        self.rows_grad(spec, dim, x, &[gain], dy, dx, &mut [dgain])
    }

    /// Gradients of [`Jit::layernorm`] over rows of `dim`: `dx` is
    /// overwritten, `dgain` and `dbias` accumulate (`+=`).
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_grad(
        &mut self,
        dim: usize,
        x: &[f32],
        gain: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        dgain: &mut [f32],
        dbias: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let spec = KernelSpec::LayerNormGrad { dim };
        self.rows_grad(spec, dim, x, &[gain], dy, dx, &mut [dgain, dbias])
    }

    /// Gradient of [`Jit::softmax`] over rows of `dim` from its output `y`:
    /// `dx = y (dy - sum(dy y))` per row (overwritten).
    pub fn softmax_grad(
        &mut self,
        dim: usize,
        y: &[f32],
        dy: &[f32],
        dx: &mut [f32],
    ) -> Result<(), RuntimeError> {
        self.rows_grad(
            KernelSpec::SoftmaxGrad { dim },
            dim,
            y,
            &[],
            dy,
            dx,
            &mut [],
        )
    }

    /// Row-wise gradient kernels. Buffers go to the kernel in the order
    /// `x, params.., dy, dx, grads..`; `x` must hold whole rows.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rows_grad(
        &mut self,
        spec: KernelSpec,
        dim: usize,
        x: &[f32],
        params: &[&[f32]],
        dy: &[f32],
        dx: &mut [f32],
        grads: &mut [&mut [f32]],
    ) -> Result<(), RuntimeError> {
        let nm = spec.name();
        if dim == 0 {
            return Ok(());
        }
        let rows = x.len() / dim;
        if rows * dim != x.len() {
            return Err(RuntimeError::new(
                RCode::R005,
                format!(
                    "kernel `{nm}` needs whole rows of {dim} floats, got {} floats",
                    x.len()
                ),
            )
            .with_help("this is a runtime bug; please report it with the command line"));
        }
        check(&nm, "dy", rows * dim, dy.len())?;
        check(&nm, "dx", rows * dim, dx.len())?;
        for p in params {
            check(&nm, "parameters", dim, p.len())?;
        }
        for p in grads.iter() {
            check(&nm, "parameter gradients", dim, p.len())?;
        }
        if rows == 0 {
            return Ok(());
        }
        let mut ptrs = vec![x.as_ptr() as *mut f32];
        ptrs.extend(params.iter().map(|p| p.as_ptr() as *mut f32));
        ptrs.push(dy.as_ptr() as *mut f32);
        ptrs.push(dx.as_mut_ptr());
        ptrs.extend(grads.iter_mut().map(|p| p.as_mut_ptr()));
        self.call(&spec, &ptrs, &[rows as i64])
    }
}

impl Gen<'_> {
    /// Gradients of rmsnorm (`layer = false`) or layernorm: buffers `x,
    /// gain, dy, dx, dgain (, dbias)`, as `backward.rs` defines them.
    pub(super) fn norm_grad(&mut self, ptrs: Value, ints: Value, dim: usize, layer: bool) {
        let x = self.arg_ptr(ptrs, 0);
        let gain = self.arg_ptr(ptrs, 1);
        let dy = self.arg_ptr(ptrs, 2);
        let dx = self.arg_ptr(ptrs, 3);
        let dgain = self.arg_ptr(ptrs, 4);
        let dbias = if layer {
            Some(self.arg_ptr(ptrs, 5))
        } else {
            None
        };
        let rows = self.arg_int(ints, 0);
        let zero = self.iconst(0);
        self.for_range(zero, rows, 1, |g, r| {
            let roff = g.b.ins().imul_imm_s(r, 4 * dim as i64);
            let xr = g.b.ins().iadd(x, roff);
            let dyr = g.b.ins().iadd(dy, roff);
            let dxr = g.b.ins().iadd(dx, roff);
            let inv_n = g.fconst(types::F32, 1.0 / dim as f32);
            let eps = g.fconst(types::F32, crate::graph::NORM_EPS);
            let one = g.fconst(types::F32, 1.0);
            if let Some(dbias) = dbias {
                let sx = g.row_sums(dim, 1, |g, ty, o, i, a| {
                    let xv = g.load_at(ty, xr, o, i);
                    vec![g.b.ins().fadd(a[0], xv)]
                });
                let mean = g.b.ins().fmul(sx[0], inv_n);
                let mv = g.b.ins().splat(V4, mean);
                // Variance, sum(dy g) and sum(dy g (x - mean)) in one pass.
                let s = g.row_sums(dim, 3, |g, ty, o, i, a| {
                    let xv = g.load_at(ty, xr, o, i);
                    let gv = g.load_at(ty, gain, o, i);
                    let dyv = g.load_at(ty, dyr, o, i);
                    let m = if ty == V4 { mv } else { mean };
                    let d = g.b.ins().fsub(xv, m);
                    let dyg = g.b.ins().fmul(dyv, gv);
                    let var = g.fma(d, d, a[0]);
                    let s1 = g.b.ins().fadd(a[1], dyg);
                    let s2 = g.fma(dyg, d, a[2]);
                    vec![var, s1, s2]
                });
                let var = g.b.ins().fmul(s[0], inv_n);
                let ve = g.b.ins().fadd(var, eps);
                let sd = g.b.ins().sqrt(ve);
                let inv = g.b.ins().fdiv(one, sd);
                let s1 = s[1];
                let s2 = g.b.ins().fmul(s[2], inv);
                let c = g.b.ins().fmul(inv, inv_n);
                let vs = [mv, g.b.ins().splat(V4, inv), g.b.ins().splat(V4, s1)];
                let vs2 = [g.b.ins().splat(V4, s2), g.b.ins().splat(V4, c)];
                // dx = inv dy g - inv / n (s1 + xh s2), xh = (x - mean) inv.
                g.row_each(dim, |g, ty, o, i| {
                    let (m, iv, s1, s2, c) = if ty == V4 {
                        (vs[0], vs[1], vs[2], vs2[0], vs2[1])
                    } else {
                        (mean, inv, s1, s2, c)
                    };
                    let xv = g.load_at(ty, xr, o, i);
                    let gv = g.load_at(ty, gain, o, i);
                    let dyv = g.load_at(ty, dyr, o, i);
                    let d = g.b.ins().fsub(xv, m);
                    let xh = g.b.ins().fmul(d, iv);
                    let dg = g.load_at(ty, dgain, o, i);
                    let dg = g.fma(dyv, xh, dg);
                    g.store_at(dg, dgain, o, i);
                    let db = g.load_at(ty, dbias, o, i);
                    let db = g.b.ins().fadd(db, dyv);
                    g.store_at(db, dbias, o, i);
                    let dyg = g.b.ins().fmul(dyv, gv);
                    let a = g.b.ins().fmul(dyg, iv);
                    let t = g.fma(xh, s2, s1);
                    let t = g.b.ins().fmul(t, c);
                    let r = g.b.ins().fsub(a, t);
                    g.store_at(r, dxr, o, i);
                });
            } else {
                // sum(x^2) and sum(dy g x) in one pass.
                let s = g.row_sums(dim, 2, |g, ty, o, i, a| {
                    let xv = g.load_at(ty, xr, o, i);
                    let gv = g.load_at(ty, gain, o, i);
                    let dyv = g.load_at(ty, dyr, o, i);
                    let ss = g.fma(xv, xv, a[0]);
                    let dyg = g.b.ins().fmul(dyv, gv);
                    let dot = g.fma(dyg, xv, a[1]);
                    vec![ss, dot]
                });
                let ms = g.b.ins().fmul(s[0], inv_n);
                let me = g.b.ins().fadd(ms, eps);
                let sd = g.b.ins().sqrt(me);
                let inv = g.b.ins().fdiv(one, sd);
                // dx = inv g dy - x inv^3 dot / n.
                let i2 = g.b.ins().fmul(inv, inv);
                let i3 = g.b.ins().fmul(i2, inv);
                let k = g.b.ins().fmul(i3, s[1]);
                let k = g.b.ins().fmul(k, inv_n);
                let vs = [g.b.ins().splat(V4, inv), g.b.ins().splat(V4, k)];
                g.row_each(dim, |g, ty, o, i| {
                    let (iv, k) = if ty == V4 { (vs[0], vs[1]) } else { (inv, k) };
                    let xv = g.load_at(ty, xr, o, i);
                    let gv = g.load_at(ty, gain, o, i);
                    let dyv = g.load_at(ty, dyr, o, i);
                    let dyi = g.b.ins().fmul(dyv, iv);
                    let dg = g.load_at(ty, dgain, o, i);
                    let dg = g.fma(dyi, xv, dg);
                    g.store_at(dg, dgain, o, i);
                    let a = g.b.ins().fmul(dyi, gv);
                    let t = g.b.ins().fmul(xv, k);
                    let r = g.b.ins().fsub(a, t);
                    g.store_at(r, dxr, o, i);
                });
            }
        });
    }

    /// Softmax gradient from the output: buffers `y, dy, dx`.
    pub(super) fn softmax_grad(&mut self, ptrs: Value, ints: Value, dim: usize) {
        let y = self.arg_ptr(ptrs, 0);
        let dy = self.arg_ptr(ptrs, 1);
        let dx = self.arg_ptr(ptrs, 2);
        let rows = self.arg_int(ints, 0);
        let zero = self.iconst(0);
        self.for_range(zero, rows, 1, |g, r| {
            let roff = g.b.ins().imul_imm_s(r, 4 * dim as i64);
            let yr = g.b.ins().iadd(y, roff);
            let dyr = g.b.ins().iadd(dy, roff);
            let dxr = g.b.ins().iadd(dx, roff);
            let s = g.row_sums(dim, 1, |g, ty, o, i, a| {
                let yv = g.load_at(ty, yr, o, i);
                let dyv = g.load_at(ty, dyr, o, i);
                vec![g.fma(yv, dyv, a[0])]
            });
            let dot = s[0];
            let dotv = g.b.ins().splat(V4, dot);
            g.row_each(dim, |g, ty, o, i| {
                let d = if ty == V4 { dotv } else { dot };
                let yv = g.load_at(ty, yr, o, i);
                let dyv = g.load_at(ty, dyr, o, i);
                let t = g.b.ins().fsub(dyv, d);
                let r = g.b.ins().fmul(yv, t);
                g.store_at(r, dxr, o, i);
            });
        });
    }
}
