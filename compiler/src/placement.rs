//! Placement: mesh axes on the topology, and what each rank holds.
//!
//! Ranks are numbered with tensor parallelism innermost, then context,
//! data and pipeline parallelism outermost (Megatron-LM's order, the one
//! the cost model's groups and the runtime's threads use): tensor-parallel
//! groups sit in one NVLink domain when they fit, the data-parallel (and
//! ZeRO) groups next to them, and each pipeline stage is a block of
//! `tp x cp x dp` consecutive ranks, whose neighbour is the next block.
//! Embedding tables are placed by [`tables`], as
//! the workload's framework places them (cost- or memory-balanced); one
//! function, [`of_point`], gives the placement the cost model prices
//! (through [`Skew`], what the busiest rank does beyond an even share)
//! and the one `plan` reports and exports, so they cannot disagree.

use gantry_lang::program::Cluster;
use serde_json::{Value, json};

use crate::collective::Topology;
use crate::cost::{Estimate, Memory};
use crate::ir::{Ir, IrTable};
use gantry_lang::program::{Phase, TableSharding};

/// Most ranks listed one by one in the JSON plan; beyond it the rank
/// formula in `axes` describes the rest.
pub const MAX_LISTED_RANKS: u64 = 1024;

/// The mesh order, innermost first, with strides.
pub fn axes(e: &Estimate) -> [(&'static str, u64, u64); 4] {
    let p = &e.point;
    [
        ("tp", p.tp, 1),
        ("cp", p.cp, p.tp),
        ("dp", p.dp, p.tp * p.cp),
        ("pp", p.pp, p.tp * p.cp * p.dp),
    ]
}

pub fn json(e: &Estimate, c: &Cluster, topo: &Topology) -> Value {
    let per_node = c.node.devices_per_node.max(1);
    let axes_json: Vec<Value> = axes(e)
        .iter()
        .map(|(n, size, stride)| json!({ "axis": n, "size": size, "stride": stride, "level": topo.level(*size, *stride).name() }))
        .collect();
    let mut first = 0u64;
    let stages: Vec<Value> = e
        .stage_layers
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let v = json!({ "stage": i, "layers": [first, first + n], "prologue": i == 0, "epilogue": i + 1 == e.stage_layers.len() });
            first += n;
            v
        })
        .collect();
    let p = &e.point;
    let listed = e.devices.min(MAX_LISTED_RANKS);
    let ranks: Vec<Value> = (0..listed)
        .map(|r| {
            let tp = r % p.tp;
            let cp = (r / p.tp) % p.cp;
            let dp = (r / (p.tp * p.cp)) % p.dp;
            let pp = r / (p.tp * p.cp * p.dp);
            json!({ "rank": r, "node": r / per_node, "tp": tp, "cp": cp, "pp": pp, "dp": dp, "stage": pp })
        })
        .collect();
    json!({
        "order": ["tp", "cp", "dp", "pp"],
        "rank_formula": "rank = tp + tp_size * (cp + cp_size * (dp + dp_size * pp)); node = rank / devices_per_node",
        "devices_per_node": per_node,
        "axes": axes_json,
        "stages": stages,
        "ranks": ranks,
        "ranks_listed": listed,
    })
}

/// One embedding table's placement, or one column slice of a table.
#[derive(Clone, Debug, PartialEq)]
pub struct TablePlacement {
    pub table: String,
    /// `table_wise` (one rank holds it), `column_wise` (one rank holds
    /// these columns of it), `row_wise` (rows split over all ranks),
    /// `host` (kept in host memory) or `unplaced` (fits nowhere).
    pub sharding: &'static str,
    pub ranks: Vec<u64>,
    /// The columns this entry holds, `start..end` (`0..dim` but for a
    /// column slice).
    pub columns: (u64, u64),
    pub bytes: f64,
    /// Relative lookup cost (pooling x columns x bytes).
    pub cost: f64,
    /// Ids looked up per sample (the table's pooling; every column slice
    /// of a table looks up all of them).
    pub pooling: f64,
}

/// The cost-balanced placement stops splitting tables by rows once the
/// busiest rank's lookup cost is within this share of the mean.
pub const COST_BALANCE_TOLERANCE: f64 = 0.10;

