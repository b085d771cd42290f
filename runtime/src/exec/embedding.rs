//! Embeddings: the vocab-parallel `embedding` and the `embedding_bag`
//! tables placed over a stage's devices (table-wise, row-wise or
//! replicated, [`super::TableShard`]).
//!
//! A module of its own because the bag's placement helpers (who holds a
//! table, which rows) are shared with its backward pass in `grad.rs`.

use gantry_lang::program::{Op, OpKind};

use super::device::{Dev, Local};
use super::parallel::TableShard;
use crate::error::{RuntimeError, unsupported};
use crate::jit::KernelSpec;
use crate::layout::{Layout, block};

impl Dev<'_> {
    pub(super) fn embedding(
        &mut self,
        op: &Op,
        path: &[u64],
        vocab: usize,
        dim: usize,
    ) -> Result<Local, RuntimeError> {
        let rows = Layout::cols(self.par.tp).range(vocab, self.par.tp, self.t);
        let start = rows.start;
        let w = self.weights(op, path, |dev, ps| {
            vec![ps[0].block(&dev.init, op.output, path, rows.clone(), 0..dim)]
        });
        let ids = self.rep(op.inputs[0])?;
        let mut out = vec![0.0; if self.dry { 0 } else { self.numel(op.output) }];
        if self.dry {
            self.jit.prepare(&KernelSpec::Gather {
                dim,
                pooling: 1,
                stride: 1,
            })?;
        } else {
            let empty = Vec::new();
            self.jit.gather(
                dim,
                1,
                1,
                0,
                &ids,
                w.first().unwrap_or(&empty),
                vocab,
                start,
                &mut out,
            )?;
        }
        if self.layout(op.output) == Layout::Rows {
            // Sequence parallelism: the partial lookups are reduce-scattered
            // into the row blocks the residual stream is kept in.
            if !self.dry {
                out = self.endpoint()?.reduce_scatter(&self.tp_group(), &out)?;
            }
            return Ok(Local {
                layout: Layout::Rows,
                data: out,
            });
        }
        self.all_reduce_tp(&mut out)?;
        Ok(Local {
            layout: Layout::Rep,
            data: out,
        })
    }

    /// How table `i` of `n` is sharded over the `size` devices of a stage.
    pub(super) fn table_shard(&self, i: usize, size: usize) -> TableShard {
        match self.par.tables.get(i).copied() {
            _ if size == 1 => TableShard::Replicated,
            Some(TableShard::Table(o)) => TableShard::Table(o % size),
            Some(s) => s,
            None => TableShard::Table(i % size),
        }
    }

    /// The tables device `o` of the stage serves to others (held whole or
    /// by rows), in table order.
    pub(super) fn served_by(&self, o: usize, n: usize, size: usize) -> Vec<usize> {
        (0..n)
            .filter(|i| match self.table_shard(*i, size) {
                TableShard::Table(owner) => owner == o,
                TableShard::Row => true,
                TableShard::Replicated => false,
            })
            .collect()
    }

    /// The rows of table `i` (of `rows`) this device holds.
    pub(super) fn held_rows(
        &self,
        i: usize,
        rows: usize,
        size: usize,
        me: usize,
    ) -> std::ops::Range<usize> {
        match self.table_shard(i, size) {
            TableShard::Row => block(rows, size, me),
            TableShard::Table(o) if o != me => 0..0,
            _ => 0..rows,
        }
    }

    pub(super) fn embedding_bag(&mut self, op: &Op, path: &[u64]) -> Result<Local, RuntimeError> {
        let OpKind::EmbeddingBag { tables } = &op.kind else {
            return Err(unsupported("not an embedding_bag"));
        };
        let n = tables.len();
        let dim = tables.first().map_or(0, |t| t.dim as usize);
        let group = self.stage_group();
        let size = group.len();
        let me = group.iter().position(|r| *r == self.rank).unwrap_or(0);
        let held: Vec<std::ops::Range<usize>> = (0..n)
            .map(|i| self.held_rows(i, tables[i].rows as usize, size, me))
            .collect();
        let w = self.weights(op, path, |dev, ps| {
            (0..n)
                .map(|i| ps[i].block(&dev.init, op.output, path, held[i].clone(), 0..dim))
                .collect()
        });
        let ids = self.rep(op.inputs[0])?;
        let b = self.shapes[op.inputs[0].0 as usize][0];
        // Pooled (partial, for row-wise tables) vectors of `cols` for ids
        // laid out `[samples, cols.len()]`: `[samples, cols.len(), dim]`.
        let pool =
            |dev: &mut Self, ids: &[f32], cols: &[usize]| -> Result<Vec<f32>, RuntimeError> {
                let stride = cols.len();
                let samples = ids.len().checked_div(stride).unwrap_or(0);
                let mut out = vec![0.0; if dev.dry { 0 } else { samples * stride * dim }];
                for (j, ti) in cols.iter().enumerate() {
                    let t = &tables[*ti];
                    if dev.dry {
                        dev.jit.prepare(&KernelSpec::Gather {
                            dim,
                            pooling: t.pooling as usize,
                            stride,
                        })?;
                    } else {
                        dev.jit.gather(
                            dim,
                            t.pooling as usize,
                            stride,
                            j,
                            ids,
                            &w[*ti],
                            t.rows as usize,
                            held[*ti].start,
                            &mut out,
                        )?;
                    }
                }
                Ok(out)
            };
        let pick = |ids: &[f32], cols: &[usize]| -> Vec<f32> {
            (0..b)
                .flat_map(|s| cols.iter().map(move |c| ids[s * n + c]))
                .collect()
        };
        let mut out = vec![0.0; if self.dry { 0 } else { b * n * dim }];
        // Tables this device looks up itself.
        let local: Vec<usize> = (0..n)
            .filter(|i| self.table_shard(*i, size) == TableShard::Replicated)
            .collect();
        if !local.is_empty() {
            let ids_l = if self.dry {
                Vec::new()
            } else {
                pick(&ids, &local)
            };
            let pooled = pool(self, &ids_l, &local)?;
            for s in 0..b.min(pooled.len()) {
                for (j, c) in local.iter().enumerate() {
                    let src = &pooled[(s * local.len() + j) * dim..][..dim];
                    out[(s * n + c) * dim..][..dim].copy_from_slice(src);
                }
            }
        }
        if local.len() == n {
            return Ok(Local {
                layout: Layout::Rep,
                data: out,
            });
        }
        let served: Vec<Vec<usize>> = (0..size).map(|o| self.served_by(o, n, size)).collect();
        if self.dry {
            pool(self, &[], &served[me])?;
            return Ok(Local {
                layout: Layout::Rep,
                data: Vec::new(),
            });
        }
        // Ids out to the devices serving each table, pooled vectors back.
        let parts: Vec<Vec<f32>> = served.iter().map(|cols| pick(&ids, cols)).collect();
        self.label("embedding");
        let received = self.endpoint()?.all_to_all(&group, parts)?;
        let mut replies = Vec::with_capacity(size);
        for ids_q in &received {
            replies.push(pool(self, ids_q, &served[me])?);
        }
        let pooled = self.endpoint()?.all_to_all(&group, replies)?;
        for (o, p) in pooled.iter().enumerate() {
            let cols = &served[o];
            for s in 0..b {
                for (j, c) in cols.iter().enumerate() {
                    let src = &p[(s * cols.len() + j) * dim..][..dim];
                    for (a, x) in out[(s * n + c) * dim..][..dim].iter_mut().zip(src) {
                        *a += x;
                    }
                }
            }
        }
        Ok(Local {
            layout: Layout::Rep,
            data: out,
        })
    }
}
