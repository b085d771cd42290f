//! Fused elementwise expressions: `out[i] = expr(inputs[..][i])`, and the
//! activation functions and their derivatives they are built from.
//!
//! Shaped so: the expression tree ([`Expr`]) is lowered once per vector
//! width by [`Gen::expr`], so the same code serves the vector body and the
//! tail, and the activation functions ([`Gen::unary`]) are shared with
//! the backward kernels' fused `dy * f'(x)` expressions.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{Endianness, InstBuilder, MemFlagsData, Type, Value, types};

use super::codegen::{Gen, V4};
use super::context::{Jit, buffer_err, check};
use super::spec::{Binary, Expr, KernelSpec, Unary};
use crate::error::RuntimeError;

impl Jit {
    /// `out[i] = expr(inputs[0][i], inputs[1][i], ...)`.
    pub fn elementwise(
        &mut self,
        expr: &Expr,
        inputs: &[&[f32]],
        out: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let spec = KernelSpec::Elementwise { expr: expr.clone() };
        let nm = spec.name();
        if inputs.len() < expr.arity() {
            return Err(buffer_err(&nm, "input buffers", expr.arity(), inputs.len()));
        }
        for x in inputs {
            check(&nm, "input", out.len(), x.len())?;
        }
        let mut ptrs: Vec<*mut f32> = inputs.iter().map(|x| x.as_ptr() as *mut f32).collect();
        ptrs.push(out.as_mut_ptr());
        self.call(&spec, &ptrs, &[out.len() as i64])
    }
}

