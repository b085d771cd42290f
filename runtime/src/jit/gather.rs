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

/// The gather kernel's arguments and shape, as its generators see them.
#[derive(Clone, Copy)]
struct Lookups {
    ids: Value,
    table: Value,
    out: Value,
    /// Lookups, the table's global rows, the first local row, local rows,
    /// the column of `ids` read.
    count: Value,
    total: Value,
    start: Value,
    local: Value,
    col: Value,
    /// `total - 1`, the largest id.
    last: Value,
    dim: usize,
    pooling: usize,
    stride: usize,
}

impl Lookups {
    fn row_bytes(&self) -> i64 {
        4 * self.dim as i64
    }

    /// Pieces of a row: (type, byte offset), vectors then scalars.
    fn pieces(&self) -> Vec<(Type, i64)> {
        let nvec = self.dim / 4;
        (0..nvec)
            .map(|v| (V4, 16 * v as i64))
            .chain((nvec * 4..self.dim).map(|t| (types::F32, 4 * t as i64)))
            .collect()
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
        let total = self.arg_int(ints, 1);
        let a = Lookups {
            ids: self.arg_ptr(ptrs, 0),
            table: self.arg_ptr(ptrs, 1),
            out: self.arg_ptr(ptrs, 2),
            count: self.arg_int(ints, 0),
            total,
            start: self.arg_int(ints, 2),
            local: self.arg_int(ints, 3),
            col: self.arg_int(ints, 4),
            last: self.b.ins().iadd_imm_s(total, -1),
            dim,
            pooling,
            stride,
        };
        let zero = self.iconst(0);
        match prefetch {
            Some(pf) => self.gather_prefetched(a, pf),
            None => {
                self.for_range(zero, a.count, 1, |g, r| g.gather_one(a, r));
            }
        }
    }

    /// Lookup `r`: its position in `ids` (and `out` rows), its first row
    /// relative to the local range, and whether that row is local.
    fn gather_lookup(&mut self, a: Lookups, r: Value) -> (Value, Value, Value) {
        let rs = self.b.ins().imul_imm_s(r, a.stride as i64);
        let pos = self.b.ins().iadd(rs, a.col);
        let ip = self.offset(a.ids, pos, 4);
        let idf = self.load(types::F32, ip, 0);
        let id = self.b.ins().fcvt_to_sint_sat(types::I64, idf);
        let z = self.iconst(0);
        let id = self.imax(id, z);
        let id = self.imin(id, a.last);
        let lrow = self.b.ins().isub(id, a.start);
        let inside = self.b.ins().icmp(IntCC::UnsignedLessThan, lrow, a.local);
        (pos, lrow, inside)
    }

    /// Lookup `r` into its output row.
    fn gather_one(&mut self, a: Lookups, r: Value) {
        let (pos, lrow, inside) = self.gather_lookup(a, r);
        let orow = self.offset(a.out, pos, a.row_bytes());
        if a.pooling == 1 {
            self.gather_copy(a, lrow, inside, orow);
        } else {
            self.gather_pooled(a, lrow, orow);
        }
    }

