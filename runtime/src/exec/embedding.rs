//! Embeddings: the vocab-parallel `embedding` and the `embedding_bag`
//! tables placed over a stage's devices (table-wise, row-wise,
//! column-wise or replicated, [`super::TableShard`]).
//!
//! A module of its own because the bag's placement helpers (who holds a
//! table, which rows and columns) are shared with its backward pass in
//! `grad.rs`.

use gantry_lang::program::{Op, OpKind};

use super::device::{Dev, Local};
use super::parallel::{TableShard, column_slices};
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

    /// Whether device `o` of the stage holds a slice of column-wise table
    /// `i` (slices' ranks map to devices `rank mod size`).
    fn holds_columns(&self, i: usize, size: usize, o: usize) -> bool {
        self.par
            .column_slices
            .get(i)
            .is_some_and(|v| v.iter().any(|(r, _)| r % size.max(1) == o))
    }

    /// The tables device `o` of the stage serves to others (held whole, by
    /// rows or by columns), in table order.
    pub(super) fn served_by(&self, o: usize, n: usize, size: usize) -> Vec<usize> {
        (0..n)
            .filter(|i| match self.table_shard(*i, size) {
                TableShard::Table(owner) => owner == o,
                TableShard::Row => true,
                TableShard::Column => self.holds_columns(*i, size, o),
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
            TableShard::Column if !self.holds_columns(i, size, me) => 0..0,
            _ => 0..rows,
        }
    }

    /// The columns of table `i` (of `dim`) device `me` holds, in column
    /// order: its slices of a column-wise table (adjacent ones merged;
    /// none, or several ranges), or every column.
    pub(super) fn held_cols(
        &self,
        i: usize,
        dim: usize,
        size: usize,
        me: usize,
    ) -> Vec<std::ops::Range<usize>> {
        if self.table_shard(i, size) != TableShard::Column {
            return std::iter::once(0..dim).collect();
        }
        // Checked by `validate` (R003): the slices tile the columns.
        column_slices(self.par, i, size, dim, "")
            .unwrap_or_default()
            .into_iter()
            .filter(|(d, _)| *d == me)
            .map(|(_, c)| c)
            .collect()
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
        let held_cols: Vec<Vec<std::ops::Range<usize>>> =
            (0..n).map(|i| self.held_cols(i, dim, size, me)).collect();
        // Each table's block `[rows, columns]`: the held rows, and the held
        // columns side by side (a device's column slices of a table).
        let w = self.weights(op, path, |dev, ps| {
            (0..n)
                .map(|i| {
                    let blocks: Vec<Vec<f32>> = held_cols[i]
                        .iter()
                        .map(|c| {
                            ps[i].block(&dev.init, op.output, path, held[i].clone(), c.clone())
                        })
                        .collect();
                    if blocks.len() == 1 {
                        return blocks.into_iter().next().unwrap_or_default();
                    }
                    let mut w = Vec::with_capacity(blocks.iter().map(Vec::len).sum());
                    for r in 0..held[i].len() {
                        for (c, b) in held_cols[i].iter().zip(&blocks) {
                            w.extend_from_slice(&b[r * c.len()..(r + 1) * c.len()]);
                        }
                    }
                    w
                })
                .collect()
        });
        let ids = self.rep(op.inputs[0])?;
        let b = self.shapes[op.inputs[0].0 as usize][0];
        // Pooled (partial, for row- and column-wise tables) vectors of
        // `cols` for ids laid out `[samples, cols.len()]`: per sample, the
        // columns this device holds of each table in turn (`[samples,
        // cols.len(), dim]` where it holds every column). A device's
        // column slices of a table are pooled together at their width.
        let pool =
            |dev: &mut Self, ids: &[f32], cols: &[usize]| -> Result<Vec<f32>, RuntimeError> {
                let stride = cols.len();
                let samples = ids.len().checked_div(stride).unwrap_or(0);
                let widths: Vec<usize> = cols
                    .iter()
                    .map(|ti| held_cols[*ti].iter().map(|c| c.len()).sum())
                    .collect();
                let row: usize = widths.iter().sum();
                let whole = widths.iter().all(|x| *x == dim);
                let mut out = vec![0.0; if dev.dry { 0 } else { samples * row }];
                let mut at = 0;
                for ((j, ti), width) in cols.iter().enumerate().zip(widths) {
                    let t = &tables[*ti];
                    let (from, to) = (at, at + width);
                    at = to;
                    if width == 0 {
                        continue;
                    }
                    if dev.dry {
                        dev.jit.prepare(&KernelSpec::Gather {
                            dim: width,
                            pooling: t.pooling as usize,
                            stride,
                        })?;
                        continue;
                    }
                    let mut part = if whole {
                        Vec::new()
                    } else {
                        vec![0.0; samples * stride * width]
                    };
                    dev.jit.gather(
                        width,
                        t.pooling as usize,
                        stride,
                        j,
                        ids,
                        &w[*ti],
                        t.rows as usize,
                        held[*ti].start,
                        if whole { &mut out } else { &mut part },
                    )?;
                    if !whole {
                        for s in 0..samples {
                            out[s * row + from..s * row + to]
                                .copy_from_slice(&part[(s * stride + j) * width..][..width]);
                        }
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
        // Ids out to the devices serving each table (TorchRec's input
        // all-to-all; under model-parallel input each server's loader
        // reads them, handed over here as `input`), pooled vectors back.
        let parts: Vec<Vec<f32>> = served.iter().map(|cols| pick(&ids, cols)).collect();
        self.label(self.par.ids_label());
        let received = self.endpoint()?.all_to_all(&group, parts)?;
        let mut replies = Vec::with_capacity(size);
        for ids_q in &received {
            replies.push(pool(self, ids_q, &served[me])?);
        }
        if self.grad {
            self.emb_ids
                .insert((self.mb, op.output.0, path.to_vec()), received);
        }
        self.label("embedding");
        let pooled = self.endpoint()?.all_to_all(&group, replies)?;
        // Each server's reply carries the columns it holds of its tables
        // (all of them but for column-wise tables): summed into place.
        for (o, p) in pooled.iter().enumerate() {
            let held_o: Vec<Vec<std::ops::Range<usize>>> = served[o]
                .iter()
                .map(|ti| self.held_cols(*ti, dim, size, o))
                .collect();
            let mut at = 0;
            for s in 0..b {
                for (ti, cs) in served[o].iter().zip(&held_o) {
                    let row = &mut out[(s * n + ti) * dim..][..dim];
                    for c in cs {
                        for (a, x) in row[c.clone()].iter_mut().zip(&p[at..at + c.len()]) {
                            *a += x;
                        }
                        at += c.len();
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