impl Gen<'_> {
    pub(super) fn sigmoid(&mut self, ty: Type, x: Value) -> Value {
        let nx = self.b.ins().fneg(x);
        let e = self.exp(ty, nx);
        let one = self.fconst(ty, 1.0);
        let d = self.b.ins().fadd(one, e);
        self.b.ins().fdiv(one, d)
    }

    /// `(sigmoid(x), 1 - sigmoid(x))`, the second as `e^-x sigmoid(x)`,
    /// without the cancellation of `1 - s` where `s` is near 1.
    pub(super) fn sigmoid_pair(&mut self, ty: Type, x: Value) -> (Value, Value) {
        let nx = self.b.ins().fneg(x);
        let e = self.exp(ty, nx);
        let one = self.fconst(ty, 1.0);
        let d = self.b.ins().fadd(one, e);
        let s = self.b.ins().fdiv(one, d);
        let t = self.b.ins().fmul(e, s);
        (s, t)
    }

    pub(super) fn unary(&mut self, ty: Type, op: Unary, x: Value) -> Value {
        match op {
            Unary::Relu => {
                let z = self.fconst(ty, 0.0);
                self.b.ins().fmax(x, z)
            }
            Unary::Sigmoid => self.sigmoid(ty, x),
            Unary::Silu => {
                let s = self.sigmoid(ty, x);
                self.b.ins().fmul(x, s)
            }
            Unary::Gelu => {
                // 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3).
                let c = self.fconst(ty, 0.044_715);
                let x2 = self.b.ins().fmul(x, x);
                let one = self.fconst(ty, 1.0);
                let inner = self.fma(c, x2, one);
                let u = self.b.ins().fmul(x, inner);
                let k = self.fconst(ty, 2.0 * (2.0 / std::f32::consts::PI).sqrt());
                let u2 = self.b.ins().fmul(u, k);
                let s = self.sigmoid(ty, u2);
                self.b.ins().fmul(x, s)
            }
            Unary::Scale(bits) => {
                let c = self.fconst(ty, f32::from_bits(bits));
                self.b.ins().fmul(x, c)
            }
            Unary::ReluGrad => {
                let z = self.fconst(ty, 0.0);
                let one = self.fconst(ty, 1.0);
                let pos = self.b.ins().fcmp(FloatCC::GreaterThan, x, z);
                if ty == V4 {
                    // The all-ones lanes of the mask select 1.0's bits.
                    let m = self.b.ins().bitcast(
                        V4,
                        MemFlagsData::new().with_endianness(Endianness::Little),
                        pos,
                    );
                    self.b.ins().band(m, one)
                } else {
                    self.b.ins().select(pos, one, z)
                }
            }
            Unary::SigmoidGrad => {
                let (s, t) = self.sigmoid_pair(ty, x);
                self.b.ins().fmul(s, t)
            }
            Unary::SiluGrad => {
                let (s, t) = self.sigmoid_pair(ty, x);
                let one = self.fconst(ty, 1.0);
                let u = self.fma(x, t, one);
                self.b.ins().fmul(s, u)
            }
            Unary::GeluGrad => {
                // With u = sqrt(2/pi) (x + 0.044715 x^3), t = tanh(u) and
                // s = sigmoid(2u) = (1 + t) / 2, so 1 - t^2 = 4 s (1 - s) and
                // gelu'(x) = s (1 + 2 sqrt(2/pi) x (1 - s) (1 + 3 * 0.044715 x^2)).
                let c = self.fconst(ty, 0.044_715);
                let x2 = self.b.ins().fmul(x, x);
                let one = self.fconst(ty, 1.0);
                let inner = self.fma(c, x2, one);
                let u = self.b.ins().fmul(x, inner);
                let k2 = 2.0 * (2.0 / std::f32::consts::PI).sqrt();
                let k = self.fconst(ty, k2);
                let u2 = self.b.ins().fmul(u, k);
                let (s, t) = self.sigmoid_pair(ty, u2);
                let c3 = self.fconst(ty, 3.0 * 0.044_715);
                let du = self.fma(c3, x2, one);
                let kv = self.fconst(ty, k2);
                let kx = self.b.ins().fmul(x, kv);
                let w = self.b.ins().fmul(kx, du);
                let v = self.fma(w, t, one);
                self.b.ins().fmul(s, v)
            }
        }
    }

    pub(super) fn expr(&mut self, ty: Type, e: &Expr, leaves: &[Value]) -> Value {
        match e {
            Expr::Input(i) => leaves[*i as usize],
            Expr::Unary(op, a) => {
                let x = self.expr(ty, a, leaves);
                self.unary(ty, *op, x)
            }
            Expr::Binary(op, a, b) => {
                let x = self.expr(ty, a, leaves);
                let y = self.expr(ty, b, leaves);
                match op {
                    Binary::Add => self.b.ins().fadd(x, y),
                    Binary::Sub => self.b.ins().fsub(x, y),
                    Binary::Mul => self.b.ins().fmul(x, y),
                    Binary::Div => self.b.ins().fdiv(x, y),
                }
            }
        }
    }

    pub(super) fn elementwise(&mut self, ptrs: Value, ints: Value, e: &Expr) {
        let arity = e.arity();
        let ins: Vec<Value> = (0..arity).map(|i| self.arg_ptr(ptrs, i)).collect();
        let out = self.arg_ptr(ptrs, arity);
        let len = self.arg_int(ints, 0);
        let zero = self.iconst(0);
        // 16 floats per iteration, then 4, then one at a time.
        let end16 = self.b.ins().iadd_imm_s(len, -15);
        let i = self.for_range(zero, end16, 16, |g, i| {
            let off = g.b.ins().imul_imm_s(i, 4);
            let mut results = Vec::new();
            for u in 0..4i64 {
                let leaves: Vec<Value> = ins
                    .iter()
                    .map(|p| {
                        let a = g.b.ins().iadd(*p, off);
                        g.load(V4, a, 16 * u)
                    })
                    .collect();
                results.push(g.expr(V4, e, &leaves));
            }
            let o = g.b.ins().iadd(out, off);
            for (u, r) in results.into_iter().enumerate() {
                g.store(r, o, 16 * u as i64);
            }
        });
        let end4 = self.b.ins().iadd_imm_s(len, -3);
        let i = self.for_range(i, end4, 4, |g, i| {
            let off = g.b.ins().imul_imm_s(i, 4);
            let leaves: Vec<Value> = ins
                .iter()
                .map(|p| {
                    let a = g.b.ins().iadd(*p, off);
                    g.load(V4, a, 0)
                })
                .collect();
            let r = g.expr(V4, e, &leaves);
            let o = g.b.ins().iadd(out, off);
            g.store(r, o, 0);
        });
        self.for_range(i, len, 1, |g, i| {
            let off = g.b.ins().imul_imm_s(i, 4);
            let leaves: Vec<Value> = ins
                .iter()
                .map(|p| {
                    let a = g.b.ins().iadd(*p, off);
                    g.load(types::F32, a, 0)
                })
                .collect();
            let r = g.expr(types::F32, e, &leaves);
            let o = g.b.ins().iadd(out, off);
            g.store(r, o, 0);
        });
    }
}
