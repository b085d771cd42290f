//! Fused elementwise expressions: `out[i] = expr(inputs[..][i])`, and the
//! activation functions and their derivatives they are built from.
//!
//! Shaped so: the expression tree ([`Expr`]) is lowered once per vector
//! width by [`Gen::expr`], so the same code serves the vector body and the
//! tail, and the activation functions ([`Gen::unary`]) are shared with
//! the backward kernels' fused `dy * f'(x)` expressions.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    Block, BlockArg, Endianness, InstBuilder, MemFlagsData, StackSlotData, StackSlotKind, Type,
    Value, types,
};

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

    /// `out[i] = e(inputs[i])`: one loop whose body computes [`width`]
    /// floats, entered with the buffers' addresses as block parameters, so
    /// that one copy of the expression serves the whole run: full chunks
    /// read the inputs and write the output in place; the last `len %
    /// width` floats go through zero-padded stack buffers, copied in and
    /// out one float at a time (the padding lanes are computed, never
    /// stored). One copy, not one per vector width and a scalar one, keeps
    /// the code, and so the compile time, small.
    pub(super) fn elementwise(&mut self, ptrs: Value, ints: Value, e: &Expr) {
        let arity = e.arity();
        let ins: Vec<Value> = (0..arity).map(|i| self.arg_ptr(ptrs, i)).collect();
        let out = self.arg_ptr(ptrs, arity);
        let len = self.arg_int(ints, 0);
        let w = width(e) as i64;
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            (4 * w * (arity as i64 + 1)) as u32,
            4,
        ));
        let tout = self.b.ins().stack_addr(self.ptr, slot, 0);
        let tins: Vec<Value> = (0..arity as i64)
            .map(|k| self.b.ins().iadd_imm_s(tout, 4 * w * (k + 1)))
            .collect();
        let header = self.b.create_block();
        let main = self.b.create_block();
        let finish = self.b.create_block();
        let body = self.b.create_block();
        let after = self.b.create_block();
        let tail_in = self.b.create_block();
        let tail_out = self.b.create_block();
        let exit = self.b.create_block();
        for blk in [header, main, finish, after, tail_in, tail_out] {
            self.b.append_block_param(blk, types::I64);
        }
        for _ in 0..=arity {
            self.b.append_block_param(body, self.ptr);
        }
        self.b.append_block_param(body, types::I64);
        self.b.append_block_param(body, types::I8);
        let zero = self.iconst(0);
        self.b.ins().jump(header, &[zero.into()]);
        // header(i): a full chunk left?
        self.b.switch_to_block(header);
        let i = self.b.block_params(header)[0];
        let ie = self.b.ins().iadd_imm_s(i, w);
        let full = self.b.ins().icmp(IntCC::SignedLessThanOrEqual, ie, len);
        self.b
            .ins()
            .brif(full, main, &[i.into()], finish, &[i.into()]);
        // main(i): the chunk in place.
        self.b.switch_to_block(main);
        let i = self.b.block_params(main)[0];
        let off = self.b.ins().imul_imm_s(i, 4);
        let mut args: Vec<Value> = ins.iter().map(|p| self.b.ins().iadd(*p, off)).collect();
        let dst = self.b.ins().iadd(out, off);
        args.extend([dst, i]);
        let no = self.b.ins().iconst(types::I8, 0);
        args.push(no);
        self.jump_with(body, &args);
        // body(srcs.., dst, i, last): one chunk.
        self.b.switch_to_block(body);
        let params = self.b.block_params(body).to_vec();
        let (srcs, rest) = params.split_at(arity);
        let (dst, i, last) = (rest[0], rest[1], rest[2]);
        self.expr_chunk(e, srcs, dst, w);
        self.b
            .ins()
            .brif(last, tail_out, &[i.into()], after, &[i.into()]);
        // after(i): the next chunk.
        self.b.switch_to_block(after);
        let i = self.b.block_params(after)[0];
        let i2 = self.b.ins().iadd_imm_s(i, w);
        self.b.ins().jump(header, &[i2.into()]);
        // finish(i): the tail, if any.
        self.b.switch_to_block(finish);
        let i = self.b.block_params(finish)[0];
        let rem = self.b.ins().isub(len, i);
        let some = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, rem, 0);
        self.b.ins().brif(some, tail_in, &[i.into()], exit, &[]);
        // tail_in(i): the last floats into the padded buffers.
        self.b.switch_to_block(tail_in);
        let i = self.b.block_params(tail_in)[0];
        let rem = self.b.ins().isub(len, i);
        let zv = self.fconst(V4, 0.0);
        for (p, t) in ins.iter().zip(&tins) {
            for u in 0..w / 4 {
                self.store(zv, *t, 16 * u);
            }
            let src = self.offset(*p, i, 4);
            self.copy_floats(src, *t, rem);
        }
        let mut args = tins.clone();
        args.extend([tout, i]);
        let yes = self.b.ins().iconst(types::I8, 1);
        args.push(yes);
        self.jump_with(body, &args);
        // tail_out(i): the valid floats of the padded result to `out`.
        self.b.switch_to_block(tail_out);
        let i = self.b.block_params(tail_out)[0];
        let rem = self.b.ins().isub(len, i);
        let dst = self.offset(out, i, 4);
        self.copy_floats(tout, dst, rem);
        self.b.ins().jump(exit, &[]);
        self.b.switch_to_block(exit);
    }

    fn jump_with(&mut self, block: Block, args: &[Value]) {
        let args: Vec<BlockArg> = args.iter().map(|v| (*v).into()).collect();
        self.b.ins().jump(block, &args);
    }

    /// `w` floats of `e` from `srcs` to `dst`: `w / 4` independent vectors.
    fn expr_chunk(&mut self, e: &Expr, srcs: &[Value], dst: Value, w: i64) {
        let results: Vec<Value> = (0..w / 4)
            .map(|u| {
                let leaves: Vec<Value> = srcs.iter().map(|p| self.load(V4, *p, 16 * u)).collect();
                self.expr(V4, e, &leaves)
            })
            .collect();
        for (u, r) in results.into_iter().enumerate() {
            self.store(r, dst, 16 * u as i64);
        }
    }

    /// `n` floats from `src` to `dst`, one at a time.
    fn copy_floats(&mut self, src: Value, dst: Value, n: Value) {
        let z = self.iconst(0);
        self.for_range(z, n, 1, |g, j| {
            let o = g.b.ins().imul_imm_s(j, 4);
            let x = g.load_at(types::F32, src, o, 0);
            g.store_at(x, dst, o, 0);
        });
    }
}

/// Floats per chunk of an elementwise kernel: 4 vectors when the
/// expression is a few arithmetic operations (memory-bound: fewer loop
/// iterations per byte), 1 when it evaluates `exp` or divides
/// (compute-bound: the out-of-order core overlaps consecutive chunks, and
/// one copy of a long expression compiles several times faster than four).
pub(super) fn width(e: &Expr) -> usize {
    fn heavy(e: &Expr) -> bool {
        match e {
            Expr::Input(_) => false,
            Expr::Unary(Unary::Relu | Unary::Scale(_) | Unary::ReluGrad, a) => heavy(a),
            Expr::Unary(_, _) => true,
            Expr::Binary(Binary::Div, _, _) => true,
            Expr::Binary(_, a, b) => heavy(a) || heavy(b),
        }
    }
    if heavy(e) { 4 } else { 16 }
}