/// Places the embedding tables of `ir` on `devices` ranks, each with
/// `room` bytes for tables, as the workload's `embeddings = { placement =
/// ... }` says ([`TableSharding`]); tables that fit nowhere go to host
/// memory if `host`, else are `unplaced`.
pub fn tables(ir: &Ir, devices: u64, room: f64, host: bool) -> Vec<TablePlacement> {
    let list: Vec<&IrTable> = ir
        .segments
        .iter()
        .flat_map(|s| s.ops.iter())
        .filter(|o| o.op == "embedding_bag")
        .flat_map(|o| o.tables.iter())
        .collect();
    if list.is_empty() {
        // Nothing to place: no per-rank state (a system may have millions
        // of ranks).
        return Vec::new();
    }
    match ir.kernels.tables {
        TableSharding::CostBalanced => cost_balanced(&list, devices, room, host),
        TableSharding::MemoryBalanced { column_slice } => {
            memory_balanced(&list, devices, room, host, column_slice)
        }
    }
}

/// `cost_balanced`: largest lookup cost first onto the least loaded rank
/// that has room (table-wise); when the most loaded rank exceeds the mean
/// by more than [`COST_BALANCE_TOLERANCE`], the costliest table-wise
/// tables are split row-wise over all ranks until balanced.
fn cost_balanced(list: &[&IrTable], devices: u64, room: f64, host: bool) -> Vec<TablePlacement> {
    let n = devices.max(1) as usize;
    let mut load = vec![0.0f64; n];
    let mut mem = vec![0.0f64; n];
    let mut out: Vec<TablePlacement> = Vec::new();
    let mut order: Vec<usize> = (0..list.len()).collect();
    order.sort_by(|&a, &b| {
        list[b]
            .lookup_bytes()
            .total_cmp(&list[a].lookup_bytes())
            .then(list[b].bytes().total_cmp(&list[a].bytes()))
    });
    for i in order {
        let t = list[i];
        let (bytes, cost) = (t.bytes(), t.lookup_bytes());
        let entry = |sharding, ranks| TablePlacement {
            table: t.name.clone(),
            sharding,
            ranks,
            columns: (0, t.dim),
            bytes,
            cost,
            pooling: t.pooling,
        };
        let best = (0..n)
            .filter(|r| mem[*r] + bytes <= room)
            .min_by(|a, b| load[*a].total_cmp(&load[*b]));
        match best {
            Some(r) => {
                load[r] += cost;
                mem[r] += bytes;
                out.push(entry("table_wise", vec![r as u64]));
            }
            None if mem.iter().all(|m| m + bytes / n as f64 <= room) => {
                for r in 0..n {
                    load[r] += cost / n as f64;
                    mem[r] += bytes / n as f64;
                }
                out.push(entry("row_wise", (0..n as u64).collect()));
            }
            None => out.push(entry(if host { "host" } else { "unplaced" }, vec![])),
        }
    }
    // Rebalance: move the costliest table-wise table of the busiest rank to
    // row-wise until the imbalance is within tolerance.
    for _ in 0..out.len() {
        let mean = load.iter().sum::<f64>() / n as f64;
        let (busiest, max) = load
            .iter()
            .copied()
            .enumerate()
            .fold((0, 0.0), |a, x| if x.1 > a.1 { x } else { a });
        if mean <= 0.0 || max <= mean * (1.0 + COST_BALANCE_TOLERANCE) {
            break;
        }
        let Some(t) = out
            .iter_mut()
            .filter(|t| t.sharding == "table_wise" && t.ranks == [busiest as u64])
            .max_by(|a, b| a.cost.total_cmp(&b.cost))
        else {
            break;
        };
        if !mem
            .iter()
            .enumerate()
            .all(|(r, m)| m + t.bytes / n as f64 - if r == busiest { t.bytes } else { 0.0 } <= room)
        {
            break;
        }
        load[busiest] -= t.cost;
        mem[busiest] -= t.bytes;
        for r in 0..n {
            load[r] += t.cost / n as f64;
            mem[r] += t.bytes / n as f64;
        }
        t.sharding = "row_wise";
        t.ranks = (0..n as u64).collect();
    }
    out
}