    /// A plain copy of the row (or zeros when it is not held here).
    fn gather_copy(&mut self, a: Lookups, lrow: Value, inside: Value, orow: Value) {
        let pieces = a.pieces();
        let tr = self.offset(a.table, lrow, a.row_bytes());
        self.if_else(
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
    }

    /// Chunks of up to 8 pieces accumulated over the pooled rows `id, id +
    /// 1, ...` (wrapping at `total`), the local ones only.
    fn gather_pooled(&mut self, a: Lookups, lrow: Value, orow: Value) {
        let id = self.b.ins().iadd(lrow, a.start);
        for chunk in a.pieces().chunks(8) {
            let accs: Vec<Variable> = chunk
                .iter()
                .map(|(ty, _)| {
                    let zc = self.fconst(*ty, 0.0);
                    self.var(*ty, zc)
                })
                .collect();
            let row = self.var(types::I64, id);
            self.for_count(a.pooling, |g, _| {
                let cur = g.b.use_var(row);
                let lrow = g.b.ins().isub(cur, a.start);
                let inside = g.b.ins().icmp(IntCC::UnsignedLessThan, lrow, a.local);
                g.if_then(inside, |g| {
                    let tr = g.offset(a.table, lrow, a.row_bytes());
                    for ((ty, o), acc) in chunk.iter().zip(&accs) {
                        let x = g.load(*ty, tr, *o);
                        let s = g.b.use_var(*acc);
                        let n = g.b.ins().fadd(s, x);
                        g.b.def_var(*acc, n);
                    }
                });
                let next = g.b.ins().iadd_imm_s(cur, 1);
                let wrap = g.b.ins().icmp(IntCC::Equal, next, a.total);
                let z = g.iconst(0);
                let next = g.b.ins().select(wrap, z, next);
                g.b.def_var(row, next);
            });
            for ((_, o), acc) in chunk.iter().zip(&accs) {
                let val = self.b.use_var(*acc);
                self.store(val, orow, *o);
            }
        }
    }

    /// Blocks of [`GATHER_BLOCK`] lookups, each after prefetching the rows
    /// of the block [`GATHER_AHEAD`] lookups further on.
    fn gather_prefetched(&mut self, a: Lookups, pf: FuncRef) {
        let slots = GATHER_AHEAD.max(GATHER_BLOCK);
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            8 * slots as u32,
            3,
        ));
        let p = Prefetch {
            f: pf,
            addrs: self.b.ins().stack_addr(self.ptr, slot, 0),
            end: self.offset(a.table, a.local, a.row_bytes()),
            bytes: self.iconst(PREFETCH_CAP.min(4 * a.dim * a.pooling) as i64),
        };
        let zero = self.iconst(0);
        let ahead = self.iconst(GATHER_AHEAD);
        self.gather_issue(a, p, zero, ahead);
        self.for_range(zero, a.count, GATHER_BLOCK, |g, b0| {
            let lo = g.b.ins().iadd_imm_s(b0, GATHER_AHEAD);
            let hi = g.b.ins().iadd_imm_s(lo, GATHER_BLOCK);
            g.gather_issue(a, p, lo, hi);
            let b1 = g.b.ins().iadd_imm_s(b0, GATHER_BLOCK);
            let b1 = g.imin(b1, a.count);
            g.for_range(b0, b1, 1, |g, r| g.gather_one(a, r));
        });
    }

    /// Prefetches the first rows of lookups `lo..hi` (`hi - lo <= slots`):
    /// their addresses (0 for rows not held here) into the stack array,
    /// then one call of the host function.
    fn gather_issue(&mut self, a: Lookups, p: Prefetch, lo: Value, hi: Value) {
        let hi = self.imin(hi, a.count);
        let n = self.b.ins().isub(hi, lo);
        let some = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, n, 0);
        self.if_then(some, |g| {
            g.for_range(lo, hi, 1, |g, j| {
                let (_, lrow, inside) = g.gather_lookup(a, j);
                let tr = g.offset(a.table, lrow, a.row_bytes());
                let z = g.iconst(0);
                let addr = g.b.ins().select(inside, tr, z);
                let k = g.b.ins().isub(j, lo);
                let at = g.offset(p.addrs, k, 8);
                g.store(addr, at, 0);
            });
            g.b.ins().call(p.f, &[p.addrs, n, p.bytes, p.end]);
        });
    }
}

/// The prefetch call's fixed operands.
#[derive(Clone, Copy)]
struct Prefetch {
    f: FuncRef,
    /// The stack array of addresses.
    addrs: Value,
    /// The end of the local table (prefetches stop there).
    end: Value,
    /// Bytes per row prefetched.
    bytes: Value,
}
