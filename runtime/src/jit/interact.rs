//! The DLRM interaction: the dense vector, then the pairwise dot products
//! of the dense and the pooled sparse vectors of each sample.
//!
//! Shaped so: small and standalone; its dot product is the shared
//! [`Gen::dot`] of [`super::codegen`].

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, Value, types};

use super::codegen::Gen;
use super::context::{Jit, check};
use super::spec::KernelSpec;
use crate::error::RuntimeError;

impl Jit {
    /// DLRM interaction: `dense [batch, dim]`, `sparse [batch, n, dim]`,
    /// `out [batch, dim + (n+1)n/2]`.
    pub fn interact(
        &mut self,
        n: usize,
        dim: usize,
        batch: usize,
        dense: &[f32],
        sparse: &[f32],
        out: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let spec = KernelSpec::Interact { n, dim };
        let nm = spec.name();
        check(&nm, "dense", batch * dim, dense.len())?;
        check(&nm, "sparse", batch * n * dim, sparse.len())?;
        check(&nm, "out", batch * (dim + (n + 1) * n / 2), out.len())?;
        if batch == 0 {
            return Ok(());
        }
        self.call(
            &spec,
            &[
                dense.as_ptr() as *mut f32,
                sparse.as_ptr() as *mut f32,
                out.as_mut_ptr(),
            ],
            &[batch as i64],
        )
    }
}

impl Gen<'_> {
    pub(super) fn interact(&mut self, ptrs: Value, ints: Value, n: usize, dim: usize) {
        let dense = self.arg_ptr(ptrs, 0);
        let sparse = self.arg_ptr(ptrs, 1);
        let out = self.arg_ptr(ptrs, 2);
        let batch = self.arg_int(ints, 0);
        let vecs = n + 1;
        let width = dim + vecs * (vecs - 1) / 2;
        let zero = self.iconst(0);
        self.for_range(zero, batch, 1, |g, s| {
            let drow = g.offset(dense, s, 4 * dim as i64);
            let srow = g.offset(sparse, s, 4 * (n * dim) as i64);
            let orow = g.offset(out, s, 4 * width as i64);
            g.map_row(&[drow], orow, dim, |_, _, v| v[0]);
            let first = g.iconst(dim as i64);
            let idx = g.var(types::I64, first);
            g.for_count(vecs, |g, i| {
                // v_0 is the dense row, v_i (i >= 1) row i - 1 of the sparse block.
                let im1 = g.b.ins().iadd_imm_s(i, -1);
                let sp = g.offset(srow, im1, 4 * dim as i64);
                let is0 = g.b.ins().icmp_imm_s(IntCC::Equal, i, 0);
                let vi = g.b.ins().select(is0, drow, sp);
                let j0 = g.b.ins().iadd_imm_s(i, 1);
                let e = g.iconst(vecs as i64);
                g.for_range(j0, e, 1, |g, j| {
                    let jm1 = g.b.ins().iadd_imm_s(j, -1);
                    let vj = g.offset(srow, jm1, 4 * dim as i64);
                    let d = g.dot(vi, vj, dim);
                    let cur = g.b.use_var(idx);
                    let o = g.offset(orow, cur, 4);
                    g.store(d, o, 0);
                    let nx = g.b.ins().iadd_imm_s(cur, 1);
                    g.b.def_var(idx, nx);
                });
            });
        });
    }
}
