//! Embedding lookups and bags: pooled rows of a (possibly sharded) table,
//! read at ids, with the host prefetch that keeps many rows in flight.
//!
//! The gather kernel calls one host function, `host_prefetch` (Cranelift
//! has no prefetch instruction): it prefetches the table rows of lookups a
//! block ahead, hints that read nothing and never fault. Shaped so: the
//! host function, its `unsafe` and the kernel that calls it are together;
//! the context only registers the symbol.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    FuncRef, InstBuilder, StackSlotData, StackSlotKind, Type, Value, types,
};
use cranelift_frontend::Variable;

use super::codegen::{Gen, V4};
use super::context::{Jit, buffer_err, check};
use super::spec::KernelSpec;
use crate::error::RuntimeError;

/// Lookups per block of the gather kernel: one call prefetches the rows
/// of a later block, then the block is copied.
pub(super) const GATHER_BLOCK: i64 = 8;
/// Lookups between a row's prefetch and its copy (a multiple of
/// [`GATHER_BLOCK`]): about the rows in flight from memory.
pub(super) const GATHER_AHEAD: i64 = 16;
/// Most bytes prefetched per lookup (the start of a pooled run of rows;
/// the hardware prefetcher streams the rest).
pub(super) const PREFETCH_CAP: usize = 1024;

/// The gather kernel's prefetch: `bytes` from each of the `n` addresses
/// in `addrs` (0: none), clipped at `end`, into the L2 cache (`T1`: on
/// this host `T0` is slower for random rows from DRAM). Prefetches are
/// hints: they read no data and never fault, whatever the address.
#[cfg(target_arch = "x86_64")]
pub(super) extern "C" fn host_prefetch(addrs: *const usize, n: i64, bytes: i64, end: usize) {
    use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
    for i in 0..n.max(0) as usize {
        // SAFETY: the kernel passes its stack array of at least `n`
        // addresses (see `Gen::gather`).
        let a = unsafe { *addrs.add(i) };
        if a == 0 {
            continue;
        }
        let stop = end.min(a.saturating_add(bytes.max(0) as usize));
        // From the start of the first line (rows need not be aligned).
        let mut p = a & !63;
        while p < stop {
            // SAFETY: a prefetch is a hint: it reads nothing and never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(p as *const i8) };
            p += 64;
        }
    }
}

impl Jit {
    /// Pooled lookups: for each of the `out.len() / dim` lookup rows `r`,
    /// id `i = ids[r * stride + col]` (clamped to `0..total_rows`) sums
    /// rows `(i + p) mod total_rows` for `p < pooling`, counting only those
    /// in `start..start + table.len() / dim` (the locally held rows).
    #[allow(clippy::too_many_arguments)]
    pub fn gather(
        &mut self,
        dim: usize,
        pooling: usize,
        stride: usize,
        col: usize,
        ids: &[f32],
        table: &[f32],
        total_rows: usize,
        start: usize,
        out: &mut [f32],
    ) -> Result<(), RuntimeError> {
        let spec = KernelSpec::Gather {
            dim,
            pooling,
            stride,
        };
        let nm = spec.name();
        if dim == 0 || stride == 0 || col >= stride {
            return Err(buffer_err(
                &nm,
                "a column below the stride",
                col + 1,
                stride,
            ));
        }
        let count = ids.len() / stride;
        check(&nm, "ids", count * stride, ids.len())?;
        let local = table.len() / dim;
        check(
            &nm,
            "out",
            (count.saturating_sub(1) * stride + col + 1) * dim,
            out.len(),
        )?;
        if count == 0 {
            return Ok(());
        }
        self.call(
            &spec,
            &[
                ids.as_ptr() as *mut f32,
                table.as_ptr() as *mut f32,
                out.as_mut_ptr(),
            ],
            &[
                count as i64,
                total_rows.max(1) as i64,
                start as i64,
                local as i64,
                col as i64,
            ],
        )
    }
}

