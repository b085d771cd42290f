//! Placement: mesh axes on the topology, and what each rank holds.
//!
//! Ranks are numbered with tensor parallelism innermost, then context,
//! pipeline and data parallelism outermost: tensor-parallel groups sit in
//! one NVLink domain when they fit, pipeline neighbours are the next nodes
//! on the same rails, and data-parallel replicas spread across racks and
//! pods, where only the overlapped gradient reduction crosses the
//! oversubscribed layer. Embedding tables are placed by [`tables`].

use gantry_lang::program::Cluster;
use serde_json::{Value, json};

use crate::collective::Topology;
use crate::cost::Estimate;
use crate::ir::Ir;

/// Most ranks listed one by one in the JSON plan; beyond it the rank
/// formula in `axes` describes the rest.
pub const MAX_LISTED_RANKS: u64 = 1024;

/// The mesh order, innermost first, with strides.
pub fn axes(e: &Estimate) -> [(&'static str, u64, u64); 4] {
    let p = &e.point;
    [
        ("tp", p.tp, 1),
        ("cp", p.cp, p.tp),
        ("pp", p.pp, p.tp * p.cp),
        ("dp", p.dp, p.tp * p.cp * p.pp),
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
            let pp = (r / (p.tp * p.cp)) % p.pp;
            let dp = r / (p.tp * p.cp * p.pp);
            json!({ "rank": r, "node": r / per_node, "tp": tp, "cp": cp, "pp": pp, "dp": dp, "stage": pp })
        })
        .collect();
    json!({
        "order": ["tp", "cp", "pp", "dp"],
        "rank_formula": "rank = tp + tp_size * (cp + cp_size * (pp + pp_size * dp)); node = rank / devices_per_node",
        "devices_per_node": per_node,
        "axes": axes_json,
        "stages": stages,
        "ranks": ranks,
        "ranks_listed": listed,
    })
}

/// One embedding table's placement.
#[derive(Clone, Debug, PartialEq)]
pub struct TablePlacement {
    pub table: String,
    /// `table_wise` (one rank holds it), `row_wise` (rows split over all
    /// ranks), or `host` (kept in host memory).
    pub sharding: &'static str,
    pub ranks: Vec<u64>,
    pub bytes: f64,
    /// Relative lookup cost (pooling x dim x bytes).
    pub cost: f64,
}

/// Places embedding tables on `devices` ranks: largest lookup cost first
/// onto the least loaded rank that has room (table-wise); when the most
/// loaded rank exceeds the mean by more than `tolerance`, the costliest
/// table-wise tables are split row-wise over all ranks until balanced;
/// tables that fit nowhere go to host memory if the node has it.
pub fn tables(
    ir: &Ir,
    devices: u64,
    capacity_per_rank: f64,
    host: bool,
    tolerance: f64,
) -> Vec<TablePlacement> {
    let mut list: Vec<(String, f64, f64)> = Vec::new();
    for s in &ir.segments {
        for o in s.ops.iter().filter(|o| o.op == "embedding_bag") {
            list.extend(o.tables.iter().cloned());
        }
    }
    if list.is_empty() {
        // Nothing to place: no per-rank state (a system may have millions
        // of ranks).
        return Vec::new();
    }
    let n = devices.max(1) as usize;
    let mut load = vec![0.0f64; n];
    let mut mem = vec![0.0f64; n];
    let mut out: Vec<TablePlacement> = Vec::new();
    let mut order: Vec<usize> = (0..list.len()).collect();
    order.sort_by(|&a, &b| {
        list[b]
            .2
            .total_cmp(&list[a].2)
            .then(list[b].1.total_cmp(&list[a].1))
    });
    for i in order {
        let (name, bytes, cost) = &list[i];
        let best = (0..n)
            .filter(|r| mem[*r] + bytes <= capacity_per_rank)
            .min_by(|a, b| load[*a].total_cmp(&load[*b]));
        match best {
            Some(r) => {
                load[r] += cost;
                mem[r] += bytes;
                out.push(TablePlacement {
                    table: name.clone(),
                    sharding: "table_wise",
                    ranks: vec![r as u64],
                    bytes: *bytes,
                    cost: *cost,
                });
            }
            None if mem
                .iter()
                .all(|m| m + bytes / n as f64 <= capacity_per_rank) =>
            {
                for r in 0..n {
                    load[r] += cost / n as f64;
                    mem[r] += bytes / n as f64;
                }
                out.push(TablePlacement {
                    table: name.clone(),
                    sharding: "row_wise",
                    ranks: (0..n as u64).collect(),
                    bytes: *bytes,
                    cost: *cost,
                });
            }
            None => out.push(TablePlacement {
                table: name.clone(),
                sharding: if host { "host" } else { "unplaced" },
                ranks: vec![],
                bytes: *bytes,
                cost: *cost,
            }),
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
        if mean <= 0.0 || max <= mean * (1.0 + tolerance) {
            break;
        }
        let Some(t) = out
            .iter_mut()
            .filter(|t| t.sharding == "table_wise" && t.ranks == [busiest as u64])
            .max_by(|a, b| a.cost.total_cmp(&b.cost))
        else {
            break;
        };
        if !mem.iter().enumerate().all(|(r, m)| {
            m + t.bytes / n as f64 - if r == busiest { t.bytes } else { 0.0 } <= capacity_per_rank
        }) {
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

/// Per rank, the sum of `of(table)` over the tables it holds: table-wise
/// tables whole on their rank, row-wise ones split over all ranks (host
/// and unplaced tables on none).
fn per_rank(p: &[TablePlacement], devices: u64, of: impl Fn(&TablePlacement) -> f64) -> Vec<f64> {
    let n = devices.max(1) as usize;
    let mut v = vec![0.0; n];
    for t in p {
        match t.sharding {
            "table_wise" => {
                if let Some(x) = t.ranks.first().and_then(|r| v.get_mut(*r as usize)) {
                    *x += of(t);
                }
            }
            "row_wise" => v.iter_mut().for_each(|x| *x += of(t) / n as f64),
            _ => {}
        }
    }
    v
}

/// HBM bytes of embedding tables on each rank of a placement.
pub fn bytes_per_rank(p: &[TablePlacement], devices: u64) -> Vec<f64> {
    per_rank(p, devices, |t| t.bytes)
}

/// Lookup cost per rank of a placement, and the imbalance (max / mean - 1).
pub fn balance(p: &[TablePlacement], devices: u64) -> (Vec<f64>, f64) {
    let n = devices.max(1) as usize;
    let load = per_rank(p, devices, |t| t.cost);
    let mean = load.iter().sum::<f64>() / n as f64;
    let max = load.iter().copied().fold(0.0, f64::max);
    let imb = if mean > 0.0 { max / mean - 1.0 } else { 0.0 };
    (load, imb)
}
