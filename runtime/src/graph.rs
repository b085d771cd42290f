//! Facts about a model graph that both execution paths share: concrete
//! shapes under a binding, the parameters each op owns (their shapes and
//! how they are initialized) and the values of graph inputs.
//!
//! Only *what* the weights and inputs are lives here, never how an op
//! computes, so the reference interpreter and the sharded executor stay
//! independent while agreeing on the numbers they start from.

use std::collections::BTreeMap;

use gantry_lang::program::{Graph, Item, OpKind, TensorId};
use gantry_lang::shape::Shape;

use crate::error::{RCode, RuntimeError, unsupported};
use crate::init::{Init, Key};

/// Norm epsilon (both `rmsnorm` and `layernorm`).
pub const NORM_EPS: f32 = 1e-5;

/// Concrete shapes of every tensor under `bindings`.
pub fn shapes(
    graph: &Graph,
    bindings: &BTreeMap<String, i64>,
) -> Result<Vec<Vec<usize>>, RuntimeError> {
    graph
        .tensors
        .iter()
        .map(|t| {
            let dims = t.shape.eval(bindings).ok_or_else(|| {
                unsupported(format!(
                    "tensor `{}` has shape {} with a symbol the workload does not bind",
                    t.name, t.shape
                ))
            })?;
            dims.iter()
                .map(|d| {
                    usize::try_from(*d)
                        .ok()
                        .filter(|d| *d > 0 || dims.is_empty())
                })
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| {
                    unsupported(format!(
                        "tensor `{}` has a non-positive dimension under the binding",
                        t.name
                    ))
                })
                .and_then(|dims| match checked_numel(&dims) {
                    Some(_) => Ok(dims),
                    None => Err(too_many_elements(&t.name, &dims)),
                })
        })
        .collect()
}

/// R007 for a tensor whose element count overflows (or exceeds
/// [`MAX_ELEMENTS`]): refused before any size computed from it wraps.
fn too_many_elements(name: &str, dims: &[usize]) -> RuntimeError {
    RuntimeError::new(
        RCode::R007,
        format!(
            "tensor `{name}` has shape {dims:?} under the binding: more than {:.3e} elements, more than any memory holds",
            MAX_ELEMENTS as f64
        ),
    )
    .with_help("scale the workload down with --scale (e.g. seq=16,batch=4)")
}

/// The most elements a tensor may have: its f32 values (4 B each) must
/// fit in one allocation (`isize::MAX` bytes).
pub const MAX_ELEMENTS: usize = isize::MAX as usize / 4;

/// The elements of a shape, or `None` when they overflow or exceed
/// [`MAX_ELEMENTS`]. [`shapes`] checks every tensor with it, so the
/// products of a bound graph's dimensions do not wrap.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
}

/// The elements of a shape, saturating at `usize::MAX`: a size that
/// overflows stays enormous (and is refused by the memory estimate)
/// instead of wrapping to a small one.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().fold(1usize, |n, &d| n.saturating_mul(d))
}

/// A parameter owned by an op: its shape and initializer
/// (`offset + uniform(-bound, bound)`).
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub slot: u32,
    pub shape: Vec<usize>,
    pub bound: f32,
    pub offset: f32,
}

impl Param {
    fn new(slot: u32, shape: Vec<usize>, bound: f32) -> Param {
        Param {
            slot,
            shape,
            bound,
            offset: 0.0,
        }
    }
    /// The value at flat index `i` of this parameter of op `op` at `iterations`.
    pub fn value(&self, init: &Init, op: TensorId, iterations: &[u64], i: u64) -> f32 {
        self.offset + init.symmetric(Key::weight(op.0, iterations, self.slot), i, self.bound)
    }
    /// The whole parameter, row-major.
    pub fn full(&self, init: &Init, op: TensorId, iterations: &[u64]) -> Vec<f32> {
        (0..numel(&self.shape) as u64)
            .map(|i| self.value(init, op, iterations, i))
            .collect()
    }
    /// Rows `rows` and columns `cols` of a 2-D parameter (or a range of a
    /// 1-D one, with `rows` ignored), row-major.
    pub fn block(
        &self,
        init: &Init,
        op: TensorId,
        iterations: &[u64],
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) -> Vec<f32> {
        let width = *self.shape.last().unwrap_or(&1);
        let rows = if self.shape.len() == 1 { 0..1 } else { rows };
        let mut out = Vec::with_capacity(rows.len() * cols.len());
        for r in rows {
            for c in cols.clone() {
                out.push(self.value(init, op, iterations, (r * width + c) as u64));
            }
        }
        out
    }
}

fn fan(d: u64) -> f32 {
    1.0 / (d.max(1) as f32).sqrt()
}