impl Gen<'_> {
    /// Pooled row lookups. With `prefetch` (a host function, see
    /// `host_prefetch`), lookups go in blocks of [`GATHER_BLOCK`]: before
    /// copying a block, one call prefetches the rows of the lookups
    /// [`GATHER_AHEAD`] further on, so that many rows are in flight from
    /// memory at once instead of the few the out-of-order window holds
    /// (each row costs 16 loads and 16 stores at 128 bits).
    pub(super) fn gather(
        &mut self,
        ptrs: Value,
        ints: Value,
        dim: usize,
        pooling: usize,
        stride: usize,
        prefetch: Option<FuncRef>,
    ) {
        let ids = self.arg_ptr(ptrs, 0);
        let table = self.arg_ptr(ptrs, 1);
        let out = self.arg_ptr(ptrs, 2);
        let count = self.arg_int(ints, 0);
        let total = self.arg_int(ints, 1);
        let start = self.arg_int(ints, 2);
        let local = self.arg_int(ints, 3);
        let col = self.arg_int(ints, 4);
        let zero = self.iconst(0);
        let last = self.b.ins().iadd_imm_s(total, -1);
        let row_bytes = 4 * dim as i64;
        let nvec = dim / 4;
        // Pieces of a row: (type, byte offset).
        let pieces: Vec<(Type, i64)> = (0..nvec)
            .map(|v| (V4, 16 * v as i64))
            .chain((nvec * 4..dim).map(|t| (types::F32, 4 * t as i64)))
            .collect();
        // Lookup `r`: its position in `ids` (and `out` rows), its first
        // row relative to the local range, and whether that row is local.
        let lookup = |g: &mut Self, r: Value| -> (Value, Value, Value) {
            let rs = g.b.ins().imul_imm_s(r, stride as i64);
            let pos = g.b.ins().iadd(rs, col);
            let ip = g.offset(ids, pos, 4);
            let idf = g.load(types::F32, ip, 0);
            let id = g.b.ins().fcvt_to_sint_sat(types::I64, idf);
            let z = g.iconst(0);
            let id = g.imax(id, z);
            let id = g.imin(id, last);
            let lrow = g.b.ins().isub(id, start);
            let inside = g.b.ins().icmp(IntCC::UnsignedLessThan, lrow, local);
            (pos, lrow, inside)
        };
        let mut body = |g: &mut Self, r: Value| {
            let (pos, lrow, inside) = lookup(g, r);
            let orow = g.offset(out, pos, row_bytes);
            if pooling == 1 {
                // A plain copy of the row (or zeros when it is not held here).
                let tr = g.offset(table, lrow, row_bytes);
                g.if_else(
                    inside,
                    |g| {
                        for chunk in pieces.chunks(8) {
                            let vals: Vec<Value> =
                                chunk.iter().map(|(ty, o)| g.load(*ty, tr, *o)).collect();
                            for ((_, o), v) in chunk.iter().zip(vals) {
                                g.store(v, orow, *o);
                            }
                        }
                    },
                    |g| {
                        let zv = g.fconst(V4, 0.0);
                        let zs = g.fconst(types::F32, 0.0);
                        for (ty, o) in &pieces {
                            g.store(if *ty == V4 { zv } else { zs }, orow, *o);
                        }
                    },
                );
                return;
            }
            // Chunks of up to 8 pieces accumulated over the pooled rows
            // `id, id + 1, ...` (wrapping at `total`).
            let id = g.b.ins().iadd(lrow, start);
            for chunk in pieces.chunks(8) {
                let accs: Vec<Variable> = chunk
                    .iter()
                    .map(|(ty, _)| {
                        let zc = g.fconst(*ty, 0.0);
                        g.var(*ty, zc)
                    })
                    .collect();
                let row = g.var(types::I64, id);
                g.for_count(pooling, |g, _| {
                    let cur = g.b.use_var(row);
                    let lrow = g.b.ins().isub(cur, start);
                    let inside = g.b.ins().icmp(IntCC::UnsignedLessThan, lrow, local);
                    g.if_then(inside, |g| {
                        let tr = g.offset(table, lrow, row_bytes);
                        for ((ty, o), acc) in chunk.iter().zip(&accs) {
                            let x = g.load(*ty, tr, *o);
                            let a = g.b.use_var(*acc);
                            let n = g.b.ins().fadd(a, x);
                            g.b.def_var(*acc, n);
                        }
                    });
                    let next = g.b.ins().iadd_imm_s(cur, 1);
                    let wrap = g.b.ins().icmp(IntCC::Equal, next, total);
                    let z = g.iconst(0);
                    let next = g.b.ins().select(wrap, z, next);
                    g.b.def_var(row, next);
                });
                for ((_, o), acc) in chunk.iter().zip(&accs) {
                    let val = g.b.use_var(*acc);
                    g.store(val, orow, *o);
                }
            }
        };
        let Some(pf) = prefetch else {
            self.for_range(zero, count, 1, body);
            return;
        };
        let slots = GATHER_AHEAD.max(GATHER_BLOCK);
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            8 * slots as u32,
            3,
        ));
        let addrs = self.b.ins().stack_addr(self.ptr, slot, 0);
        let end = self.offset(table, local, row_bytes);
        let bytes = self.iconst(PREFETCH_CAP.min(4 * dim * pooling) as i64);
        // Prefetches the first rows of lookups `lo..hi` (`hi - lo <= slots`).
        let issue = |g: &mut Self, lo: Value, hi: Value| {
            let hi = g.imin(hi, count);
            let n = g.b.ins().isub(hi, lo);
            let some = g.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, n, 0);
            g.if_then(some, |g| {
                g.for_range(lo, hi, 1, |g, j| {
                    let (_, lrow, inside) = lookup(g, j);
                    let tr = g.offset(table, lrow, row_bytes);
                    let z = g.iconst(0);
                    let a = g.b.ins().select(inside, tr, z);
                    let k = g.b.ins().isub(j, lo);
                    let at = g.offset(addrs, k, 8);
                    g.store(a, at, 0);
                });
                g.b.ins().call(pf, &[addrs, n, bytes, end]);
            });
        };
        let ahead = self.iconst(GATHER_AHEAD);
        issue(self, zero, ahead);
        self.for_range(zero, count, GATHER_BLOCK, |g, b0| {
            let lo = g.b.ins().iadd_imm_s(b0, GATHER_AHEAD);
            let hi = g.b.ins().iadd_imm_s(lo, GATHER_BLOCK);
            issue(g, lo, hi);
            let b1 = g.b.ins().iadd_imm_s(b0, GATHER_BLOCK);
            let b1 = g.imin(b1, count);
            g.for_range(b0, b1, 1, &mut body);
        });
    }
}