/// `memory_balanced`, as NVIDIA distributed-embeddings places tables
/// (`DistEmbeddingStrategy`, `strategy = "memory_balanced"`): a table of
/// more than `column_slice` elements is cut by columns into the fewest
/// power-of-two slices under it, at most one per rank and column (the
/// first `dim % slices` slices one column wider); without `column_slice`
/// and with fewer tables than ranks, the largest is halved until there
/// are as many as ranks. The slices, sorted by size (largest first, a
/// later table first among equals), are dealt back and forth: rank `i`
/// of `n` takes the `i`-th and `(2n - 1 - i)`-th of every `2n`. A rank
/// whose slices exceed `room` sends its largest to host memory (or
/// leaves them unplaced) until the rest fit.
fn memory_balanced(
    list: &[&IrTable],
    devices: u64,
    room: f64,
    host: bool,
    column_slice: Option<u64>,
) -> Vec<TablePlacement> {
    let n = devices.max(1) as usize;
    let elements = |t: &IrTable| t.rows.saturating_mul(t.dim);
    let threshold = match column_slice {
        Some(c) => Some(c),
        None if n > list.len() => {
            let mut sizes: Vec<u64> = list.iter().map(|t| elements(t)).collect();
            let mut thr = None;
            while n > sizes.len() {
                sizes.sort_unstable();
                let max = sizes.pop().unwrap_or(0);
                thr = Some(max.saturating_sub(1));
                sizes.extend([max / 2, max / 2]);
            }
            thr
        }
        None => None,
    };
    // (table index, columns, elements) of every slice, in table order.
    let mut slices: Vec<(usize, (u64, u64), u64)> = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let mut k: u64 = 1;
        if let Some(thr) = threshold {
            let mut size = elements(t) as f64;
            while size > thr as f64 {
                k = k.saturating_mul(2);
                size /= 2.0;
            }
        }
        let k = k.min(n as u64).min(t.dim.max(1));
        let (per, extra) = (t.dim / k, t.dim % k);
        let mut start = 0;
        for j in 0..k {
            let w = per + u64::from(j < extra);
            slices.push((i, (start, start + w), t.rows.saturating_mul(w)));
            start += w;
        }
    }
    let mut order: Vec<usize> = (0..slices.len()).collect();
    order.sort_by(|&a, &b| (slices[b].2, slices[b].0).cmp(&(slices[a].2, slices[a].0)));
    let mut rank_of = vec![0usize; slices.len()];
    for (pos, &si) in order.iter().enumerate() {
        let at = pos % (2 * n);
        rank_of[si] = if at < n { at } else { 2 * n - 1 - at };
    }
    let mut out: Vec<TablePlacement> = slices
        .iter()
        .zip(&rank_of)
        .map(|((i, cols, _), r)| {
            let t = list[*i];
            let w = (cols.1 - cols.0) as f64;
            TablePlacement {
                table: t.name.clone(),
                sharding: if cols.1 - cols.0 == t.dim {
                    "table_wise"
                } else {
                    "column_wise"
                },
                ranks: vec![*r as u64],
                columns: *cols,
                bytes: t.rows as f64 * w * t.elem_bytes,
                cost: t.pooling * w * t.elem_bytes,
                pooling: t.pooling,
            }
        })
        .collect();
    // Ranks over their room give up their largest slices.
    for r in 0..n as u64 {
        let mut mine: Vec<usize> = (0..out.len()).filter(|k| out[*k].ranks == [r]).collect();
        mine.sort_by(|a, b| out[*b].bytes.total_cmp(&out[*a].bytes));
        let mut held: f64 = mine.iter().map(|k| out[*k].bytes).sum();
        for k in mine {
            if held <= room {
                break;
            }
            held -= out[k].bytes;
            out[k].sharding = if host { "host" } else { "unplaced" };
            out[k].ranks.clear();
        }
    }
    out
}

