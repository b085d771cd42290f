//! Matrix products: `c [m, n] = a [m, k] @ packed(b) [k, n] (+ bias)`.
//!
//! The right-hand matrix is read *packed* ([`pack_b`]): panels of [`NR`]
//! columns, each `k` rows of `NR` contiguous floats, zero-padded, so that
//! the micro-kernel streams it linearly. Weights are packed once when they
//! are made. Shaped so: the packing layout, its length, the entry point
//! and the micro-kernel that reads it are one unit; changing the panel
//! width touches only this file. Like every kernel, these are compiled
//! with `opt_level=none`, which the micro-kernel relies on: see
//! [`Gen::micro`].

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value, types};
use cranelift_frontend::Variable;

use super::codegen::{Gen, V4};
use super::context::{Jit, check};
use super::spec::KernelSpec;
use crate::error::RuntimeError;

/// Columns per packed panel of a matrix product's right-hand side.
pub const NR: usize = 8;
/// Rows of the matrix-product micro-kernel (4 x 8: 8 accumulator registers).
pub(super) const MR: usize = 4;
/// Steps of `k` per iteration of the micro-kernel's loop.
pub(super) const KU: usize = 2;
/// Rows per cache block of the left-hand side.
pub(super) const MC: i64 = 48;

impl Jit {
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &mut self,
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        packed_b: &[f32],
        bias: Option<&[f32]>,
        c: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let spec = KernelSpec::MatMul {
            k,
            n,
            bias: bias.is_some(),
        };
        let nm = spec.name();
        check(&nm, "a", m * k, a.len())?;
        check(&nm, "packed b", packed_len(k, n), packed_b.len())?;
        check(&nm, "c", m * n, c.len())?;
        if let Some(b) = bias {
            check(&nm, "bias", n, b.len())?;
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let bias_ptr = bias.map_or(std::ptr::null_mut(), |b| b.as_ptr() as *mut f32);
        self.call(
            &spec,
            &[
                a.as_ptr() as *mut f32,
                packed_b.as_ptr() as *mut f32,
                bias_ptr,
                c.as_mut_ptr(),
            ],
            &[m as i64],
        )
    }
}

/// Length of `b [k, n]` packed by [`pack_b`].
pub fn packed_len(k: usize, n: usize) -> usize {
    n.div_ceil(NR) * NR * k
}

/// Packs a row-major `b [k, n]` into panels of [`NR`] columns: panel `p`
/// holds rows `0..k` of columns `p*NR..p*NR+NR`, zero-padded.
pub fn pack_b(b: &[f32], k: usize, n: usize) -> Vec<f32> {
    let panels = n.div_ceil(NR);
    let mut out = vec![0.0f32; panels * NR * k];
    // Row by row, so that `b` is read in order (a panel at a time would
    // read one float run per row, a page apart for wide matrices).
    for (kk, row) in b.chunks_exact(n.max(1)).take(k).enumerate() {
        for (p, cols) in row.chunks(NR).enumerate() {
            let at = (p * k + kk) * NR;
            out[at..at + cols.len()].copy_from_slice(cols);
        }
    }
    out
}