/// The parameters of an op, in slot order.
///
/// - `linear`: weight `[d_in, d_out]` (so `y = x W + b`), bias `[d_out]`.
/// - `embedding`: table `[vocab, dim]`; `embedding_bag`: one `[rows, dim]` per table.
/// - `rmsnorm`: gain `[dim]` around 1; `layernorm`: gain and shift `[dim]`.
/// - `mlp`: per layer a weight `[a, b]` and a bias `[b]` (`dims` starts with the input width).
/// - `moe`: router `[d_model, experts]`, then per expert `w1 [d_model, d_ff]`,
///   `w3 [d_model, d_ff]`, `w2 [d_ff, d_model]` (SwiGLU: `(silu(x w1) * x w3) w2`).
pub fn params(kind: &OpKind) -> Vec<Param> {
    match kind {
        OpKind::Linear {
            d_in, d_out, bias, ..
        } => {
            let mut v = vec![Param::new(
                0,
                vec![*d_in as usize, *d_out as usize],
                fan(*d_in),
            )];
            if *bias {
                v.push(Param::new(1, vec![*d_out as usize], fan(*d_in)));
            }
            v
        }
        OpKind::Embedding { vocab, dim } => {
            vec![Param::new(0, vec![*vocab as usize, *dim as usize], 1.0)]
        }
        OpKind::EmbeddingBag { tables } => tables
            .iter()
            .enumerate()
            .map(|(i, t)| Param::new(i as u32, vec![t.rows as usize, t.dim as usize], 1.0))
            .collect(),
        OpKind::RmsNorm { dim } => vec![Param {
            offset: 1.0,
            ..Param::new(0, vec![*dim as usize], 0.1)
        }],
        OpKind::LayerNorm { dim } => vec![
            Param {
                offset: 1.0,
                ..Param::new(0, vec![*dim as usize], 0.1)
            },
            Param::new(1, vec![*dim as usize], 0.1),
        ],
        OpKind::Mlp { dims, .. } => {
            let mut v = Vec::new();
            for (l, w) in dims.windows(2).enumerate() {
                v.push(Param::new(
                    2 * l as u32,
                    vec![w[0] as usize, w[1] as usize],
                    fan(w[0]),
                ));
                v.push(Param::new(2 * l as u32 + 1, vec![w[1] as usize], fan(w[0])));
            }
            v
        }
        OpKind::Moe {
            experts,
            d_model,
            d_ff,
            ..
        } => {
            let (d, f) = (*d_model as usize, *d_ff as usize);
            let mut v = vec![Param::new(0, vec![d, *experts as usize], fan(*d_model))];
            for e in 0..*experts as u32 {
                v.push(Param::new(1 + 3 * e, vec![d, f], fan(*d_model)));
                v.push(Param::new(2 + 3 * e, vec![d, f], fan(*d_model)));
                v.push(Param::new(3 + 3 * e, vec![f, d], fan(*d_ff)));
            }
            v
        }
        _ => Vec::new(),
    }
}

/// The layer widths of an `mlp` op: `dims` already starts with the input
/// width (the checker puts it there).
pub fn mlp_widths(dims: &[u64]) -> Vec<usize> {
    dims.iter().map(|d| *d as usize).collect()
}

/// Every op of the graph, nested repeats included, in program order.
pub fn ops(items: &[Item]) -> Vec<&gantry_lang::program::Op> {
    let mut out = Vec::new();
    for it in items {
        match it {
            Item::Op(op) => out.push(op),
            Item::Repeat(r) => out.extend(ops(&r.body)),
        }
    }
    out
}

/// The exclusive upper bound of the values of an integer input, per column
/// of its last dimension: ids fed to `embedding` range over the vocabulary,
/// ids fed to `embedding_bag` over each table's rows; other integer inputs
/// over 16 values.
pub fn id_ranges(graph: &Graph, input: TensorId) -> Vec<u64> {
    for op in ops(&graph.body) {
        if op.inputs.first() != Some(&input) {
            continue;
        }
        match &op.kind {
            OpKind::Embedding { vocab, .. } => return vec![*vocab],
            OpKind::EmbeddingBag { tables } => return tables.iter().map(|t| t.rows).collect(),
            _ => {}
        }
    }
    vec![16]
}

/// The values of a graph input under `shape`, row-major: floats uniform in
/// `[-1, 1)`, integer ids uniform over their range (stored exactly as f32).
pub fn input_values(graph: &Graph, input: TensorId, shape: &[usize], init: &Init) -> Vec<f32> {
    let t = graph.tensor(input);
    let key = Key::input(input.0);
    let n = numel(shape) as u64;
    if t.dtype.is_int() {
        let ranges = id_ranges(graph, input);
        let last = *shape.last().unwrap_or(&1) as u64;
        (0..n)
            .map(|i| {
                let col = if ranges.len() > 1 {
                    (i % last.max(1)) as usize
                } else {
                    0
                };
                let range = ranges.get(col).copied().unwrap_or(16).max(1);
                ((init.unit(key, i) as f64 * range as f64).floor() as u64).min(range - 1) as f32
            })
            .collect()
    } else {
        (0..n).map(|i| init.symmetric(key, i, 1.0)).collect()
    }
}