/// Per rank, the sum of `of(table)` over the tables it holds: table-wise
/// tables and column slices whole on their rank, row-wise ones split over
/// all ranks; host and unplaced tables on none, or, with `spread_rest`,
/// split over all ranks too (their lookups are still served everywhere).
fn per_rank(
    p: &[TablePlacement],
    devices: u64,
    spread_rest: bool,
    of: impl Fn(&TablePlacement) -> f64,
) -> Vec<f64> {
    let n = devices.max(1) as usize;
    let mut v = vec![0.0; n];
    for t in p {
        match t.sharding {
            "table_wise" | "column_wise" => {
                if let Some(x) = t.ranks.first().and_then(|r| v.get_mut(*r as usize)) {
                    *x += of(t);
                }
            }
            "row_wise" => v.iter_mut().for_each(|x| *x += of(t) / n as f64),
            _ if spread_rest => v.iter_mut().for_each(|x| *x += of(t) / n as f64),
            _ => {}
        }
    }
    v
}

/// HBM bytes of embedding tables on each rank of a placement.
pub fn bytes_per_rank(p: &[TablePlacement], devices: u64) -> Vec<f64> {
    per_rank(p, devices, false, |t| t.bytes)
}

/// Lookup cost per rank of a placement, and the imbalance (max / mean - 1).
pub fn balance(p: &[TablePlacement], devices: u64) -> (Vec<f64>, f64) {
    let n = devices.max(1) as usize;
    let load = per_rank(p, devices, false, |t| t.cost);
    let mean = load.iter().sum::<f64>() / n as f64;
    let max = load.iter().copied().fold(0.0, f64::max);
    let imb = if mean > 0.0 { max / mean - 1.0 } else { 0.0 };
    (load, imb)
}

/// Bytes per rank left for embedding tables: HBM after everything else
/// the rank holds at its peak (reserve, weights, gradients, optimizer
/// state, activations, KV cache, working buffers).
pub fn room(m: &Memory) -> f64 {
    m.capacity - (m.total() - m.embeddings)
}

/// The placement of a design point whose memory without tables is `m`,
/// and the devices one copy of the tables is spread over: the room
/// [`room`] leaves, in table bytes with their optimizer state (each table
/// row keeps its optimizer's states beside it). Training spreads one copy
/// over all devices (each row's sparse update stays with its owner).
/// Inference spreads it over the fewest devices, a power of two dividing
/// `devices`, whose placement puts every table in HBM, and replicates it
/// over the other groups, so lookups stay in the group (as TorchRec
/// inference shards within a host); over all devices if no group holds
/// them. The cost model prices this placement and `plan` reports and
/// exports it.
pub fn of_point(ir: &Ir, devices: u64, m: &Memory, host: bool) -> (u64, Vec<TablePlacement>) {
    let room = room(m) / table_states(ir);
    if !matches!(ir.phase, Phase::Train { .. }) {
        let mut g = 1;
        while g < devices {
            if devices.is_multiple_of(g) {
                let t = tables(ir, g, room, false);
                if t.iter().all(|t| t.sharding != "unplaced") {
                    return (g, t);
                }
            }
            g *= 2;
        }
    }
    (devices, tables(ir, devices, room, host))
}

/// Bytes a table keeps per byte of table: itself and its optimizer's
/// states.
pub fn table_states(ir: &Ir) -> f64 {
    1.0 + crate::memory::optimizer(ir).map_or(0.0, crate::memory::optimizer_states)
}

/// What a placement asks of its busiest rank, against the same tables
/// spread evenly over the ranks (1 when even).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Skew {
    /// The busiest rank's lookup cost over the mean.
    pub lookups: f64,
    /// The pooled-embedding all-to-all's busiest rank over an even
    /// spread's, by the larger of what it sends and receives in a pass
    /// (per local sample, of `W` pooled columns; evenly both are
    /// `W (n - 1) / n`). A rank holding `w` columns of whole or column-sliced
    /// tables sends them for the other ranks' samples, `(n - 1) w`, and
    /// receives the columns it does not hold; every rank of a row-wise
    /// table sends its partial sums of all `d` columns to the `n - 1`
    /// others and receives theirs, `(n - 1) d` each way (TorchRec's
    /// reduce-scatter of pooled embeddings); host tables are read by each
    /// rank for its own samples and move nothing. Backward mirrors the
    /// forward (the gradients go back to the holders).
    pub exchange: f64,
    /// Share of the lookup cost served from host memory.
    pub host: f64,
    /// Ids per local sample the input all-to-all's busiest rank moves
    /// (the larger direction), times `n / (n - 1)` (so that its bytes
    /// price like an even exchange's): a table entry's ids, `pooling` per
    /// sample, go from every other rank to its holder (to every slice of
    /// a column-sliced table; bucketized by rows over all ranks for a
    /// row-wise one).
    pub ids: f64,
    /// The same for the per-sample lengths: one per entry to its holder,
    /// one to every rank for a row-wise entry (each bucket carries the
    /// lengths of every sample).
    pub lengths: f64,
    /// Bytes the busiest rank *sends* (what `gantry run` measures; the
    /// fields above price time, where a rank's larger direction counts),
    /// per local sample, over the `W` pooled columns: forward only, and a
    /// training step's forward and backward (where a rank sends what it
    /// received forward).
    pub sent_forward: f64,
    pub sent_step: f64,
    /// Bytes of ids and lengths the busiest rank sends per local sample
    /// ([`ID_BYTES`] per id, [`LENGTH_BYTES`] per length).
    pub ids_sent: f64,
}

