//! `Gen`, the short-lived function builder every kernel generator uses,
//! and its shared helpers: constants, argument and memory access,
//! structured loops and branches, lane reductions, `exp`, and row
//! traversals (vector body, scalar tail).
//!
//! Shaped so: the kernel families ([`super::gemm`], [`super::norm`], ...)
//! add their generators as further `impl Gen` blocks in their own files;
//! only what two or more of them use lives here.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    ConstantData, Endianness, InstBuilder, MemFlagsData, Type, Value, types,
};
use cranelift_frontend::{FunctionBuilder, Variable};

/// A short-lived function builder with the helpers the kernels share.
pub(super) struct Gen<'a> {
    pub(super) b: FunctionBuilder<'a>,
    pub(super) ptr: Type,
}

pub(super) const V4: Type = types::F32X4;

pub(super) fn mem() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

impl<'a> Gen<'a> {
    pub(super) fn new(b: FunctionBuilder<'a>, ptr: Type) -> Gen<'a> {
        Gen { b, ptr }
    }

    pub(super) fn iconst(&mut self, v: i64) -> Value {
        self.b.ins().iconst(types::I64, v)
    }

    /// `v` as an `f32` or in every lane of an `f32x4`. A vector constant
    /// is a `vconst` (one load from the function's constant pool, where
    /// equal constants are stored once; zero is a register `xor`), not
    /// `splat(f32const)`, which without the mid-end stays three
    /// instructions at every use.
    pub(super) fn fconst(&mut self, ty: Type, v: f32) -> Value {
        if ty == V4 {
            let bytes: Vec<u8> = v.to_le_bytes().repeat(4);
            let c = self.b.func.dfg.constants.insert(ConstantData::from(bytes));
            self.b.ins().vconst(V4, c)
        } else {
            self.b.ins().f32const(v)
        }
    }

    pub(super) fn arg_ptr(&mut self, ptrs: Value, i: usize) -> Value {
        self.b.ins().load(self.ptr, mem(), ptrs, (8 * i) as i32)
    }

    pub(super) fn arg_int(&mut self, ints: Value, i: usize) -> Value {
        self.b.ins().load(types::I64, mem(), ints, (8 * i) as i32)
    }

    pub(super) fn load(&mut self, ty: Type, base: Value, off: i64) -> Value {
        self.b.ins().load(ty, mem(), base, off as i32)
    }

    pub(super) fn store(&mut self, v: Value, base: Value, off: i64) {
        self.b.ins().store(mem(), v, base, off as i32);
    }

    /// `base + index * scale` (bytes).
    pub(super) fn offset(&mut self, base: Value, index: Value, scale: i64) -> Value {
        let o = self.b.ins().imul_imm_s(index, scale);
        self.b.ins().iadd(base, o)
    }

    pub(super) fn var(&mut self, ty: Type, init: Value) -> Variable {
        let v = self.b.declare_var(ty);
        self.b.def_var(v, init);
        v
    }

    /// `for (i = start; i < end; i += step) body(i)`; returns the value of
    /// `i` after the loop.
    pub(super) fn for_range(
        &mut self,
        start: Value,
        end: Value,
        step: i64,
        mut body: impl FnMut(&mut Self, Value),
    ) -> Value {
        let iv = self.var(types::I64, start);
        let header = self.b.create_block();
        let body_block = self.b.create_block();
        let exit = self.b.create_block();
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(header);
        let i = self.b.use_var(iv);
        let go = self.b.ins().icmp(IntCC::SignedLessThan, i, end);
        self.b.ins().brif(go, body_block, &[], exit, &[]);
        self.b.switch_to_block(body_block);
        body(self, i);
        let i = self.b.use_var(iv);
        let next = self.b.ins().iadd_imm_s(i, step);
        self.b.def_var(iv, next);
        self.b.ins().jump(header, &[]);
        self.b.switch_to_block(exit);
        self.b.use_var(iv)
    }

    /// `for i in 0..count` over a compile-time count, as a runtime loop.
    pub(super) fn for_count(&mut self, count: usize, body: impl FnMut(&mut Self, Value)) {
        if count == 0 {
            return;
        }
        let z = self.iconst(0);
        let e = self.iconst(count as i64);
        self.for_range(z, e, 1, body);
    }

    /// Runs `then` when `cond` (an integer truth value) is true.
    pub(super) fn if_then(&mut self, cond: Value, then: impl FnOnce(&mut Self)) {
        let yes = self.b.create_block();
        let done = self.b.create_block();
        self.b.ins().brif(cond, yes, &[], done, &[]);
        self.b.switch_to_block(yes);
        then(self);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
    }

    /// Runs `then` when `cond` is true and `other` when it is false.
    pub(super) fn if_else(
        &mut self,
        cond: Value,
        then: impl FnOnce(&mut Self),
        other: impl FnOnce(&mut Self),
    ) {
        let yes = self.b.create_block();
        let no = self.b.create_block();
        let done = self.b.create_block();
        self.b.ins().brif(cond, yes, &[], no, &[]);
        self.b.switch_to_block(yes);
        then(self);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(no);
        other(self);
        self.b.ins().jump(done, &[]);
        self.b.switch_to_block(done);
    }

    pub(super) fn imin(&mut self, a: Value, b: Value) -> Value {
        let lt = self.b.ins().icmp(IntCC::SignedLessThan, a, b);
        self.b.ins().select(lt, a, b)
    }

    pub(super) fn imax(&mut self, a: Value, b: Value) -> Value {
        let gt = self.b.ins().icmp(IntCC::SignedGreaterThan, a, b);
        self.b.ins().select(gt, a, b)
    }

    /// Sum of the four lanes of a vector.
    pub(super) fn hsum(&mut self, v: Value) -> Value {
        let l: Vec<Value> = (0..4u8).map(|i| self.b.ins().extractlane(v, i)).collect();
        let a = self.b.ins().fadd(l[0], l[1]);
        let b = self.b.ins().fadd(l[2], l[3]);
        self.b.ins().fadd(a, b)
    }

    /// Maximum of the four lanes of a vector.
    pub(super) fn hmax(&mut self, v: Value) -> Value {
        let l: Vec<Value> = (0..4u8).map(|i| self.b.ins().extractlane(v, i)).collect();
        let a = self.b.ins().fmax(l[0], l[1]);
        let b = self.b.ins().fmax(l[2], l[3]);
        self.b.ins().fmax(a, b)
    }

    pub(super) fn fma(&mut self, a: Value, b: Value, c: Value) -> Value {
        self.b.ins().fma(a, b, c)
    }

    /// `e^x` for f32 or f32x4: Cephes' range reduction and degree-5
    /// polynomial (about 2 ulp), inputs clamped to [-87, 88].
    pub(super) fn exp(&mut self, ty: Type, x: Value) -> Value {
        let hi = self.fconst(ty, 88.0);
        let lo = self.fconst(ty, -87.0);
        let x = self.b.ins().fmin(x, hi);
        let x = self.b.ins().fmax(x, lo);
        let log2e = self.fconst(ty, std::f32::consts::LOG2_E);
        let t = self.b.ins().fmul(x, log2e);
        let n = self.b.ins().nearest(t);
        let c1 = self.fconst(ty, -0.693_359_4);
        let c2 = self.fconst(ty, 2.121_944_4e-4);
        let r = self.fma(n, c1, x);
        let r = self.fma(n, c2, r);
        let mut p = self.fconst(ty, 1.987_569_2e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            let cv = self.fconst(ty, c);
            p = self.fma(p, r, cv);
        }
        let r2 = self.b.ins().fmul(r, r);
        let y = self.fma(p, r2, r);
        let one = self.fconst(ty, 1.0);
        let y = self.b.ins().fadd(y, one);
        let ity = if ty == V4 { types::I32X4 } else { types::I32 };
        let ni = self.b.ins().fcvt_to_sint_sat(ity, n);
        let bias = if ty == V4 {
            let c = self.b.ins().iconst(types::I32, 127);
            self.b.ins().splat(ity, c)
        } else {
            self.b.ins().iconst(types::I32, 127)
        };
        let e = self.b.ins().iadd(ni, bias);
        let e = self.b.ins().ishl_imm_s(e, 23);
        let pow = self.b.ins().bitcast(
            ty,
            MemFlagsData::new().with_endianness(Endianness::Little),
            e,
        );
        self.b.ins().fmul(y, pow)
    }

    /// Folds `f(acc, chunk)` over a row of `dim` floats at `row` (vectors,
    /// then a scalar tail folded with `fs`); returns the vector and scalar
    /// accumulators.
    pub(super) fn fold_row(
        &mut self,
        row: Value,
        dim: usize,
        acc0: Value,
        s0: Value,
        mut f: impl FnMut(&mut Self, Value, Value) -> Value,
        mut fs: impl FnMut(&mut Self, Value, Value) -> Value,
    ) -> (Value, Value) {
        let acc = self.var(V4, acc0);
        self.for_count(dim / 4, |g, j| {
            let a = g.offset(row, j, 16);
            let x = g.load(V4, a, 0);
            let cur = g.b.use_var(acc);
            let nx = f(g, cur, x);
            g.b.def_var(acc, nx);
        });
        let mut s = s0;
        for t in dim / 4 * 4..dim {
            let x = self.load(types::F32, row, 4 * t as i64);
            s = fs(self, s, x);
        }
        (self.b.use_var(acc), s)
    }

    /// Writes `out[j] = f(x[j], j-th params...)` over a row.
    pub(super) fn map_row(
        &mut self,
        srcs: &[Value],
        out: Value,
        dim: usize,
        mut f: impl FnMut(&mut Self, Type, &[Value]) -> Value,
    ) {
        let srcs = srcs.to_vec();
        self.for_count(dim / 4, |g, j| {
            let vals: Vec<Value> = srcs
                .iter()
                .map(|p| {
                    let a = g.offset(*p, j, 16);
                    g.load(V4, a, 0)
                })
                .collect();
            let r = f(g, V4, &vals);
            let o = g.offset(out, j, 16);
            g.store(r, o, 0);
        });
        for t in dim / 4 * 4..dim {
            let vals: Vec<Value> = srcs
                .iter()
                .map(|p| self.load(types::F32, *p, 4 * t as i64))
                .collect();
            let r = f(self, types::F32, &vals);
            self.store(r, out, 4 * t as i64);
        }
    }

    /// Sums over a row of `dim` floats: `f(g, ty, off, imm, accs)` folds
    /// the piece of type `ty` at byte offset `off + imm` into the `n`
    /// running sums `accs` (vectors over the first `dim / 4 * 4` floats,
    /// then scalars); returns the `n` totals.
    pub(super) fn row_sums(
        &mut self,
        dim: usize,
        n: usize,
        mut f: impl FnMut(&mut Self, Type, Value, i64, &[Value]) -> Vec<Value>,
    ) -> Vec<Value> {
        let zv = self.fconst(V4, 0.0);
        let accs: Vec<Variable> = (0..n).map(|_| self.var(V4, zv)).collect();
        self.for_count(dim / 4, |g, j| {
            let off = g.b.ins().imul_imm_s(j, 16);
            let cur: Vec<Value> = accs.iter().map(|a| g.b.use_var(*a)).collect();
            let next = f(g, V4, off, 0, &cur);
            for (a, v) in accs.iter().zip(next) {
                g.b.def_var(*a, v);
            }
        });
        let zs = self.fconst(types::F32, 0.0);
        let mut tail = vec![zs; n];
        let z = self.iconst(0);
        for t in dim / 4 * 4..dim {
            tail = f(self, types::F32, z, 4 * t as i64, &tail);
        }
        accs.iter()
            .zip(tail)
            .map(|(a, t)| {
                let v = self.b.use_var(*a);
                let h = self.hsum(v);
                self.b.ins().fadd(h, t)
            })
            .collect()
    }

    /// Runs `f(g, ty, off, imm)` over the pieces of a row of `dim` floats,
    /// like [`Gen::row_sums`].
    pub(super) fn row_each(&mut self, dim: usize, mut f: impl FnMut(&mut Self, Type, Value, i64)) {
        self.for_count(dim / 4, |g, j| {
            let off = g.b.ins().imul_imm_s(j, 16);
            f(g, V4, off, 0);
        });
        let z = self.iconst(0);
        for t in dim / 4 * 4..dim {
            f(self, types::F32, z, 4 * t as i64);
        }
    }

    /// `load(ty, base + off + imm)`.
    pub(super) fn load_at(&mut self, ty: Type, base: Value, off: Value, imm: i64) -> Value {
        let a = self.b.ins().iadd(base, off);
        self.load(ty, a, imm)
    }

    /// `store(v, base + off + imm)`.
    pub(super) fn store_at(&mut self, v: Value, base: Value, off: Value, imm: i64) {
        let a = self.b.ins().iadd(base, off);
        self.store(v, a, imm);
    }

    /// Dot product of two rows of `len` floats (4 vector accumulators,
    /// vector `v` into accumulator `v % 4`). Rows of 8 vectors or more run
    /// a loop over chunks of 4 vectors (unrolling a long row would only
    /// lengthen the code and its compile time), then the last vectors.
    pub(super) fn dot(&mut self, x: Value, y: Value, len: usize) -> Value {
        let nvec = len / 4;
        let zero = self.fconst(V4, 0.0);
        let mut accs = [zero; 4];
        let looped = if nvec >= 8 { nvec / 4 * 4 } else { 0 };
        if looped > 0 {
            let vars: Vec<Variable> = (0..4).map(|_| self.var(V4, zero)).collect();
            self.for_count(looped / 4, |g, j| {
                let off = g.b.ins().imul_imm_s(j, 64);
                for (u, acc) in vars.iter().enumerate() {
                    let a = g.load_at(V4, x, off, 16 * u as i64);
                    let b = g.load_at(V4, y, off, 16 * u as i64);
                    let cur = g.b.use_var(*acc);
                    let n = g.fma(a, b, cur);
                    g.b.def_var(*acc, n);
                }
            });
            for (a, v) in accs.iter_mut().zip(&vars) {
                *a = self.b.use_var(*v);
            }
        }
        for v in looped..nvec {
            let a = self.load(V4, x, 16 * v as i64);
            let b = self.load(V4, y, 16 * v as i64);
            accs[v % 4] = self.fma(a, b, accs[v % 4]);
        }
        let s01 = self.b.ins().fadd(accs[0], accs[1]);
        let s23 = self.b.ins().fadd(accs[2], accs[3]);
        let s = self.b.ins().fadd(s01, s23);
        let mut t = self.hsum(s);
        for i in nvec * 4..len {
            let a = self.load(types::F32, x, 4 * i as i64);
            let b = self.load(types::F32, y, 4 * i as i64);
            t = self.fma(a, b, t);
        }
        t
    }
}