impl Gen<'_> {
    /// One micro-tile: `rows` rows from `a_row`, one panel of packed `b`,
    /// into `c_row`; `width` valid columns (`NR` for a full panel).
    ///
    /// Compiled without the mid-end optimizer, so the code keeps this
    /// order: per step, the panel's `NR / 4` vectors, then per row one
    /// broadcast of A and its `fma`s. The accumulators are variables, never
    /// memory; the loop bumps the A and B pointers and compares B against
    /// its end. `KU` steps per iteration let the register allocator
    /// alternate each accumulator between two registers (`vfmadd213ps`
    /// writes over a multiplicand, not the addend) instead of copying it
    /// back at the loop edge.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn micro(
        &mut self,
        a_row: Value,
        panel: Value,
        c_row: Value,
        bias: Option<Value>,
        rows: usize,
        k: usize,
        n: usize,
        width: usize,
    ) {
        let nv = NR / 4;
        let zero = self.fconst(V4, 0.0);
        let accs: Vec<Vec<Variable>> = (0..rows)
            .map(|_| (0..nv).map(|_| self.var(V4, zero)).collect())
            .collect();
        let lda = 4 * k as i64;
        let step = |g: &mut Self, a: Value, b: Value, u: i64| {
            let bv: Vec<Value> = (0..nv)
                .map(|v| g.load(V4, b, 4 * (u * NR as i64) + 16 * v as i64))
                .collect();
            for (r, acc_r) in accs.iter().enumerate() {
                let s = g.load(types::F32, a, r as i64 * lda + 4 * u);
                let av = g.b.ins().splat(V4, s);
                for (v, acc) in acc_r.iter().enumerate() {
                    let cur = g.b.use_var(*acc);
                    let nx = g.fma(av, bv[v], cur);
                    g.b.def_var(*acc, nx);
                }
            }
        };
        let pa = self.var(self.ptr, a_row);
        let pb = self.var(self.ptr, panel);
        let main = k / KU * KU;
        if main > 0 {
            // A bottom-tested loop (it runs at least once): one compare and
            // one branch per KU steps.
            let bstep = 4 * (KU * NR) as i64;
            let end = self.b.ins().iadd_imm_s(panel, 4 * (main * NR) as i64);
            let body = self.b.create_block();
            let exit = self.b.create_block();
            self.b.ins().jump(body, &[]);
            self.b.switch_to_block(body);
            let a = self.b.use_var(pa);
            let b = self.b.use_var(pb);
            for u in 0..KU {
                step(self, a, b, u as i64);
            }
            let a2 = self.b.ins().iadd_imm_s(a, 4 * KU as i64);
            self.b.def_var(pa, a2);
            let b2 = self.b.ins().iadd_imm_s(b, bstep);
            self.b.def_var(pb, b2);
            let go = self.b.ins().icmp(IntCC::UnsignedLessThan, b2, end);
            self.b.ins().brif(go, body, &[], exit, &[]);
            self.b.switch_to_block(exit);
        }
        let a = self.b.use_var(pa);
        let b = self.b.use_var(pb);
        for u in 0..k - main {
            step(self, a, b, u as i64);
        }
        let ldc = 4 * n as i64;
        for (r, acc_r) in accs.iter().enumerate() {
            for (v, acc) in acc_r.iter().enumerate() {
                let mut val = self.b.use_var(*acc);
                if width == NR {
                    if let Some(bp) = bias {
                        let bv = self.load(V4, bp, 16 * v as i64);
                        val = self.b.ins().fadd(val, bv);
                    }
                    self.store(val, c_row, r as i64 * ldc + 16 * v as i64);
                } else {
                    for lane in 0..4 {
                        let col = 4 * v + lane;
                        if col >= width {
                            break;
                        }
                        let mut s = self.b.ins().extractlane(val, lane as u8);
                        if let Some(bp) = bias {
                            let bs = self.load(types::F32, bp, 4 * col as i64);
                            s = self.b.ins().fadd(s, bs);
                        }
                        self.store(s, c_row, r as i64 * ldc + 4 * col as i64);
                    }
                }
            }
        }
    }

    pub(super) fn matmul(&mut self, ptrs: Value, ints: Value, k: usize, n: usize, has_bias: bool) {
        let a = self.arg_ptr(ptrs, 0);
        let bp = self.arg_ptr(ptrs, 1);
        let bias = if has_bias {
            Some(self.arg_ptr(ptrs, 2))
        } else {
            None
        };
        let c = self.arg_ptr(ptrs, 3);
        let m = self.arg_int(ints, 0);
        let zero = self.iconst(0);
        let full = n / NR;
        let tail = n % NR;
        let mr = MR;
        self.for_range(zero, m, MC, |g, i0| {
            let i0_mc = g.b.ins().iadd_imm_s(i0, MC);
            let iend = g.imin(i0_mc, m);
            let panel = |g: &mut Self, p: Value, width: usize| {
                let pb = g.offset(bp, p, 4 * (k * NR) as i64);
                let pbias = bias.map(|bb| g.offset(bb, p, 4 * NR as i64));
                let cp = g.offset(c, p, 4 * NR as i64);
                let end_mr = g.b.ins().iadd_imm_s(iend, -(mr as i64 - 1));
                let i = g.for_range(i0, end_mr, mr as i64, |g, i| {
                    let ar = g.offset(a, i, 4 * k as i64);
                    let cr = g.offset(cp, i, 4 * n as i64);
                    g.micro(ar, pb, cr, pbias, mr, k, n, width);
                });
                // The last 1..MR-1 rows in one tile of exactly that many
                // rows, so that the panel is read once more, not once per row.
                let ar = g.offset(a, i, 4 * k as i64);
                let cr = g.offset(cp, i, 4 * n as i64);
                let rem = g.b.ins().isub(iend, i);
                for rows in (1..mr).rev() {
                    let is = g.b.ins().icmp_imm_s(IntCC::Equal, rem, rows as i64);
                    g.if_then(is, |g| g.micro(ar, pb, cr, pbias, rows, k, n, width));
                }
            };
            if full > 0 {
                let z = g.iconst(0);
                let e = g.iconst(full as i64);
                g.for_range(z, e, 1, |g, p| panel(g, p, NR));
            }
            if tail > 0 {
                let p = g.iconst(full as i64);
                panel(g, p, tail);
            }
        });
    }
}