/// Bytes of one looked-up id in TorchRec's input all-to-all (a
/// `KeyedJaggedTensor`'s values are int64).
pub const ID_BYTES: f64 = 8.0;

/// Bytes of one per-sample length in that all-to-all (int32 lengths).
pub const LENGTH_BYTES: f64 = 4.0;

impl Default for Skew {
    fn default() -> Self {
        Skew {
            lookups: 1.0,
            exchange: 1.0,
            host: 0.0,
            ids: 0.0,
            lengths: 0.0,
            sent_forward: 0.0,
            sent_step: 0.0,
            ids_sent: 0.0,
        }
    }
}

/// The [`Skew`] of placement `p` on `devices` ranks. Row-wise, host and
/// unplaced tables count as spread evenly (their lookups and pooled
/// columns split over every rank).
pub fn skew(p: &[TablePlacement], devices: u64) -> Skew {
    let n = devices.max(1) as usize;
    let nf = n as f64;
    let total = p.iter().fold(0.0, |a, t| a + t.cost);
    if p.is_empty() || total <= 0.0 {
        return Skew::default();
    }
    let load = per_rank(p, devices, true, |t| t.cost);
    // Per rank, what it sends and receives per local sample in a forward
    // pass: pooled columns, ids and lengths.
    let (mut send, mut recv) = (vec![[0.0f64; 3]; n], vec![[0.0f64; 3]; n]);
    let mut w_all = 0.0;
    for t in p {
        let w = (t.columns.1 - t.columns.0) as f64;
        w_all += w;
        let per = [w, t.pooling, 1.0];
        match t.sharding {
            "table_wise" | "column_wise" => {
                let Some(h) = t.ranks.first().map(|r| *r as usize).filter(|h| *h < n) else {
                    continue;
                };
                for q in (0..n).filter(|q| *q != h) {
                    // The holder's columns for q's samples; q's ids to it.
                    send[h][0] += w;
                    recv[q][0] += w;
                    send[q][1] += per[1];
                    send[q][2] += 1.0;
                    recv[h][1] += per[1];
                    recv[h][2] += 1.0;
                }
            }
            "row_wise" => {
                for r in 0..n {
                    send[r][0] += (nf - 1.0) * w;
                    recv[r][0] += (nf - 1.0) * w;
                    send[r][1] += per[1] * (nf - 1.0) / nf;
                    recv[r][1] += per[1] * (nf - 1.0) / nf;
                    send[r][2] += nf - 1.0;
                    recv[r][2] += nf - 1.0;
                }
            }
            "host" => {}
            _ => {
                // Not placed: spread evenly, as if row-sliced by columns.
                for r in 0..n {
                    for k in 0..3 {
                        send[r][k] += per[k] * (nf - 1.0) / nf;
                        recv[r][k] += per[k] * (nf - 1.0) / nf;
                    }
                }
            }
        }
    }
    let most = |k: usize, f: &dyn Fn(f64, f64) -> f64| {
        (0..n)
            .map(|r| f(send[r][k], recv[r][k]))
            .fold(0.0, f64::max)
    };
    let mut skew = Skew {
        lookups: load.iter().copied().fold(0.0, f64::max) / (total / nf),
        host: p
            .iter()
            .filter(|t| t.sharding == "host")
            .fold(0.0, |a, t| a + t.cost)
            / total,
        ..Skew::default()
    };
    if n > 1 && w_all > 0.0 {
        let even = w_all * (nf - 1.0) / nf;
        skew.exchange = most(0, &f64::max) / even;
        skew.sent_forward = most(0, &|s, _| s) / w_all;
        skew.sent_step = most(0, &|s, r| s + r) / w_all;
        skew.ids = most(1, &f64::max) * nf / (nf - 1.0);
        skew.lengths = most(2, &f64::max) * nf / (nf - 1.0);
        skew.ids_sent = (0..n)
            .map(|r| send[r][1] * ID_BYTES + send[r][2] * LENGTH_BYTES)
            .fold(0.0, f64::max);
    }
    skew
}

