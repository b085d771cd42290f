//! How a tensor is laid out across the tensor-parallel ranks of a stage.
//!
//! The layout type is the compiler's (`gantry_compiler::sharded::Layout`,
//! re-exported here): the runtime reads every layout from the sharded
//! program and has no rule or type of its own. A split may have fewer
//! blocks than ranks (`groups < tp`): ranks `t` with the same
//! `t / (tp / groups)` hold the same block, which is how key/value heads
//! are replicated when there are fewer of them than tensor-parallel ranks.
//! What is left here is data movement: the local part of a full tensor.

use std::ops::Range;

pub use gantry_compiler::sharded::{Layout, block};

/// The part of the full tensor `full` (rows of `width`) that `rank` of
/// `tp` holds in `layout`.
pub fn local_part(layout: Layout, full: &[f32], width: usize, tp: usize, rank: usize) -> Vec<f32> {
    match layout {
        Layout::Rows => full[block(full.len(), tp, rank)].to_vec(),
        _ => slice_cols(full, width, layout.range(width, tp, rank)),
    }
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
        let l = Layout::cols(2);
        assert_eq!(l.range(8, 4, 3), 4..8);
        assert_eq!(Layout::cols(1), Layout::Rep);
        let full = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        assert_eq!(
            local_part(Layout::Rows, &full, 2, 2, 1),
            vec![5.0, 6.0, 7.0, 8.0]
        );
        assert!(Layout::rows_fit(4, 2) && !Layout::rows_fit(3, 2) && !Layout::rows_fit(4, 1));
        assert_eq!(
            slice_cols(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 1..3),
            vec![2.0, 3.0, 5.0, 6.0]
        );
    }
}
