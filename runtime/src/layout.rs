//! How a tensor is laid out across the tensor-parallel ranks of a stage.
//!
//! The runtime follows the compiler's propagation rule (compiler/src/ir.rs):
//! a linear whose input is replicated is column-parallel and leaves its
//! output split along the last axis; a linear whose input is split is
//! row-parallel and all-reduces; attention splits heads; elementwise ops
//! follow their inputs. A split may have fewer blocks than ranks
//! (`groups < tp`): ranks `t` with the same `t / (tp / groups)` hold the
//! same block, which is how key/value heads are replicated when there are
//! fewer of them than tensor-parallel ranks.

use std::ops::Range;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Every rank holds the whole tensor.
    Rep,
    /// The last axis is cut into `groups` contiguous blocks.
    Split { groups: usize },
    /// Sequence parallelism: the rows (the flattened tensor) are cut into
    /// `tp` contiguous blocks, rank `t` holding block `t`; only used when
    /// the blocks fall on row boundaries.
    Rows,
}

impl Layout {
    /// A split into one block is no split.
    pub fn split(groups: usize) -> Layout {
        if groups <= 1 {
            Layout::Rep
        } else {
            Layout::Split { groups }
        }
    }
    /// The block held by tensor-parallel rank `rank` of `tp`.
    pub fn block_of(self, tp: usize, rank: usize) -> usize {
        match self {
            Layout::Rep => 0,
            Layout::Split { groups } => rank / (tp / groups).max(1),
            Layout::Rows => rank,
        }
    }
    /// The range of the last axis (of length `len`) that `rank` holds.
    pub fn range(self, len: usize, tp: usize, rank: usize) -> Range<usize> {
        match self {
            Layout::Rep | Layout::Rows => 0..len,
            Layout::Split { groups } => block(len, groups, self.block_of(tp, rank)),
        }
    }
    /// A number for messages: 0 for `Rep`, -1 for `Rows`, else the block
    /// count.
    pub fn code(self) -> f32 {
        match self {
            Layout::Rep => 0.0,
            Layout::Rows => -1.0,
            Layout::Split { groups } => groups as f32,
        }
    }
    /// The layout of a message's code (see [`Layout::code`]).
    pub fn from_code(code: f32) -> Layout {
        if code < 0.0 {
            Layout::Rows
        } else {
            Layout::split(code as usize)
        }
    }
    /// The part of the full tensor `full` (rows of `width`) that `rank` of
    /// `tp` holds.
    pub fn local_part(self, full: &[f32], width: usize, tp: usize, rank: usize) -> Vec<f32> {
        match self {
            Layout::Rows => full[block(full.len(), tp, rank)].to_vec(),
            _ => slice_cols(full, width, self.range(width, tp, rank)),
        }
    }
    /// Whether `rows` rows cut into `tp` row blocks fall on row boundaries
    /// (so that [`Layout::Rows`] can hold them).
    pub fn rows_fit(rows: usize, tp: usize) -> bool {
        tp > 1 && rows.is_multiple_of(tp)
    }
}

/// Block `i` of `len` cut into `parts` nearly equal contiguous blocks.
pub fn block(len: usize, parts: usize, i: usize) -> Range<usize> {
    let parts = parts.max(1);
    (i * len / parts)..((i + 1) * len / parts)
}

/// Columns `cols` of every row of a row-major tensor whose rows have `width` entries.
pub fn slice_cols(data: &[f32], width: usize, cols: Range<usize>) -> Vec<f32> {
    if cols.start == 0 && cols.end == width {
        return data.to_vec();
    }
    let rows = data.len() / width.max(1);
    let mut out = Vec::with_capacity(rows * cols.len());
    for r in 0..rows {
        out.extend_from_slice(&data[r * width + cols.start..r * width + cols.end]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_tile_the_axis() {
        for len in 0..20 {
            for parts in 1..6 {
                let mut next = 0;
                for i in 0..parts {
                    let b = block(len, parts, i);
                    assert_eq!(b.start, next);
                    next = b.end;
                }
                assert_eq!(next, len);
            }
        }
        let l = Layout::split(2);
        assert_eq!(l.range(8, 4, 3), 4..8);
        assert_eq!(Layout::split(1), Layout::Rep);
        let full = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        assert_eq!(
            Layout::Rows.local_part(&full, 2, 2, 1),
            vec![5.0, 6.0, 7.0, 8.0]
        );
        assert!(Layout::rows_fit(4, 2) && !Layout::rows_fit(3, 2) && !Layout::rows_fit(4, 1));
        assert_eq!(
            slice_cols(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 1..3),
            vec![2.0, 3.0, 5.0, 6.0]
        );
    }
}