/// Where the samples of a tensor lie: the axis whose dimension contains
/// the `batch` symbol, and how many consecutive entries of that axis one
/// sample spans (`batch*seq` gives `seq`). `None` when the tensor has no
/// batch axis.
pub fn batch_axis(shape: &Shape, bindings: &BTreeMap<String, i64>) -> Option<(usize, usize)> {
    let (axis, d) = shape
        .0
        .iter()
        .enumerate()
        .find(|(_, d)| d.syms.iter().any(|s| s == "batch"))?;
    let whole = d.eval(bindings)?;
    let b = *bindings.get("batch")?;
    (b > 0 && whole % b == 0).then_some((axis, (whole / b) as usize))
}

/// The axis of a tensor whose dimension is exactly `seq` (context
/// parallelism cuts it into contiguous chunks). `None` when there is none.
pub fn seq_axis(shape: &Shape) -> Option<usize> {
    shape
        .0
        .iter()
        .position(|d| d.coef == 1 && d.syms.len() == 1 && d.syms[0] == "seq")
}

/// Copies samples `start..start + count` of a tensor (along its batch
/// axis) out of `data`.
pub fn take_samples(
    data: &[f32],
    shape: &[usize],
    axis: usize,
    per: usize,
    start: usize,
    count: usize,
) -> Vec<f32> {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let len = shape[axis];
    let mut out = Vec::with_capacity(outer * count * per * inner);
    for o in 0..outer {
        let base = o * len * inner;
        out.extend_from_slice(
            &data[base + start * per * inner..base + (start + count) * per * inner],
        );
    }
    out
}

/// Writes samples `start..start + count` (laid out as `take_samples`
/// returns them) into `data`.
pub fn put_samples(
    data: &mut [f32],
    shape: &[usize],
    axis: usize,
    per: usize,
    start: usize,
    count: usize,
    part: &[f32],
) {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let len = shape[axis];
    let chunk = count * per * inner;
    for o in 0..outer {
        let base = o * len * inner + start * per * inner;
        data[base..base + chunk].copy_from_slice(&part[o * chunk..(o + 1) * chunk]);
    }
}

/// The maximum absolute and relative (normwise: max |a - b| / max |b|)
/// differences between two tensors.
pub fn compare(got: &[f32], want: &[f32]) -> (f64, f64) {
    compare_at(got, want, 0.0)
}

/// [`compare`] with the scale of the relative error at least `floor`; any
/// NaN, infinity on one side only or length mismatch is infinite. Equal infinities agree (a value
/// that overflows f32 on both sides is no difference; `inf - inf` was
/// NaN and read as an infinite error) and do not set the scale.
pub fn compare_at(got: &[f32], want: &[f32], floor: f64) -> (f64, f64) {
    let mut abs = 0.0f64;
    let mut scale = floor;
    let mut bad = got.len() != want.len();
    for (g, w) in got.iter().zip(want) {
        if g == w && w.is_infinite() {
            continue;
        }
        let d = (f64::from(*g) - f64::from(*w)).abs();
        // NaN, or an infinity on one side only (whose relative error
        // came out as inf / inf = NaN, which no tolerance refuses).
        if !d.is_finite() {
            bad = true;
        }
        abs = abs.max(d);
        scale = scale.max(f64::from(*w).abs());
    }
    if bad {
        return (f64::INFINITY, f64::INFINITY);
    }
    let rel = if scale > 0.0 {
        abs / scale
    } else if abs > 0.0 {
        f64::INFINITY
    } else {
        0.0
    };
    (abs, rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_counts_do_not_wrap() {
        let big = 1usize << 32;
        assert_eq!(checked_numel(&[big, big]), None);
        assert_eq!(checked_numel(&[big, big / 2, 2]), None);
        assert_eq!(checked_numel(&[MAX_ELEMENTS, 2]), None);
        assert_eq!(checked_numel(&[MAX_ELEMENTS]), Some(MAX_ELEMENTS));
        assert_eq!(checked_numel(&[3, 5]), Some(15));
        assert_eq!(checked_numel(&[]), Some(1));
        // 2^64 * 256 wrapped to 0.
        assert_eq!(numel(&[big, big, 256]), usize::MAX);
        assert_eq!(numel(&[3, 0, 5]), 0);
        assert_eq!(numel(&[4, 5]), 20);
    }

    #[test]
    fn equal_infinities_agree_and_others_do_not() {
        let inf = f32::INFINITY;
        assert_eq!(compare(&[inf, -inf, 2.0], &[inf, -inf, 2.0]), (0.0, 0.0));
        // The finite elements still set the error and its scale.
        assert_eq!(compare(&[inf, 1.0], &[inf, 2.0]), (1.0, 0.5));
        for (g, w) in [(inf, -inf), (1.0, inf), (inf, 1.0), (f32::NAN, f32::NAN)] {
            assert_eq!(compare(&[g], &[w]).1, f64::INFINITY, "{g} {w}");
        }
    }
}