/// A placement's figures for reports: the workload's placement, the
/// devices one copy spans, how many entries of each kind, and its skew.
pub fn summary(ir: &Ir, group: u64, p: &[TablePlacement]) -> Option<Value> {
    if p.is_empty() {
        return None;
    }
    let count = |kind: &str| p.iter().filter(|t| t.sharding == kind).count();
    let (placement, slice) = match ir.kernels.tables {
        TableSharding::CostBalanced => ("cost_balanced", None),
        TableSharding::MemoryBalanced { column_slice } => ("memory_balanced", column_slice),
    };
    let s = skew(p, group);
    Some(json!({
        "placement": placement,
        "column_slice": slice,
        "devices": group,
        "table_wise": count("table_wise"),
        "column_slices": count("column_wise"),
        "row_wise": count("row_wise"),
        "host": count("host"),
        "lookup_skew": s.lookups,
        "exchange_skew": s.exchange,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Criteo tables as DLE declares them: dim 128, fp32, one-hot.
    fn criteo(rows: &[u64]) -> Vec<IrTable> {
        rows.iter()
            .enumerate()
            .map(|(i, r)| IrTable {
                name: format!("t{i}"),
                rows: *r,
                dim: 128,
                elem_bytes: 4.0,
                pooling: 1.0,
            })
            .collect()
    }

    fn columns_per_rank(p: &[TablePlacement], n: usize) -> Vec<u64> {
        let mut v = vec![0; n];
        for t in p {
            v[t.ranks[0] as usize] += t.columns.1 - t.columns.0;
        }
        v
    }

    /// DLE's large Criteo variant (doc/DLRM.md cardinalities) on 8 GPUs
    /// with its default `column_slice_threshold` of 5e9 elements: the
    /// three tables above it (48.9M, 45.8M and 40.1M rows) are cut in two
    /// 64-column halves, and dealing the 29 slices back and forth leaves
    /// ranks 0 to 7 with these pooled columns (worked by hand from
    /// `DistEmbeddingStrategy.apply_strategy`).
    #[test]
    fn memory_balanced_deals_dle_large_as_distributed_embeddings() {
        let rows = [
            45_833_188, 36_747, 1_572_176, 345_139, 11, 2_209, 11_268, 128, 4, 975, 15, 48_937_457,
            17_246, 11_316_796, 40_094_537, 452_104, 12_607, 105, 36, 7_414, 20_244, 4, 7_115,
            1_442, 63, 29_275_261,
        ];
        let t = criteo(&rows);
        let refs: Vec<&IrTable> = t.iter().collect();
        let p = memory_balanced(&refs, 8, f64::INFINITY, false, Some(5_000_000_000));
        assert_eq!(p.len(), 29);
        assert_eq!(p.iter().filter(|t| t.sharding == "column_wise").count(), 6);
        assert!(
            p.iter()
                .filter(|t| t.sharding == "column_wise")
                .all(|t| t.columns.1 - t.columns.0 == 64)
        );
        assert_eq!(
            columns_per_rank(&p, 8),
            [384, 320, 320, 448, 448, 448, 448, 512]
        );
        let s = skew(&p, 8);
        assert!((s.lookups - 512.0 / 416.0).abs() < 1e-12, "{s:?}");
        // The busiest sender: 8 x 512 of 3328 columns.
        assert!((s.exchange - 8.0 * 512.0 / 3328.0).abs() < 1e-12, "{s:?}");
        assert_eq!(s.host, 0.0);
    }

    /// The extra-large variant: 292.8M, 227.6M and 187.2M rows go to 8
    /// slices of 16 columns, 130.2M rows to 4 of 32, 40.8M to 2 of 64.
    #[test]
    fn memory_balanced_deals_dle_extra_large_as_distributed_embeddings() {
        let rows = [
            227_605_432,
            39_061,
            3_067_956,
            405_283,
            11,
            2_209,
            11_939,
            155,
            4,
            977,
            15,
            292_775_614,
            17_296,
            40_790_948,
            187_188_510,
            590_152,
            12_974,
            109,
            37,
            7_425,
            20_266,
            4,
            7_123,
            1_544,
            64,
            130_229_467,
        ];
        let t = criteo(&rows);
        let refs: Vec<&IrTable> = t.iter().collect();
        let p = memory_balanced(&refs, 8, f64::INFINITY, false, Some(5_000_000_000));
        assert_eq!(p.len(), 51);
        let slices = |table: &str| {
            let mut w: Vec<u64> = p
                .iter()
                .filter(|t| t.table == table)
                .map(|t| t.columns.1 - t.columns.0)
                .collect();
            w.sort_unstable();
            w
        };
        assert_eq!(slices("t11"), [16; 8]);
        assert_eq!(slices("t25"), [32; 4]);
        assert_eq!(slices("t13"), [64; 2]);
        assert_eq!(
            columns_per_rank(&p, 8),
            [560, 560, 496, 368, 336, 336, 336, 336]
        );
        // The columns of a cut table tile it exactly.
        let mut cols: Vec<(u64, u64)> = p
            .iter()
            .filter(|t| t.table == "t11")
            .map(|t| t.columns)
            .collect();
        cols.sort_unstable();
        assert!(cols.windows(2).all(|w| w[0].1 == w[1].0) && cols[0].0 == 0 && cols[7].1 == 128);
    }

    /// Without `column_slice` and with fewer tables than ranks, the
    /// largest tables are halved until there are as many as ranks.
    #[test]
    fn memory_balanced_halves_the_largest_tables_for_spare_ranks() {
        let t = criteo(&[100_000, 100_000, 1_000]);
        let refs: Vec<&IrTable> = t.iter().collect();
        let p = memory_balanced(&refs, 4, f64::INFINITY, false, None);
        assert_eq!(columns_per_rank(&p, 4), [64, 64, 64, 192]);
        // One rank for one whole table of three: nothing to cut.
        let q = memory_balanced(&refs, 2, f64::INFINITY, false, None);
        assert!(q.iter().all(|t| t.sharding == "table_wise"));
    }

    /// A rank over its room sends its largest slices to host memory,
    /// or leaves them unplaced without it; evenly dealt equal tables have
    /// no skew.
    #[test]
    fn memory_balanced_offloads_the_largest_over_room_and_even_tables_have_no_skew() {
        let t = criteo(&[1_000, 1_000, 1_000, 1_000]);
        let refs: Vec<&IrTable> = t.iter().collect();
        let p = memory_balanced(&refs, 4, f64::INFINITY, false, None);
        let even = skew(&p, 4);
        assert_eq!((even.lookups, even.exchange, even.host), (1.0, 1.0, 0.0));
        // Each rank serves one of four one-hot tables: it receives 1 id
        // from each of 3 others and sends 3, an even exchange of 4 ids.
        assert_eq!((even.ids, even.lengths), (4.0, 4.0));
        let t = criteo(&[3_000, 1_000, 1_000]);
        let refs: Vec<&IrTable> = t.iter().collect();
        // Rank 0 holds the 3,000-row table, rank 1 the two others: room
        // for 2,400 rows.
        let room = 2_400.0 * 128.0 * 4.0;
        let host = memory_balanced(&refs, 2, room, true, None);
        let on_host: Vec<&str> = host
            .iter()
            .filter(|t| t.sharding == "host")
            .map(|t| t.table.as_str())
            .collect();
        assert_eq!(on_host, ["t0"]);
        // A third of the lookups (one of three one-hot tables).
        assert!((skew(&host, 2).host - 1.0 / 3.0).abs() < 1e-12);
        let none = memory_balanced(&refs, 2, room, false, None);
        assert!(none.iter().any(|t| t.sharding == "unplaced"));
    }
}
